// Streaming a GGUF model into a creme-web Session: the header from the file's first bytes, then
// each tensor by an HTTP Range request, uploaded as it arrives (the page never holds the file).
export async function fileLength(url) {
  const r = await fetch(url, { method: 'HEAD' });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  const n = Number(r.headers.get('content-length'));
  if (!n) throw new Error(`${url}: the server did not say how long the file is`);
  return n;
}

async function range(url, start, end) { // [start, end)
  const r = await fetch(url, { headers: { Range: `bytes=${start}-${end - 1}` } });
  if (r.status !== 206 && r.status !== 200) throw new Error(`${url}: HTTP ${r.status} for bytes ${start}-${end - 1}`);
  const buf = new Uint8Array(await r.arrayBuffer());
  return r.status === 200 ? buf.subarray(start, end) : buf;
}

export async function loadModel(session, SessionClass, url, onProgress = () => {}) {
  const total = await fileLength(url);
  let want = 1 << 20, prefix;
  for (;;) {
    prefix = await range(url, 0, Math.min(want, total));
    const need = SessionClass.headerBytesNeeded(prefix);
    if (need === 0) break;
    if (want >= total) throw new Error('the GGUF header does not fit in the file');
    want = Math.min(Math.max(need, want * 2), total);
  }
  const plan = JSON.parse(session.beginModel(prefix, total));
  let done = 0;
  const bytes = plan.tensors.reduce((s, t) => s + (t.end - t.start), 0);
  for (const t of plan.tensors) {
    const data = await range(url, t.start, t.end);
    session.addTensor(t.name, data);
    done += t.end - t.start;
    onProgress(done / bytes, t.name);
  }
  return JSON.parse(session.finishModel(4096));
}

// The page skeleton both model pages share: open WebGPU through creme-web, wire the Load (#load)
// and action (#go) buttons, run both at once with ?auto=1, and report errors in #status.
// Results go to `state` (window.__creme), which the browser tests read.
export async function runPage(init, SessionClass, state, load, act) {
  const status = document.getElementById('status');
  const fail = (e) => { state.error = String(e && e.message || e); state.done = true; status.innerHTML = `<span class="bad">${state.error}</span>`; };
  try {
    await init();
    if (!navigator.gpu) throw new Error('This browser has no WebGPU (navigator.gpu is missing).');
    const session = await SessionClass.create();
    document.getElementById('load').onclick = () => load(session).catch(fail);
    document.getElementById('go').onclick = () => act(session).catch(fail);
    if (new URLSearchParams(location.search).get('auto')) { await load(session); await act(session); }
  } catch (e) { fail(e); }
  state.done = true;
}
