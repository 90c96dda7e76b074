//! `--find-max`: the highest offered rate a server relays with loss under a threshold. The
//! rate doubles from the start rate until a run fails, then the gap between the best rate that
//! passed and the lowest that failed is bisected, until it is narrower than the resolution, the
//! step budget is spent, or the next run would not fit in the time budget. A run passes when
//! its loss is under the threshold and the generator really sent what was asked (a generator
//! that cannot keep up measures itself, not the server). No I/O: the run is a function given
//! to [`find_max`].

use std::time::{Duration, Instant};

use serde::Serialize;

/// Bounds of the search.
#[derive(Debug, Clone, Copy)]
pub struct SearchConfig {
    /// First offered rate, packets/s.
    pub start_pps: f64,
    /// Never offer more than this.
    pub ceiling_pps: f64,
    /// A run passes with loss under this, percent.
    pub max_loss_percent: f64,
    /// A run only counts when the generator sent at least this fraction of the offered rate.
    pub min_sent_fraction: f64,
    /// Stop bisecting when failed / passed is under 1 + this.
    pub resolution: f64,
    /// Most runs.
    pub max_steps: usize,
    /// Total time for all runs; a run that would not fit (as long as the longest so far) is
    /// not started.
    pub budget: Duration,
}

/// What one run measured, as the search needs it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Measured {
    /// Offered rate.
    pub target_pps: f64,
    /// Sent inside the window, per second.
    pub sent_pps: f64,
    /// Received, per second.
    pub received_pps: f64,
    /// Loss, percent.
    pub loss_percent: f64,
}

/// One step of the search.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What the run measured (None: it failed to run).
    pub measured: Option<Measured>,
    /// Offered rate.
    pub target_pps: f64,
    /// Whether it passed.
    pub passed: bool,
    /// The generator sent less than `min_sent_fraction` of the offered rate.
    pub generator_limited: bool,
}

/// The search's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The best run that passed (None: not even the first rate did).
    pub best: Option<Measured>,
    /// Every run, in order.
    pub steps: Vec<Step>,
    /// Why it stopped.
    pub stopped: &'static str,
    /// Time taken by all runs.
    pub elapsed_secs: f64,
}

