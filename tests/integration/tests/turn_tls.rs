//! TURN over TLS and DTLS (`turns:`, RFC 8656 §3.1, RFC 7350): a test certificate made here
//! with rcgen, served by `turn-server --tls-listen --dtls-listen --cert --key`.
//! - coturn's `turnutils_uclient -S` allocates and relays over TLS (`-t`) and over DTLS (same
//!   port number, `--dtls-listen`) against `turnutils_peer` with no loss;
//! - the certificate is reloaded without a restart when its files change and on SIGHUP: new
//!   handshakes present the new certificate, while a TLS connection opened before keeps working;
//! - headless Chromium makes a relay-only call with a `turns:` URL, trusting exactly the test
//!   certificate's key (`--ignore-certificate-errors-spki-list`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, SystemTime};

mod common;
use common::tls::{self, CertFiles, TestCert, Tls};
use common::{free_udp_tcp_port, require_tool, wait_until, ChildGuard, ServerGuard, LOCALHOST};

const USER: &str = "tlsuser";
const PASSWORD: &str = "tls-secret";

fn start_server(files: &CertFiles) -> (ServerGuard, u16, u16) {
    let port = free_udp_tcp_port();
    let tls_port = free_udp_tcp_port();
    let server = ServerGuard::turn_server(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tls-listen",
        &format!("127.0.0.1:{tls_port}"),
        // DTLS on the same port number, as deployments do (5349 for both).
        "--dtls-listen",
        &format!("127.0.0.1:{tls_port}"),
        "--cert",
        files.cert_arg(),
        "--key",
        files.key_arg(),
        "--user",
        &format!("{USER}:{PASSWORD}"),
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        "61000",
        "--max-port",
        "62999",
        "--allow-peer",
        "127.0.0.0/8",
    ]);
    (server, port, tls_port)
}

/// A TLS connection to the server; returns it and the leaf certificate it presented.
fn connect(port: u16) -> (Tls, Vec<u8>) {
    let tcp = TcpStream::connect(SocketAddr::new(LOCALHOST, port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut tls, verifier) = tls::client(tcp);
    tls.flush().expect("handshake");
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("handshake");
    }
    let leaf = verifier.leaf();
    (tls, leaf)
}

/// A STUN Binding request over `tls`; true if a Binding success response comes back.
fn binding_works(tls: &mut Tls) -> bool {
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    if tls.write_all(&req).is_err() || tls.flush().is_err() {
        return false;
    }
    let mut head = [0u8; 20];
    if tls.read_exact(&mut head).is_err() {
        return false;
    }
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).is_ok() && head[0..2] == [0x01, 0x01] && head[8..20] == [7u8; 12]
}

#[test]
fn turnutils_uclient_relays_over_tls_without_loss() {
    uclient_over(true);
}

#[test]
fn turnutils_uclient_relays_over_dtls_without_loss() {
    uclient_over(false);
}

