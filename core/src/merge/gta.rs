//! Generalized task arithmetic (ALGORITHMS.md §2.1–2.3): the shared core of task_arithmetic,
//! ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della and della_linear.
//!
//! A tensor is merged in two phases. First, every model's task vector gets its keep-mask (one
//! bit per element) and L1 rescale factor from the magnitudes `|θᵢ − θ_b|`: DARE draws all masks
//! in one pass; TIES and Breadcrumbs select from all models at once in a few streaming passes
//! that never store the magnitudes ([`ranked`]); DELLA, which sorts each row, and tensors too
//! small for histograms hold one model's magnitudes at a time as order keys in a reused buffer.
//! Then one streaming pass decodes base and models chunk by chunk and combines the masked,
//! weighted deltas (with sign election where the method has it). Memory per tensor: one bit per
//! element per model (and a few while selecting), `u32`s for DELLA's keys and ranks, and the
//! output; never a decoded copy of any input.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::backend::{Backend, Combine};
use crate::checkpoint::TensorView;

use super::kernel::{CHUNK, sum_in_order, with_decoded, zip_chunks, zip_fill};
use super::ranked::{self, Keep};
use super::rng::{ElementRng, bernoulli_threshold};
use super::select::{
    BYTE_FACTORS, BitMask, SORTED_AT_MOST, magnitude_key, rank_band_mask, set_bit, top_k_mask,
};
use super::{Kind, MethodError, MethodInputs, ParamSpec, TensorParams, Value};

/// Where phase 2 puts the merged values.
enum Results<'a> {
    /// The whole tensor, into this slice.
    Whole(&'a mut [f32]),
    /// `slab` elements at a time into `work`, each handed to `emit` with its first element.
    Slabs {
        slab: usize,
        work: &'a mut Vec<f32>,
        emit: &'a mut dyn FnMut(usize, &[f32]),
    },
}

/// How a task vector is sparsified before it is combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sparsifier {
    None,
    /// Keep the `density` fraction with the largest magnitude (TIES).
    Magnitude,
    /// Keep each element with probability `density` (DARE).
    Random,
    /// Drop the largest `gamma` fraction and the smallest, keep `density` (Model Breadcrumbs).
    MagnitudeOutliers,
    /// Keep with a probability rising with the magnitude's rank in its row (DELLA MagPrune).
    DellaMagprune,
}

/// What distinguishes one member of the family.
#[derive(Clone, Copy, Debug)]
pub struct Gta {
    pub sparsifier: Sparsifier,
    /// Sign election and disjoint mean (TIES-style).
    pub consensus: bool,
}

/// The parameters every GTA method reads, with the method's own defaults.
pub const fn common_params(normalize: bool) -> [ParamSpec; 4] {
    [
        ParamSpec::per_non_base("weight", Kind::Float, None),
        ParamSpec::shared("normalize", Kind::Bool, Some(Value::Bool(normalize))),
        ParamSpec::shared("lambda", Kind::Float, Some(Value::Float(1.0))),
        // Memory-only in mergekit: accepted so recipes that set it run unchanged.
        ParamSpec::shared("int8_mask", Kind::Bool, Some(Value::Bool(false))),
    ]
}

pub const fn density_param() -> ParamSpec {
    ParamSpec::per_non_base("density", Kind::Float, Some(Value::Float(1.0)))
}

pub const fn rescale_param(default: bool) -> ParamSpec {
    ParamSpec::shared("rescale", Kind::Bool, Some(Value::Bool(default)))
}

pub const fn gamma_param() -> ParamSpec {
    ParamSpec::per_non_base("gamma", Kind::Float, Some(Value::Float(0.01)))
}

pub const fn epsilon_param() -> ParamSpec {
    ParamSpec::per_non_base("epsilon", Kind::Float, Some(Value::Float(0.15)))
}

