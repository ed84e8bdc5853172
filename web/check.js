// GPU check page: opens WebGPU through creme-web, runs the matmul kernel on random shapes and
// compares with the CPU reference. Results go to the page and to window.__creme for tests.
import init, { Session, cpuMatmul } from './pkg/creme_web.js';
import { escapeHtml } from './model.js';

const $ = (id) => document.getElementById(id);

function rng(seed) { // mulberry32: the same inputs on every run
  return () => { seed |= 0; seed = (seed + 0x6D2B79F5) | 0; let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t; return ((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1; };
}

async function main() {
  const result = { ok: false, cases: [], adapter: null, error: null };
  window.__creme = result;
  try {
    await init();
    if (!navigator.gpu) throw new Error('This browser has no WebGPU (navigator.gpu is missing). Try a recent Chrome or Edge, or enable WebGPU.');
    const s = await Session.create();
    const a = JSON.parse(s.adapterJson());
    result.adapter = a;
    $('adapter').innerHTML = `<dl class="kv">
      <dt>adapter</dt><dd>${escapeHtml(a.name || '(unnamed)')} ${a.driver ? '· ' + escapeHtml(a.driver) : ''}</dd>
      <dt>backend</dt><dd>${escapeHtml(a.backend)} · ${escapeHtml(a.device_type)}</dd>
      <dt>features</dt><dd>shader-f16 ${a.shader_f16 ? 'yes' : 'no'} · subgroups ${a.subgroups ? 'yes' : 'no'} · timestamp-query ${a.timestamp_query ? 'yes' : 'no'}</dd>
      <dt>max storage binding</dt><dd>${(a.max_storage_buffer_binding_size / 2 ** 20).toFixed(0)} MiB</dd>
      <dt>workgroups / dim</dt><dd>${a.max_compute_workgroups_per_dimension}</dd></dl>`;
    const r = rng(42);
    const shapes = [[1, 1, 1], [1, 896, 896], [63, 65, 17], [65, 129, 33], [100, 37, 200], [7, 300, 129]];
    let worst = 0;
    for (const [m, n, k] of shapes) {
      const x = Float32Array.from({ length: m * k }, r);
      const w = Float32Array.from({ length: n * k }, r);
      const t0 = performance.now();
      const got = await s.matmul(x, w, m, n, k);
      const ms = performance.now() - t0;
      const want = cpuMatmul(x, w, m, n, k);
      let err = 0;
      for (let i = 0; i < want.length; i++) err = Math.max(err, Math.abs(got[i] - want[i]) / Math.max(1, Math.abs(want[i])));
      worst = Math.max(worst, err);
      result.cases.push({ m, n, k, err, ms });
      const ok = err < 1e-4;
      $('cases').tBodies[0].insertAdjacentHTML('beforeend',
        `<tr><td>${m}</td><td>${n}</td><td>${k}</td><td>${ms.toFixed(1)}</td><td>${err.toExponential(2)}</td><td class="${ok ? 'ok' : 'bad'}">${ok ? '✓' : '✗'}</td></tr>`);
    }
    result.ok = worst < 1e-4;
    $('verdict').className = 'verdict ' + (result.ok ? 'ok' : 'bad');
    $('verdict').textContent = result.ok ? `GPU matches the CPU reference (max rel. error ${worst.toExponential(2)})` : `Mismatch: max rel. error ${worst.toExponential(2)}`;
  } catch (e) {
    result.error = String(e && e.message || e);
    $('adapter').innerHTML = `<span class="bad">${escapeHtml(result.error)}</span>`;
  }
  result.done = true;
}
main();
