//! State shared by all workers' TURN cores: live relayed transport addresses, allocation
//! quotas, unredeemed EVEN-PORT reservations (RFC 8656 §7.2), the live bandwidth caps with
//! the per-user and total buckets (`bandwidth.rs`; the only part touched per relayed packet,
//! and only while such a cap is set), and the peer TCP connections of TCP allocations (RFC
//! 6062), which a ConnectionBind on any worker may claim.

use super::bandwidth::{Direction, StreamLimits};
use super::CoreConfig;
use crate::stats::{BandwidthScope, QuotaScope};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// State shared by all workers; touched on control messages only (and, while a user or total
/// bandwidth cap is set, by the capped datagrams).
#[derive(Debug, Default)]
pub struct Shared {
    /// Live relayed transport addresses (local and advertised), each with the number of
    /// allocations using it (more than one for a multiplexed address).
    live_relays: RwLock<HashMap<SocketAddr, u32>>,
    quotas: Mutex<Quotas>,
    reservations: Mutex<HashMap<[u8; 8], Reservation>>,
    /// Quota units held: allocations plus unredeemed reservations.
    pub(super) total: AtomicU32,
    pub(super) allocations: AtomicU32,
    draining: AtomicBool,
    /// The last allocation id handed out (ids are unique across workers).
    last_allocation_id: AtomicU64,
    /// The live bandwidth caps and the per-user and total buckets.
    pub(super) bandwidth: super::bandwidth::SharedBandwidth,
    /// Peer TCP connections of TCP allocations (RFC 6062), by CONNECTION-ID.
    peer_conns: Mutex<PeerConnections>,
}

/// Bytes relayed over the data connections of one TCP allocation (RFC 6062), counted by the
/// I/O layer as it copies them (on whichever worker holds the client data connection) and
/// read into the allocation's accounting ([`super::AllocationInfo`]). A "packet" here is one
/// read from a stream.
///
/// It also carries the bandwidth caps the data connections pass
/// ([`pace`](StreamTraffic::pace)), set by the core that owns the allocation.
#[derive(Debug, Default)]
pub struct StreamTraffic {
    to_peer_packets: AtomicU64,
    to_peer_bytes: AtomicU64,
    from_peer_packets: AtomicU64,
    from_peer_bytes: AtomicU64,
    limits: Mutex<Option<Arc<StreamLimits>>>,
}

impl StreamTraffic {
    /// Admits `len` bytes just read from one side of a data connection going `dir` under the
    /// allocation's bandwidth caps, or says which cap holds them back and how long to wait
    /// before asking again (at most [`MAX_STREAM_WAIT`](super::MAX_STREAM_WAIT)). Nothing is taken on refusal. Always
    /// admits while no cap applies.
    pub fn pace(
        &self,
        dir: Direction,
        len: usize,
        now: Instant,
    ) -> Result<(), (BandwidthScope, Duration)> {
        match self.limits() {
            Some(l) => l.admit(dir, len, now),
            None => Ok(()),
        }
    }

    pub(super) fn limits(&self) -> Option<Arc<StreamLimits>> {
        self.limits.lock().ok().and_then(|l| l.clone())
    }

    pub(super) fn set_limits(&self, limits: Option<Arc<StreamLimits>>) {
        if let Ok(mut l) = self.limits.lock() {
            *l = limits;
        }
    }

    /// Counts `bytes` read from the client data connection and written to the peer.
    pub fn count_to_peer(&self, bytes: usize) {
        self.to_peer_packets.fetch_add(1, Ordering::Relaxed);
        self.to_peer_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    /// Counts `bytes` read from the peer and written to the client data connection.
    pub fn count_from_peer(&self, bytes: usize) {
        self.from_peer_packets.fetch_add(1, Ordering::Relaxed);
        self.from_peer_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
    /// (reads, bytes) client -> peer.
    pub fn to_peer(&self) -> (u64, u64) {
        (
            self.to_peer_packets.load(Ordering::Relaxed),
            self.to_peer_bytes.load(Ordering::Relaxed),
        )
    }
    /// (reads, bytes) peer -> client.
    pub fn from_peer(&self) -> (u64, u64) {
        (
            self.from_peer_packets.load(Ordering::Relaxed),
            self.from_peer_bytes.load(Ordering::Relaxed),
        )
    }
}

/// Where a peer TCP connection is (RFC 6062 §5.2-5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PeerConnState {
    /// Connect: the server is connecting to the peer.
    Connecting,
    /// Connected (either way), waiting for the client's ConnectionBind.
    Pending,
    /// Joined to a client data connection.
    Bound,
}

/// One peer TCP connection.
#[derive(Debug)]
pub(super) struct PeerConn {
    pub(super) allocation: u64,
    pub(super) user: String,
    pub(super) peer: SocketAddr,
    pub(super) state: PeerConnState,
    pub(super) traffic: Arc<StreamTraffic>,
}

#[derive(Debug, Default)]
struct PeerConnections {
    by_id: HashMap<u32, PeerConn>,
    last_id: u32,
}

/// Why a peer TCP connection could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpenRefused {
    /// The allocation has a connection to (or is connecting to) this peer (446).
    Duplicate,
    /// Over the per-allocation or server-wide cap.
    Limit,
}

