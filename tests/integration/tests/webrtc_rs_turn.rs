//! A second TURN stack against our server: webrtc-rs's async `turn` client (crates.io `turn`).
//!
//! Two clients, each with its own allocation on one `turn-server`, send datagrams to each other's
//! relayed transport address. The client installs a permission (CreatePermission), sends the
//! first datagrams in Send indications and then binds a channel (ChannelBind) and switches to
//! ChannelData, so this covers RFC 8656 §7-§12 from a client we did not write. Peers that are
//! relayed addresses of the same server are allowed without `--allow-peer` (see docs/CONTRACT.md).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

mod common;
use common::{free_udp_tcp_port, ServerGuard};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MIN_RELAY_PORT: u16 = 50000;
const MAX_RELAY_PORT: u16 = 59999;
/// Upper bound for each test, server start-up excluded.
const TEST_LIMIT: Duration = Duration::from_secs(60);

/// One webrtc-rs TURN client with its allocation.
struct Peer {
    client: Client,
    local: SocketAddr,
    relay: Arc<dyn Conn + Send + Sync>,
    relayed: SocketAddr,
    /// Datagrams read from the relay conn: (payload, from).
    inbox: mpsc::Receiver<(Vec<u8>, SocketAddr)>,
}

async fn new_client(server: SocketAddr, user: &str, password: &str) -> (Client, SocketAddr) {
    let conn = UdpSocket::bind((LOOPBACK, 0)).await.expect("bind client");
    let local = conn.local_addr().expect("local_addr");
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: user.to_owned(),
        password: password.to_owned(),
        // The client takes the realm from the server's 401 answer.
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .expect("Client::new");
    client.listen().await.expect("client.listen");
    (client, local)
}

async fn allocate(server: SocketAddr, user: &str, password: &str) -> Peer {
    let (client, local) = new_client(server, user, password).await;

    // The server answers Binding too: the reflexive address of a loopback client is itself.
    let mapped = client
        .send_binding_request()
        .await
        .expect("Binding request");
    assert_eq!(mapped, local, "XOR-MAPPED-ADDRESS of {user}'s socket");

    let relay = client
        .allocate()
        .await
        .unwrap_or_else(|e| panic!("Allocate for {user} failed: {e}"));
    let relayed = relay.local_addr().expect("relayed address");
    assert_eq!(
        relayed.ip(),
        LOOPBACK,
        "relayed address {relayed} is not on --relay-ip"
    );
    assert!(
        (MIN_RELAY_PORT..=MAX_RELAY_PORT).contains(&relayed.port()),
        "relayed port {} outside --min-port/--max-port",
        relayed.port()
    );
    let relay: Arc<dyn Conn + Send + Sync> = Arc::new(relay);

    let (tx, inbox) = mpsc::channel(1024);
    let reader = Arc::clone(&relay);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = reader.recv_from(&mut buf).await {
            if tx.send((buf[..n].to_vec(), from)).await.is_err() {
                break;
            }
        }
    });
    Peer {
        client,
        local,
        relay,
        relayed,
        inbox,
    }
}

/// Bulk message `i`: a 4-byte tag, the index, then a pattern; sizes from 12 to ~1200 bytes.
fn bulk_message(from: u8, i: u32) -> Vec<u8> {
    let len = 12 + (i as usize * 97) % 1190;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(b"BULK");
    m.extend_from_slice(&i.to_be_bytes());
    m.extend_from_slice(&[from; 4]);
    m.extend((m.len()..len).map(|k| (k as u8) ^ from ^ (i as u8)));
    m
}

