//! The only place mergescope maps files into memory, with the SIGBUS guard that keeps a file
//! truncated under the map from killing the process (`unsafe` here and in `export::sys`).
//!
//! A memory map is only as stable as the file behind it: if another program truncates a shard
//! while it is mapped, reading the vanished pages raises SIGBUS, which kills the process. Two
//! defences, so a file changing underneath is an error and never a crash:
//! - each map remembers the file's identity (device, inode, size, modification time) and
//!   [`MappedFile::verify`] compares it with the file on disk; readers call it before and after
//!   using a tensor, so changed data is reported ("reopen it") rather than merged;
//! - on Linux a SIGBUS handler ([`guard`]) catches a fault inside a registered map, maps zero
//!   pages over the rest of it so the read completes, and marks the map as faulted, which
//!   `verify` then reports. The zeros never reach an output: the reader's `verify` after the
//!   tensor fails, and the job stops with that error.

#![allow(unsafe_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use memmap2::{Advice, Mmap, UncheckedAdvice};

/// What identifies the exact bytes a map was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    device: u64,
    #[cfg(unix)]
    inode: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            device: meta.dev(),
            #[cfg(unix)]
            inode: meta.ino(),
        }
    }

    /// How `now` differs from `self`, in words; `None` when it is the same file, unchanged.
    fn change(&self, now: &Self) -> Option<String> {
        #[cfg(unix)]
        if (self.device, self.inode) != (now.device, now.inode) {
            return Some("it was replaced by another file".to_owned());
        }
        if self.len != now.len {
            return Some(format!(
                "its size went from {} to {} bytes",
                self.len, now.len
            ));
        }
        if self.modified != now.modified {
            return Some("it was modified".to_owned());
        }
        None
    }
}

/// A read-only memory map of one shard file.
#[derive(Debug)]
pub(crate) struct MappedFile {
    map: Mmap,
    /// Kept open so `verify` sees the mapped inode even after the path is replaced.
    file: File,
    path: PathBuf,
    identity: Identity,
    #[cfg(target_os = "linux")]
    region: Option<guard::Region>,
}

