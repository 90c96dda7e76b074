//! The signaling service lifecycle: open the store, bind the HTTP/WebSocket listener, start the
//! channel role's tasks (the first heartbeat registers the node), bind the metrics listener (so
//! `/healthz` answering there means ready), serve until shutdown, then close every WebSocket
//! with 1001 and leave the node registry.

use crate::config::SignalingConfig;
use crate::io::node::Node;
use crate::metrics::SignalingMetrics;
use registry::{memory::MemoryStore, redis::RedisStore, Store, StoreError};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
pub use turnkey_runtime::drain::Drain;

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The HTTP listener could not be bound.
    #[error("binding HTTP listener {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("binding metrics listener {addr}: {source}")]
    Metrics {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The store could not be opened or the node could not register.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The HTTPS certificate or key could not be loaded.
    #[error("HTTPS certificate: {0}")]
    Tls(#[from] turnkey_tls::TlsError),
}

/// Where the running service listens; handed to the `on_ready` callback.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The HTTP + WebSocket listener, port 0 resolved.
    pub http: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// Base URL clients are told (`--public-url`, or derived from `http`).
    pub public_url: String,
    /// This node's id.
    pub node_id: String,
    /// With HTTPS: the SHA-256 fingerprint of the leaf certificate (colon-separated hex, as
    /// browsers show it).
    pub fingerprint: Option<String>,
}

/// SHA-256 of `der`, as browsers show a certificate fingerprint (`AB:CD:...`).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Opens the store the config asks for: Redis with `--redis`, else in memory.
pub async fn open_store(
    cfg: &SignalingConfig,
) -> Result<(Arc<dyn Store>, DropCounter), StoreError> {
    match &cfg.redis {
        Some(url) => {
            let s = Arc::new(RedisStore::connect(url).await?);
            let c = s.clone();
            Ok((s, Box::new(move || c.dropped_messages())))
        }
        None => {
            let s = Arc::new(MemoryStore::new());
            let c = s.clone();
            Ok((s, Box::new(move || c.dropped_messages())))
        }
    }
}

/// Reads the store's count of bus messages dropped for full subscribers.
pub type DropCounter = Box<dyn Fn() -> u64 + Send + Sync>;

fn base_url(cfg: &SignalingConfig, bound: SocketAddr) -> String {
    if let Some(u) = &cfg.public_url {
        return u.clone();
    }
    let ip = if bound.ip().is_unspecified() {
        match bound.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        bound.ip()
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, bound.port()))
}

/// Runs the service until `shutdown` is cancelled, with the store the config asks for
/// ([`open_store`]). `on_ready` runs once everything is bound and the node is registered.
/// Must be called inside a tokio runtime.
pub async fn serve(
    cfg: SignalingConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    let (store, _) = open_store(&cfg).await?;
    serve_with_store(cfg, store, shutdown, on_ready).await
}

/// Runs the service until `shutdown` is cancelled over an existing `store` (`cfg.redis` is
/// ignored), e.g. one in-memory store shared with an SFU in the same process, which
/// heartbeats into its SFU node registry. Otherwise as [`serve`].
pub async fn serve_with_store(
    cfg: SignalingConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    let drain = Drain::new(Duration::from_secs(cfg.drain_timeout_secs));
    serve_drainable(cfg, store, drain, shutdown, on_ready).await
}

