# creme's test runner for the page: Pyodide in a Web Worker (judge-worker.js). The verdict rule is
# the native runner's (crates/creme-cli/src/sandbox/runner.py): the program (prompt + completion +
# test) runs in a fresh namespace whose __name__ is not '__main__', then its check; PASS only when
# the check returned. An exit of any kind (sys.exit, exit(), raise SystemExit) is a FAIL, and the
# kind of failure comes from the exception caught. The time limit is the worker's: the page
# terminates it. Programs share one interpreter, so what a program changes in the interpreter
# (modules it imported, builtins, recursion limit, streams, cwd, environment) is put back after it.
#
# As natively, what the verdict depends on is taken before any program runs and kept out of its
# reach by name: exec, compile, the builtins, the functions that put the interpreter back, and
# these functions themselves (the worker holds `_creme_judge` from its private globals, so a
# program that rebinds names in __main__ changes nothing). Both texts are compiled before the
# program runs, and the check that runs is the test's own `check` (its code object), called with
# private globals. Frame and heap inspection (sys._getframe, tracebacks, gc) stay out of reach.
import builtins, io, os, sys, traceback

# Where Python reaches JavaScript (and through it the network): not importable by programs.
_CREME_BLOCKED = ('js', 'pyodide', 'pyodide_js', '_pyodide', 'micropip', 'pyodide.http', 'pyodide.ffi', 'pyodide.code')
_CREME_TAIL_LINES = 6


def _creme_snapshot():
    return {
        'modules': dict(sys.modules),
        'builtins': dict(builtins.__dict__),
        'recursion': _getrecursionlimit(),
        'streams': (sys.stdin, sys.stdout, sys.stderr),
        'cwd': _getcwd(),
        'environ': dict(os.environ),
        'path': list(sys.path),
    }


def _creme_restore(s):
    modules = _sys_dict['modules']
    for name in list(modules):
        if name not in s['modules']:
            del modules[name]
    modules.update(s['modules'])
    _builtins_dict.clear()
    _builtins_dict.update(s['builtins'])
    _setrecursionlimit(s['recursion'])
    sys.stdin, sys.stdout, sys.stderr = s['streams']
    _chdir(s['cwd'])
    _environ.clear()
    _environ.update(s['environ'])
    _sys_dict['path'] = s['path']
    _settrace(None)
    _setprofile(None)


def _creme_block_js():
    for name in _CREME_BLOCKED:
        _sys_dict['modules'][name] = None


def _creme_kind(e):
    for cls, kind in ((SystemExit, 'exit'), (AssertionError, 'assertion'), (MemoryError, 'memory'),
                      (RecursionError, 'recursion'), (SyntaxError, 'syntax')):
        if isinstance(e, cls):
            return kind
    return 'exception'


def _creme_tail(e):
    # From the program's own frames on (the first frame is this runner's).
    tb = e.__traceback__.tb_next if e.__traceback__ else None
    try:
        lines = ''.join(_format_exception(type(e), e, tb)).rstrip().splitlines()
    except BaseException:  # noqa: B036 -- a tail is not worth a verdict
        return repr(e)
    return '\n'.join(lines[-_CREME_TAIL_LINES:])


def _creme_test_check(program_code):
    """The code object of the last top-level `def check` in the compiled text: the test's, which
    comes after the prompt and the completion (code objects are constants in source order)."""
    found = [c for c in program_code.co_consts if isinstance(c, _code_type) and c.co_name == 'check']
    if not found:
        raise LookupError('the test defines no check function')
    return found[-1]


def _creme_judge(source, check):
    """(outcome, kind, tail): ('PASS', 'none', '') only when the check returned."""
    saved = _creme_snapshot()
    _creme_block_js()
    # The program's own output goes nowhere (the native runner's goes to a pipe nobody reads).
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(''), io.StringIO(), io.StringIO()
    scope = {'__name__': 'program', '__builtins__': builtins}
    try:
        program_code = _compile(source, 'program.py', 'exec')
        check_code = _compile(check, 'check.py', 'exec')
        test_check = _creme_test_check(program_code)
        _exec(program_code, scope)
        # A tracer or profiler the program left could jump over the check's asserts.
        _settrace(None)
        _setprofile(None)
        env = dict(scope)
        env['__builtins__'] = dict(saved['builtins'])
        # The test's defaults as its def evaluated them (a solution named `check` is bound as
        # one), only from the test's own function object: fail closed otherwise.
        live = scope.get('check')
        defaults = live.__defaults__ if getattr(live, '__code__', None) is test_check else None
        env['check'] = _function(test_check, env, 'check', defaults)
        _function(check_code, env)()
        result = ('PASS', 'none', '')
    except BaseException as e:  # noqa: B036 -- every way out but returning is a failure
        result = ('FAIL', _creme_kind(e), _creme_tail(e))
    finally:
        del scope
        _creme_restore(saved)
    return result


def _creme_private():
    """The judge with globals of its own, taken now, before any program: the functions above, the
    references they use, and a copy of the builtins (a program may replace `builtins.dict`)."""
    env = {
        '__builtins__': dict(builtins.__dict__), 'builtins': builtins, 'io': io, 'os': os, 'sys': sys,
        '_CREME_BLOCKED': _CREME_BLOCKED, '_CREME_TAIL_LINES': _CREME_TAIL_LINES,
        '_exec': exec, '_compile': compile, '_settrace': sys.settrace, '_setprofile': sys.setprofile,
        '_getrecursionlimit': sys.getrecursionlimit, '_setrecursionlimit': sys.setrecursionlimit,
        '_getcwd': os.getcwd, '_chdir': os.chdir, '_environ': os.environ,
        '_sys_dict': sys.__dict__, '_builtins_dict': builtins.__dict__,
        '_format_exception': traceback.format_exception,
        '_function': type(_creme_private), '_code_type': type(_creme_private.__code__),
    }
    for f in (_creme_snapshot, _creme_restore, _creme_block_js, _creme_kind, _creme_tail,
              _creme_test_check, _creme_judge):
        env[f.__name__] = type(f)(f.__code__, env, f.__name__)
    return env['_creme_judge']


_creme_judge = _creme_private()
