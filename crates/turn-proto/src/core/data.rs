//! Relaying: Send and Data indications (RFC 8656 §11), ChannelData both ways (§12), and the peer
//! check every relayed datagram passes (§21.1).

use super::bandwidth::Direction;
use super::{AddressFamily, CoreConfig, Shared, Traffic, Transmit, TurnCore};
use crate::stats::{DropReason, TurnStats};
use crate::FiveTuple;
use rtc_stun::attributes::*;
use rtc_stun::message::{Message, METHOD_DATA};
use std::net::SocketAddr;
use std::time::Instant;
use stun_proto::msg::{attr, xor_address, MessageBuilder};

impl TurnCore {
    /// The check every datagram relayed to or from a peer passes (RFC 8656 §21.1 and the
    /// server's own services): the peer policy, except that a live relayed transport address
    /// of this server is always reachable (two clients of this server meet through it). A
    /// permission is per IP, so this runs per datagram: a permission for one relayed address
    /// of this host never opens the host's other ports.
    fn peer_allowed(
        cfg: &CoreConfig,
        shared: &Shared,
        stats: &mut TurnStats,
        peer: SocketAddr,
    ) -> bool {
        match cfg.policy.check(peer) {
            Ok(()) => true,
            Err(_) if shared.is_live_relay(peer) => true,
            Err(reason) => {
                stats.peer_denied(reason);
                stats.drop_packet(DropReason::PeerDenied);
                false
            }
        }
    }

    /// Send indication (RFC 8656 §11.2): relayed when a permission exists, silently dropped
    /// (and counted) otherwise.
    pub(super) fn handle_send(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) {
        let Some(&id) = self.by_tuple.get(&tuple) else {
            self.stats.drop_packet(DropReason::NoAllocation);
            return;
        };
        let Some(mut a) = self.allocs.get_mut(&id) else {
            self.stats.drop_packet(DropReason::NoAllocation);
            return;
        };
        if a.mobility.as_ref().is_some_and(|m| m.old_tuple.is_some()) {
            // Data on the new 5-tuple confirms a move (RFC 8016 §3.2).
            self.confirm_move(id, tuple);
            let Some(again) = self.allocs.get_mut(&id) else {
                return;
            };
            a = again;
        }
        // RFC 6062 §5.1: data of a TCP allocation goes over its data connections.
        if a.tcp.is_some() {
            self.stats.drop_packet(DropReason::TcpAllocation);
            return;
        }
        let (Some(peer), Some(data)) = (xor_address(m, ATTR_XOR_PEER_ADDRESS), attr(m, ATTR_DATA))
        else {
            self.stats.drop_packet(DropReason::Malformed);
            return;
        };
        if !a.has_permission(peer.ip(), now) {
            self.stats.drop_packet(DropReason::NoPermission);
            return;
        }
        let Some(relay) = a.relay_for(AddressFamily::of(peer.ip())).map(|r| r.local) else {
            self.stats.drop_packet(DropReason::FamilyMismatch);
            return;
        };
        if !Self::peer_allowed(&self.cfg, &self.shared, &mut self.stats, peer) {
            return;
        }
        if Self::multiplexed_relay(a, peer).is_some() {
            // A new peer endpoint on a shared relayed address is claimed by its first Send.
            if let Err(reason) = self.claim_endpoint(id, peer) {
                self.stats.drop_packet(reason);
                return;
            }
            let Some(again) = self.allocs.get_mut(&id) else {
                return;
            };
            a = again;
        }
        if let Some(limits) = a.bandwidth.as_deref_mut() {
            if let Err(reason) = limits.admit(Direction::ToPeer, data.len(), now) {
                self.stats.drop_packet(reason);
                return;
            }
        }
        self.stats.relay.c2p_packets += 1;
        self.stats.relay.c2p_bytes += data.len() as u64;
        Traffic::count(&a.to_peer, data.len());
        out.push(Transmit::ToPeer {
            relay,
            peer,
            data: data.to_vec(),
        });
    }

    /// ChannelData from a client (RFC 8656 §12.5).
    pub(super) fn handle_channel_data(
        &mut self,
        tuple: FiveTuple,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Transmit>,
    ) {
        if let Some((relay, peer, payload)) = self.route_channel_data(tuple, data, now) {
            out.push(Transmit::ToPeer {
                relay,
                peer,
                data: data[payload].to_vec(),
            });
        }
    }

