//! The Quick start binary: `turnkey` with its defaults (ports moved to free ones) prints a TURN
//! credential that allocates on its TURN server, an RTCIceServer JSON, and a demo page URL with
//! a development API key that the signaling server accepts.

mod common;
mod wire;

use common::{free_udp_tcp_port, http_get, run_with_timeout, wait_until, ServerGuard};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A POST with HTTP Basic auth; the status and body.
fn post_basic(addr: SocketAddr, path: &str, user_pass: &str, body: &str) -> (u16, String) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value after `label` on the line that has it, e.g. `    username  1795:turnkey-local`.
fn printed(log: &str, label: &str) -> Option<String> {
    log.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

#[test]
fn quick_start_binary_prints_working_credentials_and_demo_url() {
    let turn = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let sig = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let sig_metrics = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let server = ServerGuard::start(
        "turnkey",
        &[
            "--listen",
            &turn.to_string(),
            "--signaling-listen",
            &sig.to_string(),
            "--signaling-metrics",
            &sig_metrics.to_string(),
            "--sfu-media-listen",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
            "--sfu-workers",
            "1",
            "--sfu-link-listen",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
            "--sfu-metrics",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || server
            .log()
            .contains("demo page")
            && server.log().contains("RTCIceServer")),
        "turnkey did not print its usage:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    // The banner README.md shows is the one printed: every sample line without a run-specific
    // value (no digit) is a line of the real banner.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let sample = readme
        .split("```text\nturnkey is running")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .map(|rest| format!("turnkey is running{rest}"))
        .expect("README.md shows the banner");
    let printed_lines: Vec<&str> = log.lines().collect();
    for line in sample
        .lines()
        .filter(|l| !l.chars().any(|c| c.is_ascii_digit()))
    {
        assert!(
            printed_lines.contains(&line),
            "README's banner line {line:?} is not printed:\n{log}"
        );
    }

    // The printed TURN credential allocates on the printed TURN address.
    let username = printed(&log, "username").expect("printed username");
    let password = printed(&log, "password").expect("printed password");
    let mut c = wire::WireClient::new(turn, &username, &password);
    let relay = c.allocate();
    assert_eq!(relay.ip(), turn.ip());
    // The RTCIceServer JSON names the same URLs and credential.
    let json_start = log.find("{\n").expect("RTCIceServer JSON");
    let json_end = log[json_start..].find("\n}").unwrap() + json_start + 2;
    let ice: serde_json::Value = serde_json::from_str(&log[json_start..json_end]).unwrap();
    assert_eq!(ice["username"], username.as_str());
    assert_eq!(ice["credential"], password.as_str());
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        urls.contains(&format!("turn:{turn}?transport=udp").as_str()),
        "{urls:?}"
    );

    // The demo page is served, and the printed development key is accepted by /join, which
    // hands out TURN credentials for this TURN server signed with the shared secret.
    let (status, page) = http_get(sig, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("client.js"), "{page}");
    let key = printed(&log, "API key").expect("printed dev API key");
    let (status, body) = post_basic(
        sig,
        "/v1/rooms/quickstart/join",
        &key,
        r#"{"identity":"tester"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let join: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ice = &join["iceServers"][0];
    let mut c2 = wire::WireClient::new(
        turn,
        ice["username"].as_str().unwrap(),
        ice["credential"].as_str().unwrap(),
    );
    c2.allocate();
    let (status, _) = post_basic(sig, "/v1/rooms/quickstart/join", "dev:wrong", "{}");
    assert_eq!(status, 401);
}

/// All or nothing: when any port `turnkey` needs is taken, it exits at once (no "running"
/// banner, no TURN left serving alone until Ctrl-C) with an error naming the port and the flag
/// that moves it.
#[test]
fn a_taken_port_stops_turnkey_at_once_naming_its_flag() {
    let flags = [
        "--listen",
        "--metrics",
        "--signaling-listen",
        "--signaling-metrics",
        "--sfu-media-listen",
        "--sfu-link-listen",
        "--sfu-metrics",
    ];
    for taken_flag in flags {
        // Held for the whole run: TCP on the port (every listener above binds TCP on its
        // port; the SFU's media port is ICE-TCP's too).
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut args: Vec<String> = vec!["--sfu-workers".into(), "1".into()];
        for flag in flags {
            let p = if flag == taken_flag {
                port
            } else {
                free_udp_tcp_port()
            };
            args.extend([flag.to_string(), format!("127.0.0.1:{p}")]);
        }
        let out = run_with_timeout(
            std::process::Command::new(common::bin_path("turnkey")).args(&args),
            Duration::from_secs(30),
        );
        assert!(
            !out.timed_out(),
            "{taken_flag} {port} taken: turnkey kept running:\n{}",
            out.combined()
        );
        assert!(!out.success(), "{taken_flag}: exit 0:\n{}", out.combined());
        assert!(
            out.stderr.contains(&format!("127.0.0.1:{port}")) && out.stderr.contains(taken_flag),
            "{taken_flag} {port} taken: the error does not name the port and the flag:\n{}",
            out.combined()
        );
        assert!(
            !out.stdout.contains("is running"),
            "{taken_flag}: printed the banner of a half-started suite:\n{}",
            out.combined()
        );
        drop(taken);
    }
}

#[test]
fn the_suites_own_ports_are_never_peers_even_when_the_host_is_allowed() {
    // Issue 9 §1: with --allow-peer covering this host, the relay still refuses the ports the
    // suite listens on: TURN and its metrics, signaling, the SFU's metrics (and media/link).
    let suite = common::LocalSuite::start(
        "k1:s1",
        &["--allow-peer", "127.0.0.0/8", "--user", "alice:pw"],
    );
    let server = SocketAddr::from(([127, 0, 0, 1], suite.turn_port));
    let mut c = wire::WireClient::new(server, "alice", "pw");
    c.allocate();
    let media = suite.sfu_media;
    let media2 = SocketAddr::new(media.ip(), media.port() + 1);
    for own in [
        server,
        suite.guard.metrics,
        suite.http,
        suite.sfu_metrics,
        media,
        media2,
    ] {
        let r = c.call(
            rtc_stun::message::METHOD_CREATE_PERMISSION,
            &[],
            &[SocketAddr::new(own.ip(), own.port())],
        );
        assert_eq!(
            wire::code(&r),
            Some(403),
            "{own} is one of the suite's ports"
        );
    }
    // Another port of the allowed host is fine.
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let r = c.call(
        rtc_stun::message::METHOD_CREATE_PERMISSION,
        &[],
        &[elsewhere],
    );
    assert_eq!(wire::code(&r), None);
}

/// Every service's `/metrics` is valid: the classic text format by default, which
/// `promtool check metrics` (Prometheus's own linter) accepts, and OpenMetrics with its content
/// type when the scraper asks for it (as Prometheus does); each exports `turnkey_build_info`.
/// (Before, the body was OpenMetrics served as text 0.0.4, which promtool rejected.)
#[test]
fn every_service_serves_valid_metrics() {
    let promtool = common::require_tool("promtool");
    let suite = common::LocalSuite::start("metrics:metrics-secret", &[]);
    let stun = ServerGuard::start(
        "stun-server",
        &["--listen", &format!("127.0.0.1:{}", free_udp_tcp_port())],
    );
    for (service, addr) in [
        ("turn", suite.guard.metrics),
        ("signaling", suite.sig_metrics),
        ("sfu", suite.sfu_metrics),
        ("stun", stun.metrics),
    ] {
        let (head, body) = get_metrics(addr, None);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{service}: {head}"
        );
        assert!(
            body.lines()
                .any(|l| l.starts_with("turnkey_build_info{version=")),
            "{service}: no turnkey_build_info in\n{body}"
        );
        let mut check = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{service}: promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (head, body) = get_metrics(addr, Some("application/openmetrics-text; version=1.0.0"));
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{service}: {head}"
        );
        assert!(body.ends_with("# EOF\n"), "{service}: {body}");
    }
}

