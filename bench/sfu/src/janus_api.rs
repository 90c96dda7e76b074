//! Negotiation with Janus's VideoRoom plugin (Janus 1.x API, multistream) over one WebSocket
//! (`janus-protocol`), standing in for the turnkey link of `signal`: the client threads send and
//! receive the same `{"type":"offer"|"answer"|"error","sdp":..}` messages either way, so the
//! peer connections, probes and accounting are the same code for both servers.
//!
//! One Janus session holds every handle: per room a `create` (VP8 + Opus, no simulcast, a
//! bitrate cap far above the load); per publisher a handle that `joinandconfigure`s as
//! `publisher` with the client's offer and returns Janus's answer; per subscriber a handle that
//! `join`s as `subscriber` with `streams: [{feed}, ...]` (the other publishers of its room) once
//! those publishers' PCs are up (`webrtcup`), forwards Janus's offer, and `start`s with the
//! client's answer. SDPs carry their candidates (`trickle: false`). A `keepalive` every 20 s
//! keeps the session (Janus drops it after 60 s without a request).

use crate::signal::{Inbox, LinkErrors};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One participant as Janus sees it.
pub struct JanusSeat {
    /// Room index (Janus room id `ROOM_BASE + index`).
    pub room: usize,
    /// Display name.
    pub id: String,
    /// Publishes (gets a publisher handle).
    pub publishes: bool,
    /// Seats (indexes in the plan) whose feeds this one subscribes to; empty: no subscriber handle.
    pub subscribes_to: Vec<usize>,
    /// Where this participant's messages go: its client thread's inbox, with its slot there.
    pub inbox: Inbox,
    /// Slot in that thread.
    pub slot: usize,
}

/// Janus room ids: `ROOM_BASE + room index`.
const ROOM_BASE: u64 = 7000;
/// Video bitrate cap of each room (bits/s): Janus sends it to publishers in REMB; far above
/// what the bench sends, so it never throttles.
const ROOM_BITRATE_BPS: u64 = 50_000_000;
/// Janus's "no such feed" (JANUS_VIDEOROOM_ERROR_NO_SUCH_FEED): a subscribe before the feed
/// exists; retried.
const NO_SUCH_FEED: i64 = 428;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leg {
    Publish,
    Subscribe,
}

#[derive(Default)]
struct SeatState {
    publish_handle: Option<u64>,
    subscribe_handle: Option<u64>,
    feed: Option<u64>,
    publish_up: bool,
    subscribe_sent: bool,
    retry_at: Option<Instant>,
}

struct Driver {
    ws: Ws,
    session: u64,
    next_tx: u64,
    seats: Vec<JanusSeat>,
    state: Vec<SeatState>,
    handles: HashMap<u64, (usize, Leg)>,
    errors: Arc<LinkErrors>,
}

impl Driver {
    async fn send(&mut self, mut req: Value) -> anyhow::Result<String> {
        self.next_tx += 1;
        let t = format!("t{}", self.next_tx);
        req["transaction"] = t.clone().into();
        if self.session != 0 {
            req["session_id"] = self.session.into();
        }
        self.ws.send(Message::Text(req.to_string().into())).await?;
        Ok(t)
    }

    /// Sends `req` and waits for its answer (not the `ack`); other messages meanwhile are
    /// handled as events. Only for the setup, before any media.
    async fn call(&mut self, req: Value) -> anyhow::Result<Value> {
        let t = self.send(req).await?;
        loop {
            let v = self.next_message().await?;
            if v["transaction"].as_str() == Some(t.as_str()) && v["janus"] != "ack" {
                if v["janus"] == "error" {
                    anyhow::bail!("janus: {}", v["error"]);
                }
                if let Some(e) = v["plugindata"]["data"].get("error") {
                    anyhow::bail!("videoroom: {e}");
                }
                return Ok(v);
            }
            self.on_message(&v);
        }
    }

