//! Lifetimes: allocation (RFC 8656 §6, §8), permission (§9), channel binding and reuse delay
//! (§12) and EVEN-PORT reservation (§7.2) timers, and releasing an allocation when it expires,
//! is refreshed to 0, loses its stream connection (§5) or the server shuts down.

use super::{AllocationInfo, EndReason, RelayAllocator, TimerKey, TurnCore};
use crate::FiveTuple;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl TurnCore {
    /// The stream connection of `tuple` closed: its allocation goes too (RFC 8656 §5).
    pub fn handle_connection_closed(&mut self, tuple: FiveTuple, relays: &mut dyn RelayAllocator) {
        if let Some(&id) = self.by_tuple.get(&tuple) {
            self.delete_allocation(id, relays, EndReason::ConnectionClosed);
        }
    }

    /// Expires allocations, permissions and channel bindings due at `now`; entries that fired
    /// early (deadline pushed back by a refresh) are re-armed at the real deadline.
    pub fn handle_timeout(&mut self, now: Instant, relays: &mut dyn RelayAllocator) {
        self.last_now = self.last_now.max(now);
        self.sync_bandwidth(now);
        while let Some((_, key)) = self.timers.pop_due(now) {
            match key {
                TimerKey::Allocation(id) => {
                    self.fast_path.touch(id);
                    if self.allocs.get(&id).is_some_and(|a| a.expires <= now) {
                        self.delete_allocation(id, relays, EndReason::Expired);
                    } else {
                        self.expire_within(id, now);
                    }
                }
                TimerKey::PeerConnection(c) => self.peer_connection_deadline(c),
                TimerKey::Reservation(token) => {
                    // Nobody redeemed it in time (RFC 8656 §7.2): the port and the quota unit
                    // go back. Redeemed ones are already gone from the table.
                    if let Some(r) = self.shared.take_reservation(&token, Some(now)) {
                        self.shared.return_quota(&r.holder);
                        self.stats.live_reservations(-1);
                        relays.cancel_reservation(token);
                    }
                }
            }
        }
    }

    /// Allocation `id`'s one timer fired before the allocation's own expiry: removes its
    /// permissions (RFC 8656 §9) and unbinds its channels (§12) that are due, forgets channel
    /// numbers whose reuse delay (§12: 5 minutes after the binding expired) has passed, and
    /// re-arms the timer at the earliest deadline left. One timer per allocation, not one per
    /// permission and channel: an idle allocation holds one timer entry.
    pub(super) fn expire_within(&mut self, id: u64, now: Instant) {
        let reuse = self.cfg.channel_reuse_delay;
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        let expired: Vec<IpAddr> = a
            .permissions
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for &ip in &expired {
            a.permissions.remove(&ip);
            self.stats.live_permissions(-1);
        }
        let mut forget = Vec::new();
        for (n, c) in a.channels.iter_mut() {
            if c.bound && c.expires <= now {
                c.bound = false;
                self.stats.live_channel_bindings(-1);
            }
            if !c.bound && c.expires + reuse <= now {
                forget.push((*n, c.peer));
            }
        }
        for (n, peer) in forget {
            a.channels.remove(&n);
            if a.peer_channels.get(&peer) == Some(&n) {
                a.peer_channels.remove(&peer);
            }
        }
        let next = a.next_deadline(reuse);
        self.timers.schedule(next, TimerKey::Allocation(id));
        for ip in expired {
            self.release_endpoints_of(id, ip);
        }
    }

    /// Arms allocation `id`'s timer at `deadline` (a new permission or channel binding) unless
    /// it fires earlier already.
    pub(super) fn arm_allocation_timer(&mut self, id: u64, deadline: Instant) {
        let key = TimerKey::Allocation(id);
        if self.timers.deadline_of(&key).is_none_or(|t| deadline < t) {
            self.timers.schedule(deadline, key);
        }
    }

    /// Removes allocation `id`, frees its relayed transport addresses and quota, and logs its
    /// accounting record ("allocation ended": user, realm, client 5-tuple (the current one after
    /// RFC 8016 moves), relayed addresses, start, duration, packets and bytes each way, moves,
    /// `reason`). Returns the record.
    pub(super) fn delete_allocation(
        &mut self,
        id: u64,
        relays: &mut dyn RelayAllocator,
        reason: EndReason,
    ) -> Option<AllocationInfo> {
        let info = self.allocation_info(id, self.last_now)?;
        let mut a = self.allocs.remove(&id)?;
        self.fast_path.touch(id);
        self.release_allocation_limits(&a.username, a.bandwidth.take(), a.tcp.as_deref());
        self.stats.allocation_ended(reason);
        if a.tcp.is_some() {
            self.close_allocation_connections(id);
        }
        let relayed: Vec<String> = info.relayed.iter().map(|r| r.to_string()).collect();
        tracing::info!(
            id,
            user = %info.user,
            realm = %self.cfg.realm,
            client = %info.tuple.client,
            server = %info.tuple.server,
            transport = info.tuple.transport.as_str(),
            relayed = %relayed.join(","),
            relay_transport = info.relay_transport.as_str(),
            started = info.started_unix_secs,
            duration_secs = info.age_secs,
            to_peer_packets = info.to_peer.packets,
            to_peer_bytes = info.to_peer.bytes,
            from_peer_packets = info.from_peer.packets,
            from_peer_bytes = info.from_peer.bytes,
            moves = info.moves,
            reason = reason.as_str(),
            "allocation ended"
        );
        self.by_tuple.remove(&a.tuple);
        if let Some(old) = a.mobility.as_ref().and_then(|m| m.old_tuple) {
            self.by_tuple.remove(&old);
        }
        self.timers.cancel(&TimerKey::Allocation(id));
        self.release_endpoints(&mut a);
        let mut live = Vec::new();
        for r in &a.relays {
            // A multiplexed socket stays: other allocations share it.
            if !r.multiplexed {
                self.by_relay.remove(&r.local);
                relays.release(r.local);
            }
            live.push(r.local);
            live.push(r.advertised);
        }
        self.shared.remove_relays(&live);
        self.shared.return_quota(&a.holder);
        self.shared.allocations.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .live_allocations(a.tuple.transport.as_str(), a.family_label(), -1);
        self.stats.live_permissions(-(a.permissions.len() as i64));
        let bound = a.channels.values().filter(|c| c.bound).count();
        self.stats.live_channel_bindings(-(bound as i64));
        Some(info)
    }

    /// Deletes every allocation (shutdown).
    pub fn close_all(&mut self, relays: &mut dyn RelayAllocator) {
        let ids: Vec<u64> = self.allocs.keys().copied().collect();
        for id in ids {
            self.delete_allocation(id, relays, EndReason::Shutdown);
        }
    }
}
