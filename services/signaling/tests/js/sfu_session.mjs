// Unit test of the browser client's sfu mode (services/signaling/web/client.js, SfuSession) in Node, with
// stand-ins for RTCPeerConnection and MediaStream: the signaling frames it sends, the events it
// emits. Run: `node signaling/tests/js/sfu_session.mjs` (exit code 0 = pass). The real media path
// is tested in a browser against the real SFU.
import assert from 'node:assert/strict';
import { TurnkeyRoom, TurnkeyError } from '../../web/client.js';

globalThis.WebSocket = { OPEN: 1 };

class FakeStream {
  constructor(tracks = [], id = 'local') {
    this.id = id;
    this.tracks = [...tracks];
  }
  addTrack(t) { this.tracks.push(t); }
  removeTrack(t) { this.tracks = this.tracks.filter((x) => x !== t); }
  getTrackById(id) { return this.tracks.find((t) => t.id === id) || null; }
  getTracks() { return [...this.tracks]; }
  getAudioTracks() { return this.tracks.filter((t) => t.kind === 'audio'); }
  getVideoTracks() { return this.tracks.filter((t) => t.kind === 'video'); }
}
globalThis.MediaStream = FakeStream;

const pcs = [];
class FakePc {
  constructor(config) {
    this.config = config;
    this.signalingState = 'stable';
    this.connectionState = 'new';
    this.transceivers = [];
    this.channels = [];
    this.localDescription = null;
    pcs.push(this);
  }
  getConfiguration() { return this.config; }
  setConfiguration(c) { this.config = c; }
  createDataChannel(label) {
    const ch = { label, readyState: 'open', sent: [], send(d) { this.sent.push(d); }, close() {} };
    this.channels.push(ch);
    this.negotiationNeeded();
    return ch;
  }
  addTransceiver(track, init) {
    const encodings = (init.sendEncodings || [{}]).map((e) => ({ ...e, active: true }));
    const sender = {
      track,
      params: { encodings },
      getParameters() { return structuredClone(this.params); },
      async setParameters(p) { this.params = p; },
    };
    const tr = { mid: String(this.transceivers.length), sender, init, currentDirection: 'sendonly' };
    this.transceivers.push(tr);
    this.negotiationNeeded();
    return tr;
  }
  addTrack(track) {
    return this.addTransceiver(track, {}).sender;
  }
  negotiationNeeded() {
    if (this.pending) return;
    this.pending = true;
    setTimeout(() => { this.pending = false; this.onnegotiationneeded?.(); }, 0);
  }
  getTransceivers() { return this.transceivers; }
  async createOffer() { return { type: 'offer', sdp: `offer-${pcs.indexOf(this)}` }; }
  async createAnswer() { return { type: 'answer', sdp: 'answer' }; }
  async setLocalDescription(d) {
    if (d.type === 'rollback') this.signalingState = 'stable';
    else if (d.type === 'offer') { this.signalingState = 'have-local-offer'; this.localDescription = d; }
    else { this.signalingState = 'stable'; this.localDescription = d; }
  }
  // A subscribe offer's sdp is JSON here: [{mid, stream, kind}] (what the m-lines would say).
  async setRemoteDescription(d) {
    if (d.type === 'answer') { this.signalingState = 'stable'; return; }
    this.signalingState = 'have-remote-offer';
    const lines = JSON.parse(d.sdp);
    for (const tr of this.transceivers) {
      if (!lines.some((l) => l.mid === tr.mid)) tr.currentDirection = 'inactive';
    }
    for (const l of lines) {
      let tr = this.transceivers.find((t) => t.mid === l.mid);
      const fresh = !tr || tr.stream !== l.stream;
      if (!tr) {
        tr = { mid: l.mid, receiver: { track: { id: `track-${l.mid}`, kind: l.kind } } };
        this.transceivers.push(tr);
      }
      tr.currentDirection = 'recvonly';
      tr.stream = l.stream;
      if (fresh) this.ontrack?.({ track: tr.receiver.track, streams: [{ id: l.stream }], transceiver: tr });
    }
  }
  restartIce() { this.iceRestarted = true; }
  async getStats() { return new Map([['x', { type: 'transport' }]]); }
  close() { this.closed = true; }
}
globalThis.RTCPeerConnection = FakePc;

const tick = () => new Promise((r) => setTimeout(r, 5));

