// The daemon's Streamable HTTP endpoint (/mcp on its TCP listener), by the SDK's StreamableHTTPClientTransport
// and by raw HTTP for what the SDK does not show: 401 without or with a wrong token, 404/400 for session ids,
// Origin, MCP-Protocol-Version, and resuming a cut-off tools/call stream with Last-Event-ID.
// env: MCP_URL (http://127.0.0.1:PORT/mcp), MCP_TOKEN.
import assert from 'node:assert/strict';
import net from 'node:net';
import { Client, StreamableHTTPClientTransport, checkTools, exerciseFileTools, checkProgress, checkCancel, log } from './sdk.mjs';

const url = process.env.MCP_URL;
const token = process.env.MCP_TOKEN;
const auth = { Authorization: `Bearer ${token}` };
const jsonHeaders = { 'Content-Type': 'application/json', Accept: 'application/json, text/event-stream' };
const init = { jsonrpc: '2.0', id: 1, method: 'initialize',
               params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } } };

async function post(body, headers = {}) {
  return fetch(url, { method: 'POST', headers: { ...jsonHeaders, ...headers }, body: JSON.stringify(body) });
}

// --- auth: nothing happens without the token ---
for (const headers of [{}, { Authorization: 'Bearer wrong' }, { Authorization: `Basic ${token}` }]) {
  const r = await post(init, headers);
  assert.equal(r.status, 401, JSON.stringify(headers));
  assert.equal(r.headers.get('mcp-session-id'), null, 'no session without the token');
  await r.text();
}

// --- the session kind comes from the query at initialize ---
let r = await fetch(`${url}?kind=browser`, { method: 'POST', headers: { ...jsonHeaders, ...auth }, body: JSON.stringify(init) });
assert.equal(r.status, 200);
{
  const bsid = r.headers.get('mcp-session-id');
  const tools = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, { ...auth, 'Mcp-Session-Id': bsid });
  const names = (await tools.json()).result.tools.map((t) => t.name);
  assert.ok(names.includes('browser_screenshot'), names.join());
  assert.equal((await fetch(url, { method: 'DELETE', headers: { ...auth, 'Mcp-Session-Id': bsid } })).status, 200);
}
r = await fetch(`${url}?kind=spaceship`, { method: 'POST', headers: { ...jsonHeaders, ...auth }, body: JSON.stringify(init) });
assert.equal(r.status, 400);

// --- session ids, versions, origin ---
r = await post(init, auth);
assert.equal(r.status, 200);
const sid = r.headers.get('mcp-session-id');
assert.match(sid, /^[0-9a-f]{32}$/);
assert.equal((await r.json()).result.protocolVersion, '2025-06-18');
const session = { ...auth, 'Mcp-Session-Id': sid, 'MCP-Protocol-Version': '2025-06-18' };
r = await post({ jsonrpc: '2.0', method: 'notifications/initialized' }, session);
assert.equal(r.status, 202);
r = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, auth);
assert.equal(r.status, 400, 'no Mcp-Session-Id after initialize');
r = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, { ...auth, 'Mcp-Session-Id': '0'.repeat(32) });
assert.equal(r.status, 404, 'unknown session');
r = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, { ...session, 'MCP-Protocol-Version': '1999-01-01' });
assert.equal(r.status, 400, 'unsupported MCP-Protocol-Version');
r = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, { ...session, Origin: 'http://evil.example' });
assert.equal(r.status, 403, 'foreign Origin');
r = await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' }, { ...session, Origin: 'http://localhost:3000' });
assert.equal(r.status, 200, 'loopback Origin');
r = await fetch(url, { method: 'POST', headers: { ...jsonHeaders, ...session }, body: '{"jsonrpc": "2.0", ' });
assert.equal(r.status, 400);
assert.equal((await r.json()).error.code, -32700);
r = await post([{ jsonrpc: '2.0', id: 3, method: 'ping' }], session);
assert.equal((await r.json()).error.code, -32600, 'no batches in 2025-06-18');

// --- resume: cut a tools/call stream off, resume it with Last-Event-ID, miss nothing ---
const lines = Array.from({ length: 12 }, (_, i) => `line${i + 1}`);
const call = { jsonrpc: '2.0', id: 'resume-me', method: 'tools/call',
               params: { name: 'exec', arguments: { command: `for l in ${lines.join(' ')}; do echo $l; sleep 0.15; done` },
                         _meta: { progressToken: 'rt' } } };
