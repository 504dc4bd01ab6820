//! The GTA combine straight from bf16 inputs with AVX2, the common case on x86-64. The row
//! path (`combine_block`) widens every input of a block into rows in L1 and then makes one
//! pass over the rows per step (votes, then agreement, then the divisor, then the result), each
//! loading and storing its rows again. Here sixteen elements at a time are widened from the
//! stored bits, voted on, elected and finished in registers, with one kernel per model count
//! so that the votes stay in registers too. A warm TIES merge spent a fifth less CPU time.
//!
//! The operations that make a value, and their order, are the row path's, so the results are
//! the same bits; the tests of the election are [`agreement`]'s, shortened where the values
//! they see are flushed (see the comments). Left to the compiler, the per-lane code of a
//! fixed-size group came out as a mix of scalar and 128-bit operations, no faster than the
//! rows, so this one is written in intrinsics.

#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256, _CMP_GT_OQ, _CMP_NGE_UQ, _mm_loadu_si128, _mm256_add_ps, _mm256_and_ps,
    _mm256_and_si256, _mm256_andnot_si256, _mm256_castps_si256, _mm256_castsi256_ps, _mm256_cmp_ps,
    _mm256_cmpeq_epi32, _mm256_cvtepu16_epi32, _mm256_div_ps, _mm256_mul_ps, _mm256_or_si256,
    _mm256_set1_epi32, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps, _mm256_slli_epi32,
    _mm256_storeu_ps, _mm256_sub_ps, _mm256_xor_ps,
};

use rayon::prelude::*;

use super::super::{Combine, agreement};
use crate::merge::kernel::CHUNK;

/// Models the kernel is built for; a tensor merged from more takes the row path.
pub(super) const MAX_MODELS: usize = 8;

/// f32 lanes of an AVX2 register.
const LANES: usize = 8;

/// Registers a group is computed in, side by side (see `combine_task`).
const REGISTERS: usize = 2;

/// Elements per group: a divisor of 64, so a group's keep bits lie in one mask word.
const GROUP: usize = LANES * REGISTERS;

/// Whether this CPU runs the kernel.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// [`Backend::combine`](super::super::Backend::combine) of `c`, whose base and models are the
/// bf16 bits `base` and `models` (at most [`MAX_MODELS`]), into `out`. Only where
/// [`available`].
pub(super) fn combine_bf16(c: &Combine<'_>, base: &[u16], models: &[&[u16]], out: &mut [f32]) {
    assert!(available(), "the bf16 combine needs AVX2");
    // The model count is a constant of each kernel, so its loops unroll and a group's votes
    // stay in registers.
    match models.len() {
        0 => combine_models::<0>(c, base, models, out),
        1 => combine_models::<1>(c, base, models, out),
        2 => combine_models::<2>(c, base, models, out),
        3 => combine_models::<3>(c, base, models, out),
        4 => combine_models::<4>(c, base, models, out),
        5 => combine_models::<5>(c, base, models, out),
        6 => combine_models::<6>(c, base, models, out),
        7 => combine_models::<7>(c, base, models, out),
        8 => combine_models::<8>(c, base, models, out),
        m => panic!("{m} models; the bf16 combine takes at most {MAX_MODELS}"),
    }
}

fn combine_models<const M: usize>(
    c: &Combine<'_>,
    base: &[u16],
    models: &[&[u16]],
    out: &mut [f32],
) {
    let weights: [f32; M] = c.weights.try_into().expect("a weight per model");
    let factors: [f32; M] = c.factors.try_into().expect("a factor per model");
    let k = Constants {
        weights,
        factors,
        flushed_weights: weights.map(agreement::flush),
        flushed_factors: factors.map(agreement::flush),
        unit_factors: factors.map(|f| f == 1.0),
        consensus: c.consensus,
        normalize: c.normalize,
        lambda: c.lambda,
        plain_divisor: c.plain_divisor,
    };
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, o)| {
            let start = chunk * CHUNK;
            let end = start + o.len();
            let xs: [&[u16]; M] = std::array::from_fn(|i| &models[i][start..end]);
            // A chunk starts on a whole mask word.
            let words: [Option<&[u64]>; M] = std::array::from_fn(|i| {
                c.masks[i]
                    .as_ref()
                    .map(|mask| &mask.words()[start / 64..end.div_ceil(64)])
            });
            // SAFETY: `combine_bf16` checked that the CPU has AVX2.
            unsafe { combine_task(&k, &base[start..end], &xs, &words, o) };
        });
}

