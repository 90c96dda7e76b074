#!/usr/bin/env node
// Relay-only WebRTC call in headless Chromium through a TURN server.
//
// Two RTCPeerConnections in one page, both with iceTransportPolicy 'relay', exchange an
// offer/answer in-page; the first sends the fake camera's video and a data channel message, the
// second decodes the video and echoes the message. The call passes when, within the timeout,
// the receiver has decoded frames, the echo came back, and the selected candidate pair of both
// peers is relay/relay (over the expected relay protocol, if given).
//
// Usage:
//   node relay_call.mjs --urls turn:127.0.0.1:3478?transport=udp --username U --credential P
//                       [--expect-relay-protocol udp|tcp] [--timeout-ms 45000] [--chromium PATH]
// Each option can also come from the environment: TURN_URLS (comma-separated), TURN_USERNAME,
// TURN_CREDENTIAL, EXPECT_RELAY_PROTOCOL, TIMEOUT_MS, CHROMIUM.
//
// Prints one JSON line starting with `RESULT ` on stdout; exit code 0 on success, 1 on failure,
// 2 on bad usage. Never downloads a browser: it runs the Chromium at --chromium
// (default /usr/bin/chromium).

import { createServer } from 'node:http';
import { launchChromium } from './chromium.mjs';

function usage(message) {
  console.error(`relay_call: ${message}`);
  console.error(
    'usage: node relay_call.mjs --urls URL[,URL...] --username U --credential P ' +
      '[--expect-relay-protocol udp|tcp] [--timeout-ms MS] [--chromium PATH]',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    urls: process.env.TURN_URLS ? process.env.TURN_URLS.split(',') : [],
    username: process.env.TURN_USERNAME,
    credential: process.env.TURN_CREDENTIAL,
    expectRelayProtocol: process.env.EXPECT_RELAY_PROTOCOL || null,
    timeoutMs: Number(process.env.TIMEOUT_MS || 45000),
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  };
  let urlsFromArgs = false;
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`missing value for ${flag}`);
    i++;
    switch (flag) {
      case '--urls':
        if (!urlsFromArgs) opts.urls = [];
        urlsFromArgs = true;
        opts.urls.push(...value.split(','));
        break;
      case '--username':
        opts.username = value;
        break;
      case '--credential':
        opts.credential = value;
        break;
      case '--expect-relay-protocol':
        opts.expectRelayProtocol = value;
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
  opts.urls = opts.urls.map((u) => u.trim()).filter((u) => u.length > 0);
  if (opts.urls.length === 0) usage('no TURN URL given (--urls or TURN_URLS)');
  if (opts.username === undefined || opts.credential === undefined) {
    usage('--username and --credential are required');
  }
  if (opts.expectRelayProtocol && !['udp', 'tcp', 'tls'].includes(opts.expectRelayProtocol)) {
    usage(`--expect-relay-protocol must be udp, tcp or tls, not ${opts.expectRelayProtocol}`);
  }
  if (!(opts.timeoutMs > 0)) usage('--timeout-ms must be a positive number');
  return opts;
}

