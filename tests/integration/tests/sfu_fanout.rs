//! One publisher fanned out to 20 subscribers through a real `sfu` node (`sfu-bench`, webrtc-rs
//! `rtc` clients on loopback, full ICE and DTLS-SRTP). 20 subscribe PCs are more than one chunk
//! of the worker's send path (`sfu_proto::worker::WRITTEN_CHUNK`, 16), so the copies leave in
//! parts, each subscriber's copies of a batch together: every (subscriber, track) flow must
//! receive the publisher's packets, none twice, with no more loss than a loaded CI machine's
//! loopback can cause (a PC whose copies were never taken would lose all of its flows). Every
//! subscribe PC is sent by the worker itself (`sfu_proto::direct`), checked in the node's
//! metrics, and the publisher's media is opened by the worker past rtc's read
//! (`sfu_proto::direct::Opening`); with `direct_send = false` and `direct_receive = false`, rtc
//! does both, and the flows arrive all the same.

use serde_json::Value;
use std::process::Command;

mod common;

/// Runs `sfu-bench` at 1 -> 20 on one worker with `sfu_args` for the node; its JSON report.
fn fanout_20(sfu_args: &[&str]) -> Value {
    fanout_20_with(sfu_args, &[])
}

/// Runs `sfu-bench` on one worker with `bench_args`, and `sfu_args` for the node; its JSON
/// report and its standard error, after checking it exited well.
fn bench(sfu_args: &[&str], bench_args: &[&str]) -> (Value, String) {
    let mut cmd = Command::new(common::bin_path("sfu-bench"));
    cmd.arg("--sfu-bin")
        .arg(common::bin_path("sfu"))
        .args(["--json", "--workers", "1", "--setup-timeout", "30"])
        .args(bench_args);
    for a in sfu_args {
        cmd.arg(format!("--sfu-arg={a}"));
    }
    let out = cmd.output().expect("run sfu-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let r: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report ({:?}):\n{stdout}\n{stderr}", out.status));
    println!("{r}");
    assert!(out.status.success(), "sfu-bench failed:\n{stderr}");
    (r, stderr)
}

/// [`fanout_20`] with more `sfu-bench` flags.
fn fanout_20_with(sfu_args: &[&str], bench_args: &[&str]) -> Value {
    let mut args = vec![
        "--fanout",
        "20",
        "--fps",
        "10",
        "--duration",
        "3",
        "--warmup",
        "1",
    ];
    args.extend_from_slice(bench_args);
    let (r, stderr) = bench(sfu_args, &args);
    assert_eq!(r["flows"], 40, "{r}");
    assert_eq!(r["flows_up"], 40, "not every flow delivered: {r}\n{stderr}");
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(r["duplicates"], 0, "{r}");
    assert_eq!(r["write_errors"], 0, "{r}");
    assert_eq!(r["link_connect_errors"], 0, "{r}");
    let loss = r["loss_percent"].as_f64().expect("loss_percent");
    assert!(loss < 2.0, "loss {loss} %: {r}");
    assert!(
        r["received_pps"].as_f64().is_some_and(|pps| pps > 0.0),
        "nothing received in the window: {r}"
    );
    r
}

#[test]
fn a_fanout_larger_than_one_send_part_reaches_every_subscriber() {
    let r = fanout_20(&[]);
    // Every subscribe PC's RTP was protected and sent by the worker itself
    // (sfu_proto::direct): its SRTP key verified against rtc's own packets, none refused.
    assert_eq!(r["sfu_direct_engaged"], 20.0, "{r}");
    assert_eq!(r["sfu_direct_refused"], 0.0, "{r}");
    let direct = r["sfu_direct_packets"]
        .as_f64()
        .expect("sfu_direct_packets");
    let received =
        r["received_pps"].as_f64().unwrap_or(0.0) * r["window_secs"].as_f64().unwrap_or(0.0);
    assert!(
        direct >= received * 0.9,
        "the worker sent {direct} packets itself, subscribers received {received} in the window alone: {r}"
    );
    // The publisher's media was opened by the worker itself: its SRTP key verified against the
    // publisher's packets, then every packet of its known streams but one per stream every
    // 500 ms (left to rtc's read).
    assert_eq!(r["sfu_direct_receive_engaged"], 1.0, "{r}");
    assert_eq!(r["sfu_direct_receive_refused"], 0.0, "{r}");
    // No SRTP/SRTCP of a real client is kept from rtc by the per-PC SSRC bound.
    assert_eq!(r["sfu_ssrc_refused"], 0.0, "{r}");
    let opened = r["sfu_direct_received_packets"]
        .as_f64()
        .expect("sfu_direct_received_packets");
    let sent = r["sent_pps"].as_f64().unwrap_or(0.0) * r["window_secs"].as_f64().unwrap_or(0.0);
    assert!(
        opened >= sent * 0.8,
        "the worker opened {opened} of the publisher's packets, it sent about {sent} in the window alone: {r}"
    );
    // Every subscriber's SRTCP (TWCC feedback every 100 ms, receiver reports) was opened by the
    // worker past rtc's read, once the subscriber's key verified.
    assert_eq!(r["sfu_direct_rtcp_engaged"], 20.0, "{r}");
    let rtcp = r["sfu_direct_rtcp_packets"]
        .as_f64()
        .expect("sfu_direct_rtcp_packets");
    assert!(
        rtcp >= 20.0 * 10.0,
        "{rtcp} SRTCP packets opened by the worker: {r}"
    );
    // The bench read the node's memory: both resident and anonymous (RssAnon) figures.
    for key in ["sfu_rss_connected_bytes", "sfu_rss_anon_connected_bytes"] {
        assert!(r[key].as_u64().is_some_and(|b| b > 0), "{key}: {r}");
    }
    assert!(
        r["sfu_rss_anon_connected_bytes"].as_u64() < r["sfu_rss_connected_bytes"].as_u64(),
        "anonymous memory is part of the resident set: {r}"
    );
}

