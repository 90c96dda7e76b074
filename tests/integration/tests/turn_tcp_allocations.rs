//! RFC 6062 TCP allocations against the real `turn-server`: coturn's `turnutils_uclient` with
//! `-T` (two clients, each with a TCP allocation, connect to each other's relayed address:
//! Connect on one side, ConnectionAttempt on the other, ConnectionBind on both) and `-P` (an
//! active TCP peer, uclient itself, connects to the relayed address), and a raw Rust client for
//! Connect to a TCP echo peer, a peer-initiated connection, 446, and the peer policy (Connect
//! answered 403, an incoming peer without permission or from a refused address closed).
//!
//! uclient's `-T` implies `-t -y -c`: client-to-client over TCP, so its peer is the other
//! client's relayed address (a live relayed address of this server, allowed without
//! `--allow-peer`). With `-P` the second "client" is a plain TCP peer on 127.0.0.1, so the
//! server gets `--allow-peer 127.0.0.1/32`. uclient's final report in `-P` mode counts only
//! what the TURN client received (the peer's receipts are not counted: it reports half the
//! messages as lost), so that run checks the server's byte counters both ways instead.

mod common;
mod wire;

use common::{free_udp_tcp_port, require_tool, run_with_timeout, wait_until, ServerGuard};
use rtc_stun::attributes::*;
use rtc_stun::message::{
    Message, MessageType, Method, TransactionId, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE,
    METHOD_CONNECT, METHOD_CONNECTION_ATTEMPT, METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;
use stun_proto::msg::{
    self, attr, text_attr, IntegrityAlgorithm, MessageBuilder, PasswordAlgorithm,
};
use turn_proto::auth::long_term_key;
use wire::{code, relayed, WireClient};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// Relay ports above Linux's ephemeral range, where the test's own free ports come from.
const RELAY_PORTS: (u16, u16) = (61000, 65535);
const MESSAGES: u64 = 20;
const LENGTH: u64 = 120;
const EVENTS: &str = "turn_peer_tcp_events_total";
const BYTES: &str = "turn_relayed_bytes_total";

fn start_server(extra: &[&str]) -> (ServerGuard, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let mut args: Vec<String> = vec![
        "--listen".into(),
        listen.to_string(),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--realm".into(),
        "turnkey".into(),
        "--min-port".into(),
        RELAY_PORTS.0.to_string(),
        "--max-port".into(),
        RELAY_PORTS.1.to_string(),
        "--user".into(),
        format!("{USER}:{PASSWORD}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    (ServerGuard::turn_server(&args), listen)
}

fn event(server: &ServerGuard, e: &str) -> f64 {
    server.metric(EVENTS, &[("event", e)])
}

fn run_uclient(mode: &str, port: u16) -> (common::ToolOutput, String) {
    let tool = require_tool("turnutils_uclient");
    let args: Vec<String> = [
        mode,
        "-X",
        "-z",
        "5",
        "-m",
        "2",
        "-n",
        &MESSAGES.to_string(),
        "-l",
        &LENGTH.to_string(),
        "-p",
        &port.to_string(),
        "-u",
        USER,
        "-w",
        PASSWORD,
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_with_timeout(Command::new(tool).args(&args), common::TOOL_TIMEOUT);
    let shown = format!(
        "turnutils_uclient {}\nexit {:?} after {:?}\n{}",
        args.join(" "),
        out.status,
        out.elapsed,
        out.combined()
    );
    (out, shown)
}

/// The numbers of uclient's final `tot_send_msgs=N, tot_recv_msgs=M` line and its loss line.
fn report(out: &str) -> Option<(u64, u64, u64)> {
    let after = |line: &str, key: &str| -> Option<u64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()
    };
    let totals = out
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let loss = out.lines().rfind(|l| l.contains("Total lost packets "))?;
    Some((
        after(totals, "tot_send_msgs=")?,
        after(totals, "tot_recv_msgs=")?,
        after(loss, "Total lost packets ")?,
    ))
}

#[test]
fn uclient_tcp_relay_between_two_clients() {
    let (server, listen) = start_server(&[]);
    let (out, shown) = run_uclient("-T", listen.port());
    assert!(out.success(), "uclient failed: {shown}");
    // Two clients, each sending MESSAGES to the other over the joined data connections.
    assert_eq!(
        report(&out.stdout),
        Some((2 * MESSAGES, 2 * MESSAGES, 0)),
        "{shown}"
    );
    let bytes = (2 * MESSAGES * LENGTH) as f64;
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric(BYTES, &[("direction", "client_to_peer")]) >= bytes
            && server.metric(BYTES, &[("direction", "peer_to_client")]) >= bytes
    });
    assert!(counted, "{}", server.scrape_metrics());
    // One Connect (client 1 to client 2's relayed address), accepted on client 2's relay,
    // and both data connections bound.
    assert_eq!(event(&server, "connected"), 1.0);
    assert_eq!(event(&server, "accepted"), 1.0);
    assert_eq!(event(&server, "bound"), 2.0);
    assert_eq!(
        server.metric(
            "turn_requests_total",
            &[("method", "connect"), ("result", "success")]
        ),
        1.0
    );
    // uclient closes everything at the end: the gauge comes back to zero.
    let closed = wait_until(Duration::from_secs(10), || {
        server.metric("turn_peer_tcp_connections", &[]) == 0.0
    });
    assert!(closed, "{}", server.scrape_metrics());
}

#[test]
fn uclient_passive_tcp_with_an_active_peer() {
    let (server, listen) = start_server(&["--allow-peer", "127.0.0.1/32"]);
    let (out, shown) = run_uclient("-P", listen.port());
    assert!(out.success(), "uclient failed: {shown}");
    let (sent, received, _) = report(&out.stdout).unwrap_or_else(|| panic!("{shown}"));
    // The TURN client and the peer each sent MESSAGES; the client got all of the peer's.
    assert_eq!(sent, 2 * MESSAGES, "{shown}");
    assert!(received >= MESSAGES, "{shown}");
    // Every byte crossed the relay, both ways.
    let bytes = (MESSAGES * LENGTH) as f64;
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric(BYTES, &[("direction", "client_to_peer")]) == bytes
            && server.metric(BYTES, &[("direction", "peer_to_client")]) == bytes
    });
    assert!(counted, "{shown}\n{}", server.scrape_metrics());
    assert_eq!(event(&server, "accepted"), 1.0);
    assert_eq!(event(&server, "bound"), 1.0);
}

