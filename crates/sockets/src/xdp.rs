//! The XDP fast path for ChannelData over UDP: loads `bpf/turn_xdp.c` (built by `build.rs`
//! when clang and the libbpf headers exist), attaches it to the operator's interfaces and keeps
//! its maps: one entry per usable channel binding on each side (client 5-tuple + channel ->
//! relayed address + peer; peer + relayed address -> client 5-tuple + channel), each with the
//! deadline after which the program stops forwarding (CLOCK_MONOTONIC ns) and the packets and
//! bytes it forwarded, plus per-CPU counters for the metrics.
//!
//! The TURN core decides which bindings are installed (`turn_proto::core::FastPathEvent`);
//! this module only mirrors them into the kernel.

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::programs::{ProgramError, Xdp, XdpMode};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// How the program is attached (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver (XDP_FLAGS_DRV_MODE): fails where the driver has no XDP support.
    Native,
    /// In the kernel's generic receive path (XDP_FLAGS_SKB_MODE): works on every interface.
    Generic,
    /// Native where the driver supports it, else generic (the kernel picks).
    #[default]
    Auto,
}

/// Why the fast path could not be set up or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// This build has no eBPF object (clang or libbpf-dev was missing when it was built).
    #[error("this turn-server was built without the XDP program (clang and libbpf-dev were missing at build time); rebuild with them installed or drop --xdp")]
    NotBuilt,
    /// Loading the object or the program into the kernel failed (needs root or
    /// CAP_BPF + CAP_NET_ADMIN, and a kernel with BTF-defined maps and bpf_fib_lookup).
    #[error("loading the XDP program: {0}")]
    Load(String),
    /// Attaching to an interface failed.
    #[error("attaching XDP to {iface} ({mode:?}): {source}")]
    Attach {
        /// The interface name.
        iface: String,
        /// The mode asked for.
        mode: XdpAttachMode,
        /// What the kernel said.
        #[source]
        source: ProgramError,
    },
    /// A map update failed (full map: `--xdp-max-bindings`).
    #[error("XDP map update: {0}")]
    Map(#[from] MapError),
    /// Client, server, relayed address and peer are not all of one family (the program does
    /// not translate between IPv4 and IPv6).
    #[error("mixed address families are not on the fast path")]
    MixedFamilies,
}

/// One channel binding as the program sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FastBinding {
    /// The client's address (its 5-tuple's source).
    pub client: SocketAddr,
    /// The server listener address the client sends to.
    pub server: SocketAddr,
    /// The channel number (0x4000-0x7FFF).
    pub channel: u16,
    /// The relayed transport address (relay socket's local address).
    pub relay: SocketAddr,
    /// The peer bound to the channel.
    pub peer: SocketAddr,
}

/// What the program forwarded for one binding since it was installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryCounts {
    /// ChannelData datagrams relayed to the peer.
    pub to_peer_packets: u64,
    /// Their payload bytes.
    pub to_peer_bytes: u64,
    /// Peer datagrams relayed to the client as ChannelData.
    pub from_peer_packets: u64,
    /// Their payload bytes.
    pub from_peer_bytes: u64,
}

/// The program's own counters, summed over CPUs (monotonic since attach).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Datagrams forwarded client -> peer.
    pub to_peer_packets: u64,
    /// Their payload bytes.
    pub to_peer_bytes: u64,
    /// Datagrams forwarded peer -> client.
    pub from_peer_packets: u64,
    /// Their payload bytes.
    pub from_peer_bytes: u64,
    /// Passed to userspace: the entry's deadline was past.
    pub pass_expired: u64,
    /// Passed: no plain route (fib lookup failed, no neighbour yet, forwarding disabled).
    pub pass_route: u64,
    /// Passed: the result would exceed the egress MTU.
    pub pass_mtu: u64,
    /// Passed: the ChannelData length does not match the UDP payload.
    pub pass_malformed: u64,
}

