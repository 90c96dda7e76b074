//! turnkey signaling: a session server (HTTP: rooms, joins, TURN credentials) and channel
//! servers (WebSocket: relays offers, answers and candidates within a room) over a shared
//! registry (the `registry` crate), embedded in memory or in Redis. The wire protocol is in
//! `PROTOCOL.md`.
//!
//! - `signaling-proto` (crates/signaling-proto): the sans-IO core (messages, validation, rate
//!   limiting, resume grace periods, the SFU link contract).
//! - [`auth`]: API keys and JWT access tokens.
//! - [`io`]: the tokio/axum layer: `http` (session role), `channel` (channel role), `node`,
//!   `sfu_link` (placement of `sfu` rooms and the links to SFU nodes), `tls`.
//! - [`config`], [`metrics`], [`run`]: flags and TOML, Prometheus metrics, lifecycle.
//!
//! Embedding (the `turnkey` binary does this next to TURN):
//! ```no_run
//! # async fn f() -> Result<(), signaling::RunError> {
//! let cfg = signaling::SignalingConfig::with_defaults(&signaling::config::Defaults::default());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! signaling::serve(cfg, shutdown, |ready| println!("listening on {}", ready.http)).await
//! # }
//! ```

pub mod auth;
pub mod cli;
pub mod config;
pub mod io;
pub mod metrics;
pub mod run;

pub use config::{Role, SignalingArgs, SignalingConfig};
pub use run::{run_until_signal, serve, serve_with_store, Ready, RunError};
