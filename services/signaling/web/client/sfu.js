// @ts-check
// Sfu mode (sfu/PROTOCOL.md): the publish and subscribe connections to the room's SFU node.

import { rtcConfiguration, useIceServers } from './ice.js';
import { addPublishTracks, setActiveLayers } from './simulcast.js';
import { TurnkeyError, errorText } from './util.js';

/** @typedef {import('./room.js').TurnkeyRoom} TurnkeyRoom */
/** @typedef {import('./util.js').Participant} Participant */

/**
 * Sfu mode (sfu/PROTOCOL.md): a publish RTCPeerConnection (we offer: the local audio track, the
 * local video track as simulcast, the `room` data channel) and a subscribe RTCPeerConnection
 * (the SFU offers every other participant's tracks, we answer). Every SFU message travels in an
 * `sfu` signaling frame. Tracks are mapped to participants by their stream id (the msid, which is
 * the publisher's participant id) or else by `offer.tracks[].mid`; a track that arrives before
 * its participant is announced waits for it.
 */
export class SfuSession {
  /** @param {TurnkeyRoom} room */
  constructor(room) {
    this.room = room;
    this.closed = false;
    /** @param {string} m */
    this.log = (m) => room._log(`[sfu] ${m}`);
    /** @type {Promise<void>} */
    this.queue = Promise.resolve();
    /** Subscribed tracks by transceiver mid: {participantId, track, screen}. @type {Map<string, {participantId: string, track: MediaStreamTrack, screen: boolean}>} */
    this.tracks = new Map();
    /** Tracks whose participant is not in the list yet, by participant id. @type {Map<string, Array<{track: MediaStreamTrack, screen: boolean}>>} */
    this.orphans = new Map();
    /** mid -> {trackId, participantId, kind} of the last subscribe offer. @type {Map<string, any>} */
    this.offered = new Map();
    /** @type {RTCRtpSender|null} */
    this.videoSender = null;
    /** Our screen share: its sender, and whether we captured the track (then we stop it). @type {{sender: RTCRtpSender, track: MediaStreamTrack, owned: boolean}|null} */
    this.screen = null;
    /** msid track id -> source of our published tracks, sent with each publish offer. @type {Map<string, string>} */
    this.sources = new Map();
    /** @type {ReturnType<typeof setTimeout>|undefined} */
    this.offerTimer = undefined;
    const config = rtcConfiguration(room);
    this.pub = new RTCPeerConnection(config);
    this.sub = new RTCPeerConnection(config);
    this.channel = this.pub.createDataChannel('room');
    this.channel.binaryType = 'arraybuffer';
    this.channel.onmessage = (ev) => this.onData(ev.data);
    const local = room.localStream;
    if (local) {
      this.videoSender = addPublishTracks(this.pub, local, room._opts.simulcast !== false);
      for (const t of local.getTracks()) this.sources.set(t.id, t.kind === 'audio' ? 'microphone' : 'camera');
    }
    this.pub.onnegotiationneeded = () => this.enqueue(() => this.publishOffer());
    /** @type {Array<[string, RTCPeerConnection]>} */
    const pcs = [['publish', this.pub], ['subscribe', this.sub]];
    for (const [name, pc] of pcs) {
      pc.onconnectionstatechange = () => {
        if (this.closed) return;
        this.log(`${name} connection ${pc.connectionState}`);
        room._emit('sfu-connection-state', { pc: name, state: pc.connectionState });
        if (pc === this.sub) {
          for (const p of room.participants.values()) {
            p.connectionState = pc.connectionState;
            room._emit('connection-state', { participant: p, state: pc.connectionState });
          }
        }
      };
    }
    this.sub.ontrack = (ev) => this.onTrack(ev);
  }

  /**
   * Runs `task` after the previous ones (offers and answers must not interleave).
   * @param {() => any} task
   */
  enqueue(task) {
    this.queue = this.queue
      .then(() => (this.closed ? undefined : task()))
      .catch((e) => this.fail('negotiation', e));
    return this.queue;
  }

  /** @param {string} what @param {any} e */
  fail(what, e) {
    if (this.closed) return;
    this.log(`${what} failed: ${errorText(e)}`);
    this.room._emit('error', { error: new TurnkeyError(`sfu: ${what} failed: ${errorText(e)}`, { code: 'negotiation' }) });
  }