/// `turnutils_uclient -S` over TLS (`tcp`) or DTLS against `turnutils_peer`.
fn uclient_over(tcp: bool) {
    let what = if tcp { "TLS" } else { "DTLS" };
    let (files, _) = CertFiles::with_new_cert(if tcp { "uclient-tls" } else { "uclient-dtls" });
    let (server, _, tls_port) = start_server(&files);

    let peer_port = std::iter::repeat_with(free_udp_tcp_port)
        .find(|p| p + 1 < 61000)
        .expect("peer port");
    let _peer = ChildGuard::spawn(
        "turnutils_peer",
        Command::new(require_tool("turnutils_peer")).args([
            "-L",
            "127.0.0.1",
            "-p",
            &peer_port.to_string(),
        ]),
    );
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        let _ = probe.send_to(b"ping", ("127.0.0.1", peer_port));
        let mut b = [0u8; 8];
        matches!(probe.recv_from(&mut b), Ok((4, _)))
    }));

    let mut cmd = Command::new(require_tool("turnutils_uclient"));
    cmd.arg("-S");
    if tcp {
        cmd.arg("-t");
    }
    cmd.args(["-X", "-z", "5", "-m", "2", "-n", "50", "-l", "120"])
        .args(["-p", &tls_port.to_string()])
        .args(["-e", "127.0.0.1", "-r", &peer_port.to_string()])
        .args(["-u", USER, "-w", PASSWORD, "127.0.0.1"]);
    let out = common::run_with_timeout(&mut cmd, Duration::from_secs(60));
    let text = out.combined();
    let totals = text
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("no uclient report:\n{text}"));
    let num = |line: &str, key: &str| -> u64 {
        let s = line.find(key).unwrap_or_else(|| panic!("{key} in {line}")) + key.len();
        line[s..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    let sent = num(totals, "tot_send_msgs=");
    let received = num(totals, "tot_recv_msgs=");
    let lost_line = text
        .lines()
        .rfind(|l| l.contains("Total lost packets "))
        .expect("loss line");
    println!("uclient over {what}: sent {sent}, received {received}; {lost_line}");
    assert_eq!(sent, 100, "{text}");
    assert_eq!(received, sent, "{text}");
    assert_eq!(num(lost_line, "Total lost packets "), 0, "{text}");
    let allocs = server.metric(
        "turn_requests_total",
        &[("method", "allocate"), ("result", "success")],
    );
    assert!(allocs >= 2.0, "allocations counted: {allocs}");
}

#[test]
fn certificates_reload_on_change_and_on_sighup_without_dropping_connections() {
    let files = CertFiles::new("reload");
    let first = TestCert::new("first");
    files.install(&first);
    let (server, _, tls_port) = start_server(&files);

    let (mut old, leaf) = connect(tls_port);
    assert_eq!(leaf, first.der, "the first certificate is served");
    assert!(binding_works(&mut old));

    // Changed files: picked up by the poll (every 2 s).
    let second = TestCert::new("second");
    std::thread::sleep(Duration::from_millis(1100)); // a visibly different mtime
    files.install(&second);
    assert!(
        wait_until(Duration::from_secs(10), || connect(tls_port).1
            == second.der),
        "new handshakes did not get the second certificate"
    );
    assert!(
        binding_works(&mut old),
        "the connection opened before the reload stopped working"
    );

    // Files replaced with their modification time kept: only SIGHUP reloads them.
    let stamp = std::fs::metadata(&files.cert)
        .and_then(|m| m.modified())
        .expect("mtime");
    let key_stamp = std::fs::metadata(&files.key)
        .and_then(|m| m.modified())
        .expect("mtime");
    let third = TestCert::new("third");
    files.install(&third);
    for (p, t) in [(&files.cert, stamp), (&files.key, key_stamp)] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        connect(tls_port).1,
        second.der,
        "reloaded without a change or signal"
    );
    common::sighup(server.id());
    assert!(
        wait_until(Duration::from_secs(10), || connect(tls_port).1 == third.der),
        "SIGHUP did not load the third certificate"
    );
    assert!(binding_works(&mut old));
    let _ = SystemTime::now();
}

#[test]
fn chromium_relay_only_call_over_turns() {
    let chromium = common::browser_prerequisites();
    let (files, cert) = CertFiles::with_new_cert("chromium");
    let spki = &cert.spki_sha256;
    let (server, _, tls_port) = start_server(&files);
    let url = format!("turns:127.0.0.1:{tls_port}?transport=tcp");
    let mut cmd = Command::new("node");
    cmd.current_dir(common::browser_dir())
        .arg("relay_call.mjs")
        .args(["--urls", &url])
        .args(["--username", USER])
        .args(["--credential", PASSWORD])
        .args(["--expect-relay-protocol", "tls"])
        .args(["--timeout-ms", "30000"])
        .arg("--chromium")
        .arg(&chromium)
        .env(
            "CHROMIUM_EXTRA_ARGS",
            format!("--ignore-certificate-errors-spki-list={spki}"),
        );
    let (result, report) =
        common::run_browser_script(&mut cmd, Duration::from_secs(120), "relay_call.mjs (turns)");
    assert_eq!(result["ok"], true, "{report}");
    for peer in ["caller", "callee"] {
        let sel = &result["selected"][peer];
        assert_eq!(sel["local"]["candidateType"], "relay", "{peer}: {report}");
        assert_eq!(sel["local"]["relayProtocol"], "tls", "{peer}: {report}");
    }
    let relayed = server.metric("turn_relayed_packets_total", &[]);
    assert!(relayed > 0.0, "turn_relayed_packets_total {relayed}");
    println!(
        "turns: call ok, {} frames, relayed {relayed}",
        result["framesDecoded"]
    );
}