impl MappedFile {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let identity = Identity::of(&file.metadata()?);
        // SAFETY: the map is read-only and private to this process. If another process
        // truncates the file while it is mapped, a read of the vanished pages faults; the SIGBUS
        // guard below turns that into zero pages plus a flag that `verify` reports, so no
        // reference into the map ever outlives valid memory. mergescope never writes to a file
        // it has mapped: exports go to a fresh folder that may not overlap any input
        // (`export::guard`).
        let map = unsafe { Mmap::map(&file)? };
        #[cfg(target_os = "linux")]
        let region = guard::Region::register(map.as_ptr() as usize, map.len());
        Ok(Self {
            map,
            file,
            path: path.to_path_buf(),
            identity,
            #[cfg(target_os = "linux")]
            region,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// `Err(what changed)` when the file on disk is no longer the one that was mapped, or a
    /// read of the map faulted because the file shrank. Costs two `stat` calls.
    pub(crate) fn verify(&self) -> Result<(), String> {
        #[cfg(target_os = "linux")]
        if self.region.as_ref().is_some_and(guard::Region::faulted) {
            return Err("it became shorter while mergescope was reading it".to_owned());
        }
        let mapped = self
            .file
            .metadata()
            .map_err(|e| format!("cannot check it: {e}"))?;
        if let Some(change) = self.identity.change(&Identity::of(&mapped)) {
            return Err(change);
        }
        match std::fs::metadata(&self.path) {
            Ok(now) => self
                .identity
                .change(&Identity::of(&now))
                .map_or(Ok(()), Err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err("it was deleted or moved".to_owned())
            }
            Err(e) => Err(format!("cannot check it: {e}")),
        }
    }

    /// A cheap fingerprint of the data: the identity plus a hash of a few sampled 4 KiB blocks
    /// (the first, the last and up to 14 spread between). Caches key on it so an edited file
    /// whose size and modification time were restored is still seen as new.
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        const BLOCK: usize = 4096;
        const SAMPLES: usize = 16;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.identity.len.hash(&mut hasher);
        self.identity.modified.hash(&mut hasher);
        let bytes = self.bytes();
        let blocks = bytes.len().div_ceil(BLOCK);
        for k in 0..SAMPLES.min(blocks) {
            let block = if SAMPLES >= blocks {
                k
            } else {
                k * (blocks - 1) / (SAMPLES - 1)
            };
            let start = block * BLOCK;
            bytes[start..(start + BLOCK).min(bytes.len())].hash(&mut hasher);
        }
        hasher.finish()
    }

    /// Asks the kernel to start reading `range` now, so a later access does not wait on disk.
    /// Only a hint: failures are ignored.
    pub(crate) fn prefetch(&self, start: usize, len: usize) {
        // Linux caps one WILLNEED at the device's readahead size (often 128 KiB), so a large
        // tensor is requested piece by piece; each call only queues reads and returns.
        const STEP: usize = 1 << 20;
        let end = start + len;
        let mut at = start;
        while at < end {
            let _ = self
                .map
                .advise_range(Advice::WillNeed, at, STEP.min(end - at));
            at += STEP;
        }
    }

    /// Reads `range` into the page cache and maps it into this process now, blocking until
    /// it is there: the thread that calls it waits on the disk (sleeping, not spinning), and
    /// later reads of the range neither fault nor wait. `false` where the kernel cannot
    /// (`MADV_POPULATE_READ` needs Linux 5.14); the caller then touches the pages instead.
    pub(crate) fn populate(&self, start: usize, len: usize) -> bool {
        #[cfg(target_os = "linux")]
        {
            // Page-aligned outwards: the neighbours' bytes on the edge pages are read anyway.
            let page = 4096;
            let aligned_start = start / page * page;
            let end = (start + len).min(self.map.len());
            if end <= aligned_start {
                return true;
            }
            // A truncated file makes this fail with EFAULT rather than SIGBUS; the reader's
            // next access then faults into the guard, which reports the change.
            match self
                .map
                .advise_range(Advice::PopulateRead, aligned_start, end - aligned_start)
            {
                Ok(()) => true,
                Err(e) => e.raw_os_error() != Some(libc::EINVAL),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (start, len);
            false
        }
    }

    /// The file this map was made from (kept open, so it is the mapped inode).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// The fraction of `range`'s pages that are in the page cache now (`mincore`), so a reader
    /// can tell a warm tensor from one that must come from disk. 1 where it cannot be asked.
    pub(crate) fn resident_fraction(&self, start: usize, len: usize) -> f64 {
        #[cfg(unix)]
        {
            let page = 4096;
            let aligned_start = start / page * page;
            let end = (start + len).min(self.map.len());
            if end <= aligned_start {
                return 1.0;
            }
            let pages = (end - aligned_start).div_ceil(page);
            let mut resident = vec![0u8; pages];
            // SAFETY: the range lies inside this live mapping (clamped to its length above) and
            // `resident` has one byte per page of it, as `mincore` writes.
            let status = unsafe {
                libc::mincore(
                    self.map.as_ptr().add(aligned_start) as *mut libc::c_void,
                    end - aligned_start,
                    resident.as_mut_ptr().cast(),
                )
            };
            if status != 0 {
                return 1.0;
            }
            resident.iter().filter(|&&r| r & 1 != 0).count() as f64 / pages as f64
        }
        #[cfg(not(unix))]
        {
            let _ = (start, len);
            1.0
        }
    }

    /// [`resident_fraction`](Self::resident_fraction) estimated from at most
    /// `SAMPLE_RUNS` runs of `SAMPLE_RUN_PAGES` pages spread evenly over the range. `mincore`
    /// looks each page of an unmapped range up in the page cache, and asking it of every page
    /// of a warm 6.7 GB family took a tenth of a second before a merge could start; the page
    /// cache fills and empties in runs of pages, so runs spread over a tensor tell as much.
    pub(crate) fn resident_estimate(&self, start: usize, len: usize) -> f64 {
        const SAMPLE_RUNS: usize = 8;
        const SAMPLE_RUN_PAGES: usize = 8;
        let page = 4096;
        let pages = len.div_ceil(page);
        if pages <= SAMPLE_RUNS * SAMPLE_RUN_PAGES {
            return self.resident_fraction(start, len);
        }
        let stride = (pages - SAMPLE_RUN_PAGES) / (SAMPLE_RUNS - 1) * page;
        (0..SAMPLE_RUNS)
            .map(|run| self.resident_fraction(start + run * stride, SAMPLE_RUN_PAGES * page))
            .sum::<f64>()
            / SAMPLE_RUNS as f64
    }

    /// Drops `range` from this process's resident set once it has been consumed: the pages stay
    /// in the page cache, but merging a 70 GB family does not show up as 70 GB of RSS.
    pub(crate) fn release(&self, start: usize, len: usize) {
        // MADV_DONTNEED needs a page-aligned start; round inwards so no byte still needed by a
        // neighbouring tensor is dropped (dropping it would only cost a re-read anyway).
        let page = 4096;
        let aligned_start = start.next_multiple_of(page);
        let end = start + len;
        if end <= aligned_start + page {
            return;
        }
        let aligned_len = (end - aligned_start) / page * page;
        // SAFETY: DONTNEED on a read-only, file-backed mapping only discards this process's
        // page-table entries; the next access re-reads the same bytes from the file, so no
        // reference into the map observes different data.
        let _ = unsafe {
            self.map
                .unchecked_advise_range(UncheckedAdvice::DontNeed, aligned_start, aligned_len)
        };
    }
}

/// The SIGBUS guard: a process-wide table of mapped regions and a signal handler that rescues
/// faults inside them.
#[cfg(target_os = "linux")]
mod guard {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Once, OnceLock};

    /// Enough for every shard of a dozen 70 B models; a map beyond it is simply unguarded.
    const SLOTS: usize = 1024;

    struct Slot {
        start: AtomicUsize,
        len: AtomicUsize,
        faulted: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Slot = Slot {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        faulted: AtomicBool::new(false),
    };
    static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
    static INSTALL: Once = Once::new();
    /// The handler that was in place before ours, for faults that are not ours. Reading a
    /// set `OnceLock` is one atomic load: safe inside a signal handler.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

    /// One registered map; unregisters on drop (before memmap2 unmaps it).
    #[derive(Debug)]
    pub(super) struct Region {
        slot: usize,
    }

    impl Region {
        pub(super) fn register(start: usize, len: usize) -> Option<Self> {
            if len == 0 {
                return None;
            }
            INSTALL.call_once(install);
            let slot = TABLE.iter().position(|s| {
                s.start
                    .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })?;
            let entry = &TABLE[slot];
            entry.faulted.store(false, Ordering::Relaxed);
            entry.len.store(len, Ordering::Relaxed);
            entry.start.store(start, Ordering::Release);
            Some(Self { slot })
        }

        pub(super) fn faulted(&self) -> bool {
            TABLE[self.slot].faulted.load(Ordering::Acquire)
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            TABLE[self.slot].start.store(0, Ordering::Release);
        }
    }

    fn install() {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value and the handler has
        // the SA_SIGINFO signature. PREVIOUS is written once, here, before the handler that
        // reads it is installed.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&raw mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &raw mut old) != 0 {
                return;
            }
            let _ = PREVIOUS.set(old);
            libc::sigaction(libc::SIGBUS, &raw const action, std::ptr::null_mut());
        }
    }

