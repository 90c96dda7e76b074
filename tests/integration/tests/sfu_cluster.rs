//! The multi-process SFU topology over a real `redis-server` ([`common::RedisGuard`]): two `sfu`
//! processes (`sfu-a`, `sfu-b`) register themselves in the signaling store, and one `signaling`
//! process places `sfu` rooms on them (services/signaling/PROTOCOL.md, "SFU rooms") and opens the
//! participants' links with the shared `--sfu-secret`.
//!
//! 1. Once both nodes are live in the store's registry, the aiortc client
//!    (`tests/aiortc/sfu_client.py`, see `tests/sfu_aiortc.rs`) runs two participants in a fresh
//!    `sfu` room through the signaling node: media both ways and a data message must get
//!    through. Exactly one SFU node must have forwarded packets: the room was placed on one node
//!    and both participants' links went there.
//! 2. That node is killed (SIGKILL, so it cannot deregister); once its registry entry has
//!    expired (TTL 15 s), the client runs again into a new room, which must pass on the
//!    surviving node: placement skips dead nodes.
//!
//! 3. A store outage (a separate test): the node counts its failed heartbeats and registers again
//!    once Redis answers, without a restart.
//!
//! Needs `redis-server` and Python with aiortc (`bash scripts/test.sh` installs both), and a
//! non-loopback IPv4 interface up (see `tests/sfu_aiortc.rs`).

use registry::redis::RedisStore;
use registry::Store;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{free_udp_tcp_port, free_udp_tcp_port_pair, RedisGuard, ServerGuard, LOCALHOST};

const API_KEY: &str = "clusterkey:clustersecret";
const SFU_SECRET: &str = "sfu-cluster-link-secret";
/// Frames each participant must decode of each of the other's tracks.
const FRAMES: u64 = 20;
/// The script's own deadline (`--timeout`, seconds) for joining, connecting and receiving.
const SCRIPT_TIMEOUT_SECS: u64 = 60;
/// Time after which the Python process is killed: its deadline plus time to start and close.
const RUN_LIMIT: Duration = Duration::from_secs(SCRIPT_TIMEOUT_SECS + 45);
/// How long a started SFU node may take to appear in the registry (it registers at start).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed SFU node's registry entry may take to expire: its TTL is three heartbeat
/// periods (15 s, services/sfu/src/run.rs) after its last heartbeat, plus margin.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(25);

const FORWARDED: &str = "sfu_forwarded_packets_total";
const DATA_MESSAGES: &str = "sfu_data_messages_total";

/// One `sfu` process registered as `id`.
struct SfuNode {
    id: &'static str,
    guard: ServerGuard,
}

impl SfuNode {
    /// Starts `sfu` with two workers on a free media port pair, a free link port, the shared
    /// secret and the store at `redis`.
    fn start(redis: &RedisGuard, id: &'static str) -> SfuNode {
        let media_port = free_udp_tcp_port_pair(&[LOCALHOST]);
        let link = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let guard = ServerGuard::start(
            "sfu",
            &[
                "--media-listen",
                &format!("127.0.0.1:{media_port}"),
                "--workers",
                "2",
                "--link-listen",
                &link.to_string(),
                "--sfu-secret",
                SFU_SECRET,
                "--redis",
                &redis.url(),
                "--node-id",
                id,
            ],
        );
        SfuNode { id, guard }
    }

    fn metric(&self, name: &str) -> f64 {
        self.guard.metric(name, &[])
    }
}

/// The ids of the live SFU nodes in the store (what signaling places rooms on), sorted.
fn live_sfu_nodes(rt: &tokio::runtime::Runtime, store: &RedisStore) -> Vec<String> {
    let mut ids: Vec<String> = rt
        .block_on(store.sfu_nodes())
        .expect("sfu_nodes")
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    ids
}

/// Polls the registry until its live SFU nodes are exactly `want` (sorted); panics after
/// `timeout`. Returns how long it took.
fn wait_for_live_nodes(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
    want: &[&str],
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let mut last = Vec::new();
    let ok = common::wait_until(timeout, || {
        last = live_sfu_nodes(rt, store);
        last == want
    });
    assert!(
        ok,
        "live SFU nodes in the store: {last:?} after {timeout:?}, want {want:?}"
    );
    start.elapsed()
}

