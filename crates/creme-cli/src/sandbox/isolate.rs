//! The child side of a sandboxed run, between fork and exec. Everything here is a raw system call
//! on data prepared beforehand (no allocation: the parent is multi-threaded), and every call is
//! checked: a failure aborts the spawn, and the run becomes an infrastructure error, never a
//! weaker sandbox.
//!
//! Order: own session, die with the parent, join the run's cgroups, move the pipes to fds 3 and 4,
//! new mount/network/IPC/UTS/PID namespaces (and a user namespace when not root), then fork: the
//! first process stays outside the new PID namespace and only waits (it is the one creme tracks and
//! kills); the second is PID 1 of the namespace (when it dies the kernel kills everything left in
//! it), builds and enters the fresh root (`root.rs`; private tmpfs on /tmp, /var/tmp, /dev/shm,
//! /run and a fresh /proc in it), sets the rlimits, drops to the sandbox uid (root) or all
//! capabilities (user namespace), sets NoNewPrivs, installs the seccomp filter and execs python.

use std::ffi::CString;
use std::io;

use super::root::Step;

/// What the child does, prepared in the parent.
pub struct Plan {
    /// Root: switch to this uid/gid. Otherwise None: a user namespace maps the caller's own ids.
    pub drop_to: Option<u32>,
    /// `/proc/self/uid_map` and `gid_map` lines for the user namespace (non-root only).
    pub id_maps: Option<(CString, CString)>,
    /// `cgroup.procs` files to join (empty where no cgroup is used).
    pub cgroup_procs: Vec<CString>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// An existing host directory to mount the setup tmpfs on, and in it the new root and the
    /// place of the old one (`<base>/newroot`, `<base>/oldroot`); then `/newroot` and `/oldroot`.
    pub setup_base: CString,
    pub setup_new: CString,
    pub setup_old: CString,
    pub new_root: CString,
    pub old_root: CString,
    /// Building the new root (`root.rs`), between the two pivots.
    pub root: Vec<Step>,
    /// Pipe ends that become fd 3 (report, write end) and fd 4 (program, read end) in python.
    pub report_fd: i32,
    pub input_fd: i32,
}

