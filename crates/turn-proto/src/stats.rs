//! What a TURN core counts: plain integers owned by the core (no atomics, no Prometheus). The
//! service reads [`TurnStats`] after the calls of a wake-up and folds what changed into its
//! metrics; tests read it directly.
//!
//! Every reason is an enum with an `ALL` list, so a service can export every series as zero
//! from the start.

use crate::policy::DenyReason;
use crate::Transport;
use std::collections::HashMap;
use stun_proto::binding::{BindingDrop, BindingResult};

/// Why the core dropped a packet without answering (`turn_dropped_packets_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Looks like STUN or ChannelData but does not decode.
    Malformed,
    /// Neither STUN nor ChannelData.
    NotStun,
    /// An indication other than Send.
    UnexpectedIndication,
    /// A response or error response sent to the server.
    UnexpectedResponse,
    /// An unauthenticated request over its source's response rate (reflection bound).
    UnauthRateLimited,
    /// A Send indication to a peer the address policy refuses.
    PeerDenied,
    /// Data for a 5-tuple or relayed address with no allocation.
    NoAllocation,
    /// Data to or from a peer with no permission (RFC 8656 §9).
    NoPermission,
    /// ChannelData on an unbound channel number.
    NoChannel,
    /// A peer of the other address family than the relayed transport address.
    FamilyMismatch,
    /// Peer data too large to frame for the client.
    TooLarge,
    /// Relayed data over its allocation's bandwidth cap.
    BandwidthAllocation,
    /// Relayed data over its user's bandwidth cap.
    BandwidthUser,
    /// Relayed data over the server's total bandwidth cap.
    BandwidthTotal,
    /// A Send indication or ChannelData for a TCP allocation (RFC 6062 §5.1: data goes over
    /// the data connections, not the control connection).
    TcpAllocation,
}

impl DropReason {
    /// Its slot in the counters: the position in [`DropReason::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [DropReason; 15] = [
        DropReason::Malformed,
        DropReason::NotStun,
        DropReason::UnexpectedIndication,
        DropReason::UnexpectedResponse,
        DropReason::UnauthRateLimited,
        DropReason::PeerDenied,
        DropReason::NoAllocation,
        DropReason::NoPermission,
        DropReason::NoChannel,
        DropReason::FamilyMismatch,
        DropReason::TooLarge,
        DropReason::BandwidthAllocation,
        DropReason::BandwidthUser,
        DropReason::BandwidthTotal,
        DropReason::TcpAllocation,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotStun => "not_stun",
            DropReason::UnexpectedIndication => "unexpected_indication",
            DropReason::UnexpectedResponse => "unexpected_response",
            DropReason::UnauthRateLimited => "unauth_rate_limited",
            DropReason::PeerDenied => "peer_denied",
            DropReason::NoAllocation => "no_allocation",
            DropReason::NoPermission => "no_permission",
            DropReason::NoChannel => "no_channel",
            DropReason::FamilyMismatch => "family_mismatch",
            DropReason::TooLarge => "too_large",
            DropReason::BandwidthAllocation => "bandwidth_allocation",
            DropReason::BandwidthUser => "bandwidth_user",
            DropReason::BandwidthTotal => "bandwidth_total",
            DropReason::TcpAllocation => "tcp_allocation",
        }
    }
}

/// Why a request failed authentication (`turn_auth_failures_total{reason}`, RFC 8489 §9.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthFailure {
    /// MESSAGE-INTEGRITY(-SHA256) does not match any candidate key.
    BadIntegrity,
    /// No such static user, and not a REST username.
    UnknownUser,
    /// A REST username whose expiry has passed.
    Expired,
    /// The nonce is not one this server minted for this 5-tuple, or it has expired (438).
    StaleNonce,
    /// REALM differs from the server's.
    WrongRealm,
    /// Missing or malformed authentication attributes (400).
    BadRequest,
    /// PASSWORD-ALGORITHM(S) do not match what the server offered (400).
    AlgorithmMismatch,
}

impl AuthFailure {
    /// Its slot in the counters: the position in [`AuthFailure::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [AuthFailure; 7] = [
        AuthFailure::BadIntegrity,
        AuthFailure::UnknownUser,
        AuthFailure::Expired,
        AuthFailure::StaleNonce,
        AuthFailure::WrongRealm,
        AuthFailure::BadRequest,
        AuthFailure::AlgorithmMismatch,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::WrongRealm => "wrong_realm",
            AuthFailure::BadRequest => "bad_request",
            AuthFailure::AlgorithmMismatch => "algorithm_mismatch",
        }
    }
}

