//! A subscriber's bandwidth estimate, pure: the loss-based side from its RTCP receiver reports
//! (GCC's loss rule, RFC 3550 §6.4.2 fraction lost), combined with the delay-based estimate of
//! the stack's GCC (the lower wins), and the pacing of upward probes (a simulcast layer step
//! above the estimate, the only way the estimate learns that more is possible).
//!
//! No rtc types: the worker feeds in bytes sent, fractions lost and GCC's target, each with
//! `now`; decisions come out as numbers.

use std::time::{Duration, Instant};

/// Receiver-reported loss above which the estimate backs off (GCC's loss-based rule).
pub const HIGH_LOSS: f64 = 0.10;
/// Receiver-reported loss below which the estimate grows.
pub const LOW_LOSS: f64 = 0.02;
/// Longest wait between two probes (the interval doubles after each probe that caused loss).
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(32);
/// Hold an upward layer move at least this long after the last one (probing pace).
pub const UP_HOLD: Duration = Duration::from_secs(4);
/// A probed layer is kept this long once forwarded, whatever the estimate says (unless the
/// path shows loss or delay), so the estimate can measure it.
pub const PROBE_HOLD: Duration = Duration::from_secs(2);
/// Longest wait for the probed layer's keyframe before the probe counts as failed.
pub const PROBE_SWITCH_WAIT: Duration = Duration::from_secs(4);

/// An upward layer step above the estimate: held against the estimate until the layer has
/// been forwarded for [`PROBE_HOLD`] (the estimate learns the new rate only from what is sent),
/// unless loss or a delay backoff ends it first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probe {
    /// Layer index probed.
    pub layer: usize,
    /// When the probe was decided.
    pub started: Instant,
    /// When forwarding switched to `layer` (at its keyframe).
    pub reached: Option<Instant>,
}

impl Probe {
    /// Whether the probe still holds the layer at `now` (the path is clean): for
    /// [`PROBE_HOLD`] once the layer is forwarded, for [`PROBE_SWITCH_WAIT`] before.
    pub fn holds(&self, now: Instant) -> bool {
        match self.reached {
            Some(at) => now.saturating_duration_since(at) < PROBE_HOLD,
            None => now.saturating_duration_since(self.started) < PROBE_SWITCH_WAIT,
        }
    }
}

/// A loss-based bandwidth estimate from the subscriber's receiver reports, and the pacing of
/// upward layer probes (GCC in the stack supplies the delay-based side; the lower wins).
#[derive(Debug, Clone)]
pub struct LossEstimate {
    /// Smoothed fraction lost over the subscriber's downtracks, 0..1.
    loss: f64,
    /// Highest loss reported since the last tick.
    fresh: Option<f64>,
    /// Bytes forwarded to the subscriber since the last tick.
    bytes: u64,
    /// The estimate, bits per second.
    bps: f64,
    /// Probe interval: doubles after a probe that caused loss, back to the minimum after one
    /// that held.
    probe_interval: Duration,
    /// Last time loss went above the high threshold.
    last_loss: Option<Instant>,
    /// When the current probe (an upward layer step above the estimate) started.
    probe_at: Option<Instant>,
    /// The rate the path delivered with no loss and no delay backoff since the last congestion
    /// signal, bits per second (0 after loss or a GCC backoff). GCC's delay-based target climbs
    /// 8 %/s from its start, so on its own it takes ~17 s to allow a 720p layer; a probe that
    /// held proves the rate at once.
    proven_bps: f64,
    /// GCC's target at the last tick, to see it back off.
    last_gcc_bps: f64,
    /// Loss above the high threshold or a GCC backoff at the last tick.
    congested: bool,
}

impl LossEstimate {
    /// An estimate starting at `initial_bps` bits per second, no loss seen.
    pub fn new(initial_bps: f64) -> Self {
        Self {
            loss: 0.0,
            fresh: None,
            bytes: 0,
            bps: initial_bps,
            probe_interval: UP_HOLD,
            last_loss: None,
            probe_at: None,
            proven_bps: 0.0,
            last_gcc_bps: 0.0,
            congested: false,
        }
    }

    /// A receiver report block's fraction lost (RFC 3550 §6.4.1, /256) for one of the
    /// subscriber's downtracks; the highest since the last tick counts.
    pub fn on_fraction_lost(&mut self, fraction_lost: u8) {
        let f = f64::from(fraction_lost) / 256.0;
        self.fresh = Some(self.fresh.map_or(f, |x: f64| x.max(f)));
    }

