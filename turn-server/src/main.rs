//! `turn-server`: the TURN relay (answers STUN Binding too). See `turn-server --help`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use turn_server::config::{Defaults, ServerArgs};
use turn_server::proto::auth::mint_rest_credential;

#[derive(Parser)]
#[command(
    name = "turn-server",
    version,
    about = "turnkey TURN server (RFC 8656)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: ServerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print a TURN REST API credential as JSON: {"username","password","ttl"}.
    Credentials {
        /// The shared secret (same as the server's --auth-secret).
        #[arg(long, env = "TURNKEY_AUTH_SECRET", hide_env_values = true)]
        secret: String,
        /// The user name part.
        #[arg(long)]
        user: String,
        /// Seconds the credential is valid.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Credentials { secret, user, ttl }) = cli.command {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let c = mint_rest_credential(&secret, &user, ttl, now);
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    let cfg = cli.args.resolve(&Defaults::default())?;
    turnkey_common::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: turn_server::config::TurnConfig) -> anyhow::Result<()> {
    tracing::info!(config = %cfg.redacted(), "starting turn-server");
    if cfg.users.is_empty() && cfg.auth_secrets.is_empty() {
        tracing::warn!("no --user and no --auth-secret: every allocation will be refused (401)");
    }
    let shutdown = turnkey_common::shutdown::on_signal();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = turn_server::metrics::TurnMetrics::register(&mut registry);
    let stun_metrics = stun_server::metrics::StunMetrics::register(&mut registry);
    let server = turn_server::io::start(&cfg, metrics, stun_metrics)
        .with_context(|| format!("binding client listeners {:?}", cfg.listen))?;
    let m = turnkey_common::metrics_http::serve(cfg.metrics, Arc::new(registry), shutdown.clone())
        .await
        .with_context(|| format!("binding metrics listener {}", cfg.metrics))?;
    tracing::info!(listen = ?server.listen, metrics = %m, workers = cfg.workers, "ready");
    shutdown.cancelled().await;
    server
        .shutdown(Duration::from_secs(cfg.drain_timeout_secs))
        .await;
    tracing::info!("stopped");
    Ok(())
}
