#!/usr/bin/env node
// Mesh rooms in headless Chromium through the turnkey signaling server's demo page.
//
// For each scenario (a number of pages), one Chromium opens that many pages on the signaling
// server's demo page (`GET /`, which loads `/client.js`), each joining the same fresh mesh room:
// even pages with `?key=...&room=...&name=...&autojoin=1`, odd ones with `?key=...` and the form
// (room, name, Join); `&relay=1` with --relay. The scenario passes
// when, within the timeout, every page decodes video from every other page (getStats
// inbound-rtp video framesDecoded > 0 on its connection to that participant, read through the
// page's `window.turnkeyDemo.stats()` hook) and, with --relay, the selected candidate pair of
// every connection is relay/relay. Then:
// - page 0 mutes and unmutes its microphone and camera with the buttons;
// - with --resume, 3 pages or more: page 0 is away (its signaling WebSocket dropped) while the
//   last page joins, and resumes 4 s later; it and the newcomer must connect all the same;
// - with --resume: page 0 drops its signaling WebSocket; it must resume
//   (same participant id, nobody sees it leave), renegotiate with an ICE restart, and every page
//   must keep decoding video from every other page;
// - the last page clicks Leave; every other page must see it leave (its tile disappears).
//
// Usage:
//   node mesh_room.mjs --base-url http://127.0.0.1:8080 --key KEY:SECRET [--pages 2,4] [--relay]
//                      [--resume] [--timeout-ms 60000] [--chromium PATH]
// Environment equivalents: BASE_URL, API_KEY, PAGES, RELAY=1, RESUME=1, TIMEOUT_MS, CHROMIUM.
//
// Prints one JSON line starting with `RESULT ` on stdout; exit code 0 on success, 1 on failure,
// 2 on bad usage. Never downloads a browser: it runs the Chromium at --chromium
// (default /usr/bin/chromium).

import { launchChromium } from './chromium.mjs';

function usage(message) {
  console.error(`mesh_room: ${message}`);
  console.error(
    'usage: node mesh_room.mjs --base-url URL --key KEY:SECRET [--pages 2,4] [--relay] [--resume] ' +
      '[--timeout-ms MS] [--chromium PATH]',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    baseUrl: process.env.BASE_URL || null,
    key: process.env.API_KEY || null,
    pages: (process.env.PAGES || '2,4').split(','),
    relay: process.env.RELAY === '1',
    resume: process.env.RESUME === '1',
    timeoutMs: Number(process.env.TIMEOUT_MS || 60000),
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--relay') {
      opts.relay = true;
      continue;
    }
    if (flag === '--resume') {
      opts.resume = true;
      continue;
    }
    const value = argv[++i];
    if (value === undefined) usage(`missing value for ${flag}`);
    switch (flag) {
      case '--base-url':
        opts.baseUrl = value;
        break;
      case '--key':
        opts.key = value;
        break;
      case '--pages':
        opts.pages = value.split(',');
        break;
      case '--timeout-ms':
        opts.timeoutMs = Number(value);
        break;
      case '--chromium':
        opts.chromium = value;
        break;
      default:
        usage(`unknown option ${flag}`);
    }
  }
  if (!opts.baseUrl) usage('--base-url is required');
  if (!opts.key) usage('--key is required');
  opts.baseUrl = opts.baseUrl.replace(/\/+$/, '');
  opts.pages = opts.pages.map((n) => Number(n));
  if (opts.pages.length === 0 || opts.pages.some((n) => !Number.isInteger(n) || n < 2 || n > 4)) {
    usage('--pages takes page counts from 2 to 4, comma-separated');
  }
  if (!(opts.timeoutMs > 0)) usage('--timeout-ms must be a positive number');
  return opts;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Reads one page's view: its participant id, state, and per-remote stats.
async function snapshot(page) {
  return page.evaluate(async () => {
    const d = window.turnkeyDemo;
    if (!d) return { state: 'no-hook', participantId: null, stats: [], error: 'window.turnkeyDemo missing' };
    return {
      state: d.state,
      error: d.error,
      events: d.events,
      participantId: d.room ? d.room.participantId : null,
      signaling: d.room ? d.room.state : null,
      participants: d.room ? [...d.room.participants.keys()] : [],
      tiles: [...document.querySelectorAll('#tiles .tile')].map((t) => ({ id: t.dataset.participant, label: t.querySelector('.label').textContent })),
      stats: await d.stats(),
    };
  });
}

