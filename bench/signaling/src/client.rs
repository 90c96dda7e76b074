//! The I/O around one [`Session`]: HTTP join, WebSocket connect, `join`, then a loop that feeds
//! server frames and timer wake-ups to the session and writes what it returns; `leave` at the
//! end. Counters go to the run's shared [`Stats`], locked briefly and never across an await.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench_support::stats::Window;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::api::HttpPool;
use crate::proto::{self, Incoming};
use crate::run::BenchConfig;
use crate::session::{Session, SessionConfig};
use crate::stats::Stats;

/// Time allowed for each setup step (HTTP join, TCP connect, WebSocket handshake, `joined`).
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Time allowed at the end for `leave` to be answered.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// WebSocket read buffer per connection (tungstenite's default, 128 KiB, would cost 1.3 GB
/// at 10k connections; offers are ~3 KB).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// State all clients share.
pub struct Shared {
    /// Origin of every `*_ns` time of the run.
    pub epoch: Instant,
    window_start_ns: AtomicU64,
    window_end_ns: AtomicU64,
    /// The counters.
    pub stats: Mutex<Stats>,
    /// Connections joined and still open.
    pub held: AtomicUsize,
    /// Clients whose setup ended (joined or failed).
    pub settled: AtomicUsize,
    /// Cancelled when the clients are to leave.
    pub stop: CancellationToken,
    /// Session-server connections for the HTTP joins.
    pub http: HttpPool,
}

impl Shared {
    /// Fresh state, epoch now.
    pub fn new(http: HttpPool) -> Self {
        Self {
            epoch: Instant::now(),
            window_start_ns: AtomicU64::new(0),
            window_end_ns: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
            held: AtomicUsize::new(0),
            settled: AtomicUsize::new(0),
            stop: CancellationToken::new(),
            http,
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant of an epoch-relative time.
    pub fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// The measurement window, once the run has fixed it.
    pub fn window(&self) -> Option<Window> {
        let end_ns = self.window_end_ns.load(Ordering::Acquire);
        (end_ns != 0).then(|| Window {
            start_ns: self.window_start_ns.load(Ordering::Relaxed),
            end_ns,
        })
    }

    /// Fixes the measurement window (once, before it starts).
    pub fn set_window(&self, w: Window) {
        self.window_start_ns.store(w.start_ns, Ordering::Relaxed);
        self.window_end_ns.store(w.end_ns, Ordering::Release);
    }

    fn with_stats<R>(&self, f: impl FnOnce(&mut Stats) -> R) -> R {
        f(&mut self.stats.lock().expect("stats lock not poisoned"))
    }
}

type Ws = WebSocketStream<TcpStream>;

/// Runs client `index` from `start_at` until the run stops; gives up if it has not joined by
/// `give_up`.
pub async fn run_client(
    shared: Arc<Shared>,
    cfg: Arc<BenchConfig>,
    index: u32,
    start_at: Instant,
    give_up: Instant,
) {
    sleep_until(start_at.into()).await;
    let session = Session::new(SessionConfig {
        index,
        room_size: cfg.room_size,
        candidates: cfg.candidates,
        sdp_bytes: cfg.sdp_bytes,
        message_bytes: cfg.message_bytes,
        send_interval_ns: (cfg.rate > 0.0).then(|| (1e9 / cfg.rate) as u64),
        ping_interval_ns: cfg.ping_interval.as_nanos() as u64,
    });
    let setup = tokio::time::timeout_at(give_up.into(), setup(&shared, &cfg, index, session))
        .await
        .unwrap_or_else(|_| Err("setup_timeout".to_owned()));
    shared.settled.fetch_add(1, Ordering::AcqRel);
    let (ws, session) = match setup {
        Ok(x) => x,
        Err(label) => {
            shared.with_stats(|s| s.fail(label));
            return;
        }
    };
    shared.held.fetch_add(1, Ordering::AcqRel);
    run_joined(&shared, ws, session).await;
    shared.held.fetch_sub(1, Ordering::AcqRel);
}

/// HTTP join, connect, `join` → `joined`. Errors are failure labels.
async fn setup(
    shared: &Shared,
    cfg: &BenchConfig,
    index: u32,
    mut session: Session,
) -> Result<(Ws, Session), String> {
    let room = cfg.room_name(index);
    let identity = format!("c{index}");
    let (grant, exchange) = shared
        .http
        .join(&room, &identity, &identity, cfg.room_size, STEP_TIMEOUT)
        .await
        .map_err(|e| {
            if cfg.verbose {
                eprintln!("client {index}: join: {e}");
            }
            e.label()
        })?;
    let joined_http = Instant::now();
    shared.with_stats(|s| s.http_join_time.record(exchange.as_micros() as u64));

    let addr = ws_addr(&grant.url)
        .await
        .ok_or_else(|| "bad_ws_url".to_owned())?;
    let source =
        (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[index as usize % cfg.source_ips.len()]);
    let tcp = timeout(STEP_TIMEOUT, connect_tcp(addr, source))
        .await
        .map_err(|_| "tcp_timeout".to_owned())?
        .map_err(|e| {
            if cfg.verbose {
                eprintln!("client {index}: connect {addr}: {e}");
            }
            "tcp_connect".to_owned()
        })?;
    let ws_config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (mut ws, _) = timeout(
        STEP_TIMEOUT,
        tokio_tungstenite::client_async_with_config(grant.url.as_str(), tcp, Some(ws_config)),
    )
    .await
    .map_err(|_| "ws_timeout".to_owned())?
    .map_err(|e| {
        if cfg.verbose {
            eprintln!("client {index}: WebSocket handshake: {e}");
        }
        "ws_handshake".to_owned()
    })?;
    shared.with_stats(|s| s.opened += 1);

    let join = proto::join_frame(&room, &grant.token, &identity);
    let join_len = join.len() as u64;
    ws.send(Message::text(join))
        .await
        .map_err(|_| "ws_send".to_owned())?;
    shared.with_stats(|s| s.checks.bytes_sent += join_len);
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut out = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("join_timeout".to_owned()),
            Ok(None | Some(Err(_))) => return Err("join_closed".to_owned()),
            Ok(Some(Ok(Message::Close(c)))) => {
                return Err(format!(
                    "join_closed_{}",
                    c.map_or(1005, |c| u16::from(c.code))
                ))
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
        };
        let now = shared.now_ns();
        let window = shared.window();
        let parsed = Incoming::parse(frame.as_str());
        let label = shared.with_stats(|s| {
            s.checks.bytes_received += frame.len() as u64;
            match parsed {
                Ok(Incoming::Error { code }) => {
                    *s.errors.entry(code).or_default() += 1;
                    Some(format!("join_error_{code}"))
                }
                Ok(f @ Incoming::Joined { .. }) => {
                    session.handle_frame(f, now, window, s, &mut out);
                    s.joined += 1;
                    s.ws_join_time
                        .record((Instant::now() - joined_http).as_micros() as u64);
                    None
                }
                Ok(_) => {
                    s.checks.unexpected += 1;
                    Some(String::new())
                }
                Err(_) => {
                    s.checks.unparsable += 1;
                    Some(String::new())
                }
            }
        });
        match label {
            None => break,
            Some(l) if l.is_empty() => continue,
            Some(l) => return Err(l),
        }
    }
    if send_all(shared, &mut ws, &mut out).await.is_err() {
        return Err("ws_send".to_owned());
    }
    Ok((ws, session))
}

/// Resolves the `url` of a join answer (`ws://HOST:PORT/...`).
async fn ws_addr(url: &str) -> Option<SocketAddr> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let host = host.to_owned();
    let mut addrs = tokio::net::lookup_host((host.as_str(), port)).await.ok()?;
    addrs.next()
}

