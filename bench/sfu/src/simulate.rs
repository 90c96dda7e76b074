//! `--signaling`: rooms of 4 through running signaling nodes, arriving at a steady rate, as a
//! scale-out / scale-in simulation drives them (tests/integration/tests/scale_simulation.rs).
//! Each room is one client thread ([`client::run`]) with its own stop flag: four participants
//! that each publish video and audio and receive the other three, joined through the signaling
//! API and WebSocket ([`signal::run_signaling_link`]), so placement (channel node, SFU node) is
//! the servers' own. Each room prints one JSON line when it ends: its nodes (read from the
//! signaling API), flows up, the longest gap between two packets of any flow (media stopped
//! for that long), link and signaling errors; then a summary line.

use crate::client::{self, Load, Seat};
use crate::signal::{self, LinkErrors, SignalingSeen};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// What to drive.
pub struct SimConfig {
    /// Signaling HTTP base URLs (`http://HOST:PORT`); room i joins through `signaling[i % n]`.
    pub signaling: Vec<String>,
    /// `KEY:SECRET`.
    pub api_key: String,
    /// Rooms in all.
    pub rooms: usize,
    /// Between two arrivals.
    pub arrival: Duration,
    /// Each room's life from its arrival.
    pub room_life: Duration,
    /// Room name prefix.
    pub prefix: String,
    /// The clients' media address.
    pub host_ip: IpAddr,
    /// Media per publisher.
    pub load: Load,
}

/// Participants per room.
const ROOM_SIZE: usize = 4;

/// Runs the simulation; prints JSON lines on stdout.
pub fn run(c: &SimConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let t0 = Instant::now();
    let mut rooms = Vec::new();
    for i in 0..c.rooms {
        let at = t0 + c.arrival * i as u32;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        rooms.push(start_room(c, &rt, i, t0)?);
    }
    let mut summary = serde_json::json!({"rooms": c.rooms, "complete": 0, "max_gap_ms": 0});
    let (mut complete, mut worst) = (0, 0u64);
    for r in rooms {
        let line = r.finish(c, &rt, t0);
        if line["flows"] == line["flows_expected"]
            && line["errors"].as_array().is_some_and(|e| e.is_empty())
        {
            complete += 1;
        }
        worst = worst.max(line["max_gap_ms"].as_u64().unwrap_or(u64::MAX));
        println!("{line}");
    }
    summary["complete"] = complete.into();
    summary["max_gap_ms"] = worst.into();
    println!("{summary}");
    Ok(())
}

struct Room {
    name: String,
    index: usize,
    started: Duration,
    stop_at: Instant,
    shared: Arc<client::Shared>,
    thread: std::thread::JoinHandle<anyhow::Result<client::ThreadReport>>,
    links: Vec<tokio::task::JoinHandle<()>>,
    shutdown: tokio_util::sync::CancellationToken,
    errors: Arc<LinkErrors>,
    seen: Vec<Arc<SignalingSeen>>,
    base: String,
}

fn start_room(
    c: &SimConfig,
    rt: &tokio::runtime::Runtime,
    i: usize,
    t0: Instant,
) -> anyhow::Result<Room> {
    let name = format!("{}-{i}", c.prefix);
    let base = c.signaling[i % c.signaling.len()].clone();
    let poll = mio::Poll::new()?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(usize::MAX))?);
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(client::Shared::new());
    // Every packet counts (`received`): the window is the room's whole life.
    shared.window_start_us.store(0, Ordering::Relaxed);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let errors = Arc::new(LinkErrors::default());
    let mut seats = Vec::new();
    let mut links = Vec::new();
    let mut seen = Vec::new();
    for slot in 0..ROOM_SIZE {
        let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
        seats.push(Seat {
            index: (i * ROOM_SIZE + slot) as u32,
            publishes: true,
            outbox: out_tx,
            candidates_in_sdp: false,
        });
        let s = Arc::new(SignalingSeen::default());
        seen.push(s.clone());
        links.push(rt.spawn(signal::run_signaling_link(
            base.clone(),
            c.api_key.clone(),
            name.clone(),
            format!("{name}-p{slot}"),
            slot,
            (tx.clone(), waker.clone()),
            out_rx,
            errors.clone(),
            s,
            shutdown.clone(),
        )));
    }
    let (load, ip, sh) = (c.load.clone(), c.host_ip, shared.clone());
    let thread = std::thread::Builder::new()
        .name(format!("sim-{i}"))
        .spawn(move || client::run(poll, seats, rx, load, ip, sh))?;
    Ok(Room {
        name,
        index: i,
        started: t0.elapsed(),
        stop_at: Instant::now() + c.room_life,
        shared,
        thread,
        links,
        shutdown,
        errors,
        seen,
        base,
    })
}

