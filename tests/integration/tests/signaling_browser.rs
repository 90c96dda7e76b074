//! Mesh rooms in a real browser through our signaling server: headless Chromium opens the
//! signaling server's demo page (`GET /`, which loads `GET /client.js`) in 2 and then 4 pages
//! that join one mesh room each, and every page must decode video from every other page
//! (see `tests/browser/mesh_room.mjs`). In the 4-page room the last page joins while page 0's
//! signaling connection is down (the server drops the newcomer's offer to it), and page 0 must
//! resume and connect with the newcomer all the same. In each room one page's signaling
//! connection is dropped and must resume (same participant id, ICE restart, video keeps
//! flowing); in the 2-page room it then drops again and its resume is refused, so it must rejoin
//! as a new participant and connect again; and one page leaves and the others must see it go. Then the same again with `?relay=1`
//! (`iceTransportPolicy: 'relay'`): all media crosses our TURN server, with the TURN REST
//! credentials the signaling server put in `joined.iceServers`, so every selected candidate
//! pair is relay/relay and the TURN server's `turn_relayed_packets_total` moves.
//!
//! Needs Node.js 20+, Debian's `chromium` at /usr/bin/chromium (or `CHROMIUM=path`), and
//! `npm ci` run in `tests/browser`. A missing piece fails the test; it is never skipped.
//!
//! Chromium ignores loopback-only hosts: the machine needs a non-loopback interface up (see
//! tests/browser_relay.rs); with one, it reaches the servers on 127.0.0.1 fine.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{free_udp_tcp_port, http_get, ServerGuard, LOCALHOST};

/// TURN REST shared secret of the TURN server and the signaling server.
const TURN_SECRET: &str = "turnkey-mesh-test-secret";
const API_KEY: &str = "devkey:devsecret";
const TURN_REST_KEY: &str = "turnkey-mesh-rest-key";
/// Time each room (scenario) gets to join, connect, decode, resume and leave (the script's
/// --timeout-ms).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);
/// Page counts of the rooms, in order.
const PAGES: &str = "2,4";
/// Time after which the node process is killed. The script gives up by itself (and closes
/// Chromium) 30 s after its scenarios' time, well before this.
const RUN_LIMIT: Duration = Duration::from_secs(2 * 60 + 90);

/// Runs `mesh_room.mjs` once over every room size in PAGES and returns its parsed RESULT line;
/// panics with its output if a room failed.
///
/// `turn_uris`: the TURN URIs the signaling server was given; every page must have got them,
/// with a username, in `joined.iceServers`.
fn mesh_rooms(chromium: &Path, base_url: &str, turn_uris: &[&str], relay: bool) -> Value {
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("mesh_room.mjs")
        .args(["--base-url", base_url])
        .args(["--key", API_KEY])
        .args(["--pages", PAGES])
        .arg("--resume")
        .args(["--timeout-ms", &SCENARIO_TIMEOUT.as_millis().to_string()])
        .arg("--chromium")
        .arg(chromium);
    if relay {
        cmd.arg("--relay");
    }
    let what = if relay {
        "relay-only mesh rooms"
    } else {
        "mesh rooms"
    };
    let (result, report) =
        common::run_browser_script(&mut cmd, RUN_LIMIT, &format!("mesh_room.mjs ({what})"));

    // The script checks these itself; check the record too, so a script that stops checking
    // cannot pass silently.
    assert_eq!(result["ok"], true, "{report}");
    let scenarios = result["scenarios"].as_array().expect("scenarios");
    let sizes: Vec<u64> = scenarios
        .iter()
        .filter_map(|s| s["pages"].as_u64())
        .collect();
    assert_eq!(sizes, [2, 4], "{report}");
    for scenario in scenarios {
        let n = scenario["pages"].as_u64().unwrap() as usize;
        assert_eq!(scenario["ok"], true, "{report}");
        assert_eq!(scenario["relay"], relay, "{report}");
        assert_eq!(scenario["resume"]["ok"], true, "{n} pages: {report}");
        if n >= 3 {
            assert_eq!(scenario["awayJoin"]["ok"], true, "{n} pages: {report}");
        } else {
            assert_eq!(scenario["rejoin"]["ok"], true, "{n} pages: {report}");
        }
        assert_eq!(scenario["leave"]["ok"], true, "{n} pages: {report}");
        let ids: Vec<&str> = scenario["participantIds"]
            .as_array()
            .expect("participantIds")
            .iter()
            .map(|v| v.as_str().expect("participant id"))
            .collect();
        assert_eq!(ids.len(), n, "{report}");
        for (i, servers) in scenario["iceServers"]
            .as_array()
            .expect("iceServers")
            .iter()
            .enumerate()
        {
            let servers = servers.as_array().expect("iceServers of a page");
            let turn = servers
                .iter()
                .find(|s| {
                    let urls = s["urls"].as_array().map(Vec::as_slice).unwrap_or_default();
                    turn_uris.iter().all(|u| urls.iter().any(|v| v == u))
                })
                .unwrap_or_else(|| panic!("page {i}: no ICE server with {turn_uris:?}: {report}"));
            assert!(
                turn["username"].as_str().is_some_and(|u| !u.is_empty()),
                "page {i}: TURN server without a username: {report}"
            );
        }
        let media = scenario["media"].as_array().expect("media");
        assert_eq!(media.len(), n, "{report}");
        for (i, page) in media.iter().enumerate() {
            let remotes = page.as_array().expect("per-remote stats");
            for (j, id) in ids.iter().enumerate() {
                if i == j {
                    continue;
                }
                let s = remotes
                    .iter()
                    .find(|s| s["participantId"] == *id)
                    .unwrap_or_else(|| panic!("page {i}: no stats for page {j} ({id}): {report}"));
                assert!(
                    s["framesDecoded"].as_u64().unwrap_or(0) > 0,
                    "page {i} decoded no video from page {j}: {report}"
                );
                if relay {
                    let pair = &s["selectedPair"];
                    assert_eq!(
                        pair["local"]["candidateType"], "relay",
                        "page {i}->{j}: {report}"
                    );
                    assert_eq!(
                        pair["remote"]["candidateType"], "relay",
                        "page {i}->{j}: {report}"
                    );
                    assert_eq!(
                        pair["local"]["address"], "127.0.0.1",
                        "page {i}->{j}: {report}"
                    );
                }
            }
        }
        println!(
            "{what}, {n} pages: every page decodes every other, connected in {} ms, done in {} ms",
            scenario["connectedMs"], scenario["elapsedMs"]
        );
    }
    result
}

