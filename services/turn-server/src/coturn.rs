//! `turn-server import-coturn FILE`: translates a coturn `turnserver.conf` into turnkey's TOML.
//!
//! Pure: [`import`] takes the file's bytes and returns the TOML text and what became of every
//! option line; nothing here reads a file, the clock or the environment.
//!
//! coturn's syntax (as its `read_config_file` reads it): one option per line; blanks before it
//! are skipped; a line whose first non-blank character is `#` is a comment (there are no
//! end-of-line comments: `#` inside a value is part of it); the option name ends at the first
//! space, tab or `=`, and the value starts after the run of those; a value starting with `"`
//! loses that quote, trailing blanks and one closing quote. A flag without a value is on; a
//! flag's value may be `1`/`yes`/`true`/`on`/`t` or `0`/`no`/`false`/`off`/`f`. Options may
//! repeat (`listening-ip`, `relay-ip`, `user`, `static-auth-secret`, `allowed-peer-ip`, ...);
//! for single-valued ones the last occurrence wins, as in coturn.
//!
//! Every option occurrence ends in exactly one [`Outcome`]: mapped onto TOML keys, already
//! turnkey's behaviour, or not carried over with the reason. The TOML lists them as comments
//! at its top, one line each (`# unmapped: line 12: max-bps: why`), so the file keeps the
//! migration record and a program can read it back.
//!
//! Secrets (`user` passwords, `static-auth-secret`) are copied into the TOML, never into an
//! [`Outcome`], an error or a note.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// coturn's defaults for the listener ports (`listening-port`, `tls-listening-port`).
const COTURN_PORT: u16 = 3478;
const COTURN_TLS_PORT: u16 = 5349;
/// coturn's Prometheus port (`prometheus-port`).
const COTURN_PROMETHEUS_PORT: u16 = 9641;
/// coturn's `stale-nonce` lifetime when the flag has no number, seconds.
const COTURN_STALE_NONCE_SECS: u64 = 600;
/// The channel binding and permission lifetimes turnkey uses (RFC 8656 §12, §9), seconds.
const CHANNEL_LIFETIME_SECS: u64 = 600;
const PERMISSION_LIFETIME_SECS: u64 = 300;

/// What the import produced: the TOML text (comments, then keys) and the fate of every option
/// occurrence, in file order.
#[derive(Debug, Clone)]
pub struct Import {
    /// turnkey's TOML (`turn-server --config`), with the record of every option as comments
    /// at its top.
    pub toml: String,
    /// Options carried over, each with the keys it went to.
    pub mapped: Vec<Mapped>,
    /// Options whose effect is already turnkey's behaviour: nothing to set.
    pub already_default: Vec<Unmapped>,
    /// Options not carried over, each with why and what to do instead.
    pub unmapped: Vec<Unmapped>,
    /// Differences that belong to no single line (defaults that differ, secrets to move).
    pub notes: Vec<String>,
}

/// An option carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// coturn's option name, as written.
    pub option: String,
    /// 1-based line number.
    pub line: usize,
    /// The turnkey keys it set, comma-separated (`listen, tls_listen`).
    pub keys: String,
}

/// An option not carried over (or with nothing to carry over), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmapped {
    /// coturn's option name, as written.
    pub option: String,
    /// 1-based line number.
    pub line: usize,
    /// Why, and what to do instead; never contains the option's value.
    pub why: String,
}

/// What became of one option occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Carried over to these keys.
    Mapped(String),
    /// turnkey already behaves so.
    AlreadyDefault(String),
    /// Not carried over, with why.
    Unmapped(String),
}

/// Why the file could not be imported. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The line is not UTF-8 text.
    #[error("line {line}: not UTF-8 text")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// The line has a value but no option name (`=value`).
    #[error("line {line}: no option name before the value")]
    NoName {
        /// 1-based line number.
        line: usize,
    },
    /// An option that needs a value has none.
    #[error("line {line}: {option} needs a value")]
    MissingValue {
        /// 1-based line number.
        line: usize,
        /// coturn's option name.
        option: String,
    },
    /// A value turnkey would need cannot be read.
    #[error("line {line}: {option}: {reason}")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// coturn's option name.
        option: String,
        /// What is wrong (names the value unless it is a secret).
        reason: String,
    },
}

impl ImportError {
    /// The 1-based line the error is about.
    pub fn line(&self) -> usize {
        match self {
            ImportError::NotUtf8 { line }
            | ImportError::NoName { line }
            | ImportError::MissingValue { line, .. }
            | ImportError::BadValue { line, .. } => *line,
        }
    }
}

/// One option line, split the way coturn splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OptionLine<'a> {
    line: usize,
    name: &'a str,
    value: Option<&'a str>,
}

/// Splits one line (without its newline) as coturn does; `None` for blank and comment lines.
fn split_line(line: usize, text: &str) -> Result<Option<OptionLine<'_>>, ImportError> {
    let s = text
        .trim_start_matches([' ', '\t'])
        .trim_end_matches(|c: char| c.is_ascii_whitespace());
    if s.is_empty() || s.starts_with('#') {
        return Ok(None);
    }
    let sep = |c: char| c == ' ' || c == '\t' || c == '=';
    let (name, rest) = match s.find(sep) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(sep)),
        None => (s, ""),
    };
    if name.is_empty() {
        return Err(ImportError::NoName { line });
    }
    let value = match rest.strip_prefix('"') {
        Some(v) => {
            let v = v.trim_end_matches(|c: char| c.is_ascii_whitespace());
            v.strip_suffix('"').unwrap_or(v)
        }
        None => rest,
    };
    Ok(Some(OptionLine {
        line,
        name,
        value: (!value.is_empty()).then_some(value),
    }))
}

/// coturn's boolean values; `None` (no value) is on.
fn parse_bool(o: &OptionLine<'_>) -> Result<bool, ImportError> {
    let Some(v) = o.value else {
        return Ok(true);
    };
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Ok(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Ok(false),
        _ => Err(bad(
            o,
            format!("{v:?} is not a boolean (on/off, yes/no, 1/0, true/false)"),
        )),
    }
}

fn bad(o: &OptionLine<'_>, reason: String) -> ImportError {
    ImportError::BadValue {
        line: o.line,
        option: o.name.to_string(),
        reason,
    }
}

fn need_value<'a>(o: &OptionLine<'a>) -> Result<&'a str, ImportError> {
    o.value.ok_or_else(|| ImportError::MissingValue {
        line: o.line,
        option: o.name.to_string(),
    })
}

fn parse_num<T: std::str::FromStr>(o: &OptionLine<'_>, what: &str) -> Result<T, ImportError> {
    let v = need_value(o)?;
    v.parse()
        .map_err(|_| bad(o, format!("{v:?} is not {what}")))
}

fn parse_port(o: &OptionLine<'_>) -> Result<u16, ImportError> {
    match parse_num::<u16>(o, "a port number (1-65535)")? {
        0 => Err(bad(o, "port 0 is not a port turnkey can use".into())),
        p => Ok(p),
    }
}

fn parse_ip(o: &OptionLine<'_>) -> Result<IpAddr, ImportError> {
    parse_num(o, "an IP address")
}

/// An inclusive range of addresses of one family, as integers (IPv4 in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    v6: bool,
    start: u128,
    end: u128,
}

impl Range {
    fn of(a: IpAddr, b: IpAddr) -> Option<Range> {
        match (a, b) {
            (IpAddr::V4(a), IpAddr::V4(b)) => Some(Range {
                v6: false,
                start: u32::from(a).into(),
                end: u32::from(b).into(),
            }),
            (IpAddr::V6(a), IpAddr::V6(b)) => Some(Range {
                v6: true,
                start: a.into(),
                end: b.into(),
            }),
            _ => None,
        }
        .filter(|r| r.start <= r.end)
    }

    fn v4(start: u32, end: u32) -> Range {
        Range {
            v6: false,
            start: start.into(),
            end: end.into(),
        }
    }

    fn v6(start: u128, end: u128) -> Range {
        Range {
            v6: true,
            start,
            end,
        }
    }

    fn bits(&self) -> u32 {
        if self.v6 {
            128
        } else {
            32
        }
    }

