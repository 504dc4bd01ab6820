//! One tensor's sums (ALGORITHMS.md §4.1–4.4) in one streamed pass over its inputs, after the
//! top-k masks are selected for all models at once (`merge::ranked`).

use std::cell::RefCell;

use super::sums::{Sums, pair_index};
use crate::checkpoint::TensorView;
use crate::merge::kernel::zip_chunks;
use crate::merge::ranked::{self, Keep, Magnitude};
use crate::merge::select::BitMask;

/// Settings of the interference metrics.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InterferenceSettings {
    /// Top-k mask density of the Jaccard overlap (§4.4).
    pub density: f64,
    /// TIES trimming density applied before the sign election (§4.3); 1 keeps everything.
    pub ties_density: f64,
    /// TIES election weights, one per model (§4.3: default 1).
    pub weights: Vec<f64>,
}

thread_local! {
    /// Task-vector rows of the chunk being summed, one per model, then the elected sums.
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per element of a chunk: how many task vectors are positive and how many negative.
    static SIGNS: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Every model's top-k magnitude mask of `|model − base|` (a NaN or ±Inf difference counts
/// as 0) with `k = max(1, int(density · n))`: `densities[j]` for the `j`th equal block of
/// `models`; and `also` of every chunk, from the same pass when given.
fn magnitude_masks<T: Send>(
    base: &TensorView<'_>,
    models: &[TensorView<'_>],
    densities: &[f64],
    also: Option<&ranked::Also<'_, T>>,
) -> (Vec<BitMask>, Option<Vec<T>>) {
    let n = base.numel();
    let per_density = models.len() / densities.len();
    let keeps: Vec<Keep> = (0..models.len())
        .map(|i| {
            let density = densities[i / per_density];
            Keep::Top(((density * n as f64) as usize).clamp(1, n.max(1)))
        })
        .collect();
    match also {
        Some(also) => {
            let (masks, chunks) = ranked::masks_and(base, models, &keeps, Magnitude::Finite, also);
            (masks, Some(chunks))
        }
        None => (
            ranked::masks_by(base, models, &keeps, Magnitude::Finite),
            None,
        ),
    }
}

/// Eight f64 partial sums: element `j` of a row goes to lane `j mod 8`, and the lanes are added
/// in a fixed tree at the end, so a row summed in blocks (of multiples of 8) gives the same bits
/// as summed whole. The compiler keeps the lanes in vector registers.
type Lanes = [f64; 8];

fn total(lanes: &Lanes) -> f64 {
    ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
        + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]))
}

/// Adds f(x) of every value to `lanes`. Always inlined, so it takes the SIMD target of its
/// caller.
#[inline(always)]
fn add_f64(lanes: &mut Lanes, values: &[f32], f: impl Fn(f64) -> f64) {
    // A local copy with fixed-size rows: the loop becomes one vector add per 8 values.
    let mut acc = *lanes;
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        let c: &[f32; 8] = c.try_into().expect("chunks of 8");
        for k in 0..8 {
            acc[k] += f(f64::from(c[k]));
        }
    }
    for (lane, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *lane += f(f64::from(v));
    }
    *lanes = acc;
}

/// Adds a·b in f64, as [`add_f64`].
#[inline(always)]
fn add_dot_f64(lanes: &mut Lanes, a: &[f32], b: &[f32]) {
    let mut acc = *lanes;
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        let (x, y): (&[f32; 8], &[f32; 8]) = (x.try_into().expect("8"), y.try_into().expect("8"));
        for k in 0..8 {
            acc[k] += f64::from(x[k]) * f64::from(y[k]);
        }
    }
    for (k, (&x, &y)) in ca.remainder().iter().zip(cb.remainder()).enumerate() {
        acc[k] += f64::from(x) * f64::from(y);
    }
    *lanes = acc;
}

/// How many are true, of at most one block's values. Counted in u32 lanes: eight to a
/// register, where u64 lanes took four and a widening per lane (the counts were a good part
/// of the pass).
#[inline(always)]
fn count(values: impl Iterator<Item = bool>) -> u64 {
    u64::from(values.map(u32::from).sum::<u32>())
}

