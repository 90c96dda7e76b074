//! One benchmark run: open the allocations, pair them, pace probes through the relay, measure,
//! clean up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_support::procfs::ProcessSample;
use bench_support::stats::Window;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Allocation, ClientError};
use crate::net::{self, ServerSocket, Transport};
use crate::procfs;
use crate::proto::{Credentials, Request};
use crate::report::Report;
use crate::stats::{FlowReceiver, ReceiveStats, SendStats};
use crate::wire::FIRST_CHANNEL;
use crate::worker::{self, Flow, Timing};

/// After the window closes, how long receivers keep counting in-flight probes.
const DRAIN: Duration = Duration::from_millis(500);
/// Refresh/permission/channel upkeep period cap (permissions last 300 s, RFC 8656 §9).
const MAX_UPKEEP_PERIOD: Duration = Duration::from_secs(240);
/// Time allowed for deleting all allocations at the end.
const DELETE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who the allocations' peers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peers {
    /// Allocations in pairs (i, i^1), each the other's peer: a probe goes client → server →
    /// relayed address → partner's relayed address → server → partner client, two relay hops.
    Pair,
    /// One UDP socket of the generator per allocation is its peer: client → server → peer
    /// and peer → server → client, one relay hop each way; every allocation has its own peer
    /// transport address (what coturn's --multiplex-peer needs, which tells allocations apart
    /// by the peer's address and port).
    Generator,
}

