//! SFU configuration: flags (clap) over a TOML file (`deny_unknown_fields`) over defaults.
//! Every flag is also a TOML key (same name, `-` -> `_`); see deploy/sfu.toml.

use clap::Args;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
pub use turnkey_runtime::config::{ConfigError, Layered};

/// Command-line flags.
#[derive(Args, Debug, Clone, Default)]
pub struct SfuArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Media UDP address of worker 0; worker i uses port + i. ICE-TCP (passive) listens on the
    /// same address and port. [default: 127.0.0.1:9700]
    #[arg(long = "media-listen")]
    pub media_listen: Option<SocketAddr>,
    /// Address advertised in ICE candidates (the server's public IP behind 1:1 NAT).
    /// [default: the media listen IP, or the primary interface's when it is a wildcard]
    #[arg(long = "public-ip")]
    pub public_ip: Option<IpAddr>,
    /// Disable the ICE-TCP fallback listener.
    #[arg(long = "no-ice-tcp")]
    pub no_ice_tcp: bool,
    /// Event loops (one UDP port each). [default: number of cores]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Link listener (signaling connects here, WebSocket `/v1/signal`). [default: 127.0.0.1:8090]
    #[arg(long = "link-listen")]
    pub link_listen: Option<SocketAddr>,
    /// URL signaling uses to reach this node, registered in the store. [default: ws://<link-listen>]
    #[arg(long = "public-url")]
    pub public_url: Option<String>,
    /// Shared secret signaling presents as `Authorization: Bearer ...`.
    #[arg(
        long = "sfu-secret",
        env = "TURNKEY_SFU_SECRET",
        hide_env_values = true
    )]
    pub sfu_secret: Option<String>,
    /// Redis URL of the signaling store, to register this node. Absent: no registration
    /// (only useful in-process, as the `turnkey` binary does).
    #[arg(long)]
    pub redis: Option<String>,
    /// Node id in the registry. [default: sfu-<random>]
    #[arg(long = "node-id")]
    pub node_id: Option<String>,
    /// Metrics listener (/metrics, /healthz). [default: 127.0.0.1:9644]
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Participants per room. [default: 16]
    #[arg(long = "max-participants")]
    pub max_participants: Option<usize>,
    /// Published tracks per room. [default: 64]
    #[arg(long = "max-tracks-per-room")]
    pub max_tracks_per_room: Option<usize>,
    /// Published tracks per participant. [default: 4]
    #[arg(long = "max-tracks-per-participant")]
    pub max_tracks_per_participant: Option<usize>,
    /// Video bitrate a publisher may send, bits per second. [default: 2500000]
    #[arg(long = "max-publish-bitrate")]
    pub max_publish_bitrate: Option<u64>,
    /// Seconds without ICE consent before a participant's media is removed. [default: 25]
    #[arg(long = "ice-timeout")]
    pub ice_timeout: Option<u64>,
    /// Seconds an ICE-TCP connection gets to complete ICE (a STUN Binding request with a known
    /// ufrag that the worker answers with success) before it is closed. [default: 10]
    #[arg(long = "ice-tcp-handshake-timeout-secs")]
    pub ice_tcp_handshake_timeout_secs: Option<u64>,
    /// ICE-TCP connections from one source IP that have not completed ICE yet; more are closed
    /// at accept. [default: 16]
    #[arg(long = "ice-tcp-max-pending-per-ip")]
    pub ice_tcp_max_pending_per_ip: Option<usize>,
    /// ICE-TCP connections in total that have not completed ICE yet. [default: 512]
    #[arg(long = "ice-tcp-max-pending")]
    pub ice_tcp_max_pending: Option<usize>,
    /// Largest data-channel message relayed, bytes; larger ones are dropped. [default: 16384]
    #[arg(long = "data-message-max-bytes")]
    pub data_message_max_bytes: Option<usize>,
    /// Data-channel messages a participant may send per second (token bucket); beyond, they
    /// are dropped. [default: 50]
    #[arg(long = "data-messages-per-sec")]
    pub data_messages_per_sec: Option<u32>,
    /// Burst of the data-channel rate limit, messages. [default: 100]
    #[arg(long = "data-message-burst")]
    pub data_message_burst: Option<u32>,
    /// Protect and send forwarded RTP in the worker, with the subscriber's SRTP key verified
    /// against rtc's own packets, instead of through webrtc-rs rtc's write pipeline
    /// (`sfu_direct_send_total`). `false` leaves every copy to rtc. [default: true]
    #[arg(long = "direct-send", value_name = "BOOL")]
    pub direct_send: Option<bool>,
    /// Open publishers' SRTP media (AES-GCM or AES-CM) in the worker, with the publisher's
    /// SRTP key verified against its own packets, instead of through webrtc-rs rtc's read
    /// pipeline (`sfu_direct_receive_total`). `false` leaves every datagram to rtc.
    /// [default: true]
    #[arg(long = "direct-receive", value_name = "BOOL")]
    pub direct_receive: Option<bool>,
    /// Seed of the RNG the media workers draw SSRCs and ICE credentials from (worker i uses
    /// seed + i), so a recorded run replays exactly. Testing only: with a fixed seed, ICE
    /// passwords are predictable. [default: drawn from the OS RNG at start]
    #[arg(long = "rng-seed")]
    pub rng_seed: Option<u64>,
    /// Longest a drain lasts, seconds: from SIGTERM or `POST /admin/drain`, the node takes no
    /// new rooms and serves its rooms until they empty or this passes, then exits 0.
    /// [default: 300]
    #[arg(long = "drain-timeout-secs")]
    pub drain_timeout_secs: Option<u64>,
    /// Bearer token of `POST /admin/drain` on the metrics listener (unset: drain by SIGTERM
    /// only).
    #[arg(
        long = "admin-token",
        env = "TURNKEY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Forwarded bit rate this node is sized for, bits per second: `sfu_load_ratio` is the
    /// larger of the forwarded rate against it and the busiest worker's busy fraction.
    /// [default: 1000000000]
    #[arg(long = "capacity-bps")]
    pub capacity_bps: Option<u64>,
    /// JSON logs.
    #[arg(long = "log-json")]
    pub log_json: bool,
}

