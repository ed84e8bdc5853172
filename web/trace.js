// Educational causal-trace page: loads a GGUF into WebGPU, runs creme-core's logprob trace
// (every layer patched at every prompt position, and at the differing positions only) and draws
// the restoration curve. Query parameters for tests: model=URL, auto=1, n=continuation tokens
// (default: core's).
import * as creme from './pkg/creme_web.js';
import { loadModel, runPage, escapeHtml } from './model.js';

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
$('url').value = q.get('model') || '/models/smollm2-135m-instruct-q4_1.gguf';
$('clean').value = q.get('clean') || 'def add(a, b):\n    """Return the sum of a and b."""\n';
$('pert').value = q.get('pert') || 'def add(a, b):\n    """Retrun teh sum of a adn b."""\n';
const state = { done: false, error: null };
window.__creme = state;
// The number of continuation tokens starts at core's default (creme-web's defaults()); where the
// module does not load, runPage reports why.
try {
  await creme.default();
  $('ntarget').value = JSON.parse(creme.defaults()).target_tokens;
} catch { /* runPage says what failed */ }
if (q.get('n')) $('ntarget').value = q.get('n');

function chart(all, diff) {
  const W = 760, H = 280, ml = 48, mr = 16, mt = 16, mb = 36;
  const n = all.scores.length, pw = (W - ml - mr) / n;
  // Dashed lines: no and full restoration (0, 1), or, for a pair too close to normalise (core's
  // too_close), the perturbed and clean runs' log-probabilities, which the scores then are.
  const close = all.too_close;
  const refs = close ? [close.lp_pert, close.lp_clean] : [0, 1];
  const vals = all.scores.concat(diff.scores, refs);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const y = (v) => mt + (H - mt - mb) * (1 - (v - lo) / (hi - lo || 1));
  const dmax = Math.max(...all.distances, 1e-9);
  let s = `<svg viewBox="0 0 ${W} ${H}" width="100%" style="background:#fff;border-radius:8px" font-family="sans-serif" font-size="11">`;
  all.distances.forEach((d, l) => {
    const bh = (H - mt - mb) * d / dmax;
    s += `<rect x="${ml + l * pw + 1}" y="${H - mb - bh}" width="${pw - 2}" height="${bh}" fill="${l === all.key_layer ? '#f6c667' : '#e3e9f5'}"><title>layer ${l}: |h_clean − h_pert| = ${d.toFixed(2)}</title></rect>`;
  });
  for (const v of refs) s += `<line x1="${ml}" x2="${W - mr}" y1="${y(v)}" y2="${y(v)}" stroke="#aaa" stroke-dasharray="3 3"/>`;
  for (const [t, color] of [[all, '#2456c8'], [diff, '#d9480f']]) {
    s += `<polyline fill="none" stroke="${color}" stroke-width="2" points="${t.scores.map((v, l) => `${ml + (l + 0.5) * pw},${y(v)}`).join(' ')}"/>`;
    t.scores.forEach((v, l) => { s += `<circle cx="${ml + (l + 0.5) * pw}" cy="${y(v)}" r="3" fill="${color}"><title>layer ${l}: ${v.toFixed(3)}</title></circle>`; });
  }
  all.scores.forEach((_, l) => { if (l % 2 === 0) s += `<text x="${ml + (l + 0.5) * pw}" y="${H - mb + 14}" text-anchor="middle" fill="#333">${l}</text>`; });
  s += `<text x="${ml}" y="${H - 6}" fill="#333">layer →   <tspan fill="#2456c8">● all prompt positions patched</tspan>   <tspan fill="#d9480f">● differing positions only</tspan>   <tspan fill="#b08000">▮ distance, key layer</tspan></text>`;
  s += `<text x="${ml - 6}" y="${y(hi) + 4}" text-anchor="end" fill="#333">${hi.toFixed(2)}</text><text x="${ml - 6}" y="${y(lo) + 4}" text-anchor="end" fill="#333">${lo.toFixed(2)}</text></svg>`;
  return s;
}

async function load(session) {
  const cfg = (await loadModel(session, creme, { url: $('url').value }, (f, name) => { $('progress').value = f; $("status").textContent = `${(f * 100).toFixed(0)}% ${name}`; })).config;
  state.config = cfg;
  $('status').textContent = `${cfg.name || cfg.arch}: ${cfg.n_layers} layers, d_model ${cfg.d_model}`;
  $('go').disabled = false;
}

async function trace(session) {
  $('tstatus').textContent = 'tracing…';
  const t0 = performance.now();
  const r = JSON.parse(await session.traceLogprob($('clean').value, $('pert').value, Number($('ntarget').value)));
  state.seconds = (performance.now() - t0) / 1000;
  state.trace = r;
  $('tstatus').textContent = `${state.seconds.toFixed(1)} s`;
  $('chart').innerHTML = chart(r.all_positions, r.differing_positions);
  const close = r.all_positions.too_close;
  const note = close ? `<p class="note" id="too-close"><b>Not a restoration ratio.</b> The continuation's log-probability after the clean prompt (${close.lp_clean.toFixed(2)}) is not clearly above that after the perturbed one (${close.lp_pert.toFixed(2)}): the ratio (patched − perturbed) / (clean − perturbed) would divide by noise, or turn upside down. The chart shows the patched runs' log-probabilities (nats) instead, and the key layer is where they are highest.</p>` : '';
  $('summary').innerHTML = note + `Clean continuation: <code>${escapeHtml(r.target)}</code> — log-probability ${r.lp_clean.toFixed(2)} after the clean prompt, ${r.lp_pert.toFixed(2)} after the perturbed one.
    Key layer: <b>${r.all_positions.key_layer}</b> when every prompt position is patched, <b>${r.differing_positions.key_layer}</b> when only the differing positions are.`;
}

runPage(creme.default, creme.Session, state, load, trace);
