//! sfu-bench: measures a real turnkey SFU node over loopback with real ICE and DTLS-SRTP, or
//! (`--server janus`) Janus's VideoRoom as an anchor under the very same load.
//!
//! The server runs as a child process (so its CPU time and memory are its own in /proc): the
//! `sfu` binary (`node`) or `janus` with a configuration the bench writes (`janus`). Synthetic
//! participants are webrtc-rs `rtc` peer connections on local UDP sockets, driven by the
//! bench's own mio event loops (`client`), negotiating over the SFU's signaling link (`signal`,
//! services/sfu/PROTOCOL.md) or Janus's API (`janus_api`), which both carry the same offers and
//! answers to the client threads. Publishers send VP8-shaped and Opus-sized RTP whose payload
//! carries a probe (`probe`); subscribers decode it to count loss and take the
//! publish -> receive latency on one monotonic clock. Figures are printed as one table.

mod client;
mod connect;
mod janus;
mod janus_api;
mod node;
mod probe;
mod signal;
mod simulate;

use anyhow::{bail, Context as _};
use bench_support::histogram::LatencyHistogram;
use bench_support::procfs::{self, ProcessSample};
use bench_support::prom;
use bench_support::report::{loss_percent, mib, opt, percent_of_core};
use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// How often the server's RSS is read through the measured window (its peak is reported).
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ServerKind {
    /// turnkey's `sfu` node.
    Turnkey,
    /// Janus's VideoRoom plugin (the `janus` binary, e.g. Debian's package).
    Janus,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            Self::Turnkey => "turnkey",
            Self::Janus => "janus",
        }
    }
}