/// A system call's result: negative is the errno as an error (no allocation).
fn check(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c(s: &'static [u8]) -> *const libc::c_char {
    s.as_ptr() as *const libc::c_char
}

/// Write `data` to an existing file (cgroup.procs, uid_map, ...).
fn write_file(path: *const libc::c_char, data: &[u8]) -> io::Result<()> {
    unsafe {
        let fd = libc::open(path, libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd as _)?;
        let n = libc::write(fd, data.as_ptr() as *const libc::c_void, data.len());
        libc::close(fd);
        check(n as _)?;
        if n as usize != data.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
    }
    Ok(())
}

impl Plan {
    /// Run in the forked child (Command::pre_exec). Returns only in the process that execs python.
    pub fn apply(&self) -> io::Result<()> {
        unsafe {
            check(libc::setsid() as _)?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as _)?;
            for procs in &self.cgroup_procs {
                write_file(procs.as_ptr(), b"0")?; // 0: the writing process
            }
            move_pipes(self.report_fd, self.input_fd)?;
            let mut flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWPID;
            if self.id_maps.is_some() {
                flags |= libc::CLONE_NEWUSER;
            }
            check(libc::unshare(flags) as _)?;
            if let Some((uid_map, gid_map)) = &self.id_maps {
                write_file(c(b"/proc/self/setgroups\0"), b"deny")?;
                write_file(c(b"/proc/self/uid_map\0"), uid_map.as_bytes())?;
                write_file(c(b"/proc/self/gid_map\0"), gid_map.as_bytes())?;
            }
            let pid = libc::fork();
            check(pid as _)?;
            if pid > 0 {
                wait_and_mirror(pid);
            }
            self.inside()
        }
    }

    /// PID 1 of the new namespace: its own root, limits, identity, and no user namespaces.
    unsafe fn inside(&self) -> io::Result<()> {
        check(libc::mount(
            std::ptr::null(),
            c(b"/\0"),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) as _)?;
        self.enter_new_root()?;
        check(libc::chdir(c(b"/tmp\0")) as _)?;
        set_rlimits(&self.rlimits)?;
        match self.drop_to {
            Some(uid) => {
                check(libc::setgroups(0, std::ptr::null()) as _)?;
                check(libc::setgid(uid) as _)?;
                check(libc::setuid(uid) as _)?;
                if libc::setuid(0) == 0 {
                    return Err(io::Error::from_raw_os_error(libc::EPERM)); // root could be regained
                }
            }
            None => drop_capabilities()?,
        }
        // After the uid change, which clears it: die with the waiting process.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as _)?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _)?;
        deny_user_namespaces()
    }

    /// Build the new root and enter it, leaving no way back to the host's tree. The setup tmpfs
    /// becomes the root first, so that the whole host is one mount at /oldroot (a source under
    /// the mount point stays reachable), the steps build /newroot from it, /oldroot is detached,
    /// and /newroot becomes the root (`pivot_root(".", ".")` stacks the two; the old one is then
    /// detached) and is made read-only. The fresh /proc is mounted while the host's is still
    /// there: in a user namespace the kernel allows a new proc only where one is already visible.
    unsafe fn enter_new_root(&self) -> io::Result<()> {
        let small = c(b"size=1m,mode=0755\0") as *const libc::c_void;
        mount_tmpfs(self.setup_base.as_ptr(), small)?;
        check(libc::mkdir(self.setup_new.as_ptr(), 0o755) as _)?;
        check(libc::mkdir(self.setup_old.as_ptr(), 0o755) as _)?;
        mount_tmpfs(self.setup_new.as_ptr(), small)?;
        check(libc::chdir(self.setup_base.as_ptr()) as _)?;
        pivot_root(c(b".\0"), self.setup_old.as_ptr())?;
        check(libc::chdir(c(b"/\0")) as _)?;
        for step in &self.root {
            step.apply()?;
        }
        check(libc::umount2(self.old_root.as_ptr(), libc::MNT_DETACH) as _)?;
        check(libc::chdir(self.new_root.as_ptr()) as _)?;
        pivot_root(c(b".\0"), c(b".\0"))?;
        check(libc::umount2(c(b".\0"), libc::MNT_DETACH) as _)?;
        check(libc::chdir(c(b"/\0")) as _)?;
        let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID;
        check(libc::mount(
            std::ptr::null(),
            c(b"/\0"),
            std::ptr::null(),
            ro | libc::MS_NODEV,
            std::ptr::null(),
        ) as _)
    }
}

