//! Fleet state in Redis (`redis`, or `redis_sentinel` + `redis_master`): the REST secrets and
//! static users every node reads and watches, and the bounded summary each node publishes so
//! that the admin API of any node can list the allocations of the whole fleet.
//!
//! # Key layout
//!
//! | key | type | written by | value |
//! |---|---|---|---|
//! | `turnkey:turn:auth_secrets` | list | `turn-server fleet set-secrets` | REST secrets, newest (the one that signs) first; at most [`MAX_SECRETS`] |
//! | `turnkey:turn:users` | hash | `fleet set-user` / `fleet remove-user` | user name -> password; at most [`MAX_USERS`] |
//! | `turnkey:turn:version` | string (integer) | every writer, `INCR` in the same `MULTI` as its change | what nodes poll ([`POLL_PERIOD`]) to notice a change |
//! | `turnkey:turn:node:{name}` | string, `EX` [`SUMMARY_TTL`] | each node every [`PUBLISH_PERIOD`] | JSON header: node, updated (Unix seconds), allocations, listed, truncated, draining, workers, instance |
//! | `turnkey:turn:node:{name}:allocations` | string, `EX` [`SUMMARY_TTL`] | the same | JSON array of at most [`MAX_SUMMARY_ALLOCATIONS`] allocations (id, user, client, server, transport, relayed, started, age, packets and bytes each way) |
//! | `turnkey:turn:nodes` | sorted set | the same | node names scored by their last update (Unix ms); members older than [`SUMMARY_TTL`] are removed by every publisher and reader |
//!
//! A node name is `[A-Za-z0-9._-]{1,64}`, so `{name}:allocations` never collides with another
//! node's header. The Redis credentials are *added* to those of the file and flags
//! ([`FleetCredentials::overlay`]): Redis secrets first, then the file's; a user in both takes
//! its Redis password. Reading is bounded: more than [`MAX_SECRETS`] secrets, more than
//! [`MAX_USERS`] users, or an entry longer than [`MAX_VALUE_BYTES`] refuses that update (the
//! credentials in force stay, `turn_fleet_credential_updates_total{result="refused"}`).
//!
//! # Connection
//!
//! One multiplexed connection, opened on first use and dropped on any error or timeout
//! ([`COMMAND_TIMEOUT`]); the next operation opens a new one. With Sentinels, each new
//! connection asks them for the master first, so after a failover the next poll finds the new
//! master. Secrets and passwords are never logged: errors name keys and counts only.

use crate::config::{FleetConfig, TurnConfig};
use crate::io::admin::Workers;
use crate::metrics::FleetMetrics;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, FromRedisValue, IntoConnectionInfo, Pipeline, RedisError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Mutex};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use turn_proto::core::{AllocationFilter, AllocationInfo, Shared};

/// The REST secrets (list, newest first).
pub const AUTH_SECRETS_KEY: &str = "turnkey:turn:auth_secrets";
/// The static users (hash name -> password).
pub const USERS_KEY: &str = "turnkey:turn:users";
/// The change counter writers `INCR`.
pub const VERSION_KEY: &str = "turnkey:turn:version";
/// The sorted set of node names, scored by their last update (Unix ms).
pub const NODES_KEY: &str = "turnkey:turn:nodes";
/// Prefix of a node's summary.
pub const NODE_PREFIX: &str = "turnkey:turn:node:";
/// Most REST secrets read.
pub const MAX_SECRETS: usize = 64;
/// Most users read.
pub const MAX_USERS: usize = 100_000;
/// Longest secret, user name or password, bytes.
pub const MAX_VALUE_BYTES: usize = 512;
/// Most allocations a node publishes.
pub const MAX_SUMMARY_ALLOCATIONS: usize = 1000;
/// Most nodes a fleet listing reads.
pub const MAX_NODES: usize = 256;
/// Most allocations one fleet listing returns.
pub const MAX_FLEET_LIST: usize = 10_000;
/// How often the version is polled.
pub const POLL_PERIOD: Duration = Duration::from_secs(1);
/// How often a node publishes its summary.
pub const PUBLISH_PERIOD: Duration = Duration::from_secs(2);
/// Expiry of a summary (three periods: a node that stops publishing disappears).
pub const SUMMARY_TTL: Duration = Duration::from_secs(6);
/// How long the start waits for Redis before serving with the file's credentials.
pub const STARTUP_WAIT: Duration = Duration::from_secs(3);
/// Time limit of one Redis operation, connecting included.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Over a bound: the update is refused.
    #[error("{what} holds {n} entries, more than {max}")]
    TooMany {
        /// The key.
        what: &'static str,
        /// How many it holds (at least).
        n: usize,
        /// The bound.
        max: usize,
    },
    /// An empty or too long entry, or not UTF-8: the update is refused.
    #[error("{what}: an entry is empty, longer than {MAX_VALUE_BYTES} bytes, or not UTF-8")]
    BadEntry {
        /// The key.
        what: &'static str,
    },
    /// The configuration cannot name a Redis server.
    #[error("fleet configuration: {0}")]
    Config(String),
}

