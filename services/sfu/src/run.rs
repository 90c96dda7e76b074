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
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// Runs the node until `shutdown`. `store`: where to register (None: open `cfg.redis` if set,
/// else do not register).
pub async fn serve(
    cfg: SfuConfig,
    store: Option<Arc<dyn Store>>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(Ready),
) -> Result<(), RunError> {
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
    let placement = Arc::new(Placement::default());
    let state = Arc::new(link::LinkState::new(
        cfg.sfu_secret.clone(),
        workers,
        placement.clone(),
        metrics.clone(),
        shutdown.clone(),
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
    let metrics_addr =
        turnkey_runtime::metrics_http::serve(cfg.metrics, Arc::new(registry), shutdown.clone())
            .await
            .map_err(|source| RunError::Bind {
                addr: cfg.metrics,
                source,
            })?;
    tracing::info!(config = %cfg.redacted(), link = %link_addr, url = %url, "sfu node started");
    if let Some(store) = &store {
        let node = SfuNodeInfo {
            id: cfg.node_id.clone(),
            url: url.clone(),
            load: 0,
        };
        if let Err(e) = store.sfu_heartbeat(&node, HEARTBEAT * 3).await {
            tracing::warn!("sfu registry: {e}");
        }
        let store = store.clone();
        let sd = shutdown.clone();
        let placement = placement.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = sd.cancelled() => break,
                    _ = tick.tick() => {
                        let node = SfuNodeInfo { load: placement.load(), ..node.clone() };
                        if let Err(e) = store.sfu_heartbeat(&node, HEARTBEAT * 3).await {
                            tracing::warn!("sfu registry: {e}");
                        }
                    }
                }
            }
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
