//! Simulcast layer choice, pure: per published layer its measured rate, per subscriber's
//! downtrack which layer it forwards and which it wants. No rtc types: the worker feeds in
//! packet sizes, keyframe flags, the subscriber's budget and `now`; decisions come out.
//!
//! Downward moves are immediate; upward moves go one step at a time at most every
//! [`UP_HOLD`]; a switch happens at a keyframe of the layer switched to. Layers are indexed
//! low to high (see [`rid_rank`]).

use crate::bwe::{Probe, UP_HOLD};
use std::time::{Duration, Instant};

/// Most simulcast layers a track may have (RIDs beyond are ignored).
pub const MAX_LAYERS: usize = 4;
/// The layer being forwarded stays while its rate is within this factor of the budget.
pub const STAY_MARGIN: f64 = 1.25;
/// A layer silent this long is paused (or gone): its rate is 0.
pub const PAUSED_AFTER: Duration = Duration::from_secs(2);
/// What one audio downtrack is assumed to take from the budget, bits per second.
pub const AUDIO_BPS: f64 = 40_000.0;

/// Order of simulcast layers by their conventional RIDs (low to high).
pub fn rid_rank(rid: &str) -> u8 {
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "hi" | "high" | "full" | "2" => 2,
        _ => 1,
    }
}

/// Bitrate assumed for layer `i` of `n` while not measured yet (paused), bits per second.
pub fn nominal_bps(i: usize, n: usize) -> f64 {
    match n - 1 - i {
        0 => 1_500_000.0,
        1 => 500_000.0,
        _ => 150_000.0,
    }
}

/// Height assumed for layer `i` of `n` while its keyframe size is unknown, pixels.
pub fn nominal_height(i: usize, n: usize) -> u32 {
    match n - 1 - i {
        0 => 720,
        1 => 360,
        _ => 180,
    }
}

/// The measured rate of one published layer.
#[derive(Debug, Clone, Default)]
pub struct LayerRate {
    /// Bytes since the last sample.
    bytes: u64,
    /// Smoothed bitrate, bits per second.
    bps: f64,
    /// The last smoothed bitrate seen while the layer was flowing (a paused layer measures 0).
    active_bps: f64,
    last_packet: Option<Instant>,
}

impl LayerRate {
    /// A packet of `bytes` (payload + RTP header) arrived at `now`.
    pub fn on_packet(&mut self, now: Instant, bytes: u64) {
        self.bytes += bytes;
        self.last_packet = Some(now);
    }

    /// Once per tick, `elapsed_secs` after the last one: the smoothed rate (0 once silent for
    /// [`PAUSED_AFTER`]); a layer that sent within the last `tick` also updates its active
    /// rate.
    pub fn sample(&mut self, now: Instant, elapsed_secs: f64, tick: Duration) {
        let bps = self.bytes as f64 * 8.0 / elapsed_secs;
        self.bps = if self.bps == 0.0 {
            bps
        } else {
            0.6 * self.bps + 0.4 * bps
        };
        self.bytes = 0;
        if self
            .last_packet
            .is_none_or(|at| now.saturating_duration_since(at) > PAUSED_AFTER)
        {
            self.bps = 0.0;
        } else if self
            .last_packet
            .is_some_and(|at| now.saturating_duration_since(at) < tick)
        {
            self.active_bps = self.bps;
        }
    }

    /// The smoothed rate now, bits per second.
    pub fn bps(&self) -> f64 {
        self.bps
    }

    /// The rate the layer costs when forwarded: the current rate, or the last one seen while
    /// it flowed, whichever is higher, bits per second.
    pub fn measured_bps(&self) -> f64 {
        self.bps.max(self.active_bps)
    }
}

/// What [`choose`] knows of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerView {
    /// [`LayerRate::measured_bps`].
    pub measured_bps: f64,
    /// Height from its last VP8 keyframe, pixels.
    pub height: Option<u16>,
}

/// The layer state of one downtrack (one subscriber, one simulcast track).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Selection {
    /// Layer being forwarded.
    pub current: Option<usize>,
    /// Layer wanted; switched to at its next keyframe.
    pub target: Option<usize>,
    /// When the last upward move was tried (probing without padding).
    pub last_up: Option<Instant>,
    /// The probe in progress on this downtrack, if any.
    pub probe: Option<Probe>,
}