    async fn next_message(&mut self) -> anyhow::Result<Value> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(f))) => anyhow::bail!("janus closed the API: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("janus closed the API"),
            }
        }
    }

    fn deliver(&self, seat: usize, msg: Value) {
        let s = &self.seats[seat];
        if s.inbox.0.send((s.slot, msg)).is_ok() {
            let _ = s.inbox.1.wake();
        }
    }

    /// An event from Janus: answers and offers go to the seat's client thread, `webrtcup` of a
    /// publisher may let subscribers join.
    fn on_message(&mut self, v: &Value) {
        let Some(&(seat, leg)) = v["sender"].as_u64().and_then(|h| self.handles.get(&h)) else {
            return;
        };
        match v["janus"].as_str() {
            Some("event") => {
                let data = &v["plugindata"]["data"];
                if let Some(e) = data.get("error") {
                    if leg == Leg::Subscribe && data["error_code"].as_i64() == Some(NO_SUCH_FEED) {
                        self.state[seat].subscribe_sent = false;
                        self.state[seat].retry_at =
                            Some(Instant::now() + Duration::from_millis(200));
                        return;
                    }
                    self.deliver(
                        seat,
                        json!({"type": "error", "message": format!("janus: {e}")}),
                    );
                    return;
                }
                if leg == Leg::Publish && data["videoroom"] == "joined" {
                    if let Some(id) = data["id"].as_u64() {
                        self.state[seat].feed = Some(id);
                    }
                }
                let jsep = &v["jsep"];
                if let (Some(kind), Some(sdp)) = (jsep["type"].as_str(), jsep["sdp"].as_str()) {
                    let ok = matches!(
                        (leg, kind),
                        (Leg::Publish, "answer") | (Leg::Subscribe, "offer")
                    );
                    if ok {
                        self.deliver(seat, json!({"type": kind, "sdp": sdp}));
                    }
                }
            }
            Some("webrtcup") if leg == Leg::Publish => self.state[seat].publish_up = true,
            Some("hangup") => {
                eprintln!(
                    "janus hung up on {} ({}): {}",
                    self.seats[seat].id,
                    if leg == Leg::Publish {
                        "publish"
                    } else {
                        "subscribe"
                    },
                    v["reason"]
                );
                self.errors.closed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Subscribers whose publishers are all up (and retries whose time has come) join.
    async fn join_subscribers(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        for i in 0..self.seats.len() {
            let st = &self.state[i];
            let Some(handle) = st.subscribe_handle else {
                continue;
            };
            if st.subscribe_sent || st.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let feeds: Option<Vec<u64>> = self.seats[i]
                .subscribes_to
                .iter()
                .map(|&p| {
                    self.state[p]
                        .publish_up
                        .then_some(self.state[p].feed)
                        .flatten()
                })
                .collect();
            let Some(feeds) = feeds else { continue };
            let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
            self.state[i].subscribe_sent = true;
            self.state[i].retry_at = None;
            let room = ROOM_BASE + self.seats[i].room as u64;
            self.send(json!({"janus": "message", "handle_id": handle, "body": {
                "request": "join", "ptype": "subscriber", "room": room, "streams": streams,
            }}))
            .await?;
        }
        Ok(())
    }

    /// A message of a client thread: a publisher's offer, or a subscriber's answer.
    async fn on_client(&mut self, seat: usize, text: &str) -> anyhow::Result<()> {
        let msg: Value = serde_json::from_str(text)?;
        let sdp = msg["sdp"].as_str().unwrap_or_default();
        let room = ROOM_BASE + self.seats[seat].room as u64;
        match msg["type"].as_str() {
            Some("offer") => {
                let Some(handle) = self.state[seat].publish_handle else {
                    return Ok(());
                };
                let display = self.seats[seat].id.clone();
                self.send(json!({"janus": "message", "handle_id": handle,
                    "body": {"request": "joinandconfigure", "ptype": "publisher", "room": room,
                             "display": display, "audio": true, "video": true},
                    "jsep": {"type": "offer", "sdp": sdp, "trickle": false}}))
                    .await?;
            }
            Some("answer") => {
                let Some(handle) = self.state[seat].subscribe_handle else {
                    return Ok(());
                };
                self.send(json!({"janus": "message", "handle_id": handle,
                    "body": {"request": "start"},
                    "jsep": {"type": "answer", "sdp": sdp, "trickle": false}}))
                    .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Drives every participant's negotiation with the Janus at `api` until `shutdown`.
/// `publishers_per_room[r]` sizes room r. A failure to set up counts as a link connect error.
pub async fn run(
    api: SocketAddr,
    publishers_per_room: Vec<usize>,
    seats: Vec<JanusSeat>,
    outboxes: Vec<UnboundedReceiver<String>>,
    errors: Arc<LinkErrors>,
    shutdown: CancellationToken,
) {
    let n = seats.len();
    let mut driver = match setup(api, &publishers_per_room, seats, errors.clone()).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("janus: {e:#}");
            errors.connect.fetch_add(n, Ordering::Relaxed);
            return;
        }
    };
    // One queue for every seat's outbox, tagged with the seat.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    for (i, mut out) in outboxes.into_iter().enumerate() {
        let tx: UnboundedSender<(usize, String)> = tx.clone();
        tokio::spawn(async move {
            while let Some(m) = out.recv().await {
                if tx.send((i, m)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_keepalive = Instant::now();
    let result: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = driver.next_message() => {
                    let v = m?;
                    driver.on_message(&v);
                    if v["janus"] == "webrtcup" {
                        driver.join_subscribers().await?;
                    }
                }
                Some((seat, text)) = rx.recv() => driver.on_client(seat, &text).await?,
                _ = tick.tick() => {
                    driver.join_subscribers().await?;
                    if last_keepalive.elapsed() > Duration::from_secs(20) {
                        last_keepalive = Instant::now();
                        driver.send(json!({"janus": "keepalive"})).await?;
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        eprintln!("janus API: {e:#}");
        errors.closed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let _ = driver.send(json!({"janus": "destroy"})).await;
    let _ = driver.ws.close(None).await;
}

/// Connects, creates the session and the rooms, attaches every handle.
async fn setup(
    api: SocketAddr,
    publishers_per_room: &[usize],
    seats: Vec<JanusSeat>,
    errors: Arc<LinkErrors>,
) -> anyhow::Result<Driver> {
    let mut req = format!("ws://{api}/").into_client_request()?;
    req.headers_mut()
        .insert("sec-websocket-protocol", "janus-protocol".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    let state = seats.iter().map(|_| SeatState::default()).collect();
    let mut d = Driver {
        ws,
        session: 0,
        next_tx: 0,
        seats,
        state,
        handles: HashMap::new(),
        errors,
    };
    let v = d.call(json!({"janus": "create"})).await?;
    d.session = v["data"]["id"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no session id in {v}"))?;
    let attach = json!({"janus": "attach", "plugin": "janus.plugin.videoroom"});
    let admin = d.call(attach.clone()).await?["data"]["id"]
        .as_u64()
        .unwrap_or(0);
    for (r, &publishers) in publishers_per_room.iter().enumerate() {
        d.call(json!({"janus": "message", "handle_id": admin, "body": {
            "request": "create", "room": ROOM_BASE + r as u64, "is_private": true,
            "publishers": publishers.max(1), "videocodec": "vp8", "audiocodec": "opus",
            "bitrate": ROOM_BITRATE_BPS, "notify_joining": false,
        }}))
        .await?;
    }
    for i in 0..d.seats.len() {
        for leg in [Leg::Publish, Leg::Subscribe] {
            let wanted = match leg {
                Leg::Publish => d.seats[i].publishes,
                Leg::Subscribe => !d.seats[i].subscribes_to.is_empty(),
            };
            if !wanted {
                continue;
            }
            let h = d.call(attach.clone()).await?["data"]["id"]
                .as_u64()
                .ok_or_else(|| anyhow::anyhow!("attach: no handle id"))?;
            d.handles.insert(h, (i, leg));
            match leg {
                Leg::Publish => d.state[i].publish_handle = Some(h),
                Leg::Subscribe => d.state[i].subscribe_handle = Some(h),
            }
        }
    }
    Ok(d)
}
