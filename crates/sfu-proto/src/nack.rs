//! The subscriber leg's NACK responder (RFC 4585 §6.2.1), answering with RTX (RFC 4588) where
//! the subscriber negotiated it, from a send history sized by the stream's packet rate and the
//! leg's round-trip time rather than by a fixed count.
//!
//! rtc's own responder keeps 1024 packets per stream whatever the stream: 20 s of audio, 5–10 s
//! of a video layer, and when forwarding rewrote the payload (a VP8 picture id after a layer
//! switch) each of those packets is the subscriber's own copy. A retransmission is only useful
//! while the receiver still waits for the packet: a NACK comes one round trip after the
//! packet left at the earliest, and a receiver asks again about once per round trip. This
//! history therefore keeps what was sent in the last [`HistoryConfig::rtt_factor`] round trips,
//! bounded below by [`HistoryConfig::min_window`] (short paths, bursty NACKs) and above by
//! [`HistoryConfig::max_window`] and [`HistoryConfig::max_packets`]: the packet count follows
//! the rate, the window follows the RTT.
//!
//! The RTT is measured here, per peer connection, from the subscriber's receiver reports
//! (RFC 3550 §6.4.1): the middle 32 bits of each sender report's NTP time are remembered with
//! the instant it passed (on its way to the wire), and a report block echoing them (LSR)
//! after DLSR gives `now - sent - DLSR`, smoothed as TCP does (RFC 6298, gain 1/8).
//!
//! It is one part of the subscribe leg's single interceptor, [`crate::send_side::SendSide`],
//! which feeds it; NACKs and retransmissions are counted in the worker's
//! [`FeedbackCounters`].
//!
//! Bounds against a subscriber that NACKs everything: a packet is sent again at most once per
//! smoothed RTT (at least [`HistoryConfig::min_resend_interval`]) and at most
//! [`HistoryConfig::max_resends`] times in all, so what NACKs can make the SFU send is at most
//! that many times the stream itself; one NACK packet names at most 17 sequence numbers per
//! pair, over pairs bounded by the RTCP packet's own size.

use crate::peer::FeedbackCounters;
use rtc::interceptor::{Attribute, AttributedPacket, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::TransportContext;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long packets are kept.
#[derive(Clone, Copy, Debug)]
pub struct HistoryConfig {
    /// Packets are kept this many smoothed round-trip times.
    pub rtt_factor: u32,
    /// ...but at least this long.
    pub min_window: Duration,
    /// ...and at most this long.
    pub max_window: Duration,
    /// The window before the first RTT sample.
    pub initial_window: Duration,
    /// Most packets kept per stream, whatever the rate.
    pub max_packets: usize,
    /// Least time between two retransmissions of one packet when the RTT is not known yet
    /// or shorter.
    pub min_resend_interval: Duration,
    /// Most times one packet is sent again. Without it, a subscriber NACKing every held packet
    /// once per RTT would get each sent up to window / RTT times (25 and more).
    pub max_resends: u8,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        Self {
            rtt_factor: 4,
            min_window: Duration::from_millis(250),
            max_window: Duration::from_millis(1500),
            initial_window: Duration::from_millis(500),
            max_packets: 1024,
            min_resend_interval: Duration::from_millis(10),
            // A receiver asks again about once per RTT while it waits; three answers cover
            // a retransmission lost twice.
            max_resends: 3,
        }
    }
}

impl HistoryConfig {
    /// The window for a smoothed RTT (None: not measured yet).
    pub fn window(&self, srtt: Option<Duration>) -> Duration {
        match srtt {
            None => self.initial_window,
            Some(rtt) => (rtt * self.rtt_factor).clamp(self.min_window, self.max_window),
        }
    }
}

/// One packet sent: what a retransmission needs and no more (the payload is shared with
/// the packet that left, and with the publisher's when forwarding did not rewrite it).
/// Forwarded packets carry no CSRC and no header extension at this point of the chain (TWCC's
/// is added below it).
struct Sent {
    at: Instant,
    resent: Option<Instant>,
    resends: u8,
    payload: bytes::Bytes,
    timestamp: u32,
    seq: u16,
    payload_type: u8,
    marker: bool,
}

struct Stream {
    packets: VecDeque<Sent>,
    ssrc_rtx: Option<u32>,
    payload_type_rtx: Option<u8>,
    rtx_seq: u16,
}

