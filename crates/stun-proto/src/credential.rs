//! Key material and credentials every STUN user shares: the long-term credential key (RFC 8489
//! §9.2.2), USERHASH (RFC 8489 §14.4), and TURN REST API credentials
//! (draft-uberti-behave-turn-rest-00): what the credential issuer mints and the TURN server
//! verifies.

use crate::msg::PasswordAlgorithm;
use base64::Engine;
use md5::{Digest, Md5};
use ring::hmac;

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

/// The expiry of a REST username `<expiry>:<user>` (also accepts a bare `<expiry>`).
pub fn rest_expiry(username: &str) -> Option<u64> {
    let head = username.split(':').next()?;
    head.parse().ok()
}

/// USERHASH (RFC 8489 §14.4): SHA-256 of `username ":" realm`.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{username}:{realm}").as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The name quotas are counted against: the user part of a REST username `<expiry>:<user>`,
/// else the whole username.
pub fn quota_name(username: &str) -> &str {
    match username.split_once(':') {
        Some((exp, user)) if exp.parse::<u64>().is_ok() => user,
        _ => username,
    }
}
