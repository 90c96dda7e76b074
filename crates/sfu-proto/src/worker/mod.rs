//! One worker's SFU state machine: rooms, participants, their two peer connections each, and
//! the forwarding between them. Sans-IO: datagrams, link messages and timeouts go in with `now`;
//! datagrams to send, messages for participants and the next deadline come out.
//!
//! A room lives on exactly one worker, so forwarding never crosses threads.
//!
//! The jobs live in one file each: `room` (the registry of rooms, participants, tracks and
//! downtracks), `negotiation` (offers and answers), `pump` (draining peer connections:
//! events, media, RTCP, data channels), `forwarding` (per RTP packet), `keyframe` (PLI to
//! publishers), `tick` (rate samples, then the pure decisions of [`crate::bwe`],
//! [`crate::layers`] and [`crate::speaker`]). This file holds the types, the public API and
//! the RNG every SSRC and ICE credential is drawn from.

mod forwarding;
mod keyframe;
mod negotiation;
mod pump;
mod receive;
mod room;
mod subscriber_rtcp;
mod tick;

pub use crate::sdp::limit_video_bitrate;

use crate::bwe::LossEstimate;
use crate::demux::{stun_local_ufrag, Demux, Proto};
use crate::direct::DirectLeg;
use crate::dtls_flight::LastFlight;
use crate::forward::Rewriter;
use crate::layers::{LayerRate, Selection};
use crate::media::VideoCodec;
use crate::msg::{ErrorCode, ServerMsg, Source, Sources};
use crate::peer::{BweCell, DirectParts, FeedbackCounters, Leg, PcSettings};
use crate::speaker::AudioLevel;
use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtc::data_channel::RTCDataChannelId;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use serde_json::json;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use turnkey_time::rate::TokenBucket;
use turnkey_time::timers::TimerQueue;

/// Index of a participant in the worker's table.
pub type Handle = usize;

/// Names one peer connection (ordered by participant, then publish before subscribe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcKey {
    /// Owner.
    pub participant: Handle,
    /// Which of its two PCs.
    pub leg: Leg,
}

/// The worker's timers ([`TimerQueue`] keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// Rate samples, estimates, layer choice, active speaker ([`TICK`]); armed while the
    /// worker holds participants.
    Tick,
    /// The peer connection's own deadline (ICE checks and consent, DTLS retransmits, SCTP,
    /// RTCP reports), as its `poll_timeout` gave it when last drained.
    Pc(PcKey),
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
    /// The message (services/sfu/PROTOCOL.md "SFU -> client"); the I/O layer serializes it.
    pub msg: ServerMsg,
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
    /// seed and the same input replay a run exactly. The core never reads the OS RNG: the I/O
    /// layer draws a fresh seed from it unless one is configured (the default, 0, is for
    /// tests; a server must not run with a known seed, its ICE passwords would be predictable).
    pub rng_seed: u64,
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
            rng_seed: 0,
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
    /// SRTP/SRTCP datagrams not handed to rtc: of an SSRC beyond the PC's [`MAX_RTC_SSRCS`],
    /// or of one rtc has not seen that did not authenticate with the publisher's verified key.
    pub ssrc_refused: u64,
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
    /// DTLS handshake flights sent again because the peer repeated its own
    /// ([`crate::dtls_flight`]).
    pub dtls_flights_resent: u64,
    /// Subscribe PCs whose RTP the worker began to protect and send itself ([`crate::direct`]).
    pub direct_engaged: u64,
    /// Subscribe PCs left to rtc because no key candidate authenticated rtc's SRTP.
    pub direct_refused: u64,
    /// Subscribe PCs handed back to rtc after a new DTLS handshake changed the keys.
    pub direct_dropped: u64,
    /// Forwarded RTP packets (and retransmissions) the worker protected and sent itself.
    pub direct_packets: u64,
    /// Publish PCs whose media the worker began to open itself (their remote SRTP key
    /// verified against the publisher's packets).
    pub direct_receive_engaged: u64,
    /// Publish PCs left to rtc because rtc authenticated [`crate::direct::VERIFY_ATTEMPTS`] of
    /// the publisher's packets that no key candidate opened.
    pub direct_receive_refused: u64,
    /// Publish PCs handed back to rtc after a new DTLS handshake changed the keys.
    pub direct_receive_dropped: u64,
    /// Publishers' RTP packets the worker opened itself, past rtc's read.
    pub direct_received_packets: u64,
    /// Subscribe PCs whose SRTCP the worker began to open itself (the subscriber's key
    /// verified against its own packets).
    pub direct_rtcp_engaged: u64,
    /// Subscribe PCs whose SRTCP rtc authenticated [`crate::direct::VERIFY_ATTEMPTS`] times
    /// where no key candidate opened it (rtc keeps reading it).
    pub direct_rtcp_refused: u64,
    /// Subscribers' compound RTCP packets the worker opened itself, past rtc's read.
    pub direct_rtcp_packets: u64,
}

