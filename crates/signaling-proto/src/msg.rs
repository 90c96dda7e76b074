//! The WebSocket messages of `PROTOCOL.md`: client requests (parsed and validated without
//! panicking on any input), server messages (serialized), error and close codes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Longest accepted `rid` (characters of its JSON text).
pub const MAX_RID_CHARS: usize = 64;

/// The `code` of an `error` frame (`PROTOCOL.md`, "Error codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 4000: not JSON, not an object, missing or mistyped field.
    BadRequest,
    /// 4001: token missing, malformed, forged, expired, or for another room.
    Unauthorized,
    /// 4003: the token's grants do not allow this.
    Forbidden,
    /// 4004: `to` is not a participant of the room.
    NotFound,
    /// 4005: unknown or expired resume token.
    ResumeFailed,
    /// 4008: too many messages.
    RateLimited,
    /// 4009: the room is at capacity.
    RoomFull,
    /// 4011: a message other than `join` before joining, or `join` twice.
    NotJoined,
    /// 4013: frame over the size limit.
    TooLarge,
    /// 4015: `type` not in the protocol.
    UnknownType,
    /// 4020: `v` is not 1.
    UnsupportedVersion,
    /// 4500: the store failed.
    Internal,
    /// 4503: no live SFU node for an `sfu` room, or the participant's link to its SFU node
    /// could not be opened or was lost (`services/sfu/PROTOCOL.md`, "The link").
    SfuUnavailable,
}

impl ErrorCode {
    /// Every code, for pre-creating metric series.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::ResumeFailed,
        ErrorCode::RateLimited,
        ErrorCode::RoomFull,
        ErrorCode::NotJoined,
        ErrorCode::TooLarge,
        ErrorCode::UnknownType,
        ErrorCode::UnsupportedVersion,
        ErrorCode::Internal,
        ErrorCode::SfuUnavailable,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 4000,
            ErrorCode::Unauthorized => 4001,
            ErrorCode::Forbidden => 4003,
            ErrorCode::NotFound => 4004,
            ErrorCode::ResumeFailed => 4005,
            ErrorCode::RateLimited => 4008,
            ErrorCode::RoomFull => 4009,
            ErrorCode::NotJoined => 4011,
            ErrorCode::TooLarge => 4013,
            ErrorCode::UnknownType => 4015,
            ErrorCode::UnsupportedVersion => 4020,
            ErrorCode::Internal => 4500,
            ErrorCode::SfuUnavailable => 4503,
        }
    }

    /// The code's name (also the metric label and the HTTP error `code`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::Internal => "internal",
            ErrorCode::SfuUnavailable => "sfu_unavailable",
        }
    }
}

/// WebSocket close codes (`PROTOCOL.md`, "Close codes"; RFC 6455 §7.4).
pub mod close {
    /// Normal closure, after `leave`.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Join refused; an `error` frame precedes it.
    pub const JOIN_REFUSED: u16 = 4001;
    /// Idle timeout, or no `join` in time.
    pub const IDLE: u16 = 4002;
    /// Slow consumer: the outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4003;
    /// Rate limit abused.
    pub const RATE_LIMITED: u16 = 4008;
    /// The room was deleted.
    pub const ROOM_CLOSED: u16 = 4010;
    /// The session was resumed on another connection.
    pub const REPLACED: u16 = 4011;
}

/// An `error` frame in the making: a code, a message and the request it answers.
#[derive(Clone, Debug, PartialEq)]
pub struct ProtoError {
    /// The code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The request's `rid`, echoed.
    pub rid: Option<Value>,
    /// The request's `type`.
    pub request: Option<String>,
}

impl ProtoError {
    /// An error with no request context.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtoError {
            code,
            message: message.into(),
            rid: None,
            request: None,
        }
    }

    /// The `error` frame.
    pub fn to_msg(&self) -> ServerMsg {
        ServerMsg::Error {
            code: self.code.code(),
            message: self.message.clone(),
            rid: self.rid.clone(),
            request: self.request.clone(),
        }
    }
}

/// `join` fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Join {
    /// Protocol version; must be 1.
    pub v: u32,
    /// Room name.
    pub room: String,
    /// Access token (JWT).
    pub token: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Resume token from an earlier `joined`.
    #[serde(default)]
    pub resume: Option<String>,
}

/// `offer` / `answer` fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Sdp {
    /// Target participant id.
    pub to: String,
    /// The session description (RFC 8866 text).
    pub sdp: String,
}

