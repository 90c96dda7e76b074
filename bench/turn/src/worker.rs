//! Traffic workers: plain OS threads that, every tick (default 100 µs, finer than tokio's 1 ms
//! timer), send the probes the schedule says are due, spread evenly over their flows, then read
//! whatever has arrived on their sockets (one non-blocking epoll_wait per tick, no wake-up per
//! datagram). Latency uses the kernel's receive timestamp, so it does not depend on when the
//! worker gets round to reading.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::stats::Window;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::sync::{mpsc, oneshot};

use crate::net::{self, DrainEnd, FrameReader, ServerSocket};
use crate::stats::{FlowReceiver, ReceiveStats, SendStats};
use crate::wire::{self, FrameKind, Probe, CHANNEL_DATA_HEADER_BYTES};

/// How far behind schedule a pacer may fall before it skips ahead (and counts the skip).
const MAX_LAG: Duration = Duration::from_millis(50);

/// How many probes are due: a running schedule of `rate_pps` from time zero. Pure.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate_pps: f64,
    scheduled: u64,
    max_burst: u64,
}

impl Schedule {
    /// A schedule of `rate_pps` probes per second.
    pub fn new(rate_pps: f64) -> Self {
        Self {
            rate_pps,
            scheduled: 0,
            max_burst: ((rate_pps * MAX_LAG.as_secs_f64()) as u64).max(1),
        }
    }

    /// Probes to send now, `elapsed` after the start, and probes skipped because more than
    /// [`MAX_LAG`] worth were overdue.
    pub fn due(&mut self, elapsed: Duration) -> (u64, u64) {
        let target = (self.rate_pps * elapsed.as_secs_f64()) as u64;
        let due = target.saturating_sub(self.scheduled);
        let skipped = due.saturating_sub(self.max_burst);
        self.scheduled = self.scheduled.max(target);
        (due - skipped, skipped)
    }
}

/// Spreads `due` probes over `flows` flows, starting the remainder at flow `first`; returns
/// the per-flow counts and the flow to start the next remainder at. Pure.
pub fn spread(due: u64, flows: usize, first: usize) -> (Vec<u64>, usize) {
    let n = flows as u64;
    let (each, extra) = (due / n, (due % n) as usize);
    let counts = (0..flows)
        .map(|i| each + u64::from((i + flows - first) % flows < extra))
        .collect();
    (counts, (first + extra) % flows)
}

/// One allocation's traffic: its socket, a prebuilt ChannelData frame, its probe counters.
pub struct Flow {
    /// Allocation index (the probe flow id).
    pub index: usize,
    /// The connection.
    pub socket: Arc<ServerSocket>,
    /// STUN responses go here (upkeep transactions during the run).
    pub responses: mpsc::Sender<Vec<u8>>,
    /// Counts the partner's probes.
    pub receiver: FlowReceiver,
    frame: Vec<u8>,
    /// Bytes before the probe in `frame`: the ChannelData header, or 0 for a peer's raw payload.
    header_bytes: usize,
    seq: u64,
    reader: FrameReader,
    closed: bool,
}

impl Flow {
    /// A flow sending `payload_bytes` probes on `channel`.
    pub fn new(
        index: usize,
        socket: Arc<ServerSocket>,
        responses: mpsc::Sender<Vec<u8>>,
        receiver: FlowReceiver,
        channel: u16,
        payload_bytes: u16,
    ) -> Self {
        Self {
            index,
            frame: wire::channel_data_frame(channel, payload_bytes, socket.is_stream()),
            header_bytes: CHANNEL_DATA_HEADER_BYTES,
            reader: FrameReader::new(socket.clone()),
            socket,
            responses,
            receiver,
            seq: 0,
            closed: false,
        }
    }

    /// A peer's flow (`--peers generator`): `payload_bytes` probes as plain UDP payloads to the
    /// relayed transport address `socket` is connected to, and plain payloads back.
    pub fn peer(
        index: usize,
        socket: Arc<ServerSocket>,
        receiver: FlowReceiver,
        payload_bytes: u16,
    ) -> Self {
        // Nothing answers a peer's socket with STUN: a queue nobody reads, so anything that
        // is not a probe counts as unexpected.
        let (responses, _) = mpsc::channel(1);
        Self {
            index,
            frame: vec![0; usize::from(payload_bytes)],
            header_bytes: 0,
            reader: FrameReader::new(socket.clone()),
            socket,
            responses,
            receiver,
            seq: 0,
            closed: false,
        }
    }
}

/// When to send and read. Send times and the window are wall-clock ns ([`net::realtime_ns`]);
/// the schedule runs on the monotonic clock from `start`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Traffic start.
    pub start: Instant,
    /// Sending stops at this instant (the window's end).
    pub stop_sending: Instant,
    /// Reading stops at this instant (after a drain period).
    pub stop_reading: Instant,
    /// Measurement window (wall clock).
    pub window: Window,
    /// Pacing tick.
    pub tick: Duration,
}

/// What a worker hands back.
pub struct WorkerResult {
    /// Sending counters.
    pub sent: SendStats,
    /// Receiving counters, per flow.
    pub received: Vec<ReceiveStats>,
}

