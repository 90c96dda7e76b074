//! Which channel bindings an in-kernel fast path (the service's XDP program) may relay without
//! the core seeing each datagram, as a queue of [`FastPathEvent`]s. Sans-IO: the core knows
//! nothing of BPF; the worker drains [`TurnCore::poll_fast_path_event`] and mirrors the events
//! into its maps, and hands back what the fast path relayed with
//! [`TurnCore::add_fast_path_traffic`] so the accounting stays whole.
//!
//! A binding is usable when everything the slow path checks per ChannelData datagram
//! (RFC 8656 §12.5, §12.6) is already decided for its lifetime: a UDP client 5-tuple (no
//! stream, no DTLS, no unconfirmed RFC 8016 move), the channel bound, a permission for the
//! peer's IP, the peer allowed by the policy, no bandwidth cap in force for the allocation
//! (the fast path cannot meter), a relayed address and a server address that are not
//! wildcards, and client, server, relay and peer of one family. Its `expires` is the earliest
//! of the channel, permission and allocation deadlines: the fast path must stop on its own
//! there, even before the core's timer has run.
//!
//! State changes only mark the allocation (cheap, nothing when the fast path is off); the
//! events are computed when the worker polls, by comparing what should be installed with what
//! was last announced, so every path that changes an allocation (timers, Refresh, mobility,
//! caps, reloads, the admin API) needs only a mark.

use super::{AddressFamily, TurnCore};
use crate::Transport;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

/// One channel binding the fast path may relay (both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastPathBinding {
    /// The allocation (as in [`crate::core::AllocationInfo::id`]).
    pub allocation: u64,
    /// The client's transport address (the 5-tuple's client side).
    pub client: SocketAddr,
    /// The server address the client sends to (the 5-tuple's server side).
    pub server: SocketAddr,
    /// The channel number.
    pub channel: u16,
    /// The relayed transport address's local socket address.
    pub relay: SocketAddr,
    /// The peer bound to the channel.
    pub peer: SocketAddr,
    /// The earliest of the channel, permission and allocation deadlines.
    pub expires: Instant,
}

/// A change for the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPathEvent {
    /// Install this binding, or replace the one installed for the same allocation and channel
    /// (a refresh moves `expires`).
    Install(FastPathBinding),
    /// Remove this binding (as last installed): it is no longer usable.
    Remove(FastPathBinding),
}

#[derive(Debug, Default)]
pub(super) struct FastPathState {
    enabled: bool,
    all_dirty: bool,
    dirty: Vec<u64>,
    /// What was last announced, by allocation.
    installed: HashMap<u64, Vec<FastPathBinding>>,
    events: VecDeque<FastPathEvent>,
}

impl FastPathState {
    pub(super) fn touch(&mut self, id: u64) {
        if self.enabled && !self.all_dirty {
            self.dirty.push(id);
        }
    }

    pub(super) fn touch_all(&mut self) {
        if self.enabled {
            self.all_dirty = true;
        }
    }
}

impl TurnCore {
    /// Turns the fast path events on (off by default: then nothing is tracked). Every live
    /// allocation is examined at the next poll.
    pub fn enable_fast_path(&mut self) {
        self.fast_path.enabled = true;
        self.fast_path.touch_all();
    }

    /// The next change for the fast path, computed from what changed since the last call
    /// (`now` decides what has expired). Call until `None` after every core call.
    pub fn poll_fast_path_event(&mut self, now: Instant) -> Option<FastPathEvent> {
        if let Some(e) = self.fast_path.events.pop_front() {
            return Some(e);
        }
        if !self.fast_path.enabled {
            return None;
        }
        let mut ids = std::mem::take(&mut self.fast_path.dirty);
        if std::mem::take(&mut self.fast_path.all_dirty) {
            ids.extend(self.allocs.keys().copied());
            ids.extend(self.fast_path.installed.keys().copied());
        }
        if ids.is_empty() {
            return None;
        }
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            self.reconcile_fast_path(id, now);
        }
        self.fast_path.events.pop_front()
    }

    /// Adds what the fast path relayed for `allocation` to its accounting (admin API, the
    /// "allocation ended" record). Unknown allocations are ignored.
    pub fn add_fast_path_traffic(
        &mut self,
        allocation: u64,
        to_peer: super::Traffic,
        from_peer: super::Traffic,
    ) {
        if let Some(a) = self.allocs.get(&allocation) {
            for (cell, add) in [(&a.to_peer, to_peer), (&a.from_peer, from_peer)] {
                let t = cell.get();
                cell.set(super::Traffic {
                    packets: t.packets + add.packets,
                    bytes: t.bytes + add.bytes,
                });
            }
        }
    }

    /// Bindings announced and not removed (all allocations of this core).
    pub fn fast_path_bindings(&self) -> usize {
        self.fast_path.installed.values().map(Vec::len).sum()
    }

    fn usable_bindings(&self, id: u64, now: Instant) -> Vec<FastPathBinding> {
        let Some(a) = self.allocs.get(&id) else {
            return Vec::new();
        };
        let moving = a.mobility.as_ref().is_some_and(|m| m.old_tuple.is_some());
        if a.tuple.transport != Transport::Udp
            || a.tcp.is_some()
            || a.bandwidth.is_some()
            || moving
            || a.expires <= now
            || a.tuple.server.ip().is_unspecified()
        {
            return Vec::new();
        }
        let family = AddressFamily::of(a.tuple.client.ip());
        if AddressFamily::of(a.tuple.server.ip()) != family {
            return Vec::new();
        }
        let mut v = Vec::new();
        for (&channel, c) in a.channels.iter() {
            if !c.bound || c.expires <= now || AddressFamily::of(c.peer.ip()) != family {
                continue;
            }
            let Some(&perm) = a.permissions.get(&c.peer.ip()).filter(|t| **t > now) else {
                continue;
            };
            let Some(relay) = a.relay_for(family).map(|r| r.local) else {
                continue;
            };
            // The policy alone: a peer that is this server's own relayed address is left to
            // the slow path (the kernel would hand it back to this host anyway).
            if relay.ip().is_unspecified() || self.cfg.policy.check(c.peer).is_err() {
                continue;
            }
            // On a multiplexed relayed address, only an endpoint it owns (the program keys
            // peer datagrams by relay and peer, like the core).
            if !Self::owns_endpoint(&self.by_endpoint, id, a, c.peer) {
                continue;
            }
            v.push(FastPathBinding {
                allocation: id,
                client: a.tuple.client,
                server: a.tuple.server,
                channel,
                relay,
                peer: c.peer,
                expires: c.expires.min(perm).min(a.expires),
            });
        }
        v.sort_by_key(|b| b.channel);
        v
    }

    fn reconcile_fast_path(&mut self, id: u64, now: Instant) {
        let want = self.usable_bindings(id, now);
        let had = self.fast_path.installed.remove(&id).unwrap_or_default();
        let fp = &mut self.fast_path;
        for old in &had {
            let same_key = want.iter().find(|w| w.channel == old.channel);
            let keep = same_key.is_some_and(|w| {
                (w.client, w.server, w.relay, w.peer)
                    == (old.client, old.server, old.relay, old.peer)
            });
            if !keep {
                fp.events.push_back(FastPathEvent::Remove(*old));
            }
        }
        for w in &want {
            if !had.contains(w) {
                fp.events.push_back(FastPathEvent::Install(*w));
            }
        }
        if !want.is_empty() {
            fp.installed.insert(id, want);
        }
    }
}
