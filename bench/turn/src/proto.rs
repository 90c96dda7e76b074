//! The STUN/TURN requests the generator sends and the responses it reads. No I/O, no clock.
//!
//! Encoding and decoding go through `rtc-stun`; MESSAGE-INTEGRITY is computed here with `ring`
//! (HMAC-SHA1 over the message up to the attribute, length patched, RFC 8489 §14.5) and the
//! long-term key is MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).

use std::net::SocketAddr;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use ring::hmac;
use rtc_stun::attributes::{
    AttrType, ATTR_CHANNEL_NUMBER, ATTR_ERROR_CODE, ATTR_EVEN_PORT, ATTR_LIFETIME,
    ATTR_MESSAGE_INTEGRITY, ATTR_NONCE, ATTR_REALM, ATTR_REQUESTED_TRANSPORT,
    ATTR_RESERVATION_TOKEN, ATTR_USERNAME, ATTR_XORMAPPED_ADDRESS, ATTR_XOR_PEER_ADDRESS,
    ATTR_XOR_RELAYED_ADDRESS,
};
use rtc_stun::error_code::ErrorCodeAttribute;
use rtc_stun::fingerprint::FINGERPRINT;
use rtc_stun::message::{
    Getter as _, Message, MessageType, Method, Setter as _, TransactionId, CLASS_ERROR_RESPONSE,
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, MESSAGE_HEADER_SIZE, METHOD_ALLOCATE, METHOD_BINDING,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use rtc_stun::xoraddr::XorMappedAddress;
use subtle::ConstantTimeEq as _;

/// Size of the MESSAGE-INTEGRITY value (HMAC-SHA1), RFC 8489 §14.5.
const INTEGRITY_BYTES: usize = 20;
/// REQUESTED-TRANSPORT value for UDP (protocol number 17), RFC 8656 §18.7.
const TRANSPORT_UDP: u8 = 17;
/// The R bit of EVEN-PORT: also reserve the next port (RFC 8656 §18.6).
const EVEN_PORT_RESERVE: u8 = 0x80;
/// Size of a RESERVATION-TOKEN value, RFC 8656 §18.9.
pub const RESERVATION_TOKEN_BYTES: usize = 8;

/// Errors of this layer: a response that cannot be read, or a request that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The bytes are not a well-formed STUN message.
    #[error("malformed STUN message: {0}")]
    Decode(String),
    /// rtc-stun refused to encode an attribute.
    #[error("cannot encode STUN message: {0}")]
    Encode(String),
    /// The message is a STUN message but not a response (request or indication).
    #[error("not a response ({0})")]
    NotAResponse(String),
    /// A required attribute is absent from a response.
    #[error("response lacks {0}")]
    MissingAttribute(&'static str),
    /// An attribute is present but its value cannot be read.
    #[error("bad {0} attribute in response")]
    BadAttribute(&'static str),
    /// The response's MESSAGE-INTEGRITY does not match our key.
    #[error("response MESSAGE-INTEGRITY does not verify")]
    IntegrityMismatch,
}

/// Long-term credentials: a static user or one derived from a TURN REST API shared secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// USERNAME sent to the server.
    pub username: String,
    /// Password; never sent, only hashed into the key.
    pub password: String,
}

impl Credentials {
    /// A static long-term user.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }

    /// TURN REST API credential (draft-uberti-behave-turn-rest §2.2): username
    /// `<expiry_unix_secs>:<label>`, password base64(HMAC-SHA1(secret, username)).
    pub fn rest(secret: &str, label: &str, expiry_unix_secs: u64) -> Self {
        let username = format!("{expiry_unix_secs}:{label}");
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
        let tag = hmac::sign(&key, username.as_bytes());
        let password = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        Self { username, password }
    }

    /// Long-term key MD5(username:realm:password), RFC 8489 §9.2.2.
    pub fn long_term_key(&self, realm: &str) -> [u8; 16] {
        let mut md5 = Md5::new();
        md5.update(self.username.as_bytes());
        md5.update(b":");
        md5.update(realm.as_bytes());
        md5.update(b":");
        md5.update(self.password.as_bytes());
        md5.finalize().into()
    }
}

/// What the server told us in its 401/438 answer, and the key that goes with it.
#[derive(Clone, Debug)]
pub struct AuthState {
    /// REALM learned from the server.
    pub realm: String,
    /// Current NONCE.
    pub nonce: String,
    /// MD5(username:realm:password).
    pub key: [u8; 16],
}

/// A TURN request the generator makes (RFC 8656 §7, §9, §11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Binding (RFC 8489 §3): asks for the server-reflexive address; never authenticated.
    Binding,
    /// Allocate a UDP relayed transport address; `lifetime_secs` None lets the server choose.
    Allocate {
        /// Requested LIFETIME.
        lifetime_secs: Option<u32>,
        /// EVEN-PORT (RFC 8656 §7.1): `Some(reserve)` asks for an even port, and with `reserve`
        /// (the R bit) for the next port to be held under a RESERVATION-TOKEN.
        even_port: Option<bool>,
        /// RESERVATION-TOKEN: take the port an earlier EVEN-PORT(R) Allocate reserved.
        reservation_token: Option<[u8; RESERVATION_TOKEN_BYTES]>,
    },
    /// Refresh an allocation; 0 deletes it.
    Refresh {
        /// Requested LIFETIME.
        lifetime_secs: u32,
    },
    /// Install a permission for the peer's IP.
    CreatePermission {
        /// The peer (its port is ignored by the server).
        peer: SocketAddr,
    },
    /// Bind a channel number (0x4000..=0x4FFF) to a peer.
    ChannelBind {
        /// Channel number.
        channel: u16,
        /// The peer transport address.
        peer: SocketAddr,
    },
}

