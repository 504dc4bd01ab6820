//! `task_arithmetic`: base + λ · Σ wᵢ τᵢ with τᵢ = θᵢ − θ_base (Ilharco et al. 2023).
//! The plain member of the generalized task arithmetic family, ALGORITHMS.md §2.2–2.3.

use crate::merge::kernel::zip_map;
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, Value,
};

#[derive(Debug)]
pub struct TaskArithmetic;

static SPEC: MethodSpec = MethodSpec {
    name: "task_arithmetic",
    base: BaseUse::Required,
    params: &[
        ParamSpec::per_non_base("weight", Kind::Float, None),
        ParamSpec::shared("normalize", Kind::Bool, Some(Value::Bool(false))),
        ParamSpec::shared("lambda", Kind::Float, Some(Value::Float(1.0))),
        // Memory-only in mergekit; accepted so recipes that set it run unchanged.
        ParamSpec::shared("int8_mask", Kind::Bool, Some(Value::Bool(false))),
    ],
    min_models: 0,
};

impl MergeMethod for TaskArithmetic {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let params = inputs.params;
        let base = inputs
            .base
            .ok_or_else(|| MethodError("task_arithmetic needs a base tensor".to_owned()))?;
        let weights: Vec<f32> = (0..inputs.models.len())
            .map(|i| params.model_f64(i, "weight") as f32)
            .collect();
        let mut scale = params.shared_f64("lambda") as f32;
        if params.shared_bool("normalize") {
            let sum: f32 = weights.iter().sum();
            // Near-zero divisors become 1 (ALGORITHMS.md §1.5).
            let divisor = if sum.abs() < 1e-8 { 1.0 } else { sum };
            scale /= divisor;
        }
        let mut all = Vec::with_capacity(inputs.models.len() + 1);
        all.push(base);
        all.extend(inputs.models.iter().copied());
        zip_map(&all, out, |xs, o| {
            let (b, models) = xs
                .split_first()
                .expect("the base is always the first input");
            o.fill(0.0);
            for (x, &w) in models.iter().zip(&weights) {
                for ((o, &x), &b) in o.iter_mut().zip(x.iter()).zip(b.iter()) {
                    *o += w * (x - b);
                }
            }
            for (o, &b) in o.iter_mut().zip(b.iter()) {
                *o = b + *o * scale;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::TensorParams;
    use crate::merge::methods::test_util::{f32_bytes, info, view};

    fn run(
        base: &[f32],
        models: &[Vec<f32>],
        weights: &[f64],
        normalize: bool,
        lambda: f64,
    ) -> Vec<f32> {
        let params = TensorParams::from_values(
            vec![
                ("normalize", Value::Bool(normalize)),
                ("lambda", Value::Float(lambda)),
                ("int8_mask", Value::Bool(false)),
            ],
            weights
                .iter()
                .map(|w| vec![("weight", Value::Float(*w))])
                .collect(),
        );
        let n = base.len();
        let infos: Vec<_> = (0..=models.len())
            .map(|i| info(&format!("t{i}"), n))
            .collect();
        let bytes: Vec<_> = std::iter::once(base)
            .chain(models.iter().map(Vec::as_slice))
            .map(f32_bytes)
            .collect();
        let inputs = MethodInputs {
            base: Some(view(&infos[0], &bytes[0])),
            models: (1..=models.len())
                .map(|i| view(&infos[i], &bytes[i]))
                .collect(),
            params: &params,
        };
        let mut out = vec![0.0; n];
        TaskArithmetic.merge(&inputs, &mut out).unwrap();
        out
    }

    #[test]
    fn adds_weighted_task_vectors() {
        let base = vec![1.0, 2.0, 3.0];
        let a = vec![2.0, 2.0, 1.0];
        let b = vec![1.0, 4.0, 3.0];
        let out = run(&base, &[a, b], &[0.5, -1.0], false, 1.0);
        assert_eq!(out, vec![1.5, 0.0, 2.0]);
        let scaled = run(&base, &[vec![2.0, 2.0, 1.0]], &[1.0], false, 2.0);
        assert_eq!(scaled, vec![3.0, 2.0, -1.0]);
    }

    #[test]
    fn normalize_divides_by_the_weight_sum_and_zero_sum_is_one() {
        let base = vec![0.0; 2];
        let out = run(
            &base,
            &[vec![2.0, 4.0], vec![4.0, 8.0]],
            &[1.0, 3.0],
            true,
            1.0,
        );
        assert_eq!(out, vec![3.5, 7.0]);
        let out = run(
            &base,
            &[vec![2.0, 4.0], vec![4.0, 8.0]],
            &[1.0, -1.0],
            true,
            1.0,
        );
        assert_eq!(out, vec![-2.0, -4.0]);
    }

    #[test]
    fn no_models_gives_the_base() {
        assert_eq!(run(&[1.0, -2.0], &[], &[], false, 1.0), vec![1.0, -2.0]);
    }
}
