//! The session server: the HTTP API of `PROTOCOL.md` (rooms, joins, ICE servers, TURN REST
//! credentials per draft-uberti-behave-turn-rest-00 §2), the demo page and the JavaScript
//! client. Errors are `{"error":{"code","message"}}` with the HTTP status.

use crate::auth::{mint_token, ApiKey, Claims, Grants};
use crate::io::node::{unix_now, Envelope, Node};
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use registry::{least_loaded, NodeInfo, RoomMode, RoomRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use signaling_proto::msg::{IceServer, RoomInfo};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The demo page (`services/signaling/web/index.html`).
pub const INDEX_HTML: &str = include_str!("../../web/index.html");
/// The JavaScript client's public entry (`services/signaling/web/client.js`): it re-exports the API
/// from the modules under `services/signaling/web/client/` (see [`CLIENT_MODULES`]).
pub const CLIENT_JS: &str = include_str!("../../web/client.js");
/// Every ES module of the JavaScript client, with the path it is served at: `/client.js` and
/// the modules under `/client/` that it imports (no build step: the browser loads each file as
/// it is). A module missing here is a 404 and the client does not load
/// (`tests/web_client.rs` checks every import).
pub const CLIENT_MODULES: &[(&str, &str)] = &[
    ("/client.js", CLIENT_JS),
    ("/client/ice.js", include_str!("../../web/client/ice.js")),
    ("/client/join.js", include_str!("../../web/client/join.js")),
    ("/client/mesh.js", include_str!("../../web/client/mesh.js")),
    (
        "/client/peer-link.js",
        include_str!("../../web/client/peer-link.js"),
    ),
    ("/client/room.js", include_str!("../../web/client/room.js")),
    (
        "/client/session.js",
        include_str!("../../web/client/session.js"),
    ),
    ("/client/sfu.js", include_str!("../../web/client/sfu.js")),
    (
        "/client/simulcast.js",
        include_str!("../../web/client/simulcast.js"),
    ),
    ("/client/util.js", include_str!("../../web/client/util.js")),
];
/// The "Test my TURN server" page (`services/signaling/web/turn-test.html`): gathers ICE candidates per
/// STUN/TURN URL and gives a verdict per URL.
pub const TURN_TEST_HTML: &str = include_str!("../../web/turn-test.html");

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", m)
    }
    fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", m)
    }
    fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }
}

impl From<StoreError> for ApiError {
    fn from(_: StoreError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "store unavailable, try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"turnkey\""),
            );
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Who is calling.
enum Caller {
    /// An API key (HTTP Basic).
    ApiKey(ApiKey),
    /// An access token (Bearer).
    Token(Claims),
}

fn authenticate(node: &Node, headers: &HeaderMap, allow_bearer: bool) -> ApiResult<Caller> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::unauthorized("missing Authorization"));
    };
    if let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    {
        if !allow_bearer {
            return Err(ApiError::unauthorized("this call needs an API key"));
        }
        return node
            .keys
            .verify_token(token.trim(), None, unix_now())
            .map(Caller::Token)
            .map_err(|e| ApiError::unauthorized(e.to_string()));
    }
    node.keys
        .check_basic(value)
        .map(|k| Caller::ApiKey(k.clone()))
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// 400 `bad_request` naming the rule (counted) unless `name` follows the room name rule;
/// every route that takes a room name calls this before the name reaches the store.
fn check_room_name(node: &Node, name: &str) -> ApiResult<()> {
    signaling_proto::room::check_room_name(name).map_err(|e| {
        node.metrics.refuse("room_name");
        ApiError::bad_request(e.to_string())
    })
}

/// The capacity of a room created with `capacity` (if given) in `mode`: by default
/// `default_capacity` for mesh rooms and `default_sfu_capacity` for SFU rooms (an SFU carries
/// more than a mesh of browsers).
fn check_capacity(node: &Node, capacity: Option<u32>, mode: Option<RoomMode>) -> ApiResult<u32> {
    let default = match mode {
        Some(RoomMode::Sfu) => node.cfg.default_sfu_capacity,
        _ => node.cfg.default_capacity,
    };
    let c = capacity.unwrap_or(default);
    if c == 0 || c > node.cfg.max_capacity {
        return Err(ApiError::bad_request(format!(
            "capacity must be 1..={}",
            node.cfg.max_capacity
        )));
    }
    Ok(c)
}

