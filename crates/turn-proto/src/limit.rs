//! Per-source token buckets in a fixed table: bounded memory whatever the number of sources
//! (spoofed or not), no allocation per packet, time passed in.
//!
//! A source IP hashes (with a per-process random key, so an attacker cannot aim collisions) to
//! one of a fixed number of buckets; sources that collide share a budget. Used to rate-limit
//! the responses sent to unauthenticated requests (401/438 challenges and pre-authentication
//! errors), which are what an attacker spoofing a victim's address would reflect at it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Instant;

/// Buckets per table; 8 bytes each.
pub const BUCKETS: usize = 16_384;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Tokens in thousandths.
    milli_tokens: u32,
    /// Last refill, milliseconds since the table's start (wrapping).
    last_ms: u32,
}

/// A per-source token bucket table: `rate_per_sec` tokens a second, at most `burst` stored.
#[derive(Debug)]
pub struct SourceLimiter {
    buckets: Vec<Bucket>,
    hasher: RandomState,
    start: Instant,
    rate_per_sec: u32,
    burst: u32,
}

impl SourceLimiter {
    /// A table refilling `rate_per_sec` tokens a second up to `burst`; `rate_per_sec == 0`
    /// turns limiting off (every call is allowed).
    pub fn new(rate_per_sec: u32, burst: u32, start: Instant) -> Self {
        let buckets = if rate_per_sec == 0 {
            Vec::new()
        } else {
            vec![
                Bucket {
                    milli_tokens: burst.max(1).saturating_mul(1000),
                    last_ms: 0,
                };
                BUCKETS
            ]
        };
        Self {
            buckets,
            hasher: RandomState::new(),
            start,
            rate_per_sec,
            burst: burst.max(1),
        }
    }

    /// Takes one token for `source` at `now`; false when its bucket is empty.
    pub fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.buckets.is_empty() {
            return true;
        }
        let idx = (self.hasher.hash_one(source) as usize) % self.buckets.len();
        let now_ms = now.saturating_duration_since(self.start).as_millis() as u32;
        let cap = self.burst.saturating_mul(1000);
        let b = &mut self.buckets[idx];
        let elapsed_ms = now_ms.wrapping_sub(b.last_ms) as u64;
        // rate_per_sec tokens a second = rate_per_sec milli-tokens a millisecond.
        let refill = elapsed_ms.saturating_mul(self.rate_per_sec as u64);
        b.milli_tokens = (b.milli_tokens as u64 + refill).min(cap as u64) as u32;
        b.last_ms = now_ms;
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_per_source() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, 20, t0);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let allowed = (0..100).filter(|_| l.allow(a, t0)).count();
        assert_eq!(allowed, 20);
        // 1 s later: 10 more.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..100).filter(|_| l.allow(a, t1)).count();
        assert_eq!(allowed, 10);
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        let allowed = (0..100).filter(|_| l.allow(a, t2)).count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn sources_mostly_have_their_own_budget_and_memory_is_fixed() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(1, 1, t0);
        let mut ok = 0;
        for i in 0..1000u32 {
            let ip = IpAddr::from([203, 0, (i >> 8) as u8, i as u8]);
            ok += l.allow(ip, t0) as u32;
        }
        // 1000 sources in 16384 buckets: a handful of collisions at most.
        assert!(ok > 950, "{ok}");
        assert_eq!(l.buckets.len(), BUCKETS);
    }

    #[test]
    fn zero_rate_is_off() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(0, 0, t0);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        assert!((0..10_000).all(|_| l.allow(a, t0)));
    }
}
