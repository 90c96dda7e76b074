//! Embedded in-memory store: one process, one node, nothing persisted. The default backend.
//!
//! State lives in ordinary maps behind a `std::sync::Mutex` (held only for map operations,
//! never across an `.await`):
//! - rooms: name -> [`RoomRecord`] plus its participants in join order;
//! - nodes: id -> [`NodeInfo`] plus its expiry deadline. Expired entries are skipped (and
//!   removed) when read, and swept on every heartbeat, so the map never outgrows the live
//!   nodes plus the ones that died since the last heartbeat;
//! - subscriptions: channel -> senders of bounded `tokio::sync::mpsc` channels of
//!   [`SUBSCRIBER_CAPACITY`] messages. A publish to a full receiver drops the message for that
//!   receiver and counts it ([`MemoryStore::dropped_messages`]); closed receivers are forgotten
//!   on the next publish to their channel, and in an amortised sweep of all channels.
//!
//! Deadlines use [`tokio::time::Instant`], so tests can advance virtual time
//! (`#[tokio::test(start_paused = true)]`).

use super::{
    NodeInfo, ParticipantRecord, RoomRecord, SfuNodeInfo, Store, StoreError, SUBSCRIBER_CAPACITY,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A room and its participants (join order: the order of the first `add_participant` of each
/// id; replacing a participant keeps its place).
#[derive(Debug)]
struct RoomEntry {
    record: RoomRecord,
    participants: Vec<ParticipantRecord>,
}

#[derive(Debug)]
struct NodeEntry {
    info: NodeInfo,
    expires: Instant,
}

#[derive(Debug)]
struct SfuNodeEntry {
    info: SfuNodeInfo,
    expires: Instant,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<String, RoomEntry>,
    nodes: HashMap<String, NodeEntry>,
    sfu_nodes: HashMap<String, SfuNodeEntry>,
}

/// `now + ttl`; a TTL too long to represent means "does not expire" for any practical run.
fn expiry(now: Instant, ttl: Duration) -> Instant {
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

#[derive(Debug, Default)]
struct Subscriptions {
    channels: HashMap<String, Vec<mpsc::Sender<Vec<u8>>>>,
    /// Number of senders held (live or closed).
    senders: usize,
    /// `senders` after the last full sweep; the next sweep runs when it has doubled.
    swept_at: usize,
}

impl Subscriptions {
    /// Forgets closed senders and empty channels, when the table has doubled since the last
    /// sweep (amortised O(1) per subscribe).
    fn maybe_sweep(&mut self) {
        if self.senders < 64 || self.senders < self.swept_at.saturating_mul(2) {
            return;
        }
        self.channels.retain(|_, senders| {
            senders.retain(|tx| !tx.is_closed());
            !senders.is_empty()
        });
        self.senders = self.channels.values().map(Vec::len).sum();
        self.swept_at = self.senders;
    }
}

/// The embedded single-node store. See the module documentation.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    subscriptions: Mutex<Subscriptions>,
    dropped: AtomicU64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages dropped so far because a subscriber's receiver was full.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than losing the whole store, so keep going with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn create_room(&self, room: &RoomRecord) -> Result<(RoomRecord, bool), StoreError> {
        let mut state = self.state();
        if let Some(existing) = state.rooms.get(&room.name) {
            return Ok((existing.record.clone(), false));
        }
        state.rooms.insert(
            room.name.clone(),
            RoomEntry {
                record: room.clone(),
                participants: Vec::new(),
            },
        );
        Ok((room.clone(), true))
    }

    async fn get_room(&self, name: &str) -> Result<Option<RoomRecord>, StoreError> {
        Ok(self.state().rooms.get(name).map(|e| e.record.clone()))
    }

    async fn list_rooms(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RoomRecord>, StoreError> {
        let state = self.state();
        let mut names: Vec<&String> = state
            .rooms
            .keys()
            .filter(|n| after.is_none_or(|a| n.as_str() > a))
            .collect();
        names.sort_unstable();
        Ok(names
            .into_iter()
            .take(limit)
            .filter_map(|n| state.rooms.get(n).map(|e| e.record.clone()))
            .collect())
    }

    async fn delete_room(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.state().rooms.remove(name).is_some())
    }

    async fn move_room(
        &self,
        name: &str,
        from: &str,
        node: &str,
    ) -> Result<Option<RoomRecord>, StoreError> {
        let mut state = self.state();
        let Some(entry) = state.rooms.get_mut(name) else {
            return Ok(None);
        };
        if entry.record.node == from {
            entry.record.node = node.to_string();
        }
        Ok(Some(entry.record.clone()))
    }

    async fn add_participant(&self, room: &str, p: &ParticipantRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        // No room, no participant list: a join that raced with a delete leaves nothing behind.
        let Some(entry) = state.rooms.get_mut(room) else {
            return Ok(());
        };
        match entry.participants.iter_mut().find(|q| q.id == p.id) {
            Some(existing) => *existing = p.clone(),
            None => entry.participants.push(p.clone()),
        }
        Ok(())
    }

    async fn remove_participant(&self, room: &str, id: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        let Some(entry) = state.rooms.get_mut(room) else {
            return Ok(false);
        };
        let before = entry.participants.len();
        entry.participants.retain(|q| q.id != id);
        Ok(entry.participants.len() != before)
    }

    async fn participants(&self, room: &str) -> Result<Vec<ParticipantRecord>, StoreError> {
        Ok(self
            .state()
            .rooms
            .get(room)
            .map(|e| e.participants.clone())
            .unwrap_or_default())
    }

    async fn heartbeat(&self, node: &NodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        state.nodes.retain(|_, n| n.expires > now);
        state.nodes.insert(
            node.id.clone(),
            NodeEntry {
                info: node.clone(),
                expires: expiry(now, ttl),
            },
        );
        Ok(())
    }

    async fn remove_node(&self, id: &str) -> Result<(), StoreError> {
        self.state().nodes.remove(id);
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        state.nodes.retain(|_, n| n.expires > now);
        let mut nodes: Vec<NodeInfo> = state.nodes.values().map(|n| n.info.clone()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn sfu_heartbeat(&self, node: &SfuNodeInfo, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        state.sfu_nodes.retain(|_, n| n.expires > now);
        state.sfu_nodes.insert(
            node.id.clone(),
            SfuNodeEntry {
                info: node.clone(),
                expires: expiry(now, ttl),
            },
        );
        Ok(())
    }

    async fn remove_sfu_node(&self, id: &str) -> Result<(), StoreError> {
        self.state().sfu_nodes.remove(id);
        Ok(())
    }

    async fn sfu_nodes(&self) -> Result<Vec<SfuNodeInfo>, StoreError> {
        let now = Instant::now();
        let mut state = self.state();
        state.sfu_nodes.retain(|_, n| n.expires > now);
        let mut nodes: Vec<SfuNodeInfo> =
            state.sfu_nodes.values().map(|n| n.info.clone()).collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    async fn set_room_sfu(
        &self,
        name: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<Option<RoomRecord>, StoreError> {
        let mut state = self.state();
        let Some(entry) = state.rooms.get_mut(name) else {
            return Ok(None);
        };
        if entry.record.sfu.as_deref() == from {
            entry.record.sfu = Some(to.to_string());
        }
        Ok(Some(entry.record.clone()))
    }

    async fn publish(&self, channel: &str, payload: &[u8]) -> Result<(), StoreError> {
        let mut subs = self.subscriptions();
        let Some(senders) = subs.channels.get_mut(channel) else {
            return Ok(());
        };
        let before = senders.len();
        let mut dropped = 0;
        senders.retain(|tx| match tx.try_send(payload.to_vec()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        let closed = before - senders.len();
        if senders.is_empty() {
            subs.channels.remove(channel);
        }
        subs.senders -= closed;
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<mpsc::Receiver<Vec<u8>>, StoreError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
        let mut subs = self.subscriptions();
        subs.channels
            .entry(channel.to_string())
            .or_default()
            .push(tx);
        subs.senders += 1;
        subs.maybe_sweep();
        Ok(rx)
    }

    fn dropped_messages(&self) -> u64 {
        MemoryStore::dropped_messages(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{least_loaded, least_loaded_sfu, RoomMode};
    use std::sync::Arc;

    fn room(name: &str, node: &str) -> RoomRecord {
        RoomRecord {
            name: name.to_string(),
            mode: RoomMode::Mesh,
            capacity: 4,
            node: node.to_string(),
            created_at: 1_700_000_000,
            sfu: None,
        }
    }

    fn sfu_node(id: &str, load: u32) -> SfuNodeInfo {
        SfuNodeInfo {
            id: id.to_string(),
            url: format!("ws://{id}.invalid:8090"),
            load,
            load_permille: 0,
            draining: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sfu_nodes_expire_after_ttl_and_are_separate() {
        let store = MemoryStore::new();
        store
            .sfu_heartbeat(&sfu_node("s1", 3), Duration::from_secs(1))
            .await
            .unwrap();
        store
            .sfu_heartbeat(&sfu_node("s2", 1), Duration::from_secs(10))
            .await
            .unwrap();
        // Same id as a signaling node: the registries do not mix.
        store
            .heartbeat(&node("s1", 0), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            store.sfu_nodes().await.unwrap(),
            [sfu_node("s1", 3), sfu_node("s2", 1)]
        );
        assert_eq!(
            least_loaded_sfu(&store.sfu_nodes().await.unwrap())
                .unwrap()
                .id,
            "s2"
        );
        tokio::time::advance(Duration::from_millis(999)).await;
        store
            .sfu_heartbeat(&sfu_node("s1", 0), Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(
            store.sfu_nodes().await.unwrap(),
            [sfu_node("s1", 0), sfu_node("s2", 1)]
        );
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(store.sfu_nodes().await.unwrap(), [sfu_node("s2", 1)]);
        assert_eq!(store.nodes().await.unwrap(), [node("s1", 0)]);
        store.remove_sfu_node("s2").await.unwrap();
        store.remove_sfu_node("s2").await.unwrap();
        assert!(store.sfu_nodes().await.unwrap().is_empty());
        assert_eq!(store.nodes().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn set_room_sfu_is_compare_and_set() {
        let store = MemoryStore::new();
        assert_eq!(store.set_room_sfu("a", None, "s1").await.unwrap(), None);
        store.create_room(&room("a", "n1")).await.unwrap();
        // Wrong expectation: unchanged.
        let r = store.set_room_sfu("a", Some("s9"), "s1").await.unwrap();
        assert_eq!(r.unwrap().sfu, None);
        let r = store.set_room_sfu("a", None, "s1").await.unwrap().unwrap();
        assert_eq!(r.sfu.as_deref(), Some("s1"));
        // A second placement racing the first loses.
        let r = store.set_room_sfu("a", None, "s2").await.unwrap().unwrap();
        assert_eq!(r.sfu.as_deref(), Some("s1"));
        let r = store
            .set_room_sfu("a", Some("s1"), "s2")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.sfu.as_deref(), Some("s2"));
        assert_eq!(
            store.get_room("a").await.unwrap().unwrap().sfu.as_deref(),
            Some("s2")
        );
        assert_eq!(r.node, "n1");
    }

    fn participant(id: &str, joined_at: u64) -> ParticipantRecord {
        ParticipantRecord {
            id: id.to_string(),
            identity: format!("user-{id}"),
            name: format!("Name {id}"),
            node: "n1".to_string(),
            joined_at,
        }
    }

    fn node(id: &str, load: u32) -> NodeInfo {
        NodeInfo {
            id: id.to_string(),
            ws_url: format!("ws://{id}.invalid/v1/ws"),
            load,
            load_permille: 0,
            draining: false,
        }
    }

    #[tokio::test]
    async fn create_room_once() {
        let store = MemoryStore::new();
        let (r, created) = store.create_room(&room("a", "n1")).await.unwrap();
        assert!(created);
        assert_eq!(r, room("a", "n1"));
        let (r, created) = store.create_room(&room("a", "n2")).await.unwrap();
        assert!(!created);
        assert_eq!(r.node, "n1");
        assert_eq!(store.get_room("a").await.unwrap(), Some(room("a", "n1")));
        assert_eq!(store.get_room("b").await.unwrap(), None);
    }

    #[tokio::test]
    async fn concurrent_create_room_yields_one_room() {
        let store = Arc::new(MemoryStore::new());
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.create_room(&room("race", &format!("n{i}"))).await },
                )
            })
            .collect();
        let mut created = 0;
        let mut records = Vec::new();
        for t in tasks {
            let (r, c) = t.await.unwrap().unwrap();
            created += usize::from(c);
            records.push(r);
        }
        assert_eq!(created, 1);
        assert!(records.iter().all(|r| *r == records[0]));
    }

    #[tokio::test]
    async fn participants_in_join_order_and_idempotent() {
        let store = MemoryStore::new();
        store.create_room(&room("a", "n1")).await.unwrap();
        store
            .add_participant("a", &participant("p2", 5))
            .await
            .unwrap();
        store
            .add_participant("a", &participant("p1", 5))
            .await
            .unwrap();
        store
            .add_participant("a", &participant("p3", 1))
            .await
            .unwrap();
        // Replacing keeps the place and updates the record.
        let mut p1 = participant("p1", 5);
        p1.node = "n2".into();
        store.add_participant("a", &p1).await.unwrap();
        let ps = store.participants("a").await.unwrap();
        let ids: Vec<_> = ps.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["p2", "p1", "p3"]);
        assert_eq!(ps[1].node, "n2");

        assert!(store.remove_participant("a", "p1").await.unwrap());
        assert!(!store.remove_participant("a", "p1").await.unwrap());
        assert!(!store.remove_participant("nope", "p1").await.unwrap());
        let ids: Vec<_> = store
            .participants("a")
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, ["p2", "p3"]);
    }

    #[tokio::test]
    async fn no_participants_without_room() {
        let store = MemoryStore::new();
        store
            .add_participant("ghost", &participant("p1", 1))
            .await
            .unwrap();
        assert!(store.participants("ghost").await.unwrap().is_empty());
        store.create_room(&room("ghost", "n1")).await.unwrap();
        assert!(store.participants("ghost").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_room_drops_participants() {
        let store = MemoryStore::new();
        store.create_room(&room("a", "n1")).await.unwrap();
        store
            .add_participant("a", &participant("p1", 1))
            .await
            .unwrap();
        assert!(store.delete_room("a").await.unwrap());
        assert!(!store.delete_room("a").await.unwrap());
        assert_eq!(store.get_room("a").await.unwrap(), None);
        assert!(store.participants("a").await.unwrap().is_empty());
        let (_, created) = store.create_room(&room("a", "n2")).await.unwrap();
        assert!(created);
        assert!(store.participants("a").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn move_room_is_compare_and_set() {
        let store = MemoryStore::new();
        assert_eq!(store.move_room("a", "n1", "n2").await.unwrap(), None);
        store.create_room(&room("a", "n1")).await.unwrap();
        let r = store.move_room("a", "n9", "n2").await.unwrap().unwrap();
        assert_eq!(r.node, "n1");
        let r = store.move_room("a", "n1", "n2").await.unwrap().unwrap();
        assert_eq!(r.node, "n2");
        assert_eq!(store.get_room("a").await.unwrap().unwrap().node, "n2");
        let r = store.move_room("a", "n1", "n3").await.unwrap().unwrap();
        assert_eq!(r.node, "n2");
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_expire_after_ttl() {
        let store = MemoryStore::new();
        store
            .heartbeat(&node("n1", 3), Duration::from_secs(1))
            .await
            .unwrap();
        store
            .heartbeat(&node("n2", 1), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(store.nodes().await.unwrap(), [node("n1", 3), node("n2", 1)]);
        assert_eq!(
            least_loaded(&store.nodes().await.unwrap()).unwrap().id,
            "n2"
        );

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(store.nodes().await.unwrap().len(), 2);
        // A heartbeat refreshes the deadline and the load.
        store
            .heartbeat(&node("n1", 0), Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(store.nodes().await.unwrap(), [node("n1", 0), node("n2", 1)]);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(store.nodes().await.unwrap(), [node("n2", 1)]);

        store.remove_node("n2").await.unwrap();
        store.remove_node("n2").await.unwrap();
        assert!(store.nodes().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn publish_reaches_every_subscriber_of_the_channel() {
        let store = MemoryStore::new();
        let mut a = store.subscribe("room:a").await.unwrap();
        let mut b = store.subscribe("room:a").await.unwrap();
        let mut other = store.subscribe("room:b").await.unwrap();
        store.publish("room:a", b"one").await.unwrap();
        store.publish("room:a", b"two").await.unwrap();
        store.publish("nobody", b"x").await.unwrap();
        for rx in [&mut a, &mut b] {
            assert_eq!(rx.recv().await.unwrap(), b"one");
            assert_eq!(rx.recv().await.unwrap(), b"two");
        }
        assert!(other.try_recv().is_err());
        drop(a);
        store.publish("room:a", b"three").await.unwrap();
        assert_eq!(b.recv().await.unwrap(), b"three");
        assert_eq!(store.subscriptions().channels["room:a"].len(), 1);
    }

    #[tokio::test]
    async fn full_subscriber_drops_and_counts() {
        let store = MemoryStore::new();
        let rx = store.subscribe("flood").await.unwrap();
        for i in 0..5000u32 {
            store.publish("flood", &i.to_be_bytes()).await.unwrap();
        }
        assert_eq!(rx.len(), SUBSCRIBER_CAPACITY);
        assert_eq!(store.dropped_messages(), 5000 - SUBSCRIBER_CAPACITY as u64);
    }

    #[tokio::test]
    async fn closed_subscribers_are_swept() {
        let store = MemoryStore::new();
        for i in 0..1000 {
            let rx = store.subscribe(&format!("c{i}")).await.unwrap();
            drop(rx);
        }
        let subs = store.subscriptions();
        assert!(subs.senders < 200, "{} senders kept", subs.senders);
    }
}
