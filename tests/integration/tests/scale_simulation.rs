//! Scale-out and scale-in under load, with real processes on loopback over a real
//! `redis-server` (issue 15): two `signaling` nodes and two `sfu` nodes share the store; `sfu-bench
//! --signaling` drives rooms of 4 through the signaling API and WebSocket (every participant
//! publishes VP8 + Opus and receives the other three over real ICE/DTLS-SRTP) at a steady arrival
//! rate. While rooms are live:
//!
//! 1. a third SFU node starts: rooms created after it registered land on it too;
//! 2. one SFU node and one signaling node are drained (`POST /admin/drain`): their `/readyz`
//!    turns 503 while `/healthz` stays 200, no room created afterwards is placed on them, the
//!    rooms they serve keep their media (no flow of any room stops for a second) until they end,
//!    and then each exits with status 0;
//! 3. after the run, another SFU node is killed (SIGKILL: the node-lost path): once its registry
//!    entry expired, a new room is placed on the remaining SFU node and works.
//!
//! Every second the test prints a timeline line: rooms with participants per channel node and
//! per SFU node, read from the store, and which nodes drain. Every room must complete (all 24 of
//! its flows up, no error, no room closed). Needs `redis-server` (`bash scripts/test.sh`).

use registry::redis::RedisStore;
use registry::Store;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{free_udp_tcp_port, free_udp_tcp_port_pair, RedisGuard, ServerGuard, LOCALHOST};

const API_KEY: &str = "scalekey:scalesecret";
const SFU_SECRET: &str = "scale-sim-link-secret";
const ADMIN_TOKEN: &str = "scale-sim-admin-token";
/// A drain that has not finished by then failed the test (rooms live at most ROOM_SECS).
const DRAIN_SECS: u64 = 60;
const ROOMS: usize = 10;
const ARRIVAL_SECS: f64 = 2.0;
const ROOM_SECS: f64 = 14.0;
/// When (seconds into the simulation) the third SFU node starts.
const ADD_AT: f64 = 4.0;
/// When the drains start.
const DRAIN_AT: f64 = 9.0;
/// A flow whose packets stopped this long (ms) counts as media stopped (packets come every
/// 40-67 ms).
const MAX_GAP_MS: u64 = 1000;

fn sfu_node(redis: &RedisGuard, id: &str) -> ServerGuard {
    let media_port = free_udp_tcp_port_pair(&[LOCALHOST]);
    let link = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    ServerGuard::start(
        "sfu",
        &[
            "--media-listen",
            &format!("127.0.0.1:{media_port}"),
            "--workers",
            "1",
            "--link-listen",
            &link.to_string(),
            "--sfu-secret",
            SFU_SECRET,
            "--redis",
            &redis.url(),
            "--node-id",
            id,
            "--admin-token",
            ADMIN_TOKEN,
            "--drain-timeout-secs",
            &DRAIN_SECS.to_string(),
            "--no-ice-tcp",
        ],
    )
}

fn signaling_node(redis: &RedisGuard, id: &str) -> (ServerGuard, SocketAddr) {
    let http = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let guard = ServerGuard::start(
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
            id,
            "--admin-token",
            ADMIN_TOKEN,
            "--drain-timeout-secs",
            &DRAIN_SECS.to_string(),
        ],
    );
    (guard, http)
}

