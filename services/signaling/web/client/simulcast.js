// @ts-check
// Published media in sfu mode: the local tracks on the publish connection, video as simulcast
// layers (sfu/PROTOCOL.md: rids q, h, f), and pausing the layers nobody watches (`layers`).

/**
 * Simulcast layers of the published video (sfu/PROTOCOL.md: rids q, h, f).
 * @type {readonly RTCRtpEncodingParameters[]}
 */
export const SIMULCAST_ENCODINGS = [
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
export const SIMULCAST_MIN_PIXELS = 960 * 540;

/**
 * Whether `track` is large enough for three simulcast layers (true when it cannot tell).
 * @param {MediaStreamTrack} track
 * @returns {boolean}
 */
export function simulcastFits(track) {
  /** @type {MediaTrackSettings} */
  const s = typeof track.getSettings === 'function' ? track.getSettings() : {};
  return !(s.width > 0 && s.height > 0) || s.width * s.height >= SIMULCAST_MIN_PIXELS;
}

/**
 * Adds the first audio and the first video track of `local` to the publish connection,
 * send-only; the video as the simulcast layers if `simulcast` and the capture is large enough
 * ({@link simulcastFits}), else as one layer.
 * @param {RTCPeerConnection} pc
 * @param {MediaStream} local
 * @param {boolean} simulcast
 * @returns {RTCRtpSender|null} the video sender (null without a video track).
 */
export function addPublishTracks(pc, local, simulcast) {
  const audio = local.getAudioTracks()[0];
  if (audio) pc.addTransceiver(audio, { direction: 'sendonly', streams: [local] });
  const video = local.getVideoTracks()[0];
  if (!video) return null;
  /** @type {RTCRtpTransceiverInit} */
  const init = { direction: 'sendonly', streams: [local] };
  if (simulcast && simulcastFits(video)) init.sendEncodings = SIMULCAST_ENCODINGS.map((e) => ({ ...e }));
  return pc.addTransceiver(video, init).sender;
}

/**
 * `layers` (sfu/PROTOCOL.md): only the simulcast layers in `active` are watched; pause the
 * others, resume those. Does nothing for a single-layer sender.
 * @param {RTCRtpSender|null} sender
 * @param {string[]} active rids
 * @returns {Promise<void>}
 */
export async function setActiveLayers(sender, active) {
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
