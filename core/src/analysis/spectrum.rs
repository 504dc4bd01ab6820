//! Spectra and subspaces of 2-D tensors (ALGORITHMS.md §4.5–4.7, 4.9): thin SVDs with faer,
//! randomized (Halko, Martinsson & Tropp 2011) above `exact_below`.

use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use crate::merge::rng::ElementRng;

/// Settings of the spectral metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpectraSettings {
    /// Singular values kept per task vector (`k`).
    pub rank: usize,
    pub oversample: usize,
    pub power_iterations: usize,
    pub seed: u64,
    /// Exact thin SVD when `min(m, n)` is at most this (or `k + oversample ≥ min(m, n)`).
    pub exact_below: usize,
    /// Dimension of the subspaces compared between task vectors (§4.7).
    pub overlap_rank: usize,
}

impl Default for SpectraSettings {
    fn default() -> Self {
        Self {
            rank: 64,
            oversample: 10,
            power_iterations: 2,
            seed: 0,
            exact_below: 1024,
            overlap_rank: 16,
        }
    }
}

/// A truncated SVD `A ≈ U diag(σ) Vᵀ`.
pub struct Factors {
    pub u: Mat<f32>,
    /// Every singular value when `exact`, else the top `k`; descending.
    pub sigma: Vec<f64>,
    pub v: Mat<f32>,
    pub exact: bool,
    /// `‖A‖²_F`, computed from the entries.
    pub fro2: f64,
}

/// A tensor with ndim ≥ 2 as the matrix `(shape[0], prod(shape[1..]))`: a row-major view of
/// the values (no copy; faer works on strided views directly).
pub fn as_matrix<'a>(values: &'a [f32], shape: &[usize]) -> Option<MatRef<'a, f32>> {
    let (&m, rest) = shape.split_first()?;
    if rest.is_empty() {
        return None;
    }
    let n: usize = rest.iter().product();
    Some(MatRef::from_column_major_slice(values, n, m).transpose())
}

fn fro2(a: MatRef<'_, f32>) -> f64 {
    f64::from(a.squared_norm_l2())
}

/// Orthonormal columns spanning `y`'s (thin QR).
fn orth(y: MatRef<'_, f32>) -> Mat<f32> {
    y.qr().compute_thin_Q()
}

/// The SVD of `a`: exact when small, randomized otherwise. `key` names the random stream
/// (tensor name and input), so results do not depend on the order tensors are visited in.
pub fn factorize(
    a: MatRef<'_, f32>,
    settings: &SpectraSettings,
    tensor: &str,
    input: usize,
) -> Factors {
    let (m, n) = (a.nrows(), a.ncols());
    let p = m.min(n);
    let k = settings.rank.min(p);
    let fro2 = fro2(a);
    if p <= settings.exact_below || k + settings.oversample >= p {
        let svd = a.thin_svd().expect("SVD of a finite matrix converges");
        let s = svd.S().column_vector();
        return Factors {
            u: svd.U().to_owned(),
            sigma: (0..p).map(|i| f64::from(s[i])).collect(),
            v: svd.V().to_owned(),
            exact: true,
            fro2,
        };
    }
    let l = (k + settings.oversample).min(p);
    let rng = ElementRng::new(settings.seed, tensor, input);
    let mut uniforms = vec![0f64; 2 * n * l];
    rng.for_range(0, uniforms.len(), |j, u| uniforms[j] = u);
    // Box–Muller on pairs of uniforms; 1 − u keeps the logarithm finite.
    let omega = Mat::<f32>::from_fn(n, l, |i, j| {
        let at = 2 * (i * l + j);
        let (u1, u2) = (1.0 - uniforms[at], uniforms[at + 1]);
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    });
    let mut q = orth((a * &omega).as_ref());
    for _ in 0..settings.power_iterations {
        let z = orth((a.transpose() * &q).as_ref());
        q = orth((a * &z).as_ref());
    }
    let b = q.transpose() * a;
    let svd = b.thin_svd().expect("SVD of a finite matrix converges");
    let s = svd.S().column_vector();
    let u = &q * svd.U();
    Factors {
        u: u.subcols(0, k).to_owned(),
        sigma: (0..k).map(|i| f64::from(s[i])).collect(),
        v: svd.V().subcols(0, k).to_owned(),
        exact: false,
        fro2,
    }
}

/// §4.5–4.6 for one task vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    /// The top singular values, descending.
    pub sigma: Vec<f64>,
    pub fro2: f64,
    /// `Σ σ² / fro2` over the reported values.
    pub energy_k: Option<f64>,
    /// Effective rank (Roy & Vetterli) over all values when `exact`, else over the top `k`
    /// only (`erank_k`).
    pub erank: Option<f64>,
    pub stable_rank: Option<f64>,
    pub exact: bool,
}

