//! The TURN server state machine (RFC 8656): allocations, permissions, channel bindings,
//! authentication, and relaying decisions. Sans-IO: input is a datagram (or stream frame) with
//! its 5-tuple, a peer datagram on a relay, or a timer firing; output is [`Transmit`]s.
//!
//! One [`TurnCore`] runs per worker and owns the allocations whose client 5-tuples the kernel
//! steers to that worker. Cross-worker facts (live relayed addresses, quotas, draining, the live
//! bandwidth caps) live in [`Shared`], touched only on control messages, never per relayed
//! packet except for the per-user and total bandwidth buckets while such a cap is set.
//!
//! The work is split by job into `impl TurnCore` blocks: request dispatch here; `allocate`
//! (Allocate, Refresh, EVEN-PORT reservations, quotas), `permission` (CreatePermission,
//! ChannelBind, peer admission), `data` (Send and Data indications, ChannelData, peer
//! datagrams), `tcp` (RFC 6062 TCP allocations: Connect, ConnectionBind, ConnectionAttempt),
//! `expiry` (timers, allocation release) and `bandwidth` (the caps). `shared` holds [`Shared`]
//! and its quota accounting; the long-term credential check lives in [`crate::auth`].

use crate::auth::{AuthOk, Authenticator, Credentials, NonceMinter};
use crate::limit::SourceLimiter;
use crate::policy::PeerPolicy;
use crate::stats::{DropReason, RequestMethod, RequestResult, TurnStats};
use crate::FiveTuple;
use rtc_stun::attributes::*;
use rtc_stun::message::{
    Message, TransactionId, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_CONNECT, METHOD_CONNECTION_BIND, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH, METHOD_SEND,
};
use smallmap::SmallMap;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_proto::binding::{self, BindingConfig, BindingOutcome, RequestContext};
use stun_proto::msg::{self, classify, text_attr, MessageBuilder, PacketKind};
use turnkey_time::rate::LogLimiter;
use turnkey_time::timers::TimerQueue;

mod admin;
mod allocate;
mod bandwidth;
mod data;
mod expiry;
mod fastpath;
mod mobility;
mod multiplex;
mod permission;
mod shared;
mod smallmap;
mod tcp;

pub use crate::stats::EndReason;
pub use admin::{AllocationFilter, AllocationInfo, ChannelInfo, PermissionInfo, Traffic};
pub use bandwidth::{
    BandwidthCaps, BandwidthError, Direction, DEFAULT_BURST_MS, MAX_BURST_MS, MAX_STREAM_WAIT,
};
pub use fastpath::{FastPathBinding, FastPathEvent};
use mobility::Mobility;
pub use mobility::{Ticket, TicketError, TicketKey, ATTR_MOBILITY_TICKET, TICKET_CHARS};
use shared::Holder;
pub use shared::{Shared, StreamTraffic};

/// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §18.11).
pub const ATTR_ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
/// ADDRESS-ERROR-CODE (RFC 8656 §18.12).
pub const ATTR_ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);
/// ICMP (RFC 8656 §18.13).
pub const ATTR_ICMP: AttrType = AttrType(0x8004);

/// Permissions one allocation may hold (each is a peer IP); beyond, 508. Keeps memory per
/// allocation bounded whatever the client sends.
pub const MAX_PERMISSIONS_PER_ALLOCATION: usize = 1024;

/// Channel numbers one allocation may hold, bound or in their reuse delay (RFC 8656 §12);
/// beyond, 508. The channel range alone would allow 16384.
pub const MAX_CHANNELS_PER_ALLOCATION: usize = 1024;

/// Peer endpoints (IP and port) one allocation on a multiplexed relayed transport address may
/// hold; beyond, CreatePermission and ChannelBind get 508 and Send indications are dropped.
/// Bounds what one client can claim of an address many allocations share.
pub const MAX_PEER_ENDPOINTS_PER_ALLOCATION: usize = 256;

