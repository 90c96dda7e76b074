//! turn-server configuration: coturn-like flags, each also a key of a TOML file (`--config`).
//! Flags override the file; unknown file keys are an error naming the key. Secrets can come from
//! the environment (`TURNKEY_AUTH_SECRETS`, `TURNKEY_USERS`, comma-separated) and never appear in
//! logs ([`TurnConfig::redacted`]).

use clap::Args;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use turn_proto::core::{BandwidthCaps, DEFAULT_BURST_MS};
use turnkey_runtime::config::ConfigError;
pub use turnkey_runtime::config::Layered;

/// Server flags (also used, with other defaults, by the `turnkey` local binary).
#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// TOML config file; flags override its keys.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for clients, UDP and TCP (repeatable). Default 0.0.0.0:3478.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// Relay address (repeatable, IPv4 and/or IPv6). Default: the listen IP if specific, else
    /// the primary interface address.
    #[arg(long = "relay-ip", value_name = "IP")]
    pub relay_ip: Vec<IpAddr>,
    /// Lowest relay port. Default 49152.
    #[arg(long = "min-port")]
    pub min_port: Option<u16>,
    /// Highest relay port. Default 65535.
    #[arg(long = "max-port")]
    pub max_port: Option<u16>,
    /// Advertised relay address for a server behind a 1:1 NAT: `PUBLIC` or `PUBLIC/PRIVATE`
    /// (repeatable; coturn's `external-ip`).
    #[arg(long = "external-ip", value_name = "PUBLIC[/PRIVATE]")]
    pub external_ip: Vec<String>,
    /// Realm (RFC 8489 §14.9). Default "turnkey".
    #[arg(long)]
    pub realm: Option<String>,
    /// Static long-term user NAME:PASSWORD (repeatable).
    #[arg(
        long,
        value_name = "NAME:PASSWORD",
        env = "TURNKEY_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub user: Vec<String>,
    /// TURN REST API shared secret (repeatable; the first signs, all validate).
    #[arg(
        long = "auth-secret",
        value_name = "SECRET",
        env = "TURNKEY_AUTH_SECRETS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_secret: Vec<String>,
    /// Allow peers in this CIDR even if a default rule refuses them (repeatable).
    #[arg(long = "allow-peer", value_name = "CIDR")]
    pub allow_peer: Vec<IpNet>,
    /// Refuse peers in this CIDR (repeatable).
    #[arg(long = "deny-peer", value_name = "CIDR")]
    pub deny_peer: Vec<IpNet>,
    /// Metrics listener (`/metrics`, `/healthz`, `/readyz`, `POST /admin/drain`). Default
    /// 127.0.0.1:9641.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Nonce lifetime in seconds (438 after). Default 600.
    #[arg(long = "nonce-lifetime", value_name = "SECS")]
    pub nonce_lifetime: Option<u64>,
    /// Allocations per user (486 beyond). Default 64.
    #[arg(long = "user-quota")]
    pub user_quota: Option<u32>,
    /// Allocations in total (508 beyond). Default 100000.
    #[arg(long = "total-quota")]
    pub total_quota: Option<u32>,
    /// Allocations per client IP address (486 beyond; unredeemed EVEN-PORT reservations
    /// count). Default 128.
    #[arg(long = "ip-quota")]
    pub ip_quota: Option<u32>,
    /// Responses to unauthenticated requests (401/438 challenges and errors before
    /// authentication) per second per source IP and worker; beyond, the request is dropped and
    /// counted (`turn_dropped_packets_total{reason="unauth_rate_limited"}`). 0 turns it off.
    /// Default 50.
    #[arg(long = "unauth-rate", value_name = "PER_SEC")]
    pub unauth_rate: Option<u32>,
    /// Burst of such responses per source IP. Default 100.
    #[arg(long = "unauth-burst")]
    pub unauth_burst: Option<u32>,
    /// Longest allocation lifetime in seconds. Default 3600.
    #[arg(long = "max-lifetime", value_name = "SECS")]
    pub max_lifetime: Option<u64>,
    /// Worker threads (each with its own SO_REUSEPORT sockets). Default: number of cores.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Longest a drain lasts, seconds. A drain starts on SIGTERM, on `POST /admin/drain` on
    /// the metrics listener or on the admin API's `POST /v1/drain?exit=true` (both need
    /// --admin-token): readiness (`/readyz`) turns false, new allocations get 508 (300 Try
    /// Alternate with --alternate-server), live ones are served until they end or this passes,
    /// then the process exits 0. Default 300 (turnkey: 10).
    #[arg(
        long = "drain-timeout-secs",
        visible_alias = "drain-timeout",
        value_name = "SECS"
    )]
    pub drain_timeout_secs: Option<u64>,
    /// Allocations this node is sized for: the allocation side of `turn_load_ratio`. Default:
    /// --total-quota.
    #[arg(long = "capacity-allocations", value_name = "N")]
    pub capacity_allocations: Option<u64>,
    /// Relayed bit rate this node is sized for (application payload, both directions added):
    /// the bandwidth side of `turn_load_ratio`. Default 1000000000.
    #[arg(long = "capacity-relay-bps", value_name = "BPS")]
    pub capacity_relay_bps: Option<u64>,
    /// SOFTWARE attribute value; empty to omit. Default turnkey/<version>.
    #[arg(long)]
    pub software: Option<String>,
    /// Address to listen on for TURN/STUN over TLS (`turns:`, RFC 8656 §3.1; repeatable;
    /// typically :5349 or :443). Needs --cert and --key.
    #[arg(long = "tls-listen", value_name = "ADDR:PORT")]
    pub tls_listen: Vec<SocketAddr>,
    /// Address to listen on for TURN/STUN over DTLS (UDP; repeatable; typically :5349).
    /// Needs --cert and --key.
    #[arg(long = "dtls-listen", value_name = "ADDR:PORT")]
    pub dtls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS/DTLS (reloaded when the file changes or on SIGHUP).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS/DTLS (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Log JSON lines instead of text (the same as `--log-format json`).
    #[arg(long = "log-json")]
    pub log_json: bool,
    /// Log format: `text` or `json` (one JSON object per event, e.g. the "allocation ended"
    /// accounting record). Default text.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter (`RUST_LOG` syntax: `info`, `debug`, `info,turn_proto=debug`); reloaded with
    /// the config file. Default: `RUST_LOG`, else info.
    #[arg(long = "log-level", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Admin HTTP API listener (allocations, ending them, draining, effective config, worker
    /// load; see services/turn-server/admin-openapi.json). Off unless set; needs
    /// --admin-token.
    #[arg(long = "admin-listen", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token the admin API requires (`Authorization: Bearer TOKEN`).
    #[arg(
        long = "admin-token",
        value_name = "TOKEN",
        env = "TURNKEY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Server a new allocation is sent to with 300 Try Alternate (RFC 8489 §10) while this
    /// server drains or is over --alternate-over-allocations (repeatable).
    #[arg(long = "alternate-server", value_name = "ADDR:PORT")]
    pub alternate_server: Vec<SocketAddr>,
    /// Live allocations from which new ones are sent to an alternate server; 0: only while
    /// draining. Default 0.
    #[arg(long = "alternate-over-allocations", value_name = "N")]
    pub alternate_over_allocations: Option<u32>,
    /// RFC 8016 mobility: a UDP client that asks for it (an empty MOBILITY-TICKET in its
    /// Allocate) gets a ticket, and after its address changed moves its allocation to the new
    /// 5-tuple with a Refresh carrying the ticket. Off by default (as in coturn): a ticket lets
    /// an allocation outlive its 5-tuple, which an operator should opt into.
    #[arg(long)]
    pub mobility: bool,
    /// Half-open DTLS handshakes per DTLS socket and worker. Default 2048.
    #[arg(long = "dtls-max-handshakes", value_name = "N")]
    pub dtls_max_handshakes: Option<usize>,
    /// Half-open DTLS handshakes per source IP, per DTLS socket and worker. Default 16.
    #[arg(long = "dtls-max-handshakes-per-ip", value_name = "N")]
    pub dtls_max_handshakes_per_ip: Option<usize>,
    /// Open TCP and TLS client connections in total. Default 100000.
    #[arg(long = "tcp-max-connections", value_name = "N")]
    pub tcp_max_connections: Option<usize>,
    /// Open TCP and TLS client connections per source IP. Default 256.
    #[arg(long = "tcp-max-connections-per-ip", value_name = "N")]
    pub tcp_max_connections_per_ip: Option<usize>,
    /// TLS handshakes in progress in total. Default 4096.
    #[arg(long = "tls-max-handshakes", value_name = "N")]
    pub tls_max_handshakes: Option<usize>,
    /// TLS handshakes in progress per source IP. Default 16.
    #[arg(long = "tls-max-handshakes-per-ip", value_name = "N")]
    pub tls_max_handshakes_per_ip: Option<usize>,
    /// Bytes queued for sending per TCP/TLS connection; beyond, frames are dropped. Default
    /// 262144.
    #[arg(long = "tcp-send-queue-bytes", value_name = "BYTES")]
    pub tcp_send_queue_bytes: Option<usize>,
    /// Peer TCP connections of one TCP allocation (RFC 6062: connecting, waiting for
    /// ConnectionBind, or bound); beyond, Connect gets 403 and incoming peers are closed.
    /// Default 64.
    #[arg(long = "peer-tcp-max-connections-per-allocation", value_name = "N")]
    pub peer_tcp_max_connections_per_allocation: Option<usize>,
    /// Peer TCP connections of TCP allocations in the whole server. Default 10000.
    #[arg(long = "peer-tcp-max-connections", value_name = "N")]
    pub peer_tcp_max_connections: Option<usize>,
    /// Load balancers whose connections start with a PROXY protocol v2 header (repeatable).
    /// When set, every TCP and TLS connection must come from one of these CIDRs and start
    /// with a valid header, whose source address is then the client's address; UDP and DTLS
    /// are unaffected. Default: none (no header is read).
    #[arg(long = "proxy-protocol-from", value_name = "CIDR")]
    pub proxy_protocol_from: Vec<IpNet>,
    /// Bandwidth cap per allocation, bits per second of relayed payload, each direction on its
    /// own; over it, datagrams are dropped
    /// (`turn_dropped_packets_total{reason="bandwidth_allocation"}`). 0: no cap. Default 0.
    #[arg(long = "bandwidth-allocation-bps", value_name = "BPS")]
    pub bandwidth_allocation_bps: Option<u64>,
    /// Bandwidth cap per user (all the user's allocations together), bits per second, each
    /// direction on its own. 0: no cap. Default 0.
    #[arg(long = "bandwidth-user-bps", value_name = "BPS")]
    pub bandwidth_user_bps: Option<u64>,
    /// Bandwidth cap of the whole server, bits per second, each direction on its own. 0: no
    /// cap. Default 0.
    #[arg(long = "bandwidth-total-bps", value_name = "BPS")]
    pub bandwidth_total_bps: Option<u64>,
    /// What a bandwidth cap lets through at once, in milliseconds of its rate (1 to 10000; a
    /// datagram larger than that still passes when the bucket is full). Default 200.
    #[arg(long = "bandwidth-burst-ms", value_name = "MS")]
    pub bandwidth_burst_ms: Option<u64>,
    /// Fleet state in Redis (redis://[:password@]host:port/db): REST secrets and users read
    /// from it and watched, this node's allocations published for the fleet's admin API. With
    /// --redis-sentinel, only its password and database are used. Default: off.
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "TURNKEY_REDIS_URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// Redis Sentinel HOST:PORT (repeatable): the fleet Redis is the master Sentinel names,
    /// found again after a failover.
    #[arg(long = "redis-sentinel", value_name = "HOST:PORT")]
    pub redis_sentinel: Vec<String>,
    /// The master's name at the Sentinels. Default mymaster.
    #[arg(long = "redis-master", value_name = "NAME")]
    pub redis_master: Option<String>,
    /// This node's name in the fleet (letters, digits, `.`, `_`, `-`; unique per node).
    /// Default: the host name and the first listen port (`host-3478`).
    #[arg(long = "node-name", value_name = "NAME")]
    pub node_name: Option<String>,
    /// XDP fast path for ChannelData over UDP on these interfaces (repeatable or a comma
    /// list; the interfaces clients and peers arrive on): bound channels with a live
    /// permission are relayed in the kernel without waking the workers. Needs root (or
    /// CAP_BPF + CAP_NET_ADMIN) and a build with clang; start fails when it cannot attach.
    /// Default: off.
    #[arg(long = "xdp", value_name = "IFACE", value_delimiter = ',')]
    pub xdp: Vec<String>,
    /// How the XDP program is attached: native (in the driver), generic (every interface,
    /// slower) or auto (native where the driver supports it). Default auto.
    #[arg(long = "xdp-mode", value_name = "MODE")]
    pub xdp_mode: Option<XdpMode>,
    /// Channel bindings the XDP maps hold; beyond, bindings stay on the normal path
    /// (`turn_xdp_install_failures_total`). Default 65536.
    #[arg(long = "xdp-max-bindings", value_name = "N")]
    pub xdp_max_bindings: Option<u32>,
    /// Multiplexed relay mode (non-standard, like coturn's `--multiplex-peer`): each worker
    /// shares N UDP relay sockets per relay IP between its allocations, on the lowest even
    /// ports of the relay range (worker w's k-th: the first even port + 2·(w·N + k)), and tells
    /// their peers apart by IP and port. A server then holds far more allocations than it may
    /// open file descriptors. Each peer endpoint belongs to one allocation per shared socket
    /// (508 to a second one); allocations asking for EVEN-PORT with R, a RESERVATION-TOKEN,
    /// DONT-FRAGMENT or TCP get a socket of their own as usual. Default 0 (off).
    #[arg(long = "relay-multiplex", value_name = "N")]
    pub relay_multiplex: Option<u16>,
}

