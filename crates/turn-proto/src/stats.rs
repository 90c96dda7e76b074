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
    /// Data to or from a peer endpoint (IP and port) that another allocation on the same
    /// multiplexed relayed address owns, or that is not registered there.
    PeerEndpointTaken,
    /// A Send indication to a new peer endpoint of an allocation on a multiplexed relayed
    /// address that holds [`crate::core::MAX_PEER_ENDPOINTS_PER_ALLOCATION`] already.
    PeerEndpointLimit,
}

impl DropReason {
    /// Its slot in the counters: the position in [`DropReason::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [DropReason; 17] = [
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
        DropReason::PeerEndpointTaken,
        DropReason::PeerEndpointLimit,
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
            DropReason::PeerEndpointTaken => "peer_endpoint_taken",
            DropReason::PeerEndpointLimit => "peer_endpoint_limit",
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
    /// Total quota (508).
    Total,
    /// The server drains (508; RFC 8656 §7.2): it takes no new allocation and serves the live
    /// ones until they end. (With alternate servers configured the Allocate gets 300 Try
    /// Alternate instead, counted in `alternate_redirects`.)
    Draining,
}

impl QuotaScope {
    /// Its slot in the counters: the position in [`QuotaScope::ALL`], which lists the variants in
    /// declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every scope.
    pub const ALL: [QuotaScope; 4] = [
        QuotaScope::User,
        QuotaScope::Ip,
        QuotaScope::Total,
        QuotaScope::Draining,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaScope::User => "user",
            QuotaScope::Ip => "ip",
            QuotaScope::Total => "total",
            QuotaScope::Draining => "draining",
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

/// The method of an answered request (`turn_requests_total{method}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestMethod {
    /// Allocate (RFC 8656 §7).
    Allocate,
    /// Refresh (RFC 8656 §8).
    Refresh,
    /// CreatePermission (RFC 8656 §10).
    CreatePermission,
    /// ChannelBind (RFC 8656 §12).
    ChannelBind,
    /// Connect (RFC 6062 §5.2).
    Connect,
    /// ConnectionBind (RFC 6062 §5.4).
    ConnectionBind,
    /// Any other method (answered 400).
    Unknown,
}

impl RequestMethod {
    /// Its slot in the counters: the position in [`RequestMethod::ALL`], which lists the
    /// variants in declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every method.
    pub const ALL: [RequestMethod; 7] = [
        RequestMethod::Allocate,
        RequestMethod::Refresh,
        RequestMethod::CreatePermission,
        RequestMethod::ChannelBind,
        RequestMethod::Connect,
        RequestMethod::ConnectionBind,
        RequestMethod::Unknown,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestMethod::Allocate => "allocate",
            RequestMethod::Refresh => "refresh",
            RequestMethod::CreatePermission => "create_permission",
            RequestMethod::ChannelBind => "channel_bind",
            RequestMethod::Connect => "connect",
            RequestMethod::ConnectionBind => "connection_bind",
            RequestMethod::Unknown => "unknown",
        }
    }
}

/// How a request was answered (`turn_requests_total{result}`,
/// `turn_allocation_requests_total{result}`): success, the 401 challenge, or the STUN error
/// code sent (RFC 8656 §19, RFC 8489 §14.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestResult {
    /// A success response.
    Success,
    /// 300 Try Alternate.
    TryAlternate,
    /// 400 Bad Request.
    Error400,
    /// 401 Unauthenticated: the challenge (realm and nonce) a client expects first.
    AuthChallenge,
    /// 403 Forbidden.
    Error403,
    /// 405 Mobility Forbidden.
    Error405,
    /// 420 Unknown Attribute.
    Error420,
    /// 437 Allocation Mismatch.
    Error437,
    /// 438 Stale Nonce.
    Error438,
    /// 440 Address Family not Supported.
    Error440,
    /// 441 Wrong Credentials.
    Error441,
    /// 442 Unsupported Transport Protocol.
    Error442,
    /// 443 Peer Address Family Mismatch.
    Error443,
    /// 446 Connection Already Exists (RFC 6062).
    Error446,
    /// 447 Connection Timeout or Failure (RFC 6062).
    Error447,
    /// 486 Allocation Quota Reached.
    Error486,
    /// 508 Insufficient Capacity.
    Error508,
    /// Any other error code.
    ErrorOther,
    /// A retransmitted Allocate answered with its stored response (Allocate only).
    Retransmission,
}

impl RequestResult {
    /// Its slot in the counters: the position in [`RequestResult::ALL`], which lists the
    /// variants in declaration order (a test checks it).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every result.
    pub const ALL: [RequestResult; 19] = [
        RequestResult::Success,
        RequestResult::TryAlternate,
        RequestResult::Error400,
        RequestResult::AuthChallenge,
        RequestResult::Error403,
        RequestResult::Error405,
        RequestResult::Error420,
        RequestResult::Error437,
        RequestResult::Error438,
        RequestResult::Error440,
        RequestResult::Error441,
        RequestResult::Error442,
        RequestResult::Error443,
        RequestResult::Error446,
        RequestResult::Error447,
        RequestResult::Error486,
        RequestResult::Error508,
        RequestResult::ErrorOther,
        RequestResult::Retransmission,
    ];