struct Pc {
    pc: RTCPeerConnection,
    connected: bool,
    failed: bool,
    /// Our last DTLS handshake flight, sent again when the peer repeats its own
    /// ([`crate::dtls_flight`]: works around rtc-dtls not doing so).
    flight: LastFlight,
    /// Where our DTLS datagrams go (for the flight's own timer).
    flight_to: Option<(Proto, SocketAddr)>,
    /// ICE checks that came before the remote description (at most [`MAX_EARLY_CHECKS`]).
    early_checks: Vec<(Proto, SocketAddr, BytesMut)>,
    /// Whether the worker sends this (subscribe) PC's RTP itself.
    direct: Direct,
    /// Whether the worker opens this (publish) PC's media itself.
    recv: receive::DirectRecv,
    /// The SSRCs whose SRTP or SRTCP was handed to rtc (at most [`MAX_RTC_SSRCS`], see
    /// [`admit_ssrc`]).
    rtc_ssrcs: Vec<u32>,
    /// Forwarding wrote into rtc, or moved the PC's deadline, since its datagrams were last
    /// taken: [`Worker::drain_written`] must take rtc's datagrams and read its deadline, not
    /// only the direct leg's packets.
    rtc_written: bool,
}

/// Whether the worker protects and sends a subscribe PC's RTP itself ([`crate::direct`]).
enum Direct {
    /// A publish PC, or given up: rtc sends.
    Off,
    /// Keys not verified yet: rtc sends, and its SRTP is tried against the tap's candidates.
    Pending {
        parts: DirectParts,
        attempts: u8,
        /// (SSRC, sequence number) of each SRTP packet rtc sent, in order.
        noted: Vec<(u32, u16)>,
    },
    /// The worker protects and sends (and, once verified, opens the subscriber's SRTCP).
    On {
        leg: Box<DirectLeg>,
        parts: DirectParts,
        rtcp: subscriber_rtcp::RtcpRead,
    },
}

/// What changed in a PC's [`Direct`] while its datagrams were taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DirectChange {
    Engaged,
    Refused,
    Dropped,
}

impl Direct {
    /// rtc sends datagram `d` on the PC.
    fn on_rtc_datagram(&mut self, d: &TaggedBytesMut) -> Option<DirectChange> {
        let to = (
            pump::transport_proto(d.transport.transport_protocol),
            d.transport.peer_addr,
        );
        match self {
            Direct::Off => None,
            Direct::Pending {
                parts,
                attempts,
                noted,
            } => {
                let stream = crate::direct::srtp_stream(&d.message)?;
                noted.push(stream);
                if let Some(ctx) = parts.tap.verify(&d.message) {
                    let mut leg = Box::new(DirectLeg::new(ctx, to, parts.tap.generation()));
                    for (ssrc, seq) in noted.drain(..) {
                        leg.follow(ssrc, seq);
                    }
                    parts.send.with(|s| s.set_direct(true));
                    let Direct::Pending { parts, .. } = std::mem::replace(self, Direct::Off) else {
                        return None;
                    };
                    *self = Direct::On {
                        leg,
                        parts,
                        rtcp: subscriber_rtcp::RtcpRead::new(d.now),
                    };
                    return Some(DirectChange::Engaged);
                }
                *attempts += 1;
                if *attempts >= crate::direct::VERIFY_ATTEMPTS {
                    *self = Direct::Off;
                    return Some(DirectChange::Refused);
                }
                None
            }
            Direct::On { leg, .. } => {
                if crate::direct::is_srtp_or_srtcp(&d.message) {
                    leg.to = to;
                }
                // RTP rtc still had queued from before the switch.
                if let Some((ssrc, seq)) = crate::direct::srtp_stream(&d.message) {
                    leg.follow(ssrc, seq);
                }
                None
            }
        }
    }

    /// Back to rtc if a new DTLS handshake changed the keys.
    fn check_keys(&mut self) -> Option<DirectChange> {
        let Direct::On { leg, parts, .. } = self else {
            return None;
        };
        if parts.tap.generation() == leg.generation {
            return None;
        }
        parts.send.with(|s| s.set_direct(false));
        *self = Direct::Off;
        Some(DirectChange::Dropped)
    }
}

impl Pc {
    /// Moves the datagrams rtc has to send on the PC into `out`, noting DTLS flights for
    /// [`crate::dtls_flight`] and SRTP for [`Direct`].
    fn take_writes(&mut self, now: Instant, out: &mut Vec<TaggedBytesMut>) -> Option<DirectChange> {
        let mut change = self.direct.check_keys();
        self.rtc_written = false;
        while let Some(d) = self.pc.poll_write() {
            self.flight.on_sent(now, &d.message);
            if crate::dtls_flight::is_dtls(&d.message) {
                self.flight_to = Some((
                    pump::transport_proto(d.transport.transport_protocol),
                    d.transport.peer_addr,
                ));
            }
            if let Some(c) = self.direct.on_rtc_datagram(&d) {
                change = Some(c);
            }
            out.push(d);
        }
        change
    }

    /// Moves the packets queued on the PC's direct leg, protected, into `out` (nothing if rtc
    /// sends the PC's RTP); returns how many could not be protected (dropped).
    fn take_direct(&mut self, out: &mut Vec<Transmit>, spare: &mut Vec<BytesMut>) -> u64 {
        let Direct::On { leg, .. } = &mut self.direct else {
            return 0;
        };
        let (proto, remote) = leg.to;
        leg.take(spare, |payload| {
            out.push(Transmit {
                proto,
                remote,
                payload,
            })
        }) as u64
    }

