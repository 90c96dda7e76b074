//! The participants whose WebSocket this node holds, as a plain state machine: which connection
//! serves which participant, who is in their resume grace period and when it ends (time passed
//! in), plus resume tokens (`PROTOCOL.md`, "Resume").
//!
//! Room membership across nodes lives in the [`registry`]; this is only the local part.

use base64::Engine;
use ring::hmac;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// A WebSocket connection of this node.
pub type ConnId = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LocalState {
    Connected(ConnId),
    Grace { deadline: Instant },
}

#[derive(Clone, Debug)]
struct Local {
    room: String,
    state: LocalState,
}

/// A participant whose grace period ended without a resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// Its room.
    pub room: String,
    /// Its id.
    pub participant_id: String,
}

/// Local participants and their grace deadlines.
#[derive(Debug)]
pub struct Hub {
    grace: Duration,
    parts: HashMap<String, Local>,
    /// room -> number of local participants (connected or in grace).
    rooms: BTreeMap<String, usize>,
}

impl Hub {
    /// An empty hub; dropped connections are kept `grace` long.
    pub fn new(grace: Duration) -> Self {
        Hub {
            grace,
            parts: HashMap::new(),
            rooms: BTreeMap::new(),
        }
    }

    /// Binds participant `pid` of `room` to connection `conn` (a join or a resume). Returns the
    /// connection it replaces, which should be closed with 4011.
    pub fn attach(&mut self, room: &str, pid: &str, conn: ConnId) -> Option<ConnId> {
        let old = self.parts.insert(
            pid.to_string(),
            Local {
                room: room.to_string(),
                state: LocalState::Connected(conn),
            },
        );
        match old {
            Some(old) => {
                if old.room != room {
                    self.dec(&old.room);
                    *self.rooms.entry(room.to_string()).or_default() += 1;
                }
                match old.state {
                    LocalState::Connected(c) if c != conn => Some(c),
                    _ => None,
                }
            }
            None => {
                *self.rooms.entry(room.to_string()).or_default() += 1;
                None
            }
        }
    }

    /// Connection `conn` of `pid` dropped without `leave` at `now`: the grace period starts.
    /// False if `conn` no longer serves `pid` (replaced or removed): nothing to do.
    pub fn handle_disconnect(&mut self, pid: &str, conn: ConnId, now: Instant) -> bool {
        match self.parts.get_mut(pid) {
            Some(l) if l.state == LocalState::Connected(conn) => {
                l.state = LocalState::Grace {
                    deadline: now + self.grace,
                };
                true
            }
            _ => false,
        }
    }

    /// Forgets `pid` (left, removed, taken over by another node). Returns its room.
    pub fn remove(&mut self, pid: &str) -> Option<String> {
        let l = self.parts.remove(pid)?;
        self.dec(&l.room);
        Some(l.room)
    }

    fn dec(&mut self, room: &str) {
        if let Some(n) = self.rooms.get_mut(room) {
            *n -= 1;
            if *n == 0 {
                self.rooms.remove(room);
            }
        }
    }

    /// The connection serving `pid`, if it is connected here.
    pub fn connection(&self, pid: &str) -> Option<ConnId> {
        match self.parts.get(pid)?.state {
            LocalState::Connected(c) => Some(c),
            LocalState::Grace { .. } => None,
        }
    }

    /// True if `pid` is held here (connected or in grace).
    pub fn contains(&self, pid: &str) -> bool {
        self.parts.contains_key(pid)
    }

    /// The room of `pid`, if held here.
    pub fn room_of(&self, pid: &str) -> Option<&str> {
        self.parts.get(pid).map(|l| l.room.as_str())
    }

    /// Local participants of `room` that are connected: (participant id, connection).
    pub fn connected_in(&self, room: &str) -> Vec<(String, ConnId)> {
        self.parts
            .iter()
            .filter(|(_, l)| l.room == room)
            .filter_map(|(p, l)| match l.state {
                LocalState::Connected(c) => Some((p.clone(), c)),
                LocalState::Grace { .. } => None,
            })
            .collect()
    }

    /// Every local participant of `room` (connected or in grace).
    pub fn members(&self, room: &str) -> Vec<String> {
        self.parts
            .iter()
            .filter(|(_, l)| l.room == room)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// Rooms with local participants.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    /// Number of rooms with local participants.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Participants whose grace period ended at or before `now`; they are forgotten.
    #[must_use]
    pub fn poll_expired(&mut self, now: Instant) -> Vec<Expired> {
        let due: Vec<String> = self
            .parts
            .iter()
            .filter(|(_, l)| matches!(l.state, LocalState::Grace { deadline } if deadline <= now))
            .map(|(p, _)| p.clone())
            .collect();
        due.into_iter()
            .filter_map(|p| {
                let room = self.remove(&p)?;
                Some(Expired {
                    room,
                    participant_id: p,
                })
            })
            .collect()
    }

    /// The next grace deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.parts
            .values()
            .filter_map(|l| match l.state {
                LocalState::Grace { deadline } => Some(deadline),
                LocalState::Connected(_) => None,
            })
            .min()
    }
}

