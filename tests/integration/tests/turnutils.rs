//! coturn's `turnutils_uclient` against our `turn-server` on loopback: UDP and TCP client
//! transports, ChannelData and Send/Data indications, DONT-FRAGMENT, an echoing UDP peer
//! (`turnutils_peer`) and client-to-client relaying, static long-term users and TURN REST
//! credentials, plus a wrong password.
//!
//! The server gets `--allow-peer 127.0.0.0/8` only when the peer is the loopback echo server;
//! client-to-client runs go without it (a live relayed address of the same server is always
//! an allowed peer), and [`loopback_peer_is_refused_by_default`] checks the default refusal.
//!
//! Every run checks uclient's own final report (every message came back, nothing lost) and the
//! server's `/metrics`.
//!
//! uclient's final report, printed to stdout by `start_mclient` (coturn 4.6):
//! ```text
//! 7: : start_mclient: tot_send_msgs=100, tot_recv_msgs=100
//! 7: : start_mclient: tot_send_bytes ~ 12000, tot_recv_bytes ~ 12000
//! 7: : Total transmit time is 7
//! 7: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)
//! ```
//! `tot_send_msgs` counts the data messages all `-m` clients sent (`-m` x `-n`); with a peer
//! (`-e`) each comes back through the peer's echo, with `-y` each arrives at another client.
//! Each client starts sending 1-6 s after its allocation (uclient picks the delay at random),
//! so one run takes a few seconds even with `-n 50`.
//!
//! Options used everywhere: `-c` (no RTCP allocation, so the EVEN-PORT/RESERVATION-TOKEN pair
//! is tested once, in [`udp_rtp_rtcp_pair_with_even_port_reservation`]), `-z 5` (5 ms between
//! packets), `-X` (ask for an IPv4 relay).

mod common;

use common::{
    free_udp_tcp_port, require_tool, run_with_timeout, wait_until, ServerGuard, ToolOutput,
    TOOL_TIMEOUT,
};
use std::process::Command;
use std::time::Duration;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "s3cr3t-for-rest-api";
const REALM: &str = "turnkey";

/// The relay port range given to the server. The server refuses its own relay ports as peers
/// (unless they are live allocations), so the echo peer's port is picked below it; 61000 is
/// above Linux's default ephemeral range (32768-60999), where free ports come from.
const RELAY_PORTS: (u16, u16) = (61000, 65535);

/// Clients per uclient run (`-m`). Even, so `-y` pairs every client with another.
const CLIENTS: u64 = 2;
/// Messages per client (`-n`).
const MESSAGES: u64 = 50;
/// Message length in bytes (`-l`).
const LENGTH: u64 = 120;

/// How uclient authenticates.
#[derive(Clone, Copy, Debug)]
enum Auth {
    /// `-u USER -w PASSWORD`, server started with `--user USER:PASSWORD`.
    Static,
    /// `-u USER -W SECRET` (uclient makes `<expiry>:USER` and its HMAC), server started with
    /// `--auth-secret SECRET`.
    Rest,
}

/// Where uclient's data goes.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// A `turnutils_peer` echo server on 127.0.0.1 (`-e 127.0.0.1 -r PORT`).
    Echo,
    /// The other clients' relayed addresses (`-y`).
    ClientToClient,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    tcp: bool,
    send_indications: bool,
    dont_fragment: bool,
    peer: Peer,
    auth: Auth,
    /// Let uclient allocate an RTP/RTCP pair (EVEN-PORT with R, then RESERVATION-TOKEN).
    rtcp: bool,
}

const BASE: Case = Case {
    tcp: false,
    send_indications: false,
    dont_fragment: false,
    peer: Peer::Echo,
    auth: Auth::Static,
    rtcp: false,
};

/// uclient's final report.
#[derive(Debug, PartialEq)]
struct Report {
    sent: u64,
    received: u64,
    lost: u64,
    send_dropped: u64,
}

/// The number right after `key` in `line` (`key` ends with `=` or a space).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Parses uclient's final report (see the module docs). The periodic progress lines also
/// contain `tot_send_msgs=` but have `msz=` before it; the final one does not.
fn parse_report(out: &str) -> Option<Report> {
    let totals = out
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let loss = out.lines().rfind(|l| l.contains("Total lost packets "))?;
    Some(Report {
        sent: number_after(totals, "tot_send_msgs=")?,
        received: number_after(totals, "tot_recv_msgs=")?,
        lost: number_after(loss, "Total lost packets ")?,
        send_dropped: number_after(loss, "total send dropped ")?,
    })
}