impl Peers {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Peers::Pair => "pair",
            Peers::Generator => "generator",
        }
    }

    /// Relay hops the server makes per delivered probe.
    pub fn relays_per_packet(self) -> u32 {
        match self {
            Peers::Pair => 2,
            Peers::Generator => 1,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// TURN server.
    pub server: SocketAddr,
    /// Client-to-server transport.
    pub transport: Transport,
    /// Long-term credentials.
    pub credentials: Credentials,
    /// Number of allocations (even).
    pub allocations: usize,
    /// Total offered probes per second, all allocations together.
    pub rate_pps: f64,
    /// Application data per ChannelData message.
    pub payload_bytes: u16,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured traffic before the window.
    pub warmup: Duration,
    /// Requested allocation LIFETIME; None lets the server choose.
    pub lifetime_secs: Option<u32>,
    /// Server process to read CPU time from.
    pub server_pid: Option<u32>,
    /// Traffic worker threads.
    pub senders: usize,
    /// Pacing tick.
    pub tick: Duration,
    /// Who the peers are.
    pub peers: Peers,
    /// With `Peers::Generator`, the IP the peer sockets are bound on.
    pub peer_ip: IpAddr,
    /// With `Peers::Generator`, the network namespace (a file such as /run/netns/NAME) the
    /// peer sockets are made in; None: this process's.
    pub peer_netns: Option<std::path::PathBuf>,
}

/// Errors that end a run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Opening a connection failed.
    #[error("connecting allocation {index} to the server")]
    Connect {
        /// Allocation index.
        index: usize,
        /// Cause.
        source: std::io::Error,
    },
    /// A setup transaction failed.
    #[error("setting up allocation {index}")]
    Setup {
        /// Allocation index.
        index: usize,
        /// Cause.
        source: ClientError,
    },
    /// A worker thread could not be started.
    #[error("starting a traffic worker")]
    Thread(#[source] std::io::Error),
    /// An async reader failed to watch its socket.
    #[error("watching a socket")]
    Reader(#[source] std::io::Error),
    /// A task or thread panicked (a bug in this program).
    #[error("internal task failure")]
    Task(#[from] tokio::task::JoinError),
    /// A worker thread ended without reporting (a bug in this program).
    #[error("a traffic worker ended without reporting")]
    WorkerLost,
}

/// Runs the benchmark and returns its figures.
pub async fn run(cfg: &BenchConfig) -> Result<Report, RunError> {
    let started = Instant::now();
    let n = cfg.allocations;
    let credentials = Arc::new(cfg.credentials.clone());

    // Connections, each with a response channel and (for now) an async reader.
    let mut sockets = Vec::with_capacity(n);
    let mut response_senders = Vec::with_capacity(n);
    let mut allocations = Vec::with_capacity(n);
    for index in 0..n {
        let socket = ServerSocket::connect(cfg.server, cfg.transport)
            .await
            .map_err(|source| RunError::Connect { index, source })?;
        let (tx, rx) = mpsc::channel(Allocation::RESPONSE_QUEUE);
        allocations.push(Allocation::new(
            index,
            socket.clone(),
            rx,
            credentials.clone(),
        ));
        sockets.push(socket);
        response_senders.push(tx);
    }
    let readers = AsyncReaders::start(&sockets, &response_senders)?;

    // Allocate, then a permission and channel 0x4000 to each allocation's peer.
    let lifetime = cfg.lifetime_secs;
    let allocations = for_each(allocations, move |mut a| async move {
        let r = a.allocate(lifetime).await.map(|_| ());
        (a, r)
    })
    .await;
    let allocations = match allocations {
        Ok(a) => a,
        Err((allocated, e)) => return Err(abandon(allocated, readers, e).await),
    };
    let relayed: Vec<SocketAddr> = allocations
        .iter()
        .map(|a| a.relayed.expect("allocated"))
        .collect();
    // The peers: the partner's relayed address, or a socket of ours connected to the relayed
    // address.
    let mut peer_sockets = Vec::new();
    if cfg.peers == Peers::Generator {
        match peer_sockets_in(cfg.peer_netns.as_deref(), cfg.peer_ip, &relayed) {
            Ok(s) => peer_sockets = s,
            Err((index, source)) => {
                let e = RunError::Connect { index, source };
                return Err(abandon(allocations, readers, e).await);
            }
        }
    }
    let peer_addrs: Vec<SocketAddr> = match cfg.peers {
        Peers::Pair => (0..n).map(|i| relayed[i ^ 1]).collect(),
        Peers::Generator => peer_sockets
            .iter()
            .map(|s| s.local_addr().expect("a bound UDP socket has an address"))
            .collect(),
    };
    let peers = Arc::new(peer_addrs.clone());
    let allocations = for_each(allocations, move |mut a| {
        let peer = peers[a.index];
        async move {
            let mut r = a.transact(&Request::CreatePermission { peer }).await;
            if r.is_ok() {
                r = a
                    .transact(&Request::ChannelBind {
                        channel: FIRST_CHANNEL,
                        peer,
                    })
                    .await;
            }
            (a, r.map(|_| ()))
        }
    })
    .await;
    let allocations = match allocations {
        Ok(a) => a,
        Err((allocated, e)) => return Err(abandon(allocated, readers, e).await),
    };
    let setup = started.elapsed();
    let min_lifetime = allocations
        .iter()
        .map(|a| a.lifetime_secs)
        .min()
        .unwrap_or(600);
    // The workers read from here on: take the sockets out of tokio's reactor.
    readers.stop().await?;

    // Traffic: warm-up, window, drain. Send times and the window are wall-clock ns.
    let start = Instant::now();
    let start_ns = crate::net::realtime_ns();
    let window = Window {
        start_ns: start_ns + cfg.warmup.as_nanos() as u64,
        end_ns: start_ns + (cfg.warmup + cfg.duration).as_nanos() as u64,
    };
    let stop_sending = start + cfg.warmup + cfg.duration;
    let timing = Timing {
        start,
        stop_sending,
        stop_reading: stop_sending + DRAIN,
        window,
        tick: cfg.tick,
    };
    // Flow ids: client i sends flow i; with generator peers, peer i sends flow n + i.
    let flow_count = n + peer_sockets.len();
    let threads = cfg.senders.clamp(1, flow_count);
    let mut groups: Vec<Vec<Flow>> = (0..threads).map(|_| Vec::new()).collect();
    for (index, (socket, responses)) in sockets.iter().zip(&response_senders).enumerate() {
        let from = match cfg.peers {
            Peers::Pair => index ^ 1,
            Peers::Generator => n + index,
        };
        groups[index % threads].push(Flow::new(
            index,
            socket.clone(),
            responses.clone(),
            FlowReceiver::new(FIRST_CHANNEL, from as u32),
            FIRST_CHANNEL,
            cfg.payload_bytes,
        ));
    }
    for (i, socket) in peer_sockets.iter().enumerate() {
        groups[(n + i) % threads].push(Flow::peer(
            n + i,
            socket.clone(),
            FlowReceiver::new(FIRST_CHANNEL, i as u32),
            cfg.payload_bytes,
        ));
    }
    let mut workers = Vec::with_capacity(threads);
    for flows in groups {
        let rate = cfg.rate_pps * flows.len() as f64 / flow_count as f64;
        workers.push(worker::spawn(flows, rate, timing).map_err(RunError::Thread)?);
    }

    // Upkeep: refresh allocation, permission and channel while the run lasts.
    let stop_upkeep = CancellationToken::new();
    let period = Duration::from_secs(u64::from(min_lifetime / 2).max(1)).min(MAX_UPKEEP_PERIOD);
    let refresh_lifetime = cfg.lifetime_secs.unwrap_or(min_lifetime);
    let mut upkeep = JoinSet::new();
    for a in allocations {
        let peer = peer_addrs[a.index];
        upkeep.spawn(upkeep_loop(
            a,
            peer,
            period,
            refresh_lifetime,
            stop_upkeep.clone(),
        ));
    }

    // Sample CPU and kernel counters at the window's edges.
    tokio::time::sleep_until((start + cfg.warmup).into()).await;
    let before = Sample::take(cfg.server_pid);
    tokio::time::sleep_until(stop_sending.into()).await;
    let after = Sample::take(cfg.server_pid);

    let mut sent = SendStats::default();
    let mut received = ReceiveStats::default();
    for w in workers {
        let result = w.await.map_err(|_| RunError::WorkerLost)?;
        sent.merge(&result.sent);
        for r in &result.received {
            received.merge(r);
        }
    }

    // Teardown: async readers again, then delete every allocation.
    let readers = AsyncReaders::start(&sockets, &response_senders)?;
    stop_upkeep.cancel();
    let mut allocations = Vec::with_capacity(n);
    let mut upkeep_failures = 0;
    while let Some(r) = upkeep.join_next().await {
        let (a, failures) = r?;
        upkeep_failures += failures;
        allocations.push(a);
    }
    let delete_failures = delete_all(allocations).await;
    readers.stop().await?;

    Ok(Report::new(
        cfg,
        setup,
        &sent,
        &received,
        &before,
        &after,
        upkeep_failures,
        delete_failures,
    ))
}

/// One peer socket per relayed address, bound on `peer_ip` and connected to it; with `netns`,
/// made by a short-lived thread that enters that network namespace first (a socket stays in the
/// namespace it was made in). On failure, the index of the socket that failed and why.
fn peer_sockets_in(
    netns: Option<&std::path::Path>,
    peer_ip: IpAddr,
    relayed: &[SocketAddr],
) -> Result<Vec<Arc<ServerSocket>>, (usize, std::io::Error)> {
    let make = || {
        if let Some(path) = netns {
            let ns = std::fs::File::open(path).map_err(|e| (0, e))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| (0, std::io::Error::from(e)))?;
        }
        relayed
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ServerSocket::connect_udp(Some(SocketAddr::new(peer_ip, 0)), *r).map_err(|e| (i, e))
            })
            .collect()
    };
    match netns {
        None => make(),
        Some(_) => std::thread::scope(|s| {
            s.spawn(make)
                .join()
                .unwrap_or_else(|_| Err((0, std::io::Error::other("peer socket thread panicked"))))
        }),
    }
}

