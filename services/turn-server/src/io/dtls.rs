//! DTLS for TURN (RFC 8656 §3.1, RFC 7350): a sans-IO DTLS 1.2 server per DTLS socket and
//! worker. Datagrams from a client are decrypted and handed to the TURN core as that 5-tuple's
//! (transport `dtls`); what the core sends back is encrypted for the client. The certificate is
//! the TLS one ([`super::tls::CertStore`]); a reload applies to new DTLS associations.
//!
//! Unauthenticated state is bounded, in two layers:
//!
//! 1. A stateless gate for addresses with no association. It decodes the datagram's first
//!    record itself ([`wire`], a decoder that never panics) and answers a ClientHello without a
//!    valid cookie with a HelloVerifyRequest whose cookie is an HMAC over the client's IP:port,
//!    the ClientHello parameters and a time window ([`CookieMinter`], RFC 6347 §4.2.1). It
//!    stores nothing; any other datagram from an unknown address is dropped and counted.
//! 2. Only a ClientHello carrying a valid cookie, within the caps on half-open handshakes (per
//!    socket and per source IP, [`DtlsLimits`]), reaches webrtc-rs `rtc-dtls`'s [`Endpoint`],
//!    which then holds a half-open association until the handshake completes, fails (the
//!    endpoint refuses it, e.g. a DTLS 1.0-only offer) or its deadline passes; a new
//!    ClientHello from that address replaces it once its own cookie is verified. The TURN-level
//!    association (idle tracking) exists only after the handshake.
//!
//! rtc-dtls 0.21 has no option to skip its own HelloVerifyRequest (its server always runs
//! flight 0 -> flight 2 with a random cookie; `insecure_skip_verify` only concerns certificate
//! verification). To spare clients a second cookie round trip, the endpoint is made to issue
//! *our* cookie: the configuration's random source ([`seeded`]) hands out the verified cookie
//! for the one 20-byte draw (the cookie) made while the endpoint replays the client's first,
//! cookie-less ClientHello; the endpoint's HelloVerifyRequest is then checked to carry that
//! cookie and suppressed, and the client's second ClientHello completes the exchange. If the
//! check ever fails (another rtc-dtls version), the endpoint's own HelloVerifyRequest goes to
//! the client, which answers it (RFC 6347 §4.2.1 allows several): one more round trip, still
//! correct. A unit test pins the one-round-trip behaviour.
//!
//! Records that do not decode or fail authentication on an association are dropped and counted,
//! never a reason to tear it down (RFC 6347 §4.1.2.7).

use super::tls::TlsError;
use bytes::BytesMut;
use rtc_crypto::SignatureScheme;
use rtc_dtls::config::{ConfigBuilder, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes in our HelloVerifyRequest cookie: one byte of time-window tag and 19 bytes of
/// HMAC-SHA256. Equal to rtc-dtls's own cookie length, which [`seeded`] relies on.
pub const COOKIE_BYTES: usize = 20;

/// How long one cookie key is used; a cookie is accepted in its window and the next, so for
/// 30 to 60 s after it was issued (RFC 6347 §4.2.1: the secret changes frequently).
pub const COOKIE_WINDOW: Duration = Duration::from_secs(30);

/// Caps on DTLS state per socket and worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsLimits {
    /// Half-open handshakes (cookie verified, not yet finished); beyond, a new handshake's
    /// ClientHello is dropped (`dtls_handshake_limit`).
    pub max_handshakes: usize,
    /// Half-open handshakes from one source IP (`dtls_handshake_per_ip_limit`).
    pub max_handshakes_per_ip: usize,
    /// A handshake not finished this long after its verified ClientHello is removed.
    pub handshake_timeout: Duration,
    /// Associations (half-open and established) in total (`dtls_association_limit`).
    pub max_associations: usize,
    /// An established association with no valid datagram for this long is dropped (an
    /// allocation refreshes at least every few minutes, and clients send ChannelData or
    /// keepalives far more often).
    pub idle: Duration,
}

impl Default for DtlsLimits {
    fn default() -> Self {
        Self {
            max_handshakes: 2048,
            max_handshakes_per_ip: 16,
            handshake_timeout: Duration::from_secs(10),
            max_associations: 20_000,
            idle: Duration::from_secs(600),
        }
    }
}

/// Why a datagram gave the TURN core nothing; each maps to a
/// `turn_dropped_packets_total{reason}` value ([`DtlsDrop::reason`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtlsDrop {
    /// A ClientHello without a cookie from an address with no association: answered with a
    /// stateless HelloVerifyRequest, nothing kept.
    #[error("ClientHello without cookie (answered with HelloVerifyRequest)")]
    NoCookie,
    /// A ClientHello whose cookie is not valid for this address, these parameters or this time:
    /// treated like one without cookie (RFC 6347 §4.2.1), answered with a fresh
    /// HelloVerifyRequest.
    #[error("ClientHello with an invalid or expired cookie")]
    BadCookie,
    /// From an address with no association and not a ClientHello.
    #[error("no DTLS association and not a ClientHello: {0}")]
    NoAssociation(wire::DecodeError),
    /// The socket's cap on half-open handshakes is reached.
    #[error("too many DTLS handshakes in progress")]
    HandshakeLimit,
    /// The source IP's cap on half-open handshakes is reached.
    #[error("too many DTLS handshakes in progress from this IP")]
    HandshakePerIpLimit,
    /// The socket's cap on associations is reached.
    #[error("too many DTLS associations")]
    AssociationLimit,
    /// On an association: records that do not decode, fail authentication or are replays.
    /// The association is kept (RFC 6347 §4.1.2.7).
    #[error("undecodable or unauthenticated DTLS record")]
    BadRecord,
    /// The handshake state machine failed the handshake (e.g. no common version or cipher
    /// suite); its alert is sent and the half-open association removed, so the client can try
    /// again at once.
    #[error("DTLS handshake error: {0}")]
    HandshakeError(String),
}

impl DtlsDrop {
    /// The `reason` label value.
    pub fn reason(&self) -> &'static str {
        match self {
            DtlsDrop::NoCookie => "dtls_no_cookie",
            DtlsDrop::BadCookie => "dtls_bad_cookie",
            DtlsDrop::NoAssociation(_) => "dtls_no_association",
            DtlsDrop::HandshakeLimit => "dtls_handshake_limit",
            DtlsDrop::HandshakePerIpLimit => "dtls_handshake_per_ip_limit",
            DtlsDrop::AssociationLimit => "dtls_association_limit",
            DtlsDrop::BadRecord => "dtls_bad_record",
            DtlsDrop::HandshakeError(_) => "dtls_handshake_error",
        }
    }
}

/// `reason` label for a half-open handshake removed at its deadline or after its
/// retransmissions ran out (counted from [`DtlsServer::handle_timeout`]).
pub const HANDSHAKE_TIMEOUT_REASON: &str = "dtls_handshake_timeout";

/// What one datagram produced for the TURN core.
#[derive(Debug, Default)]
#[must_use]
pub struct Received {
    /// Decrypted application data: STUN/TURN messages or ChannelData.
    pub messages: Vec<BytesMut>,
    /// The established association ended (the peer's close_notify or its authenticated fatal
    /// alert): the core should release the 5-tuple's allocation.
    pub closed: bool,
    /// Why the datagram (or part of it) was dropped, to be counted.
    pub dropped: Option<DtlsDrop>,
}

impl Received {
    fn dropped(d: DtlsDrop) -> Self {
        Received {
            dropped: Some(d),
            ..Received::default()
        }
    }
}

