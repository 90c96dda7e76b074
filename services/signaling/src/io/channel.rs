//! The channel server: `GET /v1/ws` (RFC 6455 WebSocket). One task per connection reads
//! frames, runs them through the core ([`signaling_proto`]) and writes what is queued for it
//! (bounded queue; overflow closes with 4003). See `PROTOCOL.md`.

use crate::io::node::{unix_now, Envelope, KillSwitch, Node};
use crate::io::sfu_link::{self, PlaceError, SendError};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use registry::{ParticipantRecord, RoomMode, RoomRecord};
use signaling_proto::hub::ConnId;
use signaling_proto::limit::{TokenBucket, Verdict};
use signaling_proto::msg::{
    close, parse_request, ClientMsg, ErrorCode, Join, ParticipantInfo, ProtoError, Request,
    RoomInfo, ServerMsg, SfuRelay,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest display name kept, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Initial WebSocket read/write buffer per connection.
const WS_BUFFER_BYTES: usize = 8 * 1024;

/// `GET /v1/ws`.
pub async fn ws_handler(State(node): State<Arc<Node>>, upgrade: WebSocketUpgrade) -> Response {
    // Frames up to 4x the limit are read so that they can be answered with 4013; larger ones
    // fail the connection.
    let hard = node.cfg.max_message_bytes.saturating_mul(4).max(64 * 1024);
    upgrade
        .max_message_size(hard)
        .max_frame_size(hard)
        // tungstenite's 128 KiB default read buffer is allocated (and zeroed on every read)
        // per connection; signaling frames are small, and the buffer grows for large ones.
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES)
        .on_upgrade(move |socket| run_connection(node, socket))
}

struct Joined {
    room: String,
    mode: RoomMode,
    pid: String,
}

enum Flow {
    Continue,
    Close(u16, &'static str),
}

struct Conn {
    node: Arc<Node>,
    id: ConnId,
    tx: mpsc::Sender<String>,
    joined: Option<Joined>,
    left: bool,
}

impl Conn {
    fn send(&self, msg: &ServerMsg) {
        // Our own queue: on overflow the connection is a slow consumer.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(msg.to_text()) {
            self.node.metrics.drop_frame("queue_full");
            self.node.metrics.slow_consumers.inc();
            self.node
                .kill(self.id, close::SLOW_CONSUMER, "slow consumer");
        }
    }

    fn error(&self, e: &ProtoError) {
        self.node.metrics.error(e.code);
        self.send(&e.to_msg());
    }
}

