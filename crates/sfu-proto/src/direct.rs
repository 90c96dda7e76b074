//! The subscribe leg's direct send: the worker numbers, protects (SRTP, RFC 3711; AEAD
//! AES-GCM, RFC 7714) and addresses forwarded RTP itself instead of handing every copy to rtc's
//! write pipeline.
//!
//! **Why.** A call-graph profile at 1 -> 100 (one worker, release) put rtc's write pipeline at
//! 41 % of the worker, of which the SRTP cipher was about 9 % and our send side
//! ([`crate::send_side`]) 6 %: the rest was each copy moving, as a ~250-byte message, through
//! the queues of the interceptor, SRTP, DTLS, SCTP, data-channel, demuxer and ICE handlers.
//! Here a copy is numbered and recorded by the same send side, marshalled once with its
//! transport-wide number written in, and sealed in the datagram's own buffer ([`Protection`]):
//! AEAD AES-GCM (RFC 7714 §8) or AES-CM with HMAC-SHA1 (RFC 3711 §4.1.1, §4.2; the profile
//! Chromium negotiates), under session keys derived by the SRTP PRF, through the PC's crypto
//! provider (ring). An `rtc-srtp` context would take the marshalled packet, parse its header
//! again and copy it into a new buffer for every copy.
//!
//! **The other direction.** A publish PC's tap gives the publisher's key the same way
//! ([`KeyTap::verify_remote`]), and [`Opening`] opens its media for the worker
//! (`worker/receive.rs`).
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
use crate::send_side::TwccNumber;
use bytes::BytesMut;
use rtc::crypto::providers::RingProvider;
use rtc::crypto::{
    AeadAlgorithm, AeadCipher, BlockCipherAlgorithm, CbcAlgorithm, CbcCipher, CryptoAlgorithm,
    CryptoError, HashAlgorithm, HmacAlgorithm, KeyExchangeAlgorithm, Mac, PublicKey, RTCCrypto,
    RTCCryptoProvider, RTCRandom, SignatureScheme, SigningKey, StreamCipher, StreamCipherAlgorithm,
};
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::protection_profile::ProtectionProfile;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use turnkey_time::rate::TokenBucket;

/// Most (key, block) candidates a tap keeps: rtc builds two contexts per handshake (local and
/// remote), so two per handshake; more is a new handshake or not the KDF.
pub const MAX_CANDIDATES: usize = 4;
/// Packets that no candidate opened before the worker gives up on a PC's key: SRTP packets rtc
/// sends on a subscribe PC, or the peer's packets rtc authenticated on a PC whose remote key is
/// being verified ([`RemoteVerification`]).
pub const VERIFY_ATTEMPTS: u8 = 3;
/// SSRCs a [`RemoteVerification`] keeps of the packets rtc authenticated.
pub const MAX_VERIFIED_SSRCS: usize = 8;
/// Datagrams of other SSRCs a [`RemoteVerification`] may try a second, when rtc has no place
/// left for their SSRC (a burst of [`TRIAL_BURST`]).
pub const TRIALS_PER_SEC: u32 = 5000;
/// The burst of [`TRIALS_PER_SEC`].
pub const TRIAL_BURST: u32 = 256;
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
    /// The candidate [`KeyTap::verify`] found to be the local key.
    local: Mutex<Option<usize>>,
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
            local: Mutex::new(None),
        }
    }

    /// Grows whenever the KDF runs under a key that is not a candidate: by two at the first
    /// DTLS handshake, and again at any later one (new keys).
    pub fn generation(&self) -> u64 {
        self.crypto.generation.load(Ordering::Relaxed)
    }

    /// The first `Some` of `f` over the candidates and each profile of their key length, with
    /// the salt cut to the profile's length.
    fn find<T>(
        &self,
        mut f: impl FnMut(&[u8], &[u8], ProtectionProfile, &dyn RTCCrypto) -> Option<T>,
    ) -> Option<T> {
        self.find_at(|_, key, salt, profile, crypto| f(key, salt, profile, crypto))
            .map(|(_, t)| t)
    }

    /// [`Self::find`] also handing `f` the candidate's position, and giving it back.
    fn find_at<T>(
        &self,
        mut f: impl FnMut(usize, &[u8], &[u8], ProtectionProfile, &dyn RTCCrypto) -> Option<T>,
    ) -> Option<(usize, T)> {
        let candidates = self
            .crypto
            .candidates
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let crypto = self.crypto.inner.crypto();
        candidates.iter().enumerate().find_map(|(i, c)| {
            profiles(c.key.len())
                .iter()
                .find_map(|&p| f(i, &c.key, &c.block[..p.salt_len()], p, crypto))
                .map(|t| (i, t))
        })
    }

    /// The local master key's protection, if a candidate with a profile of its key length
    /// authenticates `datagram`, an SRTP packet rtc protected with the PC's local context. The
    /// returned protection has protected nothing yet.
    pub fn verify(&self, datagram: &[u8]) -> Option<Protection> {
        let (at, protection) = self.find_at(|_, key, salt, profile, crypto| {
            Opening::new(key, salt, profile, crypto)?.open(datagram)?;
            Protection::new(key, salt, profile, crypto)
        })?;
        *self.local.lock().unwrap_or_else(PoisonError::into_inner) = Some(at);
        Some(protection)
    }

    /// The remote master key's SRTCP unprotection, if a candidate other than the local key
    /// ([`Self::verify`] must have found it) authenticates `datagram`, an SRTCP packet the peer
    /// sent on the PC. The local key is left out so that our own SRTCP sent back at us (by
    /// anyone on the path) cannot pass for the peer's. The packet counts as received.
    pub fn verify_remote_rtcp(&self, datagram: &[u8]) -> Option<RtcpOpening> {
        let local = (*self.local.lock().unwrap_or_else(PoisonError::into_inner))?;
        self.find_at(|at, key, salt, profile, crypto| {
            if at == local {
                return None;
            }
            let mut open = RtcpOpening::new(key, salt, profile, crypto)?;
            open.open(datagram)?;
            Some(open)
        })
        .map(|(_, open)| open)
    }

    /// The remote master key's unprotection, if a candidate with a profile of its key length
    /// authenticates `datagram`, an SRTP packet the peer sent on the PC. The packet counts as
    /// received (its replay window has it).
    pub fn verify_remote(&self, datagram: &[u8]) -> Option<Opening> {
        self.find(|key, salt, profile, crypto| {
            let mut open = Opening::new(key, salt, profile, crypto)?;
            open.open(datagram)?;
            Some(open)
        })
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

/// The SSRC an `rtc-srtp` context keys its state by for datagram `d`, as rtc tells SRTCP
/// from SRTP (RFC 5761 §4: a second octet of 192..=223 is RTCP, whose first packet's sender
/// SSRC is at octet 4; otherwise the RTP header's SSRC, at octet 8); `None` if `d` is not
/// SRTP/SRTCP or too short to hold it.
pub fn srtp_or_srtcp_ssrc(d: &[u8]) -> Option<u32> {
    if !is_srtp_or_srtcp(d) {
        return None;
    }
    let at = if (192..=223).contains(d.get(1)?) {
        4
    } else {
        8
    };
    let b = d.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The verification of a peer's SRTP or SRTCP key on one PC, on evidence a spoofer cannot make.
///
/// Anyone who can send from the peer's 5-tuple can send datagrams that look like its SRTP and
/// open with no key. If those counted as failed attempts, a few of them right after the
/// handshake would leave the PC to rtc's slower path for good. So:
/// - a datagram is tried against the candidates if rtc authenticated a packet of its SSRC on
///   the PC before ([`Self::worth_trying`]): the peer's first packet of each SSRC is left to
///   rtc, and forged packets of other SSRCs cost no cipher work;
/// - or if rtc has no place left for its SSRC (the bound on SSRCs a PC hands rtc, which forged
///   SSRCs may have taken): then only a packet that opens gets a place beyond the bound, so the
///   peer's own streams still reach rtc. These trials, a few cipher operations each, are
///   limited to [`TRIALS_PER_SEC`] per PC;
/// - the worker gives up only when rtc authenticated [`VERIFY_ATTEMPTS`] packets that no
///   candidate had opened ([`Self::rtc_authenticated`]): evidence that the candidates are not
///   the peer's key. Forged packets do not authenticate in rtc, so they never count.
///
/// rtc reads one datagram at a time and delivers what it authenticated before the next, so the
/// SSRC of the datagram last handed to rtc ([`Self::handed`]) is the one its next delivery
/// authenticated.
#[derive(Debug)]
pub struct RemoteVerification {
    /// SSRCs of packets rtc authenticated (at most [`MAX_VERIFIED_SSRCS`]).
    authenticated: Vec<u32>,
    /// Packets rtc authenticated after no candidate opened them.
    missed: u8,
    /// The SSRC of the SRTP/SRTCP datagram last handed to rtc.
    handed: Option<u32>,
    /// Trials of datagrams of other SSRCs ([`TRIALS_PER_SEC`]).
    trials: TokenBucket,
}

impl RemoteVerification {
    /// A verification that starts at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            authenticated: Vec::new(),
            missed: 0,
            handed: None,
            trials: TokenBucket::new(TRIALS_PER_SEC, TRIAL_BURST, now),
        }
    }

    /// Whether a datagram of `ssrc` is to be tried against the candidates at `now`; `placed`:
    /// whether rtc has a place for its SSRC (it has been handed that SSRC, or the bound is not
    /// reached).
    pub fn worth_trying(&mut self, now: Instant, ssrc: u32, placed: bool) -> bool {
        self.authenticated.contains(&ssrc) || (!placed && self.trials.try_take(now))
    }

    /// Datagram `d` goes to rtc (the SSRC it carries, if SRTP or SRTCP).
    pub fn handed(&mut self, d: &[u8]) {
        self.handed = srtp_or_srtcp_ssrc(d);
    }

    /// rtc authenticated the datagram last handed to it; `true` if that makes
    /// [`VERIFY_ATTEMPTS`] packets no candidate opened (give up on the key).
    pub fn rtc_authenticated(&mut self) -> bool {
        if let Some(ssrc) = self.handed.take() {
            if self.authenticated.contains(&ssrc) {
                // Tried (every datagram of a known SSRC is) and not opened.
                self.missed = self.missed.saturating_add(1);
            } else if self.authenticated.len() < MAX_VERIFIED_SSRCS {
                self.authenticated.push(ssrc);
            }
        }
        self.missed >= VERIFY_ATTEMPTS
    }
}

