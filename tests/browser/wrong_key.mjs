// A wrong API key shows its error at once, in the demo page (`/?key=...&autojoin=1`) and in
// `/turn-test` (its "Fetch credentials" button), instead of hanging on a login prompt. Each page
// gets `--timeout-ms` to show an error; prints `RESULT {...}` with what each page showed and how
// long it took, and exits 0 when both showed one.
//
// Usage: node wrong_key.mjs --base-url http://127.0.0.1:PORT --chromium /usr/bin/chromium
//        [--key dev:wrong] [--timeout-ms 10000]

import { launchChromium } from './chromium.mjs';

function args() {
  const a = process.argv.slice(2);
  const o = { key: 'dev:wrong', timeoutMs: 10000, chromium: '/usr/bin/chromium' };
  for (let i = 0; i < a.length; i++) {
    if (a[i] === '--base-url') o.baseUrl = a[++i];
    else if (a[i] === '--chromium') o.chromium = a[++i];
    else if (a[i] === '--key') o.key = a[++i];
    else if (a[i] === '--timeout-ms') o.timeoutMs = Number(a[++i]);
  }
  if (!o.baseUrl) throw new Error('--base-url is required');
  return o;
}

async function main() {
  const opts = args();
  const browser = await launchChromium(opts.chromium);
  const result = { ok: false };
  try {
    // The demo page joins at once and must show the 401.
    const demo = await browser.context.newPage();
    let started = Date.now();
    await demo.goto(`${opts.baseUrl}/?key=${encodeURIComponent(opts.key)}&room=wrong-key&autojoin=1&audio=0`);
    const demoShown = await demo
      .waitForFunction(() => window.turnkeyDemo && window.turnkeyDemo.error, null, { timeout: opts.timeoutMs })
      .then(() => true, () => false);
    result.demo = {
      shown: demoShown,
      ms: Date.now() - started,
      state: await demo.evaluate(() => window.turnkeyDemo.state).catch(() => null),
      error: await demo.evaluate(() => window.turnkeyDemo.error).catch(() => null),
      status: await demo.textContent('#status').catch(() => null),
    };
    // /turn-test: fetching credentials with the wrong key must fail with the status shown.
    const tt = await browser.context.newPage();
    await tt.goto(`${opts.baseUrl}/turn-test?key=${encodeURIComponent(opts.key)}`);
    started = Date.now();
    const fetched = tt.evaluate(() => window.turnTest.fetchCredentials().then(() => 'ok', (e) => `error: ${e.message}`));
    const timeout = new Promise((r) => setTimeout(() => r(null), opts.timeoutMs));
    const outcome = await Promise.race([fetched, timeout]);
    result.turnTest = {
      shown: typeof outcome === 'string' && outcome.startsWith('error'),
      ms: Date.now() - started,
      outcome,
      status: await tt.textContent('#status').catch(() => null),
    };
    result.ok = result.demo.shown && result.turnTest.shown;
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
  } finally {
    await browser.close();
  }
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(0);
}

main();
