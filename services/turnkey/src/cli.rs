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
use stun_proto::credential::mint_rest_credential;
use turn_server::config::{Defaults, Layered, ServerArgs, TurnConfig};

use crate::dev;

#[derive(Parser)]
#[command(
    name = "turnkey",
    version,
    // turnkey's own defaults (loopback: a development suite), not turn-server's.
    mut_arg("listen", |a| a.help(
        "Address to listen on for clients, UDP and TCP (repeatable). Default 127.0.0.1:3478"
    )),
    mut_arg("redis", |a| a.help(
        "Redis URL (redis://[:password@]host:port/db) for the signaling store and TURN's fleet state (REST secrets and users watched, allocation summaries published). Default: embedded in-memory store, no fleet state"
    )),
    about = "turnkey suite for local use: STUN/TURN, signaling and the SFU in one process"
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
    /// Signaling API key KEY:SECRET, repeatable (TURNKEY_API_KEYS: comma-separated). Default: a
    /// generated development key, printed.
    #[arg(
        long = "api-key",
        value_name = "KEY:SECRET",
        env = "TURNKEY_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key: Vec<String>,
    /// Development API key KEY:SECRET: like --api-key, but printed in the demo page URL, and
    /// (without --auth-secret) the TURN REST secret is derived from it, so the key and TURN
    /// credentials stay the same across restarts.
    #[arg(
        long = "dev-key",
        value_name = "KEY:SECRET",
        conflicts_with = "api_key"
    )]
    dev_key: Option<String>,
    /// Keep the development API key, the TURN REST secret and the self-signed HTTPS
    /// certificate in DIR (created, mode 0700; files dev-key, turn-secret, https-cert.pem,
    /// https-key.pem, mode 0600) and reuse them on the next start.
    #[arg(long = "dev-dir", value_name = "DIR")]
    dev_dir: Option<std::path::PathBuf>,
    /// Serve signaling (demo page, API, WebSocket) over HTTPS, which browsers need for the
    /// camera on any origin but localhost: with --cert/--key if given, else a self-signed
    /// certificate for localhost, the listen and relay IPs and the --public-url host (its
    /// SHA-256 fingerprint is printed).
    #[arg(long)]
    https: bool,
    /// Base URL browsers reach signaling at (e.g. https://192.168.1.20:8443), printed and handed
    /// out in join grants. Default: http(s)://<signaling listen address>.
    #[arg(long = "public-url", value_name = "URL")]
    public_url: Option<String>,
    /// Host name in the `turns:` URLs handed out for --tls-listen (the name in the
    /// certificate). Default: the TLS listen IP (the first relay IP for a wildcard).
    #[arg(long = "turns-host", value_name = "NAME")]
    turns_host: Option<String>,
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