/// `candidate` fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Candidate {
    /// Target participant id.
    pub to: String,
    /// An RTCIceCandidateInit object, or `null` for end-of-candidates (RFC 8838 §4).
    pub candidate: Value,
}

/// `ping` fields.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Ping {
    /// Echoed in `pong`.
    #[serde(default)]
    pub ts: Option<Value>,
}

/// `sfu` fields: a message for the participant's SFU node (`services/sfu/PROTOCOL.md`, "Client ->
/// SFU"), relayed verbatim on the link; signaling only checks that it is a JSON object.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SfuRelay {
    /// The SFU protocol message.
    pub msg: serde_json::Map<String, Value>,
}

/// A client request.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMsg {
    /// `join`.
    Join(Join),
    /// `offer`.
    Offer(Sdp),
    /// `answer`.
    Answer(Sdp),
    /// `candidate`.
    Candidate(Candidate),
    /// `leave`.
    Leave,
    /// `ping`.
    Ping(Ping),
    /// `sfu` (only in `sfu` rooms).
    Sfu(SfuRelay),
}

impl ClientMsg {
    /// The wire `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientMsg::Join(_) => "join",
            ClientMsg::Offer(_) => "offer",
            ClientMsg::Answer(_) => "answer",
            ClientMsg::Candidate(_) => "candidate",
            ClientMsg::Leave => "leave",
            ClientMsg::Ping(_) => "ping",
            ClientMsg::Sfu(_) => "sfu",
        }
    }
}

/// Client message types, for pre-creating metric series.
pub const CLIENT_TYPES: [&str; 7] = [
    "join",
    "offer",
    "answer",
    "candidate",
    "leave",
    "ping",
    "sfu",
];

/// A parsed request: the message and its `rid`.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The message.
    pub msg: ClientMsg,
    /// Request id to echo in an `error`.
    pub rid: Option<Value>,
}

impl Request {
    /// An error answering this request.
    pub fn error(&self, code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
            rid: self.rid.clone(),
            request: Some(self.msg.type_name().to_string()),
        }
    }
}

/// Parses one text frame. Never panics; every failure is a [`ProtoError`] with the
/// protocol's code (4000 malformed, 4015 unknown type).
pub fn parse_request(text: &str) -> Result<Request, ProtoError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ProtoError::new(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ProtoError::new(
            ErrorCode::BadRequest,
            "a frame must be a JSON object",
        ));
    };
    let rid = match obj.get("rid") {
        None | Some(Value::Null) => None,
        Some(r @ Value::String(s)) if s.chars().count() <= MAX_RID_CHARS => Some(r.clone()),
        Some(r @ Value::Number(_)) => Some(r.clone()),
        Some(_) => {
            return Err(ProtoError::new(
                ErrorCode::BadRequest,
                "rid must be a string of at most 64 characters or a number",
            ))
        }
    };
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(ProtoError {
                rid,
                ..ProtoError::new(ErrorCode::BadRequest, "missing string field `type`")
            })
        }
    };
    let fail = |rid: Option<Value>, e: serde_json::Error| ProtoError {
        code: ErrorCode::BadRequest,
        message: format!("bad `{ty}`: {e}"),
        rid,
        request: Some(ty.clone()),
    };
    let value = Value::Object(obj);
    let msg = match ty.as_str() {
        "join" => ClientMsg::Join(Join::deserialize(&value).map_err(|e| fail(rid.clone(), e))?),
        "offer" => ClientMsg::Offer(Sdp::deserialize(&value).map_err(|e| fail(rid.clone(), e))?),
        "answer" => ClientMsg::Answer(Sdp::deserialize(&value).map_err(|e| fail(rid.clone(), e))?),
        "candidate" => {
            let c = Candidate::deserialize(&value).map_err(|e| fail(rid.clone(), e))?;
            if !(c.candidate.is_object() || c.candidate.is_null()) {
                return Err(ProtoError {
                    code: ErrorCode::BadRequest,
                    message: "`candidate` must be an object or null".into(),
                    rid,
                    request: Some(ty.clone()),
                });
            }
            ClientMsg::Candidate(c)
        }
        "leave" => ClientMsg::Leave,
        "ping" => ClientMsg::Ping(Ping::deserialize(&value).map_err(|e| fail(rid.clone(), e))?),
        "sfu" => ClientMsg::Sfu(SfuRelay::deserialize(&value).map_err(|e| fail(rid.clone(), e))?),
        _ => {
            return Err(ProtoError {
                code: ErrorCode::UnknownType,
                message: format!("unknown type {ty:?}"),
                rid,
                request: Some(ty.clone()),
            })
        }
    };
    Ok(Request { msg, rid })
}

