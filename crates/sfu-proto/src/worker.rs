//! One worker's SFU state machine: rooms, participants, their two peer connections each, and
//! the forwarding between them. Sans-IO: datagrams, link messages and timeouts go in with `now`;
//! datagrams to send, messages for participants and the next deadline come out.
//!
//! A room lives on exactly one worker, so forwarding never crosses threads.

use super::demux::{Demux, Proto};
use super::forward::Rewriter;
use super::media::{self, VideoCodec};
use super::msg::{self, ClientMsg, ErrorCode};
use super::peer::{self, BweCell, FeedbackCounters, Leg, PcSettings, AUDIO_LEVEL_URI};
use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::data_channel::RTCDataChannelId;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::json;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnkey_rate::TokenBucket;

/// Index of a participant in the worker's table.
pub type Handle = usize;

/// Names one peer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PcKey {
    /// Owner.
    pub participant: Handle,
    /// Which of its two PCs.
    pub leg: Leg,
}

/// A datagram (or, for ICE-TCP, one RFC 4571 frame's payload) to send.
#[derive(Debug)]
pub struct Transmit {
    /// UDP or TCP.
    pub proto: Proto,
    /// Destination.
    pub remote: SocketAddr,
    /// Bytes.
    pub payload: BytesMut,
}

/// A message for one participant (to be wrapped by signaling as `{"type":"sfu","msg":...}`).
#[derive(Debug)]
pub struct Signal {
    /// Room.
    pub room: String,
    /// Participant id.
    pub participant: String,
    /// The JSON object (sfu/PROTOCOL.md "SFU -> client").
    pub msg: serde_json::Value,
}

/// Limits and addresses of a worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Advertised UDP host candidate; also the `local_addr` every PC sees.
    pub udp_addr: SocketAddr,
    /// Advertised ICE-TCP passive candidate, if any.
    pub tcp_addr: Option<SocketAddr>,
    /// PC settings.
    pub pc: PcSettings,
    /// Participants per room.
    pub max_participants: usize,
    /// Published tracks per room.
    pub max_tracks_per_room: usize,
    /// Published tracks per participant.
    pub max_tracks_per_participant: usize,
    /// Video bitrate a publisher may send, bits per second (sent as `b=TIAS`/`b=AS` in answers).
    pub max_publish_bitrate_bps: u64,
    /// Least time between two keyframe requests to one publisher layer.
    pub keyframe_request_interval: Duration,
    /// Start of every local ICE ufrag of this worker (names the worker to the ICE-TCP acceptor).
    pub ufrag_prefix: String,
    /// Largest data-channel message relayed, bytes; larger ones are dropped.
    pub data_message_max_bytes: usize,
    /// Data-channel messages one participant may send per second (token bucket).
    pub data_messages_per_sec: u32,
    /// Burst of that bucket, messages.
    pub data_message_burst: u32,
    /// Seed of the RNG every SSRC and ICE credential of this worker is drawn from: the same
    /// seed and the same input replay a run exactly. `None`: the I/O layer draws a seed from
    /// the OS RNG before building the core (a core built with `None` seeds itself from the OS
    /// RNG, so its ICE passwords are never predictable).
    pub rng_seed: Option<u64>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            udp_addr: "127.0.0.1:9000".parse().expect("literal"),
            tcp_addr: None,
            pc: PcSettings::default(),
            max_participants: 16,
            max_tracks_per_room: 64,
            max_tracks_per_participant: 4,
            max_publish_bitrate_bps: 2_500_000,
            keyframe_request_interval: Duration::from_millis(500),
            ufrag_prefix: "w0x".into(),
            data_message_max_bytes: 16 * 1024,
            data_messages_per_sec: 50,
            data_message_burst: 100,
            rng_seed: None,
        }
    }
}

/// Counters of one worker (the I/O layer turns them into Prometheus metrics).
#[derive(Debug, Default, Clone)]
pub struct WorkerStats {
    /// RTP packets written to subscribers.
    pub forwarded_packets: u64,
    /// Their payload + header bytes.
    pub forwarded_bytes: u64,
    /// Keyframe requests (PLI) sent to publishers.
    pub pli_sent: u64,
    /// Simulcast layer switches done.
    pub layer_switches: u64,
    /// Datagrams for no known PC.
    pub unroutable: u64,
    /// Datagrams a PC refused (bad DTLS/SRTP/RTP/RTCP).
    pub bad_packets: u64,
    /// SDP that could not be applied.
    pub bad_sdp: u64,
    /// Link messages refused (bad JSON, unknown type, wrong state).
    pub bad_messages: u64,
    /// Packets a subscriber leg refused (codec/extension mismatch).
    pub write_errors: u64,
    /// Data-channel messages relayed (per receiver).
    pub data_messages: u64,
    /// Data-channel messages dropped: over `data_message_max_bytes`.
    pub data_dropped_too_large: u64,
    /// Data-channel messages dropped: the sender's bucket was empty.
    pub data_dropped_rate_limited: u64,
    /// Participants whose ICE timed out.
    pub ice_timeouts: u64,
    /// Active speaker changes announced.
    pub speaker_changes: u64,
}

struct Pc {
    pc: RTCPeerConnection,
    connected: bool,
    failed: bool,
}

/// One simulcast layer (or the only layer) of a published track.
#[derive(Debug)]
struct Layer {
    rid: String,
    ssrc: u32,
    /// Bytes since the last rate sample.
    bytes: u64,
    /// Smoothed bitrate, bits per second.
    bps: f64,
    /// The last smoothed bitrate seen while the layer was flowing (a paused layer measures 0).
    active_bps: f64,
    height: Option<u16>,
    last_packet: Option<Instant>,
    last_keyframe_request: Option<Instant>,
}

struct Published {
    id: String,
    owner: Handle,
    kind: RtpCodecKind,
    rtc_track_id: String,
    receiver: RTCRtpReceiverId,
    codec: RTCRtpCodec,
    video: VideoCodec,
    layers: Vec<Layer>,
    audio_level_ext: Option<u8>,
    /// Layers announced active to the publisher (None: never announced).
    announced: Option<Vec<String>>,
}

struct Downtrack {
    track: String,
    transceiver: RTCRtpTransceiverId,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_type: Option<u8>,
    rewriter: Rewriter,
    /// Index into the published track's layers being forwarded.
    current: Option<usize>,
    /// Layer wanted; switched to at its next keyframe.
    target: Option<usize>,
    max_height: Option<u32>,
    /// When the last upward move was tried (probing without padding).
    last_up: Option<Instant>,
    /// The probe in progress on this downtrack, if any.
    probe: Option<Probe>,
}

/// An upward layer step above the estimate: held against the estimate until the layer has
/// been forwarded for [`PROBE_HOLD`] (the estimate learns the new rate only from what is sent),
/// unless loss or a delay backoff ends it first.
#[derive(Clone, Copy, Debug)]
struct Probe {
    /// Layer index probed.
    layer: usize,
    started: Instant,
    /// When forwarding switched to `layer` (at its keyframe).
    reached: Option<Instant>,
}

impl Probe {
    /// Whether the probe still holds the layer at `now` (the path is clean).
    fn holds(&self, now: Instant) -> bool {
        match self.reached {
            Some(at) => now.saturating_duration_since(at) < PROBE_HOLD,
            None => now.saturating_duration_since(self.started) < PROBE_SWITCH_WAIT,
        }
    }
}

struct Participant {
    room: String,
    id: String,
    link: u64,
    publish: Option<Pc>,
    subscribe: Option<Pc>,
    published: Vec<String>,
    downtracks: Vec<Downtrack>,
    offer_outstanding: bool,
    needs_offer: bool,
    data_channel: Option<RTCDataChannelId>,
    bwe: Arc<BweCell>,
    max_height: Option<u32>,
    audio_level: f64,
    audio_level_at: Option<Instant>,
    /// Loss-based side of the estimate (RTCP receiver reports, RFC 3550 §6.4.2).
    loss: LossEstimate,
    /// Data-channel messages this participant may still send.
    data_bucket: TokenBucket,
}

