//! Multiplexed relayed transport addresses (opt-in and non-standard, like coturn's
//! `--multiplex-peer`): many allocations share one relay socket, so a server holds far more
//! allocations than it may open file descriptors.
//!
//! RFC 8656 §7.2 gives each allocation a relayed transport address of its own. Here a datagram
//! a peer sends to a shared address is routed by the peer's IP and port, so each peer endpoint
//! belongs to one allocation per shared socket: the allocation that names it first (in a
//! CreatePermission, a ChannelBind or a Send indication) owns it until its permission for that
//! IP ends or the allocation goes. Another allocation naming the same endpoint gets 508 (its
//! Send indications are dropped), and nothing it relays leaves towards an endpoint it does not
//! own: the peer sees one source address for all of them and must never take one client's data
//! for another's.
//!
//! An endpoint named with port 0 (CreatePermission allows it) is not claimed; the peer can only
//! be reached once a ChannelBind or Send names its port. Each allocation owns at most
//! [`MAX_PEER_ENDPOINTS_PER_ALLOCATION`] endpoints.

use super::{Allocation, TurnCore, MAX_PEER_ENDPOINTS_PER_ALLOCATION};
use crate::stats::DropReason;
use rtc_stun::message::Message;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use stun_proto::msg::MessageBuilder;

impl TurnCore {
    /// The multiplexed relay socket allocation `a` relays to `peer` from, when its relay of the
    /// peer's family is one.
    pub(super) fn multiplexed_relay(a: &Allocation, peer: SocketAddr) -> Option<SocketAddr> {
        a.relay_for(super::AddressFamily::of(peer.ip()))
            .filter(|r| r.multiplexed)
            .map(|r| r.local)
    }

    /// True when allocation `id` (which is `a`) may relay to and from `peer`: its relay is not
    /// multiplexed, or it owns the endpoint there (`by_endpoint` is the core's table).
    pub(super) fn owns_endpoint(
        by_endpoint: &HashMap<(SocketAddr, SocketAddr), u64>,
        id: u64,
        a: &Allocation,
        peer: SocketAddr,
    ) -> bool {
        match Self::multiplexed_relay(a, peer) {
            None => true,
            Some(relay) => by_endpoint.get(&(relay, peer)) == Some(&id),
        }
    }

    /// Checks that allocation `id` may own `peers` on its multiplexed relays before a
    /// CreatePermission or ChannelBind installs anything: no endpoint owned by another
    /// allocation, and room for the new ones (508 either way).
    pub(super) fn admit_endpoints(
        &self,
        id: u64,
        m: &Message,
        peers: &[SocketAddr],
    ) -> Result<(), MessageBuilder> {
        let Some(a) = self.allocs.get(&id) else {
            return Ok(());
        };
        let mut new: Vec<SocketAddr> = Vec::new();
        for &peer in peers {
            let Some(relay) = Self::multiplexed_relay(a, peer) else {
                continue;
            };
            if peer.port() == 0 {
                continue;
            }
            match self.by_endpoint.get(&(relay, peer)) {
                Some(&owner) if owner == id => {}
                Some(_) => {
                    return Err(MessageBuilder::error(
                        m,
                        508,
                        "Insufficient Capacity: peer endpoint in use on this relayed address",
                    ))
                }
                None => new.push(peer),
            }
        }
        new.sort();
        new.dedup();
        if a.endpoints.len() + new.len() > MAX_PEER_ENDPOINTS_PER_ALLOCATION {
            return Err(MessageBuilder::error(
                m,
                508,
                "Insufficient Capacity: too many peer endpoints",
            ));
        }
        Ok(())
    }

    /// Makes `peer` allocation `id`'s endpoint on its multiplexed relay. Nothing to do when
    /// the relay is not multiplexed, the port is 0 or the endpoint is its own already.
    pub(super) fn claim_endpoint(&mut self, id: u64, peer: SocketAddr) -> Result<(), DropReason> {
        let Some(a) = self.allocs.get_mut(&id) else {
            return Err(DropReason::NoAllocation);
        };
        let Some(relay) = Self::multiplexed_relay(a, peer) else {
            return Ok(());
        };
        if peer.port() == 0 {
            return Ok(());
        }
        match self.by_endpoint.get(&(relay, peer)) {
            Some(&owner) if owner == id => Ok(()),
            Some(_) => Err(DropReason::PeerEndpointTaken),
            None if a.endpoints.len() >= MAX_PEER_ENDPOINTS_PER_ALLOCATION => {
                Err(DropReason::PeerEndpointLimit)
            }
            None => {
                self.by_endpoint.insert((relay, peer), id);
                a.endpoints.push(peer);
                Ok(())
            }
        }
    }

    /// A permission for `ip` was installed on allocation `id`: claims again the peers of its
    /// bound channels at that IP, given up when the permission last ended. One another
    /// allocation took meanwhile stays that allocation's (the channel then relays nothing).
    pub(super) fn reclaim_channel_endpoints(&mut self, id: u64, ip: IpAddr) {
        let Some(a) = self.allocs.get(&id) else {
            return;
        };
        if !a.relays.iter().any(|r| r.multiplexed) {
            return;
        }
        let peers: Vec<SocketAddr> = a
            .channels
            .values()
            .filter(|c| c.bound && c.peer.ip() == ip)
            .map(|c| c.peer)
            .collect();
        for peer in peers {
            if let Err(reason) = self.claim_endpoint(id, peer) {
                self.stats.drop_packet(reason);
            }
        }
    }

    /// Gives up allocation `id`'s endpoints at `ip` (its permission ended).
    pub(super) fn release_endpoints_of(&mut self, id: u64, ip: IpAddr) {
        let Some(a) = self.allocs.get_mut(&id) else {
            return;
        };
        if a.endpoints.is_empty() {
            return;
        }
        let (gone, kept): (Vec<SocketAddr>, Vec<SocketAddr>) = std::mem::take(&mut a.endpoints)
            .into_iter()
            .partition(|p| p.ip() == ip);
        a.endpoints = kept;
        for peer in gone {
            if let Some(relay) = Self::multiplexed_relay(a, peer) {
                self.by_endpoint.remove(&(relay, peer));
            }
        }
    }

    /// Gives up every endpoint of allocation `a` (taken out of the table: it ends).
    pub(super) fn release_endpoints(&mut self, a: &mut Allocation) {
        for peer in std::mem::take(&mut a.endpoints) {
            if let Some(relay) = Self::multiplexed_relay(a, peer) {
                self.by_endpoint.remove(&(relay, peer));
            }
        }
    }
}
