//! State shared by all workers' TURN cores: live relayed transport addresses, allocation
//! quotas, unredeemed EVEN-PORT reservations (RFC 8656 §7.2), and the live bandwidth caps with
//! the per-user and total buckets (`bandwidth.rs`; the only part touched per relayed packet,
//! and only while such a cap is set).

use super::CoreConfig;
use crate::stats::QuotaScope;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

/// State shared by all workers; touched on control messages only (and, while a user or total
/// bandwidth cap is set, by the capped datagrams).
#[derive(Debug, Default)]
pub struct Shared {
    live_relays: RwLock<HashSet<SocketAddr>>,
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
    /// Stops new allocations (graceful shutdown, or the admin API); existing ones keep
    /// working. New Allocates get 300 Try Alternate when alternate servers are configured,
    /// else 508.
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
            .map(|s| s.contains(&addr))
            .unwrap_or(false)
    }
    pub(super) fn add_relays(&self, addrs: &[SocketAddr]) {
        if let Ok(mut s) = self.live_relays.write() {
            s.extend(addrs.iter().copied());
        }
    }
    pub(super) fn remove_relays(&self, addrs: &[SocketAddr]) {
        if let Ok(mut s) = self.live_relays.write() {
            for a in addrs {
                s.remove(a);
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
        if self.draining.load(Ordering::Relaxed)
            || self.total.load(Ordering::Relaxed) >= cfg.total_quota
        {
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
