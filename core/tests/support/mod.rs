#![allow(dead_code)] // each test binary that includes this module uses a different part of it

//! Tensors held in memory for calling methods directly.

use mergescope_core::checkpoint::{TensorInfo, TensorView};
use mergescope_core::dtype::Dtype;
use mergescope_core::merge::{MergeMethod, MethodInputs, TensorParams, Value};

pub struct Owned {
    pub info: TensorInfo,
    pub bytes: Vec<u8>,
}

impl Owned {
    pub fn new(name: &str, shape: &[usize], values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Self {
            info: TensorInfo {
                name: name.to_owned(),
                dtype: Dtype::F32,
                shape: shape.to_vec(),
                shard: 0,
                start: 0,
                end: values.len() * 4,
            },
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView::new(&self.info, &self.bytes)
    }
}

/// Runs `method` on `base` (optional) and `models` with `params`.
pub fn run(
    method: &dyn MergeMethod,
    base: Option<&Owned>,
    models: &[Owned],
    params: &TensorParams,
    seed: u64,
) -> Vec<f32> {
    let n = base.map_or_else(|| models[0].info.numel(), |b| b.info.numel());
    let inputs = MethodInputs {
        tensor: "model.layers.0.mlp.up_proj.weight",
        seed,
        base: base.map(Owned::view),
        models: models.iter().map(Owned::view).collect(),
        params,
    };
    let mut out = vec![f32::NAN; n];
    method.merge(&inputs, &mut out).expect("merge");
    out
}

/// Parameters from (name, value) lists: shared ones and one list per model.
pub fn params(
    shared: &[(&'static str, Value)],
    per_model: &[Vec<(&'static str, Value)>],
) -> TensorParams {
    TensorParams::from_values(shared.to_vec(), per_model.to_vec())
}

pub fn f(x: f64) -> Value {
    Value::Float(x)
}

pub fn b(x: bool) -> Value {
    Value::Bool(x)
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, salt: u64) -> Vec<f32> {
    let mut state = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

pub fn assert_close(got: &[f32], expected: &[f64], rel: f64, what: &str) {
    let scale = expected.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (f64::from(*g) - e).abs() <= rel * scale + rel * e.abs(),
            "{what}[{i}]: got {g}, expected {e}"
        );
    }
}
