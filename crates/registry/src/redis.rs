//! Redis store: the shared state of several signaling nodes in one Redis server (the design
//! digest's "distributed session state").
//!
//! # Key layout
//!
//! Every key starts with `turnkey:`. `{name}` is a room name, `{id}` a node id; both are used
//! verbatim, so they must not contain `:` (room names are `[A-Za-z0-9_.-]`, see
//! [`RoomRecord::name`]).
//!
//! | key | type | value |
//! |---|---|---|
//! | `turnkey:room:{name}` | string | JSON [`RoomRecord`] (`serverInfo[room]` in the digest). Created with a Lua `GET`-then-`SET` so two nodes creating at once get one room. No expiry. |
//! | `turnkey:room:{name}:participants` | hash | participant id -> JSON [`ParticipantRecord`] (`userInfo[room]`) |
//! | `turnkey:room:{name}:order` | list | participant ids in join order (each id once; kept in step with the hash by the scripts) |
//! | `turnkey:node:{id}` | string | JSON [`NodeInfo`], set with `PX` = the heartbeat TTL, so it disappears when the node stops heartbeating |
//! | `turnkey:nodes` | set | node ids that heartbeated; an id whose `turnkey:node:{id}` has expired is removed by the next [`Store::nodes`] |
//! | `turnkey:sfu-node:{id}` | string | JSON [`SfuNodeInfo`], set with `PX` = the SFU heartbeat TTL |
//! | `turnkey:sfu-nodes` | set | SFU node ids that heartbeated; expired ones are removed by the next [`Store::sfu_nodes`] |
//!
//! Pub/sub: [`Store::publish`] on channel `c` is `PUBLISH turnkey:ch:c`. (Redis pub/sub
//! channels ignore the database number, so the prefix keeps several deployments on one server
//! apart.)
//!
//! [`Store::move_room`] and [`Store::set_room_sfu`] are optimistic compare-and-sets: read the
//! room's JSON, decide, and write the new JSON with a Lua script that swaps only if the stored
//! value is still the one read (retried up to 16 times).
//!
//! Multi-key operations are Lua scripts or `MULTI`/`EXEC` pipelines, so each is atomic. The
//! scripts name keys they derive from a prefix, so this needs one Redis server (with replicas if
//! wanted), not Redis Cluster.
//!
//! # Connections
//!
//! - Commands: one [`ConnectionManager`] (a multiplexed connection that reconnects by
//!   itself). Each command times out after [`RESPONSE_TIMEOUT`]; a failure is
//!   [`StoreError::Backend`], and the next command tries a fresh connection.
//! - Pub/sub: one dedicated connection per [`RedisStore`], carrying every subscribed channel,
//!   read by a background task that forwards each message to the bounded receivers of that
//!   channel ([`SUBSCRIBER_CAPACITY`] messages; when one is full the message is dropped for it
//!   and counted in [`RedisStore::dropped_messages`]). The task pings every
//!   [`HEALTH_INTERVAL`], and when the connection fails it reconnects with exponential backoff
//!   (100 ms to 5 s) and subscribes again to every channel that still has a receiver. Messages
//!   published while it is down are lost (Redis pub/sub delivers at most once). Channels whose
//!   receivers were all dropped are unsubscribed at the next health tick. The task stops when
//!   the store is dropped.

use super::{
    NodeInfo, ParticipantRecord, RoomRecord, SfuNodeInfo, Store, StoreError, SUBSCRIBER_CAPACITY,
};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub, PubSubSink};
use redis::{Client, Msg, RedisError, Script};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, timeout_at, Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Prefix of every key and channel.
pub const KEY_PREFIX: &str = "turnkey:";
/// The set of registered node ids.
const NODES_KEY: &str = "turnkey:nodes";
/// Prefix of a node's registry entry.
const NODE_PREFIX: &str = "turnkey:node:";
/// The set of registered SFU node ids.
const SFU_NODES_KEY: &str = "turnkey:sfu-nodes";
/// Prefix of an SFU node's registry entry.
const SFU_NODE_PREFIX: &str = "turnkey:sfu-node:";
/// Prefix of a room's keys.
const ROOM_PREFIX: &str = "turnkey:room:";
/// Prefix of pub/sub channels.
const CHANNEL_PREFIX: &str = "turnkey:ch:";

