//! The churn clients of a soak: one tokio task per client, each running its kind's cycle at a
//! paced rate until told to stop or out of cycles, then releasing what it holds. Every
//! transaction goes through [`crate::client::Allocation`]; over UDP/TCP its responses come from
//! [`crate::net::forward_stun`], over TLS/DTLS from a [`crate::link`] task.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::tally::Tally;
use super::{Kind, SoakConfig};
use crate::client::{Allocation, ClientError};
use crate::link::{self, Close, Closer, Link, LinkError};
use crate::net::{self, ServerSocket, Transport};
use crate::proto::{Credentials, Request};
use crate::wire::FIRST_CHANNEL;

/// Bound on opening a TCP connection or finishing a TLS/DTLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// In the `allocation` kind, every this many cycles the Allocate carries EVEN-PORT with the R
/// bit (and leaves the reserved port to expire).
const EVEN_PORT_EVERY: u64 = 4;
/// Peer ports used by ChannelBind and CreatePermission start here.
const FIRST_PEER_PORT: u16 = 20_000;

/// What all clients of one run share.
pub struct Ctx {
    cfg: Arc<SoakConfig>,
    credentials: Arc<Credentials>,
    tally: Mutex<Tally>,
    /// Cancelled when churn should stop (clients finish the cycle they are in).
    pub stop: CancellationToken,
    tls: Option<Arc<rustls::ClientConfig>>,
    dtls: Option<Arc<rtc_dtls::config::HandshakeConfig>>,
}

impl Ctx {
    /// Prepares the run's shared state (TLS/DTLS client configurations if the kind needs one).
    pub fn new(cfg: Arc<SoakConfig>) -> Result<Arc<Self>, LinkError> {
        let tls = match cfg.kind {
            Kind::Tls => Some(link::tls::client_config()?),
            _ => None,
        };
        let dtls = match cfg.kind {
            Kind::Dtls => Some(link::dtls::client_config(cfg.server)?),
            _ => None,
        };
        Ok(Arc::new(Self {
            credentials: Arc::new(cfg.credentials.clone()),
            cfg,
            tally: Mutex::new(Tally::default()),
            stop: CancellationToken::new(),
            tls,
            dtls,
        }))
    }

    /// A copy of the counters so far.
    pub fn tally(&self) -> Tally {
        self.counters().clone()
    }

    fn counters(&self) -> MutexGuard<'_, Tally> {
        // Counters stay consistent whatever panicked while holding the lock.
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `result` as a successful `name` or as a failure of its kind.
    fn record<T, E: Failure>(&self, name: &'static str, result: Result<T, E>) -> Option<T> {
        let mut t = self.counters();
        match result {
            Ok(v) => {
                t.op(name);
                Some(v)
            }
            Err(e) => {
                t.error(e.kind());
                None
            }
        }
    }

    /// Counts a failure the caller names.
    fn fail(&self, kind: &str) {
        self.counters().error(kind.to_owned());
    }

    fn cycle_done(&self) {
        self.counters().cycles += 1;
    }
}

/// An error that can be counted by kind.
trait Failure {
    fn kind(&self) -> String;
}

impl Failure for ClientError {
    fn kind(&self) -> String {
        ClientError::kind(self)
    }
}

impl Failure for LinkError {
    fn kind(&self) -> String {
        LinkError::kind(self)
    }
}

impl Failure for std::io::Error {
    fn kind(&self) -> String {
        format!("connect {:?}", std::io::Error::kind(self))
    }
}

/// Runs client `index` until stopped or out of cycles.
pub async fn client(ctx: Arc<Ctx>, index: usize) {
    let mut pacer = Pacer::new(&ctx, index);
    match ctx.cfg.kind {
        Kind::Allocation => allocation_loop(&ctx, index, &mut pacer).await,
        Kind::EvenPort => even_port_loop(&ctx, index, &mut pacer).await,
        Kind::Channel => channel_loop(&ctx, index, &mut pacer).await,
        Kind::Tcp | Kind::Tls | Kind::Dtls => connection_loop(&ctx, index, &mut pacer).await,
    }
}

/// Paces one client's cycles: clients × this client's rate = the configured rate; clients start
/// spread over one period; a slow cycle delays the next rather than causing a burst.
struct Pacer {
    ticks: Interval,
    stop: CancellationToken,
    cycles_left: u64,
}

