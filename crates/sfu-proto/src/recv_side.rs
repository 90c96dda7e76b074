//! The publish leg's receive side: everything the SFU sends a publisher about the media it
//! receives, in one place on rtc's chain and behind a handle the worker shares, so that a
//! packet the worker opened itself ([`crate::direct::Opening`]) is recorded exactly as one
//! rtc read: the feedback the publisher gets is the same either way.
//!
//! - **Receiver reports** (RFC 3550 §6.4.2): per remote stream, the extended highest sequence
//!   number, the cumulative and interval losses (Appendix A.1 and A.3, with its dropout and
//!   misorder bounds), the interarrival jitter (§6.4.1, Appendix A.8) and the last sender
//!   report's time with the delay since it; every [`RR_INTERVAL`], one RTCP RR for all streams
//!   that received.
//! - **NACKs** (RFC 4585 §6.2.1): a stream whose codec negotiated `nack` keeps which of its
//!   last [`NACK_LOG`] sequence numbers arrived. Every [`NACK_INTERVAL`] the missing ones after
//!   the last run received in order are asked for again, each at most [`MAX_NACKS_PER_PACKET`]
//!   times (rtc's generator asked every interval until the packet left its 512-packet log: 35
//!   to 55 times for one lost packet of a 90-150 packet/s video stream).
//! - **TWCC feedback** (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1): rtc's own
//!   receiver, held inside and fed the same packets.
//!
//! **Why not rtc's three interceptors.** Behind this handle they were walked as rtc's chain
//! walks them: every packet moved through each one's queue (a ~250-byte message, twice per
//! interceptor) and was looked up in a SipHash map per interceptor. A call-graph profile of
//! rooms of 4 (one worker, release) put that walk at 8.7 % of the worker, more than opening the
//! packets. Here a packet is looked up once in a short list of streams.
//!
//! **Bounds.** At most [`MAX_REMOTE_STREAMS`] streams (rtc binds one per negotiated SSRC or
//! simulcast layer); RTP of a stream that was not bound is passed on and not recorded. A
//! sequence number jump clears the log at once instead of walking the gap.

