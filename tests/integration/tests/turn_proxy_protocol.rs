//! `turn-server --proxy-protocol-from` behind a real HAProxy (`mode tcp`, `send-proxy-v2`),
//! over TCP and over TLS (HAProxy passes TLS through; the header precedes the ClientHello).
//!
//! Clients bind 127.0.0.2 and reach HAProxy on 127.0.0.1; HAProxy connects to the server from
//! 127.0.0.1, the only allowed balancer. So the server sees the connection from 127.0.0.1 and
//! the header names 127.0.0.2:<client port>; every check tells the two apart:
//! - a STUN Binding written by hand through HAProxy gets XOR-MAPPED-ADDRESS = the client
//!   socket's own address (TCP and TLS);
//! - coturn's `turnutils_uclient -L 127.0.0.2` allocates and relays without loss, and the
//!   server's "allocation ended" log line names `client=127.0.0.2:...`;
//! - without HAProxy: no header (`missing_header`), a header from 127.0.0.3 outside the allow
//!   list (`source_not_allowed`), a broken header (`malformed`), a text v1 header
//!   (`unsupported`) each close the connection and are counted; a `LOCAL` header (a health
//!   check) is served with the connection's own address;
//! - every `turn_proxy_protocol_*` series exists from the start.
//!
//! HAProxy is Debian's `haproxy` (installed by `bash scripts/test.sh`); each test runs its own
//! `haproxy -db` in the foreground on free loopback ports, killed on drop.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod common;
use common::tls::{self, CertFiles};
use common::{free_udp_tcp_port, wait_until, ChildGuard, ServerGuard, LOCALHOST};

const USER: &str = "proxyuser";
const PASSWORD: &str = "proxy-secret";
/// The address clients bind: what the header must carry.
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// A source outside the allow list.
const OUTSIDER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

const ACCEPTED: &str = "turn_proxy_protocol_accepted_total";
const REJECTED: &str = "turn_proxy_protocol_rejected_total";

/// turn-server with TCP and TLS listeners that take PROXY headers from 127.0.0.1 only.
struct Proxied {
    server: ServerGuard,
    tcp_port: u16,
    tls_port: u16,
    _files: CertFiles,
}

fn start_server(tag: &str) -> Proxied {
    let (files, _) = CertFiles::with_new_cert(tag);
    let tcp_port = free_udp_tcp_port();
    let tls_port = free_udp_tcp_port();
    let server = ServerGuard::turn_server(&[
        "--listen",
        &format!("127.0.0.1:{tcp_port}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--cert",
        files.cert_arg(),
        "--key",
        files.key_arg(),
        "--user",
        &format!("{USER}:{PASSWORD}"),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        "61000",
        "--max-port",
        "62999",
        "--allow-peer",
        "127.0.0.0/8",
        "--proxy-protocol-from",
        "127.0.0.1/32",
    ]);
    Proxied {
        server,
        tcp_port,
        tls_port,
        _files: files,
    }
}

/// `haproxy`, on PATH or where Debian puts it (/usr/sbin is not on every user's PATH).
fn haproxy_path() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
        .expect("`haproxy` not found; run `bash scripts/test.sh` (it installs Debian's haproxy)")
}

/// A HAProxy in TCP mode forwarding 127.0.0.1:<tcp> to the server's TCP listener and
/// 127.0.0.1:<tls> to its TLS listener, each with a PROXY v2 header, from 127.0.0.1.
struct Haproxy {
    _child: ChildGuard,
    _cfg: TempFile,
    tcp: SocketAddr,
    tls: SocketAddr,
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn start_haproxy(p: &Proxied) -> Haproxy {
    let tcp = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let tls = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let cfg = format!(
        "global\n  maxconn 200\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         frontend turn_tcp\n  bind {tcp}\n  default_backend turn_tcp\n\
         backend turn_tcp\n  server s 127.0.0.1:{} send-proxy-v2 source 127.0.0.1\n\
         frontend turn_tls\n  bind {tls}\n  default_backend turn_tls\n\
         backend turn_tls\n  server s 127.0.0.1:{} send-proxy-v2 source 127.0.0.1\n",
        p.tcp_port, p.tls_port
    );
    let path = common::temp_log_path("haproxy.cfg");
    std::fs::write(&path, cfg).expect("write haproxy.cfg");
    let cfg = TempFile(path);
    let mut child = ChildGuard::spawn(
        "haproxy",
        Command::new(haproxy_path())
            .arg("-f")
            .arg(&cfg.0)
            .arg("-db"),
    );
    let up = wait_until(Duration::from_secs(10), || {
        assert!(
            child.try_wait().is_none(),
            "haproxy exited:\n{}",
            child.log()
        );
        TcpStream::connect(tcp).is_ok() && TcpStream::connect(tls).is_ok()
    });
    assert!(
        up,
        "haproxy did not listen on {tcp} and {tls}:\n{}",
        child.log()
    );
    Haproxy {
        _child: child,
        _cfg: cfg,
        tcp,
        tls,
    }
}

/// A TCP connection from `from` (port chosen by the kernel) to `to`.
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from, 0).into()).unwrap();
    sock.connect(&to.into())
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"));
    let tcp: TcpStream = sock.into();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp
}