thread_local! {
    /// Magnitude keys (and DELLA's ranks) of the tensor being merged, reused across tensors.
    static KEYS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Gta {
    /// Plan-time checks of one tensor's parameters.
    pub fn check(self, params: &TensorParams) -> Result<(), String> {
        for i in 0..params.model_count() {
            if self.sparsifier == Sparsifier::None {
                continue;
            }
            let density = params.model_f64(i, "density");
            if density < 0.0 {
                return Err(format!(
                    "density {density} of model {i} is negative; use a value in [0, 1]"
                ));
            }
            match self.sparsifier {
                Sparsifier::MagnitudeOutliers => {
                    let gamma = params.model_f64(i, "gamma");
                    if gamma < 0.0 {
                        return Err(format!(
                            "gamma {gamma} of model {i} is negative; use a value in [0, 1]"
                        ));
                    }
                }
                Sparsifier::DellaMagprune if density > 0.0 && density < 1.0 => {
                    let epsilon = params.model_f64(i, "epsilon");
                    if density - epsilon <= 0.0 || density + epsilon >= 1.0 {
                        return Err(format!(
                            "model {i}: density {density} ± epsilon {epsilon} leaves [0, 1]; DELLA needs \
                             density - epsilon > 0 and density + epsilon < 1"
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Without a sparsifier nothing is ranked or drawn: each element's sign election and sum
    /// read only that element (task arithmetic).
    pub fn is_elementwise(self) -> bool {
        self.sparsifier == Sparsifier::None
    }

    pub fn merge(
        self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        out: &mut [f32],
    ) -> Result<(), MethodError> {
        self.run(backend, inputs, Results::Whole(out))
    }

    /// [`merge`](Self::merge) with phase 2 run `slab` elements at a time (a multiple of 64)
    /// in `work`, each slab's result handed to `emit` while it is in cache: the engine encodes
    /// it into the output there, where a whole tensor's f32 result went out to memory and back.
    pub fn merge_slabs(
        self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'_>,
        slab: usize,
        work: &mut Vec<f32>,
        emit: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), MethodError> {
        self.run(backend, inputs, Results::Slabs { slab, work, emit })
    }

    fn run<'a>(
        self,
        backend: &dyn Backend,
        inputs: &MethodInputs<'a>,
        results: Results<'_>,
    ) -> Result<(), MethodError> {
        let base = inputs.base.clone().ok_or_else(|| {
            MethodError("this method takes task vectors against a base tensor".to_owned())
        })?;
        let params = inputs.params;
        let weights: Vec<f32> = (0..inputs.models.len())
            .map(|i| params.model_f64(i, "weight") as f32)
            .collect();
        let rescale = self.sparsifier != Sparsifier::None && params.shared_bool("rescale");

        // Phase 1: per model, which elements survive and by how much they are rescaled.
        let m = inputs.models.len();
        let (kept, factors): (Vec<Option<BitMask>>, Vec<f32>) = match self.sparsifier {
            Sparsifier::None => (vec![None; m], vec![1.0; m]),
            Sparsifier::Random => {
                // DARE needs no ranks: one pass over base and all models draws every mask and
                // sums the L1 norms.
                let densities: Vec<f64> = (0..m).map(|i| params.model_f64(i, "density")).collect();
                random_masks(
                    base.clone(),
                    &inputs.models,
                    inputs.seed,
                    inputs.tensor,
                    &densities,
                )
                .into_iter()
                .map(|(mask, factor)| (mask, if rescale { factor } else { 1.0 }))
                .unzip()
            }
            // Tensors small enough to sort (norms, biases) select per model from stored keys.
            Sparsifier::Magnitude | Sparsifier::MagnitudeOutliers
                if base.numel() > SORTED_AT_MOST =>
            {
                self.fused_masks(inputs, rescale)
            }
            Sparsifier::Magnitude | Sparsifier::MagnitudeOutliers | Sparsifier::DellaMagprune => {
                (0..m).map(|i| self.ranked_mask(inputs, i, rescale)).unzip()
            }
        };

        // Phase 2: stream base and models once and combine, on the backend.
        let weight_sum: f32 = weights.iter().sum();
        let plain_divisor = if weight_sum.abs() < 1e-8 {
            1.0
        } else {
            weight_sum
        };
        let combine = |base: TensorView<'_>,
                       models: &[TensorView<'_>],
                       masks: &[Option<BitMask>],
                       out: &mut [f32]| {
            let c = Combine {
                base,
                models,
                weights: &weights,
                factors: &factors,
                masks,
                consensus: self.consensus,
                normalize: params.shared_bool("normalize"),
                lambda: params.shared_f64("lambda") as f32,
                plain_divisor,
            };
            backend.combine(&c, out)
        };
        match results {
            Results::Whole(out) => combine(base, &inputs.models, &kept, out)?,
            Results::Slabs { slab, work, emit } => {
                let n = base.numel();
                assert!(slab.is_multiple_of(64), "slabs of whole mask words");
                work.resize(slab.min(n), 0.0);
                for start in (0..n).step_by(slab) {
                    let shape = [slab.min(n - start)];
                    let len = shape[0];
                    let slice = |v: &TensorView<'a>| v.clone().elements(start, &shape);
                    let models: Vec<TensorView<'_>> = inputs.models.iter().map(slice).collect();
                    // Each slab's masks are copies of its words: a 64th of its elements in
                    // bytes.
                    let masks: Vec<Option<BitMask>> = kept
                        .iter()
                        .map(|m| m.as_ref().map(|m| m.range(start, len)))
                        .collect();
                    combine(slice(&base), &models, &masks, &mut work[..len])?;
                    emit(start, &work[..len]);
                }
            }
        }
        Ok(())
    }

    /// The keep-mask and rescale factor of model `i` from its stored magnitude keys (DELLA, and
    /// small tensors under the other rank sparsifiers): `|θᵢ − θ_b|` becomes order keys, then
    /// the mask is selected from them. `None` when the density keeps everything.
    fn ranked_mask(
        self,
        inputs: &MethodInputs<'_>,
        i: usize,
        rescale: bool,
    ) -> (Option<BitMask>, f32) {
        let base = inputs.base.clone().expect("checked by merge");
        let n = base.numel();
        let density = inputs.params.model_f64(i, "density");
        if density >= 1.0 || n == 0 {
            return (None, 1.0);
        }
        KEYS.with_borrow_mut(|(keys, ranks)| {
            keys.resize(n, 0);
            zip_fill(&[base, inputs.models[i].clone()], keys, |_, xs, k| {
                for ((k, &b), &x) in k.iter_mut().zip(xs[0]).zip(xs[1]) {
                    *k = magnitude_key(x - b);
                }
            });
            if self.sparsifier == Sparsifier::DellaMagprune {
                return della_mask(inputs, i, density, keys, ranks, rescale);
            }
            let mask = match self.keep(inputs.params, i, n).expect("density below 1") {
                Keep::Top(k) => top_k_mask(keys, k),
                Keep::Band(lo, hi) => rank_band_mask(keys, lo, hi),
            };
            let factor = if rescale {
                l1_rescale_factor(keys, &mask)
            } else {
                1.0
            };
            (Some(mask), factor)
        })
    }

    /// What model `i` keeps of its `n` magnitudes under a rank sparsifier; `None` when its
    /// density keeps everything.
    fn keep(self, params: &TensorParams, i: usize, n: usize) -> Option<Keep> {
        let density = params.model_f64(i, "density");
        if density >= 1.0 || n == 0 {
            return None;
        }
        match self.sparsifier {
            Sparsifier::Magnitude if density <= 0.0 => Some(Keep::Top(0)),
            Sparsifier::Magnitude => Some(Keep::Top(((density * n as f64) as usize).max(1))),
            Sparsifier::MagnitudeOutliers => {
                let gamma = params.model_f64(i, "gamma");
                let target = (density.max(0.0) * n as f64) as usize;
                let top = (gamma * n as f64) as usize;
                let bottom = n.saturating_sub(target + top);
                Some(Keep::Band(bottom, bottom + target))
            }
            Sparsifier::None | Sparsifier::Random | Sparsifier::DellaMagprune => {
                unreachable!("only magnitude and outlier sparsifiers keep by rank")
            }
        }
    }

    /// Every model's keep-mask and rescale factor for the magnitude and outlier sparsifiers,
    /// selected for all models at once without storing their keys (see [`ranked`]).
    fn fused_masks(
        self,
        inputs: &MethodInputs<'_>,
        rescale: bool,
    ) -> (Vec<Option<BitMask>>, Vec<f32>) {
        let base = inputs.base.clone().expect("checked by merge");
        let n = base.numel();
        let m = inputs.models.len();
        let keeps: Vec<Option<Keep>> = (0..m).map(|i| self.keep(inputs.params, i, n)).collect();
        let chosen: Vec<usize> = (0..m).filter(|&i| keeps[i].is_some()).collect();
        let models: Vec<TensorView<'_>> =
            chosen.iter().map(|&i| inputs.models[i].clone()).collect();
        let chosen_keeps: Vec<Keep> = keeps.iter().flatten().copied().collect();
        let masks = ranked::masks(&base, &models, &chosen_keeps);
        let factors = if rescale {
            l1_rescale_factors(base, &models, &masks)
        } else {
            vec![1.0; masks.len()]
        };
        let (mut kept, mut all_factors) = (vec![None; m], vec![1.0; m]);
        for ((i, mask), factor) in chosen.into_iter().zip(masks).zip(factors) {
            kept[i] = Some(mask);
            all_factors[i] = factor;
        }
        (kept, all_factors)
    }
}

/// DELLA's keep-mask of model `i` (density < 1) from its magnitude keys, and its rescale
/// factor, summed while the mask is drawn.
fn della_mask(
    inputs: &MethodInputs<'_>,
    i: usize,
    density: f64,
    keys: &[u32],
    ranks: &mut Vec<u32>,
    rescale: bool,
) -> (Option<BitMask>, f32) {
    let n = keys.len();
    if density <= 0.0 {
        return (Some(BitMask::new(n)), 1.0);
    }
    let epsilon = inputs.params.model_f64(i, "epsilon");
    let line = row_ranks(keys, inputs.base.as_ref().expect("checked").shape, ranks);
    let rng = ElementRng::new(inputs.seed, inputs.tensor, i);
    let ranks = &*ranks;
    let (mask, sums) = bernoulli_mask(n, &rng, keys, |j| {
        let rank_norm = if line <= 1 {
            0.5
        } else {
            f64::from(ranks[j]) / (line - 1) as f64
        };
        (density - epsilon) + 2.0 * epsilon * rank_norm.clamp(0.0, 1.0)
    });
    let factor = if rescale {
        l1_factor(sums.iter().copied())
    } else {
        1.0
    };
    (Some(mask), factor)
}

/// DARE's masks for every model against `base` (`None` where the density keeps everything):
/// each element kept with probability `density`, the comparison `u < p` done on raw words in
/// bulk; and each model's L1 rescale factor, summed in the same pass, which decodes the base
/// once for all models.
fn random_masks(
    base: TensorView<'_>,
    models: &[TensorView<'_>],
    seed: u64,
    tensor: &str,
    densities: &[f64],
) -> Vec<(Option<BitMask>, f32)> {
    const WORDS: usize = CHUNK / 64;
    if models.is_empty() {
        return Vec::new();
    }
    let n = base.numel();
    let m = models.len();
    let rngs: Vec<ElementRng> = (0..m).map(|i| ElementRng::new(seed, tensor, i)).collect();
    let thresholds: Vec<Option<u32>> = densities
        .iter()
        .map(|&d| (d < 1.0 && n > 0).then(|| bernoulli_threshold(d.max(0.0))))
        .collect();
    let mut all = vec![base];
    all.extend(models.iter().cloned());
    // Chunk-major: chunk c holds WORDS words for each model in turn.
    let mut words = vec![0u64; n.div_ceil(CHUNK) * m * WORDS];
    let sums: Vec<Vec<(f64, f64)>> = words
        .par_chunks_mut(m * WORDS)
        .enumerate()
        .map(|(chunk, chunk_words)| {
            let start = chunk * CHUNK;
            let len = CHUNK.min(n - start);
            let mut draws = vec![0u32; len];
            with_decoded(&all, start, len, |xs| {
                let b = xs[0];
                (0..m)
                    .map(|i| {
                        let Some(threshold) = thresholds[i] else {
                            return (0.0, 0.0);
                        };
                        rngs[i].fill_words(start, &mut draws);
                        let model_words = &mut chunk_words[i * WORDS..(i + 1) * WORDS];
                        dare_chunk(&draws, threshold, b, xs[i + 1], model_words)
                    })
                    .collect()
            })
        })
        .collect();
    (0..m)
        .map(|i| {
            if thresholds[i].is_none() {
                return (None, 1.0);
            }
            let mut mask_words = Vec::with_capacity(n.div_ceil(64));
            for chunk_words in words.chunks(m * WORDS) {
                mask_words.extend_from_slice(&chunk_words[i * WORDS..(i + 1) * WORDS]);
            }
            mask_words.truncate(n.div_ceil(64));
            let factor = l1_factor(sums.iter().map(|s| s[i]));
            (Some(BitMask::from_words(mask_words, n)), factor)
        })
        .collect()
}

/// Adds one whole word's elements to the L1 lanes of [`dare_chunk`]: element `8k + l` to lane
/// `l`, in order of `k`, its magnitude `|x − b|` to `before` and the magnitude times its keep
/// bit (0.0 or 1.0) to `after`.
fn dare_word_sums(
    bits: u64,
    b: &[f32; 64],
    x: &[f32; 64],
    before: &mut [f32; 8],
    after: &mut [f32; 8],
) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        unsafe { dare_word_sums_avx2(bits, b, x, before, after) };
        return;
    }
    dare_word_sums_portable(bits, b, x, before, after);
}

/// [`dare_word_sums`] for any CPU.
fn dare_word_sums_portable(
    bits: u64,
    b: &[f32; 64],
    x: &[f32; 64],
    before: &mut [f32; 8],
    after: &mut [f32; 8],
) {
    for k in 0..8 {
        for l in 0..8 {
            let magnitude = (x[8 * k + l] - b[8 * k + l]).abs();
            let keep = if bits >> (8 * k + l) & 1 == 0 {
                0.0
            } else {
                1.0
            };
            before[l] += magnitude;
            after[l] += magnitude * keep;
        }
    }
}

/// [`dare_word_sums`] with the eight lanes in one AVX register: the compilers left the
/// portable loop scalar (a fifth of a DARE merge's time). The same operations in the same
/// order per lane, so the same sums bit for bit: `abs` clears the sign bit, and the keep
/// factor multiplies (0 × ∞ stays NaN).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn dare_word_sums_avx2(
    bits: u64,
    b: &[f32; 64],
    x: &[f32; 64],
    before: &mut [f32; 8],
    after: &mut [f32; 8],
) {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_and_ps, _mm256_and_si256, _mm256_castsi256_ps, _mm256_cmpeq_epi32,
        _mm256_loadu_ps, _mm256_mul_ps, _mm256_set_epi32, _mm256_set1_epi32, _mm256_set1_ps,
        _mm256_setzero_si256, _mm256_storeu_ps, _mm256_sub_ps, _mm256_xor_si256,
    };
    let lane_bits = _mm256_set_epi32(128, 64, 32, 16, 8, 4, 2, 1);
    let magnitude_bits = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let one = _mm256_set1_ps(1.0);
    let all = _mm256_set1_epi32(-1);
    // SAFETY (the loads and stores): every pointer is to a whole array of the right size.
    let (mut sum_before, mut sum_after) = unsafe {
        (
            _mm256_loadu_ps(before.as_ptr()),
            _mm256_loadu_ps(after.as_ptr()),
        )
    };
    for k in 0..8 {
        let (xs, bs) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr().add(8 * k)),
                _mm256_loadu_ps(b.as_ptr().add(8 * k)),
            )
        };
        let magnitude = _mm256_and_ps(_mm256_sub_ps(xs, bs), magnitude_bits);
        let byte = _mm256_set1_epi32(((bits >> (8 * k)) & 0xff) as i32);
        let dropped = _mm256_cmpeq_epi32(_mm256_and_si256(byte, lane_bits), _mm256_setzero_si256());
        let kept = _mm256_castsi256_ps(_mm256_xor_si256(dropped, all));
        let keep = _mm256_and_ps(kept, one);
        sum_before = _mm256_add_ps(sum_before, magnitude);
        sum_after = _mm256_add_ps(sum_after, _mm256_mul_ps(magnitude, keep));
    }
    unsafe {
        _mm256_storeu_ps(before.as_mut_ptr(), sum_before);
        _mm256_storeu_ps(after.as_mut_ptr(), sum_after);
    }
}

/// One model's DARE mask words for one chunk (`u < p` on the raw `draws`), with the chunk's L1
/// sums of `x - b` before and after masking.
#[multiversion::multiversion(targets = "simd")]
fn dare_chunk(
    draws: &[u32],
    threshold: u32,
    b: &[f32],
    x: &[f32],
    words: &mut [u64],
) -> (f64, f64) {
    const LANES: usize = 8;
    // f32 lanes within a chunk (DARE is compared statistically; mergekit sums in the compute
    // dtype too), f64 across chunks.
    let (mut before, mut after) = ([0f32; LANES], [0f32; LANES]);
    let groups = words
        .iter_mut()
        .zip(draws.chunks(64))
        .zip(b.chunks(64))
        .zip(x.chunks(64));
    for (((word, draw), b), x) in groups {
        let bits = draw_bits(draw, threshold);
        *word = bits;
        if let (Ok(b), Ok(x)) = (<&[f32; 64]>::try_from(b), <&[f32; 64]>::try_from(x)) {
            dare_word_sums(bits, b, x, &mut before, &mut after);
            continue;
        }
        for ((b, x), &byte) in b
            .chunks(LANES)
            .zip(x.chunks(LANES))
            .zip(&bits.to_le_bytes())
        {
            let keep = &BYTE_FACTORS[usize::from(byte)];
            for l in 0..b.len() {
                let magnitude = (x[l] - b[l]).abs();
                before[l] += magnitude;
                after[l] += magnitude * keep[l];
            }
        }
    }
    (
        sum_in_order(before.iter().map(|&v| f64::from(v))),
        sum_in_order(after.iter().map(|&v| f64::from(v))),
    )
}

/// The bits `u < p` of up to 64 raw draws (the top 24 bits of each against `threshold`).
#[inline(always)]
fn draw_bits(draws: &[u32], threshold: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if draws.len() == 64 && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the draws are 64 long; both checked just above.
        #[allow(unsafe_code)]
        return unsafe { draw_bits_avx512(draws, threshold) };
    }
    #[cfg(target_arch = "x86_64")]
    if draws.len() == 64 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, and the draws are 64 long; both checked just above.
        #[allow(unsafe_code)]
        return unsafe { draw_bits_avx2(draws, threshold) };
    }
    let mut bits = 0u64;
    for (k, &u) in draws.iter().enumerate() {
        bits |= u64::from((u >> 8) < threshold) << k;
    }
    bits
}