/// The TOML file (every key optional).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    media_listen: Option<SocketAddr>,
    public_ip: Option<IpAddr>,
    no_ice_tcp: Option<bool>,
    workers: Option<usize>,
    link_listen: Option<SocketAddr>,
    public_url: Option<String>,
    sfu_secret: Option<String>,
    redis: Option<String>,
    node_id: Option<String>,
    metrics: Option<SocketAddr>,
    max_participants: Option<usize>,
    max_tracks_per_room: Option<usize>,
    max_tracks_per_participant: Option<usize>,
    max_publish_bitrate: Option<u64>,
    ice_timeout: Option<u64>,
    ice_tcp_handshake_timeout_secs: Option<u64>,
    ice_tcp_max_pending_per_ip: Option<usize>,
    ice_tcp_max_pending: Option<usize>,
    data_message_max_bytes: Option<usize>,
    data_messages_per_sec: Option<u32>,
    data_message_burst: Option<u32>,
    direct_send: Option<bool>,
    direct_receive: Option<bool>,
    rng_seed: Option<u64>,
    drain_timeout_secs: Option<u64>,
    admin_token: Option<String>,
    capacity_bps: Option<u64>,
    log_json: Option<bool>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    /// Worker 0's media address (UDP; ICE-TCP on the same address).
    pub media_listen: SocketAddr,
    /// Advertised IP.
    pub public_ip: IpAddr,
    /// ICE-TCP listener on/off.
    pub ice_tcp: bool,
    /// Event loops.
    pub workers: usize,
    /// Link listener.
    pub link_listen: SocketAddr,
    /// Registered URL (None: derived from the bound link address).
    pub public_url: Option<String>,
    /// Link secret (None: a random one is generated and links can only come in-process).
    pub sfu_secret: String,
    /// Store for registration.
    pub redis: Option<String>,
    /// Registry id.
    pub node_id: String,
    /// Metrics listener.
    pub metrics: SocketAddr,
    /// Limits.
    pub max_participants: usize,
    /// Limits.
    pub max_tracks_per_room: usize,
    /// Limits.
    pub max_tracks_per_participant: usize,
    /// bits per second.
    pub max_publish_bitrate: u64,
    /// seconds.
    pub ice_timeout_secs: u64,
    /// Seconds an ICE-TCP connection gets to complete ICE.
    pub ice_tcp_handshake_timeout_secs: u64,
    /// ICE-TCP connections per source IP that have not completed ICE.
    pub ice_tcp_max_pending_per_ip: usize,
    /// ICE-TCP connections in total that have not completed ICE.
    pub ice_tcp_max_pending: usize,
    /// Largest data-channel message relayed, bytes.
    pub data_message_max_bytes: usize,
    /// Data-channel messages per second per participant.
    pub data_messages_per_sec: u32,
    /// Burst of that rate, messages.
    pub data_message_burst: u32,
    /// Forwarded RTP protected and sent by the worker (`sfu_proto::direct`).
    pub direct_send: bool,
    /// Publishers' media opened by the worker (`sfu_proto::direct::Opening`).
    pub direct_receive: bool,
    /// Seed of the media workers' RNG (worker i uses seed + i); `None`: drawn from the OS RNG.
    pub rng_seed: Option<u64>,
    /// Longest a drain lasts, seconds.
    pub drain_timeout_secs: u64,
    /// Bearer token of `POST /admin/drain` (None: drain by signal only).
    pub admin_token: Option<String>,
    /// Forwarded bit rate the node is sized for (the `sfu_load_ratio` denominator), bits/s.
    pub capacity_bps: u64,
    /// JSON logs.
    pub log_json: bool,
}