    /// The earliest of the PC's own deadline and our DTLS flight timer's.
    fn deadline(&mut self) -> Option<Instant> {
        match (self.pc.poll_timeout(), self.flight.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Most sent datagrams' buffers a worker keeps for its next protected copies
/// ([`Worker::recycle`]): about one part of a large fan-out's send (the I/O layer sends some 48
/// datagrams at a time), at most 128 KiB.
const MAX_SPARE: usize = 64;
/// Largest buffer kept for reuse (an MTU-sized datagram's, with room to spare).
const MAX_SPARE_CAPACITY: usize = 2048;

/// ICE checks kept per PC until its remote description is applied.
const MAX_EARLY_CHECKS: usize = 4;

/// Most SSRCs whose SRTP or SRTCP one PC hands to rtc. rtc-srtp 0.21 creates its per-SSRC
/// state (rollover counter, replay window) for any SSRC it is handed, before the packet
/// authenticates, so without a bound anyone able to send from a PC's 5-tuple (spoofed UDP)
/// could grow it one SSRC per datagram. A publisher has a few streams per track (simulcast
/// layers, RTX, audio); a subscriber's RTCP comes from one or two sender SSRCs.
pub const MAX_RTC_SSRCS: usize = 64;
/// SSRCs one PC hands rtc beyond [`MAX_RTC_SSRCS`] when the worker authenticated the packet
/// (its key opened it): forged SSRCs may have taken the bound's places, the peer's own streams
/// still get one.
pub const MAX_RTC_SSRCS_AUTHENTICATED: usize = 16;

/// Whether SRTP/SRTCP datagram `d` may go to rtc: its SSRC ([`crate::direct::srtp_or_srtcp_ssrc`])
/// is one of `seen`, or is added while `seen` holds fewer than [`MAX_RTC_SSRCS`] (plus
/// [`MAX_RTC_SSRCS_AUTHENTICATED`] if the worker `authenticated` the packet). `None` if `d` is
/// too short to carry one.
fn admit_ssrc(seen: &mut Vec<u32>, d: &[u8], authenticated: bool) -> Option<bool> {
    let ssrc = crate::direct::srtp_or_srtcp_ssrc(d)?;
    if seen.contains(&ssrc) {
        return Some(true);
    }
    let bound = if authenticated {
        MAX_RTC_SSRCS + MAX_RTC_SSRCS_AUTHENTICATED
    } else {
        MAX_RTC_SSRCS
    };
    if seen.len() >= bound {
        return Some(false);
    }
    seen.push(ssrc);
    Some(true)
}

/// Whether rtc has a place for SRTP/SRTCP of `ssrc` among the SSRCs `seen` on a PC without the
/// worker authenticating it ([`admit_ssrc`]).
fn rtc_has_place(seen: &[u32], ssrc: u32) -> bool {
    seen.len() < MAX_RTC_SSRCS || seen.contains(&ssrc)
}

/// What the worker's own read of a datagram left for rtc.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Read {
    /// Read by the worker (opened and handled, or dropped as bad).
    Done,
    /// rtc reads it; `authenticated` if the worker's key opened it (not forged).
    Rtc { authenticated: bool },
}

/// A datagram rtc reads that the worker did not open.
const UNOPENED: Read = Read::Rtc {
    authenticated: false,
};

/// One simulcast layer (or the only layer) of a published track.
#[derive(Debug)]
struct Layer {
    rid: String,
    /// 0 while offered (`a=rid`) but not flowing yet.
    ssrc: u32,
    rate: LayerRate,
    /// From its last VP8 keyframe, pixels.
    height: Option<u16>,
    last_keyframe_request: Option<Instant>,
}

/// A published track.
struct Published {
    id: String,
    owner: Handle,
    kind: RtpCodecKind,
    /// What it carries, as the publisher's offer said (default by kind).
    source: Source,
    /// The publish offer's m-section carrying it (`a=mid`), if rtc knew it at the track's open.
    mid: Option<String>,
    rtc_track_id: String,
    receiver: RTCRtpReceiverId,
    codec: RTCRtpCodec,
    video: VideoCodec,
    /// Low to high ([`layers::rid_rank`]).
    layers: Vec<Layer>,
    audio_level_ext: Option<u8>,
    /// Layers announced active to the publisher (None: never announced).
    announced: Option<Vec<String>>,
    /// Participants with a downtrack of this track, in room order (the forwarding fan-out).
    subscribers: Vec<Subscriber>,
}

/// One entry of a track's fan-out: the subscriber and where its downtrack of the track was
/// last found in its list, so forwarding finds it without a search.
struct Subscriber {
    member: Handle,
    /// Index into the subscriber's `downtracks`. Checked on every use (the list shifts when a
    /// downtrack is removed); a stale hint costs one search and is corrected.
    downtrack: Cell<usize>,
}

impl Subscriber {
    fn new(member: Handle) -> Self {
        Self {
            member,
            downtrack: Cell::new(0),
        }
    }
}

/// A published track as one subscriber receives it.
struct Downtrack {
    track: String,
    transceiver: RTCRtpTransceiverId,
    sender: RTCRtpSenderId,
    /// 0 while planned (the subscribe PC does not exist yet).
    ssrc: u32,
    payload_type: Option<u8>,
    rewriter: Rewriter,
    /// Which layer is forwarded and which wanted ([`layers::choose`]).
    sel: Selection,
    max_height: Option<u32>,
}

/// The downtrack of `track` in a subscriber's `downtracks`, looked up at `hint` first (O(1)
/// while the list has not shifted); the hint is updated when it was stale.
fn downtrack_mut<'a>(
    downtracks: &'a mut [Downtrack],
    track: &str,
    hint: &Cell<usize>,
) -> Option<&'a mut Downtrack> {
    let i = match downtracks.get(hint.get()) {
        Some(d) if d.track == track => hint.get(),
        _ => {
            let i = downtracks.iter().position(|d| d.track == track)?;
            hint.set(i);
            i
        }
    };
    downtracks.get_mut(i)
}

