//! The NAT lab (tests/common/natlab.rs): namespaces, veth pairs and iptables emulate an internet
//! (203.0.113.0/24) with a public host running `stun-server` (RFC 5780, two addresses),
//! `turn-server` and `signaling`, and clients behind NAT routers of each RFC 4787 behaviour
//! (LANs in 198.51.100.0/24). What is proved:
//!
//! - `turnutils_natdiscovery` against our `stun-server` reports each emulated mapping and
//!   filtering behaviour, and gets no answer at all from the UDP-blocked network;
//! - two aiortc peers (tests/aiortc/p2p_pair.py, offer/answer through our signaling) behind two
//!   symmetric NATs do not connect with STUN only, and connect through our TURN server (a relay
//!   candidate in the selected pair) over UDP and over TCP to the server;
//! - a peer on the UDP-blocked network connects through TURN over TCP, and over TLS when
//!   `turn-server` has `--tls-listen` (otherwise that one case prints a note and is not run);
//! - pairs with a direct path connect directly: full cone on both sides and port-restricted cone
//!   on both sides with STUN only; full cone on both sides and symmetric against full cone with
//!   TURN configured too (no relay candidate in the selected pair).
//!
//! `traversal_report` runs the whole matrix NAT pair x {STUN only, TURN/UDP, TURN/TCP[,
//! TURN/TLS]}, checks every cell and prints a table (`scripts/traversal-report.sh` shows it).
//! A cell that is not as expected prints both peers' RESULT lines and logs.
//!
//! Needs root for the namespaces; without them, or without anything else it needs (coturn's
//! tools, the aiortc venv, openssl), the test fails.

mod common;

use common::natlab::{self, Lab, NatKind, Servers};
use common::{run_with_timeout, ToolOutput};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a pair gets to connect, from its offer (gathering included: in the UDP-blocked
/// network, the STUN query alone waits 5 s).
const CONNECT_TIMEOUT_SECS: u64 = 15;

/// Builds the lab. Without it (no root, no `ip netns`) the test fails: the test command runs
/// as root, and a skipped lab would pass without checking anything.
fn lab(kinds: &[NatKind]) -> Lab {
    Lab::create(kinds)
        .unwrap_or_else(|e| panic!("cannot build the NAT lab (needs root and ip netns): {e}"))
}

// ---------------------------------------------------------------------------------------------
// turnutils_natdiscovery
// ---------------------------------------------------------------------------------------------

const MAPPING_VERDICTS: [&str; 3] = [
    "NAT with Endpoint Independent Mapping!",
    "NAT with Address Dependent Mapping!",
    "NAT with Address and Port Dependent Mapping!",
];
const FILTERING_VERDICTS: [&str; 3] = [
    "NAT with Endpoint Independent Filtering!",
    "NAT with Address Dependent Filtering!",
    "NAT with Address and Port Dependent Filtering!",
];

/// Runs `turnutils_natdiscovery <flag> -p 3478 203.0.113.10` in the client namespace.
fn natdiscovery(client_ns: &str, flag: &str) -> (ToolOutput, String) {
    let tool = common::require_tool("turnutils_natdiscovery");
    let port = natlab::STUN_PORT.to_string();
    let server = natlab::PUBLIC_IP.to_string();
    let mut cmd = natlab::command_in(client_ns, tool);
    cmd.args([flag, "-p", &port, &server]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let shown = format!(
        "turnutils_natdiscovery {flag} -p {port} {server} in {client_ns}: exit {:?} after {:?}\n{}",
        out.status,
        out.elapsed,
        out.combined()
    );
    (out, shown)
}

/// The verdict line of `verdicts` the output contains, if exactly one.
fn verdict<'a>(out: &str, verdicts: &[&'a str]) -> Option<&'a str> {
    let found: Vec<&str> = verdicts
        .iter()
        .copied()
        .filter(|v| out.contains(v))
        .collect();
    (found.len() == 1).then(|| found[0])
}

