//! The "Test my TURN server" page (`GET /turn-test`, `services/signaling/web/turn-test.html`) served by
//! the `turnkey` binary, driven in headless Chromium (`tests/browser/turn_test_page.mjs`)
//! against turnkey's own STUN/TURN listener:
//! - a static long-term user: the STUN URL and both TURN URLs (UDP, TCP) get OK verdicts, the
//!   relay candidates are on the relay IP and over the transport the URL asks for;
//! - the same user with a wrong password: both TURN URLs fail with "authentication failed
//!   (401 ...)", and the server counts the failed MESSAGE-INTEGRITY checks;
//! - a port nothing listens on: the STUN and TURN/UDP URLs time out, TURN/TCP is error 701;
//! - "Fetch issued credentials" with an API key (`POST /v1/ice-servers`): the page fills in
//!   turnkey's URLs and a TURN REST credential, and its TURN URLs get OK relay verdicts.
//!
//! TURN over TLS (`turns:`, `--tls-listen`) is covered with a self-signed certificate that
//! Chromium is told to trust by its SPKI hash (`--ignore-certificate-errors-spki-list`); without
//! that Chromium refuses the certificate and the page shows error 701.
//!
//! Chromium gathers nothing when loopback is the only interface up (see
//! `tests/browser_relay.rs`); with another interface up it binds its ICE sockets to that
//! interface's address and reaches 127.0.0.1 through the kernel's loopback route. So the STUN
//! server sees the browser at that interface's own address (e.g. 192.0.2.2), and Chromium (156,
//! headless, host addresses not hidden behind mDNS) drops a server-reflexive candidate equal to
//! a host candidate: no srflx candidate at all. It reports a failed binding as error 701, and an
//! unanswered one keeps gathering open. So the page infers "the server answered" from gathering
//! that completes with host candidates and no error (verdict `inferred: true`); the test accepts
//! that or a real srflx candidate with a non-loopback address, and checks with a dead port that
//! the same page then says "no srflx candidate (timeout ...)".
//!
//! Needs Node.js 20+, Debian's `chromium` (or `CHROMIUM=path`) and `npm ci` in `tests/browser`;
//! a missing piece fails the test.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::{free_udp_tcp_port, free_udp_tcp_port_pair, http_get, ServerGuard, LOCALHOST};

const API_KEY: &str = "turntest:turntest-api-secret";
const USER: &str = "tester";
const PASSWORD: &str = "secretpw";
/// Per-URL gathering timeout of the page (`?timeout=`).
const GATHER_TIMEOUT_MS: u64 = 15_000;
/// The script's limit for one scenario (page load, fetch, gathering).
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(40);
/// Time after which the node process is killed (the script gives up by itself before).
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// The result entry of `url` in one scenario's results.
fn entry<'a>(scenario: &'a Value, url: &str) -> &'a Value {
    scenario["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["url"] == url)
        .unwrap_or_else(|| panic!("no result for {url} in {scenario}"))
}

/// Checks an OK relay verdict over `transport` with a relay candidate on 127.0.0.1.
fn assert_relay_ok(scenario: &Value, url: &str, transport: &str, report: &str) {
    let r = entry(scenario, url);
    let v = &r["verdict"];
    assert_eq!(v["ok"], true, "{url}: {v}\n{report}");
    assert_eq!(v["kind"], "relay", "{url}: {v}\n{report}");
    assert_eq!(v["transport"], transport, "{url}: {v}\n{report}");
    let text = v["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with(&format!(
            "relay works over {}: 127.0.0.1:",
            transport.to_uppercase()
        )),
        "{url}: {text}\n{report}"
    );
    let relays: Vec<&Value> = r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == "relay")
        .collect();
    assert!(!relays.is_empty(), "{url}: no relay candidate\n{report}");
    for c in relays {
        assert_eq!(c["address"], "127.0.0.1", "{url}: {c}\n{report}");
        assert_eq!(c["relayProtocol"], transport, "{url}: {c}\n{report}");
        let port = c["port"].as_u64().unwrap_or(0);
        assert!((61_000..=62_999).contains(&port), "{url}: {c}\n{report}");
        assert!(c["ms"].as_u64().is_some(), "{url}: {c}\n{report}");
    }
    // Relay-only gathering: nothing but relay candidates.
    assert!(
        r["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] == "relay"),
        "{url}: {r}\n{report}"
    );
}

