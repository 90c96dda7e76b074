//! The SFU under test: the `sfu` binary as a child process on loopback, so its CPU time and
//! memory can be read from /proc apart from the bench's own.

use anyhow::{bail, Context as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sfu` child.
pub struct SfuNode {
    child: Child,
    /// Link listener (`ws://LINK/v1/signal`).
    pub link: SocketAddr,
    /// Its `/metrics` listener.
    pub metrics: SocketAddr,
    /// Where its log goes.
    pub log: PathBuf,
    /// The address its media sockets are on (and the clients' must be).
    pub host_ip: std::net::IpAddr,
}

/// How to start it.
pub struct NodeConfig<'a> {
    /// Binary.
    pub bin: &'a Path,
    /// Worker event loops (UDP ports).
    pub workers: usize,
    /// Link secret.
    pub secret: &'a str,
    /// More flags, after the ones above.
    pub args: &'a [String],
    /// `--max-participants`.
    pub max_participants: usize,
    /// Address of the media ports (`--media-listen`), also the one in its ICE candidates.
    pub host_ip: IpAddr,
}

impl SfuNode {
    /// Starts the node on free loopback ports and waits until its link listener accepts.
    pub fn start(c: &NodeConfig<'_>) -> anyhow::Result<Self> {
        let media = free_udp_range(c.host_ip, c.workers)?;
        let link = free_tcp_port()?;
        let metrics = free_tcp_port()?;
        let log = std::env::temp_dir().join(format!("sfu-bench-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).context("sfu log file")?;
        let child = Command::new(c.bin)
            .arg("--workers")
            .arg(c.workers.to_string())
            .arg("--media-listen")
            .arg(media.to_string())
            .arg("--link-listen")
            .arg(link.to_string())
            .arg("--metrics")
            .arg(metrics.to_string())
            .arg("--max-participants")
            .arg(c.max_participants.to_string())
            .arg("--no-ice-tcp")
            .args(c.args)
            .env("TURNKEY_SFU_SECRET", c.secret)
            .env(
                "RUST_LOG",
                std::env::var("SFU_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", c.bin.display()))?;
        let mut node = Self {
            child,
            link,
            metrics,
            log,
            host_ip: c.host_ip,
        };
        if let Err(e) = wait_listening(&mut node.child, link, "sfu", &node.log) {
            node.stop();
            return Err(e);
        }
        Ok(node)
    }

    /// Process id, as /proc names it.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// True while the child runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(self) {
        stop_child(self.child);
    }
}

/// Waits until `child` (a server called `what`, logging to `log`) accepts TCP connections on
/// `addr`; an error if it exits first or takes over 15 s.
pub fn wait_listening(
    child: &mut Child,
    addr: SocketAddr,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited ({status}); see {}", log.display());
        }
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("{what}: {addr} not ready after 15 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// SIGTERM to a server child, then SIGKILL if it has not exited after 5 s.
pub fn stop_child(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// An address on `ip` whose port and the `n - 1` following ones are free for UDP.
fn free_udp_range(ip: IpAddr, n: usize) -> anyhow::Result<SocketAddr> {
    for _ in 0..50 {
        let first = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let base = first.local_addr()?;
        if usize::from(base.port()) + n > 65_535 {
            continue;
        }
        let rest: Result<Vec<_>, _> = (1..n)
            .map(|i| UdpSocket::bind(SocketAddr::new(base.ip(), base.port() + i as u16)))
            .collect();
        if rest.is_ok() {
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free UDP ports on {ip}")
}
