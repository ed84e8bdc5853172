// What the browser test scripts share: `creme serve` (CREME_BIN) serving web/, the model cache
// under /models/ and the dataset under /datasets/, Debian's Chromium (headless, WebGPU on
// SwiftShader) through playwright-core, checks that count failures, and the native binary.
import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const webRoot = path.resolve(here, '..');
export const artifacts = process.env.ARTIFACTS || path.resolve(webRoot, '..', 'test-artifacts');
fs.mkdirSync(artifacts, { recursive: true });

const ARGS = ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader',
  '--use-webgpu-adapter=swiftshader', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

let failures = 0;
export const check = (cond, msg) => { console.log(`${cond ? 'ok  ' : 'FAIL'} ${msg}`); if (!cond) failures++; };

export const bin = process.env.CREME_BIN;
if (!bin) throw new Error('CREME_BIN (the native creme binary) is not set');
/// The reference data (`CREME_DATA_DIR`, as the Rust side reads it: the shared root; else
/// `../shared` beside the repository) and its HumanEval with the released perturbed sets.
export const sharedDir = () => path.resolve(process.env.CREME_DATA_DIR || path.join(webRoot, '..', '..', 'shared'));
export const humanevalDir = () => path.join(sharedDir(), 'datasets', 'humaneval-nlpert');
export const modelDir = () => process.env.CREME_MODEL_DIR || path.join(process.env.CREME_CACHE_DIR || path.join(os.homedir(), '.cache/creme'), 'models');

/// `creme serve` on a free port: {port, server}.
export async function startServer() {
  // The dataset by path: the binary lives in the build cache, far from the checkout, and the
  // tests run from web/, so neither place finds ../shared by itself.
  const dataset = fs.existsSync(humanevalDir()) ? ['--dataset', humanevalDir()] : [];
  const server = spawn(bin, ['serve', '--port', '0', '--web', webRoot, '--models', modelDir(), ...dataset], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    server.stdout.on('data', (d) => { const m = /127\.0\.0\.1:(\d+)/.exec(String(d)); if (m) resolve(Number(m[1])); });
    server.on('exit', (c) => reject(new Error(`creme serve exited (${c})`)));
  });
  return { port, server };
}

// The native reference runs on wgpu (Vulkan: lavapipe here) with f32 activations, the function the
// page computes on WebGPU (the CPU backend's int8 activations are a different one).
const nativeEnv = { ...process.env, CREME_BACKEND: process.env.CREME_NATIVE_BACKEND || 'vulkan' };
export const native = (args) => execFileSync(bin, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], env: nativeEnv });

/// A persistent Chromium context with its own profile directory: {browser, userDir}.
export async function launchBrowser() {
  const userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'creme-chromium-'));
  const browser = await chromium.launchPersistentContext(userDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true, args: ARGS,
    viewport: { width: 1280, height: 900 }, acceptDownloads: true,
  });
  return { browser, userDir };
}

/// A page whose console errors and exceptions are printed.
export async function newPage(browser) {
  const p = await browser.newPage();
  p.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  p.on('pageerror', (e) => console.log('[page exception]', e.message));
  return p;
}

/// Wait until the page sets window.__creme.done; its state.
export const finished = async (p, timeout = 900000) => { await p.waitForFunction(() => window.__creme && window.__creme.done, null, { timeout }); return p.evaluate(() => window.__creme); };

/// Print the verdict line and exit with the status.
export function finish(what) {
  console.log(failures ? `${failures} ${what} check(s) failed` : `${what} tests passed`);
  process.exit(failures ? 1 : 0);
}