/// Load generator for the turnkey SFU (or Janus, as an anchor): publishers and subscribers over
/// real ICE/DTLS-SRTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The server to measure.
    #[arg(long, value_enum, default_value_t = ServerKind::Turnkey)]
    server: ServerKind,
    /// Local address of the media (the server's ICE candidates and the clients' sockets)
    /// [default: 127.0.0.1 for turnkey; for Janus, which never gathers on loopback, the first
    /// IPv4 address of another interface; datagrams between local addresses still go over the
    /// loopback device].
    #[arg(long)]
    host_ip: Option<IpAddr>,
    /// Rooms of --room-size participants; everyone publishes video + audio and subscribes to
    /// the others. Ignored with --fanout.
    #[arg(long, default_value_t = 5)]
    rooms: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 4)]
    room_size: usize,
    /// One room: one publisher and this many subscribers (who publish nothing).
    #[arg(long)]
    fanout: Option<usize>,
    /// Video frames per second per publisher.
    #[arg(long, default_value_t = 30.0)]
    fps: f64,
    /// RTP packets per video frame.
    #[arg(long, default_value_t = 3)]
    packets_per_frame: usize,
    /// Video RTP payload bytes.
    #[arg(long, default_value_t = 1000)]
    video_bytes: usize,
    /// Audio packets per second per publisher (0: no audio is sent, the track is still there).
    #[arg(long, default_value_t = 50.0)]
    audio_pps: f64,
    /// Audio RTP payload bytes.
    #[arg(long, default_value_t = 100)]
    audio_bytes: usize,
    /// Clients offer only SRTP_AES128_CM_HMAC_SHA1_80 (what Chromium negotiates with the SFU)
    /// instead of webrtc-rs's default, AEAD AES-128-GCM.
    #[arg(long)]
    srtp_aes_cm: bool,
    /// Each publisher also sends this many forged SRTP datagrams from its own socket, each of
    /// a fresh SSRC (50 per video frame, once connected): what someone forging the publisher's
    /// address could send. The SFU counts them in `sfu_bad_input_total{kind="ssrc"}`
    /// (`sfu_ssrc_refused` in the JSON) and media must flow as before.
    #[arg(long, default_value_t = 0)]
    spoof_ssrcs: u32,
    /// Seconds between keyframes.
    #[arg(long, default_value_t = 2.0)]
    keyframe_secs: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of traffic after every flow is up, before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Most seconds to wait for every (subscriber, track) flow to deliver a first packet.
    #[arg(long, default_value_t = 30.0)]
    setup_timeout: f64,
    /// Client event-loop threads (each runs a share of the participants).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// SFU worker event loops (`sfu --workers`).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// The `sfu` binary [default: `sfu` next to this binary].
    #[arg(long)]
    sfu_bin: Option<PathBuf>,
    /// One more flag for the `sfu` node (repeat for several, e.g. `--sfu-arg=--direct-send
    /// --sfu-arg=false`).
    #[arg(long = "sfu-arg", allow_hyphen_values = true)]
    sfu_args: Vec<String>,
    /// The `janus` binary.
    #[arg(long, default_value = "janus")]
    janus_bin: PathBuf,
    /// Folder of Janus's plugin folders [default: the first /usr/lib/*/janus with the VideoRoom
    /// plugin].
    #[arg(long)]
    janus_lib_dir: Option<PathBuf>,
    /// Janus `event_loops` (0: Janus's default of one thread per handle) [default: --workers].
    #[arg(long)]
    janus_event_loops: Option<usize>,
    /// Instead of a media run: open this many peer connections in a row (rooms of one
    /// publisher and one subscriber, two PCs each, one PC of each DTLS role at the SFU) and
    /// print how many completed (ICE + DTLS connected and SRTP flowing) and their setup time.
    #[arg(long)]
    connect_only: Option<usize>,
    /// With --connect-only: rooms set up at the same time (1: strictly one after another).
    #[arg(long, default_value_t = 1)]
    connect_parallel: usize,
    /// With --connect-only: seconds a room may take before its missing PCs count as failed.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Percent of the clients' datagrams dropped on purpose, each way (media, ICE and DTLS
    /// alike), as a lossy path would.
    #[arg(long, default_value_t = 0.0)]
    drop_percent: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Instead of a measured run against a node of its own: drive rooms of 4 through running
    /// signaling nodes (this HTTP base URL; repeat to spread the joins over several), arriving
    /// one every --sim-arrival-secs, each live --sim-room-secs, and print one JSON line per
    /// room (its channel node, SFU node, flows, longest media gap, errors) and a summary.
    /// Needs --api-key.
    #[arg(long = "signaling")]
    signaling: Vec<String>,
    /// API key (`KEY:SECRET`) of the signaling nodes (--signaling).
    #[arg(long = "api-key")]
    api_key: Option<String>,
    /// With --signaling: rooms in all.
    #[arg(long = "sim-rooms", default_value_t = 10)]
    sim_rooms: usize,
    /// With --signaling: seconds between two rooms' arrivals.
    #[arg(long = "sim-arrival-secs", default_value_t = 2.0)]
    sim_arrival_secs: f64,
    /// With --signaling: seconds each room is live (from its arrival).
    #[arg(long = "sim-room-secs", default_value_t = 20.0)]
    sim_room_secs: f64,
    /// With --signaling: prefix of the room names (`<prefix>-<i>`).
    #[arg(long = "sim-prefix", default_value = "sim")]
    sim_prefix: String,
}

struct Plan {
    name: String,
    /// (room, participant id, publishes)
    seats: Vec<(String, String, bool)>,
    /// Room index of each seat.
    room_of: Vec<usize>,
    /// Publishers per room.
    publishers_per_room: Vec<usize>,
    /// Seats whose tracks each seat receives.
    subscribes_to: Vec<Vec<usize>>,
    /// Subscribers of each publisher's tracks.
    subscribers_per_publisher: usize,
    subscribers: usize,
}

