//! TURN metrics (Prometheus). Names are constants; no user names ever appear as label values.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `turn_allocations` | gauge | `transport`, `family` |
//! | `turn_allocation_requests_total` | counter | `result` (`success`, `auth_challenge`, `error_<code>`) |
//! | `turn_requests_total` | counter | `method`, `result` |
//! | `turn_relayed_packets_total` | counter | `direction` (`client_to_peer`, `peer_to_client`), `path` (`userspace`, `xdp`) |
//! | `turn_relayed_bytes_total` | counter | `direction`, `path` |
//! | `turn_xdp_bindings` (channel bindings installed in the XDP fast path) | gauge | |
//! | `turn_xdp_install_failures_total` (bindings left on the normal path: map full, mixed families) | counter | |
//! | `turn_xdp_passed_total` (datagrams of installed bindings the XDP program handed to the normal path) | counter | `reason` (`expired`, `route`, `mtu`, `malformed`) |
//! | `turn_auth_failures_total` | counter | `reason` |
//! | `turn_peer_denied_total` | counter | `reason` |
//! | `turn_dropped_packets_total` | counter | `reason` |
//! | `turn_permissions` / `turn_channel_bindings` | gauge | |
//! | `turn_reservations` | gauge | | (EVEN-PORT R reservations not yet redeemed, RFC 8656 §7.2)
//! | `turn_quota_rejections_total` | counter | `scope` (`user`, `ip`, `total`, `draining`: 508 while the server drains) |
//! | `turn_tcp_connections` (open TCP and TLS client connections) | gauge | |
//! | `turn_tls_handshakes_in_progress` | gauge | |
//! | `turn_dtls_handshakes_in_progress` (half-open, cookie-verified) | gauge | |
//! | `turn_allocations_ended_total` | counter | `reason` (`refresh`, `expired`, `connection_closed`, `admin`, `shutdown`) |
//! | `turn_alternate_redirects_total` (Allocates answered 300 Try Alternate) | counter | |
//! | `turn_draining` (1 while new allocations are refused or redirected: a drain, or the admin API's `POST /v1/drain`) | gauge | |
//! | `turnkey_draining` (1 once a drain started: the node exits when its allocations end or at `turnkey_drain_deadline_seconds`; `/readyz` answers 503) | gauge | |
//! | `turnkey_drain_deadline_seconds` (`drain_timeout_secs`) | gauge | |
//! | `turn_load_ratio` (fraction of this node's capacity in use, 0 to 1: the larger of `turn_allocations` summed / `turn_capacity_allocations` and `turn_relayed_bps` / `turn_capacity_relay_bps`, 1 at or over capacity; updated every second; see [`crate::load`]) | gauge | |
//! | `turn_relayed_bps` (relayed application payload, both directions added, bits per second over the last 10 s) | gauge | |
//! | `turn_capacity_allocations`, `turn_capacity_relay_bps` (the configured `capacity_allocations`, `capacity_relay_bps`) | gauge | |
//! | `turn_admin_requests_total` | counter | `status` (HTTP status class: `2xx`, `4xx`, `5xx`) |
//! | `turn_config_reloads_total` | counter | `result` (`ok`, `error`) |
//! | `turn_bandwidth_cap_bps` (the live bandwidth caps, bits per second each way; 0: none) | gauge | `scope` (`allocation`, `user`, `total`) |
//! | `turn_bandwidth_stream_waits_total` (reads of TCP allocations' data connections held back by a cap, RFC 6062: a stream is paced, not dropped) | counter | `scope` (`allocation`, `user`, `total`) |
//! | `turn_fleet_redis_up` (1 while the fleet Redis answers; 0 when not configured) | gauge | |
//! | `turn_fleet_redis_errors_total` (failed fleet Redis operations) | counter | `op` (`read`, `publish`) |
//! | `turn_fleet_credential_updates_total` (REST secrets and users read from Redis) | counter | `result` (`applied`, `refused`) |
//! | `turn_proxy_protocol_accepted_total` | counter | `command` (`proxy`, `local`) |
//! | `turn_proxy_protocol_rejected_total` | counter | `reason` ([`ProxyReject`]: `source_not_allowed`, `missing_header`, `malformed`, `unsupported`, `timeout`, `closed`) |
//! | `turn_mobility_moves_total` (allocations moved to a new client 5-tuple, RFC 8016) | counter | |
//! | `turn_mobility_refusals_total` | counter | `reason` ([`MobilityRefusal`]: `disabled`, `transport`, `bad_ticket`, `unknown_allocation`, `stale_ticket`, `wrong_user`, `tuple_in_use`) |
//! | `turn_mobility_forwarded_packets_total` (datagrams a worker handed to the worker owning their allocation after a move) | counter | |
//! | `turn_mobility_routes` (client 5-tuples routed to another worker) | gauge | |
//! | `turn_peer_tcp_connections` (peer TCP connections of TCP allocations, RFC 6062: connecting, waiting for ConnectionBind, or bound) | gauge | |
//! | `turn_peer_tcp_events_total` | counter | `event` ([`TcpEvent`]: `connected`, `connect_failed`, `accepted`, `bound`, `bind_timeout`, `bind_rejected`, `no_permission`, `peer_denied`, `limit`, `duplicate`, `closed`) |
//!
//! `turn_dropped_packets_total` reasons of the bandwidth caps: `bandwidth_allocation`,
//! `bandwidth_user`, `bandwidth_total` (a datagram over the first cap it meets).
//!
//! The bytes of TCP allocations' data connections count into `turn_relayed_bytes_total`, and
//! each read into `turn_relayed_packets_total`.
//!
//! `turn_dropped_packets_total` reasons for the caps on unauthenticated state (refused
//! connections are counted there too, one per connection): `dtls_no_cookie` (ClientHello
//! without cookie, answered statelessly), `dtls_bad_cookie`, `dtls_no_association`,
//! `dtls_handshake_limit`, `dtls_handshake_per_ip_limit`, `dtls_association_limit`,
//! `dtls_bad_record` (association kept), `dtls_handshake_error`, `dtls_handshake_timeout`,
//! `tcp_connection_limit`, `tcp_per_ip_limit`, `tls_handshake_limit`,
//! `tls_handshake_per_ip_limit`, `tls_handshake` (failed), `tls_handshake_timeout`,
//! `tcp_first_request_timeout`, `tcp_queue_full` (a frame that did not fit the byte-bounded
//! send queue), `tcp_duplicate_tuple` (behind a balancer: a second connection whose PROXY
//! header names a client address and port already connected to the same worker),
//! `mobility_forward_queue_full` (a datagram for the worker owning its allocation that did not
//! fit that worker's bounded queue), `mobility_route_table_full` (a moved client 5-tuple not
//! routed because the worker's route table was full of live routes).

