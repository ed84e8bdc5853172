//! Running untrusted generated code. Each program runs under creme's runner (`runner.py`), which
//! executes the program and its check and reports on a private pipe: PASS means the check returned,
//! never merely "exit status 0". The sandbox fails closed: every setup step is checked and a step
//! that fails makes the run an infrastructure error (`Verdict::Error`), retried later, never a run
//! with weaker isolation.
//!
//! Isolation (see `isolate.rs` for the order of the steps):
//! - new mount, network, IPC, UTS and PID namespaces; a fresh root that holds the Python runtime
//!   and nothing else of the host's (`root.rs`: read-only binds, private size-limited tmpfs on
//!   /tmp, /var/tmp, /dev/shm and /run, a fresh /proc); python is PID 1 of its namespace, so when
//!   it ends (or creme dies: PR_SET_PDEATHSIG) the kernel kills everything it started;
//! - a seccomp filter: no user namespaces inside (`isolate.rs`);
//! - as root: an unprivileged uid of its own (`uids.rs`); otherwise a user namespace with no
//!   capabilities left (`CREME_SANDBOX=rlimits` runs without namespaces where user namespaces are
//!   disabled: weaker, and refused as root);
//! - one cgroup per run (`cgroup.rs`) bounds memory and processes of the whole run; without
//!   cgroups at most 8 processes of 512 MiB address space each (processes x RLIMIT_AS <= 4 GiB);
//! - an empty environment, NoNewPrivs, rlimits on CPU time, address space, file size, processes;
//! - output beyond the cap is read and discarded; Ctrl-C or SIGTERM to creme kills running programs.

mod cgroup;
mod isolate;
mod judge;
mod root;
mod uids;

use std::ffi::CString;
use std::io::Read;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use creme_core::dataset::TestProgram;
pub use judge::SandboxJudge;
use serde::Serialize;

const RUNNER: &str = include_str!("runner.py");
/// Bytes of stdout and stderr kept (the rest is read and discarded).
const OUTPUT_CAP: usize = 64 << 10;
/// Without cgroups: processes x RLIMIT_AS stays within this bound.
pub const FALLBACK_MEMORY: u64 = 4 << 30;
const FALLBACK_PROCESSES: u64 = 8;

#[derive(Clone, Debug)]
pub struct Limits {
    pub wall: Duration,
    pub cpu_seconds: u64,
    /// The whole run's memory (cgroup), also each process's address space (RLIMIT_AS).
    pub memory_bytes: u64,
    pub file_bytes: u64,
    pub processes: u64,
    /// Size of the private /tmp (tmpfs, counted in the run's memory).
    pub tmp_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 2 << 30,
            file_bytes: 16 << 20,
            processes: 64,
            tmp_bytes: 64 << 20,
        }
    }
}

/// The sandbox's verdicts are core's: `Error` is a run the sandbox could not make, not a verdict
/// on the program (retried on resume).
pub use creme_core::eval::Verdict;

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub verdict: Verdict,
    /// What went wrong, in a word, from the runner's report (never from stderr text): "" (pass),
    /// "exit", "assertion", "memory", "recursion", "syntax", "exception", "signal", "timeout",
    /// "sandbox".
    pub error_kind: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub seconds: f64,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub network_isolated: bool,
    /// "root" (own uid), "userns" (user namespace), "rlimits" (CREME_SANDBOX=rlimits).
    pub isolation: &'static str,
    /// Whether the run's memory was bounded as a whole (a cgroup) rather than per process.
    pub memory_cgroup: bool,
}

impl RunResult {
    fn infra(msg: String) -> RunResult {
        RunResult {
            verdict: Verdict::Error,
            error_kind: "sandbox".into(),
            exit_code: None,
            signal: None,
            seconds: 0.0,
            stdout_tail: String::new(),
            stderr_tail: msg,
            network_isolated: false,
            isolation: "",
            memory_cgroup: false,
        }
    }
}

fn tail(bytes: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = s.chars().collect();
    chars[chars.len().saturating_sub(n)..].iter().collect()
}

/// Run a plain python script: it passes when it runs to its end.
#[cfg(test)]
pub fn run_python(script: &str, limits: &Limits) -> RunResult {
    run_program(&TestProgram::script(script), limits)
}

