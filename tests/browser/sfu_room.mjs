#!/usr/bin/env node
// SFU rooms in headless Chromium through the signaling demo page (`?mode=sfu`).
//
// N pages (default 3) join one fresh SFU room. The run passes when, before the timeout, every
// page decodes video and receives audio from every other page on its *subscribe* connection to
// the SFU (inbound-rtp framesDecoded > 0 and audio bytesReceived > 0 per remote participant; the
// participant of a track is the msid stream id the SFU writes in its offer), with --relay over a
// relay/relay selected pair on both of its SFU connections; then page 0 sends a text message on
// the room data channel and every other page must receive it with page 0's participant id, and
// at least one page must have seen an active-speaker event.
//
// Usage: node sfu_room.mjs --base-url URL --key KEY:SECRET [--pages 3] [--relay]
//                          [--res 320x240] [--timeout-ms 60000] [--chromium PATH]
// Prints one JSON line starting with `RESULT `; exit 0 on success, 1 on failure, 2 on bad usage.

import { launchChromium } from './chromium.mjs';

function usage(message) {
  console.error(`sfu_room: ${message}`);
  process.exit(2);
}

function parseArgs(argv) {
  const o = { pages: 3, relay: false, res: null, minFrameWidth: 0, timeoutMs: 60000, chromium: '/usr/bin/chromium', baseUrl: null, key: null };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i];
    if (f === '--relay') { o.relay = true; continue; }
    const v = argv[++i];
    if (v === undefined) usage(`missing value for ${f}`);
    if (f === '--base-url') o.baseUrl = v.replace(/\/+$/, '');
    else if (f === '--key') o.key = v;
    else if (f === '--pages') o.pages = Number(v);
    else if (f === '--res') o.res = v;
    else if (f === '--min-frame-width') o.minFrameWidth = Number(v);
    else if (f === '--timeout-ms') o.timeoutMs = Number(v);
    else if (f === '--chromium') o.chromium = v;
    else usage(`unknown option ${f}`);
  }
  if (!o.baseUrl || !o.key) usage('--base-url and --key are required');
  if (!(o.pages >= 2 && o.pages <= 4)) usage('--pages must be 2..4');
  return o;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Per remote participant, what this page receives from the SFU. */
async function view(page) {
  return page.evaluate(async () => {
    const d = window.turnkeyDemo;
    const room = d && d.room;
    if (!room) return { state: d ? d.state : 'no-hook', error: d ? d.error : null };
    const out = {
      state: d.state, error: d.error, participantId: room.participantId, remotes: {}, pairs: {}, data: d.data, activeSpeaker: d.activeSpeaker,
      // What the page shows: the room's mode, and the status line naming the others with their
      // connection state (never "(new)" once media flows).
      mode: d.mode,
      modeText: document.getElementById('room-mode')?.textContent ?? null,
      statusText: document.getElementById('status')?.textContent ?? null,
    };
    for (const name of ['publish', 'subscribe']) {
      const pc = room.peerConnection(name);
      if (!pc) continue;
      const report = await pc.getStats();
      const msid = {};
      const sdp = pc.currentRemoteDescription ? pc.currentRemoteDescription.sdp : '';
      for (const m of sdp.matchAll(/^a=msid:(\S+) (\S+)/gm)) msid[m[2]] = m[1];
      for (const s of report.values()) {
        if (name === 'subscribe' && s.type === 'inbound-rtp') {
          const who = msid[s.trackIdentifier] || `?${s.trackIdentifier}`;
          const r = (out.remotes[who] ||= { framesDecoded: 0, audioBytes: 0, frameWidth: 0, nack: 0 });
          if (s.kind === 'video') {
            r.framesDecoded += s.framesDecoded || 0;
            r.frameWidth = Math.max(r.frameWidth, s.frameWidth || 0);
            r.nack += s.nackCount || 0;
          } else r.audioBytes += s.bytesReceived || 0;
        }
        if (name === 'publish' && s.type === 'outbound-rtp' && s.kind === 'video') {
          // What Chromium sends per simulcast layer (rid): its size, and why it is limited.
          (out.layers ||= {})[s.rid || '-'] = { frameWidth: s.frameWidth || 0, frameHeight: s.frameHeight || 0, bytesSent: s.bytesSent || 0, limit: s.qualityLimitationReason || null };
        }
        if (s.type === 'transport' && s.selectedCandidatePairId) {
          const p = report.get(s.selectedCandidatePairId);
          const l = p && report.get(p.localCandidateId);
          const rm = p && report.get(p.remoteCandidateId);
          out.pairs[name] = { local: l && l.candidateType, remote: rm && rm.candidateType, protocol: l && l.protocol };
        }
      }
    }
    return out;
  });
}

