//! PROXY protocol version 2 header decoder (HAProxy's proxy-protocol.txt §2.2), for TURN
//! servers behind a TCP load balancer (AWS NLB, HAProxy `send-proxy-v2`).
//!
//! The balancer writes one binary header at the start of each TCP connection, before any byte
//! of the client's stream (before the TLS ClientHello on a TLS listener). It carries the
//! client's address and port as the balancer saw them; the server uses that address as the
//! client side of the connection's 5-tuple (RFC 8656 §2).
//!
//! Layout: 12-byte signature, version/command byte (`0x2_`: version 2; low nibble 0 = `LOCAL`,
//! 1 = `PROXY`), family/transport byte (`0x11` TCP over IPv4, `0x21` TCP over IPv6), a 16-bit
//! big-endian length of what follows, then the addresses (source address, destination address,
//! source port, destination port) and optional TLVs, which are skipped.
//!
//! This module is pure: [`decode`] looks at the bytes received so far and says how many bytes it
//! needs in all, or what the header says, or why it is refused. It never asks for a byte past
//! the header, so a reader that reads only what it is told never consumes the client's stream.
//! It never panics on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The 12-byte signature that starts every version 2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Bytes before the address block: signature, version/command, family, length.
pub const FIXED_BYTES: usize = 16;

/// Largest address block (addresses plus TLVs) accepted, in bytes. 216 bytes is the largest
/// address part (two AF_UNIX paths); 536 leaves room for the TLVs balancers add (AWS NLB's VPC
/// endpoint id, HAProxy's unique id, ALPN, authority) and bounds what a connection may make the
/// server buffer before it is known to be a client.
pub const MAX_ADDRESS_BLOCK_BYTES: usize = 536;

/// Largest whole header accepted, in bytes.
pub const MAX_HEADER_BYTES: usize = FIXED_BYTES + MAX_ADDRESS_BLOCK_BYTES;

/// The start of a version 1 (text) header, which is refused.
const V1_PREFIX: &[u8] = b"PROXY ";

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// `LOCAL`: the balancer's own connection (a health check); the connection's own
    /// addresses apply. The address block, if any, is ignored (§2.2).
    Local,
    /// `PROXY` over TCP: the connection carries a client's stream.
    Proxy {
        /// The client's address and port as the balancer saw them.
        source: SocketAddr,
        /// The address and port the client connected to (the balancer's front end).
        destination: SocketAddr,
    },
}

/// The result of [`decode`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not enough bytes yet: the header needs at least `needed_bytes` bytes in all (counting
    /// those already given). Never more than [`MAX_HEADER_BYTES`].
    Incomplete {
        /// Bytes needed in all.
        needed_bytes: usize,
    },
    /// A complete header of `header_bytes` bytes; the client's stream starts right after it.
    Complete {
        /// What the header says.
        header: Header,
        /// The header's length in bytes, TLVs included.
        header_bytes: usize,
    },
}

/// Why a header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The stream does not start with the version 2 signature (no header at all).
    #[error("no PROXY v2 signature")]
    NoSignature,
    /// A version 1 (text) header, which this server does not accept.
    #[error("PROXY protocol version 1 (text) header")]
    Version1,
    /// The version nibble is not 2.
    #[error("PROXY protocol version {0} (only 2 is accepted)")]
    BadVersion(u8),
    /// The command nibble is neither `LOCAL` (0) nor `PROXY` (1).
    #[error("PROXY v2 command {0:#x} is undefined")]
    BadCommand(u8),
    /// The length field is over [`MAX_ADDRESS_BLOCK_BYTES`].
    #[error("PROXY v2 address block of {0} bytes is over the limit")]
    TooLong(u16),
    /// The length field is shorter than the addresses of the family.
    #[error("PROXY v2 address block of {len} bytes is too short for family {family:#04x}")]
    AddressTooShort {
        /// The family/transport byte.
        family: u8,
        /// The length field.
        len: u16,
    },
    /// A `PROXY` command for a family or transport a TURN stream cannot carry: UNSPEC, UDP,
    /// AF_UNIX or an undefined value.
    #[error("PROXY v2 family/transport {0:#04x} is not TCP over IPv4 or IPv6")]
    UnsupportedFamily(u8),
}

