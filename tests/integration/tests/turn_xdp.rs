//! The XDP fast path (`--xdp`) end to end, in network namespaces of its own:
//!
//! ```text
//!  client ns                server ns (turn-server --xdp xs..,xq.. --xdp-mode generic|native) peer ns
//!  192.0.2.1/24 ---veth--- 192.0.2.2/24 (listener :3478)                                   
//!                          203.0.113.2/24 (relayed addresses) ---veth--- 203.0.113.1/24 (turnutils_peer)
//!                          198.51.100.x/30 ---veth--- root ns (the test: /metrics, admin API)
//! ```
//!
//! coturn's `turnutils_uclient` (ChannelData: it binds channels unless given `-s`) runs in the
//! client ns against the server, the echo peer in the peer ns. Checksum offload is off on every
//! veth end (`ethtool -K .. tx off rx off`), so each receiver verifies the UDP checksums the
//! program wrote, and `/proc/net/snmp` `Udp: InCsumErrors` must stay 0 in both end namespaces.
//!
//! Needs root, `ip`, `ethtool`, coturn's turnutils and a turn-server built with clang (all
//! installed by `scripts/test.sh`): a missing piece fails the test, it never skips.

mod common;

use common::netns::Netns;
use common::{
    admin_call, bin_path, metric_value, require_tool, run_with_timeout, scrape_metrics,
    wait_healthy, wait_until, ChildGuard, ToolOutput,
};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const TOKEN: &str = "xdp-admin-token-0123456789";
const CLIENT_IP: &str = "192.0.2.1";
const SERVER_IP: &str = "192.0.2.2";
const RELAY_IP: &str = "203.0.113.2";
const PEER_IP: &str = "203.0.113.1";
const PEER_PORT: u16 = 5000;
// The same links carry IPv6 (2001:db8::/32, RFC 3849).
const CLIENT_IP6: &str = "2001:db8:1::1";
const SERVER_IP6: &str = "2001:db8:1::2";
const RELAY_IP6: &str = "2001:db8:2::2";
const PEER_IP6: &str = "2001:db8:2::1";
const SERVER_PORT: u16 = 3478;

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with no link to the host (removed on drop).
struct Ns(String);