/// `direct_send = false` and `direct_receive = false`: rtc protects and sends every copy and
/// reads every datagram, as before the direct send and receive (the paths a PC also stays on
/// when its key does not verify), and the media arrives all the same.
#[test]
fn with_direct_send_and_receive_off_rtc_does_all() {
    let r = fanout_20(&["--direct-send", "false", "--direct-receive", "false"]);
    assert_eq!(r["sfu_direct_engaged"], 0.0, "{r}");
    assert_eq!(r["sfu_direct_packets"], 0.0, "{r}");
    assert_eq!(r["sfu_direct_receive_engaged"], 0.0, "{r}");
    assert_eq!(r["sfu_direct_received_packets"], 0.0, "{r}");
    assert_eq!(r["sfu_direct_rtcp_engaged"], 0.0, "{r}");
    assert_eq!(r["sfu_direct_rtcp_packets"], 0.0, "{r}");
}

/// Forged SRTP from the publisher's own 5-tuple (what a spoofed source can send), each
/// datagram of a fresh SSRC. rtc-srtp keeps state for every SSRC it is handed before it
/// authenticates the packet; the node hands rtc none of these once the publisher's key is
/// verified (they do not authenticate), and without the worker's direct receive at most
/// `MAX_RTC_SSRCS` (64) SSRCs per PC. Each refused datagram is counted, and the media flows
/// as before.
#[test]
fn forged_srtp_of_fresh_ssrcs_reaches_rtc_bounded_and_media_flows() {
    const FORGED: f64 = 1000.0;
    let r = fanout_20_with(&[], &["--spoof-ssrcs", "1000"]);
    assert_eq!(r["sfu_direct_receive_engaged"], 1.0, "{r}");
    assert_eq!(
        r["sfu_ssrc_refused"], FORGED,
        "every forged datagram kept from rtc: {r}"
    );
    let r = fanout_20_with(&["--direct-receive", "false"], &["--spoof-ssrcs", "1000"]);
    let refused = r["sfu_ssrc_refused"].as_f64().expect("sfu_ssrc_refused");
    // The publisher's own SSRCs count towards the 64 too (and a stream it starts once they
    // are taken, such as RTX, would be refused as well: the bound's price).
    assert!(
        refused >= FORGED - 64.0,
        "rtc is handed at most 64 SSRCs: {refused} of {FORGED} refused: {r}"
    );
}

/// A lossy path both ways (`sfu-bench --drop-percent 3` drops 3 % of every client's
/// datagrams, media, RTCP and retransmissions alike; video only, as Opus is not NACKed). What
/// the publisher's path lost the SFU never had, so only the SFU's NACKs to the publisher
/// (`sfu_proto::recv_side`) can bring it back: without them the subscribers lose 3.3 % (seen
/// with the NACKs turned off by hand), with them nothing.
#[test]
fn a_publishers_lost_packets_are_nacked_and_reach_the_subscribers() {
    let (r, stderr) = bench(
        &[],
        &[
            "--fanout",
            "4",
            "--audio-pps",
            "0",
            "--drop-percent",
            "3",
            "--duration",
            "4",
            "--warmup",
            "1",
        ],
    );
    assert_eq!(r["flows_up"], 4, "not every flow delivered: {r}\n{stderr}");
    let asked = r["sfu_nack_requested"]
        .as_f64()
        .expect("sfu_nack_requested");
    assert!(asked >= 4.0, "sfu_nack_requested_total {asked}: {r}");
    let loss = r["loss_percent"].as_f64().expect("loss_percent");
    assert!(
        loss < 1.0,
        "loss {loss} %: the publisher's losses were not recovered: {r}"
    );
}
