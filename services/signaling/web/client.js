// turnkey signaling client: a small ES module (no framework, no build step) that joins a room on
// a turnkey signaling server and connects the participants with WebRTC.
//
// Wire contract: services/signaling/PROTOCOL.md (protocol version 1). Served by the signaling server as
// `GET /client.js`, so a page on the same server can `import { TurnkeyRoom } from '/client.js'`.
//
//   import { TurnkeyRoom, requestJoin } from '/client.js';
//   const grant = await requestJoin({ room: 'demo', identity: 'alice', apiKey: 'KEY:SECRET' });
//   const localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
//   const room = await TurnkeyRoom.join({ url: grant.url, token: grant.token, room: 'demo',
//                                        name: 'Alice', localStream });
//   room.addEventListener('track', (e) => { videoOf(e.detail.participant).srcObject = e.detail.stream; });
//   room.addEventListener('participant-left', (e) => removeTile(e.detail.participant.id));
//   ...
//   await room.leave();
//
// Media topology. A `mesh` room (2-4 people) keeps one RTCPeerConnection per remote participant
// (class MeshSession). An `sfu` room keeps two RTCPeerConnections to its SFU node (class
// SfuSession, protocol in services/sfu/PROTOCOL.md, carried in `sfu` signaling messages): a publish PC
// (we offer our audio, our simulcast video and the `room` data channel) and a subscribe PC (the
// SFU offers everyone else's tracks; each track's stream id is its publisher's participant id).
// createMediaSession picks the implementation from `joined.room.mode`; the events (`track`,
// `track-removed`, `connection-state`, `data`...) and methods are the same in both modes.
//
// Negotiation follows the W3C "perfect negotiation" pattern
// (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example): both ends may offer at any
// time; on a collision (glare) the *polite* end rolls its own offer back and answers, the
// *impolite* end ignores the incoming offer. Politeness must be decided the same way at both
// ends without talking, and must survive a resumed session, so it is an id comparison: towards
// a remote participant R, this participant is polite iff its participantId sorts before R's
// (JavaScript string `<`). Participant ids are assigned by the server and stable across resume.
//
// Glare is avoided where it is predictable: the newcomer to a room makes the first offer to each
// participant already there, who hold their tracks back until it comes.
//
// Candidates are trickled as they are gathered, and end-of-candidates is sent as
// `candidate: null`. A signaling message that never arrives (e.g. dropped by the server while the
// receiver was reconnecting) cannot wedge a link: an offer left unanswered for
// `offerTimeoutMs` is rolled back and sent again. A connection that does not come up gets an
// ICE restart, then a new RTCPeerConnection (see PeerLink).
//
// Signaling resume: after an unexpected close (anything but the final close codes below) the
// client reconnects with backoff for up to `resumeGraceMs` and sends `join` with `resume`; on
// `joined` with `resumed: true` it restarts ICE on every connection (fresh TURN credentials from
// the new `joined.iceServers`). Messages it would send while disconnected are dropped; the ICE
// restart renegotiates anyway.

/** Protocol version spoken by this client. */
export const PROTOCOL_VERSION = 1;

/** Close codes after which the client does not try to resume (PROTOCOL.md, "Close codes"). */
const FINAL_CLOSE_CODES = new Map([
  [1000, 'left'],
  [4001, 'refused'],
  [4008, 'rate_limited'],
  [4010, 'room_closed'],
  [4011, 'replaced'],
]);

/**
 * An error from the signaling server (its `code` is the protocol's numeric error code, e.g.
 * 4001, 4005, 4009) or from the client (string codes such as 'timeout', 'closed',
 * 'unsupported', 'http', 'negotiation').
 */
export class TurnkeyError extends Error {
  /**
   * @param {string} message
   * @param {{code?: number|string, closeCode?: number, request?: string, status?: number}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = 'TurnkeyError';
    /** @type {number|string|undefined} */
    this.code = info.code;
    /** @type {number|undefined} WebSocket close code, if the error came with a close. */
    this.closeCode = info.closeCode;
    /** @type {string|undefined} The request type an `error` frame answered. */
    this.request = info.request;
    /** @type {number|undefined} HTTP status, for errors of requestJoin. */
    this.status = info.status;
  }
}

