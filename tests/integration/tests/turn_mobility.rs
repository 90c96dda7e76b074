//! RFC 8016 mobility against the real binary with two workers: a client that closes its socket
//! mid-call and goes on from a new one (new port, new loopback IP) moves its allocation with a
//! Refresh carrying its MOBILITY-TICKET; data flows both ways again through the same relayed
//! address and the admin API shows the new client address. The kernel steers some of the new
//! 5-tuples to the worker that does not own the allocation, which hands them over; the test
//! moves until it has seen both cases. Then coturn's `turnutils_uclient -M` does the same.

mod common;
mod wire;

use common::{require_tool, run_with_timeout, AdminTurn, TOOL_TIMEOUT};
use rtc_stun::attributes::*;
use rtc_stun::message::{Message, METHOD_CHANNEL_BIND, METHOD_REFRESH};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;
use stun_proto::msg::attr;
use wire::{code, relayed, WireClient};

const TOKEN: &str = "admin-token-for-tests-0123456789";
/// MOBILITY-TICKET (RFC 8016).
const ATTR_MOBILITY_TICKET: AttrType = AttrType(0x8030);
/// Moves before giving up on seeing both a same-worker and a cross-worker move; each move
/// lands on the other worker with probability 1/2.
const MAX_MOVES: usize = 40;

type Server = AdminTurn;

impl AdminTurn {
    fn with(extra: &[&str]) -> Self {
        let mut args = vec!["--user", "alice:alicepw", "--user", "bob:bobpw"];
        args.extend_from_slice(extra);
        AdminTurn::start(TOKEN, &args)
    }

    fn allocations(&self) -> Vec<Value> {
        let (status, body) = self.call("GET", "/v1/allocations", None);
        assert_eq!(status, 200, "{body}");
        body["allocations"].as_array().expect("allocations").clone()
    }

    fn forwarded(&self) -> f64 {
        self.guard
            .metric("turn_mobility_forwarded_packets_total", &[])
    }
}

fn ticket(m: &Message) -> Vec<u8> {
    attr(m, ATTR_MOBILITY_TICKET)
        .expect("MOBILITY-TICKET in the success response")
        .to_vec()
}

/// A client on a new socket bound to `ip`, carrying over `from`'s credentials and realm (its
/// nonce is bound to the old 5-tuple and will be stale).
fn rebind(from: &WireClient, ip: &str) -> WireClient {
    let mut c = WireClient::bound(
        &format!("{ip}:0"),
        from.server,
        &from.username,
        &from.password,
    );
    c.realm = from.realm.clone();
    c.nonce = from.nonce.clone();
    c
}

/// One ChannelData frame each way between `c` (channel 0x4001) and `peer`, through `relay`.
fn both_ways(c: &WireClient, peer: &UdpSocket, relay: SocketAddr, tag: u8) {
    let mut frame = vec![0x40, 0x01, 0, 4];
    frame.extend_from_slice(&[tag; 4]);
    c.send_raw(&frame);
    let mut buf = [0u8; 2048];
    let (n, from) = peer
        .recv_from(&mut buf)
        .expect("peer receives from the new socket");
    assert_eq!((&buf[..n], from), (&[tag; 4][..], relay));
    peer.send_to(&[tag; 8], relay).unwrap();
    let (data, from) = c.recv_raw().expect("client receives on the new socket");
    assert_eq!(from, c.server);
    assert_eq!(data[..4], [0x40, 0x01, 0, 8]);
    assert_eq!(&data[4..12], &[tag; 8]);
}