use crate::io::proxy::ProxyReject;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use stun_proto::binding::{BindingDrop, BindingResult};
use stun_proto::msg::Transport;
use stun_server::metrics::StunMetrics;
use turn_proto::core::BandwidthCaps;
use turn_proto::policy::DenyReason;
use turn_proto::stats::{
    AuthFailure, BandwidthScope, ControlStats, DropReason, EndReason, MobilityRefusal, QuotaScope,
    RelayStats, RequestMethod, RequestResult, TcpEvent, TurnStats,
};

/// `turn_dropped_packets_total` reasons of the I/O layer (the core's are [`DropReason::ALL`]).
const IO_DROP_REASONS: [&str; 6] = [
    "client_send_failed",
    "peer_send_failed",
    "tcp_queue_full",
    "relay_socket_missing",
    crate::io::MOBILITY_QUEUE_FULL_REASON,
    crate::io::MOBILITY_ROUTES_FULL_REASON,
];

/// One label.
pub type L1 = [(&'static str, &'static str); 1];
/// Two labels.
pub type L2 = [(&'static str, &'static str); 2];

/// Metric names (counters are registered without `_total`; the encoder appends it).
pub mod names {
    /// Live allocations.
    pub const ALLOCATIONS: &str = "turn_allocations";
    /// Allocate requests by result.
    pub const ALLOCATION_REQUESTS: &str = "turn_allocation_requests";
    /// Requests by method and result.
    pub const REQUESTS: &str = "turn_requests";
    /// Relayed packets by direction.
    pub const RELAYED_PACKETS: &str = "turn_relayed_packets";
    /// Relayed payload bytes by direction.
    pub const RELAYED_BYTES: &str = "turn_relayed_bytes";
    /// Authentication failures by reason.
    pub const AUTH_FAILURES: &str = "turn_auth_failures";
    /// Peers refused by the address policy.
    pub const PEER_DENIED: &str = "turn_peer_denied";
    /// Dropped packets by reason.
    pub const DROPPED_PACKETS: &str = "turn_dropped_packets";
    /// Live permissions.
    pub const PERMISSIONS: &str = "turn_permissions";
    /// Live channel bindings.
    pub const CHANNEL_BINDINGS: &str = "turn_channel_bindings";
    /// Unredeemed EVEN-PORT reservations.
    pub const RESERVATIONS: &str = "turn_reservations";
    /// Allocations refused by a quota.
    pub const QUOTA_REJECTIONS: &str = "turn_quota_rejections";
    /// Open TCP and TLS client connections.
    pub const TCP_CONNECTIONS: &str = "turn_tcp_connections";
    /// TLS handshakes in progress.
    pub const TLS_HANDSHAKES_IN_PROGRESS: &str = "turn_tls_handshakes_in_progress";
    /// Half-open DTLS handshakes.
    pub const DTLS_HANDSHAKES_IN_PROGRESS: &str = "turn_dtls_handshakes_in_progress";
    /// Allocations ended, by reason.
    pub const ALLOCATIONS_ENDED: &str = "turn_allocations_ended";
    /// Allocates answered 300 Try Alternate.
    pub const ALTERNATE_REDIRECTS: &str = "turn_alternate_redirects";
    /// 1 while draining.
    pub const DRAINING: &str = "turn_draining";
    /// Fraction of the node's capacity in use, 0 to 1.
    pub const LOAD_RATIO: &str = "turn_load_ratio";
    /// Relayed payload bits per second over the last 10 s, both directions.
    pub const RELAYED_BPS: &str = "turn_relayed_bps";
    /// `capacity_allocations`.
    pub const CAPACITY_ALLOCATIONS: &str = "turn_capacity_allocations";
    /// `capacity_relay_bps`.
    pub const CAPACITY_RELAY_BPS: &str = "turn_capacity_relay_bps";
    /// Admin API requests by status class.
    pub const ADMIN_REQUESTS: &str = "turn_admin_requests";
    /// Config reloads by result.
    pub const CONFIG_RELOADS: &str = "turn_config_reloads";
    /// The live bandwidth caps by scope, bits per second.
    pub const BANDWIDTH_CAP_BPS: &str = "turn_bandwidth_cap_bps";
    /// Data-connection reads held back by a bandwidth cap, by scope.
    pub const BANDWIDTH_STREAM_WAITS: &str = "turn_bandwidth_stream_waits";
    /// Gauge (fleet state in Redis).
    pub const FLEET_REDIS_UP: &str = "turn_fleet_redis_up";
    /// Counter (`_total` added).
    pub const FLEET_REDIS_ERRORS: &str = "turn_fleet_redis_errors";
    /// Counter (`_total` added).
    pub const FLEET_CREDENTIAL_UPDATES: &str = "turn_fleet_credential_updates";
    /// PROXY protocol v2 headers accepted on the stream listeners, by command.
    pub const PROXY_PROTOCOL_ACCEPTED: &str = "turn_proxy_protocol_accepted";
    /// Stream connections closed for want of a valid PROXY v2 header, by reason.
    pub const PROXY_PROTOCOL_REJECTED: &str = "turn_proxy_protocol_rejected";
    /// Allocations moved to a new client 5-tuple (RFC 8016).
    pub const MOBILITY_MOVES: &str = "turn_mobility_moves";
    /// MOBILITY-TICKETs refused, by reason.
    pub const MOBILITY_REFUSALS: &str = "turn_mobility_refusals";
    /// Datagrams handed to the worker that owns their allocation.
    pub const MOBILITY_FORWARDED_PACKETS: &str = "turn_mobility_forwarded_packets";
    /// Client 5-tuples routed to another worker.
    pub const MOBILITY_ROUTES: &str = "turn_mobility_routes";
    /// Peer TCP connections of TCP allocations (RFC 6062).
    pub const PEER_TCP_CONNECTIONS: &str = "turn_peer_tcp_connections";
    /// Peer TCP connection events (RFC 6062), by event.
    pub const PEER_TCP_EVENTS: &str = "turn_peer_tcp_events";
    /// Channel bindings installed in the XDP fast path.
    pub const XDP_BINDINGS: &str = "turn_xdp_bindings";
    /// Bindings the XDP fast path could not take.
    pub const XDP_INSTALL_FAILURES: &str = "turn_xdp_install_failures";
    /// Datagrams of installed bindings the XDP program passed to the normal path, by reason.
    pub const XDP_PASSED: &str = "turn_xdp_passed";
}

