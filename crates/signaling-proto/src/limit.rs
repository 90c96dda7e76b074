//! Per-connection rate limiting: a token bucket (time passed in) plus an abuse detector
//! (`PROTOCOL.md`, "Limits": beyond the rate a message is dropped with error 4008; persistent
//! abuse closes with 4008).

use std::time::{Duration, Instant};
use turnkey_time::rate;

/// What to do with one incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Drop it and answer error 4008.
    Drop,
    /// Drop it and close the connection with 4008.
    Abuse,
}

/// A token bucket refilled at `rate_per_sec` up to `burst`, counting drops per window.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    bucket: rate::TokenBucket,
    window: Duration,
    window_start: Instant,
    dropped_in_window: u32,
    abuse_drops: u32,
}

impl TokenBucket {
    /// A full bucket. `abuse_drops` drops within `window` mean abuse.
    pub fn new(
        rate_per_sec: u32,
        burst: u32,
        abuse_drops: u32,
        window: Duration,
        now: Instant,
    ) -> Self {
        TokenBucket {
            bucket: rate::TokenBucket::new(rate_per_sec, burst, now),
            window,
            window_start: now,
            dropped_in_window: 0,
            abuse_drops: abuse_drops.max(1),
        }
    }

    /// Accounts for one message arriving at `now`.
    pub fn handle_message(&mut self, now: Instant) -> Verdict {
        if now.saturating_duration_since(self.window_start) >= self.window {
            self.window_start = now;
            self.dropped_in_window = 0;
        }
        if self.bucket.try_take(now) {
            return Verdict::Allow;
        }
        self.dropped_in_window += 1;
        if self.dropped_in_window >= self.abuse_drops {
            Verdict::Abuse
        } else {
            Verdict::Drop
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate_then_abuse() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, 20, Duration::from_secs(10), t0);
        for _ in 0..100 {
            assert_eq!(b.handle_message(t0), Verdict::Allow);
        }
        assert_eq!(b.handle_message(t0), Verdict::Drop);
        // 100 ms later, 5 tokens are back.
        let t1 = t0 + Duration::from_millis(100);
        for _ in 0..5 {
            assert_eq!(b.handle_message(t1), Verdict::Allow);
        }
        assert_eq!(b.handle_message(t1), Verdict::Drop);
        // Keep hammering: the 20th drop in the window is abuse.
        let mut last = Verdict::Drop;
        for _ in 0..18 {
            last = b.handle_message(t1);
        }
        assert_eq!(last, Verdict::Abuse);
    }

    #[test]
    fn steady_rate_is_never_limited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, 20, Duration::from_secs(10), t0);
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(20 * i);
            assert_eq!(b.handle_message(now), Verdict::Allow);
        }
    }

    #[test]
    fn drops_are_forgiven_after_the_window() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, 1, 3, Duration::from_secs(10), t0);
        assert_eq!(b.handle_message(t0), Verdict::Allow);
        assert_eq!(b.handle_message(t0), Verdict::Drop);
        assert_eq!(b.handle_message(t0), Verdict::Drop);
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(b.handle_message(t1), Verdict::Allow);
        assert_eq!(b.handle_message(t1), Verdict::Drop);
        assert_eq!(b.handle_message(t1), Verdict::Drop);
        assert_eq!(b.handle_message(t1), Verdict::Abuse);
    }
}