impl Ns {
    fn create(name: String) -> Ns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }
    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        run(&full);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Joins namespaces `a` and `b` by a veth pair (`a_if` in `a` with `a_addr` and `a_addr6`,
/// `b_if` in `b` with `b_addr` and `b_addr6`), checksum offload off on both ends.
fn link(a: (&str, &str, &str, &str), b: (&str, &str, &str, &str)) {
    let (a, a_if, _, _) = a;
    let (b, b_if, _, _) = b;
    run(&[
        "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
    ]);
}

fn configure((ns, dev, addr, addr6): (&str, &str, &str, &str)) {
    {
        run(&[
            "ip", "netns", "exec", ns, "ip", "addr", "add", addr, "dev", dev,
        ]);
        // nodad: usable at once (no duplicate address detection delay).
        run(&[
            "ip", "netns", "exec", ns, "ip", "addr", "add", addr6, "dev", dev, "nodad",
        ]);
        run(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
        run(&[
            "ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "rx", "off",
        ]);
    }
}

fn join(a: (&str, &str, &str, &str), b: (&str, &str, &str, &str)) {
    link(a, b);
    configure(a);
    configure(b);
}

/// The three namespaces and the server ns's link to the test.
struct Topology {
    server: Netns,
    client: Ns,
    peer: Ns,
    /// The server-side interfaces (client-facing, peer-facing): where XDP goes.
    xdp_ifaces: [String; 2],
    /// Their other ends (in the client ns, in the peer ns).
    end_ifaces: [String; 2],
}

fn topology(tag: &str) -> Topology {
    require_tool("ethtool");
    let server = Netns::create(tag).expect("network namespace for the server (needs root and ip)");
    let id = &server.name[2..];
    let client = Ns::create(format!("tkc{id}"));
    let peer = Ns::create(format!("tkp{id}"));
    let (sc, cs) = (format!("xs{id}"), format!("xc{id}"));
    let (sp, ps) = (format!("xq{id}"), format!("xp{id}"));
    join(
        (
            &server.name,
            &sc,
            &format!("{SERVER_IP}/24"),
            &format!("{SERVER_IP6}/64"),
        ),
        (
            &client.0,
            &cs,
            &format!("{CLIENT_IP}/24"),
            &format!("{CLIENT_IP6}/64"),
        ),
    );
    join(
        (
            &server.name,
            &sp,
            &format!("{RELAY_IP}/24"),
            &format!("{RELAY_IP6}/64"),
        ),
        (
            &peer.0,
            &ps,
            &format!("{PEER_IP}/24"),
            &format!("{PEER_IP6}/64"),
        ),
    );
    // bpf_fib_lookup answers only where forwarding is on (README "XDP fast path").
    for sysctl in [
        "net.ipv4.conf.all.forwarding=1",
        "net.ipv6.conf.all.forwarding=1",
    ] {
        server
            .exec(&["sysctl", "-qw", sysctl])
            .expect("forwarding in the server ns");
    }
    Topology {
        server,
        client,
        peer,
        xdp_ifaces: [sc, sp],
        end_ifaces: [cs, ps],
    }
}

/// turn-server inside the server ns, metrics and admin API on its link to the test.
struct Server {
    /// Killed on drop (its log printed when the test fails).
    child: ChildGuard,
    metrics: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    fn start(t: &Topology, extra: &[&str]) -> Server {
        Self::start_family(t, false, "generic", extra)
    }

    fn start_family(t: &Topology, v6: bool, mode: &str, extra: &[&str]) -> Server {
        let metrics = SocketAddr::new(t.server.ns_ip.into(), 9641);
        let admin = SocketAddr::new(t.server.ns_ip.into(), 9642);
        let bin = bin_path("turn-server");
        let listen = if v6 {
            format!("[{SERVER_IP6}]:{SERVER_PORT}")
        } else {
            format!("{SERVER_IP}:{SERVER_PORT}")
        };
        let relay_ip = if v6 { RELAY_IP6 } else { RELAY_IP };
        let xdp = t.xdp_ifaces.join(",");
        let metrics_s = metrics.to_string();
        let admin_s = admin.to_string();
        let user = format!("{USER}:{PASSWORD}");
        let mut args: Vec<&str> = vec![
            "netns",
            "exec",
            &t.server.name,
            bin.to_str().expect("utf-8 path"),
            "--listen",
            &listen,
            "--relay-ip",
            relay_ip,
            "--min-port",
            "40000",
            "--max-port",
            "40999",
            "--user",
            &user,
            "--workers",
            "2",
            "--metrics",
            &metrics_s,
            "--admin-listen",
            &admin_s,
            "--admin-token",
            TOKEN,
            "--xdp",
            &xdp,
            "--xdp-mode",
            mode,
        ];
        args.extend_from_slice(extra);
        let mut cmd = Command::new("ip");
        cmd.args(&args).env("RUST_LOG", "info");
        let mut child = ChildGuard::spawn("turn-server-xdp", &mut cmd);
        wait_healthy(
            &mut child,
            &format!("turn-server {}", args.join(" ")),
            metrics,
        );
        Server {
            child,
            metrics,
            admin,
        }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&scrape_metrics(self.metrics), name, labels).unwrap_or(0.0)
    }

    fn relayed(&self, direction: &str, path: &str) -> f64 {
        self.metric(
            "turn_relayed_packets_total",
            &[("direction", direction), ("path", path)],
        )
    }
}

fn start_peer(t: &Topology) -> ChildGuard {
    start_peer_on(t, PEER_IP)
}

fn start_peer_on(t: &Topology, ip: &str) -> ChildGuard {
    let tool = require_tool("turnutils_peer");
    ChildGuard::spawn(
        "turnutils_peer",
        Command::new("ip").args([
            "netns",
            "exec",
            &t.peer.0,
            tool.to_str().expect("utf-8 path"),
            "-L",
            ip,
            "-p",
            &PEER_PORT.to_string(),
        ]),
    )
}

/// uclient in the client ns: `clients` clients, `messages` each of 120 bytes every `gap_ms`,
/// over channels (no `-s`), no RTCP allocation (`-c`).
fn uclient(t: &Topology, clients: u64, messages: u64, gap_ms: u64) -> Command {
    uclient_family(t, false, clients, messages, gap_ms)
}

/// [`uclient`] over IPv4 (`-X`) or IPv6 (`-x`: an IPv6 relayed address).
fn uclient_family(t: &Topology, v6: bool, clients: u64, messages: u64, gap_ms: u64) -> Command {
    let tool = require_tool("turnutils_uclient");
    let (family, peer, server) = if v6 {
        ("-x", PEER_IP6, SERVER_IP6)
    } else {
        ("-X", PEER_IP, SERVER_IP)
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &t.client.0])
        .arg(tool)
        .args(["-c", family, "-z", &gap_ms.to_string()])
        .args(["-m", &clients.to_string(), "-n", &messages.to_string()])
        .args(["-l", "120", "-p", &SERVER_PORT.to_string()])
        .args(["-e", peer, "-r", &PEER_PORT.to_string()])
        .args(["-u", USER, "-w", PASSWORD, server]);
    cmd
}

