//! Unauthenticated state is bounded (RFC 6347 §4.2.1, §4.1.2.7), against the real `turn-server`
//! over loopback:
//! - DTLS: ClientHellos without cookie from 20 100 sources (distinct 127.x.y.z addresses, one
//!   datagram each, as spoofed sources would send) create no state: each is answered statelessly
//!   and counted, the half-open gauge stays 0, and a real DTLS client (webrtc-rs `rtc-dtls`)
//!   still connects after one cookie round trip. (Before, each created an association kept for
//!   600 s, and past 20 000 per worker new clients were refused.)
//! - DTLS: short and forged datagrams from an established client's address are dropped and
//!   counted; the association still carries the client's next request.
//! - TCP: the (N+1)th connection from one IP is closed and counted, while 127.0.0.2 connects.
//! - TLS: handshakes in progress are capped per IP, and another IP still completes one.
//! - TCP: a slowloris connection (one byte a second) is closed at the first-request deadline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc_dtls::config::ConfigBuilder;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;

mod common;
use common::tls::CertFiles;
use common::{free_udp_tcp_port, wait_until, ServerGuard, LOCALHOST};

const DROPPED: &str = "turn_dropped_packets_total";

/// turn-server on 127.0.0.1 with TCP/UDP on `port`, TLS and DTLS on `tls_port`, plus `extra`.
struct Server {
    guard: ServerGuard,
    port: u16,
    tls_port: u16,
    _files: CertFiles,
}

impl Server {
    fn start(tag: &str, extra: &[&str]) -> Server {
        let (files, _) = CertFiles::with_new_cert(tag);
        let port = free_udp_tcp_port();
        let tls_port = free_udp_tcp_port();
        let mut args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--tls-listen",
            &format!("127.0.0.1:{tls_port}"),
            "--dtls-listen",
            &format!("127.0.0.1:{tls_port}"),
            "--cert",
            files.cert_arg(),
            "--key",
            files.key_arg(),
            "--user",
            "limits:limits-pw",
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "61000",
            "--max-port",
            "62999",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Server {
            guard: ServerGuard::turn_server(&args),
            port,
            tls_port,
            _files: files,
        }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.guard.metric(name, labels)
    }

    fn dropped(&self, reason: &str) -> f64 {
        self.metric(DROPPED, &[("reason", reason)])
    }

    /// The value of a gauge, which must be exported.
    fn gauge(&self, name: &str) -> f64 {
        common::metric_value(&self.guard.scrape_metrics(), name, &[])
            .unwrap_or_else(|| panic!("{name} is not exported"))
    }
}

/// A STUN Binding request with transaction ID `[tag; 12]`.
fn binding_request(tag: u8) -> Vec<u8> {
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[tag; 12]);
    req
}

fn is_binding_success(resp: &[u8], tag: u8) -> bool {
    resp.len() >= 20 && resp[0..2] == [0x01, 0x01] && resp[8..20] == [tag; 12]
}

/// A DTLS client (webrtc-rs rtc-dtls, sans-IO) on its own loopback UDP socket.
struct DtlsClient {
    sock: UdpSocket,
    ep: Endpoint,
    server: SocketAddr,
    hello_verify_requests: usize,
}

impl DtlsClient {
    /// Connects to `server`; panics if the handshake does not complete within 10 s.
    fn connect(server: SocketAddr) -> DtlsClient {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let local = sock.local_addr().unwrap();
        let provider = rtc_dtls::crypto_provider::default_provider().expect("provider");
        let cfg = ConfigBuilder::default()
            .with_crypto_provider(provider)
            .with_insecure_skip_verify(true)
            .build(true, None)
            .expect("client config");
        let mut ep = Endpoint::new(local, TransportProtocol::UDP, None);
        ep.connect(Instant::now(), server, Arc::new(cfg), None)
            .expect("connect");
        let mut c = DtlsClient {
            sock,
            ep,
            server,
            hello_verify_requests: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "DTLS handshake with {server} did not complete"
            );
            if c.pump()
                .iter()
                .any(|e| matches!(e, EndpointEvent::HandshakeComplete))
            {
                return c;
            }
        }
    }

    /// Sends what the endpoint queued, waits up to 50 ms for a datagram and feeds it (or the
    /// endpoint's timer) in; returns the events.
    fn pump(&mut self) -> Vec<EndpointEvent> {
        while let Some(t) = self.ep.poll_transmit() {
            self.sock.send_to(&t.message, self.server).expect("send");
        }
        let mut buf = [0u8; 4096];
        let now = Instant::now();
        let events = match self.sock.recv_from(&mut buf) {
            Ok((n, from)) if from == self.server => {
                if buf[0] == 22 && buf.get(13) == Some(&3) {
                    self.hello_verify_requests += 1;
                }
                self.ep
                    .read(now, from, None, (&buf[..n]).into())
                    .unwrap_or_default()
            }
            _ => {
                if self.ep.poll_timeout(&self.server).is_some_and(|t| t <= now) {
                    let _ = self.ep.handle_timeout(self.server, now);
                }
                Vec::new()
            }
        };
        while let Some(t) = self.ep.poll_transmit() {
            self.sock.send_to(&t.message, self.server).expect("send");
        }
        events
    }

    /// Sends `msg` over the association; the first application data back within 5 s.
    fn request(&mut self, msg: &[u8]) -> Option<Vec<u8>> {
        self.ep.write(Instant::now(), self.server, msg).ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            for e in self.pump() {
                if let EndpointEvent::ApplicationData(d) = e {
                    return Some(d.to_vec());
                }
            }
        }
        None
    }

    fn binding_works(&mut self, tag: u8) -> bool {
        self.request(&binding_request(tag))
            .is_some_and(|r| is_binding_success(&r, tag))
    }
}