/// Defaults under the config file: the literals documented on each flag (nothing an embedding
/// program changes today).
#[derive(Clone, Debug, Default)]
pub struct Defaults {}

impl Layered for SfuArgs {
    type File = FileConfig;
    type Defaults = Defaults;
    type Config = SfuConfig;

    fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    fn merge(self, f: FileConfig, _defaults: &Defaults) -> Result<SfuConfig, ConfigError> {
        let media_listen = self
            .media_listen
            .or(f.media_listen)
            .unwrap_or_else(|| "127.0.0.1:9700".parse().expect("literal"));
        let public_ip = match self.public_ip.or(f.public_ip) {
            Some(ip) => ip,
            None if !media_listen.ip().is_unspecified() => media_listen.ip(),
            None => primary_ip().ok_or_else(|| {
                ConfigError::Invalid("--public-ip is needed when --media-listen is a wildcard and no interface address was found".into())
            })?,
        };
        let workers = self
            .workers
            .or(f.workers)
            .unwrap_or_else(turnkey_runtime::workers::default_workers);
        if workers == 0 || workers > 256 {
            return Err(ConfigError::Invalid("workers must be 1..=256".into()));
        }
        let secret = self.sfu_secret.clone().or(f.sfu_secret);
        if secret.as_deref() == Some("") {
            return Err(ConfigError::Invalid(
                "sfu_secret (--sfu-secret / TURNKEY_SFU_SECRET) is set but empty: any client could open links; give a secret or leave it unset (a random one is then generated)".into(),
            ));
        }
        let secret = secret.unwrap_or_else(|| {
            let b: [u8; 24] = rand::random();
            b.iter().map(|x| format!("{x:02x}")).collect()
        });
        Ok(SfuConfig {
            media_listen,
            public_ip,
            ice_tcp: !(self.no_ice_tcp || f.no_ice_tcp.unwrap_or(false)),
            workers,
            link_listen: self
                .link_listen
                .or(f.link_listen)
                .unwrap_or_else(|| "127.0.0.1:8090".parse().expect("literal")),
            public_url: self.public_url.clone().or(f.public_url),
            sfu_secret: secret,
            redis: self.redis.clone().or(f.redis),
            node_id: self
                .node_id
                .clone()
                .or(f.node_id)
                .unwrap_or_else(|| format!("sfu-{:08x}", rand::random::<u32>())),
            metrics: self
                .metrics
                .or(f.metrics)
                .unwrap_or_else(|| "127.0.0.1:9644".parse().expect("literal")),
            max_participants: self.max_participants.or(f.max_participants).unwrap_or(16),
            max_tracks_per_room: self
                .max_tracks_per_room
                .or(f.max_tracks_per_room)
                .unwrap_or(64),
            max_tracks_per_participant: self
                .max_tracks_per_participant
                .or(f.max_tracks_per_participant)
                .unwrap_or(4),
            max_publish_bitrate: self
                .max_publish_bitrate
                .or(f.max_publish_bitrate)
                .unwrap_or(2_500_000),
            ice_timeout_secs: self.ice_timeout.or(f.ice_timeout).unwrap_or(25).max(2),
            ice_tcp_handshake_timeout_secs: self
                .ice_tcp_handshake_timeout_secs
                .or(f.ice_tcp_handshake_timeout_secs)
                .unwrap_or(10)
                .max(1),
            ice_tcp_max_pending_per_ip: self
                .ice_tcp_max_pending_per_ip
                .or(f.ice_tcp_max_pending_per_ip)
                .unwrap_or(16)
                .max(1),
            ice_tcp_max_pending: self
                .ice_tcp_max_pending
                .or(f.ice_tcp_max_pending)
                .unwrap_or(512)
                .max(1),
            data_message_max_bytes: self
                .data_message_max_bytes
                .or(f.data_message_max_bytes)
                .unwrap_or(16 * 1024)
                .max(1),
            data_messages_per_sec: self
                .data_messages_per_sec
                .or(f.data_messages_per_sec)
                .unwrap_or(50)
                .max(1),
            data_message_burst: self
                .data_message_burst
                .or(f.data_message_burst)
                .unwrap_or(100)
                .max(1),
            direct_send: self.direct_send.or(f.direct_send).unwrap_or(true),
            direct_receive: self.direct_receive.or(f.direct_receive).unwrap_or(true),
            rng_seed: self.rng_seed.or(f.rng_seed),
            drain_timeout_secs: self
                .drain_timeout_secs
                .or(f.drain_timeout_secs)
                .unwrap_or(300),
            admin_token: {
                let t = self.admin_token.clone().or(f.admin_token);
                turnkey_runtime::config::check_admin_token(t.as_deref())?;
                t
            },
            capacity_bps: self
                .capacity_bps
                .or(f.capacity_bps)
                .unwrap_or(1_000_000_000)
                .max(1),
            log_json: self.log_json || f.log_json.unwrap_or(false),
        })
    }
}