/// Comprehension-required attributes this server understands in TURN requests and indications.
const KNOWN_ATTRS: &[AttrType] = &[
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_PASSWORD_ALGORITHM,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_CHANNEL_NUMBER,
    ATTR_LIFETIME,
    ATTR_XOR_PEER_ADDRESS,
    ATTR_DATA,
    ATTR_REQUESTED_ADDRESS_FAMILY,
    ATTR_EVEN_PORT,
    ATTR_REQUESTED_TRANSPORT,
    ATTR_DONT_FRAGMENT,
    ATTR_RESERVATION_TOKEN,
    ATTR_USER_HASH,
    ATTR_PASSWORD_ALGORITHMS,
    ATTR_CONNECTION_ID,
];

/// An IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressFamily {
    /// IPv4 (REQUESTED-ADDRESS-FAMILY 0x01).
    V4,
    /// IPv6 (0x02).
    V6,
}

impl AddressFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressFamily::V4,
            IpAddr::V6(_) => AddressFamily::V6,
        }
    }
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressFamily::V4 => "ipv4",
            AddressFamily::V6 => "ipv6",
        }
    }
}

/// The transport of a relayed transport address (REQUESTED-TRANSPORT, RFC 8656 §18.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RelayTransport {
    /// UDP (17): a UDP socket (RFC 8656).
    Udp,
    /// TCP (6): a listening TCP socket, peers reached through Connect and ConnectionAttempt
    /// (RFC 6062 §5.1). Its port must not be taken by a UDP relay either: the core keys
    /// allocations by the relayed address alone.
    Tcp,
}

impl RelayTransport {
    /// `udp` or `tcp`, for logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayTransport::Udp => "udp",
            RelayTransport::Tcp => "tcp",
        }
    }
}

/// What [`TurnCore::relay_client_data`] made of a datagram from a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientData {
    /// ChannelData to relay: send `data[payload]` from the relayed transport address `relay`
    /// to `peer`.
    ToPeer {
        /// The relayed transport address to send from.
        relay: SocketAddr,
        /// The peer bound to the channel.
        peer: SocketAddr,
        /// Where the application data is in the datagram.
        payload: std::ops::Range<usize>,
    },
    /// ChannelData dropped (counted by reason).
    Dropped,
    /// Not ChannelData: for [`TurnCore::handle_client`].
    Other,
}

/// What the core asks the I/O layer for when it needs a relay socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRequest {
    /// UDP socket or TCP listener.
    pub transport: RelayTransport,
    /// Which family the relayed transport address must have.
    pub family: AddressFamily,
    /// EVEN-PORT: the port must be even.
    pub even_port: bool,
    /// EVEN-PORT with R: also reserve port + 1 and return a token for it.
    pub reserve_next: bool,
    /// RESERVATION-TOKEN: take the socket reserved under this token.
    pub reservation_token: Option<[u8; 8]>,
    /// DONT-FRAGMENT: set DF on packets sent from the relay.
    pub dont_fragment: bool,
}

/// A relay socket the I/O layer bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayGrant {
    /// The socket's local address (what peers send to, before any external-address mapping).
    pub local: SocketAddr,
    /// The token for the reserved next port, when `reserve_next` was asked.
    pub reservation_token: Option<[u8; 8]>,
    /// The socket is shared by many allocations (the multiplexed relay mode, non-standard):
    /// the core tells their peers apart by the peer's IP and port and never releases it.
    pub multiplexed: bool,
}

/// Why no relay socket could be had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// No relay address of the requested family is configured (440).
    #[error("address family not supported")]
    FamilyUnsupported,
    /// No free port in the range, or the OS refused (508).
    #[error("no relay port available")]
    Exhausted,
    /// The reservation token is unknown or expired (508).
    #[error("unknown reservation token")]
    BadToken,
}

/// Binds and releases relay sockets; implemented by the I/O layer (and by tests).
pub trait RelayAllocator {
    /// Binds a relay socket per `req`.
    fn allocate(&mut self, req: &RelayRequest) -> Result<RelayGrant, RelayError>;
    /// Closes the relay socket bound at `local`.
    fn release(&mut self, local: SocketAddr);
    /// Closes the socket reserved under `token` (EVEN-PORT R, RFC 8656 §7.2) that nobody
    /// redeemed; nothing when it was redeemed or is unknown.
    fn cancel_reservation(&mut self, token: [u8; 8]);
}

