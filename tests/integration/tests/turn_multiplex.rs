//! The multiplexed relay mode (`--relay-multiplex N`) against the real `turn-server` on
//! loopback: coturn's `turnutils_uclient` relaying through shared sockets (ChannelData and Send
//! indications, UDP and TCP clients, each with its own echo peer), and hundreds of allocations
//! on a few descriptors, where a peer endpoint belongs to one allocation per shared socket.

mod common;
mod wire;

use common::{require_tool, run_with_timeout, wait_until, ServerGuard, TOOL_TIMEOUT};
use rtc_stun::message::{METHOD_CREATE_PERMISSION, METHOD_REFRESH};
use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;
use wire::{code, data_indication, WireClient};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// The bottom of the relay ranges (above Linux's ephemeral ports). With 2 workers and
/// `--relay-multiplex 1`, the shared sockets are on the first port of the range (worker 0) and
/// the one two above (worker 1); each test has its own range so they can run at once.
const MIN_PORT: u16 = 61000;

/// The shared ports of a server whose relay range starts at `min`.
fn shared_ports(min: u16) -> BTreeSet<u16> {
    [min, min + 2].into_iter().collect()
}

fn start_server(min_port: u16, extra: &[&str]) -> (ServerGuard, SocketAddr) {
    let port = common::free_udp_tcp_port();
    let listen = format!("127.0.0.1:{port}");
    let min_port = min_port.to_string();
    let mut args = vec![
        "--listen",
        &listen,
        "--relay-ip",
        "127.0.0.1",
        "--min-port",
        &min_port,
        "--max-port",
        "65535",
        "--workers",
        "2",
        "--relay-multiplex",
        "1",
        "--allow-peer",
        "127.0.0.0/8",
        "--user",
        "alice:wonderland",
    ];
    args.extend_from_slice(extra);
    let server = ServerGuard::turn_server(&args);
    (server, listen.parse().unwrap())
}

/// The relayed addresses of the allocations the server logged as created.
fn logged_relays(log: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("allocation created"))
        .filter_map(|l| {
            let start = l.find("relay=[")? + "relay=[".len();
            let end = start + l[start..].find(']')?;
            l[start..end].parse().ok()
        })
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn uclients_relay_through_shared_sockets_with_channels_send_indications_and_tcp() {
    let (server, listen) = start_server(MIN_PORT, &[]);
    // (flags, label): one uclient each, with its own echo peer, all at once.
    let cases: [(&[&str], &str); 3] = [
        (&[], "udp channels"),
        (&["-s"], "udp send indications"),
        (&["-t"], "tcp channels"),
    ];
    let peers: Vec<_> = cases
        .iter()
        .map(|_| common::start_echo_peer(MIN_PORT))
        .collect();
    let tool = require_tool("turnutils_uclient");
    let runs: Vec<_> = cases
        .iter()
        .zip(&peers)
        .map(|((flags, label), (_, peer_port))| {
            let mut args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
            for a in [
                "-c", "-X", "-z", "5", "-m", "1", "-n", "50", "-l", "120", "-p",
            ] {
                args.push(a.into());
            }
            args.push(listen.port().to_string());
            for a in ["-e", "127.0.0.1", "-r"] {
                args.push(a.into());
            }
            args.push(peer_port.to_string());
            for a in ["-u", USER, "-w", PASSWORD, "127.0.0.1"] {
                args.push(a.into());
            }
            let tool = tool.clone();
            let label = label.to_string();
            std::thread::spawn(move || {
                let out = run_with_timeout(Command::new(tool).args(&args), TOOL_TIMEOUT);
                (label, args, out)
            })
        })
        .collect();
    for run in runs {
        let (label, args, out) = run.join().expect("uclient thread");
        let all = out.combined();
        assert!(out.success(), "{label}: uclient {args:?} failed:\n{all}");
        assert!(
            all.contains("tot_send_bytes ~ 6000, tot_recv_bytes ~ 6000")
                && all.contains("Total lost packets 0 "),
            "{label}: not every message came back:\n{all}"
        );
    }
    // Every allocation uclient made sits on a shared socket.
    let relays = logged_relays(&server.log());
    assert!(relays.len() >= 3, "{relays:?}\n{}", server.log());
    for r in &relays {
        assert!(
            shared_ports(MIN_PORT).contains(&r.port()),
            "{r} is not shared: {relays:?}"
        );
    }
    let moved = server.metric(
        "turn_relayed_packets_total",
        &[("direction", "peer_to_client")],
    );
    assert!(moved >= 150.0, "peer_to_client packets {moved}");
    drop(peers);
}

