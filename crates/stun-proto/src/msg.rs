//! STUN message handling shared by the STUN and TURN servers: demultiplexing, strict decoding,
//! building responses, and the integrity attributes (RFC 8489 §5, §14, §9.2).
//!
//! Encoding and attribute parsing go through webrtc-rs's `rtc-stun` codec; what this module adds
//! is the server's side of it: validation that never panics on any input, constant-time
//! MESSAGE-INTEGRITY / MESSAGE-INTEGRITY-SHA256 checks with `ring`, and a response builder.

use ring::hmac;
use rtc_stun::addr::MappedAddress;
use rtc_stun::attributes::*;
use rtc_stun::fingerprint::fingerprint_value;
use rtc_stun::message::{
    Message, MessageType, Method, TransactionId, CLASS_ERROR_RESPONSE, CLASS_INDICATION,
    CLASS_SUCCESS_RESPONSE, MAGIC_COOKIE, MESSAGE_HEADER_SIZE,
};
use rtc_stun::xoraddr::XorMappedAddress;
use std::net::SocketAddr;

pub use rtc_stun::attributes::AttrType;
pub use rtc_stun::message::Message as StunMessage;

/// The transport a message arrived over; also a metrics label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP (RFC 8489 §6.2.2 framing: messages back to back).
    Tcp,
    /// TLS over TCP.
    Tls,
    /// DTLS over UDP.
    Dtls,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Transport; 4] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Dtls,
    ];

    /// Its slot in counters: the position in [`Transport::ALL`] (declaration order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lowercase label: `udp`, `tcp`, `tls`, `dtls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Dtls => "dtls",
        }
    }

    /// True for stream transports, where ChannelData is padded to 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
}

/// What the first bytes of a packet say it is (RFC 7983 demultiplexing by first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// First byte 0..=3 and the magic cookie at offset 4: a STUN message.
    Stun,
    /// First byte 0x40..=0x7F: TURN ChannelData. RFC 8656 §12 allows channels 0x4000-0x4FFF;
    /// RFC 5766 clients (coturn's among them) still use up to 0x7FFF, so that range is accepted.
    ChannelData,
    /// Anything else.
    Other,
}

/// Classifies a packet by its first bytes; never panics.
pub fn classify(b: &[u8]) -> PacketKind {
    match b.first() {
        Some(0..=3) if b.len() >= MESSAGE_HEADER_SIZE && b[4..8] == MAGIC_COOKIE.to_be_bytes() => {
            PacketKind::Stun
        }
        Some(0x40..=0x7F) if b.len() >= 4 => PacketKind::ChannelData,
        _ => PacketKind::Other,
    }
}

/// On a stream, how many bytes the frame starting at `b` occupies, once its header is in:
/// STUN = 20 + length; ChannelData = 4 + length rounded up to 4 (RFC 8656 §12.5).
/// `None` when fewer than 4 bytes are buffered or the first byte starts neither.
pub fn stream_frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 4 {
        return None;
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    match b[0] {
        0..=3 => Some(MESSAGE_HEADER_SIZE + len),
        0x40..=0x7F => Some(4 + len.div_ceil(4) * 4),
        _ => None,
    }
}

/// Why a packet is not an acceptable STUN message (RFC 8489 §6.3: such messages are dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the 20-byte header.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The two most significant bits are not zero or the magic cookie is wrong.
    #[error("not a STUN message")]
    NotStun,
    /// The length field is not a multiple of 4 or disagrees with the packet size.
    #[error("bad message length")]
    BadLength,
    /// An attribute runs past the end of the message.
    #[error("malformed attribute")]
    BadAttribute,
    /// FINGERPRINT present but wrong, or not the last attribute.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
}

