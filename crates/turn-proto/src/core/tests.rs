//! Deterministic tests of the TURN core with virtual time: every timer (allocation, permission,
//! channel binding, nonce), every error code, and the relay paths.

use super::*;
use crate::auth::{long_term_key, mint_rest_credential, password_algorithms_value};
use crate::policy::DenyReason;
use crate::stats::{AuthFailure, BandwidthScope, QuotaScope, TcpEvent};
use crate::Transport;
use rtc_stun::message::{
    MessageType, Method, CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE, METHOD_CONNECTION_ATTEMPT,
    METHOD_DATA,
};
use std::sync::atomic::Ordering;
use stun_proto::msg::{
    attr, verify_integrity, xor_address, xor_addresses, IntegrityAlgorithm, PasswordAlgorithm,
};

const T0_UNIX: u64 = 1_800_000_000;

struct FakeRelays {
    v4: IpAddr,
    v6: Option<IpAddr>,
    next_port: u16,
    released: Vec<SocketAddr>,
    tokens: HashMap<[u8; 8], SocketAddr>,
    cancelled: Vec<[u8; 8]>,
    next_token: u8,
    fail: bool,
    /// Grant this shared port (multiplexed) to every UDP request it can serve.
    shared_port: Option<u16>,
}

impl FakeRelays {
    fn new(v4: &str) -> Self {
        Self {
            v4: v4.parse().unwrap(),
            v6: None,
            next_port: 50000,
            released: vec![],
            tokens: HashMap::new(),
            cancelled: vec![],
            next_token: 1,
            fail: false,
            shared_port: None,
        }
    }
}

impl RelayAllocator for FakeRelays {
    fn allocate(&mut self, req: &RelayRequest) -> Result<RelayGrant, RelayError> {
        if self.fail {
            return Err(RelayError::Exhausted);
        }
        if let Some(t) = req.reservation_token {
            return self
                .tokens
                .remove(&t)
                .map(|local| RelayGrant {
                    local,
                    reservation_token: None,
                    multiplexed: false,
                })
                .ok_or(RelayError::BadToken);
        }
        let ip = match req.family {
            AddressFamily::V4 => self.v4,
            AddressFamily::V6 => self.v6.ok_or(RelayError::FamilyUnsupported)?,
        };
        if let Some(port) = self.shared_port {
            if !req.reserve_next && !req.dont_fragment && req.transport == RelayTransport::Udp {
                return Ok(RelayGrant {
                    local: SocketAddr::new(ip, port),
                    reservation_token: None,
                    multiplexed: true,
                });
            }
        }
        if req.even_port && self.next_port % 2 == 1 {
            self.next_port += 1;
        }
        let local = SocketAddr::new(ip, self.next_port);
        self.next_port += 1;
        let mut token = None;
        if req.reserve_next {
            let t = [self.next_token; 8];
            self.next_token = self.next_token.wrapping_add(1);
            self.tokens.insert(t, SocketAddr::new(ip, self.next_port));
            self.next_port += 1;
            token = Some(t);
        }
        Ok(RelayGrant {
            local,
            reservation_token: token,
            multiplexed: false,
        })
    }
    fn release(&mut self, local: SocketAddr) {
        self.released.push(local);
    }
    fn cancel_reservation(&mut self, token: [u8; 8]) {
        if self.tokens.remove(&token).is_some() {
            self.cancelled.push(token);
        }
    }
}

struct Harness {
    core: TurnCore,
    relays: FakeRelays,
    shared: Arc<Shared>,
    t0: Instant,
    now: Instant,
}

fn config() -> CoreConfig {
    CoreConfig {
        realm: "turnkey".into(),
        software: Some("turnkey-test".into()),
        credentials: Credentials::new(
            HashMap::from([
                ("alice".to_string(), "alicepw".to_string()),
                ("bob".to_string(), "bobpw".to_string()),
            ]),
            vec!["restsecret".into()],
        ),
        nonces: NonceMinter::new([1; 32], 600),
        policy: PeerPolicy::new(
            vec![],
            vec![],
            vec!["127.0.0.1".parse().unwrap()],
            vec![3478],
            (50000, 50999),
        ),
        default_lifetime: Duration::from_secs(600),
        max_lifetime: Duration::from_secs(3600),
        permission_lifetime: Duration::from_secs(300),
        channel_lifetime: Duration::from_secs(600),
        channel_reuse_delay: Duration::from_secs(300),
        user_quota: 3,
        total_quota: 5,
        ip_quota: 100,
        reservation_lifetime: Duration::from_secs(30),
        unauth_rate_per_sec: 0,
        unauth_burst: 0,
        external_ips: HashMap::new(),
        binding: BindingConfig::default(),
        alternate_servers: Vec::new(),
        alternate_over_allocations: 0,
        bandwidth: BandwidthCaps::default(),

        mobility: None,
        tcp: TcpRelayConfig::default(),
    }
}

impl Harness {
    fn new() -> Self {
        Self::with(config(), FakeRelays::new("127.0.0.1"))
    }
    fn with(cfg: CoreConfig, relays: FakeRelays) -> Self {
        let shared = Arc::new(Shared::default());
        let t0 = Instant::now();
        let core = TurnCore::new(Arc::new(cfg), shared.clone(), t0, T0_UNIX);
        Self {
            core,
            relays,
            shared,
            t0,
            now: t0,
        }
    }
    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.core.handle_timeout(self.now, &mut self.relays);
    }
    fn send(&mut self, tuple: FiveTuple, data: &[u8]) -> Vec<Transmit> {
        let mut out = vec![];
        self.core
            .handle_client(tuple, data, self.now, &mut self.relays, &mut out);
        out
    }
    /// Sends and expects exactly one reply to the client; returns it decoded.
    fn request(&mut self, tuple: FiveTuple, data: &[u8]) -> Message {
        let out = self.send(tuple, data);
        assert_eq!(out.len(), 1, "{out:?}");
        match &out[0] {
            Transmit::ToClient { to, data } => {
                assert_eq!(*to, tuple);
                msg::decode(data).expect("valid response")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn tuple(port: u16) -> FiveTuple {
    FiveTuple {
        client: SocketAddr::new("198.51.100.1".parse().unwrap(), port),
        server: "127.0.0.1:3478".parse().unwrap(),
        transport: Transport::Udp,
    }
}

fn code(m: &Message) -> Option<u16> {
    attr(m, ATTR_ERROR_CODE).map(|v| v[2] as u16 * 100 + v[3] as u16)
}

/// A client with long-term credentials that learns realm and nonce from the first 401.
struct Client {
    tuple: FiveTuple,
    username: String,
    password: String,
    nonce: String,
}

impl Client {
    fn new(tuple: FiveTuple, username: &str, password: &str) -> Self {
        Self {
            tuple,
            username: username.into(),
            password: password.into(),
            nonce: String::new(),
        }
    }
    fn build(
        &self,
        method: Method,
        tid: TransactionId,
        attrs: &[(AttrType, Vec<u8>)],
        peers: &[SocketAddr],
    ) -> Vec<u8> {
        let mut b = MessageBuilder::new(MessageType::new(method, CLASS_REQUEST), tid);
        for (t, v) in attrs {
            b.raw(*t, v);
        }
        for p in peers {
            b.xor_address(ATTR_XOR_PEER_ADDRESS, *p);
        }
        b.raw(ATTR_USERNAME, self.username.as_bytes());
        b.raw(ATTR_REALM, b"turnkey");
        b.raw(ATTR_NONCE, self.nonce.as_bytes());
        let key = long_term_key(
            &self.username,
            "turnkey",
            &self.password,
            PasswordAlgorithm::Md5,
        );
        b.integrity(&key, IntegrityAlgorithm::Sha1);
        b.fingerprint();
        b.finish()
    }
    /// Sends an authenticated request, handling the 401/438 dance once.
    fn call(
        &mut self,
        h: &mut Harness,
        method: Method,
        attrs: &[(AttrType, Vec<u8>)],
        peers: &[SocketAddr],
    ) -> Message {
        let tid = TransactionId::new();
        let r = h.request(self.tuple, &self.build(method, tid, attrs, peers));
        if matches!(code(&r), Some(401) | Some(438)) && self.nonce.is_empty()
            || code(&r) == Some(438)
        {
            self.nonce = text_attr(&r, ATTR_NONCE).unwrap().to_string();
            return h.request(
                self.tuple,
                &self.build(method, TransactionId::new(), attrs, peers),
            );
        }
        r
    }
    fn allocate(&mut self, h: &mut Harness) -> Message {
        self.call(h, METHOD_ALLOCATE, &[udp()], &[])
    }
}

fn udp() -> (AttrType, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

fn relayed(m: &Message) -> SocketAddr {
    xor_address(m, ATTR_XOR_RELAYED_ADDRESS).expect("XOR-RELAYED-ADDRESS")
}

fn is_success(m: &Message) -> bool {
    m.typ.class == CLASS_SUCCESS_RESPONSE
}

fn auth_failures(h: &Harness, reason: AuthFailure) -> u64 {
    h.core.stats().auth_failures(reason)
}

fn dropped(h: &Harness, reason: DropReason) -> u64 {
    h.core.stats().dropped(reason)
}

fn peer_denied(h: &Harness, reason: DenyReason) -> u64 {
    h.core.stats().control.peer_denied[reason.index()]
}

#[test]
fn allocate_challenge_then_success() {
    let mut h = Harness::new();
    let t = tuple(40000);
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
        TransactionId::new(),
    );
    b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = h.request(t, &b.finish());
    assert_eq!(r.typ.class, CLASS_ERROR_RESPONSE);
    assert_eq!(code(&r), Some(401));
    assert_eq!(text_attr(&r, ATTR_REALM), Some("turnkey"));
    assert!(text_attr(&r, ATTR_NONCE).unwrap().starts_with("obMatJos2"));
    assert!(attr(&r, ATTR_PASSWORD_ALGORITHMS).is_some());

    let mut c = Client::new(t, "alice", "alicepw");
    let r = c.allocate(&mut h);
    assert!(is_success(&r), "{:?}", code(&r));
    assert_eq!(relayed(&r).ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(xor_address(&r, ATTR_XORMAPPED_ADDRESS), Some(t.client));
    assert_eq!(attr(&r, ATTR_LIFETIME), Some(&600u32.to_be_bytes()[..]));
    let key = long_term_key("alice", "turnkey", "alicepw", PasswordAlgorithm::Md5);
    assert!(verify_integrity(&r, &key, IntegrityAlgorithm::Sha1));
    assert_eq!(h.shared.total_allocations(), 1);
    assert!(h.shared.is_live_relay(relayed(&r)));
}

#[test]
fn sha256_integrity_is_accepted_and_answered_in_kind() {
    let mut h = Harness::new();
    let t = tuple(40001);
    let mut c = Client::new(t, "alice", "alicepw");
    let _ = c.allocate(&mut h); // learn the nonce
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_REFRESH, CLASS_REQUEST),
        TransactionId::new(),
    );
    b.raw(ATTR_PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
    b.raw(ATTR_PASSWORD_ALGORITHMS, &password_algorithms_value());
    b.raw(ATTR_USERNAME, b"alice")
        .raw(ATTR_REALM, b"turnkey")
        .raw(ATTR_NONCE, c.nonce.as_bytes());
    let key = long_term_key("alice", "turnkey", "alicepw", PasswordAlgorithm::Sha256);
    b.integrity(&key, IntegrityAlgorithm::Sha256);
    let r = h.request(t, &b.finish());
    assert!(is_success(&r), "{:?}", code(&r));
    assert!(verify_integrity(&r, &key, IntegrityAlgorithm::Sha256));
}

#[test]
fn retransmitted_allocate_gets_same_answer_other_tid_gets_437() {
    let mut cfg = config();
    cfg.nonces = NonceMinter::new([1; 32], 60);
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let t = tuple(40002);
    let mut c = Client::new(t, "alice", "alicepw");
    let _ = c.allocate(&mut h);
    let tid = TransactionId::new();
    let req = c.build(METHOD_ALLOCATE, tid, &[udp()], &[]);
    // First allocate already exists from c.allocate: use a fresh tuple for a clean check.
    let t2 = tuple(40003);
    let mut c2 = Client::new(t2, "alice", "alicepw");
    // Learn t2's own nonce (nonces are bound to the 5-tuple): 438 then 437.
    let _ = c2.call(&mut h, METHOD_REFRESH, &[], &[]);
    let req2 = c2.build(METHOD_ALLOCATE, tid, &[udp()], &[]);
    let first = h.send(t2, &req2);
    let again = h.send(t2, &req2);
    assert_eq!(first, again);
    // Even after the nonce went stale.
    h.advance(61);
    assert_eq!(h.send(t2, &req2), first);
    let other = c2.call(&mut h, METHOD_ALLOCATE, &[udp()], &[]);
    assert_eq!(code(&other), Some(437));
    let _ = req;
}

#[test]
fn wrong_password_unknown_user_and_expired_rest_get_401() {
    let mut h = Harness::new();
    let r = Client::new(tuple(40010), "alice", "wrong").allocate(&mut h);
    assert_eq!(code(&r), Some(401));
    let r = Client::new(tuple(40011), "mallory", "x").allocate(&mut h);
    assert_eq!(code(&r), Some(401));
    let cred = mint_rest_credential("restsecret", "carol", 60, T0_UNIX);
    let mut c = Client::new(tuple(40012), &cred.username, &cred.password);
    assert!(is_success(&c.allocate(&mut h)));
    h.advance(61);
    // Expiry is checked on Allocate: the existing allocation can still be refreshed and used.
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert!(is_success(&r), "{:?}", code(&r));
    let r = c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &["192.0.2.1:9".parse().unwrap()],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    let mut c = Client::new(tuple(40013), &cred.username, &cred.password);
    assert_eq!(code(&c.allocate(&mut h)), Some(401));
    let bad = mint_rest_credential("othersecret", "carol", 60, T0_UNIX + 61);
    let mut c = Client::new(tuple(40014), &bad.username, &bad.password);
    assert_eq!(code(&c.allocate(&mut h)), Some(401));
    assert_eq!(auth_failures(&h, AuthFailure::BadIntegrity), 2);
    assert_eq!(auth_failures(&h, AuthFailure::UnknownUser), 1);
    assert_eq!(auth_failures(&h, AuthFailure::Expired), 1);
}

#[test]
fn nonce_goes_stale_in_virtual_time_438() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40020), "alice", "alicepw");
    assert!(is_success(&c.allocate(&mut h)));
    h.advance(599);
    let r = h.request(
        c.tuple,
        &c.build(METHOD_REFRESH, TransactionId::new(), &[], &[]),
    );
    assert!(is_success(&r));
    h.advance(2);
    let r = h.request(
        c.tuple,
        &c.build(METHOD_REFRESH, TransactionId::new(), &[], &[]),
    );
    assert_eq!(code(&r), Some(438));
    assert!(text_attr(&r, ATTR_NONCE).is_some());
    // A bogus nonce is 438 too.
    c.nonce = "obMatJos2gAAAbogus".into();
    let r = h.request(
        c.tuple,
        &c.build(METHOD_REFRESH, TransactionId::new(), &[], &[]),
    );
    assert_eq!(code(&r), Some(438));
}

#[test]
fn allocation_expires_and_releases_everything() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40030), "alice", "alicepw");
    let r = c.allocate(&mut h);
    let relay = relayed(&r);
    assert_eq!(h.core.poll_timeout(), Some(h.t0 + Duration::from_secs(600)));
    h.advance(599);
    assert_eq!(h.core.allocation_count(), 1);
    h.advance(1);
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.relays.released, vec![relay]);
    assert!(!h.shared.is_live_relay(relay));
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn refresh_extends_and_zero_deletes() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40040), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    h.advance(500);
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 1200u32.to_be_bytes().to_vec())],
        &[],
    );
    assert_eq!(attr(&r, ATTR_LIFETIME), Some(&1200u32.to_be_bytes()[..]));
    h.advance(1000);
    assert_eq!(h.core.allocation_count(), 1);
    // Too long is capped to max_lifetime.
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 99999u32.to_be_bytes().to_vec())],
        &[],
    );
    assert_eq!(attr(&r, ATTR_LIFETIME), Some(&3600u32.to_be_bytes()[..]));
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, vec![0, 0, 0, 0])],
        &[],
    );
    assert!(is_success(&r));
    assert_eq!(h.core.allocation_count(), 0);
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), Some(437));
}

#[test]
fn permission_expires_after_300s() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40050), "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
    // Before the permission: peer data dropped.
    assert!(h.core.handle_peer(relay, peer, b"x", h.now).is_none());
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[peer]);
    assert!(is_success(&r), "{:?}", code(&r));
    let got = h
        .core
        .handle_peer(relay, peer, b"hello", h.now)
        .expect("relayed");
    let Transmit::ToClient { data, .. } = got else {
        panic!()
    };
    let d = msg::decode(&data).unwrap();
    assert_eq!(d.typ.method, METHOD_DATA);
    assert_eq!(attr(&d, ATTR_DATA), Some(&b"hello"[..]));
    assert_eq!(xor_address(&d, ATTR_XOR_PEER_ADDRESS), Some(peer));
    // Permissions are per IP: another port of the same peer IP is fine.
    assert!(h
        .core
        .handle_peer(relay, "192.0.2.50:7001".parse().unwrap(), b"x", h.now)
        .is_some());
    h.advance(299);
    assert!(h.core.handle_peer(relay, peer, b"x", h.now).is_some());
    h.advance(1);
    assert!(h.core.handle_peer(relay, peer, b"x", h.now).is_none());
    assert_eq!(h.core.stats().control.live_permissions, 0);
}