const COUNTERS: u32 = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ClientKey {
    client_ip: [u8; 16],
    server_ip: [u8; 16],
    client_port: [u8; 2],
    server_port: [u8; 2],
    channel: [u8; 2],
    family: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct ClientVal {
    relay_ip: [u8; 16],
    peer_ip: [u8; 16],
    relay_port: [u8; 2],
    peer_port: [u8; 2],
    _pad: u32,
    deadline_ns: u64,
    packets: u64,
    bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PeerKey {
    peer_ip: [u8; 16],
    relay_ip: [u8; 16],
    peer_port: [u8; 2],
    relay_port: [u8; 2],
    family: u16,
    _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PeerVal {
    client_ip: [u8; 16],
    server_ip: [u8; 16],
    client_port: [u8; 2],
    server_port: [u8; 2],
    channel: [u8; 2],
    _pad: u16,
    deadline_ns: u64,
    packets: u64,
    bytes: u64,
}

// SAFETY: plain `repr(C)` structs of integers and byte arrays with no padding the compiler
// adds (explicit `_pad` fields), laid out like the C structs in bpf/turn_xdp.c; any bit
// pattern is a valid value.
#[allow(unsafe_code)]
unsafe impl aya::Pod for ClientKey {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for ClientVal {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl aya::Pod for PeerVal {}

const _: () = assert!(std::mem::size_of::<ClientKey>() == 40);
const _: () = assert!(std::mem::size_of::<ClientVal>() == 64);
const _: () = assert!(std::mem::size_of::<PeerKey>() == 40);
const _: () = assert!(std::mem::size_of::<PeerVal>() == 64);

fn ip_bytes(ip: IpAddr) -> ([u8; 16], u16) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

impl FastBinding {
    fn keys(&self) -> Result<(ClientKey, PeerKey), XdpError> {
        let (client_ip, f1) = ip_bytes(self.client.ip());
        let (server_ip, f2) = ip_bytes(self.server.ip());
        let (relay_ip, f3) = ip_bytes(self.relay.ip());
        let (peer_ip, f4) = ip_bytes(self.peer.ip());
        if f1 != f2 || f1 != f3 || f1 != f4 {
            return Err(XdpError::MixedFamilies);
        }
        Ok((
            ClientKey {
                client_ip,
                server_ip,
                client_port: self.client.port().to_be_bytes(),
                server_port: self.server.port().to_be_bytes(),
                channel: self.channel.to_be_bytes(),
                family: f1,
            },
            PeerKey {
                peer_ip,
                relay_ip,
                peer_port: self.peer.port().to_be_bytes(),
                relay_port: self.relay.port().to_be_bytes(),
                family: f1,
                _pad: 0,
            },
        ))
    }
}

/// Converts `Instant`s (CLOCK_MONOTONIC on Linux) to the nanoseconds `bpf_ktime_get_ns`
/// returns, from one reading of both clocks.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    instant: Instant,
    ns: u64,
}

impl MonotonicClock {
    /// Reads both clocks now.
    pub fn new() -> Self {
        let instant = Instant::now();
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .expect("CLOCK_MONOTONIC is always there on Linux");
        let ns = ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64;
        Self { instant, ns }
    }

    /// `t` in CLOCK_MONOTONIC nanoseconds.
    pub fn ns_at(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.instant) {
            Some(d) => self.ns.saturating_add(d.as_nanos() as u64),
            None => self
                .ns
                .saturating_sub(self.instant.duration_since(t).as_nanos() as u64),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

/// True when this build embeds the eBPF object.
pub const BUILT: bool = cfg!(turn_xdp_object);

#[cfg(turn_xdp_object)]
fn object() -> Option<&'static [u8]> {
    Some(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/turn_xdp.o"
    )))
}

#[cfg(not(turn_xdp_object))]
fn object() -> Option<&'static [u8]> {
    None
}

/// The loaded program, attached to its interfaces (detached when dropped), and its maps.
pub struct XdpRouter {
    // Holds the program and its links: dropping it detaches from every interface.
    _ebpf: aya::Ebpf,
    client: BpfHashMap<MapData, ClientKey, ClientVal>,
    peer: BpfHashMap<MapData, PeerKey, PeerVal>,
    counters: PerCpuArray<MapData, u64>,
    installed: usize,
    interfaces: Vec<String>,
}

impl std::fmt::Debug for XdpRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdpRouter")
            .field("interfaces", &self.interfaces)
            .field("installed", &self.installed)
            .finish()
    }
}