/// The sums of one tensor over `models` against `base` (equal shapes, float dtypes).
pub fn tensor_sums(
    base: TensorView<'_>,
    models: &[TensorView<'_>],
    settings: &InterferenceSettings,
) -> Sums {
    let n = base.numel();
    let m = models.len();
    let mut sums = Sums::new(m);
    sums.numel = n as u64;
    if n == 0 {
        return sums;
    }
    let weights: Vec<f32> = (0..m)
        .map(|i| settings.weights.get(i).copied().unwrap_or(1.0) as f32)
        .collect();
    let (jaccard, chunks) = if settings.ties_density < 1.0 {
        // The sums need the trim masks first: both densities' masks from one selection (each
        // model listed once per density), then the sums' pass.
        let twice = [models, models].concat();
        let (mut masks, _) = magnitude_masks::<()>(
            &base,
            &twice,
            &[settings.density, settings.ties_density],
            None,
        );
        let trimmed = masks.split_off(m);
        let jaccard = masks;
        let mut all = Vec::with_capacity(m + 1);
        all.push(base);
        all.extend_from_slice(models);
        let chunks = zip_chunks(&all, n, |start, xs| {
            chunk_sums(start, xs, Some(&trimmed), &weights)
        });
        (jaccard, chunks)
    } else {
        // The sums ride along with the selection's pass.
        let sums = |start: usize, xs: &[&[f32]]| chunk_sums(start, xs, None, &weights);
        let (jaccard, chunks) = magnitude_masks(&base, models, &[settings.density], Some(&sums));
        (jaccard, chunks.expect("asked for"))
    };
    for part in &chunks {
        sums.add(part);
    }
    sums.numel = n as u64;
    for i in 0..m {
        for j in i + 1..m {
            let (a, c) = (jaccard[i].words(), jaccard[j].words());
            let p = &mut sums.pairs[pair_index(i, j, m)];
            p.intersection = a
                .iter()
                .zip(c)
                .map(|(x, y)| u64::from((x & y).count_ones()))
                .sum();
            p.union = a
                .iter()
                .zip(c)
                .map(|(x, y)| u64::from((x | y).count_ones()))
                .sum();
        }
    }
    sums
}

/// One chunk's sums: `xs` holds the base's decoded chunk, then each model's; `trimmed` the
/// TIES trim masks (whole-tensor masks; this chunk starts at element `start`).
fn chunk_sums(start: usize, xs: &[&[f32]], trimmed: Option<&[BitMask]>, weights: &[f32]) -> Sums {
    ROWS.with_borrow_mut(|rows| {
        SIGNS.with_borrow_mut(|(positive, negative)| {
            rows_sums(start, xs, trimmed, weights, rows, positive, negative)
        })
    })
}

/// Elements per block of [`rows_sums`]: a multiple of 64 (whole mask words, and of the 8 f64
/// lanes) small enough that a block's rows stay in L1 through the twenty-odd loops over them.
const SUMS_BLOCK: usize = 512;

/// [`chunk_sums`] with the thread's rows, block by block. One function with no closures that
/// outlive it: a closure would be compiled apart, without the SIMD target of the version that
/// calls it.
#[multiversion::multiversion(targets = "simd")]
fn rows_sums(
    start: usize,
    xs: &[&[f32]],
    trimmed: Option<&[BitMask]>,
    weights: &[f32],
    rows: &mut Vec<f32>,
    positive: &mut Vec<u8>,
    negative: &mut Vec<u8>,
) -> Sums {
    let m = xs.len() - 1;
    let (&b, xs) = xs.split_first().expect("the base is first");
    let len = b.len();
    let mut part = Sums::new(m);
    let mut base_sq = Lanes::default();
    let mut sq = vec![Lanes::default(); m];
    let mut abs = vec![Lanes::default(); m];
    let mut max_abs = vec![0f32; m];
    let mut dots = vec![Lanes::default(); part.pairs.len()];
    rows.resize((m + 1) * SUMS_BLOCK, 0.0);
    positive.resize(SUMS_BLOCK, 0);
    negative.resize(SUMS_BLOCK, 0);
    for first in (0..len).step_by(SUMS_BLOCK) {
        let end = (first + SUMS_BLOCK).min(len);
        let width = end - first;
        let b = &b[first..end];
        add_f64(&mut base_sq, b, |v| if v.is_finite() { v * v } else { 0.0 });
        part.base_non_finite += count(b.iter().map(|v| !v.is_finite()));
        let (taus, elected) = rows.split_at_mut(m * SUMS_BLOCK);
        let elected = &mut elected[..width];
        for (i, x) in xs.iter().enumerate() {
            let x = &x[first..end];
            let t = &mut taus[i * SUMS_BLOCK..i * SUMS_BLOCK + width];
            for ((t, &x), &b) in t.iter_mut().zip(x).zip(b) {
                // A non-finite weight (in the model or the base) is no measurable change.
                let d = x - b;
                *t = if d.is_finite() { d } else { 0.0 };
            }
            let model = &mut part.models[i];
            model.non_finite += count(x.iter().map(|v| !v.is_finite()));
            add_f64(&mut sq[i], t, |v| v * v);
            add_f64(&mut abs[i], t, f64::abs);
            max_abs[i] = t.iter().fold(max_abs[i], |a, &v| a.max(v.abs()));
            model.changed += count(t.iter().map(|&v| v != 0.0));
        }
        let row = |i: usize| &taus[i * SUMS_BLOCK..i * SUMS_BLOCK + width];
        for i in 0..m {
            for j in i + 1..m {
                let (a, c) = (row(i), row(j));
                let p = pair_index(i, j, m);
                add_dot_f64(&mut dots[p], a, c);
                let pair = &mut part.pairs[p];
                pair.both += count(a.iter().zip(c).map(|(&x, &y)| (x != 0.0) & (y != 0.0)));
                pair.clash += count(a.iter().zip(c).map(|(&x, &y)| x * y < 0.0));
            }
        }
        // TIES: trim (zero what the mask drops), elect the sign of the weighted sum, count.
        if let Some(masks) = trimmed {
            for (i, mask) in masks.iter().enumerate() {
                let t = &mut taus[i * SUMS_BLOCK..i * SUMS_BLOCK + width];
                let words = &mask.words()[(start + first) / 64..];
                for (group, &word) in t.chunks_mut(64).zip(words) {
                    for (k, t) in group.iter_mut().enumerate() {
                        *t *= ((word >> k) & 1) as f32;
                    }
                }
            }
        }
        elected.fill(0.0);
        for (i, &w) in weights.iter().enumerate() {
            for (s, &t) in elected
                .iter_mut()
                .zip(&taus[i * SUMS_BLOCK..i * SUMS_BLOCK + width])
            {
                *s += w * t;
            }
        }
        let (positive, negative) = (&mut positive[..width], &mut negative[..width]);
        positive.fill(0);
        negative.fill(0);
        for i in 0..m {
            let t = &taus[i * SUMS_BLOCK..i * SUMS_BLOCK + width];
            let model = &mut part.models[i];
            model.ties_nonzero += count(t.iter().map(|&v| v != 0.0));
            model.ties_conflict += count(
                t.iter()
                    .zip(elected.iter())
                    .map(|(&v, &s)| (v != 0.0) & ((v > 0.0) != (s >= 0.0))),
            );
            for ((p, q), &v) in positive.iter_mut().zip(negative.iter_mut()).zip(t) {
                *p = p.saturating_add(u8::from(v > 0.0));
                *q = q.saturating_add(u8::from(v < 0.0));
            }
        }
        part.disagree += count(
            positive
                .iter()
                .zip(negative.iter())
                .map(|(&p, &q)| (p > 0) & (q > 0)),
        );
        part.multi_nonzero += count(
            positive
                .iter()
                .zip(negative.iter())
                .map(|(&p, &q)| u16::from(p) + u16::from(q) >= 2),
        );
    }
    part.base_sq = total(&base_sq);
    for (i, model) in part.models.iter_mut().enumerate() {
        model.sq = total(&sq[i]);
        model.abs = total(&abs[i]);
        model.max_abs = f64::from(max_abs[i]);
    }
    for (pair, dot) in part.pairs.iter_mut().zip(&dots) {
        pair.dot = total(dot);
    }
    part
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::TensorInfo;
    use crate::dtype::Dtype;

    struct Owned(TensorInfo, Vec<u8>);

    impl Owned {
        fn new(values: &[f32]) -> Self {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Self(
                TensorInfo {
                    name: "t".to_owned(),
                    dtype: Dtype::F32,
                    shape: vec![values.len()],
                    shard: 0,
                    start: 0,
                    end: bytes.len(),
                },
                bytes,
            )
        }

        fn view(&self) -> TensorView<'_> {
            TensorView::new(&self.0, &self.1)
        }
    }

    fn settings(models: usize) -> InterferenceSettings {
        InterferenceSettings {
            density: 0.5,
            ties_density: 1.0,
            weights: vec![1.0; models],
        }
    }

    /// base + tau for each tau.
    fn metrics(base: &[f32], taus: &[Vec<f32>]) -> crate::analysis::Metrics {
        let b = Owned::new(base);
        let models: Vec<Owned> = taus
            .iter()
            .map(|t| Owned::new(&base.iter().zip(t).map(|(b, t)| b + t).collect::<Vec<_>>()))
            .collect();
        let views: Vec<_> = models.iter().map(Owned::view).collect();
        tensor_sums(b.view(), &views, &settings(taus.len())).metrics()
    }

    #[test]
    fn identical_task_vectors_have_cosine_one_and_no_conflict() {
        let base = vec![1.0; 40_000];
        let tau: Vec<f32> = (0..40_000)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.25)
            .collect();
        let m = metrics(&base, &[tau.clone(), tau]);
        assert!((m.cosine[0][1].unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(m.sign_conflict[0][1], Some(0.0));
        assert_eq!(m.jaccard[0][1], Some(1.0));
        assert_eq!(m.disagree, Some(0.0));
    }

    #[test]
    fn opposite_task_vectors_have_cosine_minus_one_and_full_conflict() {
        let base: Vec<f32> = (0..40_000).map(|i| (i as f32).sin()).collect();
        let tau: Vec<f32> = (0..40_000).map(|i| 1.0 + (i % 7) as f32).collect();
        let neg: Vec<f32> = tau.iter().map(|t| -t).collect();
        let m = metrics(&base, &[tau, neg]);
        assert!((m.cosine[0][1].unwrap() + 1.0).abs() < 1e-6);
        assert_eq!(m.sign_conflict[0][1], Some(1.0));
        assert_eq!(m.disagree, Some(1.0));
    }

    #[test]
    fn disjoint_supports_do_not_overlap() {
        let n = 1000;
        let base = vec![0.0; n];
        let a: Vec<f32> = (0..n)
            .map(|i| if i < n / 2 { 1.0 + i as f32 } else { 0.0 })
            .collect();
        let b: Vec<f32> = (0..n)
            .map(|i| if i >= n / 2 { 1.0 + i as f32 } else { 0.0 })
            .collect();
        let m = metrics(&base, &[a, b]);
        assert_eq!(m.jaccard[0][1], Some(0.0));
        assert_eq!(m.cosine[0][1], Some(0.0));
        // No coordinate is nonzero in both: conflict is undefined, not 0.
        assert_eq!(m.sign_conflict[0][1], None);
    }

    #[test]
    fn sensitivity_follows_the_definitions() {
        let base = vec![3.0, 4.0, 0.0, 0.0];
        let m = metrics(&base, &[vec![0.0, 0.0, -2.0, 0.0]]);
        let s = &m.models[0];
        assert!((s.l2 - 2.0).abs() < 1e-12);
        assert!((s.rel.unwrap() - 0.4).abs() < 1e-12);
        assert!((s.mean_abs.unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(s.max_abs, Some(2.0));
        assert_eq!(s.frac_changed, Some(0.25));
    }

    #[test]
    fn ties_conflict_counts_entries_against_the_elected_sign() {
        // Weighted sums: +3-1+1 = 3 (elect +), -1-1+0 = -2 (elect -).
        let base = vec![0.0; 2];
        let m = metrics(&base, &[vec![3.0, -1.0], vec![-1.0, -1.0], vec![1.0, 0.0]]);
        assert_eq!(m.models[0].ties_conflict, Some(0.0));
        assert_eq!(m.models[1].ties_conflict, Some(0.5));
        assert_eq!(m.models[2].ties_conflict, Some(0.0));
        // Coordinate 0 has both signs; coordinate 1 has two nonzeros of one sign.
        assert_eq!(m.disagree, Some(0.5));
    }
}