pub fn main() {
    // The error alone, one line, without a backtrace: a user reads it to fix a flag.
    if let Err(e) = start() {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let defaults = Defaults {
        listen: vec!["127.0.0.1:3478".parse()?],
        metrics: "127.0.0.1:9641".parse()?,
        drain_timeout_secs: 10,
    };
    let mut cfg = cli.args.resolve(&defaults)?;
    let dev = dev::DevState::open(cli.dev_dir.as_deref())?;
    let dev_key = match &cli.dev_key {
        Some(k) => Some((
            signaling::auth::ApiKey::parse(k)
                .ok_or_else(|| anyhow::anyhow!("--dev-key must be KEY:SECRET, both non-empty"))?,
            KeySource::Flag,
        )),
        None if cli.api_key.is_empty() => dev
            .api_key()?
            .map(|(k, fresh)| (k, KeySource::Dir { fresh })),
        None => None,
    };
    let secret_source = if !cfg.auth_secrets.is_empty() {
        SecretSource::Flag
    } else if let Some((k, KeySource::Flag)) = &dev_key {
        cfg.auth_secrets = vec![dev::derived_turn_secret(&k.secret)];
        SecretSource::DevKey
    } else if let Some((secret, fresh)) = dev.turn_secret()? {
        cfg.auth_secrets = vec![secret];
        SecretSource::Dir { fresh }
    } else {
        cfg.auth_secrets = vec![dev::random_hex(24)];
        SecretSource::Generated
    };
    let mut sig = SignalingConfig::with_defaults(&signaling::config::Defaults {
        listen: cli.signaling_listen,
        metrics: cli.signaling_metrics,
    });
    if let Some(u) = &cli.public_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            anyhow::bail!("--public-url must start with http:// or https://: {u:?}");
        }
        sig.public_url = Some(u.trim_end_matches('/').to_string());
    }
    if cli.https {
        sig.tls = Some(match &cfg.tls_files {
            Some((cert, key)) => signaling::config::Tls::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            None => {
                let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                names.push(cli.signaling_listen.ip().to_string());
                names.extend(cfg.relay_ips.iter().map(|ip| ip.to_string()));
                if let Some(host) = sig.public_url.as_deref().and_then(dev::url_host) {
                    names.push(host);
                }
                let (cert, key) = dev.self_signed(&names)?;
                signaling::config::Tls::Pem { cert, key }
            }
        });
    }
    if let Some((k, _)) = &dev_key {
        sig.api_keys = vec![k.clone()];
        sig.dev_key = true;
    } else if !cli.api_key.is_empty() {
        sig.api_keys = cli
            .api_key
            .iter()
            .map(|k| {
                signaling::auth::ApiKey::parse(k)
                    .ok_or_else(|| anyhow::anyhow!("--api-key must be KEY:SECRET, both non-empty"))
            })
            .collect::<anyhow::Result<_>>()?;
        sig.dev_key = false;
    }
    sig.turn_secrets = cfg.auth_secrets.clone();
    sig.turn_uris = ice_urls(&cfg, &cfg.listen, cli.turns_host.as_deref());
    let key_source = match &dev_key {
        Some((_, source)) => *source,
        None => KeySource::Generated,
    };
    // One Redis for the suite: the signaling store and TURN's fleet state (--redis).
    sig.redis = cfg.fleet.as_ref().and_then(|f| f.redis.clone());
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
    .resolve(&sfu::config::Defaults::default())?;
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
    let ports = Ports {
        sfu_media: sfu_cfg.media_listen,
        sfu_workers: sfu_cfg.workers,
        sfu_link: sfu_cfg.link_listen,
        sfu_metrics: sfu_cfg.metrics,
    };
    turnkey_runtime::logging::init(cfg.log_json, "info");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(
            cfg,
            sig,
            sfu_cfg,
            ports,
            Banner {
                key_source,
                secret_source,
                ttl: cli.credential_ttl,
                turns_host: cli.turns_host.clone(),
                dev_dir: cli.dev_dir.clone(),
            },
        ))
}

/// Where the development API key came from.
#[derive(Clone, Copy)]
enum KeySource {
    Generated,
    Flag,
    /// `--dev-dir`; `fresh`: created by this start.
    Dir {
        fresh: bool,
    },
}

/// Where the TURN REST secret came from.
#[derive(Clone, Copy)]
enum SecretSource {
    Generated,
    Flag,
    DevKey,
    Dir { fresh: bool },
}

/// What the banner says besides the addresses.
struct Banner {
    key_source: KeySource,
    secret_source: SecretSource,
    ttl: u64,
    turns_host: Option<String>,
    dev_dir: Option<std::path::PathBuf>,
}

/// The SFU's listeners, to name the flag to change when one of its ports is taken.
struct Ports {
    sfu_media: std::net::SocketAddr,
    sfu_workers: usize,
    sfu_link: std::net::SocketAddr,
    sfu_metrics: std::net::SocketAddr,
}

impl Ports {
    /// The flag that moves the SFU listener `addr` (media ports are one per worker from
    /// `--sfu-media-listen`, ICE-TCP on the first).
    fn sfu_flag(&self, addr: std::net::SocketAddr) -> &'static str {
        let media = self.sfu_media.port();
        if addr == self.sfu_link {
            "--sfu-link-listen"
        } else if addr == self.sfu_metrics {
            "--sfu-metrics"
        } else if addr.ip() == self.sfu_media.ip()
            && (media..media.saturating_add(self.sfu_workers as u16)).contains(&addr.port())
        {
            "--sfu-media-listen"
        } else {
            "--sfu-media-listen, --sfu-link-listen or --sfu-metrics"
        }
    }
}

