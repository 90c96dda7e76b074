//! turnkey's STUN server: RFC 8489 Binding over UDP and TCP, RFC 5780 NAT behaviour discovery.
//!
//! [`proto`] is the sans-IO core (no tokio, no sockets, no clock); [`server`] is the thin tokio
//! layer around it; [`metrics`] holds the Prometheus metrics and [`config`] the flags and config
//! file of the `stun-server` binary. The TURN server reuses [`proto`] to answer Binding requests
//! and to encode its own messages.

pub mod config;
pub mod metrics;
pub mod proto;
pub mod server;