// Runs inside the page. Must be self-contained: Playwright serialises its source.
async function relayCallInPage(cfg) {
  const log = [];
  const note = (msg) => log.push(`${Math.round(performance.now())}ms ${msg}`);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const deadline = performance.now() + cfg.callTimeoutMs;
  const iceServers = [{ urls: cfg.urls, username: cfg.username, credential: cfg.credential }];
  const config = { iceServers, iceTransportPolicy: 'relay' };

  const pcs = { caller: new RTCPeerConnection(config), callee: new RTCPeerConnection(config) };
  const gathered = { caller: [], callee: [] };
  const iceErrors = [];
  const remoteOf = { caller: 'callee', callee: 'caller' };
  for (const [name, pc] of Object.entries(pcs)) {
    pc.addEventListener('icecandidate', (ev) => {
      if (!ev.candidate) {
        note(`${name}: gathering complete`);
        return;
      }
      const c = ev.candidate;
      gathered[name].push({ type: c.type, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null, address: c.address, port: c.port });
      note(`${name}: candidate ${c.candidate}`);
      pcs[remoteOf[name]].addIceCandidate(c).catch((e) => note(`${name}: addIceCandidate failed: ${e}`));
    });
    pc.addEventListener('icecandidateerror', (ev) => {
      iceErrors.push({ peer: name, url: ev.url, errorCode: ev.errorCode, errorText: ev.errorText, address: ev.address, port: ev.port });
      note(`${name}: icecandidateerror ${ev.url} ${ev.errorCode} ${ev.errorText}`);
    });
    pc.addEventListener('iceconnectionstatechange', () => note(`${name}: ice ${pc.iceConnectionState}`));
    pc.addEventListener('connectionstatechange', () => note(`${name}: connection ${pc.connectionState}`));
  }

  const result = {
    ok: false,
    error: null,
    gathered,
    iceErrors,
    framesDecoded: 0,
    bytesReceived: 0,
    echo: null,
    selected: {},
    log,
  };

  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: false });
    for (const track of stream.getTracks()) pcs.caller.addTrack(track, stream);
    note(`getUserMedia: ${stream.getVideoTracks().length} video track(s)`);

    // Data channel: the callee echoes what the caller sends.
    const channel = pcs.caller.createDataChannel('ping');
    const echoed = new Promise((resolve) => {
      channel.addEventListener('message', (ev) => resolve(String(ev.data)));
    });
    channel.addEventListener('open', () => {
      note('data channel open');
      channel.send('ping through the relay');
    });
    pcs.callee.addEventListener('datachannel', (ev) => {
      // The caller's message can arrive before the callee's end of the channel reports
      // 'open' (its DCEP open and the first message may be handled in one go); sending then
      // throws InvalidStateError, so the echo waits for 'open'.
      ev.channel.addEventListener('message', (m) => {
        const reply = () => ev.channel.send(`echo: ${m.data}`);
        if (ev.channel.readyState === 'open') reply();
        else ev.channel.addEventListener('open', reply, { once: true });
      });
    });
    echoed.then((text) => {
      result.echo = text;
      note(`data channel echo: ${text}`);
    });

    const offer = await pcs.caller.createOffer();
    await pcs.caller.setLocalDescription(offer);
    await pcs.callee.setRemoteDescription(offer);
    const answer = await pcs.callee.createAnswer();
    await pcs.callee.setLocalDescription(answer);
    await pcs.caller.setRemoteDescription(answer);
    note('offer/answer done');

    const connected = () => pcs.caller.connectionState === 'connected' && pcs.callee.connectionState === 'connected';
    while (!connected()) {
      const states = Object.values(pcs).map((pc) => pc.connectionState);
      if (states.includes('failed')) throw new Error(`connection failed (states ${states.join('/')})`);
      for (const [name, pc] of Object.entries(pcs)) {
        if (pc.iceGatheringState === 'complete' && gathered[name].length === 0) {
          const errors = iceErrors.filter((e) => e.peer === name).map((e) => `${e.url}: ${e.errorCode} ${e.errorText}`);
          throw new Error(`${name} gathered no relay candidate (TURN allocation failed: ${errors.join('; ') || 'no icecandidateerror reported'})`);
        }
      }
      if (performance.now() > deadline) {
        const hint = gathered.caller.length + gathered.callee.length + iceErrors.length === 0
          ? '; Chromium gathered no candidate and reported no TURN error: it ignores loopback-only hosts, so the machine needs a non-loopback interface up'
          : '';
        throw new Error(`not connected before the timeout (states ${states.join('/')})${hint}`);
      }
      await sleep(100);
    }
    note('both peers connected');

    // Poll the receiver until it has decoded video and the echo came back.
    for (;;) {
      const stats = await pcs.callee.getStats();
      for (const s of stats.values()) {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          result.framesDecoded = s.framesDecoded ?? 0;
          result.bytesReceived = s.bytesReceived ?? 0;
        }
      }
      if (result.framesDecoded > 0 && result.echo !== null) break;
      if (performance.now() > deadline) {
        throw new Error(`receiver decoded ${result.framesDecoded} frames, echo ${result.echo === null ? 'missing' : 'received'} before the timeout`);
      }
      await sleep(200);
    }

    // The selected candidate pair of each peer, from its transport stats.
    for (const [name, pc] of Object.entries(pcs)) {
      const stats = await pc.getStats();
      let pair = null;
      for (const s of stats.values()) {
        if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
      }
      if (!pair) {
        for (const s of stats.values()) {
          if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
        }
      }
      if (!pair) throw new Error(`${name}: no selected candidate pair in getStats`);
      const describe = (c) => c && { candidateType: c.candidateType, protocol: c.protocol, relayProtocol: c.relayProtocol ?? null, address: c.address, port: c.port, url: c.url ?? null };
      result.selected[name] = {
        state: pair.state,
        bytesSent: pair.bytesSent,
        bytesReceived: pair.bytesReceived,
        local: describe(stats.get(pair.localCandidateId)),
        remote: describe(stats.get(pair.remoteCandidateId)),
      };
    }
    for (const [name, sel] of Object.entries(result.selected)) {
      if (sel.local?.candidateType !== 'relay' || sel.remote?.candidateType !== 'relay') {
        throw new Error(`${name}: selected pair is ${sel.local?.candidateType}/${sel.remote?.candidateType}, not relay/relay`);
      }
      if (cfg.expectRelayProtocol && sel.local.relayProtocol !== cfg.expectRelayProtocol) {
        throw new Error(`${name}: local relay candidate uses ${sel.local.relayProtocol} to the TURN server, expected ${cfg.expectRelayProtocol}`);
      }
    }
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
  } finally {
    for (const pc of Object.values(pcs)) pc.close();
  }
  return result;
}

