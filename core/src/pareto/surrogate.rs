//! A per-objective quadratic surrogate of a score over the merge coefficients (PARETO.md §5.2,
//! after MAP): s(x) = e + bᵀx + ½xᵀAx fitted by ridge least squares, on the logit of scores in
//! [0, 1] and on raw values otherwise, with its leave-one-out fit reported.

use faer::Mat;
use faer::linalg::solvers::DenseSolveCore as _;
use serde::{Deserialize, Serialize};

use super::ParetoError;

/// Which terms the quadratic has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SurrogateKind {
    /// Every x_i x_j: (d+1)(d+2)/2 coefficients.
    Full,
    /// Only x_i²: 2d + 1 coefficients, for many coefficients and few points.
    Diagonal,
}

impl SurrogateKind {
    pub fn coefficients(self, dimension: usize) -> usize {
        match self {
            Self::Full => (dimension + 1) * (dimension + 2) / 2,
            Self::Diagonal => 2 * dimension + 1,
        }
    }

    /// The full quadratic when `points` can pin it down, else the diagonal one.
    pub fn for_points(dimension: usize, points: usize) -> Self {
        if points >= Self::Full.coefficients(dimension) {
            Self::Full
        } else {
            Self::Diagonal
        }
    }
}

/// How well a surrogate predicts points it was not fitted on (leave-one-out, exact for ridge
/// through the hat matrix), in the objective's own units.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fit {
    pub loo_r2: f64,
    pub loo_rmse: f64,
    pub points: usize,
}

/// Clip bound of the logit transform: accuracies of exactly 0 or 1 stay finite.
const CLIP: f64 = 1e-3;
/// The ridge penalty on standardised features (each column has n · 1 sum of squares), when one
/// is not chosen.
const RIDGE: f64 = 1e-3;
/// The penalties [`Surrogate::fit_best`] chooses among.
const RIDGES: [f64; 4] = [1e-3, 1e-2, 1e-1, 1.0];

fn logit(p: f64) -> f64 {
    let p = p.clamp(CLIP, 1.0 - CLIP);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// A fitted surrogate of one objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Surrogate {
    pub kind: SurrogateKind,
    /// The box x lives in; features are computed on x scaled to [−1, 1] over it.
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// Fitted on the logit of the score (scores in [0, 1]).
    pub logit: bool,
    feature_mean: Vec<f64>,
    feature_scale: Vec<f64>,
    /// Per standardised feature; 0 for features that did not vary.
    coefficients: Vec<f64>,
    intercept: f64,
    pub fit: Fit,
}

impl Surrogate {
    /// Fits `scores[i]` ≈ s(`points[i]`) over the box [`lower`, `upper`].
    pub fn fit(
        points: &[Vec<f64>],
        scores: &[f64],
        bounds: (&[f64], &[f64]),
        unit_interval: bool,
        kind: SurrogateKind,
    ) -> Result<Self, ParetoError> {
        Self::fit_with_ridge(points, scores, bounds, unit_interval, kind, RIDGE)
    }

    /// The surrogate that predicts left-out points best: the diagonal or (with at least as
    /// many points as it has coefficients) the full quadratic, each with a few ridge
    /// penalties, chosen by leave-one-out RMSE. A full quadratic on barely enough points
    /// interpolates the noise; a map trained on it then chases the noise's peaks.
    pub fn fit_best(
        points: &[Vec<f64>],
        scores: &[f64],
        bounds: (&[f64], &[f64]),
        unit_interval: bool,
    ) -> Result<Self, ParetoError> {
        let d = bounds.0.len();
        let mut kinds = vec![SurrogateKind::Diagonal];
        if points.len() >= SurrogateKind::Full.coefficients(d) {
            kinds.push(SurrogateKind::Full);
        }
        let mut best: Option<Self> = None;
        for kind in kinds {
            for ridge in RIDGES {
                let fitted =
                    Self::fit_with_ridge(points, scores, bounds, unit_interval, kind, ridge)?;
                if best
                    .as_ref()
                    .is_none_or(|b| fitted.fit.loo_rmse < b.fit.loo_rmse)
                {
                    best = Some(fitted);
                }
            }
        }
        Ok(best.expect("at least one fit"))
    }