/// The TOML file: the same keys as the flags, with `_` for `-`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See `--listen`.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// See `--relay-ip`.
    #[serde(default)]
    pub relay_ip: Vec<IpAddr>,
    /// See `--min-port`.
    pub min_port: Option<u16>,
    /// See `--max-port`.
    pub max_port: Option<u16>,
    /// See `--external-ip`.
    #[serde(default)]
    pub external_ip: Vec<String>,
    /// See `--realm`.
    pub realm: Option<String>,
    /// See `--user`.
    #[serde(default)]
    pub user: Vec<String>,
    /// See `--auth-secret`.
    #[serde(default)]
    pub auth_secret: Vec<String>,
    /// See `--allow-peer`.
    #[serde(default)]
    pub allow_peer: Vec<IpNet>,
    /// See `--deny-peer`.
    #[serde(default)]
    pub deny_peer: Vec<IpNet>,
    /// See `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// See `--nonce-lifetime`.
    pub nonce_lifetime: Option<u64>,
    /// See `--user-quota`.
    pub user_quota: Option<u32>,
    /// See `--total-quota`.
    pub total_quota: Option<u32>,
    /// See `--ip-quota`.
    pub ip_quota: Option<u32>,
    /// See `--unauth-rate`.
    pub unauth_rate: Option<u32>,
    /// See `--unauth-burst`.
    pub unauth_burst: Option<u32>,
    /// See `--max-lifetime`.
    pub max_lifetime: Option<u64>,
    /// See `--workers`.
    pub workers: Option<usize>,
    /// See `--drain-timeout-secs` (`drain_timeout`, its old name, is still read).
    #[serde(alias = "drain_timeout")]
    pub drain_timeout_secs: Option<u64>,
    /// See `--capacity-allocations`.
    pub capacity_allocations: Option<u64>,
    /// See `--capacity-relay-bps`.
    pub capacity_relay_bps: Option<u64>,
    /// See `--software`.
    pub software: Option<String>,
    /// See `--tls-listen`.
    #[serde(default)]
    pub tls_listen: Vec<SocketAddr>,
    /// See `--dtls-listen`.
    #[serde(default)]
    pub dtls_listen: Vec<SocketAddr>,
    /// See `--cert`.
    pub cert: Option<PathBuf>,
    /// See `--key`.
    pub key: Option<PathBuf>,
    /// See `--log-json`.
    pub log_json: Option<bool>,
    /// See `--log-format`.
    pub log_format: Option<LogFormat>,
    /// See `--log-level`.
    pub log_level: Option<String>,
    /// See `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// See `--admin-token` (better from `TURNKEY_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// See `--alternate-server`.
    #[serde(default)]
    pub alternate_server: Vec<SocketAddr>,
    /// See `--alternate-over-allocations`.
    pub alternate_over_allocations: Option<u32>,
    /// See `--mobility`.
    pub mobility: Option<bool>,
    /// See `--dtls-max-handshakes`.
    pub dtls_max_handshakes: Option<usize>,
    /// See `--dtls-max-handshakes-per-ip`.
    pub dtls_max_handshakes_per_ip: Option<usize>,
    /// See `--tcp-max-connections`.
    pub tcp_max_connections: Option<usize>,
    /// See `--tcp-max-connections-per-ip`.
    pub tcp_max_connections_per_ip: Option<usize>,
    /// See `--tls-max-handshakes`.
    pub tls_max_handshakes: Option<usize>,
    /// See `--tls-max-handshakes-per-ip`.
    pub tls_max_handshakes_per_ip: Option<usize>,
    /// See `--tcp-send-queue-bytes`.
    pub tcp_send_queue_bytes: Option<usize>,
    /// See `--peer-tcp-max-connections-per-allocation`.
    pub peer_tcp_max_connections_per_allocation: Option<usize>,
    /// See `--peer-tcp-max-connections`.
    pub peer_tcp_max_connections: Option<usize>,
    /// See `--proxy-protocol-from`.
    #[serde(default)]
    pub proxy_protocol_from: Vec<IpNet>,
    /// See `--bandwidth-allocation-bps`.
    pub bandwidth_allocation_bps: Option<u64>,
    /// See `--bandwidth-user-bps`.
    pub bandwidth_user_bps: Option<u64>,
    /// See `--bandwidth-total-bps`.
    pub bandwidth_total_bps: Option<u64>,
    /// See `--bandwidth-burst-ms`.
    pub bandwidth_burst_ms: Option<u64>,
    /// See `--redis` (better from `TURNKEY_REDIS_URL` when it holds a password).
    pub redis: Option<String>,
    /// See `--redis-sentinel`.
    #[serde(default)]
    pub redis_sentinel: Vec<String>,
    /// See `--redis-master`.
    pub redis_master: Option<String>,
    /// See `--node-name`.
    pub node_name: Option<String>,
    /// See `--xdp`.
    #[serde(default)]
    pub xdp: Vec<String>,
    /// See `--xdp-mode`.
    pub xdp_mode: Option<XdpMode>,
    /// See `--xdp-max-bindings`.
    pub xdp_max_bindings: Option<u32>,
    /// See `--relay-multiplex`.
    pub relay_multiplex: Option<u16>,
}

