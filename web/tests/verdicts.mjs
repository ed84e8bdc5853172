// Verdicts in the page (issue 19), against `creme eval --completions` on the same completions:
//  1. HumanEval/0 C3 with completions injected: a correct one, a wrong one, one that calls
//     sys.exit(0), one that calls os._exit(0), one that imports the JS bridge (network), and one
//     that loops forever (the time limit stops it; the page stays responsive; the next program
//     still runs). Every page verdict equals the native one.
//  2. A browser without Web Workers: the page says there are no verdicts and keeps working.
//  3. MBPP-style tasks from a file opened in the page (the CREME authors' shape): the reference
//     code passes, a wrong body fails, as natively.
//  4. A whole run on a small model (SmolLM2 cut to 6 layers): generate, edit, generate after, and
//     the edit's reach on one other task; every verdict equals the native one on the same text.
//     (WebGPU on SwiftShader takes about 40 s per HumanEval prompt, so completions are short.)
//     The reach check runs through core (creme-web's evaluateSet, core's run_set): its rows carry
//     core's SampleRecords.
//  5. Defaults: the app's and the trace page's controls start at the native CLI's defaults (both
//     from core through creme-web's defaults(); the pages hold no copy).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { artifacts, bin, check, finish, finished, humanevalDir, launchBrowser, modelDir, newPage, startServer } from './harness.mjs';

const dataset = humanevalDir();
const jsonl = (f) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
const clean = new Map(jsonl(path.join(dataset, 'HumanEval.jsonl')).map((t) => [t.task_id, t]));
const c3 = new Map(jsonl(path.join(dataset, 'perturbed', 'C3.jsonl')).map((t) => [t.task_id, t]));
const TIMEOUT = 5;

/// The default `creme <cmd> --help` shows for `--flag` (clap's "[default: X]").
function cliDefault(cmd, flag) {
  const help = execFileSync(bin, [cmd, '--help'], { encoding: 'utf8' });
  const at = help.search(new RegExp(`^\\s*--${flag}\\b`, 'm'));
  const m = at < 0 ? null : /\[default: ([^\]]+)\]/.exec(help.slice(at));
  if (!m) throw new Error(`creme ${cmd} --help shows no default for --${flag}`);
  return m[1];
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'creme-verdicts-'));
/// Native verdicts of completions [{set, task_id, completion}] (one sample each, in order).
function nativeVerdicts(items, { data = dataset, types = 'clean,C3' } = {}) {
  const file = path.join(tmp, `completions-${Date.now()}.jsonl`), out = path.join(tmp, `eval-${Date.now()}`);
  fs.writeFileSync(file, items.map((c, i) => JSON.stringify({ ...c, sample: i })).join('\n'));
  const tasks = [...new Set(items.map((c) => c.task_id))].join(',');
  execFileSync(bin, ['eval', '--completions', file, '--types', types, '--tasks', tasks, '--dataset', data, '--timeout', String(TIMEOUT), '--out', out], { stdio: 'ignore' });
  const recs = jsonl(path.join(out, 'samples.jsonl'));
  return items.map((_, i) => recs.find((r) => r.sample === i));
}

