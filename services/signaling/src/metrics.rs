//! signaling metrics (Prometheus). Names are constants; no room, identity or participant id is
//! ever a label value.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `signaling_connections` | gauge | |
//! | `signaling_load_ratio` | gauge (fraction of the node's capacity in use, 0..1: connections against `capacity_connections`, refreshed every heartbeat; what room placement compares) | |
//! | `signaling_rooms` | gauge (rooms with participants on this node) | |
//! | `signaling_messages_total` | counter (client messages accepted) | `type` |
//! | `signaling_errors_total` | counter (`error` frames sent) | `code` (the code's name) |
//! | `signaling_joins_total` | counter | `result` |
//! | `signaling_store_latency_seconds` | histogram | `operation` |
//! | `signaling_registry_rejoins_total` | counter (times this node found its registry entry gone while serving and registered again at once) | |
//! | `signaling_store_errors_total` | counter (store operations that failed or timed out; a `heartbeat` error or timeout means the node may have dropped out of the registry for a moment) | `operation` |
//! | `signaling_turn_credentials_issued_total` | counter | |
//! | `signaling_dropped_messages_total` | counter | `reason` |
//! | `signaling_slow_consumers_total` | counter (connections closed with 4003) | |
//! | `signaling_http_requests_total` | counter | `route`, `status` |
//! | `signaling_sfu_links` | gauge (open participant links to SFU nodes) | |
//! | `signaling_sfu_link_errors_total` | counter (links that could not be opened or were lost while their participant was in the room) | |
//! | `signaling_rooms_expired_total` | counter (rooms deleted after `room_idle_secs` empty) | |
//! | `signaling_tls_handshake_failures_total` | counter (HTTPS handshakes that failed or timed out) | |
//! | `signaling_refused_requests_total` | counter (HTTP requests and WebSocket joins refused before any work) | `reason` (`origin`: cross-origin browser request from an origin not allowed, 403; `room_name`: room name outside the documented rule, 400 / error 4000) |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use signaling_proto::msg::{ErrorCode, CLIENT_TYPES};

/// One label.
pub type L1 = [(&'static str, &'static str); 1];
/// Two labels.
pub type L2 = [(&'static str, &'static str); 2];

/// Metric names (counters are registered without `_total`; the encoder appends it).
pub mod names {
    /// Open WebSocket connections.
    pub const CONNECTIONS: &str = "signaling_connections";
    /// Rooms with local participants.
    pub const ROOMS: &str = "signaling_rooms";
    /// Client messages by type.
    pub const MESSAGES: &str = "signaling_messages";
    /// Error frames by code.
    pub const ERRORS: &str = "signaling_errors";
    /// Joins by result.
    pub const JOINS: &str = "signaling_joins";
    /// Store operation latency.
    pub const STORE_LATENCY: &str = "signaling_store_latency_seconds";
    /// Times this node found its registry entry gone and registered again.
    pub const REGISTRY_REJOINS: &str = "signaling_registry_rejoins";
    /// Store operations that failed or timed out.
    pub const STORE_ERRORS: &str = "signaling_store_errors";
    /// TURN credentials minted.
    pub const TURN_CREDENTIALS: &str = "signaling_turn_credentials_issued";
    /// Frames dropped, by reason.
    pub const DROPPED: &str = "signaling_dropped_messages";
    /// Connections closed as slow consumers.
    pub const SLOW_CONSUMERS: &str = "signaling_slow_consumers";
    /// HTTP requests by route and status.
    pub const HTTP_REQUESTS: &str = "signaling_http_requests";
    /// Open participant links to SFU nodes.
    pub const SFU_LINKS: &str = "signaling_sfu_links";
    /// SFU links that failed or were lost.
    pub const SFU_LINK_ERRORS: &str = "signaling_sfu_link_errors";
    /// Rooms deleted after being empty for the idle time.
    pub const ROOMS_EXPIRED: &str = "signaling_rooms_expired";
    /// HTTPS handshakes that failed or timed out.
    pub const TLS_HANDSHAKE_FAILURES: &str = "signaling_tls_handshake_failures";
    /// Requests refused before any work, by reason.
    pub const REFUSED: &str = "signaling_refused_requests";
}

/// `signaling_refused_requests_total` reasons.
pub const REFUSE_REASONS: [&str; 2] = ["origin", "room_name"];

