//! The figures of one run, as text for people and as one JSON line for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bench_support::report::{join_pairs, json_line, mib, opt_f, opt_unit, percent_of_core, us_per};
use bench_support::stats::Quantiles;
use serde::Serialize;

use crate::run::{BenchConfig, Samples};
use crate::stats::{Checks, Stats};

/// Result of one run. Rates are per second of the measurement window. A steady message counts
/// if it was sent inside the window; "received" means relayed to and read by its addressee
/// (each relayed message has exactly one).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Session server URL.
    pub server: String,
    /// Clients asked for.
    pub connections: usize,
    /// Clients per room.
    pub room_size: usize,
    /// New clients per second during the ramp.
    pub connect_rate: f64,
    /// Seconds from the first client to the last one joined or failed.
    pub setup_secs: f64,
    /// Measurement window.
    pub duration_secs: f64,

    /// WebSocket handshakes that succeeded.
    pub opened: u64,
    /// Clients that received `joined`.
    pub joined: u64,
    /// Clients that never got in.
    pub failed: u64,
    /// Of those, by reason.
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Joined connections the server ended (or that broke) before the run did.
    pub dropped: u64,
    /// Their close codes (1006: no close frame).
    pub drop_close_codes: BTreeMap<u16, u64>,
    /// Connections joined and open in the middle of the window.
    pub held: usize,
    /// `leave` answered at the end.
    pub left_cleanly: u64,

    /// Steady messages per second asked for (held connections × rate).
    pub target_msgs_per_sec: f64,
    /// Steady messages sent per second in the window.
    pub sent_msgs_per_sec: f64,
    /// Of those, relayed and received, per second.
    pub received_msgs_per_sec: f64,
    /// Steady messages sent in the window.
    pub steady_sent: u64,
    /// Of those, received.
    pub steady_received: u64,
    /// Steady sends skipped because a client fell > 1 s behind.
    pub steady_lagged: u64,
    /// Send → receive time of window steady messages.
    pub latency: Quantiles,

    /// Negotiation messages sent (offer/answer, candidates, end-of-candidates).
    pub burst_sent: u64,
    /// Negotiation messages received.
    pub burst_received: u64,
    /// Send → receive time of negotiation messages.
    pub burst_latency: Quantiles,
    /// Clients that finished negotiating with all their peers.
    pub negotiated: u64,
    /// Room full → negotiation finished, per client.
    pub negotiation_time: Quantiles,
    /// HTTP join exchange, not counting the wait for a pooled connection.
    pub http_join_time: Quantiles,
    /// WebSocket connect + handshake + `join` → `joined`.
    pub ws_join_time: Quantiles,
    /// Pings sent.
    pub pings: u64,
    /// Pongs received.
    pub pongs: u64,
    /// `ping` → `pong`.
    pub ping_rtt: Quantiles,

    /// `error` frames received, by code.
    pub errors: BTreeMap<u16, u64>,
    /// Consistency checks and byte counts (flattened into the JSON line).
    #[serde(flatten)]
    pub checks: Checks,

    /// Server RSS before the first connection.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS in the middle of the window.
    pub server_rss_held_bytes: Option<u64>,
    /// (held − before) / held connections.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// Server CPU time in the window.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU in % of one core.
    pub server_cpu_percent: Option<f64>,
    /// Server CPU per received steady message (plus its share of pings).
    pub server_cpu_us_per_msg: Option<f64>,
    /// This generator's RSS in the middle of the window.
    pub bench_rss_held_bytes: Option<u64>,
    /// This generator's CPU in % of one core during the window.
    pub bench_cpu_percent: Option<f64>,
}

