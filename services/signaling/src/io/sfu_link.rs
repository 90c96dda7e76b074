//! Participant links to SFU nodes (`services/sfu/PROTOCOL.md`, "The link"): placement of `sfu` rooms on
//! the least-loaded live SFU node, and one WebSocket per participant from the channel server
//! that holds the participant to the SFU node of its room.
//!
//! - The channel server opens the link when the participant joins (or resumes here without a
//!   link: then with `resume=1`), and closes it (1000) when the participant leaves the room for
//!   any reason (`leave`, grace timeout, room deleted, taken over by another node). During the
//!   resume grace period the link stays open.
//! - Client `sfu` messages go to the link as text frames through a bounded queue
//!   ([`LINK_QUEUE`] frames); every text frame from the SFU that is a JSON object goes to the
//!   participant as `{"type":"sfu","msg":...}` through its bounded outbound queue. Frames from
//!   the SFU may be up to [`MAX_LINK_FRAME_BYTES`].
//! - A link that cannot be opened, or that closes while its participant is still in the room,
//!   earns the participant an `error` 4503 (`sfu_unavailable`) and counts in
//!   `signaling_sfu_link_errors_total`.
//!
//! Only `ws://` link URLs are supported in this build (no TLS for links).

use crate::io::node::Node;
use futures_util::{SinkExt, StreamExt};
use registry::{least_loaded_sfu, RoomRecord, SfuNodeInfo};
use signaling_proto::msg::{ErrorCode, ProtoError, ServerMsg};
use signaling_proto::sfu_link::{LinkClose, LinkQuery};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// Frames queued from the participant to its link; beyond, `sfu` messages are dropped
/// (counted as `sfu_link_full`, answered with 4503).
pub const LINK_QUEUE: usize = 64;
/// Largest frame accepted from an SFU node, bytes (SDP offers of big rooms).
pub const MAX_LINK_FRAME_BYTES: usize = 1 << 20;
/// Time limit for opening a link (TCP + WebSocket handshake).
pub const LINK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit for the closing handshake of a link.
const LINK_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Placement attempts when concurrent joins race to place the same room.
const PLACE_ATTEMPTS: usize = 4;

/// An open link.
pub type LinkStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The URL is not a valid WebSocket URL.
    #[error("bad SFU link URL: {0}")]
    BadUrl(String),
    /// Connecting or the WebSocket handshake failed (refused, HTTP 401, ...).
    #[error("SFU link refused: {0}")]
    Connect(String),
    /// No answer within [`LINK_CONNECT_TIMEOUT`].
    #[error("SFU link: no answer within {LINK_CONNECT_TIMEOUT:?}")]
    Timeout,
}

/// Why an `sfu` room could not be placed on an SFU node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlaceError {
    /// No live SFU node, or the room vanished or kept changing.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error("store unavailable")]
    Store,
}

/// Why an `sfu` message could not be queued on the participant's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The participant has no link (it failed, or was never opened).
    NoLink,
    /// The link's queue is full.
    Full,
}