/// A TURN client over one TCP connection (RFC 8489 §6.2.2 framing).
struct StreamClient {
    sock: TcpStream,
    realm: String,
    nonce: String,
}

impl StreamClient {
    fn connect(server: SocketAddr) -> Self {
        let sock = TcpStream::connect(server).expect("connect to server");
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self {
            sock,
            realm: String::new(),
            nonce: String::new(),
        }
    }

    /// A data connection authenticating with the nonce and realm `self` learnt.
    fn data_connection(&self, server: SocketAddr) -> Self {
        let mut c = Self::connect(server);
        c.realm = self.realm.clone();
        c.nonce = self.nonce.clone();
        c
    }

    fn read_message(&mut self) -> Message {
        let mut head = [0u8; 20];
        self.sock.read_exact(&mut head).expect("read STUN header");
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut whole = head.to_vec();
        whole.resize(20 + len, 0);
        self.sock
            .read_exact(&mut whole[20..])
            .expect("read STUN body");
        msg::decode(&whole).expect("valid STUN")
    }

    fn build(&self, method: Method, tid: TransactionId, attrs: &[(AttrType, Vec<u8>)]) -> Vec<u8> {
        let mut b = MessageBuilder::new(MessageType::new(method, CLASS_REQUEST), tid);
        for (t, v) in attrs {
            b.raw(*t, v);
        }
        if !self.nonce.is_empty() {
            b.raw(ATTR_USERNAME, USER.as_bytes());
            b.raw(ATTR_REALM, self.realm.as_bytes());
            b.raw(ATTR_NONCE, self.nonce.as_bytes());
            let key = long_term_key(USER, &self.realm, PASSWORD, PasswordAlgorithm::Md5);
            b.integrity(&key, IntegrityAlgorithm::Sha1);
        }
        b.fingerprint();
        b.finish()
    }

