//! Operational plumbing shared by every turnkey service: the Prometheus `/metrics` and
//! `/healthz` endpoint, logging set-up, the shutdown signal, TOML config loading, a token
//! bucket, and the latency histogram the benchmark programs share.
//!
//! Nothing here knows any protocol; protocol cores live in their own crates.

pub mod config;
pub mod histogram;
pub mod logging;
pub mod metrics_http;
pub mod procfs;
pub mod rate;
pub mod shutdown;

/// The `SOFTWARE` attribute value and `build_info` version label.
pub const SOFTWARE: &str = concat!("turnkey/", env!("CARGO_PKG_VERSION"));
