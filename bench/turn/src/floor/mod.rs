//! `turn-bench floor`: the physical floor of a TURN relay. It relays exactly what a TURN server
//! relays in the benchmark, and nothing else: ChannelData from a client loses its 4-byte header
//! and goes to the bound peer from that client's relay socket; a datagram from the bound peer
//! on a relay socket gets the header back and goes to the client. No authentication, no
//! permissions, no timers, no metrics: every TURN request is answered with a success
//! ([`stun`]), Allocate binds a relay socket, ChannelBind records the one (channel, peer) of
//! that allocation, Refresh with LIFETIME 0 closes it. Reads are `recvmmsg` and writes
//! `sendmmsg` (`turnkey_sockets::batch`), on one thread over one epoll set.
//!
//! With `shared_relay`, all allocations share one relay socket, told apart by the peer's
//! address and port as coturn's `--multiplex-peer` does: every allocation must have a peer of
//! its own (the generator's `--peers generator`), and then what one receive batch yields goes
//! out in one `sendmmsg` on the shared socket too.
//!
//! The generator (`turn-bench` without a subcommand) needs no special mode for it: it runs its
//! usual Allocate / CreatePermission / ChannelBind set-up, and the floor's answers carry no
//! MESSAGE-INTEGRITY, which it accepts when no 401 asked for credentials.

pub mod stun;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use turnkey_sockets::batch::{RecvBatch, SendBatch};

use crate::wire::{self, FrameKind, CHANNEL_DATA_HEADER_BYTES};

/// Epoll token of the client-facing listener; relay slot `k` has `k + 1`.
const LISTENER: u64 = 0;
/// Epoll token of the shared relay socket.
const SHARED: u64 = u64::MAX;
/// Receive batches taken from one socket per wake-up before the others get a turn.
const MAX_READS_PER_WAKE: usize = 8;
/// Epoll wait, so that the time limit is checked even when nothing arrives.
const WAIT_MS: u16 = 200;

/// What to run.
#[derive(Debug, Clone)]
pub struct FloorConfig {
    /// The client-facing UDP listener.
    pub listen: SocketAddr,
    /// Relay sockets are bound on this IP, port chosen by the kernel.
    pub relay_ip: IpAddr,
    /// LIFETIME granted.
    pub lifetime_secs: u32,
    /// Most allocations held at once; Allocates beyond are not answered.
    pub max_allocations: usize,
    /// The floor exits after this long.
    pub max_runtime: Duration,
    /// One relay socket for all allocations (peers told apart by address), instead of one each.
    pub shared_relay: bool,
}

/// What the floor did, printed when it exits.
#[derive(Debug, Default, Clone, Copy)]
pub struct FloorStats {
    /// ChannelData relayed client → peer.
    pub to_peer: u64,
    /// Datagrams relayed peer → client.
    pub to_client: u64,
    /// STUN requests answered.
    pub requests: u64,
    /// Datagrams dropped: unknown client or channel, a peer that is not the bound one,
    /// malformed, or a full socket buffer.
    pub dropped: u64,
    /// recvmmsg calls that returned datagrams.
    pub receive_calls: u64,
    /// sendmmsg calls.
    pub send_calls: u64,
}

/// One allocation.
struct Slot {
    client: SocketAddr,
    /// Its own relay socket (None with a shared one).
    socket: Option<UdpSocket>,
    relayed: SocketAddr,
    /// The channel binding: channel number and peer.
    binding: Option<(u16, SocketAddr)>,
    /// Datagrams to the peer, sent after each listener batch (or when full).
    out: SendBatch<()>,
}

/// The relay table and the sockets.
struct Floor {
    cfg: FloorConfig,
    listener: UdpSocket,
    epoll: Epoll,
    slots: Vec<Option<Slot>>,
    by_client: HashMap<SocketAddr, usize>,
    to_clients: SendBatch<()>,
    /// Slots with datagrams queued in their `out`.
    dirty: Vec<usize>,
    /// The shared relay socket, its queue of datagrams to peers, and the slot of each peer.
    shared: Option<UdpSocket>,
    shared_out: SendBatch<()>,
    by_peer: HashMap<SocketAddr, usize>,
    stats: FloorStats,
}

