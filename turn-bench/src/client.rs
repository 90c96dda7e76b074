//! The control side of one TURN client: request/response transactions with retransmission
//! and long-term authentication (RFC 8489 §9.2, RFC 8656 §7-§11). Responses arrive on a channel
//! fed by whichever reader owns the socket at the time.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc_stun::message::TransactionId;
use tokio::sync::mpsc;

use crate::net::ServerSocket;
use crate::proto::{self, AuthState, Credentials, Outcome, ProtoError, Request};

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

/// The control side of one allocation: sends requests, handles 401/438, keeps the nonce.
pub struct Allocation {
    /// Index among the run's allocations (also the probe flow id).
    pub index: usize,
    socket: Arc<ServerSocket>,
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
}

impl Allocation {
    /// A not-yet-allocated client on `socket`, reading responses from `responses`.
    pub fn new(
        index: usize,
        socket: Arc<ServerSocket>,
        responses: mpsc::Receiver<Vec<u8>>,
        credentials: Arc<Credentials>,
    ) -> Self {
        Self {
            index,
            socket,
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
        let req = Request::Allocate { lifetime_secs };
        let granted = self.transact(&req).await?;
        let relayed = granted.relayed.ok_or(ClientError::Incomplete {
            request: req.name(),
            attribute: "XOR-RELAYED-ADDRESS",
        })?;
        self.relayed = Some(relayed);
        self.lifetime_secs = granted.lifetime_secs.unwrap_or(600);
        Ok(relayed)
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
                    has_integrity,
                    ..
                } => {
                    if let (Some(auth), true) = (&self.auth, has_integrity) {
                        proto::verify_integrity(&bytes, &auth.key)?;
                    }
                    return Ok(Granted {
                        relayed,
                        lifetime_secs,
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
        let (transmissions, mut wait) = if self.socket.is_stream() {
            (1, TCP_RESPONSE_TIMEOUT)
        } else {
            (UDP_TRANSMISSIONS, INITIAL_RTO)
        };
        for _ in 0..transmissions {
            self.socket.send_async(raw).await?;
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