/// `turn_xdp_passed_total` `reason` values.
pub const XDP_PASS_REASONS: [&str; 4] = ["expired", "route", "mtu", "malformed"];

/// `turn_proxy_protocol_accepted_total` `command` values.
pub const PROXY_COMMANDS: [&str; 2] = ["proxy", "local"];

/// Handles to every TURN metric. Cloning is cheap (shared atomics).
#[derive(Clone, Debug, Default)]
pub struct TurnMetrics {
    /// `turn_allocations{transport,family}`.
    pub allocations: Family<L2, Gauge>,
    /// `turn_allocation_requests_total{result}`.
    pub allocation_requests: Family<L1, Counter>,
    /// `turn_requests_total{method,result}`.
    pub requests: Family<L2, Counter>,
    /// `turn_relayed_packets_total{direction,path}`.
    pub relayed_packets: Family<L2, Counter>,
    /// `turn_relayed_bytes_total{direction,path}`.
    pub relayed_bytes: Family<L2, Counter>,
    /// The XDP fast path's series.
    pub xdp: XdpMetrics,
    /// `turn_auth_failures_total{reason}`.
    pub auth_failures: Family<L1, Counter>,
    /// `turn_peer_denied_total{reason}`.
    pub peer_denied: Family<L1, Counter>,
    /// `turn_dropped_packets_total{reason}`.
    pub dropped_packets: Family<L1, Counter>,
    /// `turn_permissions`.
    pub permissions: Gauge,
    /// `turn_channel_bindings`.
    pub channel_bindings: Gauge,
    /// `turn_reservations`: EVEN-PORT reservations waiting to be redeemed.
    pub reservations: Gauge,
    /// `turn_quota_rejections_total{scope}`: allocations refused by a quota.
    pub quota_rejections: Family<L1, Counter>,
    /// Hot-path handles, resolved once.
    pub hot: HotCounters,
    /// Gauges of the caps on unauthenticated state.
    pub conn: ConnGauges,
    /// `turn_allocations_ended_total{reason}`.
    pub allocations_ended: Family<L1, Counter>,
    /// `turn_alternate_redirects_total`.
    pub alternate_redirects: Counter,
    /// The admin API's metrics.
    pub admin: AdminMetrics,
    /// `turn_proxy_protocol_accepted_total{command}`.
    pub proxy_accepted: Family<L1, Counter>,
    /// `turn_proxy_protocol_rejected_total{reason}`.
    pub proxy_rejected: Family<L1, Counter>,
    /// RFC 8016 mobility.
    pub mobility: MobilityMetrics,
    /// `turn_peer_tcp_connections`.
    pub peer_tcp_connections: Gauge,
    /// `turn_peer_tcp_events_total{event}`.
    pub peer_tcp_events: Family<L1, Counter>,
    /// `turn_bandwidth_stream_waits_total{scope}`.
    pub stream_waits: Family<L1, Counter>,
    /// The load gauges.
    pub load: LoadMetrics,
}

