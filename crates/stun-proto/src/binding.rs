//! The Binding method: what a STUN server answers to a Binding request (RFC 8489 §6.3, §7.3),
//! plus the NAT behaviour discovery attributes of RFC 5780 §7 when the server has an alternate
//! IP address and port.
//!
//! Sans-IO: [`handle_datagram`] (and [`handle_binding`] for an already decoded message, which the
//! TURN server uses) take the request bytes and where they came from and return the reply bytes
//! together with the socket to send them from and the destination. Nothing here touches a socket.
//!
//! Choices, each documented where it applies:
//! - Requests without the magic cookie (RFC 3489 "classic STUN") are dropped, not answered
//!   ([`BindingDrop::Rfc3489`]): [`msg::decode`] requires the cookie, and RFC 3489 clients are
//!   not in use by WebRTC stacks. MAPPED-ADDRESS is still included in every success response for
//!   clients that read it, and so that RFC 5780 clients can detect address-rewriting ALGs.
//! - FINGERPRINT is added to a response when the request carried one (RFC 8489 §14.7).
//! - A CHANGE-REQUEST with no flag set is accepted everywhere (some clients always send one);
//!   with a flag set and no RFC 5780 addresses configured it is answered 420 listing it
//!   (RFC 5780 §7.2; coturn answers the same).
//! - CHANGE-REQUEST with a flag, RESPONSE-PORT and PADDING only make sense over UDP; over any
//!   other transport they get a 400, as coturn does, rather than a success that a client would
//!   misread as a filtering result.

use super::msg::{self, AttrType, DecodeError, MessageBuilder, PacketKind, Transport};
use rtc_stun::attributes::{
    ATTR_CHANGE_REQUEST, ATTR_FINGERPRINT, ATTR_MAPPED_ADDRESS, ATTR_MESSAGE_INTEGRITY,
    ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_NONCE, ATTR_OTHER_ADDRESS, ATTR_PADDING,
    ATTR_PASSWORD_ALGORITHM, ATTR_PRIORITY, ATTR_REALM, ATTR_RESPONSE_ORIGIN, ATTR_RESPONSE_PORT,
    ATTR_USERNAME, ATTR_USER_HASH, ATTR_USE_CANDIDATE, ATTR_XORMAPPED_ADDRESS,
};
use rtc_stun::message::{
    Message, CLASS_ERROR_RESPONSE, CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE,
    MESSAGE_HEADER_SIZE, METHOD_BINDING,
};
use std::net::{IpAddr, SocketAddr};

/// CHANGE-REQUEST flag asking for the reply from the other IP address (RFC 5780 §7.2).
pub const CHANGE_IP_FLAG: u8 = 0x04;
/// CHANGE-REQUEST flag asking for the reply from the other port (RFC 5780 §7.2).
pub const CHANGE_PORT_FLAG: u8 = 0x02;
/// Largest PADDING value put in a response, in bytes. The response PADDING is as long as the
/// request's, up to this, so a response is never much larger than the request that caused it
/// (RFC 5780 §7.6 suggests the outgoing MTU; copying the request keeps the server from being a
/// reflection amplifier).
pub const MAX_PADDING_BYTES: usize = 1500;

/// Comprehension-required attributes a Binding request may carry that the server understands
/// without acting on them: the credential attributes (a STUN server authenticates nothing) and
/// the ICE ones (RFC 8445 §16.1), as in connectivity checks sent to a server by mistake.
const KNOWN_ATTRIBUTES: [AttrType; 10] = [
    ATTR_USERNAME,
    ATTR_MESSAGE_INTEGRITY,
    ATTR_MESSAGE_INTEGRITY_SHA256,
    ATTR_REALM,
    ATTR_NONCE,
    ATTR_USER_HASH,
    ATTR_PASSWORD_ALGORITHM,
    ATTR_PRIORITY,
    ATTR_USE_CANDIDATE,
    // Accepted even without RFC 5780 when no flag is set; see the module docs.
    ATTR_CHANGE_REQUEST,
];

/// How the server answers Binding requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingConfig {
    /// SOFTWARE attribute value for every response (RFC 8489 §14.14); `None` leaves it out.
    pub software: Option<String>,
    /// The server's RFC 5780 addresses; `None` when it has no alternate IP address, in which
    /// case OTHER-ADDRESS, RESPONSE-ORIGIN, RESPONSE-PORT and PADDING are not supported.
    pub rfc5780: Option<Rfc5780Addrs>,
}

/// The four addresses of an RFC 5780 server: primary/alternate IP × primary/alternate port
/// (RFC 5780 §4.2). The server listens (UDP) on all four combinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rfc5780Addrs {
    /// The primary IP address (the one clients are configured with).
    pub primary_ip: IpAddr,
    /// The alternate IP address, same family as `primary_ip`.
    pub alt_ip: IpAddr,
    /// The primary port.
    pub primary_port: u16,
    /// The alternate port.
    pub alt_port: u16,
}

impl Rfc5780Addrs {
    /// The four socket addresses, in the order primary IP/primary port, primary IP/alternate
    /// port, alternate IP/primary port, alternate IP/alternate port.
    pub fn sockets(&self) -> [SocketAddr; 4] {
        [
            SocketAddr::new(self.primary_ip, self.primary_port),
            SocketAddr::new(self.primary_ip, self.alt_port),
            SocketAddr::new(self.alt_ip, self.primary_port),
            SocketAddr::new(self.alt_ip, self.alt_port),
        ]
    }

    /// True when `local` is one of the four addresses.
    pub fn contains(&self, local: SocketAddr) -> bool {
        self.sockets().contains(&local)
    }

