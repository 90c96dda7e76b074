//! The SFU node registry and the room's SFU compare-and-set, against both stores: the
//! embedded [`MemoryStore`] and [`RedisStore`] on a real `redis-server` (Debian's, started per
//! test on a free loopback port with no persistence, as the workspace's
//! `tests/signaling_store.rs` does).

use registry::memory::MemoryStore;
use registry::redis::RedisStore;
use registry::{least_loaded_sfu, NodeInfo, RoomMode, RoomRecord, SfuNodeInfo, Store};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A throwaway `redis-server` on a free loopback port; killed on drop.
struct RedisGuard {
    child: Child,
    port: u16,
}

impl RedisGuard {
    fn start() -> RedisGuard {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash scripts/test.sh installs it)");
        let guard = RedisGuard { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping(SocketAddr::from(([127, 0, 0, 1], port))) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        guard
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    s.write_all(b"*1\r\n$4\r\nPING\r\n").is_ok()
        && s.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn sfu_node(id: &str, load: u32) -> SfuNodeInfo {
    SfuNodeInfo {
        id: id.into(),
        url: format!("ws://{id}.invalid:8090"),
        load,
        load_permille: 0,
        draining: false,
    }
}

fn room(name: &str) -> RoomRecord {
    RoomRecord {
        name: name.into(),
        mode: RoomMode::Sfu,
        capacity: 8,
        node: "n1".into(),
        created_at: 1_700_000_000,
        sfu: None,
    }
}

async fn registry(store: &dyn Store) {
    assert!(store.sfu_nodes().await.unwrap().is_empty());
    store
        .sfu_heartbeat(&sfu_node("s2", 5), Duration::from_secs(60))
        .await
        .unwrap();
    store
        .sfu_heartbeat(&sfu_node("s1", 5), Duration::from_millis(300))
        .await
        .unwrap();
    // A signaling node with the same id lives in its own registry.
    store
        .heartbeat(
            &NodeInfo {
                id: "s1".into(),
                ws_url: "ws://x/v1/ws".into(),
                load: 0,
                load_permille: 0,
                draining: false,
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let nodes = store.sfu_nodes().await.unwrap();
    assert_eq!(nodes, [sfu_node("s1", 5), sfu_node("s2", 5)]);
    assert_eq!(least_loaded_sfu(&nodes).unwrap().id, "s1", "ties by id");
    // Refresh with a new load.
    store
        .sfu_heartbeat(&sfu_node("s2", 1), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        least_loaded_sfu(&store.sfu_nodes().await.unwrap()).unwrap(),
        &sfu_node("s2", 1)
    );
    // s1 expires (real time: Redis expires keys by its own clock).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.sfu_nodes().await.unwrap(), [sfu_node("s2", 1)]);
    assert_eq!(store.nodes().await.unwrap().len(), 1);
    store.remove_sfu_node("s2").await.unwrap();
    store.remove_sfu_node("s2").await.unwrap();
    assert!(store.sfu_nodes().await.unwrap().is_empty());
}

async fn room_sfu_cas(store: Arc<dyn Store>) {
    assert_eq!(store.set_room_sfu("r", None, "s1").await.unwrap(), None);
    store.create_room(&room("r")).await.unwrap();
    assert_eq!(store.get_room("r").await.unwrap().unwrap().sfu, None);
    let r = store.set_room_sfu("r", Some("s9"), "s1").await.unwrap();
    assert_eq!(r.unwrap().sfu, None);
    // Concurrent placements: exactly one wins, everyone sees the winner.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .set_room_sfu("r", None, &format!("s{i}"))
                    .await
                    .unwrap()
                    .unwrap()
                    .sfu
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    assert!(
        seen.iter().all(|s| s.is_some() && *s == seen[0]),
        "{seen:?}"
    );
    let winner = seen[0].clone().unwrap();
    let r = store
        .set_room_sfu("r", Some(&winner), "s-next")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.sfu.as_deref(), Some("s-next"));
    assert_eq!((r.node.as_str(), r.capacity), ("n1", 8));
    // move_room keeps the SFU.
    let r = store.move_room("r", "n1", "n2").await.unwrap().unwrap();
    assert_eq!(r.sfu.as_deref(), Some("s-next"));
    assert_eq!(store.get_room("r").await.unwrap().unwrap(), r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sfu_registry() {
    registry(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_room_sfu_cas() {
    room_sfu_cas(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sfu_registry() {
    let redis = RedisGuard::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    registry(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_room_sfu_cas() {
    let redis = RedisGuard::start();
    let store = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    room_sfu_cas(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rooms_written_before_sfu_support_still_decode() {
    let redis = RedisGuard::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let old = r#"{"name":"old","mode":"mesh","capacity":4,"node":"n1","created_at":1}"#;
    let () = redis::cmd("SET")
        .arg("turnkey:room:old")
        .arg(old)
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = store.get_room("old").await.unwrap().unwrap();
    assert_eq!(r.sfu, None);
    assert_eq!(r.mode, RoomMode::Mesh);
    let r = store
        .set_room_sfu("old", None, "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.sfu.as_deref(), Some("s1"));
}
