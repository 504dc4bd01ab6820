//! Rank selection for all of a tensor's task vectors at once (TIES, Model Breadcrumbs).
//!
//! Selecting from stored keys costs 4 bytes per element per model to write and several passes
//! to read them again. Here the magnitude keys `|θᵢ − θ_b|` are never stored: three streaming
//! passes decode the base and every model chunk by chunk (the base once for all models) and
//! recompute them:
//! 1. every model's top-16-bit histogram, which locates the bucket holding each cut;
//! 2. the low-16-bit histogram of the keys in those buckets, which gives each cut's exact key;
//! 3. per model, one bit per key strictly inside the kept band and one per key equal to a cut.
//!
//! Keys equal to a cut are then kept by their ordinal in index order (ALGORITHMS.md §2.1), from
//! per-chunk counts of those bits, without touching the inputs again.

use std::cell::RefCell;

use rayon::prelude::*;

use super::kernel::{CHUNK, with_decoded, zip_chunks};
use super::select::{BitMask, Bound, HighBits, Ties, locate, magnitude_key};
use crate::checkpoint::TensorView;

/// What one task vector keeps, by the ascending order of (magnitude, flat index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The `k` largest magnitudes; among equal ones, lower flat indices first (TIES).
    Top(usize),
    /// Ascending positions `lo..hi` (Model Breadcrumbs).
    Band(usize, usize),
}

impl Keep {
    /// The mask when it needs no ranks at all (everything or nothing is kept).
    fn fixed(self, n: usize) -> Option<BitMask> {
        match self {
            Self::Top(k) if k >= n => Some(BitMask::full(n)),
            Self::Top(0) => Some(BitMask::new(n)),
            Self::Band(lo, hi) if lo >= hi.min(n) => Some(BitMask::new(n)),
            Self::Band(0, hi) if hi >= n => Some(BitMask::full(n)),
            _ => None,
        }
    }

    /// The ascending positions whose keys bound the kept set: (lower, upper).
    fn positions(self, n: usize) -> [Option<usize>; 2] {
        match self {
            Self::Top(k) => [Some(n - k), None],
            Self::Band(lo, hi) => [(lo > 0).then_some(lo), (hi < n).then(|| hi - 1)],
        }
    }

    /// The bounds, given `(key, below, equal)` at each of [`positions`](Self::positions).
    fn bounds(self, n: usize, at: [Option<(u32, usize, usize)>; 2]) -> [Option<Bound>; 2] {
        match self {
            // Everything above the k-th largest is kept, and of the keys equal to it the first
            // `k - greater` in index order.
            Self::Top(k) => [
                at[0].map(|(key, below, equal)| Bound {
                    key,
                    ties: (0, k - (n - below - equal)),
                }),
                None,
            ],
            // Among keys equal to the key at `lo`, the first `lo - below` sit below `lo`;
            // among keys equal to the key at `hi - 1`, only the first `hi - below` below `hi`.
            Self::Band(lo, hi) => [
                at[0].map(|(key, below, _)| Bound {
                    key,
                    ties: (lo - below, usize::MAX),
                }),
                at[1].map(|(key, below, _)| Bound {
                    key,
                    ties: (0, hi - below),
                }),
            ],
        }
    }
}

/// One model's cut keys: keys strictly between `lower` and `upper` are kept; keys equal to one
/// of `ties` (distinct keys) are kept by their ordinal among the equal keys.
#[derive(Clone, Debug)]
struct Selection {
    lower: Option<u32>,
    upper: Option<u32>,
    ties: Vec<Bound>,
}

impl Selection {
    fn new([lower, upper]: [Option<Bound>; 2]) -> Self {
        let ties = match (lower, upper) {
            // Both cuts in one run of equal keys: an element's ordinal must satisfy both.
            (Some(l), Some(u)) if l.key == u.key => vec![Bound {
                key: l.key,
                ties: (l.ties.0.max(u.ties.0), l.ties.1.min(u.ties.1)),
            }],
            _ => lower.into_iter().chain(upper).collect(),
        };
        Self {
            lower: lower.map(|b| b.key),
            upper: upper.map(|b| b.key),
            ties,
        }
    }

    /// How many runs of words this selection's share of a chunk's bits has: the strictly kept
    /// bits, then the equal-key bits of each tie.
    fn slots(&self) -> usize {
        1 + self.ties.len()
    }
}

