#!/usr/bin/env node
// Screen sharing in an SFU room, in headless Chromium through the signaling demo page
// (`?mode=sfu`).
//
// N pages (default 3) join one fresh SFU room and decode each other's camera video. Page 0 then
// shares its screen the way the page's "Share screen" button does (window.turnkeyDemo.shareScreen:
// TurnkeyRoom.startScreenShare() with no track, so getDisplayMedia; headless Chromium with
// --use-fake-ui-for-media-stream and --use-fake-device-for-media-stream captures a fake
// 1280x720 screen without a prompt). The run passes when:
// - page 0 sends the screen as a second video track with one encoding (no rid, no simulcast)
//   and contentHint 'detail';
// - every other page gets a `screen-track` event for page 0 (the SFU's offer says
//   source `screen`), decodes frames on that track (inbound-rtp framesDecoded > 0, its own
//   trackIdentifier), and keeps decoding page 0's camera on another track;
// - page 0 stops the share, and every other page gets `screen-track-removed` while page 0's
//   camera keeps decoding;
// - page 1 shares a track it made (a canvas captureStream: startScreenShare(track)), the others
//   decode it as page 1's screen, and stopping it ends the share but not the given track.
//
// Usage: node sfu_screen.mjs --base-url URL --key KEY:SECRET [--pages 3] [--res 320x240]
//                            [--timeout-ms 60000] [--chromium PATH]
// Prints one JSON line starting with `RESULT `; exit 0 on success, 1 on failure, 2 on bad usage.

import { launchChromium } from './chromium.mjs';

function usage(message) {
  console.error(`sfu_screen: ${message}`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = { pages: 3, res: '320x240', timeoutMs: 60000, chromium: '/usr/bin/chromium', baseUrl: null, key: null };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i];
    const v = argv[++i];
    if (v === undefined) usage(`missing value for ${f}`);
    if (f === '--base-url') o.baseUrl = v.replace(/\/+$/, '');
    else if (f === '--key') o.key = v;
    else if (f === '--pages') o.pages = Number(v);
    else if (f === '--res') o.res = v;
    else if (f === '--timeout-ms') o.timeoutMs = Number(v);
    else if (f === '--chromium') o.chromium = v;
    else usage(`unknown option ${f}`);
  }
  if (!o.baseUrl || !o.key) usage('--base-url and --key are required');
  if (!(o.pages >= 2 && o.pages <= 4)) usage('--pages must be 2..4');
  return o;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * What a page receives on its subscribe connection: per remote participant, frames decoded on
 * its camera track and, if it shares, on its screen track (told apart by the screen track's id
 * from the `screen-track` event); plus the screen shares it saw end.
 */
async function view(page) {
  return page.evaluate(async () => {
    const d = window.turnkeyDemo;
    const room = d && d.room;
    if (!room) return { state: d ? d.state : 'no-hook', error: d ? d.error : null };
    const out = { state: d.state, participantId: room.participantId, camera: {}, screen: {}, screens: { ...d.screens }, screensEnded: [...d.screensEnded], events: { ...d.events } };
    const pc = room.peerConnection('subscribe');
    if (!pc) return out;
    const screenTracks = new Set(d.screenTrackIds);
    const msid = {};
    const sdp = pc.currentRemoteDescription ? pc.currentRemoteDescription.sdp : '';
    for (const m of sdp.matchAll(/^a=msid:(\S+) (\S+)/gm)) msid[m[2]] = m[1];
    for (const s of (await pc.getStats()).values()) {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') continue;
      const who = msid[s.trackIdentifier] || `?${s.trackIdentifier}`;
      const side = screenTracks.has(s.trackIdentifier) ? out.screen : out.camera;
      const r = (side[who] ||= { framesDecoded: 0, frameWidth: 0, trackIds: [] });
      r.framesDecoded += s.framesDecoded || 0;
      r.frameWidth = Math.max(r.frameWidth, s.frameWidth || 0);
      r.trackIds.push(s.trackIdentifier);
    }
    return out;
  });
}

