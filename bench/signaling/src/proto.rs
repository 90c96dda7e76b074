//! The frames of signaling protocol v1 (services/signaling/PROTOCOL.md) that this generator sends and
//! reads, and the probe it hides in relayed payloads. No I/O, no clock.
//!
//! A probe is `x-tkb` followed by `<kind><sender>.<seq>.<sent_ns>`: in an SDP as the attribute
//! line `a=x-tkb:...`, in a candidate string as the extension attribute pair `x-tkb ...`
//! (RFC 8839 §5.1 allows extension name/value pairs after the candidate's fields). The server
//! relays `sdp` and `candidate` untouched, so the receiver can read back who sent the message,
//! its sequence number and when it was sent.

use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::json;

/// Protocol version sent in `join`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Marker that precedes a probe in an SDP or candidate string.
const PROBE_MARK: &str = "x-tkb";

/// Which traffic a relayed message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// The offer/answer/candidates exchange when a room fills.
    Burst,
    /// The paced messages of the measured phase.
    Steady,
}

/// What a relayed payload carries for the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Burst or steady traffic.
    pub kind: ProbeKind,
    /// Index of the sending client (its identity is `c<index>`).
    pub sender: u32,
    /// The sender's message sequence number (one counter per client).
    pub seq: u64,
    /// Send time, nanoseconds since the run's epoch (sender and receiver share the process).
    pub sent_ns: u64,
}

impl Probe {
    /// The probe's text, without the marker.
    pub fn token(&self) -> String {
        let k = match self.kind {
            ProbeKind::Burst => 'b',
            ProbeKind::Steady => 's',
        };
        format!("{k}{}.{}.{}", self.sender, self.seq, self.sent_ns)
    }

    /// Parses a token made by [`Probe::token`].
    pub fn parse_token(token: &str) -> Option<Self> {
        let kind = match token.as_bytes().first()? {
            b'b' => ProbeKind::Burst,
            b's' => ProbeKind::Steady,
            _ => return None,
        };
        let mut parts = token[1..].split('.');
        let sender = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let sent_ns = parts.next()?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            kind,
            sender,
            seq,
            sent_ns,
        })
    }

    /// Finds the probe in an SDP (`a=x-tkb:TOKEN`) or candidate string (`x-tkb TOKEN`).
    pub fn find_in(text: &str) -> Option<Self> {
        let at = text.find(PROBE_MARK)?;
        let rest = &text[at + PROBE_MARK.len()..];
        let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix(' '))?;
        let end = rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(rest.len());
        Self::parse_token(&rest[..end])
    }
}

/// An SDP offer or answer of about `target_bytes` (at least the realistic part, ~1.6 KB):
/// audio (Opus), video (VP8/H264 with RTX) and a data channel, BUNDLEd, with ICE credentials,
/// a DTLS fingerprint and the probe, padded with `a=x-pad` lines.
pub fn session_description(offer: bool, probe: &Probe, ufrag: &str, target_bytes: usize) -> String {
    let setup = if offer { "actpass" } else { "active" };
    let mut s = String::with_capacity(target_bytes + 64);
    let _ = write!(
        s,
        "v=0\r\no=- {session} 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
         a=group:BUNDLE 0 1 2\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS stream{sender}\r\n\
         a=x-tkb:{token}\r\n",
        session = 4_611_686_018_427_387_904u64 + u64::from(probe.sender),
        sender = probe.sender,
        token = probe.token()
    );
    let media = [
        (
            "audio",
            "0",
            "111 63 9 0 8 13 110 126",
            "a=rtpmap:111 opus/48000/2\r\na=rtcp-fb:111 transport-cc\r\n\
             a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
             a=fmtp:63 111/111\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\na=rtpmap:110 telephone-event/48000\r\n\
             a=rtpmap:126 telephone-event/8000\r\n",
        ),
        (
            "video",
            "1",
            "96 97 102 103",
            "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 goog-remb\r\na=rtcp-fb:96 transport-cc\r\n\
             a=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n\
             a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\na=rtpmap:102 H264/90000\r\n\
             a=rtcp-fb:102 transport-cc\r\na=rtcp-fb:102 nack pli\r\n\
             a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
             a=rtpmap:103 rtx/90000\r\na=fmtp:103 apt=102\r\n",
        ),
    ];
    for (kind, mid, payloads, rtp) in media {
        let _ = write!(
            s,
            "m={kind} 9 UDP/TLS/RTP/SAVPF {payloads}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:{ufrag}\r\na=ice-pwd:{ufrag}{ufrag}{ufrag}{ufrag}{ufrag}{ufrag}\r\n\
             a=ice-options:trickle\r\n\
             a=fingerprint:sha-256 7B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
             a=setup:{setup}\r\na=mid:{mid}\r\na=sendrecv\r\na=msid:stream{sender} {kind}{sender}\r\n\
             a=rtcp-mux\r\na=rtcp-rsize\r\n{rtp}a=ssrc:{ssrc} cname:bench{sender}\r\n",
            sender = probe.sender,
            ssrc = 1_000_000 + probe.sender * 4 + u32::from(kind == "video"),
        );
    }
    let _ = write!(
        s,
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
         a=ice-ufrag:{ufrag}\r\na=ice-options:trickle\r\na=setup:{setup}\r\na=mid:2\r\n\
         a=sctp-port:5000\r\na=max-message-size:262144\r\n"
    );
    pad_sdp(&mut s, target_bytes);
    s
}