/// Which limit refused an allocation (`turn_quota_rejections_total{scope}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaScope {
    /// Per-user quota (486).
    User,
    /// Per-client-IP quota (486).
    Ip,
    /// Total quota or draining (508).
    Total,
}

impl QuotaScope {
    /// Its slot in the counters: the position in [`QuotaScope::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every scope.
    pub const ALL: [QuotaScope; 3] = [QuotaScope::User, QuotaScope::Ip, QuotaScope::Total];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaScope::User => "user",
            QuotaScope::Ip => "ip",
            QuotaScope::Total => "total",
        }
    }
}

/// Which bandwidth cap (`turn_bandwidth_cap_bps{scope}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BandwidthScope {
    /// Per allocation.
    Allocation,
    /// Per user (all the user's allocations).
    User,
    /// All allocations.
    Total,
}

impl BandwidthScope {
    /// Its slot in the counters: the position in [`BandwidthScope::ALL`], which lists the
    /// variants in declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every scope.
    pub const ALL: [BandwidthScope; 3] = [
        BandwidthScope::Allocation,
        BandwidthScope::User,
        BandwidthScope::Total,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            BandwidthScope::Allocation => "allocation",
            BandwidthScope::User => "user",
            BandwidthScope::Total => "total",
        }
    }
}

/// Why an allocation ended (`turn_allocations_ended_total{reason}` and the accounting record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Refreshed with LIFETIME 0 (RFC 8656 §8).
    Refresh,
    /// Its lifetime ran out.
    Expired,
    /// Its TCP/TLS connection closed (RFC 8656 §5).
    ConnectionClosed,
    /// Ended through the admin API.
    Admin,
    /// The server stopped.
    Shutdown,
}

impl EndReason {
    /// Its slot in the counters: the position in [`EndReason::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [EndReason; 5] = [
        EndReason::Refresh,
        EndReason::Expired,
        EndReason::ConnectionClosed,
        EndReason::Admin,
        EndReason::Shutdown,
    ];

    /// The metrics label and the accounting record's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Refresh => "refresh",
            EndReason::Expired => "expired",
            EndReason::ConnectionClosed => "connection_closed",
            EndReason::Admin => "admin",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// Why a MOBILITY-TICKET was refused (`turn_mobility_refusals_total{reason}`, RFC 8016 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MobilityRefusal {
    /// Mobility is off (`mobility = false`): 405 Mobility Forbidden.
    Disabled,
    /// Not over UDP: a stream or DTLS allocation ends with its connection (405).
    Transport,
    /// A ticket that is malformed, forged or modified, or a non-empty one in an Allocate (400).
    BadTicket,
    /// A genuine ticket whose allocation is gone or lives on no worker here (437).
    UnknownAllocation,
    /// A ticket issued before the allocation's last move (437): replay of an old ticket.
    StaleTicket,
    /// The Refresh was signed by another user than the allocation's (441).
    WrongUser,
    /// The new 5-tuple already holds another allocation (437).
    TupleInUse,
}