fn plan(a: &Args) -> anyhow::Result<Plan> {
    if let Some(n) = a.fanout {
        if n == 0 {
            bail!("--fanout must be at least 1");
        }
        let mut seats = vec![("fanout".to_string(), "pub".to_string(), true)];
        seats.extend((0..n).map(|i| ("fanout".to_string(), format!("s{i}"), false)));
        let mut subscribes_to = vec![Vec::new()];
        subscribes_to.extend((0..n).map(|_| vec![0]));
        return Ok(Plan {
            name: format!("fanout 1->{n}"),
            room_of: vec![0; seats.len()],
            publishers_per_room: vec![1],
            subscribes_to,
            seats,
            subscribers_per_publisher: n,
            subscribers: n,
        });
    }
    if a.rooms == 0 || a.room_size < 2 {
        bail!("--rooms must be >= 1 and --room-size >= 2");
    }
    let mut seats = Vec::new();
    let (mut room_of, mut subscribes_to) = (Vec::new(), Vec::new());
    for r in 0..a.rooms {
        for p in 0..a.room_size {
            seats.push((format!("r{r}"), format!("p{r}-{p}"), true));
            room_of.push(r);
            let first = r * a.room_size;
            subscribes_to.push(
                (first..first + a.room_size)
                    .filter(|&o| o != first + p)
                    .collect(),
            );
        }
    }
    Ok(Plan {
        name: format!("{}x{} rooms", a.rooms, a.room_size),
        room_of,
        publishers_per_room: vec![a.room_size; a.rooms],
        subscribes_to,
        subscribers: seats.len(),
        seats,
        subscribers_per_publisher: a.room_size - 1,
    })
}

/// CPU and wall clock at one instant.
#[derive(Clone, Copy)]
struct Snap {
    wall: Instant,
    sfu: ProcessSample,
    /// The server's live threads' CPU time, to the nanosecond ([`procfs::read_live_threads_cpu`]).
    sfu_live: Option<Duration>,
    sfu_workers: Duration,
    bench: ProcessSample,
    clients: Duration,
}

/// The server's CPU seconds from `a` to `b`: its live threads' schedstat (nanoseconds) when
/// that agrees with `stat` (10 ms ticks) within two ticks, i.e. no thread exited in between;
/// otherwise `stat`'s. At the 6 % of a core rooms load the SFU with, 8 s are 48 ticks, so the
/// tick alone moved the packets-per-CPU-second figure by 2 %.
fn server_cpu_secs(a: &Snap, b: &Snap) -> f64 {
    let ticks = b.sfu.cpu_secs_since(&a.sfu).unwrap_or(0.0);
    match (a.sfu_live, b.sfu_live) {
        (Some(x), Some(y)) if (y.saturating_sub(x).as_secs_f64() - ticks).abs() <= 0.02 => {
            y.saturating_sub(x).as_secs_f64()
        }
        _ => ticks,
    }
}

fn snap(pid: &str) -> Snap {
    let sum = |v: Vec<(String, Duration)>| v.into_iter().map(|(_, d)| d).sum();
    Snap {
        wall: Instant::now(),
        sfu: ProcessSample::read(pid),
        sfu_live: procfs::read_live_threads_cpu(pid),
        sfu_workers: sum(procfs::read_thread_cpu(pid, "sfu-worker-")),
        bench: ProcessSample::read("self"),
        clients: sum(procfs::read_thread_cpu("self", "bench-client-")),
    }
}

