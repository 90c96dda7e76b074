//! The TURN server state machine (RFC 8656): allocations, permissions, channel bindings,
//! authentication, and relaying decisions. Sans-IO: input is a datagram (or stream frame) with
//! its 5-tuple, a peer datagram on a relay, or a timer firing; output is [`Transmit`]s.
//!
//! One [`TurnCore`] runs per worker and owns the allocations whose client 5-tuples the kernel
//! steers to that worker. Cross-worker facts (live relayed addresses, quotas, draining) live in
//! [`Shared`], touched only on control messages, never per relayed packet.

use super::auth::{long_term_key, Credentials, NonceMinter};
use super::limit::SourceLimiter;
use super::policy::PeerPolicy;
use super::timers::TimerQueue;
use super::FiveTuple;
use crate::stats::{AuthFailure, DropReason, QuotaScope, TurnStats};
use rtc_stun::attributes::*;
use rtc_stun::message::{
    Message, TransactionId, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_DATA, METHOD_REFRESH, METHOD_SEND,
};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use stun_proto::binding::{self, BindingConfig, BindingOutcome, RequestContext};
use stun_proto::msg::{
    self, attr, classify, integrity_present, text_attr, verify_integrity, xor_address,
    xor_addresses, IntegrityAlgorithm, MessageBuilder, PacketKind, PasswordAlgorithm,
};
use turnkey_rate::LogLimiter;

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

/// What the core asks the I/O layer for when it needs a relay socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRequest {
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
}

/// State shared by all workers; touched on control messages only.
#[derive(Debug, Default)]
pub struct Shared {
    live_relays: RwLock<HashSet<SocketAddr>>,
    quotas: Mutex<Quotas>,
    reservations: Mutex<HashMap<[u8; 8], Reservation>>,
    /// Quota units held: allocations plus unredeemed reservations.
    total: AtomicU32,
    allocations: AtomicU32,
    draining: AtomicBool,
}

/// Who holds a quota unit: an allocation or an unredeemed reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    user: String,
    ip: IpAddr,
}

#[derive(Debug, Default)]
struct Quotas {
    per_user: HashMap<String, u32>,
    per_ip: HashMap<IpAddr, u32>,
}

/// An EVEN-PORT reservation (RFC 8656 §7.2) waiting to be redeemed by its token.
#[derive(Debug)]
struct Reservation {
    holder: Holder,
    expires: Instant,
}