/// `turn_load_ratio`, `turn_relayed_bps`, `turn_capacity_allocations`,
/// `turn_capacity_relay_bps` ([`crate::load`]).
#[derive(Clone, Debug, Default)]
pub struct LoadMetrics {
    /// Fraction of capacity in use, 0 to 1.
    pub ratio: Gauge<f64, AtomicU64>,
    /// Relayed bits per second over the window.
    pub relayed_bps: Gauge<f64, AtomicU64>,
    /// The configured allocation capacity.
    pub capacity_allocations: Gauge,
    /// The configured relay capacity, bits per second.
    pub capacity_relay_bps: Gauge,
}

impl LoadMetrics {
    /// Sets every load gauge: `allocations` live, `relayed_bps` measured, against the two
    /// capacities.
    pub fn set(
        &self,
        allocations: u64,
        relayed_bps: f64,
        capacity_allocations: u64,
        capacity_relay_bps: u64,
    ) {
        self.ratio.set(crate::load::load_ratio(
            allocations,
            capacity_allocations,
            relayed_bps,
            capacity_relay_bps,
        ));
        self.relayed_bps.set(relayed_bps);
        self.capacity_allocations
            .set(i64::try_from(capacity_allocations).unwrap_or(i64::MAX));
        self.capacity_relay_bps
            .set(i64::try_from(capacity_relay_bps).unwrap_or(i64::MAX));
    }
}

/// `turn_mobility_moves_total`, `turn_mobility_refusals_total{reason}`,
/// `turn_mobility_forwarded_packets_total`, `turn_mobility_routes`.
#[derive(Clone, Debug, Default)]
pub struct MobilityMetrics {
    /// Allocations moved.
    pub moves: Counter,
    /// Tickets refused, by reason.
    pub refusals: Family<L1, Counter>,
    /// Datagrams handed to the owning worker.
    pub forwarded: Counter,
    /// Routes to other workers, all workers.
    pub routes: Gauge,
}

/// `turn_draining` and `turn_admin_requests_total{status}`.
#[derive(Clone, Debug, Default)]
pub struct AdminMetrics {
    /// 1 while draining.
    pub draining: Gauge,
    /// Admin API answers by status class.
    pub requests: Family<L1, Counter>,
    /// Config reloads by result (`ok`, `error`).
    pub reloads: Family<L1, Counter>,
    /// `turn_bandwidth_cap_bps{scope}`.
    pub bandwidth_cap: Family<L1, Gauge>,
    /// Fleet state in Redis.
    pub fleet: FleetMetrics,
}

/// `turn_fleet_redis_up`, `turn_fleet_redis_errors_total{op}`,
/// `turn_fleet_credential_updates_total{result}`.
#[derive(Clone, Debug, Default)]
pub struct FleetMetrics {
    /// 1 while Redis answers.
    pub up: Gauge,
    /// Failed Redis operations by `op` (`read`: credentials, fleet listing; `publish`).
    pub errors: Family<L1, Counter>,
    /// Credential sets read from Redis, by `result` (`applied`, `refused`: over a bound).
    pub updates: Family<L1, Counter>,
}

impl FleetMetrics {
    /// Counts a failed operation and sets `up` to 0.
    pub fn error(&self, op: &'static str) {
        self.errors.get_or_create(&[("op", op)]).inc();
        self.up.set(0);
    }
    /// Counts a credential update read from Redis.
    pub fn update(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.updates.get_or_create(&[("result", result)]).inc();
    }
}

