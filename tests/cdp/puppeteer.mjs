// Puppeteer over the relay (tests/e2e/cdp_test.cc runs it): BROWSER_URL is sandboxctl's endpoint (http),
// PAGE_URL the test's server. Prints one JSON line of what it saw.
import { createRequire } from 'node:module';
// The clients are pinned in tests/npm (NPM_DIR), not next to this script.
const require = createRequire(`${process.env.NPM_DIR}/package.json`);
const puppeteer = require('puppeteer-core').default ?? require('puppeteer-core');

const { BROWSER_URL, PAGE_URL } = process.env;
const out = {};
const browser = await puppeteer.connect({ browserURL: BROWSER_URL, protocolTimeout: 30000 });
const page = await browser.newPage();
await page.goto(`${PAGE_URL}/form`);
out.title = await page.title();
await page.type('#v', 'typed by puppeteer');
await Promise.all([page.waitForNavigation(), page.click('#go')]);
out.submitted = await page.evaluate(() => document.body.textContent);
const png = Buffer.from(await page.screenshot());
out.screenshot_png = png.subarray(1, 4).toString() === 'PNG';
const second = await browser.newPage();
await second.goto(`${PAGE_URL}/second`);
out.second_title = await second.title();
await page.goto(`${PAGE_URL}/form`);
const popupTarget = browser.waitForTarget((t) => t.url().endsWith('/popup'));
await page.click('#pop');
const popup = await (await popupTarget).page();
await popup.waitForFunction(() => document.readyState === 'complete');
out.popup_title = await popup.title();
await second.close();
await browser.disconnect();
console.log(JSON.stringify(out));
process.exit(0);
