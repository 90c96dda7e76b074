//! turn-server's operator surface against the real binary: the admin API
//! (services/turn-server/admin-openapi.json) and `turn-server admin ...`, per-allocation
//! accounting (the "allocation ended" record with `--log-format json`), draining and ALTERNATE-
//! SERVER (RFC 8489 §10) followed by coturn's `turnutils_uclient`.

mod common;
mod wire;

use common::{
    admin_call, free_udp_tcp_port, require_tool, run_with_timeout, AdminTurn, ServerGuard,
    TOOL_TIMEOUT,
};
use rtc_stun::attributes::*;
use rtc_stun::message::{METHOD_CHANNEL_BIND, METHOD_REFRESH};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;
use stun_proto::msg::attr;
use wire::{code, relayed, WireClient};

const TOKEN: &str = "admin-token-for-tests-0123456789";

/// A turn-server with the admin API on ([`common::AdminTurn`]), users alice and bob.
type Server = AdminTurn;

impl AdminTurn {
    fn with(extra: &[&str]) -> Self {
        let mut args = vec!["--user", "alice:alicepw", "--user", "bob:bobpw"];
        args.extend_from_slice(extra);
        AdminTurn::start(TOKEN, &args)
    }

    /// One admin API call with `token`; the status and the JSON body.
    fn call_with(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        admin_call(self.admin, token, method, path, None)
    }

    fn api(&self, method: &str, path: &str) -> (u16, Value) {
        self.call_with(method, path, Some(TOKEN))
    }

    /// An error answer: its status and `error.code`.
    fn error(&self, method: &str, path: &str) -> (u16, String) {
        let (status, body) = self.api(method, path);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: {status} without error.code: {body}"))
            .to_string();
        assert!(
            body["error"]["message"].is_string(),
            "{method} {path}: {body}"
        );
        (status, code)
    }

    fn allocations(&self, query: &str) -> Vec<Value> {
        let (status, body) = self.api("GET", &format!("/v1/allocations{query}"));
        assert_eq!(status, 200, "{body}");
        body["allocations"].as_array().expect("allocations").clone()
    }

    /// `turn-server admin ARGS --url ... --token ...`: exit success and stdout.
    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = run_with_timeout(
            Command::new(common::bin_path("turn-server"))
                .arg("admin")
                .args(args)
                .args(["--url", &format!("http://{}", self.admin)])
                .env("TURNKEY_ADMIN_TOKEN", TOKEN),
            TOOL_TIMEOUT,
        );
        (out.success(), out.stdout.clone(), out.stderr.clone())
    }
}

/// A UDP peer on loopback.
fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn channel(n: u16) -> (AttrType, Vec<u8>) {
    (ATTR_CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0])
}

/// Allocates for `c`, binds channel 0x4000 to `peer`, sends `to_peer` ChannelData packets of
/// 10 bytes and has the peer send `from_peer` datagrams of 20 bytes back, all received.
fn relay_traffic(c: &mut WireClient, peer: &UdpSocket, to_peer: usize, from_peer: usize) {
    let relay = c.allocate();
    let peer_addr = peer.local_addr().unwrap();
    let r = c.call(METHOD_CHANNEL_BIND, &[channel(0x4000)], &[peer_addr]);
    assert_eq!(code(&r), None, "ChannelBind");
    let mut buf = [0u8; 2048];
    for _ in 0..to_peer {
        let mut frame = vec![0x40, 0x00, 0, 10];
        frame.extend_from_slice(&[7u8; 10]);
        c.send_raw(&frame);
        let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
        assert_eq!((n, from), (10, relay));
    }
    for _ in 0..from_peer {
        peer.send_to(&[9u8; 20], relay).unwrap();
        let (data, _) = c.recv_raw().expect("client receives");
        assert_eq!(&data[..4], &[0x40, 0x00, 0, 20]);
    }
}

