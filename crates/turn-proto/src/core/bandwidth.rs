//! Bandwidth caps (issue 12 item 4): token buckets in bytes of relayed application payload
//! (the DATA of Send/Data indications, the payload of ChannelData; no STUN, ChannelData, UDP or
//! IP framing), per allocation, per user and in total, each direction on its own (client ->
//! peer and peer -> client, as coturn's `max-bps` treats input and output separately). A
//! datagram over a cap is dropped and counted (`DropReason::Bandwidth*`).
//!
//! Where the caps live: [`CoreConfig::bandwidth`](super::CoreConfig::bandwidth) holds the
//! configured ones; [`Shared`](super::Shared) holds the live server-wide caps (set from the
//! configuration when the first core starts, changed by the admin API with
//! [`Shared::set_bandwidth_caps`](super::Shared::set_bandwidth_caps) and by a configuration
//! reload through [`TurnCore::set_config`]), a generation number bumped on every change, and the
//! buckets shared by the workers (one pair in total, one pair per user while the user has a
//! capped allocation). Each core compares the generation with the one it last applied at the
//! start of every call and rebuilds its allocations' buckets when it moved.
//!
//! TCP allocations (RFC 6062) carry their payload over client data connections, spliced by the
//! I/O layer on whichever worker accepted them, and a stream cannot drop bytes: their reads are
//! paced instead. The owning core publishes the allocation's buckets into its
//! [`StreamTraffic`] (its own pair shared by all its data connections, and the user and total
//! pairs); a read of `len` bytes waits ([`StreamTraffic::pace`]) until every bucket of its
//! direction admits it, so TCP flow control slows the sender down to the cap.
//!
//! Hot path: an allocation with no cap of any scope has no limiter (`None`), so a relayed
//! datagram costs one branch on that `Option` plus one relaxed atomic load (the generation)
//! per call; nothing is locked and no clock is read.

use super::shared::StreamTraffic;
use super::{AllocationInfo, Shared, TurnCore};
use crate::stats::{BandwidthScope, DropReason};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turnkey_time::rate::ByteBucket;

/// Default bucket depth, milliseconds of the cap's rate.
pub const DEFAULT_BURST_MS: u64 = 200;
/// Deepest bucket allowed, milliseconds of the cap's rate.
pub const MAX_BURST_MS: u64 = 10_000;

/// Server-wide bandwidth caps in bits per second of relayed application payload, each applying
/// to each direction separately; 0 is no cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BandwidthCaps {
    /// Per allocation (an allocation may have its own, see
    /// [`TurnCore::set_allocation_bandwidth`]).
    pub allocation_bps: u64,
    /// Per user, shared by all the user's allocations on every worker.
    pub user_bps: u64,
    /// All allocations together.
    pub total_bps: u64,
    /// Bucket depth: what a cap lets through at once, in milliseconds of its rate (1 to
    /// [`MAX_BURST_MS`]). A datagram larger than the depth still passes when the bucket is full
    /// ([`ByteBucket`]), so no datagram is refused for ever.
    pub burst_ms: u64,
}

impl Default for BandwidthCaps {
    fn default() -> Self {
        Self {
            allocation_bps: 0,
            user_bps: 0,
            total_bps: 0,
            burst_ms: DEFAULT_BURST_MS,
        }
    }
}

/// Why bandwidth caps were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BandwidthError {
    /// `burst_ms` is 0 or above [`MAX_BURST_MS`].
    #[error("burst_ms must be between 1 and {MAX_BURST_MS}")]
    BurstMs,
}

impl BandwidthCaps {
    /// Checks the values an operator may set.
    pub fn validate(&self) -> Result<(), BandwidthError> {
        if (1..=MAX_BURST_MS).contains(&self.burst_ms) {
            Ok(())
        } else {
            Err(BandwidthError::BurstMs)
        }
    }

    /// The cap of `scope`, bits per second (0: none).
    pub fn bps(&self, scope: BandwidthScope) -> u64 {
        match scope {
            BandwidthScope::Allocation => self.allocation_bps,
            BandwidthScope::User => self.user_bps,
            BandwidthScope::Total => self.total_bps,
        }
    }
}