    /// `bytes` of RTP were forwarded to the subscriber.
    pub fn on_sent(&mut self, bytes: u64) {
        self.bytes += bytes;
    }

    /// Once per tick, `elapsed_secs` after the last one: GCC's loss rule on the receiver
    /// reports (back off to what was delivered under heavy loss, grow 5 %/s without loss,
    /// between `min_bps` and `max_bps`), the proven rate, and the probe interval. `gcc_bps` is
    /// the delay-based estimate now.
    pub fn tick(
        &mut self,
        now: Instant,
        elapsed_secs: f64,
        gcc_bps: f64,
        min_bps: f64,
        max_bps: f64,
    ) {
        let sent_bps = self.bytes as f64 * 8.0 / elapsed_secs;
        self.bytes = 0;
        if let Some(f) = self.fresh.take() {
            self.loss = 0.5 * self.loss + 0.5 * f;
        }
        // GCC backs off to 85 % of the received rate on delay overuse; its increases are
        // at most 8 %/s.
        let backed_off = gcc_bps < self.last_gcc_bps * 0.95;
        self.last_gcc_bps = gcc_bps;
        self.congested = backed_off || self.loss > HIGH_LOSS;
        if self.congested {
            self.proven_bps = 0.0;
        } else if self.loss < LOW_LOSS {
            self.proven_bps = self.proven_bps.max(sent_bps).min(max_bps);
        }
        if self.loss > HIGH_LOSS {
            self.bps = (sent_bps * (1.0 - 0.5 * self.loss)).max(min_bps);
            if self
                .probe_at
                .is_some_and(|at| now.saturating_duration_since(at) < UP_HOLD * 2)
            {
                self.probe_interval = (self.probe_interval * 2).min(MAX_PROBE_INTERVAL);
            }
            self.probe_at = None;
            self.last_loss = Some(now);
            self.loss *= 0.5;
        } else if self.loss < LOW_LOSS {
            self.bps = (self.bps.max(sent_bps) * 1.05f64.powf(elapsed_secs)).min(max_bps);
            if self
                .probe_at
                .is_some_and(|at| now.saturating_duration_since(at) > UP_HOLD * 3)
            {
                self.probe_interval = UP_HOLD;
                self.probe_at = None;
            }
        }
    }

    /// The subscriber's estimate, bits per second: GCC's `gcc_bps`, raised to the proven rate,
    /// capped by the loss-based estimate.
    pub fn estimate_bps(&self, gcc_bps: f64) -> f64 {
        gcc_bps.max(self.proven_bps).min(self.bps)
    }

    /// No congestion signal at the last tick (a signal ends every probe of this subscriber).
    pub fn clean(&self) -> bool {
        !self.congested
    }

    /// Whether one downtrack may step above the estimate at `now`: no probe running, no loss
    /// for a probe interval, loss low.
    pub fn may_probe(&self, now: Instant) -> bool {
        self.probe_at.is_none()
            && self
                .last_loss
                .is_none_or(|at| now.saturating_duration_since(at) >= self.probe_interval)
            && self.loss < LOW_LOSS
    }

    /// A probe started at `now`.
    pub fn probe_started(&mut self, now: Instant) {
        self.probe_at = Some(now);
    }

    /// The loss-based estimate, bits per second.
    pub fn loss_bps(&self) -> f64 {
        self.bps
    }

    /// The smoothed fraction lost, 0..1.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// The wait after loss before the next probe.
    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    const MIN: f64 = 30_000.0;
    const MAX: f64 = 10_000_000.0;

