// Verdicts in the page: a generated completion's tests run in Python (Pyodide) in a Web Worker
// (judge-worker.js), one program at a time. The programs come from core through creme-web (its
// PyodideJudge calls `run` here for each program core's evaluation builds: the native harness's
// prompt + completion + test, then check(entry_point)), and the rule is the native one: PASS only
// when the check returned. The time limit is enforced here by terminating the worker, so a
// program that never ends costs the page nothing but a fresh worker (Pyodide loads again, a few
// seconds). Memory is the worker's own WebAssembly heap (at most 4 GiB), freed with it.

const WORKER = new URL('./judge-worker.js', import.meta.url);

export class Judge {
  /// timeoutSeconds per program (the native default is 10), loadSeconds for Python to start.
  constructor({ timeoutSeconds = 10, loadSeconds = 180 } = {}) {
    this.timeoutSeconds = timeoutSeconds;
    this.loadSeconds = loadSeconds;
    this.worker = null; // a promise of a ready worker
    this.queue = Promise.resolve();
    this.nextId = 1;
    this.workersStarted = 0;
  }

  /// Resolves once Python runs in a worker; rejects with the reason where it cannot (an old
  /// browser without module workers or WebAssembly, the files not served).
  ready() {
    if (!this.worker) this.worker = this.#start();
    return this.worker.then(() => true);
  }

  /// Judge one program ({source, check}): {outcome: 'PASS'|'FAIL', kind, tail, seconds}. Runs
  /// after the programs queued before it.
  run(program) {
    const job = this.queue.then(() => this.#run(program));
    this.queue = job.catch(() => {});
    return job;
  }

  #start() {
    this.workersStarted += 1;
    return new Promise((resolve, reject) => {
      if (typeof Worker === 'undefined' || typeof WebAssembly === 'undefined') {
        reject(new Error('this browser has no Web Workers or WebAssembly'));
        return;
      }
      let w;
      try { w = new Worker(WORKER, { type: 'module' }); } catch (e) { reject(e); return; }
      const timer = setTimeout(() => { w.terminate(); reject(new Error(`Python did not start within ${this.loadSeconds} s`)); }, this.loadSeconds * 1000);
      w.onmessage = ({ data }) => {
        clearTimeout(timer);
        if (data.ready) resolve(w);
        else { w.terminate(); reject(new Error(`Python could not start: ${data.loadError}`)); }
      };
      w.onerror = (e) => { clearTimeout(timer); w.terminate(); reject(new Error(`Python could not start: ${e.message || 'the worker failed to load'}`)); };
    });
  }

  #discard() {
    if (this.worker) this.worker.then((w) => w.terminate(), () => {});
    this.worker = null;
  }

  async #run({ source, check }) {
    await this.ready();
    const w = await this.worker;
    const id = this.nextId++;
    const t0 = performance.now();
    const seconds = () => (performance.now() - t0) / 1000;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#discard();
        resolve({ outcome: 'FAIL', kind: 'timeout', tail: `no result within ${this.timeoutSeconds} s: the run was stopped`, seconds: seconds() });
      }, this.timeoutSeconds * 1000);
      w.onmessage = ({ data }) => {
        if (data.id !== id) return;
        clearTimeout(timer);
        if (data.broken) this.#discard();
        resolve({ outcome: data.outcome === 'PASS' ? 'PASS' : 'FAIL', kind: data.kind, tail: data.tail, seconds: seconds() });
      };
      w.onerror = (e) => {
        clearTimeout(timer);
        this.#discard();
        resolve({ outcome: 'FAIL', kind: 'exception', tail: String(e.message || 'the worker failed'), seconds: seconds() });
      };
      w.postMessage({ id, source, check });
    });
  }
}
