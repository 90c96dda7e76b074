//! The real `signaling` binary over the wire (single node, embedded memory store): the HTTP
//! API of `services/signaling/PROTOCOL.md` with plain HTTP/1.1 requests, and WebSocket clients
//! (tokio-tungstenite) that join rooms, negotiate, misbehave, drop and resume. Every bad input
//! must get its documented error or close code while the server stays up and the other
//! participants are unaffected. Last, a TURN credential issued by `/v1/turn/credentials` is
//! used by coturn's `turnutils_uclient` against our `turn-server`.

mod common;

use common::{free_udp_tcp_port, require_tool, run_with_timeout, ServerGuard, TOOL_TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const API_KEY: &str = "app";
const API_SECRET: &str = "app-secret-for-tests";
const TURN_SECRET: &str = "turn-shared-secret";
const TURN_REST_KEY: &str = "rest-key-1";

/// How long a client waits for an expected frame.
const WAIT: Duration = Duration::from_secs(5);

type Sig = common::Signaling;

/// Starts `signaling` with the test API key, TURN secret and URIs, then `extra`.
fn start(extra: &[&str]) -> Sig {
    let mut args: Vec<String> = vec![
        "--api-key".into(),
        format!("{API_KEY}:{API_SECRET}"),
        "--turn-secret".into(),
        TURN_SECRET.into(),
        "--turn-rest-key".into(),
        TURN_REST_KEY.into(),
        "--turn-uri".into(),
        "stun:127.0.0.1:3478".into(),
        "--turn-uri".into(),
        "turn:127.0.0.1:3478?transport=udp".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Sig::start(&args)
}

fn basic() -> String {
    common::basic_auth(&format!("{API_KEY}:{API_SECRET}"))
}

/// One HTTP/1.1 request (Connection: close). Returns status and body (JSON if it parses,
/// else a JSON string).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
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
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked body"
    );
    let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (status, v)
}

/// `POST /v1/rooms/{room}/join` with the API key; the answer.
fn join_info(sig: &Sig, room: &str, identity: &str) -> Value {
    let (status, v) = http(
        sig.http,
        "POST",
        &format!("/v1/rooms/{room}/join"),
        Some(&basic()),
        &json!({"identity": identity, "name": identity.to_uppercase()}).to_string(),
    );
    assert_eq!(status, 200, "{v}");
    v
}

type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

struct Client {
    ws: Ws,
    name: String,
}

impl Client {
    async fn connect(url: &str, name: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: connect {url}: {e}"));
        Client {
            ws,
            name: name.to_string(),
        }
    }

    async fn send(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    async fn send_text(&mut self, t: String) {
        self.ws
            .send(Message::Text(t.into()))
            .await
            .unwrap_or_else(|e| panic!("{}: send: {e}", self.name));
    }

    /// The next text frame as JSON; panics on close or timeout.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {WAIT:?}", self.name));
            match m {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.name),
            }
        }
    }

    /// Frames until one of type `ty` (others are returned too, for checks).
    async fn recv_type(&mut self, ty: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return (v, skipped);
            }
            skipped.push(v);
        }
    }

    /// Waits for the close frame; its code. Text frames before it are returned.
    async fn closed(&mut self) -> (u16, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = tokio::time::timeout(WAIT * 3, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: not closed in time", self.name));
            match m {
                Some(Ok(Message::Text(t))) => {
                    before.push(serde_json::from_str(t.as_str()).unwrap())
                }
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), before),
                Some(Ok(Message::Close(None))) => return (1005, before),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{}: error instead of a close frame: {e}", self.name),
                None => panic!("{}: stream ended without a close frame", self.name),
            }
        }
    }

    /// A ping/pong round trip: everything the server queued before it has arrived.
    async fn sync(&mut self) -> Vec<Value> {
        let ts = rand_ts();
        self.send(json!({"type": "ping", "ts": ts})).await;
        let mut before = Vec::new();
        loop {
            let v = self.recv().await;
            if v["type"] == "pong" && v["ts"] == ts {
                return before;
            }
            before.push(v);
        }
    }
}

fn rand_ts() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Joins `room` as `identity` through `/join` and the WebSocket; the client and its `joined`.
async fn join(sig: &Sig, room: &str, identity: &str) -> (Client, Value) {
    let info = join_info(sig, room, identity);
    let url = info["url"].as_str().unwrap().to_string();
    let mut c = Client::connect(&url, identity).await;
    c.send(json!({"type": "join", "v": 1, "room": room, "token": info["token"], "name": identity}))
        .await;
    let j = c.recv().await;
    assert_eq!(j["type"], "joined", "{identity}: {j}");
    (c, j)
}

