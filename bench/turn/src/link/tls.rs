//! TURN over TLS: rustls client (ring provider) on a tokio TCP stream, framed as over TCP
//! (RFC 8656 §12.5).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{channels, Close, Ends, Link, LinkError};
use crate::wire::{self, FrameKind};

/// Largest buffered partial frame (a STUN message is at most 64 KiB + header).
const READ_BUFFER_BYTES: usize = 128 * 1024;

/// A client configuration that accepts any server certificate (signatures are still checked
/// against the certificate's key).
pub fn client_config() -> Result<Arc<ClientConfig>, LinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError::Handshake(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Opens a TLS connection to `server` and starts its task.
pub async fn connect(
    server: SocketAddr,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Link, LinkError> {
    let stream = tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect(server).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(config)
            .connect(ServerName::IpAddress(server.ip().into()), tcp)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => LinkError::Handshake(e.to_string()),
                _ => LinkError::Io(e),
            })
    })
    .await
    .map_err(|_| LinkError::Timeout)??;
    let (ends, parts) = channels(true);
    let task = tokio::spawn(run(stream, ends));
    Ok(parts.into_link(task))
}

/// Moves messages both ways until told to close, the control side goes away, or the server
/// closes (then the response channel closes and pending transactions fail at once).
async fn run(stream: TlsStream<TcpStream>, ends: Ends) {
    let Ends {
        mut outbound,
        responses,
        mut close,
    } = ends;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut filled = 0;
    loop {
        tokio::select! {
            how = &mut close => {
                if how.unwrap_or(Close::Graceful) == Close::Graceful {
                    let _ = wr.shutdown().await;
                }
                return;
            }
            msg = outbound.recv() => match msg {
                Some(m) => {
                    if wr.write_all(&m).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = wr.shutdown().await;
                    return;
                }
            },
            n = rd.read(&mut buf[filled..]) => {
                let n = match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                filled += n;
                let Ok(used) = wire::split_stream_frames(&buf[..filled], |frame| {
                    if frame.first().map(|b| wire::classify(*b)) == Some(Ok(FrameKind::Stun)) {
                        let _ = responses.try_send(frame.to_vec());
                    }
                }) else {
                    return;
                };
                if used == 0 && filled == buf.len() {
                    return;
                }
                buf.copy_within(used..filled, 0);
                filled -= used;
            }
        }
    }
}

/// Accepts any certificate; checks handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
