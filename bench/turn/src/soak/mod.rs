//! Soak mode: churn against a running TURN server for a long time and watch whether its
//! resources come back. Every interval prints the server's RSS (/proc/PID/status VmRSS), open
//! descriptors (/proc/PID/fd), UDP sockets bound in the relay port range (/proc/net/udp{,6}
//! rows whose inode the process holds) and the `turn_allocations`, `turn_permissions` and
//! `turn_channel_bindings` gauges of its `/metrics`, next to the churn rate and failures by kind.
//! After churn stops the clients release what they hold, the figures are polled until fds,
//! relay ports and allocations are back at their baseline (or the settle time is up), and a
//! summary gives RSS after warm-up against RSS at the end.
//!
//! `churn` holds the client loops, `tally` the counters and lines (pure).

mod churn;
pub mod tally;

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use bench_support::procfs::{read_process_fds, read_process_rss_bytes};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::tally::{Line, Phase, ServerFigures, Summary, Tally};
use crate::link::{Close, LinkError};
use crate::procfs::read_process_udp_ports;
use crate::proto::Credentials;
use crate::scrape::{self, MetricsEndpoint, ScrapeError};

/// Clients get this long after churn stops to finish their cycle and release what they hold.
const WIND_DOWN: Duration = Duration::from_secs(30);
/// How often the figures are read while settling.
const SETTLE_POLL: Duration = Duration::from_millis(250);
/// Bound on one `/metrics` scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a soak client does in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// UDP: Allocate → CreatePermission → Refresh(0); every 4th Allocate with EVEN-PORT(R).
    Allocation,
    /// UDP: Allocate with EVEN-PORT(R); every other reservation taken by RESERVATION-TOKEN,
    /// the rest left to expire; Refresh(0).
    EvenPort,
    /// UDP: one allocation per client, ChannelBind to ever new channel numbers and peers,
    /// Refresh(0) and allocate again every `binds_per_allocation` binds.
    Channel,
    /// TCP: connect, Allocate, close.
    Tcp,
    /// TLS: handshake, Allocate, close (close_notify unless `--abrupt-close`).
    Tls,
    /// DTLS: handshake, Binding, Allocate, close (close_notify unless `--abrupt-close`).
    Dtls,
}

impl Kind {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Allocation => "allocation",
            Kind::EvenPort => "even-port",
            Kind::Channel => "channel",
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Dtls => "dtls",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The server's listener for this kind (UDP/TCP, TLS or DTLS).
    pub server: SocketAddr,
    /// What the clients do.
    pub kind: Kind,
    /// Long-term credentials.
    pub credentials: Credentials,
    /// Concurrent clients.
    pub clients: usize,
    /// Cycles per second, all clients together.
    pub rate_cps: f64,
    /// Stop after this many cycles in total even if time is left.
    pub max_cycles: Option<u64>,
    /// Time of churn.
    pub duration: Duration,
    /// Time between printed lines.
    pub interval: Duration,
    /// Intervals after which RSS counts as warmed up.
    pub warmup_intervals: u32,
    /// Longest wait after churn for the figures to return to baseline.
    pub settle: Duration,
    /// Server process to read /proc figures of.
    pub server_pid: Option<u32>,
    /// The server's `/metrics`.
    pub metrics: Option<MetricsEndpoint>,
    /// The server's relay port range.
    pub relay_ports: RangeInclusive<u16>,
    /// IP of the peers in CreatePermission and ChannelBind.
    pub peer_ip: IpAddr,
    /// Requested LIFETIME of allocations (None: the server's default).
    pub lifetime_secs: Option<u32>,
    /// UDP kinds: allocations made from one source port before moving to a new one.
    pub port_reuse: u32,
    /// `channel`: ChannelBinds per allocation (at most 4096 channel numbers).
    pub binds_per_allocation: u16,
    /// `tcp`/`tls`/`dtls`: Refresh(0) before closing instead of leaving it to the server.
    pub delete_before_close: bool,
    /// `tls`/`dtls`: how connections end.
    pub close: Close,
    /// Print JSON lines instead of text.
    pub json: bool,
}

/// Errors that end a soak before it starts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoakError {
    /// /proc/PID cannot be read.
    #[error("cannot read /proc/{0}/status: is --server-pid right, and the process ours?")]
    Process(u32),
    /// The metrics endpoint does not answer.
    #[error("scraping {endpoint}: {source}")]
    Metrics {
        /// `host:port/path`.
        endpoint: String,
        /// Cause.
        source: ScrapeError,
    },
    /// The endpoint answers but has no `turn_` metric.
    #[error("{0} has no turn_* metrics: is it a TURN server's /metrics?")]
    NoGauge(String),
    /// A TLS/DTLS client configuration could not be built.
    #[error("client configuration")]
    Link(#[from] LinkError),
}

/// Parses `30m`, `45s`, `1.5h`, `500ms`, or plain seconds (`90`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30s, 5m, 1h)"))?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{text:?}: {e}"))
}

/// Reads the server's figures.
struct ServerProbe {
    pid: Option<String>,
    metrics: Option<MetricsEndpoint>,
    relay_ports: RangeInclusive<u16>,
}

