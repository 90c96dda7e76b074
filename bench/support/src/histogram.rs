//! A latency histogram for the benchmark programs: exact below 1024 µs, then 512 buckets per
//! power of two (at most 0.2% error), mergeable across threads. No I/O, no clock.

/// Values below this are stored exactly (one bucket per microsecond).
const LINEAR_BUCKETS: u64 = 1024;
/// Above [`LINEAR_BUCKETS`], each power of two is cut into this many buckets (≤ 0.2% error).
const SUB_BUCKETS: u64 = 512;
const SUB_BUCKET_BITS: u32 = 9;
const BUCKETS: usize = (LINEAR_BUCKETS + (64 - 10) * SUB_BUCKETS) as usize;

/// Latency histogram in microseconds: exact below 1024 µs, then 512 buckets per power of two.
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

    /// Adds another histogram's samples to this one.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.min_us = self.min_us.min(other.min_us);
        self.max_us = self.max_us.max(other.max_us);
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
            // Relative error bound of the lower edge.
            assert!((us - floor) as f64 <= us as f64 / 500.0 + 1.0);
            last = b;
        }
    }

    #[test]
    fn quantiles_of_uniform_samples() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.quantile_us(0.5), Some(500));
        assert_eq!(h.quantile_us(0.99), Some(990));
        assert_eq!(h.quantile_us(1.0), Some(1000));
        assert_eq!(h.quantile_us(0.0), Some(1));
        assert_eq!(h.mean_us(), Some(500.5));
    }

    #[test]
    fn quantile_of_large_values_within_error() {
        let mut h = LatencyHistogram::default();
        for _ in 0..99 {
            h.record(100);
        }
        h.record(1_000_000);
        assert_eq!(h.quantile_us(0.5), Some(100));
        let p100 = h.quantile_us(1.0).unwrap();
        assert!((998_000..=1_000_000).contains(&p100), "{p100}");
        let mut other = LatencyHistogram::default();
        other.record(5);
        h.merge(&other);
        assert_eq!(h.count(), 101);
        assert_eq!(h.quantile_us(0.0), Some(5));
        assert_eq!(h.max_us(), Some(1_000_000));
    }
}