async fn connect_tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn send_all(
    shared: &Shared,
    ws: &mut Ws,
    out: &mut Vec<String>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    if out.is_empty() {
        return Ok(());
    }
    let mut bytes = 0;
    for frame in out.drain(..) {
        bytes += frame.len() as u64;
        ws.feed(Message::text(frame)).await?;
    }
    ws.flush().await?;
    shared.with_stats(|s| s.checks.bytes_sent += bytes);
    Ok(())
}

enum End {
    Stop,
    Closed(u16),
}

/// The joined phase: relay traffic until the run stops or the server closes.
async fn run_joined(shared: &Shared, mut ws: Ws, mut session: Session) {
    let mut out = Vec::new();
    let end = loop {
        let wake = session
            .poll_timeout(shared.window())
            .map(|ns| shared.instant(ns));
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            () = shared.stop.cancelled() => break End::Stop,
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    let now = shared.now_ns();
                    let window = shared.window();
                    let parsed = Incoming::parse(t.as_str());
                    shared.with_stats(|s| {
                        s.checks.bytes_received += t.len() as u64;
                        match parsed {
                            Ok(f) => session.handle_frame(f, now, window, s, &mut out),
                            Err(_) => s.checks.unparsable += 1,
                        }
                    });
                }
                Some(Ok(Message::Close(c))) => break End::Closed(c.map_or(1005, |c| u16::from(c.code))),
                Some(Ok(Message::Binary(_))) => shared.with_stats(|s| s.checks.unexpected += 1),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break End::Closed(1006),
            },
            () = sleep_until(wake.unwrap_or(far).into()) => {
                let now = shared.now_ns();
                let window = shared.window();
                shared.with_stats(|s| session.handle_timeout(now, window, s, &mut out));
            }
        }
        if send_all(shared, &mut ws, &mut out).await.is_err() {
            break End::Closed(1006);
        }
    };
    match end {
        End::Closed(code) => shared.with_stats(|s| {
            s.dropped += 1;
            *s.drop_close_codes.entry(code).or_default() += 1;
        }),
        End::Stop => {
            let clean = timeout(LEAVE_TIMEOUT, leave(&mut ws)).await;
            if matches!(clean, Ok(true)) {
                shared.with_stats(|s| s.left_cleanly += 1);
            }
        }
    }
}

/// Sends `leave` and reads until the server's close (it answers `left`, then closes with 1000);
/// true if `left` or the close came.
async fn leave(ws: &mut Ws) -> bool {
    if ws.send(Message::text(proto::leave_frame())).await.is_err() {
        return false;
    }
    let mut left = false;
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(t)) => {
                left |= matches!(Incoming::parse(t.as_str()), Ok(Incoming::Left {}));
            }
            Ok(Message::Close(_)) => return true,
            Ok(_) => {}
            Err(_) => return left,
        }
    }
    left
}