impl MobilityRefusal {
    /// Its slot in the counters: the position in [`MobilityRefusal::ALL`], which lists the
    /// variants in declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [MobilityRefusal; 7] = [
        MobilityRefusal::Disabled,
        MobilityRefusal::Transport,
        MobilityRefusal::BadTicket,
        MobilityRefusal::UnknownAllocation,
        MobilityRefusal::StaleTicket,
        MobilityRefusal::WrongUser,
        MobilityRefusal::TupleInUse,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            MobilityRefusal::Disabled => "disabled",
            MobilityRefusal::Transport => "transport",
            MobilityRefusal::BadTicket => "bad_ticket",
            MobilityRefusal::UnknownAllocation => "unknown_allocation",
            MobilityRefusal::StaleTicket => "stale_ticket",
            MobilityRefusal::WrongUser => "wrong_user",
            MobilityRefusal::TupleInUse => "tuple_in_use",
        }
    }

    /// The STUN error code of the answer (RFC 8016 §3.1.2, §3.2.2).
    pub fn error_code(self) -> u16 {
        match self {
            MobilityRefusal::Disabled | MobilityRefusal::Transport => 405,
            MobilityRefusal::BadTicket => 400,
            MobilityRefusal::UnknownAllocation
            | MobilityRefusal::StaleTicket
            | MobilityRefusal::TupleInUse => 437,
            MobilityRefusal::WrongUser => 441,
        }
    }

    /// The reason phrase of the answer.
    pub fn reason_phrase(self) -> &'static str {
        match self {
            MobilityRefusal::Disabled | MobilityRefusal::Transport => "Mobility Forbidden",
            MobilityRefusal::BadTicket => "Bad Request: MOBILITY-TICKET",
            MobilityRefusal::UnknownAllocation
            | MobilityRefusal::StaleTicket
            | MobilityRefusal::TupleInUse => "Allocation Mismatch",
            MobilityRefusal::WrongUser => "Wrong Credentials",
        }
    }
}

/// What happened to a peer TCP connection of a TCP allocation (RFC 6062)
/// (`turn_peer_tcp_events_total{event}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TcpEvent {
    /// Connect (§5.2): the server's connection to the peer succeeded; CONNECTION-ID sent.
    Connected,
    /// Connect: the connection to the peer failed or timed out (447).
    ConnectFailed,
    /// A peer connected to a relayed transport address with a permission (§5.3);
    /// ConnectionAttempt sent.
    Accepted,
    /// ConnectionBind (§5.4) joined a client data connection to a peer connection.
    Bound,
    /// No ConnectionBind within the bind timeout (30 s): the peer connection was closed.
    BindTimeout,
    /// ConnectionBind naming no connection waiting to be bound (unknown, expired, already
    /// bound, or another user's) (400).
    BindRejected,
    /// A peer connected to a relayed transport address without a permission for its IP
    /// (§5.3): closed.
    NoPermission,
    /// A peer refused by the peer policy: Connect answered 403, an incoming connection closed.
    PeerDenied,
    /// Over the per-allocation or server-wide cap on peer connections: Connect answered 403
    /// (RFC 6062 §5.2), an incoming connection closed.
    Limit,
    /// Connect to a peer this allocation is already connecting or connected to (446).
    Duplicate,
    /// A peer connection ended (closed by either side, or its allocation ended).
    Closed,
}

impl TcpEvent {
    /// Its slot in the counters: the position in [`TcpEvent::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every event.
    pub const ALL: [TcpEvent; 11] = [
        TcpEvent::Connected,
        TcpEvent::ConnectFailed,
        TcpEvent::Accepted,
        TcpEvent::Bound,
        TcpEvent::BindTimeout,
        TcpEvent::BindRejected,
        TcpEvent::NoPermission,
        TcpEvent::PeerDenied,
        TcpEvent::Limit,
        TcpEvent::Duplicate,
        TcpEvent::Closed,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpEvent::Connected => "connected",
            TcpEvent::ConnectFailed => "connect_failed",
            TcpEvent::Accepted => "accepted",
            TcpEvent::Bound => "bound",
            TcpEvent::BindTimeout => "bind_timeout",
            TcpEvent::BindRejected => "bind_rejected",
            TcpEvent::NoPermission => "no_permission",
            TcpEvent::PeerDenied => "peer_denied",
            TcpEvent::Limit => "limit",
            TcpEvent::Duplicate => "duplicate",
            TcpEvent::Closed => "closed",
        }
    }
}

/// Relayed traffic, counted on every data packet (the only fields the per-packet path touches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Packets relayed client -> peer.
    pub c2p_packets: u64,
    /// Payload bytes relayed client -> peer.
    pub c2p_bytes: u64,
    /// Packets relayed peer -> client.
    pub p2c_packets: u64,
    /// Payload bytes relayed peer -> client.
    pub p2c_bytes: u64,
}

