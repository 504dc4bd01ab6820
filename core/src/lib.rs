//! mergescope's engine: everything that is not pixels.
//!
//! Checkpoints on disk flow tensor by tensor through one engine that either measures them or
//! combines them. This crate holds that engine:
//!
//! - [`analysis`]: sensitivity, interference and spectra of task vectors;
//! - [`backend`]: where the arithmetic runs: the CPU or a GPU through wgpu;
//! - [`checkpoint`]: memory-mapped `.safetensors` files, shards and Hugging Face folders;
//! - [`family`]: a base and N models aligned by tensor name;
//! - [`layout`]: tensor names parsed into layers and modules;
//! - [`merge`]: recipes, methods, the planner and the streamed executor;
//! - [`pareto`]: preferences, fronts, hypervolume and the surrogate-assisted search;
//! - [`eval`]: objectives (the demo family's accuracy, an external command) and the demo family;
//! - [`export`]: atomic, sharded Hugging Face folders;
//! - [`job`]: progress and cancellation for every long operation;
//! - [`nonfinite`]: NaN and ±Inf in weights, found and reported;
//! - [`sweep`]: XY parameter sweeps: a recipe's parameters over a grid, each cell merged and scored;
//! - [`synth`]: synthetic model families (demo, tests, benchmarks).

pub mod analysis;
pub mod backend;
pub mod checkpoint;
pub mod dtype;
pub mod eval;
pub mod export;
pub mod family;
mod hugepages;
pub mod job;
pub mod layout;
pub mod leaderboard;
pub mod lora;
pub mod merge;
pub mod nonfinite;
pub mod pareto;
pub mod smile;
pub mod sweep;
pub mod synth;
pub mod test_time;

pub use checkpoint::{CHANGED_ON_DISK, Checkpoint, CheckpointError};
pub use job::{CancelToken, Job, Progress};

/// Joins a multi-line message into one line: every user-facing error is promised as one line
/// (YAML parse errors, for instance, quote the source over several lines).
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the unit tests share.
#[cfg(test)]
pub(crate) mod test_support {
    use candle_core::Tensor;

    /// The largest absolute difference between two tensors of one shape.
    pub fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