async fn run_connection(node: Arc<Node>, mut ws: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<String>(node.cfg.outbound_queue.max(1));
    let kill = Arc::new(KillSwitch::default());
    let id = node.register_conn(tx.clone(), kill.clone());
    let mut conn = Conn {
        node: node.clone(),
        id,
        tx,
        joined: None,
        left: false,
    };
    let start = Instant::now();
    let mut bucket = TokenBucket::new(
        node.cfg.rate_per_sec,
        node.cfg.rate_burst,
        node.cfg.rate_burst,
        Duration::from_secs(10),
        start,
    );
    let idle = Duration::from_secs(node.cfg.idle_timeout_secs);
    let join_deadline = start + Duration::from_secs(node.cfg.join_timeout_secs);
    let mut idle_deadline = start + idle;
    let closing: Option<(u16, String)> = loop {
        let deadline = if conn.joined.is_some() {
            idle_deadline
        } else {
            idle_deadline.min(join_deadline)
        };
        tokio::select! {
            biased;
            _ = kill.killed() => break Some(kill.reason()),
            _ = node.shutdown.cancelled() => break Some((close::GOING_AWAY, "server shutting down".into())),
            Some(frame) = rx.recv() => {
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    break None;
                }
            }
            m = ws.recv() => match m {
                None | Some(Err(_)) => break None,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the Close reply; reading once more writes it, so the
                    // client sees its own code echoed instead of 1006.
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.recv()).await;
                    break None;
                }
                Some(Ok(Message::Ping(_))) | Some(Ok(Message::Pong(_))) => {
                    idle_deadline = Instant::now() + idle;
                }
                Some(Ok(Message::Binary(_))) => {
                    idle_deadline = Instant::now() + idle;
                    conn.error(&ProtoError::new(ErrorCode::BadRequest, "binary frames are not accepted"));
                }
                Some(Ok(Message::Text(text))) => {
                    let now = Instant::now();
                    idle_deadline = now + idle;
                    match handle_text(&mut conn, &mut bucket, text.as_str(), now).await {
                        Flow::Continue => {}
                        Flow::Close(code, why) => break Some((code, why.to_string())),
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                let why = if conn.joined.is_some() { "idle timeout" } else { "no join in time" };
                break Some((close::IDLE, why.to_string()));
            }
        }
    };
    if let Some((code, reason)) = closing {
        // Flush what is queued (e.g. the error explaining the close), then close; bounded in
        // time, since a slow consumer may be the reason for closing.
        let flush = async {
            while let Ok(frame) = rx.try_recv() {
                if ws.send(Message::Text(frame.into())).await.is_err() {
                    return;
                }
            }
            let _ = ws
                .send(Message::Close(Some(CloseFrame {
                    code,
                    reason: reason.into(),
                })))
                .await;
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), flush).await;
        // Wait for the client's Close (RFC 6455 §7.1.1), discarding what it sent meanwhile,
        // for at most 2 s: closing the TCP connection with unread frames in its receive buffer
        // makes the kernel send a reset, and the client may then lose our Close frame (seen
        // with a client flooding into the rate limit).
        let drain = async {
            while let Some(Ok(m)) = ws.recv().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }
    node.unregister_conn(id);
    if let Some(j) = &conn.joined {
        if !conn.left && node.hub().handle_disconnect(&j.pid, id, Instant::now()) {
            tracing::debug!(room = %j.room, participant = %j.pid, "connection dropped: grace period");
        }
    }
}

async fn handle_text(conn: &mut Conn, bucket: &mut TokenBucket, text: &str, now: Instant) -> Flow {
    let node = conn.node.clone();
    if text.len() > node.cfg.max_message_bytes {
        node.metrics.drop_frame("too_large");
        conn.error(&ProtoError::new(
            ErrorCode::TooLarge,
            format!(
                "frame of {} bytes over the limit of {} bytes",
                text.len(),
                node.cfg.max_message_bytes
            ),
        ));
        return Flow::Continue;
    }
    match bucket.handle_message(now) {
        Verdict::Allow => {}
        Verdict::Drop => {
            node.metrics.drop_frame("rate_limited");
            conn.error(&ProtoError::new(
                ErrorCode::RateLimited,
                "too many messages",
            ));
            return Flow::Continue;
        }
        Verdict::Abuse => {
            node.metrics.drop_frame("rate_limited");
            conn.error(&ProtoError::new(
                ErrorCode::RateLimited,
                "too many messages",
            ));
            return Flow::Close(close::RATE_LIMITED, "rate limit abused");
        }
    }
    let req = match parse_request(text) {
        Ok(r) => r,
        Err(e) => {
            conn.error(&e);
            return Flow::Continue;
        }
    };
    node.metrics
        .messages
        .get_or_create(&[("type", req.msg.type_name())])
        .inc();
    match (&req.msg, conn.joined.is_some()) {
        (ClientMsg::Ping(p), _) => {
            conn.send(&ServerMsg::Pong { ts: p.ts.clone() });
            Flow::Continue
        }
        (ClientMsg::Join(j), false) => {
            let j = j.clone();
            match join(conn, &req, &j).await {
                Ok(()) => Flow::Continue,
                Err((e, result, close_after)) => {
                    node.metrics.join(result);
                    conn.error(&e);
                    if close_after {
                        Flow::Close(close::JOIN_REFUSED, "join refused")
                    } else {
                        Flow::Continue
                    }
                }
            }
        }
        (ClientMsg::Join(_), true) => {
            conn.error(&req.error(ErrorCode::NotJoined, "already joined"));
            Flow::Continue
        }
        (_, false) => {
            conn.error(&req.error(ErrorCode::NotJoined, "send join first"));
            Flow::Continue
        }
        (ClientMsg::Leave, true) => leave(conn).await,
        (ClientMsg::Sfu(m), true) => {
            relay_to_sfu(conn, &req, m);
            Flow::Continue
        }
        (ClientMsg::Offer(s), true) => {
            let (to, sdp) = (s.to.clone(), s.sdp.clone());
            relay(conn, &req, &to, |from| ServerMsg::Offer { from, sdp }).await
        }
        (ClientMsg::Answer(s), true) => {
            let (to, sdp) = (s.to.clone(), s.sdp.clone());
            relay(conn, &req, &to, |from| ServerMsg::Answer { from, sdp }).await
        }
        (ClientMsg::Candidate(c), true) => {
            let (to, candidate) = (c.to.clone(), c.candidate.clone());
            relay(conn, &req, &to, |from| ServerMsg::Candidate {
                from,
                candidate,
            })
            .await
        }
    }
}