/// A loss-based bandwidth estimate from the subscriber's receiver reports, and the pacing of
/// upward layer probes (GCC in the stack supplies the delay-based side; the lower wins).
#[derive(Debug)]
struct LossEstimate {
    /// Smoothed fraction lost over the subscriber's downtracks, 0..1.
    loss: f64,
    /// Highest loss reported since the last tick.
    fresh: Option<f64>,
    /// Bytes forwarded to the subscriber since the last tick.
    bytes: u64,
    /// The estimate, bits per second.
    bps: f64,
    /// Probe interval: doubles after a probe that caused loss, back to the minimum after one
    /// that held.
    probe_interval: Duration,
    /// Last time loss went above the high threshold.
    last_loss: Option<Instant>,
    /// When the current probe (an upward layer step above the estimate) started.
    probe_at: Option<Instant>,
    /// The rate the path delivered with no loss and no delay backoff since the last congestion
    /// signal, bits per second (0 after loss or a GCC backoff). GCC's delay-based target climbs
    /// 8 %/s from its start, so on its own it takes ~17 s to allow a 720p layer; a probe that
    /// held proves the rate at once.
    proven_bps: f64,
    /// GCC's target at the last tick, to see it back off.
    last_gcc_bps: f64,
    /// Loss above the high threshold or a GCC backoff at the last tick.
    congested: bool,
}

impl LossEstimate {
    fn new(initial_bps: f64) -> Self {
        Self {
            loss: 0.0,
            fresh: None,
            bytes: 0,
            bps: initial_bps,
            probe_interval: UP_HOLD,
            last_loss: None,
            probe_at: None,
            proven_bps: 0.0,
            last_gcc_bps: 0.0,
            congested: false,
        }
    }
}

/// Receiver-reported loss above which the estimate backs off, and below which it grows (the
/// thresholds of GCC's loss-based rule).
const HIGH_LOSS: f64 = 0.10;
const LOW_LOSS: f64 = 0.02;
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(32);

struct Room {
    participants: Vec<Handle>,
    speaker: Option<Handle>,
}

/// Why a join was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The room already has `max_participants`.
    #[error("room is full")]
    RoomFull,
}

/// The worker core.
pub struct Worker {
    cfg: WorkerConfig,
    parts: Vec<Option<Participant>>,
    by_id: HashMap<(String, String), Handle>,
    rooms: HashMap<String, Room>,
    tracks: HashMap<String, Published>,
    demux: Demux<PcKey>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<Signal>,
    dirty: Vec<PcKey>,
    stats: WorkerStats,
    counters: Arc<FeedbackCounters>,
    next_track: u64,
    next_tick: Option<Instant>,
    last_tick: Option<Instant>,
    bwe_samples: Vec<f64>,
    /// Source of every SSRC and ICE credential drawn ([`WorkerConfig::rng_seed`]).
    rng: StdRng,
}

/// Rate samples and layer decisions happen this often.
const TICK: Duration = Duration::from_millis(500);
/// Outbound queues are bounded: beyond this, the oldest datagram is dropped.
const MAX_TRANSMITS: usize = 65_536;
const MAX_SIGNALS: usize = 4096;
const MAX_BWE_SAMPLES: usize = 4096;
/// Hold an upward layer move at least this long after the last one (probing pace).
const UP_HOLD: Duration = Duration::from_secs(4);
/// A probed layer is kept this long once forwarded, whatever the estimate says (unless the
/// path shows loss or delay), so the estimate can measure it.
const PROBE_HOLD: Duration = Duration::from_secs(2);
/// The layer being forwarded stays while its rate is within this factor of the budget.
const STAY_MARGIN: f64 = 1.25;
/// Longest wait for the probed layer's keyframe before the probe counts as failed.
const PROBE_SWITCH_WAIT: Duration = Duration::from_secs(4);
/// RFC 6464 level (-dBov) below which a participant counts as speaking.
const SPEAKING_LEVEL: f64 = 70.0;

