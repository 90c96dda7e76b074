//! signaling-bench: N simulated clients in rooms against one turnkey signaling node
//! (services/signaling/PROTOCOL.md), and the figures that come out: connections held, messages relayed
//! per second, relay latency, errors by code, server memory per connection.
//!
//! Each client gets an access token over HTTP (`POST /v1/rooms/{room}/join`), opens the
//! WebSocket it was given and sends `join`. When its room is full, every pair negotiates
//! (offer, answer, trickled candidates, end-of-candidates); then each client sends paced
//! `candidate` messages to its peers, and pings. Every relayed payload carries a probe
//! (sender, sequence number, send time) that its receiver reads back. `session` and `proto` do
//! no I/O; `client` and `run` are the tokio side.

mod api;
mod client;
mod procfs;
mod proto;
mod report;
mod run;
mod session;
mod stats;

use std::net::{IpAddr, ToSocketAddrs as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::run::BenchConfig;

/// Signaling load generator: rooms of WebSocket clients negotiating through one node, measured.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Session server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// API key for the HTTP joins, KEY:SECRET (HTTP Basic).
    #[arg(long, env = "SIGNALING_BENCH_API_KEY")]
    api_key: String,
    /// Simulated clients (WebSocket connections).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Clients per room; also the capacity the rooms are created with.
    #[arg(long, default_value_t = 4)]
    room_size: usize,
    /// Steady messages per second per client (0: none), each to one room peer in turn.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// Approximate size of a steady message frame in bytes.
    #[arg(long, default_value_t = 300)]
    message_bytes: usize,
    /// Approximate SDP size of offers and answers in bytes.
    #[arg(long, default_value_t = 3000)]
    sdp_bytes: usize,
    /// Candidates trickled each way per pair before end-of-candidates.
    #[arg(long, default_value_t = 8)]
    candidates: usize,
    /// Seconds between pings (PROTOCOL.md: clients ping every 20 s).
    #[arg(long, default_value_t = 20.0)]
    ping_interval: f64,
    /// Measured seconds, with all connections held.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds between the end of the ramp and the window.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// New clients per second during the ramp.
    #[arg(long, default_value_t = 500.0)]
    connect_rate: f64,
    /// Seconds allowed after the ramp for every client to join; the rest give up.
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// HTTP keep-alive connections for the joins.
    #[arg(long, default_value_t = 4)]
    http_connections: usize,
    /// Local addresses to spread WebSocket connections over, comma-separated (e.g.
    /// 127.0.0.2,127.0.0.3): each gives another ~28k ephemeral ports towards the server.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Signaling server process id: its VmRSS and CPU time are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Room name prefix (default: bench-<unix time>, so runs do not share rooms).
    #[arg(long)]
    room_prefix: Option<String>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print each setup failure to stderr.
    #[arg(long)]
    verbose: bool,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    json: bool,
}

pub fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = config(&args)?;
    // Each client holds one socket, plus the HTTP pool and some slack.
    let wanted = cfg.connections as u64 + cfg.http_connections as u64 + 256;
    let limit = procfs::raise_nofile(wanted).context("raising RLIMIT_NOFILE")?;
    if limit < wanted {
        eprintln!(
            "signaling-bench: open-file limit {limit} < {wanted} needed; raise the hard limit (ulimit -Hn)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    let report = runtime.block_on(run::run(Arc::new(cfg)));
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        println!("{report}");
    }
    Ok(())
}

fn positive(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v > 0.0) {
        bail!("--{name} must be positive");
    }
    Ok(Duration::from_secs_f64(v))
}

fn config(args: &Args) -> anyhow::Result<BenchConfig> {
    let server: http::Uri = args
        .server
        .parse()
        .with_context(|| format!("--server {} is not a URL", args.server))?;
    if server.scheme_str() != Some("http") {
        bail!("--server must be an http:// URL (loopback benchmark, no TLS)");
    }
    let host = server.host().context("--server has no host")?;
    let port = server.port_u16().unwrap_or(80);
    let server_addr = (host.trim_start_matches('[').trim_end_matches(']'), port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    if !args.api_key.contains(':') {
        bail!("--api-key must be KEY:SECRET");
    }
    if args.connections == 0 || args.room_size < 2 {
        bail!("--connections must be at least 1 and --room-size at least 2");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be zero or positive");
    }
    if !(args.settle.is_finite() && args.settle >= 0.0) {
        bail!("--settle must be zero or positive");
    }
    let room_prefix = match &args.room_prefix {
        Some(p) => p.clone(),
        None => format!(
            "bench-{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs()
        ),
    };
    Ok(BenchConfig {
        server,
        server_addr,
        api_key: args.api_key.clone(),
        connections: args.connections,
        room_size: args.room_size,
        rate: args.rate,
        message_bytes: args.message_bytes,
        sdp_bytes: args.sdp_bytes,
        candidates: args.candidates,
        ping_interval: positive("ping-interval", args.ping_interval)?,
        duration: positive("duration", args.duration)?,
        settle: Duration::from_secs_f64(args.settle),
        connect_rate: positive("connect-rate", args.connect_rate)?.as_secs_f64(),
        setup_timeout: positive("setup-timeout", args.setup_timeout)?,
        http_connections: args.http_connections.max(1),
        source_ips: args.source_ips.clone(),
        server_pid: args.server_pid,
        room_prefix,
        verbose: args.verbose,
    })
}