/// What to do with one packet of a layer (see [`Selection::on_packet`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Not for this subscriber (another layer is forwarded).
    Skip,
    /// Forward it; `switched` when forwarding moved here from another layer.
    Forward {
        /// A layer switch happened at this packet.
        switched: bool,
    },
}

impl Selection {
    /// A packet of layer `layer` arrived (`keyframe`: it starts a keyframe). A single-layer
    /// track is always forwarded; otherwise the current layer is, and the target takes over
    /// at its keyframe; with nothing forwarded yet, any layer up to the target may start (the
    /// target may be paused at the publisher).
    pub fn on_packet(&mut self, layer: usize, keyframe: bool, single_layer: bool) -> Gate {
        if single_layer {
            self.current = Some(layer);
            self.target = Some(layer);
            return Gate::Forward { switched: false };
        }
        if self.target.is_none() {
            self.target = Some(0);
        }
        if self.current == Some(layer) {
            return Gate::Forward { switched: false };
        }
        let start = self.current.is_none() && self.target.is_some_and(|t| layer <= t);
        if (self.target == Some(layer) || start) && keyframe {
            let switched = self.current.is_some();
            self.current = Some(layer);
            Gate::Forward { switched }
        } else {
            Gate::Skip
        }
    }

    /// The layer a keyframe request from the subscriber is for: the one forwarded, else the
    /// one wanted, else the lowest.
    pub fn keyframe_layer(&self) -> usize {
        self.current.or(self.target).unwrap_or(0)
    }

    /// The target, while forwarding has not reached it yet.
    pub fn pending_switch(&self) -> Option<usize> {
        self.target.filter(|&t| self.current != Some(t))
    }
}

/// What one video downtrack may spend, bits per second: the subscriber's estimate `bwe_bps`
/// less [`AUDIO_BPS`] per audio downtrack, shared evenly by the video ones.
pub fn video_budget(bwe_bps: f64, videos: usize, audios: usize) -> f64 {
    ((bwe_bps - audios as f64 * AUDIO_BPS) / videos.max(1) as f64).max(0.0)
}

/// How the subscriber's path stands at this decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// What this downtrack may spend, bits per second ([`video_budget`]).
    pub bps: f64,
    /// No congestion signal at the last tick (a signal ends every probe).
    pub clean: bool,
    /// This downtrack may step above the budget now (one per subscriber at a time).
    pub may_probe: bool,
}

/// One decision of [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The new target, when it changed (a keyframe of it is wanted).
    pub new_target: Option<usize>,
    /// A probe started on this downtrack.
    pub probed: bool,
}

fn fits(max_height: Option<u32>, height: Option<u16>, i: usize, n: usize) -> bool {
    match max_height {
        Some(mh) => height.map_or(nominal_height(i, n), u32::from) <= mh,
        None => true,
    }
}

/// The highest layer that fits `budget` and `max_height` (the lowest always fits). A layer's
/// measured rate is unreliable around pauses and restarts: it never counts as cheaper than
/// half its nominal rate, except for the layer being forwarded, whose rate is what the
/// subscriber gets (an encoder ramps a new layer up over seconds). That layer stays while it
/// fits with a margin ([`STAY_MARGIN`]) and the path is clean: rates move with every keyframe.
pub fn best_layer(
    layers: &[LayerView],
    current: Option<usize>,
    max_height: Option<u32>,
    budget: f64,
    clean: bool,
) -> usize {
    let n = layers.len();
    let mut best = 0;
    for (i, l) in layers.iter().enumerate() {
        let measured = l.measured_bps;
        let forwarded = current == Some(i) && measured > 0.0;
        let cost = if forwarded {
            measured
        } else {
            measured.max(nominal_bps(i, n) * 0.5)
        };
        let allowance = if forwarded && clean {
            budget * STAY_MARGIN
        } else {
            budget
        };
        if i == 0 || (cost <= allowance && fits(max_height, l.height, i, n)) {
            best = i;
        }
    }
    best
}

