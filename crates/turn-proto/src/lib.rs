//! The sans-IO TURN core: no tokio, no sockets, no clock. Also the PROXY protocol v2 header
//! decoder ([`proxy`]) for stream connections from a load balancer.

pub mod auth;
pub mod core;
pub mod limit;
pub mod policy;
pub mod proxy;
pub mod stats;

pub use stun_proto::msg::Transport;

use std::net::SocketAddr;

/// The 5-tuple that identifies an allocation (RFC 8656 §2): client address, server address and
/// transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// The client's transport address as the server sees it (server-reflexive).
    pub client: SocketAddr,
    /// The server's address the client sends to.
    pub server: SocketAddr,
    /// UDP or TCP (or TLS/DTLS).
    pub transport: Transport,
}