function makeRoom(mode, opts = {}) {
  const audio = { id: 'a0', kind: 'audio', enabled: true };
  const video = { id: 'v0', kind: 'video', enabled: true };
  const room = new TurnkeyRoom({ url: 'ws://x/v1/ws', token: 't', room: 'r', localStream: new FakeStream([audio, video]), iceTransportPolicy: 'relay', ...opts });
  const sent = [];
  room._ws = { readyState: 1, send: (t) => sent.push(JSON.parse(t)), close() {} };
  const events = [];
  for (const type of ['track', 'track-removed', 'connection-state', 'data', 'active-speaker', 'error', 'participant-joined']) {
    room.addEventListener(type, (e) => events.push({ type, ...e.detail }));
  }
  room._onJoined({
    type: 'joined', participantId: 'p_A', resumeToken: 'r_1', resumed: false,
    room: { name: 'r', mode, capacity: 8 },
    participants: [{ id: 'p_B', identity: 'b', name: 'Bob' }],
    iceServers: [{ urls: ['turn:t:3478'], username: 'u', credential: 'c' }], iceServersTtl: 60,
  }, false);
  return { room, sent, events };
}

const sfuMsgs = (sent, type) => sent.filter((m) => m.type === 'sfu' && (!type || m.msg.type === type)).map((m) => m.msg);

// --- publish: one offer with audio, simulcast video and the `room` data channel ----------------
const { room, sent, events } = makeRoom('sfu');
await tick();
const [pub, sub] = pcs;
assert.equal(pub.config.iceTransportPolicy, 'relay');
assert.deepEqual(pub.config.iceServers, room.iceServers);
assert.equal(sub.config.iceTransportPolicy, 'relay');
assert.equal(pub.channels[0].label, 'room');
const videoTr = pub.transceivers.find((t) => t.sender.track.kind === 'video');
assert.deepEqual(videoTr.init.sendEncodings.map((e) => e.rid), ['q', 'h', 'f']);
assert.equal(videoTr.init.sendEncodings[0].scaleResolutionDownBy, 4);
assert.equal(sfuMsgs(sent, 'offer').length, 1, JSON.stringify(sent));
room._onMessage({ type: 'sfu', msg: { type: 'answer', sdp: 'a' } });
await tick();
assert.equal(pub.signalingState, 'stable');

// --- subscribe: tracks mapped to participants, late participants, dropped tracks ---------------
room._onMessage({ type: 'sfu', msg: { type: 'offer', sdp: JSON.stringify([{ mid: '0', stream: 'p_B', kind: 'audio' }, { mid: '1', stream: 'p_C', kind: 'video' }]), tracks: [{ trackId: 'x', participantId: 'p_B', kind: 'audio', mid: '0' }, { trackId: 'y', participantId: 'p_C', kind: 'video', mid: '1' }] } });
await tick();
assert.equal(sfuMsgs(sent, 'answer').length, 1);
let tracks = events.filter((e) => e.type === 'track');
assert.equal(tracks.length, 1);
assert.equal(tracks[0].participant.id, 'p_B');
assert.equal(tracks[0].participant.name, 'Bob');
assert.equal(tracks[0].stream, room.participants.get('p_B').stream);
// p_C's track waits for p_C to be announced.
room._onMessage({ type: 'participant-joined', participant: { id: 'p_C', identity: 'c', name: 'Carol' } });
tracks = events.filter((e) => e.type === 'track');
assert.equal(tracks.length, 2);
assert.equal(tracks[1].participant.id, 'p_C');
assert.equal(tracks[1].track.kind, 'video');
// Re-offer without p_B's audio: track-removed.
room._onMessage({ type: 'sfu', msg: { type: 'offer', sdp: JSON.stringify([{ mid: '1', stream: 'p_C', kind: 'video' }]), tracks: [{ trackId: 'y', participantId: 'p_C', kind: 'video', mid: '1' }] } });
await tick();
const removed = events.filter((e) => e.type === 'track-removed');
assert.equal(removed.length, 1);
assert.equal(removed[0].participant.id, 'p_B');
assert.equal(room.participants.get('p_B').stream.getTracks().length, 0);
assert.equal(sfuMsgs(sent, 'answer').length, 2);

