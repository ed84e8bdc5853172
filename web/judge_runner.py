# creme's test runner for the page: Pyodide in a Web Worker (judge-worker.js). The verdict rule is
# the native runner's (crates/creme-cli/src/sandbox/runner.py): the program (prompt + completion +
# test) runs in a fresh namespace whose __name__ is not '__main__', then its check; PASS only when
# the check returned. An exit of any kind (sys.exit, exit(), raise SystemExit) is a FAIL, and the
# kind of failure comes from the exception caught. The time limit is the worker's: the page
# terminates it. Programs share one interpreter, so what a program changes in the interpreter
# (modules it imported, builtins, recursion limit, streams, cwd, environment) is put back after it.
import builtins, io, os, sys, traceback

# Where Python reaches JavaScript (and through it the network): not importable by programs.
_CREME_BLOCKED = ('js', 'pyodide', 'pyodide_js', '_pyodide', 'micropip', 'pyodide.http', 'pyodide.ffi', 'pyodide.code')
_CREME_TAIL_LINES = 6


def _creme_snapshot():
    return {
        'modules': dict(sys.modules),
        'builtins': dict(builtins.__dict__),
        'recursion': sys.getrecursionlimit(),
        'streams': (sys.stdin, sys.stdout, sys.stderr),
        'cwd': os.getcwd(),
        'environ': dict(os.environ),
        'path': list(sys.path),
    }


def _creme_restore(s):
    for name in list(sys.modules):
        if name not in s['modules']:
            del sys.modules[name]
    sys.modules.update(s['modules'])
    builtins.__dict__.clear()
    builtins.__dict__.update(s['builtins'])
    sys.setrecursionlimit(s['recursion'])
    sys.stdin, sys.stdout, sys.stderr = s['streams']
    os.chdir(s['cwd'])
    os.environ.clear()
    os.environ.update(s['environ'])
    sys.path[:] = s['path']


def _creme_block_js():
    for name in _CREME_BLOCKED:
        sys.modules[name] = None


def _creme_kind(e):
    for cls, kind in ((SystemExit, 'exit'), (AssertionError, 'assertion'), (MemoryError, 'memory'),
                      (RecursionError, 'recursion'), (SyntaxError, 'syntax')):
        if isinstance(e, cls):
            return kind
    return 'exception'


def _creme_tail(e):
    # From the program's own frames on (the first frame is this runner's).
    tb = e.__traceback__.tb_next if e.__traceback__ else None
    lines = ''.join(traceback.format_exception(type(e), e, tb)).rstrip().splitlines()
    return '\n'.join(lines[-_CREME_TAIL_LINES:])


def _creme_judge(source, check):
    """(outcome, kind, tail): ('PASS', 'none', '') only when the check returned."""
    saved = _creme_snapshot()
    _creme_block_js()
    # The program's own output goes nowhere (the native runner's goes to a pipe nobody reads).
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(''), io.StringIO(), io.StringIO()
    scope = {'__name__': 'program', '__builtins__': builtins}
    try:
        exec(compile(source, 'program.py', 'exec'), scope)
        exec(compile(check, 'check.py', 'exec'), scope)
        result = ('PASS', 'none', '')
    except BaseException as e:  # noqa: B036 -- every way out but returning is a failure
        result = ('FAIL', _creme_kind(e), _creme_tail(e))
    finally:
        del scope
        _creme_restore(saved)
    return result
