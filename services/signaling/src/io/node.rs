//! One signaling node's shared state: the store, the local participant table ([`Hub`]), the
//! open connections and their bounded outbound queues, and the cross-node bus
//! (`turnkey:node:<id>` channels of the store). Also the node's background tasks: heartbeat,
//! bus subscriber, resume grace timer and the node-lost sweeper.

use crate::auth::Keys;
use crate::config::SignalingConfig;
use crate::io::sfu_link::Links;
use crate::metrics::SignalingMetrics;
use registry::{NodeInfo, ParticipantRecord, Store, StoreError};
use serde::{Deserialize, Serialize};
use signaling_proto::hub::{ConnId, Hub, ResumeKeys};
use signaling_proto::msg::{close, IceServer, LeaveReason, ServerMsg};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The bus channel of node `id`.
pub fn node_channel(id: &str) -> String {
    format!("turnkey:node:{id}")
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A message between nodes, published on the receiving node's channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Envelope {
    /// Deliver `frame` to participant `to`.
    Deliver {
        /// Room.
        room: String,
        /// Participant id.
        to: String,
        /// JSON text frame.
        frame: String,
    },
    /// Deliver `frame` to every local participant of `room` but `except`.
    Broadcast {
        /// Room.
        room: String,
        /// Participant not to send to.
        except: Option<String>,
        /// JSON text frame.
        frame: String,
    },
    /// The room was deleted: tell the local participants and close them with 4010.
    CloseRoom {
        /// Room.
        room: String,
        /// `room-closed.reason`.
        reason: String,
    },
    /// Participant `participant_id` resumed on another node: drop it here (close 4011).
    Takeover {
        /// Room.
        room: String,
        /// Participant id.
        participant_id: String,
    },
}

/// Closes a connection with a code, from any task.
#[derive(Debug, Default)]
pub struct KillSwitch {
    token: CancellationToken,
    reason: Mutex<Option<(u16, String)>>,
}

impl KillSwitch {
    /// Requests a close with `code`; the first request wins.
    pub fn kill(&self, code: u16, reason: &str) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some((code, reason.to_string()));
        }
        drop(r);
        self.token.cancel();
    }
    /// Resolves once a close was requested.
    pub async fn killed(&self) {
        self.token.cancelled().await
    }
    /// The requested close.
    pub fn reason(&self) -> (u16, String) {
        lock(&self.reason)
            .clone()
            .unwrap_or((close::GOING_AWAY, String::new()))
    }
}

struct ConnHandle {
    tx: mpsc::Sender<String>,
    kill: Arc<KillSwitch>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node's shared state. Locks are never held across an `.await`.
pub struct Node {
    /// The effective config.
    pub cfg: SignalingConfig,
    /// The shared store.
    pub store: Arc<dyn Store>,
    /// Metrics.
    pub metrics: SignalingMetrics,
    /// API keys.
    pub keys: Keys,
    /// Resume token keys.
    pub resume: ResumeKeys,
    /// What clients are told: base URL of this node.
    pub base_url: String,
    /// WebSocket URL of this node.
    pub ws_url: String,
    /// Cancelled on shutdown.
    pub shutdown: CancellationToken,
    /// Links of local participants of `sfu` rooms to their SFU node ([`crate::io::sfu_link`]).
    pub links: Links,
    /// Which browser origins may call the API and open WebSockets.
    pub origins: signaling_proto::origin::OriginPolicy,
    /// The node's drain: once started, the registry says so and no new room is placed here.
    pub drain: turnkey_runtime::drain::Drain,
    hub: Mutex<Hub>,
    conns: Mutex<HashMap<ConnId, ConnHandle>>,
    next_conn: AtomicU64,
    /// Since when every heartbeat of this node succeeded (None after one failed or timed out).
    beating_since: Mutex<Option<Instant>>,
}

impl Node {
    /// A node with no connections.
    pub fn new(
        cfg: SignalingConfig,
        store: Arc<dyn Store>,
        metrics: SignalingMetrics,
        base_url: String,
        shutdown: CancellationToken,
    ) -> Self {
        let keys = Keys::new(cfg.api_keys.clone());
        let resume_secret = cfg
            .api_keys
            .first()
            .map(|k| k.secret.clone())
            .unwrap_or_default();
        let ws_url = ws_url_of(&base_url);
        let origins = signaling_proto::origin::OriginPolicy::new(
            &cfg.allowed_origins,
            cfg.public_url.as_deref(),
        );
        Node {
            origins,
            drain: turnkey_runtime::drain::Drain::new(Duration::from_secs(cfg.drain_timeout_secs)),
            hub: Mutex::new(Hub::new(Duration::from_secs(cfg.resume_grace_secs))),
            resume: ResumeKeys::new(resume_secret.as_bytes()),
            keys,
            cfg,
            store,
            metrics,
            base_url,
            ws_url,
            shutdown,
            links: Links::default(),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            beating_since: Mutex::new(None),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.cfg.node_id
    }

    /// Runs a store operation, timing it in `signaling_store_latency_seconds{operation}`.
    pub async fn timed<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let r = fut.await;
        self.metrics
            .store_latency
            .get_or_create(&[("operation", op)])
            .observe(start.elapsed().as_secs_f64());
        if let Err(e) = &r {
            self.metrics
                .store_errors
                .get_or_create(&[("operation", op)])
                .inc();
            tracing::warn!(op, error = %e, "store operation failed");
        }
        r
    }

