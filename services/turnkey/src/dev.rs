//! Development state of `turnkey`: the API key and TURN REST secret it generates, optionally
//! kept in a directory (`--dev-dir`) so that they survive a restart, the TURN secret derived
//! from `--dev-key`, and the self-signed HTTPS certificate of `--https`.

use anyhow::Context as _;
use signaling::auth::ApiKey;
use std::path::{Path, PathBuf};

/// Where generated development secrets are kept, if anywhere.
pub struct DevState {
    dir: Option<PathBuf>,
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The TURN REST secret of a `--dev-key` secret: HMAC-SHA256(secret, "turnkey TURN REST
/// secret"), hex. The same key gives the same TURN secret on every start, and the TURN secret
/// does not reveal the API secret.
pub fn derived_turn_secret(api_secret: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, api_secret.as_bytes());
    ring::hmac::sign(&key, b"turnkey TURN REST secret")
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The host of an `http(s)://host[:port][/...]` URL (IPv6 without brackets).
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    (!host.is_empty()).then(|| host.to_string())
}

impl DevState {
    /// Opens (creating, mode 0700) `dir`, or keeps nothing with `None`.
    pub fn open(dir: Option<&Path>) -> anyhow::Result<DevState> {
        if let Some(d) = dir {
            std::fs::create_dir_all(d)
                .with_context(|| format!("--dev-dir: cannot create {}", d.display()))?;
            set_mode(d, 0o700)?;
        }
        Ok(DevState {
            dir: dir.map(Path::to_path_buf),
        })
    }

    /// The kept API key (`true`: generated now), or `None` without a directory.
    pub fn api_key(&self) -> anyhow::Result<Option<(ApiKey, bool)>> {
        let Some((text, fresh)) = self.kept("dev-key", || {
            format!("dev_{}:{}", random_hex(4), random_hex(16))
        })?
        else {
            return Ok(None);
        };
        let key = ApiKey::parse(text.trim()).with_context(|| {
            format!(
                "{}: expected KEY:SECRET (delete the file to get a new key)",
                self.path("dev-key").display()
            )
        })?;
        Ok(Some((key, fresh)))
    }

    /// The kept TURN REST secret (`true`: generated now), or `None` without a directory.
    pub fn turn_secret(&self) -> anyhow::Result<Option<(String, bool)>> {
        Ok(self
            .kept("turn-secret", || random_hex(24))?
            .map(|(s, fresh)| (s.trim().to_string(), fresh)))
    }

    /// A self-signed certificate and key (PEM) for `names` (DNS names or IP addresses). Kept in
    /// the directory and reused while it still covers every name; else made anew.
    pub fn self_signed(&self, names: &[String]) -> anyhow::Result<(String, String)> {
        let mut names: Vec<String> = names.to_vec();
        names.sort();
        names.dedup();
        let paths = self.dir.as_ref().map(|_| {
            (
                self.path("https-cert.pem"),
                self.path("https-key.pem"),
                self.path("https-names"),
            )
        });
        if let Some((cert, key, listed)) = &paths {
            if let (Ok(c), Ok(k), Ok(l)) = (
                std::fs::read_to_string(cert),
                std::fs::read_to_string(key),
                std::fs::read_to_string(listed),
            ) {
                let covered: Vec<&str> = l.lines().collect();
                if names.iter().all(|n| covered.contains(&n.as_str())) {
                    return Ok((c, k));
                }
            }
        }
        let key = rcgen::KeyPair::generate().context("generating the HTTPS key")?;
        let mut params = rcgen::CertificateParams::new(names.clone())
            .context("the HTTPS certificate's names")?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "turnkey development certificate");
        let cert = params
            .self_signed(&key)
            .context("signing the HTTPS certificate")?;
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        if let Some((cert, key, listed)) = &paths {
            write_private(key, &key_pem)?;
            write_private(cert, &cert_pem)?;
            write_private(listed, &names.join("\n"))?;
        }
        Ok((cert_pem, key_pem))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.as_deref().unwrap_or(Path::new(".")).join(name)
    }

    /// The content of `name` in the directory, created with `make()` if absent.
    fn kept(
        &self,
        name: &str,
        make: impl FnOnce() -> String,
    ) -> anyhow::Result<Option<(String, bool)>> {
        if self.dir.is_none() {
            return Ok(None);
        }
        let path = self.path(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((text, false))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let text = make();
                write_private(&path, &format!("{text}\n"))?;
                Ok(Some((text, true)))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Writes `text` to `path`, readable by the owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_hosts() {
        assert_eq!(
            url_host("https://192.0.2.7:8443").as_deref(),
            Some("192.0.2.7")
        );
        assert_eq!(
            url_host("https://sig.example.com/x").as_deref(),
            Some("sig.example.com")
        );
        assert_eq!(
            url_host("http://[2001:db8::1]:80/").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn the_turn_secret_follows_the_dev_key() {
        assert_eq!(derived_turn_secret("s1"), derived_turn_secret("s1"));
        assert_ne!(derived_turn_secret("s1"), derived_turn_secret("s2"));
        assert_eq!(derived_turn_secret("s1").len(), 64);
    }
}
