//! A real browser through our TURN server: headless Chromium makes a relay-only WebRTC call
//! (`iceTransportPolicy: 'relay'`) between two RTCPeerConnections, once over TURN/UDP and once
//! over TURN/TCP, and the receiver must decode the fake camera's frames over a relay/relay
//! candidate pair (see `tests/browser/relay_call.mjs`).
//!
//! Needs Node.js 20+, Debian's `chromium` at /usr/bin/chromium (or `CHROMIUM=path`), and
//! `npm ci` run in `tests/browser`.
//! A missing piece fails the test; it is never skipped.
//!
//! Chromium ignores loopback-only hosts: with `lo` as the only interface up it gathers no
//! candidate at all. With any other interface up it binds its ICE sockets to that interface's
//! address and reaches the TURN server on 127.0.0.1 through the kernel's loopback route, so the
//! server sees the client at that address (e.g. 192.0.2.2), not at 127.0.0.1.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::Value;

mod common;
use common::{free_udp_tcp_port, ServerGuard};

const STATIC_USER: &str = "browser";
const STATIC_PASSWORD: &str = "browser-secret";
const REST_SECRET: &str = "turnkey-browser-test-secret";
/// Time the page gets to connect and decode (the script's --timeout-ms).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time after which the node process is killed: browser start-up, the call, and shutdown. The
/// script gives up by itself (and closes Chromium) 15 s after CALL_TIMEOUT, well before this.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// A TURN REST API credential (draft-uberti-behave-turn-rest-00, as coturn's
/// `--use-auth-secret`): username `<expiry unix time>:<user>`, password
/// base64(HMAC-SHA1(secret, username)). Computed here, independently of the server's code.
fn rest_credential(secret: &str, user: &str, ttl: Duration) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        + ttl;
    let username = format!("{}:{user}", expiry.as_secs());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    (username, password)
}

/// Runs `relay_call.mjs` once and returns its parsed RESULT line; panics with its output if the
/// call failed.
fn relay_call(chromium: &Path, url: &str, username: &str, credential: &str, proto: &str) -> Value {
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("relay_call.mjs")
        .args(["--urls", url])
        .args(["--username", username])
        .args(["--credential", credential])
        .args(["--expect-relay-protocol", proto])
        .args(["--timeout-ms", &CALL_TIMEOUT.as_millis().to_string()])
        .arg("--chromium")
        .arg(chromium);
    let (result, report) =
        common::run_browser_script(&mut cmd, RUN_LIMIT, &format!("relay_call.mjs over {url}"));

    // The script checks these itself; check the record too, so a script that stops checking
    // cannot pass silently.
    assert_eq!(result["ok"], true, "{report}");
    assert!(
        result["framesDecoded"].as_u64().unwrap_or(0) > 0,
        "no frame decoded: {report}"
    );
    for peer in ["caller", "callee"] {
        let sel = &result["selected"][peer];
        assert_eq!(sel["local"]["candidateType"], "relay", "{peer}: {report}");
        assert_eq!(sel["remote"]["candidateType"], "relay", "{peer}: {report}");
        assert_eq!(sel["local"]["relayProtocol"], proto, "{peer}: {report}");
        assert_eq!(sel["local"]["address"], "127.0.0.1", "{peer}: {report}");
    }
    println!(
        "{url}: {} frames decoded, {} ms",
        result["framesDecoded"], result["elapsedMs"]
    );
    result
}

#[test]
fn chromium_relay_only_call_over_udp_and_tcp() {
    let chromium = common::browser_prerequisites();
    let user_arg = format!("{STATIC_USER}:{STATIC_PASSWORD}");
    let port = free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let server = ServerGuard::turn_server(&[
        "--listen",
        &listen,
        "--relay-ip",
        "127.0.0.1",
        "--user",
        &user_arg,
        "--auth-secret",
        REST_SECRET,
        "--min-port",
        "50000",
        "--max-port",
        "59999",
    ]);
    let relayed = |s: &ServerGuard| s.metric("turn_relayed_packets_total", &[]);

    // TURN over UDP with a static long-term user.
    let before = relayed(&server);
    let udp = relay_call(
        &chromium,
        &format!("turn:127.0.0.1:{port}?transport=udp"),
        STATIC_USER,
        STATIC_PASSWORD,
        "udp",
    );
    let after_udp = relayed(&server);
    assert!(
        after_udp > before,
        "turn_relayed_packets_total did not move during the UDP call ({before} -> {after_udp}); \
         result: {udp}"
    );

    // TURN over TCP with a REST API credential.
    let (username, password) = rest_credential(REST_SECRET, "browser", Duration::from_secs(600));
    let tcp = relay_call(
        &chromium,
        &format!("turn:127.0.0.1:{port}?transport=tcp"),
        &username,
        &password,
        "tcp",
    );
    let after_tcp = relayed(&server);
    assert!(
        after_tcp > after_udp,
        "turn_relayed_packets_total did not move during the TCP call ({after_udp} -> \
         {after_tcp}); result: {tcp}"
    );
}