fn pick_node(nodes: &[NodeInfo]) -> ApiResult<&NodeInfo> {
    least_loaded(nodes).ok_or_else(|| ApiError::unavailable("no live channel node"))
}

/// Creates room `name` on the least-loaded of `nodes` (atomic in the store: when it already
/// exists, the existing room comes back with `false`).
async fn create_on_least_loaded(
    node: &Node,
    nodes: &[NodeInfo],
    name: String,
    mode: RoomMode,
    capacity: u32,
) -> Result<(RoomRecord, bool), ApiError> {
    let host = pick_node(nodes)?;
    let rec = RoomRecord {
        name,
        mode,
        capacity,
        node: host.id.clone(),
        created_at: unix_now(),
        sfu: None,
    };
    Ok(node
        .timed("create_room", node.store.create_room(&rec))
        .await?)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomView {
    name: String,
    mode: RoomMode,
    capacity: u32,
    node: String,
    /// The SFU node of an `sfu` room once chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    sfu: Option<String>,
    created_at: u64,
    age_secs: u64,
    participants: Vec<ParticipantView>,
}

/// One room of `GET /v1/rooms`: the room object with a participant count.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomSummary {
    name: String,
    mode: RoomMode,
    capacity: u32,
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sfu: Option<String>,
    created_at: u64,
    age_secs: u64,
    participants: usize,
}

#[derive(Deserialize)]
struct ListRooms {
    after: Option<String>,
    limit: Option<usize>,
}

/// Rooms a page of `GET /v1/rooms` holds at most.
const LIST_ROOMS_MAX: usize = 1000;

/// `GET /v1/rooms?after=NAME&limit=N`: rooms by name (default 100, at most 1000 a page), with
/// `next` set to the name to pass as `after` for the next page, or null on the last.
async fn list_rooms(
    State(node): State<Arc<Node>>,
    Query(q): Query<ListRooms>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authenticate(&node, &headers, false)?;
    if let Some(a) = &q.after {
        check_room_name(&node, a)?;
    }
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > LIST_ROOMS_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={LIST_ROOMS_MAX}"
        )));
    }
    // One more than the page tells whether another page follows.
    let mut recs = node
        .timed(
            "list_rooms",
            node.store.list_rooms(q.after.as_deref(), limit + 1),
        )
        .await?;
    let more = recs.len() > limit;
    recs.truncate(limit);
    let now = unix_now();
    let mut rooms = Vec::with_capacity(recs.len());
    for rec in recs {
        let n = node
            .timed("participants", node.store.participants(&rec.name))
            .await?
            .len();
        rooms.push(RoomSummary {
            age_secs: now.saturating_sub(rec.created_at),
            name: rec.name,
            mode: rec.mode,
            capacity: rec.capacity,
            node: rec.node,
            sfu: rec.sfu,
            created_at: rec.created_at,
            participants: n,
        });
    }
    let next = if more {
        rooms.last().map(|r| r.name.clone())
    } else {
        None
    };
    Ok(Json(json!({ "rooms": rooms, "next": next })).into_response())
}

#[derive(Serialize)]
struct ParticipantView {
    id: String,
    identity: String,
    name: String,
    node: String,
}

async fn room_view(node: &Node, rec: RoomRecord) -> ApiResult<RoomView> {
    let parts = node
        .timed("participants", node.store.participants(&rec.name))
        .await?;
    Ok(RoomView {
        age_secs: unix_now().saturating_sub(rec.created_at),
        name: rec.name,
        mode: rec.mode,
        capacity: rec.capacity,
        node: rec.node,
        sfu: rec.sfu,
        created_at: rec.created_at,
        participants: parts
            .into_iter()
            .map(|p| ParticipantView {
                id: p.id,
                identity: p.identity,
                name: p.name,
                node: p.node,
            })
            .collect(),
    })
}