/// Runs the floor until `max_runtime` has passed (or the process is killed).
pub fn run(cfg: FloorConfig) -> io::Result<FloorStats> {
    let listener = turnkey_sockets::reuseport_udp(cfg.listen)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut floor = Floor {
        cfg,
        listener,
        epoll,
        slots: Vec::new(),
        by_client: HashMap::new(),
        to_clients: SendBatch::new(),
        dirty: Vec::new(),
        shared: None,
        shared_out: SendBatch::new(),
        by_peer: HashMap::new(),
        stats: FloorStats::default(),
    };
    let started = Instant::now();
    let mut batch = RecvBatch::new();
    let mut events = vec![EpollEvent::empty(); 64];
    while started.elapsed() < floor.cfg.max_runtime {
        let ready = match floor.epoll.wait(&mut events, EpollTimeout::from(WAIT_MS)) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for ev in &events[..ready] {
            let token = ev.data();
            for _ in 0..MAX_READS_PER_WAKE {
                let got = match token {
                    LISTENER => batch.recv(&floor.listener),
                    SHARED => match &floor.shared {
                        Some(socket) => batch.recv(socket),
                        None => break,
                    },
                    _ => match floor.slots.get(token as usize - 1) {
                        Some(Some(Slot {
                            socket: Some(socket),
                            ..
                        })) => batch.recv(socket),
                        _ => break,
                    },
                };
                match got {
                    Ok(_) => floor.stats.receive_calls += 1,
                    Err(_) => break,
                }
                match token {
                    LISTENER => {
                        floor.handle_from_clients(&batch);
                        floor.flush_to_peers();
                    }
                    SHARED => floor.handle_from_shared(&batch),
                    _ => floor.handle_from_peers(token as usize - 1, &batch),
                }
                if batch.len() < turnkey_sockets::batch::BATCH {
                    break;
                }
            }
        }
        floor.flush_to_clients();
    }
    Ok(floor.stats)
}

impl Floor {
    fn handle_from_clients(&mut self, batch: &RecvBatch) {
        for (from, data) in batch.datagrams() {
            match data.first().map(|&b| wire::classify(b)) {
                Some(Ok(FrameKind::ChannelData)) => {
                    let shared = self.shared.is_some();
                    let relayed = self.by_client.get(&from).copied().and_then(|k| {
                        let slot = self.slots[k].as_mut()?;
                        let (channel, payload) = wire::parse_channel_data(data).ok()?;
                        let (bound, peer) = slot.binding?;
                        if bound != channel {
                            return None;
                        }
                        let (out, sock) = match (&self.shared, slot.socket.as_ref()) {
                            (Some(shared), _) => (&mut self.shared_out, shared),
                            (None, Some(sock)) => (&mut slot.out, sock),
                            (None, None) => return None,
                        };
                        queue(out, sock, peer, &[payload], &mut self.stats);
                        Some(k)
                    });
                    match relayed {
                        Some(k) => {
                            if !shared && !self.dirty.contains(&k) {
                                self.dirty.push(k);
                            }
                            self.stats.to_peer += 1;
                        }
                        None => self.stats.dropped += 1,
                    }
                }
                Some(Ok(FrameKind::Stun)) => match stun::parse_request(data) {
                    Ok(req) => self.handle_request(from, &req),
                    Err(_) => self.stats.dropped += 1,
                },
                _ => self.stats.dropped += 1,
            }
        }
    }

