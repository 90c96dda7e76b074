//! RFC 8656 / RFC 6156 behaviour and the security defaults, checked over the wire against the
//! real `turn-server` binary with a raw client.

mod common;
mod wire;

use common::{free_udp_tcp_port, http_get, ServerGuard};
use rtc_stun::attributes::*;
use rtc_stun::message::{
    TransactionId, BINDING_REQUEST, METHOD_ALLOCATE, METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH,
};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use stun_proto::msg::{self, MessageBuilder};
use wire::{code, data_indication, relayed, WireClient};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Our turn-server on a free loopback port with `--relay-ip 127.0.0.1` plus `extra`.
struct TurnServer {
    guard: ServerGuard,
    listen: SocketAddr,
    metrics: SocketAddr,
}

impl TurnServer {
    fn start(extra: &[&str]) -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
        let mut args = vec!["--listen".to_string(), listen.to_string()];
        args.extend(["--relay-ip".to_string(), "127.0.0.1".to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let guard = ServerGuard::turn_server(&args);
        let metrics = guard.metrics;
        Self {
            guard,
            listen,
            metrics,
        }
    }

    /// Sum of `name` over series whose labels include every `key="value"` in `labels`.
    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let pairs: Vec<(&str, &str)> = labels
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        self.guard.metric(name, &pairs)
    }

    fn pid(&self) -> u32 {
        self.guard.id()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.guard.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

#[test]
fn every_refused_peer_class_gets_403_and_is_counted() {
    let server = TurnServer::start(&["--user", "alice:pw", "--relay-ip", "::1"]);
    let mut c = WireClient::new(server.listen, "alice", "pw");
    let _relay = c.allocate_with(&[(ATTR_ADDITIONAL_ADDRESS_FAMILY_, vec![2, 0, 0, 0])]);
    let own_listen = server.listen;
    let own_metrics = server.metrics;
    let refused = [
        "0.0.0.0:9".to_string(),
        "127.0.0.1:80".into(),
        "127.9.9.9:80".into(),
        "10.1.2.3:80".into(),
        "172.16.5.5:80".into(),
        "192.168.1.1:80".into(),
        "100.64.0.1:80".into(),
        "169.254.169.254:80".into(),
        "224.0.0.251:5353".into(),
        "255.255.255.255:9".into(),
        "240.0.0.1:9".into(),
        own_listen.to_string(),
        own_metrics.to_string(),
        "[::]:9".into(),
        "[::1]:80".into(),
        "[fd00::1]:80".into(),
        "[fe80::1]:80".into(),
        "[ff02::1]:80".into(),
        "[::ffff:127.0.0.1]:80".into(),
        "[::ffff:10.0.0.1]:80".into(),
        "[::127.0.0.1]:80".into(),
        "[64:ff9b::a9fe:a9fe]:80".into(),
        "[2002:c0a8:0101::1]:80".into(),
    ];
    for p in &refused {
        let peer = sa(p);
        let r = c.call(METHOD_CREATE_PERMISSION, &[], &[peer]);
        assert_eq!(code(&r), Some(403), "CreatePermission {p}");
        let r = c.call(
            METHOD_CHANNEL_BIND,
            &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0x10, 0, 0])],
            &[peer],
        );
        assert_eq!(code(&r), Some(403), "ChannelBind {p}");
    }
    let denied = server.metric("turn_peer_denied_total", &[]);
    assert_eq!(denied as usize, refused.len() * 2);
    // Send to a refused peer: no permission can exist, so nothing is relayed.
    c.send_indication(sa("10.1.2.3:80"), b"x");
    // A documentation address is allowed.
    let r = c.call(METHOD_CREATE_PERMISSION, &[], &[sa("192.0.2.1:9")]);
    assert_eq!(code(&r), None);
    assert!(server.metric("turn_dropped_packets_total", &["reason=\"no_permission\""]) >= 1.0);
}

// rtc-stun has no constant for ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
const ATTR_ADDITIONAL_ADDRESS_FAMILY_: AttrType = AttrType(0x8000);

