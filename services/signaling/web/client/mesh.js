// @ts-check
// Mesh mode: one RTCPeerConnection per remote participant (see ./peer-link.js).

import { PeerLink } from './peer-link.js';

/** @typedef {import('./room.js').TurnkeyRoom} TurnkeyRoom */
/** @typedef {import('./util.js').Participant} Participant */

/** Mesh mode: one PeerLink (RTCPeerConnection) per remote participant. */
export class MeshSession {
  /** @param {TurnkeyRoom} room */
  constructor(room) {
    this.room = room;
    /** @type {Map<string, PeerLink>} */
    this.links = new Map();
  }

  /**
   * Starts the connection with a new participant; polite iff our id sorts before theirs.
   * @param {Participant} participant
   * @param {{initiate: boolean}} how initiate: we make the first offer.
   */
  addParticipant(participant, how) {
    if (this.links.has(participant.id)) return;
    const polite = this.room.participantId < participant.id;
    this.links.set(participant.id, new PeerLink(this.room, participant, polite, how.initiate));
  }

  /** @param {string} id */
  removeParticipant(id) {
    const link = this.links.get(id);
    if (link) link.close();
    this.links.delete(id);
  }

  /** An `offer`, `answer` or `candidate` frame. @param {any} msg */
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

  /** @returns {Promise<Array<{participant: Participant, report: RTCStatsReport}>>} */
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

  /** @param {string} id @returns {RTCPeerConnection|null} */
  peerConnection(id) {
    const link = this.links.get(id);
    return link ? link.pc : null;
  }

  close() {
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }
}
