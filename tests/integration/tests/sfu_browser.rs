//! SFU rooms in a real browser: the `turnkey` binary (TURN + signaling + SFU in one process)
//! and headless Chromium on the signaling demo page with `?mode=sfu`
//! (see `tests/browser/sfu_room.mjs`).
//!
//! - Three pages publish audio and video once to the SFU; each decodes video and receives audio
//!   from the other two on its subscribe connection (the participant of each track is the msid
//!   stream id the SFU writes); a data-channel message from page 0 reaches the others with its
//!   sender id; an active-speaker event arrives; and the SFU's metrics show the media crossed it.
//! - Two pages with the page's default capture (1280x720, three simulcast layers) receive each
//!   other's top layer at 1280 wide on the unconstrained loopback link.
//! - Two pages with `iceTransportPolicy: 'relay'`: both connections of each page to the SFU go
//!   through our TURN server (relay candidates selected), and the TURN server's relayed-packet
//!   counter moves.
//!
//! Needs what tests/signaling_browser.rs needs (Node.js, Debian's chromium, `npm ci` in
//! tests/browser); a missing piece fails the test.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;

const API_KEY: &str = "sfukey:sfusecret";
const RUN_LIMIT: Duration = Duration::from_secs(150);

fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric_at(addr, name, labels)
}

fn sfu_room(base_url: &str, pages: u32, relay: bool) -> Value {
    sfu_room_with(base_url, pages, relay, &[])
}

/// [`sfu_room`] with more `sfu_room.mjs` options (`--res WxH`, `--min-frame-width N`).
fn sfu_room_with(base_url: &str, pages: u32, relay: bool, extra: &[&str]) -> Value {
    let chromium = common::browser_prerequisites();
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("sfu_room.mjs")
        .args(["--base-url", base_url])
        .args(["--key", API_KEY])
        .args(["--pages", &pages.to_string()])
        .args(["--timeout-ms", "60000"])
        .args(extra)
        .arg("--chromium")
        .arg(&chromium);
    if relay {
        cmd.arg("--relay");
    }
    let (result, report) = common::run_browser_script(
        &mut cmd,
        RUN_LIMIT,
        &format!("sfu_room.mjs ({pages} pages, relay {relay})"),
    );
    assert_eq!(result["ok"], true, "{report}");
    result
}

