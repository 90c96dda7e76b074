//! Command line flags and the TOML config file. Every flag is also a key of the file (same name,
//! `-` becomes `_`); flags override the file; unknown keys are an error that names the key.
//! `deploy/stun-server.toml` documents every key.

use crate::io::{Rfc5780Config, ServerConfig};
use clap::Parser;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
pub use turnkey_runtime::config::{ConfigError, Layered};

/// Default listen address (UDP and TCP), the IANA STUN port.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 3478);
/// Default metrics listener.
pub const DEFAULT_METRICS: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9642);
/// Default `drain_timeout_secs`: long enough for a load balancer's health checks to see
/// `/readyz` fail (a few checks a few seconds apart) before the server stops answering.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;

/// turnkey STUN server: RFC 8489 Binding over UDP and TCP, RFC 5780 NAT behaviour discovery
/// with --alt-ip.
#[derive(Debug, Default, Parser)]
#[command(name = "stun-server", version)]
pub struct Cli {
    /// TOML config file; flags given on the command line override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, UDP and TCP; repeatable. [default: 0.0.0.0:3478]
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Alternate IP address: enables RFC 5780 (four UDP sockets, primary/alternate IP x
    /// primary/alternate port). Needs a --listen address of the same family with a specific IP.
    #[arg(long, value_name = "IP")]
    pub alt_ip: Option<IpAddr>,
    /// Alternate port for RFC 5780. [default: the listen port + 1]
    #[arg(long, value_name = "PORT")]
    pub alt_port: Option<u16>,
    /// Metrics listener (/metrics, /healthz, /readyz, POST /admin/drain). [default:
    /// 127.0.0.1:9642]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// SOFTWARE attribute in responses; empty to leave it out. [default: turnkey/<version>]
    #[arg(long, value_name = "TEXT")]
    pub software: Option<String>,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
    /// Seconds a drain lasts: from SIGTERM (or `POST /admin/drain` on the metrics listener)
    /// `/readyz` answers 503 while Binding requests are still answered, so load balancers
    /// notice; then the server exits 0. Default 10.
    #[arg(long = "drain-timeout-secs", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Bearer token of `POST /admin/drain` on the metrics listener, at least 16 characters;
    /// without one the call answers 404 (drain by SIGTERM only). Never logged.
    #[arg(
        long = "admin-token",
        value_name = "TOKEN",
        env = "TURNKEY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

/// The config file: the same settings as the flags, all optional.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Cli::listen`].
    pub listen: Option<Vec<SocketAddr>>,
    /// See [`Cli::alt_ip`].
    pub alt_ip: Option<IpAddr>,
    /// See [`Cli::alt_port`].
    pub alt_port: Option<u16>,
    /// See [`Cli::metrics`].
    pub metrics: Option<SocketAddr>,
    /// See [`Cli::software`].
    pub software: Option<String>,
    /// See [`Cli::log_json`].
    pub log_json: Option<bool>,
    /// See [`Cli::drain_timeout_secs`].
    pub drain_timeout_secs: Option<u64>,
    /// See [`Cli::admin_token`] (better from `TURNKEY_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
}

/// The effective configuration: flags over file over defaults, validated. Its `Debug` shows
/// no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP and TCP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// RFC 5780 alternate IP address.
    pub alt_ip: Option<IpAddr>,
    /// RFC 5780 alternate port; `None` = listen port + 1.
    pub alt_port: Option<u16>,
    /// Metrics listener.
    pub metrics: SocketAddr,
    /// SOFTWARE attribute value; `None` leaves it out.
    pub software: Option<String>,
    /// JSON logs.
    pub log_json: bool,
    /// How long a drain lasts, seconds.
    pub drain_timeout_secs: u64,
    /// Bearer token of `POST /admin/drain` (None: drain by signal only).
    pub admin_token: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("alt_ip", &self.alt_ip)
            .field("alt_port", &self.alt_port)
            .field("metrics", &self.metrics)
            .field("software", &self.software)
            .field("log_json", &self.log_json)
            .field("drain_timeout_secs", &self.drain_timeout_secs)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Defaults under the config file: [`DEFAULT_LISTEN`], [`DEFAULT_METRICS`] (nothing an
/// embedding program changes today).
#[derive(Clone, Debug, Default)]
pub struct Defaults {}

impl Layered for Cli {
    type File = FileConfig;
    type Defaults = Defaults;
    type Config = Config;

    fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn merge(self, file: FileConfig, _defaults: &Defaults) -> Result<Config, ConfigError> {
        Config::merge(&self, file)
    }
}

impl Config {
    /// Flags over `file` over defaults; then checks the RFC 5780 settings.
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Self, ConfigError> {
        let listen = if !cli.listen.is_empty() {
            cli.listen.clone()
        } else {
            file.listen.unwrap_or_else(|| vec![DEFAULT_LISTEN])
        };
        if listen.is_empty() {
            return Err(ConfigError::Invalid("listen is empty".into()));
        }
        let software = cli
            .software
            .clone()
            .or(file.software)
            .unwrap_or_else(|| turnkey_runtime::SOFTWARE.to_string());
        let config = Config {
            listen,
            alt_ip: cli.alt_ip.or(file.alt_ip),
            alt_port: cli.alt_port.or(file.alt_port),
            metrics: cli.metrics.or(file.metrics).unwrap_or(DEFAULT_METRICS),
            software: (!software.is_empty()).then_some(software),
            log_json: cli.log_json || file.log_json.unwrap_or(false),
            drain_timeout_secs: cli
                .drain_timeout_secs
                .or(file.drain_timeout_secs)
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS),
            admin_token: cli
                .admin_token
                .clone()
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
        };
        turnkey_runtime::config::check_admin_token(config.admin_token.as_deref())?;
        if config.alt_port.is_some() && config.alt_ip.is_none() {
            return Err(ConfigError::Invalid("alt_port needs alt_ip".into()));
        }
        config
            .server_config()
            .rfc5780_primary()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(config)
    }

    /// The listener settings for [`crate::io::StunServer::start`].
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen.clone(),
            rfc5780: self.alt_ip.map(|alt_ip| Rfc5780Config {
                alt_ip,
                alt_port: self.alt_port,
            }),
            software: self.software.clone(),
            ..ServerConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("stun-server").chain(args.iter().copied())).unwrap()
    }

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
        assert_eq!(c.listen, vec![DEFAULT_LISTEN]);
        assert_eq!(c.metrics, DEFAULT_METRICS);
        assert_eq!(c.software.as_deref(), Some(turnkey_runtime::SOFTWARE));
        assert_eq!(c.alt_ip, None);
        assert!(!c.log_json);
        assert_eq!(c.server_config().rfc5780, None);
        assert_eq!(c.drain_timeout_secs, DEFAULT_DRAIN_TIMEOUT_SECS);
        assert_eq!(c.admin_token, None);
    }

    #[test]
    fn drain_keys_from_file_and_flags_and_the_token_is_never_shown() {
        let f = file("drain_timeout_secs = 3\nadmin_token = \"file-token-0123456789\"\n");
        let c = Config::merge(&cli(&[]), f).unwrap();
        assert_eq!(c.drain_timeout_secs, 3);
        assert_eq!(c.admin_token.as_deref(), Some("file-token-0123456789"));
        assert!(!format!("{c:?}").contains("file-token"), "{c:?}");
        let c = Config::merge(
            &cli(&[
                "--drain-timeout-secs",
                "0",
                "--admin-token",
                "flag-token-0123456789",
            ]),
            file("drain_timeout_secs = 3\n"),
        )
        .unwrap();
        assert_eq!(c.drain_timeout_secs, 0);
        assert_eq!(c.admin_token.as_deref(), Some("flag-token-0123456789"));
        let err = Config::merge(&cli(&["--admin-token", "short"]), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin_token") && !err.contains("short"),
            "{err}"
        );
        let c = Config::merge(&cli(&["--admin-token", ""]), FileConfig::default()).unwrap();
        assert_eq!(c.admin_token, None, "empty: none");
    }

    #[test]
    fn flags_override_file() {
        let f = file(
            r#"
            listen = ["127.0.0.1:4000", "[::1]:4000"]
            alt_ip = "127.0.0.2"
            metrics = "127.0.0.1:9000"
            software = "from-file"
            log_json = true
            "#,
        );
        let c = Config::merge(&cli(&[]), f).unwrap();
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.alt_ip, Some("127.0.0.2".parse().unwrap()));
        assert!(c.log_json);

        let f = file(
            r#"listen = ["127.0.0.1:4000"]
                        software = "from-file""#,
        );
        let c = Config::merge(
            &cli(&[
                "--listen",
                "127.0.0.1:5000",
                "--listen",
                "127.0.0.1:5002",
                "--alt-ip",
                "127.0.0.2",
                "--alt-port",
                "5001",
                "--metrics",
                "127.0.0.1:9100",
                "--software",
                "",
                "--log-json",
            ]),
            f,
        )
        .unwrap();
        assert_eq!(
            c.listen,
            vec![
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:5002".parse().unwrap()
            ]
        );
        assert_eq!(c.alt_port, Some(5001));
        assert_eq!(c.metrics, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.software, None, "empty --software leaves SOFTWARE out");
        assert!(c.log_json);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = toml::from_str::<FileConfig>("alt_ipp = \"127.0.0.2\"\n").unwrap_err();
        assert!(err.to_string().contains("alt_ipp"), "{err}");
    }

    #[test]
    fn rfc5780_needs_a_specific_primary() {
        let err = Config::merge(&cli(&["--alt-ip", "127.0.0.2"]), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--alt-ip"), "{err}");
        let err = Config::merge(&cli(&["--alt-port", "3479"]), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("alt_ip"), "{err}");
        let ok = Config::merge(
            &cli(&["--listen", "127.0.0.1:3478", "--alt-ip", "127.0.0.2"]),
            FileConfig::default(),
        )
        .unwrap();
        assert!(ok.server_config().rfc5780.is_some());
    }

    #[test]
    fn sample_config_parses() {
        let sample = include_str!("../../../deploy/stun-server.toml");
        let f: FileConfig = toml::from_str(sample).expect("deploy/stun-server.toml is valid");
        Config::merge(&cli(&[]), f).expect("and consistent");
    }
}
