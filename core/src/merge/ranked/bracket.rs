//! Cut keys guessed from a sample and checked in one pass: the fast path of [`super`].
//!
//! A few thousand short runs of every task vector's magnitudes, sorted, say roughly where each
//! cut falls. One streaming pass then sets the bits of the keys strictly between those guesses,
//! records the keys inside them, and counts the keys below; the counts prove (or refute) that
//! each cut lies inside its bracket, and the recorded keys give its exact key. A model whose
//! guess is refuted takes the radix passes instead, so a bad sample costs time, never a wrong
//! mask.
//!
//! bf16 task vectors have few distinct magnitudes: a cut often falls in a run of equal keys
//! holding several percent of the tensor. Such a run (the sample's mode inside a bracket) gets
//! one bit per element instead of a record, so a heavy tie costs no more than a light one.

use rayon::prelude::*;

use super::{Also, Keep, Magnitude, Selection, count_ones, for_each_keys, run};
use crate::checkpoint::TensorView;
use crate::merge::kernel::{CHUNK, with_decoded, zip_chunks};
use crate::merge::select::{magnitude_key, set_bit};

/// Contiguous elements per sample run: one 64-byte line of bf16.
const RUN: usize = 32;
/// Sample runs per tensor at most: 128 Ki keys per model.
const RUNS: usize = 4096;
/// Tensors smaller than this take the radix passes: a sample would be too small to bracket
/// the cuts tightly, and their passes are cheap anyway.
const SAMPLED_FROM: usize = 1 << 16;
/// The largest magnitude key: keys have the sign bit clear.
const MAX_KEY: u32 = u32::MAX >> 1;
/// A heavy key that matches nothing.
const NO_KEY: u32 = u32::MAX;

/// An inclusive key range guessed to hold a cut, and its heaviest key if one run of equal keys
/// fills much of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bracket {
    lo: u32,
    hi: u32,
    heavy: u32,
}

impl Bracket {
    fn span(self) -> u32 {
        // `hi` ≤ MAX_KEY, so this cannot overflow.
        self.hi - self.lo + 1
    }
}

/// One model's guess: one or two disjoint brackets, ascending, and which holds each cut slot
/// (0 the lower cut, 1 the upper, as [`Keep::positions`]).
#[derive(Clone, Debug)]
struct Guess {
    brackets: Vec<Bracket>,
    slots: [Option<usize>; 2],
}

impl Guess {
    /// Keys strictly between the brackets (above the lower one, below the upper one) as
    /// `first..first + span`: kept wherever in its bracket each cut turns out to be.
    fn strict_range(&self) -> (u32, u32) {
        let bracket = |slot: usize| self.slots[slot].map(|b| self.brackets[b]);
        let first = bracket(0).map_or(0, |b| b.hi + 1);
        let end = bracket(1).map_or(u32::MAX, |b| b.lo);
        (first, end.saturating_sub(first))
    }
}

/// What the pass keeps of one model's chunk.
#[derive(Clone, Debug)]
struct ChunkScan {
    /// Bits of the keys in the guess's strict range.
    strict: Vec<u64>,
    /// Per bracket, bits of the keys equal to its heavy key.
    heavy: Vec<Vec<u64>>,
    /// The other keys inside a bracket, in index order, as (offset in the chunk, key).
    records: Vec<(u16, u32)>,
    /// Keys below the lowest bracket.
    below: usize,
}

/// A model's cut keys and bits per chunk (as the radix passes lay them out).
pub(super) type Found = Option<(Selection, Vec<Vec<u64>>)>;