/// Once per tick, one simulcast downtrack: moves its target toward [`best_layer`]: down at
/// once (unless a probe holds the layer), up one step at most every [`UP_HOLD`], and, when the
/// best layer is the target and `budget.may_probe`, one step above it as a probe.
pub fn choose(
    sel: &mut Selection,
    layers: &[LayerView],
    max_height: Option<u32>,
    budget: Budget,
    now: Instant,
) -> Step {
    let n = layers.len();
    let best = best_layer(layers, sel.current, max_height, budget.bps, budget.clean);
    let current = sel.target.unwrap_or(0);
    let paced = sel
        .last_up
        .is_none_or(|at| now.saturating_duration_since(at) >= UP_HOLD);
    let next_fits_height = layers
        .get(current + 1)
        .is_some_and(|l| fits(max_height, l.height, current + 1, n));
    if let Some(pr) = sel.probe.as_mut() {
        if pr.reached.is_none() && sel.current == Some(pr.layer) {
            pr.reached = Some(now);
        }
    }
    let current_fits_height = layers
        .get(current)
        .is_none_or(|l| fits(max_height, l.height, current, n));
    let probing = sel.probe.is_some_and(|pr| {
        pr.layer == current && budget.clean && current_fits_height && pr.holds(now)
    });
    if !probing {
        sel.probe = None;
    }
    let mut probed = false;
    let chosen = if best > current && paced {
        // Up one step at a time.
        sel.last_up = Some(now);
        current + 1
    } else if best < current && !probing {
        best
    } else if best == current && budget.may_probe && paced && next_fits_height {
        probed = true;
        sel.last_up = Some(now);
        sel.probe = Some(Probe {
            layer: current + 1,
            started: now,
            reached: None,
        });
        current + 1
    } else {
        current
    };
    let new_target = (sel.target != Some(chosen)).then_some(chosen);
    sel.target = Some(chosen);
    Step { new_target, probed }
}