/**
 * Checks one page's snapshot against the expected remote ids: returns a list of problems
 * (empty when every remote is decoded, over relay/relay when `relay`).
 */
function problems(snap, remoteIds, relay, minFrames) {
  const out = [];
  if (snap.state !== 'joined') out.push(`state ${snap.state}${snap.error ? ` (${snap.error})` : ''}`);
  for (const id of remoteIds) {
    const s = snap.stats.find((x) => x.participantId === id);
    if (!s) {
      out.push(`no connection to ${id}`);
      continue;
    }
    const min = minFrames ? (minFrames[id] ?? 0) : 0;
    if (!(s.framesDecoded > min)) out.push(`${id}: framesDecoded ${s.framesDecoded} (need > ${min}; ${s.connectionState})`);
    if (relay) {
      const local = s.selectedPair?.local?.candidateType;
      const remote = s.selectedPair?.remote?.candidateType;
      if (local !== 'relay' || remote !== 'relay') out.push(`${id}: selected pair ${local}/${remote}, not relay/relay`);
    }
  }
  return out;
}

async function waitAll(pages, ids, { relay, deadline, what, minFrames }) {
  let last = [];
  for (;;) {
    const snaps = await Promise.all(pages.map(snapshot));
    last = snaps;
    const issues = snaps.flatMap((snap, i) => {
      const remotes = ids.filter((_, j) => j !== i);
      return problems(snap, remotes, relay, minFrames ? minFrames[i] : null).map((p) => `page ${i} (${ids[i]}): ${p}`);
    });
    if (issues.length === 0) return snaps;
    if (Date.now() > deadline) {
      const err = new Error(`${what}: not done before the timeout: ${issues.join('; ')}`);
      err.snapshots = snaps;
      throw err;
    }
    await sleep(500);
  }
}

