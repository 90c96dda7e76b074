//! Active speaker detection, pure: each participant's smoothed RFC 6464 audio level (-dBov,
//! 0 loudest, 127 silence) from its audio packets' header extension; once per tick the
//! loudest fresh speaker of a room becomes the active speaker.

use std::time::{Duration, Instant};

/// RFC 6464 level (-dBov) below which a participant counts as speaking.
pub const SPEAKING_LEVEL: f64 = 70.0;
/// A level older than this is not counted (the participant stopped sending audio).
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// One participant's smoothed audio level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioLevel {
    /// Smoothed level, -dBov (127 = silence).
    level: f64,
    /// When the last sample came.
    at: Option<Instant>,
}

impl Default for AudioLevel {
    fn default() -> Self {
        Self {
            level: 127.0,
            at: None,
        }
    }
}

impl AudioLevel {
    /// An audio packet at `now` carried `level` (-dBov, RFC 6464 §3): smoothed 9:1.
    pub fn on_sample(&mut self, now: Instant, level: u8) {
        self.level = 0.9 * self.level + 0.1 * f64::from(level);
        self.at = Some(now);
    }

    /// The smoothed level, -dBov.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Whether the participant speaks at `now`: a fresh level at or below
    /// [`SPEAKING_LEVEL`].
    pub fn speaking(&self, now: Instant) -> bool {
        self.at
            .is_some_and(|at| now.saturating_duration_since(at) < FRESH_FOR)
            && self.level <= SPEAKING_LEVEL
    }
}

/// The room's next active speaker, when it changes: the loudest (lowest level) of the
/// participants speaking at `now`, the first listed on a tie; `None` when it stays `current`
/// or nobody speaks (the last speaker stays active through silence).
pub fn next_speaker<K: Copy + PartialEq>(
    current: Option<K>,
    levels: impl IntoIterator<Item = (K, AudioLevel)>,
    now: Instant,
) -> Option<(K, f64)> {
    let mut best: Option<(K, f64)> = None;
    for (k, l) in levels {
        if !l.speaking(now) {
            continue;
        }
        if best.is_none_or(|(_, b)| l.level < b) {
            best = Some((k, l.level));
        }
    }
    best.filter(|(k, _)| current != Some(*k))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    fn level(value: f64, ago_ms: Option<u64>, now: Instant) -> AudioLevel {
        AudioLevel {
            level: value,
            at: ago_ms.map(|ms| now - Duration::from_millis(ms)),
        }
    }

    /// (current speaker, (id, level, ms since its last sample)) -> change.
    #[test]
    fn the_loudest_fresh_speaker_takes_over() {
        type Row = (Option<u8>, &'static [(u8, f64, Option<u64>)], Option<u8>);
        let rows: &[Row] = &[
            // Nobody has spoken.
            (None, &[(1, 127.0, None), (2, 127.0, None)], None),
            (None, &[(1, 40.0, Some(0)), (2, 30.0, Some(0))], Some(2)),
            // Already the speaker: no change.
            (Some(2), &[(1, 40.0, Some(0)), (2, 30.0, Some(0))], None),
            // Too quiet (above 70 -dBov) or stale (1 s old): not speaking.
            (Some(1), &[(1, 50.0, Some(0)), (2, 71.0, Some(0))], None),
            (None, &[(1, 70.0, Some(999))], Some(1)),
            (None, &[(1, 70.0, Some(1000))], None),
            // Silence keeps the last speaker.
            (Some(1), &[(1, 127.0, Some(0)), (2, 127.0, Some(0))], None),
            // A tie goes to the first listed.
            (Some(3), &[(1, 20.0, Some(0)), (2, 20.0, Some(0))], Some(1)),
        ];
        let now = Instant::now() + Duration::from_secs(10);
        for &(current, levels, change) in rows {
            let got = next_speaker(
                current,
                levels.iter().map(|&(k, v, ago)| (k, level(v, ago, now))),
                now,
            );
            assert_eq!(got.map(|(k, _)| k), change, "{current:?} {levels:?}");
        }
    }

    #[test]
    fn levels_are_smoothed_nine_to_one() {
        let now = Instant::now();
        let mut l = AudioLevel::default();
        assert!(!l.speaking(now));
        l.on_sample(now, 27);
        assert!((l.level() - 117.0).abs() < 1e-9);
        for _ in 0..30 {
            l.on_sample(now, 27);
        }
        assert!(l.speaking(now) && l.level() < 40.0, "{l:?}");
    }
}