type JoinError = (ProtoError, &'static str, bool);

fn room_full(req: &Request, room: &RoomRecord) -> JoinError {
    (
        req.error(
            ErrorCode::RoomFull,
            format!(
                "room {} is full ({} participants)",
                room.name, room.capacity
            ),
        ),
        "room_full",
        true,
    )
}

fn internal(req: &Request) -> JoinError {
    (
        req.error(ErrorCode::Internal, "store unavailable, try again"),
        "internal",
        true,
    )
}

/// A valid room name (`PROTOCOL.md`, "Room names"); see [`signaling_proto::room`].
pub fn valid_room_name(name: &str) -> bool {
    signaling_proto::room::valid_room_name(name)
}

fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect()
}

async fn join(conn: &mut Conn, req: &Request, j: &Join) -> Result<(), JoinError> {
    let node = conn.node.clone();
    if j.v != 1 {
        return Err((
            req.error(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {} is not supported (use 1)", j.v),
            ),
            "unsupported_version",
            true,
        ));
    }
    // Before the name reaches a store key or a log line.
    if let Err(e) = signaling_proto::room::check_room_name(&j.room) {
        node.metrics.refuse("room_name");
        return Err((
            req.error(ErrorCode::BadRequest, e.to_string()),
            "bad_request",
            false,
        ));
    }
    let claims = node
        .keys
        .verify_token(&j.token, Some(&j.room), unix_now())
        .map_err(|e| {
            (
                req.error(ErrorCode::Unauthorized, e.to_string()),
                "unauthorized",
                true,
            )
        })?;
    if !claims.grants.join {
        return Err((
            req.error(ErrorCode::Forbidden, "the token does not grant join"),
            "forbidden",
            true,
        ));
    }
    let room = match node
        .timed("get_room", node.store.get_room(&j.room))
        .await
        .map_err(|_| internal(req))?
    {
        Some(r) => r,
        None if claims.grants.create => {
            let rec = RoomRecord {
                name: j.room.clone(),
                mode: RoomMode::Mesh,
                capacity: node.cfg.default_capacity,
                node: node.id().to_string(),
                created_at: unix_now(),
                sfu: None,
            };
            node.timed("create_room", node.store.create_room(&rec))
                .await
                .map_err(|_| internal(req))?
                .0
        }
        None => {
            return Err((
                req.error(
                    ErrorCode::Forbidden,
                    "the room does not exist and the token does not grant create",
                ),
                "forbidden",
                true,
            ))
        }
    };
    let parts = node
        .timed("participants", node.store.participants(&room.name))
        .await
        .map_err(|_| internal(req))?;
    let room_info = RoomInfo {
        name: room.name.clone(),
        mode: room.mode,
        capacity: room.capacity,
    };
    let info = |p: &ParticipantRecord| ParticipantInfo {
        id: p.id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
    };
    if let Some(resume) = &j.resume {
        let failed = || {
            (
                req.error(
                    ErrorCode::ResumeFailed,
                    "unknown or expired resume token; join without `resume`",
                ),
                "resume_failed",
                false,
            )
        };
        let pid = node.resume.verify(resume, &room.name).ok_or_else(failed)?;
        let rec = parts
            .iter()
            .find(|p| p.id == pid && p.identity == claims.sub)
            .ok_or_else(failed)?
            .clone();
        // An sfu room and no link here (resumed from another node, or the link was lost):
        // open one with resume=1 *before* the old node lets go of the participant and closes
        // its link, so the SFU keeps the participant's session.
        let link = if room.mode == RoomMode::Sfu && !node.links.contains(&pid) {
            Some(sfu_link::open(&node, &room, &pid, &rec.name, true).await)
        } else {
            None
        };
        if rec.node != node.id() {
            let mut moved = rec.clone();
            moved.node = node.id().to_string();
            node.timed(
                "add_participant",
                node.store.add_participant(&room.name, &moved),
            )
            .await
            .map_err(|_| internal(req))?;
            let env = Envelope::Takeover {
                room: room.name.clone(),
                participant_id: pid.clone(),
            };
            node.publish(&rec.node, &env).await;
        }
        let (ice_servers, ttl) = node.ice_servers(&claims.sub, Some(claims.exp), unix_now());
        conn.send(&ServerMsg::Joined {
            participant_id: pid.clone(),
            resume_token: node.resume.mint(&room.name, &pid),
            resumed: true,
            room: room_info,
            participants: parts.iter().filter(|p| p.id != pid).map(info).collect(),
            ice_servers,
            ice_servers_ttl: ttl,
        });
        let replaced = node.hub().attach(&room.name, &pid, conn.id);
        if let Some(old) = replaced {
            node.kill(old, close::REPLACED, "resumed on another connection");
        }
        node.metrics.join("resumed");
        tracing::debug!(room = %room.name, participant = %pid, "resumed");
        conn.joined = Some(Joined {
            room: room.name.clone(),
            mode: room.mode,
            pid: pid.clone(),
        });
        match link {
            Some(Ok(ws)) => sfu_link::start(&node, &room.name, &pid, ws),
            Some(Err(e)) => sfu_link::report_failure(&node, &pid, &e),
            None => {}
        }
        return Ok(());
    }
    if parts.len() >= room.capacity as usize {
        return Err(room_full(req, &room));
    }
    // An sfu room needs a live SFU node: refuse the join (4503) if there is none.
    let sfu = if room.mode == RoomMode::Sfu {
        match sfu_link::place(&node, &room).await {
            Ok(s) => Some(s),
            Err(PlaceError::Store) => return Err(internal(req)),
            Err(e) => {
                return Err((
                    req.error(ErrorCode::SfuUnavailable, e.to_string()),
                    "sfu_unavailable",
                    true,
                ))
            }
        }
    } else {
        None
    };
    let pid = crate::config::new_id("p_", 10);
    let name = clean_name(
        j.name
            .as_deref()
            .or(claims.name.as_deref())
            .unwrap_or(&claims.sub),
    );
    let rec = ParticipantRecord {
        id: pid.clone(),
        identity: claims.sub.clone(),
        name,
        node: node.id().to_string(),
        joined_at: unix_now(),
    };
    node.timed(
        "add_participant",
        node.store.add_participant(&room.name, &rec),
    )
    .await
    .map_err(|_| internal(req))?;
    // Two joins racing for the last place (possibly on two nodes) both passed the check above:
    // the store keeps join order, so whoever is beyond the capacity backs out.
    let after = node
        .timed("participants", node.store.participants(&room.name))
        .await
        .map_err(|_| internal(req))?;
    let position = after.iter().position(|p| p.id == pid).unwrap_or(0);
    if position >= room.capacity as usize {
        let _ = node
            .timed(
                "remove_participant",
                node.store.remove_participant(&room.name, &pid),
            )
            .await;
        return Err(room_full(req, &room));
    }
    let parts: Vec<ParticipantRecord> = after.into_iter().filter(|p| p.id != pid).collect();
    let (ice_servers, ttl) = node.ice_servers(&claims.sub, Some(claims.exp), unix_now());
    conn.send(&ServerMsg::Joined {
        participant_id: pid.clone(),
        resume_token: node.resume.mint(&room.name, &pid),
        resumed: false,
        room: room_info,
        participants: parts.iter().map(info).collect(),
        ice_servers,
        ice_servers_ttl: ttl,
    });
    node.hub().attach(&room.name, &pid, conn.id);
    // Someone who joined between our read of the list and our attach could not reach us with
    // their `participant-joined` yet: announce whoever is new since. Their broadcast may also
    // arrive, so a client can see one participant twice (PROTOCOL.md: clients dedupe by id).
    if let Ok(now) = node
        .timed("participants", node.store.participants(&room.name))
        .await
    {
        for p in now
            .iter()
            .filter(|p| p.id != pid && !parts.iter().any(|q| q.id == p.id))
        {
            conn.send(&ServerMsg::ParticipantJoined {
                participant: info(p),
            });
        }
    }
    node.metrics.join("ok");
    tracing::info!(
        room = %room.name,
        participant = %pid,
        identity = %rec.identity,
        mode = ?room.mode,
        participants = parts.len(),
        "participant joined"
    );
    let frame = ServerMsg::ParticipantJoined {
        participant: info(&rec),
    }
    .to_text();
    node.broadcast(&room.name, &parts, Some(&pid), frame).await;
    conn.joined = Some(Joined {
        room: room.name.clone(),
        mode: room.mode,
        pid: pid.clone(),
    });
    if let Some(sfu) = sfu {
        // After `joined` (queued above): a failure is an `error` 4503 the client can tell
        // apart from a refused join.
        match sfu_link::open_placed(&node, &sfu, &room, &pid, &rec.name, false).await {
            Ok(ws) => sfu_link::start(&node, &room.name, &pid, ws),
            Err(e) => sfu_link::report_failure(&node, &pid, &e),
        }
    }
    Ok(())
}

