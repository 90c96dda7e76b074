//! Soak figures: churn counters, the server's resource figures at one instant, and the lines
//! printed at each interval and at the end. No I/O, no clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bench_support::report::{join_pairs, json_line, mib, opt, opt_f};
use serde::Serialize;

/// Churn counters: cycles, successful operations by name, failures by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Completed cycles (one unit of the kind's loop, whether or not it failed).
    pub cycles: u64,
    /// Successful operations by name (`Allocate`, `Refresh`, `TLS handshake`, ...).
    pub ops: BTreeMap<&'static str, u64>,
    /// Failures by kind (`Allocate 486`, `Refresh timeout`, `handshake timeout`, ...).
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    /// Counts a successful operation.
    pub fn op(&mut self, name: &'static str) {
        *self.ops.entry(name).or_default() += 1;
    }

    /// Counts a failure.
    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// All successful operations.
    pub fn ops_total(&self) -> u64 {
        self.ops.values().sum()
    }

    /// All failures.
    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// What was counted since `before` (an earlier copy of the same tally).
    pub fn since(&self, before: &Tally) -> Tally {
        let minus = |now: u64, then: Option<&u64>| now.saturating_sub(then.copied().unwrap_or(0));
        Tally {
            cycles: self.cycles.saturating_sub(before.cycles),
            ops: self
                .ops
                .iter()
                .map(|(k, v)| (*k, minus(*v, before.ops.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
            errors: self
                .errors
                .iter()
                .map(|(k, v)| (k.clone(), minus(*v, before.errors.get(k))))
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

/// The server's figures at one instant; None where not available (no pid, no metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerFigures {
    /// Resident set size (VmRSS).
    pub rss_bytes: Option<u64>,
    /// Open file descriptors.
    pub fds: Option<usize>,
    /// UDP sockets bound in the relay port range.
    pub relay_ports: Option<usize>,
    /// `turn_allocations`, all label sets.
    pub allocations: Option<f64>,
    /// `turn_permissions`.
    pub permissions: Option<f64>,
    /// `turn_channel_bindings`.
    pub channel_bindings: Option<f64>,
}

impl ServerFigures {
    /// Whether the resource figures are back at `baseline`'s (figures missing in either are not
    /// compared). RSS is not compared: an allocator keeps freed memory.
    pub fn back_to(&self, baseline: &ServerFigures) -> bool {
        fn same<T: PartialEq>(a: Option<T>, b: Option<T>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
        }
        same(self.fds, baseline.fds)
            && same(self.relay_ports, baseline.relay_ports)
            && same(self.allocations, baseline.allocations)
    }
}

/// Which point of the run a line describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Before any churn.
    Baseline,
    /// End of one interval of churn.
    Interval,
    /// After churn stopped and the settle time passed (or the figures returned to baseline).
    Settled,
}

/// One printed line: the server's figures and the churn of the interval that just ended.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Always "soak" (JSON consumers tell lines apart by this and `phase`).
    pub event: &'static str,
    /// Baseline, interval or settled.
    pub phase: Phase,
    /// Seconds since churn started.
    pub elapsed_secs: f64,
    /// Cycles per second in the interval.
    pub cycles_per_sec: f64,
    /// Successful operations per second in the interval.
    pub ops_per_sec: f64,
    /// Failures in the interval.
    pub errors: u64,
    /// Failures in the interval, by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The server's figures at the end of the interval.
    #[serde(flatten)]
    pub server: ServerFigures,
}

impl Line {
    /// A line for an interval of `secs` seconds with `delta` counted in it.
    pub fn new(
        phase: Phase,
        elapsed_secs: f64,
        secs: f64,
        delta: &Tally,
        server: ServerFigures,
    ) -> Self {
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Self {
            event: "soak",
            phase,
            elapsed_secs,
            cycles_per_sec: rate(delta.cycles),
            ops_per_sec: rate(delta.ops_total()),
            errors: delta.errors_total(),
            errors_by_kind: delta.errors.clone(),
            server,
        }
    }

    /// Column titles matching [`Line::to_text`].
    pub fn header() -> String {
        format!(
            "  {:>9} {:>9} {:>9} {:>7} {:>9} {:>6} {:>11} {:>11} {:>11} {:>9}",
            "time",
            "cycles/s",
            "ops/s",
            "errors",
            "rss MiB",
            "fds",
            "relay ports",
            "allocations",
            "permissions",
            "channels"
        )
    }

    /// The line as a table row; failures by kind follow in brackets.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "  {:>7.1} s {:>9.1} {:>9.1} {:>7} {:>9} {:>6} {:>11} {:>11} {:>11} {:>9}",
            self.elapsed_secs,
            self.cycles_per_sec,
            self.ops_per_sec,
            self.errors,
            opt_mib(self.server.rss_bytes),
            opt(self.server.fds),
            opt(self.server.relay_ports),
            opt(self.server.allocations),
            opt(self.server.permissions),
            opt(self.server.channel_bindings),
        );
        match self.phase {
            Phase::Baseline => s.push_str("  (baseline)"),
            Phase::Settled => s.push_str("  (end, after settling)"),
            Phase::Interval => {}
        }
        if !self.errors_by_kind.is_empty() {
            let _ = write!(s, "  [{}]", kinds(&self.errors_by_kind));
        }
        s
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        json_line(self)
    }
}

