//! The channel server's links to SFU nodes (`services/sfu/PROTOCOL.md`, "The link"), over the wire: a
//! real signaling node (`serve_with_store` over a shared in-memory store) and a tiny WebSocket
//! server standing in for the SFU node, which checks the query and the `Authorization` header
//! and lets each test drive its end of every link.

use futures_util::{SinkExt, StreamExt};
use registry::memory::MemoryStore;
use registry::{RoomMode, RoomRecord, SfuNodeInfo, Store};
use serde_json::{json, Value};
use signaling::auth::{mint_token, ApiKey, Grants};
use signaling::{serve_with_store, Ready, SignalingConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "sfu-test-secret";

fn api_key() -> ApiKey {
    ApiKey {
        key: "k".into(),
        secret: "test-api-secret".into(),
    }
}

/// A signaling node over `store`; stopped when the token is cancelled.
async fn start_node(
    store: Arc<MemoryStore>,
    node_id: &str,
    sfu_secret: &str,
    shutdown: &CancellationToken,
) -> Ready {
    let mut cfg = SignalingConfig::with_defaults(&Default::default());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.metrics = "127.0.0.1:0".parse().unwrap();
    cfg.api_keys = vec![api_key()];
    cfg.dev_key = false;
    cfg.node_id = node_id.into();
    cfg.sfu_secret = Some(sfu_secret.into());
    cfg.resume_grace_secs = 2;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let store: Arc<dyn Store> = store;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        serve_with_store(cfg, store, shutdown, move |r| {
            let _ = tx.send(r.clone());
        })
        .await
        .unwrap();
    });
    timeout(WAIT, rx).await.unwrap().unwrap()
}

/// One link accepted by the fake SFU.
struct Link {
    uri: String,
    ws: WebSocketStream<TcpStream>,
}

/// The fake SFU node: accepts links with the right bearer secret (401 otherwise) and hands
/// them to the test.
async fn fake_sfu() -> (SocketAddr, mpsc::Receiver<Link>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut uri = String::new();
                // The error type is tungstenite's `Callback` signature.
                #[allow(clippy::result_large_err)]
                let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                    uri = req.uri().to_string();
                    let auth = req
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok());
                    if auth == Some(&format!("Bearer {SECRET}")) {
                        Ok(resp)
                    } else {
                        let mut e = ErrorResponse::new(Some("unauthorized".into()));
                        *e.status_mut() = StatusCode::UNAUTHORIZED;
                        Err(e)
                    }
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await {
                    let _ = tx.send(Link { uri, ws }).await;
                }
            });
        }
    });
    (addr, rx)
}

async fn register_sfu(store: &MemoryStore, addr: SocketAddr) {
    store
        .sfu_heartbeat(
            &SfuNodeInfo {
                id: "s1".into(),
                url: format!("ws://{addr}"),
                load: 0,
                load_permille: 0,
                draining: false,
            },
            Duration::from_secs(600),
        )
        .await
        .unwrap();
}

async fn create_room(store: &MemoryStore, name: &str, mode: RoomMode) {
    store
        .create_room(&RoomRecord {
            name: name.into(),
            mode,
            capacity: 4,
            node: "n1".into(),
            created_at: 0,
            sfu: None,
        })
        .await
        .unwrap();
}

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(ready: &Ready) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", ready.http))
        .await
        .unwrap();
    ws
}

