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
