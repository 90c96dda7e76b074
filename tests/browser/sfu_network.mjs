#!/usr/bin/env node
// SFU adaptation under real network conditions. A publisher Chromium on the host sends
// 1280x720 video with 3 simulcast layers into a fresh SFU room; a subscriber Chromium runs inside
// a network namespace (its executable is a wrapper that does `ip netns exec`), so shaping the
// namespace's veth link shapes only the subscriber's path. The test (tests/sfu_network.rs)
// passes the shell commands that shape it. Phases:
//  1. capped: --cap-cmd (e.g. tbf 300 kbit) before anyone joins; the subscriber must decode and,
//     after settling, receive a low layer (frameWidth <= --low-width);
//     and the publisher must have paused its full-resolution layer (nobody watches it);
//  2. uncapped: --uncap-cmd; frameWidth must rise above --low-width; then the subscriber asks
//     for maxHeight 180 and must get the low layer again;
//  3. lossy: --loss-cmd (e.g. iptables statistic drop); video must keep decoding for --loss-secs
//     while the subscriber's nackCount grows; then --unloss-cmd;
//  4. UDP blocked: --block-udp-cmd (iptables in the namespace); a second subscriber page joins
//     and must decode with a TCP selected candidate pair (ICE-TCP to the SFU).
// Usage: node sfu_network.mjs --base-url URL --key K:S --sub-chromium WRAPPER --cap-cmd CMD
//          --uncap-cmd CMD --loss-cmd CMD --unloss-cmd CMD --block-udp-cmd CMD [--low-width 320]
//          [--loss-secs 12]
// Prints `RESULT {json}`; exit 0 on success.

import { execSync } from 'node:child_process';
import { launchChromium } from './chromium.mjs';

const o = { lowWidth: 320, lossSecs: 12, chromium: '/usr/bin/chromium' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
  o[k] = argv[i + 1];
}
for (const k of ['baseUrl', 'key', 'subChromium', 'capCmd', 'uncapCmd', 'lossCmd', 'blockUdpCmd']) {
  if (!o[k]) { console.error(`sfu_network: --${k} is required`); process.exit(2); }
}
o.lowWidth = Number(o.lowWidth);
o.lossSecs = Number(o.lossSecs);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sh = (cmd) => { console.error(`+ ${cmd}`); execSync(cmd, { stdio: 'inherit' }); };

async function inbound(page) {
  return page.evaluate(async () => {
    const room = window.turnkeyDemo && window.turnkeyDemo.room;
    const pc = room && room.peerConnection('subscribe');
    if (!pc) return null;
    const rep = await pc.getStats();
    const out = { frameWidth: 0, framesDecoded: 0, nackCount: 0, packetsLost: 0, freezeCount: 0, pair: null };
    for (const s of rep.values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        out.frameWidth = s.frameWidth || 0;
        out.framesDecoded = s.framesDecoded || 0;
        out.nackCount = s.nackCount || 0;
        out.packetsLost = s.packetsLost || 0;
        out.freezeCount = s.freezeCount || 0;
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const p = rep.get(s.selectedCandidatePairId);
        const l = p && rep.get(p.localCandidateId);
        out.pair = l ? { type: l.candidateType, protocol: l.protocol } : null;
      }
    }
    return out;
  });
}

/** The publisher's simulcast encodings: rid -> active. */
async function encodings(page) {
  return page.evaluate(() => {
    const pc = window.turnkeyDemo.room.peerConnection('publish');
    const out = {};
    for (const t of pc.getTransceivers()) {
      if (t.sender.track && t.sender.track.kind === 'video') {
        for (const e of t.sender.getParameters().encodings) if (e.rid) out[e.rid] = e.active;
      }
    }
    return out;
  });
}

async function waitForPub(page, what, pred, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const enc = await encodings(page);
    if (pred(enc)) return enc;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms; encodings ${JSON.stringify(enc)}`);
    await sleep(500);
  }
}

async function waitFor(page, what, pred, ms) {
  const deadline = Date.now() + ms;
  let last = null;
  for (;;) {
    last = await inbound(page);
    if (last && last.framesDecoded !== undefined && pred(last)) return last;
    if (last === null) last = await page.evaluate(() => ({ state: window.turnkeyDemo?.state, error: window.turnkeyDemo?.error, events: JSON.stringify(window.turnkeyDemo?.events ?? null).slice(-400) }));
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms; last ${JSON.stringify(last)}`);
    await sleep(500);
  }
}