impl Pacer {
    fn new(ctx: &Ctx, index: usize) -> Self {
        let clients = ctx.cfg.clients as f64;
        let period = Duration::from_secs_f64(clients / ctx.cfg.rate_cps);
        let offset = period.mul_f64(index as f64 / clients);
        let mut ticks = tokio::time::interval_at(Instant::now() + offset, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let cycles_left = ctx.cfg.max_cycles.map_or(u64::MAX, |m| {
            // Client i takes its share of the total; the first ones take the remainder.
            let n = ctx.cfg.clients as u64;
            m / n + u64::from((index as u64) < m % n)
        });
        Self {
            ticks,
            stop: ctx.stop.clone(),
            cycles_left,
        }
    }

    /// Waits for the next cycle; false when the client should stop.
    async fn next(&mut self) -> bool {
        if self.cycles_left == 0 || self.stop.is_cancelled() {
            return false;
        }
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = self.ticks.tick() => {
                self.cycles_left -= 1;
                true
            }
        }
    }
}

/// One connection to the server and the client on it.
struct Session {
    alloc: Allocation,
    end: End,
}

/// How a session's reader ends.
enum End {
    /// UDP/TCP: the reader task forwarding STUN responses.
    Reader {
        task: JoinHandle<std::io::Result<()>>,
        cancel: CancellationToken,
    },
    /// TLS/DTLS: the link task.
    Link(Closer),
}

impl Session {
    /// A new UDP socket (so a new source port) or TCP connection.
    async fn socket(ctx: &Ctx, index: usize, transport: Transport) -> std::io::Result<Session> {
        let socket = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ServerSocket::connect(ctx.cfg.server, transport),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let (tx, rx) = mpsc::channel(Allocation::RESPONSE_QUEUE);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(net::forward_stun(socket.clone(), tx, cancel.clone()));
        Ok(Session {
            alloc: Allocation::new(index, socket, rx, ctx.credentials.clone()),
            end: End::Reader { task, cancel },
        })
    }

    /// A client on an open TLS/DTLS link.
    fn link(ctx: &Ctx, index: usize, link: Link) -> Session {
        Session {
            alloc: Allocation::new(
                index,
                link.outbound,
                link.responses,
                ctx.credentials.clone(),
            ),
            end: End::Link(link.closer),
        }
    }

    /// Closes the connection (`how` applies to TLS/DTLS; UDP sockets just close, TCP sends FIN).
    async fn close(self, how: Close) {
        let Session { alloc, end } = self;
        match end {
            End::Reader { task, cancel } => {
                cancel.cancel();
                let _ = task.await;
                drop(alloc);
            }
            End::Link(closer) => {
                // Close first: dropping the client would close the link gracefully on its own.
                closer.close(how).await;
                drop(alloc);
            }
        }
    }
}

/// Opens a UDP session if there is none, or a fresh one when the current one has carried
/// `port_reuse` allocations; counts a failure to open.
async fn udp_session<'a>(
    ctx: &Ctx,
    index: usize,
    session: &'a mut Option<(Session, u32)>,
) -> Option<&'a mut Session> {
    if session
        .as_ref()
        .is_some_and(|(_, uses)| *uses >= ctx.cfg.port_reuse)
    {
        if let Some((s, _)) = session.take() {
            s.close(Close::Graceful).await;
        }
    }
    if session.is_none() {
        let s = ctx.record(
            "UDP socket",
            Session::socket(ctx, index, Transport::Udp).await,
        )?;
        *session = Some((s, 0));
    }
    let (s, uses) = session.as_mut()?;
    *uses += 1;
    Some(s)
}

async fn drop_session(session: &mut Option<(Session, u32)>) {
    if let Some((s, _)) = session.take() {
        s.close(Close::Graceful).await;
    }
}

/// The `offset`-th peer: the peer IP and a port that is neither the server's nor in its relay
/// range (a server refuses its own relayed addresses as peers, RFC 8656 §21.2).
fn peer(ctx: &Ctx, offset: u32) -> SocketAddr {
    let server_port = ctx.cfg.server.port();
    let port = peer_port(
        offset,
        &[ctx.cfg.relay_ports.clone(), server_port..=server_port],
    );
    SocketAddr::new(ctx.cfg.peer_ip, port)
}