fn shown(out: &ToolOutput) -> String {
    format!(
        "exit {:?} after {:?}\n{}",
        out.status,
        out.elapsed,
        out.combined()
    )
}

/// The number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let start = line.find(key)? + key.len();
    let digits: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// uclient's final (sent, received, lost) (see turnutils.rs for the report's format).
fn report(out: &str) -> Option<(u64, u64, u64)> {
    let totals = out
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))?;
    let loss = out.lines().rfind(|l| l.contains("Total lost packets "))?;
    Some((
        number_after(totals, "tot_send_msgs=")?,
        number_after(totals, "tot_recv_msgs=")?,
        number_after(loss, "Total lost packets ")?,
    ))
}

/// The (to_peer_packets, from_peer_packets) of every "allocation ended" record in `log`.
fn ended_records(log: &str) -> (u64, u64) {
    log.lines()
        .filter(|l| l.contains("allocation ended"))
        .fold((0, 0), |(c2p, p2c), l| {
            (
                c2p + number_after(l, "to_peer_packets=").unwrap_or(0),
                p2c + number_after(l, "from_peer_packets=").unwrap_or(0),
            )
        })
}

/// UDP datagrams with a bad checksum that namespace `ns` received: `Udp: InCsumErrors` of
/// `/proc/net/snmp` (`family` "Udp") or `Udp6InCsumErrors` of `/proc/net/snmp6` ("Udp6").
fn udp_checksum_errors(ns: &str, family: &str) -> u64 {
    let file = if family == "Udp6" {
        "/proc/net/snmp6"
    } else {
        "/proc/net/snmp"
    };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", file])
        .output()
        .expect("read the SNMP counters");
    let text = String::from_utf8_lossy(&out.stdout);
    if family == "Udp6" {
        let line = text
            .lines()
            .find(|l| l.starts_with("Udp6InCsumErrors"))
            .unwrap_or_else(|| panic!("no Udp6InCsumErrors in {text}"));
        return line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("a number");
    }
    let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp: ")).collect();
    assert_eq!(udp.len(), 2, "{text}");
    let names: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == "InCsumErrors")
        .expect("InCsumErrors");
    values[i].parse().expect("a number")
}

#[test]
fn channel_data_takes_the_xdp_path_both_ways_with_valid_checksums() {
    relay_through_xdp("xa", false, "generic");
}

#[test]
fn ipv6_channel_data_takes_the_xdp_path_both_ways_with_valid_checksums() {
    relay_through_xdp("xd", true, "generic");
}

/// Native XDP on veth: frames redirected into a veth reach its peer only when that peer has
/// an XDP program too, so the client and peer ends get one that passes everything.
#[test]
fn native_mode_on_veth_relays_both_ways() {
    relay_through_xdp("xg", false, "native");
}

