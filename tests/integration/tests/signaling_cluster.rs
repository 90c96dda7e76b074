//! Several real `signaling` nodes sharing a real `redis-server` (started per test by
//! [`common::RedisGuard`]): least-loaded room placement, relaying between participants whose
//! WebSockets are on different nodes (through the store's pub/sub), room deletion across
//! nodes, `participant-left` with reason `node-lost` when a node is killed, moving a room off a
//! dead node on the next join, and the session and channel roles in separate processes.

mod common;

use common::RedisGuard;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const API: &str = "app:cluster-secret";

type Sig = common::Signaling;

/// Starts node `id` on `redis`, then `extra`.
fn start_node(redis: &RedisGuard, id: &str, extra: &[&str]) -> Sig {
    let mut args: Vec<String> = vec![
        "--api-key".into(),
        API.into(),
        "--redis".into(),
        redis.url(),
        "--node-id".into(),
        id.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Sig::start(&args)
}

fn basic() -> String {
    common::basic_auth(API)
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        basic(),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP header end");
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let v = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, v)
}

fn join_info(sig: &Sig, room: &str, identity: &str) -> Value {
    let (status, v) = http(
        sig.http,
        "POST",
        &format!("/v1/rooms/{room}/join"),
        &json!({"identity": identity}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    v
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TokioTcp>>,
    name: String,
}

impl Client {
    /// Connects to `url` and joins `room` with `token`; returns the client and `joined`.
    async fn join(url: &str, room: &str, token: &Value, name: &str) -> (Client, Value) {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: connect {url}: {e}"));
        let mut c = Client {
            ws,
            name: name.into(),
        };
        c.send(json!({"type": "join", "v": 1, "room": room, "token": token}))
            .await;
        let j = c.recv().await;
        assert_eq!(j["type"], "joined", "{name}: {j}");
        (c, j)
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn recv_within(&mut self, wait: Duration) -> Value {
        loop {
            let m = tokio::time::timeout(wait, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {wait:?}", self.name));
            match m {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{}: expected a text frame, got {other:?}", self.name),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(5)).await
    }

    async fn closed(&mut self) -> (u16, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    before.push(serde_json::from_str(t.as_str()).unwrap())
                }
                Ok(Some(Ok(Message::Close(Some(f))))) => return (u16::from(f.code), before),
                Ok(Some(Ok(_))) => {}
                other => panic!("{}: no close frame: {other:?}", self.name),
            }
        }
    }
}

/// Token for `room` from `sig`'s `/join` (any node's session role can mint it).
fn token(sig: &Sig, room: &str, identity: &str) -> Value {
    join_info(sig, room, identity)["token"].clone()
}

fn ws(sig: &Sig) -> String {
    format!("ws://{}/v1/ws", sig.http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_rooms_through_redis() {
    let redis = RedisGuard::start();
    let a = start_node(&redis, "node-a", &[]);
    let b = start_node(&redis, "node-b", &[]);

    // Equal load: ties go to the smaller id. The room stays there.
    let info = join_info(&a, "x", "alice");
    assert_eq!(info["url"], ws(&a), "{info}");
    let (mut alice, ja) = Client::join(&ws(&a), "x", &info["token"], "alice").await;
    let alice_id = ja["participantId"].as_str().unwrap().to_string();
    assert_eq!(join_info(&b, "x", "bob")["url"], ws(&a));

    // Once node-a's heartbeat reports alice, new rooms go to node-b.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    let on_b = loop {
        n += 1;
        let room = format!("y{n}");
        if join_info(&a, &room, "probe")["url"] == ws(&b) {
            break room;
        }
        assert!(Instant::now() < deadline, "no room placed on the idle node");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };

    // Bob's WebSocket is on node-b, alice's on node-a: relaying crosses Redis.
    let (mut bob, jb) = Client::join(&ws(&b), "x", &token(&a, "x", "bob"), "bob").await;
    let bob_id = jb["participantId"].as_str().unwrap().to_string();
    assert_eq!(jb["participants"][0]["id"], alice_id.as_str());
    let pj = alice.recv().await;
    assert_eq!(pj["type"], "participant-joined", "{pj}");
    assert_eq!(pj["participant"]["id"], bob_id.as_str());
    bob.send(json!({"type": "offer", "to": alice_id, "sdp": "cross"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "offer", "from": bob_id, "sdp": "cross"})
    );
    alice
        .send(json!({"type": "answer", "to": bob_id, "sdp": "back"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "answer", "from": alice_id, "sdp": "back"})
    );
    let (_, room) = http(a.http, "GET", "/v1/rooms/x", "");
    let nodes: Vec<&str> = room["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["node-a", "node-b"], "{room}");

    // Deleting a room closes participants on every node.
    let (mut carol, _) = Client::join(&ws(&a), "w", &token(&a, "w", "carol"), "carol").await;
    let (mut dave, _) = Client::join(&ws(&b), "w", &token(&a, "w", "dave"), "dave").await;
    let (status, _) = http(b.http, "DELETE", "/v1/rooms/w", "");
    assert_eq!(status, 204);
    for c in [&mut carol, &mut dave] {
        let (code, before) = c.closed().await;
        assert_eq!(code, 4010, "{}", c.name);
        assert_eq!(
            before.last().unwrap(),
            &json!({"type": "room-closed", "reason": "deleted"})
        );
    }

    // Kill node-b: alice hears that bob is gone within the node TTL (6 s) plus a sweep.
    let killed = Instant::now();
    drop(b);
    let left = loop {
        let v = alice.recv_within(Duration::from_secs(15)).await;
        if v["type"] == "participant-left" {
            break v;
        }
    };
    assert_eq!(
        left,
        json!({"type": "participant-left", "participantId": bob_id, "reason": "node-lost"})
    );
    assert!(
        killed.elapsed() < Duration::from_secs(12),
        "{:?}",
        killed.elapsed()
    );

    // The room hosted by the dead node moves to a live one on the next join.
    let info = join_info(&a, &on_b, "erin");
    assert_eq!(info["url"], ws(&a), "{info}");
    let (_, room) = http(a.http, "GET", &format!("/v1/rooms/{on_b}"), "");
    assert_eq!(room["node"], "node-a", "{room}");
    assert!(
        a.guard.metric(
            "signaling_store_latency_seconds_count",
            &[("operation", "publish")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_channel_roles_in_separate_processes() {
    let redis = RedisGuard::start();
    let channel = start_node(&redis, "chan-1", &["--role", "channel"]);
    let session = start_node(&redis, "sess-1", &["--role", "session"]);
    // The session node is no channel node: it places rooms on chan-1 only.
    let info = join_info(&session, "split", "alice");
    assert_eq!(info["url"], ws(&channel), "{info}");
    let (mut alice, _) = Client::join(&ws(&channel), "split", &info["token"], "alice").await;
    let (mut bob, jb) = Client::join(
        &ws(&channel),
        "split",
        &token(&session, "split", "bob"),
        "bob",
    )
    .await;
    assert_eq!(alice.recv().await["type"], "participant-joined");
    let a = jb["participants"][0]["id"].as_str().unwrap().to_string();
    bob.send(json!({"type": "offer", "to": a, "sdp": "s"}))
        .await;
    assert_eq!(alice.recv().await["sdp"], "s");
    // Each role serves only its own routes.
    let (status, _) = http(channel.http, "POST", "/v1/rooms/split/join", "{}");
    assert_eq!(status, 404);
    let (status, _) = http(session.http, "GET", "/v1/ws", "");
    assert_eq!(status, 404);
    // Deleting through the session node reaches the channel node.
    let (status, _) = http(session.http, "DELETE", "/v1/rooms/split", "");
    assert_eq!(status, 204);
    assert_eq!(alice.closed().await.0, 4010);
    assert_eq!(bob.closed().await.0, 4010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_answers_internal_and_the_node_recovers() {
    let redis = RedisGuard::start();
    let port = redis.port;
    let a = start_node(&redis, "node-a", &[]);
    let (mut alice, ja) = Client::join(&ws(&a), "r", &token(&a, "r", "alice"), "alice").await;
    let (mut bob, _) = Client::join(&ws(&a), "r", &token(&a, "r", "bob"), "bob").await;
    assert_eq!(alice.recv().await["type"], "participant-joined");
    let alice_id = ja["participantId"].as_str().unwrap().to_string();

    drop(redis);
    bob.send(json!({"type": "offer", "to": alice_id, "sdp": "x", "rid": 1}))
        .await;
    let e = bob.recv_within(Duration::from_secs(15)).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_u64(), e["rid"].as_u64()),
        (Some("error"), Some(4500), Some(1)),
        "{e}"
    );
    let (status, v) = http(
        a.http,
        "POST",
        "/v1/rooms/r/join",
        &json!({"identity": "carol"}).to_string(),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (500, Some("internal")),
        "{v}"
    );
    // The node is still up and its connections still answer.
    alice.send(json!({"type": "ping", "ts": 1})).await;
    assert_eq!(alice.recv().await, json!({"type": "pong", "ts": 1}));
    assert!(
        a.guard
            .metric("signaling_errors_total", &[("code", "internal")])
            >= 1.0
    );

    // Its heartbeats fail meanwhile, and are counted.
    assert!(
        common::wait_until(Duration::from_secs(15), || a.guard.metric(
            "signaling_store_errors_total",
            &[("operation", "heartbeat")]
        ) >= 1.0),
        "no failed heartbeat counted while the store was down"
    );

    // Redis comes back (empty): the node re-registers with its next heartbeat and serves joins.
    let _redis = RedisGuard::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = http(
            a.http,
            "POST",
            "/v1/rooms/again/join",
            &json!({"identity": "dave"}).to_string(),
        );
        if status == 200 {
            let (_, j) =
                Client::join(v["url"].as_str().unwrap(), "again", &v["token"], "dave").await;
            assert_eq!(j["resumed"], false);
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {status} {v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
