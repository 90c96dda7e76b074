//! The STUN codec of `stun_proto::msg` on arbitrary bytes.
//!
//! Checks, beyond "never panics" (house style: decoders never panic on any byte string):
//! - `classify` and `stream_frame_len` agree on what a frame is and how long it is;
//! - a decoded message occupies exactly the input and its length field is a multiple of 4;
//! - `unknown_required` lists only comprehension-required attributes the message has, once each;
//! - an XOR address attribute that decodes re-encodes to the same address;
//! - the message's own attributes, rebuilt with `MessageBuilder` and signed with each integrity
//!   algorithm, decode again and verify with `verify_integrity` (and fail with another key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rtc_stun::attributes::{
    ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY, ATTR_MESSAGE_INTEGRITY_SHA256, ATTR_SOFTWARE,
    ATTR_USERNAME, ATTR_XORMAPPED_ADDRESS, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS,
};
use stun_proto::msg::{
    classify, decode, integrity_present, stream_frame_len, unknown_required, verify_integrity,
    xor_address, IntegrityAlgorithm, MessageBuilder, PacketKind,
};

const KEY: &[u8] = b"fuzz-key";

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    let frame = stream_frame_len(data);
    match kind {
        PacketKind::Stun => {
            let len = u16::from_be_bytes([data[2], data[3]]) as usize;
            assert_eq!(frame, Some(20 + len), "STUN frame length");
        }
        PacketKind::ChannelData => {
            let f = frame.expect("ChannelData has a frame length");
            assert!(f >= 4 && f.is_multiple_of(4), "ChannelData frame {f}");
        }
        PacketKind::Other => {}
    }

    let Ok(m) = decode(data) else {
        return;
    };
    assert!(data.len() >= 20);
    assert_eq!(data.len() % 4, 0);
    assert_eq!(
        u16::from_be_bytes([data[2], data[3]]) as usize + 20,
        data.len()
    );
    assert_eq!(m.raw, data);
    if data[0] <= 3 {
        assert_eq!(kind, PacketKind::Stun);
        assert_eq!(frame, Some(data.len()));
    }

    let known = [ATTR_USERNAME, ATTR_SOFTWARE, ATTR_MESSAGE_INTEGRITY];
    let unknown = unknown_required(&m, &known);
    for (i, t) in unknown.iter().enumerate() {
        assert!(t.required() && !known.contains(t));
        assert!(m.attributes.0.iter().any(|a| a.typ == *t));
        assert!(!unknown[..i].contains(t), "duplicate {t:?}");
    }

    for t in [
        ATTR_XORMAPPED_ADDRESS,
        ATTR_XOR_PEER_ADDRESS,
        ATTR_XOR_RELAYED_ADDRESS,
    ] {
        if let Some(addr) = xor_address(&m, t) {
            let mut b = MessageBuilder::new(m.typ, m.transaction_id);
            b.xor_address(t, addr);
            let again = decode(&b.finish()).expect("re-encoded address decodes");
            assert_eq!(xor_address(&again, t), Some(addr));
        }
    }

    for alg in [IntegrityAlgorithm::Sha1, IntegrityAlgorithm::Sha256] {
        let _ = verify_integrity(&m, KEY, alg);
    }
    let _ = integrity_present(&m);

    // Rebuild: same header, the attributes that precede any integrity, then sign.
    if data.len() > 60_000 {
        return;
    }
    for alg in [IntegrityAlgorithm::Sha1, IntegrityAlgorithm::Sha256] {
        let mut b2 = MessageBuilder::new(m.typ, m.transaction_id);
        for a in &m.attributes.0 {
            if [
                ATTR_MESSAGE_INTEGRITY,
                ATTR_MESSAGE_INTEGRITY_SHA256,
                ATTR_FINGERPRINT,
            ]
            .contains(&a.typ)
            {
                break;
            }
            b2.raw(a.typ, &a.value);
        }
        b2.integrity(KEY, alg).fingerprint();
        let raw = b2.finish();
        let signed = decode(&raw).expect("rebuilt and signed message decodes");
        assert_eq!(integrity_present(&signed), Some(alg));
        assert!(
            verify_integrity(&signed, KEY, alg),
            "own signature verifies"
        );
        assert!(!verify_integrity(&signed, b"other-key", alg));
    }
});