#[test]
fn one_timer_per_allocation_ends_each_permission_and_channel_at_its_own_deadline() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40051), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())],
        &[],
    );
    assert!(is_success(&r));
    let p1: SocketAddr = "192.0.2.51:7000".parse().unwrap();
    let p2: SocketAddr = "192.0.2.52:7000".parse().unwrap();
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[p1]); // t=0: to 300
    assert!(is_success(&r));
    h.advance(100);
    let ch = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x05, 0, 0]);
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch], &[p2]); // t=100: permission to 400, channel to 700
    assert!(is_success(&r));
    let live = |h: &Harness| {
        let c = &h.core.stats().control;
        (
            c.live_permissions,
            c.live_channel_bindings,
            h.core.timers.len(),
        )
    };
    assert_eq!(live(&h), (2, 1, 1));
    h.advance(199); // t=299
    assert_eq!(live(&h), (2, 1, 1));
    h.advance(1); // t=300: p1's permission ends
    assert_eq!(live(&h), (1, 1, 1));
    h.advance(100); // t=400: p2's permission ends, its channel stays bound
    assert_eq!(live(&h), (0, 1, 1));
    h.advance(299); // t=699
    assert_eq!(live(&h), (0, 1, 1));
    h.advance(1); // t=700: the channel is unbound, its number reserved for the reuse delay
    assert_eq!(live(&h), (0, 0, 1));
    assert_eq!(h.core.allocation_count(), 1);
}

#[test]
fn send_indication_needs_permission() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40060), "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    let peer: SocketAddr = "192.0.2.60:7000".parse().unwrap();
    let send = |peer: SocketAddr| {
        let mut b = MessageBuilder::new(
            MessageType::new(METHOD_SEND, CLASS_INDICATION),
            TransactionId::new(),
        );
        b.xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .raw(ATTR_DATA, b"payload");
        b.finish()
    };
    assert!(h.send(c.tuple, &send(peer)).is_empty());
    let _ = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[peer]);
    let out = h.send(c.tuple, &send(peer));
    assert_eq!(
        out,
        vec![Transmit::ToPeer {
            relay,
            peer,
            data: b"payload".to_vec()
        }]
    );
    assert_eq!(h.core.stats().relay.c2p_packets, 1);
    assert_eq!(h.core.stats().relay.c2p_bytes, 7);
}

#[test]
fn channel_bind_relay_expiry_and_rebinding_rules() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40070), "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())],
        &[],
    );
    assert!(is_success(&r));
    let peer: SocketAddr = "192.0.2.70:7000".parse().unwrap();
    let peer2: SocketAddr = "192.0.2.71:7000".parse().unwrap();
    let ch = |n: u16| (ATTR_CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0]);
    // Out of range channel numbers.
    for n in [0x3FFF, 0x8000, 0xFFFF] {
        let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(n)], &[peer]);
        assert_eq!(code(&r), Some(400));
    }
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(0x4001)], &[peer]);
    assert!(is_success(&r));
    // ChannelData client -> peer.
    let out = h.send(c.tuple, &[0x40, 0x01, 0, 3, b'a', b'b', b'c', 0]);
    assert_eq!(
        out,
        vec![Transmit::ToPeer {
            relay,
            peer,
            data: b"abc".to_vec()
        }]
    );
    // Peer -> client as ChannelData (UDP: unpadded).
    let Some(Transmit::ToClient { data, .. }) = h.core.handle_peer(relay, peer, b"xyz", h.now)
    else {
        panic!()
    };
    assert_eq!(data, vec![0x40, 0x01, 0, 3, b'x', b'y', b'z']);
    // Same number to another peer, or same peer to another number: 400.
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(0x4001)], &[peer2]);
    assert_eq!(code(&r), Some(400));
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(0x4002)], &[peer]);
    assert_eq!(code(&r), Some(400));
    // Rebinding the same pair refreshes.
    h.advance(280);
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(0x4001)], &[peer]);
    assert!(is_success(&r));
    // Permission (refreshed by ChannelBind at t=280) lasts to 580; channel to 880.
    h.advance(310);
    assert!(h.send(c.tuple, &[0x40, 0x01, 0, 1, 1, 0, 0, 0]).is_empty());
    let _ = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[peer]);
    assert_eq!(h.send(c.tuple, &[0x40, 0x01, 0, 1, 1, 0, 0, 0]).len(), 1);
    h.advance(290); // t=880: channel expired
    assert!(h.send(c.tuple, &[0x40, 0x01, 0, 1, 1, 0, 0, 0]).is_empty());
    assert_eq!(h.core.stats().control.live_channel_bindings, 0);
    // Within the reuse delay, the number stays tied to its peer.
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(0x4001)], &[peer2]);
    assert_eq!(code(&r), Some(400));
    h.advance(300);
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch(0x4001)], &[peer2]);
    assert!(is_success(&r), "{:?}", code(&r));
    assert_eq!(h.core.stats().control.live_channel_bindings, 1);
    // Short ChannelData is dropped, not a panic.
    assert!(h.send(c.tuple, &[0x40, 0x01, 0, 9, 1]).is_empty());
}

#[test]
fn tcp_channel_data_is_padded() {
    let mut h = Harness::new();
    let mut t = tuple(40080);
    t.transport = Transport::Tcp;
    let mut c = Client::new(t, "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    let peer: SocketAddr = "192.0.2.80:7000".parse().unwrap();
    let r = c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0])],
        &[peer],
    );
    assert!(is_success(&r));
    let Some(Transmit::ToClient { data, .. }) = h.core.handle_peer(relay, peer, b"hello", h.now)
    else {
        panic!()
    };
    assert_eq!(data.len(), 12);
    assert_eq!(&data[..9], &[0x40, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    h.core.handle_connection_closed(t, &mut h.relays);
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn peer_policy_403_and_live_relays_allowed() {
    let mut h = Harness::new();
    let mut a = Client::new(tuple(40090), "alice", "alicepw");
    let mut b = Client::new(tuple(40091), "bob", "bobpw");
    let ra = relayed(&a.allocate(&mut h));
    let rb = relayed(&b.allocate(&mut h));
    // Relays are on 127.0.0.1 (a refused class), yet each may reach the other's relay.
    let r = a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[rb]);
    assert!(is_success(&r), "{:?}", code(&r));
    let r = b.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0])],
        &[ra],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    for bad in [
        "127.0.0.1:3478",
        "127.0.0.1:22",
        "10.0.0.1:80",
        "169.254.169.254:80",
        "[::ffff:127.0.0.1]:80",
    ] {
        let p: SocketAddr = bad.parse().unwrap();
        let r = if p.is_ipv6() {
            // v6 peers on a v4-only allocation: family mismatch comes first.
            let r = a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[p]);
            assert_eq!(code(&r), Some(443), "{bad}");
            continue;
        } else {
            a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[p])
        };
        assert_eq!(code(&r), Some(403), "{bad}");
        let key = long_term_key("alice", "turnkey", "alicepw", PasswordAlgorithm::Md5);
        assert!(verify_integrity(&r, &key, IntegrityAlgorithm::Sha1));
    }
    assert!(peer_denied(&h, DenyReason::OwnAddress) >= 2);
    assert_eq!(peer_denied(&h, DenyReason::Private), 1);
    // After B's allocation goes, its relay address is an ordinary refused address again.
    let _ = b.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    let r = a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[rb]);
    assert_eq!(code(&r), Some(403));
}

#[test]
fn quotas_486_per_user_508_total() {
    let mut h = Harness::new();
    for i in 0..3 {
        assert!(is_success(
            &Client::new(tuple(41000 + i), "alice", "alicepw").allocate(&mut h)
        ));
    }
    let r = Client::new(tuple(41010), "alice", "alicepw").allocate(&mut h);
    assert_eq!(code(&r), Some(486));
    for i in 0..2 {
        assert!(is_success(
            &Client::new(tuple(41020 + i), "bob", "bobpw").allocate(&mut h)
        ));
    }
    let cred = mint_rest_credential("restsecret", "carol", 600, T0_UNIX);
    let r = Client::new(tuple(41030), &cred.username, &cred.password).allocate(&mut h);
    assert_eq!(code(&r), Some(508));
    // Draining refuses new allocations too.
    let mut h = Harness::new();
    h.shared.start_draining();
    let r = Client::new(tuple(41040), "alice", "alicepw").allocate(&mut h);
    assert_eq!(code(&r), Some(508));
}

#[test]
fn allocate_error_codes() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(42000), "alice", "alicepw");
    let r = c.call(&mut h, METHOD_ALLOCATE, &[], &[]);
    assert_eq!(code(&r), Some(400));
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[(ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])],
        &[],
    );
    // TCP over UDP: 400 (RFC 6062 §5.1); over TCP it is granted (tcp_allocation_* tests).
    assert_eq!(code(&r), Some(400));
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
        &[],
    );
    assert_eq!(code(&r), Some(440));
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![3, 0, 0, 0])],
        &[],
    );
    assert_eq!(code(&r), Some(440));
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (AttrType(0x7001), vec![1])],
        &[],
    );
    assert_eq!(code(&r), Some(420));
    assert_eq!(attr(&r, ATTR_UNKNOWN_ATTRIBUTES), Some(&[0x70, 0x01][..]));
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[
            udp(),
            (ATTR_EVEN_PORT, vec![0x80]),
            (ATTR_RESERVATION_TOKEN, vec![1; 8]),
        ],
        &[],
    );
    assert_eq!(code(&r), Some(400));
    h.relays.fail = true;
    let r = c.allocate(&mut h);
    assert_eq!(code(&r), Some(508));
    assert_eq!(h.shared.total_allocations(), 0);
    // 441: another user on the same 5-tuple.
    h.relays.fail = false;
    assert!(is_success(&c.allocate(&mut h)));
    let mut other = Client::new(c.tuple, "bob", "bobpw");
    let r = other.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), Some(441));
    // Unknown method: 400.
    let mut raw = MessageBuilder::new(
        MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
        TransactionId::new(),
    )
    .finish();
    raw[1] = 0x0F; // method 0x00F, not a TURN method
    let r = h.request(c.tuple, &raw);
    assert_eq!(code(&r), Some(400));
}

#[test]
fn even_port_reservation_and_dual_stack() {
    let mut relays = FakeRelays::new("127.0.0.1");
    relays.v6 = Some("::1".parse().unwrap());
    let mut h = Harness::with(config(), relays);
    let mut a = Client::new(tuple(43000), "alice", "alicepw");
    let r = a.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_EVEN_PORT, vec![0x80])],
        &[],
    );
    assert!(is_success(&r));
    assert_eq!(relayed(&r).port() % 2, 0);
    let token = attr(&r, ATTR_RESERVATION_TOKEN).expect("token").to_vec();
    let mut b = Client::new(tuple(43001), "bob", "bobpw");
    let r2 = b.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_RESERVATION_TOKEN, token.clone())],
        &[],
    );
    assert!(is_success(&r2));
    assert_eq!(relayed(&r2).port(), relayed(&r).port() + 1);
    let mut d = Client::new(tuple(43002), "bob", "bobpw");
    let r3 = d.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_RESERVATION_TOKEN, token)],
        &[],
    );
    assert_eq!(code(&r3), Some(508));
    // Dual allocation: two XOR-RELAYED-ADDRESS.
    let mut e = Client::new(tuple(43003), "alice", "alicepw");
    let r = e.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
        &[],
    );
    assert!(is_success(&r));
    let both = xor_addresses(&r, ATTR_XOR_RELAYED_ADDRESS).unwrap();
    assert_eq!(both.len(), 2);
    assert!(both[0].is_ipv4() && both[1].is_ipv6());
    // IPv6 only.
    let mut f = Client::new(tuple(43004), "alice", "alicepw");
    let r = f.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
        &[],
    );
    assert!(relayed(&r).is_ipv6());
}

#[test]
fn dual_request_without_v6_reports_address_error() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(43100), "alice", "alicepw");
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0])],
        &[],
    );
    assert!(is_success(&r));
    let v = attr(&r, ATTR_ADDRESS_ERROR_CODE).expect("ADDRESS-ERROR-CODE");
    assert_eq!((v[0], v[2], v[3]), (2, 4, 40));
}

#[test]
fn external_ip_is_advertised_and_counts_as_live() {
    let mut cfg = config();
    cfg.external_ips
        .insert("127.0.0.1".parse().unwrap(), "203.0.113.5".parse().unwrap());
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let mut c = Client::new(tuple(43200), "alice", "alicepw");
    let r = c.allocate(&mut h);
    let adv = relayed(&r);
    assert_eq!(adv.ip(), "203.0.113.5".parse::<IpAddr>().unwrap());
    assert!(h.shared.is_live_relay(adv));
}

#[test]
fn binding_is_answered_and_garbage_is_counted() {
    let mut h = Harness::new();
    let t = tuple(44000);
    let b = MessageBuilder::new(rtc_stun::message::BINDING_REQUEST, TransactionId::new());
    let r = h.request(t, &b.finish());
    assert_eq!(xor_address(&r, ATTR_XORMAPPED_ADDRESS), Some(t.client));
    let mut seed = 99u32;
    for len in 0..300usize {
        let mut buf = vec![0u8; len];
        for x in buf.iter_mut() {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            *x = (seed >> 16) as u8;
        }
        if len > 0 && len % 3 == 0 {
            buf[0] = 0x40; // ChannelData-looking
        }
        let _ = h.send(t, &buf);
        let _ = h
            .core
            .handle_peer("127.0.0.1:50000".parse().unwrap(), t.client, &buf, h.now);
    }
    assert!(dropped(&h, DropReason::NotStun) > 0);
    // Still answering.
    let b = MessageBuilder::new(rtc_stun::message::BINDING_REQUEST, TransactionId::new());
    assert!(h.send(t, &b.finish()).len() == 1);
}

#[test]
fn refresh_storm_keeps_timer_table_bounded_and_expiry_exact() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(45000), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    for _ in 0..500 {
        let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
        assert!(is_success(&r));
        let r = c.call(
            &mut h,
            METHOD_CREATE_PERMISSION,
            &[],
            &["192.0.2.9:1".parse().unwrap()],
        );
        assert!(is_success(&r));
        h.now += Duration::from_millis(100);
    }
    // One timer per allocation, whatever it holds.
    assert_eq!(h.core.timers.len(), 1);
    // Last refresh at t=49.9 s: the allocation lives until 649.9 s, re-armed on the way.
    h.advance(599); // t = 649 s
    assert_eq!(h.core.allocation_count(), 1);
    h.advance(1);
    assert_eq!(h.core.allocation_count(), 0);
}

#[test]
fn permissions_per_allocation_are_capped() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(45100), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    let peers: Vec<SocketAddr> = (0..MAX_PERMISSIONS_PER_ALLOCATION as u32)
        .map(|i| SocketAddr::from(([100, 128, (i >> 8) as u8, i as u8], 9)))
        .collect();
    for chunk in peers.chunks(64) {
        let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], chunk);
        assert!(is_success(&r), "{:?}", code(&r));
    }
    let r = c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &["203.0.113.1:9".parse().unwrap()],
    );
    assert_eq!(code(&r), Some(508));
    // Refreshing an existing one is still fine.
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &peers[..1]);
    assert!(is_success(&r));
}