/// Something to send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// Send `data` to the client on the 5-tuple `to` (from `to.server`).
    ToClient {
        /// The allocation's or request's 5-tuple.
        to: FiveTuple,
        /// A STUN message or ChannelData frame.
        data: Vec<u8>,
    },
    /// Send `data` from the relay socket bound at `relay` to `peer`.
    ToPeer {
        /// The relay socket's local address.
        relay: SocketAddr,
        /// The peer's transport address.
        peer: SocketAddr,
        /// Application data.
        data: Vec<u8>,
    },
    /// Open a TCP connection from the relayed transport address `relay` (a TCP allocation's
    /// listening address, so the socket needs SO_REUSEADDR/SO_REUSEPORT) to `peer`, and tell
    /// [`TurnCore::handle_peer_connected`] how it went (RFC 6062 §5.2). The core answers the
    /// client and bounds the attempt with its own timer (a [`Transmit::ClosePeerConnection`]
    /// when it gives up).
    ConnectPeer {
        /// The CONNECTION-ID the connection will have.
        connection_id: u32,
        /// The relayed transport address (local).
        relay: SocketAddr,
        /// The peer's transport address.
        peer: SocketAddr,
    },
    /// The ConnectionBind on the stream connection `to` succeeded and its response is queued
    /// just before this (RFC 6062 §5.4): once that response is written, the connection stops
    /// carrying STUN and carries the bytes of peer connection `connection_id`, both ways, as
    /// they are. Bytes are counted into [`TurnCore::peer_connection_traffic`].
    BindConnection {
        /// The client data connection.
        to: FiveTuple,
        /// The peer connection it is joined to.
        connection_id: u32,
    },
    /// Close peer connection `connection_id` (and its client data connection, if bound), or
    /// stop connecting it: it expired unbound, its allocation ended, or its connect timed out.
    ClosePeerConnection {
        /// The CONNECTION-ID.
        connection_id: u32,
    },
}

/// Core configuration, shared by all workers.
#[derive(Debug)]
pub struct CoreConfig {
    /// REALM (RFC 8489 §14.9).
    pub realm: String,
    /// SOFTWARE in responses; `None` to omit.
    pub software: Option<String>,
    /// Static users and REST secrets.
    pub credentials: Credentials,
    /// Stateless nonce minter (same key on every worker).
    pub nonces: NonceMinter,
    /// Peer address policy.
    pub policy: PeerPolicy,
    /// Lifetime granted when the client asks for none or less (RFC 8656 §7.2: 600 s).
    pub default_lifetime: Duration,
    /// Longest lifetime granted.
    pub max_lifetime: Duration,
    /// Permission lifetime (RFC 8656 §9: 300 s).
    pub permission_lifetime: Duration,
    /// Channel binding lifetime (RFC 8656 §12: 600 s).
    pub channel_lifetime: Duration,
    /// Time an expired channel's number and peer stay reserved (RFC 8656 §12: 300 s).
    pub channel_reuse_delay: Duration,
    /// Allocations per user (486 beyond); an unredeemed EVEN-PORT reservation counts as one.
    pub user_quota: u32,
    /// Allocations in total (508 beyond); reservations count too.
    pub total_quota: u32,
    /// Allocations per client IP address (486 beyond); reservations count too.
    pub ip_quota: u32,
    /// How long a port reserved by EVEN-PORT with the R bit stays reserved (RFC 8656 §7.2:
    /// about 30 s).
    pub reservation_lifetime: Duration,
    /// Responses to unauthenticated requests (401/438 challenges, pre-authentication errors)
    /// per second per source IP; beyond, requests are dropped and counted. 0 turns it off.
    pub unauth_rate_per_sec: u32,
    /// Burst of such responses per source IP.
    pub unauth_burst: u32,
    /// Advertised addresses for relay IPs behind a 1:1 NAT: local relay IP -> public IP.
    pub external_ips: HashMap<IpAddr, IpAddr>,
    /// Binding handling (shared with the STUN server).
    pub binding: BindingConfig,
    /// Servers an Allocate is sent to with 300 Try Alternate (RFC 8489 §10, ALTERNATE-SERVER)
    /// while this server drains or holds `alternate_over_allocations` allocations or more.
    /// Empty: such Allocates get 508 (draining) or are served.
    pub alternate_servers: Vec<SocketAddr>,
    /// Live allocations (all workers) from which new Allocates are sent to an alternate
    /// server; 0 turns it off (only draining sends clients elsewhere).
    pub alternate_over_allocations: u32,
    /// Bandwidth caps (bits per second of relayed payload, each direction; 0: none). The live
    /// caps start from these and can be changed through [`Shared::set_bandwidth_caps`]; a
    /// reload ([`TurnCore::set_config`]) that changes these makes them live again.
    pub bandwidth: BandwidthCaps,
    /// RFC 8016 mobility: the key that seals MOBILITY-TICKETs (one per server, shared by
    /// every worker). `None`: mobility is off and any MOBILITY-TICKET gets 405.
    pub mobility: Option<TicketKey>,
    /// TCP allocations (RFC 6062).
    pub tcp: TcpRelayConfig,
}

