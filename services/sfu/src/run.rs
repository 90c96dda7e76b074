//! Starting and stopping an SFU node: workers, ICE-TCP acceptor, link listener, metrics, and
//! registration in the signaling store (so signaling places rooms here).

use crate::config::SfuConfig;
use crate::io::{self, link, Placement};
use crate::metrics::SfuMetrics;
use prometheus_client::registry::Registry;
use registry::{SfuNodeInfo, Store};
use sfu_proto::peer::PcSettings;
use sfu_proto::worker::WorkerConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
pub use turnkey_runtime::drain::Drain;

/// What a running node listens on.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Link listener.
    pub link: SocketAddr,
    /// The URL registered for signaling.
    pub url: String,
    /// Metrics listener.
    pub metrics: SocketAddr,
    /// Media UDP sockets, one per worker.
    pub media: Vec<SocketAddr>,
    /// The ICE-TCP listener, if on.
    pub ice_tcp: Option<SocketAddr>,
    /// Node id.
    pub node_id: String,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(String),
    /// The link secret is empty: any client could open links.
    #[error(
        "the SFU link secret (sfu_secret) is empty: set one, or leave it unset to generate one"
    )]
    EmptySecret,
}

/// Registry heartbeat period; entries live three periods.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// How often `sfu_load_ratio` is computed (and the heartbeat's load refreshed).
const LOAD_PERIOD: Duration = Duration::from_secs(1);

