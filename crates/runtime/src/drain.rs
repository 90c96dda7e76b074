//! Drain: a node leaving service gracefully. From the moment a drain starts, the node takes no
//! new work (rooms, participants, allocations: each service says what), keeps serving what it
//! has until that ends or the drain deadline passes, and then exits with status 0.
//!
//! A drain starts on the first SIGTERM or SIGINT ([`Drain::start_on_signal`]; a second one
//! still exits at once, see [`crate::shutdown`]) or on `POST /admin/drain` on the metrics
//! listener ([`crate::metrics_http::serve_drainable`]). Readiness (`GET /readyz`) turns false
//! when it starts; liveness (`GET /healthz`) stays true until the process exits, so an
//! orchestrator stops sending new clients without killing the node.
//!
//! `turnkey_draining` (gauge, 0 or 1) says whether the node is draining, and
//! `turnkey_drain_deadline_seconds` (gauge) how long a drain may last.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainEnd {
    /// Nothing was left to serve.
    Empty,
    /// The deadline passed with work still being served (it is cut off).
    Deadline,
}

/// A node's drain state; cheap to clone, every clone sees the same drain.
#[derive(Clone, Debug)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    started: CancellationToken,
    deadline: Duration,
    since: OnceLock<(Instant, &'static str)>,
    gauge: Gauge,
}

impl Drain {
    /// Not draining; a drain, once started, lasts at most `deadline`.
    pub fn new(deadline: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                started: CancellationToken::new(),
                deadline,
                since: OnceLock::new(),
                gauge: Gauge::default(),
            }),
        }
    }

    /// Registers `turnkey_draining` and `turnkey_drain_deadline_seconds` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "turnkey_draining",
            "1 while the node drains (takes no new work, serves what it has)",
            self.inner.gauge.clone(),
        );
        let deadline: Gauge = Gauge::default();
        deadline.set(self.inner.deadline.as_secs() as i64);
        registry.register(
            "turnkey_drain_deadline_seconds",
            "Longest a drain lasts before the node exits with work left",
            deadline,
        );
    }

    /// Starts the drain (`why` is logged: `signal`, `admin`...). True if this call started
    /// it, false if it had already started.
    pub fn start(&self, why: &'static str) -> bool {
        let mut first = false;
        self.inner.since.get_or_init(|| {
            first = true;
            (Instant::now(), why)
        });
        if first {
            self.inner.gauge.set(1);
            tracing::info!(
                reason = why,
                deadline_secs = self.inner.deadline.as_secs(),
                "draining: no new work; serving what is left until it ends or the deadline"
            );
            self.inner.started.cancel();
        }
        first
    }

    /// Starts the drain on the first SIGTERM or SIGINT (a second one exits at once). Must be
    /// called inside a tokio runtime.
    pub fn start_on_signal(&self) {
        let signal = crate::shutdown::on_signal();
        let d = self.clone();
        tokio::spawn(async move {
            signal.cancelled().await;
            d.start("signal");
        });
    }

    /// True once the drain started.
    pub fn is_draining(&self) -> bool {
        self.inner.started.is_cancelled()
    }

    /// Resolves when the drain starts.
    pub async fn started(&self) {
        self.inner.started.cancelled().await;
    }

    /// The longest a drain lasts.
    pub fn deadline(&self) -> Duration {
        self.inner.deadline
    }

    /// Why and since when the node drains.
    pub fn since(&self) -> Option<(Instant, &'static str)> {
        self.inner.since.get().copied()
    }

    /// Time left before the deadline (None when not draining).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let (at, _) = self.since()?;
        Some(
            self.inner
                .deadline
                .saturating_sub(now.saturating_duration_since(at)),
        )
    }

    /// Waits for the drain to start, then until `empty()` is true (asked every `poll`) or the
    /// deadline passes.
    pub async fn finished(&self, mut empty: impl FnMut() -> bool, poll: Duration) -> DrainEnd {
        self.started().await;
        loop {
            if empty() {
                return DrainEnd::Empty;
            }
            match self.remaining(Instant::now()) {
                Some(left) if !left.is_zero() => tokio::time::sleep(poll.min(left)).await,
                _ => return DrainEnd::Deadline,
            }
        }
    }

    /// A token cancelled when the drain has finished (see [`Self::finished`]): what the
    /// service's tasks watch to stop. The outcome is logged.
    pub fn shutdown_when_finished(
        &self,
        empty: impl FnMut() -> bool + Send + 'static,
        poll: Duration,
    ) -> CancellationToken {
        let token = CancellationToken::new();
        let t = token.clone();
        let d = self.clone();
        tokio::spawn(async move {
            let end = d.finished(empty, poll).await;
            match end {
                DrainEnd::Empty => tracing::info!("drained: nothing left to serve; exiting"),
                DrainEnd::Deadline => tracing::warn!(
                    deadline_secs = d.deadline().as_secs(),
                    "drain deadline passed with work left; exiting"
                ),
            }
            t.cancel();
        });
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_drain_ends_when_empty_or_at_its_deadline() {
        let d = Drain::new(Duration::from_secs(5));
        assert!(!d.is_draining());
        assert!(d.remaining(Instant::now()).is_none());
        let left = Arc::new(AtomicUsize::new(2));
        let l = left.clone();
        let token = d.shutdown_when_finished(
            move || l.load(Ordering::Relaxed) == 0,
            Duration::from_millis(5),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!token.is_cancelled(), "no drain yet");
        assert!(d.start("test"));
        assert!(!d.start("again"), "started once");
        assert!(d.is_draining());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!token.is_cancelled(), "work is left");
        left.store(0, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(2), token.cancelled())
            .await
            .expect("ends once empty");

        let d = Drain::new(Duration::from_millis(50));
        d.start("test");
        let t0 = Instant::now();
        let end = d.finished(|| false, Duration::from_millis(10)).await;
        assert_eq!(end, DrainEnd::Deadline);
        assert!(t0.elapsed() >= Duration::from_millis(40));
    }
}