#[test]
fn admin_api_lists_allocations_with_their_figures_and_ends_them_by_id_and_by_user() {
    let s = Server::with(&[]);
    let p = peer();
    let mut alice = WireClient::new(s.listen, "alice", "alicepw");
    relay_traffic(&mut alice, &p, 3, 2);
    let alice_addr = alice.sock.local_addr().unwrap();

    let list = s.allocations("");
    assert_eq!(list.len(), 1, "{list:?}");
    let a = &list[0];
    assert_eq!(a["user"], "alice");
    assert_eq!(a["client"], alice_addr.to_string());
    assert_eq!(a["server"], s.listen.to_string());
    assert_eq!(a["transport"], "udp");
    assert_eq!(a["relayed"].as_array().unwrap().len(), 1);
    assert!(a["lifetime_left_secs"].as_u64().unwrap() > 500, "{a}");
    assert!(a["started"].as_u64().unwrap() > 1_700_000_000, "{a}");
    assert_eq!(a["permissions"][0]["peer"], "127.0.0.1");
    assert_eq!(a["channels"][0]["number"], 0x4000);
    assert_eq!(
        a["channels"][0]["peer"],
        p.local_addr().unwrap().to_string()
    );
    assert_eq!(a["to_peer"]["packets"], 3);
    assert_eq!(a["to_peer"]["bytes"], 30);
    assert_eq!(a["from_peer"]["packets"], 2);
    assert_eq!(a["from_peer"]["bytes"], 40);
    let id = a["id"].as_str().unwrap().to_string();

    // Filters.
    assert_eq!(s.allocations("?user=alice").len(), 1);
    assert!(s.allocations("?user=bob").is_empty());
    assert_eq!(s.allocations(&format!("?client={alice_addr}")).len(), 1);
    assert_eq!(s.allocations("?client=127.0.0.1").len(), 1);
    assert!(s.allocations("?client=127.0.0.9").is_empty());
    let (status, one) = s.api("GET", &format!("/v1/allocations/{id}"));
    assert_eq!((status, &one["id"]), (200, &a["id"]));

    // Bad input: JSON errors with the protocol's status, and nothing changes.
    assert_eq!(
        s.error("GET", "/v1/allocations?client=nonsense"),
        (400, "bad_client".into())
    );
    assert_eq!(
        s.error("GET", "/v1/allocations?limit=0"),
        (400, "bad_limit".into())
    );
    assert_eq!(
        s.error("GET", "/v1/allocations?bogus=1"),
        (400, "bad_query".into())
    );
    assert_eq!(
        s.error("GET", "/v1/allocations/abc"),
        (400, "bad_id".into())
    );
    assert_eq!(
        s.error("DELETE", "/v1/allocations/0"),
        (400, "bad_id".into())
    );
    assert_eq!(
        s.error("DELETE", "/v1/allocations/987654321"),
        (404, "no_such_allocation".into())
    );
    assert_eq!(
        s.error("DELETE", "/v1/allocations"),
        (400, "user_required".into())
    );
    assert_eq!(s.error("GET", "/v1/nothing"), (404, "not_found".into()));
    let (status, body) = s.call_with("GET", "/v1/allocations", None);
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &"unauthorized".into())
    );
    let (status, _) = s.call_with("DELETE", &format!("/v1/allocations/{id}"), Some("wrong"));
    assert_eq!(status, 401);
    assert_eq!(s.allocations("").len(), 1, "bad requests changed nothing");

    // End all of bob's (two allocations from two sockets, maybe on two workers).
    let mut bobs: Vec<WireClient> = (0..2)
        .map(|_| WireClient::new(s.listen, "bob", "bobpw"))
        .collect();
    for b in &mut bobs {
        b.allocate();
    }
    assert_eq!(s.allocations("?user=bob").len(), 2);
    let (status, ended) = s.api("DELETE", "/v1/allocations?user=bob");
    assert_eq!(status, 200, "{ended}");
    assert_eq!(ended["ended"].as_array().unwrap().len(), 2, "{ended}");
    for b in &mut bobs {
        let r = b.call(METHOD_REFRESH, &[], &[]);
        assert_eq!(code(&r), Some(437), "an ended allocation's next request");
    }
    assert_eq!(s.allocations("").len(), 1);

    // The CLI: list, then end alice's by id.
    let (ok, out, err) = s.cli(&["allocations", "--user", "alice"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON from the CLI");
    assert_eq!(v["allocations"][0]["id"], id.as_str());
    let (ok, out, err) = s.cli(&["end", "--id", &id]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ended"][0]["to_peer"]["bytes"], 30);
    let r = alice.call(METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), Some(437));
    // A CLI call that fails says why and exits non-zero.
    let (ok, _, err) = s.cli(&["end", "--id", &id]);
    assert!(!ok);
    assert!(err.contains("404"), "{err}");

    assert!(s.allocations("").is_empty());
    assert_eq!(
        s.guard
            .metric("turn_allocations_ended_total", &[("reason", "admin")]),
        3.0
    );
    assert!(
        s.guard
            .metric("turn_admin_requests_total", &[("status", "4xx")])
            >= 10.0
    );
    // Per-worker load: two workers, every relayed packet counted once.
    let (status, w) = s.api("GET", "/v1/workers");
    assert_eq!(status, 200);
    let workers = w["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{w}");
    let sent: u64 = workers
        .iter()
        .map(|w| w["to_peer_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, 3, "{w}");
}

#[test]
fn config_is_shown_with_every_secret_redacted() {
    let s = Server::with(&["--auth-secret", "rest-secret-value-xyz"]);
    let (status, c) = s.api("GET", "/v1/config");
    assert_eq!(status, 200);
    assert_eq!(c["users"], serde_json::json!(["alice", "bob"]));
    assert_eq!(c["auth_secrets"], 1);
    assert_eq!(c["admin_token"], "<redacted>");
    assert_eq!(c["listen"][0], s.listen.to_string());
    assert_eq!(c["workers"], 2);
    let text = c.to_string();
    for secret in ["alicepw", "bobpw", "rest-secret-value-xyz", TOKEN] {
        assert!(!text.contains(secret), "{secret} in {text}");
        assert!(!s.guard.log().contains(secret), "{secret} in the log");
    }
}

#[test]
fn openapi_file_matches_the_routes_the_server_answers() {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(common::ROOT).join("services/turn-server/admin-openapi.json"),
        )
        .expect("admin-openapi.json"),
    )
    .expect("valid JSON");
    let s = Server::with(&[]);
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.len() >= 5);
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "12345");
        for method in ["GET", "POST", "DELETE", "PUT", "PATCH"] {
            let documented = ops.get(method.to_lowercase()).is_some();
            let (status, body) = s.api(method, &concrete);
            let code = body["error"]["code"].as_str().unwrap_or("");
            if documented {
                assert!(
                    status != 405 && code != "not_found",
                    "{method} {path} is documented but answers {status} {body}"
                );
                // Every documented status is listed.
                let listed = ops[method.to_lowercase()]["responses"]
                    .get(status.to_string())
                    .is_some();
                assert!(listed, "{method} {path}: {status} not in the file");
            } else {
                assert_eq!(
                    (status, code),
                    (405, "method_not_allowed"),
                    "{method} {path} is not documented"
                );
            }
        }
    }
    // Put the server back the way it was.
    let _ = s.api("DELETE", "/v1/drain");
}

