//! ChannelData framing (RFC 8656 §12.4), the probe carried in each payload, and splitting a TCP
//! byte stream into STUN messages and ChannelData frames (RFC 8656 §12.5). No I/O.

/// First channel number a client may bind, RFC 8656 §12.
pub const FIRST_CHANNEL: u16 = 0x4000;
/// ChannelData header: channel number (2 bytes) and length (2 bytes).
pub const CHANNEL_DATA_HEADER_BYTES: usize = 4;
/// Probe header at the start of every payload: magic, flow, sequence, send time.
pub const PROBE_BYTES: usize = 24;
/// "TBN1": marks a payload as one of ours.
const PROBE_MAGIC: u32 = 0x5442_4e31;
const STUN_HEADER_BYTES: usize = 20;

/// Errors of this layer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the header announces.
    #[error("truncated frame: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes the header asks for.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// First two bits are neither 00 (STUN) nor 01 (ChannelData).
    #[error("neither STUN nor ChannelData (first byte {0:#04x})")]
    UnknownFrame(u8),
    /// Payload is too short or lacks the probe magic.
    #[error("payload is not a turn-bench probe")]
    NotAProbe,
}

/// What a datagram or stream frame from the server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A STUN message (first two bits 00).
    Stun,
    /// A ChannelData message (first byte 0x40..=0x4F, RFC 8656 §12; 0x50..=0x7F reserved but
    /// framed the same way).
    ChannelData,
}

/// Classifies by the first byte, RFC 7983 §7 demultiplexing.
pub fn classify(first_byte: u8) -> Result<FrameKind, WireError> {
    match first_byte >> 6 {
        0 => Ok(FrameKind::Stun),
        1 => Ok(FrameKind::ChannelData),
        _ => Err(WireError::UnknownFrame(first_byte)),
    }
}

/// One test packet's identity and send time, written at the start of the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Sending allocation's index.
    pub flow: u32,
    /// Per-flow sequence number, from 0.
    pub seq: u64,
    /// Send time in nanoseconds since the run's epoch (one process, so one clock).
    pub sent_ns: u64,
}

