//! A token bucket with time passed in (no clock of its own, so cores stay sans-IO and tests
//! run in virtual time): `rate_per_sec` tokens a second up to `burst`, full when created.

use std::time::Instant;

/// A token bucket, full when created.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens (at least 1) refilled at `rate_per_sec`.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token at `now`; false (nothing taken) when the bucket is empty. Time going
    /// backwards adds nothing.
    #[must_use]
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Admits at most `rate_per_sec` events a second (burst `burst`) to a log and counts the rest,
/// so that a flood (of authentication failures, say) cannot flood the log; the next line logged
/// says how many were left out.
#[derive(Clone, Debug)]
pub struct LogLimiter {
    bucket: TokenBucket,
    suppressed: u64,
}

impl LogLimiter {
    /// A limiter that admits `burst` events at once, then `rate_per_sec` a second.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> Self {
        LogLimiter {
            bucket: TokenBucket::new(rate_per_sec, burst, now),
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event is to be logged, `n` being the events left out since the
    /// last one logged; `None` when it is left out (and counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.bucket.try_take(now) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50, 100, t0);
        assert_eq!((0..150).filter(|_| b.try_take(t0)).count(), 100);
        // 100 ms later, 5 tokens are back.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!((0..20).filter(|_| b.try_take(t1)).count(), 5);
        // A steady 50/s is never limited; time going backwards adds nothing.
        let mut b = TokenBucket::new(50, 1, t0);
        for i in 0..1000u64 {
            assert!(b.try_take(t0 + Duration::from_millis(20 * (i + 1))));
        }
        assert!(!b.try_take(t0));
    }

    #[test]
    fn log_limiter_counts_what_it_leaves_out() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(1, 2, t0);
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!((0..5).filter_map(|_| l.admit(t0)).count(), 0);
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), Some(5));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
    }
}
