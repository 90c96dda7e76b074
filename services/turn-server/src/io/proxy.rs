//! PROXY protocol v2 on the TCP and TLS listeners (`proxy_protocol_from`): who may send a
//! header, reading it off a new connection, and why a connection was refused.
//!
//! The header is decoded by [`turn_proto::proxy::decode`] (pure); this module reads exactly
//! the bytes it asks for, never one past the header, so what follows (the client's first STUN
//! frame, or its TLS ClientHello) stays in the socket for the connection's own reader.
//!
//! UDP and DTLS listeners take no header: a load balancer forwarding UDP either preserves the
//! client address (AWS NLB does for UDP) or cannot carry one per datagram.

use ipnet::IpNet;
use std::net::IpAddr;
use tokio::io::{AsyncRead, AsyncReadExt};
use turn_proto::proxy::{decode, Decoded, Header, ProxyError, MAX_HEADER_BYTES};

/// Why a connection on a PROXY-protocol listener was closed before it was served
/// (`turn_proxy_protocol_rejected_total{reason}`). Declaration order is [`ProxyReject::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyReject {
    /// The connection's source address is outside `proxy_protocol_from`.
    SourceNotAllowed,
    /// The stream does not start with a PROXY v2 signature.
    MissingHeader,
    /// A v2 header that is broken: bad version or command, length over the limit or too
    /// short for its addresses.
    Malformed,
    /// A header this server does not take: version 1 (text), or a family other than TCP over
    /// IPv4/IPv6 (UNSPEC, UDP, AF_UNIX) with the `PROXY` command.
    Unsupported,
    /// No complete header within the first-request timeout.
    Timeout,
    /// The peer closed (or reset) the connection before the header was complete, as a
    /// balancer's plain TCP health check does.
    Closed,
}

impl ProxyReject {
    /// Every reason, in declaration order.
    pub const ALL: [ProxyReject; 6] = [
        ProxyReject::SourceNotAllowed,
        ProxyReject::MissingHeader,
        ProxyReject::Malformed,
        ProxyReject::Unsupported,
        ProxyReject::Timeout,
        ProxyReject::Closed,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyReject::SourceNotAllowed => "source_not_allowed",
            ProxyReject::MissingHeader => "missing_header",
            ProxyReject::Malformed => "malformed",
            ProxyReject::Unsupported => "unsupported",
            ProxyReject::Timeout => "timeout",
            ProxyReject::Closed => "closed",
        }
    }
}

impl From<ProxyError> for ProxyReject {
    fn from(e: ProxyError) -> Self {
        if e == ProxyError::NoSignature {
            ProxyReject::MissingHeader
        } else if e.is_unsupported() {
            ProxyReject::Unsupported
        } else {
            ProxyReject::Malformed
        }
    }
}

/// The balancers allowed to send PROXY headers (`proxy_protocol_from`); empty means the
/// listeners take no header.
#[derive(Debug, Clone, Default)]
pub struct ProxyFrom(Vec<IpNet>);

impl ProxyFrom {
    /// The allow list.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// True when stream connections must start with a PROXY v2 header.
    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// True if a connection from `ip` may send a header. An IPv4-mapped IPv6 address (a
    /// dual-stack listener) is matched as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Reads the PROXY v2 header at the start of `stream`, and not one byte more. The caller bounds
/// the time (the first-request timeout). End of stream or a read error before the header is
/// complete is [`ProxyReject::Closed`].
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, ProxyReject> {
    let mut buf = [0u8; MAX_HEADER_BYTES];
    let mut have = 0;
    loop {
        match decode(&buf[..have])? {
            Decoded::Complete { header, .. } => return Ok(header),
            Decoded::Incomplete { needed_bytes } => {
                // decode never asks for more than MAX_HEADER_BYTES; min() keeps it that way.
                let want = needed_bytes.min(MAX_HEADER_BYTES);
                match stream.read(&mut buf[have..want]).await {
                    Ok(0) | Err(_) => return Err(ProxyReject::Closed),
                    Ok(n) => have += n,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use turn_proto::proxy::SIGNATURE;

    fn v4_header() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        h.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1, 0xc3, 0x50, 0x0d, 0x96]);
        h
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn reads_the_header_and_leaves_the_stream_after_it() {
        block_on(async {
            let (mut a, mut b) = tokio::io::duplex(1024);
            let mut sent = v4_header();
            sent.extend_from_slice(b"STUN");
            // Written in pieces, the way a slow balancer might.
            for piece in sent.chunks(5) {
                a.write_all(piece).await.unwrap();
            }
            let h = read_header(&mut b).await.unwrap();
            assert_eq!(
                h,
                Header::Proxy {
                    source: "192.0.2.7:50000".parse().unwrap(),
                    destination: "198.51.100.1:3478".parse().unwrap(),
                }
            );
            let mut rest = [0u8; 4];
            b.read_exact(&mut rest).await.unwrap();
            assert_eq!(&rest, b"STUN");
        });
    }

    #[test]
    fn refusals_map_to_their_reasons() {
        block_on(async {
            let cases: [(&[u8], ProxyReject); 5] = [
                (
                    &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12],
                    ProxyReject::MissingHeader,
                ),
                (
                    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                    ProxyReject::Unsupported,
                ),
                (&v4_header()[..20], ProxyReject::Closed),
                (
                    &[&SIGNATURE[..], &[0x21, 0x31, 0, 0]].concat(),
                    ProxyReject::Unsupported,
                ),
                (
                    &[&SIGNATURE[..], &[0x21, 0x11, 0xff, 0xff]].concat(),
                    ProxyReject::Malformed,
                ),
            ];
            for (bytes, want) in cases {
                let (mut a, mut b) = tokio::io::duplex(1024);
                a.write_all(bytes).await.unwrap();
                drop(a);
                assert_eq!(read_header(&mut b).await, Err(want), "{bytes:?}");
            }
        });
    }

    #[test]
    fn reasons_are_in_declaration_order_and_named_once() {
        let names: Vec<&str> = ProxyReject::ALL.iter().map(|r| r.as_str()).collect();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert_eq!(ProxyReject::ALL[0], ProxyReject::SourceNotAllowed);
    }

    #[test]
    fn the_allow_list_matches_mapped_addresses_as_ipv4() {
        let from = ProxyFrom::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(from.enabled());
        assert!(from.allows("10.1.2.3".parse().unwrap()));
        assert!(from.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!from.allows("192.0.2.1".parse().unwrap()));
        assert!(!ProxyFrom::default().enabled());
    }
}