#[test]
fn chromium_sfu_rooms() {
    // The SFU's media is on 127.0.0.2, standing for an SFU host next to the TURN server: TURN
    // may relay to it (--allow-peer). Its ports on the TURN server's own IP would be refused
    // (the suite's own ports are never peers, issue 9 §1).
    let sfu_ip = std::net::IpAddr::from([127, 0, 0, 2]);
    let suite =
        common::LocalSuite::start_with_sfu_ip(API_KEY, sfu_ip, &["--allow-peer", "127.0.0.0/8"]);
    let (http, sfu_metrics, turnkey) = (suite.http, suite.sfu_metrics, &suite.guard);
    let base_url = format!("http://{http}");

    let result = sfu_room(&base_url, 3, false);
    for v in result["views"].as_array().expect("views") {
        let remotes = v["remotes"].as_object().expect("remotes");
        assert_eq!(remotes.len(), 2, "each page hears the two others: {v}");
        assert_eq!(v["pairs"]["subscribe"]["local"], "host", "{v}");
        // The page shows the mode, and a participant who joined later is not "(new)" once
        // media flows.
        assert_eq!(v["mode"], "sfu", "{v}");
        assert!(
            v["modeText"].as_str().is_some_and(|t| t.contains("SFU")),
            "{v}"
        );
        let status = v["statusText"].as_str().unwrap_or_default();
        assert!(
            status.contains("With:") && !status.contains("(new)"),
            "status: {status}"
        );
    }
    let forwarded = metric(sfu_metrics, "sfu_forwarded_packets_total", &[]);
    let bytes = metric(sfu_metrics, "sfu_forwarded_bytes_total", &[]);
    let data = metric(sfu_metrics, "sfu_data_messages_total", &[]);
    let speakers = metric(sfu_metrics, "sfu_active_speaker_changes_total", &[]);
    let pli = metric(sfu_metrics, "sfu_pli_total", &[("direction", "sent")]);
    let bwe = metric(sfu_metrics, "sfu_bandwidth_estimate_bps_count", &[]);
    println!(
        "3 pages: forwarded {forwarded} packets / {bytes} bytes, data {data}, speaker changes \
         {speakers}, PLI sent {pli}, bwe samples {bwe}"
    );
    assert!(forwarded > 100.0, "sfu_forwarded_packets_total {forwarded}");
    assert!(
        bytes > forwarded * 12.0,
        "sfu_forwarded_bytes_total {bytes}"
    );
    // The workers export their counters every 250 ms of activity: give the last export time.
    let data_ok = common::wait_until(Duration::from_secs(5), || {
        metric(sfu_metrics, "sfu_data_messages_total", &[]) >= 2.0
    });
    assert!(
        data_ok,
        "sfu_data_messages_total {} (dropped: too_large {}, rate_limited {})",
        metric(sfu_metrics, "sfu_data_messages_total", &[]),
        metric(
            sfu_metrics,
            "sfu_data_messages_dropped_total",
            &[("reason", "too_large")]
        ),
        metric(
            sfu_metrics,
            "sfu_data_messages_dropped_total",
            &[("reason", "rate_limited")]
        ),
    );
    assert!(
        speakers >= 1.0,
        "sfu_active_speaker_changes_total {speakers}"
    );
    assert!(
        pli >= 1.0,
        "a new subscriber asks for keyframes: sfu_pli_total{{sent}} {pli}"
    );
    assert!(bwe >= 1.0, "sfu_bandwidth_estimate_bps_count {bwe}");
    // Every page's subscribe PC is sent by the worker itself (sfu_proto::direct): its SRTP key
    // verified against rtc's packets (Chromium's profile), and all but the first few copies per PC
    // went that way.
    let (engaged, refused, direct) = common::direct_send(sfu_metrics);
    println!("direct send: engaged {engaged}, refused {refused}, packets {direct}");
    assert!(engaged >= 3.0, "sfu_direct_send_total{{engaged}} {engaged}");
    assert_eq!(refused, 0.0, "sfu_direct_send_total{{refused}}");
    // Only the copies forwarded to a PC before rtc's first SRTP packet on it was taken (its
    // key verified) went through rtc: a wake-up's worth, a few per PC.
    assert!(
        forwarded - direct <= 20.0 * engaged,
        "sfu_direct_packets_total {direct} of {forwarded} forwarded"
    );
    // Every page's publish PC (Chromium negotiates AEAD AES-GCM) has its media opened by the
    // worker itself past rtc's read (sfu_proto::direct::Opening), none refused.
    assert_eq!(
        common::ssrc_refused(sfu_metrics),
        0.0,
        "sfu_bad_input_total{{kind=\"ssrc\"}}: the SSRC bound kept a real client's SRTP from rtc"
    );
    let (r_engaged, r_refused, opened) = common::direct_receive(sfu_metrics);
    println!("direct receive: engaged {r_engaged}, refused {r_refused}, packets {opened}");
    assert!(
        r_engaged >= 3.0,
        "sfu_direct_receive_total{{engaged}} {r_engaged}"
    );
    assert_eq!(r_refused, 0.0, "sfu_direct_receive_total{{refused}}");
    assert!(
        opened >= 100.0,
        "sfu_direct_received_packets_total {opened}"
    );
    // Chromium's SRTCP (transport feedback, receiver reports, keyframe requests) opened by the
    // worker past rtc's read, on AES-CM.
    let (c_engaged, c_refused, rtcp) = common::direct_rtcp(sfu_metrics);
    println!("direct RTCP: engaged {c_engaged}, refused {c_refused}, packets {rtcp}");
    assert!(
        c_engaged >= 3.0,
        "sfu_direct_rtcp_total{{engaged}} {c_engaged}"
    );
    assert_eq!(c_refused, 0.0, "sfu_direct_rtcp_total{{refused}}");
    // A few seconds of three pages: 44 in one CI run, more here; a broken path gives 0.
    assert!(
        rtcp >= 3.0 * c_engaged,
        "sfu_direct_rtcp_packets_total {rtcp}"
    );

    // Sharp video by default: with the page's default capture (1280x720, which Chromium sends
    // as three simulcast layers) on an unconstrained link, each page soon receives the other's
    // top layer at its full width. Before, the page captured 320x240, Chromium sent only the
    // lowest layer, and viewers saw 80x60 for as long as they watched; and the SFU undid each
    // probe of the top layer half a second later, before its rate could be measured.
    let result = sfu_room_with(&base_url, 2, false, &["--min-frame-width", "1280"]);
    for v in result["views"].as_array().expect("views") {
        for (who, r) in v["remotes"].as_object().expect("remotes") {
            assert!(
                r["frameWidth"].as_u64().is_some_and(|w| w >= 1280),
                "{who} arrives at width {}: {v}",
                r["frameWidth"]
            );
        }
    }
    println!(
        "sharp video: 1280 wide {} ms after media started; {}",
        result["widthMs"], result["views"]
    );

    // Relay only: every packet to and from the SFU crosses our TURN server.
    let relayed = || turnkey.metric("turn_relayed_packets_total", &[]);
    let before = relayed();
    let result = sfu_room(&base_url, 2, true);
    let after = relayed();
    assert!(
        after > before + 100.0,
        "turn_relayed_packets_total {before} -> {after}: {result}"
    );
    println!("relay: turn_relayed_packets_total {before} -> {after}");

    // The log an operator reads: no library noise from the browsers' DTLS handshakes (rtc-dtls
    // warns for every ClientHello extension it does not know), no colour codes in a file.
    let log = turnkey.log();
    assert!(
        !log.contains("Unsupported Extension Type"),
        "DTLS library noise at the default level:\n{log}"
    );
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
}
