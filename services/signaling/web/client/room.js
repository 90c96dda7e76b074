// @ts-check
// TurnkeyRoom: the signaling connection to a room (PROTOCOL.md) and the room as the
// application sees it (participants, events); media is left to a MediaSession (./session.js).
//
// Signaling resume: after an unexpected close (anything but the final close codes below) the
// client reconnects with backoff for up to `resumeGraceMs` and sends `join` with `resume`; on
// `joined` with `resumed: true` it restarts ICE on every connection (fresh TURN credentials from
// the new `joined.iceServers`). Messages it would send while disconnected are dropped; the ICE
// restart renegotiates anyway. A resume refused because the grace period is over (4005) becomes
// a new join (opts.rejoin).

import { joinedIceServers } from './ice.js';
import { createMediaSession } from './session.js';
import { TurnkeyError, emit, sleep } from './util.js';

/** @typedef {import('./util.js').Participant} Participant */
/** @typedef {import('./session.js').MediaSession} MediaSession */

/** Protocol version spoken by this client. */
export const PROTOCOL_VERSION = 1;

/**
 * Close codes after which the client does not try to resume (PROTOCOL.md, "Close codes").
 * @type {Map<number, string>}
 */
const FINAL_CLOSE_CODES = new Map([
  [1000, 'left'],
  [4001, 'refused'],
  [4008, 'rate_limited'],
  [4010, 'room_closed'],
  [4011, 'replaced'],
]);

/**
 * Events (all CustomEvent; the payload is `event.detail`):
 * - `state` {state}: the signaling state, see {@link TurnkeyRoom#state}.
 * - `participant-joined` {participant}: someone entered (also fired for participants found on
 *   resume that joined while we were away).
 * - `participant-left` {participant, reason}: `left`, `timeout`, `node-lost`, `removed`, or
 *   `gone` (found missing on resume).
 * - `track` {participant, track, stream}: a remote track arrived; `stream` is participant.stream.
 * - `track-removed` {participant, track, stream}.
 * - `screen-track` {participant, track, stream}: sfu mode, a participant shares a screen
 *   (sfu/PROTOCOL.md "Track sources"); `stream` holds only that track (participant.screenStream),
 *   apart from the camera and microphone in participant.stream.
 * - `screen-track-removed` {participant, track, stream}: that participant stopped sharing.
 * - `screen-share` {active, track}: our own screen share started or stopped (also when the
 *   browser's "Stop sharing" ended the captured track).
 * - `connection-state` {participant, state}: the media connection to a participant changed
 *   (an RTCPeerConnectionState).
 * - `data` {participant, from, data}: a message on the room's data channel (sfu mode; sent with
 *   {@link TurnkeyRoom#sendData}); `data` is a string or an ArrayBuffer, `participant` is null
 *   if the sender is not (yet) in the participant list.
 * - `active-speaker` {participantId, participant, level}: the loudest participant changed
 *   (sfu mode; `level` in dBov, 0 loudest, 127 silence; `participantId` may be our own id).
 * - `sfu-connection-state` {pc, state}: sfu mode, `pc` is 'publish' or 'subscribe'.
 * - `resumed` {}: the signaling connection dropped and was taken back; media is being
 *   renegotiated with an ICE restart.
 * - `rejoined` {participantId}: the signaling connection dropped for longer than the grace
 *   period and the client joined again as a new participant (opts.rejoin); every participant
 *   was reported left (`gone`) and joined again, with new connections.
 * - `error` {error}: a non-fatal problem (an `error` frame, a failed negotiation step).
 * - `closed` {reason, code?, error?}: the room object is finished (after leave(), a refused
 *   resume, `room-closed`, a replaced session...). Reasons: `left`, `room_closed`, `replaced`,
 *   `resume_failed`, `refused`, `rate_limited`, `error`.
 */