fn pad_sdp(s: &mut String, target_bytes: usize) {
    const LINE: usize = 70;
    while s.len() + 10 < target_bytes {
        let n = (target_bytes - s.len() - 10).min(LINE);
        s.push_str("a=x-pad:");
        s.extend(std::iter::repeat_n('x', n));
        s.push_str("\r\n");
    }
}

/// A trickled host/srflx/relay candidate line carrying the probe, padded with an `x-pad`
/// extension attribute to at least `target_bytes`.
pub fn candidate_line(n: usize, probe: &Probe, ufrag: &str, target_bytes: usize) -> String {
    let (typ, prio, tail) = match n % 3 {
        0 => ("host", 2_122_260_223u32, String::new()),
        1 => (
            "srflx",
            1_686_052_607,
            " raddr 192.168.1.20 rport 50000".to_owned(),
        ),
        _ => (
            "relay",
            41_885_439,
            " raddr 203.0.113.7 rport 61000".to_owned(),
        ),
    };
    let mut s = format!(
        "candidate:{found} 1 udp {prio} 192.0.2.{host} {port} typ {typ}{tail} generation 0 \
         ufrag {ufrag} network-id 1 network-cost 10 {PROBE_MARK} {token}",
        found = 1_000_000_000 + n as u64 * 7919,
        host = 1 + n % 250,
        port = 50_000 + n % 10_000,
        token = probe.token()
    );
    if s.len() + 7 < target_bytes {
        s.push_str(" x-pad ");
        let n = target_bytes - s.len();
        s.extend(std::iter::repeat_n('x', n));
    }
    s
}

/// `join` (PROTOCOL.md, client → server).
pub fn join_frame(room: &str, token: &str, name: &str) -> String {
    json!({"type": "join", "v": PROTOCOL_VERSION, "room": room, "token": token, "name": name})
        .to_string()
}

/// `offer` or `answer` to participant `to`.
pub fn sdp_frame(offer: bool, to: &str, sdp: &str) -> String {
    let ty = if offer { "offer" } else { "answer" };
    json!({"type": ty, "to": to, "sdp": sdp}).to_string()
}

/// `candidate` to `to`; `None` is end-of-candidates.
pub fn candidate_frame(to: &str, candidate: Option<&str>, m_line: u32) -> String {
    match candidate {
        Some(c) => json!({"type": "candidate", "to": to, "candidate": {
            "candidate": c, "sdpMid": m_line.to_string(), "sdpMLineIndex": m_line}})
        .to_string(),
        None => json!({"type": "candidate", "to": to, "candidate": null}).to_string(),
    }
}

/// `ping` with a timestamp (nanoseconds since the run's epoch) echoed in `pong`.
pub fn ping_frame(ts_ns: u64) -> String {
    json!({"type": "ping", "ts": ts_ns}).to_string()
}

/// `leave`.
pub fn leave_frame() -> String {
    r#"{"type":"leave"}"#.to_owned()
}

/// A participant as listed in `joined` and `participant-joined`.
#[derive(Debug, Clone, Deserialize)]
pub struct ParticipantInfo {
    /// Participant id within the room.
    pub id: String,
    /// The token's subject; this generator uses `c<client index>`.
    #[serde(default)]
    pub identity: String,
}

impl ParticipantInfo {
    /// The client index encoded in this generator's identities (`c<index>`).
    pub fn client_index(&self) -> Option<u32> {
        self.identity.strip_prefix('c')?.parse().ok()
    }
}

/// An RTCIceCandidateInit as relayed; only the candidate string matters here.
#[derive(Debug, Clone, Deserialize)]
pub struct CandidateInit {
    /// The candidate line.
    #[serde(default)]
    pub candidate: String,
}

/// A server → client frame (PROTOCOL.md "Server -> client"); unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Incoming {
    /// `joined`.
    Joined {
        /// This client's participant id.
        #[serde(rename = "participantId")]
        participant_id: String,
        /// The others already in the room.
        #[serde(default)]
        participants: Vec<ParticipantInfo>,
    },
    /// `participant-joined`.
    ParticipantJoined {
        /// Who entered.
        participant: ParticipantInfo,
    },
    /// `participant-left`.
    ParticipantLeft {
        /// Who left.
        #[serde(rename = "participantId")]
        participant_id: String,
    },
    /// Relayed `offer`.
    Offer {
        /// Sender's participant id.
        from: String,
        /// The SDP.
        sdp: String,
    },
    /// Relayed `answer`.
    Answer {
        /// Sender's participant id.
        from: String,
        /// The SDP.
        sdp: String,
    },
    /// Relayed `candidate`; `None` is end-of-candidates.
    Candidate {
        /// Sender's participant id.
        from: String,
        /// The candidate, or null.
        #[serde(default)]
        candidate: Option<CandidateInit>,
    },
    /// `room-closed`.
    RoomClosed {},
    /// `left`.
    Left {},
    /// `pong`, echoing the ping's `ts`.
    Pong {
        /// Echoed timestamp.
        #[serde(default)]
        ts: Option<serde_json::Value>,
    },
    /// `error`.
    Error {
        /// Error code (4000..4500).
        code: u16,
    },
    /// Any other `type`.
    #[serde(other)]
    Other,
}

