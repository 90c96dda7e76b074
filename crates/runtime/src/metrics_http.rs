//! The metrics listener: `GET /metrics`, `GET /healthz` (liveness: `ok` while the process
//! runs) and, on a node that can drain ([`serve_drainable`]), `GET /readyz` (readiness) and
//! `POST /admin/drain`.
//!
//! `/metrics` answers in the format the scraper asks for: OpenMetrics 1.0 (what
//! prometheus-client writes) when `Accept` names `application/openmetrics-text`, as Prometheus
//! does; otherwise the classic Prometheus text format 0.0.4 (curl, `promtool check metrics`),
//! each with its own content type.

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::{net::SocketAddr, sync::Arc};
use subtle::ConstantTimeEq;
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

/// The metrics router plus readiness and the drain call ([`crate::drain`]):
/// - `GET /readyz`: 200 `{"ready":true}`, or 503
///   `{"ready":false,"draining":true,"reason":..,"remaining_secs":..}` once the drain started;
/// - `POST /admin/drain` with `Authorization: Bearer <admin_token>`: starts the drain, 202
///   `{"draining":true,"started":<this call started it>,"deadline_secs":..}`; 401
///   `{"error":{"code":"unauthorized",..}}` without the right token; 404
///   `{"error":{"code":"not_found",..}}` when no token (or an empty one) is configured (drain by
///   signal only).
pub fn drainable_router(
    registry: Arc<Registry>,
    drain: crate::drain::Drain,
    admin_token: Option<String>,
) -> Router {
    drainable_router_with(registry, drain, Arc::new(move || admin_token.clone()))
}

/// Where the bearer token of `POST /admin/drain` comes from: asked at every call, so a token
/// that a configuration reload changed (or removed) is in force at once. `None` or an empty
/// token: no token is configured (the call answers 404).
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// [`drainable_router`] with the token read from `token` at every call.
pub fn drainable_router_with(
    registry: Arc<Registry>,
    drain: crate::drain::Drain,
    token: TokenSource,
) -> Router {
    let probe = Arc::new(Probe {
        drain,
        admin_token: token,
    });
    let probes = Router::new()
        .route("/readyz", get(readyz))
        .route("/admin/drain", axum::routing::post(admin_drain))
        .with_state(probe);
    router(registry).merge(probes)
}

struct Probe {
    drain: crate::drain::Drain,
    admin_token: TokenSource,
}

fn json_response(status: StatusCode, body: String) -> axum::response::Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn readyz(State(p): State<Arc<Probe>>) -> axum::response::Response {
    match p.drain.since() {
        None => json_response(StatusCode::OK, "{\"ready\":true}".into()),
        Some((_, reason)) => {
            let left = p
                .drain
                .remaining(std::time::Instant::now())
                .unwrap_or_default()
                .as_secs();
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{{\"ready\":false,\"draining\":true,\"reason\":\"{reason}\",\"remaining_secs\":{left}}}"
                ),
            )
        }
    }
}

async fn admin_drain(State(p): State<Arc<Probe>>, headers: HeaderMap) -> axum::response::Response {
    let Some(token) = (p.admin_token)().filter(|t| !t.is_empty()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            "{\"error\":{\"code\":\"not_found\",\"message\":\"no admin token is configured: drain by SIGTERM\"}}".into(),
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            "{\"error\":{\"code\":\"unauthorized\",\"message\":\"a valid bearer token is required\"}}".into(),
        );
    }
    let started = p.drain.start("admin");
    json_response(
        StatusCode::ACCEPTED,
        format!(
            "{{\"draining\":true,\"started\":{started},\"deadline_secs\":{}}}",
            p.drain.deadline().as_secs()
        ),
    )
}

/// [`serve`] with [`drainable_router`].
pub async fn serve_drainable(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    drain: crate::drain::Drain,
    admin_token: Option<String>,
) -> std::io::Result<SocketAddr> {
    serve_drainable_with(
        addr,
        registry,
        shutdown,
        drain,
        Arc::new(move || admin_token.clone()),
    )
    .await
}

