//! Encrypted connections to the server (TURN over TLS and over DTLS, RFC 8656 §3.1, RFC 7350),
//! each owned by one tokio task. The task seals what the control side queues on
//! [`Link::outbound`] and hands every STUN message it opens to [`Link::responses`], the same
//! shape as the UDP/TCP readers, so [`crate::client::Allocation`] runs its transactions over
//! either without knowing. Certificates are not verified: this is a load generator pointed at a
//! known server, usually with a test certificate.

pub mod dtls;
pub mod tls;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::Outbound;

/// Messages queued towards one link's task.
const OUTBOUND_QUEUE: usize = 16;
/// How long closing (close_notify, FIN) may take before the task is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors of opening a link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Socket error.
    #[error("socket error")]
    Io(#[from] std::io::Error),
    /// The TLS or DTLS handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
}

impl LinkError {
    /// A short label for counting errors by kind.
    pub fn kind(&self) -> String {
        match self {
            LinkError::Io(e) => format!("connect {:?}", e.kind()),
            LinkError::Handshake(_) => "handshake failed".into(),
            LinkError::Timeout => "handshake timeout".into(),
        }
    }
}

/// How a link ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// close_notify (and FIN over TLS), as a well-behaved client does.
    Graceful,
    /// Just drop the socket: no alert (DTLS state then lives until the server's idle timeout).
    Abrupt,
}

/// An open link: give `outbound` and `responses` to an [`crate::client::Allocation`], keep
/// `closer` to end it.
pub struct Link {
    /// Where requests go.
    pub outbound: Outbound,
    /// STUN messages from the server; closed when the server closes the connection.
    pub responses: mpsc::Receiver<Vec<u8>>,
    /// Ends the link.
    pub closer: Closer,
}

/// Ends a link's task.
pub struct Closer {
    close: oneshot::Sender<Close>,
    task: JoinHandle<()>,
}

impl Closer {
    /// Tells the task how to close and waits (bounded) until it has.
    pub async fn close(self, how: Close) {
        let _ = self.close.send(how);
        let mut task = self.task;
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The channels of a new link: the link itself (for the caller) and the task's ends.
fn channels(reliable: bool) -> (Ends, LinkParts) {
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (resp_tx, resp_rx) = mpsc::channel(crate::client::Allocation::RESPONSE_QUEUE);
    let (close_tx, close_rx) = oneshot::channel();
    (
        Ends {
            outbound: out_rx,
            responses: resp_tx,
            close: close_rx,
        },
        LinkParts {
            outbound: Outbound::Link {
                tx: out_tx,
                reliable,
            },
            responses: resp_rx,
            close: close_tx,
        },
    )
}

/// The task's side of a link.
struct Ends {
    outbound: mpsc::Receiver<Vec<u8>>,
    responses: mpsc::Sender<Vec<u8>>,
    close: oneshot::Receiver<Close>,
}

/// The caller's side before the task is spawned.
struct LinkParts {
    outbound: Outbound,
    responses: mpsc::Receiver<Vec<u8>>,
    close: oneshot::Sender<Close>,
}

impl LinkParts {
    fn into_link(self, task: JoinHandle<()>) -> Link {
        Link {
            outbound: self.outbound,
            responses: self.responses,
            closer: Closer {
                close: self.close,
                task,
            },
        }
    }
}