async function* sse(response, abort) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, at);
      buf = buf.slice(at + 2);
      const ev = {};
      for (const line of block.split('\n')) {
        const c = line.indexOf(':');
        if (c <= 0) continue;
        ev[line.slice(0, c)] = line.slice(c + 1).replace(/^ /, '');
      }
      yield ev;
    }
  }
}
const controller = new AbortController();
r = await fetch(url, { method: 'POST', headers: { ...jsonHeaders, ...session }, body: JSON.stringify(call), signal: controller.signal });
assert.equal(r.status, 200);
assert.match(r.headers.get('content-type'), /text\/event-stream/);
let got = '';
let lastId;
let progressEvents = 0;
for await (const ev of sse(r)) {
  if (ev.id) lastId = ev.id;
  if (!ev.data) continue;
  const m = JSON.parse(ev.data);
  assert.equal(m.method, 'notifications/progress');
  got += m.params.message;
  if (++progressEvents === 3) break;
}
controller.abort();  // the client drops the stream; the command goes on
log(`cut off after ${JSON.stringify(got)} at ${lastId}`);
await new Promise((res) => setTimeout(res, 700));  // output the dropped stream did not carry
r = await fetch(url, { method: 'GET', headers: { ...session, Accept: 'text/event-stream', 'Last-Event-ID': lastId } });
assert.equal(r.status, 200);
let response;
for await (const ev of sse(r)) {
  if (!ev.data) continue;
  const m = JSON.parse(ev.data);
  if (m.method === 'notifications/progress') got += m.params.message;
  else response = m;
}
assert.equal(got, lines.map((l) => `${l}\n`).join(''), 'every line once, in order');
assert.equal(response.id, 'resume-me');
assert.equal(response.result.structuredContent.stdout, got);
r = await fetch(url, { method: 'GET', headers: { ...session, Accept: 'text/event-stream', 'Last-Event-ID': '999-1' } });
assert.equal(r.status, 400, 'an event id of no stream');
await r.text();

// --- DELETE ends the session ---
r = await fetch(url, { method: 'DELETE', headers: session });
assert.equal(r.status, 200);
r = await post({ jsonrpc: '2.0', id: 4, method: 'tools/list' }, session);
assert.equal(r.status, 404, 'the session is gone');

// --- bounds: head and body sizes, the time a request may take, bytes that are not HTTP ---
const { port } = new URL(url);
function raw(bytes, { end = true } = {}) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const sock = net.connect(Number(port), '127.0.0.1', () => { sock.write(bytes); if (end) sock.end(); });
    let got = '';
    sock.on('data', (d) => { got += d; });
    sock.on('close', () => resolve({ got, ms: Date.now() - t0 }));
    sock.on('error', () => {});
  });
}
let res = await raw(`POST /mcp HTTP/1.1\r\nAuthorization: Bearer ${token}\r\nContent-Type: application/json\r\nContent-Length: ${5 << 20}\r\n\r\n`);
assert.match(res.got, /^HTTP\/1\.1 413 /, res.got);
res = await raw(`POST /mcp HTTP/1.1\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`);
assert.match(res.got, /^HTTP\/1\.1 431 /, res.got);
res = await raw('GET /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n');
assert.match(res.got, /^HTTP\/1\.1 411 /, res.got);
res = await raw('\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n');
assert.match(res.got, /^HTTP\/1\.1 400 /, res.got);
// Slowloris: half a head, then nothing. The server gives up within its 10 s request timeout.
res = await raw('POST /mcp HTTP/1.1\r\nHost: x\r\n', { end: false });
assert.match(res.got, /^HTTP\/1\.1 408 /, res.got);
assert.ok(res.ms < 15000, `closed after ${res.ms} ms`);

// --- the SDK's client over Streamable HTTP ---
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: auth } });
const client = new Client({ name: 'sandbox-agent-e2e', version: '1.0.0' });
await client.connect(transport);
await checkTools(client, ['exec', 'read_file', 'write_file', 'list_files', 'remove']);
await exerciseFileTools(client);
await checkProgress(client);
await checkCancel(client);
await transport.terminateSession();
await client.close();

// The SDK without the token: refused.
const refused = new Client({ name: 'no-token', version: '1' });
await assert.rejects(refused.connect(new StreamableHTTPClientTransport(new URL(url))), /401|Unauthorized/);
log('http: all checks passed');
