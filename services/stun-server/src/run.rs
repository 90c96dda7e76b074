//! The server lifecycle: bind the client listeners, then the metrics listener (so `/healthz`
//! answering means ready), serve until SIGTERM/ctrl-c, then let open TCP connections finish
//! for up to [`DRAIN_TIMEOUT`].

use crate::config::Config;
use crate::io::{ServerError, StunServer};
use crate::metrics::StunMetrics;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use turnkey_runtime::{metrics_http, shutdown};

/// How long open TCP connections get to finish after SIGTERM/ctrl-c.
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

/// Serves `config` until SIGTERM or ctrl-c, then drains.
///
/// Errors: [`RunError`] when a listener cannot be bound.
pub async fn run_until_signal(config: &Config) -> Result<(), RunError> {
    let shutdown = shutdown::on_signal();
    shutdown::ignore_hangups("stun-server");
    let mut registry = Registry::default();
    let metrics = StunMetrics::register(&mut registry);
    // Client listeners first: the metrics listener answering means ready.
    let server = StunServer::start(config.server_config(), metrics, shutdown.clone()).await?;
    info!(
        udp = ?server.udp_addrs(),
        tcp = ?server.tcp_addrs(),
        rfc5780 = ?server.rfc5780(),
        "STUN server listening"
    );
    let metrics_addr = metrics_http::serve(config.metrics, Arc::new(registry), shutdown.clone())
        .await
        .map_err(|source| RunError::Metrics {
            addr: config.metrics,
            source,
        })?;
    info!(%metrics_addr, "serving /metrics and /healthz");

    shutdown.cancelled().await;
    if tokio::time::timeout(DRAIN_TIMEOUT, server.join())
        .await
        .is_err()
    {
        warn!("drain timed out; exiting anyway");
    }
    info!("stopped");
    Ok(())
}