/**
 * Asks the session server for a join grant: `POST {baseUrl}/v1/rooms/{room}/join`.
 *
 * Authenticate with an API key (`apiKey: 'KEY:SECRET'`, sent as HTTP Basic; `identity` is then
 * required) or with an access token for that room (`bearer: 'eyJ...'`). API keys are server
 * secrets: a browser should only ever hold one for local development.
 *
 * @param {object} opts
 * @param {string} opts.room Room name.
 * @param {string} [opts.baseUrl] Session server origin; default: this page's origin.
 * @param {string} [opts.apiKey] `KEY:SECRET`.
 * @param {string} [opts.bearer] An access token for this room.
 * @param {string} [opts.identity] Participant identity (required with apiKey).
 * @param {string} [opts.name] Display name.
 * @param {'mesh'|'sfu'} [opts.mode] Room mode if the join creates the room.
 * @param {number} [opts.capacity] Room capacity if the join creates the room.
 * @returns {Promise<{url: string, token: string, iceServers?: RTCIceServer[], iceServersTtl?: number, room?: any}>}
 *   `url` is the WebSocket endpoint for {@link TurnkeyRoom.join}, `token` the access token.
 */
export async function requestJoin(opts) {
  const base = (opts.baseUrl || globalThis.location?.origin || '').replace(/\/+$/, '');
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  let body = {};
  if (opts.apiKey) {
    if (!opts.identity) throw new TurnkeyError('requestJoin: identity is required with an API key', { code: 'bad_request' });
    headers.authorization = `Basic ${btoa(opts.apiKey)}`;
    body = { identity: opts.identity };
    if (opts.name) body.name = opts.name;
    if (opts.mode) body.mode = opts.mode;
    if (opts.capacity) body.capacity = opts.capacity;
  } else if (opts.bearer) {
    headers.authorization = `Bearer ${opts.bearer}`;
  } else {
    throw new TurnkeyError('requestJoin: give apiKey or bearer', { code: 'bad_request' });
  }
  const res = await fetch(`${base}/v1/rooms/${encodeURIComponent(opts.room)}/join`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  if (!res.ok) {
    const err = data && data.error;
    throw new TurnkeyError(
      `POST /v1/rooms/${opts.room}/join: HTTP ${res.status}${err ? ` ${err.code}: ${err.message}` : ` ${text.slice(0, 200)}`}`,
      { code: err ? err.code : 'http', status: res.status },
    );
  }
  if (!data || typeof data.url !== 'string' || typeof data.token !== 'string') {
    throw new TurnkeyError(`POST /v1/rooms/${opts.room}/join: answer has no url/token: ${text.slice(0, 200)}`, { code: 'http', status: res.status });
  }
  return data;
}

/**
 * A remote participant of the room.
 * @typedef {object} Participant
 * @property {string} id Participant id (stable across a resumed session).
 * @property {string} [identity] The `sub` of its access token.
 * @property {string} [name] Display name.
 * @property {MediaStream} stream Its remote tracks (one MediaStream per participant; tracks are
 *   added as they arrive, so a <video> can take it as srcObject right away).
 * @property {RTCPeerConnectionState} connectionState State of the media connection to it
 *   (mesh mode: of the RTCPeerConnection with it; sfu mode: of our subscribe connection to the
 *   SFU, which carries everyone's media).
 */

/**
 * Events (all CustomEvent; the payload is `event.detail`):
 * - `state` {state}: the signaling state, see {@link TurnkeyRoom#state}.
 * - `participant-joined` {participant}: someone entered (also fired for participants found on
 *   resume that joined while we were away).
 * - `participant-left` {participant, reason}: `left`, `timeout`, `node-lost`, `removed`, or
 *   `gone` (found missing on resume).
 * - `track` {participant, track, stream}: a remote track arrived; `stream` is participant.stream.
 * - `track-removed` {participant, track, stream}.
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

  /** @private Use TurnkeyRoom.join. */
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
      iceTransportPolicy: 'all',
      simulcast: true,
      ...opts,
    };
    this._log = typeof opts.log === 'function' ? opts.log : () => {};
    /** @type {WebSocket|null} */
    this._ws = null;
    this._state = 'connecting';
    this._resumeToken = null;
    this._pingTimer = null;
    this._lastFrameAt = 0;
    this._leaving = null;
    this._closed = false;
    this._reconnecting = false;
    this._media = null;
    /** @type {Map<string, Participant>} */
    this._participants = new Map();
    /** Our own participant ids of sessions replaced by a rejoin. */
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
   * The largest video this participant wants to receive (sfu mode: the SFU forwards the highest
   * simulcast layer not above it that the bandwidth allows). Mesh mode: does nothing.
   * @param {{maxHeight: number, trackId?: string}} pref maxHeight in pixels, 0 pauses video;
   *   trackId: only that remote video track (default every video track).
   * @returns {boolean} true if it was sent.
   */
  setVideoPreference(pref) {
    if (!this._media || typeof this._media.setVideoPreference !== 'function') return false;
    return this._media.setVideoPreference(pref || {});
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

  _setState(state) {
    if (this._state === state) return;
    this._state = state;
    this._emit('state', { state });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

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

  async _token() {
    const t = this._opts.token;
    return typeof t === 'function' ? await t() : t;
  }

  /**
   * Opens a WebSocket and sends `join` (with `resume` when resuming). Resolves after `joined`,
   * rejects on an `error` frame, a close, or the join timeout.
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
    this.iceServers = this._opts.iceServers || msg.iceServers || [];
    this.iceServersTtl = msg.iceServersTtl ?? null;
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

/**
 * The media side of a room (the SFU seam). A TurnkeyRoom owns exactly one, chosen by the room's
 * mode, and calls it as participants come and go and as signaling messages arrive:
 * - addParticipant(participant), removeParticipant(id)
 * - handleSignal(msg): an `offer`, `answer` or `candidate` frame (`from`, `sdp` / `candidate`)
 * - restart(): the signaling session was resumed; renegotiate with an ICE restart using
 *   room.iceServers (sfu mode: ask the SFU to resync)
 * - getStats(), peerConnection(id), close()
 * - sfu mode only: handleSfu(msg) (the `msg` of an `sfu` frame), sendData(data),
 *   setVideoPreference({maxHeight, trackId})
 * A MeshSession sends to and receives from each participant directly. An SfuSession keeps a
 * publish and a subscribe RTCPeerConnection to the SFU and maps the subscribed tracks to
 * participants by their stream id (services/sfu/PROTOCOL.md).
 * @typedef {object} MediaSession
 */

/** @returns {MediaSession} */
function createMediaSession(room) {
  switch (room.info.mode) {
    case 'mesh':
      return new MeshSession(room);
    case 'sfu':
      return new SfuSession(room);
    default:
      throw new TurnkeyError(`unknown room mode ${room.info.mode}`, { code: 'bad_request' });
  }
}

/** Simulcast layers of the published video (services/sfu/PROTOCOL.md: rids q, h, f). */
const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
  { rid: 'f', maxBitrate: 1500000 },
];

/**
 * Smallest capture, in pixels, that Chromium sends as all three simulcast layers. It limits the
 * layer count by resolution (3 layers from 960x540, 2 from 480x270, 1 below) and drops the top
 * layers, not the bottom ones: a 320x240 capture with three encodings goes out as one 80x60
 * layer. Smaller captures are therefore sent as one layer at full resolution.
 */
const SIMULCAST_MIN_PIXELS = 960 * 540;

/** Whether `track` is large enough for three simulcast layers (true when it cannot tell). */
function simulcastFits(track) {
  const s = typeof track.getSettings === 'function' ? track.getSettings() : {};
  return !(s.width > 0 && s.height > 0) || s.width * s.height >= SIMULCAST_MIN_PIXELS;
}

/**
 * Sfu mode (services/sfu/PROTOCOL.md): a publish RTCPeerConnection (we offer: the local audio track, the
 * local video track as simulcast, the `room` data channel) and a subscribe RTCPeerConnection
 * (the SFU offers every other participant's tracks, we answer). Every SFU message travels in an
 * `sfu` signaling frame. Tracks are mapped to participants by their stream id (the msid, which is
 * the publisher's participant id) or else by `offer.tracks[].mid`; a track that arrives before
 * its participant is announced waits for it.
 */
class SfuSession {
  constructor(room) {
    this.room = room;
    this.closed = false;
    this.log = (m) => room._log(`[sfu] ${m}`);
    this.queue = Promise.resolve();
    /** Subscribed tracks by transceiver mid: {participantId, track}. */
    this.tracks = new Map();
    /** Tracks whose participant is not in the list yet, by participant id: [track]. */
    this.orphans = new Map();
    /** mid -> {trackId, participantId, kind} of the last subscribe offer. */
    this.offered = new Map();
    this.videoSender = null;
    this.offerTimer = null;
    const config = {
      iceServers: room.iceServers,
      iceTransportPolicy: room.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
    };
    this.pub = new RTCPeerConnection(config);
    this.sub = new RTCPeerConnection(config);
    this.channel = this.pub.createDataChannel('room');
    this.channel.binaryType = 'arraybuffer';
    this.channel.onmessage = (ev) => this.onData(ev.data);
    const local = room.localStream;
    if (local) {
      const audio = local.getAudioTracks()[0];
      if (audio) this.pub.addTransceiver(audio, { direction: 'sendonly', streams: [local] });
      const video = local.getVideoTracks()[0];
      if (video) {
        const init = { direction: 'sendonly', streams: [local] };
        if (room._opts.simulcast !== false && simulcastFits(video)) init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
        this.videoSender = this.pub.addTransceiver(video, init).sender;
      }
    }
    this.pub.onnegotiationneeded = () => this.enqueue(() => this.publishOffer());
    for (const [name, pc] of [['publish', this.pub], ['subscribe', this.sub]]) {
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

  /** Runs `task` after the previous ones (offers and answers must not interleave). */
  enqueue(task) {
    this.queue = this.queue
      .then(() => (this.closed ? undefined : task()))
      .catch((e) => this.fail('negotiation', e));
    return this.queue;
  }

  fail(what, e) {
    if (this.closed) return;
    this.log(`${what} failed: ${e && e.message ? e.message : e}`);
    this.room._emit('error', { error: new TurnkeyError(`sfu: ${what} failed: ${e && e.message ? e.message : e}`, { code: 'negotiation' }) });
  }

  send(msg) {
    return this.room._send({ type: 'sfu', msg });
  }

  /** Offers the publish PC (first offer, renegotiation, ICE restart); retried if unanswered. */
  async publishOffer() {
    const pc = this.pub;
    if (this.closed || pc.signalingState !== 'stable') return;
    await pc.setLocalDescription(await pc.createOffer());
    this.send({ type: 'offer', sdp: pc.localDescription.sdp });
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

  /** A message of the SFU (services/sfu/PROTOCOL.md, "SFU -> client"). */
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

  /** Applies a subscribe offer, answers it, and reports the tracks it dropped. */
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

  onTrack(ev) {
    if (this.closed) return;
    const mid = ev.transceiver && ev.transceiver.mid;
    const info = mid != null ? this.offered.get(mid) : undefined;
    const participantId = (ev.streams && ev.streams[0] && ev.streams[0].id) || (info && info.participantId);
    if (!participantId) {
      this.log(`track ${ev.track.id} without a participant ignored`);
      return;
    }
    const known = mid != null ? this.tracks.get(mid) : undefined;
    if (known && known.participantId !== participantId) this.dropTrack(mid);
    if (mid != null) this.tracks.set(mid, { participantId, track: ev.track });
    const participant = this.room.participants.get(participantId);
    if (!participant) {
      if (participantId === this.room.participantId) return; // never our own media
      const list = this.orphans.get(participantId) || [];
      list.push(ev.track);
      this.orphans.set(participantId, list);
      return;
    }
    this.deliver(participant, ev.track);
  }

  deliver(participant, track) {
    const stream = participant.stream;
    if (!stream.getTrackById(track.id)) stream.addTrack(track);
    this.room._emit('track', { participant, track, stream });
  }

  dropTrack(mid) {
    const entry = this.tracks.get(mid);
    this.tracks.delete(mid);
    if (!entry) return;
    const orphans = this.orphans.get(entry.participantId);
    if (orphans) this.orphans.set(entry.participantId, orphans.filter((t) => t !== entry.track));
    const participant = this.room.participants.get(entry.participantId);
    if (!participant) return;
    const stream = participant.stream;
    if (!stream.getTrackById(entry.track.id)) return;
    stream.removeTrack(entry.track);
    this.room._emit('track-removed', { participant, track: entry.track, stream });
  }

  /** `layers`: only the simulcast layers in `active` are watched; pause the others. */
  async setLayers(active) {
    const sender = this.videoSender;
    if (!sender) return;
    const params = sender.getParameters();
    if (!params.encodings || params.encodings.length < 2) return;
    let changed = false;
    for (const e of params.encodings) {
      if (!e.rid) continue;
      const on = active.includes(e.rid);
      if (e.active !== on) {
        e.active = on;
        changed = true;
      }
    }
    if (changed) await sender.setParameters(params);
  }

  /** Data channel message: JSON text {from, data}, or binary [n][n bytes of id][payload]. */
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

  sendData(data) {
    if (this.closed || this.channel.readyState !== 'open') return false;
    this.channel.send(data);
    return true;
  }

  setVideoPreference(pref) {
    const maxHeight = Math.max(0, Math.floor(Number(pref.maxHeight)));
    if (!Number.isFinite(maxHeight)) return false;
    const msg = { type: 'video', maxHeight };
    if (typeof pref.trackId === 'string') msg.trackId = pref.trackId;
    return this.send(msg);
  }

  addParticipant(participant) {
    participant.connectionState = this.sub.connectionState;
    const waiting = this.orphans.get(participant.id) || [];
    this.orphans.delete(participant.id);
    for (const track of waiting) this.deliver(participant, track);
  }

  removeParticipant(id) {
    this.orphans.delete(id);
    for (const [mid, e] of this.tracks) {
      if (e.participantId === id) this.tracks.delete(mid);
    }
  }

  handleSignal(msg) {
    // Mesh signaling has no place in an sfu room.
    this.log(`${msg.type} from ${msg.from} ignored in an sfu room`);
  }

  /** Resumed signaling: frames may have been lost, ask the SFU for its current offer. */
  restart() {
    for (const pc of [this.pub, this.sub]) {
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.room.iceServers });
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

  async getStats() {
    const out = [];
    for (const [pc, conn] of [['publish', this.pub], ['subscribe', this.sub]]) {
      try {
        out.push({ participant: null, pc, report: await conn.getStats() });
      } catch {
        /* closed meanwhile */
      }
    }
    return out;
  }

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
    this.tracks.clear();
    this.orphans.clear();
  }
}

/** Mesh mode: one PeerLink (RTCPeerConnection) per remote participant. */
class MeshSession {
  constructor(room) {
    this.room = room;
    /** @type {Map<string, PeerLink>} */
    this.links = new Map();
  }

  addParticipant(participant, how) {
    if (this.links.has(participant.id)) return;
    const polite = this.room.participantId < participant.id;
    this.links.set(participant.id, new PeerLink(this.room, participant, polite, how.initiate));
  }

  removeParticipant(id) {
    const link = this.links.get(id);
    if (link) link.close();
    this.links.delete(id);
  }

  handleSignal(msg) {
    let link = this.links.get(msg.from);
    if (!link) {
      if (msg.type !== 'offer') return; // stale answer/candidate of a closed link
      // An offer from someone we have not been told about yet: meet them now.
      this.room._addParticipant({ id: msg.from }, { initiate: false });
      link = this.links.get(msg.from);
      if (!link) return;
    }
    link.handleSignal(msg);
  }

  restart() {
    for (const link of this.links.values()) link.restartIce();
  }

  async getStats() {
    const out = [];
    for (const link of this.links.values()) {
      try {
        out.push({ participant: link.participant, report: await link.pc.getStats() });
      } catch {
        /* closed meanwhile */
      }
    }
    return out;
  }

  peerConnection(id) {
    const link = this.links.get(id);
    return link ? link.pc : null;
  }

  close() {
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }
}

/**
 * The RTCPeerConnection with one remote participant, negotiated the perfect-negotiation way.
 *
 * Glare is avoided where it is predictable: when someone joins, the newcomer makes the first
 * offer (`initiate`) and the participants already in the room hold their tracks back until that
 * offer arrives, then add them before answering (they ride on the offered transceivers, so one
 * offer/answer sets up both directions). Collisions that remain (both ends restarting ICE...)
 * are resolved by politeness.
 *
 * Recovery, escalating, driven by the impolite end so that two recoveries never collide: a
 * negotiated connection that is not connected after connectTimeoutMs gets an ICE restart; if it
 * is still not connected connectTimeoutMs after that, the RTCPeerConnection is replaced by a new
 * one, which offers. An offer whose DTLS fingerprint differs from the current remote description
 * comes from a new RTCPeerConnection at the other end, so the receiving end replaces its own
 * before answering. (Chromium can leave the polite end of a collision with an ICE agent that
 * never gathers a candidate, even across an ICE restart: only a new RTCPeerConnection helps.)
 */
class PeerLink {
  constructor(room, participant, polite, initiate) {
    this.room = room;
    this.participant = participant;
    this.polite = polite;
    this.closed = false;
    this.queue = Promise.resolve();
    /** Debug counters (read by tests): candidates of the current connection, resets overall. */
    this.counts = { gathered: 0, received: 0, added: 0, refused: 0, iceRestarts: 0, resets: 0 };
    const log = room._log;
    this.log = (m) => log(`[${participant.id}] ${m}`);
    this.createPc(initiate);
    this.watchdog = setInterval(() => this.checkConnected(), 2000);
  }

  /**
   * A new RTCPeerConnection (the first, or a replacement). initiate: add the local tracks now,
   * which makes it offer; otherwise hold them until the remote offer comes (2.5 or 6 s at most).
   */
  createPc(initiate) {
    const room = this.room;
    const participant = this.participant;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.iceRestarted = false;
    /** Remote candidates not applicable yet (see onCandidate). */
    this.pendingCandidates = [];
    Object.assign(this.counts, { gathered: 0, received: 0, added: 0, refused: 0 });
    const pc = new RTCPeerConnection({
      iceServers: room.iceServers,
      iceTransportPolicy: room.iceTransportPolicy,
      bundlePolicy: 'max-bundle',
    });
    this.pc = pc;
    const current = () => pc === this.pc && !this.closed;
    pc.onnegotiationneeded = () => {
      if (current()) this.negotiate();
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!current()) return;
      if (candidate) this.counts.gathered++;
      else this.log(`gathering complete: ${this.counts.gathered} candidates`);
      room._send({ type: 'candidate', to: participant.id, candidate: candidate ? candidate.toJSON() : null });
    };
    pc.ontrack = ({ track }) => {
      if (!current()) return;
      const stream = participant.stream;
      if (!stream.getTrackById(track.id)) stream.addTrack(track);
      track.addEventListener('ended', () => this.dropTrack(track));
      room._emit('track', { participant, track, stream });
    };
    pc.onconnectionstatechange = () => {
      if (!current()) return;
      participant.connectionState = pc.connectionState;
      this.log(`connection ${pc.connectionState}`);
      if (pc.connectionState === 'connected') this.iceRestarted = false;
      room._emit('connection-state', { participant, state: pc.connectionState });
    };
    pc.oniceconnectionstatechange = () => {
      if (!current() || pc.iceConnectionState !== 'failed' || this.polite) return;
      this.log('ICE failed, restarting ICE');
      this.iceRestarted = true;
      this.counts.iceRestarts++;
      pc.restartIce();
    };
    pc.onsignalingstatechange = () => {
      if (current() && pc.signalingState === 'stable') this.stableAt = Date.now();
    };
    this.stableAt = Date.now();

    this.tracksHeld = true;
    if (initiate) {
      this.addLocalTracks();
    } else {
      // Their offer normally comes within a second; do not wait forever for it. When it does
      // not come (lost, or joins raced and both ends wait), the impolite end gives up first,
      // so that the two fallback offers do not collide.
      this.holdTimer = setTimeout(() => this.addLocalTracks(), this.polite ? 6000 : 2500);
    }
  }

  /** Closes the current RTCPeerConnection and starts a new one (see the class comment). */
  replacePc(reason, initiate) {
    this.log(`replacing the connection: ${reason}`);
    this.counts.resets++;
    clearTimeout(this.offerTimer);
    clearTimeout(this.holdTimer);
    this.pc.close();
    for (const t of this.participant.stream.getTracks()) this.dropTrack(t);
    this.participant.connectionState = 'new';
    this.room._emit('connection-state', { participant: this.participant, state: 'new' });
    this.createPc(initiate);
  }

  dropTrack(track) {
    const stream = this.participant.stream;
    if (!stream.getTrackById(track.id)) return;
    stream.removeTrack(track);
    this.room._emit('track-removed', { participant: this.participant, track, stream });
  }

  /** Adds the local tracks (once); without a local stream, asks to receive audio and video. */
  addLocalTracks() {
    if (!this.tracksHeld || this.closed) return;
    this.tracksHeld = false;
    clearTimeout(this.holdTimer);
    const local = this.room.localStream;
    if (local) {
      for (const track of local.getTracks()) this.pc.addTrack(track, local);
    } else if (this.pc.getTransceivers().length === 0) {
      this.pc.addTransceiver('audio', { direction: 'recvonly' });
      this.pc.addTransceiver('video', { direction: 'recvonly' });
    }
  }

  /** The connect watchdog (impolite end only, so that two recoveries never collide). */
  checkConnected() {
    const pc = this.pc;
    if (this.closed || this.polite || this.makingOffer) return;
    if (pc.signalingState !== 'stable' || !pc.remoteDescription) return;
    if (!['new', 'connecting', 'failed'].includes(pc.connectionState)) return;
    const limit = this.room._opts.connectTimeoutMs;
    if (Date.now() - this.stableAt < limit) return;
    this.enqueue(async () => {
      if (this.closed || pc !== this.pc) return;
      if (this.iceRestarted) {
        this.replacePc(`still ${pc.connectionState} ${limit} ms after an ICE restart`, true);
        return;
      }
      this.log(`still ${pc.connectionState} ${limit} ms after negotiating, restarting ICE`);
      this.iceRestarted = true;
      this.counts.iceRestarts++;
      this.stableAt = Date.now();
      pc.restartIce();
    });
  }

  /** Creates and sends an offer (negotiationneeded, a retry, or an ICE restart). */
  async negotiate() {
    const pc = this.pc;
    // Not while an offer is out (negotiationneeded fires again once stable, if still needed),
    // and never an offer without media: with max-bundle it is refused, and a refused local
    // description leaves a Chromium RTCPeerConnection unusable.
    if (this.closed || pc.signalingState !== 'stable' || pc.getTransceivers().length === 0) return;
    try {
      this.makingOffer = true;
      await this.setAndSendLocal(pc);
    } catch (e) {
      if (pc === this.pc) this.broken('creating an offer', e);
    } finally {
      if (pc === this.pc) this.makingOffer = false;
    }
  }

  /**
   * setLocalDescription() and send the result. It is an offer, or an answer if a remote offer
   * got in first: an offer and an answer in flight concurrently both end up sent, as what they
   * turned out to be.
   */
  async setAndSendLocal(pc) {
    await pc.setLocalDescription();
    if (pc !== this.pc || this.closed) return;
    const desc = pc.localDescription;
    this.log(`sending ${desc.type}`);
    this.room._send({ type: desc.type, to: this.participant.id, sdp: desc.sdp });
    this.offerSeq = (this.offerSeq || 0) + 1;
    if (desc.type === 'offer') this.armOfferTimer(pc, this.offerSeq);
  }

  /**
   * Rolls an offer back and offers again if it is still unanswered after offerTimeoutMs (the
   * offer or its answer was lost, e.g. dropped by the server while the other end was away; or
   * the other end is the impolite end of a collision and waits for our answer to its own offer).
   */
  armOfferTimer(pc, seq) {
    clearTimeout(this.offerTimer);
    this.offerTimer = setTimeout(() => {
      this.enqueue(async () => {
        // (pc.localDescription cannot identify the offer: it grows as candidates are gathered.)
        if (this.closed || pc !== this.pc || seq !== this.offerSeq || pc.signalingState !== 'have-local-offer') return;
        this.log('offer unanswered, rolling back and offering again');
        await pc.setLocalDescription({ type: 'rollback' });
        await this.negotiate();
      });
    }, this.room._opts.offerTimeoutMs);
  }

  enqueue(task) {
    this.queue = this.queue.then(async () => {
      const pc = this.pc;
      try {
        await task();
      } catch (e) {
        // An error of a connection replaced meanwhile does not matter.
        if (pc === this.pc) this.broken('signaling', e);
        else this.log(`error on a replaced connection ignored: ${e}`);
      }
    });
    return this.queue;
  }

  /**
   * A description was refused: Chromium keeps refusing everything on that RTCPeerConnection
   * afterwards, so replace it (at most 3 times a minute, so that an incompatibility cannot make
   * the two ends replace theirs forever).
   */
  broken(what, e) {
    if (this.closed) return;
    this.fail(what, e);
    const now = Date.now();
    this.replacedAt = (this.replacedAt || []).filter((t) => now - t < 60000);
    if (this.replacedAt.length >= 3) return;
    this.replacedAt.push(now);
    this.replacePc(`${what} failed`, true);
  }

  handleSignal(msg) {
    this.enqueue(async () => {
      if (this.closed) return;
      if (msg.type === 'candidate') await this.onCandidate(msg.candidate);
      else await this.onDescription({ type: msg.type, sdp: msg.sdp });
    });
  }

  async onDescription(description) {
    if (description.type === 'offer' && this.pc.remoteDescription) {
      const theirs = fingerprint(description.sdp);
      if (theirs && theirs !== fingerprint(this.pc.remoteDescription.sdp)) {
        this.replacePc('the other end replaced its connection', false);
      }
    }
    const pc = this.pc;
    const readyForOffer = !this.makingOffer && (pc.signalingState === 'stable' || this.settingRemoteAnswer);
    const offerCollision = description.type === 'offer' && !readyForOffer;
    this.ignoreOffer = !this.polite && offerCollision;
    if (this.ignoreOffer) {
      this.log('offer collision: impolite, ignoring their offer');
      return;
    }
    if (description.type === 'answer' && pc.signalingState !== 'have-local-offer') {
      this.log(`stale answer ignored in ${pc.signalingState}`);
      return;
    }
    this.log(`received ${description.type}`);
    this.settingRemoteAnswer = description.type === 'answer';
    try {
      await pc.setRemoteDescription(description); // rolls our offer back if needed (polite)
    } finally {
      this.settingRemoteAnswer = false;
    }
    clearTimeout(this.offerTimer);
    await this.flushCandidates();
    if (description.type === 'answer') return;
    this.addLocalTracks(); // before answering: they take the offered transceivers
    await this.setAndSendLocal(pc);
  }

  async onCandidate(candidate) {
    this.counts.received++;
    // Candidates that cannot be applied yet are kept and tried again after the next remote
    // description. This matters after a collision: the impolite end ignores the polite end's
    // offer, and with it the candidates trickled for that offer; but the polite end's answer
    // reuses the same ICE credentials and candidates and trickles nothing new. Dropping them
    // would leave the impolite end without a single remote candidate, which a relay-only
    // connection cannot survive (its TURN server needs a permission for the peer's address).
    if (!this.pc.remoteDescription || this.ignoreOffer) {
      this.keepCandidate(candidate);
      return;
    }
    if (!(await this.addCandidate(candidate))) this.keepCandidate(candidate);
  }

  keepCandidate(candidate) {
    this.pendingCandidates.push(candidate);
    if (this.pendingCandidates.length > 200) this.pendingCandidates.shift();
  }

  /** addIceCandidate; null is end-of-candidates. Resolves to false if it was refused. */
  async addCandidate(candidate) {
    try {
      if (candidate === null || candidate === undefined) await this.pc.addIceCandidate();
      else await this.pc.addIceCandidate(candidate);
      this.counts.added++;
      return true;
    } catch (e) {
      // A candidate of an ICE generation that is not (or no longer) current.
      this.counts.refused++;
      if (candidate) this.log(`addIceCandidate refused (kept for later): ${e}`);
      return false;
    }
  }

  /** After a remote description is set: apply the candidates kept for later. */
  async flushCandidates() {
    const kept = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const c of kept) {
      if (!(await this.addCandidate(c))) this.keepCandidate(c);
    }
  }

  /** After a resumed signaling session: fresh ICE servers, then renegotiate with an ICE restart. */
  restartIce() {
    this.enqueue(async () => {
      if (this.closed) return;
      const pc = this.pc;
      try {
        pc.setConfiguration({ ...pc.getConfiguration(), iceServers: this.room.iceServers });
      } catch (e) {
        this.log(`setConfiguration failed: ${e}`);
      }
      // Our pending offer (or the answer to it) may have been lost while we were away.
      if (pc.signalingState === 'have-local-offer') await pc.setLocalDescription({ type: 'rollback' });
      if (!pc.remoteDescription) {
        // Never negotiated (their first offer may have been lost): no ICE to restart, offer now.
        if (this.tracksHeld) this.addLocalTracks();
        else await this.negotiate();
        return;
      }
      // Fires negotiationneeded (now, or once stable), whose offer carries new ICE credentials.
      this.counts.iceRestarts++;
      pc.restartIce();
    });
  }

  fail(what, e) {
    if (this.closed) return;
    this.log(`${what} failed: ${e}`);
    this.room._emit('error', { error: new TurnkeyError(`${this.participant.id}: ${what} failed: ${e && e.message ? e.message : e}`, { code: 'negotiation' }) });
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.offerTimer);
    clearTimeout(this.holdTimer);
    clearInterval(this.watchdog);
    this.pc.close();
    for (const t of this.participant.stream.getTracks()) this.participant.stream.removeTrack(t);
  }
}

/** The first DTLS fingerprint of an SDP (identifies the RTCPeerConnection that made it). */
function fingerprint(sdp) {
  const m = /^a=fingerprint:(.+)$/m.exec(sdp || '');
  return m ? m[1].trim().toLowerCase() : null;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