/// Compiles an XDP program that passes everything and attaches it (native) to `dev` in `ns`.
fn attach_pass_program(ns: &str, dev: &str) {
    let dir = std::env::temp_dir().join(format!("turnkey-xdp-pass-{}-{dev}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("pass.c");
    let obj = dir.join("pass.o");
    {
        std::fs::write(
            &src,
            "#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n\
             SEC(\"xdp\") int pass(struct xdp_md *ctx) { return XDP_PASS; }\n\
             char _license[] SEC(\"license\") = \"GPL\";\n",
        )
        .expect("write pass.c");
        let arch = std::env::consts::ARCH;
        run(&[
            "clang",
            "-O2",
            "-target",
            "bpf",
            &format!("-I/usr/include/{arch}-linux-gnu"),
            "-c",
            src.to_str().expect("utf-8"),
            "-o",
            obj.to_str().expect("utf-8"),
        ]);
    }
    run(&[
        "ip",
        "-n",
        ns,
        "link",
        "set",
        "dev",
        dev,
        "xdpdrv",
        "obj",
        obj.to_str().expect("utf-8"),
        "sec",
        "xdp",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn relay_through_xdp(tag: &str, v6: bool, mode: &str) {
    let t = topology(tag);
    if mode == "native" {
        attach_pass_program(&t.client.0, &t.end_ifaces[0]);
        attach_pass_program(&t.peer.0, &t.end_ifaces[1]);
    }
    let server = Server::start_family(&t, v6, mode, &[]);
    let _peer = start_peer_on(&t, if v6 { PEER_IP6 } else { PEER_IP });
    std::thread::sleep(Duration::from_millis(300));
    const CLIENTS: u64 = 2;
    const MESSAGES: u64 = 100;
    let out = run_with_timeout(
        &mut uclient_family(&t, v6, CLIENTS, MESSAGES, 5),
        Duration::from_secs(45),
    );
    let shown = shown(&out);
    assert!(out.success(), "uclient failed: {shown}");
    let expected = CLIENTS * MESSAGES;
    assert_eq!(
        report(&out.stdout),
        Some((expected, expected, 0)),
        "uclient's report: {shown}"
    );
    // The program's counters are read once a second.
    let counted = wait_until(Duration::from_secs(5), || {
        server.relayed("client_to_peer", "xdp") + server.relayed("client_to_peer", "userspace")
            >= expected as f64
            && server.relayed("peer_to_client", "xdp")
                + server.relayed("peer_to_client", "userspace")
                >= expected as f64
    });
    let text = scrape_metrics(server.metrics);
    assert!(counted, "relayed packets do not add up:\n{text}");
    let xdp = (
        server.relayed("client_to_peer", "xdp"),
        server.relayed("peer_to_client", "xdp"),
    );
    let user = (
        server.relayed("client_to_peer", "userspace"),
        server.relayed("peer_to_client", "userspace"),
    );
    println!("v6={v6} {mode}: xdp {xdp:?} userspace {user:?} of {expected} each way");
    // A few datagrams may take the normal path (before the peer's neighbour entry exists).
    let few = 10.0;
    assert!(
        xdp.0 >= expected as f64 - few && xdp.1 >= expected as f64 - few,
        "the XDP path relayed too little: xdp {xdp:?} userspace {user:?}\n{text}"
    );
    assert!(
        user.0 <= few && user.1 <= few,
        "the userspace path relayed too much: xdp {xdp:?} userspace {user:?}\n{text}"
    );
    assert!(
        server.metric("turn_relayed_bytes_total", &[("path", "xdp")])
            >= 2.0 * 120.0 * (expected as f64 - few),
        "{text}"
    );
    let family = if v6 { "Udp6" } else { "Udp" };
    assert_eq!(
        udp_checksum_errors(&t.peer.0, family),
        0,
        "peer ns saw bad UDP checksums"
    );
    assert_eq!(
        udp_checksum_errors(&t.client.0, family),
        0,
        "client ns saw bad UDP checksums"
    );
    // Per-allocation accounting keeps the XDP-relayed traffic: uclient ends its allocations
    // with Refresh 0 and their "allocation ended" records count every datagram.
    let logged = wait_until(Duration::from_secs(3), || {
        ended_records(&server.child.log()).0 >= expected
    });
    let log = server.child.log();
    assert!(
        logged,
        "\"allocation ended\" records miss XDP traffic: {:?} of {expected}\n{log}",
        ended_records(&log)
    );
    assert!(ended_records(&log).1 >= expected, "{log}");
    drop(server);
}

#[test]
fn ending_the_allocations_stops_the_fast_path_at_once() {
    let t = topology("xb");
    let server = Server::start(&t, &[]);
    let _peer = start_peer(&t);
    std::thread::sleep(Duration::from_millis(300));
    // One client sending for ~20 s (4000 x 5 ms); the allocation is ended in the middle.
    let mut cmd = uclient(&t, 1, 4000, 5);
    let client = ChildGuard::spawn("turnutils_uclient", &mut cmd);
    let flowing = wait_until(Duration::from_secs(15), || {
        server.metric("turn_xdp_bindings", &[]) >= 1.0
            && server.relayed("client_to_peer", "xdp") >= 200.0
    });
    assert!(
        flowing,
        "no XDP traffic: {}\n{}",
        scrape_metrics(server.metrics),
        client.log()
    );
    let (status, body) = admin_call(
        server.admin,
        Some(TOKEN),
        "DELETE",
        "/v1/allocations?user=alice",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let ended = body["ended"].as_array().cloned().unwrap_or_default();
    // The "allocation ended" figures include what XDP relayed (synced before the end).
    let to_peer: u64 = ended
        .iter()
        .map(|a| a["to_peer"]["packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(to_peer >= 200, "{body}");
    // The binding left the maps before the admin API answered.
    assert_eq!(server.metric("turn_xdp_bindings", &[]), 0.0);
    // Wait for the last in-flight counts to be read, then nothing more goes through XDP while
    // uclient keeps sending on its dead allocation: userspace drops it.
    std::thread::sleep(Duration::from_millis(1500));
    let frozen = server.relayed("client_to_peer", "xdp");
    let dropped_before =
        server.metric("turn_dropped_packets_total", &[("reason", "no_allocation")]);
    std::thread::sleep(Duration::from_millis(2500));
    let text = scrape_metrics(server.metrics);
    assert_eq!(
        server.relayed("client_to_peer", "xdp"),
        frozen,
        "XDP still relays after the allocation ended:\n{text}"
    );
    let dropped = server.metric("turn_dropped_packets_total", &[("reason", "no_allocation")])
        - dropped_before;
    assert!(
        dropped >= 100.0,
        "userspace did not see (and drop) the client's datagrams: {dropped}\n{text}"
    );
    drop(client);
    drop(server);
}

#[test]
fn a_refused_peer_never_gets_a_map_entry() {
    let t = topology("xc");
    let server = Server::start(&t, &["--deny-peer", "203.0.113.0/24"]);
    let _peer = start_peer(&t);
    std::thread::sleep(Duration::from_millis(300));
    let out = run_with_timeout(&mut uclient(&t, 1, 20, 5), Duration::from_secs(30));
    let shown = shown(&out);
    assert!(!out.timed_out(), "uclient hung: {shown}");
    // The ChannelBind (or CreatePermission) was refused with 403 and counted.
    let denied = wait_until(Duration::from_secs(3), || {
        server.metric("turn_peer_denied_total", &[]) >= 1.0
    });
    let text = scrape_metrics(server.metrics);
    assert!(denied, "no refusal counted: {shown}\n{text}");
    assert_eq!(server.metric("turn_xdp_bindings", &[]), 0.0, "{text}");
    assert_eq!(
        server.metric("turn_xdp_install_failures_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        server.metric("turn_relayed_packets_total", &[("path", "xdp")]),
        0.0,
        "{text}"
    );
    assert_eq!(
        server.metric("turn_relayed_packets_total", &[("path", "userspace")]),
        0.0,
        "{text}"
    );
    // The program goes with the process.
    drop(server);
    for dev in &t.xdp_ifaces {
        let out = Command::new("ip")
            .args(["-n", &t.server.name, "link", "show", "dev", dev])
            .output()
            .expect("ip link show");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains("xdp"), "{text}");
    }
}

#[test]
fn without_the_program_or_with_a_bad_interface_the_server_does_not_start() {
    // An interface that does not exist: a clear error, exit non-zero, nothing attached.
    let bin = bin_path("turn-server");
    let out = run_with_timeout(
        Command::new(bin).args([
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--xdp",
            "tknosuchif0",
        ]),
        Duration::from_secs(20),
    );
    assert!(!out.timed_out() && !out.success(), "{}", shown(&out));
    assert!(
        out.combined().contains("--xdp tknosuchif0"),
        "no clear error: {}",
        shown(&out)
    );
}

#[test]
fn the_program_stops_at_the_deadline_when_userspace_is_late() {
    // Allocations live at most 10 s, so every entry's deadline is at most 10 s after the last
    // request the server handled.
    let t = topology("xe");
    let server = Server::start(&t, &["--max-lifetime", "10"]);
    let _peer = start_peer(&t);
    std::thread::sleep(Duration::from_millis(300));
    let mut cmd = uclient(&t, 1, 6000, 5);
    let client = ChildGuard::spawn("turnutils_uclient", &mut cmd);
    let flowing = wait_until(Duration::from_secs(15), || {
        server.relayed("client_to_peer", "xdp") >= 50.0
    });
    assert!(
        flowing,
        "no XDP traffic: {}\n{}",
        scrape_metrics(server.metrics),
        client.log()
    );
    assert_eq!(
        server.metric("turn_xdp_passed_total", &[("reason", "expired")]),
        0.0
    );
    // Userspace stops (no timer, no Remove) while the client keeps sending: past the
    // deadline the program must hand the datagrams to the (stopped) server instead.
    let pid = server.child.id().to_string();
    run(&["kill", "-STOP", &pid]);
    std::thread::sleep(Duration::from_secs(11));
    run(&["kill", "-CONT", &pid]);
    let passed = wait_until(Duration::from_secs(5), || {
        server.metric("turn_xdp_passed_total", &[("reason", "expired")]) >= 10.0
    });
    let text = scrape_metrics(server.metrics);
    assert!(
        passed,
        "the program did not stop at the deadline:\n{text}\n{}",
        client.log()
    );
    drop(client);
    drop(server);
}

#[test]
fn when_the_maps_are_full_bindings_stay_on_the_normal_path() {
    let t = topology("xf");
    // uclient binds two channels per client (its peer port and the next): 4 wanted, 1 fits,
    // so at least one client's traffic stays on the normal path whatever the order.
    let server = Server::start(&t, &["--xdp-max-bindings", "1"]);
    let _peer = start_peer(&t);
    std::thread::sleep(Duration::from_millis(300));
    const CLIENTS: u64 = 2;
    const MESSAGES: u64 = 50;
    let out = run_with_timeout(
        &mut uclient(&t, CLIENTS, MESSAGES, 5),
        Duration::from_secs(45),
    );
    let shown = shown(&out);
    assert!(out.success(), "uclient failed: {shown}");
    let expected = CLIENTS * MESSAGES;
    assert_eq!(
        report(&out.stdout),
        Some((expected, expected, 0)),
        "{shown}"
    );
    let counted = wait_until(Duration::from_secs(5), || {
        server.metric(
            "turn_relayed_packets_total",
            &[("direction", "client_to_peer")],
        ) >= expected as f64
    });
    let text = scrape_metrics(server.metrics);
    assert!(counted, "{text}");
    println!(
        "full maps: xdp {} userspace {} failures {} bindings {}",
        server.relayed("client_to_peer", "xdp"),
        server.relayed("client_to_peer", "userspace"),
        server.metric("turn_xdp_install_failures_total", &[]),
        server.metric("turn_xdp_bindings", &[])
    );
    assert!(
        server.metric("turn_xdp_install_failures_total", &[]) >= 1.0,
        "no install failure counted:\n{text}"
    );
    assert!(server.metric("turn_xdp_bindings", &[]) <= 1.0, "{text}");
    // The client without a binding in the maps was relayed by the workers, without loss.
    assert!(
        server.relayed("client_to_peer", "userspace") >= MESSAGES as f64 - 10.0,
        "{text}"
    );
}
