//! Payload inspection the forwarding decisions need, without depacketizing: keyframe detection
//! and picture size (VP8 RFC 7741 §4, VP9 draft-ietf-payload-vp9 §4, H.264 RFC 6184 §5), VP8
//! picture id rewriting, and the RFC 6464 audio level. Every function takes any byte string and
//! never panics.

/// Video codec of a forwarded track, from its MIME type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoCodec {
    /// `video/VP8`.
    Vp8,
    /// `video/VP9`.
    Vp9,
    /// `video/H264`.
    H264,
    /// Anything else (forwarded, but layer switches wait for nothing).
    Other,
}

impl VideoCodec {
    /// From an SDP MIME type such as `video/VP8` (case-insensitive).
    pub fn from_mime(mime: &str) -> Self {
        let m = mime.to_ascii_lowercase();
        match m.as_str() {
            "video/vp8" => Self::Vp8,
            "video/vp9" => Self::Vp9,
            "video/h264" => Self::H264,
            _ => Self::Other,
        }
    }
}

/// Where the VP8 payload starts after the payload descriptor (RFC 7741 §4.2), and the offset
/// and width (7 or 15 bits) of the picture id if present.
struct Vp8Descriptor {
    start_of_partition: bool,
    partition_id: u8,
    picture_id: Option<(usize, bool)>,
    payload_offset: usize,
}

fn vp8_descriptor(p: &[u8]) -> Option<Vp8Descriptor> {
    let b0 = *p.first()?;
    let mut i = 1;
    let mut picture_id = None;
    if b0 & 0x80 != 0 {
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            let m = *p.get(i)? & 0x80 != 0;
            picture_id = Some((i, m));
            i += if m { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // TID/Y/KEYIDX
        }
    }
    if i > p.len() {
        return None;
    }
    Some(Vp8Descriptor {
        start_of_partition: b0 & 0x10 != 0,
        partition_id: b0 & 0x0f,
        picture_id,
        payload_offset: i,
    })
}

/// True if this RTP payload starts a keyframe (the first packet of an intra frame).
pub fn is_keyframe_start(codec: VideoCodec, p: &[u8]) -> bool {
    match codec {
        VideoCodec::Vp8 => {
            let Some(d) = vp8_descriptor(p) else {
                return false;
            };
            d.start_of_partition
                && d.partition_id == 0
                && p.get(d.payload_offset).is_some_and(|b| b & 0x01 == 0)
        }
        VideoCodec::Vp9 => {
            // I|P|L|F|B|E|V|Z: a keyframe is not inter-predicted (P=0) and starts a frame (B=1).
            // With spatial layers only layer 0 matters; L is followed by TID/U/SID/D.
            let Some(&b0) = p.first() else {
                return false;
            };
            let p_bit = b0 & 0x40 != 0;
            let b_bit = b0 & 0x08 != 0;
            if p_bit || !b_bit {
                return false;
            }
            let mut i = 1;
            if b0 & 0x80 != 0 {
                let Some(&pid) = p.get(i) else { return false };
                i += if pid & 0x80 != 0 { 2 } else { 1 };
            }
            if b0 & 0x20 != 0 {
                let Some(&l) = p.get(i) else { return false };
                return (l >> 1) & 0x07 == 0;
            }
            true
        }
        VideoCodec::H264 => h264_has_idr(p),
        VideoCodec::Other => true,
    }
}

fn h264_has_idr(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 & 0x1f {
        5 | 7 => true,
        24 => {
            // STAP-A: 16-bit size, then a NAL unit, repeated.
            let mut i = 1;
            while i + 2 < p.len() {
                let size = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if let Some(&nal) = p.get(i + 2) {
                    if matches!(nal & 0x1f, 5 | 7) {
                        return true;
                    }
                }
                i += 2 + size;
            }
            false
        }
        28 => p.get(1).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == 5),
        _ => false,
    }
}