/// Starts `turn-server` on 127.0.0.1 for `auth`. With `allow_loopback_peers` it gets
/// `--allow-peer 127.0.0.0/8` (the echo peer lives on 127.0.0.1); without it, only the
/// server's own live relayed addresses are usable peers on loopback (client-to-client).
fn start_turn_server(auth: Auth, allow_loopback_peers: bool) -> (ServerGuard, u16) {
    let port = free_udp_tcp_port();
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--realm".into(),
        REALM.into(),
        "--min-port".into(),
        RELAY_PORTS.0.to_string(),
        "--max-port".into(),
        RELAY_PORTS.1.to_string(),
    ];
    if allow_loopback_peers {
        args.extend(["--allow-peer".into(), "127.0.0.0/8".into()]);
    }
    match auth {
        Auth::Static => args.extend(["--user".into(), format!("{USER}:{PASSWORD}")]),
        Auth::Rest => args.extend(["--auth-secret".into(), SECRET.into()]),
    }
    (ServerGuard::turn_server(&args), port)
}

/// The uclient command line for `case` against 127.0.0.1:`server_port`.
fn uclient_args(case: Case, server_port: u16, peer_port: Option<u16>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut flag = |on: bool, f: &str| {
        if on {
            args.push(f.to_string());
        }
    };
    flag(case.tcp, "-t");
    flag(case.send_indications, "-s");
    flag(case.dont_fragment, "-g");
    flag(!case.rtcp, "-c");
    flag(matches!(case.peer, Peer::ClientToClient), "-y");
    args.extend(["-X".into(), "-z".into(), "5".into()]);
    for (k, v) in [
        ("-m", CLIENTS),
        ("-n", MESSAGES),
        ("-l", LENGTH),
        ("-p", u64::from(server_port)),
    ] {
        args.push(k.into());
        args.push(v.to_string());
    }
    if let Some(p) = peer_port {
        args.extend(["-e".into(), "127.0.0.1".into(), "-r".into(), p.to_string()]);
    }
    args.extend(["-u".into(), USER.into()]);
    match case.auth {
        Auth::Static => args.extend(["-w".into(), PASSWORD.into()]),
        Auth::Rest => args.extend(["-W".into(), SECRET.into()]),
    }
    args.push("127.0.0.1".into());
    args
}

fn run_uclient(args: &[String]) -> ToolOutput {
    let tool = require_tool("turnutils_uclient");
    run_with_timeout(Command::new(tool).args(args), TOOL_TIMEOUT)
}

/// Runs `case` end to end and asserts on uclient's report and the server's metrics.
fn check(case: Case) {
    let echo = matches!(case.peer, Peer::Echo);
    let (server, server_port) = start_turn_server(case.auth, echo);
    let peer = match case.peer {
        Peer::Echo => Some(common::start_echo_peer(RELAY_PORTS.0)),
        Peer::ClientToClient => None,
    };
    let args = uclient_args(case, server_port, peer.as_ref().map(|p| p.1));
    let c2p = [("direction", "client_to_peer")];
    let p2c = [("direction", "peer_to_client")];
    let packets = "turn_relayed_packets_total";
    let before = (server.metric(packets, &c2p), server.metric(packets, &p2c));

    let out = run_uclient(&args);
    let shown = format!(
        "{case:?}\nturnutils_uclient {}\nexit {:?} after {:?}\n{}",
        args.join(" "),
        out.status,
        out.elapsed,
        out.combined()
    );
    assert!(out.success(), "uclient failed: {shown}");
    let report =
        parse_report(&out.stdout).unwrap_or_else(|| panic!("no final report from: {shown}"));
    let expected = CLIENTS * MESSAGES;
    assert_eq!(
        report,
        Report {
            sent: expected,
            received: expected,
            lost: 0,
            send_dropped: 0
        },
        "{shown}"
    );

    // Every message crossed the relay once from a client towards a peer and once from a peer
    // back to a client (the echo peer's reply, or the other client's relay receiving it).
    let moved = wait_until(Duration::from_secs(5), || {
        server.metric(packets, &c2p) - before.0 >= expected as f64
            && server.metric(packets, &p2c) - before.1 >= expected as f64
    });
    assert!(
        moved,
        "{packets} moved too little (before {before:?}, expected +{expected} each way):\n{}",
        server.scrape_metrics()
    );
    drop(peer);
}

#[test]
fn udp_channel_data_to_echo_peer() {
    check(BASE);
}

#[test]
fn udp_send_indications_to_echo_peer() {
    check(Case {
        send_indications: true,
        ..BASE
    });
}

#[test]
fn tcp_channel_data_to_echo_peer() {
    check(Case { tcp: true, ..BASE });
}

#[test]
fn tcp_send_indications_to_echo_peer() {
    check(Case {
        tcp: true,
        send_indications: true,
        ..BASE
    });
}

