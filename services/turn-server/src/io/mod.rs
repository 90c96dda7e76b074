//! The thin tokio layer around [`TurnCore`].
//!
//! One worker thread per core, each running a current-thread runtime with its own
//! `SO_REUSEPORT` UDP socket and TCP listener on every listen address. The kernel steers a
//! client's 5-tuple to one worker; that worker's core owns the client's allocation and serves
//! the allocation's relay sockets, so the data path takes no lock. All sends are non-blocking
//! (`try_send`); a full socket buffer or TCP queue drops the packet and counts it.
//!
//! Unauthenticated state is bounded: DTLS keeps nothing for an address before a cookie round
//! trip and caps half-open handshakes ([`dtls`]); stream connections are admitted by a
//! server-wide [`StreamGate`] (connections and TLS handshakes in progress, in total and per
//! source IP), must finish the TLS handshake within [`TLS_HANDSHAKE_TIMEOUT`] and deliver one
//! complete frame within [`FIRST_REQUEST_TIMEOUT`], and queue at most `tcp_send_queue_bytes`
//! for sending ([`SendQueue`]).
//!
//! Behind a load balancer (`proxy_protocol_from`), every stream connection must come from an
//! allowed balancer and start with a PROXY protocol v2 header ([`proxy`]), read within the
//! first-request timeout before anything else (before the TLS handshake). The header's source
//! address is the client side of the connection's 5-tuple, so authentication, the nonce,
//! XOR-MAPPED-ADDRESS, quotas, rate limits, the peer policy, logs and metrics all see the
//! client, not the balancer. The [`StreamGate`] admits the connection at accept under the
//! server-wide caps only (the balancer's IP would otherwise reach the per-IP caps for all its
//! clients) and applies the per-IP caps to the client's IP once the header names it.
//!
//! With RFC 8016 mobility, a client that moved may be steered to another worker than the one
//! owning its allocation; that worker hands its datagrams to the owner ([`mobility`]).
//!
//! TCP allocations (RFC 6062): a TCP allocation's relay is a listening socket served by the
//! allocation's worker ([`relay_acceptor`]), which asks the core whether to accept each peer.
//! Connections to peers (Connect) leave from the relayed address ([`connect_peer`]). A peer
//! connection waiting for its ConnectionBind is parked as a plain socket in the server-wide
//! [`PeerStreams`], because the client's data connection may reach any worker; the worker
//! whose core accepts the ConnectionBind takes it, writes the response and from then on copies
//! bytes both ways ([`splice`]), counting them into the allocation's accounting and
//! `turn_relayed_*`. The core's deadlines and allocation ends close slots through their
//! cancellation tokens.

pub mod admin;
pub mod dtls;
pub mod fleet;
pub mod mobility;
pub mod proxy;
pub mod relay;
pub mod xdp;
pub use turnkey_sockets as sockets;
pub use turnkey_tls as tls;

use crate::config::TurnConfig;
use crate::metrics::{gauge_add, Folded, TurnMetrics};
use proxy::{ProxyFrom, ProxyReject};
use relay::{RelaySockets, Reservations};
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stun_proto::binding::BindingConfig;
use stun_proto::msg::stream_frame_len;
use stun_server::metrics::StunMetrics;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use turn_proto::auth::{Credentials, NonceMinter};
use turn_proto::core::{
    ClientData, CoreConfig, Direction, Shared, StreamTraffic, TcpRelayConfig, Transmit, TurnCore,
};
use turn_proto::policy::PeerPolicy;
use turn_proto::proxy::Header;
use turn_proto::{FiveTuple, Transport};
use turnkey_sockets::batch::{RecvBatch, SendBatch, BATCH};
use turnkey_sockets::poller::Poller;

/// A TCP connection that holds no allocation is closed after this long without data.
const TCP_IDLE_WITHOUT_ALLOCATION: Duration = Duration::from_secs(30);
/// A TCP connection with an allocation is closed after this long without data (allocations
/// live at most `max_lifetime` without a Refresh anyway).
const TCP_IDLE_WITH_ALLOCATION: Duration = Duration::from_secs(3660);
/// Largest frame a TCP client may send (a STUN message or ChannelData of 64 KiB).
const MAX_FRAME_BYTES: usize = 65_536 + 20;

/// Time a TLS client has to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a stream client has, from the connection (TCP) or the end of the TLS handshake, to
/// deliver one complete STUN or ChannelData frame; then it is closed (slowloris). A PROXY v2
/// header must also arrive within this time of the connection.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `turn_dropped_packets_total` reason of a stream connection whose 5-tuple is already open
/// on the worker (two PROXY headers naming the same client address and port).
pub const DUPLICATE_TUPLE_REASON: &str = "tcp_duplicate_tuple";
/// `turn_dropped_packets_total` reason of a datagram for the worker owning its allocation
/// (after an RFC 8016 move) that did not fit that worker's queue.
pub const MOBILITY_QUEUE_FULL_REASON: &str = "mobility_forward_queue_full";
/// `turn_dropped_packets_total` reason of a moved client 5-tuple that could not be routed to
/// the worker owning its allocation: the route table was full of live routes.
pub const MOBILITY_ROUTES_FULL_REASON: &str = "mobility_route_table_full";

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound client listeners (port 0 resolved).
    pub listen: Vec<SocketAddr>,
    /// The bound TLS listeners.
    pub listen_tls: Vec<SocketAddr>,
    /// The bound DTLS listeners.
    pub listen_dtls: Vec<SocketAddr>,
    /// The certificate in use (reloadable), when TLS/DTLS is configured.
    pub certs: Option<Arc<tls::CertStore>>,
    /// Cross-worker state (allocation count, draining).
    pub shared: Arc<Shared>,
    /// The workers' command queues (admin API).
    pub workers: admin::Workers,
    /// The nonce and ticket keys (kept across reloads).
    keys: ProcessKeys,
    stop: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl RunningServer {
    /// Puts the reloadable part of `cfg` in force on every worker (see
    /// [`TurnCore::reconfigure`]); the nonce key stays.
    pub async fn reconfigure(&self, cfg: &TurnConfig) -> Result<(), admin::WorkerBusy> {
        let core = Arc::new(core_config_with_keys(cfg, &self.keys));
        self.workers.reconfigure(core).await
    }

    /// Stops the workers and joins them: the allocations still live are ended (reason
    /// `shutdown`, each with its accounting record). The drain before it is
    /// [`crate::run`]'s.
    pub async fn stop(&self) {
        tracing::info!(
            remaining_allocations = self.shared.total_allocations(),
            "stopping workers"
        );
        self.stop.cancel();
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Builds the core configuration from the effective config. The server's own addresses (relay,
/// listen, external and metrics IPs) and ports (listen and metrics) feed the peer policy.
pub fn core_config(cfg: &TurnConfig) -> CoreConfig {
    core_config_with_keys(cfg, &ProcessKeys::random())
}

/// The keys one server process draws at start and keeps across reloads: the stateless nonce
/// key (nonces handed out before a reload stay valid) and the MOBILITY-TICKET key (RFC 8016).
#[derive(Clone)]
pub struct ProcessKeys {
    nonce: [u8; 32],
    ticket: [u8; 32],
}

impl ProcessKeys {
    /// Fresh random keys.
    pub fn random() -> Self {
        Self {
            nonce: rand::random(),
            ticket: rand::random(),
        }
    }
}

impl std::fmt::Debug for ProcessKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessKeys(<redacted>)")
    }
}

/// [`core_config`] with the process's keys given.
pub fn core_config_with_keys(cfg: &TurnConfig, keys: &ProcessKeys) -> CoreConfig {
    let nonce_key = keys.nonce;
    let mut own_ips: Vec<std::net::IpAddr> = cfg.relay_ips.clone();
    own_ips.extend(cfg.listen.iter().map(|l| l.ip()));
    own_ips.extend(cfg.external_ips.values().copied());
    own_ips.push(cfg.metrics.ip());
    own_ips.retain(|ip| !ip.is_unspecified());
    own_ips.sort();
    own_ips.dedup();
    // Every port this process (and, under `turnkey`, the suite) listens on: client, TLS, DTLS,
    // metrics and the protected ports of neighbouring services.
    let mut own_ports: Vec<u16> = cfg
        .listen
        .iter()
        .chain(&cfg.tls_listen)
        .chain(&cfg.dtls_listen)
        .map(|l| l.port())
        .collect();
    own_ports.push(cfg.metrics.port());
    own_ports.extend(&cfg.protected_ports);
    own_ports.sort_unstable();
    own_ports.dedup();
    // The ticket key is one per process, shared by every worker's core and kept across reloads
    // (tickets die with the process, as do the allocations they name).
    let mobility = cfg
        .mobility
        .then(|| turn_proto::core::TicketKey::new(keys.ticket));
    let credentials =
        Credentials::new(cfg.users.clone(), cfg.auth_secrets.clone()).hash_users(&cfg.realm);
    let userhash = credentials.has_static_users();
    CoreConfig {
        realm: cfg.realm.clone(),
        software: cfg.software.clone(),
        credentials,
        nonces: NonceMinter::new(nonce_key, cfg.nonce_lifetime_secs).with_userhash(userhash),
        policy: PeerPolicy::new(
            cfg.allow_peer.clone(),
            cfg.deny_peer.clone(),
            own_ips,
            own_ports,
            (cfg.min_port, cfg.max_port),
        ),
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(cfg.max_lifetime_secs),
        permission_lifetime: Duration::from_secs(300),
        channel_lifetime: Duration::from_secs(600),
        channel_reuse_delay: Duration::from_secs(300),
        user_quota: cfg.user_quota,
        total_quota: cfg.total_quota,
        ip_quota: cfg.ip_quota,
        reservation_lifetime: relay::RESERVATION_LIFETIME,
        unauth_rate_per_sec: cfg.unauth_rate_per_sec,
        unauth_burst: cfg.unauth_burst,
        external_ips: cfg.external_ips.clone(),
        // Binding answers anyone: no SOFTWARE, so the response is as small as it can be
        // (reflection amplification).
        binding: BindingConfig {
            software: None,
            ..BindingConfig::default()
        },
        alternate_servers: cfg.alternate_servers.clone(),
        alternate_over_allocations: cfg.alternate_over_allocations,
        bandwidth: cfg.bandwidth,
        mobility,
        tcp: TcpRelayConfig {
            max_connections_per_allocation: cfg.limits.peer_tcp_max_connections_per_allocation,
            max_connections: cfg.limits.peer_tcp_max_connections,
            ..TcpRelayConfig::default()
        },
    }
}

