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
    /// The peer every allocation gets a permission and channel 0x4000 for (the first one with
    /// `distinct_peers`).
    pub peer: SocketAddr,
    /// Each allocation gets its own peer endpoint ([`peer_for`]).
    pub distinct_peers: bool,
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
    let peer = if cfg.distinct_peers {
        peer_for(cfg.peer, index)
    } else {
        cfg.peer
    };
    let held = async {
        alloc.allocate(None).await?;
        alloc.transact(&Request::CreatePermission { peer }).await?;
        alloc
            .transact(&Request::ChannelBind {
                channel: 0x4000,
                peer,
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
    let mut first_error: Option<String> = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(h)) => held.push(h),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e}: {e:?}"));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    // For a script running several generators at once: all of them hold theirs from here.
    eprintln!(
        "held {} allocations ({failed} failed) in {setup_secs:.1} s",
        held.len()
    );
    if let Some(e) = first_error {
        eprintln!("first failure: {e}");
    }
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

/// Allocation `index`'s own peer endpoint: ports 1024-65023 of `first`'s address (from
/// `first`'s port), then of the next IPv4 addresses. IPv6 peers keep `first`'s address.
pub fn peer_for(first: SocketAddr, index: usize) -> SocketAddr {
    const PORTS: usize = 64_000;
    let from = (first.port() as usize).clamp(1024, 1024 + PORTS - 1) - 1024;
    let slot = from + index;
    let port = 1024 + (slot % PORTS) as u16;
    match first.ip() {
        IpAddr::V4(v4) => {
            let ip = std::net::Ipv4Addr::from(u32::from(v4).wrapping_add((slot / PORTS) as u32));
            SocketAddr::new(IpAddr::V4(ip), port)
        }
        v6 => SocketAddr::new(v6, port),
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
    fn distinct_peers_are_distinct_and_above_1023() {
        let first: SocketAddr = "127.0.9.1:1024".parse().unwrap();
        let peers: std::collections::HashSet<SocketAddr> =
            (0..150_000).map(|i| peer_for(first, i)).collect();
        assert_eq!(peers.len(), 150_000);
        assert!(peers.iter().all(|p| p.port() >= 1024));
        let next: SocketAddr = "127.0.9.2:1024".parse().unwrap();
        assert_eq!(peer_for(first, 64_000), next);
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
