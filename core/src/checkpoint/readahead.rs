//! Reading the tensors a stream will need next on a helper thread, so the disk works while
//! the cores compute.
//!
//! `MADV_WILLNEED` alone left a cold merge or analysis waiting on page faults: the hint is
//! advisory and runs one tensor ahead at most. Here a thread walks the same sequence of steps
//! as the consumer and reads each step's tensors into memory ([`Checkpoint::load`]), staying
//! within a byte window of the consumer so memory stays bounded; the consumer releases each
//! step's pages when it is done with them.
//!
//! The consumer waits ([`ReadAhead::wait_loaded`]) until its step is in memory before it
//! starts: its worker threads then never fault on the disk mid-tensor, where one blocked
//! worker left the others idle or spinning (a cold linear merge spent 9.4 CPU-s where a warm
//! one spends 2.8). Only the helper ever waits on the disk, asleep in the kernel.
//!
//! Where the stream reads directly ([`ReadMode`], chosen once per stream), the helper reads each
//! uncached tensor into a staging buffer ([`Checkpoint::stage`]) instead of the page cache; the
//! buffers cycle through one [`StagePool`], and whatever is still staged when the stream ends
//! (cancelled, or failed) is dropped then.

use std::sync::{Condvar, Mutex, PoisonError};

use super::direct::available_memory;
use super::{Checkpoint, ReadMode, StagePool};

/// One step of a stream: the tensors (checkpoint, index) it reads.
pub type Step<'a> = Vec<(&'a Checkpoint, usize)>;

#[derive(Debug, Default)]
struct State {
    /// Steps the consumer has finished.
    consumed: usize,
    /// Steps the helper has read (every step below it is in memory or was skipped).
    loaded: usize,
    /// The helper has returned (or never started): nobody will raise `loaded` any more.
    helper_gone: bool,
    stopped: bool,
}

/// How far ahead of its consumer a stream's helper reads, for the merge engine and the
/// analyses alike: a few tensors, so cold reads overlap the arithmetic without holding much
/// more than the tensor in flight. Half a second of a 1 GB/s disk is plenty ahead of a layer's
/// arithmetic, and direct reads' staging arena (see [`ReadAhead::with_mode`]) grows with the
/// window: 768 MiB held 1.3 GB resident in a cold analysis where 512 MiB held 0.9.
pub const READ_AHEAD_BYTES: u64 = 512 << 20;