export class TurnkeyRoom extends EventTarget {
  /**
   * Connects, joins the room and starts connecting media to everyone in it. Resolves once the
   * server answered `joined`; media connects in the background (watch `track` and
   * `connection-state`).
   *
   * @param {object} opts
   * @param {string} opts.url WebSocket endpoint (`url` of the join grant, e.g. ws://host/v1/ws).
   * @param {string|(() => Promise<string>|string)} opts.token Access token, or a function that
   *   returns a fresh one (called for the first join and for every resume attempt).
   * @param {string} opts.room Room name (must match the token's room).
   * @param {string} [opts.name] Display name.
   * @param {MediaStream|null} [opts.localStream] What to send; its tracks are added to every
   *   connection. null: receive only.
   * @param {RTCIceTransportPolicy} [opts.iceTransportPolicy] 'all' (default) or 'relay'
   *   (TURN only).
   * @param {boolean} [opts.simulcast] sfu mode: send video as three simulcast layers (rids
   *   q, h, f: quarter, half and full resolution at 150, 500 and 1500 kbit/s); default true.
   *   false: one layer. A capture smaller than 960x540 is always sent as one layer (Chromium
   *   would send only its lowest layers).
   * @param {RTCIceServer[]} [opts.iceServers] Override the ICE servers of `joined.iceServers`.
   * @param {number} [opts.pingIntervalMs] Keepalive period; default 20000 (PROTOCOL.md).
   * @param {number} [opts.resumeGraceMs] How long to keep trying to resume after an unexpected
   *   close; default 20000 (the server's default grace period).
   * @param {number} [opts.joinTimeoutMs] Time for one connect + `joined`; default 10000.
   * @param {number} [opts.offerTimeoutMs] An offer unanswered this long is rolled back and sent
   *   again; default 10000.
   * @param {number} [opts.connectTimeoutMs] A negotiated connection that is not connected this
   *   long gets an ICE restart, and if that does not help either, a new RTCPeerConnection;
   *   default 10000.
   * @param {boolean} [opts.rejoin] When the server refuses a resume (4005: the grace period is
   *   over), join again as a new participant (new participantId; `rejoined` event) instead of
   *   closing with `resume_failed`; default true.
   * @param {(msg: string) => void} [opts.log] Debug log sink.
   * @returns {Promise<TurnkeyRoom>}
   * @throws {TurnkeyError} with the server's error code (4001 unauthorized, 4009 room full...)
   *   4503 (sfu room without a live SFU node), or 'timeout' / 'closed'.
   */
  static async join(opts) {
    const room = new TurnkeyRoom(opts);
    try {
      await room._connect(false);
    } catch (e) {
      room._teardown();
      throw e;
    }
    return room;
  }

  /**
   * @private Use TurnkeyRoom.join.
   * @param {Parameters<typeof TurnkeyRoom.join>[0]} opts
   */
  constructor(opts) {
    super();
    if (!opts || !opts.url || !opts.token || !opts.room) {
      throw new TurnkeyError('TurnkeyRoom.join: url, token and room are required', { code: 'bad_request' });
    }
    this._opts = {
      pingIntervalMs: 20000,
      resumeGraceMs: 20000,
      joinTimeoutMs: 10000,
      offerTimeoutMs: 10000,
      connectTimeoutMs: 10000,
      rejoin: true,
      iceTransportPolicy: /** @type {RTCIceTransportPolicy} */ ('all'),
      simulcast: true,
      ...opts,
    };
    /** @type {(msg: string) => void} */
    this._log = typeof opts.log === 'function' ? opts.log : () => {};
    /** @type {WebSocket|null} */
    this._ws = null;
    /** @type {'connecting'|'connected'|'reconnecting'|'closed'} */
    this._state = 'connecting';
    /** @type {string|null} */
    this._resumeToken = null;
    /** @type {ReturnType<typeof setInterval>|null} */
    this._pingTimer = null;
    this._lastFrameAt = 0;
    /** leave() under way. @type {Promise<void>|null} */
    this._leaving = null;
    /** Called when `left` arrives while leaving. @type {((value?: any) => void)|null} */
    this._onLeft = null;
    this._closed = false;
    this._reconnecting = false;
    /** Test hook (_simulateDisconnect): no resume attempt before this time (ms). */
    this._awayUntil = 0;
    /** @type {MediaSession|null} */
    this._media = null;
    /** The last `active-speaker` (sfu mode; set by the SfuSession). @type {string|null} */
    this._activeSpeaker = null;
    /** @type {Map<string, Participant>} */
    this._participants = new Map();
    /** Our own participant ids of sessions replaced by a rejoin. @type {Set<string>} */
    this._formerIds = new Set();
    /** Our participant id; null until joined. @type {string|null} */
    this.participantId = null;
    /** Room info from `joined`: {name, mode, capacity}. @type {{name: string, mode: string, capacity: number}|null} */
    this.info = null;
    /** ICE servers in use (from `joined`, refreshed on resume). @type {RTCIceServer[]} */
    this.iceServers = [];
    /** Seconds the TURN credentials in iceServers are valid for. @type {number|null} */
    this.iceServersTtl = null;
    /** The MediaStream being sent (null: receive only). @type {MediaStream|null} */
    this.localStream = opts.localStream || null;
    /** Last measured signaling round trip (ping/pong), in ms. @type {number|null} */
    this.rttMs = null;
  }

