//! One anonymous map that a stream's direct reads are staged in, carved into disjoint slices.
//!
//! Staging each tensor in a map of its own made every tensor whose shape had no idle buffer
//! left a fresh map, and fresh memory is what a cold merge paid for most besides its
//! arithmetic: the kernel zeroes each page on its first touch, and on a VM whose hypervisor
//! takes freed memory back that touch also traps to the host. A cold ties merge of four
//! 1.67 GB models faulted in 1.5 GB of staging buffers, 29 % of its CPU time in
//! `clear_page_erms`, because the embeddings' 125 MiB buffers fitted no layer tensor and were
//! freed to make room, and the output head needed them again at the end. Carved from one map,
//! a slice of any size reuses pages that earlier tensors touched, so a stream faults in at
//! most the arena, once.
//!
//! The only `unsafe` here makes a slice's bytes from the map's base pointer; the allocator
//! keeps live slices disjoint, which is what makes that sound.
#![allow(unsafe_code)]

use std::io;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, PoisonError};

use memmap2::{MmapMut, MmapOptions};

/// Slices start on page boundaries, as direct I/O wants of memory.
const ALIGN: usize = 4096;

/// The map and the free ranges in it.
pub(crate) struct Arena {
    /// Owns the memory that `base` points into; never touched through itself.
    _map: MmapMut,
    base: NonNull<u8>,
    /// Free byte ranges, sorted, disjoint and never adjacent (adjacent ones are merged).
    free: Mutex<Vec<Range<usize>>>,
}

// SAFETY: the map is plain memory owned by the arena, and its bytes are reached only through
// `ArenaSlice`s, which the free list keeps disjoint: no two threads ever see the same byte
// unless through shared references.
unsafe impl Send for Arena {}
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena of `len` bytes (rounded up to whole pages). Its pages are faulted in as slices
    /// first use them, so an arena larger than the stream ever needs costs nothing.
    pub(crate) fn new(len: usize) -> io::Result<Arc<Self>> {
        let len = len.max(1).next_multiple_of(ALIGN);
        let mut map = MmapOptions::new().len(len).map_anon()?;
        crate::hugepages::advise(&mut map[..]);
        let base = NonNull::new(map.as_mut_ptr()).expect("a map is never at address 0");
        Ok(Arc::new(Self {
            _map: map,
            base,
            // One free range: the whole arena.
            free: Mutex::new(std::iter::once(0..len).collect()),
        }))
    }

    /// A slice of `len` bytes (rounded up to whole pages) starting on a page boundary, from
    /// the first free range that holds it; `None` when none does.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> Option<ArenaSlice> {
        let len = len.max(1).next_multiple_of(ALIGN);
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let i = free.iter().position(|r| r.len() >= len)?;
        let start = free[i].start;
        free[i].start += len;
        if free[i].is_empty() {
            free.remove(i);
        }
        Some(ArenaSlice {
            arena: Arc::clone(self),
            range: start..start + len,
        })
    }

    /// Bytes not held by any slice.
    pub(crate) fn free_bytes(&self) -> usize {
        let free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        free.iter().map(Range::len).sum()
    }

    fn give_back(&self, range: Range<usize>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let i = free.partition_point(|r| r.start < range.start);
        let joins_previous = i > 0 && free[i - 1].end == range.start;
        let joins_next = i < free.len() && free[i].start == range.end;
        match (joins_previous, joins_next) {
            (true, true) => {
                free[i - 1].end = free[i].end;
                free.remove(i);
            }
            (true, false) => free[i - 1].end = range.end,
            (false, true) => free[i].start = range.start,
            (false, false) => free.insert(i, range),
        }
    }
}

/// Bytes of an [`Arena`] that no other live slice overlaps; they go back to the arena's free
/// ranges when the slice is dropped.
pub(crate) struct ArenaSlice {
    arena: Arc<Arena>,
    range: Range<usize>,
}

impl ArenaSlice {
    /// The arena this slice was carved from.
    #[cfg(test)]
    pub(crate) fn arena(&self) -> &Arc<Arena> {
        &self.arena
    }
}

impl std::ops::Deref for ArenaSlice {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `range` lies inside the map, which `arena` keeps alive, and no other live
        // slice overlaps it (`Arena::take` hands out only free ranges; a range is free again
        // only once this slice is dropped), so nothing writes these bytes while `self` is
        // borrowed. Anonymous memory is zeroed before first use, so every byte is initialised.
        unsafe {
            std::slice::from_raw_parts(
                self.arena.base.as_ptr().add(self.range.start),
                self.range.len(),
            )
        }
    }
}

impl std::ops::DerefMut for ArenaSlice {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `deref`; `&mut self` makes this the only borrow of the range.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.arena.base.as_ptr().add(self.range.start),
                self.range.len(),
            )
        }
    }
}

impl Drop for ArenaSlice {
    fn drop(&mut self) {
        self.arena.give_back(self.range.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_disjoint_pages_and_freed_ranges_merge() {
        let arena = Arena::new(4 * ALIGN).unwrap();
        let mut a = arena.take(1).unwrap();
        let mut b = arena.take(ALIGN + 1).unwrap();
        assert_eq!((a.len(), b.len()), (ALIGN, 2 * ALIGN));
        a.fill(1);
        b.fill(2);
        assert!(a.iter().all(|&x| x == 1) && b.iter().all(|&x| x == 2));
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        // One page is left: two do not fit until a slice is dropped.
        assert!(arena.take(2 * ALIGN).is_none());
        assert_eq!(arena.free_bytes(), ALIGN);
        drop(a);
        // The first page and the last are free but apart.
        assert!(arena.take(2 * ALIGN).is_none());
        drop(b);
        // Now all four pages are one range again, and their bytes are the ones written.
        let whole = arena.take(4 * ALIGN).unwrap();
        assert_eq!(whole[..ALIGN], [1; ALIGN]);
        assert_eq!(whole[ALIGN..3 * ALIGN], [2; 2 * ALIGN]);
        assert!(arena.take(1).is_none());
        drop(whole);
        assert_eq!(arena.free_bytes(), 4 * ALIGN);
    }

    #[test]
    fn ranges_freed_out_of_order_merge_with_both_neighbours() {
        let arena = Arena::new(3 * ALIGN).unwrap();
        let slices: Vec<_> = (0..3).map(|_| arena.take(ALIGN).unwrap()).collect();
        let [first, middle, last] = <[_; 3]>::try_from(slices).ok().unwrap();
        drop(last);
        drop(first);
        assert!(arena.take(2 * ALIGN).is_none());
        drop(middle);
        assert!(arena.take(3 * ALIGN).is_some());
    }

    #[test]
    fn a_slice_keeps_its_memory_alive_after_the_arena_handle_is_gone() {
        let arena = Arena::new(ALIGN).unwrap();
        let mut slice = arena.take(ALIGN).unwrap();
        drop(arena);
        slice.fill(7);
        assert!(slice.iter().all(|&x| x == 7));
    }
}