    /// One tick of 1 s: (fraction lost reported /256, bytes sent, GCC now) -> (loss-based bps,
    /// estimate with GCC at 5 Mbit/s, clean).
    #[test]
    fn one_tick_backs_off_on_loss_and_grows_without() {
        type Row = (&'static str, Option<u8>, u64, f64, f64, f64, bool);
        let rows: &[Row] = &[
            // No loss, nothing sent: +5 % on the initial 1 Mbit/s; nothing proven, GCC capped.
            ("idle", None, 0, 1e6, 1_050_000.0, 1_050_000.0, true),
            // No loss, 2 Mbit/s sent: grows from what was sent; proven 2 Mbit/s.
            (
                "clean",
                Some(0),
                250_000,
                1e6,
                2_100_000.0,
                2_100_000.0,
                true,
            ),
            // 25 % lost (smoothed 12.5 %): back off to the sent rate less half the loss.
            (
                "lossy",
                Some(64),
                250_000,
                1e6,
                1_875_000.0,
                1_875_000.0,
                false,
            ),
            // Heavy loss with nothing sent: the floor.
            ("floor", Some(255), 0, 1e6, MIN, MIN, false),
            // 5 % lost (smoothed 2.5 %): between the thresholds, the estimate holds.
            ("hold", Some(13), 250_000, 1e6, 1e6, 1e6, true),
        ];
        let now = Instant::now();
        for &(name, lost, bytes, gcc, loss_bps, estimate, clean) in rows {
            let mut e = LossEstimate::new(1e6);
            if let Some(f) = lost {
                e.on_fraction_lost(f);
            }
            e.on_sent(bytes);
            e.tick(now, 1.0, gcc, MIN, MAX);
            assert!((e.loss_bps() - loss_bps).abs() < 1.0, "{name}: {e:?}");
            assert!(
                (e.estimate_bps(5e6) - estimate).abs() < 1.0,
                "{name}: {e:?}"
            );
            assert_eq!(e.clean(), clean, "{name}");
        }
    }

    #[test]
    fn the_highest_loss_of_a_tick_counts_and_a_gcc_backoff_is_congestion() {
        let now = Instant::now();
        let mut e = LossEstimate::new(1e6);
        e.on_fraction_lost(10);
        e.on_fraction_lost(128);
        e.on_fraction_lost(20);
        e.tick(now, 1.0, 1e6, MIN, MAX);
        // 0.5 * 0 + 0.5 * 0.5, then halved after the backoff.
        assert!((e.loss() - 0.125).abs() < 1e-9, "{e:?}");
        // GCC from 1 Mbit/s to 900 kbit/s (below 95 %): congested although loss is gone.
        let mut e = LossEstimate::new(1e6);
        e.tick(now, 1.0, 1e6, MIN, MAX);
        assert!(e.clean());
        e.tick(now + Duration::from_secs(1), 1.0, 0.9e6, MIN, MAX);
        assert!(!e.clean());
        e.tick(now + Duration::from_secs(2), 1.0, 0.9e6, MIN, MAX);
        assert!(e.clean());
    }

    /// Probe pacing: (seconds from the probe to heavy loss, or None) -> interval after.
    #[test]
    fn a_probe_that_caused_loss_doubles_the_interval_and_one_that_held_resets_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let rows: &[(&str, Option<u64>, Duration, bool)] = &[
            // Loss within 8 s of the probe: the probe caused it.
            ("caused", Some(3), s(16), false),
            // Loss 9 s after: not the probe's fault; the interval stays.
            ("late", Some(9), s(8), false),
            // No loss for 13 s: back to the minimum, and probing is allowed again.
            ("held", None, s(4), true),
        ];
        for &(name, loss_after, expected, may_probe) in rows {
            let mut e = LossEstimate::new(1e6);
            e.probe_interval = s(8);
            e.probe_started(t0);
            assert!(!e.may_probe(t0), "{name}: a probe is running");
            let at = t0 + s(loss_after.unwrap_or(13));
            if loss_after.is_some() {
                e.on_fraction_lost(255);
            }
            e.tick(at, 1.0, 1e6, MIN, MAX);
            assert_eq!(e.probe_interval(), expected, "{name}");
            assert_eq!(e.may_probe(at + s(1)), may_probe, "{name}");
        }
    }

    #[test]
    fn the_probe_interval_is_capped() {
        let t0 = Instant::now();
        let mut e = LossEstimate::new(1e6);
        for i in 0..10 {
            let at = t0 + Duration::from_secs(i * 10);
            e.probe_started(at);
            e.on_fraction_lost(255);
            e.tick(at + Duration::from_secs(1), 1.0, 1e6, MIN, MAX);
        }
        assert_eq!(e.probe_interval(), MAX_PROBE_INTERVAL);
    }

    /// (reached after s, now at s) -> holds.
    #[test]
    fn a_probe_holds_until_measured_or_given_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let rows: &[(Option<u64>, u64, bool)] = &[
            (None, 0, true),
            (None, 3_999, true),
            (None, 4_000, false),
            (Some(1_000), 2_999, true),
            (Some(1_000), 3_000, false),
            (Some(3_900), 5_000, true),
        ];
        for &(reached, now, holds) in rows {
            let p = Probe {
                layer: 1,
                started: t0,
                reached: reached.map(|r| t0 + ms(r)),
            };
            assert_eq!(p.holds(t0 + ms(now)), holds, "{reached:?} {now}");
        }
    }
}