#[derive(Deserialize, Default)]
struct CreateRoom {
    name: Option<String>,
    mode: Option<RoomMode>,
    capacity: Option<u32>,
}

/// `POST /v1/rooms`.
async fn create_room(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    authenticate(&node, &headers, false)?;
    let req: CreateRoom = parse_body(&body)?;
    let name = req
        .name
        .ok_or_else(|| ApiError::bad_request("missing field `name`"))?;
    check_room_name(&node, &name)?;
    let capacity = check_capacity(&node, req.capacity, req.mode)?;
    let nodes = node.live_nodes().await?;
    let (rec, created) = create_on_least_loaded(
        &node,
        &nodes,
        name,
        req.mode.unwrap_or(RoomMode::Mesh),
        capacity,
    )
    .await?;
    if !created {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("room {} exists", rec.name),
        ));
    }
    tracing::info!(room = %rec.name, node = %rec.node, "room created");
    Ok((StatusCode::CREATED, Json(room_view(&node, rec).await?)).into_response())
}

/// `GET /v1/rooms/{room}`.
async fn get_room(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authenticate(&node, &headers, false)?;
    check_room_name(&node, &room)?;
    let rec = node
        .timed("get_room", node.store.get_room(&room))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no room {room}")))?;
    Ok(Json(room_view(&node, rec).await?).into_response())
}