impl Shared {
    /// Stops new allocations (graceful shutdown); existing ones keep working.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
    /// Live allocations across all workers.
    pub fn total_allocations(&self) -> u32 {
        self.allocations.load(Ordering::Relaxed)
    }
    /// True when `addr` is a live relayed transport address (local or advertised).
    pub fn is_live_relay(&self, addr: SocketAddr) -> bool {
        self.live_relays
            .read()
            .map(|s| s.contains(&addr))
            .unwrap_or(false)
    }
    fn add_relays(&self, addrs: &[SocketAddr]) {
        if let Ok(mut s) = self.live_relays.write() {
            s.extend(addrs.iter().copied());
        }
    }
    fn remove_relays(&self, addrs: &[SocketAddr]) {
        if let Ok(mut s) = self.live_relays.write() {
            for a in addrs {
                s.remove(a);
            }
        }
    }
    /// Unredeemed EVEN-PORT reservations across all workers.
    pub fn reservation_count(&self) -> usize {
        self.reservations.lock().map(|r| r.len()).unwrap_or(0)
    }
    /// Reserves one unit of every quota for `h`.
    fn take_quota(&self, h: &Holder, cfg: &CoreConfig) -> Result<(), QuotaScope> {
        let Ok(mut q) = self.quotas.lock() else {
            return Err(QuotaScope::Total);
        };
        if self.draining.load(Ordering::Relaxed)
            || self.total.load(Ordering::Relaxed) >= cfg.total_quota
        {
            return Err(QuotaScope::Total);
        }
        if q.per_user.get(&h.user).copied().unwrap_or(0) >= cfg.user_quota {
            return Err(QuotaScope::User);
        }
        if q.per_ip.get(&h.ip).copied().unwrap_or(0) >= cfg.ip_quota {
            return Err(QuotaScope::Ip);
        }
        *q.per_user.entry(h.user.clone()).or_insert(0) += 1;
        *q.per_ip.entry(h.ip).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn return_quota(&self, h: &Holder) {
        if let Ok(mut q) = self.quotas.lock() {
            if let Some(n) = q.per_user.get_mut(&h.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.per_user.remove(&h.user);
                }
            }
            if let Some(n) = q.per_ip.get_mut(&h.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    q.per_ip.remove(&h.ip);
                }
            }
        }
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
    fn add_reservation(&self, token: [u8; 8], r: Reservation) {
        if let Ok(mut m) = self.reservations.lock() {
            m.insert(token, r);
        }
    }
    /// Removes the reservation under `token` when `due` says so (always, or only once expired).
    fn take_reservation(
        &self,
        token: &[u8; 8],
        expired_at: Option<Instant>,
    ) -> Option<Reservation> {
        let mut m = self.reservations.lock().ok()?;
        match expired_at {
            Some(now) if m.get(token).is_some_and(|r| r.expires > now) => None,
            _ => m.remove(token),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum TimerKey {
    Allocation(u64),
    Permission(u64, IpAddr),
    Channel(u64, u16),
    Reservation([u8; 8]),
}

#[derive(Debug)]
struct Relay {
    local: SocketAddr,
    advertised: SocketAddr,
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
    /// Application bytes relayed to peers and from peers (for the "allocation ended" log line;
    /// `Cell` so the relay paths count through the shared borrow they already hold).
    to_peer_bytes: Cell<u64>,
    from_peer_bytes: Cell<u64>,
    holder: Holder,
    relays: Vec<Relay>,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    peer_channels: HashMap<SocketAddr, u16>,
    allocate_tid: TransactionId,
    allocate_response: Vec<u8>,
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
    fn family_label(&self) -> &'static str {
        match self.relays.as_slice() {
            [one] => AddressFamily::of(one.local.ip()).as_str(),
            _ => "dual",
        }
    }
}

/// The key and algorithm an authenticated request was checked with; responses use the same.
#[derive(Debug, Clone)]
struct AuthOk {
    username: String,
    key: Vec<u8>,
    integrity: IntegrityAlgorithm,
}

/// A per-worker TURN server core.
pub struct TurnCore {
    cfg: Arc<CoreConfig>,
    shared: Arc<Shared>,
    stats: TurnStats,
    start: Instant,
    start_unix_secs: u64,
    allocs: HashMap<u64, Allocation>,
    by_tuple: HashMap<FiveTuple, u64>,
    by_relay: HashMap<SocketAddr, u64>,
    next_id: u64,
    timers: TimerQueue<TimerKey>,
    unauth_limiter: SourceLimiter,
    /// The latest `now` handed in (for events that come without one: a closed connection,
    /// shutdown).
    last_now: Instant,
    /// Authentication failures logged at most 10 a second (burst 20) per core.
    auth_log: RefCell<LogLimiter>,
}

impl std::fmt::Debug for TurnCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnCore")
            .field("allocations", &self.allocs.len())
            .finish()
    }
}

