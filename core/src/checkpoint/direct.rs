//! Reading tensors from disk with direct I/O (`O_DIRECT`) into page-aligned buffers that are
//! reused from tensor to tensor, for streams over a family too large to stay in the page cache.
//!
//! A tensor read through the page cache costs the kernel a fresh page per 4 KiB: allocated,
//! filled, mapped, and later evicted, pushing out whatever else the machine had cached. On a
//! virtual machine whose hypervisor takes freed guest memory back (free page reporting), the
//! first touch of each such page also traps to the host: on this project's VM the first pass
//! over 6.7 GB of freshly read page cache cost 10 CPU-s where the same pass warm cost 0.2.
//! Read directly, the disk's DMA lands in buffers this process already owns and keeps reusing,
//! so the arithmetic reads memory that is mapped and warm (6.7 GB read cold: 3.1 s and
//! 0.2 CPU-s of system time direct, against 5.7-11.6 s and 4-11 CPU-s through `read`).
//!
//! The price: nothing read this way stays in the page cache, so running the same family again
//! reads the disk again. [`ReadMode::Auto`] therefore reads directly only when the page cache
//! would not serve this stream anyway: the family could not stay cached, or it is not cached
//! now (see [`ReadMode::direct_for`]); and it never reads a tensor directly that is cached.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use super::arena::{Arena, ArenaSlice};

/// Direct I/O wants file offsets, lengths and memory aligned to the logical block size; a
/// page covers the devices this runs on.
const PAGE: usize = 4096;

/// Below this, [`ReadMode::Auto`] reads a cold family through the page cache: filling a
/// gigabyte of fresh cache pages costs a fraction of a second even where it traps to a
/// hypervisor, and it makes the next run over the family free.
const COLD_DIRECT_MIN_BYTES: u64 = 1 << 30;

/// How a stream reads the tensors it has not got in memory yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Directly when the stream's inputs exceed half of the memory available for caching
    /// (they would be evicted before a second run could reuse them), or when less than half
    /// of them are cached now (at least [`COLD_DIRECT_MIN_BYTES`] of them); mapped otherwise.
    Auto,
    /// Always through the memory maps and the page cache.
    Mapped,
    /// Directly whenever the file system allows it (tensors already cached stay mapped).
    Direct,
}

impl ReadMode {
    /// From `MERGESCOPE_READS` (`auto`, `mapped` or `direct`); `auto` when unset or unknown.
    pub fn from_env() -> Self {
        match std::env::var("MERGESCOPE_READS").as_deref() {
            Ok("mapped") => Self::Mapped,
            Ok("direct") => Self::Direct,
            _ => Self::Auto,
        }
    }

    /// Whether a stream reading `total_bytes` of inputs, `cached_bytes()` of which are in the
    /// page cache now, reads its uncached tensors directly. `cached_bytes` is only asked
    /// where it decides.
    ///
    /// A cold family read through the page cache costs every page a fresh allocation (on this
    /// project's VM a cold mapped merge took 1.7-3.0 times the I/O floor, directly 1.0-1.7),
    /// and what it leaves cached only pays off if the same family is read again before it is
    /// evicted. Reading a cold family directly makes every run take the disk's time; a warm
    /// one stays mapped and takes none. `MERGESCOPE_READS=mapped` keeps the cache for a user
    /// who reruns one family on a slow disk.
    pub fn direct_for(self, total_bytes: u64, cached_bytes: impl FnOnce() -> u64) -> bool {
        match self {
            Self::Mapped => false,
            Self::Direct => cfg!(target_os = "linux"),
            Self::Auto => {
                cfg!(target_os = "linux")
                    && (available_memory().is_some_and(|available| total_bytes > available / 2)
                        || (total_bytes >= COLD_DIRECT_MIN_BYTES
                            && cached_bytes() < total_bytes / 2))
            }
        }
    }
}

/// `MemAvailable` from `/proc/meminfo`, in bytes: what the kernel could give to the page cache
/// without swapping.
pub(crate) fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The staging memory of one stream. Reusing it is the point: memory this process has already
/// touched costs nothing to fill again, where fresh memory costs a page fault (and on some
/// virtual machines a trap to the host) per page.
///
/// Tensors are staged in slices of one [`Arena`] of the pool's budget, page-aligned as direct
/// I/O wants and asked for transparent huge pages (a fresh page then faults once per 2 MiB
/// rather than per 4 KiB, and the arithmetic reading it misses the TLB less). A tensor the
/// arena cannot hold now (larger than its free ranges) gets a map of its own, freed with it.
#[derive(Clone)]
pub struct StagePool(Arc<Pool>);