impl AdminMetrics {
    /// Counts an answer with HTTP `status`.
    pub fn request(&self, status: u16) {
        let class = match status {
            200..=299 => "2xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&[("status", class)]).inc();
    }
    /// Counts a config reload.
    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }
    /// Sets `turn_draining`.
    pub fn draining(&self, on: bool) {
        self.draining.set(i64::from(on));
    }
    /// Sets `turn_bandwidth_cap_bps{scope}` to `caps`.
    pub fn bandwidth_caps(&self, caps: &BandwidthCaps) {
        self.bandwidth_cap_values(BandwidthScope::ALL.map(|s| caps.bps(s)));
    }
    fn bandwidth_cap_values(&self, bps: [u64; BandwidthScope::ALL.len()]) {
        for (scope, v) in BandwidthScope::ALL.iter().zip(bps) {
            self.bandwidth_cap
                .get_or_create(&[("scope", scope.as_str())])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
}

/// `turn_tcp_connections`, `turn_tls_handshakes_in_progress`,
/// `turn_dtls_handshakes_in_progress`.
#[derive(Clone, Debug, Default)]
pub struct ConnGauges {
    /// Open TCP and TLS client connections.
    pub tcp_connections: Gauge,
    /// TLS handshakes in progress.
    pub tls_handshakes: Gauge,
    /// Half-open DTLS handshakes.
    pub dtls_handshakes: Gauge,
}

/// `turn_dropped_packets_total` reasons for the caps on unauthenticated state, exported as
/// zeros from the start.
const CONN_DROP_REASONS: [&str; 18] = [
    "dtls_no_cookie",
    "dtls_bad_cookie",
    "dtls_no_association",
    "dtls_handshake_limit",
    "dtls_handshake_per_ip_limit",
    "dtls_association_limit",
    "dtls_bad_record",
    "dtls_handshake_error",
    "dtls_handshake_timeout",
    "tcp_connection_limit",
    "tcp_per_ip_limit",
    "tls_handshake_limit",
    "tls_handshake_per_ip_limit",
    "tls_handshake",
    "tls_handshake_timeout",
    "tcp_first_request_timeout",
    "tcp_queue_full",
    crate::io::DUPLICATE_TUPLE_REASON,
];

/// The XDP fast path's series (README "XDP fast path"); zeros while it is off.
#[derive(Clone, Debug, Default)]
pub struct XdpMetrics {
    /// `turn_relayed_packets_total{direction="client_to_peer",path="xdp"}`.
    pub c2p_packets: Counter,
    /// `turn_relayed_bytes_total{direction="client_to_peer",path="xdp"}`.
    pub c2p_bytes: Counter,
    /// `turn_relayed_packets_total{direction="peer_to_client",path="xdp"}`.
    pub p2c_packets: Counter,
    /// `turn_relayed_bytes_total{direction="peer_to_client",path="xdp"}`.
    pub p2c_bytes: Counter,
    /// `turn_xdp_bindings`.
    pub bindings: Gauge,
    /// `turn_xdp_install_failures_total`.
    pub install_failures: Counter,
    /// `turn_xdp_passed_total{reason}`, indexed like [`XDP_PASS_REASONS`].
    pub passed: [Counter; XDP_PASS_REASONS.len()],
}

/// Counters on the per-packet path, resolved from their families once.
#[derive(Clone, Debug, Default)]
pub struct HotCounters {
    /// packets client -> peer.
    pub c2p_packets: Counter,
    /// bytes client -> peer.
    pub c2p_bytes: Counter,
    /// packets peer -> client.
    pub p2c_packets: Counter,
    /// bytes peer -> client.
    pub p2c_bytes: Counter,
    /// `turn_bandwidth_stream_waits_total{scope}`, indexed like [`BandwidthScope::ALL`].
    pub stream_waits: [Counter; BandwidthScope::ALL.len()],
}

impl TurnMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = TurnMetrics::default();
        let hot = HotCounters {
            c2p_packets: m
                .relayed_packets
                .get_or_create_owned(&[("direction", "client_to_peer"), ("path", "userspace")]),
            c2p_bytes: m
                .relayed_bytes
                .get_or_create_owned(&[("direction", "client_to_peer"), ("path", "userspace")]),
            p2c_packets: m
                .relayed_packets
                .get_or_create_owned(&[("direction", "peer_to_client"), ("path", "userspace")]),
            p2c_bytes: m
                .relayed_bytes
                .get_or_create_owned(&[("direction", "peer_to_client"), ("path", "userspace")]),
            stream_waits: BandwidthScope::ALL
                .map(|s| m.stream_waits.get_or_create_owned(&[("scope", s.as_str())])),
        };
        let xdp_series = |family: &Family<L2, Counter>, direction| {
            family.get_or_create_owned(&[("direction", direction), ("path", "xdp")])
        };
        let xdp = XdpMetrics {
            c2p_packets: xdp_series(&m.relayed_packets, "client_to_peer"),
            c2p_bytes: xdp_series(&m.relayed_bytes, "client_to_peer"),
            p2c_packets: xdp_series(&m.relayed_packets, "peer_to_client"),
            p2c_bytes: xdp_series(&m.relayed_bytes, "peer_to_client"),
            ..XdpMetrics::default()
        };
        let passed_family: Family<L1, Counter> = Family::default();
        let xdp = XdpMetrics {
            passed: XDP_PASS_REASONS.map(|r| passed_family.get_or_create_owned(&[("reason", r)])),
            ..xdp
        };
        registry.register(
            names::XDP_BINDINGS,
            "Channel bindings installed in the XDP fast path",
            xdp.bindings.clone(),
        );
        registry.register(
            names::XDP_INSTALL_FAILURES,
            "Channel bindings the XDP fast path could not take (left on the normal path)",
            xdp.install_failures.clone(),
        );
        registry.register(
            names::XDP_PASSED,
            "Datagrams of installed bindings the XDP program passed to the normal path, by reason",
            passed_family,
        );
        let m = TurnMetrics { hot, xdp, ..m };
        // Export zeros for every reason the core knows, so every series exists from the start.
        for reason in AuthFailure::ALL {
            let _ = m
                .auth_failures
                .get_or_create(&[("reason", reason.as_str())]);
        }
        for reason in DenyReason::ALL {
            let _ = m.peer_denied.get_or_create(&[("reason", reason.as_str())]);
        }
        for reason in DropReason::ALL {
            let _ = m
                .dropped_packets
                .get_or_create(&[("reason", reason.as_str())]);
        }
        for reason in IO_DROP_REASONS {
            let _ = m.dropped_packets.get_or_create(&[("reason", reason)]);
        }
        for result in RequestResult::ALL {
            let _ = m
                .allocation_requests
                .get_or_create(&[("result", result.as_str())]);
        }
        registry.register(
            names::ALLOCATIONS,
            "Live TURN allocations",
            m.allocations.clone(),
        );
        registry.register(
            names::ALLOCATION_REQUESTS,
            "Allocate requests by result",
            m.allocation_requests.clone(),
        );
        registry.register(
            names::REQUESTS,
            "TURN requests by method and result",
            m.requests.clone(),
        );
        registry.register(
            names::RELAYED_PACKETS,
            "Packets relayed, by direction and path (userspace workers or the XDP fast path)",
            m.relayed_packets.clone(),
        );
        registry.register(
            names::RELAYED_BYTES,
            "Application payload bytes relayed, by direction and path",
            m.relayed_bytes.clone(),
        );
        registry.register(
            names::AUTH_FAILURES,
            "Authentication failures by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            names::PEER_DENIED,
            "Peer addresses refused by the relay policy (403)",
            m.peer_denied.clone(),
        );
        registry.register(
            names::DROPPED_PACKETS,
            "Packets dropped, by reason",
            m.dropped_packets.clone(),
        );
        registry.register(
            names::PERMISSIONS,
            "Live permissions",
            m.permissions.clone(),
        );
        registry.register(
            names::CHANNEL_BINDINGS,
            "Live channel bindings",
            m.channel_bindings.clone(),
        );
        registry.register(
            names::RESERVATIONS,
            "EVEN-PORT reservations not yet redeemed",
            m.reservations.clone(),
        );
        for scope in QuotaScope::ALL {
            let _ = m
                .quota_rejections
                .get_or_create(&[("scope", scope.as_str())]);
        }
        registry.register(
            names::QUOTA_REJECTIONS,
            "Allocations refused by a quota, by scope",
            m.quota_rejections.clone(),
        );
        m.register_conn(registry);
        for reason in EndReason::ALL {
            let _ = m
                .allocations_ended
                .get_or_create(&[("reason", reason.as_str())]);
        }
        registry.register(
            names::ALLOCATIONS_ENDED,
            "Allocations ended, by reason",
            m.allocations_ended.clone(),
        );
        registry.register(
            names::ALTERNATE_REDIRECTS,
            "Allocate requests answered 300 Try Alternate (draining or over the configured load)",
            m.alternate_redirects.clone(),
        );
        registry.register(
            names::DRAINING,
            "1 while new allocations are refused or sent to an alternate server",
            m.admin.draining.clone(),
        );
        m.register_load(registry);
        for class in ["2xx", "4xx", "5xx"] {
            let _ = m.admin.requests.get_or_create(&[("status", class)]);
        }
        for result in ["ok", "error"] {
            let _ = m.admin.reloads.get_or_create(&[("result", result)]);
        }
        registry.register(
            names::CONFIG_RELOADS,
            "Configuration reloads (SIGHUP or file change) by result; on error the configuration in force stays",
            m.admin.reloads.clone(),
        );
        registry.register(
            names::ADMIN_REQUESTS,
            "Admin API requests by status class",
            m.admin.requests.clone(),
        );
        m.admin.bandwidth_cap_values([0; BandwidthScope::ALL.len()]);
        registry.register(
            names::BANDWIDTH_CAP_BPS,
            "Live bandwidth caps, bits per second of relayed payload each way (0: none)",
            m.admin.bandwidth_cap.clone(),
        );
        registry.register(
            names::BANDWIDTH_STREAM_WAITS,
            "Reads of TCP allocations' data connections (RFC 6062) held back by a bandwidth cap, by scope (a stream is paced, not dropped)",
            m.stream_waits.clone(),
        );
        for op in ["read", "publish"] {
            let _ = m.admin.fleet.errors.get_or_create(&[("op", op)]);
        }
        for result in ["applied", "refused"] {
            let _ = m.admin.fleet.updates.get_or_create(&[("result", result)]);
        }
        registry.register(
            names::FLEET_REDIS_UP,
            "1 while the fleet Redis (--redis / --redis-sentinel) answers; 0 when it does not or is not configured",
            m.admin.fleet.up.clone(),
        );
        registry.register(
            names::FLEET_REDIS_ERRORS,
            "Failed fleet Redis operations by op (read: credentials and fleet listings, publish: this node's summary)",
            m.admin.fleet.errors.clone(),
        );
        registry.register(
            names::FLEET_CREDENTIAL_UPDATES,
            "REST secrets and users read from Redis, by result (refused: over a bound, the previous ones stay)",
            m.admin.fleet.updates.clone(),
        );
        m.register_proxy(registry);
        m.register_mobility(registry);
        for event in TcpEvent::ALL {
            let _ = m
                .peer_tcp_events
                .get_or_create(&[("event", event.as_str())]);
        }
        registry.register(
            names::PEER_TCP_CONNECTIONS,
            "Peer TCP connections of TCP allocations (RFC 6062): connecting, waiting for ConnectionBind, or bound",
            m.peer_tcp_connections.clone(),
        );
        registry.register(
            names::PEER_TCP_EVENTS,
            "Peer TCP connection events of TCP allocations (RFC 6062), by event",
            m.peer_tcp_events.clone(),
        );
        m
    }