/// Binds every client socket (all workers) and starts the workers. When this returns, the
/// server is accepting clients.
pub fn start(
    cfg: &TurnConfig,
    metrics: TurnMetrics,
    stun_metrics: StunMetrics,
) -> io::Result<RunningServer> {
    let keys = ProcessKeys::random();
    let core_cfg = Arc::new(core_config_with_keys(cfg, &keys));
    let shared = Arc::new(Shared::default());
    let gate = Arc::new(StreamGate::new(
        StreamLimits {
            max_connections: cfg.limits.tcp_max_connections,
            max_connections_per_ip: cfg.limits.tcp_max_connections_per_ip,
            max_handshakes: cfg.limits.tls_max_handshakes,
            max_handshakes_per_ip: cfg.limits.tls_max_handshakes_per_ip,
        },
        metrics.conn.clone(),
    ));
    let dtls_limits = dtls::DtlsLimits {
        max_handshakes: cfg.limits.dtls_max_handshakes,
        max_handshakes_per_ip: cfg.limits.dtls_max_handshakes_per_ip,
        ..dtls::DtlsLimits::default()
    };
    let reservations: Reservations = Arc::default();
    let peer_streams = PeerStreams::default();
    let stop = CancellationToken::new();

    let (certs, acceptor) = match &cfg.tls_files {
        Some((cert, key)) => {
            let store = tls::CertStore::open(cert, key)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let sc = tls::server_config(store.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            (Some(store), Some(TlsAcceptor::from(sc)))
        }
        None => (None, None),
    };
    let mut listen_dtls = Vec::new();
    let mut dtls_per_worker: Vec<Vec<StdUdpSocket>> =
        (0..cfg.workers).map(|_| Vec::new()).collect();
    for addr in &cfg.dtls_listen {
        // Exclusive for a moment, so a second instance cannot silently share the port.
        let bound = StdUdpSocket::bind(addr)
            .and_then(|s| s.local_addr())
            .map_err(|e| {
                io::Error::new(e.kind(), format!("{addr} (DTLS) is already in use: {e}"))
            })?;
        listen_dtls.push(bound);
        for w in dtls_per_worker.iter_mut() {
            w.push(sockets::reuseport_udp(bound)?);
        }
    }
    let dtls_cfg = match (&certs, cfg.dtls_listen.is_empty()) {
        (Some(store), false) => {
            let (c, k) = store.paths();
            Some(
                dtls::handshake_config(c, k)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?,
            )
        }
        _ => None,
    };
    let mut listen_tls = Vec::new();
    let mut tls_per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..cfg.workers).map(|_| Vec::new()).collect();
    for addr in &cfg.tls_listen {
        // TCP only (a DTLS listener may share the port number); exclusive for a moment.
        let bound = std::net::TcpListener::bind(addr)
            .and_then(|l| l.local_addr())
            .map_err(|e| {
                io::Error::new(e.kind(), format!("{addr} (TLS) is already in use: {e}"))
            })?;
        listen_tls.push(bound);
        for w in tls_per_worker.iter_mut() {
            w.push(sockets::reuseport_tcp(bound)?);
        }
    }
    // Resolve port 0 once so every worker binds the same address.
    let mut listen = Vec::new();
    let mut per_worker: Vec<Vec<(StdUdpSocket, std::net::TcpListener)>> =
        (0..cfg.workers).map(|_| Vec::new()).collect();
    for addr in &cfg.listen {
        let bound = sockets::probe_exclusive(*addr).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("{addr} is already in use (UDP or TCP): {e}"),
            )
        })?;
        listen.push(bound);
        for w in per_worker.iter_mut() {
            w.push((
                sockets::reuseport_udp(bound)?,
                sockets::reuseport_tcp(bound)?,
            ));
        }
    }

    // The XDP fast path: attached before any worker runs; a failure fails the start (the
    // operator asked for it explicitly).
    let fast_path = match &cfg.xdp {
        Some(x) => Some({
            if let Some(w) = cfg.listen.iter().find(|l| l.ip().is_unspecified()) {
                tracing::warn!(listen = %w, "the XDP fast path needs a specific listen address: clients of a wildcard listener stay on the normal path");
            }
            xdp::XdpShared::attach(x, metrics.xdp.clone())
                .map_err(|e| io::Error::other(format!("--xdp {}: {e}", x.interfaces.join(","))))?
        }),
        None => None,
    };
    let start_instant = Instant::now();
    let start_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut threads = Vec::new();
    let (workers, mut commands) = admin::Workers::new(cfg.workers);
    // Each worker's queue of datagrams handed over by the others (RFC 8016 moves).
    let (forward_to, mut forwarded): (Vec<_>, Vec<_>) = (0..cfg.workers)
        .map(|_| tokio::sync::mpsc::channel(mobility::FORWARD_QUEUE))
        .unzip();
    let forward_to: Arc<[tokio::sync::mpsc::Sender<mobility::Forwarded>]> = forward_to.into();
    // A route unused for longer than an allocation can live without a Refresh leads nowhere.
    let route_idle = Duration::from_secs(cfg.max_lifetime_secs + 60);
    // The multiplexed relay mode's shared sockets, bound before any worker runs: a port in use
    // fails the start.
    let mut relays_per_worker = Vec::with_capacity(cfg.workers);
    for i in 0..cfg.workers {
        let mut relays = RelaySockets::new(
            cfg.relay_ips.clone(),
            cfg.min_port,
            cfg.max_port,
            reservations.clone(),
        );
        if cfg.relay_multiplex > 0 {
            let first =
                crate::config::multiplexed_port(cfg.min_port, cfg.workers, cfg.relay_multiplex, i);
            relays.multiplex(first, cfg.relay_multiplex).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("--relay-multiplex: cannot bind the shared relay sockets from port {first}: {e}"),
                )
            })?;
        }
        relays_per_worker.push(relays);
    }
    for (i, ((socks, tls_socks), dtls_socks)) in per_worker
        .into_iter()
        .zip(tls_per_worker)
        .zip(dtls_per_worker)
        .enumerate()
    {
        let commands = commands.remove(0);
        let mobility = MobilitySetup {
            forward_to: forward_to.clone(),
            forwarded: forwarded.remove(0),
            routes: mobility::Routes::new(mobility::ROUTES_PER_WORKER, route_idle),
        };
        let acceptor = acceptor.clone();
        let dtls = DtlsSetup {
            socks: dtls_socks,
            cfg: dtls_cfg.clone(),
            certs: certs.clone(),
            limits: dtls_limits,
        };
        let streams = StreamSetup {
            tls_listeners: tls_socks,
            acceptor,
            gate: gate.clone(),
            send_queue_bytes: cfg.limits.tcp_send_queue_bytes,
            proxy_from: ProxyFrom::new(cfg.proxy_protocol_from.clone()),
            peer_streams: peer_streams.clone(),
        };
        let core = TurnCore::new(core_cfg.clone(), shared.clone(), start_instant, start_unix)
            .with_worker(i as u16);
        let stun_metrics = stun_metrics.clone();
        let relays = relays_per_worker.remove(0);
        let stop = stop.clone();
        let metrics = metrics.clone();
        let fast_path = fast_path.clone();
        let t = turnkey_runtime::workers::spawn_worker(format!("turn-worker-{i}"), move || {
            run_worker(
                core,
                relays,
                socks,
                streams,
                dtls,
                (metrics, stun_metrics),
                WorkerControl {
                    index: i,
                    commands,
                    stop,
                    mobility,
                    fast_path,
                },
            )
        })?;
        threads.push(t);
    }
    Ok(RunningServer {
        listen,
        listen_tls,
        listen_dtls,
        certs,
        shared,
        workers,
        keys,
        stop,
        threads: Mutex::new(threads),
    })
}

/// What a worker needs to hand datagrams of moved clients to their allocation's worker, and
/// to serve those handed to it.
struct MobilitySetup {
    /// Every worker's queue, by index.
    forward_to: Arc<[tokio::sync::mpsc::Sender<mobility::Forwarded>]>,
    /// This worker's queue.
    forwarded: tokio::sync::mpsc::Receiver<mobility::Forwarded>,
    routes: mobility::Routes,
}

/// What a worker needs to serve DTLS.
struct DtlsSetup {
    socks: Vec<StdUdpSocket>,
    cfg: Option<Arc<rtc_dtls::config::HandshakeConfig>>,
    certs: Option<Arc<tls::CertStore>>,
    limits: dtls::DtlsLimits,
}

/// What a worker needs to serve TLS, and the stream limits.
struct StreamSetup {
    tls_listeners: Vec<std::net::TcpListener>,
    acceptor: Option<TlsAcceptor>,
    gate: Arc<StreamGate>,
    send_queue_bytes: usize,
    /// Balancers that send a PROXY v2 header (empty: no header).
    proxy_from: ProxyFrom,
    /// Peer connections of TCP allocations (shared by all workers).
    peer_streams: PeerStreams,
}