    fn exchange(&mut self, method: Method, attrs: &[(AttrType, Vec<u8>)]) -> Message {
        let tid = TransactionId::new();
        let req = self.build(method, tid, attrs);
        self.sock.write_all(&req).unwrap();
        loop {
            let m = self.read_message();
            if m.transaction_id == tid {
                return m;
            }
        }
    }

    /// A request with the 401/438 dance (a data connection's first request gets 438: the
    /// nonce is bound to the connection's 5-tuple).
    fn call(&mut self, method: Method, attrs: &[(AttrType, Vec<u8>)]) -> Message {
        let r = self.exchange(method, attrs);
        if matches!(code(&r), Some(401) | Some(438)) {
            self.realm = text_attr(&r, ATTR_REALM).unwrap_or_default().to_string();
            self.nonce = text_attr(&r, ATTR_NONCE).unwrap_or_default().to_string();
            return self.exchange(method, attrs);
        }
        r
    }

    fn allocate_tcp(&mut self) -> SocketAddr {
        let r = self.call(
            METHOD_ALLOCATE,
            &[(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
        );
        assert_eq!(code(&r), None, "TCP Allocate failed");
        relayed(&r)
    }

    fn with_peer(&mut self, method: Method, peer: SocketAddr) -> Message {
        let mut b = MessageBuilder::new(
            MessageType::new(method, CLASS_REQUEST),
            TransactionId::new(),
        );
        b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
        let raw = b.finish();
        let m = msg::decode(&raw).unwrap();
        let value = attr(&m, ATTR_XOR_PEER_ADDRESS).unwrap().to_vec();
        self.call(method, &[(ATTR_XOR_PEER_ADDRESS, value)])
    }

    /// ConnectionBind for `id`; on success the connection carries raw bytes.
    fn bind(&mut self, id: &[u8]) -> Message {
        self.call(METHOD_CONNECTION_BIND, &[(ATTR_CONNECTION_ID, id.to_vec())])
    }
}

/// A TCP echo server on 127.0.0.1 (a port below the relay range), one thread per connection.
fn tcp_echo_peer() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    assert!(addr.port() < RELAY_PORTS.0);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).expect("read relayed bytes");
    v
}