async function runScenario(context, opts, n, runId) {
  const started = Date.now();
  const deadline = started + opts.timeoutMs;
  const roomName = `mesh-${runId}-${n}${opts.relay ? '-relay' : ''}`;
  const pages = [];
  const result = { pages: n, room: roomName, relay: opts.relay, ok: false };
  try {
    for (let i = 0; i < n; i++) {
      // With --resume and 3 pages or more, page 0 is away (signaling dropped, resuming 4 s
      // later at the earliest) while the last page joins: the server drops what is sent to it
      // meanwhile (the newcomer's offer, perhaps the previous page's still in flight), and
      // everyone must still connect once page 0 is back.
      const awayJoin = opts.resume && n >= 3 && i === n - 1;
      if (awayJoin) await pages[0].evaluate(() => window.turnkeyDemo.room._simulateDisconnect(4000));
      const page = await context.newPage();
      const tag = `${roomName}/page${i}`;
      const at = () => `+${((Date.now() - started) / 1000).toFixed(3)}s`;
      page.on('console', (msg) => console.error(`${at()} ${tag} console: ${msg.text()}`));
      page.on('pageerror', (err) => console.error(`${at()} ${tag} page error: ${err}`));
      pages.push(page);
      // Even pages join from the address (autojoin=1), odd ones by filling in the form.
      const viaForm = i % 2 === 1;
      const q = new URLSearchParams({ key: opts.key });
      if (!viaForm) {
        q.set('room', roomName);
        q.set('name', `Reader ${i + 1}`);
        q.set('autojoin', '1');
      }
      if (opts.relay) q.set('relay', '1');
      await page.goto(`${opts.baseUrl}/?${q}`, { timeout: 15000 });
      const secure = await page.evaluate(() => window.isSecureContext);
      if (!secure) throw new Error(`${opts.baseUrl} is not a secure context; getUserMedia would fail`);
      if (viaForm) {
        await page.bringToFront();
        await page.fill('#room', roomName);
        await page.fill('#name', `Reader ${i + 1}`);
        await page.click('#join');
      }
      // Joined before the next page comes: everyone's join order is then well defined.
      await page.waitForFunction(() => window.turnkeyDemo && ['joined', 'error'].includes(window.turnkeyDemo.state), null, {
        timeout: Math.max(1000, deadline - Date.now()),
      });
      const state = await page.evaluate(() => ({ state: window.turnkeyDemo.state, error: window.turnkeyDemo.error }));
      if (state.state !== 'joined') throw new Error(`page ${i} did not join: ${state.error}`);
      if (awayJoin) {
        const away = await pages[0].evaluate(() => window.turnkeyDemo.room.state);
        if (away !== 'reconnecting') throw new Error(`page 0 was back (${away}) before page ${i} joined; the test needs a longer absence`);
        await pages[0].waitForFunction(() => (window.turnkeyDemo.events.resumed || 0) >= 1, null, {
          timeout: Math.max(1000, deadline - Date.now()),
        });
        result.awayJoin = { ok: true };
      }
    }
    const ids = await Promise.all(pages.map((p) => p.evaluate(() => window.turnkeyDemo.room.participantId)));
    if (new Set(ids).size !== n) throw new Error(`participant ids not distinct: ${ids.join(', ')}`);
    result.participantIds = [...ids];
    // The ICE servers each page got in `joined` (credentials left out).
    result.iceServers = await Promise.all(
      pages.map((p) => p.evaluate(() => window.turnkeyDemo.room.iceServers.map((s) => ({ urls: s.urls, username: s.username ?? null })))),
    );

    let snaps = await waitAll(pages, ids, { relay: opts.relay, deadline, what: `${n} pages decoding each other` });
    result.connectedMs = Date.now() - started;
    result.media = snaps.map((s) => s.stats);
    // Every page shows a named tile for every other participant.
    snaps.forEach((s, i) => {
      for (let j = 0; j < n; j++) {
        if (j === i) continue;
        const t = s.tiles.find((x) => x.id === ids[j]);
        if (!t || t.label !== `Reader ${j + 1}`) throw new Error(`page ${i}: no tile named "Reader ${j + 1}" for ${ids[j]}: ${JSON.stringify(s.tiles)}`);
      }
    });

    // Mute and unmute: the buttons disable and re-enable the local tracks.
    {
      const enabled = async () => pages[0].evaluate(() => ({ audio: window.turnkeyDemo.room.audioEnabled, video: window.turnkeyDemo.room.videoEnabled }));
      // Only the front page renders frames, and a click waits for rendering.
      await pages[0].bringToFront();
      await pages[0].click('#mute-mic');
      await pages[0].click('#mute-cam');
      const off = await enabled();
      if (off.audio || off.video) throw new Error(`mute buttons left tracks enabled: ${JSON.stringify(off)}`);
      await pages[0].click('#mute-mic');
      await pages[0].click('#mute-cam');
      const on = await enabled();
      if (!on.audio || !on.video) throw new Error(`unmute left tracks disabled: ${JSON.stringify(on)}`);
    }

    if (opts.resume) {
      // Drop page 0's signaling connection; it must come back as the same participant, restart
      // ICE, and the video must keep flowing both ways.
      const before = snaps.map((s) => Object.fromEntries(s.stats.map((x) => [x.participantId, x.framesDecoded])));
      const ufragsBefore = Object.fromEntries(snaps[0].stats.map((x) => [x.participantId, x.localUfrag]));
      const resumedBefore = await pages[0].evaluate(() => window.turnkeyDemo.events.resumed || 0);
      await pages[0].evaluate(() => window.turnkeyDemo.room._simulateDisconnect());
      await pages[0].waitForFunction((k) => (window.turnkeyDemo.events.resumed || 0) > k && window.turnkeyDemo.room.state === 'connected', resumedBefore, {
        timeout: Math.max(1000, deadline - Date.now()),
      });
      const id0 = await pages[0].evaluate(() => window.turnkeyDemo.room.participantId);
      if (id0 !== ids[0]) throw new Error(`resumed with participant id ${id0}, not ${ids[0]}`);
      // The ICE restart: page 0's connections get new local ICE credentials, which the others
      // take as their remote ones, and the video keeps coming.
      for (;;) {
        snaps = await waitAll(pages, ids, { relay: opts.relay, deadline, what: 'media after resume', minFrames: before });
        const pending = [];
        for (const x of snaps[0].stats) {
          if (!x.localUfrag || x.localUfrag === ufragsBefore[x.participantId]) pending.push(`page 0 -> ${x.participantId}: ufrag still ${x.localUfrag}`);
          const j = ids.indexOf(x.participantId);
          const back = snaps[j]?.stats.find((y) => y.participantId === ids[0]);
          if (!back || back.remoteUfrag !== x.localUfrag) pending.push(`page ${j}: remote ufrag of ${ids[0]} is ${back?.remoteUfrag}, page 0 uses ${x.localUfrag}`);
        }
        if (pending.length === 0) break;
        if (Date.now() > deadline) throw new Error(`no ICE restart after the resume: ${pending.join('; ')}`);
        await sleep(500);
      }
      for (const [i, s] of snaps.entries()) {
        if (s.events['participant-left']) throw new Error(`page ${i} saw a participant leave during the resume: ${JSON.stringify(s.events)}`);
      }
      // The ICE restart happened: page 0's connections went through a new negotiation and are
      // connected again.
      result.resume = { ok: true, events: snaps[0].events };

      if (n === 2) {
        // Back too late (the server refuses the resume): page 0 rejoins as a new participant,
        // ignores its own old session (still in the room for the grace period), and the two
        // pages connect again.
        await pages[0].evaluate(() => window.turnkeyDemo.room._simulateDisconnect(0, true));
        await pages[0].waitForFunction(() => (window.turnkeyDemo.events.rejoined || 0) >= 1 && window.turnkeyDemo.room.state === 'connected', null, {
          timeout: Math.max(1000, deadline - Date.now()),
        });
        const newId = await pages[0].evaluate(() => window.turnkeyDemo.room.participantId);
        if (newId === ids[0]) throw new Error(`rejoined with the old participant id ${newId}`);
        const oldId = ids[0];
        ids[0] = newId;
        snaps = await waitAll(pages, ids, { relay: opts.relay, deadline, what: 'media after rejoin' });
        if (snaps[0].stats.some((x) => x.participantId === oldId)) throw new Error(`page 0 connects to its own old session ${oldId}`);
        result.rejoin = { ok: true, oldId, newId };
        result.participantIds = [...ids];
        result.media = snaps.map((x) => x.stats);
      }
    }

    // The last page leaves; every other page must see it go.
    const leaver = n - 1;
    await pages[leaver].bringToFront();
    await pages[leaver].click('#leave');
    await pages[leaver].waitForFunction(() => window.turnkeyDemo.state === 'left', null, { timeout: 10000 });
    for (let i = 0; i < leaver; i++) {
      await pages[i].waitForFunction(
        (id) => !window.turnkeyDemo.room.participants.has(id) && !document.querySelector(`[data-participant="${CSS.escape(id)}"]`),
        ids[leaver],
        { timeout: 10000 },
      );
    }
    result.leave = { ok: true };
    result.ok = true;
    result.elapsedMs = Date.now() - started;
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
    if (e.snapshots) result.snapshots = e.snapshots;
    else result.snapshots = await Promise.all(pages.map((p) => snapshot(p).catch((err) => ({ error: String(err) }))));
    result.logs = await Promise.all(pages.map((p) => p.evaluate(() => window.turnkeyDemo?.log.slice(-60)).catch(() => null)));
  } finally {
    for (const p of pages) {
      await p.evaluate(() => window.turnkeyDemo?.leave()).catch(() => {});
      await p.close().catch(() => {});
    }
  }
  return result;
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const started = Date.now();
  const limit = opts.timeoutMs * opts.pages.length + 30000;
  let context = null;
  let browser = null;
  let finished = false;

  const fail = (error, extra = {}) => {
    console.log(`RESULT ${JSON.stringify({ ok: false, error, ...extra })}`);
    console.error(`mesh_room: FAILED: ${error}`);
  };

  const hardTimeout = setTimeout(() => {
    if (finished) return;
    fail(`timed out after ${limit} ms`);
    if (context) context.close().catch(() => {});
    process.exit(1);
  }, limit);
  hardTimeout.unref();

  let exitCode = 1;
  try {
    browser = await launchChromium(opts.chromium, ['--autoplay-policy=no-user-gesture-required']);
    context = browser.context;
    for (const p of context.pages()) await p.close().catch(() => {});
    const runId = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
    const scenarios = [];
    for (const n of opts.pages) {
      const r = await runScenario(context, opts, n, runId);
      scenarios.push(r);
      console.error(`mesh_room: ${n} pages${opts.relay ? ' (relay)' : ''}: ${r.ok ? `ok in ${r.elapsedMs} ms` : `FAILED: ${r.error}`}`);
      if (!r.ok) break;
    }
    finished = true;
    const summary = { scenarios, elapsedMs: Date.now() - started };
    const failed = scenarios.find((s) => !s.ok);
    if (failed) {
      fail(`${failed.pages} pages: ${failed.error}`, summary);
    } else {
      console.log(`RESULT ${JSON.stringify({ ok: true, ...summary })}`);
      exitCode = 0;
    }
  } catch (e) {
    finished = true;
    fail(String(e && e.message ? e.message : e));
  } finally {
    if (browser) await browser.close();
  }
  process.exit(exitCode);
}

main();
