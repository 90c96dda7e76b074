//! Screen sharing in an SFU room with real browsers: the `turnkey` binary (TURN + signaling +
//! SFU in one process) and headless Chromium on the signaling demo page with `?mode=sfu`
//! (`tests/browser/sfu_screen.mjs`).
//!
//! Three pages join and decode each other's camera. Page 0 shares its screen as the page's
//! "Share screen" button does (`TurnkeyRoom.startScreenShare()` with no track: getDisplayMedia,
//! which headless Chromium answers with a fake 1280x720 screen under the suite's
//! `--use-fake-ui-for-media-stream --use-fake-device-for-media-stream`). It goes out as a second
//! video track with one encoding (no rid: no simulcast) and `contentHint = 'detail'`; the other
//! two pages get it as a `screen-track` (the SFU's offer names its source `screen`) and decode
//! frames on it while page 0's camera keeps decoding on its own track. Page 0 stops; the others
//! get `screen-track-removed` and the camera goes on. Then page 1 shares a canvas
//! `captureStream()` track through `startScreenShare(track)`: the others decode it, and stopping
//! leaves the given track running.
//!
//! Needs what tests/signaling_browser.rs needs (Node.js, Debian's chromium, `npm ci` in
//! tests/browser); a missing piece fails the test.

use std::process::Command;
use std::time::Duration;

mod common;

const API_KEY: &str = "screenkey:screensecret";

#[test]
fn chromium_sfu_screen_share() {
    let suite = common::LocalSuite::start(API_KEY, &[]);
    let base_url = format!("http://{}", suite.http);
    let chromium = common::browser_prerequisites();
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("sfu_screen.mjs")
        .args(["--base-url", &base_url])
        .args(["--key", API_KEY])
        .args(["--pages", "3"])
        .args(["--timeout-ms", "60000"])
        .arg("--chromium")
        .arg(&chromium);
    let (result, report) = common::run_browser_script(
        &mut cmd,
        Duration::from_secs(180),
        "sfu_screen.mjs (3 pages)",
    );
    assert_eq!(result["ok"], true, "{report}");

    // The screen went out as one layer with the detail hint.
    let sender = &result["screenSender"];
    assert_eq!(sender["contentHint"], "detail", "{report}");
    let encodings = sender["encodings"].as_array().expect("encodings");
    assert_eq!(encodings.len(), 1, "one encoding, no simulcast: {report}");
    assert!(encodings[0]["rid"].is_null(), "no rid: {report}");
    assert_eq!(
        result["publisher"]["screenSimulcastLines"],
        serde_json::json!([]),
        "no a=simulcast / a=rid in the screen's m-section: {report}"
    );

    // Every other page decoded the screen on a track of its own, besides the camera.
    let sharer = result["sharing"][0]["id"]
        .as_str()
        .expect("sharer id")
        .to_string();
    let sharing = result["sharing"].as_array().expect("sharing");
    assert_eq!(sharing.len(), 3, "one view per page: {report}");
    for v in sharing.iter().skip(1) {
        let screen = &v["screen"][&sharer];
        let camera = &v["camera"][&sharer];
        assert!(
            screen["framesDecoded"].as_u64().is_some_and(|n| n > 0),
            "screen frames: {v}"
        );
        assert!(
            camera["framesDecoded"].as_u64().is_some_and(|n| n > 0),
            "camera frames: {v}"
        );
        assert_ne!(screen["trackIds"], camera["trackIds"], "{v}");
    }
    // And saw it end.
    let ended = result["ended"].as_array().expect("ended");
    assert_eq!(ended.len(), 3, "one view per page: {report}");
    for v in ended.iter().skip(1) {
        assert!(
            v["screensEnded"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x == sharer.as_str())),
            "{v}"
        );
        assert_eq!(v["events"]["screen-track"], 1, "{v}");
        assert_eq!(v["events"]["screen-track-removed"], 1, "{v}");
    }
    // The API's other path: a track the page made itself (canvas captureStream), shared as it
    // is, decoded by the others, and left running when the share stops.
    let canvas = &result["canvas"];
    assert_eq!(canvas["given"]["same"], true, "{report}");
    assert_eq!(canvas["given"]["contentHint"], "detail", "{report}");
    assert!(
        canvas["decoded"]
            .as_array()
            .is_some_and(|d| d.len() == 2 && d.iter().all(|n| n.as_u64() > Some(0))),
        "{report}"
    );
    assert_eq!(canvas["liveAfterStop"], true, "{report}");
    println!("while sharing: {}", result["sharing"]);
    println!("canvas share: {canvas}");
    println!(
        "screen share: cameras after {} ms, screen decoded {} ms after sharing, ended {} ms after stopping",
        result["cameraMs"], result["screenMs"], result["stopMs"]
    );

    // Nothing the pages sent (offers with `sources` included) was refused.
    let sfu = suite.sfu_metrics;
    let video = common::metric_at(sfu, "sfu_tracks", &[("kind", "video")]);
    let refused = common::metric_at(sfu, "sfu_bad_input_total", &[("kind", "message")]);
    println!("sfu_tracks{{kind=video}} {video}, sfu_bad_input_total{{kind=message}} {refused}");
    assert_eq!(refused, 0.0, "a page's message was refused");
}
