//! A TLS client for the tests: it accepts any server certificate (the tests make their own
//! self-signed ones) and remembers the leaf it was shown, so a test can check which
//! certificate a server presents.

use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// A blocking TLS stream over TCP.
pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Accepts any certificate and remembers the last leaf it was shown.
#[derive(Debug, Default)]
pub struct AnyCert(Mutex<Vec<u8>>);

impl AnyCert {
    /// The DER of the last leaf certificate shown (empty before a handshake).
    pub fn leaf(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap() = end_entity.to_vec();
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client for server name `turn.test` over `tcp` (the handshake runs on first I/O);
/// returns it with its verifier, which holds the leaf once the handshake is done.
pub fn client(tcp: TcpStream) -> (Tls, Arc<AnyCert>) {
    let verifier = Arc::new(AnyCert::default());
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .dangerous()
    .with_custom_certificate_verifier(verifier.clone())
    .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("turn.test").expect("name"),
    )
    .expect("TLS client");
    (rustls::StreamOwned::new(conn, tcp), verifier)
}
