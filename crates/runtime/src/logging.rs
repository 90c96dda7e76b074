//! `tracing` set-up: `RUST_LOG`-style filter, plain or JSON lines on stderr.
//!
//! The filter is `RUST_LOG`, else `default_filter`; unless it asks for `debug` or `trace` (or
//! names rtc_dtls), library noise is moved out of it: rtc-dtls warns "Unsupported Extension
//! Type" for every ClientHello extension it does not know (normal for browsers), which says
//! nothing an operator can act on. It shows with `RUST_LOG=debug`.
//! Colour codes are written only when stderr is a terminal (and `NO_COLOR` is unset), so log
//! files and journald get plain text.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Targets quieted unless the filter asks for debug output.
const QUIET: &[&str] = &[
    "rtc_dtls::handshake::handshake_message_client_hello=error",
    "rtc_dtls::handshake::handshake_message_server_hello=error",
];

/// The filter directives for `base` (`RUST_LOG` or the default).
fn directives(base: &str) -> String {
    let verbose = ["debug", "trace", "rtc_dtls"]
        .iter()
        .any(|w| base.to_ascii_lowercase().contains(w));
    if verbose {
        return base.to_string();
    }
    std::iter::once(base)
        .chain(QUIET.iter().copied())
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether to write colour codes: only to a terminal, and never with `NO_COLOR` set.
fn ansi() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Changes the filter of the subscriber [`init_reloadable`] installed, at run time.
#[derive(Clone)]
pub struct LogLevel {
    set: std::sync::Arc<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogLevel")
    }
}

impl LogLevel {
    /// Sets the filter to `filter` (`RUST_LOG` syntax: `info`, `debug,rtc_dtls=warn`...).
    /// A filter that does not parse is refused and the old one stays.
    pub fn set(&self, filter: &str) -> Result<(), String> {
        let f = EnvFilter::try_new(directives(filter)).map_err(|e| e.to_string())?;
        (self.set)(f)
    }
}

/// Checks that `filter` is a valid filter (`RUST_LOG` syntax).
pub fn valid_filter(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Like [`init`], with the filter taken from `level` when set (else `RUST_LOG`, else
/// `default_filter`), and a handle to change it later (config reload). `None` when a
/// subscriber was already installed.
pub fn init_reloadable(json: bool, level: Option<&str>, default_filter: &str) -> Option<LogLevel> {
    let base = level
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default_filter.to_string());
    let filter = EnvFilter::try_new(directives(&base))
        .unwrap_or_else(|_| EnvFilter::new(directives(default_filter)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi())
        .with_writer(std::io::stderr);
    if json {
        let b = builder.json().with_filter_reloading();
        let handle = b.reload_handle();
        b.try_init().ok()?;
        Some(LogLevel {
            set: std::sync::Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        })
    } else {
        let b = builder.with_filter_reloading();
        let handle = b.reload_handle();
        b.try_init().ok()?;
        Some(LogLevel {
            set: std::sync::Arc::new(move |f| handle.reload(f).map_err(|e| e.to_string())),
        })
    }
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(json: bool, default_filter: &str) {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default_filter.to_string());
    let filter = EnvFilter::try_new(directives(&base))
        .unwrap_or_else(|_| EnvFilter::new(directives(default_filter)));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_noise_is_quiet_unless_debug_is_asked_for() {
        let d = directives("info");
        assert!(d.starts_with("info,"));
        assert!(d.contains("handshake_message_client_hello=error"));
        assert!(EnvFilter::try_new(&d).is_ok());
        assert_eq!(directives("debug"), "debug");
        assert_eq!(directives("info,rtc_dtls=warn"), "info,rtc_dtls=warn");
    }
}
