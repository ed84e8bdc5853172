// The CREME app: load a GGUF (URL with a resumable, integrity-checked cache, or a dropped file),
// pick a HumanEval task or type a prompt, perturb it with creme's perturbator (or by hand), compare
// the two generations, trace which layer restores the clean behaviour, edit that layer's W_down,
// generate again, and download the patch (it applies natively with `creme generate --patch`).
// For a task with tests, each completion is judged in the page through core (creme-web's
// judgeCompletion: core's program and SampleRecord, Python in a worker as the judge, judge.js),
// and after an edit the same perturbation type can be evaluated on other tasks through core's
// run_set (verdicts.js). Every default (tokens, edit settings, time limit) is core's, read from
// creme-web's defaults() at startup.
// Query parameters (used by the tests): model, clean, pert, max, layer, steps, lr, keep, target,
// trace=1, auto=1 (load + run all), loadonly=1 (with auto: load only), stopAfter=N (interrupt the
// download after N chunks), task=ID and ptype=TYPE (select a task), judgeTimeout=S (seconds per
// program), reach=N (with auto: check N other tasks after the edit).
import * as creme from './pkg/creme_web.js';
import { loadModel, runPage, corruptCachedChunk, escapeHtml } from './model.js';
import { Judge } from './judge.js';
import { parseTasks, perturbedPrompt, judgeGiven, showVerdict, seededSample, reachCheck, reachTable } from './verdicts.js';

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const state = { done: false, error: null, verdicts: {}, python: null };
window.__creme = state;
window.__cremeCorrupt = corruptCachedChunk;
// Created once core's defaults are read (initControls).
let judge = null;

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
const currentTask = () => tasks.find((t) => t.task_id === $('task').value) || null;

/// Start Python (once) and say in the page whether verdicts are available.
function startPython() {
  if (state.python) return;
  const t0 = performance.now();
  state.python = { ready: false };
  $('pystatus').textContent = 'starting Python (Pyodide) for the tests…';
  judge.ready().then(() => {
    state.python = { ready: true, seconds: (performance.now() - t0) / 1000 };
    $('pystatus').textContent = `Tests run in Python (Pyodide) in this page, in a worker, ${judge.timeoutSeconds} s per program (started in ${state.python.seconds.toFixed(1)} s).`;
  }, (e) => {
    state.python = { ready: false, error: String(e.message || e) };
    $('pystatus').textContent = `No verdicts in this browser: ${state.python.error}. Everything else works.`;
  });
}

/// Judge a completion shown in column `which` (clean, pert, after), generated after `prompt`.
async function judgeCompletion(which, prompt, completion) {
  const el = $(`v-${which}`);
  const task = currentTask();
  if (!task) { showVerdict(el, { note: 'no tests: pick a task (or open a tasks file) to run them' }); return null; }
  startPython();
  showVerdict(el, { note: 'running the tests…' });
  try {
    const set = which === 'clean' ? 'clean' : $('ptype').value;
    const v = await judgeGiven(creme, judge, task, set, prompt, completion);
    if (v.note) { showVerdict(el, v); return null; }
    state.verdicts[which] = { ...v, task: task.task_id };
    showVerdict(el, v);
    return v;
  } catch (e) {
    showVerdict(el, { note: `no verdict: ${String(e.message || e)}` });
    return null;
  }
}

/// Put a completion into its column and judge it (generation and the tests' injection both).
function showCompletion(which, text) {
  $(`out-${which}`).textContent = text;
  return judgeCompletion(which, $(which === 'clean' ? 'clean' : 'pert').value, text);
}
window.__cremeShowCompletion = showCompletion;

/// Select a task: its clean prompt, and its perturbed prompt (released where served).
async function selectTask() {
  const t = currentTask();
  if (!t) { $('promptsource').textContent = ''; return; }
  startPython();
  $('clean').value = t.prompt;
  const p = await perturbedPrompt(creme, t, $('ptype').value, Number($('seed').value));
  $('pert').value = p.prompt;
  $('promptsource').textContent = `${t.task_id}: perturbed prompt from ${p.source}`;
  showDiff();
}