impl Downtrack {
    /// The same track planned again for a new subscribe PC: nothing of the old PC's sender
    /// is kept, the clock rate is (an audio track's rewriter stays at its codec's rate).
    fn replanned(self) -> Self {
        let clock_rate = self.rewriter.clock_rate();
        Self::planned(self.track, clock_rate)
    }

    /// A downtrack of `track` not attached to a subscribe PC yet.
    fn planned(track: String, clock_rate: u32) -> Self {
        Self {
            track,
            transceiver: RTCRtpTransceiverId::default(),
            sender: RTCRtpSenderId::default(),
            ssrc: 0,
            payload_type: None,
            rewriter: Rewriter::new(clock_rate),
            sel: Selection::default(),
            max_height: None,
        }
    }
}

struct Participant {
    room: String,
    id: String,
    link: u64,
    publish: Option<Box<Pc>>,
    subscribe: Option<Box<Pc>>,
    published: Vec<String>,
    /// The `sources` of the participant's last publish offer.
    sources: Sources,
    downtracks: Vec<Downtrack>,
    offer_outstanding: bool,
    needs_offer: bool,
    data_channel: Option<RTCDataChannelId>,
    bwe: Arc<BweCell>,
    max_height: Option<u32>,
    audio: AudioLevel,
    /// Loss-based side of the estimate (RTCP receiver reports, RFC 3550 §6.4.2).
    loss: LossEstimate,
    /// Data-channel messages this participant may still send.
    data_bucket: TokenBucket,
}

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
    /// Boxed: a participant holds two peer connections inline (kilobytes), and the table
    /// grows by doubling.
    parts: Vec<Option<Box<Participant>>>,
    by_id: HashMap<(String, String), Handle>,
    rooms: HashMap<String, Room>,
    tracks: HashMap<String, Published>,
    /// (publisher, SSRC of one of its layers) -> track id: forwarding finds a packet's track
    /// without a search. Layers offered but not flowing yet (SSRC 0) are not in it.
    by_ssrc: HashMap<(Handle, u32), String>,
    demux: Demux<PcKey>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<Signal>,
    dirty: Vec<PcKey>,
    /// Subscribe PCs written to by forwarding since their datagrams were last taken: drained
    /// (writes and deadline only) when the I/O layer polls, once per PC however many packets
    /// of the batch each received.
    written: Vec<PcKey>,
    /// Buffers of datagrams already sent, for the next protected copies
    /// ([`Self::recycle`]; at most [`MAX_SPARE`]).
    spare: Vec<BytesMut>,
    /// Scratch for the copies one PC's direct leg protects.
    sealed: Vec<Transmit>,
    /// The time of the latest write recorded in `written`.
    written_at: Option<Instant>,
    /// `written` is sorted (descending) and free of repeats.
    written_sorted: bool,
    stats: WorkerStats,
    counters: Arc<FeedbackCounters>,
    next_track: u64,
    /// Deadlines: the tick, and each peer connection's next timeout.
    timers: TimerQueue<Timer>,
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
/// Subscribe PCs whose forwarded copies one [`Worker::poll_transmit`] takes when its queue is
/// empty.
pub const WRITTEN_CHUNK: usize = 16;