// --- layers, active speaker, errors, connection state ------------------------------------------
room._onMessage({ type: 'sfu', msg: { type: 'layers', active: ['q'] } });
await tick();
assert.deepEqual(videoTr.sender.params.encodings.map((e) => [e.rid, e.active]), [['q', true], ['h', false], ['f', false]]);
room._onMessage({ type: 'sfu', msg: { type: 'active-speaker', participantId: 'p_C', level: 20 } });
const speaker = events.find((e) => e.type === 'active-speaker');
assert.equal(speaker.participantId, 'p_C');
assert.equal(speaker.participant.name, 'Carol');
assert.equal(speaker.level, 20);
room._onMessage({ type: 'sfu', msg: { type: 'error', code: 4400, message: 'bad sdp' } });
const err = events.find((e) => e.type === 'error');
assert.ok(err.error instanceof TurnkeyError);
assert.equal(err.error.code, 4400);
sub.connectionState = 'connected';
sub.onconnectionstatechange();
const states = events.filter((e) => e.type === 'connection-state' && e.state === 'connected').map((e) => e.participant.id).sort();
assert.deepEqual(states, ['p_B', 'p_C']);

// --- data channel: JSON text and binary envelopes ------------------------------------------------
const channel = pub.channels[0];
channel.onmessage({ data: JSON.stringify({ from: 'p_B', data: 'hello' }) });
const id = new TextEncoder().encode('p_C');
const bin = new Uint8Array([id.length, ...id, 7, 8, 9]);
channel.onmessage({ data: bin.buffer });
channel.onmessage({ data: new Uint8Array([9, 1]).buffer }); // short: ignored
channel.onmessage({ data: 'not json' }); // ignored
const data = events.filter((e) => e.type === 'data');
assert.equal(data.length, 2);
assert.deepEqual([data[0].from, data[0].participant.id, data[0].data], ['p_B', 'p_B', 'hello']);
assert.equal(data[1].participant.id, 'p_C');
assert.deepEqual([...new Uint8Array(data[1].data)], [7, 8, 9]);
assert.equal(room.sendData('hi'), true);
assert.deepEqual(channel.sent, ['hi']);

// --- video preference, resync on resume, stats, peerConnection -----------------------------------
assert.equal(room.setVideoPreference({ maxHeight: 360 }), true);
assert.deepEqual(sfuMsgs(sent, 'video').at(-1), { type: 'video', maxHeight: 360 });
room.setVideoPreference({ maxHeight: 0, trackId: 't9' });
assert.deepEqual(sfuMsgs(sent, 'video').at(-1), { type: 'video', maxHeight: 0, trackId: 't9' });
room._onJoined({ type: 'joined', participantId: 'p_A', resumeToken: 'r_2', resumed: true, room: { name: 'r', mode: 'sfu', capacity: 8 }, participants: [{ id: 'p_B' }, { id: 'p_C' }], iceServers: [], iceServersTtl: 60 }, true);
assert.deepEqual(sfuMsgs(sent, 'resync'), [{ type: 'resync' }]);
assert.equal(pcs.length, 2, 'a resume keeps the connections');
const stats = await room.getStats();
assert.deepEqual(stats.map((s) => s.pc), ['publish', 'subscribe']);
assert.equal(room.peerConnection('publish'), pub);
assert.equal(room.peerConnection('subscribe'), sub);
assert.equal(room.peerConnection('p_B'), sub);
assert.equal(room.peerConnection('nobody'), null);
// Mesh signaling is ignored in an sfu room.
room._onMessage({ type: 'offer', from: 'p_B', sdp: 'x' });
room._teardown();
assert.ok(pub.closed && sub.closed);

// --- simulcast: false, and no local media ---------------------------------------------------------
pcs.length = 0;
makeRoom('sfu', { simulcast: false });
await tick();
assert.equal(pcs[0].transceivers.find((t) => t.sender.track.kind === 'video').init.sendEncodings, undefined);
pcs.length = 0;
const bare = makeRoom('sfu', { localStream: null });
await tick();
assert.equal(pcs[0].transceivers.length, 0);
assert.equal(sfuMsgs(bare.sent, 'offer').length, 1, 'offers the data channel alone');

// --- mesh rooms: no data API ------------------------------------------------------------------------
pcs.length = 0;
const mesh = makeRoom('mesh');
assert.throws(() => mesh.room.sendData('x'), (e) => e.code === 'unsupported');
assert.equal(mesh.room.setVideoPreference({ maxHeight: 1 }), false);
mesh.room._teardown();

console.log('sfu_session: ok');
process.exit(0);
