// Connects, opens a page and waits to be killed (the test drops its WebSocket with SIGKILL).
import { createRequire } from 'node:module';
// The clients are pinned in tests/npm (NPM_DIR), not next to this script.
const require = createRequire(`${process.env.NPM_DIR}/package.json`);
const { chromium } = require('playwright-core');

const browser = await chromium.connectOverCDP(process.env.CDP_URL, { timeout: 30000 });
const page = await browser.contexts()[0].newPage();
await page.goto(`${process.env.PAGE_URL}/second`);
console.log('connected');
setInterval(() => {}, 1000);