struct Pool {
    budget: usize,
    /// Made on first use; `None` if the system refused the map (every tensor then gets its own).
    arena: OnceLock<Option<Arc<Arena>>>,
}

impl std::fmt::Debug for StagePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagePool")
            .field("budget", &self.0.budget)
            .finish_non_exhaustive()
    }
}

impl StagePool {
    /// A pool whose arena holds `budget_bytes`: at most that much staging memory is kept from
    /// tensor to tensor (a stream that needs more at once still gets it, for the time it
    /// needs it).
    pub fn new(budget_bytes: u64) -> Self {
        Self(Arc::new(Pool {
            budget: usize::try_from(budget_bytes).unwrap_or(usize::MAX),
            arena: OnceLock::new(),
        }))
    }

    fn arena(&self) -> Option<&Arc<Arena>> {
        self.0
            .arena
            .get_or_init(|| Arena::new(self.0.budget).ok())
            .as_ref()
    }

    /// At least `len` bytes (a whole number of pages): a slice of the pool's arena, else an
    /// arena of the tensor's own, unmapped when the tensor is dropped.
    fn take(&self, len: usize) -> io::Result<ArenaSlice> {
        if let Some(slice) = self.arena().and_then(|arena| arena.take(len)) {
            return Ok(slice);
        }
        Ok(Arena::new(len)?
            .take(len)
            .expect("an arena of the tensor's size holds it"))
    }

    /// Bytes of the arena that no staged tensor holds.
    pub fn idle_bytes(&self) -> u64 {
        self.0
            .arena
            .get()
            .and_then(Option::as_ref)
            .map_or(0, |arena| arena.free_bytes() as u64)
    }
}

/// A tensor's bytes read into staging memory, which goes back to its pool when the last view
/// of it is dropped.
pub struct StagedBytes {
    buffer: ArenaSlice,
    /// Where the tensor starts in the buffer (reads start at a page boundary of the file).
    offset: usize,
    len: usize,
}

impl StagedBytes {
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[self.offset..self.offset + self.len]
    }
}

impl std::fmt::Debug for StagedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedBytes")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// A shard file opened for direct reads.
#[derive(Debug)]
pub(crate) struct DirectFile {
    file: File,
}

