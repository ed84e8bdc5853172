//! Running untrusted generated code: one python3 process per program, in a fresh temp dir, with an
//! empty environment, its own session (process group) killed on timeout, CPU/memory/file-size/
//! process rlimits, and a new network namespace where the kernel permits one (else the result
//! records that the network was not isolated).
//!
//! Run as root (CI), the program also drops to its own unprivileged uid (one per concurrent run,
//! from `SANDBOX_UID_BASE`): there RLIMIT_NPROC binds (root ignores it), files outside the temp dir
//! are not writable, other processes' /proc entries (the parent's environment) are not readable,
//! and every process the program left behind, even one that escaped the session, is killed by
//! signalling all processes of that uid.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Clone, Debug)]
pub struct Limits {
    pub wall: Duration,
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { wall: Duration::from_secs(10), cpu_seconds: 10, memory_bytes: 2 << 30, file_bytes: 16 << 20, processes: 64 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    Pass,
    Fail,
    Timeout,
    /// The sandbox itself could not run the program.
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub verdict: Verdict,
    /// What went wrong, in a word: "", "timeout", "memory", "exception", "signal", "sandbox".
    pub error_kind: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub seconds: f64,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub network_isolated: bool,
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

/// Run `program` under python3 with the limits.
pub fn run_python(program: &str, limits: &Limits) -> RunResult {
    let t0 = Instant::now();
    let err = |msg: String| RunResult { verdict: Verdict::Error, error_kind: "sandbox".into(), exit_code: None, signal: None, seconds: 0.0, stdout_tail: String::new(), stderr_tail: msg, network_isolated: false };
    let dir = match tempdir() {
        Ok(d) => d,
        Err(e) => return err(format!("temp dir: {e}")),
    };
    if let Err(e) = std::fs::write(dir.join("program.py"), program) {
        return err(format!("writing program: {e}"));
    }
    let held = sandbox_uid();
    let uid = held.as_ref().map(|h| h.0);
    if let Some(uid) = uid {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        if unsafe { libc::chown(c.as_ptr(), uid, uid) } != 0 {
            return err(format!("chown of the sandbox dir to uid {uid}: {}", std::io::Error::last_os_error()));
        }
    }
    // Whether a new network namespace works here (root, or unprivileged user namespaces).
    let netns = network_namespace_available();
    let lim = limits.clone();
    let mut cmd = Command::new(python3());
    cmd.arg("-I").arg("program.py").current_dir(&dir).env_clear().env("PATH", "/usr/bin:/bin").env("HOME", &dir).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    unsafe {
        cmd.pre_exec(move || {
            // Own session: the whole process tree can be killed at once.
            libc::setsid();
            if netns {
                libc::unshare(libc::CLONE_NEWNET);
            }
            let set = |res, v: u64| {
                let r = libc::rlimit { rlim_cur: v as libc::rlim_t, rlim_max: v as libc::rlim_t };
                libc::setrlimit(res, &r);
            };
            set(libc::RLIMIT_CPU, lim.cpu_seconds);
            set(libc::RLIMIT_AS, lim.memory_bytes);
            set(libc::RLIMIT_FSIZE, lim.file_bytes);
            set(libc::RLIMIT_NPROC, lim.processes);
            set(libc::RLIMIT_CORE, 0);
            if let Some(uid) = uid {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return err(format!("spawning python3: {e}")),
    };
    let pid = child.id() as i32;
    let mut out = child.stdout.take().unwrap();
    let mut errp = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.by_ref().take(1 << 20).read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = errp.by_ref().take(1 << 20).read_to_end(&mut b);
        b
    });
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if t0.elapsed() > limits.wall => {
                timed_out = true;
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    // Kill anything the program left running in its session, and under its own uid anything at all.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    if let Some(uid) = uid {
        kill_all_of_uid(uid);
    }
    drop(held);
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    use std::os::unix::process::ExitStatusExt;
    let (code, signal) = status.map(|s| (s.code(), s.signal())).unwrap_or((None, None));
    let verdict = if timed_out || signal == Some(libc::SIGXCPU) {
        Verdict::Timeout
    } else if code == Some(0) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    let stderr_tail = tail(&stderr, 2000);
    let error_kind = match verdict {
        Verdict::Pass => "",
        Verdict::Timeout => "timeout",
        _ if stderr_tail.contains("MemoryError") => "memory",
        _ if signal.is_some() => "signal",
        _ if stderr_tail.contains("AssertionError") => "assertion",
        _ => "exception",
    }
    .to_string();
    RunResult { verdict, error_kind, exit_code: code, signal, seconds: t0.elapsed().as_secs_f64(), stdout_tail: tail(&stdout, 2000), stderr_tail, network_isolated: netns }
}

fn python3() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() && std::env::var_os("CREME_PYTHON").is_none() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let d = std::env::temp_dir().join(format!("creme-sbx-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir(&d)?;
    Ok(d)
}

/// First uid of the range the sandbox runs programs under when started as root.
pub const SANDBOX_UID_BASE: u32 = 61_000;
const SANDBOX_UIDS: u32 = 1_000;

/// A uid of its own for this run when we are root (None otherwise: the caller's uid is kept),
/// held through an exclusive lock file so that concurrent runs, in this process or in another
/// creme process, never share one (a run ends by killing everything its uid owns).
fn sandbox_uid() -> Option<(u32, std::fs::File)> {
    use std::os::unix::io::AsRawFd;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    if std::env::var_os("CREME_SANDBOX_KEEP_UID").is_some() || unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let dir = std::env::temp_dir().join("creme-sandbox-uids");
    let _ = std::fs::create_dir_all(&dir);
    let start = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(std::process::id().wrapping_mul(37));
    for k in 0..SANDBOX_UIDS {
        let uid = SANDBOX_UID_BASE + (start.wrapping_add(k)) % SANDBOX_UIDS;
        let Ok(f) = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(uid.to_string())) else { continue };
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Some((uid, f));
        }
    }
    None
}

/// SIGKILL every process of `uid` (from a helper that becomes that uid: kill(-1) reaches exactly
/// the processes it may signal, i.e. that uid's).
fn kill_all_of_uid(uid: u32) {
    let mut cmd = Command::new("/bin/true");
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::kill(-1, libc::SIGKILL);
            Ok(())
        });
    }
    let _ = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Probe once whether unshare(CLONE_NEWNET) succeeds in a child.
