//! `arcee_fusion`: keep the other model's deltas only where they matter most — where the
//! delta's size times the row's KL divergence (softmax of the other model against softmax of
//! the base, along the last axis) reaches the tensor's outlier threshold, median + 1.5 IQR.
//! ALGORITHMS.md §2.13.
//!
//! mergekit computes the importance in the compute dtype and its selection follows that
//! dtype's rounding: in bf16 the KL divergence of two nearly equal softmaxes is mostly rounding,
//! and the kept set differs from an f32 one on a tenth of the elements. So this method rounds
//! to the planned compute type after every operation where torch does (inputs, softmax, each
//! elementwise step, the row sums, the threshold); in f32 the rounding is the identity.
//!
//! On a GPU merge this runs on the CPU: per-row softmaxes and a quantile selection over the
//! whole tensor, which no GPU kernel here does.

use crate::dtype::FloatType;
use crate::merge::kernel::{zip_map, zip_rows};
use crate::merge::rng::ElementRng;
use crate::merge::{
    BaseUse, MergeMethod, MethodError, MethodInputs, MethodSpec, MissingPolicy, rounding,
};

#[derive(Debug)]
pub struct ArceeFusion;

static SPEC: MethodSpec = MethodSpec {
    name: "arcee_fusion",
    base: BaseUse::Required,
    params: &[],
    min_models: 1,
    max_models: Some(1),
};

/// mergekit estimates the quantiles of larger tensors from this many importance values, drawn
/// uniformly with replacement (so those merges are random; here, seeded per tensor).
const QUANTILE_SAMPLE: usize = 1_000_000;

/// Added to both softmaxes before the KL divergence, as in mergekit.
const SOFTMAX_EPS: f32 = 1e-8;

/// The maximum of one row and the reciprocal of its `Σ exp(x - max)`: torch's softmax
/// multiplies by the reciprocal. The KL divergence of two close softmaxes is a small
/// difference that moves with every error in their normalisation (a relative error η in a
/// row's sum shifts its KL by about η), so the sum is accumulated in f64 as torch's vectorised
/// sum nearly is: a plain f32 running sum flipped three times as many selections.
fn softmax_terms(x: impl Iterator<Item = f32> + Clone) -> (f32, f32) {
    let max = x.clone().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = x.map(|v| f64::from((v - max).exp())).sum();
    (max, 1.0 / sum as f32)
}

/// Importance `|b - a| · KL(softmax(b) ‖ softmax(a))` of one row, into `out`.
fn row_importance(a: &[f32], b: &[f32], round: fn(f32) -> f32, out: &mut [f32]) {
    let (a_max, a_inv) = softmax_terms(a.iter().map(|&v| round(v)));
    let (b_max, b_inv) = softmax_terms(b.iter().map(|&v| round(v)));
    let kl: f64 = a
        .iter()
        .zip(b)
        .map(|(&a, &b)| {
            let p = round(round((round(b) - b_max).exp() * b_inv) + SOFTMAX_EPS);
            let q = round(round((round(a) - a_max).exp() * a_inv) + SOFTMAX_EPS);
            f64::from(round(p * round(round(p / q).ln())))
        })
        .sum();
    let kl = round(kl as f32);
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = round(round(round(b) - round(a)).abs() * kl);
    }
}

/// `median + 1.5 · (q3 − q1)` of `importance` (or of a seeded sample of it with replacement
/// when it holds more than `limit` values), quantiles taken as mergekit does:
/// `sorted[int(p · (len − 1))]`, with the arithmetic rounded to the compute type.
fn threshold(importance: &[f32], limit: usize, rng: &ElementRng, round: fn(f32) -> f32) -> f32 {
    let n = importance.len();
    let mut sample: Vec<f32> = if n > limit {
        // Two words per draw: a 64-bit fraction of n picks the index without modulo bias.
        let mut words = vec![0u32; 2 * limit];
        rng.fill_words(0, &mut words);
        words
            .chunks_exact(2)
            .map(|w| {
                let fraction = u64::from(w[0]) << 32 | u64::from(w[1]);
                importance[((u128::from(fraction) * n as u128) >> 64) as usize]
            })
            .collect()
    } else {
        importance.to_vec()
    };
    let last = sample.len() - 1;
    let mut quantile = |p: f32| {
        // torch multiplies the f32 quantiles by len − 1 and truncates.
        let k = (p * last as f32) as usize;
        *sample.select_nth_unstable_by(k, f32::total_cmp).1
    };
    let (q1, median, q3) = (quantile(0.25), quantile(0.5), quantile(0.75));
    round(median + round(1.5 * round(q3 - q1)))
}