#[test]
fn a_client_that_rebinds_its_socket_keeps_its_allocation_on_either_worker() {
    let s = Server::with(&["--mobility"]);
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let peer_addr = peer.local_addr().unwrap();

    let mut c = WireClient::new(s.listen, "alice", "alicepw");
    let r = c.allocate_with(&[(ATTR_MOBILITY_TICKET, Vec::new())]);
    assert_eq!(code(&r), None, "Allocate");
    let relay = relayed(&r);
    let mut tk = ticket(&r);
    let first_ticket = tk.clone();
    let r = c.call(
        METHOD_CHANNEL_BIND,
        &[(ATTR_CHANNEL_NUMBER, vec![0x40, 0x01, 0, 0])],
        &[peer_addr],
    );
    assert_eq!(code(&r), None, "ChannelBind");
    both_ways(&c, &peer, relay, 0);

    let (mut same_worker, mut cross_worker, mut moves) = (0, 0, 0);
    while moves < MAX_MOVES && (same_worker < 2 || cross_worker < 2) {
        moves += 1;
        let before = s.forwarded();
        // The old socket closes; the call goes on from a new port on another loopback IP.
        let ip = format!("127.0.0.{}", 2 + moves % 5);
        let mut next = rebind(&c, &ip);
        let mut old = c;
        let r = next.call(METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk.clone())], &[]);
        assert_eq!(
            code(&r),
            None,
            "move {moves}: Refresh with the ticket from {ip}"
        );
        let fresh = ticket(&r);
        assert_ne!(fresh, tk, "a new ticket each time");
        tk = fresh;
        // Same relayed address, channel and permission kept: data both ways.
        both_ways(&next, &peer, relay, moves as u8);
        // The old 5-tuple is forgotten once the client was heard on the new one.
        let r = old.call(METHOD_REFRESH, &[], &[]);
        assert_eq!(code(&r), Some(437), "move {moves}: the old 5-tuple");
        drop(old);
        // The admin API shows the allocation at the new client address.
        let all = s.allocations();
        assert_eq!(all.len(), 1, "{all:?}");
        let here = next.sock.local_addr().unwrap().to_string();
        assert_eq!(all[0]["client"], here.as_str());
        assert_eq!(all[0]["relayed"][0], relay.to_string().as_str());
        assert_eq!(all[0]["moves"], moves);
        assert_eq!(all[0]["channels"].as_array().unwrap().len(), 1);
        if s.forwarded() > before {
            cross_worker += 1;
        } else {
            same_worker += 1;
        }
        c = next;
    }
    assert!(
        same_worker >= 2 && cross_worker >= 2,
        "after {moves} moves: {same_worker} on the owning worker, {cross_worker} on the other"
    );
    assert_eq!(
        s.guard.metric("turn_mobility_moves_total", &[]),
        moves as f64
    );

    // An old ticket cannot move it again, even signed by alice; bob cannot use hers at all.
    let mut thief = rebind(&c, "127.0.0.9");
    let r = thief.call(METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, first_ticket)], &[]);
    assert_eq!(code(&r), Some(437), "stale ticket");
    let mut bob = WireClient::bound("127.0.0.10:0", s.listen, "bob", "bobpw");
    let r = bob.call(METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, tk.clone())], &[]);
    assert_eq!(code(&r), Some(441), "another user");
    let mut forged = tk.clone();
    forged[3] ^= 0x01;
    let r = thief.call(METHOD_REFRESH, &[(ATTR_MOBILITY_TICKET, forged)], &[]);
    assert_eq!(code(&r), Some(400), "modified ticket");
    assert_eq!(
        s.guard.metric(
            "turn_mobility_refusals_total",
            &[("reason", "stale_ticket")]
        ),
        1.0
    );
    assert_eq!(
        s.guard
            .metric("turn_mobility_refusals_total", &[("reason", "wrong_user")]),
        1.0
    );
    // The allocation is still where the client is.
    both_ways(&c, &peer, relay, 0xee);
    let all = s.allocations();
    assert_eq!(
        all[0]["client"],
        c.sock.local_addr().unwrap().to_string().as_str()
    );
}

#[test]
fn mobility_is_off_by_default_405() {
    let s = Server::with(&[]);
    let mut c = WireClient::new(s.listen, "alice", "alicepw");
    let r = c.allocate_with(&[(ATTR_MOBILITY_TICKET, Vec::new())]);
    assert_eq!(code(&r), Some(405));
    assert_eq!(
        s.guard
            .metric("turn_mobility_refusals_total", &[("reason", "disabled")]),
        1.0
    );
    // Every mobility series exists from the start.
    assert_eq!(s.guard.metric("turn_mobility_moves_total", &[]), 0.0);
    assert_eq!(s.forwarded(), 0.0);
    assert_eq!(s.guard.metric("turn_mobility_routes", &[]), 0.0);
    for reason in [
        "transport",
        "bad_ticket",
        "unknown_allocation",
        "stale_ticket",
        "wrong_user",
        "tuple_in_use",
    ] {
        assert_eq!(
            s.guard
                .metric("turn_mobility_refusals_total", &[("reason", reason)]),
            0.0
        );
    }
}

/// `turnutils_uclient -M`: each client allocates with a MOBILITY-TICKET, reopens its socket
/// (a new port), sends a Refresh with the ticket from there (twice, 10 ms apart, and reads
/// both answers), then relays client to client from the new socket.
#[test]
fn coturn_uclient_moves_its_allocations() {
    let s = Server::with(&["--mobility"]);
    let tool = require_tool("turnutils_uclient");
    let args: Vec<String> = [
        "-M", "-y", "-c", "-X", "-z", "5", "-m", "4", "-n", "20", "-l", "100", "-u", "alice", "-w",
        "alicepw", "-p",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([s.listen.port().to_string(), "127.0.0.1".to_string()])
    .collect();
    let out = run_with_timeout(Command::new(tool).args(&args), TOOL_TIMEOUT);
    assert!(out.success(), "uclient: {}", out.combined());
    assert!(
        out.stdout.contains("tot_send_msgs=80, tot_recv_msgs=80"),
        "every message arrived: {}",
        out.combined()
    );
    assert!(
        out.stdout.contains("Total lost packets 0 (0.000000%)"),
        "{}",
        out.combined()
    );
    // uclient allocates more than once per client (-y pairs them); each allocation moved once.
    let moves = s.guard.metric("turn_mobility_moves_total", &[]);
    let allocations = s
        .guard
        .metric("turn_allocation_requests_total", &[("result", "success")]);
    assert!(moves >= 4.0, "{moves} moves\n{}", s.guard.log());
    assert_eq!(
        moves,
        allocations,
        "one move per allocation\n{}",
        s.guard.log()
    );
    for reason in [
        "stale_ticket",
        "wrong_user",
        "bad_ticket",
        "unknown_allocation",
    ] {
        assert_eq!(
            s.guard
                .metric("turn_mobility_refusals_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
}
