//! The floor's answer to the generator's TURN requests: a success response to every request,
//! with no authentication (RFC 8489 §6.3.3 success response; the generator accepts a success
//! without MESSAGE-INTEGRITY when no 401 asked it for credentials). Only what the generator
//! reads is put in: XOR-RELAYED-ADDRESS and LIFETIME on Allocate (RFC 8656 §7.3), LIFETIME on
//! Refresh, XOR-MAPPED-ADDRESS on Allocate and Binding. No I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const HEADER_BYTES: usize = 20;
const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Methods the floor understands (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Binding.
    Binding,
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
}

impl Method {
    fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            0x001 => Method::Binding,
            0x003 => Method::Allocate,
            0x004 => Method::Refresh,
            0x008 => Method::CreatePermission,
            0x009 => Method::ChannelBind,
            _ => return None,
        })
    }

    fn code(self) -> u16 {
        match self {
            Method::Binding => 0x001,
            Method::Allocate => 0x003,
            Method::Refresh => 0x004,
            Method::CreatePermission => 0x008,
            Method::ChannelBind => 0x009,
        }
    }
}

/// Attribute types read or written here (RFC 8489 §18.3, RFC 8656 §18).
mod attr {
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    pub const LIFETIME: u16 = 0x000D;
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
}

/// Why a datagram is not a request the floor answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Shorter than its header says, or than a header.
    #[error("truncated STUN message")]
    Truncated,
    /// No magic cookie (RFC 8489 §5).
    #[error("no STUN magic cookie")]
    NoCookie,
    /// A response or an indication, or a method the floor does not know.
    #[error("not a request the floor answers (type {0:#06x})")]
    Unsupported(u16),
    /// An attribute the floor reads has a bad value.
    #[error("bad attribute {0:#06x}")]
    BadAttribute(u16),
}

/// The parts of a request the floor uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Transaction id.
    pub transaction_id: [u8; 12],
    /// LIFETIME (Allocate, Refresh), seconds.
    pub lifetime_secs: Option<u32>,
    /// CHANNEL-NUMBER (ChannelBind).
    pub channel: Option<u16>,
    /// XOR-PEER-ADDRESS, the first one (CreatePermission, ChannelBind).
    pub peer: Option<SocketAddr>,
}

/// Reads a STUN request. Never panics on any input.
pub fn parse_request(raw: &[u8]) -> Result<Request, StunError> {
    let header = raw.get(..HEADER_BYTES).ok_or(StunError::Truncated)?;
    let typ = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if u32::from_be_bytes([header[4], header[5], header[6], header[7]]) != MAGIC_COOKIE {
        return Err(StunError::NoCookie);
    }
    // Class bits C1 (0x0100) and C0 (0x0010) are 0 for a request; the top two bits are 0.
    if typ & 0xC110 != 0 {
        return Err(StunError::Unsupported(typ));
    }
    let code = (typ & 0x000F) | ((typ & 0x00E0) >> 1) | ((typ & 0x3E00) >> 2);
    let method = Method::from_code(code).ok_or(StunError::Unsupported(typ))?;
    let mut transaction_id = [0u8; 12];
    transaction_id.copy_from_slice(&header[8..20]);
    let body = raw
        .get(HEADER_BYTES..HEADER_BYTES + len)
        .ok_or(StunError::Truncated)?;
    let mut req = Request {
        method,
        transaction_id,
        lifetime_secs: None,
        channel: None,
        peer: None,
    };
    let mut rest = body;
    while rest.len() >= 4 {
        let t = u16::from_be_bytes([rest[0], rest[1]]);
        let l = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + l).ok_or(StunError::Truncated)?;
        match t {
            attr::LIFETIME => {
                let v: [u8; 4] = value.try_into().map_err(|_| StunError::BadAttribute(t))?;
                req.lifetime_secs = Some(u32::from_be_bytes(v));
            }
            attr::CHANNEL_NUMBER => {
                let v = value.get(..2).ok_or(StunError::BadAttribute(t))?;
                req.channel = Some(u16::from_be_bytes([v[0], v[1]]));
            }
            attr::XOR_PEER_ADDRESS if req.peer.is_none() => {
                req.peer =
                    Some(xor_address(value, &transaction_id).ok_or(StunError::BadAttribute(t))?);
            }
            _ => {}
        }
        // Attributes are padded to 4 bytes (RFC 8489 §14).
        let padded = 4 + l.div_ceil(4) * 4;
        rest = rest.get(padded..).unwrap_or(&[]);
    }
    Ok(req)
}

/// What the success response carries besides the method's own fields.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// The client's address as the floor sees it (XOR-MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// The relayed transport address (Allocate only).
    pub relayed: Option<SocketAddr>,
    /// LIFETIME to grant (Allocate, Refresh).
    pub lifetime_secs: u32,
}

/// The success response to `req`.
#[must_use]
pub fn success_response(req: &Request, answer: &Answer) -> Vec<u8> {
    let m = req.method.code();
    // Success class: C1 = 1, C0 = 0.
    let typ = (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | 0x0100;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&req.transaction_id);
    let tid = req.transaction_id;
    match req.method {
        Method::Allocate => {
            if let Some(relayed) = answer.relayed {
                put_xor_address(&mut out, attr::XOR_RELAYED_ADDRESS, relayed, &tid);
            }
            put_xor_address(&mut out, attr::XOR_MAPPED_ADDRESS, answer.mapped, &tid);
            put(
                &mut out,
                attr::LIFETIME,
                &answer.lifetime_secs.to_be_bytes(),
            );
        }
        Method::Refresh => put(
            &mut out,
            attr::LIFETIME,
            &answer.lifetime_secs.to_be_bytes(),
        ),
        Method::Binding => put_xor_address(&mut out, attr::XOR_MAPPED_ADDRESS, answer.mapped, &tid),
        Method::CreatePermission | Method::ChannelBind => {}
    }
    let len = (out.len() - HEADER_BYTES) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn put(out: &mut Vec<u8>, typ: u16, value: &[u8]) {
    out.extend_from_slice(&typ.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - value.len() % 4) % 4, 0);
}

