//! `turnkey`: the whole suite in one process for local use (for now STUN + TURN: the TURN
//! listener answers STUN Binding requests too).
//!
//! With no flags it listens on 127.0.0.1:3478 (UDP and TCP), serves metrics on
//! 127.0.0.1:9641, generates a TURN REST secret, and prints a working credential and an
//! RTCIceServer JSON a browser can paste. Every `turn-server` flag works here too.

use clap::Parser;
use std::time::{SystemTime, UNIX_EPOCH};
use turn_server::config::{Defaults, ServerArgs, TurnConfig};
use turn_server::proto::auth::mint_rest_credential;

#[derive(Parser)]
#[command(
    name = "turnkey",
    version,
    about = "turnkey suite for local use: STUN + TURN in one process"
)]
struct Cli {
    #[command(flatten)]
    args: ServerArgs,
    /// Lifetime of the printed credential, seconds.
    #[arg(long = "credential-ttl", default_value_t = 86_400)]
    credential_ttl: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let defaults = Defaults {
        listen: vec!["127.0.0.1:3478".parse()?],
        metrics: "127.0.0.1:9641".parse()?,
    };
    let mut cfg = cli.args.resolve(&defaults)?;
    let generated = cfg.auth_secrets.is_empty();
    if generated {
        let secret: [u8; 24] = rand::random();
        cfg.auth_secrets = vec![secret.iter().map(|b| format!("{b:02x}")).collect()];
    }
    turnkey_common::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg, generated, cli.credential_ttl))
}

async fn run(cfg: TurnConfig, generated: bool, ttl: u64) -> anyhow::Result<()> {
    let mut printed = Ok(());
    turn_server::run::run_until_signal(&cfg, |ready| {
        printed = print_usage(&cfg, &ready.listen, ready.metrics, generated, ttl);
    })
    .await?;
    printed
}

fn print_usage(
    cfg: &TurnConfig,
    listen: &[std::net::SocketAddr],
    metrics: std::net::SocketAddr,
    generated: bool,
    ttl: u64,
) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let cred = mint_rest_credential(&cfg.auth_secrets[0], "turnkey-local", ttl, now);
    let mut urls = Vec::new();
    for l in listen {
        let host = if l.ip().is_unspecified() {
            cfg.relay_ips
                .first()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "127.0.0.1".into())
        } else {
            l.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        urls.push(format!("stun:{host}:{}", l.port()));
        urls.push(format!("turn:{host}:{}?transport=udp", l.port()));
        urls.push(format!("turn:{host}:{}?transport=tcp", l.port()));
    }
    let ice = serde_json::json!({
        "urls": urls,
        "username": cred.username,
        "credential": cred.password,
    });
    println!("turnkey is running (STUN + TURN). Ctrl-C to stop.");
    for l in listen {
        println!("  STUN/TURN   udp+tcp {l}");
    }
    println!(
        "  relay IPs   {:?}, ports {}-{}",
        cfg.relay_ips, cfg.min_port, cfg.max_port
    );
    println!("  metrics     http://{metrics}/metrics");
    println!("  realm       {}", cfg.realm);
    if generated {
        println!("  REST secret generated for this run (pass --auth-secret to fix one)");
    }
    println!("  credential  (valid {ttl} s)");
    println!("    username  {}", cred.username);
    println!("    password  {}", cred.password);
    println!("RTCIceServer (paste into new RTCPeerConnection({{iceServers: [ ... ]}})):");
    println!("{}", serde_json::to_string_pretty(&ice)?);
    Ok(())
}