/// Appends a TLV after everything in `msg` (outside MESSAGE-INTEGRITY), fixing the length.
fn append_unsigned(msg: &[u8], t: AttrType, value: &[u8]) -> Vec<u8> {
    let mut out = msg.to_vec();
    out.extend_from_slice(&t.value().to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    let len = (out.len() - 20) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// XOR-PEER-ADDRESS value for `peer` under transaction `tid`.
fn xor_peer_value(peer: SocketAddr, tid: TransactionId) -> Vec<u8> {
    let mut b = MessageBuilder::new(MessageType::new(METHOD_SEND, CLASS_INDICATION), tid);
    b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
    let m = msg::decode(&b.finish()).unwrap();
    attr(&m, ATTR_XOR_PEER_ADDRESS).unwrap().to_vec()
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut b = MessageBuilder::indication(METHOD_SEND);
    b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
    b.raw(ATTR_DATA, data);
    b.finish()
}

fn to_peers(out: &[Transmit]) -> Vec<SocketAddr> {
    out.iter()
        .filter_map(|t| match t {
            Transmit::ToPeer { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn live_relay_permission_never_opens_other_ports_of_the_host() {
    // RFC 8656 §21.1 / SSRF: A may meet B through B's relayed address on this host, but the
    // permission (per IP) must not carry A's data to other ports of that IP.
    let mut h = Harness::new();
    let mut a = Client::new(tuple(46000), "alice", "alicepw");
    let mut b = Client::new(tuple(46001), "bob", "bobpw");
    let ra = relayed(&a.allocate(&mut h));
    let rb = relayed(&b.allocate(&mut h));
    let r = a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[rb]);
    assert!(is_success(&r));
    // To B's relay: relayed.
    assert_eq!(
        to_peers(&h.send(a.tuple, &send_indication(rb, b"hi"))),
        [rb]
    );
    // To other ports of the same IP (the TURN listener, a metrics port, any service): dropped.
    for port in [3478u16, 9641, 8080, 22, rb.port() + 7] {
        let other = SocketAddr::new(rb.ip(), port);
        let out = h.send(a.tuple, &send_indication(other, b"GET / HTTP/1.0\r\n\r\n"));
        assert!(to_peers(&out).is_empty(), "{other}: {out:?}");
    }
    assert!(dropped(&h, DropReason::PeerDenied) >= 5);
    // Inbound: a datagram from another port of the host to A's relay is not delivered; from B's
    // relay it is.
    let from_service = SocketAddr::new(rb.ip(), 8080);
    assert!(h.core.handle_peer(ra, from_service, b"x", h.now).is_none());
    assert!(h.core.handle_peer(ra, rb, b"x", h.now).is_some());
    // ChannelData bound to B's relay works while B's allocation lives, and stops with it.
    let r = a.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0])],
        &[rb],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    let frame = [0x40, 0x01, 0, 2, b'o', b'k'];
    assert_eq!(to_peers(&h.send(a.tuple, &frame)), [rb]);
    let _ = b.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    // A still holds its permission and channel for 127.0.0.1, but rb is no relay any more.
    assert!(to_peers(&h.send(a.tuple, &frame)).is_empty());
    assert!(to_peers(&h.send(a.tuple, &send_indication(rb, b"hi"))).is_empty());
    assert!(h.core.handle_peer(ra, rb, b"x", h.now).is_none());
}

#[test]
fn attributes_after_message_integrity_are_ignored() {
    // RFC 8489 §14.5: an XOR-PEER-ADDRESS appended after MESSAGE-INTEGRITY is not signed and
    // must not install a permission.
    let mut h = Harness::new();
    let mut c = Client::new(tuple(46100), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    let signed_peer: SocketAddr = "198.51.100.20:5000".parse().unwrap();
    let smuggled: SocketAddr = "203.0.113.66:5000".parse().unwrap();
    let tid = TransactionId::new();
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST),
        tid,
    );
    b.xor_address(ATTR_XOR_PEER_ADDRESS, signed_peer);
    b.raw(ATTR_USERNAME, b"alice")
        .raw(ATTR_REALM, b"turnkey")
        .raw(ATTR_NONCE, c.nonce.as_bytes());
    let key = long_term_key("alice", "turnkey", "alicepw", PasswordAlgorithm::Md5);
    b.integrity(&key, IntegrityAlgorithm::Sha1);
    let req = append_unsigned(
        &b.finish(),
        ATTR_XOR_PEER_ADDRESS,
        &xor_peer_value(smuggled, tid),
    );
    let r = h.request(c.tuple, &req);
    assert!(is_success(&r), "{:?}", code(&r));
    assert_eq!(
        to_peers(&h.send(c.tuple, &send_indication(signed_peer, b"a"))),
        [signed_peer]
    );
    assert!(to_peers(&h.send(c.tuple, &send_indication(smuggled, b"a"))).is_empty());
    // A ChannelBind whose only XOR-PEER-ADDRESS is unsigned has no peer: 400.
    let tid = TransactionId::new();
    let mut b = MessageBuilder::new(MessageType::new(METHOD_CHANNEL_BIND, CLASS_REQUEST), tid);
    b.raw(ATTR_CHANNEL_NUMBER, &[0x40, 0x02, 0, 0]);
    b.raw(ATTR_USERNAME, b"alice")
        .raw(ATTR_REALM, b"turnkey")
        .raw(ATTR_NONCE, c.nonce.as_bytes());
    b.integrity(&key, IntegrityAlgorithm::Sha1);
    let req = append_unsigned(
        &b.finish(),
        ATTR_XOR_PEER_ADDRESS,
        &xor_peer_value(smuggled, tid),
    );
    let r = h.request(c.tuple, &req);
    assert_eq!(code(&r), Some(400));
}

#[test]
fn nonce_from_another_five_tuple_is_stale() {
    let mut h = Harness::new();
    let mut a = Client::new(tuple(46200), "alice", "alicepw");
    assert!(is_success(&a.allocate(&mut h)));
    // A captured request replayed from another source port: the nonce does not fit.
    let replay = a.build(METHOD_ALLOCATE, TransactionId::new(), &[udp()], &[]);
    let r = h.request(tuple(46201), &replay);
    assert_eq!(code(&r), Some(438));
    assert_eq!(h.core.allocation_count(), 1);
    // Over TCP from the same address and port: stale too.
    let mut tcp = tuple(46200);
    tcp.transport = Transport::Tcp;
    let r = h.request(tcp, &replay);
    assert_eq!(code(&r), Some(438));
    // The 438 carries a nonce for the new 5-tuple, with which the client can go on.
    let mut b = Client::new(tuple(46201), "alice", "alicepw");
    b.nonce = text_attr(&r, ATTR_NONCE).unwrap().to_string();
    assert!(is_success(&b.allocate(&mut h)));
}

#[test]
fn password_algorithms_bid_down_is_refused() {
    // RFC 8489 §9.2.4/§9.2.5: PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS, or with a list
    // other than the one the server sent, is 400.
    let mut h = Harness::new();
    let mut c = Client::new(tuple(46300), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    let refresh = |alg: Option<[u8; 4]>, algs: Option<Vec<u8>>, nonce: &str| {
        let mut b = MessageBuilder::new(
            MessageType::new(METHOD_REFRESH, CLASS_REQUEST),
            TransactionId::new(),
        );
        if let Some(a) = alg {
            b.raw(ATTR_PASSWORD_ALGORITHM, &a);
        }
        if let Some(l) = &algs {
            b.raw(ATTR_PASSWORD_ALGORITHMS, l);
        }
        b.raw(ATTR_USERNAME, b"alice")
            .raw(ATTR_REALM, b"turnkey")
            .raw(ATTR_NONCE, nonce.as_bytes());
        let pa = match alg {
            Some([0, 2, ..]) => PasswordAlgorithm::Sha256,
            _ => PasswordAlgorithm::Md5,
        };
        let key = long_term_key("alice", "turnkey", "alicepw", pa);
        b.integrity(&key, IntegrityAlgorithm::Sha256);
        b.finish()
    };
    let ours = password_algorithms_value().to_vec();
    type Alg = Option<[u8; 4]>;
    type Algs = Option<Vec<u8>>;
    let cases: [(Alg, Algs, Option<u16>); 5] = [
        (None, None, None),
        (Some([0, 2, 0, 0]), Some(ours.clone()), None),
        (Some([0, 1, 0, 0]), Some(ours.clone()), None),
        (Some([0, 2, 0, 0]), None, Some(400)),
        (Some([0, 1, 0, 0]), Some(vec![0, 1, 0, 0]), Some(400)),
    ];
    for (alg, algs, want) in cases {
        let r = h.request(c.tuple, &refresh(alg, algs.clone(), &c.nonce));
        assert_eq!(code(&r), want, "{alg:?} {algs:?}");
    }
    let cases2: [(Alg, Algs); 2] = [(None, Some(ours.clone())), (Some([0, 3, 0, 0]), Some(ours))];
    for (alg, algs) in cases2 {
        let r = h.request(c.tuple, &refresh(alg, algs.clone(), &c.nonce));
        assert_eq!(code(&r), Some(400), "{alg:?} {algs:?}");
    }
    assert_eq!(auth_failures(&h, AuthFailure::AlgorithmMismatch), 3);
}

#[test]
fn userhash_authenticates_static_users() {
    let mut cfg = config();
    cfg.credentials = cfg.credentials.clone().hash_users("turnkey");
    cfg.nonces = NonceMinter::new([1; 32], 600).with_userhash(true);
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let t = tuple(46400);
    let mut c = Client::new(t, "alice", "alicepw");
    let _ = c.call(&mut h, METHOD_REFRESH, &[], &[]); // learn the nonce
    assert!(c.nonce.starts_with("obMatJos2wAAA"), "{}", c.nonce);
    let build = |hash: [u8; 32], nonce: &str| {
        let mut b = MessageBuilder::new(
            MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
            TransactionId::new(),
        );
        b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        b.raw(ATTR_USER_HASH, &hash)
            .raw(ATTR_REALM, b"turnkey")
            .raw(ATTR_NONCE, nonce.as_bytes());
        let key = long_term_key("alice", "turnkey", "alicepw", PasswordAlgorithm::Md5);
        b.integrity(&key, IntegrityAlgorithm::Sha1);
        b.finish()
    };
    let unknown = crate::auth::userhash("nobody", "turnkey");
    assert_eq!(code(&h.request(t, &build(unknown, &c.nonce))), Some(401));
    let r = h.request(
        t,
        &build(crate::auth::userhash("alice", "turnkey"), &c.nonce),
    );
    assert!(is_success(&r), "{:?}", code(&r));
    assert_eq!(h.core.allocation_count(), 1);
}

#[test]
fn per_ip_quota_486() {
    let mut cfg = config();
    cfg.ip_quota = 2;
    cfg.user_quota = 10;
    cfg.total_quota = 10;
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    for (i, user) in ["alice", "bob"].iter().enumerate() {
        let pw = format!("{user}pw");
        assert!(is_success(
            &Client::new(tuple(46500 + i as u16), user, &pw).allocate(&mut h)
        ));
    }
    let r = Client::new(tuple(46510), "alice", "alicepw").allocate(&mut h);
    assert_eq!(code(&r), Some(486));
    assert_eq!(h.core.stats().control.quota_rejections[1], 1);
    // Another source IP is not affected.
    let mut other = tuple(46511);
    other.client = "198.51.100.2:46511".parse().unwrap();
    assert!(is_success(
        &Client::new(other, "alice", "alicepw").allocate(&mut h)
    ));
    // A freed allocation frees its unit.
    let mut c = Client::new(tuple(46500), "alice", "alicepw");
    let _ = c.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(
        &Client::new(tuple(46512), "alice", "alicepw").allocate(&mut h)
    ));
}

#[test]
fn unauthenticated_responses_are_rate_limited_per_source() {
    let mut cfg = config();
    cfg.unauth_rate_per_sec = 2;
    cfg.unauth_burst = 3;
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
        TransactionId::new(),
    );
    b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let req = b.finish();
    let answered = (0..10)
        .filter(|i| !h.send(tuple(46600 + i), &req).is_empty())
        .count();
    assert_eq!(answered, 3);
    assert_eq!(dropped(&h, DropReason::UnauthRateLimited), 7);
    // Another source is answered; one second later the first has 2 more.
    let mut other = tuple(46620);
    other.client = "203.0.113.5:46620".parse().unwrap();
    assert_eq!(h.send(other, &req).len(), 1);
    h.now += Duration::from_secs(1);
    let answered = (0..10)
        .filter(|i| !h.send(tuple(46630 + i), &req).is_empty())
        .count();
    assert_eq!(answered, 2);
    // Authenticated traffic is not limited.
    let mut c = Client::new(tuple(46640), "alice", "alicepw");
    c.nonce = h.core.cfg.nonces.mint(T0_UNIX + 1, &c.tuple);
    for _ in 0..20 {
        let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
        assert_eq!(code(&r), Some(437));
    }
}

#[test]
fn challenge_is_small_without_software_or_reason() {
    // What a spoofed 28-byte Allocate (36 with FINGERPRINT) gets back. coturn 4.17.1 answers the
    // same request with 96 bytes for this realm (ERROR-CODE without reason, a 24-character
    // NONCE, REALM, its SOFTWARE); we stay below it.
    let mut h = Harness::new();
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
        TransactionId::new(),
    );
    b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let req = b.finish();
    assert_eq!(req.len(), 28);
    let out = h.send(tuple(46700), &req);
    let Transmit::ToClient { data, .. } = &out[0] else {
        panic!()
    };
    let r = msg::decode(data).unwrap();
    assert_eq!(code(&r), Some(401));
    assert!(attr(&r, ATTR_SOFTWARE).is_none());
    assert_eq!(attr(&r, ATTR_ERROR_CODE).map(|v| v.len()), Some(4));
    assert!(data.len() < 96, "{} bytes", data.len());
    // Binding answers carry no SOFTWARE either.
    let b = MessageBuilder::new(rtc_stun::message::BINDING_REQUEST, TransactionId::new());
    let out = h.send(tuple(46701), &b.finish());
    let Transmit::ToClient { data, .. } = &out[0] else {
        panic!()
    };
    assert!(attr(&msg::decode(data).unwrap(), ATTR_SOFTWARE).is_none());
}

#[test]
fn unredeemed_even_port_reservations_expire_and_hold_quota() {
    // The loop that used to leak reserved ports for good: Allocate(EVEN-PORT R) + Refresh(0).
    let mut h = Harness::new(); // user quota 3
    let mut reserved = 0;
    for i in 0..6u16 {
        let mut c = Client::new(tuple(46800 + i), "alice", "alicepw");
        let r = c.call(
            &mut h,
            METHOD_ALLOCATE,
            &[udp(), (ATTR_EVEN_PORT, vec![0x80])],
            &[],
        );
        if is_success(&r) {
            reserved += 1;
            let _ = c.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
        } else {
            assert_eq!(code(&r), Some(486));
        }
    }
    // Each reservation holds one unit of alice's quota of 3 until redeemed or expired; an
    // Allocate with R needs two.
    assert_eq!(reserved, 2);
    assert_eq!(h.shared.reservation_count(), 2);
    assert_eq!(h.core.stats().control.live_reservations, 2);
    assert_eq!(h.core.allocation_count(), 0);
    h.advance(29);
    assert_eq!(h.shared.reservation_count(), 2);
    h.advance(1);
    assert_eq!(h.shared.reservation_count(), 0);
    assert_eq!(h.core.stats().control.live_reservations, 0);
    assert_eq!(h.relays.cancelled.len(), 2);
    assert!(h.relays.tokens.is_empty());
    assert_eq!(h.shared.total_allocations(), 0);
    // Quota is back: three plain allocations fit again.
    for i in 0..3 {
        assert!(is_success(
            &Client::new(tuple(46850 + i), "alice", "alicepw").allocate(&mut h)
        ));
    }
}

#[test]
fn redeemed_reservation_returns_its_unit_and_is_not_cancelled() {
    let mut h = Harness::new();
    let mut a = Client::new(tuple(46900), "alice", "alicepw");
    let r = a.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_EVEN_PORT, vec![0x80])],
        &[],
    );
    let token = attr(&r, ATTR_RESERVATION_TOKEN).unwrap().to_vec();
    assert_eq!(h.shared.total_allocations(), 1);
    assert_eq!(h.shared.reservation_count(), 1);
    let mut b = Client::new(tuple(46901), "bob", "bobpw");
    let r2 = b.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_RESERVATION_TOKEN, token)],
        &[],
    );
    assert!(is_success(&r2));
    // Alice's reservation unit went back; Bob's allocation holds its own.
    assert_eq!(h.shared.total_allocations(), 2);
    assert_eq!(h.shared.total.load(Ordering::Relaxed), 2);
    assert_eq!(h.shared.reservation_count(), 0);
    h.advance(31);
    assert!(h.relays.cancelled.is_empty());
    assert_eq!(h.core.allocation_count(), 2);
}

#[test]
fn allocation_churn_leaves_no_timer_behind() {
    // Allocate -> CreatePermission -> ChannelBind -> Refresh(0) in a loop: every per-allocation
    // timer goes with its allocation (stale heap entries were what grew the server's memory).
    let mut cfg = config();
    cfg.user_quota = 10;
    cfg.total_quota = 10;
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    for i in 0..500u16 {
        let mut c = Client::new(tuple(47000 + i), "alice", "alicepw");
        assert!(is_success(&c.allocate(&mut h)));
        let r = c.call(
            &mut h,
            METHOD_CREATE_PERMISSION,
            &[],
            &[
                "198.51.100.9:1".parse().unwrap(),
                "203.0.113.9:1".parse().unwrap(),
            ],
        );
        assert!(is_success(&r));
        let r = c.call(
            &mut h,
            METHOD_CHANNEL_BIND,
            &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0])],
            &["192.0.2.9:1".parse().unwrap()],
        );
        assert!(is_success(&r));
        let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
        assert!(is_success(&r));
        h.now += Duration::from_millis(10);
    }
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.core.timers.len(), 0);
    assert_eq!(h.core.poll_timeout(), None);
    assert_eq!(h.core.stats().control.live_permissions, 0);
    assert_eq!(h.core.stats().control.live_channel_bindings, 0);
}

