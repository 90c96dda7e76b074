//! Shared helpers for the integration tests that run the real binaries (`turn-server`,
//! `stun-server`, `turnkey`) as child processes and talk to them with real clients.
//!
//! Use it from a test file with `mod common;`. What is here:
//! - [`bin_path`]: the path of an executable of bin/ (`CARGO_BIN_EXE_*`: cargo builds them before
//!   the tests, so it is never stale).
//! - [`free_udp_tcp_port`], [`free_udp_tcp_port_pair`]: loopback ports free for UDP and TCP.
//! - [`ServerGuard`]: a server child process that is ready (`/healthz` answers 200) when
//!   returned, logs to a temporary file (printed if the test fails) and is killed on drop.
//! - [`ChildGuard`], [`run_with_timeout`]: other child processes with bounded lifetimes.
//! - [`http_get`], [`scrape_metrics`], [`metric_value`]: reading `/metrics`.
//! - [`require_tool`]: finds an external tool (e.g. coturn's `turnutils_uclient`) on `PATH`.
//! - [`aiortc_python`]: the Python interpreter with aiortc for `tests/aiortc`.
//! - [`AdminTurn`], [`admin_call`]: a `turn-server` with its admin API on, and calls to that API.
//! - [`RedisGuard`]: a throwaway `redis-server` on a free loopback port, no persistence.
//! - [`natlab`]: a NAT lab of network namespaces (public host, NAT routers of each RFC 4787
//!   behaviour, clients) for tests/nat_lab.rs; [`netns`]: one namespace linked to the host.
//! - [`tls`]: self-signed test certificates and a TLS client that accepts any certificate.
//!
//! Everything binds to loopback only. Nothing here sleeps for a fixed time to "let things
//! settle"; waits poll a condition with a deadline.
#![allow(dead_code)]

pub mod natlab;
pub mod netns;
pub mod tls;

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The loopback address every test listens on.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How long a server gets to answer `/healthz` after it was spawned.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Default upper bound on the run time of an external client tool.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// The repository root (these tests are targets of the `bin/` package, `turnkey-bin`).
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Path of the executable `name` (`turnkey`, `stun-server`, `turn-server`, `signaling`, `sfu`,
/// `turn-bench`, `signaling-bench`, `sfu-bench`): `CARGO_BIN_EXE_<name>`, which cargo sets for
/// the tests of the package declaring the binaries (bin/Cargo.toml) after building them, so it
/// is never stale and no test builds anything.
///
/// Panics on a name that is not one of those executables.
pub fn bin_path(name: &str) -> PathBuf {
    let path = match name {
        "turnkey" => env!("CARGO_BIN_EXE_turnkey"),
        "stun-server" => env!("CARGO_BIN_EXE_stun-server"),
        "turn-server" => env!("CARGO_BIN_EXE_turn-server"),
        "signaling" => env!("CARGO_BIN_EXE_signaling"),
        "sfu" => env!("CARGO_BIN_EXE_sfu"),
        "turn-bench" => env!("CARGO_BIN_EXE_turn-bench"),
        "signaling-bench" => env!("CARGO_BIN_EXE_signaling-bench"),
        "sfu-bench" => env!("CARGO_BIN_EXE_sfu-bench"),
        other => panic!("{other} is not an executable of bin/Cargo.toml"),
    };
    PathBuf::from(path)
}

/// `tests/browser`: the Node scripts that drive Chromium, and their `node_modules`.
pub fn browser_dir() -> PathBuf {
    Path::new(ROOT).join("tests/browser")
}

/// Checks what the browser tests need is installed (Chromium, `playwright-core`, Node.js),
/// panicking with the fix if not: the test command installs them, so a browser test fails
/// rather than skips. Returns the Chromium path (`CHROMIUM` or /usr/bin/chromium).
pub fn browser_prerequisites() -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "{} not found: install Debian's chromium (apt-get install chromium) or set CHROMIUM",
        chromium.display()
    );
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        playwright.is_file(),
        "{} not found: run `npm ci` in {}",
        playwright.display(),
        browser_dir().display()
    );
    let node = Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(out) if out.status.success()),
        "`node --version` failed ({node:?}): install Node.js 20 or newer"
    );
    chromium
}

