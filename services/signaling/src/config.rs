//! signaling configuration: flags, each also a key of a TOML file (`--config`, unknown keys are
//! an error naming the key). Flags override the file. Secrets can come from the environment
//! (`TURNKEY_API_KEYS`, `TURNKEY_TURN_REST_KEYS`, `TURNKEY_AUTH_SECRETS`, `TURNKEY_REDIS_URL`,
//! `TURNKEY_SFU_SECRET`)
//! and never appear in logs ([`SignalingConfig::redacted`]).

use crate::auth::ApiKey;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use turnkey_runtime::config::ConfigError;
pub use turnkey_runtime::config::Layered;

/// Which half of the signaling service this process runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Session server (HTTP API) and channel server (WebSocket) in one process.
    #[default]
    All,
    /// Only the HTTP API (rooms, joins, TURN credentials).
    Session,
    /// Only the WebSocket channel server (`/v1/ws`).
    Channel,
}

impl Role {
    /// Serves the HTTP API.
    pub fn session(self) -> bool {
        matches!(self, Role::All | Role::Session)
    }
    /// Serves WebSockets.
    pub fn channel(self) -> bool {
        matches!(self, Role::All | Role::Channel)
    }
}

/// Where the HTTPS certificate comes from.
#[derive(Clone)]
pub enum Tls {
    /// PEM files, reloaded when they change or on SIGHUP.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// PEM text held in memory (`turnkey --https` without files: a self-signed certificate).
    Pem {
        /// Certificate chain.
        cert: String,
        /// Private key.
        key: String,
    },
}