impl FleetError {
    /// True for a refusal of what Redis holds (not a connection problem).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FleetError::TooMany { .. } | FleetError::BadEntry { .. }
        )
    }
}

enum Target {
    Direct(Client),
    Sentinel(Box<Mutex<SentinelClient>>),
}

/// The fleet's Redis: one multiplexed connection, reopened after an error (through the
/// Sentinels when configured).
pub struct FleetRedis {
    target: Target,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl std::fmt::Debug for FleetRedis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetRedis")
    }
}

impl FleetRedis {
    /// From the configuration; nothing is connected yet.
    pub fn new(cfg: &FleetConfig) -> Result<Self, FleetError> {
        let target = if cfg.sentinels.is_empty() {
            let url = cfg
                .redis
                .as_deref()
                .ok_or_else(|| FleetError::Config("neither redis nor redis_sentinel".into()))?;
            Target::Direct(
                Client::open(url)
                    .map_err(|_| FleetError::Config("redis is not a valid Redis URL".into()))?,
            )
        } else {
            let mut node = SentinelNodeConnectionInfo::default();
            if let Some(url) = cfg.redis.as_deref() {
                let info = url
                    .into_connection_info()
                    .map_err(|_| FleetError::Config("redis is not a valid Redis URL".into()))?;
                node = node.set_redis_connection_info(info.redis_settings().clone());
            }
            let sentinels: Vec<String> = cfg
                .sentinels
                .iter()
                .map(|s| format!("redis://{s}/"))
                .collect();
            let client = SentinelClient::build(
                sentinels,
                cfg.master.clone(),
                Some(node),
                SentinelServerType::Master,
            )
            .map_err(|e| FleetError::Config(format!("redis_sentinel: {e}")))?;
            Target::Sentinel(Box::new(Mutex::new(client)))
        };
        Ok(Self {
            target,
            conn: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, FleetError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let connect = async {
            let client = match &self.target {
                Target::Direct(c) => c.clone(),
                Target::Sentinel(s) => s.lock().await.async_get_client().await?,
            };
            client.get_multiplexed_async_connection().await
        };
        let c = timeout(COMMAND_TIMEOUT, connect)
            .await
            .map_err(|_| FleetError::Timeout(COMMAND_TIMEOUT))??;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Runs `pipe`; on any error the connection is dropped, so the next call reconnects (and,
    /// with Sentinels, finds the master again).
    pub async fn run<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, FleetError> {
        let mut c = self.connection().await?;
        let r = match timeout(COMMAND_TIMEOUT, pipe.query_async::<T>(&mut c)).await {
            Ok(r) => r.map_err(FleetError::from),
            Err(_) => Err(FleetError::Timeout(COMMAND_TIMEOUT)),
        };
        if r.is_err() {
            *self.conn.lock().await = None;
        }
        r
    }
}

/// The REST secrets and users read from Redis.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FleetCredentials {
    /// REST secrets, newest first.
    pub auth_secrets: Vec<String>,
    /// User name -> password.
    pub users: HashMap<String, String>,
}

impl std::fmt::Debug for FleetCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FleetCredentials {{ auth_secrets: {} (<redacted>), users: {} (<redacted>) }}",
            self.auth_secrets.len(),
            self.users.len()
        )
    }
}

