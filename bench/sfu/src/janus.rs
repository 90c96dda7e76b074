//! The anchor server: Janus (the `janus` binary, Debian's package) as a child process, with a
//! configuration the bench writes into a temporary folder: the VideoRoom plugin and the
//! WebSocket transport only (every other plugin, transport, event handler and logger disabled),
//! the API on 127.0.0.1, no STUN or TURN server, ICE candidates on one address only.
//!
//! Janus never gathers on a loopback interface (its `janus_ice_setup_local` skips interfaces
//! flagged IFF_LOOPBACK before looking at `ice_enforce_list`), so its media cannot be on
//! 127.0.0.1. It gets the machine's own address instead (`ice_enforce_list` = that address):
//! Linux delivers datagrams between two local addresses through the loopback device all the
//! same, so nothing leaves the machine.

use crate::node::{free_tcp_port, stop_child, wait_listening};
use anyhow::Context as _;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `janus` child.
pub struct JanusNode {
    child: Child,
    /// Janus API over WebSocket (`ws://API`, subprotocol `janus-protocol`).
    pub api: SocketAddr,
    /// Where its log goes.
    pub log: PathBuf,
    /// The configuration folder (removed on stop).
    dir: PathBuf,
}

/// How to start it.
pub struct JanusConfig<'a> {
    /// The `janus` binary.
    pub bin: &'a Path,
    /// Folder holding Janus's `plugins`, `transports`, `events` and `loggers` folders
    /// (Debian: /usr/lib/<triplet>/janus).
    pub lib_dir: &'a Path,
    /// The one address of its ICE candidates (not a loopback one: Janus skips those).
    pub host_ip: IpAddr,
    /// `event_loops` (0: Janus's default, one thread per handle).
    pub event_loops: usize,
}

/// The folder of Janus's plugin folders: the first `/usr/lib/*/janus` (or /usr/local/lib/janus,
/// /opt/janus/lib/janus) that has the VideoRoom plugin.
pub fn find_lib_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .map(|d| d.flatten().map(|e| e.path().join("janus")).collect())
        .unwrap_or_default();
    candidates.sort();
    candidates.push("/usr/lib/janus".into());
    candidates.push("/usr/local/lib/janus".into());
    candidates.push("/opt/janus/lib/janus".into());
    candidates
        .into_iter()
        .find(|d| d.join("plugins/libjanus_videoroom.so").is_file())
        .context("no Janus VideoRoom plugin (libjanus_videoroom.so) under /usr/lib/*/janus, /usr/local/lib/janus or /opt/janus/lib/janus; apt-get install janus")
}

/// The first IPv4 address of an interface that is up and not a loopback one.
pub fn first_host_ipv4() -> anyhow::Result<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    for ifa in nix::ifaddrs::getifaddrs()? {
        if ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK)
            || !ifa.flags.contains(InterfaceFlags::IFF_UP)
        {
            continue;
        }
        if let Some(a) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(IpAddr::V4(a.ip()));
        }
    }
    anyhow::bail!("no IPv4 address on an interface other than loopback (Janus needs one for ICE)")
}

/// The `.so` files of `dir` other than `keep`, comma-separated (a `disable` list).
fn others(dir: &Path, keep: &str) -> String {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".so") && n != keep)
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.join(",")
}

/// `janus.jcfg`, `janus.transport.websockets.jcfg` and `janus.plugin.videoroom.jcfg`.
fn write_config(dir: &Path, c: &JanusConfig<'_>, api: SocketAddr) -> anyhow::Result<()> {
    let lib = c.lib_dir;
    let mut core = String::new();
    let _ = writeln!(core, "general: {{");
    let _ = writeln!(core, "\tconfigs_folder = \"{}\"", dir.display());
    for f in ["plugins", "transports", "events", "loggers"] {
        let _ = writeln!(core, "\t{f}_folder = \"{}\"", lib.join(f).display());
    }
    let _ = writeln!(core, "\tdebug_level = 3");
    let _ = writeln!(core, "\tsession_timeout = 60");
    let _ = writeln!(core, "\thide_dependencies = true");
    if c.event_loops > 0 {
        let _ = writeln!(core, "\tevent_loops = {}", c.event_loops);
    }
    let _ = writeln!(core, "}}");
    let _ = writeln!(core, "media: {{\n\tipv6 = false\n}}");
    let _ = writeln!(
        core,
        "nat: {{\n\tnice_debug = false\n\tice_enforce_list = \"{}\"\n\tignore_mdns = true\n}}",
        c.host_ip
    );
    for (section, folder, keep) in [
        ("plugins", "plugins", "libjanus_videoroom.so"),
        ("transports", "transports", "libjanus_websockets.so"),
        ("events", "events", ""),
        ("loggers", "loggers", ""),
    ] {
        let _ = writeln!(
            core,
            "{section}: {{\n\tdisable = \"{}\"\n}}",
            others(&lib.join(folder), keep)
        );
    }
    std::fs::write(dir.join("janus.jcfg"), core)?;
    std::fs::write(
        dir.join("janus.transport.websockets.jcfg"),
        format!(
            "general: {{\n\tjson = \"compact\"\n\tws = true\n\tws_port = {}\n\tws_ip = \"{}\"\n\twss = false\n}}\n\
             admin: {{\n\tadmin_ws = false\n\tadmin_wss = false\n}}\n",
            api.port(),
            api.ip()
        ),
    )?;
    std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), "general: {\n}\n")?;
    Ok(())
}

impl JanusNode {
    /// Writes the configuration, starts `janus -F DIR` and waits until its API port accepts.
    pub fn start(c: &JanusConfig<'_>) -> anyhow::Result<Self> {
        let api = free_tcp_port()?;
        let tag = std::process::id();
        let dir = std::env::temp_dir().join(format!("sfu-bench-janus-{tag}"));
        std::fs::create_dir_all(&dir).context("janus config folder")?;
        if let Err(e) = write_config(&dir, c, api) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.context("writing the janus config"));
        }
        let log = std::env::temp_dir().join(format!("sfu-bench-janus-{tag}.log"));
        let log_file = std::fs::File::create(&log).context("janus log file")?;
        let child = Command::new(c.bin)
            .arg("-F")
            .arg(&dir)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("--disable-colors")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).with_context(|| format!("starting {}", c.bin.display()));
            }
        };
        let mut node = Self {
            child,
            api,
            log,
            dir,
        };
        if let Err(e) = wait_listening(&mut node.child, api, "janus", &node.log) {
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

    /// SIGTERM, then SIGKILL after 5 s; removes the configuration folder.
    pub fn stop(self) {
        stop_child(self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