/// Runs `measure` at the rates the search picks; an `Err` from it (the run itself failed: set-up
/// refused, no server) ends the search when nothing has passed yet, and otherwise counts as a
/// failure at that rate.
pub fn find_max<E>(
    cfg: &SearchConfig,
    mut measure: impl FnMut(f64) -> Result<Measured, E>,
) -> SearchResult {
    let started = Instant::now();
    let mut passed: Option<Measured> = None;
    let mut failed_pps: Option<f64> = None;
    let mut steps = Vec::new();
    let mut longest = Duration::ZERO;
    let mut rate = cfg.start_pps.min(cfg.ceiling_pps);
    let stopped = loop {
        if steps.len() >= cfg.max_steps {
            break "step budget spent";
        }
        if started.elapsed() + longest > cfg.budget {
            break "time budget spent";
        }
        let t = Instant::now();
        let m = measure(rate).ok();
        longest = longest.max(t.elapsed());
        let generator_limited = m.is_some_and(|m| m.sent_pps < cfg.min_sent_fraction * rate);
        let ok = m.is_some_and(|m| m.loss_percent < cfg.max_loss_percent) && !generator_limited;
        steps.push(Step {
            measured: m,
            target_pps: rate,
            passed: ok,
            generator_limited,
        });
        if m.is_none() && passed.is_none() {
            // The first runs cannot even set up (the server refuses, or is not there): not a
            // matter of rate. Later, a run that fails counts as a failure at its rate.
            break "a run failed";
        }
        match m {
            Some(m) if ok => passed = Some(m),
            _ => failed_pps = Some(failed_pps.map_or(rate, |f| f.min(rate))),
        }
        let lo = passed.map(|m| m.target_pps);
        rate = match (lo, failed_pps) {
            (Some(lo), None) if lo >= cfg.ceiling_pps => break "ceiling reached",
            (Some(lo), None) => (lo * 2.0).min(cfg.ceiling_pps),
            (None, Some(hi)) => {
                if hi / 2.0 < 1.0 {
                    break "nothing passed";
                }
                hi / 2.0
            }
            (Some(lo), Some(hi)) => {
                if hi / lo < 1.0 + cfg.resolution {
                    break "resolution reached";
                }
                (lo + hi) / 2.0
            }
            (None, None) => unreachable!("a step was recorded"),
        };
    };
    SearchResult {
        best: passed,
        steps,
        stopped,
        elapsed_secs: started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SearchConfig {
        SearchConfig {
            start_pps: 10_000.0,
            ceiling_pps: 10_000_000.0,
            max_loss_percent: 0.1,
            min_sent_fraction: 0.95,
            resolution: 0.05,
            max_steps: 20,
            budget: Duration::from_secs(60),
        }
    }

    /// A server that loses nothing up to `capacity` pps and everything above it proportionally.
    fn server(capacity: f64) -> impl FnMut(f64) -> Result<Measured, ()> {
        move |rate| {
            let received = rate.min(capacity);
            Ok(Measured {
                target_pps: rate,
                sent_pps: rate,
                received_pps: received,
                loss_percent: 100.0 * (rate - received) / rate,
            })
        }
    }

    #[test]
    fn doubles_then_bisects_to_within_the_resolution() {
        let r = find_max(&cfg(), server(73_000.0));
        let rates: Vec<f64> = r.steps.iter().map(|s| s.target_pps).collect();
        assert_eq!(
            &rates[..5],
            &[10_000.0, 20_000.0, 40_000.0, 80_000.0, 60_000.0]
        );
        assert_eq!(r.stopped, "resolution reached");
        let best = r.best.unwrap().target_pps;
        assert!(best <= 73_000.0 && best > 73_000.0 / 1.05, "{best}");
        // Every rate tried below the capacity passed, every one above failed.
        for s in &r.steps {
            assert_eq!(s.passed, s.target_pps <= 73_000.0, "{s:?}");
        }
    }

    #[test]
    fn halves_down_when_the_start_rate_fails() {
        let r = find_max(&cfg(), server(3_000.0));
        let rates: Vec<f64> = r.steps.iter().map(|s| s.target_pps).collect();
        assert_eq!(&rates[..3], &[10_000.0, 5_000.0, 2_500.0]);
        let best = r.best.unwrap().target_pps;
        assert!(best <= 3_000.0 && best > 3_000.0 / 1.05, "{best}");
    }

    #[test]
    fn stops_at_the_ceiling_the_step_budget_and_at_a_failed_run() {
        let c = SearchConfig {
            ceiling_pps: 50_000.0,
            ..cfg()
        };
        let r = find_max(&c, server(1e9));
        assert_eq!(r.stopped, "ceiling reached");
        assert_eq!(r.best.unwrap().target_pps, 50_000.0);
        assert_eq!(r.steps.len(), 4); // 10k, 20k, 40k, 50k

        let c = SearchConfig {
            max_steps: 3,
            ..cfg()
        };
        let r = find_max(&c, server(1e9));
        assert_eq!((r.steps.len(), r.stopped), (3, "step budget spent"));

        let r = find_max(&cfg(), |_| Err::<Measured, _>("no server"));
        assert!(r.best.is_none());
        assert_eq!((r.steps.len(), r.stopped), (1, "a run failed"));
        assert!(!r.steps[0].passed && r.steps[0].measured.is_none());
    }

    #[test]
    fn a_run_that_fails_after_a_pass_counts_as_a_failure_at_its_rate() {
        let mut inner = server(1e9);
        let r = find_max(&cfg(), |rate| {
            if rate > 30_000.0 {
                Err(())
            } else {
                inner(rate)
            }
        });
        let rates: Vec<f64> = r.steps.iter().map(|s| s.target_pps).collect();
        assert_eq!(&rates[..4], &[10_000.0, 20_000.0, 40_000.0, 30_000.0]);
        assert_eq!(r.stopped, "resolution reached");
        assert!(r.best.unwrap().target_pps >= 30_000.0 / 1.05);
    }

    #[test]
    fn a_generator_that_falls_behind_fails_the_step() {
        // The generator manages 30k; above that it reports what it sent, with no loss.
        let r = find_max(&cfg(), |rate: f64| {
            let sent = rate.min(30_000.0);
            Ok::<_, ()>(Measured {
                target_pps: rate,
                sent_pps: sent,
                received_pps: sent,
                loss_percent: 0.0,
            })
        });
        assert!(r.steps.iter().any(|s| s.generator_limited));
        let best = r.best.unwrap().target_pps;
        assert!(best <= 30_000.0 / 0.95 && best > 30_000.0 / 1.05, "{best}");
    }

    #[test]
    fn the_time_budget_is_kept() {
        let c = SearchConfig {
            budget: Duration::from_millis(50),
            ..cfg()
        };
        let r = find_max(&c, |rate| {
            std::thread::sleep(Duration::from_millis(20));
            server(1e9)(rate)
        });
        assert_eq!(r.stopped, "time budget spent");
        assert!(r.steps.len() <= 3, "{}", r.steps.len());
    }
}
