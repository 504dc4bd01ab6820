//! The data-free subspace merges TSV-M, Iso-C and Iso-CTS (ALGORITHMS.md §3.1,
//! docs/methods-beyond-mergekit.md): each 2-D task vector is split into singular triplets, and
//! the merge is rebuilt from chosen triplets with orthogonalised singular vectors.
//!
//! Everything here runs in f64 with exact thin SVDs (faer). A randomized SVD would not pay:
//! TSV-M keeps the top `p / T` triplets of every task vector and Iso-CTS the top 80 % of the
//! sum's, and both orthogonalise stacks of `p` vectors, so the ranks asked for are a fixed
//! fraction of `p`, where a randomized SVD (with its oversampling and power iterations) costs
//! more than an exact one and only approximates it.

use faer::{Mat, MatRef};

use super::{MethodError, MethodInputs};

/// A task vector, or a merged delta, as an `m × n` matrix.
pub type Matrix = Mat<f64>;

/// Thin SVD `a = U diag(s) Vᵀ`, singular values descending: `(U (m × p), s, V (n × p))`.
///
/// faer's bidiagonal iteration gives up on some ordinary matrices: the stacked singular
/// vectors of Iso-CTS on the demo family (32 × 32, sixteen singular values within 1e-15 of 1)
/// are one. The same factors then come from the transpose, or from the SVD of the triangular
/// factor of a QR decomposition (`a = Q R`, so `U = Q U_R`), which take other paths through
/// the iteration.
pub(crate) fn thin_svd(a: MatRef<'_, f64>) -> Result<(Matrix, Vec<f64>, Matrix), MethodError> {
    factors(a)
        .or_else(|| factors(a.transpose()).map(|(u, s, v)| (v, s, u)))
        .or_else(|| via_qr(a))
        .ok_or_else(|| {
            MethodError(format!(
                "the SVD of a {} × {} matrix did not converge (are its values finite?)",
                a.nrows(),
                a.ncols()
            ))
        })
}

/// faer's thin SVD as `(U, s, V)`, `None` where it did not converge.
fn factors(a: MatRef<'_, f64>) -> Option<(Matrix, Vec<f64>, Matrix)> {
    let svd = a.thin_svd().ok()?;
    let s = svd.S().column_vector();
    let values = (0..s.nrows()).map(|i| s[i]).collect();
    Some((svd.U().to_owned(), values, svd.V().to_owned()))
}

/// The SVD of `a = Q R` from the SVD of `R` (or of `Rᵀ`): `U = Q U_R`.
fn via_qr(a: MatRef<'_, f64>) -> Option<(Matrix, Vec<f64>, Matrix)> {
    // Thin QR needs at least as many rows as columns.
    if a.nrows() < a.ncols() {
        return via_qr(a.transpose()).map(|(u, s, v)| (v, s, u));
    }
    let qr = a.qr();
    let (q, r) = (qr.compute_thin_Q(), qr.thin_R().to_owned());
    let (u, s, v) =
        factors(r.as_ref()).or_else(|| factors(r.transpose()).map(|(u, s, v)| (v, s, u)))?;
    Some((&q * &u, s, v))
}

/// `polar(X) = U Vᵀ` from `thin_svd(X)`: the matrix with orthonormal columns nearest to `X`.
fn polar(x: MatRef<'_, f64>) -> Result<Matrix, MethodError> {
    let (u, _, v) = thin_svd(x)?;
    Ok(&u * v.transpose())
}

/// Stacks of singular triplets, filled block by block: `U_hat (m × r)`, `s_hat`, `V_hat (n × r)`.
struct Stacks {
    u: Matrix,
    s: Vec<f64>,
    v: Matrix,
}

impl Stacks {
    fn new(m: usize, n: usize, r: usize) -> Self {
        Self {
            u: Mat::zeros(m, r),
            s: vec![0.0; r],
            v: Mat::zeros(n, r),
        }
    }

    /// Puts the first `k` triplets of `(u, s, v)` at slots `at..at + k`.
    fn put(&mut self, at: usize, k: usize, (u, s, v): (&Matrix, &[f64], &Matrix)) {
        self.u.subcols_mut(at, k).copy_from(u.subcols(0, k));
        self.v.subcols_mut(at, k).copy_from(v.subcols(0, k));
        self.s[at..at + k].copy_from_slice(&s[..k]);
    }