/// [`draw_bits`] of 64 draws with AVX-512, whose compares give the bits directly (compilers
/// turn the portable `bit << k` into 64-bit lanes and shifts, several times slower).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn draw_bits_avx512(draws: &[u32], threshold: u32) -> u64 {
    use std::arch::x86_64::{
        _mm512_cmplt_epu32_mask, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_srli_epi32,
    };
    debug_assert_eq!(draws.len(), 64);
    // The threshold's bits, read back as u32 by the unsigned compare.
    let threshold = _mm512_set1_epi32(threshold as i32);
    let mut bits = 0u64;
    for q in 0..4 {
        // SAFETY: `16 * q + 16 <= 64 == draws.len()`.
        let u = unsafe { _mm512_loadu_si512(draws.as_ptr().add(16 * q).cast()) };
        let below = _mm512_cmplt_epu32_mask(_mm512_srli_epi32::<8>(u), threshold);
        bits |= u64::from(below) << (16 * q);
    }
    bits
}

/// [`draw_bits`] of 64 draws with AVX2, for CPUs without AVX-512: the portable loop's 64-bit
/// lanes took a tenth of a DARE merge on one. AVX2 compares are signed, which is enough here
/// (a draw's top 24 bits and the threshold are below 2³¹), and `movemask` gathers 8 bits at
/// a time.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn draw_bits_avx2(draws: &[u32], threshold: u32) -> u64 {
    use std::arch::x86_64::{
        _mm256_castsi256_ps, _mm256_cmpgt_epi32, _mm256_loadu_si256, _mm256_movemask_ps,
        _mm256_set1_epi32, _mm256_srli_epi32,
    };
    debug_assert_eq!(draws.len(), 64);
    debug_assert!(threshold <= 1 << 24);
    let threshold = _mm256_set1_epi32(threshold as i32);
    let mut bits = 0u64;
    for q in 0..8 {
        // SAFETY: `8 * q + 8 <= 64 == draws.len()`.
        let u = unsafe { _mm256_loadu_si256(draws.as_ptr().add(8 * q).cast()) };
        let below = _mm256_cmpgt_epi32(threshold, _mm256_srli_epi32::<8>(u));
        bits |= u64::from(_mm256_movemask_ps(_mm256_castsi256_ps(below)) as u8) << (8 * q);
    }
    bits
}