impl Step {
    unsafe fn apply(&self) -> io::Result<()> {
        let none = std::ptr::null();
        match self {
            Step::Dir(at) => {
                if libc::mkdir(at.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            Step::File(at) => {
                let fd = libc::open(
                    at.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                check(fd as _)?;
                libc::close(fd);
                Ok(())
            }
            Step::Symlink { target, at } => check(libc::symlink(target.as_ptr(), at.as_ptr()) as _),
            Step::Bind {
                from,
                to,
                read_only,
            } => {
                let flags = libc::MS_BIND | libc::MS_REC;
                check(libc::mount(from.as_ptr(), to.as_ptr(), none, flags, std::ptr::null()) as _)?;
                if *read_only {
                    remount_read_only(to)?;
                }
                Ok(())
            }
            Step::Tmpfs { at, options } => {
                mount_tmpfs(at.as_ptr(), options.as_ptr() as *const libc::c_void)
            }
            Step::Proc(at) => {
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                check(libc::mount(
                    c(b"proc\0"),
                    at.as_ptr(),
                    c(b"proc\0"),
                    flags,
                    std::ptr::null(),
                ) as _)
            }
        }
    }
}

unsafe fn mount_tmpfs(at: *const libc::c_char, options: *const libc::c_void) -> io::Result<()> {
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    check(libc::mount(c(b"tmpfs\0"), at, c(b"tmpfs\0"), flags, options) as _)
}

unsafe fn pivot_root(new: *const libc::c_char, old: *const libc::c_char) -> io::Result<()> {
    check(libc::syscall(libc::SYS_pivot_root, new, old))
}

/// Remount a bind read-only, nosuid, nodev, keeping the flags a user namespace may not clear
/// (noexec and the atime ones of the source mount: changing them is refused there).
unsafe fn remount_read_only(at: &CString) -> io::Result<()> {
    let mut st: libc::statvfs = std::mem::zeroed();
    check(libc::statvfs(at.as_ptr(), &mut st) as _)?;
    let mut flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    for (st_flag, ms_flag) in [
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    check(libc::mount(
        std::ptr::null(),
        at.as_ptr(),
        std::ptr::null(),
        flags,
        std::ptr::null(),
    ) as _)
}

/// fd 3 = report pipe, fd 4 = program pipe (through high fds so neither overwrites the other).
pub unsafe fn move_pipes(report_fd: i32, input_fd: i32) -> io::Result<()> {
    let a = libc::fcntl(report_fd, libc::F_DUPFD, 100);
    check(a as _)?;
    let b = libc::fcntl(input_fd, libc::F_DUPFD, 100);
    check(b as _)?;
    check(libc::dup2(a, 3) as _)?;
    check(libc::dup2(b, 4) as _)?;
    libc::close(a);
    libc::close(b);
    Ok(())
}

pub unsafe fn set_rlimits(rlimits: &[(libc::__rlimit_resource_t, u64)]) -> io::Result<()> {
    for &(res, v) in rlimits {
        let r = libc::rlimit {
            rlim_cur: v as libc::rlim_t,
            rlim_max: v as libc::rlim_t,
        };
        check(libc::setrlimit(res, &r) as _)?;
    }
    Ok(())
}

/// The waiting process outside the PID namespace: close everything it inherited (spawn's error
/// pipe included, so creme's spawn returns once python execs), wait for PID 1, and exit the same
/// way it did.
unsafe fn wait_and_mirror(pid: libc::pid_t) -> ! {
    if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
        for fd in 3..4096 {
            libc::close(fd);
        }
    }
    let mut status = 0;
    loop {
        let r = libc::waitpid(pid, &mut status, 0);
        if r == pid {
            break;
        }
        if r < 0 && *libc::__errno_location() != libc::EINTR {
            libc::_exit(125);
        }
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
        libc::_exit(128 + sig);
    }
    libc::_exit(libc::WEXITSTATUS(status))
}

/// Empty every capability set (the user namespace gave the process all of them).
unsafe fn drop_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut header = Header {
        version: 0x2008_0522,
        pid: 0,
    }; // _LINUX_CAPABILITY_VERSION_3
    let data = [
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    for cap in 0..64 {
        libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0); // fails past the last capability: fine
    }
    check(libc::syscall(
        libc::SYS_capset,
        &mut header as *mut Header,
        data.as_ptr(),
    ))
}

/// `AUDIT_ARCH_*` of this build: the seccomp filter refuses system calls of any other ABI.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const fn bpf(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A seccomp filter: `unshare` and `clone` with CLONE_NEWUSER fail with EPERM, `clone3` (whose
/// flags a filter cannot read) with ENOSYS, so that libc falls back to `clone`; so do calls of
/// another ABI and, on x86_64, x32 calls. Everything else is allowed. A user namespace would give
/// the program every capability over new mounts and network devices of its own: no file of the
/// host's, but much more of the kernel to attack.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
unsafe fn deny_user_namespaces() -> io::Result<()> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_RET, BPF_W};
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    // struct seccomp_data: nr at 0, arch at 4, args[0] at 16 (its low word: little-endian).
    let filter = [
        bpf(BPF_LD | BPF_W | BPF_ABS, 4, 0, 0),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH, 0, 9), // -> ENOSYS
        bpf(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0),
        bpf(BPF_JMP | BPF_JSET | BPF_K, 0x4000_0000, 7, 0), // x32 -> ENOSYS
        bpf(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone3 as u32, 6, 0), // -> ENOSYS
        bpf(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_unshare as u32, 1, 0),
        bpf(BPF_JMP | BPF_JEQ | BPF_K, libc::SYS_clone as u32, 0, 2), // -> ALLOW
        bpf(BPF_LD | BPF_W | BPF_ABS, 16, 0, 0),
        bpf(BPF_JMP | BPF_JSET | BPF_K, libc::CLONE_NEWUSER as u32, 1, 0), // -> EPERM
        bpf(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
        bpf(BPF_RET | BPF_K, EPERM, 0, 0),
        bpf(BPF_RET | BPF_K, ENOSYS, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    check(libc::prctl(
        libc::PR_SET_SECCOMP,
        libc::SECCOMP_MODE_FILTER,
        &prog as *const libc::sock_fprog,
        0,
        0,
    ) as _)
}

/// No filter written for this architecture: refuse to run rather than run without it.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn deny_user_namespaces() -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}