/// Bounds of TCP allocations (RFC 6062).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRelayConfig {
    /// Peer TCP connections one allocation may have (connecting, waiting for ConnectionBind
    /// or bound); beyond, Connect gets 508 and incoming peers are closed.
    pub max_connections_per_allocation: usize,
    /// Peer TCP connections in the whole server.
    pub max_connections: usize,
    /// How long a Connect may take before 447 (RFC 6062 §5.2: at least 30 s).
    pub connect_timeout: Duration,
    /// How long a peer connection waits for its ConnectionBind before it is closed (RFC 6062
    /// §5.2, §5.3: 30 s).
    pub bind_timeout: Duration,
}

impl Default for TcpRelayConfig {
    fn default() -> Self {
        Self {
            max_connections_per_allocation: 64,
            max_connections: 10_000,
            connect_timeout: Duration::from_secs(30),
            bind_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TimerKey {
    /// An allocation's one timer: the earliest of its own expiry and its permissions' and
    /// channel bindings' deadlines ([`TurnCore::expire_within`]).
    Allocation(u64),
    Reservation([u8; 8]),
    /// A peer TCP connection's connect or bind deadline (RFC 6062).
    PeerConnection(u32),
}

#[derive(Debug)]
struct Relay {
    local: SocketAddr,
    advertised: SocketAddr,
    /// Shared with other allocations ([`RelayGrant::multiplexed`]).
    multiplexed: bool,
}

#[derive(Debug)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
    bound: bool,
}

#[derive(Debug)]
struct Allocation {
    tuple: FiveTuple,
    username: String,
    created: Instant,
    /// Wall-clock start, seconds since the Unix epoch (accounting).
    started_unix_secs: u64,
    /// Application data relayed to peers and from peers (accounting; `Cell` so the relay paths
    /// count through the shared borrow they already hold).
    to_peer: Cell<Traffic>,
    from_peer: Cell<Traffic>,
    holder: Holder,
    relays: Vec<Relay>,
    expires: Instant,
    permissions: SmallMap<IpAddr, Instant>,
    channels: SmallMap<u16, Channel>,
    peer_channels: SmallMap<SocketAddr, u16>,
    allocate_tid: TransactionId,
    allocate_response: Vec<u8>,
    /// The buckets its relayed datagrams pass; `None` while no bandwidth cap applies (the
    /// no-cap hot path is this one branch).
    bandwidth: Option<Box<bandwidth::AllocLimits>>,
    /// Its own per-allocation cap (admin API), bits per second; `None`: the server-wide one.
    bandwidth_override_bps: Option<u64>,
    /// RFC 8016 state, when the client asked for mobility.
    mobility: Option<Box<Mobility>>,
    /// A TCP allocation (RFC 6062): the bytes its data connections relay.
    tcp: Option<Arc<StreamTraffic>>,
    /// The peer endpoints it owns on its multiplexed relayed address (empty otherwise); at
    /// most [`MAX_PEER_ENDPOINTS_PER_ALLOCATION`].
    endpoints: Vec<SocketAddr>,
}

impl Allocation {
    fn relay_for(&self, family: AddressFamily) -> Option<&Relay> {
        self.relays
            .iter()
            .find(|r| AddressFamily::of(r.local.ip()) == family)
    }
    fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|t| *t > now)
    }
    /// Where data for the client goes: the old 5-tuple while a move is not confirmed (RFC 8016
    /// §3.2, make before break), else the allocation's 5-tuple.
    fn egress_tuple(&self) -> FiveTuple {
        self.mobility
            .as_ref()
            .and_then(|m| m.old_tuple)
            .unwrap_or(self.tuple)
    }
    /// The earliest deadline it holds: its expiry, a permission's, a bound channel's, or the
    /// end of an unbound channel number's reuse delay `reuse` (RFC 8656 §12).
    fn next_deadline(&self, reuse: Duration) -> Instant {
        let permissions = self.permissions.values().copied();
        let channels = self.channels.values().map(|c| {
            if c.bound {
                c.expires
            } else {
                c.expires + reuse
            }
        });
        permissions.chain(channels).fold(self.expires, Instant::min)
    }
    fn family_label(&self) -> &'static str {
        match self.relays.as_slice() {
            [one] => AddressFamily::of(one.local.ip()).as_str(),
            _ => "dual",
        }
    }
}

