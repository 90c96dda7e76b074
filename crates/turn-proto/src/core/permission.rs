//! Permissions (RFC 8656 §9): CreatePermission (§10) and ChannelBind (§12), and the admission
//! of the peers they name.

use super::{
    AddressFamily, Channel, TurnCore, MAX_CHANNELS_PER_ALLOCATION, MAX_PERMISSIONS_PER_ALLOCATION,
};
use crate::auth::AuthOk;
use crate::FiveTuple;
use rtc_stun::attributes::*;
use rtc_stun::message::Message;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use stun_proto::msg::{attr, xor_address, xor_addresses, MessageBuilder};

impl TurnCore {
    /// Checks peers before permissions are installed for them: each peer's family against the
    /// allocation's relays (443), then the policy (403) unless the peer is a live relayed
    /// address of this server, then room for the new permissions (508), then, on a
    /// multiplexed relayed address, the peer endpoints (508 when another allocation owns one
    /// or there is no room).
    fn admit_peers(
        &mut self,
        id: u64,
        m: &Message,
        peers: &[SocketAddr],
    ) -> Result<(), MessageBuilder> {
        let Some(a) = self.allocs.get(&id) else {
            return Err(MessageBuilder::error(m, 437, "Allocation Mismatch"));
        };
        for peer in peers {
            if a.relay_for(AddressFamily::of(peer.ip())).is_none() {
                return Err(MessageBuilder::error(
                    m,
                    443,
                    "Peer Address Family Mismatch",
                ));
            }
            if self.shared.is_live_relay(*peer) {
                continue;
            }
            if let Err(reason) = self.cfg.policy.check(*peer) {
                self.stats.peer_denied(reason);
                return Err(MessageBuilder::error(m, 403, "Forbidden"));
            }
        }
        let mut new: Vec<IpAddr> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !a.permissions.contains_key(ip))
            .collect();
        new.sort();
        new.dedup();
        if a.permissions.len() + new.len() > MAX_PERMISSIONS_PER_ALLOCATION {
            return Err(MessageBuilder::error(
                m,
                508,
                "Insufficient Capacity: too many permissions",
            ));
        }
        self.admit_endpoints(id, m, peers)
    }

    fn install_permission(&mut self, id: u64, ip: IpAddr, now: Instant) {
        let expires = now + self.cfg.permission_lifetime;
        if let Some(a) = self.allocs.get_mut(&id) {
            if a.permissions.insert(ip, expires).is_none() {
                self.stats.live_permissions(1);
            }
            self.arm_allocation_timer(id, expires);
            self.fast_path.touch(id);
            self.reclaim_channel_endpoints(id, ip);
        }
    }

    /// Claims `peer` for allocation `id` on a multiplexed relayed address after the request
    /// naming it was admitted ([`Self::admit_peers`] checked it is free).
    fn claim_admitted(&mut self, id: u64, peer: SocketAddr) {
        if let Err(reason) = self.claim_endpoint(id, peer) {
            self.stats.drop_packet(reason);
        }
    }

    /// RFC 8656 §10.
    pub(super) fn create_permission(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        now: Instant,
    ) -> MessageBuilder {
        let id = match self.owned_allocation(tuple, m, auth) {
            Ok(id) => id,
            Err(b) => return b,
        };
        let peers = match xor_addresses(m, ATTR_XOR_PEER_ADDRESS) {
            Ok(p) if !p.is_empty() => p,
            _ => return MessageBuilder::error(m, 400, "Bad Request: XOR-PEER-ADDRESS"),
        };
        if let Err(b) = self.admit_peers(id, m, &peers) {
            return b;
        }
        for p in peers {
            self.install_permission(id, p.ip(), now);
            self.claim_admitted(id, p);
        }
        MessageBuilder::success(m)
    }

    /// RFC 8656 §12.2 (ChannelBind; §11 is Send and Data).
    pub(super) fn channel_bind(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        now: Instant,
    ) -> MessageBuilder {
        let id = match self.owned_allocation(tuple, m, auth) {
            Ok(id) => id,
            Err(b) => return b,
        };
        let number = match attr(m, ATTR_CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => return MessageBuilder::error(m, 400, "Bad Request: CHANNEL-NUMBER"),
        };
        // RFC 8656 §12 narrowed channels to 0x4000-0x4FFF; RFC 5766 clients (coturn's
        // turnutils_uclient, older browsers) still pick up to 0x7FFF, which is unambiguous here.
        if !(0x4000..=0x7FFF).contains(&number) {
            tracing::debug!(number, "channel number out of range");
            return MessageBuilder::error(m, 400, "Bad Request: channel number out of range");
        }
        let Some(peer) = xor_address(m, ATTR_XOR_PEER_ADDRESS) else {
            return MessageBuilder::error(m, 400, "Bad Request: XOR-PEER-ADDRESS");
        };
        // RFC 6062 §5.1: a TCP allocation relays over data connections, never channels.
        if self.allocs.get(&id).is_some_and(|a| a.tcp.is_some()) {
            return MessageBuilder::error(m, 400, "Bad Request: a TCP allocation has no channels");
        }
        if let Err(b) = self.admit_peers(id, m, &[peer]) {
            return b;
        }
        let Some(a) = self.allocs.get(&id) else {
            return MessageBuilder::error(m, 437, "Allocation Mismatch");
        };
        if let Some(c) = a.channels.get(&number) {
            if c.peer != peer {
                return MessageBuilder::error(m, 400, "Bad Request: channel bound to another peer");
            }
        }
        if let Some(n) = a.peer_channels.get(&peer) {
            if *n != number {
                return MessageBuilder::error(m, 400, "Bad Request: peer bound to another channel");
            }
        }
        if !a.channels.contains_key(&number) && a.channels.len() >= MAX_CHANNELS_PER_ALLOCATION {
            return MessageBuilder::error(m, 508, "Insufficient Capacity: too many channels");
        }
        let expires = now + self.cfg.channel_lifetime;
        if let Some(a) = self.allocs.get_mut(&id) {
            let newly = match a.channels.get_mut(&number) {
                Some(c) => {
                    let was_bound = c.bound;
                    c.expires = expires;
                    c.bound = true;
                    !was_bound
                }
                None => {
                    a.channels.insert(
                        number,
                        Channel {
                            peer,
                            expires,
                            bound: true,
                        },
                    );
                    a.peer_channels.insert(peer, number);
                    true
                }
            };
            if newly {
                self.stats.live_channel_bindings(1);
            }
            self.arm_allocation_timer(id, expires);
        }
        self.install_permission(id, peer.ip(), now);
        self.claim_admitted(id, peer);
        MessageBuilder::success(m)
    }
}