/// Flags (also used by the `turnkey` local binary, with other defaults).
#[derive(Args, Debug, Clone, Default)]
pub struct SignalingArgs {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP + WebSocket listener. Default 0.0.0.0:8080.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Base URL clients reach this node at (e.g. https://sig.example.com); the WebSocket URL
    /// is derived from it (`wss://.../v1/ws`). Default http://<listen address>.
    #[arg(long = "public-url", value_name = "URL")]
    pub public_url: Option<String>,
    /// PEM certificate chain: serve HTTPS and WSS on --listen (reloaded when the file changes
    /// or on SIGHUP). Needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key for --cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// API key KEY:SECRET (repeatable). None: a development key is generated and logged.
    #[arg(
        long = "api-key",
        value_name = "KEY:SECRET",
        env = "TURNKEY_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Key accepted by `GET /v1/turn/credentials?key=` (repeatable).
    #[arg(
        long = "turn-rest-key",
        value_name = "KEY",
        env = "TURNKEY_TURN_REST_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub turn_rest_key: Vec<String>,
    /// TURN REST shared secret, same as the TURN server's --auth-secret (repeatable, newest
    /// first: the first signs).
    #[arg(
        long = "turn-secret",
        value_name = "SECRET",
        env = "TURNKEY_AUTH_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub turn_secret: Vec<String>,
    /// STUN/TURN URI handed to clients (repeatable), e.g. turn:turn.example.com:3478?transport=udp.
    #[arg(long = "turn-uri", value_name = "URI")]
    pub turn_uri: Vec<String>,
    /// Seconds TURN credentials stay valid. Default 86400.
    #[arg(long = "turn-ttl", value_name = "SECS")]
    pub turn_ttl: Option<u64>,
    /// Seconds TURN credentials minted for an access token may outlive the token's `exp`:
    /// their lifetime is min(turn_ttl, exp - now + grace). Default 300.
    #[arg(long = "turn-credential-grace-secs", value_name = "SECS")]
    pub turn_credential_grace_secs: Option<u64>,
    /// Browser origins (`https://app.example.com`, or `*` for any) allowed besides this
    /// server's own: for the WebSocket (`Origin` header) and CORS on the HTTP API. Repeatable or
    /// comma-separated. Default: none (same origin only).
    #[arg(long = "allowed-origins", value_name = "ORIGIN", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Redis URL (redis://[:password@]host:port/db). Absent: embedded in-memory store
    /// (single node).
    #[arg(
        long,
        value_name = "URL",
        env = "TURNKEY_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// Shared secret of the SFU nodes: sent as `Authorization: Bearer <secret>` on every
    /// participant link (`services/sfu/PROTOCOL.md`, "The link"). Absent: links carry no credential.
    #[arg(
        long = "sfu-secret",
        value_name = "SECRET",
        env = "TURNKEY_SFU_SECRET",
        hide_env_values = true
    )]
    pub sfu_secret: Option<String>,
    /// This node's id in the registry. Default: random.
    #[arg(long = "node-id", value_name = "ID")]
    pub node_id: Option<String>,
    /// Metrics listener (`/metrics`, `/healthz`). Default 127.0.0.1:9643.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// all (default), session (HTTP API only) or channel (WebSocket only).
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// Seconds a dropped participant may resume before the others are told. Default 20.
    #[arg(long = "resume-grace", value_name = "SECS")]
    pub resume_grace: Option<u64>,
    /// Seconds a room may stay empty before it is deleted (0: never). Default 300.
    #[arg(long = "room-idle-secs", value_name = "SECS")]
    pub room_idle_secs: Option<u64>,
    /// Largest accepted WebSocket frame in bytes (error 4013 beyond). Default 65536.
    #[arg(long = "max-message-bytes", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Seconds without any frame before a connection is closed with 4002. Default 60.
    #[arg(long = "idle-timeout", value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Messages per second per connection (error 4008 beyond). Default 50.
    #[arg(long = "rate-limit", value_name = "PER_SEC")]
    pub rate_limit: Option<u32>,
    /// Burst size of the rate limit. Default 100.
    #[arg(long = "rate-burst", value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Seconds the access tokens minted by `/join` are valid. Default 3600.
    #[arg(long = "token-ttl", value_name = "SECS")]
    pub token_ttl: Option<u64>,
    /// Capacity of mesh rooms created without one. Default 4.
    #[arg(long = "default-capacity", value_name = "N")]
    pub default_capacity: Option<u32>,
    /// Capacity of SFU rooms created without one. Default: --max-capacity.
    #[arg(long = "default-sfu-capacity", value_name = "N")]
    pub default_sfu_capacity: Option<u32>,
    /// Largest room capacity accepted. Default 16.
    #[arg(long = "max-capacity", value_name = "N")]
    pub max_capacity: Option<u32>,
    /// Longest a drain lasts, seconds: from SIGTERM or `POST /admin/drain`, the node takes no
    /// new rooms and serves its connections until they close or this passes, then exits 0.
    /// Default 300.
    #[arg(long = "drain-timeout-secs", value_name = "SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Bearer token of `POST /admin/drain` on the metrics listener. Default: unset (drain by
    /// SIGTERM only).
    #[arg(
        long = "admin-token",
        value_name = "TOKEN",
        env = "TURNKEY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// WebSocket connections this node is sized for: `signaling_load_ratio` is connections
    /// against it. Default 10000.
    #[arg(long = "capacity-connections", value_name = "N")]
    pub capacity_connections: Option<u32>,
    /// Log JSON lines instead of text.
    #[arg(long = "log-json")]
    pub log_json: bool,
}

