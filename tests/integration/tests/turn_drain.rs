//! Issue 15 against the real `turn-server`: the drain (by `POST /admin/drain` on the metrics
//! listener, by SIGTERM, by the admin API's `POST /v1/drain?exit=true`), readiness and liveness
//! while it lasts, what new and live allocations get, the exit status when the last allocation
//! ends or the deadline passes, a reload moving the deadline and the token; and the load gauge
//! `turn_load_ratio` following allocations and relayed traffic.

mod common;
mod wire;

use common::{
    admin_call, free_udp_tcp_port, http_get, metric_value, wait_until, AdminTurn, ServerGuard,
};
use rtc_stun::attributes::*;
use rtc_stun::message::{METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH};
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitStatus;
use std::time::Duration;
use stun_proto::msg::attr;
use wire::{code, WireClient};

const TOKEN: &str = "drain-token-for-tests-0123456789";

/// How long a server gets to exit once it has nothing left to wait for.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// A `turn-server` on loopback: relay address 127.0.0.1 on ports 61000-65535 (above Linux's
/// ephemeral range, where the peers' ports come from), peers on 127.0.0.1 allowed, two workers,
/// user alice, `admin_token` (for `POST /admin/drain`), plus `extra`.
struct Node {
    guard: ServerGuard,
    listen: SocketAddr,
}

impl Node {
    fn start(extra: &[&str]) -> Node {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
        let mut args: Vec<String> = [
            "--listen",
            &listen.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--allow-peer",
            "127.0.0.1/32",
            "--min-port",
            "61000",
            "--max-port",
            "65535",
            "--workers",
            "2",
            "--user",
            "alice:alicepw",
            "--admin-token",
            TOKEN,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Node {
            guard: ServerGuard::turn_server(&args),
            listen,
        }
    }

    fn client(&self) -> WireClient {
        WireClient::new(self.listen, "alice", "alicepw")
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.guard.metric(name, labels)
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_exit(&mut self.guard)
    }
}

/// `POST /admin/drain` on the metrics listener `metrics` with `token` as bearer.
fn post_drain(metrics: SocketAddr, token: Option<&str>) -> (u16, Value) {
    admin_call(metrics, token, "POST", "/admin/drain", None)
}

/// `GET /readyz`: the status and the JSON answer.
fn readyz(metrics: SocketAddr) -> (u16, Value) {
    admin_call(metrics, None, "GET", "/readyz", None)
}

fn healthz(metrics: SocketAddr) -> u16 {
    http_get(metrics, "/healthz").expect("GET /healthz").0
}

/// Waits up to [`EXIT_TIMEOUT`] for the server to exit; panics with its log if it does not.
fn wait_exit(guard: &mut ServerGuard) -> ExitStatus {
    let mut status = None;
    wait_until(EXIT_TIMEOUT, || {
        status = guard.try_wait();
        status.is_some()
    });
    status.unwrap_or_else(|| {
        panic!(
            "the server did not exit within {EXIT_TIMEOUT:?}; its log:\n{}",
            guard.log()
        )
    })
}

fn terminate(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("kill -TERM");
}

/// A UDP peer on 127.0.0.1.
struct Peer {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Peer {
    fn new() -> Peer {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let addr = sock.local_addr().unwrap();
        Peer { sock, addr }
    }

    /// The next datagram and its source; panics after the read timeout.
    fn recv(&self) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (n, from) = self.sock.recv_from(&mut buf).expect("the peer got nothing");
        (buf[..n].to_vec(), from)
    }
}

/// ChannelData (RFC 8656 §12.4) on `channel` carrying `payload`.
fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = channel.to_be_bytes().to_vec();
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn channel_bind(c: &mut WireClient, channel: u16, peer: SocketAddr) -> Option<u16> {
    let n = channel.to_be_bytes();
    code(&c.call(
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![n[0], n[1], 0, 0])],
        &[peer],
    ))
}

fn delete(c: &mut WireClient) -> Option<u16> {
    code(&c.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]))
}