#[test]
fn udp_dont_fragment_allocation() {
    check(Case {
        dont_fragment: true,
        ..BASE
    });
}

#[test]
fn udp_client_to_client() {
    check(Case {
        peer: Peer::ClientToClient,
        ..BASE
    });
}

#[test]
fn tcp_client_to_client_with_send_indications() {
    check(Case {
        tcp: true,
        send_indications: true,
        peer: Peer::ClientToClient,
        ..BASE
    });
}

#[test]
fn udp_rest_api_credentials() {
    check(Case {
        auth: Auth::Rest,
        ..BASE
    });
}

#[test]
fn tcp_rest_api_credentials_client_to_client() {
    check(Case {
        tcp: true,
        auth: Auth::Rest,
        peer: Peer::ClientToClient,
        ..BASE
    });
}

/// uclient's default mode: each client allocates an RTP relay with EVEN-PORT (R bit set), then
/// an RTCP relay with the RESERVATION-TOKEN it got back (RFC 8656 §7.2, §14.6, §14.9).
#[test]
fn udp_rtp_rtcp_pair_with_even_port_reservation() {
    check(Case { rtcp: true, ..BASE });
}

#[test]
fn wrong_password_is_refused_and_counted() {
    let (server, server_port) = start_turn_server(Auth::Static, true);
    let (_peer, peer_port) = common::start_echo_peer(RELAY_PORTS.0);
    let failures = "turn_auth_failures_total";
    let before = server.metric(failures, &[]);
    let mut args = uclient_args(BASE, server_port, Some(peer_port));
    let w = args.iter().position(|a| a == "-w").expect("-w in args");
    args[w + 1] = format!("{PASSWORD}-wrong");

    let out = run_uclient(&args);
    let shown = format!(
        "turnutils_uclient {}\nexit {:?} after {:?}\n{}",
        args.join(" "),
        out.status,
        out.elapsed,
        out.combined()
    );
    assert!(!out.timed_out(), "uclient hung: {shown}");
    assert!(
        !out.success(),
        "uclient succeeded with a wrong password: {shown}"
    );
    assert!(
        out.stdout.contains("Cannot complete Allocation"),
        "uclient did not report a failed allocation: {shown}"
    );
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric(failures, &[]) > before
    });
    assert!(
        counted,
        "{failures} did not move (before {before}):\n{}",
        server.scrape_metrics()
    );
    assert_eq!(
        server.metric("turn_relayed_packets_total", &[]),
        0.0,
        "something was relayed without a valid credential"
    );
}

/// Loopback peers are refused by default (server-side request forgery protection): without
/// `--allow-peer 127.0.0.0/8` the permission for the echo peer gets 403 and is counted.
#[test]
fn loopback_peer_is_refused_by_default() {
    let (server, server_port) = start_turn_server(Auth::Static, false);
    let (_peer, peer_port) = common::start_echo_peer(RELAY_PORTS.0);
    let denied = "turn_peer_denied_total";
    let before = server.metric(denied, &[]);
    let args = uclient_args(BASE, server_port, Some(peer_port));

    let out = run_uclient(&args);
    let shown = format!(
        "turnutils_uclient {}\nexit {:?} after {:?}\n{}",
        args.join(" "),
        out.status,
        out.elapsed,
        out.combined()
    );
    assert!(!out.timed_out(), "uclient hung: {shown}");
    assert!(!out.success(), "uclient reached a loopback peer: {shown}");
    assert!(out.stdout.contains("error 403"), "no 403 in: {shown}");
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric(denied, &[]) > before
    });
    assert!(
        counted,
        "{denied} did not move (before {before}):\n{}",
        server.scrape_metrics()
    );
    assert_eq!(
        server.metric("turn_relayed_packets_total", &[]),
        0.0,
        "something was relayed to a refused peer"
    );
}

#[test]
fn parses_uclient_report() {
    let out = "0: : Total connect time is 1\n\
        2: : start_mclient: msz=2, tot_send_msgs=48, tot_recv_msgs=47, tot_send_bytes ~ 5760, tot_recv_bytes ~ 5760\n\
        6: : start_mclient: tot_send_msgs=100, tot_recv_msgs=98\n\
        6: : start_mclient: tot_send_bytes ~ 12000, tot_recv_bytes ~ 11760\n\
        6: : Total transmit time is 6\n\
        6: : Total lost packets 2 (2.000000%), total send dropped 1 (0.990099%)\n";
    assert_eq!(
        parse_report(out),
        Some(Report {
            sent: 100,
            received: 98,
            lost: 2,
            send_dropped: 1
        })
    );
    assert_eq!(
        parse_report("0: : ERROR: Cannot complete Allocation\n"),
        None
    );
}