impl Worker {
    /// A worker with no rooms.
    pub fn new(cfg: WorkerConfig) -> Self {
        let rng = StdRng::seed_from_u64(cfg.rng_seed);
        Self {
            rng,
            cfg,
            parts: Vec::new(),
            by_id: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            by_ssrc: HashMap::new(),
            demux: Demux::default(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            dirty: Vec::new(),
            written: Vec::new(),
            spare: Vec::new(),
            sealed: Vec::new(),
            written_at: None,
            written_sorted: true,
            stats: WorkerStats::default(),
            counters: Arc::new(FeedbackCounters::default()),
            next_track: 0,
            timers: TimerQueue::default(),
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

    /// Datagrams waiting for [`Self::poll_transmit`] (forwarded copies not yet taken from
    /// their PCs count one each).
    pub fn pending_transmits(&self) -> usize {
        self.transmits.len() + self.written.len()
    }

    /// Datagrams ready in the queue, without the forwarded copies still to be taken from their
    /// PCs.
    pub fn ready_transmits(&self) -> usize {
        self.transmits.len()
    }

    /// Hands back the buffer of a datagram that was sent (its bytes are no longer needed): the
    /// next protected copy is written into it instead of a new allocation, one malloc and free
    /// fewer per forwarded copy. Kept while fewer than [`MAX_SPARE`] are, and only buffers of
    /// at most [`MAX_SPARE_CAPACITY`] bytes.
    pub fn recycle(&mut self, mut payload: BytesMut) {
        if self.spare.len() < MAX_SPARE && payload.capacity() <= MAX_SPARE_CAPACITY {
            payload.clear();
            self.spare.push(payload);
        }
    }

    /// Next datagram to send. The copies forwarding wrote are taken from their PCs here, a
    /// few PCs at a time ([`WRITTEN_CHUNK`]) as the queue runs dry, so an I/O layer that sends
    /// every few dozen datagrams gets the first subscribers' copies out while the last ones'
    /// are still to be protected.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() && !self.written.is_empty() {
            self.drain_written(WRITTEN_CHUNK);
        }
        self.transmits.pop_front()
    }

    /// Takes the datagrams of up to `limit` of the PCs forwarding wrote to (each once, in
    /// handle order) and refreshes their deadlines. Nothing else can be pending on them from a
    /// write: their events and reads wait for their next full drain (a datagram from the
    /// subscriber, or a timer).
    fn drain_written(&mut self, limit: usize) {
        let Some(now) = self.written_at else {
            self.written.clear();
            return;
        };
        if !self.written_sorted {
            // Descending, so the next chunk is taken from the end.
            self.written.sort_unstable_by(|a, b| b.cmp(a));
            self.written.dedup();
            self.written_sorted = true;
        }
        let take = limit.min(self.written.len());
        let from = self.written.len() - take;
        let mut out = Vec::new();
        for i in (from..self.written.len()).rev() {
            let key = self.written[i];
            let Some(pc) = self.pc_mut(key) else { continue };
            // A PC with only direct-leg packets: rtc had nothing new and its deadline stands.
            let rtc = !matches!(pc.direct, Direct::On { .. }) || pc.rtc_written;
            self.take_pc(now, key, rtc, &mut out);
        }
        self.written.truncate(from);
        if self.written.is_empty() {
            self.written_at = None;
        }
    }

    /// Next message for a participant.
    #[must_use]
    pub fn poll_signal(&mut self) -> Option<Signal> {
        self.signals.pop_front()
    }

    /// When [`Self::handle_timeout`] must next be called: the earliest deadline of the timer
    /// table (each peer connection's is refreshed whenever it is drained), without visiting
    /// every peer connection.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.written.is_empty() {
            self.drain_written(usize::MAX);
        }
        let next = self.timers.next_deadline();
        #[cfg(debug_assertions)]
        self.check_timers(next);
        next
    }

    /// Debug builds: no peer connection's own deadline is earlier than the table's next one
    /// (a PC changed without being drained would otherwise miss its timer).
    #[cfg(debug_assertions)]
    fn check_timers(&mut self, next: Option<Instant>) {
        for (h, p) in self.parts.iter_mut().enumerate() {
            let Some(p) = p.as_mut() else { continue };
            for (leg, pc) in [
                (Leg::Publish, p.publish.as_mut()),
                (Leg::Subscribe, p.subscribe.as_mut()),
            ] {
                let Some(t) = pc.and_then(|pc| pc.deadline()) else {
                    continue;
                };
                debug_assert!(
                    next.is_some_and(|n| n <= t),
                    "PC {h}/{leg:?} is due at {t:?}, the timer table first at {next:?}"
                );
            }
        }
    }

    /// True if datagrams from `remote` over `proto` reach a peer connection (a Binding request
    /// with a known ufrag bound the 5-tuple, and that PC still exists).
    pub fn routes(&self, proto: Proto, remote: SocketAddr) -> bool {
        self.demux.lookup(proto, remote).is_some()
    }

    /// True if datagrams from `remote` over `proto` go to a publish PC: media, which a wake-up
    /// forwards before it handles the subscribers' feedback read with it.
    pub fn carries_media(&self, proto: Proto, remote: SocketAddr) -> bool {
        self.demux
            .lookup(proto, remote)
            .is_some_and(|k| k.leg == Leg::Publish)
    }

    /// True if this worker holds participant `participant` of `room`.
    pub fn has_participant(&self, room: &str, participant: &str) -> bool {
        self.by_id
            .contains_key(&(room.to_string(), participant.to_string()))
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
        let local = self.local_addr(proto);
        let Some(pc) = self.pc_mut(key) else {
            self.stats.unroutable += 1;
            return;
        };
        if stun_local_ufrag(bytes).is_some() && pc.pc.remote_description().is_none() {
            // A subscribe PC whose answer is still on its way over signaling: the client checks
            // as soon as it has our offer, and rtc drops checks it cannot verify yet (no remote
            // ufrag), which costs the client's ~200 ms check retransmission. Kept (a few) and
            // answered once the answer is applied.
            if pc.early_checks.len() < MAX_EARLY_CHECKS {
                pc.early_checks.push((proto, remote, BytesMut::from(bytes)));
            }
            return;
        }
        let read = match key.leg {
            Leg::Publish => self.read_direct(now, key, proto, remote, bytes),
            Leg::Subscribe => self.read_rtcp_direct(now, key, bytes),
        };
        let Read::Rtc { authenticated } = read else {
            if key.leg == Leg::Subscribe {
                self.flush(now);
            }
            return;
        };
        let Some(pc) = self.pc_mut(key) else {
            return;
        };
        if crate::direct::is_srtp_or_srtcp(bytes) {
            match admit_ssrc(&mut pc.rtc_ssrcs, bytes, authenticated) {
                Some(true) => {}
                Some(false) => {
                    self.stats.ssrc_refused += 1;
                    return;
                }
                None => {
                    self.stats.bad_packets += 1;
                    return;
                }
            }
        }
        // The peer repeated a handshake flight: it lost ours (RFC 6347 §4.2.4).
        let resend: Vec<BytesMut> = if pc.flight.on_received(now, bytes) {
            pc.flight.flight().cloned().collect()
        } else {
            Vec::new()
        };
        // What rtc authenticates of it is evidence for a key being verified.
        pc.recv.handed(bytes);
        if let Direct::On { rtcp, .. } = &mut pc.direct {
            rtcp.handed(bytes);
        }
        let r = read_into(&mut pc.pc, now, local, proto, remote, BytesMut::from(bytes));
        if r.is_err() {
            self.stats.bad_packets += 1;
        }
        if !resend.is_empty() {
            self.stats.dtls_flights_resent += 1;
            for payload in resend {
                self.push_transmit(Transmit {
                    proto,
                    remote,
                    payload,
                });
            }
        }
        self.dirty.push(key);
        self.flush(now);
    }

    /// The local address a PC sees for datagrams over `proto`.
    fn local_addr(&self, proto: Proto) -> SocketAddr {
        match proto {
            Proto::Udp => self.cfg.udp_addr,
            Proto::Tcp => self.cfg.tcp_addr.unwrap_or(self.cfg.udp_addr),
        }
    }

    /// Feeds `key`'s checks that came before its remote description, now that it has one.
    pub(super) fn replay_early_checks(&mut self, now: Instant, key: PcKey) {
        let Some(pc) = self.pc_mut(key) else { return };
        let early = std::mem::take(&mut pc.early_checks);
        for (proto, remote, bytes) in early {
            let local = self.local_addr(proto);
            let Some(pc) = self.pc_mut(key) else { return };
            if read_into(&mut pc.pc, now, local, proto, remote, bytes).is_err() {
                self.stats.bad_packets += 1;
            }
        }
        self.dirty.push(key);
    }

    /// Queues a datagram; the queue is bounded, the oldest is dropped when full.
    fn push_transmit(&mut self, t: Transmit) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.transmits.pop_front();
        }
        self.transmits.push_back(t);
    }

    /// Takes PC `key`'s datagrams (rtc's, and its deadline read again, when `rtc`; always its
    /// direct leg's) into the transmit queue; `out` is scratch.
    pub(super) fn take_pc(
        &mut self,
        now: Instant,
        key: PcKey,
        rtc: bool,
        out: &mut Vec<TaggedBytesMut>,
    ) {
        // Scratch and spare buffers leave `self` while the PC is borrowed from it.
        let mut sealed = std::mem::take(&mut self.sealed);
        let mut spare = std::mem::take(&mut self.spare);
        let Some(pc) = self.pc_mut(key) else {
            self.spare = spare;
            self.sealed = sealed;
            return;
        };
        let change = if rtc { pc.take_writes(now, out) } else { None };
        let failed = pc.take_direct(&mut sealed, &mut spare);
        self.spare = spare;
        self.on_direct_change(change);
        self.stats.direct_packets += sealed.len() as u64;
        self.stats.write_errors += failed;
        self.emit(key, out);
        for t in sealed.drain(..) {
            self.push_transmit(t);
        }
        self.sealed = sealed;
        if rtc {
            self.refresh_timer(key);
        }
    }

    fn on_direct_change(&mut self, change: Option<DirectChange>) {
        match change {
            Some(DirectChange::Engaged) => self.stats.direct_engaged += 1,
            Some(DirectChange::Refused) => {
                self.stats.direct_refused += 1;
                tracing::warn!(
                    "no SRTP key candidate authenticated rtc's packets: rtc sends this PC's RTP"
                );
            }
            Some(DirectChange::Dropped) => self.stats.direct_dropped += 1,
            None => {}
        }
    }

    /// Timers: PC timers, rate sampling, layer selection, active speaker.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut tick = false;
        while let Some((_, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Tick => tick = true,
                Timer::Pc(key) => due.push(key),
            }
        }
        // In table order (participant, publish before subscribe), as the PCs are drained.
        due.sort_unstable();
        for key in due {
            let mut resend = Vec::new();
            if let Some(pc) = self.pc_mut(key) {
                // Our DTLS flight timer (rtc's may have been disarmed, see dtls_flight).
                if pc.flight.handle_timeout(now) {
                    if let Some((proto, remote)) = pc.flight_to {
                        resend = pc
                            .flight
                            .flight()
                            .map(|d| (proto, remote, d.clone()))
                            .collect();
                    }
                }
                match pc.pc.poll_timeout() {
                    Some(t) if t <= now => {
                        let _ = pc.pc.handle_timeout(now);
                        self.dirty.push(key);
                    }
                    // Moved later since it was armed, or only the flight timer was due.
                    _ => self.refresh_timer(key),
                }
            }
            if !resend.is_empty() {
                self.stats.dtls_flights_resent += 1;
                for (proto, remote, payload) in resend {
                    self.push_transmit(Transmit {
                        proto,
                        remote,
                        payload,
                    });
                }
            }
        }
        if tick {
            self.tick(now);
            if !self.by_id.is_empty() {
                self.timers.schedule(now + TICK, Timer::Tick);
            }
        }
        self.flush(now);
    }

    /// Debug builds: the forwarding indexes agree with the tables they index: every flowing
    /// layer's SSRC names its track and nothing else is indexed; each track's fan-out lists
    /// the room's members with a downtrack of it, in room order.
    #[cfg(debug_assertions)]
    fn check_indexes(&self) {
        let mut flowing = 0;
        for t in self.tracks.values() {
            for l in t.layers.iter().filter(|l| l.ssrc != 0) {
                flowing += 1;
                debug_assert_eq!(self.by_ssrc.get(&(t.owner, l.ssrc)), Some(&t.id));
            }
            let members: &[Handle] = self.parts[t.owner]
                .as_ref()
                .and_then(|p| self.rooms.get(&p.room))
                .map_or(&[], |r| &r.participants);
            let expected: Vec<Handle> = members
                .iter()
                .copied()
                .filter(|&m| {
                    self.parts[m]
                        .as_ref()
                        .is_some_and(|p| p.downtracks.iter().any(|d| d.track == t.id))
                })
                .collect();
            debug_assert!(
                t.subscribers.iter().all(|s| members.contains(&s.member)),
                "fan-out of {} lists a participant gone from the room",
                t.id
            );
            // A downtrack whose transceiver could not be added again leaves its subscriber
            // listed; forwarding skips it.
            let listed: Vec<Handle> = t
                .subscribers
                .iter()
                .map(|s| s.member)
                .filter(|m| expected.contains(m))
                .collect();
            debug_assert_eq!(listed, expected, "fan-out of {}", t.id);
        }
        debug_assert_eq!(self.by_ssrc.len(), flowing);
    }

    /// Re-arms `key`'s timer from its PC's own deadline (none: disarmed).
    fn refresh_timer(&mut self, key: PcKey) {
        match self.pc_mut(key).and_then(|pc| pc.deadline()) {
            Some(t) => self.timers.schedule(t, Timer::Pc(key)),
            None => self.timers.cancel(&Timer::Pc(key)),
        }
    }

    fn pc_mut(&mut self, key: PcKey) -> Option<&mut Pc> {
        let p = self.parts.get_mut(key.participant)?.as_mut()?;
        match key.leg {
            Leg::Publish => p.publish.as_deref_mut(),
            Leg::Subscribe => p.subscribe.as_deref_mut(),
        }
    }

    fn push_signal(&mut self, h: Handle, msg: ServerMsg) {
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
            ServerMsg::Error {
                code,
                message: message.to_string(),
            },
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
}