/// Run `program` (source, then check) under the runner in the sandbox.
pub fn run_program(program: &TestProgram, limits: &Limits) -> RunResult {
    let t0 = Instant::now();
    let mut r = match Run::prepare(limits).and_then(|run| run.execute(program, limits)) {
        Ok(r) => r,
        Err(e) => RunResult::infra(format!("sandbox: {e}")),
    };
    r.seconds = t0.elapsed().as_secs_f64();
    r
}

type Res<T> = Result<T, String>;

/// How this process isolates programs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Root,
    UserNamespace,
    RlimitsOnly,
}

impl Mode {
    /// The isolation as run results name it.
    fn name(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::UserNamespace => "userns",
            Mode::RlimitsOnly => "rlimits",
        }
    }
}

fn mode() -> Res<Mode> {
    let root = unsafe { libc::geteuid() } == 0;
    match std::env::var("CREME_SANDBOX").as_deref() {
        Ok("rlimits") if root => Err(
            "CREME_SANDBOX=rlimits is refused as root: generated code never runs as root".into(),
        ),
        Ok("rlimits") => Ok(Mode::RlimitsOnly),
        _ if root => Ok(Mode::Root),
        _ => Ok(Mode::UserNamespace),
    }
}

/// Everything a run holds: its uid lease, cgroup and pipes. Dropping it releases them.
struct Run {
    mode: Mode,
    uid: Option<uids::UidLease>,
    cgroup: Option<cgroup::RunCgroup>,
}

impl Run {
    fn prepare(limits: &Limits) -> Res<Run> {
        let mode = mode()?;
        let uid = match mode {
            Mode::Root => Some(uids::lease().map_err(|e| format!("sandbox uid: {e}"))?),
            _ => None,
        };
        let cgroup = match (mode, cgroup::available()) {
            (Mode::RlimitsOnly, _) | (_, None) => None,
            (_, Some(layout)) => Some(
                cgroup::RunCgroup::create(layout, limits.memory_bytes, limits.processes)
                    .map_err(|e| format!("cgroup: {e}"))?,
            ),
        };
        Ok(Run { mode, uid, cgroup })
    }

    /// (processes, address space per process): as asked with a cgroup; without one, at most
    /// `FALLBACK_PROCESSES` processes of `FALLBACK_MEMORY / FALLBACK_PROCESSES` each, so that
    /// processes x RLIMIT_AS stays within FALLBACK_MEMORY.
    fn process_limits(&self, limits: &Limits) -> (u64, u64) {
        match &self.cgroup {
            Some(_) => (limits.processes, limits.memory_bytes),
            None => {
                let n = limits.processes.clamp(1, FALLBACK_PROCESSES);
                (n, limits.memory_bytes.min(FALLBACK_MEMORY / n))
            }
        }
    }

    fn plan(
        &self,
        limits: &Limits,
        runtime: &root::Runtime,
        report_fd: i32,
        input_fd: i32,
    ) -> Res<isolate::Plan> {
        let cstr = |s: String| CString::new(s).map_err(|e| e.to_string());
        let id_maps = match self.mode {
            Mode::UserNamespace => {
                let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
                Some((
                    cstr(format!("{uid} {uid} 1\n"))?,
                    cstr(format!("{gid} {gid} 1\n"))?,
                ))
            }
            _ => None,
        };
        let cgroup_procs = self
            .cgroup
            .iter()
            .flat_map(|c| c.procs_files())
            .map(|p| cstr(p.display().to_string()))
            .collect::<Res<Vec<_>>>()?;
        let (processes, address_space) = self.process_limits(limits);
        let tmp_options = cstr(format!("size={},mode=1777", limits.tmp_bytes))?;
        let small_tmp_options = cstr(format!(
            "size={},mode=1777",
            (limits.tmp_bytes / 4).max(1 << 20)
        ))?;
        // Any existing directory will do as the setup tmpfs's mount point (see isolate.rs).
        let base = if std::path::Path::new("/tmp").is_dir() {
            "/tmp"
        } else {
            "/dev"
        };
        let rlimits = rlimits(limits, processes, address_space);
        Ok(isolate::Plan {
            drop_to: self.uid.as_ref().map(|l| l.uid),
            id_maps,
            cgroup_procs,
            rlimits,
            setup_new: cstr(format!("{base}{}", root::NEW))?,
            setup_old: cstr(format!("{base}{}", root::OLD))?,
            setup_base: cstr(base.into())?,
            new_root: cstr(root::NEW.into())?,
            old_root: cstr(root::OLD.into())?,
            root: root::plan(runtime, &tmp_options, &small_tmp_options)?,
            report_fd,
            input_fd,
        })
    }

