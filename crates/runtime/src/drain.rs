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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// The deadline in milliseconds ([`Drain::set_deadline`] may change it).
    deadline_ms: AtomicU64,
    since: OnceLock<(Instant, &'static str)>,
    gauge: Gauge,
    /// `turnkey_drain_deadline_seconds`.
    deadline_gauge: Gauge,
    hooks: Hooks,
}

/// One [`Drain::on_start`] callback.
type Hook = Box<dyn FnOnce() + Send>;

/// What runs in the call that starts the drain ([`Drain::on_start`]); `None` once it ran.
#[derive(Default)]
struct Hooks(Mutex<Option<Vec<Hook>>>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .0
            .lock()
            .map(|h| h.as_ref().map_or(0, Vec::len))
            .unwrap_or(0);
        write!(f, "Hooks({n})")
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Drain {
    /// Not draining; a drain, once started, lasts at most `deadline`.
    pub fn new(deadline: Duration) -> Self {
        let deadline_gauge = Gauge::default();
        deadline_gauge.set(i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX));
        Self {
            inner: Arc::new(Inner {
                started: CancellationToken::new(),
                deadline_ms: AtomicU64::new(millis(deadline)),
                since: OnceLock::new(),
                gauge: Gauge::default(),
                deadline_gauge,
                hooks: Hooks(Mutex::new(Some(Vec::new()))),
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
        registry.register(
            "turnkey_drain_deadline_seconds",
            "Longest a drain lasts before the node exits with work left",
            self.inner.deadline_gauge.clone(),
        );
    }

    /// Changes how long a drain lasts at most (a configuration reload), a drain under way
    /// included: its deadline is then `since + deadline`.
    pub fn set_deadline(&self, deadline: Duration) {
        self.inner
            .deadline_ms
            .store(millis(deadline), Ordering::Relaxed);
        self.inner
            .deadline_gauge
            .set(i64::try_from(deadline.as_secs()).unwrap_or(i64::MAX));
    }

    /// Runs `f` in the call that starts the drain, before [`Self::started`] resolves and
    /// before that call returns (so before `POST /admin/drain` answers), or at once when the
    /// drain has already started: for what must stop taking new work in the same instant, such
    /// as a flag the request path reads.
    pub fn on_start(&self, f: impl FnOnce() + Send + 'static) {
        let Ok(mut hooks) = self.inner.hooks.0.lock() else {
            return f();
        };
        match hooks.as_mut() {
            Some(list) => list.push(Box::new(f)),
            None => {
                drop(hooks);
                f();
            }
        }
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
            let hooks = self
                .inner
                .hooks
                .0
                .lock()
                .map(|mut h| h.take())
                .unwrap_or_default();
            for f in hooks.into_iter().flatten() {
                f();
            }
            self.inner.gauge.set(1);
            tracing::info!(
                reason = why,
                deadline_secs = self.deadline().as_secs(),
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
        Duration::from_millis(self.inner.deadline_ms.load(Ordering::Relaxed))
    }

    /// Why and since when the node drains.
    pub fn since(&self) -> Option<(Instant, &'static str)> {
        self.inner.since.get().copied()
    }

    /// Time left before the deadline (None when not draining).
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        let (at, _) = self.since()?;
        Some(
            self.deadline()
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

    #[test]
    fn hooks_run_in_the_starting_call_and_the_deadline_can_change() {
        let d = Drain::new(Duration::from_secs(300));
        let flag = Arc::new(AtomicUsize::new(0));
        let f = flag.clone();
        d.on_start(move || {
            f.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(flag.load(Ordering::SeqCst), 0, "not before the drain");
        d.set_deadline(Duration::from_secs(7));
        assert_eq!(d.deadline(), Duration::from_secs(7));
        let mut r = Registry::default();
        d.register(&mut r);
        let text = crate::metrics_http::render(&r);
        assert!(text.contains("turnkey_drain_deadline_seconds 7"), "{text}");
        assert!(d.start("test"));
        assert_eq!(flag.load(Ordering::SeqCst), 1, "ran before start returned");
        assert!(!d.start("again"));
        assert_eq!(flag.load(Ordering::SeqCst), 1, "ran once");
        // Registered after the start: runs at once.
        let f = flag.clone();
        d.on_start(move || {
            f.fetch_add(10, Ordering::SeqCst);
        });
        assert_eq!(flag.load(Ordering::SeqCst), 11);
        let left = d.remaining(Instant::now()).expect("draining");
        assert!(left <= Duration::from_secs(7), "{left:?}");
    }

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
