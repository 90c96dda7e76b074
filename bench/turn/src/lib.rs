//! turn-bench: drives a packet rate through a TURN server (ours, coturn, any RFC 8656 server)
//! and prints what comes out: delivered rate, loss, one-way latency, server CPU per packet.
//! Two more modes: `turn-bench soak` churns allocations, channels and connections for a long
//! time and prints the server's memory, descriptors, relay ports and allocation gauge
//! (`soak`); `turn-bench amplification` prints the reflection amplification factor of
//! unauthenticated UDP requests (`amplification`); `turn-bench floor` is a bare batched UDP
//! forwarder that relays what a TURN server relays in this benchmark and nothing else, the
//! physical floor to compare servers with (`floor`).
//!
//! N allocations are paired (i, i^1); each installs a permission and binds channel 0x4000 to
//! its partner's relayed address, then sends ChannelData probes (flow, sequence number, send
//! time) that the server relays to the partner. Setup, refresh and teardown run on a small tokio
//! runtime (`client`, `run`); the traffic itself runs on plain worker threads that pace sends in
//! sub-millisecond ticks and read with kernel receive timestamps (`worker`, `net`). The
//! protocol pieces (`proto`, `wire`, `stats`) do no I/O.

mod amplification;
mod client;
mod floor;
mod idle;
mod link;
mod net;
mod procfs;
mod proto;
mod report;
mod run;
mod scrape;
mod search;
mod soak;
mod stats;
mod wire;
mod worker;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

use crate::link::Close;
use crate::net::Transport;
use crate::proto::Credentials;
use crate::run::BenchConfig;
use crate::scrape::MetricsEndpoint;
use crate::soak::{Kind, SoakConfig};

/// TURN load generator: paced ChannelData through a TURN server, measured (no subcommand);
/// long churn runs watching the server's resources (`soak`); reflection amplification factors
/// (`amplification`).
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    // Not an Option: clap cannot tell whether an optional flattened struct was given when it
    // flattens another one (`AuthArgs`); `--server` is required unless there is a subcommand.
    #[command(flatten)]
    relay: Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Churn against a running server for a given time, printing its RSS, open fds, bound relay
    /// ports and allocation gauge at intervals, and a drift summary at the end.
    Soak(Box<SoakArgs>),
    /// Send unauthenticated UDP requests (Binding with and without FINGERPRINT, Allocate without
    /// credentials) and print response bytes / request bytes for each.
    Amplification(AmplificationArgs),
    /// Hold N idle allocations (each with a permission and a channel) from clients on several
    /// loopback source addresses and print the server's RSS per allocation.
    Idle(IdleArgs),
    /// Run the floor: a bare batched UDP forwarder (recvmmsg/sendmmsg, one thread) that
    /// answers every TURN request with a success, without authentication, and relays
    /// ChannelData to the bound peer and back; point the relay benchmark at it as at a server.
    Floor(FloorArgs),
}

/// Long-term credentials, as a static user or from a TURN REST API secret.
#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// Static user: NAME with --password, or NAME:PASSWORD; with --secret, the REST user label.
    #[arg(long)]
    user: Option<String>,
    /// Long-term credential password.
    #[arg(long, requires = "user", conflicts_with = "secret")]
    password: Option<String>,
    /// TURN REST API shared secret: username "<unix-expiry>:<user or bench>",
    /// password base64(HMAC-SHA1(secret, username)).
    #[arg(long, env = "TURN_BENCH_SECRET")]
    secret: Option<String>,
}

impl AuthArgs {
    /// The credentials; REST ones stay valid for `valid_for` beyond an hour from now.
    fn credentials(&self, valid_for: Duration) -> anyhow::Result<Credentials> {
        Ok(match (&self.secret, &self.user, &self.password) {
            (Some(secret), user, None) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                let expiry = now + 3600 + valid_for.as_secs();
                Credentials::rest(secret, user.as_deref().unwrap_or("bench"), expiry)
            }
            (None, Some(user), Some(password)) => Credentials::new(user.clone(), password.clone()),
            (None, Some(user), None) => match user.split_once(':') {
                Some((name, password)) => Credentials::new(name, password),
                None => bail!(AUTH_USAGE),
            },
            _ => bail!(AUTH_USAGE),
        })
    }
}

