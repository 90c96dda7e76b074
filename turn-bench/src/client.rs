//! The I/O side of one TURN client: its connection to the server, the task that reads from it,
//! and request/response transactions with retransmission and long-term authentication.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rtc_stun::message::TransactionId;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::Write as _;

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::proto::{self, AuthState, Credentials, Outcome, ProtoError, Request};
use crate::stats::{FlowReceiver, ReceiveStats, Window};
use crate::wire::{self, FrameKind};

/// Socket buffer size asked for on every UDP socket (the kernel caps it at rmem_max/wmem_max).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// STUN responses waiting for the control side; beyond this they are dropped and counted.
const RESPONSE_QUEUE: usize = 64;
/// First retransmission timeout over UDP (RFC 8489 §6.2.1 suggests 500 ms; loopback needs less).
const INITIAL_RTO: Duration = Duration::from_millis(250);
/// Requests sent over UDP before giving up (RFC 8489 Rc = 7).
const UDP_TRANSMISSIONS: u32 = 7;
/// Wait for a response over TCP (RFC 8489 Ti = 39.5 s; shorter here).
const TCP_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// A pacing thread's pause when its socket buffer is full.
const WOULD_BLOCK_PAUSE: Duration = Duration::from_micros(20);

/// Client-to-server transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// One connected UDP socket per allocation.
    Udp,
    /// One TCP connection per allocation (RFC 8656 §12.5 framing); the relay is still UDP.
    Tcp,
}