/// Everything else a core counts. Counters only grow; the `live_*` fields are what exists now
/// on this core (gauges). `changes` grows with every update, so a reader knows whether to look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Bumped on every change below.
    pub changes: u64,
    /// Dropped packets, indexed like [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Authentication failures, indexed like [`AuthFailure::ALL`].
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// Peers refused by the address policy, indexed like [`DenyReason::ALL`].
    pub peer_denied: [u64; DenyReason::ALL.len()],
    /// Allocations refused by a quota, indexed like [`QuotaScope::ALL`].
    pub quota_rejections: [u64; QuotaScope::ALL.len()],
    /// Allocations ended, indexed like [`EndReason::ALL`].
    pub allocations_ended: [u64; EndReason::ALL.len()],
    /// Allocate requests sent to an alternate server (300 Try Alternate).
    pub alternate_redirects: u64,
    /// Allocations moved to a new client 5-tuple (RFC 8016).
    pub mobility_moves: u64,
    /// MOBILITY-TICKETs refused, indexed like [`MobilityRefusal::ALL`].
    pub mobility_refusals: [u64; MobilityRefusal::ALL.len()],
    /// Requests answered, by (method, result) label (`allocate`, `error_437`...).
    pub requests: HashMap<(&'static str, &'static str), u64>,
    /// Allocate requests by result label (also `retransmission`).
    pub allocation_requests: HashMap<&'static str, u64>,
    /// Binding requests answered, by transport and result.
    pub binding_requests: HashMap<(Transport, BindingResult), u64>,
    /// Binding requests dropped, by reason.
    pub binding_dropped: HashMap<BindingDrop, u64>,
    /// Live allocations by (transport label, family label).
    pub live_allocations: HashMap<(&'static str, &'static str), i64>,
    /// Live permissions.
    pub live_permissions: i64,
    /// Live channel bindings.
    pub live_channel_bindings: i64,
    /// EVEN-PORT reservations not yet redeemed (RFC 8656 §7.2).
    pub live_reservations: i64,
    /// The bandwidth caps this core applies, bits per second, indexed like
    /// [`BandwidthScope::ALL`] (0: none).
    pub bandwidth_caps_bps: [u64; BandwidthScope::ALL.len()],
    /// Peer TCP connection events (RFC 6062), indexed like [`TcpEvent::ALL`].
    pub tcp_events: [u64; TcpEvent::ALL.len()],
    /// Peer TCP connections (connecting, waiting for ConnectionBind, or bound) this core
    /// opened minus those it removed; summed over the cores it is the server's count.
    pub live_peer_connections: i64,
}

/// The counters of one TURN core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Relayed packets and bytes.
    pub relay: RelayStats,
    /// Requests, failures, drops, and what is live.
    pub control: ControlStats,
}

impl TurnStats {
    /// Counts a dropped packet.
    pub fn drop_packet(&mut self, reason: DropReason) {
        self.control.dropped[reason.index()] += 1;
        self.control.changes += 1;
    }

