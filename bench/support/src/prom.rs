//! Reading a histogram off a Prometheus `/metrics` page: a blocking HTTP/1.1 GET (loopback, no
//! TLS) and the cumulative buckets of one histogram, summed over its label sets, with a
//! quantile estimated by linear interpolation inside the bucket it falls in (as PromQL's
//! `histogram_quantile` does).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest body read.
const MAX_BODY_BYTES: u64 = 4 << 20;

/// The body of `GET /metrics` at `addr`, or None if it did not answer 200 within `timeout`.
pub fn fetch_metrics(addr: SocketAddr, timeout: Duration) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.take(MAX_BODY_BYTES).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    if head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"))
    {
        return Some(dechunk(body));
    }
    Some(body.to_string())
}

/// The payload of a chunked body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Cumulative `(upper bound, count)` of histogram `name` (without `_bucket`), summed over its
/// label sets, by increasing bound (`+Inf` last). Empty if the page has none.
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Some(le) = labels.split(',').find_map(|l| {
            l.trim()
                .strip_prefix("le=\"")
                .and_then(|v| v.strip_suffix('"'))
        }) else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(b) => b,
                Err(_) => continue,
            }
        };
        let Ok(count) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        match out.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, c)) => *c += count,
            None => out.push((bound, count)),
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The sum of sample `name` over its label sets that carry label `with` (`key="value"`, or
/// every set when `None`); None if the page has no such sample.
pub fn sample_sum(text: &str, name: &str, with: Option<&str>) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.rsplit_once('}') {
                Some(x) => x,
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if with.is_some_and(|w| !labels.split(',').any(|l| l.trim() == w)) {
            continue;
        }
        let Ok(v) = value.split_whitespace().next().unwrap_or("").parse::<f64>() else {
            continue;
        };
        *sum.get_or_insert(0.0) += v;
    }
    sum
}

/// `after - before`, bucket by bucket (what was observed between two scrapes).
pub fn bucket_delta(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(b, c)| {
            let prev = before
                .iter()
                .find(|(pb, _)| *pb == b)
                .map_or(0.0, |(_, pc)| *pc);
            (b, (c - prev).max(0.0))
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative buckets, interpolated linearly inside its bucket;
/// None when nothing was observed. A quantile in the `+Inf` bucket is its lower bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lo);
            }
            let inside = count - below;
            let f = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some(lo + (bound - lo) * f);
        }
        lo = bound;
        below = count;
    }
    Some(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE d histogram\n\
        d_sum 1.5\n\
        d_count 100\n\
        d_bucket{le=\"0.001\"} 50\n\
        d_bucket{le=\"0.002\"} 90\n\
        d_bucket{le=\"+Inf\"} 100\n\
        other_bucket{le=\"0.001\"} 7\n";

    #[test]
    fn reads_buckets_and_interpolates_quantiles() {
        let b = histogram_buckets(PAGE, "d");
        assert_eq!(
            b,
            vec![(0.001, 50.0), (0.002, 90.0), (f64::INFINITY, 100.0)]
        );
        assert!((quantile(&b, 0.5).unwrap() - 0.001).abs() < 1e-12);
        // 70th of 100: 20 of the 40 between 1 and 2 ms.
        assert!((quantile(&b, 0.7).unwrap() - 0.0015).abs() < 1e-12);
        // In +Inf: its lower bound.
        assert_eq!(quantile(&b, 0.99), Some(0.002));
        let d = bucket_delta(&[(0.001, 40.0), (0.002, 80.0)], &b);
        assert_eq!(
            d,
            vec![(0.001, 10.0), (0.002, 10.0), (f64::INFINITY, 100.0)]
        );
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[(0.001, 0.0)], 0.5), None);
        assert!(histogram_buckets(PAGE, "missing").is_empty());
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