/// Each element kept with probability `p(j)`, drawn from `rng` at the element's index; with
/// every chunk's L1 sums of the magnitudes `keys` before and after masking.
fn bernoulli_mask(
    n: usize,
    rng: &ElementRng,
    keys: &[u32],
    p: impl Fn(usize) -> f64 + Sync,
) -> (BitMask, Vec<(f64, f64)>) {
    let mut mask = BitMask::new(n);
    let sums = mask.fill_chunks_collect(|start, words| {
        let len = CHUNK.min(n - start);
        rng.for_range(start, len, |j, u| {
            if u < p(j) {
                set_bit(words, j - start);
            }
        });
        l1_chunk_sums(&keys[start..start + len], words)
    });
    (mask, sums)
}

/// DELLA ranks magnitudes within lines along axis 1 (a 1-D tensor is one line; a k-D tensor
/// has a line for every index of the other axes): `ranks[j]` is the 0-based ascending rank of
/// element `j` in its line, ties to the lower index. Returns the line length.
fn row_ranks(keys: &[u32], shape: &[usize], ranks: &mut Vec<u32>) -> usize {
    let n = keys.len();
    ranks.resize(n, 0);
    let (line, inner) = match shape {
        [] | [_] => (n, 1),
        [_, d1, rest @ ..] => (*d1, rest.iter().product()),
    };
    if line == 0 || n == 0 {
        return line;
    }
    // Blocks of `line * inner` elements (one index of axis 0) are independent.
    ranks
        .par_chunks_mut(line * inner)
        .zip(keys.par_chunks(line * inner))
        .for_each(|(rank_block, key_block)| {
            let (mut order, mut spare) = (Vec::with_capacity(line), Vec::with_capacity(line));
            for r in 0..inner {
                order.clear();
                order.extend(
                    (0..line).map(|p| (u64::from(key_block[p * inner + r]) << 32) | p as u64),
                );
                radix_sort(&mut order, &mut spare);
                for (rank, &packed) in order.iter().enumerate() {
                    rank_block[(packed & 0xffff_ffff) as usize * inner + r] = rank as u32;
                }
            }
        });
    line
}