/// Bytes a second and bucket depth in bytes for `bps` with a depth of `burst_ms`.
fn bucket_params(bps: u64, burst_ms: u64) -> (u64, u64) {
    let rate = bps / 8;
    let burst = (u128::from(rate) * u128::from(burst_ms) / 1000).min(u128::from(u64::MAX)) as u64;
    (rate, burst)
}

fn new_bucket(bps: u64, burst_ms: u64, now: Instant) -> ByteBucket {
    let (rate, burst) = bucket_params(bps, burst_ms);
    ByteBucket::new(rate, burst, now)
}

/// Which way payload is relayed; each has its own buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client -> peer.
    ToPeer = 0,
    /// Peer -> client.
    FromPeer = 1,
}

/// One bucket per direction, shared by the workers.
#[derive(Debug)]
pub(super) struct SharedBuckets {
    dirs: [Mutex<ByteBucket>; 2],
}

impl SharedBuckets {
    fn new(bps: u64, burst_ms: u64, now: Instant) -> Self {
        let b = new_bucket(bps, burst_ms, now);
        Self {
            dirs: [Mutex::new(b), Mutex::new(b)],
        }
    }
    fn set_rate(&self, bps: u64, burst_ms: u64, now: Instant) {
        let (rate, burst) = bucket_params(bps, burst_ms);
        for d in &self.dirs {
            if let Ok(mut b) = d.lock() {
                b.set_rate(rate, burst, now);
            }
        }
    }
    fn try_take(&self, dir: Direction, len: u64, now: Instant) -> bool {
        self.dirs[dir as usize]
            .lock()
            .map(|mut b| b.try_take(len, now))
            .unwrap_or(true)
    }
    fn refund(&self, dir: Direction, len: u64) {
        if let Ok(mut b) = self.dirs[dir as usize].lock() {
            b.refund(len);
        }
    }
    /// Takes `len` bytes, or says how long until it could (at most `max`).
    fn take_or_wait(
        &self,
        dir: Direction,
        len: u64,
        now: Instant,
        max: Duration,
    ) -> Result<(), Duration> {
        let Ok(mut b) = self.dirs[dir as usize].lock() else {
            return Ok(());
        };
        if b.try_take(len, now) {
            Ok(())
        } else {
            Err(b.time_until(len, now, max))
        }
    }
}

/// The buckets a TCP allocation's data connections pass (RFC 6062): shared by all of them, on
/// any worker, and replaced by the owning core when the caps change.
#[derive(Debug)]
pub(super) struct StreamLimits {
    own: Option<Arc<SharedBuckets>>,
    user: Option<Arc<SharedBuckets>>,
    total: Option<Arc<SharedBuckets>>,
}

/// Longest single wait of a paced stream read: a cap raised (or lifted) meanwhile takes effect
/// within this.
pub const MAX_STREAM_WAIT: Duration = Duration::from_millis(250);

impl StreamLimits {
    /// Takes `len` bytes from every bucket of `dir`, or none of them: the first scope that
    /// cannot admit them now, and how long until it could.
    pub(super) fn admit(
        &self,
        dir: Direction,
        len: usize,
        now: Instant,
    ) -> Result<(), (BandwidthScope, Duration)> {
        let len = len as u64;
        let scopes = [
            (BandwidthScope::Allocation, &self.own),
            (BandwidthScope::User, &self.user),
            (BandwidthScope::Total, &self.total),
        ];
        for (i, (scope, buckets)) in scopes.iter().enumerate() {
            let Some(b) = buckets else { continue };
            if let Err(wait) = b.take_or_wait(dir, len, now, MAX_STREAM_WAIT) {
                for (_, taken) in &scopes[..i] {
                    if let Some(t) = taken {
                        t.refund(dir, len);
                    }
                }
                return Err((*scope, wait));
            }
        }
        Ok(())
    }
}

