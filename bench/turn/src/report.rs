//! The figures of one run, as text for people and as one JSON line for scripts.

use std::fmt;
use std::time::Duration;

use bench_support::report::{json_line, loss_percent, opt, opt_f, percent_of_core, us_per};
use bench_support::stats::Quantiles;
use serde::Serialize;

use crate::run::{BenchConfig, Sample};
use crate::stats::{ReceiveStats, SendStats};

/// Result of one run. Rates are per second of the measurement window; a "packet" is one probe
/// delivered end to end. With paired allocations (client → server → relay → server → partner
/// client) the server handles each twice, once client→peer and once peer→client; with generator
/// peers once (client → server → peer, or peer → server → client): `relays_per_packet`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Server address.
    pub server: String,
    /// Client-to-server transport.
    pub transport: &'static str,
    /// Allocations.
    pub allocations: usize,
    /// Who the peers are: "pair" (the allocations, in pairs) or "generator" (a socket each).
    pub peers: &'static str,
    /// Relay hops the server makes per delivered probe (2 with pairs, 1 with generator peers).
    pub relays_per_packet: u32,
    /// Application data per ChannelData message.
    pub payload_bytes: u16,
    /// Measurement window.
    pub duration_secs: f64,
    /// Allocation, permission and channel setup time.
    pub setup_secs: f64,
    /// Asked-for rate.
    pub target_pps: f64,
    /// Probes actually sent inside the window, per second.
    pub sent_pps: f64,
    /// Distinct window probes received, per second.
    pub received_pps: f64,
    /// Probes sent inside the window.
    pub sent: u64,
    /// Of those, received.
    pub received: u64,
    /// 100 · (sent − received) / sent.
    pub loss_percent: f64,
    /// Probes received more than once.
    pub duplicates: u64,
    /// Probes that arrived after a later one of the same flow.
    pub reordered: u64,
    /// One-way latency through the relay, median.
    pub latency_p50_us: Option<u64>,
    /// One-way latency, 99th percentile.
    pub latency_p99_us: Option<u64>,
    /// One-way latency, maximum.
    pub latency_max_us: Option<u64>,
    /// One-way latency, mean.
    pub latency_mean_us: Option<f64>,
    /// Payload bytes received per second.
    pub received_payload_bytes_per_sec: f64,
    /// Server CPU time (all threads) during the window.
    pub server_cpu_secs: Option<f64>,
    /// Server CPU as a percentage of one core.
    pub server_cpu_percent: Option<f64>,
    /// Server CPU per delivered probe (`relays_per_packet` relay operations each).
    pub server_cpu_us_per_packet: Option<f64>,
    /// This generator's CPU time during the window.
    pub bench_cpu_secs: Option<f64>,
    /// Busy CPU time of the whole machine during the window minus this generator's: the
    /// server's threads plus kernel work done for it anywhere (softirq, an XDP program).
    pub machine_cpu_secs: Option<f64>,
    /// `machine_cpu_secs` per delivered probe.
    pub machine_cpu_us_per_packet: Option<f64>,
    /// Kernel receive-buffer drops (whole host network namespace, any socket) in the window.
    pub kernel_udp_rcvbuf_drops: Option<u64>,
    /// Of those, drops at the server's UDP sockets (needs --server-pid).
    pub server_socket_drops: Option<u64>,
    /// Of those, drops at this generator's UDP sockets (the generator was too slow to read).
    pub generator_socket_drops: Option<u64>,
    /// Failed sends.
    pub send_errors: u64,
    /// Probes skipped because the generator fell behind.
    pub generator_lagged: u64,
    /// ChannelData that was not a valid probe for its receiver.
    pub malformed: u64,
    /// Other unexpected datagrams.
    pub unexpected: u64,
    /// Failed refresh/permission/channel upkeep transactions during the run.
    pub upkeep_failures: u64,
    /// Allocations whose deletion at the end failed.
    pub delete_failures: u64,
}

