//! Construction of the SFU's peer connections (webrtc-rs `rtc`): ICE-lite with a ufrag we
//! choose (so one UDP port can serve every PC, see [`super::demux`]), DTLS passive when
//! answering, the codecs the SFU forwards, and the interceptor chains:
//! - publish leg: NACK generator (asks the publisher to retransmit), receiver reports, simulcast
//!   header extensions (MID/RID, RFC 8852), TWCC feedback for the publisher's own estimate; no
//!   RTX codec (webrtc-rs rtc#12: RTX of RID layers is not paired yet, so Chrome retransmits on
//!   the primary SSRC instead);
//! - subscribe leg: one interceptor of ours, [`crate::send_side::SendSide`]: TWCC numbering and
//!   the record its feedback is matched against for send-side congestion control (GCC, whose
//!   estimate [`BweCell`] exposes), the NACK responder with RTX (RFC 4588) from a history sized
//!   by RTT and rate ([`crate::nack`]), sender reports, and the tap of the leg's feedback for
//!   the worker; no pacer (the SFU adapts by choosing simulcast layers, and pacing forwarded
//!   media to the estimate only delays it). A subscribe PC also gets its own crypto provider,
//!   [`KeyTap`], and comes with [`DirectParts`], so that the worker can protect and send its RTP
//!   itself ([`crate::direct`]).
//!
//! Each leg carries only the interceptors it uses (every one costs each packet two moves
//! through its queues; hence the subscribe leg's one). [`FeedbackTap`] is the same tap for
//! clients (the bench, tests): it counts NACK, PLI and FIR received and retransmissions sent,
//! and hands inbound RTCP to the application.

use crate::direct::KeyTap;
use crate::nack::HistoryConfig;
use crate::recv_side::{ReceiveHandle, ReceiveSide};
use crate::send_side::{SendHandle, SendSide};
use rtc::interceptor::{
    Attribute, BandwidthEstimator, EstimatorStats, Gcc, Interceptor, Packet, PacketReport,
    Registry, Slot, StreamInfo, TaggedPacket,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::time::SystemInstant;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// RFC 6464 client-to-mixer audio level header extension.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Which of a participant's two peer connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leg {
    /// The participant sends; the participant offers.
    Publish,
    /// The participant receives; the SFU offers.
    Subscribe,
}

/// Counters shared by every [`FeedbackTap`] of a worker (atomics only because the interceptor
/// trait requires `Send + Sync`; one thread uses them).
#[derive(Debug, Default)]
pub struct FeedbackCounters {
    /// Generic NACK packets received (RFC 4585 §6.2.1).
    pub nack: AtomicU64,
    /// PLI received (RFC 4585 §6.3.1).
    pub pli: AtomicU64,
    /// FIR received (RFC 5104 §4.3.1).
    pub fir: AtomicU64,
    /// RTP packets sent again because of a NACK (RTX or plain).
    pub retransmitted: AtomicU64,
    /// Sequence numbers NACKed that were no longer (or never) in the send history
    /// ([`crate::nack`]).
    pub nack_missing: AtomicU64,
    /// Sequence numbers NACKed again within one RTT of their last retransmission, or past
    /// [`crate::nack::HistoryConfig::max_resends`] (not sent).
    pub nack_throttled: AtomicU64,
    /// Transport-wide feedback packets ignored because they claimed more packet statuses than
    /// the send record could match ([`crate::send_side`]).
    pub feedback_refused: AtomicU64,
    /// Packets held in every send history now (a gauge).
    pub history_packets: AtomicU64,
    /// Sequence numbers asked of publishers again in generic NACKs ([`crate::recv_side`]).
    pub nack_requested: AtomicU64,
}