/// Checks an OK STUN verdict (see the module docs): from a srflx candidate if Chromium reports
/// one, else inferred from a completed gathering with host candidates and no error.
fn assert_stun_ok(scenario: &Value, url: &str, report: &str) {
    let r = entry(scenario, url);
    let v = &r["verdict"];
    assert_eq!(v["ok"], true, "{url}: {v}\n{report}");
    assert_eq!(v["kind"], "srflx", "{url}: {v}\n{report}");
    assert_eq!(r["complete"], true, "{url}: {r}\n{report}");
    assert!(
        r["errors"].as_array().unwrap().is_empty(),
        "{url}: {r}\n{report}"
    );
    let candidates = r["candidates"].as_array().unwrap();
    let not_loopback_ip = |c: &Value| {
        c["address"]
            .as_str()
            .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            .is_some_and(|ip| !ip.is_loopback())
    };
    let text = v["text"].as_str().unwrap_or_default();
    match candidates.iter().find(|c| c["type"] == "srflx") {
        Some(srflx) => {
            assert!(not_loopback_ip(srflx), "{url}: {srflx}\n{report}");
            assert_eq!(
                text,
                format!(
                    "reachable: server-reflexive candidate {}:{}",
                    srflx["address"].as_str().unwrap(),
                    srflx["port"]
                ),
                "{report}"
            );
        }
        None => {
            assert_eq!(v["inferred"], true, "{url}: {v}\n{report}");
            assert!(
                candidates
                    .iter()
                    .any(|c| c["type"] == "host" && c["protocol"] == "udp" && not_loopback_ip(c)),
                "{url}: {r}\n{report}"
            );
            assert!(
                text.starts_with("reachable: the server answered"),
                "{url}: {text}\n{report}"
            );
        }
    }
}

