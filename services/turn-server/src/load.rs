//! The node's load, for autoscaling (issue 15): `turn_load_ratio`, the fraction of this node's
//! capacity in use, in [0, 1]:
//!
//! ```text
//! turn_load_ratio = min(1, max(allocations / capacity_allocations,
//!                              relayed_bps / capacity_relay_bps))
//! ```
//!
//! `allocations` is the live allocations of every worker; `relayed_bps` the application payload
//! relayed (both directions added, UDP, TCP allocations and the XDP fast path; what the relay
//! sends out, and about what it receives), in bits per second over the last [`RATE_WINDOW`],
//! read from the same counters as `turn_relayed_bytes_total` (the workers fold their own
//! counters into them once per batch: nothing is added per packet). 1 means at or over
//! capacity in either dimension.
//!
//! Plain computations with time passed in; the task that samples every [`SAMPLE_PERIOD`] lives
//! in [`crate::run`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back the relayed bit rate looks.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How often the load gauges are updated.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// Samples a [`RateWindow`] keeps at most, whatever the sampling period.
const MAX_SAMPLES: usize = 1024;

/// A byte counter's rate over a sliding window of samples.
#[derive(Debug, Clone)]
pub struct RateWindow {
    window: Duration,
    /// (when, counter value), oldest first; the first is the newest sample at least `window`
    /// old once there is one.
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    /// An empty window `window` long.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Records the counter's value `bytes` at `now` and returns its rate in bits per second
    /// since the oldest sample kept: the newest one at least `window` before `now` when there
    /// is one (so the rate covers the whole window), else the first one (so a node that just
    /// started reports what it saw so far). 0 with a single sample. A counter that went down
    /// counts as unchanged.
    pub fn sample(&mut self, now: Instant, bytes: u64) -> f64 {
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2
            && now.saturating_duration_since(self.samples[1].0) >= self.window
        {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        let Some(&(t0, b0)) = self.samples.front() else {
            return 0.0;
        };
        let secs = now.saturating_duration_since(t0).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        bytes.saturating_sub(b0) as f64 * 8.0 / secs
    }
}

/// `max(allocations / capacity_allocations, relayed_bps / capacity_relay_bps)` limited to
/// [0, 1]; a capacity of 0 counts as 1.
pub fn load_ratio(
    allocations: u64,
    capacity_allocations: u64,
    relayed_bps: f64,
    capacity_relay_bps: u64,
) -> f64 {
    let by_allocations = allocations as f64 / capacity_allocations.max(1) as f64;
    let by_rate = relayed_bps / capacity_relay_bps.max(1) as f64;
    let r = by_allocations.max(by_rate);
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_is_the_larger_share_and_stays_in_0_1() {
        assert_eq!(load_ratio(0, 100, 0.0, 1_000), 0.0);
        assert_eq!(load_ratio(25, 100, 100.0, 1_000), 0.25);
        assert_eq!(load_ratio(25, 100, 500.0, 1_000), 0.5);
        assert_eq!(load_ratio(100, 100, 0.0, 1_000), 1.0);
        assert_eq!(load_ratio(300, 100, 0.0, 1_000), 1.0, "over capacity");
        assert_eq!(load_ratio(0, 100, 5_000.0, 1_000), 1.0, "over capacity");
        assert_eq!(load_ratio(1, 0, 0.0, 0), 1.0, "a zero capacity counts as 1");
        assert_eq!(load_ratio(0, 1, f64::NAN, 1), 0.0);
        assert_eq!(load_ratio(0, 1, -5.0, 1), 0.0);
        assert_eq!(load_ratio(u64::MAX, 1, f64::INFINITY, 1), 1.0);
    }

    #[test]
    fn the_rate_covers_the_last_window_in_virtual_time() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut w = RateWindow::new(Duration::from_secs(10));
        assert_eq!(w.sample(at(0), 0), 0.0, "one sample: no rate");
        // 1000 bytes a second: 8000 bit/s, from the start on.
        for s in 1..=10 {
            assert_eq!(w.sample(at(s), 1000 * s), 8000.0, "t={s}");
        }
        // Then silence: the rate falls as the window slides, and is 0 once it has passed.
        assert_eq!(w.sample(at(15), 10_000), 4000.0);
        assert_eq!(w.sample(at(20), 10_000), 0.0);
        assert!(w.samples.len() <= 12, "{}", w.samples.len());
        // 10 kB more: the base is the newest sample at least 10 s old (t=10), so the rate is
        // over 11 s here.
        assert_eq!(w.sample(at(21), 20_000), 80_000.0 / 11.0);
        // A counter that went down (never for ours) gives no negative rate.
        assert_eq!(w.sample(at(22), 0), 0.0);
        // Many samples at one instant stay bounded.
        for _ in 0..5000 {
            let _ = w.sample(at(23), 0);
        }
        assert!(w.samples.len() <= MAX_SAMPLES);
    }
}
