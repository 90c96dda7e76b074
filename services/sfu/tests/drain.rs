//! Drain of a running SFU node (in process, loopback only): `POST /admin/drain` turns `/readyz`
//! to 503 while `/healthz` stays 200, a link for a room the node does not host is refused with
//! 503 `draining` while a hosted room still takes links, `turnkey_draining` is 1, and once the
//! last link closes the node stops (its `serve` returns) instead of waiting for the deadline.

use sfu::config::{Layered, SfuArgs};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "drain-test-secret";
const TOKEN: &str = "drain-test-admin";

/// One HTTP/1.1 request on a fresh connection: status and body.
async fn http(addr: SocketAddr, head: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        code,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_is_not_ready_refuses_new_rooms_and_stops_when_empty() {
    let cfg = SfuArgs {
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        link_listen: Some("127.0.0.1:0".parse().unwrap()),
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        workers: Some(1),
        sfu_secret: Some(SECRET.into()),
        admin_token: Some(TOKEN.into()),
        drain_timeout_secs: Some(30),
        ..Default::default()
    }
    .resolve(&sfu::config::Defaults::default())
    .unwrap();
    let drain = sfu::run::Drain::new(Duration::from_secs(cfg.drain_timeout_secs));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let d = drain.clone();
    let node = tokio::spawn(async move {
        sfu::run::serve(cfg, None, d, CancellationToken::new(), move |r| {
            let _ = tx.send(r);
        })
        .await
    });
    let ready = rx.await.expect("sfu ready");
    assert_eq!(http(ready.metrics, &get("/readyz")).await.0, 200);
    // Without the token: refused, nothing starts.
    let post = |auth: &str| {
        format!("POST /admin/drain HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    assert_eq!(http(ready.metrics, &post("")).await.0, 401);
    assert!(!drain.is_draining());
    // A room hosted before the drain: its link upgrades and stays open.
    let upgrade = |room: &str| {
        format!(
            "GET /v1/signal?room={room}&participant=p1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let mut kept = TcpStream::connect(ready.link).await.unwrap();
    kept.write_all(upgrade("kept").as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[9..12], b"101");
    let (code, body) = http(
        ready.metrics,
        &post(&format!("Authorization: Bearer {TOKEN}\r\n")),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert!(drain.is_draining());
    let (code, body) = http(ready.metrics, &get("/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(http(ready.metrics, &get("/healthz")).await.0, 200);
    let (_, metrics) = http(ready.metrics, &get("/metrics")).await;
    assert!(metrics.contains("turnkey_draining 1"), "{metrics}");
    // A new room is refused; the hosted one still takes links.
    let (code, body) = http(ready.link, &upgrade("new-room")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"draining\""), "{body}");
    let mut second = TcpStream::connect(ready.link).await.unwrap();
    second.write_all(upgrade("kept").as_bytes()).await.unwrap();
    second.read_exact(&mut head).await.unwrap();
    assert_eq!(&head[9..12], b"101");
    // Still serving while a link is open.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!node.is_finished(), "stopped with links open");
    drop(kept);
    drop(second);
    // The last link closed: the drain ends and `serve` returns.
    let done = tokio::time::timeout(Duration::from_secs(10), node)
        .await
        .expect("the drained node stops well before its deadline");
    done.unwrap().unwrap();
}