    fn fit_with_ridge(
        points: &[Vec<f64>],
        scores: &[f64],
        (lower, upper): (&[f64], &[f64]),
        unit_interval: bool,
        kind: SurrogateKind,
        ridge: f64,
    ) -> Result<Self, ParetoError> {
        let n = points.len();
        let d = lower.len();
        if n < 2 || scores.len() != n || points.iter().any(|p| p.len() != d) {
            return Err(ParetoError::Surrogate(format!(
                "a surrogate needs at least 2 points with {d} coefficients each and one score per point; got {n} points and {} scores",
                scores.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(ParetoError::Surrogate(format!(
                "point {i} has a non-finite score ({})",
                scores[i]
            )));
        }
        let mut model = Self {
            kind,
            lower: lower.to_vec(),
            upper: upper.to_vec(),
            logit: unit_interval,
            feature_mean: Vec::new(),
            feature_scale: Vec::new(),
            coefficients: Vec::new(),
            intercept: 0.0,
            fit: Fit {
                loo_r2: 0.0,
                loo_rmse: 0.0,
                points: n,
            },
        };
        let raw: Vec<Vec<f64>> = points.iter().map(|x| model.features(x)).collect();
        let p = raw[0].len();
        let mean: Vec<f64> = (0..p)
            .map(|k| raw.iter().map(|f| f[k]).sum::<f64>() / n as f64)
            .collect();
        let scale: Vec<f64> = (0..p)
            .map(|k| {
                let var = raw.iter().map(|f| (f[k] - mean[k]).powi(2)).sum::<f64>() / n as f64;
                if var > 1e-18 { var.sqrt() } else { 0.0 }
            })
            .collect();
        let z = Mat::<f64>::from_fn(n, p, |i, k| {
            if scale[k] > 0.0 {
                (raw[i][k] - mean[k]) / scale[k]
            } else {
                0.0
            }
        });
        let targets: Vec<f64> = scores
            .iter()
            .map(|&s| if unit_interval { logit(s) } else { s })
            .collect();
        let target_mean = targets.iter().sum::<f64>() / n as f64;
        let y = Mat::<f64>::from_fn(n, 1, |i, _| targets[i] - target_mean);

        let mut gram = z.transpose() * &z;
        for k in 0..p {
            gram[(k, k)] += ridge * n as f64 + if scale[k] > 0.0 { 0.0 } else { 1.0 };
        }
        let inverse = gram
            .llt(faer::Side::Lower)
            .map_err(|e| ParetoError::Surrogate(format!("the ridge system is singular: {e:?}")))?
            .inverse();
        let beta = &inverse * (z.transpose() * &y);
        model.coefficients = (0..p).map(|k| beta[(k, 0)]).collect();
        model.intercept = target_mean;
        model.feature_mean = mean;
        model.feature_scale = scale;

        // Leave-one-out residuals of ridge with an unpenalised intercept: e_i / (1 − h_ii),
        // h_ii = z_iᵀ (ZᵀZ + αI)⁻¹ z_i + 1/n. Predictions are compared in the score's units.
        let hz = &z * &inverse;
        let mut squared = 0.0;
        for i in 0..n {
            let h: f64 = (0..p).map(|k| hz[(i, k)] * z[(i, k)]).sum::<f64>() + 1.0 / n as f64;
            let fitted = target_mean + (0..p).map(|k| z[(i, k)] * beta[(k, 0)]).sum::<f64>();
            let residual = (targets[i] - fitted) / (1.0 - h).max(1e-9);
            let held_out = targets[i] - residual;
            let predicted = if unit_interval {
                sigmoid(held_out)
            } else {
                held_out
            };
            squared += (scores[i] - predicted).powi(2);
        }
        let score_mean = scores.iter().sum::<f64>() / n as f64;
        let total: f64 = scores.iter().map(|s| (s - score_mean).powi(2)).sum();
        model.fit.loo_rmse = (squared / n as f64).sqrt();
        model.fit.loo_r2 = if total > 0.0 {
            1.0 - squared / total
        } else {
            0.0
        };
        Ok(model)
    }

    pub fn dimension(&self) -> usize {
        self.lower.len()
    }

    /// x scaled to [−1, 1] over the box.
    fn scaled(&self, x: &[f64]) -> Vec<f64> {
        x.iter()
            .zip(self.lower.iter().zip(&self.upper))
            .map(|(v, (lo, hi))| {
                let half = ((hi - lo) / 2.0).max(1e-12);
                (v - (lo + hi) / 2.0) / half
            })
            .collect()
    }

    /// The unstandardised features: u_i, then the quadratic terms.
    fn features(&self, x: &[f64]) -> Vec<f64> {
        let u = self.scaled(x);
        let d = u.len();
        let mut f = u.clone();
        match self.kind {
            SurrogateKind::Full => {
                for i in 0..d {
                    for j in i..d {
                        f.push(u[i] * u[j]);
                    }
                }
            }
            SurrogateKind::Diagonal => f.extend(u.iter().map(|v| v * v)),
        }
        f
    }

    /// The fitted value in the transformed (logit or raw) space and its gradient in x.
    fn latent_with_gradient(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let u = self.scaled(x);
        let d = u.len();
        let weight = |k: usize| {
            if self.feature_scale[k] > 0.0 {
                self.coefficients[k] / self.feature_scale[k]
            } else {
                0.0
            }
        };
        let mut value = self.intercept;
        let mut grad_u = vec![0.0; d];
        let mut k = 0;
        let term = |k: usize, feature: f64, value: &mut f64| {
            *value += weight(k) * (feature - self.feature_mean[k]);
        };
        for i in 0..d {
            term(k, u[i], &mut value);
            grad_u[i] += weight(k);
            k += 1;
        }
        match self.kind {
            SurrogateKind::Full => {
                for i in 0..d {
                    for j in i..d {
                        term(k, u[i] * u[j], &mut value);
                        grad_u[i] += weight(k) * u[j];
                        grad_u[j] += weight(k) * u[i];
                        k += 1;
                    }
                }
            }
            SurrogateKind::Diagonal => {
                for i in 0..d {
                    term(k, u[i] * u[i], &mut value);
                    grad_u[i] += 2.0 * weight(k) * u[i];
                    k += 1;
                }
            }
        }
        let grad_x = grad_u
            .iter()
            .zip(self.lower.iter().zip(&self.upper))
            .map(|(g, (lo, hi))| g / ((hi - lo) / 2.0).max(1e-12))
            .collect();
        (value, grad_x)
    }

    /// The predicted score at `x`.
    pub fn predict(&self, x: &[f64]) -> f64 {
        self.predict_with_gradient(x).0
    }

    /// The predicted score at `x` and its gradient in x.
    pub fn predict_with_gradient(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let (latent, gradient) = self.latent_with_gradient(x);
        if self.logit {
            let p = sigmoid(latent);
            let slope = p * (1.0 - p);
            (p, gradient.into_iter().map(|g| g * slope).collect())
        } else {
            (latent, gradient)
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn known(x: &[f64]) -> f64 {
        1.0 + 2.0 * x[0] - x[1] + 0.5 * x[2] + 3.0 * x[0] * x[1] - 1.5 * x[2] * x[2]
            + 0.7 * x[0] * x[2]
    }

    fn sample(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..d).map(|_| rng.random_range(0.0..1.2)).collect())
            .collect()
    }

    #[test]
    fn recovers_a_known_quadratic() {
        let (lo, hi) = (vec![0.0; 3], vec![1.2; 3]);
        let points = sample(30, 3, 1);
        let scores: Vec<f64> = points.iter().map(|x| known(x)).collect();
        let s = Surrogate::fit(&points, &scores, (&lo, &hi), false, SurrogateKind::Full).unwrap();
        for x in sample(20, 3, 2) {
            let (value, gradient) = s.predict_with_gradient(&x);
            assert!((value - known(&x)).abs() < 1e-2, "{value} vs {}", known(&x));
            for i in 0..3 {
                let mut up = x.clone();
                up[i] += 1e-6;
                let numeric = (s.predict(&up) - value) / 1e-6;
                assert!((numeric - gradient[i]).abs() < 1e-3);
            }
        }
        assert!(s.fit.loo_r2 > 0.999, "{:?}", s.fit);
        assert!(s.fit.loo_rmse < 1e-2);
    }

    #[test]
    fn accuracies_are_fitted_on_their_logit_and_stay_in_the_interval() {
        let (lo, hi) = (vec![0.0; 2], vec![1.2; 2]);
        let points = sample(12, 2, 3);
        let accuracy = |x: &[f64]| sigmoid(0.5 + x[0] - 2.0 * x[1] * x[1]);
        let scores: Vec<f64> = points.iter().map(|x| accuracy(x)).collect();
        let s = Surrogate::fit(&points, &scores, (&lo, &hi), true, SurrogateKind::Full).unwrap();
        assert!((s.predict(&[0.6, 0.6]) - accuracy(&[0.6, 0.6])).abs() < 1e-3);
        let far = s.predict(&[10.0, -10.0]);
        assert!((0.0..=1.0).contains(&far));
    }

    #[test]
    fn few_points_fit_the_diagonal_model_and_noise_lowers_the_reported_fit() {
        let d = 8;
        let (lo, hi) = (vec![0.0; d], vec![1.2; d]);
        let points = sample(20, d, 4);
        assert_eq!(SurrogateKind::for_points(d, 20), SurrogateKind::Diagonal);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let scores: Vec<f64> = points
            .iter()
            .map(|x| x.iter().sum::<f64>() + rng.random_range(-1.0..1.0))
            .collect();
        let s =
            Surrogate::fit(&points, &scores, (&lo, &hi), false, SurrogateKind::Diagonal).unwrap();
        assert!(s.fit.loo_r2 < 0.9, "{:?}", s.fit);
        assert!(s.predict(&vec![0.6; d]).is_finite());
        assert!(Surrogate::fit(&points[..1], &scores[..1], (&lo, &hi), false, s.kind).is_err());
    }
}
