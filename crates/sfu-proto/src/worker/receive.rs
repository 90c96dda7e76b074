//! A publish PC's media read past rtc's pipeline: once the PC's remote SRTP key is verified
//! ([`crate::direct::KeyTap::verify_remote`]) and rtc has delivered a stream's first packets
//! (so the stream is a known layer of a track), the worker opens that stream's SRTP itself
//! ([`crate::direct::Opening`], in place, AES-GCM or AES-CM), records each packet with the
//! leg's receive-side interceptors
//! ([`crate::recv_side`]: NACK generator, receiver reports, TWCC feedback, the same state rtc's
//! chain feeds) and forwards it.
//!
//! **Why.** In rooms of 4 a profile put rtc's read of a publisher's datagram at 30 % of the
//! worker: SRTP was 6 %, the interceptors 5 %, the rest the pipeline's handlers and queues.
//!
//! **What rtc still reads.** Everything but known media streams: ICE, DTLS, RTCP, data
//! channels, RTX, new streams. And one packet of each media stream every
//! [`RTC_READ_INTERVAL`], so that rtc's own state stays current: ICE consent (RFC 7675: a pair
//! that receives nothing is dropped), its SRTP context's rollover counter and the inbound
//! statistics.
//!
//! **Bounds and input.** A datagram of a known stream that does not open (forged, replayed, too
//! old) is dropped and counted as a bad packet; it never goes on to rtc, whose replay window has
//! not seen the packets opened here. The stream is left to rtc for good only if the publisher's
//! own packets stop opening too ([`crate::direct::OpenFailures`]: [`MAX_OPEN_FAILURES`] in a row
//! and [`STREAM_SILENCE`] without one that opened, a rollover counter missed), not for any
//! number of forged ones; the NACK generator has seen the gap, so the publisher resends what was
//! dropped. The key is verified on evidence a spoofer cannot make either
//! ([`crate::direct::RemoteVerification`]). At most [`MAX_MEDIA_STREAMS`] streams per PC; the
//! opener holds a stream's rollover counter only once one of its packets authenticates.

use super::*;
use crate::direct::{OpenFailures, Opening, RemoteVerification};
use crate::peer::ReceiveParts;
use rtc::shared::marshal::Unmarshal;

/// Time between two packets of a media stream left to rtc's read (see the module docs).
pub const RTC_READ_INTERVAL: Duration = Duration::from_millis(500);
/// Media streams per publish PC read past rtc (a track's simulcast layers: 3 per video track).
pub const MAX_MEDIA_STREAMS: usize = 16;
/// Packets of a known stream in a row that do not open before the stream may be left to rtc for
/// good (with [`STREAM_SILENCE`]: a rollover counter the worker missed).
pub const MAX_OPEN_FAILURES: u8 = 8;
/// Time without a packet of a known stream that opened before failures leave it to rtc. A
/// flowing stream has packets every 20 ms (audio) or more often (video).
pub const STREAM_SILENCE: Duration = Duration::from_secs(1);

/// Whether the worker opens a publish PC's SRTP media itself.
pub(super) enum DirectRecv {
    /// A subscribe PC, switched off, or given up: rtc reads.
    Off,
    /// Keys not verified yet: rtc reads, and the PC's SRTP is tried against the candidates.
    Pending {
        parts: ReceiveParts,
        /// Boxed: a PC is pending only until its key verifies.
        verification: Box<RemoteVerification>,
    },
    /// The worker opens known media streams.
    On(Box<Reading>),
}

pub(super) struct Reading {
    open: Opening,
    parts: ReceiveParts,
    /// The tap's generation when the key was verified.
    generation: u64,
    streams: Vec<MediaStream>,
    /// Streams left to rtc after [`MAX_OPEN_FAILURES`] (at most [`MAX_MEDIA_STREAMS`]).
    left_to_rtc: Vec<u32>,
}

/// A stream rtc delivered as a track's media.
struct MediaStream {
    ssrc: u32,
    /// rtc's id of its track.
    track: Arc<str>,
    /// When rtc last read one of its datagrams.
    rtc_at: Instant,
    /// Its packets that did not open.
    failures: OpenFailures,
}

impl DirectRecv {
    /// Starts in `Pending` at `now` for a publish PC's parts.
    pub(super) fn new(parts: Option<ReceiveParts>, now: Instant) -> Self {
        match parts {
            Some(parts) => Self::Pending {
                parts,
                verification: Box::new(RemoteVerification::new(now)),
            },
            None => Self::Off,
        }
    }

    /// Datagram `d` goes to rtc ([`RemoteVerification::handed`]).
    pub(super) fn handed(&mut self, d: &[u8]) {
        if let Self::Pending { verification, .. } = self {
            verification.handed(d);
        }
    }
}

