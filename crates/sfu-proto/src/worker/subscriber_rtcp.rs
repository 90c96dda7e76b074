//! A subscriber's SRTCP read past rtc's pipeline: once the worker sends a subscribe PC's RTP
//! itself ([`Direct::On`]) and the subscriber's SRTCP key is verified
//! ([`crate::direct::KeyTap::verify_remote_rtcp`], against a packet rtc reads too), the worker
//! opens the subscriber's SRTCP ([`crate::direct::RtcpOpening`]), hands the compound packet to
//! the leg's send side ([`crate::send_side::DirectSend::on_rtcp`]: transport feedback to the
//! estimator, NACKs answered from the history, receiver reports to the RTT) and reads the
//! receiver reports, PLI and FIR itself, as it does when rtc delivers them.
//!
//! **Why.** A call-graph profile at 1 -> 100 (one worker, release) put rtc's read at 12 % of
//! the worker, almost all of it the subscribers' RTCP (TWCC feedback about every 100 ms and
//! receiver reports from each): SRTCP decryption and parsing 2 %, our send side 3 %, the rest
//! each packet's way through rtc's ICE, DTLS, SRTP, interceptor and endpoint handlers and
//! their queues, and the PC's drain after.
//!
//! **Bounds and input.** A datagram that does not open (forged, replayed, too old) is dropped
//! and counted as a bad packet. The PC's RTCP is left to rtc for good only if the subscriber's
//! own SRTCP stops opening too ([`MAX_RTCP_OPEN_FAILURES`] in a row and [`RTCP_SILENCE`] without
//! one that opened), not for any number of forged datagrams; its key is verified on evidence a
//! spoofer cannot make ([`RemoteVerification`]). Nothing is created before a packet
//! authenticates (the opener holds a sender's replay window only after one of its packets did,
//! at most 256).

use super::*;
use crate::direct::{OpenFailures, RemoteVerification, RtcpOpening};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;

/// SRTCP datagrams of a subscribe PC in a row that do not open before its RTCP may be left to
/// rtc for good (with [`RTCP_SILENCE`]).
pub const MAX_RTCP_OPEN_FAILURES: u8 = 8;
/// Time without a subscriber's SRTCP datagram that opened before failures leave its RTCP to rtc
/// ([`crate::direct::OpenFailures`]). A receiving subscriber reports at least every few seconds
/// (RFC 3550 §6.2: 5 s at most on average), and sends transport-wide feedback far more often.
pub const RTCP_SILENCE: Duration = Duration::from_secs(10);

/// Whether the worker opens a subscribe PC's SRTCP itself.
pub(super) enum RtcpRead {
    /// Key not verified yet: rtc reads, and the subscriber's SRTCP is tried against the
    /// candidates.
    Pending(Box<RemoteVerification>),
    /// The worker opens it.
    On {
        open: Box<RtcpOpening>,
        failures: OpenFailures,
    },
    /// No candidate opened it, or too many did not open: rtc reads.
    Off,
}

impl RtcpRead {
    /// Starts in `Pending` at `now`.
    pub(super) fn new(now: Instant) -> Self {
        Self::Pending(Box::new(RemoteVerification::new(now)))
    }

    /// Datagram `d` goes to rtc ([`RemoteVerification::handed`]).
    pub(super) fn handed(&mut self, d: &[u8]) {
        if let Self::Pending(v) = self {
            v.handed(d);
        }
    }
}

/// Whether `d` is SRTCP by the RFC 5761 §4 split (version 2, a second octet of 192..=223) and
/// long enough to carry a header.
fn is_srtcp(d: &[u8]) -> bool {
    d.len() >= 8 && d[0] >> 6 == 2 && (192..=223).contains(&d[1])
}