struct Worker {
    /// DTLS sockets by local address, with their associations.
    dtls: HashMap<SocketAddr, (Rc<UdpSocket>, dtls::DtlsServer)>,
    core: TurnCore,
    relays: RelaySockets,
    metrics: TurnMetrics,
    stun_metrics: StunMetrics,
    /// What was last folded of the core's stats into `metrics`.
    folded: Folded,
    udp: HashMap<SocketAddr, Rc<UdpSocket>>,
    tcp: HashMap<FiveTuple, Rc<SendQueue>>,
    /// Admission of stream connections (shared by all workers).
    gate: Arc<StreamGate>,
    /// `tcp_send_queue_bytes`.
    send_queue_bytes: usize,
    /// UDP relay sockets by relayed transport address: plain non-blocking sockets in the
    /// worker's [`Poller`], served by its one `relay_poller` task.
    relay_socks: HashMap<SocketAddr, StdUdpSocket>,
    /// The relay socket of each poller token (its file descriptor).
    relay_tokens: HashMap<u64, SocketAddr>,
    /// The readiness of every relay socket of this worker.
    poller: Rc<AsyncFd<Poller>>,
    /// TCP allocations' relay listeners: the accept task and the UDP socket holding the port.
    tcp_relays: HashMap<SocketAddr, (AbortHandle, StdUdpSocket)>,
    /// Peer connections of TCP allocations (shared by all workers).
    peer_streams: PeerStreams,
    /// Stream connections whose ConnectionBind just succeeded, with the CONNECTION-ID: their
    /// reader stops reading STUN and joins them to the peer.
    binds: HashMap<FiveTuple, u32>,
    out: Vec<Transmit>,
    /// This worker's index.
    index: usize,
    /// Every worker's queue of handed-over datagrams, by index.
    forward_to: Arc<[tokio::sync::mpsc::Sender<mobility::Forwarded>]>,
    /// Moved client 5-tuples steered here whose allocation lives on another worker.
    routes: mobility::Routes,
    /// The receive slots every UDP listener and relay socket of this worker reads into
    /// (taken by a reader for its synchronous turn, put back before it awaits).
    rx: Option<Box<RecvBatch>>,
    /// Relayed datagrams of this wake-up not sent yet: each run that leaves one socket goes
    /// out in one `sendmmsg(2)` ([`send_queued`]). Peer data is framed for its client straight
    /// into the batch's buffers (relaying allocates nothing per datagram).
    tx: SendBatch<Via>,
    /// The XDP fast path (`--xdp`): this worker's installed channel bindings.
    fast_path: Option<xdp::WorkerFastPath>,
}

/// The socket a queued datagram leaves from, resolved when the batch is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// The relay socket of this relayed transport address (to a peer).
    Relay(SocketAddr),
    /// The UDP listener at this server address (to a client).
    Listener(SocketAddr),
}

type WorkerRef = Rc<RefCell<Worker>>;

/// What a worker is told by the rest of the server: its index, the admin API's commands and
/// the stop signal.
struct WorkerControl {
    index: usize,
    commands: tokio::sync::mpsc::Receiver<admin::WorkerCommand>,
    stop: CancellationToken,
    mobility: MobilitySetup,
    fast_path: Option<Arc<xdp::XdpShared>>,
}

async fn run_worker(
    core: TurnCore,
    relays: RelaySockets,
    socks: Vec<(StdUdpSocket, std::net::TcpListener)>,
    streams: StreamSetup,
    dtls_setup: DtlsSetup,
    (metrics, stun_metrics): (TurnMetrics, StunMetrics),
    control: WorkerControl,
) {
    let WorkerControl {
        index,
        commands,
        stop,
        mobility,
        fast_path,
    } = control;
    let poller = match Poller::new().and_then(Poller::register) {
        Ok(p) => Rc::new(p),
        Err(e) => {
            tracing::error!(error = %e, worker = index, "cannot create the relay sockets' poller");
            return;
        }
    };
    let w: WorkerRef = Rc::new(RefCell::new(Worker {
        dtls: HashMap::new(),
        core,
        relays,
        metrics,
        stun_metrics,
        folded: Folded::default(),
        udp: HashMap::new(),
        tcp: HashMap::new(),
        gate: streams.gate,
        send_queue_bytes: streams.send_queue_bytes,
        relay_socks: HashMap::new(),
        relay_tokens: HashMap::new(),
        poller: poller.clone(),
        tcp_relays: HashMap::new(),
        peer_streams: streams.peer_streams,
        binds: HashMap::new(),
        out: Vec::new(),
        index,
        forward_to: mobility.forward_to,
        routes: mobility.routes,
        rx: Some(Box::new(RecvBatch::new())),
        tx: SendBatch::new(),
        fast_path: None,
    }));
    // The shared relay sockets of the multiplexed mode, bound at start.
    serve_new_relays(&mut w.borrow_mut());
    if let Some(shared) = fast_path {
        let mut guard = w.borrow_mut();
        let wk = &mut *guard;
        wk.fast_path = Some(xdp::WorkerFastPath::new(shared, &mut wk.core));
    }
    let mut tasks = vec![tokio::task::spawn_local(relay_poller(w.clone(), poller))];
    for (udp, tcp) in socks {
        let (udp, tcp) = match (UdpSocket::from_std(udp), TcpListener::from_std(tcp)) {
            (Ok(u), Ok(t)) => (Rc::new(u), t),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot register listener");
                continue;
            }
        };
        let Ok(local) = udp.local_addr() else {
            continue;
        };
        w.borrow_mut().udp.insert(local, udp.clone());
        tasks.push(tokio::task::spawn_local(udp_listener(
            w.clone(),
            udp,
            local,
        )));
        tasks.push(tokio::task::spawn_local(tcp_acceptor(
            w.clone(),
            tcp,
            local,
            None,
            streams.proxy_from.clone(),
            stop.clone(),
        )));
    }
    let acceptor = streams.acceptor;
    for tls in streams.tls_listeners {
        let (Some(acceptor), Ok(l)) = (acceptor.clone(), TcpListener::from_std(tls)) else {
            continue;
        };
        let Ok(local) = l.local_addr() else { continue };
        tasks.push(tokio::task::spawn_local(tcp_acceptor(
            w.clone(),
            l,
            local,
            Some(acceptor),
            streams.proxy_from.clone(),
            stop.clone(),
        )));
    }
    if let Some(cfg) = &dtls_setup.cfg {
        let generation = dtls_setup.certs.as_ref().map_or(0, |c| c.generation());
        for sock in dtls_setup.socks {
            let Ok(s) = UdpSocket::from_std(sock) else {
                continue;
            };
            let Ok(local) = s.local_addr() else { continue };
            let s = Rc::new(s);
            w.borrow_mut().dtls.insert(
                local,
                (
                    s.clone(),
                    dtls::DtlsServer::new(
                        local,
                        cfg.clone(),
                        generation,
                        dtls_setup.limits,
                        Instant::now(),
                    ),
                ),
            );
            tasks.push(tokio::task::spawn_local(dtls_listener(w.clone(), s, local)));
        }
        tasks.push(tokio::task::spawn_local(dtls_timer(
            w.clone(),
            dtls_setup.certs.clone(),
        )));
    }
    tasks.push(tokio::task::spawn_local(timer_loop(w.clone())));
    tasks.push(tokio::task::spawn_local(forwarded_loop(
        w.clone(),
        mobility.forwarded,
    )));
    tasks.push(tokio::task::spawn_local(command_loop(
        w.clone(),
        index,
        commands,
    )));
    stop.cancelled().await;
    for t in tasks {
        t.abort();
    }
    let mut guard = w.borrow_mut();
    let wk = &mut *guard;
    for (_, srv) in wk.dtls.values_mut() {
        gauge_add(
            &wk.metrics.conn.dtls_handshakes,
            -(srv.handshakes_in_progress() as i64),
        );
    }
    if let Some(fp) = wk.fast_path.as_mut() {
        // Final per-binding counts into the allocations before their records are logged.
        fp.clear(&mut wk.core);
    }
    wk.core.close_all(&mut wk.relays);
    wk.fold_stats();
    gauge_add(&wk.metrics.mobility.routes, -(wk.routes.len() as i64));
    wk.relay_tokens.clear();
    for (_, s) in wk.relay_socks.drain() {
        let _ = wk.poller.get_ref().remove(&s);
    }
    for (_, (h, _)) in wk.tcp_relays.drain() {
        h.abort();
    }
}

impl Worker {
    /// Mirrors the core's fast path events into the XDP maps (nothing without `--xdp`).
    fn apply_fast_path(&mut self) {
        if let Some(fp) = self.fast_path.as_mut() {
            fp.apply(&mut self.core, Instant::now());
        }
    }

    /// Folds what the core counted since the last call into the Prometheus metrics.
    fn fold_stats(&mut self) {
        self.metrics
            .fold(&self.stun_metrics, self.core.stats(), &mut self.folded);
    }

