//! The three system calls an export needs beyond `std`: swapping two folders atomically, the free
//! space (and read-only flag) of a file system, and whether a process is still alive. Each is a
//! single `libc` call on Linux; elsewhere each answers "unknown" and the export falls back to what
//! `std` offers (two renames, no space check, never treating a folder as abandoned).
//!
//! Its `unsafe` is plain C calls on NUL-terminated paths and a `statvfs` out-parameter (the
//! rest of `core`'s is in `checkpoint/mmap.rs`, `hugepages.rs` and the SIMD kernels).
#![allow(unsafe_code)]

use std::io;
use std::path::Path;

/// What a file system says about its room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FsSpace {
    /// Bytes an unprivileged writer may still use.
    pub available: u64,
    /// The allocation unit: every file takes a whole number of these.
    pub block: u64,
    pub read_only: bool,
}

/// Swaps the entries `a` and `b` (both must exist) in one step: at every instant each name
/// holds one of the two folders. `Unsupported`/`InvalidInput` where the file system or kernel
/// cannot (then rename twice instead).
#[cfg(target_os = "linux")]
pub(super) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (a, b) = (c_path(a)?, c_path(b)?);
    // SAFETY: both pointers are NUL-terminated strings that outlive the call; renameat2 only
    // reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // No renameat2 in this kernel, or no RENAME_EXCHANGE in this file system (EINVAL is
        // how most say so; any other cause of EINVAL fails the plain rename that follows too).
        Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this file system cannot exchange folders",
        )),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Free space of the file system holding `path` (which must exist); `None` where unknown (not
/// Linux, or a file system that reports no size, as some network and FUSE mounts do).
#[cfg(target_os = "linux")]
// The statvfs fields are 32-bit on some architectures and 64-bit on others.
#[allow(clippy::unnecessary_cast)]
pub(super) fn space(path: &Path) -> Option<FsSpace> {
    let path = c_path(path).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `stat` is valid for writes of one `statvfs`.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    let block = if stat.f_frsize > 0 {
        stat.f_frsize
    } else {
        stat.f_bsize
    } as u64;
    let read_only = stat.f_flag & libc::ST_RDONLY != 0;
    if stat.f_blocks == 0 || block == 0 {
        // No size reported: nothing to compare against, but a read-only flag still counts.
        return read_only.then_some(FsSpace {
            available: u64::MAX,
            block: 1,
            read_only,
        });
    }
    Some(FsSpace {
        available: (stat.f_bavail as u64).saturating_mul(block),
        block,
        read_only,
    })
}

#[cfg(not(target_os = "linux"))]
pub(super) fn space(_path: &Path) -> Option<FsSpace> {
    None
}

/// Whether process `pid` exists (a zombie counts). Unknown is "alive": a folder is only ever
/// treated as abandoned when its owner is certainly gone.
#[cfg(target_os = "linux")]
pub(super) fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false; // larger than any pid
    };
    if pid <= 0 {
        return true; // 0 and negatives address process groups: never ours
    }
    // SAFETY: signal 0 checks for existence and permission only; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(target_os = "linux"))]
pub(super) fn process_alive(_pid: u32) -> bool {
    true
}

#[cfg(target_os = "linux")]
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt as _;
    Ok(std::ffi::CString::new(path.as_os_str().as_bytes())?)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn exchange_swaps_two_folders() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), "from a").unwrap();
        std::fs::write(b.join("y"), "from b").unwrap();
        match exchange(&a, &b) {
            Ok(()) => {
                assert_eq!(std::fs::read_to_string(b.join("x")).unwrap(), "from a");
                assert_eq!(std::fs::read_to_string(a.join("y")).unwrap(), "from b");
            }
            // The temporary folder's file system may not support it; then nothing moved.
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
                assert!(a.join("x").exists() && b.join("y").exists());
            }
        }
        let missing = exchange(&a, &dir.path().join("nowhere")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn reports_space_and_liveness() {
        let dir = tempfile::tempdir().unwrap();
        let space = space(dir.path()).expect("statvfs works on the temporary folder");
        assert!(space.block > 0);
        assert!(!space.read_only);
        assert!(process_alive(std::process::id()));
        assert!(process_alive(1));
        // Above the kernel's pid_max (at most 2^22): never a live process.
        assert!(!process_alive(999_999_999));
        assert!(!process_alive(u32::MAX));
    }
}