/// The end of a run: churn totals and the drift of the server's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Always "soak_summary".
    pub event: &'static str,
    /// The kind of churn.
    pub kind: &'static str,
    /// Seconds from the start of churn until every client had released what it held.
    pub churn_secs: f64,
    /// Seconds waited after churn for the figures to return to baseline.
    pub settle_secs: f64,
    /// Whether fds, relay ports and allocations were back at baseline at the end.
    pub settled: bool,
    /// Completed cycles.
    pub cycles: u64,
    /// Successful operations.
    pub ops: u64,
    /// Successful operations by name.
    pub ops_by_name: BTreeMap<&'static str, u64>,
    /// Failures.
    pub errors: u64,
    /// Failures by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// RSS after the warm-up interval(s).
    pub rss_warm_bytes: Option<u64>,
    /// RSS at the end (after settling).
    pub rss_end_bytes: Option<u64>,
    /// 100 · (end − warm) / warm.
    pub rss_drift_percent: Option<f64>,
    /// Figures before churn.
    pub baseline: ServerFigures,
    /// Figures at the end.
    pub end: ServerFigures,
}

impl Summary {
    /// Builds the summary.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: &'static str,
        churn_secs: f64,
        settle_secs: f64,
        total: &Tally,
        warm: &ServerFigures,
        baseline: ServerFigures,
        end: ServerFigures,
    ) -> Self {
        let drift = match (warm.rss_bytes, end.rss_bytes) {
            (Some(w), Some(e)) if w > 0 => Some(100.0 * (e as f64 - w as f64) / w as f64),
            _ => None,
        };
        Self {
            event: "soak_summary",
            kind,
            churn_secs,
            settle_secs,
            settled: end.back_to(&baseline),
            cycles: total.cycles,
            ops: total.ops_total(),
            ops_by_name: total.ops.clone(),
            errors: total.errors_total(),
            errors_by_kind: total.errors.clone(),
            rss_warm_bytes: warm.rss_bytes,
            rss_end_bytes: end.rss_bytes,
            rss_drift_percent: drift,
            baseline,
            end,
        }
    }

    /// Two lines: churn totals, then the drift figures.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "summary {}: {} cycles, {} ops ({}), {} errors{} in {:.1} s",
            self.kind,
            self.cycles,
            self.ops,
            join_pairs(&self.ops_by_name, " "),
            self.errors,
            if self.errors_by_kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds(&self.errors_by_kind))
            },
            self.churn_secs
        );
        let _ = write!(
            s,
            "\nsummary {}: rss warm {} MiB -> end {} MiB (drift {} %); fds {} -> {}; relay ports {} -> {}; allocations {} -> {}; {} after {:.1} s",
            self.kind,
            opt_mib(self.rss_warm_bytes),
            opt_mib(self.rss_end_bytes),
            self.rss_drift_percent
                .map_or_else(|| "-".to_owned(), |d| format!("{d:+.1}")),
            opt(self.baseline.fds),
            opt(self.end.fds),
            opt(self.baseline.relay_ports),
            opt(self.end.relay_ports),
            opt(self.baseline.allocations),
            opt(self.end.allocations),
            if self.settled {
                "back to baseline"
            } else {
                "NOT back to baseline"
            },
            self.settle_secs
        );
        s
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        json_line(self)
    }
}

