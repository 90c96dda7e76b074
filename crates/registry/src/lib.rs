//! Shared signaling state (the design digest's `serverInfo` and `userInfo`, plus the node
//! registry and cross-node messaging) behind one trait, with two implementations:
//! [`memory::MemoryStore`] (embedded, single node, the default) and [`redis::RedisStore`]
//! (a real Redis server, several nodes).
//!
//! Every operation is idempotent where the name says so, and `create_room` is atomic: two nodes
//! creating the same room at once yield one room.

pub mod memory;
pub mod redis;

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

/// Capacity, in messages, of every receiver returned by [`Store::subscribe`]. A message
/// published while a receiver holds this many is dropped for that receiver and counted
/// ([`Store::dropped_messages`]).
pub const SUBSCRIBER_CAPACITY: usize = 1024;

pub use signaling_proto::room::RoomMode;

/// A room and the node that hosts it (`serverInfo[room]` in the digest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Room name (1..=128 chars of `[A-Za-z0-9_.-]`).
    pub name: String,
    /// Mesh or SFU.
    pub mode: RoomMode,
    /// Maximum participants.
    pub capacity: u32,
    /// Node id of the channel server hosting the room.
    pub node: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Id of the SFU node hosting the media of an `sfu` room ([`SfuNodeInfo::id`]); chosen at
    /// the first join and replaced (with [`Store::set_room_sfu`]) when that node is no longer
    /// live. Always `None` for mesh rooms. Absent in records written before SFU support.
    #[serde(default)]
    pub sfu: Option<String>,
}

/// One participant of a room (an entry of `userInfo[room]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantRecord {
    /// Participant id, unique in the room (`p_` + random).
    pub id: String,
    /// Identity from the access token (`sub`).
    pub identity: String,
    /// Display name.
    pub name: String,
    /// Node id whose channel server holds the participant's WebSocket.
    pub node: String,
    /// Unix seconds.
    pub joined_at: u64,
}

/// A live signaling node in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id (`--node-id`).
    pub id: String,
    /// The WebSocket URL clients of this node use (from `--public-url`).
    pub ws_url: String,
    /// Current load: open WebSocket connections.
    pub load: u32,
    /// Fraction of its capacity in use, in thousandths (`signaling_load_ratio` x 1000): what
    /// placement compares. Absent in records of older nodes (0).
    #[serde(default)]
    pub load_permille: u32,
    /// True while the node drains: it takes no new rooms, and serves those it has until they
    /// empty. Absent in records of older nodes (false).
    #[serde(default)]
    pub draining: bool,
}

/// A live SFU node in the registry (written by the SFU's heartbeat, read by the channel
/// servers that place `sfu` rooms and open participant links, `services/sfu/PROTOCOL.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SfuNodeInfo {
    /// SFU node id (unique among SFU nodes; may equal a signaling node id, the registries are
    /// separate).
    pub id: String,
    /// Link base URL, `ws://host:port` (no trailing `/`); links go to `<url>/v1/signal?...`.
    pub url: String,
    /// Current load: participants hosted.
    pub load: u32,
    /// Fraction of its capacity in use, in thousandths (`sfu_load_ratio` x 1000): what
    /// placement compares. Absent in records of older nodes (0).
    #[serde(default)]
    pub load_permille: u32,
    /// True while the node drains: new rooms are not placed on it; its rooms stay until they
    /// empty. Absent in records of older nodes (false).
    #[serde(default)]
    pub draining: bool,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend (Redis) could not be reached or answered an error.
    #[error("store backend error: {0}")]
    Backend(String),
    /// Stored data could not be decoded.
    #[error("corrupt store entry: {0}")]
    Corrupt(String),
}

/// The signaling state store.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates `room` if no room of that name exists. Atomic across nodes: returns the room that
    /// exists afterwards and whether this call created it.
    async fn create_room(&self, room: &RoomRecord) -> Result<(RoomRecord, bool), StoreError>;
    /// The room, if it exists.
    async fn get_room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError>;
    /// Up to `limit` rooms, by name, with names after `after` (paging; `None`: from the start).
    async fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomRecord>, StoreError>;
    /// Deletes the room and its participant list. True if it existed.
    async fn delete_room(&self, name: &str) -> Result<bool, StoreError>;
    /// Moves the room to `node` if it is still on `from` (compare-and-set; used when the hosting
    /// node died). Returns the room afterwards (None if it no longer exists).
    async fn move_room(
        &self,
        name: &str,
        from: &str,
        node: &str,
    ) -> Result<Option<RoomRecord>, StoreError>;
    /// Adds or replaces participant `p` of `room` (idempotent).
    async fn add_participant(&self, room: &str, p: &ParticipantRecord) -> Result<(), StoreError>;
    /// Removes participant `id` from `room` (idempotent). True if it was there.
    async fn remove_participant(&self, room: &str, id: &str) -> Result<bool, StoreError>;
    /// The participants of `room`, in join order.
    async fn participants(&self, room: &str) -> Result<Vec<ParticipantRecord>, StoreError>;
    /// Registers or refreshes `node`; the entry expires `ttl` after the last heartbeat.
    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError>;
    /// Removes `node` from the registry (clean shutdown).
    async fn remove_node(&self, id: &str) -> Result<(), StoreError>;
    /// The live nodes (entries not expired).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError>;
    /// Registers or refreshes SFU node `node`; the entry expires `ttl` after the last
    /// heartbeat (same semantics as [`Store::heartbeat`], separate registry).
    async fn sfu_heartbeat(&self, node: &SfuNodeInfo, ttl: Duration) -> Result<(), StoreError>;
    /// Removes SFU node `id` from the registry (clean shutdown). Idempotent.
    async fn remove_sfu_node(&self, id: &str) -> Result<(), StoreError>;
    /// The live SFU nodes (entries not expired), sorted by id.
    async fn sfu_nodes(&self) -> Result<Vec<SfuNodeInfo>, StoreError>;
    /// Sets the room's SFU node to `to` if its current value ([`RoomRecord::sfu`]) equals `from`
    /// (compare-and-set, atomic across nodes). Returns the room afterwards, changed or not
    /// (None if it does not exist).
    async fn set_room_sfu(
        &self,
        name: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<Option<RoomRecord>, StoreError>;
    /// Publishes `payload` on `channel` to every subscriber on any node (fire and forget).
    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError>;
    /// Subscribes to `channel`. Messages arrive on the returned bounded receiver; when the
    /// receiver is full, messages are dropped (and counted by the implementation).
    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Vec<u8>>, StoreError>;
    /// Messages dropped so far because a subscriber's receiver was full (a counter, for the
    /// metrics). Added after the first version of the trait; the default says none.
    fn dropped_messages(&self) -> u64 {
        0
    }
}

