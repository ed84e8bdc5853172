// Browser tests: serve web/ (and the model cache under /models/), open pages in Debian's Chromium
// (headless, WebGPU on SwiftShader) through playwright-core.
//  1. GPU check page: the matmul kernel via creme-web equals the CPU reference.
//  2. Generate page: SmolLM2-135M streamed by Range requests into WebGPU generates greedily the
//     same tokens as the native `creme generate` run (CREME_BIN) on this machine.
// Screenshots go to $ARTIFACTS (default test-artifacts/).
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { serve, modelDir } from './serve.mjs';

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

  // 2. SmolLM2 in the page vs the native run.
  const modelFile = 'smollm2-135m-instruct-q4_1.gguf';
  const prompt = 'def is_palindrome(s: str) -> bool:\n    """Return True if s reads the same backwards."""\n';
  const maxTokens = 16;
  const bin = process.env.CREME_BIN;
  if (!bin) throw new Error('CREME_BIN (the native creme binary) is not set');
  const native = JSON.parse(execFileSync(bin, ['generate', '--model', path.join(modelDir(), modelFile), '--prompt', prompt,
    '--max-tokens', String(maxTokens), '--json'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }));
  const gp = await browser.newPage();
  gp.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  const q = new URLSearchParams({ model: `/models/${modelFile}`, prompt, max: String(maxTokens), auto: '1' });
  await gp.goto(`http://127.0.0.1:${port}/generate.html?${q}`);
  await gp.waitForFunction(() => window.__creme && window.__creme.done, null, { timeout: 600000 });
  const g = await gp.evaluate(() => window.__creme);
  await gp.screenshot({ path: path.join(artifacts, 'generate.png'), fullPage: true });
  check(!g.error, `model page ran without error ${g.error ? '(' + g.error + ')' : ''}`);
  check(g.config && g.config.n_layers === 30, `SmolLM2 streamed in by Range requests (${g.loadSeconds && g.loadSeconds.toFixed(1)} s)`);
  check(JSON.stringify(g.tokens) === JSON.stringify(native.tokens), `browser greedy tokens equal the native run: ${JSON.stringify(g.tokens)} vs ${JSON.stringify(native.tokens)}`);
  check(JSON.stringify(g.streamed) === JSON.stringify(g.tokens), 'every token was streamed to the page callback');
  console.log(`browser generation: ${g.tokens && g.tokens.length} tokens in ${g.genSeconds && g.genSeconds.toFixed(1)} s: ${JSON.stringify(g.text)}`);

  // 3. The educational trace page: a live logprob trace of SmolLM2 in the page.
  const tp = await browser.newPage();
  tp.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  // Short prompts keep the software-rendered trace (SwiftShader) to a couple of minutes.
  const tq = new URLSearchParams({ auto: '1', n: '4', clean: 'def add(a, b):\n    """Sum two numbers."""\n', pert: 'def add(a, b):\n    """Sun two numbrs."""\n' });
  await tp.goto(`http://127.0.0.1:${port}/trace.html?${tq}`);
  await tp.waitForFunction(() => window.__creme && window.__creme.done, null, { timeout: 900000 });
  const t = await tp.evaluate(() => window.__creme);
  await tp.screenshot({ path: path.join(artifacts, 'trace.png'), fullPage: true });
  check(!t.error, `trace page ran without error ${t.error ? '(' + t.error + ')' : ''}`);
  const tr = t.trace;
  check(tr && tr.all_positions.scores.length === 30 && tr.differing_positions.scores.length === 30, 'trace page: restoration for all 30 layers, both variants');
  check(tr && tr.all_positions.scores.every(Number.isFinite) && Number.isFinite(tr.lp_clean) && Number.isFinite(tr.lp_pert),
    `trace page: finite scores (lp_clean ${tr && tr.lp_clean.toFixed(2)}, lp_pert ${tr && tr.lp_pert.toFixed(2)})`);
  console.log(`trace page: key layer ${tr && tr.all_positions.key_layer} (differing: ${tr && tr.differing_positions.key_layer}) in ${t.seconds && t.seconds.toFixed(1)} s`);
} finally {
  await browser.close();
  server.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
console.log(failures ? `${failures} browser check(s) failed` : 'browser tests passed');
process.exit(failures ? 1 : 0);
