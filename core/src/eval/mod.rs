//! Objectives computed on models and merges (DESIGN.md `eval`), and the built-in demo family
//! they are first shown on: a tiny ViT base and four task experts trained with candle on UCI's
//! handwritten digits under four transforms (`assets/`).

pub mod compare;
pub mod demo;
pub mod digits;
pub mod lm;
pub mod model;
pub mod objective;
pub mod preview;
pub mod train;
pub mod vit;

use std::path::PathBuf;

pub use demo::DemoFamily;
pub use digits::Domain;
pub use model::ModelTensors;
pub use objective::{
    Candidate, DemoAccuracy, ExternalCommand, Fidelity, Objective, Retention, Scores,
};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Checkpoint(#[from] crate::CheckpointError),
    #[error("{path} is not a model of the demo family: {reason}")]
    NotDemoModel { path: PathBuf, reason: String },
    #[error("the objective command `{command}` failed: {message}")]
    Command { command: String, message: String },
    #[error("the objective command `{command}` ran past its {seconds:.0} s limit and was stopped")]
    Timeout { command: String, seconds: f64 },
    #[error("the demo model's forward pass failed: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("there is no model to evaluate: give a folder or tensors")]
    NoModel,
    #[error("computing retention failed: {0}")]
    Retention(String),
    #[error("{0}")]
    Lm(String),
}
