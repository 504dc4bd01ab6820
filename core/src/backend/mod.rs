//! Where the arithmetic of a merge runs: the CPU (rayon) or a GPU (wgpu compute shaders).
//!
//! The engine hands every tensor to its method together with a [`Backend`]; the method does
//! its planning on the CPU (parameters, random masks, top-k selection, the scalar maths of
//! SLERP) and asks the backend for the element-wise and reducing work, which is where the
//! bytes are. Both backends implement the same operations with the same order of arithmetic,
//! so they agree within ALGORITHMS.md §6's CPU-vs-GPU bound; methods whose work does not fit
//! these operations (and is not worth a kernel) run on the CPU inside a GPU merge. Where a
//! method branches on a computed value (the sign election, SLERP's colinear fallback, Model
//! Stock's denominator), both backends compute that value bit for bit alike, so they take the
//! same branch: see [`agreement`] and docs/gpu-cpu-agreement.md.

pub mod agreement;
mod cpu;
pub mod gpu;

use std::sync::Arc;

pub use cpu::Cpu;
pub use gpu::{AdapterPolicy, Gpu, GpuOptions};

use crate::checkpoint::TensorView;
use crate::dtype::TensorBytes;
use crate::merge::select::BitMask;

/// A backend failed; the merge stops and nothing is written.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(
        "no GPU adapter found (wgpu looked for Vulkan, Metal and DX12 devices); install the GPU's \
         driver, or run with `--backend cpu`"
    )]
    NoAdapter,
    #[error("the GPU `{adapter}` refused a device: {message}")]
    RequestDevice { adapter: String, message: String },
    #[error("the GPU `{adapter}` failed: {message}; run with `--backend cpu` to merge on the CPU")]
    Device { adapter: String, message: String },
}

/// The second phase of every generalized-task-arithmetic method (ALGORITHMS.md §2.2): masked,
/// weighted and rescaled task vectors combined, with sign election and the disjoint mean when
/// `consensus` is set, scaled by `lambda` and added to the base.
///
/// With `consensus`, each model's vote is [`agreement::vote`], the votes are summed in model
/// order with [`agreement::accumulate`], the total elects by [`agreement::elects_negative`],
/// a vote counts if it [`agreement::agrees`], and the agreeing weights (flushed) are summed
/// with `accumulate` too; a divisor of 0 becomes 1. Both backends take every one of these
/// decisions bit for bit alike.
#[derive(Clone, Debug)]
pub struct Combine<'a> {
    pub base: TensorView<'a>,
    pub models: &'a [TensorView<'a>],
    pub weights: &'a [f32],
    /// The L1 rescale factor of each model (1 when not rescaling).
    pub factors: &'a [f32],
    /// Each model's keep-mask; `None` keeps every element.
    pub masks: &'a [Option<BitMask>],
    pub consensus: bool,
    pub normalize: bool,
    pub lambda: f32,
    /// The divisor of the plain (non-consensus) normalized sum: the weight sum, or 1 near zero.
    pub plain_divisor: f32,
}