/// Runs `tests/aiortc/sfu_client.py` against the signaling node at `http` (a fresh room each
/// run), checks its record, and returns the room name and a report for assertion messages.
fn run_client(python: &Path, http: SocketAddr, what: &str) -> (String, String) {
    let script = Path::new(common::ROOT).join("tests/aiortc/sfu_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .args(["--base-url", &format!("http://{http}")])
        .args(["--key", API_KEY])
        .args(["--timeout", &SCRIPT_TIMEOUT_SECS.to_string()])
        .args(["--frames", &FRAMES.to_string()]);
    let (result, report) = common::run_browser_script(&mut cmd, RUN_LIMIT, what);
    // The script checks these itself; check the record too, so a script that stops checking
    // cannot pass silently.
    assert_eq!(result["ok"], true, "{report}");
    assert_eq!(result["dataOk"], true, "{report}");
    for direction in ["A->B", "B->A"] {
        for kind in ["video", "audio"] {
            let frames = result["frames"][direction][kind].as_u64().unwrap_or(0);
            assert!(
                frames >= FRAMES,
                "{direction} {kind}: {frames} frames decoded, want {FRAMES}: {report}"
            );
        }
    }
    let room = match &result["room"] {
        Value::String(room) => room.clone(),
        other => panic!("no room name in the record ({other}): {report}"),
    };
    println!(
        "{what}: room {room}, frames {}, in {} ms",
        result["frames"], result["elapsedMs"]
    );
    (room, report)
}

#[test]
fn rooms_are_placed_on_one_live_sfu_node_and_skip_a_dead_one() {
    let python: PathBuf = common::aiortc_python();
    let redis = RedisGuard::start();
    let mut nodes = vec![
        SfuNode::start(&redis, "sfu-a"),
        SfuNode::start(&redis, "sfu-b"),
    ];
    let http = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let _signaling = ServerGuard::start(
        "signaling",
        &[
            "--listen",
            &http.to_string(),
            "--api-key",
            API_KEY,
            "--redis",
            &redis.url(),
            "--sfu-secret",
            SFU_SECRET,
            "--node-id",
            "sig-1",
        ],
    );

    let (rt, store) = redis.store();
    wait_for_live_nodes(&rt, &store, &["sfu-a", "sfu-b"], REGISTER_TIMEOUT);

    // 1. One room, two participants: placed on one node, both links there.
    let (room1, report1) = run_client(&python, http, "first run (two live SFU nodes)");
    let forwarded: Vec<f64> = nodes.iter().map(|n| n.metric(FORWARDED)).collect();
    println!(
        "{FORWARDED}: {}",
        nodes
            .iter()
            .zip(&forwarded)
            .map(|(n, f)| format!("{} {f}", n.id))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hosts: Vec<usize> = (0..nodes.len()).filter(|&i| forwarded[i] > 0.0).collect();
    assert_eq!(
        hosts.len(),
        1,
        "room {room1}: want exactly one SFU node with {FORWARDED} > 0, got {forwarded:?} \
         for {:?}: {report1}",
        nodes.iter().map(|n| n.id).collect::<Vec<_>>()
    );
    let host = hosts[0];
    let survivor = 1 - host;
    assert!(
        nodes[host].metric(DATA_MESSAGES) >= 1.0,
        "{}: {DATA_MESSAGES} did not move: {report1}",
        nodes[host].id
    );
    assert_eq!(
        nodes[survivor].metric(DATA_MESSAGES),
        0.0,
        "{}: the node without the room relayed data messages: {report1}",
        nodes[survivor].id
    );
    println!("room {room1} was placed on {}", nodes[host].id);

    // 2. Kill the hosting node without letting it deregister; once its entry has expired, a
    //    new room must be placed on the survivor.
    let dead = nodes.remove(host);
    let dead_id = dead.id;
    drop(dead.guard);
    let survivor = nodes.pop().expect("the surviving node");
    let expired_after = wait_for_live_nodes(&rt, &store, &[survivor.id], EXPIRY_TIMEOUT);
    println!("{dead_id} left the registry {expired_after:?} after it was killed");

    let before = survivor.metric(FORWARDED);
    let (room2, report2) = run_client(
        &python,
        http,
        &format!("second run ({dead_id} killed, {} live)", survivor.id),
    );
    assert_ne!(room1, room2, "the script must use a fresh room each run");
    let after = survivor.metric(FORWARDED);
    println!("{}: {FORWARDED} {before} -> {after}", survivor.id);
    assert!(
        after > before,
        "room {room2}: {} did not forward ({FORWARDED} {before} -> {after}): {report2}",
        survivor.id
    );
    assert!(
        survivor.metric(DATA_MESSAGES) >= 1.0,
        "{}: {DATA_MESSAGES} did not move: {report2}",
        survivor.id
    );
}

/// A store outage: the node's heartbeats fail and are counted
/// (`sfu_registry_heartbeat_failures_total`), and once a Redis answers again on the same port
/// (empty, as after a failover without persistence), the node is back in the registry without a
/// restart.
#[test]
fn an_sfu_node_counts_failed_heartbeats_and_registers_again_after_a_store_outage() {
    let redis = RedisGuard::start();
    let port = redis.port;
    let node = SfuNode::start(&redis, "sfu-x");
    let (rt, store) = redis.store();
    wait_for_live_nodes(&rt, &store, &["sfu-x"], REGISTER_TIMEOUT);
    assert_eq!(node.metric("sfu_registry_heartbeat_failures_total"), 0.0);
    drop(store);

    drop(redis);
    // The next beat (within one 5 s period) fails, at once or after its 5 s bound.
    assert!(
        common::wait_until(Duration::from_secs(15), || node
            .metric("sfu_registry_heartbeat_failures_total")
            >= 1.0),
        "no failed heartbeat counted while the store was down"
    );

    let redis = RedisGuard::start_on(port);
    let (rt, store) = redis.store();
    let took = wait_for_live_nodes(&rt, &store, &["sfu-x"], REGISTER_TIMEOUT);
    println!(
        "sfu-x registered again {took:?} after the store came back; failed beats: {}",
        node.metric("sfu_registry_heartbeat_failures_total")
    );
    // The node still serves: its metrics listener answers and the failures stop growing once
    // it is registered again.
    let failures = node.metric("sfu_registry_heartbeat_failures_total");
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        node.metric("sfu_registry_heartbeat_failures_total"),
        failures,
        "heartbeats still failing after the node registered again"
    );
    assert_eq!(live_sfu_nodes(&rt, &store), ["sfu-x"]);
}