/// Sends `hello` datagrams both ways until each side has heard the other (the first ones may
/// race the peer's CreatePermission and be dropped, as RFC 8656 §9 allows).
async fn first_contact(a: &mut Peer, b: &mut Peer) {
    let (mut a_heard, mut b_heard) = (false, false);
    for round in 0..50 {
        if !b_heard {
            a.relay
                .send_to(format!("hello {round} from A").as_bytes(), b.relayed)
                .await
                .expect("A send_to B's relayed address");
        }
        if !a_heard {
            b.relay
                .send_to(format!("hello {round} from B").as_bytes(), a.relayed)
                .await
                .expect("B send_to A's relayed address");
        }
        let until = Instant::now() + Duration::from_millis(200);
        while !(a_heard && b_heard) {
            tokio::select! {
                Some((data, from)) = a.inbox.recv() => {
                    assert_eq!(from, b.relayed, "A got {data:?} from an unexpected address");
                    a_heard |= data.starts_with(b"hello ");
                }
                Some((data, from)) = b.inbox.recv() => {
                    assert_eq!(from, a.relayed, "B got {data:?} from an unexpected address");
                    b_heard |= data.starts_with(b"hello ");
                }
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        if a_heard && b_heard {
            return;
        }
    }
    panic!("no datagram relayed between the allocations in 10 s (A heard B: {a_heard}, B heard A: {b_heard})");
}

/// Receives until `want` bulk messages arrived or `limit` passed; returns them by index. Every
/// datagram must come from `from_relayed`; late `hello`s are ignored.
async fn collect_bulk(
    peer: &mut Peer,
    from_relayed: SocketAddr,
    want: usize,
    limit: Duration,
) -> BTreeMap<u32, Vec<u8>> {
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + limit;
    while got.len() < want {
        match tokio::time::timeout_at(deadline, peer.inbox.recv()).await {
            Ok(Some((data, from))) => {
                assert_eq!(from, from_relayed, "datagram from an unexpected address");
                if data.starts_with(b"BULK") && data.len() >= 8 {
                    let i = u32::from_be_bytes(data[4..8].try_into().expect("4 bytes"));
                    got.insert(i, data);
                }
            }
            Ok(None) => panic!("relay conn reader stopped"),
            Err(_) => break,
        }
    }
    got
}

/// Our `turn-server` on a free loopback port, relaying on 127.0.0.1, with `extra` arguments.
fn start_turn_server(extra: &[&str]) -> (ServerGuard, SocketAddr) {
    let listen = SocketAddr::new(LOOPBACK, free_udp_tcp_port());
    let mut args = vec!["--listen".to_owned(), listen.to_string()];
    args.extend(["--relay-ip", "127.0.0.1"].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    (ServerGuard::turn_server(&args), listen)
}

/// `turn_relayed_packets_total` as (client_to_peer, peer_to_client).
fn relayed_packets(server: &ServerGuard) -> (f64, f64) {
    let count =
        |direction| server.metric("turn_relayed_packets_total", &[("direction", direction)]);
    (count("client_to_peer"), count("peer_to_client"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_rs_clients_relay_through_our_server() {
    let (server, turn) = start_turn_server(&[
        "--user",
        "alice:alice-secret",
        "--user",
        "bob:bob-secret",
        "--min-port",
        &MIN_RELAY_PORT.to_string(),
        "--max-port",
        &MAX_RELAY_PORT.to_string(),
    ]);
    let relayed_before = relayed_packets(&server);

    timeout(TEST_LIMIT, async {
        let mut a = allocate(turn, "alice", "alice-secret").await;
        let mut b = allocate(turn, "bob", "bob-secret").await;
        assert_ne!(
            a.relayed, b.relayed,
            "two allocations share a relayed address"
        );
        assert_ne!(a.local, b.local);
        assert_eq!(
            server.metric("turn_allocations", &[("transport", "udp")]),
            2.0,
            "turn_allocations{{transport=\"udp\"}} with two live allocations"
        );

        first_contact(&mut a, &mut b).await;

        // By now the client has bound a channel for the peer, so most of these travel as
        // ChannelData; all of them must arrive, byte for byte, on loopback.
        const N: u32 = 40;
        for i in 0..N {
            a.relay
                .send_to(&bulk_message(b'A', i), b.relayed)
                .await
                .expect("A bulk send");
            b.relay
                .send_to(&bulk_message(b'B', i), a.relayed)
                .await
                .expect("B bulk send");
            sleep(Duration::from_millis(5)).await;
        }
        let at_b = collect_bulk(&mut b, a.relayed, N as usize, Duration::from_secs(10)).await;
        let at_a = collect_bulk(&mut a, b.relayed, N as usize, Duration::from_secs(10)).await;
        for (name, got, tag) in [("B", &at_b, b'A'), ("A", &at_a, b'B')] {
            let missing: Vec<u32> = (0..N).filter(|i| !got.contains_key(i)).collect();
            assert!(
                missing.is_empty(),
                "{name} never received bulk messages {missing:?}"
            );
            for (i, data) in got {
                assert_eq!(
                    data,
                    &bulk_message(tag, *i),
                    "{name}: bulk message {i} altered"
                );
            }
        }

        let relayed_after = relayed_packets(&server);
        // Every datagram above left one allocation toward a peer and reached the other
        // allocation's client.
        let moved = (
            relayed_after.0 - relayed_before.0,
            relayed_after.1 - relayed_before.1,
        );
        assert!(
            moved.0 >= f64::from(2 * N) && moved.1 >= f64::from(2 * N),
            "turn_relayed_packets_total moved by {moved:?} (client_to_peer, peer_to_client), \
             expected at least {} each",
            2 * N
        );

        // Closing a relay conn sends Refresh with LIFETIME 0: the allocations go away.
        a.relay.close().await.expect("close A's allocation");
        b.relay.close().await.expect("close B's allocation");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let live = server.metric("turn_allocations", &[]);
            if live == 0.0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "turn_allocations still {live} 5 s after both clients deallocated"
            );
            sleep(Duration::from_millis(100)).await;
        }
        a.client.close().await.expect("close client A");
        b.client.close().await.expect("close client B");
    })
    .await
    .expect("test took longer than its limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_client_with_wrong_credentials_is_refused() {
    let (server, turn) = start_turn_server(&["--user", "alice:alice-secret"]);
    let failures_before = server.metric("turn_auth_failures_total", &[]);

    timeout(TEST_LIMIT, async {
        for (user, password) in [("alice", "not-her-password"), ("mallory", "alice-secret")] {
            let (client, _) = new_client(turn, user, password).await;
            let result = client.allocate().await;
            assert!(
                result.is_err(),
                "Allocate as {user}:{password} succeeded; expected 401"
            );
            client.close().await.expect("close client");
        }
        assert_eq!(
            server.metric("turn_allocations", &[]),
            0.0,
            "an allocation exists after refused requests"
        );
        let failures = server.metric("turn_auth_failures_total", &[]) - failures_before;
        assert!(
            failures >= 2.0,
            "turn_auth_failures_total moved by {failures} after two refused Allocates"
        );

        // The right password still works on the same server.
        let (client, _) = new_client(turn, "alice", "alice-secret").await;
        let relay = client.allocate().await.expect("Allocate as alice");
        relay.close().await.expect("deallocate");
        client.close().await.expect("close client");
    })
    .await
    .expect("test took longer than its limit");
}