    /// `polar(U_hat) · diag(σ) · polar(V_hat)ᵀ`, with `σ` the stacked values or, for the
    /// isotropic merges, every one replaced by their mean.
    fn merge(&self, isotropic: bool) -> Result<Matrix, MethodError> {
        let (u, v) = (polar(self.u.as_ref())?, polar(self.v.as_ref())?);
        let mean = self.s.iter().sum::<f64>() / self.s.len().max(1) as f64;
        let scaled = Mat::from_fn(u.nrows(), u.ncols(), |i, j| {
            u[(i, j)] * if isotropic { mean } else { self.s[j] }
        });
        Ok(&scaled * v.transpose())
    }
}

/// TSV-M's delta for one 2-D tensor: the top `k = int(p · (1 / T))` triplets of every task
/// vector, stacked and orthogonalised.
pub fn tsv_m(taus: &[Matrix]) -> Result<Matrix, MethodError> {
    let (m, n) = shape(taus);
    let (p, t) = (m.min(n), taus.len());
    // fusion-bench's `int(p * sv_reduction)`, a float product truncated.
    let k = (p as f64 * (1.0 / t as f64)) as usize;
    if k == 0 {
        return Ok(Mat::zeros(m, n));
    }
    let mut stacks = Stacks::new(m, n, t * k);
    for (i, tau) in taus.iter().enumerate() {
        let (u, s, v) = thin_svd(tau.as_ref())?;
        stacks.put(i * k, k, (&u, &s, &v));
    }
    stacks.merge(false)
}

/// Iso-C's delta: the sum of the task vectors with its spectrum flattened to its mean.
pub fn iso_c(taus: &[Matrix]) -> Result<Matrix, MethodError> {
    let (u, s, v) = thin_svd(sum(taus).as_ref())?;
    let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
    let scaled = Mat::from_fn(u.nrows(), u.ncols(), |i, j| u[(i, j)] * mean);
    Ok(&scaled * v.transpose())
}

/// Iso-CTS's delta: the sum's top `c` directions (the common subspace) and each task
/// vector's top `n_t` directions outside the common left subspace, orthogonalised together
/// with a flat spectrum.
pub fn iso_cts(taus: &[Matrix], common_space_fraction: f64) -> Result<Matrix, MethodError> {
    let (m, n) = shape(taus);
    let (p, t) = (m.min(n), taus.len());
    let (c, n_t) = iso_cts_sizes(p, t, common_space_fraction)?;
    let (u, s, v) = thin_svd(sum(taus).as_ref())?;
    let u_c = u.subcols(0, c);
    let mut stacks = Stacks::new(m, n, p);
    for (i, tau) in taus.iter().enumerate() {
        // The common left subspace projected out; nothing is removed on the right.
        let w = tau - u_c * (u_c.transpose() * tau);
        let (wu, ws, wv) = thin_svd(w.as_ref())?;
        stacks.put(i * n_t, n_t, (&wu, &ws, &wv));
    }
    stacks.put(t * n_t, c, (&u, &s, &v));
    stacks.merge(true)
}

/// Iso-CTS's common size `c` and per-task size `n_t` for `p` singular values and `t` tasks:
/// `c0 = int(p · fraction)`, `n_t = round((p − c0) / t)` with ties to even (Python's `round`),
/// `c = p − t · n_t`.
pub fn iso_cts_sizes(p: usize, t: usize, fraction: f64) -> Result<(usize, usize), MethodError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(MethodError(format!(
            "common_space_fraction is {fraction}; it must be between 0 and 1"
        )));
    }
    let c0 = (p as f64 * fraction) as usize;
    let n_t = ((p - c0) as f64 / t as f64).round_ties_even() as usize;
    let c = p.checked_sub(t * n_t).ok_or_else(|| {
        MethodError(format!(
            "{t} task subspaces of {n_t} directions do not fit in {p} (common_space_fraction \
             {fraction} leaves too little room for {t} tasks at this shape); raise \
             common_space_fraction"
        ))
    })?;
    Ok((c, n_t))
}

fn shape(taus: &[Matrix]) -> (usize, usize) {
    let first = taus
        .first()
        .expect("a subspace merge has at least one task vector");
    (first.nrows(), first.ncols())
}

fn sum(taus: &[Matrix]) -> Matrix {
    let (m, n) = shape(taus);
    taus.iter().fold(Mat::zeros(m, n), |acc, tau| acc + tau)
}

/// How a subspace method merges one tensor: its 2-D delta, a scale on the result, and a
/// weight per fine-tune on its task vector before anything else.
pub struct SubspaceMerge<'p> {
    pub delta: &'p dyn Fn(&[Matrix]) -> Result<Matrix, MethodError>,
    pub weights: Vec<f64>,
    pub scale: f64,
    /// Sends a 2-D tensor to the mean, as fusion-bench's `exclude_keys` does.
    pub exclude: bool,
}

