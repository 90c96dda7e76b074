//! `turn_proto::core::TurnCore` driven by a sequence of inputs derived from the fuzz bytes.
//!
//! Setup: one core with static users alice/bob, a REST secret (user carol), a fake relay
//! allocator (IPv4 always, IPv6 optional) that checks every release, and virtual time. Before the
//! fuzz bytes run, the harness sends a correctly authenticated Allocate from client 0 over UDP
//! (flags in the first byte add a TCP allocation, a permission and a channel, skip it, map the
//! relay IP to an external one, or turn IPv6 relays on), so the fuzzer starts past the 401.
//!
//! Then the input is read as a sequence of steps, each one op byte and its operands:
//! - raw client bytes on one of several 5-tuples (UDP/TCP, IPv4/IPv6 clients, several ports);
//! - a request the harness signs: method, transaction id and attributes chosen by the input
//!   (raw TLVs or typed helpers: XOR-PEER-ADDRESS from a table of peers and handed-out relays,
//!   LIFETIME, CHANNEL-NUMBER, EVEN-PORT, RESERVATION-TOKEN...), then USERNAME/REALM/NONCE and
//!   MESSAGE-INTEGRITY(-SHA256) with a user, nonce (fresh, stale or garbage) and algorithms the
//!   input picks; optionally unsigned or with FINGERPRINT;
//! - a Send indication, a ChannelData frame, a retransmission of the last request;
//! - a peer datagram on a relay address the allocator handed out (live or released);
//! - a timer advance (`handle_timeout`), a connection close, `close_all`.
//!
//! Invariants checked after every step: no panic; `allocation_count()` <= successful Allocate
//! responses seen, <= the total quota, and = `Shared::total_allocations()`; the allocator never
//! sees a release of an address it did not hand out (or a double release); with no allocation
//! left, every relay handed out has been released, no relayed address is live and the
//! permission/channel gauges are 0; every STUN message sent to a client decodes; relayed data
//! only leaves from live relays. At the end time jumps far ahead: every allocation must expire,
//! every relay be released and no timer stay armed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc_stun::attributes::*;
use rtc_stun::message::{
    MessageType, Method, TransactionId, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_CHANNEL_BIND, METHOD_CONNECT, METHOD_CREATE_PERMISSION,
    METHOD_REFRESH, METHOD_SEND,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stun_proto::binding::BindingConfig;
use stun_proto::msg::{
    self, classify, IntegrityAlgorithm, MessageBuilder, PacketKind, PasswordAlgorithm, Transport,
};
use turn_proto::auth::{long_term_key, mint_rest_credential, Credentials, NonceMinter};
use turn_proto::core::{
    AddressFamily, BandwidthCaps, CoreConfig, RelayAllocator, RelayError, RelayGrant, RelayRequest,
    Shared, TcpRelayConfig, TicketKey, Transmit, TurnCore, ATTR_ADDITIONAL_ADDRESS_FAMILY,
};
use turn_proto::policy::PeerPolicy;
use turn_proto::FiveTuple;

const T0_UNIX: u64 = 1_800_000_000;
const REALM: &str = "turnkey";
const TOTAL_QUOTA: u32 = 6;
const USER_QUOTA: u32 = 3;
const IP_QUOTA: u32 = 4;
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
const RELAY_V4: &str = "192.0.2.1";
const RELAY_V6: &str = "2001:db8::1";
const EXTERNAL_V4: &str = "203.0.113.1";
const RELAY_PORTS: (u16, u16) = (50000, 50063);
/// Steps per input; keeps one execution fast.
const MAX_STEPS: usize = 256;

/// `FUZZ_TRACE=1` prints each step and reply (for checking what a seed or crash input does).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

// ---------------------------------------------------------------------------------------------
// Fake relay allocator

/// Hands out ports from a small range, never one that is live or reserved, and panics (a core
/// bug) on a release of an address that is not live.
struct FakeRelays {
    v6: bool,
    fail: bool,
    next_port: u16,
    live: HashSet<SocketAddr>,
    handed_out: Vec<SocketAddr>,
    reserved: HashMap<[u8; 8], SocketAddr>,
    last_token: Option<[u8; 8]>,
    next_token: u64,
}

impl FakeRelays {
    fn new(v6: bool) -> Self {
        Self {
            v6,
            fail: false,
            next_port: RELAY_PORTS.0,
            live: HashSet::new(),
            handed_out: Vec::new(),
            reserved: HashMap::new(),
            last_token: None,
            next_token: 1,
        }
    }

    fn taken(&self, a: SocketAddr) -> bool {
        self.live.contains(&a) || self.reserved.values().any(|r| *r == a)
    }

    fn free_port(&mut self, ip: IpAddr, even: bool) -> Option<SocketAddr> {
        let span = (RELAY_PORTS.1 - RELAY_PORTS.0 + 1) as usize;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= RELAY_PORTS.1 {
                RELAY_PORTS.0
            } else {
                p + 1
            };
            let a = SocketAddr::new(ip, p);
            if (!even || p.is_multiple_of(2)) && !self.taken(a) {
                return Some(a);
            }
        }
        None
    }

    fn grant(&mut self, local: SocketAddr) {
        assert!(
            self.live.insert(local),
            "allocator handed out {local} twice"
        );
        self.handed_out.push(local);
    }
}

