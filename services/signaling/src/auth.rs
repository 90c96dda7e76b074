//! API keys (`KEY:SECRET`, HTTP Basic, RFC 7617) and access tokens: JWT (RFC 7519) signed
//! HS256 with an API key's secret; claims `iss` (API key), `sub` (identity), `room`, `name`?,
//! `grants` {`join`, `create`}, `iat`, `exp`. Secrets are compared in constant time.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Seconds of clock skew tolerated on `exp`.
pub const LEEWAY_SECS: u64 = 5;

/// One API key.
#[derive(Clone)]
pub struct ApiKey {
    /// The public part (`iss` of the tokens it signs).
    pub key: String,
    /// The shared secret.
    pub secret: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:<redacted>", self.key)
    }
}

impl ApiKey {
    /// Parses `KEY:SECRET` (both non-empty).
    pub fn parse(s: &str) -> Option<ApiKey> {
        let (k, v) = s.split_once(':')?;
        (!k.is_empty() && !v.is_empty()).then(|| ApiKey {
            key: k.to_string(),
            secret: v.to_string(),
        })
    }
}

/// What an access token allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// May join the room.
    #[serde(default)]
    pub join: bool,
    /// May create the room on first join.
    #[serde(default)]
    pub create: bool,
}

/// Access token claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed it.
    pub iss: String,
    /// Participant identity.
    pub sub: String,
    /// The room it is for.
    pub room: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Grants.
    #[serde(default)]
    pub grants: Grants,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

/// Why a credential was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// No credential given.
    #[error("missing credentials")]
    Missing,
    /// Not a JWT, or unknown issuer.
    #[error("malformed token")]
    Malformed,
    /// Signature does not verify.
    #[error("invalid token signature")]
    BadSignature,
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// The token is for another room.
    #[error("token is for another room")]
    WrongRoom,
    /// Unknown API key or wrong secret.
    #[error("invalid API key")]
    BadApiKey,
}

/// Mints an access token for `identity` in `room`, signed by `key`, valid `ttl_secs` from
/// `now_unix_secs`.
pub fn mint_token(
    key: &ApiKey,
    room: &str,
    identity: &str,
    name: Option<&str>,
    grants: Grants,
    ttl_secs: u64,
    now_unix_secs: u64,
) -> String {
    let claims = Claims {
        iss: key.key.clone(),
        sub: identity.to_string(),
        room: room.to_string(),
        name: name.map(str::to_string),
        grants,
        iat: now_unix_secs,
        exp: now_unix_secs.saturating_add(ttl_secs),
    };
    sign_claims(key, &claims)
}

/// Signs `claims` with `key` (HS256).
pub fn sign_claims(key: &ApiKey, claims: &Claims) -> String {
    // HS256 encoding of a plain struct cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key.secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// The configured API keys.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    keys: Vec<ApiKey>,
}

impl Keys {
    /// Wraps the configured keys.
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Keys { keys }
    }

    /// The first key (signs the tokens `/join` hands out).
    pub fn first(&self) -> Option<&ApiKey> {
        self.keys.first()
    }

    fn find(&self, key: &str) -> Option<&ApiKey> {
        self.keys.iter().find(|k| k.key == key)
    }

    /// Checks a `KEY:SECRET` pair; the secret is compared in constant time.
    pub fn check_api_key(&self, key: &str, secret: &str) -> Result<&ApiKey, AuthError> {
        let k = self.find(key).ok_or(AuthError::BadApiKey)?;
        let ok: bool = k.secret.as_bytes().ct_eq(secret.as_bytes()).into();
        if ok {
            Ok(k)
        } else {
            Err(AuthError::BadApiKey)
        }
    }

    /// Checks an HTTP Basic `Authorization` value (`Basic base64(KEY:SECRET)`).
    pub fn check_basic(&self, header: &str) -> Result<&ApiKey, AuthError> {
        let b64 = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .ok_or(AuthError::Missing)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| AuthError::BadApiKey)?;
        let text = String::from_utf8(raw).map_err(|_| AuthError::BadApiKey)?;
        let (k, s) = text.split_once(':').ok_or(AuthError::BadApiKey)?;
        self.check_api_key(k, s)
    }

    /// Verifies an access token at `now_unix_secs`: signature by the key named in `iss`,
    /// `exp` (with [`LEEWAY_SECS`]), and the room when `room` is given.
    pub fn verify_token(
        &self,
        token: &str,
        room: Option<&str>,
        now_unix_secs: u64,
    ) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Read `iss` before verifying, to pick the key.
        let payload = token.split('.').nth(1).ok_or(AuthError::Malformed)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| AuthError::Malformed)?;
        #[derive(Deserialize)]
        struct Iss {
            iss: String,
        }
        let iss: Iss = serde_json::from_slice(&raw).map_err(|_| AuthError::Malformed)?;
        let key = self.find(&iss.iss).ok_or(AuthError::BadSignature)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(
            token,
            &DecodingKey::from_secret(key.secret.as_bytes()),
            &v,
        )
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature,
            _ => AuthError::Malformed,
        })?;
        let claims = data.claims;
        if claims.exp.saturating_add(LEEWAY_SECS) <= now_unix_secs {
            return Err(AuthError::Expired);
        }
        if let Some(room) = room {
            if claims.room != room {
                return Err(AuthError::WrongRoom);
            }
        }
        Ok(claims)
    }
}

