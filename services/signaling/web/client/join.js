// @ts-check
// The session server's HTTP API as the client uses it: a join grant (PROTOCOL.md,
// `POST /v1/rooms/{room}/join`).

import { TurnkeyError } from './util.js';

/**
 * A join grant: what {@link requestJoin} resolves to.
 * @typedef {object} JoinGrant
 * @property {string} url The WebSocket endpoint for TurnkeyRoom.join.
 * @property {string} token The access token.
 * @property {RTCIceServer[]} [iceServers]
 * @property {number} [iceServersTtl]
 * @property {any} [room]
 */

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
 * @returns {Promise<JoinGrant>}
 *   `url` is the WebSocket endpoint for TurnkeyRoom.join, `token` the access token.
 * @throws {TurnkeyError} code 'bad_request' (neither apiKey nor bearer, or no identity), the
 *   server's error code with `status`, or 'http' (an answer that is not a grant).
 */
export async function requestJoin(opts) {
  const base = (opts.baseUrl || globalThis.location?.origin || '').replace(/\/+$/, '');
  /** @type {Record<string, string>} */
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  /** @type {{identity?: string, name?: string, mode?: string, capacity?: number}} */
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