async function main() {
  const room = `net-${Date.now().toString(36)}`;
  const result = { ok: false, room };
  // The pages are not on localhost: let them use getUserMedia all the same.
  const secure = [`--unsafely-treat-insecure-origin-as-secure=${o.baseUrl}`];
  const host = await launchChromium(o.chromium, secure);
  const ns = await launchChromium(o.subChromium, secure);
  try {
    sh(o.capCmd);
    const url = (name, extra) => `${o.baseUrl}/?${new URLSearchParams({ key: o.key, room, name, autojoin: '1', mode: 'sfu', audio: '0', ...extra })}`;
    const pub = await host.context.newPage();
    pub.on('console', (m) => { if (m.type() === 'error') console.error(`publisher: ${m.text()}`); });
    await pub.goto(url('publisher', { res: '1280x720', fps: '15' }));
    const sub = await ns.context.newPage();
    sub.on('console', (m) => { if (m.type() === 'error') console.error(`subscriber: ${m.text()}`); });
    await sub.goto(url('subscriber', { res: '160x120', fps: '10', simulcast: '0' }));
    // 1. Capped.
    await waitFor(sub, 'capped: first frames', (s) => s.framesDecoded > 0, 40000);
    // Settles on a low layer: 5 consecutive one-second samples at or below --low-width, within
    // 45 s (the path first has to show the SFU that the higher layers do not fit).
    const capped = [];
    for (let run = 0; ; ) {
      await sleep(1000);
      const w = (await inbound(sub)).frameWidth;
      capped.push(w);
      run = w > 0 && w <= o.lowWidth ? run + 1 : 0;
      if (run >= 5) break;
      if (capped.length >= 45) throw new Error(`capped: widths ${capped} (want 5 in a row <= ${o.lowWidth})`);
    }
    result.cappedWidths = capped;
    // Nobody watches the full layer now: the SFU paused it at the publisher.
    const paused = await waitForPub(pub, 'capped: full layer paused', (enc) => enc.f === false, 15000);
    result.pausedLayers = paused;
    // 2. Uncapped.
    sh(o.uncapCmd);
    const t0 = Date.now();
    const up = await waitFor(sub, 'uncapped: a higher layer', (s) => s.frameWidth > o.lowWidth, 60000);
    result.uncappedWidth = up.frameWidth;
    result.upgradeMs = Date.now() - t0;
    // 2b. The subscriber asks for 180p at most: it gets the low layer again, whatever the path.
    await sub.evaluate(() => window.turnkeyDemo.room.setVideoPreference({ maxHeight: 180 }));
    const pref = await waitFor(sub, 'maxHeight 180: the low layer', (s) => s.frameWidth > 0 && s.frameWidth <= o.lowWidth, 30000);
    result.preferredWidth = pref.frameWidth;
    // 3. Lossy.
    const before = await inbound(sub);
    sh(o.lossCmd);
    const loss = [];
    for (let i = 0; i < o.lossSecs; i++) {
      await sleep(1000);
      loss.push(await inbound(sub));
    }
    sh(o.unlossCmd || o.uncapCmd);
    const after = loss[loss.length - 1];
    result.loss = {
      framesDecoded: after.framesDecoded - before.framesDecoded,
      nackCount: after.nackCount - before.nackCount,
      packetsLost: after.packetsLost - before.packetsLost,
      freezeCount: after.freezeCount - before.freezeCount,
      perSecond: loss.map((s, i) => s.framesDecoded - (i ? loss[i - 1].framesDecoded : before.framesDecoded)),
    };
    if (!(result.loss.nackCount > 0)) throw new Error(`lossy: subscriber sent no NACK: ${JSON.stringify(result.loss)}`);
    // Kept decoding: frames arrived in every second but at most two.
    const stalled = result.loss.perSecond.filter((n) => n === 0).length;
    if (stalled > 2 || result.loss.framesDecoded < 4 * o.lossSecs) throw new Error(`lossy: video stalled: ${JSON.stringify(result.loss)}`);
    // 4. UDP blocked in the namespace: a new subscriber reaches the SFU over ICE-TCP.
    sh(o.blockUdpCmd);
    const sub2 = await ns.context.newPage();
    await sub2.goto(url('tcp-subscriber', { res: '160x120', fps: '10', simulcast: '0' }));
    const tcp = await waitFor(sub2, 'udp blocked: decoding over ICE-TCP', (s) => s.framesDecoded > 0, 45000);
    result.tcp = tcp;
    if (!tcp.pair || tcp.pair.protocol !== 'tcp') throw new Error(`udp blocked: selected pair ${JSON.stringify(tcp.pair)}`);
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
  } finally {
    await host.close();
    await ns.close();
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(result.ok ? 0 : 1);
}

main();