#[test]
fn a_drain_by_post_admin_drain_refuses_new_allocations_serves_the_live_one_and_exits_0() {
    let mut node = Node::start(&["--drain-timeout-secs", "120"]);
    let metrics = node.guard.metrics;
    let peer = Peer::new();
    let mut a = node.client();
    let relay = a.allocate();
    assert_eq!(
        code(&a.call(METHOD_CREATE_PERMISSION, &[], &[peer.addr])),
        None
    );
    assert_eq!(readyz(metrics), (200, json!({"ready": true})));
    assert_eq!(node.metric("turnkey_draining", &[]), 0.0);
    assert_eq!(node.metric("turnkey_drain_deadline_seconds", &[]), 120.0);

    // Only with the token.
    for token in [None, Some("wrong-token-0123456789"), Some("")] {
        let (status, body) = post_drain(metrics, token);
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(readyz(metrics).0, 200, "a refused call starts nothing");
    let (status, body) = post_drain(metrics, Some(TOKEN));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["started"], true);
    assert_eq!(body["deadline_secs"], 120);

    // Not ready, still alive.
    let (status, body) = readyz(metrics);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["draining"], true);
    assert_eq!(body["reason"], "admin");
    assert_eq!(healthz(metrics), 200);
    assert_eq!(node.metric("turnkey_draining", &[]), 1.0);
    assert_eq!(node.metric("turn_draining", &[]), 1.0);

    // Every new Allocate, whichever worker its 5-tuple reaches: 508, counted.
    for _ in 0..6 {
        let r = node.client().allocate_with(&[]);
        assert_eq!(code(&r), Some(508));
        assert!(attr(&r, ATTR_ALTERNATE_SERVER).is_none());
    }
    assert_eq!(
        node.metric("turn_quota_rejections_total", &[("scope", "draining")]),
        6.0
    );
    assert_eq!(
        node.metric("turn_quota_rejections_total", &[("scope", "total")]),
        0.0
    );
    assert_eq!(node.metric("turn_allocations", &[]), 1.0);

    // The live allocation keeps everything: Refresh, Send, ChannelBind, ChannelData both ways.
    assert_eq!(code(&a.call(METHOD_REFRESH, &[], &[])), None);
    a.send_indication(peer.addr, b"sent while draining");
    assert_eq!(peer.recv(), (b"sent while draining".to_vec(), relay));
    assert_eq!(channel_bind(&mut a, 0x4001, peer.addr), None);
    a.send_raw(&channel_data(0x4001, b"over a channel"));
    assert_eq!(peer.recv(), (b"over a channel".to_vec(), relay));
    peer.sock.send_to(b"from the peer", relay).unwrap();
    let (got, _) = a.recv_raw().expect("the peer's data reached the client");
    assert_eq!(got, channel_data(0x4001, b"from the peer"));
    assert!(
        node.guard.try_wait().is_none(),
        "exited while an allocation lived:\n{}",
        node.guard.log()
    );
    // A second call changes nothing.
    let (status, body) = post_drain(metrics, Some(TOKEN));
    assert_eq!((status, &body["started"]), (202, &json!(false)));

    // The last allocation ends: the process exits, status 0.
    assert_eq!(delete(&mut a), None);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "{st}");
    let log = node.guard.log();
    assert!(log.contains("drained: no allocation left"), "{log}");
}

#[test]
fn sigterm_starts_the_same_drain_and_new_allocations_get_300_with_the_alternate_server() {
    let mut node = Node::start(&[
        "--drain-timeout-secs",
        "120",
        "--alternate-server",
        "192.0.2.10:3478",
    ]);
    let metrics = node.guard.metrics;
    let mut a = node.client();
    a.allocate();
    terminate(node.guard.id());
    assert!(
        wait_until(EXIT_TIMEOUT, || readyz(metrics).0 == 503),
        "/readyz never answered 503 after SIGTERM:\n{}",
        node.guard.log()
    );
    assert_eq!(readyz(metrics).1["reason"], "signal");
    assert_eq!(healthz(metrics), 200);

    // 300 Try Alternate naming the configured server (RFC 8489 §10), signed.
    let r = node.client().allocate_with(&[]);
    assert_eq!(code(&r), Some(300));
    let alt = attr(&r, ATTR_ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(alt[1], 1, "IPv4");
    assert_eq!(u16::from_be_bytes([alt[2], alt[3]]), 3478);
    assert_eq!(&alt[4..8], &[192, 0, 2, 10]);
    assert!(r.contains(ATTR_MESSAGE_INTEGRITY));
    assert_eq!(node.metric("turn_alternate_redirects_total", &[]), 1.0);

    assert_eq!(code(&a.call(METHOD_REFRESH, &[], &[])), None);
    assert!(node.guard.try_wait().is_none());
    assert_eq!(delete(&mut a), None);
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "{st}");
}