/// [`serve`] with [`drainable_router_with`] (the token asked at every drain call).
pub async fn serve_drainable_with(
    addr: SocketAddr,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    drain: crate::drain::Drain,
    token: TokenSource,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = drainable_router_with(registry, drain, token);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(local)
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

    /// One plain HTTP/1.1 request; the status code and body.
    async fn request(addr: SocketAddr, head: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap();
        (code, body)
    }

    #[tokio::test]
    async fn readyz_turns_false_on_an_authorized_drain_and_healthz_stays_true() {
        let drain = crate::drain::Drain::new(std::time::Duration::from_secs(30));
        let shutdown = CancellationToken::new();
        let addr = serve_drainable(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::default()),
            shutdown.clone(),
            drain.clone(),
            Some("s3cret".into()),
        )
        .await
        .unwrap();
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let post = |auth: &str| {
            format!("POST /admin/drain HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n")
        };
        assert_eq!(
            request(addr, &get("/readyz")).await,
            (200, "{\"ready\":true}".into())
        );
        let (code, body) = request(addr, &post("Authorization: Bearer wrong\r\n")).await;
        assert_eq!(code, 401, "{body}");
        assert!(body.contains("\"unauthorized\""), "{body}");
        assert!(!drain.is_draining());
        let (code, body) = request(addr, &post("Authorization: Bearer s3cret\r\n")).await;
        assert_eq!(code, 202, "{body}");
        assert!(
            body.contains("\"started\":true") && body.contains("\"deadline_secs\":30"),
            "{body}"
        );
        assert!(drain.is_draining());
        let (code, body) = request(addr, &get("/readyz")).await;
        assert_eq!(code, 503, "{body}");
        assert!(
            body.contains("\"draining\":true") && body.contains("\"reason\":\"admin\""),
            "{body}"
        );
        assert_eq!(request(addr, &get("/healthz")).await, (200, "ok\n".into()));
        // A second call does not start it again.
        let (_, body) = request(addr, &post("Authorization: Bearer s3cret\r\n")).await;
        assert!(body.contains("\"started\":false"), "{body}");
        shutdown.cancel();

        // No token configured: the call does not exist.
        let drain = crate::drain::Drain::new(std::time::Duration::from_secs(30));
        let shutdown = CancellationToken::new();
        let addr = serve_drainable(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::default()),
            shutdown.clone(),
            drain.clone(),
            None,
        )
        .await
        .unwrap();
        let (code, body) = request(addr, &post("Authorization: Bearer \r\n")).await;
        assert_eq!(code, 404, "{body}");
        assert!(body.contains("\"not_found\""), "{body}");
        assert!(!drain.is_draining());
        shutdown.cancel();

        // The token is asked at every call: a rotated one is in force at once, the old one no
        // longer is, and an empty one counts as none (never "Bearer " with nothing after it).
        let token = Arc::new(std::sync::Mutex::new(Some("old-token".to_string())));
        let t = token.clone();
        let drain = crate::drain::Drain::new(std::time::Duration::from_secs(30));
        let shutdown = CancellationToken::new();
        let addr = serve_drainable_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Registry::default()),
            shutdown.clone(),
            drain.clone(),
            Arc::new(move || t.lock().unwrap().clone()),
        )
        .await
        .unwrap();
        *token.lock().unwrap() = Some("new-token".into());
        let (code, body) = request(addr, &post("Authorization: Bearer old-token\r\n")).await;
        assert_eq!(code, 401, "{body}");
        *token.lock().unwrap() = Some(String::new());
        let (code, body) = request(addr, &post("Authorization: Bearer \r\n")).await;
        assert_eq!(code, 404, "{body}");
        assert!(!drain.is_draining());
        *token.lock().unwrap() = Some("new-token".into());
        let (code, body) = request(addr, &post("Authorization: Bearer new-token\r\n")).await;
        assert_eq!(code, 202, "{body}");
        assert!(drain.is_draining());
        shutdown.cancel();
    }
}
