// Browser tests (harness.mjs: `creme serve`, headless Chromium with WebGPU on SwiftShader). Every
// in-page result is checked against the native run on this machine.
//  1. GPU check page: the matmul kernel via creme-web equals the CPU reference.
//  2. Generate page: SmolLM2-135M streamed into WebGPU generates the native run's greedy tokens.
//  3. Trace page: per-layer restoration equals the native `creme trace` within 1e-3 (SmolLM2 cut
//     to 6 layers).
//  4. App: generate both prompts, edit a layer (final loss within 1% of the native `creme edit`),
//     generate after the edit, download the patch; natively the patch gives the page's tokens.
//     Then at 1280 and 800 px: prompt boxes and completions wrap, the perturbation is marked.
//  5. App download cache: an interrupted download resumes from the cached chunks; a corrupted
//     cached chunk is detected and fetched again.
//  6. App: the Qwen2.5-Coder-0.5B model loads (time and the browser's peak memory reported).
//  7. Hostile GGUF files (markup in general.name and in a tensor name) in the app, generate and
//     trace pages: the text shows as text, no element is created from it.
//  8. The HTML report of `creme edit` (a 6-layer SmolLM2 edit) at 1280 and 800 px: every prompt
//     and completion block wraps inside its width, and the typo is marked in both prompts.
// Screenshots go to $ARTIFACTS (default test-artifacts/).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { artifacts, bin, check, finish, finished, launchBrowser, modelDir, native, newPage as openPage, startServer } from './harness.mjs';