    /// The address a reply leaves from when a request arrived on `local` and asked for `via`
    /// (RFC 5780 §7.2: the change is relative to the address the request was received on).
    /// `None` when `local` is not one of the four addresses.
    pub fn resolve(&self, local: SocketAddr, via: ResponseSocket) -> Option<SocketAddr> {
        if !self.contains(local) {
            return None;
        }
        let other_ip = if local.ip() == self.primary_ip {
            self.alt_ip
        } else {
            self.primary_ip
        };
        let other_port = if local.port() == self.primary_port {
            self.alt_port
        } else {
            self.primary_port
        };
        Some(match via {
            ResponseSocket::Same => local,
            ResponseSocket::ChangeIp => SocketAddr::new(other_ip, local.port()),
            ResponseSocket::ChangePort => SocketAddr::new(local.ip(), other_port),
            ResponseSocket::ChangeIpAndPort => SocketAddr::new(other_ip, other_port),
        })
    }

    /// OTHER-ADDRESS for a request received on `local`: the address differing in both IP and
    /// port (RFC 5780 §7.3). `None` when `local` is not one of the four addresses.
    pub fn other_address(&self, local: SocketAddr) -> Option<SocketAddr> {
        self.resolve(local, ResponseSocket::ChangeIpAndPort)
    }
}

/// Where a request came from and arrived: one half of its 5-tuple each, plus the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// The client's address as the server sees it: the server-reflexive address returned in
    /// XOR-MAPPED-ADDRESS.
    pub source: SocketAddr,
    /// The server address the request arrived on. Must be the specific address (not a wildcard)
    /// for RFC 5780 processing, which only applies when it is one of [`Rfc5780Addrs::sockets`].
    pub local: SocketAddr,
    /// The transport the request arrived over.
    pub transport: Transport,
}

/// Which of the server's sockets sends a reply, relative to the one the request arrived on
/// (RFC 5780 §7.2). Anything other than `Same` only occurs over UDP with RFC 5780 configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseSocket {
    /// The socket the request arrived on.
    Same,
    /// Other IP address, same port.
    ChangeIp,
    /// Same IP address, other port.
    ChangePort,
    /// Other IP address and other port.
    ChangeIpAndPort,
}

impl ResponseSocket {
    /// The socket selected by CHANGE-REQUEST flags ([`CHANGE_IP_FLAG`], [`CHANGE_PORT_FLAG`]).
    pub fn from_flags(flags: u8) -> Self {
        match (flags & CHANGE_IP_FLAG != 0, flags & CHANGE_PORT_FLAG != 0) {
            (false, false) => ResponseSocket::Same,
            (true, false) => ResponseSocket::ChangeIp,
            (false, true) => ResponseSocket::ChangePort,
            (true, true) => ResponseSocket::ChangeIpAndPort,
        }
    }
}

/// What the server should do with a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum BindingOutcome {
    /// Send a response.
    Reply(BindingReply),
    /// Send nothing; the reason is a metrics label.
    Drop(BindingDrop),
}

impl BindingOutcome {
    /// The reply, if any.
    pub fn reply(&self) -> Option<&BindingReply> {
        match self {
            BindingOutcome::Reply(r) => Some(r),
            BindingOutcome::Drop(_) => None,
        }
    }
}

/// A response to send.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct BindingReply {
    /// The socket to send from, relative to the one the request arrived on.
    pub via: ResponseSocket,
    /// The destination: the request's source, or its IP with the RESPONSE-PORT port
    /// (RFC 5780 §7.5). On a stream transport always the request's source (the connection).
    pub to: SocketAddr,
    /// Whether this is a success or which error; a metrics label.
    pub result: BindingResult,
    /// The encoded STUN response.
    pub bytes: Vec<u8>,
}

/// The kind of response sent (metrics label `result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BindingResult {
    /// A Binding success response.
    Success,
    /// 400 Bad Request: malformed RFC 5780 attribute, RFC 5780 attribute over a transport
    /// other than UDP, PADDING with RESPONSE-PORT, or a request for a method other than Binding.
    BadRequest,
    /// 420 Unknown Attribute (RFC 8489 §6.3.1.1).
    UnknownAttribute,
}

impl BindingResult {
    /// Its slot in counters: the position in [`BindingResult::ALL`] (declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every result.
    pub const ALL: [BindingResult; 3] = [
        BindingResult::Success,
        BindingResult::BadRequest,
        BindingResult::UnknownAttribute,
    ];

    /// The metrics label: `success`, `bad_request`, `unknown_attribute`.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingResult::Success => "success",
            BindingResult::BadRequest => "bad_request",
            BindingResult::UnknownAttribute => "unknown_attribute",
        }
    }

    /// The STUN error code, `None` for a success.
    pub fn error_code(self) -> Option<u16> {
        match self {
            BindingResult::Success => None,
            BindingResult::BadRequest => Some(400),
            BindingResult::UnknownAttribute => Some(420),
        }
    }
}

/// Why a packet gets no reply (metrics label `reason`). RFC 8489 §6.3: messages that fail the
/// checks are silently discarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BindingDrop {
    /// Looks like STUN but fails decoding: bad length, attribute framing or FINGERPRINT.
    Malformed,
    /// Not STUN at all (top bits set, wrong cookie, too short).
    NotStun,
    /// An RFC 3489 Binding request without the magic cookie; not supported.
    Rfc3489,
    /// An indication (e.g. a Binding indication keepalive): never answered (RFC 8489 §6.3.2).
    Indication,
    /// A success or error response: a server has no transaction it could match.
    Response,
}

impl BindingDrop {
    /// Its slot in counters: the position in [`BindingDrop::ALL`] (declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Every reason.
    pub const ALL: [BindingDrop; 5] = [
        BindingDrop::Malformed,
        BindingDrop::NotStun,
        BindingDrop::Rfc3489,
        BindingDrop::Indication,
        BindingDrop::Response,
    ];

