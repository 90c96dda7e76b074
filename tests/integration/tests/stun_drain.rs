//! Issue 15 for the real `stun-server`: a drain (by `POST /admin/drain` on the metrics listener
//! or by SIGTERM) turns readiness false at once, keeps answering Binding requests for
//! `drain_timeout_secs` so load balancers notice, then the process exits 0.

mod common;

use common::{admin_call, free_udp_tcp_port, http_get, wait_until, ServerGuard};
use rtc_stun::attributes::ATTR_XORMAPPED_ADDRESS;
use rtc_stun::message::{TransactionId, BINDING_REQUEST};
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitStatus;
use std::time::Duration;
use stun_proto::msg::{self, MessageBuilder};

const TOKEN: &str = "stun-drain-token-0123456789";

/// How long the server gets to exit once its grace is over, and to show a drain.
const TIMEOUT: Duration = Duration::from_secs(30);

fn start(extra: &[&str]) -> (ServerGuard, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let mut args = vec!["--listen".to_string(), listen.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    (ServerGuard::stun_server(&args), listen)
}

/// One Binding request over UDP: the XOR-MAPPED-ADDRESS of the answer, None without one.
fn binding(server: SocketAddr) -> Option<SocketAddr> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let tid = TransactionId::new();
    sock.send_to(&MessageBuilder::new(BINDING_REQUEST, tid).finish(), server)
        .unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let m = msg::decode(&buf[..n]).ok()?;
    assert_eq!(m.transaction_id, tid);
    let mapped = msg::xor_address(&m, ATTR_XORMAPPED_ADDRESS);
    assert_eq!(mapped, sock.local_addr().ok());
    mapped
}

fn readyz(metrics: SocketAddr) -> (u16, Value) {
    admin_call(metrics, None, "GET", "/readyz", None)
}

fn wait_exit(guard: &mut ServerGuard) -> ExitStatus {
    let mut status = None;
    wait_until(TIMEOUT, || {
        status = guard.try_wait();
        status.is_some()
    });
    status.unwrap_or_else(|| panic!("stun-server did not exit; its log:\n{}", guard.log()))
}

#[test]
fn a_drained_stun_server_is_not_ready_keeps_answering_then_exits_0() {
    let (mut s, listen) = start(&["--admin-token", TOKEN, "--drain-timeout-secs", "4"]);
    let metrics = s.metrics;
    assert_eq!(readyz(metrics), (200, json!({"ready": true})));
    assert!(binding(listen).is_some());
    assert_eq!(s.metric("turnkey_drain_deadline_seconds", &[]), 4.0);
    let post = |token: Option<&str>| admin_call(metrics, token, "POST", "/admin/drain", None);
    assert_eq!(post(Some("wrong-token-0123456789")).0, 401);
    assert_eq!(post(None).0, 401);
    assert_eq!(readyz(metrics).0, 200);
    let (status, body) = post(Some(TOKEN));
    assert_eq!((status, &body["deadline_secs"]), (202, &json!(4)), "{body}");
    let (status, body) = readyz(metrics);
    assert_eq!((status, &body["reason"]), (503, &json!("admin")), "{body}");
    assert_eq!(http_get(metrics, "/healthz").unwrap().0, 200);
    assert_eq!(s.metric("turnkey_draining", &[]), 1.0);
    assert!(binding(listen).is_some(), "Binding answered while draining");
    let st = wait_exit(&mut s);
    assert_eq!(st.code(), Some(0), "{st}");
}

#[test]
fn sigterm_drains_a_stun_server_and_without_a_token_the_call_does_not_exist() {
    let (mut s, listen) = start(&["--drain-timeout-secs", "5"]);
    let metrics = s.metrics;
    let (status, body) = admin_call(metrics, Some(TOKEN), "POST", "/admin/drain", None);
    assert_eq!((status, &body["error"]["code"]), (404, &json!("not_found")));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(s.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        wait_until(TIMEOUT, || readyz(metrics).0 == 503),
        "/readyz never answered 503 after SIGTERM:\n{}",
        s.log()
    );
    assert_eq!(readyz(metrics).1["reason"], "signal");
    assert!(binding(listen).is_some(), "Binding answered while draining");
    let st = wait_exit(&mut s);
    assert_eq!(st.code(), Some(0), "{st}");
}
