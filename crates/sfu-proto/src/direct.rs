//! The subscribe leg's direct send: the worker numbers, protects (SRTP, RFC 3711; AEAD
//! AES-GCM, RFC 7714) and addresses forwarded RTP itself instead of handing every copy to rtc's
//! write pipeline.
//!
//! **Why.** A call-graph profile at 1 -> 100 (one worker, release) put rtc's write pipeline at
//! 41 % of the worker, of which the SRTP cipher was about 9 % and our send side
//! ([`crate::send_side`]) 6 %: the rest was each copy moving, as a ~250-byte message, through
//! the queues of the interceptor, SRTP, DTLS, SCTP, data-channel, demuxer and ICE handlers.
//! Here a copy is numbered and recorded by the same send side, marshalled once, sealed by the
//! same `rtc-srtp` context type rtc would use, and queued as a datagram.
//!
//! **Where the keys come from.** rtc 0.21 keeps a PC's SRTP contexts to itself. It derives them
//! at the end of the DTLS handshake (DTLS-SRTP, RFC 5764 §4.2) with the SRTP key derivation
//! function (RFC 3711 §4.3.1, RFC 6188 §7 for AES-256), which runs AES under the master key
//! through the crypto provider of the PC's setting engine. Each subscribe PC gets its own
//! provider, a [`KeyTap`] over ring's: the first AES block the KDF encrypts under a new key is
//! the master salt (label 0, index 0), so the tap keeps at most [`MAX_CANDIDATES`] (key, block)
//! pairs as candidates. No candidate is trusted: the first SRTP packets rtc sends on the PC are
//! opened with each candidate and each profile of its key length ([`KeyTap::verify`]); the one
//! that authenticates a packet is the PC's local master key and profile. Until then, and for
//! good if none does within [`VERIFY_ATTEMPTS`] packets (counted), rtc sends as before. If the
//! tap sees a new key later (a new DTLS handshake), the worker stops sending directly.
//!
//! **Rollover counters** (RFC 3711 §3.3.1). rtc's context and the direct one each keep an SSRC's
//! rollover counter from the sequence numbers they protect. Every SRTP packet rtc sends on the
//! PC is noted (SSRC, sequence number, at most [`MAX_NOTED_STREAMS`] streams), and the direct
//! context is advanced through them ([`DirectLeg::follow`]), so it continues where rtc left off,
//! across a wrap too. After the switch rtc sends no RTP on the PC: retransmissions come out of
//! the send side for the worker ([`crate::send_side::DirectSend::take_retransmissions`]).
//!
//! **When.** A forwarded copy is numbered and recorded when it is forwarded, and queued on the
//! leg; it is protected when the worker's send path takes the PC's datagrams, a few PCs at a
//! time, as rtc's were: the first subscribers of a large fan-out leave before the last ones'
//! SRTP is done.
//!
//! **Addressing.** The destination is where rtc sends the PC's SRTP and SRTCP: the nominated
//! pair's remote address (ICE-lite, RFC 8445 §7.3.1.5). Each SRTP/SRTCP datagram rtc still sends
//! (sender reports every second) moves it if the pair changed.

