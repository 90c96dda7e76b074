//! The thin I/O around [`sfu_proto::worker::Worker`]: one thread with a current-thread tokio
//! runtime per worker, each owning one UDP socket (port = base + index), its ICE-TCP streams and
//! its rooms; the ICE-TCP acceptor hands each stream to the worker named by the STUN USERNAME's
//! ufrag prefix; the signaling links (axum WebSocket) send commands to the room's worker.
//!
//! ICE-TCP bounds: a connection is *pending* from accept until the worker's peer connection
//! answers one of its STUN Binding requests with success (ICE completed on it). Pending
//! connections are capped per source IP and in total (refused at accept beyond), and closed
//! when they are still pending `ice_tcp_handshake_timeout_secs` after accept. A connection
//! whose peer connection is removed is closed too. Each close is counted in
//! `sfu_ice_tcp_closed_total{reason}`.

pub mod link;

use crate::metrics::{SfuMetrics, L1};
use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sfu_proto::demux::{is_binding_success, stun_local_ufrag, Proto};
use sfu_proto::limit::PendingTable;
use sfu_proto::worker::{JoinError, Worker, WorkerConfig};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use turnkey_sockets::batch::{RecvBatch, SendBatch};

/// Commands a worker accepts.
#[derive(Debug)]
pub enum WorkerCmd {
    /// A link opened.
    Join {
        /// Room.
        room: String,
        /// Participant id.
        participant: String,
        /// Link number (newest wins).
        link: u64,
        /// Where the participant's messages go.
        tx: mpsc::Sender<String>,
        /// Outcome.
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A message from the participant's client.
    Message {
        /// Room.
        room: String,
        /// Participant id.
        participant: String,
        /// JSON text.
        text: String,
    },
    /// A link closed.
    LinkClosed {
        /// Room.
        room: String,
        /// Participant id.
        participant: String,
        /// Link number.
        link: u64,
    },
    /// An ICE-TCP stream whose first frame named this worker.
    Tcp {
        /// The stream.
        stream: TcpStream,
        /// Its peer.
        remote: SocketAddr,
        /// The first RFC 4571 frame's payload.
        first: Vec<u8>,
        /// Its place among the pending connections, given back once ICE completes on it.
        pending: PendingSlot,
        /// When it is closed if ICE has not completed by then.
        deadline: Instant,
    },
}

/// ICE-TCP bounds shared by the acceptor and the workers (see the module docs).
#[derive(Debug)]
pub struct IceTcpLimits {
    /// Time from accept to completed ICE.
    pub handshake_timeout: Duration,
    table: Mutex<PendingTable>,
    metrics: SfuMetrics,
}

impl IceTcpLimits {
    /// Limits with these caps.
    pub fn new(
        handshake_timeout: Duration,
        max_pending_per_ip: usize,
        max_pending: usize,
        metrics: SfuMetrics,
    ) -> Arc<Self> {
        Arc::new(IceTcpLimits {
            handshake_timeout,
            table: Mutex::new(PendingTable::new(max_pending_per_ip, max_pending)),
            metrics,
        })
    }

    /// A pending place for a connection from `ip`, or the `sfu_ice_tcp_closed_total` reason
    /// it is refused for (counted).
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<PendingSlot, &'static str> {
        let r = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_add(ip);
        match r {
            Ok(()) => {
                self.metrics.ice_tcp_pending.inc();
                Ok(PendingSlot {
                    limits: self.clone(),
                    ip,
                })
            }
            Err(refusal) => {
                self.count_close(refusal.reason());
                Err(refusal.reason())
            }
        }
    }

    fn count_close(&self, reason: &'static str) {
        count_tcp_close(&self.metrics, reason);
    }
}

/// One pending ICE-TCP connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct PendingSlot {
    limits: Arc<IceTcpLimits>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.limits
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.ip);
        self.limits.metrics.ice_tcp_pending.dec();
    }
}

/// A worker's ICE-TCP connection.
struct TcpConn {
    tx: mpsc::Sender<BytesMut>,
    reader: tokio::task::AbortHandle,
    writer: tokio::task::AbortHandle,
    /// Until ICE completes: the deadline and the pending place.
    pending: Option<(Instant, PendingSlot)>,
}