/// `signaling_joins_total` results.
pub const JOIN_RESULTS: [&str; 10] = [
    "ok",
    "resumed",
    "unauthorized",
    "forbidden",
    "room_full",
    "resume_failed",
    "unsupported_version",
    "internal",
    "bad_request",
    "sfu_unavailable",
];

/// `signaling_dropped_messages_total` reasons.
pub const DROP_REASONS: [&str; 7] = [
    "rate_limited",
    "too_large",
    "recipient_away",
    "queue_full",
    "bus_full",
    "sfu_link_full",
    "sfu_bad_frame",
];

/// Store operations timed.
pub const STORE_OPS: [&str; 15] = [
    "create_room",
    "get_room",
    "list_rooms",
    "delete_room",
    "move_room",
    "add_participant",
    "remove_participant",
    "participants",
    "heartbeat",
    "remove_node",
    "nodes",
    "publish",
    "subscribe",
    "sfu_nodes",
    "set_room_sfu",
];

type HistogramCtor = fn() -> Histogram;

fn store_histogram() -> Histogram {
    // 100 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// Handles to every signaling metric. Cloning is cheap (shared atomics).
#[derive(Clone, Debug)]
pub struct SignalingMetrics {
    /// `signaling_connections`.
    pub connections: Gauge,
    /// `signaling_load_ratio`.
    pub load_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `signaling_rooms`.
    pub rooms: Gauge,
    /// `signaling_messages_total{type}`.
    pub messages: Family<L1, Counter>,
    /// `signaling_errors_total{code}`.
    pub errors: Family<L1, Counter>,
    /// `signaling_joins_total{result}`.
    pub joins: Family<L1, Counter>,
    /// `signaling_store_latency_seconds{operation}`.
    pub store_latency: Family<L1, Histogram, HistogramCtor>,
    /// `signaling_store_errors_total{operation}`.
    pub store_errors: Family<L1, Counter>,
    /// `signaling_registry_rejoins_total`.
    pub registry_rejoins: Counter,
    /// `signaling_turn_credentials_issued_total`.
    pub turn_credentials: Counter,
    /// `signaling_dropped_messages_total{reason}`.
    pub dropped: Family<L1, Counter>,
    /// `signaling_slow_consumers_total`.
    pub slow_consumers: Counter,
    /// `signaling_http_requests_total{route,status}`.
    pub http_requests: Family<L2, Counter>,
    /// `signaling_sfu_links`.
    pub sfu_links: Gauge,
    /// `signaling_sfu_link_errors_total`.
    pub sfu_link_errors: Counter,
    /// `signaling_rooms_expired_total`.
    pub rooms_expired: Counter,
    /// `signaling_tls_handshake_failures_total`.
    pub tls_handshake_failures: Counter,
    /// `signaling_refused_requests_total{reason}`.
    pub refused: Family<L1, Counter>,
}

impl Default for SignalingMetrics {
    fn default() -> Self {
        SignalingMetrics {
            connections: Gauge::default(),
            load_ratio: Gauge::default(),
            rooms: Gauge::default(),
            messages: Family::default(),
            errors: Family::default(),
            joins: Family::default(),
            store_latency: Family::new_with_constructor(store_histogram as HistogramCtor),
            store_errors: Family::default(),
            registry_rejoins: Counter::default(),
            turn_credentials: Counter::default(),
            dropped: Family::default(),
            slow_consumers: Counter::default(),
            http_requests: Family::default(),
            sfu_links: Gauge::default(),
            sfu_link_errors: Counter::default(),
            rooms_expired: Counter::default(),
            tls_handshake_failures: Counter::default(),
            refused: Family::default(),
        }
    }
}

impl SignalingMetrics {
    /// Creates the metrics, registers them in `registry` and pre-creates the known series at 0.
    pub fn register(registry: &mut Registry) -> Self {
        let m = SignalingMetrics::default();
        turnkey_runtime::metrics_http::register_build_info(registry);
        registry.register(
            names::CONNECTIONS,
            "Open WebSocket connections",
            m.connections.clone(),
        );
        registry.register(
            "signaling_load_ratio",
            "Fraction of the node's capacity in use (0..1): connections against capacity_connections",
            m.load_ratio.clone(),
        );
        registry.register(
            names::ROOMS,
            "Rooms with participants connected to this node",
            m.rooms.clone(),
        );
        registry.register(
            names::MESSAGES,
            "Client messages accepted, by type",
            m.messages.clone(),
        );
        registry.register(
            names::ERRORS,
            "Error frames sent, by code name",
            m.errors.clone(),
        );
        registry.register(names::JOINS, "Joins, by result", m.joins.clone());
        registry.register(
            names::STORE_LATENCY,
            "Store operation latency in seconds",
            m.store_latency.clone(),
        );
        registry.register(
            names::STORE_ERRORS,
            "Store operations that failed or timed out, by operation",
            m.store_errors.clone(),
        );
        registry.register(
            names::REGISTRY_REJOINS,
            "Times this node found its registry entry gone while serving and registered again",
            m.registry_rejoins.clone(),
        );
        registry.register(
            names::TURN_CREDENTIALS,
            "TURN REST credentials minted",
            m.turn_credentials.clone(),
        );
        registry.register(
            names::DROPPED,
            "Frames dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            names::SLOW_CONSUMERS,
            "Connections closed because their outbound queue overflowed",
            m.slow_consumers.clone(),
        );
        registry.register(
            names::HTTP_REQUESTS,
            "HTTP API requests, by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            names::SFU_LINKS,
            "Open participant links to SFU nodes",
            m.sfu_links.clone(),
        );
        registry.register(
            names::SFU_LINK_ERRORS,
            "SFU links that could not be opened or were lost while their participant was in the room",
            m.sfu_link_errors.clone(),
        );
        registry.register(
            names::ROOMS_EXPIRED,
            "Rooms deleted after room_idle_secs empty",
            m.rooms_expired.clone(),
        );
        registry.register(
            names::TLS_HANDSHAKE_FAILURES,
            "HTTPS handshakes that failed or did not finish within 10 s",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            names::REFUSED,
            "HTTP requests and WebSocket joins refused before any work, by reason",
            m.refused.clone(),
        );
        for r in REFUSE_REASONS {
            let _ = m.refused.get_or_create(&[("reason", r)]);
        }
        for t in CLIENT_TYPES {
            let _ = m.messages.get_or_create(&[("type", t)]);
        }
        for c in ErrorCode::ALL {
            let _ = m.errors.get_or_create(&[("code", c.name())]);
        }
        for r in JOIN_RESULTS {
            let _ = m.joins.get_or_create(&[("result", r)]);
        }
        for r in DROP_REASONS {
            let _ = m.dropped.get_or_create(&[("reason", r)]);
        }
        for op in STORE_OPS {
            let _ = m.store_latency.get_or_create(&[("operation", op)]);
            let _ = m.store_errors.get_or_create(&[("operation", op)]);
        }
        m
    }

    /// Counts an `error` frame.
    pub fn error(&self, code: ErrorCode) {
        self.errors.get_or_create(&[("code", code.name())]).inc();
    }

    /// Counts a join.
    pub fn join(&self, result: &'static str) {
        self.joins.get_or_create(&[("result", result)]).inc();
    }

    /// Counts a request refused for `reason` (one of [`REFUSE_REASONS`]).
    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a dropped frame.
    pub fn drop_frame(&self, reason: &'static str) {
        self.dropped.get_or_create(&[("reason", reason)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_series_exist_at_zero() {
        let mut r = Registry::default();
        let m = SignalingMetrics::register(&mut r);
        m.error(ErrorCode::RoomFull);
        let text = turnkey_runtime::metrics_http::render(&r);
        for needle in [
            "signaling_connections 0",
            "signaling_messages_total{type=\"offer\"} 0",
            "signaling_errors_total{code=\"room_full\"} 1",
            "signaling_joins_total{result=\"ok\"} 0",
            "signaling_turn_credentials_issued_total 0",
            "signaling_store_latency_seconds_count{operation=\"publish\"} 0",
            "signaling_store_errors_total{operation=\"heartbeat\"} 0",
            "signaling_registry_rejoins_total 0",
            "signaling_dropped_messages_total{reason=\"queue_full\"} 0",
            "signaling_sfu_links 0",
            "signaling_sfu_link_errors_total 0",
            "signaling_errors_total{code=\"sfu_unavailable\"} 0",
            "signaling_messages_total{type=\"sfu\"} 0",
            "signaling_refused_requests_total{reason=\"origin\"} 0",
            "signaling_refused_requests_total{reason=\"room_name\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing in\n{text}");
        }
    }
}