const PAGE = '<!doctype html><meta charset="utf-8"><title>turnkey relay call</title><p>turnkey relay call</p>';

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const started = Date.now();
  let browser = null;
  let server = null;
  let finished = false;

  const fail = (error, extra = {}) => {
    console.log(`RESULT ${JSON.stringify({ ok: false, error, ...extra })}`);
    console.error(`relay_call: FAILED: ${error}`);
  };

  // Hard deadline for the whole run, browser start-up included.
  const hardTimeout = setTimeout(() => {
    if (finished) return;
    fail(`timed out after ${opts.timeoutMs + 15000} ms`);
    if (browser) browser.close();
    process.exit(1);
  }, opts.timeoutMs + 15000);
  hardTimeout.unref();

  let exitCode = 1;
  try {
    server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(PAGE);
    });
    await new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    const pageUrl = `http://127.0.0.1:${server.address().port}/`;

    browser = await launchChromium(opts.chromium, (process.env.CHROMIUM_EXTRA_ARGS || "").split(" ").filter(Boolean));
    const page = browser.context.pages()[0] ?? (await browser.context.newPage());
    page.on('console', (msg) => console.error(`page console: ${msg.text()}`));
    page.on('pageerror', (err) => console.error(`page error: ${err}`));
    await page.goto(pageUrl);
    const isSecure = await page.evaluate(() => window.isSecureContext);
    if (!isSecure) throw new Error(`${pageUrl} is not a secure context; getUserMedia would fail`);

    const result = await page.evaluate(relayCallInPage, {
      urls: opts.urls,
      username: opts.username,
      credential: opts.credential,
      expectRelayProtocol: opts.expectRelayProtocol,
      callTimeoutMs: opts.timeoutMs,
    });
    const { log, ...summary } = result;
    for (const line of log) console.error(`page: ${line}`);
    summary.urls = opts.urls;
    summary.userAgent = await page.evaluate(() => navigator.userAgent).catch(() => null);
    summary.elapsedMs = Date.now() - started;
    finished = true;
    if (result.ok) {
      console.log(`RESULT ${JSON.stringify(summary)}`);
      exitCode = 0;
    } else {
      fail(result.error, summary);
    }
  } catch (e) {
    finished = true;
    fail(String(e && e.message ? e.message : e));
  } finally {
    if (browser) await browser.close();
    if (server) server.close();
  }
  process.exit(exitCode);
}

main();
