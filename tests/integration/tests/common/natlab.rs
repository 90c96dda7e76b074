//! A NAT lab a test builds for itself out of network namespaces, veth pairs and iptables, all in
//! the documentation ranges (RFC 5737), with no link to the host's own network:
//!
//! ```text
//!            "internet" 203.0.113.0/24 (a bridge in namespace <p>-inet)
//!   ┌──────────────┬────────────────────────┬────────────────────────┐
//!   public host    router 0 (WAN .20)       router 1 (WAN .21)       ...
//!   .10 and .11    LAN 198.51.100.1/28      LAN 198.51.100.17/28
//!   stun-server    │                        │
//!   turn-server    client 0 198.51.100.2    client 1 198.51.100.18
//!   signaling
//! ```
//!
//! Every site is one router namespace (NAT between its WAN on the internet bridge and its LAN)
//! and one client namespace behind it, the client alone on its /28. The routers have no route
//! beyond 203.0.113.0/24, so two clients can only reach each other through their NATs.
//! [`NatKind`] says which NAT behaviour (RFC 4787 terms) each router emulates, and how.
//!
//! [`Lab::create`] returns `Err(LabUnavailable)` only when `ip netns add` fails (not root, no
//! namespaces): that is the one case a test may skip. Any later failure panics. Dropping the
//! [`Lab`] kills the processes it started and deletes its namespaces (which deletes the veth
//! pairs and the bridge).

use super::{temp_log_path, ChildGuard};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// The public host's primary address (STUN, TURN, signaling).
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The public host's second address (RFC 5780 alternate address of `stun-server`).
pub const PUBLIC_ALT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// `stun-server` listens on this port of both public addresses, and on the next one.
pub const STUN_PORT: u16 = 3478;
/// `turn-server` listens on this port of [`PUBLIC_IP`] (UDP and TCP).
pub const TURN_PORT: u16 = 3480;
/// `turn-server --tls-listen` port, when it supports TLS.
pub const TURNS_PORT: u16 = 5349;
/// `signaling` HTTP and WebSocket port on [`PUBLIC_IP`].
pub const SIGNALING_PORT: u16 = 8080;
/// API key of the lab's signaling server.
pub const API_KEY: &str = "natlab:natlab-secret";
/// TURN REST secret shared by the lab's `turn-server` and `signaling`.
pub const TURN_SECRET: &str = "natlab-turn-secret";

/// The NAT behaviour a site's router emulates (RFC 4787 §4.1 mapping, §5 filtering). All use
/// Linux conntrack NAT (`MASQUERADE`) on the WAN side; the client is alone on its LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Endpoint-independent mapping and filtering ("full cone"). `MASQUERADE` keeps the source
    /// port when it is free, so one internal port gets one mapping whatever the destination
    /// (EIM); a `PREROUTING` rule DNATs every new inbound UDP flow to the client on the same
    /// port, so anyone can reach a mapping (EIF).
    EimEif,
    /// Endpoint-independent mapping, address-dependent filtering ("restricted cone"). Inbound
    /// UDP that no conntrack entry expects is DNATed to the client only if its source IP is one
    /// the client has sent UDP to (the `recent` match: the router records the destination IP of
    /// every forwarded outbound UDP packet). The record is per LAN, not per internal port:
    /// with one client and port-preserving mapping that is the same as RFC 4787's per-mapping
    /// rule, except that sending to IP Y from one port opens every mapping to Y.
    EimAdf,
    /// Endpoint-independent mapping, address-and-port-dependent filtering ("port-restricted
    /// cone"): plain `MASQUERADE`; conntrack lets in only replies from the exact address and
    /// port the client sent to.
    EimApdf,
    /// Address-and-port-dependent mapping and filtering ("symmetric"): `MASQUERADE
    /// --random-fully`, a new random external port for every new destination address and port.
    Symmetric,
    /// Plain `MASQUERADE` for TCP, and every forwarded UDP packet dropped (a network that
    /// blocks UDP).
    UdpBlocked,
}

impl NatKind {
    /// Every kind, in table order.
    pub const ALL: [NatKind; 5] = [
        NatKind::EimEif,
        NatKind::EimAdf,
        NatKind::EimApdf,
        NatKind::Symmetric,
        NatKind::UdpBlocked,
    ];

    /// Short label for tables and namespace names.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::EimEif => "EIM/EIF",
            NatKind::EimAdf => "EIM/ADF",
            NatKind::EimApdf => "EIM/APDF",
            NatKind::Symmetric => "symmetric",
            NatKind::UdpBlocked => "UDP-blocked",
        }
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a lab cannot be built on this machine (the only allowed reason to skip).
#[derive(Debug)]
pub struct LabUnavailable(pub String);

