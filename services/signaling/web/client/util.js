// @ts-check
// Errors, events and small helpers shared by the client's modules (see ../client.js).

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
 * A remote participant of the room.
 * @typedef {object} Participant
 * @property {string} id Participant id (stable across a resumed session).
 * @property {string} [identity] The `sub` of its access token.
 * @property {string} [name] Display name.
 * @property {MediaStream} stream Its remote tracks (one MediaStream per participant; tracks are
 *   added as they arrive, so a <video> can take it as srcObject right away): camera and
 *   microphone.
 * @property {MediaStream|null} [screenStream] Sfu mode: its screen share while it shares one
 *   (see the `screen-track` event), else null or absent.
 * @property {RTCPeerConnectionState} connectionState State of the media connection to it
 *   (mesh mode: of the RTCPeerConnection with it; sfu mode: of our subscribe connection to the
 *   SFU, which carries everyone's media).
 */

/**
 * Dispatches a CustomEvent `type` with `detail` on `target` (every event of a TurnkeyRoom is
 * one; its payload is `event.detail`).
 * @param {EventTarget} target
 * @param {string} type
 * @param {any} detail
 */
export function emit(target, type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}

/**
 * Resolves after `ms` milliseconds.
 * @param {number} ms
 * @returns {Promise<void>}
 */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * The message of a thrown value: `e.message` if it has one, else `e` itself.
 * @param {any} e
 * @returns {any}
 */
export function errorText(e) {
  return e && e.message ? e.message : e;
}
