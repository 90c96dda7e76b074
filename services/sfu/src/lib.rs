//! turnkey SFU: selective forwarding of WebRTC media on webrtc-rs `rtc` (sans-IO), ICE-lite on
//! one UDP port per worker (plus ICE-TCP passive), simulcast, NACK/RTX, PLI/FIR, TWCC/GCC
//! bandwidth estimation, active speaker, data-channel relay. The protocol with clients is in
//! services/sfu/PROTOCOL.md.
//!
//! - [`sfu_proto`] (crates/sfu-proto): the sans-IO core (no tokio, no sockets, no clock).
//! - [`io`]: workers (one event loop per core), ICE-TCP acceptor, signaling link endpoint.
//! - [`run`]: start a node; [`config`]: flags and TOML.

pub mod cli;
pub mod config;
pub mod io;
pub mod metrics;
pub mod run;
