//! Pareto exploration of merges (PARETO.md): objectives with a direction, preferences on the
//! simplex, dominance, exact hypervolume, Tchebycheff scalarisation, a quadratic surrogate,
//! the surrogate-assisted search over merge coefficients, and maps from a preference to
//! coefficients.

pub mod evaluate;
pub mod front;
pub mod hypervolume;
pub mod map;
pub mod objective;
pub mod report;
pub mod router;
pub mod scalarize;
pub mod search;
pub mod simplex;
pub mod space;
pub mod surrogate;

pub use evaluate::{Evaluation, Evaluator, MergeEvaluator, ObjectiveKind, Target};
pub use map::{MapKind, PreferenceMap, RouterSettings};
pub use objective::{Direction, Normalisation, ObjectiveSpec};
pub use search::{Outcome, Point, Round, SearchEvent, SearchSettings, Source, search};
pub use space::DecisionSpace;

/// Why a Pareto search, a map or an evaluation could not go on.
#[derive(Debug, thiserror::Error)]
pub enum ParetoError {
    /// A setting or an input outside what the search accepts; the message says which and the
    /// allowed range.
    #[error("{0}")]
    Settings(String),
    /// A point could not be merged or scored.
    #[error("evaluation failed: {0}")]
    Evaluation(String),
    #[error("the surrogate could not be fitted: {0}")]
    Surrogate(String),
    #[error("{path}: {message}")]
    MapFile {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("training the router failed: {0}")]
    Router(String),
    #[error("cancelled")]
    Cancelled,
}
