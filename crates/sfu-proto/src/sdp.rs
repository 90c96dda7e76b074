//! SDP reading and edits the SFU does beside webrtc-rs, pure text in and out: the simulcast
//! RIDs a publisher offers, the bitrate cap put into answers, and codec matching by fmtp.

use crate::layers::MAX_LAYERS;

/// The RIDs a publisher's offer sends on its video m-section(s): `a=rid:<id> send` (RFC 8851),
/// at most [`MAX_LAYERS`], in offer order.
pub fn offered_video_rids(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_video = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video");
            continue;
        }
        if !in_video {
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rid:") {
            let mut parts = rest.split_whitespace();
            if let (Some(id), Some("send")) = (parts.next(), parts.next()) {
                if !id.is_empty() && id.len() <= 16 && !out.iter().any(|r| r == id) {
                    out.push(id.to_string());
                }
            }
        }
        if out.len() >= MAX_LAYERS {
            break;
        }
    }
    out
}

/// Most track ids [`sending_track_ids`] returns.
pub const MAX_SENDING_TRACKS: usize = 64;

/// The msid track ids (RFC 8830 §2: `a=msid:<stream id> <track id>`, or the same in an
/// `a=ssrc:<n> msid:` line) of the audio and video m-sections of an offer that send: port not 0
/// and direction `sendrecv` (the default) or `sendonly`. A track the publisher stopped
/// (`removeTrack`: its m-section turns `recvonly` or `inactive`) is not listed. At most
/// [`MAX_SENDING_TRACKS`], in SDP order.
pub fn sending_track_ids(sdp: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // The current m-section: it carries media, and its msid track ids so far.
    let mut media = false;
    let mut sends = true;
    let mut ids: Vec<String> = Vec::new();
    let flush = |media: bool, sends: bool, ids: &mut Vec<String>, out: &mut Vec<String>| {
        if media && sends {
            for id in ids.drain(..) {
                if out.len() < MAX_SENDING_TRACKS && !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        ids.clear();
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            flush(media, sends, &mut ids, &mut out);
            let mut f = m.split_whitespace();
            let kind = f.next().unwrap_or("");
            let port = f.next().unwrap_or("0");
            media = (kind == "audio" || kind == "video") && port != "0";
            sends = true;
            continue;
        }
        match line {
            "a=recvonly" | "a=inactive" => sends = false,
            "a=sendonly" | "a=sendrecv" => sends = true,
            _ => {}
        }
        let msid = line.strip_prefix("a=msid:").or_else(|| {
            line.strip_prefix("a=ssrc:")
                .and_then(|r| r.split_once(' '))
                .and_then(|(_, r)| r.strip_prefix("msid:"))
        });
        if let Some(track) = msid.and_then(|m| m.split_whitespace().nth(1)) {
            if !track.is_empty() && track.len() <= 64 && ids.len() < MAX_SENDING_TRACKS {
                ids.push(track.to_string());
            }
        }
    }
    flush(media, sends, &mut ids, &mut out);
    out
}

/// Whether a subscriber's codec fmtp line `a` can carry media encoded per `b`: H.264
/// profiles (the first 4 hex digits of `profile-level-id`, RFC 6184 §8.1) must match; other
/// codecs' fmtp lines are compatible.
pub fn fmtp_compatible(a: &str, b: &str) -> bool {
    fn profile(s: &str) -> Option<&str> {
        s.split(';')
            .find_map(|kv| kv.trim().strip_prefix("profile-level-id="))
            .map(|v| v.get(..4).unwrap_or(v))
    }
    match (profile(a), profile(b)) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        _ => true,
    }
}