impl Spectrum {
    pub fn of(f: &Factors, rank: usize) -> Self {
        let shown: Vec<f64> = f.sigma.iter().copied().take(rank).collect();
        let energy = shown.iter().map(|s| s * s).sum::<f64>();
        let total: f64 = f.sigma.iter().sum();
        let erank = (total > 0.0).then(|| {
            let h: f64 = f
                .sigma
                .iter()
                .map(|s| s / total)
                .filter(|&p| p > 0.0)
                .map(|p| -p * p.ln())
                .sum();
            h.exp()
        });
        let s1 = f.sigma.first().copied().unwrap_or(0.0);
        Self {
            sigma: shown,
            fro2: f.fro2,
            energy_k: (f.fro2 > 0.0).then(|| (energy / f.fro2).min(1.0)),
            erank,
            stable_rank: (s1 > 0.0).then(|| f.fro2 / (s1 * s1)),
            exact: f.exact,
        }
    }
}

/// `#{σ > 1e-6 σ₁}`.
pub fn numerical_rank(sigma: &[f64]) -> usize {
    let s1 = sigma.first().copied().unwrap_or(0.0);
    sigma.iter().filter(|&&s| s > 1e-6 * s1 && s > 0.0).count()
}

/// §4.7: `‖U_iᵀ U_j‖²_F / k` over the first `k` columns of each basis.
pub fn overlap(a: MatRef<'_, f32>, b: MatRef<'_, f32>, k: usize) -> Option<f64> {
    if k == 0 {
        return None;
    }
    let product = a.subcols(0, k).transpose() * b.subcols(0, k);
    Some(fro2(product.as_ref()) / k as f64)
}

/// Subspace overlap of two task vectors, left and right, with the chance levels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    pub models: (usize, usize),
    pub k: usize,
    pub left: Option<f64>,
    pub right: Option<f64>,
    pub left_chance: f64,
    pub right_chance: f64,
}

pub fn pair_overlap(i: (usize, &Factors), j: (usize, &Factors), wanted: usize) -> Overlap {
    let (fi, fj) = (i.1, j.1);
    let k = wanted
        .min(numerical_rank(&fi.sigma))
        .min(numerical_rank(&fj.sigma))
        .min(fi.u.ncols())
        .min(fj.u.ncols());
    let (m, n) = (fi.u.nrows() as f64, fi.v.nrows() as f64);
    Overlap {
        models: (i.0, j.0),
        k,
        left: overlap(fi.u.as_ref(), fj.u.as_ref(), k),
        right: overlap(fi.v.as_ref(), fj.v.as_ref(), k),
        left_chance: k as f64 / m,
        right_chance: k as f64 / n,
    }
}

/// §4.9: how much of a task vector lies in the base weight's top-r singular subspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BaseEnergy {
    pub r: usize,
    /// How `r` was chosen: `half_nuclear` (§4.9's default) or `rank` (randomized base SVD).
    pub r_rule: String,
    pub both: Option<f64>,
    pub left: Option<f64>,
    pub right: Option<f64>,
    /// `E_both` of the complement (columns r+1..p); needs the exact SVD.
    pub complement: Option<f64>,
    pub both_chance: f64,
    pub left_chance: f64,
}

/// `r` for §4.9: the smallest r whose leading singular values reach half their sum (exact),
/// else every value the randomized SVD found.
pub fn energy_rank(base: &Factors) -> (usize, &'static str) {
    if !base.exact {
        return (base.sigma.len(), "rank");
    }
    let total: f64 = base.sigma.iter().sum();
    let mut running = 0.0;
    let below = base
        .sigma
        .iter()
        .take_while(|&&s| {
            running += s;
            running < 0.5 * total
        })
        .count();
    ((below + 1).min(base.sigma.len()), "half_nuclear")
}