/// Runs one of the `tests/browser` scripts (`cmd`, killed after `limit`), requires exit 0, and
/// returns the JSON of its `RESULT ` line together with a report of its output for assertion
/// messages. `what` names the run in that report.
pub fn run_browser_script(
    cmd: &mut Command,
    limit: Duration,
    what: &str,
) -> (serde_json::Value, String) {
    let run = run_with_timeout(cmd, limit);
    let report = format!(
        "{what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    let Some(status) = run.status else {
        panic!("killed after {limit:?}: {report}");
    };
    assert!(status.success(), "failed ({status}): {report}");
    let line = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line: {report}"));
    let result =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bad RESULT JSON ({e}): {report}"));
    (result, report)
}

/// The Python interpreter with aiortc and websockets, for the scripts in `tests/aiortc`:
/// `TURNKEY_PYTHON`, else a venv where `scripts/test.sh` puts it (`/opt/turnkey-venv`,
/// `~/.cache/turnkey-venv`). Panics with the fix if none can import aiortc and websockets.
pub fn aiortc_python() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("TURNKEY_PYTHON") {
        candidates.push(p.into());
    } else {
        candidates.push("/opt/turnkey-venv/bin/python".into());
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(Path::new(&home).join(".cache/turnkey-venv/bin/python"));
        }
    }
    let mut tried = Vec::new();
    for python in candidates {
        let out = Command::new(&python)
            .args(["-c", "import aiortc, websockets"])
            .output();
        match out {
            Ok(out) if out.status.success() => return python,
            Ok(out) => tried.push(format!(
                "{}: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or_default()
            )),
            Err(e) => tried.push(format!("{}: {e}", python.display())),
        }
    }
    panic!(
        "no Python with aiortc and websockets ({}): run `bash scripts/test.sh`, which installs \
         them in a venv and exports TURNKEY_PYTHON, or set TURNKEY_PYTHON to such a python",
        tried.join("; ")
    );
}

/// Finds an external program on `PATH` and panics with a hint when it is missing.
/// The coturn tools (`turnutils_uclient`, `turnutils_peer`, `turnutils_stunclient`,
/// `turnutils_natdiscovery`) come from Debian's `coturn` package, which
/// `bash scripts/test.sh` installs.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` not found on PATH; run `bash scripts/test.sh` (it installs coturn's tools)");
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Ports already handed out in this process, so that parallel tests never get the same one
/// (the kernel may give a just-released ephemeral port out again).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn claim(ports: &[u16]) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    if ports.iter().any(|p| set.contains(p)) {
        return false;
    }
    set.extend(ports.iter().copied());
    true
}

/// True if `port` can be bound right now for UDP and for TCP on every IP in `ips`.
fn is_free(ips: &[IpAddr], port: u16) -> bool {
    ips.iter()
        .all(|ip| UdpSocket::bind((*ip, port)).is_ok() && TcpListener::bind((*ip, port)).is_ok())
}

/// Ports the tests hand out: below Linux's ephemeral range (32768-60999) and below the
/// servers' default relay range (49152-65535), so neither a client socket the kernel places nor
/// a relay socket of a server started by a parallel test can take a port between the moment it
/// is handed out and the moment the server binds it.
const TEST_PORTS: std::ops::Range<u16> = 20000..32000;

/// Candidate ports from [`TEST_PORTS`], starting at a per-process pseudo-random offset so two
/// test binaries running at once rarely probe the same ports.
fn candidate_ports() -> impl Iterator<Item = u16> {
    let span = (TEST_PORTS.end - TEST_PORTS.start) as u32;
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(now_ns);
    (0..span).map(move |i| TEST_PORTS.start + ((seed.wrapping_add(i * 7919)) % span) as u16)
}