function setTasks(list) {
  tasks = list;
  $('task').length = 1;
  for (const t of tasks) $('task').add(new Option(t.task_id, t.task_id));
}

// The perturbation, marked in both prompts (core's character diff; its HTML is escaped text).
function showDiff() {
  const [clean, pert] = JSON.parse(creme.diffMarked($('clean').value, $('pert').value));
  $('diff-clean').innerHTML = clean;
  $('diff-pert').innerHTML = pert;
}

/// Core's defaults into the controls (creme-web's defaults(): no page holds a copy of them).
function applyDefaults() {
  const d = JSON.parse(creme.defaults());
  state.defaults = d;
  $('max').value = d.generation.max_tokens;
  $('lr').value = d.edit.lr;
  $('steps').value = d.edit.max_steps;
  $('keep').value = d.edit.keep;
  $('target').value = d.target_tokens;
  showSetting();
  judge = new Judge({ timeoutSeconds: Number(q.get('judgeTimeout')) || d.judge_timeout_s });
  state.judgeTimeoutSeconds = judge.timeoutSeconds;
}

/// The chosen setting (core's, from defaults()), with the paper's Adam knobs from the controls.
function chosenSetting() {
  const s = structuredClone(state.defaults.settings[$('setting').value]);
  if ($('setting').value === 'paper') Object.assign(s.edit, { lr: Number($('lr').value), max_steps: Number($('steps').value), keep: $('keep').value });
  return s;
}

function showSetting() {
  const e = state.defaults.settings[$('setting').value].edit;
  $('lambda').textContent = e.lambda;
  $('solver').textContent = typeof e.solver === 'string' ? e.solver : `${Object.keys(e.solver)[0]} (${JSON.stringify(Object.values(e.solver)[0])})`;
  for (const k of ['lr', 'steps', 'keep']) $(k).disabled = $('setting').value !== 'paper';
}

function initControls() {
  applyDefaults();
  $('setting').onchange = showSetting;
  if (q.get('setting')) { $('setting').value = q.get('setting'); showSetting(); }
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
  $('task').onchange = () => selectTask().catch((e) => setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`));
  $('ptype').onchange = () => { if (currentTask()) $('task').onchange(); };
  $('tasksfile').onchange = async () => {
    const f = $('tasksfile').files[0];
    if (!f) return;
    try { setTasks(parseTasks(creme, await f.text(), f.name)); setStatus(`${tasks.length} tasks from ${escapeHtml(f.name)}`); }
    catch (e) { setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`); }
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
  if (q.get('ptype')) $('ptype').value = q.get('ptype');
  state.tasksLoaded = fetch('/datasets/HumanEval.jsonl').then((r) => (r.ok ? r.text() : '')).then(async (text) => {
    if (text) setTasks(parseTasks(creme, text, 'HumanEval.jsonl'));
    if (q.get('task')) { $('task').value = q.get('task'); await selectTask(); }
  }).catch((e) => setStatus(`<span class="bad">tasks: ${escapeHtml(String(e.message || e))}</span>`));
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

/// Greedy completion of `prompt`, streamed into `pre` when given: {tokens, text, finish}.
async function complete(session, prompt, pre = null) {
  if (pre) pre.textContent = '';
  const onToken = pre ? (_id, text) => { pre.textContent += text; } : null;
  return JSON.parse(await session.generate(prompt, Number($('max').value), 0, 0, true, onToken));
}

/// Generate into column `which` and start judging it; the verdict arrives in the background.
async function generateInto(session, which) {
  const r = await complete(session, $(which === 'clean' ? 'clean' : 'pert').value, $(`out-${which}`));
  state.judging = Promise.all([state.judging, showCompletion(which, r.text)]);
  return r;
}

