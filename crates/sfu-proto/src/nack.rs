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
//! It is also the leg's feedback tap (what [`crate::peer::FeedbackTap`] is for clients):
//! NACK, PLI and FIR are counted, retransmissions too, and inbound RTCP is marked for the
//! worker, which forwards keyframe requests and reads losses. One interceptor fewer on the
//! chain: every one costs each packet a move through its queues.
//!
//! Bounds against a subscriber that NACKs everything: a packet is sent again at most once per
//! smoothed RTT (at least [`HistoryConfig::min_resend_interval`]), and one NACK packet names
//! at most 17 sequence numbers per pair, over pairs bounded by the RTCP packet's own size.

use crate::peer::FeedbackCounters;
use rtc::interceptor::{
    Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use std::collections::{HashMap, VecDeque};
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

/// The NACK responder with an RTT-sized history (see the module docs). Sits in
/// `Slot::NackResponder`, so sender reports pass it on their way out and receiver reports and
/// NACKs on their way in, and its retransmissions are still numbered for TWCC below it.
pub struct NackHistory {
    cfg: HistoryConfig,
    counters: Arc<FeedbackCounters>,
    streams: HashMap<u32, Stream>,
    /// (middle 32 bits of an SR's NTP time, when it passed).
    reports: VecDeque<(u32, Instant)>,
    srtt: Option<Duration>,
    held: u64,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl NackHistory {
    /// A responder keeping packets as `cfg` says, adding to `counters`.
    pub fn new(cfg: HistoryConfig, counters: Arc<FeedbackCounters>) -> Self {
        Self {
            cfg,
            counters,
            streams: HashMap::new(),
            reports: VecDeque::with_capacity(SR_MEMORY),
            srtt: None,
            held: 0,
            read: VecDeque::new(),
            write: VecDeque::new(),
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

    fn on_rtt_sample(&mut self, sample: Duration) {
        self.srtt = Some(match self.srtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
    }

    fn on_receiver_reports(
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

    fn on_nack(&mut self, now: Instant, nack: &TransportLayerNack) {
        let min_gap = self
            .srtt
            .unwrap_or_default()
            .max(self.cfg.min_resend_interval);
        let Some(stream) = self.streams.get_mut(&nack.media_ssrc) else {
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
                if sent
                    .resent
                    .is_some_and(|at| now.saturating_duration_since(at) < min_gap)
                {
                    self.counters.nack_throttled.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                sent.resent = Some(now);
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
                self.write.push_back(TaggedPacket {
                    now,
                    transport: TransportContext::default(),
                    message: AttributedPacket::new(Packet::Rtp(packet))
                        .with(Attribute::Retransmission),
                });
            }
        }
    }

    /// Records a packet going out and drops what is older than the window.
    fn on_sent(&mut self, now: Instant, packet: &rtc::rtp::Packet) {
        let window = self.cfg.window(self.srtt);
        let max = self.cfg.max_packets;
        let Some(stream) = self.streams.get_mut(&packet.header.ssrc) else {
            return;
        };
        let before = stream.packets.len();
        stream.packets.push_back(Sent {
            at: now,
            resent: None,
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

impl Protocol<TaggedPacket, TaggedPacket, ()> for NackHistory {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            for p in pkts {
                let any = p.as_any();
                if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                    self.counters.nack.fetch_add(1, Ordering::Relaxed);
                    self.on_nack(msg.now, nack);
                } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    self.on_receiver_reports(msg.now, &rr.reports);
                } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    self.on_receiver_reports(msg.now, &sr.reports);
                } else if any.is::<PictureLossIndication>() {
                    self.counters.pli.fetch_add(1, Ordering::Relaxed);
                } else if any.is::<FullIntraRequest>() {
                    self.counters.fir.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !pkts.is_empty() {
                // The worker reads receiver reports (loss), PLI and FIR.
                msg.message.add(Attribute::DeliverToApplication);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        match &msg.message.packet {
            Packet::Rtp(p) if !msg.message.has(&Attribute::Retransmission) => {
                self.on_sent(msg.now, p);
            }
            Packet::Rtcp(pkts) => {
                for p in pkts {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        if self.reports.len() == SR_MEMORY {
                            self.reports.pop_front();
                        }
                        self.reports
                            .push_back(((sr.ntp_time >> 16) as u32, msg.now));
                    }
                }
            }
            _ => {}
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, _now: Instant) -> Result<(), Self::Error> {
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        None
    }
}

impl Interceptor for NackHistory {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        let nack = info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty());
        if nack {
            self.streams.insert(
                info.ssrc,
                Stream {
                    packets: VecDeque::new(),
                    ssrc_rtx: info.ssrc_rtx,
                    payload_type_rtx: info.payload_type_rtx,
                    rtx_seq: 0,
                },
            );
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(s) = self.streams.remove(&info.ssrc) {
            self.adjust_held(s.packets.len(), 0);
        }
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}

    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use rtc::interceptor::RTCPFeedback;
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    const SSRC: u32 = 0x1111;
    const RTX: u32 = 0x2222;

    fn history(cfg: HistoryConfig) -> (NackHistory, Arc<FeedbackCounters>) {
        let counters = Arc::new(FeedbackCounters::default());
        let mut h = NackHistory::new(cfg, counters.clone());
        h.bind_local_stream(&StreamInfo {
            ssrc: SSRC,
            ssrc_rtx: Some(RTX),
            payload_type: 96,
            payload_type_rtx: Some(97),
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        });
        (h, counters)
    }

    fn tagged(now: Instant, packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    fn send(h: &mut NackHistory, now: Instant, seq: u16) {
        let p = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: SSRC,
                payload_type: 96,
                sequence_number: seq,
                timestamp: u32::from(seq) * 3000,
                ..Default::default()
            },
            payload: vec![seq as u8; 100].into(),
        };
        h.handle_write(tagged(now, Packet::Rtp(p))).unwrap();
        while h.poll_write().is_some() {}
    }

    fn nack(h: &mut NackHistory, now: Instant, first: u16, bitmap: u16) -> Vec<rtc::rtp::Packet> {
        let n = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: SSRC,
            nacks: vec![NackPair {
                packet_id: first,
                lost_packets: bitmap,
            }],
        };
        h.handle_read(tagged(now, Packet::Rtcp(vec![Box::new(n)])))
            .unwrap();
        while h.poll_read().is_some() {}
        let mut out = Vec::new();
        while let Some(m) = h.poll_write() {
            assert!(m.message.has(&Attribute::Retransmission));
            if let Packet::Rtp(p) = m.message.packet {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn answers_a_nack_with_rtx_of_the_packets_it_names() {
        let t0 = Instant::now();
        let (mut h, c) = history(HistoryConfig::default());
        for seq in 100..110 {
            send(&mut h, t0, seq);
        }
        // 102, and 104 (bit 1 of the bitmap: 102 + 2).
        let out = nack(&mut h, t0 + Duration::from_millis(50), 102, 0b10);
        assert_eq!(out.len(), 2);
        for (p, seq) in out.iter().zip([102u16, 104]) {
            assert_eq!(p.header.ssrc, RTX);
            assert_eq!(p.header.payload_type, 97);
            assert_eq!(&p.payload[..2], &seq.to_be_bytes());
            assert_eq!(&p.payload[2..], &[seq as u8; 100][..]);
        }
        assert_eq!(
            (out[0].header.sequence_number, out[1].header.sequence_number),
            (0, 1)
        );
        assert_eq!(c.history_packets.load(Ordering::Relaxed), 10);
        // Not held: counted as missing.
        assert!(nack(&mut h, t0, 5000, 0).is_empty());
        assert_eq!(c.nack_missing.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_packet_is_resent_at_most_once_per_rtt() {
        let t0 = Instant::now();
        let (mut h, c) = history(HistoryConfig::default());
        send(&mut h, t0, 7);
        assert_eq!(nack(&mut h, t0, 7, 0).len(), 1);
        assert!(nack(&mut h, t0 + Duration::from_millis(5), 7, 0).is_empty());
        assert_eq!(c.nack_throttled.load(Ordering::Relaxed), 1);
        assert_eq!(nack(&mut h, t0 + Duration::from_millis(11), 7, 0).len(), 1);
    }

    #[test]
    fn measures_the_rtt_from_receiver_reports() {
        let t0 = Instant::now();
        let (mut h, _) = history(HistoryConfig::default());
        let ntp: u64 = 0x1234_5678_9abc_def0;
        let sr = SenderReport {
            ssrc: SSRC,
            ntp_time: ntp,
            ..Default::default()
        };
        h.handle_write(tagged(t0, Packet::Rtcp(vec![Box::new(sr)])))
            .unwrap();
        while h.poll_write().is_some() {}
        // The receiver held the SR 0.5 s (DLSR = 32768/65536 s) and answers 0.58 s after it
        // left: RTT 80 ms.
        let rr = ReceiverReport {
            ssrc: 9,
            reports: vec![ReceptionReport {
                ssrc: SSRC,
                last_sender_report: (ntp >> 16) as u32,
                delay: 32_768,
                ..Default::default()
            }],
            ..Default::default()
        };
        h.handle_read(tagged(
            t0 + Duration::from_millis(580),
            Packet::Rtcp(vec![Box::new(rr)]),
        ))
        .unwrap();
        let rtt = h.srtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(80)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        // An echo of an SR never sent is ignored.
        let rr = ReceiverReport {
            ssrc: 9,
            reports: vec![ReceptionReport {
                ssrc: SSRC,
                last_sender_report: 42,
                delay: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        h.handle_read(tagged(
            t0 + Duration::from_secs(5),
            Packet::Rtcp(vec![Box::new(rr)]),
        ))
        .unwrap();
        assert_eq!(h.srtt(), Some(rtt));
    }

    #[test]
    fn keeps_rtt_factor_round_trips_of_packets_and_no_more() {
        let t0 = Instant::now();
        let cfg = HistoryConfig::default();
        let (mut h, c) = history(cfg);
        h.on_rtt_sample(Duration::from_millis(100));
        let window = cfg.window(h.srtt());
        assert_eq!(window, Duration::from_millis(400));
        // 200 packets per second for 2 s: about 80 held (0.4 s), whatever came before.
        for i in 0..400u16 {
            send(&mut h, t0 + Duration::from_millis(u64::from(i) * 5), i);
        }
        let held = c.history_packets.load(Ordering::Relaxed);
        assert!((80..=82).contains(&held), "{held}");
        let last = t0 + Duration::from_millis(399 * 5);
        assert_eq!(nack(&mut h, last, 399 - 79, 0).len(), 1);
        assert!(nack(&mut h, last, 399 - 85, 0).is_empty());
        // The window has bounds: a 1 ms RTT keeps min_window, a 2 s one max_window.
        assert_eq!(cfg.window(Some(Duration::from_millis(1))), cfg.min_window);
        assert_eq!(cfg.window(Some(Duration::from_secs(2))), cfg.max_window);
        assert_eq!(cfg.window(None), cfg.initial_window);
        // And a count: at most max_packets, however high the rate.
        let (mut h, c) = history(HistoryConfig {
            max_packets: 16,
            ..cfg
        });
        for i in 0..100 {
            send(&mut h, t0, i);
        }
        assert_eq!(c.history_packets.load(Ordering::Relaxed), 16);
        drop(h);
        assert_eq!(c.history_packets.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn without_rtx_the_packet_goes_again_as_it_was() {
        let t0 = Instant::now();
        let counters = Arc::new(FeedbackCounters::default());
        let mut h = NackHistory::new(HistoryConfig::default(), counters.clone());
        h.bind_local_stream(&StreamInfo {
            ssrc: SSRC,
            payload_type: 96,
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        });
        send(&mut h, t0, 40);
        let out = nack(&mut h, t0, 40, 0);
        assert_eq!(out.len(), 1);
        let p = &out[0];
        assert_eq!(
            (p.header.version, p.header.ssrc, p.header.payload_type),
            (2, SSRC, 96)
        );
        assert_eq!(
            (p.header.sequence_number, p.header.timestamp),
            (40, 40 * 3000)
        );
        assert_eq!(&p.payload[..], &[40u8; 100][..]);
        assert_eq!(counters.retransmitted.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn streams_without_nack_feedback_keep_nothing() {
        let t0 = Instant::now();
        let counters = Arc::new(FeedbackCounters::default());
        let mut h = NackHistory::new(HistoryConfig::default(), counters.clone());
        h.bind_local_stream(&StreamInfo {
            ssrc: SSRC,
            ..Default::default()
        });
        send(&mut h, t0, 1);
        assert_eq!(counters.history_packets.load(Ordering::Relaxed), 0);
        assert!(nack(&mut h, t0, 1, 0).is_empty());
    }
}
