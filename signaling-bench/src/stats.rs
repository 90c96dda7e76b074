//! Counters and latency histograms of a run. No I/O, no clock.

use std::collections::BTreeMap;

/// Values below this are stored exactly (one bucket per microsecond).
const LINEAR_BUCKETS: u64 = 1024;
/// Above [`LINEAR_BUCKETS`], each power of two is cut into this many buckets (≤ 0.2% error).
const SUB_BUCKETS: u64 = 512;
const SUB_BUCKET_BITS: u32 = 9;
const BUCKETS: usize = (LINEAR_BUCKETS + (64 - 10) * SUB_BUCKETS) as usize;

/// Latency histogram in microseconds: exact below 1024 µs, then 512 buckets per power of two
/// (the same as turn-bench's; 230 KB each, so there is one per figure, not one per client).
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    count: u64,
    sum_us: u128,
    min_us: u64,
    max_us: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            count: 0,
            sum_us: 0,
            min_us: u64::MAX,
            max_us: 0,
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR_BUCKETS {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros(); // >= 10
    let shift = msb - SUB_BUCKET_BITS; // >= 1
    let top = us >> shift; // in [512, 1024)
    (LINEAR_BUCKETS + (shift as u64 - 1) * SUB_BUCKETS + (top - SUB_BUCKETS)) as usize
}

/// Smallest value that falls into bucket `index`.
fn bucket_floor(index: usize) -> u64 {
    let i = index as u64;
    if i < LINEAR_BUCKETS {
        return i;
    }
    let j = i - LINEAR_BUCKETS;
    let shift = j / SUB_BUCKETS + 1;
    let top = j % SUB_BUCKETS + SUB_BUCKETS;
    top << shift
}

impl LatencyHistogram {
    /// Records one sample.
    pub fn record(&mut self, us: u64) {
        self.counts[bucket_of(us)] += 1;
        self.count += 1;
        self.sum_us += us as u128;
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// The value at quantile `q` (0.0..=1.0): the lower edge of the bucket holding the
    /// ceil(q·count)-th sample, clamped to the observed min/max. None when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_floor(i).clamp(self.min_us, self.max_us));
            }
        }
        Some(self.max_us)
    }

    /// Mean in microseconds, None when empty.
    pub fn mean_us(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_us as f64 / self.count as f64)
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Largest sample, None when empty.
    pub fn max_us(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max_us)
    }
}

/// Half-open measurement window [start, end) in nanoseconds since the run's epoch; a message
/// counts if it was *sent* inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First counted send time.
    pub start_ns: u64,
    /// First send time no longer counted.
    pub end_ns: u64,
}

impl Window {
    /// Whether a message sent at `sent_ns` is counted.
    pub fn contains(&self, sent_ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&sent_ns)
    }
}

/// Everything the clients count, merged into one place.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// WebSocket handshakes that succeeded.
    pub opened: u64,
    /// Connections that received `joined`.
    pub joined: u64,
    /// Clients that never got in, by reason (`http_401`, `ws_handshake`, `join_error_4009`...).
    pub failed: BTreeMap<String, u64>,
    /// Joined connections that ended before the run did.
    pub dropped: u64,
    /// Close codes of dropped connections (1006 = closed without a close frame).
    pub drop_close_codes: BTreeMap<u16, u64>,
    /// `error` frames received, by code.
    pub errors: BTreeMap<u16, u64>,
    /// `leave` answered by `left` or a close at the end of the run.
    pub left_cleanly: u64,

    /// Steady messages sent inside the window.
    pub steady_sent: u64,
    /// Steady messages sent in total (window or not).
    pub steady_sent_total: u64,
    /// Steady messages sent inside the window and received.
    pub steady_received: u64,
    /// Steady messages received that were sent outside the window.
    pub steady_received_outside: u64,
    /// Steady sends skipped because the client fell more than a second behind its schedule.
    pub steady_lagged: u64,
    /// Steady sends skipped because the client had no peer.
    pub steady_no_peer: u64,
    /// Relay latency of window steady messages (send → receive, µs).
    pub latency: LatencyHistogram,

    /// Negotiation messages sent (offers, answers, candidates, end-of-candidates).
    pub burst_sent: u64,
    /// Negotiation messages received.
    pub burst_received: u64,
    /// Relay latency of negotiation messages that carry a probe (all but end-of-candidates).
    pub burst_latency: LatencyHistogram,
    /// Clients whose negotiation with every peer finished (answer/offer and end-of-candidates).
    pub negotiated: u64,
    /// Time from "room full" (as this client saw it) to its negotiation finishing.
    pub negotiation_time: LatencyHistogram,

    /// HTTP `join` exchange (not counting the wait for a free pooled connection).
    pub http_join_time: LatencyHistogram,
    /// WebSocket connect + handshake + `join` → `joined`.
    pub ws_join_time: LatencyHistogram,
    /// `ping` → `pong` round trip.
    pub ping_rtt: LatencyHistogram,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,

    /// Relayed messages whose probe names another sender than `from`, or from outside the room.
    pub misrouted: u64,
    /// Relayed offers/answers/candidates without a readable probe.
    pub no_probe: u64,
    /// Relayed messages from a participant this client did not know.
    pub unknown_sender: u64,
    /// Senders of such messages announced later by `participant-joined` (the relay overtook
    /// the announcement); the others were never announced.
    pub announced_late: u64,
    /// `participant-joined` for a participant already listed in this client's `joined`.
    pub announced_twice: u64,
    /// Offers received from a peer this client also offered to (both thought they came later).
    pub glare: u64,
    /// Frames that did not parse as a server frame.
    pub unparsable: u64,
    /// Frames of an unexpected type (`left` outside the end, unknown types, binary).
    pub unexpected: u64,
    /// `participant-left` received (the end of the run included, as clients leave in turn).
    pub participant_left: u64,
    /// `room-closed` received.
    pub room_closed: u64,
    /// Text bytes sent and received over the WebSockets.
    pub bytes_sent: u64,
    /// Text bytes received.
    pub bytes_received: u64,
}

impl Stats {
    /// Counts a client that did not get in.
    pub fn fail(&mut self, reason: impl Into<String>) {
        *self.failed.entry(reason.into()).or_default() += 1;
    }

    /// Number of clients that did not get in.
    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in (0..5000).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(us);
            assert!(b >= last, "bucket order at {us}");
            assert!(b < BUCKETS);
            let floor = bucket_floor(b);
            assert!(floor <= us, "{floor} <= {us}");
            assert!((us - floor) as f64 <= us as f64 / 500.0 + 1.0);
            last = b;
        }
    }

    #[test]
    fn quantiles() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.quantile_us(0.5), Some(500));
        assert_eq!(h.quantile_us(0.99), Some(990));
        assert_eq!(h.max_us(), Some(1000));
        h.record(1_000_000);
        let p100 = h.quantile_us(1.0).unwrap();
        assert!((998_000..=1_000_000).contains(&p100), "{p100}");
        assert_eq!(h.count(), 1001);
    }

    #[test]
    fn window_is_half_open() {
        let w = Window {
            start_ns: 10,
            end_ns: 20,
        };
        assert!(!w.contains(9) && w.contains(10) && !w.contains(20));
    }

    #[test]
    fn failures_by_reason() {
        let mut s = Stats::default();
        s.fail("http_401");
        s.fail("http_401");
        s.fail("ws_handshake");
        assert_eq!(s.failed_total(), 3);
        assert_eq!(s.failed["http_401"], 2);
    }
}
