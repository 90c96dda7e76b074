//! turnkey's STUN server: RFC 8489 Binding over UDP and TCP, RFC 5780 NAT behaviour discovery.
//!
//! The sans-IO core is the `stun-proto` crate (no tokio, no sockets, no clock); [`io`] is
//! the thin tokio layer around it, [`run`] the lifecycle; [`metrics`] holds the Prometheus metrics and [`config`] the
//! flags and config file of the `stun-server` binary.

pub mod cli;
pub mod config;
pub mod io;
pub mod metrics;
pub mod run;