/// `--xdp-mode`.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// In the driver (fails where the driver has no XDP support).
    Native,
    /// In the kernel's generic receive path (every interface).
    Generic,
    /// Native where supported, else generic.
    #[default]
    Auto,
}

/// The XDP fast path (`--xdp`, `--xdp-mode`, `--xdp-max-bindings`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// Interfaces to attach to.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub mode: XdpMode,
    /// Entries per map.
    pub max_bindings: u32,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Defaults that differ between `turn-server` and the local `turnkey` binary.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Default client listeners.
    pub listen: Vec<SocketAddr>,
    /// Default metrics listener.
    pub metrics: SocketAddr,
    /// Default longest drain, seconds.
    pub drain_timeout_secs: u64,
}

/// `turn-server`'s default `drain_timeout_secs`: time for calls to end on their own.
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 300;

/// Default `capacity_relay_bps`: 1 Gbit/s.
pub const DEFAULT_CAPACITY_RELAY_BPS: u64 = 1_000_000_000;

impl Default for Defaults {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:3478".parse().expect("valid literal")],
            metrics: "127.0.0.1:9641".parse().expect("valid literal"),
            drain_timeout_secs: DEFAULT_DRAIN_TIMEOUT_SECS,
        }
    }
}

/// The effective configuration.
#[derive(Clone)]
pub struct TurnConfig {
    /// Client listeners (UDP and TCP on each).
    pub listen: Vec<SocketAddr>,
    /// Relay IPs.
    pub relay_ips: Vec<IpAddr>,
    /// Relay port range, inclusive.
    pub min_port: u16,
    /// Relay port range, inclusive.
    pub max_port: u16,
    /// Local relay IP -> advertised public IP.
    pub external_ips: HashMap<IpAddr, IpAddr>,
    /// Realm.
    pub realm: String,
    /// Static users.
    pub users: HashMap<String, String>,
    /// REST secrets, newest first.
    pub auth_secrets: Vec<String>,
    /// Peer allow list.
    pub allow_peer: Vec<IpNet>,
    /// Peer deny list.
    pub deny_peer: Vec<IpNet>,
    /// Metrics listener.
    pub metrics: SocketAddr,
    /// Nonce lifetime, seconds.
    pub nonce_lifetime_secs: u64,
    /// Allocations per user.
    pub user_quota: u32,
    /// Allocations in total.
    pub total_quota: u32,
    /// Allocations per client IP.
    pub ip_quota: u32,
    /// Unauthenticated responses per second per source IP (0: unlimited).
    pub unauth_rate_per_sec: u32,
    /// Burst of unauthenticated responses per source IP.
    pub unauth_burst: u32,
    /// Ports of other services of this host that peers may never reach even when
    /// `allow_peer` covers the host (set by `turnkey` for the services it runs next to TURN:
    /// signaling, the SFU's media, ICE-TCP and link ports, their metrics). Not a file key.
    pub protected_ports: Vec<u16>,
    /// Longest allocation lifetime, seconds.
    pub max_lifetime_secs: u64,
    /// Worker threads.
    pub workers: usize,
    /// Longest a drain lasts, seconds (then live allocations are cut and the process exits).
    pub drain_timeout_secs: u64,
    /// Allocations this node is sized for (`turn_load_ratio`), at least 1.
    pub capacity_allocations: u64,
    /// Relayed bits per second this node is sized for, both directions added
    /// (`turn_load_ratio`), at least 1.
    pub capacity_relay_bps: u64,
    /// SOFTWARE value (None: omitted).
    pub software: Option<String>,
    /// TLS listeners.
    pub tls_listen: Vec<SocketAddr>,
    /// DTLS listeners.
    pub dtls_listen: Vec<SocketAddr>,
    /// Certificate chain and key files (both set when any TLS/DTLS listener is).
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// JSON logs.
    pub log_json: bool,
    /// Log filter (None: `RUST_LOG`, else info).
    pub log_level: Option<String>,
    /// Admin API listener (None: off).
    pub admin_listen: Option<SocketAddr>,
    /// Admin API bearer token (set whenever `admin_listen` is).
    pub admin_token: Option<String>,
    /// Alternate servers for 300 Try Alternate.
    pub alternate_servers: Vec<SocketAddr>,
    /// Live allocations from which new ones go to an alternate server (0: only draining).
    pub alternate_over_allocations: u32,
    /// RFC 8016 mobility (MOBILITY-TICKET) for UDP allocations.
    pub mobility: bool,
    /// Caps on unauthenticated and per-connection state.
    pub limits: Limits,
    /// Load balancers that send a PROXY protocol v2 header on TCP/TLS (empty: off).
    pub proxy_protocol_from: Vec<IpNet>,
    /// Bandwidth caps (bits per second of relayed payload, each direction; 0: none) and their
    /// burst; the admin API can change them while running.
    pub bandwidth: BandwidthCaps,
    /// Fleet state in Redis (None: off).
    pub fleet: Option<FleetConfig>,
    /// This node's name in the fleet.
    pub node_name: String,
    /// The XDP fast path (None: off).
    pub xdp: Option<XdpConfig>,
    /// Shared relay sockets per worker and relay IP (`--relay-multiplex`; 0: off).
    pub relay_multiplex: u16,
}

/// Where the fleet state lives (`redis`, `redis_sentinel`, `redis_master`).
#[derive(Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The Redis URL; with Sentinels, only its password and database are used.
    pub redis: Option<String>,
    /// Sentinel addresses (HOST:PORT); empty: `redis` is the server.
    pub sentinels: Vec<String>,
    /// The master's name at the Sentinels.
    pub master: String,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FleetConfig {
    /// The Redis URL, sentinels and master name, with the password redacted.
    pub fn redacted(&self) -> String {
        if self.sentinels.is_empty() {
            format!("redis {}", redact_url(self.redis.as_deref().unwrap_or("")))
        } else {
            format!(
                "redis master {:?} through sentinels {:?}{}",
                self.master,
                self.sentinels,
                self.redis
                    .as_deref()
                    .map(|u| format!(" ({})", redact_url(u)))
                    .unwrap_or_default()
            )
        }
    }
}

