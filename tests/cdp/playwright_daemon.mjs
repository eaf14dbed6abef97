// Playwright straight at the daemon's TCP port (tests/e2e/cdp_test.cc runs it): CDP_URL is
// http://HOST:PORT/cdp/SESSION, CDP_TOKEN the bearer token ("" to send none), PAGE_URL the test's server
// (reached through the session's egress proxy). Prints one JSON line of what it saw; exits non-zero on failure.
import { createRequire } from 'node:module';
const require = createRequire(`${process.env.NPM_DIR}/package.json`);
const { chromium } = require('playwright-core');

const { CDP_URL, CDP_TOKEN, PAGE_URL } = process.env;
const out = {};
const headers = CDP_TOKEN ? { Authorization: `Bearer ${CDP_TOKEN}` } : {};
const browser = await chromium.connectOverCDP(CDP_URL, { timeout: 30000, headers });
const page = await browser.contexts()[0].newPage();
await page.goto(`${PAGE_URL}/second`);
out.title = await page.title();
const png = await page.screenshot();
out.screenshot_png = png.subarray(1, 4).toString() === 'PNG';
out.screenshot_bytes = png.length;
await page.close();
await browser.close();
console.log(JSON.stringify(out));
process.exit(0);