#[test]
fn auth_failures_401_stale_nonce_438_and_rest_credentials() {
    let secret = "s3cret-for-test";
    let server = TurnServer::start(&["--user", "alice:pw", "--auth-secret", secret]);
    // Wrong password.
    let mut c = WireClient::new(server.listen, "alice", "nope");
    assert_eq!(code(&c.allocate_with(&[])), Some(401));
    // Bogus nonce: 438 with a fresh one.
    let mut c = WireClient::new(server.listen, "alice", "pw");
    c.realm = "turnkey".into();
    c.nonce = "obMatJos2gAAAdeadbeef".into();
    let r = c.exchange(
        METHOD_ALLOCATE,
        &[(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        &[],
    );
    assert_eq!(code(&r), Some(438));
    assert!(msg::text_attr(&r, ATTR_NONCE).is_some());
    // The CLI mints a credential the server accepts.
    let out = Command::new(common::bin_path("turn-server"))
        .args([
            "credentials",
            "--secret",
            secret,
            "--user",
            "carol",
            "--ttl",
            "600",
        ])
        .output()
        .expect("run turn-server credentials");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let user = v["username"].as_str().unwrap();
    assert!(user.ends_with(":carol"));
    assert_eq!(v["ttl"], 600);
    let mut ok = WireClient::new(server.listen, user, v["password"].as_str().unwrap());
    ok.allocate();
    // An expired REST credential.
    let expired = turn_proto::auth::mint_rest_credential(secret, "dave", 0, 1_000_000);
    let mut c = WireClient::new(server.listen, &expired.username, &expired.password);
    assert_eq!(code(&c.allocate_with(&[])), Some(401));
    assert_eq!(
        server.metric("turn_auth_failures_total", &["reason=\"expired\""]),
        1.0
    );
    assert_eq!(
        server.metric("turn_auth_failures_total", &["reason=\"bad_integrity\""]),
        1.0
    );
    assert_eq!(
        server.metric("turn_auth_failures_total", &["reason=\"stale_nonce\""]),
        1.0
    );
    // No user name appears as a label value.
    let (_, body) = http_get(server.metrics, "/metrics").unwrap();
    assert!(!body.contains("carol") && !body.contains("alice"), "{body}");
}

#[test]
fn malformed_burst_leaves_the_server_answering() {
    let server = TurnServer::start(&["--user", "alice:pw"]);
    let mut c = WireClient::new(server.listen, "alice", "pw");
    c.allocate();
    let mut seed = 0x1234_5678u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let binding = MessageBuilder::new(BINDING_REQUEST, TransactionId::new()).finish();
    for i in 0..3000 {
        let len = (next() % 600) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        match i % 4 {
            0 if len >= 20 => {
                // STUN-looking header with a lying length.
                b[0] &= 0x01;
                b[4..8].copy_from_slice(&0x2112A442u32.to_be_bytes());
            }
            1 if len >= 4 => b[0] = 0x40 | (b[0] & 0x3F), // ChannelData-looking
            2 => b = binding[..(len % binding.len())].to_vec(), // truncated
            _ => {}
        }
        c.send_raw(&b);
    }
    // Still answering Binding and requests.
    let tid = TransactionId::new();
    c.send_raw(&MessageBuilder::new(BINDING_REQUEST, tid).finish());
    let r = c.recv_response(tid);
    assert!(msg::xor_address(&r, ATTR_XORMAPPED_ADDRESS).is_some());
    let r = c.call(METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), None);
    assert!(server.metric("turn_dropped_packets_total", &[]) > 100.0);
}

#[test]
fn ipv6_and_dual_stack_relays_carry_data() {
    let server = TurnServer::start(&["--user", "alice:pw", "--relay-ip", "::1"]);
    // A: IPv6-only relay. B: dual (IPv4 + IPv6) relay.
    let mut a = WireClient::new(server.listen, "alice", "pw");
    let ra = relayed(&a.allocate_with(&[(ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])]));
    assert!(ra.is_ipv6());
    let mut b = WireClient::new(server.listen, "alice", "pw");
    let rb = b.allocate_with(&[(ATTR_ADDITIONAL_ADDRESS_FAMILY_, vec![2, 0, 0, 0])]);
    let both = msg::xor_addresses(&rb, ATTR_XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(both.len(), 2);
    let rb6 = both.iter().copied().find(|x| x.is_ipv6()).unwrap();
    // An IPv4 peer on an IPv6-only allocation: 443.
    let r = a.call(METHOD_CREATE_PERMISSION, &[], &[sa("192.0.2.1:9")]);
    assert_eq!(code(&r), Some(443));
    // Relay to relay over ::1 (allowed: live relayed addresses of this server).
    assert_eq!(code(&a.call(METHOD_CREATE_PERMISSION, &[], &[rb6])), None);
    assert_eq!(code(&b.call(METHOD_CREATE_PERMISSION, &[], &[ra])), None);
    a.send_indication(rb6, b"over six");
    let Some((data, _)) = b.recv_raw() else {
        let (_, body) = http_get(server.metrics, "/metrics").unwrap();
        panic!("no data indication at B; metrics:\n{body}");
    };
    let (peer, payload) = data_indication(&data).expect("a Data indication");
    assert_eq!(peer, ra);
    assert_eq!(payload, b"over six");
    assert_eq!(server.metric("turn_allocations", &["family=\"dual\""]), 1.0);
    assert_eq!(server.metric("turn_allocations", &["family=\"ipv6\""]), 1.0);
}

#[test]
fn sigterm_drains_refuses_new_allocations_then_exits() {
    let mut server = TurnServer::start(&["--user", "alice:pw", "--drain-timeout", "20"]);
    let mut a = WireClient::new(server.listen, "alice", "pw");
    a.allocate();
    let status = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // `--drain-timeout` is the old name of `--drain-timeout-secs`.
    assert!(
        common::wait_until(Duration::from_secs(10), || matches!(
            http_get(server.metrics, "/readyz"),
            Ok((503, _))
        )),
        "/readyz never answered 503 after SIGTERM"
    );
    // Draining: new allocations refused, existing ones still served.
    let mut b = WireClient::new(server.listen, "alice", "pw");
    assert_eq!(code(&b.allocate_with(&[])), Some(508));
    assert_eq!(code(&a.call(METHOD_REFRESH, &[], &[])), None);
    assert!(
        server.wait_exit(Duration::from_millis(500)).is_none(),
        "exited while an allocation lived"
    );
    // The last allocation goes: the server exits well before the drain timeout.
    assert_eq!(
        code(&a.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[])),
        None
    );
    let st = server
        .wait_exit(Duration::from_secs(5))
        .expect("server exited after drain");
    assert!(st.success(), "{st}");
}