    fn addr(&self, n: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(n))
        } else {
            // Never truncates: IPv4 ranges stay below 2^32.
            IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
        }
    }

    /// The smallest list of CIDR blocks covering exactly this range.
    fn to_cidrs(self) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        let mut start = self.start;
        loop {
            // The largest aligned block at `start` that ends within the range.
            let span = self.end - start; // block size - 1 must be <= span
            let fit = if span == u128::MAX {
                128
            } else {
                127 - (span + 1).leading_zeros()
            };
            let align = start.trailing_zeros().min(self.bits());
            let k = fit.min(align);
            let prefix = u8::try_from(self.bits() - k).unwrap_or(0);
            if let Ok(net) = ipnet::IpNet::new(self.addr(start), prefix) {
                out.push(net);
            }
            let size_minus_one = if k == 128 {
                u128::MAX
            } else {
                (1u128 << k) - 1
            };
            match start.checked_add(size_minus_one) {
                Some(last) if last < self.end => start = last + 1,
                _ => break,
            }
        }
        out
    }
}

/// `ranges` minus every range of `minus`, per family.
fn subtract(ranges: &[Range], minus: &[Range]) -> Vec<Range> {
    let mut cur: Vec<Range> = ranges.to_vec();
    for m in minus {
        let mut next = Vec::new();
        for r in cur {
            if r.v6 != m.v6 || m.end < r.start || m.start > r.end {
                next.push(r);
                continue;
            }
            if m.start > r.start {
                next.push(Range {
                    end: m.start - 1,
                    ..r
                });
            }
            if m.end < r.end {
                next.push(Range {
                    start: m.end + 1,
                    ..r
                });
            }
        }
        cur = next;
    }
    cur
}

/// Sorted, with overlapping and adjacent ranges of a family merged.
fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.sort();
    let mut out: Vec<Range> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(l) if l.v6 == r.v6 && r.start <= l.end.saturating_add(1) => {
                l.end = l.end.max(r.end);
            }
            _ => out.push(r),
        }
    }
    out
}

/// coturn's peer address forms: `IP`, `IP-IP` (inclusive) or `IP/LEN`.
fn parse_peer_range(o: &OptionLine<'_>) -> Result<Range, ImportError> {
    let v = need_value(o)?.trim();
    if let Some((a, b)) = v.split_once('-') {
        let ip = |s: &str| {
            s.trim()
                .parse::<IpAddr>()
                .map_err(|_| bad(o, format!("{s:?} in {v:?} is not an IP address")))
        };
        return Range::of(ip(a)?, ip(b)?).ok_or_else(|| {
            bad(
                o,
                format!("{v:?} is not a range (same address family, first <= last)"),
            )
        });
    }
    if v.contains('/') {
        let net: ipnet::IpNet = v
            .parse()
            .map_err(|_| bad(o, format!("{v:?} is not a CIDR block")))?;
        return Range::of(net.network(), net.broadcast())
            .ok_or_else(|| bad(o, format!("{v:?} is not a CIDR block")));
    }
    let ip: IpAddr = v.parse().map_err(|_| {
        bad(
            o,
            format!("{v:?} is not an IP address, range or CIDR block"),
        )
    })?;
    Range::of(ip, ip).ok_or_else(|| bad(o, format!("{v:?} is not an IP address")))
}

/// 127.0.0.0/8 and ::1.
fn loopback_ranges() -> Vec<Range> {
    vec![Range::v4(127 << 24, (128 << 24) - 1), Range::v6(1, 1)]
}

/// What coturn's `no-multicast-peers` refuses: 224.0.0.0 and above, and ff00::/8.
fn multicast_ranges() -> Vec<Range> {
    vec![
        Range::v4(224 << 24, u32::MAX),
        Range::v6(0xff00 << 112, u128::MAX),
    ]
}