    /// The metrics label: `malformed`, `not_stun`, `rfc3489`, `indication`, `response`.
    pub fn as_str(self) -> &'static str {
        match self {
            BindingDrop::Malformed => "malformed",
            BindingDrop::NotStun => "not_stun",
            BindingDrop::Rfc3489 => "rfc3489",
            BindingDrop::Indication => "indication",
            BindingDrop::Response => "response",
        }
    }
}

impl From<&DecodeError> for BindingDrop {
    fn from(e: &DecodeError) -> Self {
        match e {
            DecodeError::NotStun | DecodeError::TooShort => BindingDrop::NotStun,
            _ => BindingDrop::Malformed,
        }
    }
}

/// Decodes `bytes` (one whole datagram, or one whole frame from a stream) with
/// [`msg::decode`] and answers it with [`handle_binding`]. Never panics.
pub fn handle_datagram(bytes: &[u8], ctx: &RequestContext, cfg: &BindingConfig) -> BindingOutcome {
    if is_rfc3489_binding_request(bytes) {
        return BindingOutcome::Drop(BindingDrop::Rfc3489);
    }
    match msg::decode(bytes) {
        Ok(m) => handle_binding(&m, ctx, cfg),
        Err(e) => BindingOutcome::Drop(BindingDrop::from(&e)),
    }
}

/// An RFC 3489 Binding request: type 0x0001, a consistent length, and no magic cookie.
fn is_rfc3489_binding_request(b: &[u8]) -> bool {
    b.len() >= MESSAGE_HEADER_SIZE
        && msg::classify(b) != PacketKind::Stun
        && b[0..2] == [0x00, 0x01]
        && u16::from_be_bytes([b[2], b[3]]) as usize + MESSAGE_HEADER_SIZE == b.len()
}

/// Answers a decoded STUN message `m` received as described by `ctx` (RFC 8489 §6.3).
///
/// - Binding request: success with XOR-MAPPED-ADDRESS (§14.2) and MAPPED-ADDRESS (§14.1) set to
///   `ctx.source`; with RFC 5780 configured and `ctx.local` one of its addresses, also
///   RESPONSE-ORIGIN and (over UDP) OTHER-ADDRESS, CHANGE-REQUEST selecting the socket,
///   RESPONSE-PORT the destination port and PADDING echoed (RFC 5780 §7.2-§7.6). Then SOFTWARE
///   and, if the request had one, FINGERPRINT.
/// - Unknown comprehension-required attributes: 420 with UNKNOWN-ATTRIBUTES (§6.3.1.1).
/// - Invalid RFC 5780 usage or a request for another method: 400.
/// - Indications and responses: dropped.
pub fn handle_binding(m: &Message, ctx: &RequestContext, cfg: &BindingConfig) -> BindingOutcome {
    if m.typ.class == CLASS_INDICATION {
        return BindingOutcome::Drop(BindingDrop::Indication);
    }
    if m.typ.class == CLASS_SUCCESS_RESPONSE || m.typ.class == CLASS_ERROR_RESPONSE {
        return BindingOutcome::Drop(BindingDrop::Response);
    }
    debug_assert!(m.typ.class == CLASS_REQUEST);
    if m.typ.method != METHOD_BINDING {
        return error(
            m,
            ctx,
            cfg,
            BindingResult::BadRequest,
            "Unsupported method",
            &[],
        );
    }

    // RFC 5780 applies when configured and the request arrived on one of the four addresses.
    let rfc5780 = cfg.rfc5780.filter(|r| r.contains(ctx.local));

    let mut known: Vec<AttrType> = KNOWN_ATTRIBUTES.to_vec();
    if rfc5780.is_some() {
        known.extend([ATTR_RESPONSE_PORT, ATTR_PADDING]);
    }
    let mut unknown = msg::unknown_required(m, &known);

    let change_flags = match msg::attr(m, ATTR_CHANGE_REQUEST) {
        None => 0,
        Some(v) if v.len() == 4 => v[3] & (CHANGE_IP_FLAG | CHANGE_PORT_FLAG),
        Some(_) => {
            return error(
                m,
                ctx,
                cfg,
                BindingResult::BadRequest,
                "Malformed CHANGE-REQUEST",
                &[],
            )
        }
    };
    if change_flags != 0 && rfc5780.is_none() {
        unknown.push(ATTR_CHANGE_REQUEST);
    }
    if !unknown.is_empty() {
        return error(
            m,
            ctx,
            cfg,
            BindingResult::UnknownAttribute,
            "Unknown Attribute",
            &unknown,
        );
    }

    let response_port = match msg::attr(m, ATTR_RESPONSE_PORT) {
        None => None,
        // RFC 5780 §7.5: a 16-bit port followed by 2 bytes of padding.
        Some(v) if v.len() == 4 && v[..2] != [0, 0] => Some(u16::from_be_bytes([v[0], v[1]])),
        Some(_) => {
            return error(
                m,
                ctx,
                cfg,
                BindingResult::BadRequest,
                "Malformed RESPONSE-PORT",
                &[],
            )
        }
    };
    let padding = msg::attr(m, ATTR_PADDING).map(|v| v.len().min(MAX_PADDING_BYTES));
    let udp = ctx.transport == Transport::Udp;
    if !udp && (change_flags != 0 || response_port.is_some() || padding.is_some()) {
        return error(
            m,
            ctx,
            cfg,
            BindingResult::BadRequest,
            "CHANGE-REQUEST, RESPONSE-PORT and PADDING apply to UDP only",
            &[],
        );
    }
    if response_port.is_some() && padding.is_some() {
        return error(
            m,
            ctx,
            cfg,
            BindingResult::BadRequest,
            "PADDING and RESPONSE-PORT cannot be used together",
            &[],
        );
    }

    let via = ResponseSocket::from_flags(change_flags);
    let to = match response_port {
        Some(port) => SocketAddr::new(ctx.source.ip(), port),
        None => ctx.source,
    };

    let mut b = MessageBuilder::success(m);
    b.xor_address(ATTR_XORMAPPED_ADDRESS, ctx.source)
        .address(ATTR_MAPPED_ADDRESS, ctx.source);
    if let Some(r) = rfc5780 {
        // `contains(ctx.local)` holds, so both resolve.
        if let Some(origin) = r.resolve(ctx.local, via) {
            b.address(ATTR_RESPONSE_ORIGIN, origin);
        }
        if udp {
            if let Some(other) = r.other_address(ctx.local) {
                b.address(ATTR_OTHER_ADDRESS, other);
            }
        }
    }
    if let Some(len) = padding {
        b.raw(ATTR_PADDING, &vec![0; len]);
    }
    finish(&mut b, m, cfg);
    BindingOutcome::Reply(BindingReply {
        via,
        to,
        result: BindingResult::Success,
        bytes: b.finish(),
    })
}