impl MergeMethod for ArceeFusion {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn when_missing(&self) -> MissingPolicy {
        MissingPolicy::CopySingle
    }

    /// mergekit multiplies by an f32 mask, which promotes a half-precision result to f32.
    fn result_type(&self, compute: FloatType) -> FloatType {
        FloatType::promote(compute, FloatType::F32)
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let (Some(a), [b]) = (inputs.base.clone(), inputs.models.as_slice()) else {
            return Err(MethodError(
                "arcee_fusion needs the base and exactly one other model".to_owned(),
            ));
        };
        if out.is_empty() {
            return Ok(());
        }
        let round = rounding(inputs.params.compute_type());
        // A 0-d or 1-D tensor is one row.
        let row = a.shape.last().copied().unwrap_or(1);
        let pair = [a, b.clone()];
        zip_rows(&pair, out, row, |xs, o| {
            for ((a, b), o) in xs[0]
                .chunks(row)
                .zip(xs[1].chunks(row))
                .zip(o.chunks_mut(row))
            {
                row_importance(a, b, round, o);
            }
        });
        let rng = ElementRng::new(inputs.seed, inputs.tensor, 0);
        let threshold = threshold(out, QUANTILE_SAMPLE, &rng, round);
        // `out` holds the importance; the result replaces it element by element.
        zip_map(&pair, out, |_, xs, o| {
            for ((&a, &b), o) in xs[0].iter().zip(xs[1]).zip(o) {
                let a = round(a);
                // base + delta · mask, in f32 (the mask is f32): the delta rounded first.
                let keep = *o >= threshold;
                *o = if keep { a + round(round(b) - a) } else { a };
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TensorInfo;
    use crate::dtype::Dtype;
    use crate::merge::TensorParams;
    use crate::merge::methods::test_util::{f32_bytes, view};

    fn run(shape: &[usize], base: &[f32], other: &[f32], params: &TensorParams) -> Vec<f32> {
        let info = |name: &str| TensorInfo {
            name: name.to_owned(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            shard: 0,
            start: 0,
            end: base.len() * 4,
        };
        let (ia, ib) = (info("a"), info("b"));
        let (ba, bb) = (f32_bytes(base), f32_bytes(other));
        let inputs = MethodInputs {
            tensor: "t",
            seed: 0,
            base: Some(view(&ia, &ba)),
            models: vec![view(&ib, &bb)],
            params,
        };
        let mut out = vec![f32::NAN; base.len()];
        ArceeFusion.merge(&inputs, &mut out).unwrap();
        out
    }

    #[test]
    fn only_outlying_deltas_are_kept() {
        // One row: the KL factor is common, so importance ranks as |delta|. Sorted deltas
        // 0, 0.25, 0.5, 0.75, 4 give q1 = 0.25, median = 0.5, q3 = 0.75 (times the factor) and
        // a threshold of 0.5 + 1.5 · 0.5 = 1.25: only the 4 is an outlier.
        let base = [1.0, 2.0, 3.0, 4.0, 5.0];
        let other = [1.0, 2.25, 3.5, 4.75, 9.0];
        let got = run(&[5], &base, &other, &TensorParams::default());
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 9.0]);
    }

    #[test]
    fn a_row_shifted_by_a_constant_has_no_importance() {
        // Softmax ignores a constant shift, so row 0's large deltas have KL 0 and stay at the
        // base. Row 1's importance is k · [1, 2, 3, 4]; sorted with row 0's zeros the quartiles
        // are 0, 0 and 2k, so the threshold is 3k: the last two deltas of row 1 are kept.
        let base = [0.0; 8];
        let other = [5.0, 5.0, 5.0, 5.0, 1.0, 2.0, 3.0, 4.0];
        let got = run(&[2, 4], &base, &other, &TensorParams::default());
        assert_eq!(got, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]);
    }

    #[test]
    fn a_zero_task_vector_gives_the_base() {
        // §1.7: no delta, KL 0, every importance 0 = the threshold: all "kept", all zero.
        let base = [0.5, -1.5, 2.0, 0.25];
        let got = run(&[2, 2], &base, &base, &TensorParams::default());
        assert_eq!(got, base);
    }

    #[test]
    fn bf16_rounds_the_inputs_and_the_delta() {
        // Computed in bf16 (a recipe's `dtype: bfloat16` on f32 checkpoints), the inputs are
        // rounded to bf16 and the kept delta too; the sum is in f32, as mergekit's f32 mask
        // promotes it. Only the last element moves, so the threshold is 0 and all are kept.
        let base = [1.0 + 1.0 / 512.0, 2.0, 3.0, 4.0, 1.0 + 1.0 / 128.0];
        let other = [1.0, 2.0, 3.0, 4.0, 300.0];
        let params = TensorParams::default().computed_in(FloatType::BF16);
        let got = run(&[5], &base, &other, &params);
        // 1 + 1/512 rounds to 1 (a tie, to even); the delta 298.99… rounds to 298 in bf16.
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 299.0 + 1.0 / 128.0]);
        assert_eq!(ArceeFusion.result_type(FloatType::BF16), FloatType::F32);
    }

