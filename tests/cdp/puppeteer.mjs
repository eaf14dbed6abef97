// Puppeteer over the relay (tests/e2e/cdp_test.cc runs it): BROWSER_URL is sandboxctl's endpoint (http),
// PAGE_URL the test's server. Prints one JSON line of what it saw.
import { createRequire } from 'node:module';
// The clients are pinned in tests/npm (NPM_DIR), not next to this script.
const require = createRequire(`${process.env.NPM_DIR}/package.json`);
const puppeteer = require('puppeteer-core').default ?? require('puppeteer-core');

const { BROWSER_URL, PAGE_URL } = process.env;
const out = {};
const stage = (s) => console.error(`puppeteer: ${s}`);
stage('connect');
const browser = await puppeteer.connect({ browserURL: BROWSER_URL, protocolTimeout: 30000 });
stage('newPage');
const page = await browser.newPage();
stage('goto');
await page.goto(`${PAGE_URL}/form`);
out.title = await page.title();
stage('type');
await page.type('#v', 'typed by puppeteer');
await Promise.all([page.waitForNavigation(), page.click('#go')]);
out.submitted = await page.evaluate(() => document.body.textContent);
stage('screenshot');
const png = Buffer.from(await page.screenshot());
out.screenshot_png = png.subarray(1, 4).toString() === 'PNG';
stage('second tab');
const second = await browser.newPage();
await second.goto(`${PAGE_URL}/second`);
out.second_title = await second.title();
await page.goto(`${PAGE_URL}/form`);
stage('popup');
const popupTarget = browser.waitForTarget((t) => t.url().endsWith('/popup'), { timeout: 15000 }).catch((e) => {
  console.error(`puppeteer: targets: ${JSON.stringify(browser.targets().map((t) => [t.type(), t.url()]))}`);
  throw e;
});
await page.evaluate(() => window.open('/popup'));
const popup = await (await popupTarget).page();
await popup.waitForFunction(() => document.readyState === 'complete');
out.popup_title = await popup.title();
stage('close');
await second.close();
await browser.disconnect();
console.log(JSON.stringify(out));
process.exit(0);