impl Worker {
    /// A worker with no rooms.
    pub fn new(cfg: WorkerConfig) -> Self {
        let rng = match cfg.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            rng,
            cfg,
            parts: Vec::new(),
            by_id: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            demux: Demux::default(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            dirty: Vec::new(),
            stats: WorkerStats::default(),
            counters: Arc::new(FeedbackCounters::default()),
            next_track: 0,
            next_tick: None,
            last_tick: None,
            bwe_samples: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// NACK/PLI/FIR received and retransmissions sent, over every PC of this worker.
    pub fn feedback(&self) -> &FeedbackCounters {
        &self.counters
    }

    /// Rooms, participants, published (audio, video) tracks held.
    pub fn census(&self) -> (usize, usize, usize, usize) {
        let audio = self
            .tracks
            .values()
            .filter(|t| t.kind == RtpCodecKind::Audio)
            .count();
        (
            self.rooms.len(),
            self.by_id.len(),
            audio,
            self.tracks.len() - audio,
        )
    }

    /// Subscriber bandwidth estimates sampled since the last call (bits per second).
    pub fn take_bwe_samples(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.bwe_samples)
    }

    /// Next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next message for a participant.
    #[must_use]
    pub fn poll_signal(&mut self) -> Option<Signal> {
        self.signals.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let mut next = self.next_tick;
        for p in self.parts.iter_mut().flatten() {
            for pc in [p.publish.as_mut(), p.subscribe.as_mut()]
                .into_iter()
                .flatten()
            {
                if let Some(t) = pc.pc.poll_timeout() {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
    }

    /// True if datagrams from `remote` over `proto` reach a peer connection (a Binding request
    /// with a known ufrag bound the 5-tuple, and that PC still exists).
    pub fn routes(&self, proto: Proto, remote: SocketAddr) -> bool {
        self.demux.lookup(proto, remote).is_some()
    }

    /// True if this worker holds participant `participant` of `room`.
    pub fn has_participant(&self, room: &str, participant: &str) -> bool {
        self.by_id
            .contains_key(&(room.to_string(), participant.to_string()))
    }

    /// A participant's link opened (`link` is a number the I/O layer chose, newest wins).
    /// Joining again with a new link (signaling resume on another node) keeps the session.
    pub fn join(
        &mut self,
        now: Instant,
        room: &str,
        participant: &str,
        link: u64,
    ) -> Result<(), JoinError> {
        self.next_tick.get_or_insert(now + TICK);
        let key = (room.to_string(), participant.to_string());
        if let Some(&h) = self.by_id.get(&key) {
            if let Some(p) = self.parts[h].as_mut() {
                p.link = link;
                // The client may have missed the last offer.
                if p.offer_outstanding {
                    p.offer_outstanding = false;
                    p.needs_offer = true;
                    self.maybe_offer(now, h);
                }
            }
            return Ok(());
        }
        let r = self.rooms.entry(room.to_string()).or_insert(Room {
            participants: Vec::new(),
            speaker: None,
        });
        if r.participants.len() >= self.cfg.max_participants {
            if r.participants.is_empty() {
                self.rooms.remove(room);
            }
            return Err(JoinError::RoomFull);
        }
        let h = match self.parts.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.parts.push(None);
                self.parts.len() - 1
            }
        };
        r.participants.push(h);
        self.parts[h] = Some(Participant {
            room: room.to_string(),
            id: participant.to_string(),
            link,
            publish: None,
            subscribe: None,
            published: Vec::new(),
            downtracks: Vec::new(),
            offer_outstanding: false,
            needs_offer: false,
            data_channel: None,
            bwe: Arc::new(BweCell::default()),
            max_height: None,
            audio_level: 127.0,
            audio_level_at: None,
            loss: LossEstimate::new(self.cfg.pc.bwe_initial_bps),
            data_bucket: TokenBucket::new(
                self.cfg.data_messages_per_sec,
                self.cfg.data_message_burst,
                now,
            ),
        });
        self.by_id.insert(key, h);
        // Subscribe to everything already published in the room.
        let existing: Vec<String> = self
            .tracks
            .values()
            .filter(|t| self.parts[t.owner].as_ref().is_some_and(|o| o.room == room))
            .map(|t| t.id.clone())
            .collect();
        for t in existing {
            self.add_downtrack(now, h, &t);
        }
        // A newcomer learns who is speaking now, not only at the next change.
        let speaker = self
            .rooms
            .get(room)
            .and_then(|r| r.speaker)
            .and_then(|s| self.parts[s].as_ref())
            .map(|s| (s.id.clone(), s.audio_level));
        if let Some((id, level)) = speaker {
            self.push_signal(
                h,
                json!({"type": "active-speaker", "participantId": id, "level": level.round() as u8}),
            );
        }
        self.maybe_offer(now, h);
        self.flush(now);
        Ok(())
    }

    /// A participant's link closed. Ignored unless it is the participant's current link.
    pub fn link_closed(&mut self, now: Instant, room: &str, participant: &str, link: u64) {
        let key = (room.to_string(), participant.to_string());
        let Some(&h) = self.by_id.get(&key) else {
            return;
        };
        if self.parts[h].as_ref().is_some_and(|p| p.link == link) {
            self.remove_participant(now, h);
            self.flush(now);
        }
    }

    /// A message from participant's client (sfu/PROTOCOL.md "Client -> SFU").
    pub fn handle_message(&mut self, now: Instant, room: &str, participant: &str, text: &str) {
        let key = (room.to_string(), participant.to_string());
        let Some(&h) = self.by_id.get(&key) else {
            return;
        };
        let m = match msg::parse(text) {
            Ok(m) => m,
            Err(e) => {
                self.stats.bad_messages += 1;
                self.error(h, ErrorCode::BadRequest, &e);
                return;
            }
        };
        match m {
            ClientMsg::Offer { sdp } => self.on_publish_offer(now, h, sdp),
            ClientMsg::Answer { sdp } => self.on_subscribe_answer(now, h, sdp),
            ClientMsg::Candidate { .. } => {}
            ClientMsg::Video {
                track_id,
                max_height,
            } => {
                let Some(p) = self.parts[h].as_mut() else {
                    return;
                };
                match track_id {
                    None => {
                        p.max_height = Some(max_height);
                        for d in &mut p.downtracks {
                            d.max_height = None;
                        }
                    }
                    Some(t) => {
                        for d in p.downtracks.iter_mut().filter(|d| d.track == t) {
                            d.max_height = Some(max_height);
                        }
                    }
                }
                self.select_layers(now);
            }
            ClientMsg::Resync => {
                if let Some(p) = self.parts[h].as_mut() {
                    if p.offer_outstanding || p.subscribe.is_some() {
                        p.offer_outstanding = false;
                        p.needs_offer = true;
                    }
                }
                self.maybe_offer(now, h);
            }
        }
        self.flush(now);
    }

    /// A datagram (or ICE-TCP frame) from `remote`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        proto: Proto,
        remote: SocketAddr,
        bytes: &[u8],
    ) {
        let Some(key) = self.demux.route(proto, remote, bytes) else {
            self.stats.unroutable += 1;
            return;
        };
        let local = match proto {
            Proto::Udp => self.cfg.udp_addr,
            Proto::Tcp => self.cfg.tcp_addr.unwrap_or(self.cfg.udp_addr),
        };
        let Some(pc) = self.pc_mut(key) else {
            self.stats.unroutable += 1;
            return;
        };
        let r = pc.pc.handle_read(TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: remote,
                ecn: None,
                transport_protocol: match proto {
                    Proto::Udp => TransportProtocol::UDP,
                    Proto::Tcp => TransportProtocol::TCP,
                },
            },
            message: BytesMut::from(bytes),
        });
        if r.is_err() {
            self.stats.bad_packets += 1;
        }
        self.dirty.push(key);
        self.flush(now);
    }

    /// Timers: PC timers, rate sampling, layer selection, active speaker.
    pub fn handle_timeout(&mut self, now: Instant) {
        for h in 0..self.parts.len() {
            for leg in [Leg::Publish, Leg::Subscribe] {
                let key = PcKey {
                    participant: h,
                    leg,
                };
                if let Some(pc) = self.pc_mut(key) {
                    if pc.pc.poll_timeout().is_some_and(|t| t <= now) {
                        let _ = pc.pc.handle_timeout(now);
                        self.dirty.push(key);
                    }
                }
            }
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
            self.next_tick = if self.by_id.is_empty() {
                None
            } else {
                Some(now + TICK)
            };
        }
        self.flush(now);
    }

    fn pc_mut(&mut self, key: PcKey) -> Option<&mut Pc> {
        let p = self.parts.get_mut(key.participant)?.as_mut()?;
        match key.leg {
            Leg::Publish => p.publish.as_mut(),
            Leg::Subscribe => p.subscribe.as_mut(),
        }
    }

    fn push_signal(&mut self, h: Handle, msg: serde_json::Value) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        if self.signals.len() >= MAX_SIGNALS {
            self.signals.pop_front();
        }
        self.signals.push_back(Signal {
            room: p.room.clone(),
            participant: p.id.clone(),
            msg,
        });
    }

    fn error(&mut self, h: Handle, code: ErrorCode, message: &str) {
        self.push_signal(
            h,
            json!({"type": "error", "code": code as u16, "message": message}),
        );
    }

    /// A local ICE ufrag (this worker's prefix + 12 characters) and password (32 characters,
    /// RFC 8839 §5.4 asks for at least 128 bits) from the worker's RNG.
    fn draw_ice_credentials(&mut self) -> (String, String) {
        let ufrag = format!(
            "{}{}",
            self.cfg.ufrag_prefix,
            random_token(&mut self.rng, 12)
        );
        let pwd = random_token(&mut self.rng, 32);
        (ufrag, pwd)
    }

    fn new_pc(&mut self, now: Instant, h: Handle, leg: Leg) -> Result<(), String> {
        let (ufrag, pwd) = self.draw_ice_credentials();
        let bwe = self.parts[h]
            .as_ref()
            .map(|p| p.bwe.clone())
            .unwrap_or_default();
        let mut pc = peer::build_pc(
            leg,
            &ufrag,
            &pwd,
            &self.cfg.pc,
            self.counters.clone(),
            bwe,
            now,
        )
        .map_err(|e| e.to_string())?;
        for (addr, tcp) in [(Some(self.cfg.udp_addr), false), (self.cfg.tcp_addr, true)] {
            let Some(addr) = addr else { continue };
            let c = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: if tcp { "tcp" } else { "udp" }.into(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type: if tcp {
                    rtc::ice::tcp_type::TcpType::Passive
                } else {
                    rtc::ice::tcp_type::TcpType::Unspecified
                },
            }
            .new_candidate_host()
            .map_err(|e| e.to_string())?;
            let init = RTCIceCandidate::from(&c)
                .to_json()
                .map_err(|e| e.to_string())?;
            pc.add_local_candidate(init).map_err(|e| e.to_string())?;
        }
        let key = PcKey {
            participant: h,
            leg,
        };
        self.demux.add_ufrag(&ufrag, key);
        let slot = Pc {
            pc,
            connected: false,
            failed: false,
        };
        if let Some(p) = self.parts[h].as_mut() {
            match leg {
                Leg::Publish => p.publish = Some(slot),
                Leg::Subscribe => p.subscribe = Some(slot),
            }
        }
        Ok(())
    }

    fn on_publish_offer(&mut self, now: Instant, h: Handle, sdp: String) {
        if self.parts[h].as_ref().is_some_and(|p| p.publish.is_none()) {
            if let Err(e) = self.new_pc(now, h, Leg::Publish) {
                self.error(h, ErrorCode::Internal, &e);
                return;
            }
        }
        let key = PcKey {
            participant: h,
            leg: Leg::Publish,
        };
        let max_bps = self.cfg.max_publish_bitrate_bps;
        let Some(pc) = self.pc_mut(key) else { return };
        let result = (|| -> Result<String, String> {
            let offer = RTCSessionDescription::offer(sdp).map_err(|e| e.to_string())?;
            pc.pc
                .set_remote_description(now, offer)
                .map_err(|e| e.to_string())?;
            let answer = pc.pc.create_answer(None).map_err(|e| e.to_string())?;
            let text = answer.sdp.clone();
            pc.pc
                .set_local_description(now, answer)
                .map_err(|e| e.to_string())?;
            Ok(text)
        })();
        match result {
            Ok(answer) => {
                let answer = limit_video_bitrate(&answer, max_bps);
                self.push_signal(h, json!({"type": "answer", "sdp": answer}));
            }
            Err(e) => {
                self.stats.bad_sdp += 1;
                self.error(h, ErrorCode::BadSdp, &e);
            }
        }
        self.dirty.push(key);
    }

    fn on_subscribe_answer(&mut self, now: Instant, h: Handle, sdp: String) {
        let outstanding = self.parts[h].as_ref().is_some_and(|p| p.offer_outstanding);
        if !outstanding {
            self.stats.bad_messages += 1;
            self.error(h, ErrorCode::WrongState, "no subscribe offer outstanding");
            return;
        }
        let key = PcKey {
            participant: h,
            leg: Leg::Subscribe,
        };
        let Some(pc) = self.pc_mut(key) else { return };
        let r = RTCSessionDescription::answer(sdp)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                pc.pc
                    .set_remote_description(now, a)
                    .map_err(|e| e.to_string())
            });
        if let Some(p) = self.parts[h].as_mut() {
            p.offer_outstanding = false;
            for d in &mut p.downtracks {
                d.payload_type = None;
            }
        }
        if let Err(e) = r {
            self.stats.bad_sdp += 1;
            self.error(h, ErrorCode::BadSdp, &e);
        }
        self.dirty.push(key);
        self.maybe_offer(now, h);
    }

    /// Sends a subscribe offer if one is needed and none is outstanding.
    fn maybe_offer(&mut self, now: Instant, h: Handle) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        if p.offer_outstanding || !p.needs_offer {
            return;
        }
        if p.subscribe.is_none() {
            if p.downtracks.is_empty() {
                return;
            }
            if let Err(e) = self.new_pc(now, h, Leg::Subscribe) {
                self.error(h, ErrorCode::Internal, &e);
                return;
            }
            // Attach the downtracks planned before the PC existed.
            let planned: Vec<String> = self.parts[h]
                .as_mut()
                .map(|p| p.downtracks.drain(..).map(|d| d.track).collect())
                .unwrap_or_default();
            for t in planned {
                self.add_downtrack(now, h, &t);
            }
        }
        let key = PcKey {
            participant: h,
            leg: Leg::Subscribe,
        };
        let owners: HashMap<String, (String, String)> = self
            .tracks
            .values()
            .filter_map(|t| {
                self.parts[t.owner]
                    .as_ref()
                    .map(|o| (t.id.clone(), (o.id.clone(), kind_name(t.kind))))
            })
            .collect();
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        let Some(pc) = p.subscribe.as_mut() else {
            return;
        };
        let r = pc.pc.create_offer(None).and_then(|o| {
            let text = o.sdp.clone();
            pc.pc.set_local_description(now, o).map(|()| text)
        });
        match r {
            Ok(sdp) => {
                let mut tracks = Vec::new();
                for d in &p.downtracks {
                    let mid = pc
                        .pc
                        .rtp_transceiver(d.transceiver)
                        .and_then(|t| t.mid().clone());
                    let (participant, kind) = owners.get(&d.track).cloned().unwrap_or_default();
                    tracks.push(json!({
                        "trackId": d.track, "participantId": participant,
                        "kind": kind, "mid": mid,
                    }));
                }
                p.offer_outstanding = true;
                p.needs_offer = false;
                self.push_signal(h, json!({"type": "offer", "sdp": sdp, "tracks": tracks}));
            }
            Err(e) => self.error(h, ErrorCode::Internal, &e.to_string()),
        }
        self.dirty.push(key);
    }

    /// Plans (and, once the subscribe PC exists, adds) a downtrack of `track` for `h`.
    fn add_downtrack(&mut self, _now: Instant, h: Handle, track: &str) {
        let Some(t) = self.tracks.get(track) else {
            return;
        };
        if t.owner == h {
            return;
        }
        let owner_id = self.parts[t.owner]
            .as_ref()
            .map(|o| o.id.clone())
            .unwrap_or_default();
        let codec = t.codec.clone();
        let kind = t.kind;
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        if p.downtracks.iter().any(|d| d.track == track) {
            return;
        }
        p.needs_offer = true;
        let Some(pc) = p.subscribe.as_mut() else {
            // Planned: attached when the subscribe PC is created.
            p.downtracks.push(Downtrack {
                track: track.to_string(),
                transceiver: RTCRtpTransceiverId::default(),
                sender: RTCRtpSenderId::default(),
                ssrc: 0,
                payload_type: None,
                rewriter: Rewriter::new(codec.clock_rate),
                current: None,
                target: None,
                max_height: None,
                last_up: None,
                probe: None,
            });
            return;
        };
        let ssrc = draw_ssrc(&mut self.rng);
        let local = MediaStreamTrack::new(
            owner_id.clone(),
            track.to_string(),
            track.to_string(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            }],
        );
        let added = pc.pc.add_transceiver_from_track(
            local,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![owner_id],
                send_encodings: vec![],
            }),
        );
        let Ok(tid) = added else {
            return;
        };
        let Some(sender) = pc.pc.rtp_transceiver(tid).and_then(|t| t.sender()) else {
            return;
        };
        p.downtracks.push(Downtrack {
            track: track.to_string(),
            transceiver: tid,
            sender,
            ssrc,
            payload_type: None,
            rewriter: Rewriter::new(codec.clock_rate),
            current: None,
            target: None,
            max_height: None,
            last_up: None,
            probe: None,
        });
    }

    fn remove_downtracks_of(&mut self, h: Handle, track: &str) {
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        let Some(i) = p.downtracks.iter().position(|d| d.track == track) else {
            return;
        };
        let d = p.downtracks.remove(i);
        if let Some(pc) = p.subscribe.as_mut() {
            let _ = pc.pc.remove_track(d.sender);
        }
        p.needs_offer = true;
    }

    fn remove_track(&mut self, now: Instant, id: &str) {
        let Some(t) = self.tracks.remove(id) else {
            return;
        };
        let room = self.parts[t.owner].as_ref().map(|p| p.room.clone());
        if let Some(p) = self.parts[t.owner].as_mut() {
            p.published.retain(|x| x != id);
        }
        let members = room
            .and_then(|r| self.rooms.get(&r))
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for m in members {
            self.remove_downtracks_of(m, id);
            self.maybe_offer(now, m);
            self.dirty.push(PcKey {
                participant: m,
                leg: Leg::Subscribe,
            });
        }
    }

    fn close_pc(&mut self, key: PcKey) {
        let Some(p) = self.parts[key.participant].as_mut() else {
            return;
        };
        let slot = match key.leg {
            Leg::Publish => p.publish.take(),
            Leg::Subscribe => p.subscribe.take(),
        };
        if let Some(mut pc) = slot {
            let _ = pc.pc.close();
            while pc.pc.poll_write().is_some() {}
        }
        self.demux.remove(key);
    }

    fn remove_participant(&mut self, now: Instant, h: Handle) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        let published = p.published.clone();
        let room = p.room.clone();
        let key = (p.room.clone(), p.id.clone());
        for t in published {
            self.remove_track(now, &t);
        }
        self.close_pc(PcKey {
            participant: h,
            leg: Leg::Publish,
        });
        self.close_pc(PcKey {
            participant: h,
            leg: Leg::Subscribe,
        });
        self.parts[h] = None;
        self.by_id.remove(&key);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.participants.retain(|&x| x != h);
            if r.speaker == Some(h) {
                r.speaker = None;
            }
            if r.participants.is_empty() {
                self.rooms.remove(&room);
            }
        }
        self.dirty.retain(|k| k.participant != h);
    }

    /// Drains every dirty PC: datagrams out, events, received media (forwarded, which dirties
    /// subscriber PCs in turn).
    fn flush(&mut self, now: Instant) {
        let mut rounds = 0;
        while let Some(key) = self.dirty.pop() {
            rounds += 1;
            if rounds > 100_000 {
                self.dirty.clear();
                break;
            }
            self.drain_pc(now, key);
        }
    }

    fn drain_pc(&mut self, now: Instant, key: PcKey) {
        let mut events = Vec::new();
        let mut reads = Vec::new();
        {
            let Some(pc) = self.pc_mut(key) else { return };
            while let Some(e) = pc.pc.poll_event() {
                events.push(e);
            }
            while let Some(m) = pc.pc.poll_read() {
                reads.push(m);
            }
        }
        for e in events {
            self.on_event(now, key, e);
        }
        for TaggedRTCMessage { message, .. } in reads {
            match (key.leg, message) {
                (Leg::Publish, RTCMessage::RtpPacket(track_id, pkt)) => {
                    self.forward(now, key.participant, &track_id, pkt);
                }
                (Leg::Publish, RTCMessage::DataChannelMessage(_, m)) => {
                    self.relay_data(now, key.participant, m.is_string, &m.data);
                }
                (Leg::Subscribe, RTCMessage::RtcpPacket(_, pkts)) => {
                    for p in pkts {
                        let any = p.as_any();
                        if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                            self.on_receiver_report(key.participant, &rr.reports);
                            continue;
                        }
                        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                            self.keyframe_for_downtrack(now, key.participant, pli.media_ssrc);
                        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                            for e in &fir.fir {
                                self.keyframe_for_downtrack(now, key.participant, e.ssrc);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let Some(pc) = self.pc_mut(key) else { return };
        let mut out = Vec::new();
        while let Some(d) = pc.pc.poll_write() {
            out.push(d);
        }
        for d in out {
            if self.transmits.len() >= MAX_TRANSMITS {
                self.transmits.pop_front();
            }
            self.transmits.push_back(Transmit {
                proto: if d.transport.transport_protocol == TransportProtocol::TCP {
                    Proto::Tcp
                } else {
                    Proto::Udp
                },
                remote: d.transport.peer_addr,
                payload: d.message,
            });
        }
    }

    fn on_event(&mut self, now: Instant, key: PcKey, e: RTCPeerConnectionEvent) {
        match e {
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if key.leg == Leg::Publish =>
            {
                self.on_track(
                    now,
                    key.participant,
                    init.receiver_id,
                    &init.track_id,
                    init.ssrc,
                    init.rid.as_deref(),
                );
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id))
                if key.leg == Leg::Publish =>
            {
                let Some(p) = self.parts[key.participant].as_mut() else {
                    return;
                };
                let is_room = p
                    .publish
                    .as_mut()
                    .and_then(|pc| pc.pc.data_channel(id).map(|dc| dc.label() == "room"))
                    .unwrap_or(false);
                if is_room {
                    p.data_channel = Some(id);
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Connected,
            ) => {
                if let Some(pc) = self.pc_mut(key) {
                    pc.connected = true;
                }
                if key.leg == Leg::Subscribe {
                    // A new subscriber starts with a keyframe of everything it receives.
                    let wanted: Vec<(String, usize)> = self.parts[key.participant]
                        .as_ref()
                        .map(|p| {
                            p.downtracks
                                .iter()
                                .map(|d| (d.track.clone(), d.target.unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    for (t, l) in wanted {
                        self.request_keyframe(now, &t, l);
                    }
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                RTCPeerConnectionState::Failed,
            ) => {
                let already = self
                    .pc_mut(key)
                    .map(|pc| std::mem::replace(&mut pc.failed, true));
                if already == Some(false) {
                    self.stats.ice_timeouts += 1;
                    self.media_lost(now, key);
                }
            }
            _ => {}
        }
    }

    /// A PC's ICE/DTLS failed (the client vanished): its media is removed; the others get a new
    /// subscribe offer without it.
    fn media_lost(&mut self, now: Instant, key: PcKey) {
        let h = key.participant;
        match key.leg {
            Leg::Publish => {
                let published = self.parts[h]
                    .as_ref()
                    .map(|p| p.published.clone())
                    .unwrap_or_default();
                for t in published {
                    self.remove_track(now, &t);
                }
                if let Some(p) = self.parts[h].as_mut() {
                    p.data_channel = None;
                }
            }
            Leg::Subscribe => {
                if let Some(p) = self.parts[h].as_mut() {
                    let tracks: Vec<String> = p.downtracks.drain(..).map(|d| d.track).collect();
                    p.offer_outstanding = false;
                    // A new subscribe PC is offered with the same tracks.
                    for t in tracks {
                        p.downtracks.push(Downtrack {
                            track: t,
                            transceiver: RTCRtpTransceiverId::default(),
                            sender: RTCRtpSenderId::default(),
                            ssrc: 0,
                            payload_type: None,
                            rewriter: Rewriter::new(90_000),
                            current: None,
                            target: None,
                            max_height: None,
                            last_up: None,
                            probe: None,
                        });
                    }
                    p.needs_offer = false;
                }
            }
        }
        self.close_pc(key);
        self.error(
            h,
            ErrorCode::IceTimeout,
            "ICE consent expired; media was removed",
        );
    }

    fn on_track(
        &mut self,
        now: Instant,
        h: Handle,
        receiver: RTCRtpReceiverId,
        rtc_track_id: &str,
        ssrc: u32,
        rid: Option<&str>,
    ) {
        let rid = rid.unwrap_or("").to_string();
        // Existing track: a new simulcast layer.
        if let Some(t) = self
            .tracks
            .values_mut()
            .find(|t| t.owner == h && t.rtc_track_id == rtc_track_id)
        {
            if let Some(l) = t.layers.iter_mut().find(|l| l.rid == rid) {
                l.ssrc = ssrc;
            } else if t.layers.len() < MAX_LAYERS {
                t.layers.push(new_layer(&rid, ssrc));
                t.layers.sort_by_key(|l| rid_rank(&l.rid));
            }
            return;
        }
        let Some(room) = self.parts[h].as_ref().map(|p| p.room.clone()) else {
            return;
        };
        let room_tracks = self
            .tracks
            .values()
            .filter(|t| self.parts[t.owner].as_ref().is_some_and(|o| o.room == room))
            .count();
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        let Some(pc) = p.publish.as_mut() else { return };
        let Some(mut r) = pc.pc.rtp_receiver(receiver) else {
            return;
        };
        let kind = r.track().kind();
        let codec = r.track().codec(ssrc).cloned().unwrap_or_default();
        let audio_level_ext = r
            .get_parameters()
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|e| e.uri == AUDIO_LEVEL_URI)
            .map(|e| e.id as u8);
        let own = p.published.len();
        if room_tracks >= self.cfg.max_tracks_per_room || own >= self.cfg.max_tracks_per_participant
        {
            self.error(h, ErrorCode::Limit, "too many tracks");
            return;
        }
        self.next_track += 1;
        let id = format!("{}-{}", p.id, self.next_track);
        p.published.push(id.clone());
        let video = VideoCodec::from_mime(&codec.mime_type);
        // Every layer the offer announces (`a=rid:X send`, RFC 8853), not only those flowing
        // already: an encoder starts its top layer seconds later, and a layer the SFU did not
        // know would be left out of the `layers` message, which pauses it for good.
        let mut layers = vec![new_layer(&rid, ssrc)];
        if !rid.is_empty() && kind == RtpCodecKind::Video {
            let offered = pc
                .pc
                .remote_description()
                .map(|d| offered_video_rids(&d.sdp))
                .unwrap_or_default();
            for r in offered {
                if r != rid && layers.len() < MAX_LAYERS {
                    layers.push(new_layer(&r, 0));
                }
            }
            layers.sort_by_key(|l| rid_rank(&l.rid));
        }
        self.tracks.insert(
            id.clone(),
            Published {
                id: id.clone(),
                owner: h,
                kind,
                rtc_track_id: rtc_track_id.to_string(),
                receiver,
                codec,
                video,
                layers,
                audio_level_ext,
                announced: None,
            },
        );
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        for m in members {
            if m != h {
                self.add_downtrack(now, m, &id);
                self.maybe_offer(now, m);
                self.dirty.push(PcKey {
                    participant: m,
                    leg: Leg::Subscribe,
                });
            }
        }
    }

    fn forward(&mut self, now: Instant, h: Handle, rtc_track_id: &str, mut pkt: rtc::rtp::Packet) {
        let Some(t) = self
            .tracks
            .values_mut()
            .find(|t| t.owner == h && t.rtc_track_id == rtc_track_id)
        else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let Some(li) = t.layers.iter().position(|l| l.ssrc == ssrc) else {
            return;
        };
        let size = pkt.payload.len() + 12;
        let layer = &mut t.layers[li];
        layer.bytes += size as u64;
        layer.last_packet = Some(now);
        let keyframe =
            t.kind == RtpCodecKind::Video && media::is_keyframe_start(t.video, &pkt.payload);
        if keyframe && t.video == VideoCodec::Vp8 {
            if let Some((_, height)) = media::vp8_keyframe_size(&pkt.payload) {
                layer.height = Some(height);
            }
        }
        // Audio level -> active speaker input.
        if let Some(ext) = t.audio_level_ext {
            if let Some(level) = pkt
                .header
                .extensions
                .iter()
                .find(|e| e.id == ext)
                .and_then(|e| media::audio_level(&e.payload))
            {
                if let Some(p) = self.parts[h].as_mut() {
                    p.audio_level = 0.9 * p.audio_level + 0.1 * f64::from(level);
                    p.audio_level_at = Some(now);
                }
            }
        }
        let track_id = t.id.clone();
        let video = t.video;
        let mime = t.codec.mime_type.clone();
        let fmtp = t.codec.sdp_fmtp_line.clone();
        let single_layer = t.layers.len() == 1;
        let Some(room) = self.parts[h].as_ref().map(|p| p.room.clone()) else {
            return;
        };
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        pkt.header.extensions.clear();
        pkt.header.extension = false;
        pkt.header.extension_profile = 0;
        pkt.header.extensions_padding = 0;
        let picture_id = if video == VideoCodec::Vp8 {
            media::vp8_picture_id(&pkt.payload).map(|(v, _)| v)
        } else {
            None
        };
        let mut switched = 0;
        for m in members {
            if m == h {
                continue;
            }
            let Some(p) = self.parts[m].as_mut() else {
                continue;
            };
            let Some(pc) = p.subscribe.as_mut().filter(|pc| pc.connected) else {
                continue;
            };
            let Some(d) = p.downtracks.iter_mut().find(|d| d.track == track_id) else {
                continue;
            };
            if d.ssrc == 0 {
                continue;
            }
            // Layer choice: forward the current layer; switch to the target at its keyframe.
            if single_layer {
                d.current = Some(li);
                d.target = Some(li);
            } else {
                if d.target.is_none() {
                    d.target = Some(0);
                }
                if d.current != Some(li) {
                    // Switch at a keyframe of the target; with nothing forwarded yet, start with
                    // any layer up to the target (the target may be paused at the publisher).
                    let start = d.current.is_none() && d.target.is_some_and(|t| li <= t);
                    if (d.target == Some(li) || start) && keyframe {
                        if d.current.is_some() {
                            switched += 1;
                        }
                        d.current = Some(li);
                    } else {
                        continue;
                    }
                }
            }
            let pt = match d.payload_type {
                Some(pt) => pt,
                None => {
                    let Some(mut s) = pc.pc.rtp_sender(d.sender) else {
                        continue;
                    };
                    let params = s.get_parameters();
                    let found = params
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| {
                            c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime)
                                && fmtp_compatible(&c.rtp_codec.sdp_fmtp_line, &fmtp)
                        })
                        .or_else(|| {
                            params
                                .rtp_parameters
                                .codecs
                                .iter()
                                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
                        })
                        .map(|c| c.payload_type);
                    let Some(pt) = found else {
                        tracing::debug!(mime = %mime, "no payload type for forwarded codec");
                        continue;
                    };
                    d.payload_type = Some(pt);
                    pt
                }
            };
            let Some(rw) = d.rewriter.rewrite(
                now,
                ssrc,
                pkt.header.sequence_number,
                pkt.header.timestamp,
                picture_id,
            ) else {
                continue;
            };
            let mut out = pkt.clone();
            out.header.ssrc = d.ssrc;
            out.header.payload_type = pt;
            out.header.sequence_number = rw.seq;
            out.header.timestamp = rw.timestamp;
            if let (Some(pid), true) = (rw.picture_id, video == VideoCodec::Vp8) {
                let mut b = BytesMut::from(&out.payload[..]);
                if media::set_vp8_picture_id(&mut b, pid) {
                    out.payload = b.freeze();
                }
            }
            let Some(mut s) = pc.pc.rtp_sender(d.sender) else {
                continue;
            };
            match s.write_rtp(now, out) {
                Ok(()) => {
                    p.loss.bytes += size as u64;
                    self.stats.forwarded_packets += 1;
                    self.stats.forwarded_bytes += size as u64;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "write_rtp refused");
                    self.stats.write_errors += 1
                }
            }
            self.dirty.push(PcKey {
                participant: m,
                leg: Leg::Subscribe,
            });
        }
        self.stats.layer_switches += switched;
    }

    /// Relays one data-channel message of participant `h` to the others of its room, unless it
    /// is over `data_message_max_bytes` or `h`'s bucket is empty (dropped and counted).
    fn relay_data(&mut self, now: Instant, h: Handle, is_string: bool, data: &[u8]) {
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        if data.len() > self.cfg.data_message_max_bytes {
            self.stats.data_dropped_too_large += 1;
            return;
        }
        if !p.data_bucket.try_take(now) {
            self.stats.data_dropped_rate_limited += 1;
            return;
        }
        let from = p.id.clone();
        let room = p.room.clone();
        let members = self
            .rooms
            .get(&room)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        let payload: BytesMut = if is_string {
            let text = String::from_utf8_lossy(data);
            BytesMut::from(json!({"from": from, "data": text}).to_string().as_bytes())
        } else {
            let mut b = BytesMut::with_capacity(1 + from.len() + data.len());
            let id = &from.as_bytes()[..from.len().min(255)];
            b.extend_from_slice(&[id.len() as u8]);
            b.extend_from_slice(id);
            b.extend_from_slice(data);
            b
        };
        for m in members {
            if m == h {
                continue;
            }
            let Some(q) = self.parts[m].as_mut() else {
                continue;
            };
            let (Some(dc), Some(pc)) = (q.data_channel, q.publish.as_mut()) else {
                continue;
            };
            let Some(mut ch) = pc.pc.data_channel(dc) else {
                continue;
            };
            let sent = if is_string {
                ch.send_text(now, String::from_utf8_lossy(&payload).into_owned())
            } else {
                ch.send(now, payload.clone())
            };
            if sent.is_ok() {
                self.stats.data_messages += 1;
            }
            self.dirty.push(PcKey {
                participant: m,
                leg: Leg::Publish,
            });
        }
    }

    /// A subscriber asked for a keyframe on its downtrack `ssrc`.
    fn keyframe_for_downtrack(&mut self, now: Instant, h: Handle, ssrc: u32) {
        let Some(p) = self.parts[h].as_ref() else {
            return;
        };
        let Some(d) = p.downtracks.iter().find(|d| d.ssrc == ssrc) else {
            return;
        };
        let layer = d.current.or(d.target).unwrap_or(0);
        let track = d.track.clone();
        self.request_keyframe(now, &track, layer);
    }

    /// PLI to the publisher of `track` for `layer`, at most once per interval.
    fn request_keyframe(&mut self, now: Instant, track: &str, layer: usize) {
        let interval = self.cfg.keyframe_request_interval;
        let Some(t) = self.tracks.get_mut(track) else {
            return;
        };
        if t.kind != RtpCodecKind::Video {
            return;
        }
        let Some(l) = t.layers.get_mut(layer) else {
            return;
        };
        if l.ssrc == 0 {
            // Offered but not flowing yet: asked for once its first packet names its SSRC.
            return;
        }
        if l.last_keyframe_request
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        l.last_keyframe_request = Some(now);
        let media_ssrc = l.ssrc;
        let (owner, receiver) = (t.owner, t.receiver);
        let Some(p) = self.parts[owner].as_mut() else {
            return;
        };
        let Some(pc) = p.publish.as_mut() else { return };
        if let Some(mut r) = pc.pc.rtp_receiver(receiver) {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if r.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
                self.stats.pli_sent += 1;
            }
        }
        self.dirty.push(PcKey {
            participant: owner,
            leg: Leg::Publish,
        });
    }

    fn tick(&mut self, now: Instant) {
        let elapsed = self
            .last_tick
            .map_or(TICK, |t| now.saturating_duration_since(t))
            .as_secs_f64()
            .max(0.05);
        self.last_tick = Some(now);
        for t in self.tracks.values_mut() {
            if t.layers.len() > 1 {
                tracing::debug!(track = %t.id, layers = ?t.layers.iter().map(|l| (l.rid.clone(), l.bps as u64, l.height)).collect::<Vec<_>>(), "layer rates");
            }
            for l in &mut t.layers {
                let bps = l.bytes as f64 * 8.0 / elapsed;
                l.bps = if l.bps == 0.0 {
                    bps
                } else {
                    0.6 * l.bps + 0.4 * bps
                };
                l.bytes = 0;
                // A layer silent for 2 s is paused (or gone).
                if l.last_packet
                    .is_none_or(|at| now.saturating_duration_since(at) > Duration::from_secs(2))
                {
                    l.bps = 0.0;
                } else if l
                    .last_packet
                    .is_some_and(|at| now.saturating_duration_since(at) < TICK)
                {
                    l.active_bps = l.bps;
                }
            }
        }
        for p in self.parts.iter().flatten() {
            if p.subscribe.is_some() {
                tracing::debug!(participant = %p.id, bwe_bps = p.bwe.get(), loss_bps = p.loss.bps as u64, loss = p.loss.loss, targets = ?p.downtracks.iter().map(|d| (d.current, d.target)).collect::<Vec<_>>(), "subscriber estimate");
                if self.bwe_samples.len() >= MAX_BWE_SAMPLES {
                    self.bwe_samples.clear();
                }
                self.bwe_samples.push(p.bwe.get() as f64);
            }
        }
        self.update_loss_estimates(now, elapsed);
        self.select_layers(now);
        self.announce_layers();
        self.active_speakers(now);
    }

    /// Per subscriber and simulcast track: the highest layer the subscriber's bandwidth
    /// estimate and requested height allow. Downward moves are immediate; upward moves are
    /// tried one step at a time at most every [`UP_HOLD`] (the estimate only grows with what is
    /// sent, so trying is how it learns more is possible).
    fn on_receiver_report(&mut self, h: Handle, reports: &[ReceptionReport]) {
        let Some(p) = self.parts[h].as_mut() else {
            return;
        };
        for r in reports {
            if p.downtracks.iter().any(|d| d.ssrc == r.ssrc) {
                let f = f64::from(r.fraction_lost) / 256.0;
                p.loss.fresh = Some(p.loss.fresh.map_or(f, |x: f64| x.max(f)));
            }
        }
    }

    /// Once per tick: the loss-based estimate of every subscriber (GCC's loss rule on receiver
    /// reports: back off to what was delivered under heavy loss, grow slowly without loss).
    fn update_loss_estimates(&mut self, now: Instant, elapsed_secs: f64) {
        for p in self.parts.iter_mut().flatten() {
            let gcc = p.bwe.get() as f64;
            let e = &mut p.loss;
            let sent_bps = e.bytes as f64 * 8.0 / elapsed_secs;
            e.bytes = 0;
            if let Some(f) = e.fresh.take() {
                e.loss = 0.5 * e.loss + 0.5 * f;
            }
            // GCC backs off to 85 % of the received rate on delay overuse; its increases are
            // at most 8 %/s.
            let backed_off = gcc < e.last_gcc_bps * 0.95;
            e.last_gcc_bps = gcc;
            e.congested = backed_off || e.loss > HIGH_LOSS;
            if e.congested {
                e.proven_bps = 0.0;
            } else if e.loss < LOW_LOSS {
                e.proven_bps = e.proven_bps.max(sent_bps).min(self.cfg.pc.bwe_max_bps);
            }
            if e.loss > HIGH_LOSS {
                e.bps = (sent_bps * (1.0 - 0.5 * e.loss)).max(self.cfg.pc.bwe_min_bps);
                if e.probe_at
                    .is_some_and(|at| now.saturating_duration_since(at) < UP_HOLD * 2)
                {
                    e.probe_interval = (e.probe_interval * 2).min(MAX_PROBE_INTERVAL);
                }
                e.probe_at = None;
                e.last_loss = Some(now);
                e.loss *= 0.5;
            } else if e.loss < LOW_LOSS {
                e.bps =
                    (e.bps.max(sent_bps) * 1.05f64.powf(elapsed_secs)).min(self.cfg.pc.bwe_max_bps);
                if e.probe_at
                    .is_some_and(|at| now.saturating_duration_since(at) > UP_HOLD * 3)
                {
                    e.probe_interval = UP_HOLD;
                    e.probe_at = None;
                }
            }
        }
    }

    fn select_layers(&mut self, now: Instant) {
        let mut keyframes = Vec::new();
        for h in 0..self.parts.len() {
            let Some(p) = self.parts[h].as_mut() else {
                continue;
            };
            let bwe = (p.bwe.get() as f64).max(p.loss.proven_bps).min(p.loss.bps);
            // A congestion signal this tick ends every probe of this subscriber.
            let clean = !p.loss.congested;
            // Without loss for a probe interval, one downtrack may step above the estimate: the
            // estimate only learns what the path carries from what is sent.
            let may_probe = p.loss.probe_at.is_none()
                && p.loss
                    .last_loss
                    .is_none_or(|at| now.saturating_duration_since(at) >= p.loss.probe_interval)
                && p.loss.loss < LOW_LOSS;
            let mut probed = false;
            let videos = p
                .downtracks
                .iter()
                .filter(|d| {
                    self.tracks
                        .get(&d.track)
                        .is_some_and(|t| t.kind == RtpCodecKind::Video)
                })
                .count()
                .max(1);
            let audios = p.downtracks.len().saturating_sub(videos) as f64;
            let budget = ((bwe - audios * 40_000.0) / videos as f64).max(0.0);
            let pref = p.max_height;
            for d in &mut p.downtracks {
                let Some(t) = self.tracks.get(&d.track) else {
                    continue;
                };
                if t.kind != RtpCodecKind::Video || t.layers.len() < 2 {
                    continue;
                }
                let max_height = d.max_height.or(pref);
                let n = t.layers.len();
                let mut best = 0;
                for (i, l) in t.layers.iter().enumerate() {
                    // A layer's measured rate is unreliable around pauses and restarts: never
                    // assume it is cheaper than half its nominal rate, except for the layer
                    // being forwarded, whose rate is what the subscriber gets (an encoder
                    // ramps a new layer up over seconds). That layer stays while it fits with a
                    // margin and the path is clean: rates move with every keyframe.
                    let measured = l.bps.max(l.active_bps);
                    let forwarded = d.current == Some(i) && measured > 0.0;
                    let cost = if forwarded {
                        measured
                    } else {
                        measured.max(nominal_bps(i, n) * 0.5)
                    };
                    let allowance = if forwarded && clean {
                        budget * STAY_MARGIN
                    } else {
                        budget
                    };
                    let fits_height = match (max_height, l.height) {
                        (Some(mh), Some(lh)) => u32::from(lh) <= mh,
                        (Some(mh), None) => nominal_height(i, n) <= mh,
                        _ => true,
                    };
                    if i == 0 || (cost <= allowance && fits_height) {
                        best = i;
                    }
                }
                let current = d.target.unwrap_or(0);
                let paced = d
                    .last_up
                    .is_none_or(|at| now.saturating_duration_since(at) >= UP_HOLD);
                let next_fits_height = match (max_height, t.layers.get(current + 1)) {
                    (_, None) => false,
                    (Some(mh), Some(l)) => {
                        l.height.map_or(nominal_height(current + 1, n), u32::from) <= mh
                    }
                    (None, Some(_)) => true,
                };
                if let Some(pr) = d.probe.as_mut() {
                    if pr.reached.is_none() && d.current == Some(pr.layer) {
                        pr.reached = Some(now);
                    }
                }
                let current_fits_height = match (max_height, t.layers.get(current)) {
                    (Some(mh), Some(l)) => {
                        l.height.map_or(nominal_height(current, n), u32::from) <= mh
                    }
                    _ => true,
                };
                let probing = d.probe.is_some_and(|pr| {
                    pr.layer == current && clean && current_fits_height && pr.holds(now)
                });
                if !probing {
                    d.probe = None;
                }
                let chosen = if best > current && paced {
                    // Up one step at a time.
                    d.last_up = Some(now);
                    current + 1
                } else if best < current && !probing {
                    best
                } else if best == current && may_probe && !probed && paced && next_fits_height {
                    probed = true;
                    d.last_up = Some(now);
                    d.probe = Some(Probe {
                        layer: current + 1,
                        started: now,
                        reached: None,
                    });
                    current + 1
                } else {
                    current
                };
                if d.target != Some(chosen) {
                    d.target = Some(chosen);
                    keyframes.push((d.track.clone(), chosen));
                }
            }
            if probed {
                p.loss.probe_at = Some(now);
            }
        }
        // A switch waits for a keyframe of the target layer. When the first request or the
        // keyframe itself was lost (or the request was suppressed by the per-layer interval
        // because another subscriber had just asked), ask again, at most once per interval:
        // otherwise the subscriber could stay on the old layer until the publisher's next
        // spontaneous keyframe, which simulcast encoders rarely send.
        for p in self.parts.iter().flatten() {
            for d in &p.downtracks {
                if let Some(target) = d.target {
                    if d.current != Some(target) {
                        keyframes.push((d.track.clone(), target));
                    }
                }
            }
        }
        for (t, l) in keyframes {
            self.request_keyframe(now, &t, l);
        }
    }

    /// Tells publishers which simulcast layers someone watches (the lowest always stays on).
    fn announce_layers(&mut self) {
        let mut msgs = Vec::new();
        let ids: Vec<String> = self.tracks.keys().cloned().collect();
        for id in ids {
            let Some(t) = self.tracks.get(&id) else {
                continue;
            };
            if t.kind != RtpCodecKind::Video || t.layers.len() < 2 {
                continue;
            }
            let mut watched = vec![false; t.layers.len()];
            watched[0] = true;
            for p in self.parts.iter().flatten() {
                for d in p.downtracks.iter().filter(|d| d.track == id) {
                    for i in [d.target, d.current].into_iter().flatten() {
                        if let Some(w) = watched.get_mut(i) {
                            *w = true;
                        }
                    }
                }
            }
            let active: Vec<String> = t
                .layers
                .iter()
                .zip(&watched)
                .filter(|(_, w)| **w)
                .map(|(l, _)| l.rid.clone())
                .collect();
            if t.announced.as_ref() != Some(&active) {
                msgs.push((t.owner, id.clone(), active));
            }
        }
        for (owner, id, active) in msgs {
            if let Some(t) = self.tracks.get_mut(&id) {
                t.announced = Some(active.clone());
            }
            self.push_signal(
                owner,
                json!({"type": "layers", "trackId": id, "active": active}),
            );
        }
    }

    fn active_speakers(&mut self, now: Instant) {
        let mut changes = Vec::new();
        for (name, r) in &mut self.rooms {
            let mut best: Option<(Handle, f64)> = None;
            for &h in &r.participants {
                let Some(p) = self.parts[h].as_ref() else {
                    continue;
                };
                let fresh = p
                    .audio_level_at
                    .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
                if !fresh || p.audio_level > SPEAKING_LEVEL {
                    continue;
                }
                if best.is_none_or(|(_, l)| p.audio_level < l) {
                    best = Some((h, p.audio_level));
                }
            }
            if let Some((h, level)) = best {
                if r.speaker != Some(h) {
                    r.speaker = Some(h);
                    changes.push((name.clone(), h, level));
                }
            }
        }
        for (room, h, level) in changes {
            self.stats.speaker_changes += 1;
            let Some(id) = self.parts[h].as_ref().map(|p| p.id.clone()) else {
                continue;
            };
            let members = self
                .rooms
                .get(&room)
                .map(|r| r.participants.clone())
                .unwrap_or_default();
            for m in members {
                self.push_signal(
                    m,
                    json!({"type": "active-speaker", "participantId": id, "level": level.round() as u8}),
                );
            }
        }
    }
}

fn new_layer(rid: &str, ssrc: u32) -> Layer {
    Layer {
        rid: rid.to_string(),
        ssrc,
        bytes: 0,
        bps: 0.0,
        active_bps: 0.0,
        height: None,
        last_packet: None,
        last_keyframe_request: None,
    }
}

/// Most simulcast layers a track may have (RIDs beyond are ignored).
const MAX_LAYERS: usize = 4;

/// The RIDs a publisher's offer sends on its video m-section(s): `a=rid:<id> send` (RFC 8851),
/// at most [`MAX_LAYERS`], in offer order.
fn offered_video_rids(sdp: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_video = false;
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video");
            continue;
        }
        if !in_video {
            continue;
        }
        if let Some(rest) = line.strip_prefix("a=rid:") {
            let mut parts = rest.split_whitespace();
            if let (Some(id), Some("send")) = (parts.next(), parts.next()) {
                if !id.is_empty() && id.len() <= 16 && !out.iter().any(|r| r == id) {
                    out.push(id.to_string());
                }
            }
        }
        if out.len() >= MAX_LAYERS {
            break;
        }
    }
    out
}

/// Order of simulcast layers by their conventional RIDs (low to high).
fn rid_rank(rid: &str) -> u8 {
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "hi" | "high" | "full" | "2" => 2,
        _ => 1,
    }
}

