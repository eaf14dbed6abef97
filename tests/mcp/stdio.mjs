// `sandboxctl mcp` driven by the SDK's StdioClientTransport against a real daemon.
// env: SBX_CTL_BIN, SBX_AGENT_ADDR (unix:PATH), MCP_KIND (file|browser|desktop; default file).
import assert from 'node:assert/strict';
import { Client, StdioClientTransport, checkTools, exerciseFileTools, checkProgress, checkCancel, text, log } from './sdk.mjs';

const kind = process.env.MCP_KIND || 'file';
const transport = new StdioClientTransport({
  command: process.env.SBX_CTL_BIN,
  args: ['--addr', process.env.SBX_AGENT_ADDR, 'mcp', '--kind', kind],
  stderr: 'inherit',
});
const client = new Client({ name: 'sandbox-agent-e2e', version: '1.0.0' });
await client.connect(transport);
assert.equal(client.getServerVersion().name, 'sandbox-agent');
assert.ok(client.getServerCapabilities().tools);
const fileTools = ['exec', 'read_file', 'write_file', 'list_files', 'remove'];
const browserTools = ['browser_navigate', 'browser_screenshot', 'browser_click', 'browser_type', 'browser_press',
                      'browser_evaluate', 'browser_content'];

if (kind === 'file') {
  await checkTools(client, fileTools);
  await exerciseFileTools(client);
  await checkProgress(client);
  await checkCancel(client);
} else if (kind === 'desktop') {
  // Anthropic's computer-use tool: its input as a model gives it, its result as MCP content.
  const tools = await checkTools(client, [...fileTools, 'computer']);
  const computer = tools.find((t) => t.name === 'computer');
  assert.ok(computer.inputSchema.properties.action.enum.includes('zoom'));
  let r = await client.callTool({ name: 'computer', arguments: { action: 'screenshot' } });
  assert.ok(!r.isError, text(r));
  const png = (result) => {
    const image = result.content.find((c) => c.type === 'image');
    assert.ok(image, `an image item: ${JSON.stringify(result).slice(0, 300)}`);
    assert.equal(image.mimeType, 'image/png');
    const bytes = Buffer.from(image.data, 'base64');
    assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    return bytes;
  };
  assert.ok(png(r).length > 100);
  r = await client.callTool({ name: 'computer', arguments: { action: 'left_click', coordinate: [20, 30] } });
  assert.ok(!r.isError, text(r));
  png(r);  // the screenshot taken after the click
  r = await client.callTool({ name: 'computer', arguments: { action: 'cursor_position' } });
  assert.ok(!r.isError, text(r));
  assert.match(text(r), /X=20,\s*Y=30/);
  r = await client.callTool({ name: 'computer', arguments: { action: 'fly' } });
  assert.equal(r.isError, true);
  assert.match(text(r), /action/);
  assert.match(text(r), /fly/);
} else {
  await checkTools(client, [...fileTools, ...browserTools]);
  const page = '<html><head><title>MCP page</title></head><body><h1 id="h">Hello</h1>' +
               '<input id="i"><button id="b" onclick="document.getElementById(\'h\').textContent=\'Clicked\'">Go</button></body></html>';
  let r = await client.callTool({ name: 'write_file', arguments: { path: 'page.html', content: page } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'browser_navigate', arguments: { url: 'file:///workspace/page.html' } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'browser_evaluate', arguments: { expression: 'document.title' } });
  assert.equal(text(r), '"MCP page"');
  r = await client.callTool({ name: 'browser_click', arguments: { selector: '#b' } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'browser_type', arguments: { selector: '#i', text: 'typed' } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'browser_press', arguments: { key: 'Enter' } });
  assert.ok(!r.isError, text(r));
  r = await client.callTool({ name: 'browser_evaluate', arguments: { expression: 'document.getElementById("i").value' } });
  assert.equal(text(r), '"typed"');
  r = await client.callTool({ name: 'browser_content', arguments: { text: true } });
  assert.match(text(r), /Clicked/);
  r = await client.callTool({ name: 'browser_content', arguments: {} });
  assert.match(text(r), /<h1 id="h">Clicked<\/h1>/);
  r = await client.callTool({ name: 'browser_screenshot', arguments: {} });
  assert.ok(!r.isError, text(r));
  const image = r.content.find((c) => c.type === 'image');
  assert.ok(image, 'a screenshot comes back as image content');
  assert.equal(image.mimeType, 'image/png');
  const png = Buffer.from(image.data, 'base64');
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.ok(png.length > 1000);
  r = await client.callTool({ name: 'browser_click', arguments: { selector: '#b', x: 1, y: 2 } });
  assert.equal(r.isError, true);
}
await client.close();
log(`stdio ${kind}: all checks passed`);
