// The relay's cost as Playwright sees it (README, "Browser sessions"): CDP_URL is either sandboxctl's endpoint or
// a host Chromium's --remote-debugging-port. RUNS times page.goto (a data: page, no network) + page.screenshot,
// then a Runtime.evaluate returning EVAL_MB MiB. Prints one JSON line: medians in ms and the evaluate's MiB/s.
import { createRequire } from 'node:module';
const require = createRequire(`${process.env.NPM_DIR}/package.json`);
const { chromium } = require('playwright-core');

const runs = Number(process.env.RUNS || 20);
const evalMb = Number(process.env.EVAL_MB || 16);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const browser = await chromium.connectOverCDP(process.env.CDP_URL, { timeout: 30000 });
const context = browser.contexts()[0];
const page = await context.newPage();
const html = 'data:text/html,' + encodeURIComponent('<body style="background:#0a78c8"><h1>bench</h1>' + 'x'.repeat(2000));
const goto = [], shot = [], both = [];
for (let i = 0; i < runs + 2; i++) {
  const t0 = performance.now();
  await page.goto(html);
  const t1 = performance.now();
  await page.screenshot();
  const t2 = performance.now();
  if (i >= 2) {  // warm-up
    goto.push(t1 - t0);
    shot.push(t2 - t1);
    both.push(t2 - t0);
  }
}
const evals = [];
for (let i = 0; i < 5; i++) {
  const t0 = performance.now();
  const s = await page.evaluate((mb) => 'y'.repeat(mb << 20), evalMb);
  const t1 = performance.now();
  if (s.length !== evalMb << 20) throw new Error('short evaluate result');
  evals.push(t1 - t0);
}
await page.close();
console.log(JSON.stringify({ runs, goto_ms: median(goto), screenshot_ms: median(shot), goto_screenshot_ms: median(both),
                             eval_mb: evalMb, eval_ms: median(evals), eval_mib_per_s: evalMb / (median(evals) / 1000) }));
process.exit(0);
