//! Spawning our `turn-server` for the real-client tests (`browser_relay`, `webrtc_rs_turn`) and
//! scraping its `/metrics`.
//!
//! Minimal on purpose; to be folded into `tests/common/mod.rs` once that exists.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to this test executable (`target/<profile>/NAME`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is not inside target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: build it first (`cargo build -p {name}`)",
        bin.display()
    );
    bin
}

/// A loopback port that is free for both UDP and TCP right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("local_addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for UDP+TCP");
}

/// A running `turn-server`; killed on drop. Its log goes to a file that is printed when the
/// test fails.
pub struct TurnServer {
    child: Child,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    log_path: PathBuf,
}

impl TurnServer {
    /// Starts `turn-server` on a free loopback port with `--relay-ip 127.0.0.1` and the
    /// given extra arguments, and waits until `/healthz` answers 200.
    pub fn start(extra_args: &[&str]) -> TurnServer {
        let bin = workspace_bin("turn-server");
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log_path = std::env::temp_dir().join(format!(
            "turnkey-test-turn-server-{}-{}.log",
            std::process::id(),
            listen.port()
        ));
        let log = File::create(&log_path).expect("create server log file");
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .args(["--relay-ip", "127.0.0.1"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            // Only the users and secrets given here.
            .env_remove("TURNKEY_USERS")
            .env_remove("TURNKEY_AUTH_SECRETS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut server = TurnServer {
            child,
            listen,
            metrics,
            log_path,
        };
        server.wait_healthy(Duration::from_secs(20));
        server
    }

    fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "turn-server exited before it was ready ({status}); log:\n{}",
                    self.log()
                );
            }
            if let Ok((200, _)) = http_get(self.metrics, "/healthz") {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "turn-server /healthz on {} not ready after {limit:?}; log:\n{}",
                    self.metrics,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The sum of all samples of metric `name` (any labels) whose labels contain every
    /// `key="value"` in `labels`.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (status, body) = http_get(self.metrics, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics answered {status}");
        metric_sum(&body, name, labels)
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- turn-server log ----\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log_path);
    }
}

/// Sums the samples of `name` in a Prometheus text exposition, filtered by label pairs.
pub fn metric_sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let wanted = labels
                .iter()
                .all(|l| label_text.split(',').any(|have| have.trim() == *l));
            wanted.then(|| value.trim().parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A blocking HTTP/1.0 GET with short timeouts; returns the status and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed HTTP status line"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// What a child process left behind.
pub struct Finished {
    /// `None` when it was killed at the time limit.
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion. If it outlives `limit` it gets SIGTERM (so that, for example,
/// Playwright closes the browser it launched), then SIGKILL 5 s later.
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Finished {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                let grace = Instant::now() + Duration::from_secs(5);
                while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Finished {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}