#[test]
fn natdiscovery_reports_each_emulated_nat_behaviour() {
    let kinds = NatKind::ALL;
    let mut lab = lab(&kinds);
    let servers = lab.start_servers(None);
    // Filtering first, in its own run: the mapping test sends to the alternate IP, which
    // opens the address-dependent filter for that IP (see NatKind::EimAdf).
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = lab
            .sites
            .iter()
            .map(|site| {
                s.spawn(move || {
                    let filtering = natdiscovery(&site.client, "-f");
                    let mapping = natdiscovery(&site.client, "-m");
                    (site.kind, filtering, mapping)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stun_log = lab.log(servers.stun);
    for (kind, (f_out, f_shown), (m_out, m_shown)) in results {
        let shown = format!("{kind}:\n{f_shown}\n{m_shown}\n--- stun-server log ---\n{stun_log}");
        let expected = match kind {
            NatKind::EimEif => Some((MAPPING_VERDICTS[0], FILTERING_VERDICTS[0])),
            NatKind::EimAdf => Some((MAPPING_VERDICTS[0], FILTERING_VERDICTS[1])),
            NatKind::EimApdf => Some((MAPPING_VERDICTS[0], FILTERING_VERDICTS[2])),
            NatKind::Symmetric => Some((MAPPING_VERDICTS[2], FILTERING_VERDICTS[2])),
            NatKind::UdpBlocked => None,
        };
        match expected {
            Some((mapping, filtering)) => {
                assert!(f_out.success() && m_out.success(), "{shown}");
                assert_eq!(
                    verdict(&m_out.stdout, &MAPPING_VERDICTS),
                    Some(mapping),
                    "{shown}"
                );
                assert_eq!(
                    verdict(&f_out.stdout, &FILTERING_VERDICTS),
                    Some(filtering),
                    "{shown}"
                );
                // The reflexive address is the router's WAN address.
                let wan = lab
                    .sites
                    .iter()
                    .find(|s| s.kind == kind)
                    .map(|s| s.wan_ip.to_string())
                    .unwrap();
                assert!(
                    m_out
                        .stdout
                        .contains(&format!("UDP reflexive addr: {wan}:")),
                    "reflexive address not {wan}: {shown}"
                );
            }
            None => {
                // No answer: no verdict at all, and the tool says why.
                for out in [&f_out, &m_out] {
                    assert_eq!(verdict(&out.stdout, &MAPPING_VERDICTS), None, "{shown}");
                    assert_eq!(verdict(&out.stdout, &FILTERING_VERDICTS), None, "{shown}");
                    assert!(
                        out.combined().contains("STUN receive timeout")
                            || out.combined().contains("Connection Timeout or Failure"),
                        "{shown}"
                    );
                }
            }
        }
        println!(
            "{kind:<12} natdiscovery: {} / {}",
            verdict(&m_out.stdout, &MAPPING_VERDICTS).unwrap_or("no answer"),
            verdict(&f_out.stdout, &FILTERING_VERDICTS).unwrap_or("no answer")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// aiortc pairs
// ---------------------------------------------------------------------------------------------

/// How a pair is given ICE servers (p2p_pair.py `--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    StunOnly,
    TurnUdp,
    TurnTcp,
    TurnTls,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::StunOnly => "stun",
            Mode::TurnUdp => "turn-udp",
            Mode::TurnTcp => "turn-tcp",
            Mode::TurnTls => "turns",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Mode::StunOnly => "STUN only",
            Mode::TurnUdp => "TURN/UDP",
            Mode::TurnTcp => "TURN/TCP",
            Mode::TurnTls => "TURN/TLS",
        }
    }
}

/// What one p2p_pair.py run reported, for both peers.
struct PairRun {
    offerer: Value,
    answerer: Value,
    report: String,
}

impl PairRun {
    fn connected(&self) -> bool {
        self.offerer["connected"] == true && self.answerer["connected"] == true
    }
    fn types(peer: &Value) -> (String, String) {
        let t = |v: &Value| v["type"].as_str().unwrap_or("?").to_string();
        (t(&peer["local"]), t(&peer["remote"]))
    }
    /// True if either peer's selected pair has a relay candidate.
    fn relayed(&self) -> bool {
        [&self.offerer, &self.answerer].iter().any(|p| {
            let (l, r) = PairRun::types(p);
            l == "relay" || r == "relay"
        })
    }
    /// "local→remote" as the offerer's aioice sees the selected pair.
    fn offerer_pair(&self) -> String {
        let (l, r) = PairRun::types(&self.offerer);
        format!("{l}→{r}")
    }
    fn connect_ms(&self) -> Option<u64> {
        self.offerer["connect_ms"].as_u64()
    }
}

fn script() -> PathBuf {
    Path::new(common::ROOT).join("tests/aiortc/p2p_pair.py")
}

/// Runs an aiortc pair: the offerer behind site `a`, the answerer behind site `b`.
fn run_pair(
    lab: &Lab,
    servers: &Servers,
    a: usize,
    b: usize,
    mode: Mode,
    ca: Option<&Path>,
) -> PairRun {
    lab.reset_filters();
    let python = common::aiortc_python();
    let room = format!(
        "nat-{}-{a}-{b}-{}-{}",
        lab.prefix,
        mode.arg(),
        common::free_udp_tcp_port()
    );
    let spawn = |site: usize, role: &str| {
        let mut cmd = natlab::command_in(&lab.site(site).client, &python);
        cmd.arg(script())
            .args(["--base-url", &servers.base_url])
            .args(["--key", natlab::API_KEY])
            .args(["--room", &room])
            .args(["--role", role])
            .args(["--mode", mode.arg()])
            .args(["--timeout", &CONNECT_TIMEOUT_SECS.to_string()]);
        if let Some(ca) = ca {
            cmd.arg("--ca").arg(ca);
        }
        run_with_timeout(&mut cmd, Duration::from_secs(CONNECT_TIMEOUT_SECS + 90))
    };
    let (off, ans) = std::thread::scope(|s| {
        let ans = s.spawn(|| spawn(b, "answerer"));
        let off = s.spawn(|| spawn(a, "offerer"));
        (off.join().unwrap(), ans.join().unwrap())
    });
    let report = format!(
        "{} ({}) offerer <-> {} ({}) answerer, {}\n--- offerer: exit {:?} ---\n{}\n--- answerer: \
         exit {:?} ---\n{}",
        lab.site(a).kind,
        lab.site(a).client,
        lab.site(b).kind,
        lab.site(b).client,
        mode.label(),
        off.status,
        off.combined(),
        ans.status,
        ans.combined()
    );
    let parse = |out: &ToolOutput| -> Value {
        let line = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT line: {report}"));
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad RESULT ({e}): {report}"));
        assert!(
            out.success() && v["ok"] == true,
            "p2p_pair.py failed: {report}"
        );
        v
    };
    PairRun {
        offerer: parse(&off),
        answerer: parse(&ans),
        report,
    }
}

fn turn_relayed_packets(lab: &Lab) -> f64 {
    let text = lab.http_get_in(&lab.public, 9641, "/metrics");
    common::metric_value(&text, "turn_relayed_packets_total", &[]).unwrap_or(0.0)
}

#[test]
fn symmetric_nats_connect_only_through_turn_over_udp_and_tcp() {
    let mut lab = lab(&[NatKind::Symmetric, NatKind::Symmetric]);
    let servers = lab.start_servers(None);

    let stun = run_pair(&lab, &servers, 0, 1, Mode::StunOnly, None);
    assert!(
        !stun.connected(),
        "symmetric <-> symmetric connected with STUN only: {}",
        stun.report
    );
    println!("symmetric <-> symmetric, STUN only: not connected");

    for mode in [Mode::TurnUdp, Mode::TurnTcp] {
        let before = turn_relayed_packets(&lab);
        let run = run_pair(&lab, &servers, 0, 1, mode, None);
        assert!(run.connected(), "not connected: {}", run.report);
        assert!(run.relayed(), "no relay candidate selected: {}", run.report);
        let after = turn_relayed_packets(&lab);
        assert!(
            after > before,
            "turn_relayed_packets_total did not move ({before} -> {after}): {}",
            run.report
        );
        println!(
            "symmetric <-> symmetric, {}: connected via {} in {:?} ms",
            mode.label(),
            run.offerer_pair(),
            run.connect_ms()
        );
    }
}

/// True if this `turn-server` has `--tls-listen` (TURN over TLS).
fn turn_server_has_tls() -> bool {
    let out = run_with_timeout(
        std::process::Command::new(common::bin_path("turn-server")).arg("--help"),
        Duration::from_secs(10),
    );
    out.combined().contains("--tls-listen")
}

#[test]
fn udp_blocked_client_connects_through_turn_over_tcp_and_tls() {
    let mut lab = lab(&[NatKind::UdpBlocked, NatKind::EimApdf]);
    let tls = turn_server_has_tls();
    let cert_dir = natlab::temp_dir("natlab-cert");
    let cert = tls.then(|| natlab::self_signed_cert(&cert_dir, natlab::PUBLIC_IP));
    let servers = lab.start_servers(cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())));

    let run = run_pair(&lab, &servers, 0, 1, Mode::TurnTcp, None);
    assert!(run.connected(), "not connected: {}", run.report);
    let (local, _) = PairRun::types(&run.offerer);
    assert_eq!(
        local, "relay",
        "the UDP-blocked peer must use its relay: {}",
        run.report
    );
    println!(
        "UDP-blocked <-> EIM/APDF, TURN/TCP: connected via {} in {:?} ms",
        run.offerer_pair(),
        run.connect_ms()
    );

    match &cert {
        Some((cert, _)) => {
            let run = run_pair(&lab, &servers, 0, 1, Mode::TurnTls, Some(cert));
            assert!(
                run.connected(),
                "not connected over TURN/TLS: {}",
                run.report
            );
            let (local, _) = PairRun::types(&run.offerer);
            assert_eq!(local, "relay", "{}", run.report);
            println!(
                "UDP-blocked <-> EIM/APDF, TURN/TLS: connected via {} in {:?} ms",
                run.offerer_pair(),
                run.connect_ms()
            );
        }
        None => println!(
            "NOTE: turn-server has no --tls-listen yet (not in `turn-server --help`): the TURN \
             over TLS case was not run"
        ),
    }
    let _ = std::fs::remove_dir_all(&cert_dir);
}

/// Pairs with a direct path connect directly. With STUN only: full cone on both sides, and
/// port-restricted cone on both sides (hole punching: each side's checks open its own NAT for
/// the other's). With TURN configured too, the relay is not used where the first direct check
/// succeeds at once: full cone on both sides, symmetric against full cone. (aioice nominates
/// the first pair whose check succeeds, so between two port-restricted NATs, where the first
/// direct checks are dropped until both sides have sent, the relay pair sometimes wins the
/// race; the traversal report shows what happens there.)
#[test]
fn pairs_with_a_direct_path_do_not_use_the_relay() {
    let kinds = [
        NatKind::EimEif,
        NatKind::EimEif,
        NatKind::EimApdf,
        NatKind::EimApdf,
        NatKind::Symmetric,
    ];
    let mut lab = lab(&kinds);
    let servers = lab.start_servers(None);
    for (a, b, mode) in [
        (0, 1, Mode::StunOnly),
        (2, 3, Mode::StunOnly),
        (0, 1, Mode::TurnUdp),
        (4, 0, Mode::TurnUdp),
    ] {
        let run = run_pair(&lab, &servers, a, b, mode, None);
        assert!(run.connected(), "not connected: {}", run.report);
        assert!(
            !run.relayed(),
            "a relay pair was selected although a direct path exists: {}",
            run.report
        );
        println!(
            "{} <-> {}, {}: direct via {} in {:?} ms",
            lab.site(a).kind,
            lab.site(b).kind,
            mode.label(),
            run.offerer_pair(),
            run.connect_ms()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The traversal report
// ---------------------------------------------------------------------------------------------

fn cell(run: &PairRun) -> String {
    if run.connected() {
        let path = if run.relayed() { "relay" } else { "direct" };
        let secs = run
            .connect_ms()
            .map_or("?".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        format!("yes, {path} ({}), {secs}", run.offerer_pair())
    } else {
        // The offerer's error if it has one (it gives up first: its clock starts before the
        // answerer's), else the answerer's; named, as "the other peer left" means different
        // things on either side.
        let why = [("offerer", &run.offerer), ("answerer", &run.answerer)]
            .into_iter()
            .find_map(|(role, peer)| peer["error"].as_str().map(|e| (role, e)));
        match why {
            Some((_, "timeout")) => format!("no (not connected in {CONNECT_TIMEOUT_SECS} s)"),
            Some((role, why)) => format!("no ({role}: {why})"),
            None => "no (not connected)".into(),
        }
    }
}

/// The NAT matrix: NAT pair x {STUN only, TURN/UDP, TURN/TCP[, TURN/TLS]} -> connected or not,
/// the selected pair's candidate types, time to connect; printed as a table between
/// `TABLE-BEGIN`/`TABLE-END` (scripts/traversal-report.sh shows it) and checked cell by cell:
/// with a symmetric NAT on one side and address-and-port-dependent filtering (or another
/// symmetric NAT) on the other, or UDP blocked, STUN alone must fail and TURN must connect
/// through the relay (over TCP/TLS only when UDP is blocked); every other pair connects.
#[test]
fn traversal_report() {
    use NatKind::*;
    let kinds = [
        EimEif, EimEif, EimAdf, EimAdf, EimApdf, EimApdf, Symmetric, Symmetric, UdpBlocked,
    ];
    let mut lab = lab(&kinds);
    let tls = turn_server_has_tls();
    let cert_dir = natlab::temp_dir("natlab-cert");
    let cert = tls.then(|| natlab::self_signed_cert(&cert_dir, natlab::PUBLIC_IP));
    let servers = lab.start_servers(cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())));
    let pairs = [
        (0, 1),
        (2, 3),
        (4, 5),
        (6, 0),
        (6, 2),
        (6, 4),
        (6, 7),
        (8, 0),
        (8, 4),
    ];
    let mut modes = vec![Mode::StunOnly, Mode::TurnUdp, Mode::TurnTcp];
    if tls {
        modes.push(Mode::TurnTls);
    }
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for (a, b) in pairs {
        let mut cells = Vec::new();
        let (ka, kb) = (lab.site(a).kind, lab.site(b).kind);
        for &mode in &modes {
            let run = run_pair(
                &lab,
                &servers,
                a,
                b,
                mode,
                cert.as_ref().map(|(c, _)| c.as_path()),
            );
            let c = cell(&run);
            let blocked = ka == UdpBlocked || kb == UdpBlocked;
            let hard = (ka == Symmetric && matches!(kb, Symmetric | EimApdf))
                || (kb == Symmetric && matches!(ka, Symmetric | EimApdf));
            let (want, relay) = match mode {
                Mode::StunOnly => (!blocked && !hard, false),
                Mode::TurnUdp => (!blocked, hard),
                _ => (true, hard || blocked),
            };
            if run.connected() != want || (want && relay && !run.relayed()) {
                eprintln!("unexpected cell, both peers' output:\n{}", run.report);
                wrong.push(format!(
                    "{ka} <-> {kb} {}: {c} (want connected={want}{})",
                    mode.label(),
                    if relay { ", via the relay" } else { "" }
                ));
            }
            eprintln!(
                "{} <-> {} {}: {c}",
                lab.site(a).kind,
                lab.site(b).kind,
                mode.label()
            );
            cells.push(c);
        }
        rows.push((
            format!("{} ↔ {}", lab.site(a).kind, lab.site(b).kind),
            cells,
        ));
    }
    let mut table = String::new();
    table.push_str("| NAT pair (offerer ↔ answerer) |");
    for mode in &modes {
        table.push_str(&format!(" {} |", mode.label()));
    }
    table.push_str("\n|---|");
    for _ in &modes {
        table.push_str("---|");
    }
    table.push('\n');
    for (pair, cells) in rows {
        table.push_str(&format!("| {pair} |"));
        for c in cells {
            table.push_str(&format!(" {c} |"));
        }
        table.push('\n');
    }
    println!("TABLE-BEGIN\n{table}TABLE-END");
    if !tls {
        println!("(turn-server has no --tls-listen: no TURN/TLS column)");
    }
    let _ = std::fs::remove_dir_all(&cert_dir);
    assert!(wrong.is_empty(), "unexpected cells:\n{}", wrong.join("\n"));
}