impl Transport {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Errors of one client's transactions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Socket error.
    #[error("I/O: {0}")]
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

/// The control side's handle on the connection to the server (requests go out through it).
#[derive(Clone)]
pub enum ServerLink {
    /// Connected UDP socket.
    Udp(Arc<UdpSocket>),
    /// TCP connection, shared with the reading task; writes take `write_lock` so that a
    /// request never lands inside a sender's batch.
    Tcp {
        /// The stream.
        stream: Arc<TcpStream>,
        /// Held for each whole write.
        write_lock: Arc<Mutex<()>>,
    },
}

impl ServerLink {
    /// Sends one datagram, or writes bytes to the stream.
    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ServerLink::Udp(s) => s.send(bytes).await.map(|_| ()),
            ServerLink::Tcp { stream, write_lock } => {
                let _guard = write_lock.lock().await;
                let mut rest = bytes;
                while !rest.is_empty() {
                    stream.writable().await?;
                    match stream.try_write(rest) {
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }
}

/// Read side of the connection to the server.
pub enum ServerReader {
    /// The same connected UDP socket.
    Udp(Arc<UdpSocket>),
    /// The same TCP stream.
    Tcp(Arc<TcpStream>),
}

/// One connection to the server, in the three hands that use it.
pub struct Connection {
    /// For requests (async).
    pub link: ServerLink,
    /// For the reading task (async).
    pub reader: ServerReader,
    /// For a pacing thread (blocking code on a duplicate of the same non-blocking socket).
    pub sender: SendHandle,
}

/// Opens a connection to the server.
pub async fn connect(server: SocketAddr, transport: Transport) -> io::Result<Connection> {
    match transport {
        Transport::Udp => {
            let socket = Socket::new(
                Domain::for_address(server),
                Type::DGRAM,
                Some(Protocol::UDP),
            )?;
            // Best effort: the kernel caps these at net.core.{r,w}mem_max.
            let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
            let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
            socket.set_nonblocking(true)?;
            let any: SocketAddr = if server.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            socket.bind(&any.into())?;
            socket.connect(&server.into())?;
            let socket: std::net::UdpSocket = socket.into();
            let sender = SendHandle::Udp(socket.try_clone()?);
            let socket = Arc::new(UdpSocket::from_std(socket)?);
            Ok(Connection {
                link: ServerLink::Udp(socket.clone()),
                reader: ServerReader::Udp(socket),
                sender,
            })
        }
        Transport::Tcp => {
            let stream = TcpStream::connect(server).await?;
            stream.set_nodelay(true)?;
            let stream = stream.into_std()?;
            let clone = stream.try_clone()?;
            let stream = Arc::new(TcpStream::from_std(stream)?);
            let write_lock = Arc::new(Mutex::new(()));
            Ok(Connection {
                link: ServerLink::Tcp {
                    stream: stream.clone(),
                    write_lock: write_lock.clone(),
                },
                reader: ServerReader::Tcp(stream),
                sender: SendHandle::Tcp {
                    stream: clone,
                    write_lock,
                },
            })
        }
    }
}

/// The sending side used by a pacing thread: a duplicate of the connection's (non-blocking)
/// socket, used from plain threads.
pub enum SendHandle {
    /// Connected UDP socket.
    Udp(std::net::UdpSocket),
    /// TCP stream and the lock shared with [`ServerLink::Tcp`].
    Tcp {
        /// The stream.
        stream: std::net::TcpStream,
        /// Held for each whole write.
        write_lock: Arc<Mutex<()>>,
    },
}

impl SendHandle {
    /// Whether frames need RFC 8656 §12.5 padding.
    pub fn is_stream(&self) -> bool {
        matches!(self, SendHandle::Tcp { .. })
    }

    /// Sends one datagram or writes a whole batch, waiting (by short sleeps) while the socket
    /// buffer is full. Blocking: call from a plain thread only.
    pub fn send_blocking(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            SendHandle::Udp(socket) => loop {
                match socket.send(bytes) {
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(WOULD_BLOCK_PAUSE);
                    }
                    Err(e) => return Err(e),
                }
            },
            SendHandle::Tcp { stream, write_lock } => {
                let _guard = write_lock.blocking_lock();
                let mut rest = bytes;
                while !rest.is_empty() {
                    match stream.write(rest) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => rest = &rest[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(WOULD_BLOCK_PAUSE);
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
        }
    }
}

/// Everything a reading task needs.
pub struct ReaderContext {
    /// Where STUN messages go (the allocation's control side).
    pub responses: mpsc::Sender<Vec<u8>>,
    /// Counts probes.
    pub flow: FlowReceiver,
    /// Run epoch for latency.
    pub epoch: Instant,
    /// Measurement window, set once traffic starts.
    pub window: Arc<OnceLock<Window>>,
    /// Stops the task.
    pub cancel: CancellationToken,
}

impl ReaderContext {
    fn handle_frame(&mut self, frame: &[u8]) {
        let Some(&first) = frame.first() else {
            return;
        };
        match wire::classify(first) {
            Ok(FrameKind::ChannelData) => {
                let now_ns = self.epoch.elapsed().as_nanos() as u64;
                self.flow
                    .handle_channel_data(frame, now_ns, self.window.get().copied());
            }
            Ok(FrameKind::Stun) => {
                if self.responses.try_send(frame.to_vec()).is_err() {
                    self.flow.stats.other += 1;
                }
            }
            Err(_) => self.flow.stats.other += 1,
        }
    }
}

/// Reads from the server until cancelled (or the connection ends) and returns the counters.
pub async fn read_loop(reader: ServerReader, mut ctx: ReaderContext) -> ReceiveStats {
    let cancel = ctx.cancel.clone();
    match reader {
        ServerReader::Udp(socket) => {
            let mut buf = vec![0u8; 65536];
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = socket.readable() => if r.is_err() { break },
                }
                // Drain everything queued before waiting again.
                loop {
                    match socket.try_recv(&mut buf) {
                        Ok(n) => ctx.handle_frame(&buf[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ICMP errors surface on connected sockets; keep reading.
                        Err(_) => break,
                    }
                }
            }
        }
        ServerReader::Tcp(stream) => {
            let mut buf = vec![0u8; 256 * 1024];
            let mut filled = 0;
            'outer: loop {
                if filled == buf.len() {
                    // A frame is at most 20 + 65535 bytes, so a sane stream never fills this.
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = stream.readable() => if r.is_err() { break },
                }
                let n = match stream.try_read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                };
                filled += n;
                let mut at = 0;
                loop {
                    match wire::stream_frame_len(&buf[at..filled]) {
                        Ok(Some(len)) if at + len <= filled => {
                            ctx.handle_frame(&buf[at..at + len]);
                            at += len;
                        }
                        Ok(_) => break,
                        Err(_) => {
                            ctx.flow.stats.other += 1;
                            break 'outer;
                        }
                    }
                }
                buf.copy_within(at..filled, 0);
                filled -= at;
            }
        }
    }
    ctx.flow.stats
}

/// The control side of one allocation: sends requests, handles 401/438, keeps the nonce.
pub struct Allocation {
    /// Index among the run's allocations (also the probe flow id).
    pub index: usize,
    link: ServerLink,
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
    /// A not-yet-allocated client on `link`, reading responses from `responses`.
    pub fn new(
        index: usize,
        link: ServerLink,
        responses: mpsc::Receiver<Vec<u8>>,
        credentials: Arc<Credentials>,
    ) -> Self {
        Self {
            index,
            link,
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
        let (transmissions, mut wait) = if matches!(self.link, ServerLink::Tcp { .. }) {
            (1, TCP_RESPONSE_TIMEOUT)
        } else {
            (UDP_TRANSMISSIONS, INITIAL_RTO)
        };
        for _ in 0..transmissions {
            self.link.send(raw).await?;
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
