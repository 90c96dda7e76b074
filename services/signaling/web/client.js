// @ts-check
// turnkey signaling client: small ES modules (no framework, no build step) that join a room on
// a turnkey signaling server and connect the participants with WebRTC. This file is the entry.
//
// Wire contract: services/signaling/PROTOCOL.md (protocol version 1). Served by the signaling server as
// `GET /client.js` (its modules as `GET /client/*.js`), so a page on the same server can
// `import { TurnkeyRoom } from '/client.js'`.
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
// SfuSession, protocol in sfu/PROTOCOL.md, carried in `sfu` signaling messages): a publish PC
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
// Signaling resume: after an unexpected close the client reconnects with backoff for up to
// `resumeGraceMs` and resumes its session (see client/room.js).
//
// Modules (plain ES modules, no build step; the signaling server embeds and serves each one at
// its path: a new module goes into CLIENT_MODULES in signaling/src/http.rs, which
// signaling/tests/web_client.rs checks):
//   client.js              this entry: the public API, re-exported from the modules below
//   client/room.js         TurnkeyRoom: signaling connection, join, keepalive, resume / rejoin,
//                          participants and events
//   client/join.js         requestJoin: the join grant over HTTP
//   client/session.js      createMediaSession: mesh or sfu media for a room
//   client/mesh.js         MeshSession: one PeerLink per remote participant
//   client/peer-link.js    PeerLink: perfect negotiation, trickle ICE, ICE restart, replacement
//   client/sfu.js          SfuSession: publish and subscribe connections to the SFU
//   client/simulcast.js    published tracks, simulcast layers, `layers` pausing
//   client/ice.js          ICE servers (TURN REST credentials from `joined`), RTCConfiguration
//   client/util.js         TurnkeyError, the Participant type, event and small helpers

export { PROTOCOL_VERSION, TurnkeyRoom } from './client/room.js';
export { requestJoin } from './client/join.js';
export { TurnkeyError } from './client/util.js';

/** @typedef {import('./client/util.js').Participant} Participant */
/** @typedef {import('./client/join.js').JoinGrant} JoinGrant */
