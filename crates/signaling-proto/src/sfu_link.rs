//! The link between a signaling node and an SFU node (services/sfu/PROTOCOL.md, "The link"):
//! one WebSocket per participant, opened by signaling at [`PATH`] with the query
//! [`LinkQuery`] and `Authorization: Bearer <sfu secret>`, carrying the participant's SFU
//! messages as text frames both ways, and closed with one of the [`LinkClose`] codes. Both ends
//! use these definitions, so the contract is written once.

use serde::Deserialize;

/// The path of the link endpoint on an SFU node's link listener.
pub const PATH: &str = "/v1/signal";

/// Longest participant id the SFU accepts on a link, in bytes.
pub const MAX_PARTICIPANT_BYTES: usize = 128;

/// The query of a link request: `?room=R&participant=P&name=N[&resume=1]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct LinkQuery {
    /// The room (the room name rule of [`crate::room::valid_room_name`]).
    pub room: String,
    /// The participant id, unique in the room (1..=[`MAX_PARTICIPANT_BYTES`]).
    pub participant: String,
    /// Display name (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// `1` when the link replaces one lost while the participant stayed in the room.
    #[serde(default)]
    pub resume: Option<String>,
}

/// Why an SFU node refuses a link request (HTTP 400 with `{"error":"bad_request"}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkQueryError {
    /// The room breaks the room name rule.
    #[error("room must follow the room name rule (1..=128 of [A-Za-z0-9._-])")]
    BadRoom,
    /// The participant id is empty or too long.
    #[error("participant must be 1..=128 bytes")]
    BadParticipant,
}

impl LinkQuery {
    /// A query for `participant` of `room`.
    pub fn new(room: &str, participant: &str, name: &str, resume: bool) -> Self {
        LinkQuery {
            room: room.to_string(),
            participant: participant.to_string(),
            name: Some(name.to_string()),
            resume: resume.then(|| "1".to_string()),
        }
    }

    /// True when this link resumes a lost one.
    pub fn is_resume(&self) -> bool {
        self.resume.as_deref() == Some("1")
    }

    /// Checks the room name and participant id.
    pub fn validate(&self) -> Result<(), LinkQueryError> {
        if !crate::room::valid_room_name(&self.room) {
            return Err(LinkQueryError::BadRoom);
        }
        if self.participant.is_empty() || self.participant.len() > MAX_PARTICIPANT_BYTES {
            return Err(LinkQueryError::BadParticipant);
        }
        Ok(())
    }

    /// The link URL on an SFU node whose link base URL is `base` (`ws://host:port`, a trailing
    /// `/` is ignored), values percent-encoded.
    pub fn url(&self, base: &str) -> String {
        format!(
            "{}{PATH}?room={}&participant={}&name={}{}",
            base.trim_end_matches('/'),
            percent_encode(&self.room),
            percent_encode(&self.participant),
            percent_encode(self.name.as_deref().unwrap_or("")),
            if self.is_resume() { "&resume=1" } else { "" }
        )
    }
}

/// `s` percent-encoded for a URL query value (RFC 3986 §2: everything but unreserved
/// characters is `%XX` per UTF-8 byte).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a link ends: the WebSocket close code and reason each end sends (RFC 6455 §7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkClose {
    /// Signaling: the participant left the room (1000 "left").
    Left,
    /// SFU: a newer link for the same participant took over (1000 "replaced").
    Replaced,
    /// Signaling is shutting down (1001 "signaling shutting down").
    SignalingShutdown,
    /// The SFU node is shutting down (1001 "shutting down").
    SfuShutdown,
    /// The SFU's worker for the room did not answer (1011 "worker unavailable").
    WorkerUnavailable,
    /// The room is at the SFU's per-room limit (4409 "room is full").
    RoomFull,
}

impl LinkClose {
    /// Every way a link ends.
    pub const ALL: [LinkClose; 6] = [
        LinkClose::Left,
        LinkClose::Replaced,
        LinkClose::SignalingShutdown,
        LinkClose::SfuShutdown,
        LinkClose::WorkerUnavailable,
        LinkClose::RoomFull,
    ];

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            LinkClose::Left | LinkClose::Replaced => 1000,
            LinkClose::SignalingShutdown | LinkClose::SfuShutdown => 1001,
            LinkClose::WorkerUnavailable => 1011,
            LinkClose::RoomFull => 4409,
        }
    }

    /// The close reason.
    pub fn reason(self) -> &'static str {
        match self {
            LinkClose::Left => "left",
            LinkClose::Replaced => "replaced",
            LinkClose::SignalingShutdown => "signaling shutting down",
            LinkClose::SfuShutdown => "shutting down",
            LinkClose::WorkerUnavailable => "worker unavailable",
            LinkClose::RoomFull => "room is full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_urls_are_encoded() {
        assert_eq!(
            LinkQuery::new("demo", "p_1", "Zoë & co", false).url("ws://127.0.0.1:8090/"),
            "ws://127.0.0.1:8090/v1/signal?room=demo&participant=p_1&name=Zo%C3%AB%20%26%20co"
        );
        assert_eq!(
            LinkQuery::new("a.b-c_d", "p", "x=y?", true).url("ws://h:1"),
            "ws://h:1/v1/signal?room=a.b-c_d&participant=p&name=x%3Dy%3F&resume=1"
        );
    }

    #[test]
    fn queries_are_checked() {
        let table = [
            ("demo", "p_1", Ok(())),
            ("", "p_1", Err(LinkQueryError::BadRoom)),
            ("a b", "p_1", Err(LinkQueryError::BadRoom)),
            ("demo", "", Err(LinkQueryError::BadParticipant)),
        ];
        for (room, participant, want) in table {
            assert_eq!(
                LinkQuery::new(room, participant, "", false).validate(),
                want,
                "{room:?} {participant:?}"
            );
        }
        let long = "p".repeat(MAX_PARTICIPANT_BYTES + 1);
        assert_eq!(
            LinkQuery::new("demo", &long, "", false).validate(),
            Err(LinkQueryError::BadParticipant)
        );
    }

    #[test]
    fn close_codes_are_distinct_per_meaning() {
        let mut seen: Vec<(u16, &str)> = LinkClose::ALL
            .iter()
            .map(|c| (c.code(), c.reason()))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), LinkClose::ALL.len());
    }
}