  // --- public API ---------------------------------------------------------------------------

  /** Room name. @type {string} */
  get name() {
    return this._opts.room;
  }

  /** 'mesh' or 'sfu' (from `joined.room.mode`). @type {string|null} */
  get mode() {
    return this.info ? this.info.mode : null;
  }

  /**
   * Signaling state: 'connecting', 'connected', 'reconnecting' (dropped, trying to resume) or
   * 'closed'.
   * @type {'connecting'|'connected'|'reconnecting'|'closed'}
   */
  get state() {
    return this._state;
  }

  /**
   * Sfu mode: the id of the loudest participant as last announced (`active-speaker`), possibly
   * our own; null before the first announcement and in mesh mode. @type {string|null}
   */
  get activeSpeaker() {
    return this._activeSpeaker || null;
  }

  /** The remote participants, by id. @type {Map<string, Participant>} */
  get participants() {
    return this._participants;
  }

  /** The ICE transport policy in use. @type {RTCIceTransportPolicy} */
  get iceTransportPolicy() {
    return this._opts.iceTransportPolicy;
  }

  /**
   * `addEventListener` shorthand. @param {string} type @param {(detail: any, ev: CustomEvent) => void} fn
   * @returns {() => void} a function that removes the listener.
   */
  on(type, fn) {
    const listener = (ev) => fn(ev.detail, ev);
    this.addEventListener(type, listener);
    return () => this.removeEventListener(type, listener);
  }

  /**
   * Leaves the room (`leave`, waits up to 2 s for `left`), closes every connection. Does not
   * stop the local stream's tracks (they belong to the caller). Idempotent.
   * @returns {Promise<void>}
   */
  async leave() {
    if (this._closed) return;
    if (!this._leaving) {
      this._leaving = (async () => {
        const ws = this._ws;
        if (ws && ws.readyState === WebSocket.OPEN) {
          const done = new Promise((resolve) => {
            this._onLeft = resolve;
            ws.addEventListener('close', resolve, { once: true });
            setTimeout(resolve, 2000);
          });
          this._send({ type: 'leave' });
          await done;
        }
        this._finish('left');
      })();
    }
    return this._leaving;
  }

  /** Enables or disables (sends silence) the local audio tracks. @param {boolean} enabled */
  setAudioEnabled(enabled) {
    for (const t of this.localStream ? this.localStream.getAudioTracks() : []) t.enabled = !!enabled;
  }

  /** Enables or disables (sends black frames) the local video tracks. @param {boolean} enabled */
  setVideoEnabled(enabled) {
    for (const t of this.localStream ? this.localStream.getVideoTracks() : []) t.enabled = !!enabled;
  }

  /** True unless every local audio track is disabled. @type {boolean} */
  get audioEnabled() {
    const tracks = this.localStream ? this.localStream.getAudioTracks() : [];
    return tracks.some((t) => t.enabled);
  }

