//! The signaling link endpoint (services/sfu/PROTOCOL.md "The link"): `GET /v1/signal?room=&participant=`
//! upgraded to WebSocket, `Authorization: Bearer <sfu secret>`.

use super::{Placement, WorkerCmd, QUEUE};
use crate::metrics::SfuMetrics;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sfu_proto::worker::JoinError;
use signaling_proto::sfu_link::{self, LinkClose, LinkQuery};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Shared by every link.
pub struct LinkState {
    /// Bearer secret.
    pub secret: String,
    /// Worker command queues.
    pub workers: Vec<mpsc::Sender<WorkerCmd>>,
    /// Room -> worker.
    pub placement: Arc<Placement>,
    /// Metrics.
    pub metrics: SfuMetrics,
    /// Cancelled at shutdown (links close with 1001).
    pub shutdown: CancellationToken,
    /// While draining, a link for a room this node does not host is refused.
    pub drain: turnkey_runtime::drain::Drain,
    next_link: AtomicU64,
}

impl LinkState {
    /// New state.
    pub fn new(
        secret: String,
        workers: Vec<mpsc::Sender<WorkerCmd>>,
        placement: Arc<Placement>,
        metrics: SfuMetrics,
        shutdown: CancellationToken,
        drain: turnkey_runtime::drain::Drain,
    ) -> Self {
        Self {
            secret,
            workers,
            placement,
            metrics,
            shutdown,
            drain,
            next_link: AtomicU64::new(1),
        }
    }
}

/// The link router.
pub fn router(state: Arc<LinkState>) -> Router {
    Router::new()
        .route(sfu_link::PATH, get(signal))
        .with_state(state)
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

async fn signal(
    State(st): State<Arc<LinkState>>,
    headers: HeaderMap,
    q: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
    ws: WebSocketUpgrade,
) -> Response {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(token.as_bytes().ct_eq(st.secret.as_bytes())) {
        st.metrics
            .bad_input
            .get_or_create(&[("kind", "message")])
            .inc();
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bad or missing bearer secret",
        );
    }
    let Ok(Query(q)) = q else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "room and participant are required",
        );
    };
    if let Err(e) = q.validate() {
        st.metrics
            .bad_input
            .get_or_create(&[("kind", "message")])
            .inc();
        return refuse(StatusCode::BAD_REQUEST, "bad_request", &e.to_string());
    }
    if st.drain.is_draining() && !st.placement.hosts(&q.room) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this SFU node is draining: it serves the rooms it has and takes no new one",
        );
    }
    ws.max_message_size(sfu_proto::msg::MAX_MESSAGE_BYTES)
        // tungstenite's default read buffer is 128 KiB per connection, and there is one link
        // per participant: most of what a participant cost. Link messages are small (SDP is
        // the largest), and the buffer grows for a larger one.
        .read_buffer_size(LINK_BUFFER_BYTES)
        .write_buffer_size(LINK_BUFFER_BYTES)
        .on_upgrade(move |socket| run_link(st, q, socket))
}

/// Initial WebSocket read/write buffer of a link.
const LINK_BUFFER_BYTES: usize = 4 * 1024;

async fn run_link(st: Arc<LinkState>, q: LinkQuery, mut socket: WebSocket) {
    let link = st.next_link.fetch_add(1, Ordering::Relaxed);
    let w = st.placement.acquire(&q.room, st.workers.len());
    let worker = st.workers[w].clone();
    let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
    let (reply_tx, reply_rx) = oneshot::channel();
    let sent = worker
        .send(WorkerCmd::Join {
            room: q.room.clone(),
            participant: q.participant.clone(),
            link,
            tx,
            reply: reply_tx,
        })
        .await;
    let joined = match (sent, reply_rx.await) {
        (Ok(()), Ok(r)) => r,
        _ => {
            st.placement.release(&q.room);
            let _ = close(&mut socket, LinkClose::WorkerUnavailable).await;
            return;
        }
    };
    if let Err(JoinError::RoomFull) = joined {
        st.placement.release(&q.room);
        let _ = close(&mut socket, LinkClose::RoomFull).await;
        return;
    }
    st.metrics.links.inc();
    loop {
        tokio::select! {
            _ = st.shutdown.cancelled() => {
                let _ = close(&mut socket, LinkClose::SfuShutdown).await;
                break;
            }
            m = socket.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    let cmd = WorkerCmd::Message {
                        room: q.room.clone(),
                        participant: q.participant.clone(),
                        text: t.to_string(),
                    };
                    if worker.try_send(cmd).is_err() {
                        st.metrics.bad_input.get_or_create(&[("kind", "message")]).inc();
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    st.metrics.bad_input.get_or_create(&[("kind", "message")]).inc();
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            out = rx.recv() => match out {
                Some(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                // Replaced by a newer link for the same participant.
                None => {
                    let _ = close(&mut socket, LinkClose::Replaced).await;
                    break;
                }
            },
        }
    }
    let _ = worker
        .send(WorkerCmd::LinkClosed {
            room: q.room.clone(),
            participant: q.participant,
            link,
        })
        .await;
    st.placement.release(&q.room);
    st.metrics.links.dec();
}

async fn close(socket: &mut WebSocket, how: LinkClose) -> Result<(), axum::Error> {
    socket
        .send(Message::Close(Some(CloseFrame {
            code: how.code(),
            reason: how.reason().into(),
        })))
        .await
}
