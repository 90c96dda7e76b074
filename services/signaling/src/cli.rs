//! `signaling`: the turnkey signaling server. See `signaling --help` and `PROTOCOL.md`.

use crate::auth::{mint_token, parse_duration_secs, ApiKey, Grants};
use crate::config::{Defaults, Layered, SignalingArgs};
use clap::{Parser, Subcommand};

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
    /// Rooms of a running signaling server, over its HTTP API (`GET /v1/rooms`,
    /// `GET /v1/rooms/{room}`, `DELETE /v1/rooms/{room}`).
    Rooms {
        #[command(subcommand)]
        action: RoomsAction,
        /// The server's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
        url: String,
        /// An API key of the server, KEY:SECRET (from TURNKEY_API_KEYS, the first of a
        /// comma-separated list).
        #[arg(
            long = "api-key",
            value_name = "KEY:SECRET",
            env = "TURNKEY_API_KEYS",
            value_delimiter = ',',
            global = true,
            hide_env_values = true
        )]
        api_key: Vec<String>,
    },
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

#[derive(Subcommand)]
enum RoomsAction {
    /// One line per room: name, mode, participants/capacity, age, node (all pages).
    List,
    /// One room as JSON, with its participants.
    Show {
        /// The room.
        room: String,
    },
    /// Deletes a room: its participants get `room-closed` (close 4010).
    Close {
        /// The room.
        room: String,
    },
}

/// Runs `signaling rooms ...` against `url`; prints what the API answered.
fn rooms(action: RoomsAction, url: &str, api_key: &[String]) -> anyhow::Result<()> {
    use base64::Engine as _;
    let key = api_key
        .first()
        .filter(|k| ApiKey::parse(k).is_some())
        .ok_or_else(|| anyhow::anyhow!("--api-key KEY:SECRET (or TURNKEY_API_KEYS) is needed"))?;
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let base = url.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(10)))
        .build()
        .into();
    // The answer's status and JSON body (an API error is `{"error":{"code","message"}}`).
    let call = |method: &str, path: &str| -> anyhow::Result<(u16, serde_json::Value)> {
        let target = format!("{base}{path}");
        let mut res = match method {
            "DELETE" => agent.delete(&target).header("Authorization", &auth).call(),
            _ => agent.get(&target).header("Authorization", &auth).call(),
        }
        .map_err(|e| anyhow::anyhow!("{method} {target}: {e}"))?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        if status >= 400 {
            let msg = body["error"]["message"].as_str().unwrap_or(text.trim());
            anyhow::bail!("{method} {target}: HTTP {status}: {msg}");
        }
        Ok((status, body))
    };
    match action {
        RoomsAction::List => {
            let mut after: Option<String> = None;
            let mut n = 0;
            println!(
                "{:<32} {:<5} {:>7} {:>8}  node",
                "room", "mode", "people", "age"
            );
            loop {
                let path = match &after {
                    Some(a) => format!("/v1/rooms?limit=1000&after={a}"),
                    None => "/v1/rooms?limit=1000".to_string(),
                };
                let (_, page) = call("GET", &path)?;
                for r in page["rooms"].as_array().into_iter().flatten() {
                    n += 1;
                    println!(
                        "{:<32} {:<5} {:>7} {:>7}s  {}",
                        r["name"].as_str().unwrap_or(""),
                        r["mode"].as_str().unwrap_or(""),
                        format!(
                            "{}/{}",
                            r["participants"].as_u64().unwrap_or(0),
                            r["capacity"].as_u64().unwrap_or(0)
                        ),
                        r["ageSecs"].as_u64().unwrap_or(0),
                        r["node"].as_str().unwrap_or("")
                    );
                }
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            println!("{n} room(s)");
        }
        RoomsAction::Show { room } => {
            let (_, r) = call("GET", &format!("/v1/rooms/{room}"))?;
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        RoomsAction::Close { room } => {
            call("DELETE", &format!("/v1/rooms/{room}"))?;
            println!("room {room} closed");
        }
    }
    Ok(())
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Rooms {
        action,
        url,
        api_key,
    }) = cli.command
    {
        return rooms(action, &url, &api_key);
    }
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
    turnkey_runtime::logging::init(cfg.log_json, "info");
    let banner = crate::run::dev_key_banner(&cfg);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            crate::run_until_signal(cfg, |ready| {
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