impl FleetCredentials {
    /// Adds these credentials to `cfg`'s (the file's and flags'): Redis secrets first (the
    /// newest Redis secret signs), then the file's not already listed; users of both, a name in
    /// both with its Redis password.
    pub fn overlay(&self, cfg: &mut TurnConfig) {
        let mut secrets = self.auth_secrets.clone();
        for s in cfg.auth_secrets.drain(..) {
            if !secrets.contains(&s) {
                secrets.push(s);
            }
        }
        cfg.auth_secrets = secrets;
        for (name, pw) in &self.users {
            cfg.users.insert(name.clone(), pw.clone());
        }
    }
}

fn text(what: &'static str, bytes: Vec<u8>) -> Result<String, FleetError> {
    if bytes.is_empty() || bytes.len() > MAX_VALUE_BYTES {
        return Err(FleetError::BadEntry { what });
    }
    String::from_utf8(bytes).map_err(|_| FleetError::BadEntry { what })
}

/// Reads the version counter (absent: `None`).
pub async fn read_version(redis: &FleetRedis) -> Result<Option<i64>, FleetError> {
    let (v,): (Option<i64>,) = redis.run(redis::pipe().get(VERSION_KEY)).await?;
    Ok(v)
}

/// Reads the secrets and users, bounded (see the module doc).
pub async fn read_credentials(redis: &FleetRedis) -> Result<FleetCredentials, FleetError> {
    let (secrets, users_len): (Vec<Vec<u8>>, usize) = redis
        .run(
            redis::pipe()
                .atomic()
                .lrange(AUTH_SECRETS_KEY, 0, MAX_SECRETS as isize)
                .hlen(USERS_KEY),
        )
        .await?;
    if secrets.len() > MAX_SECRETS {
        return Err(FleetError::TooMany {
            what: AUTH_SECRETS_KEY,
            n: secrets.len(),
            max: MAX_SECRETS,
        });
    }
    if users_len > MAX_USERS {
        return Err(FleetError::TooMany {
            what: USERS_KEY,
            n: users_len,
            max: MAX_USERS,
        });
    }
    let auth_secrets = secrets
        .into_iter()
        .map(|s| text(AUTH_SECRETS_KEY, s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut users = HashMap::new();
    if users_len > 0 {
        let (all,): (Vec<(Vec<u8>, Vec<u8>)>,) =
            redis.run(redis::pipe().hgetall(USERS_KEY)).await?;
        if all.len() > MAX_USERS {
            return Err(FleetError::TooMany {
                what: USERS_KEY,
                n: all.len(),
                max: MAX_USERS,
            });
        }
        for (name, pw) in all {
            users.insert(text(USERS_KEY, name)?, text(USERS_KEY, pw)?);
        }
    }
    Ok(FleetCredentials {
        auth_secrets,
        users,
    })
}

/// At start: reads the credentials, retrying for up to [`STARTUP_WAIT`]. `None` when Redis
/// did not answer (or refused: logged) in that time.
pub async fn initial_credentials(
    redis: &FleetRedis,
    metrics: &FleetMetrics,
) -> Option<FleetCredentials> {
    let deadline = tokio::time::Instant::now() + STARTUP_WAIT;
    loop {
        match read_credentials(redis).await {
            Ok(c) => {
                metrics.up.set(1);
                metrics.update(true);
                tracing::info!(
                    auth_secrets = c.auth_secrets.len(),
                    users = c.users.len(),
                    "fleet credentials read from Redis"
                );
                return Some(c);
            }
            Err(e) if e.is_refusal() => {
                metrics.up.set(1);
                metrics.update(false);
                tracing::error!(error = %e, "fleet credentials in Redis refused: starting with the file's");
                return None;
            }
            Err(e) => {
                metrics.error("read");
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(error = %e, "fleet Redis unreachable at start: serving with the file's credentials; retrying every second");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Polls the version every [`POLL_PERIOD`]; when it changed (or Redis came back), reads the
/// credentials and, when they differ from the last ones, hands them to the reload path on
/// `tx`.
pub async fn watch_credentials(
    redis: Arc<FleetRedis>,
    tx: watch::Sender<Option<Arc<FleetCredentials>>>,
    metrics: FleetMetrics,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(POLL_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The version last read (None: read again whatever it is).
    let mut seen: Option<Option<i64>> = None;
    let mut up = tx.borrow().is_some();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let version = match read_version(&redis).await {
            Ok(v) => v,
            Err(e) => {
                metrics.error("read");
                if up {
                    tracing::warn!(error = %e, "fleet Redis unreachable: the credentials in force stay; retrying every second");
                }
                up = false;
                seen = None;
                continue;
            }
        };
        if !up {
            tracing::info!("fleet Redis reachable");
        }
        up = true;
        metrics.up.set(1);
        if seen == Some(version) {
            continue;
        }
        match read_credentials(&redis).await {
            Ok(c) => {
                seen = Some(version);
                if tx.borrow().as_deref() != Some(&c) {
                    metrics.update(true);
                    tracing::info!(
                        version,
                        auth_secrets = c.auth_secrets.len(),
                        users = c.users.len(),
                        "fleet credentials changed in Redis"
                    );
                    tx.send_replace(Some(Arc::new(c)));
                }
            }
            Err(e) if e.is_refusal() => {
                // Not read again until the version changes.
                seen = Some(version);
                metrics.update(false);
                tracing::error!(error = %e, version, "fleet credentials in Redis refused: the credentials in force stay");
            }
            Err(e) => {
                metrics.error("read");
                tracing::warn!(error = %e, "fleet credentials could not be read: retrying");
                up = false;
            }
        }
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn node_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}")
}

fn list_key(node: &str) -> String {
    format!("{NODE_PREFIX}{node}:allocations")
}

/// One allocation in a node's summary (no permissions or channels, to keep it small).
pub fn summary_entry(a: &AllocationInfo) -> Value {
    json!({
        "id": a.id.to_string(),
        "user": a.user,
        "client": a.tuple.client.to_string(),
        "server": a.tuple.server.to_string(),
        "transport": a.tuple.transport.as_str(),
        "relayed": a.relayed.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "relay_transport": a.relay_transport.as_str(),
        "started": a.started_unix_secs,
        "age_secs": a.age_secs,
        "to_peer": {"packets": a.to_peer.packets, "bytes": a.to_peer.bytes},
        "from_peer": {"packets": a.from_peer.packets, "bytes": a.from_peer.bytes},
    })
}

/// What a node publishes.
pub struct Publisher {
    /// The fleet's Redis.
    pub redis: Arc<FleetRedis>,
    /// This node's name.
    pub node: String,
    /// The workers (asked for their allocations).
    pub workers: Workers,
    /// Cross-worker state (allocation count, draining).
    pub shared: Arc<Shared>,
    /// Worker threads.
    pub worker_count: usize,
    /// Error counters.
    pub metrics: FleetMetrics,
}

impl Publisher {
    /// Publishes every [`PUBLISH_PERIOD`] until `stop`, then removes this node's summary.
    pub async fn run(self, stop: CancellationToken) {
        let instance = format!("{:016x}", rand::random::<u64>());
        let mut tick = tokio::time::interval(PUBLISH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if first {
                first = false;
                self.check_name(&instance).await;
            }
            match self.publish(&instance).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(node = %self.node, "fleet summary published again");
                    }
                    failing = false;
                }
                Err(e) => {
                    self.metrics.error("publish");
                    if !failing {
                        tracing::warn!(node = %self.node, error = %e, "fleet summary not published; retrying");
                    }
                    failing = true;
                }
            }
        }
        let mut p = redis::pipe();
        p.atomic()
            .del(node_key(&self.node))
            .ignore()
            .del(list_key(&self.node))
            .ignore()
            .zrem(NODES_KEY, &self.node)
            .ignore();
        let _ = self.redis.run::<()>(&p).await;
    }

    /// Warns when another live node publishes under this name.
    async fn check_name(&self, instance: &str) {
        if let Ok((Some(other),)) = self
            .redis
            .run::<(Option<String>,)>(redis::pipe().get(node_key(&self.node)))
            .await
        {
            let other: Value = serde_json::from_str(&other).unwrap_or_default();
            if other["instance"].as_str().is_some_and(|i| i != instance) {
                tracing::warn!(node = %self.node, "another node published under this node_name less than {SUMMARY_TTL:?} ago: node names must be unique (--node-name)");
            }
        }
    }

    async fn publish(&self, instance: &str) -> Result<(), FleetError> {
        let mut list = match self
            .workers
            .list(&AllocationFilter::default(), MAX_SUMMARY_ALLOCATIONS + 1)
            .await
        {
            Ok(l) => l,
            // Busy workers: no summary this round (the last one is still there).
            Err(_) => return Ok(()),
        };
        let truncated = list.len() > MAX_SUMMARY_ALLOCATIONS;
        list.truncate(MAX_SUMMARY_ALLOCATIONS);
        let now = unix_now();
        let header = json!({
            "node": self.node,
            "instance": instance,
            "updated": now.as_secs(),
            "allocations": self.shared.total_allocations(),
            "listed": list.len(),
            "truncated": truncated,
            "draining": self.shared.is_draining(),
            "workers": self.worker_count,
        });
        let entries: Vec<Value> = list.iter().map(summary_entry).collect();
        let now_ms = now.as_millis() as i64;
        let stale = now_ms - SUMMARY_TTL.as_millis() as i64;
        let ttl = SUMMARY_TTL.as_secs();
        let mut p = redis::pipe();
        p.atomic()
            .set_ex(node_key(&self.node), header.to_string(), ttl)
            .ignore()
            .set_ex(list_key(&self.node), Value::from(entries).to_string(), ttl)
            .ignore()
            .zadd(NODES_KEY, &self.node, now_ms)
            .ignore()
            .zrembyscore(NODES_KEY, "-inf", stale)
            .ignore();
        self.redis.run::<()>(&p).await
    }
}

/// The live nodes' headers (at most [`MAX_NODES`]), by name; stale names are pruned.
pub async fn fleet_nodes(redis: &FleetRedis) -> Result<Vec<Value>, FleetError> {
    let now = unix_now();
    let stale = now.as_millis() as i64 - SUMMARY_TTL.as_millis() as i64;
    let (names,): (Vec<String>,) = redis
        .run(
            redis::pipe()
                .atomic()
                .zrembyscore(NODES_KEY, "-inf", stale)
                .ignore()
                .zrange(NODES_KEY, 0, MAX_NODES as isize - 1),
        )
        .await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for n in &names {
        p.get(node_key(n));
    }
    let headers: Vec<Option<String>> = redis.run(&p).await?;
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for (name, h) in names.into_iter().zip(headers) {
        match h.and_then(|h| serde_json::from_str::<Value>(&h).ok()) {
            Some(mut h) => {
                let updated = h["updated"].as_u64().unwrap_or(0);
                h["age_secs"] = now.as_secs().saturating_sub(updated).into();
                if let Some(o) = h.as_object_mut() {
                    o.remove("instance");
                }
                out.push(h);
            }
            None => gone.push(name),
        }
    }
    if !gone.is_empty() {
        let _ = redis
            .run::<()>(redis::pipe().zrem(NODES_KEY, gone).ignore())
            .await;
    }
    out.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
    Ok(out)
}

/// The allocations of the live nodes' summaries (of `node` only when given; of `user` only
/// when given), each with its `node`, at most [`MAX_FLEET_LIST`]; `true` when some were left
/// out (a node's list was truncated, or the bound was reached).
pub async fn fleet_allocations(
    redis: &FleetRedis,
    node: Option<&str>,
    user: Option<&str>,
) -> Result<(Vec<Value>, bool), FleetError> {
    let nodes = fleet_nodes(redis).await?;
    let mut out = Vec::new();
    let mut truncated = false;
    for h in nodes {
        let Some(name) = h["node"].as_str() else {
            continue;
        };
        if node.is_some_and(|n| n != name) {
            continue;
        }
        truncated |= h["truncated"].as_bool().unwrap_or(false);
        let (list,): (Option<String>,) = redis.run(redis::pipe().get(list_key(name))).await?;
        let list: Vec<Value> = list
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_default();
        for mut a in list {
            if user.is_some_and(|u| a["user"].as_str() != Some(u)) {
                continue;
            }
            if out.len() >= MAX_FLEET_LIST {
                return Ok((out, true));
            }
            a["node"] = name.into();
            out.push(a);
        }
    }
    Ok((out, truncated))
}

fn check_entry(what: &'static str, v: &str) -> Result<(), FleetError> {
    if v.is_empty() || v.len() > MAX_VALUE_BYTES {
        return Err(FleetError::BadEntry { what });
    }
    Ok(())
}

/// `fleet set-secrets`: replaces the secret list (first = newest, signs) and bumps the version,
/// atomically. Returns the new version.
pub async fn set_secrets(redis: &FleetRedis, secrets: &[String]) -> Result<i64, FleetError> {
    if secrets.len() > MAX_SECRETS {
        return Err(FleetError::TooMany {
            what: AUTH_SECRETS_KEY,
            n: secrets.len(),
            max: MAX_SECRETS,
        });
    }
    for s in secrets {
        check_entry(AUTH_SECRETS_KEY, s)?;
    }
    let mut p = redis::pipe();
    p.atomic().del(AUTH_SECRETS_KEY).ignore();
    if !secrets.is_empty() {
        p.rpush(AUTH_SECRETS_KEY, secrets).ignore();
    }
    p.incr(VERSION_KEY, 1);
    let (v,): (i64,) = redis.run(&p).await?;
    Ok(v)
}

/// `fleet set-user`: adds or replaces a user, bumps the version. Refused when the hash is full.
pub async fn set_user(redis: &FleetRedis, name: &str, password: &str) -> Result<i64, FleetError> {
    check_entry(USERS_KEY, name)?;
    check_entry(USERS_KEY, password)?;
    if name.contains(':') {
        return Err(FleetError::BadEntry { what: USERS_KEY });
    }
    let (n, exists): (usize, bool) = redis
        .run(redis::pipe().hlen(USERS_KEY).hexists(USERS_KEY, name))
        .await?;
    if !exists && n >= MAX_USERS {
        return Err(FleetError::TooMany {
            what: USERS_KEY,
            n,
            max: MAX_USERS,
        });
    }
    let (v,): (i64,) = redis
        .run(
            redis::pipe()
                .atomic()
                .hset(USERS_KEY, name, password)
                .ignore()
                .incr(VERSION_KEY, 1),
        )
        .await?;
    Ok(v)
}

/// `fleet remove-user`: removes a user, bumps the version. Returns (was there, version).
pub async fn remove_user(redis: &FleetRedis, name: &str) -> Result<(bool, i64), FleetError> {
    let (removed, v): (usize, i64) = redis
        .run(
            redis::pipe()
                .atomic()
                .hdel(USERS_KEY, name)
                .incr(VERSION_KEY, 1),
        )
        .await?;
    Ok((removed > 0, v))
}

/// `fleet show`: the version, the number of secrets and the user names (never a secret or a
/// password).
pub async fn show(redis: &FleetRedis) -> Result<Value, FleetError> {
    let (version, secrets, names): (Option<i64>, usize, Vec<String>) = redis
        .run(
            redis::pipe()
                .atomic()
                .get(VERSION_KEY)
                .llen(AUTH_SECRETS_KEY)
                .hkeys(USERS_KEY),
        )
        .await?;
    let mut names = names;
    names.sort();
    Ok(json!({"version": version, "auth_secrets": secrets, "users": names}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_puts_redis_secrets_first_and_adds_users() {
        let mut cfg = {
            use crate::config::{Defaults, Layered, ServerArgs};
            ServerArgs {
                auth_secret: vec!["file".into(), "both".into()],
                user: vec!["a:filepw".into(), "b:bpw".into()],
                ..Default::default()
            }
            .resolve(&Defaults::default())
            .unwrap()
        };
        let c = FleetCredentials {
            auth_secrets: vec!["redis".into(), "both".into()],
            users: [("a".to_string(), "redispw".to_string())].into(),
        };
        c.overlay(&mut cfg);
        assert_eq!(cfg.auth_secrets, vec!["redis", "both", "file"]);
        assert_eq!(cfg.users["a"], "redispw");
        assert_eq!(cfg.users["b"], "bpw");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("redispw") && !shown.contains("redis\""),
            "{shown}"
        );
    }
}