/// `redis://user:password@host` -> `redis://user:<redacted>@host`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_string(),
    }
}

/// A node name: 1 to 64 of `[A-Za-z0-9._-]` (it is part of Redis keys).
pub fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The host name (from the kernel) and `port`, made a valid node name.
fn default_node_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    let host = if host.is_empty() { "turn".into() } else { host };
    format!("{host}-{port}")
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Layered for ServerArgs {
    type File = FileConfig;
    type Defaults = Defaults;
    type Config = TurnConfig;

    fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn merge(self, file: FileConfig, defaults: &Defaults) -> Result<TurnConfig, ConfigError> {
        let limits = Limits::resolve(&self, &file)?;
        fn pick<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
            if flag.is_empty() {
                file
            } else {
                flag
            }
        }
        let listen = pick(self.listen, file.listen);
        let listen = if listen.is_empty() {
            defaults.listen.clone()
        } else {
            listen
        };
        let mut relay_ips = pick(self.relay_ip, file.relay_ip);
        if relay_ips.is_empty() {
            relay_ips = default_relay_ips(&listen);
        }
        let min_port = self.min_port.or(file.min_port).unwrap_or(49152);
        let max_port = self.max_port.or(file.max_port).unwrap_or(65535);
        if min_port == 0 || min_port > max_port {
            return Err(ConfigError::Invalid(format!(
                "relay port range {min_port}-{max_port} is empty"
            )));
        }
        let mut external_ips = HashMap::new();
        for e in pick(self.external_ip, file.external_ip) {
            let (public, private) = match e.split_once('/') {
                Some((p, l)) => (p, Some(l)),
                None => (e.as_str(), None),
            };
            let public: IpAddr = public
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("external_ip: bad address {e:?}")))?;
            match private {
                Some(l) => {
                    let l: IpAddr = l.parse().map_err(|_| {
                        ConfigError::Invalid(format!("external_ip: bad address {e:?}"))
                    })?;
                    external_ips.insert(l, public);
                }
                None => {
                    for r in relay_ips.iter().filter(|r| r.is_ipv4() == public.is_ipv4()) {
                        external_ips.insert(*r, public);
                    }
                }
            }
        }
        let mut users = HashMap::new();
        for u in pick(self.user, file.user) {
            let Some((name, pw)) = u.split_once(':') else {
                return Err(ConfigError::Invalid(
                    "user must be NAME:PASSWORD (the password is not shown)".into(),
                ));
            };
            if name.is_empty() {
                return Err(ConfigError::Invalid("user: empty name".into()));
            }
            users.insert(name.to_string(), pw.to_string());
        }
        let auth_secrets: Vec<String> = pick(self.auth_secret, file.auth_secret)
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        let software = match self.software.or(file.software) {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s),
            None => Some(turnkey_runtime::SOFTWARE.to_string()),
        };
        let tls_listen = pick(self.tls_listen, file.tls_listen);
        let dtls_listen = pick(self.dtls_listen, file.dtls_listen);
        let tls_files = match (self.cert.or(file.cert), self.key.or(file.key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "cert and key go together (PEM files)".into(),
                ))
            }
        };
        if (!tls_listen.is_empty() || !dtls_listen.is_empty()) && tls_files.is_none() {
            return Err(ConfigError::Invalid(
                "tls_listen/dtls_listen need cert and key".into(),
            ));
        }
        let admin_listen = self.admin_listen.or(file.admin_listen);
        let admin_token = self
            .admin_token
            .or(file.admin_token)
            .filter(|t| !t.is_empty());
        if admin_listen.is_some() && admin_token.is_none() {
            return Err(ConfigError::Invalid(
                "admin_listen needs admin_token (or TURNKEY_ADMIN_TOKEN): the admin API is never open"
                    .into(),
            ));
        }
        turnkey_runtime::config::check_admin_token(admin_token.as_deref())?;
        let log_level = self
            .log_level
            .or(file.log_level)
            .filter(|l| !l.trim().is_empty());
        if let Some(l) = &log_level {
            turnkey_runtime::logging::valid_filter(l)
                .map_err(|e| ConfigError::Invalid(format!("log_level {l:?}: {e}")))?;
        }
        let log_format = self.log_format.or(file.log_format);
        let log_json =
            self.log_json || file.log_json.unwrap_or(false) || log_format == Some(LogFormat::Json);
        let bandwidth = BandwidthCaps {
            allocation_bps: self
                .bandwidth_allocation_bps
                .or(file.bandwidth_allocation_bps)
                .unwrap_or(0),
            user_bps: self
                .bandwidth_user_bps
                .or(file.bandwidth_user_bps)
                .unwrap_or(0),
            total_bps: self
                .bandwidth_total_bps
                .or(file.bandwidth_total_bps)
                .unwrap_or(0),
            burst_ms: self
                .bandwidth_burst_ms
                .or(file.bandwidth_burst_ms)
                .unwrap_or(DEFAULT_BURST_MS),
        };
        bandwidth
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("bandwidth_{e}")))?;
        let redis = self.redis.or(file.redis).filter(|u| !u.is_empty());
        let sentinels = pick(self.redis_sentinel, file.redis_sentinel);
        let master = self
            .redis_master
            .or(file.redis_master)
            .unwrap_or_else(|| "mymaster".to_string());
        if let Some(u) = &redis {
            if !u.starts_with("redis://") && !u.starts_with("rediss://") {
                return Err(ConfigError::Invalid(
                    "redis must be a redis:// URL (the value is not shown)".into(),
                ));
            }
        }
        for s in &sentinels {
            if s.rsplit_once(':')
                .and_then(|(h, p)| p.parse::<u16>().ok().filter(|_| !h.is_empty()))
                .is_none()
            {
                return Err(ConfigError::Invalid(format!(
                    "redis_sentinel {s:?} is not HOST:PORT"
                )));
            }
        }
        let fleet = (redis.is_some() || !sentinels.is_empty()).then_some(FleetConfig {
            redis,
            sentinels,
            master,
        });
        let node_name = self
            .node_name
            .or(file.node_name)
            .unwrap_or_else(|| default_node_name(listen[0].port()));
        if !valid_node_name(&node_name) {
            return Err(ConfigError::Invalid(format!(
                "node_name {node_name:?}: 1 to 64 letters, digits, '.', '_' or '-'"
            )));
        }
        let workers = self
            .workers
            .or(file.workers)
            .unwrap_or_else(turnkey_runtime::workers::default_workers)
            .max(1);
        let xdp_interfaces = pick(self.xdp, file.xdp);
        let xdp = if xdp_interfaces.is_empty() {
            None
        } else {
            if let Some(bad) = xdp_interfaces
                .iter()
                .find(|i| i.is_empty() || i.len() > 15 || i.contains(['/', ' ']))
            {
                return Err(ConfigError::Invalid(format!(
                    "xdp: {bad:?} is not an interface name"
                )));
            }
            let max_bindings = self
                .xdp_max_bindings
                .or(file.xdp_max_bindings)
                .unwrap_or(65536);
            if max_bindings == 0 {
                return Err(ConfigError::Invalid("xdp_max_bindings must be > 0".into()));
            }
            Some(XdpConfig {
                interfaces: xdp_interfaces,
                mode: self.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
                max_bindings,
            })
        };
        let drain_timeout_secs = self
            .drain_timeout_secs
            .or(file.drain_timeout_secs)
            .unwrap_or(defaults.drain_timeout_secs);
        let total_quota = self.total_quota.or(file.total_quota).unwrap_or(100_000);
        let capacity_allocations = self
            .capacity_allocations
            .or(file.capacity_allocations)
            .unwrap_or(u64::from(total_quota).max(1));
        let capacity_relay_bps = self
            .capacity_relay_bps
            .or(file.capacity_relay_bps)
            .unwrap_or(DEFAULT_CAPACITY_RELAY_BPS);
        if capacity_allocations == 0 || capacity_relay_bps == 0 {
            return Err(ConfigError::Invalid(
                "capacity_allocations and capacity_relay_bps must be at least 1 (they divide \
                 turn_load_ratio)"
                    .into(),
            ));
        }
        let relay_multiplex = self.relay_multiplex.or(file.relay_multiplex).unwrap_or(0);
        if relay_multiplex > 0 {
            let last = multiplexed_port(min_port, workers, relay_multiplex, workers - 1)
                + 2 * (relay_multiplex as u32 - 1);
            if last >= max_port as u32 {
                return Err(ConfigError::Invalid(format!(
                    "relay_multiplex {relay_multiplex} x {workers} workers needs even ports up \
                     to {last} and at least one more, beyond the relay range {min_port}-{max_port}"
                )));
            }
        }
        Ok(TurnConfig {
            listen,
            relay_ips,
            min_port,
            max_port,
            external_ips,
            realm: self
                .realm
                .or(file.realm)
                .unwrap_or_else(|| "turnkey".to_string()),
            users,
            auth_secrets,
            allow_peer: pick(self.allow_peer, file.allow_peer),
            deny_peer: pick(self.deny_peer, file.deny_peer),
            metrics: self.metrics.or(file.metrics).unwrap_or(defaults.metrics),
            nonce_lifetime_secs: self.nonce_lifetime.or(file.nonce_lifetime).unwrap_or(600),
            user_quota: self.user_quota.or(file.user_quota).unwrap_or(64),
            total_quota,
            ip_quota: self.ip_quota.or(file.ip_quota).unwrap_or(128),
            unauth_rate_per_sec: self.unauth_rate.or(file.unauth_rate).unwrap_or(50),
            unauth_burst: self.unauth_burst.or(file.unauth_burst).unwrap_or(100),
            protected_ports: Vec::new(),
            max_lifetime_secs: self
                .max_lifetime
                .or(file.max_lifetime)
                .unwrap_or(3600)
                .max(1),
            workers,
            drain_timeout_secs,
            capacity_allocations,
            capacity_relay_bps,
            software,
            tls_listen,
            dtls_listen,
            tls_files,
            log_json,
            log_level,
            admin_listen,
            admin_token,
            alternate_servers: pick(self.alternate_server, file.alternate_server),
            alternate_over_allocations: self
                .alternate_over_allocations
                .or(file.alternate_over_allocations)
                .unwrap_or(0),
            mobility: self.mobility || file.mobility.unwrap_or(false),
            limits,
            proxy_protocol_from: pick(self.proxy_protocol_from, file.proxy_protocol_from),
            bandwidth,
            fleet,
            node_name,
            xdp,
            relay_multiplex,
        })
    }
}