/// The live server-wide caps and the buckets shared by the workers (part of [`Shared`]).
#[derive(Debug, Default)]
pub(super) struct SharedBandwidth {
    /// `None` until the first core sets it from its configuration.
    caps: Mutex<Option<BandwidthCaps>>,
    /// Bumped on every change of `caps`.
    generation: AtomicU64,
    /// The total buckets while a total cap is set.
    total: Mutex<Option<Arc<SharedBuckets>>>,
    /// One pair per user that has an allocation holding it (only while a user cap is set),
    /// with the number of allocations holding it: bounded by the live allocations. (Counted, not
    /// read off the `Arc`: TCP allocations' data connections hold clones too.)
    users: Mutex<HashMap<String, (Arc<SharedBuckets>, usize)>>,
}

impl SharedBandwidth {
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn caps(&self) -> BandwidthCaps {
        self.caps.lock().ok().and_then(|c| *c).unwrap_or_default()
    }

    /// Sets the caps unless they are set already (the first core's configuration).
    fn init(&self, caps: BandwidthCaps, now: Instant) {
        let unset = self.caps.lock().map(|c| c.is_none()).unwrap_or(false);
        if unset {
            let _ = self.set(caps, now);
        }
    }

    /// Sets the caps; `Ok(true)` when they changed.
    fn set(&self, caps: BandwidthCaps, now: Instant) -> Result<bool, BandwidthError> {
        caps.validate()?;
        let Ok(mut current) = self.caps.lock() else {
            return Ok(false);
        };
        if *current == Some(caps) {
            return Ok(false);
        }
        if let Ok(mut total) = self.total.lock() {
            *total = match (total.take(), caps.total_bps) {
                (_, 0) => None,
                (Some(t), bps) => {
                    t.set_rate(bps, caps.burst_ms, now);
                    Some(t)
                }
                (None, bps) => Some(Arc::new(SharedBuckets::new(bps, caps.burst_ms, now))),
            };
        }
        if caps.user_bps > 0 {
            if let Ok(users) = self.users.lock() {
                for (b, _) in users.values() {
                    b.set_rate(caps.user_bps, caps.burst_ms, now);
                }
            }
        }
        *current = Some(caps);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    fn total(&self) -> Option<Arc<SharedBuckets>> {
        self.total.lock().ok().and_then(|t| t.clone())
    }

    fn acquire_user(&self, user: &str, caps: &BandwidthCaps, now: Instant) -> Arc<SharedBuckets> {
        match self.users.lock() {
            Ok(mut users) => {
                let (b, holders) = users.entry(user.to_string()).or_insert_with(|| {
                    (
                        Arc::new(SharedBuckets::new(caps.user_bps, caps.burst_ms, now)),
                        0,
                    )
                });
                *holders += 1;
                b.clone()
            }
            Err(_) => Arc::new(SharedBuckets::new(caps.user_bps, caps.burst_ms, now)),
        }
    }

    /// Drops one allocation's hold on `user`'s buckets; the entry goes with the last one.
    fn release_user(&self, user: &str, held: Arc<SharedBuckets>) {
        drop(held);
        if let Ok(mut users) = self.users.lock() {
            if let Some((_, holders)) = users.get_mut(user) {
                *holders = holders.saturating_sub(1);
                if *holders == 0 {
                    users.remove(user);
                }
            }
        }
    }

    fn user_entries(&self) -> usize {
        self.users.lock().map(|u| u.len()).unwrap_or(0)
    }
}

impl Shared {
    /// The live server-wide bandwidth caps.
    pub fn bandwidth_caps(&self) -> BandwidthCaps {
        self.bandwidth.caps()
    }

    /// Changes the server-wide bandwidth caps from `now` on, for existing allocations too (each
    /// core applies them at its next call); an allocation with its own cap keeps it. Shared
    /// buckets keep what they hold, up to the new depth. Nothing changes on error.
    pub fn set_bandwidth_caps(
        &self,
        caps: BandwidthCaps,
        now: Instant,
    ) -> Result<(), BandwidthError> {
        self.bandwidth.set(caps, now).map(|_| ())
    }