    /// The other worker a UDP datagram from `tuple` belongs to (RFC 8016): a routed 5-tuple,
    /// or a Refresh whose MOBILITY-TICKET names another worker from a 5-tuple this worker's
    /// core does not know (then the route is recorded). `None`: this worker serves it.
    fn mobility_route(&mut self, tuple: FiveTuple, data: &[u8], now: Instant) -> Option<usize> {
        if let Some(owner) = self.routes.lookup(&tuple, now) {
            return Some(owner);
        }
        if self.forward_to.len() < 2 {
            return None;
        }
        let owner = usize::from(self.core.mobility_owner(data)?);
        if owner == self.index || owner >= self.forward_to.len() || self.core.has_allocation(&tuple)
        {
            return None;
        }
        match self.routes.insert(tuple, owner, now) {
            Ok(evicted) => gauge_add(&self.metrics.mobility.routes, 1 - evicted as i64),
            Err(mobility::RoutesFull) => {
                // This Refresh still goes; what follows on this 5-tuple meets 437 here.
                self.metrics.drop_packet(MOBILITY_ROUTES_FULL_REASON);
            }
        }
        tracing::debug!(client = %tuple.client, worker = self.index, owner, "client 5-tuple routed to its allocation's worker");
        Some(owner)
    }

    /// Hands a datagram from `tuple` to worker `owner` (bounded queue; dropped when full).
    fn forward(&self, owner: usize, tuple: FiveTuple, data: &[u8]) {
        let f = mobility::Forwarded {
            tuple,
            data: data.to_vec(),
        };
        match self.forward_to[owner].try_send(f) {
            Ok(()) => {
                self.metrics.mobility.forwarded.inc();
            }
            Err(_) => self.metrics.drop_packet(MOBILITY_QUEUE_FULL_REASON),
        }
    }
}

/// After any core call: send what it produced, start new relay sockets, close released ones,
/// and fold the core's counters into the metrics.
fn flush(wr: &WorkerRef, w: &mut Worker) {
    flush_io(wr, w);
    w.apply_fast_path();
    w.fold_stats();
}

/// [`flush`] for the middle of a batch, after each datagram (so a relay socket an Allocate
/// created serves the next datagram): control counters are folded before any response goes
/// out, relayed-traffic counters once at the end of the batch.
fn flush_io(wr: &WorkerRef, w: &mut Worker) {
    while let Some(t) = w.core.poll_transmit() {
        w.out.push(t);
    }
    // What a request changed is in the metrics before its response leaves, so a client that
    // has its answer never scrapes the old figures; relayed traffic waits for the batch's end.
    if w.folded.control_behind(w.core.stats()) {
        w.fold_stats();
    }
    let mut out = std::mem::take(&mut w.out);
    for t in out.drain(..) {
        match t {
            Transmit::ConnectPeer {
                connection_id,
                relay,
                peer,
            } => {
                let stop = w.peer_streams.open(connection_id);
                tokio::task::spawn_local(connect_peer(
                    wr.clone(),
                    connection_id,
                    (relay, peer),
                    stop,
                ));
            }
            Transmit::BindConnection { to, connection_id } => {
                w.binds.insert(to, connection_id);
            }
            Transmit::ClosePeerConnection { connection_id } => {
                w.peer_streams.close(connection_id);
            }
            Transmit::ToClient { to, data } => match to.transport {
                Transport::Dtls => {
                    if let Some((s, srv)) = w.dtls.get_mut(&to.server) {
                        if srv.send(Instant::now(), to.client, &data).is_err() {
                            w.metrics.drop_packet("client_send_failed");
                        }
                        while let Some((peer, d)) = srv.poll_transmit() {
                            if sockets::send_to(s, &d, peer).is_err() {
                                w.metrics.drop_packet("client_send_failed");
                            }
                        }
                    }
                }
                Transport::Udp => {
                    if let Some(s) = w.udp.get(&to.server) {
                        if sockets::send_to(s, &data, to.client).is_err() {
                            w.metrics.drop_packet("client_send_failed");
                        }
                    }
                }
                Transport::Tcp | Transport::Tls => {
                    if let Some(q) = w.tcp.get(&to) {
                        if q.try_push(data).is_err() {
                            w.metrics.drop_packet("tcp_queue_full");
                        }
                    }
                }
            },
            Transmit::ToPeer { relay, peer, data } => send_to_peer(w, relay, peer, &data),
        }
    }
    w.out = out;
    for local in std::mem::take(&mut w.relays.pending_release) {
        if let Some(s) = w.relay_socks.remove(&local) {
            let _ = w.poller.get_ref().remove(&s);
            w.relay_tokens.remove(&(s.as_raw_fd() as u64));
        }
        if let Some((h, _lock)) = w.tcp_relays.remove(&local) {
            h.abort();
        }
    }
    for (listener, lock) in std::mem::take(&mut w.relays.pending_new_tcp) {
        let Ok(local) = listener.local_addr() else {
            continue;
        };
        match TcpListener::from_std(listener) {
            Ok(l) => {
                let h = tokio::task::spawn_local(relay_acceptor(wr.clone(), l, local));
                w.tcp_relays.insert(local, (h.abort_handle(), lock));
            }
            Err(e) => tracing::warn!(error = %e, "cannot register TCP relay listener"),
        }
    }
    serve_new_relays(w);
}

/// Puts the UDP relay sockets bound since the last call into the worker's poller.
fn serve_new_relays(w: &mut Worker) {
    for sock in std::mem::take(&mut w.relays.pending_new) {
        let Ok(local) = sock.local_addr() else {
            continue;
        };
        let token = sock.as_raw_fd() as u64;
        match w.poller.get_ref().add(&sock, token) {
            Ok(()) => {
                w.relay_tokens.insert(token, local);
                w.relay_socks.insert(local, sock);
            }
            Err(e) => tracing::warn!(error = %e, "cannot register relay socket"),
        }
    }
}

/// Batches one wake-up of a UDP reader serves at most, [`BATCH`] datagrams each, before the
/// other tasks of the worker get their turn.
const READS_PER_WAKEUP: usize = 4;

/// Reads one socket's queued datagrams in batches, at most [`READS_PER_WAKEUP`] of them:
/// `recv` fills `batch` from the socket (`None`: the socket is gone), `serve` gets each
/// datagram. Stops when the socket is empty (`WouldBlock`) or a batch comes back short.
fn read_rounds(
    w: &mut Worker,
    batch: &mut RecvBatch,
    mut recv: impl FnMut(&Worker, &mut RecvBatch) -> Option<io::Result<usize>>,
    mut serve: impl FnMut(&mut Worker, SocketAddr, &[u8], Instant),
) {
    for _ in 0..READS_PER_WAKEUP {
        match recv(w, batch) {
            None => return,
            Some(Ok(_)) => {}
            Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return,
            Some(Err(e)) => {
                // ICMP errors (ECONNREFUSED, port unreachable) surface here on Linux; keep
                // serving.
                tracing::trace!(error = %e, "udp recv");
                continue;
            }
        }
        let now = Instant::now();
        for (from, data) in batch.datagrams() {
            serve(w, from, data, now);
        }
        if batch.len() < BATCH {
            return;
        }
    }
}

/// Sends `data` from the relay socket bound at `relay` to `peer`; a failure is dropped and
/// counted.
fn send_to_peer(w: &Worker, relay: SocketAddr, peer: SocketAddr, data: &[u8]) {
    if let Some(s) = w.relay_socks.get(&relay) {
        if let Err(e) = s.send_to(data, peer) {
            tracing::debug!(error = %e, %relay, %peer, "peer send failed");
            w.metrics.drop_packet("peer_send_failed");
        }
    } else {
        w.metrics.drop_packet("relay_socket_missing");
    }
}

/// Sends the relayed datagrams queued in the worker's batch (each run from one socket in one
/// `sendmmsg(2)`); a datagram not sent is dropped and counted like a single send's failure.
fn send_queued(w: &mut Worker) {
    if w.tx.is_empty() {
        return;
    }
    let Worker {
        tx,
        relay_socks,
        udp,
        metrics,
        ..
    } = w;
    tx.flush(
        |via| match via {
            Via::Relay(a) => relay_socks.get(a).map(|s| s.as_fd()),
            Via::Listener(a) => udp.get(a).map(|s| s.as_fd()),
        },
        |via, to, e| match via {
            Via::Relay(relay) if e.kind() == io::ErrorKind::NotFound => {
                tracing::debug!(%relay, peer = %to, "relay socket gone before its datagram was sent");
                metrics.drop_packet("relay_socket_missing");
            }
            Via::Relay(relay) => {
                tracing::debug!(error = %e, %relay, peer = %to, "peer send failed");
                metrics.drop_packet("peer_send_failed");
            }
            Via::Listener(_) => metrics.drop_packet("client_send_failed"),
        },
    );
}

/// Serves one UDP listener: waits until it is readable, reads its datagrams in batches into the
/// worker's shared slots, and folds the counters once a wake-up.
async fn udp_listener(wr: WorkerRef, sock: Rc<UdpSocket>, local: SocketAddr) {
    let serve = |wr: &WorkerRef, w: &mut Worker, from: SocketAddr, data: &[u8], now: Instant| {
        let tuple = FiveTuple {
            client: from,
            server: local,
            transport: Transport::Udp,
        };
        if let Some(owner) = w.mobility_route(tuple, data, now) {
            w.forward(owner, tuple, data);
            return;
        }
        match w.core.relay_client_data(tuple, data, now) {
            ClientData::ToPeer {
                relay,
                peer,
                payload,
            } => {
                if w.tx.is_full() {
                    send_queued(w);
                }
                w.tx.push(Via::Relay(relay), peer, &data[payload]);
                return;
            }
            ClientData::Dropped => return,
            ClientData::Other => {}
        }
        // What was relayed before this message leaves before anything it changes (a
        // Refresh(0) closing a relay socket, a response).
        send_queued(w);
        if let Some(fp) = w.fast_path.as_mut() {
            // A request may end the allocation (Refresh 0): its record gets what XDP relayed.
            fp.sync_client(&mut w.core, tuple.client, tuple.server);
        }
        let mut out = std::mem::take(&mut w.out);
        w.core
            .handle_client(tuple, data, now, &mut w.relays, &mut out);
        w.out = out;
        flush_io(wr, w);
    };
    loop {
        if sock.readable().await.is_err() {
            continue;
        }
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        let Some(mut batch) = w.rx.take() else {
            continue;
        };
        read_rounds(
            w,
            &mut batch,
            |_, b| Some(sock.try_io(tokio::io::Interest::READABLE, || b.recv(&*sock))),
            |w, from, data, now| serve(&wr, w, from, data, now),
        );
        send_queued(w);
        w.rx = Some(batch);
        w.fold_stats();
    }
}

