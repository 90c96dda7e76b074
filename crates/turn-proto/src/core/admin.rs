//! What an operator sees and does through the admin API: each live allocation with its
//! accounting figures ([`AllocationInfo`]), and ending allocations by id or by user (their
//! client's next request on that 5-tuple gets 437 Allocation Mismatch, RFC 8656 §8).

use super::{RelayAllocator, TurnCore};
use crate::stats::EndReason;
use crate::FiveTuple;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Application data relayed one way: packets and payload bytes (STUN and ChannelData framing
/// not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl Traffic {
    /// Counts one packet of `len` payload bytes into `cell`.
    pub(super) fn count(cell: &Cell<Traffic>, len: usize) {
        let t = cell.get();
        cell.set(Traffic {
            packets: t.packets + 1,
            bytes: t.bytes + len as u64,
        });
    }
}

/// A permission (RFC 8656 §9): the peer IP and the seconds it has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PermissionInfo {
    /// The peer IP address.
    pub peer: IpAddr,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
}

/// A channel binding (RFC 8656 §12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The channel number (0x4000-0x4FFF).
    pub number: u16,
    /// The peer transport address.
    pub peer: SocketAddr,
    /// Seconds until the binding expires (0 while in its reuse delay).
    pub expires_in_secs: u64,
}

/// One live allocation as the admin API and the accounting record show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationInfo {
    /// Unique across the workers of one server.
    pub id: u64,
    /// The client's 5-tuple (client address, server address, transport).
    pub tuple: FiveTuple,
    /// The relayed transport addresses, as advertised to the client (one, or two with RFC
    /// 6156 dual allocation).
    pub relayed: Vec<SocketAddr>,
    /// Their transport: UDP, or TCP for an RFC 6062 allocation.
    pub relay_transport: super::RelayTransport,
    /// The authenticated user name.
    pub user: String,
    /// Start, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// Seconds since the allocation was created.
    pub age_secs: u64,
    /// Seconds until it expires unless refreshed.
    pub lifetime_left_secs: u64,
    /// Installed permissions.
    pub permissions: Vec<PermissionInfo>,
    /// Bound channels (and those in their reuse delay).
    pub channels: Vec<ChannelInfo>,
    /// Relayed client -> peer (for a TCP allocation, RFC 6062: the bytes of its data
    /// connections, and one packet per read from the client's data connection).
    pub to_peer: Traffic,
    /// Relayed peer -> client.
    pub from_peer: Traffic,
    /// The per-allocation bandwidth cap that applies to it, bits per second of payload each
    /// way (0: none); user and total caps apply besides.
    pub bandwidth_bps: u64,
    /// True when `bandwidth_bps` is its own (admin API), not the server-wide one.
    pub bandwidth_override: bool,
    /// Times the allocation moved to a new client 5-tuple (RFC 8016 mobility); `tuple` is
    /// the current one.
    pub moves: u32,
}

/// Which allocations to list: every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllocationFilter {
    /// The allocation id.
    pub id: Option<u64>,
    /// The authenticated user name, exactly.
    pub user: Option<String>,
    /// The client's IP address (any port).
    pub client_ip: Option<IpAddr>,
    /// The client's transport address, exactly.
    pub client: Option<SocketAddr>,
}

impl AllocationFilter {
    fn matches(&self, id: u64, user: &str, tuple: &FiveTuple) -> bool {
        self.id.is_none_or(|i| i == id)
            && self.user.as_deref().is_none_or(|u| u == user)
            && self.client_ip.is_none_or(|ip| ip == tuple.client.ip())
            && self.client.is_none_or(|c| c == tuple.client)
    }
}

/// `datagrams` plus what the data connections of a TCP allocation relayed ((reads, bytes)).
fn with_stream(datagrams: Traffic, stream: Option<(u64, u64)>) -> Traffic {
    let (packets, bytes) = stream.unwrap_or((0, 0));
    Traffic {
        packets: datagrams.packets + packets,
        bytes: datagrams.bytes + bytes,
    }
}

impl TurnCore {
    /// The allocations matching `filter`, at most `limit`, in id order, as of `now`.
    pub fn allocations(
        &self,
        filter: &AllocationFilter,
        limit: usize,
        now: Instant,
    ) -> Vec<AllocationInfo> {
        let mut ids: Vec<u64> = self
            .allocs
            .iter()
            .filter(|(id, a)| filter.matches(**id, &a.username, &a.tuple))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.into_iter()
            .filter_map(|id| self.allocation_info(id, now))
            .collect()
    }

    /// Allocation `id` as of `now`, when it lives on this core.
    pub fn allocation_info(&self, id: u64, now: Instant) -> Option<AllocationInfo> {
        let a = self.allocs.get(&id)?;
        let left = |t: Instant| t.saturating_duration_since(now).as_secs();
        let mut permissions: Vec<PermissionInfo> = a
            .permissions
            .iter()
            .map(|(ip, t)| PermissionInfo {
                peer: *ip,
                expires_in_secs: left(*t),
            })
            .collect();
        permissions.sort_by_key(|p| p.peer);
        let mut channels: Vec<ChannelInfo> = a
            .channels
            .iter()
            .map(|(n, c)| ChannelInfo {
                number: *n,
                peer: c.peer,
                expires_in_secs: if c.bound { left(c.expires) } else { 0 },
            })
            .collect();
        channels.sort_by_key(|c| c.number);
        let (bandwidth_bps, bandwidth_override) = self.allocation_cap(id);
        Some(AllocationInfo {
            id,
            tuple: a.tuple,
            relayed: a.relays.iter().map(|r| r.advertised).collect(),
            relay_transport: if a.tcp.is_some() {
                super::RelayTransport::Tcp
            } else {
                super::RelayTransport::Udp
            },
            user: a.username.clone(),
            started_unix_secs: a.started_unix_secs,
            age_secs: now.saturating_duration_since(a.created).as_secs(),
            lifetime_left_secs: left(a.expires),
            permissions,
            channels,
            to_peer: with_stream(a.to_peer.get(), a.tcp.as_ref().map(|t| t.to_peer())),
            from_peer: with_stream(a.from_peer.get(), a.tcp.as_ref().map(|t| t.from_peer())),
            bandwidth_bps,
            bandwidth_override,
            moves: a.mobility.as_ref().map_or(0, |m| m.moves),
        })
    }

    /// Ends allocation `id` if it lives on this core, returning its final record. The
    /// client's next request on that 5-tuple gets 437.
    pub fn end_allocation(
        &mut self,
        id: u64,
        now: Instant,
        relays: &mut dyn RelayAllocator,
    ) -> Option<AllocationInfo> {
        self.last_now = self.last_now.max(now);
        self.delete_allocation(id, relays, EndReason::Admin)
    }

    /// Ends every allocation of `user` on this core, returning their final records.
    pub fn end_user_allocations(
        &mut self,
        user: &str,
        now: Instant,
        relays: &mut dyn RelayAllocator,
    ) -> Vec<AllocationInfo> {
        self.last_now = self.last_now.max(now);
        let mut ids: Vec<u64> = self
            .allocs
            .iter()
            .filter(|(_, a)| a.username == user)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|id| self.delete_allocation(id, relays, EndReason::Admin))
            .collect()
    }
}
