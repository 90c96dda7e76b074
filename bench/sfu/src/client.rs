//! A client thread: the webrtc-rs `rtc` peer connections of its share of the participants (a
//! publish PC that offers one VP8 and one Opus track; a subscribe PC that answers the SFU's
//! offers), each on its own loopback UDP socket, driven by one mio event loop. Publishers pace
//! their packets; subscribers decode the probes and record latency, loss and duplicates.

use crate::probe::{self, Kind, Probe, SeqSet, Vp8Part};
use bench_support::histogram::LatencyHistogram;
use bytes::BytesMut;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_OPUS, MIME_TYPE_VP8,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::sansio::Protocol as _;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::{json, Value};
use sfu_proto::dtls_flight::LastFlight;
use sfu_proto::peer::{FeedbackCounters, FeedbackTap};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// The media each publisher sends.
#[derive(Clone, Debug)]
pub struct Load {
    /// Video frames per second.
    pub fps: f64,
    /// RTP packets per video frame (marker bit on the last).
    pub packets_per_frame: usize,
    /// Video payload bytes.
    pub video_bytes: usize,
    /// Audio packets per second.
    pub audio_pps: f64,
    /// Audio payload bytes.
    pub audio_bytes: usize,
    /// Time between keyframes (also sent at once on a PLI/FIR).
    pub keyframe_interval: Duration,
    /// Datagrams dropped on purpose, per million, each way (0: none): a lossy path in front
    /// of the clients' sockets, to exercise ICE and DTLS retransmission.
    pub drop_ppm: u32,
    /// Offer only SRTP_AES128_CM_HMAC_SHA1_80 in DTLS-SRTP (RFC 5764 §4.1.2), the profile
    /// Chromium ends up with, instead of webrtc-rs's list (AEAD AES-128-GCM first).
    pub srtp_aes_cm: bool,
    /// Forged SRTP datagrams each publisher sends from its own socket once connected, each of
    /// a fresh SSRC with a tag no key made (as anyone who can forge the publisher's source
    /// address could), [`SPOOF_PER_FRAME`] per video frame.
    pub spoof_ssrcs: u32,
}

/// Forged datagrams of [`Load::spoof_ssrcs`] sent per video frame.
const SPOOF_PER_FRAME: u32 = 50;

/// A seeded xorshift stream deciding which datagrams `Load::drop_ppm` drops.
#[derive(Debug)]
struct Dropper {
    ppm: u32,
    state: u64,
}

impl Dropper {
    fn new(ppm: u32, seed: u64) -> Self {
        Self {
            ppm,
            state: seed | 1,
        }
    }

    /// True if the next datagram is to be dropped.
    fn drop_next(&mut self) -> bool {
        if self.ppm == 0 {
            return false;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state % 1_000_000) < u64::from(self.ppm)
    }
}

/// One participant this thread runs.
#[derive(Clone, Debug)]
pub struct Seat {
    /// Index in the whole plan (the probe's publisher field).
    pub index: u32,
    /// Publishes a video and an audio track.
    pub publishes: bool,
    /// Where messages for the SFU go (the participant's link).
    pub outbox: UnboundedSender<String>,
    /// Send SDPs with the host candidate in them (Janus: no trickle); turnkey's SFU is ICE-lite
    /// and learns the address from the checks, so its SDPs go without.
    pub candidates_in_sdp: bool,
}

/// State shared by the main thread and every client thread.
pub struct Shared {
    /// The probes' clock.
    pub epoch: Instant,
    /// Measurement window on the probes' clock, µs (u64::MAX: not set).
    pub window_start_us: AtomicU64,
    /// End of the window, µs (u64::MAX: not set).
    pub window_end_us: AtomicU64,
    /// Set to end the threads.
    pub stop: AtomicBool,
    /// (subscriber, publisher track) pairs that have delivered at least one packet.
    pub flows: AtomicUsize,
    /// Peer connections in state `connected`.
    pub connected: AtomicUsize,
}

