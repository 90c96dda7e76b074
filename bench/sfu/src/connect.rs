//! `--connect-only N`: peer connections set up one after another (or `--connect-parallel K`
//! rooms at a time), counting how many complete. Each round is a room of one publisher and one
//! subscriber, so it opens two peer connections to the SFU, one of each DTLS role: the
//! publisher's publish PC (the SFU answers, DTLS server) and the subscriber's subscribe PC (the
//! SFU offers, DTLS client). A PC is complete when it reaches `connected` (ICE and DTLS done)
//! and SRTP flows on it: the subscriber has decoded the publisher's video and audio probes.
//! Each round's participants leave before the next round starts.

use crate::{client, node, signal};
use anyhow::Context as _;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What `--connect-only` measured.
#[derive(Debug, Default)]
pub struct ConnectReport {
    /// Peer connections opened.
    pub attempted: usize,
    /// Of those, connected (ICE + DTLS) with SRTP flowing.
    pub completed: usize,
    /// Connected, but the round's media did not arrive in time.
    pub connected_without_media: usize,
    /// Setup time (creation -> connected) of every connected PC.
    pub setup: Vec<Duration>,
    /// Rounds that did not complete: (round, what was missing).
    pub failures: Vec<(usize, String)>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Datagrams the clients dropped on purpose (`--drop-percent`).
    pub dropped: u64,
    /// DTLS flights the clients sent again because the SFU repeated its own.
    pub flights_resent: u64,
}

impl ConnectReport {
    /// The `q` quantile of the setup times (nearest rank), None without any.
    pub fn setup_quantile(&self, q: f64) -> Option<Duration> {
        let mut v = self.setup.clone();
        v.sort_unstable();
        let n = v.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        v.get(rank - 1).copied()
    }
}

/// Opens `pcs` peer connections against `node`, `parallel` rooms (2 PCs each) per round; a
/// round that has not completed after `round_timeout` counts its incomplete PCs as failed.
pub fn run(
    node: &node::SfuNode,
    secret: &str,
    load: &client::Load,
    pcs: usize,
    parallel: usize,
    round_timeout: Duration,
) -> anyhow::Result<ConnectReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t0 = Instant::now();
    let mut report = ConnectReport::default();
    let rooms_total = pcs.div_ceil(2);
    let mut room = 0usize;
    let mut round = 0usize;
    while room < rooms_total {
        let rooms = parallel.min(rooms_total - room);
        let r = run_round(&rt, node, secret, load, round, room, rooms, round_timeout)?;
        // A subscriber whose publisher never connected gets no offer, so no PC: it counts as
        // attempted and not complete all the same.
        report.attempted += rooms * 2;
        report.dropped += r.dropped;
        report.flights_resent += r.flights_resent;
        let complete = r.flows >= rooms * 2;
        let mut connected = 0;
        for d in r.pc_setup.iter().flatten() {
            connected += 1;
            report.setup.push(*d);
            if complete {
                report.completed += 1;
            } else {
                report.connected_without_media += 1;
            }
        }
        if !complete || connected < rooms * 2 || !r.errors.is_empty() {
            report.failures.push((
                round,
                format!(
                    "{connected} of {} PCs connected ({} created), {} of {} flows, errors {:?}",
                    rooms * 2,
                    r.pc_setup.len(),
                    r.flows,
                    rooms * 2,
                    r.errors
                ),
            ));
        }
        room += rooms;
        round += 1;
    }
    report.wall = t0.elapsed();
    Ok(report)
}

struct Round {
    dropped: u64,
    flights_resent: u64,
    pc_setup: Vec<Option<Duration>>,
    flows: usize,
    errors: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn run_round(
    rt: &tokio::runtime::Runtime,
    node: &node::SfuNode,
    secret: &str,
    load: &client::Load,
    round: usize,
    first_room: usize,
    rooms: usize,
    timeout: Duration,
) -> anyhow::Result<Round> {
    let _entered = rt.enter();
    let shared = Arc::new(client::Shared::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let link_errors = Arc::new(signal::LinkErrors::default());
    let poll = mio::Poll::new()?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(usize::MAX))?);
    let (tx, rx) = mpsc::channel();
    let mut seats = Vec::new();
    let mut links = Vec::new();
    for r in first_room..first_room + rooms {
        for (role, publishes) in [("pub", true), ("sub", false)] {
            let slot = seats.len();
            let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
            seats.push(client::Seat {
                index: slot as u32,
                publishes,
                outbox: out_tx,
                candidates_in_sdp: false,
            });
            links.push(rt.spawn(signal::run_link(
                node.link,
                secret.to_string(),
                format!("c{r}"),
                format!("{role}{r}"),
                slot,
                (tx.clone(), waker.clone()),
                out_rx,
                link_errors.clone(),
                shutdown.clone(),
            )));
        }
    }
    let thread = {
        let shared = shared.clone();
        let load = load.clone();
        let ip = node.host_ip;
        std::thread::Builder::new()
            .name(format!("bench-client-c{round}"))
            .spawn(move || client::run(poll, seats, rx, load, ip, shared))?
    };
    // Video and audio of each room's publisher reach its subscriber.
    let want = rooms * 2;
    let t0 = Instant::now();
    while shared.flows.load(Ordering::Relaxed) < want && t0.elapsed() < timeout {
        rt.block_on(tokio::time::sleep(Duration::from_millis(2)));
    }
    shared.stop.store(true, Ordering::Relaxed);
    let flows = shared.flows.load(Ordering::Relaxed);
    let r = thread
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
        .context("client thread")?;
    shutdown.cancel();
    for l in links {
        let _ = rt.block_on(l);
    }
    let mut errors = r.errors;
    let (connect, closed) = (
        link_errors.connect.load(Ordering::Relaxed),
        link_errors.closed.load(Ordering::Relaxed),
    );
    if connect + closed > 0 {
        errors.push(format!("link failures {connect}/{closed}"));
    }
    Ok(Round {
        dropped: r.dropped,
        flights_resent: r.flights_resent,
        pc_setup: r.pc_setup,
        flows,
        errors,
    })
}
