//! The whole server lifecycle shared by the `turn-server` and `turnkey` binaries: bind the
//! client listeners, then the metrics listener (so `/healthz` answering means ready), serve
//! until a drain starts, then drain and return (the binary exits 0).
//!
//! **Drain** (issue 15, [`turnkey_runtime::drain`]): it starts on SIGTERM or SIGINT, on `POST
//! /admin/drain` on the metrics listener, or on the admin API's `POST /v1/drain?exit=true`
//! (both with the `admin_token` bearer). From that instant every new Allocate is refused, 508
//! or, with `alternate_server`, 300 Try Alternate (counted in
//! `turn_quota_rejections_total{scope="draining"}` and `turn_alternate_redirects_total`), while
//! the live allocations keep everything (Refresh, permissions, channels, Send and ChannelData,
//! TCP relays) and Binding requests are answered; `GET /readyz` answers 503, `/healthz` stays
//! 200. The drain ends when the last allocation is gone or `drain_timeout_secs` has passed;
//! then the workers stop (cutting what is left, reason `shutdown`) and [`serve`] returns.
//!
//! The drain reaches the workers through one flag in [`turn_proto::core::Shared`], set in the
//! call that starts the drain ([`turnkey_runtime::drain::Drain::on_start`]) and read on the
//! Allocate path only: the relay path reads nothing shared for it.
//!
//! **Load**: every [`crate::load::SAMPLE_PERIOD`] the load gauges (`turn_load_ratio`,
//! `turn_relayed_bps`) are set from the live allocations and the relayed byte counters.

use crate::config::TurnConfig;
use crate::io::admin::AdminLive;
use crate::io::fleet::{FleetCredentials, FleetRedis};
use crate::metrics::TurnMetrics;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stun_server::metrics::StunMetrics;
use tokio_util::sync::CancellationToken;
use turn_proto::core::Shared;
use turnkey_runtime::drain::{Drain, DrainEnd};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A client listener could not be bound (in use, no such address...).
    #[error("binding client listeners {addrs:?}: {source}")]
    Listen {
        /// The configured listeners.
        addrs: Vec<SocketAddr>,
        /// The cause.
        source: std::io::Error,
    },
    /// The admin API listener could not be bound.
    #[error("binding admin listener {addr}: {source}")]
    Admin {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The fleet Redis configuration is unusable (the URL is never shown).
    #[error("{0}")]
    Fleet(crate::io::fleet::FleetError),
    /// The metrics listener could not be bound.
    #[error("binding metrics listener {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the running server listens; handed to the `on_ready` callback.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Client listeners (UDP and TCP), port 0 resolved.
    pub listen: Vec<SocketAddr>,
    /// TLS listeners, port 0 resolved.
    pub listen_tls: Vec<SocketAddr>,
    /// DTLS listeners, port 0 resolved.
    pub listen_dtls: Vec<SocketAddr>,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The admin API listener, when configured.
    pub admin: Option<SocketAddr>,
}

/// Runs the server until a shutdown signal (SIGTERM, ctrl-c) starts the drain, and returns once
/// the drain has finished. See [`serve`].
pub async fn run_until_signal(
    cfg: &TurnConfig,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    serve(cfg, turnkey_runtime::shutdown::on_signal(), on_ready).await
}

/// Runs the server; cancelling `shutdown` starts the drain (as does `POST /admin/drain`), and
/// this returns once the drain has finished: the last allocation gone or
/// `cfg.drain_timeout_secs` passed. `on_ready` runs once every listener is bound. Must be
/// called inside a tokio runtime.
pub async fn serve(
    cfg: &TurnConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    serve_with_reload(cfg, None, shutdown, on_ready).await
}

/// How the configuration is read again on SIGHUP or when its file changes.
pub struct Reload {
    /// Reads the configuration again: the file, with the command line's flags and environment
    /// on top (as at start).
    pub resolve: Box<dyn Fn() -> Result<TurnConfig, String> + Send + Sync>,
    /// The file to watch for changes (polled every [`RELOAD_POLL`]); `None`: SIGHUP only.
    pub watch: Option<PathBuf>,
    /// The log filter handle, for `log_level`.
    pub log: Option<turnkey_runtime::logging::LogLevel>,
}

impl std::fmt::Debug for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reload")
            .field("watch", &self.watch)
            .finish()
    }
}

