// The official MCP TypeScript SDK (client side) and ajv, from tests/npm/node_modules (installed by
// deploy/install-deps.sh with `npm ci`), plus the checks both transports share.
import assert from 'node:assert/strict';

const base = new URL('../npm/node_modules/', import.meta.url);
const sdk = (p) => import(new URL(`@modelcontextprotocol/sdk/dist/esm/${p}`, base).href);
export const { Client } = await sdk('client/index.js');
export const { StdioClientTransport } = await sdk('client/stdio.js');
export const { StreamableHTTPClientTransport } = await sdk('client/streamableHttp.js');
export const { McpError, ErrorCode } = await sdk('types.js');
const Ajv = (await import(new URL('ajv/dist/ajv.js', base).href)).default;

export function log(...args) { console.error('[mcp-test]', ...args); }

export function text(result) {
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('');
}

// Every tool: a description, an inputSchema that ajv compiles (strict) and that refuses unknown properties.
export async function checkTools(client, expected) {
  const { tools } = await client.listTools();
  const names = tools.map((t) => t.name).sort();
  assert.deepEqual(names, [...expected].sort());
  const ajv = new Ajv({ strict: true, allErrors: true });
  for (const t of tools) {
    assert.ok(t.description && t.description.length > 40, `${t.name}: a description a model can use`);
    assert.equal(t.inputSchema.type, 'object', t.name);
    assert.equal(t.inputSchema.additionalProperties, false, t.name);
    const validate = ajv.compile(t.inputSchema);
    assert.equal(validate({ no_such_property: 1 }), false, `${t.name} refuses an unknown property`);
  }
  // The schemas accept what the tools take.
  const byName = Object.fromEntries(tools.map((t) => [t.name, ajv.compile(t.inputSchema)]));
  assert.ok(byName.exec({ argv: ['ls'], cwd: '/tmp', env: { A: '1' }, stdin: 'x', timeout_ms: 1000 }));
  assert.ok(byName.exec({ command: 'ls | wc -l' }));
  assert.ok(byName.write_file({ path: 'a', content: 'aGk=', encoding: 'base64', mode: 420 }));
  return tools;
}

// The file tools and exec, end to end; then the errors a model may meet.
export async function exerciseFileTools(client) {
  let r = await client.callTool({ name: 'exec', arguments: { argv: ['/bin/echo', 'hello', 'mcp'] } });
  assert.ok(!r.isError, text(r));
  assert.match(text(r), /exit code 0/);
  assert.equal(r.structuredContent.stdout, 'hello mcp\n');
  r = await client.callTool({
    name: 'exec',
    arguments: { command: 'cd "$PWD" && echo "$GREETING" && cat && echo err >&2 && exit 4', env: { GREETING: 'hi' },
                 stdin: 'from-stdin', cwd: '/tmp' },
  });
  assert.equal(r.structuredContent.exit_code, 4, text(r));
  assert.equal(r.structuredContent.stdout, 'hi\nfrom-stdin');
  assert.equal(r.structuredContent.stderr, 'err\n');
  r = await client.callTool({ name: 'write_file', arguments: { path: 'mcp/a.txt', content: 'x' } });
  assert.equal(r.isError, true, 'the parent directory does not exist yet');
  r = await client.callTool({ name: 'exec', arguments: { command: 'mkdir -p mcp' } });
  r = await client.callTool({ name: 'write_file', arguments: { path: 'mcp/a.txt', content: 'line one\nline two\n' } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'write_file', arguments: { path: 'mcp/b.bin', content: Buffer.from([0, 255, 1]).toString('base64'), encoding: 'base64' } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'read_file', arguments: { path: 'mcp/a.txt' } });
  assert.equal(text(r), 'line one\nline two\n');
  r = await client.callTool({ name: 'read_file', arguments: { path: 'mcp/a.txt', offset: 5, length: 3 } });
  assert.equal(text(r), 'one');
  r = await client.callTool({ name: 'read_file', arguments: { path: 'mcp/b.bin' } });
  assert.match(text(r), /binary, 3 bytes, base64\)\nAP8B/);
  r = await client.callTool({ name: 'list_files', arguments: { path: 'mcp' } });
  assert.match(text(r), /file\t18\ta\.txt/);
  assert.match(text(r), /file\t3\tb\.bin/);
  r = await client.callTool({ name: 'remove', arguments: { path: 'mcp', recursive: true } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'read_file', arguments: { path: 'mcp/a.txt' } });
  assert.equal(r.isError, true);
  assert.match(text(r), /NOT_FOUND|No such file/);

  // Bad arguments: a tool error the model can read; an unknown tool: -32602.
  r = await client.callTool({ name: 'exec', arguments: { argv: 'ls' } });
  assert.equal(r.isError, true);
  assert.match(text(r), /arguments\.argv/);
  r = await client.callTool({ name: 'read_file', arguments: { path: 'x', colour: 'red' } });
  assert.equal(r.isError, true);
  assert.match(text(r), /unknown property "colour"/);
  await assert.rejects(client.callTool({ name: 'no_such_tool', arguments: {} }),
                       (e) => e instanceof McpError && e.code === ErrorCode.InvalidParams);
  await assert.rejects(client.request({ method: 'resources/list', params: {} }, (await sdk('types.js')).ListResourcesResultSchema),
                       (e) => e instanceof McpError && e.code === ErrorCode.MethodNotFound);
}

// Output arrives as progress notifications while the command runs.
export async function checkProgress(client) {
  const seen = [];
  const r = await client.callTool(
    { name: 'exec', arguments: { command: 'for i in 1 2 3; do echo tick$i; sleep 0.2; done' } },
    undefined, { onprogress: (p) => seen.push(p) });
  assert.equal(r.structuredContent.stdout, 'tick1\ntick2\ntick3\n');
  assert.ok(seen.length >= 2, `progress notifications: ${JSON.stringify(seen)}`);
  assert.equal(seen.map((p) => p.message).join(''), 'tick1\ntick2\ntick3\n');
  for (let i = 1; i < seen.length; ++i) assert.ok(seen[i].progress > seen[i - 1].progress, 'progress increases');
}

// A long exec is canceled (notifications/cancelled): the call ends and its process is gone.
export async function checkCancel(client) {
  const controller = new AbortController();
  let started = false;
  const call = client.callTool(
    { name: 'exec', arguments: { command: 'echo $$ > /tmp/long.pid; echo started; exec sleep 300' } },
    undefined, { signal: controller.signal, onprogress: () => { started = true; }, timeout: 600000 });
  const t0 = Date.now();
  while (!started && Date.now() - t0 < 20000) await new Promise((res) => setTimeout(res, 20));
  assert.ok(started, 'the long exec started');
  controller.abort('test cancels');
  await assert.rejects(call);
  // The process dies (SIGKILL through the Call stream): poll until kill -0 fails.
  let gone = false;
  for (let i = 0; i < 100 && !gone; ++i) {
    const r = await client.callTool({ name: 'exec', arguments: { command: 'kill -0 "$(cat /tmp/long.pid)" 2>/dev/null; echo $?' } });
    gone = r.structuredContent.stdout.trim() !== '0';
    if (!gone) await new Promise((res) => setTimeout(res, 100));
  }
  assert.ok(gone, 'the canceled command is no longer running');
  assert.ok(Date.now() - t0 < 60000);
}