/// Capacity of each worker's command queue and each link's outbound queue.
pub const QUEUE: usize = 1024;
/// Frames queued per ICE-TCP stream before drops.
const TCP_QUEUE: usize = 512;
/// `recvmmsg(2)` calls per wake-up (each up to [`turnkey_sockets::batch::BATCH`] datagrams)
/// before the worker sends what they produced and services its other inputs.
const READS_PER_WAKE: usize = 4;
/// Datagrams the core may hold before the worker sends them in the middle of a batch's media
/// (a burst to a very large fan-out leaves in parts; below this, a batch's forwarded packets
/// leave together, grouped by destination for GSO).
const SEND_CAP: usize = 1024;
/// UDP datagrams taken from the core before they are sent: a large fan-out leaves in parts of
/// this size (a few `sendmmsg(2)` calls), each subscriber's copies of the batch in one part.
const SEND_INTERLEAVE: usize = 48;

/// Which worker hosts each room, and how many links each room has.
#[derive(Debug, Default)]
pub struct Placement {
    rooms: Mutex<HashMap<String, (usize, usize)>>,
}

impl Placement {
    /// The worker for `room` (least-loaded for a new room); counts one more link.
    pub fn acquire(&self, room: &str, workers: usize) -> usize {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = rooms.get_mut(room) {
            e.1 += 1;
            return e.0;
        }
        let mut load = vec![0usize; workers];
        for (w, n) in rooms.values() {
            if let Some(l) = load.get_mut(*w) {
                *l += n;
            }
        }
        let w = (0..workers).min_by_key(|&i| load[i]).unwrap_or(0);
        rooms.insert(room.to_string(), (w, 1));
        w
    }

    /// One link of `room` ended.
    pub fn release(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = rooms.get_mut(room) {
            e.1 = e.1.saturating_sub(1);
            if e.1 == 0 {
                rooms.remove(room);
            }
        }
    }

    /// True if a link of `room` is open here.
    pub fn hosts(&self, room: &str) -> bool {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.contains_key(room)
    }

    /// Links open in total (the node's load in the registry).
    pub fn load(&self) -> u32 {
        let rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        rooms.values().map(|(_, n)| *n as u32).sum()
    }
}

/// The ufrag prefix of worker `i` (ICE ufrag characters only: RFC 8839 §5.4 ice-char).
pub fn ufrag_prefix(i: usize) -> String {
    format!("w{i}x")
}

/// The worker index a ufrag names.
pub fn worker_of_ufrag(ufrag: &str) -> Option<usize> {
    let rest = ufrag.strip_prefix('w')?;
    let end = rest.find('x')?;
    rest[..end].parse().ok()
}

