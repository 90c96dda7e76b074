//! The XDP fast path in the service: one [`XdpRouter`] (program, maps) for the process, shared
//! by the workers; each worker mirrors its core's [`FastPathEvent`]s into the maps after every
//! core call, and once a second reads what the program forwarded per binding back into its
//! allocations' accounting and the program's counters into the metrics
//! (`path="xdp"`).
//!
//! Installs that fail (map full, mixed address families) leave the binding on the normal path
//! and are counted; the core is not told, so it does not try again until the binding changes.

use crate::config::{XdpConfig, XdpMode};
use crate::metrics::XdpMetrics;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use turn_proto::core::{FastPathBinding, FastPathEvent, Traffic, TurnCore};
use turnkey_sockets::xdp::{
    EntryCounts, FastBinding, MonotonicClock, XdpAttachMode, XdpCounters, XdpError, XdpRouter,
};

/// How often per-binding counts and the program's counters are read.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The process's fast path.
#[derive(Debug)]
pub struct XdpShared {
    router: Mutex<(XdpRouter, XdpCounters)>,
    clock: MonotonicClock,
    metrics: XdpMetrics,
}

impl XdpShared {
    /// Loads and attaches the program per `cfg`.
    pub fn attach(cfg: &XdpConfig, metrics: XdpMetrics) -> Result<Arc<Self>, XdpError> {
        let mode = match cfg.mode {
            XdpMode::Native => XdpAttachMode::Native,
            XdpMode::Generic => XdpAttachMode::Generic,
            XdpMode::Auto => XdpAttachMode::Auto,
        };
        let router = XdpRouter::attach(&cfg.interfaces, mode, cfg.max_bindings)?;
        tracing::info!(interfaces = ?cfg.interfaces, ?mode, max_bindings = cfg.max_bindings, "XDP fast path attached");
        Ok(Arc::new(Self {
            router: Mutex::new((router, XdpCounters::default())),
            clock: MonotonicClock::new(),
            metrics,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (XdpRouter, XdpCounters)> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Folds the program's counters into the metrics (the delta since the last call, whoever
    /// made it).
    fn fold_counters(&self) {
        let mut g = self.lock();
        let (router, last) = &mut *g;
        let now = router.counters();
        let m = &self.metrics;
        m.c2p_packets
            .inc_by(now.to_peer_packets.saturating_sub(last.to_peer_packets));
        m.c2p_bytes
            .inc_by(now.to_peer_bytes.saturating_sub(last.to_peer_bytes));
        m.p2c_packets
            .inc_by(now.from_peer_packets.saturating_sub(last.from_peer_packets));
        m.p2c_bytes
            .inc_by(now.from_peer_bytes.saturating_sub(last.from_peer_bytes));
        for (c, (n, l)) in m.passed.iter().zip([
            (now.pass_expired, last.pass_expired),
            (now.pass_route, last.pass_route),
            (now.pass_mtu, last.pass_mtu),
            (now.pass_malformed, last.pass_malformed),
        ]) {
            c.inc_by(n.saturating_sub(l));
        }
        *last = now;
    }
}

/// A worker's side: the bindings its core installed and what of their counts it has already
/// added to the allocations.
#[derive(Debug)]
pub struct WorkerFastPath {
    shared: Arc<XdpShared>,
    entries: HashMap<(u64, u16), Entry>,
    /// The entries of each client 5-tuple (client, server address).
    by_client: HashMap<(SocketAddr, SocketAddr), Vec<(u64, u16)>>,
    /// No entry's deadline is before this (a lower bound).
    next_due: Option<Instant>,
    last_sync: Instant,
}

#[derive(Debug)]
struct Entry {
    binding: FastPathBinding,
    fb: FastBinding,
    /// What of the program's counts was added to the allocation already.
    accounted: EntryCounts,
}

fn binding(b: &FastPathBinding) -> FastBinding {
    FastBinding {
        client: b.client,
        server: b.server,
        channel: b.channel,
        relay: b.relay,
        peer: b.peer,
    }
}

impl WorkerFastPath {
    /// A worker's view of `shared`; turns the core's events on.
    pub fn new(shared: Arc<XdpShared>, core: &mut TurnCore) -> Self {
        core.enable_fast_path();
        Self {
            shared,
            entries: HashMap::new(),
            by_client: HashMap::new(),
            next_due: None,
            last_sync: Instant::now(),
        }
    }

    /// Mirrors the core's pending events into the maps. Cheap when there are none.
    pub fn apply(&mut self, core: &mut TurnCore, now: Instant) {
        let Some(first) = core.poll_fast_path_event(now) else {
            return;
        };
        let mut guard = self.shared.lock();
        let router = &mut guard.0;
        let mut next = Some(first);
        while let Some(ev) = next {
            match ev {
                FastPathEvent::Install(b) => {
                    let fb = binding(&b);
                    let key = (b.allocation, b.channel);
                    match router.install(&fb, self.shared.clock.ns_at(b.expires)) {
                        Ok(()) => {
                            let accounted = match self.entries.get(&key) {
                                Some(old) if old.fb == fb => old.accounted,
                                _ => EntryCounts::default(),
                            };
                            let tuple = (b.client, b.server);
                            let keys = self.by_client.entry(tuple).or_default();
                            if !keys.contains(&key) {
                                keys.push(key);
                            }
                            self.next_due =
                                Some(self.next_due.map_or(b.expires, |d| d.min(b.expires)));
                            self.entries.insert(
                                key,
                                Entry {
                                    binding: b,
                                    fb,
                                    accounted,
                                },
                            );
                        }
                        Err(e) => {
                            self.shared.metrics.install_failures.inc();
                            tracing::debug!(error = %e, client = %b.client, peer = %b.peer, "channel binding left on the normal path");
                        }
                    }
                }
                FastPathEvent::Remove(b) => {
                    let key = (b.allocation, b.channel);
                    if let Some(e) = self.entries.remove(&key) {
                        let counts = router.remove(&e.fb);
                        add_delta(core, b.allocation, counts, e.accounted);
                        let tuple = (e.binding.client, e.binding.server);
                        if let Some(keys) = self.by_client.get_mut(&tuple) {
                            keys.retain(|k| *k != key);
                            if keys.is_empty() {
                                self.by_client.remove(&tuple);
                            }
                        }
                    }
                }
            }
            next = core.poll_fast_path_event(now);
        }
        self.shared.metrics.bindings.set(router.installed() as i64);
    }

    /// Once a second: adds what the program forwarded per binding to the allocations, and
    /// its counters to the metrics.
    pub fn sync(&mut self, core: &mut TurnCore, now: Instant) {
        if now.saturating_duration_since(self.last_sync) < SYNC_EVERY {
            return;
        }
        self.last_sync = now;
        self.sync_counts(core);
    }

    /// [`sync`](Self::sync) now.
    pub fn sync_counts(&mut self, core: &mut TurnCore) {
        {
            let guard = self.shared.lock();
            for e in self.entries.values_mut() {
                sync_entry(core, &guard.0, e);
            }
        }
        self.shared.fold_counters();
    }

    /// Adds the counts of the bindings of client 5-tuple (`client`, `server`) to its
    /// allocation now: before a request of that client, which may end the allocation.
    pub fn sync_client(&mut self, core: &mut TurnCore, client: SocketAddr, server: SocketAddr) {
        let Some(keys) = self.by_client.get(&(client, server)) else {
            return;
        };
        let guard = self.shared.lock();
        for key in keys {
            if let Some(e) = self.entries.get_mut(key) {
                sync_entry(core, &guard.0, e);
            }
        }
    }

    /// Adds the counts of the bindings whose deadline is past to their allocations: before
    /// the core's timers run, which may end those allocations.
    pub fn sync_due(&mut self, core: &mut TurnCore, now: Instant) {
        if self.next_due.is_none_or(|d| d > now) {
            return;
        }
        let guard = self.shared.lock();
        let mut next: Option<Instant> = None;
        for e in self.entries.values_mut() {
            if e.binding.expires <= now {
                sync_entry(core, &guard.0, e);
            } else {
                next = Some(next.map_or(e.binding.expires, |d| d.min(e.binding.expires)));
            }
        }
        self.next_due = next;
    }

    /// Removes every binding of this worker (shutdown), with its final counts.
    pub fn clear(&mut self, core: &mut TurnCore) {
        let mut guard = self.shared.lock();
        for ((id, _), e) in self.entries.drain() {
            let counts = guard.0.remove(&e.fb);
            add_delta(core, id, counts, e.accounted);
        }
        self.by_client.clear();
        self.shared.metrics.bindings.set(guard.0.installed() as i64);
        drop(guard);
        self.shared.fold_counters();
    }
}

fn sync_entry(core: &mut TurnCore, router: &XdpRouter, e: &mut Entry) {
    let counts = router.entry_counts(&e.fb);
    add_delta(core, e.binding.allocation, counts, e.accounted);
    e.accounted = counts;
}

fn add_delta(core: &mut TurnCore, id: u64, now: EntryCounts, before: EntryCounts) {
    let to_peer = Traffic {
        packets: now.to_peer_packets.saturating_sub(before.to_peer_packets),
        bytes: now.to_peer_bytes.saturating_sub(before.to_peer_bytes),
    };
    let from_peer = Traffic {
        packets: now
            .from_peer_packets
            .saturating_sub(before.from_peer_packets),
        bytes: now.from_peer_bytes.saturating_sub(before.from_peer_bytes),
    };
    if to_peer.packets + from_peer.packets > 0 {
        core.add_fast_path_traffic(id, to_peer, from_peer);
    }
}