#[test]
fn draining_sends_new_allocations_to_the_alternate_server_and_coturn_follows_it() {
    let b = Server::with(&[]);
    let b_listen = b.listen.to_string();
    let a = Server::with(&["--alternate-server", &b_listen]);
    // An allocation from before draining keeps working.
    let mut early = WireClient::new(a.listen, "alice", "alicepw");
    early.allocate();

    let (status, d) = a.api("POST", "/v1/drain");
    assert_eq!(status, 200);
    assert_eq!(d["draining"], true);
    assert_eq!(d["allocations"], 1);
    assert_eq!(a.guard.metric("turn_draining", &[]), 1.0);

    // A raw client: 300 Try Alternate naming B, signed.
    let mut c = WireClient::new(a.listen, "alice", "alicepw");
    let r = c.allocate_with(&[]);
    assert_eq!(code(&r), Some(300));
    let alt = attr(&r, ATTR_ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(
        u16::from_be_bytes([alt[2], alt[3]]),
        b.listen.port(),
        "ALTERNATE-SERVER port"
    );
    assert_eq!(&alt[4..8], &[127, 0, 0, 1]);
    assert!(r.contains(ATTR_MESSAGE_INTEGRITY));
    assert_eq!(code(&early.call(METHOD_REFRESH, &[], &[])), None);

    // coturn's client follows the 300 to B and relays there (client to client).
    let tool = require_tool("turnutils_uclient");
    let args: Vec<String> = [
        "-y", "-c", "-X", "-z", "5", "-m", "2", "-n", "20", "-l", "100", "-u", "alice", "-w",
        "alicepw", "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([a.listen.port().to_string(), "127.0.0.1".to_string()])
    .collect();
    let out = run_with_timeout(Command::new(tool).args(&args), TOOL_TIMEOUT);
    assert!(out.success(), "uclient: {}", out.combined());
    assert!(
        out.stdout.contains("tot_recv_msgs=40"),
        "every message arrived through B: {}",
        out.combined()
    );
    assert!(
        b.guard
            .metric("turn_allocation_requests_total", &[("result", "success")])
            >= 2.0
    );
    assert!(a.guard.metric("turn_alternate_redirects_total", &[]) >= 2.0);

    // Draining stopped: A serves again.
    let (status, d) = a.api("DELETE", "/v1/drain");
    assert_eq!((status, &d["draining"]), (200, &Value::Bool(false)));
    let mut again = WireClient::new(a.listen, "bob", "bobpw");
    let r = again.allocate_with(&[]);
    assert_eq!(code(&r), None, "served after draining stopped");
    assert_eq!(relayed(&r).ip(), a.listen.ip());
}

#[test]
fn allocation_end_is_one_json_accounting_record_with_log_format_json() {
    let s = Server::with(&["--log-format", "json"]);
    let p = peer();
    let mut c = WireClient::new(s.listen, "alice", "alicepw");
    relay_traffic(&mut c, &p, 4, 1);
    let r = c.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])], &[]);
    assert_eq!(code(&r), None);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let record = loop {
        let found = s.guard.log().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "allocation ended").then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no JSON accounting record in:\n{}",
            s.guard.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let f = &record["fields"];
    assert_eq!(f["user"], "alice");
    assert_eq!(f["realm"], "turnkey");
    assert_eq!(f["client"], c.sock.local_addr().unwrap().to_string());
    assert_eq!(f["transport"], "udp");
    assert!(f["relayed"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(f["started"].as_u64().unwrap() > 1_700_000_000);
    assert!(f["duration_secs"].is_u64());
    assert_eq!(f["to_peer_packets"], 4);
    assert_eq!(f["to_peer_bytes"], 40);
    assert_eq!(f["from_peer_packets"], 1);
    assert_eq!(f["from_peer_bytes"], 20);
    assert_eq!(f["reason"], "refresh");
    assert!(!s.guard.log().contains("alicepw"));
    // Each line of the log is one JSON object.
    for line in s.guard.log().lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
    }
    assert_eq!(
        s.guard
            .metric("turn_allocations_ended_total", &[("reason", "refresh")]),
        1.0
    );
}

#[test]
fn admin_api_is_off_by_default_and_never_open_without_a_token() {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let bin = common::bin_path("turn-server");
    for (extra, why) in [
        (vec![], "admin_token"),
        (vec!["--admin-token", "short"], "at least 16"),
    ] {
        let out = run_with_timeout(
            Command::new(&bin)
                .args(["--listen", &listen.to_string(), "--relay-ip", "127.0.0.1"])
                .args(["--admin-listen", &admin.to_string()])
                .args(&extra)
                .env_remove("TURNKEY_ADMIN_TOKEN"),
            TOOL_TIMEOUT,
        );
        assert!(!out.success() && !out.timed_out(), "{}", out.combined());
        assert!(out.combined().contains(why), "{}", out.combined());
    }
    // Without --admin-listen nothing listens there and the metrics listener has no admin route.
    let s = ServerGuard::turn_server(&["--listen", &listen.to_string(), "--relay-ip", "127.0.0.1"]);
    assert!(std::net::TcpStream::connect_timeout(&admin, Duration::from_millis(300)).is_err());
    let (status, _) = common::http_get(s.metrics, "/v1/allocations").unwrap();
    assert_eq!(status, 404);
    assert_eq!(s.metric("turn_draining", &[]), 0.0);
}