/// `DELETE /v1/rooms/{room}`: participants get `room-closed` and close 4010, on every node.
async fn delete_room(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    authenticate(&node, &headers, false)?;
    check_room_name(&node, &room)?;
    let parts = node
        .timed("participants", node.store.participants(&room))
        .await?;
    if !node
        .timed("delete_room", node.store.delete_room(&room))
        .await?
    {
        return Err(ApiError::not_found(format!("no room {room}")));
    }
    let reason = "deleted".to_string();
    node.close_room_local(&room, &reason);
    let others: BTreeSet<&str> = parts
        .iter()
        .map(|p| p.node.as_str())
        .filter(|n| *n != node.id())
        .collect();
    for n in others {
        let env = Envelope::CloseRoom {
            room: room.clone(),
            reason: reason.clone(),
        };
        node.publish(n, &env).await;
    }
    tracing::info!(%room, "room deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
struct JoinBody {
    identity: Option<String>,
    name: Option<String>,
    mode: Option<RoomMode>,
    capacity: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JoinAnswer {
    url: String,
    token: String,
    ice_servers: Vec<IceServer>,
    ice_servers_ttl: u64,
    room: RoomInfo,
}

/// `POST /v1/rooms/{room}/join`: places the room on the least-loaded live node (creating it
/// when the caller may), moves it off a dead node, and answers with the node's WebSocket URL,
/// an access token and ICE servers.
async fn join_room(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let caller = authenticate(&node, &headers, true)?;
    check_room_name(&node, &room)?;
    let req: JoinBody = parse_body(&body)?;
    let (identity, may_create) = match &caller {
        Caller::ApiKey(_) => {
            let id = req
                .identity
                .clone()
                .filter(|i| !i.is_empty() && i.len() <= 256)
                .ok_or_else(|| ApiError::bad_request("missing field `identity`"))?;
            (id, true)
        }
        Caller::Token(c) => {
            if c.room != room {
                return Err(ApiError::unauthorized("token is for another room"));
            }
            if !c.grants.join {
                return Err(ApiError::forbidden("the token does not grant join"));
            }
            (c.sub.clone(), c.grants.create)
        }
    };
    let capacity = check_capacity(&node, req.capacity, req.mode)?;
    let nodes = node.live_nodes().await?;
    let existing = node.timed("get_room", node.store.get_room(&room)).await?;
    let rec = match existing {
        Some(rec) if nodes.iter().any(|n| n.id == rec.node) => rec,
        Some(rec) => {
            // The hosting node is gone: move the room to the least-loaded live node.
            let target = pick_node(&nodes)?;
            let moved = node
                .timed(
                    "move_room",
                    node.store.move_room(&room, &rec.node, &target.id),
                )
                .await?
                .ok_or_else(|| ApiError::not_found(format!("no room {room}")))?;
            tracing::info!(%room, from = %rec.node, to = %moved.node, "room moved off a dead node");
            moved
        }
        None if may_create => {
            let (rec, created) = create_on_least_loaded(
                &node,
                &nodes,
                room.clone(),
                req.mode.unwrap_or(RoomMode::Mesh),
                capacity,
            )
            .await?;
            if created {
                tracing::info!(room = %rec.name, node = %rec.node, "room created on first join");
            }
            rec
        }
        None => {
            return Err(ApiError::not_found(format!(
                "no room {room} and the token does not grant create"
            )))
        }
    };
    let url = nodes
        .iter()
        .find(|n| n.id == rec.node)
        .map(|n| n.ws_url.clone())
        .ok_or_else(|| ApiError::unavailable("the room's node is not live"))?;
    let now = unix_now();
    let (token, token_exp) = match &caller {
        Caller::ApiKey(key) => (
            mint_token(
                key,
                &room,
                &identity,
                req.name.as_deref(),
                Grants {
                    join: true,
                    create: false,
                },
                node.cfg.token_ttl_secs,
                now,
            ),
            now.saturating_add(node.cfg.token_ttl_secs),
        ),
        Caller::Token(c) => (
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.get(7..))
                .unwrap_or_default()
                .trim()
                .to_string(),
            c.exp,
        ),
    };
    // Per identity (the token's `sub`), ending with the token plus the grace.
    let (ice_servers, ice_servers_ttl) = node.ice_servers(&identity, Some(token_exp), now);
    Ok(Json(JoinAnswer {
        url,
        token,
        ice_servers,
        ice_servers_ttl,
        room: RoomInfo {
            name: rec.name,
            mode: rec.mode,
            capacity: rec.capacity,
        },
    })
    .into_response())
}

/// `POST /v1/ice-servers`: with a bearer token, credentials for the token's identity that end
/// with the token (plus `turn_credential_grace_secs`); with an API key, for the key's name.
async fn ice_servers(State(node): State<Arc<Node>>, headers: HeaderMap) -> ApiResult<Response> {
    let (user, exp) = match authenticate(&node, &headers, true)? {
        Caller::ApiKey(k) => (k.key, None),
        Caller::Token(c) => (c.sub, Some(c.exp)),
    };
    let (servers, ttl) = node.ice_servers(&user, exp, unix_now());
    Ok(Json(json!({"iceServers": servers, "ttl": ttl})).into_response())
}

/// `GET /v1/turn/credentials?service=turn&username=U&key=K` (draft-uberti-behave-turn-rest-00
/// §2.1 request, §2.2 response; `api=` is accepted for `key=`).
async fn turn_credentials(
    State(node): State<Arc<Node>>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let given = q.get("key").or_else(|| q.get("api"));
    let Some(given) = given else {
        return Err(ApiError::unauthorized("missing key"));
    };
    let mut ok = subtle::Choice::from(0u8);
    for k in &node.cfg.turn_rest_keys {
        ok |= k.as_bytes().ct_eq(given.as_bytes());
    }
    if !bool::from(ok) {
        return Err(ApiError::unauthorized("unknown key"));
    }
    match q.get("service").map(String::as_str) {
        Some("turn") => {}
        _ => return Err(ApiError::bad_request("service must be `turn`")),
    }
    let user = q.get("username").map_or("", String::as_str);
    if user.len() > 256 || user.contains(':') {
        return Err(ApiError::bad_request(
            "username must be at most 256 characters without `:`",
        ));
    }
    let Some(secret) = node.cfg.turn_secrets.first() else {
        return Err(ApiError::unavailable("no TURN secret configured"));
    };
    let c = stun_proto::credential::mint_rest_credential(
        secret,
        user,
        node.cfg.turn_ttl_secs,
        unix_now(),
    );
    node.metrics.turn_credentials.inc();
    Ok(Json(json!({
        "username": c.username,
        "password": c.password,
        "ttl": c.ttl,
        "uris": node.cfg.turn_uris,
    }))
    .into_response())
}

async fn index() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
        .into_response()
}

async fn turn_test() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        TURN_TEST_HTML,
    )
        .into_response()
}

