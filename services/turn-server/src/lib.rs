//! turnkey's TURN server (RFC 8656, RFC 6156 address families, draft-uberti-behave-turn-rest-00
//! credentials).
//!
//! - `turn-proto` (crates/turn-proto): the sans-IO core. Allocations, permissions, channel bindings, authentication and
//!   the peer address policy as plain state machines; time is passed in, nothing touches a socket.
//! - [`io`]: the thin tokio layer: one worker thread per core, each with its own `SO_REUSEPORT`
//!   listening sockets and the relay sockets of the allocations it owns.
//! - [`config`]: flags and TOML config. [`metrics`]: Prometheus metrics. [`load`]: the load
//!   ratio an autoscaler reads. [`run`]: the server lifecycle both binaries share, drain
//!   included.
//! - [`coturn`]: `turn-server import-coturn`, a coturn `turnserver.conf` translated into the
//!   TOML of [`config`].

pub mod cli;
pub mod config;
pub mod coturn;
pub mod io;
pub mod load;
pub mod metrics;
pub mod run;