    fn register_load(&self, registry: &mut Registry) {
        registry.register(
            names::LOAD_RATIO,
            "Fraction of this node's capacity in use, 0 to 1: the larger of live allocations / capacity_allocations and relayed bits per second (last 10 s, both directions) / capacity_relay_bps; 1 at or over capacity",
            self.load.ratio.clone(),
        );
        registry.register(
            names::RELAYED_BPS,
            "Relayed application payload, both directions added, bits per second over the last 10 s",
            self.load.relayed_bps.clone(),
        );
        registry.register(
            names::CAPACITY_ALLOCATIONS,
            "Allocations this node is sized for (capacity_allocations)",
            self.load.capacity_allocations.clone(),
        );
        registry.register(
            names::CAPACITY_RELAY_BPS,
            "Relayed bits per second this node is sized for, both directions added (capacity_relay_bps)",
            self.load.capacity_relay_bps.clone(),
        );
    }

    /// Application payload bytes relayed so far, both directions and paths (userspace and
    /// XDP): what `turn_relayed_bytes_total` adds up to.
    pub fn relayed_bytes_total(&self) -> u64 {
        [
            &self.hot.c2p_bytes,
            &self.hot.p2c_bytes,
            &self.xdp.c2p_bytes,
            &self.xdp.p2c_bytes,
        ]
        .iter()
        .fold(0u64, |sum, c| sum.saturating_add(c.get()))
    }

