//! The subscribe leg's one interceptor: everything the SFU does to the media it sends a
//! subscriber, in one place on rtc's chain.
//!
//! rtc walks every packet through each interceptor's queues (and the chain's own belt between
//! them), so four interceptors cost a forwarded copy eight moves of a ~250-byte packet before
//! SRTP. A call-graph profile at 1 -> 100 put the chain at a fifth of the worker with rtc's
//! congestion control, TWCC numbering, the NACK history and sender reports in four slots (the
//! congestion control's record alone, three hash maps written per packet, 3 %). Here they are
//! one pass:
//! - **TWCC numbering** (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2): every RTP
//!   packet of a stream that negotiated the header extension gets the next transport-wide
//!   sequence number, retransmissions included.
//! - **The send record** the subscriber's transport feedback (§3.1, RTCP `TransportLayerCc`)
//!   is matched against: a ring in sequence-number order, so a feedback finds its packet by
//!   offset. What feedback acknowledged goes to the bandwidth estimator (GCC) as per-packet
//!   reports, in send order, with the packets before it that were not acknowledged as lost; then
//!   it is forgotten. Unacknowledged packets are forgotten after [`TWCC_HORIZON`], and the ring
//!   holds at most [`TWCC_MAX_PACKETS`] whatever the feedback does.
//! - **Sender reports** (RFC 3550 §6.4.1): every [`SR_INTERVAL`], one per stream that has sent,
//!   with the packet and octet counts and the RTP time of `now`.
//! - **The NACK history** ([`crate::nack`]): what was sent, NACKs answered, the RTT from the
//!   reports.
//! - **The feedback tap**: NACK, PLI and FIR counted in the worker's [`FeedbackCounters`], and
//!   inbound RTCP marked [`Attribute::DeliverToApplication`] for the worker (keyframe requests,
//!   losses).
//!
//! The state is shared, through a [`SendHandle`], with the worker, which sends most of a
//! subscribe PC's RTP itself ([`crate::direct`]): it numbers and records those copies here
//! ([`DirectSend::on_direct_send`]), and the retransmissions NACKs ask for then wait for it
//! ([`DirectSend::take_retransmissions`]) instead of going down rtc's chain.

