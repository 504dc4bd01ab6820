//! Rank selection for all of a tensor's task vectors at once (TIES, Model Breadcrumbs).
//!
//! Selecting from stored keys costs 4 bytes per element per model to write and several passes
//! to read them again. Here the magnitude keys `|θᵢ − θ_b|` are never stored but recomputed
//! from the base and every model, decoded chunk by chunk (the base once for all models).
//!
//! Most models take one pass ([`bracket`]): cuts guessed from a sample, proved by the pass's
//! counts. The rest (small tensors, guesses refuted, brackets too crowded to record) take the
//! radix passes below, two of them:
//! 1. every model's top-16-bit histogram, which locates the bucket holding each cut;
//! 2. the low-16-bit histogram of the keys in those buckets, which gives each cut's exact key.
//!    Not knowing the cuts yet, it also records one bit per key strictly between the cut
//!    buckets (inside the band wherever the cuts fall) and the offset and low bits of every key
//!    in a cut bucket, from which the settled cuts finish each model's bits.
//!
//! Decoding is the dearest part of a pass, so this saves a third of the work over three. Where a cut
//! bucket holds too many keys to record cheaply (bf16 task vectors often tie by the million), a
//! third pass decodes that model again and classifies its keys against the cuts.
//!
//! Keys equal to a cut are then kept by their ordinal in index order (ALGORITHMS.md §2.1), from
//! per-chunk counts of those bits, without touching the inputs again.

use std::cell::RefCell;

use rayon::prelude::*;

mod bracket;

use super::kernel::{CHUNK, with_decoded, zip_chunks};
use super::select::{BitMask, Bound, HighBits, Ties, locate, magnitude_key, set_bit};
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

    /// The strictly kept keys as `first..first + span`. Magnitude keys have the sign bit clear,
    /// so `lower + 1` cannot overflow and `u32::MAX` is above every key.
    fn strict_range(&self) -> (u32, u32) {
        let first = self.lower.map_or(0, |k| k + 1);
        let end = self.upper.unwrap_or(u32::MAX);
        (first, end.saturating_sub(first))
    }
}

