//! TLS for `turns:` (RFC 8656 §3.1, RFC 7350): rustls with the ring provider, TLS 1.2 and 1.3
//! only. The certificate chain and key come from PEM files and are reloaded without a restart
//! (existing connections and allocations are untouched; new handshakes use the new pair) when
//! the files change or on SIGHUP.

use rustls::crypto::ring as provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the right kind.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not fit a supported signature scheme.
    #[error("unsupported private key: {0}")]
    Key(String),
}

/// A chain and key from PEM text in memory (e.g. a self-signed certificate generated at start).
pub fn from_pem(cert: &str, key: &str) -> Result<CertifiedKey, TlsError> {
    let bad = |reason: String| TlsError::File {
        path: PathBuf::from("<in memory>"),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE in the PEM text".into()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let signing =
        provider::sign::any_supported_type(&key_der).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// Loads a chain and key from PEM files.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::File {
            path: cert.into(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File {
            path: cert.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: cert.into(),
            reason: "no CERTIFICATE in the file".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let signing =
        provider::sign::any_supported_type(&key_der).map_err(|e| TlsError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(certs, signing))
}

/// The current certificate, swapped in place on reload.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    cert: PathBuf,
    key: PathBuf,
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
    generation: AtomicU64,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn mtimes(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let c = std::fs::metadata(cert).and_then(|m| m.modified()).ok()?;
    let k = std::fs::metadata(key).and_then(|m| m.modified()).ok()?;
    Some((c, k))
}

impl CertStore {
    /// Loads the pair (an error here stops the server from starting).
    pub fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, TlsError> {
        let ck = load(cert, key)?;
        Ok(Arc::new(CertStore {
            current: RwLock::new(Arc::new(ck)),
            cert: cert.into(),
            key: key.into(),
            stamp: RwLock::new(mtimes(cert, key)),
            generation: AtomicU64::new(0),
        }))
    }

    /// A store over a pair held in memory ([`from_pem`]): nothing to reload.
    pub fn fixed(ck: CertifiedKey) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: RwLock::new(Arc::new(ck)),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            stamp: RwLock::new(None),
            generation: AtomicU64::new(0),
        })
    }

    /// Loads the files again; on error the old pair stays in use. A [`fixed`](Self::fixed)
    /// store has no files: nothing happens.
    pub fn reload(&self) -> Result<(), TlsError> {
        if self.cert.as_os_str().is_empty() {
            return Ok(());
        }
        let ck = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ck);
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = mtimes(&self.cert, &self.key);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Reloads if either file's modification time changed since the last load.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = mtimes(&self.cert, &self.key);
        let seen = *self.stamp.read().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != seen {
            Some(self.reload())
        } else {
            None
        }
    }

    /// Incremented by every successful reload (DTLS endpoints rebuild their configuration).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The certificate chain and key files.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// The DER of the leaf certificate in use (for tests and logs).
    pub fn leaf(&self) -> Vec<u8> {
        let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
        cur.cert.first().map(|c| c.to_vec()).unwrap_or_default()
    }
}

/// A rustls server configuration over `store`: TLS 1.3 and 1.2 only.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Key(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    Ok(Arc::new(cfg))
}

/// Polls the files every `every` and reloads on change, and on SIGHUP, until `stop`.
pub async fn watch(store: Arc<CertStore>, every: Duration, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(every);
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => false,
            _ = hup_fut => true,
        };
        let r = if forced {
            Some(store.reload())
        } else {
            store.reload_if_changed()
        };
        match r {
            Some(Ok(())) if store.cert.as_os_str().is_empty() => {}
            Some(Ok(())) => {
                tracing::info!(cert = %store.cert.display(), sighup = forced, "TLS certificate reloaded")
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "TLS certificate reload failed; keeping the previous one")
            }
            None => {}
        }
    }
}