impl Stream {
    /// Index of the packet with sequence number `seq`, if held. Forwarded numbering is
    /// contiguous, so the offset from the oldest usually finds it at once.
    fn find(&self, seq: u16) -> Option<usize> {
        let first = self.packets.front()?.seq;
        let guess = usize::from(seq.wrapping_sub(first));
        if self.packets.get(guess).is_some_and(|s| s.seq == seq) {
            return Some(guess);
        }
        self.packets.iter().rposition(|s| s.seq == seq)
    }
}

/// Sender reports remembered for RTT measurement (a few: RRs echo the latest).
const SR_MEMORY: usize = 8;

/// The NACK responder with an RTT-sized history (see the module docs). Part of the subscribe
/// leg's [`crate::send_side::SendSide`] interceptor, which feeds it what is sent (media, sender
/// reports) and received (NACKs, receiver reports) and numbers its retransmissions for TWCC.
pub struct NackHistory {
    cfg: HistoryConfig,
    counters: Arc<FeedbackCounters>,
    /// By SSRC: a PC's few local streams, searched in order (cheaper than hashing per packet).
    streams: Vec<(u32, Stream)>,
    /// (middle 32 bits of an SR's NTP time, when it passed).
    reports: VecDeque<(u32, Instant)>,
    srtt: Option<Duration>,
    held: u64,
}

/// The stream of `ssrc` in `streams`.
fn stream_mut(streams: &mut [(u32, Stream)], ssrc: u32) -> Option<&mut Stream> {
    streams.iter_mut().find(|(s, _)| *s == ssrc).map(|(_, s)| s)
}

impl NackHistory {
    /// A responder keeping packets as `cfg` says, adding to `counters`.
    pub fn new(cfg: HistoryConfig, counters: Arc<FeedbackCounters>) -> Self {
        Self {
            cfg,
            counters,
            streams: Vec::new(),
            reports: VecDeque::with_capacity(SR_MEMORY),
            srtt: None,
            held: 0,
        }
    }

    /// The smoothed round-trip time, once a receiver report gave one.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Moves the worker-wide gauge by what this history now holds more (or less).
    fn adjust_held(&mut self, before: usize, after: usize) {
        if after >= before {
            let d = (after - before) as u64;
            self.counters
                .history_packets
                .fetch_add(d, Ordering::Relaxed);
            self.held += d;
        } else {
            let d = (before - after) as u64;
            self.counters
                .history_packets
                .fetch_sub(d, Ordering::Relaxed);
            self.held -= d;
        }
    }

    pub(crate) fn on_rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    /// Takes RTT samples from report blocks (of a receiver or sender report) echoing a sender
    /// report this leg sent (RFC 3550 §6.4.1).
    pub(crate) fn on_receiver_reports(
        &mut self,
        now: Instant,
        reports: &[rtc::rtcp::reception_report::ReceptionReport],
    ) {
        for r in reports {
            if r.last_sender_report == 0 {
                continue;
            }
            let Some(&(_, sent)) = self
                .reports
                .iter()
                .find(|(mid, _)| *mid == r.last_sender_report)
            else {
                continue;
            };
            // DLSR is in units of 1/65536 s.
            let dlsr = Duration::from_nanos(u64::from(r.delay) * 1_000_000_000 / 65_536);
            if let Some(rtt) = now.saturating_duration_since(sent).checked_sub(dlsr) {
                self.on_rtt_sample(rtt.max(Duration::from_micros(100)));
            }
        }
    }