/// Why a ConnectionBind found nothing to bind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BindRefused {
    /// No connection waiting for a bind under this id (unknown, expired, connecting or bound).
    Unknown,
    /// The connection belongs to another user's allocation.
    WrongUser,
}

/// Who holds a quota unit: an allocation or an unredeemed reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Holder {
    pub(super) user: String,
    pub(super) ip: IpAddr,
}

#[derive(Debug, Default)]
struct Quotas {
    per_user: HashMap<String, u32>,
    per_ip: HashMap<IpAddr, u32>,
}

/// An EVEN-PORT reservation (RFC 8656 §7.2) waiting to be redeemed by its token.
#[derive(Debug)]
pub(super) struct Reservation {
    pub(super) holder: Holder,
    pub(super) expires: Instant,
}

impl Shared {
    /// Stops new allocations (a drain, or the admin API); existing ones keep working. New
    /// Allocates get 300 Try Alternate when alternate servers are configured, else 508 (RFC
    /// 8656 §7.2). Read on the Allocate path only (one relaxed load), never per relayed packet.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// Accepts new allocations again.
    pub fn stop_draining(&self) {
        self.draining.store(false, Ordering::Relaxed);
    }
    /// True while draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
    /// A new allocation id, unique across the workers sharing this state (never 0).
    pub(super) fn next_allocation_id(&self) -> u64 {
        self.last_allocation_id.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Live allocations across all workers.
    pub fn total_allocations(&self) -> u32 {
        self.allocations.load(Ordering::Relaxed)
    }
    /// True when `addr` is a live relayed transport address (local or advertised).
    pub fn is_live_relay(&self, addr: SocketAddr) -> bool {
        self.live_relays
            .read()
            .map(|s| s.contains_key(&addr))
            .unwrap_or(false)
    }
    pub(super) fn add_relays(&self, addrs: &[SocketAddr]) {
        if let Ok(mut s) = self.live_relays.write() {
            for a in addrs {
                *s.entry(*a).or_insert(0) += 1;
            }
        }
    }
    pub(super) fn remove_relays(&self, addrs: &[SocketAddr]) {
        if let Ok(mut s) = self.live_relays.write() {
            for a in addrs {
                if let Some(n) = s.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        s.remove(a);
                    }
                }
            }
        }
    }
    /// Unredeemed EVEN-PORT reservations across all workers.
    pub fn reservation_count(&self) -> usize {
        self.reservations.lock().map(|r| r.len()).unwrap_or(0)
    }
    /// Reserves one unit of every quota for `h`.
    pub(super) fn take_quota(&self, h: &Holder, cfg: &CoreConfig) -> Result<(), QuotaScope> {
        let Ok(mut q) = self.quotas.lock() else {
            return Err(QuotaScope::Total);
        };
        if self.draining.load(Ordering::Relaxed) {
            return Err(QuotaScope::Draining);
        }
        if self.total.load(Ordering::Relaxed) >= cfg.total_quota {
            return Err(QuotaScope::Total);
        }
        if q.per_user.get(&h.user).copied().unwrap_or(0) >= cfg.user_quota {
            return Err(QuotaScope::User);
        }
        if q.per_ip.get(&h.ip).copied().unwrap_or(0) >= cfg.ip_quota {
            return Err(QuotaScope::Ip);
        }
        *q.per_user.entry(h.user.clone()).or_insert(0) += 1;
        *q.per_ip.entry(h.ip).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    pub(super) fn return_quota(&self, h: &Holder) {
        if let Ok(mut q) = self.quotas.lock() {
            if let Some(n) = q.per_user.get_mut(&h.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.per_user.remove(&h.user);
                }
            }
            if let Some(n) = q.per_ip.get_mut(&h.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.per_ip.remove(&h.ip);
                }
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
    /// Registers a peer TCP connection of allocation `allocation` and returns its
    /// CONNECTION-ID (unique among the live ones, never 0). At most one per (allocation, peer)
    /// (446), `per_allocation` per allocation and `total` in all.
    pub(super) fn open_peer_connection(
        &self,
        conn: PeerConn,
        per_allocation: usize,
        total: usize,
    ) -> Result<u32, OpenRefused> {
        let Ok(mut t) = self.peer_conns.lock() else {
            return Err(OpenRefused::Limit);
        };
        let mut mine = 0;
        for c in t.by_id.values().filter(|c| c.allocation == conn.allocation) {
            if c.peer == conn.peer {
                return Err(OpenRefused::Duplicate);
            }
            mine += 1;
        }
        if mine >= per_allocation || t.by_id.len() >= total {
            return Err(OpenRefused::Limit);
        }
        loop {
            t.last_id = t.last_id.wrapping_add(1);
            let id = t.last_id;
            if id != 0 && !t.by_id.contains_key(&id) {
                t.by_id.insert(id, conn);
                return Ok(id);
            }
        }
    }
    /// Moves connection `id` from `from` to `to`; false when it is not in `from`.
    pub(super) fn advance_peer_connection(
        &self,
        id: u32,
        from: PeerConnState,
        to: PeerConnState,
    ) -> bool {
        let Ok(mut t) = self.peer_conns.lock() else {
            return false;
        };
        match t.by_id.get_mut(&id) {
            Some(c) if c.state == from => {
                c.state = to;
                true
            }
            _ => false,
        }
    }
    /// ConnectionBind (RFC 6062 §5.4): claims connection `id`, waiting for a bind, for `user`.
    pub(super) fn bind_peer_connection(
        &self,
        id: u32,
        user: &str,
    ) -> Result<Arc<StreamTraffic>, BindRefused> {
        let Ok(mut t) = self.peer_conns.lock() else {
            return Err(BindRefused::Unknown);
        };
        match t.by_id.get_mut(&id) {
            Some(c) if c.state == PeerConnState::Pending => {
                if c.user != user {
                    return Err(BindRefused::WrongUser);
                }
                c.state = PeerConnState::Bound;
                Ok(c.traffic.clone())
            }
            _ => Err(BindRefused::Unknown),
        }
    }
    /// The bytes relayed over connection `id`'s allocation's data connections.
    pub(super) fn peer_connection_traffic(&self, id: u32) -> Option<Arc<StreamTraffic>> {
        self.peer_conns
            .lock()
            .ok()
            .and_then(|t| t.by_id.get(&id).map(|c| c.traffic.clone()))
    }
    /// Removes connection `id` if it is in `state` (the bind deadline must not remove a
    /// connection another worker has just bound).
    pub(super) fn remove_peer_connection_in(
        &self,
        id: u32,
        state: PeerConnState,
    ) -> Option<PeerConn> {
        let mut t = self.peer_conns.lock().ok()?;
        if t.by_id.get(&id).is_some_and(|c| c.state == state) {
            t.by_id.remove(&id)
        } else {
            None
        }
    }
    /// Removes connection `id`.
    pub(super) fn remove_peer_connection(&self, id: u32) -> Option<PeerConn> {
        self.peer_conns.lock().ok()?.by_id.remove(&id)
    }
    /// Removes every connection of `allocation`, returning their ids.
    pub(super) fn remove_allocation_connections(&self, allocation: u64) -> Vec<u32> {
        let Ok(mut t) = self.peer_conns.lock() else {
            return Vec::new();
        };
        let ids: Vec<u32> = t
            .by_id
            .iter()
            .filter(|(_, c)| c.allocation == allocation)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            t.by_id.remove(id);
        }
        ids
    }
    /// Peer TCP connections across all workers (connecting, waiting for a bind, or bound).
    pub fn peer_connection_count(&self) -> usize {
        self.peer_conns.lock().map(|t| t.by_id.len()).unwrap_or(0)
    }
    pub(super) fn add_reservation(&self, token: [u8; 8], r: Reservation) {
        if let Ok(mut m) = self.reservations.lock() {
            m.insert(token, r);
        }
    }
    /// Removes the reservation under `token` when `due` says so (always, or only once expired).
    pub(super) fn take_reservation(
        &self,
        token: &[u8; 8],
        expired_at: Option<Instant>,
    ) -> Option<Reservation> {
        let mut m = self.reservations.lock().ok()?;
        match expired_at {
            Some(now) if m.get(token).is_some_and(|r| r.expires > now) => None,
            _ => m.remove(token),
        }
    }
}