impl Incoming {
    /// Parses one text frame.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: ProbeKind) -> Probe {
        Probe {
            kind,
            sender: 4711,
            seq: 42,
            sent_ns: 123_456_789_012,
        }
    }

    #[test]
    fn probe_token_round_trip() {
        for kind in [ProbeKind::Burst, ProbeKind::Steady] {
            let p = probe(kind);
            assert_eq!(Probe::parse_token(&p.token()), Some(p));
        }
        for bad in [
            "", "x1.2.3", "b1.2", "b1.2.3.4", "s-1.2.3", "b1..3", "s1.2.3 ",
        ] {
            assert_eq!(Probe::parse_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sdp_has_probe_and_size() {
        let p = probe(ProbeKind::Burst);
        for target in [0, 3000, 5000] {
            let sdp = session_description(true, &p, "Ab3d", target);
            assert!(sdp.len() <= target.max(sdp.len()));
            assert!(sdp.len() + 12 >= target, "{} for {target}", sdp.len());
            assert!(sdp.starts_with("v=0\r\n") && sdp.ends_with("\r\n"));
            assert_eq!(Probe::find_in(&sdp), Some(p));
        }
        let answer = session_description(false, &p, "Ab3d", 3000);
        assert!(answer.contains("a=setup:active"));
    }

    #[test]
    fn candidate_has_probe_and_size() {
        let p = probe(ProbeKind::Steady);
        for n in 0..4 {
            let c = candidate_line(n, &p, "Ab3d", 240);
            assert!(c.starts_with("candidate:"));
            assert_eq!(c.len(), 240);
            assert_eq!(Probe::find_in(&c), Some(p));
        }
        let short = candidate_line(0, &p, "Ab3d", 0);
        assert!(!short.contains("x-pad"));
        assert_eq!(Probe::find_in(&short), Some(p));
        assert_eq!(
            Probe::find_in("candidate:1 1 udp 1 192.0.2.1 1 typ host"),
            None
        );
    }

    #[test]
    fn frames_are_protocol_json() {
        let v: serde_json::Value = serde_json::from_str(&join_frame("r", "t", "n")).unwrap();
        assert_eq!(v["type"], "join");
        assert_eq!(v["v"], 1);
        let v: serde_json::Value = serde_json::from_str(&candidate_frame("p1", None, 0)).unwrap();
        assert!(v["candidate"].is_null());
        let v: serde_json::Value =
            serde_json::from_str(&candidate_frame("p1", Some("candidate:1"), 1)).unwrap();
        assert_eq!(v["candidate"]["sdpMid"], "1");
        assert_eq!(v["candidate"]["sdpMLineIndex"], 1);
        let v: serde_json::Value = serde_json::from_str(&sdp_frame(false, "p2", "v=0")).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["to"].as_str()),
            (Some("answer"), Some("p2"))
        );
    }

    #[test]
    fn parses_server_frames() {
        let joined = r#"{"type":"joined","participantId":"p_A1","resumeToken":"r","resumed":false,
            "room":{"name":"demo","mode":"mesh","capacity":4},
            "participants":[{"id":"p_B7","identity":"c12","name":"Bob"}],"iceServers":[],"iceServersTtl":60}"#;
        match Incoming::parse(joined).unwrap() {
            Incoming::Joined {
                participant_id,
                participants,
            } => {
                assert_eq!(participant_id, "p_A1");
                assert_eq!(participants[0].client_index(), Some(12));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Incoming::parse(r#"{"type":"candidate","from":"p","candidate":null}"#).unwrap(),
            Incoming::Candidate {
                candidate: None,
                ..
            }
        ));
        assert!(matches!(
            Incoming::parse(r#"{"type":"error","code":4008,"message":"slow down"}"#).unwrap(),
            Incoming::Error { code: 4008 }
        ));
        assert!(matches!(
            Incoming::parse(r#"{"type":"pong","ts":5}"#).unwrap(),
            Incoming::Pong { ts: Some(_) }
        ));
        assert!(matches!(
            Incoming::parse(r#"{"type":"something-new","x":1}"#).unwrap(),
            Incoming::Other
        ));
        assert!(matches!(
            Incoming::parse(r#"{"type":"room-closed","reason":"deleted"}"#).unwrap(),
            Incoming::RoomClosed {}
        ));
        assert!(Incoming::parse("not json").is_err());
        assert!(Incoming::parse(r#"{"type":"offer","from":"p"}"#).is_err());
    }
}