/// `GET /metrics` with an optional `Accept`; the lower-cased head and the body.
fn get_metrics(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

/// `turnkey` with its ports moved to free ones on 127.0.0.1, plus `extra` flags.
fn start_turnkey(extra: &[&str]) -> (ServerGuard, SocketAddr, SocketAddr) {
    let turn = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let sig = SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port()));
    let port = || format!("127.0.0.1:{}", free_udp_tcp_port());
    let mut args: Vec<String> = [
        "--listen".to_string(),
        turn.to_string(),
        "--signaling-listen".into(),
        sig.to_string(),
        "--signaling-metrics".into(),
        port(),
        "--sfu-media-listen".into(),
        port(),
        "--sfu-workers".into(),
        "1".into(),
        "--sfu-link-listen".into(),
        port(),
        "--sfu-metrics".into(),
        port(),
    ]
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    let server = ServerGuard::start("turnkey", &args);
    assert!(
        wait_until(Duration::from_secs(20), || server
            .log()
            .contains("demo page")),
        "turnkey did not print its banner:\n{}",
        server.log()
    );
    (server, turn, sig)
}

/// Usable from another device: `--https` serves the demo page, the API and the WebSocket over
/// TLS (browsers need https for the camera off localhost) with a self-signed certificate whose
/// fingerprint is printed, and hands out wss:// URLs; `--dev-dir` keeps the API key, the TURN
/// secret and the certificate across restarts, so a TURN credential handed out before a
/// restart still allocates after it. Before, every start made a new key and secret, and there
/// was no HTTPS.
#[test]
fn https_and_a_dev_dir_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("turnkey-dev-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap().to_string();
    let (first, _, sig) = start_turnkey(&["--https", "--dev-dir", &dir_arg]);
    let log = first.log();
    let key = printed(&log, "API key").expect("printed API key");
    assert!(log.contains("generated and kept in"), "{log}");
    let fingerprint = log
        .lines()
        .find_map(|l| {
            l.split_once("certificate SHA-256 ")
                .map(|(_, fp)| fp.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no fingerprint printed:\n{log}"));
    let demo = printed(&log, "demo page").expect("demo page URL");
    assert!(demo.starts_with(&format!("https://{sig}/?key=")), "{demo}");

    let (status, page, shown) = common::tls::https_request(sig, "GET", "/", "", "");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("client.js"), "{page}");
    assert_eq!(
        shown, fingerprint,
        "the certificate served is the one printed"
    );
    let (status, body, _) = common::tls::https_request(
        sig,
        "POST",
        "/v1/rooms/lan/join",
        &key,
        r#"{"identity":"phone"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let join: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        join["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("wss://")),
        "{join}"
    );
    let ice = join["iceServers"][0].clone();
    // A browser that accepted the certificate (as after checking the fingerprint) joins a room
    // from the https page over wss.
    let chromium = common::browser_prerequisites();
    let mut cmd = std::process::Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("demo_join.mjs")
        .args(["--url", &format!("{demo}&autojoin=1&audio=0")])
        .arg("--insecure")
        .arg("--chromium")
        .arg(&chromium);
    let (result, report) =
        common::run_browser_script(&mut cmd, Duration::from_secs(90), "demo_join.mjs");
    assert_eq!(result["state"], "joined", "{report}");
    assert_eq!(result["origin"], format!("https://{sig}"), "{report}");
    assert_eq!(result["secureContext"], true, "{report}");
    for f in ["dev-key", "turn-secret", "https-cert.pem", "https-key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f} is readable by others: {mode:o}");
    }
    drop(first);

    let (second, turn2, sig2) = start_turnkey(&["--https", "--dev-dir", &dir_arg]);
    let log2 = second.log();
    assert_eq!(printed(&log2, "API key"), Some(key.clone()), "{log2}");
    assert!(log2.contains(&fingerprint), "a new certificate:\n{log2}");
    let (status, _, shown) = common::tls::https_request(sig2, "GET", "/", "", "");
    assert_eq!((status, shown), (200, fingerprint));
    // The TURN credential of the first run's join grant allocates on the second run.
    let mut c = wire::WireClient::new(
        turn2,
        ice["username"].as_str().unwrap(),
        ice["credential"].as_str().unwrap(),
    );
    c.allocate();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--dev-key` keeps the key and (derived from it) the TURN secret across restarts; with a TLS
/// listener the banner and join grants hand out `turns:` URLs named by `--turns-host`.
#[test]
fn a_dev_key_keeps_turn_credentials_and_tls_gets_turns_urls() {
    let (files, _cert) = common::tls::CertFiles::with_new_cert("turns-urls");
    let tls_port = free_udp_tcp_port();
    let tls_listen = format!("127.0.0.1:{tls_port}");
    let flags = [
        "--dev-key",
        "devk:devs3cret",
        "--tls-listen",
        &tls_listen,
        "--cert",
        files.cert_arg(),
        "--key",
        files.key_arg(),
        "--turns-host",
        "turn.test",
    ];
    let (first, _, sig) = start_turnkey(&flags);
    let log = first.log();
    assert_eq!(
        printed(&log, "API key").as_deref(),
        Some("devk:devs3cret"),
        "{log}"
    );
    assert!(log.contains("from --dev-key"), "{log}");
    let turns = format!("turns:turn.test:{tls_port}?transport=tcp");
    let json_start = log.find("{\n").expect("RTCIceServer JSON");
    let json_end = log[json_start..].find("\n}").unwrap() + json_start + 2;
    let banner_ice: serde_json::Value = serde_json::from_str(&log[json_start..json_end]).unwrap();
    assert!(
        banner_ice["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == turns.as_str()),
        "{banner_ice}"
    );
    let (status, body) = post_basic(
        sig,
        "/v1/rooms/tls/join",
        "devk:devs3cret",
        r#"{"identity":"laptop"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let join: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        join["iceServers"][0]["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == turns.as_str()),
        "{join}"
    );
    drop(first);

    let (second, turn2, _) = start_turnkey(&flags);
    let mut c = wire::WireClient::new(
        turn2,
        banner_ice["username"].as_str().unwrap(),
        banner_ice["credential"].as_str().unwrap(),
    );
    c.allocate();
    drop(second);
}
