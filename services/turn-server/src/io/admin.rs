//! The admin HTTP API (`admin_listen`, off by default; `Authorization: Bearer <admin_token>`;
//! JSON in and out; errors as `{"error":{"code","message"}}` with their HTTP status). The
//! routes and shapes are in `services/turn-server/admin-openapi.json`.
//!
//! Allocations live on the worker that owns their client 5-tuple, with no lock, so every
//! question goes to each worker over a bounded command channel ([`Workers`]) and is answered
//! from inside its event loop; a worker that is too busy to take a command within
//! [`COMMAND_TIMEOUT`] makes the request fail with 503 rather than hang.

use crate::metrics::AdminMetrics;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use turn_proto::core::{AllocationFilter, AllocationInfo, BandwidthCaps, CoreConfig, Shared};

/// Commands a worker's queue holds; beyond, the request gets 503.
pub const COMMAND_QUEUE: usize = 16;
/// How long a request waits for every worker's answer.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most allocations one listing returns (`limit` may ask for fewer).
pub const MAX_LIST: usize = 10_000;
/// Allocations listed when `limit` is not given.
pub const DEFAULT_LIST: usize = 1_000;

/// Which allocations to end.
#[derive(Debug, Clone)]
pub enum EndTarget {
    /// The allocation with this id.
    Id(u64),
    /// Every allocation of this user.
    User(String),
}

/// A question for one worker, answered on `reply`.
#[derive(Debug)]
pub enum WorkerCommand {
    /// The allocations matching `filter`, at most `limit`.
    List {
        /// Which allocations.
        filter: AllocationFilter,
        /// At most this many.
        limit: usize,
        /// The answer.
        reply: oneshot::Sender<Vec<AllocationInfo>>,
    },
    /// End allocations; answers with their final records.
    End {
        /// Which ones.
        target: EndTarget,
        /// The answer.
        reply: oneshot::Sender<Vec<AllocationInfo>>,
    },
    /// Put a new core configuration in force (reload).
    Reconfigure {
        /// The configuration.
        config: Arc<CoreConfig>,
        /// Done.
        reply: oneshot::Sender<()>,
    },
    /// The worker's load.
    Load {
        /// The answer.
        reply: oneshot::Sender<WorkerLoad>,
    },
    /// Give allocation `id` its own bandwidth cap (`None`: back to the server-wide cap);
    /// answers with the allocation when it lives on this worker.
    AllocationBandwidth {
        /// The allocation id.
        id: u64,
        /// Bits per second each way.
        bps: Option<u64>,
        /// The answer.
        reply: oneshot::Sender<Option<AllocationInfo>>,
    },
}

/// One worker's load (`GET /v1/workers`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerLoad {
    /// The worker's index.
    pub worker: usize,
    /// Allocations it owns.
    pub allocations: usize,
    /// Open relay sockets.
    pub relay_sockets: usize,
    /// Open TCP/TLS client connections.
    pub stream_connections: usize,
    /// Packets relayed client -> peer since start.
    pub to_peer_packets: u64,
    /// Payload bytes relayed client -> peer since start.
    pub to_peer_bytes: u64,
    /// Packets relayed peer -> client since start.
    pub from_peer_packets: u64,
    /// Payload bytes relayed peer -> client since start.
    pub from_peer_bytes: u64,
}

/// The command queues of every worker.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    queues: Vec<mpsc::Sender<WorkerCommand>>,
}

/// Why a worker did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerBusy;

impl Workers {
    /// One queue per worker; the receivers go to the workers, in order.
    pub fn new(workers: usize) -> (Self, Vec<mpsc::Receiver<WorkerCommand>>) {
        let (queues, receivers) = (0..workers).map(|_| mpsc::channel(COMMAND_QUEUE)).unzip();
        (Self { queues }, receivers)
    }