/// The tokio tasks that read the sockets outside the traffic phase.
struct AsyncReaders {
    tasks: JoinSet<std::io::Result<()>>,
    cancel: CancellationToken,
}

impl AsyncReaders {
    fn start(
        sockets: &[Arc<ServerSocket>],
        responses: &[mpsc::Sender<Vec<u8>>],
    ) -> Result<Self, RunError> {
        let cancel = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for (socket, tx) in sockets.iter().zip(responses) {
            tasks.spawn(net::forward_stun(
                socket.clone(),
                tx.clone(),
                cancel.clone(),
            ));
        }
        Ok(Self { tasks, cancel })
    }

    /// Stops every reader and waits until each has left tokio's reactor.
    async fn stop(mut self) -> Result<(), RunError> {
        self.cancel.cancel();
        while let Some(r) = self.tasks.join_next().await {
            r?.map_err(RunError::Reader)?;
        }
        Ok(())
    }
}

/// Runs `f` on every allocation concurrently. If any fails, returns the allocations that hold a
/// relayed address (to be deleted) and the first failure.
async fn for_each<F, Fut>(
    allocations: Vec<Allocation>,
    f: F,
) -> Result<Vec<Allocation>, (Vec<Allocation>, RunError)>
where
    F: Fn(Allocation) -> Fut,
    Fut: std::future::Future<Output = (Allocation, Result<(), ClientError>)> + Send + 'static,
{
    let mut set = JoinSet::new();
    for a in allocations {
        set.spawn(f(a));
    }
    let mut out = Vec::new();
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok((a, Ok(()))) => out.push(a),
            Ok((a, Err(source))) => {
                first_error.get_or_insert(RunError::Setup {
                    index: a.index,
                    source,
                });
                out.push(a);
            }
            Err(e) => {
                first_error.get_or_insert(RunError::Task(e));
            }
        }
    }
    out.sort_by_key(|a| a.index);
    match first_error {
        None => Ok(out),
        Some(e) => Err((out.into_iter().filter(|a| a.relayed.is_some()).collect(), e)),
    }
}