impl XdpRouter {
    /// Loads the program with room for `max_bindings` entries on each side and attaches it to
    /// every interface in `interfaces` in `mode`. Fails on the first interface that refuses
    /// (the ones attached before are detached again).
    pub fn attach(
        interfaces: &[String],
        mode: XdpAttachMode,
        max_bindings: u32,
    ) -> Result<Self, XdpError> {
        let bytes = object().ok_or(XdpError::NotBuilt)?;
        let max = max_bindings.max(1);
        let mut ebpf = aya::EbpfLoader::new()
            .map_max_entries("TURN_CLIENT", max)
            .map_max_entries("TURN_PEER", max)
            .load(bytes)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        let prog: &mut Xdp = ebpf
            .program_mut("turn_xdp")
            .ok_or_else(|| XdpError::Load("no program turn_xdp in the object".into()))?
            .try_into()
            .map_err(|e: ProgramError| XdpError::Load(e.to_string()))?;
        prog.load().map_err(|e| XdpError::Load(format!("{e:?}")))?;
        let flags = match mode {
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Generic => XdpMode::Skb,
            XdpAttachMode::Auto => XdpMode::Default,
        };
        for iface in interfaces {
            prog.attach(iface, flags)
                .map_err(|source| XdpError::Attach {
                    iface: iface.clone(),
                    mode,
                    source,
                })?;
        }
        let take = |ebpf: &mut aya::Ebpf, name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| XdpError::Load(format!("no map {name} in the object")))
        };
        let client = BpfHashMap::try_from(take(&mut ebpf, "TURN_CLIENT")?)?;
        let peer = BpfHashMap::try_from(take(&mut ebpf, "TURN_PEER")?)?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "TURN_COUNTERS")?)?;
        Ok(Self {
            _ebpf: ebpf,
            client,
            peer,
            counters,
            installed: 0,
            interfaces: interfaces.to_vec(),
        })
    }

    /// Installs `b` (or moves its deadline, `deadline_ns` in CLOCK_MONOTONIC ns). An entry
    /// already there keeps the counts the program made so far (read them with
    /// [`entry_counts`](Self::entry_counts)); a new one starts at zero. When the map is full
    /// nothing is installed and the error says so.
    pub fn install(&mut self, b: &FastBinding, deadline_ns: u64) -> Result<(), XdpError> {
        let (ck, pk) = b.keys()?;
        let (relay_ip, _) = ip_bytes(b.relay.ip());
        let (peer_ip, _) = ip_bytes(b.peer.ip());
        let (client_ip, _) = ip_bytes(b.client.ip());
        let (server_ip, _) = ip_bytes(b.server.ip());
        let old_c = self.client.get(&ck, 0).ok();
        let old_p = self.peer.get(&pk, 0).ok();
        let cv = ClientVal {
            relay_ip,
            peer_ip,
            relay_port: b.relay.port().to_be_bytes(),
            peer_port: b.peer.port().to_be_bytes(),
            _pad: 0,
            deadline_ns,
            packets: old_c.map_or(0, |v| v.packets),
            bytes: old_c.map_or(0, |v| v.bytes),
        };
        let pv = PeerVal {
            client_ip,
            server_ip,
            client_port: b.client.port().to_be_bytes(),
            server_port: b.server.port().to_be_bytes(),
            channel: b.channel.to_be_bytes(),
            _pad: 0,
            deadline_ns,
            packets: old_p.map_or(0, |v| v.packets),
            bytes: old_p.map_or(0, |v| v.bytes),
        };
        // Peer side first: a client entry without its peer entry would forward one way only.
        self.peer.insert(pk, pv, 0)?;
        if let Err(e) = self.client.insert(ck, cv, 0) {
            if old_p.is_none() {
                let _ = self.peer.remove(&pk);
            }
            return Err(e.into());
        }
        if old_c.is_none() {
            self.installed += 1;
        }
        Ok(())
    }

    /// What the program forwarded for `b` so far (zero when it is not installed).
    pub fn entry_counts(&self, b: &FastBinding) -> EntryCounts {
        let Ok((ck, pk)) = b.keys() else {
            return EntryCounts::default();
        };
        let c = self.client.get(&ck, 0).ok();
        let p = self.peer.get(&pk, 0).ok();
        EntryCounts {
            to_peer_packets: c.map_or(0, |v| v.packets),
            to_peer_bytes: c.map_or(0, |v| v.bytes),
            from_peer_packets: p.map_or(0, |v| v.packets),
            from_peer_bytes: p.map_or(0, |v| v.bytes),
        }
    }

    /// Removes `b`; returns its final counts.
    pub fn remove(&mut self, b: &FastBinding) -> EntryCounts {
        let counts = self.entry_counts(b);
        if let Ok((ck, pk)) = b.keys() {
            if self.client.remove(&ck).is_ok() {
                self.installed = self.installed.saturating_sub(1);
            }
            let _ = self.peer.remove(&pk);
        }
        counts
    }

    /// Entries installed (client side).
    pub fn installed(&self) -> usize {
        self.installed
    }

    /// The program's counters summed over CPUs.
    pub fn counters(&self) -> XdpCounters {
        let mut v = [0u64; COUNTERS as usize];
        for (i, slot) in v.iter_mut().enumerate() {
            if let Ok(per_cpu) = self.counters.get(&(i as u32), 0) {
                *slot = per_cpu.iter().sum();
            }
        }
        XdpCounters {
            to_peer_packets: v[0],
            to_peer_bytes: v[1],
            from_peer_packets: v[2],
            from_peer_bytes: v[3],
            pass_expired: v[4],
            pass_route: v[5],
            pass_mtu: v[6],
            pass_malformed: v[7],
        }
    }
}