  /** True unless every local video track is disabled. @type {boolean} */
  get videoEnabled() {
    const tracks = this.localStream ? this.localStream.getVideoTracks() : [];
    return tracks.some((t) => t.enabled);
  }

  /**
   * WebRTC statistics. Mesh mode: one entry per remote participant (its RTCPeerConnection).
   * Sfu mode: two entries, `pc` 'publish' and 'subscribe', with `participant` null.
   * @returns {Promise<Array<{participant: Participant|null, pc?: string, report: RTCStatsReport}>>}
   */
  async getStats() {
    return this._media ? this._media.getStats() : [];
  }

  /**
   * Sends `data` (a string, or an ArrayBuffer / typed array) to every other participant on the
   * room's data channel; they get a `data` event. Sfu mode only.
   * @param {string|ArrayBuffer|ArrayBufferView} data
   * @returns {boolean} false if the channel is not open yet (nothing sent).
   * @throws {TurnkeyError} code 'unsupported' in a mesh room.
   */
  sendData(data) {
    if (!this._media || typeof this._media.sendData !== 'function') {
      throw new TurnkeyError('sendData: data messages need an sfu room', { code: 'unsupported' });
    }
    return this._media.sendData(data);
  }

  /**
   * Shares a screen (sfu mode): a second video track on the publish connection, sent as one
   * layer (no simulcast) with `contentHint = 'detail'`, announced as source `screen`; the others
   * get a `screen-track` event. Without `track`, asks the browser (`getDisplayMedia`); a track
   * given (a canvas `captureStream()` track, say) is sent as it is and not stopped by
   * {@link TurnkeyRoom#stopScreenShare}.
   * @param {MediaStreamTrack} [track] a video track to share instead of asking the browser.
   * @returns {Promise<MediaStreamTrack>} the shared track.
   * @throws {TurnkeyError} code 'unsupported' in a mesh room, 'wrong_state' while sharing.
   */
  async startScreenShare(track) {
    if (!this._media || typeof this._media.startScreenShare !== 'function') {
      throw new TurnkeyError('startScreenShare: screen sharing needs an sfu room', { code: 'unsupported' });
    }
    return this._media.startScreenShare(track);
  }

  /**
   * Stops our screen share (sfu mode): the track leaves the publish connection and the others
   * get `screen-track-removed`. Does nothing when not sharing.
   * @returns {boolean} true if a share was stopped.
   */
  stopScreenShare() {
    if (!this._media || typeof this._media.stopScreenShare !== 'function') return false;
    return this._media.stopScreenShare();
  }

  /** @returns {MediaStreamTrack|null} the screen track we share, if any. */
  get screenTrack() {
    return (this._media && this._media.screenTrack) || null;
  }

  /**
   * The largest video this participant wants to receive (sfu mode: the SFU forwards the highest
   * simulcast layer not above it that the bandwidth allows). Mesh mode: does nothing.
   * @param {{maxHeight: number, trackId?: string}} pref maxHeight in pixels, 0 pauses video;
   *   trackId: only that remote video track (default every video track).
   * @returns {boolean} true if it was sent.
   */
  setVideoPreference(pref) {
    if (!this._media || typeof this._media.setVideoPreference !== 'function') return false;
    return this._media.setVideoPreference(/** @type {{maxHeight: number, trackId?: string}} */ (pref || {}));
  }

  /**
   * Mesh mode: the RTCPeerConnection carrying participant `id`'s media. Sfu mode: 'publish' or
   * 'subscribe' name our two connections to the SFU; a participant id gives the subscribe one.
   * @param {string} id @returns {RTCPeerConnection|null}
   */
  peerConnection(id) {
    return this._media ? this._media.peerConnection(id) : null;
  }

  // --- signaling connection -----------------------------------------------------------------