    async fn ask<T>(
        &self,
        make: impl Fn(oneshot::Sender<T>) -> WorkerCommand,
    ) -> Result<Vec<T>, WorkerBusy> {
        let mut answers = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            let (tx, rx) = oneshot::channel();
            q.try_send(make(tx)).map_err(|_| WorkerBusy)?;
            answers.push(rx);
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                Ok(Ok(v)) => out.push(v),
                _ => return Err(WorkerBusy),
            }
        }
        Ok(out)
    }

    /// The allocations of every worker matching `filter`, at most `limit`, in id order.
    pub async fn list(
        &self,
        filter: &AllocationFilter,
        limit: usize,
    ) -> Result<Vec<AllocationInfo>, WorkerBusy> {
        let parts = self
            .ask(|reply| WorkerCommand::List {
                filter: filter.clone(),
                limit,
                reply,
            })
            .await?;
        let mut all: Vec<AllocationInfo> = parts.into_iter().flatten().collect();
        all.sort_by_key(|a| a.id);
        all.truncate(limit);
        Ok(all)
    }

    /// Ends the allocations `target` names on every worker; their final records.
    pub async fn end(&self, target: EndTarget) -> Result<Vec<AllocationInfo>, WorkerBusy> {
        let parts = self
            .ask(|reply| WorkerCommand::End {
                target: target.clone(),
                reply,
            })
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// Puts `config` in force on every worker. Unlike the questions, a reload waits for room
    /// in a full queue (up to [`COMMAND_TIMEOUT`]) rather than failing at once.
    pub async fn reconfigure(&self, config: Arc<CoreConfig>) -> Result<(), WorkerBusy> {
        let mut answers = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            let (tx, rx) = oneshot::channel();
            let cmd = WorkerCommand::Reconfigure {
                config: config.clone(),
                reply: tx,
            };
            match tokio::time::timeout(COMMAND_TIMEOUT, q.send(cmd)).await {
                Ok(Ok(())) => answers.push(rx),
                _ => return Err(WorkerBusy),
            }
        }
        for rx in answers {
            match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
                Ok(Ok(())) => {}
                _ => return Err(WorkerBusy),
            }
        }
        Ok(())
    }

    /// Every worker's load.
    pub async fn load(&self) -> Result<Vec<WorkerLoad>, WorkerBusy> {
        self.ask(|reply| WorkerCommand::Load { reply }).await
    }

    /// Gives allocation `id` its own bandwidth cap (`None`: the server-wide one); the
    /// allocation as it is now, or `None` when no worker has it.
    pub async fn set_allocation_bandwidth(
        &self,
        id: u64,
        bps: Option<u64>,
    ) -> Result<Option<AllocationInfo>, WorkerBusy> {
        let parts = self
            .ask(|reply| WorkerCommand::AllocationBandwidth { id, bps, reply })
            .await?;
        Ok(parts.into_iter().flatten().next())
    }
}

/// What the admin API works on.
#[derive(Clone)]
pub struct AdminState {
    /// The workers' command queues.
    pub workers: Workers,
    /// Cross-worker state (draining, totals).
    pub shared: Arc<Shared>,
    /// The token and the shown configuration, replaced by a reload.
    pub live: Arc<std::sync::RwLock<AdminLive>>,
    /// Request counters.
    pub metrics: AdminMetrics,
    /// The fleet state in Redis (None: `/v1/fleet*` answer 503 `fleet_unavailable`).
    pub fleet: Option<AdminFleet>,
    /// The node's drain (`POST /v1/drain?exit=true` starts it; it cannot be stopped).
    pub drain: turnkey_runtime::drain::Drain,
}

/// What the fleet routes read.
#[derive(Clone, Debug)]
pub struct AdminFleet {
    /// The fleet's Redis.
    pub redis: Arc<crate::io::fleet::FleetRedis>,
    /// This node's name.
    pub node: String,
}

/// What a reload changes in the admin API.
#[derive(Debug, Clone)]
pub struct AdminLive {
    /// `GET /v1/config`: the effective configuration, secrets redacted.
    pub config: Arc<Value>,
    /// The bearer token.
    pub token: Arc<str>,
}

