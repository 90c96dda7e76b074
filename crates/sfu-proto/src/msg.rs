//! Messages between a client and the SFU (services/sfu/PROTOCOL.md), carried on the signaling link.

use serde::Deserialize;

/// Client -> SFU.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMsg {
    /// Offer for the publish PC.
    Offer {
        /// SDP.
        sdp: String,
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
    use super::*;

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
        assert!(parse(r#"{"type":"nope"}"#).is_err());
        assert!(parse("[]").is_err());
        assert!(parse("\u{0}").is_err());
    }
}