/// Appends SOFTWARE and, when the request had one, FINGERPRINT.
fn finish(b: &mut MessageBuilder, req: &Message, cfg: &BindingConfig) {
    if let Some(s) = &cfg.software {
        b.software(s);
    }
    if req.contains(ATTR_FINGERPRINT) {
        b.fingerprint();
    }
}

/// An error response from the socket the request arrived on, to its source.
fn error(
    m: &Message,
    ctx: &RequestContext,
    cfg: &BindingConfig,
    result: BindingResult,
    reason: &str,
    unknown: &[AttrType],
) -> BindingOutcome {
    let code = result.error_code().unwrap_or(500);
    let mut b = MessageBuilder::error(m, code, reason);
    if !unknown.is_empty() {
        b.unknown_attributes(unknown);
    }
    finish(&mut b, m, cfg);
    BindingOutcome::Reply(BindingReply {
        via: ResponseSocket::Same,
        to: ctx.source,
        result,
        bytes: b.finish(),
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use crate::msg::{verify_integrity, IntegrityAlgorithm};
    use md5::{Digest, Md5};
    use rtc_stun::attributes::{
        ATTR_ERROR_CODE, ATTR_ICE_CONTROLLED, ATTR_SOFTWARE, ATTR_UNKNOWN_ATTRIBUTES,
    };
    use rtc_stun::message::{
        MessageType, TransactionId, BINDING_REQUEST, BINDING_SUCCESS, CLASS_INDICATION,
        METHOD_ALLOCATE,
    };

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // RFC 5769 §2.1-§2.4, copied from the RFC's hex dumps.
    const RFC5769_REQUEST: &str = "
        0001 0058 2112a442 b7e7a701 bc34d686 fa87dfae
        8022 0010 5354554e 20746573 7420636c 69656e74
        0024 0004 6e0001ff
        8029 0008 932ff9b1 51263b36
        0006 0009 6576746a 3a683676 59202020
        0008 0014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
        8028 0004 e57a3bcf";
    const RFC5769_IPV4_RESPONSE: &str = "
        0101 003c 2112a442 b7e7a701 bc34d686 fa87dfae
        8022 000b 74657374 20766563 746f7220
        0020 0008 0001a147 e112a643
        0008 0014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
        8028 0004 c07d4c96";
    const RFC5769_IPV6_RESPONSE: &str = "
        0101 0048 2112a442 b7e7a701 bc34d686 fa87dfae
        8022 000b 74657374 20766563 746f7220
        0020 0014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
        0008 0014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
        8028 0004 c8fb0b4c";
    const RFC5769_LONG_TERM_REQUEST: &str = "
        0001 0060 2112a442 78ad3433 c6ad72c0 29da412e
        0006 0012 e3839ee3 8388e383 aae38383 e382afe3 82b90000
        0015 001c 662f2f34 39396b39 35346436 4f4c3334 6f4c3946 53547679 36347341
        0014 000b 6578616d 706c652e 6f726700
        0008 0014 f6702465 6dd64a3e 02b8e071 2e85c9a2 8ca89666";
    const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

    fn tid_of(b: &[u8]) -> TransactionId {
        let mut t = [0u8; 12];
        t.copy_from_slice(&b[8..20]);
        TransactionId(t)
    }

    fn udp_ctx(source: &str, local: &str) -> RequestContext {
        RequestContext {
            source: source.parse().unwrap(),
            local: local.parse().unwrap(),
            transport: Transport::Udp,
        }
    }

    fn rfc5780() -> Rfc5780Addrs {
        Rfc5780Addrs {
            primary_ip: "192.0.2.10".parse().unwrap(),
            alt_ip: "192.0.2.20".parse().unwrap(),
            primary_port: 3478,
            alt_port: 3479,
        }
    }

    fn cfg(rfc: Option<Rfc5780Addrs>) -> BindingConfig {
        BindingConfig {
            software: Some("turnkey-test".into()),
            rfc5780: rfc,
        }
    }

    fn request(build: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
        let mut b = MessageBuilder::new(BINDING_REQUEST, TransactionId::new());
        build(&mut b);
        b.finish()
    }

    fn reply(o: BindingOutcome) -> (BindingReply, Message) {
        match o {
            BindingOutcome::Reply(r) => {
                let m = msg::decode(&r.bytes).expect("our reply decodes");
                (r, m)
            }
            BindingOutcome::Drop(d) => panic!("expected a reply, got drop {d:?}"),
        }
    }

    fn plain_addr(m: &Message, t: AttrType) -> Option<SocketAddr> {
        let mut a = rtc_stun::addr::MappedAddress::default();
        a.get_from_as(m, t).ok()?;
        Some(SocketAddr::new(a.ip, a.port))
    }

    fn error_code(m: &Message) -> Option<u16> {
        let v = msg::attr(m, ATTR_ERROR_CODE)?;
        Some(v[2] as u16 * 100 + v[3] as u16)
    }

    #[test]
    fn rfc5769_sample_request() {
        let raw = hex(RFC5769_REQUEST);
        let m = msg::decode(&raw).expect("vector decodes, FINGERPRINT ok");
        assert_eq!(m.typ, BINDING_REQUEST);
        assert_eq!(msg::text_attr(&m, ATTR_SOFTWARE), Some("STUN test client"));
        assert_eq!(msg::text_attr(&m, ATTR_USERNAME), Some("evtj:h6vY"));
        assert_eq!(
            msg::attr(&m, ATTR_PRIORITY),
            Some(&[0x6e, 0x00, 0x01, 0xff][..])
        );
        assert!(verify_integrity(
            &m,
            SHORT_TERM_PASSWORD,
            IntegrityAlgorithm::Sha1
        ));
        assert!(!verify_integrity(
            &m,
            b"VOkJxbRl1RmTxUk/WvJxBT",
            IntegrityAlgorithm::Sha1
        ));

        // Rebuilt from its parts, byte for byte (padding with spaces as the RFC does).
        let mut b = MessageBuilder::new(BINDING_REQUEST, tid_of(&raw));
        b.raw_padded(ATTR_SOFTWARE, b"STUN test client", b' ')
            .raw(ATTR_PRIORITY, &[0x6e, 0x00, 0x01, 0xff])
            .raw(ATTR_ICE_CONTROLLED, &hex("932ff9b1 51263b36"))
            .raw_padded(ATTR_USERNAME, b"evtj:h6vY", b' ')
            .integrity(SHORT_TERM_PASSWORD, IntegrityAlgorithm::Sha1)
            .fingerprint();
        assert_eq!(b.finish(), raw);

        // The server answers it (PRIORITY is understood) with a FINGERPRINT, since it had one.
        let (r, resp) = reply(handle_datagram(
            &raw,
            &udp_ctx("192.0.2.1:32853", "192.0.2.10:3478"),
            &cfg(None),
        ));
        assert_eq!(r.result, BindingResult::Success);
        assert_eq!(resp.transaction_id, m.transaction_id);
        assert!(resp.contains(ATTR_FINGERPRINT));
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let raw = hex(RFC5769_IPV4_RESPONSE);
        let m = msg::decode(&raw).expect("vector decodes, FINGERPRINT ok");
        assert_eq!(m.typ, BINDING_SUCCESS);
        let mapped: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        assert_eq!(msg::xor_address(&m, ATTR_XORMAPPED_ADDRESS), Some(mapped));
        assert_eq!(msg::text_attr(&m, ATTR_SOFTWARE), Some("test vector"));
        assert!(verify_integrity(
            &m,
            SHORT_TERM_PASSWORD,
            IntegrityAlgorithm::Sha1
        ));

        // What we build for the same inputs is the vector, byte for byte.
        let mut b = MessageBuilder::new(BINDING_SUCCESS, tid_of(&raw));
        b.raw_padded(ATTR_SOFTWARE, b"test vector", b' ')
            .xor_address(ATTR_XORMAPPED_ADDRESS, mapped)
            .integrity(SHORT_TERM_PASSWORD, IntegrityAlgorithm::Sha1)
            .fingerprint();
        assert_eq!(b.finish(), raw);
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let raw = hex(RFC5769_IPV6_RESPONSE);
        let m = msg::decode(&raw).expect("vector decodes, FINGERPRINT ok");
        assert_eq!(m.typ, BINDING_SUCCESS);
        let mapped: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        assert_eq!(msg::xor_address(&m, ATTR_XORMAPPED_ADDRESS), Some(mapped));
        assert_eq!(msg::text_attr(&m, ATTR_SOFTWARE), Some("test vector"));
        assert!(verify_integrity(
            &m,
            SHORT_TERM_PASSWORD,
            IntegrityAlgorithm::Sha1
        ));

        let mut b = MessageBuilder::new(BINDING_SUCCESS, tid_of(&raw));
        b.raw_padded(ATTR_SOFTWARE, b"test vector", b' ')
            .xor_address(ATTR_XORMAPPED_ADDRESS, mapped)
            .integrity(SHORT_TERM_PASSWORD, IntegrityAlgorithm::Sha1)
            .fingerprint();
        assert_eq!(b.finish(), raw);
    }

    #[test]
    fn rfc5769_long_term_request() {
        let raw = hex(RFC5769_LONG_TERM_REQUEST);
        let m = msg::decode(&raw).expect("vector decodes");
        assert_eq!(m.typ, BINDING_REQUEST);
        let username = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";
        assert_eq!(msg::text_attr(&m, ATTR_USERNAME), Some(username));
        assert_eq!(
            msg::text_attr(&m, ATTR_NONCE),
            Some("f//499k954d6OL34oL9FSTvy64sA")
        );
        assert_eq!(msg::text_attr(&m, ATTR_REALM), Some("example.org"));
        // The password "The<U+00AD>M<U+00AA>tr<U+2168>" is "TheMatrIX" after SASLprep.
        let key = Md5::digest(format!("{username}:example.org:TheMatrIX").as_bytes());
        assert!(verify_integrity(&m, &key, IntegrityAlgorithm::Sha1));
        assert!(!verify_integrity(
            &m,
            SHORT_TERM_PASSWORD,
            IntegrityAlgorithm::Sha1
        ));

        let mut b = MessageBuilder::new(BINDING_REQUEST, tid_of(&raw));
        b.raw(ATTR_USERNAME, username.as_bytes())
            .raw(ATTR_NONCE, b"f//499k954d6OL34oL9FSTvy64sA")
            .raw(ATTR_REALM, b"example.org")
            .integrity(&key, IntegrityAlgorithm::Sha1);
        assert_eq!(b.finish(), raw);

        // A STUN server authenticates nothing: the credential attributes are understood and
        // ignored; no FINGERPRINT since the request had none.
        let (r, resp) = reply(handle_datagram(
            &raw,
            &udp_ctx("192.0.2.1:32853", "192.0.2.10:3478"),
            &cfg(None),
        ));
        assert_eq!(r.result, BindingResult::Success);
        assert!(!resp.contains(ATTR_FINGERPRINT));
    }

    #[test]
    fn tampered_vector_is_dropped() {
        let mut raw = hex(RFC5769_REQUEST);
        raw[30] ^= 0x01; // inside SOFTWARE: FINGERPRINT no longer matches
        let o = handle_datagram(&raw, &udp_ctx("192.0.2.1:1", "192.0.2.10:3478"), &cfg(None));
        assert_eq!(o, BindingOutcome::Drop(BindingDrop::Malformed));
    }

    #[test]
    fn success_round_trip_v4_and_v6() {
        for (source, local) in [
            ("203.0.113.7:54321", "192.0.2.10:3478"),
            ("[2001:db8::7]:54321", "[2001:db8::10]:3478"),
        ] {
            let ctx = udp_ctx(source, local);
            for with_fingerprint in [false, true] {
                let req = request(|b| {
                    if with_fingerprint {
                        b.fingerprint();
                    }
                });
                let (r, m) = reply(handle_datagram(&req, &ctx, &cfg(None)));
                assert_eq!(r.via, ResponseSocket::Same);
                assert_eq!(r.to, ctx.source);
                assert_eq!(r.result, BindingResult::Success);
                assert_eq!(m.typ, BINDING_SUCCESS);
                assert_eq!(m.transaction_id, msg::decode(&req).unwrap().transaction_id);
                assert_eq!(
                    msg::xor_address(&m, ATTR_XORMAPPED_ADDRESS),
                    Some(ctx.source)
                );
                assert_eq!(plain_addr(&m, ATTR_MAPPED_ADDRESS), Some(ctx.source));
                assert_eq!(msg::text_attr(&m, ATTR_SOFTWARE), Some("turnkey-test"));
                assert_eq!(m.contains(ATTR_FINGERPRINT), with_fingerprint);
                assert!(!m.contains(ATTR_OTHER_ADDRESS));
                assert!(!m.contains(ATTR_RESPONSE_ORIGIN));
            }
        }
    }

    #[test]
    fn no_software_when_not_configured() {
        let req = request(|_| {});
        let (_, m) = reply(handle_datagram(
            &req,
            &udp_ctx("203.0.113.7:1", "192.0.2.10:3478"),
            &BindingConfig::default(),
        ));
        assert!(!m.contains(ATTR_SOFTWARE));
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        let req = request(|b| {
            b.raw(AttrType(0x7777), b"x")
                .raw(AttrType(0x8888), b"optional is fine")
                .fingerprint();
        });
        let (r, m) = reply(handle_datagram(
            &req,
            &udp_ctx("203.0.113.7:1", "192.0.2.10:3478"),
            &cfg(None),
        ));
        assert_eq!(r.result, BindingResult::UnknownAttribute);
        assert_eq!(r.via, ResponseSocket::Same);
        assert_eq!(m.typ.class, CLASS_ERROR_RESPONSE);
        assert_eq!(m.typ.method, METHOD_BINDING);
        assert_eq!(error_code(&m), Some(420));
        assert_eq!(
            msg::attr(&m, ATTR_UNKNOWN_ATTRIBUTES),
            Some(&[0x77, 0x77][..])
        );
        assert!(m.contains(ATTR_FINGERPRINT));
    }

    #[test]
    fn indications_and_responses_are_dropped() {
        let ctx = udp_ctx("203.0.113.7:1", "192.0.2.10:3478");
        let ind = MessageBuilder::indication(METHOD_BINDING).finish();
        assert_eq!(
            handle_datagram(&ind, &ctx, &cfg(None)),
            BindingOutcome::Drop(BindingDrop::Indication)
        );
        assert_eq!(msg::decode(&ind).unwrap().typ.class, CLASS_INDICATION);
        let resp = MessageBuilder::new(BINDING_SUCCESS, TransactionId::new()).finish();
        assert_eq!(
            handle_datagram(&resp, &ctx, &cfg(None)),
            BindingOutcome::Drop(BindingDrop::Response)
        );
    }

    #[test]
    fn other_methods_get_400() {
        let req = MessageBuilder::new(
            MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
            TransactionId::new(),
        )
        .finish();
        let (r, m) = reply(handle_datagram(
            &req,
            &udp_ctx("203.0.113.7:1", "192.0.2.10:3478"),
            &cfg(None),
        ));
        assert_eq!(r.result, BindingResult::BadRequest);
        assert_eq!(m.typ.method, METHOD_ALLOCATE);
        assert_eq!(error_code(&m), Some(400));
    }

    #[test]
    fn classic_stun_and_garbage_are_dropped() {
        let ctx = udp_ctx("203.0.113.7:1", "192.0.2.10:3478");
        // RFC 3489: type 0x0001, length 0, 16-byte transaction id, no cookie.
        let mut classic = vec![0x00, 0x01, 0x00, 0x00];
        classic.extend_from_slice(&[0x5a; 16]);
        assert_eq!(
            handle_datagram(&classic, &ctx, &cfg(None)),
            BindingOutcome::Drop(BindingDrop::Rfc3489)
        );
        for garbage in [
            &b""[..],
            b"\x16\x03\x01\x00\x05hello",
            b"GET / HTTP/1.1\r\n\r\n",
            &[0u8; 19],
        ] {
            assert_eq!(
                handle_datagram(garbage, &ctx, &cfg(None)),
                BindingOutcome::Drop(BindingDrop::NotStun),
                "{garbage:?}"
            );
        }
        let mut bad_len = request(|_| {});
        bad_len[3] = 4; // claims an attribute that is not there
        assert_eq!(
            handle_datagram(&bad_len, &ctx, &cfg(None)),
            BindingOutcome::Drop(BindingDrop::Malformed)
        );
    }

    fn change_request(flags: u8) -> Vec<u8> {
        request(|b| {
            b.raw(ATTR_CHANGE_REQUEST, &[0, 0, 0, flags]);
        })
    }

    #[test]
    fn change_request_without_rfc5780() {
        let ctx = udp_ctx("203.0.113.7:1", "192.0.2.10:3478");
        // No flag: accepted (some clients always send one).
        let (r, _) = reply(handle_datagram(&change_request(0), &ctx, &cfg(None)));
        assert_eq!(r.result, BindingResult::Success);
        for flags in [
            CHANGE_IP_FLAG,
            CHANGE_PORT_FLAG,
            CHANGE_IP_FLAG | CHANGE_PORT_FLAG,
        ] {
            let (r, m) = reply(handle_datagram(&change_request(flags), &ctx, &cfg(None)));
            assert_eq!(r.result, BindingResult::UnknownAttribute);
            assert_eq!(error_code(&m), Some(420));
            assert_eq!(
                msg::attr(&m, ATTR_UNKNOWN_ATTRIBUTES),
                Some(&[0x00, 0x03][..])
            );
        }
        // RESPONSE-PORT and PADDING are unknown too without RFC 5780.
        let req = request(|b| {
            b.raw(ATTR_RESPONSE_PORT, &[0x12, 0x34, 0, 0])
                .raw(ATTR_PADDING, &[0; 8]);
        });
        let (_, m) = reply(handle_datagram(&req, &ctx, &cfg(None)));
        assert_eq!(error_code(&m), Some(420));
        assert_eq!(
            msg::attr(&m, ATTR_UNKNOWN_ATTRIBUTES),
            Some(&[0x00, 0x27, 0x00, 0x26][..])
        );
    }

    #[test]
    fn rfc5780_addresses_resolve_relative_to_the_receiving_socket() {
        let r = rfc5780();
        let [pp, pa, ap, aa] = r.sockets();
        assert_eq!(r.other_address(pp), Some(aa));
        assert_eq!(r.other_address(aa), Some(pp));
        assert_eq!(r.other_address(pa), Some(ap));
        assert_eq!(r.resolve(ap, ResponseSocket::ChangePort), Some(aa));
        assert_eq!(r.resolve(ap, ResponseSocket::ChangeIp), Some(pp));
        assert_eq!(r.resolve(pa, ResponseSocket::Same), Some(pa));
        assert_eq!(
            r.resolve("192.0.2.10:9999".parse().unwrap(), ResponseSocket::Same),
            None
        );
    }

    #[test]
    fn change_request_with_rfc5780() {
        let r = rfc5780();
        let [pp, pa, ap, aa] = r.sockets();
        let cases = [
            (0, ResponseSocket::Same, pp),
            (CHANGE_IP_FLAG, ResponseSocket::ChangeIp, ap),
            (CHANGE_PORT_FLAG, ResponseSocket::ChangePort, pa),
            (
                CHANGE_IP_FLAG | CHANGE_PORT_FLAG,
                ResponseSocket::ChangeIpAndPort,
                aa,
            ),
        ];
        let ctx = RequestContext {
            source: "203.0.113.7:40000".parse().unwrap(),
            local: pp,
            transport: Transport::Udp,
        };
        for (flags, via, origin) in cases {
            let (rep, m) = reply(handle_datagram(&change_request(flags), &ctx, &cfg(Some(r))));
            assert_eq!(rep.result, BindingResult::Success);
            assert_eq!(rep.via, via);
            assert_eq!(rep.to, ctx.source);
            assert_eq!(plain_addr(&m, ATTR_RESPONSE_ORIGIN), Some(origin));
            assert_eq!(plain_addr(&m, ATTR_OTHER_ADDRESS), Some(aa));
            assert_eq!(
                msg::xor_address(&m, ATTR_XORMAPPED_ADDRESS),
                Some(ctx.source)
            );
        }
        // Arriving on the alternate socket: OTHER-ADDRESS is the primary one.
        let ctx = RequestContext { local: aa, ..ctx };
        let (rep, m) = reply(handle_datagram(
            &change_request(CHANGE_PORT_FLAG),
            &ctx,
            &cfg(Some(r)),
        ));
        assert_eq!(rep.via, ResponseSocket::ChangePort);
        assert_eq!(plain_addr(&m, ATTR_RESPONSE_ORIGIN), Some(ap));
        assert_eq!(plain_addr(&m, ATTR_OTHER_ADDRESS), Some(pp));
        // A listener outside the four addresses answers as a plain server.
        let ctx = RequestContext {
            local: "198.51.100.1:3478".parse().unwrap(),
            ..ctx
        };
        let (rep, m) = reply(handle_datagram(&request(|_| {}), &ctx, &cfg(Some(r))));
        assert_eq!(rep.result, BindingResult::Success);
        assert!(!m.contains(ATTR_OTHER_ADDRESS));
    }

    #[test]
    fn malformed_change_request_gets_400() {
        let req = request(|b| {
            b.raw(ATTR_CHANGE_REQUEST, &[CHANGE_IP_FLAG]);
        });
        let ctx = udp_ctx("203.0.113.7:1", "192.0.2.10:3478");
        let (r, m) = reply(handle_datagram(&req, &ctx, &cfg(Some(rfc5780()))));
        assert_eq!(r.result, BindingResult::BadRequest);
        assert_eq!(error_code(&m), Some(400));
    }

    #[test]
    fn rfc5780_over_tcp() {
        let r = rfc5780();
        let ctx = RequestContext {
            source: "203.0.113.7:40000".parse().unwrap(),
            local: r.sockets()[0],
            transport: Transport::Tcp,
        };
        // Plain request: RESPONSE-ORIGIN but no OTHER-ADDRESS (no TCP listeners there).
        let (rep, m) = reply(handle_datagram(&change_request(0), &ctx, &cfg(Some(r))));
        assert_eq!(rep.result, BindingResult::Success);
        assert_eq!(rep.via, ResponseSocket::Same);
        assert_eq!(plain_addr(&m, ATTR_RESPONSE_ORIGIN), Some(ctx.local));
        assert!(!m.contains(ATTR_OTHER_ADDRESS));
        // Asking for a change cannot be honoured on a connection.
        let (rep, m) = reply(handle_datagram(
            &change_request(CHANGE_IP_FLAG),
            &ctx,
            &cfg(Some(r)),
        ));
        assert_eq!(rep.result, BindingResult::BadRequest);
        assert_eq!(rep.via, ResponseSocket::Same);
        assert_eq!(error_code(&m), Some(400));
    }

    #[test]
    fn response_port_and_padding() {
        let r = rfc5780();
        let ctx = RequestContext {
            source: "203.0.113.7:40000".parse().unwrap(),
            local: r.sockets()[0],
            transport: Transport::Udp,
        };
        let req = request(|b| {
            b.raw(ATTR_RESPONSE_PORT, &40001u16.to_be_bytes()).raw(
                ATTR_CHANGE_REQUEST,
                &[0, 0, 0, CHANGE_IP_FLAG | CHANGE_PORT_FLAG],
            );
        });
        let bad = handle_datagram(&req, &ctx, &cfg(Some(r)));
        // RESPONSE-PORT is 4 bytes long (port + 2 padding bytes): 2 bytes is malformed.
        assert_eq!(bad.reply().unwrap().result, BindingResult::BadRequest);

        let req = request(|b| {
            b.raw(ATTR_RESPONSE_PORT, &[0x9c, 0x41, 0, 0]).raw(
                ATTR_CHANGE_REQUEST,
                &[0, 0, 0, CHANGE_IP_FLAG | CHANGE_PORT_FLAG],
            );
        });
        let (rep, _) = reply(handle_datagram(&req, &ctx, &cfg(Some(r))));
        assert_eq!(rep.to, "203.0.113.7:40001".parse().unwrap());
        assert_eq!(rep.via, ResponseSocket::ChangeIpAndPort);

        let req = request(|b| {
            b.raw(ATTR_PADDING, &[0; 1500]);
        });
        let (rep, m) = reply(handle_datagram(&req, &ctx, &cfg(Some(r))));
        assert_eq!(rep.result, BindingResult::Success);
        assert_eq!(msg::attr(&m, ATTR_PADDING).map(<[u8]>::len), Some(1500));
        assert!(rep.bytes.len() <= req.len() + 100, "no amplification");

        let req = request(|b| {
            b.raw(ATTR_PADDING, &[0; 9000]);
        });
        let (_, m) = reply(handle_datagram(&req, &ctx, &cfg(Some(r))));
        assert_eq!(
            msg::attr(&m, ATTR_PADDING).map(<[u8]>::len),
            Some(MAX_PADDING_BYTES)
        );

        let req = request(|b| {
            b.raw(ATTR_PADDING, &[0; 8])
                .raw(ATTR_RESPONSE_PORT, &[0x9c, 0x41, 0, 0]);
        });
        let (rep, m) = reply(handle_datagram(&req, &ctx, &cfg(Some(r))));
        assert_eq!(rep.result, BindingResult::BadRequest);
        assert_eq!(rep.to, ctx.source);
        assert_eq!(error_code(&m), Some(400));
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut seed: u32 = 0x5eed;
        let mut next = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        };
        let ctxs = [
            udp_ctx("203.0.113.7:1", "192.0.2.10:3478"),
            RequestContext {
                transport: Transport::Tcp,
                ..udp_ctx("[2001:db8::7]:1", "192.0.2.20:3479")
            },
        ];
        let cfgs = [cfg(None), cfg(Some(rfc5780()))];
        let seeds = [
            hex(RFC5769_REQUEST),
            hex(RFC5769_LONG_TERM_REQUEST),
            change_request(CHANGE_IP_FLAG | CHANGE_PORT_FLAG),
        ];
        for i in 0..20_000usize {
            let bytes = if i % 2 == 0 {
                // Random bytes with a STUN-looking header so decoding gets past the first check.
                let len = 20 + (next() as usize % 120);
                let mut b: Vec<u8> = (0..len).map(|_| next()).collect();
                b[0] &= 0x01;
                b[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
                if i % 4 == 0 {
                    b[2..4].copy_from_slice(&((len - 20) as u16).to_be_bytes());
                }
                b
            } else {
                // A valid request with a few bytes flipped.
                let mut b = seeds[i % seeds.len()].clone();
                for _ in 0..1 + next() % 4 {
                    let at = next() as usize % b.len();
                    b[at] ^= next() | 1;
                }
                b
            };
            for ctx in &ctxs {
                for cfg in &cfgs {
                    if let BindingOutcome::Reply(r) = handle_datagram(&bytes, ctx, cfg) {
                        msg::decode(&r.bytes).expect("every reply we build decodes");
                    }
                }
            }
        }
    }

    #[test]
    fn drop_and_result_labels() {
        assert_eq!(BindingDrop::NotStun.as_str(), "not_stun");
        assert_eq!(BindingDrop::Rfc3489.as_str(), "rfc3489");
        assert_eq!(
            BindingResult::UnknownAttribute.as_str(),
            "unknown_attribute"
        );
        assert_eq!(BindingResult::Success.error_code(), None);
        assert_eq!(
            ResponseSocket::from_flags(0x06),
            ResponseSocket::ChangeIpAndPort
        );
    }
}