pub fn base_energy(base: &Factors, d: MatRef<'_, f32>) -> BaseEnergy {
    let (r, rule) = energy_rank(base);
    let total = fro2(d);
    let (m, n) = (d.nrows() as f64, d.ncols() as f64);
    let share = |x: f64| (total > 0.0).then(|| (x / total).min(1.0));
    let ur = base.u.subcols(0, r);
    let vr = base.v.subcols(0, r);
    let left = ur.transpose() * d;
    let both = &left * vr;
    let right = d * vr;
    let complement = (base.exact && r < base.u.ncols()).then(|| {
        let p = base.u.ncols();
        let uc = base.u.subcols(r, p - r);
        let vc = base.v.subcols(r, p - r);
        fro2((uc.transpose() * d * vc).as_ref())
    });
    BaseEnergy {
        r,
        r_rule: rule.to_owned(),
        both: share(fro2(both.as_ref())),
        left: share(fro2(left.as_ref())),
        right: share(fro2(right.as_ref())),
        complement: complement.and_then(share),
        both_chance: (r * r) as f64 / (m * n),
        left_chance: r as f64 / m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `U diag(σ) Vᵀ` with orthonormal U, V from QR of seeded random matrices.
    fn with_spectrum(m: usize, n: usize, sigma: &[f32], seed: u64) -> Mat<f32> {
        let rng = ElementRng::new(seed, "test", 0);
        let mut u = vec![0f64; (m + n) * sigma.len()];
        rng.for_range(0, u.len(), |j, x| u[j] = x - 0.5);
        let k = sigma.len();
        let a = orth(Mat::<f32>::from_fn(m, k, |i, j| u[i * k + j] as f32).as_ref());
        let b = orth(Mat::<f32>::from_fn(n, k, |i, j| u[m * k + i * k + j] as f32).as_ref());
        let s = Mat::<f32>::from_fn(k, k, |i, j| if i == j { sigma[i] } else { 0.0 });
        &a * &s * b.transpose()
    }

    #[test]
    fn randomized_svd_matches_the_exact_one() {
        for (m, n) in [(512, 512), (300, 512), (512, 200)] {
            // Task vectors' spectra decay; a 10 % drop per value is on the slow side of that.
            let sigma: Vec<f32> = (0..200).map(|i| 10.0 * 0.9f32.powi(i)).collect();
            let a = with_spectrum(m, n, &sigma[..m.min(n).min(200)], 3);
            let exact = factorize(a.as_ref(), &SpectraSettings::default(), "t", 0);
            let settings = SpectraSettings {
                rank: 32,
                exact_below: 0,
                ..SpectraSettings::default()
            };
            let fast = factorize(a.as_ref(), &settings, "t", 0);
            assert!(exact.exact && !fast.exact);
            for r in 0..32 {
                let rel = (fast.sigma[r] - exact.sigma[r]).abs() / exact.sigma[r];
                assert!(
                    rel < 1e-3,
                    "{m}x{n} σ{r}: {} vs {}",
                    fast.sigma[r],
                    exact.sigma[r]
                );
            }
        }
    }

    #[test]
    fn a_rank_r_matrix_has_r_singular_values_and_lives_in_its_own_subspace() {
        let a = with_spectrum(96, 80, &[5.0, 3.0, 2.0, 1.0], 1);
        let mut flat = vec![0f32; 96 * 80];
        for i in 0..96 {
            for j in 0..80 {
                flat[i * 80 + j] = a[(i, j)];
            }
        }
        // The row-major view of a tensor is the same matrix.
        let view = as_matrix(&flat, &[96, 80]).unwrap();
        assert_eq!(view[(5, 7)], a[(5, 7)]);
        let f = factorize(a.as_ref(), &SpectraSettings::default(), "t", 0);
        assert_eq!(numerical_rank(&f.sigma), 4);
        for (got, want) in f.sigma.iter().zip([5.0, 3.0, 2.0, 1.0]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        let spectrum = Spectrum::of(&f, 4);
        assert!((spectrum.energy_k.unwrap() - 1.0).abs() < 1e-5);
        // Its own top-4 subspace holds all of it.
        let own = Factors {
            sigma: f.sigma[..4].to_vec(),
            exact: false,
            ..factorize(a.as_ref(), &SpectraSettings::default(), "t", 0)
        };
        let e = base_energy(&own, a.as_ref());
        assert_eq!(e.r, 4);
        assert!((e.both.unwrap() - 1.0).abs() < 1e-4);
        assert!((e.left.unwrap() - 1.0).abs() < 1e-4);
        // And the same subspace overlaps itself fully.
        let o = pair_overlap((0, &f), (1, &f), 16);
        assert_eq!(o.k, 4);
        assert!((o.left.unwrap() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn a_delta_inside_the_base_top_subspace_has_energy_one_there() {
        let base = with_spectrum(64, 48, &[9.0, 8.0, 1.0, 0.5, 0.2, 0.1], 2);
        let fb = factorize(base.as_ref(), &SpectraSettings::default(), "b", 0);
        let (r, rule) = energy_rank(&fb);
        assert_eq!(rule, "half_nuclear");
        assert_eq!(r, 2); // 9 < 9.9 = half of 19.8; 9 + 8 ≥ 9.9
        // D = U_r M V_rᵀ for a small random M.
        let ur = fb.u.subcols(0, r);
        let vr = fb.v.subcols(0, r);
        let mid = Mat::<f32>::from_fn(r, r, |i, j| [0.3, -0.2, 0.7, 0.1][i * r + j]);
        let d = ur * &mid * vr.transpose();
        let e = base_energy(&fb, d.as_ref());
        assert!((e.both.unwrap() - 1.0).abs() < 1e-4, "{e:?}");
        assert!(e.complement.unwrap() < 1e-6);
    }
}