impl fmt::Display for LabUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot create network namespaces ({}); the NAT lab needs root and iproute2",
            self.0
        )
    }
}

/// One NAT router and the client behind it.
#[derive(Debug, Clone)]
pub struct Site {
    pub kind: NatKind,
    /// Router namespace.
    pub router: String,
    /// Client namespace.
    pub client: String,
    /// Router's WAN address on the internet segment.
    pub wan_ip: Ipv4Addr,
    /// Client's address on its LAN.
    pub client_ip: Ipv4Addr,
}

/// Runs a command, returning its stdout, or Err with the command line and its stderr.
pub fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) -> String {
    run(args).unwrap_or_else(|e| panic!("NAT lab setup: {e}"))
}

/// A command that runs `program` inside namespace `ns` (`ip netns exec`, which execs the
/// program, so the child's pid is the program's).
pub fn command_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// The lab: namespaces, links, NAT rules, and the processes started in it.
pub struct Lab {
    /// Prefix of every namespace name of this lab.
    pub prefix: String,
    /// Namespace holding the internet bridge.
    pub inet: String,
    /// The public host's namespace.
    pub public: String,
    /// The sites, in the order given to [`Lab::create`].
    pub sites: Vec<Site>,
    namespaces: Vec<String>,
    children: Vec<ChildGuard>,
}

