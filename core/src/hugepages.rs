//! Asking the kernel to back a large buffer (heap or anonymous map) with transparent huge pages.
//!
//! A fresh buffer is faulted in page by page as it is first written: 4 KiB at a time that is a
//! trap per 4 KiB, and on this project's VM the traps of a warm linear merge's new output
//! buffers cost a tenth of its time. With `MADV_HUGEPAGE` (where the system's THP mode is
//! `madvise`, the usual default) the same buffer faults once per 2 MiB. Only a hint: where it
//! is refused, or on other systems, the buffer works the same.
#![allow(unsafe_code)]

/// Buffers smaller than this gain little and are often not 2 MiB aligned anywhere.
const MIN_BYTES: usize = 4 << 20;

/// Hints that `buffer`'s whole 2 MiB pages should be huge pages. Call it before the first
/// write, so the first faults already take whole huge pages.
pub(crate) fn advise<T: bytemuck::Pod>(buffer: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buffer);
        if bytes.len() < MIN_BYTES {
            return;
        }
        let start = bytes.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = (start + bytes.len()) / HUGE * HUGE;
        if end <= aligned {
            return;
        }
        // SAFETY: `aligned..end` lies inside `buffer`, which this call borrows mutably, and
        // MADV_HUGEPAGE changes only how its pages are backed, never their contents.
        let _ = unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buffer;
}