    fn execute(self, program: &TestProgram, limits: &Limits) -> Res<RunResult> {
        let (report_r, report_w) = pipe()?;
        let (input_r, input_w) = pipe()?;
        let mut cmd = self.command(limits, report_w.as_raw_fd(), input_r.as_raw_fd())?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting python3 in the sandbox: {e}"))?;
        let pid = child.id() as i32;
        let _active = Active::register(pid, self.cgroup.as_ref());
        drop((report_w, input_r));
        let nonce = nonce()?;
        let payload = format!("{nonce}\0{}\0{}", program.source, program.check).into_bytes();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::from(input_w);
            let _ = std::io::Write::write_all(&mut f, &payload); // a program that exits early closes it
        });
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let out_t = std::thread::spawn(move || drain(out, OUTPUT_CAP));
        let err_t = std::thread::spawn(move || drain(err, OUTPUT_CAP));
        let rep_t = std::thread::spawn(move || drain(std::fs::File::from(report_r), 4096));
        let (status, timed_out) = wait_with_timeout(&mut child, limits.wall);
        // Everything the program started died with its PID 1 (the kernel empties a PID namespace
        // whose init ends); dropping the run kills what is left in its cgroup and frees the uid.
        let memory_hit = self.cgroup.as_ref().is_some_and(|c| c.memory_limit_hit());
        let (memory_cgroup, mode) = (self.cgroup.is_some(), self.mode);
        drop(self);
        let _ = writer.join();
        let (stdout, stderr, report) = (
            out_t.join().unwrap_or_default(),
            err_t.join().unwrap_or_default(),
            rep_t.join().unwrap_or_default(),
        );
        let (code, signal) = status
            .map(|s| (s.code(), s.signal()))
            .unwrap_or((None, None));
        let outcome = parse_report(&report, &nonce);
        let (verdict, kind) = decide(outcome, code, timed_out, signal, memory_hit);
        Ok(RunResult {
            verdict,
            error_kind: kind.into(),
            exit_code: code,
            signal,
            seconds: 0.0,
            stdout_tail: tail(&stdout, 2000),
            stderr_tail: tail(&stderr, 2000),
            network_isolated: mode != Mode::RlimitsOnly,
            isolation: mode.name(),
            memory_cgroup,
        })
    }

    /// The runner's command (python3 -I -c RUNNER, no environment but PATH and HOME), isolated
    /// as the mode says; `rep` (the report pipe's write end) and `inp` (the program's input
    /// pipe's read end) are the descriptors the child keeps.
    fn command(&self, limits: &Limits, rep: i32, inp: i32) -> Res<Command> {
        let runtime = match self.mode {
            Mode::RlimitsOnly => None,
            _ => Some(root::runtime(&python3())?),
        };
        let mut cmd = match &runtime {
            Some(r) => Command::new(&r.executable),
            None => Command::new(python3()),
        };
        cmd.arg("-I")
            .arg("-c")
            .arg(RUNNER)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match &runtime {
            None => {
                let (processes, address_space) = self.process_limits(limits);
                let rlimits = rlimits(limits, processes, address_space);
                cmd.env("HOME", "/nonexistent");
                unsafe { cmd.pre_exec(move || rlimits_only(&rlimits, rep, inp)) };
            }
            Some(r) => {
                cmd.env("HOME", "/tmp");
                let plan = self.plan(limits, r, rep, inp)?;
                unsafe { cmd.pre_exec(move || plan.apply()) };
            }
        }
        Ok(cmd)
    }
}

type Rlimits = Vec<(libc::__rlimit_resource_t, u64)>;

fn rlimits(limits: &Limits, processes: u64, address_space: u64) -> Rlimits {
    vec![
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_AS, address_space),
        (libc::RLIMIT_FSIZE, limits.file_bytes),
        (libc::RLIMIT_NPROC, processes),
        (libc::RLIMIT_CORE, 0),
    ]
}