/// A port on 127.0.0.1 that is free for both UDP and TCP, and not handed out before by this
/// process. Another process could still take it before the caller binds it; ports come from
/// [`TEST_PORTS`], which nothing else here allocates from.
pub fn free_udp_tcp_port() -> u16 {
    free_udp_tcp_port_on(&[LOCALHOST])
}

/// Like [`free_udp_tcp_port`], but free on every IP in `ips` (e.g. `127.0.0.1` and
/// `127.0.0.2` for an RFC 5780 server).
pub fn free_udp_tcp_port_on(ips: &[IpAddr]) -> u16 {
    for port in candidate_ports() {
        if is_free(ips, port) && claim(&[port]) {
            return port;
        }
    }
    panic!("no free UDP+TCP port on {ips:?}");
}

/// A port `p` such that `p` and `p + 1` are both free for UDP and TCP on every IP in `ips`
/// (for `stun-server --alt-ip`, whose alternate port defaults to the listen port + 1).
pub fn free_udp_tcp_port_pair(ips: &[IpAddr]) -> u16 {
    for port in candidate_ports() {
        if port + 1 < TEST_PORTS.end
            && is_free(ips, port)
            && is_free(ips, port + 1)
            && claim(&[port, port + 1])
        {
            return port;
        }
    }
    panic!("no free UDP+TCP port pair on {ips:?}");
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

static LOG_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh path in the temporary directory for a child's log: `turnkey-test-<pid>-<n>-<name>.log`.
pub fn temp_log_path(name: &str) -> PathBuf {
    let n = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::env::temp_dir().join(format!(
        "turnkey-test-{}-{n}-{safe}.log",
        std::process::id()
    ))
}

/// The last `max_lines` lines of the file at `path` (empty if unreadable).
fn tail(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// Waits until the server `child` (described by `what` in failures) answers
/// `GET http://{metrics}/healthz` with 200, for at most [`READY_TIMEOUT`]; panics with its log
/// when it exits first or does not answer in time.
pub fn wait_healthy(child: &mut ChildGuard, what: &str, metrics: SocketAddr) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait() {
            panic!(
                "{what} exited before it was ready ({status}); its log:\n{}",
                child.log()
            );
        }
        if matches!(http_get(metrics, "/healthz"), Ok((200, _))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer GET http://{metrics}/healthz within {READY_TIMEOUT:?}; its log:\n{}",
            child.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A long-running child process (e.g. `turnutils_peer`) with stdout and stderr in a log file.
/// Killed on drop; if the test is failing, the end of its log is printed to stderr.
pub struct ChildGuard {
    child: Child,
    name: String,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to a temporary log file.
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let log_path = temp_log_path(name);
        let log = File::create(&log_path).expect("create child log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_string(),
            log_path,
        }
    }

    /// Process id of the child.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `Some(status)` if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- last lines of {} (pid {}, log {}) ----\n{}\n---- end of {} ----",
                self.name,
                self.child.id(),
                self.log_path.display(),
                tail(&self.log_path, 80),
                self.name
            );
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

/// What a bounded run of a child process produced.
#[derive(Debug)]
pub struct ToolOutput {
    /// Exit status; `None` if it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// How long it ran.
    pub elapsed: Duration,
}

impl ToolOutput {
    /// True if the process exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// True if the process was killed at the deadline.
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    /// stdout followed by stderr.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion with stdin closed, killing it if it is still running after
/// `timeout`. stdout and stderr go through temporary files, so a chatty child never blocks on a
/// full pipe.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> ToolOutput {
    let out_path = temp_log_path("stdout");
    let err_path = temp_log_path("stderr");
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break Some(status),
            None if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let elapsed = start.elapsed();
    let read = |p: &Path| {
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(p) {
            let _ = f.read_to_end(&mut bytes);
        }
        let _ = std::fs::remove_file(p);
        String::from_utf8_lossy(&bytes).into_owned()
    };
    ToolOutput {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
        elapsed,
    }
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// A `signaling` process listening on a free loopback port.
pub struct Signaling {
    pub guard: ServerGuard,
    /// Its HTTP/WebSocket address.
    pub http: SocketAddr,
}

impl Signaling {
    /// Starts `signaling --listen <free port>` followed by `args`. Tried again with a new port
    /// if the port was taken between finding it free and the server binding it (parallel
    /// tests open many client sockets on ephemeral ports).
    pub fn start(args: &[String]) -> Signaling {
        let once = || {
            let http = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
            let mut all = vec!["--listen".to_string(), http.to_string()];
            all.extend_from_slice(args);
            Signaling {
                guard: ServerGuard::start("signaling", &all),
                http,
            }
        };
        for _ in 0..2 {
            if let Ok(sig) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(once)) {
                return sig;
            }
        }
        once()
    }
}

/// The HTTP Basic `Authorization` header value for `user_pass` ("user:password").
pub fn basic_auth(user_pass: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

/// One of our servers running as a child process. [`ServerGuard::start`] returns once
/// `GET /healthz` on its metrics listener answers 200 (every server binds its client listeners
/// before its metrics listener, see docs/CONTRACT.md). Killed on drop; if the test is failing,
/// the end of the server's log (stderr) is printed.
pub struct ServerGuard {
    child: ChildGuard,
    /// The `--metrics` address given to the server.
    pub metrics: SocketAddr,
}

impl ServerGuard {
    /// Spawns workspace binary `bin` with `args` plus `--metrics 127.0.0.1:<free port>` and
    /// waits for it to be ready. `args` must not contain `--metrics`. `RUST_LOG` is passed
    /// through (default `info`).
    pub fn start<S: AsRef<str>>(bin: &str, args: &[S]) -> ServerGuard {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        assert!(
            !args.contains(&"--metrics"),
            "ServerGuard::start adds --metrics itself"
        );
        let metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let path = bin_path(bin);
        let mut cmd = Command::new(&path);
        cmd.args(&args).arg("--metrics").arg(metrics.to_string());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = ChildGuard::spawn(bin, &mut cmd);
        wait_healthy(&mut child, &format!("{bin} {}", args.join(" ")), metrics);
        ServerGuard { child, metrics }
    }

    /// Starts `turn-server` with `args` (plus `--metrics`).
    pub fn turn_server<S: AsRef<str>>(args: &[S]) -> ServerGuard {
        ServerGuard::start("turn-server", args)
    }

    /// Starts `stun-server` with `args` (plus `--metrics`).
    pub fn stun_server<S: AsRef<str>>(args: &[S]) -> ServerGuard {
        ServerGuard::start("stun-server", args)
    }

    /// The server's log (stderr and stdout) so far.
    pub fn log(&self) -> String {
        self.child.log()
    }

    /// Process id of the server.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the server has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait()
    }

    /// The current `/metrics` text; panics if it cannot be fetched.
    pub fn scrape_metrics(&self) -> String {
        scrape_metrics(self.metrics)
    }

    /// The current value of metric `name` summed over the series whose labels include all of
    /// `labels`, or 0 if there is no such series (a labelled counter that never moved is not
    /// exported at all).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.scrape_metrics(), name, labels).unwrap_or(0.0)
    }
}

// ---------------------------------------------------------------------------------------------
// turn-server's admin API
// ---------------------------------------------------------------------------------------------

/// One call of turn-server's admin API listening on `admin`: `method` on `path` (with its query)
/// with `Authorization: Bearer <token>` (none without `token`) and `body` sent as JSON. Returns
/// the status and the JSON answer; panics when the call fails or the answer is not JSON (every
/// answer of the admin API is, errors included).
pub fn admin_call(
    admin: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{admin}{path}");
    let auth = token.map(|t| format!("Bearer {t}"));
    let with_auth = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &auth {
        Some(a) => r.header("Authorization", a),
        None => r,
    };
    let with_auth_body = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        let r = r.header("Content-Type", "application/json");
        match &auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        }
    };
    let body = body.unwrap_or("");
    let res = match method {
        "GET" => with_auth(agent.get(&url)).call(),
        "DELETE" => with_auth(agent.delete(&url)).call(),
        "POST" => with_auth_body(agent.post(&url)).send(body),
        "PUT" => with_auth_body(agent.put(&url)).send(body),
        "PATCH" => with_auth_body(agent.patch(&url)).send(body),
        other => panic!("admin_call: unsupported method {other}"),
    };
    let mut res = res.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string().unwrap_or_default();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: {status} not JSON ({e}): {text:?}"));
    (status, v)
}

