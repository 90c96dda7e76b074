//! The control side of one TURN client: request/response transactions with retransmission
//! and long-term authentication (RFC 8489 §9.2, RFC 8656 §7-§11). Responses arrive on a channel
//! fed by whichever reader owns the socket at the time; requests go straight onto a UDP/TCP
//! socket, or to the task that owns a TLS or DTLS connection ([`Outbound`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc_stun::message::TransactionId;
use tokio::sync::mpsc;

use crate::net::ServerSocket;
use crate::proto::{
    self, AuthState, Credentials, Outcome, ProtoError, Request, RESERVATION_TOKEN_BYTES,
};

/// STUN responses waiting for the control side; beyond this they are dropped and counted.
const RESPONSE_QUEUE: usize = 64;
/// First retransmission timeout over UDP (RFC 8489 §6.2.1 suggests 500 ms; loopback needs less).
const INITIAL_RTO: Duration = Duration::from_millis(250);
/// Requests sent over UDP before giving up (RFC 8489 Rc = 7).
const UDP_TRANSMISSIONS: u32 = 7;
/// Wait for a response over TCP (RFC 8489 Ti = 39.5 s; shorter here).
const TCP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of one client's transactions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket error.
    #[error("socket error")]
    Io(#[from] io::Error),
    /// Could not build a request or read a response.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// No response after all retransmissions.
    #[error("{0}: no response from the server")]
    Timeout(&'static str),
    /// The connection to the server closed.
    #[error("{0}: connection closed")]
    Closed(&'static str),
    /// The server answered with an error code we do not recover from.
    #[error("{request}: server answered {code} {reason}")]
    Rejected {
        /// The request's name.
        request: &'static str,
        /// ERROR-CODE.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// A success response lacks an attribute we need.
    #[error("{request}: success response lacks {attribute}")]
    Incomplete {
        /// The request's name.
        request: &'static str,
        /// What is missing.
        attribute: &'static str,
    },
}

impl ClientError {
    /// A short label for counting errors by kind: the request and what went wrong
    /// ("Allocate 486", "Refresh timeout", "socket ConnectionRefused"), without per-instance
    /// detail.
    pub fn kind(&self) -> String {
        match self {
            ClientError::Io(e) => format!("socket {:?}", e.kind()),
            ClientError::Proto(_) => "malformed response".into(),
            ClientError::Timeout(request) => format!("{request} timeout"),
            ClientError::Closed(request) => format!("{request} connection closed"),
            ClientError::Rejected { request, code, .. } => format!("{request} {code}"),
            ClientError::Incomplete { request, .. } => format!("{request} incomplete"),
        }
    }
}

/// Where a client's requests go.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// Written straight onto a UDP socket or TCP stream that a reader task watches.
    Socket(Arc<ServerSocket>),
    /// Handed to the task that owns an encrypted connection (TLS, DTLS), which seals and sends.
    Link {
        /// The task's queue of messages to send.
        tx: mpsc::Sender<Vec<u8>>,
        /// Whether the link delivers reliably (TLS): no retransmissions then.
        reliable: bool,
    },
}

impl From<Arc<ServerSocket>> for Outbound {
    fn from(socket: Arc<ServerSocket>) -> Self {
        Outbound::Socket(socket)
    }
}

impl Outbound {
    fn is_reliable(&self) -> bool {
        match self {
            Outbound::Socket(s) => s.is_stream(),
            Outbound::Link { reliable, .. } => *reliable,
        }
    }

    async fn send(&self, raw: &[u8], name: &'static str) -> Result<(), ClientError> {
        match self {
            Outbound::Socket(s) => Ok(s.send_async(raw).await?),
            Outbound::Link { tx, .. } => tx
                .send(raw.to_vec())
                .await
                .map_err(|_| ClientError::Closed(name)),
        }
    }
}

/// The control side of one allocation: sends requests, handles 401/438, keeps the nonce.
pub struct Allocation {
    /// Index among the run's allocations (also the probe flow id).
    pub index: usize,
    outbound: Outbound,
    responses: mpsc::Receiver<Vec<u8>>,
    credentials: Arc<Credentials>,
    auth: Option<AuthState>,
    /// XOR-RELAYED-ADDRESS, once allocated.
    pub relayed: Option<SocketAddr>,
    /// Granted LIFETIME in seconds, once allocated.
    pub lifetime_secs: u32,
}

/// The success-response fields a caller may need.
#[derive(Debug, Clone, Copy)]
pub struct Granted {
    /// XOR-RELAYED-ADDRESS.
    pub relayed: Option<SocketAddr>,
    /// LIFETIME.
    pub lifetime_secs: Option<u32>,
    /// RESERVATION-TOKEN.
    pub reservation_token: Option<[u8; RESERVATION_TOKEN_BYTES]>,
}

/// What a successful Allocate gave.
#[derive(Debug, Clone, Copy)]
pub struct Allocated {
    /// XOR-RELAYED-ADDRESS.
    pub relayed: SocketAddr,
    /// RESERVATION-TOKEN (after EVEN-PORT with the R bit).
    pub reservation_token: Option<[u8; RESERVATION_TOKEN_BYTES]>,
}

impl Allocation {
    /// A not-yet-allocated client sending to `outbound` (a socket, or a TLS/DTLS link task),
    /// reading responses from `responses`.
    pub fn new(
        index: usize,
        outbound: impl Into<Outbound>,
        responses: mpsc::Receiver<Vec<u8>>,
        credentials: Arc<Credentials>,
    ) -> Self {
        Self {
            index,
            outbound: outbound.into(),
            responses,
            credentials,
            auth: None,
            relayed: None,
            lifetime_secs: 0,
        }
    }

    /// The capacity of the response queue to create for [`Allocation::new`].
    pub const RESPONSE_QUEUE: usize = RESPONSE_QUEUE;

    /// Allocate (RFC 8656 §7.1): learns realm and nonce from the first 401.
    pub async fn allocate(
        &mut self,
        lifetime_secs: Option<u32>,
    ) -> Result<SocketAddr, ClientError> {
        let allocated = self
            .allocate_with(&Request::allocate(lifetime_secs))
            .await?;
        Ok(allocated.relayed)
    }

    /// Allocate with any options (`request` should be an Allocate: EVEN-PORT,
    /// RESERVATION-TOKEN). Records the relayed address and lifetime.
    pub async fn allocate_with(&mut self, request: &Request) -> Result<Allocated, ClientError> {
        let granted = self.transact(request).await?;
        let relayed = granted.relayed.ok_or(ClientError::Incomplete {
            request: request.name(),
            attribute: "XOR-RELAYED-ADDRESS",
        })?;
        self.relayed = Some(relayed);
        self.lifetime_secs = granted.lifetime_secs.unwrap_or(600);
        Ok(Allocated {
            relayed,
            reservation_token: granted.reservation_token,
        })
    }

    /// Sends `request` until answered; retries once per 401 (first contact) and 438 (stale
    /// nonce), RFC 8489 §9.2.5.
    pub async fn transact(&mut self, request: &Request) -> Result<Granted, ClientError> {
        let name = request.name();
        for _ in 0..4 {
            let tid = TransactionId::new().0;
            let auth = self
                .auth
                .as_ref()
                .map(|a| (self.credentials.username.as_str(), a));
            let raw = proto::encode_request(request, tid, auth)?;
            let (response, bytes) = self.exchange(&raw, tid, name).await?;
            match response.outcome {
                Outcome::Success {
                    relayed,
                    lifetime_secs,
                    reservation_token,
                    has_integrity,
                    ..
                } => {
                    if let (Some(auth), true) = (&self.auth, has_integrity) {
                        proto::verify_integrity(&bytes, &auth.key)?;
                    }
                    return Ok(Granted {
                        relayed,
                        lifetime_secs,
                        reservation_token,
                    });
                }
                Outcome::Error {
                    code: 401,
                    realm: Some(realm),
                    nonce: Some(nonce),
                    ..
                } if self.auth.is_none() => {
                    let key = self.credentials.long_term_key(&realm);
                    self.auth = Some(AuthState { realm, nonce, key });
                }
                Outcome::Error {
                    code: 438,
                    realm,
                    nonce: Some(nonce),
                    ..
                } if self.auth.is_some() => {
                    let auth = self.auth.as_mut().expect("checked is_some");
                    if let Some(realm) = realm.filter(|r| *r != auth.realm) {
                        auth.key = self.credentials.long_term_key(&realm);
                        auth.realm = realm;
                    }
                    auth.nonce = nonce;
                }
                Outcome::Error { code, reason, .. } => {
                    return Err(ClientError::Rejected {
                        request: name,
                        code,
                        reason,
                    });
                }
            }
        }
        Err(ClientError::Rejected {
            request: name,
            code: 401,
            reason: "authentication did not converge".into(),
        })
    }

    /// Sends `raw` and waits for the response with transaction id `tid`, retransmitting over UDP.
    async fn exchange(
        &mut self,
        raw: &[u8],
        tid: [u8; 12],
        name: &'static str,
    ) -> Result<(proto::Response, Vec<u8>), ClientError> {
        let (transmissions, mut wait) = if self.outbound.is_reliable() {
            (1, TCP_RESPONSE_TIMEOUT)
        } else {
            (UDP_TRANSMISSIONS, INITIAL_RTO)
        };
        for _ in 0..transmissions {
            self.outbound.send(raw, name).await?;
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match tokio::time::timeout_at(deadline, self.responses.recv()).await {
                    Err(_) => break,
                    Ok(None) => return Err(ClientError::Closed(name)),
                    Ok(Some(bytes)) => match proto::decode_response(&bytes) {
                        Ok(r) if r.transaction_id == tid => return Ok((r, bytes)),
                        // A late answer to an earlier retransmission, or junk: keep waiting.
                        _ => continue,
                    },
                }
            }
            wait = (wait * 2).min(Duration::from_secs(4));
        }
        Err(ClientError::Timeout(name))
    }
}
