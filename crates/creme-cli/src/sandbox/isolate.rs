//! The child side of a sandboxed run, between fork and exec. Everything here is a raw system call
//! on data prepared beforehand (no allocation: the parent is multi-threaded), and every call is
//! checked: a failure aborts the spawn, and the run becomes an infrastructure error, never a
//! weaker sandbox.
//!
//! Order: own session, die with the parent, join the run's cgroups, move the pipes to fds 3 and 4,
//! new mount/network/IPC/UTS/PID namespaces (and a user namespace when not root), then fork: the
//! first process stays outside the new PID namespace and only waits (it is the one creme tracks and
//! kills); the second is PID 1 of the namespace (when it dies the kernel kills everything left in
//! it), mounts private tmpfs on /tmp, /var/tmp, /dev/shm and a fresh /proc, sets the rlimits, drops
//! to the sandbox uid (root) or all capabilities (user namespace), sets NoNewPrivs and execs python.

use std::ffi::CString;
use std::io;

/// What the child does, prepared in the parent.
pub struct Plan {
    /// Root: switch to this uid/gid. Otherwise None: a user namespace maps the caller's own ids.
    pub drop_to: Option<u32>,
    /// `/proc/self/uid_map` and `gid_map` lines for the user namespace (non-root only).
    pub id_maps: Option<(CString, CString)>,
    /// `cgroup.procs` files to join (empty where no cgroup is used).
    pub cgroup_procs: Vec<CString>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// Mount options of the private /tmp, and of /var/tmp and /dev/shm.
    pub tmp_options: CString,
    pub small_tmp_options: CString,
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

    /// PID 1 of the new namespace: private file systems, limits, identity.
    unsafe fn inside(&self) -> io::Result<()> {
        let none = std::ptr::null();
        check(libc::mount(
            none,
            c(b"/\0"),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) as _)?;
        let tmpfs = |dir: &'static [u8], opts: &CString| -> io::Result<()> {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::stat(c(dir), &mut st) != 0 {
                return Ok(()); // no such directory on this system: nothing to hide
            }
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            check(libc::mount(
                c(b"tmpfs\0"),
                c(dir),
                c(b"tmpfs\0"),
                flags,
                opts.as_ptr() as *const libc::c_void,
            ) as _)
        };
        tmpfs(b"/tmp\0", &self.tmp_options)?;
        tmpfs(b"/var/tmp\0", &self.small_tmp_options)?;
        tmpfs(b"/dev/shm\0", &self.small_tmp_options)?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(
            c(b"proc\0"),
            c(b"/proc\0"),
            c(b"proc\0"),
            flags,
            std::ptr::null(),
        ) as _)?;
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
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _)
    }
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