#[test]
fn channels_per_allocation_are_capped() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(47600), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    for i in 0..MAX_CHANNELS_PER_ALLOCATION as u16 {
        let n = 0x4000 + i;
        let r = c.call(
            &mut h,
            METHOD_CHANNEL_BIND,
            &[(ATTR_CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0])],
            &[SocketAddr::from(([198, 51, 100, 1], 1000 + i))],
        );
        assert!(is_success(&r), "{:?}", code(&r));
    }
    let n = 0x4000 + MAX_CHANNELS_PER_ALLOCATION as u16;
    let r = c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![(n >> 8) as u8, n as u8, 0, 0])],
        &["198.51.100.1:9".parse().unwrap()],
    );
    assert_eq!(code(&r), Some(508));
    // Refreshing an existing binding still works.
    let r = c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0])],
        &["198.51.100.1:1000".parse().unwrap()],
    );
    assert!(is_success(&r), "{:?}", code(&r));
}

#[test]
fn admin_lists_an_allocation_with_its_accounting_and_ends_it() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40900), "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    let mut other = Client::new(tuple(40901), "bob", "bobpw");
    let _ = other.allocate(&mut h);
    let peer: SocketAddr = "192.0.2.90:7000".parse().unwrap();
    let ch = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]);
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[ch],
        &[peer]
    )));
    assert_eq!(h.send(c.tuple, &[0x40, 0x01, 0, 3, 1, 2, 3, 0]).len(), 1);
    assert_eq!(h.send(c.tuple, &[0x40, 0x01, 0, 2, 1, 2, 0, 0]).len(), 1);
    assert!(h.core.handle_peer(relay, peer, b"hello", h.now).is_some());
    h.now += Duration::from_secs(7);

    let all = h.core.allocations(&AllocationFilter::default(), 100, h.now);
    assert_eq!(all.len(), 2);
    let by_user = AllocationFilter {
        user: Some("alice".into()),
        ..AllocationFilter::default()
    };
    let list = h.core.allocations(&by_user, 100, h.now);
    assert_eq!(list.len(), 1);
    let a = &list[0];
    assert_eq!(a.user, "alice");
    assert_eq!(a.tuple, c.tuple);
    assert_eq!(a.relayed, vec![relay]);
    assert_eq!(a.started_unix_secs, T0_UNIX);
    assert_eq!(a.age_secs, 7);
    assert_eq!(a.lifetime_left_secs, 600 - 7);
    assert_eq!(
        a.permissions,
        vec![PermissionInfo {
            peer: peer.ip(),
            expires_in_secs: 300 - 7
        }]
    );
    assert_eq!(
        a.channels,
        vec![ChannelInfo {
            number: 0x4001,
            peer,
            expires_in_secs: 600 - 7
        }]
    );
    assert_eq!(
        a.to_peer,
        Traffic {
            packets: 2,
            bytes: 5
        }
    );
    assert_eq!(
        a.from_peer,
        Traffic {
            packets: 1,
            bytes: 5
        }
    );
    let by_ip = AllocationFilter {
        client_ip: Some("198.51.100.1".parse().unwrap()),
        ..AllocationFilter::default()
    };
    assert_eq!(h.core.allocations(&by_ip, 1, h.now).len(), 1, "limit");
    let nobody = AllocationFilter {
        client_ip: Some("198.51.100.2".parse().unwrap()),
        ..AllocationFilter::default()
    };
    assert!(h.core.allocations(&nobody, 100, h.now).is_empty());

    // Ending it frees its relay and quota; the client's next request gets 437.
    let ended = h
        .core
        .end_allocation(a.id, h.now, &mut h.relays)
        .expect("ended");
    assert_eq!(ended.to_peer.bytes, 5);
    assert!(h.core.end_allocation(a.id, h.now, &mut h.relays).is_none());
    assert!(!h.shared.is_live_relay(relay));
    assert_eq!(
        h.core.stats().control.allocations_ended[EndReason::Admin.index()],
        1
    );
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), Some(437));
    assert_eq!(h.core.allocation_count(), 1);
    // By user: only bob's.
    assert_eq!(
        h.core.end_user_allocations("alice", h.now, &mut h.relays),
        vec![]
    );
    assert_eq!(
        h.core
            .end_user_allocations("bob", h.now, &mut h.relays)
            .len(),
        1
    );
    assert_eq!(h.core.allocation_count(), 0);
    assert_eq!(h.shared.total_allocations(), 0);
}

#[test]
fn draining_sends_allocates_to_an_alternate_server_after_authentication() {
    let alt4: SocketAddr = "203.0.113.7:3478".parse().unwrap();
    let alt6: SocketAddr = "[2001:db8::7]:3478".parse().unwrap();
    let mut cfg = config();
    cfg.alternate_servers = vec![alt6, alt4];
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let mut c = Client::new(tuple(40910), "alice", "alicepw");
    assert!(is_success(&c.allocate(&mut h)));
    h.shared.start_draining();
    let mut d = Client::new(tuple(40911), "alice", "alicepw");
    // Unauthenticated: the usual 401, no ALTERNATE-SERVER.
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
        TransactionId::new(),
    );
    b.raw(ATTR_REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let r = h.request(d.tuple, &b.finish());
    assert_eq!(code(&r), Some(401));
    assert!(attr(&r, ATTR_ALTERNATE_SERVER).is_none());
    // Authenticated: 300 with the IPv4 alternate, signed.
    let r = d.allocate(&mut h);
    assert_eq!(code(&r), Some(300));
    let v = attr(&r, ATTR_ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(v[1], 1, "IPv4 family");
    assert_eq!(&v[4..8], &[203, 0, 113, 7]);
    assert!(r.contains(ATTR_MESSAGE_INTEGRITY));
    assert_eq!(h.core.stats().control.alternate_redirects, 1);
    // The existing allocation keeps working.
    assert!(is_success(&c.call(&mut h, METHOD_REFRESH, &[], &[])));
    // Draining stopped: served again.
    h.shared.stop_draining();
    assert!(is_success(&d.allocate(&mut h)));
}

#[test]
fn over_the_configured_load_allocates_go_to_the_alternate_and_without_one_draining_is_508() {
    let mut cfg = config();
    cfg.alternate_servers = vec!["203.0.113.8:3478".parse().unwrap()];
    cfg.alternate_over_allocations = 1;
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    assert!(is_success(
        &Client::new(tuple(40920), "alice", "alicepw").allocate(&mut h)
    ));
    let r = Client::new(tuple(40921), "bob", "bobpw").allocate(&mut h);
    assert_eq!(code(&r), Some(300));

    let mut h = Harness::new();
    h.shared.start_draining();
    let r = Client::new(tuple(40922), "alice", "alicepw").allocate(&mut h);
    assert_eq!(code(&r), Some(508));
}

/// A draining server (issue 15) refuses every new Allocate with 508, signed (after
/// authentication) and counted as `quota_rejections{scope="draining"}`, not as the total quota;
/// the live allocation keeps every operation (Refresh, CreatePermission, ChannelBind, Send,
/// ChannelData both ways, Data from its peer) and Binding is still answered. Deleting the last
/// allocation leaves the server empty.
#[test]
fn draining_refuses_new_allocations_with_508_and_serves_the_live_one() {
    let mut h = Harness::new();
    let mut c = Client::new(tuple(40930), "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    h.shared.start_draining();
    let r = Client::new(tuple(40931), "bob", "bobpw").allocate(&mut h);
    assert_eq!(code(&r), Some(508));
    assert!(r.contains(ATTR_MESSAGE_INTEGRITY), "a signed answer");
    assert!(attr(&r, ATTR_ALTERNATE_SERVER).is_none());
    let mut t = tuple(40932);
    t.transport = Transport::Tcp;
    let r = Client::new(t, "alice", "alicepw").allocate(&mut h);
    assert_eq!(code(&r), Some(508), "over TCP too");
    let q = h.core.stats().control.quota_rejections;
    assert_eq!(q[QuotaScope::Draining.index()], 2);
    assert_eq!(q[QuotaScope::Total.index()], 0);
    assert_eq!(h.shared.total_allocations(), 1);

    assert!(is_success(&c.call(&mut h, METHOD_REFRESH, &[], &[])));
    let peer: SocketAddr = "192.0.2.93:7000".parse().unwrap();
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[peer]
    )));
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_SEND, CLASS_INDICATION),
        TransactionId::new(),
    );
    b.xor_address(ATTR_XOR_PEER_ADDRESS, peer)
        .raw(ATTR_DATA, b"send");
    assert_eq!(
        h.send(c.tuple, &b.finish()),
        vec![Transmit::ToPeer {
            relay,
            peer,
            data: b"send".to_vec()
        }]
    );
    let ch = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]);
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[ch],
        &[peer]
    )));
    assert_eq!(
        h.send(c.tuple, &[0x40, 0x01, 0, 3, b'a', b'b', b'c', 0]),
        vec![Transmit::ToPeer {
            relay,
            peer,
            data: b"abc".to_vec()
        }]
    );
    let Some(Transmit::ToClient { data, .. }) = h.core.handle_peer(relay, peer, b"xyz", h.now)
    else {
        panic!("peer data not relayed while draining")
    };
    assert_eq!(data, vec![0x40, 0x01, 0, 3, b'x', b'y', b'z']);

    let binding = MessageBuilder::new(
        MessageType::new(METHOD_BINDING, CLASS_REQUEST),
        TransactionId::new(),
    )
    .finish();
    let r = h.request(tuple(40933), &binding);
    assert!(is_success(&r), "Binding is answered while draining");
    assert_eq!(
        xor_address(&r, ATTR_XORMAPPED_ADDRESS),
        Some(tuple(40933).client)
    );

    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r));
    assert_eq!(h.shared.total_allocations(), 0);
    assert_eq!(h.core.allocation_count(), 0);
}

// Bandwidth caps (issue 12 item 4), in virtual time.

impl Harness {
    /// A core on its own relays sharing `shared` with another harness's core (two workers).
    fn beside(other: &Harness, cfg: CoreConfig, relay_ip: &str) -> Self {
        let core = TurnCore::new(Arc::new(cfg), other.shared.clone(), other.t0, T0_UNIX);
        Self {
            core,
            relays: FakeRelays::new(relay_ip),
            shared: other.shared.clone(),
            t0: other.t0,
            now: other.now,
        }
    }
}

fn capped(allocation_bps: u64, user_bps: u64, total_bps: u64) -> CoreConfig {
    CoreConfig {
        bandwidth: BandwidthCaps {
            allocation_bps,
            user_bps,
            total_bps,
            burst_ms: 200,
        },
        ..config()
    }
}

/// A relaying allocation: `user`'s allocation on `h` from client port `port`, with channel
/// 0x4001 bound to `peer`. Returns the client and the relayed address.
fn channel_to(
    h: &mut Harness,
    port: u16,
    user: &str,
    password: &str,
    peer: SocketAddr,
) -> (Client, SocketAddr) {
    let mut c = Client::new(tuple(port), user, password);
    let relay = relayed(&c.allocate(h));
    let ch = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]);
    assert!(is_success(&c.call(h, METHOD_CHANNEL_BIND, &[ch], &[peer])));
    (c, relay)
}

/// ChannelData on 0x4001 with `len` payload bytes.
fn channel_data(len: usize) -> Vec<u8> {
    let mut f = vec![0x40, 0x01, (len >> 8) as u8, len as u8];
    f.resize(4 + len, 0);
    f
}

/// Payload bytes that got through when `tuple` sends a 1000-byte datagram every `every`.
fn offer_c2p(h: &mut Harness, tuple: FiveTuple, every: Duration, secs: u64) -> u64 {
    let frame = channel_data(1000);
    let steps = Duration::from_secs(secs).as_micros() / every.as_micros();
    let mut passed = 0;
    for _ in 0..steps {
        h.now += every;
        passed += 1000 * h.send(tuple, &frame).len() as u64;
    }
    passed
}

fn assert_near(got: u64, want: u64, pct: u64) {
    let (lo, hi) = (want * (100 - pct) / 100, want * (100 + pct) / 100);
    assert!(
        (lo..=hi).contains(&got),
        "{got} not within {pct}% of {want}"
    );
}

#[test]
fn an_allocation_cap_passes_its_rate_each_way_and_drops_the_rest_by_reason() {
    // 800 kbit/s = 100 000 B/s each way, 200 ms (20 000 B) burst.
    let mut h = Harness::with(capped(800_000, 0, 0), FakeRelays::new("127.0.0.1"));
    let peer: SocketAddr = "192.0.2.200:7000".parse().unwrap();
    let (c, relay) = channel_to(&mut h, 41000, "alice", "alicepw", peer);
    // Offered: 200 000 B/s each way for 10 s (1000-byte datagrams every 5 ms), both at once.
    let frame = channel_data(1000);
    let payload = vec![7u8; 1000];
    let (mut c2p, mut p2c) = (0u64, 0u64);
    for _ in 0..2000 {
        h.now += Duration::from_millis(5);
        c2p += 1000 * h.send(c.tuple, &frame).len() as u64;
        if h.core.handle_peer(relay, peer, &payload, h.now).is_some() {
            p2c += 1000;
        }
    }
    // rate * T (+ the 20 000 B burst), within 3 %, each direction on its own.
    assert_near(c2p, 1_000_000, 3);
    assert_near(p2c, 1_000_000, 3);
    let over = dropped(&h, DropReason::BandwidthAllocation);
    assert_eq!(over, 4000 - (c2p + p2c) / 1000);
    assert_eq!(dropped(&h, DropReason::BandwidthUser), 0);
    assert_eq!(dropped(&h, DropReason::BandwidthTotal), 0);
    assert_eq!(h.core.stats().relay.c2p_bytes, c2p);
    // The cap shows in the allocation's record and in the stats.
    let info = &h.core.allocations(&AllocationFilter::default(), 10, h.now)[0];
    assert_eq!(
        (info.bandwidth_bps, info.bandwidth_override),
        (800_000, false)
    );
    assert_eq!(h.core.stats().control.bandwidth_caps_bps, [800_000, 0, 0]);
}

#[test]
fn directions_are_capped_independently() {
    let mut h = Harness::with(capped(800_000, 0, 0), FakeRelays::new("127.0.0.1"));
    let peer: SocketAddr = "192.0.2.201:7000".parse().unwrap();
    let (c, relay) = channel_to(&mut h, 41010, "alice", "alicepw", peer);
    // Client -> peer saturated at twice the cap...
    let passed = offer_c2p(&mut h, c.tuple, Duration::from_millis(5), 5);
    assert_near(passed, 500_000, 5);
    assert!(dropped(&h, DropReason::BandwidthAllocation) > 400);
    // ...leaves peer -> client its whole burst and rate.
    let before = dropped(&h, DropReason::BandwidthAllocation);
    for _ in 0..20 {
        assert!(h
            .core
            .handle_peer(relay, peer, &[1u8; 1000], h.now)
            .is_some());
    }
    assert_eq!(dropped(&h, DropReason::BandwidthAllocation), before);
}

#[test]
fn without_caps_nothing_is_dropped_and_no_allocation_has_a_limiter() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.202:7000".parse().unwrap();
    let (c, relay) = channel_to(&mut h, 41020, "alice", "alicepw", peer);
    // 1000 B every 100 µs: 80 Mbit/s.
    let passed = offer_c2p(&mut h, c.tuple, Duration::from_micros(100), 1);
    assert_eq!(passed, 10_000_000);
    assert!(h
        .core
        .handle_peer(relay, peer, &[1u8; 1000], h.now)
        .is_some());
    for r in [
        DropReason::BandwidthAllocation,
        DropReason::BandwidthUser,
        DropReason::BandwidthTotal,
    ] {
        assert_eq!(dropped(&h, r), 0);
    }
    assert!(h.core.allocs.values().all(|a| a.bandwidth.is_none()));
    assert_eq!(h.shared.bandwidth_user_entries(), 0);
}

#[test]
fn a_user_cap_is_shared_by_the_users_allocations_on_two_cores() {
    // 800 kbit/s per user; no per-allocation cap.
    let mut a = Harness::with(capped(0, 800_000, 0), FakeRelays::new("127.0.0.1"));
    let mut b = Harness::beside(&a, capped(0, 800_000, 0), "127.0.0.2");
    let peer: SocketAddr = "192.0.2.203:7000".parse().unwrap();
    let (ca, _) = channel_to(&mut a, 41030, "alice", "alicepw", peer);
    let (cb, _) = channel_to(&mut b, 41031, "alice", "alicepw", peer);
    let (bob, _) = channel_to(&mut a, 41032, "bob", "bobpw", peer);
    assert_eq!(a.shared.bandwidth_user_entries(), 2);
    // Each of alice's allocations offers 200 000 B/s, bob 100 000 B/s, for 10 s.
    let frame = channel_data(1000);
    let (mut alice, mut bobs) = (0u64, 0u64);
    for i in 0..2000 {
        a.now += Duration::from_millis(5);
        b.now = a.now;
        alice += 1000 * a.send(ca.tuple, &frame).len() as u64;
        alice += 1000 * b.send(cb.tuple, &frame).len() as u64;
        if i % 2 == 0 {
            bobs += 1000 * a.send(bob.tuple, &frame).len() as u64;
        }
    }
    // Alice together: the user's rate (+ one burst); bob, under his own cap, everything.
    assert_near(alice, 1_000_000, 3);
    assert_eq!(bobs, 1_000_000);
    let user_drops =
        dropped(&a, DropReason::BandwidthUser) + dropped(&b, DropReason::BandwidthUser);
    assert_eq!(user_drops, 4000 - alice / 1000);
    // Per-user state lives only while the user has allocations.
    let _ = ca;
    a.core.close_all(&mut a.relays);
    assert_eq!(a.shared.bandwidth_user_entries(), 1);
    b.core.close_all(&mut b.relays);
    assert_eq!(b.shared.bandwidth_user_entries(), 0);
}

