//! `stun_proto::binding::handle_datagram` on arbitrary bytes, with and without RFC 5780.
//!
//! The first input byte picks the request context (source IPv4/IPv6, which local address the
//! request arrived on: each of the four RFC 5780 addresses or another one, UDP or TCP); the rest
//! is the datagram. Every datagram is answered by both configurations.
//!
//! Checks, beyond "never panics":
//! - every reply is a STUN message our own decoder accepts, a response (success or error) with
//!   the request's transaction id;
//! - a success carries XOR-MAPPED-ADDRESS = the request's source;
//! - the reply goes to the source's IP (the source itself unless RESPONSE-PORT over UDP), and
//!   leaves from another socket only over UDP with RFC 5780 configured;
//! - the reply is never much larger than the request (no reflection amplification).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc_stun::attributes::ATTR_XORMAPPED_ADDRESS;
use rtc_stun::message::{CLASS_ERROR_RESPONSE, CLASS_SUCCESS_RESPONSE};
use std::net::SocketAddr;
use stun_proto::binding::{
    handle_datagram, BindingConfig, BindingOutcome, BindingResult, RequestContext, ResponseSocket,
    Rfc5780Addrs,
};
use stun_proto::msg::{decode, xor_address, Transport};

/// Bytes a reply may exceed its request by: four address attributes (IPv6: 24 bytes each),
/// SOFTWARE, FINGERPRINT and an error reason. Generous; amplification would be far beyond it.
const REPLY_SLACK_BYTES: usize = 256;

fn rfc5780() -> Rfc5780Addrs {
    Rfc5780Addrs {
        primary_ip: "192.0.2.10".parse().unwrap(),
        alt_ip: "192.0.2.20".parse().unwrap(),
        primary_port: 3478,
        alt_port: 3479,
    }
}

fn context(sel: u8) -> RequestContext {
    let sources: [SocketAddr; 2] = [
        "198.51.100.1:40000".parse().unwrap(),
        "[2001:db8:1::1]:40001".parse().unwrap(),
    ];
    let r = rfc5780().sockets();
    let locals: [SocketAddr; 6] = [
        r[0],
        r[1],
        r[2],
        r[3],
        "192.0.2.99:3478".parse().unwrap(),
        "[2001:db8::10]:3478".parse().unwrap(),
    ];
    RequestContext {
        source: sources[(sel & 1) as usize],
        local: locals[((sel >> 1) as usize) % locals.len()],
        transport: if sel & 0x80 != 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        },
    }
}

fn check(req: &[u8], ctx: &RequestContext, cfg: &BindingConfig) {
    let BindingOutcome::Reply(r) = handle_datagram(req, ctx, cfg) else {
        return;
    };
    let m = decode(&r.bytes).expect("our reply decodes");
    assert!(m.typ.class == CLASS_SUCCESS_RESPONSE || m.typ.class == CLASS_ERROR_RESPONSE);
    assert_eq!(&m.transaction_id.0[..], &req[8..20], "same transaction id");
    assert_eq!(
        m.typ.class == CLASS_SUCCESS_RESPONSE,
        r.result == BindingResult::Success
    );
    if r.result == BindingResult::Success {
        assert_eq!(xor_address(&m, ATTR_XORMAPPED_ADDRESS), Some(ctx.source));
    }
    assert_eq!(r.to.ip(), ctx.source.ip());
    if ctx.transport != Transport::Udp {
        assert_eq!(r.to, ctx.source);
    }
    if r.via != ResponseSocket::Same {
        assert_eq!(ctx.transport, Transport::Udp);
        assert!(cfg.rfc5780.is_some_and(|a| a.contains(ctx.local)));
    }
    assert!(
        r.bytes.len() <= req.len() + REPLY_SLACK_BYTES,
        "reply {} bytes for a {}-byte request",
        r.bytes.len(),
        req.len()
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, req)) = data.split_first() else {
        return;
    };
    let ctx = context(sel);
    let plain = BindingConfig {
        software: Some("turnkey-fuzz".into()),
        rfc5780: None,
    };
    let nat = BindingConfig {
        software: Some("turnkey-fuzz".into()),
        rfc5780: Some(rfc5780()),
    };
    check(req, &ctx, &plain);
    check(req, &ctx, &nat);
});
