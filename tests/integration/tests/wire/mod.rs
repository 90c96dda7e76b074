//! A raw TURN client over UDP for protocol tests against the real binary: builds requests with
//! the workspace's STUN codec, does the 401/438 long-term credential dance, and reads replies.
#![allow(dead_code)]

use rtc_stun::attributes::*;
use rtc_stun::message::{
    Message, MessageType, Method, TransactionId, CLASS_INDICATION, CLASS_REQUEST, METHOD_SEND,
};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use stun_proto::msg::{
    self, attr, text_attr, IntegrityAlgorithm, MessageBuilder, PasswordAlgorithm,
};
use turn_proto::auth::long_term_key;

/// A TURN client on its own UDP socket.
pub struct WireClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub username: String,
    pub password: String,
    pub realm: String,
    pub nonce: String,
}

/// The ERROR-CODE number of a response, if it is an error.
pub fn code(m: &Message) -> Option<u16> {
    attr(m, ATTR_ERROR_CODE).map(|v| v[2] as u16 * 100 + v[3] as u16)
}

impl WireClient {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        let bind = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        Self::bound(bind, server, username, password)
    }

    /// A client whose socket is bound to `local` (e.g. `127.0.0.2:0` for another source IP).
    pub fn bound(local: &str, server: SocketAddr, username: &str, password: &str) -> Self {
        let sock = UdpSocket::bind(local).expect("bind client socket");
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        Self {
            sock,
            server,
            username: username.into(),
            password: password.into(),
            realm: String::new(),
            nonce: String::new(),
        }
    }

    pub fn send_raw(&self, data: &[u8]) {
        self.sock.send_to(data, self.server).expect("send");
    }

    /// Receives one datagram (from anyone) within the read timeout.
    pub fn recv_raw(&self) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; 65_536];
        match self.sock.recv_from(&mut buf) {
            Ok((n, from)) => Some((buf[..n].to_vec(), from)),
            Err(_) => None,
        }
    }

    /// Receives the response to transaction `tid`, skipping anything else.
    pub fn recv_response(&self, tid: TransactionId) -> Message {
        for _ in 0..50 {
            let (data, _) = self.recv_raw().expect("no response from server");
            if let Ok(m) = msg::decode(&data) {
                if m.transaction_id == tid {
                    return m;
                }
            }
        }
        panic!("response never came");
    }

    pub fn build(
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
        if !self.nonce.is_empty() {
            b.raw(ATTR_USERNAME, self.username.as_bytes());
            b.raw(ATTR_REALM, self.realm.as_bytes());
            b.raw(ATTR_NONCE, self.nonce.as_bytes());
            let key = long_term_key(
                &self.username,
                &self.realm,
                &self.password,
                PasswordAlgorithm::Md5,
            );
            b.integrity(&key, IntegrityAlgorithm::Sha1);
        }
        b.fingerprint();
        b.finish()
    }

    /// One request/response exchange, no retry.
    pub fn exchange(
        &self,
        method: Method,
        attrs: &[(AttrType, Vec<u8>)],
        peers: &[SocketAddr],
    ) -> Message {
        let tid = TransactionId::new();
        self.send_raw(&self.build(method, tid, attrs, peers));
        self.recv_response(tid)
    }

    /// A request with the 401/438 dance: learns realm and nonce and retries once.
    pub fn call(
        &mut self,
        method: Method,
        attrs: &[(AttrType, Vec<u8>)],
        peers: &[SocketAddr],
    ) -> Message {
        let r = self.exchange(method, attrs, peers);
        let c = code(&r);
        if c == Some(438) || (c == Some(401) && self.nonce.is_empty()) {
            self.realm = text_attr(&r, ATTR_REALM).unwrap_or_default().to_string();
            self.nonce = text_attr(&r, ATTR_NONCE).unwrap_or_default().to_string();
            return self.exchange(method, attrs, peers);
        }
        r
    }

    /// Allocate (UDP relay) with extra attributes; returns the response.
    pub fn allocate_with(&mut self, extra: &[(AttrType, Vec<u8>)]) -> Message {
        let mut attrs = vec![(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0])];
        attrs.extend_from_slice(extra);
        self.call(rtc_stun::message::METHOD_ALLOCATE, &attrs, &[])
    }

    /// Allocate and return the relayed transport address (panics on failure).
    pub fn allocate(&mut self) -> SocketAddr {
        let r = self.allocate_with(&[]);
        assert_eq!(code(&r), None, "allocate failed");
        relayed(&r)
    }

    /// A Send indication to `peer`.
    pub fn send_indication(&self, peer: SocketAddr, data: &[u8]) {
        let mut b = MessageBuilder::new(
            MessageType::new(METHOD_SEND, CLASS_INDICATION),
            TransactionId::new(),
        );
        b.xor_address(ATTR_XOR_PEER_ADDRESS, peer)
            .raw(ATTR_DATA, data);
        self.send_raw(&b.finish());
    }
}

/// The (first) XOR-RELAYED-ADDRESS of an Allocate response.
pub fn relayed(m: &Message) -> SocketAddr {
    msg::xor_address(m, ATTR_XOR_RELAYED_ADDRESS).expect("XOR-RELAYED-ADDRESS")
}

/// The payload of a Data indication.
pub fn data_indication(raw: &[u8]) -> Option<(SocketAddr, Vec<u8>)> {
    let m = msg::decode(raw).ok()?;
    let peer = msg::xor_address(&m, ATTR_XOR_PEER_ADDRESS)?;
    Some((peer, attr(&m, ATTR_DATA)?.to_vec()))
}
