//! turnkey signaling: a session server (HTTP: rooms, joins, TURN credentials) and channel
//! servers (WebSocket: relays offers, answers and candidates within a room) over a shared
//! [`store`], embedded in memory or in Redis. The wire protocol is in `PROTOCOL.md`.
//!
//! - [`proto`]: the sans-IO core (messages, validation, rate limiting, resume grace periods).
//! - [`auth`]: API keys and JWT access tokens.
//! - [`http`] (session role), [`channel`] (channel role), [`node`]: the tokio/axum layer.
//! - [`sfu_link`]: placement of `sfu` rooms on SFU nodes and the per-participant links to them
//!   (`services/sfu/PROTOCOL.md`).
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
pub mod channel;
pub mod config;
pub mod http;
pub mod metrics;
pub mod node;
pub mod run;
pub mod sfu_link;
pub mod tls;

pub use config::{Role, SignalingArgs, SignalingConfig};
pub use run::{run_until_signal, serve, serve_with_store, Ready, RunError};