use crate::demux::Proto;
use bytes::BytesMut;
use rtc::crypto::providers::RingProvider;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm,
    CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto,
    RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Most (key, block) candidates a tap keeps: rtc builds two contexts per handshake (local and
/// remote), so two per handshake; more is a new handshake or not the KDF.
pub const MAX_CANDIDATES: usize = 4;
/// SRTP packets rtc sends on a PC that are tried against the candidates before giving up.
pub const VERIFY_ATTEMPTS: u8 = 3;
/// Streams whose last sequence number sent through rtc is noted for the rollover counters.
pub const MAX_NOTED_STREAMS: usize = 16;

/// One key the SRTP KDF ran under, and the first block it encrypted under it.
struct Candidate {
    key: Vec<u8>,
    block: [u8; 16],
}

/// The crypto of a [`KeyTap`]: ring's, noting the SRTP KDF's keys.
struct TapCrypto {
    inner: RingProvider,
    candidates: Mutex<Vec<Candidate>>,
    /// Grows whenever the KDF runs under a key that is not a candidate.
    generation: AtomicU64,
}

/// A subscribe PC's crypto provider: ring's, keeping the SRTP master keys rtc derives (see the
/// module docs). Never logs or exposes a key.
pub struct KeyTap {
    crypto: TapCrypto,
}

impl Default for KeyTap {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyTap {
    /// A tap with no candidate yet.
    pub fn new() -> Self {
        Self {
            crypto: TapCrypto {
                inner: RingProvider::new(),
                candidates: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
            },
        }
    }

    /// Grows whenever the KDF runs under a key that is not a candidate: by two at the first
    /// DTLS handshake, and again at any later one (new keys).
    pub fn generation(&self) -> u64 {
        self.crypto.generation.load(Ordering::Relaxed)
    }

    /// The local master key's context, if a candidate with a profile of its key length
    /// authenticates `datagram`, an SRTP packet rtc protected with the PC's local context. The
    /// returned context has protected nothing yet.
    pub fn verify(&self, datagram: &[u8]) -> Option<Context> {
        let candidates = self
            .crypto
            .candidates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let crypto = self.crypto.inner.crypto();
        for c in candidates.iter() {
            for &profile in profiles(c.key.len()) {
                let salt = &c.block[..profile.salt_len()];
                let Ok(mut probe) = Context::new(&c.key, salt, profile, None, None, crypto) else {
                    continue;
                };
                if probe.decrypt_rtp(datagram).is_ok() {
                    return Context::new(&c.key, salt, profile, None, None, crypto).ok();
                }
            }
        }
        None
    }
}

/// The SRTP profiles DTLS-SRTP may negotiate with a master key of `key_len` bytes.
fn profiles(key_len: usize) -> &'static [ProtectionProfile] {
    match key_len {
        16 => &[
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::Aes128CmHmacSha1_32,
        ],
        32 => &[
            ProtectionProfile::AeadAes256Gcm,
            ProtectionProfile::Aes256CmHmacSha1_80,
            ProtectionProfile::Aes256CmHmacSha1_32,
        ],
        _ => &[],
    }
}

impl RTCCryptoProvider for KeyTap {
    fn name(&self) -> &'static str {
        "ring (turnkey key tap)"
    }

    fn crypto(&self) -> &dyn RTCCrypto {
        &self.crypto
    }

    fn random(&self) -> &dyn RTCRandom {
        self.crypto.inner.random()
    }
}

impl RTCCrypto for TapCrypto {
    fn supports(&self, algorithm: CryptoAlgorithm) -> bool {
        self.inner.crypto().supports(algorithm)
    }

    fn hash(&self, algorithm: HashAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.crypto().hash(algorithm, data)
    }

    fn block_encrypt(
        &self,
        algorithm: BlockCipherAlgorithm,
        key: &[u8],
        block: &mut [u8],
    ) -> Result<(), CryptoError> {
        if let Ok(first) = <[u8; 16]>::try_from(&*block) {
            let mut c = self
                .candidates
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !c.iter().any(|c| c.key == key) {
                self.generation.fetch_add(1, Ordering::Relaxed);
                if c.len() < MAX_CANDIDATES {
                    c.push(Candidate {
                        key: key.to_vec(),
                        block: first,
                    });
                }
            }
        }
        self.inner.crypto().block_encrypt(algorithm, key, block)
    }

    fn new_hmac(&self, algorithm: HmacAlgorithm, key: &[u8]) -> Result<Box<dyn Mac>, CryptoError> {
        self.inner.crypto().new_hmac(algorithm, key)
    }