/// After a failed setup: deletes what was allocated (so a quota is not left used up), stops the
/// readers and hands back the error.
async fn abandon(allocated: Vec<Allocation>, readers: AsyncReaders, error: RunError) -> RunError {
    delete_all(allocated).await;
    let _ = readers.stop().await;
    error
}

/// Refreshes the allocation, permission and channel binding every `period` until cancelled;
/// returns the allocation and the number of failed refresh transactions.
async fn upkeep_loop(
    mut a: Allocation,
    peer: SocketAddr,
    period: Duration,
    lifetime_secs: u32,
    cancel: CancellationToken,
) -> (Allocation, u64) {
    let mut failures = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return (a, failures),
            _ = tokio::time::sleep(period) => {}
        }
        for req in [
            Request::Refresh { lifetime_secs },
            Request::CreatePermission { peer },
            Request::ChannelBind {
                channel: FIRST_CHANNEL,
                peer,
            },
        ] {
            if a.transact(&req).await.is_err() {
                failures += 1;
            }
        }
    }
}

/// Deletes every allocation (Refresh with LIFETIME 0, RFC 8656 §7.2); returns how many failed.
async fn delete_all(allocations: Vec<Allocation>) -> u64 {
    let mut set = JoinSet::new();
    for mut a in allocations {
        set.spawn(async move {
            let r = tokio::time::timeout(
                DELETE_TIMEOUT,
                a.transact(&Request::Refresh { lifetime_secs: 0 }),
            )
            .await;
            matches!(r, Ok(Ok(_)))
        });
    }
    let mut failures = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failures += 1;
        }
    }
    failures
}

/// CPU times and kernel UDP counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// The server process's CPU time (all threads) and RSS, if a pid was given and readable.
    pub server: ProcessSample,
    /// This process's.
    pub bench: ProcessSample,
    /// Kernel UDP counters.
    pub udp: Option<procfs::UdpCounters>,
    /// Receive-buffer drops on the server's UDP sockets.
    pub server_drops: Option<u64>,
    /// Receive-buffer drops on this process's UDP sockets.
    pub bench_drops: Option<u64>,
    /// Busy CPU time of the whole machine (/proc/stat).
    pub machine_busy: Option<Duration>,
}

impl Sample {
    fn take(server_pid: Option<u32>) -> Self {
        Self {
            at: Instant::now(),
            server: ProcessSample::read_pid(server_pid),
            bench: ProcessSample::read("self"),
            udp: procfs::read_udp_counters(),
            server_drops: server_pid.and_then(|p| procfs::read_process_udp_drops(&p.to_string())),
            bench_drops: procfs::read_process_udp_drops("self"),
            machine_busy: bench_support::procfs::read_machine_busy(),
        }
    }
}
