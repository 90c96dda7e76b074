//! One UDP port (and one ICE-TCP port) for every peer connection of a worker: a STUN request
//! names its PC by the first half of its USERNAME (our ufrag, RFC 8445 §7.2.2); every other
//! datagram (DTLS, SRTP, SRTCP, RFC 7983) is routed by 5-tuple. A 5-tuple is bound to a PC only
//! when that PC answers a check from it with a Binding success, i.e. once the check passed
//! MESSAGE-INTEGRITY (RFC 8445 §7.3): a request with a known ufrag but no valid integrity,
//! from a spoofed source say, neither creates state nor moves another participant's 5-tuple.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::SocketAddr;

/// STUN USERNAME attribute type (RFC 8489 §14.3).
const ATTR_USERNAME: u16 = 0x0006;
/// Binding request.
const BINDING_REQUEST: u16 = 0x0001;

/// The local ufrag (before ':') of a STUN Binding request's USERNAME, if `b` is one.
pub fn stun_local_ufrag(b: &[u8]) -> Option<&str> {
    if b.len() < 20 || b[0] & 0xc0 != 0 || b[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    if u16::from_be_bytes([b[0], b[1]]) != BINDING_REQUEST {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let body = b.get(20..20 + len)?;
    let mut i = 0;
    while i + 4 <= body.len() {
        let t = u16::from_be_bytes([body[i], body[i + 1]]);
        let l = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        let v = body.get(i + 4..i + 4 + l)?;
        if t == ATTR_USERNAME {
            let s = std::str::from_utf8(v).ok()?;
            return s.split(':').next();
        }
        i += 4 + l.div_ceil(4) * 4;
    }
    None
}

/// True if `b` is a STUN Binding success response (RFC 8489 §6.3.1.1, class 0b10 of method
/// Binding: type 0x0101), which an ICE agent sends only to a check that passed its
/// MESSAGE-INTEGRITY (RFC 8445 §7.3): proof that the peer knows the ICE credentials.
pub fn is_binding_success(b: &[u8]) -> bool {
    b.len() >= 20 && b[0..2] == [0x01, 0x01] && b[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// Transport of a 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// UDP.
    Udp,
    /// ICE-TCP (RFC 6544), RFC 4571 framed.
    Tcp,
}

/// 5-tuples bound to one PC at most (its candidate pairs' remote ends: host, server-reflexive,
/// relayed, over UDP and TCP); binding one more forgets the one least recently confirmed.
pub const MAX_TUPLES_PER_PC: usize = 8;

/// The routing tables. `K` names a peer connection.
#[derive(Debug)]
pub struct Demux<K> {
    by_ufrag: HashMap<String, K>,
    by_tuple: HashMap<(Proto, SocketAddr), K>,
    /// Each PC's bound 5-tuples, least recently confirmed first (at most
    /// [`MAX_TUPLES_PER_PC`]).
    tuples_of: HashMap<K, VecDeque<(Proto, SocketAddr)>>,
}

impl<K: Copy + Eq + Hash> Default for Demux<K> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_tuple: HashMap::new(),
            tuples_of: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash> Demux<K> {
    /// Routes checks naming `ufrag` to `key`.
    pub fn add_ufrag(&mut self, ufrag: &str, key: K) {
        self.by_ufrag.insert(ufrag.to_string(), key);
    }

    /// Which PC a datagram from `remote` over `proto` belongs to: a Binding request goes to the
    /// PC its ufrag names (without binding anything: see [`Self::bind`]), anything else to the
    /// PC its 5-tuple is bound to.
    pub fn route(&self, proto: Proto, remote: SocketAddr, bytes: &[u8]) -> Option<K> {
        if let Some(u) = stun_local_ufrag(bytes) {
            if let Some(&k) = self.by_ufrag.get(u) {
                return Some(k);
            }
        }
        self.by_tuple.get(&(proto, remote)).copied()
    }

    /// Binds `remote` over `proto` to `key`: call it when `key` sends a Binding success there
    /// (the check passed its integrity). A 5-tuple bound to another PC moves (the peer proved
    /// it holds this PC's credentials); a PC keeps at most [`MAX_TUPLES_PER_PC`].
    pub fn bind(&mut self, proto: Proto, remote: SocketAddr, key: K) {
        let tuple = (proto, remote);
        if let Some(old) = self.by_tuple.insert(tuple, key) {
            if let Some(q) = self.tuples_of.get_mut(&old) {
                q.retain(|t| *t != tuple);
            }
        }
        let q = self.tuples_of.entry(key).or_default();
        q.push_back(tuple);
        while q.len() > MAX_TUPLES_PER_PC {
            if let Some(t) = q.pop_front() {
                self.by_tuple.remove(&t);
            }
        }
    }

    /// The PC bound to this 5-tuple, if any (no rebinding).
    pub fn lookup(&self, proto: Proto, remote: SocketAddr) -> Option<K> {
        self.by_tuple.get(&(proto, remote)).copied()
    }

    /// Forgets every route to `key`.
    pub fn remove(&mut self, key: K) {
        self.by_ufrag.retain(|_, k| *k != key);
        if let Some(q) = self.tuples_of.remove(&key) {
            for t in q {
                self.by_tuple.remove(&t);
            }
        }
    }

    /// Routes held (ufrags, 5-tuples), for bounds checks.
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_tuple.len())
    }

    /// True when no route is held.
    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty() && self.by_tuple.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    /// A STUN Binding request with USERNAME `username` (webrtc-rs's STUN codec).
    fn binding(username: &str) -> Vec<u8> {
        use rtc::stun::attributes::ATTR_USERNAME;
        use rtc::stun::message::{Message, TransactionId, BINDING_REQUEST};
        use rtc::stun::textattrs::Username;
        let mut m = Message::new();
        m.build(&[
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(ATTR_USERNAME, username.to_string())),
        ])
        .unwrap();
        m.raw
    }

    #[test]
    fn routes_by_ufrag_then_by_tuple() {
        let mut d = Demux::default();
        d.add_ufrag("srvA", 1u32);
        d.add_ufrag("srvB", 2u32);
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:5000".parse().unwrap();
        assert_eq!(stun_local_ufrag(&binding("srvA:cli")), Some("srvA"));
        assert_eq!(d.route(Proto::Udp, a, &[0x80, 0, 0, 0]), None);
        assert_eq!(d.route(Proto::Udp, a, &binding("srvA:cli")), Some(1));
        assert_eq!(d.route(Proto::Udp, b, &binding("srvB:x")), Some(2));
        // A check alone binds nothing: only the PC's success answer does.
        assert_eq!(d.route(Proto::Udp, a, &[0x80, 0, 0, 0]), None);
        assert_eq!(d.len(), (2, 0));
        d.bind(Proto::Udp, a, 1);
        d.bind(Proto::Udp, b, 2);
        assert_eq!(d.route(Proto::Udp, a, &[0x80, 0, 0, 0]), Some(1));
        assert_eq!(d.route(Proto::Tcp, a, &[0x80, 0, 0, 0]), None);
        assert_eq!(d.route(Proto::Udp, a, &binding("nobody:x")), Some(1));
        d.remove(1);
        assert_eq!(d.route(Proto::Udp, a, &[0x80]), None);
        assert_eq!(d.len(), (1, 1));
    }

    #[test]
    fn a_check_from_a_bound_tuple_naming_another_pc_does_not_move_it() {
        // A spoofed request from the victim's address, with the attacker's own ufrag: routed to
        // the attacker's PC (which will refuse it without the integrity), the victim's tuple
        // stays where it is.
        let mut d = Demux::default();
        d.add_ufrag("victim", 1u32);
        d.add_ufrag("attacker", 2u32);
        let v: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        d.bind(Proto::Udp, v, 1);
        assert_eq!(d.route(Proto::Udp, v, &binding("attacker:x")), Some(2));
        assert_eq!(d.route(Proto::Udp, v, &[0x80, 0, 0, 0]), Some(1));
        // A check that passed (the PC answered it) moves the tuple.
        d.bind(Proto::Udp, v, 2);
        assert_eq!(d.route(Proto::Udp, v, &[0x80, 0, 0, 0]), Some(2));
        assert_eq!(d.tuples_of.get(&1).map(VecDeque::len), Some(0));
        d.remove(1);
        assert_eq!(d.route(Proto::Udp, v, &[0x80, 0, 0, 0]), Some(2));
    }

    #[test]
    fn a_pc_keeps_at_most_its_most_recently_confirmed_tuples() {
        let mut d = Demux::default();
        d.add_ufrag("pc", 1u32);
        let addr = |i: u16| SocketAddr::from(([198, 51, 100, 1], 1000 + i));
        for i in 0..MAX_TUPLES_PER_PC as u16 {
            d.bind(Proto::Udp, addr(i), 1);
        }
        // The first is confirmed again (consent check), so the second is the oldest.
        d.bind(Proto::Udp, addr(0), 1);
        for i in 100..1100 {
            d.bind(Proto::Udp, addr(i), 1);
        }
        assert_eq!(d.len(), (1, MAX_TUPLES_PER_PC));
        assert_eq!(d.route(Proto::Udp, addr(1099), &[0x80]), Some(1));
        assert_eq!(d.route(Proto::Udp, addr(0), &[0x80]), None);
        assert_eq!(d.route(Proto::Udp, addr(1), &[0x80]), None);
        d.remove(1);
        assert!(d.is_empty());
    }

    #[test]
    fn binding_success_is_recognized() {
        let mut ok = binding("a:b");
        ok[0..2].copy_from_slice(&[0x01, 0x01]);
        assert!(is_binding_success(&ok));
        assert!(!is_binding_success(&binding("a:b")));
        let mut err = ok.clone();
        err[0..2].copy_from_slice(&[0x01, 0x11]);
        assert!(!is_binding_success(&err));
        assert!(!is_binding_success(&ok[..19]));
        assert!(!is_binding_success(&[]));
    }

    #[test]
    fn never_panics() {
        let mut seed = 1u32;
        for len in 0..80 {
            for _ in 0..300 {
                let mut v = vec![
                    0u8,
                    1,
                    (len as u8).saturating_sub(20),
                    0,
                    0x21,
                    0x12,
                    0xa4,
                    0x42,
                ];
                while v.len() < len {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    v.push((seed >> 16) as u8);
                }
                let _ = stun_local_ufrag(&v);
            }
        }
    }
}
