//! What the services expose, over the wire with the real binaries (loopback only):
//! - signaling: browser origins (same origin by default, `--allowed-origins` with CORS), room
//!   names checked on every route, TURN credentials per identity and bounded by the access
//!   token, a generated development API key shown once on stdout and never in the log;
//! - an empty link secret refused at start (`sfu`, `signaling --sfu-secret`);
//! - SIGHUP logged and ignored by `stun-server`, `signaling`, `sfu`, `turnkey` and `turn-server`
//!   without TLS (with TLS it reloads the certificate).

mod common;

use common::{
    free_udp_tcp_port, free_udp_tcp_port_pair, http_get, metric_at, run_with_timeout,
    temp_log_path, wait_until, ServerGuard, LOCALHOST,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const API_KEY: &str = "app";
const API_SECRET: &str = "app-secret-for-exposure-tests";
const TURN_SECRET: &str = "turn-shared-secret";

type Sig = common::Signaling;

fn start_signaling(extra: &[&str]) -> Sig {
    let mut args: Vec<String> = [
        "--api-key",
        &format!("{API_KEY}:{API_SECRET}"),
        "--turn-secret",
        TURN_SECRET,
        "--turn-uri",
        "turn:127.0.0.1:3478?transport=udp",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    Sig::start(&args)
}

fn basic() -> String {
    common::basic_auth(&format!("{API_KEY}:{API_SECRET}"))
}

/// One HTTP/1.1 exchange with extra headers. Returns status, lower-cased headers and the body
/// as JSON (a JSON string if it is not JSON).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, Value) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP header end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let v = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    (status, headers, v)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn join_body(identity: &str) -> String {
    json!({"identity": identity}).to_string()
}

/// Opens a WebSocket to `sig`'s `/v1/ws` with `origin` (None: no Origin header, as
/// non-browser clients do). Err(status) if the handshake is refused.
async fn ws_connect(
    sig: &Sig,
    origin: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    let mut req = format!("ws://{}/v1/ws", sig.http)
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

/// The next text frame as JSON.
async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

fn refused(sig: &Sig, reason: &str) -> f64 {
    metric_at(
        sig.guard.metrics,
        "signaling_refused_requests_total",
        &[("reason", reason)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_requests_are_same_origin_by_default() {
    let sig = start_signaling(&[]);
    let own = format!("http://{}", sig.http);
    let auth = basic();
    let join = |origin: Option<&str>| {
        let mut h = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(o) = origin {
            h.push(("Origin", o));
        }
        request(
            sig.http,
            "POST",
            "/v1/rooms/demo/join",
            &h,
            &join_body("alice"),
        )
    };
    // Non-browser clients (no Origin) and the server's own pages (same origin) work.
    assert_eq!(join(None).0, 200);
    let (status, headers, _) = join(Some(&own));
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    // Another origin, even on the same host: 403 with a JSON error, counted.
    for other in [
        "https://evil.example",
        &format!("http://127.0.0.1:{}", sig.http.port() + 1),
        "null",
    ] {
        let (status, headers, body) = join(Some(other));
        assert_eq!(status, 403, "{other}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        assert_eq!(header(&headers, "access-control-allow-origin"), None);
    }
    // A CORS preflight from another origin gets no CORS answer.
    let (status, headers, _) = request(
        sig.http,
        "OPTIONS",
        "/v1/rooms/demo/join",
        &[
            ("Origin", "https://evil.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    );
    assert_eq!(status, 403);
    assert_eq!(header(&headers, "access-control-allow-origin"), None);
    // The WebSocket handshake: refused cross-origin, fine same-origin and without Origin.
    assert_eq!(
        ws_connect(&sig, Some("https://evil.example")).await.err(),
        Some(403)
    );
    assert!(ws_connect(&sig, Some(&own)).await.is_ok());
    assert!(ws_connect(&sig, None).await.is_ok());
    // The demo page and the TURN test page load.
    for page in ["/", "/turn-test", "/client.js"] {
        assert_eq!(http_get(sig.http, page).unwrap().0, 200, "{page}");
    }
    assert_eq!(refused(&sig, "origin"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_get_cors_and_the_websocket() {
    let app = "https://app.example.com";
    let sig = start_signaling(&["--allowed-origins", app]);
    let (status, headers, _) = request(
        sig.http,
        "OPTIONS",
        "/v1/rooms/demo/join",
        &[
            ("Origin", app),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        "",
    );
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(app));
    let allowed = header(&headers, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization"), "{allowed}");
    let auth = basic();
    let (status, headers, body) = request(
        sig.http,
        "POST",
        "/v1/rooms/demo/join",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("Origin", app),
        ],
        &join_body("alice"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(app));
    assert!(ws_connect(&sig, Some(app)).await.is_ok());
    assert_eq!(
        ws_connect(&sig, Some("https://other.example")).await.err(),
        Some(403)
    );
    assert_eq!(refused(&sig, "origin"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_names_are_checked_on_every_route() {
    let sig = start_signaling(&[]);
    let auth = basic();
    let json_auth = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let long = "x".repeat(129);
    let cases: Vec<(&str, String, String)> = vec![
        ("GET", "/v1/rooms/bad%20name".into(), String::new()),
        ("DELETE", "/v1/rooms/a:b".into(), String::new()),
        ("GET", format!("/v1/rooms/{long}"), String::new()),
        (
            "POST",
            "/v1/rooms".into(),
            json!({"name": "a/b"}).to_string(),
        ),
        (
            "POST",
            "/v1/rooms/x%7Bhash%7D/join".into(),
            join_body("alice"),
        ),
    ];
    for (method, path, body) in &cases {
        let (status, _, v) = request(sig.http, method, path, &json_auth, body);
        assert_eq!(status, 400, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("[A-Za-z0-9._-]"),
            "{v}"
        );
    }
    // A valid name still works.
    let (status, _, _) = request(sig.http, "GET", "/v1/rooms/nosuchroom", &json_auth, "");
    assert_eq!(status, 404);
    // WebSocket: a token for a bad room name (minted by an app with the API key) gets error
    // 4000 naming the rule, the connection stays open, and a correct join works after it.
    let key = signaling::auth::ApiKey::parse(&format!("{API_KEY}:{API_SECRET}")).unwrap();
    let now = signaling::io::node::unix_now();
    let grants = signaling::auth::Grants {
        join: true,
        create: true,
    };
    let bad = signaling::auth::mint_token(&key, "bad room!", "alice", None, grants, 600, now);
    let good = signaling::auth::mint_token(&key, "good", "alice", None, grants, 600, now);
    let mut ws = ws_connect(&sig, None).await.unwrap();
    let join = |room: &str, token: &str| {
        Message::Text(
            json!({"type": "join", "v": 1, "room": room, "token": token})
                .to_string()
                .into(),
        )
    };
    ws.send(join("bad room!", &bad)).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], 4000, "{e}");
    assert!(e["message"].as_str().unwrap().contains("room name"), "{e}");
    ws.send(join("good", &good)).await.unwrap();
    let j = next_json(&mut ws).await;
    assert_eq!(j["type"], "joined", "{j}");
    assert_eq!(refused(&sig, "room_name"), cases.len() as f64 + 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_are_per_identity_and_end_with_the_token() {
    let sig = start_signaling(&[
        "--token-ttl",
        "600",
        "--turn-ttl",
        "86400",
        "--turn-credential-grace-secs",
        "300",
    ]);
    let auth = basic();
    let before = signaling::io::node::unix_now();
    let (status, _, answer) = request(
        sig.http,
        "POST",
        "/v1/rooms/creds/join",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &join_body("alice"),
    );
    assert_eq!(status, 200, "{answer}");
    let after = signaling::io::node::unix_now();
    // HTTP join: per identity, and the token (600 s) plus the grace (300 s), not 86400 s.
    let ttl = answer["iceServersTtl"].as_u64().unwrap();
    assert_eq!(ttl, 900, "{answer}");
    let user = answer["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .to_string();
    let (exp, who) = user.split_once(':').unwrap();
    assert_eq!(who, "alice");
    let exp: u64 = exp.parse().unwrap();
    assert!((before + 900..=after + 900).contains(&exp), "{user}");
    // WebSocket joins (two tabs of one person): both credentials name the identity, not the
    // participant id, so the TURN server's per-user quota counts alice once.
    let token = answer["token"].as_str().unwrap().to_string();
    let mut pids = Vec::new();
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut ws = ws_connect(&sig, None).await.unwrap();
        ws.send(Message::Text(
            json!({"type": "join", "v": 1, "room": "creds", "token": token})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let j = next_json(&mut ws).await;
        assert_eq!(j["type"], "joined", "{j}");
        let u = j["iceServers"][0]["username"].as_str().unwrap();
        assert!(u.ends_with(":alice"), "{u} is not alice's");
        assert!(j["iceServersTtl"].as_u64().unwrap() <= 900, "{j}");
        pids.push(j["participantId"].as_str().unwrap().to_string());
        open.push(ws);
    }
    assert_ne!(pids[0], pids[1]);
    // A bearer token that ends in 100 s: /v1/ice-servers credentials end 300 s after it.
    let key = signaling::auth::ApiKey::parse(&format!("{API_KEY}:{API_SECRET}")).unwrap();
    let now = signaling::io::node::unix_now();
    let short = signaling::auth::mint_token(
        &key,
        "creds",
        "bob",
        None,
        signaling::auth::Grants {
            join: true,
            create: false,
        },
        100,
        now,
    );
    let bearer = format!("Bearer {short}");
    let (status, _, v) = request(
        sig.http,
        "POST",
        "/v1/ice-servers",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200, "{v}");
    let ttl = v["ttl"].as_u64().unwrap();
    assert!((395..=400).contains(&ttl), "{v}");
    assert!(v["iceServers"][0]["username"]
        .as_str()
        .unwrap()
        .ends_with(":bob"));
}

/// Runs `bin` with `args` until its `/healthz` on `metrics` answers, stdout and stderr in
/// separate files; returns both (then kills it).
fn output_when_ready(bin: &str, args: &[String], metrics: SocketAddr) -> (String, String) {
    let out_path = temp_log_path(&format!("{bin}-stdout"));
    let err_path = temp_log_path(&format!("{bin}-stderr"));
    let mut child = Command::new(common::bin_path(bin))
        .args(args)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(30), || {
        matches!(http_get(metrics, "/healthz"), Ok((200, _)))
    });
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    // The banner is printed right after the metrics listener answers.
    let _ = wait_until(Duration::from_secs(5), || {
        read(&out_path).contains("API key")
    });
    let _ = child.kill();
    let _ = child.wait();
    let (out, err) = (read(&out_path), read(&err_path));
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    assert!(ready, "{bin} not ready; stdout:\n{out}\nstderr:\n{err}");
    (out, err)
}

/// The generated `KEY:SECRET` shown on the `API key` line of a banner.
fn shown_dev_key(stdout: &str) -> String {
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("API key"))
        .collect();
    assert_eq!(lines.len(), 1, "the key is shown once:\n{stdout}");
    lines[0]
        .split_whitespace()
        .find(|w| w.starts_with("dev_") && w.contains(':'))
        .unwrap_or_else(|| panic!("no dev key in {:?}", lines[0]))
        .to_string()
}

#[test]
fn a_generated_dev_key_is_printed_once_and_never_logged() {
    // signaling
    let http = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let args: Vec<String> = [
        "--listen",
        &http.to_string(),
        "--metrics",
        &metrics.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (out, err) = output_when_ready("signaling", &args, metrics);
    let key = shown_dev_key(&out);
    let (id, secret) = key.split_once(':').unwrap();
    assert!(!err.contains(secret), "the secret is in the log:\n{err}");
    assert!(err.contains(id), "the log names the generated key:\n{err}");
    // turnkey
    let sig_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let turn_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let media = free_udp_tcp_port_pair(&[LOCALHOST]);
    let args: Vec<String> = [
        "--listen".to_string(),
        format!("127.0.0.1:{}", free_udp_tcp_port()),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--min-port".into(),
        "61000".into(),
        "--max-port".into(),
        "62999".into(),
        "--metrics".into(),
        turn_metrics.to_string(),
        "--signaling-listen".into(),
        format!("127.0.0.1:{}", free_udp_tcp_port()),
        "--signaling-metrics".into(),
        sig_metrics.to_string(),
        "--sfu-media-listen".into(),
        format!("127.0.0.1:{media}"),
        "--sfu-workers".into(),
        "1".into(),
        "--sfu-link-listen".into(),
        format!("127.0.0.1:{}", free_udp_tcp_port()),
        "--sfu-metrics".into(),
        format!("127.0.0.1:{}", free_udp_tcp_port()),
    ]
    .to_vec();
    let (out, err) = output_when_ready("turnkey", &args, sig_metrics);
    let key = shown_dev_key(&out);
    let (_, secret) = key.split_once(':').unwrap();
    assert!(!err.contains(secret), "the secret is in the log:\n{err}");
}

#[test]
fn an_empty_link_secret_is_refused_at_start() {
    let free = || format!("127.0.0.1:{}", free_udp_tcp_port());
    let sfu = [
        "--media-listen",
        &free(),
        "--link-listen",
        &free(),
        "--metrics",
        &free(),
    ];
    let signaling = ["--listen", &free(), "--metrics", &free()];
    for (bin, args) in [("sfu", &sfu[..]), ("signaling", &signaling[..])] {
        let run = run_with_timeout(
            Command::new(common::bin_path(bin))
                .args(args)
                .args(["--sfu-secret", ""]),
            Duration::from_secs(20),
        );
        assert!(
            !run.timed_out() && !run.success(),
            "{bin} started with an empty --sfu-secret: {}",
            run.combined()
        );
        assert!(
            run.stderr.contains("sfu_secret") && run.stderr.contains("empty"),
            "{bin}: {}",
            run.combined()
        );
    }
}

/// Sends SIGHUP to a running server and checks that it logged it, is still running and still
/// answers `/healthz` (and `still_serving`).
fn survives_sighup(mut server: ServerGuard, still_serving: impl Fn() -> bool) {
    common::sighup(server.id());
    let logged = wait_until(Duration::from_secs(10), || {
        server.log().contains("SIGHUP received")
    });
    assert!(
        server.try_wait().is_none(),
        "exited on SIGHUP; its log:\n{}",
        server.log()
    );
    assert!(logged, "SIGHUP not logged:\n{}", server.log());
    assert!(matches!(http_get(server.metrics, "/healthz"), Ok((200, _))));
    assert!(still_serving(), "no longer serving after SIGHUP");
    // A second one too.
    common::sighup(server.id());
    assert!(wait_until(Duration::from_secs(10), || {
        server.log().matches("SIGHUP received").count() >= 2
    }));
    assert!(server.try_wait().is_none());
}

#[test]
fn stun_server_survives_sighup() {
    let port = free_udp_tcp_port();
    let server = ServerGuard::stun_server(&["--listen", &format!("127.0.0.1:{port}")]);
    survives_sighup(server, || {
        TcpStream::connect(SocketAddr::new(LOCALHOST, port)).is_ok()
    });
}

#[test]
fn signaling_survives_sighup() {
    let sig = start_signaling(&[]);
    let http = sig.http;
    survives_sighup(sig.guard, || {
        matches!(http_get(http, "/healthz"), Ok((200, _)))
    });
}

#[test]
fn sfu_survives_sighup() {
    let link = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
    let server = ServerGuard::start(
        "sfu",
        &[
            "--media-listen",
            &format!("127.0.0.1:{}", free_udp_tcp_port()),
            "--workers",
            "1",
            "--link-listen",
            &link.to_string(),
        ],
    );
    survives_sighup(server, || TcpStream::connect(link).is_ok());
}

#[test]
fn turnkey_survives_sighup() {
    let suite = common::LocalSuite::start(&format!("{API_KEY}:{API_SECRET}"), &[]);
    let (http, sfu_metrics) = (suite.http, suite.sfu_metrics);
    survives_sighup(suite.guard, || {
        matches!(http_get(http, "/"), Ok((200, _)))
            && matches!(http_get(sfu_metrics, "/healthz"), Ok((200, _)))
    });
}

#[test]
fn turn_server_without_tls_survives_sighup() {
    // With TLS, SIGHUP reloads the certificate (tests/turn_tls.rs); without, nothing to reload.
    let port = free_udp_tcp_port();
    let server = ServerGuard::turn_server(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--user",
        "alice:pw",
    ]);
    survives_sighup(server, || {
        TcpStream::connect(SocketAddr::new(LOCALHOST, port)).is_ok()
    });
}