async function generateBoth(session) {
  setStatus('generating from both prompts…');
  const t0 = performance.now();
  state.clean = await generateInto(session, 'clean');
  state.pert = await generateInto(session, 'pert');
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
  const r = JSON.parse(await session.edit($('clean').value, $('pert').value, Number($('layer').value), JSON.stringify(chosenSetting()), Number($('target').value)));
  state.edit = r;
  state.editSeconds = (performance.now() - t0) / 1000;
  const traced = $('setting').value === 'paper' ? 'every prompt position patched' : 'the rows after the typo patched';
  if (r.trace) $('curve').innerHTML = creme.Session.layerCurveSvg(JSON.stringify(r.trace), `restoration by layer (${traced})`);
  $('losssvg').innerHTML = r.loss_svg;
  const last = r.edit.losses[r.edit.losses.length - 1];
  $('editinfo').innerHTML = `layer <b>${r.layer}</b> · ${r.edit.steps} evaluations · loss ${r.edit.losses[0].total.toExponential(3)} → ${last.total.toExponential(3)} `
    + `(kept step ${r.edit.kept_step}) · ${state.editSeconds.toFixed(1)} s with the capture${r.trace ? ' and the trace' : ''}`;
  $('download').disabled = false;
  $('reach').disabled = false;
  setStatus(`edited layer ${r.layer}; generating from the perturbed prompt again…`);
  state.after = await generateInto(session, 'after');
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

/// Does the edit reach further: N other tasks of the type, before and after the edit.
async function reach(session) {
  const n = Number($('reachn').value);
  const others = tasks.filter((t) => t.task_id !== $('task').value);
  if (!others.length) throw new Error('no tasks to check: the server publishes none (open a tasks file)');
  startPython();
  const chosen = seededSample(others, n, Number($('seed').value));
  const t0 = performance.now();
  $('reach').disabled = true;
  try {
    state.reach = await reachCheck({
      creme, session, judge, tasks: chosen, type: $('ptype').value, seed: Number($('seed').value),
      maxTokens: Number($('max').value),
      onProgress: (done, total, rows) => {
        $('reachprogress').value = done / total;
        $('reachsum').textContent = `${done} of ${total} completions judged`;
        $('reachtable').innerHTML = reachTable(rows);
      },
    });
  } finally { $('reach').disabled = false; }
  const r = state.reach;
  $('reachtable').innerHTML = reachTable(r.rows);
  $('reachsum').textContent = `${r.fixed} fixed, ${r.broken} broken, ${r.unchanged} unchanged${r.noVerdict ? `, ${r.noVerdict} without a verdict` : ''} of ${r.rows.length} tasks (${((performance.now() - t0) / 1000).toFixed(0)} s)`;
}

async function runAll(session) {
  if (q.get('loadonly')) return;
  await state.tasksLoaded;
  await generateBoth(session);
  if (q.get('trace') === '1' || $('layer').value === '-1') await trace(session);
  await edit(session);
  if (q.get('reach')) { $('reachn').value = q.get('reach'); await reach(session); }
  await state.judging;
}

/// Button handlers, once a model is loaded.
function wire(session) {
  const guard = (f) => () => f(session).catch((e) => setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`));
  $('gen').onclick = guard(generateBoth);
  $('trace').onclick = guard(trace);
  $('grid').onclick = guard(grid);
  $('edit').onclick = guard(edit);
  $('reach').onclick = guard(reach);
  $('download').onclick = () => { try { download(session); } catch (e) { setStatus(`<span class="bad">${escapeHtml(String(e.message || e))}</span>`); } };
  $('revert').onclick = () => { session.revert(); $('download').disabled = true; $('reach').disabled = true; setStatus('reverted: the model is the file\'s again'); };
  $('apply').onchange = async () => {
    const f = $('apply').files[0];
    if (!f) return;
    try { const l = session.applyPatch(new Uint8Array(await f.arrayBuffer())); $('reach').disabled = false; setStatus(`applied ${escapeHtml(f.name)} (layer ${l})`); }
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
