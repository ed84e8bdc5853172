// The app's verdicts: which task a prompt belongs to, the program that judges a completion
// (creme-web's testProgram, the native harness's text), a verdict shown under a completion, and
// the edit's reach (the same perturbation type on other tasks, before and after the edit: the
// page's analogue of G-RIR).
import { escapeHtml } from './model.js';

/// Tasks from dataset JSONL text (HumanEval, a released perturbed set, or MBPP-style records,
/// which core turns into a prompt and a check).
export const parseTasks = (creme, text, source) => JSON.parse(creme.parseTasks(text, source));

/// The released perturbed sets the server publishes (/datasets/perturbed/<TYPE>.jsonl), by type;
/// a type the server lacks maps to null.
const released = new Map();
export async function releasedPrompt(creme, type, taskId) {
  if (!released.has(type)) {
    released.set(type, fetch(`/datasets/perturbed/${type}.jsonl`)
      .then((r) => (r.ok ? r.text() : null))
      .then((t) => (t ? new Map(parseTasks(creme, t, `${type}.jsonl`).map((p) => [p.task_id, p.prompt])) : null))
      .catch(() => null));
  }
  const set = await released.get(type);
  return (set && set.get(taskId)) || null;
}

/// A perturbed prompt for a task: the released one where the server has it, else creme's
/// perturbator (seeded). Returns {prompt, source}.
export async function perturbedPrompt(creme, task, type, seed) {
  const r = await releasedPrompt(creme, type, task.task_id);
  if (r) return { prompt: r, source: `the released ${type} prompt` };
  return { prompt: creme.perturb(task.prompt, type, seed), source: `creme's perturbator (${type}, seed ${seed})` };
}

/// The program that judges `completion` generated after `prompt` for `task`.
export const programFor = (creme, task, prompt, completion) => JSON.parse(creme.testProgram(prompt, completion, task.test, task.entry_point));

/// Show a verdict (or a pending/unavailable note) in element `el`; text only through textContent.
export function showVerdict(el, v) {
  el.replaceChildren();
  const head = document.createElement('div');
  if (!v) return;
  if (v.note) { head.className = 'muted'; head.textContent = v.note; el.append(head); return; }
  head.className = v.outcome === 'PASS' ? 'ok' : 'bad';
  head.textContent = v.outcome === 'PASS' ? `PASS · the tests ran (${v.seconds.toFixed(1)} s)` : `FAIL · ${v.kind}`;
  el.append(head);
  if (v.tail) {
    const tail = document.createElement('pre');
    tail.className = 'tail';
    tail.textContent = v.tail;
    el.append(tail);
  }
}

/// A seeded choice of n items (mulberry32 + Fisher-Yates): the same seed, the same tasks.
export function seededSample(items, n, seed) {
  let a = (seed >>> 0) + 0x6d2b79f5;
  const rand = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [copy[i], copy[j]] = [copy[j], copy[i]]; }
  return copy.slice(0, n);
}

/// Does the edit reach further? For each task: generate from its perturbed prompt without the
/// edit and with it, judge both. The model ends as it started (edited). `generate(prompt)` returns
/// the completion text; `onProgress(done, total, rows)` after each step. Returns {rows, fixed,
/// broken, unchanged}.
export async function reachCheck({ creme, session, judge, tasks, type, seed, generate, onProgress }) {
  const rows = [];
  for (const task of tasks) rows.push({ task, ...(await perturbedPrompt(creme, task, type, seed)) });
  const total = 2 * rows.length;
  let done = 0;
  const patch = session.patchBytes();
  const pending = [];
  const pass = async (row, when) => {
    const completion = await generate(row.prompt);
    row[`${when}Text`] = completion;
    pending.push(judge.run(programFor(creme, row.task, row.prompt, completion)).then((v) => { row[when] = v; onProgress(done, total, rows); }));
    done += 1;
    onProgress(done, total, rows);
  };
  session.revert();
  try {
    for (const row of rows) await pass(row, 'before');
  } finally {
    session.applyPatch(patch);
  }
  for (const row of rows) await pass(row, 'after');
  await Promise.all(pending);
  const change = (r) => (r.before.outcome === r.after.outcome ? 'unchanged' : r.after.outcome === 'PASS' ? 'fixed' : 'broken');
  for (const r of rows) r.change = change(r);
  const count = (c) => rows.filter((r) => r.change === c).length;
  return { rows, fixed: count('fixed'), broken: count('broken'), unchanged: count('unchanged') };
}

/// The reach check's table as HTML (every dynamic string escaped).
export function reachTable(rows) {
  const cell = (v) => (v ? `<td class="${v.outcome === 'PASS' ? 'ok' : 'bad'}">${v.outcome}${v.outcome === 'PASS' ? '' : ` (${escapeHtml(v.kind)})`}</td>` : '<td class="muted">…</td>');
  const body = rows.map((r) => `<tr><td>${escapeHtml(r.task.task_id)}</td>${cell(r.before)}${cell(r.after)}<td>${r.change ? escapeHtml(r.change) : ''}</td></tr>`).join('');
  return `<table><tr><th>task</th><th>before the edit</th><th>after</th><th>change</th></tr>${body}</table>`;
}