impl Request {
    /// A plain Allocate: UDP relay, no EVEN-PORT, no RESERVATION-TOKEN.
    pub fn allocate(lifetime_secs: Option<u32>) -> Self {
        Request::Allocate {
            lifetime_secs,
            even_port: None,
            reservation_token: None,
        }
    }

    /// Whether the request carries long-term credentials once the realm is known (all TURN
    /// requests do; Binding does not, RFC 8656 §9.2.3).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self, Request::Binding)
    }

    fn method(&self) -> Method {
        match self {
            Request::Binding => METHOD_BINDING,
            Request::Allocate { .. } => METHOD_ALLOCATE,
            Request::Refresh { .. } => METHOD_REFRESH,
            Request::CreatePermission { .. } => METHOD_CREATE_PERMISSION,
            Request::ChannelBind { .. } => METHOD_CHANNEL_BIND,
        }
    }

    /// Short name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Binding => "Binding",
            Request::Allocate { .. } => "Allocate",
            Request::Refresh { .. } => "Refresh",
            Request::CreatePermission { .. } => "CreatePermission",
            Request::ChannelBind { .. } => "ChannelBind",
        }
    }
}

/// Encodes `request` with transaction id `tid`; with `auth` (and if the request is
/// authenticated at all), adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY (RFC 8489 §9.2.4).
pub fn encode_request(
    request: &Request,
    tid: [u8; 12],
    auth: Option<(&str, &AuthState)>,
) -> Result<Vec<u8>, ProtoError> {
    let auth = auth.filter(|_| request.is_authenticated());
    Ok(build_request(request, tid, auth)?.raw)
}

/// Encodes `request` without credentials, as a first contact or an off-path sender would, with
/// or without FINGERPRINT (RFC 8489 §14.7).
pub fn encode_unauthenticated(
    request: &Request,
    tid: [u8; 12],
    fingerprint: bool,
) -> Result<Vec<u8>, ProtoError> {
    let mut m = build_request(request, tid, None)?;
    if fingerprint {
        FINGERPRINT
            .add_to(&mut m)
            .map_err(|e| ProtoError::Encode(e.to_string()))?;
    }
    Ok(m.raw)
}

fn build_request(
    request: &Request,
    tid: [u8; 12],
    auth: Option<(&str, &AuthState)>,
) -> Result<Message, ProtoError> {
    let mut m = Message::new();
    m.typ = MessageType::new(request.method(), CLASS_REQUEST);
    m.transaction_id = TransactionId(tid);
    m.write_header();
    match request {
        Request::Binding => {}
        Request::Allocate {
            lifetime_secs,
            even_port,
            reservation_token,
        } => {
            m.add(ATTR_REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]);
            if let Some(l) = lifetime_secs {
                m.add(ATTR_LIFETIME, &l.to_be_bytes());
            }
            if let Some(reserve) = even_port {
                m.add(
                    ATTR_EVEN_PORT,
                    &[if *reserve { EVEN_PORT_RESERVE } else { 0 }],
                );
            }
            if let Some(token) = reservation_token {
                m.add(ATTR_RESERVATION_TOKEN, token);
            }
        }
        Request::Refresh { lifetime_secs } => {
            m.add(ATTR_LIFETIME, &lifetime_secs.to_be_bytes());
        }
        Request::CreatePermission { peer } => {
            add_xor_address(&mut m, ATTR_XOR_PEER_ADDRESS, *peer)?
        }
        Request::ChannelBind { channel, peer } => {
            let c = channel.to_be_bytes();
            m.add(ATTR_CHANNEL_NUMBER, &[c[0], c[1], 0, 0]);
            add_xor_address(&mut m, ATTR_XOR_PEER_ADDRESS, *peer)?;
        }
    }
    if let Some((username, auth)) = auth {
        m.add(ATTR_USERNAME, username.as_bytes());
        m.add(ATTR_REALM, auth.realm.as_bytes());
        m.add(ATTR_NONCE, auth.nonce.as_bytes());
        add_integrity(&mut m, &auth.key);
    }
    Ok(m)
}

