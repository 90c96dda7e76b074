//! Allocate (RFC 8656 §7) and Refresh (§8): relayed transport addresses, lifetimes, EVEN-PORT
//! reservations (§7.2), the allocation quotas, and TCP allocations (RFC 6062 §5.1).

use super::shared::Reservation;
use super::smallmap::SmallMap;
use super::{
    AddressFamily, Allocation, EndReason, Holder, Relay, RelayAllocator, RelayError, RelayRequest,
    RelayTransport, TimerKey, Traffic, TurnCore, ATTR_ADDITIONAL_ADDRESS_FAMILY,
    ATTR_ADDRESS_ERROR_CODE, ATTR_MOBILITY_TICKET,
};
use crate::auth::{AuthOk, Credentials};
use crate::stats::MobilityRefusal;
use crate::stats::QuotaScope;
use crate::FiveTuple;
use rtc_stun::attributes::*;
use rtc_stun::message::Message;
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_proto::msg::{attr, MessageBuilder};

impl TurnCore {
    fn lifetime(&self, m: &Message) -> Duration {
        let requested = attr(m, ATTR_LIFETIME)
            .filter(|v| v.len() == 4)
            .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
        match requested {
            None => self.cfg.default_lifetime.min(self.cfg.max_lifetime),
            Some(0) => Duration::ZERO,
            Some(s) => Duration::from_secs(s as u64)
                .min(self.cfg.max_lifetime)
                .max(self.cfg.default_lifetime.min(self.cfg.max_lifetime)),
        }
    }

