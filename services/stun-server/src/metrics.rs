//! The STUN server's Prometheus metrics. Names are constants; counters are exposed with the
//! `_total` suffix that prometheus-client appends.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use stun_proto::binding::{BindingDrop, BindingResult};
use stun_proto::msg::Transport;

/// `stun_binding_requests_total{transport,result}`: Binding requests answered, by transport
/// (`udp`, `tcp`) and result (`success`, `bad_request`, `unknown_attribute`).
pub const BINDING_REQUESTS: &str = "stun_binding_requests";
/// `stun_dropped_packets_total{reason}`: packets and connections dropped without a reply.
/// Reasons: `malformed`, `not_stun`, `rfc3489`, `indication`, `response` (see
/// [`BindingDrop`]), plus [`DROP_TCP_CONNECTION_LIMIT`], [`DROP_TCP_FRAME_TOO_LARGE`] and
/// [`DROP_SEND_FAILED`].
pub const DROPPED_PACKETS: &str = "stun_dropped_packets";
/// `stun_tcp_connections`: TCP connections currently open.
pub const TCP_CONNECTIONS: &str = "stun_tcp_connections";
/// `turnkey_build_info{version}`: always 1.
pub const BUILD_INFO: &str = "turnkey_build_info";

/// Drop reason: a TCP connection refused because the connection limit was reached.
pub const DROP_TCP_CONNECTION_LIMIT: &str = "tcp_connection_limit";
/// Drop reason: a TCP frame announced a length above the per-connection buffer bound; the
/// connection is closed.
pub const DROP_TCP_FRAME_TOO_LARGE: &str = "tcp_frame_too_large";
/// Drop reason: a reply could not be sent (socket error).
pub const DROP_SEND_FAILED: &str = "send_failed";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    transport: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// Handles to the STUN server's metrics; cheap to clone (shared counters).
#[derive(Clone, Debug)]
pub struct StunMetrics {
    binding_requests: Family<RequestLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    tcp_connections: Gauge,
}

impl StunMetrics {
    /// Registers every STUN metric, and `turnkey_build_info`, in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            binding_requests: Family::default(),
            dropped: Family::default(),
            tcp_connections: Gauge::default(),
        };
        registry.register(
            BINDING_REQUESTS,
            "Binding requests answered, by transport and result",
            m.binding_requests.clone(),
        );
        registry.register(
            DROPPED_PACKETS,
            "Packets or connections dropped without a reply, by reason",
            m.dropped.clone(),
        );
        registry.register(
            TCP_CONNECTIONS,
            "TCP connections currently open",
            m.tcp_connections.clone(),
        );
        turnkey_runtime::metrics_http::register_build_info(registry);
        // Export zeros for the common series so dashboards and rate() work from the start.
        for transport in [Transport::Udp, Transport::Tcp] {
            let _ = m.binding_requests.get_or_create(&RequestLabels {
                transport: transport.as_str(),
                result: BindingResult::Success.as_str(),
            });
        }
        for reason in [BindingDrop::Malformed, BindingDrop::NotStun] {
            let _ = m.dropped.get_or_create(&DropLabels {
                reason: reason.as_str(),
            });
        }
        m
    }

    /// Counts one answered Binding request.
    pub fn request(&self, transport: Transport, result: BindingResult) {
        self.requests(transport, result, 1);
    }

    /// Counts `n` answered Binding requests (a TURN worker folding its core's counts).
    pub fn requests(&self, transport: Transport, result: BindingResult, n: u64) {
        self.binding_requests
            .get_or_create(&RequestLabels {
                transport: transport.as_str(),
                result: result.as_str(),
            })
            .inc_by(n);
    }

    /// Counts one packet dropped by the Binding handler.
    pub fn dropped(&self, reason: BindingDrop) {
        self.dropped_n(reason, 1);
    }

    /// Counts `n` packets dropped by the Binding handler.
    pub fn dropped_n(&self, reason: BindingDrop, n: u64) {
        self.dropped
            .get_or_create(&DropLabels {
                reason: reason.as_str(),
            })
            .inc_by(n);
    }

    /// Counts one drop for an I/O-level reason (`DROP_*` constants).
    pub fn dropped_because(&self, reason: &'static str) {
        self.dropped.get_or_create(&DropLabels { reason }).inc();
    }

    /// A TCP connection opened (+1) or closed (-1).
    pub fn tcp_connection_delta(&self, delta: i64) {
        self.tcp_connections.inc_by(delta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let mut registry = Registry::default();
        let m = StunMetrics::register(&mut registry);
        m.request(Transport::Udp, BindingResult::Success);
        m.request(Transport::Tcp, BindingResult::UnknownAttribute);
        m.dropped(BindingDrop::NotStun);
        m.dropped_because(DROP_TCP_CONNECTION_LIMIT);
        m.tcp_connection_delta(1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "stun_binding_requests_total{transport=\"udp\",result=\"success\"} 1",
            "stun_binding_requests_total{transport=\"tcp\",result=\"unknown_attribute\"} 1",
            "stun_dropped_packets_total{reason=\"not_stun\"} 1",
            "stun_dropped_packets_total{reason=\"tcp_connection_limit\"} 1",
            "stun_tcp_connections 1",
            &format!(
                "turnkey_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
