//! `stun-server`: see `stun-server --help` and `deploy/stun-server.toml`.

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use stun_server::config::{Cli, Defaults, Layered};
use stun_server::metrics::StunMetrics;
use stun_server::server::StunServer;
use tracing::{info, warn};
use turnkey_runtime::{logging, metrics_http, shutdown};

/// How long open TCP connections get to finish after SIGTERM/ctrl-c.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.resolve(&Defaults::default())?;
    logging::init(config.log_json, "info");
    info!(
        version = turnkey_runtime::SOFTWARE,
        listen = ?config.listen,
        alt_ip = ?config.alt_ip,
        alt_port = ?config.alt_port,
        metrics = %config.metrics,
        software = ?config.software,
        log_json = config.log_json,
        "effective configuration"
    );

    let shutdown = shutdown::on_signal();
    turnkey_runtime::shutdown::ignore_hangups("stun-server");
    let mut registry = Registry::default();
    let metrics = StunMetrics::register(&mut registry);
    // Client listeners first: the metrics listener answering means ready.
    let server = StunServer::start(config.server_config(), metrics, shutdown.clone())
        .await
        .context("starting the STUN listeners")?;
    info!(
        udp = ?server.udp_addrs(),
        tcp = ?server.tcp_addrs(),
        rfc5780 = ?server.rfc5780(),
        "STUN server listening"
    );
    let metrics_addr = metrics_http::serve(config.metrics, Arc::new(registry), shutdown.clone())
        .await
        .with_context(|| format!("binding the metrics listener {}", config.metrics))?;
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