/// A `turn-server` on 127.0.0.1 with its admin API on (bearer `token`): relay address
/// 127.0.0.1, relay ports 61000-65535 (above Linux's ephemeral range, where the tests' peer
/// ports come from: the server refuses its own relay range as peers), peers on 127.0.0.1
/// allowed, two workers, plus `extra` (users, caps...).
pub struct AdminTurn {
    pub guard: ServerGuard,
    /// The TURN listener (UDP and TCP).
    pub listen: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
    pub token: String,
}

impl AdminTurn {
    pub fn start(token: &str, extra: &[&str]) -> AdminTurn {
        let listen = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let admin = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let mut args: Vec<String> = [
            "--listen",
            &listen.to_string(),
            "--relay-ip",
            "127.0.0.1",
            "--allow-peer",
            "127.0.0.1/32",
            "--min-port",
            "61000",
            "--max-port",
            "65535",
            "--workers",
            "2",
            "--admin-listen",
            &admin.to_string(),
            "--admin-token",
            token,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        AdminTurn {
            guard: ServerGuard::turn_server(&args),
            listen,
            admin,
            token: token.to_string(),
        }
    }

    /// [`admin_call`] with the server's token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        admin_call(self.admin, Some(&self.token), method, path, body)
    }

    /// The value of metric `name` over the series with `labels` (None: no such series).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.guard.scrape_metrics(), name, labels)
    }
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// A throwaway Redis server (Debian's `redis-server`, which `bash scripts/test.sh` installs) on
/// `127.0.0.1:<free port>`, never the default 6379, with no disk persistence (`--save ""`,
/// `--appendonly no`). [`RedisGuard::start`] returns once it answers `PING`; killed on drop,
/// its log printed if the test is failing.
pub struct RedisGuard {
    child: ChildGuard,
    /// The TCP port it listens on.
    pub port: u16,
}

