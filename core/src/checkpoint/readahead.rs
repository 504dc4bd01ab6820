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

use std::sync::{Condvar, Mutex, PoisonError};

use super::Checkpoint;

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

/// A read-ahead schedule shared by the consumer and the helper thread ([`ReadAhead::run`]).
pub struct ReadAhead<'a> {
    steps: Vec<Step<'a>>,
    bytes: Vec<u64>,
    window: u64,
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for ReadAhead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("steps", &self.steps.len())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl<'a> ReadAhead<'a> {
    /// Reads up to `window` bytes beyond the step being consumed (and always the next step).
    pub fn new(steps: Vec<Step<'a>>, window: u64) -> Self {
        let bytes = steps
            .iter()
            .map(|step| {
                step.iter()
                    .map(|&(c, i)| c.tensors()[i].byte_len() as u64)
                    .sum()
            })
            .collect();
        Self {
            steps,
            bytes,
            window,
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
            for &(checkpoint, index) in step {
                checkpoint.load(index);
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

    /// Runs `consume` with a helper thread reading ahead; the helper stops when `consume`
    /// returns, however it returns.
    pub fn with_helper<T>(&self, consume: impl FnOnce() -> T) -> T {
        struct StopOnDrop<'r, 'a>(&'r ReadAhead<'a>);
        impl Drop for StopOnDrop<'_, '_> {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
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
