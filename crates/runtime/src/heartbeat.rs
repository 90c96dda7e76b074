//! Registry heartbeats: what keeps a node's entry alive in a store where the entry expires a
//! few periods after the last beat (signaling's channel nodes, SFU nodes).
//!
//! A beat is bounded by the period. One that failed or timed out is tried again a quarter
//! period later, not a whole one, so a store that answers again gets the entry back before it
//! expires. A drain is announced at once, not at the next beat, so placement stops choosing the
//! node within one store round trip.

use crate::drain::Drain;
use std::future::Future;
use std::time::Duration;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Calls `beat` every `period`, the first time one period from now (the caller beat before
/// starting this), until `shutdown`; and at once when `drain` starts. `beat` says whether the
/// store took the beat (it reports its own errors). A beat that takes longer than `period` is
/// abandoned and `on_timeout` called. After a failure or a timeout the next beat comes a quarter
/// period later.
pub async fn keep_beating<F>(
    period: Duration,
    shutdown: CancellationToken,
    drain: Drain,
    mut beat: impl FnMut() -> F,
    mut on_timeout: impl FnMut(),
) where
    F: Future<Output = bool>,
{
    let mut next = Instant::now() + period;
    let mut announced = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep_until(next) => {}
            _ = drain.started(), if !announced => announced = true,
        }
        let ok = match timeout(period, beat()).await {
            Ok(ok) => ok,
            Err(_) => {
                on_timeout();
                false
            }
        };
        next = Instant::now() + if ok { period } else { period / 4 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Beats (virtual ms since start, answered with the next of `answers`; `None` hangs) and
    /// timeouts seen until `until_ms`, with a drain started at `drain_at_ms`.
    async fn run(
        answers: Vec<Option<bool>>,
        drain_at_ms: Option<u64>,
        until_ms: u64,
    ) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let shutdown = CancellationToken::new();
        let drain = Drain::new(Duration::from_secs(60));
        let ms = move || start.elapsed().as_millis();
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let (s1, s2) = (seen.clone(), seen.clone());
        let task = tokio::spawn(keep_beating(
            Duration::from_secs(2),
            shutdown.clone(),
            drain.clone(),
            move || {
                let answer = answers.lock().unwrap().next().unwrap_or(Some(true));
                s1.lock().unwrap().push(format!("beat {}", ms()));
                async move {
                    match answer {
                        Some(ok) => ok,
                        None => std::future::pending().await,
                    }
                }
            },
            move || s2.lock().unwrap().push(format!("timeout {}", ms())),
        ));
        if let Some(at) = drain_at_ms {
            tokio::time::sleep(Duration::from_millis(at)).await;
            drain.start("test");
        }
        tokio::time::sleep_until(start + Duration::from_millis(until_ms)).await;
        shutdown.cancel();
        task.await.unwrap();
        let v = seen.lock().unwrap().clone();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn beats_every_period_and_retries_a_failure_a_quarter_period_later() {
        assert_eq!(
            run(vec![Some(true), Some(false), Some(true)], None, 7000).await,
            ["beat 2000", "beat 4000", "beat 4500", "beat 6500"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_beat_is_abandoned_after_a_period_and_retried_a_quarter_period_later() {
        assert_eq!(
            run(vec![None, Some(true)], None, 7000).await,
            ["beat 2000", "timeout 4000", "beat 4500", "beat 6500"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_is_announced_at_once_and_only_once() {
        assert_eq!(
            run(vec![], Some(500), 5000).await,
            ["beat 500", "beat 2500", "beat 4500"]
        );
    }
}
