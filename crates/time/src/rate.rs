//! Token buckets with time passed in (no clock of its own, so cores stay sans-IO and tests run in
//! virtual time): [`TokenBucket`] counts events (`rate_per_sec` tokens a second up to `burst`),
//! [`ByteBucket`] counts bytes (bandwidth caps); both are full when created.

use std::time::{Duration, Instant};

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

/// A token bucket counted in bytes, for bandwidth caps: `rate_bytes_per_sec` bytes a second up
/// to `burst_bytes`, full when created. A datagram of `len` bytes passes when the bucket holds
/// `len` bytes, or when it is full (so a datagram larger than the burst is never refused for
/// ever): it then leaves the bucket in debt, which the refill pays back before the next one. Over
/// any long interval the bytes admitted stay within `rate * interval + burst` (+ one datagram).
#[derive(Clone, Copy, Debug)]
pub struct ByteBucket {
    rate_bytes_per_sec: f64,
    burst_bytes: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    /// A full bucket of `burst_bytes` (at least 1) refilled at `rate_bytes_per_sec`.
    pub fn new(rate_bytes_per_sec: u64, burst_bytes: u64, now: Instant) -> Self {
        let burst = burst_bytes.max(1) as f64;
        ByteBucket {
            rate_bytes_per_sec: rate_bytes_per_sec as f64,
            burst_bytes: burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate_bytes_per_sec).min(self.burst_bytes);
    }

    /// Takes `len` bytes at `now`; false (nothing taken) when the bucket holds less than
    /// `min(len, burst)`. Time going backwards adds nothing.
    #[must_use]
    pub fn try_take(&mut self, len: u64, now: Instant) -> bool {
        self.refill(now);
        let len = len as f64;
        if self.tokens >= len.min(self.burst_bytes) {
            self.tokens -= len;
            true
        } else {
            false
        }
    }

    /// How long from `now` until [`try_take`](Self::try_take) of `len` bytes would pass at
    /// the current rate (zero when it would pass now); at most `max` (a bucket with no rate
    /// never fills). For pacing a stream instead of dropping its bytes.
    pub fn time_until(&mut self, len: u64, now: Instant, max: Duration) -> Duration {
        self.refill(now);
        let missing = (len as f64).min(self.burst_bytes) - self.tokens;
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        if self.rate_bytes_per_sec <= 0.0 {
            return max;
        }
        // Never zero while the take would fail (a wait rounded down to nothing would spin).
        Duration::try_from_secs_f64(missing / self.rate_bytes_per_sec)
            .unwrap_or(max)
            .max(Duration::from_micros(1))
            .min(max)
    }

    /// Gives back `len` bytes taken by [`try_take`](Self::try_take) for a datagram that was
    /// then refused by another bucket (never above the burst).
    pub fn refund(&mut self, len: u64) {
        self.tokens = (self.tokens + len as f64).min(self.burst_bytes);
    }

    /// Changes the rate and the burst from `now` on: what accrued until `now` at the old rate is
    /// kept, up to the new burst.
    pub fn set_rate(&mut self, rate_bytes_per_sec: u64, burst_bytes: u64, now: Instant) {
        self.refill(now);
        self.rate_bytes_per_sec = rate_bytes_per_sec as f64;
        self.burst_bytes = burst_bytes.max(1) as f64;
        self.tokens = self.tokens.min(self.burst_bytes);
    }

    /// The refill rate, bytes a second.
    pub fn rate_bytes_per_sec(&self) -> u64 {
        self.rate_bytes_per_sec as u64
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
    fn byte_bucket_admits_the_rate_and_lets_a_large_datagram_through_in_debt() {
        let t0 = Instant::now();
        // 10 000 B/s, burst 2 000 B: the burst, then 1 000 B every 100 ms.
        let mut b = ByteBucket::new(10_000, 2_000, t0);
        assert!(b.try_take(1_000, t0));
        assert!(b.try_take(1_000, t0));
        assert!(!b.try_take(1_000, t0));
        let mut passed = 0u64;
        for ms in 1..=10_000u64 {
            if b.try_take(500, t0 + Duration::from_millis(ms)) {
                passed += 500;
            }
        }
        // 10 s at 10 000 B/s, within one datagram.
        assert!((99_500..=100_500).contains(&passed), "{passed}");
        // A datagram larger than the burst passes when the bucket is full, then the debt is
        // paid back before anything else passes.
        let t1 = t0 + Duration::from_secs(20);
        let mut b = ByteBucket::new(1_000, 100, t0);
        assert!(b.try_take(1_200, t1));
        assert!(!b.try_take(1, t1 + Duration::from_millis(1_000)));
        assert!(b.try_take(1, t1 + Duration::from_millis(1_101)));
        // A refund never fills beyond the burst; a rate change keeps what accrued.
        b.refund(10_000);
        assert!(b.try_take(100, t1 + Duration::from_millis(1_101)));
        assert!(!b.try_take(100, t1 + Duration::from_millis(1_101)));
        b.set_rate(1_000_000, 1_000, t1 + Duration::from_millis(1_101));
        assert_eq!(b.rate_bytes_per_sec(), 1_000_000);
        assert!(b.try_take(1_000, t1 + Duration::from_millis(1_102)));
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

    #[test]
    fn time_until_says_when_a_take_would_pass() {
        let t0 = Instant::now();
        let max = Duration::from_secs(1);
        // 1000 bytes a second, 100 deep, full.
        let mut b = ByteBucket::new(1000, 100, t0);
        assert_eq!(b.time_until(100, t0, max), Duration::ZERO);
        assert!(b.try_take(100, t0));
        // Empty: 50 bytes take 50 ms; more than the depth waits for a full bucket (100 ms).
        assert_eq!(b.time_until(50, t0, max), Duration::from_millis(50));
        assert_eq!(b.time_until(5000, t0, max), Duration::from_millis(100));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.time_until(5000, t1, max), Duration::ZERO);
        // A large take leaves a debt: the next one waits for the debt and its own bytes.
        assert!(b.try_take(5000, t1));
        assert_eq!(
            b.time_until(100, t1, Duration::from_secs(60)),
            Duration::from_secs(5)
        );
        // Capped at `max`, and a bucket with no rate answers `max`.
        assert_eq!(b.time_until(100, t1, max), max);
        let mut none = ByteBucket::new(0, 10, t0);
        assert!(none.try_take(10, t0));
        assert_eq!(none.time_until(1, t0, max), max);
    }
}