/// Serves the datagrams other workers hand over (clients that moved here, RFC 8016), as if
/// they had arrived on this worker's own socket for the same server address. At most 64 per
/// wake-up, so the queue cannot starve the sockets.
async fn forwarded_loop(wr: WorkerRef, mut rx: tokio::sync::mpsc::Receiver<mobility::Forwarded>) {
    while let Some(first) = rx.recv().await {
        {
            let now = Instant::now();
            let mut guard = wr.borrow_mut();
            let w = &mut *guard;
            let mut next = Some(first);
            let mut served = 0;
            while let Some(f) = next.take() {
                let mut out = std::mem::take(&mut w.out);
                w.core
                    .handle_client(f.tuple, &f.data, now, &mut w.relays, &mut out);
                w.out = out;
                served += 1;
                if served < 64 {
                    next = rx.try_recv().ok();
                }
            }
            flush(&wr, w);
        }
        tokio::task::yield_now().await;
    }
}

async fn dtls_listener(wr: WorkerRef, sock: Rc<UdpSocket>, local: SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => continue,
        };
        let now = Instant::now();
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        let Some((s, srv)) = w.dtls.get_mut(&local) else {
            return;
        };
        let received = srv.handle_datagram(now, from, &buf[..n]);
        while let Some((peer, d)) = srv.poll_transmit() {
            if sockets::send_to(s, &d, peer).is_err() {
                w.metrics.drop_packet("client_send_failed");
            }
        }
        gauge_add(&w.metrics.conn.dtls_handshakes, srv.take_handshakes_delta());
        if let Some(d) = &received.dropped {
            tracing::trace!(reason = %d, client = %from, "DTLS datagram dropped");
            w.metrics.drop_packet(d.reason());
        }
        let tuple = FiveTuple {
            client: from,
            server: local,
            transport: Transport::Dtls,
        };
        for m in received.messages {
            let mut out = std::mem::take(&mut w.out);
            w.core
                .handle_client(tuple, &m, now, &mut w.relays, &mut out);
            w.out = out;
        }
        if received.closed {
            w.core.handle_connection_closed(tuple, &mut w.relays);
        }
        flush(&wr, w);
    }
}

/// DTLS handshake retransmissions, idle associations, certificate reloads.
async fn dtls_timer(wr: WorkerRef, certs: Option<Arc<tls::CertStore>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        let fresh = certs.as_ref().and_then(|c| {
            let g = c.generation();
            let stale = w.dtls.values().any(|(_, srv)| srv.generation() != g);
            if !stale {
                return None;
            }
            let (cert, key) = c.paths();
            match dtls::handshake_config(cert, key) {
                Ok(cfg) => Some((cfg, g)),
                Err(e) => {
                    tracing::warn!(error = %e, "DTLS certificate reload failed");
                    None
                }
            }
        });
        let mut closed = Vec::new();
        for (local, (s, srv)) in w.dtls.iter_mut() {
            if let Some((cfg, g)) = &fresh {
                srv.set_config(cfg.clone(), *g);
            }
            let expired = srv.handle_timeout(now);
            w.metrics
                .drop_packets(dtls::HANDSHAKE_TIMEOUT_REASON, expired.handshake_timeouts);
            gauge_add(&w.metrics.conn.dtls_handshakes, srv.take_handshakes_delta());
            for client in expired.idle {
                closed.push(FiveTuple {
                    client,
                    server: *local,
                    transport: Transport::Dtls,
                });
            }
            while let Some((peer, d)) = srv.poll_transmit() {
                let _ = sockets::send_to(s, &d, peer);
            }
        }
        for t in closed {
            w.core.handle_connection_closed(t, &mut w.relays);
        }
        flush(&wr, w);
    }
}