#[test]
fn metrics_endpoint_lists_every_documented_metric() {
    let server = TurnServer::start(&["--user", "alice:pw"]);
    let mut c = WireClient::new(server.listen, "alice", "pw");
    c.allocate();
    let (status, body) = http_get(server.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "turn_allocations{",
        "turn_allocation_requests_total{",
        "turn_relayed_packets_total{direction=\"client_to_peer\",path=\"userspace\"}",
        "turn_relayed_packets_total{direction=\"peer_to_client\",path=\"userspace\"}",
        "turn_relayed_packets_total{direction=\"client_to_peer\",path=\"xdp\"}",
        "turn_relayed_bytes_total{",
        "turn_xdp_bindings ",
        "turn_xdp_install_failures_total ",
        "turn_xdp_passed_total{reason=\"expired\"}",
        "# TYPE turn_auth_failures_total counter",
        "# TYPE turn_peer_denied_total counter",
        "# TYPE turn_dropped_packets_total counter",
        "# TYPE stun_binding_requests_total counter",
        "turnkey_build_info{",
        "turn_quota_rejections_total{scope=\"draining\"} 0",
        "turnkey_draining 0",
        "turnkey_drain_deadline_seconds 300",
        "# TYPE turn_load_ratio gauge",
        "# TYPE turn_relayed_bps gauge",
        "turn_capacity_allocations 100000",
        "turn_capacity_relay_bps 1000000000",
    ] {
        assert!(body.contains(name), "missing {name} in:\n{body}");
    }
    assert_eq!(
        server.metric("turn_allocations", &["transport=\"udp\""]),
        1.0
    );
    let (status, body) = http_get(server.metrics, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
}

#[test]
fn config_file_unknown_key_is_a_startup_error_naming_it() {
    use turnkey_runtime::config::Layered;
    let dir = std::env::temp_dir().join(format!("turnkey-cfg-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "realm = \"x\"\nrelay_ipp = [\"127.0.0.1\"]\n").unwrap();
    let out = Command::new(common::bin_path("turn-server"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relay_ipp"), "{err}");
    // The shipped sample config is valid.
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/turn-server.toml");
    let cfg = turn_server::config::ServerArgs {
        config: Some(sample.into()),
        ..Default::default()
    }
    .resolve(&turn_server::config::Defaults::default());
    assert!(cfg.is_ok(), "{:?}", cfg.err());
}

/// A UDP socket standing for another service on the server's host (DNS, a metrics or admin
/// port, the signaling server...): same IP as the relay, a port outside the relay range.
fn host_service() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    s
}

#[test]
fn a_permission_for_a_live_relay_never_reaches_other_ports_of_the_host() {
    // Issue 9 §1: the live-relay exemption lets two clients of this server meet, but the
    // permission it installs (per IP) must not carry Send/ChannelData to other ports of the
    // host, nor let the host's services talk back.
    let server = TurnServer::start(&["--user", "alice:pw", "--user", "bob:pw"]);
    let service = host_service();
    let service_addr = service.local_addr().unwrap();
    let mut a = WireClient::new(server.listen, "alice", "pw");
    let mut b = WireClient::new(server.listen, "bob", "pw");
    let ra = a.allocate();
    let rb = b.allocate();
    assert_eq!(code(&a.call(METHOD_CREATE_PERMISSION, &[], &[rb])), None);
    assert_eq!(code(&b.call(METHOD_CREATE_PERMISSION, &[], &[ra])), None);
    // Positive control: A reaches B through B's relayed address.
    a.send_indication(rb, b"to b");
    let (d, _) = b.recv_raw().expect("data at B");
    assert_eq!(data_indication(&d).unwrap(), (ra, b"to b".to_vec()));
    // Send to the host service (same IP, not a relay): nothing arrives.
    a.send_indication(service_addr, b"GET / HTTP/1.0\r\n\r\n");
    a.send_indication(server.metrics, b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut buf = [0u8; 2048];
    assert!(
        service.recv_from(&mut buf).is_err(),
        "the relay forwarded a Send indication to a port of its own host"
    );
    // ChannelData bound to B's relay is fine; the service cannot answer into A's relay.
    assert_eq!(
        code(&a.call(
            METHOD_CHANNEL_BIND,
            &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0])],
            &[rb]
        )),
        None
    );
    service.send_to(b"reply from the host", ra).unwrap();
    a.sock
        .set_read_timeout(Some(Duration::from_millis(600)))
        .unwrap();
    assert!(a.recv_raw().is_none(), "a host service reached the client");
    assert!(server.metric("turn_dropped_packets_total", &["reason=\"peer_denied\""]) >= 3.0);
    // B's allocation goes: A's permission and channel for 127.0.0.1 no longer carry anything
    // to that address (a host service could bind the freed port).
    assert_eq!(
        code(&b.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[])),
        None
    );
    let denied_before = server.metric("turn_dropped_packets_total", &["reason=\"peer_denied\""]);
    a.send_raw(&[0x40, 0x01, 0, 4, b'd', b'a', b't', b'a']);
    a.send_indication(rb, b"after");
    assert!(common::wait_until(Duration::from_secs(3), || {
        server.metric("turn_dropped_packets_total", &["reason=\"peer_denied\""])
            >= denied_before + 2.0
    }));
}

