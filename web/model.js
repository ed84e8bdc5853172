// Streaming a GGUF model into a creme-web Session, in file order, chunk by chunk; each tensor is
// uploaded as soon as its bytes are in, so the page never holds the whole file.
//  - From a URL: HTTP Range requests of CHUNK bytes, each chunk kept in the Cache API with its
//    SHA-256. A download interrupted after k chunks resumes at chunk k; a cached chunk whose bytes
//    no longer match its digest is fetched again. Where the server publishes <url>.sha256
//    (`creme serve` does), the whole file's digest is checked too; on a mismatch the cached copy
//    is removed and loading fails with a clear message.
//  - From a local File (drag and drop): by slices, no cache.

export const CHUNK = 8 << 20;
const CACHE = 'creme-models-v1';

/// Text made safe for innerHTML, in element content and in quoted attributes alike. Errors and
/// model names can carry tensor names and metadata from an untrusted GGUF: every non-constant
/// string a page puts into markup goes through here (or through textContent).
export const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

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
  const got = r.status === 200 ? buf.subarray(start, end) : buf;
  if (got.length !== end - start) throw new Error(`${url}: got ${got.length} bytes for ${end - start} requested`);
  return got;
}

const hex = (buf) => [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, '0')).join('');
const sha256 = async (bytes) => hex(await crypto.subtle.digest('SHA-256', bytes));
const chunkKey = (url, i, total) => new URL(`${url}${url.includes('?') ? '&' : '?'}creme-chunk=${i}&of=${total}`, location.href).href;

/// Remove every cached chunk of a model URL.
export async function forget(url) {
  if (!('caches' in self)) return;
  const cache = await caches.open(CACHE);
  const abs = new URL(url, location.href).href;
  for (const req of await cache.keys()) if (req.url.startsWith(abs + (abs.includes('?') ? '&' : '?') + 'creme-chunk=')) await cache.delete(req);
}

/// For tests of the integrity check: overwrite cached chunk `i` with altered bytes (same digest header).
export async function corruptCachedChunk(url, i) {
  const cache = await caches.open(CACHE);
  const total = await fileLength(url);
  const key = chunkKey(url, i, total);
  const hit = await cache.match(key);
  if (!hit) throw new Error(`chunk ${i} of ${url} is not cached`);
  const b = new Uint8Array(await hit.arrayBuffer());
  b[b.length >> 1] ^= 0xff;
  await cache.put(key, new Response(b, { headers: hit.headers }));
}

async function* urlChunks(url, total, opts, stats) {
  const cache = opts.cache !== false && 'caches' in self ? await caches.open(CACHE) : null;
  const n = Math.ceil(total / CHUNK);
  for (let i = 0; i < n; i++) {
    const start = i * CHUNK, end = Math.min(total, start + CHUNK);
    const key = chunkKey(url, i, total);
    let bytes = null;
    if (cache) {
      const hit = await cache.match(key);
      if (hit) {
        const b = new Uint8Array(await hit.arrayBuffer());
        if (b.length === end - start && (await sha256(b)) === hit.headers.get('x-creme-sha256')) { bytes = b; stats.fromCache++; }
        else { stats.refetched++; await cache.delete(key); }
      }
    }
    if (!bytes) {
      if (opts.stopAfter !== undefined && stats.fetched >= opts.stopAfter) throw new Error(`download interrupted after ${stats.fetched} chunks`);
      bytes = await range(url, start, end);
      stats.fetched++;
      if (cache) await cache.put(key, new Response(bytes, { headers: { 'x-creme-sha256': await sha256(bytes), 'content-type': 'application/octet-stream' } }));
    }
    yield bytes;
  }
}

async function* fileChunks(file) {
  for (let start = 0; start < file.size; start += CHUNK) yield new Uint8Array(await file.slice(start, Math.min(file.size, start + CHUNK)).arrayBuffer());
}

/// The bytes [start, end) of the file from a list of consecutive chunks beginning at `base`.
function take(chunks, base, start, end) {
  const out = new Uint8Array(end - start);
  let pos = base;
  for (const c of chunks) {
    const a = Math.max(start, pos), b = Math.min(end, pos + c.length);
    if (a < b) out.set(c.subarray(a - pos, b - pos), a - start);
    pos += c.length;
  }
  return out;
}