impl Shared {
    /// New shared state; nothing measured yet.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            flows: AtomicUsize::new(0),
            connected: AtomicUsize::new(0),
        }
    }

    /// Now on the probes' clock.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn in_window(&self, us: u64) -> bool {
        let s = self.window_start_us.load(Ordering::Relaxed);
        let e = self.window_end_us.load(Ordering::Relaxed);
        us >= s && us < e
    }
}

/// What one thread measured.
#[derive(Debug, Default)]
pub struct ThreadReport {
    /// Publish -> receive latency of window packets, µs.
    pub latency: LatencyHistogram,
    /// Window packets sent, per publisher index: [video, audio].
    pub sent: HashMap<u32, [u64; 2]>,
    /// Distinct window packets received.
    pub received: u64,
    /// Window packets received more than once.
    pub duplicates: u64,
    /// Keyframe requests (PLI/FIR) publishers received.
    pub keyframe_requests: u64,
    /// `write_rtp` refusals.
    pub write_errors: u64,
    /// Datagrams the socket would not take.
    pub send_errors: u64,
    /// Frames skipped because the thread fell behind.
    pub lagged: u64,
    /// Datagrams dropped on purpose (`Load::drop_ppm`), both ways.
    pub dropped: u64,
    /// DTLS flights sent again because the SFU repeated its own.
    pub flights_resent: u64,
    /// SFU `error` messages and SDP failures.
    pub errors: Vec<String>,
    /// Every peer connection this thread opened: its time from creation to `connected` (ICE
    /// and DTLS done), None if it never got there.
    pub pc_setup: Vec<Option<Duration>>,
    /// Longest time between two fresh packets of one flow, over every flow, after its first
    /// packet, until `stop` (µs): how long media stopped at worst.
    pub max_gap_us: u64,
    /// (subscriber, publisher track) flows that delivered at least one packet.
    pub flows: usize,
}

struct Pc {
    pc: RTCPeerConnection,
    sock: UdpSocket,
    local: SocketAddr,
    deadline: Option<Instant>,
    dirty: bool,
    connected: bool,
    /// When the PC was created (its offer or the SFU's offer arrived).
    created: Instant,
    /// Set once it first reached `connected` (ICE and DTLS done).
    setup: Option<Duration>,
    /// Our last DTLS flight, sent again when the SFU repeats its own (rtc-dtls does not:
    /// `sfu_proto::dtls_flight`).
    flight: LastFlight,
    /// Where our DTLS datagrams go (for the flight's own timer).
    flight_to: Option<SocketAddr>,
    /// ICE has a selected pair here.
    ice_up: bool,
    /// DTLS datagrams that arrived before `ice_up`, fed again once it is: rtc's ICE handler
    /// drops them, and the ICE-lite SFU, whose pair is selected first, starts its DTLS
    /// handshake a moment before this end has its pair (so a ClientHello would wait out a
    /// 1 s retransmission). At most `EARLY_DTLS` are kept.
    early: Vec<(SocketAddr, BytesMut)>,
}

/// Most DTLS datagrams kept per PC until its ICE is up.
const EARLY_DTLS: usize = 8;

struct Publisher {
    video: RTCRtpSenderId,
    audio: RTCRtpSenderId,
    video_ssrc: u32,
    audio_ssrc: u32,
    rtp_seq: [u16; 2],
    probe_seq: [u32; 2],
    frame: u64,
    next_frame: Instant,
    next_audio: Instant,
    last_key: Option<Instant>,
    want_key: bool,
    /// Forged datagrams sent so far ([`Load::spoof_ssrcs`]).
    spoofed: u32,
}

struct Part {
    seat: Seat,
    publish: Option<Pc>,
    publisher: Option<Publisher>,
    subscribe: Option<Pc>,
    streams: HashMap<(u32, Kind), SeqSet>,
    /// Probe-clock time of each flow's last fresh packet (µs).
    last_fresh: HashMap<(u32, Kind), u64>,
}

const WAKER: Token = Token(usize::MAX);
const VP8_PT: u8 = 96;
const OPUS_PT: u8 = 111;