/// `sfu`: queues `msg` on the participant's link to its SFU node.
fn relay_to_sfu(conn: &Conn, req: &Request, m: &SfuRelay) {
    let Some(j) = &conn.joined else {
        return;
    };
    if j.mode != RoomMode::Sfu {
        conn.error(&req.error(
            ErrorCode::BadRequest,
            format!(
                "room {} is a mesh room: `sfu` messages need an sfu room",
                j.room
            ),
        ));
        return;
    }
    // Serializing a JSON map cannot fail.
    let text = serde_json::to_string(&m.msg).unwrap_or_default();
    match conn.node.links.send(&j.pid, text) {
        Ok(()) => {}
        Err(SendError::NoLink) => conn.error(&req.error(
            ErrorCode::SfuUnavailable,
            "no link to the SFU (it failed): leave and join again",
        )),
        Err(SendError::Full) => {
            conn.node.metrics.drop_frame("sfu_link_full");
            conn.error(&req.error(
                ErrorCode::SfuUnavailable,
                "the link to the SFU is congested: message dropped",
            ));
        }
    }
}

async fn relay(
    conn: &mut Conn,
    req: &Request,
    to: &str,
    make: impl FnOnce(String) -> ServerMsg,
) -> Flow {
    let node = conn.node.clone();
    let Some(j) = &conn.joined else {
        return Flow::Continue;
    };
    let parts = match node
        .timed("participants", node.store.participants(&j.room))
        .await
    {
        Ok(p) => p,
        Err(_) => {
            conn.error(&req.error(ErrorCode::Internal, "store unavailable, try again"));
            return Flow::Continue;
        }
    };
    match parts.iter().find(|p| p.id == to) {
        Some(target) => {
            let frame = make(j.pid.clone()).to_text();
            node.send_to(&j.room, target, frame).await;
        }
        None => conn.error(&req.error(
            ErrorCode::NotFound,
            format!("no participant {to} in room {}", j.room),
        )),
    }
    Flow::Continue
}

async fn leave(conn: &mut Conn) -> Flow {
    let node = conn.node.clone();
    let Some(j) = &conn.joined else {
        return Flow::Continue;
    };
    node.hub().remove(&j.pid);
    node.links.close(&j.pid);
    conn.left = true;
    tracing::info!(room = %j.room, participant = %j.pid, reason = "left", "participant left");
    let _ = node
        .timed(
            "remove_participant",
            node.store.remove_participant(&j.room, &j.pid),
        )
        .await;
    conn.send(&ServerMsg::Left);
    if let Ok(parts) = node
        .timed("participants", node.store.participants(&j.room))
        .await
    {
        let frame = ServerMsg::ParticipantLeft {
            participant_id: j.pid.clone(),
            reason: signaling_proto::msg::LeaveReason::Left,
        }
        .to_text();
        node.broadcast(&j.room, &parts, Some(&j.pid), frame).await;
    }
    Flow::Close(close::NORMAL, "left")
}
