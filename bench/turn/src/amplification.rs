//! Reflection amplification factor: what an off-path sender gets back for unauthenticated UDP
//! requests (a spoofed source turns the response into traffic at a victim). For each request
//! kind, sends it a few times from a fresh UDP port and counts every response datagram that
//! carries its transaction id: factor = response bytes / request bytes (STUN messages, i.e. UDP
//! payload), and the same with IP and UDP headers counted on both sides.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use rtc_stun::message::TransactionId;
use serde::Serialize;

use crate::proto::{self, Outcome, Request};

/// After the first response, how long to keep counting further datagrams for the same request.
const GRACE: Duration = Duration::from_millis(100);
/// IPv4 (20) + UDP (8) header bytes.
const IPV4_UDP_HEADER_BYTES: usize = 28;
/// IPv6 (40) + UDP (8) header bytes.
const IPV6_UDP_HEADER_BYTES: usize = 48;

/// One unauthenticated request kind.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// Name in the report.
    name: &'static str,
    /// Short key for scripts.
    key: &'static str,
    request: fn() -> Request,
    fingerprint: bool,
}

const PROBES: [Probe; 3] = [
    Probe {
        name: "Binding",
        key: "binding",
        request: || Request::Binding,
        fingerprint: false,
    },
    Probe {
        name: "Binding + FINGERPRINT",
        key: "binding_fingerprint",
        request: || Request::Binding,
        fingerprint: true,
    },
    Probe {
        name: "Allocate, no credentials",
        key: "allocate_unauthenticated",
        request: || Request::allocate(None),
        fingerprint: false,
    },
];

/// Figures for one request kind.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Request as named in the report.
    pub request: &'static str,
    /// Short key for scripts.
    pub key: &'static str,
    /// STUN request bytes (UDP payload).
    pub request_bytes: usize,
    /// Requests sent.
    pub sent: u32,
    /// Requests that got at least one response.
    pub answered: u32,
    /// Response datagrams received, all requests together.
    pub response_datagrams: u32,
    /// Mean response bytes per answered request (all its datagrams), UDP payload.
    pub response_bytes: f64,
    /// response_bytes / request_bytes.
    pub factor: Option<f64>,
    /// The same with IP and UDP headers on both sides.
    pub factor_with_headers: Option<f64>,
    /// Class or error code of the (last) response: "success", "error 401", "undecodable".
    pub response: String,
    /// Attribute types of the (last) response, in order.
    pub attributes: Vec<String>,
}

/// The report for one server.
#[derive(Debug, Clone, Serialize)]
pub struct Amplification {
    /// Server address.
    pub server: String,
    /// One row per request kind.
    pub rows: Vec<Row>,
}

/// Measures every request kind against `server`, `repeats` times each, waiting up to `timeout`
/// for each response.
pub fn measure(server: SocketAddr, repeats: u32, timeout: Duration) -> io::Result<Amplification> {
    let header_bytes = match server.ip() {
        IpAddr::V4(_) => IPV4_UDP_HEADER_BYTES,
        IpAddr::V6(_) => IPV6_UDP_HEADER_BYTES,
    };
    let mut rows = Vec::with_capacity(PROBES.len());
    for probe in PROBES {
        rows.push(measure_one(server, probe, repeats, timeout, header_bytes)?);
    }
    Ok(Amplification {
        server: server.to_string(),
        rows,
    })
}

fn measure_one(
    server: SocketAddr,
    probe: Probe,
    repeats: u32,
    timeout: Duration,
    header_bytes: usize,
) -> io::Result<Row> {
    let any: IpAddr = if server.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind((any, 0))?;
    socket.connect(server)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut row = Row {
        request: probe.name,
        key: probe.key,
        request_bytes: 0,
        sent: 0,
        answered: 0,
        response_datagrams: 0,
        response_bytes: 0.0,
        factor: None,
        factor_with_headers: None,
        response: "none".into(),
        attributes: Vec::new(),
    };
    let mut total_response_bytes = 0usize;
    let mut total_response_wire_bytes = 0usize;
    for _ in 0..repeats {
        let tid = TransactionId::new().0;
        let raw = proto::encode_unauthenticated(&(probe.request)(), tid, probe.fingerprint)
            .map_err(|e| io::Error::other(e.to_string()))?;
        row.request_bytes = raw.len();
        socket.send(&raw)?;
        row.sent += 1;
        let mut deadline = Instant::now() + timeout;
        let mut answered = false;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            socket.set_read_timeout(Some(deadline - now))?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                // ICMP port unreachable: nobody there.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e),
            };
            let datagram = &buf[..n];
            if datagram.len() < 20 || datagram[8..20] != tid {
                continue; // a late answer to an earlier request
            }
            row.response_datagrams += 1;
            total_response_bytes += n;
            total_response_wire_bytes += n + header_bytes;
            (row.response, row.attributes) = describe(datagram);
            if !answered {
                answered = true;
                row.answered += 1;
                deadline = Instant::now() + GRACE;
            }
        }
    }
    if row.answered > 0 {
        let answered = f64::from(row.answered);
        row.response_bytes = total_response_bytes as f64 / answered;
        row.factor = Some(row.response_bytes / row.request_bytes as f64);
        row.factor_with_headers = Some(
            total_response_wire_bytes as f64 / answered / (row.request_bytes + header_bytes) as f64,
        );
    }
    Ok(row)
}

/// "success" / "error CODE" and the attribute names of a response.
fn describe(raw: &[u8]) -> (String, Vec<String>) {
    let outcome = match proto::decode_response(raw) {
        Ok(r) => match r.outcome {
            Outcome::Success { .. } => "success".to_owned(),
            Outcome::Error { code, .. } => format!("error {code}"),
        },
        Err(_) => "undecodable".to_owned(),
    };
    (outcome, proto::attribute_names(raw).unwrap_or_default())
}

impl Amplification {
    /// One JSON object on one line.
    pub fn to_json_line(&self) -> String {
        bench_support::report::json_line(self)
    }
}

impl fmt::Display for Amplification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "reflection amplification at {} (unauthenticated UDP requests; factor = response bytes / request bytes)",
            self.server
        )?;
        writeln!(
            f,
            "  {:<26} {:>6} {:>7} {:>7} {:>11} {:>9}  response",
            "request", "req B", "resp B", "factor", "with IP+UDP", "answered"
        )?;
        for r in &self.rows {
            let factor = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
            writeln!(
                f,
                "  {:<26} {:>6} {:>7.1} {:>7} {:>11} {:>9}  {}: {}",
                r.request,
                r.request_bytes,
                r.response_bytes,
                factor(r.factor),
                factor(r.factor_with_headers),
                format!("{}/{}", r.answered, r.sent),
                r.response,
                r.attributes.join(" ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_encode_to_the_expected_sizes() {
        let tid = [3; 12];
        let sizes: Vec<usize> = PROBES
            .iter()
            .map(|p| {
                proto::encode_unauthenticated(&(p.request)(), tid, p.fingerprint)
                    .unwrap()
                    .len()
            })
            .collect();
        // Header 20; FINGERPRINT 8; REQUESTED-TRANSPORT 8.
        assert_eq!(sizes, vec![20, 28, 28]);
        let with_fp = proto::encode_unauthenticated(&Request::Binding, tid, true).unwrap();
        assert_eq!(
            proto::attribute_names(&with_fp).unwrap(),
            vec!["FINGERPRINT".to_owned()]
        );
    }
}