  /** Sends `msg` to the SFU (in an `sfu` frame). @param {object} msg @returns {boolean} */
  send(msg) {
    return this.room._send({ type: 'sfu', msg });
  }

  /** Offers the publish PC (first offer, renegotiation, ICE restart); retried if unanswered. */
  async publishOffer() {
    const pc = this.pub;
    if (this.closed || pc.signalingState !== 'stable') return;
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: 'offer', sdp: pc.localDescription.sdp, sources: Object.fromEntries(this.sources) });
    clearTimeout(this.offerTimer);
    this.offerTimer = setTimeout(() => {
      this.enqueue(async () => {
        if (pc.signalingState !== 'have-local-offer') return;
        this.log('publish offer unanswered, offering again');
        await pc.setLocalDescription({ type: 'rollback' });
        await this.publishOffer();
      });
    }, this.room._opts.offerTimeoutMs);
  }

  /** A message of the SFU (sfu/PROTOCOL.md, "SFU -> client"). @param {any} msg */
  handleSfu(msg) {
    if (this.closed) return;
    switch (msg.type) {
      case 'answer':
        if (typeof msg.sdp !== 'string') return;
        this.enqueue(async () => {
          if (this.pub.signalingState !== 'have-local-offer') {
            this.log('stale publish answer ignored');
            return;
          }
          clearTimeout(this.offerTimer);
          await this.pub.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        });
        break;
      case 'offer':
        if (typeof msg.sdp !== 'string') return;
        this.enqueue(() => this.onSubscribeOffer(msg));
        break;
      case 'layers':
        if (Array.isArray(msg.active)) this.enqueue(() => this.setLayers(msg.active));
        break;
      case 'active-speaker': {
        const participantId = msg.participantId;
        this.room._activeSpeaker = participantId;
        const participant = this.room.participants.get(participantId) || null;
        this.room._emit('active-speaker', { participantId, participant, level: msg.level });
        break;
      }
      case 'error': {
        const error = new TurnkeyError(`sfu: ${msg.code} ${msg.message}`, { code: msg.code, request: 'sfu' });
        this.log(`SFU error ${msg.code} ${msg.message}`);
        this.room._emit('error', { error });
        break;
      }
      default:
        this.log(`unknown SFU message ${msg.type} ignored`);
    }
  }

  /**
   * Applies a subscribe offer, answers it, and reports the tracks it dropped.
   * @param {{sdp: string, tracks?: any[]}} msg
   */
  async onSubscribeOffer(msg) {
    this.offered = new Map();
    for (const t of Array.isArray(msg.tracks) ? msg.tracks : []) {
      if (t && t.mid != null) this.offered.set(String(t.mid), t);
    }
    await this.sub.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    await this.sub.setLocalDescription(await this.sub.createAnswer());
    this.send({ type: 'answer', sdp: this.sub.localDescription.sdp });
    // A track the SFU no longer sends: its m-line is gone from `tracks` or no longer sends.
    for (const tr of this.sub.getTransceivers()) {
      const mid = tr.mid;
      if (mid == null || !this.tracks.has(mid)) continue;
      const sending = tr.currentDirection === 'recvonly' || tr.currentDirection === 'sendrecv';
      if (!this.offered.has(mid) || !sending) this.dropTrack(mid);
    }
    for (const mid of [...this.tracks.keys()]) {
      if (!this.sub.getTransceivers().some((tr) => tr.mid === mid)) this.dropTrack(mid);
    }
  }

  /** @param {RTCTrackEvent} ev */
  onTrack(ev) {
    if (this.closed) return;
    const mid = ev.transceiver && ev.transceiver.mid;
    const info = mid != null ? this.offered.get(mid) : undefined;
    const participantId = (ev.streams && ev.streams[0] && ev.streams[0].id) || (info && info.participantId);
    if (!participantId) {
      this.log(`track ${ev.track.id} without a participant ignored`);
      return;
    }
    const screen = !!info && info.source === 'screen';
    const known = mid != null ? this.tracks.get(mid) : undefined;
    if (known && known.participantId !== participantId) this.dropTrack(mid);
    if (mid != null) this.tracks.set(mid, { participantId, track: ev.track, screen });
    const participant = this.room.participants.get(participantId);
    if (!participant) {
      if (participantId === this.room.participantId) return; // never our own media
      const list = this.orphans.get(participantId) || [];
      list.push({ track: ev.track, screen });
      this.orphans.set(participantId, list);
      return;
    }
    this.deliver(participant, ev.track, screen);
  }

  /**
   * A remote track for `participant`: camera and microphone go into participant.stream
   * (`track`), a screen share into a stream of its own, participant.screenStream (`screen-track`).
   * @param {Participant} participant @param {MediaStreamTrack} track @param {boolean} screen
   */
  deliver(participant, track, screen) {
    if (screen) {
      const stream = new MediaStream([track]);
      participant.screenStream = stream;
      this.room._emit('screen-track', { participant, track, stream });
      return;
    }
    const stream = participant.stream;
    if (!stream.getTrackById(track.id)) stream.addTrack(track);
    this.room._emit('track', { participant, track, stream });
  }

  /** @param {string} mid */
  dropTrack(mid) {
    const entry = this.tracks.get(mid);
    this.tracks.delete(mid);
    if (!entry) return;
    const orphans = this.orphans.get(entry.participantId);
    if (orphans) this.orphans.set(entry.participantId, orphans.filter((o) => o.track !== entry.track));
    const participant = this.room.participants.get(entry.participantId);
    if (!participant) return;
    if (entry.screen) {
      const stream = participant.screenStream;
      if (!stream || !stream.getTrackById(entry.track.id)) return;
      participant.screenStream = null;
      this.room._emit('screen-track-removed', { participant, track: entry.track, stream });
      return;
    }
    const stream = participant.stream;
    if (!stream.getTrackById(entry.track.id)) return;
    stream.removeTrack(entry.track);
    this.room._emit('track-removed', { participant, track: entry.track, stream });
  }

  /** @returns {MediaStreamTrack|null} the screen track we share. */
  get screenTrack() {
    return this.screen ? this.screen.track : null;
  }

  /**
   * Shares a screen: a second video transceiver on the publish connection, one layer (no
   * sendEncodings, so no simulcast), contentHint 'detail', announced as source `screen` in the
   * publish offer (sfu/PROTOCOL.md "Track sources"); onnegotiationneeded sends that offer.
   * @param {MediaStreamTrack} [given] a video track to share instead of asking getDisplayMedia.
   * @returns {Promise<MediaStreamTrack>}
   */
  async startScreenShare(given) {
    if (this.closed) throw new TurnkeyError('startScreenShare: the room is closed', { code: 'wrong_state' });
    if (this.screen) throw new TurnkeyError('startScreenShare: already sharing', { code: 'wrong_state' });
    let track = given;
    if (!track) {
      const captured = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      track = captured.getVideoTracks()[0];
      if (!track) throw new TurnkeyError('startScreenShare: no video track captured', { code: 'unsupported' });
    }
    if (track.kind !== 'video') throw new TurnkeyError('startScreenShare: not a video track', { code: 'bad_request' });
    if (this.screen) {
      if (!given) track.stop();
      throw new TurnkeyError('startScreenShare: already sharing', { code: 'wrong_state' });
    }
    // Text and fine detail: the encoder keeps resolution and gives up frame rate.
    track.contentHint = 'detail';
    const stream = new MediaStream([track]);
    const sender = this.pub.addTransceiver(track, { direction: 'sendonly', streams: [stream] }).sender;
    this.screen = { sender, track, owned: !given };
    this.sources.set(track.id, 'screen');
    // The browser's own "Stop sharing" ends the captured track.
    track.addEventListener('ended', () => {
      if (this.screen && this.screen.track === track) this.stopScreenShare();
    });
    this.log(`sharing screen track ${track.id}`);
    this.room._emit('screen-share', { active: true, track });
    return track;
  }

  /**
   * Stops the screen share: removeTrack turns its m-section recvonly, the next publish offer
   * (onnegotiationneeded) no longer sends it, and the SFU removes it for the others.
   * @returns {boolean}
   */
  stopScreenShare() {
    const s = this.screen;
    if (!s || this.closed) return false;
    this.screen = null;
    this.sources.delete(s.track.id);
    try {
      this.pub.removeTrack(s.sender);
    } catch (e) {
      this.log(`removeTrack failed: ${errorText(e)}`);
    }
    if (s.owned) s.track.stop();
    this.log(`screen share of ${s.track.id} stopped`);
    this.room._emit('screen-share', { active: false, track: s.track });
    return true;
  }

  /**
   * `layers`: only the simulcast layers in `active` are watched; pause the others.
   * @param {string[]} active
   */
  async setLayers(active) {
    await setActiveLayers(this.videoSender, active);
  }

  /**
   * Data channel message: JSON text {from, data}, or binary [n][n bytes of id][payload].
   * @param {string|ArrayBuffer} raw
   */
  onData(raw) {
    let from;
    let data;
    if (typeof raw === 'string') {
      try {
        const m = JSON.parse(raw);
        from = m.from;
        data = m.data;
      } catch {
        this.log('undecodable data message ignored');
        return;
      }
    } else {
      const bytes = new Uint8Array(raw);
      if (bytes.length < 1 || bytes.length < 1 + bytes[0]) {
        this.log('short binary data message ignored');
        return;
      }
      from = new TextDecoder().decode(bytes.subarray(1, 1 + bytes[0]));
      data = bytes.slice(1 + bytes[0]).buffer;
    }
    if (typeof from !== 'string') return;
    const participant = this.room.participants.get(from) || null;
    this.room._emit('data', { participant, from, data });
  }

  /** @param {any} data a string, an ArrayBuffer or a typed array. @returns {boolean} */
  sendData(data) {
    if (this.closed || this.channel.readyState !== 'open') return false;
    this.channel.send(data);
    return true;
  }

  /** @param {{maxHeight: number, trackId?: string}} pref @returns {boolean} */
  setVideoPreference(pref) {
    const maxHeight = Math.max(0, Math.floor(Number(pref.maxHeight)));
    if (!Number.isFinite(maxHeight)) return false;
    /** @type {{type: string, maxHeight: number, trackId?: string}} */
    const msg = { type: 'video', maxHeight };
    if (typeof pref.trackId === 'string') msg.trackId = pref.trackId;
    return this.send(msg);
  }

  /** @param {Participant} participant */
  addParticipant(participant) {
    participant.connectionState = this.sub.connectionState;
    const waiting = this.orphans.get(participant.id) || [];
    this.orphans.delete(participant.id);
    for (const o of waiting) this.deliver(participant, o.track, o.screen);
  }

  /** @param {string} id */
  removeParticipant(id) {
    this.orphans.delete(id);
    for (const [mid, e] of this.tracks) {
      if (e.participantId === id) this.tracks.delete(mid);
    }
  }

  /** @param {{type: string, from: string}} msg */
  handleSignal(msg) {
    // Mesh signaling has no place in an sfu room.
    this.log(`${msg.type} from ${msg.from} ignored in an sfu room`);
  }

  /** Resumed signaling: frames may have been lost, ask the SFU for its current offer. */
  restart() {
    for (const pc of [this.pub, this.sub]) {
      try {
        useIceServers(pc, this.room.iceServers);
      } catch {
        /* closed */
      }
    }
    this.send({ type: 'resync' });
    if (['failed', 'disconnected'].includes(this.pub.connectionState)) this.pub.restartIce();
    else if (this.pub.signalingState === 'have-local-offer') {
      // Our offer (or its answer) may have been lost while away.
      this.enqueue(async () => {
        if (this.pub.signalingState !== 'have-local-offer') return;
        await this.pub.setLocalDescription({ type: 'rollback' });
        await this.publishOffer();
      });
    }
  }

  /** @returns {Promise<Array<{participant: null, pc: string, report: RTCStatsReport}>>} */
  async getStats() {
    const out = [];
    /** @type {Array<[string, RTCPeerConnection]>} */
    const pcs = [['publish', this.pub], ['subscribe', this.sub]];
    for (const [pc, conn] of pcs) {
      try {
        out.push({ participant: null, pc, report: await conn.getStats() });
      } catch {
        /* closed meanwhile */
      }
    }
    return out;
  }

  /** @param {string} id @returns {RTCPeerConnection|null} */
  peerConnection(id) {
    if (id === 'publish') return this.pub;
    if (id === 'subscribe' || this.room.participants.has(id)) return this.sub;
    return null;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.offerTimer);
    try {
      this.channel.close();
    } catch {
      /* ignore */
    }
    this.pub.close();
    this.sub.close();
    if (this.screen && this.screen.owned) this.screen.track.stop();
    this.screen = null;
    this.tracks.clear();
    this.orphans.clear();
  }
}