/// Sorts (key, position) pairs, packed as `key << 32 | position` and given in position order,
/// by key: a stable radix sort over the key's bytes, so equal keys keep their position order.
/// (Several times faster than a comparison sort on lines of a few thousand elements; a byte on
/// which all keys agree costs no pass.)
fn radix_sort(order: &mut Vec<u64>, spare: &mut Vec<u64>) {
    if order.len() < 256 {
        // Short lines: the byte counts would cost more than the sort.
        order.sort_unstable();
        return;
    }
    let mut counts = [[0usize; 256]; 4];
    for &packed in order.iter() {
        for (byte, count) in counts.iter_mut().enumerate() {
            count[(packed >> (32 + 8 * byte)) as usize & 0xff] += 1;
        }
    }
    spare.resize(order.len(), 0);
    for (byte, count) in counts.iter().enumerate() {
        if count.contains(&order.len()) {
            continue;
        }
        let mut next = [0usize; 256];
        let mut total = 0;
        for (n, &c) in next.iter_mut().zip(count) {
            *n = total;
            total += c;
        }
        for &packed in order.iter() {
            let digit = (packed >> (32 + 8 * byte)) as usize & 0xff;
            spare[next[digit]] = packed;
            next[digit] += 1;
        }
        std::mem::swap(order, spare);
    }
}