function problems(v, ids, self, relay) {
  const out = [];
  if (v.state !== 'joined') return [`state ${v.state} ${v.error || ''}`];
  for (const id of ids) {
    if (id === self) continue;
    const r = v.remotes[id];
    if (!r) { out.push(`nothing from ${id}`); continue; }
    if (!(r.framesDecoded > 0)) out.push(`${id}: framesDecoded ${r.framesDecoded}`);
    if (!(r.audioBytes > 0)) out.push(`${id}: audio bytes ${r.audioBytes}`);
  }
  if (relay) {
    for (const name of ['publish', 'subscribe']) {
      const p = v.pairs[name];
      if (!p || p.local !== 'relay') out.push(`${name} pair ${JSON.stringify(p)} is not relay`);
    }
  }
  return out;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const roomName = `sfu-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`;
  const browser = await launchChromium(o.chromium);
  const result = { room: roomName, pages: o.pages, relay: o.relay, ok: false };
  try {
    const pages = [];
    for (let i = 0; i < o.pages; i++) {
      const page = await browser.context.newPage();
      page.on('console', (m) => { if (m.type() === 'error') console.error(`page ${i}: ${m.text()}`); });
      const q = new URLSearchParams({ key: o.key, room: roomName, name: `p${i}`, autojoin: '1', mode: 'sfu' });
      if (o.res) q.set('res', o.res);
      if (o.relay) q.set('relay', '1');
      await page.goto(`${o.baseUrl}/?${q}`);
      pages.push(page);
    }
    const deadline = Date.now() + o.timeoutMs;
    let views = [];
    let issues = [];
    const started = Date.now();
    for (;;) {
      views = await Promise.all(pages.map(view));
      const ids = views.map((v) => v.participantId).filter(Boolean);
      issues = ids.length < o.pages ? [`only ${ids.length} joined`] : views.flatMap((v, i) => problems(v, ids, v.participantId, o.relay).map((p) => `page ${i}: ${p}`));
      if (issues.length === 0) break;
      if (Date.now() > deadline) throw new Error(`media: ${issues.join('; ')}`);
      await sleep(500);
    }
    result.mediaMs = Date.now() - started;
    if (o.minFrameWidth > 0) {
      // Sharp video: every page receives every other page's video at least this wide (the
      // top simulcast layer once the publisher's bandwidth estimate allows it).
      for (;;) {
        const narrow = views.flatMap((v, i) => Object.entries(v.remotes).filter(([, r]) => !(r.frameWidth >= o.minFrameWidth)).map(([id, r]) => `page ${i} gets ${id} at width ${r.frameWidth}`));
        if (narrow.length === 0) break;
        if (Date.now() > deadline) {
          result.views = views.map((v) => ({ id: v.participantId, remotes: v.remotes, layers: v.layers }));
          throw new Error(`video below ${o.minFrameWidth} wide: ${narrow.join('; ')}`);
        }
        await sleep(500);
        views = await Promise.all(pages.map(view));
      }
      result.widthMs = Date.now() - started;
    }
    result.views = views.map((v) => ({ id: v.participantId, remotes: v.remotes, pairs: v.pairs, mode: v.mode, modeText: v.modeText, statusText: v.statusText, layers: v.layers }));
    // Data channel: page 0 says hello; everyone else hears it from page 0.
    const text = `hello from p0 ${Date.now()}`;
    await pages[0].evaluate((t) => window.turnkeyDemo.sendData(t), text);
    for (;;) {
      const got = await Promise.all(pages.slice(1).map((p) => p.evaluate(() => window.turnkeyDemo.data)));
      const missing = got.map((d, i) => (d.some((m) => m.data === text && m.from === views[0].participantId) ? null : i + 1)).filter((x) => x !== null);
      if (missing.length === 0) break;
      if (Date.now() > deadline + 10000) throw new Error(`data channel: pages ${missing} did not receive ${text}: ${JSON.stringify(got)}`);
      await sleep(300);
    }
    result.data = true;
    for (;;) {
      const speakers = await Promise.all(pages.map((p) => p.evaluate(() => window.turnkeyDemo.activeSpeaker)));
      if (speakers.some((s) => s)) { result.activeSpeaker = speakers; break; }
      if (Date.now() > deadline + 20000) throw new Error('no active-speaker event on any page');
      await sleep(500);
    }
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
