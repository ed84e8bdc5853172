// The app's verdicts: which task a prompt belongs to, a verdict shown under a completion, and
// the edit's reach (the same perturbation type on other tasks, before and after the edit: the
// page's analogue of G-RIR). Judging goes through core: creme-web's judgeCompletion and
// Session.evaluateSet (core's eval::run_set, the protocol of `creme eval`) build the program the
// native harness runs and hand it to the page's Python runner (judge.js, judge_runner.py), whose
// verdict comes back as core's SampleRecord; this file only presents records.
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

/// The page's runner as core's judge sees it: one program {source, check} in, the runner's
/// verdict {outcome, kind, tail, seconds} out.
const runnerOf = (judge) => (program) => judge.run(program);

/// A SampleRecord (core's, as JSON text or parsed) as the page shows it: {outcome: 'PASS'|'FAIL',
/// kind, tail, seconds}, or {note} where there is no verdict (the judge could not run the program,
/// or the prompt did not fit the context).
export function verdictOf(record) {
  const r = typeof record === 'string' ? JSON.parse(record) : record;
  if (r.verdict === 'Error') return { note: `no verdict: ${r.stderr_tail || r.error_kind}`, record: r };
  return { outcome: r.passed ? 'PASS' : 'FAIL', kind: r.passed ? 'none' : r.error_kind, tail: r.stderr_tail, seconds: r.seconds, record: r };
}

/// Judge `completion`, generated after `prompt` for `task` (set "clean" or a perturbation type),
/// through core with the page's runner: the verdict as verdictOf gives it.
export async function judgeGiven(creme, judge, task, set, prompt, completion) {
  return verdictOf(await creme.judgeCompletion(JSON.stringify(task), set, prompt, completion, runnerOf(judge)));
}

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

/// Does the edit reach further? Each task's perturbed prompt is evaluated by core (run_set:
/// greedy, `maxTokens`, core's batches and stops) without the edit and with it, every completion
/// judged by the page's runner. The model ends as it started (edited). `onProgress(done, total,
/// rows)` after each judged sample. Returns {rows, fixed, broken, unchanged, noVerdict}; a row
/// holds the task, its prompt, the records and verdicts before and after.
export async function reachCheck({ creme, session, judge, tasks, type, seed, maxTokens, onProgress }) {
  const rows = [];
  for (const task of tasks) rows.push({ task, ...(await perturbedPrompt(creme, task, type, seed)) });
  const problems = JSON.stringify(rows.map((r) => ({ ...r.task, prompt: r.prompt })));
  const total = 2 * rows.length;
  let done = 0;
  const evaluate = async (when) => {
    const onRecord = (json) => {
      const rec = JSON.parse(json);
      const row = rows.find((r) => r.task.task_id === rec.task_id);
      if (!row) return;
      row[`${when}Record`] = rec;
      row[`${when}Text`] = rec.completion;
      row[when] = verdictOf(rec);
      done += 1;
      onProgress(done, total, rows);
    };
    await session.evaluateSet(problems, type, maxTokens, runnerOf(judge), onRecord);
  };
  const patch = session.patchBytes();
  session.revert();
  try {
    await evaluate('before');
  } finally {
    session.applyPatch(patch);
  }
  await evaluate('after');
  const change = (r) => (!r.before || !r.after || r.before.note || r.after.note ? 'no verdict'
    : r.before.outcome === r.after.outcome ? 'unchanged' : r.after.outcome === 'PASS' ? 'fixed' : 'broken');
  for (const r of rows) r.change = change(r);
  const count = (c) => rows.filter((r) => r.change === c).length;
  return { rows, fixed: count('fixed'), broken: count('broken'), unchanged: count('unchanged'), noVerdict: count('no verdict') };
}

/// The reach check's table as HTML (every dynamic string escaped).
export function reachTable(rows) {
  const cell = (v) => (!v ? '<td class="muted">…</td>'
    : v.note ? `<td class="muted">${escapeHtml(v.note)}</td>`
      : `<td class="${v.outcome === 'PASS' ? 'ok' : 'bad'}">${v.outcome}${v.outcome === 'PASS' ? '' : ` (${escapeHtml(v.kind)})`}</td>`);
  const body = rows.map((r) => `<tr><td>${escapeHtml(r.task.task_id)}</td>${cell(r.before)}${cell(r.after)}<td>${r.change ? escapeHtml(r.change) : ''}</td></tr>`).join('');
  return `<table><tr><th>task</th><th>before the edit</th><th>after</th><th>change</th></tr>${body}</table>`;
}