impl AdminState {
    fn live(&self) -> AdminLive {
        match self.live.read() {
            Ok(l) => l.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// An API error: its status, a stable code and a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    fn busy() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "worker_busy",
            "a worker did not answer in time; retry",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

impl From<WorkerBusy> for ApiError {
    fn from(_: WorkerBusy) -> Self {
        Self::busy()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// One allocation as JSON (the `Allocation` schema).
pub fn allocation_json(a: &AllocationInfo) -> Value {
    json!({
        "id": a.id.to_string(),
        "client": a.tuple.client.to_string(),
        "server": a.tuple.server.to_string(),
        "transport": a.tuple.transport.as_str(),
        "relayed": a.relayed.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "relay_transport": a.relay_transport.as_str(),
        "user": a.user,
        "started": a.started_unix_secs,
        "age_secs": a.age_secs,
        "lifetime_left_secs": a.lifetime_left_secs,
        "permissions": a.permissions.iter().map(|p| json!({
            "peer": p.peer.to_string(),
            "expires_in_secs": p.expires_in_secs,
        })).collect::<Vec<_>>(),
        "channels": a.channels.iter().map(|c| json!({
            "number": c.number,
            "peer": c.peer.to_string(),
            "expires_in_secs": c.expires_in_secs,
        })).collect::<Vec<_>>(),
        "to_peer": {"packets": a.to_peer.packets, "bytes": a.to_peer.bytes},
        "from_peer": {"packets": a.from_peer.packets, "bytes": a.from_peer.bytes},
        "bandwidth": {"bps": a.bandwidth_bps, "own": a.bandwidth_override},
        "moves": a.moves,
    })
}

/// The admin router: the routes of admin-openapi.json behind the bearer token.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route(
            "/v1/allocations",
            get(list_allocations).delete(end_user_allocations),
        )
        .route(
            "/v1/allocations/{id}",
            get(get_allocation).delete(end_allocation),
        )
        .route("/v1/allocations/{id}/bandwidth", put(allocation_bandwidth))
        .route("/v1/bandwidth", get(bandwidth).put(set_bandwidth))
        .route(
            "/v1/drain",
            get(drain_status).post(drain_start).delete(drain_stop),
        )
        .route("/v1/config", get(config))
        .route("/v1/workers", get(workers))
        .route("/v1/fleet", get(fleet_nodes))
        .route("/v1/fleet/allocations", get(fleet_allocations))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// Checks the bearer token (constant time) before any route; counts every answer by status.
async fn authorize(
    State(s): State<AdminState>,
    headers: HeaderMap,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let token = s.live().token;
    // No token (a reload removed it): nothing is accepted, "Bearer " with nothing after it
    // included.
    let ok = !token.is_empty() && bool::from(presented.as_bytes().ct_eq(token.as_bytes()));
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let res = if ok {
        next.run(req).await
    } else {
        let mut r = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization: Bearer <admin token> is missing or wrong",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        r
    };
    s.metrics.request(res.status().as_u16());
    tracing::debug!(%method, %path, status = res.status().as_u16(), "admin request");
    res
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// `GET /v1/allocations` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    user: Option<String>,
    /// An IP (any port) or IP:port.
    client: Option<String>,
    limit: Option<usize>,
}

fn query<T: serde::de::DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))
}

fn client_filter(client: Option<&str>) -> Result<AllocationFilter, ApiError> {
    let mut f = AllocationFilter::default();
    match client {
        None => {}
        Some(c) => {
            if let Ok(a) = c.parse::<SocketAddr>() {
                f.client = Some(a);
            } else if let Ok(ip) = c.parse::<IpAddr>() {
                f.client_ip = Some(ip);
            } else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_client",
                    format!("client {c:?} is neither an IP address nor IP:port"),
                ));
            }
        }
    }
    Ok(f)
}

async fn list_allocations(
    State(s): State<AdminState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let limit = match q.limit {
        None => DEFAULT_LIST,
        Some(n) if (1..=MAX_LIST).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_limit",
                format!("limit {n} is not in 1..={MAX_LIST}"),
            ))
        }
    };
    let mut filter = client_filter(q.client.as_deref())?;
    filter.user = q.user;
    // One more than asked, to say whether the list was cut.
    let mut list = s.workers.list(&filter, limit + 1).await?;
    let truncated = list.len() > limit;
    list.truncate(limit);
    Ok(Json(json!({
        "allocations": list.iter().map(allocation_json).collect::<Vec<_>>(),
        "truncated": truncated,
    })))
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_id",
            format!("allocation id {id:?} is not a positive integer"),
        )
    })
}