fn add_xor_address(m: &mut Message, typ: AttrType, addr: SocketAddr) -> Result<(), ProtoError> {
    XorMappedAddress {
        ip: addr.ip(),
        port: addr.port(),
    }
    .add_to_as(m, typ)
    .map_err(|e| ProtoError::Encode(e.to_string()))
}

/// Appends MESSAGE-INTEGRITY: HMAC-SHA1 over the message so far, with the header length
/// already counting the MESSAGE-INTEGRITY attribute (RFC 8489 §14.5).
fn add_integrity(m: &mut Message, key: &[u8]) {
    let mac = integrity_over(&m.raw, key);
    m.add(ATTR_MESSAGE_INTEGRITY, &mac);
}

/// HMAC-SHA1 of `prefix` (a message header and the attributes before MESSAGE-INTEGRITY) with the
/// length field set as if the message ended right after a MESSAGE-INTEGRITY attribute.
fn integrity_over(prefix: &[u8], key: &[u8]) -> [u8; INTEGRITY_BYTES] {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut ctx = hmac::Context::with_key(&key);
    let length = (prefix.len() - MESSAGE_HEADER_SIZE + 4 + INTEGRITY_BYTES) as u16;
    ctx.update(&prefix[..2]);
    ctx.update(&length.to_be_bytes());
    ctx.update(&prefix[4..]);
    let tag = ctx.sign();
    let mut out = [0; INTEGRITY_BYTES];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks a response's MESSAGE-INTEGRITY against `key`. A response without the attribute is
/// `MissingAttribute`.
pub fn verify_integrity(raw: &[u8], key: &[u8]) -> Result<(), ProtoError> {
    let offset = attribute_offset(raw, ATTR_MESSAGE_INTEGRITY.0)?
        .ok_or(ProtoError::MissingAttribute("MESSAGE-INTEGRITY"))?;
    let value = raw
        .get(offset + 4..offset + 4 + INTEGRITY_BYTES)
        .ok_or(ProtoError::BadAttribute("MESSAGE-INTEGRITY"))?;
    let expected = integrity_over(&raw[..offset], key);
    if bool::from(expected.as_slice().ct_eq(value)) {
        Ok(())
    } else {
        Err(ProtoError::IntegrityMismatch)
    }
}

/// Byte offset of the first attribute of type `typ`, walking the TLVs with bounds checks.
fn attribute_offset(raw: &[u8], typ: u16) -> Result<Option<usize>, ProtoError> {
    Ok(attributes(raw)?.find(|(_, t)| *t == typ).map(|(at, _)| at))
}

/// The attribute types of a STUN message in order, as RFC names ("XOR-MAPPED-ADDRESS", "0x80ff"
/// for types without a name here or in rtc-stun).
pub fn attribute_names(raw: &[u8]) -> Result<Vec<String>, ProtoError> {
    Ok(attributes(raw)?
        .map(|(_, t)| match t {
            // RFC 5780 §7, which rtc-stun does not name.
            0x0026 => "PADDING".to_owned(),
            0x0027 => "RESPONSE-PORT".to_owned(),
            0x8027 => "CACHE-TIMEOUT".to_owned(),
            0x802b => "RESPONSE-ORIGIN".to_owned(),
            0x802c => "OTHER-ADDRESS".to_owned(),
            _ => AttrType(t).to_string(),
        })
        .collect())
}

/// (offset, type) of each attribute TLV, with bounds checks.
fn attributes(raw: &[u8]) -> Result<impl Iterator<Item = (usize, u16)> + '_, ProtoError> {
    if raw.len() < MESSAGE_HEADER_SIZE {
        return Err(ProtoError::Decode("shorter than a STUN header".into()));
    }
    let length = u16::from_be_bytes([raw[2], raw[3]]) as usize;
    let end = MESSAGE_HEADER_SIZE + length;
    if raw.len() < end {
        return Err(ProtoError::Decode("truncated".into()));
    }
    let mut at = MESSAGE_HEADER_SIZE;
    Ok(std::iter::from_fn(move || {
        if at + 4 > end {
            return None;
        }
        let t = u16::from_be_bytes([raw[at], raw[at + 1]]);
        let l = u16::from_be_bytes([raw[at + 2], raw[at + 3]]) as usize;
        let here = at;
        at += 4 + l.div_ceil(4) * 4;
        Some((here, t))
    }))
}

