//! `ram`: Reinforced Agent Merging (arXiv 2601.13572): a delta only one model makes is kept
//! whole, a delta several models make is averaged over those models, and coordinates no model
//! moves by more than `epsilon` stay at the base. ALGORITHMS.md §2.14.
//!
//! The helpers here are shared with `ramplus_tl`, which differs only in scaling each model's
//! unique deltas. On a GPU merge both run on the CPU: one light pass (two for `ramplus_tl`)
//! with per-element counting that no existing kernel does.

use crate::merge::kernel::{zip_chunks, zip_map};
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct Ram;

/// mergekit's default `epsilon` for both RAM methods.
pub(super) const EPSILON: ParamSpec =
    ParamSpec::shared("epsilon", Kind::Float, Some(Value::Float(1e-5)));

static SPEC: MethodSpec = MethodSpec {
    name: "ram",
    base: BaseUse::Required,
    params: &[EPSILON],
    min_models: 0,
    max_models: None,
};

/// Whether delta `d` counts as a contribution: `|d| > epsilon`, compared in f32 as torch does.
fn moves(d: f32, epsilon: f32) -> bool {
    d.abs() > epsilon
}

/// The base and the models of a RAM merge, the base first (for the chunked kernels).
pub(super) fn inputs_of<'a>(
    inputs: &MethodInputs<'a>,
    method: &str,
) -> Result<Vec<crate::checkpoint::TensorView<'a>>, MethodError> {
    let base = inputs
        .base
        .clone()
        .ok_or_else(|| MethodError(format!("{method} needs a base")))?;
    let mut all = vec![base];
    all.extend(inputs.models.iter().cloned());
    Ok(all)
}

/// Per model, how many elements it moves alone (`unique`) and together with others
/// (`shared`), over the whole tensor: `ramplus_tl`'s tensor-local statistics.
pub(super) fn contribution_counts(
    all: &[crate::checkpoint::TensorView<'_>],
    epsilon: f32,
) -> (Vec<u64>, Vec<u64>) {
    let n_models = all.len() - 1;
    let n = all[0].numel();
    let partials = zip_chunks(all, n, |_, xs| {
        let (b, models) = xs.split_first().expect("base first");
        let mut unique = vec![0u64; n_models];
        let mut shared = vec![0u64; n_models];
        for (e, &be) in b.iter().enumerate() {
            let count = models.iter().filter(|m| moves(m[e] - be, epsilon)).count();
            let tally = if count == 1 { &mut unique } else { &mut shared };
            for (i, m) in models.iter().enumerate() {
                if moves(m[e] - be, epsilon) {
                    tally[i] += 1;
                }
            }
        }
        (unique, shared)
    });
    let mut unique = vec![0u64; n_models];
    let mut shared = vec![0u64; n_models];
    for (u, s) in partials {
        unique.iter_mut().zip(u).for_each(|(t, c)| *t += c);
        shared.iter_mut().zip(s).for_each(|(t, c)| *t += c);
    }
    (unique, shared)
}

/// `base + Σ_i contribution_i` with model i's delta scaled by `unique_scale[i]` where it alone
/// moves, divided by the number of movers where several move, and dropped where it does not
/// move. Terms are added in model order in f32, as torch's sum over the stacked deltas.
pub(super) fn combine(
    all: &[crate::checkpoint::TensorView<'_>],
    epsilon: f32,
    unique_scale: &[f32],
    out: &mut [f32],
) {
    zip_map(all, out, |_, xs, o| {
        let (b, models) = xs.split_first().expect("base first");
        for (e, o) in o.iter_mut().enumerate() {
            let count = models
                .iter()
                .filter(|m| moves(m[e] - b[e], epsilon))
                .count();
            let mut sum = 0f32;
            for (m, &scale) in models.iter().zip(unique_scale) {
                let d = m[e] - b[e];
                if moves(d, epsilon) {
                    sum += if count == 1 {
                        d * scale
                    } else {
                        d / count as f32
                    };
                }
            }
            *o = b[e] + sum;
        }
    });
}

impl MergeMethod for Ram {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let all = inputs_of(inputs, "ram")?;
        let epsilon = inputs.params.shared_f64("epsilon") as f32;
        // Unique deltas are kept whole: ram is ramplus_tl with every boost 1.
        combine(&all, epsilon, &vec![1.0; inputs.models.len()], out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::TensorParams;
    use crate::merge::methods::test_util::merge_1d as run;

    fn epsilon(e: f64) -> TensorParams {
        TensorParams::from_values(vec![("epsilon", Value::Float(e))], vec![])
    }

    #[test]
    fn unique_deltas_stay_whole_and_shared_ones_are_averaged() {
        let base = [1.0, 1.0, 1.0, 1.0];
        // Element 0: only a moves; 1: a and b move; 2: nobody moves beyond epsilon;
        // 3: all three move.
        let a = [2.0, 3.0, 1.0 + 1e-6, 1.5];
        let b = [1.0, 5.0, 1.0, 2.0];
        let c = [1.0, 1.0, 1.0, 4.0];
        let got = run(&Ram, &base, &[&a, &b, &c], &epsilon(1e-5));
        // Shared deltas are divided one by one and added in model order, in f32.
        let all_three = 0.5f32 / 3.0 + 1.0 / 3.0 + 3.0 / 3.0;
        assert_eq!(got, [2.0, 4.0, 1.0, 1.0 + all_three]);
    }

    #[test]
    fn a_zero_task_vector_contributes_nothing() {
        // §1.7: c equals the base, so a's deltas are unique and kept whole, not halved.
        let base = [0.5, -0.25, 2.0];
        let a = [1.5, -1.25, 2.5];
        let got = run(&Ram, &base, &[&a, &base], &epsilon(1e-5));
        assert_eq!(got, a);
        // With no model at all the base comes back.
        assert_eq!(run(&Ram, &base, &[], &epsilon(1e-5)), base);
    }

    #[test]
    fn epsilon_is_a_strict_magnitude_threshold() {
        let base = [0.0, 0.0];
        let a = [0.25, -0.5];
        let b = [0.5, 0.5];
        // |0.25| is not above 0.25, so only b moves element 0; both move element 1.
        let got = run(&Ram, &base, &[&a, &b], &epsilon(0.25));
        assert_eq!(got, [0.5, 0.0]);
    }
}