    /// The result of a response carrying `error_code` (`None`: a success response).
    pub fn of_response(error_code: Option<u16>) -> Self {
        match error_code {
            None => RequestResult::Success,
            Some(300) => RequestResult::TryAlternate,
            Some(400) => RequestResult::Error400,
            Some(401) => RequestResult::AuthChallenge,
            Some(403) => RequestResult::Error403,
            Some(405) => RequestResult::Error405,
            Some(420) => RequestResult::Error420,
            Some(437) => RequestResult::Error437,
            Some(438) => RequestResult::Error438,
            Some(440) => RequestResult::Error440,
            Some(441) => RequestResult::Error441,
            Some(442) => RequestResult::Error442,
            Some(443) => RequestResult::Error443,
            Some(446) => RequestResult::Error446,
            Some(447) => RequestResult::Error447,
            Some(486) => RequestResult::Error486,
            Some(508) => RequestResult::Error508,
            Some(_) => RequestResult::ErrorOther,
        }
    }

    /// The metrics label: `success`, `try_alternate`, `auth_challenge`, `error_<code>`,
    /// `error_other`, `retransmission`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Success => "success",
            RequestResult::TryAlternate => "try_alternate",
            RequestResult::Error400 => "error_400",
            RequestResult::AuthChallenge => "auth_challenge",
            RequestResult::Error403 => "error_403",
            RequestResult::Error405 => "error_405",
            RequestResult::Error420 => "error_420",
            RequestResult::Error437 => "error_437",
            RequestResult::Error438 => "error_438",
            RequestResult::Error440 => "error_440",
            RequestResult::Error441 => "error_441",
            RequestResult::Error442 => "error_442",
            RequestResult::Error443 => "error_443",
            RequestResult::Error446 => "error_446",
            RequestResult::Error447 => "error_447",
            RequestResult::Error486 => "error_486",
            RequestResult::Error508 => "error_508",
            RequestResult::ErrorOther => "error_other",
            RequestResult::Retransmission => "retransmission",
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
    /// Requests answered, indexed like [`RequestMethod::ALL`] then [`RequestResult::ALL`].
    pub requests: [[u64; RequestResult::ALL.len()]; RequestMethod::ALL.len()],
    /// Allocate requests by result (also `retransmission`), indexed like [`RequestResult::ALL`].
    pub allocation_requests: [u64; RequestResult::ALL.len()],
    /// Binding requests answered, indexed like [`Transport::ALL`] then [`BindingResult::ALL`].
    pub binding_requests: [[u64; BindingResult::ALL.len()]; Transport::ALL.len()],
    /// Binding requests dropped, indexed like [`BindingDrop::ALL`].
    pub binding_dropped: [u64; BindingDrop::ALL.len()],
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
    pub fn request(&mut self, method: RequestMethod, result: RequestResult) {
        self.control.requests[method.index()][result.index()] += 1;
        self.control.changes += 1;
    }

    /// Answered requests of `method` with `result` so far.
    pub fn requests(&self, method: RequestMethod, result: RequestResult) -> u64 {
        self.control.requests[method.index()][result.index()]
    }

    /// Counts an Allocate request's result.
    pub fn allocation_request(&mut self, result: RequestResult) {
        self.control.allocation_requests[result.index()] += 1;
        self.control.changes += 1;
    }

    /// Allocate requests with `result` so far.
    pub fn allocation_requests(&self, result: RequestResult) -> u64 {
        self.control.allocation_requests[result.index()]
    }

    /// Counts an answered Binding request.
    pub fn binding_request(&mut self, transport: Transport, result: BindingResult) {
        self.control.binding_requests[transport.index()][result.index()] += 1;
        self.control.changes += 1;
    }

    /// Counts a dropped Binding request.
    pub fn binding_dropped(&mut self, reason: BindingDrop) {
        self.control.binding_dropped[reason.index()] += 1;
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
        for (i, r) in RequestMethod::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in RequestResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in Transport::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in BindingResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        for (i, r) in BindingDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
    }

    #[test]
    fn request_results_map_error_codes_to_distinct_labels() {
        let mut labels: Vec<&str> = RequestResult::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), RequestResult::ALL.len());
        for r in RequestResult::ALL {
            // Every result but the two without a code of their own maps back from its code.
            let code = match r.as_str() {
                "success" => None,
                "try_alternate" => Some(300),
                "auth_challenge" => Some(401),
                "error_other" => Some(499),
                "retransmission" => continue,
                l => Some(l.trim_start_matches("error_").parse().unwrap()),
            };
            assert_eq!(RequestResult::of_response(code), r, "{r:?}");
        }
        let mut s = TurnStats::default();
        s.request(RequestMethod::ChannelBind, RequestResult::Error443);
        assert_eq!(
            s.requests(RequestMethod::ChannelBind, RequestResult::Error443),
            1
        );
        assert_eq!(
            s.requests(RequestMethod::Refresh, RequestResult::Error443),
            0
        );
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
