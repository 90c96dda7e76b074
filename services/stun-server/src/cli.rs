//! `stun-server`: see `stun-server --help` and `deploy/stun-server.toml`.

use crate::config::{Cli, Defaults, Layered};
use clap::Parser;
use tracing::info;
use turnkey_runtime::logging;

#[tokio::main]
pub async fn main() -> anyhow::Result<()> {
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
        drain_timeout_secs = config.drain_timeout_secs,
        admin_token = if config.admin_token.is_some() { "<redacted>" } else { "none" },
        "effective configuration"
    );

    crate::run::run_until_signal(&config).await?;
    Ok(())
}
