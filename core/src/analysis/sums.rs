//! Additive accumulators of ALGORITHMS.md §4.1–4.4. Every metric is a ratio of sums, so a
//! layer's, a module kind's or the whole model's figures are the sums of its tensors' sums,
//! and the ratios are taken only at the end ([`Sums::metrics`]).

use serde::{Deserialize, Serialize};

/// What one model's task vector adds up to over a set of tensors.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSums {
    /// Σ τ².
    pub sq: f64,
    /// Σ |τ|.
    pub abs: f64,
    pub max_abs: f64,
    /// #{τ ≠ 0}.
    pub changed: u64,
    /// TIES: #{τ ≠ 0 (after trimming)} and how many of those oppose the elected sign.
    pub ties_nonzero: u64,
    pub ties_conflict: u64,
    /// #{NaN or ±Inf in the model's weights}; those coordinates count as unchanged (τ = 0)
    /// in every other sum, so one bad value does not turn a layer's figures into NaN.
    #[serde(default)]
    pub non_finite: u64,
}

/// What a pair of task vectors adds up to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PairSums {
    /// Σ τᵢ·τⱼ.
    pub dot: f64,
    /// #{τᵢ ≠ 0 and τⱼ ≠ 0}.
    pub both: u64,
    /// #{τᵢ·τⱼ < 0}.
    pub clash: u64,
    /// Top-k magnitude masks: |Mᵢ ∩ Mⱼ| and |Mᵢ ∪ Mⱼ|.
    pub intersection: u64,
    pub union: u64,
}

/// The sums of a set of tensors over N models.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sums {
    pub numel: u64,
    /// Σ θ_b².
    pub base_sq: f64,
    pub models: Vec<ModelSums>,
    /// Pairs (i, j), i < j, in the order (0,1), (0,2), …, (1,2), ….
    pub pairs: Vec<PairSums>,
    /// #{coordinates with a positive and a negative τᵢ} and #{with at least two nonzero τᵢ}.
    pub disagree: u64,
    pub multi_nonzero: u64,
    /// #{NaN or ±Inf in the base's weights} (left out of `base_sq`; τ = 0 there).
    #[serde(default)]
    pub base_non_finite: u64,
}

/// Index of pair (i, j), i < j, among `n` models.
pub fn pair_index(i: usize, j: usize, n: usize) -> usize {
    debug_assert!(i < j && j < n);
    i * (2 * n - i - 1) / 2 + (j - i - 1)
}

/// Ratios with JSON `null` where undefined.
fn ratio(num: f64, den: f64) -> Option<f64> {
    (den != 0.0).then(|| num / den)
}

impl Sums {
    pub fn new(models: usize) -> Self {
        Self {
            models: vec![ModelSums::default(); models],
            pairs: vec![PairSums::default(); models * models.saturating_sub(1) / 2],
            ..Self::default()
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.numel += other.numel;
        self.base_sq += other.base_sq;
        for (a, b) in self.models.iter_mut().zip(&other.models) {
            a.sq += b.sq;
            a.abs += b.abs;
            a.max_abs = a.max_abs.max(b.max_abs);
            a.changed += b.changed;
            a.ties_nonzero += b.ties_nonzero;
            a.ties_conflict += b.ties_conflict;
            a.non_finite += b.non_finite;
        }
        for (a, b) in self.pairs.iter_mut().zip(&other.pairs) {
            a.dot += b.dot;
            a.both += b.both;
            a.clash += b.clash;
            a.intersection += b.intersection;
            a.union += b.union;
        }
        self.disagree += other.disagree;
        self.multi_nonzero += other.multi_nonzero;
        self.base_non_finite += other.base_non_finite;
    }

    /// The metrics these sums stand for.
    pub fn metrics(&self) -> Metrics {
        let n = self.models.len();
        let numel = self.numel as f64;
        let base_norm = self.base_sq.sqrt();
        let models = self
            .models
            .iter()
            .map(|m| ModelMetrics {
                l2: m.sq.sqrt(),
                rel: ratio(m.sq.sqrt(), base_norm),
                mean_abs: ratio(m.abs, numel),
                max_abs: (self.numel > 0).then_some(m.max_abs),
                frac_changed: ratio(m.changed as f64, numel),
                ties_conflict: ratio(m.ties_conflict as f64, m.ties_nonzero as f64),
            })
            .collect();
        let matrix = |f: &dyn Fn(usize, usize) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
            (0..n).map(|i| (0..n).map(|j| f(i, j)).collect()).collect()
        };
        let pair = |i: usize, j: usize| &self.pairs[pair_index(i.min(j), i.max(j), n)];
        Metrics {
            cosine: matrix(&|i, j| {
                let (a, b) = (self.models[i].sq, self.models[j].sq);
                if i == j {
                    return (a > 0.0).then_some(1.0);
                }
                ratio(pair(i, j).dot, a.sqrt() * b.sqrt()).map(|c| c.clamp(-1.0, 1.0))
            }),
            sign_conflict: matrix(&|i, j| {
                if i == j {
                    return (self.models[i].changed > 0).then_some(0.0);
                }
                let p = pair(i, j);
                ratio(p.clash as f64, p.both as f64)
            }),
            jaccard: matrix(&|i, j| {
                if i == j {
                    return (self.numel > 0).then_some(1.0);
                }
                let p = pair(i, j);
                ratio(p.intersection as f64, p.union as f64)
            }),
            disagree: ratio(self.disagree as f64, self.multi_nonzero as f64),
            models,
        }
    }
}

/// Sensitivity of one model's task vector (ALGORITHMS.md §4.1) and its TIES conflict (§4.3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMetrics {
    pub l2: f64,
    pub rel: Option<f64>,
    pub mean_abs: Option<f64>,
    pub max_abs: Option<f64>,
    pub frac_changed: Option<f64>,
    /// Share of its nonzero entries that oppose the elected sign.
    pub ties_conflict: Option<f64>,
}

/// §4.1–4.4 over a set of tensors: per model, and N × N matrices per pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub models: Vec<ModelMetrics>,
    pub cosine: Vec<Vec<Option<f64>>>,
    pub sign_conflict: Vec<Vec<Option<f64>>>,
    pub jaccard: Vec<Vec<Option<f64>>>,
    /// Share of coordinates (with ≥ 2 nonzero τ) where some τ are positive and some negative.
    pub disagree: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_numbered_row_by_row() {
        let n = 4;
        let mut expected = 0;
        for i in 0..n {
            for j in i + 1..n {
                assert_eq!(pair_index(i, j, n), expected);
                expected += 1;
            }
        }
    }

    #[test]
    fn undefined_ratios_are_null() {
        let sums = Sums::new(2);
        let m = sums.metrics();
        assert_eq!(m.models[0].rel, None);
        assert_eq!(m.models[0].mean_abs, None);
        assert_eq!(m.cosine[0][1], None);
        assert_eq!(m.cosine[0][0], None);
        assert_eq!(m.sign_conflict[0][1], None);
        assert_eq!(m.disagree, None);
    }
}
