//! Which peer addresses a TURN allocation may talk to (RFC 8656 §21.1 "open relay" and
//! server-side request forgery concerns).
//!
//! Refused by default: unspecified, loopback, RFC 1918 private, CGNAT 100.64/10, link-local
//! (including the 169.254.169.254 metadata address), multicast, broadcast, reserved 240/4,
//! "this network" 0/8, IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15,
//! IPv6 ULA fc00::/7, site-local fec0::/10, link-local fe80::/10, multicast ff00::/8, the
//! local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215), and every IPv6 form that embeds a refused
//! IPv4 address: IPv4-mapped ::ffff:0:0/96, IPv4-translated ::ffff:0:0:0/96, IPv4-compatible
//! ::/96, NAT64 64:ff9b::/96, 6to4 2002::/16 (RFC 3056), Teredo 2001::/32 (RFC 4380: server
//! and de-obfuscated client address) and ISATAP interface identifiers (RFC 5214). The server's own addresses are refused on every port that is not a live
//! relayed transport address (checked by the core), and its listening ports are refused even when
//! `--allow-peer` covers the address. `--allow-peer` / `--deny-peer` CIDRs override the classes;
//! the longest matching prefix wins and a tie goes to deny.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a peer was refused; also the `reason` label of `turn_peer_denied_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// Matched a `--deny-peer` CIDR.
    Configured,
    /// 0.0.0.0/8 or ::.
    Unspecified,
    /// 127/8 or ::1.
    Loopback,
    /// RFC 1918, CGNAT 100.64/10 or IPv6 ULA.
    Private,
    /// 169.254/16 or fe80::/10.
    LinkLocal,
    /// Multicast or broadcast.
    Multicast,
    /// 240/4 and other reserved space.
    Reserved,
    /// One of the server's own addresses or ports.
    OwnAddress,
}

impl DenyReason {
    /// Its slot in the counters: the position in [`DenyReason::ALL`], which lists the variants
    /// in declaration order.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [DenyReason; 8] = [
        DenyReason::Configured,
        DenyReason::Unspecified,
        DenyReason::Loopback,
        DenyReason::Private,
        DenyReason::LinkLocal,
        DenyReason::Multicast,
        DenyReason::Reserved,
        DenyReason::OwnAddress,
    ];

    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Configured => "configured",
            DenyReason::Unspecified => "unspecified",
            DenyReason::Loopback => "loopback",
            DenyReason::Private => "private",
            DenyReason::LinkLocal => "link_local",
            DenyReason::Multicast => "multicast",
            DenyReason::Reserved => "reserved",
            DenyReason::OwnAddress => "own_address",
        }
    }
}

/// The peer address policy. Built once from config; cheap to query.
#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    own_ips: Vec<IpAddr>,
    own_ports: Vec<u16>,
    relay_ports: (u16, u16),
}

impl PeerPolicy {
    /// `allow`/`deny`: operator CIDRs. `own_ips`: listen, relay and external addresses.
    /// `own_ports`: listening ports (client and metrics). `relay_ports`: the relay port range.
    pub fn new(
        allow: Vec<IpNet>,
        deny: Vec<IpNet>,
        own_ips: Vec<IpAddr>,
        own_ports: Vec<u16>,
        relay_ports: (u16, u16),
    ) -> Self {
        Self {
            allow,
            deny,
            own_ips,
            own_ports,
            relay_ports,
        }
    }

    /// True when `ip` is one of the server's own addresses (IPv4-mapped forms included).
    pub fn is_own_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.own_ips.iter().any(|o| canonical(*o) == ip)
    }

    /// Checks `peer`, which the caller has already found not to be a live relayed transport
    /// address of this server. The core calls this for every datagram it relays in either
    /// direction, not only when a permission is installed.
    pub fn check(&self, peer: SocketAddr) -> Result<(), DenyReason> {
        let ip = canonical(peer.ip());
        if self.own_ips.iter().any(|o| canonical(*o) == ip)
            || (ip.is_unspecified() && !self.own_ips.is_empty())
        {
            let port = peer.port();
            let own_port = self.own_ports.contains(&port)
                || (self.relay_ports.0..=self.relay_ports.1).contains(&port);
            if own_port || self.longest(&self.allow, ip).is_none() {
                return Err(DenyReason::OwnAddress);
            }
        }
        self.check_ip(peer.ip())
    }

    /// The address-only part of [`check`](Self::check) (permissions are per IP, RFC 8656 §9).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), DenyReason> {
        self.check_one(ip)?;
        for v4 in embedded_v4s(ip).into_iter().flatten() {
            self.check_one(IpAddr::V4(v4))?;
        }
        Ok(())
    }

    fn check_one(&self, ip: IpAddr) -> Result<(), DenyReason> {
        let allow = self.longest(&self.allow, ip);
        let deny = self.longest(&self.deny, ip);
        match (allow, deny) {
            (Some(a), Some(d)) if d >= a => return Err(DenyReason::Configured),
            (None, Some(_)) => return Err(DenyReason::Configured),
            (Some(_), _) => return Ok(()),
            (None, None) => {}
        }
        match default_class(ip) {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn longest(&self, nets: &[IpNet], ip: IpAddr) -> Option<u8> {
        nets.iter()
            .filter(|n| n.contains(&ip))
            .map(|n| n.prefix_len())
            .max()
    }
}

/// An IPv4-mapped IPv6 address compares as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The IPv4 address embedded in an IPv6 address: IPv4-mapped ::ffff:0:0/96, IPv4-translated
/// ::ffff:0:0:0/96, IPv4-compatible ::/96 (excluding :: and ::1), NAT64 64:ff9b::/96, 6to4
/// 2002::/16, the Teredo server address (2001::/32) and an ISATAP interface identifier. For
/// Teredo the client address is [`embedded_v4s`]'s second item.
pub fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    embedded_v4s(ip)[0]
}

