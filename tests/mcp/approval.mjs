// An exec held by a human approval gate, through `sandboxctl mcp --policy` and the SDK's stdio client: the
// call reports "awaiting approval" naming the request (progress, then its result past --approval-wait-ms);
// `sandboxctl approve SESSION ID` lets it run, which a follow-up call sees.
// env: SBX_CTL_BIN, SBX_AGENT_ADDR, MCP_POLICY (a SandboxPolicy textproto whose approvals require "exec").
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { Client, StdioClientTransport, text, log } from './sdk.mjs';

const addr = process.env.SBX_AGENT_ADDR;
const transport = new StdioClientTransport({
  command: process.env.SBX_CTL_BIN,
  args: ['--addr', addr, 'mcp', '--kind', 'file', '--policy', process.env.MCP_POLICY, '--approval-wait-ms', '1500'],
  stderr: 'inherit',
});
const client = new Client({ name: 'sandbox-agent-e2e-approval', version: '1.0.0' });
await client.connect(transport);

// write_file is not gated: it runs at once.
let r = await client.callTool({ name: 'write_file', arguments: { path: 'before.txt', content: 'x' } });
assert.ok(!r.isError, text(r));

const progress = [];
r = await client.callTool({ name: 'exec', arguments: { command: 'echo ran > /workspace/approved.txt' } }, undefined,
                          { onprogress: (p) => progress.push(p), timeout: 60000 });
assert.equal(r.isError, true, text(r));
const m = text(r).match(/^awaiting approval: .*\(request (\S+); approve with sandboxctl approve (\S+) (\S+)\)$/s);
assert.ok(m, `the result names the request: ${text(r)}`);
const [, request, session, request2] = m;
assert.equal(request2, request);
assert.ok(progress.some((p) => /^awaiting approval: /.test(p.message)), `progress: ${JSON.stringify(progress)}`);

// Not yet run.
r = await client.callTool({ name: 'read_file', arguments: { path: 'approved.txt' } });
assert.equal(r.isError, true, `the exec has not run before approval: ${text(r)}`);

execFileSync(process.env.SBX_CTL_BIN, ['--addr', addr, 'approve', session, request], { stdio: 'inherit' });

// The held exec goes on in the session: wait for its effect.
const t0 = Date.now();
let ran = false;
while (!ran && Date.now() - t0 < 60000) {
  r = await client.callTool({ name: 'read_file', arguments: { path: 'approved.txt' } });
  ran = !r.isError && text(r) === 'ran\n';
  if (!ran) await new Promise((res) => setTimeout(res, 100));
}
assert.ok(ran, `the approved exec ran: ${text(r)}`);
await client.close();
log('approval: all checks passed');
