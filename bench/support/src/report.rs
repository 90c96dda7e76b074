//! How the benchmark programs write their figures: one JSON line for scripts, `-` for a figure
//! that could not be taken, units for people, `key: value` lists, and the ratios every report
//! has (loss, CPU as a share of a core, CPU per delivered unit). No I/O.

use std::fmt;

use serde::Serialize;

/// `value` as one JSON object on one line (`{"error":"..."}` if it cannot be serialized).
pub fn json_line<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// The value as text, `-` when there is none.
pub fn opt<T: fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The number with `decimals` decimals, `-` when there is none.
pub fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// The number with `decimals` decimals followed by a space and `unit` (`1.50 ms`), `-` (without
/// the unit) when there is none.
pub fn opt_unit(v: Option<f64>, decimals: usize, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$} {unit}"))
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Microseconds in milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `k1{between}v1, k2{between}v2, ...` (`Allocate 486 x3, Refresh timeout x1` with `" x"`); empty
/// when there are no pairs.
pub fn join_pairs<K: fmt::Display, V: fmt::Display>(
    pairs: impl IntoIterator<Item = (K, V)>,
    between: &str,
) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}{between}{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 100 · (sent − received) / sent; 0 when nothing was sent.
pub fn loss_percent(sent: u64, received: u64) -> f64 {
    if sent == 0 {
        0.0
    } else {
        100.0 * sent.saturating_sub(received) as f64 / sent as f64
    }
}

/// CPU seconds used over `wall_secs` of wall-clock time, in percent of one core.
pub fn percent_of_core(cpu_secs: f64, wall_secs: f64) -> f64 {
    100.0 * cpu_secs / wall_secs
}

/// CPU microseconds per unit of work (`n` packets, messages); None when nothing was done or the
/// CPU time is unknown.
pub fn us_per(cpu_secs: Option<f64>, n: u64) -> Option<f64> {
    cpu_secs.filter(|_| n > 0).map(|c| c * 1e6 / n as f64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn missing_figures_are_dashes() {
        assert_eq!(opt(Some(42)), "42");
        assert_eq!(opt(None::<u64>), "-");
        assert_eq!(opt_f(Some(1.23456), 2), "1.23");
        assert_eq!(opt_f(Some(99.6), 0), "100");
        assert_eq!(opt_f(None, 1), "-");
        assert_eq!(opt_unit(Some(1.5), 2, "ms"), "1.50 ms");
        assert_eq!(opt_unit(None, 2, "ms"), "-");
    }

    #[test]
    fn units() {
        assert_eq!(mib(12 << 20), 12.0);
        assert_eq!(format!("{:.1}", mib(1536 * 1024)), "1.5");
        assert_eq!(ms(1250), 1.25);
    }

    #[test]
    fn pairs_joined() {
        let m = BTreeMap::from([("b".to_owned(), 2u64), ("a".to_owned(), 1)]);
        assert_eq!(join_pairs(&m, ": "), "a: 1, b: 2");
        assert_eq!(join_pairs(&m, " x"), "a x1, b x2");
        assert_eq!(join_pairs(&BTreeMap::<u16, u64>::new(), " "), "");
    }

    #[test]
    fn ratios() {
        assert_eq!(loss_percent(0, 0), 0.0);
        assert_eq!(loss_percent(200, 150), 25.0);
        assert_eq!(loss_percent(100, 120), 0.0);
        assert_eq!(percent_of_core(0.5, 2.0), 25.0);
        assert_eq!(us_per(Some(2.0), 4), Some(500_000.0));
        assert_eq!(us_per(Some(2.0), 0), None);
        assert_eq!(us_per(None, 4), None);
    }

    #[test]
    fn json_on_one_line() {
        #[derive(Serialize)]
        struct R {
            a: u64,
            b: Option<f64>,
        }
        assert_eq!(json_line(&R { a: 1, b: None }), r#"{"a":1,"b":null}"#);
    }
}