fn no_such_allocation(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_allocation",
        format!("no live allocation {id}"),
    )
}

async fn get_allocation(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let filter = AllocationFilter {
        id: Some(id),
        ..AllocationFilter::default()
    };
    let found = s.workers.list(&filter, 1).await?;
    let a = found.first().ok_or_else(|| no_such_allocation(id))?;
    Ok(Json(allocation_json(a)))
}

async fn end_allocation(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let id = parse_id(&id)?;
    let ended = s.workers.end(EndTarget::Id(id)).await?;
    if ended.is_empty() {
        return Err(no_such_allocation(id));
    }
    Ok(Json(json!({
        "ended": ended.iter().map(allocation_json).collect::<Vec<_>>(),
    })))
}

/// `DELETE /v1/allocations` query: the user is required (ending everything is `drain`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndQuery {
    user: Option<String>,
}

async fn end_user_allocations(
    State(s): State<AdminState>,
    q: Result<Query<EndQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let user = query(q)?.user.filter(|u| !u.is_empty()).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "user_required",
            "DELETE /v1/allocations needs ?user=NAME",
        )
    })?;
    let ended = s.workers.end(EndTarget::User(user)).await?;
    Ok(Json(json!({
        "ended": ended.iter().map(allocation_json).collect::<Vec<_>>(),
    })))
}

fn drain_json(s: &AdminState) -> Json<Value> {
    let remaining = s
        .drain
        .remaining(std::time::Instant::now())
        .map(|d| d.as_secs());
    Json(json!({
        "draining": s.shared.is_draining(),
        "allocations": s.shared.total_allocations(),
        "exiting": remaining.is_some(),
        "deadline_secs": s.drain.deadline().as_secs(),
        "remaining_secs": remaining,
    }))
}

async fn drain_status(State(s): State<AdminState>) -> Json<Value> {
    drain_json(&s)
}

/// `POST /v1/drain` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainQuery {
    /// Drain to exit (as SIGTERM does) instead of only refusing new allocations.
    exit: Option<bool>,
}

async fn drain_start(
    State(s): State<AdminState>,
    q: Result<Query<DrainQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    if query(q)?.exit == Some(true) {
        // The drain's start hook refuses new allocations before this returns.
        s.drain.start("admin");
        return Ok(drain_json(&s));
    }
    if !s.shared.is_draining() {
        tracing::info!("draining started through the admin API: new allocations are refused or sent to an alternate server");
    }
    s.shared.start_draining();
    s.metrics.draining(true);
    Ok(drain_json(&s))
}

fn exiting() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "exiting",
        "the server drains to exit (SIGTERM, POST /admin/drain or POST /v1/drain?exit=true); that cannot be stopped",
    )
}

async fn drain_stop(State(s): State<AdminState>) -> ApiResult {
    if s.drain.since().is_some() {
        return Err(exiting());
    }
    if s.shared.is_draining() {
        tracing::info!("draining stopped through the admin API");
    }
    s.shared.stop_draining();
    s.metrics.draining(false);
    // A drain to exit that started meanwhile keeps refusing.
    if s.drain.since().is_some() {
        s.shared.start_draining();
        s.metrics.draining(true);
        return Err(exiting());
    }
    Ok(drain_json(&s))
}

fn bandwidth_json(c: &BandwidthCaps) -> Json<Value> {
    Json(json!({
        "allocation_bps": c.allocation_bps,
        "user_bps": c.user_bps,
        "total_bps": c.total_bps,
        "burst_ms": c.burst_ms,
    }))
}