/// What the option table says to do with an option name.
enum Rule {
    /// Handled by its own code in [`Importer::handle`].
    Map,
    /// A flag: on is already turnkey's behaviour (why).
    DefaultFlag(&'static str),
    /// A flag turnkey cannot honour when on (why).
    UnmappedFlag(&'static str),
    /// An option with a value turnkey has no key for (why).
    Unmapped(&'static str),
}

const WHY_USERDB: &str = "database user stores are not supported: use static users (user, or the TURNKEY_USERS env) or TURN REST secrets (auth_secret, or TURNKEY_AUTH_SECRETS)";
const WHY_CLI: &str = "coturn's telnet CLI has no turnkey counterpart: use the admin HTTP API instead (admin_listen, admin_token; `turn-server admin ...`), a different protocol, so it is not set up from the CLI's address or password";
const WHY_WEB_ADMIN: &str = "coturn's web admin has no turnkey counterpart: use the admin HTTP API instead (admin_listen, admin_token; `turn-server admin ...`)";
const WHY_LOG: &str = "turnkey logs to stderr (tracing; RUST_LOG sets the filter, log_json the format): route it with systemd/journald or the container runtime";
const WHY_RFC5780: &str = "turn-server does no RFC 5780 NAT behaviour discovery: run turnkey's stun-server with --alt-ip for that";
const WHY_TLS_ALTERNATE: &str = "turnkey has one alternate_server list for every transport: a TLS client is sent to the same servers (add the TLS servers there if they differ)";
const WHY_DEVICE: &str =
    "binding to a network device is not supported: use the device's address in listen / relay_ip";
const WHY_TLS_TUNING: &str = "not configurable: turnkey's TLS (rustls) uses its own safe cipher suites and curves, without finite-field DH, TLS 1.2 and 1.3 only";
const WHY_OAUTH: &str =
    "third-party authorization (oAuth, RFC 7635) is not supported yet: use TURN REST secrets";

/// The option table: every option coturn 4.6 documents (README.turnserver, turnserver.conf,
/// `turnserver -h`), with its aliases.
fn rule(name: &str) -> Option<Rule> {
    use Rule::*;
    Some(match name {
        "listening-ip" | "listening-port" | "tls-listening-port" | "aux-server" | "relay-ip"
        | "external-ip" | "min-port" | "max-port" | "realm" | "user" | "use-auth-secret"
        | "static-auth-secret" | "user-quota" | "total-quota" | "max-allocate-lifetime"
        | "stale-nonce" | "allowed-peer-ip" | "denied-peer-ip" | "allow-loopback-peers"
        | "no-multicast-peers" | "cert" | "pkey" | "prometheus" | "prometheus-port"
        | "no-software-attribute" | "prod" | "no-tls" | "no-dtls" | "relay-threads"
        | "channel-lifetime" | "permission-lifetime" | "rest-api-separator"
        | "allocation-default-address-family" | "max-bps" | "bps-capacity"
        | "alternate-server" | "mobility" | "multiplex-peer" => Map,
        "udp-recvmmsg" | "udp-sendmmsg" | "udp-gso" => DefaultFlag(
            "turnkey always batches UDP (recvmmsg, sendmmsg, and UDP GSO where the kernel has it)",
        ),
        "multiplex-peer-port" => Unmapped(
            "turnkey puts the shared relay sockets (relay_multiplex) on the lowest even ports of the relay range",
        ),
        "multiplex-peer-max-peers" => Unmapped(
            "turnkey allows 256 peer endpoints per allocation on a shared relay socket",
        ),
        "lt-cred-mech" => DefaultFlag(
            "turnkey always uses the long-term credential mechanism (RFC 8489 §9.2)",
        ),
        "no-loopback-peers" => DefaultFlag("turnkey refuses loopback peers by default"),
        "no-tcp-relay" => DefaultFlag(
            "turnkey has no TCP relay (RFC 6062), so TCP allocations are already refused",
        ),
        "fingerprint" => DefaultFlag(
            "turnkey adds FINGERPRINT to every response whose request had one (RFC 8489 §14.7)",
        ),
        "no-rfc5780" => DefaultFlag(
            "turn-server does no RFC 5780 NAT behaviour discovery (no OTHER-ADDRESS, no CHANGE-REQUEST)",
        ),
        "response-origin-only-with-rfc5780" => {
            DefaultFlag("turn-server never sends RESPONSE-ORIGIN (it does no RFC 5780)")
        }
        "no-tlsv1" | "no-tlsv1_1" | "no-sslv2" | "no-sslv3" => {
            DefaultFlag("turnkey's TLS (rustls) offers TLS 1.2 and 1.3 only, DTLS 1.2 only")
        }
        "no-cli" => DefaultFlag("turnkey has no telnet CLI"),
        "no-auth-pings" | "no-dynamic-ip-list" | "no-dynamic-realms" => DefaultFlag(
            "turnkey reads no database, so there is nothing dynamic to turn off",
        ),
        "prometheus-username-labels" => UnmappedFlag(
            "turnkey never labels metrics with user names (an unbounded label set)",
        ),
        "no-auth" => UnmappedFlag(
            "turnkey always authenticates allocations; anonymous relaying is not supported: add a user or auth_secret",
        ),
        "no-udp" => UnmappedFlag(
            "turnkey listens on UDP and TCP on every listen address; one of them cannot be turned off",
        ),
        "no-tcp" => UnmappedFlag(
            "turnkey listens on UDP and TCP on every listen address; one of them cannot be turned off",
        ),
        "no-udp-relay" => UnmappedFlag(
            "turnkey relays over UDP only; TCP relays (RFC 6062) are not supported yet",
        ),
        "no-stun" => UnmappedFlag("turn-server always answers STUN Binding requests"),
        "stun-only" => UnmappedFlag(
            "run turnkey's stun-server instead of turn-server for a STUN-only service",
        ),
        "secure-stun" => UnmappedFlag(
            "turnkey answers Binding requests without authentication (RFC 8489 §6.3.1); authenticated Binding is not supported",
        ),
        "no-stun-backward-compatibility" => UnmappedFlag(
            "turnkey already drops classic RFC 3489 requests (no magic cookie) but always puts MAPPED-ADDRESS next to XOR-MAPPED-ADDRESS; that cannot be turned off",
        ),
        "server-relay" => UnmappedFlag(
            "turnkey always checks permissions (RFC 8656 §9); relaying without them is not supported",
        ),
        "check-origin-consistency" => UnmappedFlag(
            "turnkey does not use the ORIGIN attribute",
        ),
        "udp-self-balance" => UnmappedFlag(
            "coturn's UDP self-balancing (ALTERNATE-SERVER among its own listeners) has no counterpart: turnkey spreads clients over workers with SO_REUSEPORT",
        ),
        "keep-address-family" => UnmappedFlag(
            "turnkey follows RFC 6156: IPv4 relays unless REQUESTED-ADDRESS-FAMILY asks for IPv6",
        ),
        "no-tlsv1_2" => UnmappedFlag(
            "turnkey's TLS and DTLS need version 1.2 (DTLS 1.2 is the only DTLS); it cannot be turned off",
        ),
        "dh566" | "dh1066" | "dh2066" => UnmappedFlag(WHY_TLS_TUNING),
        "oauth" => UnmappedFlag(WHY_OAUTH),
        "verbose" | "Verbose" => UnmappedFlag(
            "set the log filter with RUST_LOG (e.g. RUST_LOG=debug) instead",
        ),
        "daemon" => UnmappedFlag(
            "turnkey runs in the foreground: run it under systemd or a container runtime",
        ),
        "syslog" | "no-stdout-log" | "simple-log" | "new-log-timestamp" | "log-binding" => {
            UnmappedFlag(WHY_LOG)
        }
        "web-admin" | "web-admin-listen-on-workers" => UnmappedFlag(WHY_WEB_ADMIN),
        "log-file" | "syslog-facility" | "new-log-timestamp-format" => Unmapped(WHY_LOG),
        "pidfile" => Unmapped("turnkey writes no pid file: systemd tracks the main process"),
        "proc-user" | "proc-group" => Unmapped(
            "turnkey does not change user itself: start it as that user (systemd User=/Group=, with CAP_NET_BIND_SERVICE for ports below 1024)",
        ),
        "listening-device" | "listener-ifname" | "relay-device" | "relay-ifname" => {
            Unmapped(WHY_DEVICE)
        }
        "alt-listening-port" | "alt-listener-port" | "alt-tls-listening-port"
        | "alt-tls-listener-port" => Unmapped(WHY_RFC5780),
        "tcp-proxy-port" => Unmapped(
            "the PROXY protocol (v2) listener is not supported yet",
        ),
        "tls-alternate-server" => Unmapped(WHY_TLS_ALTERNATE),
        "max-allocate-timeout" => Unmapped(
            "turnkey has no allocation-establishment timeout setting",
        ),
        "userdb" | "db" | "sql-userdb" | "psql-userdb" | "mysql-userdb" | "mongo-userdb"
        | "redis-userdb" | "secret-key-file" => Unmapped(WHY_USERDB),
        "redis-statsdb" => Unmapped(
            "allocation status in Redis is not supported: scrape the metrics listener instead",
        ),
        "secret-ts-exp-time" => Unmapped(
            "deprecated in coturn; turnkey reads the expiry from the REST user name (<expiry>:<user>)",
        ),
        "server-name" => Unmapped(WHY_OAUTH),
        "pkey-pwd" => Unmapped(
            "encrypted private keys are not supported: decrypt it (openssl pkey -in KEY -out KEY.pem) and point key at the result",
        ),
        "cipher-list" | "ec-curve-name" | "dh-file" => Unmapped(WHY_TLS_TUNING),
        "CA-file" => Unmapped("client certificate verification is not supported"),
        "cli-ip" | "cli-port" | "cli-password" | "cli-max-output-sessions" => Unmapped(WHY_CLI),
        "web-admin-ip" | "web-admin-port" => Unmapped(WHY_WEB_ADMIN),
        "acme-redirect" => Unmapped(
            "turnkey has no HTTP listener on its TURN ports: serve ACME challenges elsewhere",
        ),
        "ne" => Unmapped("coturn-internal network engine choice; not applicable to turnkey"),
        _ => return None,
    })
}

/// The state collected while reading the file.
#[derive(Default)]
struct Importer {
    /// Every option occurrence: (line, option, outcome), in file order.
    records: Vec<(usize, String, Outcome)>,
    listening_ips: Vec<IpAddr>,
    listening_port: Option<u16>,
    tls_port: Option<(usize, u16)>,
    aux: Vec<SocketAddr>,
    relay_ips: Vec<IpAddr>,
    alternates: Vec<SocketAddr>,
    external_ips: Vec<String>,
    min_port: Option<(usize, u16)>,
    max_port: Option<(usize, u16)>,
    realm: Option<String>,
    users: Vec<String>,
    secrets: Vec<String>,
    use_auth_secret: Vec<usize>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    max_lifetime: Option<u64>,
    nonce_lifetime: Option<u64>,
    allow: Vec<Range>,
    deny: Vec<Range>,
    allow_loopback: bool,
    no_multicast: bool,
    cert: Option<String>,
    key: Option<String>,
    cert_lines: Vec<usize>,
    no_tls: bool,
    no_dtls: bool,
    prometheus: bool,
    prometheus_port: Option<u16>,
    software_off: bool,
    mobility: bool,
    multiplex: bool,
    allocation_bps: Option<u64>,
    total_bps: Option<u64>,
    workers: Option<usize>,
    /// Which lines fed each TOML key, for the comment above it.
    sources: Vec<(&'static str, usize, String)>,
}

impl Importer {
    fn record(&mut self, o: &OptionLine<'_>, outcome: Outcome) {
        self.records.push((o.line, o.name.to_string(), outcome));
    }

    fn mapped(&mut self, o: &OptionLine<'_>, keys: &[&'static str]) {
        for k in keys {
            self.sources.push((k, o.line, o.name.to_string()));
        }
        self.record(o, Outcome::Mapped(keys.join(", ")));
    }

    fn unmapped(&mut self, o: &OptionLine<'_>, why: impl Into<String>) {
        self.record(o, Outcome::Unmapped(why.into()));
    }

    fn already_default(&mut self, o: &OptionLine<'_>, why: impl Into<String>) {
        self.record(o, Outcome::AlreadyDefault(why.into()));
    }

    /// A flag that is off: coturn's default for every flag it has.
    fn flag_off(&mut self, o: &OptionLine<'_>) {
        self.already_default(
            o,
            "turned off, which is coturn's default: nothing to carry over",
        );
    }

    fn handle(&mut self, o: &OptionLine<'_>) -> Result<(), ImportError> {
        let Some(rule) = rule(o.name) else {
            self.unmapped(o, "unknown coturn option");
            return Ok(());
        };
        match rule {
            Rule::DefaultFlag(why) => {
                if parse_bool(o)? {
                    self.already_default(o, why);
                } else {
                    self.flag_off(o);
                }
            }
            Rule::UnmappedFlag(why) => {
                if parse_bool(o)? {
                    self.unmapped(o, why);
                } else {
                    self.flag_off(o);
                }
            }
            Rule::Unmapped(why) => self.unmapped(o, why),
            Rule::Map => self.handle_mapped(o)?,
        }
        Ok(())
    }

    fn handle_mapped(&mut self, o: &OptionLine<'_>) -> Result<(), ImportError> {
        match o.name {
            "listening-ip" => {
                let ip = parse_ip(o)?;
                self.listening_ips.push(ip);
                self.record(o, Outcome::Mapped("listen".into()));
            }
            "listening-port" => {
                self.listening_port = Some(parse_port(o)?);
                self.record(o, Outcome::Mapped("listen".into()));
            }
            "tls-listening-port" => {
                // Mapped or not is decided in `finish`, once cert/pkey/no-tls are known.
                self.tls_port = Some((o.line, parse_port(o)?));
                self.record(o, Outcome::Mapped(String::new()));
            }
            "aux-server" => {
                let a: SocketAddr =
                    parse_num(o, "an ADDRESS:PORT (1.2.3.4:5555 or [1:2::3:4]:5555)")?;
                self.aux.push(a);
                self.mapped(o, &["listen"]);
            }
            "alternate-server" => {
                // coturn: IP[:PORT], the port defaulting to 3478.
                let v = need_value(o)?.trim();
                let a = v.parse::<SocketAddr>().ok().or_else(|| {
                    v.parse::<IpAddr>()
                        .ok()
                        .map(|ip| SocketAddr::new(ip, COTURN_PORT))
                });
                match a {
                    Some(a) => {
                        self.alternates.push(a);
                        self.mapped(o, &["alternate_server"]);
                    }
                    None => self.unmapped(
                        o,
                        "turnkey needs IP or IP:PORT here, not a host name: resolve it and add alternate_server by hand",
                    ),
                }
            }
            "relay-ip" => {
                let ip = parse_ip(o)?;
                self.relay_ips.push(ip);
                self.mapped(o, &["relay_ip"]);
            }
            "external-ip" => {
                let v = need_value(o)?;
                let ok = match v.split_once('/') {
                    Some((p, l)) => {
                        let (p, l) = (p.parse::<IpAddr>(), l.parse::<IpAddr>());
                        matches!((p, l), (Ok(p), Ok(l)) if p.is_ipv4() == l.is_ipv4())
                    }
                    None => v.parse::<IpAddr>().is_ok(),
                };
                if ok {
                    self.external_ips.push(v.to_string());
                    self.mapped(o, &["external_ip"]);
                } else {
                    self.unmapped(
                        o,
                        "turnkey needs PUBLIC or PUBLIC/PRIVATE IP addresses of one family here, not host names: resolve them and add external_ip by hand",
                    );
                }
            }
            "min-port" => {
                self.min_port = Some((o.line, parse_port(o)?));
                self.mapped(o, &["min_port"]);
            }
            "max-port" => {
                self.max_port = Some((o.line, parse_port(o)?));
                self.mapped(o, &["max_port"]);
            }
            "realm" => {
                self.realm = Some(need_value(o)?.to_string());
                self.mapped(o, &["realm"]);
            }
            "user" => {
                let v = need_value(o)?;
                let Some((name, key)) = v.split_once(':') else {
                    return Err(bad(o, "must be NAME:PASSWORD (the value is not shown)".into()));
                };
                if name.is_empty() {
                    return Err(bad(o, "empty user name".into()));
                }
                if key.len() > 2 && key.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("0x")) {
                    self.unmapped(
                        o,
                        format!(
                            "user {name:?} has a turnadmin key (0x..., an MD5 of name, realm and password), not a password: turnkey needs the password itself; add user = \"{name}:PASSWORD\" by hand"
                        ),
                    );
                } else {
                    self.users.push(v.to_string());
                    self.mapped(o, &["user"]);
                }
            }
            "use-auth-secret" => {
                if parse_bool(o)? {
                    // Mapped if a static-auth-secret comes along; decided in `finish`.
                    self.use_auth_secret.push(self.records.len());
                    self.record(o, Outcome::Mapped("auth_secret".into()));
                } else {
                    self.flag_off(o);
                }
            }
            "static-auth-secret" => {
                self.secrets.push(need_value(o)?.to_string());
                self.mapped(o, &["auth_secret"]);
            }
            "user-quota" | "total-quota" => {
                let n: u32 = parse_num(o, "a number of allocations")?;
                if n == 0 {
                    self.unmapped(
                        o,
                        "0 means unlimited in coturn; turnkey has no unlimited quota and keeps its default (user_quota 64, total_quota 100000): set a large number if needed",
                    );
                } else if o.name == "user-quota" {
                    self.user_quota = Some(n);
                    self.mapped(o, &["user_quota"]);
                } else {
                    self.total_quota = Some(n);
                    self.mapped(o, &["total_quota"]);
                }
            }
            "max-allocate-lifetime" => {
                let n: u64 = parse_num(o, "a number of seconds")?;
                if n == 0 {
                    self.already_default(o, "0 keeps the default (3600 s) in coturn, as in turnkey");
                } else {
                    self.max_lifetime = Some(n);
                    self.mapped(o, &["max_lifetime"]);
                }
            }
            "stale-nonce" => match o.value.map(str::parse::<u64>) {
                Some(Ok(0)) => self.unmapped(
                    o,
                    "0 means nonces never expire in coturn; turnkey always expires them (nonce_lifetime, default 600 s)",
                ),
                Some(Ok(n)) => {
                    self.nonce_lifetime = Some(n);
                    self.mapped(o, &["nonce_lifetime"]);
                }
                _ => {
                    if parse_bool(o)? {
                        self.nonce_lifetime = Some(COTURN_STALE_NONCE_SECS);
                        self.mapped(o, &["nonce_lifetime"]);
                    } else {
                        self.flag_off(o);
                    }
                }
            },
            "allowed-peer-ip" => {
                self.allow.push(parse_peer_range(o)?);
                self.mapped(o, &["allow_peer", "deny_peer"]);
            }
            "denied-peer-ip" => {
                self.deny.push(parse_peer_range(o)?);
                self.mapped(o, &["deny_peer"]);
            }
            "allow-loopback-peers" => {
                if parse_bool(o)? {
                    self.allow_loopback = true;
                    self.mapped(o, &["allow_peer"]);
                } else {
                    self.already_default(o, "turnkey refuses loopback peers by default");
                }
            }
            "no-multicast-peers" => {
                if parse_bool(o)? {
                    self.no_multicast = true;
                    self.already_default(o, "turnkey refuses multicast and broadcast peers by default");
                } else {
                    self.flag_off(o);
                }
            }
            "cert" | "pkey" => {
                let v = need_value(o)?.to_string();
                if o.name == "cert" {
                    self.cert = Some(v);
                } else {
                    self.key = Some(v);
                }
                // Mapped or not is decided in `finish`: turnkey needs both.
                self.cert_lines.push(self.records.len());
                self.record(o, Outcome::Mapped(String::new()));
            }
            "no-tls" | "no-dtls" => {
                let on = parse_bool(o)?;
                if o.name == "no-tls" {
                    self.no_tls = on;
                } else {
                    self.no_dtls = on;
                }
                let key = if o.name == "no-tls" {
                    "tls_listen"
                } else {
                    "dtls_listen"
                };
                let detail = if on {
                    format!("{key} (left out)")
                } else {
                    key.to_string()
                };
                self.record(o, Outcome::Mapped(detail));
            }
            "prometheus" => {
                self.prometheus = parse_bool(o)?;
                if self.prometheus {
                    self.mapped(o, &["metrics"]);
                } else {
                    self.flag_off(o);
                }
            }
            "prometheus-port" => {
                self.prometheus_port = Some(parse_port(o)?);
                self.mapped(o, &["metrics"]);
            }
            "mobility" => {
                if parse_bool(o)? {
                    self.mobility = true;
                    self.mapped(o, &["mobility"]);
                } else {
                    self.flag_off(o);
                }
            }
            "multiplex-peer" => {
                if parse_bool(o)? {
                    self.multiplex = true;
                    self.mapped(o, &["relay_multiplex"]);
                } else {
                    self.flag_off(o);
                }
            }
            "no-software-attribute" | "prod" => {
                if parse_bool(o)? {
                    self.software_off = true;
                    self.mapped(o, &["software"]);
                } else {
                    self.flag_off(o);
                }
            }
            "relay-threads" => {
                let n: usize = parse_num(o, "a number of threads")?;
                self.workers = Some(n.max(1));
                self.mapped(o, &["workers"]);
            }
            "channel-lifetime" | "permission-lifetime" => {
                let n: u64 = parse_num(o, "a number of seconds")?;
                let fixed = if o.name == "channel-lifetime" {
                    CHANNEL_LIFETIME_SECS
                } else {
                    PERMISSION_LIFETIME_SECS
                };
                if n == fixed || n == 0 {
                    self.already_default(o, format!("turnkey uses the RFC 8656 value, {fixed} s"));
                } else {
                    self.unmapped(
                        o,
                        format!("fixed at the RFC 8656 value ({fixed} s) in turnkey; not configurable"),
                    );
                }
            }
            "max-bps" | "bps-capacity" => {
                // coturn counts bytes per second, turnkey bits per second of payload, each
                // direction on its own as coturn does.
                let v: u64 = parse_num(o, "a number of bytes per second")?;
                if v == 0 {
                    self.already_default(o, "0 means no bandwidth limit, as in turnkey");
                } else if o.name == "max-bps" {
                    self.allocation_bps = Some(v.saturating_mul(8));
                    self.mapped(o, &["bandwidth_allocation_bps"]);
                } else {
                    self.total_bps = Some(v.saturating_mul(8));
                    self.mapped(o, &["bandwidth_total_bps"]);
                }
            }
            "rest-api-separator" => {
                if need_value(o)?.starts_with(':') {
                    self.already_default(o, "turnkey's REST user names are <expiry>:<user> too");
                } else {
                    self.unmapped(
                        o,
                        "turnkey's REST user names are <expiry>:<user> (draft-uberti-behave-turn-rest-00); another separator is not supported",
                    );
                }
            }
            "allocation-default-address-family" => {
                if need_value(o)?.eq_ignore_ascii_case("ipv4") {
                    self.already_default(o, "turnkey relays over IPv4 unless REQUESTED-ADDRESS-FAMILY asks for IPv6 (RFC 6156 §4.2)");
                } else {
                    self.unmapped(
                        o,
                        "turnkey follows RFC 6156 §4.2: IPv4 relays unless REQUESTED-ADDRESS-FAMILY asks for IPv6",
                    );
                }
            }
            _ => self.unmapped(o, "unknown coturn option"),
        }
        Ok(())
    }

    fn set_outcome(&mut self, index: usize, outcome: Outcome, key: Option<&'static str>) {
        if let Some((line, option, slot)) = self.records.get_mut(index) {
            *slot = outcome;
            if let Some(k) = key {
                self.sources.push((k, *line, option.clone()));
            }
        }
    }

    /// Resolves what depends on several lines, then writes the TOML.
    fn finish(mut self) -> Result<Import, ImportError> {
        if let (Some((_, min)), Some((line, max))) = (self.min_port, self.max_port) {
            if min > max {
                return Err(ImportError::BadValue {
                    line,
                    option: "max-port".into(),
                    reason: format!("relay port range {min}-{max} is empty"),
                });
            }
        }
        let mut notes = Vec::new();

        // Listeners: every listening-ip on listening-port, plus aux-server endpoints.
        let port = self.listening_port.unwrap_or(COTURN_PORT);
        let ips: Vec<IpAddr> = if self.listening_ips.is_empty() {
            notes.push(format!(
                "coturn without listening-ip listens on every IPv4 and IPv6 address; this listens on 0.0.0.0 (IPv4) only: add \"[::]:{port}\" to listen for IPv6"
            ));
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
        } else {
            self.listening_ips.clone()
        };
        let mut listen: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect();
        listen.extend(self.aux.iter().copied());
        for (line, option, outcome) in &self.records {
            if matches!(option.as_str(), "listening-ip" | "listening-port") {
                if let Outcome::Mapped(_) = outcome {
                    self.sources.push(("listen", *line, option.clone()));
                }
            }
        }

        // TLS and DTLS: only with both cert and pkey.
        let tls_files = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        };
        for i in std::mem::take(&mut self.cert_lines) {
            let (outcome, key) = if tls_files.is_some() {
                let key = if self.records[i].1 == "cert" {
                    "cert"
                } else {
                    "key"
                };
                (Outcome::Mapped(key.into()), Some(key))
            } else {
                (
                    Outcome::Unmapped(
                        "turnkey needs both cert and pkey for TLS/DTLS; only one is set".into(),
                    ),
                    None,
                )
            };
            self.set_outcome(i, outcome, key);
        }
        let tls_port = self.tls_port.map_or(COTURN_TLS_PORT, |(_, p)| p);
        let secure = |off: bool| -> Vec<SocketAddr> {
            if off || tls_files.is_none() {
                Vec::new()
            } else {
                ips.iter()
                    .map(|ip| SocketAddr::new(*ip, tls_port))
                    .collect()
            }
        };
        let tls_listen = secure(self.no_tls);
        let dtls_listen = secure(self.no_dtls);
        if tls_files.is_none() && (!self.no_tls || !self.no_dtls) {
            notes.push(
                "coturn starts TLS and DTLS listeners with its default turn_server_cert.pem / turn_server_pkey.pem when no cert/pkey is set; turnkey needs both files, so there is no tls_listen / dtls_listen".into(),
            );
        }
        if self.tls_port.is_some() {
            let (outcome, keys): (Outcome, &[&'static str]) = match (
                tls_listen.is_empty(),
                dtls_listen.is_empty(),
            ) {
                (false, false) => (
                    Outcome::Mapped("tls_listen, dtls_listen".into()),
                    &["tls_listen", "dtls_listen"],
                ),
                (false, true) => (Outcome::Mapped("tls_listen".into()), &["tls_listen"]),
                (true, false) => (Outcome::Mapped("dtls_listen".into()), &["dtls_listen"]),
                (true, true) if tls_files.is_none() => (
                    Outcome::Unmapped("no TLS/DTLS listener without both cert and pkey".into()),
                    &[],
                ),
                (true, true) => (
                    Outcome::AlreadyDefault(
                        "no-tls and no-dtls are set: no TLS/DTLS listener, as turnkey's default"
                            .into(),
                    ),
                    &[],
                ),
            };
            for (line, option, slot) in &mut self.records {
                if option == "tls-listening-port" {
                    *slot = outcome.clone();
                    for k in keys {
                        self.sources.push((k, *line, option.clone()));
                    }
                }
            }
        }
        if !tls_listen.is_empty() || !dtls_listen.is_empty() {
            for (line, option, outcome) in &mut self.records {
                if option == "listening-ip" {
                    *outcome = Outcome::Mapped("listen, tls_listen, dtls_listen".into());
                    self.sources.push(("tls_listen", *line, option.clone()));
                }
            }
        }

        // REST secrets: use-auth-secret alone (secrets in coturn's database) carries nothing.
        if self.secrets.is_empty() {
            for i in std::mem::take(&mut self.use_auth_secret) {
                self.set_outcome(
                    i,
                    Outcome::Unmapped(
                        "no static-auth-secret: coturn took the secrets from its database (turn_secret); put them in auth_secret or TURNKEY_AUTH_SECRETS".into(),
                    ),
                    None,
                );
            }
        } else {
            for i in std::mem::take(&mut self.use_auth_secret) {
                self.set_outcome(
                    i,
                    Outcome::Mapped("auth_secret".into()),
                    Some("auth_secret"),
                );
            }
        }
        if self.users.is_empty() && self.secrets.is_empty() {
            notes.push(
                "no user and no static-auth-secret was imported: turnkey refuses every allocation until you set user / auth_secret (or TURNKEY_USERS / TURNKEY_AUTH_SECRETS)".into(),
            );
        }
        if self.realm.is_none() {
            notes.push(
                "no realm: coturn defaulted to the host's domain name, turnkey defaults to \"turnkey\"; set realm if your clients or users depend on it".into(),
            );
        }

        // Peers, with coturn's rules: an allowed-peer-ip beats a denied-peer-ip; allowed ones
        // never lift the loopback (unless allow-loopback-peers) or multicast refusal. The
        // lists written do not overlap, so turnkey's longest-prefix rule agrees.
        let deny = normalize(subtract(&self.deny, &self.allow));
        let mut lifted = Vec::new();
        if !self.allow_loopback {
            lifted.extend(loopback_ranges());
        }
        if self.no_multicast {
            lifted.extend(multicast_ranges());
        }
        let mut allow = subtract(&self.allow, &lifted);
        if self.allow_loopback {
            allow.extend(subtract(&loopback_ranges(), &deny));
        }
        let allow = normalize(allow);
        let allow_peer: Vec<ipnet::IpNet> = allow.into_iter().flat_map(Range::to_cidrs).collect();
        let deny_peer: Vec<ipnet::IpNet> = deny.into_iter().flat_map(Range::to_cidrs).collect();
        notes.push(
            "turnkey refuses private (RFC 1918, CGNAT, ULA), loopback, link-local, multicast and reserved peer addresses by default, where coturn refuses only loopback: add allow_peer for ranges your clients must reach through the relay".into(),
        );

        let metrics = (self.prometheus || self.prometheus_port.is_some()).then(|| {
            let ip = if self.prometheus {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::LOCALHOST)
            };
            SocketAddr::new(ip, self.prometheus_port.unwrap_or(COTURN_PROMETHEUS_PORT))
        });
        if !self.alternates.is_empty() {
            notes.push(
                "alternate_server: coturn sends every allocation to the alternate servers; turnkey serves them itself and sends new ones there only while draining (`turn-server admin drain start`, SIGTERM) or from alternate_over_allocations live allocations".into(),
            );
        }
        if !self.prometheus {
            notes.push(
                "turnkey always serves /metrics and /healthz (default 127.0.0.1:9641); coturn's exporter was off".into(),
            );
        }
        if !self.users.is_empty() || !self.secrets.is_empty() {
            notes.push(
                "this file holds secrets (user, auth_secret): keep it private (chmod 600), or move them to the TURNKEY_USERS / TURNKEY_AUTH_SECRETS environment variables (comma-separated) and delete them here".into(),
            );
        }

        // Write the TOML.
        let mut keys = Keys::default();
        keys.list("listen", listen.iter().map(|a| toml_str(&a.to_string())));
        keys.list(
            "alternate_server",
            self.alternates.iter().map(|a| toml_str(&a.to_string())),
        );
        keys.list(
            "tls_listen",
            tls_listen.iter().map(|a| toml_str(&a.to_string())),
        );
        keys.list(
            "dtls_listen",
            dtls_listen.iter().map(|a| toml_str(&a.to_string())),
        );
        if let Some((c, k)) = &tls_files {
            keys.one("cert", toml_str(c));
            keys.one("key", toml_str(k));
        }
        keys.list(
            "relay_ip",
            self.relay_ips.iter().map(|a| toml_str(&a.to_string())),
        );
        keys.list("external_ip", self.external_ips.iter().map(|s| toml_str(s)));
        if let Some((_, p)) = self.min_port {
            keys.one("min_port", p.to_string());
        }
        if let Some((_, p)) = self.max_port {
            keys.one("max_port", p.to_string());
        }
        if let Some(r) = &self.realm {
            keys.one("realm", toml_str(r));
        }
        keys.list("user", self.users.iter().map(|s| toml_str(s)));
        keys.list("auth_secret", self.secrets.iter().map(|s| toml_str(s)));
        keys.list(
            "allow_peer",
            allow_peer.iter().map(|n| toml_str(&n.to_string())),
        );
        keys.list(
            "deny_peer",
            deny_peer.iter().map(|n| toml_str(&n.to_string())),
        );
        if let Some(n) = self.user_quota {
            keys.one("user_quota", n.to_string());
        }
        if let Some(n) = self.total_quota {
            keys.one("total_quota", n.to_string());
        }
        if let Some(n) = self.max_lifetime {
            keys.one("max_lifetime", n.to_string());
        }
        if let Some(n) = self.nonce_lifetime {
            keys.one("nonce_lifetime", n.to_string());
        }
        if let Some(m) = metrics {
            keys.one("metrics", toml_str(&m.to_string()));
        }
        if self.software_off {
            keys.one("software", toml_str(""));
        }
        if let Some(b) = self.allocation_bps {
            keys.one("bandwidth_allocation_bps", b.to_string());
        }
        if let Some(b) = self.total_bps {
            keys.one("bandwidth_total_bps", b.to_string());
        }
        if self.mobility {
            keys.one("mobility", "true".to_string());
        }
        if self.multiplex {
            // coturn shares one socket per relay thread and family.
            keys.one("relay_multiplex", "1".to_string());
        }
        if let Some(n) = self.workers {
            keys.one("workers", n.to_string());
        }

        let mut import = Import {
            toml: String::new(),
            mapped: Vec::new(),
            already_default: Vec::new(),
            unmapped: Vec::new(),
            notes,
        };
        for (line, option, outcome) in self.records {
            match outcome {
                Outcome::Mapped(keys) => import.mapped.push(Mapped { option, line, keys }),
                Outcome::AlreadyDefault(why) => {
                    import.already_default.push(Unmapped { option, line, why })
                }
                Outcome::Unmapped(why) => import.unmapped.push(Unmapped { option, line, why }),
            }
        }
        import.toml = render(&import, &keys, &self.sources);
        Ok(import)
    }
}

/// TOML keys in the order written: (key, value text).
#[derive(Default)]
struct Keys(Vec<(&'static str, String)>);

impl Keys {
    fn one(&mut self, key: &'static str, value: String) {
        self.0.push((key, value));
    }

    fn list(&mut self, key: &'static str, values: impl Iterator<Item = String>) {
        let values: Vec<String> = values.collect();
        if !values.is_empty() {
            self.0.push((key, format!("[{}]", values.join(", "))));
        }
    }
}

/// A TOML basic string (quoted, with `\`, `"` and control characters escaped).
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The whole TOML text: the header (what the comments mean), the record of every option, the
/// notes, then each key under a comment naming the coturn lines it came from.
fn render(import: &Import, keys: &Keys, sources: &[(&'static str, usize, String)]) -> String {
    let mut t = String::new();
    t.push_str(
        "# turn-server configuration imported from a coturn turnserver.conf by\n\
         # `turn-server import-coturn`. Review it, then run: turn-server --config THIS_FILE\n\
         #\n\
         # Every coturn option of the file, one line each (\"# KIND: line N: OPTION: DETAIL\"):\n\
         #   unmapped: NOT carried over; DETAIL says why and what to do instead\n\
         #   default:  turnkey already behaves so; nothing to set\n\
         #   mapped:   carried over to the keys named in DETAIL (below)\n\
         #\n",
    );
    for u in &import.unmapped {
        let _ = writeln!(t, "# unmapped: line {}: {}: {}", u.line, u.option, u.why);
    }
    for d in &import.already_default {
        let _ = writeln!(t, "# default: line {}: {}: {}", d.line, d.option, d.why);
    }
    for m in &import.mapped {
        let _ = writeln!(t, "# mapped: line {}: {}: {}", m.line, m.option, m.keys);
    }
    if !import.notes.is_empty() {
        t.push_str("#\n");
        for n in &import.notes {
            let _ = writeln!(t, "# note: {n}");
        }
    }
    for (key, value) in &keys.0 {
        t.push('\n');
        let from: BTreeSet<(usize, &str)> = sources
            .iter()
            .filter(|(k, _, _)| k == key)
            .map(|(_, l, o)| (*l, o.as_str()))
            .collect();
        if from.is_empty() {
            t.push_str("# coturn's default\n");
        } else {
            let list: Vec<String> = from
                .iter()
                .map(|(l, o)| format!("{o} (line {l})"))
                .collect();
            let _ = writeln!(t, "# from {}", list.join(", "));
        }
        let _ = writeln!(t, "{key} = {value}");
    }
    t
}

/// Translates a coturn `turnserver.conf` (its bytes) into turnkey's TOML.
///
/// Errors: a line that is not UTF-8, an option without a name, a missing or unreadable value
/// of an option that maps onto a turnkey key (a port, an address, a range, a quota, a boolean),
/// or an empty relay port range; each names the line. Unknown options are not errors: they are
/// [`Import::unmapped`] with "unknown coturn option".
pub fn import(text: &[u8]) -> Result<Import, ImportError> {
    let mut importer = Importer::default();
    for (i, raw) in text.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let s = std::str::from_utf8(raw).map_err(|_| ImportError::NotUtf8 { line })?;
        if let Some(o) = split_line(line, s)? {
            importer.handle(&o)?;
        }
    }
    importer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;

    fn run(text: &str) -> Import {
        import(text.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The TOML parsed as turn-server's own file config (unknown keys are errors).
    fn file(i: &Import) -> FileConfig {
        toml::from_str(&i.toml).unwrap_or_else(|e| panic!("{e}\n{}", i.toml))
    }

    fn why<'a>(list: &'a [Unmapped], option: &str) -> &'a str {
        list.iter()
            .find(|u| u.option == option)
            .map(|u| u.why.as_str())
            .unwrap_or_else(|| panic!("{option} not in {list:?}"))
    }

    fn nets(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn lines_split_like_coturn() {
        /// A line and the (name, value) coturn reads from it, if any.
        type Case<'a> = (&'a str, Option<(&'a str, Option<&'a str>)>);
        let cases: &[Case<'_>] = &[
            ("", None),
            ("   ", None),
            ("# listening-port=1", None),
            ("  #verbose", None),
            ("verbose", Some(("verbose", None))),
            (
                "listening-port=3478",
                Some(("listening-port", Some("3478"))),
            ),
            (
                "listening-port 3478",
                Some(("listening-port", Some("3478"))),
            ),
            (
                "listening-port = \t3478  ",
                Some(("listening-port", Some("3478"))),
            ),
            ("\trealm=a b#c", Some(("realm", Some("a b#c")))),
            (
                "new-log-timestamp-format \"%FT%T%z\"",
                Some(("new-log-timestamp-format", Some("%FT%T%z"))),
            ),
            (
                "cipher-list=\"DEFAULT\"  ",
                Some(("cipher-list", Some("DEFAULT"))),
            ),
            ("pidfile=\"/run/x", Some(("pidfile", Some("/run/x")))),
            ("user=\"\"", Some(("user", None))),
        ];
        for (text, want) in cases {
            let got = split_line(7, text).unwrap();
            let got = got.map(|o| (o.name, o.value));
            assert_eq!(got, *want, "{text:?}");
        }
        assert_eq!(
            split_line(3, "=3478").unwrap_err(),
            ImportError::NoName { line: 3 }
        );
    }

    #[test]
    fn each_mapped_option_lands_on_its_key() {
        let i = run("listening-ip=192.0.2.1\n\
             listening-ip=2001:db8::1\n\
             listening-port=3479\n\
             aux-server=192.0.2.1:33478\n\
             relay-ip=192.0.2.5\n\
             relay-ip=2001:db8::5\n\
             external-ip=203.0.113.9/192.0.2.5\n\
             min-port=50000\n\
             max-port=50100\n\
             realm=example.org\n\
             user=alice:wonderland\n\
             static-auth-secret=north\n\
             use-auth-secret\n\
             user-quota=10\n\
             total-quota=1000\n\
             max-allocate-lifetime=1800\n\
             stale-nonce=300\n\
             prometheus\n\
             prometheus-port=9700\n\
             no-software-attribute\n\
             multiplex-peer\n\
             relay-threads=4\n");
        let f = file(&i);
        assert_eq!(
            f.listen,
            vec![
                "192.0.2.1:3479".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:3479".parse().unwrap(),
                "192.0.2.1:33478".parse().unwrap(),
            ]
        );
        assert_eq!(
            f.relay_ip,
            vec![
                "192.0.2.5".parse::<IpAddr>().unwrap(),
                "2001:db8::5".parse().unwrap()
            ]
        );
        assert_eq!(f.external_ip, vec!["203.0.113.9/192.0.2.5".to_string()]);
        assert_eq!((f.min_port, f.max_port), (Some(50000), Some(50100)));
        assert_eq!(f.realm.as_deref(), Some("example.org"));
        assert_eq!(f.user, vec!["alice:wonderland".to_string()]);
        assert_eq!(f.auth_secret, vec!["north".to_string()]);
        assert_eq!((f.user_quota, f.total_quota), (Some(10), Some(1000)));
        assert_eq!(f.max_lifetime, Some(1800));
        assert_eq!(f.nonce_lifetime, Some(300));
        assert_eq!(f.metrics, Some("0.0.0.0:9700".parse().unwrap()));
        assert_eq!(f.software.as_deref(), Some(""));
        assert_eq!(f.workers, Some(4));
        assert_eq!(f.relay_multiplex, Some(1));
        assert!(f.tls_listen.is_empty() && f.dtls_listen.is_empty() && f.cert.is_none());
        assert!(i.unmapped.is_empty(), "{:?}", i.unmapped);
        assert_eq!(i.mapped.len(), 22);
        // The secrets are in the TOML (that is the point) but never in a record.
        let records = format!("{:?}{:?}{:?}", i.mapped, i.unmapped, i.notes);
        assert!(!records.contains("wonderland") && !records.contains("north"));
        assert!(i.notes.iter().any(|n| n.contains("TURNKEY_USERS")));
    }

    #[test]
    fn defaults_when_no_listener_is_named() {
        let i = run("realm=r\nuser=a:b\n");
        let f = file(&i);
        assert_eq!(
            f.listen,
            vec!["0.0.0.0:3478".parse::<SocketAddr>().unwrap()]
        );
        assert!(f.metrics.is_none());
        assert!(i.notes.iter().any(|n| n.contains("[::]:3478")));
    }

    #[test]
    fn tls_needs_cert_and_pkey_and_honours_no_tls_no_dtls() {
        let i = run("listening-ip=192.0.2.1\ntls-listening-port=443\ncert=/c.pem\npkey=/k.pem\n");
        let f = file(&i);
        let at443: Vec<SocketAddr> = vec!["192.0.2.1:443".parse().unwrap()];
        assert_eq!(f.tls_listen, at443);
        assert_eq!(f.dtls_listen, at443);
        assert_eq!(f.cert.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(f.key.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert!(i.unmapped.is_empty(), "{:?}", i.unmapped);

        let i = run("cert=/c.pem\npkey=/k.pem\nno-dtls\n");
        let f = file(&i);
        assert_eq!(
            f.tls_listen,
            vec!["0.0.0.0:5349".parse::<SocketAddr>().unwrap()]
        );
        assert!(f.dtls_listen.is_empty());

        let i = run("cert=/c.pem\npkey=/k.pem\nno-tls\nno-dtls=1\n");
        let f = file(&i);
        assert!(f.tls_listen.is_empty() && f.dtls_listen.is_empty());

        let i = run("cert=/c.pem\ntls-listening-port=5349\n");
        let f = file(&i);
        assert!(f.tls_listen.is_empty() && f.cert.is_none());
        assert!(why(&i.unmapped, "cert").contains("both"));
        assert!(why(&i.unmapped, "tls-listening-port").contains("cert"));
    }

    #[test]
    fn repeats_accumulate_or_the_last_wins() {
        let i = run("realm=first\nrealm=second\nuser=a:1\nuser=b:2\nstatic-auth-secret=s1\nstatic-auth-secret=s2\nmin-port=1000\nmin-port=2000\n");
        let f = file(&i);
        assert_eq!(f.realm.as_deref(), Some("second"));
        assert_eq!(f.user, vec!["a:1".to_string(), "b:2".to_string()]);
        assert_eq!(f.auth_secret, vec!["s1".to_string(), "s2".to_string()]);
        assert_eq!(f.min_port, Some(2000));
        assert_eq!(i.mapped.len(), 8);
    }

    #[test]
    fn ranges_become_exact_cidrs() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("10.0.0.1", "10.0.0.1", &["10.0.0.1/32"]),
            ("10.0.0.0", "10.0.0.255", &["10.0.0.0/24"]),
            (
                "10.0.0.1",
                "10.0.0.6",
                &["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"],
            ),
            ("83.166.64.0", "83.166.95.255", &["83.166.64.0/19"]),
            ("0.0.0.0", "255.255.255.255", &["0.0.0.0/0"]),
            ("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["::/0"]),
            (
                "2001:db8::",
                "2001:db8::2",
                &["2001:db8::/127", "2001:db8::2/128"],
            ),
            (
                "255.255.255.254",
                "255.255.255.255",
                &["255.255.255.254/31"],
            ),
        ];
        for (a, b, want) in cases {
            let r = Range::of(a.parse().unwrap(), b.parse().unwrap()).unwrap();
            assert_eq!(r.to_cidrs(), nets(want), "{a}-{b}");
        }
    }

    #[test]
    fn peer_lists_keep_coturns_rules() {
        // The example of coturn's turnserver.conf: a denied range with one allowed address.
        let i = run("denied-peer-ip=83.166.64.0-83.166.95.255\nallowed-peer-ip=83.166.68.45\n");
        let f = file(&i);
        assert_eq!(f.allow_peer, nets(&["83.166.68.45/32"]));
        assert_eq!(
            f.deny_peer,
            nets(&[
                "83.166.64.0/22",
                "83.166.68.0/27",
                "83.166.68.32/29",
                "83.166.68.40/30",
                "83.166.68.44/32",
                "83.166.68.46/31",
                "83.166.68.48/28",
                "83.166.68.64/26",
                "83.166.68.128/25",
                "83.166.69.0/24",
                "83.166.70.0/23",
                "83.166.72.0/21",
                "83.166.80.0/20",
            ])
        );
        // CIDR and single-address forms; IPv6; an allowed range never lifts loopback.
        let i = run("denied-peer-ip=2001:db8::/32\nallowed-peer-ip=127.0.0.0-127.0.0.255\nallowed-peer-ip=198.51.100.7\n");
        let f = file(&i);
        assert_eq!(f.deny_peer, nets(&["2001:db8::/32"]));
        assert_eq!(f.allow_peer, nets(&["198.51.100.7/32"]));
        // allow-loopback-peers lifts loopback, except what is denied.
        let i = run("allow-loopback-peers\ndenied-peer-ip=127.0.0.1\n");
        let f = file(&i);
        assert_eq!(f.deny_peer, nets(&["127.0.0.1/32"]));
        assert_eq!(
            f.allow_peer,
            nets(&[
                "127.0.0.0/32",
                "127.0.0.2/31",
                "127.0.0.4/30",
                "127.0.0.8/29",
                "127.0.0.16/28",
                "127.0.0.32/27",
                "127.0.0.64/26",
                "127.0.0.128/25",
                "127.0.1.0/24",
                "127.0.2.0/23",
                "127.0.4.0/22",
                "127.0.8.0/21",
                "127.0.16.0/20",
                "127.0.32.0/19",
                "127.0.64.0/18",
                "127.0.128.0/17",
                "127.1.0.0/16",
                "127.2.0.0/15",
                "127.4.0.0/14",
                "127.8.0.0/13",
                "127.16.0.0/12",
                "127.32.0.0/11",
                "127.64.0.0/10",
                "127.128.0.0/9",
                "::1/128"
            ])
        );
    }

    #[test]
    fn defaults_and_unmapped_say_why() {
        let i = run("lt-cred-mech\nno-loopback-peers\nno-multicast-peers\nno-tcp-relay\nfingerprint\nno-cli\n\
             max-bps=100\nalternate-server=1.2.3.4\ntls-alternate-server=1.2.3.4:5349\nmobility\ncli-password=qwerty\npsql-userdb=\"host=x password=y\"\n\
             no-udp\nno-tcp\nuser=ninefingers:0xbc807ee29df3c9ffa736523fb2c4e8ee\nsha512-please\nverbose=0\n\
             user-quota=0\nchannel-lifetime=600\npermission-lifetime=60\nuse-auth-secret\n");
        for o in [
            "lt-cred-mech",
            "no-loopback-peers",
            "no-multicast-peers",
            "no-tcp-relay",
            "fingerprint",
            "no-cli",
            "verbose",
            "channel-lifetime",
        ] {
            why(&i.already_default, o);
        }
        assert!(
            i.toml.contains("bandwidth_allocation_bps = 800"),
            "max-bps 100 B/s is 800 bit/s: {}",
            i.toml
        );
        assert!(why(&i.unmapped, "tls-alternate-server").contains("alternate_server"));
        assert!(
            i.toml.contains("alternate_server = [\"1.2.3.4:3478\"]"),
            "{}",
            i.toml
        );
        assert!(why(&i.unmapped, "cli-password").contains("CLI"));
        assert!(why(&i.unmapped, "psql-userdb").contains("static users"));
        assert!(why(&i.unmapped, "no-udp").contains("UDP and TCP"));
        assert!(why(&i.unmapped, "user").contains("ninefingers"));
        assert!(why(&i.unmapped, "sha512-please").contains("unknown coturn option"));
        assert!(why(&i.unmapped, "user-quota").contains("unlimited"));
        assert!(why(&i.unmapped, "permission-lifetime").contains("300"));
        assert!(why(&i.unmapped, "use-auth-secret").contains("database"));
        assert!(i.toml.contains("mobility = true"), "{}", i.toml);
        // Never the values: not the hashed key, not the CLI or database password.
        let shown = format!("{:?}{:?}", i.unmapped, i.toml);
        assert!(
            !shown.contains("0xbc807ee")
                && !shown.contains("qwerty")
                && !shown.contains("password=y")
        );
        // Everything is recorded once, in the TOML too.
        assert_eq!(
            i.mapped.len() + i.already_default.len() + i.unmapped.len(),
            21
        );
        let file = file(&i);
        assert!(file.user.is_empty());
        for u in &i.unmapped {
            let line = format!("# unmapped: line {}: {}: {}", u.line, u.option, u.why);
            assert!(i.toml.contains(&line), "{line}\n{}", i.toml);
        }
    }

    #[test]
    fn bad_lines_name_the_line() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"realm=x\nlistening-port=abc\n", 2, "listening-port"),
            (b"listening-port=0\n", 1, "port 0"),
            (b"listening-ip=example.org\n", 1, "IP address"),
            (b"\n\nmin-port\n", 3, "needs a value"),
            (b"denied-peer-ip=10.0.0.9-10.0.0.1\n", 1, "range"),
            (b"denied-peer-ip=10.0.0.1-::1\n", 1, "range"),
            (b"allowed-peer-ip=10.0.0.0/33\n", 1, "CIDR"),
            (b"min-port=60000\nmax-port=50000\n", 2, "empty"),
            (b"user=nocolon\n", 1, "NAME:PASSWORD"),
            (b"no-tls=maybe\n", 1, "boolean"),
            (b"# ok\nrealm=\xff\xfe\n", 2, "UTF-8"),
            (b"total-quota=-1\n", 1, "number"),
            (b"=x\n", 1, "no option name"),
        ];
        for (text, line, says) in cases {
            let e = import(text).unwrap_err();
            assert_eq!(e.line(), *line, "{e}");
            let shown = e.to_string();
            assert!(
                shown.contains(says) && shown.starts_with(&format!("line {line}:")),
                "{shown}"
            );
        }
        // A bad user value is not echoed.
        let e = import(b"user=secretnocolon\n").unwrap_err().to_string();
        assert!(!e.contains("secretnocolon"), "{e}");
    }

    #[test]
    fn strings_are_escaped_for_toml() {
        let i = run("realm=a\"b\\c\nuser=x:p\"w\\d\n");
        let f = file(&i);
        assert_eq!(f.realm.as_deref(), Some("a\"b\\c"));
        assert_eq!(f.user, vec!["x:p\"w\\d".to_string()]);
        assert_eq!(toml_str("a\u{1}"), "\"a\\u0001\"");
    }

    #[test]
    fn crlf_and_no_final_newline() {
        let i = run("realm=x\r\nlistening-port=4000");
        let f = file(&i);
        assert_eq!(f.realm.as_deref(), Some("x"));
        assert_eq!(
            f.listen,
            vec!["0.0.0.0:4000".parse::<SocketAddr>().unwrap()]
        );
    }
}