    /// Users that have per-user buckets now (at most the users with live allocations).
    pub fn bandwidth_user_entries(&self) -> usize {
        self.bandwidth.user_entries()
    }
}

/// The buckets one allocation's datagrams pass; exists only while some cap applies to it.
#[derive(Debug)]
pub(super) struct AllocLimits {
    /// The allocation's own buckets, while it has a cap (its own or the server-wide one).
    own: Option<[ByteBucket; 2]>,
    user: Option<Arc<SharedBuckets>>,
    total: Option<Arc<SharedBuckets>>,
}

impl AllocLimits {
    /// Takes `len` bytes from every bucket of `dir`, or none of them: the first scope over its
    /// cap is the drop reason.
    pub(super) fn admit(
        &mut self,
        dir: Direction,
        len: usize,
        now: Instant,
    ) -> Result<(), DropReason> {
        let len = len as u64;
        let own = self.own.as_mut().map(|b| &mut b[dir as usize]);
        let mut took_own = None;
        if let Some(b) = own {
            if !b.try_take(len, now) {
                return Err(DropReason::BandwidthAllocation);
            }
            took_own = Some(b);
        }
        if let Some(u) = &self.user {
            if !u.try_take(dir, len, now) {
                if let Some(b) = took_own {
                    b.refund(len);
                }
                return Err(DropReason::BandwidthUser);
            }
        }
        if let Some(t) = &self.total {
            if !t.try_take(dir, len, now) {
                if let Some(b) = took_own {
                    b.refund(len);
                }
                if let Some(u) = &self.user {
                    u.refund(dir, len);
                }
                return Err(DropReason::BandwidthTotal);
            }
        }
        Ok(())
    }
}

/// The limiter an allocation of `user` needs under `caps` (with its own cap `own_override`),
/// reusing what it had: its own buckets keep their tokens across a rate change. `None` when no
/// cap applies. The user's shared buckets are taken or given back as needed. A TCP allocation
/// (`stream`: its data connections' state) gets its own buckets there, shared by its data
/// connections, and the limits its connections pass are published there.
fn rebuild(
    shared: &Shared,
    caps: &BandwidthCaps,
    user: &str,
    own_override: Option<u64>,
    old: Option<Box<AllocLimits>>,
    stream: Option<&StreamTraffic>,
    now: Instant,
) -> Option<Box<AllocLimits>> {
    let own_bps = own_override.unwrap_or(caps.allocation_bps);
    let (old_own, old_user) = match old {
        Some(l) => (l.own, l.user),
        None => (None, None),
    };
    let user_buckets = match (caps.user_bps, old_user) {
        (0, Some(held)) => {
            shared.bandwidth.release_user(user, held);
            None
        }
        (0, None) => None,
        (_, Some(held)) => Some(held),
        (_, None) => Some(shared.bandwidth.acquire_user(user, caps, now)),
    };
    let total = shared.bandwidth.total();
    if let Some(stream) = stream {
        let own = match (own_bps, stream.limits().and_then(|l| l.own.clone())) {
            (0, _) => None,
            (bps, Some(b)) => {
                b.set_rate(bps, caps.burst_ms, now);
                Some(b)
            }
            (bps, None) => Some(Arc::new(SharedBuckets::new(bps, caps.burst_ms, now))),
        };
        let limits = (own.is_some() || user_buckets.is_some() || total.is_some()).then(|| {
            Arc::new(StreamLimits {
                own,
                user: user_buckets.clone(),
                total: total.clone(),
            })
        });
        stream.set_limits(limits);
        // The allocation itself relays nothing (Send and ChannelData are refused on a TCP
        // allocation): it only holds the user's buckets.
        return user_buckets.map(|user| {
            Box::new(AllocLimits {
                own: None,
                user: Some(user),
                total: None,
            })
        });
    }
    let own = match (own_bps, old_own) {
        (0, _) => None,
        (bps, Some(mut b)) => {
            // The rate or the depth may have changed; what accrued stays.
            let (rate, burst) = bucket_params(bps, caps.burst_ms);
            for d in &mut b {
                d.set_rate(rate, burst, now);
            }
            Some(b)
        }
        (bps, None) => {
            let b = new_bucket(bps, caps.burst_ms, now);
            Some([b, b])
        }
    };
    if own.is_none() && user_buckets.is_none() && total.is_none() {
        return None;
    }
    Some(Box::new(AllocLimits {
        own,
        user: user_buckets,
        total,
    }))
}

impl TurnCore {
    /// Applies a change of the server-wide caps (made on any worker) before this call's work:
    /// one atomic load and a compare when nothing changed.
    #[inline]
    pub(super) fn sync_bandwidth(&mut self, now: Instant) {
        if self.shared.bandwidth.generation() != self.bw_generation {
            self.apply_bandwidth(now);
        }
    }