/// A decoded response to one of our requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Transaction id, to match with the request.
    pub transaction_id: [u8; 12],
    /// Success or error, with the attributes we use.
    pub outcome: Outcome,
}

/// The result carried by a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Success response.
    Success {
        /// XOR-RELAYED-ADDRESS (Allocate).
        relayed: Option<SocketAddr>,
        /// XOR-MAPPED-ADDRESS (Allocate).
        mapped: Option<SocketAddr>,
        /// LIFETIME (Allocate, Refresh).
        lifetime_secs: Option<u32>,
        /// RESERVATION-TOKEN (Allocate with EVEN-PORT R).
        reservation_token: Option<[u8; RESERVATION_TOKEN_BYTES]>,
        /// Whether MESSAGE-INTEGRITY is present.
        has_integrity: bool,
    },
    /// Error response.
    Error {
        /// ERROR-CODE number (e.g. 401, 438).
        code: u16,
        /// Reason phrase.
        reason: String,
        /// REALM, if given (401).
        realm: Option<String>,
        /// NONCE, if given (401, 438).
        nonce: Option<String>,
    },
}

/// Decodes a STUN response. Any byte string gives either a response or an error, never a panic.
pub fn decode_response(raw: &[u8]) -> Result<Response, ProtoError> {
    let mut m = Message::new();
    m.unmarshal_binary(raw)
        .map_err(|e| ProtoError::Decode(e.to_string()))?;
    let transaction_id = m.transaction_id.0;
    let text = |t: AttrType| -> Option<String> {
        m.get(t)
            .ok()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    };
    let outcome = if m.typ.class == CLASS_SUCCESS_RESPONSE {
        Outcome::Success {
            relayed: xor_address(&m, ATTR_XOR_RELAYED_ADDRESS, "XOR-RELAYED-ADDRESS")?,
            mapped: xor_address(&m, ATTR_XORMAPPED_ADDRESS, "XOR-MAPPED-ADDRESS")?,
            lifetime_secs: match m.get(ATTR_LIFETIME) {
                Ok(v) => Some(u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| ProtoError::BadAttribute("LIFETIME"))?,
                )),
                Err(_) => None,
            },
            reservation_token: match m.get(ATTR_RESERVATION_TOKEN) {
                Ok(v) => Some(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| ProtoError::BadAttribute("RESERVATION-TOKEN"))?,
                ),
                Err(_) => None,
            },
            has_integrity: m.contains(ATTR_MESSAGE_INTEGRITY),
        }
    } else if m.typ.class == CLASS_ERROR_RESPONSE {
        let mut ec = ErrorCodeAttribute::default();
        if !m.contains(ATTR_ERROR_CODE) {
            return Err(ProtoError::MissingAttribute("ERROR-CODE"));
        }
        ec.get_from(&m)
            .map_err(|_| ProtoError::BadAttribute("ERROR-CODE"))?;
        Outcome::Error {
            code: ec.code.0,
            reason: String::from_utf8_lossy(&ec.reason).into_owned(),
            realm: text(ATTR_REALM),
            nonce: text(ATTR_NONCE),
        }
    } else {
        return Err(ProtoError::NotAResponse(m.typ.to_string()));
    };
    Ok(Response {
        transaction_id,
        outcome,
    })
}

