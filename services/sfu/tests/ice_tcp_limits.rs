//! ICE-TCP bounds of a running SFU node (in process, loopback only): a connection that does not
//! complete ICE within `ice_tcp_handshake_timeout_secs` is closed, also when its first frame is
//! a Binding request naming a worker but no known ufrag; pending connections beyond the caps
//! per source IP and in total are closed at accept; each is counted in
//! `sfu_ice_tcp_closed_total{reason}` (scraped from `/metrics`).

use rtc::stun::attributes::ATTR_USERNAME;
use rtc::stun::message::{Message, TransactionId, BINDING_REQUEST};
use rtc::stun::textattrs::Username;
use sfu::config::{Layered, SfuArgs};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

struct Node {
    ice_tcp: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(handshake_secs: u64, per_ip: usize, total: usize) -> Node {
    let cfg = SfuArgs {
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        link_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        workers: Some(1),
        ice_tcp_handshake_timeout_secs: Some(handshake_secs),
        ice_tcp_max_pending_per_ip: Some(per_ip),
        ice_tcp_max_pending: Some(total),
        ..Default::default()
    }
    .resolve(&sfu::config::Defaults::default())
    .unwrap();
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let drain = sfu::run::Drain::new(std::time::Duration::from_secs(cfg.drain_timeout_secs));
        sfu::run::serve(cfg, None, drain, sd, move |r| {
            let _ = tx.send(r);
        })
        .await
        .unwrap();
    });
    let ready = rx.await.expect("sfu ready");
    Node {
        ice_tcp: ready.ice_tcp.expect("ICE-TCP on"),
        metrics: ready.metrics,
        shutdown,
    }
}

/// A TCP connection to `to` from source IP `from` (any 127/8 address is loopback on Linux).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// True if the server closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// An RFC 4571 frame holding a STUN Binding request with USERNAME `username` (webrtc-rs's
/// STUN codec).
fn framed_binding(username: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.build(&[
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(ATTR_USERNAME, username.to_string())),
    ])
    .unwrap();
    let mut f = (m.raw.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(&m.raw);
    f
}

async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_complete_ice_are_closed_at_the_deadline() {
    let node = start(1, 16, 512).await;
    // Routed to worker 0 by the ufrag prefix, but no peer connection has that ufrag: the
    // stream reaches the worker and must not stay open there.
    let mut routed = connect_from("127.0.0.1", node.ice_tcp).await;
    routed
        .write_all(&framed_binding("w0xnobodyhere:client"))
        .await
        .unwrap();
    // Silent: no frame at all.
    let mut silent = connect_from("127.0.0.1", node.ice_tcp).await;
    assert!(
        closed_within(&mut routed, Duration::from_secs(5)).await,
        "a stream with an unknown ufrag is still open after the handshake timeout"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent stream is still open after the handshake timeout"
    );
    let closed = metric(
        node.metrics,
        "sfu_ice_tcp_closed_total{reason=\"handshake_timeout\"}",
    )
    .await;
    assert_eq!(closed, 2.0);
    assert_eq!(metric(node.metrics, "sfu_ice_tcp_pending").await, 0.0);
    assert_eq!(
        metric(node.metrics, "sfu_ice_tcp_established_total").await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_connections_are_capped_per_source_ip_and_in_total() {
    // A long handshake timeout: whatever closes here is the caps' doing.
    let node = start(60, 3, 5).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", node.ice_tcp).await);
    }
    let mut over_ip = connect_from("127.0.0.2", node.ice_tcp).await;
    assert!(
        closed_within(&mut over_ip, Duration::from_secs(5)).await,
        "a 4th pending connection from one IP was not closed"
    );
    for _ in 0..2 {
        held.push(connect_from("127.0.0.3", node.ice_tcp).await);
    }
    let mut over_total = connect_from("127.0.0.4", node.ice_tcp).await;
    assert!(
        closed_within(&mut over_total, Duration::from_secs(5)).await,
        "a 6th pending connection was not closed"
    );
    for s in &mut held {
        assert!(
            !closed_within(s, Duration::from_millis(50)).await,
            "a connection within the caps was closed"
        );
    }
    let m = node.metrics;
    assert_eq!(
        metric(m, "sfu_ice_tcp_closed_total{reason=\"per_ip_limit\"}").await,
        1.0
    );
    assert_eq!(
        metric(m, "sfu_ice_tcp_closed_total{reason=\"total_limit\"}").await,
        1.0
    );
    assert_eq!(metric(m, "sfu_ice_tcp_pending").await, 5.0);
    // Places come back when pending connections go away.
    drop(held);
    let mut again = None;
    for _ in 0..100 {
        if metric(m, "sfu_ice_tcp_pending").await == 0.0 {
            again = Some(connect_from("127.0.0.2", node.ice_tcp).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = again.expect("pending places were not given back");
    assert!(!closed_within(&mut again, Duration::from_millis(200)).await);
}