/// [`serve_with_store`] that also stops once `drain` has finished: from its start the node is
/// not ready (`/readyz`), the registry marks it draining (no new room is placed on it), and it
/// serves its connections until none is left or `cfg.drain_timeout_secs` passed.
/// `POST /admin/drain` (with `cfg.admin_token`) starts it too.
pub async fn serve_drainable(
    cfg: SignalingConfig,
    store: Arc<dyn Store>,
    drain: Drain,
    stop: CancellationToken,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            shutdown.cancel();
        });
    }
    tracing::info!(config = %cfg.redacted(), "starting signaling");
    if cfg.dev_key {
        // The key itself goes to stdout once, in the startup banner of the binary
        // ([`dev_key_banner`]); secrets never go to the log.
        tracing::warn!(
            key = %cfg.api_keys.first().map_or("", |k| k.key.as_str()),
            "using a development API key, printed on stdout (not for production: give --api-key)"
        );
    }
    if cfg.turn_secrets.is_empty() && cfg.turn_uris.iter().any(|u| u.starts_with("turn")) {
        tracing::warn!("--turn-uri given without --turn-secret: clients get no TURN credentials");
    }
    // The certificate first: a bad file stops the start before anything listens.
    let cert_store = match &cfg.tls {
        None => None,
        Some(crate::config::Tls::Files { cert, key }) => {
            Some(turnkey_tls::CertStore::open(cert, key)?)
        }
        Some(crate::config::Tls::Pem { cert, key }) => Some(turnkey_tls::CertStore::fixed(
            turnkey_tls::from_pem(cert, key)?,
        )),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let http = listener.local_addr().map_err(|source| RunError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let public_url = base_url(&cfg, http);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = SignalingMetrics::register(&mut registry);
    let metrics_addr = cfg.metrics;
    let mut n = Node::new(
        cfg,
        store,
        metrics.clone(),
        public_url.clone(),
        shutdown.child_token(),
    );
    n.drain = drain.clone();
    let node = Arc::new(n);
    {
        // A drain ends when no connection is left (or at its deadline): then stop.
        let n = node.clone();
        let drained =
            drain.shutdown_when_finished(move || n.load() == 0, Duration::from_millis(250));
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            drained.cancelled().await;
            shutdown.cancel();
        });
    }
    if node.cfg.role.channel() {
        node.start_channel_tasks().await?;
        let node = node.clone();
        let store_drops = node.store.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        let now = store_drops.dropped_messages();
                        if now > last {
                            node.metrics.dropped.get_or_create(&[("reason", "bus_full")]).inc_by(now - last);
                            last = now;
                        }
                    }
                }
            }
        });
    }
    let app = crate::io::http::router(node.clone());
    let server_shutdown = shutdown.clone();
    let fingerprint = cert_store.as_ref().map(|c| fingerprint_sha256(&c.leaf()));
    let server = match cert_store {
        Some(store) => {
            let config = turnkey_tls::server_config(store.clone())?;
            tokio::spawn(turnkey_tls::watch(
                store,
                Duration::from_secs(10),
                shutdown.clone(),
            ));
            let tls = crate::io::tls::TlsListener::new(listener, config, metrics.clone());
            tokio::spawn(async move {
                axum::serve(tls, app)
                    .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(
                // Signaling frames go out in bursts (offer, candidates): without TCP_NODELAY,
                // Nagle plus delayed ACKs add ~40 ms to each burst.
                axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
            .await
        }),
    };
    drain.register(&mut registry);
    let metrics_bound = turnkey_runtime::metrics_http::serve_drainable(
        metrics_addr,
        Arc::new(registry),
        shutdown.clone(),
        drain.clone(),
        node.cfg.admin_token.clone(),
    )
    .await
    .map_err(|source| RunError::Metrics {
        addr: metrics_addr,
        source,
    })?;
    let ready = Ready {
        http,
        metrics: metrics_bound,
        public_url,
        node_id: node.id().to_string(),
        fingerprint,
    };
    tracing::info!(http = %ready.http, metrics = %ready.metrics, url = %ready.public_url, ws = %node.ws_url, node = %ready.node_id, role = ?node.cfg.role, tls_sha256 = ready.fingerprint.as_deref().unwrap_or("-"), "ready");
    on_ready(&ready);
    shutdown.cancelled().await;
    node.shutdown.cancel();
    node.close_all();
    if node.cfg.role.channel() {
        let _ = node
            .timed("remove_node", node.store.remove_node(node.id()))
            .await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tracing::info!("stopped");
    Ok(())
}

/// The startup banner line that shows a generated development API key (`KEY:SECRET`) to the
/// developer, or None when keys were configured. Binaries print it on stdout once; it is never
/// logged.
pub fn dev_key_banner(cfg: &SignalingConfig) -> Option<String> {
    let k = cfg.api_keys.first().filter(|_| cfg.dev_key)?;
    Some(format!(
        "  API key     {}:{}  (generated for this run; pass --api-key to fix one)",
        k.key, k.secret
    ))
}

pub use turnkey_runtime::shutdown::ignore_hangups;

/// Runs the service until SIGTERM or ctrl-c.
pub async fn run_until_signal(
    cfg: SignalingConfig,
    on_ready: impl FnOnce(&Ready),
) -> Result<(), RunError> {
    // The first SIGTERM or ctrl-c drains the node (a second one exits at once).
    let drain = Drain::new(Duration::from_secs(cfg.drain_timeout_secs));
    drain.start_on_signal();
    ignore_hangups("signaling");
    let (store, _) = open_store(&cfg).await?;
    serve_drainable(cfg, store, drain, CancellationToken::new(), on_ready).await
}