/// Checks a failed verdict for a server that is not there: the text starts with `expected`.
fn assert_unreachable(scenario: &Value, url: &str, expected: &str, report: &str) {
    let r = entry(scenario, url);
    let v = &r["verdict"];
    assert_eq!(v["ok"], false, "{url}: {v}\n{report}");
    assert_eq!(v["kind"], "error", "{url}: {v}\n{report}");
    let text = v["text"].as_str().unwrap_or_default();
    assert!(text.starts_with(expected), "{url}: {text}\n{report}");
    assert!(
        r["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["type"] == "host"),
        "{url}: {r}\n{report}"
    );
}

/// Checks a failed TURN verdict that names the 401.
fn assert_auth_failed(scenario: &Value, url: &str, report: &str) {
    let r = entry(scenario, url);
    let v = &r["verdict"];
    assert_eq!(v["ok"], false, "{url}: {v}\n{report}");
    assert_eq!(v["kind"], "error", "{url}: {v}\n{report}");
    let text = v["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("authentication failed (401"),
        "{url}: {text}\n{report}"
    );
    assert!(
        r["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["code"] == 401),
        "{url}: {r}\n{report}"
    );
    assert!(
        r["candidates"].as_array().unwrap().is_empty(),
        "{url}: {r}\n{report}"
    );
}

#[test]
fn chromium_turn_test_page_verdicts() {
    let chromium = common::browser_prerequisites();
    let turn_port = free_udp_tcp_port();
    let http = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let sig_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let media_port = free_udp_tcp_port_pair(&[LOCALHOST]);
    let link = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let sfu_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let user_arg = format!("{USER}:{PASSWORD}");
    let tls_port = free_udp_tcp_port();
    let (files, test_cert) = common::tls::CertFiles::with_new_cert("turn-test-page");
    let spki = test_cert.spki_sha256;
    let turnkey = ServerGuard::start(
        "turnkey",
        &[
            "--listen",
            &format!("127.0.0.1:{turn_port}"),
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "61000",
            "--max-port",
            "62999",
            "--user",
            &user_arg,
            "--tls-listen",
            &format!("127.0.0.1:{tls_port}"),
            "--cert",
            files.cert_arg(),
            "--key",
            files.key_arg(),
            "--api-key",
            API_KEY,
            "--signaling-listen",
            &http.to_string(),
            "--signaling-metrics",
            &sig_metrics.to_string(),
            "--sfu-media-listen",
            &format!("127.0.0.1:{media_port}"),
            "--sfu-workers",
            "1",
            "--sfu-link-listen",
            &link.to_string(),
            "--sfu-metrics",
            &sfu_metrics.to_string(),
        ],
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || matches!(
            http_get(sig_metrics, "/healthz"),
            Ok((200, _))
        )),
        "signaling not ready"
    );

    // The page is served, and the demo page links to it.
    let (status, page) = http_get(http, "/turn-test").expect("GET /turn-test");
    assert_eq!(status, 200);
    assert!(page.contains("window.turnTest"), "{page}");
    let (status, index) = http_get(http, "/").expect("GET /");
    assert_eq!(status, 200);
    assert!(index.contains("href=\"/turn-test\""), "{index}");

    let stun = format!("stun:127.0.0.1:{turn_port}");
    let turn_udp = format!("turn:127.0.0.1:{turn_port}?transport=udp");
    let turn_tcp = format!("turn:127.0.0.1:{turn_port}?transport=tcp");
    let turns = format!("turns:127.0.0.1:{tls_port}?transport=tcp");
    let timeout = GATHER_TIMEOUT_MS.to_string();
    let all_urls = [
        stun.as_str(),
        turn_udp.as_str(),
        turn_tcp.as_str(),
        turns.as_str(),
    ]
    .join(",");
    let turn_urls = [turn_udp.as_str(), turn_tcp.as_str(), turns.as_str()].join(",");
    // A port nothing listens on (UDP or TCP).
    let dead = free_udp_tcp_port();
    let dead_stun = format!("stun:127.0.0.1:{dead}");
    let dead_udp = format!("turn:127.0.0.1:{dead}?transport=udp");
    let dead_tcp = format!("turn:127.0.0.1:{dead}?transport=tcp");
    let dead_urls = [dead_stun.as_str(), dead_udp.as_str(), dead_tcp.as_str()].join(",");
    let scenarios = json!([
        {
            "name": "static user",
            "query": {
                "urls": all_urls,
                "username": USER, "credential": PASSWORD, "timeout": timeout,
            },
        },
        {
            "name": "wrong credential",
            "query": {
                "urls": turn_urls,
                "username": USER, "credential": "not-the-password", "timeout": timeout,
            },
        },
        {
            "name": "nothing there",
            "query": { "urls": dead_urls, "username": USER, "credential": PASSWORD, "timeout": "5000" },
        },
        {
            "name": "issued credentials",
            "query": { "timeout": timeout },
            "fetchKey": API_KEY,
            "fetchMode": "api-key",
        },
    ]);

    let bad_integrity =
        || turnkey.metric("turn_auth_failures_total", &[("reason", "bad_integrity")]);
    let failures_before = bad_integrity();

    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("turn_test_page.mjs")
        .args(["--base-url", &format!("http://{http}")])
        .args(["--scenarios", &scenarios.to_string()])
        .args(["--timeout-ms", &SCENARIO_TIMEOUT.as_millis().to_string()])
        .env(
            "CHROMIUM_EXTRA_ARGS",
            format!("--ignore-certificate-errors-spki-list={spki}"),
        )
        .arg("--chromium")
        .arg(&chromium);
    let (result, report) = common::run_browser_script(&mut cmd, RUN_LIMIT, "turn_test_page.mjs");
    assert_eq!(result["ok"], true, "{report}");
    let by_name = |name: &str| -> &Value {
        result["scenarios"]
            .as_array()
            .expect("scenarios")
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no scenario {name}: {report}"))
    };

    // A static long-term user.
    let good = by_name("static user");
    assert_stun_ok(good, &stun, &report);
    assert_relay_ok(good, &turn_udp, "udp", &report);
    assert_relay_ok(good, &turn_tcp, "tcp", &report);
    assert_relay_ok(good, &turns, "tls", &report);
    // The page shows the same verdicts it exposes to the test hook.
    for r in good["results"].as_array().unwrap() {
        let shown = good["rendered"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["url"] == r["url"])
            .and_then(|x| x["verdict"].as_str())
            .unwrap_or_default();
        assert!(
            shown.contains(r["verdict"]["text"].as_str().unwrap()),
            "{shown} vs {r}"
        );
    }

    // A wrong password.
    let wrong = by_name("wrong credential");
    assert_auth_failed(wrong, &turn_udp, &report);
    assert_auth_failed(wrong, &turn_tcp, &report);
    assert_auth_failed(wrong, &turns, &report);
    let failures_after = bad_integrity();
    assert!(
        failures_after >= failures_before + 3.0,
        "turn_auth_failures_total{{reason=\"bad_integrity\"}} {failures_before} -> {failures_after}"
    );

    // No server on the port: the same page says so, for STUN too (so its STUN inference above
    // is not what it says for every URL).
    // Chromium ignores ICMP port unreachable and reports an unanswered STUN/TURN UDP server
    // only after its own, longer timeout: the page times out first. A refused TCP connection is
    // error 701 at once.
    let nothing = by_name("nothing there");
    assert_unreachable(
        nothing,
        &dead_stun,
        "no srflx candidate (timeout after 5000 ms)",
        &report,
    );
    assert_unreachable(nothing, &dead_udp, "timeout: no relay candidate", &report);
    assert_unreachable(nothing, &dead_tcp, "unreachable (701", &report);

    // Credentials issued by the signaling server for its API key.
    let issued = by_name("issued credentials");
    let fetched = &issued["fetched"];
    let urls: Vec<&str> = fetched["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    // turnkey hands out a `turns:` URL for its TLS listener too.
    assert_eq!(
        urls,
        vec![
            stun.as_str(),
            turn_udp.as_str(),
            turn_tcp.as_str(),
            turns.as_str()
        ],
        "{report}"
    );
    assert_eq!(fetched["hasCredential"], true, "{report}");
    assert!(
        fetched["username"]
            .as_str()
            .is_some_and(|u| u.ends_with(":turntest")),
        "REST username <expiry>:<API key>: {fetched}"
    );
    assert_relay_ok(issued, &turn_udp, "udp", &report);
    assert_relay_ok(issued, &turn_tcp, "tcp", &report);
    assert_relay_ok(issued, &turns, "tls", &report);
    assert_stun_ok(issued, &stun, &report);
    println!(
        "turn-test page: {} scenarios in {} ms",
        result["scenarios"].as_array().unwrap().len(),
        result["elapsedMs"]
    );
}