    #[cold]
    fn apply_bandwidth(&mut self, now: Instant) {
        self.bw_generation = self.shared.bandwidth.generation();
        let caps = self.shared.bandwidth.caps();
        self.bw_caps = caps;
        for a in self.allocs.values_mut() {
            a.bandwidth = rebuild(
                &self.shared,
                &caps,
                &a.username,
                a.bandwidth_override_bps,
                a.bandwidth.take(),
                a.tcp.as_deref(),
                now,
            );
        }
        self.stats
            .bandwidth_caps(BandwidthScope::ALL.map(|s| caps.bps(s)));
        self.fast_path.touch_all();
    }

    /// Sets the configured caps on the shared state unless a core did already (start).
    pub(super) fn init_bandwidth(&mut self, now: Instant) {
        self.shared.bandwidth.init(self.cfg.bandwidth, now);
        self.apply_bandwidth(now);
    }

    /// The limiter for a new allocation of `user` (none while no cap applies); a TCP
    /// allocation's data connections get theirs in `stream`.
    pub(super) fn new_allocation_limits(
        &self,
        user: &str,
        stream: Option<&StreamTraffic>,
        now: Instant,
    ) -> Option<Box<AllocLimits>> {
        rebuild(&self.shared, &self.bw_caps, user, None, None, stream, now)
    }

    /// Gives back what an ended allocation held of the shared buckets; its data connections
    /// (TCP allocations) pass no buckets from now on.
    pub(super) fn release_allocation_limits(
        &self,
        user: &str,
        limits: Option<Box<AllocLimits>>,
        stream: Option<&StreamTraffic>,
    ) {
        if let Some(stream) = stream {
            stream.set_limits(None);
        }
        if let Some(held) = limits.and_then(|l| l.user) {
            self.shared.bandwidth.release_user(user, held);
        }
    }

    /// The cap that applies to allocation `id` on its own, bits per second (0: none), and
    /// whether it is the allocation's own (set by [`set_allocation_bandwidth`](Self::set_allocation_bandwidth)).
    pub(super) fn allocation_cap(&self, id: u64) -> (u64, bool) {
        match self.allocs.get(&id).and_then(|a| a.bandwidth_override_bps) {
            Some(bps) => (bps, true),
            // The live caps, also when this core has not applied a change yet.
            None => (self.shared.bandwidth_caps().allocation_bps, false),
        }
    }

    /// Gives allocation `id` its own cap of `bps` bits per second each way (`None`: back to the
    /// server-wide per-allocation cap), from `now` on; user and total caps still apply.
    /// Returns the allocation as it is now, or `None` when it does not live on this core.
    pub fn set_allocation_bandwidth(
        &mut self,
        id: u64,
        bps: Option<u64>,
        now: Instant,
    ) -> Option<AllocationInfo> {
        self.last_now = self.last_now.max(now);
        self.sync_bandwidth(now);
        let caps = self.bw_caps;
        let a = self.allocs.get_mut(&id)?;
        a.bandwidth_override_bps = bps;
        a.bandwidth = rebuild(
            &self.shared,
            &caps,
            &a.username,
            bps,
            a.bandwidth.take(),
            a.tcp.as_deref(),
            now,
        );
        self.fast_path.touch(id);
        self.allocation_info(id, now)
    }

    /// Replaces the configuration (a reload). When its bandwidth caps differ from the current
    /// configuration's, they become the live server-wide caps (replacing what the admin API
    /// set); otherwise caps set through the admin API stay.
    pub fn set_config(&mut self, cfg: Arc<super::CoreConfig>, now: Instant) {
        self.last_now = self.last_now.max(now);
        if cfg.bandwidth != self.cfg.bandwidth {
            if let Err(e) = self.shared.set_bandwidth_caps(cfg.bandwidth, now) {
                tracing::warn!(error = %e, "bandwidth caps of the new configuration refused");
            }
        }
        self.cfg = cfg;
        // The peer policy may have changed.
        self.fast_path.touch_all();
        self.sync_bandwidth(now);
    }
}