impl Worker {
    /// Reads `bytes` from `remote` on publish PC `key` past rtc if it is a known media
    /// stream's SRTP: [`Read::Done`] if it was (opened and forwarded, or dropped as bad), else
    /// what rtc must read.
    pub(super) fn read_direct(
        &mut self,
        now: Instant,
        key: PcKey,
        proto: Proto,
        remote: SocketAddr,
        bytes: &[u8],
    ) -> Read {
        let local = self.local_addr(proto);
        let Some(pc) = self.pc_mut(key) else {
            return UNOPENED;
        };
        let Some((ssrc, _)) = crate::direct::srtp_stream(bytes) else {
            return UNOPENED;
        };
        let r = match &mut pc.recv {
            DirectRecv::Off => return UNOPENED,
            DirectRecv::Pending {
                parts,
                verification,
            } => {
                if parts.tap.generation() < 2 {
                    // The handshake has not derived both keys yet (SRTP ahead of it).
                    return UNOPENED;
                }
                let placed = rtc_has_place(&pc.rtc_ssrcs, ssrc);
                if !verification.worth_trying(now, ssrc, placed) {
                    // rtc has not authenticated a packet of this SSRC yet (and has a place for
                    // it).
                    return UNOPENED;
                }
                if let Some(open) = parts.tap.verify_remote(bytes) {
                    let generation = parts.tap.generation();
                    let DirectRecv::Pending { parts, .. } =
                        std::mem::replace(&mut pc.recv, DirectRecv::Off)
                    else {
                        return UNOPENED;
                    };
                    pc.recv = DirectRecv::On(Box::new(Reading {
                        open,
                        parts,
                        generation,
                        streams: Vec::new(),
                        left_to_rtc: Vec::new(),
                    }));
                    self.stats.direct_receive_engaged += 1;
                    // rtc reads this one too: the streams are not known yet.
                    return Read::Rtc {
                        authenticated: true,
                    };
                }
                // rtc reads it; if it authenticates it, `note_rtc_read` counts a miss.
                return UNOPENED;
            }
            DirectRecv::On(r) => r,
        };
        if r.parts.tap.generation() != r.generation {
            // A new DTLS handshake: new keys, rtc reads again.
            pc.recv = DirectRecv::Off;
            self.stats.direct_receive_dropped += 1;
            return UNOPENED;
        }
        let known = r.streams.iter().position(|s| s.ssrc == ssrc);
        let Some(i) = known
            .filter(|&i| now.saturating_duration_since(r.streams[i].rtc_at) < RTC_READ_INTERVAL)
        else {
            // rtc reads it (a stream it has not delivered yet, RTX, or this stream's packet of
            // the interval); opened here too, so that the stream's rollover counter and replay
            // window stay known (the opener holds a stream only once a packet authenticates).
            if let Some(i) = known {
                r.streams[i].rtc_at = now;
            }
            let opened = r.open.open(bytes).is_some();
            if !opened && !pc.rtc_ssrcs.contains(&ssrc) && !r.left_to_rtc.contains(&ssrc) {
                // An SSRC rtc has not seen, whose packet does not authenticate (forged,
                // replayed): rtc would keep state for it before finding that out.
                self.stats.ssrc_refused += 1;
                return Read::Done;
            }
            return Read::Rtc {
                authenticated: opened,
            };
        };
        let stream = &mut r.streams[i];
        let track = stream.track.clone();
        let Some(plain) = r.open.open(bytes) else {
            if stream
                .failures
                .failed(now, MAX_OPEN_FAILURES, STREAM_SILENCE)
            {
                r.streams.retain(|s| s.ssrc != ssrc);
                if r.left_to_rtc.len() < MAX_MEDIA_STREAMS {
                    r.left_to_rtc.push(ssrc);
                }
            }
            self.stats.bad_packets += 1;
            return Read::Done;
        };
        stream.failures.opened(now);
        let Ok(pkt) = rtc::rtp::Packet::unmarshal(&mut plain.freeze()) else {
            self.stats.bad_packets += 1;
            return Read::Done;
        };
        let (pkt, deadline) = r
            .parts
            .recv
            .record(now, transport(local, proto, remote), pkt);
        // The interceptors' feedback timers start with a stream's first packets.
        if let Some(t) = deadline {
            if self
                .timers
                .deadline_of(&Timer::Pc(key))
                .is_none_or(|d| t < d)
            {
                self.timers.schedule(t, Timer::Pc(key));
            }
        }
        if let Some(pkt) = pkt {
            self.stats.direct_received_packets += 1;
            self.forward(now, key.participant, &track, pkt);
        }
        Read::Done
    }

    /// rtc delivered `pkt` of track `track` on publish PC `key` (it authenticated the datagram):
    /// while the key is being verified, evidence for [`RemoteVerification`]; once it is, a
    /// stream that is a track's layer becomes known (read past rtc from its next packet).
    pub(super) fn note_rtc_read(
        &mut self,
        now: Instant,
        key: PcKey,
        track: &str,
        pkt: &rtc::rtp::Packet,
    ) {
        let ssrc = pkt.header.ssrc;
        let layer = self.by_ssrc.contains_key(&(key.participant, ssrc));
        let Some(pc) = self.pc_mut(key) else { return };
        let r = match &mut pc.recv {
            DirectRecv::On(r) => r,
            DirectRecv::Pending { verification, .. } => {
                if verification.rtc_authenticated() {
                    pc.recv = DirectRecv::Off;
                    self.stats.direct_receive_refused += 1;
                }
                return;
            }
            DirectRecv::Off => return,
        };
        if layer
            && r.streams.len() < MAX_MEDIA_STREAMS
            && !r.streams.iter().any(|s| s.ssrc == ssrc)
            && !r.left_to_rtc.contains(&ssrc)
        {
            r.streams.push(MediaStream {
                ssrc,
                track: Arc::from(track),
                rtc_at: now,
                failures: OpenFailures::new(now),
            });
        }
    }
}