/// Bitrate assumed for a layer not measured yet (paused), bits per second.
fn nominal_bps(i: usize, n: usize) -> f64 {
    match n - 1 - i {
        0 => 1_500_000.0,
        1 => 500_000.0,
        _ => 150_000.0,
    }
}

/// Height assumed for a layer whose keyframe size is unknown, pixels.
fn nominal_height(i: usize, n: usize) -> u32 {
    match n - 1 - i {
        0 => 720,
        1 => 360,
        _ => 180,
    }
}

fn kind_name(k: RtpCodecKind) -> String {
    match k {
        RtpCodecKind::Audio => "audio".into(),
        _ => "video".into(),
    }
}

/// H.264 profiles must match; other codecs' fmtp lines are compatible.
fn fmtp_compatible(a: &str, b: &str) -> bool {
    fn profile(s: &str) -> Option<&str> {
        s.split(';')
            .find_map(|kv| kv.trim().strip_prefix("profile-level-id="))
            .map(|v| v.get(..4).unwrap_or(v))
    }
    match (profile(a), profile(b)) {
        (Some(x), Some(y)) => x.eq_ignore_ascii_case(y),
        _ => true,
    }
}

/// Adds `b=TIAS` (RFC 3890) and `b=AS` lines to every video m-section of an answer, so the
/// publisher's encoder stays under `bps`.
pub fn limit_video_bitrate(sdp: &str, bps: u64) -> String {
    let mut out = String::with_capacity(sdp.len() + 64);
    let mut in_video = false;
    for line in sdp.split("\r\n").filter(|l| !l.is_empty()) {
        if line.starts_with("m=") {
            in_video = line.starts_with("m=video");
        }
        if in_video && (line.starts_with("b=AS:") || line.starts_with("b=TIAS:")) {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
        if in_video && line.starts_with("c=") {
            out.push_str(&format!("b=AS:{}\r\nb=TIAS:{}\r\n", bps / 1000, bps));
        }
    }
    out
}

/// `n` characters of `[A-Za-z0-9]` from `rng` (ICE ufrag and password characters, RFC 8839
/// §5.4 allows more; these need no escaping anywhere).
fn random_token(rng: &mut StdRng, n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// A downtrack SSRC from `rng`: never 0, which the worker uses for "not attached yet".
fn draw_ssrc(rng: &mut StdRng) -> u32 {
    loop {
        let ssrc: u32 = rng.random();
        if ssrc != 0 {
            return ssrc;
        }
    }
}

#[allow(dead_code)]
fn unused(_: BTreeMap<u8, u8>, _: RTCIceCandidateInit, _: Ordering) {}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn offered_rids_come_from_the_video_section_only() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rid:x send\r\n\
                   m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rid:q send\r\na=rid:h send\r\n\
                   a=rid:f send\r\na=rid:r recv\r\na=simulcast:send q;h;f\r\n";
        assert_eq!(offered_video_rids(sdp), ["q", "h", "f"]);
        let many: String = (0..10).map(|i| format!("a=rid:r{i} send\r\n")).collect();
        assert_eq!(
            offered_video_rids(&format!("m=video 9 X 96\r\n{many}")).len(),
            MAX_LAYERS
        );
        assert!(offered_video_rids("m=video 9 X 96\r\na=rid:\r\n").is_empty());
    }

    fn seeded(seed: u64) -> Worker {
        Worker::new(WorkerConfig {
            rng_seed: Some(seed),
            ..WorkerConfig::default()
        })
    }

    /// Three credentials and SSRCs in the order a worker draws them.
    fn draws(w: &mut Worker) -> Vec<String> {
        (0..3)
            .flat_map(|_| {
                let (ufrag, pwd) = w.draw_ice_credentials();
                [ufrag, pwd, draw_ssrc(&mut w.rng).to_string()]
            })
            .collect()
    }

    #[test]
    fn the_same_seed_draws_the_same_ssrcs_and_ice_credentials() {
        let a = draws(&mut seeded(7));
        assert_eq!(a, draws(&mut seeded(7)));
        assert_ne!(a, draws(&mut seeded(8)));
        // Unseeded cores differ from each other.
        let mut x = Worker::new(WorkerConfig::default());
        let mut y = Worker::new(WorkerConfig::default());
        assert_ne!(draws(&mut x), draws(&mut y));
        assert!(a[0].starts_with("w0x") && a[0].len() == 3 + 12 && a[1].len() == 32);
    }

    /// The `a=ice-ufrag`/`a=ice-pwd` of the worker's answer to a client's publish offer.
    fn answer_credentials(seed: u64) -> Vec<String> {
        use rtc::peer_connection::configuration::media_engine::MediaEngine;
        use rtc::peer_connection::RTCPeerConnectionBuilder;
        let now = Instant::now();
        let mut me = MediaEngine::default();
        me.register_default_codecs().unwrap();
        let mut client = RTCPeerConnectionBuilder::new()
            .with_media_engine(me)
            .build(now)
            .unwrap();
        client.create_data_channel("room", None).unwrap();
        let offer = client.create_offer(None).unwrap();
        let mut w = seeded(seed);
        w.join(now, "r", "a", 1).unwrap();
        let m = json!({"type": "offer", "sdp": offer.sdp}).to_string();
        w.handle_message(now, "r", "a", &m);
        let answer = std::iter::from_fn(|| w.poll_signal())
            .find(|s| s.msg["type"] == "answer")
            .expect("an answer");
        answer.msg["sdp"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("a=ice-ufrag:") || l.starts_with("a=ice-pwd:"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_answer_carries_ice_credentials_drawn_from_the_seed() {
        let a = answer_credentials(42);
        assert!(a.len() >= 2, "{a:?}");
        assert_eq!(a, answer_credentials(42));
        assert_ne!(a, answer_credentials(43));
    }
}
