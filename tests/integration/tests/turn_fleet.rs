//! Fleet state in Redis: REST secrets and static users read from Redis and watched by every
//! node (`turn-server fleet set-secrets` rotates a secret on the whole fleet), the allocations of
//! the fleet listed through the admin API of any node, Redis Sentinel (and a failover from a
//! killed master to its replica), and a Redis that is not there at start. Real `redis-server`
//! processes, the real `turn-server` binary, a raw TURN client.

mod common;
mod wire;

use common::{bin_path, free_udp_tcp_port, run_with_timeout, ChildGuard, RedisGuard, ServerGuard};
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use stun_proto::credential::mint_rest_credential;
use wire::{code, WireClient};

const TOKEN: &str = "fleet-admin-token-0123456789";
/// How long a change in Redis may take to reach a node (nodes poll every second).
const PROPAGATION: Duration = Duration::from_secs(10);

/// A turn-server node with the admin API on.
struct Node {
    guard: ServerGuard,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Node {
    fn start(name: &str, extra: &[&str]) -> Node {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
        let (l, a) = (listen.to_string(), admin.to_string());
        let mut args = vec![
            "--listen",
            &l,
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "61000",
            "--max-port",
            "65535",
            "--workers",
            "2",
            "--admin-listen",
            &a,
            "--admin-token",
            TOKEN,
            "--node-name",
            name,
        ];
        args.extend_from_slice(extra);
        let guard = ServerGuard::turn_server(&args);
        Node {
            guard,
            listen,
            admin,
        }
    }

    fn get(&self, path: &str) -> (u16, Value) {
        common::admin_call(self.admin, Some(TOKEN), "GET", path, None)
    }

    /// The ERROR-CODE of a fresh client's Allocate with these credentials (None: success).
    fn allocate(&self, user: &str, password: &str) -> Option<u16> {
        code(&WireClient::new(self.listen, user, password).allocate_with(&[]))
    }

    /// Waits until `ok` holds, or fails with the node's log.
    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while !ok() {
            assert!(
                start.elapsed() < PROPAGATION,
                "never saw {what} within {PROPAGATION:?}; log:\n{}",
                self.guard.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        start.elapsed()
    }

    fn assert_no_secret_logged(&self, secrets: &[&str]) {
        let log = self.guard.log();
        for s in secrets {
            assert!(!log.contains(s), "{s} in the log:\n{log}");
        }
    }
}

fn rest(secret: &str, user: &str) -> (String, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let c = mint_rest_credential(secret, user, 3600, now);
    (c.username, c.password)
}

/// `turn-server fleet ARGS` (with `redis_args` for the connection); its JSON answer.
fn fleet(redis_args: &[&str], args: &[&str]) -> Value {
    let out = run_with_timeout(
        Command::new(bin_path("turn-server"))
            .arg("fleet")
            .args(args)
            .args(redis_args)
            .env_remove("TURNKEY_REDIS_URL"),
        Duration::from_secs(30),
    );
    assert!(out.success(), "fleet {args:?}: {}", out.combined());
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[test]
fn secrets_and_users_in_redis_reach_every_node_and_rotation_takes_effect_everywhere() {
    let redis = RedisGuard::start();
    let url = redis.url();
    let r: &[&str] = &["--redis", &url];
    // Before the nodes start: a secret and a user only in Redis (read at start).
    assert_eq!(fleet(r, &["set-secrets", "redis-secret-1"])["version"], 1);
    assert_eq!(
        fleet(r, &["set-user", "dave:dave-redis-pw"])["user"],
        "dave"
    );
    let a = Node::start("a", &["--redis", &url, "--auth-secret", "file-secret-a"]);
    let b = Node::start("b", &["--redis", &url]);
    for n in [&a, &b] {
        let (u, p) = rest("redis-secret-1", "carol");
        assert_eq!(n.allocate(&u, &p), None, "Redis-only REST secret");
        assert_eq!(n.allocate("dave", "dave-redis-pw"), None, "Redis-only user");
        assert_eq!(n.guard.metric("turn_fleet_redis_up", &[]), 1.0);
    }
    // The file's secret still works on the node that has one (added, not replaced).
    let (u, p) = rest("file-secret-a", "carol");
    assert_eq!(a.allocate(&u, &p), None);
    assert_eq!(b.allocate(&u, &p), Some(401));

    // Live allocations made with what is about to go.
    let (old_user, old_pw) = rest("redis-secret-1", "kept");
    let mut kept_a = WireClient::new(a.listen, &old_user, &old_pw);
    kept_a.allocate();
    let mut kept_b = WireClient::new(b.listen, "dave", "dave-redis-pw");
    kept_b.allocate();

    // A user added while running.
    fleet(r, &["set-user", "erin:erin-redis-pw"]);
    for n in [&a, &b] {
        n.wait("erin allowed", || {
            n.allocate("erin", "erin-redis-pw").is_none()
        });
    }

    // Rotation: one command; the new secret works and the old one fails on both nodes.
    let rotated = Instant::now();
    let v = fleet(r, &["set-secrets", "redis-secret-2"]);
    assert_eq!(v["auth_secrets"], 1);
    let mut took = Vec::new();
    for (name, n) in [("a", &a), ("b", &b)] {
        n.wait(&format!("rotation on node {name}"), || {
            let (nu, np) = rest("redis-secret-2", "carol");
            let (ou, op) = rest("redis-secret-1", "carol");
            n.allocate(&nu, &np).is_none() && n.allocate(&ou, &op) == Some(401)
        });
        took.push((name, rotated.elapsed()));
    }
    println!("secret rotation in force on every node after: {took:?}");

    // A removed user can no longer allocate.
    let removed = fleet(r, &["remove-user", "erin"]);
    assert_eq!(removed["removed"], true);
    for n in [&a, &b] {
        n.wait("erin refused", || {
            n.allocate("erin", "erin-redis-pw") == Some(401)
        });
    }
    // The live allocations stay.
    let (status, list) = a.get(&format!("/v1/allocations?user={old_user}"));
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["allocations"].as_array().unwrap().len(), 1, "{list}");
    let (_, list) = b.get("/v1/allocations?user=dave");
    assert!(
        !list["allocations"].as_array().unwrap().is_empty(),
        "{list}"
    );

    // The fleet as node a sees it: both nodes, and b's allocations with `node: "b"`.
    a.wait("nodes a and b in /v1/fleet", || {
        let (status, f) = a.get("/v1/fleet");
        let names: Vec<&str> = f["nodes"]
            .as_array()
            .map(|n| n.iter().filter_map(|n| n["node"].as_str()).collect())
            .unwrap_or_default();
        status == 200 && names == ["a", "b"]
    });
    // Allocations held by b only.
    let (bu, bp) = rest("redis-secret-2", "only-on-b");
    let mut on_b: Vec<WireClient> = (0..2)
        .map(|_| WireClient::new(b.listen, &bu, &bp))
        .collect();
    for c in &mut on_b {
        c.allocate();
    }
    a.wait("b's allocations listed by a", || {
        let (status, l) = a.get(&format!("/v1/fleet/allocations?user={bu}"));
        let list = l["allocations"].as_array().cloned().unwrap_or_default();
        status == 200
            && list.len() == 2
            && list
                .iter()
                .all(|x| x["node"] == "b" && x["user"] == bu.as_str())
    });
    let (_, f) = a.get("/v1/fleet");
    assert_eq!(f["node"], "a");
    let node_b = f["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "b")
        .unwrap()
        .clone();
    assert!(node_b["allocations"].as_u64().unwrap() >= 3, "{f}");
    assert_eq!(node_b["truncated"], false);
    assert_eq!(node_b["workers"], 2);
    let (_, l) = a.get("/v1/fleet/allocations?node=a");
    assert!(l["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["node"] == "a"));
    let (status, e) = a.get("/v1/fleet/allocations?nope=1");
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("bad_query"))
    );
    // The admin CLI says the same.
    let out = run_with_timeout(
        Command::new(bin_path("turn-server")).args([
            "admin",
            "--url",
            &format!("http://{}", a.admin),
            "--token",
            TOKEN,
            "fleet-allocations",
            "--node",
            "b",
        ]),
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}", out.combined());
    assert!(out.stdout.contains("\"node\":\"b\""), "{}", out.stdout);
    // `fleet show` lists names and counts only.
    let shown = fleet(r, &["show"]);
    assert_eq!(shown["auth_secrets"], 1);
    assert_eq!(shown["users"], serde_json::json!(["dave"]));

    for n in [&a, &b] {
        n.assert_no_secret_logged(&[
            "redis-secret-1",
            "redis-secret-2",
            "dave-redis-pw",
            "erin-redis-pw",
            "file-secret-a",
        ]);
    }
}

/// A `redis-server --sentinel` monitoring `master` as `mymaster` (quorum 1, the master down
/// after `down_after_ms` without an answer); ready when it names the master.
fn sentinel(master: &RedisGuard, down_after_ms: u64) -> (ChildGuard, u16, std::path::PathBuf) {
    let port = free_udp_tcp_port();
    let conf = std::env::temp_dir().join(format!(
        "turnkey-sentinel-{}-{port}.conf",
        std::process::id()
    ));
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {}\nsentinel monitor mymaster 127.0.0.1 {} 1\nsentinel down-after-milliseconds mymaster {down_after_ms}\nsentinel failover-timeout mymaster 10000\n",
            std::env::temp_dir().display(),
            master.port
        ),
    )
    .unwrap();
    let mut cmd = Command::new(common::require_tool("redis-server"));
    cmd.arg(&conf).arg("--sentinel");
    let child = ChildGuard::spawn("redis-sentinel", &mut cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    loop {
        let named = client.get_connection().ok().and_then(|mut c| {
            redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg("mymaster")
                .query::<Option<(String, u16)>>(&mut c)
                .ok()
                .flatten()
        });
        if named == Some(("127.0.0.1".into(), master.port)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sentinel did not name the master; log:\n{}",
            child.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port, conf)
}

#[test]
fn a_node_finds_the_redis_master_through_sentinel() {
    let master = RedisGuard::start();
    let (_sentinel, port, conf) = sentinel(&master, 5000);
    let addr = format!("127.0.0.1:{port}");
    let s: &[&str] = &["--redis-sentinel", &addr, "--redis-master", "mymaster"];
    // The CLI through Sentinel too.
    fleet(s, &["set-secrets", "sentinel-secret"]);
    let node = Node::start("s1", &["--redis-sentinel", &addr]);
    let (u, p) = rest("sentinel-secret", "frank");
    assert_eq!(node.allocate(&u, &p), None, "secret read through Sentinel");
    assert_eq!(node.guard.metric("turn_fleet_redis_up", &[]), 1.0);
    // And watched: a change reaches the node.
    fleet(s, &["set-user", "gina:gina-pw"]);
    node.wait("gina allowed", || {
        node.allocate("gina", "gina-pw").is_none()
    });
    let (status, f) = node.get("/v1/fleet");
    assert_eq!(status, 200, "{f}");
    node.assert_no_secret_logged(&["sentinel-secret", "gina-pw"]);
    let _ = std::fs::remove_file(conf);
}

/// The port of `mymaster` once Sentinel has finished a failover to it: `SENTINEL MASTER`
/// flags are just `master` (during the failover `get-master-addr-by-name` already names the
/// promoted replica, but clients refuse a master whose flags still say it is down).
fn sentinel_settled_master(sentinel_port: u16) -> Option<u16> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}/")).ok()?;
    let mut c = client.get_connection().ok()?;
    let info: std::collections::HashMap<String, String> = redis::cmd("SENTINEL")
        .arg("master")
        .arg("mymaster")
        .query(&mut c)
        .ok()?;
    (info.get("flags")? == "master").then(|| info.get("port")?.parse().ok())?
}

/// Waits up to `within` for `ok`, or fails with `what` and `log`.
fn wait_for(what: &str, within: Duration, log: impl Fn() -> String, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < within,
            "never saw {what} within {within:?}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn after_a_sentinel_failover_a_node_reads_and_publishes_through_the_new_master() {
    // A master, a replica of it, and a Sentinel that fails over one second after the master
    // stops answering.
    let master = RedisGuard::start();
    let replica = RedisGuard::start();
    let replica_client = redis::Client::open(replica.url()).unwrap();
    let mut rc = replica_client.get_connection().unwrap();
    redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port)
        .exec(&mut rc)
        .unwrap();
    wait_for(
        "the replica in sync",
        Duration::from_secs(20),
        || replica.log(),
        || {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut rc)
                .is_ok_and(|i| i.contains("master_link_status:up"))
        },
    );
    let (sentinel_child, port, conf) = sentinel(&master, 1000);
    // Sentinel learns the replica from the master's INFO.
    wait_for(
        "Sentinel knowing the replica",
        Duration::from_secs(30),
        || sentinel_child.log(),
        || {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            client.get_connection().is_ok_and(|mut c| {
                redis::cmd("SENTINEL")
                    .arg("replicas")
                    .arg("mymaster")
                    .query::<Vec<redis::Value>>(&mut c)
                    .is_ok_and(|r| r.len() == 1)
            })
        },
    );
    let addr = format!("127.0.0.1:{port}");
    let s: &[&str] = &["--redis-sentinel", &addr, "--redis-master", "mymaster"];
    fleet(s, &["set-secrets", "before-failover"]);
    let node = Node::start("f1", &["--redis-sentinel", &addr]);
    let (u, p) = rest("before-failover", "hana");
    assert_eq!(node.allocate(&u, &p), None, "secret read through Sentinel");
    node.wait("the node in the fleet listing", || {
        let (status, f) = node.get("/v1/fleet");
        status == 200 && f["nodes"].as_array().is_some_and(|n| n.len() == 1)
    });

    // The master dies; Sentinel promotes the replica.
    drop(master);
    wait_for(
        "Sentinel naming the replica as master",
        Duration::from_secs(30),
        || sentinel_child.log(),
        || sentinel_settled_master(port) == Some(replica.port),
    );
    // What the old master had reached the replica: the node still takes the old secret.
    assert_eq!(node.allocate(&u, &p), None);
    // A rotation written through Sentinel (to the new master) reaches the node, which found
    // the new master through Sentinel too.
    fleet(s, &["set-secrets", "after-failover"]);
    let (u2, p2) = rest("after-failover", "ines");
    node.wait("the rotated secret", || node.allocate(&u2, &p2).is_none());
    node.wait("the fleet Redis up again", || {
        node.guard.metric("turn_fleet_redis_up", &[]) == 1.0
    });
    assert!(
        node.guard
            .metric("turn_fleet_redis_errors_total", &[("op", "read")])
            >= 1.0,
        "the outage is counted: {}",
        node.guard.scrape_metrics()
    );
    // And the node publishes its summary to the new master.
    let mut nc = replica_client.get_connection().unwrap();
    node.wait("the node's summary on the new master", || {
        redis::cmd("ZRANGE")
            .arg("turnkey:turn:nodes")
            .arg(0)
            .arg(-1)
            .query::<Vec<String>>(&mut nc)
            .is_ok_and(|n| n == ["f1"])
            && redis::cmd("EXISTS")
                .arg("turnkey:turn:node:f1")
                .query::<u32>(&mut nc)
                .is_ok_and(|e| e == 1)
    });
    node.assert_no_secret_logged(&["before-failover", "after-failover"]);
    let _ = std::fs::remove_file(conf);
}