impl Report {
    /// Builds the report from the merged counters and the /proc samples.
    pub fn new(cfg: &BenchConfig, setup: Duration, s: &Stats, samples: &Samples) -> Self {
        let window = cfg.duration.as_secs_f64();
        let wall = samples
            .end
            .at
            .duration_since(samples.start.at)
            .as_secs_f64()
            .max(1e-9);
        let server_cpu = samples.end.server.cpu_secs_since(&samples.start.server);
        let held = samples.middle.held;
        let rss_per_connection = match (
            samples.before.server.rss_bytes,
            samples.middle.server.rss_bytes,
        ) {
            (Some(b), Some(m)) if held > 0 => Some((m as f64 - b as f64) / held as f64),
            _ => None,
        };
        Self {
            server: cfg.server.to_string(),
            connections: cfg.connections,
            room_size: cfg.room_size,
            connect_rate: cfg.connect_rate,
            setup_secs: setup.as_secs_f64(),
            duration_secs: window,
            opened: s.opened,
            joined: s.joined,
            failed: s.failed_total(),
            failed_by_reason: s.failed.clone(),
            dropped: s.dropped,
            drop_close_codes: s.drop_close_codes.clone(),
            held,
            left_cleanly: s.left_cleanly,
            target_msgs_per_sec: held as f64 * cfg.rate,
            sent_msgs_per_sec: s.steady_sent as f64 / window,
            received_msgs_per_sec: s.steady_received as f64 / window,
            steady_sent: s.steady_sent,
            steady_received: s.steady_received,
            steady_lagged: s.steady_lagged,
            latency: (&s.latency).into(),
            burst_sent: s.burst_sent,
            burst_received: s.burst_received,
            burst_latency: (&s.burst_latency).into(),
            negotiated: s.negotiated,
            negotiation_time: (&s.negotiation_time).into(),
            http_join_time: (&s.http_join_time).into(),
            ws_join_time: (&s.ws_join_time).into(),
            pings: s.pings,
            pongs: s.pongs,
            ping_rtt: (&s.ping_rtt).into(),
            errors: s.errors.clone(),
            checks: s.checks.clone(),
            server_rss_before_bytes: samples.before.server.rss_bytes,
            server_rss_held_bytes: samples.middle.server.rss_bytes,
            server_rss_per_connection_bytes: rss_per_connection,
            server_cpu_secs: server_cpu,
            server_cpu_percent: server_cpu.map(|c| percent_of_core(c, wall)),
            server_cpu_us_per_msg: us_per(server_cpu, s.steady_received),
            bench_rss_held_bytes: samples.middle.bench.rss_bytes,
            bench_cpu_percent: samples
                .end
                .bench
                .cpu_secs_since(&samples.start.bench)
                .map(|c| percent_of_core(c, wall)),
        }
    }

    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        json_line(self)
    }
}

fn map<K: fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    join_pairs(m, ": ")
}