impl SfuConfig {
    /// The configuration as loggable text (the secret redacted).
    pub fn redacted(&self) -> String {
        let mut c = self.clone();
        c.sfu_secret = turnkey_runtime::config::redact(&c.sfu_secret).to_string();
        if let Some(t) = &mut c.admin_token {
            *t = turnkey_runtime::config::redact(t).to_string();
        }
        if let Some(r) = &mut c.redis {
            if r.contains('@') {
                *r = "<redacted>".into();
            }
        }
        format!("{c:?}")
    }
}

/// The address the kernel would use to reach a documentation address (no packet is sent).
fn primary_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_config_parses_and_unknown_keys_are_named() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/sfu.toml");
        let args = SfuArgs {
            config: Some(sample.into()),
            ..Default::default()
        };
        let cfg = args.resolve(&Defaults::default()).expect("deploy/sfu.toml");
        assert_eq!(cfg.max_participants, 16);
        assert_eq!(cfg.media_listen.port(), 9700);
        assert!(!cfg.redacted().contains(&cfg.sfu_secret));
        assert_eq!(
            cfg.rng_seed, None,
            "the sample leaves the seed to the OS RNG"
        );

        let dir = std::env::temp_dir().join(format!("sfu-cfg-{}", std::process::id()));
        std::fs::write(
            &dir,
            "media_listen = \"127.0.0.1:1\"\nmax_partcipants = 3\n",
        )
        .unwrap();
        let err = SfuArgs {
            config: Some(dir.clone()),
            ..Default::default()
        }
        .resolve(&Defaults::default())
        .unwrap_err()
        .to_string();
        let _ = std::fs::remove_file(&dir);
        assert!(err.contains("max_partcipants"), "{err}");
    }

    #[test]
    fn an_empty_secret_is_refused_and_limits_have_defaults() {
        let err = SfuArgs {
            sfu_secret: Some(String::new()),
            ..Default::default()
        }
        .resolve(&Defaults::default())
        .unwrap_err()
        .to_string();
        assert!(err.contains("sfu_secret") && err.contains("empty"), "{err}");
        let cfg = SfuArgs::default().resolve(&Defaults::default()).unwrap();
        assert_eq!(cfg.sfu_secret.len(), 48);
        assert_eq!(cfg.ice_tcp_handshake_timeout_secs, 10);
        assert_eq!(
            (cfg.ice_tcp_max_pending_per_ip, cfg.ice_tcp_max_pending),
            (16, 512)
        );
        assert_eq!(
            (
                cfg.data_message_max_bytes,
                cfg.data_messages_per_sec,
                cfg.data_message_burst
            ),
            (16 * 1024, 50, 100)
        );
    }

    #[test]
    fn the_rng_seed_comes_from_the_file_unless_a_flag_gives_one() {
        let path = std::env::temp_dir().join(format!("sfu-seed-{}", std::process::id()));
        std::fs::write(&path, "rng_seed = 5\n").unwrap();
        let from_file = SfuArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve(&Defaults::default())
        .map(|c| c.rng_seed);
        let from_flag = SfuArgs {
            config: Some(path.clone()),
            rng_seed: Some(9),
            ..Default::default()
        }
        .resolve(&Defaults::default())
        .map(|c| c.rng_seed);
        let _ = std::fs::remove_file(&path);
        assert_eq!(from_file.unwrap(), Some(5));
        assert_eq!(from_flag.unwrap(), Some(9));
    }
}
