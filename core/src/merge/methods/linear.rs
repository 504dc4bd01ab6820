//! `linear`: a weighted average of the inputs (Model Soups, Wortsman et al. 2022).
//! ALGORITHMS.md §2.4.

use crate::backend::{Backend, Cpu};
use crate::dtype::TensorBytes;
use crate::merge::{
    BaseUse, Kind, MergeMethod, MethodError, MethodInputs, MethodSpec, ParamSpec, TensorParams,
    Value,
};

#[derive(Debug)]
pub struct Linear;

static SPEC: MethodSpec = MethodSpec {
    name: "linear",
    base: BaseUse::Ignored,
    params: &[
        ParamSpec::per_input("weight", Kind::Float, None),
        ParamSpec::shared("normalize", Kind::Bool, Some(Value::Bool(true))),
    ],
    min_models: 1,
    max_models: None,
};

impl Linear {
    /// Weights rounded to f32, as mergekit rounds them before multiplying.
    fn weights(params: &TensorParams) -> Vec<f32> {
        (0..params.model_count())
            .map(|i| params.model_f64(i, "weight") as f32)
            .collect()
    }

    /// The weights, and their sum when they are normalised.
    fn weights_and_divisor(params: &TensorParams) -> (Vec<f32>, Option<f32>) {
        let weights = Self::weights(params);
        let divisor = params
            .shared_bool("normalize")
            .then(|| weights.iter().sum::<f32>());
        (weights, divisor)
    }
}

impl MergeMethod for Linear {
    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn is_elementwise(&self) -> bool {
        true
    }

    fn check(&self, params: &TensorParams) -> Result<(), String> {
        let sum: f32 = Self::weights(params).iter().sum();
        if params.shared_bool("normalize") && sum == 0.0 {
            // mergekit divides by zero here and writes inf/NaN; refusing is the documented deviation.
            return Err("the weights sum to 0, so normalizing divides by zero; change a weight or set `normalize: false`".to_owned());
        }
        Ok(())
    }

    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        self.merge_on(&Cpu, inputs, out)
    }

    fn merge_on(
        &self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        out: &mut [f32],
    ) -> Result<(), MethodError> {
        let (weights, divisor) = Self::weights_and_divisor(inputs.params);
        backend.weighted_sum(&inputs.models, &weights, divisor, out)?;
        Ok(())
    }

    fn merge_encoded(
        &self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        work: &mut Vec<f32>,
        out: &mut TensorBytes,
    ) -> Option<Result<u64, MethodError>> {
        let (weights, divisor) = Self::weights_and_divisor(inputs.params);
        Some(
            backend
                .weighted_sum_encoded(&inputs.models, &weights, divisor, work, out)
                .map_err(MethodError::from),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::methods::test_util::{f32_bytes, info, view};

    fn params(weights: &[f64], normalize: bool) -> TensorParams {
        TensorParams::from_values(
            vec![("normalize", Value::Bool(normalize))],
            weights
                .iter()
                .map(|w| vec![("weight", Value::Float(*w))])
                .collect(),
        )
    }

    #[test]
    fn weighted_mean_of_inputs() {
        let n = 40_000; // several chunks
        let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| -(i as f32) * 0.5).collect();
        let (ia, ib) = (info("a", n), info("b", n));
        let (ba, bb) = (f32_bytes(&a), f32_bytes(&b));
        let p = params(&[3.0, 1.0], true);
        let inputs = MethodInputs {
            tensor: "t",
            seed: 0,
            base: None,
            models: vec![view(&ia, &ba), view(&ib, &bb)],
            params: &p,
        };
        let mut out = vec![0.0; n];
        Linear.merge(&inputs, &mut out).unwrap();
        for i in [0, 1, 16_384, n - 1] {
            let expected = (3.0 * a[i] + b[i]) / 4.0;
            assert!(
                (out[i] - expected).abs() <= 1e-6 * expected.abs().max(1.0),
                "{i}"
            );
        }
    }

    #[test]
    fn merging_a_model_with_itself_gives_it_back() {
        let a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let ia = info("a", a.len());
        let ba = f32_bytes(&a);
        let p = params(&[0.3, 0.7], true);
        let inputs = MethodInputs {
            tensor: "t",
            seed: 0,
            base: None,
            models: vec![view(&ia, &ba), view(&ia, &ba)],
            params: &p,
        };
        let mut out = vec![0.0; a.len()];
        Linear.merge(&inputs, &mut out).unwrap();
        for (o, x) in out.iter().zip(&a) {
            assert!((o - x).abs() <= 2.0 * f32::EPSILON * x.abs());
        }
    }

    #[test]
    fn refuses_zero_weight_sum_when_normalizing() {
        assert!(Linear.check(&params(&[1.0, -1.0], true)).is_err());
        assert!(Linear.check(&params(&[1.0, -1.0], false)).is_ok());
    }
}