/// Failures to open the packets of a stream (or of a subscriber's SRTCP) that the worker already
/// opens: the rule for leaving it to rtc.
///
/// A failure alone is no evidence that the worker's opener is wrong: a spoofer can send any
/// number of packets that do not open, but cannot keep the peer's own packets from opening. The
/// opener is wrong (a rollover counter it missed) only if the peer's packets stop opening too.
/// So the stream is left to rtc after `max` failures in a row **and** `silence` without a packet
/// that opened.
#[derive(Clone, Copy, Debug)]
pub struct OpenFailures {
    in_a_row: u8,
    opened_at: Instant,
}

impl OpenFailures {
    /// A stream the worker starts to open at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            in_a_row: 0,
            opened_at: now,
        }
    }

    /// A packet opened.
    pub fn opened(&mut self, now: Instant) {
        self.in_a_row = 0;
        self.opened_at = now;
    }

    /// A packet did not open; `true` if the stream is to be left to rtc.
    pub fn failed(&mut self, now: Instant, max: u8, silence: Duration) -> bool {
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.in_a_row >= max && now.saturating_duration_since(self.opened_at) >= silence
    }
}

/// Most packets queued on a [`DirectLeg`] between two takes; beyond, the oldest is dropped
/// (and counted by the worker as a write error).
pub const MAX_QUEUED: usize = 1024;
/// Most RTP streams (SSRCs) whose rollover counter one [`Protection`] keeps; a packet of one
/// more is not protected (dropped, counted). A subscribe PC has two per forwarded track (media
/// and RTX), and tracks are bounded by the room limits well below this.
pub const MAX_STREAMS: usize = 256;
/// Bytes of an AES-GCM authentication tag (RFC 7714 §7.1: SRTP with AES-GCM uses 16).
const GCM_TAG_LEN: usize = 16;

/// How a [`DirectLeg`] protects RTP: in the datagram's own buffer, under the session keys of
/// the PC's profile ([`Session`]), each stream at its own packet index. No copy, one
/// allocation per packet (the datagram).
pub struct Protection {
    session: Session,
    streams: PacketIndexes,
}

impl Protection {
    /// The protection of `profile` under a master key and salt (DTLS-SRTP, RFC 5764 §4.2).
    fn new(
        key: &[u8],
        salt: &[u8],
        profile: ProtectionProfile,
        crypto: &dyn RTCCrypto,
    ) -> Option<Self> {
        Some(Self {
            session: Session::new(key, salt, profile, crypto, Keys::Srtp)?,
            streams: PacketIndexes::default(),
        })
    }

    /// rtc protected packet `seq` of `ssrc` with its own context: this one follows, so both
    /// agree on the stream's rollover counter.
    fn follow(&mut self, ssrc: u32, seq: u16) {
        let _ = self.streams.index(ssrc, seq);
    }

    /// `p` marshalled, with `twcc` written as its only header extension, and protected; `None`
    /// if it cannot be.
    #[cfg(test)]
    fn protect(&mut self, p: &rtc::rtp::Packet, twcc: Option<TwccNumber>) -> Option<BytesMut> {
        self.protect_into(p, twcc, BytesMut::new())
    }

    /// [`Self::protect`] into `out` (emptied first; a buffer of an earlier datagram, so that
    /// its allocation is used again).
    fn protect_into(
        &mut self,
        p: &rtc::rtp::Packet,
        twcc: Option<TwccNumber>,
        mut out: BytesMut,
    ) -> Option<BytesMut> {
        let header_len = write_rtp(p, twcc, self.session.tag_len(), &mut out)?;
        let (ssrc, seq) = (p.header.ssrc, p.header.sequence_number);
        let index = self.streams.index(ssrc, seq)?;
        self.session.seal(ssrc, index, header_len, &mut out)?;
        Some(out)
    }
}

/// Bytes of an AES-CM session salt (RFC 3711 §4.3.1: 112 bits).
const CM_SALT_LEN: usize = 14;
/// Bytes of the HMAC-SHA1 session authentication key (RFC 3711 §4.2.1: 160 bits).
const CM_AUTH_KEY_LEN: usize = 20;
/// Bytes of an untruncated HMAC-SHA1 tag.
const SHA1_LEN: usize = 20;