/// A per-worker TURN server core.
pub struct TurnCore {
    cfg: Arc<CoreConfig>,
    shared: Arc<Shared>,
    stats: TurnStats,
    start: Instant,
    start_unix_secs: u64,
    /// This core's worker index (sealed into mobility tickets, so another worker can route a
    /// Refresh here).
    worker: u16,
    /// Boxed: the map's buckets stay small (a hash map holds up to twice its entries in
    /// buckets), and an idle allocation costs its own size once.
    allocs: HashMap<u64, Box<Allocation>>,
    by_tuple: HashMap<FiveTuple, u64>,
    by_relay: HashMap<SocketAddr, u64>,
    /// Allocations on multiplexed relayed addresses, by (relay socket, peer endpoint): each
    /// endpoint belongs to one allocation per shared socket.
    by_endpoint: HashMap<(SocketAddr, SocketAddr), u64>,
    /// The multiplexed relay sockets granted so far (a handful per worker).
    multiplexed_relays: std::collections::HashSet<SocketAddr>,
    timers: TimerQueue<TimerKey>,
    unauth_limiter: SourceLimiter,
    /// The latest `now` handed in (for events that come without one: a closed connection,
    /// shutdown).
    last_now: Instant,
    /// Authentication failures logged at most 10 a second (burst 20) per core.
    auth_log: RefCell<LogLimiter>,
    /// The generation of the shared bandwidth caps last applied, and those caps.
    bw_generation: u64,
    bw_caps: BandwidthCaps,
    /// Connect requests waiting for their peer connection (RFC 6062 §5.2), by CONNECTION-ID.
    connecting: HashMap<u32, tcp::PendingConnect>,
    /// What timers and connection events produced, for [`TurnCore::poll_transmit`]; at most
    /// one entry per peer connection event.
    queued: VecDeque<Transmit>,
    /// The XDP fast path's view: which channel bindings are announced (off unless enabled).
    fast_path: fastpath::FastPathState,
}

impl std::fmt::Debug for TurnCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCore")
            .field("allocations", &self.allocs.len())
            .finish()
    }
}

impl TurnCore {
    /// A core. `start`/`start_unix_secs` anchor wall-clock time (nonces, REST expiry) to the
    /// monotonic `now` values passed later, so tests can drive both with virtual time.
    pub fn new(
        cfg: Arc<CoreConfig>,
        shared: Arc<Shared>,
        start: Instant,
        start_unix_secs: u64,
    ) -> Self {
        let unauth_limiter = SourceLimiter::new(cfg.unauth_rate_per_sec, cfg.unauth_burst, start);
        let mut core = Self {
            cfg,
            shared,
            stats: TurnStats::default(),
            start,
            start_unix_secs,
            worker: 0,
            allocs: HashMap::new(),
            by_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            by_endpoint: HashMap::new(),
            multiplexed_relays: std::collections::HashSet::new(),
            timers: TimerQueue::default(),
            unauth_limiter,
            last_now: start,
            auth_log: RefCell::new(LogLimiter::new(10, 20, start)),
            connecting: HashMap::new(),
            queued: VecDeque::new(),
            fast_path: fastpath::FastPathState::default(),
            bw_generation: 0,
            bw_caps: BandwidthCaps::default(),
        };
        core.init_bandwidth(start);
        core
    }