    fn handle_request(&mut self, from: SocketAddr, req: &stun::Request) {
        let mut answer = stun::Answer {
            mapped: from,
            relayed: None,
            lifetime_secs: self.cfg.lifetime_secs,
        };
        let slot = self.by_client.get(&from).copied();
        match req.method {
            stun::Method::Allocate => match slot {
                // A retransmission: the same relayed address again.
                Some(k) => answer.relayed = self.slots[k].as_ref().map(|s| s.relayed),
                None => match self.allocate(from) {
                    Some(relayed) => answer.relayed = Some(relayed),
                    None => {
                        self.stats.dropped += 1;
                        return;
                    }
                },
            },
            stun::Method::Refresh if req.lifetime_secs == Some(0) => {
                answer.lifetime_secs = 0;
                if let Some(k) = slot {
                    self.release(k);
                }
            }
            stun::Method::ChannelBind => {
                if let (Some(k), Some(channel), Some(peer)) = (slot, req.channel, req.peer) {
                    if let Some(s) = self.slots[k].as_mut() {
                        if let Some((_, old)) = s.binding.replace((channel, peer)) {
                            if self.by_peer.get(&old) == Some(&k) {
                                self.by_peer.remove(&old);
                            }
                        }
                        if self.shared.is_some() {
                            // Last binding wins (coturn refuses the second one instead).
                            self.by_peer.insert(peer, k);
                        }
                    }
                }
            }
            stun::Method::Refresh | stun::Method::CreatePermission | stun::Method::Binding => {}
        }
        self.stats.requests += 1;
        let response = stun::success_response(req, &answer);
        queue(
            &mut self.to_clients,
            &self.listener,
            from,
            &[&response],
            &mut self.stats,
        );
    }

