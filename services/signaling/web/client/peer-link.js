// @ts-check
// One remote participant's RTCPeerConnection in a mesh room, negotiated the W3C "perfect
// negotiation" way (https://w3c.github.io/webrtc-pc/#perfect-negotiation-example), with trickle
// ICE, offer retries, ICE restarts and connection replacement.

import { rtcConfiguration, useIceServers } from './ice.js';
import { TurnkeyError, errorText } from './util.js';

/** @typedef {import('./room.js').TurnkeyRoom} TurnkeyRoom */
/** @typedef {import('./util.js').Participant} Participant */

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
export class PeerLink {
  /**
   * @param {TurnkeyRoom} room
   * @param {Participant} participant
   * @param {boolean} polite Whether this end is the polite one (rolls its offer back on glare).
   * @param {boolean} initiate Make the first offer now (see createPc).
   */
  constructor(room, participant, polite, initiate) {
    this.room = room;
    this.participant = participant;
    this.polite = polite;
    this.closed = false;
    /** @type {Promise<void>} */
    this.queue = Promise.resolve();
    /** Debug counters (read by tests): candidates of the current connection, resets overall. */
    this.counts = { gathered: 0, received: 0, added: 0, refused: 0, iceRestarts: 0, resets: 0 };
    const log = room._log;
    /** @param {string} m */
    this.log = (m) => log(`[${participant.id}] ${m}`);
    /** @type {ReturnType<typeof setTimeout>|undefined} */
    this.offerTimer = undefined;
    /** @type {ReturnType<typeof setTimeout>|undefined} */
    this.holdTimer = undefined;
    /** Sequence number of the last description sent (see armOfferTimer). */
    this.offerSeq = 0;
    /** When the connection was last replaced after a failure (see broken). @type {number[]} */
    this.replacedAt = [];
    this.createPc(initiate);
    this.watchdog = setInterval(() => this.checkConnected(), 2000);
  }

  /**
   * A new RTCPeerConnection (the first, or a replacement). initiate: add the local tracks now,
   * which makes it offer; otherwise hold them until the remote offer comes (2.5 or 6 s at most).
   */
  /** @param {boolean} initiate */
  createPc(initiate) {
    const room = this.room;
    const participant = this.participant;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.iceRestarted = false;
    /** Remote candidates not applicable yet (see onCandidate). @type {Array<RTCIceCandidateInit|null>} */
    this.pendingCandidates = [];
    Object.assign(this.counts, { gathered: 0, received: 0, added: 0, refused: 0 });
    const pc = new RTCPeerConnection(rtcConfiguration(room));
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
  /** @param {string} reason @param {boolean} initiate */
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

  /** @param {MediaStreamTrack} track */
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
  /** @param {RTCPeerConnection} pc */
  async setAndSendLocal(pc) {
    await pc.setLocalDescription();
    if (pc !== this.pc || this.closed) return;
    const desc = pc.localDescription;
    this.log(`sending ${desc.type}`);
    this.room._send({ type: desc.type, to: this.participant.id, sdp: desc.sdp });
    this.offerSeq += 1;
    if (desc.type === 'offer') this.armOfferTimer(pc, this.offerSeq);
  }

  /**
   * Rolls an offer back and offers again if it is still unanswered after offerTimeoutMs (the
   * offer or its answer was lost, e.g. dropped by the server while the other end was away; or
   * the other end is the impolite end of a collision and waits for our answer to its own offer).
   */
  /** @param {RTCPeerConnection} pc @param {number} seq */
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

  /**
   * Runs `task` after the previous ones; an error in it is a broken connection (see broken).
   * @param {() => Promise<void>} task
   */
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
  /** @param {string} what @param {any} e */
  broken(what, e) {
    if (this.closed) return;
    this.fail(what, e);
    const now = Date.now();
    this.replacedAt = this.replacedAt.filter((t) => now - t < 60000);
    if (this.replacedAt.length >= 3) return;
    this.replacedAt.push(now);
    this.replacePc(`${what} failed`, true);
  }

  /** An `offer`, `answer` or `candidate` frame from this participant. @param {any} msg */
  handleSignal(msg) {
    this.enqueue(async () => {
      if (this.closed) return;
      if (msg.type === 'candidate') await this.onCandidate(msg.candidate);
      else await this.onDescription({ type: msg.type, sdp: msg.sdp });
    });
  }

  /** @param {RTCSessionDescriptionInit} description */
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

  /** @param {RTCIceCandidateInit|null} candidate */
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

  /** @param {RTCIceCandidateInit|null} candidate */
  keepCandidate(candidate) {
    this.pendingCandidates.push(candidate);
    if (this.pendingCandidates.length > 200) this.pendingCandidates.shift();
  }

  /**
   * addIceCandidate; null is end-of-candidates. Resolves to false if it was refused.
   * @param {RTCIceCandidateInit|null|undefined} candidate
   * @returns {Promise<boolean>}
   */
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
        useIceServers(pc, this.room.iceServers);
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

  /** @param {string} what @param {any} e */
  fail(what, e) {
    if (this.closed) return;
    this.log(`${what} failed: ${e}`);
    this.room._emit('error', { error: new TurnkeyError(`${this.participant.id}: ${what} failed: ${errorText(e)}`, { code: 'negotiation' }) });
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

/**
 * The first DTLS fingerprint of an SDP (identifies the RTCPeerConnection that made it).
 * @param {string|undefined} sdp
 * @returns {string|null}
 */
export function fingerprint(sdp) {
  const m = /^a=fingerprint:(.+)$/m.exec(sdp || '');
  return m ? m[1].trim().toLowerCase() : null;
}