#[test]
fn at_the_deadline_a_drain_ends_the_live_allocation_and_still_exits_0() {
    let mut node = Node::start(&["--drain-timeout-secs", "1", "--log-format", "json"]);
    let mut a = node.client();
    a.allocate();
    let (status, body) = post_drain(node.guard.metrics, Some(TOKEN));
    assert_eq!(status, 202, "{body}");
    // Nothing ends the allocation: the deadline does.
    let st = node.wait_exit();
    assert_eq!(st.code(), Some(0), "{st}");
    let log = node.guard.log();
    assert!(log.contains("drain deadline passed"), "{log}");
    // Its accounting record says why it ended.
    assert!(
        log.lines().any(|l| l.contains("allocation ended")
            && l.contains("\"reason\":\"shutdown\"")
            && l.contains("\"user\":\"alice\"")),
        "{log}"
    );
}

#[test]
fn the_admin_api_drains_to_exit_with_exit_true_and_that_cannot_be_stopped() {
    let mut s = AdminTurn::start(
        TOKEN,
        &["--user", "alice:pw", "--drain-timeout-secs", "120"],
    );
    let metrics = s.guard.metrics;
    let mut a = WireClient::new(s.listen, "alice", "pw");
    a.allocate();
    let (status, d) = s.call("GET", "/v1/drain", None);
    assert_eq!(status, 200);
    assert_eq!(
        (&d["draining"], &d["exiting"], &d["deadline_secs"]),
        (&json!(false), &json!(false), &json!(120))
    );
    assert_eq!(d["remaining_secs"], Value::Null);

    // Without exit: the reversible drain (new allocations refused, readiness kept).
    let (status, d) = s.call("POST", "/v1/drain", None);
    assert_eq!(
        (status, &d["draining"], &d["exiting"]),
        (200, &json!(true), &json!(false))
    );
    assert_eq!(readyz(metrics).0, 200);
    assert_eq!(
        code(&WireClient::new(s.listen, "alice", "pw").allocate_with(&[])),
        Some(508)
    );
    let (status, d) = s.call("DELETE", "/v1/drain", None);
    assert_eq!((status, &d["draining"]), (200, &json!(false)));

    let (status, d) = s.call("POST", "/v1/drain?exit=maybe", None);
    assert_eq!((status, &d["error"]["code"]), (400, &json!("bad_query")));
    assert_eq!(readyz(metrics).0, 200, "a bad call starts nothing");

    let (status, d) = s.call("POST", "/v1/drain?exit=true", None);
    assert_eq!(status, 200, "{d}");
    assert_eq!(
        (&d["draining"], &d["exiting"]),
        (&json!(true), &json!(true))
    );
    let left = d["remaining_secs"].as_u64().expect("remaining_secs");
    assert!(left <= 120, "{d}");
    let (status, r) = readyz(metrics);
    assert_eq!((status, &r["reason"]), (503, &json!("admin")));
    // It cannot be undone.
    let (status, d) = s.call("DELETE", "/v1/drain", None);
    assert_eq!(
        (status, &d["error"]["code"]),
        (409, &json!("exiting")),
        "{d}"
    );
    let (_, d) = s.call("GET", "/v1/drain", None);
    assert_eq!(
        (&d["draining"], &d["exiting"]),
        (&json!(true), &json!(true))
    );
    assert_eq!(
        code(&WireClient::new(s.listen, "alice", "pw").allocate_with(&[])),
        Some(508)
    );

    assert_eq!(delete(&mut a), None);
    let st = wait_exit(&mut s.guard);
    assert_eq!(st.code(), Some(0), "{st}");
}