    #[test]
    fn large_tensors_take_their_quantiles_from_a_seeded_sample() {
        // 0..100000 with a sample of 20000: the quartiles land near 25k, 50k and 75k.
        let values: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let rng = ElementRng::new(3, "t", 0);
        let t = threshold(&values, 20_000, &rng, |x| x);
        let exact = 50_000.0 + 1.5 * 50_000.0;
        assert!((t - exact).abs() < 0.03 * exact, "{t}");
        assert_eq!(t, threshold(&values, 20_000, &rng, |x| x));
        let other = threshold(&values, 20_000, &ElementRng::new(4, "t", 0), |x| x);
        assert_ne!(t, other);
    }

    #[test]
    fn a_tensor_over_the_sample_size_merges_from_its_seeded_sample() {
        // 1100 rows of 1000: more than QUANTILE_SAMPLE elements, so the threshold comes from a
        // sample; the kept fraction stays within a percent of the exact threshold's. Cubed
        // uniform deltas have a tail beyond median + 1.5 IQR (about a tenth of them).
        let (rows, cols) = (1100, 1000);
        let hash = |i: usize| ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as f32;
        let base: Vec<f32> = (0..rows * cols).map(|i| hash(i) / 16_777_216.0).collect();
        let other: Vec<f32> = (0..rows * cols)
            .map(|i| base[i] + (hash(i + 7) / 16_777_216.0 - 0.5).powi(3))
            .collect();
        let merged = |seed: u64| {
            let info = |name: &str| TensorInfo {
                name: name.to_owned(),
                dtype: Dtype::F32,
                shape: vec![rows, cols],
                shard: 0,
                start: 0,
                end: rows * cols * 4,
            };
            let (ia, ib) = (info("a"), info("b"));
            let (ba, bb) = (f32_bytes(&base), f32_bytes(&other));
            let params = TensorParams::default();
            let inputs = MethodInputs {
                tensor: "t",
                seed,
                base: Some(view(&ia, &ba)),
                models: vec![view(&ib, &bb)],
                params: &params,
            };
            let mut out = vec![0.0; rows * cols];
            ArceeFusion.merge(&inputs, &mut out).unwrap();
            out.iter().zip(&base).filter(|(o, b)| o != b).count() as f64 / (rows * cols) as f64
        };
        let mut importance = vec![0.0; rows * cols];
        for ((a, b), o) in base
            .chunks(cols)
            .zip(other.chunks(cols))
            .zip(importance.chunks_mut(cols))
        {
            row_importance(a, b, |x| x, o);
        }
        let exact = threshold(&importance, usize::MAX, &ElementRng::new(0, "t", 0), |x| x);
        let exact =
            importance.iter().filter(|&&v| v >= exact).count() as f64 / importance.len() as f64;
        let (first, again) = (merged(1), merged(1));
        assert_eq!(first, again, "the same seed keeps the same deltas");
        assert!(
            exact > 0.001 && (first - exact).abs() < 0.01 * exact.max(0.01),
            "{first} vs {exact}"
        );
    }
}
