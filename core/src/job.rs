//! Progress reporting and cancellation for long operations.
//!
//! Every long operation in `core` takes a [`Job`]: it reports how far it got through
//! [`Progress`] and stops at the next safe point once its [`CancelToken`] is cancelled. Both are
//! cheap shared handles, so a UI thread or a CLI progress bar polls them while a worker runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A flag that asks a running operation to stop. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Asks every operation holding a clone of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) has been called on any clone.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Work done so far, in bytes, and a short text naming the current stage.
/// Clones share the same counters.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<ProgressState>);

#[derive(Default)]
struct ProgressState {
    done: AtomicU64,
    total: AtomicU64,
    stage: Mutex<String>,
    observer: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for ProgressState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressState")
            .field("done", &self.done)
            .field("total", &self.total)
            .field("stage", &self.stage)
            .field("observed", &self.observer.get().is_some())
            .finish()
    }
}

/// A consistent-enough copy of [`Progress`] for display.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub done: u64,
    pub total: u64,
    pub stage: String,
}

impl ProgressSnapshot {
    /// Fraction done in [0, 1]; 0 while the total is unknown.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.done as f64 / self.total as f64).clamp(0.0, 1.0)
        }
    }
}

impl Progress {
    /// Starts a new stage: resets `done` to 0 and sets the total and the stage text.
    pub fn start_stage(&self, stage: impl Into<String>, total: u64) {
        self.set_stage(stage);
        self.0.total.store(total, Ordering::Relaxed);
        self.0.done.store(0, Ordering::Relaxed);
    }

    /// Changes the stage text without touching the counters.
    pub fn set_stage(&self, stage: impl Into<String>) {
        // A poisoned lock only means a writer panicked mid-assignment of a String; the text is
        // still a valid String, so keep using it.
        let mut guard = self
            .0
            .stage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = stage.into();
    }

    pub fn add_done(&self, bytes: u64) {
        self.0.done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(observer) = self.0.observer.get() {
            observer();
        }
    }

    /// Registers a function called, on the working thread, every time work advances: a GUI
    /// passes one that requests a repaint, so it redraws when there is news instead of
    /// polling. Only the first observer registered is kept; returns whether this one was.
    pub fn set_observer(&self, observer: impl Fn() + Send + Sync + 'static) -> bool {
        self.0.observer.set(Box::new(observer)).is_ok()
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let stage = self
            .0
            .stage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        ProgressSnapshot {
            done: self.0.done.load(Ordering::Relaxed),
            total: self.0.total.load(Ordering::Relaxed),
            stage,
        }
    }
}

/// What a long operation receives: where to report progress and how to learn it should stop.
#[derive(Clone, Debug, Default)]
pub struct Job {
    pub progress: Progress,
    pub cancel: CancelToken,
    /// Tensors found to hold NaN or ±Inf while the job ran.
    pub non_finite: crate::nonfinite::NonFiniteLog,
}

impl Job {
    /// `Err(Cancelled)` once the job has been cancelled; call it at safe points.
    pub fn check_cancelled(&self) -> Result<(), Cancelled> {
        if self.cancel.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

/// The operation stopped because its [`CancelToken`] was cancelled. Nothing it was writing is left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cancelled; nothing was written")]
pub struct Cancelled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_cancel_and_progress() {
        let job = Job::default();
        let seen_by_worker = job.clone();
        job.progress.start_stage("merging", 200);
        seen_by_worker.progress.add_done(50);
        assert_eq!(job.progress.snapshot().done, 50);
        assert!((job.progress.snapshot().fraction() - 0.25).abs() < 1e-12);
        assert!(seen_by_worker.check_cancelled().is_ok());
        job.cancel.cancel();
        assert_eq!(seen_by_worker.check_cancelled(), Err(Cancelled));
    }
}
