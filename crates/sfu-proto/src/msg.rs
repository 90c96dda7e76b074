//! Messages between a client and the SFU (services/sfu/PROTOCOL.md), carried on the signaling link.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Client -> SFU.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMsg {
    /// Offer for the publish PC.
    Offer {
        /// SDP.
        sdp: String,
        /// What each sent track is, by its msid track id (`a=msid:<stream> <track>`, the
        /// browser's `MediaStreamTrack.id`): `camera`, `microphone` or `screen`. Tracks not
        /// named are `microphone` (audio) or `camera` (video). Checked by [`Sources::parse`].
        #[serde(default)]
        sources: Option<serde_json::Map<String, Value>>,
    },
    /// Answer to the SFU's subscribe offer.
    Answer {
        /// SDP.
        sdp: String,
    },
    /// A trickled candidate (optional: the SFU is ICE-lite).
    Candidate {
        /// `publish` or `subscribe`.
        #[serde(default)]
        pc: Option<String>,
        /// RTCIceCandidateInit or null.
        #[serde(default)]
        candidate: Option<serde_json::Value>,
    },
    /// Largest video wanted.
    Video {
        /// One track, or every video track when absent.
        #[serde(rename = "trackId", default)]
        track_id: Option<String>,
        /// Pixels; 0 = lowest layer.
        #[serde(rename = "maxHeight")]
        max_height: u32,
    },
    /// Re-send the current subscribe offer.
    Resync,
}

/// What a published track carries (services/sfu/PROTOCOL.md "Track sources"): told by the
/// publisher in its offer, passed to subscribers in the SFU's offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// A camera (the default for video).
    Camera,
    /// A microphone (the default for audio).
    Microphone,
    /// A captured screen, window or tab (`getDisplayMedia`), sent without simulcast.
    Screen,
}

impl Source {
    /// Every source.
    pub const ALL: [Source; 3] = [Source::Camera, Source::Microphone, Source::Screen];

    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Camera => "camera",
            Self::Microphone => "microphone",
            Self::Screen => "screen",
        }
    }

    /// The source named `s`, if any.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// Most entries in an offer's `sources`.
pub const MAX_SOURCES: usize = 16;
/// Longest msid track id accepted in `sources`, bytes (RFC 8830 §2: 1 to 64 characters).
pub const MAX_TRACK_ID_BYTES: usize = 64;

/// The checked `sources` of a publish offer: msid track id -> [`Source`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources(Vec<(String, Source)>);

impl Sources {
    /// Checks an offer's `sources` object: at most [`MAX_SOURCES`] entries, keys of 1 to
    /// [`MAX_TRACK_ID_BYTES`] bytes, each value a [`Source`] name. The error says which rule
    /// failed (sent to the client with code 4000).
    pub fn parse(v: Option<&serde_json::Map<String, Value>>) -> Result<Self, String> {
        let Some(m) = v else {
            return Ok(Self::default());
        };
        if m.len() > MAX_SOURCES {
            return Err(format!("sources: more than {MAX_SOURCES} entries"));
        }
        let mut out = Vec::with_capacity(m.len());
        for (k, v) in m {
            if k.is_empty() || k.len() > MAX_TRACK_ID_BYTES {
                return Err(format!(
                    "sources: a track id must be 1 to {MAX_TRACK_ID_BYTES} bytes"
                ));
            }
            let source = v
                .as_str()
                .and_then(Source::from_name)
                .ok_or_else(|| format!("sources: {v} is not camera, microphone or screen"))?;
            out.push((k.clone(), source));
        }
        Ok(Self(out))
    }

    /// The source of the track with msid track id `id`, if the offer named it.
    pub fn get(&self, id: &str) -> Option<Source> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, s)| *s)
    }
}

/// Error codes of `{"type":"error"}` (services/sfu/PROTOCOL.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// Not an object, unknown type, missing field.
    BadRequest = 4000,
    /// SDP could not be parsed or applied.
    BadSdp = 4400,
    /// ICE consent expired; the PC's media was removed.
    IceTimeout = 4408,
    /// An answer with no offer outstanding.
    WrongState = 4409,
    /// Too many tracks.
    Limit = 4429,
    /// The SFU failed to build a peer connection.
    Internal = 4500,
}