    /// The local participant table.
    pub fn hub(&self) -> MutexGuard<'_, Hub> {
        lock(&self.hub)
    }

    /// Registers a new connection and its outbound queue.
    pub fn register_conn(&self, tx: mpsc::Sender<String>, kill: Arc<KillSwitch>) -> ConnId {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns).insert(id, ConnHandle { tx, kill });
        self.metrics.connections.inc();
        id
    }

    /// Forgets a closed connection.
    pub fn unregister_conn(&self, id: ConnId) {
        if lock(&self.conns).remove(&id).is_some() {
            self.metrics.connections.dec();
        }
    }

    /// Open connections (the node's load).
    pub fn load(&self) -> u32 {
        u32::try_from(lock(&self.conns).len()).unwrap_or(u32::MAX)
    }

    /// `signaling_load_ratio`: connections against `capacity_connections`, in [0, 1].
    pub fn load_ratio(&self) -> f64 {
        (f64::from(self.load()) / f64::from(self.cfg.capacity_connections.max(1))).clamp(0.0, 1.0)
    }

    /// Closes connection `id` with `code`.
    pub fn kill(&self, id: ConnId, code: u16, reason: &str) {
        if let Some(c) = lock(&self.conns).get(&id) {
            c.kill.kill(code, reason);
        }
    }

    fn push(&self, conn: ConnId, frame: String) {
        let conns = lock(&self.conns);
        let Some(c) = conns.get(&conn) else {
            return;
        };
        if let Err(e) = c.tx.try_send(frame) {
            match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.metrics.drop_frame("queue_full");
                    self.metrics.slow_consumers.inc();
                    c.kill.kill(close::SLOW_CONSUMER, "slow consumer");
                }
                mpsc::error::TrySendError::Closed(_) => {}
            }
        }
    }

    /// Queues `frame` for local participant `pid` (dropped if it is in its grace period).
    pub fn deliver_local(&self, pid: &str, frame: &str) {
        let conn = self.hub().connection(pid);
        match conn {
            Some(c) => self.push(c, frame.to_string()),
            None => self.metrics.drop_frame("recipient_away"),
        }
    }

    /// Queues `frame` for every connected local participant of `room` but `except`.
    pub fn broadcast_local(&self, room: &str, except: Option<&str>, frame: &str) {
        let targets = self.hub().connected_in(room);
        for (pid, conn) in targets {
            if Some(pid.as_str()) != except {
                self.push(conn, frame.to_string());
            }
        }
    }

    /// Sends `frame` to participant `to`, through the bus if another node holds it.
    pub async fn send_to(&self, room: &str, to: &ParticipantRecord, frame: String) {
        if to.node == self.id() {
            self.deliver_local(&to.id, &frame);
        } else {
            let env = Envelope::Deliver {
                room: room.to_string(),
                to: to.id.clone(),
                frame,
            };
            self.publish(&to.node, &env).await;
        }
    }

    /// Sends `frame` to every participant of `room` (as listed in `parts`) but `except`: local
    /// ones directly, one bus message per other node.
    pub async fn broadcast(
        &self,
        room: &str,
        parts: &[ParticipantRecord],
        except: Option<&str>,
        frame: String,
    ) {
        self.broadcast_local(room, except, &frame);
        let others: BTreeSet<&str> = parts
            .iter()
            .filter(|p| p.node != self.id() && Some(p.id.as_str()) != except)
            .map(|p| p.node.as_str())
            .collect();
        for n in others {
            let env = Envelope::Broadcast {
                room: room.to_string(),
                except: except.map(str::to_string),
                frame: frame.clone(),
            };
            self.publish(n, &env).await;
        }
    }

    /// Publishes `env` on node `node`'s channel.
    pub async fn publish(&self, node: &str, env: &Envelope) {
        let payload = serde_json::to_vec(env).unwrap_or_default();
        let _ = self
            .timed("publish", self.store.publish(&node_channel(node), &payload))
            .await;
    }

    /// Tells the local participants of `room` it is closed, then closes them with 4010.
    pub fn close_room_local(&self, room: &str, reason: &str) {
        let frame = ServerMsg::RoomClosed {
            reason: reason.to_string(),
        }
        .to_text();
        let (members, connected) = {
            let mut hub = self.hub();
            let members = hub.members(room);
            let connected = hub.connected_in(room);
            for p in &members {
                hub.remove(p);
            }
            (members, connected)
        };
        for p in &members {
            self.links.close(p);
        }
        for (_, conn) in connected {
            self.push(conn, frame.clone());
            self.kill(conn, close::ROOM_CLOSED, "room closed");
        }
    }

    /// Handles a bus message addressed to this node.
    pub fn handle_envelope(&self, payload: &[u8]) {
        let env: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable bus message");
                return;
            }
        };
        match env {
            Envelope::Deliver { to, frame, .. } => self.deliver_local(&to, &frame),
            Envelope::Broadcast {
                room,
                except,
                frame,
            } => self.broadcast_local(&room, except.as_deref(), &frame),
            Envelope::CloseRoom { room, reason } => self.close_room_local(&room, &reason),
            Envelope::Takeover { participant_id, .. } => {
                let conn = {
                    let mut hub = self.hub();
                    let c = hub.connection(&participant_id);
                    hub.remove(&participant_id);
                    c
                };
                // The new node opened its own link (resume=1) before telling us.
                self.links.close(&participant_id);
                if let Some(c) = conn {
                    self.kill(c, close::REPLACED, "resumed elsewhere");
                }
            }
        }
    }

    /// STUN/TURN servers with REST credentials (draft-uberti-behave-turn-rest-00 §2.2) for
    /// `identity`, minted with the first (newest) TURN secret at `now_unix_secs`, and their
    /// lifetime in seconds. The REST user part (`<expiry>:<identity>`) is the authenticated
    /// identity (an access token's `sub`), so the TURN server's per-user quota counts people,
    /// not joins. With `token_exp_unix_secs` (the token's `exp`) the lifetime is
    /// [`credential_ttl_secs`]: the credential does not outlive the token by more than
    /// `turn_credential_grace_secs`.
    pub fn ice_servers(
        &self,
        identity: &str,
        token_exp_unix_secs: Option<u64>,
        now_unix_secs: u64,
    ) -> (Vec<IceServer>, u64) {
        let ttl = credential_ttl_secs(
            self.cfg.turn_ttl_secs,
            self.cfg.turn_credential_grace_secs,
            token_exp_unix_secs,
            now_unix_secs,
        );
        let user = identity;
        if self.cfg.turn_uris.is_empty() {
            return (Vec::new(), ttl);
        }
        match self.cfg.turn_secrets.first() {
            Some(secret) => {
                let c =
                    stun_proto::credential::mint_rest_credential(secret, user, ttl, now_unix_secs);
                self.metrics.turn_credentials.inc();
                (
                    vec![IceServer {
                        urls: self.cfg.turn_uris.clone(),
                        username: Some(c.username),
                        credential: Some(c.password),
                    }],
                    ttl,
                )
            }
            None => {
                // TURN URIs without credentials would make RTCPeerConnection throw.
                let stun: Vec<String> = self
                    .cfg
                    .turn_uris
                    .iter()
                    .filter(|u| u.starts_with("stun:") || u.starts_with("stuns:"))
                    .cloned()
                    .collect();
                if stun.is_empty() {
                    (Vec::new(), ttl)
                } else {
                    (
                        vec![IceServer {
                            urls: stun,
                            username: None,
                            credential: None,
                        }],
                        ttl,
                    )
                }
            }
        }
    }

    /// Closes the SFU links of participants this node no longer holds (a safety net: every
    /// place that lets go of a participant closes its link itself).
    pub fn close_orphan_links(&self) {
        for pid in self.links.participants() {
            if !self.hub().contains(&pid) {
                self.links.close(&pid);
            }
        }
    }

    /// Closes every connection with 1001 (shutdown).
    pub fn close_all(&self) {
        for c in lock(&self.conns).values() {
            c.kill.kill(close::GOING_AWAY, "server shutting down");
        }
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        let load = self.load();
        let ratio = self.load_ratio();
        self.metrics.load_ratio.set(ratio);
        let info = NodeInfo {
            id: self.id().to_string(),
            ws_url: self.ws_url.clone(),
            load,
            load_permille: registry::permille(ratio),
            draining: self.drain.is_draining(),
        };
        let ttl = Duration::from_secs(self.cfg.node_ttl_secs);
        let r = self
            .timed("heartbeat", self.store.heartbeat(&info, ttl))
            .await;
        self.note_beat(r.is_ok());
        r
    }

    /// The live channel nodes in the registry. A channel node that finds its own entry gone
    /// while it serves (a heartbeat that did not land within the TTL) registers again at once
    /// (`signaling_registry_rejoins_total`) instead of answering that no node is live.
    pub async fn live_nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let nodes = self.timed("nodes", self.store.nodes()).await?;
        if !self.cfg.role.channel()
            || self.shutdown.is_cancelled()
            || nodes.iter().any(|n| n.id == self.id())
        {
            return Ok(nodes);
        }
        self.heartbeat().await?;
        self.metrics.registry_rejoins.inc();
        tracing::warn!(node = %self.id(), "this node was missing from the registry: registered again");
        self.timed("nodes", self.store.nodes()).await
    }

    /// Records whether a heartbeat reached the store.
    fn note_beat(&self, ok: bool) {
        let mut since = lock(&self.beating_since);
        match (ok, *since) {
            (true, None) => *since = Some(Instant::now()),
            (false, _) => *since = None,
            (true, Some(_)) => {}
        }
    }

    /// True once this node's own heartbeats have reached the store for a whole node TTL
    /// without a failure. Until then another node missing from the store may only have missed
    /// its beats in the same store outage (or be beating again a moment later), so its
    /// participants are not yet counted as lost.
    fn may_judge_nodes(&self) -> bool {
        lock(&self.beating_since)
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(self.cfg.node_ttl_secs))
    }

    /// Grace periods that ended: remove the participant from the store (if this node still
    /// holds it there) and tell the room (`participant-left`, reason `timeout`).
    async fn expire_graces(&self) {
        let expired = self
            .hub()
            .poll_expired(tokio::time::Instant::now().into_std());
        for e in &expired {
            self.links.close(&e.participant_id);
        }
        for e in expired {
            let Ok(parts) = self
                .timed("participants", self.store.participants(&e.room))
                .await
            else {
                continue;
            };
            let mine = parts
                .iter()
                .any(|p| p.id == e.participant_id && p.node == self.id());
            if !mine {
                continue;
            }
            if let Ok(true) = self
                .timed(
                    "remove_participant",
                    self.store.remove_participant(&e.room, &e.participant_id),
                )
                .await
            {
                tracing::info!(room = %e.room, participant = %e.participant_id, reason = "timeout", "participant left (resume grace over)");
                let frame = ServerMsg::ParticipantLeft {
                    participant_id: e.participant_id.clone(),
                    reason: LeaveReason::Timeout,
                }
                .to_text();
                self.broadcast(&e.room, &parts, Some(&e.participant_id), frame)
                    .await;
            }
        }
    }

    /// Deletes the rooms hosted by this node that have been empty for `room_idle_secs` (0:
    /// never). `empty_since` remembers, across calls, since when each empty room was seen
    /// empty; a room with participants again is forgotten.
    pub async fn sweep_idle_rooms(&self, empty_since: &mut HashMap<String, Instant>) {
        let idle = Duration::from_secs(self.cfg.room_idle_secs);
        if idle.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let Ok(page) = self
                .timed("list_rooms", self.store.list_rooms(after.as_deref(), 1000))
                .await
            else {
                return;
            };
            let full = page.len() == 1000;
            after = page.last().map(|r| r.name.clone());
            for room in page.into_iter().filter(|r| r.node == self.id()) {
                let Ok(parts) = self
                    .timed("participants", self.store.participants(&room.name))
                    .await
                else {
                    continue;
                };
                if !parts.is_empty() {
                    continue;
                }
                seen.insert(room.name.clone());
                let since = *empty_since.entry(room.name.clone()).or_insert(now);
                if now.saturating_duration_since(since) < idle {
                    continue;
                }
                // Someone may have joined since the check above: ask once more.
                let still_empty = self
                    .timed("participants", self.store.participants(&room.name))
                    .await
                    .is_ok_and(|p| p.is_empty());
                if still_empty
                    && self
                        .timed("delete_room", self.store.delete_room(&room.name))
                        .await
                        .unwrap_or(false)
                {
                    tracing::info!(room = %room.name, idle_secs = idle.as_secs(), "room deleted: empty for the idle time");
                    self.metrics.rooms_expired.inc();
                }
                seen.remove(&room.name);
                empty_since.remove(&room.name);
            }
            if !full {
                break;
            }
        }
        empty_since.retain(|name, _| seen.contains(name));
    }

    /// For rooms with local participants: participants whose node is no longer live are
    /// removed and the room is told (`participant-left`, reason `node-lost`).
    async fn sweep_lost_nodes(&self) {
        let rooms = self.hub().rooms();
        self.metrics.rooms.set(rooms.len() as i64);
        if rooms.is_empty() || !self.may_judge_nodes() {
            return;
        }
        let Ok(nodes) = self.timed("nodes", self.store.nodes()).await else {
            return;
        };
        let live: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        for room in rooms {
            let Ok(parts) = self
                .timed("participants", self.store.participants(&room))
                .await
            else {
                continue;
            };
            for p in parts
                .iter()
                .filter(|p| p.node != self.id() && !live.contains(p.node.as_str()))
            {
                if let Ok(true) = self
                    .timed(
                        "remove_participant",
                        self.store.remove_participant(&room, &p.id),
                    )
                    .await
                {
                    tracing::info!(%room, participant = %p.id, node = %p.node, "node lost");
                    let frame = ServerMsg::ParticipantLeft {
                        participant_id: p.id.clone(),
                        reason: LeaveReason::NodeLost,
                    }
                    .to_text();
                    let rest: Vec<ParticipantRecord> = parts
                        .iter()
                        .filter(|q| live.contains(q.node.as_str()) || q.node == self.id())
                        .cloned()
                        .collect();
                    self.broadcast(&room, &rest, Some(&p.id), frame).await;
                }
            }
        }
    }

    /// Starts the channel role's background tasks: bus subscriber, heartbeat (the first one
    /// before returning, so the node is placeable at once), grace timer, node-lost sweeper.
    pub async fn start_channel_tasks(self: &Arc<Self>) -> Result<(), StoreError> {
        let mut rx = self
            .timed("subscribe", self.store.subscribe(&node_channel(self.id())))
            .await?;
        self.heartbeat().await?;
        let node = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    m = rx.recv() => match m {
                        Some(payload) => node.handle_envelope(&payload),
                        None => {
                            tracing::error!("bus subscription ended: subscribing again");
                            loop {
                                tokio::select! {
                                    _ = node.shutdown.cancelled() => return,
                                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                                }
                                let channel = node_channel(node.id());
                                if let Ok(r) = node.timed("subscribe", node.store.subscribe(&channel)).await {
                                    rx = r;
                                    break;
                                }
                            }
                        }
                    },
                }
            }
        });
        // The heartbeat has a task of its own: the node stays live in the store however long
        // a sweep takes (one store round trip per room).
        let (beating, timed_out) = (self.clone(), self.clone());
        tokio::spawn(turnkey_runtime::heartbeat::keep_beating(
            Duration::from_secs(self.cfg.heartbeat_secs.max(1)),
            self.shutdown.clone(),
            self.drain.clone(),
            move || {
                let node = beating.clone();
                async move { node.heartbeat().await.is_ok() }
            },
            move || {
                timed_out.note_beat(false);
                timed_out
                    .metrics
                    .store_errors
                    .get_or_create(&[("operation", "heartbeat")])
                    .inc();
                tracing::warn!("heartbeat took longer than its period: trying again");
            },
        ));
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_secs(node.cfg.heartbeat_secs.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    _ = tick.tick() => node.sweep_lost_nodes().await,
                }
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            // Often enough that a room goes within a fifth of the idle time of its due time.
            let every = (node.cfg.room_idle_secs / 5).clamp(1, 30);
            let mut tick = tokio::time::interval(Duration::from_secs(every));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut empty_since = HashMap::new();
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    _ = tick.tick() => node.sweep_idle_rooms(&mut empty_since).await,
                }
            }
        });
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = node.shutdown.cancelled() => break,
                    _ = tick.tick() => {
                        node.expire_graces().await;
                        node.close_orphan_links();
                        let rooms = node.hub().room_count();
                        node.metrics.rooms.set(rooms as i64);
                    }
                }
            }
        });
        Ok(())
    }
}

