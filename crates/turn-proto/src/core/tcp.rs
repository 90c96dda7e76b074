//! TCP allocations (RFC 6062): Connect (§5.2), peers connecting to the relayed transport
//! address (§5.3, ConnectionAttempt), ConnectionBind (§5.4), and their deadlines.
//!
//! A peer connection lives in [`Shared`](super::Shared) under its CONNECTION-ID, because the
//! client's data connection that binds it may land on any worker. The core that owns the
//! allocation keeps the deadlines (connect, then bind) and answers the Connect; the core that
//! receives the ConnectionBind authenticates it and claims the connection. The sockets are the
//! I/O layer's: the core asks for them with [`Transmit::ConnectPeer`],
//! [`Transmit::BindConnection`] and [`Transmit::ClosePeerConnection`].

use super::shared::{OpenRefused, PeerConn, PeerConnState};
use super::{AddressFamily, StreamTraffic, TimerKey, Transmit, TurnCore};
use crate::auth::AuthOk;
use crate::stats::{RequestMethod, RequestResult, TcpEvent};
use crate::FiveTuple;
use rtc_stun::attributes::*;
use rtc_stun::message::{
    Message, MessageType, TransactionId, CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE,
    METHOD_CONNECT, METHOD_CONNECTION_ATTEMPT,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use stun_proto::msg::{attr, xor_address, MessageBuilder};

/// A Connect waiting for its peer connection: what its late response needs.
#[derive(Debug)]
pub(super) struct PendingConnect {
    tuple: FiveTuple,
    tid: TransactionId,
    auth: AuthOk,
    fingerprint: bool,
}

impl TurnCore {
    /// Connect (RFC 6062 §5.2). None when the server now connects to the peer (the answer
    /// comes with [`handle_peer_connected`](Self::handle_peer_connected) or the connect
    /// deadline); else the error response.
    pub(super) fn connect(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        now: Instant,
        after: &mut Vec<Transmit>,
    ) -> Option<MessageBuilder> {
        let id = match self.owned_allocation(tuple, m, auth) {
            Ok(id) => id,
            Err(b) => return Some(b),
        };
        let a = self.allocs.get(&id)?;
        let Some(traffic) = a.tcp.clone() else {
            return Some(MessageBuilder::error(
                m,
                400,
                "Bad Request: not a TCP allocation",
            ));
        };
        let Some(peer) = xor_address(m, ATTR_XOR_PEER_ADDRESS) else {
            return Some(MessageBuilder::error(
                m,
                400,
                "Bad Request: XOR-PEER-ADDRESS",
            ));
        };
        let Some(relay) = a.relay_for(AddressFamily::of(peer.ip())).map(|r| r.local) else {
            return Some(MessageBuilder::error(
                m,
                443,
                "Peer Address Family Mismatch",
            ));
        };
        let user = a.username.clone();
        // The policy, as for every peer (a live relayed address of this server excepted).
        if !self.shared.is_live_relay(peer) {
            if let Err(reason) = self.cfg.policy.check(peer) {
                self.stats.peer_denied(reason);
                self.stats.tcp_event(TcpEvent::PeerDenied);
                return Some(MessageBuilder::error(m, 403, "Forbidden"));
            }
        }
        let opened = self.shared.open_peer_connection(
            PeerConn {
                allocation: id,
                user,
                peer,
                state: PeerConnState::Connecting,
                traffic,
            },
            self.cfg.tcp.max_connections_per_allocation,
            self.cfg.tcp.max_connections,
        );
        let connection_id = match opened {
            Ok(c) => c,
            Err(OpenRefused::Duplicate) => {
                self.stats.tcp_event(TcpEvent::Duplicate);
                return Some(MessageBuilder::error(m, 446, "Connection Already Exists"));
            }
            Err(OpenRefused::Limit) => {
                // RFC 6062 §5.2: over capacity is 403 too.
                self.stats.tcp_event(TcpEvent::Limit);
                return Some(MessageBuilder::error(
                    m,
                    403,
                    "Forbidden: too many peer connections",
                ));
            }
        };
        self.stats.live_peer_connections(1);
        self.connecting.insert(
            connection_id,
            PendingConnect {
                tuple,
                tid: m.transaction_id,
                auth: auth.clone(),
                fingerprint: m.contains(ATTR_FINGERPRINT),
            },
        );
        self.timers.schedule(
            now + self.cfg.tcp.connect_timeout,
            TimerKey::PeerConnection(connection_id),
        );
        after.push(Transmit::ConnectPeer {
            connection_id,
            relay,
            peer,
        });
        None
    }

    /// The I/O layer's connection to the peer of Connect `connection_id` succeeded (`ok`) or
    /// failed. Answers the Connect: success with CONNECTION-ID (the connection now waits for
    /// its ConnectionBind, at most the bind timeout) or 447. Returns true when the I/O layer
    /// keeps the connection (false: close it; the Connect was already answered 447 at its
    /// deadline, or its allocation ended).
    #[must_use]
    pub fn handle_peer_connected(
        &mut self,
        connection_id: u32,
        ok: bool,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> bool {
        self.last_now = self.last_now.max(now);
        let Some(p) = self.connecting.remove(&connection_id) else {
            return false;
        };
        self.timers.cancel(&TimerKey::PeerConnection(connection_id));
        let kept = ok
            && self.shared.advance_peer_connection(
                connection_id,
                PeerConnState::Connecting,
                PeerConnState::Pending,
            );
        if kept {
            self.stats.tcp_event(TcpEvent::Connected);
            self.timers.schedule(
                now + self.cfg.tcp.bind_timeout,
                TimerKey::PeerConnection(connection_id),
            );
        } else {
            self.connect_failed(connection_id);
        }
        out.push(self.connect_answer(p, kept.then_some(connection_id)));
        kept
    }

    /// The Connect response: success with CONNECTION-ID, or 447.
    fn connect_answer(&mut self, p: PendingConnect, connection_id: Option<u32>) -> Transmit {
        let b = match connection_id {
            Some(id) => {
                let mut b = MessageBuilder::new(
                    MessageType::new(METHOD_CONNECT, CLASS_SUCCESS_RESPONSE),
                    p.tid,
                );
                b.raw(ATTR_CONNECTION_ID, &id.to_be_bytes());
                b
            }
            None => {
                let mut b = MessageBuilder::new(
                    MessageType::new(METHOD_CONNECT, CLASS_ERROR_RESPONSE),
                    p.tid,
                );
                b.error_code(447, "Connection Timeout or Failure");
                b
            }
        };
        let result = if connection_id.is_some() {
            RequestResult::Success
        } else {
            RequestResult::Error447
        };
        self.stats.request(RequestMethod::Connect, result);
        Transmit::ToClient {
            to: p.tuple,
            data: self.finish_with(b, Some(&p.auth), p.fingerprint),
        }
    }

    fn connect_failed(&mut self, connection_id: u32) {
        self.stats.tcp_event(TcpEvent::ConnectFailed);
        if self.shared.remove_peer_connection(connection_id).is_some() {
            self.stats.live_peer_connections(-1);
        }
    }

    /// A peer connected to the relayed transport address `relay` from `peer` (RFC 6062 §5.3).
    /// Accepted when `relay` is a TCP allocation's, the allocation has a permission for the
    /// peer's IP, the policy allows the peer and the caps have room: then the client gets a
    /// ConnectionAttempt indication (in `out`) and the returned CONNECTION-ID names the
    /// connection, which waits for its ConnectionBind at most the bind timeout. None: close
    /// the connection (counted).
    #[must_use]
    pub fn handle_peer_accept(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        now: Instant,
        out: &mut Vec<Transmit>,
    ) -> Option<u32> {
        self.last_now = self.last_now.max(now);
        let id = *self.by_relay.get(&relay)?;
        let a = self.allocs.get(&id)?;
        let traffic = a.tcp.clone()?;
        if !a.has_permission(peer.ip(), now) {
            self.stats.tcp_event(TcpEvent::NoPermission);
            return None;
        }
        let (user, client) = (a.username.clone(), a.tuple);
        if !self.shared.is_live_relay(peer) {
            if let Err(reason) = self.cfg.policy.check(peer) {
                self.stats.peer_denied(reason);
                self.stats.tcp_event(TcpEvent::PeerDenied);
                return None;
            }
        }
        let opened = self.shared.open_peer_connection(
            PeerConn {
                allocation: id,
                user,
                peer,
                state: PeerConnState::Pending,
                traffic,
            },
            self.cfg.tcp.max_connections_per_allocation,
            self.cfg.tcp.max_connections,
        );
        let connection_id = match opened {
            Ok(c) => c,
            Err(OpenRefused::Duplicate) => {
                self.stats.tcp_event(TcpEvent::Duplicate);
                return None;
            }
            Err(OpenRefused::Limit) => {
                self.stats.tcp_event(TcpEvent::Limit);
                return None;
            }
        };
        self.stats.live_peer_connections(1);
        self.stats.tcp_event(TcpEvent::Accepted);
        self.timers.schedule(
            now + self.cfg.tcp.bind_timeout,
            TimerKey::PeerConnection(connection_id),
        );
        let mut b = MessageBuilder::indication(METHOD_CONNECTION_ATTEMPT);
        b.raw(ATTR_CONNECTION_ID, &connection_id.to_be_bytes());
        b.xor_address(ATTR_XOR_PEER_ADDRESS, peer);
        b.fingerprint();
        out.push(Transmit::ToClient {
            to: client,
            data: b.finish(),
        });
        Some(connection_id)
    }

    /// ConnectionBind (RFC 6062 §5.4) on the new stream connection `tuple`: claims the peer
    /// connection named by CONNECTION-ID, which must wait for its bind and belong to the
    /// authenticated user; `after` gets the [`Transmit::BindConnection`].
    pub(super) fn connection_bind(
        &mut self,
        tuple: FiveTuple,
        m: &Message,
        auth: &AuthOk,
        after: &mut Vec<Transmit>,
    ) -> MessageBuilder {
        if !tuple.transport.is_stream() {
            return MessageBuilder::error(m, 400, "Bad Request: ConnectionBind needs TCP or TLS");
        }
        if self.by_tuple.contains_key(&tuple) {
            return MessageBuilder::error(
                m,
                400,
                "Bad Request: this connection holds an allocation",
            );
        }
        let Some(id) = attr(m, ATTR_CONNECTION_ID)
            .and_then(|v| <[u8; 4]>::try_from(v).ok())
            .map(u32::from_be_bytes)
        else {
            return MessageBuilder::error(m, 400, "Bad Request: CONNECTION-ID");
        };
        match self.shared.bind_peer_connection(id, &auth.username) {
            Ok(_) => {
                self.stats.tcp_event(TcpEvent::Bound);
                after.push(Transmit::BindConnection {
                    to: tuple,
                    connection_id: id,
                });
                MessageBuilder::success(m)
            }
            Err(_) => {
                self.stats.tcp_event(TcpEvent::BindRejected);
                MessageBuilder::error(m, 400, "Bad Request: no such connection to bind")
            }
        }
    }

    /// Peer connection `connection_id` ended in the I/O layer (either side closed, or it
    /// could not be joined): it is forgotten. Nothing when it already was.
    pub fn handle_peer_connection_closed(&mut self, connection_id: u32) {
        if self.connecting.remove(&connection_id).is_some() {
            self.timers.cancel(&TimerKey::PeerConnection(connection_id));
        }
        if self.shared.remove_peer_connection(connection_id).is_some() {
            self.stats.live_peer_connections(-1);
            self.stats.tcp_event(TcpEvent::Closed);
        }
    }

    /// The bytes relayed over the data connections of peer connection `connection_id`'s
    /// allocation (the I/O layer counts into it while it copies).
    pub fn peer_connection_traffic(&self, connection_id: u32) -> Option<Arc<StreamTraffic>> {
        self.shared.peer_connection_traffic(connection_id)
    }

    /// A peer connection's deadline: a Connect still connecting gets 447, a connection still
    /// waiting for its ConnectionBind is closed (RFC 6062 §5.2, §5.3).
    pub(super) fn peer_connection_deadline(&mut self, connection_id: u32) {
        if let Some(p) = self.connecting.remove(&connection_id) {
            self.connect_failed(connection_id);
            let answer = self.connect_answer(p, None);
            self.queued.push_back(answer);
            self.queued
                .push_back(Transmit::ClosePeerConnection { connection_id });
        } else if self
            .shared
            .remove_peer_connection_in(connection_id, PeerConnState::Pending)
            .is_some()
        {
            self.stats.live_peer_connections(-1);
            self.stats.tcp_event(TcpEvent::BindTimeout);
            self.queued
                .push_back(Transmit::ClosePeerConnection { connection_id });
        }
    }

    /// Forgets the peer connections of allocation `id` (it is being deleted) and asks the I/O
    /// layer to close them (RFC 6062 §5.5: data connections end with their allocation).
    pub(super) fn close_allocation_connections(&mut self, id: u64) {
        for connection_id in self.shared.remove_allocation_connections(id) {
            self.connecting.remove(&connection_id);
            self.timers.cancel(&TimerKey::PeerConnection(connection_id));
            self.stats.live_peer_connections(-1);
            self.stats.tcp_event(TcpEvent::Closed);
            self.queued
                .push_back(Transmit::ClosePeerConnection { connection_id });
        }
    }
}