impl Lab {
    /// Builds the internet segment, the public host (203.0.113.10 and .11) and one site per
    /// entry of `kinds` (router WAN 203.0.113.(20+i), LAN 198.51.100.(16i)/28, client .16i+2).
    pub fn create(kinds: &[NatKind]) -> Result<Lab, LabUnavailable> {
        assert!(kinds.len() <= 16, "at most 16 sites");
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("tknat{}-{n}", std::process::id());
        let inet = format!("{prefix}-inet");
        // Leftovers of a killed earlier run with the same pid.
        remove_namespaces_with_prefix(&prefix);
        if let Err(e) = run(&["ip", "netns", "add", &inet]) {
            return Err(LabUnavailable(e));
        }
        let mut lab = Lab {
            prefix: prefix.clone(),
            inet: inet.clone(),
            public: format!("{prefix}-pub"),
            sites: Vec::new(),
            namespaces: vec![inet.clone()],
            children: Vec::new(),
        };
        lab.netns_exec(&inet, &["ip", "link", "set", "lo", "up"]);
        lab.netns_exec(&inet, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.netns_exec(&inet, &["ip", "link", "set", "br0", "up"]);

        let public = lab.public.clone();
        lab.add_namespace(&public);
        lab.attach_to_internet(&public, 0);
        for ip in [PUBLIC_IP, PUBLIC_ALT_IP] {
            lab.netns_exec(
                &public,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "wan"],
            );
        }

        for (i, &kind) in kinds.iter().enumerate() {
            let site = Site {
                kind,
                router: format!("{prefix}-r{i}"),
                client: format!("{prefix}-c{i}"),
                wan_ip: Ipv4Addr::new(203, 0, 113, 20 + i as u8),
                client_ip: Ipv4Addr::new(198, 51, 100, 16 * i as u8 + 2),
            };
            let lan_router_ip = Ipv4Addr::new(198, 51, 100, 16 * i as u8 + 1);
            lab.add_namespace(&site.router);
            lab.add_namespace(&site.client);
            lab.attach_to_internet(&site.router, i + 1);
            let r = site.router.as_str();
            let c = site.client.as_str();
            lab.netns_exec(
                r,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", site.wan_ip),
                    "dev",
                    "wan",
                ],
            );
            must(&[
                "ip", "-n", r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                "netns", c,
            ]);
            lab.netns_exec(
                r,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{lan_router_ip}/28"),
                    "dev",
                    "lan",
                ],
            );
            lab.netns_exec(r, &["ip", "link", "set", "lan", "up"]);
            lab.netns_exec(
                c,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/28", site.client_ip),
                    "dev",
                    "eth0",
                ],
            );
            lab.netns_exec(c, &["ip", "link", "set", "eth0", "up"]);
            lab.netns_exec(
                c,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &lan_router_ip.to_string(),
                ],
            );
            lab.netns_exec(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            lab.configure_nat(&site);
            lab.sites.push(site);
        }
        Ok(lab)
    }

    fn add_namespace(&mut self, ns: &str) {
        must(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        self.netns_exec(ns, &["ip", "link", "set", "lo", "up"]);
    }

    /// A veth pair: `wan` in `ns`, `p<port>` on the internet bridge.
    fn attach_to_internet(&self, ns: &str, port: usize) {
        let bridge_port = format!("p{port}");
        must(&[
            "ip",
            "-n",
            ns,
            "link",
            "add",
            "wan",
            "type",
            "veth",
            "peer",
            "name",
            &bridge_port,
            "netns",
            &self.inet,
        ]);
        self.netns_exec(
            &self.inet,
            &["ip", "link", "set", &bridge_port, "master", "br0"],
        );
        self.netns_exec(&self.inet, &["ip", "link", "set", &bridge_port, "up"]);
        self.netns_exec(ns, &["ip", "link", "set", "wan", "up"]);
    }

    /// The router's iptables rules for its [`NatKind`].
    fn configure_nat(&self, site: &Site) {
        let r = site.router.as_str();
        let client = site.client_ip.to_string();
        let ipt = |rule: &[&str]| {
            let mut args = vec!["iptables"];
            args.extend_from_slice(rule);
            self.netns_exec(r, &args);
        };
        match site.kind {
            NatKind::Symmetric => ipt(&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ]),
            _ => ipt(&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ]),
        }
        match site.kind {
            NatKind::EimEif => ipt(&[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                "wan",
                "-p",
                "udp",
                "-j",
                "DNAT",
                "--to-destination",
                &client,
            ]),
            NatKind::EimAdf => {
                ipt(&[
                    "-A", "FORWARD", "-i", "lan", "-o", "wan", "-p", "udp", "-m", "recent",
                    "--name", "adf", "--rdest", "--set",
                ]);
                ipt(&[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    "wan",
                    "-p",
                    "udp",
                    "-m",
                    "recent",
                    "--name",
                    "adf",
                    "--rsource",
                    "--rcheck",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    &client,
                ]);
            }
            NatKind::EimApdf | NatKind::Symmetric => {}
            NatKind::UdpBlocked => ipt(&["-A", "FORWARD", "-p", "udp", "-j", "DROP"]),
        }
        // Unsolicited inbound traffic that no DNAT rule above takes is addressed to the router
        // itself: drop it silently, as a NAT does. Dropping it in INPUT also keeps conntrack
        // from confirming an entry for it: such an entry (peer -> WAN:port) would make the
        // client's own later flow to that peer clash with it and get a different external
        // port, which would turn a port-restricted cone into a symmetric NAT for hole punching.
        ipt(&["-A", "INPUT", "-i", "wan", "-j", "DROP"]);
    }

    /// Runs `args` in namespace `ns`; panics on failure.
    pub fn netns_exec(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        must(&full)
    }

    /// Forgets what the address-dependent filters (`recent` lists) of every router have
    /// recorded, so one test's traffic does not open the filter for the next. (Conntrack
    /// entries stay; every run uses fresh ports, so they do not match a later run's flows.)
    pub fn reset_filters(&self) {
        for site in &self.sites {
            if site.kind == NatKind::EimAdf {
                let list = Path::new("/proc/net/xt_recent/adf");
                let _ = command_in(&site.router, "sh")
                    .arg("-c")
                    .arg(format!("echo / > {}", list.display()))
                    .status();
            }
        }
    }

    /// Spawns `program args` in namespace `ns`, output in a temporary log, killed when the lab
    /// is dropped. Returns its index for [`Lab::log`].
    pub fn spawn_in(&mut self, ns: &str, name: &str, program: &Path, args: &[String]) -> usize {
        let mut cmd = command_in(ns, program);
        cmd.args(args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        self.children.push(ChildGuard::spawn(name, &mut cmd));
        self.children.len() - 1
    }

    /// The log of child `index` (from [`Lab::spawn_in`]).
    pub fn log(&self, index: usize) -> String {
        self.children[index].log()
    }

    /// Waits until a TCP connect to `127.0.0.1:port` inside `ns` succeeds (our servers bind
    /// their metrics listener last, so that means ready), or panics after `timeout` or if child
    /// `index` exits.
    pub fn wait_ready(&mut self, index: usize, ns: &str, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.children[index].try_wait() {
                panic!(
                    "lab process {index} exited before it was ready ({status}):\n{}",
                    self.children[index].log()
                );
            }
            let ok = command_in(ns, "bash")
                .arg("-c")
                .arg(format!(": </dev/tcp/127.0.0.1/{port}"))
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "lab process {index} not listening on 127.0.0.1:{port} in {ns} within \
                 {timeout:?}:\n{}",
                self.children[index].log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the public host's servers: `stun-server` on 203.0.113.10 and .11, ports 3478 and
    /// 3479 (RFC 5780); `turn-server` on 203.0.113.10:3480 (UDP and TCP; TLS on :5349 when
    /// `tls` gives its certificate and key) relaying from 203.0.113.10 with the REST secret
    /// [`TURN_SECRET`]; `signaling` on 203.0.113.10:8080 handing out a STUN URI, and TURN URIs
    /// for UDP, TCP (and TLS) with REST credentials. Returns when all three are ready.
    pub fn start_servers(&mut self, tls: Option<(&Path, &Path)>) -> Servers {
        let public = self.public.clone();
        let stun = self.spawn_in(
            &public,
            "lab-stun-server",
            &super::bin_path("stun-server"),
            &strings(&[
                "--listen",
                &format!("{PUBLIC_IP}:{STUN_PORT}"),
                "--alt-ip",
                &PUBLIC_ALT_IP.to_string(),
                "--metrics",
                "127.0.0.1:9642",
            ]),
        );
        let mut turn_args = strings(&[
            "--listen",
            &format!("{PUBLIC_IP}:{TURN_PORT}"),
            "--relay-ip",
            &PUBLIC_IP.to_string(),
            "--auth-secret",
            TURN_SECRET,
            "--metrics",
            "127.0.0.1:9641",
        ]);
        let mut uris = vec![
            format!("stun:{PUBLIC_IP}:{STUN_PORT}"),
            format!("turn:{PUBLIC_IP}:{TURN_PORT}?transport=udp"),
            format!("turn:{PUBLIC_IP}:{TURN_PORT}?transport=tcp"),
        ];
        if let Some((cert, key)) = tls {
            turn_args.extend(strings(&[
                "--tls-listen",
                &format!("{PUBLIC_IP}:{TURNS_PORT}"),
                "--cert",
                &cert.to_string_lossy(),
                "--key",
                &key.to_string_lossy(),
            ]));
            uris.push(format!("turns:{PUBLIC_IP}:{TURNS_PORT}?transport=tcp"));
        }
        let turn = self.spawn_in(
            &public,
            "lab-turn-server",
            &super::bin_path("turn-server"),
            &turn_args,
        );
        let mut sig_args = strings(&[
            "--listen",
            &format!("{PUBLIC_IP}:{SIGNALING_PORT}"),
            "--public-url",
            &format!("http://{PUBLIC_IP}:{SIGNALING_PORT}"),
            "--api-key",
            API_KEY,
            "--turn-secret",
            TURN_SECRET,
            "--metrics",
            "127.0.0.1:9643",
        ]);
        for uri in &uris {
            sig_args.push("--turn-uri".into());
            sig_args.push(uri.clone());
        }
        let signaling = self.spawn_in(
            &public,
            "lab-signaling",
            &super::bin_path("signaling"),
            &sig_args,
        );
        let timeout = super::READY_TIMEOUT;
        self.wait_ready(stun, &public, 9642, timeout);
        self.wait_ready(turn, &public, 9641, timeout);
        self.wait_ready(signaling, &public, 9643, timeout);
        Servers {
            stun,
            turn,
            signaling,
            base_url: format!("http://{PUBLIC_IP}:{SIGNALING_PORT}"),
            ice_uris: uris,
        }
    }

    /// `GET http://127.0.0.1:<port><path>` inside namespace `ns` (bash's `/dev/tcp`, HTTP/1.0):
    /// the whole response, headers included. Used for the public host's `/metrics`.
    pub fn http_get_in(&self, ns: &str, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 \
             && cat <&3"
        );
        self.netns_exec(ns, &["bash", "-c", &script])
    }

    /// The site at `index`.
    pub fn site(&self, index: usize) -> &Site {
        &self.sites[index]
    }
}

/// What [`Lab::start_servers`] started (indices for [`Lab::log`]).
#[derive(Debug, Clone)]
pub struct Servers {
    pub stun: usize,
    pub turn: usize,
    pub signaling: usize,
    /// `http://203.0.113.10:8080`.
    pub base_url: String,
    /// The URIs signaling hands out.
    pub ice_uris: Vec<String>,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Deletes every namespace whose name starts with `prefix` (leftovers of a killed run).
fn remove_namespaces_with_prefix(prefix: &str) {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        if let Some(name) = line.split_whitespace().next() {
            if name.starts_with(prefix) {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace lives on while a process is inside it.
        self.children.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// A self-signed certificate for `ip` (subjectAltName IP) and its key, written by `openssl`
/// to `dir`: `(cert.pem, key.pem)`.
pub fn self_signed_cert(dir: &Path, ip: Ipv4Addr) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).expect("create cert dir");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    must(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=turnkey NAT lab",
        "-addext",
        &format!("subjectAltName=IP:{ip}"),
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ]);
    (cert, key)
}

/// A fresh temporary directory path (not created).
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let log = temp_log_path(name);
    log.with_extension("d")
}