pub fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // The clients' own webrtc-rs logs (`log` records), e.g. BENCH_LOG=rtc_dtls=debug.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    if !(a.duration > 0.0 && a.warmup >= 0.0 && a.fps > 0.0 && a.setup_timeout > 0.0) {
        bail!("--duration, --fps and --setup-timeout must be positive, --warmup not negative");
    }
    if a.client_threads == 0 || a.workers == 0 || a.packets_per_frame == 0 {
        bail!("--client-threads, --workers and --packets-per-frame must be at least 1");
    }
    let load = client::Load {
        fps: a.fps,
        packets_per_frame: a.packets_per_frame,
        video_bytes: a.video_bytes.max(probe::MIN_PAYLOAD),
        audio_pps: a.audio_pps,
        audio_bytes: a.audio_bytes.max(probe::MIN_PAYLOAD),
        keyframe_interval: Duration::from_secs_f64(a.keyframe_secs.max(0.1)),
        drop_ppm: (a.drop_percent.clamp(0.0, 100.0) * 10_000.0) as u32,
        srtp_aes_cm: a.srtp_aes_cm,
        spoof_ssrcs: a.spoof_ssrcs,
    };
    if let Some(pcs) = a.connect_only {
        return connect_only(&a, pcs, &load);
    }
    if !a.signaling.is_empty() {
        let Some(key) = a.api_key.clone() else {
            bail!("--signaling needs --api-key KEY:SECRET");
        };
        return simulate::run(&simulate::SimConfig {
            signaling: a.signaling.clone(),
            api_key: key,
            rooms: a.sim_rooms,
            arrival: Duration::from_secs_f64(a.sim_arrival_secs.max(0.0)),
            room_life: Duration::from_secs_f64(a.sim_room_secs.max(1.0)),
            prefix: a.sim_prefix.clone(),
            host_ip: a.host_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            load,
        });
    }
    let plan = plan(&a)?;
    let secret = "sfu-bench-secret".to_string();
    let (server, host_ip) = match a.server {
        ServerKind::Turnkey => {
            let bin = sfu_bin(&a)?;
            let host_ip = a.host_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            let node = node::SfuNode::start(&node::NodeConfig {
                bin: &bin,
                workers: a.workers,
                secret: &secret,
                max_participants: plan.seats.len().max(a.room_size) + 1,
                host_ip,
                args: &a.sfu_args,
            })?;
            (Server::Turnkey(node), host_ip)
        }
        ServerKind::Janus => {
            let host_ip = match a.host_ip {
                Some(ip) => ip,
                None => janus::first_host_ipv4()?,
            };
            let lib_dir = match &a.janus_lib_dir {
                Some(d) => d.clone(),
                None => janus::find_lib_dir()?,
            };
            let node = janus::JanusNode::start(&janus::JanusConfig {
                bin: &a.janus_bin,
                lib_dir: &lib_dir,
                host_ip,
                event_loops: a.janus_event_loops.unwrap_or(a.workers),
            })?;
            (Server::Janus(node), host_ip)
        }
    };
    let pid = server.pid();
    let result = run(&a, &plan, load, &server, host_ip, &pid, &secret);
    let mut server = server;
    let alive = server.alive();
    let log = server.log();
    server.stop();
    if !alive {
        eprintln!(
            "the {} server exited during the run; see {}",
            a.server.name(),
            log.display()
        );
    }
    let report = result?;
    if a.json {
        println!("{}", report.json);
    } else {
        println!("{}", report.text);
    }
    Ok(())
}

/// `--connect-only`: PCs in a row against a fresh node; prints completed of attempted and the
/// setup time quantiles. Fails (exit status) unless every PC completed.
fn connect_only(a: &Args, pcs: usize, load: &client::Load) -> anyhow::Result<()> {
    if pcs == 0 || a.connect_parallel == 0 || a.connect_timeout <= 0.0 {
        bail!(
            "--connect-only and --connect-parallel must be at least 1, --connect-timeout positive"
        );
    }
    let bin = sfu_bin(a)?;
    let secret = "sfu-bench-secret".to_string();
    let node = node::SfuNode::start(&node::NodeConfig {
        bin: &bin,
        workers: a.workers,
        secret: &secret,
        max_participants: 2,
        host_ip: a.host_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
        args: &a.sfu_args,
    })?;
    let result = connect::run(
        &node,
        &secret,
        load,
        pcs,
        a.connect_parallel,
        Duration::from_secs_f64(a.connect_timeout),
    );
    let mut node = node;
    let alive = node.alive();
    let log = node.log.clone();
    node.stop();
    if !alive {
        eprintln!("the sfu exited during the run; see {}", log.display());
    }
    let r = result?;
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
    let (p50, p99, max) = (
        ms(r.setup_quantile(0.5)),
        ms(r.setup_quantile(0.99)),
        ms(r.setup_quantile(1.0)),
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "connect-only", "attempted": r.attempted, "completed": r.completed,
                "connected_without_media": r.connected_without_media,
                "parallel_rooms": a.connect_parallel, "setup_p50_ms": p50, "setup_p99_ms": p99,
                "setup_max_ms": max, "wall_secs": r.wall.as_secs_f64(),
                "dropped_datagrams": r.dropped, "client_dtls_flights_resent": r.flights_resent,
                "failures": r.failures.iter().map(|(i, f)| format!("round {i}: {f}")).collect::<Vec<_>>(),
            })
        );
    } else {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "connect-only: {} of {} peer connections completed (ICE + DTLS connected, SRTP flowing), \
             {} connected without media; setup p50 {} ms, p99 {} ms, max {} ms; {} room(s) at a time, {:.1} s; \
             {} datagrams dropped on purpose, {} client DTLS flights resent",
            r.completed,
            r.attempted,
            r.connected_without_media,
            f(p50),
            f(p99),
            f(max),
            a.connect_parallel,
            r.wall.as_secs_f64(),
            r.dropped,
            r.flights_resent
        );
        for (i, f) in r.failures.iter().take(10) {
            println!("  round {i}: {f}");
        }
    }
    if r.completed < r.attempted {
        bail!(
            "{} of {} peer connections did not complete",
            r.attempted - r.completed,
            r.attempted
        );
    }
    Ok(())
}

