//! `turn-bench soak` against a real `turn-server` (UDP/TCP, TLS and DTLS listeners, a test
//! certificate made here with rcgen): each kind churns for a few seconds at a small rate, and
//! must complete cycles without a single failed operation and print, at the baseline, every
//! interval and after settling, the server's RSS and open fds (read from /proc) and its relay
//! port and allocation figures, then a summary.
//!
//! After settling, open fds, bound relay ports and the allocation gauge must be back at their
//! baseline for every kind: nothing is left behind. The kinds that make EVEN-PORT reservations
//! (`allocation`, `even-port`) settle up to 35 s, since an unredeemed reservation is released
//! 30 s after it was made (RFC 8656 §7.2); the others 3 s. Whether RSS stays flat is what a long
//! soak is for (`scripts/soak.sh`).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{bin_path, free_udp_tcp_port, run_with_timeout, ServerGuard};

const USER: &str = "soak:soak-secret";
const RELAY_PORTS: (u16, u16) = (62000, 63999);
/// Bound on one `turn-bench soak` run (4 s of churn, wind-down, 35 s of settling at most).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A turn-server with every listener, and the certificate files it reads.
struct Server {
    guard: ServerGuard,
    port: u16,
    secure_port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server(kind: &str) -> Server {
    let dir = std::env::temp_dir().join(format!("turnkey-soak-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let port = free_udp_tcp_port();
    let secure_port = free_udp_tcp_port();
    let guard = ServerGuard::turn_server(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-listen",
        &format!("127.0.0.1:{secure_port}"),
        "--dtls-listen",
        &format!("127.0.0.1:{secure_port}"),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--user",
        USER,
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        &RELAY_PORTS.0.to_string(),
        "--max-port",
        &RELAY_PORTS.1.to_string(),
        "--allow-peer",
        "127.0.0.0/8",
        "--user-quota",
        "10000",
    ]);
    Server {
        guard,
        port,
        secure_port,
        dir,
    }
}

/// The longest wait for the figures to return to baseline after churn.
fn settle_for(kind: &str) -> &'static str {
    match kind {
        "allocation" | "even-port" => "35s",
        _ => "3s",
    }
}

/// Runs `turn-bench soak --kind KIND --json` briefly; returns its JSON lines.
fn run_soak(server: &Server, kind: &str) -> Vec<Value> {
    let target = match kind {
        "tls" | "dtls" => server.secure_port,
        _ => server.port,
    };
    let out = run_with_timeout(
        Command::new(bin_path("turn-bench"))
            .env("RUST_BACKTRACE", "0")
            .args(["soak", "--kind", kind, "--user", USER, "--json"])
            .args(["--server", &format!("127.0.0.1:{target}")])
            .args(["--server-pid", &server.guard.id().to_string()])
            .args(["--metrics", &server.guard.metrics.to_string()])
            .args([
                "--relay-ports",
                &format!("{}-{}", RELAY_PORTS.0, RELAY_PORTS.1),
            ])
            .args(["--duration", "4s", "--interval", "2s"])
            .args(["--settle", settle_for(kind)])
            .args(["--clients", "4", "--rate", "10"]),
        RUN_TIMEOUT,
    );
    assert!(
        out.success(),
        "turn-bench soak --kind {kind} failed ({:?}):\n{}",
        out.status,
        out.combined()
    );
    out.stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{}", out.stdout))
        })
        .collect()
}

fn check_kind(kind: &str) {
    let server = start_server(kind);
    let lines = run_soak(&server, kind);
    let report = || {
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let phases: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "soak")
        .map(|l| l["phase"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        phases,
        ["baseline", "interval", "interval", "settled"],
        "{}",
        report()
    );
    for line in lines.iter().filter(|l| l["event"] == "soak") {
        assert!(line["rss_bytes"].as_u64() > Some(0), "RSS: {line}");
        assert!(line["fds"].as_u64() > Some(0), "fds: {line}");
        assert!(line["relay_ports"].is_u64(), "relay ports: {line}");
        assert!(line["allocations"].is_number(), "allocations gauge: {line}");
        assert_eq!(line["errors"], 0, "{line}");
    }
    // Churn ran in both intervals.
    for line in lines.iter().filter(|l| l["phase"] == "interval") {
        assert!(line["ops_per_sec"].as_f64() > Some(0.0), "{line}");
    }
    let summary = lines
        .iter()
        .find(|l| l["event"] == "soak_summary")
        .unwrap_or_else(|| panic!("no summary:\n{}", report()));
    assert_eq!(summary["kind"], kind);
    assert!(summary["cycles"].as_u64() >= Some(20), "{summary}");
    assert_eq!(
        summary["errors"], 0,
        "failures by kind: {}",
        summary["errors_by_kind"]
    );
    assert!(summary["rss_warm_bytes"].as_u64() > Some(0), "{summary}");
    // Nothing is left behind: every allocation, reservation, relay socket and connection went.
    assert_eq!(summary["settled"], true, "not back at baseline: {summary}");
    assert!(summary["rss_drift_percent"].is_number(), "{summary}");
    let ops = &summary["ops_by_name"];
    let expected: &[&str] = match kind {
        "allocation" => &[
            "Allocate",
            "Allocate EVEN-PORT(R)",
            "CreatePermission",
            "Refresh",
        ],
        "even-port" => &[
            "Allocate EVEN-PORT(R)",
            "Allocate RESERVATION-TOKEN",
            "Refresh",
        ],
        "channel" => &["Allocate", "ChannelBind"],
        "tcp" => &["TCP connect", "Allocate"],
        "tls" => &["TLS handshake", "Allocate"],
        "dtls" => &["DTLS handshake", "Binding", "Allocate"],
        _ => unreachable!(),
    };
    for op in expected {
        assert!(ops[op].as_u64() > Some(0), "no {op} in {ops}");
    }
    eprintln!("{kind}: {summary}");
}

#[test]
fn soak_allocation() {
    check_kind("allocation");
}

#[test]
fn soak_even_port() {
    check_kind("even-port");
}

#[test]
fn soak_channel() {
    check_kind("channel");
}

#[test]
fn soak_tcp() {
    check_kind("tcp");
}

#[test]
fn soak_tls() {
    check_kind("tls");
}

#[test]
fn soak_dtls() {
    check_kind("dtls");
}