    /// Replaces the configuration (a reload): users, REST secrets, realm, peer policy,
    /// quotas, lifetimes, alternate servers and the unauthenticated rate take effect for the
    /// next request or datagram. Live allocations, their permissions and channels are kept,
    /// also those of a user the new configuration no longer has (their refreshes then fail
    /// authentication; the admin API ends them at once). The nonce key must stay the same, or
    /// every client in the middle of a transaction gets 438 once.
    pub fn reconfigure(&mut self, cfg: Arc<CoreConfig>, now: Instant) {
        if cfg.unauth_rate_per_sec != self.cfg.unauth_rate_per_sec
            || cfg.unauth_burst != self.cfg.unauth_burst
        {
            self.unauth_limiter =
                SourceLimiter::new(cfg.unauth_rate_per_sec, cfg.unauth_burst, now);
        }
        // Changed bandwidth caps become the caps in force (unchanged ones leave those set
        // through the admin API alone).
        self.set_config(cfg, now);
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<CoreConfig> {
        &self.cfg
    }

    /// The core of worker `index` (0 unless set): sealed into the mobility tickets it issues.
    pub fn with_worker(mut self, index: u16) -> Self {
        self.worker = index;
        self
    }

    /// What this core has counted so far (the service folds it into its metrics).
    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }

    fn unix_secs(&self, now: Instant) -> u64 {
        self.start_unix_secs + now.saturating_duration_since(self.start).as_secs()
    }

