//! A second WebRTC stack against our SFU: aiortc (Python) publishes into an `sfu` room and
//! receives another participant's media (see `tests/aiortc/sfu_client.py`).
//!
//! The `turnkey` binary (TURN + signaling + SFU in one process) runs on free ports. Two aiortc
//! participants join one fresh `sfu` room through the signaling HTTP API and WebSocket; each
//! publishes a VP8 video track, an Opus audio track and the `room` data channel on its publish
//! connection, answers the SFU's offers on its subscribe connection, and must decode the other's
//! video and audio. A text sent by A on `room` must reach B as `{"from": A, "data": text}`.
//! The SFU's metrics must show the media and the data message crossed it.
//!
//! Needs Python 3 with aiortc and websockets: `bash scripts/test.sh` installs them in a venv and
//! exports `TURNKEY_PYTHON` (the venv's python). Without it the test looks for
//! `/opt/turnkey-venv/bin/python` and `~/.cache/turnkey-venv/bin/python`. A missing piece
//! fails the test; it is never skipped.
//!
//! aiortc (aioice) leaves 127.0.0.1 out of its host candidates, so, as for the Chromium tests,
//! the machine needs a non-loopback IPv4 interface up; the SFU on 127.0.0.1 then gets the checks
//! from that address through the local route.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod common;

const API_KEY: &str = "aiortckey:aiortcsecret";
/// Frames each participant must decode of each of the other's tracks.
const FRAMES: u64 = 20;
/// The script's own deadline (`--timeout`, seconds) for joining, connecting and receiving.
const SCRIPT_TIMEOUT_SECS: u64 = 60;
/// Time after which the Python process is killed: its deadline plus time to close (it bounds
/// its own shutdown) and to start (importing aiortc and PyAV).
const RUN_LIMIT: Duration = Duration::from_secs(SCRIPT_TIMEOUT_SECS + 45);

fn metric(addr: SocketAddr, name: &str) -> f64 {
    common::metric_at(addr, name, &[])
}

#[test]
fn aiortc_publishes_and_subscribes_through_the_sfu() {
    let python = common::aiortc_python();

    let suite = common::LocalSuite::start(API_KEY, &[]);
    let (http, sfu_metrics) = (suite.http, suite.sfu_metrics);

    let script = Path::new(common::ROOT).join("tests/aiortc/sfu_client.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .args(["--base-url", &format!("http://{http}")])
        .args(["--key", API_KEY])
        .args(["--timeout", &SCRIPT_TIMEOUT_SECS.to_string()])
        .args(["--frames", &FRAMES.to_string()]);
    let (result, report) =
        common::run_browser_script(&mut cmd, RUN_LIMIT, "tests/aiortc/sfu_client.py");

    // The script checks these itself; check the record too, so a script that stops checking
    // cannot pass silently.
    assert_eq!(result["ok"], true, "{report}");
    assert_eq!(result["dataOk"], true, "{report}");
    for direction in ["A->B", "B->A"] {
        for kind in ["video", "audio"] {
            let frames = result["frames"][direction][kind].as_u64().unwrap_or(0);
            assert!(
                frames >= FRAMES,
                "{direction} {kind}: {frames} frames decoded, want {FRAMES}: {report}"
            );
        }
    }
    for p in ["A", "B"] {
        let decoded = &result["decoded"][p];
        assert_eq!(
            decoded["videoSizes"],
            serde_json::json!(["320x240"]),
            "{report}"
        );
        assert!(
            decoded["distinctLumas"].as_u64().unwrap_or(0) >= 2,
            "{p}: the decoded video does not change colour: {report}"
        );
        assert!(
            decoded["audioPeak"].as_u64().unwrap_or(0) >= 1000,
            "{p}: the decoded audio is not the sine: {report}"
        );
    }
    println!(
        "aiortc through the SFU: frames {}, codecs {}, in {} ms",
        result["frames"], result["codecs"], result["elapsedMs"]
    );

    let forwarded = metric(sfu_metrics, "sfu_forwarded_packets_total");
    let data = metric(sfu_metrics, "sfu_data_messages_total");
    println!("SFU: forwarded {forwarded} packets, {data} data messages");
    assert!(
        forwarded > 0.0,
        "sfu_forwarded_packets_total {forwarded}: {report}"
    );
    assert!(data >= 1.0, "sfu_data_messages_total {data}: {report}");
    // aiortc's subscribe PC is sent by the worker itself (sfu_proto::direct): its SRTP key
    // (aiortc's profile) verified against rtc's packets.
    let (engaged, refused, _) = common::direct_send(sfu_metrics);
    assert!(
        engaged >= 1.0,
        "sfu_direct_send_total{{engaged}} {engaged}: {report}"
    );
    assert_eq!(refused, 0.0, "sfu_direct_send_total{{refused}}: {report}");
    // Its publish PC's media is opened by the worker past rtc's read (sfu_proto::direct), on
    // whichever profile aiortc negotiated.
    assert_eq!(
        common::ssrc_refused(sfu_metrics),
        0.0,
        "sfu_bad_input_total{{kind=\"ssrc\"}}: the SSRC bound kept a real client's SRTP from rtc"
    );
    let (r_engaged, r_refused, opened) = common::direct_receive(sfu_metrics);
    println!("direct receive: engaged {r_engaged}, refused {r_refused}, packets {opened}");
    assert!(
        r_engaged >= 1.0,
        "sfu_direct_receive_total{{engaged}} {r_engaged}: {report}"
    );
    assert_eq!(
        r_refused, 0.0,
        "sfu_direct_receive_total{{refused}}: {report}"
    );
    assert!(
        opened >= 1.0,
        "sfu_direct_received_packets_total {opened}: {report}"
    );
    // aiortc's SRTCP: it sends a receiver report every second or so, so this short run may
    // end before the worker has tried its key; what it tried must have verified.
    let (c_engaged, c_refused, rtcp) = common::direct_rtcp(sfu_metrics);
    println!("direct RTCP: engaged {c_engaged}, refused {c_refused}, packets {rtcp}");
    assert_eq!(c_refused, 0.0, "sfu_direct_rtcp_total{{refused}}: {report}");
}