impl Probe {
    /// Writes the probe into the first [`PROBE_BYTES`] of `payload`.
    ///
    /// # Panics
    /// If `payload` is shorter than [`PROBE_BYTES`] (the caller sizes its own buffers).
    pub fn write(&self, payload: &mut [u8]) {
        assert!(payload.len() >= PROBE_BYTES, "payload shorter than a probe");
        payload[0..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        payload[4..8].copy_from_slice(&self.flow.to_be_bytes());
        payload[8..16].copy_from_slice(&self.seq.to_be_bytes());
        payload[16..24].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a probe from the start of a payload.
    pub fn read(payload: &[u8]) -> Result<Self, WireError> {
        let p = payload.get(..PROBE_BYTES).ok_or(WireError::NotAProbe)?;
        if p[0..4] != PROBE_MAGIC.to_be_bytes() {
            return Err(WireError::NotAProbe);
        }
        let u64_at = |i: usize| {
            let mut b = [0; 8];
            b.copy_from_slice(&p[i..i + 8]);
            u64::from_be_bytes(b)
        };
        Ok(Self {
            flow: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

/// Builds a ChannelData frame with a zeroed payload of `payload_bytes`; over TCP (`pad`) the frame
/// is padded to a multiple of 4 bytes, RFC 8656 §12.5.
pub fn channel_data_frame(channel: u16, payload_bytes: u16, pad: bool) -> Vec<u8> {
    let mut len = CHANNEL_DATA_HEADER_BYTES + payload_bytes as usize;
    if pad {
        len = len.div_ceil(4) * 4;
    }
    let mut frame = vec![0; len];
    frame[0..2].copy_from_slice(&channel.to_be_bytes());
    frame[2..4].copy_from_slice(&payload_bytes.to_be_bytes());
    frame
}

/// Splits a ChannelData message into channel number and application data; trailing padding is
/// ignored.
pub fn parse_channel_data(buf: &[u8]) -> Result<(u16, &[u8]), WireError> {
    if buf.len() < CHANNEL_DATA_HEADER_BYTES {
        return Err(WireError::Truncated {
            need: CHANNEL_DATA_HEADER_BYTES,
            have: buf.len(),
        });
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let data = buf
        .get(CHANNEL_DATA_HEADER_BYTES..CHANNEL_DATA_HEADER_BYTES + len)
        .ok_or(WireError::Truncated {
            need: CHANNEL_DATA_HEADER_BYTES + len,
            have: buf.len(),
        })?;
    Ok((channel, data))
}

/// Length of the first frame in a TCP byte stream, or None if more bytes are needed to know.
/// ChannelData frames count their padding to 4 bytes (RFC 8656 §12.5).
pub fn stream_frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if buf.len() < CHANNEL_DATA_HEADER_BYTES {
        // Validate what we can already.
        classify(first)?;
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    Ok(Some(match classify(first)? {
        FrameKind::Stun => STUN_HEADER_BYTES + len,
        FrameKind::ChannelData => (CHANNEL_DATA_HEADER_BYTES + len).div_ceil(4) * 4,
    }))
}

/// Calls `on_frame` for each whole frame at the start of a TCP/TLS byte stream buffer; returns
/// the bytes consumed (the rest is an incomplete frame to keep). An error means the stream cannot
/// be framed (stop reading it).
pub fn split_stream_frames(
    buf: &[u8],
    mut on_frame: impl FnMut(&[u8]),
) -> Result<usize, WireError> {
    let mut at = 0;
    while let Some(len) = stream_frame_len(&buf[at..])? {
        if at + len > buf.len() {
            break;
        }
        on_frame(&buf[at..at + len]);
        at += len;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_data_round_trip() {
        let mut frame = channel_data_frame(0x4001, 30, false);
        assert_eq!(frame.len(), 34);
        assert_eq!(&frame[..4], &[0x40, 0x01, 0x00, 30]);
        let probe = Probe {
            flow: 3,
            seq: 0x0102_0304_0506_0708,
            sent_ns: 99,
        };
        probe.write(&mut frame[CHANNEL_DATA_HEADER_BYTES..]);
        let (channel, data) = parse_channel_data(&frame).unwrap();
        assert_eq!(channel, 0x4001);
        assert_eq!(data.len(), 30);
        assert_eq!(Probe::read(data).unwrap(), probe);
    }

    #[test]
    fn tcp_frames_are_padded() {
        let frame = channel_data_frame(0x4000, 161, true);
        assert_eq!(frame.len(), 168);
        assert_eq!(stream_frame_len(&frame).unwrap(), Some(168));
        let (_, data) = parse_channel_data(&frame).unwrap();
        assert_eq!(data.len(), 161);
    }

    #[test]
    fn stream_framing_of_stun_and_partial_input() {
        assert_eq!(stream_frame_len(&[]).unwrap(), None);
        assert_eq!(stream_frame_len(&[0x01]).unwrap(), None);
        assert_eq!(
            stream_frame_len(&[0x01, 0x13, 0x00, 0x08]).unwrap(),
            Some(28)
        );
        assert_eq!(
            stream_frame_len(&[0xC0, 0, 0, 0]),
            Err(WireError::UnknownFrame(0xC0))
        );
    }

    #[test]
    fn stream_split_keeps_the_partial_tail() {
        // 24 bytes of STUN: type, length 4, cookie, transaction id, 4 bytes of attributes.
        let mut stream = vec![0x01, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42];
        stream.extend_from_slice(&[0; 16]);
        stream.extend_from_slice(&channel_data_frame(0x4000, 5, true));
        stream.extend_from_slice(&[0x01, 0x01, 0x00]); // a partial header
        let mut frames = Vec::new();
        let used = split_stream_frames(&stream, |f| frames.push(f.len())).unwrap();
        assert_eq!(frames, vec![24, 12]);
        assert_eq!(used, 36);
        assert_eq!(
            split_stream_frames(&[0xC0, 0, 0, 0], |_| {}),
            Err(WireError::UnknownFrame(0xC0))
        );
    }

    #[test]
    fn truncated_and_foreign_payloads_are_errors() {
        assert!(matches!(
            parse_channel_data(&[0x40, 0x00, 0x00, 0x10, 1, 2]),
            Err(WireError::Truncated { need: 20, have: 6 })
        ));
        assert_eq!(Probe::read(&[0; 40]), Err(WireError::NotAProbe));
        assert_eq!(Probe::read(&[0; 3]), Err(WireError::NotAProbe));
    }
}