#[test]
fn a_total_cap_holds_all_allocations_together() {
    let mut h = Harness::with(capped(0, 0, 800_000), FakeRelays::new("127.0.0.1"));
    let peer: SocketAddr = "192.0.2.204:7000".parse().unwrap();
    let (ca, _) = channel_to(&mut h, 41040, "alice", "alicepw", peer);
    let (cb, _) = channel_to(&mut h, 41041, "bob", "bobpw", peer);
    let frame = channel_data(1000);
    let mut passed = 0u64;
    for _ in 0..2000 {
        h.now += Duration::from_millis(5);
        passed += 1000 * h.send(ca.tuple, &frame).len() as u64;
        passed += 1000 * h.send(cb.tuple, &frame).len() as u64;
    }
    assert_near(passed, 1_000_000, 3);
    assert_eq!(
        dropped(&h, DropReason::BandwidthTotal),
        4000 - passed / 1000
    );
    assert_eq!(dropped(&h, DropReason::BandwidthAllocation), 0);
}

#[test]
fn caps_change_live_and_one_allocation_can_have_its_own() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.205:7000".parse().unwrap();
    let (c, _) = channel_to(&mut h, 41050, "alice", "alicepw", peer);
    let every = Duration::from_millis(5);
    assert_eq!(offer_c2p(&mut h, c.tuple, every, 2), 400_000);
    // The admin API sets a server-wide cap: the live allocation gets it at its next datagram.
    let caps = BandwidthCaps {
        allocation_bps: 800_000,
        ..BandwidthCaps::default()
    };
    h.shared.set_bandwidth_caps(caps, h.now).unwrap();
    assert_near(offer_c2p(&mut h, c.tuple, every, 10), 1_000_000, 3);
    // Refused caps change nothing.
    let bad = BandwidthCaps {
        burst_ms: 0,
        ..caps
    };
    assert_eq!(
        h.shared.set_bandwidth_caps(bad, h.now),
        Err(BandwidthError::BurstMs)
    );
    assert_eq!(h.shared.bandwidth_caps(), caps);
    // Its own cap: 400 kbit/s (50 000 B/s).
    let id = h.core.allocs.keys().copied().next().unwrap();
    let info = h
        .core
        .set_allocation_bandwidth(id, Some(400_000), h.now)
        .unwrap();
    assert_eq!(
        (info.bandwidth_bps, info.bandwidth_override),
        (400_000, true)
    );
    assert_near(offer_c2p(&mut h, c.tuple, every, 10), 500_000, 3);
    // A server-wide change leaves its own cap alone.
    h.shared
        .set_bandwidth_caps(
            BandwidthCaps {
                allocation_bps: 1_600_000,
                ..caps
            },
            h.now,
        )
        .unwrap();
    assert_near(offer_c2p(&mut h, c.tuple, every, 10), 500_000, 3);
    // Back to the server-wide cap (1.6 Mbit/s = 200 000 B/s: everything offered passes).
    let info = h.core.set_allocation_bandwidth(id, None, h.now).unwrap();
    assert_eq!(
        (info.bandwidth_bps, info.bandwidth_override),
        (1_600_000, false)
    );
    assert_eq!(offer_c2p(&mut h, c.tuple, every, 2), 400_000);
    assert!(h
        .core
        .set_allocation_bandwidth(id + 100, None, h.now)
        .is_none());
    // Caps off again: the limiter goes.
    h.shared
        .set_bandwidth_caps(BandwidthCaps::default(), h.now)
        .unwrap();
    assert_eq!(offer_c2p(&mut h, c.tuple, every, 1), 200_000);
    assert!(h.core.allocs.values().all(|a| a.bandwidth.is_none()));
}

#[test]
fn a_reload_that_changes_the_configured_caps_applies_them() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.206:7000".parse().unwrap();
    let (c, _) = channel_to(&mut h, 41060, "alice", "alicepw", peer);
    h.core.set_config(Arc::new(capped(800_000, 0, 0)), h.now);
    assert_eq!(h.shared.bandwidth_caps().allocation_bps, 800_000);
    assert_near(
        offer_c2p(&mut h, c.tuple, Duration::from_millis(5), 10),
        1_000_000,
        3,
    );
    // A reload with the same caps keeps what the admin API set since.
    let admin = BandwidthCaps {
        allocation_bps: 400_000,
        ..BandwidthCaps::default()
    };
    h.shared.set_bandwidth_caps(admin, h.now).unwrap();
    h.core.set_config(Arc::new(capped(800_000, 0, 0)), h.now);
    assert_eq!(h.shared.bandwidth_caps(), admin);
}

// RFC 8016 mobility.

fn mobile_config() -> CoreConfig {
    let mut cfg = config();
    cfg.mobility = Some(TicketKey::new([5; 32]));
    cfg
}

fn want_ticket() -> (AttrType, Vec<u8>) {
    (ATTR_MOBILITY_TICKET, Vec::new())
}

fn ticket(m: &Message) -> Vec<u8> {
    attr(m, ATTR_MOBILITY_TICKET)
        .expect("MOBILITY-TICKET")
        .to_vec()
}

fn refusals(h: &Harness, r: crate::stats::MobilityRefusal) -> u64 {
    h.core.stats().mobility_refusals(r)
}

/// A mobile allocation on `port` with a channel 0x4001 bound to `peer`; returns the client,
/// the relayed address and the Allocate's ticket.
fn mobile_call(h: &mut Harness, port: u16, peer: SocketAddr) -> (Client, SocketAddr, Vec<u8>) {
    let mut c = Client::new(tuple(port), "alice", "alicepw");
    let r = c.call(h, METHOD_ALLOCATE, &[udp(), want_ticket()], &[]);
    assert!(is_success(&r), "{:?}", code(&r));
    let t = ticket(&r);
    assert_eq!(t.len(), TICKET_CHARS);
    let relay = relayed(&r);
    let r = c.call(
        h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0])],
        &[peer],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    (c, relay, t)
}

#[test]
fn ticket_only_when_asked_and_enabled() {
    // Enabled, not asked: no ticket, in Allocate nor Refresh.
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let mut c = Client::new(tuple(41000), "alice", "alicepw");
    let r = c.allocate(&mut h);
    assert!(is_success(&r));
    assert!(attr(&r, ATTR_MOBILITY_TICKET).is_none());
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert!(is_success(&r) && attr(&r, ATTR_MOBILITY_TICKET).is_none());
    // Asked: a ticket in the Allocate and a new one in every Refresh success.
    let mut c = Client::new(tuple(41001), "alice", "alicepw");
    let r = c.call(&mut h, METHOD_ALLOCATE, &[udp(), want_ticket()], &[]);
    let t0 = ticket(&r);
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    let t1 = ticket(&r);
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    let t2 = ticket(&r);
    assert!(t0 != t1 && t1 != t2 && t0 != t2);
    // Deleting: no ticket.
    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r) && attr(&r, ATTR_MOBILITY_TICKET).is_none());
    // A non-empty ticket in an Allocate: 400.
    let mut c = Client::new(tuple(41002), "alice", "alicepw");
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_MOBILITY_TICKET, b"x".to_vec())],
        &[],
    );
    assert_eq!(code(&r), Some(400));
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::BadTicket), 1);

    // Disabled: asking gets 405 Mobility Forbidden, and so does a Refresh with a ticket.
    let mut h = Harness::new();
    let mut c = Client::new(tuple(41003), "alice", "alicepw");
    let r = c.call(&mut h, METHOD_ALLOCATE, &[udp(), want_ticket()], &[]);
    assert_eq!(code(&r), Some(405));
    assert_eq!(h.shared.total_allocations(), 0);
    assert!(is_success(&c.allocate(&mut h)));
    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, t0)], &[]);
    assert_eq!(code(&r), Some(405));
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::Disabled), 2);
}

#[test]
fn mobility_over_tcp_is_forbidden() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let mut t = tuple(41010);
    t.transport = Transport::Tcp;
    let mut c = Client::new(t, "alice", "alicepw");
    let r = c.call(&mut h, METHOD_ALLOCATE, &[udp(), want_ticket()], &[]);
    assert_eq!(code(&r), Some(405));
    // A UDP allocation's ticket presented over TCP: 405 too.
    let (_, _, tk) = mobile_call(&mut h, 41011, "192.0.2.10:7000".parse().unwrap());
    let mut c = Client::new(t, "alice", "alicepw");
    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk)], &[]);
    assert_eq!(code(&r), Some(405));
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::Transport), 2);
}

#[test]
fn refresh_with_ticket_from_new_tuple_moves_the_allocation() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let peer: SocketAddr = "192.0.2.20:7000".parse().unwrap();
    let (mut c, relay, tk) = mobile_call(&mut h, 41020, peer);
    let other: SocketAddr = "192.0.2.21:7000".parse().unwrap();
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[other]);
    assert!(is_success(&r));
    let old = c.tuple;
    // The client's address changes (another IP and port).
    let new = FiveTuple {
        client: "203.0.113.9:50123".parse().unwrap(),
        ..old
    };
    c.tuple = new;
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, tk.clone())],
        &[],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    let tk2 = ticket(&r);
    assert_ne!(tk2, tk);
    assert_eq!(h.core.stats().control.mobility_moves, 1);
    assert_eq!(h.shared.total_allocations(), 1);
    // Same allocation, now on the new 5-tuple, permissions and channel kept.
    let info = h.core.allocations(&AllocationFilter::default(), 10, h.now);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].tuple, new);
    assert_eq!(info[0].relayed, vec![relay]);
    assert_eq!(info[0].moves, 1);
    assert_eq!(info[0].permissions.len(), 2);
    assert_eq!(info[0].channels.len(), 1);
    // Make before break: until the client is heard on the new 5-tuple, peer data still goes
    // to the old one, and the old one still relays.
    match h.core.handle_peer(relay, peer, b"early", h.now) {
        Some(Transmit::ToClient { to, .. }) => assert_eq!(to, old),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.send(old, &[0x40, 0x01, 0, 1, b'o', 0, 0, 0]),
        vec![Transmit::ToPeer {
            relay,
            peer,
            data: b"o".to_vec()
        }]
    );
    // ChannelData from the new 5-tuple relays and confirms the move.
    assert_eq!(
        h.send(new, &[0x40, 0x01, 0, 3, b'a', b'b', b'c', 0]),
        vec![Transmit::ToPeer {
            relay,
            peer,
            data: b"abc".to_vec()
        }]
    );
    match h.core.handle_peer(relay, peer, b"xyz", h.now) {
        Some(Transmit::ToClient { to, data }) => {
            assert_eq!(to, new);
            assert_eq!(data, vec![0x40, 0x01, 0, 3, b'x', b'y', b'z']);
        }
        other => panic!("{other:?}"),
    }
    // Send indications to the other permitted peer work from the new 5-tuple.
    assert_eq!(
        to_peers(&h.send(new, &send_indication(other, b"hi"))),
        vec![other]
    );
    // The old 5-tuple is forgotten: 437 for its requests, its data dropped.
    let mut stale = Client::new(old, "alice", "alicepw");
    let r = stale.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert_eq!(code(&r), Some(437));
    assert!(h.send(old, &[0x40, 0x01, 0, 1, b'o', 0, 0, 0]).is_empty());
    // Plain refreshes from the new 5-tuple keep working and rotate the ticket.
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert!(is_success(&r));
    assert_ne!(ticket(&r), tk2);
    // A retransmitted moving Refresh (same ticket, same 5-tuple) is a plain refresh.
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, tk2.clone())],
        &[],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    assert_eq!(h.core.stats().control.mobility_moves, 1);
    // The accounting record names the current client address.
    let id = info[0].id;
    let rec = h.core.end_allocation(id, h.now, &mut h.relays).unwrap();
    assert_eq!(rec.tuple, new);
    assert_eq!(rec.moves, 1);
    assert!(!h.core.has_allocation(&new));
    assert!(!h.core.has_allocation(&old));
}

#[test]
fn moving_needs_the_same_user_441() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let (_, _, tk) = mobile_call(&mut h, 41030, "192.0.2.30:7000".parse().unwrap());
    // Bob got hold of alice's ticket: he authenticates as himself, not as her.
    let mut bob = Client::new(tuple(41031), "bob", "bobpw");
    let r = bob.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, tk.clone())],
        &[],
    );
    assert_eq!(code(&r), Some(441));
    // Without alice's password the ticket is useless: 401.
    let mut mallory = Client::new(tuple(41032), "alice", "guess");
    let r = mallory.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk)], &[]);
    assert_eq!(code(&r), Some(401));
    assert_eq!(h.core.stats().control.mobility_moves, 0);
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::WrongUser), 1);
    let info = h.core.allocations(&AllocationFilter::default(), 10, h.now);
    assert_eq!(info[0].tuple, tuple(41030));
}

#[test]
fn forged_modified_and_other_allocation_tickets_are_refused() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let (_, _, tk) = mobile_call(&mut h, 41040, "192.0.2.40:7000".parse().unwrap());
    let mut c = Client::new(tuple(41041), "alice", "alicepw");
    // Modified: 400.
    let mut bad = tk.clone();
    bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, bad)], &[]);
    assert_eq!(code(&r), Some(400));
    // Sealed under another key (another server, or before a restart): 400.
    let forged = TicketKey::new([6; 32]).seal(&Ticket {
        allocation: 1,
        worker: 0,
        serial: 0,
    });
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, forged)],
        &[],
    );
    assert_eq!(code(&r), Some(400));
    // Garbage: 400.
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, b"x".to_vec())],
        &[],
    );
    assert_eq!(code(&r), Some(400));
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::BadTicket), 3);
    // A genuine ticket for an allocation that is gone: 437.
    let (mut gone, _, gone_tk) = mobile_call(&mut h, 41042, "192.0.2.41:7000".parse().unwrap());
    let r = gone.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r));
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, gone_tk)],
        &[],
    );
    assert_eq!(code(&r), Some(437));
    assert_eq!(
        refusals(&h, crate::stats::MobilityRefusal::UnknownAllocation),
        1
    );
    // Another allocation's ticket presented from a 5-tuple that holds an allocation: 437, and
    // neither moves.
    let (mut holder, _, _) = mobile_call(&mut h, 41043, "192.0.2.42:7000".parse().unwrap());
    let r = holder.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk)], &[]);
    assert_eq!(code(&r), Some(437));
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::TupleInUse), 1);
    assert_eq!(h.core.stats().control.mobility_moves, 0);
    assert!(h.core.has_allocation(&tuple(41040)) && h.core.has_allocation(&tuple(41043)));
}

#[test]
fn a_ticket_from_before_a_move_cannot_move_the_allocation_again() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let (mut c, _, tk0) = mobile_call(&mut h, 41050, "192.0.2.50:7000".parse().unwrap());
    // A Refresh before the move: tk1 is also valid until the move.
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    let tk1 = ticket(&r);
    c.tuple = tuple(41051);
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_MOBILITY_TICKET, tk0.clone())],
        &[],
    );
    assert!(is_success(&r), "{:?}", code(&r));
    let tk2 = ticket(&r);
    // Both pre-move tickets are now stale from any other 5-tuple, even for the right user.
    for (port, old) in [(41052, &tk0), (41053, &tk1)] {
        let mut thief = Client::new(tuple(port), "alice", "alicepw");
        let r = thief.call(
            &mut h,
            METHOD_REFRESH,
            &[(ATTR_MOBILITY_TICKET, old.clone())],
            &[],
        );
        assert_eq!(code(&r), Some(437));
    }
    assert_eq!(refusals(&h, crate::stats::MobilityRefusal::StaleTicket), 2);
    // The new ticket moves it again; the unconfirmed 5-tuple (41051) is dropped, the one last
    // heard from (41050) stays the fallback until the client is heard on 41054.
    c.tuple = tuple(41054);
    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk2)], &[]);
    assert!(is_success(&r), "{:?}", code(&r));
    assert!(!h.core.has_allocation(&tuple(41051)));
    assert!(h.core.has_allocation(&tuple(41050)));
    let r = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    assert!(is_success(&r));
    assert!(!h.core.has_allocation(&tuple(41050)));
    assert_eq!(h.core.stats().control.mobility_moves, 2);
}