/// A participant as others see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Participant id.
    pub id: String,
    /// Identity (the token's `sub`).
    pub identity: String,
    /// Display name.
    pub name: String,
}

/// Room description in `joined` and in the HTTP join answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// Room name.
    pub name: String,
    /// `mesh` or `sfu`.
    pub mode: crate::room::RoomMode,
    /// Maximum participants.
    pub capacity: u32,
}

/// A W3C RTCIceServer dictionary (WebRTC 1.0 §4.2.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URIs (RFC 7064, RFC 7065).
    pub urls: Vec<String>,
    /// TURN REST user name (`<expiry>:<user>`); absent for STUN-only entries.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// TURN REST password.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential: Option<String>,
}

/// Why a participant left (`participant-left.reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaveReason {
    /// Sent `leave`.
    Left,
    /// Did not come back within the resume grace period.
    Timeout,
    /// The node holding its connection died.
    NodeLost,
    /// Removed by the server (room deleted, replaced...).
    Removed,
}

/// A server message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ServerMsg {
    /// You are in.
    #[serde(rename_all = "camelCase")]
    Joined {
        /// Your participant id.
        participant_id: String,
        /// Token for `join.resume`.
        resume_token: String,
        /// True if this took back a dropped session.
        resumed: bool,
        /// The room.
        room: RoomInfo,
        /// The others.
        participants: Vec<ParticipantInfo>,
        /// STUN/TURN servers with credentials.
        ice_servers: Vec<IceServer>,
        /// Seconds the TURN credentials stay valid.
        ice_servers_ttl: u64,
    },
    /// Someone entered.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left.
    #[serde(rename_all = "camelCase")]
    ParticipantLeft {
        /// Who.
        participant_id: String,
        /// Why.
        reason: LeaveReason,
    },
    /// A relayed offer.
    Offer {
        /// Sender.
        from: String,
        /// SDP.
        sdp: String,
    },
    /// A relayed answer.
    Answer {
        /// Sender.
        from: String,
        /// SDP.
        sdp: String,
    },
    /// A relayed candidate (`null` = end-of-candidates).
    Candidate {
        /// Sender.
        from: String,
        /// RTCIceCandidateInit or null.
        candidate: Value,
    },
    /// The room was deleted.
    RoomClosed {
        /// Why.
        reason: String,
    },
    /// Answer to `leave`.
    Left,
    /// Answer to `ping`.
    Pong {
        /// Echo of `ping.ts`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        ts: Option<Value>,
    },
    /// A message from the participant's SFU node (`services/sfu/PROTOCOL.md`, "SFU -> client").
    Sfu {
        /// The SFU protocol message (a JSON object).
        msg: Value,
    },
    /// A request failed.
    Error {
        /// Numeric code.
        code: u16,
        /// Detail.
        message: String,
        /// Echo of the request's `rid`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        rid: Option<Value>,
        /// The request's `type`.
        #[serde(skip_serializing_if = "Option::is_none", default)]
        request: Option<String>,
    },
}

