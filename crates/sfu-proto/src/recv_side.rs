//! The publish leg's receive side: rtc's NACK generator, receiver reports and TWCC feedback
//! (rtc-interceptor's own, walked here as its chain walks them), held behind a handle the worker shares, so that
//! a packet the worker opened itself ([`crate::direct::Opening`]) is recorded by the same
//! interceptors as one rtc read: the feedback the publisher gets is the same either way.
//!
//! On rtc's chain this is one interceptor that hands everything to the inner chain. The worker
//! calls [`ReceiveHandle::record`] with each RTP packet it read past rtc.

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// The interceptors in wire-to-application order, walked as rtc-interceptor's chain walks
/// them (reads forward, writes backward, what one emits fed to the next), with one belt reused
/// across calls and without the chain's terminal no-op (rtc's own chain, which holds this
/// side, ends with one).
#[derive(Default)]
struct Inner {
    interceptors: Vec<Box<dyn Interceptor>>,
    belt: VecDeque<TaggedPacket>,
    read_outs: VecDeque<TaggedPacket>,
    write_outs: VecDeque<TaggedPacket>,
}

/// Which way a packet goes through the interceptors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// From the wire to the application: first to last, `handle_read` / `poll_read`.
    Read,
    /// From the application to the wire: last to first, `handle_write` / `poll_write`.
    Write,
}

impl Inner {
    /// Walks `first` (or what the interceptors have queued) through every interceptor the
    /// `way` it goes, into `read_outs` or `write_outs`.
    fn walk(&mut self, way: Way, first: Option<TaggedPacket>) {
        let mut belt = std::mem::take(&mut self.belt);
        belt.extend(first);
        let n = self.interceptors.len();
        for k in 0..n {
            let i = &mut self.interceptors[if way == Way::Read { k } else { n - 1 - k }];
            while let Some(m) = belt.pop_front() {
                let r = match way {
                    Way::Read => i.handle_read(m),
                    Way::Write => i.handle_write(m),
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "receive-side interceptor refused a packet");
                }
            }
            while let Some(m) = match way {
                Way::Read => i.poll_read(),
                Way::Write => i.poll_write(),
            } {
                belt.push_back(m);
            }
        }
        match way {
            Way::Read => self.read_outs.extend(belt.drain(..)),
            Way::Write => self.write_outs.extend(belt.drain(..)),
        }
        self.belt = belt;
    }
}

/// The publish leg's receive-side interceptors, as one on rtc's chain (see the module docs).
pub struct ReceiveSide {
    inner: Arc<Mutex<Inner>>,
}

/// The worker's handle on a publish leg's [`ReceiveSide`].
#[derive(Clone)]
pub struct ReceiveHandle(Arc<Mutex<Inner>>);