/// A first ClientHello (no cookie) as a spoofer would send it.
fn fake_client_hello(i: u32) -> Vec<u8> {
    let mut body = vec![0xfe, 0xfd];
    body.extend_from_slice(&[0x5a; 28]);
    body.extend_from_slice(&i.to_be_bytes());
    body.extend_from_slice(&[0, 0]); // session_id, cookie
    body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&[0, 0]); // no extensions
    let len = body.len() as u32;
    let mut out = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    out.extend_from_slice(&((12 + body.len()) as u16).to_be_bytes());
    out.push(1);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&body);
    out
}

/// Source address number `i`: 127.10.0.1 onwards, never .0 or .255.
fn source_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        10 + (i / 62_500) as u8,
        ((i / 250) % 250) as u8,
        (1 + i % 250) as u8,
    )
}

#[test]
fn dtls_client_hellos_from_20k_sources_create_no_state_and_a_real_client_still_connects() {
    // One worker: before this change its DTLS socket refused new clients past 20 000 associations.
    let server = Server::start("spoof", &["--workers", "1"]);
    let target = SocketAddr::new(LOCALHOST, server.tls_port);
    const SOURCES: u32 = 20_100;
    const BATCH: u32 = 300;
    let mut answered = 0u32;
    let mut sent = 0u32;
    while sent < SOURCES {
        let end = (sent + BATCH).min(SOURCES);
        let socks: Vec<UdpSocket> = (sent..end)
            .map(|i| {
                let s = UdpSocket::bind((source_ip(i), 0)).expect("bind 127.10.x.y");
                s.send_to(&fake_client_hello(i), target).expect("send");
                s
            })
            .collect();
        sent = end;
        // Paced by the answers (HelloVerifyRequests), so the server's socket buffer never
        // overflows; a source that gets none within the batch's 5 s is not waited for again.
        let deadline = Instant::now() + Duration::from_secs(5);
        for s in &socks {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s.set_read_timeout(Some(left)).unwrap();
            let mut b = [0u8; 256];
            if matches!(s.recv(&mut b), Ok(n) if n > 13 && b[0] == 22 && b[13] == 3) {
                answered += 1;
            }
        }
    }

    let mut client = DtlsClient::connect(target);
    assert!(client.binding_works(1), "Binding over DTLS failed");
    assert_eq!(client.hello_verify_requests, 1, "one cookie round trip");
    assert_eq!(
        answered, SOURCES,
        "ClientHellos answered with a HelloVerifyRequest"
    );
    assert!(
        server.dropped("dtls_no_cookie") >= f64::from(SOURCES + 1),
        "dtls_no_cookie = {}",
        server.dropped("dtls_no_cookie")
    );
    assert!(
        wait_until(Duration::from_secs(5), || server
            .gauge("turn_dtls_handshakes_in_progress")
            == 0.0),
        "half-open DTLS handshakes left: {}",
        server.gauge("turn_dtls_handshakes_in_progress")
    );
    assert_eq!(server.dropped("dtls_handshake_limit"), 0.0);
}

#[test]
fn garbage_from_an_established_dtls_client_address_does_not_tear_it_down() {
    let server = Server::start("garbage", &[]);
    let target = SocketAddr::new(LOCALHOST, server.tls_port);
    let mut client = DtlsClient::connect(target);
    assert!(client.binding_works(1));

    // Short, undecodable, and a well-framed record that fails authentication.
    let mut forged = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 77, 0, 48];
    forged.extend_from_slice(&[0x42; 48]);
    for junk in [&[0x16, 0xfe][..], &[0u8; 5][..], &forged[..]] {
        client.sock.send_to(junk, target).expect("send");
    }
    assert!(
        client.binding_works(2),
        "the association did not survive an unauthenticated datagram"
    );
    assert!(client.binding_works(3));
    assert_eq!(server.dropped("dtls_bad_record"), 3.0);
}