#[test]
fn a_captured_moving_refresh_replayed_from_elsewhere_is_stale() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let (mut c, _, tk) = mobile_call(&mut h, 41060, "192.0.2.60:7000".parse().unwrap());
    c.tuple = tuple(41061);
    let _ = c.call(&mut h, METHOD_REFRESH, &[], &[]); // learn the new 5-tuple's nonce (437)
    let req = c.build(
        METHOD_REFRESH,
        TransactionId::new(),
        &[(ATTR_MOBILITY_TICKET, tk)],
        &[],
    );
    // An attacker replays the signed request from its own address before the client.
    let r = h.request(tuple(41062), &req);
    assert_eq!(code(&r), Some(438));
    assert_eq!(h.core.stats().control.mobility_moves, 0);
    // The client's own request moves it.
    let r = h.request(tuple(41061), &req);
    assert!(is_success(&r), "{:?}", code(&r));
}

#[test]
fn mobility_owner_names_the_worker_of_a_sealed_ticket() {
    let cfg = Arc::new(mobile_config());
    let shared = Arc::new(Shared::default());
    let t0 = Instant::now();
    let mut relays = FakeRelays::new("127.0.0.1");
    let mut w3 = TurnCore::new(cfg.clone(), shared.clone(), t0, T0_UNIX).with_worker(3);
    let w0 = TurnCore::new(cfg, shared, t0, T0_UNIX);
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    let mut c = Client::new(tuple(41070), "alice", "alicepw");
    // Learn a nonce from the harness core (same nonce key), then allocate on worker 3.
    let _ = c.allocate(&mut h);
    c.tuple = tuple(41071);
    let _ = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    let mut out = vec![];
    let req = c.build(
        METHOD_ALLOCATE,
        TransactionId::new(),
        &[udp(), want_ticket()],
        &[],
    );
    w3.handle_client(c.tuple, &req, t0, &mut relays, &mut out);
    let Some(Transmit::ToClient { data, .. }) = out.pop() else {
        panic!()
    };
    let tk = ticket(&msg::decode(&data).unwrap());
    let refresh = c.build(
        METHOD_REFRESH,
        TransactionId::new(),
        &[(ATTR_MOBILITY_TICKET, tk)],
        &[],
    );
    assert_eq!(w0.mobility_owner(&refresh), Some(3));
    // Not a Refresh, no ticket, or a bad one: nobody.
    assert_eq!(w0.mobility_owner(&req), None);
    let plain = c.build(METHOD_REFRESH, TransactionId::new(), &[], &[]);
    assert_eq!(w0.mobility_owner(&plain), None);
    let bad = c.build(
        METHOD_REFRESH,
        TransactionId::new(),
        &[(ATTR_MOBILITY_TICKET, vec![b'A'; TICKET_CHARS])],
        &[],
    );
    assert_eq!(w0.mobility_owner(&bad), None);
    assert_eq!(w0.mobility_owner(&[0x40, 0x01, 0, 0]), None);
}

// ---- RFC 6062 TCP allocations ----------------------------------------------------------------

fn tcp_tuple(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Tcp,
        ..tuple(port)
    }
}

fn tcp() -> (AttrType, Vec<u8>) {
    (ATTR_REQUESTED_TRANSPORT, vec![6, 0, 0, 0])
}

fn peer_attr(peer: SocketAddr) -> (AttrType, Vec<u8>) {
    let mut b = MessageBuilder::new(
        MessageType::new(METHOD_CONNECT, CLASS_REQUEST),
        TransactionId::new(),
    );
    b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
    let m = msg::decode(&b.finish()).unwrap();
    (
        ATTR_XOR_PEER_ADDRESS,
        attr(&m, ATTR_XOR_PEER_ADDRESS).unwrap().to_vec(),
    )
}

/// The client messages among `out`, decoded, and the rest.
fn split(out: Vec<Transmit>) -> (Vec<(FiveTuple, Message)>, Vec<Transmit>) {
    let mut msgs = vec![];
    let mut rest = vec![];
    for t in out {
        match t {
            Transmit::ToClient { to, data } => msgs.push((to, msg::decode(&data).unwrap())),
            other => rest.push(other),
        }
    }
    (msgs, rest)
}

fn tcp_events(h: &Harness, e: TcpEvent) -> u64 {
    h.core.stats().tcp_events(e)
}

fn queued(h: &mut Harness) -> Vec<Transmit> {
    std::iter::from_fn(|| h.core.poll_transmit()).collect()
}

/// A TCP allocation of alice over TCP; returns the client and the relayed address.
fn tcp_allocation(h: &mut Harness, port: u16) -> (Client, SocketAddr) {
    let mut c = Client::new(tcp_tuple(port), "alice", "alicepw");
    let r = c.call(h, METHOD_ALLOCATE, &[tcp()], &[]);
    assert!(is_success(&r), "{:?}", code(&r));
    (c, relayed(&r))
}

/// Sends Connect to `peer` (the client already knows its nonce); returns what came out.
fn connect(h: &mut Harness, c: &Client, peer: SocketAddr) -> Vec<Transmit> {
    let data = c.build(
        METHOD_CONNECT,
        TransactionId::new(),
        &[peer_attr(peer)],
        &[],
    );
    h.send(c.tuple, &data)
}

fn cid_attr(m: &Message) -> Vec<u8> {
    attr(m, ATTR_CONNECTION_ID).expect("CONNECTION-ID").to_vec()
}

#[test]
fn tcp_allocation_over_tcp_is_granted_and_over_udp_refused() {
    let mut h = Harness::new();
    let (_, relay) = tcp_allocation(&mut h, 41000);
    assert!(h.shared.is_live_relay(relay));
    // Over UDP: 400 (RFC 6062 §5.1), as with EVEN-PORT or DONT-FRAGMENT over TCP.
    let mut u = Client::new(tuple(41001), "alice", "alicepw");
    assert_eq!(
        code(&u.call(&mut h, METHOD_ALLOCATE, &[tcp()], &[])),
        Some(400)
    );
    let mut t = Client::new(tcp_tuple(41002), "alice", "alicepw");
    let even = (ATTR_EVEN_PORT, vec![0u8]);
    assert_eq!(
        code(&t.call(&mut h, METHOD_ALLOCATE, &[tcp(), even], &[])),
        Some(400)
    );
    let df = (ATTR_DONT_FRAGMENT, vec![]);
    assert_eq!(
        code(&t.call(&mut h, METHOD_ALLOCATE, &[tcp(), df], &[])),
        Some(400)
    );
    // Another transport number is still 442.
    let sctp = (ATTR_REQUESTED_TRANSPORT, vec![132, 0, 0, 0]);
    assert_eq!(
        code(&t.call(&mut h, METHOD_ALLOCATE, &[sctp], &[])),
        Some(442)
    );
}

#[test]
fn connect_opens_from_the_relay_and_answers_when_the_peer_is_up() {
    let mut h = Harness::new();
    let (c, relay) = tcp_allocation(&mut h, 41010);
    let peer: SocketAddr = "192.0.2.10:8000".parse().unwrap();
    // No permission needed: the core asks the I/O layer to connect and answers later.
    let out = connect(&mut h, &c, peer);
    let Transmit::ConnectPeer {
        connection_id,
        relay: from,
        peer: to,
    } = out[0]
    else {
        panic!("{out:?}")
    };
    assert_eq!(out.len(), 1);
    assert_eq!((from, to), (relay, peer));
    assert_eq!(h.shared.peer_connection_count(), 1);
    // The same peer again while connecting: 446.
    let (msgs, _) = split(connect(&mut h, &c, peer));
    assert_eq!(code(&msgs[0].1), Some(446));
    let mut out = vec![];
    assert!(h
        .core
        .handle_peer_connected(connection_id, true, h.now, &mut out));
    let (msgs, _) = split(out);
    let (to, r) = &msgs[0];
    assert_eq!(*to, c.tuple);
    assert!(is_success(r));
    assert_eq!(r.typ.method, METHOD_CONNECT);
    assert_eq!(cid_attr(r), connection_id.to_be_bytes());
    let key = long_term_key("alice", "turnkey", "alicepw", PasswordAlgorithm::Md5);
    assert!(verify_integrity(r, &key, IntegrityAlgorithm::Sha1));
    assert_eq!(tcp_events(&h, TcpEvent::Connected), 1);
    // Connected: still 446.
    let (msgs, _) = split(connect(&mut h, &c, peer));
    assert_eq!(code(&msgs[0].1), Some(446));
    assert_eq!(tcp_events(&h, TcpEvent::Duplicate), 2);
    // A failed connection is 447 and forgotten.
    let other: SocketAddr = "192.0.2.11:8000".parse().unwrap();
    let out = connect(&mut h, &c, other);
    let Transmit::ConnectPeer { connection_id, .. } = out[0] else {
        panic!()
    };
    let mut out = vec![];
    assert!(!h
        .core
        .handle_peer_connected(connection_id, false, h.now, &mut out));
    let (msgs, _) = split(out);
    assert_eq!(code(&msgs[0].1), Some(447));
    assert_eq!(h.shared.peer_connection_count(), 1);
    assert_eq!(h.core.stats().control.live_peer_connections, 1);
}

/// A draining server (issue 15) keeps a live TCP allocation (RFC 6062) whole: Connect to a new
/// peer still opens from its relay and is answered; only new allocations are refused.
#[test]
fn draining_keeps_connect_on_a_live_tcp_allocation() {
    let mut h = Harness::new();
    let (mut c, relay) = tcp_allocation(&mut h, 41015);
    h.shared.start_draining();
    let r = Client::new(tcp_tuple(41016), "alice", "alicepw").call(
        &mut h,
        METHOD_ALLOCATE,
        &[tcp()],
        &[],
    );
    assert_eq!(code(&r), Some(508));
    assert!(is_success(&c.call(&mut h, METHOD_REFRESH, &[], &[])));
    let peer: SocketAddr = "192.0.2.15:8000".parse().unwrap();
    let out = connect(&mut h, &c, peer);
    let [Transmit::ConnectPeer {
        connection_id,
        relay: from,
        peer: to,
    }] = out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!((from, to), (relay, peer));
    let mut out = vec![];
    assert!(h
        .core
        .handle_peer_connected(connection_id, true, h.now, &mut out));
    let (msgs, _) = split(out);
    assert!(is_success(&msgs[0].1));
    assert_eq!(tcp_events(&h, TcpEvent::Connected), 1);
}

#[test]
fn connect_is_refused_for_denied_peers_udp_allocations_and_over_the_cap() {
    let mut cfg = config();
    cfg.tcp.max_connections_per_allocation = 1;
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let (c, _) = tcp_allocation(&mut h, 41020);
    // The policy: private and own addresses are refused (403), counted both ways.
    let (msgs, rest) = split(connect(&mut h, &c, "10.0.0.1:80".parse().unwrap()));
    assert!(rest.is_empty());
    assert_eq!(code(&msgs[0].1), Some(403));
    assert_eq!(peer_denied(&h, DenyReason::Private), 1);
    assert_eq!(tcp_events(&h, TcpEvent::PeerDenied), 1);
    // The cap: one connection per allocation here, the second Connect is 403.
    assert_eq!(
        connect(&mut h, &c, "192.0.2.20:80".parse().unwrap()).len(),
        1
    );
    let (msgs, _) = split(connect(&mut h, &c, "192.0.2.21:80".parse().unwrap()));
    assert_eq!(code(&msgs[0].1), Some(403));
    assert_eq!(tcp_events(&h, TcpEvent::Limit), 1);
    // Connect on a UDP allocation: 400.
    let mut u = Client::new(tuple(41021), "alice", "alicepw");
    assert!(is_success(&u.allocate(&mut h)));
    let r = u.call(
        &mut h,
        METHOD_CONNECT,
        &[peer_attr("192.0.2.22:80".parse().unwrap())],
        &[],
    );
    assert_eq!(code(&r), Some(400));
}

#[test]
fn connect_times_out_with_447() {
    let mut h = Harness::new();
    let (c, _) = tcp_allocation(&mut h, 41030);
    let out = connect(&mut h, &c, "192.0.2.30:80".parse().unwrap());
    let Transmit::ConnectPeer { connection_id, .. } = out[0] else {
        panic!()
    };
    h.advance(29);
    assert!(queued(&mut h).is_empty());
    h.advance(1);
    let (msgs, rest) = split(queued(&mut h));
    assert_eq!(code(&msgs[0].1), Some(447));
    assert_eq!(rest, vec![Transmit::ClosePeerConnection { connection_id }]);
    // The late connection is not kept.
    let mut out = vec![];
    assert!(!h
        .core
        .handle_peer_connected(connection_id, true, h.now, &mut out));
    assert!(out.is_empty());
    assert_eq!(h.shared.peer_connection_count(), 0);
}

#[test]
fn connection_bind_claims_a_waiting_connection_once_for_its_user() {
    let mut h = Harness::new();
    let (c, _) = tcp_allocation(&mut h, 41040);
    let out = connect(&mut h, &c, "192.0.2.40:80".parse().unwrap());
    let Transmit::ConnectPeer { connection_id, .. } = out[0] else {
        panic!()
    };
    let id = connection_id.to_be_bytes().to_vec();
    // Not yet connected: nothing to bind.
    let mut d = Client::new(tcp_tuple(41041), "alice", "alicepw");
    let bind = |id: &[u8]| vec![(ATTR_CONNECTION_ID, id.to_vec())];
    assert_eq!(
        code(&d.call(&mut h, METHOD_CONNECTION_BIND, &bind(&id), &[])),
        Some(400)
    );
    let mut out = vec![];
    assert!(h
        .core
        .handle_peer_connected(connection_id, true, h.now, &mut out));
    // Unknown id, another user, over UDP: 400.
    assert_eq!(
        code(&d.call(&mut h, METHOD_CONNECTION_BIND, &bind(&[0, 0, 0, 99]), &[])),
        Some(400)
    );
    let mut bob = Client::new(tcp_tuple(41042), "bob", "bobpw");
    assert_eq!(
        code(&bob.call(&mut h, METHOD_CONNECTION_BIND, &bind(&id), &[])),
        Some(400)
    );
    let mut udp = Client::new(tuple(41043), "alice", "alicepw");
    assert_eq!(
        code(&udp.call(&mut h, METHOD_CONNECTION_BIND, &bind(&id), &[])),
        Some(400)
    );
    // The control connection itself cannot become a data connection.
    let mut ctl = c;
    assert_eq!(
        code(&ctl.call(&mut h, METHOD_CONNECTION_BIND, &bind(&id), &[])),
        Some(400)
    );
    // alice on a new connection: success, then the I/O layer joins the two.
    let data = d.build(
        METHOD_CONNECTION_BIND,
        TransactionId::new(),
        &bind(&id),
        &[],
    );
    let out = h.send(d.tuple, &data);
    assert_eq!(out.len(), 2, "{out:?}");
    let (msgs, rest) = split(out);
    assert!(is_success(&msgs[0].1));
    assert_eq!(
        rest,
        vec![Transmit::BindConnection {
            to: d.tuple,
            connection_id
        }]
    );
    assert!(h.core.peer_connection_traffic(connection_id).is_some());
    // Once only; and a bound connection outlives the bind deadline.
    let mut d2 = Client::new(tcp_tuple(41044), "alice", "alicepw");
    assert_eq!(
        code(&d2.call(&mut h, METHOD_CONNECTION_BIND, &bind(&id), &[])),
        Some(400)
    );
    h.advance(31);
    assert!(queued(&mut h).is_empty());
    assert_eq!(h.shared.peer_connection_count(), 1);
    assert_eq!(tcp_events(&h, TcpEvent::Bound), 1);
    // Counted when the id was looked up (not for UDP or the control connection).
    assert_eq!(tcp_events(&h, TcpEvent::BindRejected), 4);
    // The I/O layer reports the end.
    h.core.handle_peer_connection_closed(connection_id);
    assert_eq!(h.shared.peer_connection_count(), 0);
    assert_eq!(h.core.stats().control.live_peer_connections, 0);
}

