#!/usr/bin/env node
// Drives the signaling server's "Test my TURN server" page (GET /turn-test,
// services/signaling/web/turn-test.html) in headless Chromium, once per scenario, and reports what the
// page concluded: its window.turnTest.results and the verdict lines it rendered.
//
// Usage:
//   node turn_test_page.mjs --base-url http://127.0.0.1:8080 --scenarios JSON
//                           [--timeout-ms 60000] [--chromium PATH]
// JSON is a list of scenarios, run in order, each in a new tab of one browser:
//   {"name": "...",                       // for the report
//    "query": {"urls": "a,b", "username": "...", "credential": "...", "timeout": "15000"},
//                                         // the page's query parameters (prefilled fields)
//    "fetchKey": "KEY:SECRET",            // optional: type it and press "Fetch issued credentials"
//    "fetchMode": "api-key" | "rest-key"} // optional, default api-key
// After the optional fetch, the script presses "Gather" and waits until the page is done.
//
// Prints one JSON line starting with `RESULT ` on stdout:
//   {"ok": true, "scenarios": [{"name", "fetched", "results", "rendered": [{url, verdict}]}],
//    "userAgent", "elapsedMs"}
// Exit code 0 when every scenario ran to the end (whatever the verdicts: the caller checks
// them), 1 on failure, 2 on bad usage. Never downloads a browser.

import { launchChromium } from './chromium.mjs';

function usage(message) {
  console.error(`turn_test_page: ${message}`);
  console.error('usage: node turn_test_page.mjs --base-url URL --scenarios JSON [--timeout-ms MS] [--chromium PATH]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { baseUrl: null, scenarios: null, timeoutMs: 60000, chromium: process.env.CHROMIUM || '/usr/bin/chromium' };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = argv[i + 1];
    if (value === undefined) usage(`missing value for ${flag}`);
    switch (flag) {
      case '--base-url': opts.baseUrl = value.replace(/\/+$/, ''); break;
      case '--scenarios':
        try { opts.scenarios = JSON.parse(value); } catch (e) { usage(`--scenarios is not JSON: ${e.message}`); }
        break;
      case '--timeout-ms': opts.timeoutMs = Number(value); break;
      case '--chromium': opts.chromium = value; break;
      default: usage(`unknown option ${flag}`);
    }
  }
  if (!opts.baseUrl) usage('--base-url is required');
  if (!Array.isArray(opts.scenarios) || opts.scenarios.length === 0) usage('--scenarios must be a non-empty JSON list');
  if (!(opts.timeoutMs > 0)) usage('--timeout-ms must be a positive number');
  return opts;
}

async function runScenario(context, baseUrl, scenario, timeoutMs) {
  const page = await context.newPage();
  page.on('console', (msg) => console.error(`page console (${scenario.name}): ${msg.text()}`));
  page.on('pageerror', (err) => console.error(`page error (${scenario.name}): ${err}`));
  try {
    const query = new URLSearchParams(scenario.query ?? {});
    const url = `${baseUrl}/turn-test?${query}`;
    const response = await page.goto(url);
    if (!response || response.status() !== 200) throw new Error(`GET ${url}: status ${response?.status()}`);
    await page.waitForFunction(() => window.turnTest !== undefined, null, { timeout: 10000 });

    let fetched = null;
    if (scenario.fetchKey) {
      await page.selectOption('#fetch-mode', scenario.fetchMode ?? 'api-key');
      await page.fill('#fetch-key', scenario.fetchKey);
      await page.click('#fetch');
      // Done when the status says so (success or failure).
      await page.waitForFunction(
        () => /^(Fetched|Fetch failed)/.test(document.getElementById('status').textContent),
        null, { timeout: 10000 });
      fetched = await page.evaluate(() => ({
        error: window.turnTest.error,
        urls: document.getElementById('urls').value.split('\n').filter(Boolean),
        username: document.getElementById('username').value,
        hasCredential: document.getElementById('credential').value.length > 0,
      }));
      if (fetched.error) throw new Error(`fetching credentials failed: ${fetched.error}`);
    }

    await page.click('#gather');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: timeoutMs });
    const results = await page.evaluate(() => window.turnTest.results);
    const rendered = await page.$$eval('section.url', (sections) => sections.map((s) => ({
      url: s.dataset.url,
      verdict: s.querySelector('.verdict')?.textContent ?? null,
    })));
    for (const r of results) {
      console.error(`${scenario.name}: ${r.url}: ${r.verdict.ok ? 'OK' : 'FAIL'} ${r.verdict.text} ` +
        `(${r.candidates.length} candidates, ${r.errors.length} errors, ${r.ms} ms${r.complete ? '' : ', timed out'})`);
      for (const c of r.candidates) console.error(`  ${c.ms} ms ${c.type} ${c.protocol} ${c.address}:${c.port} relay=${c.relayProtocol}`);
      for (const e of r.errors) console.error(`  ${e.ms} ms error ${e.code} ${e.text} ${e.url}`);
    }
    return { name: scenario.name, fetched, results, rendered };
  } finally {
    await page.close().catch(() => {});
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const started = Date.now();
  let browser = null;
  let exitCode = 1;
  const hardLimit = opts.timeoutMs * opts.scenarios.length + 30000;
  const hardTimeout = setTimeout(() => {
    console.log(`RESULT ${JSON.stringify({ ok: false, error: `timed out after ${hardLimit} ms` })}`);
    if (browser) browser.close();
    process.exit(1);
  }, hardLimit);
  hardTimeout.unref();
  try {
    browser = await launchChromium(opts.chromium, (process.env.CHROMIUM_EXTRA_ARGS || '').split(' ').filter(Boolean));
    const scenarios = [];
    for (const s of opts.scenarios) scenarios.push(await runScenario(browser.context, opts.baseUrl, s, opts.timeoutMs));
    const probe = await browser.context.newPage();
    const userAgent = await probe.evaluate(() => navigator.userAgent).catch(() => null);
    console.log(`RESULT ${JSON.stringify({ ok: true, scenarios, userAgent, elapsedMs: Date.now() - started })}`);
    exitCode = 0;
  } catch (e) {
    const error = String(e && e.message ? e.message : e);
    console.log(`RESULT ${JSON.stringify({ ok: false, error })}`);
    console.error(`turn_test_page: FAILED: ${error}`);
  } finally {
    if (browser) await browser.close();
  }
  process.exit(exitCode);
}

main();