    /// Dropped packets for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.control.dropped[reason.index()]
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&mut self, reason: AuthFailure) {
        self.control.auth_failures[reason.index()] += 1;
        self.control.changes += 1;
    }

    /// Authentication failures for `reason` so far.
    pub fn auth_failures(&self, reason: AuthFailure) -> u64 {
        self.control.auth_failures[reason.index()]
    }

    /// Counts a peer refused by the policy.
    pub fn peer_denied(&mut self, reason: DenyReason) {
        self.control.peer_denied[reason.index()] += 1;
        self.control.changes += 1;
    }

    /// Counts an allocation refused by a quota.
    pub fn quota_rejection(&mut self, scope: QuotaScope) {
        self.control.quota_rejections[scope.index()] += 1;
        self.control.changes += 1;
    }

    /// Counts an answered request.
    pub fn request(&mut self, method: &'static str, result: &'static str) {
        *self.control.requests.entry((method, result)).or_default() += 1;
        self.control.changes += 1;
    }

    /// Counts an Allocate request's result.
    pub fn allocation_request(&mut self, result: &'static str) {
        *self.control.allocation_requests.entry(result).or_default() += 1;
        self.control.changes += 1;
    }

    /// Counts an answered Binding request.
    pub fn binding_request(&mut self, transport: Transport, result: BindingResult) {
        *self
            .control
            .binding_requests
            .entry((transport, result))
            .or_default() += 1;
        self.control.changes += 1;
    }

    /// Counts a dropped Binding request.
    pub fn binding_dropped(&mut self, reason: BindingDrop) {
        *self.control.binding_dropped.entry(reason).or_default() += 1;
        self.control.changes += 1;
    }

    /// Adds `delta` to the live allocations of (transport, family).
    pub fn live_allocations(&mut self, transport: &'static str, family: &'static str, delta: i64) {
        *self
            .control
            .live_allocations
            .entry((transport, family))
            .or_default() += delta;
        self.control.changes += 1;
    }

    /// Adds `delta` to the live permissions.
    pub fn live_permissions(&mut self, delta: i64) {
        self.control.live_permissions += delta;
        self.control.changes += 1;
    }

    /// Adds `delta` to the live channel bindings.
    pub fn live_channel_bindings(&mut self, delta: i64) {
        self.control.live_channel_bindings += delta;
        self.control.changes += 1;
    }

    /// Counts an allocation that ended.
    pub fn allocation_ended(&mut self, reason: EndReason) {
        self.control.allocations_ended[reason.index()] += 1;
        self.control.changes += 1;
    }

    /// Counts an Allocate answered with 300 Try Alternate.
    pub fn alternate_redirect(&mut self) {
        self.control.alternate_redirects += 1;
        self.control.changes += 1;
    }

    /// Records the bandwidth caps now applied (indexed like [`BandwidthScope::ALL`]).
    pub fn bandwidth_caps(&mut self, bps: [u64; BandwidthScope::ALL.len()]) {
        self.control.bandwidth_caps_bps = bps;
        self.control.changes += 1;
    }

    /// Counts an allocation moved to a new client 5-tuple.
    pub fn mobility_move(&mut self) {
        self.control.mobility_moves += 1;
        self.control.changes += 1;
    }

    /// Counts a refused MOBILITY-TICKET.
    pub fn mobility_refusal(&mut self, reason: MobilityRefusal) {
        self.control.mobility_refusals[reason.index()] += 1;
        self.control.changes += 1;
    }

    /// Refused MOBILITY-TICKETs for `reason` so far.
    pub fn mobility_refusals(&self, reason: MobilityRefusal) -> u64 {
        self.control.mobility_refusals[reason.index()]
    }

    /// Counts a peer TCP connection event (RFC 6062).
    pub fn tcp_event(&mut self, event: TcpEvent) {
        self.control.tcp_events[event.index()] += 1;
        self.control.changes += 1;
    }

    /// Peer TCP connection events of `event` so far.
    pub fn tcp_events(&self, event: TcpEvent) -> u64 {
        self.control.tcp_events[event.index()]
    }

    /// Adds `delta` to the live peer TCP connections.
    pub fn live_peer_connections(&mut self, delta: i64) {
        self.control.live_peer_connections += delta;
        self.control.changes += 1;
    }

    /// Adds `delta` to the unredeemed reservations.
    pub fn live_reservations(&mut self, delta: i64) {
        self.control.live_reservations += delta;
        self.control.changes += 1;
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_label() {
        let mut labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.extend(AuthFailure::ALL.iter().map(|r| r.as_str()));
        labels.extend(QuotaScope::ALL.iter().map(|r| r.as_str()));
        let n = labels.len();
        let mut mob: Vec<&str> = MobilityRefusal::ALL.iter().map(|r| r.as_str()).collect();
        mob.sort_unstable();
        mob.dedup();
        assert_eq!(mob.len(), MobilityRefusal::ALL.len());
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), n);
        // `turn_allocations_ended_total{reason}` is a family of its own.
        let mut ends: Vec<&str> = EndReason::ALL.iter().map(|r| r.as_str()).collect();
        ends.sort_unstable();
        ends.dedup();
        assert_eq!(ends.len(), EndReason::ALL.len());
    }

    #[test]
    fn all_lists_are_in_declaration_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in AuthFailure::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in QuotaScope::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in TcpEvent::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in EndReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in DenyReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in BandwidthScope::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in MobilityRefusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn counts_land_in_their_own_slot() {
        let mut s = TurnStats::default();
        s.drop_packet(DropReason::NoChannel);
        s.drop_packet(DropReason::NoChannel);
        s.auth_failure(AuthFailure::StaleNonce);
        assert_eq!(s.dropped(DropReason::NoChannel), 2);
        assert_eq!(s.dropped(DropReason::Malformed), 0);
        assert_eq!(s.auth_failures(AuthFailure::StaleNonce), 1);
        assert_eq!(s.control.changes, 3);
    }
}