impl RelayAllocator for FakeRelays {
    fn allocate(&mut self, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        if self.fail {
            return Err(RelayError::Exhausted);
        }
        if let Some(t) = req.reservation_token {
            let local = self.reserved.remove(&t).ok_or(RelayError::BadToken)?;
            self.grant(local);
            return Ok(RelayGrant {
                local,
                reservation_token: None,
            });
        }
        let ip: IpAddr = match req.family {
            AddressFamily::V4 => RELAY_V4.parse().unwrap(),
            AddressFamily::V6 if self.v6 => RELAY_V6.parse().unwrap(),
            AddressFamily::V6 => return Err(RelayError::FamilyUnsupported),
        };
        let local = self
            .free_port(ip, req.even_port)
            .ok_or(RelayError::Exhausted)?;
        let mut reservation_token = None;
        if req.reserve_next && local.port() < RELAY_PORTS.1 {
            let next = SocketAddr::new(ip, local.port() + 1);
            if !self.taken(next) {
                if self.reserved.len() >= 8 {
                    self.reserved.clear();
                }
                let t = self.next_token.to_be_bytes();
                self.next_token += 1;
                self.reserved.insert(t, next);
                self.last_token = Some(t);
                reservation_token = Some(t);
            }
        }
        self.grant(local);
        Ok(RelayGrant {
            local,
            reservation_token,
        })
    }

    fn release(&mut self, local: SocketAddr) {
        assert!(
            self.live.remove(&local),
            "core released {local}, which is not a live relay"
        );
    }

    fn cancel_reservation(&mut self, token: [u8; 8]) {
        self.reserved.remove(&token);
    }
}

// ---------------------------------------------------------------------------------------------
// Input reader

struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
}

// ---------------------------------------------------------------------------------------------
// The world: core, allocator, clock, what the harness has seen

fn tuples() -> [FiveTuple; 8] {
    let v4: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    let t = |c: &str, server: SocketAddr, transport| FiveTuple {
        client: c.parse().unwrap(),
        server,
        transport,
    };
    [
        t("198.51.100.1:40000", v4, Transport::Udp),
        t("198.51.100.1:40001", v4, Transport::Tcp),
        t("198.51.100.1:40002", v4, Transport::Udp),
        t("198.51.100.2:40000", v4, Transport::Udp),
        t("198.51.100.1:40000", v4, Transport::Tcp),
        t("[2001:db8:2::1]:40000", v6, Transport::Udp),
        t("[2001:db8:2::1]:40001", v6, Transport::Tcp),
        t("198.51.100.1:40003", v4, Transport::Tcp),
    ]
}

fn fixed_peers() -> [SocketAddr; 8] {
    [
        "198.51.100.7:9000".parse().unwrap(),
        "198.51.100.7:9001".parse().unwrap(),
        "203.0.113.5:5000".parse().unwrap(),
        "[2001:db8:1::5]:7000".parse().unwrap(),
        "10.0.0.1:80".parse().unwrap(),    // private: denied
        "192.0.2.1:3478".parse().unwrap(), // the server itself: denied
        "[::ffff:198.51.100.7]:9000".parse().unwrap(), // IPv4-mapped IPv6
        "203.0.113.1:50000".parse().unwrap(), // the external relay IP
    ]
}

