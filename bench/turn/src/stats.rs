//! Counting what arrives: per-flow sequence tracking (loss, duplicates, reordering) and the
//! counters of senders and receivers (the latency histogram and the measurement window are
//! `bench_support`'s). No I/O, no clock.

use bench_support::histogram::LatencyHistogram;
use bench_support::stats::Window;

use crate::wire::{parse_channel_data, Probe};

/// What happened to one arriving sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time seen, in order.
    New,
    /// First time seen, but a higher number had already arrived.
    Reordered,
    /// Already seen.
    Duplicate,
    /// Beyond what the tracker accepts (a corrupted or foreign packet).
    OutOfRange,
}

/// Which sequence numbers of one flow have arrived: a bitset, grown on demand up to a cap.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    bits: Vec<u64>,
    highest: Option<u64>,
}

impl SeqTracker {
    /// Sequence numbers at or above this are refused (2^30: over an hour at 200k pps per flow).
    pub const MAX_SEQ: u64 = 1 << 30;

    /// Marks `seq` as received.
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq >= Self::MAX_SEQ {
            return Arrival::OutOfRange;
        }
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if word >= self.bits.len() {
            self.bits.resize((word + 1).next_power_of_two(), 0);
        }
        if self.bits[word] & bit != 0 {
            return Arrival::Duplicate;
        }
        self.bits[word] |= bit;
        match self.highest {
            Some(h) if seq < h => Arrival::Reordered,
            _ => {
                self.highest = Some(seq);
                Arrival::New
            }
        }
    }
}

/// Counters one receiving allocation keeps.
#[derive(Clone, Debug, Default)]
pub struct ReceiveStats {
    /// Distinct probes sent inside the window and received.
    pub received: u64,
    /// Their payload bytes.
    pub received_bytes: u64,
    /// Probes received more than once (inside the window).
    pub duplicates: u64,
    /// Probes that arrived after a higher sequence number (inside the window).
    pub reordered: u64,
    /// Probes sent outside the window (warm-up, drain).
    pub outside_window: u64,
    /// ChannelData that is not a probe for this receiver (wrong channel, flow, or bytes).
    pub malformed: u64,
    /// Datagrams that are neither STUN nor ChannelData, or STUN not taken by the control task.
    pub other: u64,
    /// One-way latency of window probes, first copies only.
    pub latency: LatencyHistogram,
}

impl ReceiveStats {
    /// Adds another receiver's counters.
    pub fn merge(&mut self, o: &Self) {
        self.received += o.received;
        self.received_bytes += o.received_bytes;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.outside_window += o.outside_window;
        self.malformed += o.malformed;
        self.other += o.other;
        self.latency.merge(&o.latency);
    }
}

/// The receiving end of one flow: checks each ChannelData, counts it once, times it.
#[derive(Clone, Debug)]
pub struct FlowReceiver {
    channel: u16,
    flow: u32,
    seqs: SeqTracker,
    /// What has been counted so far.
    pub stats: ReceiveStats,
}

impl FlowReceiver {
    /// Expects probes of flow `flow` on channel `channel`.
    pub fn new(channel: u16, flow: u32) -> Self {
        Self {
            channel,
            flow,
            seqs: SeqTracker::default(),
            stats: ReceiveStats::default(),
        }
    }

    /// Handles one ChannelData message received at `now_ns` (same epoch as the probes). Before
    /// the window is known, nothing counts as received.
    pub fn handle_channel_data(&mut self, frame: &[u8], now_ns: u64, window: Option<Window>) {
        match parse_channel_data(frame) {
            Ok((channel, data)) if channel == self.channel => {
                self.handle_payload(data, now_ns, window)
            }
            _ => self.stats.malformed += 1,
        }
    }