    /// Binds a relay socket for `client`; its relayed address, or None at the limit or when
    /// no port is free.
    fn allocate(&mut self, client: SocketAddr) -> Option<SocketAddr> {
        if self.by_client.len() >= self.cfg.max_allocations {
            return None;
        }
        let k = match self.slots.iter().position(Option::is_none) {
            Some(k) => k,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let (socket, relayed) = if self.cfg.shared_relay {
            if self.shared.is_none() {
                let socket =
                    turnkey_sockets::reuseport_udp(SocketAddr::new(self.cfg.relay_ip, 0)).ok()?;
                self.epoll
                    .add(&socket, EpollEvent::new(EpollFlags::EPOLLIN, SHARED))
                    .ok()?;
                self.shared = Some(socket);
            }
            (None, self.shared.as_ref()?.local_addr().ok()?)
        } else {
            let socket =
                turnkey_sockets::relay_udp(SocketAddr::new(self.cfg.relay_ip, 0), false).ok()?;
            let relayed = socket.local_addr().ok()?;
            self.epoll
                .add(&socket, EpollEvent::new(EpollFlags::EPOLLIN, k as u64 + 1))
                .ok()?;
            (Some(socket), relayed)
        };
        self.slots[k] = Some(Slot {
            client,
            socket,
            relayed,
            binding: None,
            out: SendBatch::new(),
        });
        self.by_client.insert(client, k);
        Some(relayed)
    }

    fn release(&mut self, k: usize) {
        if let Some(slot) = self.slots[k].take() {
            if let Some(socket) = &slot.socket {
                let _ = self.epoll.delete(socket);
            }
            if let Some((_, peer)) = slot.binding {
                if self.by_peer.get(&peer) == Some(&k) {
                    self.by_peer.remove(&peer);
                }
            }
            self.by_client.remove(&slot.client);
            self.dirty.retain(|&d| d != k);
        }
    }

    fn handle_from_peers(&mut self, k: usize, batch: &RecvBatch) {
        let Some(slot) = self.slots[k].as_ref() else {
            return;
        };
        for (from, data) in batch.datagrams() {
            match slot.binding {
                Some((channel, peer)) if peer == from && data.len() <= usize::from(u16::MAX) => {
                    let header = channel_data_header(channel, data.len() as u16);
                    queue(
                        &mut self.to_clients,
                        &self.listener,
                        slot.client,
                        &[&header, data],
                        &mut self.stats,
                    );
                    self.stats.to_client += 1;
                }
                _ => self.stats.dropped += 1,
            }
        }
    }

    /// Datagrams on the shared relay socket: the peer's address says whose they are.
    fn handle_from_shared(&mut self, batch: &RecvBatch) {
        for (from, data) in batch.datagrams() {
            let slot = self
                .by_peer
                .get(&from)
                .and_then(|&k| self.slots[k].as_ref());
            match slot.and_then(|s| Some((s.client, s.binding?))) {
                Some((client, (channel, _))) if data.len() <= usize::from(u16::MAX) => {
                    let header = channel_data_header(channel, data.len() as u16);
                    queue(
                        &mut self.to_clients,
                        &self.listener,
                        client,
                        &[&header, data],
                        &mut self.stats,
                    );
                    self.stats.to_client += 1;
                }
                _ => self.stats.dropped += 1,
            }
        }
    }

    fn flush_to_peers(&mut self) {
        if let Some(shared) = &self.shared {
            send(&mut self.shared_out, shared, &mut self.stats);
        }
        for k in self.dirty.drain(..) {
            if let Some(Slot {
                socket: Some(socket),
                out,
                ..
            }) = self.slots[k].as_mut()
            {
                send(out, socket, &mut self.stats);
            }
        }
    }

    fn flush_to_clients(&mut self) {
        send(&mut self.to_clients, &self.listener, &mut self.stats);
    }
}

/// Queues a datagram of `parts` for `to` on `batch`, which `sock` sends; a full batch is sent
/// first.
fn queue(
    batch: &mut SendBatch<()>,
    sock: &UdpSocket,
    to: SocketAddr,
    parts: &[&[u8]],
    stats: &mut FloorStats,
) {
    if batch.is_full() {
        send(batch, sock, stats);
    }
    batch.push_parts((), to, parts);
}

/// Sends what `batch` holds on `sock` (`sendmmsg`, GSO for runs to one client), counting the
/// calls made and the datagrams dropped.
fn send(batch: &mut SendBatch<()>, sock: &UdpSocket, stats: &mut FloorStats) {
    if batch.is_empty() {
        return;
    }
    let before = batch.calls();
    let mut dropped = 0;
    batch.flush(|_| Some(sock.as_fd()), |_, _, _| dropped += 1);
    stats.send_calls += batch.calls() - before;
    stats.dropped += dropped;
}

/// The ChannelData header for `len` payload bytes on `channel` (RFC 8656 §12.4); over UDP no
/// padding follows (§12.5).
pub fn channel_data_header(channel: u16, len: u16) -> [u8; CHANNEL_DATA_HEADER_BYTES] {
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    [c0, c1, l0, l1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_header_and_parse_round_trip() {
        let payload = [7u8; 161];
        let mut frame = channel_data_header(0x4000, 161).to_vec();
        frame.extend_from_slice(&payload);
        assert_eq!(&frame[..4], &[0x40, 0x00, 0x00, 161]);
        let (channel, data) = wire::parse_channel_data(&frame).unwrap();
        assert_eq!((channel, data), (0x4000, &payload[..]));
        assert_eq!(
            channel_data_header(0x4fff, 0x1234),
            [0x4f, 0xff, 0x12, 0x34]
        );
    }

    /// The generator's own relay run against a floor on loopback, with paired allocations and
    /// with generator peers: every probe comes back.
    #[test]
    fn relays_the_generators_load_both_ways() {
        relays(crate::run::Peers::Pair, false);
        relays(crate::run::Peers::Generator, false);
        relays(crate::run::Peers::Generator, true);
    }

    fn relays(peers: crate::run::Peers, shared_relay: bool) {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let cfg = FloorConfig {
            listen,
            relay_ip: "127.0.0.1".parse().unwrap(),
            lifetime_secs: 600,
            max_allocations: 16,
            max_runtime: Duration::from_secs(20),
            shared_relay,
        };
        std::thread::spawn(move || run(cfg));
        std::thread::sleep(Duration::from_millis(100));
        let bench = crate::run::BenchConfig {
            server: listen,
            transport: crate::net::Transport::Udp,
            credentials: crate::proto::Credentials::new("any", "thing"),
            allocations: 4,
            rate_pps: 2_000.0,
            payload_bytes: 64,
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            lifetime_secs: None,
            server_pid: None,
            senders: 1,
            tick: Duration::from_micros(100),
            peers,
            peer_ip: "127.0.0.1".parse().unwrap(),
            peer_netns: None,
        };
        let report = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(crate::run::run(&bench))
            .unwrap();
        assert!(report.sent > 500, "{report:?}");
        assert_eq!(report.received, report.sent, "{report:?}");
        assert_eq!(report.delete_failures, 0);
    }
}