/// The `offset`-th port from [`FIRST_PEER_PORT`] upwards (wrapping), skipping `avoid`. Pure.
fn peer_port(offset: u32, avoid: &[RangeInclusive<u16>]) -> u16 {
    let mut avoid: Vec<(u32, u32)> = avoid
        .iter()
        .map(|r| (u32::from(*r.start()), u32::from(*r.end())))
        .filter(|(a, b)| a <= b)
        .collect();
    avoid.sort_unstable();
    // Merge overlaps so every port is skipped once.
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (a, b) in avoid {
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let first = u32::from(FIRST_PEER_PORT);
    let excluded: u32 = merged
        .iter()
        .map(|(a, b)| {
            b.min(&65_535)
                .saturating_add(1)
                .saturating_sub(*a.max(&first))
        })
        .sum();
    let usable = (65_536 - first).saturating_sub(excluded).max(1);
    let mut port = first + offset % usable;
    for (a, b) in merged {
        if b >= first && port >= a.max(first) {
            port += b + 1 - a.max(first);
        }
    }
    port.min(65_535) as u16
}

fn delete() -> Request {
    Request::Refresh { lifetime_secs: 0 }
}

/// `allocation`: Allocate → CreatePermission → Refresh(0); every 4th Allocate carries EVEN-PORT
/// with the R bit; a new source port every `port_reuse` cycles.
async fn allocation_loop(ctx: &Ctx, index: usize, pacer: &mut Pacer) {
    let mut session = None;
    let mut n: u64 = 0;
    while pacer.next().await {
        n += 1;
        let ok = match udp_session(ctx, index, &mut session).await {
            Some(s) => {
                let (name, even_port) = if n.is_multiple_of(EVEN_PORT_EVERY) {
                    ("Allocate EVEN-PORT(R)", Some(true))
                } else {
                    ("Allocate", None)
                };
                let request = Request::Allocate {
                    lifetime_secs: ctx.cfg.lifetime_secs,
                    even_port,
                    reservation_token: None,
                };
                match ctx.record(name, s.alloc.allocate_with(&request).await) {
                    Some(_) => {
                        let peer = peer(ctx, n as u32);
                        let permitted = ctx.record(
                            "CreatePermission",
                            s.alloc.transact(&Request::CreatePermission { peer }).await,
                        );
                        let deleted = ctx.record("Refresh", s.alloc.transact(&delete()).await);
                        permitted.is_some() && deleted.is_some()
                    }
                    None => false,
                }
            }
            None => true,
        };
        if !ok {
            // Start again from a clean 5-tuple.
            drop_session(&mut session).await;
        }
        ctx.cycle_done();
    }
    drop_session(&mut session).await;
}

/// `even-port`: Allocate with EVEN-PORT(R); every other cycle a second client takes the
/// reserved port with RESERVATION-TOKEN and deletes it, the other cycles leave the reservation
/// to expire; then Refresh(0).
async fn even_port_loop(ctx: &Ctx, index: usize, pacer: &mut Pacer) {
    let mut session = None;
    let mut n: u64 = 0;
    while pacer.next().await {
        n += 1;
        let Some(s) = udp_session(ctx, index, &mut session).await else {
            ctx.cycle_done();
            continue;
        };
        let request = Request::Allocate {
            lifetime_secs: ctx.cfg.lifetime_secs,
            even_port: Some(true),
            reservation_token: None,
        };
        let Some(allocated) = ctx.record(
            "Allocate EVEN-PORT(R)",
            s.alloc.allocate_with(&request).await,
        ) else {
            drop_session(&mut session).await;
            ctx.cycle_done();
            continue;
        };
        let mut ok = true;
        match allocated.reservation_token {
            Some(token) if n.is_multiple_of(2) => {
                ok &= take_reservation(ctx, index, token).await;
            }
            Some(_) => {}
            None => {
                ctx.fail("Allocate EVEN-PORT(R) without RESERVATION-TOKEN");
            }
        }
        ok &= ctx
            .record("Refresh", s.alloc.transact(&delete()).await)
            .is_some();
        if !ok {
            drop_session(&mut session).await;
        }
        ctx.cycle_done();
    }
    drop_session(&mut session).await;
}

/// From a fresh port: Allocate with RESERVATION-TOKEN, then Refresh(0).
async fn take_reservation(ctx: &Ctx, index: usize, token: [u8; 8]) -> bool {
    let Some(mut s) = ctx.record(
        "UDP socket",
        Session::socket(ctx, index, Transport::Udp).await,
    ) else {
        return false;
    };
    let request = Request::Allocate {
        lifetime_secs: ctx.cfg.lifetime_secs,
        even_port: None,
        reservation_token: Some(token),
    };
    let ok = ctx
        .record(
            "Allocate RESERVATION-TOKEN",
            s.alloc.allocate_with(&request).await,
        )
        .is_some()
        && ctx
            .record("Refresh", s.alloc.transact(&delete()).await)
            .is_some();
    s.close(Close::Graceful).await;
    ok
}

/// `channel`: one allocation at a time per client; each cycle binds the next channel number to
/// the next peer; after `binds_per_allocation` binds, Refresh(0) and allocate again (on a new
/// source port every `port_reuse` allocations).
async fn channel_loop(ctx: &Ctx, index: usize, pacer: &mut Pacer) {
    let mut session: Option<(Session, u32)> = None;
    let mut allocated = false;
    let mut binds: u16 = 0;
    let mut epoch: u32 = 0;
    while pacer.next().await {
        if !allocated {
            let Some(s) = udp_session(ctx, index, &mut session).await else {
                ctx.cycle_done();
                continue;
            };
            if ctx
                .record("Allocate", s.alloc.allocate(ctx.cfg.lifetime_secs).await)
                .is_none()
            {
                drop_session(&mut session).await;
                ctx.cycle_done();
                continue;
            }
            allocated = true;
            binds = 0;
            epoch = epoch.wrapping_add(1);
        }
        let Some((s, _)) = session.as_mut() else {
            allocated = false;
            ctx.cycle_done();
            continue;
        };
        // Within one allocation channel k always goes with peer port base + k, so a number is
        // never re-bound to another peer (RFC 8656 §12: that is a 400).
        let request = Request::ChannelBind {
            channel: FIRST_CHANNEL + binds,
            peer: peer(ctx, (epoch % 8) * 4096 + u32::from(binds)),
        };
        let bound = ctx
            .record("ChannelBind", s.alloc.transact(&request).await)
            .is_some();
        binds += 1;
        if !bound || binds >= ctx.cfg.binds_per_allocation {
            let deleted = ctx
                .record("Refresh", s.alloc.transact(&delete()).await)
                .is_some();
            allocated = false;
            if !bound || !deleted {
                drop_session(&mut session).await;
            }
        }
        ctx.cycle_done();
    }
    if allocated {
        if let Some((s, _)) = session.as_mut() {
            ctx.record("Refresh", s.alloc.transact(&delete()).await);
        }
    }
    drop_session(&mut session).await;
}

/// `tcp`, `tls`, `dtls`: connect (handshake), [Binding over DTLS], Allocate, [Refresh(0) with
/// `delete_before_close`], close.
async fn connection_loop(ctx: &Ctx, index: usize, pacer: &mut Pacer) {
    while pacer.next().await {
        let session = match ctx.cfg.kind {
            Kind::Tls => {
                let config = ctx.tls.clone().expect("Ctx::new builds it for tls");
                let link = link::tls::connect(ctx.cfg.server, config, CONNECT_TIMEOUT).await;
                ctx.record("TLS handshake", link)
                    .map(|l| Session::link(ctx, index, l))
            }
            Kind::Dtls => {
                let config = ctx.dtls.clone().expect("Ctx::new builds it for dtls");
                let link = link::dtls::connect(ctx.cfg.server, config, CONNECT_TIMEOUT).await;
                ctx.record("DTLS handshake", link)
                    .map(|l| Session::link(ctx, index, l))
            }
            _ => ctx.record(
                "TCP connect",
                Session::socket(ctx, index, Transport::Tcp).await,
            ),
        };
        let Some(mut s) = session else {
            ctx.cycle_done();
            continue;
        };
        if ctx.cfg.kind == Kind::Dtls {
            ctx.record("Binding", s.alloc.transact(&Request::Binding).await);
        }
        let allocated = ctx
            .record("Allocate", s.alloc.allocate(ctx.cfg.lifetime_secs).await)
            .is_some();
        if allocated && ctx.cfg.delete_before_close {
            ctx.record("Refresh", s.alloc.transact(&delete()).await);
        }
        s.close(ctx.cfg.close).await;
        ctx.cycle_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ports_skip_the_relay_range_and_the_server() {
        let relay = 20_010..=20_019;
        let server = 20_025..=20_025;
        let ports: Vec<u16> = (0..20)
            .map(|i| peer_port(i, &[relay.clone(), server.clone()]))
            .collect();
        let expected: Vec<u16> = (20_000..=20_031)
            .filter(|p| !relay.contains(p) && !server.contains(p))
            .take(20)
            .collect();
        assert_eq!(ports, expected);
        // Ranges below the first peer port, overlapping or out of order change nothing wrongly.
        assert_eq!(
            peer_port(0, &[1..=100, 20_000..=20_004, 20_002..=20_005]),
            20_006
        );
        // Wraps within the usable ports.
        let usable = 65_536 - 20_000 - 16_384;
        assert_eq!(peer_port(usable, &[49_152..=65_535]), 20_000);
        assert_eq!(peer_port(usable - 1, &[49_152..=65_535]), 49_151);
    }
}