/// Lifetime of a TURN credential minted at `now_unix_secs`: `turn_ttl_secs`, and for a
/// credential bound to an access token expiring at `token_exp_unix_secs`, no later than
/// `grace_secs` after that: min(turn_ttl, exp - now + grace), at least 1 s.
pub fn credential_ttl_secs(
    turn_ttl_secs: u64,
    grace_secs: u64,
    token_exp_unix_secs: Option<u64>,
    now_unix_secs: u64,
) -> u64 {
    let bound = token_exp_unix_secs.map_or(u64::MAX, |exp| {
        exp.saturating_add(grace_secs).saturating_sub(now_unix_secs)
    });
    turn_ttl_secs.min(bound).max(1)
}

/// `http://h/x` -> `ws://h/x/v1/ws`, `https://` -> `wss://`.
pub fn ws_url_of(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/v1/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_node(queue: usize) -> Node {
        let mut cfg = crate::config::SignalingConfig::with_defaults(&Default::default());
        cfg.outbound_queue = queue;
        cfg.node_id = "n1".into();
        Node::new(
            cfg,
            Arc::new(registry::memory::MemoryStore::new()),
            SignalingMetrics::default(),
            "http://127.0.0.1:1".into(),
            CancellationToken::new(),
        )
    }

    fn record(id: &str, node: &str) -> ParticipantRecord {
        ParticipantRecord {
            id: id.into(),
            identity: id.into(),
            name: id.into(),
            node: node.into(),
            joined_at: 0,
        }
    }

    /// A node whose own beats have not reached the store for a whole TTL does not count the
    /// participants of a node missing from the store as lost: after a store outage, that node
    /// may be about to beat again.
    #[tokio::test]
    async fn a_node_judges_other_nodes_lost_only_after_its_own_beats_held_for_a_ttl() {
        let node = test_node(8);
        let (tx, _rx) = mpsc::channel(8);
        let conn = node.register_conn(tx, Arc::new(KillSwitch::default()));
        node.hub().attach("r", "p_1", conn);
        let room = registry::RoomRecord {
            name: "r".into(),
            mode: registry::RoomMode::Mesh,
            capacity: 4,
            node: "n1".into(),
            created_at: 0,
            sfu: None,
        };
        node.store.create_room(&room).await.unwrap();
        node.store
            .add_participant("r", &record("p_1", "n1"))
            .await
            .unwrap();
        node.store
            .add_participant("r", &record("p_2", "n2"))
            .await
            .unwrap();
        let ids = |parts: Vec<ParticipantRecord>| -> Vec<String> {
            parts.into_iter().map(|p| p.id).collect()
        };

        // Never beaten, then just beaten: n2 (not in the store) is not judged yet.
        node.sweep_lost_nodes().await;
        node.heartbeat().await.unwrap();
        assert!(!node.may_judge_nodes());
        node.sweep_lost_nodes().await;
        assert_eq!(
            ids(node.store.participants("r").await.unwrap()),
            ["p_1", "p_2"]
        );

        // A failed beat starts the wait again.
        let ttl = Duration::from_secs(node.cfg.node_ttl_secs);
        *lock(&node.beating_since) = Instant::now().checked_sub(ttl);
        assert!(node.may_judge_nodes());
        node.note_beat(false);
        assert!(!node.may_judge_nodes());
        node.sweep_lost_nodes().await;
        assert_eq!(
            ids(node.store.participants("r").await.unwrap()),
            ["p_1", "p_2"]
        );

        // Beating for a whole TTL: n2's participant is lost, the local one stays.
        node.note_beat(true);
        *lock(&node.beating_since) = Instant::now().checked_sub(ttl);
        node.sweep_lost_nodes().await;
        assert_eq!(ids(node.store.participants("r").await.unwrap()), ["p_1"]);
    }

    /// A channel node missing from the registry while it serves (its entry expired) registers
    /// again when it looks the nodes up, so a join it answers never finds no live node.
    #[tokio::test]
    async fn a_serving_node_missing_from_the_registry_registers_again() {
        let node = test_node(8);
        assert!(node.store.nodes().await.unwrap().is_empty());
        let live = node.live_nodes().await.unwrap();
        assert_eq!(
            live.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            ["n1"]
        );
        assert_eq!(node.metrics.registry_rejoins.get(), 1);
        // Present: nothing more to do.
        node.live_nodes().await.unwrap();
        assert_eq!(node.metrics.registry_rejoins.get(), 1);
        // A session-only node is not in the registry of channel nodes.
        let mut session = test_node(8);
        session.cfg.role = crate::config::Role::Session;
        assert!(session.live_nodes().await.unwrap().is_empty());
        assert_eq!(session.metrics.registry_rejoins.get(), 0);
    }

    #[test]
    fn a_full_outbound_queue_closes_with_4003_and_is_counted() {
        let node = test_node(2);
        let (tx, mut rx) = mpsc::channel(2);
        let kill = Arc::new(KillSwitch::default());
        let conn = node.register_conn(tx, kill.clone());
        node.hub().attach("r", "p_1", conn);
        node.deliver_local("p_1", "a");
        node.deliver_local("p_1", "b");
        assert!(!kill.token.is_cancelled());
        node.deliver_local("p_1", "c");
        assert!(kill.token.is_cancelled());
        assert_eq!(kill.reason().0, close::SLOW_CONSUMER);
        assert_eq!(node.metrics.slow_consumers.get(), 1);
        assert_eq!(rx.try_recv().unwrap(), "a");
        // Frames for a participant in its grace period are dropped and counted.
        assert!(node.hub().handle_disconnect("p_1", conn, Instant::now()));
        node.deliver_local("p_1", "d");
        assert_eq!(
            node.metrics
                .dropped
                .get_or_create(&[("reason", "recipient_away")])
                .get(),
            1
        );
        assert_eq!(node.load(), 1);
        node.unregister_conn(conn);
        assert_eq!(node.load(), 0);
    }

    #[tokio::test]
    async fn bus_envelopes_reach_local_participants() {
        let node = test_node(8);
        let (tx, mut rx) = mpsc::channel(8);
        let kill = Arc::new(KillSwitch::default());
        let conn = node.register_conn(tx, kill.clone());
        node.hub().attach("r", "p_1", conn);
        let env = |e: Envelope| serde_json::to_vec(&e).unwrap();
        node.handle_envelope(&env(Envelope::Deliver {
            room: "r".into(),
            to: "p_1".into(),
            frame: "one".into(),
        }));
        node.handle_envelope(&env(Envelope::Broadcast {
            room: "r".into(),
            except: Some("p_1".into()),
            frame: "not me".into(),
        }));
        node.handle_envelope(&env(Envelope::Broadcast {
            room: "r".into(),
            except: None,
            frame: "two".into(),
        }));
        node.handle_envelope(b"garbage");
        assert_eq!(rx.try_recv().unwrap(), "one");
        assert_eq!(rx.try_recv().unwrap(), "two");
        assert!(rx.try_recv().is_err());
        node.handle_envelope(&env(Envelope::CloseRoom {
            room: "r".into(),
            reason: "deleted".into(),
        }));
        assert!(rx.try_recv().unwrap().contains("room-closed"));
        assert_eq!(kill.reason().0, close::ROOM_CLOSED);
        assert!(!node.hub().contains("p_1"));
    }

    #[test]
    fn ice_servers_use_the_newest_secret() {
        let mut node = test_node(1);
        node.cfg.turn_uris = vec!["stun:s:3478".into(), "turn:t:3478".into()];
        node.cfg.turn_secrets = vec!["new".into(), "old".into()];
        let (servers, ttl) = node.ice_servers("alice", None, 1_000);
        assert_eq!(ttl, 86_400);
        let s = &servers[0];
        let user = s.username.as_deref().unwrap();
        assert_eq!(user, "87400:alice");
        assert_eq!(
            s.credential.as_deref().unwrap(),
            stun_proto::credential::rest_password("new", user)
        );
        node.cfg.turn_secrets.clear();
        let (servers, _) = node.ice_servers("alice", None, 1_000);
        assert_eq!(servers[0].urls, vec!["stun:s:3478".to_string()]);
        assert!(servers[0].username.is_none());
    }

    #[test]
    fn credentials_are_per_identity_and_end_with_the_token_plus_grace() {
        let mut node = test_node(1);
        node.cfg.turn_uris = vec!["turn:t:3478".into()];
        node.cfg.turn_secrets = vec!["s".into()];
        node.cfg.turn_ttl_secs = 86_400;
        node.cfg.turn_credential_grace_secs = 300;
        let now = 1_000_000;
        // A token valid one more hour: the credential ends 300 s after it.
        let (servers, ttl) = node.ice_servers("alice", Some(now + 3600), now);
        assert_eq!(ttl, 3600 + 300);
        let user = servers[0].username.clone().unwrap();
        assert_eq!(user, format!("{}:alice", now + 3900));
        assert_eq!(stun_proto::credential::quota_name(&user), "alice");
        // Two joins of one identity share the quota name.
        let (again, _) = node.ice_servers("alice", Some(now + 3600), now + 10);
        assert_eq!(
            stun_proto::credential::quota_name(again[0].username.as_deref().unwrap()),
            "alice"
        );
        // A short turn_ttl still wins; a token at its leeway end gets at least 1 s.
        node.cfg.turn_ttl_secs = 600;
        assert_eq!(node.ice_servers("a", Some(now + 3600), now).1, 600);
        assert_eq!(credential_ttl_secs(600, 0, Some(now - 3), now), 1);
        assert_eq!(credential_ttl_secs(600, 300, Some(now), now), 300);
        assert_eq!(credential_ttl_secs(600, 300, None, now), 600);
        assert_eq!(credential_ttl_secs(600, u64::MAX, Some(u64::MAX), 0), 600);
    }

    #[test]
    fn ws_urls() {
        assert_eq!(
            ws_url_of("http://127.0.0.1:8080"),
            "ws://127.0.0.1:8080/v1/ws"
        );
        assert_eq!(
            ws_url_of("https://sig.example.com/"),
            "wss://sig.example.com/v1/ws"
        );
        assert_eq!(
            ws_url_of("https://example.com/signal"),
            "wss://example.com/signal/v1/ws"
        );
    }

    #[test]
    fn envelopes_round_trip() {
        let e = Envelope::Broadcast {
            room: "r".into(),
            except: Some("p_1".into()),
            frame: "{}".into(),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(text.contains("\"kind\":\"broadcast\""), "{text}");
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), e);
    }
}