/// Serves every UDP relay socket of the worker: waits until the poller reports some readable,
/// then reads each in batches (at most [`READS_PER_WAKEUP`] a round, into the worker's shared
/// slots) and relays what peers sent to the clients; the counters are folded once a round.
/// Between rounds the other tasks get their turn; a socket left with datagrams queued is
/// reported again (level-triggered).
async fn relay_poller(wr: WorkerRef, poller: Rc<AsyncFd<Poller>>) {
    let mut ready = Vec::with_capacity(sockets::poller::MAX_EVENTS);
    loop {
        let Ok(mut guard) = poller.readable().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        loop {
            let n = {
                let w = wr.borrow();
                match w.poller.get_ref().ready(&mut ready) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(error = %e, "relay poller");
                        0
                    }
                }
            };
            if n == 0 {
                guard.clear_ready();
                break;
            }
            {
                let mut guard = wr.borrow_mut();
                let w = &mut *guard;
                let Some(mut batch) = w.rx.take() else {
                    break;
                };
                for token in &ready {
                    if let Some(&local) = w.relay_tokens.get(token) {
                        drain_relay(w, local, &mut batch);
                    }
                }
                send_queued(w);
                w.rx = Some(batch);
                flush(&wr, w);
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Reads up to [`READS_PER_WAKEUP`] batches from the relay socket at `local` and hands each
/// datagram to the core; frames for UDP clients go out at once.
fn drain_relay(w: &mut Worker, local: SocketAddr, batch: &mut RecvBatch) {
    read_rounds(
        w,
        batch,
        |w, b| w.relay_socks.get(&local).map(|s| b.recv(s)),
        |w, peer, data, now| relay_from_peer(w, local, peer, data, now),
    );
}

/// A datagram from `peer` to the relayed transport address `local`: to its client, framed
/// into the worker's send batch (UDP clients) or copied into a transmit (streams, DTLS).
fn relay_from_peer(w: &mut Worker, local: SocketAddr, peer: SocketAddr, data: &[u8], now: Instant) {
    if w.tx.is_full() {
        send_queued(w);
    }
    let Some(buf) = w.tx.next_buf() else {
        return;
    };
    let Some(to) = w.core.handle_peer_into(local, peer, data, now, buf) else {
        return;
    };
    if to.transport == Transport::Udp && w.udp.contains_key(&to.server) {
        w.tx.commit(Via::Listener(to.server), to.client);
    } else {
        let data = buf.clone();
        w.out.push(Transmit::ToClient { to, data });
    }
}

/// Answers the admin API's questions from inside the worker, where its allocations live.
async fn command_loop(
    wr: WorkerRef,
    index: usize,
    mut commands: tokio::sync::mpsc::Receiver<admin::WorkerCommand>,
) {
    use admin::{EndTarget, WorkerCommand};
    while let Some(cmd) = commands.recv().await {
        let now = Instant::now();
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        match cmd {
            WorkerCommand::List {
                filter,
                limit,
                reply,
            } => {
                let _ = reply.send(w.core.allocations(&filter, limit, now));
            }
            WorkerCommand::End { target, reply } => {
                if let Some(fp) = w.fast_path.as_mut() {
                    // What XDP forwarded goes into the records the ends log.
                    fp.sync_counts(&mut w.core);
                }
                let ended = match target {
                    EndTarget::Id(id) => w
                        .core
                        .end_allocation(id, now, &mut w.relays)
                        .into_iter()
                        .collect(),
                    EndTarget::User(user) => w.core.end_user_allocations(&user, now, &mut w.relays),
                };
                // Closes the released relay sockets and counts the ends.
                flush(&wr, w);
                let _ = reply.send(ended);
            }
            WorkerCommand::Reconfigure { config, reply } => {
                w.core.reconfigure(config, now);
                // A narrower peer policy takes bindings off the fast path now.
                w.apply_fast_path();
                let _ = reply.send(());
            }
            WorkerCommand::Load { reply } => {
                let relay = &w.core.stats().relay;
                let _ = reply.send(admin::WorkerLoad {
                    worker: index,
                    allocations: w.core.allocation_count(),
                    relay_sockets: w.relay_socks.len() + w.tcp_relays.len(),
                    stream_connections: w.tcp.len(),
                    to_peer_packets: relay.c2p_packets,
                    to_peer_bytes: relay.c2p_bytes,
                    from_peer_packets: relay.p2c_packets,
                    from_peer_bytes: relay.p2c_bytes,
                });
            }
            WorkerCommand::AllocationBandwidth { id, bps, reply } => {
                let _ = reply.send(w.core.set_allocation_bandwidth(id, bps, now));
                w.apply_fast_path();
                w.fold_stats();
            }
        }
    }
}

async fn timer_loop(wr: WorkerRef) {
    loop {
        let next = wr.borrow().core.poll_timeout();
        let cap = Instant::now() + Duration::from_secs(1);
        let at = next.map_or(cap, |n| n.min(cap));
        tokio::time::sleep_until(at.into()).await;
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        let now = Instant::now();
        if let Some(fp) = w.fast_path.as_mut() {
            // Bindings whose deadline passed may go with their allocation now.
            fp.sync_due(&mut w.core, now);
        }
        w.core.handle_timeout(now, &mut w.relays);
        flush(&wr, w);
        if let Some(fp) = w.fast_path.as_mut() {
            fp.sync(&mut w.core, now);
        }
    }
}

async fn tcp_acceptor(
    wr: WorkerRef,
    l: TcpListener,
    local: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy_from: ProxyFrom,
    stop: CancellationToken,
) {
    let gate = wr.borrow().gate.clone();
    loop {
        let (stream, from) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let admitted = if proxy_from.enabled() {
            if !proxy_from.allows(from.ip()) {
                let reason = ProxyReject::SourceNotAllowed;
                tracing::debug!(source = %from, reason = reason.as_str(), "PROXY connection refused");
                wr.borrow().metrics.proxy_reject(reason);
                continue;
            }
            // The balancer's IP is not the client's: per-IP caps wait for the header.
            gate.admit_unattributed(tls.is_some())
        } else {
            gate.admit(from.ip(), tls.is_some())
        };
        let admission = match admitted {
            Ok(a) => a,
            Err(refused) => {
                tracing::debug!(client = %from, reason = refused.reason(), "connection refused");
                wr.borrow().metrics.drop_packet(refused.reason());
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(stream_client(
            wr.clone(),
            stream,
            (from, local),
            tls.clone(),
            proxy_from.enabled(),
            admission,
            stop.clone(),
        ));
    }
}

/// A new stream connection from `from` to `local`: the PROXY header if `proxied`, then the TLS
/// handshake if `tls`, then [`tcp_connection`].
async fn stream_client(
    wr: WorkerRef,
    mut stream: TcpStream,
    (from, local): (SocketAddr, SocketAddr),
    tls: Option<TlsAcceptor>,
    proxied: bool,
    mut admission: Admission,
    stop: CancellationToken,
) {
    // The header and, on TCP, the first frame must arrive within FIRST_REQUEST_TIMEOUT of the
    // accept.
    let first_request_deadline = tokio::time::Instant::now() + FIRST_REQUEST_TIMEOUT;
    let mut client = from;
    if proxied {
        let read = tokio::time::timeout_at(first_request_deadline, proxy::read_header(&mut stream));
        let header = tokio::select! {
            r = read => r.unwrap_or(Err(ProxyReject::Timeout)),
            _ = stop.cancelled() => return,
        };
        let metrics = wr.borrow().metrics.clone();
        match header {
            Err(reason) => {
                tracing::debug!(source = %from, reason = reason.as_str(), "PROXY connection refused");
                metrics.proxy_reject(reason);
                return;
            }
            Ok(Header::Local) => metrics.proxy_accept("local"),
            Ok(Header::Proxy {
                source,
                destination,
            }) => {
                metrics.proxy_accept("proxy");
                tracing::debug!(client = %source, balancer = %from, %destination, "PROXY header");
                client = source;
            }
        }
        if let Err(refused) = admission.attribute(client.ip()) {
            tracing::debug!(%client, reason = refused.reason(), "connection refused");
            metrics.drop_packet(refused.reason());
            return;
        }
    }
    let Some(acceptor) = tls else {
        let tuple = FiveTuple {
            client,
            server: local,
            transport: Transport::Tcp,
        };
        tcp_connection(wr, stream, tuple, stop, admission, first_request_deadline).await;
        return;
    };
    let tuple = FiveTuple {
        client,
        server: local,
        transport: Transport::Tls,
    };
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let result = tokio::select! {
        r = handshake => r,
        _ = stop.cancelled() => return,
    };
    admission.handshake_done();
    match result {
        Ok(Ok(s)) => {
            let deadline = tokio::time::Instant::now() + FIRST_REQUEST_TIMEOUT;
            tcp_connection(wr, s, tuple, stop, admission, deadline).await;
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %client, "TLS handshake failed");
            wr.borrow().metrics.drop_packet("tls_handshake");
        }
        Err(_) => wr.borrow().metrics.drop_packet("tls_handshake_timeout"),
    }
}

/// One stream client (TCP, or TLS after the handshake): RFC 8489 §6.2.2 framing both ways.
/// Holds `admission` (its place under the connection caps) until it ends; must deliver its
/// first frame by `first_request_deadline`.
async fn tcp_connection<S>(
    wr: WorkerRef,
    stream: S,
    tuple: FiveTuple,
    stop: CancellationToken,
    admission: Admission,
    first_request_deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    if wr.borrow().tcp.contains_key(&tuple) {
        // Only possible with PROXY headers: two balancer connections naming the same client
        // address and port. The 5-tuple keys the allocation, so the second cannot be served.
        tracing::debug!(client = %tuple.client, "a connection with this 5-tuple is open; closed");
        wr.borrow().metrics.drop_packet(DUPLICATE_TUPLE_REASON);
        return;
    }
    let (mut rd, mut wrt) = tokio::io::split(stream);
    let queue = SendQueue::new(wr.borrow().send_queue_bytes);
    wr.borrow_mut().tcp.insert(tuple, queue.clone());
    let writer = tokio::task::spawn_local(async move {
        while let Some(frame) = queue.next().await {
            if wrt.write_all(&frame).await.is_err() {
                return None;
            }
            // TLS buffers records: push them out now.
            if wrt.flush().await.is_err() {
                return None;
            }
        }
        Some(wrt)
    });
    // After a successful ConnectionBind: the CONNECTION-ID and the bytes read past it.
    let mut bound: Option<(u32, Vec<u8>)> = None;
    let mut got_frame = false;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 65_536];
    'conn: loop {
        let idle = if wr.borrow().core.has_allocation(&tuple) {
            TCP_IDLE_WITH_ALLOCATION
        } else {
            TCP_IDLE_WITHOUT_ALLOCATION
        };
        let mut deadline = tokio::time::Instant::now() + idle;
        if !got_frame {
            deadline = deadline.min(first_request_deadline);
        }
        let n = tokio::select! {
            r = tokio::time::timeout_at(deadline, rd.read(&mut chunk)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break 'conn,
                Err(_) => {
                    if !got_frame {
                        wr.borrow().metrics.drop_packet("tcp_first_request_timeout");
                    }
                    break 'conn;
                }
                Ok(Ok(n)) => n,
            },
            _ = stop.cancelled() => break 'conn,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        while buf.len() - consumed >= 4 {
            let Some(len) = stream_frame_len(&buf[consumed..]) else {
                wr.borrow().metrics.drop_packet("tcp_framing");
                break 'conn;
            };
            if len > MAX_FRAME_BYTES {
                wr.borrow().metrics.drop_packet("tcp_framing");
                break 'conn;
            }
            if buf.len() - consumed < len {
                break;
            }
            got_frame = true;
            let frame = &buf[consumed..consumed + len];
            // ChannelData on a stream is padded; the core reads the length field itself.
            let mut guard = wr.borrow_mut();
            let w = &mut *guard;
            let mut out = std::mem::take(&mut w.out);
            w.core
                .handle_client(tuple, frame, Instant::now(), &mut w.relays, &mut out);
            w.out = out;
            flush(&wr, w);
            consumed += len;
            if let Some(id) = w.binds.remove(&tuple) {
                bound = Some((id, buf[consumed..].to_vec()));
                break 'conn;
            }
        }
        buf.drain(..consumed);
    }
    {
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        if let Some(q) = w.tcp.remove(&tuple) {
            q.close();
        }
        w.core.handle_connection_closed(tuple, &mut w.relays);
        flush(&wr, w);
    }
    let Some((connection_id, leftover)) = bound else {
        writer.abort();
        drop(admission);
        return;
    };
    // The client data connection (RFC 6062 §5.4): the writer ends once it has written the
    // ConnectionBind response; from then on the connection carries the peer's bytes.
    let joined = match writer.await {
        Ok(Some(wrt)) => Some(rd.unsplit(wrt)),
        _ => None,
    };
    let peer = wr.borrow().peer_streams.take(connection_id);
    if let (Some(client), Some((peer, peer_stop))) = (joined, peer) {
        let (traffic, hot) = {
            let w = wr.borrow();
            (
                w.core.peer_connection_traffic(connection_id),
                w.metrics.hot.clone(),
            )
        };
        match TcpStream::from_std(peer) {
            Ok(peer) => {
                tokio::select! {
                    _ = splice(client, leftover, peer, traffic, hot) => {}
                    _ = peer_stop.cancelled() => {}
                    _ = stop.cancelled() => {}
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot register peer connection"),
        }
    }
    let mut guard = wr.borrow_mut();
    let w = &mut *guard;
    w.peer_streams.forget(connection_id);
    w.core.handle_peer_connection_closed(connection_id);
    flush(&wr, w);
    drop(admission);
}

/// Copies bytes both ways between a client data connection and its peer connection (RFC 6062
/// §5.4), `leftover` (bytes the client sent right after its ConnectionBind) first, until
/// either side closes or fails. Counts into the allocation's `traffic` and the relayed-traffic
/// metrics (a "packet" is one read). Each read waits for the allocation's bandwidth caps
/// before it is written on ([`pace`]): the side over the cap is slowed by TCP flow control.
async fn splice<S>(
    client: S,
    leftover: Vec<u8>,
    peer: TcpStream,
    traffic: Option<Arc<StreamTraffic>>,
    hot: crate::metrics::HotCounters,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut pr, mut pw) = peer.into_split();
    let to_peer = |n: usize| {
        if let Some(t) = &traffic {
            t.count_to_peer(n);
        }
        hot.c2p_packets.inc();
        hot.c2p_bytes.inc_by(n as u64);
    };
    let from_peer = |n: usize| {
        if let Some(t) = &traffic {
            t.count_from_peer(n);
        }
        hot.p2c_packets.inc();
        hot.p2c_bytes.inc_by(n as u64);
    };
    let traffic = traffic.as_deref();
    let up = async {
        if !leftover.is_empty() {
            pace(traffic, Direction::ToPeer, leftover.len(), &hot).await;
            pw.write_all(&leftover).await?;
            to_peer(leftover.len());
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            pace(traffic, Direction::ToPeer, n, &hot).await;
            pw.write_all(&buf[..n]).await?;
            to_peer(n);
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = pr.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            pace(traffic, Direction::FromPeer, n, &hot).await;
            cw.write_all(&buf[..n]).await?;
            // TLS buffers records: push them out now.
            cw.flush().await?;
            from_peer(n);
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Waits until the allocation's bandwidth caps admit `len` bytes going `dir` (at once while no
/// cap applies), counting each wait by the scope that held it back. The caps are read again
/// after every wait, so a change through the admin API or a reload applies within
/// [`MAX_STREAM_WAIT`](turn_proto::core::MAX_STREAM_WAIT).
async fn pace(
    traffic: Option<&StreamTraffic>,
    dir: Direction,
    len: usize,
    hot: &crate::metrics::HotCounters,
) {
    let Some(t) = traffic else { return };
    while let Err((scope, wait)) = t.pace(dir, len, Instant::now()) {
        hot.stream_waits[scope.index()].inc();
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// Connect (RFC 6062 §5.2): opens the TCP connection from the relayed transport address to the
/// peer and tells the core; the core's deadline (or the allocation's end) cancels it through
/// `stop`. A connection the core keeps is parked for its ConnectionBind before the Connect
/// response goes out.
async fn connect_peer(
    wr: WorkerRef,
    connection_id: u32,
    (relay, peer): (SocketAddr, SocketAddr),
    stop: CancellationToken,
) {
    let attempt = async { sockets::relay_tcp_connector(relay)?.connect(peer).await };
    let result = tokio::select! {
        r = attempt => r,
        _ = stop.cancelled() => return,
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, %relay, %peer, "connection to peer failed");
    }
    let mut guard = wr.borrow_mut();
    let w = &mut *guard;
    let mut out = std::mem::take(&mut w.out);
    let kept =
        w.core
            .handle_peer_connected(connection_id, result.is_ok(), Instant::now(), &mut out);
    w.out = out;
    match result.map(|s| s.into_std()) {
        Ok(Ok(s)) if kept => w.peer_streams.park(connection_id, s),
        _ => {
            w.peer_streams.forget(connection_id);
            if kept {
                w.core.handle_peer_connection_closed(connection_id);
            }
        }
    }
    flush(&wr, w);
}

/// Accepts peers on a TCP allocation's relayed transport address (RFC 6062 §5.3): the core
/// decides (permission, policy, caps) and sends the ConnectionAttempt; an accepted peer is
/// parked for its ConnectionBind first, a refused one closed at once.
async fn relay_acceptor(wr: WorkerRef, l: TcpListener, local: SocketAddr) {
    loop {
        let (stream, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, %local, "relay accept");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let mut guard = wr.borrow_mut();
        let w = &mut *guard;
        let mut out = std::mem::take(&mut w.out);
        let accepted = w
            .core
            .handle_peer_accept(local, peer, Instant::now(), &mut out);
        w.out = out;
        if let Some(id) = accepted {
            let _ = w.peer_streams.open(id);
            match stream.into_std() {
                Ok(s) => w.peer_streams.park(id, s),
                Err(_) => {
                    w.peer_streams.forget(id);
                    w.core.handle_peer_connection_closed(id);
                }
            }
        } else {
            tracing::debug!(%local, %peer, "peer connection refused");
        }
        flush(&wr, w);
    }
}

/// The peer connections of TCP allocations (RFC 6062), server-wide by CONNECTION-ID: each
/// slot holds the connection's cancellation token (its connect, or its relaying once bound)
/// and, while it waits for its ConnectionBind, the socket itself, for whichever worker gets
/// the ConnectionBind. Bounded by the core's caps on peer connections.
#[derive(Clone, Debug, Default)]
pub struct PeerStreams(Arc<Mutex<HashMap<u32, PeerSlot>>>);

#[derive(Debug)]
struct PeerSlot {
    stream: Option<std::net::TcpStream>,
    stop: CancellationToken,
}

impl PeerStreams {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PeerSlot>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// A slot for connection `id`; its token.
    fn open(&self, id: u32) -> CancellationToken {
        let stop = CancellationToken::new();
        self.slots().insert(
            id,
            PeerSlot {
                stream: None,
                stop: stop.clone(),
            },
        );
        stop
    }
    /// Parks the socket of connection `id` until its ConnectionBind (dropped when the slot
    /// is gone).
    fn park(&self, id: u32, stream: std::net::TcpStream) {
        if let Some(slot) = self.slots().get_mut(&id) {
            slot.stream = Some(stream);
        }
    }
    /// Takes the parked socket of connection `id`, with its token (the slot stays, for
    /// [`close`](Self::close)).
    fn take(&self, id: u32) -> Option<(std::net::TcpStream, CancellationToken)> {
        let mut slots = self.slots();
        let slot = slots.get_mut(&id)?;
        Some((slot.stream.take()?, slot.stop.clone()))
    }
    /// Closes connection `id`: stops its connect or its relaying, drops its socket.
    fn close(&self, id: u32) {
        if let Some(slot) = self.slots().remove(&id) {
            slot.stop.cancel();
        }
    }
    /// Forgets connection `id` (it ended).
    fn forget(&self, id: u32) {
        self.slots().remove(&id);
    }
    /// Slots held now (connecting, parked or relaying).
    pub fn len(&self) -> usize {
        self.slots().len()
    }
    /// True when no slot is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Caps on stream connections, server-wide ([`StreamGate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Open TCP and TLS connections.
    pub max_connections: usize,
    /// Open TCP and TLS connections from one source IP.
    pub max_connections_per_ip: usize,
    /// TLS handshakes in progress.
    pub max_handshakes: usize,
    /// TLS handshakes in progress from one source IP.
    pub max_handshakes_per_ip: usize,
}

/// Why a stream connection was refused (closed right after accept); each maps to a
/// `turn_dropped_packets_total{reason}` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// `tcp_max_connections` reached.
    #[error("too many connections")]
    ConnectionLimit,
    /// `tcp_max_connections_per_ip` reached for the source IP.
    #[error("too many connections from this IP")]
    PerIpLimit,
    /// `tls_max_handshakes` reached.
    #[error("too many TLS handshakes in progress")]
    HandshakeLimit,
    /// `tls_max_handshakes_per_ip` reached for the source IP.
    #[error("too many TLS handshakes in progress from this IP")]
    HandshakePerIpLimit,
}

impl Refused {
    /// The `reason` label value.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::ConnectionLimit => "tcp_connection_limit",
            Refused::PerIpLimit => "tcp_per_ip_limit",
            Refused::HandshakeLimit => "tls_handshake_limit",
            Refused::HandshakePerIpLimit => "tls_handshake_per_ip_limit",
        }
    }
}

#[derive(Debug, Default)]
struct GateCounts {
    connections: usize,
    handshakes: usize,
    /// Source IP -> (connections, handshakes in progress).
    per_ip: HashMap<IpAddr, (usize, usize)>,
}

/// Server-wide admission of stream connections, shared by every worker (a source IP's
/// connections land on different workers). Taken once per accept, so a mutex is cheap here.
#[derive(Debug)]
pub struct StreamGate {
    limits: StreamLimits,
    counts: Mutex<GateCounts>,
    gauges: crate::metrics::ConnGauges,
}

impl StreamGate {
    /// A gate with `limits`, reporting into `gauges`.
    pub fn new(limits: StreamLimits, gauges: crate::metrics::ConnGauges) -> Self {
        Self {
            limits,
            counts: Mutex::default(),
            gauges,
        }
    }

    /// Admits a connection from `ip`, with a TLS handshake slot if `tls`. The slots are given
    /// back when the [`Admission`] is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, tls: bool) -> Result<Admission, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.check_total(&c, tls)?;
        self.check_per_ip(&c, ip, tls)?;
        c.connections += 1;
        c.handshakes += usize::from(tls);
        Self::add_per_ip(&mut c, ip, tls);
        self.report(&c);
        Ok(Admission {
            gate: self.clone(),
            ip: Some(ip),
            handshake: tls,
        })
    }

    /// Admits a connection whose client IP is not known yet (a PROXY header will name it)
    /// under the server-wide caps only; [`Admission::attribute`] applies the per-IP caps.
    pub fn admit_unattributed(self: &Arc<Self>, tls: bool) -> Result<Admission, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.check_total(&c, tls)?;
        c.connections += 1;
        c.handshakes += usize::from(tls);
        self.report(&c);
        Ok(Admission {
            gate: self.clone(),
            ip: None,
            handshake: tls,
        })
    }

    fn check_total(&self, c: &GateCounts, tls: bool) -> Result<(), Refused> {
        if c.connections >= self.limits.max_connections {
            return Err(Refused::ConnectionLimit);
        }
        if tls && c.handshakes >= self.limits.max_handshakes {
            return Err(Refused::HandshakeLimit);
        }
        Ok(())
    }

    fn check_per_ip(&self, c: &GateCounts, ip: IpAddr, tls: bool) -> Result<(), Refused> {
        let (ip_conns, ip_handshakes) = c.per_ip.get(&ip).copied().unwrap_or((0, 0));
        if ip_conns >= self.limits.max_connections_per_ip {
            return Err(Refused::PerIpLimit);
        }
        if tls && ip_handshakes >= self.limits.max_handshakes_per_ip {
            return Err(Refused::HandshakePerIpLimit);
        }
        Ok(())
    }

    fn add_per_ip(c: &mut GateCounts, ip: IpAddr, tls: bool) {
        let e = c.per_ip.entry(ip).or_insert((0, 0));
        e.0 += 1;
        e.1 += usize::from(tls);
    }

    fn release(&self, ip: Option<IpAddr>, connection: bool, handshake: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.connections -= usize::from(connection);
        c.handshakes -= usize::from(handshake);
        if let Some((conns, hs)) = ip.and_then(|ip| c.per_ip.get_mut(&ip)) {
            *conns -= usize::from(connection);
            *hs -= usize::from(handshake);
            if *conns == 0 {
                if let Some(ip) = ip {
                    c.per_ip.remove(&ip);
                }
            }
        }
        self.report(&c);
    }

    fn report(&self, c: &GateCounts) {
        self.gauges.tcp_connections.set(c.connections as i64);
        self.gauges.tls_handshakes.set(c.handshakes as i64);
    }

    /// (connections, TLS handshakes) held now, in total.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (c.connections, c.handshakes)
    }
}