impl DirectFile {
    /// Opens `path` for direct reads if it is still the file `mapped` was opened from (same
    /// device and inode) and its file system allows direct I/O; `None` otherwise, and the
    /// shard is then read through its map.
    pub(crate) fn open(path: &Path, mapped: &File) -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()?;
            let (now, then) = (file.metadata().ok()?, mapped.metadata().ok()?);
            ((now.dev(), now.ino()) == (then.dev(), then.ino())).then_some(Self { file })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (path, mapped);
            None
        }
    }

    /// Reads bytes `start..start + len` of the file into a buffer from `pool`, blocking until
    /// they are there. A short file (it shrank since it was opened) is an error, as is any
    /// refusal of direct I/O; the caller then reads through the map, whose checks report a
    /// changed file.
    pub(crate) fn read(
        &self,
        start: usize,
        len: usize,
        pool: &StagePool,
    ) -> io::Result<StagedBytes> {
        let first = start / PAGE * PAGE;
        let end = start + len;
        let needed = (end - first).next_multiple_of(PAGE);
        let mut buffer = pool.take(needed)?;
        // A reused buffer may be larger: only what the tensor needs is read.
        let filled = self.read_into(&mut buffer[..needed], first, end);
        let staged = StagedBytes {
            buffer,
            offset: start - first,
            len,
        };
        // On failure `staged` drops here and its memory goes back to the pool.
        filled.map(|()| staged)
    }

    /// Fills `buffer` from file offset `first` until at least `end` is covered.
    fn read_into(&self, buffer: &mut [u8], first: usize, end: usize) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt as _;
            // One call per GiB: the kernel splits each into requests it queues all at once.
            const CALL: usize = 1 << 30;
            let mut done = 0;
            while first + done < end {
                let want = (buffer.len() - done).min(CALL);
                match self
                    .file
                    .read_at(&mut buffer[done..done + want], (first + done) as u64)
                {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if first + done < end {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file ended before the tensor",
                ));
            }
            Ok(())
        }
        #[cfg(not(unix))]
        {
            let _ = (buffer, first, end);
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_of_any_size_reuse_the_arena_and_what_it_cannot_hold_gets_its_own_memory() {
        const P: usize = PAGE;
        let pool = StagePool::new(3 * P as u64);
        let arena_base = |b: &ArenaSlice| {
            Arc::ptr_eq(b.arena(), pool.arena().expect("mapped")).then(|| b.as_ptr())
        };
        let large = pool.take(3 * P).unwrap();
        let base = arena_base(&large).expect("in the arena");
        assert_eq!(pool.idle_bytes(), 0);
        // The arena is full: a tensor arriving now gets memory of its own.
        let own = pool.take(P).unwrap();
        assert_eq!((arena_base(&own), own.len()), (None, P));
        drop(large);
        assert_eq!(pool.idle_bytes(), 3 * P as u64);
        // Smaller tensors of other sizes reuse the same pages rather than fresh ones.
        let (a, b) = (pool.take(P).unwrap(), pool.take(2 * P).unwrap());
        assert_eq!(arena_base(&a), Some(base));
        assert_eq!(arena_base(&b), Some(base.wrapping_add(P)));
        drop((a, b, own));
        // More than the arena holds: its own memory, and the arena stays whole.
        let huge = pool.take(4 * P).unwrap();
        assert_eq!(arena_base(&huge), None);
        assert_eq!(pool.idle_bytes(), 3 * P as u64);
    }

    #[test]
    fn reads_any_unaligned_range_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        let data: Vec<u8> = (0..3 * PAGE + 100).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mapped = File::open(&path).unwrap();
        // tmpfs refuses O_DIRECT: then there is nothing to test here.
        let Some(direct) = DirectFile::open(&path, &mapped) else {
            return;
        };
        let pool = StagePool::new(1 << 20);
        for (start, len) in [(0, 1), (5, PAGE), (PAGE - 1, 2), (2 * PAGE + 3, PAGE + 97)] {
            let staged = direct.read(start, len, &pool).unwrap();
            assert_eq!(staged.bytes(), &data[start..start + len], "{start}+{len}");
        }
        // Past the end of the file: an error, not zeros.
        let err = direct.read(3 * PAGE, 200, &pool).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        // Dropped views gave their memory back.
        assert_eq!(pool.idle_bytes(), 1 << 20);
    }

    #[test]
    fn a_replaced_file_is_not_read_directly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, [1u8; 10]).unwrap();
        let mapped = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, [2u8; 10]).unwrap();
        assert!(DirectFile::open(&path, &mapped).is_none());
    }

    #[test]
    fn modes_from_the_family_size_and_what_is_cached() {
        let linux = cfg!(target_os = "linux");
        assert!(!ReadMode::Mapped.direct_for(u64::MAX, || 0));
        assert_eq!(ReadMode::Direct.direct_for(0, || 0), linux);
        // No machine has four times u64::MAX / 8 of memory; none lacks 1 byte.
        assert_eq!(
            ReadMode::Auto.direct_for(u64::MAX / 2, || u64::MAX / 2),
            linux && available_memory().is_some()
        );
        assert!(!ReadMode::Auto.direct_for(1, || 0));
        // A family that may fit: direct while mostly cold, mapped once mostly cached.
        let fits = available_memory().map_or(COLD_DIRECT_MIN_BYTES, |a| a / 2);
        if fits >= COLD_DIRECT_MIN_BYTES {
            let total = COLD_DIRECT_MIN_BYTES;
            assert_eq!(ReadMode::Auto.direct_for(total, || total / 2 - 1), linux);
            assert!(!ReadMode::Auto.direct_for(total, || total / 2));
            // Small cold families stay mapped, and nobody asks what is cached.
            let small = COLD_DIRECT_MIN_BYTES - 1;
            assert!(!ReadMode::Auto.direct_for(small, || unreachable!()));
        }
    }
}