thread_local! {
    /// One model's keys of the current chunk, per worker thread.
    static KEYS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Which magnitude of `θᵢ − θ_b` an element is ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magnitude {
    /// `|θᵢ − θ_b|` as computed: a NaN or ±Inf difference ranks above every number, as in
    /// mergekit's `topk` of the absolute values (the merge methods).
    Raw,
    /// A NaN or ±Inf difference counts as 0 (the analysis, where such a weight is no
    /// measurable change).
    Finite,
}

/// Calls `f(i, keys)` with the magnitude keys of `models[i] - base` for one decoded chunk.
pub(super) fn for_each_keys(xs: &[&[f32]], magnitude: Magnitude, mut f: impl FnMut(usize, &[u32])) {
    let (base, models) = xs.split_first().expect("the base is the first input");
    for (i, model) in models.iter().enumerate() {
        with_keys(base, model, magnitude, |keys| f(i, keys));
    }
}

/// Calls `f` with the magnitude keys of `model - base` (one decoded chunk of each).
fn with_keys<R>(
    base: &[f32],
    model: &[f32],
    magnitude: Magnitude,
    f: impl FnOnce(&[u32]) -> R,
) -> R {
    KEYS.with_borrow_mut(|keys| {
        keys.resize(base.len(), 0);
        match magnitude {
            Magnitude::Raw => fill_keys(base, model, keys),
            Magnitude::Finite => fill_finite_keys(base, model, keys),
        }
        f(keys)
    })
}

#[multiversion::multiversion(targets = "simd")]
fn fill_keys(base: &[f32], model: &[f32], keys: &mut [u32]) {
    for ((k, &b), &x) in keys.iter_mut().zip(base).zip(model) {
        *k = magnitude_key(x - b);
    }
}

#[multiversion::multiversion(targets = "simd")]
fn fill_finite_keys(base: &[f32], model: &[f32], keys: &mut [u32]) {
    for ((k, &b), &x) in keys.iter_mut().zip(base).zip(model) {
        let d = x - b;
        *k = magnitude_key(if d.is_finite() { d } else { 0.0 });
    }
}

/// Folds every decoded chunk of `inputs` (`f(acc, chunk index, chunk)`) into per-job
/// accumulators (64 chunks at least, as histograms are large), merged at the end.
fn fold_chunks<A: Send>(
    inputs: &[TensorView<'_>],
    n: usize,
    init: impl Fn() -> A + Sync + Send,
    f: impl Fn(&mut A, usize, &[&[f32]]) + Sync + Send,
    merge: impl Fn(A, A) -> A + Sync + Send,
) -> A {
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .with_min_len(64)
        .fold(&init, |mut acc, chunk| {
            let start = chunk * CHUNK;
            with_decoded(inputs, start, CHUNK.min(n - start), |xs| {
                f(&mut acc, chunk, xs);
            });
            acc
        })
        .reduce(&init, merge)
}

/// The keep-mask of each model against `base` (`keeps[i]` for `models[i]`), as
/// [`select::top_k_mask`](super::select::top_k_mask) and
/// [`select::rank_band_mask`](super::select::rank_band_mask) would choose them from the keys.
pub fn masks(base: &TensorView<'_>, models: &[TensorView<'_>], keeps: &[Keep]) -> Vec<BitMask> {
    masks_by(base, models, keeps, Magnitude::Raw)
}

/// [`masks`] ranking by `magnitude`.
pub fn masks_by(
    base: &TensorView<'_>,
    models: &[TensorView<'_>],
    keeps: &[Keep],
    magnitude: Magnitude,
) -> Vec<BitMask> {
    select(base, models, keeps, magnitude, None::<&Also<'_, ()>>).0
}

/// Work on every decoded chunk of base and models (`f(start, [base, models…])`) that rides
/// along with the selection's pass.
pub type Also<'a, T> = dyn Fn(usize, &[&[f32]]) -> T + Sync + 'a;

/// [`masks_by`], also mapping every chunk of base and models through `also` in the same pass
/// (the analysis's sums): one decode of the inputs instead of two. Its results come back in
/// chunk order.
pub fn masks_and<T: Send>(
    base: &TensorView<'_>,
    models: &[TensorView<'_>],
    keeps: &[Keep],
    magnitude: Magnitude,
    also: &Also<'_, T>,
) -> (Vec<BitMask>, Vec<T>) {
    let (masks, chunks) = select(base, models, keeps, magnitude, Some(also));
    (masks, chunks.expect("asked for"))
}

fn select<T: Send>(
    base: &TensorView<'_>,
    models: &[TensorView<'_>],
    keeps: &[Keep],
    magnitude: Magnitude,
    also: Option<&Also<'_, T>>,
) -> (Vec<BitMask>, Option<Vec<T>>) {
    let n = base.numel();
    let mut masks: Vec<Option<BitMask>> = keeps.iter().map(|k| k.fixed(n)).collect();
    let ranked: Vec<Option<Keep>> = keeps
        .iter()
        .zip(&masks)
        .map(|(&keep, fixed)| fixed.is_none().then_some(keep))
        .collect();
    // Cuts guessed from a sample and checked in one pass; the models whose guess fails (or
    // that sampling cannot bracket tightly) take the radix passes.
    let (guessed, chunks) = bracket::select(base, models, &ranked, magnitude, also);
    let mut radix = Vec::new();
    for (i, found) in guessed.into_iter().enumerate() {
        match found {
            Some((selection, bits)) => masks[i] = Some(mask_of(n, &selection, &bits)),
            None if masks[i].is_none() => radix.push(i),
            None => {}
        }
    }
    if !radix.is_empty() {
        let inputs: Vec<TensorView<'_>> = std::iter::once(base.clone())
            .chain(radix.iter().map(|&i| models[i].clone()))
            .collect();
        let keeps = ranked_keeps(&radix, keeps);
        let (selections, bits) = radix_bits(&inputs, n, &keeps, magnitude);
        for ((&i, selection), bits) in radix.iter().zip(&selections).zip(&bits) {
            masks[i] = Some(mask_of(n, selection, bits));
        }
    }
    let masks = masks
        .into_iter()
        .map(|m| m.expect("every model selected"))
        .collect();
    (masks, chunks)
}

fn ranked_keeps(chosen: &[usize], keeps: &[Keep]) -> Vec<Keep> {
    chosen.iter().map(|&i| keeps[i]).collect()
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

/// Pass 2's work for one model, fixed by pass 1's histograms.
#[derive(Clone, Debug)]
struct Plan {
    /// The distinct buckets holding the model's cuts, ascending.
    buckets: Vec<u32>,
    /// Keys in `first..first + span` lie strictly between the cut buckets, and so strictly
    /// inside the kept band wherever in their buckets the cuts turn out to be.
    first: u32,
    span: u32,
    /// Whether pass 2 records the keys in the cut buckets, or they are too many and a third
    /// pass classifies this model's keys instead.
    record: bool,
}

impl Plan {
    /// `probes` are the model's, lower cut first; `totals` its top-16-bit histogram.
    fn new(probes: &[Probe], totals: &[usize], n: usize) -> Self {
        let bucket_of = |slot| probes.iter().find(|p| p.slot == slot).map(|p| p.bucket);
        let (lower, upper) = (bucket_of(0), bucket_of(1));
        let mut buckets: Vec<u32> = probes.iter().map(|p| p.bucket).collect();
        buckets.dedup();
        let in_buckets: usize = buckets.iter().map(|&b| totals[b as usize]).sum();
        // Buckets are at most 0x7fff (the sign bit is clear), so `b + 1` cannot overflow.
        let first = lower.map_or(0, |b| (b + 1) << 16);
        let end = upper.map_or(u32::MAX, |b| b << 16);
        Self {
            buckets,
            first,
            span: end.saturating_sub(first),
            // Four bytes a recorded key: at most half a byte an element, an eighth of what
            // decoding the model again would touch.
            record: in_buckets <= n / 8,
        }
    }
}

/// What pass 2 keeps of one model's chunk, so that the settled cuts can finish its bits.
#[derive(Clone, Debug)]
struct Record {
    /// The bits of [`Plan`]'s `first..first + span`.
    strict: Vec<u64>,
    /// Per cut bucket (as in [`Plan`]'s `buckets`), its keys in index order as (offset in the
    /// chunk, low 16 bits). A chunk has at most 2¹⁶ elements.
    in_bucket: Vec<Vec<(u16, u16)>>,
}

// Offsets within a chunk are recorded as `u16`.
const _: () = assert!(CHUNK <= 1 << 16);

/// Pass 2's results: each model's plan and cut keys, and per chunk, per model, its record
/// (`None` for models left to a third pass).
struct Cuts {
    plans: Vec<Plan>,
    selections: Vec<Selection>,
    records: Vec<Vec<Option<Record>>>,
}

/// Pass 2's accumulator: per model, per cut bucket, the low-16-bit counts; and per chunk (in
/// any order), each model's record.
struct Scan {
    lows: Vec<Vec<Vec<u32>>>,
    records: Vec<(usize, Vec<Option<Record>>)>,
}

impl Scan {
    fn new(plans: &[Plan]) -> Self {
        Self {
            lows: plans
                .iter()
                .map(|p| vec![vec![0; 1 << 16]; p.buckets.len()])
                .collect(),
            records: Vec::new(),
        }
    }

    #[allow(clippy::needless_pass_by_value)] // the shape rayon's `reduce` wants
    fn merge(mut self, other: Self) -> Self {
        let counts = self
            .lows
            .iter_mut()
            .flatten()
            .zip(other.lows.iter().flatten());
        for (a, b) in counts {
            a.iter_mut().zip(b).for_each(|(p, q)| *p += q);
        }
        self.records.extend(other.records);
        self
    }
}

/// Passes 1 and 2: every model's cut keys, and what finishes its bits.
fn cuts(inputs: &[TensorView<'_>], n: usize, keeps: &[Keep], magnitude: Magnitude) -> Cuts {
    let m = keeps.len();
    let highs = fold_chunks(
        inputs,
        n,
        || vec![HighBits::new(); m],
        |highs, _, xs| for_each_keys(xs, magnitude, |i, keys| highs[i].add(keys)),
        |a, b| a.into_iter().zip(b).map(|(a, b)| a.merge(b)).collect(),
    );
    let totals: Vec<Vec<usize>> = highs.iter().map(HighBits::totals).collect();
    let probes: Vec<Vec<Probe>> = keeps
        .iter()
        .zip(&totals)
        .enumerate()
        .map(|(model, (keep, totals))| probes(model, *keep, totals, n))
        .collect();
    let plans: Vec<Plan> = probes
        .iter()
        .zip(&totals)
        .map(|(probes, totals)| Plan::new(probes, totals, n))
        .collect();
    let mut scan = fold_chunks(
        inputs,
        n,
        || Scan::new(&plans),
        |scan, chunk, xs| {
            let mut records = Vec::with_capacity(m);
            for_each_keys(xs, magnitude, |i, keys| {
                records.push(scan_buckets(keys, &plans[i], &mut scan.lows[i]));
            });
            scan.records.push((chunk, records));
        },
        Scan::merge,
    );
    scan.records.sort_unstable_by_key(|&(chunk, _)| chunk);
    let mut at = vec![[None; 2]; m];
    for probe in probes.iter().flatten() {
        let plan = &plans[probe.model];
        let j = plan.buckets.iter().position(|&b| b == probe.bucket);
        let low: Vec<usize> = scan.lows[probe.model][j.expect("a planned bucket")]
            .iter()
            .map(|&c| c as usize)
            .collect();
        let (value, below_in_bucket) = locate(&low, probe.position - probe.below_bucket);
        at[probe.model][probe.slot] = Some((
            (probe.bucket << 16) | value as u32,
            probe.below_bucket + below_in_bucket,
            low[value],
        ));
    }
    Cuts {
        plans,
        selections: keeps
            .iter()
            .zip(at)
            .map(|(keep, at)| Selection::new(keep.bounds(n, at)))
            .collect(),
        records: scan.records.into_iter().map(|(_, r)| r).collect(),
    }
}

/// One model's cuts to locate, lower first, from its top-16-bit histogram `totals`.
fn probes(model: usize, keep: Keep, totals: &[usize], n: usize) -> Vec<Probe> {
    keep.positions(n)
        .into_iter()
        .enumerate()
        .filter_map(|(slot, position)| {
            let position = position?;
            let (bucket, below_bucket) = locate(totals, position);
            Some(Probe {
                model,
                slot,
                position,
                bucket: bucket as u32,
                below_bucket,
            })
        })
        .collect()
}

/// Pass 2 on one model's chunk: counts the low 16 bits of the keys in each cut bucket
/// (`lows[j]` for `plan.buckets[j]`) and, if planned, records what finishes its bits.
fn scan_buckets(keys: &[u32], plan: &Plan, lows: &mut [Vec<u32>]) -> Option<Record> {
    let buckets = plan.buckets.iter().zip(lows);
    if !plan.record {
        for (&bucket, low) in buckets {
            for_each_in_bucket(keys, bucket, |_, l| low[usize::from(l)] += 1);
        }
        return None;
    }
    let mut strict = vec![0; keys.len().div_ceil(64)];
    inside_bits(keys, plan.first, plan.span, &mut strict);
    let in_bucket = buckets
        .map(|(&bucket, low)| {
            let mut found = Vec::new();
            for_each_in_bucket(keys, bucket, |offset, l| {
                low[usize::from(l)] += 1;
                found.push((offset, l));
            });
            found
        })
        .collect();
    Some(Record { strict, in_bucket })
}

/// Calls `f(offset, low 16 bits)` for the keys whose top 16 bits are `bucket`, in index order.
/// A bucket holds a small share of the keys: a vectorised compare finds them, 64 at a time.
fn for_each_in_bucket(keys: &[u32], bucket: u32, mut f: impl FnMut(u16, u16)) {
    let mut hits = [0u64; CHUNK / 64];
    let hits = &mut hits[..keys.len().div_ceil(64)];
    inside_bits(keys, bucket << 16, 1 << 16, hits);
    for (w, &word) in hits.iter().enumerate() {
        let mut rest = word;
        while rest != 0 {
            let offset = w * 64 + rest.trailing_zeros() as usize;
            // Offsets fit (see `Record`), and the low half of a key is 16 bits.
            f(offset as u16, keys[offset] as u16);
            rest &= rest - 1;
        }
    }
}

/// The radix passes: each model's cut keys, and per chunk its words of strictly kept bits,
/// then of each tie's equal keys (model-major).
fn radix_bits(
    inputs: &[TensorView<'_>],
    n: usize,
    keeps: &[Keep],
    magnitude: Magnitude,
) -> (Vec<Selection>, Vec<Vec<Vec<u64>>>) {
    let Cuts {
        plans,
        selections,
        records,
    } = cuts(inputs, n, keeps, magnitude);
    let chunks = chunk_bits(inputs, n, &plans, &selections, records, magnitude);
    let mut bits: Vec<Vec<Vec<u64>>> = vec![Vec::with_capacity(chunks.len()); selections.len()];
    for chunk in chunks {
        for (model, words) in bits.iter_mut().zip(chunk) {
            model.push(words);
        }
    }
    (selections, bits)
}

/// One model's mask from its bits per chunk (as [`classify`] lays them out): the strictly kept
/// bits, then its keys equal to a cut kept by their ordinal.
fn mask_of(n: usize, selection: &Selection, bits: &[Vec<u64>]) -> BitMask {
    let slots = selection.slots();
    // Per tie, per chunk: (equal keys in earlier chunks, equal keys in this chunk).
    let ordinals: Vec<Vec<(usize, usize)>> = (0..selection.ties.len())
        .map(|s| {
            let mut seen = 0;
            bits.iter()
                .map(|chunk| {
                    let count = count_ones(run(chunk, slots, s + 1));
                    seen += count;
                    (seen - count, count)
                })
                .collect()
        })
        .collect();
    let mut mask = BitMask::new(n);
    mask.fill_chunks(|start, words| {
        let chunk = &bits[start / CHUNK];
        words.copy_from_slice(&chunk[..words.len()]);
        for (s, &tie) in selection.ties.iter().enumerate() {
            let (before, count) = ordinals[s][start / CHUNK];
            keep_ties(words, run(chunk, slots, s + 1), tie, before, count);
        }
    });
    mask
}

/// Per chunk, per model: its words of strictly kept bits, then of each tie's equal keys.
fn chunk_bits(
    inputs: &[TensorView<'_>],
    n: usize,
    plans: &[Plan],
    selections: &[Selection],
    records: Vec<Vec<Option<Record>>>,
    magnitude: Magnitude,
) -> Vec<Vec<Vec<u64>>> {
    let unrecorded: Vec<usize> = (0..plans.len()).filter(|&i| !plans[i].record).collect();
    // Pass 3, for the unrecorded models only, in their order.
    let classified: Vec<Vec<Vec<u64>>> = if unrecorded.is_empty() {
        vec![Vec::new(); records.len()]
    } else {
        let mut again = vec![inputs[0].clone()];
        again.extend(unrecorded.iter().map(|&i| inputs[1 + i].clone()));
        zip_chunks(&again, n, |_, xs| {
            let mut chunk = Vec::with_capacity(unrecorded.len());
            for_each_keys(xs, magnitude, |j, keys| {
                chunk.push(classify(keys, &selections[unrecorded[j]]));
            });
            chunk
        })
    };
    records
        .into_par_iter()
        .zip(classified)
        .map(|(records, classified)| {
            let mut classified = classified.into_iter();
            records
                .into_iter()
                .enumerate()
                .map(|(i, record)| match record {
                    Some(record) => finish(record, &plans[i].buckets, &selections[i]),
                    None => classified.next().expect("a classified model"),
                })
                .collect()
        })
        .collect()
}

/// One chunk's bits of one model, as [`classify`] would set them, from its pass 2 record: the
/// keys strictly between the cut buckets are already set; those in a cut bucket are rebuilt
/// from their low bits and compared with the exact cuts.
fn finish(record: Record, buckets: &[u32], selection: &Selection) -> Vec<u64> {
    let Record {
        mut strict,
        in_bucket,
    } = record;
    let words = strict.len();
    strict.resize(words * selection.slots(), 0);
    let (first, span) = selection.strict_range();
    for (&bucket, found) in buckets.iter().zip(&in_bucket) {
        for &(offset, low) in found {
            let key = (bucket << 16) | u32::from(low);
            let offset = usize::from(offset);
            if key.wrapping_sub(first) < span {
                set_bit(&mut strict[..words], offset);
            }
            for (s, tie) in selection.ties.iter().enumerate() {
                if key == tie.key {
                    set_bit(&mut strict[(s + 1) * words..], offset);
                }
            }
        }
    }
    strict
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
    let (first, span) = selection.strict_range();
    inside_bits(keys, first, span, strict);
    for (tie, words) in selection.ties.iter().zip(equal.chunks_mut(words)) {
        equal_bits(keys, tie.key, words);
    }
    bits
}

/// Sets the bit of every key in `first..first + span` (one wrapping subtraction and compare).
#[multiversion::multiversion(targets = "simd")]
fn inside_bits(keys: &[u32], first: u32, span: u32, words: &mut [u64]) {
    for (word, group) in words.iter_mut().zip(keys.chunks(64)) {
        let mut bits = 0u64;
        for (b, &k) in group.iter().enumerate() {
            bits |= u64::from(k.wrapping_sub(first) < span) << b;
        }
        *word = bits;
    }
}

#[multiversion::multiversion(targets = "simd")]
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

    /// Keys spread over many buckets but for a tenth of them, in one bucket (that of 1.0) with
    /// eight distinct low halves: the cuts of a middle band fall in it, among heavy ties, and
    /// few enough keys share it that pass 2 records them.
    fn one_crowded_bucket(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i * 2_654_435_761) % 1_000_003;
                match h % 20 {
                    0 | 1 => 1.0 + (h % 8) as f32 * (1.0 / (1 << 20) as f32),
                    r if r < 11 => (h % 5_000) as f32 * 1e-4,
                    _ => 2.0 + (h % 5_000) as f32 * 1e-3,
                }
            })
            .collect()
    }

    #[test]
    fn masks_match_selection_from_stored_keys() {
        // Several chunks and an odd tail. Models: few distinct magnitudes (cuts inside runs of
        // ties), a wide spread, one crowded bucket, and every key equal.
        let n = 5 * CHUNK + 37;
        let base = values(n, 0, 11);
        let mut models: Vec<Vec<f32>> = [(1, 7), (2, 3), (3, 50_000)]
            .iter()
            .map(|&(seed, distinct)| values(n, seed, distinct))
            .collect();
        models.push(
            one_crowded_bucket(n)
                .iter()
                .zip(&base)
                .map(|(x, b)| x + b)
                .collect(),
        );
        models.push(base.iter().map(|b| b + 0.5).collect());
        let infos: Vec<_> = (0..=models.len())
            .map(|i| info(&format!("t{i}"), n))
            .collect();
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
        let middle = |share: f64| (n as f64 * share) as usize;
        let cases = [
            [
                Keep::Top(n / 2),
                Keep::Top(1),
                Keep::Top(n - 1),
                Keep::Top(n / 2),
                Keep::Top(n / 2),
            ],
            [
                Keep::Top(0),
                Keep::Top(n),
                Keep::Top(n / 3 + 5),
                Keep::Top(middle(0.47)),
                Keep::Top(7),
            ],
            [
                Keep::Band(n / 4, n / 2),
                Keep::Band(0, n - 9),
                Keep::Band(17, n),
                Keep::Band(middle(0.46), middle(0.53)),
                Keep::Band(n / 4, n / 2),
            ],
            [
                Keep::Band(5, 5),
                Keep::Band(0, n),
                Keep::Band(n / 2, n / 2 + 3),
                Keep::Band(middle(0.5), middle(0.5) + 3),
                Keep::Band(0, 9),
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

    #[test]
    fn non_finite_differences_rank_first_raw_and_as_zero_finite() {
        let n = 2 * CHUNK + 3;
        let base = values(n, 0, 11);
        let mut model = values(n, 1, 50_000);
        for (j, bad) in [
            (5, f32::NAN),
            (CHUNK + 1, f32::INFINITY),
            (n - 1, f32::NEG_INFINITY),
        ] {
            model[j] = bad;
        }
        let infos = [info("b", n), info("m", n)];
        let bytes = [f32_bytes(&base), f32_bytes(&model)];
        let views = [view(&infos[0], &bytes[0]), view(&infos[1], &bytes[1])];
        for magnitude in [Magnitude::Raw, Magnitude::Finite] {
            let keys: Vec<u32> = model
                .iter()
                .zip(&base)
                .map(|(x, b)| {
                    let d = x - b;
                    match magnitude {
                        Magnitude::Raw => magnitude_key(d),
                        Magnitude::Finite => magnitude_key(if d.is_finite() { d } else { 0.0 }),
                    }
                })
                .collect();
            for keep in [Keep::Top(2), Keep::Top(n / 3), Keep::Band(0, 4)] {
                let got = masks_by(&views[0], &views[1..], &[keep], magnitude);
                let expected = match keep {
                    Keep::Top(k) => top_k_mask(&keys, k),
                    Keep::Band(lo, hi) => rank_band_mask(&keys, lo, hi),
                };
                assert!(got[0] == expected, "{magnitude:?} {keep:?}");
            }
        }
    }

    #[test]
    fn crowded_buckets_are_recorded_unless_too_crowded() {
        let n = 3 * CHUNK + 5;
        let base = values(n, 0, 11);
        let crowded: Vec<f32> = one_crowded_bucket(n)
            .iter()
            .zip(&base)
            .map(|(x, b)| x + b)
            .collect();
        let tied: Vec<f32> = base.iter().map(|b| b + 0.5).collect();
        let infos: Vec<_> = (0..3).map(|i| info(&format!("t{i}"), n)).collect();
        let bytes: Vec<Vec<u8>> = [&base, &crowded, &tied]
            .iter()
            .map(|v| f32_bytes(v))
            .collect();
        let views: Vec<_> = infos.iter().zip(&bytes).map(|(i, b)| view(i, b)).collect();
        let keeps = [Keep::Band(n * 46 / 100, n * 53 / 100), Keep::Top(n / 2)];
        let cuts = cuts(&views, n, &keeps, Magnitude::Raw);
        // Both cuts of the band in the crowded bucket, which is recorded once.
        assert_eq!(cuts.plans[0].buckets, vec![1.0f32.to_bits() >> 16]);
        assert_eq!(cuts.selections[0].ties.len(), 2, "distinct cut keys");
        // Every key of the second model ties: its bucket is left to a third pass.
        assert!(
            cuts.records
                .iter()
                .all(|r| r[0].is_some() && r[1].is_none())
        );
    }
}