/// What [`DtlsServer::handle_timeout`] removed.
#[derive(Debug, Default)]
#[must_use]
pub struct Expired {
    /// Established associations dropped as idle (the core should release their allocations).
    pub idle: Vec<SocketAddr>,
    /// Half-open handshakes removed at their deadline or after their retransmissions ran out.
    pub handshake_timeouts: u64,
}

/// Builds the DTLS server configuration from the PEM files (the key must be PKCS#8:
/// ECDSA P-256/P-384, Ed25519 or RSA).
pub fn handshake_config(cert: &Path, key: &Path) -> Result<Arc<HandshakeConfig>, TlsError> {
    let file_err = |path: &Path, reason: String| TlsError::File {
        path: path.into(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e.to_string()))?;
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("DTLS needs a PKCS#8 key: {e}")))?;
    let provider = rtc_crypto::default_provider().map_err(|e| TlsError::Key(format!("{e:?}")))?;
    let signing = [
        SignatureScheme::EcdsaP256Sha256,
        SignatureScheme::EcdsaP384Sha384,
        SignatureScheme::Ed25519,
        SignatureScheme::RsaPkcs1Sha256,
    ]
    .into_iter()
    .find_map(|s| {
        provider
            .crypto()
            .import_signing_key(s, pkcs8.secret_pkcs8_der())
            .ok()
    })
    .ok_or_else(|| TlsError::Key("unsupported key type for DTLS".into()))?;
    server_config(Certificate::from_signing_key(certs, signing))
}

