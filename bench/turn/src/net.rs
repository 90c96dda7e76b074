//! The socket layer, kept in one place: one non-blocking connection per allocation (UDP socket or
//! TCP stream), kernel receive timestamps (SO_TIMESTAMPNS) through `nix`, an ordered TCP write
//! queue so frames from the control side and the pacer never interleave, and a tokio reader for
//! the setup and teardown phases.
//!
//! During traffic the sockets are read by plain worker threads (see `worker`), which poll them
//! once per tick; the tokio reader is dropped first so that tokio's reactor does not wake up for
//! every arriving datagram.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt::ReceiveTimestampns, ControlMessageOwned, MsgFlags,
};
use nix::sys::time::TimeSpec;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, FrameKind};

/// Socket buffer size asked for on every socket (the kernel caps it at rmem_max/wmem_max).
const SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// TCP bytes queued beyond what the kernel accepted; past this, probes are refused.
const MAX_TCP_QUEUE_BYTES: usize = 1 << 20;
/// Largest datagram or TCP read.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Pause of an async sender when the socket buffer is full.
const ASYNC_RETRY: Duration = Duration::from_millis(1);

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

/// Wall-clock nanoseconds since the Unix epoch: the clock of probe send times and of kernel
/// receive timestamps.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// One non-blocking connection to the server, shared by the control side, a reader and a pacer.
#[derive(Debug)]
pub enum ServerSocket {
    /// Connected UDP socket with SO_TIMESTAMPNS on.
    Udp(UdpSocket),
    /// TCP stream with its ordered write queue.
    Tcp {
        /// The stream.
        stream: TcpStream,
        /// Bytes not yet accepted by the kernel, whole frames in order.
        queue: Mutex<Vec<u8>>,
    },
}

impl AsFd for ServerSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            ServerSocket::Udp(s) => s.as_fd(),
            ServerSocket::Tcp { stream, .. } => stream.as_fd(),
        }
    }
}

impl ServerSocket {
    /// Opens a connection to `server`.
    pub async fn connect(server: SocketAddr, transport: Transport) -> io::Result<Arc<Self>> {
        let socket = match transport {
            Transport::Udp => return Self::connect_udp(None, server),
            Transport::Tcp => {
                let s = tokio::net::TcpStream::connect(server).await?;
                s.set_nodelay(true)?;
                // into_std deregisters from tokio and leaves the socket non-blocking.
                ServerSocket::Tcp {
                    stream: s.into_std()?,
                    queue: Mutex::new(Vec::new()),
                }
            }
        };
        Ok(Arc::new(socket))
    }

    /// A connected UDP socket to `to`, bound to `bind` (None: the kernel's choice). Also the
    /// generator's peer sockets (`--peers generator`): bound on the peer IP, connected to the
    /// relayed transport address.
    pub fn connect_udp(bind: Option<SocketAddr>, to: SocketAddr) -> io::Result<Arc<Self>> {
        let s = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        s.set_nonblocking(true)?;
        if let Some(bind) = bind {
            s.bind(&bind.into())?;
        }
        s.connect(&to.into())?;
        let s: UdpSocket = s.into();
        // Best effort: without it latency is taken when the worker reads.
        let _ = setsockopt(&s, ReceiveTimestampns, &true);
        Ok(Arc::new(ServerSocket::Udp(s)))
    }