/// Opens a link to `url` with `Authorization: Bearer <secret>` (no header without a secret),
/// accepting frames up to [`MAX_LINK_FRAME_BYTES`].
///
/// Errors: [`LinkError::BadUrl`], [`LinkError::Connect`] (including HTTP refusals such as 401
/// and `wss://` URLs, not supported in this build), [`LinkError::Timeout`].
pub async fn connect(url: &str, secret: Option<&str>) -> Result<LinkStream, LinkError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| LinkError::BadUrl(e.to_string()))?;
    if let Some(secret) = secret {
        let value = HeaderValue::from_str(&format!("Bearer {secret}"))
            .map_err(|_| LinkError::BadUrl("the SFU secret is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_LINK_FRAME_BYTES))
        .max_frame_size(Some(MAX_LINK_FRAME_BYTES))
        // One link per participant: tungstenite's 128 KiB default read buffer would be most of
        // what a participant costs here; the buffer grows for a larger frame.
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    match tokio::time::timeout(
        LINK_CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    {
        Err(_) => Err(LinkError::Timeout),
        Ok(Err(e)) => Err(LinkError::Connect(e.to_string())),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

struct LinkHandle {
    generation: u64,
    tx: mpsc::Sender<String>,
    close: CancellationToken,
}

/// The open links of a node, by participant id. Locks are never held across an `.await`.
#[derive(Default)]
pub struct Links {
    table: Mutex<HashMap<String, LinkHandle>>,
    next_generation: AtomicU64,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("open", &self.table().len())
            .finish()
    }
}

impl Links {
    fn table(&self) -> MutexGuard<'_, HashMap<String, LinkHandle>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True if participant `pid` has a link here.
    pub fn contains(&self, pid: &str) -> bool {
        self.table().contains_key(pid)
    }

    /// Participants with a link here.
    pub fn participants(&self) -> Vec<String> {
        self.table().keys().cloned().collect()
    }

    /// Queues `text` (one JSON object) for `pid`'s link.
    pub fn send(&self, pid: &str, text: String) -> Result<(), SendError> {
        let table = self.table();
        let Some(h) = table.get(pid) else {
            return Err(SendError::NoLink);
        };
        h.tx.try_send(text).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::NoLink,
        })
    }

    /// Closes `pid`'s link normally (1000), if it has one. Idempotent.
    pub fn close(&self, pid: &str) {
        if let Some(h) = self.table().remove(pid) {
            h.close.cancel();
        }
    }

    fn insert(&self, pid: &str) -> (u64, mpsc::Receiver<String>, CancellationToken) {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let close = CancellationToken::new();
        let old = self.table().insert(
            pid.to_string(),
            LinkHandle {
                generation,
                tx,
                close: close.clone(),
            },
        );
        if let Some(old) = old {
            old.close.cancel();
        }
        (generation, rx, close)
    }

    /// Removes `pid`'s entry if it is still link `generation`; true if it was.
    fn remove_if(&self, pid: &str, generation: u64) -> bool {
        let mut table = self.table();
        if table.get(pid).is_some_and(|h| h.generation == generation) {
            table.remove(pid);
            true
        } else {
            false
        }
    }
}

/// The SFU node of `room` (an `sfu` room): its current node if live, else the least-loaded
/// live SFU node (ties by id), set with a compare-and-set so racing joins agree.
pub async fn place(node: &Node, room: &RoomRecord) -> Result<SfuNodeInfo, PlaceError> {
    place_avoiding(node, room, None).await
}

/// [`place`], treating SFU node `avoid` as gone (a draining node that no longer hosts the room).
async fn place_avoiding(
    node: &Node,
    room: &RoomRecord,
    avoid: Option<&str>,
) -> Result<SfuNodeInfo, PlaceError> {
    let nodes = node
        .timed("sfu_nodes", node.store.sfu_nodes())
        .await
        .map_err(|_| PlaceError::Store)?;
    let mut current = room.sfu.clone();
    for _ in 0..PLACE_ATTEMPTS {
        if let Some(live) = current
            .as_deref()
            .filter(|id| Some(*id) != avoid)
            .and_then(|id| nodes.iter().find(|n| n.id == id))
        {
            return Ok(live.clone());
        }
        let Some(best) = least_loaded_sfu(&nodes) else {
            return Err(PlaceError::Unavailable("no live SFU node".into()));
        };
        let after = node
            .timed(
                "set_room_sfu",
                node.store
                    .set_room_sfu(&room.name, current.as_deref(), &best.id),
            )
            .await
            .map_err(|_| PlaceError::Store)?;
        let Some(after) = after else {
            return Err(PlaceError::Unavailable(format!(
                "room {} no longer exists",
                room.name
            )));
        };
        if after.sfu.as_deref() == Some(best.id.as_str()) {
            if current.is_some() {
                tracing::info!(room = %room.name, from = ?current, to = %best.id, "sfu room moved to a live SFU node");
            }
            return Ok(best.clone());
        }
        current = after.sfu;
    }
    Err(PlaceError::Unavailable(format!(
        "placement of room {} kept changing",
        room.name
    )))
}

/// Places `room` (see [`place`]) and opens the link of participant `pid` (display name
/// `name`) to its SFU node. The link is not registered yet: hand it to [`start`] once the
/// participant is attached to the hub. The error is the `error` frame to send the participant
/// (4503, or 4500 if the store failed).
pub async fn open(
    node: &Node,
    room: &RoomRecord,
    pid: &str,
    name: &str,
    resume: bool,
) -> Result<LinkStream, ProtoError> {
    let sfu = place(node, room).await.map_err(place_error)?;
    open_placed(node, &sfu, room, pid, name, resume).await
}

fn place_error(e: PlaceError) -> ProtoError {
    match e {
        PlaceError::Store => ProtoError::new(ErrorCode::Internal, "store unavailable, try again"),
        PlaceError::Unavailable(m) => ProtoError::new(ErrorCode::SfuUnavailable, m),
    }
}

/// [`open_on`] the node [`place`] chose for `room`. A draining SFU node refuses a room it no
/// longer hosts (its last participant left while it drained): the room then moves to a node
/// that takes rooms, and the link goes there.
pub async fn open_placed(
    node: &Node,
    sfu: &SfuNodeInfo,
    room: &RoomRecord,
    pid: &str,
    name: &str,
    resume: bool,
) -> Result<LinkStream, ProtoError> {
    match open_on(node, sfu, &room.name, pid, name, resume).await {
        Err(_) if sfu.draining => {
            let moved = place_avoiding(node, room, Some(&sfu.id))
                .await
                .map_err(place_error)?;
            tracing::info!(room = %room.name, from = %sfu.id, to = %moved.id, "sfu room moved off a draining SFU node");
            open_on(node, &moved, &room.name, pid, name, resume).await
        }
        r => r,
    }
}

/// Opens the link of participant `pid` of `room` to SFU node `sfu` (already placed). Errors
/// as [`open`].
pub async fn open_on(
    node: &Node,
    sfu: &SfuNodeInfo,
    room: &str,
    pid: &str,
    name: &str,
    resume: bool,
) -> Result<LinkStream, ProtoError> {
    let url = LinkQuery::new(room, pid, name, resume).url(&sfu.url);
    connect(&url, node.cfg.sfu_secret.as_deref())
        .await
        .map_err(|e| {
            tracing::warn!(%room, participant = %pid, sfu = %sfu.id, error = %e, "SFU link failed");
            ProtoError::new(
                ErrorCode::SfuUnavailable,
                format!("SFU node {}: {e}", sfu.id),
            )
        })
}

/// Tells participant `pid` its link failed (`error` 4503) and counts it.
pub fn report_failure(node: &Node, pid: &str, e: &ProtoError) {
    if e.code == ErrorCode::SfuUnavailable {
        node.metrics.sfu_link_errors.inc();
    }
    node.metrics.error(e.code);
    node.deliver_local(pid, &e.to_msg().to_text());
}

/// Registers `ws` as participant `pid`'s link (replacing and closing any older one) and runs
/// it in a task until it is closed ([`Links::close`], shutdown) or lost.
pub fn start(node: &Arc<Node>, room: &str, pid: &str, ws: LinkStream) {
    let (generation, rx, close) = node.links.insert(pid);
    tracing::debug!(%room, participant = %pid, "SFU link open");
    tokio::spawn(run(
        node.clone(),
        pid.to_string(),
        generation,
        ws,
        rx,
        close,
    ));
}

/// Forwards one frame from the SFU to the participant.
fn handle_link_frame(node: &Node, pid: &str, text: &str) {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(msg) if msg.is_object() => node.deliver_local(pid, &ServerMsg::Sfu { msg }.to_text()),
        _ => {
            node.metrics.drop_frame("sfu_bad_frame");
            tracing::warn!(participant = %pid, "SFU sent a frame that is not a JSON object");
        }
    }
}

async fn run(
    node: Arc<Node>,
    pid: String,
    generation: u64,
    mut ws: LinkStream,
    mut rx: mpsc::Receiver<String>,
    close: CancellationToken,
) {
    node.metrics.sfu_links.inc();
    let lost: Option<String> = loop {
        tokio::select! {
            biased;
            _ = close.cancelled() => {
                let frame = close_frame(LinkClose::Left);
                let _ = tokio::time::timeout(LINK_CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                break None;
            }
            _ = node.shutdown.cancelled() => {
                let frame = close_frame(LinkClose::SignalingShutdown);
                let _ = tokio::time::timeout(LINK_CLOSE_TIMEOUT, ws.close(Some(frame))).await;
                break None;
            }
            Some(text) = rx.recv() => {
                if let Err(e) = ws.send(Message::text(text)).await {
                    break Some(format!("write failed: {e}"));
                }
            }
            m = ws.next() => match m {
                None => break Some("closed".into()),
                Some(Err(e)) => break Some(e.to_string()),
                Some(Ok(Message::Text(t))) => handle_link_frame(&node, &pid, t.as_str()),
                Some(Ok(Message::Binary(_))) => {
                    node.metrics.drop_frame("sfu_bad_frame");
                }
                Some(Ok(Message::Close(f))) => {
                    // Answer the close handshake (tungstenite queued the reply).
                    let _ = tokio::time::timeout(LINK_CLOSE_TIMEOUT, ws.close(None)).await;
                    break Some(match f {
                        Some(f) => format!("closed by the SFU with {} {}", u16::from(f.code), f.reason),
                        None => "closed by the SFU".into(),
                    });
                }
                Some(Ok(_)) => {}
            },
        }
    };
    node.metrics.sfu_links.dec();
    let Some(why) = lost else {
        tracing::debug!(participant = %pid, "SFU link closed");
        return;
    };
    if node.links.remove_if(&pid, generation) && node.hub().contains(&pid) {
        tracing::warn!(participant = %pid, reason = %why, "SFU link lost");
        report_failure(
            &node,
            &pid,
            &ProtoError::new(ErrorCode::SfuUnavailable, format!("SFU link lost: {why}")),
        );
    }
}

fn close_frame(how: LinkClose) -> CloseFrame {
    CloseFrame {
        code: CloseCode::from(how.code()),
        reason: how.reason().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_errors_never_panic() {
        assert!(matches!(
            connect("not a url", None).await,
            Err(LinkError::BadUrl(_))
        ));
        assert!(matches!(
            connect("ws://127.0.0.1:1/v1/signal", Some("s")).await,
            Err(LinkError::Connect(_))
        ));
        assert!(matches!(
            connect("ws://127.0.0.1:1/", Some("bad\nsecret")).await,
            Err(LinkError::BadUrl(_))
        ));
    }

    #[test]
    fn links_table_send_close_and_generations() {
        let links = Links::default();
        assert_eq!(links.send("p", "{}".into()), Err(SendError::NoLink));
        let (g1, mut rx1, c1) = links.insert("p");
        links.send("p", "{\"a\":1}".into()).unwrap();
        assert_eq!(rx1.try_recv().unwrap(), "{\"a\":1}");
        for _ in 0..LINK_QUEUE {
            links.send("p", "{}".into()).unwrap();
        }
        assert_eq!(links.send("p", "{}".into()), Err(SendError::Full));
        // A newer link replaces (and closes) the old one; the old one's exit leaves it alone.
        let (g2, _rx2, c2) = links.insert("p");
        assert!(c1.is_cancelled());
        assert!(!links.remove_if("p", g1));
        assert!(links.contains("p"));
        assert_eq!(links.participants(), vec!["p".to_string()]);
        links.close("p");
        assert!(c2.is_cancelled());
        assert!(!links.remove_if("p", g2));
        assert!(!links.contains("p"));
    }
}