/// One tensor's constants.
struct Constants<const M: usize> {
    weights: [f32; M],
    factors: [f32; M],
    flushed_weights: [f32; M],
    flushed_factors: [f32; M],
    /// Factors of exactly 1 (no rescale), whose product the votes skip.
    unit_factors: [bool; M],
    consensus: bool,
    normalize: bool,
    lambda: f32,
    plain_divisor: f32,
}

/// Elements `0..out.len()` of one chunk: `base`, `xs[i]` and `words[i]` start at its first
/// element, which is the first of a mask word.
#[target_feature(enable = "avx2")]
unsafe fn combine_task<const M: usize>(
    k: &Constants<M>,
    base: &[u16],
    xs: &[&[u16]; M],
    words: &[Option<&[u64]>; M],
    out: &mut [f32],
) {
    let n = out.len();
    let whole = n / GROUP * GROUP;
    let bits_of = |i: usize, at: usize| {
        // A model without a mask keeps everything. A group lies in one mask word.
        words[i].map_or(u64::MAX, |w| w[at / 64] >> (at % 64))
    };
    // One group's result from its widened base `b` and models `xs`; `bits[i]` is model `i`'s keep
    // bits, element `e` of the group in bit `e`. Every step runs on the group's registers side by
    // side: one register's steps depend on each other all the way from the votes through the
    // election to the result, so a single one kept the core waiting on latencies.
    // (A closure, so that it is inlined: a function cannot be both `#[inline(always)]` and
    // `#[target_feature]`, and called, the arrays went through the stack.)
    let combine_group = |b: [__m256; REGISTERS],
                         xs: &[[__m256; REGISTERS]; M],
                         bits: &[u64; M]|
     -> [__m256; REGISTERS] {
        let int = _mm256_castps_si256;
        let float = _mm256_castsi256_ps;
        let splat = |v: u32| _mm256_set1_epi32(v as i32);
        let zero = _mm256_setzero_ps();
        let one = _mm256_set1_ps(1.0);
        let lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        // 0.0 or 1.0 per lane of register `r`, as `keep_factor`.
        let keep = |bits: u64, r: usize| {
            let byte = (bits >> (LANES * r)) as u32 & 0xff;
            let set = _mm256_cmpeq_epi32(_mm256_and_si256(splat(byte), lane_bits), lane_bits);
            _mm256_and_ps(float(set), one)
        };
        let exponent = splat(0x7f80_0000);
        // `agreement::flush`: a zero exponent (±0, denormals) becomes +0.
        let flush = |v: __m256| {
            let denormal = _mm256_cmpeq_epi32(_mm256_and_si256(int(v), exponent), int(zero));
            float(_mm256_andnot_si256(denormal, int(v)))
        };
        let mut mixed = [zero; REGISTERS];
        let mut divisor = [_mm256_set1_ps(k.plain_divisor); REGISTERS];
        if k.consensus {
            let fb = b.map(flush);
            let mut total = [zero; REGISTERS];
            let mut votes = [[zero; REGISTERS]; M];
            for (i, votes) in votes.iter_mut().enumerate() {
                let (f, w) = (
                    _mm256_set1_ps(k.flushed_factors[i]),
                    _mm256_set1_ps(k.flushed_weights[i]),
                );
                let bits = bits[i];
                for r in 0..REGISTERS {
                    // `agreement::vote_of_flushed`.
                    let delta = flush(_mm256_sub_ps(flush(xs[i][r]), fb[r]));
                    let kept = _mm256_mul_ps(delta, keep(bits, r));
                    // A factor of 1 leaves the kept delta as it is, and the flush of the
                    // product would only make a −0 into +0, which the weight's product then
                    // loses to the vote's flush anyway.
                    let scaled = if k.unit_factors[i] {
                        kept
                    } else {
                        flush(_mm256_mul_ps(kept, f))
                    };
                    votes[r] = flush(_mm256_mul_ps(w, scaled));
                    total[r] = flush(_mm256_add_ps(total[r], votes[r]));
                }
            }
            // The votes and totals are flushed: each is +0, a normal number, an infinity or
            // NaN, never −0 or a denormal. That makes `agreement::elects_negative` "NaN or
            // below 0", and `agreement::agrees` "of the elected sign and neither 0 nor NaN",
            // one ordered compare after the elected sign is taken off.
            let negative = total.map(|t| _mm256_cmp_ps::<_CMP_NGE_UQ>(t, zero));
            let sign = _mm256_set1_ps(-0.0);
            let unsigned = negative.map(|n| _mm256_and_ps(n, sign));
            let mut weight = [zero; REGISTERS];
            for (i, votes) in votes.iter().enumerate() {
                let w = _mm256_set1_ps(k.flushed_weights[i]);
                for r in 0..REGISTERS {
                    let agree =
                        _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_xor_ps(votes[r], unsigned[r]), zero);
                    mixed[r] = _mm256_add_ps(mixed[r], _mm256_and_ps(votes[r], agree));
                    weight[r] = flush(_mm256_add_ps(weight[r], _mm256_and_ps(w, agree)));
                }
            }
            // No agreeing weight (a flushed +0) becomes 1.
            divisor = weight.map(|q| {
                let none = _mm256_cmpeq_epi32(int(q), int(zero));
                float(_mm256_or_si256(int(q), _mm256_and_si256(none, int(one))))
            });
        } else {
            for (i, xs) in xs.iter().enumerate() {
                let (f, w) = (_mm256_set1_ps(k.factors[i]), _mm256_set1_ps(k.weights[i]));
                let bits = bits[i];
                for r in 0..REGISTERS {
                    let delta = _mm256_mul_ps(_mm256_sub_ps(xs[r], b[r]), keep(bits, r));
                    mixed[r] = _mm256_add_ps(mixed[r], _mm256_mul_ps(w, _mm256_mul_ps(delta, f)));
                }
            }
        }
        std::array::from_fn(|r| {
            let mut m = mixed[r];
            if k.normalize {
                m = _mm256_div_ps(m, divisor[r]);
            }
            if k.lambda != 1.0 {
                m = _mm256_mul_ps(m, _mm256_set1_ps(k.lambda));
            }
            _mm256_add_ps(b[r], m)
        })
    };
    for at in (0..whole).step_by(GROUP) {
        let load = |x: &[u16]| {
            let x: &[u16; GROUP] = x[at..at + GROUP].try_into().expect("a whole group");
            widen(x)
        };
        let xs_at = xs.map(load);
        let bits = std::array::from_fn(|i| bits_of(i, at));
        let result = combine_group(load(base), &xs_at, &bits);
        for (r, &v) in result.iter().enumerate() {
            // SAFETY: `at + GROUP <= whole <= out.len()`.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(at + r * LANES), v) };
        }
    }
    if whole < n {
        // The last, partial group, padded with zeros; only its own lanes are stored.
        let len = n - whole;
        let padded = |x: &[u16]| {
            let mut group = [0u16; GROUP];
            group[..len].copy_from_slice(&x[whole..]);
            widen(&group)
        };
        let xs_at = xs.map(padded);
        let bits = std::array::from_fn(|i| bits_of(i, whole));
        let result = combine_group(padded(base), &xs_at, &bits);
        let mut lanes = [0f32; GROUP];
        for (r, &v) in result.iter().enumerate() {
            // SAFETY: `lanes` holds `GROUP` f32.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(r * LANES), v) };
        }
        out[whole..].copy_from_slice(&lanes[..len]);
    }
}

/// A group's bf16 bit patterns as f32, eight to a register.
#[target_feature(enable = "avx2")]
fn widen(x: &[u16; GROUP]) -> [__m256; REGISTERS] {
    std::array::from_fn(|r| {
        // SAFETY: elements `8r..8r + 8` of `x` are 16 bytes; the load is unaligned.
        let bits = unsafe { _mm_loadu_si128(x.as_ptr().add(r * LANES).cast()) };
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    })
}
