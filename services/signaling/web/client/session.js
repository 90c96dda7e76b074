// @ts-check
// The media side of a room, chosen by the room's mode: mesh (./mesh.js) or sfu (./sfu.js).

import { MeshSession } from './mesh.js';
import { SfuSession } from './sfu.js';
import { TurnkeyError } from './util.js';

/** @typedef {import('./room.js').TurnkeyRoom} TurnkeyRoom */
/** @typedef {import('./util.js').Participant} Participant */

/**
 * The media side of a room (the SFU seam). A TurnkeyRoom owns exactly one, chosen by the room's
 * mode, and calls it as participants come and go and as signaling messages arrive:
 * - addParticipant(participant), removeParticipant(id)
 * - handleSignal(msg): an `offer`, `answer` or `candidate` frame (`from`, `sdp` / `candidate`)
 * - restart(): the signaling session was resumed; renegotiate with an ICE restart using
 *   room.iceServers (sfu mode: ask the SFU to resync)
 * - getStats(), peerConnection(id), close()
 * - sfu mode only: handleSfu(msg) (the `msg` of an `sfu` frame), sendData(data),
 *   setVideoPreference({maxHeight, trackId}), startScreenShare(track?), stopScreenShare()
 * A MeshSession sends to and receives from each participant directly. An SfuSession keeps a
 * publish and a subscribe RTCPeerConnection to the SFU and maps the subscribed tracks to
 * participants by their stream id (sfu/PROTOCOL.md).
 * @typedef {object} MediaSession
 * @property {(participant: Participant, how: {initiate: boolean}) => void} addParticipant
 * @property {(id: string) => void} removeParticipant
 * @property {(msg: any) => void} handleSignal
 * @property {() => void} restart
 * @property {() => Promise<Array<{participant: Participant|null, pc?: string, report: RTCStatsReport}>>} getStats
 * @property {(id: string) => RTCPeerConnection|null} peerConnection
 * @property {() => void} close
 * @property {(msg: any) => void} [handleSfu] sfu mode only.
 * @property {(data: string|ArrayBuffer|ArrayBufferView) => boolean} [sendData] sfu mode only.
 * @property {(pref: {maxHeight: number, trackId?: string}) => boolean} [setVideoPreference] sfu
 *   mode only.
 * @property {(track?: MediaStreamTrack) => Promise<MediaStreamTrack>} [startScreenShare] sfu
 *   mode only.
 * @property {() => boolean} [stopScreenShare] sfu mode only.
 * @property {MediaStreamTrack|null} [screenTrack] sfu mode only.
 */

/**
 * The media session for `room`'s mode (`room.info.mode`, from `joined`).
 * @param {TurnkeyRoom} room
 * @returns {MediaSession}
 * @throws {TurnkeyError} code 'bad_request' for an unknown mode.
 */
export function createMediaSession(room) {
  switch (room.info.mode) {
    case 'mesh':
      return new MeshSession(room);
    case 'sfu':
      return new SfuSession(room);
    default:
      throw new TurnkeyError(`unknown room mode ${room.info.mode}`, { code: 'bad_request' });
  }
}
