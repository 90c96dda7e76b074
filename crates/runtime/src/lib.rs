//! Operational plumbing shared by every turnkey service: the Prometheus `/metrics` and
//! `/healthz` endpoint, readiness and drain, logging set-up, the shutdown signal and TOML config
//! loading.
//!
//! Nothing here knows any protocol; protocol cores live in their own crates.

pub mod config;
pub mod drain;
pub mod heartbeat;
pub mod logging;
pub mod metrics_http;
pub mod shutdown;
pub mod workers;

/// The `SOFTWARE` attribute value and `build_info` version label.
pub const SOFTWARE: &str = concat!("turnkey/", env!("CARGO_PKG_VERSION"));