fn network_namespace_available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let mut cmd = Command::new("/bin/true");
        unsafe {
            cmd.pre_exec(|| if libc::unshare(libc::CLONE_NEWNET) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) });
        }
        cmd.status().map(|s| s.success()).unwrap_or(false)
    })
}

/// Run many programs on `workers` threads; results in input order.
pub fn run_many(programs: &[String], limits: &Limits, workers: usize) -> Vec<RunResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; programs.len()]);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= programs.len() {
                    break;
                }
                let r = run_python(&programs[i], limits);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results.into_inner().unwrap().into_iter().map(|r| r.unwrap()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Limits {
        Limits { wall: Duration::from_secs(3), cpu_seconds: 3, ..Limits::default() }
    }

    #[test]
    fn pass_fail_and_exception_are_told_apart() {
        assert_eq!(run_python("assert 1 + 1 == 2\n", &quick()).verdict, Verdict::Pass);
        let r = run_python("def f():\n    return 1\nassert f() == 2, 'wrong'\n", &quick());
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.stderr_tail.contains("AssertionError"), "{}", r.stderr_tail);
    }

    #[test]
    fn an_infinite_loop_times_out_and_its_children_die() {
        let r = run_python("import subprocess, time\nsubprocess.Popen(['sleep', '30'])\nwhile True: pass\n", &quick());
        assert_eq!(r.verdict, Verdict::Timeout);
        assert!(r.seconds < 10.0);
    }

    #[test]
    fn the_parent_environment_is_not_visible() {
        std::env::set_var("CREME_SECRET_FOR_TEST", "leak");
        let r = run_python("import os\nassert 'CREME_SECRET_FOR_TEST' not in os.environ, dict(os.environ)\n", &quick());
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
    }

    #[test]
    fn huge_allocations_and_files_are_stopped() {
        let r = run_python("x = bytearray(8 * 1024 ** 3)\n", &quick());
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.stderr_tail.contains("MemoryError"), "{}", r.stderr_tail);
        let r = run_python("open('big', 'wb').write(b'0' * (64 << 20))\n", &quick());
        assert_ne!(r.verdict, Verdict::Pass);
    }

    #[test]
    fn many_programs_run_in_parallel_in_order() {
        let programs: Vec<String> = (0..6).map(|i| format!("assert {i} % 2 == 0\n")).collect();
        let r = run_many(&programs, &quick(), 3);
        let v: Vec<bool> = r.iter().map(|r| r.verdict == Verdict::Pass).collect();
        assert_eq!(v, vec![true, false, true, false, true, false]);
    }

    fn is_root() -> bool {
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_fork_bomb_is_contained() {
        let bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
        let r = run_python(bomb, &quick());
        assert_ne!(r.verdict, Verdict::Pass);
        // The machine is still usable: a normal program runs right after.
        assert_eq!(run_python("print(1)\n", &quick()).verdict, Verdict::Pass);
    }

    #[test]
    fn a_process_that_leaves_the_session_is_killed_too() {
        if !is_root() {
            eprintln!("not root: a process that calls setsid() can outlive the run (see the module doc)");
            return;
        }
        let marker = std::env::temp_dir().join(format!("creme-escape-{}", std::process::id()));
        let prog = format!(
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(2)\n    open({:?}, 'w').write('escaped')\n    os._exit(0)\n",
            marker.display().to_string()
        );
        let r = run_python(&prog, &quick());
        assert_eq!(r.verdict, Verdict::Pass, "{}", r.stderr_tail);
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a child that escaped the session survived the run");
    }

    #[test]
    fn files_outside_the_temp_dir_are_not_writable_and_the_parent_is_not_readable() {
        if !is_root() {
            eprintln!("not root: the program runs as the caller, who may write the caller's files");
            return;
        }
        let target = std::env::current_dir().unwrap().join(format!("creme-sandbox-should-not-exist-{}", std::process::id()));
        let _ = std::fs::remove_file(&target);
        let r = run_python(&format!("open({:?}, 'w').write('x')\n", target.display().to_string()), &quick());
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.stderr_tail.contains("PermissionError"), "{}", r.stderr_tail);
        let escaped = target.exists();
        let _ = std::fs::remove_file(&target);
        assert!(!escaped, "wrote {}", target.display());
        let r = run_python("import os\nprint(open(f'/proc/{os.getppid()}/environ').read())\n", &quick());
        assert_ne!(r.verdict, Verdict::Pass, "read the parent's environment: {}", r.stdout_tail);
        // Its own temp dir is writable.
        assert_eq!(run_python("open('scratch.txt', 'w').write('ok')\n", &quick()).verdict, Verdict::Pass);
    }

    #[test]
    fn the_network_is_unreachable_where_a_namespace_is_available() {
        let prog = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('1.1.1.1', 80))\n";
        let r = run_python(prog, &quick());
        if r.network_isolated {
            assert_eq!(r.verdict, Verdict::Fail, "connected from inside the sandbox");
            assert!(r.stderr_tail.contains("OSError") || r.stderr_tail.contains("unreachable"), "{}", r.stderr_tail);
        } else {
            eprintln!("no network namespace here: the program is not isolated from the network");
        }
    }
}