fn xor_address(
    m: &Message,
    typ: AttrType,
    name: &'static str,
) -> Result<Option<SocketAddr>, ProtoError> {
    if !m.contains(typ) {
        return Ok(None);
    }
    let mut a = XorMappedAddress::default();
    a.get_from_as(m, typ)
        .map_err(|_| ProtoError::BadAttribute(name))?;
    Ok(Some(SocketAddr::new(a.ip, a.port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // python3: hashlib.md5(b"user:realm:pass").hexdigest()
        let c = Credentials::new("user", "pass");
        let key = c.long_term_key("realm");
        assert_eq!(hex(&key), "8493fbc53ba582fb4c044c456bdc40eb");
    }

    #[test]
    fn rest_credential_matches_reference() {
        // python3: base64.b64encode(hmac.new(b"secret", b"1700000000:bench", sha1).digest())
        let c = Credentials::rest("secret", "bench", 1_700_000_000);
        assert_eq!(c.username, "1700000000:bench");
        assert_eq!(c.password, "zYi5YnJWZXsmIgQsFliP/r30Iug=");
    }

    /// RFC 5769 §2.4: request with long-term authentication; our HMAC must reproduce the
    /// vector's MESSAGE-INTEGRITY byte for byte.
    #[test]
    fn rfc5769_long_term_integrity_verifies() {
        let raw = unhex(concat!(
            "000100602112a44278ad3433c6ad72c029da412e",
            "00060012e3839ee38388e383aae38383e382afe382b90000",
            "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341",
            "0014000b6578616d706c652e6f726700",
            "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666",
        ));
        let key = Credentials::new(
            "\u{30de}\u{30c8}\u{30ea}\u{30c3}\u{30af}\u{30b9}",
            "TheMatrIX",
        )
        .long_term_key("example.org");
        verify_integrity(&raw, &key).expect("RFC 5769 vector verifies");
        let mut tampered = raw.clone();
        tampered[30] ^= 1;
        assert!(matches!(
            verify_integrity(&tampered, &key),
            Err(ProtoError::IntegrityMismatch)
        ));
    }

    #[test]
    fn encoded_request_verifies_with_same_key() {
        let auth = AuthState {
            realm: "turnkey".into(),
            nonce: "abc".into(),
            key: Credentials::new("bench", "benchpass").long_term_key("turnkey"),
        };
        let raw = encode_request(
            &Request::ChannelBind {
                channel: 0x4000,
                peer: "127.0.0.1:50000".parse().unwrap(),
            },
            [7; 12],
            Some(("bench", &auth)),
        )
        .unwrap();
        verify_integrity(&raw, &auth.key).unwrap();
        assert_eq!(&raw[0..2], &[0x00, 0x09]);
    }

    #[test]
    fn unauthenticated_requests_and_fingerprint() {
        let raw = encode_unauthenticated(&Request::Binding, [9; 12], true).unwrap();
        assert_eq!(&raw[0..4], &[0x00, 0x01, 0x00, 0x08]);
        let mut m = Message::new();
        m.unmarshal_binary(&raw).unwrap();
        FINGERPRINT.check(&m).expect("FINGERPRINT verifies");
        // Binding never carries credentials, even when the client has them.
        let auth = AuthState {
            realm: "turnkey".into(),
            nonce: "abc".into(),
            key: [0; 16],
        };
        let raw = encode_request(&Request::Binding, [9; 12], Some(("u", &auth))).unwrap();
        assert_eq!(raw.len(), 20);
        let allocate = Request::Allocate {
            lifetime_secs: None,
            even_port: Some(true),
            reservation_token: None,
        };
        let raw = encode_unauthenticated(&allocate, [9; 12], false).unwrap();
        assert_eq!(
            attribute_names(&raw).unwrap(),
            vec!["REQUESTED-TRANSPORT", "EVEN-PORT"]
        );
        assert_eq!(&raw[32..33], &[0x80]);
    }

    #[test]
    fn decodes_401_with_realm_and_nonce() {
        let mut m = Message::new();
        m.typ = MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE);
        m.transaction_id = TransactionId([1; 12]);
        m.write_header();
        m.add(ATTR_ERROR_CODE, &[0, 0, 4, 1, b'U', b'n']);
        m.add(ATTR_REALM, b"turnkey");
        m.add(ATTR_NONCE, b"n0nce");
        let r = decode_response(&m.raw).unwrap();
        assert_eq!(
            r.outcome,
            Outcome::Error {
                code: 401,
                reason: "Un".into(),
                realm: Some("turnkey".into()),
                nonce: Some("n0nce".into()),
            }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u32;
        for len in 0..200 {
            let mut buf = vec![0u8; len];
            for b in &mut buf {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                *b = (seed >> 16) as u8;
            }
            if len >= 8 {
                buf[4..8].copy_from_slice(&0x2112_A442_u32.to_be_bytes());
                buf[0] = 0x01;
                buf[1] = 0x13;
            }
            let _ = decode_response(&buf);
            let _ = verify_integrity(&buf, b"k");
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
