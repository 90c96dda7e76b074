//! Conformance tests of the signaling store: one body per behaviour, run against the embedded
//! [`MemoryStore`] and against [`RedisStore`] on a real `redis-server` (Debian's, started per
//! test on a free loopback port by [`common::RedisGuard`]; `bash scripts/test.sh` installs it).
//!
//! A [`Backend`] hands out "nodes": for Redis each call opens a new connection (a separate
//! `RedisStore`, as a second signaling node would); the memory store is one process, so every
//! node is the same instance.
//!
//! The Redis-only tests at the end check the key layout, lazy removal of dead node ids,
//! pub/sub reconnection and the error behaviour when the server is gone.

mod common;

use common::RedisGuard;
use registry::memory::MemoryStore;
use registry::redis::RedisStore;
use registry::{
    least_loaded, NodeInfo, ParticipantRecord, RoomMode, RoomRecord, Store, StoreError,
    SUBSCRIBER_CAPACITY,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{timeout, Instant};

/// How long a message may take to cross Redis in these tests.
const DELIVERY: Duration = Duration::from_secs(5);

#[async_trait::async_trait]
trait Backend: Send + Sync {
    /// A store as one signaling node sees it.
    async fn node(&self) -> Arc<dyn Store>;
}

struct Memory(Arc<MemoryStore>);

#[async_trait::async_trait]
impl Backend for Memory {
    async fn node(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

struct Redis(RedisGuard);

#[async_trait::async_trait]
impl Backend for Redis {
    async fn node(&self) -> Arc<dyn Store> {
        Arc::new(
            RedisStore::connect(&self.0.url())
                .await
                .expect("connect to the test redis-server"),
        )
    }
}

fn memory() -> Memory {
    Memory(Arc::new(MemoryStore::new()))
}

fn redis() -> Redis {
    Redis(RedisGuard::start())
}

/// Defines `mod $name { memory, redis }`: the body `$body(&dyn Backend)` once per backend.
macro_rules! conformance {
    ($($name:ident => $body:ident;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$body(&super::memory()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$body(&super::redis()).await;
            }
        }
    )*};
}

conformance! {
    create_room_is_atomic => create_room_is_atomic;
    get_room_and_create_existing => get_room_and_create_existing;
    participants_idempotent_in_join_order => participants_idempotent_in_join_order;
    participants_need_a_room => participants_need_a_room;
    move_room_compare_and_set => move_room_compare_and_set;
    delete_room_removes_everything => delete_room_removes_everything;
    list_rooms_pages_by_name => list_rooms_pages_by_name;
    node_heartbeat_expires => node_heartbeat_expires;
    remove_node_and_least_loaded => remove_node_and_least_loaded;
    publish_subscribe_across_nodes => publish_subscribe_across_nodes;
    publish_keeps_order => publish_keeps_order;
    subscriber_is_bounded => subscriber_is_bounded;
}

fn room(name: &str, node: &str) -> RoomRecord {
    RoomRecord {
        name: name.to_string(),
        mode: RoomMode::Sfu,
        capacity: 4,
        node: node.to_string(),
        created_at: 1_795_341_634,
        sfu: None,
    }
}

fn participant(id: &str, node: &str) -> ParticipantRecord {
    ParticipantRecord {
        id: id.to_string(),
        identity: format!("user-{id}"),
        name: format!("Näme \"{id}\""),
        node: node.to_string(),
        joined_at: 1_795_341_700,
    }
}

fn node_info(id: &str, load: u32) -> NodeInfo {
    NodeInfo {
        id: id.to_string(),
        ws_url: format!("ws://{id}.example.invalid:8080/v1/ws"),
        load,
        load_permille: 0,
        draining: false,
    }
}

async fn ids(store: &dyn Store, room: &str) -> Vec<String> {
    store
        .participants(room)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect()
}

/// 16 tasks, each with its own node (connection), create the same room at once: exactly one
/// creates it and all get the same record back.
async fn create_room_is_atomic(backend: &dyn Backend) {
    let mut nodes = Vec::new();
    for _ in 0..16 {
        nodes.push(backend.node().await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(nodes.len()));
    let tasks: Vec<_> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, store)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                store.create_room(&room("race", &format!("node-{i}"))).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    let created: Vec<_> = results.iter().filter(|(_, created)| *created).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    let winner = &created[0].0;
    assert!(results.iter().all(|(r, _)| r == winner), "{results:?}");
    let store = backend.node().await;
    assert_eq!(store.get_room("race").await.unwrap().as_ref(), Some(winner));
}

async fn get_room_and_create_existing(backend: &dyn Backend) {
    let store = backend.node().await;
    assert_eq!(store.get_room("a").await.unwrap(), None);
    let (r, created) = store.create_room(&room("a", "n1")).await.unwrap();
    assert!(created);
    assert_eq!(r, room("a", "n1"));
    let mut other = room("a", "n2");
    other.mode = RoomMode::Mesh;
    other.capacity = 2;
    let (r, created) = store.create_room(&other).await.unwrap();
    assert!(!created);
    assert_eq!(r, room("a", "n1"));
    assert_eq!(store.get_room("a").await.unwrap(), Some(room("a", "n1")));
}

async fn participants_idempotent_in_join_order(backend: &dyn Backend) {
    let n1 = backend.node().await;
    let n2 = backend.node().await;
    n1.create_room(&room("r", "n1")).await.unwrap();
    n1.add_participant("r", &participant("p_c", "n1"))
        .await
        .unwrap();
    n2.add_participant("r", &participant("p_a", "n2"))
        .await
        .unwrap();
    n1.add_participant("r", &participant("p_b", "n1"))
        .await
        .unwrap();
    assert_eq!(ids(&*n2, "r").await, ["p_c", "p_a", "p_b"]);

    // Adding again is idempotent; replacing keeps the place and updates the record.
    n1.add_participant("r", &participant("p_c", "n1"))
        .await
        .unwrap();
    let mut moved = participant("p_a", "n1");
    moved.name = "Renamed".into();
    n1.add_participant("r", &moved).await.unwrap();
    let all = n2.participants("r").await.unwrap();
    assert_eq!(
        all,
        [
            participant("p_c", "n1"),
            moved.clone(),
            participant("p_b", "n1")
        ]
    );

    assert!(n2.remove_participant("r", "p_a").await.unwrap());
    assert!(!n2.remove_participant("r", "p_a").await.unwrap());
    assert!(!n1.remove_participant("r", "p_zz").await.unwrap());
    assert!(!n1.remove_participant("nope", "p_c").await.unwrap());
    assert_eq!(ids(&*n1, "r").await, ["p_c", "p_b"]);

    // Coming back after leaving means joining at the end.
    n2.add_participant("r", &moved).await.unwrap();
    assert_eq!(ids(&*n1, "r").await, ["p_c", "p_b", "p_a"]);
    assert!(n1.participants("other").await.unwrap().is_empty());
}

/// A participant added to a room that does not exist (a join racing a delete) is not stored.
async fn participants_need_a_room(backend: &dyn Backend) {
    let store = backend.node().await;
    store
        .add_participant("ghost", &participant("p_1", "n1"))
        .await
        .unwrap();
    assert!(store.participants("ghost").await.unwrap().is_empty());
    store.create_room(&room("ghost", "n1")).await.unwrap();
    assert!(store.participants("ghost").await.unwrap().is_empty());
}

async fn move_room_compare_and_set(backend: &dyn Backend) {
    let n1 = backend.node().await;
    let n2 = backend.node().await;
    assert_eq!(n1.move_room("m", "n1", "n2").await.unwrap(), None);
    n1.create_room(&room("m", "n1")).await.unwrap();

    // Wrong `from`: nothing changes, the current record comes back.
    let r = n2.move_room("m", "n9", "n2").await.unwrap();
    assert_eq!(r, Some(room("m", "n1")));
    assert_eq!(n1.get_room("m").await.unwrap(), Some(room("m", "n1")));

    let r = n2.move_room("m", "n1", "n2").await.unwrap();
    assert_eq!(r, Some(room("m", "n2")));
    assert_eq!(n1.get_room("m").await.unwrap(), Some(room("m", "n2")));

    // Two nodes racing to take over from the dead n2: one wins, both see the winner.
    let (a, b) = tokio::join!(n1.move_room("m", "n2", "n3"), n2.move_room("m", "n2", "n4"));
    let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
    assert_eq!(a, b);
    assert!(a.node == "n3" || a.node == "n4", "{a:?}");
    assert_eq!(n1.get_room("m").await.unwrap(), Some(a));
}

async fn delete_room_removes_everything(backend: &dyn Backend) {
    let store = backend.node().await;
    store.create_room(&room("d", "n1")).await.unwrap();
    store
        .add_participant("d", &participant("p_1", "n1"))
        .await
        .unwrap();
    assert!(store.delete_room("d").await.unwrap());
    assert!(!store.delete_room("d").await.unwrap());
    assert_eq!(store.get_room("d").await.unwrap(), None);
    assert!(store.participants("d").await.unwrap().is_empty());
    assert_eq!(store.move_room("d", "n1", "n2").await.unwrap(), None);
    // The name is free again, with an empty participant list.
    let (_, created) = store.create_room(&room("d", "n2")).await.unwrap();
    assert!(created);
    assert!(store.participants("d").await.unwrap().is_empty());
}

async fn list_rooms_pages_by_name(backend: &dyn Backend) {
    let a = backend.node().await;
    let b = backend.node().await;
    assert!(a.list_rooms(None, 10).await.unwrap().is_empty());
    for name in ["c", "a", "b.2", "b-1"] {
        a.create_room(&room(name, "n1")).await.unwrap();
    }
    // A room's participant list is not a room.
    a.add_participant("a", &participant("p_1", "n1"))
        .await
        .unwrap();
    let names = |v: Vec<RoomRecord>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
    // Seen from another node, in name order, paged.
    assert_eq!(
        names(b.list_rooms(None, 10).await.unwrap()),
        ["a", "b-1", "b.2", "c"]
    );
    assert_eq!(names(b.list_rooms(None, 2).await.unwrap()), ["a", "b-1"]);
    assert_eq!(
        names(b.list_rooms(Some("b-1"), 2).await.unwrap()),
        ["b.2", "c"]
    );
    assert!(b.list_rooms(Some("c"), 2).await.unwrap().is_empty());
    assert!(a.delete_room("b.2").await.unwrap());
    assert_eq!(
        names(b.list_rooms(None, 10).await.unwrap()),
        ["a", "b-1", "c"]
    );
    assert_eq!(b.list_rooms(None, 10).await.unwrap()[0], room("a", "n1"));
}

async fn node_heartbeat_expires(backend: &dyn Backend) {
    let n1 = backend.node().await;
    let n2 = backend.node().await;
    n1.heartbeat(&node_info("n1", 3), Duration::from_secs(1))
        .await
        .unwrap();
    n2.heartbeat(&node_info("n2", 5), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        n2.nodes().await.unwrap(),
        [node_info("n1", 3), node_info("n2", 5)]
    );
    // A heartbeat replaces the entry (new load).
    n1.heartbeat(&node_info("n1", 4), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        n2.nodes().await.unwrap(),
        [node_info("n1", 4), node_info("n2", 5)]
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(n2.nodes().await.unwrap(), [node_info("n2", 5)]);
    assert_eq!(n1.nodes().await.unwrap(), [node_info("n2", 5)]);
}

async fn remove_node_and_least_loaded(backend: &dyn Backend) {
    let store = backend.node().await;
    let ttl = Duration::from_secs(30);
    for (id, load) in [("c", 2), ("a", 7), ("b", 2), ("d", 9)] {
        store.heartbeat(&node_info(id, load), ttl).await.unwrap();
    }
    let nodes = store.nodes().await.unwrap();
    assert_eq!(nodes.len(), 4);
    // Ties broken by id.
    assert_eq!(least_loaded(&nodes).unwrap().id, "b");

    store.remove_node("b").await.unwrap();
    store.remove_node("b").await.unwrap();
    store.remove_node("never-there").await.unwrap();
    let nodes = store.nodes().await.unwrap();
    let ids: Vec<_> = nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["a", "c", "d"]);
    assert_eq!(least_loaded(&nodes).unwrap().id, "c");
    assert_eq!(least_loaded(&[]), None);
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<Vec<u8>>) -> Vec<u8> {
    timeout(DELIVERY, rx.recv())
        .await
        .expect("no message within the delivery time")
        .expect("subscription closed")
}

async fn publish_subscribe_across_nodes(backend: &dyn Backend) {
    let n1 = backend.node().await;
    let n2 = backend.node().await;
    let mut a = n1.subscribe("room:x").await.unwrap();
    let mut b = n2.subscribe("room:x").await.unwrap();
    let mut b2 = n2.subscribe("room:x").await.unwrap();
    let mut other = n1.subscribe("room:y").await.unwrap();

    let payload: Vec<u8> = (0..=255u8).chain(*b"{\"type\":\"offer\"}").collect();
    n2.publish("room:x", &payload).await.unwrap();
    for rx in [&mut a, &mut b, &mut b2] {
        assert_eq!(recv(rx).await, payload);
    }
    n1.publish("room:y", b"only y").await.unwrap();
    assert_eq!(recv(&mut other).await, b"only y");
    assert!(a.try_recv().is_err());
    assert!(b.try_recv().is_err());

    // A dropped receiver does not disturb the others; publishing to nobody is fine.
    drop(b2);
    n1.publish("room:x", b"again").await.unwrap();
    assert_eq!(recv(&mut a).await, b"again");
    assert_eq!(recv(&mut b).await, b"again");
    n1.publish("room:nobody", b"lost").await.unwrap();
}

async fn publish_keeps_order(backend: &dyn Backend) {
    let n1 = backend.node().await;
    let n2 = backend.node().await;
    let mut rx = n1.subscribe("ordered").await.unwrap();
    for i in 0..200u32 {
        n2.publish("ordered", &i.to_be_bytes()).await.unwrap();
    }
    for i in 0..200u32 {
        assert_eq!(recv(&mut rx).await, i.to_be_bytes());
    }
}

/// 5000 messages into a receiver nobody reads: it holds at most its capacity and the rest are
/// dropped and counted.
async fn subscriber_is_bounded(backend: &dyn Backend) {
    const SENT: usize = 5000;
    let n1 = backend.node().await;
    let n2 = backend.node().await;
    let rx = n1.subscribe("flood").await.unwrap();
    let dropped_before = n1.dropped_messages();
    for i in 0..SENT as u32 {
        n2.publish("flood", &i.to_be_bytes()).await.unwrap();
    }
    let deadline = Instant::now() + DELIVERY;
    loop {
        let dropped = (n1.dropped_messages() - dropped_before) as usize;
        assert!(rx.len() <= SUBSCRIBER_CAPACITY, "{} queued", rx.len());
        if rx.len() + dropped == SENT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} queued + {dropped} dropped of {SENT}",
            rx.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rx.len(), SUBSCRIBER_CAPACITY);
    assert_eq!(
        (n1.dropped_messages() - dropped_before) as usize,
        SENT - SUBSCRIBER_CAPACITY
    );
}

// ---------------------------------------------------------------------------------------------
// Redis only
// ---------------------------------------------------------------------------------------------

async fn raw(guard: &RedisGuard) -> redis::aio::MultiplexedConnection {
    redis::Client::open(guard.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn key_type(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> String {
    redis::cmd("TYPE").arg(key).query_async(conn).await.unwrap()
}

/// The keys are the ones the module documentation lists, with those types.
#[tokio::test]
async fn redis_key_layout() {
    let guard = RedisGuard::start();
    let store = RedisStore::connect(&guard.url()).await.unwrap();
    let mut conn = raw(&guard).await;
    store.create_room(&room("demo", "n1")).await.unwrap();
    store
        .add_participant("demo", &participant("p_1", "n1"))
        .await
        .unwrap();
    store
        .heartbeat(&node_info("n1", 0), Duration::from_secs(30))
        .await
        .unwrap();

    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "turnkey:node:n1",
            "turnkey:nodes",
            "turnkey:room:demo",
            "turnkey:room:demo:order",
            "turnkey:room:demo:participants",
        ]
    );
    assert_eq!(key_type(&mut conn, "turnkey:room:demo").await, "string");
    assert_eq!(
        key_type(&mut conn, "turnkey:room:demo:participants").await,
        "hash"
    );
    assert_eq!(key_type(&mut conn, "turnkey:room:demo:order").await, "list");
    assert_eq!(key_type(&mut conn, "turnkey:nodes").await, "set");
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg("turnkey:node:n1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl_ms > 25_000 && ttl_ms <= 30_000, "{ttl_ms}");
    let room_json: String = redis::cmd("GET")
        .arg("turnkey:room:demo")
        .query_async(&mut conn)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&room_json).unwrap();
    assert_eq!(value["node"], "n1");
    assert_eq!(value["mode"], "sfu");

    store.delete_room("demo").await.unwrap();
    store.remove_node("n1").await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("turnkey:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

/// `nodes()` drops ids whose entry expired from `turnkey:nodes`.
#[tokio::test]
async fn redis_dead_node_ids_are_removed() {
    let guard = RedisGuard::start();
    let store = RedisStore::connect(&guard.url()).await.unwrap();
    let mut conn = raw(&guard).await;
    store
        .heartbeat(&node_info("short", 0), Duration::from_millis(100))
        .await
        .unwrap();
    store
        .heartbeat(&node_info("long", 0), Duration::from_secs(30))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.nodes().await.unwrap(), [node_info("long", 0)]);
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("turnkey:nodes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, ["long"]);
}

/// Stored data that is not ours is a `Corrupt` error, not a panic.
#[tokio::test]
async fn redis_corrupt_entries_are_errors() {
    let guard = RedisGuard::start();
    let store = RedisStore::connect(&guard.url()).await.unwrap();
    let mut conn = raw(&guard).await;
    let _: () = redis::cmd("SET")
        .arg("turnkey:room:bad")
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.get_room("bad").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    let err = store.create_room(&room("bad", "n1")).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    // A key of the wrong type is the server's error.
    let _: () = redis::cmd("HSET")
        .arg("turnkey:room:hash")
        .arg("a")
        .arg("b")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.get_room("hash").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
}

/// When the pub/sub connection is killed, the store reconnects and subscribes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_pubsub_reconnects() {
    let guard = RedisGuard::start();
    let n1 = RedisStore::connect(&guard.url()).await.unwrap();
    let n2 = RedisStore::connect(&guard.url()).await.unwrap();
    let mut rx = n1.subscribe("survivor").await.unwrap();
    n2.publish("survivor", b"before").await.unwrap();
    assert_eq!(recv(&mut rx).await, b"before");

    let mut conn = raw(&guard).await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    // `TYPE pubsub` is a connection with a subscription: n1's (n2 subscribed nothing).
    assert_eq!(killed, 1, "one pub/sub connection per store");

    // Publish until the resubscribed connection delivers (messages sent while it was down
    // are lost: Redis pub/sub is at most once).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        n2.publish("survivor", b"after").await.unwrap();
        if let Ok(Some(msg)) = timeout(Duration::from_millis(100), rx.recv()).await {
            assert_eq!(msg, b"after");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery after the reconnect");
    }
    assert!(n1.pubsub_reconnects() >= 1);
    // New subscriptions work on the new connection too.
    let mut rx2 = n1.subscribe("late").await.unwrap();
    n2.publish("late", b"hi").await.unwrap();
    assert_eq!(recv(&mut rx2).await, b"hi");
}

/// Channels whose receivers were all dropped are unsubscribed at the next health tick
/// (every 5 s), so Redis stops sending them to this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unused_channels_are_unsubscribed() {
    let guard = RedisGuard::start();
    let store = RedisStore::connect(&guard.url()).await.unwrap();
    let mut conn = raw(&guard).await;
    let rx1 = store.subscribe("gone").await.unwrap();
    let rx2 = store.subscribe("gone").await.unwrap();
    let _kept = store.subscribe("kept").await.unwrap();
    async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(conn)
            .await
            .unwrap();
        n
    }
    // One Redis subscription per channel however many receivers this node has.
    assert_eq!(numsub(&mut conn, "turnkey:ch:gone").await, 1);
    drop((rx1, rx2));
    let deadline = Instant::now() + Duration::from_secs(12);
    while numsub(&mut conn, "turnkey:ch:gone").await != 0 {
        assert!(Instant::now() < deadline, "still subscribed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(numsub(&mut conn, "turnkey:ch:kept").await, 1);
    // Subscribing again after the sweep works.
    let mut rx = store.subscribe("gone").await.unwrap();
    store.publish("gone", b"back").await.unwrap();
    assert_eq!(recv(&mut rx).await, b"back");
}

/// With the server gone, operations fail with `Backend` errors in bounded time, and work again
/// once a server is back on the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_server_gone_is_a_backend_error() {
    let guard = RedisGuard::start();
    let port = guard.port;
    let store = RedisStore::connect(&guard.url()).await.unwrap();
    store.create_room(&room("a", "n1")).await.unwrap();
    drop(guard);

    let started = Instant::now();
    let err = store.get_room("a").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    let err = store.publish("c", b"x").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    eprintln!("commands failed after {:?}", started.elapsed());
    let err = store.subscribe("c").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend(_)), "{err}");
    eprintln!("subscribe failed after {:?}: {err}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A fresh server (empty) on the same port: the store recovers by itself.
    let _guard = RedisGuard::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.get_room("a").await {
            Ok(None) => break,
            Ok(Some(r)) => panic!("fresh server has {r:?}"),
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fresh server has no cached scripts: they are loaded again (NOSCRIPT fallback).
    let (_, created) = store.create_room(&room("a", "n2")).await.unwrap();
    assert!(created);
    store
        .add_participant("a", &participant("p_1", "n2"))
        .await
        .unwrap();
    assert_eq!(ids(&store, "a").await, ["p_1"]);
    let mut rx = store.subscribe("back").await.unwrap();
    store.publish("back", b"ok").await.unwrap();
    assert_eq!(recv(&mut rx).await, b"ok");
}