/// Starts worker `index` on its own thread. Returns its command queue.
pub fn spawn_worker(
    index: usize,
    cfg: WorkerConfig,
    socket: std::net::UdpSocket,
    metrics: SfuMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<(mpsc::Sender<WorkerCmd>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel(QUEUE);
    socket.set_nonblocking(true)?;
    let handle =
        turnkey_runtime::workers::spawn_worker(format!("sfu-worker-{index}"), move || {
            run_worker(index, cfg, socket, rx, metrics, shutdown)
        })?;
    Ok((tx, handle))
}

struct Exported {
    forwarded_packets: u64,
    forwarded_bytes: u64,
    nack: u64,
    pli_received: u64,
    pli_sent: u64,
    retransmitted: u64,
    nack_missing: u64,
    nack_throttled: u64,
    nack_requested: u64,
    feedback_refused: u64,
    layer_switches: u64,
    bad_packets: u64,
    ssrc_refused: u64,
    bad_sdp: u64,
    bad_messages: u64,
    unroutable: u64,
    write_errors: u64,
    data_messages: u64,
    data_dropped_too_large: u64,
    data_dropped_rate_limited: u64,
    speaker_changes: u64,
    ice_timeouts: u64,
    dtls_flights_resent: u64,
    direct_engaged: u64,
    direct_refused: u64,
    direct_dropped: u64,
    direct_packets: u64,
    direct_receive_engaged: u64,
    direct_receive_refused: u64,
    direct_receive_dropped: u64,
    direct_received_packets: u64,
    direct_rtcp_engaged: u64,
    direct_rtcp_refused: u64,
    direct_rtcp_packets: u64,
    census: (usize, usize, usize, usize),
}

async fn run_worker(
    index: usize,
    cfg: WorkerConfig,
    socket: std::net::UdpSocket,
    mut cmds: mpsc::Receiver<WorkerCmd>,
    metrics: SfuMetrics,
    shutdown: CancellationToken,
) {
    let udp = match UdpSocket::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("worker {index}: socket: {e}");
            return;
        }
    };
    tracing::debug!(worker = index, rng_seed = cfg.rng_seed, "worker RNG seeded");
    let mut core = Worker::new(cfg);
    let mut links: HashMap<(String, String), (u64, mpsc::Sender<String>)> = HashMap::new();
    let mut tcp: HashMap<SocketAddr, TcpConn> = HashMap::new();
    let (tcp_in_tx, mut tcp_in) = mpsc::channel::<(SocketAddr, Option<Vec<u8>>)>(QUEUE);
    // Batched I/O (one small module, `turnkey_sockets::batch`): recvmmsg into one buffer set,
    // and what a wake-up produced leaves in sendmmsg calls, grouped by destination so that the
    // packets of one frame to one subscriber go as one UDP GSO message.
    let mut rx = Box::new(RecvBatch::new());
    let mut tx: SendBatch<()> = SendBatch::new();
    let mut udp_out: Vec<sfu_proto::worker::Transmit> = Vec::new();
    // Per datagram of the current receive batch: true if it goes to a publish PC.
    let mut media: Vec<bool> = Vec::new();
    // When this wake-up read datagrams (`sfu_forwarding_delay_seconds` runs from there).
    let mut read_at: Option<Instant> = None;
    let mut exported = Exported {
        forwarded_packets: 0,
        forwarded_bytes: 0,
        nack: 0,
        pli_received: 0,
        pli_sent: 0,
        retransmitted: 0,
        nack_missing: 0,
        nack_throttled: 0,
        nack_requested: 0,
        feedback_refused: 0,
        layer_switches: 0,
        bad_packets: 0,
        ssrc_refused: 0,
        bad_sdp: 0,
        bad_messages: 0,
        unroutable: 0,
        write_errors: 0,
        data_messages: 0,
        data_dropped_too_large: 0,
        data_dropped_rate_limited: 0,
        speaker_changes: 0,
        ice_timeouts: 0,
        dtls_flights_resent: 0,
        direct_engaged: 0,
        direct_refused: 0,
        direct_dropped: 0,
        direct_packets: 0,
        direct_receive_engaged: 0,
        direct_receive_refused: 0,
        direct_receive_dropped: 0,
        direct_received_packets: 0,
        direct_rtcp_engaged: 0,
        direct_rtcp_refused: 0,
        direct_rtcp_packets: 0,
        census: (0, 0, 0, 0),
    };
    let worker_label = [("worker", index.to_string())];
    let mut next_export = Instant::now();
    loop {
        let core_deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let deadline = tcp
            .values()
            .filter_map(|c| c.pending.as_ref().map(|(d, _)| *d))
            .fold(core_deadline, Instant::min);
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = udp.readable() => {
                let busy = Instant::now();
                read_at = Some(busy);
                if r.is_ok() {
                    for _ in 0..READS_PER_WAKE {
                        match udp.try_io(Interest::READABLE, || rx.recv(&udp)) {
                            Ok(_) => {
                                let now = Instant::now();
                                // Two passes: the publishers' datagrams, then the rest (with a
                                // large fan-out, mostly the subscribers' TWCC feedback and
                                // receiver reports). What the media produced leaves between
                                // them, grouped by destination: the packets of a frame to one
                                // subscriber go as one GSO message, one wake-up of its socket.
                                media.clear();
                                media.extend(rx.datagrams().map(|(src, _)| core.carries_media(Proto::Udp, src)));
                                for pass in [true, false] {
                                    for ((src, d), _) in rx.datagrams().zip(&media).filter(|(_, m)| **m == pass) {
                                        core.handle_datagram(now, Proto::Udp, src, d);
                                        if core.pending_transmits() >= SEND_CAP {
                                            send_all(&mut core, &udp, &mut tx, &mut udp_out, &mut tcp, &metrics, Some(busy));
                                        }
                                    }
                                    if pass && core.pending_transmits() > 0 {
                                        send_all(&mut core, &udp, &mut tx, &mut udp_out, &mut tcp, &metrics, Some(busy));
                                    }
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                metrics.worker_busy.get_or_create(&worker_label).inc_by(busy.elapsed().as_secs_f64());
            }
            Some(cmd) = cmds.recv() => {
                let now = Instant::now();
                match cmd {
                    WorkerCmd::Join { room, participant, link, tx, reply } => {
                        let r = core.join(now, &room, &participant, link);
                        if r.is_ok() {
                            links.insert((room, participant), (link, tx));
                        }
                        let _ = reply.send(r);
                    }
                    WorkerCmd::Message { room, participant, text } => {
                        core.handle_message(now, &room, &participant, &text);
                    }
                    WorkerCmd::LinkClosed { room, participant, link } => {
                        core.link_closed(now, &room, &participant, link);
                        let key = (room, participant);
                        if links.get(&key).is_some_and(|(l, _)| *l == link) {
                            links.remove(&key);
                        }
                    }
                    WorkerCmd::Tcp { stream, remote, first, pending, deadline } => {
                        let (tx, rx) = mpsc::channel(TCP_QUEUE);
                        let (read, write) = stream.into_split();
                        let writer = tokio::spawn(tcp_writer(write, rx)).abort_handle();
                        let reader = tokio::spawn(tcp_reader(read, remote, tcp_in_tx.clone())).abort_handle();
                        let conn = TcpConn { tx, reader, writer, pending: Some((deadline, pending)) };
                        if let Some(old) = tcp.insert(remote, conn) {
                            close_conn(&old);
                        }
                        core.handle_datagram(now, Proto::Tcp, remote, &first);
                    }
                }
                metrics.worker_busy.get_or_create(&worker_label).inc_by(now.elapsed().as_secs_f64());
            }
            Some((remote, frame)) = tcp_in.recv() => {
                match frame {
                    Some(f) => core.handle_datagram(Instant::now(), Proto::Tcp, remote, &f),
                    None => {
                        if let Some(c) = tcp.remove(&remote) {
                            close_conn(&c);
                        }
                    }
                }
            }
            _ = sleep => {}
        }
        let now = Instant::now();
        if core_deadline <= now {
            core.handle_timeout(now);
        }
        send_all(
            &mut core,
            &udp,
            &mut tx,
            &mut udp_out,
            &mut tcp,
            &metrics,
            read_at.take(),
        );
        // Pending past their deadline: closed.
        tcp.retain(|_, c| {
            if c.pending.as_ref().is_some_and(|(d, _)| *d <= now) {
                count_tcp_close(&metrics, "handshake_timeout");
                close_conn(c);
                false
            } else {
                true
            }
        });
        while let Some(s) = core.poll_signal() {
            if let Some((_, tx)) = links.get(&(s.room, s.participant)) {
                // The core's typed message becomes the link's JSON text here.
                let _ = tx.try_send(s.msg.to_json().to_string());
            }
        }
        if now >= next_export {
            next_export = now + Duration::from_millis(250);
            export(&mut core, &mut exported, &metrics, &worker_label);
            // Streams whose peer connection was removed (participant left, ICE failed).
            tcp.retain(|remote, c| {
                if c.pending.is_none() && !core.routes(Proto::Tcp, *remote) {
                    count_tcp_close(&metrics, "pc_gone");
                    close_conn(c);
                    false
                } else {
                    true
                }
            });
        }
    }
    for c in tcp.values() {
        close_conn(c);
    }
    export(&mut core, &mut exported, &metrics, &worker_label);
    let (rooms, parts, audio, video) = exported.census;
    metrics.rooms.dec_by(rooms as i64);
    metrics.participants.dec_by(parts as i64);
    metrics
        .tracks
        .get_or_create(&[("kind", "audio")])
        .dec_by(audio as i64);
    metrics
        .tracks
        .get_or_create(&[("kind", "video")])
        .dec_by(video as i64);
}

/// Moves what the core has to send: UDP datagrams into `udp_out` (sent by [`send_udp`]), about
/// [`SEND_INTERLEAVE`] at a time; ICE-TCP frames to their stream's writer.
fn drain_transmits(
    core: &mut Worker,
    udp_out: &mut Vec<sfu_proto::worker::Transmit>,
    tcp: &mut HashMap<SocketAddr, TcpConn>,
    metrics: &SfuMetrics,
) {
    loop {
        // Past a part's worth, stop before the core protects the next PCs' copies (what it
        // already produced goes with this part: a subscriber's copies stay together).
        if udp_out.len() >= SEND_INTERLEAVE && core.ready_transmits() == 0 {
            break;
        }
        let Some(t) = core.poll_transmit() else {
            break;
        };
        match t.proto {
            Proto::Udp => udp_out.push(t),
            Proto::Tcp => {
                if let Some(c) = tcp.get_mut(&t.remote) {
                    // The PC answered a check on this stream: ICE completed on it.
                    if c.pending.is_some() && is_binding_success(&t.payload) {
                        c.pending = None;
                        metrics.ice_tcp_established.inc();
                    }
                    let _ = c.tx.try_send(t.payload);
                }
            }
        }
    }
}

/// Sends everything the core has: [`SEND_INTERLEAVE`] UDP datagrams or so at a time, the core
/// protecting the next subscribers' copies only after those left ([`Worker::poll_transmit`]),
/// so a large fan-out's first subscribers do not wait for the last ones' SRTP. Each part is
/// grouped by destination by [`send_udp`]; `read_at`, when the datagrams were read, feeds
/// `sfu_forwarding_delay_seconds`.
#[allow(clippy::too_many_arguments)]
fn send_all(
    core: &mut Worker,
    udp: &UdpSocket,
    tx: &mut SendBatch<()>,
    udp_out: &mut Vec<sfu_proto::worker::Transmit>,
    tcp: &mut HashMap<SocketAddr, TcpConn>,
    metrics: &SfuMetrics,
    read_at: Option<Instant>,
) {
    loop {
        drain_transmits(core, udp_out, tcp, metrics);
        if udp_out.is_empty() {
            if core.pending_transmits() == 0 {
                return;
            }
            // Only ICE-TCP frames, or PCs that had nothing after all: go on.
            continue;
        }
        let sent = send_udp(core, udp, tx, udp_out, metrics);
        if let Some(at) = read_at {
            observe_delay(metrics, at, sent);
        }
    }
}

/// `sfu_forwarding_delay_seconds`: `sent` datagrams left `read_at.elapsed()` after the read.
fn observe_delay(metrics: &SfuMetrics, read_at: Instant, sent: usize) {
    let delay = read_at.elapsed().as_secs_f64();
    for _ in 0..sent {
        metrics.forwarding_delay.observe(delay);
    }
}

/// Sends `out` (emptied) in as few `sendmmsg(2)` calls as [`SendBatch`] takes: grouped by
/// destination first (a stable sort keeps each destination's order), so consecutive datagrams
/// of one size to one subscriber become one GSO message. A datagram the socket refuses (full
/// buffer) is dropped, as a plain send would. Each datagram's buffer, once copied into the
/// batch, goes back to the core ([`Worker::recycle`]).
/// Returns how many were sent.
fn send_udp(
    core: &mut Worker,
    udp: &UdpSocket,
    tx: &mut SendBatch<()>,
    out: &mut Vec<sfu_proto::worker::Transmit>,
    metrics: &SfuMetrics,
) -> usize {
    out.sort_by_key(|t| t.remote);
    let failed = |_: &(), _: SocketAddr, e: std::io::Error| {
        let reason = if e.kind() == std::io::ErrorKind::WouldBlock {
            "buffer_full"
        } else {
            "error"
        };
        metrics
            .send_failures
            .get_or_create(&[("reason", reason)])
            .inc();
    };
    let mut sent = 0;
    for t in out.drain(..) {
        if tx.is_full() {
            sent += tx.flush(|_| Some(udp.as_fd()), failed);
        }
        tx.push((), t.remote, &t.payload);
        // Copied into the batch: its buffer goes back to the core for the next copies.
        core.recycle(t.payload);
    }
    if !tx.is_empty() {
        sent += tx.flush(|_| Some(udp.as_fd()), failed);
    }
    sent
}

/// Counts an ICE-TCP close in `sfu_ice_tcp_closed_total{reason}`.
fn count_tcp_close(metrics: &SfuMetrics, reason: &'static str) {
    metrics
        .ice_tcp_closed
        .get_or_create(&[("reason", reason)])
        .inc();
}

/// Closes an ICE-TCP stream now: aborting both tasks drops both halves of the socket.
fn close_conn(c: &TcpConn) {
    c.reader.abort();
    c.writer.abort();
}

fn export(
    core: &mut Worker,
    e: &mut Exported,
    m: &SfuMetrics,
    worker: &[(&'static str, String); 1],
) {
    fn delta(total: u64, seen: &mut u64) -> u64 {
        let d = total.saturating_sub(*seen);
        *seen = total;
        d
    }
    /// One series of `family` per `result`, each advanced by its total's growth since `seen`.
    fn by_result<const N: usize>(
        family: &Family<L1, Counter>,
        rows: [(&'static str, u64, &mut u64); N],
    ) {
        for (result, total, seen) in rows {
            family
                .get_or_create(&[("result", result)])
                .inc_by(delta(total, seen));
        }
    }
    let s = core.stats().clone();
    let f = core.feedback();
    m.forwarded_packets
        .inc_by(delta(s.forwarded_packets, &mut e.forwarded_packets));
    m.forwarded_bytes
        .inc_by(delta(s.forwarded_bytes, &mut e.forwarded_bytes));
    m.nack
        .inc_by(delta(f.nack.load(Ordering::Relaxed), &mut e.nack));
    m.retransmitted.inc_by(delta(
        f.retransmitted.load(Ordering::Relaxed),
        &mut e.retransmitted,
    ));
    m.nack_unanswered
        .get_or_create(&[("reason", "missing")])
        .inc_by(delta(
            f.nack_missing.load(Ordering::Relaxed),
            &mut e.nack_missing,
        ));
    m.nack_unanswered
        .get_or_create(&[("reason", "throttled")])
        .inc_by(delta(
            f.nack_throttled.load(Ordering::Relaxed),
            &mut e.nack_throttled,
        ));
    m.nack_requested.inc_by(delta(
        f.nack_requested.load(Ordering::Relaxed),
        &mut e.nack_requested,
    ));
    m.nack_history_packets
        .get_or_create(worker)
        .set(f.history_packets.load(Ordering::Relaxed) as i64);
    let pli_in = f.pli.load(Ordering::Relaxed) + f.fir.load(Ordering::Relaxed);
    m.pli
        .get_or_create(&[("direction", "received")])
        .inc_by(delta(pli_in, &mut e.pli_received));
    m.pli
        .get_or_create(&[("direction", "sent")])
        .inc_by(delta(s.pli_sent, &mut e.pli_sent));
    m.layer_switches
        .inc_by(delta(s.layer_switches, &mut e.layer_switches));
    for (kind, total, seen) in [
        ("packet", s.bad_packets, &mut e.bad_packets),
        ("ssrc", s.ssrc_refused, &mut e.ssrc_refused),
        ("sdp", s.bad_sdp, &mut e.bad_sdp),
        ("message", s.bad_messages, &mut e.bad_messages),
        ("unroutable", s.unroutable, &mut e.unroutable),
        ("write", s.write_errors, &mut e.write_errors),
        (
            "feedback",
            f.feedback_refused.load(Ordering::Relaxed),
            &mut e.feedback_refused,
        ),
    ] {
        m.bad_input
            .get_or_create(&[("kind", kind)])
            .inc_by(delta(total, seen));
    }
    m.data_messages
        .inc_by(delta(s.data_messages, &mut e.data_messages));
    for (reason, total, seen) in [
        (
            "too_large",
            s.data_dropped_too_large,
            &mut e.data_dropped_too_large,
        ),
        (
            "rate_limited",
            s.data_dropped_rate_limited,
            &mut e.data_dropped_rate_limited,
        ),
    ] {
        m.data_dropped
            .get_or_create(&[("reason", reason)])
            .inc_by(delta(total, seen));
    }
    m.speaker_changes
        .inc_by(delta(s.speaker_changes, &mut e.speaker_changes));
    m.ice_timeouts
        .inc_by(delta(s.ice_timeouts, &mut e.ice_timeouts));
    m.dtls_flights_resent
        .inc_by(delta(s.dtls_flights_resent, &mut e.dtls_flights_resent));
    by_result(
        &m.direct_send,
        [
            ("engaged", s.direct_engaged, &mut e.direct_engaged),
            ("refused", s.direct_refused, &mut e.direct_refused),
            ("dropped", s.direct_dropped, &mut e.direct_dropped),
        ],
    );
    m.direct_packets
        .inc_by(delta(s.direct_packets, &mut e.direct_packets));
    by_result(
        &m.direct_receive,
        [
            (
                "engaged",
                s.direct_receive_engaged,
                &mut e.direct_receive_engaged,
            ),
            (
                "refused",
                s.direct_receive_refused,
                &mut e.direct_receive_refused,
            ),
            (
                "dropped",
                s.direct_receive_dropped,
                &mut e.direct_receive_dropped,
            ),
        ],
    );
    m.direct_received_packets.inc_by(delta(
        s.direct_received_packets,
        &mut e.direct_received_packets,
    ));
    by_result(
        &m.direct_rtcp,
        [
            ("engaged", s.direct_rtcp_engaged, &mut e.direct_rtcp_engaged),
            ("refused", s.direct_rtcp_refused, &mut e.direct_rtcp_refused),
        ],
    );
    m.direct_rtcp_packets
        .inc_by(delta(s.direct_rtcp_packets, &mut e.direct_rtcp_packets));
    for b in core.take_bwe_samples() {
        m.bwe.observe(b);
    }
    let c = core.census();
    let (r0, p0, a0, v0) = e.census;
    m.rooms.inc_by(c.0 as i64 - r0 as i64);
    m.participants.inc_by(c.1 as i64 - p0 as i64);
    m.tracks
        .get_or_create(&[("kind", "audio")])
        .inc_by(c.2 as i64 - a0 as i64);
    m.tracks
        .get_or_create(&[("kind", "video")])
        .inc_by(c.3 as i64 - v0 as i64);
    m.worker_participants.get_or_create(worker).set(c.1 as i64);
    e.census = c;
}

async fn tcp_writer(mut w: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<BytesMut>) {
    while let Some(p) = rx.recv().await {
        let Ok(len) = u16::try_from(p.len()) else {
            continue;
        };
        let mut frame = Vec::with_capacity(p.len() + 2);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&p);
        if w.write_all(&frame).await.is_err() {
            break;
        }
    }
}

async fn tcp_reader(
    mut r: tokio::net::tcp::OwnedReadHalf,
    remote: SocketAddr,
    tx: mpsc::Sender<(SocketAddr, Option<Vec<u8>>)>,
) {
    while let Ok(f) = read_frame(&mut r).await {
        if tx.send((remote, Some(f))).await.is_err() {
            return;
        }
    }
    let _ = tx.send((remote, None)).await;
}

/// Reads one RFC 4571 frame (16-bit length, then that many bytes).
async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    let mut f = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut f).await?;
    Ok(f)
}

/// Accepts ICE-TCP streams and hands each to the worker its first STUN request names, within
/// the [`IceTcpLimits`]: a connection beyond the pending caps is closed at once; one whose
/// first frame does not come before its deadline is closed.
pub async fn accept_ice_tcp(
    listener: TcpListener,
    workers: Vec<mpsc::Sender<WorkerCmd>>,
    limits: Arc<IceTcpLimits>,
    metrics: SfuMetrics,
    shutdown: CancellationToken,
) {
    loop {
        let (mut stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let Ok(pending) = limits.try_acquire(remote.ip()) else {
            // Refused (counted): dropping the stream closes it.
            continue;
        };
        let deadline = Instant::now() + limits.handshake_timeout;
        let workers = workers.clone();
        let metrics = metrics.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let first =
                match tokio::time::timeout_at(deadline.into(), read_frame(&mut stream)).await {
                    Ok(Ok(f)) => f,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        limits.count_close("handshake_timeout");
                        return;
                    }
                };
            let w = stun_local_ufrag(&first).and_then(worker_of_ufrag);
            match w.and_then(|i| workers.get(i)) {
                Some(tx) => {
                    let _ = tx
                        .send(WorkerCmd::Tcp {
                            stream,
                            remote,
                            first,
                            pending,
                            deadline,
                        })
                        .await;
                }
                None => {
                    metrics
                        .bad_input
                        .get_or_create(&[("kind", "unroutable")])
                        .inc();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ufrag_names_its_worker() {
        assert_eq!(
            worker_of_ufrag(&format!("{}abc", ufrag_prefix(12))),
            Some(12)
        );
        assert_eq!(worker_of_ufrag("zzz"), None);
        assert_eq!(worker_of_ufrag("wx"), None);
    }

    #[test]
    fn placement_keeps_a_room_on_one_worker_and_balances_new_ones() {
        let p = Placement::default();
        assert_eq!(p.acquire("a", 2), 0);
        assert_eq!(p.acquire("a", 2), 0);
        assert_eq!(p.acquire("b", 2), 1);
        assert_eq!(p.load(), 3);
        p.release("a");
        p.release("a");
        assert_eq!(p.load(), 1);
        assert_eq!(p.acquire("c", 2), 0);
    }
}