#[test]
fn connect_to_a_tcp_echo_peer_and_accept_a_peer() {
    let (server, listen) = start_server(&["--allow-peer", "127.0.0.1/32"]);
    let echo = tcp_echo_peer();

    // Over UDP a TCP allocation is refused (RFC 6062 §5.1).
    let mut udp = WireClient::new(listen, USER, PASSWORD);
    let r = udp.call(
        METHOD_ALLOCATE,
        &[(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
        &[],
    );
    assert_eq!(code(&r), Some(400));

    let mut control = StreamClient::connect(listen);
    let relay = control.allocate_tcp();
    assert!(relay.port() >= RELAY_PORTS.0);

    // Connect (no permission needed) -> CONNECTION-ID; bind it on a new connection.
    let r = control.with_peer(METHOD_CONNECT, echo);
    assert_eq!(code(&r), None, "Connect failed");
    let id = attr(&r, ATTR_CONNECTION_ID)
        .expect("CONNECTION-ID")
        .to_vec();
    let mut data = control.data_connection(listen);
    let r = data.bind(&id);
    assert_eq!(code(&r), None, "ConnectionBind failed");
    data.sock.write_all(b"hello through TURN").unwrap();
    assert_eq!(read_exactly(&mut data.sock, 18), b"hello through TURN");
    // A second Connect to the same peer: 446; a second bind of the same id: 400.
    assert_eq!(code(&control.with_peer(METHOD_CONNECT, echo)), Some(446));
    let mut again = control.data_connection(listen);
    assert_eq!(code(&again.bind(&id)), Some(400));

    // A peer connects to the relayed address: with a permission for its IP, the client gets
    // a ConnectionAttempt and binds it.
    assert_eq!(
        code(&control.with_peer(METHOD_CREATE_PERMISSION, echo)),
        None
    );
    let mut peer = TcpStream::connect(relay).expect("peer connects to the relayed address");
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    peer.write_all(b"from the peer").unwrap();
    let attempt = loop {
        let m = control.read_message();
        if m.typ == MessageType::new(METHOD_CONNECTION_ATTEMPT, CLASS_INDICATION) {
            break m;
        }
    };
    assert_eq!(
        msg::xor_address(&attempt, ATTR_XOR_PEER_ADDRESS),
        Some(peer.local_addr().unwrap())
    );
    let id2 = attr(&attempt, ATTR_CONNECTION_ID).unwrap().to_vec();
    let mut data2 = control.data_connection(listen);
    assert_eq!(code(&data2.bind(&id2)), None);
    // What the peer sent before the bind was held for the client.
    assert_eq!(read_exactly(&mut data2.sock, 13), b"from the peer");
    data2.sock.write_all(b"to the peer").unwrap();
    assert_eq!(read_exactly(&mut peer, 11), b"to the peer");

    let counted = wait_until(Duration::from_secs(5), || {
        event(&server, "connected") == 1.0
            && event(&server, "accepted") == 1.0
            && event(&server, "bound") == 2.0
            && event(&server, "duplicate") == 1.0
            && event(&server, "bind_rejected") == 1.0
            && server.metric("turn_peer_tcp_connections", &[]) == 2.0
            && server.metric(BYTES, &[("direction", "client_to_peer")]) == 29.0
            && server.metric(BYTES, &[("direction", "peer_to_client")]) == 31.0
    });
    assert!(counted, "{}", server.scrape_metrics());

    // The allocation ends with its control connection: so do its data connections.
    drop(control);
    let mut rest = Vec::new();
    assert_eq!(
        data.sock.read_to_end(&mut rest).map(|_| rest.len()).ok(),
        Some(0)
    );
    let gone = wait_until(Duration::from_secs(5), || {
        server.metric("turn_peer_tcp_connections", &[]) == 0.0
    });
    assert!(gone, "{}", server.scrape_metrics());
}

/// True when the server closed `s` (EOF or reset) within the read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn the_peer_policy_applies_to_tcp_peers() {
    // The server's own address is refused by default: Connect gets 403.
    let (server, listen) = start_server(&[]);
    let echo = tcp_echo_peer();
    let mut control = StreamClient::connect(listen);
    let relay = control.allocate_tcp();
    assert_eq!(code(&control.with_peer(METHOD_CONNECT, echo)), Some(403));
    // A peer without a permission is closed at once.
    let mut unpermitted = TcpStream::connect(relay).unwrap();
    assert!(closed_by_server(&mut unpermitted));
    let counted = wait_until(Duration::from_secs(5), || {
        event(&server, "peer_denied") == 1.0 && event(&server, "no_permission") == 1.0
    });
    assert!(counted, "{}", server.scrape_metrics());
    // 127.0.0.1 is the server's own relay address.
    assert_eq!(
        server.metric("turn_peer_denied_total", &[("reason", "own_address")]),
        1.0
    );
    drop(server);

    // With loopback allowed and a permission for 127.0.0.1, a peer connecting from one of the
    // server's relay ports is still refused by the policy (own address and port).
    let (server, listen) = start_server(&["--allow-peer", "127.0.0.1/32"]);
    let mut control = StreamClient::connect(listen);
    let relay = control.allocate_tcp();
    assert_eq!(
        code(&control.with_peer(METHOD_CREATE_PERMISSION, echo)),
        None
    );
    let mut denied = (RELAY_PORTS.0..=RELAY_PORTS.1)
        .rev()
        .find_map(|port| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
                .ok()?;
            s.connect(&relay.into()).ok()?;
            Some(TcpStream::from(s))
        })
        .expect("a peer socket on a relay port");
    assert!(closed_by_server(&mut denied));
    let counted = wait_until(Duration::from_secs(5), || {
        event(&server, "peer_denied") == 1.0
            && server.metric("turn_peer_denied_total", &[("reason", "own_address")]) == 1.0
    });
    assert!(counted, "{}", server.scrape_metrics());
    assert_eq!(event(&server, "accepted"), 0.0);
}