    /// Async-signal-safe: atomics, `mmap` and `sigaction` only.
    extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let address = unsafe { (*info).si_addr() } as usize;
        for entry in &TABLE {
            let start = entry.start.load(Ordering::Acquire);
            if start == 0 || start == usize::MAX {
                continue;
            }
            let len = entry.len.load(Ordering::Relaxed);
            if !(start..start + len).contains(&address) {
                continue;
            }
            let page = address & !4095;
            // SAFETY: replaces the vanished file pages of our own read-only map, from the
            // faulting page to the map's end, with zero pages at the same address; the map is
            // still owned by its MappedFile, whose drop unmaps the whole range as before.
            let zeros = unsafe {
                libc::mmap(
                    page as *mut libc::c_void,
                    start + len - page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if zeros != libc::MAP_FAILED {
                entry.faulted.store(true, Ordering::Release);
                return; // the faulting read is retried and now sees zeros
            }
            break;
        }
        // Not ours (or unrescuable): put the previous handler back; the read faults again and
        // the process ends as it would have without mergescope.
        // SAFETY: PREVIOUS was set before this handler was installed and is never written again.
        unsafe {
            match PREVIOUS.get() {
                Some(previous) => {
                    libc::sigaction(signal, previous, std::ptr::null_mut());
                }
                None => {
                    libc::signal(signal, libc::SIG_DFL);
                }
            }
        }
    }
}