fn opt_mib(b: Option<u64>) -> String {
    opt_unit(b.map(mib), 1, "MiB")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "signaling-bench {}: {} clients in rooms of {}, ramp {:.0}/s (setup {:.1} s), {:.1} s window",
            self.server,
            self.connections,
            self.room_size,
            self.connect_rate,
            self.setup_secs,
            self.duration_secs
        )?;
        writeln!(
            f,
            "  connections  opened {}  joined {}  failed {} ({})  dropped {} (close codes: {})  held {}  left cleanly {}",
            self.opened,
            self.joined,
            self.failed,
            map(&self.failed_by_reason),
            self.dropped,
            map(&self.drop_close_codes),
            self.held,
            self.left_cleanly
        )?;
        writeln!(
            f,
            "  steady       sent {:.0} msg/s (target {:.0})  received {:.0} msg/s  ({} of {}; lagged {})",
            self.sent_msgs_per_sec,
            self.target_msgs_per_sec,
            self.received_msgs_per_sec,
            self.steady_received,
            self.steady_sent,
            self.steady_lagged
        )?;
        writeln!(f, "  relay latency  {}", self.latency)?;
        writeln!(
            f,
            "  negotiation  {} sent, {} received, latency {}; {} clients done, room full → done {}",
            self.burst_sent,
            self.burst_received,
            self.burst_latency,
            self.negotiated,
            self.negotiation_time
        )?;
        writeln!(
            f,
            "  setup        HTTP join {}; WebSocket + join → joined {}",
            self.http_join_time, self.ws_join_time
        )?;
        writeln!(
            f,
            "  ping         {} sent, {} pongs, RTT {}",
            self.pings, self.pongs, self.ping_rtt
        )?;
        writeln!(
            f,
            "  errors       {}; misrouted {}, no probe {}, from unannounced senders {} (announced later {}), announced twice {}, glare {}, unparsable {}, unexpected {}, participant-left {}, room-closed {}",
            map(&self.errors),
            self.checks.misrouted,
            self.checks.no_probe,
            self.checks.unknown_sender,
            self.checks.announced_late,
            self.checks.announced_twice,
            self.checks.glare,
            self.checks.unparsable,
            self.checks.unexpected,
            self.checks.participant_left,
            self.checks.room_closed
        )?;
        writeln!(
            f,
            "  server       RSS {} before, {} held = {} KiB per connection; CPU {} s ({} % of a core), {} us per received message",
            opt_mib(self.server_rss_before_bytes),
            opt_mib(self.server_rss_held_bytes),
            opt_f(self.server_rss_per_connection_bytes.map(|b| b / 1024.0), 1),
            opt_f(self.server_cpu_secs, 2),
            opt_f(self.server_cpu_percent, 0),
            opt_f(self.server_cpu_us_per_msg, 1)
        )?;
        write!(
            f,
            "  generator    RSS {} held, CPU {} % of a core; {:.1} MB sent, {:.1} MB received (whole run)",
            opt_mib(self.bench_rss_held_bytes),
            opt_f(self.bench_cpu_percent, 0),
            self.checks.bytes_sent as f64 / 1e6,
            self.checks.bytes_received as f64 / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bench_support::procfs::ProcessSample;

    use super::*;
    use crate::run::Sample;

    const MIB: u64 = 1 << 20;

    fn sample(at: Instant, server: (u64, u64), bench: (u64, u64), held: usize) -> Sample {
        let process = |(cpu_ms, rss_bytes): (u64, u64)| ProcessSample {
            cpu: Some(Duration::from_millis(cpu_ms)),
            rss_bytes: Some(rss_bytes),
        };
        Sample {
            at,
            server: process(server),
            bench: process(bench),
            held,
        }
    }

    #[test]
    fn figures_of_a_run_as_text_and_json() {
        let cfg = BenchConfig {
            server: "http://127.0.0.1:8080".parse().unwrap(),
            server_addr: "127.0.0.1:8080".parse().unwrap(),
            api_key: "key:secret".to_owned(),
            connections: 8,
            room_size: 4,
            rate: 10.0,
            message_bytes: 200,
            sdp_bytes: 2000,
            candidates: 2,
            ping_interval: Duration::from_secs(1),
            duration: Duration::from_secs(2),
            settle: Duration::ZERO,
            connect_rate: 100.0,
            setup_timeout: Duration::from_secs(5),
            http_connections: 2,
            source_ips: Vec::new(),
            server_pid: None,
            room_prefix: "bench".to_owned(),
            verbose: false,
        };
        let mut s = Stats {
            opened: 8,
            joined: 7,
            dropped: 1,
            left_cleanly: 6,
            steady_sent: 100,
            steady_received: 90,
            burst_sent: 12,
            burst_received: 12,
            negotiated: 7,
            pings: 3,
            pongs: 3,
            ..Stats::default()
        };
        s.fail("http_401");
        s.drop_close_codes.insert(1006, 1);
        s.errors.insert(4009, 2);
        s.checks.bytes_sent = 2_500_000;
        s.checks.bytes_received = 3_000_000;
        s.latency.record(1000);
        s.latency.record(2000);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let samples = Samples {
            before: sample(t0, (0, 10 * MIB), (0, MIB), 0),
            start: sample(at(1), (1000, 10 * MIB), (100, MIB), 7),
            middle: sample(at(2), (1200, 10 * MIB + 7 * 4096), (300, 20 * MIB), 7),
            end: sample(at(3), (1500, 10 * MIB), (600, MIB), 7),
        };
        let r = Report::new(&cfg, Duration::from_millis(500), &s, &samples);
        let expected = [
            format!(
                "signaling-bench {}: 8 clients in rooms of 4, ramp 100/s (setup 0.5 s), 2.0 s window",
                cfg.server
            ),
            "  connections  opened 8  joined 7  failed 1 (http_401: 1)  dropped 1 (close codes: 1006: 1)  held 7  left cleanly 6".to_owned(),
            "  steady       sent 50 msg/s (target 70)  received 45 msg/s  (90 of 100; lagged 0)".to_owned(),
            "  relay latency  p50 1.00 ms p99 2.00 ms max 2.00 ms (n=2)".to_owned(),
            "  negotiation  12 sent, 12 received, latency p50 - p99 - max - (n=0); 7 clients done, room full → done p50 - p99 - max - (n=0)".to_owned(),
            "  setup        HTTP join p50 - p99 - max - (n=0); WebSocket + join → joined p50 - p99 - max - (n=0)".to_owned(),
            "  ping         3 sent, 3 pongs, RTT p50 - p99 - max - (n=0)".to_owned(),
            "  errors       4009: 2; misrouted 0, no probe 0, from unannounced senders 0 (announced later 0), announced twice 0, glare 0, unparsable 0, unexpected 0, participant-left 0, room-closed 0".to_owned(),
            "  server       RSS 10.0 MiB before, 10.0 MiB held = 4.0 KiB per connection; CPU 0.50 s (25 % of a core), 5555.6 us per received message".to_owned(),
            "  generator    RSS 20.0 MiB held, CPU 25 % of a core; 2.5 MB sent, 3.0 MB received (whole run)".to_owned(),
        ];
        assert_eq!(r.to_string(), expected.join("\n"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(json["latency"]["p50_us"], 1000);
        assert_eq!(json["latency"]["count"], 2);
        assert_eq!(json["ping_rtt"]["p50_us"], serde_json::Value::Null);
        assert_eq!(json["server_rss_per_connection_bytes"], 4096.0);
        assert_eq!(json["server_cpu_secs"], 0.5);
        assert_eq!(json["server_cpu_percent"], 25.0);
        assert_eq!(json["bench_cpu_percent"], 25.0);
        assert_eq!(json["bench_rss_held_bytes"], 20 * MIB);
        assert_eq!(json["failed_by_reason"]["http_401"], 1);
        assert_eq!(json["bytes_sent"], 2_500_000);
    }
}