impl SubspaceMerge<'_> {
    /// `out = θ_b + scale · M`: `M` from the subspace step for a 2-D tensor, the mean of the
    /// (weighted) task vectors for any other.
    pub fn run(&self, inputs: &MethodInputs<'_>, out: &mut [f32]) -> Result<(), MethodError> {
        let base = inputs
            .base
            .as_ref()
            .ok_or_else(|| MethodError("this method needs a base model".to_owned()))?;
        let base_values = base.to_f32_vec();
        let taus: Vec<Vec<f64>> = inputs
            .models
            .iter()
            .zip(&self.weights)
            .map(|(model, &w)| {
                let values = model.to_f32_vec();
                values
                    .iter()
                    .zip(&base_values)
                    .map(|(&x, &b)| w * (f64::from(x) - f64::from(b)))
                    .collect()
            })
            .collect();
        let delta: Vec<f64> = match *base.shape {
            [m, n] if !self.exclude => {
                let matrices: Vec<Matrix> = taus
                    .iter()
                    .map(|tau| Mat::from_fn(m, n, |i, j| tau[i * n + j]))
                    .collect();
                let merged = (self.delta)(&matrices)?;
                (0..m * n).map(|e| merged[(e / n, e % n)]).collect()
            }
            _ => {
                let t = taus.len() as f64;
                (0..base_values.len())
                    .map(|e| taus.iter().map(|tau| tau[e]).sum::<f64>() / t)
                    .collect()
            }
        };
        for ((o, &b), d) in out.iter_mut().zip(&base_values).zip(delta) {
            *o = (f64::from(b) + self.scale * d) as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::methods::test_util::xorshift;

    fn random(m: usize, n: usize, seed: u64) -> Matrix {
        let mut bits = xorshift(seed);
        Mat::from_fn(m, n, |_, _| {
            (bits.next().expect("endless") >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
    }

    fn singular_values(a: &Matrix) -> Vec<f64> {
        thin_svd(a.as_ref()).expect("converges").1
    }

    fn max_abs_diff(a: &Matrix, b: &Matrix) -> f64 {
        (0..a.nrows())
            .flat_map(|i| (0..a.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| (a[(i, j)] - b[(i, j)]).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn tsv_m_of_one_task_vector_is_that_task_vector() {
        // T = 1 keeps every triplet, and the stacks are already orthonormal.
        let tau = random(7, 5, 1);
        let merged = tsv_m(std::slice::from_ref(&tau)).unwrap();
        assert!(max_abs_diff(&merged, &tau) < 1e-12);
    }

    #[test]
    fn tsv_m_of_task_vectors_in_orthogonal_subspaces_sums_their_top_k() {
        // Two rank-2 task vectors on disjoint rows and columns: the stacks are orthogonal
        // already, so TSV-M is the sum of each one's top k = p / 2 = 2 triplets, i.e. the sum.
        let mut a = Mat::<f64>::zeros(4, 4);
        let mut b = Mat::<f64>::zeros(4, 4);
        let block = random(2, 2, 2);
        let other = random(2, 2, 3);
        a.submatrix_mut(0, 0, 2, 2).copy_from(&block);
        b.submatrix_mut(2, 2, 2, 2).copy_from(&other);
        let merged = tsv_m(&[a.clone(), b.clone()]).unwrap();
        assert!(max_abs_diff(&merged, &(&a + &b)) < 1e-12);
    }

    #[test]
    fn tsv_m_with_more_tasks_than_directions_is_zero() {
        let taus: Vec<Matrix> = (0..4).map(|i| random(3, 5, 10 + i)).collect();
        let merged = tsv_m(&taus).unwrap();
        assert_eq!(max_abs_diff(&merged, &Mat::zeros(3, 5)), 0.0);
    }

    #[test]
    fn iso_c_flattens_the_spectrum_of_the_sum_to_its_mean() {
        let taus: Vec<Matrix> = (0..3).map(|i| random(6, 9, 20 + i)).collect();
        let sum_values = singular_values(&sum(&taus));
        let mean = sum_values.iter().sum::<f64>() / sum_values.len() as f64;
        let merged_values = singular_values(&iso_c(&taus).unwrap());
        for s in merged_values {
            assert!((s - mean).abs() < 1e-12 * mean, "{s} against {mean}");
        }
    }

    #[test]
    fn iso_cts_is_isotropic_and_keeps_the_common_subspace() {
        let taus: Vec<Matrix> = (0..3).map(|i| random(10, 8, 30 + i)).collect();
        let merged = iso_cts(&taus, 0.5).unwrap();
        let values = singular_values(&merged);
        let first = values[0];
        assert!(values.iter().all(|s| (s - first).abs() < 1e-10 * first));
        // The sum's top c left singular vectors lie in the merge's column space.
        let (c, _) = iso_cts_sizes(8, 3, 0.5).unwrap();
        let (u, _, _) = thin_svd(sum(&taus).as_ref()).unwrap();
        let (mu, _, _) = thin_svd(merged.as_ref()).unwrap();
        let u_c = u.subcols(0, c);
        let inside = mu.transpose() * u_c;
        assert!((inside.squared_norm_l2() - c as f64).abs() < 1e-9);
    }

    #[test]
    fn every_2d_tensor_of_the_demo_family_merges_isotropically() {
        // Its layer 1 attention output stacks sixteen singular values within 1e-15 of 1,
        // where faer's SVD gives up: the fallbacks must give true factors, or the merge
        // would not come out isotropic.
        use crate::Checkpoint;
        use crate::eval::{DemoFamily, Domain};
        let dir = tempfile::tempdir().unwrap();
        let family = DemoFamily::extract(dir.path()).unwrap();
        let base = Checkpoint::open(family.base()).unwrap();
        let experts: Vec<Checkpoint> = Domain::ALL
            .iter()
            .map(|d| Checkpoint::open(family.expert(*d)).unwrap())
            .collect();
        let mut merged = 0;
        for (i, info) in base.tensors().iter().enumerate() {
            let [m, n] = info.shape[..] else { continue };
            let b = base.view(i).to_f32_vec();
            let taus: Vec<Matrix> = experts
                .iter()
                .map(|e| {
                    let x = e.view(e.index_of(&info.name).unwrap()).to_f32_vec();
                    Mat::from_fn(m, n, |r, c| {
                        f64::from(x[r * n + c]) - f64::from(b[r * n + c])
                    })
                })
                .collect();
            for fraction in [0.5, 0.8] {
                let delta = iso_cts(&taus, fraction)
                    .unwrap_or_else(|e| panic!("{} at {fraction}: {}", info.name, e.0));
                let values = singular_values(&delta);
                let first = values[0];
                assert!(
                    values.iter().all(|s| (s - first).abs() <= 1e-9 * first),
                    "{} at {fraction}: {values:?}",
                    info.name
                );
            }
            merged += 1;
        }
        assert!(merged >= 20, "{merged} 2-D tensors");
    }

    #[test]
    fn the_qr_route_gives_the_same_factors() {
        for (m, n) in [(7, 5), (5, 7)] {
            let a = random(m, n, 40);
            let (u, s, v) = via_qr(a.as_ref()).unwrap();
            let (_, direct, _) = factors(a.as_ref()).unwrap();
            for (x, y) in s.iter().zip(&direct) {
                assert!((x - y).abs() < 1e-12, "{s:?} against {direct:?}");
            }
            let scaled = Mat::from_fn(u.nrows(), u.ncols(), |i, j| u[(i, j)] * s[j]);
            assert!(max_abs_diff(&(&scaled * v.transpose()), &a) < 1e-12);
            let identity = Mat::<f64>::identity(s.len(), s.len());
            assert!(max_abs_diff(&(u.transpose() * &u), &identity) < 1e-12);
            assert!(max_abs_diff(&(v.transpose() * &v), &identity) < 1e-12);
        }
    }

    #[test]
    fn iso_cts_sizes_round_ties_to_even() {
        // p = 10, fraction 0.5: c0 = 5; 5 / 2 = 2.5 rounds to 2 (not 3), so c = 6.
        assert_eq!(iso_cts_sizes(10, 2, 0.5).unwrap(), (6, 2));
        // 3.5 rounds to 4: c = 14 - 8 = 6.
        assert_eq!(iso_cts_sizes(14, 2, 0.5).unwrap(), (6, 4));
        // The defaults on a 768-wide square layer and 8 tasks (the ViT-B/32 setting).
        assert_eq!(iso_cts_sizes(768, 8, 0.8).unwrap(), (616, 19));
        // Too many tasks for the room left: an error that says what to change.
        let error = iso_cts_sizes(10, 6, 0.0).unwrap_err();
        assert!(error.0.contains("common_space_fraction"), "{}", error.0);
        assert!(iso_cts_sizes(10, 2, 1.5).is_err());
    }
}