    fn register_mobility(&self, registry: &mut Registry) {
        for reason in MobilityRefusal::ALL {
            let _ = self
                .mobility
                .refusals
                .get_or_create(&[("reason", reason.as_str())]);
        }
        registry.register(
            names::MOBILITY_MOVES,
            "Allocations moved to a new client 5-tuple with a MOBILITY-TICKET (RFC 8016)",
            self.mobility.moves.clone(),
        );
        registry.register(
            names::MOBILITY_REFUSALS,
            "MOBILITY-TICKETs refused, by reason",
            self.mobility.refusals.clone(),
        );
        registry.register(
            names::MOBILITY_FORWARDED_PACKETS,
            "Datagrams handed to the worker owning their allocation after the client moved",
            self.mobility.forwarded.clone(),
        );
        registry.register(
            names::MOBILITY_ROUTES,
            "Client 5-tuples routed to the worker owning their allocation",
            self.mobility.routes.clone(),
        );
    }

    fn register_proxy(&self, registry: &mut Registry) {
        for command in PROXY_COMMANDS {
            let _ = self.proxy_accepted.get_or_create(&[("command", command)]);
        }
        for reason in ProxyReject::ALL {
            let _ = self
                .proxy_rejected
                .get_or_create(&[("reason", reason.as_str())]);
        }
        registry.register(
            names::PROXY_PROTOCOL_ACCEPTED,
            "PROXY protocol v2 headers accepted on the TCP/TLS listeners, by command",
            self.proxy_accepted.clone(),
        );
        registry.register(
            names::PROXY_PROTOCOL_REJECTED,
            "TCP/TLS connections closed for want of a valid PROXY protocol v2 header, by reason",
            self.proxy_rejected.clone(),
        );
    }

    /// Counts a connection closed for want of a valid PROXY header.
    pub fn proxy_reject(&self, reason: ProxyReject) {
        self.proxy_rejected
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Counts an accepted PROXY header (`command`: one of [`PROXY_COMMANDS`]).
    pub fn proxy_accept(&self, command: &'static str) {
        self.proxy_accepted
            .get_or_create(&[("command", command)])
            .inc();
    }

    fn register_conn(&self, registry: &mut Registry) {
        for reason in CONN_DROP_REASONS {
            let _ = self.dropped_packets.get_or_create(&[("reason", reason)]);
        }
        registry.register(
            names::TCP_CONNECTIONS,
            "Open TCP and TLS client connections",
            self.conn.tcp_connections.clone(),
        );
        registry.register(
            names::TLS_HANDSHAKES_IN_PROGRESS,
            "TLS handshakes in progress",
            self.conn.tls_handshakes.clone(),
        );
        registry.register(
            names::DTLS_HANDSHAKES_IN_PROGRESS,
            "Half-open DTLS handshakes (cookie verified, not finished)",
            self.conn.dtls_handshakes.clone(),
        );
    }

    /// Counts `n` dropped packets.
    pub fn drop_packets(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped_packets
                .get_or_create(&[("reason", reason)])
                .inc_by(n);
        }
    }

    /// Counts a dropped packet.
    pub fn drop_packet(&self, reason: &'static str) {
        self.dropped_packets
            .get_or_create(&[("reason", reason)])
            .inc();
    }
}

/// What a worker last folded of its core's [`TurnStats`]; the difference to the core's current
/// figures is what the next fold adds.
#[derive(Debug, Default)]
pub struct Folded {
    relay: RelayStats,
    control: ControlStats,
}

impl Folded {
    /// True when `stats` counted a control event (a request, an allocation's end, a drop...)
    /// that is not folded yet: one comparison.
    pub fn control_behind(&self, stats: &TurnStats) -> bool {
        stats.control.changes != self.control.changes
    }
}