/// One module of [`CLIENT_MODULES`].
async fn javascript(source: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        source,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/rooms" => "/v1/rooms",
        "/v1/rooms/{room}" => "/v1/rooms/{room}",
        "/v1/rooms/{room}/join" => "/v1/rooms/{room}/join",
        "/v1/ice-servers" => "/v1/ice-servers",
        "/v1/turn/credentials" => "/v1/turn/credentials",
        "/v1/ws" => "/v1/ws",
        "/healthz" => "/healthz",
        "/" => "/",
        "/turn-test" => "/turn-test",
        // `/client.js` and its modules: one label each (a fixed set).
        _ => CLIENT_MODULES
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("other", |(p, _)| p),
    }
}

fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        101 => "101",
        200 => "200",
        201 => "201",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

async fn count_requests(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |m| route_label(m.as_str()));
    let resp = next.run(req).await;
    node.metrics
        .http_requests
        .get_or_create(&[("route", route), ("status", status_label(resp.status()))])
        .inc();
    resp
}

/// Refuses browser requests from origins the policy does not allow ([`signaling_proto::origin`]):
/// 403 with a JSON error, counted in `signaling_refused_requests_total{reason="origin"}`. This
/// covers the WebSocket handshake (a cross-site page cannot drive a participant's session) and
/// CORS preflights (only allowed origins get an answer).
async fn check_origin(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let allowed = origin.to_str().is_ok_and(|o| node.origins.allows(o, host));
        if !allowed {
            node.metrics.refuse("origin");
            return ApiError::forbidden(
                "cross-origin request from an origin that is not allowed (see allowed_origins)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The authentication challenge of a 401 (RFC 9110 §11.6.1). Programs (curl, SDKs) get `Basic`,
/// which tells them to send the API key. A script in a browser page (its requests carry
/// `Sec-Fetch-Mode`, other than `navigate`) gets `Bearer` instead: on a `Basic` challenge
/// Chromium opens a login prompt and the page's `fetch` never settles, so a wrong key in the
/// demo URL hung the page on "Joining..." instead of showing the error.
async fn challenge(req: Request, next: Next) -> Response {
    let from_script = req
        .headers()
        .get("sec-fetch-mode")
        .is_some_and(|m| m.as_bytes() != b"navigate");
    let mut res = next.run(req).await;
    if from_script && res.status() == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"turnkey\""),
        );
    }
    res
}

/// CORS (tower-http) for the origins listed in `allowed_origins`: preflights are answered and
/// `Access-Control-Allow-Origin` is set only for them. Same-origin pages need none of it.
fn cors(node: &Arc<Node>) -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let policy = node.origins.clone();
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|o| policy.listed(o))
        }))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600))
}

/// The router for this node's role.
pub fn router(node: Arc<Node>) -> axum::Router {
    use axum::routing::{get, post};
    let mut r = axum::Router::new().route("/healthz", get(|| async { "ok\n" }));
    if node.cfg.role.session() {
        for &(path, source) in CLIENT_MODULES {
            r = r.route(path, get(move || javascript(source)));
        }
        r = r
            .route("/", get(index))
            .route("/turn-test", get(turn_test))
            .route("/v1/rooms", post(create_room).get(list_rooms))
            .route("/v1/rooms/{room}", get(get_room).delete(delete_room))
            .route("/v1/rooms/{room}/join", post(join_room))
            .route("/v1/ice-servers", post(ice_servers))
            .route("/v1/turn/credentials", get(turn_credentials));
    }
    if node.cfg.role.channel() {
        r = r.route("/v1/ws", get(crate::io::channel::ws_handler));
    }
    // Outermost first: count every answer, then the origin check, then CORS, then the 401
    // challenge.
    r.fallback(not_found)
        .layer(axum::middleware::from_fn(challenge))
        .layer(cors(&node))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            check_origin,
        ))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            count_requests,
        ))
        .with_state(node)
}
