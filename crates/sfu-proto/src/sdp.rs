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

/// Most MIDs [`sending_mids`] returns.
pub const MAX_SENDING_SECTIONS: usize = 64;

/// The MIDs (`a=mid`, RFC 8843 §15) of the audio and video m-sections of an offer that send:
/// port not 0 and direction `sendrecv` (the default) or `sendonly`. A track the publisher
/// stopped (`removeTrack`: its m-section turns `recvonly`; `stop()`: `inactive` or port 0) is
/// not listed. At most [`MAX_SENDING_SECTIONS`], in SDP order; MIDs over 32 bytes are skipped.
pub fn sending_mids(sdp: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    // The current m-section: it carries media, sends, and its MID.
    let mut media = false;
    let mut sends = true;
    let mut mid: Option<String> = None;
    let flush = |media: bool, sends: bool, mid: &mut Option<String>, out: &mut Vec<String>| {
        if let (true, true, Some(m)) = (media, sends, mid.take()) {
            if out.len() < MAX_SENDING_SECTIONS && !out.contains(&m) {
                out.push(m);
            }
        }
        *mid = None;
    };
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            flush(media, sends, &mut mid, &mut out);
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
        if let Some(m) = line.strip_prefix("a=mid:") {
            let m = m.trim();
            if !m.is_empty() && m.len() <= 32 {
                mid = Some(m.to_string());
            }
        }
    }
    flush(media, sends, &mut mid, &mut out);
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
    fn sending_sections_are_those_that_send_media() {
        // Microphone, camera (simulcast), a screen share being stopped (recvonly), a rejected
        // section, a screen share, and the data channel.
        let sdp = "v=0\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s mic-1\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s cam-1\r\na=rid:q send\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=recvonly\r\n\
                   m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\na=mid:4\r\na=msid:x screen-1\r\n\
                   m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:5\r\n";
        assert_eq!(sending_mids(sdp), ["0", "1", "4"]);
        let stopped = sdp.replace("a=sendonly\r\na=mid:4", "a=inactive\r\na=mid:4");
        assert_eq!(sending_mids(&stopped), ["0", "1"]);
        assert!(sending_mids("").is_empty());
        assert!(sending_mids("m=video\r\na=mid:\r\nm=audio 9\r\n").is_empty());
        let long = format!("m=audio 9 X 111\r\na=mid:{}\r\n", "x".repeat(33));
        assert!(sending_mids(&long).is_empty());
        let many: String = (0..100)
            .map(|i| format!("m=audio 9 X 111\r\na=mid:{i}\r\n"))
            .collect();
        assert_eq!(sending_mids(&many).len(), MAX_SENDING_SECTIONS);
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
