//! NaN and ±Inf in weights: found, named and reported, never a crash.
//!
//! Downloaded checkpoints sometimes hold them (an fp16 overflow during fine-tuning, a bad
//! conversion). Every job keeps working on such inputs and says which tensors held them: the
//! merge in its [`NonFiniteLog`] (a warning line in the CLI, a notice in the GUI), the analysis
//! in its report.

use std::sync::{Arc, Mutex, PoisonError};

use rayon::prelude::*;

use crate::checkpoint::TensorView;
use crate::merge::kernel::zip_chunks;

/// One tensor of one input (or of the result) that held non-finite values.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NonFinite {
    pub tensor: String,
    /// The input's label, or [`RESULT`] when the inputs were finite and the arithmetic
    /// overflowed.
    pub member: String,
    pub count: u64,
}

/// The member named when only the merged result is non-finite.
pub const RESULT: &str = "the merged result (an overflow)";

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` in {} ({})", self.tensor, self.member, self.count)
    }
}

/// How many of `values` are NaN or ±Inf.
pub fn count(values: &[f32]) -> u64 {
    values
        .par_chunks(1 << 16)
        .map(crate::dtype::count_non_finite)
        .sum()
}

/// How many elements of a float tensor are NaN or ±Inf (decoded chunk by chunk).
pub fn count_view(view: TensorView<'_>) -> u64 {
    if view.info.float_type().is_none() {
        return 0;
    }
    let n = view.numel();
    zip_chunks(&[view], n, |_, xs| {
        xs[0].iter().filter(|v| !v.is_finite()).count() as u64
    })
    .into_iter()
    .sum()
}

/// One line for a list of findings: how many tensors, and the first few by name.
pub fn summary(found: &[NonFinite]) -> String {
    const SHOWN: usize = 5;
    let mut tensors: Vec<&str> = found.iter().map(|n| n.tensor.as_str()).collect();
    tensors.dedup();
    let listed = found
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let more = if found.len() > SHOWN {
        format!(" and {} more", found.len() - SHOWN)
    } else {
        String::new()
    };
    format!(
        "{} tensor(s) held non-finite values (NaN or ±Inf): {listed}{more}",
        tensors.len()
    )
}

/// What a job found, shared between the job's threads and whoever shows it.
#[derive(Clone, Debug, Default)]
pub struct NonFiniteLog(Arc<Mutex<Vec<NonFinite>>>);

impl NonFiniteLog {
    pub fn record(&self, found: NonFinite) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(found);
    }

    pub fn snapshot(&self) -> Vec<NonFinite> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nan_and_both_infinities() {
        let mut values = vec![1.0f32; 200_000];
        values[3] = f32::NAN;
        values[70_000] = f32::INFINITY;
        values[199_999] = f32::NEG_INFINITY;
        assert_eq!(count(&values), 3);
        assert_eq!(count(&[0.0, -0.0, f32::MAX, f32::MIN_POSITIVE]), 0);
    }

    #[test]
    fn summarises_in_one_line() {
        let found: Vec<NonFinite> = (0..7)
            .map(|i| NonFinite {
                tensor: format!("t{i}"),
                member: "ft".to_owned(),
                count: 1,
            })
            .collect();
        let line = summary(&found);
        assert!(line.starts_with("7 tensor(s) held non-finite values"));
        assert!(line.contains("`t0` in ft (1)") && line.ends_with("and 2 more"));
        assert!(!line.contains('\n'));
    }
}
