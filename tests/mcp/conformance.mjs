// The MCP project's own conformance checks (@modelcontextprotocol/conformance, pinned in tests/npm) against
// the daemon's Streamable HTTP endpoint. Its client sends no bearer token, so it talks to a proxy on loopback
// that adds ours and passes everything else through untouched (Host, Origin, bodies, SSE streams).
//
// The scenarios run are those that apply to a server whose tools are sandboxes (SCENARIOS below). The others
// test features this server does not offer (resources, prompts, completion, logging, sampling) or fixture
// tools of the SDK's "everything" test server (test_simple_text, test_reconnection, ...).
// env: MCP_URL (http://127.0.0.1:PORT/mcp), MCP_TOKEN, OUT_DIR. Prints one line per check; exits 1 if any
// check failed or a scenario produced none.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

// CONFORMANCE_SCENARIOS (comma-separated) runs others, to see what they say.
const SCENARIOS = process.env.CONFORMANCE_SCENARIOS?.split(',') ??
                  ['server-initialize', 'ping', 'tools-list', 'server-sse-multiple-streams', 'dns-rebinding-protection'];

const target = new URL(process.env.MCP_URL);
const token = process.env.MCP_TOKEN;
const outDir = process.env.OUT_DIR;
const cli = new URL('../npm/node_modules/@modelcontextprotocol/conformance/dist/index.js', import.meta.url).pathname;

const proxy = http.createServer((req, res) => {
  const up = http.request({ host: target.hostname, port: target.port, method: req.method, path: req.url,
                            headers: { ...req.headers, authorization: `Bearer ${token}` } }, (r) => {
    res.writeHead(r.statusCode, r.headers);
    r.pipe(res);
  });
  up.on('error', (e) => { if (!res.headersSent) res.writeHead(502); res.end(String(e)); });
  req.pipe(up);
  res.on('close', () => up.destroy());
});
await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
const url = `http://127.0.0.1:${proxy.address().port}${target.pathname}`;

function checksUnder(dir) {
  const found = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) found.push(...checksUnder(p));
    else if (e.name === 'checks.json') found.push(...JSON.parse(fs.readFileSync(p, 'utf8')));
  }
  return found;
}

let failed = 0;
for (const scenario of SCENARIOS) {
  const dir = path.join(outDir, scenario);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  // The proxy lives in this process: the CLI runs in a child while it serves.
  const child = await new Promise((resolve) => {
    const c = spawn(process.execPath, [cli, 'server', '--url', url, '--scenario', scenario, '-o', dir],
                    { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.stderr.on('data', (d) => { out += d; });
    const timer = setTimeout(() => c.kill('SIGKILL'), 120000);
    c.on('close', (code) => { clearTimeout(timer); resolve({ code, out }); });
  });
  const checks = checksUnder(dir);
  if (checks.length === 0) {
    console.log(`FAIL ${scenario}: no checks recorded (exit ${child.code})\n${child.out}`);
    ++failed;
    continue;
  }
  for (const c of checks) {
    const bad = c.status === 'FAILURE';
    failed += bad;
    console.log(`${bad ? 'FAIL' : 'ok  '} ${scenario} ${c.id}: ${c.status}${c.errorMessage ? ` (${c.errorMessage})` : ''}`);
  }
}
proxy.close();
proxy.closeAllConnections();
console.log(failed === 0 ? 'all conformance checks passed' : `${failed} conformance checks failed`);
process.exit(failed === 0 ? 0 : 1);