/// A STUN Binding request (RFC 8489 §6) with transaction id `[7; 12]`.
fn binding_request() -> Vec<u8> {
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    req
}

/// Sends a Binding over `s` and returns the XOR-MAPPED-ADDRESS of the success response.
fn xor_mapped_address(s: &mut impl ReadWrite) -> SocketAddr {
    s.write_all(&binding_request()).expect("send Binding");
    s.flush().expect("flush");
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("Binding response header");
    assert_eq!(head[0..2], [0x01, 0x01], "not a Binding success: {head:?}");
    assert_eq!(head[8..20], [7u8; 12]);
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("Binding response body");
    let mut at = 0;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let alen = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let v = &body[at + 4..at + 4 + alen];
        if typ == 0x0020 && v[1] == 0x01 {
            let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
            let ip = Ipv4Addr::new(v[4] ^ 0x21, v[5] ^ 0x12, v[6] ^ 0xa4, v[7] ^ 0x42);
            return SocketAddr::new(IpAddr::V4(ip), port);
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    panic!("no IPv4 XOR-MAPPED-ADDRESS in {body:?}");
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A TLS client over `tcp`, handshake done.
fn tls_over(tcp: TcpStream) -> tls::Tls {
    let (mut t, _) = tls::client(tcp);
    while t.conn.is_handshaking() {
        t.conn.complete_io(&mut t.sock).expect("TLS handshake");
    }
    t
}

/// A PROXY v2 header: `command` 0 (LOCAL) or 1 (PROXY), TCP over IPv4.
fn v2_header(command: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(0x11);
    h.extend_from_slice(&12u16.to_be_bytes());
    for a in [src, dst] {
        let IpAddr::V4(ip) = a.ip() else {
            panic!("IPv4 only")
        };
        h.extend_from_slice(&ip.octets());
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// True once the server has closed `s` (read gives end of stream or a reset).
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        // A read timeout is not a close.
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn wait_metric(server: &ServerGuard, name: &str, labels: &[(&str, &str)], want: f64) {
    let ok = wait_until(Duration::from_secs(10), || {
        server.metric(name, labels) >= want
    });
    assert!(
        ok,
        "{name}{labels:?} did not reach {want}:\n{}",
        server.scrape_metrics()
    );
}

#[test]
fn every_proxy_protocol_series_exists_from_the_start() {
    let p = start_server("proxy-metrics");
    let text = p.server.scrape_metrics();
    for command in ["proxy", "local"] {
        assert_eq!(
            common::metric_value(&text, ACCEPTED, &[("command", command)]),
            Some(0.0),
            "{ACCEPTED}{{command={command}}}:\n{text}"
        );
    }
    for reason in [
        "source_not_allowed",
        "missing_header",
        "malformed",
        "unsupported",
        "timeout",
        "closed",
    ] {
        assert_eq!(
            common::metric_value(&text, REJECTED, &[("reason", reason)]),
            Some(0.0),
            "{REJECTED}{{reason={reason}}}:\n{text}"
        );
    }
}

#[test]
fn binding_through_haproxy_sees_the_client_not_the_balancer_over_tcp_and_tls() {
    let p = start_server("proxy-binding");
    let h = start_haproxy(&p);

    let mut tcp = connect_from(CLIENT_IP, h.tcp);
    let me = tcp.local_addr().unwrap();
    assert_eq!(xor_mapped_address(&mut tcp), me, "over TCP");

    let tcp = connect_from(CLIENT_IP, h.tls);
    let me = tcp.local_addr().unwrap();
    let mut tls = tls_over(tcp);
    assert_eq!(xor_mapped_address(&mut tls), me, "over TLS");

    wait_metric(&p.server, ACCEPTED, &[("command", "proxy")], 2.0);
    let rejected = p.server.metric(REJECTED, &[]);
    assert_eq!(rejected, 0.0, "{}", p.server.scrape_metrics());
}

#[test]
fn turnutils_uclient_relays_through_haproxy_over_tcp_and_tls() {
    let p = start_server("proxy-uclient");
    let h = start_haproxy(&p);
    let peer_port = std::iter::repeat_with(free_udp_tcp_port)
        .find(|port| port + 1 < 61000)
        .expect("peer port");
    let _peer = ChildGuard::spawn(
        "turnutils_peer",
        Command::new(common::require_tool("turnutils_peer")).args([
            "-L",
            "127.0.0.1",
            "-p",
            &peer_port.to_string(),
        ]),
    );
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = probe.send_to(b"ping", ("127.0.0.1", peer_port));
        let mut b = [0u8; 8];
        matches!(probe.recv_from(&mut b), Ok((4, _)))
    }));

    for (what, front, tls_flag) in [("TCP", h.tcp, false), ("TLS", h.tls, true)] {
        let mut cmd = Command::new(common::require_tool("turnutils_uclient"));
        cmd.arg("-t");
        if tls_flag {
            cmd.arg("-S");
        }
        cmd.args(["-X", "-c", "-z", "5", "-m", "1", "-n", "30", "-l", "120"])
            .args(["-L", &CLIENT_IP.to_string()])
            .args(["-p", &front.port().to_string()])
            .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
            .args(["-u", USER, "-w", PASSWORD, "127.0.0.1"]);
        let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
        let text = out.combined();
        assert!(out.success(), "uclient over {what} failed:\n{text}");
        let totals = text
            .lines()
            .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
            .unwrap_or_else(|| panic!("no uclient report over {what}:\n{text}"));
        assert!(
            totals.contains("tot_send_msgs=30, tot_recv_msgs=30"),
            "uclient over {what}: {totals}\n{text}"
        );
        // The allocation ends when uclient's connection closes; the server's line names the
        // client the header carried, not HAProxy's 127.0.0.1.
        let transport = if tls_flag { "tls" } else { "tcp" };
        let logged = wait_until(Duration::from_secs(10), || {
            p.server.log().lines().any(|l| {
                l.contains("allocation ended")
                    && l.contains("client=127.0.0.2:")
                    && l.contains(&format!("transport=\"{transport}\""))
            })
        });
        assert!(
            logged,
            "no 'allocation ended' line with client=127.0.0.2 over {what}:\n{}",
            p.server.log()
        );
    }
    assert!(
        !p.server.log().contains("client=127.0.0.1:"),
        "the balancer's address leaked into the server's view:\n{}",
        p.server.log()
    );
}

#[test]
fn connections_without_a_valid_header_or_from_outside_the_allow_list_are_closed_and_counted() {
    let p = start_server("proxy-reject");
    let tcp = SocketAddr::new(LOCALHOST, p.tcp_port);
    let tls = SocketAddr::new(LOCALHOST, p.tls_port);
    let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();

    // Allowed source, no header: a plain STUN Binding.
    let mut s = connect_from(LOCALHOST, tcp);
    s.write_all(&binding_request()).unwrap();
    assert!(closed_by_server(&mut s), "served without a header");
    wait_metric(&p.server, REJECTED, &[("reason", "missing_header")], 1.0);
    // The same on TLS: a ClientHello where the header should be.
    let s = connect_from(LOCALHOST, tls);
    let (mut t, _) = tls::client(s);
    assert!(t.flush().is_err() || t.read(&mut [0u8; 8]).map_or(true, |n| n == 0));
    wait_metric(&p.server, REJECTED, &[("reason", "missing_header")], 2.0);

    // A valid header from a source outside the allow list.
    let mut s = connect_from(OUTSIDER_IP, tcp);
    let _ = s.write_all(&v2_header(1, client, tcp));
    let _ = s.write_all(&binding_request());
    assert!(
        closed_by_server(&mut s),
        "served from outside the allow list"
    );
    wait_metric(
        &p.server,
        REJECTED,
        &[("reason", "source_not_allowed")],
        1.0,
    );

    // Malformed: version nibble 1, then a length far over the limit.
    let mut bad_version = v2_header(1, client, tcp);
    bad_version[12] = 0x11;
    let mut too_long = v2_header(1, client, tcp);
    too_long[14..16].copy_from_slice(&[0xff, 0xff]);
    for (i, bad) in [bad_version, too_long].into_iter().enumerate() {
        let mut s = connect_from(LOCALHOST, tcp);
        s.write_all(&bad).unwrap();
        assert!(closed_by_server(&mut s), "malformed header {i} served");
        wait_metric(
            &p.server,
            REJECTED,
            &[("reason", "malformed")],
            (i + 1) as f64,
        );
    }

    // A text v1 header.
    let mut s = connect_from(LOCALHOST, tcp);
    s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 3478\r\n")
        .unwrap();
    assert!(closed_by_server(&mut s), "v1 header served");
    wait_metric(&p.server, REJECTED, &[("reason", "unsupported")], 1.0);

    // Closed before the header is complete (a plain TCP health check).
    let s = connect_from(LOCALHOST, tcp);
    drop(s);
    wait_metric(&p.server, REJECTED, &[("reason", "closed")], 1.0);

    // LOCAL (the balancer's health check): served, with the connection's own address.
    let mut s = connect_from(LOCALHOST, tcp);
    let me = s.local_addr().unwrap();
    s.write_all(&v2_header(0, client, tcp)).unwrap();
    assert_eq!(xor_mapped_address(&mut s), me, "LOCAL over TCP");
    wait_metric(&p.server, ACCEPTED, &[("command", "local")], 1.0);

    // A hand-written PROXY header is trusted from an allowed source (over TLS too).
    let s = connect_from(LOCALHOST, tls);
    let mut raw = s.try_clone().unwrap();
    raw.write_all(&v2_header(1, client, tls)).unwrap();
    let mut t = tls_over(s);
    assert_eq!(xor_mapped_address(&mut t), client, "PROXY over TLS");
    wait_metric(&p.server, ACCEPTED, &[("command", "proxy")], 1.0);

    // Nothing above was counted as anything else.
    assert_eq!(p.server.metric(REJECTED, &[("reason", "timeout")]), 0.0);
    assert_eq!(
        p.server
            .metric(REJECTED, &[("reason", "source_not_allowed")]),
        1.0
    );
}