/// The SRTP session keys of one direction of a PC, derived from its master key and salt with
/// the SRTP PRF (RFC 3711 §4.3.3; AES-256 for a 32-byte master key, RFC 6188 §7). Holds the
/// keyed ciphers and the salt, never a key.
enum Session {
    /// AEAD_AES_128_GCM or AEAD_AES_256_GCM (RFC 7714 §8): the header is the associated data,
    /// the tag 16 bytes.
    Gcm {
        cipher: Box<dyn AeadCipher>,
        salt: [u8; 12],
    },
    /// AES_128_CM / AES_256_CM with HMAC_SHA1_80 or _32 (RFC 3711 §4.1.1, §4.2; RFC 6188):
    /// the payload encrypted in counter mode, then the header and payload followed by the
    /// rollover counter authenticated, the tag truncated to `tag_len` bytes.
    Cm {
        cipher: Box<dyn StreamCipher>,
        salt: [u8; CM_SALT_LEN],
        auth: Box<dyn Mac>,
        tag_len: usize,
    },
}

impl Session {
    /// The session keys of `profile` under a master key and salt of its lengths.
    fn new(
        master_key: &[u8],
        master_salt: &[u8],
        profile: ProtectionProfile,
        crypto: &dyn RTCCrypto,
        keys: Keys,
    ) -> Option<Self> {
        use ProtectionProfile as P;
        let (block, aes256) = match master_key.len() {
            16 => (BlockCipherAlgorithm::Aes128, false),
            32 => (BlockCipherAlgorithm::Aes256, true),
            _ => return None,
        };
        if master_key.len() != profile.key_len() || master_salt.len() != profile.salt_len() {
            return None;
        }
        let derive =
            |label: u8, out: &mut [u8]| kdf(crypto, block, master_key, master_salt, label, out);
        let mut session_key = [0u8; 32];
        let session_key = &mut session_key[..master_key.len()];
        derive(keys.labels()[0], session_key)?;
        let session = match profile {
            P::AeadAes128Gcm | P::AeadAes256Gcm => {
                let mut salt = [0u8; 12];
                derive(keys.labels()[2], &mut salt)?;
                let aead = if aes256 {
                    AeadAlgorithm::Aes256Gcm
                } else {
                    AeadAlgorithm::Aes128Gcm
                };
                let cipher = crypto.new_aead(aead, session_key).ok();
                cipher.map(|cipher| Self::Gcm { cipher, salt })
            }
            P::Aes128CmHmacSha1_80
            | P::Aes128CmHmacSha1_32
            | P::Aes256CmHmacSha1_80
            | P::Aes256CmHmacSha1_32 => {
                let mut salt = [0u8; CM_SALT_LEN];
                derive(keys.labels()[2], &mut salt)?;
                let mut auth_key = [0u8; CM_AUTH_KEY_LEN];
                derive(keys.labels()[1], &mut auth_key)?;
                let auth = crypto.new_hmac(HmacAlgorithm::Sha1, &auth_key).ok();
                auth_key.fill(0);
                let algorithm = if aes256 {
                    StreamCipherAlgorithm::Aes256Ctr
                } else {
                    StreamCipherAlgorithm::Aes128Ctr
                };
                let cipher = crypto.new_stream_cipher(algorithm, session_key).ok();
                // SRTCP keeps the 80-bit tag with either profile (RFC 5764 §4.1.2).
                let tag_len = match (profile, keys) {
                    (_, Keys::Srtcp) | (P::Aes128CmHmacSha1_80 | P::Aes256CmHmacSha1_80, _) => 10,
                    _ => 4,
                };
                match (cipher, auth) {
                    (Some(cipher), Some(auth)) => Some(Self::Cm {
                        cipher,
                        salt,
                        auth,
                        tag_len,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        session_key.fill(0);
        session
    }

    /// Bytes of the tag that follows an SRTP packet.
    fn tag_len(&self) -> usize {
        match self {
            Self::Gcm { .. } => GCM_TAG_LEN,
            Self::Cm { tag_len, .. } => *tag_len,
        }
    }

    /// Protects `buf` (an RTP packet whose header is its first `header_len` bytes), packet
    /// `index` of `ssrc`, in place and appends the tag.
    fn seal(&mut self, ssrc: u32, index: u64, header_len: usize, buf: &mut BytesMut) -> Option<()> {
        if buf.len() < header_len {
            return None;
        }
        match self {
            Self::Gcm { cipher, salt } => {
                let mut tag = [0u8; GCM_TAG_LEN];
                let (aad, payload) = buf.split_at_mut(header_len);
                cipher
                    .seal_in_place(&gcm_iv(salt, ssrc, index), aad, payload, &mut tag)
                    .ok()?;
                buf.extend_from_slice(&tag);
            }
            Self::Cm {
                cipher,
                salt,
                auth,
                tag_len,
            } => {
                cipher
                    .apply_keystream(&cm_counter(salt, ssrc, index), &mut buf[header_len..])
                    .ok()?;
                let tag = cm_tag(auth, buf, index)?;
                buf.extend_from_slice(&tag[..*tag_len]);
            }
        }
        Some(())
    }

    /// Authenticates and decrypts `buf` (an SRTP packet without its tag, the header its first
    /// `header_len` bytes), packet `index` of `ssrc`, in place against `tag`; `None` (and `buf`
    /// not to be used) if it does not authenticate.
    fn open(
        &mut self,
        ssrc: u32,
        index: u64,
        header_len: usize,
        buf: &mut [u8],
        tag: &[u8],
    ) -> Option<()> {
        if buf.len() < header_len || tag.len() != self.tag_len() {
            return None;
        }
        match self {
            Self::Gcm { cipher, salt } => {
                let (aad, payload) = buf.split_at_mut(header_len);
                cipher
                    .open_in_place(&gcm_iv(salt, ssrc, index), aad, payload, tag)
                    .ok()
            }
            Self::Cm {
                cipher, salt, auth, ..
            } => {
                // Authenticate first (RFC 3711 §3.3 step 5), then decrypt.
                let expected = cm_tag(auth, buf, index)?;
                if !rtc::crypto::constant_time_eq(&expected[..tag.len()], tag) {
                    return None;
                }
                cipher
                    .apply_keystream(&cm_counter(salt, ssrc, index), &mut buf[header_len..])
                    .ok()
            }
        }
    }
}

impl Session {
    /// Authenticates and decrypts `buf`, an SRTCP packet's RTCP header (8 bytes) and
    /// encrypted rest, in place: packet `index` (31 bits) of sender `ssrc`, `esrtcp` the
    /// E flag and index word as sent, `tag` its tag (RFC 3711 §3.4; RFC 7714 §9 for AES-GCM,
    /// whose associated data is the header and that word). `None` (and `buf` not to be used)
    /// if it does not authenticate.
    fn open_rtcp(
        &mut self,
        ssrc: u32,
        index: u32,
        esrtcp: [u8; 4],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Option<()> {
        if buf.len() < 8 || tag.len() != self.tag_len() {
            return None;
        }
        match self {
            Self::Gcm { cipher, salt } => {
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&esrtcp);
                cipher
                    .open_in_place(
                        &gcm_iv(salt, ssrc, u64::from(index)),
                        &aad,
                        &mut buf[8..],
                        tag,
                    )
                    .ok()
            }
            Self::Cm {
                cipher, salt, auth, ..
            } => {
                let mut expected = [0u8; SHA1_LEN];
                auth.sign(&[buf, &esrtcp], &mut expected).ok()?;
                if !rtc::crypto::constant_time_eq(&expected[..tag.len()], tag) {
                    return None;
                }
                cipher
                    .apply_keystream(&cm_counter(salt, ssrc, u64::from(index)), &mut buf[8..])
                    .ok()
            }
        }
    }
}

/// SRTCP unprotection of one direction of a PC (any profile of [`Session`]), with a replay
/// window per sender SSRC over the explicit SRTCP index (RFC 3711 §3.4, §3.3.2); a sender is
/// held only once one of its packets authenticates, at most [`MAX_STREAMS`].
pub struct RtcpOpening {
    session: Session,
    streams: Vec<Received>,
}

impl RtcpOpening {
    fn new(
        master_key: &[u8],
        master_salt: &[u8],
        profile: ProtectionProfile,
        crypto: &dyn RTCCrypto,
    ) -> Option<Self> {
        Some(Self {
            session: Session::new(master_key, master_salt, profile, crypto, Keys::Srtcp)?,
            streams: Vec::new(),
        })
    }

    /// The compound RTCP packet of SRTCP datagram `d`, authenticated and decrypted; `None` if
    /// it is short, not encrypted (E flag clear), replayed or too old, or fails authentication.
    pub fn open(&mut self, d: &[u8]) -> Option<BytesMut> {
        let tag_len = self.session.tag_len();
        // AES-GCM: header | ciphertext | tag | E+index; AES-CM: header | ciphertext | E+index | tag.
        let (end, index_at, tag_at) = match self.session {
            Session::Gcm { .. } => {
                let index_at = d.len().checked_sub(4)?;
                let tag_at = index_at.checked_sub(tag_len)?;
                (tag_at, index_at, tag_at)
            }
            Session::Cm { .. } => {
                let tag_at = d.len().checked_sub(tag_len)?;
                let index_at = tag_at.checked_sub(4)?;
                (index_at, index_at, tag_at)
            }
        };
        if end < 8 {
            return None;
        }
        let esrtcp: [u8; 4] = d[index_at..index_at + 4].try_into().ok()?;
        if esrtcp[0] & 0x80 == 0 {
            return None;
        }
        let index = u32::from_be_bytes(esrtcp) & 0x7fff_ffff;
        let ssrc = u32::from_be_bytes(d[4..8].try_into().ok()?);
        if replayed(&self.streams, ssrc, u64::from(index)) {
            return None;
        }
        let mut buf = BytesMut::from(&d[..end]);
        self.session
            .open_rtcp(ssrc, index, esrtcp, &mut buf, &d[tag_at..tag_at + tag_len])?;
        accept(&mut self.streams, ssrc, u64::from(index));
        Some(buf)
    }
}

/// Whether packet `index` of `ssrc` was received already or is older than the window, or
/// `ssrc` is new and no more streams can be held.
fn replayed(streams: &[Received], ssrc: u32, index: u64) -> bool {
    let Some(r) = streams.iter().find(|r| r.ssrc == ssrc) else {
        return streams.len() >= MAX_STREAMS;
    };
    if index > r.highest {
        return false;
    }
    let age = r.highest - index;
    age >= REPLAY_WINDOW || r.window & (1 << age) != 0
}

/// Notes packet `index` of `ssrc` as received.
fn accept(streams: &mut Vec<Received>, ssrc: u32, index: u64) {
    let Some(r) = streams.iter_mut().find(|r| r.ssrc == ssrc) else {
        if streams.len() < MAX_STREAMS {
            streams.push(Received {
                ssrc,
                highest: index,
                window: 1,
            });
        }
        return;
    };
    if index > r.highest {
        let shift = index - r.highest;
        r.window = if shift >= REPLAY_WINDOW {
            1
        } else {
            (r.window << shift) | 1
        };
        r.highest = index;
    } else {
        r.window |= 1 << (r.highest - index);
    }
}

/// RFC 7714 §8.1: 00 00 || SSRC || ROC || SEQ, XORed with the session salt (§9.1 for SRTCP:
/// 00 00 || SSRC || 00 00 || 0 || index, the same bytes for an index below 2^31).
fn gcm_iv(salt: &[u8; 12], ssrc: u32, index: u64) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
    iv[6..12].copy_from_slice(&index.to_be_bytes()[2..]);
    for (v, s) in iv.iter_mut().zip(salt) {
        *v ^= s;
    }
    iv
}

/// RFC 3711 §4.1.1: the counter block of packet `index` of `ssrc`, (salt * 2^16) XOR
/// (SSRC * 2^64) XOR (index * 2^16), its last two bytes the block counter from 0.
fn cm_counter(salt: &[u8; CM_SALT_LEN], ssrc: u32, index: u64) -> [u8; 16] {
    let mut counter = [0u8; 16];
    counter[4..8].copy_from_slice(&ssrc.to_be_bytes());
    counter[8..14].copy_from_slice(&index.to_be_bytes()[2..]);
    for (c, s) in counter.iter_mut().zip(salt) {
        *c ^= s;
    }
    counter
}

/// RFC 3711 §4.2: HMAC-SHA1 over the packet (header and encrypted payload) and the rollover
/// counter of `index`, untruncated.
fn cm_tag(auth: &mut Box<dyn Mac>, packet: &[u8], index: u64) -> Option<[u8; SHA1_LEN]> {
    let roc = ((index >> 16) as u32).to_be_bytes();
    let mut tag = [0u8; SHA1_LEN];
    auth.sign(&[packet, &roc], &mut tag).ok()?;
    Some(tag)
}

/// Bits of an SRTP replay window (RFC 3711 §3.3.2: at least 64).
const REPLAY_WINDOW: u64 = 64;

/// One stream an [`Opening`] receives: its highest authenticated packet index and which of the
/// [`REPLAY_WINDOW`] indexes below it were received (bit `i`: `highest - i`).
struct Received {
    ssrc: u32,
    highest: u64,
    window: u64,
}

/// SRTP unprotection of a publish PC's RTP (any profile of [`Session`]), with the rollover
/// counter estimate (RFC 3711 §3.3.1) and replay window (§3.3.2) per stream; a stream is held
/// and its index moves only once a packet authenticates. The worker opens every SRTP packet of
/// the PC here, those rtc reads too, so the stream's rollover counter is always known.
pub struct Opening {
    session: Session,
    streams: Vec<Received>,
}

impl Opening {
    fn new(
        master_key: &[u8],
        master_salt: &[u8],
        profile: ProtectionProfile,
        crypto: &dyn RTCCrypto,
    ) -> Option<Self> {
        Some(Self {
            session: Session::new(master_key, master_salt, profile, crypto, Keys::Srtp)?,
            streams: Vec::new(),
        })
    }

    /// The packet index of `seq` of `ssrc`, if it is neither replayed nor too old, and the
    /// stream can be held (at most [`MAX_STREAMS`]).
    fn estimate(&self, ssrc: u32, seq: u16) -> Option<u64> {
        let Some(r) = self.streams.iter().find(|r| r.ssrc == ssrc) else {
            return (self.streams.len() < MAX_STREAMS).then_some(u64::from(seq));
        };
        let delta = i64::from(seq.wrapping_sub(r.highest as u16) as i16);
        let index = u64::try_from(r.highest as i64 + delta).ok()?;
        if index >= 1 << 48 {
            return None;
        }
        if index <= r.highest {
            let age = r.highest - index;
            if age >= REPLAY_WINDOW || r.window & (1 << age) != 0 {
                return None;
            }
        }
        Some(index)
    }

    /// The RTP packet (header and payload) of SRTP datagram `d`, authenticated and decrypted;
    /// `None` if it is not SRTP, is short, replayed or too old, or fails authentication.
    pub fn open(&mut self, d: &[u8]) -> Option<BytesMut> {
        let (ssrc, seq) = srtp_stream(d)?;
        let header_len = rtp_header_len(d)?;
        let tag_at = d.len().checked_sub(self.session.tag_len())?;
        if tag_at < header_len {
            return None;
        }
        let index = self.estimate(ssrc, seq)?;
        let mut buf = BytesMut::from(&d[..tag_at]);
        self.session
            .open(ssrc, index, header_len, &mut buf, &d[tag_at..])?;
        accept(&mut self.streams, ssrc, index);
        Some(buf)
    }
}

/// The length of an RTP header at the start of `d` (RFC 3550 §5.1, §5.3.1), if `d` holds it.
fn rtp_header_len(d: &[u8]) -> Option<usize> {
    let mut len = 12 + 4 * usize::from(*d.first()? & 0x0f);
    if d[0] & 0x10 != 0 {
        let words = d.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (d.len() >= len).then_some(len)
}

/// Which session keys a [`Session`] derives from the master key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Keys {
    /// SRTP's: KDF labels 0, 1, 2 (RFC 3711 §4.3.1).
    Srtp,
    /// SRTCP's: labels 3, 4, 5 (RFC 3711 §4.3.2).
    Srtcp,
}

impl Keys {
    /// The (encryption, authentication, salt) labels.
    fn labels(self) -> [u8; 3] {
        match self {
            Self::Srtp => [0x00, 0x01, 0x02],
            Self::Srtcp => [0x03, 0x04, 0x05],
        }
    }
}

/// The AES-CM PRF of the SRTP KDF (RFC 3711 §4.3.3, key derivation rate 0 as DTLS-SRTP sets
/// it): AES under the master key of (master salt XOR label at octet 7) || block counter.
fn kdf(
    crypto: &dyn RTCCrypto,
    algorithm: BlockCipherAlgorithm,
    master_key: &[u8],
    master_salt: &[u8],
    label: u8,
    out: &mut [u8],
) -> Option<()> {
    for (i, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = [0u8; 16];
        block[..master_salt.len()].copy_from_slice(master_salt);
        block[7] ^= label;
        block[14..].copy_from_slice(&(i as u16).to_be_bytes());
        crypto
            .block_encrypt(algorithm, master_key, &mut block)
            .ok()?;
        chunk.copy_from_slice(&block[..chunk.len()]);
        block.fill(0);
    }
    Some(())
}

/// The SRTP packet index (rollover counter and sequence number, RFC 3711 §3.3.1) of each
/// stream a sender protects, in a small vector (a PC has a few streams).
#[derive(Default)]
struct PacketIndexes {
    /// (SSRC, highest index protected).
    streams: Vec<(u32, u64)>,
}

impl PacketIndexes {
    /// The index of packet `seq` of `ssrc`: the one nearest the stream's highest (RFC 3711
    /// Appendix A), which moves if this one is higher. `None` past [`MAX_STREAMS`] streams,
    /// before the stream's first index, or past 2^48 packets (RFC 3711 §9.2).
    fn index(&mut self, ssrc: u32, seq: u16) -> Option<u64> {
        let Some((_, highest)) = self.streams.iter_mut().find(|(s, _)| *s == ssrc) else {
            if self.streams.len() >= MAX_STREAMS {
                return None;
            }
            self.streams.push((ssrc, u64::from(seq)));
            return Some(u64::from(seq));
        };
        let delta = i64::from(seq.wrapping_sub(*highest as u16) as i16);
        let index = u64::try_from(*highest as i64 + delta).ok()?;
        if index >= 1 << 48 {
            return None;
        }
        *highest = (*highest).max(index);
        Some(index)
    }
}

/// Marshals `p` into `out` (emptied, sized for `tail` more bytes) with `twcc` as its header
/// extension; the header's length, or `None` if it cannot be written. The common case, a
/// forwarded packet without extensions or padding, is written here directly (RFC 3550 §5.1,
/// one- or two-byte extension form per RFC 8285 §4.2/§4.3); anything else goes through rtc.
fn write_rtp(
    p: &rtc::rtp::Packet,
    twcc: Option<TwccNumber>,
    tail: usize,
    out: &mut BytesMut,
) -> Option<usize> {
    let h = &p.header;
    out.clear();
    match twcc {
        Some(n) if !h.extension && !h.padding && h.extensions.is_empty() && h.csrc.len() < 16 => {
            let header_len = 12 + 4 * h.csrc.len() + n.header_bytes();
            out.reserve(header_len + p.payload.len() + tail);
            out.extend_from_slice(&[
                (2 << 6) | 0x10 | h.csrc.len() as u8,
                (u8::from(h.marker) << 7) | (h.payload_type & 0x7f),
            ]);
            out.extend_from_slice(&h.sequence_number.to_be_bytes());
            out.extend_from_slice(&h.timestamp.to_be_bytes());
            out.extend_from_slice(&h.ssrc.to_be_bytes());
            for c in &h.csrc {
                out.extend_from_slice(&c.to_be_bytes());
            }
            let [hi, lo] = n.seq.to_be_bytes();
            if (1..=14).contains(&n.id) {
                // 0xBEDE, one word: id/len, the number, one padding octet.
                out.extend_from_slice(&[0xbe, 0xde, 0, 1, (n.id << 4) | 1, hi, lo, 0]);
            } else {
                // 0x1000 (appbits 0), one word: id, length, the number.
                out.extend_from_slice(&[0x10, 0x00, 0, 1, n.id, 2, hi, lo]);
            }
            out.extend_from_slice(&p.payload);
            Some(header_len)
        }
        _ => {
            let mut q;
            let p = match twcc {
                Some(n) => {
                    q = p.clone();
                    let value = bytes::Bytes::copy_from_slice(&n.seq.to_be_bytes());
                    q.header.set_extension(n.id, value).ok()?;
                    &q
                }
                None => p,
            };
            let size = p.marshal_size();
            out.resize(size, 0);
            let n = p.marshal_to(&mut out[..]).ok()?;
            out.truncate(n);
            out.reserve(tail);
            Some(p.header.marshal_size())
        }
    }
}

/// A subscribe PC whose RTP the worker sends itself.
pub struct DirectLeg {
    protection: Protection,
    /// Where the PC's SRTP goes.
    pub to: (Proto, SocketAddr),
    /// The tap's generation when the protection was built.
    pub generation: u64,
    /// Numbered and recorded, protected when the worker's send path takes them (so a large
    /// fan-out's first subscribers leave before the last ones' SRTP is done).
    queued: VecDeque<(rtc::rtp::Packet, Option<TwccNumber>)>,
}

impl DirectLeg {
    /// A leg protecting with `protection`, sending to `to`.
    pub fn new(protection: Protection, to: (Proto, SocketAddr), generation: u64) -> Self {
        Self {
            protection,
            to,
            generation,
            queued: VecDeque::new(),
        }
    }

    /// rtc protected packet `seq` of `ssrc` with its own context: this one follows, so both
    /// agree on the stream's rollover counter.
    pub fn follow(&mut self, ssrc: u32, seq: u16) {
        self.protection.follow(ssrc, seq);
    }

    /// Queues `p` (numbered and recorded by the send side; `twcc` is written into it when it
    /// is protected) for [`Self::take`]; `false` if the queue was full and its oldest packet
    /// was dropped.
    pub fn queue(&mut self, p: rtc::rtp::Packet, twcc: Option<TwccNumber>) -> bool {
        let room = self.queued.len() < MAX_QUEUED;
        if !room {
            self.queued.pop_front();
        }
        self.queued.push_back((p, twcc));
        room
    }

    /// Protects the queued packets, handing each to `sent` (for [`Self::to`]); returns how many
    /// could not be (dropped). Each is written into a buffer taken from `spare` while it has
    /// one (see [`crate::worker::Worker::recycle`]).
    pub fn take(&mut self, spare: &mut Vec<BytesMut>, mut sent: impl FnMut(BytesMut)) -> usize {
        let mut failed = 0;
        while let Some((p, twcc)) = self.queued.pop_front() {
            let buf = spare.pop().unwrap_or_default();
            match self.protection.protect_into(&p, twcc, buf) {
                Some(b) => sent(b),
                None => failed += 1,
            }
        }
        if self.queued.capacity() > 64 {
            self.queued.shrink_to(64);
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::srtp::context::Context;

    /// Every profile DTLS-SRTP negotiates here (RFC 5764 §4.1.2, RFC 7714 §14.2).
    const ALL_PROFILES: [ProtectionProfile; 6] = [
        ProtectionProfile::AeadAes128Gcm,
        ProtectionProfile::AeadAes256Gcm,
        ProtectionProfile::Aes128CmHmacSha1_80,
        ProtectionProfile::Aes128CmHmacSha1_32,
        ProtectionProfile::Aes256CmHmacSha1_80,
        ProtectionProfile::Aes256CmHmacSha1_32,
    ];

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
            let next = leg
                .protection
                .protect(&packet(7, 101, b"second"), None)
                .unwrap();
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

    /// A compound RTCP packet a subscriber sends: a receiver report and a PLI.
    fn rtcp_compound(sender: u32, media: u32) -> Vec<u8> {
        use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
        use rtc::rtcp::receiver_report::ReceiverReport;
        let rr = ReceiverReport {
            ssrc: sender,
            ..Default::default()
        };
        let pli = PictureLossIndication {
            sender_ssrc: sender,
            media_ssrc: media,
        };
        let pkts: Vec<Box<dyn rtc::rtcp::Packet>> = vec![Box::new(rr), Box::new(pli)];
        rtc::rtcp::packet::marshal(&pkts).unwrap().to_vec()
    }

    #[test]
    fn the_remote_key_opens_the_subscribers_srtcp_for_every_profile_and_refuses_replays() {
        for profile in ALL_PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|i| i ^ 0x21).collect();
            let local_key: Vec<u8> = key.iter().map(|b| b ^ 0xff).collect();
            let salt = &MASTER_SALT[..profile.salt_len()];
            let tap = KeyTap::new();
            let mut local = rtc_context(&tap, &local_key, salt, profile);
            let _remote = rtc_context(&tap, &key, salt, profile);
            // The subscriber protects its RTCP with its key (rtc-srtp, as every peer here).
            let mut subscriber = receiver(&key, salt, profile);
            let plain = rtcp_compound(0x0bad, 0xcafe);
            let first = subscriber.encrypt_rtcp(&plain).unwrap();
            assert!(
                tap.verify_remote_rtcp(&first).is_none(),
                "before the local key"
            );
            let sent = local
                .encrypt_rtp(&packet(7, 1, b"ours").marshal().unwrap())
                .unwrap();
            tap.verify(&sent).expect("local key");
            let mut open = tap.verify_remote_rtcp(&first).expect("remote key");
            assert!(
                open.open(&first).is_none(),
                "{profile:?}: the verifying packet again"
            );
            for _ in 0..3 {
                let d = subscriber.encrypt_rtcp(&plain).unwrap();
                assert_eq!(open.open(&d).unwrap()[..], plain[..], "{profile:?}");
                assert!(open.open(&d).is_none(), "{profile:?}: replayed");
            }
            // A forged tag, a cut datagram and our own SRTCP sent back do not open.
            let mut forged = subscriber.encrypt_rtcp(&plain).unwrap().to_vec();
            let n = forged.len();
            forged[n - 1] ^= 1;
            forged[n - 5] ^= 1;
            assert!(open.open(&forged).is_none(), "{profile:?}");
            assert!(open.open(&forged[..10]).is_none());
            assert!(open.open(&[]).is_none());
            let ours = local.encrypt_rtcp(&plain).unwrap();
            assert!(open.open(&ours).is_none(), "{profile:?}");
            let tap2 = KeyTap::new();
            let mut local2 = rtc_context(&tap2, &local_key, salt, profile);
            let _ = rtc_context(&tap2, &key, salt, profile);
            let sent = local2
                .encrypt_rtp(&packet(7, 1, b"ours").marshal().unwrap())
                .unwrap();
            tap2.verify(&sent).unwrap();
            let reflected = local2.encrypt_rtcp(&plain).unwrap();
            assert!(
                tap2.verify_remote_rtcp(&reflected).is_none(),
                "{profile:?}: our own SRTCP does not pass for the peer's"
            );
        }
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn following_rtc_keeps_the_rollover_counter_across_a_wrap() {
        for profile in [
            ProtectionProfile::Aes128CmHmacSha1_80,
            ProtectionProfile::AeadAes128Gcm,
        ] {
            let salt = &MASTER_SALT[..profile.salt_len()];
            let tap = KeyTap::new();
            let mut local = rtc_context(&tap, &MASTER_KEY, salt, profile);
            let mut rx = receiver(&MASTER_KEY, salt, profile);
            // rtc sends 65534, 65535 and 0 (the counter becomes 1)...
            let mut first = None;
            for seq in [65534u16, 65535, 0] {
                let d = local
                    .encrypt_rtp(&packet(9, seq, b"rtc").marshal().unwrap())
                    .unwrap();
                rx.decrypt_rtp(&d).unwrap();
                first.get_or_insert(d);
            }
            let protection = tap.verify(&first.unwrap()).unwrap();
            let mut leg = DirectLeg::new(protection, (Proto::Udp, addr()), tap.generation());
            for seq in [65534u16, 65535, 0] {
                leg.follow(9, seq);
            }
            // ...and the direct leg goes on with 1 under counter 1: the receiver opens it.
            let d = leg
                .protection
                .protect(&packet(9, 1, b"direct"), None)
                .unwrap();
            assert_eq!(
                &parse_rtp(&rx.decrypt_rtp(&d).unwrap()).unwrap().payload[..],
                b"direct",
                "{profile:?}"
            );
            // Without following, the direct leg would use counter 0 and the receiver would
            // refuse.
            let mut unfollowed =
                Protection::new(&MASTER_KEY, salt, profile, RingProvider::new().crypto()).unwrap();
            let d = unfollowed.protect(&packet(9, 2, b"lost"), None).unwrap();
            assert!(rx.decrypt_rtp(&d).is_err(), "{profile:?}");
        }
    }

    #[test]
    fn a_spare_buffer_is_written_over_and_what_it_held_does_not_leak_into_the_datagram() {
        for profile in ALL_PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|i| i ^ 0x5a).collect();
            let salt = &MASTER_SALT[..profile.salt_len()];
            let mut rx = receiver(&key, salt, profile);
            let protection =
                Protection::new(&key, salt, profile, RingProvider::new().crypto()).unwrap();
            let mut leg = DirectLeg::new(protection, (Proto::Udp, addr()), 1);
            // A sent datagram's buffer, still holding its (longer) bytes.
            let mut old = BytesMut::with_capacity(2048);
            old.extend_from_slice(&[0xee; 1200]);
            let old_at = old.as_ptr();
            let mut spare = vec![old];
            let n = TwccNumber { id: 3, seq: 77 };
            leg.queue(packet(5, 10, b"first"), Some(n));
            leg.queue(packet(5, 11, b"second"), None);
            let mut out = Vec::new();
            assert_eq!(leg.take(&mut spare, |d| out.push(d)), 0, "{profile:?}");
            assert!(spare.is_empty(), "{profile:?}: the spare buffer was taken");
            assert_eq!(out.len(), 2, "{profile:?}");
            assert_eq!(
                out[0].as_ptr(),
                old_at,
                "{profile:?}: written in the spare buffer"
            );
            let first = parse_rtp(&rx.decrypt_rtp(&out[0]).unwrap()).unwrap();
            assert_eq!(&first.payload[..], b"first", "{profile:?}");
            assert_eq!(first.header.sequence_number, 10, "{profile:?}");
            let second = parse_rtp(&rx.decrypt_rtp(&out[1]).unwrap()).unwrap();
            assert_eq!(&second.payload[..], b"second", "{profile:?}");
        }
    }

    /// rtc's way of sending a forwarded packet: the number set as a header extension, then
    /// marshalled and protected by its context.
    fn rtc_protect(ctx: &mut Context, p: &rtc::rtp::Packet, n: TwccNumber) -> BytesMut {
        let mut q = p.clone();
        q.header
            .set_extension(n.id, bytes::Bytes::copy_from_slice(&n.seq.to_be_bytes()))
            .unwrap();
        ctx.encrypt_rtp_with_header(&q.marshal().unwrap(), &q.header)
            .unwrap()
    }

    #[test]
    fn in_place_is_byte_for_byte_what_rtc_sends_across_a_wrap_and_a_late_packet() {
        for profile in ALL_PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|i| i ^ 0x3c).collect();
            let salt = &MASTER_SALT[..profile.salt_len()];
            let crypto = RingProvider::new();
            let mut theirs =
                Context::new(&key, salt, profile, None, None, crypto.crypto()).unwrap();
            let mut ours = Protection::new(&key, salt, profile, crypto.crypto()).unwrap();
            let mut rx = receiver(&key, salt, profile);
            // Across the wrap, a late packet from before it, then on.
            for (i, seq) in [65533u16, 65534, 65535, 0, 1, 65535, 2]
                .into_iter()
                .enumerate()
            {
                let n = TwccNumber {
                    id: 3,
                    seq: 1000 + i as u16,
                };
                let p = packet(0xabcd, seq, &[i as u8; 1000]);
                let expected = rtc_protect(&mut theirs, &p, n);
                let got = ours.protect(&p, Some(n)).unwrap();
                assert_eq!(got, expected, "{profile:?} seq {seq}");
                if i != 5 {
                    // (the receiver's replay window refuses the repeated 65535)
                    let plain = parse_rtp(&rx.decrypt_rtp(&got).unwrap()).unwrap();
                    assert_eq!(
                        plain.header.get_extension(3).unwrap()[..],
                        n.seq.to_be_bytes()
                    );
                    assert_eq!(plain.payload.len(), 1000);
                }
            }
        }
    }

    #[test]
    fn a_two_byte_extension_id_and_the_cm_profiles_carry_the_number_too() {
        for (profile, id) in [
            (ProtectionProfile::AeadAes128Gcm, 15u8),
            (ProtectionProfile::Aes128CmHmacSha1_80, 4),
            (ProtectionProfile::Aes128CmHmacSha1_80, 200),
        ] {
            let salt = &MASTER_SALT[..profile.salt_len()];
            let mut ours =
                Protection::new(&MASTER_KEY, salt, profile, RingProvider::new().crypto()).unwrap();
            let mut rx = receiver(&MASTER_KEY, salt, profile);
            let mut p = packet(5, 10, b"csrc too");
            p.header.csrc = vec![0x11223344];
            p.header.marker = true;
            let n = TwccNumber { id, seq: 0xbeef };
            let plain =
                parse_rtp(&rx.decrypt_rtp(&ours.protect(&p, Some(n)).unwrap()).unwrap()).unwrap();
            assert_eq!(plain.header.get_extension(id).unwrap()[..], [0xbe, 0xef]);
            assert_eq!(plain.header.csrc, vec![0x11223344]);
            assert!(plain.header.marker);
            assert_eq!(&plain.payload[..], b"csrc too", "{profile:?} id {id}");
        }
    }

    #[test]
    fn the_remote_key_opens_the_publishers_srtp_across_a_wrap_and_refuses_replays() {
        for profile in ALL_PROFILES {
            let key: Vec<u8> = (0..profile.key_len() as u8).map(|i| i ^ 0x77).collect();
            let local_key: Vec<u8> = key.iter().map(|b| b ^ 0xff).collect();
            let salt = &MASTER_SALT[..profile.salt_len()];
            // rtc builds both contexts through the tap; the publisher protects with its key.
            let tap = KeyTap::new();
            let _local = rtc_context(&tap, &local_key, salt, profile);
            let _remote = rtc_context(&tap, &key, salt, profile);
            let mut publisher = receiver(&key, salt, profile);
            let mut send = |seq: u16, body: &[u8]| {
                publisher
                    .encrypt_rtp(&packet(0x5eed, seq, body).marshal().unwrap())
                    .unwrap()
            };
            let first = send(65534, b"first");
            let mut open = tap.verify_remote(&first).expect("the remote key opens it");
            // Across the wrap (counter 1).
            for seq in [65535u16, 0, 1] {
                let d = send(seq, &[seq as u8; 50]);
                let plain = parse_rtp(&open.open(&d).expect("opens")).unwrap();
                assert_eq!(plain.header.sequence_number, seq);
                assert_eq!(&plain.payload[..], &[seq as u8; 50][..], "{profile:?}");
                // The same datagram again is a replay.
                assert!(open.open(&d).is_none(), "{profile:?} replay of {seq}");
            }
            assert!(
                open.open(&first).is_none(),
                "{profile:?}: the first is a replay too"
            );
            // A late packet from before the wrap, never seen: opens under counter 0.
            let late = {
                let mut p = receiver(&key, salt, profile);
                p.encrypt_rtp(&packet(0x5eed, 65533, b"late").marshal().unwrap())
                    .unwrap()
            };
            assert_eq!(
                &parse_rtp(&open.open(&late).unwrap()).unwrap().payload[..],
                b"late"
            );
            // A forged tag, and a packet under another key, do not open.
            let mut forged = send(2, b"x").to_vec();
            let n = forged.len();
            forged[n - 1] ^= 1;
            assert!(open.open(&forged).is_none());
            let mut other = receiver(&local_key, salt, profile);
            let foreign = other
                .encrypt_rtp(&packet(0x5eed, 3, b"x").marshal().unwrap())
                .unwrap();
            assert!(open.open(&foreign).is_none());
            // Neither moved the stream: the real packet 2 opens.
            assert!(open.open(&send(2, b"x")).is_some(), "{profile:?}");
        }
    }

    #[test]
    fn packets_that_do_not_authenticate_leave_no_stream_behind() {
        for profile in [
            ProtectionProfile::AeadAes128Gcm,
            ProtectionProfile::Aes128CmHmacSha1_80,
        ] {
            let salt = &MASTER_SALT[..profile.salt_len()];
            let crypto = RingProvider::new();
            let mut open = Opening::new(&MASTER_KEY, salt, profile, crypto.crypto()).unwrap();
            let mut publisher = receiver(&MASTER_KEY, salt, profile);
            let real = publisher
                .encrypt_rtp(&packet(1, 10, b"real").marshal().unwrap())
                .unwrap();
            // Spoofed datagrams with fresh SSRCs and a tag that does not authenticate.
            for ssrc in 2..2 + 2 * MAX_STREAMS as u32 {
                let mut d = real.to_vec();
                d[8..12].copy_from_slice(&ssrc.to_be_bytes());
                assert!(open.open(&d).is_none());
            }
            assert_eq!(open.streams.len(), 0, "{profile:?}");
            assert!(open.open(&real).is_some());
            assert_eq!(open.streams.len(), 1, "{profile:?}");
        }
    }

    #[test]
    fn verify_remote_needs_a_candidate() {
        let gcm = ProtectionProfile::AeadAes128Gcm;
        let tap = KeyTap::new();
        let _ = rtc_context(&tap, &MASTER_KEY, &MASTER_SALT[..12], gcm);
        let mut publisher = receiver(&MASTER_KEY, &MASTER_SALT[..12], gcm);
        let d = publisher
            .encrypt_rtp(&packet(1, 1, b"gcm").marshal().unwrap())
            .unwrap();
        assert!(KeyTap::new().verify_remote(&d).is_none(), "no candidate");
        assert!(tap.verify_remote(&d[..20]).is_none(), "short");
        assert!(tap.verify_remote(&d).is_some());
    }

    /// An SRTP-looking datagram of `ssrc` (nothing in it authenticates).
    fn srtp_of(ssrc: u32) -> Vec<u8> {
        let mut d = vec![0x80, 96, 0, 1, 0, 0, 0, 1];
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(&[0; 32]);
        d
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // virtual time anchored at one real instant
    fn a_key_is_given_up_only_for_packets_rtc_authenticated_that_no_candidate_opened() {
        let now = Instant::now();
        let mut v = RemoteVerification::new(now);
        // Forged datagrams: handed to rtc, never authenticated by it.
        for ssrc in 0..1000 {
            v.handed(&srtp_of(ssrc));
            assert!(!v.worth_trying(now, ssrc, true));
        }
        // The peer's first packet of SSRC 7: not tried, rtc authenticates it.
        v.handed(&srtp_of(7));
        assert!(
            !v.rtc_authenticated(),
            "the first packet of an SSRC is not a miss"
        );
        assert!(v.worth_trying(now, 7, true) && !v.worth_trying(now, 8, true));
        // A delivery with nothing handed (not SRTP, or already counted) counts nothing.
        assert!(!v.rtc_authenticated());
        v.handed(b"not srtp");
        assert!(!v.rtc_authenticated());
        // Packets of SSRC 7 tried, not opened, authenticated by rtc: misses.
        for i in 1..=VERIFY_ATTEMPTS {
            v.handed(&srtp_of(7));
            assert_eq!(v.rtc_authenticated(), i == VERIFY_ATTEMPTS, "miss {i}");
        }
        // The SSRCs kept are bounded; a first packet beyond is neither kept nor a miss.
        let mut v = RemoteVerification::new(now);
        for ssrc in 0..2 * MAX_VERIFIED_SSRCS as u32 {
            v.handed(&srtp_of(ssrc));
            assert!(!v.rtc_authenticated());
        }
        assert_eq!(v.authenticated.len(), MAX_VERIFIED_SSRCS);
        assert!(!v.worth_trying(now, MAX_VERIFIED_SSRCS as u32, true));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // virtual time anchored at one real instant
    fn ssrcs_rtc_has_no_place_for_are_tried_at_a_bounded_rate() {
        let t0 = Instant::now();
        let mut v = RemoteVerification::new(t0);
        let tried = (0..10_000u32)
            .filter(|&ssrc| v.worth_trying(t0, ssrc, false))
            .count();
        assert_eq!(tried, TRIAL_BURST as usize, "the burst at once");
        let later = t0 + Duration::from_secs(1);
        let tried = (0..10_000u32)
            .filter(|&ssrc| v.worth_trying(later, ssrc, false))
            .count();
        assert_eq!(tried, TRIAL_BURST as usize, "refilled up to the burst");
        // An SSRC rtc authenticated is always tried.
        v.handed(&srtp_of(9));
        assert!(!v.rtc_authenticated());
        assert!(v.worth_trying(later, 9, false));
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // virtual time anchored at one real instant
    fn failures_leave_a_stream_only_once_nothing_opened_for_the_silence() {
        let t0 = Instant::now();
        let silence = Duration::from_secs(1);
        let mut f = OpenFailures::new(t0);
        // Any number of failures while the peer's packets open (a spoofer's flood).
        for ms in 0..3000u64 {
            let now = t0 + Duration::from_millis(ms);
            if ms % 20 == 0 {
                f.opened(now);
            } else {
                assert!(!f.failed(now, 8, silence), "failure at {ms} ms");
            }
        }
        // Nothing opens any more (a missed rollover counter): given up once both hold.
        let last = t0 + Duration::from_millis(2980);
        for i in 1..=8u8 {
            assert!(!f.failed(last + Duration::from_millis(u64::from(i)), 8, silence));
        }
        assert!(f.failed(last + silence, 8, silence));
        // A silence alone is not enough either: the failures must come in a row.
        let mut f = OpenFailures::new(t0);
        assert!(!f.failed(t0 + Duration::from_secs(60), 8, silence));
    }

    #[test]
    fn rtp_header_lengths() {
        let mut p = packet(1, 1, b"abcd");
        assert_eq!(rtp_header_len(&p.marshal().unwrap()), Some(12));
        p.header.csrc = vec![1, 2];
        p.header
            .set_extension(1, bytes::Bytes::from_static(&[1, 2, 3]))
            .unwrap();
        let d = p.marshal().unwrap();
        assert_eq!(rtp_header_len(&d), Some(p.header.marshal_size()));
        assert_eq!(rtp_header_len(&d[..22]), None, "extension cut short");
        assert_eq!(rtp_header_len(&[]), None);
    }

    #[test]
    fn streams_and_indexes_are_bounded() {
        let mut ix = PacketIndexes::default();
        for ssrc in 0..MAX_STREAMS as u32 {
            assert_eq!(ix.index(ssrc, 7), Some(7));
        }
        assert_eq!(ix.index(u32::MAX, 7), None, "one stream too many");
        // Before the stream's first index there is none.
        assert_eq!(ix.index(0, 65530), None);
        // Each wrap moves the counter; the index is refused at 2^48.
        ix.streams[0].1 = (1 << 48) - 2;
        assert_eq!(ix.index(0, 65535), Some((1 << 48) - 1));
        assert_eq!(ix.index(0, 0), None);
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
    fn the_ssrc_rtc_keys_state_by_is_the_rtp_or_the_first_rtcp_senders() {
        let rtp = packet(0x0102_0304, 9, b"x").marshal().unwrap();
        assert_eq!(srtp_or_srtcp_ssrc(&rtp), Some(0x0102_0304));
        // A receiver report from SSRC 0x0a0b0c0d (second octet 201).
        let rr = [0x80, 201, 0, 1, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0, 0, 0];
        assert_eq!(srtp_or_srtcp_ssrc(&rr), Some(0x0a0b_0c0d));
        assert_eq!(srtp_or_srtcp_ssrc(&rr[..7]), None, "too short");
        assert_eq!(srtp_or_srtcp_ssrc(&rtp[..11]), None, "too short");
        // STUN and DTLS are neither.
        assert_eq!(
            srtp_or_srtcp_ssrc(&[0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0]),
            None
        );
        assert_eq!(
            srtp_or_srtcp_ssrc(&[22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
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