/// `GET path` on the signaling listener; panics unless it answers 200 with `needle` in the body.
fn get_page(addr: SocketAddr, path: &str, needle: &str) {
    match http_get(addr, path) {
        Ok((200, body)) => assert!(
            body.contains(needle),
            "GET http://{addr}{path}: no {needle:?} in the body"
        ),
        Ok((status, body)) => panic!("GET http://{addr}{path}: status {status}: {body}"),
        Err(e) => panic!("GET http://{addr}{path}: {e}"),
    }
}

#[test]
fn chromium_mesh_rooms_through_the_demo_page() {
    let chromium = common::browser_prerequisites();

    let turn_port = free_udp_tcp_port();
    let turn_listen = format!("127.0.0.1:{turn_port}");
    let turn = ServerGuard::turn_server(&[
        "--listen",
        &turn_listen,
        "--relay-ip",
        "127.0.0.1",
        "--auth-secret",
        TURN_SECRET,
        // Relay ports above Linux's ephemeral range (32768-60999), where free_udp_tcp_port picks
        // listen ports for this and other tests.
        "--min-port",
        "61000",
        "--max-port",
        "62999",
    ]);

    let http_port = free_udp_tcp_port();
    let listen = SocketAddr::new(LOCALHOST, http_port);
    let base_url = format!("http://{listen}");
    let turn_udp = format!("turn:{turn_listen}?transport=udp");
    let turn_tcp = format!("turn:{turn_listen}?transport=tcp");
    let _signaling = ServerGuard::start(
        "signaling",
        &[
            "--listen",
            &listen.to_string(),
            "--public-url",
            &base_url,
            "--api-key",
            API_KEY,
            "--turn-secret",
            TURN_SECRET,
            "--turn-uri",
            &turn_udp,
            "--turn-uri",
            &turn_tcp,
            "--turn-rest-key",
            TURN_REST_KEY,
        ],
    );
    get_page(listen, "/", "window.turnkeyDemo");
    // The public entry re-exports the client's API from its modules (see
    // signaling/tests/web_client.rs for every module it imports).
    get_page(
        listen,
        "/client.js",
        "export { PROTOCOL_VERSION, TurnkeyRoom }",
    );
    get_page(listen, "/client/room.js", "export class TurnkeyRoom");

    // Direct (host candidates allowed): the TURN server may or may not carry media here.
    let turn_uris = [turn_udp.as_str(), turn_tcp.as_str()];
    mesh_rooms(&chromium, &base_url, &turn_uris, false);

    // Relay only: every byte of media crosses our TURN server.
    let relayed = |s: &ServerGuard| s.metric("turn_relayed_packets_total", &[]);
    let before = relayed(&turn);
    let result = mesh_rooms(&chromium, &base_url, &turn_uris, true);
    let after = relayed(&turn);
    assert!(
        after > before,
        "turn_relayed_packets_total did not move during the relay-only rooms ({before} -> \
         {after}); result: {result}"
    );
    println!("turn_relayed_packets_total: {before} -> {after}");
}