impl TurnMetrics {
    /// Adds what `stats` counted since the last fold into the Prometheus metrics (TURN and, for
    /// Binding requests, STUN). Cheap when only relayed traffic changed: four subtractions.
    pub fn fold(&self, stun: &StunMetrics, stats: &TurnStats, last: &mut Folded) {
        let r = &stats.relay;
        if *r != last.relay {
            self.hot
                .c2p_packets
                .inc_by(r.c2p_packets - last.relay.c2p_packets);
            self.hot
                .c2p_bytes
                .inc_by(r.c2p_bytes - last.relay.c2p_bytes);
            self.hot
                .p2c_packets
                .inc_by(r.p2c_packets - last.relay.p2c_packets);
            self.hot
                .p2c_bytes
                .inc_by(r.p2c_bytes - last.relay.p2c_bytes);
            last.relay = *r;
        }
        let c = &stats.control;
        if c.changes == last.control.changes {
            return;
        }
        let l = &last.control;
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            self.drop_packets(reason.as_str(), c.dropped[i] - l.dropped[i]);
        }
        for (i, reason) in AuthFailure::ALL.iter().enumerate() {
            inc(
                &self.auth_failures,
                [("reason", reason.as_str())],
                c.auth_failures[i] - l.auth_failures[i],
            );
        }
        for (i, reason) in DenyReason::ALL.iter().enumerate() {
            inc(
                &self.peer_denied,
                [("reason", reason.as_str())],
                c.peer_denied[i] - l.peer_denied[i],
            );
        }
        for (i, scope) in QuotaScope::ALL.iter().enumerate() {
            inc(
                &self.quota_rejections,
                [("scope", scope.as_str())],
                c.quota_rejections[i] - l.quota_rejections[i],
            );
        }
        for (i, event) in TcpEvent::ALL.iter().enumerate() {
            inc(
                &self.peer_tcp_events,
                [("event", event.as_str())],
                c.tcp_events[i] - l.tcp_events[i],
            );
        }
        gauge_add(
            &self.peer_tcp_connections,
            c.live_peer_connections - l.live_peer_connections,
        );
        for (i, reason) in EndReason::ALL.iter().enumerate() {
            inc(
                &self.allocations_ended,
                [("reason", reason.as_str())],
                c.allocations_ended[i] - l.allocations_ended[i],
            );
        }
        if c.mobility_moves > l.mobility_moves {
            self.mobility
                .moves
                .inc_by(c.mobility_moves - l.mobility_moves);
        }
        for (i, reason) in MobilityRefusal::ALL.iter().enumerate() {
            inc(
                &self.mobility.refusals,
                [("reason", reason.as_str())],
                c.mobility_refusals[i] - l.mobility_refusals[i],
            );
        }
        if c.alternate_redirects > l.alternate_redirects {
            self.alternate_redirects
                .inc_by(c.alternate_redirects - l.alternate_redirects);
        }
        for (m, method) in RequestMethod::ALL.iter().enumerate() {
            if c.requests[m] == l.requests[m] {
                continue;
            }
            for (r, result) in RequestResult::ALL.iter().enumerate() {
                inc(
                    &self.requests,
                    [("method", method.as_str()), ("result", result.as_str())],
                    c.requests[m][r] - l.requests[m][r],
                );
            }
        }
        for (r, result) in RequestResult::ALL.iter().enumerate() {
            inc(
                &self.allocation_requests,
                [("result", result.as_str())],
                c.allocation_requests[r] - l.allocation_requests[r],
            );
        }
        for (t, transport) in Transport::ALL.iter().enumerate() {
            for (r, result) in BindingResult::ALL.iter().enumerate() {
                let n = c.binding_requests[t][r] - l.binding_requests[t][r];
                if n > 0 {
                    stun.requests(*transport, *result, n);
                }
            }
        }
        for (i, reason) in BindingDrop::ALL.iter().enumerate() {
            let n = c.binding_dropped[i] - l.binding_dropped[i];
            if n > 0 {
                stun.dropped_n(*reason, n);
            }
        }
        for (&(transport, family), &n) in &c.live_allocations {
            let before = l
                .live_allocations
                .get(&(transport, family))
                .copied()
                .unwrap_or(0);
            gauge_add(
                &self
                    .allocations
                    .get_or_create(&[("transport", transport), ("family", family)]),
                n - before,
            );
        }
        gauge_add(&self.permissions, c.live_permissions - l.live_permissions);
        gauge_add(
            &self.channel_bindings,
            c.live_channel_bindings - l.live_channel_bindings,
        );
        gauge_add(
            &self.reservations,
            c.live_reservations - l.live_reservations,
        );
        if c.bandwidth_caps_bps != l.bandwidth_caps_bps {
            self.admin.bandwidth_cap_values(c.bandwidth_caps_bps);
        }
        last.control = c.clone();
    }
}

fn inc<const N: usize>(
    family: &Family<[(&'static str, &'static str); N], Counter>,
    labels: [(&'static str, &'static str); N],
    n: u64,
) {
    if n > 0 {
        family.get_or_create(&labels).inc_by(n);
    }
}

/// Adds `delta` to a gauge shared by several workers.
pub fn gauge_add(g: &Gauge, delta: i64) {
    if delta > 0 {
        g.inc_by(delta);
    } else if delta < 0 {
        g.dec_by(-delta);
    }
}