/// A connection's place under the [`StreamGate`] caps; given back on drop.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<StreamGate>,
    /// The IP whose per-IP slots this holds (None: not attributed yet).
    ip: Option<IpAddr>,
    handshake: bool,
}

impl Admission {
    /// Names the client IP of an admission taken with [`StreamGate::admit_unattributed`] and
    /// takes its per-IP slots (a connection, and a handshake if one is still held). On refusal
    /// the admission is unchanged; dropping it gives its server-wide slots back.
    pub fn attribute(&mut self, ip: IpAddr) -> Result<(), Refused> {
        assert!(self.ip.is_none(), "an admission is attributed once");
        let mut c = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.gate.check_per_ip(&c, ip, self.handshake)?;
        StreamGate::add_per_ip(&mut c, ip, self.handshake);
        self.ip = Some(ip);
        Ok(())
    }

    /// The TLS handshake ended (either way): its handshake slot is given back.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshake) {
            self.gate.release(self.ip, false, true);
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.gate.release(self.ip, true, self.handshake);
    }
}

/// Frames waiting to be written to one stream connection, bounded in bytes: a frame that would
/// take the queue over `limit_bytes` is refused (the caller drops and counts it), except that
/// an empty queue always takes one frame so any frame can be sent.
#[derive(Debug)]
pub struct ByteQueue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    limit_bytes: usize,
}