/// Hands one datagram from `remote` to `pc`.
fn read_into(
    pc: &mut RTCPeerConnection,
    now: Instant,
    local: SocketAddr,
    proto: Proto,
    remote: SocketAddr,
    message: BytesMut,
) -> Result<(), rtc::shared::error::Error> {
    pc.handle_read(TaggedBytesMut {
        now,
        transport: transport(local, proto, remote),
        message,
    })
}

/// What rtc knows of the path a datagram from `remote` came over.
fn transport(local: SocketAddr, proto: Proto, remote: SocketAddr) -> TransportContext {
    TransportContext {
        local_addr: local,
        peer_addr: remote,
        ecn: None,
        transport_protocol: match proto {
            Proto::Udp => TransportProtocol::UDP,
            Proto::Tcp => TransportProtocol::TCP,
        },
    }
}

fn new_layer(rid: &str, ssrc: u32) -> Layer {
    Layer {
        rid: rid.to_string(),
        ssrc,
        rate: LayerRate::default(),
        height: None,
        last_keyframe_request: None,
    }
}

/// The source of a track its publisher did not name: microphone for audio, camera for video.
fn default_source(k: RtpCodecKind) -> Source {
    match k {
        RtpCodecKind::Audio => Source::Microphone,
        _ => Source::Camera,
    }
}