/// Each ranked model's (`keeps[i]` is `Some`) cut keys and bits per chunk, or `None` for the
/// models left to the radix passes; and `also` of every chunk of base and models, from the
/// same pass.
pub(super) fn select<T: Send>(
    base: &TensorView<'_>,
    models: &[TensorView<'_>],
    keeps: &[Option<Keep>],
    magnitude: Magnitude,
    also: Option<&Also<'_, T>>,
) -> (Vec<Found>, Option<Vec<T>>) {
    let n = base.numel();
    let mut guesses: Vec<Option<Guess>> = vec![None; keeps.len()];
    if n >= SAMPLED_FROM && keeps.iter().any(Option::is_some) {
        let sampled: Vec<usize> = (0..keeps.len()).filter(|&i| keeps[i].is_some()).collect();
        let mut samples = sample(&inputs(base, models, &sampled), n, magnitude);
        let made: Vec<Option<Guess>> = sampled
            .par_iter()
            .zip(samples.par_iter_mut())
            .map(|(&i, sample)| keeps[i].and_then(|keep| guess(sample, keep, n)))
            .collect();
        for (&i, made) in sampled.iter().zip(made) {
            guesses[i] = made;
        }
    }
    let guessed: Vec<usize> = (0..keeps.len()).filter(|&i| guesses[i].is_some()).collect();
    let mut found = vec![None; keeps.len()];
    if guessed.is_empty() && also.is_none() {
        return (found, None);
    }
    // Only what is scanned is decoded, unless `also` wants every model.
    let decoded: Vec<usize> = if also.is_some() {
        (0..models.len()).collect()
    } else {
        guessed.clone()
    };
    let scanned: Vec<(usize, &Guess)> = guessed
        .iter()
        .map(|&i| {
            let at = decoded.iter().position(|&d| d == i).expect("decoded");
            (1 + at, guesses[i].as_ref().expect("guessed"))
        })
        .collect();
    let (scans, chunks) = scan_all(
        &inputs(base, models, &decoded),
        n,
        &scanned,
        magnitude,
        also,
    );
    // Each model's cuts are settled apart (on the pool: the serial part of this was an idle
    // core).
    let settled: Vec<Found> = guessed
        .par_iter()
        .zip(&scanned)
        .zip(scans)
        .map(|((&i, (_, guess)), scans)| settle(keeps[i].expect("ranked"), n, guess, scans))
        .collect();
    for (&i, settled) in guessed.iter().zip(settled) {
        found[i] = settled;
    }
    (found, chunks)
}

/// The base, then `models[i]` for each `i` in `chosen`.
fn inputs<'a>(
    base: &TensorView<'a>,
    models: &[TensorView<'a>],
    chosen: &[usize],
) -> Vec<TensorView<'a>> {
    std::iter::once(base.clone())
        .chain(chosen.iter().map(|&i| models[i].clone()))
        .collect()
}