/// Where a new `sfu` room goes: the SFU node, among `nodes` that are not draining, with the
/// least fraction of its capacity in use, then the fewest participants (ties broken by id, so
/// every node picks the same one).
pub fn least_loaded_sfu(nodes: &[SfuNodeInfo]) -> Option<&SfuNodeInfo> {
    nodes.iter().filter(|n| !n.draining).min_by(|a, b| {
        a.load_permille
            .cmp(&b.load_permille)
            .then(a.load.cmp(&b.load))
            .then(a.id.cmp(&b.id))
    })
}

/// Where a new room goes: the node, among `nodes` that are not draining, with the least
/// fraction of its capacity in use, then the fewest connections (ties broken by id, so every
/// node picks the same one).
pub fn least_loaded(nodes: &[NodeInfo]) -> Option<&NodeInfo> {
    nodes.iter().filter(|n| !n.draining).min_by(|a, b| {
        a.load_permille
            .cmp(&b.load_permille)
            .then(a.load.cmp(&b.load))
            .then(a.id.cmp(&b.id))
    })
}

/// A load ratio (clamped to [0, 1]) in thousandths, as the registry records it.
pub fn permille(ratio: f64) -> u32 {
    if ratio.is_nan() {
        return 0;
    }
    (ratio.clamp(0.0, 1.0) * 1000.0).round() as u32
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn sfu(id: &str, load: u32, permille: u32, draining: bool) -> SfuNodeInfo {
        SfuNodeInfo {
            id: id.into(),
            url: format!("ws://{id}.invalid"),
            load,
            load_permille: permille,
            draining,
        }
    }

    fn node(id: &str, load: u32, permille: u32, draining: bool) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            ws_url: format!("ws://{id}.invalid/v1/ws"),
            load,
            load_permille: permille,
            draining,
        }
    }

    #[test]
    fn placement_follows_the_load_ratio_and_skips_draining_nodes() {
        // The load ratio decides before the participant count.
        let nodes = [sfu("a", 1, 700, false), sfu("b", 40, 200, false)];
        assert_eq!(least_loaded_sfu(&nodes).unwrap().id, "b");
        // Equal ratios: fewer participants, then the id.
        let nodes = [
            sfu("b", 3, 0, false),
            sfu("a", 3, 0, false),
            sfu("c", 2, 0, false),
        ];
        assert_eq!(least_loaded_sfu(&nodes).unwrap().id, "c");
        // A draining node is never chosen, however idle; none left: no placement.
        let nodes = [sfu("idle", 0, 0, true), sfu("busy", 9, 900, false)];
        assert_eq!(least_loaded_sfu(&nodes).unwrap().id, "busy");
        assert!(least_loaded_sfu(&[sfu("x", 0, 0, true)]).is_none());
        let nodes = [
            node("n1", 0, 0, true),
            node("n2", 5, 500, false),
            node("n3", 1, 600, false),
        ];
        assert_eq!(least_loaded(&nodes).unwrap().id, "n2");
        assert!(least_loaded(&[node("n1", 0, 0, true)]).is_none());
    }

    #[test]
    fn permille_clamps_the_ratio() {
        assert_eq!(permille(0.25), 250);
        assert_eq!(permille(1.7), 1000);
        assert_eq!(permille(-1.0), 0);
        assert_eq!(permille(f64::NAN), 0);
    }

    #[test]
    fn records_of_older_nodes_read_as_idle_and_not_draining() {
        let n: SfuNodeInfo = serde_json::from_str(r#"{"id":"s","url":"ws://s","load":2}"#).unwrap();
        assert_eq!((n.load_permille, n.draining), (0, false));
        let n: NodeInfo =
            serde_json::from_str(r#"{"id":"n","ws_url":"ws://n/v1/ws","load":2}"#).unwrap();
        assert_eq!((n.load_permille, n.draining), (0, false));
    }
}