impl RedisGuard {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> RedisGuard {
        RedisGuard::start_on(free_udp_tcp_port())
    }

    /// Starts a server on `port` (e.g. again on the port of one that was dropped, to test
    /// reconnection) and waits until it answers `PING`.
    pub fn start_on(port: u16) -> RedisGuard {
        let bin = require_tool("redis-server");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(std::env::temp_dir());
        let mut child = ChildGuard::spawn("redis-server", &mut cmd);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait() {
                panic!(
                    "redis-server on port {port} exited before it was ready ({status}); its log:\n{}",
                    child.log()
                );
            }
            if redis_ping(SocketAddr::new(LOCALHOST, port)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on 127.0.0.1:{port} within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisGuard { child, port }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A one-worker runtime and a connection to this server through the registry's own store,
    /// to read what the nodes wrote (registry entries, rooms) as they read it.
    pub fn store(&self) -> (tokio::runtime::Runtime, registry::redis::RedisStore) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let store = rt
            .block_on(registry::redis::RedisStore::connect(&self.url()))
            .expect("connect to the store");
        (rt, store)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(LOCALHOST, self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.child.log()
    }
}

/// True if a Redis server at `addr` answers `PING` with `+PONG` (raw RESP over TCP, 1 s
/// timeouts).
pub fn redis_ping(addr: SocketAddr) -> bool {
    let timeout = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

// ---------------------------------------------------------------------------------------------
// HTTP and metrics
// ---------------------------------------------------------------------------------------------

/// A plain HTTP/1.0 `GET path` to `addr` (std only, 5 s timeouts). Returns the status code and
/// the body (chunked bodies are decoded).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP header"))?;
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad HTTP status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        decode_chunked(body).ok_or_else(|| bad("bad chunked body"))?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn decode_chunked(mut rest: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// `GET http://addr/metrics`; panics unless it answers 200.
pub fn scrape_metrics(addr: SocketAddr) -> String {
    match http_get(addr, "/metrics") {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET http://{addr}/metrics: status {status}: {body}"),
        Err(e) => panic!("GET http://{addr}/metrics: {e}"),
    }
}

/// One sample line of the Prometheus text format: `name{l1="v1",l2="v2"} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses one sample line; `None` for comments, blank lines and lines it does not understand.
pub fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // A quoted value with \\, \" and \n escapes.
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &after[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// All samples in a `/metrics` text.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

/// The value of metric `name` (exact sample name, e.g. `turn_relayed_packets_total`) summed
/// over every series whose labels include all of `labels`; `None` if no series matches.
/// With `labels` empty this is the total over all series of `name`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_metrics(text)
        .into_iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// [`metric_value`] of the `/metrics` served at `addr`, 0 when no series matches.
pub fn metric_at(addr: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(&scrape_metrics(addr), name, labels).unwrap_or(0.0)
}

/// The SFU's direct send at metrics listener `addr` (`sfu_proto::direct`): subscribe PCs
/// engaged and refused (`sfu_direct_send_total{result}`) and packets sent
/// (`sfu_direct_packets_total`).
#[allow(dead_code)] // not every test binary uses it
pub fn direct_send(addr: SocketAddr) -> (f64, f64, f64) {
    let page = scrape_metrics(addr);
    let get =
        |name: &str, labels: &[(&str, &str)]| metric_value(&page, name, labels).unwrap_or(0.0);
    (
        get("sfu_direct_send_total", &[("result", "engaged")]),
        get("sfu_direct_send_total", &[("result", "refused")]),
        get("sfu_direct_packets_total", &[]),
    )
}

/// The SFU's direct receive at metrics listener `addr` (`sfu_proto::direct::Opening`): publish
/// PCs engaged and refused (`sfu_direct_receive_total{result}`) and packets opened
/// (`sfu_direct_received_packets_total`).
#[allow(dead_code)] // not every test binary uses it
pub fn direct_receive(addr: SocketAddr) -> (f64, f64, f64) {
    let page = scrape_metrics(addr);
    let get =
        |name: &str, labels: &[(&str, &str)]| metric_value(&page, name, labels).unwrap_or(0.0);
    (
        get("sfu_direct_receive_total", &[("result", "engaged")]),
        get("sfu_direct_receive_total", &[("result", "refused")]),
        get("sfu_direct_received_packets_total", &[]),
    )
}

/// The SFU's direct read of subscribers' SRTCP at metrics listener `addr`
/// (`sfu_proto::direct::RtcpOpening`): subscribe PCs engaged and refused
/// (`sfu_direct_rtcp_total{result}`) and compound packets opened
/// (`sfu_direct_rtcp_packets_total`).
#[allow(dead_code)] // not every test binary uses it
pub fn direct_rtcp(addr: SocketAddr) -> (f64, f64, f64) {
    let page = scrape_metrics(addr);
    let get =
        |name: &str, labels: &[(&str, &str)]| metric_value(&page, name, labels).unwrap_or(0.0);
    (
        get("sfu_direct_rtcp_total", &[("result", "engaged")]),
        get("sfu_direct_rtcp_total", &[("result", "refused")]),
        get("sfu_direct_rtcp_packets_total", &[]),
    )
}

/// SRTP/SRTCP datagrams the SFU at metrics listener `addr` kept from rtc
/// (`sfu_bad_input_total{kind="ssrc"}`: an SSRC beyond a PC's bound, or one rtc has not seen
/// that did not authenticate). Real clients never cause one.
#[allow(dead_code)] // not every test binary uses it
pub fn ssrc_refused(addr: SocketAddr) -> f64 {
    metric_value(
        &scrape_metrics(addr),
        "sfu_bad_input_total",
        &[("kind", "ssrc")],
    )
    .unwrap_or(0.0)
}

/// The `turnkey` binary (TURN + signaling + SFU in one process) on free loopback ports, with
/// relay ports 61000-62999 (above the ephemeral range), two SFU workers and the API key
/// `api_key`; `extra` flags are appended. Returns once the TURN and SFU metrics answer.
pub struct LocalSuite {
    /// The process (its `metrics` is the TURN metrics listener).
    pub guard: ServerGuard,
    /// TURN/STUN listener port (UDP and TCP) on 127.0.0.1.
    pub turn_port: u16,
    /// Signaling HTTP/WebSocket listener.
    pub http: SocketAddr,
    /// SFU metrics listener.
    pub sfu_metrics: SocketAddr,
    /// Signaling metrics listener.
    pub sig_metrics: SocketAddr,
    /// SFU media (UDP of worker 0, worker 1 on port + 1; ICE-TCP on the same port).
    pub sfu_media: SocketAddr,
}

impl LocalSuite {
    /// Starts it (see the type).
    pub fn start(api_key: &str, extra: &[&str]) -> LocalSuite {
        Self::start_with_sfu_ip(api_key, LOCALHOST, extra)
    }

    /// Starts it with the SFU's media (UDP and ICE-TCP) on `sfu_ip`: another loopback address
    /// stands for an SFU host next to the TURN server, which TURN may relay to when
    /// `--allow-peer` covers it (the suite's own ports on the TURN server's IP never are).
    pub fn start_with_sfu_ip(api_key: &str, sfu_ip: IpAddr, extra: &[&str]) -> LocalSuite {
        let turn_port = free_udp_tcp_port();
        let http = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let sig_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        // Two SFU workers: media on port and port + 1.
        let media_port = free_udp_tcp_port_pair(&[sfu_ip]);
        let link = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let sfu_metrics = SocketAddr::new(LOCALHOST, free_udp_tcp_port());
        let mut args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{turn_port}"),
            "--relay-ip",
            "127.0.0.1",
            "--min-port",
            "61000",
            "--max-port",
            "62999",
            "--api-key",
            api_key,
            "--signaling-listen",
            &http.to_string(),
            "--signaling-metrics",
            &sig_metrics.to_string(),
            "--sfu-media-listen",
            &SocketAddr::new(sfu_ip, media_port).to_string(),
            "--sfu-workers",
            "2",
            "--sfu-link-listen",
            &link.to_string(),
            "--sfu-metrics",
            &sfu_metrics.to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let guard = ServerGuard::start("turnkey", &args);
        // ServerGuard waited for the TURN metrics listener; the SFU starts alongside.
        assert!(
            wait_until(Duration::from_secs(10), || matches!(
                http_get(sfu_metrics, "/healthz"),
                Ok((200, _))
            )),
            "the SFU did not answer GET http://{sfu_metrics}/healthz"
        );
        LocalSuite {
            guard,
            turn_port,
            http,
            sfu_metrics,
            sig_metrics,
            sfu_media: SocketAddr::new(sfu_ip, media_port),
        }
    }
}

/// Polls `f` every 25 ms until it returns true or `timeout` passes; returns the last result.
/// For counters that are updated just after the packet that a client already saw.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Sends SIGHUP to process `pid` (a server under test); panics if it cannot be sent.
pub fn sighup(pid: u32) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("kill -HUP");
}

/// Starts coturn's `turnutils_peer` (a UDP echo) on 127.0.0.1 at a free port below `below` (and
/// with the next port free too, for uclient's RTCP peer) and waits until it echoes.
pub fn start_echo_peer(below: u16) -> (ChildGuard, u16) {
    let tool = require_tool("turnutils_peer");
    // The next port is claimed too: uclient sends its RTCP to it, and a suite port there (a
    // server's metrics listener, say) would be refused as a peer (403).
    let port = std::iter::repeat_with(|| free_udp_tcp_port_pair(&[LOCALHOST]))
        .find(|p| p + 1 < below)
        .expect("a free port below the relay range");
    let peer = ChildGuard::spawn(
        "turnutils_peer",
        Command::new(tool).args(["-L", "127.0.0.1", "-p", &port.to_string()]),
    );
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind probe");
    probe
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set_read_timeout");
    let echoes = wait_until(Duration::from_secs(10), || {
        let _ = probe.send_to(b"ping", ("127.0.0.1", port));
        let mut buf = [0u8; 16];
        matches!(probe.recv_from(&mut buf), Ok((4, _)) if &buf[..4] == b"ping")
    });
    assert!(echoes, "turnutils_peer on port {port} does not echo");
    (peer, port)
}

/// The field names of `struct FileConfig` in `<crate_dir>/src/config.rs` (relative to the
/// workspace root): the TOML keys a service accepts.
pub fn file_config_keys(crate_dir: &str) -> Vec<String> {
    let path = Path::new(ROOT).join(crate_dir).join("src/config.rs");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let start = text
        .find("struct FileConfig")
        .unwrap_or_else(|| panic!("{crate_dir}/src/config.rs has no struct FileConfig"));
    // The fields: from after the struct's opening brace to its closing one.
    let body = &text[start..];
    let body = &body[body.find('{').expect("FileConfig's opening brace") + 1..];
    let body = &body[..body.find("\n}").expect("end of FileConfig")];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let (name, _) = l.split_once(':')?;
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                .then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP turn_relayed_packets Packets relayed.\n\
        # TYPE turn_relayed_packets counter\n\
        turn_relayed_packets_total{direction=\"client_to_peer\"} 12\n\
        turn_relayed_packets_total{direction=\"peer_to_client\"} 10\n\
        turn_auth_failures_total{reason=\"bad \\\"integrity\\\"\",transport=\"udp\"} 2\n\
        turnkey_build_info{version=\"0.1.0\"} 1\n\
        turn_peer_denied_total 3 1700000000\n\
        # EOF\n";

    #[test]
    fn parses_samples_and_sums_series() {
        assert_eq!(
            metric_value(TEXT, "turn_relayed_packets_total", &[]),
            Some(22.0)
        );
        assert_eq!(
            metric_value(
                TEXT,
                "turn_relayed_packets_total",
                &[("direction", "peer_to_client")]
            ),
            Some(10.0)
        );
        assert_eq!(
            metric_value(
                TEXT,
                "turn_auth_failures_total",
                &[("reason", "bad \"integrity\"")]
            ),
            Some(2.0)
        );
        assert_eq!(metric_value(TEXT, "turn_peer_denied_total", &[]), Some(3.0));
        assert_eq!(metric_value(TEXT, "turn_relayed_packets", &[]), None);
        assert_eq!(
            metric_value(TEXT, "turn_relayed_packets_total", &[("direction", "x")]),
            None
        );
    }

    #[test]
    fn decodes_chunked_bodies() {
        assert_eq!(
            decode_chunked("4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n").as_deref(),
            Some("abcdefg")
        );
        assert_eq!(decode_chunked("zz\r\n"), None);
    }
}