impl ReceiveSide {
    /// The side over `interceptors`, in wire-to-application order (rtc-interceptor's slot
    /// order).
    pub fn new(interceptors: Vec<Box<dyn Interceptor>>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                interceptors,
                ..Inner::default()
            })),
        }
    }

    /// The worker's handle.
    pub fn handle(&self) -> ReceiveHandle {
        ReceiveHandle(self.inner.clone())
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReceiveHandle {
    /// Records RTP packet `p`, received at `now` over `transport`, as rtc's read would, and
    /// gives it back; also the interceptors' earliest deadline afterwards (their feedback
    /// timers start with a stream's first packets).
    pub fn record(
        &self,
        now: Instant,
        transport: TransportContext,
        p: rtc::rtp::Packet,
    ) -> (Option<rtc::rtp::Packet>, Option<Instant>) {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let outs = inner.read_outs.len();
        inner.walk(
            Way::Read,
            Some(TaggedPacket {
                now,
                transport,
                message: Packet::Rtp(p).into(),
            }),
        );
        // The walk released this packet last (the receive-side interceptors hold nothing
        // back). Anything else, and anything queued before, stays for rtc's read.
        let ours = inner.read_outs.len() > outs
            && inner
                .read_outs
                .back()
                .is_some_and(|m| matches!(m.message.packet, Packet::Rtp(_)));
        let back = match ours.then(|| inner.read_outs.pop_back()).flatten() {
            Some(TaggedPacket {
                message:
                    rtc::interceptor::AttributedPacket {
                        packet: Packet::Rtp(p),
                        ..
                    },
                ..
            }) => Some(p),
            _ => None,
        };
        let deadline = inner
            .interceptors
            .iter_mut()
            .filter_map(|i| i.poll_timeout())
            .min();
        (back, deadline)
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReceiveSide {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner().walk(Way::Read, Some(msg));
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        let mut inner = self.inner();
        if inner.read_outs.is_empty() {
            inner.walk(Way::Read, None);
        }
        inner.read_outs.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner().walk(Way::Write, Some(msg));
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        let mut inner = self.inner();
        if inner.write_outs.is_empty() {
            inner.walk(Way::Write, None);
        }
        inner.write_outs.pop_front()
    }

    fn handle_timeout(&mut self, now: Self::Time) -> Result<(), Self::Error> {
        for i in self.inner().interceptors.iter_mut() {
            i.handle_timeout(now)?;
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        self.inner()
            .interceptors
            .iter_mut()
            .filter_map(|i| i.poll_timeout())
            .min()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        for i in self.inner().interceptors.iter_mut() {
            i.close()?;
        }
        Ok(())
    }
}

impl Interceptor for ReceiveSide {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        for i in self.inner().interceptors.iter_mut() {
            i.bind_local_stream(info);
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        for i in self.inner().interceptors.iter_mut() {
            i.unbind_local_stream(info);
        }
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        for i in self.inner().interceptors.iter_mut() {
            i.bind_remote_stream(info);
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        for i in self.inner().interceptors.iter_mut() {
            i.unbind_remote_stream(info);
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use rtc::interceptor::{NackGeneratorBuilder, RTCPFeedback, ReceiverReportBuilder};
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
    use std::time::Duration;

    fn rtp(seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: 42,
                sequence_number: seq,
                ..Default::default()
            },
            payload: vec![0u8; 10].into(),
        }
    }

    /// Packets recorded through the handle and read through rtc's chain land in the same
    /// interceptors: a gap between them is NACKed.
    #[test]
    fn the_handle_and_the_chain_feed_the_same_interceptors() {
        let mut side = ReceiveSide::new(vec![
            Box::new(NackGeneratorBuilder::new().build()),
            Box::new(ReceiverReportBuilder::new().build()),
        ]);
        side.bind_remote_stream(&StreamInfo {
            ssrc: 42,
            rtcp_feedback: vec![RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        });
        let handle = side.handle();
        let t0 = Instant::now();
        assert_eq!(side.poll_timeout(), None, "no stream flowing yet");
        // 1 and 2 read by rtc, 5 and 6 by the worker: 3 and 4 are missing.
        for seq in [1, 2] {
            side.handle_read(TaggedPacket {
                now: t0,
                transport: TransportContext::default(),
                message: Packet::Rtp(rtp(seq)).into(),
            })
            .unwrap();
            assert!(side.poll_read().is_some());
        }
        let mut deadline = None;
        for seq in [5, 6] {
            let (back, d) = handle.record(t0, TransportContext::default(), rtp(seq));
            assert_eq!(back.unwrap().header.sequence_number, seq);
            deadline = d;
        }
        assert!(
            side.poll_read().is_none(),
            "the worker's packets are not read twice"
        );
        let at = deadline.expect("the NACK timer runs");
        assert!(at > t0 && at <= t0 + Duration::from_secs(1));
        side.handle_timeout(at).unwrap();
        let mut nacked = Vec::new();
        while let Some(m) = side.poll_write() {
            if let Packet::Rtcp(pkts) = m.message.packet {
                for p in pkts {
                    if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                        for pair in &n.nacks {
                            nacked.extend(pair.packet_list());
                        }
                    }
                }
            }
        }
        assert_eq!(nacked, [3, 4]);
        // The receiver report counts all four packets and the two missing (RFC 3550 §6.4.2).
        let mut reported = None;
        for ms in [1000, 2000] {
            side.handle_timeout(t0 + Duration::from_millis(ms)).unwrap();
            while let Some(m) = side.poll_write() {
                if let Packet::Rtcp(pkts) = m.message.packet {
                    for p in pkts {
                        if let Some(rr) = p.as_any().downcast_ref::<ReceiverReport>() {
                            reported = rr.reports.iter().find(|r| r.ssrc == 42).cloned();
                        }
                    }
                }
            }
        }
        let r = reported.expect("a receiver report for the stream");
        assert_eq!(r.last_sequence_number, 6);
        assert_eq!(r.total_lost, 2);
    }
}