    fn new_stream_cipher(
        &self,
        algorithm: StreamCipherAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn StreamCipher>, CryptoError> {
        self.inner.crypto().new_stream_cipher(algorithm, key)
    }

    fn new_aead(
        &self,
        algorithm: AeadAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn AeadCipher>, CryptoError> {
        self.inner.crypto().new_aead(algorithm, key)
    }

    fn new_cbc(
        &self,
        algorithm: CbcAlgorithm,
        key: &[u8],
    ) -> Result<Box<dyn CbcCipher>, CryptoError> {
        self.inner.crypto().new_cbc(algorithm, key)
    }

    fn start_key_exchange(
        &self,
        algorithm: KeyExchangeAlgorithm,
    ) -> Result<Box<dyn rtc::crypto::ActiveKeyExchange>, CryptoError> {
        self.inner.crypto().start_key_exchange(algorithm)
    }

    fn generate_signing_key(
        &self,
        scheme: SignatureScheme,
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().generate_signing_key(scheme)
    }

    fn import_signing_key(
        &self,
        scheme: SignatureScheme,
        pkcs8_der: &[u8],
    ) -> Result<Arc<dyn SigningKey>, CryptoError> {
        self.inner.crypto().import_signing_key(scheme, pkcs8_der)
    }

    fn verify_signature(
        &self,
        scheme: SignatureScheme,
        public_key: PublicKey<'_>,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner
            .crypto()
            .verify_signature(scheme, public_key, message, signature)
    }
}

/// Whether `d` looks like SRTP or SRTCP (RTP version 2; RFC 7983 §7: first byte 128..=191).
pub fn is_srtp_or_srtcp(d: &[u8]) -> bool {
    d.first().is_some_and(|b| (128..=191).contains(b))
}

/// The (SSRC, sequence number) of an SRTP packet (not SRTCP: RFC 5761 §4, payload types
/// 64..=95 after the marker bit are RTCP's).
pub fn srtp_stream(d: &[u8]) -> Option<(u32, u16)> {
    if !is_srtp_or_srtcp(d) || d.len() < 12 || (64..=95).contains(&(d[1] & 0x7f)) {
        return None;
    }
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((ssrc, seq))
}

/// Most packets queued on a [`DirectLeg`] between two takes; beyond, the oldest is dropped
/// (and counted by the worker as a write error).
pub const MAX_QUEUED: usize = 1024;

/// A subscribe PC whose RTP the worker sends itself.
pub struct DirectLeg {
    ctx: Context,
    /// Where the PC's SRTP goes.
    pub to: (Proto, SocketAddr),
    /// The tap's generation when the context was built.
    pub generation: u64,
    /// Numbered and recorded, protected when the worker's send path takes them (so a large
    /// fan-out's first subscribers leave before the last ones' SRTP is done).
    queued: VecDeque<rtc::rtp::Packet>,
    /// Reused for marshalling.
    buf: Vec<u8>,
}

impl DirectLeg {
    /// A leg protecting with `ctx`, sending to `to`.
    pub fn new(ctx: Context, to: (Proto, SocketAddr), generation: u64) -> Self {
        Self {
            ctx,
            to,
            generation,
            queued: VecDeque::new(),
            buf: Vec::new(),
        }
    }

    /// rtc protected packet `seq` of `ssrc` with its own context: this one follows, so both
    /// agree on the stream's rollover counter.
    pub fn follow(&mut self, ssrc: u32, seq: u16) {
        let header = rtc::rtp::header::Header {
            version: 2,
            ssrc,
            sequence_number: seq,
            ..Default::default()
        };
        let mut b = [0u8; 13];
        if header.marshal_to(&mut b).is_ok() {
            let _ = self.ctx.encrypt_rtp_with_header(&b, &header);
        }
    }

    /// Queues `p` (numbered and recorded by the send side) for [`Self::take`]; `false` if the
    /// queue was full and its oldest packet was dropped.
    pub fn queue(&mut self, p: rtc::rtp::Packet) -> bool {
        let room = self.queued.len() < MAX_QUEUED;
        if !room {
            self.queued.pop_front();
        }
        self.queued.push_back(p);
        room
    }

    /// Protects the queued packets, handing each to `sent` (for [`Self::to`]); returns how many
    /// could not be (dropped).
    pub fn take(&mut self, mut sent: impl FnMut(BytesMut)) -> usize {
        let mut failed = 0;
        while let Some(p) = self.queued.pop_front() {
            match self.protect(&p) {
                Some(b) => sent(b),
                None => failed += 1,
            }
        }
        if self.queued.capacity() > 64 {
            self.queued.shrink_to(64);
        }
        failed
    }

    /// `p` marshalled and protected, or `None` if it cannot be.
    fn protect(&mut self, p: &rtc::rtp::Packet) -> Option<BytesMut> {
        let size = p.marshal_size();
        self.buf.resize(size, 0);
        let n = p.marshal_to(&mut self.buf).ok()?;
        let out = self
            .ctx
            .encrypt_rtp_with_header(&self.buf[..n], &p.header)
            .ok();
        if self.buf.capacity() > 2048 {
            self.buf = Vec::new();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER_KEY: [u8; 16] = [
        0x0d, 0xcd, 0x21, 0x3e, 0x4c, 0xbc, 0xf2, 0x8f, 0x01, 0x7f, 0x69, 0x94, 0x40, 0x1e, 0x28,
        0x89,
    ];
    const MASTER_SALT: [u8; 14] = [
        0x62, 0x77, 0x60, 0x38, 0xc0, 0x6d, 0xc9, 0x41, 0x9f, 0x6d, 0xd9, 0x43, 0x3e, 0x7c,
    ];

    fn packet(ssrc: u32, seq: u16, payload: &[u8]) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                ssrc,
                sequence_number: seq,
                timestamp: u32::from(seq) * 3000,
                ..Default::default()
            },
            payload: bytes::Bytes::copy_from_slice(payload),
        }
    }

    /// rtc's side: a context built through the tap, as rtc builds its local and remote ones.
    fn rtc_context(tap: &KeyTap, key: &[u8], salt: &[u8], profile: ProtectionProfile) -> Context {
        Context::new(key, salt, profile, None, None, tap.crypto()).unwrap()
    }

    fn parse_rtp(mut b: &[u8]) -> Option<rtc::rtp::Packet> {
        use rtc::shared::marshal::Unmarshal;
        rtc::rtp::Packet::unmarshal(&mut b).ok()
    }

    fn receiver(key: &[u8], salt: &[u8], profile: ProtectionProfile) -> Context {
        Context::new(key, salt, profile, None, None, RingProvider::new().crypto()).unwrap()
    }

    #[test]
    fn the_local_key_is_found_for_every_profile_and_only_it_verifies() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::AeadAes256Gcm,
            ProtectionProfile::Aes256CmHmacSha1_80,
        ] {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|i| i ^ 0x5a).collect();
            let salt = &MASTER_SALT[..profile.salt_len()];
            let remote_key: Vec<u8> = key.iter().map(|b| b ^ 0xff).collect();
            let tap = KeyTap::new();
            let mut local = rtc_context(&tap, &key, salt, profile);
            let _remote = rtc_context(&tap, &remote_key, salt, profile);
            assert_eq!(tap.generation(), 2, "{profile:?}");
            let sent = local
                .encrypt_rtp(&packet(7, 100, b"first").marshal().unwrap())
                .unwrap();
            let direct = tap.verify(&sent).expect("local key verifies");
            // The direct context continues the stream: the receiver opens what it protects.
            let mut rx = receiver(&key, salt, profile);
            rx.decrypt_rtp(&sent).unwrap();
            let mut leg = DirectLeg::new(direct, (Proto::Udp, addr()), 2);
            leg.follow(7, 100);
            let next = leg.protect(&packet(7, 101, b"second")).unwrap();
            let plain = rx.decrypt_rtp(&next).unwrap();
            let p = parse_rtp(&plain).unwrap();
            assert_eq!(&p.payload[..], b"second");
            assert_eq!(p.header.sequence_number, 101);
            // A packet protected under another key verifies nothing.
            let mut other = receiver(&remote_key, salt, profile);
            let foreign = other
                .encrypt_rtp(&packet(7, 100, b"x").marshal().unwrap())
                .unwrap();
            let only_remote = KeyTap::new();
            let _ = rtc_context(&only_remote, &key, salt, profile);
            assert!(only_remote.verify(&foreign).is_none(), "{profile:?}");
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn following_rtc_keeps_the_rollover_counter_across_a_wrap() {
        let profile = ProtectionProfile::Aes128CmHmacSha1_80;
        let tap = KeyTap::new();
        let mut local = rtc_context(&tap, &MASTER_KEY, &MASTER_SALT, profile);
        let mut rx = receiver(&MASTER_KEY, &MASTER_SALT, profile);
        // rtc sends 65534, 65535 and 0 (the counter becomes 1)...
        let mut first = None;
        for seq in [65534u16, 65535, 0] {
            let d = local
                .encrypt_rtp(&packet(9, seq, b"rtc").marshal().unwrap())
                .unwrap();
            rx.decrypt_rtp(&d).unwrap();
            first.get_or_insert(d);
        }
        let ctx = tap.verify(&first.unwrap()).unwrap();
        let mut leg = DirectLeg::new(ctx, (Proto::Udp, addr()), tap.generation());
        for seq in [65534u16, 65535, 0] {
            leg.follow(9, seq);
        }
        // ...and the direct leg goes on with 1 under counter 1: the receiver opens it.
        let d = leg.protect(&packet(9, 1, b"direct")).unwrap();
        assert_eq!(
            &parse_rtp(&rx.decrypt_rtp(&d).unwrap()).unwrap().payload[..],
            b"direct"
        );
        // Without following, the direct leg would use counter 0 and the receiver would refuse.
        let mut unfollowed = DirectLeg::new(
            receiver(&MASTER_KEY, &MASTER_SALT, profile),
            (Proto::Udp, addr()),
            0,
        );
        let d = unfollowed.protect(&packet(9, 2, b"lost")).unwrap();
        assert!(rx.decrypt_rtp(&d).is_err());
    }