    /// RFC 8656 §7.2.
    pub(super) fn allocate(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        now: Instant,
        relays: &mut dyn RelayAllocator,
    ) -> MessageBuilder {
        if self.by_tuple.contains_key(&tuple) {
            return MessageBuilder::error(m, 437, "Allocation Mismatch");
        }
        let transport = match attr(m, ATTR_REQUESTED_TRANSPORT) {
            Some(v) if v.len() == 4 && v[0] == 17 => RelayTransport::Udp,
            Some(v) if v.len() == 4 && v[0] == 6 => RelayTransport::Tcp,
            Some(v) if v.len() == 4 => {
                return MessageBuilder::error(m, 442, "Unsupported Transport Protocol")
            }
            _ => return MessageBuilder::error(m, 400, "Bad Request: REQUESTED-TRANSPORT"),
        };
        // RFC 8016 §3.1.2: an empty MOBILITY-TICKET asks for mobility.
        let mobile = match attr(m, ATTR_MOBILITY_TICKET) {
            None => false,
            Some(v) => {
                let refused = if self.cfg.mobility.is_none() {
                    Some(MobilityRefusal::Disabled)
                } else if tuple.transport != crate::Transport::Udp {
                    Some(MobilityRefusal::Transport)
                } else if !v.is_empty() {
                    Some(MobilityRefusal::BadTicket)
                } else {
                    None
                };
                if let Some(r) = refused {
                    self.stats.mobility_refusal(r);
                    return MessageBuilder::error(m, r.error_code(), r.reason_phrase());
                }
                true
            }
        };
        let token = attr(m, ATTR_RESERVATION_TOKEN);
        let even_port = attr(m, ATTR_EVEN_PORT);
        let req_family = attr(m, ATTR_REQUESTED_ADDRESS_FAMILY);
        let add_family = attr(m, ATTR_ADDITIONAL_ADDRESS_FAMILY);
        if transport == RelayTransport::Tcp {
            // RFC 6062 §5.1: a TCP allocation is asked for over TCP or TLS, without the
            // UDP-only attributes. One relayed address (no dual allocation).
            if !tuple.transport.is_stream() {
                return MessageBuilder::error(
                    m,
                    400,
                    "Bad Request: TCP allocations need a TCP or TLS connection",
                );
            }
            if token.is_some()
                || even_port.is_some()
                || add_family.is_some()
                || m.contains(ATTR_DONT_FRAGMENT)
            {
                return MessageBuilder::error(m, 400, "Bad Request: not for a TCP allocation");
            }
        }
        if token.is_some() && (even_port.is_some() || req_family.is_some() || add_family.is_some())
        {
            return MessageBuilder::error(m, 400, "Bad Request");
        }
        if req_family.is_some() && add_family.is_some() {
            return MessageBuilder::error(m, 400, "Bad Request");
        }
        let token: Option<[u8; 8]> = match token {
            None => None,
            Some(v) => match <[u8; 8]>::try_from(v) {
                Ok(t) => Some(t),
                Err(_) => return MessageBuilder::error(m, 400, "Bad Request"),
            },
        };
        let (even, reserve) = match even_port {
            None => (false, false),
            Some([b, ..]) => (true, b & 0x80 != 0),
            Some([]) => return MessageBuilder::error(m, 400, "Bad Request"),
        };
        let family = match req_family {
            None => AddressFamily::V4,
            Some([1, ..]) => AddressFamily::V4,
            Some([2, ..]) => AddressFamily::V6,
            Some(_) => return MessageBuilder::error(m, 440, "Address Family not Supported"),
        };
        let additional = match add_family {
            None => None,
            Some([2, ..]) => Some(AddressFamily::V6),
            Some(_) => return MessageBuilder::error(m, 400, "Bad Request"),
        };
        // With a reservation token the family is that of the reserved socket; the allocator
        // knows it.
        // Draining or loaded: send the client to another server (RFC 8489 §10), after
        // authentication so the 300 is signed and cannot be forged to hijack clients.
        if let Some(alt) = self.alternate_for(tuple.client) {
            self.stats.alternate_redirect();
            let mut b = MessageBuilder::error(m, 300, "Try Alternate");
            b.address(ATTR_ALTERNATE_SERVER, alt);
            return b;
        }
        let holder = Holder {
            user: Credentials::quota_name(&auth.username).to_string(),
            ip: canonical_ip(tuple.client.ip()),
        };
        if let Err(b) = self.take_quota(m, &holder) {
            return b;
        }
        // The reserved port counts against the same quotas until redeemed or expired.
        if reserve {
            if let Err(b) = self.take_quota(m, &holder) {
                self.shared.return_quota(&holder);
                return b;
            }
        }
        let give_back = |core: &Self| {
            core.shared.return_quota(&holder);
            if reserve {
                core.shared.return_quota(&holder);
            }
        };
        let dont_fragment = m.contains(ATTR_DONT_FRAGMENT);
        let first = relays.allocate(&RelayRequest {
            transport,
            family,
            even_port: even,
            reserve_next: reserve,
            reservation_token: token,
            dont_fragment,
        });
        let grant = match first {
            Ok(g) => g,
            Err(e) => {
                give_back(self);
                return match e {
                    RelayError::FamilyUnsupported => {
                        MessageBuilder::error(m, 440, "Address Family not Supported")
                    }
                    _ => MessageBuilder::error(m, 508, "Insufficient Capacity"),
                };
            }
        };
        // A redeemed reservation gives its quota unit back (this allocation holds its own).
        if let Some(t) = token {
            if let Some(r) = self.shared.take_reservation(&t, None) {
                self.shared.return_quota(&r.holder);
                self.stats.live_reservations(-1);
            }
        }
        match (reserve, grant.reservation_token) {
            (true, Some(t)) => {
                let expires = now + self.cfg.reservation_lifetime;
                self.shared.add_reservation(
                    t,
                    Reservation {
                        holder: holder.clone(),
                        expires,
                    },
                );
                self.stats.live_reservations(1);
                self.timers.schedule(expires, TimerKey::Reservation(t));
            }
            (true, None) => self.shared.return_quota(&holder),
            _ => {}
        }
        let mut granted = vec![(grant.local, grant.multiplexed)];
        let mut address_error = None;
        if let Some(f) = additional {
            match relays.allocate(&RelayRequest {
                transport,
                family: f,
                even_port: false,
                reserve_next: false,
                reservation_token: None,
                dont_fragment,
            }) {
                Ok(g) => granted.push((g.local, g.multiplexed)),
                Err(RelayError::FamilyUnsupported) => address_error = Some(440u16),
                Err(_) => address_error = Some(508u16),
            }
        }
        let lifetime = self.lifetime(m);
        let lifetime = if lifetime.is_zero() {
            self.cfg.default_lifetime.min(self.cfg.max_lifetime)
        } else {
            lifetime
        };
        let relays_v: Vec<Relay> = granted
            .iter()
            .map(|&(local, multiplexed)| Relay {
                local,
                advertised: self.advertised(local),
                multiplexed,
            })
            .collect();
        let mut live: Vec<SocketAddr> = Vec::new();
        for r in &relays_v {
            live.push(r.local);
            live.push(r.advertised);
        }
        self.shared.add_relays(&live);

        let mut b = MessageBuilder::success(m);
        for r in &relays_v {
            b.xor_address(ATTR_XOR_RELAYED_ADDRESS, r.advertised);
        }
        if let Some(code) = address_error {
            let reason = if code == 440 {
                "Address Family not Supported"
            } else {
                "Insufficient Capacity"
            };
            let mut v = vec![2u8, 0, (code / 100) as u8, (code % 100) as u8];
            v.extend_from_slice(reason.as_bytes());
            b.raw(ATTR_ADDRESS_ERROR_CODE, &v);
        }
        b.raw(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        if let Some(t) = grant.reservation_token {
            b.raw(ATTR_RESERVATION_TOKEN, &t);
        }
        b.xor_address(ATTR_XORMAPPED_ADDRESS, tuple.client);

        let id = self.shared.next_allocation_id();
        let mut alloc = Allocation {
            tuple,
            username: auth.username.clone(),
            created: now,
            started_unix_secs: self.unix_secs(now),
            to_peer: Cell::new(Traffic::default()),
            from_peer: Cell::new(Traffic::default()),
            holder,
            relays: relays_v,
            expires: now + lifetime,
            permissions: SmallMap::default(),
            channels: SmallMap::default(),
            peer_channels: SmallMap::default(),
            allocate_tid: m.transaction_id,
            allocate_response: Vec::new(),
            bandwidth: None,
            bandwidth_override_bps: None,
            mobility: mobile.then(Box::default),
            tcp: (transport == RelayTransport::Tcp).then(Arc::default),
            endpoints: Vec::new(),
        };
        alloc.bandwidth = self.new_allocation_limits(&auth.username, alloc.tcp.as_deref(), now);
        self.stats
            .live_allocations(tuple.transport.as_str(), alloc.family_label(), 1);
        for r in &alloc.relays {
            if r.multiplexed {
                self.multiplexed_relays.insert(r.local);
            } else {
                self.by_relay.insert(r.local, id);
            }
        }
        self.by_tuple.insert(tuple, id);
        self.shared.allocations.fetch_add(1, Ordering::Relaxed);
        self.timers
            .schedule(alloc.expires, TimerKey::Allocation(id));
        tracing::info!(
            user = %alloc.username,
            client = %tuple.client,
            transport = tuple.transport.as_str(),
            relay_transport = if alloc.tcp.is_some() { "tcp" } else { "udp" },
            relay = ?alloc.relays.iter().map(|r| r.advertised).collect::<Vec<_>>(),
            lifetime_secs = lifetime.as_secs(),
            "allocation created"
        );
        self.allocs.insert(id, Box::new(alloc));
        if let Some(ticket) = self.issue_ticket(id) {
            b.raw(ATTR_MOBILITY_TICKET, &ticket);
        }
        b
    }

    /// One unit of every quota for `h`, or the error response (486 per user or per client IP,
    /// 508 in total or while draining), counted by scope.
    fn take_quota(&mut self, m: &Message, h: &Holder) -> Result<(), MessageBuilder> {
        let stats = &mut self.stats;
        self.shared.take_quota(h, &self.cfg).map_err(|r| {
            stats.quota_rejection(r);
            match r {
                QuotaScope::User | QuotaScope::Ip => {
                    MessageBuilder::error(m, 486, "Allocation Quota Reached")
                }
                QuotaScope::Total => MessageBuilder::error(m, 508, "Insufficient Capacity"),
                QuotaScope::Draining => {
                    MessageBuilder::error(m, 508, "Insufficient Capacity: draining")
                }
            }
        })
    }

    /// The alternate server for a new allocation of `client`, when this server drains or is at
    /// `alternate_over_allocations`: one of the configured servers of the client's family,
    /// chosen by the client's address so a client retrying lands on the same one.
    fn alternate_for(&self, client: SocketAddr) -> Option<SocketAddr> {
        let cfg = &self.cfg;
        if cfg.alternate_servers.is_empty() {
            return None;
        }
        let loaded = cfg.alternate_over_allocations > 0
            && self.shared.total_allocations() >= cfg.alternate_over_allocations;
        if !self.shared.is_draining() && !loaded {
            return None;
        }
        let family = AddressFamily::of(canonical_ip(client.ip()));
        let same: Vec<SocketAddr> = cfg
            .alternate_servers
            .iter()
            .copied()
            .filter(|a| AddressFamily::of(a.ip()) == family)
            .collect();
        let pool = if same.is_empty() {
            &cfg.alternate_servers[..]
        } else {
            &same[..]
        };
        let h = match canonical_ip(client.ip()) {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => u128::from(v6) as usize,
        } ^ client.port() as usize;
        pool.get(h % pool.len()).copied()
    }

    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        match self.cfg.external_ips.get(&local.ip()) {
            Some(ip) => SocketAddr::new(*ip, local.port()),
            None => local,
        }
    }

