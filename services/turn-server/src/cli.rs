//! `turn-server`: the TURN relay (answers STUN Binding too). See `turn-server --help`.

use crate::config::Layered;
use crate::config::{Defaults, ServerArgs};
use clap::{Parser, Subcommand};
use std::time::{SystemTime, UNIX_EPOCH};
use stun_proto::credential::mint_rest_credential;

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
        /// The shared secret (same as the server's --auth-secret; from TURNKEY_AUTH_SECRETS, the
        /// first of a comma-separated list signs).
        #[arg(
            long,
            env = "TURNKEY_AUTH_SECRETS",
            value_delimiter = ',',
            required = true,
            hide_env_values = true
        )]
        secret: Vec<String>,
        /// The user name part.
        #[arg(long)]
        user: String,
        /// Seconds the credential is valid.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Credentials { secret, user, ttl }) = cli.command {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let Some(secret) = secret.first().filter(|s| !s.is_empty()) else {
            anyhow::bail!("--secret (or TURNKEY_AUTH_SECRETS) is empty");
        };
        let c = mint_rest_credential(secret, &user, ttl, now);
        println!("{}", serde_json::to_string(&c)?);
        return Ok(());
    }
    let cfg = cli.args.resolve(&Defaults::default())?;
    turnkey_runtime::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(cfg: crate::config::TurnConfig) -> anyhow::Result<()> {
    crate::run::run_until_signal(&cfg, |_| {}).await?;
    Ok(())
}