const METHODS: [Method; 6] = [
    METHOD_ALLOCATE,
    METHOD_REFRESH,
    METHOD_CREATE_PERMISSION,
    METHOD_CHANNEL_BIND,
    METHOD_BINDING,
    METHOD_CONNECT,
];

const CHANNELS: [u16; 6] = [0x4000, 0x4001, 0x4FFF, 0x7FFF, 0x3FFF, 0x8000];

struct World {
    core: TurnCore,
    cfg: Arc<CoreConfig>,
    shared: Arc<Shared>,
    relays: FakeRelays,
    tuples: [FiveTuple; 8],
    peers: [SocketAddr; 8],
    rest_user: String,
    rest_password: String,
    t0: Instant,
    now: Instant,
    next_tid: u32,
    last_request: Option<(FiveTuple, Vec<u8>)>,
    /// Allocate success responses seen (retransmitted answers included).
    allocate_successes: usize,
    /// Every XOR-RELAYED-ADDRESS handed to a client.
    relayed_seen: Vec<SocketAddr>,
}

impl World {
    fn new(flags: u8) -> Self {
        let external = flags & 0x08 != 0;
        let v6 = flags & 0x10 != 0;
        let mut external_ips = HashMap::new();
        let mut own_ips: Vec<IpAddr> = vec![RELAY_V4.parse().unwrap(), RELAY_V6.parse().unwrap()];
        if external {
            external_ips.insert(RELAY_V4.parse().unwrap(), EXTERNAL_V4.parse().unwrap());
            own_ips.push(EXTERNAL_V4.parse().unwrap());
        }
        let cfg = Arc::new(CoreConfig {
            realm: REALM.into(),
            software: Some("turnkey-fuzz".into()),
            credentials: Credentials::new(
                HashMap::from([
                    ("alice".to_string(), "alicepw".to_string()),
                    ("bob".to_string(), "bobpw".to_string()),
                ]),
                vec!["restsecret".into(), "oldsecret".into()],
            ),
            nonces: NonceMinter::new([1; 32], 600),
            policy: PeerPolicy::new(vec![], vec![], own_ips, vec![3478], RELAY_PORTS),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: MAX_LIFETIME,
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            channel_reuse_delay: Duration::from_secs(300),
            user_quota: USER_QUOTA,
            total_quota: TOTAL_QUOTA,
            ip_quota: IP_QUOTA,
            reservation_lifetime: Duration::from_secs(30),
            unauth_rate_per_sec: 20,
            unauth_burst: 40,
            external_ips,
            binding: BindingConfig::default(),
            alternate_servers: Vec::new(),
            alternate_over_allocations: 0,
            mobility: Some(TicketKey::new([3; 32])),
            // A cap, so the bucket path is fuzzed too.
            bandwidth: BandwidthCaps {
                allocation_bps: 8_000_000,
                ..BandwidthCaps::default()
            },
            tcp: TcpRelayConfig::default(),
        });
        let shared = Arc::new(Shared::default());
        let t0 = Instant::now();
        let core = TurnCore::new(cfg.clone(), shared.clone(), t0, T0_UNIX);
        let rest = mint_rest_credential("restsecret", "carol", 3600, T0_UNIX);
        Self {
            core,
            cfg,
            shared,
            relays: FakeRelays::new(v6),
            tuples: tuples(),
            peers: fixed_peers(),
            rest_user: rest.username,
            rest_password: rest.password,
            t0,
            now: t0,
            next_tid: 0,
            last_request: None,
            allocate_successes: 0,
            relayed_seen: Vec::new(),
        }
    }

    fn unix_now(&self) -> u64 {
        T0_UNIX + self.now.duration_since(self.t0).as_secs()
    }

