//! Peer connections to a real `sfu` node complete, one after another and on a lossy path:
//! `sfu-bench --connect-only` (webrtc-rs `rtc` clients on loopback, rooms of one publisher and
//! one subscriber, so each round has one PC of each DTLS role at the SFU) must report every PC
//! connected (ICE + DTLS) with SRTP flowing.
//!
//! - 200 PCs in a row.
//! - 100 PCs, ten rooms at a time, with 5 % of the clients' datagrams dropped each way. Before
//!   the SFU resent its last DTLS flight when the peer repeated its own (`sfu_proto::dtls_flight`:
//!   rtc-dtls disarms its retransmit timer on the peer's retransmission and never answers it),
//!   a lost flight 4 or 5 left the handshake stuck until it failed, and about one PC in seven
//!   of this run never connected.

use serde_json::Value;
use std::process::Command;
use std::time::Instant;

mod common;

fn connect_only(args: &[&str]) -> Value {
    let t0 = Instant::now();
    let out = Command::new(common::bin_path("sfu-bench"))
        .arg("--sfu-bin")
        .arg(common::bin_path("sfu"))
        .args(["--json", "--workers", "1"])
        .args(args)
        .output()
        .expect("run sfu-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report ({:?}):\n{stdout}\n{stderr}", out.status));
    println!("{args:?} in {:.1} s: {report}", t0.elapsed().as_secs_f64());
    report
}

fn assert_all_complete(r: &Value, pcs: u64) {
    assert_eq!(r["attempted"], pcs, "{r}");
    assert_eq!(
        r["completed"], pcs,
        "every peer connection reaches DTLS and SRTP: {r}"
    );
    assert!(r["setup_p50_ms"].as_f64().is_some_and(|v| v > 0.0), "{r}");
}

#[test]
fn peer_connections_complete_in_a_row_and_on_a_lossy_path() {
    let t0 = Instant::now();
    let r = connect_only(&["--connect-only", "200", "--connect-timeout", "10"]);
    assert_all_complete(&r, 200);
    let r = connect_only(&[
        "--connect-only",
        "100",
        "--connect-parallel",
        "10",
        "--drop-percent",
        "5",
        "--connect-timeout",
        "15",
    ]);
    assert_all_complete(&r, 100);
    println!("both runs in {:.1} s", t0.elapsed().as_secs_f64());
}
