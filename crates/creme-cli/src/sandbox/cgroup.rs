//! One cgroup per run, so that the memory and process limits bind the whole run (all its processes
//! together), and so that everything it started can be found and killed. cgroup v1 (separate
//! `memory` and `pids` hierarchies, as on these machines) or v2 (one unified hierarchy with both
//! controllers available). Where neither is writable, `Cgroups::available` says so and the caller
//! falls back to rlimits alone.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

const ROOT: &str = "/sys/fs/cgroup";
/// Name prefix of creme's run cgroups: `creme-sbx-<creme pid>-<n>`.
const PREFIX: &str = "creme-sbx-";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    V1,
    V2,
}

/// Which cgroup layout this process may use (probed once): None where neither is usable.
pub fn available() -> Option<Layout> {
    use std::sync::OnceLock;
    static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
    *LAYOUT.get_or_init(|| {
        let writable = |p: &Path| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
        };
        let root = Path::new(ROOT);
        let layout = if writable(&root.join("memory")) && writable(&root.join("pids")) {
            Some(Layout::V1)
        } else if fs::read_to_string(root.join("cgroup.controllers"))
            .is_ok_and(|c| c.contains("memory") && c.contains("pids"))
            && writable(root)
        {
            Some(Layout::V2)
        } else {
            None
        };
        if let Some(l) = layout {
            remove_stale(l);
        }
        layout
    })
}

/// The run's cgroup directories (one per v1 hierarchy, or one v2 directory).
pub struct RunCgroup {
    dirs: Vec<PathBuf>,
    layout: Layout,
}

impl RunCgroup {
    /// Create the run's cgroup with its limits. Any failure is an error: the caller must not run
    /// the program with fewer limits than it asked for.
    pub fn create(layout: Layout, memory_bytes: u64, processes: u64) -> io::Result<RunCgroup> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let root = Path::new(ROOT);
        let dirs = match layout {
            Layout::V1 => vec![
                root.join("memory").join(&name),
                root.join("pids").join(&name),
            ],
            Layout::V2 => vec![v2_parent()?.join(&name)],
        };
        let cg = RunCgroup { dirs, layout };
        for d in &cg.dirs {
            fs::create_dir(d)?;
        }
        match layout {
            Layout::V1 => {
                fs::write(
                    cg.dirs[0].join("memory.limit_in_bytes"),
                    memory_bytes.to_string(),
                )?;
                let memsw = cg.dirs[0].join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    fs::write(memsw, memory_bytes.to_string())?;
                }
                fs::write(cg.dirs[1].join("pids.max"), processes.to_string())?;
            }
            Layout::V2 => {
                fs::write(cg.dirs[0].join("memory.max"), memory_bytes.to_string())?;
                let swap = cg.dirs[0].join("memory.swap.max");
                if swap.exists() {
                    fs::write(swap, "0")?;
                }
                fs::write(cg.dirs[0].join("pids.max"), processes.to_string())?;
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes to join the run.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Whether the memory limit was hit during the run (the kernel then kills with SIGKILL).
    pub fn memory_limit_hit(&self) -> bool {
        let read = |f: &str| fs::read_to_string(self.dirs[0].join(f)).unwrap_or_default();
        match self.layout {
            Layout::V1 => read("memory.failcnt").trim().parse::<u64>().unwrap_or(0) > 0,
            Layout::V2 => read("memory.events")
                .lines()
                .any(|l| l.starts_with("oom_kill ") && !l.ends_with(" 0")),
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            kill_and_remove(d);
        }
    }
}

/// SIGKILL every process in a cgroup directory, then remove it (retrying while they exit).
pub fn kill_and_remove(dir: &Path) {
    for _ in 0..400 {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// v2: creme's own subtree with the memory and pids controllers enabled for its children.
fn v2_parent() -> io::Result<PathBuf> {
    let root = Path::new(ROOT);
    let parent = root.join("creme-sandbox");
    // Runs start in parallel: on a fresh machine several make the parent at once, and
    // `create_dir_all` takes "it exists" as success where `create_dir` failed ("File exists").
    fs::create_dir_all(&parent)?;
    for dir in [root, parent.as_path()] {
        let enabled = fs::read_to_string(dir.join("cgroup.subtree_control"))?;
        if !(enabled.contains("memory") && enabled.contains("pids")) {
            fs::write(dir.join("cgroup.subtree_control"), "+memory +pids")?;
        }
    }
    Ok(parent)
}

/// Run cgroups left by a creme process that no longer exists (killed with SIGKILL): kill what is
/// still in them and remove them.
fn remove_stale(layout: Layout) {
    let root = Path::new(ROOT);
    let parents = match layout {
        Layout::V1 => vec![root.join("memory"), root.join("pids")],
        Layout::V2 => vec![root.join("creme-sandbox")],
    };
    for parent in parents {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(owner) = name
                .strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let alive =
                unsafe { libc::kill(owner, 0) == 0 || *libc::__errno_location() == libc::EPERM };
            if !alive {
                kill_and_remove(&e.path());
            }
        }
    }
}