/// Load `source` ({url} or {file}) into `session`. `onProgress(fraction, text)`. Options: cache
/// (default true), sha256 (expected digest; default: <url>.sha256 if the server has it),
/// stopAfter (tests: fail after fetching this many chunks). Returns {config, stats}.
export async function loadModel(session, creme, source, onProgress = () => {}, opts = {}) {
  const stats = { fetched: 0, fromCache: 0, refetched: 0, bytes: 0, chunks: 0 };
  const total = source.file ? source.file.size : await fileLength(source.url);
  stats.chunks = Math.ceil(total / CHUNK);
  const chunks = source.file ? fileChunks(source.file) : urlChunks(source.url, total, opts, stats);
  const hasher = new creme.Sha256();
  let held = [], base = 0, heldBytes = 0, plan = null, next = 0;
  for await (const c of chunks) {
    hasher.update(c);
    held.push(c);
    heldBytes += c.length;
    stats.bytes += c.length;
    if (!plan) {
      const prefix = take(held, base, 0, heldBytes);
      if (creme.Session.headerBytesNeeded(prefix) !== 0) continue;
      plan = JSON.parse(session.beginModel(prefix, total));
    }
    while (next < plan.tensors.length && plan.tensors[next].end <= base + heldBytes) {
      const t = plan.tensors[next++];
      session.addTensor(t.name, take(held, base, t.start, t.end));
    }
    // Drop chunks that no remaining tensor needs.
    const keepFrom = next < plan.tensors.length ? plan.tensors[next].start : base + heldBytes;
    while (held.length && base + held[0].length <= keepFrom) { base += held[0].length; heldBytes -= held[0].length; held.shift(); }
    onProgress(stats.bytes / total, `${(stats.bytes / 2 ** 20).toFixed(0)} of ${(total / 2 ** 20).toFixed(0)} MiB (${stats.fromCache} chunks from the cache, ${stats.fetched} downloaded)`);
  }
  // The header never parsed: beginModel throws the parser's own error (what is missing, and where).
  if (!plan) { session.beginModel(take(held, base, 0, heldBytes), total); throw new Error('the GGUF header does not fit in the file'); }
  if (next < plan.tensors.length) throw new Error(`the file ended before tensor ${plan.tensors[next].name}`);
  let expected = opts.sha256;
  if (!expected && source.url) {
    const r = await fetch(source.url + '.sha256').catch(() => null);
    if (r && r.ok) expected = (await r.text()).trim().split(/\s+/)[0];
  }
  stats.sha256 = hasher.hex();
  stats.verified = !!expected;
  if (expected && stats.sha256 !== expected) {
    if (source.url) await forget(source.url);
    throw new Error(`integrity check failed: the file's SHA-256 is ${stats.sha256}, expected ${expected}; the cached copy was removed — load again`);
  }
  return { config: JSON.parse(session.finishModel(4096)), stats };
}

// The page skeleton the model pages share: open WebGPU through creme-web, wire the Load (#load)
// and action (#go) buttons, run both at once with ?auto=1, and report errors in #status.
// Results go to `state` (window.__creme), which the browser tests read.
export async function runPage(init, SessionClass, state, load, act) {
  const status = document.getElementById('status');
  const fail = (e) => { state.error = String(e && e.message || e); state.done = true; status.innerHTML = `<span class="bad">${escapeHtml(state.error)}</span>`; };
  try {
    await init();
    if (!navigator.gpu) throw new Error('This browser has no WebGPU (navigator.gpu is missing): use a recent Chrome or Edge, or Firefox/Safari with WebGPU enabled.');
    const session = await SessionClass.create();
    document.getElementById('load').onclick = () => load(session).catch(fail);
    document.getElementById('go').onclick = () => act(session).catch(fail);
    if (new URLSearchParams(location.search).get('auto')) { await load(session); await act(session); }
  } catch (e) { fail(e); }
  state.done = true;
}