/// The server configuration for `certificate`, with the random source of [`seeded`].
pub fn server_config(certificate: Certificate) -> Result<Arc<HandshakeConfig>, TlsError> {
    let provider = rtc_crypto::default_provider().map_err(|e| TlsError::Key(format!("{e:?}")))?;
    let cfg = ConfigBuilder::default()
        .with_crypto_provider(Arc::new(seeded::Provider::new(provider)))
        .with_certificates(vec![certificate])
        .build(false, None)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// A half-open association.
struct HalfOpen {
    deadline: Instant,
    /// The ClientHello random it started with (a new one from the address starts over).
    random: [u8; 32],
}

/// One DTLS socket's associations, behind the stateless cookie gate.
pub struct DtlsServer {
    endpoint: Endpoint,
    cookies: CookieMinter,
    limits: DtlsLimits,
    /// Half-open associations.
    handshakes: HashMap<SocketAddr, HalfOpen>,
    /// Half-open associations per source IP.
    handshakes_per_ip: HashMap<IpAddr, usize>,
    /// Established associations: when the last valid datagram came.
    established: HashMap<SocketAddr, Instant>,
    /// Our own datagrams (HelloVerifyRequests), sent before the endpoint's.
    out: VecDeque<(SocketAddr, BytesMut)>,
    generation: u64,
    reported_handshakes: usize,
    seeding_fallbacks: u64,
}

impl DtlsServer {
    /// A server on `local` with `cfg` (from [`handshake_config`]), at certificate `generation`.
    pub fn new(
        local: SocketAddr,
        cfg: Arc<HandshakeConfig>,
        generation: u64,
        limits: DtlsLimits,
        now: Instant,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(local, TransportProtocol::UDP, Some(cfg)),
            cookies: CookieMinter::new(now, COOKIE_WINDOW),
            limits,
            handshakes: HashMap::new(),
            handshakes_per_ip: HashMap::new(),
            established: HashMap::new(),
            out: VecDeque::new(),
            generation,
            reported_handshakes: 0,
            seeding_fallbacks: 0,
        }
    }

    /// The certificate generation in use for new associations.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// New associations use `cfg` from now on.
    pub fn set_config(&mut self, cfg: Arc<HandshakeConfig>, generation: u64) {
        self.endpoint.set_server_config(Some(cfg));
        self.generation = generation;
    }

    /// A datagram from `from`. Datagrams to send (HelloVerifyRequests, handshake flights,
    /// alerts) are then ready in [`Self::poll_transmit`].
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Received {
        self.take_endpoint_transmits();
        if self.established.contains_key(&from) {
            self.read_established(now, from, data)
        } else if let Some(random) = self.handshakes.get(&from).map(|h| h.random) {
            if let Ok(hello) = wire::ClientHello::parse(data) {
                if hello.random != random {
                    // Another handshake from this address (the client started over): answered
                    // as from a new address, and it replaces the half-open one once its cookie
                    // proves the address, so a spoofed ClientHello cannot cancel it.
                    if !hello.cookie.is_empty() && self.cookies.verify(now, from, &hello) {
                        self.drop_half_open(now, from);
                    }
                    return self.read_unknown(now, from, data);
                }
            }
            if wire::check_records(data).is_err() {
                return Received::dropped(DtlsDrop::BadRecord);
            }
            let r = self.endpoint.read(now, from, None, BytesMut::from(data));
            self.handshake_progress(now, from, r)
        } else {
            self.read_unknown(now, from, data)
        }
    }

    fn read_established(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Received {
        if wire::check_records(data).is_err() {
            // rtc-dtls would fail the whole read (and used to make us drop the association).
            return Received::dropped(DtlsDrop::BadRecord);
        }
        match self.endpoint.read(now, from, None, BytesMut::from(data)) {
            Ok(events) => {
                let mut r = Received::default();
                let mut progressed = false;
                for e in events {
                    match e {
                        EndpointEvent::ApplicationData(d) => r.messages.push(d),
                        EndpointEvent::PeerClosed => r.closed = true,
                        _ => progressed = true,
                    }
                }
                if r.closed {
                    self.established.remove(&from);
                } else if progressed || !r.messages.is_empty() {
                    self.established.insert(from, now);
                } else if !wire::has_handshake_record(data) {
                    // Not a repeat of the peer's last flight (RFC 6347 §4.2.4), yet nothing
                    // came of it: forged plaintext, failed authentication or a replay, which
                    // rtc-dtls discarded silently.
                    r.dropped = Some(DtlsDrop::BadRecord);
                }
                r
            }
            Err(rtc_shared::error::Error::ErrAlertFatalOrClose) => {
                // On an established association, rtc-dtls discards plaintext (epoch 0)
                // non-handshake records and anything that fails decryption, so an alert that
                // gets here was sent under the association's keys: the peer ended it.
                let _ = self.endpoint.stop(now, from);
                self.established.remove(&from);
                Received {
                    closed: true,
                    ..Received::default()
                }
            }
            Err(e) => {
                tracing::trace!(error = %e, client = %from, "DTLS record dropped");
                Received::dropped(DtlsDrop::BadRecord)
            }
        }
    }

    fn read_unknown(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Received {
        let hello = match wire::ClientHello::parse(data) {
            Ok(h) => h,
            Err(e) => return Received::dropped(DtlsDrop::NoAssociation(e)),
        };
        if hello.cookie.is_empty() || !self.cookies.verify(now, from, &hello) {
            let cookie = self.cookies.mint(now, from, &hello);
            let hvr = wire::hello_verify_request(hello.record_sequence, &cookie);
            self.out.push_back((from, BytesMut::from(&hvr[..])));
            return Received::dropped(if hello.cookie.is_empty() {
                DtlsDrop::NoCookie
            } else {
                DtlsDrop::BadCookie
            });
        }
        if self.handshakes.len() >= self.limits.max_handshakes {
            return Received::dropped(DtlsDrop::HandshakeLimit);
        }
        let per_ip = self.handshakes_per_ip.get(&from.ip()).copied().unwrap_or(0);
        if per_ip >= self.limits.max_handshakes_per_ip {
            return Received::dropped(DtlsDrop::HandshakePerIpLimit);
        }
        if self.handshakes.len() + self.established.len() >= self.limits.max_associations {
            return Received::dropped(DtlsDrop::AssociationLimit);
        }
        self.admit(now, from, &hello, data)
    }

    /// Hands a cookie-verified ClientHello to the endpoint, which starts a half-open
    /// association (see the module docs for the cookie hand-over).
    fn admit(
        &mut self,
        now: Instant,
        from: SocketAddr,
        hello: &wire::ClientHello<'_>,
        data: &[u8],
    ) -> Received {
        let (Ok(cookie), Ok(random)) = (
            <[u8; COOKIE_BYTES]>::try_from(hello.cookie),
            <[u8; 32]>::try_from(hello.random),
        ) else {
            return Received::dropped(DtlsDrop::BadCookie);
        };
        self.handshakes.insert(
            from,
            HalfOpen {
                deadline: now + self.limits.handshake_timeout,
                random,
            },
        );
        *self.handshakes_per_ip.entry(from.ip()).or_default() += 1;
        let result = match hello.first_hello() {
            Some(first) => {
                let replay = {
                    let _armed = seeded::arm(cookie);
                    self.endpoint
                        .read(now, from, None, BytesMut::from(&first[..]))
                };
                let mut own = Vec::new();
                while let Some(t) = self.endpoint.poll_transmit() {
                    own.push((t.transport.peer_addr, t.message));
                }
                let seeded = own
                    .iter()
                    .any(|(_, m)| wire::hello_verify_cookie(m) == Some(&cookie[..]));
                match replay {
                    Ok(_) if seeded => {
                        // The endpoint now expects a ClientHello with our cookie: this one. Its
                        // HelloVerifyRequest repeats ours, which the client already answered.
                        self.endpoint.read(now, from, None, BytesMut::from(data))
                    }
                    Ok(events) => {
                        self.seeding_fallbacks += 1;
                        tracing::debug!(
                            client = %from,
                            "DTLS cookie hand-over failed: the client gets the endpoint's own \
                             HelloVerifyRequest"
                        );
                        self.out.extend(own);
                        Ok(events)
                    }
                    Err(e) => {
                        // Refused (e.g. DTLS 1.0 only): the client gets the endpoint's alert.
                        // A fresh association numbers it 0, the number our HelloVerifyRequest
                        // took from the first ClientHello, and the client would discard it as a
                        // replay (RFC 6347 §4.1.2.6): number it after the second ClientHello.
                        for (_, m) in &mut own {
                            wire::renumber_plaintext(m, hello.record_sequence);
                        }
                        self.out.extend(own);
                        Err(e)
                    }
                }
            }
            None => {
                // Record or message sequence 0 on a second ClientHello (unusual): no room to
                // replay a first one before it; let the endpoint take it as a first one.
                let _armed = seeded::arm(cookie);
                self.endpoint.read(now, from, None, BytesMut::from(data))
            }
        };
        self.handshake_progress(now, from, result)
    }

    fn handshake_progress(
        &mut self,
        now: Instant,
        from: SocketAddr,
        result: Result<Vec<EndpointEvent>, rtc_shared::error::Error>,
    ) -> Received {
        let mut r = Received::default();
        match result {
            Ok(events) => {
                for e in events {
                    match e {
                        EndpointEvent::HandshakeComplete => {
                            self.forget_handshake(from);
                            self.established.insert(from, now);
                        }
                        EndpointEvent::ApplicationData(d) => r.messages.push(d),
                        EndpointEvent::PeerClosed => {
                            // Before completion the core never saw this 5-tuple.
                            self.forget_handshake(from);
                            if self.established.remove(&from).is_some() {
                                r.closed = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // The endpoint failed the handshake (and queued its alert): forget it so the
                // client can start over from the same address at once.
                tracing::debug!(error = %e, client = %from, "DTLS handshake failed");
                self.drop_half_open(now, from);
                r.dropped = Some(DtlsDrop::HandshakeError(e.to_string()));
            }
        }
        r
    }

    /// Removes a half-open association without a word to the client: its close_notify could
    /// only confuse a new attempt from the same address.
    fn drop_half_open(&mut self, now: Instant, addr: SocketAddr) {
        self.take_endpoint_transmits();
        let _ = self.endpoint.stop(now, addr);
        while self.endpoint.poll_transmit().is_some() {}
        self.forget_handshake(addr);
    }

    fn forget_handshake(&mut self, from: SocketAddr) {
        if self.handshakes.remove(&from).is_some() {
            if let Some(n) = self.handshakes_per_ip.get_mut(&from.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.handshakes_per_ip.remove(&from.ip());
                }
            }
        }
    }

    /// Encrypts `data` for `to`.
    pub fn send(&mut self, now: Instant, to: SocketAddr, data: &[u8]) -> Result<(), String> {
        if !self.established.contains_key(&to) {
            return Err(format!("no DTLS association with {to}"));
        }
        self.endpoint
            .write(now, to, data)
            .map_err(|e| e.to_string())
    }

    fn take_endpoint_transmits(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.out.push_back((t.transport.peer_addr, t.message));
        }
    }

    /// Next datagram to put on the socket.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.out.pop_front().or_else(|| {
            self.endpoint
                .poll_transmit()
                .map(|t| (t.transport.peer_addr, t.message))
        })
    }

    /// Handshake deadlines and retransmissions, idle expiry.
    pub fn handle_timeout(&mut self, now: Instant) -> Expired {
        self.take_endpoint_transmits();
        let mut expired = Expired::default();
        let late: Vec<SocketAddr> = self
            .handshakes
            .iter()
            .filter(|(_, h)| now >= h.deadline)
            .map(|(a, _)| *a)
            .collect();
        for a in late {
            self.drop_half_open(now, a);
            expired.handshake_timeouts += 1;
        }
        let remotes: Vec<SocketAddr> = self
            .handshakes
            .keys()
            .chain(self.established.keys())
            .copied()
            .collect();
        for r in remotes {
            if self.endpoint.poll_timeout(&r).is_some_and(|t| t <= now)
                && self.endpoint.handle_timeout(r, now).is_err()
                && self.handshakes.contains_key(&r)
            {
                // Retransmissions ran out.
                self.drop_half_open(now, r);
                expired.handshake_timeouts += 1;
            }
        }
        let idle = self.limits.idle;
        expired.idle = self
            .established
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > idle)
            .map(|(a, _)| *a)
            .collect();
        for a in &expired.idle {
            let _ = self.endpoint.stop(now, *a);
            self.established.remove(a);
        }
        expired
    }

    /// Half-open handshakes held.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.len()
    }

    /// Change of [`Self::handshakes_in_progress`] since the last call, for a gauge shared by
    /// several servers.
    pub fn take_handshakes_delta(&mut self) -> i64 {
        let now = self.handshakes.len();
        let delta = now as i64 - self.reported_handshakes as i64;
        self.reported_handshakes = now;
        delta
    }

    /// Established associations held.
    pub fn len(&self) -> usize {
        self.established.len()
    }

    /// True when no association (established or half-open) is held.
    pub fn is_empty(&self) -> bool {
        self.established.is_empty() && self.handshakes.is_empty()
    }

    /// Associations the rtc-dtls endpoint holds (equals half-open plus established).
    pub fn endpoint_associations(&self) -> usize {
        self.endpoint.get_connections_keys().len()
    }

    /// Times the cookie hand-over to rtc-dtls did not work and the client got a second
    /// HelloVerifyRequest (0 with the rtc-dtls this was built with; see the module docs).
    pub fn seeding_fallbacks(&self) -> u64 {
        self.seeding_fallbacks
    }
}

/// Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): `window tag (1 byte) ||
/// HMAC-SHA256(key of that window, window || client IP || client port || ClientHello version,
/// random, session_id, cipher_suites, compression_methods)[..19]`. A fresh random key per
/// [`COOKIE_WINDOW`]; cookies of the current and the previous window validate.
pub struct CookieMinter {
    origin: Instant,
    window: Duration,
    current: (u64, ring::hmac::Key),
    previous: Option<(u64, ring::hmac::Key)>,
}

impl CookieMinter {
    /// Windows are counted from `now`, each `window` long (at least 1 ms).
    pub fn new(now: Instant, window: Duration) -> Self {
        Self {
            origin: now,
            window: window.max(Duration::from_millis(1)),
            current: (0, Self::fresh_key()),
            previous: None,
        }
    }

    fn fresh_key() -> ring::hmac::Key {
        let secret: [u8; 32] = rand::random();
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)
    }

    fn rotate(&mut self, now: Instant) {
        let idx = (now.saturating_duration_since(self.origin).as_millis() / self.window.as_millis())
            as u64;
        if idx <= self.current.0 {
            return;
        }
        let old = std::mem::replace(&mut self.current, (idx, Self::fresh_key()));
        self.previous = (old.0 + 1 == idx).then_some(old);
    }

    fn mac(
        key: &ring::hmac::Key,
        idx: u64,
        client: SocketAddr,
        hello: &wire::ClientHello<'_>,
    ) -> [u8; COOKIE_BYTES] {
        let mut ctx = ring::hmac::Context::with_key(key);
        ctx.update(&idx.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => {
                ctx.update(&[4]);
                ctx.update(&ip.octets());
            }
            IpAddr::V6(ip) => {
                ctx.update(&[6]);
                ctx.update(&ip.octets());
            }
        }
        ctx.update(&client.port().to_be_bytes());
        ctx.update(&hello.version.to_be_bytes());
        ctx.update(hello.random);
        ctx.update(hello.session_id);
        ctx.update(hello.cipher_suites);
        ctx.update(hello.compression_methods);
        let tag = ctx.sign();
        let mut cookie = [0u8; COOKIE_BYTES];
        cookie[0] = idx as u8;
        cookie[1..].copy_from_slice(&tag.as_ref()[..COOKIE_BYTES - 1]);
        cookie
    }

    /// The cookie for `client` sending `hello` (its cookie field is ignored) at `now`.
    pub fn mint(
        &mut self,
        now: Instant,
        client: SocketAddr,
        hello: &wire::ClientHello<'_>,
    ) -> [u8; COOKIE_BYTES] {
        self.rotate(now);
        Self::mac(&self.current.1, self.current.0, client, hello)
    }

    /// True if `hello.cookie` was minted for `client` and these ClientHello parameters in the
    /// current or the previous window. Compared in constant time.
    pub fn verify(
        &mut self,
        now: Instant,
        client: SocketAddr,
        hello: &wire::ClientHello<'_>,
    ) -> bool {
        use subtle::ConstantTimeEq;
        self.rotate(now);
        if hello.cookie.len() != COOKIE_BYTES {
            return false;
        }
        let tag = hello.cookie[0];
        let key = if tag == self.current.0 as u8 {
            Some(&self.current)
        } else {
            self.previous.as_ref().filter(|(i, _)| tag == *i as u8)
        };
        key.is_some_and(|(idx, key)| {
            let expect = Self::mac(key, *idx, client, hello);
            bool::from(expect.ct_eq(hello.cookie))
        })
    }
}

/// The random source of the DTLS configuration: rtc-dtls's own, except for one armed 20-byte
/// draw, which returns the cookie we verified. rtc-dtls draws its HelloVerifyRequest cookie
/// (`COOKIE_LENGTH` = 20 bytes) first thing when a server association starts (flight 0); no
/// other draw has that length (randoms are 28 bytes, AEAD nonces 8, CBC IVs 16). Armed only
/// for the duration of one synchronous `Endpoint::read`, on this thread; [`DtlsServer::admit`]
/// checks the outcome on the wire and falls back to the endpoint's own cookie if it differs.
pub mod seeded {
    use super::COOKIE_BYTES;
    use rtc_crypto::{CryptoError, RTCCrypto, RTCCryptoProvider, RTCRandom};
    use std::cell::Cell;
    use std::sync::Arc;

    thread_local! {
        static NEXT_COOKIE: Cell<Option<[u8; COOKIE_BYTES]>> = const { Cell::new(None) };
    }

    /// Disarms on drop.
    #[must_use]
    pub struct Armed(());

    impl Drop for Armed {
        fn drop(&mut self) {
            NEXT_COOKIE.with(|c| c.set(None));
        }
    }

    /// The next 20-byte draw on this thread returns `cookie`.
    pub fn arm(cookie: [u8; COOKIE_BYTES]) -> Armed {
        NEXT_COOKIE.with(|c| c.set(Some(cookie)));
        Armed(())
    }

    /// Wraps a provider: its crypto unchanged, its random source seeded as above.
    pub struct Provider {
        random: Random,
    }

    struct Random {
        inner: Arc<dyn RTCCryptoProvider>,
    }

    impl Provider {
        /// Wraps `inner`.
        pub fn new(inner: Arc<dyn RTCCryptoProvider>) -> Self {
            Self {
                random: Random { inner },
            }
        }
    }

    impl RTCRandom for Random {
        fn fill(&self, output: &mut [u8]) -> Result<(), CryptoError> {
            if output.len() == COOKIE_BYTES {
                if let Some(cookie) = NEXT_COOKIE.with(Cell::take) {
                    output.copy_from_slice(&cookie);
                    return Ok(());
                }
            }
            self.inner.random().fill(output)
        }
    }

    impl RTCCryptoProvider for Provider {
        fn name(&self) -> &'static str {
            "turnkey-cookie-seeded"
        }

        fn crypto(&self) -> &dyn RTCCrypto {
            self.random.inner.crypto()
        }

        fn random(&self) -> &dyn RTCRandom {
            &self.random
        }
    }
}

/// DTLS 1.2 wire format, as much as the gate needs (RFC 6347 §4.1 records, §4.2.2 handshake
/// header, §4.2.1 HelloVerifyRequest, RFC 5246 §7.4.1.2 ClientHello). Never panics on any
/// input; every failure is a [`DecodeError`].
pub mod wire {
    /// Record header bytes (RFC 6347 §4.1).
    pub const RECORD_HEADER_BYTES: usize = 13;
    /// Handshake header bytes (RFC 6347 §4.2.2).
    pub const HANDSHAKE_HEADER_BYTES: usize = 12;
    /// ContentType handshake.
    pub const CONTENT_HANDSHAKE: u8 = 22;
    /// HandshakeType client_hello.
    pub const CLIENT_HELLO: u8 = 1;
    /// HandshakeType hello_verify_request.
    pub const HELLO_VERIFY_REQUEST: u8 = 3;
    /// DTLS 1.0 version (RFC 6347 §4.2.1: a HelloVerifyRequest carries it).
    pub const DTLS1_0: u16 = 0xfeff;
    /// DTLS 1.2 version.
    pub const DTLS1_2: u16 = 0xfefd;