/// The port of worker `worker`'s first shared relay socket (`--relay-multiplex n`): the even
/// ports from the bottom of the relay range, `n` per worker.
pub fn multiplexed_port(min_port: u16, workers: usize, n: u16, worker: usize) -> u32 {
    debug_assert!(worker < workers.max(1));
    let base = min_port as u32 + (min_port as u32 % 2);
    base + 2 * (worker as u32 * n as u32)
}

/// The listen IPs that are specific, else the primary interface address (found by asking the
/// routing table with an unconnected-then-connected UDP socket; no packet is sent).
fn default_relay_ips(listen: &[SocketAddr]) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    for l in listen {
        if !l.ip().is_unspecified() && !ips.contains(&l.ip()) {
            ips.push(l.ip());
        }
    }
    if ips.is_empty() {
        let primary = UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|_| s))
            .and_then(|s| s.local_addr())
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        ips.push(primary);
    }
    ips
}

impl TurnConfig {
    /// One line describing the effective config with every secret redacted.
    pub fn redacted(&self) -> String {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        format!(
            "listen={:?} relay_ip={:?} ports={}-{} external_ip={:?} realm={:?} users={:?} (passwords <redacted>) auth_secrets={} (<redacted>) allow_peer={:?} deny_peer={:?} metrics={} nonce_lifetime={}s user_quota={} total_quota={} ip_quota={} unauth_rate={}/s unauth_burst={} max_lifetime={}s workers={} drain_timeout_secs={} capacity_allocations={} capacity_relay_bps={} tls_listen={:?} dtls_listen={:?} cert={:?} limits={:?} admin_listen={:?} admin_token={} alternate_server={:?} alternate_over_allocations={} mobility={} proxy_protocol_from={:?} bandwidth_allocation_bps={} bandwidth_user_bps={} bandwidth_total_bps={} bandwidth_burst_ms={} fleet={} node_name={} xdp={:?} relay_multiplex={}",
            self.listen,
            self.relay_ips,
            self.min_port,
            self.max_port,
            self.external_ips,
            self.realm,
            users,
            self.auth_secrets.len(),
            self.allow_peer,
            self.deny_peer,
            self.metrics,
            self.nonce_lifetime_secs,
            self.user_quota,
            self.total_quota,
            self.ip_quota,
            self.unauth_rate_per_sec,
            self.unauth_burst,
            self.max_lifetime_secs,
            self.workers,
            self.drain_timeout_secs,
            self.capacity_allocations,
            self.capacity_relay_bps,
            self.tls_listen,
            self.dtls_listen,
            self.tls_files.as_ref().map(|(c, _)| c),
            self.limits,
            self.admin_listen,
            if self.admin_token.is_some() {
                "<redacted>"
            } else {
                "none"
            },
            self.alternate_servers,
            self.alternate_over_allocations,
            self.mobility,
            self.proxy_protocol_from,
            self.bandwidth.allocation_bps,
            self.bandwidth.user_bps,
            self.bandwidth.total_bps,
            self.bandwidth.burst_ms,
            self.fleet
                .as_ref()
                .map_or_else(|| "off".to_string(), FleetConfig::redacted),
            self.node_name,
            self.xdp,
            self.relay_multiplex,
        )
    }