    /// ChannelData from a client (RFC 8656 §12.5), checked and counted: where its payload
    /// (`data[range]`) goes, or `None` when it is dropped (counted by reason).
    pub(super) fn route_channel_data(
        &mut self,
        tuple: FiveTuple,
        data: &[u8],
        now: Instant,
    ) -> Option<(SocketAddr, SocketAddr, std::ops::Range<usize>)> {
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        if data.len() < 4 + len {
            self.stats.drop_packet(DropReason::Malformed);
            return None;
        }
        let Some(&id) = self.by_tuple.get(&tuple) else {
            self.stats.drop_packet(DropReason::NoAllocation);
            return None;
        };
        let mut a = self.allocs.get_mut(&id)?;
        if a.mobility.as_ref().is_some_and(|m| m.old_tuple.is_some()) {
            // Data on the new 5-tuple confirms a move (RFC 8016 §3.2).
            self.confirm_move(id, tuple);
            a = self.allocs.get_mut(&id)?;
        }
        let Some(peer) = a.channels.get(&number).filter(|c| c.bound).map(|c| c.peer) else {
            self.stats.drop_packet(DropReason::NoChannel);
            return None;
        };
        if !a.has_permission(peer.ip(), now) {
            self.stats.drop_packet(DropReason::NoPermission);
            return None;
        }
        let Some((relay, multiplexed)) = a
            .relay_for(AddressFamily::of(peer.ip()))
            .map(|r| (r.local, r.multiplexed))
        else {
            self.stats.drop_packet(DropReason::FamilyMismatch);
            return None;
        };
        if !Self::peer_allowed(&self.cfg, &self.shared, &mut self.stats, peer) {
            return None;
        }
        if multiplexed && self.by_endpoint.get(&(relay, peer)) != Some(&id) {
            // Another allocation on this shared relayed address owns the endpoint (or nobody
            // does since its permission ended): the peer must not take this as theirs.
            self.stats.drop_packet(DropReason::PeerEndpointTaken);
            return None;
        }
        if let Some(limits) = a.bandwidth.as_deref_mut() {
            if let Err(reason) = limits.admit(Direction::ToPeer, len, now) {
                self.stats.drop_packet(reason);
                return None;
            }
        }
        self.stats.relay.c2p_packets += 1;
        self.stats.relay.c2p_bytes += len as u64;
        Traffic::count(&a.to_peer, len);
        Some((relay, peer, 4..4 + len))
    }

    /// A datagram from `peer` arrived on the relay socket bound at `relay`. Returns what to send
    /// to the client: ChannelData when a channel is bound to the peer, else a Data indication;
    /// nothing without a permission (RFC 8656 §11.3, §12.6).
    pub fn handle_peer(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Option<Transmit> {
        let mut frame = Vec::new();
        let to = self.handle_peer_into(relay, peer, data, now, &mut frame)?;
        Some(Transmit::ToClient { to, data: frame })
    }

    /// [`handle_peer`](Self::handle_peer) writing the frame for the client into `frame`
    /// (cleared first; a buffer the caller reuses, so relaying allocates nothing): the client's
    /// 5-tuple to send it on, or `None` when the datagram is dropped (counted by reason).
    pub fn handle_peer_into(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
        frame: &mut Vec<u8>,
    ) -> Option<FiveTuple> {
        frame.clear();
        self.last_now = self.last_now.max(now);
        self.sync_bandwidth(now);
        let id = match self.by_relay.get(&relay) {
            Some(&id) => Some(id),
            // A multiplexed relayed address: the peer endpoint says whose it is.
            None => self.by_endpoint.get(&(relay, peer)).copied(),
        };
        let Some(a) = id.and_then(|id| self.allocs.get_mut(&id)) else {
            let reason = if self.multiplexed_relays.contains(&relay) {
                DropReason::PeerEndpointTaken
            } else {
                DropReason::NoAllocation
            };
            self.stats.drop_packet(reason);
            return None;
        };
        if !a.has_permission(peer.ip(), now) {
            self.stats.drop_packet(DropReason::NoPermission);
            return None;
        }
        if !Self::peer_allowed(&self.cfg, &self.shared, &mut self.stats, peer) {
            return None;
        }
        if let Some(limits) = a.bandwidth.as_deref_mut() {
            if let Err(reason) = limits.admit(Direction::FromPeer, data.len(), now) {
                self.stats.drop_packet(reason);
                return None;
            }
        }
        match a.peer_channels.get(&peer) {
            Some(n) if a.channels.get(n).is_some_and(|c| c.bound) => {
                if data.len() > u16::MAX as usize {
                    self.stats.drop_packet(DropReason::TooLarge);
                    return None;
                }
                let padded = if a.tuple.transport.is_stream() {
                    data.len().div_ceil(4) * 4
                } else {
                    data.len()
                };
                frame.reserve(4 + padded);
                frame.extend_from_slice(&n.to_be_bytes());
                frame.extend_from_slice(&(data.len() as u16).to_be_bytes());
                frame.extend_from_slice(data);
                frame.resize(4 + padded, 0);
            }
            _ => {
                if data.len() > u16::MAX as usize - 64 {
                    self.stats.drop_packet(DropReason::TooLarge);
                    return None;
                }
                let mut b = MessageBuilder::indication(METHOD_DATA);
                b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
                b.raw(ATTR_DATA, data);
                frame.extend_from_slice(&b.finish());
            }
        }
        self.stats.relay.p2c_packets += 1;
        self.stats.relay.p2c_bytes += data.len() as u64;
        Traffic::count(&a.from_peer, data.len());
        Some(a.egress_tuple())
    }
}