    fn fresh_tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0x5a; 12];
        t[8..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId(t)
    }

    /// A peer: one of the fixed ones, or a relayed address handed out to a client.
    fn peer(&self, sel: u8) -> SocketAddr {
        let n = self.peers.len();
        let i = sel as usize;
        if i >= n && !self.relayed_seen.is_empty() {
            self.relayed_seen[(i - n) % self.relayed_seen.len()]
        } else {
            self.peers[i % n]
        }
    }

    /// A relay socket's local address as handed out by the allocator (live or released).
    fn relay(&self, sel: u8) -> SocketAddr {
        if self.relays.handed_out.is_empty() {
            SocketAddr::new(RELAY_V4.parse().unwrap(), RELAY_PORTS.0)
        } else {
            self.relays.handed_out[sel as usize % self.relays.handed_out.len()]
        }
    }

    // --- building requests ---

    /// A request from `tuple` signed (or not) as `auth` says. `auth` bits: 0-1 user (alice,
    /// bob, carol by REST, mallory), 2-3 nonce (fresh for `tuple`, fresh for another 5-tuple,
    /// stale, garbage), 4 SHA-256 password algorithm (with PASSWORD-ALGORITHMS), 5
    /// MESSAGE-INTEGRITY-SHA256, 6 FINGERPRINT, 7 unsigned.
    fn sign(&self, tuple: FiveTuple, mut b: MessageBuilder, auth: u8) -> Vec<u8> {
        let (user, pw) = match auth & 3 {
            0 => ("alice", "alicepw"),
            1 => ("bob", "bobpw"),
            2 => (self.rest_user.as_str(), self.rest_password.as_str()),
            _ => ("mallory", "x"),
        };
        let nonce = match (auth >> 2) & 3 {
            0 => self.cfg.nonces.mint(self.unix_now(), &tuple),
            1 => {
                let other = if tuple == self.tuples[0] {
                    self.tuples[1]
                } else {
                    self.tuples[0]
                };
                self.cfg.nonces.mint(self.unix_now(), &other)
            }
            2 => self.cfg.nonces.mint(T0_UNIX.saturating_sub(3600), &tuple),
            _ => "obMatJos2gAAAgarbage".to_string(),
        };
        let pw_alg = if auth & 0x10 != 0 {
            b.raw(ATTR_PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
            b.raw(ATTR_PASSWORD_ALGORITHMS, &[0, 1, 0, 0, 0, 2, 0, 0]);
            PasswordAlgorithm::Sha256
        } else {
            PasswordAlgorithm::Md5
        };
        if auth & 0x80 == 0 {
            b.raw(ATTR_USERNAME, user.as_bytes());
            b.raw(ATTR_REALM, REALM.as_bytes());
            b.raw(ATTR_NONCE, nonce.as_bytes());
            let key = long_term_key(user, REALM, pw, pw_alg);
            let alg = if auth & 0x20 != 0 {
                IntegrityAlgorithm::Sha256
            } else {
                IntegrityAlgorithm::Sha1
            };
            b.integrity(&key, alg);
        }
        if auth & 0x40 != 0 {
            b.fingerprint();
        }
        b.finish()
    }

    /// Appends one attribute chosen by the input.
    fn attribute(&self, b: &mut MessageBuilder, input: &mut Input) {
        let kind = input.u8();
        match kind % 12 {
            0 => {
                let t = AttrType(input.u16());
                let len = input.u8() as usize;
                let v = input.bytes(len).to_vec();
                b.raw(t, &v);
            }
            1 | 2 => {
                let p = self.peer(input.u8());
                b.xor_address(ATTR_XOR_PEER_ADDRESS, p);
            }
            3 => {
                let v = match input.u8() % 6 {
                    0 => 0,
                    1 => 1,
                    2 => 600,
                    3 => 3600,
                    4 => u32::MAX,
                    _ => input.u32(),
                };
                b.raw(ATTR_LIFETIME, &v.to_be_bytes());
            }
            4 => {
                let v: &[u8] = match input.u8() % 3 {
                    0 => &[17, 0, 0, 0],
                    1 => &[6, 0, 0, 0],
                    _ => &[17],
                };
                b.raw(ATTR_REQUESTED_TRANSPORT, v);
            }
            5 => {
                let sel = input.u8() as usize;
                let n = if sel < 0xF0 {
                    CHANNELS[sel % CHANNELS.len()]
                } else {
                    input.u16()
                };
                let mut v = n.to_be_bytes().to_vec();
                v.extend_from_slice(&[0, 0]);
                b.raw(ATTR_CHANNEL_NUMBER, &v);
            }
            6 => {
                let v = input.u8();
                b.raw(ATTR_EVEN_PORT, &[v & 0x80]);
            }
            7 => {
                let t = match (input.u8() % 2, self.relays.last_token) {
                    (0, Some(t)) => t,
                    _ => input.u32().to_be_bytes().repeat(2).try_into().unwrap(),
                };
                b.raw(ATTR_RESERVATION_TOKEN, &t);
            }
            8 => {
                let f = input.u8() % 3 + 1;
                b.raw(ATTR_REQUESTED_ADDRESS_FAMILY, &[f, 0, 0, 0]);
            }
            9 => {
                let f = input.u8() % 3 + 1;
                b.raw(ATTR_ADDITIONAL_ADDRESS_FAMILY, &[f, 0, 0, 0]);
            }
            10 => {
                b.raw(ATTR_DONT_FRAGMENT, &[]);
            }
            _ => {
                let len = input.u8() as usize;
                let v = input.bytes(len).to_vec();
                b.raw(ATTR_DATA, &v);
            }
        }
    }

    fn tuple(&self, sel: u8) -> FiveTuple {
        self.tuples[sel as usize % self.tuples.len()]
    }

    // --- steps ---

    fn client(&mut self, tuple: FiveTuple, data: &[u8]) {
        let mut out = Vec::new();
        self.core
            .handle_client(tuple, data, self.now, &mut self.relays, &mut out);
        for t in out {
            self.transmit(t);
        }
        self.check();
    }

    fn request(&mut self, tuple: FiveTuple, data: Vec<u8>) {
        self.client(tuple, &data);
        self.last_request = Some((tuple, data));
    }

    fn signed(
        &mut self,
        tuple: FiveTuple,
        method: Method,
        tid: TransactionId,
        attrs: impl FnOnce(&mut MessageBuilder),
        auth: u8,
    ) {
        let mut b = MessageBuilder::new(MessageType::new(method, CLASS_REQUEST), tid);
        attrs(&mut b);
        let data = self.sign(tuple, b, auth);
        self.request(tuple, data);
    }

    fn step(&mut self, input: &mut Input) {
        let op = input.u8();
        if trace() {
            eprintln!(
                "step op={} allocations={}",
                op % 12,
                self.core.allocation_count()
            );
        }
        match op % 12 {
            // Raw client bytes.
            0 => {
                let t = self.tuple(input.u8());
                let len = input.u16() as usize % 2048;
                let data = input.bytes(len).to_vec();
                self.client(t, &data);
            }
            // A request the harness signs (the most frequent step).
            1..=4 => {
                let t = self.tuple(input.u8());
                let method = METHODS[input.u8() as usize % METHODS.len()];
                let tid_sel = input.u8();
                let tid = if tid_sel < 0xF0 {
                    self.fresh_tid()
                } else {
                    // A few fixed ids, so ids repeat across requests and tuples.
                    TransactionId([tid_sel; 12])
                };
                let n = input.u8() % 6;
                let mut b = MessageBuilder::new(MessageType::new(method, CLASS_REQUEST), tid);
                for _ in 0..n {
                    self.attribute(&mut b, input);
                }
                let auth = input.u8();
                let data = self.sign(t, b, auth);
                self.request(t, data);
            }
            // Send indication.
            5 => {
                let t = self.tuple(input.u8());
                let p = self.peer(input.u8());
                let len = input.u8() as usize;
                let payload = input.bytes(len).to_vec();
                let fp = input.u8();
                let tid = self.fresh_tid();
                let mut b =
                    MessageBuilder::new(MessageType::new(METHOD_SEND, CLASS_INDICATION), tid);
                b.xor_address(ATTR_XOR_PEER_ADDRESS, p);
                b.raw(ATTR_DATA, &payload);
                if fp & 1 != 0 {
                    b.fingerprint();
                }
                let data = b.finish();
                self.client(t, &data);
            }
            // ChannelData from a client.
            6 => {
                let t = self.tuple(input.u8());
                let sel = input.u8() as usize;
                let n = CHANNELS[sel % CHANNELS.len()];
                let declared = input.u8() as usize;
                let actual = input.u8() as usize;
                let mut f = n.to_be_bytes().to_vec();
                f.extend_from_slice(&(declared as u16).to_be_bytes());
                f.extend(std::iter::repeat_n(0xAB, actual));
                if t.transport.is_stream() {
                    f.resize(4 + f.len().saturating_sub(4).div_ceil(4) * 4, 0);
                }
                self.client(t, &f);
            }
            // Peer datagram on a relay address handed out (live or released).
            7 => {
                let relay = self.relay(input.u8());
                let peer = self.peer(input.u8());
                let len = match input.u8() {
                    0xFF => 65535 - (input.u8() as usize), // around the size limits
                    l => l as usize,
                };
                let data = vec![0xCD; len];
                if let Some(t) = self.core.handle_peer(relay, peer, &data, self.now) {
                    assert!(self.relays.live.contains(&relay), "data from a dead relay");
                    if let Transmit::ToClient { to, .. } = &t {
                        assert!(
                            self.core.has_allocation(to),
                            "to a tuple with no allocation"
                        );
                    }
                    self.transmit(t);
                }
                self.check();
            }
            // Timer advance.
            8 => {
                let sel = input.u8();
                match sel % 4 {
                    // Exactly to the next deadline.
                    0 => {
                        if let Some(t) = self.core.poll_timeout() {
                            self.now = self.now.max(t);
                        }
                    }
                    1 => self.now += Duration::from_millis(input.u16() as u64),
                    _ => self.now += Duration::from_secs(input.u16() as u64),
                }
                self.core.handle_timeout(self.now, &mut self.relays);
                self.check();
            }
            // Stream connection closed.
            9 => {
                let t = self.tuple(input.u8());
                self.core.handle_connection_closed(t, &mut self.relays);
                self.check();
            }
            // Retransmit the last request (same bytes, same tuple).
            10 => {
                if let Some((t, data)) = self.last_request.clone() {
                    self.client(t, &data);
                }
            }
            // Allocator failure toggle, or shutdown.
            _ => {
                let sel = input.u8();
                if sel == 0xFF {
                    self.core.close_all(&mut self.relays);
                    assert_eq!(self.core.allocation_count(), 0);
                    self.check();
                } else {
                    self.relays.fail = sel & 1 != 0;
                }
            }
        }
    }

    // --- checks ---

    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::ToClient { to, data } => match classify(&data) {
                PacketKind::Stun => {
                    let m = msg::decode(&data).expect("a STUN message to a client decodes");
                    if trace() {
                        let code = msg::attr(&m, ATTR_ERROR_CODE)
                            .filter(|v| v.len() >= 4)
                            .map(|v| v[2] as u16 * 100 + v[3] as u16);
                        eprintln!("  -> client: {} error={code:?}", m.typ);
                    }
                    if m.typ.method == METHOD_ALLOCATE && m.typ.class == CLASS_SUCCESS_RESPONSE {
                        self.allocate_successes += 1;
                        for a in m
                            .attributes
                            .0
                            .iter()
                            .filter(|a| a.typ == ATTR_XOR_RELAYED_ADDRESS)
                        {
                            let mut one = rtc_stun::message::Message::new();
                            one.transaction_id = m.transaction_id;
                            one.attributes.0.push(a.clone());
                            let addr = msg::xor_address(&one, ATTR_XOR_RELAYED_ADDRESS)
                                .expect("XOR-RELAYED-ADDRESS decodes");
                            if !self.relayed_seen.contains(&addr) {
                                self.relayed_seen.push(addr);
                            }
                        }
                    }
                }
                PacketKind::ChannelData => {
                    let len = u16::from_be_bytes([data[2], data[3]]) as usize;
                    assert!(data.len() >= 4 + len, "short ChannelData to a client");
                    if to.transport.is_stream() {
                        assert_eq!(data.len() % 4, 0, "unpadded ChannelData on a stream");
                    }
                }
                PacketKind::Other => {
                    panic!("client sent something that is neither STUN nor ChannelData")
                }
            },
            Transmit::ToPeer { relay, peer, .. } => {
                if trace() {
                    eprintln!("  -> peer {peer} from relay {relay}");
                }
                assert!(
                    self.relays.live.contains(&relay),
                    "sent from a dead relay {relay}"
                );
                // Every datagram to a peer passes the policy or goes to a live relayed
                // address of this server (never another port of the host).
                assert!(
                    self.cfg.policy.check(peer).is_ok() || self.shared.is_live_relay(peer),
                    "relayed to {peer}, which the policy refuses and is no live relay"
                );
            }
            // RFC 6062: a connection to a peer passes the same policy check.
            Transmit::ConnectPeer { peer, .. } => {
                assert!(
                    self.cfg.policy.check(peer).is_ok() || self.shared.is_live_relay(peer),
                    "TCP connection to {peer}, which the policy refuses and is no live relay"
                );
            }
            Transmit::BindConnection { .. } | Transmit::ClosePeerConnection { .. } => {}
        }
    }

    fn check(&self) {
        let n = self.core.allocation_count();
        assert!(
            n <= self.allocate_successes,
            "{n} allocations, {} successes",
            self.allocate_successes
        );
        assert!(n <= TOTAL_QUOTA as usize);
        assert_eq!(n as u32, self.shared.total_allocations());
        assert!(self.relays.live.len() >= n, "an allocation without a relay");
        assert!(
            self.relays.live.len() <= 2 * n,
            "a relay outlived its allocation"
        );
        let live = &self.core.stats().control;
        assert!(live.live_permissions >= 0, "permissions gauge < 0");
        assert!(live.live_channel_bindings >= 0, "channel gauge < 0");
        if n == 0 {
            assert!(
                self.relays.live.is_empty(),
                "relays not released: {:?}",
                self.relays.live
            );
            for a in self.relays.handed_out.iter().chain(&self.relayed_seen) {
                assert!(!self.shared.is_live_relay(*a), "{a} still live in Shared");
            }
            assert_eq!(live.live_permissions, 0, "permissions gauge");
            assert_eq!(live.live_channel_bindings, 0, "channel gauge");
            let total: i64 = live.live_allocations.values().sum();
            assert_eq!(total, 0, "allocations gauge");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let flags = input.u8();
    let mut w = World::new(flags);
    let udp0 = w.tuples[0];
    let tcp1 = w.tuples[1];

    // Prelude: a correctly authenticated Allocate so the fuzzer starts past authentication.
    if flags & 0x01 == 0 {
        let tid = w.fresh_tid();
        w.signed(
            udp0,
            METHOD_ALLOCATE,
            tid,
            |b| {
                b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            },
            0,
        );
        assert_eq!(w.core.allocation_count(), 1, "prelude Allocate failed");
    }
    if flags & 0x02 != 0 {
        let tid = w.fresh_tid();
        w.signed(
            tcp1,
            METHOD_ALLOCATE,
            tid,
            |b| {
                b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            },
            1,
        );
    }
    if flags & 0x04 != 0 {
        let peer = w.peers[0];
        let tid = w.fresh_tid();
        w.signed(
            udp0,
            METHOD_CHANNEL_BIND,
            tid,
            |b| {
                b.raw(ATTR_CHANNEL_NUMBER, &[0x40, 0x00, 0, 0]);
                b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
            },
            0,
        );
    }

    let mut steps = 0;
    while !input.is_empty() && steps < MAX_STEPS {
        w.step(&mut input);
        steps += 1;
    }

    // Far in the future every allocation has expired and everything is released.
    w.now += MAX_LIFETIME + Duration::from_secs(24 * 3600);
    w.core.handle_timeout(w.now, &mut w.relays);
    assert_eq!(
        w.core.allocation_count(),
        0,
        "allocations outlived their lifetime"
    );
    assert_eq!(w.core.poll_timeout(), None, "a timer is still armed");
    assert_eq!(
        w.shared.reservation_count(),
        0,
        "a reservation outlived its 30 s"
    );
    assert!(
        w.relays.reserved.is_empty(),
        "reserved sockets never cancelled: {:?}",
        w.relays.reserved
    );
    w.check();
});