/// `POST /admin/drain` on a metrics listener with the admin token: the status.
fn drain(metrics: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(metrics).expect("connect metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /admin/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// The non-zero `signaling_store_errors_total` and `signaling_registry_rejoins_total` series
/// of the node whose metrics listener is `metrics`, and its heartbeat latency (count and sum):
/// what a failure message needs to tell a store outage from a stalled node.
fn registry_health(metrics: SocketAddr) -> String {
    let Ok((_, body)) = common::http_get(metrics, "/metrics") else {
        return "(metrics not readable)".into();
    };
    body.lines()
        .filter(|l| {
            ((l.starts_with("signaling_store_errors_total")
                || l.starts_with("signaling_registry_rejoins_total"))
                && !l.ends_with(" 0"))
                || (l.starts_with("signaling_store_latency_seconds_")
                    && l.contains("operation=\"heartbeat\"")
                    && !l.contains("_bucket"))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Rooms with participants now, per channel node and per SFU node.
fn census(
    rt: &tokio::runtime::Runtime,
    store: &RedisStore,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let (mut nodes, mut sfus) = (BTreeMap::new(), BTreeMap::new());
    let rooms = rt
        .block_on(store.list_rooms(None, 1000))
        .unwrap_or_default();
    for r in rooms {
        let live = rt
            .block_on(store.participants(&r.name))
            .map(|p| !p.is_empty())
            .unwrap_or(false);
        if live {
            *nodes.entry(r.node.clone()).or_insert(0) += 1;
            *sfus
                .entry(r.sfu.clone().unwrap_or_else(|| "-".into()))
                .or_insert(0) += 1;
        }
    }
    (nodes, sfus)
}

/// Runs `sfu-bench --signaling ...` in the background (its JSON lines end up in its log).
fn start_sim(
    https: &[SocketAddr],
    rooms: usize,
    room_secs: f64,
    prefix: &str,
) -> common::ChildGuard {
    let mut cmd = Command::new(common::bin_path("sfu-bench"));
    for h in https {
        cmd.args(["--signaling", &format!("http://{h}")]);
    }
    cmd.args(["--api-key", API_KEY])
        .args(["--sim-rooms", &rooms.to_string()])
        .args(["--sim-arrival-secs", &ARRIVAL_SECS.to_string()])
        .args(["--sim-room-secs", &room_secs.to_string()])
        .args(["--sim-prefix", prefix])
        .args([
            "--fps",
            "15",
            "--packets-per-frame",
            "1",
            "--audio-pps",
            "25",
        ]);
    common::ChildGuard::spawn("sfu-bench", &mut cmd)
}

/// The JSON lines of the simulation's output.
fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.is_object())
        .collect()
}

#[test]
fn nodes_join_and_drain_under_load_without_losing_a_room() {
    let redis = RedisGuard::start();
    let (sig1, http1) = signaling_node(&redis, "sig-1");
    let (sig2, http2) = signaling_node(&redis, "sig-2");
    let mut sig1 = Some(sig1);
    let sig2_metrics = sig2.metrics;
    let _sig2 = sig2;
    let mut sfu_a = Some(sfu_node(&redis, "sfu-a"));
    let mut sfu_b = Some(sfu_node(&redis, "sfu-b"));
    let mut sfu_c = None;

    let (rt, store) = redis.store();
    let live_sfus = |rt: &tokio::runtime::Runtime| -> Vec<String> {
        let mut v: Vec<String> = rt
            .block_on(store.sfu_nodes())
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.id)
            .collect();
        v.sort();
        v
    };
    assert!(
        common::wait_until(Duration::from_secs(10), || live_sfus(&rt)
            == ["sfu-a", "sfu-b"]),
        "SFU nodes did not register: {:?}",
        live_sfus(&rt)
    );
    let live_channel_nodes = |rt: &tokio::runtime::Runtime| -> Vec<String> {
        rt.block_on(store.nodes())
            .unwrap_or_default()
            .into_iter()
            .map(|n| n.id)
            .collect()
    };
    assert!(common::wait_until(Duration::from_secs(10), || {
        live_channel_nodes(&rt).len() == 2
    }));

    let mut sim = start_sim(&[http1, http2], ROOMS, ROOM_SECS, "sim");
    let t0 = Instant::now();
    let (mut added_at, mut drained_at) = (None, None);
    let (mut sfu_a_exit, mut sig1_exit) = (None, None);
    let mut timeline = Vec::new();
    loop {
        let t = t0.elapsed().as_secs_f64();
        if added_at.is_none() && t >= ADD_AT {
            sfu_c = Some(sfu_node(&redis, "sfu-c"));
            assert!(common::wait_until(Duration::from_secs(10), || live_sfus(
                &rt
            )
            .contains(&"sfu-c".to_string())));
            added_at = Some(t0.elapsed().as_secs_f64());
        }
        if drained_at.is_none() && t >= DRAIN_AT {
            let a = sfu_a.as_ref().unwrap();
            let s = sig1.as_ref().unwrap();
            let (code, body) = drain(a.metrics);
            assert_eq!(code, 202, "drain sfu-a: {body}");
            let (code, body) = drain(s.metrics);
            assert_eq!(code, 202, "drain sig-1: {body}");
            drained_at = Some(t0.elapsed().as_secs_f64());
            for (what, m) in [("sfu-a", a.metrics), ("sig-1", s.metrics)] {
                let (ready, body) = common::http_get(m, "/readyz").expect("readyz");
                assert_eq!(ready, 503, "{what} /readyz while draining: {body}");
                assert!(body.contains("\"draining\":true"), "{what}: {body}");
                let (live, _) = common::http_get(m, "/healthz").expect("healthz");
                assert_eq!(live, 200, "{what} /healthz while draining");
            }
        }
        if sfu_a_exit.is_none() {
            if let Some(st) = sfu_a.as_mut().and_then(|g| g.try_wait()) {
                sfu_a_exit = Some((st, t0.elapsed().as_secs_f64()));
            }
        }
        if sig1_exit.is_none() {
            if let Some(st) = sig1.as_mut().and_then(|g| g.try_wait()) {
                sig1_exit = Some((st, t0.elapsed().as_secs_f64()));
            }
        }
        let (nodes, sfus) = census(&rt, &store);
        let line = format!(
            "t={:>5.1}s  channel nodes {:?}  sfu nodes {:?}  live channel {:?}  live sfu {:?}{}{}",
            t0.elapsed().as_secs_f64(),
            nodes,
            sfus,
            live_channel_nodes(&rt),
            live_sfus(&rt),
            if drained_at.is_some() {
                "  (draining: sfu-a, sig-1)"
            } else {
                ""
            },
            match (&sfu_a_exit, &sig1_exit) {
                (Some(_), Some(_)) => "  (sfu-a, sig-1 exited)",
                (Some(_), None) => "  (sfu-a exited)",
                (None, Some(_)) => "  (sig-1 exited)",
                _ => "",
            }
        );
        println!("{line}");
        timeline.push(line);
        let sim_done = sim.try_wait().is_some();
        if sim_done && sfu_a_exit.is_some() && sig1_exit.is_some() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs_f64(ROOMS as f64 * ARRIVAL_SECS + ROOM_SECS + DRAIN_SECS as f64),
            "the simulation or a drain did not end: sim done {sim_done}, sfu-a {sfu_a_exit:?}, sig-1 {sig1_exit:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let added_at = added_at.unwrap();
    let drained_at = drained_at.unwrap();
    let lines = json_lines(&sim.log());
    let rooms: Vec<&Value> = lines.iter().filter(|l| l.get("room").is_some()).collect();
    for r in &rooms {
        println!("{r}");
    }
    assert_eq!(rooms.len(), ROOMS, "one line per room: {lines:?}");
    // Every room complete: all flows up, media never stopped, no error, not closed.
    for r in &rooms {
        assert!(
            r["node"].is_string() && r["sfu"].is_string(),
            "placement unknown: {r}"
        );
        assert!(
            r["received"].as_u64().unwrap_or(0) > 0,
            "nothing received: {r}"
        );
        assert_eq!(r["flows"], r["flows_expected"], "flows of {r}");
        assert!(
            r["errors"].as_array().is_some_and(|e| e.is_empty()),
            "errors in {r}"
        );
        let gap = r["max_gap_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(gap < MAX_GAP_MS, "media stopped {gap} ms in {r}");
    }
    let start = |r: &Value| r["start_s"].as_f64().unwrap_or(0.0);
    let end = |r: &Value| r["end_s"].as_f64().unwrap_or(0.0);
    // Scale-out: rooms created once sfu-c was registered also land on it.
    assert!(
        rooms
            .iter()
            .any(|r| start(r) > added_at && r["sfu"] == "sfu-c"),
        "no room was placed on the added SFU node (added at {added_at:.1}s)"
    );
    // Scale-in: the drained nodes took no new room, and served rooms through their drain.
    for r in rooms.iter().filter(|r| start(r) > drained_at + 0.5) {
        assert_ne!(
            r["sfu"], "sfu-a",
            "room placed on the draining SFU node: {r}"
        );
        assert_ne!(
            r["node"], "sig-1",
            "room placed on the draining channel node: {r}"
        );
    }
    assert!(
        rooms
            .iter()
            .any(|r| r["sfu"] == "sfu-a" && start(r) < drained_at && end(r) > drained_at),
        "no room was live on sfu-a across its drain: the drain was not tested"
    );
    assert!(
        rooms
            .iter()
            .any(|r| r["node"] == "sig-1" && start(r) < drained_at && end(r) > drained_at),
        "no room was live on sig-1 across its drain: the drain was not tested"
    );
    for (what, exit) in [("sfu-a", &sfu_a_exit), ("sig-1", &sig1_exit)] {
        let (status, at) = exit.as_ref().unwrap();
        assert!(
            status.success(),
            "{what} exited with {status} after draining"
        );
        println!("{what}: drained and exited 0 at {at:.1}s (drain started at {drained_at:.1}s)");
    }
    // The node-lost path: kill sfu-b without letting it deregister; once its entry expired
    // (three 5 s heartbeats), a new room goes to sfu-c and works.
    let b = sfu_b.take().unwrap();
    drop(b);
    assert!(
        common::wait_until(Duration::from_secs(25), || live_sfus(&rt) == ["sfu-c"]),
        "live SFU nodes after the kill: {:?}",
        live_sfus(&rt)
    );
    println!(
        "before the room after the kill: live channel nodes {:?}; sig-2: {}",
        live_channel_nodes(&rt),
        registry_health(sig2_metrics)
    );
    let mut after = start_sim(&[http2], 1, 5.0, "after-kill");
    assert!(common::wait_until(Duration::from_secs(40), || after
        .try_wait()
        .is_some()));
    let lines = json_lines(&after.log());
    let r = lines
        .iter()
        .find(|l| l.get("room").is_some())
        .expect("the room's line");
    println!("after the kill: {r}");
    assert_eq!(
        r["sfu"],
        "sfu-c",
        "{r}; live channel nodes {:?}; sig-2: {}",
        live_channel_nodes(&rt),
        registry_health(sig2_metrics)
    );
    assert_eq!(r["flows"], r["flows_expected"], "{r}");
    assert!(r["errors"].as_array().is_some_and(|e| e.is_empty()), "{r}");
    drop(sfu_c);
}