    /// Why bytes are not what the gate accepts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[non_exhaustive]
    pub enum DecodeError {
        /// Shorter than a field or length says.
        #[error("truncated")]
        Truncated,
        /// Not a DTLS 1.0/1.2 record, or an empty one.
        #[error("not a DTLS record")]
        NotDtls,
        /// Not a handshake record of epoch 0.
        #[error("not an epoch-0 handshake record")]
        NotInitialHandshake,
        /// A handshake message other than the expected one.
        #[error("unexpected handshake message type {0}")]
        UnexpectedMessage(u8),
        /// A ClientHello split over several fragments (not accepted before the cookie).
        #[error("fragmented ClientHello")]
        Fragmented,
        /// A length field out of its range.
        #[error("bad length field")]
        BadLength,
    }

    struct Reader<'a> {
        buf: &'a [u8],
    }

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
            if self.buf.len() < n {
                return Err(DecodeError::Truncated);
            }
            let (a, b) = self.buf.split_at(n);
            self.buf = b;
            Ok(a)
        }
        fn uint(&mut self, n: usize) -> Result<u64, DecodeError> {
            Ok(self
                .take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
        fn u8(&mut self) -> Result<u8, DecodeError> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Result<u16, DecodeError> {
            Ok(self.uint(2)? as u16)
        }
        /// A vector with a `len_bytes` length prefix; returned with its prefix.
        fn vector(&mut self, len_bytes: usize) -> Result<&'a [u8], DecodeError> {
            let start = self.buf;
            let n = self.uint(len_bytes)? as usize;
            self.take(n)?;
            Ok(&start[..len_bytes + n])
        }
    }

    /// A record header and its payload.
    struct Record<'a> {
        content_type: u8,
        version: u16,
        epoch: u16,
        sequence: u64,
        payload: &'a [u8],
    }

    fn record<'a>(r: &mut Reader<'a>) -> Result<Record<'a>, DecodeError> {
        let content_type = r.u8()?;
        let version = r.u16()?;
        let epoch = r.u16()?;
        let sequence = r.uint(6)?;
        let len = r.u16()? as usize;
        let payload = r.take(len)?;
        if (version != DTLS1_0 && version != DTLS1_2) || payload.is_empty() {
            return Err(DecodeError::NotDtls);
        }
        Ok(Record {
            content_type,
            version,
            epoch,
            sequence,
            payload,
        })
    }

    fn records(datagram: &[u8]) -> impl Iterator<Item = Result<Record<'_>, DecodeError>> {
        let mut r = Reader { buf: datagram };
        let mut failed = false;
        std::iter::from_fn(move || {
            if failed || r.buf.is_empty() {
                return None;
            }
            let rec = record(&mut r);
            failed = rec.is_err();
            Some(rec)
        })
    }

    /// Ok if `datagram` is one or more whole, non-empty DTLS 1.0/1.2 records and nothing else
    /// (what rtc-dtls needs not to fail a read outright).
    pub fn check_records(datagram: &[u8]) -> Result<(), DecodeError> {
        if datagram.is_empty() {
            return Err(DecodeError::Truncated);
        }
        records(datagram).try_for_each(|r| r.map(|_| ()))
    }

    /// True if `datagram` holds a handshake record (a peer repeating its flight).
    pub fn has_handshake_record(datagram: &[u8]) -> bool {
        records(datagram).any(|r| r.is_ok_and(|r| r.content_type == CONTENT_HANDSHAKE))
    }

    /// A ClientHello, unfragmented in the first record of a datagram, borrowed from it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ClientHello<'a> {
        /// The record's version field.
        pub record_version: u16,
        /// The record's sequence number (48 bits).
        pub record_sequence: u64,
        /// The handshake message_seq.
        pub message_sequence: u16,
        /// client_version.
        pub version: u16,
        /// random, 32 bytes.
        pub random: &'a [u8],
        /// session_id with its 1-byte length.
        pub session_id: &'a [u8],
        /// cookie, without its length byte (empty: none).
        pub cookie: &'a [u8],
        /// cipher_suites with their 2-byte length.
        pub cipher_suites: &'a [u8],
        /// compression_methods with their 1-byte length.
        pub compression_methods: &'a [u8],
        /// The extensions block with its 2-byte length, or empty if absent.
        pub extensions: &'a [u8],
    }

    impl<'a> ClientHello<'a> {
        /// Decodes the ClientHello in the first record of `datagram`.
        pub fn parse(datagram: &'a [u8]) -> Result<Self, DecodeError> {
            let mut r = Reader { buf: datagram };
            let rec = record(&mut r)?;
            if rec.content_type != CONTENT_HANDSHAKE || rec.epoch != 0 {
                return Err(DecodeError::NotInitialHandshake);
            }
            let mut h = Reader { buf: rec.payload };
            let msg_type = h.u8()?;
            if msg_type != CLIENT_HELLO {
                return Err(DecodeError::UnexpectedMessage(msg_type));
            }
            let length = h.uint(3)? as usize;
            let message_sequence = h.u16()?;
            let fragment_offset = h.uint(3)?;
            let fragment_length = h.uint(3)? as usize;
            if fragment_offset != 0 || fragment_length != length {
                return Err(DecodeError::Fragmented);
            }
            let mut b = Reader {
                buf: h.take(length)?,
            };
            let version = b.u16()?;
            let random = b.take(32)?;
            let session_id = b.vector(1)?;
            let cookie_field = b.vector(1)?;
            let cipher_suites = b.vector(2)?;
            let compression_methods = b.vector(1)?;
            let extensions = if b.buf.is_empty() {
                &[][..]
            } else {
                b.vector(2)?
            };
            if !b.buf.is_empty()
                || session_id.len() > 1 + 32
                || cipher_suites.len() < 4
                || cipher_suites.len() % 2 != 0
                || compression_methods.len() < 2
            {
                return Err(DecodeError::BadLength);
            }
            Ok(ClientHello {
                record_version: rec.version,
                record_sequence: rec.sequence,
                message_sequence,
                version,
                random,
                session_id,
                cookie: &cookie_field[1..],
                cipher_suites,
                compression_methods,
                extensions,
            })
        }

        /// The datagram this client sent before it had a cookie, as far as a server can tell:
        /// this ClientHello without cookie, one message and one record sequence number
        /// earlier. None when either sequence number is 0.
        pub fn first_hello(&self) -> Option<Vec<u8>> {
            let record_sequence = self.record_sequence.checked_sub(1)?;
            let message_sequence = self.message_sequence.checked_sub(1)?;
            let mut body = Vec::with_capacity(128);
            body.extend_from_slice(&self.version.to_be_bytes());
            body.extend_from_slice(self.random);
            body.extend_from_slice(self.session_id);
            body.push(0);
            body.extend_from_slice(self.cipher_suites);
            body.extend_from_slice(self.compression_methods);
            body.extend_from_slice(self.extensions);
            Some(handshake_record(
                self.record_version,
                record_sequence,
                CLIENT_HELLO,
                message_sequence,
                &body,
            ))
        }
    }

    fn handshake_record(
        version: u16,
        record_sequence: u64,
        msg_type: u8,
        message_sequence: u16,
        body: &[u8],
    ) -> Vec<u8> {
        let len = body.len() as u32;
        let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + HANDSHAKE_HEADER_BYTES + body.len());
        out.push(CONTENT_HANDSHAKE);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&record_sequence.to_be_bytes()[2..]);
        out.extend_from_slice(&((HANDSHAKE_HEADER_BYTES + body.len()) as u16).to_be_bytes());
        out.push(msg_type);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&message_sequence.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    /// A HelloVerifyRequest datagram with `cookie` (at most 255 bytes; longer is cut), record
    /// sequence number copied from the ClientHello (RFC 6347 §4.2.1), message_seq 0, version
    /// DTLS 1.0. Never larger than the ClientHello it answers.
    pub fn hello_verify_request(record_sequence: u64, cookie: &[u8]) -> Vec<u8> {
        let cookie = &cookie[..cookie.len().min(255)];
        let mut body = Vec::with_capacity(3 + cookie.len());
        body.extend_from_slice(&DTLS1_0.to_be_bytes());
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        handshake_record(DTLS1_0, record_sequence, HELLO_VERIFY_REQUEST, 0, &body)
    }

    /// Gives the epoch-0 records of `datagram` the record sequence numbers `first`, `first` + 1,
    /// ... (they carry no MAC). Stops at the first record that does not decode.
    pub fn renumber_plaintext(datagram: &mut [u8], first: u64) {
        let mut at = 0;
        let mut next = first;
        while datagram.len() - at >= RECORD_HEADER_BYTES {
            let h = &mut datagram[at..at + RECORD_HEADER_BYTES];
            let len = usize::from(u16::from_be_bytes([h[11], h[12]]));
            if h[3..5] == [0, 0] {
                h[5..11].copy_from_slice(&next.to_be_bytes()[2..]);
                next += 1;
            }
            at += RECORD_HEADER_BYTES + len;
            if at > datagram.len() {
                return;
            }
        }
    }

    /// The cookie of a HelloVerifyRequest in the first record of `datagram`, if it is one.
    pub fn hello_verify_cookie(datagram: &[u8]) -> Option<&[u8]> {
        let mut r = Reader { buf: datagram };
        let rec = record(&mut r).ok()?;
        if rec.content_type != CONTENT_HANDSHAKE || rec.epoch != 0 {
            return None;
        }
        let mut h = Reader { buf: rec.payload };
        if h.u8().ok()? != HELLO_VERIFY_REQUEST {
            return None;
        }
        let length = h.uint(3).ok()? as usize;
        h.take(8).ok()?;
        let mut b = Reader {
            buf: h.take(length).ok()?,
        };
        b.u16().ok()?;
        let cookie = b.vector(1).ok()?;
        Some(&cookie[1..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    const SERVER: &str = "127.0.0.1:5349";

    fn server_addr() -> SocketAddr {
        SERVER.parse().unwrap()
    }

    fn test_server(now: Instant, limits: DtlsLimits) -> DtlsServer {
        let provider = rtc_crypto::default_provider().unwrap();
        let cert =
            Certificate::generate_self_signed(vec!["turn.test".to_string()], provider.crypto())
                .unwrap();
        DtlsServer::new(server_addr(), server_config(cert).unwrap(), 0, limits, now)
    }

    fn client_config() -> Arc<HandshakeConfig> {
        Arc::new(
            ConfigBuilder::default()
                .with_crypto_provider(rtc_crypto::default_provider().unwrap())
                .with_insecure_skip_verify(true)
                .build(true, None)
                .unwrap(),
        )
    }

    /// A client endpoint at `addr` that has sent its first flight (queued, not delivered).
    struct Client {
        addr: SocketAddr,
        ep: Endpoint,
        hello_verify_requests: usize,
        completed: bool,
        received: Vec<BytesMut>,
    }

    impl Client {
        fn new(addr: &str, now: Instant) -> Client {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut ep = Endpoint::new(addr, TransportProtocol::UDP, None);
            ep.connect(now, server_addr(), client_config(), None)
                .unwrap();
            Client {
                addr,
                ep,
                hello_verify_requests: 0,
                completed: false,
                received: Vec::new(),
            }
        }

        fn outgoing(&mut self) -> Vec<BytesMut> {
            std::iter::from_fn(|| self.ep.poll_transmit().map(|t| t.message)).collect()
        }

        fn deliver(&mut self, now: Instant, d: BytesMut) {
            if wire::hello_verify_cookie(&d).is_some() {
                self.hello_verify_requests += 1;
            }
            // After its own close the client endpoint holds no association: ignore the error.
            for e in self
                .ep
                .read(now, server_addr(), None, d)
                .unwrap_or_default()
            {
                match e {
                    EndpointEvent::HandshakeComplete => self.completed = true,
                    EndpointEvent::ApplicationData(d) => self.received.push(d),
                    _ => {}
                }
            }
        }
    }

    /// Client -> server; returns what the core got. Server output is delivered back.
    fn to_server(srv: &mut DtlsServer, c: &mut Client, now: Instant) -> Vec<Received> {
        let mut got = Vec::new();
        for d in c.outgoing() {
            got.push(srv.handle_datagram(now, c.addr, &d));
        }
        while let Some((to, d)) = srv.poll_transmit() {
            assert_eq!(to, c.addr, "server answered someone else");
            c.deliver(now, d);
        }
        got
    }

    fn handshake(srv: &mut DtlsServer, c: &mut Client, now: Instant) {
        for _ in 0..10 {
            to_server(srv, c, now);
            if c.completed && srv.established.contains_key(&c.addr) {
                return;
            }
        }
        panic!("handshake did not complete");
    }

    /// Takes `c` through the cookie exchange: afterwards its queued datagram is a ClientHello
    /// with a valid cookie, not yet delivered.
    fn to_cookie_hello(srv: &mut DtlsServer, c: &mut Client, now: Instant) {
        let r = to_server(srv, c, now);
        assert!(
            matches!(
                r[..],
                [Received {
                    dropped: Some(DtlsDrop::NoCookie),
                    ..
                }]
            ),
            "{r:?}"
        );
        assert_eq!(c.hello_verify_requests, 1);
    }

    /// A plausible first ClientHello from a spoofed source.
    fn fake_hello(seed: u64) -> Vec<u8> {
        hello(wire::DTLS1_2, seed, &[], 0)
    }

    /// A ClientHello offering `version`, with `cookie`, sequence numbers `seq` (record and
    /// message), no extensions.
    fn hello(version: u16, seed: u64, cookie: &[u8], seq: u16) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        let mut random = [0u8; 32];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut random);
        body.extend_from_slice(&random);
        body.push(0); // session_id
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&[0, 0]);
        wire_hello(&body, u64::from(seq), seq)
    }

    fn wire_hello(body: &[u8], record_seq: u64, msg_seq: u16) -> Vec<u8> {
        let len = body.len() as u32;
        let mut out = vec![22, 0xfe, 0xff, 0, 0];
        out.extend_from_slice(&record_seq.to_be_bytes()[2..]);
        out.extend_from_slice(&((12 + body.len()) as u16).to_be_bytes());
        out.push(1);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(&msg_seq.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&len.to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_client_completes_after_one_cookie_round_trip_and_only_then_holds_state() {
        let t0 = Instant::now();
        let mut srv = test_server(t0, DtlsLimits::default());
        let mut c = Client::new("127.0.0.1:40000", t0);
        to_cookie_hello(&mut srv, &mut c, t0);
        assert_eq!(
            srv.endpoint_associations(),
            0,
            "state before the cookie came back"
        );
        assert_eq!(srv.handshakes_in_progress(), 0);
        to_server(&mut srv, &mut c, t0);
        assert_eq!(srv.handshakes_in_progress(), 1);
        assert_eq!(srv.take_handshakes_delta(), 1);
        assert_eq!(
            srv.len(),
            0,
            "TURN-level association before the handshake finished"
        );
        handshake(&mut srv, &mut c, t0);
        assert_eq!(
            c.hello_verify_requests, 1,
            "the endpoint's own HelloVerifyRequest reached the client"
        );
        assert_eq!(srv.seeding_fallbacks(), 0);
        assert_eq!((srv.handshakes_in_progress(), srv.len()), (0, 1));
        assert_eq!(srv.take_handshakes_delta(), -1);

        // Application data both ways.
        c.ep.write(t0, server_addr(), b"binding request").unwrap();
        let got = to_server(&mut srv, &mut c, t0);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].messages[0][..], b"binding request");
        srv.send(t0, c.addr, b"binding response").unwrap();
        while let Some((_, d)) = srv.poll_transmit() {
            c.deliver(t0, d);
        }
        assert_eq!(&c.received[0][..], b"binding response");
    }

    #[test]
    fn client_hellos_from_many_sources_create_no_state() {
        let t0 = Instant::now();
        let mut srv = test_server(t0, DtlsLimits::default());
        for i in 0..5000u64 {
            let from = SocketAddr::from(([127, 1, (i >> 8) as u8, i as u8], 1024 + i as u16));
            let hello = fake_hello(i);
            let r = srv.handle_datagram(t0, from, &hello);
            assert_eq!(r.dropped, Some(DtlsDrop::NoCookie));
            let (to, hvr) = srv.poll_transmit().expect("a HelloVerifyRequest");
            assert_eq!(to, from);
            assert!(hvr.len() <= hello.len(), "amplification");
            assert_eq!(
                wire::hello_verify_cookie(&hvr).map(<[u8]>::len),
                Some(COOKIE_BYTES)
            );
        }
        // Other datagrams from unknown addresses: dropped without an answer.
        for junk in [
            &b"\x17\xfe\xfd\x00\x01\x00\x00\x00\x00\x00\x01\x00\x03abc"[..],
            b"x",
            b"",
        ] {
            let r = srv.handle_datagram(t0, "127.0.0.9:9".parse().unwrap(), junk);
            assert!(
                matches!(r.dropped, Some(DtlsDrop::NoAssociation(_))),
                "{r:?}"
            );
        }
        assert!(srv.poll_transmit().is_none());
        assert_eq!(srv.endpoint_associations(), 0);
        assert!(srv.is_empty());
    }

    #[test]
    fn a_cookie_only_fits_its_address_its_hello_and_two_windows() {
        let t0 = Instant::now();
        let mut m = CookieMinter::new(t0, COOKIE_WINDOW);
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let hello = fake_hello(1);
        let h = wire::ClientHello::parse(&hello).unwrap();
        let cookie = m.mint(t0, a, &h);
        let with = |cookie: &[u8], seed: u64| {
            let mut h = wire::ClientHello::parse(&fake_hello(seed))
                .unwrap()
                .first_hello_like();
            h.cookie = cookie.to_vec();
            h
        };
        let ok = with(&cookie, 1);
        assert!(m.verify(t0, a, &ok.view()));
        assert!(
            !m.verify(t0, "127.0.0.1:4001".parse().unwrap(), &ok.view()),
            "other port"
        );
        assert!(
            !m.verify(t0, "127.0.0.2:4000".parse().unwrap(), &ok.view()),
            "other IP"
        );
        assert!(!m.verify(t0, a, &with(&cookie, 2).view()), "other random");
        let mut flipped = cookie;
        flipped[7] ^= 1;
        assert!(!m.verify(t0, a, &with(&flipped, 1).view()));
        assert!(!m.verify(t0, a, &with(&cookie[..19], 1).view()));
        // Still good in the next window, not in the one after.
        assert!(m.verify(t0 + COOKIE_WINDOW + Duration::from_secs(1), a, &ok.view()));
        assert!(!m.verify(
            t0 + COOKIE_WINDOW * 2 + Duration::from_secs(1),
            a,
            &ok.view()
        ));
        // A new minter (restart) knows none of the old cookies.
        assert!(!CookieMinter::new(t0, COOKIE_WINDOW).verify(t0, a, &ok.view()));
    }

    #[test]
    fn a_bad_cookie_gets_a_fresh_hello_verify_request_and_no_state() {
        let t0 = Instant::now();
        let mut srv = test_server(t0, DtlsLimits::default());
        let mut c = Client::new("127.0.0.1:40000", t0);
        to_cookie_hello(&mut srv, &mut c, t0);
        // The same cookie-carrying ClientHello from another address.
        let hello = c.outgoing().remove(0);
        let r = srv.handle_datagram(t0, "127.0.0.1:40001".parse().unwrap(), &hello);
        assert_eq!(r.dropped, Some(DtlsDrop::BadCookie));
        assert!(srv
            .poll_transmit()
            .is_some_and(|(_, d)| wire::hello_verify_cookie(&d).is_some()));
        // And from the right address after the cookie expired.
        let late = t0 + COOKIE_WINDOW * 3;
        let r = srv.handle_datagram(late, c.addr, &hello);
        assert_eq!(r.dropped, Some(DtlsDrop::BadCookie));
        assert_eq!(srv.endpoint_associations(), 0);
    }

    #[test]
    fn half_open_handshakes_are_capped_per_ip_and_per_socket_then_expire() {
        let t0 = Instant::now();
        let limits = DtlsLimits {
            max_handshakes: 3,
            max_handshakes_per_ip: 2,
            ..DtlsLimits::default()
        };
        let mut srv = test_server(t0, limits);
        let mut admitted = Vec::new();
        for (addr, expect) in [
            ("127.0.0.1:1001", None),
            ("127.0.0.1:1002", None),
            ("127.0.0.1:1003", Some(DtlsDrop::HandshakePerIpLimit)),
            ("127.0.0.2:1001", None),
            ("127.0.0.3:1001", Some(DtlsDrop::HandshakeLimit)),
        ] {
            let mut c = Client::new(addr, t0);
            to_cookie_hello(&mut srv, &mut c, t0);
            let r = to_server(&mut srv, &mut c, t0);
            assert_eq!(r[0].dropped, expect, "{addr}");
            if expect.is_none() {
                admitted.push(c);
            }
        }
        assert_eq!(srv.handshakes_in_progress(), 3);
        assert_eq!(srv.endpoint_associations(), 3);
        // Nobody finishes: all removed at the deadline, and the slots are free again.
        let e = srv.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!((e.handshake_timeouts, srv.handshakes_in_progress()), (0, 3));
        let e = srv.handle_timeout(t0 + limits.handshake_timeout);
        assert_eq!(e.handshake_timeouts, 3);
        // Their retransmissions from t0 + 5 s, but no alert for the removal itself.
        while let Some((to, d)) = srv.poll_transmit() {
            assert_ne!(d[0], 21, "an alert to {to}");
        }
        assert_eq!(srv.endpoint_associations(), 0);
        assert!(srv.is_empty());
        assert!(srv.handshakes_per_ip.is_empty());
        let t1 = t0 + limits.handshake_timeout;
        let mut c = Client::new("127.0.0.1:1003", t1);
        handshake(&mut srv, &mut c, t1);
    }

    #[test]
    fn a_refused_handshake_is_removed_at_once_and_the_address_can_start_over() {
        let t0 = Instant::now();
        let mut srv = test_server(t0, DtlsLimits::default());
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        // A client offering only DTLS 1.0 (as coturn's turnutils_uclient does first).
        let r = srv.handle_datagram(t0, from, &hello(wire::DTLS1_0, 1, &[], 0));
        assert_eq!(r.dropped, Some(DtlsDrop::NoCookie));
        let (_, hvr) = srv.poll_transmit().unwrap();
        let cookie = wire::hello_verify_cookie(&hvr).unwrap().to_vec();
        let r = srv.handle_datagram(t0, from, &hello(wire::DTLS1_0, 1, &cookie, 1));
        assert!(
            matches!(r.dropped, Some(DtlsDrop::HandshakeError(_))),
            "{r:?}"
        );
        let (_, alert) = srv.poll_transmit().expect("the endpoint's alert");
        assert_eq!(alert[0], 21, "an alert record");
        assert_eq!(
            alert[5..11],
            [0, 0, 0, 0, 0, 1],
            "numbered after the HelloVerifyRequest"
        );
        assert_eq!(
            hvr[5..11],
            [0; 6],
            "the HelloVerifyRequest copies the ClientHello's"
        );
        assert_eq!(
            (srv.handshakes_in_progress(), srv.endpoint_associations()),
            (0, 0)
        );
        assert_eq!(srv.seeding_fallbacks(), 0);
        while srv.poll_transmit().is_some() {}
        // The same address then completes a DTLS 1.2 handshake.
        let mut c = Client::new("127.0.0.1:40000", t0);
        handshake(&mut srv, &mut c, t0);
        assert_eq!(c.hello_verify_requests, 1);
    }

    #[test]
    fn a_new_client_hello_from_a_half_open_address_starts_over() {
        let t0 = Instant::now();
        let mut srv = test_server(t0, DtlsLimits::default());
        let mut first = Client::new("127.0.0.1:40000", t0);
        to_cookie_hello(&mut srv, &mut first, t0);
        to_server(&mut srv, &mut first, t0);
        assert_eq!(srv.handshakes_in_progress(), 1);
        // A ClientHello with another random but no cookie (a spoofer's) changes nothing.
        let r = srv.handle_datagram(t0, first.addr, &fake_hello(77));
        assert_eq!(r.dropped, Some(DtlsDrop::NoCookie));
        assert_eq!(srv.handshakes_in_progress(), 1);
        while srv.poll_transmit().is_some() {}
        // The client restarts (new random) before finishing: not stuck behind the old attempt.
        let mut again = Client::new("127.0.0.1:40000", t0);
        handshake(&mut srv, &mut again, t0);
        assert_eq!((srv.handshakes_in_progress(), srv.len()), (0, 1));
        assert_eq!(srv.endpoint_associations(), 1);
    }

    #[test]
    fn garbage_on_an_established_association_is_dropped_and_the_association_kept() {
        let t0 = Instant::now();
        let mut srv = test_server(t0, DtlsLimits::default());
        let mut c = Client::new("127.0.0.1:40000", t0);
        handshake(&mut srv, &mut c, t0);
        let forged_app_data = {
            let mut d = vec![23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 9, 0, 40];
            d.extend_from_slice(&[0x55; 40]);
            d
        };
        let forged_alert = [21, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 99, 0, 2, 2, 40];
        for junk in [
            &[0x01, 0x02, 0x03][..],
            &[0u8; 13][..],
            &forged_app_data[..],
            &forged_alert[..],
            &[0xffu8; 200][..],
        ] {
            let r = srv.handle_datagram(t0, c.addr, junk);
            assert_eq!(r.dropped, Some(DtlsDrop::BadRecord), "{junk:?}");
            assert!(!r.closed && r.messages.is_empty());
        }
        assert_eq!(srv.len(), 1);
        c.ep.write(t0, server_addr(), b"still here").unwrap();
        let got = to_server(&mut srv, &mut c, t0);
        assert_eq!(&got[0].messages[0][..], b"still here");
        assert_eq!(got[0].dropped, None);
    }

    #[test]
    fn close_notify_ends_the_association_and_idle_ones_expire() {
        let t0 = Instant::now();
        let limits = DtlsLimits::default();
        let mut srv = test_server(t0, limits);
        let mut a = Client::new("127.0.0.1:40000", t0);
        let mut b = Client::new("127.0.0.1:40001", t0);
        handshake(&mut srv, &mut a, t0);
        handshake(&mut srv, &mut b, t0);
        a.ep.close(t0).unwrap();
        let got = to_server(&mut srv, &mut a, t0);
        assert!(got.iter().any(|r| r.closed));
        assert_eq!(srv.len(), 1);
        let e = srv.handle_timeout(t0 + limits.idle + Duration::from_secs(1));
        assert_eq!(e.idle, vec![b.addr]);
        assert!(srv.is_empty());
        assert_eq!(srv.endpoint_associations(), 0);
    }

    #[test]
    fn the_decoder_never_panics_and_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6347);
        let valid = fake_hello(9);
        let h = wire::ClientHello::parse(&valid).unwrap();
        assert_eq!(h.cookie, b"");
        assert_eq!(h.cipher_suites, &[0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
        let hvr = wire::hello_verify_request(5, &[7; COOKIE_BYTES]);
        assert_eq!(
            wire::hello_verify_cookie(&hvr),
            Some(&[7u8; COOKIE_BYTES][..])
        );
        assert!(wire::check_records(&hvr).is_ok());
        // Every truncation of a valid ClientHello fails cleanly.
        for n in 0..valid.len() {
            assert!(wire::ClientHello::parse(&valid[..n]).is_err(), "prefix {n}");
        }
        // Random bytes, and random mutations of valid messages.
        for i in 0..200_000u32 {
            let mut buf = if i % 2 == 0 {
                let len = rng.random_range(0..300);
                let mut b = vec![0u8; len];
                rng.fill_bytes(&mut b);
                if len > 3 && i % 4 == 0 {
                    b[0] = 22;
                    b[1] = 0xfe;
                    b[2] = 0xfd;
                }
                b
            } else if i % 3 == 0 {
                hvr.clone()
            } else {
                valid.clone()
            };
            if i % 2 == 1 {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..buf.len());
                    buf[at] = rng.random();
                }
            }
            if let Ok(h) = wire::ClientHello::parse(&buf) {
                if let Some(first) = h.first_hello() {
                    let again =
                        wire::ClientHello::parse(&first).expect("a re-encoded hello parses");
                    assert_eq!(again.random, h.random);
                    assert!(again.cookie.is_empty());
                }
            }
            let _ = wire::check_records(&buf);
            let _ = wire::has_handshake_record(&buf);
            let _ = wire::hello_verify_cookie(&buf);
            wire::renumber_plaintext(&mut buf, u64::from(i));
        }
    }

    /// An owned ClientHello for the cookie tests.
    struct OwnedHello {
        version: u16,
        random: Vec<u8>,
        session_id: Vec<u8>,
        cookie: Vec<u8>,
        cipher_suites: Vec<u8>,
        compression_methods: Vec<u8>,
    }

    impl OwnedHello {
        fn view(&self) -> wire::ClientHello<'_> {
            wire::ClientHello {
                record_version: wire::DTLS1_2,
                record_sequence: 1,
                message_sequence: 1,
                version: self.version,
                random: &self.random,
                session_id: &self.session_id,
                cookie: &self.cookie,
                cipher_suites: &self.cipher_suites,
                compression_methods: &self.compression_methods,
                extensions: &[],
            }
        }
    }

    impl wire::ClientHello<'_> {
        fn first_hello_like(&self) -> OwnedHello {
            OwnedHello {
                version: self.version,
                random: self.random.to_vec(),
                session_id: self.session_id.to_vec(),
                cookie: self.cookie.to_vec(),
                cipher_suites: self.cipher_suites.to_vec(),
                compression_methods: self.compression_methods.to_vec(),
            }
        }
    }
}