/// Time limit for opening a connection to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit for the answer to one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`Store::subscribe`] waits for Redis to confirm, across a reconnect if one is under
/// way, before it fails.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Period of the pub/sub connection's health check (`PING`) and of the sweep that
/// unsubscribes channels nobody listens to any more.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// First and last delay between pub/sub reconnection attempts (doubling in between).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A pub/sub connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Attempts of the optimistic compare-and-set in `move_room` before it gives up.
const MOVE_ATTEMPTS: usize = 16;

/// `KEYS`: room, participants, order. `ARGV`: room JSON.
/// Returns `{1, json}` if it created the room (and cleared any leftover participant keys),
/// `{0, existing json}` otherwise.
const CREATE_ROOM: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return {1, ARGV[1]}
";

/// `KEYS`: room. `ARGV`: expected JSON, new JSON. 1 if swapped, 0 if the value differed.
const SWAP_ROOM: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// `KEYS`: room, participants, order. `ARGV`: id, JSON. 0 if there is no such room (nothing
/// stored), 1 otherwise. A new id goes to the end of the order; a known id keeps its place.
const ADD_PARTICIPANT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) == 1 then
  redis.call('RPUSH', KEYS[3], ARGV[1])
end
return 1
";

/// `KEYS`: participants, order. `ARGV`: id. 1 if it was there.
const REMOVE_PARTICIPANT: &str = r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return 1
end
return 0
";

/// `KEYS`: participants, order. The participants' JSON in join order.
const PARTICIPANTS: &str = r"
local out = {}
for _, id in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
  local v = redis.call('HGET', KEYS[1], id)
  if v then out[#out + 1] = v end
end
return out
";

/// `KEYS`: the node set. `ARGV`: the node key prefix. The JSON of every live node; ids whose
/// entry expired are removed from the set.
const LIVE_NODES: &str = r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v else redis.call('SREM', KEYS[1], id) end
end
return out
";

struct Scripts {
    create_room: Script,
    swap_room: Script,
    add_participant: Script,
    remove_participant: Script,
    participants: Script,
    live_nodes: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            create_room: Script::new(CREATE_ROOM),
            swap_room: Script::new(SWAP_ROOM),
            add_participant: Script::new(ADD_PARTICIPANT),
            remove_participant: Script::new(REMOVE_PARTICIPANT),
            participants: Script::new(PARTICIPANTS),
            live_nodes: Script::new(LIVE_NODES),
        }
    }
}

fn room_key(name: &str) -> String {
    format!("{ROOM_PREFIX}{name}")
}

fn participants_key(name: &str) -> String {
    format!("{ROOM_PREFIX}{name}:participants")
}

fn order_key(name: &str) -> String {
    format!("{ROOM_PREFIX}{name}:order")
}

fn node_key(id: &str) -> String {
    format!("{NODE_PREFIX}{id}")
}

fn sfu_node_key(id: &str) -> String {
    format!("{SFU_NODE_PREFIX}{id}")
}

fn channel_key(channel: &str) -> String {
    format!("{CHANNEL_PREFIX}{channel}")
}

/// Maps a Redis error to [`StoreError::Backend`], naming the operation.
fn backend(op: &'static str) -> impl FnOnce(RedisError) -> StoreError {
    move |e| StoreError::Backend(format!("{op}: {e}"))
}