    /// The keys whose change needs a restart (sockets, listeners, workers, log format) and that
    /// differ between `self` (in force) and `new`.
    pub fn restart_only_changes(&self, new: &TurnConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key: &'static str, same: bool| {
            if !same {
                changed.push(key);
            }
        };
        check("listen", self.listen == new.listen);
        check("relay_ip", self.relay_ips == new.relay_ips);
        check(
            "min_port/max_port",
            (self.min_port, self.max_port) == (new.min_port, new.max_port),
        );
        check("external_ip", self.external_ips == new.external_ips);
        check("metrics", self.metrics == new.metrics);
        check("workers", self.workers == new.workers);
        check("tls_listen", self.tls_listen == new.tls_listen);
        check("dtls_listen", self.dtls_listen == new.dtls_listen);
        check("cert/key", self.tls_files == new.tls_files);
        check("log_json/log_format", self.log_json == new.log_json);
        check("admin_listen", self.admin_listen == new.admin_listen);
        check(
            "proxy_protocol_from",
            self.proxy_protocol_from == new.proxy_protocol_from,
        );
        check("limits", self.limits == new.limits);
        check("redis/redis_sentinel/redis_master", self.fleet == new.fleet);
        check("node_name", self.node_name == new.node_name);
        check("xdp/xdp_mode/xdp_max_bindings", self.xdp == new.xdp);
        check(
            "relay_multiplex",
            self.relay_multiplex == new.relay_multiplex,
        );
        changed
    }

    /// `new` with every restart-only key (see [`restart_only_changes`](Self::restart_only_changes))
    /// taken from `self`: what a reload puts in force.
    pub fn reloadable_part_of(&self, new: TurnConfig) -> TurnConfig {
        TurnConfig {
            listen: self.listen.clone(),
            relay_ips: self.relay_ips.clone(),
            min_port: self.min_port,
            max_port: self.max_port,
            external_ips: self.external_ips.clone(),
            metrics: self.metrics,
            workers: self.workers,
            tls_listen: self.tls_listen.clone(),
            dtls_listen: self.dtls_listen.clone(),
            tls_files: self.tls_files.clone(),
            log_json: self.log_json,
            admin_listen: self.admin_listen,
            proxy_protocol_from: self.proxy_protocol_from.clone(),
            limits: self.limits,
            protected_ports: self.protected_ports.clone(),
            fleet: self.fleet.clone(),
            node_name: self.node_name.clone(),
            xdp: self.xdp.clone(),
            relay_multiplex: self.relay_multiplex,
            ..new
        }
    }

    /// The reloadable keys that differ between `self` and `new` (names only: never values,
    /// which may be secrets).
    pub fn reloadable_changes(&self, new: &TurnConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |key: &'static str, same: bool| {
            if !same {
                changed.push(key);
            }
        };
        check("realm", self.realm == new.realm);
        check("user", self.users == new.users);
        check("auth_secret", self.auth_secrets == new.auth_secrets);
        check("allow_peer", self.allow_peer == new.allow_peer);
        check("deny_peer", self.deny_peer == new.deny_peer);
        check(
            "nonce_lifetime",
            self.nonce_lifetime_secs == new.nonce_lifetime_secs,
        );
        check("user_quota", self.user_quota == new.user_quota);
        check("total_quota", self.total_quota == new.total_quota);
        check("ip_quota", self.ip_quota == new.ip_quota);
        check(
            "unauth_rate",
            self.unauth_rate_per_sec == new.unauth_rate_per_sec,
        );
        check("unauth_burst", self.unauth_burst == new.unauth_burst);
        check(
            "max_lifetime",
            self.max_lifetime_secs == new.max_lifetime_secs,
        );
        check(
            "drain_timeout_secs",
            self.drain_timeout_secs == new.drain_timeout_secs,
        );
        check(
            "capacity_allocations",
            self.capacity_allocations == new.capacity_allocations,
        );
        check(
            "capacity_relay_bps",
            self.capacity_relay_bps == new.capacity_relay_bps,
        );
        check("software", self.software == new.software);
        check("log_level", self.log_level == new.log_level);
        check("admin_token", self.admin_token == new.admin_token);
        check("bandwidth", self.bandwidth == new.bandwidth);
        check("mobility", self.mobility == new.mobility);
        check(
            "alternate_server",
            self.alternate_servers == new.alternate_servers,
        );
        check(
            "alternate_over_allocations",
            self.alternate_over_allocations == new.alternate_over_allocations,
        );
        changed
    }

    /// The effective configuration as JSON (`GET /v1/config` of the admin API), with every
    /// secret redacted: user names are listed, passwords, REST secrets and the admin token
    /// are not.
    pub fn redacted_json(&self) -> serde_json::Value {
        let mut users: Vec<&String> = self.users.keys().collect();
        users.sort();
        let mut external: Vec<(String, String)> = self
            .external_ips
            .iter()
            .map(|(l, p)| (l.to_string(), p.to_string()))
            .collect();
        external.sort();
        let strings = |v: &[SocketAddr]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let mut v = serde_json::json!({
            "listen": strings(&self.listen),
            "relay_ip": self.relay_ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            "min_port": self.min_port,
            "max_port": self.max_port,
            "external_ip": external.into_iter().map(|(l, p)| format!("{p}/{l}")).collect::<Vec<_>>(),
            "realm": self.realm,
            "users": users,
            "auth_secrets": self.auth_secrets.len(),
            "allow_peer": self.allow_peer.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "deny_peer": self.deny_peer.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "metrics": self.metrics.to_string(),
            "nonce_lifetime": self.nonce_lifetime_secs,
            "user_quota": self.user_quota,
            "total_quota": self.total_quota,
            "ip_quota": self.ip_quota,
            "unauth_rate": self.unauth_rate_per_sec,
            "unauth_burst": self.unauth_burst,
            "max_lifetime": self.max_lifetime_secs,
            "workers": self.workers,
            "drain_timeout_secs": self.drain_timeout_secs,
            "software": self.software,
            "tls_listen": strings(&self.tls_listen),
            "dtls_listen": strings(&self.dtls_listen),
            "cert": self.tls_files.as_ref().map(|(c, _)| c.display().to_string()),
            "key": self.tls_files.as_ref().map(|_| "<redacted>"),
            "log_json": self.log_json,
            "log_level": self.log_level,
            "admin_listen": self.admin_listen.map(|a| a.to_string()),
            "admin_token": self.admin_token.as_ref().map(|_| "<redacted>"),
            "alternate_server": strings(&self.alternate_servers),
            "alternate_over_allocations": self.alternate_over_allocations,
            "mobility": self.mobility,
            "proxy_protocol_from": self.proxy_protocol_from.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        });
        // Separately: one json! literal this long exceeds the macro recursion limit.
        let l = &self.limits;
        v["limits"] = serde_json::json!({
            "dtls_max_handshakes": l.dtls_max_handshakes,
            "dtls_max_handshakes_per_ip": l.dtls_max_handshakes_per_ip,
            "tcp_max_connections": l.tcp_max_connections,
            "tcp_max_connections_per_ip": l.tcp_max_connections_per_ip,
            "tls_max_handshakes": l.tls_max_handshakes,
            "tls_max_handshakes_per_ip": l.tls_max_handshakes_per_ip,
            "tcp_send_queue_bytes": l.tcp_send_queue_bytes,
            "peer_tcp_max_connections_per_allocation": l.peer_tcp_max_connections_per_allocation,
            "peer_tcp_max_connections": l.peer_tcp_max_connections,
        });
        // The caps as configured; GET /v1/bandwidth has the live ones.
        for (k, n) in [
            ("bandwidth_allocation_bps", self.bandwidth.allocation_bps),
            ("bandwidth_user_bps", self.bandwidth.user_bps),
            ("bandwidth_total_bps", self.bandwidth.total_bps),
            ("bandwidth_burst_ms", self.bandwidth.burst_ms),
        ] {
            v[k] = n.into();
        }
        v["redis"] = self
            .fleet
            .as_ref()
            .and_then(|f| f.redis.as_deref())
            .map(redact_url)
            .into();
        v["redis_sentinel"] = self
            .fleet
            .as_ref()
            .map(|f| f.sentinels.clone())
            .unwrap_or_default()
            .into();
        v["redis_master"] = self.fleet.as_ref().map(|f| f.master.clone()).into();
        v["node_name"] = self.node_name.clone().into();
        v["xdp"] = self
            .xdp
            .as_ref()
            .map(|x| x.interfaces.clone())
            .unwrap_or_default()
            .into();
        v["xdp_mode"] = self
            .xdp
            .as_ref()
            .map(|x| format!("{:?}", x.mode).to_lowercase())
            .into();
        v["xdp_max_bindings"] = self.xdp.as_ref().map(|x| x.max_bindings).into();
        v["relay_multiplex"] = self.relay_multiplex.into();
        v["capacity_allocations"] = self.capacity_allocations.into();
        v["capacity_relay_bps"] = self.capacity_relay_bps.into();
        v
    }
}

/// Caps on unauthenticated and per-connection state (RFC 6347 §4.2.1 for DTLS): DTLS half-open
/// handshakes, TCP/TLS connections and TLS handshakes, per source IP and in total, and the
/// per-connection send queue. Every value is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Half-open DTLS handshakes per DTLS socket and worker.
    pub dtls_max_handshakes: usize,
    /// Half-open DTLS handshakes per source IP, per DTLS socket and worker.
    pub dtls_max_handshakes_per_ip: usize,
    /// Open TCP and TLS client connections, all workers.
    pub tcp_max_connections: usize,
    /// Open TCP and TLS client connections per source IP, all workers.
    pub tcp_max_connections_per_ip: usize,
    /// TLS handshakes in progress, all workers.
    pub tls_max_handshakes: usize,
    /// TLS handshakes in progress per source IP, all workers.
    pub tls_max_handshakes_per_ip: usize,
    /// Bytes queued for sending per TCP/TLS connection.
    pub tcp_send_queue_bytes: usize,
    /// Peer TCP connections of one TCP allocation (RFC 6062).
    pub peer_tcp_max_connections_per_allocation: usize,
    /// Peer TCP connections of TCP allocations, all workers.
    pub peer_tcp_max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            dtls_max_handshakes: 2048,
            dtls_max_handshakes_per_ip: 16,
            tcp_max_connections: 100_000,
            tcp_max_connections_per_ip: 256,
            tls_max_handshakes: 4096,
            tls_max_handshakes_per_ip: 16,
            tcp_send_queue_bytes: 256 * 1024,
            peer_tcp_max_connections_per_allocation: 64,
            peer_tcp_max_connections: 10_000,
        }
    }
}

