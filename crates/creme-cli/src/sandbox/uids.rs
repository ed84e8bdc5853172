//! Unprivileged uids for programs run by root: each concurrent run, in this creme process or in
//! another, holds a uid of its own, so that "kill everything this uid owns" ends exactly that run.
//! A uid is held by an open-file-description lock on one byte of one lock file, in a directory only
//! root may enter (a program cannot take or hold locks there), released when the lease is dropped.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// First uid of the range the sandbox runs programs under when started as root.
pub const SANDBOX_UID_BASE: u32 = 61_000;
pub const SANDBOX_UIDS: u32 = 1_000;

pub struct UidLease {
    pub uid: u32,
    _lock: File,
}

/// Root-only directory for the lock file: /run/creme-sandbox, else under the temp dir. Refused if
/// someone else made it or can enter it.
fn lock_dir() -> io::Result<PathBuf> {
    let base = if fs::metadata("/run").is_ok_and(|m| m.is_dir()) {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join("creme-sandbox");
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let m = fs::symlink_metadata(&dir)?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} must be a directory owned by root with mode 0700",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Lease a free sandbox uid; an error when none is free (the caller retries the sample later; it
/// never runs the program as root instead).
pub fn lease() -> io::Result<UidLease> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // An open file description of its own: the leases of two runs in this process never merge.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_dir()?.join("uids.lock"))?;
    let start = NEXT
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_add(std::process::id().wrapping_mul(37));
    for k in 0..SANDBOX_UIDS {
        let slot = start.wrapping_add(k) % SANDBOX_UIDS;
        let lock = libc::flock {
            l_type: libc::F_WRLCK as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: slot as i64,
            l_len: 1,
            l_pid: 0,
        };
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
            return Ok(UidLease {
                uid: SANDBOX_UID_BASE + slot,
                _lock: file,
            });
        }
    }
    Err(io::Error::other(format!(
        "no free sandbox uid among {SANDBOX_UIDS} (all held by running programs)"
    )))
}