#[test]
fn a_reload_moves_the_drain_deadline_and_rotates_the_drain_token() {
    let dir = std::env::temp_dir().join(format!("turnkey-drain-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("turn.toml");
    let write = |deadline: u64, token: &str| {
        std::fs::write(
            &path,
            format!("drain_timeout_secs = {deadline}\nadmin_token = \"{token}\"\n"),
        )
        .unwrap();
    };
    write(300, "first-token-0123456789");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let mut guard = ServerGuard::turn_server(&[
        "--listen",
        &listen.to_string(),
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "alice:alicepw",
        "--config",
        path.to_str().unwrap(),
    ]);
    let metrics = guard.metrics;
    assert_eq!(
        metric_value(
            &guard.scrape_metrics(),
            "turnkey_drain_deadline_seconds",
            &[]
        ),
        Some(300.0)
    );
    write(2, "second-token-0123456789");
    common::sighup(guard.id());
    assert!(
        wait_until(EXIT_TIMEOUT, || metric_value(
            &guard.scrape_metrics(),
            "turnkey_drain_deadline_seconds",
            &[]
        ) == Some(2.0)),
        "the reload did not move the deadline:\n{}",
        guard.log()
    );
    // The old token no longer drains; the new one does, with the new deadline.
    let (status, _) = post_drain(metrics, Some("first-token-0123456789"));
    assert_eq!(status, 401);
    let mut a = WireClient::new(listen, "alice", "alicepw");
    a.allocate();
    let (status, body) = post_drain(metrics, Some("second-token-0123456789"));
    assert_eq!((status, &body["deadline_secs"]), (202, &json!(2)), "{body}");
    let st = wait_exit(&mut guard);
    assert_eq!(st.code(), Some(0), "{st}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `turn_load_ratio` is the larger of allocations / `capacity_allocations` and relayed bit rate
/// / `capacity_relay_bps`, never above 1 (over capacity too: the unit tests of `load.rs` pin the
/// arithmetic); every scrape along the way is in [0, 1].
#[test]
fn the_load_ratio_follows_allocations_and_relayed_traffic_and_stays_in_0_1() {
    let node = Node::start(&[
        "--capacity-allocations",
        "4",
        "--capacity-relay-bps",
        "8000",
    ]);
    let scrape = || {
        let text = node.guard.scrape_metrics();
        let get = |name: &str| metric_value(&text, name, &[]).unwrap_or(f64::NAN);
        let ratio = get("turn_load_ratio");
        assert!((0.0..=1.0).contains(&ratio), "turn_load_ratio {ratio}");
        (ratio, get("turn_relayed_bps"))
    };
    assert_eq!(node.metric("turn_capacity_allocations", &[]), 4.0);
    assert_eq!(node.metric("turn_capacity_relay_bps", &[]), 8000.0);
    assert_eq!(scrape(), (0.0, 0.0));
    let wait_ratio = |want: f64| {
        let mut last = (f64::NAN, f64::NAN);
        let ok = wait_until(EXIT_TIMEOUT, || {
            last = scrape();
            last.0 == want
        });
        assert!(
            ok,
            "turn_load_ratio never {want}: last (ratio, bps) {last:?}"
        );
    };
    let mut clients: Vec<WireClient> = Vec::new();
    for want in [0.25, 0.5, 0.75, 1.0] {
        let mut c = node.client();
        c.allocate();
        clients.push(c);
        wait_ratio(want);
    }
    // Over capacity: still 1.
    let mut c = node.client();
    c.allocate();
    clients.push(c);
    assert_eq!(node.metric("turn_allocations", &[]), 5.0);
    assert_eq!(scrape().0, 1.0);
    for mut c in clients.drain(1..) {
        assert_eq!(delete(&mut c), None);
    }
    wait_ratio(0.25);

    // 100 kB relayed: far over 8000 bit/s over the 10 s window, so the rate share wins.
    let peer = Peer::new();
    let a = &mut clients[0];
    assert_eq!(
        code(&a.call(METHOD_CREATE_PERMISSION, &[], &[peer.addr])),
        None
    );
    for _ in 0..100 {
        a.send_indication(peer.addr, &[7u8; 1000]);
    }
    let mut last = (f64::NAN, f64::NAN);
    assert!(
        wait_until(EXIT_TIMEOUT, || {
            last = scrape();
            last.0 == 1.0 && last.1 > 8000.0
        }),
        "relayed traffic did not raise the ratio: (ratio, bps) {last:?}"
    );
    // Once the window has passed with no traffic, the allocation share is left.
    assert!(
        wait_until(Duration::from_secs(40), || {
            last = scrape();
            last == (0.25, 0.0)
        }),
        "the rate never fell back: (ratio, bps) {last:?}"
    );
}