  /** @param {'connecting'|'connected'|'reconnecting'|'closed'} state */
  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit('state', { state });
  }

  /** Dispatches the event `type` (see the class comment). @param {string} type @param {any} detail */
  _emit(type, detail) {
    emit(this, type, detail);
  }

  /**
   * Sends a signaling message; false (and dropped) when not connected.
   * @param {{type: string, [key: string]: any}} msg
   * @returns {boolean}
   */
  _send(msg) {
    // While reconnecting, outgoing messages are dropped: the ICE restart after the resume
    // renegotiates everything anyway.
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this._state !== 'connected') {
      this._log(`not connected, dropped outgoing ${msg.type}`);
      return false;
    }
    ws.send(JSON.stringify(msg));
    return true;
  }

  /** @returns {Promise<string>} */
  async _token() {
    const t = this._opts.token;
    return typeof t === 'function' ? await t() : t;
  }

  /**
   * Opens a WebSocket and sends `join` (with `resume` when resuming). Resolves after `joined`,
   * rejects on an `error` frame, a close, or the join timeout.
   * @param {boolean} resume
   * @returns {Promise<void>}
   */
  async _connect(resume) {
    const token = await this._token();
    return new Promise((resolve, reject) => {
      let settled = false;
      let ws;
      try {
        ws = new WebSocket(this._opts.url);
      } catch (e) {
        reject(new TurnkeyError(`cannot open ${this._opts.url}: ${e}`, { code: 'closed' }));
        return;
      }
      const timer = setTimeout(() => fail(new TurnkeyError(`no joined within ${this._opts.joinTimeoutMs} ms`, { code: 'timeout' })), this._opts.joinTimeoutMs);
      const fail = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          /* ignore */
        }
        reject(err);
      };
      ws.onopen = () => {
        const join = { type: 'join', v: PROTOCOL_VERSION, room: this._opts.room, token };
        if (this._opts.name) join.name = this._opts.name;
        if (resume) join.resume = this._resumeToken;
        ws.send(JSON.stringify(join));
      };
      ws.onerror = () => {}; // a close event follows
      ws.onclose = (ev) => {
        fail(new TurnkeyError(`connection closed before joined (close ${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`, { code: FINAL_CLOSE_CODES.has(ev.code) ? ev.code : 'closed', closeCode: ev.code }));
      };
      ws.onmessage = (ev) => {
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          return;
        }
        if (msg.type === 'error') {
          fail(new TurnkeyError(`join refused: ${msg.code} ${msg.message}`, { code: msg.code, request: msg.request }));
          return;
        }
        if (msg.type !== 'joined') {
          this._log(`before joined: ignoring ${msg.type}`);
          return;
        }
        if (settled) return;
        if (this._closed || (resume && this._leaving)) {
          // leave() was called while this resume was under way: finish leaving on it.
          ws.send(JSON.stringify({ type: 'leave' }));
          fail(new TurnkeyError('left while resuming', { code: 'closed' }));
          return;
        }
        settled = true;
        clearTimeout(timer);
        try {
          this._attach(ws);
          this._onJoined(msg, resume);
          resolve();
        } catch (e) {
          this._detach();
          try {
            ws.send(JSON.stringify({ type: 'leave' }));
            ws.close();
          } catch {
            /* ignore */
          }
          reject(e);
        }
      };
    });
  }

  /** @param {WebSocket} ws */
  _attach(ws) {
    this._ws = ws;
    this._lastFrameAt = Date.now();
    ws.onmessage = (ev) => {
      this._lastFrameAt = Date.now();
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        this._log('non-JSON frame ignored');
        return;
      }
      try {
        this._onMessage(msg);
      } catch (e) {
        this._emit('error', { error: e });
      }
    };
    ws.onclose = (ev) => {
      if (this._ws !== ws) return;
      this._detach();
      this._onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {};
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => this._keepalive(), this._opts.pingIntervalMs);
  }

  _detach() {
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    return ws;
  }

  _keepalive() {
    // The server pongs every ping, so silence for 2.5 periods means a dead connection that the
    // browser has not noticed yet (no FIN/RST seen): drop it and resume.
    if (Date.now() - this._lastFrameAt > this._opts.pingIntervalMs * 2.5) {
      this._log('signaling connection silent, reconnecting');
      const ws = this._detach();
      try {
        ws.close();
      } catch {
        /* ignore */
      }
      this._onClose(4002, 'client: no pong');
      return;
    }
    this._send({ type: 'ping', ts: Date.now() });
  }

  /** @param {any} msg a `joined` frame @param {boolean} resume */
  _onJoined(msg, resume) {
    const firstJoin = this.participantId === null;
    if (!resume || !msg.resumed || msg.participantId !== this.participantId) {
      if (!firstJoin) {
        // A fresh session instead of the old one: start over. Our old session stays in the
        // room until its grace period ends; it is not someone to connect to.
        this._formerIds.add(this.participantId);
        for (const p of [...this._participants.values()]) this._removeParticipant(p.id, 'gone');
        if (this._media) this._media.close();
        this._media = null;
      }
    }
    this.participantId = msg.participantId;
    this._resumeToken = msg.resumeToken;
    const info = msg.room || {};
    this.info = { name: info.name ?? this._opts.room, mode: info.mode ?? 'mesh', capacity: info.capacity ?? null };
    const ice = joinedIceServers(this._opts.iceServers, msg);
    this.iceServers = ice.iceServers;
    this.iceServersTtl = ice.ttl;
    if (!this._media) this._media = createMediaSession(this);
    this._setState('connected');

    const present = new Map((msg.participants || []).map((p) => [p.id, p]));
    present.delete(this.participantId);
    for (const id of this._formerIds) present.delete(id);
    for (const p of [...this._participants.values()]) {
      if (!present.has(p.id)) this._removeParticipant(p.id, 'gone');
    }
    // Resumed: renegotiate what we had with an ICE restart (before adding newcomers, whose
    // connections start fresh).
    if (resume && msg.resumed) this._media.restart();
    for (const p of present.values()) {
      if (!this._participants.has(p.id)) this._addParticipant(p, { initiate: true });
    }
    if (resume && msg.resumed) this._emit('resumed', {});
  }

  /** @param {any} msg a signaling frame */
  _onMessage(msg) {
    switch (msg.type) {
      case 'participant-joined': {
        const p = msg.participant;
        if (!p || p.id === this.participantId || this._formerIds.has(p.id)) break;
        const known = this._participants.get(p.id);
        if (known) {
          // Announced twice (joins raced, PROTOCOL.md): dedupe by id.
          known.name ??= p.name;
          known.identity ??= p.identity;
          break;
        }
        this._addParticipant(p, { initiate: false });
        break;
      }
      case 'participant-left':
        this._removeParticipant(msg.participantId, msg.reason || 'left');
        break;
      case 'offer':
      case 'answer':
      case 'candidate':
        if (!msg.from || this._formerIds.has(msg.from)) return;
        if (this._media) this._media.handleSignal(msg);
        break;
      case 'sfu':
        if (this._media && typeof this._media.handleSfu === 'function' && msg.msg && typeof msg.msg === 'object') {
          this._media.handleSfu(msg.msg);
        }
        break;
      case 'pong':
        if (typeof msg.ts === 'number') this.rttMs = Date.now() - msg.ts;
        break;
      case 'left':
        if (this._onLeft) this._onLeft();
        break;
      case 'room-closed':
        this._finish('room_closed', { serverReason: msg.reason });
        break;
      case 'error': {
        const error = new TurnkeyError(`${msg.request ? `${msg.request}: ` : ''}${msg.code} ${msg.message}`, { code: msg.code, request: msg.request });
        this._log(`server error ${msg.code} ${msg.message}`);
        this._emit('error', { error });
        break;
      }
      case 'joined':
        this._log('unexpected joined ignored');
        break;
      default:
        this._log(`unknown message type ${msg.type} ignored`);
    }
  }

  /** @param {number} code @param {string} [reason] */
  _onClose(code, reason) {
    if (this._closed) return;
    if (this._leaving) {
      this._finish('left');
      return;
    }
    if (FINAL_CLOSE_CODES.has(code)) {
      this._finish(FINAL_CLOSE_CODES.get(code), { code, serverReason: reason });
      return;
    }
    this._log(`signaling connection closed (${code} ${reason || ''}), resuming`);
    this._reconnect();
  }

  /** Tries to resume with backoff until the grace period is over. */
  async _reconnect() {
    if (this._reconnecting || this._closed) return;
    this._reconnecting = true;
    this._setState('reconnecting');
    const deadline = Date.now() + this._opts.resumeGraceMs;
    let delay = 250;
    let lastError = null;
    try {
      while (!this._closed && !this._leaving && Date.now() < deadline) {
        await sleep(Math.min(delay, Math.max(0, deadline - Date.now())) * (0.8 + Math.random() * 0.4));
        delay = Math.min(delay * 2, 4000);
        if (this._awayUntil && Date.now() < this._awayUntil) continue; // test hook

        if (this._closed || this._leaving) return;
        try {
          await this._connect(true);
          this._log('resumed');
          return;
        } catch (e) {
          lastError = e;
          this._log(`resume attempt failed: ${e.message}`);
          if (e.code === 4005 && this._opts.rejoin && !this._closed && !this._leaving) {
            // Too late to resume (the others were told we left): come back as a new participant.
            try {
              await this._connect(false);
              this._log(`rejoined as ${this.participantId}`);
              this._emit('rejoined', { participantId: this.participantId });
              return;
            } catch (e2) {
              this._finish('resume_failed', { error: e2 });
              return;
            }
          }
          // The server answered: retrying cannot help (4005 resume_failed, 4001...).
          if (typeof e.code === 'number') {
            this._finish(e.code === 4005 ? 'resume_failed' : 'error', { error: e });
            return;
          }
        }
      }
      if (!this._closed && !this._leaving) {
        this._finish('resume_failed', { error: lastError || new TurnkeyError('resume grace period over', { code: 'timeout' }) });
      }
    } finally {
      this._reconnecting = false;
    }
  }

  /** @param {string} reason @param {object} [extra] */
  _finish(reason, extra = {}) {
    if (this._closed) return;
    this._teardown();
    this._emit('closed', { reason, ...extra });
  }

  _teardown() {
    this._closed = true;
    const ws = this._detach();
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        /* ignore */
      }
    }
    if (this._media) this._media.close();
    this._media = null;
    for (const p of this._participants.values()) p.connectionState = 'closed';
    this._setState('closed');
  }

  /**
   * @param {{id: string, identity?: string, name?: string}} p
   * @param {{initiate: boolean}} how initiate: we make the first offer (they were in the room
   *   before us); otherwise we wait for theirs (see PeerLink).
   */
  _addParticipant(p, how) {
    /** @type {Participant} */
    const participant = {
      id: p.id,
      identity: p.identity,
      name: p.name,
      stream: new MediaStream(),
      connectionState: 'new',
    };
    this._participants.set(p.id, participant);
    // The media layer first: in an sfu room the participant's state is that of our (already
    // connected) subscribe connection, and listeners of `participant-joined` see it.
    if (this._media) this._media.addParticipant(participant, how);
    this._emit('participant-joined', { participant });
    return participant;
  }

  /** @param {string} id @param {string} reason */
  _removeParticipant(id, reason) {
    const participant = this._participants.get(id);
    if (!participant) return;
    this._participants.delete(id);
    if (this._media) this._media.removeParticipant(id);
    participant.connectionState = 'closed';
    this._emit('participant-left', { participant, reason });
  }

  /**
   * Test hook: drops the signaling WebSocket as a network failure would; the client resumes,
   * after `awayMs` (the network is "down" until then). `expired`: as if the grace period were
   * over (the resume is refused and the client rejoins).
   * @param {number} [awayMs]
   * @param {boolean} [expired]
   */
  _simulateDisconnect(awayMs = 0, expired = false) {
    const ws = this._detach();
    if (!ws) return;
    this._awayUntil = Date.now() + awayMs;
    if (expired) this._resumeToken = 'r_expired';
    try {
      ws.close(3000, 'simulated disconnect');
    } catch {
      /* ignore */
    }
    this._onClose(1006, 'simulated disconnect');
  }
}
