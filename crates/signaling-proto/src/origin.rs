//! Which browser origins may use the API and the WebSocket (`PROTOCOL.md`, "Browsers and
//! origins"). A request with an `Origin` header (RFC 6454 §7; browsers send it on WebSocket
//! handshakes, RFC 6455 §4.1, and on cross-origin and non-GET fetches) is allowed when the
//! origin is this server's own (its host:port equals the request's `Host`, or it is the origin
//! of `public_url`) or is listed in `allowed_origins` (`*`: any). Requests without `Origin`
//! (servers, native apps, curl) are not browser requests and are allowed.

/// `Https://Example.com:443/` -> `https://example.com`: lower case, no trailing `/`, no default
/// port (RFC 6454 §6.1 serialization). `*` stays `*`. None if `o` is not
/// `http(s)://host[:port]` (e.g. the opaque origin `null`, or a URL with a path).
pub fn normalize_origin(o: &str) -> Option<String> {
    let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
    if o == "*" {
        return Some(o);
    }
    let (scheme, authority) = o.split_once("://")?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    Some(format!("{scheme}://{authority}"))
}

/// The origin of a base URL: `https://sig.example.com/signal` -> `https://sig.example.com`.
pub fn origin_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    normalize_origin(&format!("{scheme}://{authority}"))
}

/// The origin policy of one server.
#[derive(Clone, Debug, Default)]
pub struct OriginPolicy {
    /// Normalized allowed origins (`*`: any).
    allowed: Vec<String>,
    /// The origin of the public URL, if known.
    own: Option<String>,
}

impl OriginPolicy {
    /// A policy allowing the server's own origin (`public_url`'s, and whatever the `Host`
    /// header names) plus `allowed` (normalized by [`normalize_origin`]).
    pub fn new(allowed: &[String], public_url: Option<&str>) -> Self {
        OriginPolicy {
            allowed: allowed.iter().filter_map(|o| normalize_origin(o)).collect(),
            own: public_url.and_then(origin_of_url),
        }
    }

    /// True if `origin` is listed (or `*` is). The server's own origin is not included: same
    /// origin requests need no CORS headers.
    pub fn listed(&self, origin: &str) -> bool {
        if self.allowed.iter().any(|a| a == "*") {
            return true;
        }
        normalize_origin(origin).is_some_and(|o| self.allowed.contains(&o))
    }

    /// True if a request carrying `Origin: origin` to `Host: host` may go on.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        if self.listed(origin) {
            return true;
        }
        let Some(o) = normalize_origin(origin) else {
            return false;
        };
        if self.own.as_deref() == Some(o.as_str()) {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let (scheme, authority) = o.split_once("://").unwrap_or(("", ""));
        let host = host.trim().to_ascii_lowercase();
        let default_port = if scheme == "https" { ":443" } else { ":80" };
        let host = host.strip_suffix(default_port).unwrap_or(&host);
        authority == host
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn normalizes_origins() {
        assert_eq!(
            normalize_origin("HTTPS://App.Example.com:443/").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            normalize_origin("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            normalize_origin("http://[::1]:80").as_deref(),
            Some("http://[::1]")
        );
        assert_eq!(normalize_origin("*").as_deref(), Some("*"));
        for bad in [
            "null",
            "",
            "app.example.com",
            "ftp://x",
            "https://x/p",
            "https://",
            "http://a b",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad:?}");
        }
        assert_eq!(
            origin_of_url("https://sig.example.com/signal").as_deref(),
            Some("https://sig.example.com")
        );
    }

    #[test]
    fn same_origin_by_default() {
        let p = OriginPolicy::new(&[], None);
        assert!(p.allows("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(p.allows("https://sig.example.com", Some("sig.example.com")));
        assert!(p.allows("https://sig.example.com", Some("sig.example.com:443")));
        assert!(p.allows("http://Sig.Example.com:80", Some("sig.example.com")));
        assert!(!p.allows("http://127.0.0.1:8081", Some("127.0.0.1:8080")));
        assert!(!p.allows("https://evil.example", Some("127.0.0.1:8080")));
        assert!(!p.allows("https://sig.example.com", Some("sig.example.com:8443")));
        assert!(!p.allows("null", Some("127.0.0.1:8080")));
        assert!(!p.allows("http://127.0.0.1:8080", None));
        assert!(!p.listed("http://127.0.0.1:8080"));
    }

    #[test]
    fn public_url_and_listed_origins() {
        let p = OriginPolicy::new(
            &["https://app.example.com".into()],
            Some("https://sig.example.com/base"),
        );
        // Behind a proxy that rewrites Host, the public URL's origin still counts as own.
        assert!(p.allows("https://sig.example.com", Some("10.0.0.5:8080")));
        assert!(p.allows("https://APP.example.com", Some("10.0.0.5:8080")));
        assert!(p.listed("https://app.example.com:443"));
        assert!(!p.allows("http://app.example.com", Some("10.0.0.5:8080")));
        let any = OriginPolicy::new(&["*".into()], None);
        assert!(any.allows("https://whatever.example", Some("x")));
        assert!(any.allows("null", None));
    }
}