thread_local! {
    /// One model's keys of the current chunk, per worker thread.
    static KEYS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f(i, keys)` with the magnitude keys of `models[i] - base` for one decoded chunk.
pub(super) fn for_each_keys(xs: &[&[f32]], mut f: impl FnMut(usize, &[u32])) {
    let (base, models) = xs.split_first().expect("the base is the first input");
    KEYS.with_borrow_mut(|keys| {
        keys.resize(base.len(), 0);
        for (i, model) in models.iter().enumerate() {
            fill_keys(base, model, keys);
            f(i, keys);
        }
    });
}

#[multiversion::multiversion(targets(
    "x86_64+avx2+fma",
    "x86_64+avx512f+avx512bw",
    "aarch64+neon"
))]
fn fill_keys(base: &[f32], model: &[f32], keys: &mut [u32]) {
    for ((k, &b), &x) in keys.iter_mut().zip(base).zip(model) {
        *k = magnitude_key(x - b);
    }
}

/// Folds every decoded chunk of `inputs` into per-job accumulators (64 chunks at least, as
/// histograms are large), merged at the end.
fn fold_chunks<A: Send>(
    inputs: &[TensorView<'_>],
    n: usize,
    init: impl Fn() -> A + Sync + Send,
    f: impl Fn(&mut A, &[&[f32]]) + Sync + Send,
    merge: impl Fn(A, A) -> A + Sync + Send,
) -> A {
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .with_min_len(64)
        .fold(&init, |mut acc, chunk| {
            let start = chunk * CHUNK;
            with_decoded(inputs, start, CHUNK.min(n - start), |xs| f(&mut acc, xs));
            acc
        })
        .reduce(&init, merge)
}

/// The keep-mask of each model against `base` (`keeps[i]` for `models[i]`), as
/// [`select::top_k_mask`](super::select::top_k_mask) and
/// [`select::rank_band_mask`](super::select::rank_band_mask) would choose them from the keys.
pub fn masks(base: &TensorView<'_>, models: &[TensorView<'_>], keeps: &[Keep]) -> Vec<BitMask> {
    let n = base.numel();
    let mut masks: Vec<Option<BitMask>> = keeps.iter().map(|k| k.fixed(n)).collect();
    let ranked: Vec<usize> = (0..models.len()).filter(|&i| masks[i].is_none()).collect();
    let mut inputs = vec![base.clone()];
    inputs.extend(ranked.iter().map(|&i| models[i].clone()));
    let keeps: Vec<Keep> = ranked.iter().map(|&i| keeps[i]).collect();
    let selections = cuts(&inputs, n, &keeps);
    for (&i, mask) in ranked.iter().zip(select_all(&inputs, n, &selections)) {
        masks[i] = Some(mask);
    }
    masks
        .into_iter()
        .map(|m| m.expect("every model selected"))
        .collect()
}

/// A cut to locate: ascending `position` of model `model`'s keys, which is its `slot`th bound.
#[derive(Clone, Copy, Debug)]
struct Probe {
    model: usize,
    slot: usize,
    position: usize,
    /// The top 16 bits of the key at `position`, and how many keys have smaller ones.
    bucket: u32,
    below_bucket: usize,
}

/// Passes 1 and 2: every model's cut keys.
fn cuts(inputs: &[TensorView<'_>], n: usize, keeps: &[Keep]) -> Vec<Selection> {
    let m = keeps.len();
    let highs = fold_chunks(
        inputs,
        n,
        || vec![HighBits::new(); m],
        |highs, xs| for_each_keys(xs, |i, keys| highs[i].add(keys)),
        |a, b| a.into_iter().zip(b).map(|(a, b)| a.merge(b)).collect(),
    );
    let probes: Vec<Probe> = keeps
        .iter()
        .zip(&highs)
        .enumerate()
        .flat_map(|(model, (keep, high))| {
            let totals = high.totals();
            keep.positions(n)
                .into_iter()
                .enumerate()
                .filter_map(move |(slot, position)| {
                    let position = position?;
                    let (bucket, below_bucket) = locate(&totals, position);
                    Some(Probe {
                        model,
                        slot,
                        position,
                        bucket: bucket as u32,
                        below_bucket,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let lows = fold_chunks(
        inputs,
        n,
        || vec![vec![0u32; 1 << 16]; probes.len()],
        |lows, xs| {
            for_each_keys(xs, |i, keys| {
                for (low, probe) in lows.iter_mut().zip(&probes) {
                    if probe.model == i {
                        add_low_counts(low, keys, probe.bucket);
                    }
                }
            });
        },
        |mut a, b| {
            for (x, y) in a.iter_mut().zip(b) {
                x.iter_mut().zip(y).for_each(|(p, q)| *p += q);
            }
            a
        },
    );
    let mut at = vec![[None; 2]; m];
    for (probe, low) in probes.iter().zip(lows) {
        let low: Vec<usize> = low.into_iter().map(|c| c as usize).collect();
        let (value, below_in_bucket) = locate(&low, probe.position - probe.below_bucket);
        at[probe.model][probe.slot] = Some((
            (probe.bucket << 16) | value as u32,
            probe.below_bucket + below_in_bucket,
            low[value],
        ));
    }
    keeps
        .iter()
        .zip(at)
        .map(|(keep, at)| Selection::new(keep.bounds(n, at)))
        .collect()
}

/// Counts the low 16 bits of the keys whose top 16 bits are `bucket`. A bucket holds a small
/// share of the keys: a vectorised compare finds them, 64 at a time, and only they are counted.
fn add_low_counts(low: &mut [u32], keys: &[u32], bucket: u32) {
    let mut hits = [0u64; CHUNK / 64];
    let hits = &mut hits[..keys.len().div_ceil(64)];
    inside_bits(keys, bucket << 16, 1 << 16, hits);
    for (group, &word) in keys.chunks(64).zip(hits.iter()) {
        let mut rest = word;
        while rest != 0 {
            low[(group[rest.trailing_zeros() as usize] & 0xffff) as usize] += 1;
            rest &= rest - 1;
        }
    }
}

/// Pass 3, then each model's keys equal to a cut kept by their ordinal.
fn select_all(inputs: &[TensorView<'_>], n: usize, selections: &[Selection]) -> Vec<BitMask> {
    // Per chunk, per model: its words of strictly kept bits, then of each tie's equal keys.
    let bits: Vec<Vec<Vec<u64>>> = zip_chunks(inputs, n, |_, xs| {
        let mut chunk = Vec::with_capacity(selections.len());
        for_each_keys(xs, |i, keys| chunk.push(classify(keys, &selections[i])));
        chunk
    });
    selections
        .iter()
        .enumerate()
        .map(|(i, selection)| {
            let slots = selection.slots();
            // Per tie, per chunk: (equal keys in earlier chunks, equal keys in this chunk).
            let ordinals: Vec<Vec<(usize, usize)>> = (0..selection.ties.len())
                .map(|s| {
                    let mut seen = 0;
                    bits.iter()
                        .map(|chunk| {
                            let count = count_ones(run(&chunk[i], slots, s + 1));
                            seen += count;
                            (seen - count, count)
                        })
                        .collect()
                })
                .collect();
            let mut mask = BitMask::new(n);
            mask.fill_chunks(|start, words| {
                let chunk = &bits[start / CHUNK];
                words.copy_from_slice(&chunk[i][..words.len()]);
                for (s, &tie) in selection.ties.iter().enumerate() {
                    let (before, count) = ordinals[s][start / CHUNK];
                    keep_ties(words, run(&chunk[i], slots, s + 1), tie, before, count);
                }
            });
            mask
        })
        .collect()
}

/// Run `s` of one model's bits of a chunk, laid out as `slots` runs of equal length.
fn run(bits: &[u64], slots: usize, s: usize) -> &[u64] {
    let words = bits.len() / slots;
    &bits[s * words..(s + 1) * words]
}

fn count_ones(words: &[u64]) -> usize {
    words.iter().map(|w| w.count_ones() as usize).sum()
}

/// One chunk's bits of one model: strictly kept keys, then the keys equal to each tie.
fn classify(keys: &[u32], selection: &Selection) -> Vec<u64> {
    let words = keys.len().div_ceil(64);
    let mut bits = vec![0u64; words * selection.slots()];
    let (strict, equal) = bits.split_at_mut(words);
    // Magnitude keys have the sign bit clear, so `lower + 1` cannot overflow and `u32::MAX` is
    // above every key.
    let first = selection.lower.map_or(0, |k| k + 1);
    let end = selection.upper.unwrap_or(u32::MAX);
    inside_bits(keys, first, end.saturating_sub(first), strict);
    for (tie, words) in selection.ties.iter().zip(equal.chunks_mut(words)) {
        equal_bits(keys, tie.key, words);
    }
    bits
}

/// Sets the bit of every key in `first..first + span` (one wrapping subtraction and compare).
#[multiversion::multiversion(targets(
    "x86_64+avx2+fma",
    "x86_64+avx512f+avx512bw",
    "aarch64+neon"
))]
fn inside_bits(keys: &[u32], first: u32, span: u32, words: &mut [u64]) {
    for (word, group) in words.iter_mut().zip(keys.chunks(64)) {
        let mut bits = 0u64;
        for (b, &k) in group.iter().enumerate() {
            bits |= u64::from(k.wrapping_sub(first) < span) << b;
        }
        *word = bits;
    }
}

#[multiversion::multiversion(targets(
    "x86_64+avx2+fma",
    "x86_64+avx512f+avx512bw",
    "aarch64+neon"
))]
fn equal_bits(keys: &[u32], key: u32, words: &mut [u64]) {
    for (word, group) in words.iter_mut().zip(keys.chunks(64)) {
        let mut bits = 0u64;
        for (b, &k) in group.iter().enumerate() {
            bits |= u64::from(k == key) << b;
        }
        *word = bits;
    }
}

/// Adds to `words` the bits of `equal` whose ordinal among the keys equal to `tie` (`before`
/// of them in earlier chunks, `count` here) lies in its kept range.
fn keep_ties(words: &mut [u64], equal: &[u64], tie: Bound, before: usize, count: usize) {
    match tie.ties_in(before, count) {
        Ties::None => {}
        Ties::All => words.iter_mut().zip(equal).for_each(|(w, e)| *w |= e),
        Ties::Some => {
            let kept = tie.ties.0..tie.ties.1;
            let mut ordinal = before;
            for (word, &e) in words.iter_mut().zip(equal) {
                let mut rest = e;
                while rest != 0 {
                    if kept.contains(&ordinal) {
                        *word |= rest & rest.wrapping_neg();
                    }
                    ordinal += 1;
                    rest &= rest - 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::methods::test_util::{f32_bytes, info, view};
    use crate::merge::select::{rank_band_mask, top_k_mask};

    /// Deterministic values with few distinct magnitudes, so cuts fall inside runs of ties.
    fn values(n: usize, seed: usize, distinct: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i * 2_654_435_761 + seed * 40_503) % 1_000_003;
                (h % distinct) as f32 * 0.25 - (seed % 3) as f32
            })
            .collect()
    }

    #[test]
    fn masks_match_selection_from_stored_keys() {
        // Several chunks and an odd tail; one model with a wide spread of magnitudes.
        let n = 5 * CHUNK + 37;
        let base = values(n, 0, 11);
        let models: Vec<Vec<f32>> = [(1, 7), (2, 3), (3, 50_000)]
            .iter()
            .map(|&(seed, distinct)| values(n, seed, distinct))
            .collect();
        let infos: Vec<_> = (0..4).map(|i| info(&format!("t{i}"), n)).collect();
        let bytes: Vec<Vec<u8>> = std::iter::once(&base)
            .chain(&models)
            .map(|v| f32_bytes(v))
            .collect();
        let views: Vec<_> = infos.iter().zip(&bytes).map(|(i, b)| view(i, b)).collect();
        let keys: Vec<Vec<u32>> = models
            .iter()
            .map(|x| {
                x.iter()
                    .zip(&base)
                    .map(|(x, b)| magnitude_key(x - b))
                    .collect()
            })
            .collect();
        let cases = [
            [Keep::Top(n / 2), Keep::Top(1), Keep::Top(n - 1)],
            [Keep::Top(0), Keep::Top(n), Keep::Top(n / 3 + 5)],
            [
                Keep::Band(n / 4, n / 2),
                Keep::Band(0, n - 9),
                Keep::Band(17, n),
            ],
            [
                Keep::Band(5, 5),
                Keep::Band(0, n),
                Keep::Band(n / 2, n / 2 + 3),
            ],
        ];
        for keeps in cases {
            let got = masks(&views[0], &views[1..], &keeps);
            for ((mask, keep), keys) in got.iter().zip(keeps).zip(&keys) {
                let expected = match keep {
                    Keep::Top(k) => top_k_mask(keys, k),
                    Keep::Band(lo, hi) => rank_band_mask(keys, lo, hi),
                };
                assert!(*mask == expected, "{keep:?}");
            }
        }
    }
}