/// How often the config file is checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// [`serve`], and with `reload` the configuration is read again on SIGHUP and whenever its
/// file changes: users, REST secrets, realm, peer policy, quotas, lifetimes, the
/// unauthenticated rate, alternate servers, the admin token, the log level, the drain
/// deadline and the capacities take effect at once; live allocations are kept. A file that
/// fails to load leaves the configuration in force and logs why; a change to a key that needs
/// a restart (listeners, relay addresses and ports, workers, certificates' paths, log format)
/// is logged and ignored.
pub async fn serve_with_reload(
    cfg: &TurnConfig,
    reload: Option<Reload>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    let drain = Drain::new(Duration::from_secs(cfg.drain_timeout_secs));
    serve_inner(cfg, reload, drain, Some(shutdown), on_ready).await
}

/// [`serve_with_reload`] under a drain the caller holds (started by whatever the caller
/// wires to it, e.g. [`Drain::start_on_signal`], or shared with other services of the process);
/// its deadline follows `drain_timeout_secs` on reloads.
pub async fn serve_with_drain(
    cfg: &TurnConfig,
    reload: Option<Reload>,
    drain: Drain,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    serve_inner(cfg, reload, drain, None, on_ready).await
}

async fn serve_inner(
    cfg: &TurnConfig,
    reload: Option<Reload>,
    drain: Drain,
    start_on: Option<CancellationToken>,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    // Every listener and task stops on `stop`: when the drain has finished.
    let stop = CancellationToken::new();
    if let Some(token) = start_on {
        let (d, s) = (drain.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {
                    d.start("shutdown");
                }
                _ = s.cancelled() => {}
            }
        });
    }
    tracing::info!(config = %cfg.redacted(), "starting turn server");
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = TurnMetrics::register(&mut registry);
    let stun_metrics = StunMetrics::register(&mut registry);
    drain.register(&mut registry);
    let admin_metrics = metrics.admin.clone();
    let load_metrics = metrics.clone();
    // Fleet state: the Redis credentials, read (for a few seconds at most) before serving.
    let base = cfg.clone();
    let fleet_redis = match &cfg.fleet {
        Some(f) => Some(Arc::new(FleetRedis::new(f).map_err(RunError::Fleet)?)),
        None => None,
    };
    let (creds_tx, creds_rx) = tokio::sync::watch::channel::<Option<Arc<FleetCredentials>>>(None);
    if let Some(redis) = &fleet_redis {
        if let Some(c) = crate::io::fleet::initial_credentials(redis, &admin_metrics.fleet).await {
            creds_tx.send_replace(Some(Arc::new(c)));
        }
    }
    let cfg = &with_fleet_credentials(base.clone(), &creds_rx);
    if cfg.users.is_empty() && cfg.auth_secrets.is_empty() {
        tracing::warn!("no user and no auth secret: every allocation will be refused (401)");
    }
    admin_metrics.bandwidth_caps(&cfg.bandwidth);
    let server =
        crate::io::start(cfg, metrics, stun_metrics).map_err(|source| RunError::Listen {
            addrs: cfg.listen.clone(),
            source,
        })?;
    let server = Arc::new(server);
    // New allocations are refused from the call that starts the drain on (at once if it
    // already started).
    {
        let (shared, m) = (server.shared.clone(), admin_metrics.clone());
        drain.on_start(move || {
            shared.start_draining();
            m.draining(true);
        });
    }
    let live = Arc::new(std::sync::RwLock::new(AdminLive {
        config: Arc::new(cfg.redacted_json()),
        token: Arc::from(cfg.admin_token.as_deref().unwrap_or_default()),
    }));
    let admin = match (cfg.admin_listen, &cfg.admin_token) {
        (Some(addr), Some(_)) => {
            let state = crate::io::admin::AdminState {
                workers: server.workers.clone(),
                shared: server.shared.clone(),
                live: live.clone(),
                metrics: admin_metrics.clone(),
                fleet: fleet_redis.as_ref().map(|r| crate::io::admin::AdminFleet {
                    redis: r.clone(),
                    node: cfg.node_name.clone(),
                }),
                drain: drain.clone(),
            };
            Some(
                crate::io::admin::serve(addr, state, stop.clone())
                    .await
                    .map_err(|source| RunError::Admin { addr, source })?,
            )
        }
        _ => None,
    };
    // `POST /admin/drain` takes the admin token in force (a reload may change it).
    let token_live = live.clone();
    let token: turnkey_runtime::metrics_http::TokenSource = Arc::new(move || {
        let t = match token_live.read() {
            Ok(l) => l.token.clone(),
            Err(p) => p.into_inner().token.clone(),
        };
        (!t.is_empty()).then(|| t.to_string())
    });
    let metrics_addr = turnkey_runtime::metrics_http::serve_drainable_with(
        cfg.metrics,
        Arc::new(registry),
        stop.clone(),
        drain.clone(),
        token,
    )
    .await
    .map_err(|source| RunError::Metrics {
        addr: cfg.metrics,
        source,
    })?;
    if let Some(certs) = &server.certs {
        // SIGHUP reloads the certificate.
        tokio::spawn(turnkey_tls::watch(
            certs.clone(),
            Duration::from_secs(2),
            stop.clone(),
        ));
    }
    let current = Arc::new(std::sync::RwLock::new(cfg.clone()));
    load_metrics
        .load
        .set(0, 0.0, cfg.capacity_allocations, cfg.capacity_relay_bps);
    tokio::spawn(load_loop(
        load_metrics,
        server.shared.clone(),
        current.clone(),
        stop.clone(),
    ));
    if let Some(redis) = &fleet_redis {
        tracing::info!(node = %cfg.node_name, "fleet state in Redis: watching credentials, publishing this node's summary");
        tokio::spawn(crate::io::fleet::watch_credentials(
            redis.clone(),
            creds_tx,
            admin_metrics.fleet.clone(),
            stop.clone(),
        ));
        let publisher = crate::io::fleet::Publisher {
            redis: redis.clone(),
            node: cfg.node_name.clone(),
            workers: server.workers.clone(),
            shared: server.shared.clone(),
            worker_count: cfg.workers,
            metrics: admin_metrics.fleet.clone(),
        };
        tokio::spawn(publisher.run(stop.clone()));
    }
    // Nothing to reload on SIGHUP: it must not end the server.
    if reload.is_none() && server.certs.is_none() {
        turnkey_runtime::shutdown::ignore_hangups("turn-server");
    }
    if reload.is_some() || fleet_redis.is_some() {
        tokio::spawn(reload_loop(
            reload,
            Reloading {
                server: server.clone(),
                base: std::sync::RwLock::new(base),
                creds: creds_rx,
                current: current.clone(),
                live,
                metrics: admin_metrics.clone(),
                drain: drain.clone(),
            },
            stop.clone(),
        ));
    }
    let ready = Ready {
        listen: server.listen.clone(),
        listen_tls: server.listen_tls.clone(),
        listen_dtls: server.listen_dtls.clone(),
        metrics: metrics_addr,
        admin,
    };
    tracing::info!(listen = ?ready.listen, tls = ?ready.listen_tls, dtls = ?ready.listen_dtls, metrics = %ready.metrics, admin = ?ready.admin, workers = cfg.workers, "ready");
    on_ready(&ready);
    drain.started().await;
    // What the operator is waiting for, and how to skip it.
    tracing::info!(
        allocations = server.shared.total_allocations(),
        up_to_secs = drain.deadline().as_secs(),
        "draining: new allocations are refused, the live ones served until they end \
         (SIGINT/Ctrl-C again exits at once)"
    );
    let shared = server.shared.clone();
    let end = drain
        .finished(
            move || shared.total_allocations() == 0,
            Duration::from_millis(100),
        )
        .await;
    match end {
        DrainEnd::Empty => tracing::info!("drained: no allocation left"),
        DrainEnd::Deadline => tracing::warn!(
            allocations = server.shared.total_allocations(),
            deadline_secs = drain.deadline().as_secs(),
            "drain deadline passed: ending the live allocations"
        ),
    }
    stop.cancel();
    server.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Sets the load gauges every [`crate::load::SAMPLE_PERIOD`] until `stop`: live allocations