fn opt_mib(bytes: Option<u64>) -> String {
    opt_f(bytes.map(mib), 2)
}

fn kinds(errors: &BTreeMap<String, u64>) -> String {
    join_pairs(errors, " x")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(rss_mib: u64, fds: usize, ports: usize, allocations: f64) -> ServerFigures {
        ServerFigures {
            rss_bytes: Some(rss_mib << 20),
            fds: Some(fds),
            relay_ports: Some(ports),
            allocations: Some(allocations),
            permissions: None,
            channel_bindings: None,
        }
    }

    #[test]
    fn tally_deltas() {
        let mut t = Tally {
            cycles: 3,
            ..Tally::default()
        };
        t.op("Allocate");
        t.op("Allocate");
        t.error("Refresh timeout".into());
        let before = t.clone();
        t.cycles = 5;
        t.op("Refresh");
        t.error("Refresh timeout".into());
        t.error("Allocate 486".into());
        let d = t.since(&before);
        assert_eq!(d.cycles, 2);
        assert_eq!(d.ops, BTreeMap::from([("Refresh", 1)]));
        assert_eq!(d.errors_total(), 2);
        assert_eq!(t.ops_total(), 3);
        assert!(t.since(&t).errors.is_empty());
    }

    #[test]
    fn line_rates_and_text() {
        let mut delta = Tally {
            cycles: 100,
            ..Tally::default()
        };
        for _ in 0..300 {
            delta.op("Allocate");
        }
        delta.error("Allocate 486".into());
        let line = Line::new(Phase::Interval, 20.0, 10.0, &delta, figures(12, 20, 4, 2.0));
        assert_eq!(line.cycles_per_sec, 10.0);
        assert_eq!(line.ops_per_sec, 30.0);
        let text = line.to_text();
        assert!(text.contains("12.00"), "{text}");
        assert!(text.ends_with("[Allocate 486 x1]"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&line.to_json()).unwrap();
        assert_eq!(json["rss_bytes"], 12 << 20);
        assert_eq!(json["phase"], "interval");
        assert_eq!(json["errors_by_kind"]["Allocate 486"], 1);
    }

    #[test]
    fn summary_drift_and_settling() {
        let base = figures(10, 20, 0, 0.0);
        let warm = figures(20, 30, 8, 4.0);
        let end = figures(21, 20, 0, 0.0);
        let s = Summary::new("allocation", 60.0, 1.5, &Tally::default(), &warm, base, end);
        assert_eq!(s.rss_drift_percent, Some(5.0));
        assert!(s.settled);
        assert!(s.to_text().contains("drift +5.0 %"), "{}", s.to_text());
        let leaking = figures(21, 20, 2, 0.0);
        let s = Summary::new(
            "even-port",
            60.0,
            40.0,
            &Tally::default(),
            &warm,
            base,
            leaking,
        );
        assert!(!s.settled);
        assert!(
            s.to_text().contains("relay ports 0 -> 2"),
            "{}",
            s.to_text()
        );
        // Missing figures are not compared.
        assert!(ServerFigures::default().back_to(&base));
    }
}
