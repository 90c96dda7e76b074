//! The metrics listener: `GET /metrics` and `GET /healthz`.
//!
//! `/metrics` answers in the format the scraper asks for: OpenMetrics 1.0 (what
//! prometheus-client writes) when `Accept` names `application/openmetrics-text`, as Prometheus
//! does; otherwise the classic Prometheus text format 0.0.4 (curl, `promtool check metrics`),
//! each with its own content type.

use axum::{
    extract::State,
    http::{header, HeaderMap},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::{net::SocketAddr, sync::Arc};
use tokio_util::sync::CancellationToken;

/// Content type of the classic Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content type of OpenMetrics 1.0 text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Renders a registry as OpenMetrics 1.0 text.
pub fn render_openmetrics(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String cannot fail except on fmt errors, which String never returns.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Renders a registry in the classic Prometheus text format 0.0.4.
pub fn render(registry: &Registry) -> String {
    to_text_format(&render_openmetrics(registry))
}

/// OpenMetrics text to the classic text format: a counter family's `# HELP`/`# TYPE` name its
/// `_total` series (OpenMetrics names the family without the suffix), and the OpenMetrics-only
/// `# UNIT` and `# EOF` lines go. Samples are the same in both.
fn to_text_format(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let sep = if tail.is_empty() { "" } else { " " };
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str(&format!("{prefix}{name}_total{sep}{tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Registers `turnkey_build_info{version}` (always 1), which every service exports.
pub fn register_build_info(registry: &mut Registry) {
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    let f: Family<Vec<(String, String)>, Gauge> = Family::default();
    f.get_or_create(&vec![(
        "version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )])
    .set(1);
    registry.register("turnkey_build_info", "turnkey build information", f);
}

/// A router serving `/metrics` from `registry` and `/healthz` (`ok`).
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(registry)
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> impl IntoResponse {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
            render_openmetrics(&registry),
        )
    } else {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&registry))
    }
}

/// Binds `addr` and serves the metrics router until `shutdown` is cancelled.
/// Returns the bound address (useful with port 0) once listening.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(registry))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn classic_text_names_counter_families_by_their_total_series() {
        let mut r = Registry::default();
        let c = Counter::<u64>::default();
        c.inc();
        r.register("things", "Things seen", c);
        r.register("level", "A level", Gauge::<i64>::default());
        let om = render_openmetrics(&r);
        assert!(
            om.contains("# TYPE things counter") && om.ends_with("# EOF\n"),
            "{om}"
        );
        let text = render(&r);
        assert!(text.contains("# HELP things_total Things seen."), "{text}");
        assert!(text.contains("# TYPE things_total counter"), "{text}");
        assert!(text.contains("things_total 1"), "{text}");
        assert!(text.contains("# TYPE level gauge"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
