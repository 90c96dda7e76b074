//! One benchmark run: ramp the clients up at a bounded rate, fix the measurement window once
//! every client has joined or failed, sample the server around it, stop, collect.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::procfs::ProcessSample;
use bench_support::stats::Window;
use tokio::task::JoinSet;
use tokio::time::sleep_until;

use crate::api::HttpPool;
use crate::client::{self, Shared};
use crate::report::Report;

/// After the window closes, how long receivers keep counting messages in flight.
const DRAIN: Duration = Duration::from_secs(1);
/// Time allowed for all clients to leave and finish.
const FINISH_TIMEOUT: Duration = Duration::from_secs(15);

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Session server base URL (`http://HOST:PORT`).
    pub server: http::Uri,
    /// Its resolved address.
    pub server_addr: SocketAddr,
    /// `KEY:SECRET` for HTTP Basic.
    pub api_key: String,
    /// Simulated clients.
    pub connections: usize,
    /// Clients per room (the room's capacity).
    pub room_size: usize,
    /// Steady messages per second per client.
    pub rate: f64,
    /// Approximate size of a steady message frame.
    pub message_bytes: usize,
    /// Approximate SDP size of offers and answers.
    pub sdp_bytes: usize,
    /// Candidates per direction per pair in the negotiation burst.
    pub candidates: usize,
    /// Ping interval.
    pub ping_interval: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Time between the last client settling and the window.
    pub settle: Duration,
    /// New clients per second.
    pub connect_rate: f64,
    /// Time allowed after the ramp for every client to join; those that have not by then
    /// give up (`setup_timeout`).
    pub setup_timeout: Duration,
    /// HTTP keep-alive connections for the joins.
    pub http_connections: usize,
    /// Local addresses to spread the WebSocket connections over (empty: the kernel's choice).
    pub source_ips: Vec<IpAddr>,
    /// Server process to read RSS and CPU time from.
    pub server_pid: Option<u32>,
    /// Room names are `<prefix>-<n>`.
    pub room_prefix: String,
    /// Print each setup failure to stderr.
    pub verbose: bool,
}

impl BenchConfig {
    /// The room client `index` joins.
    pub fn room_name(&self, index: u32) -> String {
        format!("{}-{}", self.room_prefix, index as usize / self.room_size)
    }
}

/// Server and generator state read from /proc at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Server CPU time so far and resident memory.
    pub server: ProcessSample,
    /// This generator's.
    pub bench: ProcessSample,
    /// Connections joined and open.
    pub held: usize,
}

impl Sample {
    fn take(server_pid: Option<u32>, shared: &Shared) -> Self {
        Self {
            at: Instant::now(),
            server: ProcessSample::read_pid(server_pid),
            bench: ProcessSample::read("self"),
            held: shared.held.load(Ordering::Acquire),
        }
    }
}

/// The samples of a run.
#[derive(Debug, Clone, Copy)]
pub struct Samples {
    /// Before the first connection.
    pub before: Sample,
    /// At the window's start.
    pub start: Sample,
    /// In the middle of the window (all connections held).
    pub middle: Sample,
    /// At the window's end.
    pub end: Sample,
}

/// Runs the benchmark and returns its figures.
pub async fn run(cfg: Arc<BenchConfig>) -> Report {
    let http = HttpPool::new(
        cfg.server_addr,
        &cfg.server,
        &cfg.api_key,
        cfg.http_connections,
    );
    let shared = Arc::new(Shared::new(http));
    let before = Sample::take(cfg.server_pid, &shared);

    // Ramp: client i starts at i / connect_rate.
    let started = Instant::now();
    let ramp = Duration::from_secs_f64(cfg.connections as f64 / cfg.connect_rate);
    let give_up = started + ramp + cfg.setup_timeout;
    let mut clients = JoinSet::new();
    for i in 0..cfg.connections {
        let at = started + Duration::from_secs_f64(i as f64 / cfg.connect_rate);
        clients.spawn(client::run_client(
            shared.clone(),
            cfg.clone(),
            i as u32,
            at,
            give_up,
        ));
    }
    let mut last_report = started;
    while shared.settled.load(Ordering::Acquire) < cfg.connections && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "signaling-bench: {:.0} s: {} of {} clients settled, {} held",
                started.elapsed().as_secs_f64(),
                shared.settled.load(Ordering::Acquire),
                cfg.connections,
                shared.held.load(Ordering::Acquire)
            );
        }
    }
    let setup = started.elapsed();

    // Window.
    let start_ns = shared.now_ns() + cfg.settle.as_nanos() as u64;
    let window = Window {
        start_ns,
        end_ns: start_ns + cfg.duration.as_nanos() as u64,
    };
    shared.set_window(window);
    sleep_until(shared.instant(window.start_ns).into()).await;
    let start = Sample::take(cfg.server_pid, &shared);
    sleep_until(
        shared
            .instant(window.start_ns + (window.end_ns - window.start_ns) / 2)
            .into(),
    )
    .await;
    let middle = Sample::take(cfg.server_pid, &shared);
    sleep_until(shared.instant(window.end_ns).into()).await;
    let end = Sample::take(cfg.server_pid, &shared);

    // Drain, leave, collect.
    tokio::time::sleep(DRAIN).await;
    shared.stop.cancel();
    let finish = tokio::time::timeout(FINISH_TIMEOUT, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    if finish.is_err() {
        eprintln!(
            "signaling-bench: {} clients did not finish in {FINISH_TIMEOUT:?}; aborted",
            clients.len()
        );
        clients.abort_all();
    }
    let stats = shared
        .stats
        .lock()
        .expect("stats lock not poisoned")
        .clone();
    Report::new(
        &cfg,
        setup,
        &stats,
        &Samples {
            before,
            start,
            middle,
            end,
        },
    )
}