const { port, server } = await startServer();
const { browser, userDir } = await launchBrowser();
const url = (q) => `http://127.0.0.1:${port}/app.html?${new URLSearchParams(q)}`;
try {
  // 1. Injected completions.
  const page = await newPage(browser);
  await page.goto(url({ task: 'HumanEval/0', ptype: 'C3', judgeTimeout: String(TIMEOUT) }));
  await finished(page, 300000);
  await page.evaluate(() => window.__creme.tasksLoaded);
  const shown = await page.evaluate(() => ({ pert: document.getElementById('pert').value, source: document.getElementById('promptsource').textContent }));
  check(shown.pert === c3.get('HumanEval/0').prompt && shown.source.includes('released C3'), `the app takes the released C3 prompt for HumanEval/0 (${shown.source})`);
  const body = clean.get('HumanEval/0').canonical_solution;
  const cases = [
    ['clean', 'correct', body],
    ['pert', 'correct', body],
    ['pert', 'wrong', '    return False\n'],
    ['pert', 'sys.exit(0)', '    return True\nimport sys\nsys.exit(0)\n'],
    ['pert', 'os._exit(0)', '    return True\nimport os\nos._exit(0)\n'],
    ['pert', 'network', '    return True\nimport js\njs.fetch("http://example.com/")\n'],
    ['pert', 'pyodide.http', '    return True\nfrom pyodide.http import pyfetch\n'],
  ];
  const t0 = Date.now();
  const pageVerdicts = [];
  for (const [column, , text] of cases) pageVerdicts.push(await page.evaluate(([w, t]) => window.__cremeShowCompletion(w, t), [column, text]));
  console.log(`${cases.length} verdicts in the page in ${((Date.now() - t0) / 1000).toFixed(1)} s (Python started in ${(await page.evaluate(() => window.__creme.python.seconds)).toFixed(1)} s)`);
  // The endless loop: the page answers while it runs, the time limit ends it, Python restarts.
  await page.evaluate(() => { window.__loop = window.__cremeShowCompletion('pert', '    while True:\n        pass\n'); });
  await page.waitForTimeout(1000);
  const t1 = Date.now();
  const clicked = await page.evaluate(() => { document.getElementById('clean').dispatchEvent(new Event('input')); return document.getElementById('v-pert').textContent; });
  check(Date.now() - t1 < 2000 && clicked.includes('running'), `the page stays responsive while a program loops (answered in ${Date.now() - t1} ms; verdict shows "${clicked}")`);
  const loop = await page.evaluate(() => window.__loop);
  check(loop.outcome === 'FAIL' && loop.kind === 'timeout', `an endless loop is a FAIL by the time limit (${loop.outcome} ${loop.kind}, ${loop.seconds.toFixed(1)} s)`);
  const again = await page.evaluate(([t]) => window.__cremeShowCompletion('pert', t), [body]);
  check(again.outcome === 'PASS', `after the time limit a fresh Python judges the next program (${again.outcome})`);
  await page.screenshot({ path: path.join(artifacts, 'verdicts.png'), fullPage: true });
  const items = [...cases, ['pert', 'endless loop', '    while True:\n        pass\n']]
    .map(([column, , text]) => ({ set: column === 'clean' ? 'clean' : 'C3', task_id: 'HumanEval/0', completion: text }));
  const nat = nativeVerdicts(items);
  [...pageVerdicts, loop].forEach((v, i) => {
    const n = nat[i], name = i < cases.length ? cases[i][1] : 'endless loop';
    check(n && v.outcome === (n.passed ? 'PASS' : 'FAIL'), `${items[i].set} ${name}: page ${v.outcome} (${v.kind}) = native ${n && (n.passed ? 'PASS' : 'FAIL')} (${n && n.error_kind})`);
  });
  const tail = await page.evaluate(() => window.__cremeShowCompletion('pert', '    return False\n').then(() => document.getElementById('v-pert').textContent));
  check(tail.includes('FAIL · assertion') && tail.includes('AssertionError'), `a FAIL shows its kind and the traceback's last lines (${JSON.stringify(tail.slice(-80))})`);
  await page.close();

  // 2. No Web Workers (an old browser): no verdicts, said so, the rest works.
  const old = await newPage(browser);
  await old.addInitScript(() => { delete window.Worker; });
  await old.goto(url({ task: 'HumanEval/0', ptype: 'C3' }));
  await finished(old, 300000);
  await old.evaluate(() => window.__creme.tasksLoaded);
  const ov = await old.evaluate(() => window.__cremeShowCompletion('pert', 'x').then((v) => ({ v, status: document.getElementById('pystatus').textContent, verdict: document.getElementById('v-pert').textContent, diff: document.getElementById('diff-pert').innerHTML.length })));
  check(ov.v === null && /No verdicts in this browser/.test(ov.status) && ov.verdict.includes('no verdict') && ov.diff > 0,
    `without Web Workers the page says so and keeps working ("${ov.status}")`);
  await old.close();

  // 3. MBPP-style tasks from a file (test_list as a Python list literal in a string).
  const fixture = path.resolve(process.cwd(), '..', 'tests', 'fixtures', 'mbpp-authors-shape.jsonl');
  const mp0 = await newPage(browser);
  await mp0.goto(url({ judgeTimeout: String(TIMEOUT) }));
  await finished(mp0, 300000);
  await mp0.setInputFiles('#tasksfile', fixture);
  await mp0.waitForFunction(() => [...document.getElementById('task').options].some((o) => o.value === 'MBPP/901'));
  await mp0.selectOption('#task', 'MBPP/901');
  await mp0.waitForFunction(() => document.getElementById('clean').value.includes('def shared_elements('));
  const mbpp = [['correct', '    return sorted(set(list1) & set(list2))\n'], ['wrong', '    return list1\n']];
  const mv = [];
  for (const [, text] of mbpp) mv.push(await mp0.evaluate(([t]) => window.__cremeShowCompletion('clean', t), [text]));
  const mdir = fs.mkdtempSync(path.join(tmp, 'mbpp-'));
  fs.copyFileSync(fixture, path.join(mdir, 'MBPP.jsonl'));
  const mn = nativeVerdicts(mbpp.map(([, text]) => ({ set: 'clean', task_id: 'MBPP/901', completion: text })), { data: mdir, types: 'clean' });
  mbpp.forEach(([name], i) => check(mv[i] && mn[i] && mv[i].outcome === (mn[i].passed ? 'PASS' : 'FAIL') && mv[i].outcome === (i === 0 ? 'PASS' : 'FAIL'),
    `MBPP/901 (opened from a file) ${name}: page ${mv[i] && mv[i].outcome} = native ${mn[i] && (mn[i].passed ? 'PASS' : 'FAIL')}`));
  await mp0.close();

  // 4. A whole run on a small model, with the edit's reach on another task.
  const full = 'smollm2-135m-instruct-q4_1.gguf', small = 'smollm2-135m-instruct-6layers-q8_0.gguf';
  if (!fs.existsSync(path.join(modelDir(), small))) {
    execFileSync(bin, ['quantize', '--input', path.join(modelDir(), full), '--out', path.join(modelDir(), small), '--type', 'q8_0', '--keep-layers', '6'], { stdio: 'ignore' });
  }
  const mp = await newPage(browser);
  await mp.goto(url({ auto: '1', model: `/models/${small}`, task: 'HumanEval/0', ptype: 'C3', max: '4', layer: '3', steps: '4', target: '8', reach: '1', judgeTimeout: String(TIMEOUT) }));
  const t2 = Date.now();
  const a = await finished(mp, 900000);
  check(!a.error, `the app ran generate, edit, generate after and the reach check without error ${a.error ? '(' + a.error + ')' : ''} in ${((Date.now() - t2) / 1000).toFixed(0)} s`);
  await mp.screenshot({ path: path.join(artifacts, 'verdicts-reach.png'), fullPage: true });
  const r = a.reach;
  check(r && r.rows.length === 1 && r.fixed + r.broken + r.unchanged === 1 && r.rows.every((x) => x.before && x.after && x.task.task_id !== 'HumanEval/0'),
    `reach check: ${r && r.rows.map((x) => `${x.task.task_id} ${x.before.outcome}->${x.after.outcome}`).join(', ')} (${r && r.fixed} fixed, ${r && r.broken} broken, ${r && r.unchanged} unchanged)`);
  const recs = r ? r.rows.flatMap((x) => [x.beforeRecord, x.afterRecord]) : [];
  check(recs.length === 2 && recs.every((x, i) => x && x.version >= 1 && x.set === 'C3' && x.sample === 0 && x.finish !== 'given'
    && x.completion === r.rows[0][i ? 'afterText' : 'beforeText']),
  `the reach check's rows carry core's sample records (${recs.map((x) => x && `v${x.version} ${x.set} ${x.verdict} ${x.finish}`).join(', ')})`);
  const runItems = [['clean', a.clean], ['C3', a.pert], ['C3', a.after]].map(([set, g]) => ({ set, task_id: 'HumanEval/0', completion: g ? g.text : '' }));
  const reachItems = r ? r.rows.flatMap((x) => ['beforeText', 'afterText'].map((k) => ({ set: 'C3', task_id: x.task.task_id, completion: x[k] }))) : [];
  const runVerdicts = [a.verdicts.clean, a.verdicts.pert, a.verdicts.after, ...(r ? r.rows.flatMap((x) => [x.before, x.after]) : [])];
  const nat3 = nativeVerdicts([...runItems, ...reachItems]);
  const agree = runVerdicts.filter((v, i) => v && nat3[i] && v.outcome === (nat3[i].passed ? 'PASS' : 'FAIL')).length;
  check(agree === runVerdicts.length && runVerdicts.length === 5, `the model run's ${runVerdicts.length} page verdicts equal the native ones: ${agree} agree (${runVerdicts.map((v) => v && v.outcome).join(' ')})`);
  await mp.close();

  // 5. Defaults from core: the app and the trace page start where the native CLI does.
  const dp = await newPage(browser);
  await dp.goto(url({}));
  await finished(dp, 300000);
  const shownDefaults = await dp.evaluate(() => ({
    ...Object.fromEntries(['max', 'lr', 'steps', 'keep', 'target'].map((id) => [id, document.getElementById(id).value])),
    timeout: String(window.__creme.judgeTimeoutSeconds),
  }));
  const want = { max: cliDefault('eval', 'max-tokens'), timeout: cliDefault('eval', 'timeout'), lr: cliDefault('edit', 'lr'), steps: cliDefault('edit', 'steps'), keep: cliDefault('edit', 'keep'), target: cliDefault('edit', 'target-tokens') };
  const same = Object.keys(want).every((k) => Number.isNaN(Number(want[k])) ? shownDefaults[k].toLowerCase() === want[k].toLowerCase() : Number(shownDefaults[k]) === Number(want[k]));
  check(same, `the app's controls start at the CLI's defaults (page ${JSON.stringify(shownDefaults)}, CLI ${JSON.stringify(want)})`);
  await dp.close();
  const tp = await newPage(browser);
  await tp.goto(`http://127.0.0.1:${port}/trace.html`);
  await finished(tp, 300000);
  const ntarget = await tp.evaluate(() => document.getElementById('ntarget').value);
  check(Number(ntarget) === Number(cliDefault('trace', 'target-tokens')), `the trace page's continuation tokens start at the CLI's default (${ntarget} vs ${cliDefault('trace', 'target-tokens')})`);
  await tp.close();
} finally {
  await browser.close();
  server.kill();
  fs.rmSync(userDir, { recursive: true, force: true });
  fs.rmSync(tmp, { recursive: true, force: true });
}
finish('verdict');