    #[test]
    fn candidates_are_bounded_and_a_new_key_moves_the_generation() {
        let tap = KeyTap::new();
        for k in 0..10u8 {
            let _ = rtc_context(
                &tap,
                &[k; 16],
                &MASTER_SALT,
                ProtectionProfile::Aes128CmHmacSha1_80,
            );
        }
        assert!(tap.generation() >= 10);
        assert_eq!(tap.crypto.candidates.lock().unwrap().len(), MAX_CANDIDATES);
        // A held key again: no change. A new key: the generation moves (a new handshake).
        let g = tap.generation();
        let _ = rtc_context(
            &tap,
            &[0; 16],
            &MASTER_SALT,
            ProtectionProfile::Aes128CmHmacSha1_80,
        );
        assert_eq!(tap.generation(), g);
        let _ = rtc_context(
            &tap,
            &[99; 16],
            &MASTER_SALT,
            ProtectionProfile::Aes128CmHmacSha1_80,
        );
        assert!(tap.generation() > g);
    }

    #[test]
    fn srtp_headers_are_read_and_srtcp_and_others_are_not() {
        let d = packet(0x01020304, 0x0506, b"p").marshal().unwrap();
        assert_eq!(srtp_stream(&d), Some((0x01020304, 0x0506)));
        // A receiver report (payload type 201).
        let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 1];
        assert!(is_srtp_or_srtcp(&rr));
        assert_eq!(srtp_stream(&rr), None);
        assert_eq!(srtp_stream(&[0x16, 0xfe, 0xfd]), None, "DTLS");
        assert_eq!(srtp_stream(&[]), None);
    }
}