fn ws_url(sig: &Sig) -> String {
    format!("ws://{}/v1/ws", sig.http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_negotiate_and_leave() {
    let sig = start(&[]);
    let (mut alice, ja) = join(&sig, "demo", "alice").await;
    assert_eq!(ja["resumed"], false);
    assert_eq!(ja["participants"], json!([]));
    assert_eq!(
        ja["room"],
        json!({"name": "demo", "mode": "mesh", "capacity": 4})
    );
    let ice = &ja["iceServers"][0];
    assert_eq!(
        ice["urls"],
        json!(["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"])
    );
    let a = ja["participantId"].as_str().unwrap().to_string();
    // Minted for the identity (the token's `sub`), not for this join.
    assert!(ice["username"].as_str().unwrap().ends_with(":alice"));
    assert!(ice["credential"].as_str().unwrap().len() >= 20);
    assert!(ja["iceServersTtl"].as_u64().unwrap() > 0);

    let (mut bob, jb) = join(&sig, "demo", "bob").await;
    let b = jb["participantId"].as_str().unwrap().to_string();
    assert_ne!(a, b);
    assert_eq!(
        jb["participants"],
        json!([{"id": a, "identity": "alice", "name": "alice"}])
    );
    let (pj, _) = alice.recv_type("participant-joined").await;
    assert_eq!(
        pj["participant"],
        json!({"id": b, "identity": "bob", "name": "bob"})
    );

    bob.send(json!({"type": "offer", "to": a, "sdp": "v=0 offer"}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "offer", "from": b, "sdp": "v=0 offer"})
    );
    alice
        .send(json!({"type": "answer", "to": b, "sdp": "v=0 answer"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "answer", "from": a, "sdp": "v=0 answer"})
    );
    let cand = json!({"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"});
    bob.send(json!({"type": "candidate", "to": a, "candidate": cand}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "candidate", "from": b, "candidate": cand})
    );
    bob.send(json!({"type": "candidate", "to": a, "candidate": null}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "candidate", "from": b, "candidate": null})
    );
    bob.send(json!({"type": "offer", "to": "p_ZZ", "sdp": "v=0", "rid": 7}))
        .await;
    let e = bob.recv().await;
    assert_eq!(
        (
            e["type"].as_str(),
            e["code"].as_u64(),
            &e["rid"],
            e["request"].as_str()
        ),
        (Some("error"), Some(4004), &json!(7), Some("offer")),
        "{e}"
    );
    bob.send(json!({"type": "ping", "ts": 42})).await;
    assert_eq!(bob.recv().await, json!({"type": "pong", "ts": 42}));

    // The room as the session server sees it.
    let (status, room) = http(sig.http, "GET", "/v1/rooms/demo", Some(&basic()), "");
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["participants"].as_array().unwrap().len(), 2);
    assert!(room["node"].is_string());

    bob.send(json!({"type": "leave"})).await;
    assert_eq!(bob.recv().await, json!({"type": "left"}));
    assert_eq!(bob.closed().await.0, 1000);
    let (pl, _) = alice.recv_type("participant-left").await;
    assert_eq!(
        pl,
        json!({"type": "participant-left", "participantId": b, "reason": "left"})
    );

    let text = sig.guard.scrape_metrics();
    for (name, labels, min) in [
        ("signaling_messages_total", vec![("type", "offer")], 2.0),
        ("signaling_messages_total", vec![("type", "candidate")], 2.0),
        ("signaling_joins_total", vec![("result", "ok")], 2.0),
        ("signaling_errors_total", vec![("code", "not_found")], 1.0),
        ("signaling_connections", vec![], 1.0),
        ("signaling_turn_credentials_issued_total", vec![], 2.0),
        (
            "signaling_store_latency_seconds_count",
            vec![("operation", "participants")],
            1.0,
        ),
    ] {
        let v = common::metric_value(&text, name, &labels).unwrap_or(-1.0);
        assert!(v >= min, "{name}{labels:?} = {v}, want >= {min}\n{text}");
    }
    assert!(text.contains("signaling_rooms"), "{text}");

    // The log tells the story at INFO: each join (with its identity and the room's mode) and
    // the leave.
    let log = sig.guard.log();
    for (needle, with) in [
        ("participant joined", ["identity=alice", a.as_str()]),
        ("participant joined", ["identity=bob", b.as_str()]),
        ("participant left", ["reason=\"left\"", b.as_str()]),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(needle) && with.iter().all(|w| l.contains(w))),
            "no {needle:?} line with {with:?}:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_codes_and_others_are_unaffected() {
    let sig = start(&["--max-message-bytes", "4096"]);
    let (mut alice, ja) = join(&sig, "bad", "alice").await;
    let (mut bob, jb) = join(&sig, "bad", "bob").await;
    let a = ja["participantId"].as_str().unwrap().to_string();
    let b = jb["participantId"].as_str().unwrap().to_string();
    alice.recv_type("participant-joined").await;

    let cases: Vec<(String, u64)> = vec![
        ("not json".into(), 4000),
        ("[1,2,3]".into(), 4000),
        (json!({"type": 5}).to_string(), 4000),
        (json!({"type": "offer", "to": b}).to_string(), 4000),
        (
            json!({"type": "candidate", "to": b, "candidate": 5}).to_string(),
            4000,
        ),
        (json!({"type": "dance", "rid": "r1"}).to_string(), 4015),
        (
            json!({"type": "join", "v": 1, "room": "bad", "token": "x"}).to_string(),
            4011,
        ),
        (
            json!({"type": "offer", "to": "p_nobody", "sdp": "x"}).to_string(),
            4004,
        ),
        (
            format!(
                "{{\"type\":\"offer\",\"to\":\"{b}\",\"sdp\":\"{}\"}}",
                "x".repeat(5000)
            ),
            4013,
        ),
    ];
    for (text, code) in &cases {
        alice.send_text(text.clone()).await;
        let e = alice.recv().await;
        assert_eq!(e["type"], "error", "{text}: {e}");
        assert_eq!(e["code"].as_u64(), Some(*code), "{text}: {e}");
    }
    alice
        .ws
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(alice.recv().await["code"], 4000);
    // The oversized offer was dropped, not delivered; bob got nothing from all that.
    assert_eq!(bob.sync().await, Vec::<Value>::new());
    // Both still work.
    alice
        .send(json!({"type": "offer", "to": b, "sdp": "still here"}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "offer", "from": a, "sdp": "still here"})
    );

    // Before joining: anything but join is 4011, the connection stays open.
    let mut carol = Client::connect(&ws_url(&sig), "carol").await;
    carol
        .send(json!({"type": "offer", "to": a, "sdp": "x", "rid": 1}))
        .await;
    let e = carol.recv().await;
    assert_eq!(
        (e["code"].as_u64(), e["rid"].as_u64()),
        (Some(4011), Some(1)),
        "{e}"
    );
    // A join with another protocol version: 4020, then close 4001.
    let info = join_info(&sig, "bad", "carol");
    carol
        .send(json!({"type": "join", "v": 2, "room": "bad", "token": info["token"]}))
        .await;
    let (code, before) = carol.closed().await;
    assert_eq!(before.last().unwrap()["code"], 4020, "{before:?}");
    assert_eq!(code, 4001);

    // A frame far over the limit ends that connection only.
    let (mut huge, _) = join(&sig, "bad", "huge").await;
    alice.recv_type("participant-joined").await;
    let big = json!({"type": "offer", "to": a, "sdp": "y".repeat(100_000)}).to_string();
    let _ = huge.ws.send(Message::Text(big.into())).await;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match huge.ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection with a 100 kB frame stayed open"
    );
    let e = sig
        .guard
        .metric("signaling_errors_total", &[("code", "bad_request")]);
    assert!(e >= 5.0, "{e}");
    assert!(
        sig.guard.metric(
            "signaling_dropped_messages_total",
            &[("reason", "too_large")]
        ) >= 1.0
    );
    assert_eq!(alice.sync().await, Vec::<Value>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_forged_and_foreign_tokens_are_refused() {
    use signaling::auth::{mint_token, ApiKey, Grants};
    let sig = start(&[]);
    let (mut alice, _) = join(&sig, "sec", "alice").await;
    let now = rand_ts() / 1_000_000_000;
    let key = ApiKey::parse(&format!("{API_KEY}:{API_SECRET}")).unwrap();
    let g = Grants {
        join: true,
        create: true,
    };
    let expired = mint_token(&key, "sec", "mallory", None, g, 60, now - 3600);
    let forged = mint_token(
        &ApiKey::parse(&format!("{API_KEY}:guessed")).unwrap(),
        "sec",
        "mallory",
        None,
        g,
        3600,
        now,
    );
    let other_room = mint_token(&key, "elsewhere", "mallory", None, g, 3600, now);
    let no_join = mint_token(
        &key,
        "sec",
        "mallory",
        None,
        Grants {
            join: false,
            create: false,
        },
        3600,
        now,
    );
    for (token, code) in [
        (expired.as_str(), 4001),
        (forged.as_str(), 4001),
        (other_room.as_str(), 4001),
        ("not-a-jwt", 4001),
        (no_join.as_str(), 4003),
    ] {
        let mut m = Client::connect(&ws_url(&sig), "mallory").await;
        m.send(json!({"type": "join", "v": 1, "room": "sec", "token": token}))
            .await;
        let (close, before) = m.closed().await;
        assert_eq!(before.len(), 1, "{before:?}");
        assert_eq!(before[0]["type"], "error");
        assert_eq!(before[0]["code"], code, "{before:?}");
        assert_eq!(before[0]["request"], "join");
        assert_eq!(close, 4001);
    }
    // A token with the create grant opens a new room straight over WebSocket.
    let create = mint_token(&key, "fresh", "dave", Some("Dave"), g, 3600, now);
    let mut d = Client::connect(&ws_url(&sig), "dave").await;
    d.send(json!({"type": "join", "v": 1, "room": "fresh", "token": create}))
        .await;
    let j = d.recv().await;
    assert_eq!(
        (j["type"].as_str(), j["room"]["name"].as_str()),
        (Some("joined"), Some("fresh"))
    );
    // Alice never noticed any of it.
    assert_eq!(alice.sync().await, Vec::<Value>::new());
    assert!(
        sig.guard
            .metric("signaling_joins_total", &[("result", "unauthorized")])
            >= 4.0
    );
    // HTTP with bad credentials.
    let (status, v) = http(
        sig.http,
        "GET",
        "/v1/rooms/sec",
        Some("Basic YXBwOndyb25n"),
        "",
    );
    assert_eq!(status, 401);
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    let (status, _) = http(sig.http, "GET", "/v1/rooms/sec", None, "");
    assert_eq!(status, 401);
    let (status, _) = http(
        sig.http,
        "POST",
        "/v1/rooms/sec/join",
        Some(&format!("Bearer {expired}")),
        "{}",
    );
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_refuses_with_4009() {
    let sig = start(&[]);
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms",
        Some(&basic()),
        &json!({"name": "duo", "mode": "mesh", "capacity": 2}).to_string(),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["capacity"], 2);
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms",
        Some(&basic()),
        &json!({"name": "duo"}).to_string(),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    for body in [
        json!({"name": "bad name!"}),
        json!({"name": "x", "capacity": 0}),
        json!({"nom": "x"}),
    ] {
        let (status, v) = http(
            sig.http,
            "POST",
            "/v1/rooms",
            Some(&basic()),
            &body.to_string(),
        );
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{body}: {v}"
        );
    }
    let (mut a, _) = join(&sig, "duo", "a").await;
    let (mut b, _) = join(&sig, "duo", "b").await;
    let info = join_info(&sig, "duo", "c");
    let mut c = Client::connect(info["url"].as_str().unwrap(), "c").await;
    c.send(json!({"type": "join", "v": 1, "room": "duo", "token": info["token"]}))
        .await;
    let (code, before) = c.closed().await;
    assert_eq!(before[0]["code"], 4009, "{before:?}");
    assert_eq!(code, 4001);
    let seen_by_a = a.sync().await;
    assert!(
        seen_by_a.iter().all(|v| v["type"] == "participant-joined"),
        "{seen_by_a:?}"
    );
    assert_eq!(b.sync().await, Vec::<Value>::new());
    assert!(
        sig.guard
            .metric("signaling_joins_total", &[("result", "room_full")])
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_within_grace_keeps_the_id_and_timeout_tells_the_others() {
    let sig = start(&["--resume-grace", "2"]);
    let (mut alice, _) = join(&sig, "res", "alice").await;
    let info = join_info(&sig, "res", "bob");
    let url = info["url"].as_str().unwrap().to_string();
    let mut bob = Client::connect(&url, "bob").await;
    bob.send(json!({"type": "join", "v": 1, "room": "res", "token": info["token"]}))
        .await;
    let jb = bob.recv().await;
    let b = jb["participantId"].as_str().unwrap().to_string();
    let resume = jb["resumeToken"].as_str().unwrap().to_string();
    alice.recv_type("participant-joined").await;

    // Drop without leave (no close handshake), come back within the grace period.
    drop(bob);
    let mut bob = Client::connect(&url, "bob2").await;
    bob.send(
        json!({"type": "join", "v": 1, "room": "res", "token": info["token"], "resume": resume}),
    )
    .await;
    let j2 = bob.recv().await;
    assert_eq!(j2["type"], "joined", "{j2}");
    assert_eq!(j2["resumed"], true);
    assert_eq!(j2["participantId"], b.as_str());
    assert_eq!(j2["participants"].as_array().unwrap().len(), 1);
    let resume2 = j2["resumeToken"].as_str().unwrap().to_string();
    // Alice was not told anything and can still reach bob.
    assert_eq!(alice.sync().await, Vec::<Value>::new());
    let a = alice_id(&sig, "res", "alice");
    alice
        .send(json!({"type": "offer", "to": b, "sdp": "again"}))
        .await;
    assert_eq!(bob.recv().await["from"], a.as_str());

    // A resume while the old connection is up replaces it (close 4011).
    let mut bob3 = Client::connect(&url, "bob3").await;
    bob3.send(
        json!({"type": "join", "v": 1, "room": "res", "token": info["token"], "resume": resume2}),
    )
    .await;
    assert_eq!(bob3.recv().await["resumed"], true);
    assert_eq!(bob.closed().await.0, 4011);

    // A bad resume token: 4005 and the connection stays open.
    let mut eve = Client::connect(&url, "eve").await;
    eve.send(
        json!({"type": "join", "v": 1, "room": "res", "token": info["token"], "resume": "r_bogus"}),
    )
    .await;
    assert_eq!(eve.recv().await["code"], 4005);
    drop(eve);

    // Gone for good: after the grace period alice gets participant-left (timeout).
    let dropped_at = Instant::now();
    drop(bob3);
    let (pl, _) =
        tokio::time::timeout(Duration::from_secs(10), alice.recv_type("participant-left"))
            .await
            .expect("participant-left after the grace period");
    assert_eq!(
        pl,
        json!({"type": "participant-left", "participantId": b, "reason": "timeout"})
    );
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        dropped_at.elapsed()
    );
    // And the id cannot be resumed any more.
    let mut late = Client::connect(&url, "late").await;
    late.send(
        json!({"type": "join", "v": 1, "room": "res", "token": info["token"], "resume": resume2}),
    )
    .await;
    assert_eq!(late.recv().await["code"], 4005);
}

fn alice_id(sig: &Sig, room: &str, identity: &str) -> String {
    let (_, v) = http(
        sig.http,
        "GET",
        &format!("/v1/rooms/{room}"),
        Some(&basic()),
        "",
    );
    v["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["identity"] == identity)
        .map(|p| p["id"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_closes_everyone_with_4010() {
    let sig = start(&[]);
    let (mut a, _) = join(&sig, "gone", "a").await;
    let (mut b, _) = join(&sig, "gone", "b").await;
    a.recv_type("participant-joined").await;
    let (status, _) = http(sig.http, "DELETE", "/v1/rooms/gone", Some(&basic()), "");
    assert_eq!(status, 204);
    for c in [&mut a, &mut b] {
        let (code, before) = c.closed().await;
        assert_eq!(code, 4010);
        assert_eq!(
            before.last().unwrap(),
            &json!({"type": "room-closed", "reason": "deleted"})
        );
    }
    let (status, v) = http(sig.http, "GET", "/v1/rooms/gone", Some(&basic()), "");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = http(sig.http, "DELETE", "/v1/rooms/gone", Some(&basic()), "");
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_and_idle_timeout_close_with_their_codes() {
    let sig = start(&[
        "--rate-limit",
        "5",
        "--rate-burst",
        "10",
        "--idle-timeout",
        "1",
    ]);
    let (mut a, _) = join(&sig, "rl", "a").await;
    for i in 0..40 {
        // The server may close mid-burst; later sends then fail, which is fine.
        let frame = Message::Text(json!({"type": "ping", "ts": i}).to_string().into());
        if a.ws.send(frame).await.is_err() {
            break;
        }
    }
    let (code, before) = a.closed().await;
    assert_eq!(code, 4008, "{before:?}");
    let limited = before.iter().filter(|v| v["code"] == 4008).count();
    assert!(limited >= 1, "{before:?}");
    let pongs = before.iter().filter(|v| v["type"] == "pong").count();
    assert!((8..=12).contains(&pongs), "{pongs} pongs: {before:?}");
    // Silence: closed with 4002 after the idle timeout (and before a join, too).
    let (mut b, _) = join(&sig, "rl", "b").await;
    assert_eq!(b.closed().await.0, 4002);
    let mut c = Client::connect(&ws_url(&sig), "c").await;
    assert_eq!(c.closed().await.0, 4002);
    assert!(
        sig.guard.metric(
            "signaling_dropped_messages_total",
            &[("reason", "rate_limited")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_shapes() {
    let sig = start(&[]);
    // draft-uberti-behave-turn-rest-00 §2.2.
    for param in ["key", "api"] {
        let (status, v) = http(
            sig.http,
            "GET",
            &format!("/v1/turn/credentials?service=turn&username=alice&{param}={TURN_REST_KEY}"),
            None,
            "",
        );
        assert_eq!(status, 200, "{v}");
        let user = v["username"].as_str().unwrap();
        let (expiry, name) = user.split_once(':').unwrap();
        assert_eq!(name, "alice");
        let now = rand_ts() / 1_000_000_000;
        let expiry: u64 = expiry.parse().unwrap();
        assert!(
            expiry > now && expiry <= now + 86_400 + 5,
            "{expiry} vs {now}"
        );
        assert_eq!(
            v["password"].as_str().unwrap(),
            turn_proto::auth::rest_password(TURN_SECRET, user)
        );
        assert_eq!(v["ttl"], 86_400);
        assert_eq!(
            v["uris"],
            json!(["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"])
        );
    }
    let (status, v) = http(
        sig.http,
        "GET",
        "/v1/turn/credentials?service=turn&username=a&key=wrong",
        None,
        "",
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = http(
        sig.http,
        "GET",
        "/v1/turn/credentials?service=turn&username=a",
        None,
        "",
    );
    assert_eq!(status, 401);
    let (status, _) = http(
        sig.http,
        "GET",
        &format!("/v1/turn/credentials?service=stun&key={TURN_REST_KEY}"),
        None,
        "",
    );
    assert_eq!(status, 400);

    // W3C RTCIceServer shape.
    let (status, v) = http(sig.http, "POST", "/v1/ice-servers", Some(&basic()), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ttl"], 86_400);
    let s = &v["iceServers"][0];
    assert!(
        s["urls"].is_array() && s["username"].is_string() && s["credential"].is_string(),
        "{v}"
    );
    let info = join_info(&sig, "shapes", "zed");
    assert_eq!(
        info["room"],
        json!({"name": "shapes", "mode": "mesh", "capacity": 4})
    );
    assert_eq!(info["url"], format!("ws://{}/v1/ws", sig.http));
    // The token lives 3600 s (--token-ttl default), the credential 300 s more at most.
    assert_eq!(info["iceServersTtl"], 3600 + 300);
    assert!(info["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .ends_with(":zed"));
    // Bearer: the token works for ice-servers and for /join of its room (not another).
    let bearer = format!("Bearer {}", info["token"].as_str().unwrap());
    let (status, v) = http(sig.http, "POST", "/v1/ice-servers", Some(&bearer), "");
    assert_eq!(status, 200, "{v}");
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms/shapes/join",
        Some(&bearer),
        "{}",
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["token"], info["token"]);
    let (status, _) = http(
        sig.http,
        "POST",
        "/v1/rooms/other/join",
        Some(&bearer),
        "{}",
    );
    assert_eq!(status, 401);
    // Bearer without create grant cannot open a room; API key needs an identity.
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms/shapes/join",
        Some(&basic()),
        "{}",
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms/shapes/join",
        Some(&basic()),
        "{nope",
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    // Static files and health.
    let (status, page) = http(sig.http, "GET", "/", None, "");
    assert_eq!(status, 200);
    assert!(page
        .as_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("<html"));
    let (status, _) = http(sig.http, "GET", "/client.js", None, "");
    assert_eq!(status, 200);
    let (status, _) = http(sig.http, "GET", "/healthz", None, "");
    assert_eq!(status, 200);
    let (status, v) = http(sig.http, "GET", "/nope", None, "");
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert!(
        sig.guard
            .metric("signaling_turn_credentials_issued_total", &[])
            >= 4.0
    );
    assert!(
        sig.guard.metric(
            "signaling_http_requests_total",
            &[("route", "/v1/turn/credentials"), ("status", "200")]
        ) >= 2.0
    );
}

/// Parses uclient's final report: (sent, received, lost). See tests/turnutils.rs.
fn uclient_report(out: &str) -> Option<(u64, u64, u64)> {
    fn after(line: &str, key: &str) -> Option<u64> {
        let start = line.find(key)? + key.len();
        line[start..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .ok()
    }
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
fn issued_turn_credential_works_on_turn_server() {
    let turn_port = free_udp_tcp_port();
    let turn = ServerGuard::turn_server(&[
        "--listen".to_string(),
        format!("127.0.0.1:{turn_port}"),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--min-port".into(),
        "61000".into(),
        "--max-port".into(),
        "65535".into(),
        "--auth-secret".into(),
        TURN_SECRET.into(),
    ]);
    let sig = start(&[]);
    let (status, v) = http(
        sig.http,
        "GET",
        &format!("/v1/turn/credentials?service=turn&username=uclient&key={TURN_REST_KEY}"),
        None,
        "",
    );
    assert_eq!(status, 200, "{v}");
    let user = v["username"].as_str().unwrap();
    let password = v["password"].as_str().unwrap();
    let args: Vec<String> = [
        "-y",
        "-c",
        "-X",
        "-z",
        "5",
        "-m",
        "2",
        "-n",
        "10",
        "-u",
        user,
        "-w",
        password,
        "-p",
        &turn_port.to_string(),
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = run_with_timeout(
        Command::new(require_tool("turnutils_uclient")).args(&args),
        TOOL_TIMEOUT,
    );
    let shown = format!("turnutils_uclient {}\n{}", args.join(" "), out.combined());
    assert!(out.success(), "{shown}");
    let (sent, received, lost) =
        uclient_report(&out.stdout).unwrap_or_else(|| panic!("no report: {shown}"));
    assert_eq!((sent, received, lost), (20, 20, 0), "{shown}");
    assert!(turn.metric("turn_allocation_requests_total", &[("result", "success")]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_connections_with_1001_at_the_deadline_and_exits() {
    // SIGTERM starts a drain (README "Scaling out"): the node is not ready any more but keeps
    // serving its connections; at the drain deadline the ones left are closed with 1001 and
    // the process exits 0.
    let mut sig = start(&["--drain-timeout-secs", "3"]);
    let (mut a, _) = join(&sig, "bye", "a").await;
    let status = Command::new("kill")
        .args(["-TERM", &sig.guard.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            common::http_get(sig.guard.metrics, "/readyz").is_ok_and(|(c, _)| c == 503)
        }),
        "/readyz did not turn 503 after SIGTERM"
    );
    assert_eq!(
        common::http_get(sig.guard.metrics, "/healthz").unwrap().0,
        200
    );
    // Still served while draining.
    a.sync().await;
    assert_eq!(a.closed().await.0, 1001);
    let exited = common::wait_until(Duration::from_secs(10), || sig.guard.try_wait().is_some());
    assert!(exited, "still running after the drain deadline");
    assert!(sig.guard.try_wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_as_soon_as_the_last_connection_leaves() {
    let mut sig = start(&["--drain-timeout-secs", "300"]);
    let (mut a, _) = join(&sig, "bye2", "a").await;
    let status = Command::new("kill")
        .args(["-TERM", &sig.guard.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(common::wait_until(Duration::from_secs(5), || {
        common::http_get(sig.guard.metrics, "/readyz").is_ok_and(|(c, _)| c == 503)
    }));
    a.send(json!({"type": "leave"})).await;
    let exited = common::wait_until(Duration::from_secs(10), || sig.guard.try_wait().is_some());
    assert!(exited, "still running after its last connection left");
    assert!(sig.guard.try_wait().unwrap().success());
}

#[test]
fn token_subcommand_mints_a_verifiable_token() {
    let out = run_with_timeout(
        Command::new(common::bin_path("signaling")).args([
            "token",
            "--room",
            "cli-room",
            "--identity",
            "carol",
            "--ttl",
            "30m",
            "--api-key",
            &format!("{API_KEY}:{API_SECRET}"),
            "--create",
        ]),
        TOOL_TIMEOUT,
    );
    assert!(out.success(), "{}", out.combined());
    let keys = signaling::auth::Keys::new(vec![signaling::auth::ApiKey::parse(&format!(
        "{API_KEY}:{API_SECRET}"
    ))
    .unwrap()]);
    let now = rand_ts() / 1_000_000_000;
    let c = keys
        .verify_token(out.stdout.trim(), Some("cli-room"), now)
        .unwrap();
    assert_eq!(c.sub, "carol");
    assert!(c.grants.join && c.grants.create);
    assert!(c.exp >= now + 1790 && c.exp <= now + 1810, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_never_exceed_capacity() {
    let sig = start(&[]);
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms",
        Some(&basic()),
        &json!({"name": "race", "capacity": 2}).to_string(),
    );
    assert_eq!(status, 201, "{v}");
    let infos: Vec<Value> = (0..6)
        .map(|i| join_info(&sig, "race", &format!("u{i}")))
        .collect();
    let mut clients = Vec::new();
    for (i, info) in infos.iter().enumerate() {
        let mut c = Client::connect(info["url"].as_str().unwrap(), &format!("u{i}")).await;
        c.ws.feed(Message::Text(
            json!({"type": "join", "v": 1, "room": "race", "token": info["token"]})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        clients.push(c);
    }
    // Send all joins at (nearly) the same time.
    for c in clients.iter_mut() {
        c.ws.flush().await.unwrap();
    }
    let mut joined = 0;
    for c in clients.iter_mut() {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("joined") => joined += 1,
            Some("error") => assert_eq!(v["code"], 4009, "{v}"),
            _ => panic!("{v}"),
        }
    }
    assert_eq!(joined, 2);
    let (_, room) = http(sig.http, "GET", "/v1/rooms/race", Some(&basic()), "");
    assert_eq!(room["participants"].as_array().unwrap().len(), 2, "{room}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_and_the_others_are_told_after_the_grace() {
    let sig = start(&["--resume-grace", "1"]);
    let (mut a, _) = join(&sig, "close-echo", "alice").await;
    let (mut b, jb) = join(&sig, "close-echo", "bob").await;
    let _ = a.recv_type("participant-joined").await;
    use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
    b.ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "tab closed".into(),
    })))
    .await
    .unwrap();
    // The closing handshake completes: the server echoes a Close frame instead of dropping
    // the TCP connection (which a browser reports as 1006).
    let (code, _) = b.closed().await;
    assert_eq!(code, 1001, "server should echo the client's close code");
    // A close without `leave` is a drop: the others hear about it after the grace period.
    let (left, _) = a.recv_type("participant-left").await;
    assert_eq!(left["participantId"], jb["participantId"]);
    assert_eq!(left["reason"], "timeout");
}

/// Rooms you can see: `GET /v1/rooms` lists every room (mode, node, participants, capacity,
/// age) by name, in pages; `signaling rooms list|show|close` wraps it, and `close` ends the
/// room for its participants (4010). Bad paging input gets 400, no key 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_over_http_and_by_the_cli() {
    let sig = start(&[]);
    let (status, _) = http(
        sig.http,
        "POST",
        "/v1/rooms",
        Some(&basic()),
        r#"{"name":"big-sfu","mode":"sfu","capacity":8}"#,
    );
    assert_eq!(status, 201);
    // An SFU room created without a capacity takes the SFU default (max_capacity, 16), not the
    // mesh default (4): the page never caps an SFU room.
    let (status, v) = http(
        sig.http,
        "POST",
        "/v1/rooms",
        Some(&basic()),
        r#"{"name":"open-sfu","mode":"sfu"}"#,
    );
    assert_eq!((status, &v["capacity"]), (201, &json!(16)), "{v}");
    let (status, _) = http(sig.http, "DELETE", "/v1/rooms/open-sfu", Some(&basic()), "");
    assert_eq!(status, 204);
    let (mut a, _) = join(&sig, "talk", "a").await;
    let (_b, _) = join(&sig, "talk", "b").await;
    a.recv_type("participant-joined").await;

    let (status, v) = http(sig.http, "GET", "/v1/rooms", Some(&basic()), "");
    assert_eq!(status, 200, "{v}");
    let rooms = v["rooms"].as_array().expect("rooms");
    let names: Vec<&str> = rooms.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["big-sfu", "talk"], "{v}");
    assert_eq!(rooms[0]["mode"], "sfu");
    assert_eq!(rooms[0]["capacity"], 8);
    assert_eq!(rooms[0]["participants"], 0);
    assert_eq!(rooms[1]["mode"], "mesh");
    assert_eq!(rooms[1]["participants"], 2);
    assert!(rooms[1]["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(rooms[1]["ageSecs"].as_u64().is_some(), "{v}");
    assert!(v["next"].is_null(), "{v}");
    // Paging.
    let (_, p1) = http(sig.http, "GET", "/v1/rooms?limit=1", Some(&basic()), "");
    assert_eq!(p1["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(p1["next"], "big-sfu");
    let (_, p2) = http(
        sig.http,
        "GET",
        "/v1/rooms?limit=1&after=big-sfu",
        Some(&basic()),
        "",
    );
    assert_eq!(p2["rooms"][0]["name"], "talk");
    assert!(p2["next"].is_null(), "{p2}");
    let (status, e) = http(sig.http, "GET", "/v1/rooms?limit=0", Some(&basic()), "");
    assert_eq!((status, &e["error"]["code"]), (400, &json!("bad_request")));
    let (status, _) = http(sig.http, "GET", "/v1/rooms", None, "");
    assert_eq!(status, 401);

    // The CLI.
    let cli = |args: &[&str]| {
        let out = Command::new(common::bin_path("signaling"))
            .arg("rooms")
            .args(args)
            .args(["--url", &format!("http://{}", sig.http)])
            .args(["--api-key", &format!("{API_KEY}:{API_SECRET}")])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = cli(&["list"]);
    assert!(ok, "{err}");
    let talk = out
        .lines()
        .find(|l| l.starts_with("talk "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(talk.contains("mesh") && talk.contains("2/4"), "{out}");
    assert!(out.contains("2 room(s)"), "{out}");
    let (ok, out, err) = cli(&["show", "talk"]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["participants"].as_array().unwrap().len(), 2);
    let (ok, out, err) = cli(&["close", "talk"]);
    assert!(ok && out.contains("closed"), "{out}{err}");
    assert_eq!(a.closed().await.0, 4010);
    let (ok, _, err) = cli(&["show", "talk"]);
    assert!(!ok && err.contains("404"), "{err}");
    let bad = Command::new(common::bin_path("signaling"))
        .args(["rooms", "list", "--url", &format!("http://{}", sig.http)])
        .args(["--api-key", "app:wrong"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("401"));
}

/// Empty rooms expire: with `--room-idle-secs 2`, a room nobody joined and a room everyone
/// left are deleted within a few seconds (logged and counted), while a room with a participant
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_rooms_expire_after_the_idle_time() {
    let sig = start(&["--room-idle-secs", "2"]);
    let (status, _) = http(
        sig.http,
        "POST",
        "/v1/rooms",
        Some(&basic()),
        r#"{"name":"never-used"}"#,
    );
    assert_eq!(status, 201);
    let (mut left, _) = join(&sig, "all-left", "a").await;
    left.send(json!({"type": "leave"})).await;
    assert_eq!(left.recv().await, json!({"type": "left"}));
    let (_stays, _) = join(&sig, "occupied", "b").await;
    let exists = |room: &str| {
        http(
            sig.http,
            "GET",
            &format!("/v1/rooms/{room}"),
            Some(&basic()),
            "",
        )
        .0 == 200
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while (exists("never-used") || exists("all-left")) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!exists("never-used"), "an unused room did not expire");
    assert!(!exists("all-left"), "a room everyone left did not expire");
    assert!(exists("occupied"), "a room with a participant was deleted");
    assert_eq!(sig.guard.metric("signaling_rooms_expired_total", &[]), 2.0);
    assert!(
        sig.guard
            .log()
            .contains("room deleted: empty for the idle time"),
        "{}",
        sig.guard.log()
    );
}

/// `signaling --cert --key` serves HTTPS and WSS: the page and API over TLS with the given
/// certificate, wss:// URLs in join grants, a client that does not speak TLS counted in
/// `signaling_tls_handshake_failures_total` (the others unaffected), and a new certificate
/// taken on SIGHUP without a restart.
#[test]
fn https_with_a_certificate_that_reloads_on_sighup() {
    let (files, cert) = common::tls::CertFiles::with_new_cert("signaling-https");
    let sig = start(&["--cert", files.cert_arg(), "--key", files.key_arg()]);
    let user_pass = format!("{API_KEY}:{API_SECRET}");
    let (status, page, shown) = common::tls::https_request(sig.http, "GET", "/", "", "");
    assert_eq!(status, 200, "{page}");
    assert_eq!(shown, common::tls::fingerprint(&cert.der));
    let (status, body, _) = common::tls::https_request(
        sig.http,
        "POST",
        "/v1/rooms/secure/join",
        &user_pass,
        r#"{"identity":"a"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let join: Value = serde_json::from_str(&body).unwrap();
    assert!(
        join["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("wss://")),
        "{join}"
    );
    // Plain HTTP on the TLS port: no answer, counted.
    {
        let mut s = TcpStream::connect(sig.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    assert!(common::wait_until(Duration::from_secs(5), || sig
        .guard
        .metric("signaling_tls_handshake_failures_total", &[])
        >= 1.0));
    // A new certificate on SIGHUP.
    let next = common::tls::TestCert::new("signaling-https-2");
    files.install(&next);
    let pid = sig.guard.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let want = common::tls::fingerprint(&next.der);
    assert!(
        common::wait_until(Duration::from_secs(5), || common::tls::https_request(
            sig.http, "GET", "/", "", ""
        )
        .2 == want),
        "the new certificate was not served after SIGHUP:\n{}",
        sig.guard.log()
    );
}
