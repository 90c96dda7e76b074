//! The SFU under real network conditions, in a network namespace the test builds itself
//! (veth pair on 198.51.100.0/24): a Chromium publisher on the host sends 3 simulcast layers; a
//! Chromium subscriber in the namespace is shaped with `tc` on the veth's host end
//! (see tests/browser/sfu_network.mjs):
//! - downlink capped at 200 kbit/s (the fake camera's middle layer needs about 280): the subscriber receives a low layer (frameWidth <= 320);
//!   and the publisher's full-resolution layer, which nobody watches then, is paused; cap lifted:
//!   a higher layer (the SFU's estimate: GCC over TWCC and receiver-report loss); then the
//!   subscriber asks for 180p at most and gets the low layer again;
//! - 5 % loss (iptables `statistic` in the namespace): NACK/RTX keeps the video decoding, `sfu_nack_total` and
//!   `sfu_retransmitted_packets_total` move;
//! - UDP blocked in the namespace (iptables): a new subscriber connects over ICE-TCP.
//!
//! Needs root (namespaces, tc, iptables) and what the browser tests need; a missing piece fails.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

mod common;
use common::netns::Netns;
use common::{free_udp_tcp_port, free_udp_tcp_port_pair, ServerGuard, LOCALHOST};

const API_KEY: &str = "netkey:netsecret";

fn metric(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    common::metric_at(addr, name, labels)
}

#[test]
fn simulcast_loss_and_ice_tcp_under_tc_and_iptables() {
    let chromium = common::browser_prerequisites();
    let mut ns = Netns::create("sfu")
        .unwrap_or_else(|e| panic!("this test needs network namespaces (root, iproute2): {e}"));
    let host = IpAddr::V4(ns.host_ip);
    let http = SocketAddr::new(host, free_udp_tcp_port());
    let media_port = free_udp_tcp_port_pair(&[LOCALHOST]);
    let sfu_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let _turnkey = ServerGuard::start(
        "turnkey",
        &[
            "--listen",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
            "--relay-ip",
            "127.0.0.1",
            "--api-key",
            API_KEY,
            "--signaling-listen",
            &http.to_string(),
            "--signaling-metrics",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
            "--sfu-media-listen",
            &format!("{host}:{media_port}"),
            "--sfu-workers",
            "1",
            "--sfu-link-listen",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
            "--sfu-metrics",
            &sfu_metrics.to_string(),
        ],
    );
    let sub_chromium = ns.wrapper(&chromium.to_string_lossy());
    let cap = ns.tc_host_cmd("qdisc replace dev DEV root tbf rate 200kbit burst 8kb latency 200ms");
    let uncap = format!(
        "{} 2>/dev/null || true",
        ns.tc_host_cmd("qdisc del dev DEV root")
    );
    // 5 % of the UDP the subscriber's namespace receives is dropped (iptables `statistic`; the
    // kernel here has no netem).
    let loss = format!(
        "ip netns exec {} iptables -A INPUT -p udp -m statistic --mode random --probability 0.05 -j DROP",
        ns.name
    );
    let unloss = format!("ip netns exec {} iptables -F INPUT", ns.name);
    let block = format!(
        "ip netns exec {} iptables -A OUTPUT -p udp -j DROP",
        ns.name
    );

    let nack_before = metric(sfu_metrics, "sfu_nack_total", &[]);
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("sfu_network.mjs")
        .args(["--base-url", &format!("http://{http}")])
        .args(["--key", API_KEY])
        .arg("--sub-chromium")
        .arg(&sub_chromium)
        .args(["--cap-cmd", &cap])
        .args(["--uncap-cmd", &uncap])
        .args(["--loss-cmd", &loss])
        .args(["--unloss-cmd", &unloss])
        .args(["--block-udp-cmd", &block]);
    let (result, report) =
        common::run_browser_script(&mut cmd, Duration::from_secs(300), "sfu_network.mjs");
    assert_eq!(result["ok"], true, "{report}");
    let switches = metric(sfu_metrics, "sfu_layer_switches_total", &[]);
    let nack = metric(sfu_metrics, "sfu_nack_total", &[]) - nack_before;
    let rtx = metric(sfu_metrics, "sfu_retransmitted_packets_total", &[]);
    let bwe = metric(sfu_metrics, "sfu_bandwidth_estimate_bps_count", &[]);
    let missing = metric(
        sfu_metrics,
        "sfu_nack_unanswered_total",
        &[("reason", "missing")],
    );
    println!(
        "{result}\nlayer switches {switches}, NACK {nack}, retransmitted {rtx}, \
         not in the history {missing}, bwe samples {bwe}"
    );
    assert!(switches >= 1.0, "sfu_layer_switches_total {switches}");
    assert!(nack >= 1.0, "sfu_nack_total moved by {nack}");
    assert!(rtx >= 1.0, "sfu_retransmitted_packets_total {rtx}");
    // The subscribers' RTP, retransmissions included, left through the worker's own SRTP
    // (sfu_proto::direct), over UDP and over ICE-TCP alike.
    let (engaged, refused, _) = common::direct_send(sfu_metrics);
    println!("direct send: engaged {engaged}, refused {refused}");
    assert!(engaged >= 2.0, "sfu_direct_send_total{{engaged}} {engaged}");
    assert_eq!(refused, 0.0, "sfu_direct_send_total{{refused}}");
    // The publishers' media was opened by the worker past rtc's read, over UDP and ICE-TCP,
    // under the same loss (the NACKs to the publishers come from rtc's generator all the same).
    assert_eq!(
        common::ssrc_refused(sfu_metrics),
        0.0,
        "sfu_bad_input_total{{kind=\"ssrc\"}}: the SSRC bound kept a real client's SRTP from rtc"
    );
    let (r_engaged, r_refused, opened) = common::direct_receive(sfu_metrics);
    println!("direct receive: engaged {r_engaged}, refused {r_refused}, packets {opened}");
    assert!(
        r_engaged >= 2.0,
        "sfu_direct_receive_total{{engaged}} {r_engaged}"
    );
    assert_eq!(r_refused, 0.0, "sfu_direct_receive_total{{refused}}");
    assert!(
        opened >= 100.0,
        "sfu_direct_received_packets_total {opened}"
    );
    // The subscribers' NACKs above came through the worker's own SRTCP read, over UDP and
    // ICE-TCP.
    let (c_engaged, c_refused, rtcp) = common::direct_rtcp(sfu_metrics);
    println!("direct RTCP: engaged {c_engaged}, refused {c_refused}, packets {rtcp}");
    assert!(
        c_engaged >= 2.0,
        "sfu_direct_rtcp_total{{engaged}} {c_engaged}"
    );
    assert_eq!(c_refused, 0.0, "sfu_direct_rtcp_total{{refused}}");
    assert!(rtcp >= 50.0, "sfu_direct_rtcp_packets_total {rtcp}");
    // The ICE-TCP subscriber completed ICE on its stream (the SFU answered its check), so the
    // handshake deadline did not apply to the stream it used (its media arrived above). The
    // browser may open other ICE-TCP streams (one per local candidate) that never complete ICE:
    // closing those at the deadline is what the deadline is for, so they are not counted here.
    let established = metric(sfu_metrics, "sfu_ice_tcp_established_total", &[]);
    let timed_out = metric(
        sfu_metrics,
        "sfu_ice_tcp_closed_total",
        &[("reason", "handshake_timeout")],
    );
    println!("ICE-TCP: established {established}, closed at the handshake deadline {timed_out}");
    assert!(
        established >= 1.0,
        "sfu_ice_tcp_established_total {established}"
    );
    drop(ns);
}