/// A JSON object body, or 400 `bad_body` naming what is wrong (not JSON, not an object, a
/// wrong type, an unknown field). Only an object: serde would take `[1]` for a struct too.
fn body<T: serde::de::DeserializeOwned>(
    b: Result<Json<Value>, JsonRejection>,
) -> Result<T, ApiError> {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_body", m);
    let Json(v) = b.map_err(|e| bad(e.body_text()))?;
    if !v.is_object() {
        return Err(bad("the body must be a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

async fn bandwidth(State(s): State<AdminState>) -> Json<Value> {
    bandwidth_json(&s.shared.bandwidth_caps())
}

/// `PUT /v1/bandwidth` body: any subset of the caps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BandwidthBody {
    allocation_bps: Option<u64>,
    user_bps: Option<u64>,
    total_bps: Option<u64>,
    burst_ms: Option<u64>,
}

async fn set_bandwidth(
    State(s): State<AdminState>,
    b: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let b: BandwidthBody = body(b)?;
    let old = s.shared.bandwidth_caps();
    let caps = BandwidthCaps {
        allocation_bps: b.allocation_bps.unwrap_or(old.allocation_bps),
        user_bps: b.user_bps.unwrap_or(old.user_bps),
        total_bps: b.total_bps.unwrap_or(old.total_bps),
        burst_ms: b.burst_ms.unwrap_or(old.burst_ms),
    };
    s.shared
        .set_bandwidth_caps(caps, std::time::Instant::now())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_bandwidth", e.to_string()))?;
    if caps != old {
        tracing::info!(
            allocation_bps = caps.allocation_bps,
            user_bps = caps.user_bps,
            total_bps = caps.total_bps,
            burst_ms = caps.burst_ms,
            "bandwidth caps changed through the admin API"
        );
    }
    s.metrics.bandwidth_caps(&caps);
    Ok(bandwidth_json(&caps))
}

/// `PUT /v1/allocations/{id}/bandwidth` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocationBandwidthBody {
    /// Bits per second each way; 0: back to the server-wide cap.
    bps: u64,
}

async fn allocation_bandwidth(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    b: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let id = parse_id(&id)?;
    let b: AllocationBandwidthBody = body(b)?;
    let bps = b.bps;
    let own = (bps > 0).then_some(bps);
    let a = s
        .workers
        .set_allocation_bandwidth(id, own)
        .await?
        .ok_or_else(|| no_such_allocation(id))?;
    tracing::info!(
        id,
        bps,
        "allocation bandwidth cap set through the admin API"
    );
    Ok(Json(allocation_json(&a)))
}

async fn config(State(s): State<AdminState>) -> Json<Value> {
    Json((*s.live().config).clone())
}

async fn workers(State(s): State<AdminState>) -> ApiResult {
    let load = s.workers.load().await?;
    Ok(Json(json!({ "workers": load })))
}

fn fleet_of(s: &AdminState) -> Result<&AdminFleet, ApiError> {
    s.fleet.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "fleet_unavailable",
            "fleet state is off: start the server with --redis or --redis-sentinel",
        )
    })
}

fn fleet_error(s: &AdminState, e: crate::io::fleet::FleetError) -> ApiError {
    s.metrics.fleet.error("read");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "fleet_unavailable",
        format!("the fleet Redis did not answer: {e}"),
    )
}

/// `GET /v1/fleet`: every live node's summary header.
async fn fleet_nodes(State(s): State<AdminState>) -> ApiResult {
    let fleet = fleet_of(&s)?;
    let nodes = crate::io::fleet::fleet_nodes(&fleet.redis)
        .await
        .map_err(|e| fleet_error(&s, e))?;
    Ok(Json(json!({"node": fleet.node, "nodes": nodes})))
}

/// `GET /v1/fleet/allocations` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetQuery {
    user: Option<String>,
    node: Option<String>,
}

/// `GET /v1/fleet/allocations`: the allocations of every live node's summary.
async fn fleet_allocations(
    State(s): State<AdminState>,
    q: Result<Query<FleetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let q = query(q)?;
    let fleet = fleet_of(&s)?;
    let (list, truncated) = crate::io::fleet::fleet_allocations(
        &fleet.redis,
        q.node.as_deref().filter(|n| !n.is_empty()),
        q.user.as_deref().filter(|u| !u.is_empty()),
    )
    .await
    .map_err(|e| fleet_error(&s, e))?;
    Ok(Json(json!({"allocations": list, "truncated": truncated})))
}

/// Binds the admin listener and serves until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(state);
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(local)
}
