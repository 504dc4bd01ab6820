//! The merge engine: recipes, methods, planning and the streamed execution.
//!
//! A [`recipe::Recipe`] and the checkpoints it names become a [`plan::MergePlan`]: one
//! [`plan::TensorTask`] per output tensor, with every parameter resolved and every input
//! checked before a byte is written. [`engine::execute`] then streams the tasks in the base's
//! file order through the [`MergeMethod`]s into an [`crate::export::Export`].

pub mod engine;
pub mod gta;
pub mod inputs;
pub mod kernel;
pub mod methods;
pub mod params;
pub mod plan;
pub mod ranked;
pub mod recipe;
pub mod rng;
pub mod select;
pub mod slices;
pub mod subspace;
pub mod vocab;

use crate::backend::{Backend, BackendError};
use crate::checkpoint::TensorView;
use crate::dtype::{FloatType, TensorBytes};
pub use params::{Kind, ParamSpec, Scope, TensorParams, Value};

/// Rounding of an f32 to `ty` (to nearest even), applied where torch stores an intermediate
/// result in that type; the identity for F32.
pub(crate) fn rounding(ty: FloatType) -> fn(f32) -> f32 {
    match ty {
        FloatType::F32 => |x| x,
        FloatType::BF16 => |x| half::bf16::from_f32(x).to_f32(),
        FloatType::F16 => |x| half::f16::from_f32(x).to_f32(),
    }
}

/// How a method treats `base_model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseUse {
    /// The base is a separate input (task vectors are taken against it); the recipe must name one.
    Required,
    /// No base concept: a configured `base_model` becomes one more ordinary input (mergekit).
    Ignored,
    /// Works with or without one: with a base, it combines task vectors against it.
    Optional,
}

/// What a method does with a tensor that some inputs lack (ALGORITHMS.md §1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingPolicy {
    /// Merge over the inputs that have it (the base must be among them if the method has one).
    Subset,
    /// If exactly one input has it, copy that one (slerp, nuslerp).
    CopySingle,
    /// If only the base has it, copy the base (nearswap).
    CopySingleBase,
    /// With fewer than 3 inputs: copy the base if it alone has it, else skip the tensor
    /// (model_stock).
    StockOrSkip,
}

/// What a method is and what it reads.
#[derive(Debug)]
pub struct MethodSpec {
    pub name: &'static str,
    pub base: BaseUse,
    pub params: &'static [ParamSpec],
    /// Fewest non-base inputs the method accepts.
    pub min_models: usize,
    /// Most non-base inputs the method accepts.
    pub max_models: Option<usize>,
}

/// The inputs of one tensor, as a method sees them.
#[derive(Clone, Debug)]
pub struct MethodInputs<'a> {
    /// The output tensor's name (random methods key their streams on it).
    pub tensor: &'a str,
    /// The merge's random seed.
    pub seed: u64,
    pub base: Option<TensorView<'a>>,
    pub models: Vec<TensorView<'a>>,
    pub params: &'a TensorParams,
}

impl MethodInputs<'_> {
    /// The tensor's element count (every input has it).
    pub fn numel(&self) -> usize {
        self.base
            .as_ref()
            .or(self.models.first())
            .map_or(0, TensorView::numel)
    }
}

/// A merge method failed on a tensor for a reason the plan could not foresee.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MethodError(pub String);

/// A merge method: one file per method under `merge/methods/`.
pub trait MergeMethod: Sync + std::fmt::Debug {
    fn spec(&self) -> &'static MethodSpec;

    /// What to do with a tensor some inputs lack.
    fn when_missing(&self) -> MissingPolicy {
        MissingPolicy::Subset
    }

    /// The type mergekit's method returns for inputs computed in `compute`, written when the
    /// recipe sets no `out_dtype`. Most return `compute`; a few mix in an f32 mask or factor,
    /// which torch promotes to f32 (arcee_fusion, ramplus_tl).
    fn result_type(&self, compute: FloatType) -> FloatType {
        compute
    }

    /// Whether every output element depends only on the same element of each input (and the
    /// tensor's parameters): then the engine may merge a large tensor slab by slab, each slab
    /// computed in cache and encoded straight into the output. Not for methods that rank
    /// elements, draw random numbers by position, or read rows or norms.
    fn is_elementwise(&self) -> bool {
        false
    }

    /// Plan-time check of one tensor's parameters (before anything is written).
    fn check(&self, _params: &TensorParams) -> Result<(), String> {
        Ok(())
    }

    /// Computes the merged tensor into `out` (its length is the tensor's element count) on
    /// the CPU. `out` arrives holding whatever the previous tensor left there: write every
    /// element.
    fn merge(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError>;

    /// [`merge`](Self::merge) with the element-wise work on `backend`. Methods whose work is
    /// not worth a GPU kernel keep this default and run on the CPU inside a GPU merge.
    fn merge_on(
        &self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        out: &mut [f32],
    ) -> Result<(), MethodError> {
        let _ = backend;
        self.merge(inputs, out)
    }

    /// Merges straight into `out` (of the tensor's output type and length) when the method
    /// computes its result in one pass that can be encoded block by block, returning how
    /// many results are NaN or ±Inf; `None` (the default) when it cannot, and the caller uses
    /// [`merge_slabs`](Self::merge_slabs). `work` is scratch the backend may use.
    fn merge_encoded(
        &self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        work: &mut Vec<f32>,
        out: &mut TensorBytes,
    ) -> Option<Result<u64, MethodError>> {
        let _ = (backend, inputs, work, out);
        None
    }

    /// [`merge_on`](Self::merge_on) with the result handed to `emit` in consecutive pieces
    /// (`emit(start, values)` for elements `start..start + values.len()`), so a caller can
    /// encode each while it is in cache, each computed in `work`. Element-wise methods
    /// ([`is_elementwise`](Self::is_elementwise)) merge slabs of `slab` elements (a multiple
    /// of 64) one at a time, as do methods whose last pass is element-wise (they override
    /// this); the others give the whole tensor in one piece.
    fn merge_slabs(
        &self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        slab: usize,
        work: &mut Vec<f32>,
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), MethodError> {
        let n = inputs.numel();
        if !self.is_elementwise() || n <= slab {
            // Not cleared: methods write every element (the `merge` contract), so zeroing
            // would only cost a pass over memory.
            work.resize(n, 0.0);
            self.merge_on(backend, inputs, work)?;
            emit(0, work);
            return Ok(());
        }
        for start in (0..n).step_by(slab) {
            let shape = [slab.min(n - start)];
            let part = MethodInputs {
                tensor: inputs.tensor,
                seed: inputs.seed,
                base: inputs.base.clone().map(|b| b.elements(start, &shape)),
                models: inputs
                    .models
                    .iter()
                    .map(|m| m.clone().elements(start, &shape))
                    .collect(),
                params: inputs.params,
            };
            work.resize(shape[0], 0.0);
            self.merge_on(backend, &part, work)?;
            emit(start, work);
        }
        Ok(())
    }
}

impl From<BackendError> for MethodError {
    fn from(e: BackendError) -> Self {
        Self(e.to_string())
    }
}
