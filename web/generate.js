// Load a GGUF model by Range requests and generate greedily, tokens streamed into the page.
// Query parameters (used by the tests): model=URL, prompt=TEXT, max=N, auto=1.
import * as creme from './pkg/creme_web.js';
import { loadModel, runPage } from './model.js';

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
$('url').value = q.get('model') || '/models/smollm2-135m-instruct-q4_1.gguf';
$('prompt').value = q.get('prompt') || 'def fibonacci(n):\n';
if (q.get('max')) $('max').value = q.get('max');
const state = { done: false, error: null };
window.__creme = state;

async function load(session) {
  $('status').textContent = 'loading…';
  const t0 = performance.now();
  const cfg = (await loadModel(session, creme, { url: $('url').value }, (f, name) => { $('progress').value = f; $("status").textContent = `${(f * 100).toFixed(0)}% ${name}`; })).config;
  state.loadSeconds = (performance.now() - t0) / 1000;
  state.config = cfg;
  $('status').textContent = `${cfg.name || cfg.arch}: ${cfg.n_layers} layers, d_model ${cfg.d_model}, vocab ${cfg.vocab} — loaded in ${state.loadSeconds.toFixed(1)} s`;
  $('go').disabled = false;
}

async function gen(session) {
  $('out').textContent = $('prompt').value;
  const t0 = performance.now();
  const pieces = [];
  const r = JSON.parse(await session.generate($('prompt').value, Number($('max').value), 0, 0, false,
    (id, text) => { pieces.push(id); $('out').textContent += text; }));
  state.genSeconds = (performance.now() - t0) / 1000;
  state.tokens = r.tokens;
  state.streamed = pieces;
  state.text = r.text;
}

runPage(creme.default, creme.Session, state, load, gen);