/// Every IPv4 address embedded in `ip` (at most two: Teredo carries its server's and its
/// client's, RFC 4380 §4).
pub fn embedded_v4s(ip: IpAddr) -> [Option<Ipv4Addr>; 2] {
    let IpAddr::V6(v6) = ip else {
        return [None, None];
    };
    let s = v6.segments();
    let o = v6.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return [Some(v4), None];
    }
    // IPv4-translated (RFC 2765 SIIT): ::ffff:0:a.b.c.d.
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return [Some(tail), None];
    }
    if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        return [Some(tail), None];
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return [Some(tail), None];
    }
    if s[0] == 0x2002 {
        return [Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])), None];
    }
    if s[0] == 0x2001 && s[1] == 0 {
        let server = Ipv4Addr::new(o[4], o[5], o[6], o[7]);
        let client = Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15]);
        return [Some(server), Some(client)];
    }
    // ISATAP (RFC 5214 §6.1): interface identifier [02]00:5efe:a.b.c.d under any prefix.
    if (s[4] & 0xfdff) == 0 && s[5] == 0x5efe {
        return [Some(tail), None];
    }
    [None, None]
}

fn default_class(ip: IpAddr) -> Option<DenyReason> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<DenyReason> {
    let o = ip.octets();
    if o[0] == 0 {
        Some(DenyReason::Unspecified)
    } else if ip.is_loopback() {
        Some(DenyReason::Loopback)
    } else if ip.is_private() || (o[0] == 100 && (o[1] & 0xC0) == 64) {
        Some(DenyReason::Private)
    } else if ip.is_link_local() {
        Some(DenyReason::LinkLocal)
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some(DenyReason::Multicast)
    } else if o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        // 240/4, IETF protocol assignments 192.0.0.0/24, benchmarking 198.18.0.0/15.
        Some(DenyReason::Reserved)
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<DenyReason> {
    let seg = ip.segments();
    let s0 = seg[0];
    if ip.is_unspecified() {
        Some(DenyReason::Unspecified)
    } else if ip.is_loopback() {
        Some(DenyReason::Loopback)
    } else if (s0 & 0xfe00) == 0xfc00 {
        Some(DenyReason::Private)
    } else if (s0 & 0xffc0) == 0xfe80 {
        Some(DenyReason::LinkLocal)
    } else if (s0 & 0xffc0) == 0xfec0 {
        // Site-local (deprecated by RFC 3879, still routed inside some networks).
        Some(DenyReason::Private)
    } else if ip.is_multicast() {
        Some(DenyReason::Multicast)
    } else if seg[..3] == [0x64, 0xff9b, 0x1] {
        // Local-use NAT64 prefix 64:ff9b:1::/48 (RFC 8215): translates into a private network.
        Some(DenyReason::Private)
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    fn p(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_refuses_every_class() {
        let pol = PeerPolicy::default();
        let refused = [
            ("0.0.0.0:1", DenyReason::Unspecified),
            ("0.1.2.3:1", DenyReason::Unspecified),
            ("127.0.0.1:1", DenyReason::Loopback),
            ("127.8.9.1:1", DenyReason::Loopback),
            ("10.1.2.3:1", DenyReason::Private),
            ("172.16.0.1:1", DenyReason::Private),
            ("172.31.255.255:1", DenyReason::Private),
            ("192.168.1.1:1", DenyReason::Private),
            ("100.64.0.1:1", DenyReason::Private),
            ("100.127.255.254:1", DenyReason::Private),
            ("169.254.169.254:80", DenyReason::LinkLocal),
            ("224.0.0.1:1", DenyReason::Multicast),
            ("239.255.255.250:1900", DenyReason::Multicast),
            ("255.255.255.255:1", DenyReason::Multicast),
            ("240.0.0.1:1", DenyReason::Reserved),
            ("[::]:1", DenyReason::Unspecified),
            ("[::1]:1", DenyReason::Loopback),
            ("[fc00::1]:1", DenyReason::Private),
            ("[fd12:3456::1]:1", DenyReason::Private),
            ("[fe80::1]:1", DenyReason::LinkLocal),
            ("[ff02::1]:1", DenyReason::Multicast),
            ("[::ffff:127.0.0.1]:1", DenyReason::Loopback),
            ("[::ffff:10.0.0.1]:1", DenyReason::Private),
            ("[::127.0.0.1]:1", DenyReason::Loopback),
            ("[::169.254.169.254]:1", DenyReason::LinkLocal),
            ("[64:ff9b::a9fe:a9fe]:1", DenyReason::LinkLocal),
            ("[64:ff9b::7f00:1]:1", DenyReason::Loopback),
            ("[2002:c0a8:0101::1]:1", DenyReason::Private),
            ("[2002:7f00:0001::1]:1", DenyReason::Loopback),
            ("192.0.0.8:1", DenyReason::Reserved),
            ("192.0.0.170:1", DenyReason::Reserved),
            ("198.18.0.1:1", DenyReason::Reserved),
            ("198.19.255.254:1", DenyReason::Reserved),
            ("[fec0::1]:1", DenyReason::Private),
            ("[feff::1]:1", DenyReason::Private),
            ("[64:ff9b:1::c000:201]:1", DenyReason::Private),
            ("[::ffff:0:7f00:1]:1", DenyReason::Loopback),
            ("[::ffff:0:a00:1]:1", DenyReason::Private),
            // Teredo: server 192.0.2.1 (fine), client obfuscated 127.0.0.1 -> 80ff:fffe.
            ("[2001:0:c000:201::80ff:fffe]:1", DenyReason::Loopback),
            // Teredo: server 10.0.0.1.
            ("[2001:0:a00:1::3fff:fdfe]:1", DenyReason::Private),
            // ISATAP interface identifiers embedding 169.254.169.254 and 10.1.2.3.
            ("[2001:db8::5efe:a9fe:a9fe]:1", DenyReason::LinkLocal),
            ("[2001:db8::200:5efe:a01:203]:1", DenyReason::Private),
        ];
        for (addr, reason) in refused {
            assert_eq!(pol.check(p(addr)), Err(reason), "{addr}");
        }
        for ok in [
            "192.0.2.1:5000",
            "198.51.100.7:1",
            "203.0.113.9:9",
            "8.8.8.8:53",
            "100.128.0.1:1",
            "[2001:db8::1]:1",
            "[::ffff:192.0.2.1]:1",
            "[64:ff9b::c000:201]:1",
            "[2002:c000:0201::1]:1",
            "192.0.1.1:1",
            "198.17.255.255:1",
            "198.20.0.1:1",
            "[64:ff9b:2::1]:1",
            // Teredo with public server 192.0.2.1 and client 203.0.113.9 (obfuscated).
            "[2001:0:c000:201::34ff:8ef6]:1",
        ] {
            assert_eq!(pol.check(p(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn operator_cidrs_override_longest_prefix_wins() {
        let pol = PeerPolicy::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            vec![
                "10.9.0.0/16".parse().unwrap(),
                "192.0.2.0/24".parse().unwrap(),
            ],
            vec![],
            vec![],
            (0, 0),
        );
        assert_eq!(pol.check(p("127.0.0.1:3480")), Ok(()));
        assert_eq!(pol.check(p("[::ffff:127.0.0.1]:3480")), Ok(()));
        assert_eq!(pol.check(p("10.1.0.1:1")), Ok(()));
        assert_eq!(pol.check(p("10.9.0.1:1")), Err(DenyReason::Configured));
        assert_eq!(pol.check(p("192.0.2.1:1")), Err(DenyReason::Configured));
        assert_eq!(
            pol.check(p("[::ffff:192.0.2.1]:1")),
            Err(DenyReason::Configured)
        );
    }

    #[test]
    fn own_addresses_refused_even_when_allowed() {
        let own: IpAddr = "192.0.2.10".parse().unwrap();
        let pol = PeerPolicy::new(vec![], vec![], vec![own], vec![3478, 9641], (49152, 65535));
        assert_eq!(pol.check(p("192.0.2.10:3478")), Err(DenyReason::OwnAddress));
        assert_eq!(pol.check(p("192.0.2.10:22")), Err(DenyReason::OwnAddress));
        assert_eq!(
            pol.check(p("[::ffff:192.0.2.10]:22")),
            Err(DenyReason::OwnAddress)
        );
        assert_eq!(pol.check(p("192.0.2.11:22")), Ok(()));
        let pol = PeerPolicy::new(
            vec!["192.0.2.0/24".parse().unwrap()],
            vec![],
            vec![own],
            vec![3478, 9641],
            (49152, 65535),
        );
        // Explicitly allowed: other ports work, the server's own ports never do.
        assert_eq!(pol.check(p("192.0.2.10:22")), Ok(()));
        assert_eq!(pol.check(p("192.0.2.10:3478")), Err(DenyReason::OwnAddress));
        assert_eq!(
            pol.check(p("192.0.2.10:50000")),
            Err(DenyReason::OwnAddress)
        );
    }
}