/// The pass: per scanned model (its position in `inputs`, and its guess), its scan of every
/// chunk; and `also` of every chunk.
fn scan_all<T: Send>(
    inputs: &[TensorView<'_>],
    n: usize,
    scanned: &[(usize, &Guess)],
    magnitude: Magnitude,
    also: Option<&Also<'_, T>>,
) -> (Vec<Vec<ChunkScan>>, Option<Vec<T>>) {
    let chunks = zip_chunks(inputs, n, |start, xs| {
        let scans: Vec<ChunkScan> = scanned
            .iter()
            .map(|&(at, guess)| scan(xs[0], xs[at], magnitude, guess))
            .collect();
        (scans, also.map(|f| f(start, xs)))
    });
    let mut per_model: Vec<Vec<ChunkScan>> = vec![Vec::with_capacity(chunks.len()); scanned.len()];
    let mut results = also.map(|_| Vec::with_capacity(chunks.len()));
    for (scans, result) in chunks {
        for (model, scan) in per_model.iter_mut().zip(scans) {
            model.push(scan);
        }
        if let (Some(results), Some(result)) = (results.as_mut(), result) {
            results.push(result);
        }
    }
    (per_model, results)
}

/// Every model's magnitude keys (unsorted) at [`RUNS`] runs spread over the tensor, each at a
/// pseudo-random offset in its stretch (evenly spaced runs could alias with the rows).
fn sample(inputs: &[TensorView<'_>], n: usize, magnitude: Magnitude) -> Vec<Vec<u32>> {
    let runs = (n / (16 * RUN)).clamp(1, RUNS);
    let stretch = n / runs;
    let per_run: Vec<Vec<Vec<u32>>> = (0..runs)
        .into_par_iter()
        .with_min_len(64)
        .map(|r| {
            let len = RUN.min(stretch);
            let jitter = splitmix(r as u64) as usize % (stretch - len + 1);
            with_decoded(inputs, r * stretch + jitter, len, |xs| {
                let mut keys = Vec::with_capacity(inputs.len() - 1);
                for_each_keys(xs, magnitude, |_, k| keys.push(k.to_vec()));
                keys
            })
        })
        .collect();
    let mut samples = vec![Vec::with_capacity(runs * RUN); inputs.len() - 1];
    for run in per_run {
        for (sample, keys) in samples.iter_mut().zip(run) {
            sample.extend(keys);
        }
    }
    samples
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The brackets of `keep`'s cuts from `sample` (reordered: only a few of its order statistics
/// are needed, and selecting them beats sorting it), or `None` if they would hold too many keys
/// to record (then the radix passes are cheaper).
fn guess(sample: &mut [u32], keep: Keep, n: usize) -> Option<Guess> {
    let len = sample.len() as f64;
    let mut ranges: Vec<(usize, u32, u32)> = Vec::with_capacity(2);
    for (slot, position) in keep.positions(n).into_iter().enumerate() {
        let Some(position) = position else { continue };
        let q = position as f64 / n as f64;
        let at = q * len;
        // Six standard deviations of the sample quantile, widened for runs of neighbours
        // that are not independent draws.
        let margin = 6.0 * (len * q * (1.0 - q)).sqrt() + (2 * RUN) as f64;
        let lo = (at - margin).floor();
        let hi = (at + margin).ceil();
        let lo = if lo < 0.0 {
            0
        } else {
            *sample.select_nth_unstable(lo as usize).1
        };
        let hi = if hi >= len {
            MAX_KEY
        } else {
            *sample.select_nth_unstable(hi as usize).1
        };
        ranges.push((slot, lo, hi));
    }
    let mut brackets: Vec<(u32, u32)> = Vec::with_capacity(2);
    let mut slots = [None; 2];
    for (slot, lo, hi) in ranges {
        match brackets.last_mut() {
            // Overlapping or touching brackets become one, holding both cuts.
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => brackets.push((lo, hi)),
        }
        slots[slot] = Some(brackets.len() - 1);
    }
    let mut recorded = 0;
    let brackets = brackets
        .into_iter()
        .map(|(lo, hi)| {
            let mut inside: Vec<u32> = sample
                .iter()
                .copied()
                .filter(|&k| (lo..=hi).contains(&k))
                .collect();
            inside.sort_unstable();
            let (mode, count) = mode(&inside);
            // A run worth a bit per element rather than a record per key.
            let heavy = count * 4 >= inside.len() || count * 256 >= sample.len();
            recorded += inside.len() - if heavy { count } else { 0 };
            Bracket {
                lo,
                hi,
                heavy: if heavy { mode } else { NO_KEY },
            }
        })
        .collect();
    (recorded * 8 <= sample.len()).then_some(Guess { brackets, slots })
}

/// The most frequent key of sorted `keys` and its count (`(NO_KEY, 0)` when empty).
fn mode(keys: &[u32]) -> (u32, usize) {
    let mut best = (NO_KEY, 0);
    for run in keys.chunk_by(|a, b| a == b) {
        if run.len() > best.1 {
            best = (run[0], run.len());
        }
    }
    best
}

/// The pass on one model's chunk (`base` and `model` decoded).
fn scan(base: &[f32], model: &[f32], magnitude: Magnitude, guess: &Guess) -> ChunkScan {
    let words = base.len().div_ceil(64);
    let finite = magnitude == Magnitude::Finite;
    let ranges = [0, 1].map(|b| {
        guess
            .brackets
            .get(b)
            .map_or((0, 0, NO_KEY), |k| (k.lo, k.span(), k.heavy))
    });
    let mut strict = vec![0; words];
    let mut bits = [[0u64; CHUNK / 64]; 4];
    let [inside_0, heavy_0, inside_1, heavy_1] = &mut bits;
    let tests = Tests {
        finite,
        strict: guess.strict_range(),
        ranges,
    };
    let below = scan_words(
        base,
        model,
        tests,
        Words {
            strict: &mut strict,
            inside: [&mut inside_0[..words], &mut inside_1[..words]],
            heavy: [&mut heavy_0[..words], &mut heavy_1[..words]],
        },
    );
    let mut records = Vec::new();
    for (b, bracket) in guess.brackets.iter().enumerate() {
        let (inside, heavy) = (&bits[2 * b][..words], &bits[2 * b + 1][..words]);
        for (w, (&inside, &heavy)) in inside.iter().zip(heavy).enumerate() {
            let mut rest = inside & !heavy;
            while rest != 0 {
                let offset = w * 64 + rest.trailing_zeros() as usize;
                // A chunk's offsets fit in u16 (see the radix records).
                records.push((offset as u16, key(base[offset], model[offset], finite)));
                rest &= rest - 1;
            }
        }
        debug_assert!(bracket.heavy != NO_KEY || heavy.iter().all(|&h| h == 0));
    }
    let heavy = guess
        .brackets
        .iter()
        .enumerate()
        .map(|(b, bracket)| {
            if bracket.heavy == NO_KEY {
                Vec::new()
            } else {
                bits[2 * b + 1][..words].to_vec()
            }
        })
        .collect();
    ChunkScan {
        strict,
        heavy,
        records,
        below,
    }
}

/// The magnitude key of `x - b` (a non-finite difference as 0 when `finite`).
#[inline(always)]
fn key(b: f32, x: f32, finite: bool) -> u32 {
    let d = x - b;
    magnitude_key(if finite && !d.is_finite() { 0.0 } else { d })
}

/// What one sweep tests each key against: the strict range `(first, span)` and per bracket
/// `(lo, span, heavy key)`; and whether a non-finite difference counts as 0.
#[derive(Clone, Copy, Debug)]
struct Tests {
    finite: bool,
    strict: (u32, u32),
    ranges: [(u32, u32, u32); 2],
}

/// The words one sweep fills, one bit per key: in the strict range, then per bracket inside
/// it and equal to its heavy key.
struct Words<'w> {
    strict: &'w mut [u64],
    inside: [&'w mut [u64]; 2],
    heavy: [&'w mut [u64]; 2],
}

impl Words<'_> {
    /// Stores one group's bits (strict, inside 0, heavy 0, inside 1, heavy 1) as word `w`.
    fn set(&mut self, w: usize, bits: [u64; 5]) {
        self.strict[w] = bits[0];
        self.inside[0][w] = bits[1];
        self.heavy[0][w] = bits[2];
        self.inside[1][w] = bits[3];
        self.heavy[1][w] = bits[4];
    }

    /// The words before word `w`, and those from it on.
    fn split_at(self, w: usize) -> (Self, Self) {
        let (strict, strict_rest) = self.strict.split_at_mut(w);
        let [(inside_0, inside_0_rest), (inside_1, inside_1_rest)] =
            self.inside.map(|words| words.split_at_mut(w));
        let [(heavy_0, heavy_0_rest), (heavy_1, heavy_1_rest)] =
            self.heavy.map(|words| words.split_at_mut(w));
        (
            Words {
                strict,
                inside: [inside_0, inside_1],
                heavy: [heavy_0, heavy_1],
            },
            Words {
                strict: strict_rest,
                inside: [inside_0_rest, inside_1_rest],
                heavy: [heavy_0_rest, heavy_1_rest],
            },
        )
    }
}

/// One model's chunk in one sweep, keys computed 64 at a time and never stored, into `words`.
/// Returns how many keys lie below the first bracket.
fn scan_words(base: &[f32], model: &[f32], tests: Tests, words: Words<'_>) -> usize {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { with_portable_tail(scan_words_avx512, base, model, tests, words) };
    }
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { with_portable_tail(scan_words_avx2, base, model, tests, words) };
    }
    scan_words_portable(base, model, tests, words)
}

/// A SIMD kernel of [`scan_words`], for whole groups of 64 keys only.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
type GroupKernel = unsafe fn(&[f32], &[f32], Tests, Words<'_>) -> usize;

/// [`scan_words`] with `kernel` over the chunk's whole groups of 64 keys and the portable loop
/// over the partial last one.
///
/// # Safety
/// The CPU must have the target features `kernel` is compiled for.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
unsafe fn with_portable_tail(
    kernel: GroupKernel,
    base: &[f32],
    model: &[f32],
    tests: Tests,
    words: Words<'_>,
) -> usize {
    let full = base.len() / 64;
    let whole = 64 * full;
    let (groups, tail) = words.split_at(full);
    // SAFETY: the caller's promise.
    let below = unsafe { kernel(&base[..whole], &model[..whole], tests, groups) };
    below + scan_words_portable(&base[whole..], &model[whole..], tests, tail)
}

/// [`scan_words`] for any CPU (vectorised where the compiler can).
#[multiversion::multiversion(targets = "simd")]
fn scan_words_portable(base: &[f32], model: &[f32], tests: Tests, mut words: Words<'_>) -> usize {
    let Tests {
        finite,
        strict: (first, span),
        ranges: [(lo_0, span_0, heavy_0), (lo_1, span_1, heavy_1)],
    } = tests;
    let mut below = 0;
    for (w, (b, x)) in base.chunks(64).zip(model.chunks(64)).enumerate() {
        let mut keys = [0u32; 64];
        for ((k, &b), &x) in keys.iter_mut().zip(b).zip(x) {
            *k = key(b, x, finite);
        }
        let mut bits = [0u64; 5];
        let mut under = 0u32;
        for (j, &k) in keys[..b.len()].iter().enumerate() {
            bits[0] |= u64::from(k.wrapping_sub(first) < span) << j;
            bits[1] |= u64::from(k.wrapping_sub(lo_0) < span_0) << j;
            bits[2] |= u64::from(k == heavy_0) << j;
            bits[3] |= u64::from(k.wrapping_sub(lo_1) < span_1) << j;
            bits[4] |= u64::from(k == heavy_1) << j;
            under += u32::from(k < lo_0);
        }
        words.set(w, bits);
        below += under as usize;
    }
    below
}

/// [`scan_words`] with AVX-512, whose compares give bit masks directly: compilers turn the
/// portable loop's `bit << j` into 64-bit lanes and shifts, several times slower. The keys and
/// tests are the same integer operations, so the bits are too. Whole groups of 64 keys only
/// (see [`with_portable_tail`]).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
unsafe fn scan_words_avx512(
    base: &[f32],
    model: &[f32],
    tests: Tests,
    mut words: Words<'_>,
) -> usize {
    use std::arch::x86_64::{
        __m512i, _mm512_and_si512, _mm512_castps_si512, _mm512_cmpeq_epi32_mask,
        _mm512_cmplt_epu32_mask, _mm512_loadu_ps, _mm512_maskz_mov_epi32, _mm512_set1_epi32,
        _mm512_sub_epi32, _mm512_sub_ps,
    };
    let [(lo_0, span_0, heavy_0), (lo_1, span_1, heavy_1)] = tests.ranges;
    // Integer lanes hold the u32 patterns; the unsigned compares read them back as u32.
    let splat = |v: u32| _mm512_set1_epi32(v as i32);
    let (first, span) = (splat(tests.strict.0), splat(tests.strict.1));
    let (lo_0, span_0, heavy_0) = (splat(lo_0), splat(span_0), splat(heavy_0));
    let (lo_1, span_1, heavy_1) = (splat(lo_1), splat(span_1), splat(heavy_1));
    let (magnitude, exponent) = (splat(u32::MAX >> 1), splat(0x7f80_0000));
    let inside = |k: __m512i, lo: __m512i, span: __m512i| {
        u64::from(_mm512_cmplt_epu32_mask(_mm512_sub_epi32(k, lo), span))
    };
    let full = base.len() / 64;
    let mut below = 0;
    for w in 0..full {
        let mut bits = [0u64; 5];
        let mut under = 0;
        for q in 0..4 {
            let at = 64 * w + 16 * q;
            // SAFETY: `at + 16 <= 64 * full <= base.len() == model.len()`.
            let (b, x) = unsafe {
                (
                    _mm512_loadu_ps(base.as_ptr().add(at)),
                    _mm512_loadu_ps(model.as_ptr().add(at)),
                )
            };
            // |x − b| as bits: the difference with its sign bit cleared.
            let mut k = _mm512_and_si512(_mm512_castps_si512(_mm512_sub_ps(x, b)), magnitude);
            if tests.finite {
                // NaN and ±Inf (every exponent bit set) count as 0.
                let bad = _mm512_cmpeq_epi32_mask(_mm512_and_si512(k, exponent), exponent);
                k = _mm512_maskz_mov_epi32(!bad, k);
            }
            let shift = 16 * q;
            bits[0] |= inside(k, first, span) << shift;
            bits[1] |= inside(k, lo_0, span_0) << shift;
            bits[2] |= u64::from(_mm512_cmpeq_epi32_mask(k, heavy_0)) << shift;
            bits[3] |= inside(k, lo_1, span_1) << shift;
            bits[4] |= u64::from(_mm512_cmpeq_epi32_mask(k, heavy_1)) << shift;
            under += _mm512_cmplt_epu32_mask(k, lo_0).count_ones() as usize;
        }
        words.set(w, bits);
        below += under;
    }
    below
}

/// [`scan_words`] with AVX2, for the many x86 CPUs without AVX-512 (the portable loop's bits
/// took a third of a TIES merge on one). AVX2 compares are signed and give lanes, not bits:
/// flipping both sides' sign bits makes them unsigned, and `movemask` gathers the lanes' top
/// bits, 8 at a time. The keys and tests are the same integer operations, so the bits are too.
/// Whole groups of 64 keys only (see [`with_portable_tail`]).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2")]
unsafe fn scan_words_avx2(
    base: &[f32],
    model: &[f32],
    tests: Tests,
    mut words: Words<'_>,
) -> usize {
    use std::arch::x86_64::{
        __m256i, _mm256_and_si256, _mm256_andnot_si256, _mm256_castps_si256, _mm256_castsi256_ps,
        _mm256_cmpeq_epi32, _mm256_cmpgt_epi32, _mm256_loadu_ps, _mm256_movemask_ps,
        _mm256_set1_epi32, _mm256_sub_epi32, _mm256_sub_ps, _mm256_xor_si256,
    };
    let [(lo_0, span_0, heavy_0), (lo_1, span_1, heavy_1)] = tests.ranges;
    let splat = |v: u32| _mm256_set1_epi32(v as i32);
    let sign = splat(0x8000_0000);
    let flip = |v: __m256i| _mm256_xor_si256(v, sign);
    // `a < b` as unsigned, given `b` already flipped, as 8 bits.
    let below = |a: __m256i, flipped_b: __m256i| {
        let lanes = _mm256_cmpgt_epi32(flipped_b, flip(a));
        u64::from(_mm256_movemask_ps(_mm256_castsi256_ps(lanes)) as u8)
    };
    let equal = |a: __m256i, b: __m256i| {
        let lanes = _mm256_cmpeq_epi32(a, b);
        u64::from(_mm256_movemask_ps(_mm256_castsi256_ps(lanes)) as u8)
    };
    let inside = |k: __m256i, lo: __m256i, flipped_span: __m256i| {
        below(_mm256_sub_epi32(k, lo), flipped_span)
    };
    let (first, span) = (splat(tests.strict.0), flip(splat(tests.strict.1)));
    let (lo_0, span_0, heavy_0) = (splat(lo_0), flip(splat(span_0)), splat(heavy_0));
    let (lo_1, span_1, heavy_1) = (splat(lo_1), flip(splat(span_1)), splat(heavy_1));
    let flipped_lo_0 = flip(lo_0);
    let (magnitude, exponent) = (splat(u32::MAX >> 1), splat(0x7f80_0000));
    let full = base.len() / 64;
    let mut under_all = 0;
    for w in 0..full {
        let mut bits = [0u64; 5];
        let mut under = 0;
        for q in 0..8 {
            let at = 64 * w + 8 * q;
            // SAFETY: `at + 8 <= 64 * full <= base.len() == model.len()`.
            let (b, x) = unsafe {
                (
                    _mm256_loadu_ps(base.as_ptr().add(at)),
                    _mm256_loadu_ps(model.as_ptr().add(at)),
                )
            };
            // |x − b| as bits: the difference with its sign bit cleared.
            let mut k = _mm256_and_si256(_mm256_castps_si256(_mm256_sub_ps(x, b)), magnitude);
            if tests.finite {
                // NaN and ±Inf (every exponent bit set) count as 0.
                let bad = _mm256_cmpeq_epi32(_mm256_and_si256(k, exponent), exponent);
                k = _mm256_andnot_si256(bad, k);
            }
            let shift = 8 * q;
            bits[0] |= inside(k, first, span) << shift;
            bits[1] |= inside(k, lo_0, span_0) << shift;
            bits[2] |= equal(k, heavy_0) << shift;
            bits[3] |= inside(k, lo_1, span_1) << shift;
            bits[4] |= equal(k, heavy_1) << shift;
            under += below(k, flipped_lo_0).count_ones() as usize;
        }
        words.set(w, bits);
        under_all += under;
    }
    under_all
}

/// Checks that each cut lies in its bracket and finds its exact key; then every chunk's bits.
/// `None` if a cut fell outside its bracket.
fn settle(
    keep: Keep,
    n: usize,
    guess: &Guess,
    scans: Vec<ChunkScan>,
) -> Option<(Selection, Vec<Vec<u64>>)> {
    let below: usize = scans.iter().map(|s| s.below).sum();
    let strict: usize = scans.iter().map(|s| count_ones(&s.strict)).sum();
    // Per bracket: its recorded keys and its heavy count.
    let mut keys: Vec<Vec<u32>> = vec![Vec::new(); guess.brackets.len()];
    let mut heavy = vec![0; guess.brackets.len()];
    for scan in &scans {
        for &(_, key) in &scan.records {
            let b = guess
                .brackets
                .iter()
                .position(|b| key.wrapping_sub(b.lo) < b.span());
            keys[b.expect("a recorded key lies in a bracket")].push(key);
        }
        for (count, words) in heavy.iter_mut().zip(&scan.heavy) {
            *count += count_ones(words);
        }
    }
    let sizes: Vec<usize> = keys.iter().zip(&heavy).map(|(k, h)| k.len() + h).collect();
    // Ascending position of each bracket's first key: the strict keys lie between them.
    let starts = [below, below + sizes[0] + strict];
    let mut at = [None; 2];
    for (slot, position) in keep.positions(n).into_iter().enumerate() {
        let Some(position) = position else { continue };
        let b = guess.slots[slot].expect("a bracket per cut");
        let rank = position.checked_sub(starts[b]).filter(|&r| r < sizes[b])?;
        let (key, below_in, equal) = key_at(&mut keys[b], guess.brackets[b].heavy, heavy[b], rank);
        at[slot] = Some((key, starts[b] + below_in, equal));
    }
    let selection = Selection::new(keep.bounds(n, at));
    let bits = scans
        .into_par_iter()
        .map(|scan| finish(scan, guess, &selection))
        .collect();
    Some((selection, bits))
}

/// The key at `rank` of the multiset `keys` ∪ `heavy_count` × `heavy`, how many are smaller
/// and how many equal.
fn key_at(keys: &mut [u32], heavy: u32, heavy_count: usize, rank: usize) -> (u32, usize, usize) {
    let lighter = keys.iter().filter(|&&k| k < heavy).count();
    let key = if heavy_count > 0 && (lighter..lighter + heavy_count).contains(&rank) {
        heavy
    } else {
        let nth = if rank < lighter {
            rank
        } else {
            rank - heavy_count
        };
        *keys.select_nth_unstable(nth).1
    };
    let (mut below, mut equal) = (0, 0);
    for &k in keys.iter() {
        below += usize::from(k < key);
        equal += usize::from(k == key);
    }
    if heavy_count > 0 {
        if heavy < key {
            below += heavy_count;
        } else if heavy == key {
            equal += heavy_count;
        }
    }
    (key, below, equal)
}

/// One chunk's bits as [`super::classify`] lays them out, from the pass's scan.
fn finish(scan: ChunkScan, guess: &Guess, selection: &Selection) -> Vec<u64> {
    let ChunkScan {
        mut strict,
        heavy,
        records,
        ..
    } = scan;
    let words = strict.len();
    strict.resize(words * selection.slots(), 0);
    let (first, span) = selection.strict_range();
    let slot_of = |key: u32| {
        if key.wrapping_sub(first) < span {
            Some(0)
        } else {
            selection
                .ties
                .iter()
                .position(|t| t.key == key)
                .map(|s| s + 1)
        }
    };
    for (bracket, equal) in guess.brackets.iter().zip(&heavy) {
        if let Some(slot) = slot_of(bracket.heavy) {
            let run = &mut strict[slot * words..(slot + 1) * words];
            run.iter_mut().zip(equal).for_each(|(w, e)| *w |= e);
        }
    }
    for (offset, key) in records {
        if let Some(slot) = slot_of(key) {
            set_bit(&mut strict[slot * words..], usize::from(offset));
        }
    }
    debug_assert!(run(&strict, selection.slots(), 0).len() == words);
    strict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::methods::test_util::{f32_bytes, info, view, xorshift};
    use crate::merge::select::{rank_band_mask, top_k_mask};

    #[test]
    fn every_scan_kernel_sets_the_same_bits() {
        let n: usize = 3 * 64 + 29;
        let mut bits = xorshift(11);
        let mut value =
            move || (bits.next().expect("endless") >> 40) as f32 / (1 << 22) as f32 - 2.0;
        let base: Vec<f32> = (0..n).map(|_| value()).collect();
        let mut model: Vec<f32> = (0..n).map(|_| value()).collect();
        model[3] = f32::NAN;
        model[70] = f32::INFINITY;
        model[5] = base[5] + 0.5;
        model[6] = base[6] + 0.5;
        let mid = key(base[5], model[5], false);
        // The second bracket holds +Inf, the heavy key of the raw magnitudes only.
        let ranges = [
            (mid - (1 << 22), 1 << 23, mid),
            (0x7f00_0000, 1 << 24, 0x7f80_0000),
        ];
        type Kernel = fn(&[f32], &[f32], Tests, Words<'_>) -> usize;
        let run = |kernel: Kernel, finite| {
            let mut words: [Vec<u64>; 5] = std::array::from_fn(|_| vec![0; n.div_ceil(64)]);
            let [strict, i0, h0, i1, h1] = &mut words;
            let tests = Tests {
                finite,
                strict: (mid, 1 << 30),
                ranges,
            };
            let words_of = Words {
                strict,
                inside: [i0, i1],
                heavy: [h0, h1],
            };
            (kernel(&base, &model, tests, words_of), words)
        };
        for finite in [false, true] {
            let portable = run(scan_words_portable, finite);
            let dispatched = run(scan_words, finite);
            assert_eq!(portable, dispatched, "finite: {finite}");
            // The AVX2 kernel too where the dispatch picks AVX-512.
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                #[allow(unsafe_code)]
                // SAFETY: the CPU has AVX2, checked just above.
                let avx2 = run(
                    |b, m, t, w| unsafe { with_portable_tail(scan_words_avx2, b, m, t, w) },
                    finite,
                );
                assert_eq!(portable, avx2, "finite: {finite}");
            }
            let set = |k: usize| portable.1[k].iter().any(|&b| b != 0);
            assert!(set(0) && set(1) && set(2), "finite: {finite}");
            assert_eq!((set(3), set(4)), (!finite, !finite), "finite: {finite}");
        }
    }

    /// Base and models as views, and each model's stored magnitude keys.
    struct Family {
        infos: Vec<crate::checkpoint::TensorInfo>,
        bytes: Vec<Vec<u8>>,
        keys: Vec<Vec<u32>>,
    }

    impl Family {
        fn new(base: &[f32], deltas: &[Vec<f32>]) -> Self {
            let n = base.len();
            let models: Vec<Vec<f32>> = deltas
                .iter()
                .map(|d| base.iter().zip(d).map(|(b, d)| b + d).collect())
                .collect();
            let keys = models
                .iter()
                .map(|x| {
                    x.iter()
                        .zip(base)
                        .map(|(x, b)| magnitude_key(x - b))
                        .collect()
                })
                .collect();
            Self {
                infos: (0..=deltas.len())
                    .map(|i| info(&format!("t{i}"), n))
                    .collect(),
                bytes: std::iter::once(base)
                    .chain(models.iter().map(Vec::as_slice))
                    .map(f32_bytes)
                    .collect(),
                keys,
            }
        }

        fn views(&self) -> Vec<TensorView<'_>> {
            self.infos
                .iter()
                .zip(&self.bytes)
                .map(|(i, b)| view(i, b))
                .collect()
        }
    }

    fn expected(keys: &[u32], keep: Keep) -> crate::merge::select::BitMask {
        match keep {
            Keep::Top(k) => top_k_mask(keys, k),
            Keep::Band(lo, hi) => rank_band_mask(keys, lo, hi),
        }
    }

    /// Deltas of distinct magnitudes; deltas where a tenth of the tensor is below 1, 30 % is
    /// exactly 1 (the bf16 case: a cut inside a heavy run of equal keys) and the rest above.
    fn deltas(n: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
        let mut bits = xorshift(7);
        let mut uniform =
            move || (bits.next().expect("endless") >> 40) as f32 / (1u64 << 24) as f32;
        let base: Vec<f32> = (0..n).map(|_| uniform() - 0.5).collect();
        let spread: Vec<f32> = (0..n).map(|_| (uniform() - 0.5) * 0.01).collect();
        let heavy: Vec<f32> = (0..n)
            .map(|_| match uniform() {
                u if u < 0.35 => u,
                u if u < 0.65 => 1.0,
                u => 1.0 + u,
            })
            .collect();
        (base, vec![spread, heavy])
    }

    #[test]
    fn sampled_cuts_give_the_masks_of_a_full_sort() {
        let n = 20 * CHUNK + 77;
        let (base, deltas) = deltas(n);
        // The heavy model's keys are exact only against an exactly representable base.
        let base: Vec<f32> = base.iter().map(|b| (b * 1024.0).round() / 1024.0).collect();
        let family = Family::new(&base, &deltas);
        let views = family.views();
        // The heavy model's cut falls in its run of 1.0s, which gets bits, not records.
        let mut samples = sample(&views, n, Magnitude::Raw);
        let heavy = guess(&mut samples[1], Keep::Top(n / 2), n).expect("bracketed");
        assert_eq!(heavy.brackets[0].heavy, 1.0f32.to_bits());
        let cases = [
            [Keep::Top(n / 2), Keep::Top(n / 2)],
            [Keep::Band(n / 4, 3 * n / 4), Keep::Band(n / 3, n / 2)],
            [Keep::Band(n / 2 - 50, n / 2 + 50), Keep::Top(n / 10)],
            [Keep::Top(n - 5), Keep::Band(0, 2 * n / 5)],
        ];
        for keeps in cases {
            let ranked = keeps.map(Some);
            let (found, _) = select(
                &views[0],
                &views[1..],
                &ranked,
                Magnitude::Raw,
                None::<&Also<'_, ()>>,
            );
            for (i, (found, keep)) in found.into_iter().zip(keeps).enumerate() {
                // Only the extreme cut may be left to the radix passes.
                let Some((selection, bits)) = found else {
                    assert_eq!(keep, Keep::Top(n - 5), "model {i} {keep:?} not bracketed");
                    continue;
                };
                let got = super::super::mask_of(n, &selection, &bits);
                assert!(got == expected(&family.keys[i], keep), "model {i} {keep:?}");
            }
        }
    }

    #[test]
    fn a_cut_outside_its_bracket_is_refuted() {
        let n = 8 * CHUNK;
        let (base, deltas) = deltas(n);
        let family = Family::new(&base, &deltas[..1]);
        let views = family.views();
        let mut sorted = family.keys[0].clone();
        sorted.sort_unstable();
        let keep = Keep::Top(n / 2);
        // A bracket just above the true cut, and one just below it.
        for (lo, hi) in [(n / 2 + 10, n / 2 + 100), (n / 2 - 100, n / 2 - 10)] {
            let guess = Guess {
                brackets: vec![Bracket {
                    lo: sorted[lo],
                    hi: sorted[hi],
                    heavy: NO_KEY,
                }],
                slots: [Some(0), None],
            };
            let (scans, _) = scan_all(
                &views,
                n,
                &[(1, &guess)],
                Magnitude::Raw,
                None::<&Also<'_, ()>>,
            );
            let scans = scans.into_iter().next().expect("one model");
            assert!(settle(keep, n, &guess, scans).is_none(), "{lo}..{hi}");
        }
        // The masks still come out right through the radix passes.
        let masks = super::super::masks(&views[0], &views[1..], &[keep]);
        assert!(masks[0] == top_k_mask(&family.keys[0], n / 2));
    }
}