/// and the relayed bit rate over [`crate::load::RATE_WINDOW`] against the capacities in force.
async fn load_loop(
    metrics: TurnMetrics,
    shared: Arc<Shared>,
    current: Arc<std::sync::RwLock<TurnConfig>>,
    stop: CancellationToken,
) {
    let mut window = crate::load::RateWindow::new(crate::load::RATE_WINDOW);
    let mut tick = tokio::time::interval(crate::load::SAMPLE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (capacity_allocations, capacity_relay_bps) = match current.read() {
            Ok(c) => (c.capacity_allocations, c.capacity_relay_bps),
            Err(p) => {
                let c = p.into_inner();
                (c.capacity_allocations, c.capacity_relay_bps)
            }
        };
        let bps = window.sample(std::time::Instant::now(), metrics.relayed_bytes_total());
        metrics.load.set(
            u64::from(shared.total_allocations()),
            bps,
            capacity_allocations,
            capacity_relay_bps,
        );
    }
}

/// `cfg` (the file's and flags' configuration) with the latest Redis credentials added
/// ([`FleetCredentials::overlay`]): what is put in force at start, on every reload and on every
/// credential change in Redis.
fn with_fleet_credentials(
    mut cfg: TurnConfig,
    creds: &tokio::sync::watch::Receiver<Option<Arc<FleetCredentials>>>,
) -> TurnConfig {
    if let Some(c) = creds.borrow().as_deref() {
        c.overlay(&mut cfg);
    }
    cfg
}

