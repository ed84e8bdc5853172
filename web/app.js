// The CREME app: load a GGUF (URL with a resumable, integrity-checked cache, or a dropped file),
// pick a HumanEval task or type a prompt, perturb it with creme's perturbator (or by hand), compare
// the two generations, trace which layer restores the clean behaviour, edit that layer's W_down,
// generate again, and download the patch (it applies natively with `creme generate --patch`).
// Query parameters (used by the tests): model, clean, pert, max, layer, steps, lr, keep, target,
// trace=1, auto=1 (load + run all), loadonly=1 (with auto: load only), stopAfter=N (interrupt the
// download after N chunks).
import * as creme from './pkg/creme_web.js';
import { loadModel, runPage, corruptCachedChunk, escapeHtml } from './model.js';

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const state = { done: false, error: null };
window.__creme = state;
window.__cremeCorrupt = corruptCachedChunk;

const TYPE_HELP = {
  A1: 'extra space inside a word', A2: 'a word repeated', A3: 'a character repeated', D1: 'a character deleted',
  D2: 'a preposition deleted', D3: 'a determiner deleted', D4: 'two words joined', E1: 'keyboard typo',
  E2: 'first letter capitalised', E3: 'grammatical person changed', E4: 'tense changed', E5: 'word class changed',
  E6: 'synonym', S1: 'adjacent characters swapped', S2: 'adjacent words swapped', P1: 'paraphrase',
  P2: 'turned into a question', C1: 'typo + extra space', C2: 'typo + repeated character', C3: 'typo + deleted character',
};

let tasks = [];
let droppedFile = null;
const setStatus = (html) => { $('status').innerHTML = html; };

// The perturbation, marked in both prompts (core's character diff; its HTML is escaped text).
function showDiff() {
  const [clean, pert] = JSON.parse(creme.diffMarked($('clean').value, $('pert').value));
  $('diff-clean').innerHTML = clean;
  $('diff-pert').innerHTML = pert;
}

