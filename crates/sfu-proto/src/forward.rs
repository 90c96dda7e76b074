//! Per-subscriber RTP rewriting (one [`Rewriter`] per forwarded track and subscriber): the
//! subscriber sees one continuous stream (its own SSRC, sequence numbers, timestamps and VP8
//! picture ids) across simulcast layer switches and publisher restarts (RFC 3550 §5.1: sequence
//! numbers increase by one, timestamps follow the sampling clock).

use std::time::Instant;

/// Signed distance from `b` to `a` in 16-bit sequence space (RFC 3550 §A.1).
pub fn seq_diff(a: u16, b: u16) -> i32 {
    i32::from(a.wrapping_sub(b) as i16)
}

/// What [`Rewriter::rewrite`] decided for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewritten {
    /// Output sequence number.
    pub seq: u16,
    /// Output timestamp.
    pub timestamp: u32,
    /// Output VP8 picture id (when the input had one).
    pub picture_id: Option<u16>,
}

/// Maps (source SSRC, sequence number, timestamp, picture id) to the subscriber's continuous
/// numbering. A change of source SSRC starts a new segment right after the last output packet.
#[derive(Debug)]
pub struct Rewriter {
    clock_rate: u32,
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    pid_offset: u16,
    /// First input sequence number of the current segment: older packets of the same source
    /// (reordered from before the switch) are dropped.
    segment_start: u16,
    last_out_seq: u16,
    last_out_ts: u32,
    last_out_pid: u16,
    last_out_at: Option<Instant>,
}

impl Rewriter {
    /// A rewriter for a stream sampled at `clock_rate` Hz.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            pid_offset: 0,
            segment_start: 0,
            last_out_seq: 0,
            last_out_ts: 0,
            last_out_pid: 0,
            last_out_at: None,
        }
    }

    /// The stream's clock rate, Hz.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// The source currently forwarded (None before the first packet).
    pub fn source(&self) -> Option<u32> {
        self.source
    }

    /// Rewrites one packet of `ssrc`; None means drop it (older than the current segment).
    pub fn rewrite(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        picture_id: Option<u16>,
    ) -> Option<Rewritten> {
        if self.source != Some(ssrc) {
            match self.last_out_at {
                None => {
                    // First packet ever: keep the publisher's numbering.
                    self.seq_offset = 0;
                    self.ts_offset = 0;
                    self.pid_offset = 0;
                }
                Some(at) => {
                    // Continue right after the last output packet; advance the timestamp by the
                    // wall-clock time since then (at least one tick) so the receiver's jitter
                    // estimate stays sane.
                    let elapsed = now.saturating_duration_since(at);
                    let ticks = (elapsed.as_secs_f64() * f64::from(self.clock_rate)) as u32;
                    let next_ts = self.last_out_ts.wrapping_add(ticks.max(1));
                    self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
                    self.ts_offset = next_ts.wrapping_sub(timestamp);
                    if let Some(pid) = picture_id {
                        self.pid_offset = self.last_out_pid.wrapping_add(1).wrapping_sub(pid);
                    }
                }
            }
            self.source = Some(ssrc);
            self.segment_start = seq;
        } else if seq_diff(seq, self.segment_start) < 0 {
            return None;
        }
        let out = Rewritten {
            seq: seq.wrapping_add(self.seq_offset),
            timestamp: timestamp.wrapping_add(self.ts_offset),
            picture_id: picture_id.map(|p| p.wrapping_add(self.pid_offset) & 0x7fff),
        };
        if self.last_out_at.is_none() || seq_diff(out.seq, self.last_out_seq) > 0 {
            self.last_out_seq = out.seq;
            self.last_out_ts = out.timestamp;
            if let Some(p) = out.picture_id {
                self.last_out_pid = p;
            }
            self.last_out_at = Some(now);
        }
        Some(out)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_layer_switch_continues_the_numbering() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(90_000);
        let a = r.rewrite(t0, 1, 100, 9000, Some(10)).unwrap();
        assert_eq!((a.seq, a.timestamp, a.picture_id), (100, 9000, Some(10)));
        let b = r.rewrite(t0, 1, 101, 9000, Some(10)).unwrap();
        assert_eq!(b.seq, 101);
        // Switch to SSRC 2 whose numbers are unrelated, 33 ms later.
        let c = r
            .rewrite(
                t0 + Duration::from_millis(33),
                2,
                5000,
                1_000_000,
                Some(500),
            )
            .unwrap();
        assert_eq!(c.seq, 102);
        assert_eq!(c.timestamp, 9000 + 2970);
        assert_eq!(c.picture_id, Some(11));
        let d = r.rewrite(t0, 2, 5001, 1_003_000, Some(501)).unwrap();
        assert_eq!(
            (d.seq, d.timestamp, d.picture_id),
            (103, 9000 + 2970 + 3000, Some(12))
        );
        // A reordered packet of the new source from before the switch point is dropped.
        assert!(r.rewrite(t0, 2, 4999, 1_000_000, None).is_none());
        // Reordering inside the segment keeps its relative number.
        let e = r.rewrite(t0, 2, 5003, 1_003_000, None).unwrap();
        let f = r.rewrite(t0, 2, 5002, 1_003_000, None).unwrap();
        assert_eq!((e.seq, f.seq), (105, 104));
    }

    #[test]
    fn wraps_around() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(48_000);
        r.rewrite(t0, 9, 65535, u32::MAX, None).unwrap();
        let n = r.rewrite(t0, 9, 0, 959, None).unwrap();
        assert_eq!(n.seq, 0);
        assert_eq!(n.timestamp, 959);
        assert_eq!(seq_diff(0, 65535), 1);
    }
}