/// A peer connection with webrtc-rs's defaults plus the SFU's `FeedbackTap`, without which
/// webrtc-rs never hands inbound PLI/FIR to the application (publishers would not answer the
/// SFU's keyframe requests).
/// With `srtp_aes_cm`, DTLS-SRTP offers only AES_CM_128_HMAC_SHA1_80 ([`Load::srtp_aes_cm`]).
fn new_pc(now: Instant, srtp_aes_cm: bool) -> anyhow::Result<RTCPeerConnection> {
    let mut me = MediaEngine::default();
    me.register_default_codecs()?;
    let tap = FeedbackTap::new(Arc::new(FeedbackCounters::default()));
    let reg = register_default_interceptors(Registry::new().with(Slot::Custom(500), tap), &mut me)?;
    let mut builder = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(me)
        .with_interceptor_registry(reg);
    if srtp_aes_cm {
        builder = builder.with_setting_engine(
            SettingEngineBuilder::new()
                .with_srtp_protection_profiles(vec![
                    SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80,
                ])
                .build(),
        );
    }
    Ok(builder.build(now)?)
}

fn add_host(pc: &mut RTCPeerConnection, a: SocketAddr) -> anyhow::Result<()> {
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: a.ip().to_string(),
            port: a.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&c).to_json()?)?;
    Ok(())
}

