//! TLS for the tests: self-signed certificates ([`TestCert`], written to disk by [`CertFiles`])
//! and a client that accepts any server certificate and remembers the leaf it was shown, so a
//! test can check which certificate a server presents.

use std::net::TcpStream;
use std::path::PathBuf;
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

/// A self-signed test certificate for `turn.test` and 127.0.0.1.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// SHA-256 of the SubjectPublicKeyInfo in base64, for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
    /// The certificate's DER (what a client is shown as the leaf).
    pub der: Vec<u8>,
}

impl TestCert {
    /// A new key (ECDSA P-256) and certificate with common name `cn`.
    pub fn new(cn: &str) -> TestCert {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["turn.test".to_string(), "127.0.0.1".to_string()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("self-signed");
        let spki = ring::digest::digest(
            &ring::digest::SHA256,
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        );
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            spki_sha256: base64::engine::general_purpose::STANDARD.encode(spki.as_ref()),
            der: cert.der().to_vec(),
        }
    }
}

/// `cert.pem` and `key.pem` in a temporary directory of their own, removed on drop.
pub struct CertFiles {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// An empty directory named after `tag` and this process.
    pub fn new(tag: &str) -> CertFiles {
        let dir = std::env::temp_dir().join(format!("turnkey-cert-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        CertFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        }
    }

    /// A directory holding a new certificate with common name `tag`.
    pub fn with_new_cert(tag: &str) -> (CertFiles, TestCert) {
        let files = CertFiles::new(tag);
        let cert = TestCert::new(tag);
        files.install(&cert);
        (files, cert)
    }

    /// Writes `cert` over the files. Key first: a server reloading between the two writes then
    /// sees a mismatched pair (and keeps its old one), and its next poll sees the cert's new
    /// modification time.
    pub fn install(&self, cert: &TestCert) {
        for (path, text) in [(&self.key, &cert.key_pem), (&self.cert, &cert.cert_pem)] {
            std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        }
    }

    /// The certificate path as a command-line argument.
    pub fn cert_arg(&self) -> &str {
        self.cert.to_str().expect("UTF-8 temp path")
    }

    /// The key path as a command-line argument.
    pub fn key_arg(&self) -> &str {
        self.key.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTPS request (any certificate accepted); the status, the body and the SHA-256
/// fingerprint of the certificate the server showed (`AB:CD:...`).
pub fn https_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    user_pass: &str,
    body: &str,
) -> (u16, String, String) {
    use base64::Engine;
    use std::io::{Read, Write};
    let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
    let tcp =
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let (mut tls, verifier) = client(tcp);
    write!(
        tls,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Basic \
         {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    // The server may close without close_notify after the response: what arrived counts.
    let _ = tls.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body, fingerprint(&verifier.leaf()))
}

/// SHA-256 of `der` as browsers show a certificate fingerprint (`AB:CD:...`): what signaling
/// and turnkey print.
pub fn fingerprint(der: &[u8]) -> String {
    signaling::run::fingerprint_sha256(der)
}