fn sfu_bin(a: &Args) -> anyhow::Result<PathBuf> {
    Ok(match &a.sfu_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no parent directory")?
            .join("sfu"),
    })
}

struct Report {
    text: String,
    json: serde_json::Value,
}

/// The server child under test.
enum Server {
    Turnkey(node::SfuNode),
    Janus(janus::JanusNode),
}

impl Server {
    fn pid(&self) -> String {
        match self {
            Self::Turnkey(n) => n.pid(),
            Self::Janus(n) => n.pid(),
        }
    }

    fn alive(&mut self) -> bool {
        match self {
            Self::Turnkey(n) => n.alive(),
            Self::Janus(n) => n.alive(),
        }
    }

    fn log(&self) -> PathBuf {
        match self {
            Self::Turnkey(n) => n.log.clone(),
            Self::Janus(n) => n.log.clone(),
        }
    }

    fn stop(self) {
        match self {
            Self::Turnkey(n) => n.stop(),
            Self::Janus(n) => n.stop(),
        }
    }
}

fn run(
    a: &Args,
    plan: &Plan,
    load: client::Load,
    server: &Server,
    host_ip: IpAddr,
    pid: &str,
    secret: &str,
) -> anyhow::Result<Report> {
    let rss_before = procfs::read_process_rss_bytes(pid).unwrap_or(0);
    let anon_before = procfs::read_process_rss_anon_bytes(pid).unwrap_or(0);
    let shared = Arc::new(client::Shared::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let link_errors = Arc::new(signal::LinkErrors::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let _entered = rt.enter();
    // Seats go round-robin to client threads; each thread gets a poll, a waker and an inbox.
    let mut threads = Vec::new();
    let mut per_thread: Vec<Vec<client::Seat>> = vec![Vec::new(); a.client_threads];
    let mut links = Vec::new();
    let mut polls = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..a.client_threads {
        let poll = mio::Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(usize::MAX))?);
        let (tx, rx) = mpsc::channel();
        polls.push(poll);
        inboxes.push((tx, waker, Some(rx)));
    }
    let (mut janus_seats, mut janus_outboxes) = (Vec::new(), Vec::new());
    for (i, (room, id, publishes)) in plan.seats.iter().enumerate() {
        let t = i % a.client_threads;
        let slot = per_thread[t].len();
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        per_thread[t].push(client::Seat {
            index: i as u32,
            publishes: *publishes,
            outbox: out_tx,
            candidates_in_sdp: matches!(server, Server::Janus(_)),
        });
        let inbox = (inboxes[t].0.clone(), inboxes[t].1.clone());
        match server {
            Server::Turnkey(node) => links.push(rt.spawn(signal::run_link(
                node.link,
                secret.to_string(),
                room.clone(),
                id.clone(),
                slot,
                inbox,
                out_rx,
                link_errors.clone(),
                shutdown.clone(),
            ))),
            Server::Janus(_) => {
                janus_seats.push(janus_api::JanusSeat {
                    room: plan.room_of[i],
                    id: id.clone(),
                    publishes: *publishes,
                    subscribes_to: plan.subscribes_to[i].clone(),
                    inbox,
                    slot,
                });
                janus_outboxes.push(out_rx);
            }
        }
    }
    if let Server::Janus(node) = server {
        links.push(rt.spawn(janus_api::run(
            node.api,
            plan.publishers_per_room.clone(),
            janus_seats,
            janus_outboxes,
            link_errors.clone(),
            shutdown.clone(),
        )));
    }
    for (t, (poll, seats)) in polls.into_iter().zip(per_thread).enumerate() {
        let rx = inboxes[t].2.take().context("inbox")?;
        let shared = shared.clone();
        let load = load.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-client-{t}"))
                .spawn(move || client::run(poll, seats, rx, load, host_ip, shared))?,
        );
    }
    let publishers = plan.seats.iter().filter(|s| s.2).count();
    let tracks_per_publisher = if a.audio_pps > 0.0 { 2 } else { 1 };
    let want_flows = publishers * plan.subscribers_per_publisher * tracks_per_publisher;
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(a.setup_timeout);
    let mut last = Instant::now();
    while shared.flows.load(Ordering::Relaxed) < want_flows && t0.elapsed() < timeout {
        rt.block_on(tokio::time::sleep(Duration::from_millis(50)));
        if last.elapsed() > Duration::from_secs(2) {
            last = Instant::now();
            eprintln!(
                "setup: {} of {want_flows} flows, {} PCs connected",
                shared.flows.load(Ordering::Relaxed),
                shared.connected.load(Ordering::Relaxed)
            );
        }
    }
    let setup = t0.elapsed();
    let flows_up = shared.flows.load(Ordering::Relaxed);
    if flows_up < want_flows {
        eprintln!(
            "setup timed out after {:.1} s: {flows_up} of {want_flows} flows; measuring anyway",
            setup.as_secs_f64()
        );
    }
    rt.block_on(tokio::time::sleep(Duration::from_secs_f64(a.warmup)));
    let rss_connected = procfs::read_process_rss_bytes(pid).unwrap_or(0);
    let anon_connected = procfs::read_process_rss_anon_bytes(pid).unwrap_or(0);
    // The SFU's own measure of its added latency (turnkey only; older builds lack it).
    let metrics = match server {
        Server::Turnkey(node) => Some(node.metrics),
        Server::Janus(_) => None,
    };
    let delay_buckets = || {
        metrics
            .and_then(|m| prom::fetch_metrics(m, Duration::from_secs(2)))
            .map(|text| prom::histogram_buckets(&text, "sfu_forwarding_delay_seconds"))
            .unwrap_or_default()
    };
    let delay0 = delay_buckets();
    let s0 = snap(pid);
    shared
        .window_start_us
        .store(shared.now_us(), Ordering::Relaxed);
    // Memory under load: the server's RSS sampled through the window, its peak kept. A server
    // whose buffers fill while media flows (Janus's grow for several seconds after every flow
    // is up) holds more than it did at connect; what an operator provisions for is the peak.
    let window_end = Instant::now() + Duration::from_secs_f64(a.duration);
    let (mut rss_peak, mut anon_peak) = (rss_connected, anon_connected);
    loop {
        let left = window_end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        rt.block_on(tokio::time::sleep(left.min(RSS_SAMPLE_EVERY)));
        rss_peak = rss_peak.max(procfs::read_process_rss_bytes(pid).unwrap_or(0));
        anon_peak = anon_peak.max(procfs::read_process_rss_anon_bytes(pid).unwrap_or(0));
    }
    shared
        .window_end_us
        .store(shared.now_us(), Ordering::Relaxed);
    let s1 = snap(pid);
    let delay = prom::bucket_delta(&delay0, &delay_buckets());
    let rss_end = procfs::read_process_rss_bytes(pid).unwrap_or(0);
    // How many subscribe PCs the worker sends itself (turnkey only; older builds lack it).
    let page = metrics.and_then(|m| prom::fetch_metrics(m, Duration::from_secs(2)));
    let direct = |name: &str, with: Option<&str>| {
        page.as_deref()
            .and_then(|t| prom::sample_sum(t, name, with))
    };
    let direct_engaged = direct("sfu_direct_send_total", Some("result=\"engaged\""));
    let direct_refused = direct("sfu_direct_send_total", Some("result=\"refused\""));
    let direct_packets = direct("sfu_direct_packets_total", None);
    let receive_engaged = direct("sfu_direct_receive_total", Some("result=\"engaged\""));
    let receive_refused = direct("sfu_direct_receive_total", Some("result=\"refused\""));
    let received_packets = direct("sfu_direct_received_packets_total", None);
    let ssrc_refused = direct("sfu_bad_input_total", Some("kind=\"ssrc\""));
    let nack_requested = direct("sfu_nack_requested_total", None);
    let rtcp_engaged = direct("sfu_direct_rtcp_total", Some("result=\"engaged\""));
    let rtcp_packets = direct("sfu_direct_rtcp_packets_total", None);
    let sfu_q = |x: f64| prom::quantile(&delay, x).map(|s| (s * 1e6).round() as u64);
    // Let in-flight window packets arrive.
    rt.block_on(tokio::time::sleep(Duration::from_millis(500)));
    shared.stop.store(true, Ordering::Relaxed);
    let mut latency = LatencyHistogram::default();
    let (mut received, mut duplicates, mut expected, mut sent) = (0u64, 0u64, 0u64, 0u64);
    let (mut key_req, mut write_err, mut send_err, mut lagged) = (0, 0, 0, 0);
    let mut errors = Vec::new();
    for t in threads {
        let r = t
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        latency.merge(&r.latency);
        received += r.received;
        duplicates += r.duplicates;
        for v in r.sent.values() {
            sent += v[0] + v[1];
            expected += (v[0] + v[1]) * plan.subscribers_per_publisher as u64;
        }
        key_req += r.keyframe_requests;
        write_err += r.write_errors;
        send_err += r.send_errors;
        lagged += r.lagged;
        errors.extend(r.errors);
    }
    shutdown.cancel();
    for l in links {
        let _ = rt.block_on(l);
    }
    let wall = (s1.wall - s0.wall).as_secs_f64();
    let secs = |a: Duration, b: Duration| (b.saturating_sub(a)).as_secs_f64();
    let sfu_cpu = server_cpu_secs(&s0, &s1);
    let sfu_workers = secs(s0.sfu_workers, s1.sfu_workers);
    let bench_cpu = s1.bench.cpu_secs_since(&s0.bench).unwrap_or(0.0);
    let clients_cpu = secs(s0.clients, s1.clients);
    let recv_pps = received as f64 / wall;
    let exp_pps = expected as f64 / wall;
    let loss = loss_percent(expected, received);
    let sfu_cores = sfu_cpu / wall;
    let pps_per_core = if sfu_cores > 0.0 {
        recv_pps / sfu_cores
    } else {
        0.0
    };
    let per_sub = |at: u64, before: u64| at.saturating_sub(before) as f64 / plan.subscribers as f64;
    let rss_per_sub = per_sub(rss_connected, rss_before);
    // The same without file-backed pages: code run for the first time when participants connect
    // is a fixed cost, not per-subscriber state.
    let anon_per_sub = per_sub(anon_connected, anon_before);
    let client_busiest = clients_cpu / wall / a.client_threads as f64;
    let sfu_workers_percent = percent_of_core(sfu_workers, wall);
    let bench_percent = percent_of_core(bench_cpu, wall);
    let clients_percent = percent_of_core(clients_cpu, wall);
    let q = |x: f64| latency.quantile_us(x);
    let mut json = serde_json::json!({
        "server": a.server.name(), "host_ip": host_ip.to_string(),
        "scenario": plan.name, "participants": plan.seats.len(), "publishers": publishers,
        "subscribers": plan.subscribers, "flows": want_flows, "flows_up": flows_up,
        "setup_secs": setup.as_secs_f64(), "window_secs": wall,
        "sent_pps": sent as f64 / wall, "expected_pps": exp_pps, "received_pps": recv_pps,
        "loss_percent": loss, "duplicates": duplicates,
        "latency_p50_us": q(0.5), "latency_p99_us": q(0.99), "latency_max_us": q(1.0),
        "sfu_cpu_percent": 100.0 * sfu_cores, "sfu_workers_cpu_percent": sfu_workers_percent,
        "pps_per_sfu_core": pps_per_core, "sfu_rss_before_bytes": rss_before,
        "sfu_rss_connected_bytes": rss_connected, "sfu_rss_per_subscriber_bytes": rss_per_sub,
        "sfu_rss_anon_before_bytes": anon_before, "sfu_rss_anon_connected_bytes": anon_connected,
        "sfu_rss_anon_per_subscriber_bytes": anon_per_sub,
        "sfu_rss_end_bytes": rss_end,
        "sfu_rss_end_per_subscriber_bytes":
            per_sub(rss_end, rss_before),
        "sfu_delay_p50_us": sfu_q(0.5), "sfu_delay_p99_us": sfu_q(0.99),
        "bench_cpu_percent": bench_percent,
        "bench_client_threads_cpu_percent": clients_percent,
        "keyframe_requests": key_req, "write_errors": write_err, "send_errors": send_err,
        "lagged": lagged, "link_connect_errors": link_errors.connect.load(Ordering::Relaxed),
        "link_closed": link_errors.closed.load(Ordering::Relaxed), "errors": errors,
    });
    json["sfu_rss_peak_bytes"] = rss_peak.into();
    json["sfu_rss_anon_peak_bytes"] = anon_peak.into();
    json["sfu_rss_peak_per_subscriber_bytes"] = per_sub(rss_peak, rss_before).into();
    json["sfu_rss_anon_peak_per_subscriber_bytes"] = per_sub(anon_peak, anon_before).into();
    json["sfu_direct_engaged"] = direct_engaged.into();
    json["sfu_direct_refused"] = direct_refused.into();
    json["sfu_direct_packets"] = direct_packets.into();
    json["sfu_direct_receive_engaged"] = receive_engaged.into();
    json["sfu_direct_receive_refused"] = receive_refused.into();
    json["sfu_direct_received_packets"] = received_packets.into();
    json["sfu_ssrc_refused"] = ssrc_refused.into();
    json["sfu_nack_requested"] = nack_requested.into();
    json["sfu_direct_rtcp_engaged"] = rtcp_engaged.into();
    json["sfu_direct_rtcp_packets"] = rtcp_packets.into();
    let mut text = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        text,
        "{:<8} {:<14} {:>5} {:>5} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>8} {:>12} {:>8} {:>8}",
        "server",
        "scenario",
        "pubs",
        "subs",
        "flows",
        "exp pps",
        "recv pps",
        "loss %",
        "p50 µs",
        "p99 µs",
        "max µs",
        "sfu cpu%",
        "pps/sfu core",
        "KiB/sub",
        "bench%"
    );
    let _ = writeln!(
        text,
        "{:<8} {:<14} {:>5} {:>5} {:>9} {:>9.0} {:>9.0} {:>7.3} {:>7} {:>7} {:>8} {:>8.1} {:>12.0} {:>8.1} {:>8.1}",
        a.server.name(),
        plan.name,
        publishers,
        plan.subscribers,
        format!("{flows_up}/{want_flows}"),
        exp_pps,
        recv_pps,
        loss,
        opt(q(0.5)),
        opt(q(0.99)),
        opt(q(1.0)),
        100.0 * sfu_cores,
        pps_per_core,
        rss_per_sub / 1024.0,
        bench_percent,
    );
    let _ = write!(
        text,
        "window {wall:.1} s after {:.1} s setup; publishers sent {:.0} pps; sfu workers {:.1}% of the {} server's {:.1}% CPU; \
         server RSS {:.1} -> {:.1} MiB (peak {:.1} MiB under load, {:.1} MiB at the end); SFU-side forwarding delay p50 {} µs, p99 {} µs; bench client threads {:.1}% of {} core(s) (busiest-average {:.0}%: {}); \
         duplicates {duplicates}, keyframe requests {key_req}, write errors {write_err}, send errors {send_err}, \
         lagged {lagged}, link failures {}/{}, server errors {}; media on {host_ip}",
        setup.as_secs_f64(),
        sent as f64 / wall,
        sfu_workers_percent,
        a.server.name(),
        100.0 * sfu_cores,
        mib(rss_before),
        mib(rss_connected),
        mib(rss_peak),
        mib(rss_end),
        opt(sfu_q(0.5)),
        opt(sfu_q(0.99)),
        clients_percent,
        a.client_threads,
        100.0 * client_busiest,
        if client_busiest > 0.85 { "the bench client is likely the bottleneck" } else { "client not saturated" },
        link_errors.connect.load(Ordering::Relaxed),
        link_errors.closed.load(Ordering::Relaxed),
        errors.len(),
    );
    for e in errors.iter().take(5) {
        let _ = write!(text, "\n  error: {e}");
    }
    Ok(Report { text, json })
}