/// XOR-ADDRESS encoding, RFC 8489 §14.2: port XOR the cookie's top 16 bits, IPv4 XOR the
/// cookie, IPv6 XOR the cookie and the transaction id.
fn xor_mask(tid: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid);
    mask
}

fn put_xor_address(out: &mut Vec<u8>, typ: u16, addr: SocketAddr, tid: &[u8; 12]) {
    let mask = xor_mask(tid);
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut v = Vec::with_capacity(20);
    match addr.ip() {
        IpAddr::V4(ip) => {
            v.extend_from_slice(&[0, 0x01]);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
        }
        IpAddr::V6(ip) => {
            v.extend_from_slice(&[0, 0x02]);
            v.extend_from_slice(&port.to_be_bytes());
            v.extend(ip.octets().iter().zip(&mask).map(|(a, m)| a ^ m));
        }
    }
    put(out, typ, &v);
}

fn xor_address(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    let mask = xor_mask(tid);
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match family {
        0x01 => {
            let b: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(std::array::from_fn::<u8, 4, _>(|i| {
                b[i] ^ mask[i]
            })))
        }
        0x02 => {
            let b: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| {
                b[i] ^ mask[i]
            })))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, Outcome, Request as ClientRequest};

    const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn reads_what_the_generator_sends() {
        let peer: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let raw = proto::encode_request(
            &ClientRequest::ChannelBind {
                channel: 0x4000,
                peer,
            },
            TID,
            None,
        )
        .unwrap();
        let req = parse_request(&raw).unwrap();
        assert_eq!(req.method, Method::ChannelBind);
        assert_eq!(req.transaction_id, TID);
        assert_eq!((req.channel, req.peer), (Some(0x4000), Some(peer)));

        let v6: SocketAddr = "[2001:db8::7]:3478".parse().unwrap();
        let raw = proto::encode_request(&ClientRequest::CreatePermission { peer: v6 }, TID, None)
            .unwrap();
        assert_eq!(parse_request(&raw).unwrap().peer, Some(v6));

        let raw =
            proto::encode_request(&ClientRequest::Refresh { lifetime_secs: 0 }, TID, None).unwrap();
        let req = parse_request(&raw).unwrap();
        assert_eq!((req.method, req.lifetime_secs), (Method::Refresh, Some(0)));

        let raw = proto::encode_request(&ClientRequest::allocate(Some(300)), TID, None).unwrap();
        assert_eq!(parse_request(&raw).unwrap().method, Method::Allocate);
    }

    #[test]
    fn the_generator_reads_the_answer() {
        let raw = proto::encode_request(&ClientRequest::allocate(None), TID, None).unwrap();
        let req = parse_request(&raw).unwrap();
        let relayed: SocketAddr = "127.0.0.1:41000".parse().unwrap();
        let mapped: SocketAddr = "127.0.0.1:52000".parse().unwrap();
        let answer = Answer {
            mapped,
            relayed: Some(relayed),
            lifetime_secs: 600,
        };
        let response = proto::decode_response(&success_response(&req, &answer)).unwrap();
        assert_eq!(response.transaction_id, TID);
        match response.outcome {
            Outcome::Success {
                relayed: r,
                mapped: m,
                lifetime_secs,
                has_integrity,
                ..
            } => {
                assert_eq!((r, m), (Some(relayed), Some(mapped)));
                assert_eq!(lifetime_secs, Some(600));
                assert!(!has_integrity);
            }
            other => panic!("not a success: {other:?}"),
        }
        for request in [
            ClientRequest::CreatePermission { peer: relayed },
            ClientRequest::ChannelBind {
                channel: 0x4001,
                peer: relayed,
            },
            ClientRequest::Binding,
        ] {
            let req = parse_request(&proto::encode_request(&request, TID, None).unwrap()).unwrap();
            let v6 = Answer {
                mapped: "[::1]:5000".parse().unwrap(),
                ..answer
            };
            let response = proto::decode_response(&success_response(&req, &v6)).unwrap();
            assert!(matches!(response.outcome, Outcome::Success { .. }));
        }
    }

    #[test]
    fn refuses_what_it_does_not_answer_and_never_panics() {
        assert_eq!(parse_request(&[0; 19]), Err(StunError::Truncated));
        let raw = proto::encode_request(&ClientRequest::Binding, TID, None).unwrap();
        let mut bad = raw.clone();
        bad[4] ^= 1;
        assert_eq!(parse_request(&bad), Err(StunError::NoCookie));
        let mut response = raw.clone();
        response[1] |= 0x10; // indication / response class bits
        assert!(matches!(
            parse_request(&response),
            Err(StunError::Unsupported(_))
        ));
        let mut long = raw.clone();
        long[3] = 40;
        assert_eq!(parse_request(&long), Err(StunError::Truncated));
        // Every prefix and every single-byte change of a real request: no panic.
        let full = proto::encode_request(
            &ClientRequest::ChannelBind {
                channel: 0x4000,
                peer: "[::1]:9".parse().unwrap(),
            },
            TID,
            None,
        )
        .unwrap();
        for n in 0..full.len() {
            let _ = parse_request(&full[..n]);
            for x in [0x00, 0xff, 0x80] {
                let mut m = full.clone();
                m[n] = x;
                let _ = parse_request(&m);
            }
        }
    }
}
