//! The publish leg's receive side: rtc's NACK generator, receiver reports and TWCC feedback
//! (rtc-interceptor's own, in their own chain), held behind a handle the worker shares, so that
//! a packet the worker opened itself ([`crate::direct::GcmOpen`]) is recorded by the same
//! interceptors as one rtc read: the feedback the publisher gets is the same either way.
//!
//! On rtc's chain this is one interceptor that hands everything to the inner chain. The worker
//! calls [`ReceiveHandle::record`] with each RTP packet it read past rtc.

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

type Inner = Box<dyn Interceptor>;

/// The publish leg's receive-side interceptors, as one on rtc's chain (see the module docs).
pub struct ReceiveSide {
    inner: Arc<Mutex<Inner>>,
}

/// The worker's handle on a publish leg's [`ReceiveSide`].
#[derive(Clone)]
pub struct ReceiveHandle(Arc<Mutex<Inner>>);

impl ReceiveSide {
    /// The side over `inner` (an interceptor chain built from a registry).
    pub fn new(inner: impl Interceptor + 'static) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Box::new(inner))),
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
        let _ = inner.handle_read(TaggedPacket {
            now,
            transport,
            message: Packet::Rtp(p).into(),
        });
        let mut back = None;
        while let Some(m) = inner.poll_read() {
            if let Packet::Rtp(p) = m.message.packet {
                back = Some(p);
            }
        }
        (back, inner.poll_timeout())
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReceiveSide {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner().handle_read(msg)
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.inner().poll_read()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.inner().handle_write(msg)
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.inner().poll_write()
    }

    fn handle_event(&mut self, evt: ()) -> Result<(), Self::Error> {
        self.inner().handle_event(evt)
    }

    fn poll_event(&mut self) -> Option<Self::Eout> {
        self.inner().poll_event()
    }

    fn handle_timeout(&mut self, now: Self::Time) -> Result<(), Self::Error> {
        self.inner().handle_timeout(now)
    }

    fn poll_timeout(&mut self) -> Option<Self::Time> {
        self.inner().poll_timeout()
    }

    fn close(&mut self) -> Result<(), Self::Error> {
        self.inner().close()
    }
}

impl Interceptor for ReceiveSide {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        self.inner().bind_local_stream(info);
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.inner().unbind_local_stream(info);
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner().bind_remote_stream(info);
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.inner().unbind_remote_stream(info);
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;
    use rtc::interceptor::{NackGeneratorBuilder, RTCPFeedback, Registry, Slot};
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
        let chain = Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .build();
        let mut side = ReceiveSide::new(chain);
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
    }
}