impl Room {
    /// Waits for the room's end, stops it and returns its JSON line.
    fn finish(self, c: &SimConfig, rt: &tokio::runtime::Runtime, t0: Instant) -> serde_json::Value {
        std::thread::sleep(self.stop_at.saturating_duration_since(Instant::now()));
        // Where the servers put it, read before the participants leave.
        let view = rt.block_on(room_view(&c.signaling, &self.base, &c.api_key, &self.name));
        self.shared.stop.store(true, Ordering::Relaxed);
        let report = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"));
        self.shutdown.cancel();
        for l in self.links {
            let _ = rt.block_on(l);
        }
        let mut errors: Vec<String> = Vec::new();
        let connect = self.errors.connect.load(Ordering::Relaxed);
        let closed = self.errors.closed.load(Ordering::Relaxed);
        if connect > 0 {
            errors.push(format!("{connect} joins failed"));
        }
        if closed > 0 {
            errors.push(format!("{closed} WebSockets closed by the server"));
        }
        let mut room_closed = false;
        let mut ws_urls = Vec::new();
        for s in &self.seen {
            errors.extend(s.errors.lock().map(|e| e.clone()).unwrap_or_default());
            room_closed |= s.room_closed.load(Ordering::Relaxed);
            if let Ok(u) = s.ws_url.lock() {
                if !ws_urls.contains(&*u) {
                    ws_urls.push(u.clone());
                }
            }
        }
        if room_closed {
            errors.push("room-closed".into());
        }
        let (flows, max_gap_ms, received) = match report {
            Ok(Ok(r)) => {
                errors.extend(r.errors.iter().cloned());
                (r.flows, r.max_gap_us / 1000, r.received)
            }
            Ok(Err(e)) | Err(e) => {
                errors.push(format!("client: {e}"));
                (0, u64::MAX / 1000, 0)
            }
        };
        serde_json::json!({
            "room": self.name, "index": self.index,
            "start_s": self.started.as_secs_f64(), "end_s": t0.elapsed().as_secs_f64(),
            "node": view.as_ref().and_then(|v| v.get("node")).cloned(),
            "sfu": view.as_ref().and_then(|v| v.get("sfu")).cloned(),
            "ws_urls": ws_urls,
            "flows": flows, "flows_expected": ROOM_SIZE * (ROOM_SIZE - 1) * 2,
            "max_gap_ms": max_gap_ms, "received": received, "errors": errors,
        })
    }
}

/// `GET /v1/rooms` on `first`, or on the other signaling nodes if it does not answer (it may
/// have drained and exited): the entry of `room` (it carries `node` and `sfu`).
async fn room_view(
    all: &[String],
    first: &str,
    api_key: &str,
    room: &str,
) -> Option<serde_json::Value> {
    for base in std::iter::once(first).chain(all.iter().map(String::as_str)) {
        let Ok(rooms) = signal::get_json(base, "/v1/rooms?limit=1000", api_key).await else {
            continue;
        };
        return rooms["rooms"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == room)
            .cloned();
    }
    None
}