fn track(stream: &str, kind: RtpCodecKind, ssrc: u32) -> MediaStreamTrack {
    let (id, codec) = match kind {
        RtpCodecKind::Audio => (
            "audio",
            RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
        ),
        _ => (
            "video",
            RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: String::new(),
                rtcp_feedback: vec![],
            },
        ),
    };
    MediaStreamTrack::new(
        stream.into(),
        format!("{stream}-{id}"),
        id.into(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

fn bind(poll: &Poll, token: Token, ip: IpAddr) -> anyhow::Result<(UdpSocket, SocketAddr)> {
    let mut sock = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    let local = sock.local_addr()?;
    poll.registry()
        .register(&mut sock, token, Interest::READABLE)?;
    Ok((sock, local))
}

/// Runs a client thread until `shared.stop`. `inbox` carries the SFU's messages for
/// `seats[slot]`. Every peer connection has its own UDP socket on `ip`.
pub fn run(
    poll: Poll,
    seats: Vec<Seat>,
    inbox: mpsc::Receiver<(usize, Value)>,
    load: Load,
    ip: IpAddr,
    shared: Arc<Shared>,
) -> anyhow::Result<ThreadReport> {
    let mut poll = poll;
    let mut report = ThreadReport::default();
    let mut parts: Vec<Part> = Vec::with_capacity(seats.len());
    let start = Instant::now();
    for (slot, seat) in seats.into_iter().enumerate() {
        let mut part = Part {
            seat,
            publish: None,
            publisher: None,
            subscribe: None,
            streams: HashMap::new(),
            last_fresh: HashMap::new(),
        };
        if part.seat.publishes {
            let (sock, local) = bind(&poll, Token(slot * 2), ip)?;
            let mut pc = new_pc(start, load.srtp_aes_cm)?;
            let stream = format!("p{}", part.seat.index);
            let (vs, aus) = (
                0x1000_0000 + part.seat.index * 2,
                0x1000_0001 + part.seat.index * 2,
            );
            let video = pc.add_track(track(&stream, RtpCodecKind::Video, vs))?;
            let audio = pc.add_track(track(&stream, RtpCodecKind::Audio, aus))?;
            let offer = pc.create_offer(None)?;
            pc.set_local_description(start, offer.clone())?;
            add_host(&mut pc, local)?;
            let sdp = sdp_to_send(&pc, offer, part.seat.candidates_in_sdp);
            let _ = part
                .seat
                .outbox
                .send(json!({"type": "offer", "sdp": sdp}).to_string());
            part.publish = Some(Pc {
                pc,
                sock,
                local,
                deadline: Some(start),
                dirty: true,
                connected: false,
                created: start,
                setup: None,
                flight: LastFlight::default(),
                flight_to: None,
                ice_up: false,
                early: Vec::new(),
            });
            part.publisher = Some(Publisher {
                video,
                audio,
                video_ssrc: vs,
                audio_ssrc: aus,
                rtp_seq: [0; 2],
                probe_seq: [0; 2],
                frame: 0,
                next_frame: start,
                next_audio: start,
                last_key: None,
                want_key: true,
                spoofed: 0,
            });
        }
        parts.push(part);
    }
    let frame_interval = Duration::from_secs_f64(1.0 / load.fps.max(0.001));
    let audio_interval = Duration::from_secs_f64(1.0 / load.audio_pps.max(0.001));
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 2048];
    let mut dropper = Dropper::new(
        load.drop_ppm,
        start.elapsed().as_nanos() as u64 ^ u64::from(parts.first().map_or(0, |p| p.seat.index)),
    );
    while !shared.stop.load(Ordering::Relaxed) {
        // Sleep until the next PC deadline or send, at most 10 ms (to see `stop`).
        let now = Instant::now();
        let mut wake = now + Duration::from_millis(10);
        for p in &parts {
            for pc in [p.publish.as_ref(), p.subscribe.as_ref()]
                .into_iter()
                .flatten()
            {
                if let Some(d) = pc.deadline {
                    wake = wake.min(d);
                }
            }
            if let (Some(pb), Some(pc)) = (&p.publisher, &p.publish) {
                if pc.connected {
                    wake = wake.min(pb.next_frame).min(pb.next_audio);
                }
            }
        }
        poll.poll(&mut events, Some(wake.saturating_duration_since(now)))?;
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let (slot, leg) = (ev.token().0 / 2, ev.token().0 % 2);
            let Some(part) = parts.get_mut(slot) else {
                continue;
            };
            loop {
                let pc = if leg == 0 {
                    part.publish.as_mut()
                } else {
                    part.subscribe.as_mut()
                };
                let Some(pc) = pc else { break };
                let Ok((n, src)) = pc.sock.recv_from(&mut buf) else {
                    break;
                };
                if dropper.drop_next() {
                    report.dropped += 1;
                    continue;
                }
                if pc.flight.on_received(Instant::now(), &buf[..n]) {
                    report.flights_resent += 1;
                    for d in pc.flight.flight() {
                        let _ = pc.sock.send_to(d, src);
                    }
                }
                if !pc.ice_up && sfu_proto::dtls_flight::is_dtls(&buf[..n]) {
                    if pc.early.len() < EARLY_DTLS {
                        pc.early.push((src, BytesMut::from(&buf[..n])));
                    }
                    continue;
                }
                let _ = pc.pc.handle_read(TaggedBytesMut {
                    now: Instant::now(),
                    transport: TransportContext {
                        local_addr: pc.local,
                        peer_addr: src,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(&buf[..n]),
                });
                pc.dirty = true;
                // Read media right away so latency is taken at arrival.
                drain_reads(part, leg, &shared, &mut report);
            }
        }
        let now = Instant::now();
        while let Ok((slot, msg)) = inbox.try_recv() {
            if let Some(part) = parts.get_mut(slot) {
                if let Err(e) = on_signal(&poll, slot, part, &msg, now, ip, load.srtp_aes_cm) {
                    report.errors.push(format!("p{}: {e}", part.seat.index));
                }
            }
        }
        for part in parts.iter_mut() {
            send_media(
                part,
                &load,
                frame_interval,
                audio_interval,
                &shared,
                &mut report,
                &mut dropper,
            );
        }
        let now = Instant::now();
        for part in parts.iter_mut() {
            for leg in 0..2 {
                let pc = if leg == 0 {
                    part.publish.as_mut()
                } else {
                    part.subscribe.as_mut()
                };
                let Some(pc) = pc else { continue };
                if pc.deadline.is_some_and(|d| d <= now) {
                    // Our DTLS flight timer (rtc's may have been disarmed: see
                    // sfu_proto::dtls_flight).
                    if pc.flight.handle_timeout(now) {
                        report.flights_resent += 1;
                        if let Some(to) = pc.flight_to {
                            for d in pc.flight.flight() {
                                if dropper.drop_next() {
                                    report.dropped += 1;
                                    continue;
                                }
                                let _ = pc.sock.send_to(d, to);
                            }
                        }
                    }
                    if pc.pc.poll_timeout().is_some_and(|d| d <= now) {
                        let _ = pc.pc.handle_timeout(now);
                    }
                    pc.dirty = true;
                }
                if !pc.dirty {
                    continue;
                }
                pc.dirty = false;
                let mut ice_connected = false;
                while let Some(e) = pc.pc.poll_event() {
                    ice_connected |= matches!(
                        e,
                        RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                            RTCIceConnectionState::Connected
                        )
                    );
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) = e {
                        let up = s == RTCPeerConnectionState::Connected;
                        if up && !pc.connected {
                            shared.connected.fetch_add(1, Ordering::Relaxed);
                            if pc.setup.is_none() {
                                pc.setup = Some(now.saturating_duration_since(pc.created));
                            }
                            pc.flight.finish(now);
                        } else if !up && pc.connected {
                            shared.connected.fetch_sub(1, Ordering::Relaxed);
                        }
                        pc.connected = up;
                    }
                }
                if ice_connected {
                    pc.ice_up = true;
                    // The DTLS client's ClientHello waits in rtc until a timeout drains it
                    // (`sfu_proto::worker` has the details): send it now.
                    let _ = pc.pc.handle_timeout(now);
                    let local = pc.local;
                    for (src, message) in std::mem::take(&mut pc.early) {
                        let _ = pc.pc.handle_read(TaggedBytesMut {
                            now,
                            transport: TransportContext {
                                local_addr: local,
                                peer_addr: src,
                                ecn: None,
                                transport_protocol: TransportProtocol::UDP,
                            },
                            message,
                        });
                    }
                    // What they caused is drained on the next round.
                    pc.dirty = true;
                }
                drain_reads(part, leg, &shared, &mut report);
                let pc = if leg == 0 {
                    part.publish.as_mut()
                } else {
                    part.subscribe.as_mut()
                };
                let Some(pc) = pc else { continue };
                while let Some(d) = pc.pc.poll_write() {
                    pc.flight.on_sent(now, &d.message);
                    if sfu_proto::dtls_flight::is_dtls(&d.message) {
                        pc.flight_to = Some(d.transport.peer_addr);
                    }
                    if dropper.drop_next() {
                        report.dropped += 1;
                        continue;
                    }
                    if pc.sock.send_to(&d.message, d.transport.peer_addr).is_err() {
                        report.send_errors += 1;
                    }
                }
                pc.deadline = match (pc.pc.poll_timeout(), pc.flight.poll_timeout()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
        }
    }
    let end_us = shared.now_us();
    for part in &parts {
        for pc in [part.publish.as_ref(), part.subscribe.as_ref()]
            .into_iter()
            .flatten()
        {
            report.pc_setup.push(pc.setup);
        }
        report.flows += part.streams.len();
        // A flow that stopped for good counts up to the end.
        for last in part.last_fresh.values() {
            report.max_gap_us = report.max_gap_us.max(end_us.saturating_sub(*last));
        }
    }
    Ok(report)
}

/// Received media and RTCP of one PC: probes at subscribers, keyframe requests at publishers.
fn drain_reads(part: &mut Part, leg: usize, shared: &Shared, report: &mut ThreadReport) {
    let pc = if leg == 0 {
        part.publish.as_mut()
    } else {
        part.subscribe.as_mut()
    };
    let Some(pc) = pc else { return };
    while let Some(TaggedRTCMessage { message, .. }) = pc.pc.poll_read() {
        match message {
            RTCMessage::RtpPacket(_, p) => {
                let Some(probe) = probe::decode(&p.payload) else {
                    continue;
                };
                let now_us = shared.now_us();
                let set = part
                    .streams
                    .entry((probe.publisher, probe.kind))
                    .or_insert_with(|| {
                        shared.flows.fetch_add(1, Ordering::Relaxed);
                        SeqSet::default()
                    });
                let fresh = set.insert(probe.seq);
                if fresh {
                    let last = part
                        .last_fresh
                        .insert((probe.publisher, probe.kind), now_us);
                    if let Some(last) = last {
                        report.max_gap_us = report.max_gap_us.max(now_us.saturating_sub(last));
                    }
                }
                if shared.in_window(probe.sent_us) {
                    if fresh {
                        report.received += 1;
                        report.latency.record(now_us.saturating_sub(probe.sent_us));
                    } else {
                        report.duplicates += 1;
                    }
                }
            }
            RTCMessage::RtcpPacket(_, pkts) => {
                use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
                use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
                for k in pkts {
                    let any = k.as_any();
                    if any.downcast_ref::<PictureLossIndication>().is_some()
                        || any.downcast_ref::<FullIntraRequest>().is_some()
                    {
                        report.keyframe_requests += 1;
                        if let Some(pb) = part.publisher.as_mut() {
                            pb.want_key = true;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// The SDP of `desc` (just set as the local description) as it goes to the server: with the
/// PC's host candidate in it when `with_candidates`.
fn sdp_to_send(
    pc: &RTCPeerConnection,
    desc: RTCSessionDescription,
    with_candidates: bool,
) -> String {
    if with_candidates {
        if let Some(d) = pc.local_description() {
            return d.sdp;
        }
    }
    desc.sdp
}

fn on_signal(
    poll: &Poll,
    slot: usize,
    part: &mut Part,
    msg: &Value,
    now: Instant,
    ip: IpAddr,
    srtp_aes_cm: bool,
) -> anyhow::Result<()> {
    let sdp = msg["sdp"].as_str().unwrap_or_default().to_string();
    match msg["type"].as_str() {
        Some("answer") => {
            let pc = part
                .publish
                .as_mut()
                .ok_or_else(|| anyhow::anyhow!("answer without a publish PC"))?;
            pc.pc
                .set_remote_description(now, RTCSessionDescription::answer(sdp)?)?;
            pc.dirty = true;
        }
        Some("offer") => {
            if part.subscribe.is_none() {
                let (sock, local) = bind(poll, Token(slot * 2 + 1), ip)?;
                part.subscribe = Some(Pc {
                    pc: new_pc(now, srtp_aes_cm)?,
                    sock,
                    local,
                    deadline: Some(now),
                    dirty: true,
                    connected: false,
                    created: now,
                    setup: None,
                    flight: LastFlight::default(),
                    flight_to: None,
                    ice_up: false,
                    early: Vec::new(),
                });
            }
            let Some(pc) = part.subscribe.as_mut() else {
                return Ok(());
            };
            let first = pc.pc.remote_description().is_none();
            pc.pc
                .set_remote_description(now, RTCSessionDescription::offer(sdp)?)?;
            if first {
                add_host(&mut pc.pc, pc.local)?;
            }
            let answer = pc.pc.create_answer(None)?;
            pc.pc.set_local_description(now, answer.clone())?;
            pc.dirty = true;
            let sdp = sdp_to_send(&pc.pc, answer, part.seat.candidates_in_sdp);
            let _ = part
                .seat
                .outbox
                .send(json!({"type": "answer", "sdp": sdp}).to_string());
        }
        Some("error") => anyhow::bail!("server error: {msg}"),
        _ => {}
    }
    Ok(())
}

fn send_media(
    part: &mut Part,
    load: &Load,
    frame_interval: Duration,
    audio_interval: Duration,
    shared: &Shared,
    report: &mut ThreadReport,
    dropper: &mut Dropper,
) {
    let (Some(pb), Some(pc)) = (part.publisher.as_mut(), part.publish.as_mut()) else {
        return;
    };
    if !pc.connected {
        return;
    }
    let index = part.seat.index;
    let now = Instant::now();
    // Fell more than a second behind: skip ahead rather than burst.
    if now.saturating_duration_since(pb.next_frame) > Duration::from_secs(1) {
        report.lagged += 1;
        pb.next_frame = now;
    }
    if now.saturating_duration_since(pb.next_audio) > Duration::from_secs(1) {
        report.lagged += 1;
        pb.next_audio = now;
    }
    while pb.next_frame <= now {
        pb.next_frame += frame_interval;
        // After the first frame: the SFU has had a real packet to verify the key with.
        if let Some(to) = pc
            .flight_to
            .filter(|_| pb.frame > 0 && pb.spoofed < load.spoof_ssrcs)
        {
            for _ in 0..SPOOF_PER_FRAME.min(load.spoof_ssrcs - pb.spoofed) {
                pb.spoofed += 1;
                let ssrc = 0x5000_0000 + index.wrapping_mul(1 << 20) + pb.spoofed;
                let mut d = vec![0x80, 96];
                d.extend_from_slice(&(pb.spoofed as u16).to_be_bytes());
                d.extend_from_slice(&pb.spoofed.to_be_bytes());
                d.extend_from_slice(&ssrc.to_be_bytes());
                d.extend_from_slice(&[0xab; 120]);
                if pc.sock.send_to(&d, to).is_err() {
                    report.send_errors += 1;
                }
            }
        }
        let key = pb.want_key
            || pb
                .last_key
                .is_none_or(|t| now.saturating_duration_since(t) >= load.keyframe_interval);
        if key {
            pb.want_key = false;
            pb.last_key = Some(now);
        }
        pb.frame += 1;
        let picture_id = (pb.frame & 0x7fff) as u16;
        let timestamp = (pb.frame as f64 * 90_000.0 / load.fps) as u32;
        for i in 0..load.packets_per_frame {
            let part_kind = match (i, key) {
                (0, true) => Vp8Part::KeyStart,
                (0, false) => Vp8Part::InterStart,
                _ => Vp8Part::Continuation,
            };
            let sent_us = shared.now_us();
            let probe = Probe {
                publisher: index,
                kind: Kind::Video,
                seq: pb.probe_seq[0],
                sent_us,
            };
            pb.probe_seq[0] += 1;
            pb.rtp_seq[0] = pb.rtp_seq[0].wrapping_add(1);
            let pkt = rtc::rtp::Packet {
                header: rtc::rtp::header::Header {
                    version: 2,
                    payload_type: VP8_PT,
                    sequence_number: pb.rtp_seq[0],
                    timestamp,
                    ssrc: pb.video_ssrc,
                    marker: i + 1 == load.packets_per_frame,
                    ..Default::default()
                },
                payload: probe::vp8_payload(part_kind, picture_id, &probe, load.video_bytes).into(),
            };
            write(
                pc, pb.video, now, pkt, shared, sent_us, index, 0, report, dropper,
            );
        }
    }
    while pb.next_audio <= now {
        pb.next_audio += audio_interval;
        let sent_us = shared.now_us();
        let probe = Probe {
            publisher: index,
            kind: Kind::Audio,
            seq: pb.probe_seq[1],
            sent_us,
        };
        pb.probe_seq[1] += 1;
        pb.rtp_seq[1] = pb.rtp_seq[1].wrapping_add(1);
        let pkt = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: OPUS_PT,
                sequence_number: pb.rtp_seq[1],
                timestamp: u32::from(pb.rtp_seq[1]).wrapping_mul(960),
                ssrc: pb.audio_ssrc,
                ..Default::default()
            },
            payload: probe::audio_payload(&probe, load.audio_bytes).into(),
        };
        write(
            pc, pb.audio, now, pkt, shared, sent_us, index, 1, report, dropper,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn write(
    pc: &mut Pc,
    sender: RTCRtpSenderId,
    now: Instant,
    pkt: rtc::rtp::Packet,
    shared: &Shared,
    sent_us: u64,
    index: u32,
    kind: usize,
    report: &mut ThreadReport,
    dropper: &mut Dropper,
) {
    let Some(mut s) = pc.pc.rtp_sender(sender) else {
        report.write_errors += 1;
        return;
    };
    if s.write_rtp(now, pkt).is_err() {
        report.write_errors += 1;
        return;
    }
    pc.dirty = true;
    if shared.in_window(sent_us) {
        report.sent.entry(index).or_default()[kind] += 1;
    }
    // Put it on the wire now, so the latency does not include the rest of this loop.
    while let Some(d) = pc.pc.poll_write() {
        if dropper.drop_next() {
            report.dropped += 1;
            continue;
        }
        if pc.sock.send_to(&d.message, d.transport.peer_addr).is_err() {
            report.send_errors += 1;
        }
    }
}