impl ErrorCode {
    /// Every code.
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::BadRequest,
        ErrorCode::BadSdp,
        ErrorCode::IceTimeout,
        ErrorCode::WrongState,
        ErrorCode::Limit,
        ErrorCode::Internal,
    ];

    /// The numeric code sent to the client.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// SFU -> client (services/sfu/PROTOCOL.md "SFU -> client"): typed in the core, serialized by the I/O
/// layer (`serde_json::to_string`) into the JSON object signaling wraps as
/// `{"type":"sfu","msg":...}`. Keys come out sorted, as they always have.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerMsg {
    /// Answer to the client's publish offer.
    Answer {
        /// SDP.
        sdp: String,
    },
    /// Subscribe offer: the SFU's downtracks for this client.
    Offer {
        /// SDP.
        sdp: String,
        /// Who publishes each m-section's track.
        tracks: Vec<OfferedTrack>,
    },
    /// The simulcast layers of a published track someone watches (the publisher pauses the
    /// others).
    Layers {
        /// The track.
        track_id: String,
        /// RIDs to keep sending, low to high.
        active: Vec<String>,
    },
    /// The room's active speaker changed (or, on join, who it is).
    ActiveSpeaker {
        /// The speaker.
        participant_id: String,
        /// Smoothed RFC 6464 level, -dBov (0 loudest).
        level: u8,
    },
    /// A request failed.
    Error {
        /// What failed.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// One track of a subscribe offer.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferedTrack {
    /// The SFU's track id.
    pub track_id: String,
    /// Its publisher.
    pub participant_id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// What it carries (`camera`, `microphone`, `screen`).
    pub source: Source,
    /// The m-section carrying it (None before the transceiver has one).
    pub mid: Option<String>,
}

impl ServerMsg {
    /// The message's `type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Answer { .. } => "answer",
            Self::Offer { .. } => "offer",
            Self::Layers { .. } => "layers",
            Self::ActiveSpeaker { .. } => "active-speaker",
            Self::Error { .. } => "error",
        }
    }

    /// The JSON object sent.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Answer { sdp } => json!({"type": "answer", "sdp": sdp}),
            Self::Offer { sdp, tracks } => {
                let tracks: Vec<Value> = tracks
                    .iter()
                    .map(|t| {
                        json!({
                            "trackId": t.track_id, "participantId": t.participant_id,
                            "kind": t.kind, "source": t.source.as_str(), "mid": t.mid,
                        })
                    })
                    .collect();
                json!({"type": "offer", "sdp": sdp, "tracks": tracks})
            }
            Self::Layers { track_id, active } => {
                json!({"type": "layers", "trackId": track_id, "active": active})
            }
            Self::ActiveSpeaker {
                participant_id,
                level,
            } => json!({"type": "active-speaker", "participantId": participant_id, "level": level}),
            Self::Error { code, message } => {
                json!({"type": "error", "code": *code as u16, "message": message})
            }
        }
    }
}