/// The TOML file: the same keys as the flags, with `_` for `-`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--listen`.
    pub listen: Option<SocketAddr>,
    /// See `--public-url`.
    pub public_url: Option<String>,
    /// See `--cert`.
    pub cert: Option<PathBuf>,
    /// See `--key`.
    pub key: Option<PathBuf>,
    /// See `--api-key`.
    #[serde(default)]
    pub api_key: Vec<String>,
    /// See `--turn-rest-key`.
    #[serde(default)]
    pub turn_rest_key: Vec<String>,
    /// See `--turn-secret`.
    #[serde(default)]
    pub turn_secret: Vec<String>,
    /// See `--turn-uri`.
    #[serde(default)]
    pub turn_uri: Vec<String>,
    /// See `--turn-ttl`.
    pub turn_ttl: Option<u64>,
    /// See `--turn-credential-grace-secs`.
    pub turn_credential_grace_secs: Option<u64>,
    /// See `--allowed-origins`.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// See `--redis`.
    pub redis: Option<String>,
    /// See `--sfu-secret`.
    pub sfu_secret: Option<String>,
    /// See `--node-id`.
    pub node_id: Option<String>,
    /// See `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// See `--role`.
    pub role: Option<Role>,
    /// See `--resume-grace`.
    pub resume_grace: Option<u64>,
    /// See `--room-idle-secs`.
    pub room_idle_secs: Option<u64>,
    /// See `--max-message-bytes`.
    pub max_message_bytes: Option<usize>,
    /// See `--idle-timeout`.
    pub idle_timeout: Option<u64>,
    /// See `--rate-limit`.
    pub rate_limit: Option<u32>,
    /// See `--rate-burst`.
    pub rate_burst: Option<u32>,
    /// See `--token-ttl`.
    pub token_ttl: Option<u64>,
    /// See `--default-capacity`.
    pub default_capacity: Option<u32>,
    /// See `--default-sfu-capacity`.
    pub default_sfu_capacity: Option<u32>,
    /// See `--max-capacity`.
    pub max_capacity: Option<u32>,
    /// See `--drain-timeout-secs`.
    pub drain_timeout_secs: Option<u64>,
    /// See `--admin-token`.
    pub admin_token: Option<String>,
    /// See `--capacity-connections`.
    pub capacity_connections: Option<u32>,
    /// See `--log-json`.
    pub log_json: Option<bool>,
}

/// Defaults that differ between `signaling` and the local `turnkey` binary.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Default HTTP listener.
    pub listen: SocketAddr,
    /// Default metrics listener.
    pub metrics: SocketAddr,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            listen: "0.0.0.0:8080".parse().expect("valid literal"),
            metrics: "127.0.0.1:9643".parse().expect("valid literal"),
        }
    }
}

/// The effective configuration.
#[derive(Clone)]
pub struct SignalingConfig {
    /// HTTP + WebSocket listener.
    pub listen: SocketAddr,
    /// Base URL clients reach this node at; None: derived from the bound address.
    pub public_url: Option<String>,
    /// HTTPS: where the certificate comes from; None: plain HTTP.
    pub tls: Option<Tls>,
    /// API keys (the first signs `/join` tokens and resume tokens).
    pub api_keys: Vec<ApiKey>,
    /// True if `api_keys` holds a generated development key.
    pub dev_key: bool,
    /// Keys for `/v1/turn/credentials`.
    pub turn_rest_keys: Vec<String>,
    /// TURN REST secrets, newest first.
    pub turn_secrets: Vec<String>,
    /// STUN/TURN URIs.
    pub turn_uris: Vec<String>,
    /// TURN credential lifetime, seconds.
    pub turn_ttl_secs: u64,
    /// Seconds a TURN credential minted for an access token may outlive the token.
    pub turn_credential_grace_secs: u64,
    /// Origins allowed besides the server's own (normalized `scheme://host[:port]`, or `*`).
    pub allowed_origins: Vec<String>,
    /// Redis URL; None: in-memory store.
    pub redis: Option<String>,
    /// Bearer secret for the links to SFU nodes; None: no `Authorization` header.
    pub sfu_secret: Option<String>,
    /// Node id.
    pub node_id: String,
    /// Metrics listener.
    pub metrics: SocketAddr,
    /// Role.
    pub role: Role,
    /// Resume grace period, seconds.
    pub resume_grace_secs: u64,
    /// Seconds an empty room lives (0: forever).
    pub room_idle_secs: u64,
    /// Largest frame, bytes.
    pub max_message_bytes: usize,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: u64,
    /// Seconds to wait for the first `join`.
    pub join_timeout_secs: u64,
    /// Messages per second per connection.
    pub rate_per_sec: u32,
    /// Rate limit burst.
    pub rate_burst: u32,
    /// `/join` token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Capacity of mesh rooms created without one.
    pub default_capacity: u32,
    /// Capacity of SFU rooms created without one.
    pub default_sfu_capacity: u32,
    /// Largest capacity.
    pub max_capacity: u32,
    /// Seconds between node heartbeats.
    pub heartbeat_secs: u64,
    /// Seconds a node entry lives without heartbeat (node-lost detection time).
    pub node_ttl_secs: u64,
    /// Outbound queue per connection, frames (4003 beyond).
    pub outbound_queue: usize,
    /// Longest a drain lasts, seconds.
    pub drain_timeout_secs: u64,
    /// Bearer token of `POST /admin/drain` (None: drain by signal only).
    pub admin_token: Option<String>,
    /// Connections the node is sized for (`signaling_load_ratio` denominator).
    pub capacity_connections: u32,
    /// JSON logs.
    pub log_json: bool,
}