use crate::peer::FeedbackCounters;
use rtc::interceptor::{
    AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket, TwccReceiverBuilder,
    TwccReceiverInterceptor,
};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    nack_pairs_from_sequence_numbers, TransportLayerNack,
};
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Time between two receiver reports (rtc's default).
pub const RR_INTERVAL: Duration = Duration::from_secs(1);
/// Time between two rounds of NACKs (rtc's default).
pub const NACK_INTERVAL: Duration = Duration::from_millis(100);
/// Sequence numbers of a stream the NACK log spans (rtc's default): older gaps are not asked
/// for.
pub const NACK_LOG: u16 = 512;
/// Times one missing packet is asked for (libwebrtc's receiver gives up after 10 too).
pub const MAX_NACKS_PER_PACKET: u8 = 10;
/// Remote streams recorded per publish PC.
pub const MAX_REMOTE_STREAMS: usize = 32;
/// Reception report blocks one RTCP RR carries (the 5-bit count, RFC 3550 §6.4.2).
const MAX_REPORT_BLOCKS: usize = 31;
/// RFC 3550 Appendix A.1: a jump ahead of more than this restarts the count only if the next
/// packet follows it; one this far behind is a misordered packet of the current run.
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// Which of a stream's last [`NACK_LOG`] sequence numbers arrived, and how often each missing
/// one was asked for.
struct NackLog {
    received: [u64; NACK_LOG as usize / 64],
    asked: [u8; NACK_LOG as usize],
    /// The highest sequence number received.
    end: u16,
    /// The end of the run received without a gap from the first packet (or from the log's
    /// start).
    last_consecutive: u16,
}

impl NackLog {
    fn new(first: u16) -> Self {
        let mut log = Self {
            received: [0; NACK_LOG as usize / 64],
            asked: [0; NACK_LOG as usize],
            end: first,
            last_consecutive: first,
        };
        log.set(first, true);
        log
    }

    fn slot(seq: u16) -> usize {
        usize::from(seq % NACK_LOG)
    }

    fn get(&self, seq: u16) -> bool {
        let i = Self::slot(seq);
        self.received[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, seq: u16, on: bool) {
        let i = Self::slot(seq);
        if on {
            self.received[i / 64] |= 1 << (i % 64);
        } else {
            self.received[i / 64] &= !(1 << (i % 64));
            self.asked[i] = 0;
        }
    }

    fn add(&mut self, seq: u16) {
        let ahead = seq.wrapping_sub(self.end);
        if ahead == 0 {
            return;
        }
        if ahead < 0x8000 {
            if ahead >= NACK_LOG {
                // A jump past the whole log: everything before it is out of reach.
                self.received = [0; NACK_LOG as usize / 64];
                self.asked = [0; NACK_LOG as usize];
                self.last_consecutive = seq;
            } else {
                let mut i = self.end.wrapping_add(1);
                while i != seq {
                    self.set(i, false);
                    i = i.wrapping_add(1);
                }
            }
            self.end = seq;
            self.set(seq, true);
            if self.last_consecutive.wrapping_add(1) == seq {
                self.last_consecutive = seq;
            } else if seq.wrapping_sub(self.last_consecutive) >= NACK_LOG {
                self.last_consecutive = seq.wrapping_sub(NACK_LOG - 1);
                self.advance();
            }
        } else {
            // Late: fills a gap if it is still in the log.
            if self.end.wrapping_sub(seq) >= NACK_LOG {
                return;
            }
            self.set(seq, true);
            if self.last_consecutive.wrapping_add(1) == seq {
                self.advance();
            }
        }
    }

    /// Moves `last_consecutive` over the packets received after it.
    fn advance(&mut self) {
        while self.last_consecutive != self.end && self.get(self.last_consecutive.wrapping_add(1)) {
            self.last_consecutive = self.last_consecutive.wrapping_add(1);
        }
    }

    /// Appends the missing sequence numbers to ask for now to `out`, counting the asking.
    fn take_missing(&mut self, out: &mut Vec<u16>) {
        let mut i = self.last_consecutive.wrapping_add(1);
        while i != self.end.wrapping_add(1) {
            if !self.get(i) {
                let asked = &mut self.asked[Self::slot(i)];
                if *asked < MAX_NACKS_PER_PACKET {
                    *asked += 1;
                    out.push(i);
                }
            }
            i = i.wrapping_add(1);
        }
    }
}

/// A remote stream's reception statistics (RFC 3550 Appendix A.1, A.3, A.8).
#[derive(Default)]
struct Reception {
    /// Set by the first packet.
    started: bool,
    max_seq: u16,
    /// Sequence number wraps, shifted (count << 16).
    cycles: u32,
    base_seq: u32,
    /// The sequence number that would confirm a large jump (Appendix A.1 `bad_seq`).
    bad_seq: Option<u16>,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// The last packet's arrival in RTP timestamp units and its RTP timestamp.
    last_transit: Option<(f64, u32)>,
    /// Interarrival jitter in RTP timestamp units (§6.4.1).
    jitter: f64,
    /// The middle 32 bits of the last sender report's NTP time, and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl Reception {
    fn restart(&mut self, seq: u16) {
        self.max_seq = seq;
        self.cycles = 0;
        self.base_seq = u32::from(seq);
        self.bad_seq = None;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
    }

    /// Counts packet `seq` with RTP timestamp `ts`, arrived at `arrival` (seconds since any
    /// fixed origin) on a `clock_rate` Hz clock.
    fn on_packet(&mut self, seq: u16, ts: u32, arrival: f64, clock_rate: f64) {
        if !self.started {
            self.started = true;
            self.restart(seq);
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta < MAX_DROPOUT {
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            } else if delta <= u16::MAX - MAX_MISORDER {
                // A large jump: believed only if the next packet follows it (the source
                // restarted its numbering).
                if self.bad_seq == Some(seq) {
                    self.restart(seq);
                } else {
                    self.bad_seq = Some(seq.wrapping_add(1));
                    return;
                }
            }
            // Otherwise a duplicate or a misordered packet: counted as received.
        }
        self.received = self.received.wrapping_add(1);
        let arrival_ts = arrival * clock_rate;
        if let Some((last_arrival, last_ts)) = self.last_transit {
            let d = (arrival_ts - last_arrival) - f64::from(ts.wrapping_sub(last_ts) as i32);
            self.jitter += (d.abs() - self.jitter) / 16.0;
        }
        self.last_transit = Some((arrival_ts, ts));
    }

    /// The report block for `ssrc` at `now`; the interval starts again.
    fn report(&mut self, ssrc: u32, now: Instant) -> ReceptionReport {
        let extended_max = self.cycles.wrapping_add(u32::from(self.max_seq));
        let expected = extended_max.wrapping_sub(self.base_seq).wrapping_add(1);
        let lost = i64::from(expected) - i64::from(self.received);
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let (last_sender_report, delay) = match self.last_sr {
            Some((lsr, at)) => (
                lsr,
                (now.saturating_duration_since(at).as_secs_f64() * 65536.0) as u32,
            ),
            None => (0, 0),
        };
        ReceptionReport {
            ssrc,
            fraction_lost,
            total_lost: lost.clamp(0, 0xFF_FFFF) as u32,
            last_sequence_number: extended_max,
            jitter: self.jitter as u32,
            last_sender_report,
            delay,
        }
    }
}

/// One remote stream bound by rtc.
struct RemoteStream {
    ssrc: u32,
    clock_rate: f64,
    /// The stream's codec negotiated generic NACK.
    nack: bool,
    /// From the stream's first packet on.
    log: Option<NackLog>,
    reception: Reception,
}

struct State {
    /// The SSRC our NACKs and receiver reports are sent from.
    sender_ssrc: u32,
    /// `nack_requested` counts the sequence numbers NACKed.
    counters: Arc<FeedbackCounters>,
    streams: Vec<RemoteStream>,
    /// The origin of arrival times (the first packet).
    origin: Option<Instant>,
    next_report: Option<Instant>,
    next_nack: Option<Instant>,
    twcc: TwccReceiverInterceptor,
    /// Packets rtc's chain handed in, for its next read.
    read: VecDeque<TaggedPacket>,
    /// Packets for the wire: the application's writes passing through, and our RTCP.
    write: VecDeque<TaggedPacket>,
    /// Reused for NACKed sequence numbers.
    missing: Vec<u16>,
}

impl State {
    /// Records RTP packet `p` arrived at `now` (TWCC aside).
    fn on_rtp(&mut self, now: Instant, p: &rtc::rtp::Packet) {
        let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == p.header.ssrc) else {
            return;
        };
        let origin = *self.origin.get_or_insert(now);
        let arrival = now.saturating_duration_since(origin).as_secs_f64();
        let seq = p.header.sequence_number;
        s.reception
            .on_packet(seq, p.header.timestamp, arrival, s.clock_rate);
        self.next_report.get_or_insert(now + RR_INTERVAL);
        if s.nack {
            match &mut s.log {
                Some(log) => log.add(seq),
                None => s.log = Some(NackLog::new(seq)),
            }
            self.next_nack.get_or_insert(now + NACK_INTERVAL);
        }
    }

    fn on_sender_report(&mut self, now: Instant, sr: &SenderReport) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.ssrc == sr.ssrc) {
            s.reception.last_sr = Some(((sr.ntp_time >> 16) as u32, now));
        }
    }

    /// Hands `msg` (RTP) to the TWCC receiver and takes it back.
    fn twcc_read(&mut self, msg: TaggedPacket) -> Option<TaggedPacket> {
        if let Err(e) = self.twcc.handle_read(msg) {
            tracing::debug!(error = %e, "TWCC receiver refused a packet");
        }
        self.twcc.poll_read()
    }

    fn rtcp(&mut self, now: Instant, p: Box<dyn rtc::rtcp::Packet>) {
        self.write.push_back(TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtcp(vec![p])),
        });
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.next_nack.is_some_and(|at| now >= at) {
            self.next_nack = Some(now + NACK_INTERVAL);
            let mut missing = std::mem::take(&mut self.missing);
            for i in 0..self.streams.len() {
                let s = &mut self.streams[i];
                let (Some(log), ssrc) = (&mut s.log, s.ssrc) else {
                    continue;
                };
                missing.clear();
                log.take_missing(&mut missing);
                if !missing.is_empty() {
                    self.counters
                        .nack_requested
                        .fetch_add(missing.len() as u64, Ordering::Relaxed);
                    let nack = TransportLayerNack {
                        sender_ssrc: self.sender_ssrc,
                        media_ssrc: ssrc,
                        nacks: nack_pairs_from_sequence_numbers(&missing),
                    };
                    self.rtcp(now, Box::new(nack));
                }
            }
            self.missing = missing;
        }
        if self.next_report.is_some_and(|at| now >= at) {
            self.next_report = Some(now + RR_INTERVAL);
            let blocks: Vec<ReceptionReport> = self
                .streams
                .iter_mut()
                .filter(|s| s.reception.started)
                .map(|s| s.reception.report(s.ssrc, now))
                .collect();
            for reports in blocks.chunks(MAX_REPORT_BLOCKS) {
                let rr = ReceiverReport {
                    ssrc: self.sender_ssrc,
                    reports: reports.to_vec(),
                    ..Default::default()
                };
                self.rtcp(now, Box::new(rr));
            }
        }
        if let Err(e) = self.twcc.handle_timeout(now) {
            tracing::debug!(error = %e, "TWCC receiver timeout");
        }
        while let Some(m) = self.twcc.poll_write() {
            self.write.push_back(m);
        }
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        [self.next_report, self.next_nack, self.twcc.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }
}