/// Decodes exactly one STUN message occupying all of `b`, validating header, length, attribute
/// framing and FINGERPRINT (RFC 8489 §6.3, §14.7). Never panics.
pub fn decode(b: &[u8]) -> Result<Message, DecodeError> {
    if b.len() < MESSAGE_HEADER_SIZE {
        return Err(DecodeError::TooShort);
    }
    if b[0] & 0xC0 != 0 || b[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return Err(DecodeError::NotStun);
    }
    let len = u16::from_be_bytes([b[2], b[3]]) as usize;
    if !len.is_multiple_of(4) || MESSAGE_HEADER_SIZE + len != b.len() {
        return Err(DecodeError::BadLength);
    }
    let mut m = Message::new();
    m.raw = b.to_vec();
    m.decode().map_err(|_| DecodeError::BadAttribute)?;
    if let Some(pos) = m
        .attributes
        .0
        .iter()
        .position(|a| a.typ == ATTR_FINGERPRINT)
    {
        if pos + 1 != m.attributes.0.len() {
            return Err(DecodeError::BadFingerprint);
        }
        let v = &m.attributes.0[pos].value;
        if v.len() != 4 || b.len() < MESSAGE_HEADER_SIZE + 8 {
            return Err(DecodeError::BadFingerprint);
        }
        let got = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        if got != fingerprint_value(&b[..b.len() - 8]) {
            return Err(DecodeError::BadFingerprint);
        }
    }
    Ok(m)
}

/// Drops the attributes that follow the first MESSAGE-INTEGRITY(-SHA256) from `m`'s attribute
/// list, except those the RFC lets follow it: after MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256
/// and FINGERPRINT; after MESSAGE-INTEGRITY-SHA256, FINGERPRINT (RFC 8489 §14.5, §14.6). What
/// follows the integrity attribute is not covered by it, so it must never be acted on. The raw
/// bytes are untouched (integrity is still checked over them).
pub fn ignore_after_integrity(m: &mut Message) {
    let attrs = &mut m.attributes.0;
    let Some(pos) = attrs
        .iter()
        .position(|a| a.typ == ATTR_MESSAGE_INTEGRITY || a.typ == ATTR_MESSAGE_INTEGRITY_SHA256)
    else {
        return;
    };
    let sha1_first = attrs[pos].typ == ATTR_MESSAGE_INTEGRITY;
    let tail = attrs.split_off(pos + 1);
    attrs.extend(tail.into_iter().filter(|a| {
        a.typ == ATTR_FINGERPRINT || (sha1_first && a.typ == ATTR_MESSAGE_INTEGRITY_SHA256)
    }));
}

/// The comprehension-required attributes (type < 0x8000) of `m` that are not in `known`
/// (RFC 8489 §6.3.1: answered with 420 and UNKNOWN-ATTRIBUTES), without duplicates.
pub fn unknown_required(m: &Message, known: &[AttrType]) -> Vec<AttrType> {
    let mut out: Vec<AttrType> = Vec::new();
    for a in &m.attributes.0 {
        if a.typ.required() && !known.contains(&a.typ) && !out.contains(&a.typ) {
            out.push(a.typ);
        }
    }
    out
}

/// The value of the first attribute of type `t`, borrowed.
pub fn attr(m: &Message, t: AttrType) -> Option<&[u8]> {
    m.attributes
        .0
        .iter()
        .find(|a| a.typ == t)
        .map(|a| a.value.as_slice())
}

/// A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE), if present and valid UTF-8.
pub fn text_attr(m: &Message, t: AttrType) -> Option<&str> {
    attr(m, t).and_then(|v| std::str::from_utf8(v).ok())
}

/// Decodes an XOR-encoded address attribute (XOR-MAPPED-ADDRESS, XOR-PEER-ADDRESS,
/// XOR-RELAYED-ADDRESS; RFC 8489 §14.2). `None` when absent or malformed.
pub fn xor_address(m: &Message, t: AttrType) -> Option<SocketAddr> {
    let v = attr(m, t)?;
    let expected = match v.first_chunk::<2>().map(|f| u16::from_be_bytes(*f)) {
        Some(1) => 8,
        Some(2) => 20,
        _ => return None,
    };
    if v.len() != expected {
        return None;
    }
    let mut a = XorMappedAddress::default();
    a.get_from_as(m, t).ok()?;
    Some(SocketAddr::new(a.ip, a.port))
}

/// All attributes of type `t`, XOR-decoded (CreatePermission may carry several
/// XOR-PEER-ADDRESS). `Err(())` when any of them is malformed.
#[allow(clippy::result_unit_err)]
pub fn xor_addresses(m: &Message, t: AttrType) -> Result<Vec<SocketAddr>, ()> {
    let mut out = Vec::new();
    for a in m.attributes.0.iter().filter(|a| a.typ == t) {
        let mut one = Message::new();
        one.transaction_id = m.transaction_id;
        one.attributes.0.push(a.clone());
        out.push(xor_address(&one, t).ok_or(())?);
    }
    Ok(out)
}