fn kind_name(k: RtpCodecKind) -> String {
    match k {
        RtpCodecKind::Audio => "audio".into(),
        _ => "video".into(),
    }
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

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests anchor virtual time at one real instant
mod tests {
    use super::*;

    #[test]
    fn a_downtrack_is_found_at_its_hint_and_a_stale_hint_is_corrected() {
        let mut dts: Vec<Downtrack> = ["a-1", "b-2", "c-3"]
            .iter()
            .map(|t| Downtrack::planned(t.to_string(), 90_000))
            .collect();
        let hint = Cell::new(2);
        assert_eq!(downtrack_mut(&mut dts, "c-3", &hint).unwrap().track, "c-3");
        assert_eq!(hint.get(), 2);
        // The list shifts: "c-3" moves to 1; the hint is found stale and corrected.
        dts.remove(0);
        assert_eq!(downtrack_mut(&mut dts, "c-3", &hint).unwrap().track, "c-3");
        assert_eq!(hint.get(), 1);
        // Out of range and gone.
        let far = Cell::new(9);
        assert_eq!(downtrack_mut(&mut dts, "b-2", &far).unwrap().track, "b-2");
        assert_eq!(far.get(), 0);
        assert!(downtrack_mut(&mut dts, "a-1", &far).is_none());
        assert_eq!(far.get(), 0);
    }

    fn seeded(seed: u64) -> Worker {
        Worker::new(WorkerConfig {
            rng_seed: seed,
            ..WorkerConfig::default()
        })
    }

    #[test]
    fn sent_buffers_are_kept_for_reuse_up_to_a_bound_and_emptied() {
        let mut w = seeded(1);
        let mut big = BytesMut::with_capacity(MAX_SPARE_CAPACITY * 2);
        big.extend_from_slice(&[1; 100]);
        w.recycle(big);
        assert!(
            w.spare.is_empty(),
            "a buffer above the size bound is not kept"
        );
        for _ in 0..MAX_SPARE + 10 {
            let mut b = BytesMut::with_capacity(1500);
            b.extend_from_slice(&[2; 1100]);
            w.recycle(b);
        }
        assert_eq!(w.spare.len(), MAX_SPARE);
        assert!(w.spare.iter().all(|b| b.is_empty() && b.capacity() >= 1500));
    }

    #[test]
    fn a_replanned_downtrack_keeps_its_track_and_clock_rate_and_nothing_of_its_sender() {
        let audio = Downtrack {
            ssrc: 1234,
            payload_type: Some(111),
            ..Downtrack::planned("a-audio".to_string(), 48_000)
        };
        let again = audio.replanned();
        assert_eq!(again.track, "a-audio");
        assert_eq!(again.rewriter.clock_rate(), 48_000);
        assert_eq!(again.ssrc, 0);
        assert_eq!(again.payload_type, None);
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
    fn rtc_is_handed_at_most_max_rtc_ssrcs_ssrcs_per_pc() {
        let rtp = |ssrc: u32| {
            let mut d = vec![0x80, 96, 0, 1, 0, 0, 0, 0];
            d.extend_from_slice(&ssrc.to_be_bytes());
            d.extend_from_slice(&[0; 20]);
            d
        };
        let mut seen = Vec::new();
        for ssrc in 0..MAX_RTC_SSRCS as u32 {
            assert!(rtc_has_place(&seen, ssrc));
            assert_eq!(admit_ssrc(&mut seen, &rtp(ssrc), false), Some(true));
        }
        // One more SSRC is refused; those already seen, RTP or RTCP, still go.
        assert!(!rtc_has_place(&seen, 1 << 20) && rtc_has_place(&seen, 7));
        assert_eq!(admit_ssrc(&mut seen, &rtp(1 << 20), false), Some(false));
        assert_eq!(admit_ssrc(&mut seen, &rtp(7), false), Some(true));
        let rr_from_3 = [0x80, 201, 0, 1, 0, 0, 0, 3];
        assert_eq!(admit_ssrc(&mut seen, &rr_from_3, false), Some(true));
        assert_eq!(seen.len(), MAX_RTC_SSRCS);
        assert_eq!(
            admit_ssrc(&mut seen, &rtp(7)[..10], false),
            None,
            "too short"
        );
        // Packets the worker authenticated get a place beyond, up to a second bound.
        for ssrc in 0..MAX_RTC_SSRCS_AUTHENTICATED as u32 {
            assert_eq!(admit_ssrc(&mut seen, &rtp(1000 + ssrc), true), Some(true));
        }
        assert_eq!(admit_ssrc(&mut seen, &rtp(2000), true), Some(false));
        assert_eq!(seen.len(), MAX_RTC_SSRCS + MAX_RTC_SSRCS_AUTHENTICATED);
    }

    #[test]
    fn the_same_seed_draws_the_same_ssrcs_and_ice_credentials() {
        let a = draws(&mut seeded(7));
        assert_eq!(a, draws(&mut seeded(7)));
        assert_ne!(a, draws(&mut seeded(8)));
        assert!(a[0].starts_with("w0x") && a[0].len() == 3 + 12 && a[1].len() == 32);
    }

    /// A client's publish offer (a data channel only), as the link message.
    fn client_offer(now: Instant) -> String {
        use rtc::peer_connection::configuration::media_engine::MediaEngine;
        use rtc::peer_connection::RTCPeerConnectionBuilder;
        let mut me = MediaEngine::default();
        me.register_default_codecs().unwrap();
        let mut client = RTCPeerConnectionBuilder::new()
            .with_media_engine(me)
            .build(now)
            .unwrap();
        client.create_data_channel("room", None).unwrap();
        let offer = client.create_offer(None).unwrap();
        json!({"type": "offer", "sdp": offer.sdp}).to_string()
    }

    /// The `a=ice-ufrag`/`a=ice-pwd` of the worker's answer to a client's publish offer.
    fn answer_credentials(seed: u64) -> Vec<String> {
        let now = Instant::now();
        let mut w = seeded(seed);
        w.join(now, "r", "a", 1).unwrap();
        w.handle_message(now, "r", "a", &client_offer(now));
        let answer = std::iter::from_fn(|| w.poll_signal())
            .find_map(|s| match s.msg {
                ServerMsg::Answer { sdp } => Some(sdp),
                _ => None,
            })
            .expect("an answer");
        answer
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

    #[test]
    fn the_timer_table_holds_one_entry_per_live_timer() {
        let now = Instant::now();
        let mut w = seeded(1);
        assert_eq!(w.poll_timeout(), None);
        let offer = client_offer(now);
        for i in 0..20 {
            let id = format!("p{i}");
            w.join(now, "r", &id, 1).unwrap();
            w.handle_message(now, "r", &id, &offer);
            assert!(w
                .pc_mut(PcKey {
                    participant: 0,
                    leg: Leg::Publish
                })
                .is_some());
            // The tick and the new publish PC's deadline.
            assert_eq!(w.timers.len(), 2, "{:?}", w.timers);
            let pc_due = w.timers.deadline_of(&Timer::Pc(PcKey {
                participant: 0,
                leg: Leg::Publish,
            }));
            assert!(pc_due.is_some());
            assert_eq!(
                w.poll_timeout(),
                pc_due.min(w.timers.deadline_of(&Timer::Tick))
            );
            w.link_closed(now, "r", &id, 1);
            assert_eq!(w.timers.len(), 1, "only the tick is left: {:?}", w.timers);
        }
        // With nobody left, the tick is not re-armed.
        w.handle_timeout(now + TICK);
        assert_eq!(w.poll_timeout(), None);
        assert!(w.timers.is_empty());
    }
}
