// The page's Python: Pyodide (from its npm package, served with the page) in a module Web Worker,
// running one program at a time through judge_runner.py. The page owns the time limit: it
// terminates this worker when a program runs too long, and starts a fresh one for the next.
// Messages in: {id, source, check}. Out: {ready} or {loadError} once, then {id, outcome, kind,
// tail} per program ({id, outcome: 'FAIL', kind, tail, broken: true} when the runtime itself
// failed: the page then replaces the worker).
const PYODIDE = new URL('./node_modules/pyodide/', import.meta.url).href;
// What a program could reach the network with, through Python's JS bridge. Pyodide loads its own
// files first; these are gone before any program runs (judge_runner.py also blocks `js`).
const NETWORK = ['fetch', 'XMLHttpRequest', 'WebSocket', 'EventSource', 'WebTransport', 'importScripts', 'Worker', 'SharedWorker'];

let runner = null;

async function boot() {
  const { loadPyodide } = await import(`${PYODIDE}pyodide.mjs`);
  const py = await loadPyodide({ indexURL: PYODIDE, stdout: () => {}, stderr: () => {} });
  py.runPython(await (await fetch(new URL('./judge_runner.py', import.meta.url))).text());
  runner = py.globals.get('_creme_judge');
  for (const name of NETWORK) {
    try { delete self[name]; } catch { /* not configurable */ }
    if (name in self) Object.defineProperty(self, name, { value: undefined, configurable: false, writable: false });
  }
}

const ready = boot().then(() => postMessage({ ready: true }), (e) => postMessage({ loadError: String(e && e.message || e) }));

self.onmessage = async ({ data: { id, source, check } }) => {
  await ready;
  if (!runner) return;
  try {
    const r = runner(source, check);
    const [outcome, kind, tail] = r.toJs();
    r.destroy();
    postMessage({ id, outcome, kind, tail });
  } catch (e) {
    // The runtime itself failed (os._exit, a fatal error, memory exhausted): never a PASS.
    const message = String(e && e.message || e);
    const kind = /memory/i.test(message) ? 'memory' : (e && e.name === 'ExitStatus') || /exit/i.test(message) ? 'exit' : 'exception';
    postMessage({ id, outcome: 'FAIL', kind, tail: message.split('\n').slice(-6).join('\n'), broken: true });
  }
};