/// The password algorithm a long-term credential uses (RFC 8489 §18.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordAlgorithm {
    /// Key = MD5(username ":" realm ":" password); MESSAGE-INTEGRITY (HMAC-SHA1).
    Md5,
    /// Key = SHA-256(username ":" realm ":" password); MESSAGE-INTEGRITY-SHA256.
    Sha256,
}

impl PasswordAlgorithm {
    /// The IANA number carried in PASSWORD-ALGORITHM(S).
    pub fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }
}

/// Which integrity attribute protects a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntegrityAlgorithm {
    /// MESSAGE-INTEGRITY, HMAC-SHA1, 20 bytes (RFC 8489 §14.5).
    Sha1,
    /// MESSAGE-INTEGRITY-SHA256, HMAC-SHA256, 32 bytes (RFC 8489 §14.6).
    Sha256,
}

impl IntegrityAlgorithm {
    fn attr(self) -> AttrType {
        match self {
            IntegrityAlgorithm::Sha1 => ATTR_MESSAGE_INTEGRITY,
            IntegrityAlgorithm::Sha256 => ATTR_MESSAGE_INTEGRITY_SHA256,
        }
    }
    fn len(self) -> usize {
        match self {
            IntegrityAlgorithm::Sha1 => 20,
            IntegrityAlgorithm::Sha256 => 32,
        }
    }
    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            IntegrityAlgorithm::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            IntegrityAlgorithm::Sha256 => hmac::HMAC_SHA256,
        }
    }
}

/// The strongest integrity attribute present in `m`: SHA-256 wins over SHA-1.
pub fn integrity_present(m: &Message) -> Option<IntegrityAlgorithm> {
    if m.contains(ATTR_MESSAGE_INTEGRITY_SHA256) {
        Some(IntegrityAlgorithm::Sha256)
    } else if m.contains(ATTR_MESSAGE_INTEGRITY) {
        Some(IntegrityAlgorithm::Sha1)
    } else {
        None
    }
}

/// Byte offset of the attribute of type `t` (its TLV header) in `raw`, walking the TLVs.
fn attr_offset(raw: &[u8], t: AttrType) -> Option<usize> {
    let mut off = MESSAGE_HEADER_SIZE;
    while off + 4 <= raw.len() {
        let typ = u16::from_be_bytes([raw[off], raw[off + 1]]);
        let len = u16::from_be_bytes([raw[off + 2], raw[off + 3]]) as usize;
        if typ == t.value() {
            return Some(off);
        }
        off += 4 + len.div_ceil(4) * 4;
    }
    None
}