const { port, server } = await startServer();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'creme-browser-'));
const writeTmp = (name, text) => { const f = path.join(tmp, name); fs.writeFileSync(f, text); return f; };
/// The __metadata__ of a safetensors file (CREME patches keep the loss curve there).
const stMetadata = (file) => { const b = fs.readFileSync(file); const n = Number(b.readBigUInt64LE(0)); return JSON.parse(b.subarray(8, 8 + n).toString())['__metadata__']; };
const { browser, userDir } = await launchBrowser();
const newPage = () => openPage(browser);
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
  const nativeGen = JSON.parse(native(['generate', '--model', path.join(modelDir(), modelFile), '--prompt', prompt, '--max-tokens', String(maxTokens), '--json']));
  const gp = await browser.newPage();
  gp.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  const q = new URLSearchParams({ model: `/models/${modelFile}`, prompt, max: String(maxTokens), auto: '1' });
  await gp.goto(`http://127.0.0.1:${port}/generate.html?${q}`);
  await gp.waitForFunction(() => window.__creme && window.__creme.done, null, { timeout: 600000 });
  const g = await gp.evaluate(() => window.__creme);
  await gp.screenshot({ path: path.join(artifacts, 'generate.png'), fullPage: true });
  check(!g.error, `model page ran without error ${g.error ? '(' + g.error + ')' : ''}`);
  check(g.config && g.config.n_layers === 30, `SmolLM2 streamed in by Range requests (${g.loadSeconds && g.loadSeconds.toFixed(1)} s)`);
  check(JSON.stringify(g.tokens) === JSON.stringify(nativeGen.tokens), `browser greedy tokens equal the native run: ${JSON.stringify(g.tokens)} vs ${JSON.stringify(nativeGen.tokens)}`);
  check(JSON.stringify(g.streamed) === JSON.stringify(g.tokens), 'every token was streamed to the page callback');
  console.log(`browser generation: ${g.tokens && g.tokens.length} tokens in ${g.genSeconds && g.genSeconds.toFixed(1)} s: ${JSON.stringify(g.text)}`);

  // 3. The educational trace page: a live logprob trace in the page. The patched runs of a trace
  // cost about layers^2 / 2 layer passes: all 30 of SmolLM2's took 18 minutes on SwiftShader, so
  // the page traces SmolLM2 cut to its first 6 layers (`creme quantize --keep-layers`), the
  // same code on a smaller model, and the native trace runs on the same file.
  const traceModel = 'smollm2-135m-instruct-6layers-q8_0.gguf', traceLayers = 6;
  execFileSync(bin, ['quantize', '--input', path.join(modelDir(), modelFile), '--out', path.join(modelDir(), traceModel), '--type', 'q8_0', '--keep-layers', String(traceLayers)], { stdio: 'ignore' });
  const tp = await browser.newPage();
  tp.on('console', (m) => { if (m.type() === 'error') console.log('[page error]', m.text()); });
  const clean = 'def add(a, b):\n    """Sum two numbers."""\n', pert = 'def add(a, b):\n    """Sun two numbrs."""\n';
  const tq = new URLSearchParams({ auto: '1', n: '4', clean, pert, model: `/models/${traceModel}` });
  await tp.goto(`http://127.0.0.1:${port}/trace.html?${tq}`);
  await tp.waitForFunction(() => window.__creme && window.__creme.done, null, { timeout: 600000 });
  const t = await tp.evaluate(() => window.__creme);
  await tp.screenshot({ path: path.join(artifacts, 'trace.png'), fullPage: true });
  check(!t.error, `trace page ran without error ${t.error ? '(' + t.error + ')' : ''}`);
  const tr = t.trace;
  check(tr && tr.all_positions.scores.length === traceLayers && tr.differing_positions.scores.length === traceLayers, `trace page: restoration for all ${traceLayers} layers, both variants`);
  check(tr && tr.all_positions.scores.every(Number.isFinite) && Number.isFinite(tr.lp_clean) && Number.isFinite(tr.lp_pert),
    `trace page: finite scores (lp_clean ${tr && tr.lp_clean.toFixed(2)}, lp_pert ${tr && tr.lp_pert.toFixed(2)})`);
  console.log(`trace page: key layer ${tr && tr.all_positions.key_layer} (differing: ${tr && tr.differing_positions.key_layer}) in ${t.seconds && t.seconds.toFixed(1)} s`);
  const cleanFile = writeTmp('clean.txt', clean), pertFile = writeTmp('pert.txt', pert);
  native(['trace', '--model', path.join(modelDir(), traceModel), '--clean-file', cleanFile, '--pert-file', pertFile, '--target-tokens', '4', '--out', path.join(tmp, 'trace')]);
  const nt = JSON.parse(fs.readFileSync(path.join(tmp, 'trace', 'trace.json'), 'utf8'));
  for (const v of ['all_positions', 'differing_positions']) {
    const diff = tr ? Math.max(...nt[v].scores.map((x, l) => Math.abs(x - tr[v].scores[l]))) : Infinity;
    check(diff < 1e-3, `trace page ${v}: per-layer restoration equals the native trace (max difference ${diff.toExponential(2)}), key layer ${tr && tr[v].key_layer} vs ${nt[v].key_layer}`);
  }
  // A pair too close to normalise is flagged alike in the page and natively, and the page says so.
  const flagged = !!(tr && tr.all_positions.too_close), shown = await tp.evaluate(() => !!document.getElementById('too-close'));
  check(flagged === !!nt.all_positions.too_close && shown === flagged,
    `trace page: too close to normalise ${flagged} (native ${!!nt.all_positions.too_close}), note shown ${shown}`);

  // 4. The app: generate, edit a fixed layer, generate after, download the patch; compare natively.
  // The paper's setting (Adam, a fixed number of steps) is the one whose loss curve the native run
  // must reproduce; the page's default is the recommended one (checked in 5).
  const layer = 20, steps = 5, target = 8, max = 6;
  const ap = await newPage();
  const aq = new URLSearchParams({ auto: '1', setting: 'paper', max: String(max), layer: String(layer), steps: String(steps), target: String(target), clean, pert });
  await ap.goto(`http://127.0.0.1:${port}/app.html?${aq}`);
  const a = await finished(ap);
  check(!a.error, `app ran without error ${a.error ? '(' + a.error + ')' : ''}`);
  check(a.loadStats && a.loadStats.verified, `app: model streamed in ${a.loadSeconds && a.loadSeconds.toFixed(1)} s, SHA-256 verified (${a.loadStats && a.loadStats.fetched} chunks fetched)`);
  const [dl] = await Promise.all([ap.waitForEvent('download'), ap.click('#download')]);
  const pagePatch = path.join(tmp, 'page-patch.safetensors');
  await dl.saveAs(pagePatch);
  await ap.screenshot({ path: path.join(artifacts, 'app.png'), fullPage: true });
  // After the full run, at two widths: prompt boxes and completions wrap, the typo is marked.
  for (const width of [1280, 800]) {
    await ap.setViewportSize({ width, height: 900 });
    await ap.screenshot({ path: path.join(artifacts, `app-${width}.png`), fullPage: true });
    const v = await ap.evaluate(() => ({
      boxes: ['clean', 'pert', 'diff-clean', 'diff-pert', 'out-clean', 'out-pert', 'out-after'].map((id) => { const e = document.getElementById(id); return [id, e.scrollWidth, e.clientWidth]; }),
      marks: ['diff-clean', 'diff-pert'].map((id) => [...document.getElementById(id).querySelectorAll('mark')].map((m) => m.textContent).join('|')),
      page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    }));
    check(v.boxes.every(([, s, c]) => s <= c), `app at ${width} px: the prompt boxes and completions fit their width (${JSON.stringify(v.boxes)})`);
    check(v.marks[0] === 'm|e' && v.marks[1] === 'n', `app at ${width} px: the perturbation is marked in both prompts (clean: ${v.marks[0]}, perturbed: ${v.marks[1]})`);
    check(v.page <= 0, `app at ${width} px: the page does not scroll sideways (${v.page} px)`);
  }
  await ap.setViewportSize({ width: 1280, height: 900 });
  const nativePatch = path.join(tmp, 'native-patch.safetensors');
  native(['edit', '--model', path.join(modelDir(), modelFile), '--clean-file', cleanFile, '--pert-file', pertFile, '--layer', String(layer), '--steps', String(steps),
    '--target-tokens', String(target), '--no-eval', '--out', nativePatch]);
  const nLoss = JSON.parse(stMetadata(nativePatch).loss_curve), pLoss = a.edit ? a.edit.edit.losses : [];
  const nFinal = nLoss[nLoss.length - 1].total, pFinal = pLoss.length ? pLoss[pLoss.length - 1].total : NaN;
  check(Math.abs(pFinal - nFinal) <= 0.01 * nFinal, `app edit: final loss ${pFinal.toExponential(4)} vs native ${nFinal.toExponential(4)} (${pLoss.length} vs ${nLoss.length} evaluations)`);
  check(stMetadata(pagePatch).made_by === 'creme-web', `app: downloaded the patch (${fs.statSync(pagePatch).size} bytes)`);
  const after = JSON.parse(native(['generate', '--model', path.join(modelDir(), modelFile), '--prompt', pert, '--max-tokens', String(max), '--humaneval-stops', '--patch', pagePatch, '--json']));
  check(a.after && JSON.stringify(after.tokens) === JSON.stringify(a.after.tokens), `the page's patch applied natively gives the page's tokens after the edit: ${JSON.stringify(after.tokens)} vs ${JSON.stringify(a.after && a.after.tokens)}`);
  console.log(`app: clean ${JSON.stringify(a.clean && a.clean.text)} / perturbed ${JSON.stringify(a.pert && a.pert.text)} / after the edit ${JSON.stringify(a.after && a.after.text)}`);

  // 5. The download cache: interrupt, resume, corrupt a chunk.
  const url = `/models/${modelFile}`;
  await ap.evaluate(() => caches.delete('creme-models-v1'));
  const lq = (extra) => new URLSearchParams({ auto: '1', loadonly: '1', model: url, ...extra });
  await ap.goto(`http://127.0.0.1:${port}/app.html?${lq({ stopAfter: '5' })}`);
  const r1 = await finished(ap);
  check(r1.error && r1.error.includes('interrupted after 5 chunks'), `an interrupted download stops with a clear message (${r1.error})`);
  await ap.goto(`http://127.0.0.1:${port}/app.html?${lq({})}`);
  const r2 = await finished(ap);
  const chosen = await ap.evaluate(() => [document.getElementById('setting').value, document.getElementById('solver').textContent]);
  check(chosen[0] === 'recommended' && chosen[1].startsWith('Ridge'), `the app's edit defaults to the recommended setting (${chosen.join(', ')})`);
  check(!r2.error && r2.loadStats.fromCache === 5 && r2.loadStats.fetched === r2.loadStats.chunks - 5, `the download resumed: ${r2.loadStats && r2.loadStats.fromCache} chunks from the cache, ${r2.loadStats && r2.loadStats.fetched} fetched`);
  await ap.evaluate(([u]) => window.__cremeCorrupt(u, 3), [url]);
  await ap.goto(`http://127.0.0.1:${port}/app.html?${lq({})}`);
  const r3 = await finished(ap);
  check(!r3.error && r3.loadStats.refetched === 1 && r3.loadStats.fetched === 1 && r3.loadStats.verified, `a corrupted cached chunk was detected and fetched again (refetched ${r3.loadStats && r3.loadStats.refetched}, SHA-256 verified)`);

  // 6. Qwen2.5-Coder-0.5B in the page: load time and the browser's peak memory.
  const qwen = 'qwen2.5-coder-0.5b-instruct-q4_k_m.gguf';
  if (fs.existsSync(path.join(modelDir(), qwen))) {
    const rss = () => { let kb = 0; for (const pid of fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d))) { try { const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8'); if (/^Name:\s*(chromium|chrome)/m.test(st)) kb += Number((/VmRSS:\s*(\d+)/.exec(st) || [0, 0])[1]); } catch { /* gone */ } } return kb / 1024; };
    let peak = 0;
    const timer = setInterval(() => { peak = Math.max(peak, rss()); }, 250);
    await ap.goto(`http://127.0.0.1:${port}/app.html?${lq({ model: `/models/${qwen}` })}`);
    const rq = await finished(ap);
    clearInterval(timer);
    check(!rq.error && rq.config && rq.config.n_layers === 24, `Qwen2.5-Coder-0.5B loads in the page: ${rq.loadSeconds && rq.loadSeconds.toFixed(1)} s (${rq.loadStats && rq.loadStats.chunks} chunks, SHA-256 ${rq.loadStats && rq.loadStats.verified ? 'verified' : 'not checked'}), browser peak RSS ${peak.toFixed(0)} MiB ${rq.error ? '(' + rq.error + ')' : ''}`);
    await ap.screenshot({ path: path.join(artifacts, 'app-qwen-loaded.png') });
  }

  // 7. Hostile GGUF files: error messages and model names carry the file's strings into the
  // pages, which must show them as text. Both files are a tiny random llama (1 layer, byte-level
  // vocabulary) named `xss`; the broken one adds a tensor named `xssTensor` with a bad shape, so
  // loading fails with an error that names it. Written in JS here, under fresh names (the pages
  // cache model chunks by URL), and removed afterwards.
  const xss = '<img src=x onerror="window.__pwned=1">', xssTensor = '<img src=x onerror=window.__pwned=1>';
  const u32 = (v) => { const b = Buffer.alloc(4); b.writeUInt32LE(v); return b; };
  const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
  const gstr = (s) => { const b = Buffer.from(s, 'utf8'); return Buffer.concat([u64(b.length), b]); };
  const f32 = (v) => { const b = Buffer.alloc(4); b.writeFloatLE(v); return b; };
  const byteChars = () => { // GPT-2's byte -> printable character map: the byte-level BPE alphabet
    const bs = [], cs = [];
    for (let b = 0; b < 256; b++) if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) { bs.push(b); cs.push(b); }
    let n = 0;
    for (let b = 0; b < 256; b++) if (!bs.includes(b)) { bs.push(b); cs.push(256 + n++); }
    return bs.map((b, i) => [b, cs[i]]).sort((x, y) => x[0] - y[0]).map(([, c]) => String.fromCodePoint(c));
  };
  const hostileGguf = (badTensor) => {
    const D = 64, FF = 96, HEADS = 4, KV = 2, V = 257, kvRows = KV * D / HEADS;
    const tokens = [...byteChars(), '<|endoftext|>'];
    const meta = [
      ['general.architecture', 8, gstr('llama')], ['general.name', 8, gstr(xss)],
      ['llama.block_count', 4, u32(1)], ['llama.embedding_length', 4, u32(D)], ['llama.feed_forward_length', 4, u32(FF)],
      ['llama.attention.head_count', 4, u32(HEADS)], ['llama.attention.head_count_kv', 4, u32(KV)], ['llama.context_length', 4, u32(256)],
      ['llama.rope.freq_base', 6, f32(10000)], ['llama.attention.layer_norm_rms_epsilon', 6, f32(1e-6)],
      ['tokenizer.ggml.model', 8, gstr('gpt2')],
      ['tokenizer.ggml.tokens', 9, Buffer.concat([u32(8), u64(V), ...tokens.map(gstr)])],
      ['tokenizer.ggml.merges', 9, Buffer.concat([u32(8), u64(0)])],
      ['tokenizer.ggml.eos_token_id', 4, u32(V - 1)],
    ];
    let seed = 1;
    const rand = (n, scale, offset) => Buffer.concat(Array.from({ length: n }, () => f32(offset + scale * (((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) - 0.5))));
    const t = (name, dims, scale = 0.2, offset = 0) => ({ name, dims, type: 0, data: rand(dims.reduce((a, b) => a * b), scale, offset) });
    const tensors = [t('token_embd.weight', [D, V], 1), t('blk.0.attn_norm.weight', [D], 0.1, 1), t('blk.0.attn_q.weight', [D, D]),
      t('blk.0.attn_k.weight', [D, kvRows]), t('blk.0.attn_v.weight', [D, kvRows]), t('blk.0.attn_output.weight', [D, D]),
      t('blk.0.ffn_norm.weight', [D], 0.1, 1), t('blk.0.ffn_gate.weight', [D, FF]), t('blk.0.ffn_up.weight', [D, FF]),
      t('blk.0.ffn_down.weight', [FF, D]), t('output_norm.weight', [D], 0.1, 1), t('output.weight', [D, V], 0.5)];
    // 3 x 5 is not a whole number of 32-element q4_0 blocks: the header parser refuses it.
    if (badTensor) tensors.push({ name: badTensor, dims: [3, 5], type: 2, data: Buffer.alloc(0) });
    const head = [Buffer.from('GGUF'), u32(3), u64(tensors.length), u64(meta.length)];
    for (const [k, ty, v] of meta) head.push(gstr(k), u32(ty), v);
    const align = (n) => Math.ceil(n / 32) * 32;
    let off = 0;
    const offs = tensors.map((x) => { const o = off; off = align(off + x.data.length); return o; });
    tensors.forEach((x, i) => head.push(gstr(x.name), u32(x.dims.length), ...x.dims.map(u64), u32(x.type), u64(offs[i])));
    const h = Buffer.concat(head), out = Buffer.alloc(align(h.length) + off);
    h.copy(out);
    tensors.forEach((x, i) => x.data.copy(out, align(h.length) + offs[i]));
    return out;
  };
  const tag = `${process.pid}-${Date.now()}`;
  const hostile = [[`hostile-broken-${tag}.gguf`, hostileGguf(xssTensor)], [`hostile-tiny-${tag}.gguf`, hostileGguf(null)],
    [`hostile-cut-${tag}.gguf`, hostileGguf(null).subarray(0, 1000)]];
  try {
    for (const [name, bytes] of hostile) fs.writeFileSync(path.join(modelDir(), name), bytes);
    for (const [name] of hostile.slice(0, 2)) {
      const broken = name.startsWith('hostile-broken');
      for (const [pg, extra] of [['app.html', { loadonly: '1' }], ['generate.html', { max: '2' }], ['trace.html', { n: '1' }]]) {
        const hp = await newPage();
        await hp.goto(`http://127.0.0.1:${port}/${pg}?${new URLSearchParams({ auto: '1', model: `/models/${name}`, ...extra })}`);
        const r = await finished(hp, 300000);
        await hp.waitForTimeout(500); // an injected <img src=x> would have run its onerror by now
        const seen = await hp.evaluate(() => ({ pwned: window.__pwned, imgs: document.querySelectorAll('img').length, text: document.body.textContent }));
        check(seen.pwned === undefined && seen.imgs === 0, `${pg}, ${broken ? 'broken' : 'loading'} hostile GGUF: no element made from the file's strings (${seen.imgs} <img>, window.__pwned ${seen.pwned})`);
        if (broken) check(r.error && r.error.includes(xssTensor) && seen.text.includes(xssTensor), `${pg}: the load error names the tensor, as text (${r.error})`);
        else check(!r.error && r.config && r.config.name === xss && seen.text.includes(xss), `${pg}: the model's name is shown as text ${r.error ? '(' + r.error + ')' : ''}`);
        await hp.close();
      }
    }
    // A file that ends inside its header: the parser's own message, not a generic one.
    const cp = await newPage();
    await cp.goto(`http://127.0.0.1:${port}/app.html?${new URLSearchParams({ auto: '1', loadonly: '1', model: `/models/${hostile[2][0]}` })}`);
    const rc = await finished(cp, 300000);
    check(rc.error && rc.error.includes('tokenizer.ggml.tokens') && rc.error.includes('only 1000 available'), `a file cut inside its header: the error says where (${rc.error})`);
    await cp.close();
  } finally {
    for (const [name] of hostile) fs.rmSync(path.join(modelDir(), name), { force: true });
  }
  // 8. The edit report at two widths (native run on the CPU backend: only the page is tested).
  const rdir = path.join(tmp, 'edit-report');
  const longLine = 'Check if in given list of numbers, are any two numbers closer to each other than given threshold, '
    + 'a docstring line long enough that it only fits half of an 800 pixel page by wrapping.';
  const cleanP = writeTmp('clean.txt', `def has_close_elements(numbers, threshold):\n    """ ${longLine}\n    """\n`);
  const pertP = writeTmp('pert.txt', `def has_close_elements(numbers, threshold):\n    """ ${longLine.replace('Check if', 'Check ig').replace('threshold,', 'thrshold,')}\n    """\n`);
  execFileSync(bin, ['edit', '--model', path.join(modelDir(), traceModel), '--clean-file', cleanP, '--pert-file', pertP,
    '--out', path.join(rdir, 'patch.safetensors'), '--report', rdir], { stdio: 'ignore', env: { ...process.env, CREME_BACKEND: 'cpu' } });
  for (const width of [1280, 800]) {
    const rp = await newPage();
    await rp.setViewportSize({ width, height: 900 });
    await rp.goto(`file://${path.join(rdir, 'report.html')}`);
    await rp.screenshot({ path: path.join(artifacts, `edit-report-${width}.png`), fullPage: true });
    const r = await rp.evaluate(() => ({
      blocks: [...document.querySelectorAll('section pre')].map((p) => [p.scrollWidth, p.clientWidth]),
      marks: [...document.querySelectorAll('pre.prompt')].map((p) => [...p.querySelectorAll('mark')].map((m) => m.textContent).join('|')),
      page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    }));
    check(r.blocks.length === 6 && r.blocks.every(([s, c]) => s <= c), `edit report at ${width} px: all ${r.blocks.length} prompt and completion blocks fit their width (${JSON.stringify(r.blocks)})`);
    check(r.marks.length === 2 && r.marks[0] === 'f|e' && r.marks[1] === 'g', `edit report at ${width} px: the differing characters are marked (clean: ${r.marks[0]}, perturbed: ${r.marks[1]})`);
    check(r.page <= 0, `edit report at ${width} px: the page does not scroll sideways (${r.page} px)`);
    await rp.close();
  }
} finally {
  await browser.close();
  server.kill();
  fs.rmSync(userDir, { recursive: true, force: true });
  fs.rmSync(tmp, { recursive: true, force: true });
}
finish('browser');