/// Mints and checks resume tokens: `r_` + base64url(`room` NUL `pid` NUL HMAC-SHA256 tag),
/// so any node sharing the key can check one without shared state. Whether the participant
/// is still in the room (grace not over) is for the store to say.
#[derive(Clone)]
pub struct ResumeKeys {
    key: hmac::Key,
}

impl std::fmt::Debug for ResumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKeys(<redacted>)")
    }
}

const TAG_BYTES: usize = 16;

impl ResumeKeys {
    /// Keys derived from `secret` (every node of a deployment must use the same).
    pub fn new(secret: &[u8]) -> Self {
        let mut material = b"turnkey-signaling-resume\0".to_vec();
        material.extend_from_slice(secret);
        ResumeKeys {
            key: hmac::Key::new(hmac::HMAC_SHA256, &material),
        }
    }

    fn tag(&self, room: &str, pid: &str) -> Vec<u8> {
        let msg = format!("{room}\0{pid}");
        hmac::sign(&self.key, msg.as_bytes()).as_ref()[..TAG_BYTES].to_vec()
    }

    /// The resume token of participant `pid` in `room`.
    pub fn mint(&self, room: &str, pid: &str) -> String {
        let mut raw = format!("{room}\0{pid}\0").into_bytes();
        raw.extend_from_slice(&self.tag(room, pid));
        format!(
            "r_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        )
    }

    /// The participant id in `token` if it is genuine and for `room`.
    pub fn verify(&self, token: &str, room: &str) -> Option<String> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.strip_prefix("r_")?)
            .ok()?;
        let mut parts = raw.splitn(3, |b| *b == 0);
        let r = std::str::from_utf8(parts.next()?).ok()?;
        let pid = std::str::from_utf8(parts.next()?).ok()?;
        let tag = parts.next()?;
        let expected = self.tag(r, pid);
        let genuine: bool = expected.as_slice().ct_eq(tag).into();
        (genuine && r == room).then(|| pid.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn grace_period_with_virtual_time() {
        let t0 = Instant::now();
        let mut hub = Hub::new(Duration::from_secs(20));
        assert_eq!(hub.attach("demo", "p_a", 1), None);
        assert_eq!(hub.attach("demo", "p_b", 2), None);
        assert_eq!(hub.room_count(), 1);
        assert_eq!(hub.connection("p_a"), Some(1));
        // p_a drops; it stays in the room but gets no more frames.
        assert!(hub.handle_disconnect("p_a", 1, t0));
        assert_eq!(hub.connection("p_a"), None);
        assert!(hub.contains("p_a"));
        assert_eq!(hub.poll_timeout(), Some(t0 + Duration::from_secs(20)));
        assert!(hub.poll_expired(t0 + Duration::from_secs(19)).is_empty());
        // A stale disconnect of an old connection changes nothing.
        assert!(!hub.handle_disconnect("p_b", 99, t0));
        let expired = hub.poll_expired(t0 + Duration::from_secs(20));
        assert_eq!(
            expired,
            vec![Expired {
                room: "demo".into(),
                participant_id: "p_a".into()
            }]
        );
        assert!(!hub.contains("p_a"));
        assert_eq!(hub.poll_timeout(), None);
        assert_eq!(hub.remove("p_b"), Some("demo".into()));
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn resume_within_grace_keeps_the_participant() {
        let t0 = Instant::now();
        let mut hub = Hub::new(Duration::from_secs(20));
        hub.attach("demo", "p_a", 1);
        assert!(hub.handle_disconnect("p_a", 1, t0));
        assert_eq!(hub.attach("demo", "p_a", 2), None);
        assert_eq!(hub.connection("p_a"), Some(2));
        assert!(hub.poll_expired(t0 + Duration::from_secs(60)).is_empty());
        // Resume while the old connection is still up: it is replaced.
        assert_eq!(hub.attach("demo", "p_a", 3), Some(2));
        assert!(!hub.handle_disconnect("p_a", 2, t0));
        assert_eq!(hub.connected_in("demo"), vec![("p_a".to_string(), 3)]);
        assert_eq!(hub.room_count(), 1);
    }

    #[test]
    fn resume_tokens_are_bound_to_room_and_key() {
        let k = ResumeKeys::new(b"secret");
        let t = k.mint("demo", "p_abc");
        assert_eq!(k.verify(&t, "demo"), Some("p_abc".into()));
        assert_eq!(k.verify(&t, "other"), None);
        assert_eq!(ResumeKeys::new(b"other").verify(&t, "demo"), None);
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(k.verify(&forged, "demo"), None);
        for junk in ["", "r_", "r_!!!", "x_abc", "r_AAAA"] {
            assert_eq!(k.verify(junk, "demo"), None);
        }
    }
}