    /// Handles one probe payload without a ChannelData header, as a peer receives it from the
    /// relay (RFC 8656 §11.6).
    pub fn handle_payload(&mut self, data: &[u8], now_ns: u64, window: Option<Window>) {
        let probe = match Probe::read(data) {
            Ok(p) if p.flow == self.flow => p,
            _ => {
                self.stats.malformed += 1;
                return;
            }
        };
        let bytes = data.len();
        if !window.is_some_and(|w| w.contains(probe.sent_ns)) {
            self.stats.outside_window += 1;
            return;
        }
        match self.seqs.record(probe.seq) {
            arrival @ (Arrival::New | Arrival::Reordered) => {
                if arrival == Arrival::Reordered {
                    self.stats.reordered += 1;
                }
                self.stats.received += 1;
                self.stats.received_bytes += bytes as u64;
                self.stats
                    .latency
                    .record(now_ns.saturating_sub(probe.sent_ns) / 1000);
            }
            Arrival::Duplicate => self.stats.duplicates += 1,
            Arrival::OutOfRange => self.stats.malformed += 1,
        }
    }
}

/// Counters one sending task keeps.
#[derive(Clone, Debug, Default)]
pub struct SendStats {
    /// Probes sent inside the window.
    pub sent: u64,
    /// Probes sent in total (warm-up included).
    pub sent_total: u64,
    /// Sends that failed (e.g. ICMP port unreachable reported on a connected socket).
    pub errors: u64,
    /// Probes skipped because the generator fell more than a burst behind its schedule.
    pub lagged: u64,
}

impl SendStats {
    /// Adds another sender's counters.
    pub fn merge(&mut self, o: &Self) {
        self.sent += o.sent;
        self.sent_total += o.sent_total;
        self.errors += o.errors;
        self.lagged += o.lagged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_counts_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), Arrival::New);
        assert_eq!(t.record(2), Arrival::New);
        assert_eq!(t.record(1), Arrival::Reordered);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(t.record(1000), Arrival::New);
        assert_eq!(t.record(SeqTracker::MAX_SEQ), Arrival::OutOfRange);
    }

    #[test]
    fn flow_receiver_counts_window_probes_once() {
        use crate::wire::{channel_data_frame, CHANNEL_DATA_HEADER_BYTES};
        let window = Some(Window {
            start_ns: 1_000,
            end_ns: 1_000_000,
        });
        let mut rx = FlowReceiver::new(0x4000, 1);
        let frame = |flow, seq, sent_ns| {
            let mut f = channel_data_frame(0x4000, 40, false);
            Probe { flow, seq, sent_ns }.write(&mut f[CHANNEL_DATA_HEADER_BYTES..]);
            f
        };
        rx.handle_channel_data(&frame(1, 0, 500), 600, window); // warm-up
        rx.handle_channel_data(&frame(1, 1, 2_000), 52_000, window); // 50 us
        rx.handle_channel_data(&frame(1, 1, 2_000), 60_000, window); // duplicate
        rx.handle_channel_data(&frame(0, 2, 2_000), 60_000, window); // wrong flow
        rx.handle_channel_data(&[0x40, 0x00, 0x00], 60_000, window); // truncated
        rx.handle_channel_data(&frame(1, 3, 3_000), 13_000, None); // window unknown
        let s = &rx.stats;
        assert_eq!(
            (s.received, s.duplicates, s.malformed, s.outside_window),
            (1, 1, 2, 2)
        );
        assert_eq!(s.received_bytes, 40);
        assert_eq!(s.latency.quantile_us(0.5), Some(50));
    }

    #[test]
    fn flow_receiver_counts_plain_payloads_as_a_peer_gets_them() {
        let window = Some(Window {
            start_ns: 1_000,
            end_ns: 10_000,
        });
        let mut rx = FlowReceiver::new(0x4000, 7);
        let mut payload = [0u8; 40];
        Probe {
            flow: 7,
            seq: 0,
            sent_ns: 2_000,
        }
        .write(&mut payload);
        rx.handle_payload(&payload, 12_000, window);
        rx.handle_payload(&payload, 12_000, window); // duplicate
        rx.handle_payload(&payload[..10], 12_000, window); // not a probe
                                                           // The same probe inside a ChannelData header is not a plain payload.
        let mut framed = vec![0x40, 0x00, 0x00, 40];
        framed.extend_from_slice(&payload);
        rx.handle_payload(&framed, 12_000, window);
        assert_eq!(rx.stats.received, 1);
        assert_eq!(rx.stats.received_bytes, 40);
        assert_eq!(rx.stats.duplicates, 1);
        assert_eq!(rx.stats.malformed, 2);
    }
}