function initControls() {
  $('url').value = q.get('model') || $('preset').value;
  if ([...$('preset').options].some((o) => o.value === $('url').value)) $('preset').value = $('url').value;
  $('preset').onchange = () => { $('url').value = $('preset').value; droppedFile = null; };
  for (const t of JSON.parse(creme.perturbationTypes())) $('ptype').add(new Option(`${t} · ${TYPE_HELP[t]}`, t));
  $('ptype').value = 'C3';
  $('clean').value = q.get('clean') || 'def add(a, b):\n    """Return the sum of a and b."""\n';
  $('pert').value = q.get('pert') || creme.perturb($('clean').value, 'C3', 0);
  for (const k of ['max', 'steps', 'lr', 'target']) if (q.get(k)) $(k).value = q.get(k);
  if (q.get('keep')) $('keep').value = q.get('keep');
  $('perturb').onclick = () => {
    try { $('pert').value = creme.perturb($('clean').value, $('ptype').value, Number($('seed').value)); }
    catch (e) { setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`); }
    showDiff();
  };
  $('clean').oninput = showDiff;
  $('pert').oninput = showDiff;
  showDiff();
  $('task').onchange = () => {
    const t = tasks.find((x) => x.task_id === $('task').value);
    if (t) { $('clean').value = t.prompt; $('perturb').onclick(); }
  };
  const drop = $('drop');
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
  drop.ondragleave = () => drop.classList.remove('over');
  drop.ondrop = (e) => {
    e.preventDefault(); drop.classList.remove('over');
    const f = e.dataTransfer.files[0];
    if (f) { droppedFile = f; $('url').value = `(file) ${f.name}`; drop.textContent = `${f.name} — press Load`; }
  };
  // HumanEval, where the server has it (creme serve publishes the dataset under /datasets/).
  fetch('/datasets/HumanEval.jsonl').then((r) => (r.ok ? r.text() : '')).then((text) => {
    tasks = text.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
    for (const t of tasks) $('task').add(new Option(t.task_id, t.task_id));
  }).catch(() => {});
}

async function load(session) {
  const t0 = performance.now();
  const source = droppedFile ? { file: droppedFile } : { url: $('url').value };
  const opts = q.get('stopAfter') ? { stopAfter: Number(q.get('stopAfter')) } : {};
  session.revert();
  const { config, stats } = await loadModel(session, creme, source, (f, text) => { $('progress').value = f; $('loadinfo').textContent = text; }, opts);
  state.loadSeconds = (performance.now() - t0) / 1000;
  state.config = config;
  state.loadStats = stats;
  $('loadinfo').innerHTML = `${escapeHtml(config.name || config.arch)}: ${config.n_layers} layers, d_model ${config.d_model} — ${state.loadSeconds.toFixed(1)} s, `
    + `${stats.fromCache} of ${stats.chunks} chunks from the cache` + (stats.verified ? ', <span class="ok">SHA-256 verified</span>' : '');
  $('layer').length = 1;
  for (let l = 0; l < config.n_layers; l++) $('layer').add(new Option(String(l), String(l)));
  if (q.get('layer')) $('layer').value = q.get('layer');
  for (const id of ['gen', 'trace', 'grid', 'edit', 'go', 'apply', 'revert']) $(id).disabled = false;
}

async function generateInto(session, prompt, pre) {
  pre.textContent = '';
  const r = JSON.parse(await session.generate(prompt, Number($('max').value), 0, 0, true, (_id, text) => { pre.textContent += text; }));
  pre.textContent = r.text;
  return r;
}

async function generateBoth(session) {
  setStatus('generating from both prompts…');
  const t0 = performance.now();
  state.clean = await generateInto(session, $('clean').value, $('out-clean'));
  state.pert = await generateInto(session, $('pert').value, $('out-pert'));
  setStatus(`generated in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

async function trace(session) {
  setStatus('tracing every layer…');
  const t0 = performance.now();
  const tr = JSON.parse(await session.traceLogprob($('clean').value, $('pert').value, Number($('target').value)));
  state.trace = tr;
  $('curve').innerHTML = creme.Session.layerCurveSvg(JSON.stringify(tr.all_positions), 'restoration by layer (every prompt position patched)');
  $('layer').value = String(tr.all_positions.key_layer);
  setStatus(`trace: key layer ${tr.all_positions.key_layer} (differing positions only: ${tr.differing_positions.key_layer}), ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

async function grid(session) {
  setStatus('tracing one position at one layer at a time…');
  const g = JSON.parse(await session.traceGrid($('clean').value, $('pert').value, Number($('target').value), 4));
  state.grid = g.grid;
  $('gridsvg').innerHTML = g.svg;
  setStatus(`grid: ${g.positions.length} positions × ${g.grid.scores.length} layers, key layer ${g.grid.key_layer}`);
}

async function edit(session) {
  setStatus('editing…');
  const t0 = performance.now();
  const settings = { lr: Number($('lr').value), max_steps: Number($('steps').value), keep: $('keep').value };
  const r = JSON.parse(await session.edit($('clean').value, $('pert').value, Number($('layer').value), JSON.stringify(settings), Number($('target').value)));
  state.edit = r;
  state.editSeconds = (performance.now() - t0) / 1000;
  if (r.trace) $('curve').innerHTML = creme.Session.layerCurveSvg(JSON.stringify(r.trace), 'restoration by layer (every prompt position patched)');
  $('losssvg').innerHTML = r.loss_svg;
  const last = r.edit.losses[r.edit.losses.length - 1];
  $('editinfo').innerHTML = `layer <b>${r.layer}</b> · ${r.edit.steps} evaluations · loss ${r.edit.losses[0].total.toExponential(3)} → ${last.total.toExponential(3)} `
    + `(kept step ${r.edit.kept_step}) · ${state.editSeconds.toFixed(1)} s with the capture${r.trace ? ' and the trace' : ''}`;
  $('download').disabled = false;
  setStatus(`edited layer ${r.layer}; generating from the perturbed prompt again…`);
  state.after = await generateInto(session, $('pert').value, $('out-after'));
  setStatus(`edited layer ${r.layer}: compare the right column with the middle one`);
}

function download(session) {
  const bytes = session.patchBytes();
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  a.download = `creme-patch-layer${state.edit ? state.edit.layer : 'x'}.safetensors`;
  a.click();
  state.patchBytes = bytes.length;
}

async function runAll(session) {
  if (q.get('loadonly')) return;
  await generateBoth(session);
  if (q.get('trace') === '1' || $('layer').value === '-1') await trace(session);
  await edit(session);
}

/// Button handlers, once a model is loaded.
function wire(session) {
  const guard = (f) => () => f(session).catch((e) => setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`));
  $('gen').onclick = guard(generateBoth);
  $('trace').onclick = guard(trace);
  $('grid').onclick = guard(grid);
  $('edit').onclick = guard(edit);
  $('download').onclick = () => { try { download(session); } catch (e) { setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`); } };
  $('revert').onclick = () => { session.revert(); $('download').disabled = true; setStatus('reverted: the model is the file\'s again'); };
  $('apply').onchange = async () => {
    const f = $('apply').files[0];
    if (!f) return;
    try { const l = session.applyPatch(new Uint8Array(await f.arrayBuffer())); setStatus(`applied ${escapeHtml(f.name)} (layer ${l})`); }
    catch (e) { setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`); }
  };
}

try {
  await creme.default();
  initControls();
} catch (e) {
  state.error = String(e && e.message || e);
  state.done = true;
  setStatus(`<span class="bad">${escapeHtml(state.error)}</span>`);
}
if (!state.done) runPage(creme.default, creme.Session, state, async (session) => { await load(session); wire(session); }, runAll);