impl Limits {
    fn resolve(flags: &ServerArgs, file: &FileConfig) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let pick = |key: &str, flag: Option<usize>, file: Option<usize>, default: usize| match flag
            .or(file)
            .unwrap_or(default)
        {
            0 => Err(ConfigError::Invalid(format!("{key} must be at least 1"))),
            n => Ok(n),
        };
        Ok(Limits {
            dtls_max_handshakes: pick(
                "dtls_max_handshakes",
                flags.dtls_max_handshakes,
                file.dtls_max_handshakes,
                d.dtls_max_handshakes,
            )?,
            dtls_max_handshakes_per_ip: pick(
                "dtls_max_handshakes_per_ip",
                flags.dtls_max_handshakes_per_ip,
                file.dtls_max_handshakes_per_ip,
                d.dtls_max_handshakes_per_ip,
            )?,
            tcp_max_connections: pick(
                "tcp_max_connections",
                flags.tcp_max_connections,
                file.tcp_max_connections,
                d.tcp_max_connections,
            )?,
            tcp_max_connections_per_ip: pick(
                "tcp_max_connections_per_ip",
                flags.tcp_max_connections_per_ip,
                file.tcp_max_connections_per_ip,
                d.tcp_max_connections_per_ip,
            )?,
            tls_max_handshakes: pick(
                "tls_max_handshakes",
                flags.tls_max_handshakes,
                file.tls_max_handshakes,
                d.tls_max_handshakes,
            )?,
            tls_max_handshakes_per_ip: pick(
                "tls_max_handshakes_per_ip",
                flags.tls_max_handshakes_per_ip,
                file.tls_max_handshakes_per_ip,
                d.tls_max_handshakes_per_ip,
            )?,
            tcp_send_queue_bytes: pick(
                "tcp_send_queue_bytes",
                flags.tcp_send_queue_bytes,
                file.tcp_send_queue_bytes,
                d.tcp_send_queue_bytes,
            )?,
            peer_tcp_max_connections_per_allocation: pick(
                "peer_tcp_max_connections_per_allocation",
                flags.peer_tcp_max_connections_per_allocation,
                file.peer_tcp_max_connections_per_allocation,
                d.peer_tcp_max_connections_per_allocation,
            )?,
            peer_tcp_max_connections: pick(
                "peer_tcp_max_connections",
                flags.peer_tcp_max_connections,
                file.peer_tcp_max_connections,
                d.peer_tcp_max_connections,
            )?,
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
        args: ServerArgs,
    }

    fn parse(argv: &[&str]) -> ServerArgs {
        Cli::parse_from(std::iter::once("turn-server").chain(argv.iter().copied())).args
    }

    #[test]
    fn flags_override_file_and_secrets_are_redacted() {
        let dir = std::env::temp_dir().join(format!("turnkey-turn-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "realm = \"file.example\"\nlisten = [\"127.0.0.1:3478\"]\nuser = [\"alice:topsecretpw\"]\nauth_secret = [\"filesecret\"]\nmin_port = 50000\nmax_port = 50100\n",
        )
        .unwrap();
        let cfg = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--realm",
            "flag.example",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(cfg.realm, "flag.example");
        assert_eq!(
            cfg.listen,
            vec!["127.0.0.1:3478".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(cfg.relay_ips, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!((cfg.min_port, cfg.max_port), (50000, 50100));
        assert_eq!(
            cfg.users.get("alice").map(String::as_str),
            Some("topsecretpw")
        );
        let shown = cfg.redacted();
        assert!(
            !shown.contains("topsecretpw") && !shown.contains("filesecret"),
            "{shown}"
        );
        assert!(shown.contains("alice"));
    }

    #[test]
    fn relay_multiplex_needs_its_shared_ports_and_one_more_in_the_range() {
        let ok = parse(&[
            "--workers",
            "2",
            "--relay-multiplex",
            "2",
            "--min-port",
            "50001",
            "--max-port",
            "50010",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(ok.relay_multiplex, 2);
        // Shared ports 50002, 50004 (worker 0), 50006, 50008 (worker 1): all even.
        assert_eq!(multiplexed_port(50001, 2, 2, 0), 50002);
        assert_eq!(multiplexed_port(50001, 2, 2, 1), 50006);
        // 50008 is the last shared port: the range must go beyond it.
        for max in ["50008", "50007"] {
            let err = parse(&[
                "--workers",
                "2",
                "--relay-multiplex",
                "2",
                "--min-port",
                "50001",
                "--max-port",
                max,
            ])
            .resolve(&Defaults::default());
            assert!(err.is_err(), "max {max}");
        }
        assert_eq!(
            parse(&[])
                .resolve(&Defaults::default())
                .unwrap()
                .relay_multiplex,
            0
        );
    }

    #[test]
    fn xdp_keys_from_file_and_flags_are_restart_only() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert_eq!(cfg.xdp, None);
        let dir = std::env::temp_dir().join(format!("turnkey-turn-xdp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "xdp = [\"eth0\"]\nxdp_mode = \"native\"\nxdp_max_bindings = 100\n",
        )
        .unwrap();
        let file = parse(&["--config", path.to_str().unwrap()])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(
            file.xdp,
            Some(XdpConfig {
                interfaces: vec!["eth0".into()],
                mode: XdpMode::Native,
                max_bindings: 100,
            })
        );
        let flags = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--xdp",
            "veth0,veth1",
            "--xdp-mode",
            "generic",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        let x = flags.xdp.clone().unwrap();
        assert_eq!(x.interfaces, vec!["veth0".to_string(), "veth1".to_string()]);
        assert_eq!((x.mode, x.max_bindings), (XdpMode::Generic, 100));
        assert_eq!(
            file.restart_only_changes(&flags),
            vec!["xdp/xdp_mode/xdp_max_bindings"]
        );
        assert_eq!(file.reloadable_part_of(flags).xdp, file.xdp);
        for bad in [
            &["--xdp", "a/b"][..],
            &["--xdp", "eth0", "--xdp-max-bindings", "0"],
        ] {
            assert!(parse(bad).resolve(&Defaults::default()).is_err(), "{bad:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn fleet_keys_are_restart_only_and_the_redis_password_is_redacted() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert!(cfg.fleet.is_none());
        assert!(cfg.node_name.ends_with("-3478"), "{}", cfg.node_name);
        let cfg = parse(&[
            "--redis",
            "redis://:redispassword@10.0.0.5:6379/2",
            "--node-name",
            "turn-1",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        let f = cfg.fleet.clone().unwrap();
        assert_eq!(f.master, "mymaster");
        assert!(f.sentinels.is_empty());
        for shown in [
            cfg.redacted(),
            cfg.redacted_json().to_string(),
            format!("{cfg:?}"),
        ] {
            assert!(!shown.contains("redispassword"), "{shown}");
            assert!(shown.contains("10.0.0.5:6379"), "{shown}");
        }
        let sentinel = parse(&["--redis-sentinel", "10.0.0.6:26379", "--node-name", "x"])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(
            cfg.restart_only_changes(&sentinel),
            vec!["redis/redis_sentinel/redis_master", "node_name"]
        );
        let kept = cfg.reloadable_part_of(sentinel);
        assert_eq!(kept.fleet, cfg.fleet);
        assert_eq!(kept.node_name, "turn-1");
        for bad in [
            &["--node-name", "a:b"][..],
            &["--redis", "http://x"],
            &["--redis-sentinel", "nohost"],
        ] {
            assert!(parse(bad).resolve(&Defaults::default()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn limits_default_come_from_file_and_flags_and_refuse_zero() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert_eq!(cfg.limits, Limits::default());
        let dir = std::env::temp_dir().join(format!("turnkey-turn-cfg3-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "tcp_max_connections_per_ip = 8\ndtls_max_handshakes = 100\ntcp_send_queue_bytes = 4096\n",
        )
        .unwrap();
        let cfg = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--tcp-max-connections-per-ip",
            "4",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(cfg.limits.tcp_max_connections_per_ip, 4);
        assert_eq!(cfg.limits.dtls_max_handshakes, 100);
        assert_eq!(cfg.limits.tcp_send_queue_bytes, 4096);
        assert_eq!(cfg.limits.tls_max_handshakes_per_ip, 16);
        let err = parse(&["--tls-max-handshakes", "0"])
            .resolve(&Defaults::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_max_handshakes"), "{err}");
    }

    #[test]
    fn proxy_protocol_from_comes_from_file_or_flags_and_is_off_by_default() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert!(cfg.proxy_protocol_from.is_empty());
        let dir = std::env::temp_dir().join(format!("turnkey-turn-cfg4-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "proxy_protocol_from = [\"10.0.0.0/8\"]\n").unwrap();
        let cfg = parse(&["--config", path.to_str().unwrap()])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(
            cfg.proxy_protocol_from,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        let cfg = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--proxy-protocol-from",
            "192.0.2.1/32",
            "--proxy-protocol-from",
            "2001:db8::/32",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(cfg.proxy_protocol_from.len(), 2);
        assert!(cfg
            .redacted()
            .contains("proxy_protocol_from=[192.0.2.1/32, 2001:db8::/32]"));
    }

    #[test]
    fn bandwidth_caps_come_from_file_and_flags_and_refuse_a_bad_burst() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert_eq!(cfg.bandwidth, BandwidthCaps::default());
        assert_eq!(cfg.bandwidth.burst_ms, 200);
        let dir = std::env::temp_dir().join(format!("turnkey-turn-cfg5-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(
            &path,
            "bandwidth_allocation_bps = 2000000\nbandwidth_user_bps = 5000000\nbandwidth_burst_ms = 50\n",
        )
        .unwrap();
        let cfg = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--bandwidth-allocation-bps",
            "1000000",
            "--bandwidth-total-bps",
            "100000000",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(
            cfg.bandwidth,
            BandwidthCaps {
                allocation_bps: 1_000_000,
                user_bps: 5_000_000,
                total_bps: 100_000_000,
                burst_ms: 50,
            }
        );
        assert!(cfg.redacted().contains("bandwidth_allocation_bps=1000000"));
        assert_eq!(cfg.redacted_json()["bandwidth_burst_ms"], 50);
        assert_eq!(crate::io::core_config(&cfg).bandwidth, cfg.bandwidth);
        for bad in ["0", "10001"] {
            let err = parse(&["--bandwidth-burst-ms", bad])
                .resolve(&Defaults::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("bandwidth_burst_ms"), "{err}");
        }
    }

    #[test]
    fn drain_and_capacity_keys_defaults_old_name_flags_and_zero() {
        let cfg = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert_eq!(cfg.drain_timeout_secs, 300);
        assert_eq!(cfg.capacity_allocations, u64::from(cfg.total_quota));
        assert_eq!(cfg.capacity_relay_bps, 1_000_000_000);
        let local = Defaults {
            drain_timeout_secs: 10,
            ..Defaults::default()
        };
        assert_eq!(parse(&[]).resolve(&local).unwrap().drain_timeout_secs, 10);
        // capacity_allocations follows total_quota unless set.
        let cfg = parse(&["--total-quota", "500"])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(cfg.capacity_allocations, 500);
        let dir = std::env::temp_dir().join(format!("turnkey-turn-cfg6-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        // The key's old name is still read.
        std::fs::write(
            &path,
            "drain_timeout = 42\ncapacity_allocations = 800\ncapacity_relay_bps = 2000000\n",
        )
        .unwrap();
        let cfg = parse(&["--config", path.to_str().unwrap()])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(
            (
                cfg.drain_timeout_secs,
                cfg.capacity_allocations,
                cfg.capacity_relay_bps
            ),
            (42, 800, 2_000_000)
        );
        assert_eq!(cfg.redacted_json()["drain_timeout_secs"], 42);
        assert_eq!(cfg.redacted_json()["capacity_relay_bps"], 2_000_000);
        std::fs::write(&path, "drain_timeout_secs = 7\n").unwrap();
        let cfg = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--capacity-allocations",
            "3",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!((cfg.drain_timeout_secs, cfg.capacity_allocations), (7, 3));
        // Flags, the old one too, override the file.
        for flag in ["--drain-timeout-secs", "--drain-timeout"] {
            let cfg = parse(&["--config", path.to_str().unwrap(), flag, "9"])
                .resolve(&Defaults::default())
                .unwrap();
            assert_eq!(cfg.drain_timeout_secs, 9, "{flag}");
        }
        // Both names in one file: an error, not a silent pick.
        std::fs::write(&path, "drain_timeout = 1\ndrain_timeout_secs = 2\n").unwrap();
        assert!(parse(&["--config", path.to_str().unwrap()])
            .resolve(&Defaults::default())
            .is_err());
        for (flag, key) in [
            ("--capacity-allocations", "capacity_allocations"),
            ("--capacity-relay-bps", "capacity_relay_bps"),
        ] {
            let err = parse(&[flag, "0"])
                .resolve(&Defaults::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
        }
        let new = parse(&["--capacity-relay-bps", "5"])
            .resolve(&Defaults::default())
            .unwrap();
        let old = parse(&[]).resolve(&Defaults::default()).unwrap();
        assert_eq!(old.reloadable_changes(&new), vec!["capacity_relay_bps"]);
        assert!(old.restart_only_changes(&new).is_empty());
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("turnkey-turn-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.toml");
        std::fs::write(&path, "relam = \"typo\"\n").unwrap();
        let err = parse(&["--config", path.to_str().unwrap()])
            .resolve(&Defaults::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("relam"), "{err}");
    }

    #[test]
    fn external_ip_forms_and_bad_values() {
        let cfg = parse(&["--listen", "127.0.0.1:3478", "--external-ip", "203.0.113.9"])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(
            cfg.external_ips.get(&"127.0.0.1".parse().unwrap()),
            Some(&"203.0.113.9".parse().unwrap())
        );
        let cfg = parse(&["--external-ip", "203.0.113.9/10.0.0.5"])
            .resolve(&Defaults::default())
            .unwrap();
        assert_eq!(
            cfg.external_ips.get(&"10.0.0.5".parse().unwrap()),
            Some(&"203.0.113.9".parse().unwrap())
        );
        assert!(parse(&["--external-ip", "nope"])
            .resolve(&Defaults::default())
            .is_err());
        assert!(parse(&["--user", "nocolon"])
            .resolve(&Defaults::default())
            .is_err());
        assert!(parse(&["--min-port", "6000", "--max-port", "5000"])
            .resolve(&Defaults::default())
            .is_err());
    }

    #[test]
    fn every_listening_port_is_an_own_port_of_the_peer_policy() {
        // Issue 9 §1: TLS, DTLS and metrics listeners and the neighbouring services' ports are
        // refused as peers even when allow_peer covers the host.
        let mut cfg = parse(&[
            "--listen",
            "192.0.2.10:3478",
            "--tls-listen",
            "192.0.2.10:5349",
            "--dtls-listen",
            "192.0.2.10:5350",
            "--metrics",
            "192.0.2.10:9641",
            "--allow-peer",
            "192.0.2.0/24",
            "--cert",
            "/nonexistent/cert.pem",
            "--key",
            "/nonexistent/key.pem",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        cfg.protected_ports = vec![8080];
        let core = crate::io::core_config(&cfg);
        for port in [3478u16, 5349, 5350, 9641, 8080, 50_000] {
            let peer = SocketAddr::from(([192, 0, 2, 10], port));
            assert_eq!(
                core.policy.check(peer),
                Err(turn_proto::policy::DenyReason::OwnAddress),
                "{peer}"
            );
        }
        assert_eq!(
            core.policy.check(SocketAddr::from(([192, 0, 2, 10], 22))),
            Ok(())
        );
    }

    #[test]
    fn a_reload_takes_the_reloadable_keys_and_keeps_the_sockets() {
        let old = parse(&[
            "--listen",
            "127.0.0.1:3478",
            "--user",
            "a:pw",
            "--user-quota",
            "1",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        let new = parse(&[
            "--listen",
            "127.0.0.1:4000",
            "--user",
            "b:pw",
            "--user-quota",
            "2",
            "--log-level",
            "debug",
        ])
        .resolve(&Defaults::default())
        .unwrap();
        assert_eq!(old.restart_only_changes(&new), vec!["listen", "node_name"]);
        let applied = old.reloadable_part_of(new);
        assert_eq!(applied.listen, old.listen);
        assert_eq!(applied.user_quota, 2);
        assert!(applied.users.contains_key("b") && !applied.users.contains_key("a"));
        assert_eq!(
            old.reloadable_changes(&applied),
            vec!["user", "user_quota", "log_level"]
        );
        assert!(old.reloadable_changes(&old.clone()).is_empty());
        assert!(parse(&["--log-level", "info,[bad"])
            .resolve(&Defaults::default())
            .is_err());
    }
}