/// Appends a TLV after everything in `msg` (so outside MESSAGE-INTEGRITY), fixing the length.
fn append_unsigned(msg: &[u8], t: AttrType, value: &[u8]) -> Vec<u8> {
    let mut out = msg.to_vec();
    out.extend_from_slice(&t.value().to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    let len = (out.len() - 20) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

#[test]
fn an_attribute_appended_after_message_integrity_is_not_honoured() {
    // Issue 9 §4, RFC 8489 §14.5.
    let server = TurnServer::start(&["--user", "alice:pw"]);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = WireClient::new(server.listen, "alice", "pw");
    c.allocate();
    let signed = sa("192.0.2.1:9");
    let smuggled = sa("198.51.100.77:9");
    let tid = TransactionId::new();
    // Without FINGERPRINT (it must stay last), so build by hand.
    let mut b = MessageBuilder::new(
        rtc_stun::message::MessageType::new(
            METHOD_CREATE_PERMISSION,
            rtc_stun::message::CLASS_REQUEST,
        ),
        tid,
    );
    b.xor_address(ATTR_XOR_PEER_ADDRESS, signed);
    b.raw(ATTR_USERNAME, b"alice")
        .raw(ATTR_REALM, c.realm.as_bytes())
        .raw(ATTR_NONCE, c.nonce.as_bytes());
    let key = turn_proto::auth::long_term_key(
        "alice",
        &c.realm,
        "pw",
        stun_proto::msg::PasswordAlgorithm::Md5,
    );
    b.integrity(&key, stun_proto::msg::IntegrityAlgorithm::Sha1);
    let mut x = MessageBuilder::new(BINDING_REQUEST, tid);
    x.xor_address(ATTR_XOR_PEER_ADDRESS, smuggled);
    let xv = msg::attr(&msg::decode(&x.finish()).unwrap(), ATTR_XOR_PEER_ADDRESS)
        .unwrap()
        .to_vec();
    c.send_raw(&append_unsigned(&b.finish(), ATTR_XOR_PEER_ADDRESS, &xv));
    let r = c.recv_response(tid);
    assert_eq!(code(&r), None);
    // The smuggled peer got no permission: a Send to it is dropped for lack of one.
    let before = server.metric("turn_dropped_packets_total", &["reason=\"no_permission\""]);
    c.send_indication(smuggled, b"x");
    assert!(common::wait_until(Duration::from_secs(3), || {
        server.metric("turn_dropped_packets_total", &["reason=\"no_permission\""]) > before
    }));
    let _ = peer;
}

#[test]
fn a_nonce_replayed_from_another_source_is_stale() {
    // Issue 9 §4: nonces are bound to the client's 5-tuple.
    let server = TurnServer::start(&["--user", "alice:pw"]);
    let mut a = WireClient::new(server.listen, "alice", "pw");
    a.allocate();
    let mut thief = WireClient::new(server.listen, "alice", "pw");
    let tid = TransactionId::new();
    let captured = a.build(
        METHOD_ALLOCATE,
        tid,
        &[(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
        &[],
    );
    thief.send_raw(&captured);
    let r = thief.recv_response(tid);
    assert_eq!(code(&r), Some(438));
    assert_eq!(server.metric("turn_allocations", &[]), 1.0);
    // With its own nonce the second socket is served normally.
    thief.nonce = msg::text_attr(&r, ATTR_NONCE).unwrap().to_string();
    thief.realm = "turnkey".into();
    thief.allocate();
}

#[test]
fn unauthenticated_responses_are_rate_limited_and_small() {
    // Issue 9 §3: a spoofed source cannot make the server answer faster than the per-source
    // budget, and each answer is small (amplification).
    let server = TurnServer::start(&[
        "--user",
        "alice:pw",
        "--unauth-rate",
        "5",
        "--unauth-burst",
        "5",
        "--workers",
        "1",
    ]);
    let c = WireClient::new(server.listen, "alice", "pw");
    c.sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = MessageBuilder::new(
        rtc_stun::message::MessageType::new(METHOD_ALLOCATE, rtc_stun::message::CLASS_REQUEST),
        TransactionId::new(),
    );
    b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let req = b.finish();
    for _ in 0..50 {
        c.send_raw(&req);
    }
    let mut answers = 0;
    while let Some((d, _)) = c.recv_raw() {
        let m = msg::decode(&d).unwrap();
        assert_eq!(code(&m), Some(401));
        assert!(
            d.len() < 96,
            "401 of {} bytes to a {}-byte request",
            d.len(),
            req.len()
        );
        assert!(msg::attr(&m, ATTR_SOFTWARE).is_none());
        answers += 1;
    }
    // 5 of burst plus at most a few refilled while sending.
    assert!((5..=8).contains(&answers), "{answers} answers");
    assert!(
        server.metric(
            "turn_dropped_packets_total",
            &["reason=\"unauth_rate_limited\""]
        ) >= 42.0
    );
    // Another source IP has its own budget.
    let other = WireClient::bound("127.0.0.2:0", server.listen, "alice", "pw");
    other.send_raw(&req);
    assert!(other.recv_raw().is_some());
}

#[test]
fn per_ip_allocation_quota() {
    let server = TurnServer::start(&["--user", "alice:pw", "--user", "bob:pw", "--ip-quota", "2"]);
    let mut a1 = WireClient::new(server.listen, "alice", "pw");
    let mut a2 = WireClient::new(server.listen, "bob", "pw");
    let mut a3 = WireClient::new(server.listen, "alice", "pw");
    a1.allocate();
    a2.allocate();
    assert_eq!(code(&a3.allocate_with(&[])), Some(486));
    assert_eq!(
        server.metric("turn_quota_rejections_total", &["scope=\"ip\""]),
        1.0
    );
    let mut other = WireClient::bound("127.0.0.3:0", server.listen, "alice", "pw");
    other.allocate();
}

#[test]
fn unredeemed_even_port_reservations_cannot_exhaust_the_port_range() {
    // Issue 9 §2: Allocate(EVEN-PORT R) + Refresh(0) in a loop used to keep every odd port
    // reserved for good. Reservations now hold quota and close after 30 s.
    let base = 40_000 + (std::process::id() % 500) as u16 * 40;
    let (min, max) = (base, base + 19);
    let server = TurnServer::start(&[
        "--user",
        "alice:pw",
        "--user",
        "bob:pw",
        "--user-quota",
        "3",
        "--min-port",
        &min.to_string(),
        "--max-port",
        &max.to_string(),
    ]);
    let even_r = [(ATTR_EVEN_PORT, vec![0x80])];
    let mut reserved = 0;
    for _ in 0..12 {
        let mut c = WireClient::new(server.listen, "alice", "pw");
        let r = c.allocate_with(&even_r);
        match code(&r) {
            None => {
                reserved += 1;
                assert_eq!(
                    code(&c.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[])),
                    None
                );
            }
            Some(486) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // At most quota-1 reservations at once; the range still has pairs for others.
    assert_eq!(reserved, 2);
    assert_eq!(server.metric("turn_reservations", &[]), 2.0);
    let mut bob = WireClient::new(server.listen, "bob", "pw");
    let r = bob.allocate_with(&even_r);
    assert_eq!(code(&r), None, "no even/odd pair left in the range");
    let odd = relayed(&r).port() + 1;
    assert_eq!(
        code(&bob.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[])),
        None
    );
    // Unredeemed, they close after 30 s (RFC 8656 §7.2): the metric drops and the reserved
    // port can be bound again.
    assert!(common::wait_until(Duration::from_secs(40), || {
        server.metric("turn_reservations", &[]) == 0.0
    }));
    assert!(std::net::UdpSocket::bind(("127.0.0.1", odd)).is_ok());
    assert_eq!(server.metric("turn_allocations", &[]), 0.0);
}

/// The log tells the story at INFO: an allocation created (user, client, relayed transport
/// address, lifetime) and ended (duration, bytes each way, why), and an authentication failure
/// with its reason, never a password. Failures are rate-limited per core (10 a second, burst
/// 20): a flood of 200 bad requests from one client leaves at most 40 lines per worker.
#[test]
fn the_log_tells_allocations_and_auth_failures() {
    let server = TurnServer::start(&["--user", "alice:pw", "--user", "bob:pw", "--workers", "1"]);
    // A wrong password: one failure with its reason.
    let mut wrong = WireClient::new(server.listen, "alice", "not-the-password");
    assert_eq!(code(&wrong.allocate_with(&[])), Some(401));
    // A relayed call: alice sends 8 + 5 bytes to bob's relayed address, bob answers 3.
    let mut a = WireClient::new(server.listen, "alice", "pw");
    let ra = a.allocate();
    let mut b = WireClient::new(server.listen, "bob", "pw");
    let rb = b.allocate();
    assert_eq!(code(&a.call(METHOD_CREATE_PERMISSION, &[], &[rb])), None);
    assert_eq!(code(&b.call(METHOD_CREATE_PERMISSION, &[], &[ra])), None);
    a.send_indication(rb, b"12345678");
    a.send_indication(rb, b"abcde");
    assert!(b.recv_raw().is_some() && b.recv_raw().is_some());
    b.send_indication(ra, b"xyz");
    assert!(a.recv_raw().is_some());
    assert_eq!(
        code(&a.call(METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0, 0, 0, 0])], &[])),
        None
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || server
            .guard
            .log()
            .contains("allocation ended")),
        "{}",
        server.guard.log()
    );
    let log = server.guard.log();
    let line = |needle: &str, with: &[&str]| -> String {
        log.lines()
            .find(|l| l.contains(needle) && with.iter().all(|w| l.contains(w)))
            .unwrap_or_else(|| panic!("no {needle:?} line with {with:?} in:\n{log}"))
            .to_string()
    };
    let created = line("allocation created", &["user=alice", &format!("{ra}")]);
    assert!(created.contains("lifetime_secs="), "{created}");
    let ended = line("allocation ended", &["user=alice", "reason=\"refresh\""]);
    assert!(ended.contains("to_peer_bytes=13"), "{ended}");
    assert!(ended.contains("from_peer_bytes=3"), "{ended}");
    assert!(ended.contains("duration_secs="), "{ended}");
    let failed = line("authentication failed", &["reason=\"bad_integrity\""]);
    assert!(failed.contains("user=alice"), "{failed}");
    assert!(
        !log.contains("not-the-password"),
        "a password in the log:\n{log}"
    );

    // A flood: counted in full, logged at most 20 + 10/s.
    let before = server.metric("turn_auth_failures_total", &["reason=\"bad_integrity\""]);
    let lines_before = log.matches("authentication failed").count();
    for _ in 0..200 {
        wrong.send_raw(&wrong.build(
            rtc_stun::message::METHOD_ALLOCATE,
            TransactionId::new(),
            &[(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
            &[],
        ));
    }
    let counted = || server.metric("turn_auth_failures_total", &["reason=\"bad_integrity\""]);
    assert!(
        common::wait_until(Duration::from_secs(5), || counted() - before >= 200.0),
        "{} of 200 failures counted",
        counted() - before
    );
    let logged = server.guard.log().matches("authentication failed").count() - lines_before;
    assert!(
        (1..=40).contains(&logged),
        "{logged} lines for 200 failures"
    );
}

/// Ctrl-C is prompt: the first SIGINT says what the server waits for (1 allocation, up to 60 s)
/// and keeps serving it; a second SIGINT exits at once (status 130) instead of waiting out the
/// drain.
#[test]
fn a_second_sigint_exits_at_once_and_the_first_says_what_it_waits_for() {
    let mut server = TurnServer::start(&["--user", "alice:pw", "--drain-timeout", "60"]);
    let mut a = WireClient::new(server.listen, "alice", "pw");
    a.allocate();
    let sigint = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    sigint(server.pid());
    assert!(
        common::wait_until(Duration::from_secs(5), || server.guard.log().lines().any(
            |l| l.contains("draining")
                && l.contains("allocations=1")
                && l.contains("up_to_secs=60")
        )),
        "the first SIGINT did not say what it waits for:\n{}",
        server.guard.log()
    );
    assert_eq!(code(&a.call(METHOD_REFRESH, &[], &[])), None);
    assert!(server.wait_exit(Duration::from_millis(300)).is_none());
    sigint(server.pid());
    let st = server
        .wait_exit(Duration::from_secs(10))
        .expect("a second SIGINT did not end the server before the 60 s drain");
    assert_eq!(st.code(), Some(130), "{st}");
}

/// A restart binds its port at once although connections of the last run still hold it in
/// TIME_WAIT (or FIN_WAIT): the check that nothing else holds the port bound TCP without
/// SO_REUSEADDR, so a restart within a minute of TCP clients failed with "already in use" (and
/// so did a test that happened to draw a port an earlier test binary's server had used).
#[test]
fn a_restart_binds_while_the_last_runs_connections_linger() {
    let port = free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--relay-ip",
        "127.0.0.1",
        "--user",
        "alice:pw",
    ];
    let first = ServerGuard::turn_server(&args);
    let conns: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The server closes first, then the clients: its side of each connection lingers.
    drop(first);
    drop(conns);
    let lingering = Command::new("ss")
        .args(["-Htan", &format!("sport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    assert!(
        !lingering.trim().is_empty(),
        "no connection lingers on port {port}: the test shows nothing"
    );
    // Panics (with its log) if it exits before it is ready.
    let second = ServerGuard::turn_server(&args);
    let mut c = WireClient::new(SocketAddr::from(([127, 0, 0, 1], port)), "alice", "pw");
    c.allocate();
    drop(second);
}
