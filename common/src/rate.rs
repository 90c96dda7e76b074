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

#[cfg(test)]
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
}
