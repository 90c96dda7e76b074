//! sfu-bench against its anchor server: Janus's VideoRoom (Debian's `janus` package) with one
//! publisher and two subscribers for 3 s. The bench writes Janus's configuration, starts it as a
//! child, negotiates over its WebSocket API and measures with the same clients as for turnkey;
//! every (subscriber, track) flow must deliver packets. Figures are not asserted (a benchmark
//! prints them), only that media went through.
//!
//! Janus never gathers ICE candidates on a loopback interface, so the run happens inside a
//! network namespace the test builds (`common::netns`): the bench, Janus and every client use
//! the namespace's veth address (198.51.100.0/24, TEST-NET-2), whose local traffic goes over
//! the namespace's own loopback device. Needs `janus` (`bash scripts/test.sh` installs it) and
//! root for the namespace; a missing piece fails the test, it is never skipped.

use std::process::Command;
use std::time::Duration;

mod common;

use common::netns::Netns;

/// Time after which sfu-bench is killed: Janus's start, setup, 1 s warm-up, 3 s measured and
/// the stop (SIGTERM, SIGKILL after 5 s) take far less.
const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn sfu_bench_drives_janus_videoroom_publisher_to_two_subscribers() {
    let janus = common::require_tool("janus");
    let ns = Netns::create("jn").unwrap_or_else(|e| panic!("network namespace: {e}"));
    let host_ip = ns.ns_ip.to_string();
    let run = common::run_with_timeout(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(common::bin_path("sfu-bench"))
            .args(["--server", "janus", "--host-ip", &host_ip])
            .args(["--fanout", "2", "--duration", "3"])
            .args(["--setup-timeout", "30", "--json", "--janus-bin"])
            .arg(&janus),
        RUN_LIMIT,
    );
    assert!(
        run.success(),
        "sfu-bench --server janus failed:\n{}",
        run.combined()
    );
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("sfu-bench printed no JSON ({e}):\n{}", run.combined()));
    assert_eq!(report["server"], "janus", "{report}");
    // Two subscribers, each receiving the publisher's video and audio.
    assert_eq!(report["flows"], 4, "{report}");
    assert_eq!(
        report["flows_up"], 4,
        "not every flow delivered: {report}\n{}",
        run.stderr
    );
    assert!(
        report["received_pps"].as_f64().is_some_and(|pps| pps > 0.0),
        "nothing received in the window: {report}"
    );
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert_eq!(report["link_connect_errors"], 0, "{report}");
}