fn encode<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(format!("encode: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The store over a Redis server. See the module documentation for keys and connections.
pub struct RedisStore {
    conn: ConnectionManager,
    scripts: Scripts,
    pubsub: Arc<PubSubShared>,
    /// Stops the pub/sub task when the store is dropped.
    _stop: DropGuard,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("dropped_messages", &self.dropped_messages())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to the Redis server at `url` (`redis://[user:password@]host[:port][/db]` or
    /// `redis+unix:///path`; TLS `rediss://` is not enabled in this build) and starts the
    /// pub/sub task. Must be called within a tokio runtime.
    ///
    /// Errors: [`StoreError::Backend`] if the URL is invalid or the server cannot be reached
    /// within [`CONNECT_TIMEOUT`] (for the command connection and again for the pub/sub one).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(backend("invalid Redis URL"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX);
        let conn = timeout(
            CONNECT_TIMEOUT * 2,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::Backend("connect: timed out".into()))?
        .map_err(backend("connect"))?;
        let first = timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| StoreError::Backend("connect pub/sub: timed out".into()))?
            .map_err(backend("connect pub/sub"))?;

        let (sink, _) = watch::channel(None);
        let pubsub = Arc::new(PubSubShared {
            table: Mutex::new(HashMap::new()),
            commands: tokio::sync::Mutex::new(()),
            sink,
            dropped: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(run_pubsub(client, pubsub.clone(), stop.clone(), first));
        Ok(RedisStore {
            conn,
            scripts: Scripts::new(),
            pubsub,
            _stop: stop.drop_guard(),
        })
    }

    /// Messages dropped so far because a subscriber's receiver was full.
    pub fn dropped_messages(&self) -> u64 {
        self.pubsub.dropped.load(Ordering::Relaxed)
    }

    /// How many times the pub/sub connection was lost and re-established.
    pub fn pubsub_reconnects(&self) -> u64 {
        self.pubsub.reconnects.load(Ordering::Relaxed)
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Optimistic compare-and-set of room `name`: `change` edits the decoded record and says
    /// whether to write it. Returns the room afterwards (None if it does not exist).
    async fn update_room(
        &self,
        op: &'static str,
        name: &str,
        change: impl Fn(&mut RoomRecord) -> bool + Send + Sync,
    ) -> Result<Option<RoomRecord>, StoreError> {
        let key = room_key(name);
        let mut conn = self.conn();
        for _ in 0..MOVE_ATTEMPTS {
            let current: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(backend(op))?;
            let Some(current) = current else {
                return Ok(None);
            };
            let mut room: RoomRecord = decode(&key, &current)?;
            if !change(&mut room) {
                return Ok(Some(room));
            }
            let swapped: i64 = self
                .scripts
                .swap_room
                .key(&key)
                .arg(&current)
                .arg(encode(&room)?)
                .invoke_async(&mut conn)
                .await
                .map_err(backend(op))?;
            if swapped == 1 {
                return Ok(Some(room));
            }
        }
        Err(StoreError::Backend(format!(
            "{op} {name}: the room kept changing ({MOVE_ATTEMPTS} attempts)"
        )))
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn create_room(&self, room: &RoomRecord) -> Result<(RoomRecord, bool), StoreError> {
        let json = encode(room)?;
        let (created, stored): (i64, String) = self
            .scripts
            .create_room
            .key(room_key(&room.name))
            .key(participants_key(&room.name))
            .key(order_key(&room.name))
            .arg(&json)
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend("create_room"))?;
        if created == 1 {
            return Ok((room.clone(), true));
        }
        Ok((decode(&room_key(&room.name), &stored)?, false))
    }

    async fn get_room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        let key = room_key(name);
        let json: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.conn())
            .await
            .map_err(backend("get_room"))?;
        json.map(|j| decode(&key, &j)).transpose()
    }

    async fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomRecord>, StoreError> {
        // SCAN the room keys (names never hold ':', so `turnkey:room:<name>:...` keys are a
        // room's lists, not rooms), then read the page's records.
        let mut names: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{ROOM_PREFIX}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut self.conn())
                .await
                .map_err(backend("list_rooms"))?;
            names.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(ROOM_PREFIX))
                    .filter(|n| !n.contains(':'))
                    .filter(|n| after.is_none_or(|a| *n > a))
                    .map(str::to_string),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        names.sort_unstable();
        names.dedup();
        names.truncate(limit);
        let mut rooms = Vec::with_capacity(names.len());
        for name in names {
            // Deleted between the scan and now: skipped.
            if let Some(r) = self.get_room(&name).await? {
                rooms.push(r);
            }
        }
        Ok(rooms)
    }

    async fn delete_room(&self, name: &str) -> Result<bool, StoreError> {
        let (deleted,): (i64,) = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(room_key(name))
            .cmd("DEL")
            .arg(participants_key(name))
            .arg(order_key(name))
            .ignore()
            .query_async(&mut self.conn())
            .await
            .map_err(backend("delete_room"))?;
        Ok(deleted > 0)
    }

    async fn move_room(
        &self,
        name: &str,
        from: &str,
        node: &str,
    ) -> Result<Option<RoomRecord>, StoreError> {
        self.update_room("move_room", name, |room| {
            if room.node != from {
                return false;
            }
            room.node = node.to_string();
            true
        })
        .await
    }

    async fn set_room_sfu(
        &self,
        name: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<Option<RoomRecord>, StoreError> {
        self.update_room("set_room_sfu", name, |room| {
            if room.sfu.as_deref() != from {
                return false;
            }
            room.sfu = Some(to.to_string());
            true
        })
        .await
    }

    async fn add_participant(&self, room: &str, p: &ParticipantRecord) -> Result<(), StoreError> {
        let _stored: i64 = self
            .scripts
            .add_participant
            .key(room_key(room))
            .key(participants_key(room))
            .key(order_key(room))
            .arg(&p.id)
            .arg(encode(p)?)
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend("add_participant"))?;
        Ok(())
    }

    async fn remove_participant(&self, room: &str, id: &str) -> Result<bool, StoreError> {
        let removed: i64 = self
            .scripts
            .remove_participant
            .key(participants_key(room))
            .key(order_key(room))
            .arg(id)
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend("remove_participant"))?;
        Ok(removed == 1)
    }

    async fn participants(&self, room: &str) -> Result<Vec<ParticipantRecord>, StoreError> {
        let key = participants_key(room);
        let list: Vec<String> = self
            .scripts
            .participants
            .key(&key)
            .key(order_key(room))
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend("participants"))?;
        list.iter().map(|j| decode(&key, j)).collect()
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(node_key(&node.id))
            .arg(encode(node)?)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(NODES_KEY)
            .arg(&node.id)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(backend("heartbeat"))
    }

    async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(node_key(id))
            .ignore()
            .cmd("SREM")
            .arg(NODES_KEY)
            .arg(id)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(backend("remove_node"))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let list: Vec<String> = self
            .scripts
            .live_nodes
            .key(NODES_KEY)
            .arg(NODE_PREFIX)
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend("nodes"))?;
        let mut nodes = list
            .iter()
            .map(|j| decode(NODE_PREFIX, j))
            .collect::<Result<Vec<NodeInfo>, _>>()?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn sfu_heartbeat(&self, node: &SfuNodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(sfu_node_key(&node.id))
            .arg(encode(node)?)
            .arg("PX")
            .arg(ttl_ms)
            .ignore()
            .cmd("SADD")
            .arg(SFU_NODES_KEY)
            .arg(&node.id)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(backend("sfu_heartbeat"))
    }

    async fn remove_sfu_node(&self, id: &str) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(sfu_node_key(id))
            .ignore()
            .cmd("SREM")
            .arg(SFU_NODES_KEY)
            .arg(id)
            .ignore()
            .exec_async(&mut self.conn())
            .await
            .map_err(backend("remove_sfu_node"))
    }

    async fn sfu_nodes(&self) -> Result<Vec<SfuNodeInfo>, StoreError> {
        let list: Vec<String> = self
            .scripts
            .live_nodes
            .key(SFU_NODES_KEY)
            .arg(SFU_NODE_PREFIX)
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend("sfu_nodes"))?;
        let mut nodes = list
            .iter()
            .map(|j| decode(SFU_NODE_PREFIX, j))
            .collect::<Result<Vec<SfuNodeInfo>, _>>()?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        let _receivers: i64 = redis::cmd("PUBLISH")
            .arg(channel_key(channel))
            .arg(payload)
            .query_async(&mut self.conn())
            .await
            .map_err(backend("publish"))?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Vec<u8>>, StoreError> {
        self.pubsub.subscribe(channel).await
    }

    fn dropped_messages(&self) -> u64 {
        RedisStore::dropped_messages(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------------------------

/// State shared by the store and its pub/sub task.
struct PubSubShared {
    /// Redis channel name (with [`CHANNEL_PREFIX`]) -> the senders of its receivers. A channel
    /// whose senders are all closed stays here until the sweep unsubscribes it.
    table: Mutex<HashMap<String, Vec<mpsc::Sender<Vec<u8>>>>>,
    /// Held while sending `SUBSCRIBE`/`UNSUBSCRIBE` and while (re)subscribing a new connection,
    /// so that a sweep's `UNSUBSCRIBE` never overtakes a later `SUBSCRIBE` of the same channel.
    commands: tokio::sync::Mutex<()>,
    /// The live connection's sink; `None` while reconnecting.
    sink: watch::Sender<Option<PubSubSink>>,
    dropped: AtomicU64,
    reconnects: AtomicU64,
}

impl PubSubShared {
    fn table(&self) -> MutexGuard<'_, HashMap<String, Vec<mpsc::Sender<Vec<u8>>>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Vec<u8>>, StoreError> {
        let key = channel_key(channel);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        // Registered first, so that a reconnection from now on subscribes it too.
        self.table().entry(key.clone()).or_default().push(tx);
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        let mut current = self.sink.subscribe();
        let mut last_error = String::from("pub/sub connection is down");
        loop {
            let attempt = async {
                let _commands = self.commands.lock().await;
                let sink = current.borrow_and_update().clone();
                match sink {
                    Some(mut sink) => Some(sink.subscribe(&key).await),
                    None => None,
                }
            };
            match timeout_at(deadline, attempt).await {
                Ok(Some(Ok(()))) => return Ok(rx),
                Ok(Some(Err(e))) => last_error = e.to_string(),
                Ok(None) => {}
                Err(_) => break,
            }
            // Wait for the next connection (or the end of the store).
            match timeout_at(deadline, current.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // `rx` is dropped here: its sender is closed and the sweep forgets it.
        Err(StoreError::Backend(format!(
            "subscribe {channel}: {last_error} (no confirmation within {SUBSCRIBE_TIMEOUT:?})"
        )))
    }

    /// Forwards one message to the receivers of its channel.
    fn dispatch(&self, msg: &Msg) {
        let mut table = self.table();
        let Some(senders) = table.get_mut(msg.get_channel_name()) else {
            return;
        };
        let payload = msg.get_payload_bytes();
        let mut dropped = 0;
        senders.retain(|tx| match tx.try_send(payload.to_vec()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Forgets closed receivers; returns the channels (and removes them from the table) that
    /// have none left.
    fn take_unused_channels(&self) -> Vec<String> {
        let mut table = self.table();
        let mut unused = Vec::new();
        table.retain(|channel, senders| {
            senders.retain(|tx| !tx.is_closed());
            if senders.is_empty() {
                unused.push(channel.clone());
                false
            } else {
                true
            }
        });
        unused
    }

    /// Pings the connection and unsubscribes the channels nobody listens to. False if the
    /// connection failed.
    async fn health_check(&self, sink: &mut PubSubSink) -> bool {
        if !matches!(
            timeout(RESPONSE_TIMEOUT, sink.ping::<redis::Value>()).await,
            Ok(Ok(_))
        ) {
            return false;
        }
        let Ok(_commands) = timeout(RESPONSE_TIMEOUT, self.commands.lock()).await else {
            // Subscribers keep it busy; sweep next time.
            return true;
        };
        let unused = self.take_unused_channels();
        if unused.is_empty() {
            return true;
        }
        matches!(
            timeout(RESPONSE_TIMEOUT, sink.unsubscribe(&unused)).await,
            Ok(Ok(()))
        )
    }
}

/// Sleeps for `duration` unless `stop` fires first; false if it did.
async fn sleep_unless(stop: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = sleep(duration) => true,
    }
}

/// Runs `f` unless `stop` fires first.
async fn unless<T>(stop: &CancellationToken, f: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        _ = stop.cancelled() => None,
        v = f => Some(v),
    }
}

/// The pub/sub task: keeps one connection, (re)subscribes the channels in the table, forwards
/// messages, checks health, reconnects with backoff. Ends when `stop` fires.
async fn run_pubsub(
    client: Client,
    shared: Arc<PubSubShared>,
    stop: CancellationToken,
    first: PubSub,
) {
    let mut next = Some(first);
    let mut backoff = BACKOFF_MIN;
    loop {
        let pubsub = match next.take() {
            Some(p) => p,
            None => {
                match unless(&stop, timeout(CONNECT_TIMEOUT, client.get_async_pubsub())).await {
                    None => return,
                    Some(Ok(Ok(p))) => p,
                    Some(Ok(Err(e))) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub: connect failed");
                        if !sleep_unless(&stop, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                    Some(Err(_)) => {
                        tracing::warn!(retry_in = ?backoff, "redis pub/sub: connect timed out");
                        if !sleep_unless(&stop, backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
        };
        let (mut sink, mut stream) = pubsub.split();

        // Subscribe every channel that still has a receiver, then publish the sink, both under
        // the command lock so no subscribe() slips between the two.
        let resubscribed = unless(&stop, async {
            let _commands = shared.commands.lock().await;
            shared.take_unused_channels();
            let channels: Vec<String> = shared.table().keys().cloned().collect();
            if !channels.is_empty() {
                match timeout(RESPONSE_TIMEOUT, sink.subscribe(&channels)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err("timed out".to_string()),
                }
            }
            shared.sink.send_replace(Some(sink.clone()));
            Ok(())
        })
        .await;
        match resubscribed {
            None => return,
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "redis pub/sub: subscribe failed");
                if !sleep_unless(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        }

        let connected_at = Instant::now();
        let mut health = tokio::time::interval_at(connected_at + HEALTH_INTERVAL, HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = stream.next() => match msg {
                    Some(msg) => shared.dispatch(&msg),
                    None => break,
                },
                _ = health.tick() => {
                    if !shared.health_check(&mut sink).await {
                        break;
                    }
                }
            }
        }

        shared.sink.send_replace(None);
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        if connected_at.elapsed() >= STABLE_AFTER {
            backoff = BACKOFF_MIN;
        }
        tracing::warn!(retry_in = ?backoff, "redis pub/sub: connection lost, reconnecting");
        if !sleep_unless(&stop, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced() {
        assert_eq!(room_key("demo"), "turnkey:room:demo");
        assert_eq!(participants_key("demo"), "turnkey:room:demo:participants");
        assert_eq!(order_key("demo"), "turnkey:room:demo:order");
        assert_eq!(node_key("n1"), "turnkey:node:n1");
        assert_eq!(channel_key("room:demo"), "turnkey:ch:room:demo");
        assert_eq!(sfu_node_key("s1"), "turnkey:sfu-node:s1");
        for key in [
            NODES_KEY,
            NODE_PREFIX,
            ROOM_PREFIX,
            CHANNEL_PREFIX,
            SFU_NODES_KEY,
            SFU_NODE_PREFIX,
        ] {
            assert!(key.starts_with(KEY_PREFIX));
        }
    }

    #[tokio::test]
    async fn bad_url_is_a_backend_error() {
        let err = RedisStore::connect("http://nope").await.unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
    }

    #[tokio::test]
    async fn unreachable_server_is_a_backend_error() {
        // Port 1 on loopback: nothing listens there, the connection is refused at once.
        let err = RedisStore::connect("redis://127.0.0.1:1/")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Backend(_)), "{err}");
    }
}