async fn send(ws: &mut Client, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON frame, or the close code as `{"close": code}`.
async fn recv(ws: &mut Client) -> Value {
    loop {
        match timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(f))) => return json!({"close": f.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

fn join_msg(room: &str, name: &str, resume: Option<&str>) -> Value {
    let token = mint_token(
        &api_key(),
        room,
        &format!("id-{name}"),
        None,
        Grants {
            join: true,
            create: false,
        },
        3600,
        signaling::io::node::unix_now(),
    );
    let mut m = json!({"type":"join","v":1,"room":room,"token":token,"name":name});
    if let Some(r) = resume {
        m["resume"] = json!(r);
    }
    m
}

async fn next_link(links: &mut mpsc::Receiver<Link>) -> Link {
    timeout(WAIT, links.recv())
        .await
        .expect("a link in time")
        .unwrap()
}

/// What the fake SFU reads next on `link`: a JSON object, or `{"close": code}`.
async fn link_recv(link: &mut Link) -> Value {
    loop {
        match timeout(WAIT, link.ws.next())
            .await
            .expect("a link frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(f))) => return json!({"close": f.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return json!({"close": null}),
        }
    }
}

/// `GET /metrics` on the node's metrics listener: the value of the series `line_prefix`.
async fn metric(ready: &Ready, series: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(ready.metrics).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_relays_both_ways_and_closes_on_leave() {
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    let (sfu, mut links) = fake_sfu().await;
    register_sfu(&store, sfu).await;
    create_room(&store, "demo", RoomMode::Sfu).await;
    let ready = start_node(store.clone(), "n1", SECRET, &shutdown).await;

    let mut alice = connect(&ready).await;
    send(&mut alice, join_msg("demo", "Alice A&B", None)).await;
    let joined = recv(&mut alice).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["room"]["mode"], "sfu");
    let pid = joined["participantId"].as_str().unwrap().to_string();
    let mut link = next_link(&mut links).await;
    assert_eq!(
        link.uri,
        format!("/v1/signal?room=demo&participant={pid}&name=Alice%20A%26B")
    );
    assert_eq!(
        store
            .get_room("demo")
            .await
            .unwrap()
            .unwrap()
            .sfu
            .as_deref(),
        Some("s1")
    );

    // Client -> SFU: the `msg` object, verbatim.
    let offer =
        json!({"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n","extra":[1,{"a":null}]});
    send(&mut alice, json!({"type":"sfu","msg":offer.clone()})).await;
    assert_eq!(link_recv(&mut link).await, offer);

    // SFU -> client: wrapped, also when larger than the client frame limit.
    let answer = json!({"type":"answer","sdp":"v=0"});
    link.ws
        .send(Message::text(answer.to_string()))
        .await
        .unwrap();
    assert_eq!(recv(&mut alice).await, json!({"type":"sfu","msg":answer}));
    let big = json!({"type":"offer","sdp":"a".repeat(300_000),"tracks":[]});
    link.ws.send(Message::text(big.to_string())).await.unwrap();
    assert_eq!(recv(&mut alice).await, json!({"type":"sfu","msg":big}));
    // Not an object: dropped.
    link.ws.send(Message::text("[1]")).await.unwrap();
    assert_eq!(metric(&ready, "signaling_sfu_links").await, 1.0);

    // `msg` must be an object.
    send(&mut alice, json!({"type":"sfu","msg":"offer","rid":1})).await;
    let e = recv(&mut alice).await;
    assert_eq!(
        (e["code"].as_u64(), e["rid"].as_u64()),
        (Some(4000), Some(1)),
        "{e}"
    );
    assert_eq!(
        metric(&ready, "signaling_messages_total{type=\"sfu\"}").await,
        1.0
    );

    send(&mut alice, json!({"type":"leave"})).await;
    assert_eq!(recv(&mut alice).await["type"], "left");
    assert_eq!(link_recv(&mut link).await, json!({"close": 1000}));
    assert_eq!(metric(&ready, "signaling_sfu_link_errors_total").await, 0.0);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_live_sfu_node_refuses_the_join_with_4503() {
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    create_room(&store, "demo", RoomMode::Sfu).await;
    let ready = start_node(store.clone(), "n1", SECRET, &shutdown).await;
    let mut alice = connect(&ready).await;
    send(&mut alice, join_msg("demo", "Alice", None)).await;
    let e = recv(&mut alice).await;
    assert_eq!(e["code"], 4503, "{e}");
    assert_eq!(e["request"], "join");
    assert_eq!(recv(&mut alice).await, json!({"close": 4001}));
    assert!(store.participants("demo").await.unwrap().is_empty());
    assert_eq!(
        metric(&ready, "signaling_errors_total{code=\"sfu_unavailable\"}").await,
        1.0
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_lost_link_is_error_4503() {
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    let (sfu, mut links) = fake_sfu().await;
    register_sfu(&store, sfu).await;
    create_room(&store, "demo", RoomMode::Sfu).await;
    // Wrong secret: the SFU answers 401.
    let wrong = start_node(store.clone(), "n1", "wrong-secret", &shutdown).await;
    let mut alice = connect(&wrong).await;
    send(&mut alice, join_msg("demo", "Alice", None)).await;
    assert_eq!(recv(&mut alice).await["type"], "joined");
    let e = recv(&mut alice).await;
    assert_eq!(e["code"], 4503, "{e}");
    assert!(e["message"].as_str().unwrap().contains("401"), "{e}");
    assert_eq!(metric(&wrong, "signaling_sfu_link_errors_total").await, 1.0);
    // Without a link, `sfu` messages are answered with 4503 too.
    send(&mut alice, json!({"type":"sfu","msg":{"type":"resync"}})).await;
    assert_eq!(recv(&mut alice).await["code"], 4503);

    // Right secret, then the SFU closes the link (room full on the SFU: 4409).
    let ready = start_node(store.clone(), "n2", SECRET, &shutdown).await;
    let mut bob = connect(&ready).await;
    send(&mut bob, join_msg("demo", "Bob", None)).await;
    assert_eq!(recv(&mut bob).await["type"], "joined");
    let mut link = next_link(&mut links).await;
    link.ws
        .close(Some(CloseFrame {
            code: CloseCode::from(4409),
            reason: "room full".into(),
        }))
        .await
        .unwrap();
    let e = loop {
        let m = recv(&mut bob).await;
        if m["type"] == "error" {
            break m;
        }
    };
    assert_eq!(e["code"], 4503, "{e}");
    assert!(e["message"].as_str().unwrap().contains("4409"), "{e}");
    assert_eq!(metric(&ready, "signaling_sfu_link_errors_total").await, 1.0);
    assert_eq!(metric(&ready, "signaling_sfu_links").await, 0.0);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_rooms_refuse_sfu_messages() {
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    create_room(&store, "mesh", RoomMode::Mesh).await;
    let ready = start_node(store.clone(), "n1", SECRET, &shutdown).await;
    let mut alice = connect(&ready).await;
    send(&mut alice, join_msg("mesh", "Alice", None)).await;
    assert_eq!(recv(&mut alice).await["type"], "joined");
    send(
        &mut alice,
        json!({"type":"sfu","msg":{"type":"resync"},"rid":"r1"}),
    )
    .await;
    let e = recv(&mut alice).await;
    assert_eq!(
        (e["code"].as_u64(), e["request"].as_str(), e["rid"].as_str()),
        (Some(4000), Some("sfu"), Some("r1")),
        "{e}"
    );
    assert!(store.get_room("mesh").await.unwrap().unwrap().sfu.is_none());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_keeps_the_link_here_and_reopens_it_elsewhere() {
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    let (sfu, mut links) = fake_sfu().await;
    register_sfu(&store, sfu).await;
    create_room(&store, "demo", RoomMode::Sfu).await;
    let a = start_node(store.clone(), "n1", SECRET, &shutdown).await;
    let b = start_node(store.clone(), "n2", SECRET, &shutdown).await;

    let mut alice = connect(&a).await;
    send(&mut alice, join_msg("demo", "Alice", None)).await;
    let joined = recv(&mut alice).await;
    let token = joined["resumeToken"].as_str().unwrap().to_string();
    let mut link = next_link(&mut links).await;

    // Drop without leave, resume on the same node: the link stays and is used again.
    drop(alice);
    let mut alice = connect(&a).await;
    send(&mut alice, join_msg("demo", "Alice", Some(&token))).await;
    let joined = recv(&mut alice).await;
    assert_eq!(joined["resumed"], true, "{joined}");
    let token = joined["resumeToken"].as_str().unwrap().to_string();
    send(&mut alice, json!({"type":"sfu","msg":{"type":"resync"}})).await;
    assert_eq!(link_recv(&mut link).await, json!({"type":"resync"}));
    assert!(links.try_recv().is_err(), "no second link");

    // Resume on node n2: n2 opens a link with resume=1, n1 closes its own.
    drop(alice);
    let mut alice = connect(&b).await;
    send(&mut alice, join_msg("demo", "Alice", Some(&token))).await;
    assert_eq!(recv(&mut alice).await["resumed"], true);
    let mut newer = next_link(&mut links).await;
    assert!(newer.uri.ends_with("&resume=1"), "{}", newer.uri);
    assert_eq!(link_recv(&mut link).await, json!({"close": 1000}));
    send(&mut alice, json!({"type":"sfu","msg":{"type":"resync"}})).await;
    assert_eq!(link_recv(&mut newer).await, json!({"type":"resync"}));

    // Dropped for good: the grace period (2 s) ends and the link is closed.
    drop(alice);
    assert_eq!(link_recv(&mut newer).await, json!({"close": 1000}));
    assert!(store.participants("demo").await.unwrap().is_empty());
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_room_closes_the_links() {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    let (sfu, mut links) = fake_sfu().await;
    register_sfu(&store, sfu).await;
    create_room(&store, "demo", RoomMode::Sfu).await;
    let ready = start_node(store.clone(), "n1", SECRET, &shutdown).await;
    let mut alice = connect(&ready).await;
    send(&mut alice, join_msg("demo", "Alice", None)).await;
    assert_eq!(recv(&mut alice).await["type"], "joined");
    let mut link = next_link(&mut links).await;

    let auth = base64::engine::general_purpose::STANDARD.encode("k:test-api-secret");
    let mut tcp = TcpStream::connect(ready.http).await.unwrap();
    tcp.write_all(
        format!("DELETE /v1/rooms/demo HTTP/1.0\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 204") || answer.starts_with("HTTP/1.1 204"),
        "{answer}"
    );

    assert_eq!(recv(&mut alice).await["type"], "room-closed");
    assert_eq!(recv(&mut alice).await, json!({"close": 4010}));
    assert_eq!(link_recv(&mut link).await, json!({"close": 1000}));
    assert_eq!(metric(&ready, "signaling_sfu_link_errors_total").await, 0.0);
    shutdown.cancel();
}

/// An SFU node that refuses every link with 503 (a draining node that does not host the room).
async fn refusing_sfu() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tried = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = tried.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            #[allow(clippy::result_large_err)]
            let refuse = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                let mut e = ErrorResponse::new(Some("draining".into()));
                *e.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Err(e)
            };
            let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse).await;
        }
    });
    (addr, tried)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_left_on_a_draining_sfu_node_moves_to_one_that_takes_rooms() {
    let shutdown = CancellationToken::new();
    let store = Arc::new(MemoryStore::new());
    let (draining, tried) = refusing_sfu().await;
    let (live, mut links) = fake_sfu().await;
    for (id, addr, is_draining) in [("s1", draining, true), ("s2", live, false)] {
        store
            .sfu_heartbeat(
                &SfuNodeInfo {
                    id: id.into(),
                    url: format!("ws://{addr}"),
                    load: 0,
                    load_permille: 0,
                    draining: is_draining,
                },
                Duration::from_secs(600),
            )
            .await
            .unwrap();
    }
    // The room's media was on s1, which has started draining since its last participant left.
    store
        .create_room(&RoomRecord {
            name: "demo".into(),
            mode: RoomMode::Sfu,
            capacity: 4,
            node: "n1".into(),
            created_at: 0,
            sfu: Some("s1".into()),
        })
        .await
        .unwrap();
    let ready = start_node(store.clone(), "n1", SECRET, &shutdown).await;
    let mut alice = connect(&ready).await;
    send(&mut alice, join_msg("demo", "Alice", None)).await;
    assert_eq!(recv(&mut alice).await["type"], "joined");
    // s1 was asked and refused; the link went to s2 and the room now says s2.
    let link = next_link(&mut links).await;
    assert!(link.uri.contains("room=demo"), "{}", link.uri);
    assert_eq!(tried.load(std::sync::atomic::Ordering::Relaxed), 1);
    let room = store.get_room("demo").await.unwrap().unwrap();
    assert_eq!(room.sfu.as_deref(), Some("s2"));
    // A new room is placed on s2 directly: s1 drains.
    create_room(&store, "fresh", RoomMode::Sfu).await;
    let mut bob = connect(&ready).await;
    send(&mut bob, join_msg("fresh", "Bob", None)).await;
    assert_eq!(recv(&mut bob).await["type"], "joined");
    let link = next_link(&mut links).await;
    assert!(link.uri.contains("room=fresh"), "{}", link.uri);
    assert_eq!(tried.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        store
            .get_room("fresh")
            .await
            .unwrap()
            .unwrap()
            .sfu
            .as_deref(),
        Some("s2")
    );
    shutdown.cancel();
}