fn turn_error(e: turn_server::run::RunError) -> anyhow::Error {
    use turn_server::run::RunError;
    match e {
        RunError::Listen { addrs, source } => anyhow::anyhow!(
            "STUN/TURN cannot listen on {}: {source} (change it with --listen, --tls-listen or \
             --dtls-listen)",
            addrs
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        RunError::Metrics { addr, source } => anyhow::anyhow!(
            "TURN metrics cannot listen on {addr}: {source} (change it with --metrics)"
        ),
        other => anyhow::anyhow!("TURN: {other}"),
    }
}

fn signaling_error(e: signaling::run::RunError) -> anyhow::Error {
    use signaling::run::RunError;
    match e {
        RunError::Listen { addr, source } => anyhow::anyhow!(
            "signaling cannot listen on {addr}: {source} (change it with --signaling-listen)"
        ),
        RunError::Metrics { addr, source } => anyhow::anyhow!(
            "signaling metrics cannot listen on {addr}: {source} (change it with \
             --signaling-metrics)"
        ),
        other => anyhow::anyhow!("signaling: {other}"),
    }
}

fn sfu_error(e: sfu::run::RunError, ports: &Ports) -> anyhow::Error {
    match e {
        sfu::run::RunError::Bind { addr, source } => anyhow::anyhow!(
            "SFU cannot listen on {addr}: {source} (change it with {})",
            ports.sfu_flag(addr)
        ),
        other => anyhow::anyhow!("SFU: {other}"),
    }
}

/// Runs `part`; if it fails, stops the others (`stop` for signaling and the SFU, the drain for
/// TURN, which then ends with its allocations or its deadline), so that a part that cannot
/// start ends the whole process at once instead of at the next Ctrl-C.
async fn or_stop_all<T>(
    part: impl std::future::Future<Output = anyhow::Result<T>>,
    stop: &tokio_util::sync::CancellationToken,
    drain: &turnkey_runtime::drain::Drain,
) -> anyhow::Result<T> {
    let r = part.await;
    if r.is_err() {
        stop.cancel();
        drain.start("error");
    }
    r
}

async fn run(
    cfg: TurnConfig,
    sig: SignalingConfig,
    sfu_cfg: sfu::config::SfuConfig,
    ports: Ports,
    banner: Banner,
) -> anyhow::Result<()> {
    // One drain for the three parts: the first SIGTERM or ctrl-c (or `POST /admin/drain` on
    // any part's metrics listener, with an admin token) starts it; each part ends once its
    // own work is done (allocations, connections, links) or the deadline passes, and the
    // process then exits 0. A second signal exits at once.
    let drain =
        turnkey_runtime::drain::Drain::new(std::time::Duration::from_secs(cfg.drain_timeout_secs));
    drain.start_on_signal();
    let stop = tokio_util::sync::CancellationToken::new();
    // SIGHUP is logged and ignored (with TLS, the TURN part also reloads its certificate).
    turnkey_runtime::shutdown::ignore_hangups("turnkey");
    let (store, _) = signaling::run::open_store(&sig).await?;
    let dev_key = sig
        .api_keys
        .first()
        .filter(|_| sig.dev_key)
        .map(|k| format!("{}:{}", k.key, k.secret));
    // Each part reports ready once all its listeners are bound; the banner is printed only when
    // all three are, so "running" is never printed for a half-started suite.
    let (turn_tx, turn_rx) = tokio::sync::oneshot::channel();
    let (sfu_tx, sfu_rx) = tokio::sync::oneshot::channel();
    let (sig_tx, sig_rx) = tokio::sync::oneshot::channel();
    let turn = or_stop_all(
        async {
            turn_server::run::serve_with_drain(&cfg, None, drain.clone(), |r| {
                let _ = turn_tx.send(r.clone());
            })
            .await
            .map_err(turn_error)
        },
        &stop,
        &drain,
    );
    let sfu = or_stop_all(
        async {
            sfu::run::serve(
                sfu_cfg,
                Some(store.clone()),
                drain.clone(),
                stop.clone(),
                |r| {
                    let _ = sfu_tx.send(r);
                },
            )
            .await
            .map_err(|e| sfu_error(e, &ports))
        },
        &stop,
        &drain,
    );
    let signaling = or_stop_all(
        async {
            signaling::run::serve_drainable(sig, store.clone(), drain.clone(), stop.clone(), |r| {
                let _ = sig_tx.send(r.clone());
            })
            .await
            .map_err(signaling_error)
        },
        &stop,
        &drain,
    );
    let banner = async {
        let all = async { Some((turn_rx.await.ok()?, sig_rx.await.ok()?, sfu_rx.await.ok()?)) };
        let ready = tokio::select! {
            _ = stop.cancelled() => None,
            _ = drain.started() => None,
            r = all => r,
        };
        match ready {
            Some((t, s, f)) => print_banner(&cfg, &t, &s, &f, dev_key.as_deref(), &banner),
            None => Ok(()),
        }
    };
    let (t, s, f, b) = tokio::join!(turn, signaling, sfu, banner);
    t?;
    s?;
    f?;
    b
}

/// The STUN and TURN URLs clients use for `listen` (a wildcard listener is named by the first
/// relay IP), then a `turns:` URL (RFC 7065) per TLS listener, named `turns_host` if given.
fn ice_urls(
    cfg: &TurnConfig,
    listen: &[std::net::SocketAddr],
    turns_host: Option<&str>,
) -> Vec<String> {
    let host_of = |l: &std::net::SocketAddr| {
        let host = if l.ip().is_unspecified() {
            cfg.relay_ips
                .first()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "127.0.0.1".into())
        } else {
            l.ip().to_string()
        };
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        }
    };
    let mut urls = Vec::new();
    for l in listen {
        let host = host_of(l);
        urls.push(format!("stun:{host}:{}", l.port()));
        urls.push(format!("turn:{host}:{}?transport=udp", l.port()));
        urls.push(format!("turn:{host}:{}?transport=tcp", l.port()));
    }
    for l in &cfg.tls_listen {
        let host = turns_host.map_or_else(|| host_of(l), str::to_string);
        urls.push(format!("turns:{host}:{}?transport=tcp", l.port()));
    }
    urls
}