#[test]
fn a_peer_is_accepted_only_with_a_permission_and_expires_unbound_after_30s() {
    let mut h = Harness::new();
    let (mut c, relay) = tcp_allocation(&mut h, 41050);
    let peer: SocketAddr = "192.0.2.50:33000".parse().unwrap();
    let mut out = vec![];
    assert_eq!(
        h.core.handle_peer_accept(relay, peer, h.now, &mut out),
        None
    );
    assert!(out.is_empty());
    assert_eq!(tcp_events(&h, TcpEvent::NoPermission), 1);
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[peer]);
    assert!(is_success(&r));
    let id = h
        .core
        .handle_peer_accept(relay, peer, h.now, &mut out)
        .expect("accepted");
    let (msgs, _) = split(out);
    let (to, ind) = &msgs[0];
    assert_eq!(*to, c.tuple);
    assert_eq!(
        ind.typ,
        MessageType::new(METHOD_CONNECTION_ATTEMPT, CLASS_INDICATION)
    );
    assert_eq!(cid_attr(ind), id.to_be_bytes());
    assert_eq!(xor_address(ind, ATTR_XOR_PEER_ADDRESS), Some(peer));
    // No ConnectionBind within 30 s: closed, and the id is dead.
    h.advance(29);
    assert!(queued(&mut h).is_empty());
    h.advance(1);
    assert_eq!(
        queued(&mut h),
        vec![Transmit::ClosePeerConnection { connection_id: id }]
    );
    assert_eq!(tcp_events(&h, TcpEvent::BindTimeout), 1);
    let mut d = Client::new(tcp_tuple(41051), "alice", "alicepw");
    let bind = vec![(ATTR_CONNECTION_ID, id.to_be_bytes().to_vec())];
    assert_eq!(
        code(&d.call(&mut h, METHOD_CONNECTION_BIND, &bind, &[])),
        Some(400)
    );
    // A peer on a UDP relay or an unknown address: refused.
    let mut out = vec![];
    assert_eq!(
        h.core
            .handle_peer_accept("127.0.0.1:9".parse().unwrap(), peer, h.now, &mut out),
        None
    );
}

#[test]
fn incoming_peers_are_capped_and_policy_checked() {
    let mut cfg = config();
    cfg.tcp.max_connections = 1;
    cfg.policy = PeerPolicy::new(
        vec![],
        vec!["192.0.2.99/32".parse().unwrap()],
        vec!["127.0.0.1".parse().unwrap()],
        vec![3478],
        (50000, 50999),
    );
    let mut h = Harness::with(cfg, FakeRelays::new("127.0.0.1"));
    let (mut c, relay) = tcp_allocation(&mut h, 41060);
    let ok: SocketAddr = "192.0.2.60:33000".parse().unwrap();
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[ok]);
    assert!(is_success(&r));
    let mut out = vec![];
    assert!(h
        .core
        .handle_peer_accept(relay, ok, h.now, &mut out)
        .is_some());
    // Server-wide cap of 1: the next peer is closed.
    let second: SocketAddr = "192.0.2.60:33001".parse().unwrap();
    assert_eq!(
        h.core.handle_peer_accept(relay, second, h.now, &mut out),
        None
    );
    assert_eq!(tcp_events(&h, TcpEvent::Limit), 1);
    // The policy per connection: a peer from the permitted IP but a refused port (the
    // server's own relay range on its own address) is closed.
    let own: SocketAddr = "127.0.0.1:50500".parse().unwrap();
    let r = c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &["127.0.0.1:1".parse().unwrap()],
    );
    assert_eq!(code(&r), Some(403));
    assert_eq!(h.core.handle_peer_accept(relay, own, h.now, &mut out), None);
    // ChannelBind is refused and Send dropped on a TCP allocation (RFC 6062 §5.1).
    let r = c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0, 0, 0])],
        &[ok],
    );
    assert_eq!(code(&r), Some(400));
    let mut b = MessageBuilder::indication(METHOD_SEND);
    b.xor_address(ATTR_XOR_PEER_ADDRESS, ok)
        .raw(ATTR_DATA, b"x");
    assert!(h.send(c.tuple, &b.finish()).is_empty());
    assert_eq!(dropped(&h, DropReason::TcpAllocation), 1);
}

#[test]
fn an_ended_tcp_allocation_closes_its_peer_connections() {
    let mut h = Harness::new();
    let (mut c, relay) = tcp_allocation(&mut h, 41070);
    let peer: SocketAddr = "192.0.2.70:33000".parse().unwrap();
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[peer]
    )));
    let mut out = vec![];
    let accepted = h
        .core
        .handle_peer_accept(relay, peer, h.now, &mut out)
        .unwrap();
    let out = connect(&mut h, &c, "192.0.2.71:80".parse().unwrap());
    let Transmit::ConnectPeer { connection_id, .. } = out[0] else {
        panic!()
    };
    assert_eq!(h.core.stats().control.live_peer_connections, 2);
    h.core.handle_connection_closed(c.tuple, &mut h.relays);
    let mut closed: Vec<Transmit> = queued(&mut h);
    closed.sort_by_key(|t| format!("{t:?}"));
    let mut want = vec![
        Transmit::ClosePeerConnection {
            connection_id: accepted,
        },
        Transmit::ClosePeerConnection { connection_id },
    ];
    want.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(closed, want);
    assert_eq!(h.shared.peer_connection_count(), 0);
    assert_eq!(h.core.stats().control.live_peer_connections, 0);
    assert_eq!(h.relays.released, vec![relay]);
}

/// Bytes a TCP allocation's data connections get through when they read `chunk` bytes at a
/// time for `secs` of virtual time going `dir`, sleeping as [`StreamTraffic::pace`] says
/// (the I/O layer's loop); the waits by scope.
fn paced(
    stream: &StreamTraffic,
    dir: Direction,
    chunk: usize,
    start: Instant,
    secs: u64,
) -> (u64, [u64; 3]) {
    let (mut now, end) = (start, start + Duration::from_secs(secs));
    let (mut passed, mut waits) = (0u64, [0u64; 3]);
    while now < end {
        match stream.pace(dir, chunk, now) {
            Ok(()) => passed += chunk as u64,
            Err((scope, wait)) => {
                assert!(wait > Duration::ZERO && wait <= MAX_STREAM_WAIT, "{wait:?}");
                waits[scope.index()] += 1;
                now += wait;
            }
        }
    }
    (passed, waits)
}

fn stream_of(h: &Harness, relay: SocketAddr) -> Arc<StreamTraffic> {
    let id = h.core.by_relay[&relay];
    h.core.allocs[&id].tcp.clone().expect("a TCP allocation")
}

#[test]
fn a_tcp_allocations_data_connections_are_paced_by_its_caps() {
    // 800 kbit/s = 100 000 B/s per allocation, 200 ms (20 000 B) deep; no user or total cap.
    let mut h = Harness::with(capped(800_000, 0, 0), FakeRelays::new("127.0.0.1"));
    let (_c, relay) = tcp_allocation(&mut h, 41100);
    let stream = stream_of(&h, relay);
    // 16 KiB reads for 10 s each way: rate * T, plus at most the burst and one read.
    let (up, waits) = paced(&stream, Direction::ToPeer, 16_384, h.now, 10);
    assert!(
        (1_000_000..=1_000_000 + 20_000 + 16_384).contains(&up),
        "{up}"
    );
    assert!(waits[BandwidthScope::Allocation.index()] > 10, "{waits:?}");
    assert_eq!(waits[1] + waits[2], 0);
    let (down, _) = paced(&stream, Direction::FromPeer, 16_384, h.now, 10);
    assert_near(down, 1_000_000, 4);
    // The allocation's own cap, set through the admin API, applies at once: 1.6 Mbit/s.
    let id = h.core.by_relay[&relay];
    let info = h
        .core
        .set_allocation_bandwidth(id, Some(1_600_000), h.now)
        .expect("the allocation");
    assert_eq!(
        (info.bandwidth_bps, info.bandwidth_override),
        (1_600_000, true)
    );
    let later = h.now + Duration::from_secs(20);
    let (up, _) = paced(&stream, Direction::ToPeer, 16_384, later, 10);
    assert_near(up, 2_000_000, 3);
    // Back to the server-wide cap, then no cap at all: every read passes at once.
    h.core.set_allocation_bandwidth(id, None, h.now);
    h.shared
        .set_bandwidth_caps(BandwidthCaps::default(), h.now)
        .unwrap();
    h.advance(1);
    for _ in 0..1000 {
        assert_eq!(stream.pace(Direction::ToPeer, 1 << 20, later), Ok(()));
    }
}

#[test]
fn a_user_cap_is_shared_by_tcp_allocations_on_two_cores_and_released_with_them() {
    // 800 kbit/s per user; alice has a TCP allocation on each of two cores.
    let mut a = Harness::with(capped(0, 800_000, 0), FakeRelays::new("127.0.0.1"));
    let mut b = Harness::beside(&a, capped(0, 800_000, 0), "127.0.0.2");
    let (_ca, ra) = tcp_allocation(&mut a, 41110);
    let (_cb, rb) = tcp_allocation(&mut b, 41111);
    assert_eq!(a.shared.bandwidth_user_entries(), 1);
    let (sa, sb) = (stream_of(&a, ra), stream_of(&b, rb));
    // Interleaved 4 KiB reads on both for 10 s: together the user's rate, not twice it.
    let start = a.now;
    let (mut now, mut total, mut waits) = (start, 0u64, 0u64);
    while now < start + Duration::from_secs(10) {
        let mut slept = Duration::MAX;
        for s in [&sa, &sb] {
            match s.pace(Direction::ToPeer, 4096, now) {
                Ok(()) => {
                    total += 4096;
                    slept = Duration::ZERO;
                }
                Err((scope, wait)) => {
                    assert_eq!(scope, BandwidthScope::User);
                    waits += 1;
                    slept = slept.min(wait);
                }
            }
        }
        now += slept;
    }
    assert_near(total, 1_000_000, 4);
    assert!(waits > 10);
    // Ending one allocation keeps the user's buckets for the other; ending both frees them,
    // and a data connection left over passes no bucket.
    let id = a.core.by_relay[&ra];
    assert!(a.core.end_allocation(id, a.now, &mut a.relays).is_some());
    assert_eq!(a.shared.bandwidth_user_entries(), 1);
    assert_eq!(sa.pace(Direction::ToPeer, 1 << 30, a.now), Ok(()));
    let id = b.core.by_relay[&rb];
    assert!(b.core.end_allocation(id, b.now, &mut b.relays).is_some());
    assert_eq!(a.shared.bandwidth_user_entries(), 0);
}

#[test]
fn relay_client_data_routes_channel_data_without_copying_and_counts_like_handle_client() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.210:7000".parse().unwrap();
    let (c, relay) = channel_to(&mut h, 41200, "alice", "alicepw", peer);
    let mut frame = channel_data(300);
    frame[4..].copy_from_slice(&[9u8; 300]);
    let before = h.core.stats().relay.c2p_bytes;
    match h.core.relay_client_data(c.tuple, &frame, h.now) {
        ClientData::ToPeer {
            relay: r,
            peer: p,
            payload,
        } => {
            assert_eq!(
                (r, p),
                (h.core.allocs.values().next().unwrap().relays[0].local, peer)
            );
            assert_eq!(payload, 4..304);
            assert_eq!(&frame[payload], &[9u8; 300][..]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.core.stats().relay.c2p_bytes, before + 300);
    assert!(h.shared.is_live_relay(relay));
    // An unbound channel is dropped and counted; STUN goes to handle_client.
    let mut unbound = channel_data(10);
    unbound[1] = 0x02;
    assert_eq!(
        h.core.relay_client_data(c.tuple, &unbound, h.now),
        ClientData::Dropped
    );
    assert_eq!(dropped(&h, DropReason::NoChannel), 1);
    // A length field longer than the datagram: malformed.
    let mut short = channel_data(10);
    short[3] = 200;
    assert_eq!(
        h.core.relay_client_data(c.tuple, &short, h.now),
        ClientData::Dropped
    );
    assert_eq!(dropped(&h, DropReason::Malformed), 1);
    let binding = c.build(METHOD_BINDING, TransactionId::new(), &[], &[]);
    assert_eq!(
        h.core.relay_client_data(c.tuple, &binding, h.now),
        ClientData::Other
    );
    // From another 5-tuple: no allocation.
    assert_eq!(
        h.core.relay_client_data(tuple(41299), &frame, h.now),
        ClientData::Dropped
    );
    assert_eq!(dropped(&h, DropReason::NoAllocation), 1);
}

#[test]
fn handle_peer_into_reuses_the_callers_buffer_for_channel_data_and_data_indications() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.211:7000".parse().unwrap();
    let (c, relay) = channel_to(&mut h, 41210, "alice", "alicepw", peer);
    let mut buf = vec![0xffu8; 5000];
    let to = h
        .core
        .handle_peer_into(relay, peer, b"hello", h.now, &mut buf)
        .expect("relayed");
    assert_eq!(to, c.tuple);
    assert_eq!(buf, [0x40, 0x01, 0, 5, b'h', b'e', b'l', b'l', b'o']);
    // The same bytes as handle_peer's.
    let Some(Transmit::ToClient { data, .. }) = h.core.handle_peer(relay, peer, b"hello", h.now)
    else {
        panic!("handle_peer relays too")
    };
    assert_eq!(data, buf);
    // Another peer of the same IP without a channel: a Data indication, in the same buffer.
    let other: SocketAddr = "192.0.2.211:7001".parse().unwrap();
    h.core
        .handle_peer_into(relay, other, b"hi", h.now, &mut buf)
        .expect("permission by IP");
    let m = stun_proto::msg::decode(&buf).expect("a STUN message");
    assert_eq!(m.typ, MessageType::new(METHOD_DATA, CLASS_INDICATION));
    assert_eq!(attr(&m, ATTR_DATA), Some(&b"hi"[..]));
    // No permission: nothing, counted.
    let stranger: SocketAddr = "198.51.100.9:7000".parse().unwrap();
    assert!(h
        .core
        .handle_peer_into(relay, stranger, b"x", h.now, &mut buf)
        .is_none());
    assert_eq!(dropped(&h, DropReason::NoPermission), 1);
}

#[test]
fn the_stored_allocate_response_goes_once_the_client_sends_another_request() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.212:7000".parse().unwrap();
    let mut c = Client::new(tuple(41220), "alice", "alicepw");
    let tid = TransactionId::new();
    // Learn the nonce, then Allocate with a known transaction id.
    let _ = c.call(&mut h, METHOD_REFRESH, &[], &[]);
    let req = c.build(METHOD_ALLOCATE, tid, &[udp()], &[]);
    let first = h.send(c.tuple, &req);
    let id = h.core.by_tuple[&c.tuple];
    assert!(!h.core.allocs[&id].allocate_response.is_empty());
    assert_eq!(
        h.send(c.tuple, &req),
        first,
        "a retransmission meets the stored answer"
    );
    // CreatePermission: the client had its answer; the stored response is freed.
    let r = c.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[peer]);
    assert!(is_success(&r));
    assert_eq!(h.core.allocs[&id].allocate_response.capacity(), 0);
    // A late copy of the old Allocate is then an Allocate on an allocated 5-tuple: 437.
    let late = h.send(c.tuple, &req);
    let Transmit::ToClient { data, .. } = &late[0] else {
        panic!("{late:?}")
    };
    assert_eq!(code(&stun_proto::msg::decode(data).unwrap()), Some(437));
}

// ---- The XDP fast path's events (fastpath.rs) ----

fn fast_events(h: &mut Harness) -> Vec<FastPathEvent> {
    std::iter::from_fn(|| h.core.poll_fast_path_event(h.now)).collect()
}

fn installed(events: &[FastPathEvent]) -> Vec<FastPathBinding> {
    events
        .iter()
        .filter_map(|e| match e {
            FastPathEvent::Install(b) => Some(*b),
            FastPathEvent::Remove(_) => None,
        })
        .collect()
}

fn removed(events: &[FastPathEvent]) -> Vec<FastPathBinding> {
    events
        .iter()
        .filter_map(|e| match e {
            FastPathEvent::Remove(b) => Some(*b),
            FastPathEvent::Install(_) => None,
        })
        .collect()
}

#[test]
fn fast_path_is_silent_unless_enabled() {
    let mut h = Harness::new();
    let peer: SocketAddr = "192.0.2.80:7000".parse().unwrap();
    let _ = channel_to(&mut h, 41000, "alice", "alicepw", peer);
    assert!(fast_events(&mut h).is_empty());
}

#[test]
fn fast_path_follows_channel_permission_and_allocation_deadlines() {
    let mut h = Harness::new();
    h.core.enable_fast_path();
    let peer: SocketAddr = "192.0.2.81:7000".parse().unwrap();
    let mut c = Client::new(tuple(41001), "alice", "alicepw");
    let relay = relayed(&c.allocate(&mut h));
    // A permission alone is not a channel: nothing for the fast path.
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[peer]
    )));
    assert!(fast_events(&mut h).is_empty());
    let ch = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0]);
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        std::slice::from_ref(&ch),
        &[peer]
    )));
    let ev = fast_events(&mut h);
    let want = FastPathBinding {
        allocation: installed(&ev)[0].allocation,
        client: c.tuple.client,
        server: c.tuple.server,
        channel: 0x4001,
        relay,
        peer,
        // permission 300 s < channel 600 s = allocation 600 s
        expires: h.t0 + Duration::from_secs(300),
    };
    assert_eq!(ev, vec![FastPathEvent::Install(want)]);
    assert_eq!(h.core.fast_path_bindings(), 1);
    // Nothing changed: nothing to say.
    h.advance(10);
    assert!(fast_events(&mut h).is_empty());

    // A permission refresh moves the deadline (an Install for the same key).
    h.advance(190); // t=200
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[peer]
    )));
    let ev = fast_events(&mut h);
    assert_eq!(
        ev,
        vec![FastPathEvent::Install(FastPathBinding {
            expires: h.t0 + Duration::from_secs(500),
            ..want
        })]
    );

    // The permission expires at t=500: removed at once, by the timer.
    h.advance(299);
    assert!(fast_events(&mut h).is_empty());
    h.advance(1);
    let ev = fast_events(&mut h);
    assert_eq!(removed(&ev).len(), 1, "{ev:?}");
    assert!(installed(&ev).is_empty());
    assert_eq!(h.core.fast_path_bindings(), 0);

    // A new permission brings it back until the channel's deadline (t=600).
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[peer]
    )));
    let ev = fast_events(&mut h);
    assert_eq!(installed(&ev)[0].expires, h.t0 + Duration::from_secs(600));
    // The allocation is refreshed but the channel expires at t=600.
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())],
        &[],
    );
    assert!(is_success(&r));
    assert!(fast_events(&mut h).is_empty(), "same deadline: no event");
    h.advance(100); // t=600
    let ev = fast_events(&mut h);
    assert_eq!(removed(&ev).len(), 1, "{ev:?}");

    // Rebinding after the reuse delay, then deleting the allocation (Refresh 0).
    h.advance(300);
    assert!(is_success(&c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[ch],
        &[peer]
    )));
    assert_eq!(installed(&fast_events(&mut h)).len(), 1);
    let r = c.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 0u32.to_be_bytes().to_vec())],
        &[],
    );
    assert!(is_success(&r));
    let ev = fast_events(&mut h);
    assert_eq!(removed(&ev).len(), 1, "{ev:?}");
    assert_eq!(h.core.fast_path_bindings(), 0);
}