/// The operations merge methods run on tensors. Every output slice has the tensor's element
/// count, and every element is written.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// What runs the arithmetic, for people: `cpu (2 threads)`, `gpu: NVIDIA H100 (Vulkan)`.
    fn describe(&self) -> String;

    /// Whether a tensor should reach this backend whole rather than in cache-sized slabs
    /// (a GPU pays a transfer and a dispatch per call).
    fn prefers_whole_tensors(&self) -> bool {
        false
    }

    /// `out = Σ cᵢ·xᵢ`, summed in input order from 0, each product rounded before it is added
    /// (never fused), then divided by `divisor` if given.
    fn weighted_sum(
        &self,
        inputs: &[TensorView<'_>],
        coefficients: &[f32],
        divisor: Option<f32>,
        out: &mut [f32],
    ) -> Result<(), BackendError>;

    /// [`weighted_sum`](Self::weighted_sum) rounded into `out` (whose length is the element
    /// count), returning how many results are NaN or ±Inf. The default computes the sum in
    /// `work` and encodes it afterwards; the CPU encodes each block as it is computed.
    fn weighted_sum_encoded(
        &self,
        inputs: &[TensorView<'_>],
        coefficients: &[f32],
        divisor: Option<f32>,
        work: &mut Vec<f32>,
        out: &mut TensorBytes,
    ) -> Result<u64, BackendError> {
        work.resize(out.len(), 0.0);
        self.weighted_sum(inputs, coefficients, divisor, work)?;
        Ok(out.encode_at(0, work))
    }

    /// The Gram matrix (k×k, row-major) of the inputs, each taken as one flat vector, minus
    /// `center` when given; accumulated to f64 in blocks of
    /// [`GRAM_BLOCK`](agreement::GRAM_BLOCK) elements, each summed in
    /// [`GRAM_LANES`](agreement::GRAM_LANES) interleaved lanes added in a fixed tree, the
    /// blocks added in order; every element's value goes through
    /// [`gram_value`](agreement::gram_value). Both backends return the same bits: SLERP and
    /// Model Stock decide on it.
    fn gram(
        &self,
        inputs: &[TensorView<'_>],
        center: Option<TensorView<'_>>,
    ) -> Result<Vec<f64>, BackendError>;

    /// See [`Combine`].
    fn combine(&self, combine: &Combine<'_>, out: &mut [f32]) -> Result<(), BackendError>;

    /// `nearswap` (ALGORITHMS.md §2.11): `w = clamp(t / max(|a − b|, 1e-6), 0, 1)`,
    /// `out = w·b + (1 − w)·a`.
    fn nearswap(
        &self,
        a: TensorView<'_>,
        b: TensorView<'_>,
        t: f32,
        out: &mut [f32],
    ) -> Result<(), BackendError>;
}

/// Which backend a merge asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// A hardware GPU when one is present, else the CPU. Never a software rasterizer.
    #[default]
    Auto,
    Cpu,
    /// A GPU, hardware first; a software adapter (Mesa lavapipe) only when it is the only one.
    /// No adapter at all is an error.
    Gpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            other => Err(format!("unknown backend `{other}`; use auto, cpu or gpu")),
        }
    }
}

/// A wgpu device someone else already holds (the GUI's renderer), with its adapter's info.
pub struct SharedDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
}

/// The backend for `choice` when `shared` (eframe's device) may be used: `auto` takes it when
/// it is a hardware adapter and otherwise behaves as [`select`] does; `gpu` takes it whatever
/// it is. Sharing the renderer's device avoids a second device and a second copy of every
/// buffer on the same GPU.
pub fn select_shared(
    choice: BackendChoice,
    shared: Option<SharedDevice>,
) -> Result<Arc<dyn Backend>, BackendError> {
    match (choice, shared) {
        (BackendChoice::Cpu, _) => Ok(Arc::new(Cpu)),
        (BackendChoice::Gpu, Some(s)) => Ok(Arc::new(Gpu::from_device(
            s.device,
            s.queue,
            s.info,
            GpuOptions::default(),
        )?)),
        (BackendChoice::Auto, Some(s)) if !gpu::is_software(&s.info) => Ok(Arc::new(
            Gpu::from_device(s.device, s.queue, s.info, GpuOptions::default())?,
        )),
        (choice, _) => select(choice),
    }
}

/// The backend for `choice` (see [`BackendChoice`]).
pub fn select(choice: BackendChoice) -> Result<Arc<dyn Backend>, BackendError> {
    match choice {
        BackendChoice::Cpu => Ok(Arc::new(Cpu)),
        BackendChoice::Auto => {
            match Gpu::request(AdapterPolicy::HardwareOnly, GpuOptions::default()) {
                Ok(gpu) => Ok(Arc::new(gpu)),
                Err(BackendError::NoAdapter) => Ok(Arc::new(Cpu)),
                Err(e) => Err(e),
            }
        }
        BackendChoice::Gpu => Ok(Arc::new(Gpu::request(
            AdapterPolicy::AllowSoftware,
            GpuOptions::default(),
        )?)),
    }
}
