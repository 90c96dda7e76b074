//! The payloads the synthetic publishers send: a VP8 payload descriptor (RFC 7741 §4.2, with a
//! 15-bit picture id the SFU rewrites) and frame header that the SFU's keyframe detection
//! recognises, or plain Opus-sized filler, followed by a probe (publisher, kind, sequence number,
//! send time on the bench's monotonic clock) that the subscriber decodes. No I/O.

/// Where the probe starts in every payload (after descriptor + 10-byte VP8 frame header).
pub const PROBE_OFFSET: usize = 14;
/// Probe bytes: magic, publisher, kind, sequence number, send time.
pub const PROBE_BYTES: usize = 4 + 4 + 1 + 4 + 8;
/// Smallest payload that holds a probe.
pub const MIN_PAYLOAD: usize = PROBE_OFFSET + PROBE_BYTES;
const MAGIC: [u8; 4] = *b"SFB1";

/// Which of a publisher's tracks a packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The VP8 track.
    Video = 0,
    /// The Opus track.
    Audio = 1,
}

/// What each packet carries for the measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Publisher index in the bench's plan.
    pub publisher: u32,
    /// Track.
    pub kind: Kind,
    /// Per-track sequence number (0, 1, ...), not the RTP one (the SFU rewrites that).
    pub seq: u32,
    /// Send time, microseconds since the bench's epoch.
    pub sent_us: u64,
}

/// Position of a VP8 packet in its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vp8Part {
    /// First packet of a keyframe.
    KeyStart,
    /// First packet of an inter frame.
    InterStart,
    /// Any later packet of a frame.
    Continuation,
}

/// A VP8 RTP payload of `size` bytes (at least [`MIN_PAYLOAD`]) carrying `probe`.
pub fn vp8_payload(part: Vp8Part, picture_id: u16, probe: &Probe, size: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(size.max(MIN_PAYLOAD));
    let s_bit = if part == Vp8Part::Continuation {
        0x80
    } else {
        0x90
    };
    v.extend_from_slice(&[
        s_bit,
        0x80,
        0x80 | (picture_id >> 8) as u8,
        picture_id as u8,
    ]);
    match part {
        // Frame tag (keyframe: bit 0 clear), start code, 640x360.
        Vp8Part::KeyStart => {
            v.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01])
        }
        Vp8Part::InterStart => v.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Vp8Part::Continuation => v.extend_from_slice(&[0; 10]),
    }
    finish(v, probe, size)
}

/// An Opus-sized RTP payload of `size` bytes carrying `probe`.
pub fn audio_payload(probe: &Probe, size: usize) -> Vec<u8> {
    finish(vec![0xfc; PROBE_OFFSET], probe, size)
}

fn finish(mut v: Vec<u8>, p: &Probe, size: usize) -> Vec<u8> {
    debug_assert_eq!(v.len(), PROBE_OFFSET);
    v.extend_from_slice(&MAGIC);
    v.extend_from_slice(&p.publisher.to_be_bytes());
    v.push(p.kind as u8);
    v.extend_from_slice(&p.seq.to_be_bytes());
    v.extend_from_slice(&p.sent_us.to_be_bytes());
    v.resize(size.max(MIN_PAYLOAD), 0);
    v
}

/// The probe of a received payload; None if it carries none.
pub fn decode(payload: &[u8]) -> Option<Probe> {
    let p = payload.get(PROBE_OFFSET..PROBE_OFFSET + PROBE_BYTES)?;
    if p[..4] != MAGIC {
        return None;
    }
    let kind = match p[8] {
        0 => Kind::Video,
        1 => Kind::Audio,
        _ => return None,
    };
    Some(Probe {
        publisher: u32::from_be_bytes(p[4..8].try_into().ok()?),
        kind,
        seq: u32::from_be_bytes(p[9..13].try_into().ok()?),
        sent_us: u64::from_be_bytes(p[13..21].try_into().ok()?),
    })
}

/// Which sequence numbers of one stream arrived (for loss and duplicates).
#[derive(Debug, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
}

impl SeqSet {
    /// Marks `seq`; false if it was already there (a duplicate).
    pub fn insert(&mut self, seq: u32) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_in_both_payload_kinds() {
        let p = Probe {
            publisher: 7,
            kind: Kind::Video,
            seq: 123_456,
            sent_us: 9_876_543_210,
        };
        let v = vp8_payload(Vp8Part::KeyStart, 0x1234, &p, 1000);
        assert_eq!(v.len(), 1000);
        assert_eq!(decode(&v), Some(p));
        // The SFU's view: S=1, partition 0, keyframe tag bit clear, start code at offset 7.
        assert_eq!(v[0], 0x90);
        assert_eq!(v[4] & 1, 0);
        assert_eq!(&v[7..10], &[0x9d, 0x01, 0x2a]);
        let inter = vp8_payload(Vp8Part::InterStart, 1, &p, 10);
        assert_eq!(inter.len(), MIN_PAYLOAD);
        assert_eq!(inter[4] & 1, 1);
        assert_eq!(vp8_payload(Vp8Part::Continuation, 1, &p, 100)[0], 0x80);
        let a = Probe {
            kind: Kind::Audio,
            ..p
        };
        assert_eq!(decode(&audio_payload(&a, 100)), Some(a));
        assert_eq!(decode(&[0; 40]), None);
        assert_eq!(decode(&v[..20]), None);
    }

    #[test]
    fn seq_set_counts_duplicates() {
        let mut s = SeqSet::default();
        assert!(s.insert(0));
        assert!(s.insert(1000));
        assert!(!s.insert(1000));
        assert!(s.insert(63));
        assert!(!s.insert(0));
    }
}