#[test]
fn hundreds_of_allocations_hold_a_few_descriptors_and_each_peer_endpoint_has_one_owner() {
    let min = MIN_PORT + 100;
    let (server, listen) = start_server(
        min,
        &[
            "--user-quota",
            "1000",
            "--ip-quota",
            "1000",
            "--unauth-rate",
            "0",
        ],
    );
    let fds_before = open_fds(server.id());
    const N: usize = 400;
    let mut clients: Vec<(WireClient, SocketAddr)> = (0..N)
        .map(|_| {
            let mut c = WireClient::new(listen, USER, PASSWORD);
            let relay = c.allocate();
            (c, relay)
        })
        .collect();
    let fds_after = open_fds(server.id());
    assert!(
        fds_after <= fds_before + 2,
        "{N} allocations opened descriptors: {fds_before} -> {fds_after}"
    );
    let ports: BTreeSet<u16> = clients.iter().map(|(_, r)| r.port()).collect();
    assert_eq!(ports, shared_ports(min), "relayed ports");
    assert!(wait_until(Duration::from_secs(5), || {
        server.metric("turn_allocations", &[]) == N as f64
    }));

    // Two allocations on one shared socket, and a peer.
    let mut by_relay: HashMap<SocketAddr, Vec<usize>> = HashMap::new();
    for (i, (_, r)) in clients.iter().enumerate() {
        by_relay.entry(*r).or_default().push(i);
    }
    let pair = by_relay
        .values()
        .find(|v| v.len() >= 2)
        .expect("a shared pair");
    let (a, b) = (pair[0], pair[1]);
    let shared = clients[a].1;
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let p = peer.local_addr().unwrap();

    let r = clients[a].0.call(METHOD_CREATE_PERMISSION, &[], &[p]);
    assert_eq!(code(&r), None, "A's permission");
    let r = clients[b].0.call(METHOD_CREATE_PERMISSION, &[], &[p]);
    assert_eq!(code(&r), Some(508), "B may not have A's peer endpoint");
    // A's data reaches the peer from the shared address, and the peer's answer reaches A only.
    clients[a].0.send_indication(p, b"from A");
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).expect("peer gets A's data");
    assert_eq!((&buf[..n], from), (&b"from A"[..], shared));
    peer.send_to(b"to A", shared).unwrap();
    let (raw, _) = clients[a].0.recv_raw().expect("A gets the answer");
    assert_eq!(data_indication(&raw), Some((p, b"to A".to_vec())));
    clients[b]
        .0
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(clients[b].0.recv_raw().is_none(), "B got A's data");
    // B, with a permission for the peer's IP (port 0 claims nothing), cannot send to A's
    // endpoint: the peer would take it for A's.
    let r = clients[b]
        .0
        .call(METHOD_CREATE_PERMISSION, &[], &[SocketAddr::new(p.ip(), 0)]);
    assert_eq!(code(&r), None);
    clients[b].0.send_indication(p, b"from B");
    assert!(
        peer.recv_from(&mut buf).is_err(),
        "B's data reached A's peer"
    );
    assert!(wait_until(Duration::from_secs(5), || {
        server.metric(
            "turn_dropped_packets_total",
            &[("reason", "peer_endpoint_taken")],
        ) >= 1.0
    }));
    // A leaves: the endpoint is free for B, and the shared socket stays for everyone else.
    let r = clients[a].0.call(
        METHOD_REFRESH,
        &[(rtc_stun::attributes::ATTR_LIFETIME, vec![0; 4])],
        &[],
    );
    assert_eq!(code(&r), None);
    let r = clients[b].0.call(METHOD_CREATE_PERMISSION, &[], &[p]);
    assert_eq!(code(&r), None, "B after A left");
    clients[b].0.send_indication(p, b"from B");
    let (n, from) = peer.recv_from(&mut buf).expect("peer gets B's data");
    assert_eq!((&buf[..n], from), (&b"from B"[..], shared));
    assert_eq!(open_fds(server.id()), fds_after);
    clients.clear();
}