#[test]
fn fast_path_never_gets_a_refused_peer_or_a_live_relay() {
    let mut h = Harness::new();
    h.core.enable_fast_path();
    let mut c = Client::new(tuple(41002), "alice", "alicepw");
    let _ = c.allocate(&mut h);
    // The test policy denies 127.0.0.1: 403 and no entry.
    let denied: SocketAddr = "127.0.0.1:7000".parse().unwrap();
    let ch = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x02, 0, 0]);
    let r = c.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        std::slice::from_ref(&ch),
        &[denied],
    );
    assert_eq!(code(&r), Some(403));
    assert!(fast_events(&mut h).is_empty());
    // Another allocation's relayed address (allowed on the slow path as a live relay, denied
    // by the policy) is left to the slow path.
    let mut other = Client::new(tuple(41003), "bob", "bobpw");
    let other_relay = relayed(&other.allocate(&mut h));
    let r = c.call(&mut h, METHOD_CHANNEL_BIND, &[ch], &[other_relay]);
    assert!(is_success(&r), "{:?}", code(&r));
    assert!(fast_events(&mut h).is_empty());
    assert_eq!(h.core.fast_path_bindings(), 0);
}

#[test]
fn fast_path_stays_off_while_a_bandwidth_cap_applies() {
    let mut h = Harness::with(capped(1_000_000, 0, 0), FakeRelays::new("127.0.0.1"));
    h.core.enable_fast_path();
    let peer: SocketAddr = "192.0.2.82:7000".parse().unwrap();
    let _ = channel_to(&mut h, 41004, "alice", "alicepw", peer);
    assert!(fast_events(&mut h).is_empty());

    // Without caps it is installed; a per-allocation cap removes it, lifting it reinstalls.
    let mut h = Harness::new();
    h.core.enable_fast_path();
    let _ = channel_to(&mut h, 41005, "alice", "alicepw", peer);
    let ev = fast_events(&mut h);
    let id = installed(&ev)[0].allocation;
    assert!(h
        .core
        .set_allocation_bandwidth(id, Some(400_000), h.now)
        .is_some());
    assert_eq!(removed(&fast_events(&mut h)).len(), 1);
    assert!(h.core.set_allocation_bandwidth(id, None, h.now).is_some());
    assert_eq!(installed(&fast_events(&mut h)).len(), 1);
    // A server-wide cap set live (admin API) removes it too.
    let caps = BandwidthCaps {
        total_bps: 10_000_000,
        ..BandwidthCaps::default()
    };
    h.shared.set_bandwidth_caps(caps, h.now).unwrap();
    h.advance(1);
    assert_eq!(removed(&fast_events(&mut h)).len(), 1);
}

#[test]
fn fast_path_traffic_is_added_to_the_allocation_accounting() {
    let mut h = Harness::new();
    h.core.enable_fast_path();
    let peer: SocketAddr = "192.0.2.83:7000".parse().unwrap();
    let (c, _) = channel_to(&mut h, 41006, "alice", "alicepw", peer);
    let id = installed(&fast_events(&mut h))[0].allocation;
    assert_eq!(h.send(c.tuple, &channel_data(10)).len(), 1);
    h.core.add_fast_path_traffic(
        id,
        Traffic {
            packets: 5,
            bytes: 500,
        },
        Traffic {
            packets: 2,
            bytes: 64,
        },
    );
    let info = h.core.allocation_info(id, h.now).unwrap();
    assert_eq!(
        info.to_peer,
        Traffic {
            packets: 6,
            bytes: 510
        }
    );
    assert_eq!(
        info.from_peer,
        Traffic {
            packets: 2,
            bytes: 64
        }
    );
}

#[test]
fn fast_path_follows_an_rfc_8016_move_only_once_it_is_confirmed() {
    let mut h = Harness::with(mobile_config(), FakeRelays::new("127.0.0.1"));
    h.core.enable_fast_path();
    let peer: SocketAddr = "192.0.2.84:7000".parse().unwrap();
    let (mut c, relay, tk) = mobile_call(&mut h, 41007, peer);
    let first = installed(&fast_events(&mut h));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].client, c.tuple.client);
    let old = c.tuple;
    let new = FiveTuple {
        client: "203.0.113.9:50124".parse().unwrap(),
        ..old
    };
    c.tuple = new;
    let r = c.call(&mut h, METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk)], &[]);
    assert!(is_success(&r), "{:?}", code(&r));
    // Moved but not confirmed: data may come on either 5-tuple, the fast path has none.
    let ev = fast_events(&mut h);
    assert_eq!(ev, vec![FastPathEvent::Remove(first[0])]);
    // ChannelData on the new 5-tuple confirms the move: the binding comes back on it.
    assert_eq!(h.send(new, &channel_data(3)).len(), 1);
    let ev = fast_events(&mut h);
    let again = installed(&ev);
    assert_eq!(again.len(), 1, "{ev:?}");
    assert_eq!(
        (again[0].client, again[0].relay, again[0].peer),
        (new.client, relay, peer)
    );
}

#[test]
fn fast_path_follows_a_reload_that_refuses_the_peer() {
    let mut h = Harness::new();
    h.core.enable_fast_path();
    let peer: SocketAddr = "192.0.2.85:7000".parse().unwrap();
    let _ = channel_to(&mut h, 41008, "alice", "alicepw", peer);
    assert_eq!(installed(&fast_events(&mut h)).len(), 1);
    let mut cfg = config();
    cfg.policy = PeerPolicy::new(
        vec![],
        vec!["192.0.2.0/24".parse().unwrap()],
        vec!["127.0.0.1".parse().unwrap()],
        vec![3478],
        (50000, 50999),
    );
    h.core.reconfigure(Arc::new(cfg), h.now);
    assert_eq!(removed(&fast_events(&mut h)).len(), 1);
    assert_eq!(h.core.fast_path_bindings(), 0);
}

/// A harness whose relay allocator shares one socket, 127.0.0.1:50100, between allocations.
fn multiplexed_harness() -> Harness {
    let mut relays = FakeRelays::new("127.0.0.1");
    relays.shared_port = Some(50100);
    let mut cfg = config();
    cfg.user_quota = 10;
    cfg.total_quota = 10;
    Harness::with(cfg, relays)
}

#[test]
fn multiplexed_relay_routes_peer_data_by_endpoint_and_refuses_a_taken_one() {
    let mut h = multiplexed_harness();
    let shared: SocketAddr = "127.0.0.1:50100".parse().unwrap();
    let p1: SocketAddr = "192.0.2.80:7000".parse().unwrap();
    let p2: SocketAddr = "192.0.2.81:7000".parse().unwrap();
    let (mut a, ra) = channel_to(&mut h, 40800, "alice", "alicepw", p1);
    let (mut b, rb) = channel_to(&mut h, 40801, "bob", "bobpw", p2);
    assert_eq!(
        (ra, rb),
        (shared, shared),
        "both allocations on the shared socket"
    );
    assert!(h.shared.is_live_relay(shared));
    // Each peer's datagrams reach the allocation that owns its endpoint.
    let to = |h: &mut Harness, peer| match h.core.handle_peer(shared, peer, b"hi", h.now) {
        Some(Transmit::ToClient { to, .. }) => Some(to),
        _ => None,
    };
    assert_eq!(to(&mut h, p1), Some(a.tuple));
    assert_eq!(to(&mut h, p2), Some(b.tuple));
    // Another port of p1's IP was never named: nobody's.
    let p1_other = SocketAddr::new(p1.ip(), 7001);
    assert_eq!(to(&mut h, p1_other), None);
    assert_eq!(dropped(&h, DropReason::PeerEndpointTaken), 1);
    // B may not claim A's endpoint, by CreatePermission, ChannelBind or Send.
    let r = b.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[p1]);
    assert_eq!(code(&r), Some(508));
    let ch2 = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x02, 0, 0]);
    let r = b.call(&mut h, METHOD_CHANNEL_BIND, &[ch2], &[p1]);
    assert_eq!(code(&r), Some(508));
    // With a permission for p1's IP (port 0 claims nothing), B's Send to p1 is still dropped:
    // p1 would take it for A's.
    let r = b.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[SocketAddr::new(p1.ip(), 0)],
    );
    assert!(is_success(&r));
    assert!(h.send(b.tuple, &send_indication(p1, b"x")).is_empty());
    assert_eq!(dropped(&h, DropReason::PeerEndpointTaken), 2);
    // B's Send to a free port of that IP claims it, and the answer comes back to B.
    let out = h.send(b.tuple, &send_indication(p1_other, b"x"));
    assert_eq!(to_peers(&out), vec![p1_other]);
    assert_eq!(to(&mut h, p1_other), Some(b.tuple));
    // A still relays to p1.
    assert_eq!(to_peers(&h.send(a.tuple, &channel_data(3))), vec![p1]);
    // A Refresh to 0 gives A's endpoints up; the shared socket is never released.
    let r = a.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r));
    assert!(h.relays.released.is_empty());
    assert!(h.shared.is_live_relay(shared), "B still uses it");
    assert_eq!(to(&mut h, p1), None);
    // Now B may have it.
    let ch3 = (ATTR_CHANNEL_NUMBER, vec![0x40, 0x03, 0, 0]);
    assert!(is_success(&b.call(
        &mut h,
        METHOD_CHANNEL_BIND,
        &[ch3],
        &[p1]
    )));
    assert_eq!(to(&mut h, p1), Some(b.tuple));
    let r = b.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r));
    assert!(!h.shared.is_live_relay(shared));
    assert!(h.core.by_endpoint.is_empty());
}

#[test]
fn multiplexed_endpoints_end_with_their_permission_and_come_back_with_it() {
    let mut h = multiplexed_harness();
    let shared: SocketAddr = "127.0.0.1:50100".parse().unwrap();
    let p: SocketAddr = "192.0.2.82:7000".parse().unwrap();
    h.core.enable_fast_path();
    let (mut a, _) = channel_to(&mut h, 40810, "alice", "alicepw", p);
    let fast = |h: &mut Harness| -> (Vec<(u64, SocketAddr)>, usize) {
        let events = fast_events(h);
        let on: Vec<(u64, SocketAddr)> = installed(&events)
            .iter()
            .map(|b| (b.allocation, b.peer))
            .collect();
        (on, removed(&events).len())
    };
    let (on, _) = fast(&mut h);
    assert_eq!(on.len(), 1, "A's channel on the fast path");
    let a_id = on[0].0;
    let r = a.call(
        &mut h,
        METHOD_REFRESH,
        &[(ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())],
        &[],
    );
    assert!(is_success(&r));
    let mut b = Client::new(tuple(40811), "bob", "bobpw");
    let r = b.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_LIFETIME, 3600u32.to_be_bytes().to_vec())],
        &[],
    );
    assert_eq!(relayed(&r), shared);
    // The permission (300 s) ends before the channel (600 s): the endpoint is free again.
    h.advance(301);
    assert!(h.core.by_endpoint.is_empty());
    assert!(h.core.handle_peer(shared, p, b"hi", h.now).is_none());
    assert_eq!(fast(&mut h), (vec![], 1), "withdrawn with the permission");
    // B names the free endpoint first: A's channel to it relays nothing either way.
    assert!(is_success(&b.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[p]
    )));
    let any_port = SocketAddr::new(p.ip(), 0);
    assert!(is_success(&a.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[any_port]
    )));
    let r = a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[p]);
    assert_eq!(code(&r), Some(508));
    // A's channel is bound and its permission live, but the endpoint is B's: no fast path.
    assert_eq!(fast(&mut h), (vec![], 0));
    let taken = dropped(&h, DropReason::PeerEndpointTaken);
    assert!(h.send(a.tuple, &channel_data(3)).is_empty());
    assert_eq!(dropped(&h, DropReason::PeerEndpointTaken), taken + 1);
    let to = |h: &mut Harness| match h.core.handle_peer(shared, p, b"hi", h.now) {
        Some(Transmit::ToClient { to, .. }) => Some(to),
        _ => None,
    };
    assert_eq!(to(&mut h), Some(b.tuple));
    // B goes; A's next permission for the IP claims its bound channel's peer again.
    let r = b.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r));
    assert_eq!(to(&mut h), None);
    assert!(is_success(&a.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[any_port]
    )));
    assert_eq!(to(&mut h), Some(a.tuple));
    assert_eq!(to_peers(&h.send(a.tuple, &channel_data(3))), vec![p]);
    assert_eq!(fast(&mut h).0, vec![(a_id, p)], "back on the fast path");
}

#[test]
fn multiplexed_endpoints_per_allocation_are_capped() {
    let mut h = multiplexed_harness();
    let mut a = Client::new(tuple(40820), "alice", "alicepw");
    relayed(&a.allocate(&mut h));
    let peer = |i: usize| SocketAddr::new("192.0.2.83".parse().unwrap(), 1024 + i as u16);
    let all: Vec<SocketAddr> = (0..MAX_PEER_ENDPOINTS_PER_ALLOCATION).map(peer).collect();
    for chunk in all.chunks(64) {
        assert!(is_success(&a.call(
            &mut h,
            METHOD_CREATE_PERMISSION,
            &[],
            chunk
        )));
    }
    let over = peer(MAX_PEER_ENDPOINTS_PER_ALLOCATION);
    let r = a.call(&mut h, METHOD_CREATE_PERMISSION, &[], &[over]);
    assert_eq!(code(&r), Some(508));
    assert!(h.send(a.tuple, &send_indication(over, b"x")).is_empty());
    assert_eq!(dropped(&h, DropReason::PeerEndpointLimit), 1);
    // Endpoints it holds still relay.
    assert_eq!(
        to_peers(&h.send(a.tuple, &send_indication(peer(0), b"x"))),
        vec![peer(0)]
    );
    assert_eq!(h.core.by_endpoint.len(), MAX_PEER_ENDPOINTS_PER_ALLOCATION);
}

#[test]
fn requests_a_shared_socket_cannot_honour_get_their_own() {
    let mut h = multiplexed_harness();
    let shared: SocketAddr = "127.0.0.1:50100".parse().unwrap();
    // EVEN-PORT without R: the shared port is even.
    let mut a = Client::new(tuple(40830), "alice", "alicepw");
    let r = a.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_EVEN_PORT, vec![0])],
        &[],
    );
    assert_eq!(relayed(&r), shared);
    // EVEN-PORT with R, and DONT-FRAGMENT: a socket of their own, released at the end.
    let mut b = Client::new(tuple(40831), "bob", "bobpw");
    let r = b.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_EVEN_PORT, vec![0x80])],
        &[],
    );
    let own = relayed(&r);
    assert_ne!(own, shared);
    assert_eq!(own.port() % 2, 0);
    assert!(attr(&r, ATTR_RESERVATION_TOKEN).is_some());
    let mut c = Client::new(tuple(40832), "alice", "alicepw");
    let r = c.call(
        &mut h,
        METHOD_ALLOCATE,
        &[udp(), (ATTR_DONT_FRAGMENT, vec![])],
        &[],
    );
    assert_ne!(relayed(&r), shared);
    // Two allocations, one on a shared and one on its own socket, may name the same peer.
    let p: SocketAddr = "192.0.2.84:7000".parse().unwrap();
    assert!(is_success(&a.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[p]
    )));
    assert!(is_success(&b.call(
        &mut h,
        METHOD_CREATE_PERMISSION,
        &[],
        &[p]
    )));
    let r = b.call(&mut h, METHOD_REFRESH, &[(ATTR_LIFETIME, vec![0; 4])], &[]);
    assert!(is_success(&r));
    assert_eq!(h.relays.released, vec![own]);
}
