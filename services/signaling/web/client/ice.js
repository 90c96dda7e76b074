// @ts-check
// ICE configuration: the ICE servers (STUN, and TURN with the REST credentials the signaling
// server hands out in `joined.iceServers`, fresh on every join and resume) and the
// RTCConfiguration every RTCPeerConnection of the client is made with.

/**
 * The ICE servers a `joined` frame gives: `override` (opts.iceServers) if set, else the
 * frame's `iceServers`; and how many seconds their TURN credentials are valid for.
 * @param {RTCIceServer[]|undefined} override
 * @param {{iceServers?: RTCIceServer[], iceServersTtl?: number|null}} joined
 * @returns {{iceServers: RTCIceServer[], ttl: number|null}}
 */
export function joinedIceServers(override, joined) {
  return { iceServers: override || joined.iceServers || [], ttl: joined.iceServersTtl ?? null };
}

/**
 * The configuration of a new RTCPeerConnection: the room's ICE servers and transport policy,
 * one bundled transport.
 * @param {{iceServers: RTCIceServer[], iceTransportPolicy: RTCIceTransportPolicy}} room
 * @returns {RTCConfiguration}
 */
export function rtcConfiguration(room) {
  return {
    iceServers: room.iceServers,
    iceTransportPolicy: room.iceTransportPolicy,
    bundlePolicy: 'max-bundle',
  };
}

/**
 * Gives an existing RTCPeerConnection new ICE servers (fresh TURN credentials after a resume),
 * for its next ICE restart. Throws if `pc` is closed.
 * @param {RTCPeerConnection} pc
 * @param {RTCIceServer[]} iceServers
 */
export function useIceServers(pc, iceServers) {
  pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
}