/// Runs the node until `shutdown` (at once: links close with 1001) or until `drain` has
/// finished: from its start the node is not ready (`/readyz`), marks itself draining in the
/// registry, refuses links for rooms it does not host, and it stops once no link is left or
/// `cfg.drain_timeout_secs` passed. `store`: where to register (None: open `cfg.redis` if set,
/// else do not register).
pub async fn serve(
    cfg: SfuConfig,
    store: Option<Arc<dyn Store>>,
    drain: Drain,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Ready),
) -> Result<(), RunError> {
    let placement = Arc::new(Placement::default());
    let drained = {
        let p = placement.clone();
        drain.shutdown_when_finished(move || p.load() == 0, Duration::from_millis(250))
    };
    let stop = shutdown.clone();
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = drained.cancelled() => {}
            }
            shutdown.cancel();
        });
    }
    if cfg.sfu_secret.is_empty() {
        // Every link would pass the bearer check (services/sfu/PROTOCOL.md, "The link").
        return Err(RunError::EmptySecret);
    }
    let store = match (store, &cfg.redis) {
        (Some(s), _) => Some(s),
        (None, Some(url)) => Some(Arc::new(
            registry::redis::RedisStore::connect(url)
                .await
                .map_err(|e| RunError::Store(e.to_string()))?,
        ) as Arc<dyn Store>),
        (None, None) => None,
    };
    let mut registry = Registry::default();
    let metrics = SfuMetrics::register(&mut registry);
    let mut media = Vec::new();
    let mut workers = Vec::new();
    let mut threads = Vec::new();
    let tcp_listener = if cfg.ice_tcp {
        Some(
            tokio::net::TcpListener::bind(cfg.media_listen)
                .await
                .map_err(|source| RunError::Bind {
                    addr: cfg.media_listen,
                    source,
                })?,
        )
    } else {
        None
    };
    let tcp_bound = match &tcp_listener {
        Some(l) => l.local_addr().ok(),
        None => None,
    };
    let tcp_port = tcp_bound.map(|a| a.port());
    for i in 0..cfg.workers {
        let mut addr = cfg.media_listen;
        if addr.port() != 0 {
            addr.set_port(addr.port().wrapping_add(i as u16));
        }
        let sock =
            turnkey_sockets::media_udp(addr).map_err(|source| RunError::Bind { addr, source })?;
        let bound = sock
            .local_addr()
            .map_err(|source| RunError::Bind { addr, source })?;
        media.push(bound);
        let wc = WorkerConfig {
            udp_addr: SocketAddr::new(cfg.public_ip, bound.port()),
            tcp_addr: tcp_port.map(|p| SocketAddr::new(cfg.public_ip, p)),
            pc: PcSettings {
                ice_failed: Duration::from_secs(cfg.ice_timeout_secs),
                ice_disconnected: Duration::from_secs(cfg.ice_timeout_secs.min(5)),
                // The core never reads the clock: sender reports take their NTP time from here.
                wall_clock: Some(rtc::shared::time::SystemInstant::now(Instant::now())),
                direct_send: cfg.direct_send,
                direct_receive: cfg.direct_receive,
                ..PcSettings::default()
            },
            max_participants: cfg.max_participants,
            max_tracks_per_room: cfg.max_tracks_per_room,
            max_tracks_per_participant: cfg.max_tracks_per_participant,
            max_publish_bitrate_bps: cfg.max_publish_bitrate,
            ufrag_prefix: io::ufrag_prefix(i),
            data_message_max_bytes: cfg.data_message_max_bytes,
            data_messages_per_sec: cfg.data_messages_per_sec,
            data_message_burst: cfg.data_message_burst,
            // The core never reads the OS RNG: unless configured, each worker's seed is drawn
            // here (worker i of a configured seed s uses s + i).
            rng_seed: cfg
                .rng_seed
                .map_or_else(rand::random, |s| s.wrapping_add(i as u64)),
            ..WorkerConfig::default()
        };
        let (tx, th) = io::spawn_worker(i, wc, sock, metrics.clone(), shutdown.clone())
            .map_err(|source| RunError::Bind { addr, source })?;
        workers.push(tx);
        threads.push(th);
    }
    if let Some(l) = tcp_listener {
        let limits = io::IceTcpLimits::new(
            Duration::from_secs(cfg.ice_tcp_handshake_timeout_secs),
            cfg.ice_tcp_max_pending_per_ip,
            cfg.ice_tcp_max_pending,
            metrics.clone(),
        );
        tokio::spawn(io::accept_ice_tcp(
            l,
            workers.clone(),
            limits,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let state = Arc::new(link::LinkState::new(
        cfg.sfu_secret.clone(),
        workers,
        placement.clone(),
        metrics.clone(),
        shutdown.clone(),
        drain.clone(),
    ));
    let listener = tokio::net::TcpListener::bind(cfg.link_listen)
        .await
        .map_err(|source| RunError::Bind {
            addr: cfg.link_listen,
            source,
        })?;
    let link_addr = listener.local_addr().map_err(|source| RunError::Bind {
        addr: cfg.link_listen,
        source,
    })?;
    let url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("ws://{link_addr}"));
    let app = link::router(state);
    let sd = shutdown.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { sd.cancelled().await })
            .await;
    });
    drain.register(&mut registry);
    let metrics_addr = turnkey_runtime::metrics_http::serve_drainable(
        cfg.metrics,
        Arc::new(registry),
        shutdown.clone(),
        drain.clone(),
        cfg.admin_token.clone(),
    )
    .await
    .map_err(|source| RunError::Bind {
        addr: cfg.metrics,
        source,
    })?;
    let load = LoadMeter::start(
        metrics.clone(),
        cfg.workers,
        cfg.capacity_bps,
        shutdown.clone(),
    );
    tracing::info!(config = %cfg.redacted(), link = %link_addr, url = %url, "sfu node started");
    if let Some(store) = &store {
        let node = SfuNodeInfo {
            id: cfg.node_id.clone(),
            url: url.clone(),
            load: 0,
            load_permille: 0,
            draining: drain.is_draining(),
        };
        if let Err(e) = store.sfu_heartbeat(&node, HEARTBEAT * 3).await {
            metrics.registry_heartbeat_failures.inc();
            tracing::warn!("sfu registry: {e}");
        }
        let store = store.clone();
        let sd = shutdown.clone();
        let placement = placement.clone();
        let drain = drain.clone();
        let load = load.clone();
        let (failures, timeouts) = (metrics.clone(), metrics.clone());
        let beat_store = store.clone();
        let beat_node = node.clone();
        let beat_drain = drain.clone();
        tokio::spawn(async move {
            turnkey_runtime::heartbeat::keep_beating(
                HEARTBEAT,
                sd,
                drain,
                move || {
                    let node = SfuNodeInfo {
                        load: placement.load(),
                        load_permille: registry::permille(load.ratio()),
                        draining: beat_drain.is_draining(),
                        ..beat_node.clone()
                    };
                    let (store, failures) = (beat_store.clone(), failures.clone());
                    async move {
                        let r = store.sfu_heartbeat(&node, HEARTBEAT * 3).await;
                        if let Err(e) = &r {
                            failures.registry_heartbeat_failures.inc();
                            tracing::warn!("sfu registry: {e}");
                        }
                        r.is_ok()
                    }
                },
                move || {
                    timeouts.registry_heartbeat_failures.inc();
                    tracing::warn!("sfu registry: heartbeat took longer than {HEARTBEAT:?}");
                },
            )
            .await;
            let _ = store.remove_sfu_node(&node.id).await;
        });
    }
    on_ready(Ready {
        link: link_addr,
        url,
        metrics: metrics_addr,
        media,
        ice_tcp: tcp_bound,
        node_id: cfg.node_id.clone(),
    });
    shutdown.cancelled().await;
    if let Some(store) = &store {
        let _ = store.remove_sfu_node(&cfg.node_id).await;
    }
    let _ = server.await;
    for t in threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    Ok(())
}

