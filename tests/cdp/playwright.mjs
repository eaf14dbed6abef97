// Playwright over the relay (tests/e2e/cdp_test.cc runs it): CDP_URL is sandboxctl's endpoint, PAGE_URL the
// test's server (reached through the session's egress proxy), SYNC_DIR where the test and this script meet.
// Prints one JSON line of what it saw; exits non-zero on the first failure.
import { createRequire } from 'node:module';
// The clients are pinned in tests/npm (NPM_DIR), not next to this script.
const require = createRequire(`${process.env.NPM_DIR}/package.json`);
const { chromium } = require('playwright-core');
import fs from 'node:fs';
import path from 'node:path';

const { CDP_URL, PAGE_URL, SYNC_DIR } = process.env;
const out = {};
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitForFile(name, ms) {
  const until = Date.now() + ms;
  while (!fs.existsSync(path.join(SYNC_DIR, name))) {
    if (Date.now() > until) throw new Error(`no ${name} within ${ms} ms`);
    await sleep(50);
  }
}

const browser = await chromium.connectOverCDP(CDP_URL, { timeout: 30000 });
const context = browser.contexts()[0];
const page = await context.newPage();
await page.goto(`${PAGE_URL}/form`);
out.title = await page.title();
await page.fill('#v', 'typed by playwright');
await Promise.all([page.waitForURL(/\/submit/), page.click('#go')]);
out.submitted = await page.textContent('body');
const png = await page.screenshot();
out.screenshot_png = png.subarray(1, 4).toString() === 'PNG';
out.screenshot_bytes = png.length;

// A second tab, and a popup the page opens.
const second = await context.newPage();
await second.goto(`${PAGE_URL}/second`);
out.second_title = await second.title();
await page.goto(`${PAGE_URL}/form`);
const [popup] = await Promise.all([page.waitForEvent('popup'), page.click('#pop')]);
await popup.waitForLoadState();
out.popup_title = await popup.title();
out.pages = context.pages().length;

// The session's own tool calls run now (the test drives them) while this client keeps working.
fs.writeFileSync(path.join(SYNC_DIR, 'connected'), '');
let evaluations = 0;
while (!fs.existsSync(path.join(SYNC_DIR, 'tools-done'))) {
  if ((await page.evaluate(() => 6 * 7)) === 42) evaluations++;
  await sleep(20);
}
await waitForFile('tools-done', 1000);
out.evaluations_meanwhile = evaluations;

// The rules: a method that would take the session's browser down is refused.
const cdp = await browser.newBrowserCDPSession();
try {
  await cdp.send('Browser.crash');
  out.crash = 'sent';
} catch (e) {
  out.crash = String(e.message);
}
// Browser.close ends this connection only.
const disconnected = new Promise((r) => browser.once('disconnected', r));
await cdp.send('Browser.close').catch(() => {});
await Promise.race([disconnected, sleep(10000)]);
out.disconnected = !browser.isConnected();
console.log(JSON.stringify(out));
process.exit(0);