use crate::nack::{HistoryConfig, NackHistory};
use crate::peer::FeedbackCounters;
use rtc::interceptor::{
    convert_twcc, Acknowledgement, Attribute, AttributedPacket, BandwidthEstimator, Interceptor,
    Packet, PacketReport, StreamInfo, TaggedPacket,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::marshal::MarshalSize;
use rtc::shared::time::SystemInstant;
use rtc::shared::TransportContext;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Unacknowledged packets are forgotten this long after they left (rtc's congestion control
/// uses the same horizon).
pub const TWCC_HORIZON: Duration = Duration::from_secs(2);
/// Most packets the send record holds, whatever the feedback does (2 s at 4096 packets per
/// second).
pub const TWCC_MAX_PACKETS: usize = 8192;
/// Statuses a transport feedback may name beyond the packets the record holds. A feedback
/// naming more is ignored: it cannot match, and rtc's conversion would allocate and walk every
/// status (up to 65535 from one small RTCP packet of run-length chunks).
pub const TWCC_FEEDBACK_SLACK: usize = 256;
/// Time between two sender reports of a stream.
pub const SR_INTERVAL: Duration = Duration::from_secs(1);

/// One packet sent with a transport-wide sequence number, until feedback reports it.
#[derive(Clone, Copy)]
struct Sent {
    departure: Instant,
    arrival: Option<Duration>,
    ssrc: u32,
    size: u32,
    rtp_seq: u16,
    arrived: bool,
    ecn: Ecn,
}

/// A transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2)
/// for a packet that carries no other header extension, to be written as the packet is
/// marshalled: the extension id negotiated for it (RFC 8285) and the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TwccNumber {
    /// The header extension id (1..=14: one-byte form, RFC 8285 §4.2; above: two-byte, §4.3).
    pub id: u8,
    /// The 16-bit number.
    pub seq: u16,
}

impl TwccNumber {
    /// Bytes the extension block adds to an RTP header without extensions: the 4-byte block
    /// header, the element and its padding to 32 bits.
    pub fn header_bytes(self) -> usize {
        8
    }
}

/// Transport-wide numbering and the record feedback is matched against (see the module docs).
#[derive(Default)]
struct TwccRecord {
    /// (SSRC, header extension id) of the local streams that negotiated the extension.
    streams: Vec<(u32, u8)>,
    /// Unwrapped sequence number of the next packet.
    next: u64,
    /// Unwrapped sequence number of `sent[0]`.
    first: u64,
    sent: VecDeque<Sent>,
    /// The highest sequence number feedback said arrived.
    highest_acked: Option<u64>,
}

impl TwccRecord {
    /// Numbers `p` if its stream negotiated the extension, writes the number into its header
    /// and records it.
    fn on_send(&mut self, now: Instant, p: &mut rtc::rtp::Packet) {
        let Some(&(_, id)) = self.streams.iter().find(|(s, _)| *s == p.header.ssrc) else {
            return;
        };
        let seq = self.next as u16;
        let value = bytes::Bytes::copy_from_slice(&seq.to_be_bytes());
        if p.header.set_extension(id, value).is_err() {
            return;
        }
        let size = p.marshal_size();
        self.record(now, p, size);
    }

    /// Numbers `p` if its stream negotiated the extension and records it, leaving the header
    /// alone: the caller writes the returned number as it marshals the packet
    /// ([`crate::direct`]). `p` must carry no header extension (forwarding strips them).
    fn number(&mut self, now: Instant, p: &rtc::rtp::Packet) -> Option<TwccNumber> {
        let &(_, id) = self.streams.iter().find(|(s, _)| *s == p.header.ssrc)?;
        let n = TwccNumber {
            id,
            seq: self.next as u16,
        };
        self.record(now, p, p.marshal_size() + n.header_bytes());
        Some(n)
    }

    fn record(&mut self, now: Instant, p: &rtc::rtp::Packet, size: usize) {
        if self.sent.is_empty() {
            self.first = self.next;
        } else if self.sent.len() == TWCC_MAX_PACKETS {
            self.sent.pop_front();
            self.first += 1;
        }
        self.sent.push_back(Sent {
            departure: now,
            arrival: None,
            ssrc: p.header.ssrc,
            size: u32::try_from(size).unwrap_or(u32::MAX),
            rtp_seq: p.header.sequence_number,
            arrived: false,
            ecn: Ecn::NotEct,
        });
        self.next += 1;
    }

    /// The unwrapped number of a 16-bit sequence number, if it is still held.
    fn unwrap(&self, seq: u16) -> Option<u64> {
        let back = u64::from((self.next as u16).wrapping_sub(seq));
        if back == 0 || back > self.next {
            return None;
        }
        let n = self.next - back;
        (n >= self.first).then_some(n)
    }

    fn on_ack(&mut self, ack: Acknowledgement) {
        let Some(n) = self.unwrap(ack.sequence_number) else {
            return;
        };
        let s = &mut self.sent[(n - self.first) as usize];
        s.arrived = ack.arrived;
        s.arrival = ack.arrival;
        s.ecn = ack.ecn;
        if ack.arrived {
            self.highest_acked = Some(self.highest_acked.map_or(n, |h| h.max(n)));
        }
    }

    /// Reports, in send order, every packet up to the highest acknowledged one (those not
    /// acknowledged as lost), and forgets them.
    fn take_reports(&mut self, out: &mut Vec<PacketReport>) {
        let Some(highest) = self.highest_acked else {
            return;
        };
        while self.first <= highest {
            let Some(s) = self.sent.pop_front() else {
                break;
            };
            out.push(PacketReport {
                ssrc: s.ssrc,
                id: self.first,
                rtp_sequence_number: s.rtp_seq,
                is_twcc: true,
                twcc_sequence_number: self.first as u16,
                size: s.size as usize,
                arrived: s.arrived,
                departure: s.departure,
                arrival: s.arrival,
                ecn: s.ecn,
            });
            self.first += 1;
        }
    }

    /// Forgets what left before `cutoff` and was never reported.
    fn prune(&mut self, cutoff: Instant) {
        while self.sent.front().is_some_and(|s| s.departure < cutoff) {
            self.sent.pop_front();
            self.first += 1;
        }
        if self.sent.capacity() > 256 && self.sent.len() * 4 < self.sent.capacity() {
            self.sent.shrink_to(self.sent.len() * 2);
        }
    }
}

/// What a sender report of one stream says (RFC 3550 §6.4.1).
struct ReportedStream {
    ssrc: u32,
    clock_rate: f64,
    /// The highest sequence number sent, once one was.
    last_seq: Option<u16>,
    /// RTP timestamp of the newest packet in order, and when it left.
    last_timestamp: Option<(u32, Instant)>,
    packets: u32,
    octets: u32,
}

impl ReportedStream {
    fn on_send(&mut self, now: Instant, p: &rtc::rtp::Packet) {
        let seq = p.header.sequence_number;
        let in_order = self
            .last_seq
            .is_none_or(|last| (1..1 << 15).contains(&seq.wrapping_sub(last)));
        if in_order {
            self.last_seq = Some(seq);
            if self
                .last_timestamp
                .is_none_or(|(ts, _)| ts != p.header.timestamp)
            {
                self.last_timestamp = Some((p.header.timestamp, now));
            }
        }
        self.packets = self.packets.wrapping_add(1);
        self.octets = self
            .octets
            .wrapping_add(u32::try_from(p.payload.len()).unwrap_or(u32::MAX));
    }

    fn report(&self, now: Instant, wall_clock: &SystemInstant) -> Option<SenderReport> {
        let (ts, at) = self.last_timestamp?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc: self.ssrc,
            ntp_time: wall_clock.ntp(now),
            rtp_time: ts.wrapping_add((elapsed * self.clock_rate) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// The send side's state, shared by the interceptor on rtc's chain and, through a
/// [`SendHandle`], by the worker when it protects and sends a subscriber's RTP itself
/// ([`crate::direct`]). Both run on the worker's thread: the lock is never contended.
struct SendState<E> {
    nack: NackHistory,
    counters: Arc<FeedbackCounters>,
    twcc: TwccRecord,
    estimator: E,
    last_target: f64,
    reported: Vec<ReportedStream>,
    next_report: Option<Instant>,
    wall_clock: SystemInstant,
    /// Reused for the estimator's reports.
    reports: Vec<PacketReport>,
    /// Retransmissions go to `direct_out` (for the worker) instead of rtc's chain.
    direct: bool,
    /// Retransmissions waiting for the worker (at most [`MAX_DIRECT_RETRANSMISSIONS`]).
    direct_out: Vec<rtc::rtp::Packet>,
}

/// Most retransmissions held for the worker between two drains; beyond, they are dropped and
/// counted as throttled NACKs.
pub const MAX_DIRECT_RETRANSMISSIONS: usize = 1024;

impl<E: BandwidthEstimator> SendState<E> {
    /// Numbers and records an RTP packet about to leave; `true` when this armed the sender
    /// report timer (the PC's deadline moved).
    fn record_rtp(&mut self, now: Instant, p: &mut rtc::rtp::Packet, retransmission: bool) -> bool {
        let armed = self.record_counts(now, p, retransmission);
        self.twcc.on_send(now, p);
        armed
    }

    /// Handles a subscriber's compound RTCP packet `pkts` received at `now`: transport
    /// feedback to the estimator, NACKs answered from the history (for the worker in direct
    /// mode, in what is returned otherwise), receiver reports to the RTT, PLI and FIR counted.
    fn on_rtcp(&mut self, now: Instant, pkts: &[Box<dyn rtc::rtcp::Packet>]) -> RtcpRead {
        let mut retransmit = VecDeque::new();
        let mut feedback = false;
        for p in pkts {
            let any = p.as_any();
            if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                let statuses = usize::from(cc.packet_status_count);
                if statuses > self.twcc.sent.len() + TWCC_FEEDBACK_SLACK {
                    self.counters
                        .feedback_refused
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for ack in convert_twcc(cc) {
                    self.twcc.on_ack(ack);
                }
                feedback = true;
            } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.nack.on_nack(now, nack, &mut retransmit);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                self.nack.on_receiver_reports(now, &rr.reports);
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                self.nack.on_receiver_reports(now, &sr.reports);
            } else if any.is::<PictureLossIndication>() {
                self.counters.pli.fetch_add(1, Ordering::Relaxed);
            } else if any.is::<FullIntraRequest>() {
                self.counters.fir.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut target = None;
        if feedback {
            self.reports.clear();
            self.twcc.take_reports(&mut self.reports);
            if !self.reports.is_empty() {
                self.estimator.on_reports(now, &self.reports);
            }
            let t = self.estimator.target_bitrate();
            if t != self.last_target {
                self.last_target = t;
                target = Some(t);
            }
        }
        if self.direct {
            for mut r in retransmit.drain(..) {
                if let Packet::Rtp(p) = &mut r.message.packet {
                    if self.direct_out.len() >= MAX_DIRECT_RETRANSMISSIONS {
                        self.counters.nack_throttled.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.record_rtp(r.now, p, true);
                    let p = std::mem::take(p);
                    self.direct_out.push(p);
                }
            }
        }
        RtcpRead { retransmit, target }
    }

    /// The NACK history and sender report counts of [`Self::record_rtp`].
    fn record_counts(&mut self, now: Instant, p: &rtc::rtp::Packet, retransmission: bool) -> bool {
        let mut armed = false;
        if !retransmission {
            self.nack.on_sent(now, p);
            if let Some(s) = self.reported.iter_mut().find(|s| s.ssrc == p.header.ssrc) {
                s.on_send(now, p);
                armed = self.next_report.is_none();
                self.next_report.get_or_insert(now + SR_INTERVAL);
            }
        }
        armed
    }
}

/// What [`SendState::on_rtcp`] leaves to its caller.
struct RtcpRead {
    /// Retransmissions for rtc's chain (empty in direct mode: they wait for the worker).
    retransmit: VecDeque<TaggedPacket>,
    /// The estimator's new target, if it moved (bits per second).
    target: Option<f64>,
}

/// What [`DirectSend::on_direct_send`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectSent {
    /// The sender report timer started: the PC's deadline must be read again.
    pub armed: bool,
    /// The transport-wide number to write into the packet, if its stream negotiated one.
    pub twcc: Option<TwccNumber>,
}

/// What the worker does with a subscribe leg's send side when it sends the leg's RTP itself
/// ([`crate::direct`]); object safe, so the worker needs no estimator type.
pub trait DirectSend: Send {
    /// Numbers and records a forwarded packet the caller is about to protect and send (TWCC
    /// sequence number, NACK history, sender report counts). The header is left alone: the
    /// caller writes the returned number as it marshals `p`, which carries no extension.
    fn on_direct_send(&mut self, now: Instant, p: &rtc::rtp::Packet) -> DirectSent;
    /// From now on, retransmissions wait in [`DirectSend::take_retransmissions`] instead of
    /// going down rtc's chain (`false`: back to rtc).
    fn set_direct(&mut self, direct: bool);
    /// Moves the retransmissions NACKs asked for since the last call into `out`, numbered and
    /// recorded.
    fn take_retransmissions(&mut self, out: &mut Vec<rtc::rtp::Packet>);
    /// Handles a compound RTCP packet the worker read from the subscriber itself, as one rtc
    /// read would be (retransmissions wait in [`DirectSend::take_retransmissions`]).
    fn on_rtcp(&mut self, now: Instant, pkts: &[Box<dyn rtc::rtcp::Packet>]);
}

impl<E: BandwidthEstimator + Send> DirectSend for SendState<E> {
    fn on_direct_send(&mut self, now: Instant, p: &rtc::rtp::Packet) -> DirectSent {
        let armed = self.record_counts(now, p, false);
        DirectSent {
            armed,
            twcc: self.twcc.number(now, p),
        }
    }

    fn set_direct(&mut self, direct: bool) {
        self.direct = direct;
        if !direct {
            // Back to rtc: nobody will take these any more.
            self.direct_out.clear();
        }
    }

    fn take_retransmissions(&mut self, out: &mut Vec<rtc::rtp::Packet>) {
        out.append(&mut self.direct_out);
    }

    fn on_rtcp(&mut self, now: Instant, pkts: &[Box<dyn rtc::rtcp::Packet>]) {
        let _ = SendState::on_rtcp(self, now, pkts);
    }
}

/// The worker's handle on one subscribe leg's send side.
#[derive(Clone)]
pub struct SendHandle(Arc<Mutex<dyn DirectSend>>);

impl SendHandle {
    /// Runs `f` on the send side.
    pub fn with<R>(&self, f: impl FnOnce(&mut dyn DirectSend) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut *g)
    }
}

/// The subscribe leg's interceptor (see the module docs), with bandwidth estimator `E`.
pub struct SendSide<E> {
    state: Arc<Mutex<SendState<E>>>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl<E: BandwidthEstimator + Send + 'static> SendSide<E> {
    /// A send side keeping packets for NACK as `history` says, feeding `estimator`, counting
    /// in `counters`; `wall_clock` gives sender reports their NTP time.
    pub fn new(
        history: HistoryConfig,
        counters: Arc<FeedbackCounters>,
        estimator: E,
        wall_clock: SystemInstant,
    ) -> Self {
        let state = SendState {
            nack: NackHistory::new(history, counters.clone()),
            counters,
            twcc: TwccRecord::default(),
            last_target: estimator.target_bitrate(),
            estimator,
            reported: Vec::new(),
            next_report: None,
            wall_clock,
            reports: Vec::new(),
            direct: false,
            direct_out: Vec::new(),
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    /// The worker's handle on this send side, for RTP it sends itself.
    pub fn handle(&self) -> SendHandle {
        SendHandle(self.state.clone())
    }
}

impl<E> SendSide<E> {
    fn state(&self) -> MutexGuard<'_, SendState<E>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<E: BandwidthEstimator> SendSide<E> {
    /// The smoothed round-trip time, once a receiver report gave one.
    pub fn srtt(&self) -> Option<Duration> {
        self.state().nack.srtt()
    }

    /// Packets sent with a transport-wide sequence number that feedback has not reported yet.
    pub fn outstanding(&self) -> usize {
        self.state().twcc.sent.len()
    }

    /// Queues a packet for the wire, after numbering and recording it.
    fn send(&mut self, mut msg: TaggedPacket) {
        let retransmission = msg.message.has(&Attribute::Retransmission);
        {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut msg.message.packet {
                Packet::Rtp(p) => {
                    st.record_rtp(msg.now, p, retransmission);
                }
                Packet::Rtcp(pkts) => {
                    for p in pkts.iter() {
                        if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                            st.nack.on_sender_report_sent(sr.ntp_time, msg.now);
                        }
                    }
                }
                _ => {}
            }
        }
        self.write.push_back(msg);
    }
}

impl<E: BandwidthEstimator> Protocol<TaggedPacket, TaggedPacket, ()> for SendSide<E> {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            let read = st.on_rtcp(msg.now, pkts);
            if !pkts.is_empty() {
                // The worker reads receiver reports (loss), PLI and FIR.
                msg.message.add(Attribute::DeliverToApplication);
            }
            if let Some(bits_per_second) = read.target {
                // rtc shows it in the outbound streams' stats.
                msg.message
                    .add(Attribute::TargetBitrateChanged { bits_per_second });
            }
            drop(st);
            for r in read.retransmit {
                self.send(r);
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.send(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        let reports: Vec<_> = {
            let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            st.twcc.prune(now.checked_sub(TWCC_HORIZON).unwrap_or(now));
            st.estimator.handle_timeout(now);
            if st.next_report.is_some_and(|at| now >= at) {
                st.next_report = Some(now + SR_INTERVAL);
                st.reported
                    .iter()
                    .filter_map(|s| s.report(now, &st.wall_clock))
                    .collect()
            } else {
                Vec::new()
            }
        };
        for sr in reports {
            self.send(TaggedPacket {
                now,
                transport: TransportContext::default(),
                message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(sr)])),
            });
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (st.estimator.poll_timeout(), st.next_report) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<E: BandwidthEstimator + Send + Sync> Interceptor for SendSide<E> {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.nack.bind(info);
        st.reported.retain(|s| s.ssrc != info.ssrc);
        st.reported.push(ReportedStream {
            ssrc: info.ssrc,
            clock_rate: f64::from(info.clock_rate),
            last_seq: None,
            last_timestamp: None,
            packets: 0,
            octets: 0,
        });
        st.twcc
            .streams
            .retain(|(s, _)| *s != info.ssrc && Some(*s) != info.ssrc_rtx);
        if let Some(ext) = info
            .rtp_header_extensions
            .iter()
            .find(|e| e.uri == rtc::sdp::extmap::TRANSPORT_CC_URI)
        {
            if let Ok(id @ 1..) = u8::try_from(ext.id) {
                // Retransmissions on the RTX stream are numbered too (they use the path).
                st.twcc.streams.push((info.ssrc, id));
                if let Some(rtx) = info.ssrc_rtx {
                    st.twcc.streams.push((rtx, id));
                }
            }
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.nack.unbind(info);
        st.reported.retain(|s| s.ssrc != info.ssrc);
        st.twcc
            .streams
            .retain(|(s, _)| *s != info.ssrc && Some(*s) != info.ssrc_rtx);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}

    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use rtc::interceptor::{ConstantBitrate, RTCPFeedback};
    use rtc::rtcp::reception_report::ReceptionReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, RecvDelta, RunLengthChunk, StatusChunkTypeTcc, SymbolTypeTcc,
    };
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;

    const SSRC: u32 = 0x1111;
    const RTX: u32 = 0x2222;

    type Side = SendSide<ConstantBitrate>;

    fn side(cfg: HistoryConfig, counters: &Arc<FeedbackCounters>, t0: Instant) -> Side {
        SendSide::new(
            cfg,
            counters.clone(),
            ConstantBitrate::new(1e6),
            SystemInstant::now(t0),
        )
    }

    /// A VP8-like stream `SSRC` (payload type 96, 90 kHz) with generic NACK, and RTX `RTX`
    /// (payload type 97) when `rtx`.
    fn nack_stream(rtx: bool) -> StreamInfo {
        StreamInfo {
            ssrc: SSRC,
            ssrc_rtx: rtx.then_some(RTX),
            payload_type: 96,
            payload_type_rtx: rtx.then_some(97),
            clock_rate: 90_000,
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        }
    }

    fn history(cfg: HistoryConfig) -> (Side, Arc<FeedbackCounters>) {
        let counters = Arc::new(FeedbackCounters::default());
        let mut h = side(cfg, &counters, Instant::now());
        h.bind_local_stream(&nack_stream(true));
        (h, counters)
    }

    fn tagged(now: Instant, packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    /// Packet `seq` of stream `SSRC`: 100 bytes of `seq as u8`, 3000 ticks per sequence number.
    fn media(seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: SSRC,
                payload_type: 96,
                sequence_number: seq,
                timestamp: u32::from(seq) * 3000,
                ..Default::default()
            },
            payload: vec![seq as u8; 100].into(),
        }
    }

    fn send(h: &mut Side, now: Instant, seq: u16) {
        h.handle_write(tagged(now, Packet::Rtp(media(seq))))
            .unwrap();
        while h.poll_write().is_some() {}
    }

    fn nack(h: &mut Side, now: Instant, first: u16, bitmap: u16) -> Vec<rtc::rtp::Packet> {
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

    /// A receiver report about `SSRC` echoing LSR `last_sr` after DLSR `delay` (1/65536 s).
    fn receiver_report<E: BandwidthEstimator>(
        h: &mut SendSide<E>,
        at: Instant,
        last_sr: u32,
        delay: u32,
    ) {
        let rr = ReceiverReport {
            ssrc: 9,
            reports: vec![ReceptionReport {
                ssrc: SSRC,
                last_sender_report: last_sr,
                delay,
                ..Default::default()
            }],
            ..Default::default()
        };
        h.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(rr)])))
            .unwrap();
    }

    /// The worker sends the media itself (crate::direct): it is recorded through the handle,
    /// and what a NACK asks for then waits for the worker, numbered, instead of going down
    /// rtc's chain; back to rtc, it goes down the chain again.
    #[test]
    fn in_direct_mode_retransmissions_wait_for_the_worker() {
        let (mut h, _) = history(HistoryConfig::default());
        let t0 = Instant::now();
        let handle = h.handle();
        for seq in 1..=3u16 {
            let p = media(seq);
            // Only the first packet starts the sender report timer.
            assert_eq!(handle.with(|s| s.on_direct_send(t0, &p)).armed, seq == 1);
        }
        assert_eq!(h.poll_timeout(), Some(t0 + SR_INTERVAL));
        handle.with(|s| s.set_direct(true));
        let down_the_chain = nack(&mut h, t0 + Duration::from_millis(20), 2, 0);
        assert!(down_the_chain.is_empty());
        let mut rtx = Vec::new();
        handle.with(|s| s.take_retransmissions(&mut rtx));
        assert_eq!(rtx.len(), 1);
        assert_eq!(rtx[0].header.ssrc, RTX);
        assert_eq!(&rtx[0].payload[..2], &2u16.to_be_bytes());
        assert_eq!(&rtx[0].payload[2..], &[2u8; 100][..]);
        handle.with(|s| s.take_retransmissions(&mut rtx));
        assert_eq!(rtx.len(), 1, "taken once");
        // A retransmission left waiting when the PC goes back to rtc is forgotten, and the
        // next one goes down the chain.
        let _ = nack(&mut h, t0 + Duration::from_millis(40), 1, 0);
        handle.with(|s| s.set_direct(false));
        rtx.clear();
        handle.with(|s| s.take_retransmissions(&mut rtx));
        assert!(rtx.is_empty());
        let out = nack(&mut h, t0 + Duration::from_millis(60), 3, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].payload[..2], &3u16.to_be_bytes());
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
    fn a_packet_is_resent_at_most_max_resends_times() {
        let t0 = Instant::now();
        let cfg = HistoryConfig::default();
        let (mut h, c) = history(cfg);
        send(&mut h, t0, 7);
        // A subscriber NACKing the packet every 20 ms (past the 10 ms least interval) while it
        // is held gets it max_resends times, no more.
        let mut resent = 0;
        for i in 0..12u64 {
            resent += nack(&mut h, t0 + Duration::from_millis(20 * i), 7, 0).len();
        }
        assert_eq!(resent, usize::from(cfg.max_resends));
        assert_eq!(
            c.nack_throttled.load(Ordering::Relaxed),
            12 - u64::from(cfg.max_resends)
        );
        assert_eq!(c.retransmitted.load(Ordering::Relaxed), 3);
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
        receiver_report(
            &mut h,
            t0 + Duration::from_millis(580),
            (ntp >> 16) as u32,
            32_768,
        );
        let rtt = h.srtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(80)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        // An echo of an SR never sent is ignored.
        receiver_report(&mut h, t0 + Duration::from_secs(5), 42, 0);
        assert_eq!(h.srtt(), Some(rtt));
    }

    #[test]
    fn keeps_rtt_factor_round_trips_of_packets_and_no_more() {
        let t0 = Instant::now();
        let cfg = HistoryConfig::default();
        let (mut h, c) = history(cfg);
        h.state().nack.on_rtt_sample(Duration::from_millis(100));
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
        let mut h = side(HistoryConfig::default(), &counters, t0);
        h.bind_local_stream(&nack_stream(false));
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
        let mut h = side(HistoryConfig::default(), &counters, t0);
        h.bind_local_stream(&StreamInfo {
            ssrc: SSRC,
            ..Default::default()
        });
        send(&mut h, t0, 1);
        assert_eq!(counters.history_packets.load(Ordering::Relaxed), 0);
        assert!(nack(&mut h, t0, 1, 0).is_empty());
    }

    /// An estimator that keeps the reports it is given.
    #[derive(Default, Clone)]
    struct Recorder(Arc<std::sync::Mutex<Vec<PacketReport>>>);

    impl BandwidthEstimator for Recorder {
        fn on_reports(&mut self, _now: Instant, reports: &[PacketReport]) {
            self.0.lock().unwrap().extend_from_slice(reports);
        }
        fn target_bitrate(&self) -> f64 {
            1e6
        }
    }

    const TWCC_ID: u16 = 5;

    fn twcc_side(t0: Instant) -> (SendSide<Recorder>, Recorder) {
        let rec = Recorder::default();
        let mut h = SendSide::new(
            HistoryConfig::default(),
            Arc::new(FeedbackCounters::default()),
            rec.clone(),
            SystemInstant::now(t0),
        );
        h.bind_local_stream(&StreamInfo {
            rtp_header_extensions: vec![rtc::interceptor::RTPHeaderExtension {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.into(),
                id: TWCC_ID,
            }],
            ..nack_stream(true)
        });
        (h, rec)
    }

    fn transport_seq(p: &rtc::rtp::Packet) -> Option<u16> {
        let e = p.header.get_extension(TWCC_ID as u8)?;
        Some(u16::from_be_bytes([e[0], e[1]]))
    }

    fn sent_packets(
        h: &mut impl Protocol<TaggedPacket, TaggedPacket, (), Wout = TaggedPacket>,
    ) -> Vec<rtc::rtp::Packet> {
        let mut out = Vec::new();
        while let Some(m) = h.poll_write() {
            if let Packet::Rtp(p) = m.message.packet {
                out.push(p);
            }
        }
        out
    }

    fn write_rtp(h: &mut SendSide<Recorder>, now: Instant, seq: u16) {
        let p = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: SSRC,
                payload_type: 96,
                sequence_number: seq,
                timestamp: u32::from(seq / 3) * 3000,
                ..Default::default()
            },
            payload: vec![1u8; 200].into(),
        };
        h.handle_write(tagged(now, Packet::Rtp(p))).unwrap();
    }

    #[test]
    fn numbers_every_packet_of_the_stream_retransmissions_included() {
        let t0 = Instant::now();
        let (mut h, _) = twcc_side(t0);
        for seq in 100..103 {
            write_rtp(&mut h, t0, seq);
        }
        let out = sent_packets(&mut h);
        let numbers: Vec<_> = out.iter().map(transport_seq).collect();
        assert_eq!(numbers, [Some(0), Some(1), Some(2)]);
        // A NACK for 101: its RTX copy is numbered too, and recorded for feedback.
        let n = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc: SSRC,
            nacks: vec![
                rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair {
                    packet_id: 101,
                    lost_packets: 0,
                },
            ],
        };
        h.handle_read(tagged(t0, Packet::Rtcp(vec![Box::new(n)])))
            .unwrap();
        let out = sent_packets(&mut h);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header.ssrc, RTX);
        assert_eq!(transport_seq(&out[0]), Some(3));
        assert_eq!(h.outstanding(), 4);
        // Sent by the worker (crate::direct): the same numbering, returned for the worker to
        // write, and recorded with the extension's bytes counted.
        let handle = h.handle();
        let p = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                ssrc: SSRC,
                sequence_number: 103,
                ..Default::default()
            },
            payload: vec![1u8; 200].into(),
        };
        let sent = handle.with(|s| s.on_direct_send(t0, &p));
        let n = sent.twcc.unwrap();
        assert_eq!((n.id, n.seq), (TWCC_ID as u8, 4));
        assert_eq!(h.outstanding(), 5);
        let last = h.state.lock().unwrap().twcc.sent.back().copied().unwrap();
        assert_eq!(last.size as usize, 12 + 8 + 200);
        // A stream that did not negotiate the extension is not numbered.
        h.bind_local_stream(&StreamInfo {
            ssrc: 0x3333,
            ..Default::default()
        });
        let p = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                ssrc: 0x3333,
                ..Default::default()
            },
            payload: vec![0u8; 10].into(),
        };
        h.handle_write(tagged(t0, Packet::Rtp(p))).unwrap();
        let out = sent_packets(&mut h);
        assert_eq!(transport_seq(&out[0]), None);
        assert_eq!(h.outstanding(), 5);
    }

    fn run(symbol: SymbolTypeTcc, run_length: u16) -> PacketStatusChunk {
        PacketStatusChunk::RunLengthChunk(RunLengthChunk {
            type_tcc: StatusChunkTypeTcc::RunLengthChunk,
            packet_status_symbol: symbol,
            run_length,
        })
    }

    fn feedback(base: u16, chunks: Vec<PacketStatusChunk>, received: usize) -> TransportLayerCc {
        let count = chunks
            .iter()
            .map(|c| match c {
                PacketStatusChunk::RunLengthChunk(r) => r.run_length,
                PacketStatusChunk::StatusVectorChunk(_) => unreachable!(),
            })
            .sum();
        TransportLayerCc {
            sender_ssrc: 1,
            media_ssrc: SSRC,
            base_sequence_number: base,
            packet_status_count: count,
            reference_time: 10,
            fb_pkt_count: 0,
            packet_chunks: chunks,
            recv_deltas: (0..received)
                .map(|_| RecvDelta {
                    type_tcc_packet: SymbolTypeTcc::PacketReceivedSmallDelta,
                    delta: 1000,
                })
                .collect(),
        }
    }

    #[test]
    fn feedback_reports_packets_in_send_order_up_to_the_last_acknowledged() {
        let t0 = Instant::now();
        let (mut h, rec) = twcc_side(t0);
        for seq in 0..6 {
            write_rtp(&mut h, t0 + Duration::from_millis(u64::from(seq)), seq);
        }
        sent_packets(&mut h);
        // 0 and 1 arrived, 2 lost, 3 arrived; 4 and 5 not in this feedback.
        let fb = feedback(
            0,
            vec![
                run(SymbolTypeTcc::PacketReceivedSmallDelta, 2),
                run(SymbolTypeTcc::PacketNotReceived, 1),
                run(SymbolTypeTcc::PacketReceivedSmallDelta, 1),
            ],
            3,
        );
        let at = t0 + Duration::from_millis(50);
        h.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(fb)])))
            .unwrap();
        let m = h.poll_read().unwrap();
        assert!(m.message.has(&Attribute::DeliverToApplication));
        let reports = rec.0.lock().unwrap().clone();
        let got: Vec<_> = reports
            .iter()
            .map(|r| (r.twcc_sequence_number, r.rtp_sequence_number, r.arrived))
            .collect();
        assert_eq!(
            got,
            [(0, 0, true), (1, 1, true), (2, 2, false), (3, 3, true)]
        );
        assert_eq!(reports[3].departure, t0 + Duration::from_millis(3));
        assert!(reports[3].arrival.is_some());
        assert!(reports
            .iter()
            .all(|r| r.size == 12 + 8 + 200 && r.ssrc == SSRC));
        assert_eq!(h.outstanding(), 2);
        // Feedback about what was already reported, or never sent, reports nothing more.
        let fb = feedback(1, vec![run(SymbolTypeTcc::PacketReceivedSmallDelta, 1)], 1);
        h.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(fb)])))
            .unwrap();
        let fb = feedback(
            900,
            vec![run(SymbolTypeTcc::PacketReceivedSmallDelta, 1)],
            1,
        );
        h.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(fb)])))
            .unwrap();
        // One claiming far more statuses than were sent is ignored and counted, not walked.
        let fb = feedback(
            4,
            vec![
                run(SymbolTypeTcc::PacketNotReceived, 8000),
                run(SymbolTypeTcc::PacketNotReceived, 8000),
            ],
            0,
        );
        h.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(fb)])))
            .unwrap();
        assert_eq!(
            h.state().counters.feedback_refused.load(Ordering::Relaxed),
            1
        );
        assert_eq!(rec.0.lock().unwrap().len(), 4);
        // 5 arrived: 4 is reported lost with it.
        let fb = feedback(5, vec![run(SymbolTypeTcc::PacketReceivedSmallDelta, 1)], 1);
        h.handle_read(tagged(at, Packet::Rtcp(vec![Box::new(fb)])))
            .unwrap();
        let reports = rec.0.lock().unwrap().clone();
        let tail: Vec<_> = reports[4..]
            .iter()
            .map(|r| (r.twcc_sequence_number, r.arrived))
            .collect();
        assert_eq!(tail, [(4, false), (5, true)]);
        assert_eq!(h.outstanding(), 0);
    }

    #[test]
    fn the_send_record_is_bounded_in_count_and_time() {
        let t0 = Instant::now();
        let (mut h, _) = twcc_side(t0);
        for i in 0..(TWCC_MAX_PACKETS + 100) {
            write_rtp(&mut h, t0, i as u16);
            while h.poll_write().is_some() {}
        }
        assert_eq!(h.outstanding(), TWCC_MAX_PACKETS);
        // Numbering wraps at 16 bits; feedback still finds the newest packets.
        for i in 0..60_000u32 {
            write_rtp(&mut h, t0 + Duration::from_millis(500), i as u16);
            while h.poll_write().is_some() {}
        }
        h.handle_timeout(t0 + TWCC_HORIZON + Duration::from_millis(100))
            .unwrap();
        assert_eq!(h.outstanding(), TWCC_MAX_PACKETS, "sent at +0.5 s: kept");
        h.handle_timeout(t0 + TWCC_HORIZON + Duration::from_millis(600))
            .unwrap();
        assert_eq!(h.outstanding(), 0);
    }

    #[test]
    fn sends_a_sender_report_per_stream_every_interval() {
        let t0 = Instant::now();
        let (mut h, _) = twcc_side(t0);
        assert_eq!(h.poll_timeout(), None, "nothing sent, nothing to report");
        for seq in 0..9 {
            write_rtp(&mut h, t0 + Duration::from_millis(u64::from(seq) * 10), seq);
        }
        while h.poll_write().is_some() {}
        let due = h.poll_timeout().unwrap();
        assert_eq!(due, t0 + SR_INTERVAL);
        h.handle_timeout(due - Duration::from_millis(1)).unwrap();
        assert!(h.poll_write().is_none());
        h.handle_timeout(due).unwrap();
        let m = h.poll_write().unwrap();
        let Packet::Rtcp(pkts) = &m.message.packet else {
            panic!("not RTCP");
        };
        let sr = pkts[0].as_any().downcast_ref::<SenderReport>().unwrap();
        assert_eq!(
            (sr.ssrc, sr.packet_count, sr.octet_count),
            (SSRC, 9, 9 * 200)
        );
        // The newest timestamp (seq 6-8: 2 * 3000) left at +60 ms; 940 ms later at 90 kHz.
        assert_eq!(sr.rtp_time, 6000 + 84_600);
        assert_eq!(sr.ntp_time, h.state().wall_clock.ntp(due));
        assert!(h.poll_write().is_none());
        assert_eq!(h.poll_timeout(), Some(due + SR_INTERVAL));
        // The report left through the history: a receiver report echoing it gives the RTT.
        receiver_report(
            &mut h,
            due + Duration::from_millis(30),
            (sr.ntp_time >> 16) as u32,
            0,
        );
        let rtt = h.srtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(30)) < Duration::from_millis(1),
            "{rtt:?}"
        );
    }
}