    /// True when `tuple` has an allocation on this core.
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.by_tuple.contains_key(tuple)
    }

    /// Number of allocations this core owns.
    pub fn allocation_count(&self) -> usize {
        self.allocs.len()
    }

    /// What the core produced outside a call that takes an `out` list (timers, ended
    /// allocations): Connect answers, closed peer connections. Call after every core call.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queued.pop_front()
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Handles a datagram (UDP) or one complete frame (TCP) from a client.
    pub fn handle_client(
        &mut self,
        tuple: FiveTuple,
        data: &[u8],
        now: Instant,
        relays: &mut dyn RelayAllocator,
        out: &mut Vec<Transmit>,
    ) {
        self.last_now = self.last_now.max(now);
        self.sync_bandwidth(now);
        match classify(data) {
            PacketKind::ChannelData => self.handle_channel_data(tuple, data, now, out),
            PacketKind::Stun => match msg::decode(data) {
                Ok(mut m) => {
                    // RFC 8489 §14.5: nothing after the integrity attribute is acted on.
                    msg::ignore_after_integrity(&mut m);
                    self.handle_message(tuple, &m, now, relays, out)
                }
                Err(_) => self.stats.drop_packet(DropReason::Malformed),
            },
            PacketKind::Other => self.stats.drop_packet(DropReason::NotStun),
        }
    }

    /// The data path for a datagram from a client, without copying: ChannelData is checked,
    /// counted and routed here, and the caller sends `data[payload]` from `relay` to `peer`
    /// itself; anything else is [`ClientData::Other`], for
    /// [`handle_client`](Self::handle_client). Same checks and counters as `handle_client`.
    pub fn relay_client_data(&mut self, tuple: FiveTuple, data: &[u8], now: Instant) -> ClientData {
        if classify(data) != PacketKind::ChannelData {
            return ClientData::Other;
        }
        self.last_now = self.last_now.max(now);
        self.sync_bandwidth(now);
        match self.route_channel_data(tuple, data, now) {
            Some((relay, peer, payload)) => ClientData::ToPeer {
                relay,
                peer,
                payload,
            },
            None => ClientData::Dropped,
        }
    }

    fn handle_message(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        now: Instant,
        relays: &mut dyn RelayAllocator,
        out: &mut Vec<Transmit>,
    ) {
        let method = m.typ.method;
        if method == METHOD_BINDING {
            let ctx = RequestContext {
                source: tuple.client,
                local: tuple.server,
                transport: tuple.transport,
            };
            match binding::handle_binding(m, &ctx, &self.cfg.binding) {
                BindingOutcome::Reply(r) => {
                    self.stats.binding_request(tuple.transport, r.result);
                    out.push(Transmit::ToClient {
                        to: tuple,
                        data: r.bytes,
                    });
                }
                BindingOutcome::Drop(reason) => {
                    self.stats.binding_dropped(reason);
                }
            }
            return;
        }
        if m.typ.class == CLASS_INDICATION {
            if method == METHOD_SEND {
                self.handle_send(tuple, m, now, out);
            } else {
                self.stats.drop_packet(DropReason::UnexpectedIndication);
            }
            return;
        }
        if m.typ.class != CLASS_REQUEST {
            self.stats.drop_packet(DropReason::UnexpectedResponse);
            return;
        }
        let method_label = match method {
            METHOD_ALLOCATE => RequestMethod::Allocate,
            METHOD_REFRESH => RequestMethod::Refresh,
            METHOD_CREATE_PERMISSION => RequestMethod::CreatePermission,
            METHOD_CHANNEL_BIND => RequestMethod::ChannelBind,
            METHOD_CONNECT => RequestMethod::Connect,
            METHOD_CONNECTION_BIND => RequestMethod::ConnectionBind,
            _ => RequestMethod::Unknown,
        };
        // A retransmitted Allocate is answered with the original response, before any other
        // check (its nonce may have gone stale meanwhile). RFC 8656 §7.2.
        if method == METHOD_ALLOCATE {
            if let Some(a) = self.by_tuple.get(&tuple).and_then(|id| self.allocs.get(id)) {
                if a.allocate_tid == m.transaction_id && !a.allocate_response.is_empty() {
                    self.stats.allocation_request(RequestResult::Retransmission);
                    out.push(Transmit::ToClient {
                        to: tuple,
                        data: a.allocate_response.clone(),
                    });
                    return;
                }
            }
        }
        let mut after = Vec::new();
        let (builder, auth) = self.handle_request(tuple, m, now, relays, &mut after);
        // Heard on the new 5-tuple after a move (another request than the moving Refresh):
        // the old one is forgotten (RFC 8016 §3.2).
        if auth.is_some() && !(method == METHOD_REFRESH && m.contains(ATTR_MOBILITY_TICKET)) {
            if let Some(&id) = self.by_tuple.get(&tuple) {
                self.confirm_move(id, tuple);
            }
        }
        // An authenticated request other than Allocate means the client has its Allocate
        // answer: no retransmission of that Allocate can follow, so its stored response
        // (kept only for those, RFC 8656 §7.2) is freed.
        if auth.is_some() && method != METHOD_ALLOCATE {
            if let Some(a) = self
                .by_tuple
                .get(&tuple)
                .and_then(|id| self.allocs.get_mut(id))
            {
                if a.allocate_response.capacity() > 0 {
                    a.allocate_response = Vec::new();
                }
            }
        }
        // A Connect is answered once its peer connection is up (RFC 6062 §5.2).
        let Some(builder) = builder else {
            out.append(&mut after);
            return;
        };
        // An unauthenticated request gets at most a bounded rate of responses per source IP:
        // these are what a spoofed source would reflect at its victim.
        if auth.is_none() && !self.unauth_limiter.allow(tuple.client.ip(), now) {
            self.stats.drop_packet(DropReason::UnauthRateLimited);
            return;
        }
        let result = RequestResult::of_response(builder.error_code_value());
        let data = self.finish(builder, auth.as_ref(), m);
        self.stats.request(method_label, result);
        if method == METHOD_ALLOCATE {
            self.stats.allocation_request(result);
            if let Some(id) = self.by_tuple.get(&tuple) {
                if let Some(a) = self.allocs.get_mut(id) {
                    if a.allocate_tid == m.transaction_id {
                        a.allocate_response = data.clone();
                    }
                }
            }
        }
        out.push(Transmit::ToClient { to: tuple, data });
        out.append(&mut after);
    }

    /// Authenticates and dispatches a request. Returns the response (None: answered later,
    /// a Connect) and the credentials it is signed with; `after` gets what must follow the
    /// response (a ConnectionBind's [`Transmit::BindConnection`], a Connect's
    /// [`Transmit::ConnectPeer`]).
    fn handle_request(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        now: Instant,
        relays: &mut dyn RelayAllocator,
        after: &mut Vec<Transmit>,
    ) -> (Option<MessageBuilder>, Option<AuthOk>) {
        let method = m.typ.method;
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
            METHOD_CONNECT,
            METHOD_CONNECTION_BIND,
        ]
        .contains(&method)
        {
            return (Some(MessageBuilder::error(m, 400, "Bad Request")), None);
        }
        let unknown = msg::unknown_required(m, KNOWN_ATTRS);
        if !unknown.is_empty() {
            let mut b = MessageBuilder::error(m, 420, "Unknown Attribute");
            b.unknown_attributes(&unknown);
            return (Some(b), None);
        }
        // REST expiry is checked on Allocate; requests on an existing allocation by the same
        // user are not cut off when the credential expires mid-call.
        let username = text_attr(m, ATTR_USERNAME);
        let same_user_allocation = self
            .by_tuple
            .get(&tuple)
            .and_then(|id| self.allocs.get(id))
            .is_some_and(|a| username == Some(a.username.as_str()))
            || (method == METHOD_REFRESH
                && self.ticket_user(m).is_some_and(|u| username == Some(u)));
        let check_expiry = method == METHOD_ALLOCATE || !same_user_allocation;
        let auth = match self
            .authenticator(now)
            .authenticate(tuple, m, now, check_expiry)
        {
            Ok(a) => a,
            Err(b) => return (Some(b), None),
        };
        let b = match method {
            METHOD_ALLOCATE => self.allocate(tuple, m, &auth, now, relays),
            METHOD_REFRESH => self.refresh(tuple, m, &auth, now, relays),
            METHOD_CREATE_PERMISSION => self.create_permission(tuple, m, &auth, now),
            METHOD_CONNECT => match self.connect(tuple, m, &auth, now, after) {
                Some(b) => b,
                None => return (None, Some(auth)),
            },
            METHOD_CONNECTION_BIND => self.connection_bind(tuple, m, &auth, after),
            _ => self.channel_bind(tuple, m, &auth, now),
        };
        (Some(b), Some(auth))
    }

    /// Adds SOFTWARE and integrity (when authenticated: unauthenticated responses stay as
    /// small as they can, to give a reflection attack nothing) and FINGERPRINT (when the
    /// request had one).
    fn finish(&self, b: MessageBuilder, auth: Option<&AuthOk>, req: &Message) -> Vec<u8> {
        self.finish_with(b, auth, req.contains(ATTR_FINGERPRINT))
    }

    /// [`finish`](Self::finish) for a response sent after its request is gone (Connect).
    fn finish_with(
        &self,
        mut b: MessageBuilder,
        auth: Option<&AuthOk>,
        fingerprint: bool,
    ) -> Vec<u8> {
        if let Some(a) = auth {
            if let Some(s) = &self.cfg.software {
                b.software(s);
            }
            b.integrity(&a.key, a.integrity);
        }
        if fingerprint {
            b.fingerprint();
        }
        b.finish()
    }

    /// The long-term credential check ([`crate::auth::Authenticator`]) over this core's
    /// configuration, counters and failure log, at `now`.
    fn authenticator(&mut self, now: Instant) -> Authenticator<'_> {
        let unix_secs = self.unix_secs(now);
        Authenticator {
            realm: &self.cfg.realm,
            credentials: &self.cfg.credentials,
            nonces: &self.cfg.nonces,
            unix_secs,
            stats: &mut self.stats,
            log: &self.auth_log,
        }
    }

    /// Finds the allocation of `tuple` and checks the username matches (437 / 441).
    fn owned_allocation(
        &self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
    ) -> Result<u64, MessageBuilder> {
        let Some(&id) = self.by_tuple.get(&tuple) else {
            return Err(MessageBuilder::error(m, 437, "Allocation Mismatch"));
        };
        match self.allocs.get(&id) {
            Some(a) if a.username == auth.username => Ok(id),
            Some(_) => Err(MessageBuilder::error(m, 441, "Wrong Credentials")),
            None => Err(MessageBuilder::error(m, 437, "Allocation Mismatch")),
        }
    }
}

/// The `result` label of a response: `success`, `auth_challenge` (401) or `error_<code>`.
#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests;