/// Result of request processing before encoding: a response builder and whether it is signed.
type Reply = (MessageBuilder, Option<AuthOk>);

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
        Self {
            cfg,
            shared,
            stats: TurnStats::default(),
            start,
            start_unix_secs,
            allocs: HashMap::new(),
            by_tuple: HashMap::new(),
            by_relay: HashMap::new(),
            next_id: 1,
            timers: TimerQueue::default(),
            unauth_limiter,
            last_now: start,
            auth_log: RefCell::new(LogLimiter::new(10, 20, start)),
        }
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
            METHOD_ALLOCATE => "allocate",
            METHOD_REFRESH => "refresh",
            METHOD_CREATE_PERMISSION => "create_permission",
            METHOD_CHANNEL_BIND => "channel_bind",
            _ => "unknown",
        };
        // A retransmitted Allocate is answered with the original response, before any other
        // check (its nonce may have gone stale meanwhile). RFC 8656 §7.2.
        if method == METHOD_ALLOCATE {
            if let Some(a) = self.by_tuple.get(&tuple).and_then(|id| self.allocs.get(id)) {
                if a.allocate_tid == m.transaction_id && !a.allocate_response.is_empty() {
                    self.stats.allocation_request("retransmission");
                    out.push(Transmit::ToClient {
                        to: tuple,
                        data: a.allocate_response.clone(),
                    });
                    return;
                }
            }
        }
        let (builder, auth) = self.handle_request(tuple, m, now, relays);
        // An unauthenticated request gets at most a bounded rate of responses per source IP:
        // these are what a spoofed source would reflect at its victim.
        if auth.is_none() && !self.unauth_limiter.allow(tuple.client.ip(), now) {
            self.stats.drop_packet(DropReason::UnauthRateLimited);
            return;
        }
        let result = response_label(builder.error_code_value());
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
    }

    fn handle_request(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        now: Instant,
        relays: &mut dyn RelayAllocator,
    ) -> Reply {
        let method = m.typ.method;
        if ![
            METHOD_ALLOCATE,
            METHOD_REFRESH,
            METHOD_CREATE_PERMISSION,
            METHOD_CHANNEL_BIND,
        ]
        .contains(&method)
        {
            return (MessageBuilder::error(m, 400, "Bad Request"), None);
        }
        let unknown = msg::unknown_required(m, KNOWN_ATTRS);
        if !unknown.is_empty() {
            let mut b = MessageBuilder::error(m, 420, "Unknown Attribute");
            b.unknown_attributes(&unknown);
            return (b, None);
        }
        // REST expiry is checked on Allocate; requests on an existing allocation by the same
        // user are not cut off when the credential expires mid-call.
        let same_user_allocation = self
            .by_tuple
            .get(&tuple)
            .and_then(|id| self.allocs.get(id))
            .is_some_and(|a| text_attr(m, ATTR_USERNAME) == Some(a.username.as_str()));
        let check_expiry = method == METHOD_ALLOCATE || !same_user_allocation;
        let auth = match self.authenticate(tuple, m, now, check_expiry) {
            Ok(a) => a,
            Err(b) => return (b, None),
        };
        let b = match method {
            METHOD_ALLOCATE => self.allocate(tuple, m, &auth, now, relays),
            METHOD_REFRESH => self.refresh(tuple, m, &auth, now, relays),
            METHOD_CREATE_PERMISSION => self.create_permission(tuple, m, &auth, now),
            _ => self.channel_bind(tuple, m, &auth, now),
        };
        (b, Some(auth))
    }

    /// Adds SOFTWARE and integrity (when authenticated: unauthenticated responses stay as
    /// small as they can, to give a reflection attack nothing) and FINGERPRINT (when the
    /// request had one).
    fn finish(&self, mut b: MessageBuilder, auth: Option<&AuthOk>, req: &Message) -> Vec<u8> {
        if let Some(a) = auth {
            if let Some(s) = &self.cfg.software {
                b.software(s);
            }
            b.integrity(&a.key, a.integrity);
        }
        if req.contains(ATTR_FINGERPRINT) {
            b.fingerprint();
        }
        b.finish()
    }

    /// A 401 or 438 with REALM, a nonce bound to `tuple` and PASSWORD-ALGORITHMS (RFC 8489
    /// §9.2.4). The reason phrase is left empty (it only adds bytes to a response anyone can
    /// provoke); the code says it all.
    fn challenge(&self, tuple: &FiveTuple, m: &Message, code: u16, now: Instant) -> MessageBuilder {
        let mut b = MessageBuilder::error(m, code, "");
        b.raw(ATTR_REALM, self.cfg.realm.as_bytes());
        b.raw(
            ATTR_NONCE,
            self.cfg.nonces.mint(self.unix_secs(now), tuple).as_bytes(),
        );
        b.raw(ATTR_PASSWORD_ALGORITHMS, &password_algorithms_value());
        b
    }

    /// Counts an authentication failure and logs it (at most 10 a second per core; the next
    /// line logged says how many were left out). The log names the client and the username it
    /// gave, never a password or key.
    fn auth_failure(&mut self, reason: AuthFailure, tuple: &FiveTuple, m: &Message, now: Instant) {
        self.stats.auth_failure(reason);
        // A stale nonce is routine (a long session's refresh after the nonce lifetime): counted,
        // not logged.
        if reason == AuthFailure::StaleNonce {
            return;
        }
        if let Some(suppressed) = self.auth_log.borrow_mut().admit(now) {
            tracing::info!(
                reason = reason.as_str(),
                client = %tuple.client,
                transport = tuple.transport.as_str(),
                user = %text_attr(m, ATTR_USERNAME).unwrap_or(""),
                suppressed,
                "authentication failed"
            );
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). Err is the response to send.
    ///
    /// - The nonce must be one this server minted for this 5-tuple and not expired (438).
    /// - USERNAME or USERHASH (§14.4, static users) names the user (400 without either).
    /// - PASSWORD-ALGORITHM/PASSWORD-ALGORITHMS (§9.2.5 bid-down protection): with neither,
    ///   MD5; otherwise both must be present, PASSWORD-ALGORITHMS must equal the list this
    ///   server sends, and PASSWORD-ALGORITHM must be one of them (400 otherwise).
    fn authenticate(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        now: Instant,
        check_expiry: bool,
    ) -> Result<AuthOk, MessageBuilder> {
        let Some(integrity) = integrity_present(m) else {
            return Err(self.challenge(&tuple, m, 401, now));
        };
        let username = match (text_attr(m, ATTR_USERNAME), attr(m, ATTR_USER_HASH)) {
            (Some(u), None) => Some(u),
            (None, Some(h)) => match self.cfg.credentials.user_for_hash(h) {
                Some(u) => Some(u),
                None => {
                    self.auth_failure(AuthFailure::UnknownUser, &tuple, m, now);
                    return Err(self.challenge(&tuple, m, 401, now));
                }
            },
            _ => None,
        };
        let (Some(username), Some(realm), Some(nonce)) =
            (username, text_attr(m, ATTR_REALM), text_attr(m, ATTR_NONCE))
        else {
            self.auth_failure(AuthFailure::BadRequest, &tuple, m, now);
            return Err(MessageBuilder::error(m, 400, "Bad Request"));
        };
        let unix = self.unix_secs(now);
        if !self.cfg.nonces.is_valid(nonce, unix, &tuple) {
            self.auth_failure(AuthFailure::StaleNonce, &tuple, m, now);
            return Err(self.challenge(&tuple, m, 438, now));
        }
        if realm != self.cfg.realm {
            self.auth_failure(AuthFailure::WrongRealm, &tuple, m, now);
            return Err(self.challenge(&tuple, m, 401, now));
        }
        let alg = match (
            attr(m, ATTR_PASSWORD_ALGORITHM),
            attr(m, ATTR_PASSWORD_ALGORITHMS),
        ) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(v), Some(list)) if list == password_algorithms_value() => match v {
                [0, 1, 0, 0] => PasswordAlgorithm::Md5,
                [0, 2, 0, 0] => PasswordAlgorithm::Sha256,
                _ => {
                    self.auth_failure(AuthFailure::BadRequest, &tuple, m, now);
                    return Err(MessageBuilder::error(m, 400, "Bad Request"));
                }
            },
            _ => {
                // One without the other, or a list other than ours: a bid-down attempt or a
                // broken client (§9.2.5).
                self.auth_failure(AuthFailure::AlgorithmMismatch, &tuple, m, now);
                return Err(MessageBuilder::error(m, 400, "Bad Request"));
            }
        };
        let passwords = match self.cfg.credentials.passwords(username, unix, check_expiry) {
            Ok(p) => p,
            Err(e) => {
                self.auth_failure(e.auth_failure(), &tuple, m, now);
                return Err(self.challenge(&tuple, m, 401, now));
            }
        };
        for pw in passwords {
            let key = long_term_key(username, realm, &pw, alg);
            if verify_integrity(m, &key, integrity) {
                return Ok(AuthOk {
                    username: username.to_string(),
                    key,
                    integrity,
                });
            }
        }
        self.auth_failure(AuthFailure::BadIntegrity, &tuple, m, now);
        Err(self.challenge(&tuple, m, 401, now))
    }

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
    fn allocate(
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
        match attr(m, ATTR_REQUESTED_TRANSPORT) {
            Some(v) if v.len() == 4 && v[0] == 17 => {}
            Some(v) if v.len() == 4 => {
                return MessageBuilder::error(m, 442, "Unsupported Transport Protocol")
            }
            _ => return MessageBuilder::error(m, 400, "Bad Request: REQUESTED-TRANSPORT"),
        }
        let token = attr(m, ATTR_RESERVATION_TOKEN);
        let even_port = attr(m, ATTR_EVEN_PORT);
        let req_family = attr(m, ATTR_REQUESTED_ADDRESS_FAMILY);
        let add_family = attr(m, ATTR_ADDITIONAL_ADDRESS_FAMILY);
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
        let mut granted = vec![grant.local];
        let mut address_error = None;
        if let Some(f) = additional {
            match relays.allocate(&RelayRequest {
                family: f,
                even_port: false,
                reserve_next: false,
                reservation_token: None,
                dont_fragment,
            }) {
                Ok(g) => granted.push(g.local),
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
            .map(|l| Relay {
                local: *l,
                advertised: self.advertised(*l),
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

        let id = self.next_id;
        self.next_id += 1;
        let alloc = Allocation {
            tuple,
            username: auth.username.clone(),
            created: now,
            to_peer_bytes: Cell::new(0),
            from_peer_bytes: Cell::new(0),
            holder,
            relays: relays_v,
            expires: now + lifetime,
            permissions: HashMap::new(),
            channels: HashMap::new(),
            peer_channels: HashMap::new(),
            allocate_tid: m.transaction_id,
            allocate_response: Vec::new(),
        };
        self.stats
            .live_allocations(tuple.transport.as_str(), alloc.family_label(), 1);
        for r in &alloc.relays {
            self.by_relay.insert(r.local, id);
        }
        self.by_tuple.insert(tuple, id);
        self.shared.allocations.fetch_add(1, Ordering::Relaxed);
        self.timers
            .schedule(alloc.expires, TimerKey::Allocation(id));
        tracing::info!(
            user = %alloc.username,
            client = %tuple.client,
            transport = tuple.transport.as_str(),
            relay = ?alloc.relays.iter().map(|r| r.advertised).collect::<Vec<_>>(),
            lifetime_secs = lifetime.as_secs(),
            "allocation created"
        );
        self.allocs.insert(id, alloc);
        b
    }

    /// One unit of every quota for `h`, or the error response (486 per user or per client IP,
    /// 508 in total), counted by scope.
    fn take_quota(&mut self, m: &Message, h: &Holder) -> Result<(), MessageBuilder> {
        let stats = &mut self.stats;
        self.shared.take_quota(h, &self.cfg).map_err(|r| {
            stats.quota_rejection(r);
            match r {
                QuotaScope::User | QuotaScope::Ip => {
                    MessageBuilder::error(m, 486, "Allocation Quota Reached")
                }
                QuotaScope::Total => MessageBuilder::error(m, 508, "Insufficient Capacity"),
            }
        })
    }

    fn advertised(&self, local: SocketAddr) -> SocketAddr {
        match self.cfg.external_ips.get(&local.ip()) {
            Some(ip) => SocketAddr::new(*ip, local.port()),
            None => local,
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

    /// RFC 8656 §8.
    fn refresh(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        now: Instant,
        relays: &mut dyn RelayAllocator,
    ) -> MessageBuilder {
        let id = match self.owned_allocation(tuple, m, auth) {
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
            self.delete_allocation(id, relays, "refresh");
        } else if let Some(a) = self.allocs.get_mut(&id) {
            a.expires = now + lifetime;
            self.timers.schedule(a.expires, TimerKey::Allocation(id));
        }
        b.raw(ATTR_LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        b
    }

    /// Checks peers before permissions are installed for them: each peer's family against the
    /// allocation's relays (443), then the policy (403) unless the peer is a live relayed
    /// address of this server, then room for the new permissions (508).
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
        Ok(())
    }

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

    fn install_permission(&mut self, id: u64, ip: IpAddr, now: Instant) {
        let expires = now + self.cfg.permission_lifetime;
        if let Some(a) = self.allocs.get_mut(&id) {
            if a.permissions.insert(ip, expires).is_none() {
                self.stats.live_permissions(1);
            }
            self.timers.schedule(expires, TimerKey::Permission(id, ip));
        }
    }

    /// RFC 8656 §10.
    fn create_permission(
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
        }
        MessageBuilder::success(m)
    }

    /// RFC 8656 §11.
    fn channel_bind(
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
            self.timers.schedule(expires, TimerKey::Channel(id, number));
        }
        self.install_permission(id, peer.ip(), now);
        MessageBuilder::success(m)
    }

    /// Send indication (RFC 8656 §11.2): relayed when a permission exists, silently dropped
    /// (and counted) otherwise.
    fn handle_send(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) {
        let Some(a) = self.by_tuple.get(&tuple).and_then(|id| self.allocs.get(id)) else {
            self.stats.drop_packet(DropReason::NoAllocation);
            return;
        };
        let (Some(peer), Some(data)) = (xor_address(m, ATTR_XOR_PEER_ADDRESS), attr(m, ATTR_DATA))
        else {
            self.stats.drop_packet(DropReason::Malformed);
            return;
        };
        if !a.has_permission(peer.ip(), now) {
            self.stats.drop_packet(DropReason::NoPermission);
            return;
        }
        let Some(relay) = a.relay_for(AddressFamily::of(peer.ip())) else {
            self.stats.drop_packet(DropReason::FamilyMismatch);
            return;
        };
        if !Self::peer_allowed(&self.cfg, &self.shared, &mut self.stats, peer) {
            return;
        }
        self.stats.relay.c2p_packets += 1;
        self.stats.relay.c2p_bytes += data.len() as u64;
        a.to_peer_bytes
            .set(a.to_peer_bytes.get() + data.len() as u64);
        out.push(Transmit::ToPeer {
            relay: relay.local,
            peer,
            data: data.to_vec(),
        });
    }

    /// ChannelData from a client (RFC 8656 §12.5).
    fn handle_channel_data(
        &mut self,
        tuple: FiveTuple,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Transmit>,
    ) {
        let number = u16::from_be_bytes([data[0], data[1]]);
        let len = u16::from_be_bytes([data[2], data[3]]) as usize;
        if data.len() < 4 + len {
            self.stats.drop_packet(DropReason::Malformed);
            return;
        }
        let Some(a) = self.by_tuple.get(&tuple).and_then(|id| self.allocs.get(id)) else {
            self.stats.drop_packet(DropReason::NoAllocation);
            return;
        };
        let Some(c) = a.channels.get(&number).filter(|c| c.bound) else {
            self.stats.drop_packet(DropReason::NoChannel);
            return;
        };
        if !a.has_permission(c.peer.ip(), now) {
            self.stats.drop_packet(DropReason::NoPermission);
            return;
        }
        let Some(relay) = a.relay_for(AddressFamily::of(c.peer.ip())) else {
            self.stats.drop_packet(DropReason::FamilyMismatch);
            return;
        };
        if !Self::peer_allowed(&self.cfg, &self.shared, &mut self.stats, c.peer) {
            return;
        }
        self.stats.relay.c2p_packets += 1;
        self.stats.relay.c2p_bytes += len as u64;
        a.to_peer_bytes.set(a.to_peer_bytes.get() + len as u64);
        out.push(Transmit::ToPeer {
            relay: relay.local,
            peer: c.peer,
            data: data[4..4 + len].to_vec(),
        });
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
        self.last_now = self.last_now.max(now);
        let Some(a) = self.by_relay.get(&relay).and_then(|id| self.allocs.get(id)) else {
            self.stats.drop_packet(DropReason::NoAllocation);
            return None;
        };
        if !a.has_permission(peer.ip(), now) {
            self.stats.drop_packet(DropReason::NoPermission);
            return None;
        }
        if !Self::peer_allowed(&self.cfg, &self.shared, &mut self.stats, peer) {
            return None;
        }
        let frame = match a.peer_channels.get(&peer) {
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
                let mut f = Vec::with_capacity(4 + padded);
                f.extend_from_slice(&n.to_be_bytes());
                f.extend_from_slice(&(data.len() as u16).to_be_bytes());
                f.extend_from_slice(data);
                f.resize(4 + padded, 0);
                f
            }
            _ => {
                if data.len() > u16::MAX as usize - 64 {
                    self.stats.drop_packet(DropReason::TooLarge);
                    return None;
                }
                let mut b = MessageBuilder::indication(METHOD_DATA);
                b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
                b.raw(ATTR_DATA, data);
                b.finish()
            }
        };
        self.stats.relay.p2c_packets += 1;
        self.stats.relay.p2c_bytes += data.len() as u64;
        a.from_peer_bytes
            .set(a.from_peer_bytes.get() + data.len() as u64);
        Some(Transmit::ToClient {
            to: a.tuple,
            data: frame,
        })
    }

    /// The stream connection of `tuple` closed: its allocation goes too (RFC 8656 §5).
    pub fn handle_connection_closed(&mut self, tuple: FiveTuple, relays: &mut dyn RelayAllocator) {
        if let Some(&id) = self.by_tuple.get(&tuple) {
            self.delete_allocation(id, relays, "connection_closed");
        }
    }

    /// Expires allocations, permissions and channel bindings due at `now`; entries that fired
    /// early (deadline pushed back by a refresh) are re-armed at the real deadline.
    pub fn handle_timeout(&mut self, now: Instant, relays: &mut dyn RelayAllocator) {
        self.last_now = self.last_now.max(now);
        while let Some((_, key)) = self.timers.pop_due(now) {
            match key {
                TimerKey::Allocation(id) => match self.allocs.get(&id).map(|a| a.expires) {
                    Some(t) if t <= now => self.delete_allocation(id, relays, "expired"),
                    Some(t) => self.timers.schedule(t, key),
                    None => {}
                },
                TimerKey::Permission(id, ip) => {
                    let Some(a) = self.allocs.get_mut(&id) else {
                        continue;
                    };
                    match a.permissions.get(&ip).copied() {
                        Some(t) if t <= now => {
                            a.permissions.remove(&ip);
                            self.stats.live_permissions(-1);
                        }
                        Some(t) => self.timers.schedule(t, key),
                        None => {}
                    }
                }
                TimerKey::Reservation(token) => {
                    // Nobody redeemed it in time (RFC 8656 §7.2): the port and the quota unit
                    // go back. Redeemed ones are already gone from the table.
                    if let Some(r) = self.shared.take_reservation(&token, Some(now)) {
                        self.shared.return_quota(&r.holder);
                        self.stats.live_reservations(-1);
                        relays.cancel_reservation(token);
                    }
                }
                TimerKey::Channel(id, number) => {
                    let reuse = self.cfg.channel_reuse_delay;
                    let Some(a) = self.allocs.get_mut(&id) else {
                        continue;
                    };
                    let Some(c) = a.channels.get_mut(&number) else {
                        continue;
                    };
                    if c.bound && c.expires <= now {
                        c.bound = false;
                        self.stats.live_channel_bindings(-1);
                        self.timers.schedule(c.expires + reuse, key);
                    } else if c.bound {
                        self.timers.schedule(c.expires, key);
                    } else if c.expires + reuse <= now {
                        let peer = c.peer;
                        a.channels.remove(&number);
                        a.peer_channels.remove(&peer);
                    } else {
                        self.timers.schedule(c.expires + reuse, key);
                    }
                }
            }
        }
    }

    /// Removes allocation `id`, frees its relayed transport addresses and quota, and logs its
    /// end: `reason` is `refresh` (lifetime 0), `expired`, `connection_closed` or `shutdown`.
    fn delete_allocation(&mut self, id: u64, relays: &mut dyn RelayAllocator, reason: &str) {
        let Some(a) = self.allocs.remove(&id) else {
            return;
        };
        tracing::info!(
            user = %a.username,
            client = %a.tuple.client,
            transport = a.tuple.transport.as_str(),
            relay = ?a.relays.iter().map(|r| r.advertised).collect::<Vec<_>>(),
            duration_secs = self.last_now.saturating_duration_since(a.created).as_secs(),
            to_peer_bytes = a.to_peer_bytes.get(),
            from_peer_bytes = a.from_peer_bytes.get(),
            reason,
            "allocation ended"
        );
        self.by_tuple.remove(&a.tuple);
        self.timers.cancel(&TimerKey::Allocation(id));
        for ip in a.permissions.keys() {
            self.timers.cancel(&TimerKey::Permission(id, *ip));
        }
        for n in a.channels.keys() {
            self.timers.cancel(&TimerKey::Channel(id, *n));
        }
        let mut live = Vec::new();
        for r in &a.relays {
            self.by_relay.remove(&r.local);
            relays.release(r.local);
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
    }

    /// Deletes every allocation (shutdown).
    pub fn close_all(&mut self, relays: &mut dyn RelayAllocator) {
        let ids: Vec<u64> = self.allocs.keys().copied().collect();
        for id in ids {
            self.delete_allocation(id, relays, "shutdown");
        }
    }
}

/// An IPv4-mapped IPv6 address counts as its IPv4 address (per-IP quota).
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// PASSWORD-ALGORITHMS value: MD5 and SHA-256, no parameters (RFC 8489 §14.11).
fn password_algorithms_value() -> [u8; 8] {
    [0, 1, 0, 0, 0, 2, 0, 0]
}

/// The `result` label of a response: `success`, `auth_challenge` (401) or `error_<code>`.
fn response_label(error_code: Option<u16>) -> &'static str {
    match error_code {
        None => "success",
        Some(400) => "error_400",
        Some(401) => "auth_challenge",
        Some(403) => "error_403",
        Some(420) => "error_420",
        Some(437) => "error_437",
        Some(438) => "error_438",
        Some(440) => "error_440",
        Some(441) => "error_441",
        Some(442) => "error_442",
        Some(443) => "error_443",
        Some(486) => "error_486",
        Some(508) => "error_508",
        Some(_) => "error_other",
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests;