#[test]
fn a_node_starts_without_redis_and_takes_its_credentials_when_it_appears() {
    let port = free_udp_tcp_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let started = Instant::now();
    let node = Node::start("late", &["--redis", &url, "--auth-secret", "file-only"]);
    println!("started without Redis in {:?}", started.elapsed());
    let (u, p) = rest("file-only", "hank");
    assert_eq!(node.allocate(&u, &p), None, "the file's credentials");
    assert_eq!(node.guard.metric("turn_fleet_redis_up", &[]), 0.0);
    assert!(
        node.guard
            .metric("turn_fleet_redis_errors_total", &[("op", "read")])
            >= 1.0
    );
    // The fleet routes answer 503 in JSON while Redis is away.
    let (status, e) = node.get("/v1/fleet");
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (503, Some("fleet_unavailable")),
        "{e}"
    );

    let _redis = RedisGuard::start_on(port);
    fleet(&["--redis", &url], &["set-secrets", "late-secret"]);
    let took = node.wait("the Redis secret", || {
        let (u, p) = rest("late-secret", "hank");
        node.allocate(&u, &p).is_none()
    });
    println!("Redis secret in force {took:?} after it was set");
    assert_eq!(node.guard.metric("turn_fleet_redis_up", &[]), 1.0);
    assert_eq!(node.allocate(&u, &p), None, "the file's secret still works");
    node.wait("the node in /v1/fleet", || {
        let (status, f) = node.get("/v1/fleet");
        status == 200 && f["nodes"][0]["node"] == "late"
    });
    node.assert_no_secret_logged(&["late-secret", "file-only"]);
}

#[test]
fn fleet_routes_answer_503_in_json_without_fleet_state() {
    let node = Node::start("solo", &["--user", "ivy:ivy-pw"]);
    for path in ["/v1/fleet", "/v1/fleet/allocations?user=ivy"] {
        let (status, e) = node.get(path);
        assert_eq!(status, 503, "{path}: {e}");
        assert_eq!(e["error"]["code"], "fleet_unavailable", "{path}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains("--redis"));
    }
    assert_eq!(node.guard.metric("turn_fleet_redis_up", &[]), 0.0);
}
