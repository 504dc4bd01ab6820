//! The only place mergescope maps files into memory (and so the only `unsafe` in `core`).

#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap, UncheckedAdvice};

/// A read-only memory map of one shard file.
#[derive(Debug)]
pub(crate) struct MappedFile {
    map: Mmap,
}

impl MappedFile {
    pub(crate) fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this process. If another process truncates
        // or rewrites the file while it is mapped, reads may see the new bytes or fault (SIGBUS);
        // that is the documented contract of every memory-mapped safetensors reader (candle,
        // safetensors' own examples). mergescope never writes to a file it has mapped: exports go
        // to a fresh folder that may not overlap any input (`export::guard`).
        let map = unsafe { Mmap::map(&file)? };
        Ok(Self { map })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
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
