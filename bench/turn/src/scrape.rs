//! Reading a server's Prometheus `/metrics` page: one plain HTTP/1.1 GET (loopback, no TLS) and a
//! parser for the text exposition format that sums a metric over its label sets. The parser is
//! pure; [`MetricsEndpoint::fetch`] does the I/O.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Largest `/metrics` body read.
const MAX_BODY_BYTES: u64 = 4 << 20;

/// Errors of a scrape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrapeError {
    /// Connecting, writing or reading failed.
    #[error("metrics endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("metrics endpoint did not answer in time")]
    Timeout,
    /// The answer is not `HTTP/1.x 200`.
    #[error("metrics endpoint answered {0:?}")]
    Status(String),
    /// `--metrics` is not `HOST:PORT[/PATH]` or `http://HOST:PORT[/PATH]`.
    #[error("bad metrics address {0:?}: give HOST:PORT or http://HOST:PORT/metrics")]
    Address(String),
}

/// Where to scrape: `host:port` and the path (default `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsEndpoint {
    /// `host:port` to connect to.
    pub authority: String,
    /// Request path.
    pub path: String,
}

impl MetricsEndpoint {
    /// Parses `HOST:PORT`, `HOST:PORT/PATH` or `http://HOST:PORT[/PATH]`.
    pub fn parse(spec: &str) -> Result<Self, ScrapeError> {
        let rest = spec.strip_prefix("http://").unwrap_or(spec);
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        if authority.is_empty() || !authority.contains(':') || rest.contains("://") {
            return Err(ScrapeError::Address(spec.into()));
        }
        Ok(Self {
            authority: authority.into(),
            path: path.into(),
        })
    }

    /// GETs the page and returns its body.
    pub async fn fetch(&self, timeout: Duration) -> Result<String, ScrapeError> {
        tokio::time::timeout(timeout, self.get())
            .await
            .map_err(|_| ScrapeError::Timeout)?
    }

    async fn get(&self) -> Result<String, ScrapeError> {
        let mut stream = TcpStream::connect(&self.authority).await?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: text/plain\r\n\r\n",
            self.path, self.authority
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(MAX_BODY_BYTES).read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.lines().next().unwrap_or_default();
        if !(status.starts_with("HTTP/1.") && status.split_whitespace().nth(1) == Some("200")) {
            return Err(ScrapeError::Status(status.into()));
        }
        if head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        }) {
            return Ok(dechunk(body));
        }
        Ok(body.into())
    }
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body; stops at the first malformed size.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// Sum of metric `name` over all its label sets: 0 for a metric declared (`# TYPE`) without
/// samples (a labelled family before its first label set), None if the page does not have it.
/// `name` is matched exactly (`turn_allocations` does not match `turn_allocations_total`).
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") && words.next() == Some(name) {
                sum.get_or_insert(0.0);
            }
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            // Label values may hold '}' only escaped inside quotes; take the last one.
            labelled
                .rsplit_once('}')
                .map(|(_, v)| v)
                .and_then(|v| v.split_whitespace().next())
        } else if rest.starts_with(' ') {
            rest.split_whitespace().next()
        } else {
            continue;
        };
        if let Some(v) = value.and_then(|v| v.parse::<f64>().ok()) {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP turn_allocations Live allocations.\n\
        # TYPE turn_allocations gauge\n\
        turn_allocations{transport=\"udp\",family=\"ipv4\"} 3\n\
        turn_allocations{transport=\"tcp\",family=\"ipv4\"} 2\n\
        turn_allocations_total 99\n\
        turn_allocation_requests_total{result=\"success\"} 10\n\
        turn_permissions 7\n\
        turn_channel_bindings 1.5e1\n\
        # EOF\n";

    #[test]
    fn sums_label_sets_and_matches_names_exactly() {
        assert_eq!(metric_sum(PAGE, "turn_allocations"), Some(5.0));
        assert_eq!(metric_sum(PAGE, "turn_permissions"), Some(7.0));
        assert_eq!(metric_sum(PAGE, "turn_channel_bindings"), Some(15.0));
        assert_eq!(metric_sum(PAGE, "turn_allocation"), None);
        assert_eq!(metric_sum(PAGE, "turn_nothing"), None);
        assert_eq!(
            metric_sum("turn_allocations{a=\"}\"} x\n", "turn_allocations"),
            None
        );
        let declared = "# HELP turn_allocations Live.\n# TYPE turn_allocations gauge\n";
        assert_eq!(metric_sum(declared, "turn_allocations"), Some(0.0));
    }

    #[test]
    fn endpoint_forms() {
        let e = MetricsEndpoint::parse("127.0.0.1:9641").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.path.as_str()),
            ("127.0.0.1:9641", "/metrics")
        );
        let e = MetricsEndpoint::parse("http://[::1]:80/m").unwrap();
        assert_eq!((e.authority.as_str(), e.path.as_str()), ("[::1]:80", "/m"));
        assert!(MetricsEndpoint::parse("https://x:1/").is_err());
        assert!(MetricsEndpoint::parse("localhost").is_err());
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("zz\r\nhello"), "");
    }
}
