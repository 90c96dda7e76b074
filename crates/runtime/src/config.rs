//! The one configuration pattern every service follows ([`Layered`]): clap flags over a TOML
//! file over defaults, secrets also from `TURNKEY_*` environment variables (clap `env`), and an
//! unknown key in the file is an error that names it.

use serde::de::DeserializeOwned;
use std::path::Path;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this service (unknown key, wrong type...).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file's path.
        path: String,
        /// What the TOML parser said, naming the key and line.
        message: String,
    },
    /// A value is present but not acceptable.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Reads and parses a TOML file into `T` (which should use `#[serde(deny_unknown_fields)]`).
pub fn load_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// A service's command-line arguments, resolvable into its configuration: flags override the
/// file, the file overrides `Defaults` (which an embedding program such as `turnkey` may change,
/// e.g. to other ports).
pub trait Layered: Sized {
    /// The config file's shape: every field optional, `#[serde(deny_unknown_fields)]`.
    type File: DeserializeOwned + Default;
    /// Defaults under the file.
    type Defaults;
    /// The resolved, validated configuration.
    type Config;

    /// The `--config` file, if given.
    fn config_path(&self) -> Option<&Path>;

    /// Flags over `file` over `defaults`, then validation.
    ///
    /// Errors: [`ConfigError::Invalid`] naming the flag or key whose value is unusable.
    fn merge(
        self,
        file: Self::File,
        defaults: &Self::Defaults,
    ) -> Result<Self::Config, ConfigError>;

    /// Reads the config file (if any) and merges it under the flags.
    ///
    /// Errors: the file is unreadable or invalid ([`ConfigError::Read`], [`ConfigError::Parse`]
    /// naming the key), or [`Layered::merge`] refuses a value.
    fn resolve(self, defaults: &Self::Defaults) -> Result<Self::Config, ConfigError> {
        let file = match self.config_path() {
            Some(p) => load_toml(p)?,
            None => Self::File::default(),
        };
        self.merge(file, defaults)
    }
}

/// Shortest `admin_token` accepted (the bearer of `POST /admin/drain` and of turn-server's
/// admin API): anyone holding it can take the node out of service.
pub const ADMIN_TOKEN_MIN_CHARS: usize = 16;

/// Refuses an `admin_token` shorter than [`ADMIN_TOKEN_MIN_CHARS`] (an empty one included).
pub fn check_admin_token(token: Option<&str>) -> Result<(), ConfigError> {
    match token {
        Some(t) if t.chars().count() < ADMIN_TOKEN_MIN_CHARS => Err(ConfigError::Invalid(format!(
            "admin_token must be at least {ADMIN_TOKEN_MIN_CHARS} characters"
        ))),
        _ => Ok(()),
    }
}

/// Replaces a secret with a fixed marker for logging the effective config.
pub fn redact(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        "<redacted>"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_tokens_shorter_than_16_characters_are_refused() {
        assert!(check_admin_token(None).is_ok());
        assert!(check_admin_token(Some("0123456789abcdef")).is_ok());
        assert!(check_admin_token(Some("0123456789abcde")).is_err());
        assert!(check_admin_token(Some("")).is_err());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        realm: Option<String>,
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = std::env::temp_dir().join(format!("turnkey-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "realm = \"x\"\nrelam = \"typo\"\n").unwrap();
        let err = load_toml::<Sample>(&path).unwrap_err().to_string();
        assert!(err.contains("relam"), "{err}");
        std::fs::write(&path, "realm = \"x\"\n").unwrap();
        let ok: Sample = load_toml(&path).unwrap();
        assert_eq!(ok.realm.as_deref(), Some("x"));
    }

    #[test]
    fn redact_hides_secrets() {
        assert_eq!(redact("hunter2"), "<redacted>");
        assert_eq!(redact(""), "");
    }
}