/** Page 0's publish side: its video senders (encodings, content hint) and the offer's sections. */
async function publisher(page) {
  return page.evaluate(async () => {
    const room = window.turnkeyDemo.room;
    const pc = room.peerConnection('publish');
    const senders = pc.getSenders().filter((s) => s.track && s.track.kind === 'video').map((s) => {
      const p = s.getParameters();
      return { trackId: s.track.id, contentHint: s.track.contentHint, encodings: (p.encodings || []).map((e) => ({ rid: e.rid || null, active: e.active })) };
    });
    const screen = room.screenTrack;
    const sdp = pc.localDescription ? pc.localDescription.sdp : '';
    // The m-section of the screen track: simulcast would show as a=simulcast / a=rid lines.
    const sections = sdp.split(/\r\n(?=m=)/);
    const section = screen ? sections.find((m) => m.includes(` ${screen.id}`)) || '' : '';
    return { senders, screenTrackId: screen ? screen.id : null, screenSimulcastLines: section.split('\r\n').filter((l) => l.startsWith('a=simulcast') || l.startsWith('a=rid')) };
  });
}

async function until(what, deadline, fn) {
  let last;
  for (;;) {
    last = await fn();
    if (last.ok) return last;
    if (Date.now() > deadline) throw new Error(`${what}: ${last.why}`);
    await sleep(500);
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const roomName = `screen-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
  const browser = await launchChromium(o.chromium);
  const result = { room: roomName, pages: o.pages, ok: false };
  try {
    const pages = [];
    for (let i = 0; i < o.pages; i++) {
      const page = await browser.context.newPage();
      page.on('console', (m) => { if (m.type() === 'error') console.error(`page ${i}: ${m.text()}`); });
      const q = new URLSearchParams({ key: o.key, room: roomName, name: `p${i}`, autojoin: '1', mode: 'sfu', res: o.res });
      await page.goto(`${o.baseUrl}/?${q}`);
      pages.push(page);
    }
    const deadline = Date.now() + o.timeoutMs;
    const started = Date.now();
    // 1. Cameras: everyone decodes everyone else's camera.
    let views = [];
    await until('camera video', deadline, async () => {
      views = await Promise.all(pages.map(view));
      const ids = views.map((v) => v.participantId).filter(Boolean);
      if (ids.length < o.pages) return { ok: false, why: `only ${ids.length} joined ${JSON.stringify(views.map((v) => v.state))}` };
      const missing = views.flatMap((v, i) => ids.filter((id) => id !== v.participantId && !(v.camera[id]?.framesDecoded > 0)).map((id) => `page ${i} has no frames from ${id}`));
      return { ok: missing.length === 0, why: missing.join('; ') };
    });
    result.cameraMs = Date.now() - started;
    const sharer = views[0].participantId;
    const cameraBefore = views.slice(1).map((v) => v.camera[sharer].framesDecoded);
    // 2. Page 0 shares its screen, as the button does (getDisplayMedia).
    const shared = await pages[0].evaluate(() => window.turnkeyDemo.shareScreen());
    if (!shared) throw new Error(`page 0 could not share its screen: ${JSON.stringify(await pages[0].evaluate(() => window.turnkeyDemo.log.slice(-5)))}`);
    const shareStarted = Date.now();
    result.publisher = await until('publish offer with the screen', deadline, async () => {
      const p = await publisher(pages[0]);
      return { ...p, ok: p.senders.length === 2 && p.screenTrackId === shared, why: JSON.stringify(p) };
    });
    const screenSender = result.publisher.senders.find((s) => s.trackId === shared);
    result.screenSender = screenSender;
    // 3. Everyone else receives and decodes it, on a track of its own, and still the camera.
    await until('screen video', deadline + 20000, async () => {
      views = await Promise.all(pages.map(view));
      const missing = views.slice(1).flatMap((v, i) => {
        const out = [];
        if (!v.screens[sharer]) out.push(`page ${i + 1}: no screen-track event`);
        if (!(v.screen[sharer]?.framesDecoded > 0)) out.push(`page ${i + 1}: screen frames ${v.screen[sharer]?.framesDecoded}`);
        if (!(v.camera[sharer]?.framesDecoded > cameraBefore[i])) out.push(`page ${i + 1}: camera stalled at ${v.camera[sharer]?.framesDecoded}`);
        return out;
      });
      return { ok: missing.length === 0, why: missing.join('; ') };
    });
    result.screenMs = Date.now() - shareStarted;
    result.sharing = views.map((v) => ({ id: v.participantId, camera: v.camera, screen: v.screen, screens: v.screens }));
    // 4. Page 0 stops; everyone else sees the share end; the camera goes on.
    const stopped = await pages[0].evaluate(() => window.turnkeyDemo.stopScreen().then(() => window.turnkeyDemo.room.screenTrack));
    if (stopped) throw new Error('page 0 still shares after stopScreen');
    const stopStarted = Date.now();
    const cameraAtStop = views.slice(1).map((v) => v.camera[sharer].framesDecoded);
    await until('screen share end', deadline + 40000, async () => {
      views = await Promise.all(pages.map(view));
      const missing = views.slice(1).flatMap((v, i) => {
        const out = [];
        if (!v.screensEnded.includes(sharer)) out.push(`page ${i + 1}: no screen-track-removed`);
        if (v.screens[sharer]) out.push(`page ${i + 1}: still shows the screen`);
        if (!(v.camera[sharer]?.framesDecoded > cameraAtStop[i])) out.push(`page ${i + 1}: camera stalled at ${v.camera[sharer]?.framesDecoded}`);
        return out;
      });
      return { ok: missing.length === 0, why: missing.join('; ') };
    });
    result.stopMs = Date.now() - stopStarted;
    result.ended = views.map((v) => ({ id: v.participantId, screensEnded: v.screensEnded, events: v.events, camera: v.camera }));
    result.publisherAfter = await publisher(pages[0]);
    // 5. Page 1 shares a track it made itself (a canvas captureStream, the API's other path):
    // the others decode it as page 1's screen; stopping leaves the given track running.
    const painter = views[1].participantId;
    const given = await pages[1].evaluate(async () => {
      const c = document.createElement('canvas');
      c.width = 640;
      c.height = 360;
      const g = c.getContext('2d');
      let n = 0;
      window.__paint = setInterval(() => {
        g.fillStyle = `hsl(${(n * 7) % 360},60%,50%)`;
        g.fillRect(0, 0, c.width, c.height);
        g.fillStyle = '#fff';
        g.font = '48px sans-serif';
        g.fillText(`slide ${n++}`, 24, 72);
      }, 50);
      const t = c.captureStream(20).getVideoTracks()[0];
      window.__canvasTrack = t;
      const shared = await window.turnkeyDemo.room.startScreenShare(t);
      return { same: shared === t, contentHint: t.contentHint };
    });
    result.canvas = { given };
    const others = views.map((v, i) => i).filter((i) => i !== 1);
    await until('canvas screen video', deadline + 60000, async () => {
      views = await Promise.all(pages.map(view));
      const missing = others.flatMap((i) => (views[i].screen[painter]?.framesDecoded > 0 ? [] : [`page ${i}: canvas frames ${views[i].screen[painter]?.framesDecoded}`]));
      return { ok: missing.length === 0, why: missing.join('; ') };
    });
    result.canvas.decoded = others.map((i) => views[i].screen[painter].framesDecoded);
    result.canvas.liveAfterStop = await pages[1].evaluate(() => {
      window.turnkeyDemo.room.stopScreenShare();
      return window.__canvasTrack.readyState === 'live';
    });
    await until('canvas share end', deadline + 80000, async () => {
      views = await Promise.all(pages.map(view));
      const missing = others.filter((i) => !views[i].screensEnded.includes(painter)).map((i) => `page ${i}: no screen-track-removed`);
      return { ok: missing.length === 0, why: missing.join('; ') };
    });
    await pages[1].evaluate(() => clearInterval(window.__paint));
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
  } finally {
    await browser.close();
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(result.ok ? 0 : 1);
}

main();