    /// The local address of the connection.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            ServerSocket::Udp(s) => s.local_addr(),
            ServerSocket::Tcp { stream, .. } => stream.local_addr(),
        }
    }

    /// Whether frames need RFC 8656 §12.5 padding.
    pub fn is_stream(&self) -> bool {
        matches!(self, ServerSocket::Tcp { .. })
    }

    /// Sends a datagram, or appends whole bytes to the TCP queue and writes what the kernel
    /// takes. `WouldBlock` means nothing was sent (UDP buffer full, or TCP queue over its cap
    /// and `may_refuse`).
    pub fn send(&self, bytes: &[u8], may_refuse: bool) -> io::Result<()> {
        match self {
            ServerSocket::Udp(s) => s.send(bytes).map(|_| ()),
            ServerSocket::Tcp { stream, queue } => {
                let mut q = lock(queue);
                if may_refuse && q.len() > MAX_TCP_QUEUE_BYTES {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                q.extend_from_slice(bytes);
                flush_queue(stream, &mut q)
            }
        }
    }

    /// Appends to the TCP queue without writing (then call [`ServerSocket::flush`]); refuses
    /// past the cap. For UDP this is [`ServerSocket::send`].
    pub fn queue(&self, bytes: &[u8]) -> io::Result<()> {
        match self {
            ServerSocket::Udp(_) => self.send(bytes, true),
            ServerSocket::Tcp { queue, .. } => {
                let mut q = lock(queue);
                if q.len() > MAX_TCP_QUEUE_BYTES {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                q.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Writes queued TCP bytes the kernel will take; returns the bytes still queued.
    pub fn flush(&self) -> io::Result<usize> {
        match self {
            ServerSocket::Udp(_) => Ok(0),
            ServerSocket::Tcp { stream, queue } => {
                let mut q = lock(queue);
                flush_queue(stream, &mut q)?;
                Ok(q.len())
            }
        }
    }

    /// Sends from async code, waiting (without blocking the runtime) while buffers are full.
    pub async fn send_async(&self, bytes: &[u8]) -> io::Result<()> {
        loop {
            match self.send(bytes, false) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(ASYNC_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
        while self.flush()? > 0 {
            tokio::time::sleep(ASYNC_RETRY).await;
        }
        Ok(())
    }
}

fn lock(queue: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    // A panic while holding the lock cannot leave a half-written frame in the queue (frames are
    // appended whole), so a poisoned queue is still usable.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

fn flush_queue(mut stream: &TcpStream, q: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    while written < q.len() {
        match stream.write(&q[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                q.drain(..written);
                return Err(e);
            }
        }
    }
    q.drain(..written);
    Ok(())
}

/// Reads frames from one connection without blocking: whole datagrams over UDP (with their
/// kernel receive time), reassembled STUN/ChannelData frames over TCP.
pub struct FrameReader {
    socket: Arc<ServerSocket>,
    buf: Vec<u8>,
    filled: usize,
    cmsg: Vec<u8>,
}

/// Why [`FrameReader::drain`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Nothing more to read now.
    Empty,
    /// The stream ended or cannot be framed; stop reading it.
    Closed,
}

impl FrameReader {
    /// A reader for `socket`.
    pub fn new(socket: Arc<ServerSocket>) -> Self {
        Self {
            socket,
            buf: vec![0; READ_BUFFER_BYTES * 2],
            filled: 0,
            cmsg: nix::cmsg_space!(TimeSpec),
        }
    }

    /// Reads everything available, calling `on_frame(frame, kernel_receive_ns)` for each frame.
    pub fn drain(&mut self, mut on_frame: impl FnMut(&[u8], Option<u64>)) -> DrainEnd {
        match &*self.socket {
            ServerSocket::Udp(s) => loop {
                let mut iov = [io::IoSliceMut::new(&mut self.buf[..READ_BUFFER_BYTES])];
                let (len, ts) = match recvmsg::<()>(
                    s.as_raw_fd(),
                    &mut iov,
                    Some(&mut self.cmsg),
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(msg) => {
                        let mut ts = None;
                        if let Ok(cmsgs) = msg.cmsgs() {
                            for c in cmsgs {
                                if let ControlMessageOwned::ScmTimestampns(t) = c {
                                    ts = Some(
                                        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
                                    );
                                }
                            }
                        }
                        (msg.bytes, ts)
                    }
                    Err(nix::errno::Errno::EAGAIN) => return DrainEnd::Empty,
                    // ICMP errors surface on connected sockets; nothing to read now.
                    Err(_) => return DrainEnd::Empty,
                };
                on_frame(&self.buf[..len], ts);
            },
            ServerSocket::Tcp { stream, .. } => loop {
                let mut s: &TcpStream = stream;
                let n = match s.read(&mut self.buf[self.filled..]) {
                    Ok(0) => return DrainEnd::Closed,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return DrainEnd::Empty,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return DrainEnd::Closed,
                };
                self.filled += n;
                let Ok(at) = wire::split_stream_frames(&self.buf[..self.filled], |frame| {
                    on_frame(frame, None)
                }) else {
                    return DrainEnd::Closed;
                };
                if at == 0 && self.filled == self.buf.len() {
                    return DrainEnd::Closed; // a frame larger than the buffer
                }
                self.buf.copy_within(at..self.filled, 0);
                self.filled -= at;
            },
        }
    }
}

/// A tokio registration of a duplicate of a connection's descriptor, used only for readiness;
/// dropping it removes the socket from tokio's reactor (the original stays open).
enum Watcher {
    Udp(tokio::net::UdpSocket),
    Tcp(tokio::net::TcpStream),
}

impl Watcher {
    fn new(socket: &ServerSocket) -> io::Result<Self> {
        Ok(match socket {
            ServerSocket::Udp(s) => Watcher::Udp(tokio::net::UdpSocket::from_std(s.try_clone()?)?),
            ServerSocket::Tcp { stream, .. } => {
                Watcher::Tcp(tokio::net::TcpStream::from_std(stream.try_clone()?)?)
            }
        })
    }

    async fn readable(&self) -> io::Result<()> {
        match self {
            Watcher::Udp(s) => s.readable().await,
            Watcher::Tcp(s) => s.readable().await,
        }
    }

    /// Runs `drain` (which reads the socket through the other descriptor until it would block)
    /// and then forgets the readiness, unless new data arrived meanwhile (tokio compares the
    /// readiness tick taken before `drain`).
    fn drain_with(&self, drain: impl FnOnce() -> DrainEnd) -> DrainEnd {
        let mut end = DrainEnd::Empty;
        let run = || {
            end = drain();
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        };
        let _ = match self {
            Watcher::Udp(s) => s.try_io(Interest::READABLE, run),
            Watcher::Tcp(s) => s.try_io(Interest::READABLE, run),
        };
        end
    }
}

/// Async reader for the setup and teardown phases: forwards STUN messages to the control side
/// and discards ChannelData, until cancelled. Dropping it removes the socket from tokio's
/// reactor.
pub async fn forward_stun(
    socket: Arc<ServerSocket>,
    responses: mpsc::Sender<Vec<u8>>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let watcher = Watcher::new(&socket)?;
    let mut reader = FrameReader::new(socket);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = watcher.readable() => r?,
        }
        let end = watcher.drain_with(|| {
            reader.drain(|frame, _| {
                if frame.first().map(|b| wire::classify(*b)) == Some(Ok(FrameKind::Stun)) {
                    let _ = responses.try_send(frame.to_vec());
                }
            })
        });
        if end == DrainEnd::Closed {
            // Keep the task alive so the control side sees timeouts, not a closed channel.
            cancel.cancelled().await;
            return Ok(());
        }
    }
}