/// What a reload changes.
struct Reloading {
    server: Arc<crate::io::RunningServer>,
    /// The configuration last resolved from the file and flags, without the Redis credentials.
    base: std::sync::RwLock<TurnConfig>,
    /// The latest Redis credentials (never changes without fleet state).
    creds: tokio::sync::watch::Receiver<Option<Arc<FleetCredentials>>>,
    current: Arc<std::sync::RwLock<TurnConfig>>,
    live: Arc<std::sync::RwLock<AdminLive>>,
    metrics: crate::metrics::AdminMetrics,
    /// The node's drain: its deadline follows `drain_timeout_secs`.
    drain: Drain,
}

/// The file's modification time and length, to notice a change.
fn file_stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

async fn reload_loop(reload: Option<Reload>, r: Reloading, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hup = match &reload {
        Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        None => None,
    };
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watch = reload.as_ref().and_then(|r| r.watch.clone());
    let mut stamp = watch.as_deref().and_then(file_stamp);
    let mut creds = r.creds.clone();
    let mut creds_open = true;
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<()>();
        let creds_fut = async {
            if !creds_open || creds.changed().await.is_err() {
                creds_open = false;
                std::future::pending::<()>().await;
            }
        };
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup_fut => {
                tracing::info!("SIGHUP received: reading the configuration again");
                "sighup"
            }
            _ = creds_fut => "redis",
            _ = tick.tick() => {
                let Some(path) = watch.as_deref() else { continue };
                let now = file_stamp(path);
                if now == stamp {
                    continue;
                }
                stamp = now;
                "file_changed"
            }
        };
        let log = reload.as_ref().and_then(|l| l.log.as_ref());
        if trigger == "redis" {
            let base = match r.base.read() {
                Ok(b) => b.clone(),
                Err(p) => p.into_inner().clone(),
            };
            apply(&r, log, base, trigger).await;
            continue;
        }
        let Some(reload) = reload.as_ref() else {
            continue;
        };
        let new = match (reload.resolve)() {
            Ok(c) => c,
            Err(e) => {
                r.metrics.reload(false);
                tracing::error!(trigger, error = %e, "config reload failed: the configuration in force stays");
                continue;
            }
        };
        if let Ok(mut b) = r.base.write() {
            *b = new.clone();
        }
        apply(&r, log, new, trigger).await;
        // What was just read needs no second reload when the poll sees it.
        if let Some(path) = watch.as_deref() {
            stamp = file_stamp(path);
        }
    }
}

/// Puts the reloadable part of `new` (a configuration just resolved from the file and flags,
/// or the last one when the Redis credentials changed), with the latest Redis credentials
/// added, in force on every worker and in the admin API.
async fn apply(
    r: &Reloading,
    log: Option<&turnkey_runtime::logging::LogLevel>,
    new: TurnConfig,
    trigger: &'static str,
) {
    let new = with_fleet_credentials(new, &r.creds);
    let old = match r.current.read() {
        Ok(c) => c.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let restart_only = old.restart_only_changes(&new);
    if !restart_only.is_empty() {
        tracing::warn!(trigger, keys = ?restart_only, "config reload: these keys need a restart; their values in force stay");
    }
    let new = old.reloadable_part_of(new);
    let changed = old.reloadable_changes(&new);
    if let Err(crate::io::admin::WorkerBusy) = r.server.reconfigure(&new).await {
        r.metrics.reload(false);
        tracing::error!(trigger, "config reload failed: a worker did not take the new configuration in time; retry (SIGHUP)");
        return;
    }
    if old.log_level != new.log_level {
        if let Some(log) = log {
            let filter = new
                .log_level
                .clone()
                .or_else(|| std::env::var("RUST_LOG").ok())
                .unwrap_or_else(|| "info".into());
            if let Err(e) = log.set(&filter) {
                tracing::warn!(error = %e, "config reload: log_level not applied");
            }
        }
    }
    if let Ok(mut l) = r.live.write() {
        *l = AdminLive {
            config: Arc::new(new.redacted_json()),
            token: Arc::from(new.admin_token.as_deref().unwrap_or_default()),
        };
    }
    r.drain
        .set_deadline(Duration::from_secs(new.drain_timeout_secs));
    if let Ok(mut c) = r.current.write() {
        *c = new;
    }
    r.metrics.reload(true);
    tracing::info!(trigger, changed = ?changed, "config reloaded");
}