/// The frame did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("send queue full")]
pub struct QueueFull;

impl ByteQueue {
    /// An empty queue holding at most `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            frames: VecDeque::new(),
            bytes: 0,
            limit_bytes,
        }
    }

    /// Queues `frame` if it fits.
    pub fn try_push(&mut self, frame: Vec<u8>) -> Result<(), QueueFull> {
        if !self.frames.is_empty() && self.bytes + frame.len() > self.limit_bytes {
            return Err(QueueFull);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Ok(())
    }

    /// The oldest frame.
    pub fn pop(&mut self) -> Option<Vec<u8>> {
        let f = self.frames.pop_front()?;
        self.bytes -= f.len();
        Some(f)
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A [`ByteQueue`] shared by a worker (producer) and a connection's writer task.
#[derive(Debug)]
pub struct SendQueue {
    queue: RefCell<ByteQueue>,
    closed: std::cell::Cell<bool>,
    ready: Notify,
}

impl SendQueue {
    /// An empty queue of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Rc<Self> {
        Rc::new(Self {
            queue: RefCell::new(ByteQueue::new(limit_bytes)),
            closed: std::cell::Cell::new(false),
            ready: Notify::new(),
        })
    }

    /// Queues `frame` for the writer if it fits.
    pub fn try_push(&self, frame: Vec<u8>) -> Result<(), QueueFull> {
        if self.closed.get() {
            return Err(QueueFull);
        }
        self.queue.borrow_mut().try_push(frame)?;
        self.ready.notify_one();
        Ok(())
    }

    /// No more frames; the writer ends once the queue is empty.
    pub fn close(&self) {
        self.closed.set(true);
        self.ready.notify_one();
    }

    /// The next frame, waiting for one; None once closed and empty.
    pub async fn next(&self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.queue.borrow_mut().pop() {
                return Some(f);
            }
            if self.closed.get() {
                return None;
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_queue_is_bounded_in_bytes_not_frames() {
        let mut q = ByteQueue::new(1000);
        // Many small frames fit until the bytes run out, whatever their number.
        for _ in 0..100 {
            q.try_push(vec![0; 10]).unwrap();
        }
        assert_eq!(q.bytes(), 1000);
        assert_eq!(q.try_push(vec![0; 1]), Err(QueueFull));
        // One big frame only fits an empty queue.
        let mut q = ByteQueue::new(1000);
        q.try_push(vec![0; 600]).unwrap();
        assert_eq!(q.try_push(vec![0; 600]), Err(QueueFull));
        q.try_push(vec![0; 400]).unwrap();
        assert_eq!(q.pop().map(|f| f.len()), Some(600));
        assert_eq!(q.bytes(), 400);
        q.try_push(vec![0; 600]).unwrap();
        assert_eq!(q.bytes(), 1000);
        let mut q = ByteQueue::new(100);
        q.try_push(vec![0; 70_000]).unwrap();
        assert_eq!(q.try_push(vec![0; 1]), Err(QueueFull));
    }

    #[test]
    fn the_shared_send_queue_wakes_its_writer_and_ends_when_closed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let q = SendQueue::new(10);
            let reader = q.clone();
            let writer = tokio::task::spawn_local(async move {
                let mut got = Vec::new();
                while let Some(f) = reader.next().await {
                    got.push(f);
                }
                got
            });
            tokio::task::yield_now().await;
            q.try_push(vec![1; 6]).unwrap();
            assert_eq!(q.try_push(vec![2; 6]), Err(QueueFull));
            tokio::task::yield_now().await;
            q.try_push(vec![3; 6]).unwrap();
            q.close();
            assert_eq!(q.try_push(vec![4]), Err(QueueFull));
            assert_eq!(writer.await.unwrap(), vec![vec![1; 6], vec![3; 6]]);
        });
    }

    #[test]
    fn the_stream_gate_caps_per_ip_and_in_total_and_gives_slots_back() {
        let gauges = crate::metrics::ConnGauges::default();
        let gate = Arc::new(StreamGate::new(
            StreamLimits {
                max_connections: 5,
                max_connections_per_ip: 3,
                max_handshakes: 3,
                max_handshakes_per_ip: 2,
            },
            gauges.clone(),
        ));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        let mut tls_a1 = gate.admit(a, true).unwrap();
        let _tls_a2 = gate.admit(a, true).unwrap();
        assert_eq!(
            gate.admit(a, true).unwrap_err(),
            Refused::HandshakePerIpLimit
        );
        let tcp_a3 = gate.admit(a, false).unwrap();
        assert_eq!(gate.admit(a, false).unwrap_err(), Refused::PerIpLimit);
        let _tls_b1 = gate.admit(b, true).unwrap();
        assert_eq!(gate.admit(b, true).unwrap_err(), Refused::HandshakeLimit);
        let _tcp_b2 = gate.admit(b, false).unwrap();
        assert_eq!(gate.admit(c, false).unwrap_err(), Refused::ConnectionLimit);
        assert_eq!(gate.counts(), (5, 3));
        assert_eq!(
            (gauges.tcp_connections.get(), gauges.tls_handshakes.get()),
            (5, 3)
        );
        tls_a1.handshake_done();
        tls_a1.handshake_done();
        assert_eq!(gate.counts(), (5, 2));
        drop(tcp_a3);
        let _tls_c = gate.admit(c, true).unwrap();
        drop(tls_a1);
        assert_eq!(gate.counts(), (4, 3));
        assert_eq!(gauges.tls_handshakes.get(), 3);
    }

    #[test]
    fn behind_a_balancer_the_per_ip_caps_apply_to_the_client_named_by_the_header() {
        let gauges = crate::metrics::ConnGauges::default();
        let gate = Arc::new(StreamGate::new(
            StreamLimits {
                max_connections: 4,
                max_connections_per_ip: 1,
                max_handshakes: 4,
                max_handshakes_per_ip: 1,
            },
            gauges,
        ));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Three connections from one balancer: the per-IP cap of 1 does not apply to it.
        let mut c1 = gate.admit_unattributed(true).unwrap();
        let mut c2 = gate.admit_unattributed(true).unwrap();
        let mut c3 = gate.admit_unattributed(false).unwrap();
        assert_eq!(gate.counts(), (3, 2));
        // Their headers name clients: a second one from `a` is refused, per connection and
        // per handshake.
        c1.attribute(a).unwrap();
        assert_eq!(c2.attribute(a).unwrap_err(), Refused::PerIpLimit);
        assert_eq!(c3.attribute(a).unwrap_err(), Refused::PerIpLimit);
        c2.attribute(b).unwrap();
        drop(c3);
        assert_eq!(gate.counts(), (2, 2));
        // The server-wide caps still hold before any header.
        let _c4 = gate.admit_unattributed(true).unwrap();
        let _c5 = gate.admit_unattributed(false).unwrap();
        assert_eq!(
            gate.admit_unattributed(false).unwrap_err(),
            Refused::ConnectionLimit
        );
        c1.handshake_done();
        drop(c1);
        // `a`'s slot is free again.
        let _a = gate.admit(a, false).unwrap();
        assert_eq!(gate.counts(), (4, 2));
        assert_eq!(gate.admit(b, false).unwrap_err(), Refused::ConnectionLimit);
        drop(c2);
        let _b = gate.admit(b, false).unwrap();
        assert_eq!(gate.counts(), (4, 1));
    }
}