/// Payload bits per second `rx` receives while `tx` writes to it as fast as it can for `secs`,
/// counted after the first `skip` (while the cap's initial burst drains). What is left in the
/// socket buffers afterwards stays there (a later measurement of the same direction reads it,
/// paced by the same caps).
fn stream_rate(tx: &TcpStream, rx: &TcpStream, secs: f64, skip: f64) -> f64 {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut tx = tx.try_clone().unwrap();
        let stop = stop.clone();
        std::thread::spawn(move || {
            tx.set_write_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let chunk = vec![0x5a_u8; 16 * 1024];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A timed-out write (the buffers are full: the cap holds) is tried again.
                let _ = tx.write(&chunk);
            }
        })
    };
    let mut rx = rx.try_clone().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let start = std::time::Instant::now();
    let (from, to) = (
        start + Duration::from_secs_f64(skip),
        start + Duration::from_secs_f64(secs),
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    while std::time::Instant::now() < to {
        if let Ok(n) = rx.read(&mut buf) {
            if std::time::Instant::now() >= from {
                bytes += n as u64;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    bytes as f64 * 8.0 / (secs - skip)
}

fn assert_within_10pct(measured_bps: f64, cap_bps: f64, what: &str) {
    let ratio = measured_bps / cap_bps;
    eprintln!("{what}: {measured_bps:.0} bit/s, cap {cap_bps:.0} ({ratio:.3})");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: {measured_bps:.0} bit/s, cap {cap_bps:.0}"
    );
}

#[test]
fn a_capped_tcp_allocation_is_paced_to_its_cap_each_way_and_the_admin_api_changes_it_live() {
    const TOKEN: &str = "admin-token-for-tcp-allocation-caps";
    let user = format!("{USER}:{PASSWORD}");
    let s = common::AdminTurn::start(
        TOKEN,
        &["--user", &user, "--bandwidth-allocation-bps", "4000000"],
    );
    // A peer that accepts one connection from the relayed address.
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer_addr = peer.local_addr().unwrap();
    assert!(peer_addr.port() < RELAY_PORTS.0);
    let mut control = StreamClient::connect(s.listen);
    control.allocate_tcp();
    let r = control.with_peer(METHOD_CONNECT, peer_addr);
    assert_eq!(code(&r), None, "Connect failed");
    let id = attr(&r, ATTR_CONNECTION_ID).unwrap().to_vec();
    let (peer_side, _) = peer.accept().expect("the relay connects to the peer");
    let mut data = control.data_connection(s.listen);
    assert_eq!(code(&data.bind(&id)), None, "ConnectionBind failed");

    // 4 Mbit/s each way; the other direction is not slowed by a saturated one.
    assert_within_10pct(
        stream_rate(&data.sock, &peer_side, 4.0, 1.0),
        4_000_000.0,
        "client -> peer",
    );
    assert_within_10pct(
        stream_rate(&peer_side, &data.sock, 4.0, 1.0),
        4_000_000.0,
        "peer -> client",
    );
    let waits = s
        .metric(
            "turn_bandwidth_stream_waits_total",
            &[("scope", "allocation")],
        )
        .unwrap_or(0.0);
    assert!(waits > 10.0, "paced reads are counted: {waits}");
    assert_eq!(
        s.metric("turn_bandwidth_stream_waits_total", &[("scope", "user")]),
        Some(0.0)
    );

    // This allocation's own cap through the admin API: 2 Mbit/s, for the live data connection.
    let (_, list) = s.call("GET", &format!("/v1/allocations?user={USER}"), None);
    let alloc = &list["allocations"][0];
    assert_eq!(alloc["relay_transport"], "tcp", "{alloc}");
    let alloc_id = alloc["id"].as_str().expect("id");
    let (status, body) = s.call(
        "PUT",
        &format!("/v1/allocations/{alloc_id}/bandwidth"),
        Some(r#"{"bps": 2000000}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_within_10pct(
        stream_rate(&data.sock, &peer_side, 4.0, 1.0),
        2_000_000.0,
        "client -> peer after PUT",
    );
    // The bytes crossed the relay, counted into the allocation's record.
    let (_, one) = s.call("GET", &format!("/v1/allocations/{alloc_id}"), None);
    let sent = one["to_peer"]["bytes"].as_u64().unwrap_or(0);
    assert!(sent > 1_500_000, "{one}");
}