/// Parses a duration like `90`, `90s`, `30m`, `1h`, `2d` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| format!("bad duration {s:?} (use e.g. 90s, 30m, 1h, 2d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(vec![
            ApiKey::parse("k1:secret-one").unwrap(),
            ApiKey::parse("k2:secret-two").unwrap(),
        ])
    }

    #[test]
    fn tokens_round_trip_and_fail_as_documented() {
        let ks = keys();
        let k2 = ApiKey::parse("k2:secret-two").unwrap();
        let g = Grants {
            join: true,
            create: false,
        };
        let t = mint_token(&k2, "demo", "alice", Some("Alice"), g, 60, 1000);
        let c = ks.verify_token(&t, Some("demo"), 1030).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.iss.as_str(), c.grants),
            ("alice", "k2", g)
        );
        assert_eq!(c.name.as_deref(), Some("Alice"));
        assert_eq!(
            ks.verify_token(&t, Some("other"), 1030),
            Err(AuthError::WrongRoom)
        );
        assert_eq!(
            ks.verify_token(&t, Some("demo"), 1060 + LEEWAY_SECS),
            Err(AuthError::Expired)
        );
        // Same claims signed with a secret the server does not know.
        let forged = mint_token(
            &ApiKey::parse("k2:guess").unwrap(),
            "demo",
            "alice",
            None,
            g,
            60,
            1000,
        );
        assert_eq!(
            ks.verify_token(&forged, Some("demo"), 1030),
            Err(AuthError::BadSignature)
        );
        let unknown = mint_token(
            &ApiKey::parse("k9:x").unwrap(),
            "demo",
            "a",
            None,
            g,
            60,
            1000,
        );
        assert_eq!(
            ks.verify_token(&unknown, Some("demo"), 1030),
            Err(AuthError::BadSignature)
        );
        for junk in ["x", "a.b.c", "a.eyJ9.c", ".."] {
            assert!(ks.verify_token(junk, None, 0).is_err(), "{junk}");
        }
        assert_eq!(ks.verify_token("", None, 0), Err(AuthError::Missing));
    }

    #[test]
    fn api_keys_by_basic_auth() {
        let ks = keys();
        let b = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(ks.check_basic(&b("k1:secret-one")).unwrap().key, "k1");
        assert_eq!(
            ks.check_basic(&b("k1:secret-two")).unwrap_err(),
            AuthError::BadApiKey
        );
        assert_eq!(
            ks.check_basic(&b("k3:secret-one")).unwrap_err(),
            AuthError::BadApiKey
        );
        assert_eq!(ks.check_basic("Bearer x").unwrap_err(), AuthError::Missing);
        assert!(ks.check_basic("Basic !!!").is_err());
        assert!(ApiKey::parse("nocolon").is_none());
        assert!(ApiKey::parse(":x").is_none());
        assert!(!format!("{:?}", ApiKey::parse("k:hunter2").unwrap()).contains("hunter2"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("1h"), Ok(3600));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("90s"), Ok(90));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("1y").is_err());
    }
}