/// What a developer needs, printed once everything listens: STUN/TURN with a working
/// credential and an RTCIceServer to paste, the SFU, and signaling with the demo page URL.
fn print_banner(
    cfg: &TurnConfig,
    turn: &turn_server::run::Ready,
    sig: &signaling::run::Ready,
    sfu: &sfu::run::Ready,
    dev_key: Option<&str>,
    banner: &Banner,
) -> anyhow::Result<()> {
    print_usage(cfg, &turn.listen, turn.metrics, banner)?;
    println!("SFU (rooms created with mode \"sfu\")");
    println!("  media       udp {:?} (+ ICE-TCP)", sfu.media);
    println!("  metrics     http://{}/metrics", sfu.metrics);
    println!("Signaling (session + channel server, in-memory store unless --redis)");
    println!(
        "  HTTP/WS     {}  (WebSocket {}/v1/ws)",
        sig.public_url,
        sig.public_url.replace("http", "ws")
    );
    println!("  metrics     http://{}/metrics", sig.metrics);
    if let Some(fp) = &sig.fingerprint {
        println!("  HTTPS       certificate SHA-256 {fp}");
        println!(
            "              (self-signed unless --cert/--key: check this fingerprint when the browser warns)"
        );
    }
    match dev_key {
        Some(k) => {
            let whence = match (banner.key_source, &banner.dev_dir) {
                (KeySource::Flag, _) => "from --dev-key".to_string(),
                (KeySource::Dir { fresh: true }, Some(d)) => {
                    format!("generated and kept in {}", d.join("dev-key").display())
                }
                (KeySource::Dir { .. }, Some(d)) => {
                    format!("kept in {}", d.join("dev-key").display())
                }
                _ => "generated for this run; --dev-key KEY:SECRET or --dev-dir DIR keeps one"
                    .to_string(),
            };
            println!("  API key     {k}  ({whence})");
            println!("  demo page   {}/?key={k}&room=demo", sig.public_url);
        }
        None => println!(
            "  demo page   {}/?key=<your --api-key>&room=demo",
            sig.public_url
        ),
    }
    Ok(())
}

fn print_usage(
    cfg: &TurnConfig,
    listen: &[std::net::SocketAddr],
    metrics: std::net::SocketAddr,
    banner: &Banner,
) -> anyhow::Result<()> {
    let ttl = banner.ttl;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let cred = mint_rest_credential(&cfg.auth_secrets[0], "turnkey-local", ttl, now);
    let urls = ice_urls(cfg, listen, banner.turns_host.as_deref());
    let ice = serde_json::json!({
        "urls": urls,
        "username": cred.username,
        "credential": cred.password,
    });
    println!("turnkey is running (STUN/TURN, SFU, signaling). Ctrl-C to stop.");
    for l in listen {
        println!("  STUN/TURN   udp+tcp {l}");
    }
    for l in &cfg.tls_listen {
        println!("  TURN TLS    tcp {l}  (turns:)");
    }
    for l in &cfg.dtls_listen {
        println!("  TURN DTLS   udp {l}");
    }
    println!(
        "  relay IPs   {:?}, ports {}-{}",
        cfg.relay_ips, cfg.min_port, cfg.max_port
    );
    println!("  metrics     http://{metrics}/metrics");
    println!("  realm       {}", cfg.realm);
    match (banner.secret_source, &banner.dev_dir) {
        (SecretSource::Generated, _) => println!(
            "  REST secret generated for this run (--auth-secret, --dev-key or --dev-dir keeps one)"
        ),
        (SecretSource::DevKey, _) => println!("  REST secret derived from --dev-key"),
        (SecretSource::Dir { fresh }, Some(d)) => println!(
            "  REST secret {} {}",
            if fresh {
                "generated and kept in"
            } else {
                "kept in"
            },
            d.join("turn-secret").display()
        ),
        _ => {}
    }
    println!("  credential  (valid {ttl} s)");
    println!("    username  {}", cred.username);
    println!("    password  {}", cred.password);
    println!("RTCIceServer (paste into new RTCPeerConnection({{iceServers: [ ... ]}})):");
    println!("{}", serde_json::to_string_pretty(&ice)?);
    Ok(())
}