impl Worker {
    /// Reads `bytes` on subscribe PC `key` past rtc if it is the subscriber's SRTCP and the
    /// worker opens it: [`Read::Done`] if it was (handled, or dropped as bad), else what rtc
    /// must read.
    pub(super) fn read_rtcp_direct(&mut self, now: Instant, key: PcKey, bytes: &[u8]) -> Read {
        if !is_srtcp(bytes) {
            return UNOPENED;
        }
        let Some(pc) = self.pc_mut(key) else {
            return UNOPENED;
        };
        let Direct::On { leg, parts, rtcp } = &mut pc.direct else {
            return UNOPENED;
        };
        if parts.tap.generation() != leg.generation {
            // New keys: the send side goes back to rtc at the next take, and so does this.
            return UNOPENED;
        }
        let (open, failures) = match rtcp {
            RtcpRead::Off => return UNOPENED,
            RtcpRead::Pending(verification) => {
                let worth = crate::direct::srtp_or_srtcp_ssrc(bytes).is_some_and(|ssrc| {
                    verification.worth_trying(now, ssrc, rtc_has_place(&pc.rtc_ssrcs, ssrc))
                });
                if let Some(open) = worth.then(|| parts.tap.verify_remote_rtcp(bytes)).flatten() {
                    *rtcp = RtcpRead::On {
                        open: Box::new(open),
                        failures: OpenFailures::new(now),
                    };
                    self.stats.direct_rtcp_engaged += 1;
                    // rtc reads this one too (its replay window has it here).
                    return Read::Rtc {
                        authenticated: true,
                    };
                }
                // rtc reads it; if it authenticates it, `note_rtc_rtcp` counts a miss.
                return UNOPENED;
            }
            RtcpRead::On { open, failures } => (open, failures),
        };
        let Some(plain) = open.open(bytes) else {
            if failures.failed(now, MAX_RTCP_OPEN_FAILURES, RTCP_SILENCE) {
                *rtcp = RtcpRead::Off;
            }
            self.stats.bad_packets += 1;
            return Read::Done;
        };
        failures.opened(now);
        let Ok(pkts) = rtc::rtcp::packet::unmarshal(&mut plain.freeze()) else {
            self.stats.bad_packets += 1;
            return Read::Done;
        };
        parts.send.with(|s| s.on_rtcp(now, &pkts));
        // The estimator may have moved the PC's deadline: read it again at the take.
        pc.rtc_written = true;
        self.stats.direct_rtcp_packets += 1;
        self.on_subscriber_rtcp(now, key.participant, &pkts);
        self.queue_retransmissions(key);
        self.written.push(key);
        self.written_at = Some(now);
        self.written_sorted = false;
        Read::Done
    }

    /// rtc authenticated a compound RTCP packet of subscribe PC `key`: evidence for the
    /// verification of the subscriber's SRTCP key ([`RemoteVerification`]).
    pub(super) fn note_rtc_rtcp(&mut self, key: PcKey) {
        let Some(pc) = self.pc_mut(key) else { return };
        let Direct::On { rtcp, .. } = &mut pc.direct else {
            return;
        };
        if let RtcpRead::Pending(v) = rtcp {
            if v.rtc_authenticated() {
                *rtcp = RtcpRead::Off;
                self.stats.direct_rtcp_refused += 1;
            }
        }
    }

    /// Subscriber `h`'s compound RTCP packet, read by rtc or by the worker: receiver reports
    /// (loss) and keyframe requests (PLI, FIR) for its downtracks.
    pub(super) fn on_subscriber_rtcp(
        &mut self,
        now: Instant,
        h: Handle,
        pkts: &[Box<dyn rtc::rtcp::Packet>],
    ) {
        for p in pkts {
            let any = p.as_any();
            if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                self.on_receiver_report(h, &rr.reports);
            } else if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                self.keyframe_for_downtrack(now, h, pli.media_ssrc);
            } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                for e in &fir.fir {
                    self.keyframe_for_downtrack(now, h, e.ssrc);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srtcp_is_told_from_srtp_by_the_second_octet() {
        assert!(is_srtcp(&[0x81, 201, 0, 7, 0, 0, 0, 1]));
        assert!(is_srtcp(&[0x80, 205, 0, 7, 0, 0, 0, 1]));
        assert!(!is_srtcp(&[0x80, 96, 0, 7, 0, 0, 0, 1]), "RTP");
        assert!(
            !is_srtcp(&[0x80, 224, 0, 7, 0, 0, 0, 1]),
            "RTP with the marker"
        );
        assert!(!is_srtcp(&[0x81, 201, 0, 7]), "short");
        assert!(!is_srtcp(&[0x16, 201, 0, 7, 0, 0, 0, 1]), "DTLS");
    }
}