/// Which of a track's `n` layers someone watches (targets or forwards), given every
/// downtrack's selection; the lowest always counts as watched.
pub fn watched<'a>(n: usize, selections: impl IntoIterator<Item = &'a Selection>) -> Vec<bool> {
    let mut watched = vec![false; n];
    if let Some(w) = watched.first_mut() {
        *w = true;
    }
    for s in selections {
        for i in [s.target, s.current].into_iter().flatten() {
            if let Some(w) = watched.get_mut(i) {
                *w = true;
            }
        }
    }
    watched
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    fn view(bps: &[f64]) -> Vec<LayerView> {
        bps.iter()
            .map(|&b| LayerView {
                measured_bps: b,
                height: None,
            })
            .collect()
    }

    /// (measured rates low to high, current, max height, budget, clean) -> best layer.
    #[test]
    fn the_best_layer_fits_the_budget_and_the_height() {
        type Row = (&'static [f64], Option<usize>, Option<u32>, f64, bool, usize);
        let rows: &[Row] = &[
            // Nothing fits: the lowest.
            (&[150e3, 500e3, 1500e3], None, None, 10e3, true, 0),
            (&[150e3, 500e3, 1500e3], None, None, 600e3, true, 1),
            (&[150e3, 500e3, 1500e3], None, None, 2e6, true, 2),
            // Paused layers cost half their nominal rate: 750 kbit/s for the top.
            (&[150e3, 0.0, 0.0], None, None, 700e3, true, 1),
            (&[150e3, 0.0, 0.0], None, None, 760e3, true, 2),
            // The forwarded layer stays within 125 % of the budget on a clean path...
            (&[150e3, 500e3, 1500e3], Some(2), None, 1250e3, true, 2),
            // ...but not after a congestion signal.
            (&[150e3, 500e3, 1500e3], Some(2), None, 1250e3, false, 1),
            // A forwarded layer costs what it measures, below half its nominal rate too.
            (&[150e3, 500e3, 300e3], Some(2), None, 320e3, false, 2),
            (&[150e3, 500e3, 300e3], None, None, 320e3, false, 0),
            // Height: 360 allows the middle (nominal 360) but not the top (nominal 720).
            (&[150e3, 500e3, 1500e3], None, Some(360), 5e6, true, 1),
            (&[150e3, 500e3, 1500e3], None, Some(100), 5e6, true, 0),
            // Two layers: the top is nominally 720 p, 1.5 Mbit/s.
            (&[500e3, 1500e3], None, Some(720), 5e6, true, 1),
        ];
        for &(rates, current, mh, budget, clean, best) in rows {
            assert_eq!(
                best_layer(&view(rates), current, mh, budget, clean),
                best,
                "{rates:?} {current:?} {mh:?} {budget} {clean}"
            );
        }
    }

    #[test]
    fn a_measured_keyframe_height_beats_the_nominal_one() {
        let mut layers = view(&[150e3, 500e3, 1500e3]);
        layers[2].height = Some(360);
        assert_eq!(best_layer(&layers, None, Some(360), 5e6, true), 2);
        layers[1].height = Some(540);
        assert_eq!(best_layer(&layers, None, Some(360), 5e6, true), 2);
        layers[2].height = Some(1080);
        assert_eq!(best_layer(&layers, None, Some(360), 5e6, true), 0);
    }

    /// (target before, last up seconds ago, budget, may probe, probe on layer) -> (target
    /// after, new target reported, probed).
    #[test]
    fn the_target_moves_down_at_once_and_up_one_paced_step() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let secs = Duration::from_secs;
        let rates = view(&[150e3, 500e3, 1500e3]);
        type Row = (
            &'static str,
            Option<usize>,
            Option<u64>,
            f64,
            bool,
            Option<usize>,
            usize,
            bool,
            bool,
        );
        let rows: &[Row] = &[
            (
                "up one step",
                Some(0),
                None,
                5e6,
                false,
                None,
                1,
                true,
                false,
            ),
            (
                "up paced",
                Some(0),
                Some(1),
                5e6,
                false,
                None,
                0,
                false,
                false,
            ),
            (
                "up after hold",
                Some(1),
                Some(4),
                5e6,
                false,
                None,
                2,
                true,
                false,
            ),
            (
                "down at once",
                Some(2),
                Some(0),
                100e3,
                false,
                None,
                0,
                true,
                false,
            ),
            ("stay", Some(1), None, 600e3, false, None, 1, false, false),
            (
                "first target",
                None,
                None,
                100e3,
                false,
                None,
                0,
                true,
                false,
            ),
            ("probe", Some(1), None, 600e3, true, None, 2, true, true),
            (
                "no probe above top",
                Some(2),
                None,
                5e6,
                true,
                None,
                2,
                false,
                false,
            ),
            (
                "probe holds",
                Some(2),
                Some(0),
                600e3,
                false,
                Some(2),
                2,
                false,
                false,
            ),
        ];
        for &(name, target, up_ago, bps, may_probe, probe, after, changed, probed) in rows {
            let mut sel = Selection {
                current: target,
                target,
                last_up: up_ago.map(|s| t0 - secs(s)),
                probe: probe.map(|layer| Probe {
                    layer,
                    started: t0,
                    reached: None,
                }),
            };
            let budget = Budget {
                bps,
                clean: true,
                may_probe,
            };
            let step = choose(&mut sel, &rates, None, budget, t0);
            assert_eq!(sel.target, Some(after), "{name}");
            assert_eq!(step.new_target, changed.then_some(after), "{name}");
            assert_eq!(step.probed, probed, "{name}");
            assert_eq!(sel.probe.is_some(), probed || probe.is_some(), "{name}");
        }
    }

    #[test]
    fn a_probe_ends_on_congestion_or_when_its_hold_is_over() {
        let t0 = Instant::now();
        let rates = view(&[150e3, 500e3, 1500e3]);
        let probing = |reached: Option<Instant>| Selection {
            current: Some(2),
            target: Some(2),
            last_up: Some(t0),
            probe: Some(Probe {
                layer: 2,
                started: t0,
                reached,
            }),
        };
        let budget = |clean| Budget {
            bps: 600e3,
            clean,
            may_probe: false,
        };
        // Congestion: down to what fits, probe gone.
        let mut sel = probing(None);
        choose(&mut sel, &rates, None, budget(false), t0);
        assert_eq!((sel.target, sel.probe), (Some(1), None));
        // Reached now: the hold starts here.
        let mut sel = probing(None);
        choose(
            &mut sel,
            &rates,
            None,
            budget(true),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            sel.probe.and_then(|p| p.reached),
            Some(t0 + Duration::from_secs(1))
        );
        choose(
            &mut sel,
            &rates,
            None,
            budget(true),
            t0 + Duration::from_secs(3),
        );
        assert_eq!((sel.target, sel.probe), (Some(1), None));
    }

    /// (current, target, layer of the packet, keyframe) -> gate, (current, target) after.
    #[test]
    fn packets_of_the_target_take_over_at_a_keyframe() {
        type Row = (
            Option<usize>,
            Option<usize>,
            usize,
            bool,
            Gate,
            Option<usize>,
            usize,
        );
        let skip = Gate::Skip;
        let fwd = Gate::Forward { switched: false };
        let switch = Gate::Forward { switched: true };
        let rows: &[Row] = &[
            (Some(1), Some(1), 1, false, fwd, Some(1), 1),
            (Some(1), Some(2), 2, false, skip, Some(1), 2),
            (Some(1), Some(2), 2, true, switch, Some(2), 2),
            (Some(1), Some(2), 0, true, skip, Some(1), 2),
            // Nothing forwarded yet: the first target is the lowest...
            (None, None, 0, true, fwd, Some(0), 0),
            (None, None, 1, true, skip, None, 0),
            // ...and any layer up to the target may start.
            (None, Some(2), 1, true, fwd, Some(1), 2),
            (None, Some(1), 2, true, skip, None, 1),
            (None, Some(1), 0, false, skip, None, 1),
        ];
        for &(current, target, layer, keyframe, gate, cur_after, target_after) in rows {
            let mut sel = Selection {
                current,
                target,
                ..Selection::default()
            };
            let what = format!("{current:?} {target:?} {layer} {keyframe}");
            assert_eq!(sel.on_packet(layer, keyframe, false), gate, "{what}");
            assert_eq!(sel.current, cur_after, "{what}");
            assert_eq!(sel.target, Some(target_after), "{what}");
        }
        let mut single = Selection::default();
        assert_eq!(single.on_packet(0, false, true), fwd);
        assert_eq!((single.current, single.target), (Some(0), Some(0)));
    }

    #[test]
    fn rates_are_smoothed_and_a_silent_layer_is_paused() {
        let t0 = Instant::now();
        let tick = Duration::from_millis(500);
        let ms = Duration::from_millis;
        let mut r = LayerRate::default();
        r.on_packet(t0, 62_500);
        r.sample(t0 + ms(100), 0.5, tick);
        assert_eq!((r.bps(), r.measured_bps()), (1e6, 1e6));
        r.on_packet(t0 + ms(500), 31_250);
        r.sample(t0 + ms(600), 0.5, tick);
        assert!((r.bps() - 0.8e6).abs() < 1e-6, "{r:?}");
        // Sent 1 s ago: the rate falls, the active rate stays.
        r.sample(t0 + ms(1500), 0.5, tick);
        assert!((r.bps() - 0.48e6).abs() < 1e-6, "{r:?}");
        assert!((r.measured_bps() - 0.8e6).abs() < 1e-6, "{r:?}");
        // Silent for more than 2 s: 0, but the active rate is remembered.
        r.sample(t0 + ms(3000), 0.5, tick);
        assert_eq!(r.bps(), 0.0);
        assert!((r.measured_bps() - 0.8e6).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn budgets_and_watched_layers() {
        assert_eq!(video_budget(1_080_000.0, 2, 2), 500_000.0);
        assert_eq!(video_budget(1_000_000.0, 0, 0), 1_000_000.0);
        assert_eq!(video_budget(10_000.0, 1, 1), 0.0);
        let sels = [
            Selection {
                current: Some(1),
                target: Some(2),
                ..Selection::default()
            },
            Selection::default(),
        ];
        assert_eq!(watched(4, &sels), [true, true, true, false]);
        assert_eq!(watched(2, &[]), [true, false]);
        assert_eq!(
            Selection {
                current: Some(1),
                target: Some(2),
                ..Selection::default()
            }
            .pending_switch(),
            Some(2)
        );
        assert_eq!(Selection::default().keyframe_layer(), 0);
        assert_eq!(["q", "h", "f", "x"].map(rid_rank), [0, 1, 2, 1]);
    }
}
