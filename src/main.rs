//! `turnkey`: the whole suite in one process for local use: STUN + TURN (the TURN listener
//! answers STUN Binding requests too), signaling (session + channel server, in-memory store,
//! demo page) and the SFU (media on 127.0.0.1:9700, registered in the same store).
//!
//! With no flags: TURN on 127.0.0.1:3478 (UDP and TCP, metrics on 127.0.0.1:9641), signaling
//! on http://127.0.0.1:8080 (metrics on 127.0.0.1:9643), a generated TURN REST secret shared by
//! both, and a generated development API key. It prints a working TURN credential, an
//! RTCIceServer JSON a browser can paste, and the demo page URL. Every `turn-server` flag works
//! here too.

use clap::Parser;
use signaling::config::SignalingConfig;
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
    /// Signaling HTTP + WebSocket listener (demo page at /).
    #[arg(long = "signaling-listen", default_value = "127.0.0.1:8080")]
    signaling_listen: std::net::SocketAddr,
    /// Signaling metrics listener.
    #[arg(long = "signaling-metrics", default_value = "127.0.0.1:9643")]
    signaling_metrics: std::net::SocketAddr,
    /// Signaling API key KEY:SECRET (default: a generated development key, printed).
    #[arg(long = "api-key", env = "TURNKEY_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Redis URL for the signaling store (default: embedded in-memory store).
    #[arg(long)]
    redis: Option<String>,
    /// SFU media address (UDP of worker 0, worker i on port + i; ICE-TCP on the same port).
    #[arg(long = "sfu-media-listen", default_value = "127.0.0.1:9700")]
    sfu_media_listen: std::net::SocketAddr,
    /// IP the SFU advertises in its ICE candidates (default: the media listen IP).
    #[arg(long = "sfu-public-ip")]
    sfu_public_ip: Option<std::net::IpAddr>,
    /// SFU link listener (signaling connects here).
    #[arg(long = "sfu-link-listen", default_value = "127.0.0.1:8090")]
    sfu_link_listen: std::net::SocketAddr,
    /// SFU metrics listener.
    #[arg(long = "sfu-metrics", default_value = "127.0.0.1:9644")]
    sfu_metrics: std::net::SocketAddr,
    /// SFU event loops (default: number of cores).
    #[arg(long = "sfu-workers")]
    sfu_workers: Option<usize>,
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
    let mut sig = SignalingConfig::with_defaults(&signaling::config::Defaults {
        listen: cli.signaling_listen,
        metrics: cli.signaling_metrics,
    });
    if let Some(k) = &cli.api_key {
        let Some(key) = signaling::auth::ApiKey::parse(k) else {
            anyhow::bail!("--api-key must be KEY:SECRET, both non-empty");
        };
        sig.api_keys = vec![key];
        sig.dev_key = false;
    }
    sig.turn_secrets = cfg.auth_secrets.clone();
    sig.turn_uris = ice_urls(&cfg, &cfg.listen);
    sig.redis = cli.redis.clone();
    sig.log_json = cfg.log_json;
    // The SFU shares the store (registry) and a generated link secret with signaling.
    let sfu_cfg = sfu::config::SfuArgs {
        media_listen: Some(cli.sfu_media_listen),
        public_ip: cli.sfu_public_ip,
        workers: cli.sfu_workers,
        link_listen: Some(cli.sfu_link_listen),
        metrics: Some(cli.sfu_metrics),
        node_id: Some("sfu-local".into()),
        log_json: cfg.log_json,
        ..Default::default()
    }
    .resolve()?;
    sig.sfu_secret = Some(sfu_cfg.sfu_secret.clone());
    // Peers may never reach the suite's other services through the relay, even where
    // --allow-peer covers this host: signaling, its metrics, the SFU's media ports (one per
    // worker, ICE-TCP on the first), link and metrics.
    cfg.protected_ports.extend([
        cli.signaling_listen.port(),
        cli.signaling_metrics.port(),
        sfu_cfg.link_listen.port(),
        sfu_cfg.metrics.port(),
    ]);
    cfg.protected_ports
        .extend((0..sfu_cfg.workers as u16).map(|i| sfu_cfg.media_listen.port().saturating_add(i)));
    turnkey_common::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg, sig, sfu_cfg, generated, cli.credential_ttl))
}

async fn run(
    cfg: TurnConfig,
    sig: SignalingConfig,
    sfu_cfg: sfu::config::SfuConfig,
    generated: bool,
    ttl: u64,
) -> anyhow::Result<()> {
    let shutdown = turnkey_common::shutdown::on_signal();
    // SIGHUP is logged and ignored (with TLS, the TURN part also reloads its certificate).
    turnkey_common::shutdown::ignore_hangups("turnkey");
    let (store, _) = signaling::run::open_store(&sig).await?;
    let mut printed = Ok(());
    let dev_key = sig
        .api_keys
        .first()
        .filter(|_| sig.dev_key)
        .map(|k| format!("{}:{}", k.key, k.secret));
    let turn = turn_server::run::serve(&cfg, shutdown.clone(), |ready| {
        printed = print_usage(&cfg, &ready.listen, ready.metrics, generated, ttl);
    });
    let sfu = sfu::run::serve(sfu_cfg, Some(store.clone()), shutdown.clone(), |ready| {
        println!("SFU (rooms created with mode \"sfu\")");
        println!("  media       udp {:?} (+ ICE-TCP)", ready.media);
        println!("  metrics     http://{}/metrics", ready.metrics);
    });
    let signaling = signaling::run::serve_with_store(sig, store, shutdown.clone(), |ready| {
        println!("Signaling (session + channel server, in-memory store unless --redis)");
        println!(
            "  HTTP/WS     {}  (WebSocket {}/v1/ws)",
            ready.public_url,
            ready.public_url.replace("http", "ws")
        );
        println!("  metrics     http://{}/metrics", ready.metrics);
        match &dev_key {
            Some(k) => {
                println!("  API key     {k}  (generated for this run; pass --api-key to fix one)");
                println!("  demo page   {}/?key={k}&room=demo", ready.public_url);
            }
            None => println!(
                "  demo page   {}/?key=KEY:SECRET&room=demo",
                ready.public_url
            ),
        }
    });
    let (t, s, f) = tokio::join!(turn, signaling, sfu);
    // One part failing to start stops the others.
    if t.is_err() || s.is_err() || f.is_err() {
        shutdown.cancel();
    }
    t?;
    s?;
    f?;
    printed
}

/// The STUN and TURN URLs clients use for `listen` (a wildcard listener is named by the first
/// relay IP).
fn ice_urls(cfg: &TurnConfig, listen: &[std::net::SocketAddr]) -> Vec<String> {
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
    urls
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
    let urls = ice_urls(cfg, listen);
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