/// `sfu_load_ratio`: the fraction of the node's capacity in use, in [0, 1]: the larger of the
/// busiest worker's busy fraction (`sfu_worker_busy_seconds_total` over the last
/// [`LOAD_PERIOD`]) and the forwarded bit rate (`sfu_forwarded_bytes_total`) against
/// `capacity_bps`. A room lives on one worker, so the busiest one is what runs out first.
#[derive(Clone)]
pub struct LoadMeter {
    ratio: Arc<std::sync::atomic::AtomicU64>,
}

impl LoadMeter {
    fn start(
        metrics: SfuMetrics,
        workers: usize,
        capacity_bps: u64,
        shutdown: CancellationToken,
    ) -> Self {
        let meter = Self {
            ratio: Arc::new(std::sync::atomic::AtomicU64::new(0f64.to_bits())),
        };
        let m = meter.clone();
        tokio::spawn(async move {
            let labels: Vec<_> = (0..workers).map(|i| [("worker", i.to_string())]).collect();
            let busy = |i: usize| metrics.worker_busy.get_or_create(&labels[i]).get();
            let mut last_busy: Vec<f64> = (0..workers).map(busy).collect();
            let mut last_bytes = metrics.forwarded_bytes.get();
            let mut last_at = std::time::Instant::now();
            let mut tick = tokio::time::interval(LOAD_PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = std::time::Instant::now();
                let secs = now.duration_since(last_at).as_secs_f64();
                if secs <= 0.0 {
                    continue;
                }
                let mut busiest: f64 = 0.0;
                for (i, last) in last_busy.iter_mut().enumerate() {
                    let b = busy(i);
                    busiest = busiest.max((b - *last) / secs);
                    *last = b;
                }
                let bytes = metrics.forwarded_bytes.get();
                let bps = bytes.saturating_sub(last_bytes) as f64 * 8.0 / secs;
                last_bytes = bytes;
                last_at = now;
                let ratio = busiest.max(bps / capacity_bps as f64).clamp(0.0, 1.0);
                m.ratio
                    .store(ratio.to_bits(), std::sync::atomic::Ordering::Relaxed);
                metrics.load_ratio.set(ratio);
            }
        });
        meter
    }

    /// The last computed ratio.
    pub fn ratio(&self) -> f64 {
        f64::from_bits(self.ratio.load(std::sync::atomic::Ordering::Relaxed))
    }
}