/// Starts a worker thread for `flows` at `rate_pps` in total; its counters arrive on the
/// returned channel when reading has stopped.
pub fn spawn(
    flows: Vec<Flow>,
    rate_pps: f64,
    timing: Timing,
) -> io::Result<oneshot::Receiver<WorkerResult>> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    for (i, f) in flows.iter().enumerate() {
        epoll.add(&*f.socket, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))?;
    }
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("turn-bench-worker".into())
        .spawn(move || {
            let _ = tx.send(work(flows, epoll, rate_pps, timing));
        })?;
    Ok(rx)
}

fn work(mut flows: Vec<Flow>, epoll: Epoll, rate_pps: f64, t: Timing) -> WorkerResult {
    let mut sent = SendStats::default();
    let mut schedule = Schedule::new(rate_pps);
    let mut next_flow = 0;
    let mut events = vec![EpollEvent::empty(); flows.len().max(1)];
    let mut next_tick = t.start;
    loop {
        let now = Instant::now();
        if now >= t.stop_reading {
            break;
        }
        if now < t.stop_sending {
            let (due, skipped) = schedule.due(now.saturating_duration_since(t.start));
            sent.lagged += skipped;
            let (counts, next) = spread(due, flows.len(), next_flow);
            next_flow = next;
            for (flow, count) in flows.iter_mut().zip(counts) {
                if count > 0 && !flow.closed {
                    send_burst(flow, count, t.window, &mut sent);
                }
            }
        }
        receive(&mut flows, &epoll, &mut events, t.window);
        next_tick += t.tick;
        let now = Instant::now();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        } else {
            next_tick = now;
        }
    }
    WorkerResult {
        sent,
        received: flows.into_iter().map(|f| f.receiver.stats).collect(),
    }
}

/// Sends `count` probes on one flow: datagram by datagram over UDP, one write over TCP.
fn send_burst(f: &mut Flow, count: u64, window: Window, stats: &mut SendStats) {
    for _ in 0..count {
        let sent_ns = net::realtime_ns();
        Probe {
            flow: f.index as u32,
            seq: f.seq,
            sent_ns,
        }
        .write(&mut f.frame[f.header_bytes..]);
        f.seq += 1;
        match f.socket.queue(&f.frame) {
            Ok(()) => {
                stats.sent_total += 1;
                stats.sent += u64::from(window.contains(sent_ns));
            }
            Err(_) => stats.errors += 1,
        }
    }
    if f.socket.flush().is_err() {
        f.closed = true;
    }
}

/// Reads every socket that has something, without waiting.
fn receive(flows: &mut [Flow], epoll: &Epoll, events: &mut [EpollEvent], window: Window) {
    let ready = epoll.wait(events, EpollTimeout::ZERO).unwrap_or(0);
    for ev in &events[..ready] {
        let Some(f) = flows.get_mut(ev.data() as usize) else {
            continue;
        };
        let (receiver, responses, raw) = (&mut f.receiver, &f.responses, f.header_bytes == 0);
        let end = f.reader.drain(|frame, kernel_ns| {
            let Some(&first) = frame.first() else {
                return;
            };
            if raw {
                let now_ns = kernel_ns.unwrap_or_else(net::realtime_ns);
                receiver.handle_payload(frame, now_ns, Some(window));
                return;
            }
            match wire::classify(first) {
                Ok(FrameKind::ChannelData) => {
                    let now_ns = kernel_ns.unwrap_or_else(net::realtime_ns);
                    receiver.handle_channel_data(frame, now_ns, Some(window));
                }
                Ok(FrameKind::Stun) => {
                    if responses.try_send(frame.to_vec()).is_err() {
                        receiver.stats.other += 1;
                    }
                }
                Err(_) => receiver.stats.other += 1,
            }
        });
        if end == DrainEnd::Closed && !f.closed {
            f.closed = true;
            let _ = epoll.delete(&*f.socket);
        }
    }
    // TCP: push out what the kernel did not take during sending.
    for f in flows.iter().filter(|f| !f.closed) {
        let _ = f.socket.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_follows_elapsed_time() {
        let mut s = Schedule::new(10_000.0);
        assert_eq!(s.due(Duration::ZERO), (0, 0));
        assert_eq!(s.due(Duration::from_micros(100)), (1, 0));
        assert_eq!(s.due(Duration::from_micros(1100)), (10, 0));
        assert_eq!(s.due(Duration::from_micros(1100)), (0, 0));
        // 1 s late: at most 50 ms worth (500) are sent, the rest is skipped.
        assert_eq!(s.due(Duration::from_micros(1_001_100)), (500, 9_500));
        assert_eq!(s.due(Duration::from_micros(1_001_200)), (1, 0));
    }

    #[test]
    fn spread_is_even_and_rotates_the_remainder() {
        assert_eq!(spread(7, 3, 0), (vec![3, 2, 2], 1));
        assert_eq!(spread(7, 3, 1), (vec![2, 3, 2], 2));
        assert_eq!(spread(2, 3, 2), (vec![1, 0, 1], 1));
        assert_eq!(spread(0, 4, 3), (vec![0, 0, 0, 0], 3));
        let mut next = 0;
        let mut total = vec![0; 5];
        for _ in 0..5 {
            let (c, n) = spread(1, 5, next);
            next = n;
            total.iter_mut().zip(c).for_each(|(t, c)| *t += c);
        }
        assert_eq!(total, vec![1; 5]);
    }
}