/// Verifies the integrity attribute `alg` of `m` with `key`, in constant time
/// (RFC 8489 §14.5, §14.6). False when absent, truncated or wrong.
pub fn verify_integrity(m: &Message, key: &[u8], alg: IntegrityAlgorithm) -> bool {
    let raw = &m.raw;
    let Some(off) = attr_offset(raw, alg.attr()) else {
        return false;
    };
    let value_len = alg.len();
    if off + 4 + value_len > raw.len()
        || u16::from_be_bytes([raw[off + 2], raw[off + 3]]) as usize != value_len
    {
        return false;
    }
    // The HMAC covers the header (with the length field set to end just after this attribute)
    // and every attribute before it.
    let adjusted_len = (off + 4 + value_len - MESSAGE_HEADER_SIZE) as u16;
    let k = hmac::Key::new(alg.hmac_alg(), key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(&raw[0..2]);
    ctx.update(&adjusted_len.to_be_bytes());
    ctx.update(&raw[4..off]);
    let tag = ctx.sign();
    use subtle::ConstantTimeEq;
    bool::from(tag.as_ref().ct_eq(&raw[off + 4..off + 4 + value_len]))
}

/// Builds a STUN message: header, attributes, then optional integrity and FINGERPRINT.
#[derive(Debug)]
pub struct MessageBuilder {
    m: Message,
    error_code: Option<u16>,
}

impl MessageBuilder {
    /// A message of type `typ` with transaction id `tid`.
    pub fn new(typ: MessageType, tid: TransactionId) -> Self {
        let mut m = Message::new();
        m.typ = typ;
        m.transaction_id = tid;
        m.write_header();
        Self {
            m,
            error_code: None,
        }
    }

    /// A success response to `req` (same method and transaction id).
    pub fn success(req: &Message) -> Self {
        Self::new(
            MessageType::new(req.typ.method, CLASS_SUCCESS_RESPONSE),
            req.transaction_id,
        )
    }

    /// An error response to `req` carrying ERROR-CODE `code` and `reason` (RFC 8489 §14.8).
    pub fn error(req: &Message, code: u16, reason: &str) -> Self {
        let mut b = Self::new(
            MessageType::new(req.typ.method, CLASS_ERROR_RESPONSE),
            req.transaction_id,
        );
        b.error_code(code, reason);
        b
    }

    /// An indication of `method` with a fresh random transaction id.
    pub fn indication(method: Method) -> Self {
        Self::new(
            MessageType::new(method, CLASS_INDICATION),
            TransactionId::new(),
        )
    }

    /// The ERROR-CODE number appended, if any.
    pub fn error_code_value(&self) -> Option<u16> {
        self.error_code
    }

    /// Appends ERROR-CODE.
    pub fn error_code(&mut self, code: u16, reason: &str) -> &mut Self {
        self.error_code = Some(code);
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
        v.extend_from_slice(reason.as_bytes());
        self.m.add(ATTR_ERROR_CODE, &v);
        self
    }

    /// Appends an XOR-encoded address attribute (XOR-MAPPED-ADDRESS and TURN's XOR-*-ADDRESS).
    pub fn xor_address(&mut self, t: AttrType, addr: SocketAddr) -> &mut Self {
        let a = XorMappedAddress {
            ip: addr.ip(),
            port: addr.port(),
        };
        // add_to_as only fails for attribute overflow, impossible for an address.
        let _ = a.add_to_as(&mut self.m, t);
        self
    }

    /// Appends a plain address attribute (MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN).
    pub fn address(&mut self, t: AttrType, addr: SocketAddr) -> &mut Self {
        let a = MappedAddress {
            ip: addr.ip(),
            port: addr.port(),
        };
        let _ = a.add_to_as(&mut self.m, t);
        self
    }

    /// Appends a raw attribute.
    pub fn raw(&mut self, t: AttrType, value: &[u8]) -> &mut Self {
        self.m.add(t, value);
        self
    }

    /// Appends a raw attribute whose padding bytes (up to the next 4-byte boundary) are `pad`
    /// instead of zero. RFC 8489 §14 lets senders pad with any value and MESSAGE-INTEGRITY and
    /// FINGERPRINT cover the padding, so this is how the RFC 5769 vectors (padded with 0x20) are
    /// reproduced byte for byte.
    pub fn raw_padded(&mut self, t: AttrType, value: &[u8], pad: u8) -> &mut Self {
        self.m.add(t, value);
        let pad_len = value.len().div_ceil(4) * 4 - value.len();
        let end = self.m.raw.len();
        self.m.raw[end - pad_len..].fill(pad);
        self
    }

    /// Appends UNKNOWN-ATTRIBUTES listing `types` (RFC 8489 §14.9).
    pub fn unknown_attributes(&mut self, types: &[AttrType]) -> &mut Self {
        let v: Vec<u8> = types.iter().flat_map(|t| t.value().to_be_bytes()).collect();
        self.m.add(ATTR_UNKNOWN_ATTRIBUTES, &v);
        self
    }

    /// Appends SOFTWARE.
    pub fn software(&mut self, s: &str) -> &mut Self {
        self.m.add(ATTR_SOFTWARE, s.as_bytes());
        self
    }

    /// Appends the integrity attribute `alg` keyed with `key` (RFC 8489 §14.5, §14.6).
    pub fn integrity(&mut self, key: &[u8], alg: IntegrityAlgorithm) -> &mut Self {
        let len_before = self.m.length;
        self.m.length += (4 + alg.len()) as u32;
        self.m.write_length();
        let tag = hmac::sign(&hmac::Key::new(alg.hmac_alg(), key), &self.m.raw);
        self.m.length = len_before;
        self.m.write_length();
        self.m.add(alg.attr(), tag.as_ref());
        self
    }

    /// Appends FINGERPRINT (must be last; RFC 8489 §14.7).
    pub fn fingerprint(&mut self) -> &mut Self {
        let len_before = self.m.length;
        self.m.length += 8;
        self.m.write_length();
        let v = fingerprint_value(&self.m.raw);
        self.m.length = len_before;
        self.m.write_length();
        self.m.add(ATTR_FINGERPRINT, &v.to_be_bytes());
        self
    }

    /// The encoded bytes.
    #[must_use]
    pub fn finish(self) -> Vec<u8> {
        self.m.raw
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use rtc_stun::message::{BINDING_REQUEST, CLASS_REQUEST, METHOD_BINDING};

    #[test]
    fn classify_by_first_byte() {
        let mut b = MessageBuilder::new(BINDING_REQUEST, TransactionId::new()).finish();
        assert_eq!(classify(&b), PacketKind::Stun);
        b[5] ^= 1;
        assert_eq!(classify(&b), PacketKind::Other);
        assert_eq!(classify(&[0x40, 0x00, 0x00, 0x00]), PacketKind::ChannelData);
        assert_eq!(classify(&[0x80, 0, 0, 0]), PacketKind::Other);
        assert_eq!(classify(&[]), PacketKind::Other);
    }

    #[test]
    fn stream_frames() {
        assert_eq!(stream_frame_len(&[0, 1, 0, 8]), Some(28));
        assert_eq!(stream_frame_len(&[0x40, 0, 0, 5]), Some(12));
        assert_eq!(stream_frame_len(&[0x40, 0, 0, 8]), Some(12));
        assert_eq!(stream_frame_len(&[0x80, 0, 0, 8]), None);
        assert_eq!(stream_frame_len(&[0x40, 0]), None);
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        let mut seed: u32 = 12345;
        for len in 0..200usize {
            for _ in 0..50 {
                let mut b = vec![0u8; len];
                for x in b.iter_mut() {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    *x = (seed >> 16) as u8;
                }
                if len >= 8 {
                    b[0] &= 0x3F;
                    b[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
                    if len >= 20 {
                        let l = (len - 20) as u16;
                        b[2..4].copy_from_slice(&l.to_be_bytes());
                    }
                }
                let _ = decode(&b);
                let _ = stream_frame_len(&b);
                let _ = classify(&b);
            }
        }
    }

    #[test]
    fn integrity_roundtrip_and_tamper() {
        for alg in [IntegrityAlgorithm::Sha1, IntegrityAlgorithm::Sha256] {
            let mut b = MessageBuilder::new(
                MessageType::new(METHOD_BINDING, CLASS_REQUEST),
                TransactionId::new(),
            );
            b.raw(ATTR_USERNAME, b"alice")
                .integrity(b"key", alg)
                .fingerprint();
            let raw = b.finish();
            let m = decode(&raw).expect("decodes");
            assert_eq!(integrity_present(&m), Some(alg));
            assert!(verify_integrity(&m, b"key", alg));
            assert!(!verify_integrity(&m, b"other", alg));
            let mut bad = raw.clone();
            bad[24] ^= 1; // inside USERNAME: breaks FINGERPRINT first
            assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadFingerprint);
        }
    }

    #[test]
    fn xor_address_roundtrip() {
        let tid = TransactionId::new();
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:3478"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut b = MessageBuilder::new(BINDING_REQUEST, tid);
            b.xor_address(ATTR_XOR_PEER_ADDRESS, addr)
                .xor_address(ATTR_XOR_PEER_ADDRESS, addr);
            let m = decode(&b.finish()).unwrap();
            assert_eq!(xor_address(&m, ATTR_XOR_PEER_ADDRESS), Some(addr));
            assert_eq!(
                xor_addresses(&m, ATTR_XOR_PEER_ADDRESS).unwrap(),
                vec![addr, addr]
            );
        }
    }

    #[test]
    fn unknown_required_lists_each_once() {
        let mut b = MessageBuilder::new(BINDING_REQUEST, TransactionId::new());
        b.raw(AttrType(0x7777), b"x")
            .raw(AttrType(0x7777), b"y")
            .raw(AttrType(0x8888), b"optional")
            .software("t");
        let m = decode(&b.finish()).unwrap();
        assert_eq!(
            unknown_required(&m, &[ATTR_SOFTWARE]),
            vec![AttrType(0x7777)]
        );
    }
}
