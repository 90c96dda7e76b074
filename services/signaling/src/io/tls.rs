//! HTTPS and WSS on the signaling listener: a rustls acceptor in front of axum, over
//! turn-server's certificate store (TLS 1.3 and 1.2, the ring provider; files reloaded when
//! they change or on SIGHUP). Browsers need a secure context (https) for the camera on any
//! origin but localhost, so a demo across a LAN needs this.

use crate::metrics::SignalingMetrics;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Handshakes in progress at most; beyond, new connections wait in the kernel's backlog.
pub const MAX_HANDSHAKES: usize = 256;
/// A handshake not finished by then is dropped (and counted).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and hands axum those whose TLS handshake completed. Handshakes run
/// concurrently (a slow client does not hold up the others), bounded by [`MAX_HANDSHAKES`].
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    pending: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
    metrics: SignalingMetrics,
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`.
    pub fn new(
        tcp: TcpListener,
        config: std::sync::Arc<rustls::ServerConfig>,
        metrics: SignalingMetrics,
    ) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            pending: JoinSet::new(),
            metrics,
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                Some(done) = self.pending.join_next(), if !self.pending.is_empty() => {
                    match done {
                        Ok(Some(conn)) => return conn,
                        _ => self.metrics.tls_handshake_failures.inc(),
                    };
                }
                r = self.tcp.accept(), if self.pending.len() < MAX_HANDSHAKES => match r {
                    Ok((tcp, addr)) => {
                        // Signaling frames go out in bursts: no Nagle delay.
                        let _ = tcp.set_nodelay(true);
                        let acceptor = self.acceptor.clone();
                        self.pending.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(s)) => Some((s, addr)),
                                _ => None,
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