impl ProxyError {
    /// True for headers that are well formed but of a kind this server does not take
    /// (version 1, a family other than TCP over IPv4/IPv6); false for broken ones.
    pub fn is_unsupported(self) -> bool {
        matches!(
            self,
            ProxyError::Version1 | ProxyError::UnsupportedFamily(_)
        )
    }
}

/// Decodes the PROXY v2 header at the start of `received` (the bytes of the connection so far).
/// Looks at no byte past the header. Decides as early as it can: a first byte that cannot start
/// a header is refused at once.
pub fn decode(received: &[u8]) -> Result<Decoded, ProxyError> {
    let sig_seen = received.len().min(SIGNATURE.len());
    if received[..sig_seen] != SIGNATURE[..sig_seen] {
        let v1_seen = received.len().min(V1_PREFIX.len());
        return if received[..v1_seen] != V1_PREFIX[..v1_seen] {
            Err(ProxyError::NoSignature)
        } else if v1_seen == V1_PREFIX.len() {
            Err(ProxyError::Version1)
        } else {
            Ok(Decoded::Incomplete {
                needed_bytes: V1_PREFIX.len(),
            })
        };
    }
    let Some(fixed) = received.get(..FIXED_BYTES) else {
        return Ok(Decoded::Incomplete {
            needed_bytes: FIXED_BYTES,
        });
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::BadVersion(version));
    }
    if command > 1 {
        return Err(ProxyError::BadCommand(command));
    }
    let family = fixed[13];
    let len = u16::from_be_bytes([fixed[14], fixed[15]]);
    if usize::from(len) > MAX_ADDRESS_BLOCK_BYTES {
        return Err(ProxyError::TooLong(len));
    }
    let header_bytes = FIXED_BYTES + usize::from(len);
    let Some(block) = received.get(FIXED_BYTES..header_bytes) else {
        return Ok(Decoded::Incomplete {
            needed_bytes: header_bytes,
        });
    };
    let header = if command == 0 {
        Header::Local
    } else {
        let (source, destination) = addresses(family, len, block)?;
        Header::Proxy {
            source,
            destination,
        }
    };
    Ok(Decoded::Complete {
        header,
        header_bytes,
    })
}