/// `sum |d| / sum |kept d|` (ALGORITHMS.md `l1_rescale`): one factor for the whole tensor, or
/// 1 when either sum is below 1e-7 (so zero deltas stay zero).
fn l1_rescale_factor(keys: &[u32], mask: &BitMask) -> f32 {
    let sums: Vec<(f64, f64)> = keys
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(chunk, part)| l1_chunk_sums(part, mask.words_of_chunk(chunk * CHUNK)))
        .collect();
    l1_factor(sums.iter().copied())
}

/// [`l1_rescale_factor`] of every model against `base`, in one pass that decodes the base once.
fn l1_rescale_factors(
    base: TensorView<'_>,
    models: &[TensorView<'_>],
    masks: &[BitMask],
) -> Vec<f32> {
    let mut all = vec![base];
    all.extend(models.iter().cloned());
    let sums: Vec<Vec<(f64, f64)>> = zip_chunks(&all, all[0].numel(), |start, xs| {
        let mut sums = Vec::with_capacity(masks.len());
        ranked::for_each_keys(xs, ranked::Magnitude::Raw, |i, keys| {
            sums.push(l1_chunk_sums(keys, masks[i].words_of_chunk(start)));
        });
        sums
    });
    (0..masks.len())
        .map(|i| l1_factor(sums.iter().map(|s| s[i])))
        .collect()
}

/// One chunk's `(sum |d|, sum |kept d|)` from its magnitude keys and mask words.
fn l1_chunk_sums(keys: &[u32], words: &[u64]) -> (f64, f64) {
    const LANES: usize = 8;
    // Eight independent f64 accumulators: no long dependency chain, and the lanes are combined
    // in a fixed order, so the result does not depend on threads.
    let (mut before, mut after) = ([0f64; LANES], [0f64; LANES]);
    for (group, &word) in keys.chunks(64).zip(words) {
        for (lane, eight) in group.chunks(LANES).enumerate() {
            for (l, &k) in eight.iter().enumerate() {
                let magnitude = f64::from(f32::from_bits(k));
                let kept = ((word >> (lane * LANES + l)) & 1) as f64;
                before[l] += magnitude;
                after[l] += magnitude * kept;
            }
        }
    }
    (sum_in_order(before), sum_in_order(after))
}

/// The rescale factor from every chunk's L1 sums, added in chunk order.
fn l1_factor(sums: impl Iterator<Item = (f64, f64)> + Clone) -> f32 {
    let before = sum_in_order(sums.clone().map(|s| s.0));
    let after = sum_in_order(sums.map(|s| s.1));
    if before < 1e-7 || after < 1e-7 {
        1.0
    } else {
        (before / after) as f32
    }
}

/// Declares a GTA method: a unit struct, its [`MethodSpec`](super::MethodSpec) (the common
/// parameters with the method's `normalize` default, then `extra`), and a [`MergeMethod`]
/// implementation that runs [`Gta`] with the given sparsifier and consensus.
macro_rules! gta_method {
    (
        $(#[$doc:meta])*
        $ty:ident, $name:literal,
        sparsifier: $sparsifier:ident,
        consensus: $consensus:literal,
        normalize: $normalize:literal,
        extra: [$($extra:expr),* $(,)?] $(,)?
    ) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $ty;

        const GTA: $crate::merge::gta::Gta = $crate::merge::gta::Gta {
            sparsifier: $crate::merge::gta::Sparsifier::$sparsifier,
            consensus: $consensus,
        };

        const COMMON: [$crate::merge::ParamSpec; 4] = $crate::merge::gta::common_params($normalize);

        static SPEC: $crate::merge::MethodSpec = $crate::merge::MethodSpec {
            name: $name,
            base: $crate::merge::BaseUse::Required,
            params: &[COMMON[0], COMMON[1], COMMON[2], COMMON[3] $(, $extra)*],
            min_models: 0,
            max_models: None,
        };

        impl $crate::merge::MergeMethod for $ty {
            fn spec(&self) -> &'static $crate::merge::MethodSpec {
                &SPEC
            }

            fn is_elementwise(&self) -> bool {
                GTA.is_elementwise()
            }

            fn check(&self, params: &$crate::merge::TensorParams) -> Result<(), String> {
                GTA.check(params)
            }

            fn merge(
                &self,
                inputs: &$crate::merge::MethodInputs<'_>,
                out: &mut [f32],
            ) -> Result<(), $crate::merge::MethodError> {
                GTA.merge(&$crate::backend::Cpu, inputs, out)
            }

            fn merge_on(
                &self,
                backend: &dyn $crate::backend::Backend,
                inputs: &$crate::merge::MethodInputs<'_>,
                out: &mut [f32],
            ) -> Result<(), $crate::merge::MethodError> {
                GTA.merge(backend, inputs, out)
            }

            fn merge_slabs(
                &self,
                backend: &dyn $crate::backend::Backend,
                inputs: &$crate::merge::MethodInputs<'_>,
                slab: usize,
                work: &mut Vec<f32>,
                emit: &mut dyn FnMut(usize, &[f32]),
            ) -> Result<(), $crate::merge::MethodError> {
                GTA.merge_slabs(backend, inputs, slab, work, emit)
            }
        }
    };
}
pub(crate) use gta_method;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::merge::methods::test_util::{f32_bytes, info, view, xorshift};
    use crate::merge::methods::{Lookup, lookup};
    use crate::merge::{TensorParams, Value};

    #[test]
    fn merged_in_slabs_equals_merged_whole() {
        // Past SORTED_AT_MOST (the streaming selection), many slabs and a partial last one.
        let n = SORTED_AT_MOST + 3 * 4096 + 77;
        let values = |seed: u64| -> Vec<f32> {
            xorshift(seed)
                .take(n)
                .map(|r| (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect()
        };
        let data: Vec<Vec<u8>> = (1..=4).map(|seed| f32_bytes(&values(seed))).collect();
        let infos: Vec<_> = (0..4).map(|i| info(&format!("t{i}"), n)).collect();
        let views: Vec<_> = infos.iter().zip(&data).map(|(i, b)| view(i, b)).collect();
        let model = |w: f64, d: f64| {
            vec![
                ("weight", Value::Float(w)),
                ("density", Value::Float(d)),
                ("gamma", Value::Float(0.01)),
                ("epsilon", Value::Float(0.1)),
            ]
        };
        let params = TensorParams::from_values(
            vec![
                ("normalize", Value::Bool(true)),
                ("lambda", Value::Float(1.0)),
                ("rescale", Value::Bool(true)),
            ],
            vec![model(0.5, 0.5), model(0.3, 0.4), model(0.2, 0.6)],
        );
        let inputs = MethodInputs {
            tensor: "t",
            seed: 7,
            base: Some(views[0].clone()),
            models: views[1..].to_vec(),
            params: &params,
        };
        for name in [
            "task_arithmetic",
            "ties",
            "dare_ties",
            "breadcrumbs_ties",
            "della",
        ] {
            let Lookup::Found(method) = lookup(name) else {
                panic!("{name} is implemented");
            };
            let mut whole = vec![f32::NAN; n];
            method.merge(&inputs, &mut whole).expect("merges");
            let mut slabs = vec![f32::NAN; n];
            let mut next = 0;
            method
                .merge_slabs(
                    &Cpu,
                    &inputs,
                    4096,
                    &mut Vec::new(),
                    &mut |start, values| {
                        assert_eq!(start, next, "{name}: slabs in order");
                        slabs[start..start + values.len()].copy_from_slice(values);
                        next = start + values.len();
                    },
                )
                .expect("merges");
            assert_eq!(next, n, "{name}: every element");
            let differ = (0..n).find(|&e| whole[e].to_bits() != slabs[e].to_bits());
            assert_eq!(differ, None, "{name}");
        }
    }

    #[test]
    fn dare_sums_are_the_per_lane_sums_in_order() {
        // Two whole words (the vector path) and a tail (the general one).
        let n: usize = 2 * 64 + 13;
        let mut r = xorshift(9);
        let mut next = || r.next().expect("endless");
        let mut x: Vec<f32> = (0..n).map(|_| (next() >> 40) as f32 / 1e6 - 8.0).collect();
        let b: Vec<f32> = (0..n).map(|_| (next() >> 40) as f32 / 1e6 - 8.0).collect();
        let draws: Vec<u32> = (0..n).map(|_| (next() >> 32) as u32).collect();
        let threshold = 1 << 23;
        let mut words = vec![0u64; n.div_ceil(64)];
        let (before, after) = dare_chunk(&draws, threshold, &b, &x, &mut words);
        let (mut lanes_before, mut lanes_after) = ([0f32; 8], [0f32; 8]);
        for e in 0..n {
            let keep = (draws[e] >> 8) < threshold;
            assert_eq!(words[e / 64] >> (e % 64) & 1 == 1, keep, "bit {e}");
            let magnitude = (x[e] - b[e]).abs();
            lanes_before[e % 8] += magnitude;
            lanes_after[e % 8] += magnitude * if keep { 1.0 } else { 0.0 };
        }
        let total = |lanes: [f32; 8]| sum_in_order(lanes.iter().map(|&v| f64::from(v)));
        assert_eq!(before.to_bits(), total(lanes_before).to_bits());
        assert_eq!(after.to_bits(), total(lanes_after).to_bits());
        // A NaN, or an infinity dropped (0 × ∞), poisons the sums as in the general loop.
        x[70] = f32::NAN;
        let (before, after) = dare_chunk(&draws, threshold, &b, &x, &mut words);
        assert!(before.is_nan() && after.is_nan());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    #[allow(unsafe_code)]
    fn dare_word_sums_are_the_same_with_avx2() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut r = xorshift(11);
        let mut next = || r.next().expect("endless");
        for round in 0..50 {
            let mut x: [f32; 64] = std::array::from_fn(|_| f32::from_bits((next() >> 32) as u32));
            let b: [f32; 64] = std::array::from_fn(|_| (next() >> 40) as f32 / 1e3 - 8e3);
            if round % 2 == 0 {
                // Mostly finite values, where the sums are not NaN.
                x = std::array::from_fn(|i| b[i] + ((next() >> 44) as f32 - 5e5) / 1e3);
            }
            let bits = next();
            let start: [f32; 8] = std::array::from_fn(|_| (next() >> 48) as f32);
            let (mut before, mut after) = (start, start);
            dare_word_sums_portable(bits, &b, &x, &mut before, &mut after);
            let (mut before_avx, mut after_avx) = (start, start);
            // SAFETY: AVX2 is present, checked above.
            unsafe { dare_word_sums_avx2(bits, &b, &x, &mut before_avx, &mut after_avx) };
            assert_eq!(
                before.map(f32::to_bits),
                before_avx.map(f32::to_bits),
                "{round}"
            );
            assert_eq!(
                after.map(f32::to_bits),
                after_avx.map(f32::to_bits),
                "{round}"
            );
        }
    }

    #[test]
    fn a_mask_range_is_its_bits_with_nothing_after() {
        let words: Vec<u64> = xorshift(5).take(4).collect();
        let mask = BitMask::from_words(words, 250);
        let part = mask.range(64, 100);
        assert_eq!(part.len(), 100);
        for i in 0..100 {
            assert_eq!(part.get(i), mask.get(64 + i), "bit {i}");
        }
        assert_eq!(part.words()[1] >> 36, 0, "bits past the range are clear");
    }

    #[test]
    fn draw_bits_compare_the_top_24_bits() {
        let mut bits = xorshift(3);
        for threshold in [0, 1, 1 << 23, (1 << 24) - 1, 1 << 24] {
            let draws: Vec<u32> = (0..64)
                .map(|_| (bits.next().expect("endless") >> 32) as u32)
                .collect();
            let expected =
                (0..64).fold(0u64, |w, k| w | u64::from((draws[k] >> 8) < threshold) << k);
            assert_eq!(draw_bits(&draws, threshold), expected, "{threshold}");
            // The AVX2 kernel too where dispatch would pick AVX-512.
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: AVX2 is present, checked just above.
                #[allow(unsafe_code)]
                let avx2 = unsafe { draw_bits_avx2(&draws, threshold) };
                assert_eq!(avx2, expected, "{threshold}");
            }
            // A short group (a tensor's tail) takes the portable path.
            assert_eq!(
                draw_bits(&draws[..9], threshold),
                expected & 0x1ff,
                "{threshold}"
            );
        }
    }

    #[test]
    fn ranks_follow_lines_along_axis_one() {
        // shape [2, 3]: rows are lines.
        let keys = [5, 1, 5, 0, 0, 2];
        let mut ranks = Vec::new();
        assert_eq!(row_ranks(&keys, &[2, 3], &mut ranks), 3);
        assert_eq!(ranks, vec![1, 0, 2, 0, 1, 2]);
        // shape [1, 3, 2]: lines are the columns of the trailing 3x2 block.
        let keys = [3, 9, 1, 8, 2, 7];
        assert_eq!(row_ranks(&keys, &[1, 3, 2], &mut ranks), 3);
        assert_eq!(ranks, vec![2, 2, 0, 1, 1, 0]);
        // 1-D: one line.
        assert_eq!(row_ranks(&[4, 4, 1], &[3], &mut ranks), 3);
        assert_eq!(ranks, vec![1, 2, 0]);
    }

    #[test]
    fn radix_sort_orders_by_key_then_position() {
        let keys: Vec<u32> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) % 97 * 0x0101_0301)
            .collect();
        let mut order: Vec<u64> = (0..keys.len())
            .map(|p| (u64::from(keys[p]) << 32) | p as u64)
            .collect();
        let mut expected = order.clone();
        expected.sort_unstable();
        radix_sort(&mut order, &mut Vec::new());
        assert_eq!(order, expected);
    }

    #[test]
    fn rescale_is_the_l1_ratio_and_skipped_for_zeros() {
        let keys: Vec<u32> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let mut mask = BitMask::new(4);
        mask.fill_chunks(|_, w| w[0] = 0b1100);
        assert!((l1_rescale_factor(&keys, &mask) - 10.0 / 7.0).abs() < 1e-6);
        let zeros = vec![0u32; 4];
        assert_eq!(l1_rescale_factor(&zeros, &mask), 1.0);
    }
}