/// The publish leg's receive side, one interceptor on rtc's chain (see the module docs).
pub struct ReceiveSide {
    state: Arc<Mutex<State>>,
}

/// The worker's handle on a publish leg's [`ReceiveSide`].
#[derive(Clone)]
pub struct ReceiveHandle(Arc<Mutex<State>>);

impl ReceiveSide {
    /// A receive side whose NACKs and receiver reports come from `sender_ssrc`, counting
    /// what it NACKs in `counters`.
    pub fn new(sender_ssrc: u32, counters: Arc<FeedbackCounters>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                sender_ssrc,
                counters,
                streams: Vec::new(),
                origin: None,
                next_report: None,
                next_nack: None,
                twcc: TwccReceiverBuilder::new().build(),
                read: VecDeque::new(),
                write: VecDeque::new(),
                missing: Vec::new(),
            })),
        }
    }

    /// The worker's handle.
    pub fn handle(&self) -> ReceiveHandle {
        ReceiveHandle(self.state.clone())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReceiveHandle {
    /// Records RTP packet `p`, received at `now` over `transport`, as rtc's read would, and
    /// gives it back; also the side's earliest deadline afterwards (its feedback timers start
    /// with a stream's first packets).
    pub fn record(
        &self,
        now: Instant,
        transport: TransportContext,
        p: rtc::rtp::Packet,
    ) -> (Option<rtc::rtp::Packet>, Option<Instant>) {
        let mut st = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        st.on_rtp(now, &p);
        let back = st.twcc_read(TaggedPacket {
            now,
            transport,
            message: Packet::Rtp(p).into(),
        });
        let back = match back {
            Some(TaggedPacket {
                message:
                    AttributedPacket {
                        packet: Packet::Rtp(p),
                        ..
                    },
                ..
            }) => Some(p),
            _ => None,
        };
        (back, st.poll_timeout())
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReceiveSide {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let mut st = self.state();
        match &msg.message.packet {
            Packet::Rtp(p) => {
                st.on_rtp(msg.now, p);
                if let Some(m) = st.twcc_read(msg) {
                    st.read.push_back(m);
                }
            }
            Packet::Rtcp(pkts) => {
                for p in pkts {
                    if let Some(sr) = p.as_any().downcast_ref::<SenderReport>() {
                        st.on_sender_report(msg.now, sr);
                    }
                }
                st.read.push_back(msg);
            }
            _ => st.read.push_back(msg),
        }
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.state().read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.state().write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.state().write.pop_front()
    }

    fn handle_timeout(&mut self, now: Self::Time) -> Result<(), Self::Error> {
        self.state().handle_timeout(now);
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        self.state().poll_timeout()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        self.state().twcc.close()
    }
}

impl Interceptor for ReceiveSide {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}

    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        let mut st = self.state();
        st.twcc.bind_remote_stream(info);
        if st.streams.iter().any(|s| s.ssrc == info.ssrc) {
            return;
        }
        if st.streams.len() >= MAX_REMOTE_STREAMS {
            tracing::debug!(ssrc = info.ssrc, "remote stream not recorded: too many");
            return;
        }
        st.streams.push(RemoteStream {
            ssrc: info.ssrc,
            clock_rate: f64::from(info.clock_rate.max(1)),
            nack: info
                .rtcp_feedback
                .iter()
                .any(|fb| fb.typ == "nack" && fb.parameter.is_empty()),
            log: None,
            reception: Reception::default(),
        });
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        let mut st = self.state();
        st.twcc.unbind_remote_stream(info);
        st.streams.retain(|s| s.ssrc != info.ssrc);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use rtc::interceptor::{NackGeneratorBuilder, RTCPFeedback, RTPHeaderExtension};
    use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
    use rtc::shared::marshal::Marshal;

    const SSRC: u32 = 42;
    const TWCC_EXT: u8 = 3;

    fn info(ssrc: u32, nack: bool) -> StreamInfo {
        StreamInfo {
            ssrc,
            clock_rate: 90_000,
            rtcp_feedback: if nack {
                vec![RTCPFeedback {
                    typ: "nack".into(),
                    parameter: String::new(),
                }]
            } else {
                vec![]
            },
            rtp_header_extensions: vec![RTPHeaderExtension {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.into(),
                id: u16::from(TWCC_EXT),
            }],
            ..Default::default()
        }
    }

    fn rtp(ssrc: u32, seq: u16, ts: u32) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc,
                sequence_number: seq,
                timestamp: ts,
                ..Default::default()
            },
            payload: vec![0u8; 10].into(),
        }
    }

    fn tagged(now: Instant, p: rtc::rtp::Packet) -> TaggedPacket {
        TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: Packet::Rtp(p).into(),
        }
    }

    /// The RTCP packets written (each compound's packets in order).
    fn written(
        side: &mut impl Protocol<TaggedPacket, TaggedPacket, (), Wout = TaggedPacket>,
    ) -> Vec<Box<dyn rtc::rtcp::Packet>> {
        let mut out = Vec::new();
        while let Some(m) = side.poll_write() {
            if let Packet::Rtcp(pkts) = m.message.packet {
                out.extend(pkts);
            }
        }
        out
    }

    fn nacked(pkts: &[Box<dyn rtc::rtcp::Packet>]) -> Vec<u16> {
        pkts.iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            .flat_map(|n| n.nacks.iter().flat_map(|pair| pair.packet_list()))
            .collect()
    }

    fn blocks(pkts: &[Box<dyn rtc::rtcp::Packet>]) -> Vec<ReceptionReport> {
        pkts.iter()
            .filter_map(|p| p.as_any().downcast_ref::<ReceiverReport>())
            .flat_map(|rr| rr.reports.iter().cloned())
            .collect()
    }

    /// Packets recorded through the handle and read through rtc's chain land in the same
    /// state: a gap between them is NACKed and reported lost.
    #[test]
    fn the_handle_and_the_chain_feed_the_same_state() {
        let mut side = ReceiveSide::new(7, Arc::default());
        side.bind_remote_stream(&info(SSRC, true));
        let handle = side.handle();
        let t0 = Instant::now();
        assert_eq!(side.poll_timeout(), None, "no stream flowing yet");
        // 1 and 2 read by rtc, 5 and 6 by the worker: 3 and 4 are missing.
        for seq in [1, 2] {
            side.handle_read(tagged(t0, rtp(SSRC, seq, 0))).unwrap();
            assert!(side.poll_read().is_some());
        }
        let mut deadline = None;
        for seq in [5, 6] {
            let (back, d) = handle.record(t0, TransportContext::default(), rtp(SSRC, seq, 0));
            assert_eq!(back.unwrap().header.sequence_number, seq);
            deadline = d;
        }
        assert!(
            side.poll_read().is_none(),
            "the worker's packets are not read twice"
        );
        assert_eq!(deadline, Some(t0 + NACK_INTERVAL));
        side.handle_timeout(t0 + NACK_INTERVAL).unwrap();
        let out = written(&mut side);
        assert_eq!(nacked(&out), [3, 4]);
        let n = out[0]
            .as_any()
            .downcast_ref::<TransportLayerNack>()
            .unwrap();
        assert_eq!((n.sender_ssrc, n.media_ssrc), (7, SSRC));
        // The receiver report counts the four packets and the two missing (RFC 3550 §6.4.2).
        side.handle_timeout(t0 + RR_INTERVAL).unwrap();
        let b = blocks(&written(&mut side));
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].ssrc, SSRC);
        assert_eq!(b[0].last_sequence_number, 6);
        assert_eq!(b[0].total_lost, 2);
        assert_eq!(b[0].fraction_lost, (2 * 256 / 6) as u8);
    }

    #[test]
    fn a_missing_packet_is_asked_for_at_most_max_nacks_per_packet_times() {
        let mut side = ReceiveSide::new(7, Arc::default());
        side.bind_remote_stream(&info(SSRC, true));
        let h = side.handle();
        let t0 = Instant::now();
        for seq in [10, 11, 13, 14, 16] {
            h.record(t0, TransportContext::default(), rtp(SSRC, seq, 0));
        }
        let mut asked = Vec::new();
        for k in 1..=(u32::from(MAX_NACKS_PER_PACKET) + 3) {
            if k == 4 {
                // 12 arrives late: not asked for again.
                h.record(t0, TransportContext::default(), rtp(SSRC, 12, 0));
            }
            side.handle_timeout(t0 + NACK_INTERVAL * k).unwrap();
            asked.push(nacked(&written(&mut side)));
        }
        assert_eq!(asked[0], [12, 15]);
        assert_eq!(asked[2], [12, 15]);
        assert_eq!(asked[3], [15], "12 arrived");
        let times_15 = asked.iter().filter(|a| a.contains(&15)).count();
        assert_eq!(times_15, usize::from(MAX_NACKS_PER_PACKET));
        assert_eq!(
            side.state().counters.nack_requested.load(Ordering::Relaxed),
            asked.iter().map(|a| a.len() as u64).sum::<u64>()
        );
        assert!(asked.last().unwrap().is_empty());
        // A stream without NACK feedback is never asked about.
        let mut quiet = ReceiveSide::new(7, Arc::default());
        quiet.bind_remote_stream(&info(SSRC, false));
        for seq in [1, 5] {
            quiet
                .handle()
                .record(t0, TransportContext::default(), rtp(SSRC, seq, 0));
        }
        quiet.handle_timeout(t0 + RR_INTERVAL).unwrap();
        let out = written(&mut quiet);
        assert!(nacked(&out).is_empty());
        assert_eq!(blocks(&out)[0].total_lost, 3);
    }

    /// The same packets, lost and reordered at random, give the same NACKs as rtc's generator
    /// asked to stop after as many times.
    #[test]
    fn nacks_match_rtcs_generator_on_loss_and_reordering() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut ours = ReceiveSide::new(7, Arc::default());
        let mut theirs = NackGeneratorBuilder::new()
            .with_max_nacks_per_packet(u16::from(MAX_NACKS_PER_PACKET))
            .build();
        ours.bind_remote_stream(&info(SSRC, true));
        theirs.bind_remote_stream(&info(SSRC, true));
        let t0 = Instant::now();
        let mut held: Vec<u16> = Vec::new();
        let mut seq: u16 = 65_000; // wraps on the way
        let mut compared = 0;
        for tick in 1..=300u32 {
            let now = t0 + NACK_INTERVAL * tick;
            for _ in 0..12 {
                seq = seq.wrapping_add(1);
                let r: f64 = rng.random();
                if r < 0.05 {
                    continue; // lost
                }
                if r < 0.10 {
                    held.push(seq); // late, after the next few
                    continue;
                }
                for s in std::iter::once(seq).chain(if rng.random_bool(0.3) {
                    std::mem::take(&mut held)
                } else {
                    vec![]
                }) {
                    ours.handle_read(tagged(now, rtp(SSRC, s, 0))).unwrap();
                    theirs.handle_read(tagged(now, rtp(SSRC, s, 0))).unwrap();
                    while ours.poll_read().is_some() {}
                    while theirs.poll_read().is_some() {}
                }
            }
            ours.handle_timeout(now).unwrap();
            theirs.handle_timeout(now).unwrap();
            let a = nacked(&written(&mut ours));
            let b = nacked(&written(&mut theirs));
            assert_eq!(a, b, "tick {tick}");
            compared += a.len();
        }
        assert!(compared > 500, "the pattern asked for {compared} packets");
    }

    #[test]
    fn receiver_reports_follow_rfc3550_appendix_a() {
        let mut side = ReceiveSide::new(7, Arc::default());
        side.bind_remote_stream(&info(SSRC, false));
        let h = side.handle();
        let t0 = Instant::now();
        let rec = |seq: u16, at: Duration, ts: u32| {
            h.record(t0 + at, TransportContext::default(), rtp(SSRC, seq, ts));
        };
        // 65533..=65535 then 0..=2 across the wrap, 65535 lost, 1 twice; 20 ms apart and 1800
        // ticks (90 kHz) apart: no jitter.
        let mut at = Duration::ZERO;
        for (i, seq) in [65_533u16, 65_534, 0, 1, 1, 2].into_iter().enumerate() {
            let ts = 1800 * u32::from(seq.wrapping_sub(65_533));
            if i != 4 {
                at = Duration::from_millis(20) * u32::from(seq.wrapping_sub(65_533));
            }
            rec(seq, at, ts);
        }
        // A sender report 100 ms before the report.
        let sr = SenderReport {
            ssrc: SSRC,
            ntp_time: 0x1234_5678_9abc_def0,
            ..Default::default()
        };
        side.handle_read(TaggedPacket {
            now: t0 + Duration::from_millis(900),
            transport: TransportContext::default(),
            message: Packet::Rtcp(vec![Box::new(sr)]).into(),
        })
        .unwrap();
        assert!(side.poll_read().is_some(), "RTCP goes on to rtc");
        side.handle_timeout(t0 + RR_INTERVAL).unwrap();
        let b = &blocks(&written(&mut side))[0];
        assert_eq!(b.last_sequence_number, (1 << 16) | 2, "one cycle");
        // Expected 6 (65533..=2), received 6 with the duplicate: none lost (A.3).
        assert_eq!(b.total_lost, 0);
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.jitter, 0);
        assert_eq!(b.last_sender_report, 0x5678_9abc);
        assert_eq!(b.delay, 6553, "0.1 s in 1/65536 s");
        // Next interval: 3..=12 with 5 and 6 lost; one packet 90 ticks late.
        for seq in 3u16..=12 {
            if seq == 5 || seq == 6 {
                continue;
            }
            // One second on, in both clocks, from where the first interval left off.
            let late = if seq == 8 { 1 } else { 0 };
            let ms = 1000 + 20 * (u64::from(seq) + 3) + late;
            h.record(
                t0 + Duration::from_millis(ms),
                TransportContext::default(),
                rtp(SSRC, seq, 90_000 + 1800 * (u32::from(seq) + 3)),
            );
        }
        side.handle_timeout(t0 + RR_INTERVAL * 2).unwrap();
        let b = &blocks(&written(&mut side))[0];
        assert_eq!(b.last_sequence_number, (1 << 16) | 12);
        assert_eq!(b.total_lost, 2);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8);
        // |D| = 90 ticks at packets 8 and 9, 0 elsewhere (RFC 3550 §6.4.1: J += (|D| - J)/16).
        let j = [90.0, 90.0, 0.0, 0.0, 0.0]
            .iter()
            .fold(0.0, |j: f64, d| j + (d - j) / 16.0);
        assert_eq!(b.jitter, j as u32);
        assert_eq!(b.jitter, 8);
        // A jump of 10000 is believed only when the next packet follows it.
        for seq in [10_012u16, 10_013, 10_014] {
            h.record(
                t0 + RR_INTERVAL * 2,
                TransportContext::default(),
                rtp(SSRC, seq, 0),
            );
        }
        side.handle_timeout(t0 + RR_INTERVAL * 3).unwrap();
        let b = &blocks(&written(&mut side))[0];
        assert_eq!(b.last_sequence_number, 10_014, "restarted at 10013");
        assert_eq!(b.total_lost, 0);
    }

    #[test]
    fn twcc_feedback_covers_what_the_handle_recorded() {
        let mut side = ReceiveSide::new(7, Arc::default());
        side.bind_remote_stream(&info(SSRC, false));
        let h = side.handle();
        let t0 = Instant::now();
        for (i, tseq) in [100u16, 101, 103].into_iter().enumerate() {
            let mut p = rtp(SSRC, i as u16, 0);
            p.header
                .set_extension(TWCC_EXT, tseq.to_be_bytes().to_vec().into())
                .unwrap();
            h.record(
                t0 + Duration::from_millis(i as u64),
                TransportContext::default(),
                p,
            );
        }
        let due = side.poll_timeout().unwrap();
        side.handle_timeout(due).unwrap();
        let cc: Vec<TransportLayerCc> = written(&mut side)
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerCc>().cloned())
            .collect();
        assert_eq!(cc.len(), 1);
        assert_eq!(cc[0].base_sequence_number, 100);
        assert_eq!(cc[0].packet_status_count, 4, "100..=103, 102 not received");
        assert_eq!(cc[0].recv_deltas.len(), 3);
        assert!(cc[0].marshal().is_ok());
    }

    #[test]
    fn streams_and_gaps_are_bounded() {
        let mut side = ReceiveSide::new(7, Arc::default());
        for ssrc in 0..(MAX_REMOTE_STREAMS as u32 + 10) {
            side.bind_remote_stream(&info(ssrc, true));
        }
        assert_eq!(side.state().streams.len(), MAX_REMOTE_STREAMS);
        side.bind_remote_stream(&info(0, true));
        assert_eq!(
            side.state().streams.len(),
            MAX_REMOTE_STREAMS,
            "no duplicate"
        );
        let h = side.handle();
        let t0 = Instant::now();
        // A jump of 20000 and one of 301: only the latter's gap is asked for.
        for seq in [1u16, 20_001, 20_302] {
            h.record(t0, TransportContext::default(), rtp(0, seq, 0));
        }
        side.handle_timeout(t0 + NACK_INTERVAL).unwrap();
        let asked = nacked(&written(&mut side));
        assert_eq!(asked, (20_002..20_302).collect::<Vec<u16>>());
        // A gap longer than the log: at most NACK_LOG - 1 asked for.
        h.record(t0, TransportContext::default(), rtp(0, 20_302 + 600, 0));
        h.record(t0, TransportContext::default(), rtp(0, 20_302 + 601, 0));
        side.handle_timeout(t0 + NACK_INTERVAL * 2).unwrap();
        assert!(nacked(&written(&mut side)).len() < usize::from(NACK_LOG));
        side.unbind_remote_stream(&info(0, true));
        assert_eq!(side.state().streams.len(), MAX_REMOTE_STREAMS - 1);
    }
}
