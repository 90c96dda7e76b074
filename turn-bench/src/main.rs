//! turn-bench: drives a packet rate through a TURN server (ours, coturn, any RFC 8656 server)
//! and prints what comes out: delivered rate, loss, one-way latency, server CPU per packet.
//!
//! N allocations are paired (i, i^1); each installs a permission and binds channel 0x4000 to
//! its partner's relayed address, then sends ChannelData probes (flow, sequence number, send
//! time) that the server relays to the partner. Setup, refresh and teardown run on a small tokio
//! runtime (`client`, `run`); the traffic itself runs on plain worker threads that pace sends in
//! sub-millisecond ticks and read with kernel receive timestamps (`worker`, `net`). The
//! protocol pieces (`proto`, `wire`, `stats`) do no I/O.

mod client;
mod net;
mod procfs;
mod proto;
mod report;
mod run;
mod stats;
mod wire;
mod worker;

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;

use crate::net::Transport;
use crate::proto::Credentials;
use crate::run::BenchConfig;

/// TURN load generator: paced ChannelData through a TURN server, measured.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TURN server, HOST:PORT.
    #[arg(long)]
    server: String,
    /// Client-to-server transport (the relay is UDP either way).
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// Long-term credential user name (with --password); with --secret, the REST user label.
    #[arg(long)]
    user: Option<String>,
    /// Long-term credential password.
    #[arg(long, requires = "user", conflicts_with = "secret")]
    password: Option<String>,
    /// TURN REST API shared secret: username "<unix-expiry>:<user or bench>",
    /// password base64(HMAC-SHA1(secret, username)).
    #[arg(long, env = "TURN_BENCH_SECRET")]
    secret: Option<String>,
    /// Number of allocations (even: they are paired).
    #[arg(long, default_value_t = 20)]
    allocations: usize,
    /// Total offered ChannelData packets per second, all allocations together.
    #[arg(long, default_value_t = 20_000.0)]
    rate: f64,
    /// Application data bytes per packet (at least 24: the probe header).
    #[arg(long, default_value_t = 160)]
    size: u16,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Requested allocation lifetime in seconds (default: the server's).
    #[arg(long)]
    lifetime: Option<u32>,
    /// Server process id: its CPU time (all threads) is read from /proc/PID/stat.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Traffic worker threads; each paces and reads its share of the allocations.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Worker tick in microseconds: each tick sends what is due, spread over the flows, then
    /// reads what has arrived.
    #[arg(long, default_value_t = 100)]
    tick_us: u64,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = config(&args)?;
    // The runtime only runs the control side (setup, upkeep, teardown); traffic runs on the
    // worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run::run(&cfg))?;
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        println!("{report}");
    }
    Ok(())
}

fn config(args: &Args) -> anyhow::Result<BenchConfig> {
    let server: SocketAddr = args
        .server
        .to_socket_addrs()
        .with_context(|| format!("resolving --server {}", args.server))?
        .next()
        .with_context(|| format!("--server {} resolves to nothing", args.server))?;
    if args.allocations < 2 || !args.allocations.is_multiple_of(2) {
        bail!("--allocations must be even and at least 2");
    }
    if usize::from(args.size) < wire::PROBE_BYTES {
        bail!("--size must be at least {} bytes", wire::PROBE_BYTES);
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be positive");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!("--warmup must be zero or positive");
    }
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_secs_f64(args.warmup);
    let credentials = match (&args.secret, &args.user, &args.password) {
        (Some(secret), user, None) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let expiry = now + 3600 + (duration + warmup).as_secs();
            Credentials::rest(secret, user.as_deref().unwrap_or("bench"), expiry)
        }
        (None, Some(user), Some(password)) => Credentials::new(user.clone(), password.clone()),
        _ => bail!("give --user NAME --password PASS, or --secret SECRET"),
    };
    Ok(BenchConfig {
        server,
        transport: args.transport,
        credentials,
        allocations: args.allocations,
        rate_pps: args.rate,
        payload_bytes: args.size,
        duration,
        warmup,
        lifetime_secs: args.lifetime,
        server_pid: args.server_pid,
        senders: args.threads,
        tick: Duration::from_micros(args.tick_us.max(1)),
    })
}
