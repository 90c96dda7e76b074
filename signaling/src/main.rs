//! `signaling`: the turnkey signaling server. See `signaling --help` and `PROTOCOL.md`.

use clap::{Parser, Subcommand};
use signaling::auth::{mint_token, parse_duration_secs, ApiKey, Grants};
use signaling::config::{Defaults, SignalingArgs};

#[derive(Parser)]
#[command(
    name = "signaling",
    version,
    about = "turnkey signaling server: rooms over HTTP, offer/answer/candidate relay over WebSocket"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    args: SignalingArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print an access token (JWT) for joining a room over WebSocket.
    Token {
        /// The room.
        #[arg(long)]
        room: String,
        /// The participant identity (`sub`).
        #[arg(long)]
        identity: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime: 90s, 30m, 1h, 2d. Default 1h.
        #[arg(long, default_value = "1h", value_parser = parse_duration_secs)]
        ttl: u64,
        /// The API key that signs it, KEY:SECRET (from TURNKEY_API_KEYS, the first of a
        /// comma-separated list signs).
        #[arg(
            long = "api-key",
            value_name = "KEY:SECRET",
            env = "TURNKEY_API_KEYS",
            value_delimiter = ',',
            required = true,
            hide_env_values = true
        )]
        api_key: Vec<String>,
        /// Also grant creating the room on first join.
        #[arg(long)]
        create: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Token {
        room,
        identity,
        name,
        ttl,
        api_key,
        create,
    }) = cli.command
    {
        let key = api_key
            .first()
            .and_then(|k| ApiKey::parse(k))
            .ok_or_else(|| anyhow::anyhow!("--api-key must be KEY:SECRET"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let grants = Grants { join: true, create };
        println!(
            "{}",
            mint_token(&key, &room, &identity, name.as_deref(), grants, ttl, now)
        );
        return Ok(());
    }
    let cfg = cli.args.resolve(&Defaults::default())?;
    turnkey_common::logging::init(cfg.log_json, "info");
    let banner = signaling::run::dev_key_banner(&cfg);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            signaling::run_until_signal(cfg, |ready| {
                // The developer's copy of a generated key: stdout, once, never the log.
                if let Some(line) = banner {
                    println!("signaling ready on {}", ready.public_url);
                    println!("{line}");
                    println!(
                        "  demo page   {}/?key=<API key>&room=demo",
                        ready.public_url
                    );
                }
            })
            .await?;
            Ok(())
        })
}