/// Interceptor next to the wire: counts feedback, marks inbound RTCP for the application.
pub struct FeedbackTap {
    counters: Arc<FeedbackCounters>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl FeedbackTap {
    /// A tap adding to `counters`.
    pub fn new(counters: Arc<FeedbackCounters>) -> Self {
        Self {
            counters,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackTap {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            if !pkts.is_empty() {
                for p in pkts {
                    let any = p.as_any();
                    if any.is::<TransportLayerNack>() {
                        self.counters.nack.fetch_add(1, Ordering::Relaxed);
                    } else if any.is::<PictureLossIndication>() {
                        self.counters.pli.fetch_add(1, Ordering::Relaxed);
                    } else if any.is::<FullIntraRequest>() {
                        self.counters.fir.fetch_add(1, Ordering::Relaxed);
                    }
                }
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
        if matches!(msg.message.packet, Packet::Rtp(_))
            && msg.message.has(&Attribute::Retransmission)
        {
            self.counters.retransmitted.fetch_add(1, Ordering::Relaxed);
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

impl Interceptor for FeedbackTap {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// The subscriber leg's current send-side bandwidth estimate, bits per second.
#[derive(Debug, Default)]
pub struct BweCell(AtomicU64);

impl BweCell {
    /// Bits per second (0 before the first estimate).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// GCC, publishing its target into a [`BweCell`] whenever it can change.
struct ReportingEstimator {
    inner: Gcc,
    cell: Arc<BweCell>,
}

impl ReportingEstimator {
    fn publish(&self) {
        self.cell
            .0
            .store(self.inner.target_bitrate() as u64, Ordering::Relaxed);
    }
}

impl BandwidthEstimator for ReportingEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.inner.on_reports(now, reports);
        self.publish();
    }
    fn target_bitrate(&self) -> f64 {
        self.inner.target_bitrate()
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.publish();
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

/// Settings every PC of a worker shares.
#[derive(Clone, Debug)]
pub struct PcSettings {
    /// ICE: no check for this long -> disconnected.
    pub ice_disconnected: Duration,
    /// ICE: no check for this long -> failed (the participant's media is cleaned up).
    pub ice_failed: Duration,
    /// Initial, minimum and maximum of the subscriber bandwidth estimate, bits per second.
    pub bwe_initial_bps: f64,
    /// Lower bound of the estimate.
    pub bwe_min_bps: f64,
    /// Upper bound of the estimate.
    pub bwe_max_bps: f64,
    /// How long the subscriber leg keeps sent packets for NACK ([`crate::nack`]).
    pub nack_history: HistoryConfig,
    /// Unix time at one instant, for the NTP time of the subscriber leg's sender reports
    /// (RFC 3550 §6.4.1). The I/O layer sets it at start; `None` takes the system clock when a
    /// peer connection is built.
    pub wall_clock: Option<SystemInstant>,
    /// Subscribe PCs come with [`DirectParts`], so that the worker protects and sends their
    /// RTP itself ([`crate::direct`]); `false`: rtc does.
    pub direct_send: bool,
    /// Publish PCs come with [`ReceiveParts`], so that the worker opens their SRTP media
    /// itself ([`crate::direct::Opening`]); `false`: rtc does.
    pub direct_receive: bool,
}

impl Default for PcSettings {
    fn default() -> Self {
        Self {
            ice_disconnected: Duration::from_secs(5),
            ice_failed: Duration::from_secs(25),
            bwe_initial_bps: 400_000.0,
            bwe_min_bps: 100_000.0,
            bwe_max_bps: 10_000_000.0,
            nack_history: HistoryConfig::default(),
            wall_clock: None,
            direct_send: true,
            direct_receive: true,
        }
    }
}

fn video_feedback() -> Vec<RTCPFeedback> {
    vec![
        RTCPFeedback {
            typ: "ccm".into(),
            parameter: "fir".into(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: String::new(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: "pli".into(),
        },
    ]
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str, pt: u8) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.into(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.into(),
            rtcp_feedback: if mime.starts_with("video/") && mime != MIME_TYPE_RTX {
                video_feedback()
            } else {
                vec![]
            },
        },
        payload_type: pt,
    }
}

/// The codecs the SFU forwards, with RTX on the subscribe leg only.
fn media_engine(leg: Leg) -> Result<MediaEngine, rtc::shared::error::Error> {
    let mut me = MediaEngine::default();
    me.register_codec(
        codec(MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1", 111),
        RtpCodecKind::Audio,
    )?;
    let video = [
        (MIME_TYPE_VP8, "", 96u8, 97u8),
        (MIME_TYPE_VP9, "profile-id=0", 98, 99),
        (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
            102,
            103,
        ),
        (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            104,
            105,
        ),
    ];
    for (mime, fmtp, pt, rtx) in video {
        me.register_codec(codec(mime, 90_000, 0, fmtp, pt), RtpCodecKind::Video)?;
        if leg == Leg::Subscribe {
            me.register_codec(
                codec(MIME_TYPE_RTX, 90_000, 0, &format!("apt={pt}"), rtx),
                RtpCodecKind::Video,
            )?;
        }
    }
    if leg == Leg::Publish {
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.into(),
            },
            RtpCodecKind::Audio,
            None,
        )?;
    }
    Ok(me)
}

/// What the worker needs of a subscribe PC to send its RTP itself ([`crate::direct`]).
pub struct DirectParts {
    /// The PC's crypto provider, which keeps the SRTP master key candidates.
    pub tap: Arc<KeyTap>,
    /// The PC's send side.
    pub send: SendHandle,
}

/// What the worker needs of a publish PC to open its SRTP media itself
/// ([`crate::direct::Opening`]).
pub struct ReceiveParts {
    /// The PC's crypto provider, which keeps the SRTP master key candidates.
    pub tap: Arc<KeyTap>,
    /// The PC's receive side.
    pub recv: ReceiveHandle,
}

/// The worker's parts of a peer connection: a subscribe PC's [`DirectParts`] or a publish
/// PC's [`ReceiveParts`], each unless switched off.
pub enum PcParts {
    /// Neither.
    None,
    /// A subscribe PC's.
    Send(DirectParts),
    /// A publish PC's.
    Receive(ReceiveParts),
}

/// What the worker draws for one PC from its seeded generator.
pub struct PcIds<'a> {
    /// Local ICE username fragment (RFC 8445 §5.3).
    pub ufrag: &'a str,
    /// Local ICE password.
    pub pwd: &'a str,
    /// The SSRC the publish leg's NACKs and receiver reports come from.
    pub rtcp_ssrc: u32,
}

/// Builds one lite peer connection for `leg` with local ICE credentials and RTCP SSRC `ids`,
/// and the worker's [`PcParts`] of it.
pub fn build_pc(
    leg: Leg,
    ids: &PcIds<'_>,
    settings: &PcSettings,
    counters: Arc<FeedbackCounters>,
    bwe: Arc<BweCell>,
    now: Instant,
) -> Result<(RTCPeerConnection, PcParts), rtc::shared::error::Error> {
    let mut me = media_engine(leg)?;
    // Each interceptor on a chain costs every packet a move through its queues, so each leg
    // gets only what it uses: the publish leg receives media (NACK generator, receiver
    // reports, TWCC feedback) and sends none; the subscribe leg sends media (congestion
    // control, TWCC numbering, the NACK history, which also taps feedback for the worker, and
    // sender reports) and receives none.
    let registry = Registry::new();
    let mut parts = PcParts::None;
    // NACK and PLI feedback on video, as rtc's `configure_nack`; but the publish leg only asks
    // (generator), and the subscribe leg only answers, from an RTT-sized history.
    for parameter in ["", "pli"] {
        me.register_feedback(
            RTCPFeedback {
                typ: "nack".into(),
                parameter: parameter.into(),
            },
            RtpCodecKind::Video,
        );
    }
    let registry = match leg {
        Leg::Publish => {
            configure_simulcast_extension_headers(&mut me)?;
            // NACKs, receiver reports and TWCC feedback in one interceptor the worker can also
            // feed (crate::recv_side). The helper registers TWCC feedback and its header
            // extension in the media engine; its registry is not used.
            configure_twcc_receiver_only(Registry::new(), &mut me)?;
            let side = ReceiveSide::new(ids.rtcp_ssrc, counters.clone());
            if settings.direct_receive {
                parts = PcParts::Receive(ReceiveParts {
                    tap: Arc::new(KeyTap::new()),
                    recv: side.handle(),
                });
            }
            registry.with(Slot::NackGenerator, side)
        }
        Leg::Subscribe => {
            let estimator = ReportingEstimator {
                inner: Gcc::new(
                    settings.bwe_initial_bps,
                    settings.bwe_min_bps,
                    settings.bwe_max_bps,
                ),
                cell: bwe,
            };
            estimator.publish();
            // What `configure_congestion_control` does, minus its pacer: an SFU adapts by
            // choosing layers; pacing forwarded media to a lagging estimate only delays it.
            for kind in [RtpCodecKind::Video, RtpCodecKind::Audio] {
                me.register_feedback(
                    RTCPFeedback {
                        typ: "transport-cc".into(),
                        parameter: String::new(),
                    },
                    kind,
                );
                me.register_header_extension(
                    RTCRtpHeaderExtensionCapability {
                        uri: rtc::sdp::extmap::TRANSPORT_CC_URI.into(),
                    },
                    kind,
                    None,
                )?;
            }
            // Congestion control's record, TWCC numbering, the NACK history and sender reports
            // in one interceptor (crate::send_side): one move through its queues instead of four.
            let wall_clock = settings
                .wall_clock
                .unwrap_or_else(|| SystemInstant::now(now));
            let side = SendSide::new(settings.nack_history, counters, estimator, wall_clock);
            if settings.direct_send {
                parts = PcParts::Send(DirectParts {
                    tap: Arc::new(KeyTap::new()),
                    send: side.handle(),
                });
            }
            registry.with(Slot::CongestionControl, side)
        }
    };
    let mut se = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ids.ufrag.to_string(), ids.pwd.to_string())
        .with_ice_timeouts(
            Some(settings.ice_disconnected),
            Some(settings.ice_failed),
            Some(Duration::from_secs(2)),
        )
        .with_include_loopback_candidate(true);
    if leg == Leg::Publish {
        se = se.with_answering_dtls_role(RTCDtlsRole::Server);
    }
    match &parts {
        PcParts::Send(d) => se = se.with_crypto_provider(d.tap.clone()),
        PcParts::Receive(r) => se = se.with_crypto_provider(r.tap.clone()),
        PcParts::None => {}
    }
    let pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(se.build())
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .build(now)?;
    Ok((pc, parts))
}