/// Width and height in pixels from a VP8 keyframe's first packet (RFC 6386 §9.1), if this is one.
pub fn vp8_keyframe_size(p: &[u8]) -> Option<(u16, u16)> {
    let d = vp8_descriptor(p)?;
    if !(d.start_of_partition && d.partition_id == 0) {
        return None;
    }
    let f = p.get(d.payload_offset..d.payload_offset + 10)?;
    if f[0] & 0x01 != 0 || f[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let w = u16::from_le_bytes([f[6], f[7]]) & 0x3fff;
    let h = u16::from_le_bytes([f[8], f[9]]) & 0x3fff;
    Some((w, h))
}

/// The VP8 picture id of this payload, if it carries one: (value, 15-bit?).
pub fn vp8_picture_id(p: &[u8]) -> Option<(u16, bool)> {
    let d = vp8_descriptor(p)?;
    let (off, m) = d.picture_id?;
    if m {
        Some((u16::from_be_bytes([p[off], p[off + 1]]) & 0x7fff, true))
    } else {
        Some((u16::from(p[off] & 0x7f), false))
    }
}

/// Rewrites the VP8 picture id in place (keeping its width); false if there is none.
pub fn set_vp8_picture_id(p: &mut [u8], value: u16) -> bool {
    let Some(d) = vp8_descriptor(p) else {
        return false;
    };
    let Some((off, m)) = d.picture_id else {
        return false;
    };
    if m {
        let v = (value & 0x7fff) | 0x8000;
        p[off..off + 2].copy_from_slice(&v.to_be_bytes());
    } else {
        p[off] = (value & 0x7f) as u8;
    }
    true
}

/// The RFC 6464 audio level (0 = 0 dBov loudest .. 127 = silence) in a one-byte extension body.
pub fn audio_level(ext: &[u8]) -> Option<u8> {
    ext.first().map(|b| b & 0x7f)
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    /// A VP8 keyframe's first packet: descriptor with a 15-bit picture id, then the frame tag,
    /// start code and a 640x360 size.
    fn vp8_key() -> Vec<u8> {
        vec![
            0x90, 0x80, 0x81, 0x23, // X=1 S=1 PID=0 | I=1 | M=1 picture id 0x0123
            0x00, 0x00, 0x00, // frame tag, keyframe (bit 0 = 0)
            0x9d, 0x01, 0x2a, // start code
            0x80, 0x02, 0x68, 0x01, // 640, 360
        ]
    }

    #[test]
    fn vp8_keyframe_size_and_picture_id() {
        let mut p = vp8_key();
        assert!(is_keyframe_start(VideoCodec::Vp8, &p));
        assert_eq!(vp8_keyframe_size(&p), Some((640, 360)));
        assert_eq!(vp8_picture_id(&p), Some((0x0123, true)));
        assert!(set_vp8_picture_id(&mut p, 0x7fff));
        assert_eq!(vp8_picture_id(&p), Some((0x7fff, true)));
        // An inter frame (bit 0 of the tag set) is not a keyframe.
        p[4] = 0x01;
        assert!(!is_keyframe_start(VideoCodec::Vp8, &p));
        // A continuation packet (S=0) is not a start.
        let mut c = vp8_key();
        c[0] = 0x80;
        assert!(!is_keyframe_start(VideoCodec::Vp8, &c));
    }

    #[test]
    fn h264_idr_in_single_stap_and_fu() {
        assert!(is_keyframe_start(VideoCodec::H264, &[0x65, 0, 0]));
        assert!(!is_keyframe_start(VideoCodec::H264, &[0x41, 0, 0]));
        // STAP-A with SPS (7).
        assert!(is_keyframe_start(
            VideoCodec::H264,
            &[0x78, 0, 2, 0x67, 0x42]
        ));
        // FU-A start of an IDR.
        assert!(is_keyframe_start(VideoCodec::H264, &[0x7c, 0x85, 0]));
        assert!(!is_keyframe_start(VideoCodec::H264, &[0x7c, 0x05, 0]));
    }

    #[test]
    fn vp9_keyframe() {
        // I=0 P=0 L=0 F=0 B=1 E=0 V=1 Z=0
        assert!(is_keyframe_start(VideoCodec::Vp9, &[0x0a]));
        // P=1
        assert!(!is_keyframe_start(VideoCodec::Vp9, &[0x4a]));
    }

    #[test]
    fn never_panics_on_short_or_random_input() {
        let mut seed = 7u32;
        for len in 0..64 {
            for _ in 0..200 {
                let mut v = Vec::with_capacity(len);
                for _ in 0..len {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    v.push((seed >> 16) as u8);
                }
                for c in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
                    let _ = is_keyframe_start(c, &v);
                }
                let _ = vp8_keyframe_size(&v);
                let _ = vp8_picture_id(&v);
                let _ = set_vp8_picture_id(&mut v, 5);
                let _ = audio_level(&v);
            }
        }
    }
}
