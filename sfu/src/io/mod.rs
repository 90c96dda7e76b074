//! The thin I/O around [`crate::proto::worker::Worker`]: one thread with a current-thread tokio
//! runtime per worker, each owning one UDP socket (port = base + index), its ICE-TCP streams and
//! its rooms; the ICE-TCP acceptor hands each stream to the worker named by the STUN USERNAME's
//! ufrag prefix; the signaling links (axum WebSocket) send commands to the room's worker.

pub mod link;

use crate::metrics::SfuMetrics;
use crate::proto::demux::{stun_local_ufrag, Proto};
use crate::proto::worker::{JoinError, Worker, WorkerConfig};
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

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
    },
}

/// Capacity of each worker's command queue and each link's outbound queue.
pub const QUEUE: usize = 1024;
/// Frames queued per ICE-TCP stream before drops.
const TCP_QUEUE: usize = 512;
/// Datagrams read per wake-up before the worker services its other inputs.
const BATCH: usize = 64;

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
    let handle = std::thread::Builder::new()
        .name(format!("sfu-worker-{index}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {index}: runtime: {e}");
                    return;
                }
            };
            rt.block_on(run_worker(index, cfg, socket, rx, metrics, shutdown));
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
    layer_switches: u64,
    bad_packets: u64,
    bad_sdp: u64,
    bad_messages: u64,
    unroutable: u64,
    write_errors: u64,
    data_messages: u64,
    speaker_changes: u64,
    ice_timeouts: u64,
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
    let mut core = Worker::new(cfg);
    let mut links: HashMap<(String, String), (u64, mpsc::Sender<String>)> = HashMap::new();
    let mut tcp_out: HashMap<SocketAddr, mpsc::Sender<BytesMut>> = HashMap::new();
    let (tcp_in_tx, mut tcp_in) = mpsc::channel::<(SocketAddr, Option<Vec<u8>>)>(QUEUE);
    let mut buf = vec![0u8; 2048];
    let mut exported = Exported {
        forwarded_packets: 0,
        forwarded_bytes: 0,
        nack: 0,
        pli_received: 0,
        pli_sent: 0,
        retransmitted: 0,
        layer_switches: 0,
        bad_packets: 0,
        bad_sdp: 0,
        bad_messages: 0,
        unroutable: 0,
        write_errors: 0,
        data_messages: 0,
        speaker_changes: 0,
        ice_timeouts: 0,
        census: (0, 0, 0, 0),
    };
    let worker_label = [("worker", index.to_string())];
    let mut next_export = Instant::now();
    loop {
        let deadline = core
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = udp.recv_from(&mut buf) => {
                let busy = Instant::now();
                if let Ok((n, src)) = r {
                    core.handle_datagram(busy, Proto::Udp, src, &buf[..n]);
                    for _ in 1..BATCH {
                        match udp.try_recv_from(&mut buf) {
                            Ok((n, src)) => core.handle_datagram(Instant::now(), Proto::Udp, src, &buf[..n]),
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
                    WorkerCmd::Tcp { stream, remote, first } => {
                        let (tx, rx) = mpsc::channel(TCP_QUEUE);
                        tcp_out.insert(remote, tx);
                        let (read, write) = stream.into_split();
                        tokio::spawn(tcp_writer(write, rx));
                        tokio::spawn(tcp_reader(read, remote, tcp_in_tx.clone()));
                        core.handle_datagram(now, Proto::Tcp, remote, &first);
                    }
                }
                metrics.worker_busy.get_or_create(&worker_label).inc_by(now.elapsed().as_secs_f64());
            }
            Some((remote, frame)) = tcp_in.recv() => {
                match frame {
                    Some(f) => core.handle_datagram(Instant::now(), Proto::Tcp, remote, &f),
                    None => { tcp_out.remove(&remote); }
                }
            }
            _ = sleep => {}
        }
        let now = Instant::now();
        if deadline <= now {
            core.handle_timeout(now);
        }
        while let Some(t) = core.poll_transmit() {
            match t.proto {
                Proto::Udp => {
                    let _ = udp.try_send_to(&t.payload, t.remote);
                }
                Proto::Tcp => {
                    if let Some(tx) = tcp_out.get(&t.remote) {
                        let _ = tx.try_send(t.payload);
                    }
                }
            }
        }
        while let Some(s) = core.poll_signal() {
            if let Some((_, tx)) = links.get(&(s.room, s.participant)) {
                let _ = tx.try_send(s.msg.to_string());
            }
        }
        if now >= next_export {
            next_export = now + Duration::from_millis(250);
            export(&mut core, &mut exported, &metrics, &worker_label);
        }
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
        ("sdp", s.bad_sdp, &mut e.bad_sdp),
        ("message", s.bad_messages, &mut e.bad_messages),
        ("unroutable", s.unroutable, &mut e.unroutable),
        ("write", s.write_errors, &mut e.write_errors),
    ] {
        m.bad_input
            .get_or_create(&[("kind", kind)])
            .inc_by(delta(total, seen));
    }
    m.data_messages
        .inc_by(delta(s.data_messages, &mut e.data_messages));
    m.speaker_changes
        .inc_by(delta(s.speaker_changes, &mut e.speaker_changes));
    m.ice_timeouts
        .inc_by(delta(s.ice_timeouts, &mut e.ice_timeouts));
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

/// Accepts ICE-TCP streams and hands each to the worker its first STUN request names.
pub async fn accept_ice_tcp(
    listener: TcpListener,
    workers: Vec<mpsc::Sender<WorkerCmd>>,
    metrics: SfuMetrics,
    shutdown: CancellationToken,
) {
    loop {
        let (mut stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let workers = workers.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let first =
                match tokio::time::timeout(Duration::from_secs(5), read_frame(&mut stream)).await {
                    Ok(Ok(f)) => f,
                    _ => return,
                };
            let w = stun_local_ufrag(&first).and_then(worker_of_ufrag);
            match w.and_then(|i| workers.get(i)) {
                Some(tx) => {
                    let _ = tx
                        .send(WorkerCmd::Tcp {
                            stream,
                            remote,
                            first,
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
