//! `turn-bench idle`: the memory an idle allocation costs a server. Holds N allocations, each
//! with a permission and a channel bound to a peer (what a WebRTC client keeps while it has
//! nothing to send), made from clients spread over several loopback source addresses (a
//! server bounds unauthenticated state per source IP, so one address cannot set up many
//! thousands), then reads the server's RSS (/proc/PID/status) and prints it per allocation.
//! Nothing is relayed; no timed assertion is made.

use crate::client::{Allocation, ClientError};
use crate::net::{self, ServerSocket};
use crate::proto::{Credentials, Request};
use bench_support::procfs::read_process_rss_bytes;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

/// What to hold.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    /// The server's UDP listener.
    pub server: SocketAddr,
    pub credentials: Credentials,
    /// Allocations to hold.
    pub allocations: usize,
    /// Client source addresses, used in turn.
    pub sources: Vec<IpAddr>,
    /// Allocations being set up at once.
    pub concurrency: usize,
    /// The peer every allocation gets a permission and channel 0x4000 for.
    pub peer: SocketAddr,
    /// Seconds to hold them once set up, before measuring (let the server settle).
    pub settle: Duration,
    /// The server process, for its RSS.
    pub server_pid: Option<u32>,
}

/// What was measured.
#[derive(Debug)]
pub struct IdleReport {
    pub allocations: usize,
    pub failed: usize,
    pub setup_secs: f64,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
}

impl IdleReport {
    /// Server RSS growth per held allocation, bytes.
    pub fn bytes_per_allocation(&self) -> Option<f64> {
        let (b, a) = (self.rss_before_bytes?, self.rss_after_bytes?);
        (self.allocations > 0).then(|| (a as f64 - b as f64) / self.allocations as f64)
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "allocations": self.allocations,
            "failed": self.failed,
            "setup_secs": self.setup_secs,
            "rss_before_bytes": self.rss_before_bytes,
            "rss_after_bytes": self.rss_after_bytes,
            "bytes_per_allocation": self.bytes_per_allocation(),
        })
        .to_string()
    }
}

impl std::fmt::Display for IdleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} allocations held ({} failed), set up in {:.1} s",
            self.allocations, self.failed, self.setup_secs
        )?;
        match (
            self.rss_before_bytes,
            self.rss_after_bytes,
            self.bytes_per_allocation(),
        ) {
            (Some(b), Some(a), Some(per)) => write!(
                f,
                "server RSS {} KiB -> {} KiB: {:.2} KiB per allocation",
                b / 1024,
                a / 1024,
                per / 1024.0
            ),
            _ => write!(f, "server RSS not read (give --server-pid)"),
        }
    }
}

/// A connected UDP socket from `source` (any port) to `server`.
fn socket_from(source: IpAddr, server: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(
        Domain::for_address(server),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::new(source, 0).into())?;
    s.connect(&server.into())?;
    Ok(s.into())
}

/// One held allocation: its client, and what stops its reader.
struct Held {
    _alloc: Allocation,
    cancel: CancellationToken,
}

async fn set_up(
    cfg: &IdleConfig,
    index: usize,
    credentials: Arc<Credentials>,
) -> Result<Held, ClientError> {
    let source = cfg.sources[index % cfg.sources.len()];
    let socket = Arc::new(ServerSocket::Udp(socket_from(source, cfg.server)?));
    let (tx, rx) = mpsc::channel(Allocation::RESPONSE_QUEUE);
    let cancel = CancellationToken::new();
    tokio::spawn(net::forward_stun(socket.clone(), tx, cancel.clone()));
    let mut alloc = Allocation::new(index, socket, rx, credentials);
    let held = async {
        alloc.allocate(None).await?;
        alloc
            .transact(&Request::CreatePermission { peer: cfg.peer })
            .await?;
        alloc
            .transact(&Request::ChannelBind {
                channel: 0x4000,
                peer: cfg.peer,
            })
            .await?;
        Ok(())
    }
    .await;
    match held {
        Ok(()) => Ok(Held {
            _alloc: alloc,
            cancel,
        }),
        Err(e) => {
            cancel.cancel();
            Err(e)
        }
    }
}

/// Sets up the allocations, waits `settle`, reads the server's RSS, then lets them go (the
/// sockets close; the server frees the allocations when they expire).
pub async fn run(cfg: IdleConfig) -> IdleReport {
    let pid = cfg.server_pid.map(|p| p.to_string());
    let rss = || pid.as_deref().and_then(read_process_rss_bytes);
    let rss_before_bytes = rss();
    let started = Instant::now();
    let cfg = Arc::new(cfg);
    let credentials = Arc::new(cfg.credentials.clone());
    let gate = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..cfg.allocations {
        let (cfg, credentials, gate) = (cfg.clone(), credentials.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            set_up(&cfg, index, credentials).await
        });
    }
    let mut held = Vec::with_capacity(cfg.allocations);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(h)) => held.push(h),
            _ => failed += 1,
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.settle).await;
    let rss_after_bytes = rss();
    let allocations = held.len();
    for h in held {
        h.cancel.cancel();
    }
    IdleReport {
        allocations,
        failed,
        setup_secs,
        rss_before_bytes,
        rss_after_bytes,
    }
}

/// `count` loopback source addresses from `first` on (127.x.y.z, stepping the last octets).
pub fn loopback_sources(first: std::net::Ipv4Addr, count: usize) -> Vec<IpAddr> {
    let base = u32::from(first);
    (0..count as u32)
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(base.wrapping_add(i))))
        .filter(|ip| ip.is_loopback())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_step_through_loopback_only() {
        let s = loopback_sources("127.0.1.250".parse().unwrap(), 10);
        assert_eq!(s.len(), 10);
        assert_eq!(s[0], "127.0.1.250".parse::<IpAddr>().unwrap());
        assert_eq!(s[9], "127.0.2.3".parse::<IpAddr>().unwrap());
        // Never past 127.255.255.255.
        assert_eq!(
            loopback_sources("127.255.255.254".parse().unwrap(), 5).len(),
            2
        );
    }

    #[test]
    fn report_divides_growth_by_allocations() {
        let r = IdleReport {
            allocations: 4,
            failed: 0,
            setup_secs: 1.0,
            rss_before_bytes: Some(1000),
            rss_after_bytes: Some(9192),
        };
        assert_eq!(r.bytes_per_allocation(), Some(2048.0));
        assert!(r.to_string().contains("2.00 KiB per allocation"));
        let none = IdleReport {
            rss_after_bytes: None,
            ..r
        };
        assert_eq!(none.bytes_per_allocation(), None);
    }
}
