// Opens the demo page at `--url` (which should carry `autojoin=1`), waits until it has joined
// or failed (`--timeout-ms`), and prints `RESULT {...}` with what the page shows: its state,
// error, the room's mode and the mode line, and the status line. Exit 0 whenever it could run.
//
// Usage: node demo_join.mjs --url 'http://127.0.0.1:PORT/?key=K&room=R&autojoin=1' \
//          --chromium /usr/bin/chromium [--timeout-ms 20000] [--insecure]
// --insecure: accept the server's certificate whatever it is (a self-signed https:// URL), as a
// user who checked the printed fingerprint would.

import { launchChromium } from './chromium.mjs';

const a = process.argv.slice(2);
const o = { timeoutMs: 20000, chromium: '/usr/bin/chromium' };
for (let i = 0; i < a.length; i++) {
  if (a[i] === '--url') o.url = a[++i];
  else if (a[i] === '--chromium') o.chromium = a[++i];
  else if (a[i] === '--timeout-ms') o.timeoutMs = Number(a[++i]);
  else if (a[i] === '--insecure') o.insecure = true;
}
if (!o.url) {
  console.error('--url is required');
  process.exit(2);
}

const browser = await launchChromium(o.chromium, o.insecure ? ['--ignore-certificate-errors'] : []);
const result = {};
try {
  const page = await browser.context.newPage();
  await page.goto(o.url);
  await page
    .waitForFunction(() => ['joined', 'error'].includes(window.turnkeyDemo?.state), null, { timeout: o.timeoutMs })
    .catch(() => {});
  Object.assign(
    result,
    await page.evaluate(() => ({
      state: window.turnkeyDemo.state,
      error: window.turnkeyDemo.error,
      mode: window.turnkeyDemo.mode,
      modeNotice: window.turnkeyDemo.modeNotice,
      modeText: document.getElementById('room-mode')?.textContent ?? null,
      statusText: document.getElementById('status')?.textContent ?? null,
      origin: location.origin,
      secureContext: window.isSecureContext,
    })),
  );
} catch (e) {
  result.failure = String(e && e.message ? e.message : e);
} finally {
  await browser.close();
}
console.log(`RESULT ${JSON.stringify(result)}`);
process.exit(0);
