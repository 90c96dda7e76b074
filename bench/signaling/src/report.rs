//! The figures of one run, as text for people and as one JSON line for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::run::{BenchConfig, Samples};
use crate::stats::{Checks, LatencyHistogram, Stats};

/// Summary of one latency histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: Option<u64>,
    /// 99th percentile.
    pub p99_us: Option<u64>,
    /// Maximum.
    pub max_us: Option<u64>,
    /// Mean.
    pub mean_us: Option<f64>,
}

impl From<&LatencyHistogram> for Quantiles {
    fn from(h: &LatencyHistogram) -> Self {
        Self {
            count: h.count(),
            p50_us: h.quantile_us(0.5),
            p99_us: h.quantile_us(0.99),
            max_us: h.max_us(),
            mean_us: h.mean_us(),
        }
    }
}

impl fmt::Display for Quantiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p99 {} max {} (n={})",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.count
        )
    }
}

fn ms(us: Option<u64>) -> String {
    us.map_or_else(
        || "-".to_owned(),
        |us| format!("{:.2} ms", us as f64 / 1000.0),
    )
}

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
        let cpu = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        let server_cpu = cpu(samples.start.server_cpu, samples.end.server_cpu);
        let held = samples.middle.held;
        let rss_per_connection = match (samples.before.server_rss, samples.middle.server_rss) {
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
            server_rss_before_bytes: samples.before.server_rss,
            server_rss_held_bytes: samples.middle.server_rss,
            server_rss_per_connection_bytes: rss_per_connection,
            server_cpu_secs: server_cpu,
            server_cpu_percent: server_cpu.map(|c| 100.0 * c / wall),
            server_cpu_us_per_msg: server_cpu
                .filter(|_| s.steady_received > 0)
                .map(|c| c * 1e6 / s.steady_received as f64),
            bench_rss_held_bytes: samples.middle.bench_rss,
            bench_cpu_percent: cpu(samples.start.bench_cpu, samples.end.bench_cpu)
                .map(|c| 100.0 * c / wall),
        }
    }

    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn map<K: fmt::Display>(m: &BTreeMap<K, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn mib(b: Option<u64>) -> String {
    b.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
    )
}

fn opt_f(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
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
            mib(self.server_rss_before_bytes),
            mib(self.server_rss_held_bytes),
            opt_f(self.server_rss_per_connection_bytes.map(|b| b / 1024.0), 1),
            opt_f(self.server_cpu_secs, 2),
            opt_f(self.server_cpu_percent, 0),
            opt_f(self.server_cpu_us_per_msg, 1)
        )?;
        write!(
            f,
            "  generator    RSS {} held, CPU {} % of a core; {:.1} MB sent, {:.1} MB received (whole run)",
            mib(self.bench_rss_held_bytes),
            opt_f(self.bench_cpu_percent, 0),
            self.checks.bytes_sent as f64 / 1e6,
            self.checks.bytes_received as f64 / 1e6
        )
    }
}