/// What to give when the credentials are missing or half given.
const AUTH_USAGE: &str = "give --user NAME --password PASS, --user NAME:PASS, or --secret SECRET";

/// The relay benchmark (no subcommand).
#[derive(Debug, clap::Args)]
struct Args {
    /// TURN server, HOST:PORT.
    #[arg(long, required = true)]
    server: Option<String>,
    /// Client-to-server transport (the relay is UDP either way).
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    #[command(flatten)]
    auth: AuthArgs,
    /// Number of allocations (even: with --peers pair they are paired).
    #[arg(long, default_value_t = 20)]
    allocations: usize,
    /// Who each allocation's peer is: `pair`, the partner allocation's relayed address (the
    /// server relays every probe twice); `generator`, a UDP socket of this generator (once each
    /// way; every allocation has a peer address of its own, as coturn --multiplex-peer needs).
    #[arg(long, value_enum, default_value = "pair")]
    peers: run::Peers,
    /// --peers generator: the IP the peer sockets are bound on (default: the server's IP; the
    /// server must allow it as a peer). Better an IP the server does not relay from (e.g.
    /// 127.0.0.2 on loopback): a server refuses a peer on its own IP whose port falls in its
    /// relay port range.
    #[arg(long)]
    peer_ip: Option<IpAddr>,
    /// --peers generator: make the peer sockets in this network namespace (a file such as
    /// /run/netns/NAME, as `ip netns add NAME` makes; needs CAP_SYS_ADMIN).
    #[arg(long)]
    peer_netns: Option<std::path::PathBuf>,
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
    /// Search for the highest offered rate relayed with loss under --max-loss: one run per
    /// step, from --rate doubling until a run fails, then bisecting (each run takes --warmup +
    /// --duration plus set-up and a 0.5 s drain).
    #[arg(long)]
    find_max: bool,
    /// --find-max: a run passes with loss under this many percent (and the generator sending
    /// at least 95 % of the offered rate).
    #[arg(long, default_value_t = 0.1)]
    max_loss: f64,
    /// --find-max: total seconds for all runs; a run that would not fit is not started.
    #[arg(long, default_value_t = 60.0)]
    max_secs: f64,
    /// --find-max: most runs.
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// --find-max: never offer more than this many packets/s.
    #[arg(long, default_value_t = 2_000_000.0)]
    ceiling: f64,
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// The server's listener for this kind, HOST:PORT (UDP/TCP; the TLS or DTLS one for those).
    #[arg(long)]
    server: String,
    /// What the clients do in a loop.
    #[arg(long, value_enum)]
    kind: Kind,
    #[command(flatten)]
    auth: AuthArgs,
    /// Time of churn: 30m, 90s, 1h, or seconds.
    #[arg(long, default_value = "60s", value_parser = soak::parse_duration)]
    duration: Duration,
    /// Time between printed lines.
    #[arg(long, default_value = "10s", value_parser = soak::parse_duration)]
    interval: Duration,
    /// Intervals of churn before RSS counts as warmed up (the summary's reference).
    #[arg(long, default_value_t = 1)]
    warmup_intervals: u32,
    /// Longest wait after churn for fds, relay ports and allocations to return to their
    /// baseline (EVEN-PORT reservations take about 30 s to expire).
    #[arg(long, default_value = "40s", value_parser = soak::parse_duration)]
    settle: Duration,
    /// Server process id: RSS, open fds and bound relay ports are read from /proc/PID.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's metrics, HOST:PORT or http://HOST:PORT/metrics (turn_allocations gauge).
    #[arg(long)]
    metrics: Option<String>,
    /// The server's relay port range, MIN-MAX.
    #[arg(long, default_value = "49152-65535")]
    relay_ports: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Cycles per second, all clients together (a cycle is one pass of the kind's loop).
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Stop after this many cycles in total, even if time is left.
    #[arg(long)]
    max_cycles: Option<u64>,
    /// IP of the peers in CreatePermission/ChannelBind (default: the server's IP; the server
    /// must allow it, e.g. turn-server --allow-peer 127.0.0.0/8, coturn --allow-loopback-peers).
    #[arg(long)]
    peer_ip: Option<IpAddr>,
    /// Requested allocation lifetime in seconds (default: the server's).
    #[arg(long)]
    lifetime: Option<u32>,
    /// UDP kinds: allocations made from one source port before a new socket (new port) is used.
    #[arg(long, default_value_t = 8)]
    port_reuse: u32,
    /// channel: ChannelBinds per allocation before Refresh(0) and a new Allocate (1-4096).
    #[arg(long, default_value_t = 16)]
    binds_per_allocation: u16,
    /// tcp/tls/dtls: delete the allocation (Refresh 0) before closing, instead of leaving it
    /// to the server's connection-close handling.
    #[arg(long)]
    delete_before_close: bool,
    /// tls/dtls: close without close_notify.
    #[arg(long)]
    abrupt_close: bool,
    /// Print JSON lines (one per interval, then a summary object) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// The server's UDP listener, HOST:PORT.
    #[arg(long)]
    server: String,
    #[command(flatten)]
    auth: AuthArgs,
    /// Allocations to hold.
    #[arg(long, default_value_t = 10_000)]
    allocations: usize,
    /// First client source address; clients use it and the addresses after it in turn.
    #[arg(long, default_value = "127.0.10.1")]
    source: std::net::Ipv4Addr,
    /// Number of client source addresses (a server bounds what one address may set up).
    #[arg(long, default_value_t = 100)]
    sources: usize,
    /// Allocations being set up at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// The peer each allocation gets a permission and a channel for (the server must allow
    /// it: turn-server --allow-peer, coturn --allow-loopback-peers).
    #[arg(long, default_value = "127.0.0.1:9")]
    peer: SocketAddr,
    /// Give every allocation a peer endpoint of its own, from --peer on (ports 1024-65023,
    /// then the next IPv4 address): a multiplexed relay (turn-server --relay-multiplex,
    /// coturn --multiplex-peer) gives an endpoint to one allocation per shared socket.
    #[arg(long)]
    distinct_peers: bool,
    /// Seconds between the last allocation and the RSS reading.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Server process id: its RSS is read from /proc/PID/status.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct FloorArgs {
    /// Client-facing UDP listener, HOST:PORT.
    #[arg(long)]
    listen: SocketAddr,
    /// IP the relay sockets are bound on (the relayed transport addresses).
    #[arg(long, default_value = "127.0.0.1")]
    relay_ip: IpAddr,
    /// LIFETIME granted to every allocation, seconds (nothing expires: the floor has no timers).
    #[arg(long, default_value_t = 600)]
    lifetime: u32,
    /// Most allocations held at once.
    #[arg(long, default_value_t = 10_000)]
    max_allocations: usize,
    /// The floor exits after this many seconds.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
    /// One relay socket for all allocations, told apart by the peer's address and port (like
    /// coturn --multiplex-peer); only for peers of their own (turn-bench --peers generator).
    #[arg(long)]
    shared_relay: bool,
}

#[derive(Debug, clap::Args)]
struct AmplificationArgs {
    /// STUN/TURN server UDP listener, HOST:PORT.
    #[arg(long)]
    server: String,
    /// Requests of each kind.
    #[arg(long, default_value_t = 5)]
    repeats: u32,
    /// Wait for each response, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Soak(args)) => soak_main(&args),
        Some(Command::Amplification(args)) => amplification_main(&args),
        Some(Command::Idle(args)) => idle_main(&args),
        Some(Command::Floor(args)) => floor_main(&args),
        None => relay_main(&cli.relay),
    }
}

fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("resolving --server {server}"))?
        .next()
        .with_context(|| format!("--server {server} resolves to nothing"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn soak_main(args: &SoakArgs) -> anyhow::Result<()> {
    let server = resolve(&args.server)?;
    let (min, max) = args
        .relay_ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
        .filter(|(a, b)| a <= b)
        .context("--relay-ports must be MIN-MAX")?;
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    if args.duration.is_zero() || args.interval.is_zero() {
        bail!("--duration and --interval must be positive");
    }
    if !(1..=4096).contains(&args.binds_per_allocation) {
        bail!("--binds-per-allocation must be 1-4096 (the channel numbers 0x4000-0x4FFF)");
    }
    if args.port_reuse == 0 {
        bail!("--port-reuse must be at least 1");
    }
    let metrics = args
        .metrics
        .as_deref()
        .map(MetricsEndpoint::parse)
        .transpose()?;
    let cfg = SoakConfig {
        server,
        kind: args.kind,
        credentials: args.auth.credentials(args.duration)?,
        clients: args.clients,
        rate_cps: args.rate,
        max_cycles: args.max_cycles,
        duration: args.duration,
        interval: args.interval,
        warmup_intervals: args.warmup_intervals,
        settle: args.settle,
        server_pid: args.server_pid,
        metrics,
        relay_ports: min..=max,
        peer_ip: args.peer_ip.unwrap_or(server.ip()),
        lifetime_secs: args.lifetime,
        port_reuse: args.port_reuse,
        binds_per_allocation: args.binds_per_allocation,
        delete_before_close: args.delete_before_close,
        close: if args.abrupt_close {
            Close::Abrupt
        } else {
            Close::Graceful
        },
        json: args.json,
    };
    runtime()?.block_on(soak::run(cfg))?;
    Ok(())
}

fn amplification_main(args: &AmplificationArgs) -> anyhow::Result<()> {
    let server = resolve(&args.server)?;
    if args.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    let report = amplification::measure(
        server,
        args.repeats,
        Duration::from_millis(args.timeout_ms.max(1)),
    )?;
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        print!("{report}");
    }
    Ok(())
}

fn idle_main(args: &IdleArgs) -> anyhow::Result<()> {
    if !(args.settle.is_finite() && args.settle >= 0.0) {
        bail!("--settle must be zero or positive");
    }
    let sources = idle::loopback_sources(args.source, args.sources.max(1));
    if sources.is_empty() {
        bail!("--source must be a loopback address (127.0.0.0/8)");
    }
    let cfg = idle::IdleConfig {
        server: resolve(&args.server)?,
        credentials: args.auth.credentials(Duration::from_secs(3600))?,
        allocations: args.allocations,
        sources,
        concurrency: args.concurrency,
        peer: args.peer,
        distinct_peers: args.distinct_peers,
        settle: Duration::from_secs_f64(args.settle),
        server_pid: args.server_pid,
    };
    let report = runtime()?.block_on(idle::run(cfg));
    if args.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    Ok(())
}

fn floor_main(args: &FloorArgs) -> anyhow::Result<()> {
    let stats = floor::run(floor::FloorConfig {
        listen: args.listen,
        relay_ip: args.relay_ip,
        lifetime_secs: args.lifetime,
        max_allocations: args.max_allocations,
        max_runtime: Duration::from_secs(args.max_secs),
        shared_relay: args.shared_relay,
    })
    .with_context(|| format!("floor on {}", args.listen))?;
    eprintln!("{stats:?}");
    Ok(())
}

fn relay_main(args: &Args) -> anyhow::Result<()> {
    let cfg = config(args)?;
    if args.find_max {
        return find_max_main(args, &cfg);
    }
    // The runtime only runs the control side (setup, upkeep, teardown); traffic runs on the
    // worker threads.
    let report = runtime()?.block_on(run::run(&cfg))?;
    if args.json {
        println!("{}", report.to_json_line());
    } else {
        println!("{report}");
    }
    Ok(())
}

/// `--find-max`: one run per step of [`search::find_max`]; prints every step and the best.
fn find_max_main(args: &Args, cfg: &BenchConfig) -> anyhow::Result<()> {
    if !(args.max_loss.is_finite() && args.max_loss > 0.0) {
        bail!("--max-loss must be a positive percentage");
    }
    if !(args.max_secs.is_finite() && args.max_secs > 0.0) || args.max_steps == 0 {
        bail!("--max-secs and --max-steps must be positive");
    }
    let search_cfg = search::SearchConfig {
        start_pps: cfg.rate_pps,
        ceiling_pps: args.ceiling.max(cfg.rate_pps),
        max_loss_percent: args.max_loss,
        min_sent_fraction: 0.95,
        resolution: 0.05,
        max_steps: args.max_steps,
        budget: Duration::from_secs_f64(args.max_secs),
    };
    let rt = runtime()?;
    let mut reports = Vec::new();
    let result = search::find_max(&search_cfg, |rate| {
        let step = BenchConfig {
            rate_pps: rate,
            ..cfg.clone()
        };
        let r = rt.block_on(run::run(&step));
        match &r {
            Ok(r) if !args.json => eprintln!(
                "offered {:>9.0}/s  sent {:>9.0}/s  received {:>9.0}/s  loss {:>7.3} %",
                rate, r.sent_pps, r.received_pps, r.loss_percent
            ),
            Ok(_) => {}
            Err(e) => eprintln!("offered {rate:>9.0}/s  failed: {}", error_chain(e)),
        }
        let r = r?;
        let m = search::Measured {
            target_pps: rate,
            sent_pps: r.sent_pps,
            received_pps: r.received_pps,
            loss_percent: r.loss_percent,
        };
        reports.push(r);
        Ok::<_, run::RunError>(m)
    });
    let best = result.best.and_then(|b| {
        reports
            .iter()
            .find(|r| r.target_pps == b.target_pps)
            .cloned()
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "find_max",
                "max_loss_percent": args.max_loss,
                "max_pps": result.best.map(|b| b.target_pps),
                "max_received_pps": result.best.map(|b| b.received_pps),
                "stopped": result.stopped,
                "elapsed_secs": result.elapsed_secs,
                "steps": result.steps,
                "best": best,
            })
        );
    } else {
        match result.best {
            Some(b) => println!(
                "highest rate with loss < {} %: {:.0} offered, {:.0} received per second \
                 ({} runs in {:.1} s, {})",
                args.max_loss,
                b.target_pps,
                b.received_pps,
                result.steps.len(),
                result.elapsed_secs,
                result.stopped
            ),
            None => println!(
                "no rate passed (loss < {} %): {} runs, {}",
                args.max_loss,
                result.steps.len(),
                result.stopped
            ),
        }
        if let Some(best) = best {
            println!("{best}");
        }
    }
    Ok(())
}