/// Adds `b=TIAS` (RFC 3890) and `b=AS` lines to every video m-section of an answer, so the
/// publisher's encoder stays under `bps`.
pub fn limit_video_bitrate(sdp: &str, bps: u64) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_video = false;
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
        }
        if in_video && (line.starts_with("b=AS:") || line.starts_with("b=TIAS:")) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if in_video && line.starts_with("c=") {
            out.push_str(&format!("b=AS:{}\r\nb=TIAS:{}\r\n", bps / 1000, bps));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offered_rids_come_from_the_video_section_only() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rid:x send\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rid:q send\r\na=rid:h send\r\n\
                   a=rid:f send\r\na=rid:r recv\r\na=simulcast:send q;h;f\r\n";
        assert_eq!(offered_video_rids(sdp), ["q", "h", "f"]);
        let many: String = (0..10).map(|i| format!("a=rid:r{i} send\r\n")).collect();
        assert_eq!(
            offered_video_rids(&format!("m=video 9 X 96\r\n{many}")).len(),
            MAX_LAYERS
        );
        assert!(offered_video_rids("m=video 9 X 96\r\na=rid:\r\n").is_empty());
        let dup = "m=video 9 X 96\r\na=rid:q send\r\na=rid:q send\r\na=rid:x send\r\n";
        assert_eq!(offered_video_rids(dup), ["q", "x"]);
    }

    #[test]
    fn sending_tracks_are_those_of_sending_media_sections() {
        // Camera (simulcast), microphone, a screen share being stopped (recvonly), a rejected
        // section, and the data channel.
        let sdp = "v=0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s mic-1\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s cam-1\r\n\
                   a=rid:q send\r\na=ssrc:5 msid:s cam-1\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\na=msid:s old-1\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:4\r\na=sendonly\r\na=msid:x screen-1\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=msid:s nope\r\n";
        assert_eq!(sending_track_ids(sdp), ["mic-1", "cam-1", "screen-1"]);
        let stopped = sdp.replace("a=mid:4\r\na=sendonly", "a=mid:4\r\na=inactive");
        assert_eq!(sending_track_ids(&stopped), ["mic-1", "cam-1"]);
        assert!(sending_track_ids("").is_empty());
        assert!(sending_track_ids("m=video\r\na=msid:\r\na=msid:x\r\na=ssrc:1\r\n").is_empty());
        let many: String = (0..100)
            .map(|i| format!("m=audio 9 X 111\r\na=msid:s t{i}\r\n"))
            .collect();
        assert_eq!(sending_track_ids(&many).len(), MAX_SENDING_TRACKS);
    }

    #[test]
    fn h264_profiles_must_match_and_other_fmtp_lines_do() {
        let rows: &[(&str, &str, bool)] = &[
            ("profile-level-id=42e01f", "profile-level-id=42E034", true),
            (
                "level-asymmetry-allowed=1;profile-level-id=42e01f",
                "profile-level-id=640c1f",
                false,
            ),
            ("profile-level-id=42e01f", "", true),
            ("minptime=10;useinbandfec=1", "minptime=10", true),
            ("profile-level-id=42", "profile-level-id=42", true),
        ];
        for &(a, b, ok) in rows {
            assert_eq!(fmtp_compatible(a, b), ok, "{a} / {b}");
        }
    }

    #[test]
    fn every_video_section_gets_the_bitrate_cap_once() {
        let sdp = "v=0\r\nm=audio 9 X 111\r\nc=IN IP4 0.0.0.0\r\n\
                   m=video 9 X 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:99\r\na=mid:1\r\n\
                   m=video 9 X 97\r\nc=IN IP4 0.0.0.0\r\n";
        let out = limit_video_bitrate(sdp, 2_500_000);
        assert_eq!(
            out,
            "v=0\r\nm=audio 9 X 111\r\nc=IN IP4 0.0.0.0\r\n\
             m=video 9 X 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:2500\r\nb=TIAS:2500000\r\na=mid:1\r\n\
             m=video 9 X 97\r\nc=IN IP4 0.0.0.0\r\nb=AS:2500\r\nb=TIAS:2500000\r\n"
        );
        assert_eq!(limit_video_bitrate(&out, 2_500_000), out);
    }
}