impl Report {
    /// Builds the report from the counters and the two samples around the window.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &BenchConfig,
        setup: Duration,
        sent: &SendStats,
        received: &ReceiveStats,
        before: &Sample,
        after: &Sample,
        upkeep_failures: u64,
        delete_failures: u64,
    ) -> Self {
        let window = cfg.duration.as_secs_f64();
        let per_sec = |x: u64| x as f64 / window;
        let server_cpu = after.server.cpu_secs_since(&before.server);
        let bench_cpu = after.bench.cpu_secs_since(&before.bench);
        let machine_cpu = match (before.machine_busy, after.machine_busy, bench_cpu) {
            (Some(b), Some(a), Some(own)) => {
                Some((a.saturating_sub(b).as_secs_f64() - own).max(0.0))
            }
            _ => None,
        };
        let wall = after.at.duration_since(before.at).as_secs_f64();
        let latency = Quantiles::from(&received.latency);
        Self {
            server: cfg.server.to_string(),
            transport: cfg.transport.name(),
            allocations: cfg.allocations,
            peers: cfg.peers.name(),
            relays_per_packet: cfg.peers.relays_per_packet(),
            payload_bytes: cfg.payload_bytes,
            duration_secs: window,
            setup_secs: setup.as_secs_f64(),
            target_pps: cfg.rate_pps,
            sent_pps: per_sec(sent.sent),
            received_pps: per_sec(received.received),
            sent: sent.sent,
            received: received.received,
            loss_percent: loss_percent(sent.sent, received.received),
            duplicates: received.duplicates,
            reordered: received.reordered,
            latency_p50_us: latency.p50_us,
            latency_p99_us: latency.p99_us,
            latency_max_us: latency.max_us,
            latency_mean_us: latency.mean_us,
            received_payload_bytes_per_sec: per_sec(received.received_bytes),
            server_cpu_secs: server_cpu,
            server_cpu_percent: server_cpu.map(|c| percent_of_core(c, wall.max(1e-9))),
            server_cpu_us_per_packet: us_per(server_cpu, received.received),
            bench_cpu_secs: bench_cpu,
            machine_cpu_secs: machine_cpu,
            machine_cpu_us_per_packet: us_per(machine_cpu, received.received),
            kernel_udp_rcvbuf_drops: match (before.udp, after.udp) {
                (Some(b), Some(a)) => Some(a.since(&b).rcvbuf_errors),
                _ => None,
            },
            server_socket_drops: after
                .server_drops
                .zip(before.server_drops)
                .map(|(a, b)| a.saturating_sub(b)),
            generator_socket_drops: after
                .bench_drops
                .zip(before.bench_drops)
                .map(|(a, b)| a.saturating_sub(b)),
            send_errors: sent.errors,
            generator_lagged: sent.lagged,
            malformed: received.malformed,
            unexpected: received.other,
            upkeep_failures,
            delete_failures,
        }
    }

    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        json_line(self)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "turn-bench {} over {}: {} allocations ({}), {} B payload, {:.1} s window (setup {:.2} s)",
            self.server,
            self.transport,
            self.allocations,
            if self.relays_per_packet == 2 {
                format!("{} pairs", self.allocations / 2)
            } else {
                "a peer socket each".to_string()
            },
            self.payload_bytes,
            self.duration_secs,
            self.setup_secs
        )?;
        writeln!(
            f,
            "  offered   {:>10.0} pps (target {:.0}; lagged {}, send errors {})",
            self.sent_pps, self.target_pps, self.generator_lagged, self.send_errors
        )?;
        writeln!(
            f,
            "  received  {:>10.0} pps  {:.2} MB/s payload",
            self.received_pps,
            self.received_payload_bytes_per_sec / 1e6
        )?;
        writeln!(
            f,
            "  loss      {:>10.3} %   ({} of {}; duplicates {}, reordered {})",
            self.loss_percent,
            self.sent - self.received.min(self.sent),
            self.sent,
            self.duplicates,
            self.reordered
        )?;
        writeln!(
            f,
            "  latency   p50 {} us  p99 {} us  max {} us  mean {} us  (one-way through the relay, kernel receive time)",
            opt(self.latency_p50_us),
            opt(self.latency_p99_us),
            opt(self.latency_max_us),
            opt_f(self.latency_mean_us, 1)
        )?;
        writeln!(
            f,
            "  server    cpu {} s ({} % of a core), {} us per delivered packet (= {} relay hop{})",
            opt_f(self.server_cpu_secs, 2),
            opt_f(self.server_cpu_percent, 0),
            opt_f(self.server_cpu_us_per_packet, 2),
            self.relays_per_packet,
            if self.relays_per_packet == 1 { "" } else { "s" }
        )?;
        writeln!(
            f,
            "  machine   cpu {} s besides the generator's, {} us per delivered packet",
            opt_f(self.machine_cpu_secs, 2),
            opt_f(self.machine_cpu_us_per_packet, 2)
        )?;
        writeln!(
            f,
            "  drops     kernel UDP rcvbuf {} (server sockets {}, generator sockets {})",
            opt(self.kernel_udp_rcvbuf_drops),
            opt(self.server_socket_drops),
            opt(self.generator_socket_drops),
        )?;
        write!(
            f,
            "  generator cpu {} s; malformed {}; unexpected {}; upkeep failures {}; delete failures {}",
            opt_f(self.bench_cpu_secs, 2),
            self.malformed,
            self.unexpected,
            self.upkeep_failures,
            self.delete_failures
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bench_support::procfs::ProcessSample;

    use super::*;
    use crate::net::Transport;
    use crate::procfs::UdpCounters;
    use crate::proto::Credentials;

    fn sample(at: Instant, server_cpu_ms: u64, bench_cpu_ms: u64, rcvbuf: u64) -> Sample {
        let cpu = |ms| ProcessSample {
            cpu: Some(Duration::from_millis(ms)),
            rss_bytes: Some(1 << 20),
        };
        Sample {
            at,
            server: cpu(server_cpu_ms),
            bench: cpu(bench_cpu_ms),
            udp: Some(UdpCounters {
                rcvbuf_errors: rcvbuf,
                ..UdpCounters::default()
            }),
            server_drops: Some(rcvbuf / 2),
            bench_drops: Some(1),
            machine_busy: Some(Duration::from_millis(10 * server_cpu_ms + bench_cpu_ms)),
        }
    }

    #[test]
    fn figures_of_a_run_as_text_and_json() {
        let cfg = BenchConfig {
            server: "127.0.0.1:3478".parse().unwrap(),
            transport: Transport::Udp,
            credentials: Credentials::new("bench", "benchpass"),
            allocations: 4,
            rate_pps: 1000.0,
            payload_bytes: 100,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            lifetime_secs: None,
            server_pid: None,
            senders: 1,
            tick: Duration::from_millis(1),
            peers: crate::run::Peers::Pair,
            peer_ip: "127.0.0.1".parse().unwrap(),
            peer_netns: None,
        };
        let sent = SendStats {
            sent: 2000,
            sent_total: 2100,
            errors: 1,
            lagged: 2,
        };
        let mut received = ReceiveStats {
            received: 1990,
            received_bytes: 500_000,
            duplicates: 3,
            reordered: 4,
            malformed: 5,
            other: 6,
            ..ReceiveStats::default()
        };
        for us in [100, 200, 300, 400] {
            received.latency.record(us);
        }
        let t0 = Instant::now();
        let before = sample(t0, 1000, 3000, 10);
        let after = sample(t0 + Duration::from_secs(2), 2000, 3500, 17);
        let r = Report::new(
            &cfg,
            Duration::from_millis(1500),
            &sent,
            &received,
            &before,
            &after,
            7,
            8,
        );
        assert_eq!(
            r.to_string(),
            "turn-bench 127.0.0.1:3478 over udp: 4 allocations (2 pairs), 100 B payload, 2.0 s window (setup 1.50 s)\n\
             \x20 offered         1000 pps (target 1000; lagged 2, send errors 1)\n\
             \x20 received         995 pps  0.25 MB/s payload\n\
             \x20 loss           0.500 %   (10 of 2000; duplicates 3, reordered 4)\n\
             \x20 latency   p50 200 us  p99 400 us  max 400 us  mean 250.0 us  (one-way through the relay, kernel receive time)\n\
             \x20 server    cpu 1.00 s (50 % of a core), 502.51 us per delivered packet (= 2 relay hops)\n\
             \x20 machine   cpu 10.00 s besides the generator's, 5025.13 us per delivered packet\n\
             \x20 drops     kernel UDP rcvbuf 7 (server sockets 3, generator sockets 0)\n\
             \x20 generator cpu 0.50 s; malformed 5; unexpected 6; upkeep failures 7; delete failures 8"
        );
        let json: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(json["loss_percent"], 0.5);
        assert_eq!(json["latency_p50_us"], 200);
        assert_eq!(json["latency_max_us"], 400);
        assert_eq!(json["latency_mean_us"], 250.0);
        assert_eq!(json["server_cpu_secs"], 1.0);
        assert_eq!(json["server_cpu_percent"], 50.0);
        assert_eq!(json["bench_cpu_secs"], 0.5);
        assert_eq!(json["machine_cpu_secs"], 10.0);
        assert_eq!(json["kernel_udp_rcvbuf_drops"], 7);
        assert_eq!(json["server_socket_drops"], 3);
    }
}