impl ServerProbe {
    async fn sample(&self) -> ServerFigures {
        let pid = self.pid.as_deref();
        let page = match &self.metrics {
            Some(m) => m.fetch(SCRAPE_TIMEOUT).await.ok(),
            None => None,
        };
        // A labelled family without label sets yet is not on the page at all: absent is 0.
        let gauge = |name: &str| {
            page.as_deref()
                .map(|p| scrape::metric_sum(p, name).unwrap_or(0.0))
        };
        ServerFigures {
            rss_bytes: pid.and_then(read_process_rss_bytes),
            fds: pid.and_then(read_process_fds),
            relay_ports: pid.and_then(|p| read_process_udp_ports(p, &self.relay_ports)),
            allocations: gauge("turn_allocations"),
            permissions: gauge("turn_permissions"),
            channel_bindings: gauge("turn_channel_bindings"),
        }
    }

    /// Fails early when a figure that was asked for cannot be read.
    async fn check(&self) -> Result<(), SoakError> {
        if let Some(pid) = &self.pid {
            if read_process_rss_bytes(pid).is_none() {
                return Err(SoakError::Process(pid.parse().unwrap_or_default()));
            }
        }
        if let Some(m) = &self.metrics {
            let endpoint = format!("{}{}", m.authority, m.path);
            let page = m
                .fetch(SCRAPE_TIMEOUT)
                .await
                .map_err(|source| SoakError::Metrics {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            if !page.lines().any(|l| l.starts_with("turn_")) {
                return Err(SoakError::NoGauge(endpoint));
            }
        }
        Ok(())
    }
}

/// Prints lines as text or JSON.
struct Printer {
    json: bool,
}

impl Printer {
    fn line(&self, line: &Line) {
        if self.json {
            println!("{}", line.to_json());
        } else {
            println!("{}", line.to_text());
        }
    }
}

/// Runs the soak, printing a line per interval; returns the summary (also printed).
pub async fn run(cfg: SoakConfig) -> Result<Summary, SoakError> {
    let cfg = Arc::new(cfg);
    let probe = ServerProbe {
        pid: cfg.server_pid.map(|p| p.to_string()),
        metrics: cfg.metrics.clone(),
        relay_ports: cfg.relay_ports.clone(),
    };
    probe.check().await?;
    let ctx = churn::Ctx::new(cfg.clone())?;
    let out = Printer { json: cfg.json };
    if !cfg.json {
        println!(
            "soak {} against {} (server pid {}, metrics {}): {} clients, {} cycles/s, {:?} of churn, a line every {:?}, relay ports {}-{}",
            cfg.kind.name(),
            cfg.server,
            cfg.server_pid.map_or_else(|| "-".into(), |p| p.to_string()),
            cfg.metrics
                .as_ref()
                .map_or_else(|| "-".into(), |m| format!("{}{}", m.authority, m.path)),
            cfg.clients,
            cfg.rate_cps,
            cfg.duration,
            cfg.interval,
            cfg.relay_ports.start(),
            cfg.relay_ports.end(),
        );
        println!("{}", Line::header());
    }
    let baseline = probe.sample().await;
    out.line(&Line::new(
        Phase::Baseline,
        0.0,
        0.0,
        &Tally::default(),
        baseline,
    ));

    let start = Instant::now();
    let end = start + cfg.duration;
    let mut clients = JoinSet::new();
    for index in 0..cfg.clients {
        clients.spawn(churn::client(ctx.clone(), index));
    }
    let mut last = Tally::default();
    let mut last_at = start;
    let mut warm = None;
    let mut intervals = 0u32;
    loop {
        intervals += 1;
        let at = (start + cfg.interval * intervals).min(end);
        tokio::time::sleep_until(at).await;
        let total = ctx.tally();
        let figures = probe.sample().await;
        let line = Line::new(
            Phase::Interval,
            (at - start).as_secs_f64(),
            (at - last_at).as_secs_f64(),
            &total.since(&last),
            figures,
        );
        out.line(&line);
        if intervals == cfg.warmup_intervals.max(1) || (warm.is_none() && at >= end) {
            warm = Some(figures);
        }
        last = total;
        last_at = at;
        if at >= end {
            break;
        }
    }

    // Stop churn; clients finish their cycle and release what they hold.
    ctx.stop.cancel();
    let wound_down = tokio::time::timeout(WIND_DOWN, async {
        while clients.join_next().await.is_some() {}
    })
    .await;
    if wound_down.is_err() {
        clients.shutdown().await;
    }
    let churn_secs = start.elapsed().as_secs_f64();

    // Settle: until the figures are back at baseline, or the settle time is up.
    let settle_start = Instant::now();
    let mut figures = probe.sample().await;
    while !figures.back_to(&baseline) && settle_start.elapsed() < cfg.settle {
        tokio::time::sleep(SETTLE_POLL.min(cfg.settle)).await;
        figures = probe.sample().await;
    }
    let settle_secs = settle_start.elapsed().as_secs_f64();
    let total = ctx.tally();
    // Rates over wind-down and settling would mean nothing; the counts go to the summary.
    out.line(&Line::new(
        Phase::Settled,
        start.elapsed().as_secs_f64(),
        0.0,
        &total.since(&last),
        figures,
    ));
    let summary = Summary::new(
        cfg.kind.name(),
        churn_secs,
        settle_secs,
        &total,
        &warm.unwrap_or(figures),
        baseline,
        figures,
    );
    if cfg.json {
        println!("{}", summary.to_json());
    } else {
        println!("{}", summary.to_text());
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