/// The source and destination of a `PROXY` command's address block (TLVs after them ignored).
fn addresses(family: u8, len: u16, block: &[u8]) -> Result<(SocketAddr, SocketAddr), ProxyError> {
    let too_short = ProxyError::AddressTooShort { family, len };
    match family {
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
        0x11 => {
            let b: &[u8; 12] = block
                .get(..12)
                .and_then(|s| s.try_into().ok())
                .ok_or(too_short)?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]));
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Ok((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
        0x21 => {
            let b: &[u8; 36] = block
                .get(..36)
                .and_then(|s| s.try_into().ok())
                .ok_or(too_short)?;
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[o..o + 16]);
                // An IPv4 client seen by an IPv6 front end is the IPv4 client.
                Ipv6Addr::from(a).to_canonical()
            };
            let port = |o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
            Ok((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        other => Err(ProxyError::UnsupportedFamily(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with `ver_cmd`, `family` and the address block `block`, its length field
    /// saying `block.len()`.
    fn header(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn v4_block() -> Vec<u8> {
        let mut b = vec![192, 0, 2, 7, 198, 51, 100, 1];
        b.extend_from_slice(&50_000u16.to_be_bytes());
        b.extend_from_slice(&3478u16.to_be_bytes());
        b
    }

    fn v6_block() -> Vec<u8> {
        let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut b = src.octets().to_vec();
        b.extend_from_slice(&dst.octets());
        b.extend_from_slice(&50_001u16.to_be_bytes());
        b.extend_from_slice(&5349u16.to_be_bytes());
        b
    }

    fn complete(header: Header, header_bytes: usize) -> Result<Decoded, ProxyError> {
        Ok(Decoded::Complete {
            header,
            header_bytes,
        })
    }

    fn incomplete(needed_bytes: usize) -> Result<Decoded, ProxyError> {
        Ok(Decoded::Incomplete { needed_bytes })
    }

    #[test]
    fn table_of_headers() {
        let v4 = Header::Proxy {
            source: "192.0.2.7:50000".parse().unwrap(),
            destination: "198.51.100.1:3478".parse().unwrap(),
        };
        let v6 = Header::Proxy {
            source: "[2001:db8::7]:50001".parse().unwrap(),
            destination: "[2001:db8::1]:5349".parse().unwrap(),
        };
        let mut with_tlv = v4_block();
        // A TLV (PP2_TYPE_AWS, 0xEA) with a VPC endpoint id: skipped.
        with_tlv.extend_from_slice(&[0xEA, 0x00, 0x05, 0x01, b'v', b'p', b'c', b'e']);
        let mut mapped = v6_block();
        mapped[..16].copy_from_slice(&"::ffff:192.0.2.9".parse::<Ipv6Addr>().unwrap().octets());
        let mut unix = vec![0u8; 216];
        unix[..5].copy_from_slice(b"/sock");
        let stun_binding = [0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        let tls_hello = [0x16, 0x03, 0x01, 0x02, 0x00];
        let oversized = {
            let mut h = header(0x21, 0x11, &[]);
            h[14..16].copy_from_slice(&(MAX_ADDRESS_BLOCK_BYTES as u16 + 1).to_be_bytes());
            h
        };
        let largest = header(0x21, 0x11, &[v4_block(), vec![0; 524]].concat());
        let cases: Vec<(&str, Vec<u8>, Result<Decoded, ProxyError>)> = vec![
            (
                "PROXY TCP4",
                header(0x21, 0x11, &v4_block()),
                complete(v4, 28),
            ),
            (
                "PROXY TCP6",
                header(0x21, 0x21, &v6_block()),
                complete(v6, 52),
            ),
            (
                "TLVs are skipped",
                header(0x21, 0x11, &with_tlv),
                complete(v4, 36),
            ),
            (
                "IPv4-mapped source is IPv4",
                header(0x21, 0x21, &mapped),
                complete(
                    Header::Proxy {
                        source: "192.0.2.9:50001".parse().unwrap(),
                        destination: "[2001:db8::1]:5349".parse().unwrap(),
                    },
                    52,
                ),
            ),
            (
                "LOCAL without addresses",
                header(0x20, 0x00, &[]),
                complete(Header::Local, 16),
            ),
            (
                "LOCAL with addresses",
                header(0x20, 0x11, &v4_block()),
                complete(Header::Local, 28),
            ),
            (
                "LOCAL with an odd family",
                header(0x20, 0x31, &[1, 2, 3]),
                complete(Header::Local, 19),
            ),
            ("largest accepted", largest, complete(v4, MAX_HEADER_BYTES)),
            ("empty", vec![], incomplete(16)),
            ("signature only", SIGNATURE.to_vec(), incomplete(16)),
            (
                "truncated signature",
                SIGNATURE[..5].to_vec(),
                incomplete(16),
            ),
            (
                "truncated addresses",
                header(0x21, 0x11, &v4_block())[..20].to_vec(),
                incomplete(28),
            ),
            (
                "truncated TLV",
                header(0x21, 0x11, &with_tlv)[..30].to_vec(),
                incomplete(36),
            ),
            (
                "STUN request",
                stun_binding.to_vec(),
                Err(ProxyError::NoSignature),
            ),
            (
                "TLS ClientHello",
                tls_hello.to_vec(),
                Err(ProxyError::NoSignature),
            ),
            (
                "wrong signature byte",
                {
                    let mut h = header(0x21, 0x11, &v4_block());
                    h[9] ^= 0x20;
                    h
                },
                Err(ProxyError::NoSignature),
            ),
            (
                "v1 text",
                b"PROXY TCP4 192.0.2.7 198.51.100.1 50000 3478\r\n".to_vec(),
                Err(ProxyError::Version1),
            ),
            (
                "v1 UNKNOWN",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Err(ProxyError::Version1),
            ),
            ("v1 prefix so far", b"PROX".to_vec(), incomplete(6)),
            (
                "not v1 after all",
                b"PROXIMA".to_vec(),
                Err(ProxyError::NoSignature),
            ),
            (
                "version 1 nibble",
                header(0x11, 0x11, &v4_block()),
                Err(ProxyError::BadVersion(1)),
            ),
            (
                "version 3 nibble",
                header(0x31, 0x11, &v4_block()),
                Err(ProxyError::BadVersion(3)),
            ),
            (
                "command 2",
                header(0x22, 0x11, &v4_block()),
                Err(ProxyError::BadCommand(2)),
            ),
            (
                "command 15",
                header(0x2f, 0x11, &v4_block()),
                Err(ProxyError::BadCommand(15)),
            ),
            ("oversized length", oversized, Err(ProxyError::TooLong(537))),
            (
                "length 0xffff",
                {
                    let mut h = header(0x21, 0x11, &[]);
                    h[14..16].copy_from_slice(&[0xff, 0xff]);
                    h
                },
                Err(ProxyError::TooLong(0xffff)),
            ),
            (
                "TCP4 block too short",
                header(0x21, 0x11, &v4_block()[..11]),
                Err(ProxyError::AddressTooShort {
                    family: 0x11,
                    len: 11,
                }),
            ),
            (
                "TCP6 block too short",
                header(0x21, 0x21, &v4_block()),
                Err(ProxyError::AddressTooShort {
                    family: 0x21,
                    len: 12,
                }),
            ),
            (
                "PROXY UNSPEC",
                header(0x21, 0x00, &[]),
                Err(ProxyError::UnsupportedFamily(0x00)),
            ),
            (
                "UDP over IPv4",
                header(0x21, 0x12, &v4_block()),
                Err(ProxyError::UnsupportedFamily(0x12)),
            ),
            (
                "UDP over IPv6",
                header(0x21, 0x22, &v6_block()),
                Err(ProxyError::UnsupportedFamily(0x22)),
            ),
            (
                "AF_UNIX stream",
                header(0x21, 0x31, &unix),
                Err(ProxyError::UnsupportedFamily(0x31)),
            ),
            (
                "AF_UNIX datagram",
                header(0x21, 0x32, &unix),
                Err(ProxyError::UnsupportedFamily(0x32)),
            ),
            (
                "undefined family",
                header(0x21, 0x41, &v4_block()),
                Err(ProxyError::UnsupportedFamily(0x41)),
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(&bytes), want, "{name}");
        }
    }

    #[test]
    fn bytes_after_the_header_are_not_looked_at() {
        let mut h = header(0x21, 0x11, &v4_block());
        let len = h.len();
        h.extend_from_slice(&[0x16, 0x03, 0x01]);
        assert!(matches!(
            decode(&h),
            Ok(Decoded::Complete { header_bytes, .. }) if header_bytes == len
        ));
    }

    #[test]
    fn fed_byte_by_byte_it_asks_for_exactly_the_header() {
        // A reader that reads only `needed_bytes` never reads past the header.
        for full in [
            header(0x21, 0x11, &v4_block()),
            header(0x21, 0x21, &v6_block()),
            header(0x20, 0x00, &[]),
        ] {
            let mut have = 0;
            loop {
                match decode(&full[..have]).unwrap() {
                    Decoded::Incomplete { needed_bytes } => {
                        assert!(needed_bytes > have && needed_bytes <= full.len());
                        have += 1;
                    }
                    Decoded::Complete { header_bytes, .. } => {
                        assert_eq!((have, header_bytes), (full.len(), full.len()));
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn never_panics_on_any_prefix_or_mutation() {
        // Every truncation and every single-byte value at every position of a few headers.
        let seeds = [
            header(0x21, 0x11, &v4_block()),
            header(0x21, 0x21, &v6_block()),
            header(0x20, 0x00, &[]),
        ];
        for seed in seeds {
            for cut in 0..=seed.len() {
                let _ = decode(&seed[..cut]);
            }
            for pos in 0..seed.len() {
                for v in 0..=255u8 {
                    let mut m = seed.clone();
                    m[pos] = v;
                    if let Ok(Decoded::Incomplete { needed_bytes }) = decode(&m) {
                        assert!(needed_bytes <= MAX_HEADER_BYTES);
                    }
                }
            }
        }
    }

    #[test]
    fn unsupported_and_malformed_are_told_apart() {
        assert!(ProxyError::Version1.is_unsupported());
        assert!(ProxyError::UnsupportedFamily(0x31).is_unsupported());
        assert!(!ProxyError::BadVersion(1).is_unsupported());
        assert!(!ProxyError::TooLong(600).is_unsupported());
        assert!(!ProxyError::NoSignature.is_unsupported());
    }
}
