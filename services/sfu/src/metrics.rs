//! SFU metrics (Prometheus). Names are constants; no participant or room names as labels.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `sfu_rooms` | gauge | |
//! | `sfu_participants` | gauge | |
//! | `sfu_tracks` | gauge | `kind` (`audio`, `video`) |
//! | `sfu_forwarded_packets_total` | counter | |
//! | `sfu_forwarded_bytes_total` | counter | |
//! | `sfu_nack_total` | counter | (NACK packets received from subscribers) |
//! | `sfu_retransmitted_packets_total` | counter | |
//! | `sfu_nack_unanswered_total` | counter | `reason` (`missing`: the sequence number is no longer in the send history, sized by RTT and rate; `throttled`: NACKed again within one RTT of its last retransmission, or after it was already sent again 3 times) |
//! | `sfu_nack_requested_total` | counter | (sequence numbers asked of publishers again in generic NACKs, RFC 4585 §6.2.1: each missing packet every 100 ms, at most 10 times) |
//! | `sfu_nack_history_packets` | gauge | `worker` (packets held for retransmission over every subscriber) |
//! | `sfu_pli_total` | counter | `direction` (`received` from subscribers, `sent` to publishers) |
//! | `sfu_layer_switches_total` | counter | |
//! | `sfu_bandwidth_estimate_bps` | histogram | (subscriber estimates, sampled every 500 ms) |
//! | `sfu_bad_input_total` | counter | `kind` (`packet`, `ssrc`: SRTP/SRTCP of an SSRC beyond the PC's 64 or not authenticated, never handed to rtc; `sdp`, `message`, `unroutable`, `write`, `feedback`: transport-wide feedback claiming more packets than were sent) |
//! | `sfu_data_messages_total` | counter | |
//! | `sfu_data_messages_dropped_total` | counter | `reason` (`too_large`: over `data_message_max_bytes`; `rate_limited`: over `data_messages_per_sec`/`data_message_burst` of the sender) |
//! | `sfu_ice_tcp_closed_total` | counter | `reason` (`handshake_timeout`: no ICE within `ice_tcp_handshake_timeout_secs`; `per_ip_limit`, `total_limit`: refused at accept by `ice_tcp_max_pending_per_ip` / `ice_tcp_max_pending`; `pc_gone`: its peer connection was removed) |
//! | `sfu_ice_tcp_pending` | gauge | (ICE-TCP connections that have not completed ICE yet) |
//! | `sfu_ice_tcp_established_total` | counter | (ICE-TCP connections on which ICE completed) |
//! | `sfu_active_speaker_changes_total` | counter | |
//! | `sfu_ice_timeouts_total` | counter | |
//! | `sfu_registry_heartbeat_failures_total` | counter | (heartbeats into the registry that failed or took longer than the 5 s period; each is tried again 1.25 s later; three periods without one and placement no longer sees the node) |
//! | `sfu_dtls_flights_resent_total` | counter | | DTLS handshake flights sent again because the peer repeated its own (RFC 6347 §4.2.4, done beside rtc-dtls) |
//! | `sfu_direct_send_total` | counter | `result` (subscribe PCs whose RTP the worker protects and sends itself, not rtc's write pipeline: `engaged` once their SRTP key is verified against rtc's own packets; `refused`: no key candidate verified, rtc keeps sending; `dropped`: a new DTLS handshake changed the keys, back to rtc) |
//! | `sfu_direct_packets_total` | counter | (RTP packets, retransmissions included, the worker protected and sent itself) |
//! | `sfu_direct_receive_total` | counter | `result` (publish PCs whose media the worker opens itself, past rtc's read pipeline: `engaged` once the publisher's SRTP key is verified against its own packets; `refused`: no key candidate opened them with AES-GCM, rtc keeps reading; `dropped`: a new DTLS handshake changed the keys, back to rtc) |
//! | `sfu_direct_received_packets_total` | counter | (publishers' RTP packets the worker opened itself) |
//! | `sfu_direct_rtcp_total` | counter | `result` (subscribe PCs whose SRTCP the worker opens itself, past rtc's read pipeline: `engaged` once the subscriber's SRTCP key is verified against its own packets, our own key left out; `refused`: no other key candidate opened them, rtc keeps reading) |
//! | `sfu_direct_rtcp_packets_total` | counter | (subscribers' compound RTCP packets the worker opened itself) |
//! | `sfu_links` | gauge | |
//! | `sfu_worker_participants` | gauge | `worker` |
//! | `sfu_load_ratio` | gauge | (fraction of the node's capacity in use, 0..1: the larger of the busiest worker's busy fraction over the last second and the forwarded bit rate against `capacity_bps`; what room placement compares) |
//! | `sfu_worker_busy_seconds_total` | counter | `worker` (time spent processing, per event loop) |
//! | `sfu_send_failures_total` | counter | `reason` (`buffer_full`: the media socket's send buffer was full, the datagram was dropped; `error`: the kernel refused it otherwise, e.g. an ICMP error remembered by the socket) |
//! | `sfu_forwarding_delay_seconds` | histogram | (per UDP datagram sent in a wake-up that read datagrams: from that read to the end of the sends; the SFU's own added latency, without the wait in the socket's receive queue) |

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// One label with an owned value (the worker index).
pub type LW = [(&'static str, String); 1];
/// One static label.
pub type L1 = [(&'static str, &'static str); 1];

/// Upper bounds of `sfu_forwarding_delay_seconds` buckets, seconds.
pub const FORWARDING_DELAY_BUCKETS: [f64; 12] = [
    10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 25e-3, 100e-3,
];

/// `sfu_data_messages_dropped_total` reasons.
pub const DATA_DROP_REASONS: [&str; 2] = ["too_large", "rate_limited"];

/// `sfu_direct_send_total` and `sfu_direct_receive_total` results.
pub const DIRECT_SEND_RESULTS: [&str; 3] = ["engaged", "refused", "dropped"];

/// `sfu_direct_rtcp_total` results (the PC's send side going back to rtc takes it along).
pub const DIRECT_RTCP_RESULTS: [&str; 2] = ["engaged", "refused"];

/// `sfu_ice_tcp_closed_total` reasons.
pub const ICE_TCP_CLOSE_REASONS: [&str; 4] = [
    "handshake_timeout",
    "per_ip_limit",
    "total_limit",
    "pc_gone",
];

/// Handles to every SFU metric.
#[derive(Clone, Debug)]
pub struct SfuMetrics {
    /// `sfu_rooms`.
    pub rooms: Gauge,
    /// `sfu_participants`.
    pub participants: Gauge,
    /// `sfu_tracks{kind}`.
    pub tracks: Family<L1, Gauge>,
    /// `sfu_forwarded_packets_total`.
    pub forwarded_packets: Counter,
    /// `sfu_forwarded_bytes_total`.
    pub forwarded_bytes: Counter,
    /// `sfu_nack_total`.
    pub nack: Counter,
    /// `sfu_retransmitted_packets_total`.
    pub retransmitted: Counter,
    /// `sfu_nack_unanswered_total{reason}`.
    pub nack_unanswered: Family<L1, Counter>,
    /// `sfu_nack_requested_total`.
    pub nack_requested: Counter,
    /// `sfu_nack_history_packets{worker}`.
    pub nack_history_packets: Family<LW, Gauge>,
    /// `sfu_pli_total{direction}`.
    pub pli: Family<L1, Counter>,
    /// `sfu_layer_switches_total`.
    pub layer_switches: Counter,
    /// `sfu_bandwidth_estimate_bps`.
    pub bwe: Histogram,
    /// `sfu_bad_input_total{kind}`.
    pub bad_input: Family<L1, Counter>,
    /// `sfu_data_messages_total`.
    pub data_messages: Counter,
    /// `sfu_data_messages_dropped_total{reason}`.
    pub data_dropped: Family<L1, Counter>,
    /// `sfu_ice_tcp_closed_total{reason}`.
    pub ice_tcp_closed: Family<L1, Counter>,
    /// `sfu_ice_tcp_pending`.
    pub ice_tcp_pending: Gauge,
    /// `sfu_ice_tcp_established_total`.
    pub ice_tcp_established: Counter,
    /// `sfu_active_speaker_changes_total`.
    pub speaker_changes: Counter,
    /// `sfu_ice_timeouts_total`.
    pub ice_timeouts: Counter,
    /// `sfu_registry_heartbeat_failures_total`.
    pub registry_heartbeat_failures: Counter,
    /// `sfu_dtls_flights_resent_total`.
    pub dtls_flights_resent: Counter,
    /// `sfu_direct_send_total{result}`.
    pub direct_send: Family<L1, Counter>,
    /// `sfu_direct_packets_total`.
    pub direct_packets: Counter,
    /// `sfu_direct_receive_total{result}`.
    pub direct_receive: Family<L1, Counter>,
    /// `sfu_direct_received_packets_total`.
    pub direct_received_packets: Counter,
    /// `sfu_direct_rtcp_total{result}`.
    pub direct_rtcp: Family<L1, Counter>,
    /// `sfu_direct_rtcp_packets_total`.
    pub direct_rtcp_packets: Counter,
    /// `sfu_links`.
    pub links: Gauge,
    /// `sfu_worker_participants{worker}`.
    pub worker_participants: Family<LW, Gauge>,
    /// `sfu_forwarding_delay_seconds`.
    pub forwarding_delay: Histogram,
    /// `sfu_load_ratio`.
    pub load_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// `sfu_send_failures_total{reason}`.
    pub send_failures: Family<L1, Counter>,
    /// `sfu_worker_busy_seconds_total{worker}`.
    pub worker_busy: Family<LW, Counter<f64, std::sync::atomic::AtomicU64>>,
}

impl SfuMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            rooms: Gauge::default(),
            participants: Gauge::default(),
            tracks: Family::default(),
            forwarded_packets: Counter::default(),
            forwarded_bytes: Counter::default(),
            nack: Counter::default(),
            retransmitted: Counter::default(),
            nack_unanswered: Family::default(),
            nack_requested: Counter::default(),
            nack_history_packets: Family::default(),
            pli: Family::default(),
            layer_switches: Counter::default(),
            bwe: Histogram::new([
                50e3, 100e3, 200e3, 300e3, 500e3, 750e3, 1e6, 1.5e6, 2e6, 3e6, 5e6, 10e6,
            ]),
            bad_input: Family::default(),
            data_messages: Counter::default(),
            data_dropped: Family::default(),
            ice_tcp_closed: Family::default(),
            ice_tcp_pending: Gauge::default(),
            ice_tcp_established: Counter::default(),
            speaker_changes: Counter::default(),
            ice_timeouts: Counter::default(),
            registry_heartbeat_failures: Counter::default(),
            dtls_flights_resent: Counter::default(),
            direct_send: Family::default(),
            direct_packets: Counter::default(),
            direct_receive: Family::default(),
            direct_received_packets: Counter::default(),
            direct_rtcp: Family::default(),
            direct_rtcp_packets: Counter::default(),
            links: Gauge::default(),
            worker_participants: Family::default(),
            worker_busy: Family::default(),
            forwarding_delay: Histogram::new(FORWARDING_DELAY_BUCKETS),
            load_ratio: Gauge::default(),
            send_failures: Family::default(),
        };
        for k in ["audio", "video"] {
            let _ = m.tracks.get_or_create(&[("kind", k)]);
        }
        for d in ["received", "sent"] {
            let _ = m.pli.get_or_create(&[("direction", d)]);
        }
        for k in [
            "packet",
            "ssrc",
            "sdp",
            "message",
            "unroutable",
            "write",
            "feedback",
        ] {
            let _ = m.bad_input.get_or_create(&[("kind", k)]);
        }
        for r in DATA_DROP_REASONS {
            let _ = m.data_dropped.get_or_create(&[("reason", r)]);
        }
        for r in DIRECT_SEND_RESULTS {
            let _ = m.direct_send.get_or_create(&[("result", r)]);
            let _ = m.direct_receive.get_or_create(&[("result", r)]);
        }
        for r in DIRECT_RTCP_RESULTS {
            let _ = m.direct_rtcp.get_or_create(&[("result", r)]);
        }
        for r in ICE_TCP_CLOSE_REASONS {
            let _ = m.ice_tcp_closed.get_or_create(&[("reason", r)]);
        }
        registry.register("sfu_rooms", "Rooms hosted", m.rooms.clone());
        registry.register(
            "sfu_participants",
            "Participants connected",
            m.participants.clone(),
        );
        registry.register("sfu_tracks", "Published tracks by kind", m.tracks.clone());
        registry.register(
            "sfu_forwarded_packets",
            "RTP packets forwarded to subscribers",
            m.forwarded_packets.clone(),
        );
        registry.register(
            "sfu_forwarded_bytes",
            "RTP bytes forwarded to subscribers",
            m.forwarded_bytes.clone(),
        );
        registry.register(
            "sfu_nack",
            "NACK packets received from subscribers",
            m.nack.clone(),
        );
        registry.register(
            "sfu_retransmitted_packets",
            "RTP packets retransmitted (RTX) after a NACK",
            m.retransmitted.clone(),
        );
        registry.register(
            "sfu_nack_unanswered",
            "NACKed sequence numbers not retransmitted, by reason",
            m.nack_unanswered.clone(),
        );
        registry.register(
            "sfu_nack_requested",
            "Sequence numbers asked of publishers again in generic NACKs",
            m.nack_requested.clone(),
        );
        registry.register(
            "sfu_nack_history_packets",
            "Packets held for retransmission, per worker",
            m.nack_history_packets.clone(),
        );
        registry.register(
            "sfu_pli",
            "Keyframe requests (PLI/FIR) by direction",
            m.pli.clone(),
        );
        registry.register(
            "sfu_layer_switches",
            "Simulcast layer switches done for subscribers",
            m.layer_switches.clone(),
        );
        registry.register(
            "sfu_bandwidth_estimate_bps",
            "Subscriber bandwidth estimates (GCC over TWCC), bits per second",
            m.bwe.clone(),
        );
        registry.register(
            "sfu_bad_input",
            "Input dropped by kind",
            m.bad_input.clone(),
        );
        registry.register(
            "sfu_data_messages",
            "Data-channel messages relayed (per receiver)",
            m.data_messages.clone(),
        );
        registry.register(
            "sfu_data_messages_dropped",
            "Data-channel messages dropped (too large, or over the sender's rate)",
            m.data_dropped.clone(),
        );
        registry.register(
            "sfu_ice_tcp_closed",
            "ICE-TCP connections closed or refused before or without ICE, by reason",
            m.ice_tcp_closed.clone(),
        );
        registry.register(
            "sfu_ice_tcp_pending",
            "ICE-TCP connections that have not completed ICE yet",
            m.ice_tcp_pending.clone(),
        );
        registry.register(
            "sfu_ice_tcp_established",
            "ICE-TCP connections on which ICE completed",
            m.ice_tcp_established.clone(),
        );
        registry.register(
            "sfu_active_speaker_changes",
            "Active speaker changes announced",
            m.speaker_changes.clone(),
        );
        registry.register(
            "sfu_ice_timeouts",
            "Peer connections whose ICE consent expired",
            m.ice_timeouts.clone(),
        );
        registry.register(
            "sfu_registry_heartbeat_failures",
            "Registry heartbeats that failed or took longer than the heartbeat period",
            m.registry_heartbeat_failures.clone(),
        );
        registry.register(
            "sfu_dtls_flights_resent",
            "DTLS handshake flights sent again because the peer repeated its own",
            m.dtls_flights_resent.clone(),
        );
        registry.register(
            "sfu_direct_send",
            "Subscribe peer connections whose RTP the worker protects and sends itself, by result",
            m.direct_send.clone(),
        );
        registry.register(
            "sfu_direct_packets",
            "RTP packets the worker protected and sent itself",
            m.direct_packets.clone(),
        );
        registry.register(
            "sfu_direct_receive",
            "Publish peer connections whose media the worker opens itself, by result",
            m.direct_receive.clone(),
        );
        registry.register(
            "sfu_direct_received_packets",
            "Publishers' RTP packets the worker opened itself",
            m.direct_received_packets.clone(),
        );
        registry.register(
            "sfu_direct_rtcp",
            "Subscribe peer connections whose SRTCP the worker opens itself, by result",
            m.direct_rtcp.clone(),
        );
        registry.register(
            "sfu_direct_rtcp_packets",
            "Subscribers' compound RTCP packets the worker opened itself",
            m.direct_rtcp_packets.clone(),
        );
        registry.register("sfu_links", "Signaling links open", m.links.clone());
        registry.register(
            "sfu_worker_participants",
            "Participants per worker (event loop)",
            m.worker_participants.clone(),
        );
        registry.register(
            "sfu_load_ratio",
            "Fraction of the node's capacity in use (0..1): busiest worker's busy fraction or forwarded bit rate against capacity_bps, the larger",
            m.load_ratio.clone(),
        );
        registry.register(
            "sfu_send_failures",
            "UDP datagrams the media socket did not send, by reason",
            m.send_failures.clone(),
        );
        registry.register(
            "sfu_forwarding_delay_seconds",
            "Per datagram sent after a read: time from the read to the end of the sends",
            m.forwarding_delay.clone(),
        );
        registry.register(
            "sfu_worker_busy_seconds",
            "Time each worker spent processing",
            m.worker_busy.clone(),
        );
        turnkey_runtime::metrics_http::register_build_info(registry);
        m
    }
}