/// A read-ahead schedule shared by the consumer and the helper thread ([`ReadAhead::run`]).
pub struct ReadAhead<'a> {
    steps: Vec<Step<'a>>,
    bytes: Vec<u64>,
    window: u64,
    /// The staging buffers, when this stream reads directly.
    pool: Option<StagePool>,
    /// Steps larger than this are read through the maps even in a direct stream: their
    /// buffers could not be paged out under memory pressure, where mapped pages can.
    largest_staged_step: u64,
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for ReadAhead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("steps", &self.steps.len())
            .field("window", &self.window)
            .field("direct", &self.pool.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> ReadAhead<'a> {
    /// Reads up to `window` bytes beyond the step being consumed (and always the next step),
    /// in the [`ReadMode`] that `MERGESCOPE_READS` selects.
    pub fn new(steps: Vec<Step<'a>>, window: u64) -> Self {
        Self::with_mode(steps, window, ReadMode::from_env())
    }

    /// [`new`](Self::new) in the given mode.
    pub fn with_mode(steps: Vec<Step<'a>>, window: u64, mode: ReadMode) -> Self {
        let bytes: Vec<u64> = steps
            .iter()
            .map(|step| {
                step.iter()
                    .map(|&(c, i)| c.tensors()[i].byte_len() as u64)
                    .sum()
            })
            .collect();
        let total = bytes.iter().sum();
        // Direct reads are staged in one arena of half as much again as the window: the
        // window's tensors in flight, the step being consumed (which the window does not
        // count) and room for the free ranges to be apart. A tensor it cannot hold gets
        // memory of its own for as long as it is in flight.
        let cached = || {
            steps
                .iter()
                .flatten()
                .map(|&(c, i)| c.cached_bytes(i))
                .sum()
        };
        let pool = mode
            .direct_for(total, cached)
            .then(|| StagePool::new(window + window / 2));
        let largest_staged_step = available_memory().map_or(u64::MAX, |available| available / 4);
        Self {
            steps,
            bytes,
            window,
            pool,
            largest_staged_step,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// May step `s` be read while the consumer has finished `consumed` steps?
    fn allowed(&self, s: usize, consumed: usize) -> bool {
        s <= consumed + 1 || self.bytes[consumed..=s].iter().sum::<u64>() <= self.window
    }

    /// The helper thread's body: reads every step in order, within the window, until the
    /// end or [`stop`](Self::stop).
    pub fn run(&self) {
        struct GoneOnDrop<'r, 'a>(&'r ReadAhead<'a>);
        impl Drop for GoneOnDrop<'_, '_> {
            fn drop(&mut self) {
                self.0.lock().helper_gone = true;
                self.0.wake.notify_all();
            }
        }
        let _gone = GoneOnDrop(self);
        for (s, step) in self.steps.iter().enumerate() {
            {
                let mut state = self.lock();
                while !state.stopped && !self.allowed(s, state.consumed) {
                    state = self
                        .wake
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.stopped || s < state.consumed {
                    // Stopped, or the consumer got here first: nothing to gain.
                    if state.stopped {
                        return;
                    }
                    continue;
                }
            }
            let pool = self
                .pool
                .as_ref()
                .filter(|_| self.bytes[s] <= self.largest_staged_step);
            let read = |&(checkpoint, index): &(&Checkpoint, usize)| {
                if !pool.is_some_and(|pool| checkpoint.stage(index, pool)) {
                    checkpoint.load(index);
                }
            };
            if pool.is_some() && step.len() > 1 {
                // The step's tensors are read at once, one thread each: a single stream of
                // direct reads left the disk's queue too shallow to reach its speed.
                std::thread::scope(|scope| {
                    for tensor in step {
                        scope.spawn(|| read(tensor));
                    }
                });
            } else {
                step.iter().for_each(read);
            }
            self.lock().loaded = s + 1;
            self.wake.notify_all();
        }
    }

    /// Blocks until step `s` is in memory (or the helper is gone, when the consumer reads it
    /// itself).
    pub fn wait_loaded(&self, s: usize) {
        let mut state = self.lock();
        while state.loaded <= s && !state.helper_gone && !state.stopped {
            state = self
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The consumer finished step `s`.
    pub fn done(&self, s: usize) {
        self.lock().consumed = s + 1;
        self.wake.notify_all();
    }

    /// Ends [`run`](Self::run) early (on cancellation or an error).
    pub fn stop(&self) {
        self.lock().stopped = true;
        self.wake.notify_all();
    }

    /// Whether uncached tensors are read directly into staging buffers.
    pub fn is_direct(&self) -> bool {
        self.pool.is_some()
    }

    /// Runs `consume` with a helper thread reading ahead; the helper stops when `consume`
    /// returns, however it returns, and the tensors it staged for steps never consumed are
    /// dropped.
    pub fn with_helper<T>(&self, consume: impl FnOnce() -> T) -> T {
        struct StopOnDrop<'r, 'a>(&'r ReadAhead<'a>);
        impl Drop for StopOnDrop<'_, '_> {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        struct UnstageOnDrop<'r, 'a>(&'r ReadAhead<'a>);
        impl Drop for UnstageOnDrop<'_, '_> {
            fn drop(&mut self) {
                if self.0.pool.is_none() {
                    return;
                }
                let consumed = self.0.lock().consumed;
                for step in self.0.steps.iter().skip(consumed) {
                    for &(checkpoint, index) in step {
                        checkpoint.unstage(index);
                    }
                }
            }
        }
        // Dropped after the scope has joined the helper, so nothing is staged behind it.
        let _unstage = UnstageOnDrop(self);
        std::thread::scope(|scope| {
            // Without the helper the stream still works, only slower.
            let helper = std::thread::Builder::new()
                .name("mergescope-readahead".to_owned())
                .spawn_scoped(scope, || self.run());
            if helper.is_err() {
                self.lock().helper_gone = true;
            }
            let _stop = StopOnDrop(self);
            consume()
        })
    }
}