impl ServerMsg {
    /// The JSON text frame.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail (string keys, no custom serializers).
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_client_type() {
        let r =
            parse_request(r#"{"type":"join","v":1,"room":"demo","token":"t","name":"A","rid":3}"#)
                .unwrap();
        assert_eq!(r.rid, Some(json!(3)));
        assert!(
            matches!(r.msg, ClientMsg::Join(ref j) if j.room == "demo" && j.name.as_deref() == Some("A"))
        );
        let r = parse_request(r#"{"type":"offer","to":"p_1","sdp":"v=0","extra":true}"#).unwrap();
        assert_eq!(
            r.msg,
            ClientMsg::Offer(Sdp {
                to: "p_1".into(),
                sdp: "v=0".into()
            })
        );
        let r = parse_request(r#"{"type":"candidate","to":"p_1","candidate":null}"#).unwrap();
        assert!(matches!(r.msg, ClientMsg::Candidate(ref c) if c.candidate.is_null()));
        assert_eq!(
            parse_request(r#"{"type":"leave"}"#).unwrap().msg,
            ClientMsg::Leave
        );
        assert_eq!(
            parse_request(r#"{"type":"ping","ts":5}"#).unwrap().msg,
            ClientMsg::Ping(Ping { ts: Some(json!(5)) })
        );
        let r = parse_request(r#"{"type":"sfu","msg":{"type":"offer","sdp":"v=0"}}"#).unwrap();
        assert!(matches!(r.msg, ClientMsg::Sfu(ref m) if m.msg["sdp"] == "v=0"));
        assert_eq!(r.msg.type_name(), "sfu");
    }

    #[test]
    fn sfu_msg_must_be_an_object() {
        for text in [
            r#"{"type":"sfu"}"#,
            r#"{"type":"sfu","msg":null}"#,
            r#"{"type":"sfu","msg":"offer"}"#,
            r#"{"type":"sfu","msg":[1]}"#,
        ] {
            let e = parse_request(text).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(e.request.as_deref(), Some("sfu"));
        }
        let text = ServerMsg::Sfu {
            msg: json!({"type":"layers","active":["q"]}),
        }
        .to_text();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"type":"sfu","msg":{"type":"layers","active":["q"]}})
        );
        assert_eq!(ErrorCode::SfuUnavailable.code(), 4503);
        assert_eq!(ErrorCode::SfuUnavailable.name(), "sfu_unavailable");
    }

    #[test]
    fn bad_input_gets_the_documented_codes() {
        for (text, code) in [
            ("not json", ErrorCode::BadRequest),
            ("[1,2]", ErrorCode::BadRequest),
            ("{}", ErrorCode::BadRequest),
            (r#"{"type":5}"#, ErrorCode::BadRequest),
            (r#"{"type":"offer","to":"p"}"#, ErrorCode::BadRequest),
            (
                r#"{"type":"offer","to":1,"sdp":"x"}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"candidate","to":"p","candidate":5}"#,
                ErrorCode::BadRequest,
            ),
            (r#"{"type":"dance"}"#, ErrorCode::UnknownType),
            (
                r#"{"type":"join","v":"1","room":"r","token":"t"}"#,
                ErrorCode::BadRequest,
            ),
        ] {
            assert_eq!(parse_request(text).unwrap_err().code, code, "{text}");
        }
        let e = parse_request(r#"{"type":"offer","rid":"abc"}"#).unwrap_err();
        assert_eq!(e.rid, Some(json!("abc")));
        assert_eq!(e.request.as_deref(), Some("offer"));
        let long = "x".repeat(65);
        let e = parse_request(&format!(r#"{{"type":"ping","rid":"{long}"}}"#)).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn never_panics_on_garbage() {
        for text in [
            "",
            "\u{0}",
            "{",
            "null",
            "\"x\"",
            "{\"type\":null}",
            "1e999",
        ] {
            let _ = parse_request(text);
        }
    }

    #[test]
    fn server_messages_match_the_protocol_shapes() {
        let m = ServerMsg::ParticipantLeft {
            participant_id: "p_1".into(),
            reason: LeaveReason::NodeLost,
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"type":"participant-left","participantId":"p_1","reason":"node-lost"})
        );
        let m = ServerMsg::Joined {
            participant_id: "p_1".into(),
            resume_token: "r".into(),
            resumed: false,
            room: RoomInfo {
                name: "demo".into(),
                mode: crate::room::RoomMode::Mesh,
                capacity: 4,
            },
            participants: vec![],
            ice_servers: vec![IceServer {
                urls: vec!["turn:x".into()],
                username: Some("u".into()),
                credential: Some("c".into()),
            }],
            ice_servers_ttl: 60,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "joined");
        assert_eq!(v["participantId"], "p_1");
        assert_eq!(v["iceServersTtl"], 60);
        assert_eq!(v["room"]["mode"], "mesh");
        assert_eq!(v["iceServers"][0]["credential"], "c");
        assert_eq!(ServerMsg::Left.to_text(), r#"{"type":"left"}"#.to_string());
        assert_eq!(ServerMsg::Pong { ts: None }.to_text(), r#"{"type":"pong"}"#);
        assert_eq!(
            ServerMsg::RoomClosed {
                reason: "deleted".into()
            }
            .to_text(),
            r#"{"type":"room-closed","reason":"deleted"}"#
        );
        let e = ProtoError {
            code: ErrorCode::NotFound,
            message: "m".into(),
            rid: Some(json!(7)),
            request: Some("offer".into()),
        };
        assert_eq!(
            serde_json::to_value(e.to_msg()).unwrap(),
            json!({"type":"error","code":4004,"message":"m","rid":7,"request":"offer"})
        );
    }
}
