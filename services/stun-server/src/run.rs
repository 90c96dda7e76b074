//! The server lifecycle: bind the client listeners, then the metrics listener (so `/healthz`
//! answering means ready), serve until a drain starts, then drain and exit.
//!
//! A drain ([`turnkey_runtime::drain`]) starts on the first SIGTERM/SIGINT or on
//! `POST /admin/drain` on the metrics listener (bearer `admin_token`). STUN keeps no state, so
//! there is nothing to wait for: for `drain_timeout_secs` `GET /readyz` answers 503 while
//! Binding requests are still answered, so that load balancers stop sending clients before the
//! server stops; then the listeners close, open TCP connections get up to
//! [`DRAIN_TIMEOUT`] to finish, and the process exits 0.

use crate::config::Config;
use crate::io::{ServerError, StunServer};
use crate::metrics::StunMetrics;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use turnkey_runtime::drain::Drain;
use turnkey_runtime::{metrics_http, shutdown};

/// How long open TCP connections get to finish once the drain is over and the listeners have
/// closed.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A client listener could not be bound.
    #[error("starting the STUN listeners: {0}")]
    Listen(#[from] ServerError),
    /// The metrics listener could not be bound.
    #[error("binding the metrics listener {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Serves `config` until a drain (SIGTERM, ctrl-c or `POST /admin/drain`) has run its course.
///
/// Errors: [`RunError`] when a listener cannot be bound.
pub async fn run_until_signal(config: &Config) -> Result<(), RunError> {
    let drain = Drain::new(Duration::from_secs(config.drain_timeout_secs));
    drain.start_on_signal();
    serve(config, drain).await
}

/// Serves `config` until `drain` has started and its deadline has passed, then stops.
///
/// Errors: [`RunError`] when a listener cannot be bound.
pub async fn serve(config: &Config, drain: Drain) -> Result<(), RunError> {
    shutdown::ignore_hangups("stun-server");
    let stop = CancellationToken::new();
    let mut registry = Registry::default();
    let metrics = StunMetrics::register(&mut registry);
    drain.register(&mut registry);
    // Client listeners first: the metrics listener answering means ready.
    let server = StunServer::start(config.server_config(), metrics, stop.clone()).await?;
    info!(
        udp = ?server.udp_addrs(),
        tcp = ?server.tcp_addrs(),
        rfc5780 = ?server.rfc5780(),
        "STUN server listening"
    );
    let metrics_addr = metrics_http::serve_drainable(
        config.metrics,
        Arc::new(registry),
        stop.clone(),
        drain.clone(),
        config.admin_token.clone(),
    )
    .await
    .map_err(|source| RunError::Metrics {
        addr: config.metrics,
        source,
    })?;
    info!(%metrics_addr, "serving /metrics, /healthz, /readyz and POST /admin/drain");

    drain.started().await;
    let grace = drain.remaining(Instant::now()).unwrap_or_default();
    info!(
        grace_secs = grace.as_secs(),
        "draining: /readyz answers 503; Binding requests are answered until the grace ends"
    );
    // STUN is stateless: nothing ends the drain early but the deadline (which a reload of the
    // caller's may move: asked again after each wait).
    while let Some(left) = drain.remaining(Instant::now()).filter(|d| !d.is_zero()) {
        tokio::time::sleep(left).await;
    }
    stop.cancel();
    if tokio::time::timeout(DRAIN_TIMEOUT, server.join())
        .await
        .is_err()
    {
        warn!("open TCP connections did not finish in time; exiting anyway");
    }
    info!("stopped");
    Ok(())
}
