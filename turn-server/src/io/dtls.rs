//! DTLS for TURN (RFC 8656 §3.1, RFC 7350): a sans-IO DTLS 1.2 server endpoint (webrtc-rs
//! `rtc-dtls`, ring provider) per DTLS socket and worker. Datagrams from a client are decrypted
//! and handed to the TURN core as that 5-tuple's (transport `dtls`); what the core sends back
//! is encrypted for the client. The certificate is the TLS one ([`super::tls::CertStore`]); a
//! reload applies to new DTLS associations.

use super::tls::TlsError;
use bytes::BytesMut;
use rtc_crypto::SignatureScheme;
use rtc_dtls::config::{ConfigBuilder, HandshakeConfig};
use rtc_dtls::crypto::Certificate;
use rtc_dtls::endpoint::{Endpoint, EndpointEvent};
use rtc_shared::TransportProtocol;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// DTLS associations kept per socket and worker; beyond, new clients are refused.
pub const MAX_ASSOCIATIONS: usize = 20_000;
/// An association with no datagram for this long is dropped (an allocation refreshes at least
/// every few minutes, and clients send ChannelData or keepalives far more often).
pub const IDLE: Duration = Duration::from_secs(600);

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
    let certificate = Certificate::from_signing_key(certs, signing);
    let cfg = ConfigBuilder::default()
        .with_crypto_provider(provider)
        .with_certificates(vec![certificate])
        .build(false, None)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// One DTLS socket's associations.
pub struct DtlsServer {
    endpoint: Endpoint,
    last_seen: HashMap<SocketAddr, Instant>,
    generation: u64,
}

impl DtlsServer {
    /// A server on `local` with `cfg` (from [`handshake_config`]), at certificate `generation`.
    pub fn new(local: SocketAddr, cfg: Arc<HandshakeConfig>, generation: u64) -> Self {
        Self {
            endpoint: Endpoint::new(local, TransportProtocol::UDP, Some(cfg)),
            last_seen: HashMap::new(),
            generation,
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

    /// A datagram from `from`: decrypted application data (TURN/STUN messages), or an error
    /// (dropped and counted by the caller). Refuses new clients beyond [`MAX_ASSOCIATIONS`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        data: &[u8],
    ) -> Result<Vec<BytesMut>, String> {
        if !self.last_seen.contains_key(&from) && self.last_seen.len() >= MAX_ASSOCIATIONS {
            return Err("too many DTLS associations".into());
        }
        self.last_seen.insert(from, now);
        let events = self
            .endpoint
            .read(now, from, None, BytesMut::from(data))
            .map_err(|e| e.to_string());
        let mut out = Vec::new();
        match events {
            Ok(evs) => {
                for e in evs {
                    match e {
                        EndpointEvent::ApplicationData(d) => out.push(d),
                        EndpointEvent::PeerClosed => {
                            self.last_seen.remove(&from);
                        }
                        _ => {}
                    }
                }
                Ok(out)
            }
            Err(e) => {
                // A broken association is forgotten; the client may start again.
                let _ = self.endpoint.stop(now, from);
                self.last_seen.remove(&from);
                Err(e)
            }
        }
    }

    /// Encrypts `data` for `to`.
    pub fn send(&mut self, now: Instant, to: SocketAddr, data: &[u8]) -> Result<(), String> {
        self.endpoint
            .write(now, to, data)
            .map_err(|e| e.to_string())
    }

    /// Next datagram to put on the socket.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, BytesMut)> {
        self.endpoint
            .poll_transmit()
            .map(|t| (t.transport.peer_addr, t.message))
    }

    /// Handshake retransmissions and idle expiry; returns the associations dropped as idle.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<SocketAddr> {
        let remotes: Vec<SocketAddr> = self.last_seen.keys().copied().collect();
        for r in &remotes {
            if self.endpoint.poll_timeout(r).is_some_and(|t| t <= now)
                && self.endpoint.handle_timeout(*r, now).is_err()
            {
                let _ = self.endpoint.stop(now, *r);
            }
        }
        let idle: Vec<SocketAddr> = self
            .last_seen
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > IDLE)
            .map(|(a, _)| *a)
            .collect();
        for a in &idle {
            let _ = self.endpoint.stop(now, *a);
            self.last_seen.remove(a);
        }
        idle
    }

    /// Associations held.
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    /// True when none is held.
    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }
}
