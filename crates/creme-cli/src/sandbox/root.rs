//! The program's file view: a fresh root holding the Python runtime and nothing else. The
//! interpreter's own directories and the system's (`/usr`, and `/lib`, `/bin`, ... as the host has
//! them: symlinks into `/usr` on merged-usr systems) are bound read-only; `/dev` has the null,
//! zero, full and random devices; `/tmp`, `/var/tmp`, `/dev/shm` and `/run` are private tmpfs;
//! `/proc` is the run's own. No dataset, model, work tree, home or cache is there, unless the
//! interpreter itself lives under one of them, and then only its own prefix directory.
//!
//! Everything is planned here, in the parent, as a list of steps on prepared C strings; `isolate.rs`
//! carries them out between fork and exec (see there for the order around `pivot_root`).

use std::ffi::{CString, OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// Where the old root is seen, and where the new one is built, during setup (in the tmpfs that
/// becomes the setup root: see `isolate.rs`).
pub const OLD: &str = "/oldroot";
pub const NEW: &str = "/newroot";

/// One step of building the new root; paths are absolute in the setup root.
pub enum Step {
    /// mkdir (an existing directory is fine).
    Dir(CString),
    /// An empty file to bind a file onto.
    File(CString),
    Symlink {
        target: CString,
        at: CString,
    },
    /// A bind mount of `from`; `read_only` remounts it read-only, nosuid, nodev.
    Bind {
        from: CString,
        to: CString,
        read_only: bool,
    },
    Tmpfs {
        at: CString,
        options: CString,
    },
    Proc(CString),
}

/// The interpreter as it runs inside: the path to exec and the host directories it needs.
pub struct Runtime {
    pub executable: PathBuf,
    dirs: Vec<PathBuf>,
}

/// System directories bound (or, where they are symlinks, recreated as the same symlinks).
const SYSTEM: &[&str] = &[
    "/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin",
];
/// Files of /etc the runtime reads: the dynamic loader's cache (for libcrypto, libffi, ... of
/// hashlib and ctypes) and the time zone.
const ETC: &[&str] = &["/etc/ld.so.cache", "/etc/localtime"];
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom"];

/// What `python -I -S` says about itself: its executable and the directories it loads from.
const PROBE: &str = "import sys\nfor p in [sys.executable, sys.base_prefix, sys.base_exec_prefix] + sys.path:\n    print(p)\n";

/// The runtime of `python` (probed once per interpreter and process, outside the sandbox: it is
/// creme's own interpreter running creme's probe).
pub fn runtime(python: &OsStr) -> Result<Arc<Runtime>, String> {
    static CACHE: Mutex<Vec<(OsString, Arc<Runtime>)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = cache.iter().find(|(p, _)| p == python) {
        return Ok(r.clone());
    }
    let r = Arc::new(probe(python)?);
    cache.push((python.to_os_string(), r.clone()));
    Ok(r)
}

fn probe(python: &OsStr) -> Result<Runtime, String> {
    let what = Path::new(python).display();
    let out = Command::new(python)
        .args(["-I", "-S", "-c", PROBE])
        .output()
        .map_err(|e| format!("running {what} to find its runtime: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed to report its runtime: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| format!("{what} reported a runtime path that is not UTF-8"))?;
    let mut lines = text.lines();
    let executable = lines
        .next()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| format!("{what} does not know its own executable"))?;
    let executable = std::fs::canonicalize(executable)
        .map_err(|e| format!("{what}: its executable {executable}: {e}"))?;
    let mut dirs: Vec<PathBuf> = executable
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .collect();
    // Prefixes and sys.path entries that exist (a missing stdlib zip is normal).
    dirs.extend(lines.filter_map(|l| std::fs::canonicalize(l).ok()));
    dirs.retain(|d| d.is_dir());
    if let Some(d) = dirs.iter().find(|d| d.parent().is_none()) {
        return Err(format!(
            "{what} loads from {}: binding it would show the whole host to programs",
            d.display()
        ));
    }
    Ok(Runtime {
        executable,
        dirs: outermost(dirs),
    })
}

/// The directories not inside another one of the list (or inside /usr, bound anyway), sorted.
fn outermost(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.push(PathBuf::from("/usr"));
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs.retain(|d| d != Path::new("/usr"));
    dirs
}

fn cstr(s: String) -> Result<CString, String> {
    CString::new(s).map_err(|_| "a path with a NUL byte".to_string())
}

fn new(p: &Path) -> Result<CString, String> {
    cstr(format!("{NEW}{}", p.display()))
}

fn old(p: &Path) -> Result<CString, String> {
    cstr(format!("{OLD}{}", p.display()))
}

/// The steps that build the new root for `runtime`: `tmp_options` for /tmp, `small_options` for
/// /var/tmp, /dev/shm and /run.
pub fn plan(
    runtime: &Runtime,
    tmp_options: &CString,
    small_options: &CString,
) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for dir in [
        "/tmp", "/var", "/var/tmp", "/run", "/dev", "/dev/shm", "/proc", "/etc",
    ] {
        steps.push(Step::Dir(new(Path::new(dir))?));
    }
    for (at, options) in [
        ("/tmp", tmp_options),
        ("/var/tmp", small_options),
        ("/run", small_options),
        ("/dev/shm", small_options),
    ] {
        steps.push(Step::Tmpfs {
            at: new(Path::new(at))?,
            options: options.clone(),
        });
    }
    steps.push(Step::Proc(new(Path::new("/proc"))?));
    for dev in DEVICES {
        add_host_path(&mut steps, &Path::new("/dev").join(dev), false)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        steps.push(Step::Symlink {
            target: cstr(target.into())?,
            at: new(&Path::new("/dev").join(name))?,
        });
    }
    for p in SYSTEM.iter().chain(ETC) {
        add_host_path(&mut steps, Path::new(p), true)?;
    }
    for dir in &runtime.dirs {
        add_parents(&mut steps, dir)?;
        add_host_path(&mut steps, dir, true)?;
    }
    Ok(steps)
}

/// The directories above `p` in the new root (empty ones: a prefix under a home shows only itself).
fn add_parents(steps: &mut Vec<Step>, p: &Path) -> Result<(), String> {
    let mut parents: Vec<&Path> = p
        .ancestors()
        .skip(1)
        .filter(|a| a.parent().is_some())
        .collect();
    parents.reverse();
    for a in parents {
        steps.push(Step::Dir(new(a)?));
    }
    Ok(())
}

/// `p` as the host has it: a symlink is recreated, a directory or file bound; absent, skipped.
fn add_host_path(steps: &mut Vec<Step>, p: &Path, read_only: bool) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(p).map_err(|e| format!("{}: {e}", p.display()))?;
        steps.push(Step::Symlink {
            target: cstr(target.display().to_string())?,
            at: new(p)?,
        });
        return Ok(());
    }
    steps.push(if meta.is_dir() {
        Step::Dir(new(p)?)
    } else {
        Step::File(new(p)?)
    });
    steps.push(Step::Bind {
        from: old(p)?,
        to: new(p)?,
        read_only,
    });
    Ok(())
}