/// A wrong API key is shown at once: the demo page opened with `?key=<wrong>&autojoin=1` and
/// `/turn-test`'s credential fetch with that key each show the 401 within 10 s (before, the 401
/// carried a `Basic` challenge, Chromium waited on a login prompt and the demo page sat on
/// "Joining..." for good). The same request without a browser still gets `Basic`.
#[test]
fn chromium_shows_a_wrong_key_at_once() {
    let chromium = common::browser_prerequisites();
    let listen = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let base_url = format!("http://{listen}");
    let _signaling = start_signaling(listen);
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("wrong_key.mjs")
        .args(["--base-url", &base_url])
        .args(["--key", "devkey:wrong-secret"])
        .args(["--timeout-ms", "10000"])
        .arg("--chromium")
        .arg(&chromium);
    let (result, report) =
        common::run_browser_script(&mut cmd, Duration::from_secs(90), "wrong_key.mjs");
    assert_eq!(result["ok"], true, "{report}");
    let demo_error = result["demo"]["error"].as_str().unwrap_or_default();
    assert!(demo_error.contains("401"), "{report}");
    let fetch = result["turnTest"]["outcome"].as_str().unwrap_or_default();
    assert!(fetch.contains("401"), "{report}");
    assert_eq!(result["demo"]["state"], "error", "{report}");

    // Programs are still told to use Basic.
    let (head, _) = raw_post(listen, "/v1/rooms/x/join", "devkey:wrong-secret");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"turnkey\""),
        "{head}"
    );
}

/// `signaling` on `listen` with the test's API key, TURN secret and REST key.
fn start_signaling(listen: SocketAddr) -> ServerGuard {
    ServerGuard::start(
        "signaling",
        &[
            "--listen",
            &listen.to_string(),
            "--api-key",
            API_KEY,
            "--turn-secret",
            TURN_SECRET,
            "--turn-uri",
            "turn:127.0.0.1:3478?transport=udp",
            "--turn-rest-key",
            TURN_REST_KEY,
        ],
    )
}

/// A POST with HTTP Basic `user_pass` and no browser headers; the response head and body.
fn raw_post(addr: SocketAddr, path: &str, user_pass: &str) -> (String, String) {
    raw_request(addr, "POST", path, user_pass, "{}")
}

/// A request with HTTP Basic `user_pass`, a JSON `body` and no browser headers; the response
/// head and body.
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    user_pass: &str,
    body: &str,
) -> (String, String) {
    use base64::Engine as _;
    use std::io::{Read, Write};
    let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: \
         Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.to_string(), body.to_string())
}

/// The mode is visible and honoured: asking for `sfu` in a room that exists as mesh joins it
/// as mesh and says so on the page (before, the page joined the mesh without a word).
#[test]
fn chromium_says_when_the_room_exists_in_the_other_mode() {
    let chromium = common::browser_prerequisites();
    let listen = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let _signaling = start_signaling(listen);
    let (head, body) = raw_request(
        listen,
        "POST",
        "/v1/rooms",
        API_KEY,
        r#"{"name":"meshy","mode":"mesh"}"#,
    );
    assert!(head.starts_with("HTTP/1.1 201"), "{head}\n{body}");
    let url = format!("http://{listen}/?key={API_KEY}&room=meshy&mode=sfu&autojoin=1&audio=0");
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("demo_join.mjs")
        .args(["--url", &url])
        .arg("--chromium")
        .arg(&chromium);
    let (result, report) =
        common::run_browser_script(&mut cmd, Duration::from_secs(90), "demo_join.mjs");
    assert_eq!(result["state"], "joined", "{report}");
    assert_eq!(result["mode"], "mesh", "{report}");
    let notice = result["modeNotice"].as_str().unwrap_or_default();
    assert!(notice.contains("already exists as a mesh room"), "{report}");
    assert!(
        result["modeText"]
            .as_str()
            .is_some_and(|t| t.contains("mesh") && t.contains(notice)),
        "{report}"
    );
}