impl std::fmt::Debug for SignalingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

fn random_id(prefix: &str, len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let s: String = (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{s}")
}

/// A random id `prefix` + `len` characters of `[a-z0-9]`.
pub fn new_id(prefix: &str, len: usize) -> String {
    random_id(prefix, len)
}

impl SignalingConfig {
    /// A config with every default and the given API key (for embedding and tests).
    pub fn with_defaults(defaults: &Defaults) -> Self {
        SignalingArgs::default()
            .resolve(defaults)
            .expect("defaults are valid")
    }

    /// One line describing the effective config with every secret redacted.
    pub fn redacted(&self) -> String {
        let keys: Vec<&str> = self.api_keys.iter().map(|k| k.key.as_str()).collect();
        format!(
            "listen={} tls={} public_url={:?} api_keys={:?} (secrets <redacted>){} turn_rest_keys={} (<redacted>) turn_secrets={} (<redacted>) turn_uris={:?} turn_ttl={}s turn_credential_grace={}s allowed_origins={:?} store={} sfu_secret={} node_id={} metrics={} role={:?} resume_grace={}s room_idle={}s max_message_bytes={} idle_timeout={}s rate={}/s burst={} token_ttl={}s capacity={}..{} sfu_capacity={}",
            self.listen,
            match &self.tls {
                None => "off".to_string(),
                Some(Tls::Files { cert, .. }) => format!("{}", cert.display()),
                Some(Tls::Pem { .. }) => "self-signed".to_string(),
            },
            self.public_url,
            keys,
            if self.dev_key { " (generated dev key)" } else { "" },
            self.turn_rest_keys.len(),
            self.turn_secrets.len(),
            self.turn_uris,
            self.turn_ttl_secs,
            self.turn_credential_grace_secs,
            self.allowed_origins,
            match &self.redis {
                Some(u) => redact_url(u),
                None => "memory".to_string(),
            },
            if self.sfu_secret.is_some() {
                "<redacted>"
            } else {
                "none"
            },
            self.node_id,
            self.metrics,
            self.role,
            self.resume_grace_secs,
            self.room_idle_secs,
            self.max_message_bytes,
            self.idle_timeout_secs,
            self.rate_per_sec,
            self.rate_burst,
            self.token_ttl_secs,
            self.default_capacity,
            self.max_capacity,
            self.default_sfu_capacity,
        )
    }
}

/// `redis://user:password@host` -> `redis://user:<redacted>@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_string(),
    }
}

impl Layered for SignalingArgs {
    type File = FileConfig;
    type Defaults = Defaults;
    type Config = SignalingConfig;

    fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn merge(self, file: FileConfig, defaults: &Defaults) -> Result<SignalingConfig, ConfigError> {
        fn pick<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
            if flag.is_empty() {
                file
            } else {
                flag
            }
        }
        let mut api_keys = Vec::new();
        for k in pick(self.api_key, file.api_key) {
            api_keys.push(ApiKey::parse(&k).ok_or_else(|| {
                ConfigError::Invalid(
                    "api_key must be KEY:SECRET, both non-empty (the secret is not shown)".into(),
                )
            })?);
        }
        let dev_key = api_keys.is_empty();
        if dev_key {
            api_keys.push(ApiKey {
                key: random_id("dev_", 8),
                secret: random_id("", 32),
            });
        }
        let nonempty = |v: Vec<String>| v.into_iter().filter(|s| !s.is_empty()).collect();
        let public_url = self
            .public_url
            .or(file.public_url)
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "public_url must start with http:// or https://: {u:?}"
                )));
            }
        }
        let sfu_secret = self.sfu_secret.or(file.sfu_secret);
        if sfu_secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "sfu_secret (--sfu-secret / TURNKEY_SFU_SECRET) is set but empty: links to SFU nodes would carry no credential; give the SFU nodes' secret or leave it unset".into(),
            ));
        }
        let mut allowed_origins = Vec::new();
        for o in pick(self.allowed_origins, file.allowed_origins) {
            allowed_origins.push(signaling_proto::origin::normalize_origin(&o).ok_or_else(
                || {
                    ConfigError::Invalid(format!(
                        "allowed_origins: {o:?} is not an origin (scheme://host[:port], or *)"
                    ))
                },
            )?);
        }
        let max_capacity = self.max_capacity.or(file.max_capacity).unwrap_or(16).max(1);
        let default_capacity = self
            .default_capacity
            .or(file.default_capacity)
            .unwrap_or(4)
            .clamp(1, max_capacity);
        let default_sfu_capacity = self
            .default_sfu_capacity
            .or(file.default_sfu_capacity)
            .unwrap_or(max_capacity)
            .clamp(1, max_capacity);
        let node_id = self
            .node_id
            .or(file.node_id)
            .unwrap_or_else(|| random_id("n_", 8));
        if node_id.is_empty() || node_id.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid(format!("bad node_id {node_id:?}")));
        }
        let admin_token = self.admin_token.or(file.admin_token);
        turnkey_runtime::config::check_admin_token(admin_token.as_deref())?;
        let tls = match (self.cert.or(file.cert), self.key.or(file.key)) {
            (Some(cert), Some(key)) => Some(Tls::Files { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "cert and key go together (HTTPS needs both)".into(),
                ))
            }
        };
        Ok(SignalingConfig {
            listen: self.listen.or(file.listen).unwrap_or(defaults.listen),
            public_url,
            tls,
            api_keys,
            dev_key,
            turn_rest_keys: nonempty(pick(self.turn_rest_key, file.turn_rest_key)),
            turn_secrets: nonempty(pick(self.turn_secret, file.turn_secret)),
            turn_uris: nonempty(pick(self.turn_uri, file.turn_uri)),
            turn_ttl_secs: self.turn_ttl.or(file.turn_ttl).unwrap_or(86_400).max(1),
            turn_credential_grace_secs: self
                .turn_credential_grace_secs
                .or(file.turn_credential_grace_secs)
                .unwrap_or(300),
            allowed_origins,
            redis: self.redis.or(file.redis).filter(|s| !s.is_empty()),
            sfu_secret,
            node_id,
            metrics: self.metrics.or(file.metrics).unwrap_or(defaults.metrics),
            role: self.role.or(file.role).unwrap_or_default(),
            resume_grace_secs: self.resume_grace.or(file.resume_grace).unwrap_or(20),
            room_idle_secs: self.room_idle_secs.or(file.room_idle_secs).unwrap_or(300),
            max_message_bytes: self
                .max_message_bytes
                .or(file.max_message_bytes)
                .unwrap_or(65_536)
                .max(256),
            idle_timeout_secs: self.idle_timeout.or(file.idle_timeout).unwrap_or(60).max(1),
            join_timeout_secs: 10,
            rate_per_sec: self.rate_limit.or(file.rate_limit).unwrap_or(50).max(1),
            rate_burst: self.rate_burst.or(file.rate_burst).unwrap_or(100).max(1),
            token_ttl_secs: self.token_ttl.or(file.token_ttl).unwrap_or(3600).max(1),
            default_capacity,
            default_sfu_capacity,
            max_capacity,
            heartbeat_secs: 2,
            node_ttl_secs: 6,
            outbound_queue: 256,
            drain_timeout_secs: self
                .drain_timeout_secs
                .or(file.drain_timeout_secs)
                .unwrap_or(300),
            admin_token,
            capacity_connections: self
                .capacity_connections
                .or(file.capacity_connections)
                .unwrap_or(10_000)
                .max(1),
            log_json: self.log_json || file.log_json.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SignalingArgs,
    }

    fn parse(argv: &[&str]) -> SignalingArgs {
        Cli::parse_from(std::iter::once("signaling").chain(argv.iter().copied())).args
    }

    #[test]
    fn flags_override_file_and_secrets_are_redacted() {
        let dir = std::env::temp_dir().join(format!("turnkey-sig-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\napi_key = [\"k:filesecret\"]\nturn_secret = [\"turnsecret\"]\nredis = \"redis://:redispw@127.0.0.1:6379\"\nsfu_secret = \"sfusecret\"\nrole = \"channel\"\nresume_grace = 5\n",
        )
        .unwrap();
        let cfg = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--resume-grace",
            "7",
            "--node-id",
            "n1",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(
            cfg.listen,
            "127.0.0.1:9000".parse::<std::net::SocketAddr>().unwrap()
        );
        assert_eq!(cfg.resume_grace_secs, 7);
        assert_eq!(cfg.role, Role::Channel);
        assert_eq!(cfg.api_keys[0].key, "k");
        assert!(!cfg.dev_key);
        let shown = cfg.redacted();
        assert_eq!(cfg.sfu_secret.as_deref(), Some("sfusecret"));
        assert!(shown.contains("sfu_secret=<redacted>"), "{shown}");
        for secret in ["filesecret", "turnsecret", "redispw", "sfusecret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("n1"));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("turnkey-sig-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.toml");
        std::fs::write(&path, "resume_grase = 3\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()])
            .resolve(&Defaults::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("resume_grase"), "{err}");
    }

    #[test]
    fn dev_key_when_none_and_bad_values() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert!(cfg.dev_key);
        assert_eq!(cfg.api_keys.len(), 1);
        assert_eq!(cfg.listen, Defaults::default().listen);
        assert!(parse(&["--api-key", "nocolon"])
            .resolve(&Defaults::default())
            .is_err());
        assert!(parse(&["--public-url", "ftp://x"])
            .resolve(&Defaults::default())
            .is_err());
    }

    #[test]
    fn an_empty_sfu_secret_is_refused_and_origins_are_normalized() {
        let err = parse(&["--sfu-secret", ""])
            .resolve(&Defaults::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("sfu_secret") && err.contains("empty"), "{err}");
        let cfg = parse(&[
            "--allowed-origins",
            "HTTPS://App.Example.com:443/,http://127.0.0.1:3000",
            "--allowed-origins",
            "*",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(
            cfg.allowed_origins,
            vec!["https://app.example.com", "http://127.0.0.1:3000", "*"]
        );
        assert_eq!(cfg.turn_credential_grace_secs, 300);
        for bad in ["app.example.com", "ftp://x", "https://x/path", "https://"] {
            assert!(
                parse(&["--allowed-origins", bad])
                    .resolve(&Defaults::default())
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn shipped_sample_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/signaling.toml");
        let _: FileConfig = turnkey_runtime::config::load_toml(&path).unwrap();
    }
}