/// An error and its causes, "outer: inner: innermost".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn config(args: &Args) -> anyhow::Result<BenchConfig> {
    let server = resolve(args.server.as_deref().context("give --server HOST:PORT")?)?;
    if args.peers == run::Peers::Pair
        && (args.allocations < 2 || !args.allocations.is_multiple_of(2))
    {
        bail!("--allocations must be even and at least 2 with --peers pair");
    }
    if args.allocations == 0 {
        bail!("--allocations must be at least 1");
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
    let credentials = args.auth.credentials(duration + warmup)?;
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
        peers: args.peers,
        peer_ip: args.peer_ip.unwrap_or(server.ip()),
        peer_netns: args.peer_netns.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_of_each_mode() {
        let cli = Cli::try_parse_from([
            "turn-bench",
            "--server",
            "127.0.0.1:3478",
            "--user",
            "bench",
            "--password",
            "benchpass",
            "--rate",
            "1000",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.relay.rate, 1000.0);
        assert!(config(&cli.relay).is_ok());

        let cli = Cli::try_parse_from([
            "turn-bench",
            "soak",
            "--server",
            "127.0.0.1:3478",
            "--kind",
            "even-port",
            "--user",
            "bench:benchpass",
            "--duration",
            "30m",
        ])
        .unwrap();
        let Some(Command::Soak(soak)) = cli.command else {
            panic!("soak subcommand");
        };
        assert_eq!(soak.kind, Kind::EvenPort);
        assert_eq!(soak.duration, Duration::from_secs(1800));
        assert_eq!(
            soak.auth.credentials(soak.duration).unwrap(),
            Credentials::new("bench", "benchpass")
        );

        let cli =
            Cli::try_parse_from(["turn-bench", "amplification", "--server", "127.0.0.1:3478"])
                .unwrap();
        assert!(matches!(cli.command, Some(Command::Amplification(_))));
        assert!(Cli::try_parse_from(["turn-bench"]).is_err());
        assert!(Cli::try_parse_from(["turn-bench", "--user", "a:b"]).is_err());
        assert!(
            Cli::try_parse_from(["turn-bench", "soak", "--server", "x:1", "--rate", "5"]).is_err()
        );
    }
}