/// The verdict and its kind, from the runner's report first. A PASS needs the report and a clean
/// exit (status 0, no signal, in time): the runner exits 0 itself right after reporting PASS, and
/// re-raises every failure, so a PASS report with any other ending was not the runner's last word.
fn decide(
    report: Option<(bool, String)>,
    exit_code: Option<i32>,
    timed_out: bool,
    signal: Option<i32>,
    memory_hit: bool,
) -> (Verdict, &'static str) {
    let kind = |k: &str| -> &'static str {
        match k {
            "exit" => "exit",
            "assertion" => "assertion",
            "memory" => "memory",
            "recursion" => "recursion",
            "syntax" => "syntax",
            _ => "exception",
        }
    };
    match report {
        Some((true, _)) if exit_code == Some(0) && signal.is_none() && !timed_out => {
            (Verdict::Pass, "")
        }
        _ if timed_out || signal == Some(libc::SIGXCPU) => (Verdict::Timeout, "timeout"),
        Some((false, k)) => (Verdict::Fail, kind(&k)),
        _ if memory_hit => (Verdict::Fail, "memory"),
        _ if signal.is_some() => (Verdict::Fail, "signal"),
        // No report, or a PASS report followed by an unclean exit: os._exit, an uncaught exception
        // after the check, an exit the runner never saw.
        _ => (Verdict::Fail, "exit"),
    }
}

/// The runner's outcome line tagged with this run's nonce: (passed, kind).
fn parse_report(report: &[u8], nonce: &str) -> Option<(bool, String)> {
    let text = String::from_utf8_lossy(report);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(nonce).map(str::trim))?;
    let (outcome, kind) = line.split_once(' ').unwrap_or((line, ""));
    match outcome {
        "PASS" => Some((true, String::new())),
        "FAIL" => Some((false, kind.to_string())),
        _ => None,
    }
}

/// Read everything; keep the first `cap` bytes and discard the rest (the writer never sees a
/// closed pipe, so a correct program that prints a lot still passes).
fn drain(mut r: impl Read, cap: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&buf[..room]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    kept
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    wall: Duration,
) -> (Option<std::process::ExitStatus>, bool) {
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return (Some(s), false),
            Ok(None) if t0.elapsed() > wall => {
                // The waiting process: its death takes PID 1 (PDEATHSIG) and so the namespace.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                return (child.wait().ok(), true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return (None, false),
        }
    }
}

fn pipe() -> Res<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// 128 random bits, hex: the tag of this run's report.
fn nonce() -> Res<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// CREME_SANDBOX=rlimits: own session, die with creme, the pipes, the rlimits, NoNewPrivs.
fn rlimits_only(
    rlimits: &[(libc::__rlimit_resource_t, u64)],
    report_fd: i32,
    input_fd: i32,
) -> std::io::Result<()> {
    let ok = |r: i32| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    unsafe {
        ok(libc::setsid())?;
        ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        isolate::move_pipes(report_fd, input_fd)?;
        isolate::set_rlimits(rlimits)?;
        ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    }
}

/// What judges here, as far as verdicts depend on it: the interpreter (path) and the isolation
/// mode (root, user namespace, rlimits only). Run manifests record it.
pub fn judge_identity() -> String {
    let mode = mode().map_or("refused", Mode::name);
    format!("{} in the {mode} sandbox", python3().to_string_lossy())
}

/// The interpreter: CREME_PYTHON if set, else /usr/bin/python3 where it exists, else from PATH.
fn python3() -> std::ffi::OsString {
    match std::env::var_os("CREME_PYTHON") {
        Some(p) => p,
        None if std::path::Path::new("/usr/bin/python3").exists() => "/usr/bin/python3".into(),
        None => "python3".into(),
    }
}

/// Runs in progress (the waiting process's pid and the cgroup directories), for the interrupt
/// handler.
static ACTIVE: Mutex<Vec<(i32, Vec<std::path::PathBuf>)>> = Mutex::new(Vec::new());

struct Active(i32);

impl Active {
    fn register(pid: i32, cgroup: Option<&cgroup::RunCgroup>) -> Active {
        let dirs = cgroup.map(|c| c.dirs().to_vec()).unwrap_or_default();
        ACTIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((pid, dirs));
        Active(pid)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, _)| *p != self.0);
    }
}

/// On Ctrl-C or SIGTERM: kill every running program and its cgroup, then exit (130).
pub fn install_interrupt_handler() {
    let _ = ctrlc::set_handler(|| {
        let active = std::mem::take(&mut *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()));
        for (pid, dirs) in active {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            for d in dirs {
                cgroup::kill_and_remove(&d);
            }
        }
        eprintln!("creme: interrupted");
        std::process::exit(130);
    });
}

/// Run many programs on `workers` threads; results in input order.
pub fn run_many(programs: &[TestProgram], limits: &Limits, workers: usize) -> Vec<RunResult> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; programs.len()]);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= programs.len() {
                    break;
                }
                let r = run_program(&programs[i], limits);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[cfg(test)]
mod tests;
