//! Runs core work on a named worker thread while the calling thread draws a progress bar
//! (only when stderr is a terminal).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use mergescope_core::Job;

/// What the bar counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes read or written, with the rate.
    Bytes,
    /// A sweep's cells.
    Cells,
    /// The method leaderboard's methods.
    Methods,
    /// A test-time merge's optimiser steps.
    Steps,
}

impl Unit {
    fn template(self) -> &'static str {
        match self {
            Self::Bytes => {
                "{spinner} {msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
            Self::Cells => "{spinner} {msg:48!} [{bar:30}] {pos}/{len} cells, eta {eta}",
            Self::Methods => "{spinner} {msg:48!} [{bar:30}] {pos}/{len} methods, eta {eta}",
            Self::Steps => "{spinner} {msg:48!} [{bar:30}] {pos}/{len} steps, eta {eta}",
        }
    }
}

/// [`run_counting`] in bytes.
pub fn run_with_progress<T: Send>(job: &Job, work: impl FnOnce() -> T + Send) -> T {
    run_counting(Unit::Bytes, job, work)
}

/// Runs `work` on a named thread while a bar on stderr (a terminal only) counts `unit`s of
/// the job's progress.
pub fn run_counting<T: Send>(unit: Unit, job: &Job, work: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("mergescope-worker".to_owned())
            .spawn_scoped(scope, work)
            .expect("the OS refused to start a thread");
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(unit.template())
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar
        });
        while !worker.is_finished() {
            if let Some(bar) = &bar {
                let snapshot = job.progress.snapshot();
                bar.set_length(snapshot.total);
                bar.set_position(snapshot.done);
                bar.set_message(snapshot.stage);
            }
            std::thread::sleep(Duration::from_millis(80));
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