    /// Answers a generic NACK (RFC 4585 §6.2.1): the packets it names that are held and were not
    /// resent within the last RTT go to `out`, as RTX where negotiated, marked
    /// [`Attribute::Retransmission`].
    pub(crate) fn on_nack(
        &mut self,
        now: Instant,
        nack: &TransportLayerNack,
        out: &mut VecDeque<TaggedPacket>,
    ) {
        self.counters.nack.fetch_add(1, Ordering::Relaxed);
        let min_gap = self
            .srtt
            .unwrap_or_default()
            .max(self.cfg.min_resend_interval);
        let Some(stream) = stream_mut(&mut self.streams, nack.media_ssrc) else {
            return;
        };
        for pair in &nack.nacks {
            for i in 0..17u16 {
                if i > 0 && pair.lost_packets & (1 << (i - 1)) == 0 {
                    continue;
                }
                let seq = pair.packet_id.wrapping_add(i);
                let Some(idx) = stream.find(seq) else {
                    self.counters.nack_missing.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let sent = &mut stream.packets[idx];
                if sent.resends >= self.cfg.max_resends
                    || sent
                        .resent
                        .is_some_and(|at| now.saturating_duration_since(at) < min_gap)
                {
                    self.counters.nack_throttled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                sent.resent = Some(now);
                sent.resends += 1;
                self.counters.retransmitted.fetch_add(1, Ordering::Relaxed);
                let (ssrc, payload_type, sequence_number, payload) =
                    match (stream.ssrc_rtx, stream.payload_type_rtx) {
                        (Some(ssrc), Some(pt)) => {
                            // RFC 4588 §4: the original sequence number, then the original
                            // payload, on the RTX stream's own numbering.
                            let mut payload = Vec::with_capacity(2 + sent.payload.len());
                            payload.extend_from_slice(&sent.seq.to_be_bytes());
                            payload.extend_from_slice(&sent.payload);
                            let seq = stream.rtx_seq;
                            stream.rtx_seq = seq.wrapping_add(1);
                            (ssrc, pt, seq, bytes::Bytes::from(payload))
                        }
                        _ => (
                            nack.media_ssrc,
                            sent.payload_type,
                            sent.seq,
                            sent.payload.clone(),
                        ),
                    };
                let packet = rtc::rtp::Packet {
                    header: rtc::rtp::header::Header {
                        version: 2,
                        ssrc,
                        payload_type,
                        sequence_number,
                        timestamp: sent.timestamp,
                        marker: sent.marker,
                        ..Default::default()
                    },
                    payload,
                };
                out.push_back(TaggedPacket {
                    now,
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(packet))
                        .with(Attribute::Retransmission),
                });
            }
        }
    }

    /// Remembers a sender report leaving at `now`, by the middle 32 bits of its NTP time, which
    /// receiver reports echo as LSR.
    pub(crate) fn on_sender_report_sent(&mut self, ntp_time: u64, now: Instant) {
        if self.reports.len() == SR_MEMORY {
            self.reports.pop_front();
        }
        self.reports.push_back(((ntp_time >> 16) as u32, now));
    }

    /// Starts a history for a local stream that negotiated generic NACK; others keep nothing.
    pub(crate) fn bind(&mut self, info: &StreamInfo) {
        let nack = info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty());
        if nack {
            self.unbind(info);
            self.streams.push((
                info.ssrc,
                Stream {
                    packets: VecDeque::new(),
                    ssrc_rtx: info.ssrc_rtx,
                    payload_type_rtx: info.payload_type_rtx,
                    rtx_seq: 0,
                },
            ));
        }
    }

    /// Drops a local stream's history.
    pub(crate) fn unbind(&mut self, info: &StreamInfo) {
        if let Some(i) = self.streams.iter().position(|(s, _)| *s == info.ssrc) {
            let (_, s) = self.streams.swap_remove(i);
            self.adjust_held(s.packets.len(), 0);
        }
    }

    /// Records a packet going out (not a retransmission) and drops what is older than the
    /// window.
    pub(crate) fn on_sent(&mut self, now: Instant, packet: &rtc::rtp::Packet) {
        let window = self.cfg.window(self.srtt);
        let max = self.cfg.max_packets;
        let Some(stream) = stream_mut(&mut self.streams, packet.header.ssrc) else {
            return;
        };
        let before = stream.packets.len();
        stream.packets.push_back(Sent {
            at: now,
            resent: None,
            resends: 0,
            payload: packet.payload.clone(),
            timestamp: packet.header.timestamp,
            seq: packet.header.sequence_number,
            payload_type: packet.header.payload_type,
            marker: packet.header.marker,
        });
        while stream.packets.len() > max
            || stream
                .packets
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > window)
        {
            stream.packets.pop_front();
        }
        // Shrinks the ring when it is mostly empty (the rate fell or the window shrank).
        if stream.packets.capacity() > 64 && stream.packets.len() * 4 < stream.packets.capacity() {
            stream.packets.shrink_to(stream.packets.len() * 2);
        }
        let after = stream.packets.len();
        self.adjust_held(before, after);
    }
}

impl Drop for NackHistory {
    fn drop(&mut self) {
        self.counters
            .history_packets
            .fetch_sub(self.held, Ordering::Relaxed);
    }
}