    /// RFC 8656 §8.
    pub(super) fn refresh(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        now: Instant,
        relays: &mut dyn RelayAllocator,
    ) -> MessageBuilder {
        let owner = match attr(m, ATTR_MOBILITY_TICKET) {
            None => self.owned_allocation(tuple, m, auth),
            Some(v) => self.mobility_refresh(tuple, m, v, auth),
        };
        let id = match owner {
            Ok(id) => id,
            Err(b) => return b,
        };
        if let Some(v) = attr(m, ATTR_REQUESTED_ADDRESS_FAMILY) {
            let fam = match v.first() {
                Some(1) => AddressFamily::V4,
                Some(2) => AddressFamily::V6,
                _ => return MessageBuilder::error(m, 440, "Address Family not Supported"),
            };
            if self
                .allocs
                .get(&id)
                .and_then(|a| a.relay_for(fam))
                .is_none()
            {
                return MessageBuilder::error(m, 443, "Peer Address Family Mismatch");
            }
        }
        let lifetime = self.lifetime(m);
        let mut b = MessageBuilder::success(m);
        if lifetime.is_zero() {
            self.delete_allocation(id, relays, EndReason::Refresh);
        } else if let Some(a) = self.allocs.get_mut(&id) {
            a.expires = now + lifetime;
            // A later expiry is found when the timer fires early; an earlier one moves it.
            let expires = a.expires;
            self.arm_allocation_timer(id, expires);
            self.fast_path.touch(id);
        }
        b.raw(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        // RFC 8016 §3.2: a new ticket in every Refresh success of a mobile allocation.
        if !lifetime.is_zero() {
            if let Some(ticket) = self.issue_ticket(id) {
                b.raw(ATTR_MOBILITY_TICKET, &ticket);
            }
        }
        b
    }
}

/// An IPv4-mapped IPv6 address counts as its IPv4 address (per-IP quota).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