impl Serialize for ServerMsg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// Largest link message accepted, bytes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Parses one link message.
pub fn parse(text: &str) -> Result<ClientMsg, String> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(format!("message over {MAX_MESSAGE_BYTES} bytes"));
    }
    serde_json::from_str(text).map_err(|e| format!("bad message: {e}"))
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    #[test]
    fn every_error_code_is_listed_once() {
        let mut codes: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes, [4000, 4400, 4408, 4409, 4429, 4500]);
    }

    use super::*;

    #[test]
    fn sources_are_checked() {
        let map = |v: Value| v.as_object().cloned();
        assert_eq!(Sources::parse(None), Ok(Sources::default()));
        assert!(Sources::parse(map(json!({"a": "screen"})).as_ref()).is_ok());
        for bad in [
            json!({"a": "projector"}),
            json!({"a": 1}),
            json!({"a": null}),
            json!({"": "screen"}),
            json!({"x".repeat(MAX_TRACK_ID_BYTES + 1): "screen"}),
        ] {
            assert!(Sources::parse(map(bad.clone()).as_ref()).is_err(), "{bad}");
        }
        let many: serde_json::Map<String, Value> = (0..=MAX_SOURCES)
            .map(|i| (format!("t{i}"), json!("camera")))
            .collect();
        assert!(Sources::parse(Some(&many)).is_err());
        for s in Source::ALL {
            assert_eq!(Source::from_name(s.as_str()), Some(s));
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert!(matches!(
            parse(r#"{"type":"offer","sdp":"v=0"}"#),
            Ok(ClientMsg::Offer { .. })
        ));
        assert!(matches!(
            parse(r#"{"type":"video","maxHeight":180}"#),
            Ok(ClientMsg::Video {
                track_id: None,
                max_height: 180
            })
        ));
        assert!(matches!(
            parse(r#"{"type":"resync"}"#),
            Ok(ClientMsg::Resync)
        ));
        assert!(parse(r#"{"type":"offer"}"#).is_err());
        let Ok(ClientMsg::Offer { sources, .. }) =
            parse(r#"{"type":"offer","sdp":"v=0","sources":{"t1":"screen","t2":"camera"}}"#)
        else {
            panic!("an offer with sources");
        };
        let s = Sources::parse(sources.as_ref()).unwrap();
        assert_eq!(s.get("t1"), Some(Source::Screen));
        assert_eq!(s.get("t2"), Some(Source::Camera));
        assert_eq!(s.get("t3"), None);
        assert!(parse(r#"{"type":"nope"}"#).is_err());
        assert!(parse("[]").is_err());
        assert!(parse("\u{0}").is_err());
    }

    /// Each message type as the bytes on the wire (pinned: clients parse these).
    #[test]
    fn server_messages_serialize_as_before() {
        let rows: Vec<(ServerMsg, &str)> = vec![
            (
                ServerMsg::Answer { sdp: "v=0".into() },
                r#"{"sdp":"v=0","type":"answer"}"#,
            ),
            (
                ServerMsg::Offer {
                    sdp: "v=0".into(),
                    tracks: vec![
                        OfferedTrack {
                            track_id: "a-1".into(),
                            participant_id: "a".into(),
                            kind: "video".into(),
                            source: Source::Camera,
                            mid: Some("0".into()),
                        },
                        OfferedTrack {
                            track_id: "a-2".into(),
                            participant_id: "a".into(),
                            kind: "audio".into(),
                            source: Source::Microphone,
                            mid: None,
                        },
                        OfferedTrack {
                            track_id: "a-3".into(),
                            participant_id: "a".into(),
                            kind: "video".into(),
                            source: Source::Screen,
                            mid: Some("2".into()),
                        },
                    ],
                },
                concat!(
                    r#"{"sdp":"v=0","tracks":[{"kind":"video","mid":"0","participantId":"a","source":"camera","trackId":"a-1"},"#,
                    r#"{"kind":"audio","mid":null,"participantId":"a","source":"microphone","trackId":"a-2"},"#,
                    r#"{"kind":"video","mid":"2","participantId":"a","source":"screen","trackId":"a-3"}],"type":"offer"}"#
                ),
            ),
            (
                ServerMsg::Offer {
                    sdp: String::new(),
                    tracks: vec![],
                },
                r#"{"sdp":"","tracks":[],"type":"offer"}"#,
            ),
            (
                ServerMsg::Layers {
                    track_id: "a-1".into(),
                    active: vec!["q".into(), "h".into()],
                },
                r#"{"active":["q","h"],"trackId":"a-1","type":"layers"}"#,
            ),
            (
                ServerMsg::ActiveSpeaker {
                    participant_id: "b".into(),
                    level: 37,
                },
                r#"{"level":37,"participantId":"b","type":"active-speaker"}"#,
            ),
            (
                ServerMsg::Error {
                    code: ErrorCode::WrongState,
                    message: "no".into(),
                },
                r#"{"code":4409,"message":"no","type":"error"}"#,
            ),
        ];
        for (m, wire) in rows {
            assert_eq!(serde_json::to_string(&m).unwrap(), wire);
            assert_eq!(m.to_json()["type"], m.type_name());
        }
    }
}
