//! One signaling link per participant, as the signaling server opens it (services/sfu/PROTOCOL.md
//! "The link"): `GET ws://LINK/v1/signal?room=R&participant=P`, `Authorization: Bearer SECRET`,
//! text frames holding the `msg` objects.

use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// Messages from the SFU to a client thread: (participant slot in that thread, `msg`).
pub type Inbox = (mpsc::Sender<(usize, serde_json::Value)>, Arc<mio::Waker>);

/// Link failures, counted for the report.
#[derive(Debug, Default)]
pub struct LinkErrors {
    /// Could not connect or upgrade.
    pub connect: AtomicUsize,
    /// Closed by the SFU before the end.
    pub closed: AtomicUsize,
}

/// Runs one link until `shutdown` or until the SFU closes it.
#[allow(clippy::too_many_arguments)]
pub async fn run_link(
    link: std::net::SocketAddr,
    secret: String,
    room: String,
    participant: String,
    slot: usize,
    inbox: Inbox,
    mut outbox: UnboundedReceiver<String>,
    errors: Arc<LinkErrors>,
    shutdown: CancellationToken,
) {
    let url = format!("ws://{link}/v1/signal?room={room}&participant={participant}");
    let Ok(mut req) = url.into_client_request() else {
        errors.connect.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Ok(v) = format!("Bearer {secret}").parse() {
        req.headers_mut().insert("authorization", v);
    }
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            eprintln!("link {room}/{participant}: {e}");
            errors.connect.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let (tx, waker) = inbox;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = ws.close(None).await;
                return;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str(t.as_str()) {
                        if tx.send((slot, v)).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    eprintln!("link {room}/{participant} closed by the sfu: {f:?}");
                    errors.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(Ok(_)) => {}
                _ => {
                    errors.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            out = outbox.recv() => match out {
                Some(text) => {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        errors.closed.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
        }
    }
}