/// A TCP connection from `ip` (any port) to 127.0.0.1:`port`.
fn connect_from(ip: &str, port: u16) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(ip.parse().unwrap(), 0))?;
        sock.connect(SocketAddr::new(LOCALHOST, port)).await
    });
    let s = s.expect("connect").into_std().expect("std stream");
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn tcp_binding_works(s: &mut TcpStream, tag: u8) -> bool {
    if s.write_all(&binding_request(tag)).is_err() {
        return false;
    }
    let mut head = [0u8; 20];
    if s.read_exact(&mut head).is_err() {
        return false;
    }
    let mut body = vec![0u8; usize::from(u16::from_be_bytes([head[2], head[3]]))];
    s.read_exact(&mut body).is_ok() && is_binding_success(&head, tag)
}

/// True if the server closes `s` (EOF or reset) within its read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
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
fn tcp_connections_per_ip_are_capped_and_another_ip_still_connects() {
    let server = Server::start("tcp-per-ip", &["--tcp-max-connections-per-ip", "3"]);
    let mut held: Vec<TcpStream> = (0..3u8)
        .map(|i| {
            let mut s = connect_from("127.0.0.1", server.port);
            assert!(tcp_binding_works(&mut s, i), "connection {i} not served");
            s
        })
        .collect();
    assert_eq!(server.gauge("turn_tcp_connections"), 3.0);

    let mut fourth = connect_from("127.0.0.1", server.port);
    assert!(
        closed_by_server(&mut fourth),
        "the 4th connection from 127.0.0.1 stayed open"
    );
    assert_eq!(server.dropped("tcp_per_ip_limit"), 1.0);

    let mut other = connect_from("127.0.0.2", server.port);
    assert!(tcp_binding_works(&mut other, 9), "127.0.0.2 was not served");

    // A closed connection gives its slot back.
    drop(held.pop());
    assert!(
        wait_until(Duration::from_secs(5), || server
            .gauge("turn_tcp_connections")
            == 3.0),
        "the closed connection is still counted"
    );
    let mut again = connect_from("127.0.0.1", server.port);
    assert!(tcp_binding_works(&mut again, 7));
    assert_eq!(server.dropped("tcp_per_ip_limit"), 1.0);
}

#[test]
fn tls_handshakes_in_progress_are_capped_per_ip() {
    let server = Server::start("tls-per-ip", &["--tls-max-handshakes-per-ip", "2"]);
    // Two connections that never send a ClientHello hold two handshake slots.
    let _idle: Vec<TcpStream> = (0..2)
        .map(|_| connect_from("127.0.0.1", server.tls_port))
        .collect();
    assert!(
        wait_until(Duration::from_secs(5), || server
            .gauge("turn_tls_handshakes_in_progress")
            == 2.0),
        "turn_tls_handshakes_in_progress = {}",
        server.gauge("turn_tls_handshakes_in_progress")
    );
    let mut third = connect_from("127.0.0.1", server.tls_port);
    assert!(
        closed_by_server(&mut third),
        "a 3rd handshake from 127.0.0.1 was accepted"
    );
    assert_eq!(server.dropped("tls_handshake_per_ip_limit"), 1.0);

    // Another IP completes a handshake and is served.
    let (mut tls, _) = common::tls::client(connect_from("127.0.0.2", server.tls_port));
    let req = binding_request(5);
    tls.write_all(&req).expect("TLS handshake from 127.0.0.2");
    let mut head = [0u8; 20];
    tls.read_exact(&mut head)
        .expect("Binding response over TLS");
    assert!(is_binding_success(&head, 5));
}

#[test]
fn a_slowloris_connection_is_closed_at_the_first_request_deadline() {
    let server = Server::start("slowloris", &[]);
    let mut s = connect_from("127.0.0.1", server.port);
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    // A Binding request header announcing 8 bytes of attributes: 28 bytes for the first frame,
    // of which one is sent a second, so no frame is complete before the loop ends.
    let mut frame = vec![0x00, 0x01, 0x00, 0x08, 0x21, 0x12, 0xa4, 0x42];
    frame.extend_from_slice(&[3; 12]);
    frame.extend_from_slice(&[0; 8]);
    let mut closed = false;
    for byte in &frame[..25] {
        if s.write_all(&[*byte]).is_err() || closed_by_server(&mut s) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a connection sending one byte a second was kept for 25 s"
    );
    assert!(
        wait_until(Duration::from_secs(2), || server
            .dropped("tcp_first_request_timeout")
            == 1.0),
        "tcp_first_request_timeout = {}",
        server.dropped("tcp_first_request_timeout")
    );
}
