// Browser test: serve web/, open it in Debian's Chromium (headless, WebGPU on SwiftShader) through
// playwright-core, run the matmul kernel via creme-web and check it against the CPU reference.
// A screenshot is saved to $ARTIFACTS (default test-artifacts/).
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve } from './serve.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const webRoot = path.resolve(here, '..');
const artifacts = process.env.ARTIFACTS || path.resolve(webRoot, '..', 'test-artifacts');
fs.mkdirSync(artifacts, { recursive: true });

const ARGS = ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

let failures = 0;
const check = (cond, msg) => { console.log(`${cond ? 'ok  ' : 'FAIL'} ${msg}`); if (!cond) failures++; };

const server = await serve(webRoot);
const port = server.address().port;
const userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'creme-chromium-'));
const browser = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ARGS,
  viewport: { width: 1100, height: 760 },
});
try {
  const page = await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  await page.goto(`http://127.0.0.1:${port}/index.html`);
  await page.waitForFunction(() => window.__creme && window.__creme.done, null, { timeout: 120000 });
  const r = await page.evaluate(() => window.__creme);
  await page.screenshot({ path: path.join(artifacts, 'gpu-check.png'), fullPage: true });
  check(!r.error, `page ran without error ${r.error ? '(' + r.error + ')' : ''}`);
  check(r.adapter && r.adapter.backend === 'BrowserWebGpu', `WebGPU adapter: ${r.adapter && r.adapter.name} (${r.adapter && r.adapter.backend})`);
  check(r.cases.length === 6, `ran ${r.cases.length} matmul shapes`);
  for (const c of r.cases) check(c.err < 1e-4, `matmul m=${c.m} n=${c.n} k=${c.k}: max rel err ${c.err.toExponential(2)}`);
  check(r.ok, 'GPU result equals the CPU reference');
} finally {
  await browser.close();
  server.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
console.log(failures ? `${failures} browser check(s) failed` : 'browser tests passed');
process.exit(failures ? 1 : 0);
