//! The whole server lifecycle shared by the `turn-server` and `turnkey` binaries: bind the
//! client listeners, then the metrics listener (so `/healthz` answering means ready), serve
//! until SIGTERM or ctrl-c, then drain.

use crate::config::TurnConfig;
use crate::metrics::TurnMetrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use stun_server::metrics::StunMetrics;

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

/// Runs the server until a shutdown signal (SIGTERM, ctrl-c), then drains. See [`serve`].
pub async fn run_until_signal(
    cfg: &TurnConfig,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    serve(cfg, turnkey_runtime::shutdown::on_signal(), on_ready).await
}

/// Runs the server until `shutdown` is cancelled, then drains for `cfg.drain_timeout_secs`.
/// `on_ready` runs once every listener is bound. Must be called inside a tokio runtime.
pub async fn serve(
    cfg: &TurnConfig,
    shutdown: tokio_util::sync::CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    tracing::info!(config = %cfg.redacted(), "starting turn server");
    if cfg.users.is_empty() && cfg.auth_secrets.is_empty() {
        tracing::warn!("no user and no auth secret: every allocation will be refused (401)");
    }
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = TurnMetrics::register(&mut registry);
    let stun_metrics = StunMetrics::register(&mut registry);
    let admin_metrics = metrics.admin.clone();
    admin_metrics.bandwidth_caps(&cfg.bandwidth);
    let server =
        crate::io::start(cfg, metrics, stun_metrics).map_err(|source| RunError::Listen {
            addrs: cfg.listen.clone(),
            source,
        })?;
    let admin = match (cfg.admin_listen, &cfg.admin_token) {
        (Some(addr), Some(token)) => {
            let state = crate::io::admin::AdminState {
                workers: server.workers.clone(),
                shared: server.shared.clone(),
                config: Arc::new(cfg.redacted_json()),
                token: Arc::from(token.as_str()),
                metrics: admin_metrics.clone(),
            };
            Some(
                crate::io::admin::serve(addr, state, shutdown.clone())
                    .await
                    .map_err(|source| RunError::Admin { addr, source })?,
            )
        }
        _ => None,
    };
    let metrics_addr =
        turnkey_runtime::metrics_http::serve(cfg.metrics, Arc::new(registry), shutdown.clone())
            .await
            .map_err(|source| RunError::Metrics {
                addr: cfg.metrics,
                source,
            })?;
    match &server.certs {
        // SIGHUP reloads the certificate.
        Some(certs) => {
            tokio::spawn(turnkey_tls::watch(
                certs.clone(),
                Duration::from_secs(2),
                shutdown.clone(),
            ));
        }
        // Nothing to reload: SIGHUP must not end the server.
        None => turnkey_runtime::shutdown::ignore_hangups("turn-server"),
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
    shutdown.cancelled().await;
    admin_metrics.draining(true);
    server
        .shutdown(Duration::from_secs(cfg.drain_timeout_secs))
        .await;
    tracing::info!("stopped");
    Ok(())
}
