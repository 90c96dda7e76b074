//! What the benchmark programs count with: the measurement window a sample counts in, and the
//! percentile summary of a [`LatencyHistogram`]. No I/O, no clock.

use std::fmt;

use serde::Serialize;

use crate::histogram::LatencyHistogram;

/// Half-open measurement window [start, end) in nanoseconds since the run's epoch; a packet or
/// message counts if it was *sent* inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First counted send time.
    pub start_ns: u64,
    /// First send time no longer counted.
    pub end_ns: u64,
}

impl Window {
    /// Whether something sent at `sent_ns` is counted.
    pub fn contains(&self, sent_ns: u64) -> bool {
        (self.start_ns..self.end_ns).contains(&sent_ns)
    }
}

/// Summary of one latency histogram, in microseconds (None where it is empty).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
    /// Maximum.
    pub max_us: Option<u64>,
    /// Mean.
    pub mean_us: Option<f64>,
}

impl From<&LatencyHistogram> for Quantiles {
    fn from(h: &LatencyHistogram) -> Self {
        Self {
            count: h.count(),
            p50_us: h.quantile_us(0.5),
            p99_us: h.quantile_us(0.99),
            max_us: h.max_us(),
            mean_us: h.mean_us(),
        }
    }
}

/// `p50 1.23 ms p99 4.56 ms max 7.89 ms (n=100)`; `-` for a figure of an empty histogram.
impl fmt::Display for Quantiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |us: Option<u64>| crate::report::opt_unit(us.map(crate::report::ms), 2, "ms");
        write!(
            f,
            "p50 {} p99 {} max {} (n={})",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_half_open() {
        let w = Window {
            start_ns: 10,
            end_ns: 20,
        };
        assert!(!w.contains(9));
        assert!(w.contains(10));
        assert!(!w.contains(20));
    }

    #[test]
    fn quantiles_of_a_histogram_and_as_text() {
        let empty = Quantiles::from(&LatencyHistogram::default());
        assert_eq!(
            (empty.count, empty.p50_us, empty.max_us, empty.mean_us),
            (0, None, None, None)
        );
        assert_eq!(empty.to_string(), "p50 - p99 - max - (n=0)");
        let mut h = LatencyHistogram::default();
        for us in [1000, 2000, 3000, 4000] {
            h.record(us);
        }
        let q = Quantiles::from(&h);
        assert_eq!(
            (q.count, q.max_us, q.mean_us),
            (4, Some(4000), Some(2500.0))
        );
        assert_eq!(q.p50_us, h.quantile_us(0.5));
        assert_eq!(q.p99_us, h.quantile_us(0.99));
        assert_eq!(
            q.to_string(),
            format!(
                "p50 {:.2} ms p99 {:.2} ms max 4.00 ms (n=4)",
                q.p50_us.unwrap() as f64 / 1000.0,
                q.p99_us.unwrap() as f64 / 1000.0
            )
        );
    }
}
