//! Pacing: plain OS threads that send probes on schedule. Every tick (default 100 µs, finer
//! than tokio's 1 ms timer) a thread sends what the schedule says is due, spread evenly over
//! its flows, so bursts stay small and the measured latency is the relay's, not the pacer's.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::client::SendHandle;
use crate::stats::{SendStats, Window};
use crate::wire::{Probe, CHANNEL_DATA_HEADER_BYTES};

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

/// One sending flow: its socket, a prebuilt ChannelData frame, and its next sequence number.
pub struct FlowTx {
    /// Where to send.
    pub sender: SendHandle,
    /// ChannelData frame; the probe is rewritten into it for each send.
    pub frame: Vec<u8>,
    /// Flow id written into each probe.
    pub flow: u32,
    /// Next sequence number.
    pub seq: u64,
}

/// When to send: from `start` (since `epoch`) until the window ends.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The run's clock origin.
    pub epoch: Instant,
    /// Traffic start, since `epoch`.
    pub start: Duration,
    /// Measurement window; sending stops at its end.
    pub window: Window,
    /// Pacing tick.
    pub tick: Duration,
}

/// Starts a pacing thread for `flows` at `rate_pps`; its counters arrive on the returned
/// channel when the window has ended.
pub fn spawn(
    flows: Vec<FlowTx>,
    rate_pps: f64,
    timing: Timing,
) -> std::io::Result<oneshot::Receiver<SendStats>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("turn-bench-pacer".into())
        .spawn(move || {
            let _ = tx.send(pace(flows, rate_pps, timing));
        })?;
    Ok(rx)
}

fn pace(mut flows: Vec<FlowTx>, rate_pps: f64, t: Timing) -> SendStats {
    let mut stats = SendStats::default();
    let mut schedule = Schedule::new(rate_pps);
    let mut next_flow = 0;
    let mut batch = Vec::new();
    let end = Duration::from_nanos(t.window.end_ns);
    let mut next_tick = t.start;
    loop {
        let now = t.epoch.elapsed();
        if now >= end {
            break;
        }
        let (due, skipped) = schedule.due(now.saturating_sub(t.start));
        stats.lagged += skipped;
        let (counts, next) = spread(due, flows.len(), next_flow);
        next_flow = next;
        for (flow, count) in flows.iter_mut().zip(counts) {
            if count > 0 {
                send_burst(flow, count, &t, &mut stats, &mut batch);
            }
        }
        next_tick += t.tick;
        let now = t.epoch.elapsed();
        if next_tick > now {
            std::thread::sleep(next_tick - now);
        } else {
            next_tick = now;
        }
    }
    stats
}

/// Sends `count` probes on one flow: datagram by datagram over UDP, one write over TCP.
fn send_burst(f: &mut FlowTx, count: u64, t: &Timing, stats: &mut SendStats, batch: &mut Vec<u8>) {
    let stream = f.sender.is_stream();
    batch.clear();
    let mut in_window = 0;
    for _ in 0..count {
        let sent_ns = t.epoch.elapsed().as_nanos() as u64;
        Probe {
            flow: f.flow,
            seq: f.seq,
            sent_ns,
        }
        .write(&mut f.frame[CHANNEL_DATA_HEADER_BYTES..]);
        f.seq += 1;
        let counted = u64::from(t.window.contains(sent_ns));
        if stream {
            batch.extend_from_slice(&f.frame);
            in_window += counted;
        } else {
            match f.sender.send_blocking(&f.frame) {
                Ok(()) => {
                    stats.sent_total += 1;
                    stats.sent += counted;
                }
                Err(_) => stats.errors += 1,
            }
        }
    }
    if stream {
        match f.sender.send_blocking(batch) {
            Ok(()) => {
                stats.sent_total += count;
                stats.sent += in_window;
            }
            Err(_) => stats.errors += count,
        }
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
