//! Maps from a preference to merge coefficients (PARETO.md §6): PWEMoE's one-layer router
//! λ(w) = clamp(A w + b), fitted data-free to the surrogates (here) or on the demo's labelled
//! data ([`super::router`]), saved and loaded as JSON, and turned into recipes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::objective::{Normalisation, ObjectiveSpec};
use super::search::{Outcome, Solver};
use super::space::DecisionSpace;
use super::{ParetoError, simplex};
use crate::Job;
use crate::merge::recipe::Recipe;

/// How a map was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapKind {
    /// Data-free, on the search's surrogates (expected Tchebycheff loss).
    Surrogate,
    /// On the demo family's labelled training data (PWEMoE, weighted cross-entropy).
    DemoRouter,
}

/// A preference → coefficients map and everything needed to use it on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMap {
    pub kind: MapKind,
    pub objectives: Vec<ObjectiveSpec>,
    /// In maximised units, as the search measured.
    pub normalisation: Normalisation,
    /// The models, layer groups, coefficient range and the recipe template.
    pub space: DecisionSpace,
    /// A: one row per coefficient, one column per objective.
    pub weights: Vec<Vec<f64>>,
    /// b: one entry per coefficient.
    pub bias: Vec<f64>,
}

/// Adam on the router (PARETO.md §6's defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterSettings {
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub seed: u64,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch: 32,
            learning_rate: 1e-2,
            seed: 0,
        }
    }
}

impl RouterSettings {
    pub fn check(&self) -> Result<(), ParetoError> {
        if !(1..=100_000).contains(&self.steps) || !(1..=4096).contains(&self.batch) {
            return Err(ParetoError::Settings(format!(
                "router steps must be 1 to 100000 and the batch 1 to 4096; got {} and {}",
                self.steps, self.batch
            )));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return Err(ParetoError::Settings(format!(
                "the router's learning rate must be in (0, 1]; got {}",
                self.learning_rate
            )));
        }
        Ok(())
    }

    /// The cosine schedule from the learning rate to a tenth of it.
    pub fn rate_at(&self, step: usize) -> f64 {
        let progress = step as f64 / self.steps.max(1) as f64;
        let low = 0.1 * self.learning_rate;
        low + 0.5 * (self.learning_rate - low) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// Adam's state for a flat parameter vector.
struct Adam {
    m: Vec<f64>,
    v: Vec<f64>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Self {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    fn step(&mut self, params: &mut [f64], gradient: &[f64], rate: f64) {
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        self.t += 1;
        for i in 0..params.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * gradient[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * gradient[i] * gradient[i];
            let m = self.m[i] / (1.0 - b1.powi(self.t));
            let v = self.v[i] / (1.0 - b2.powi(self.t));
            params[i] -= rate * m / (v.sqrt() + eps);
        }
    }
}

impl PreferenceMap {
    /// The coefficients for `preference` (made a valid one first): clamp(A w + b).
    pub fn coefficients(&self, preference: &[f64]) -> Vec<f64> {
        let w = simplex::project(preference);
        let mut x: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(row, b)| b + row.iter().zip(&w).map(|(a, w)| a * w).sum::<f64>())
            .collect();
        self.space.clamp(&mut x);
        x
    }

    /// The merge for `preference`, as a mergekit recipe.
    pub fn recipe(&self, preference: &[f64]) -> Recipe {
        self.space.recipe(&self.coefficients(preference))
    }

    /// A router with A = 0 and b = the equal point, the warm start being a least-squares fit
    /// to the search's per-ray Tchebycheff solutions: A w + b = A' w on the simplex, since the
    /// entries of w sum to 1.
    fn warm_start(outcome: &Outcome, kind: MapKind) -> Self {
        let d = outcome.space.dimension();
        let m = outcome.objectives.len();
        let equal = 0.3f64.clamp(outcome.space.lower, outcome.space.upper);
        let mut weights = vec![vec![0.0; m]; d];
        let bias = vec![equal; d];
        if !outcome.rays.is_empty() && outcome.rays.len() == outcome.ray_solutions.len() {
            // Ridge least squares X ≈ W A'ᵀ, one solve shared by every coefficient.
            let r = outcome.rays.len();
            let w = faer::Mat::<f64>::from_fn(r, m, |i, j| outcome.rays[i][j]);
            let mut gram = w.transpose() * &w;
            for j in 0..m {
                gram[(j, j)] += 1e-6 * r as f64;
            }
            if let Ok(llt) = gram.llt(faer::Side::Lower) {
                let x = faer::Mat::<f64>::from_fn(r, d, |i, k| outcome.ray_solutions[i][k]);
                use faer::linalg::solvers::Solve as _;
                let solved = llt.solve(w.transpose() * &x);
                for k in 0..d {
                    for j in 0..m {
                        weights[k][j] = solved[(j, k)] - equal;
                    }
                }
            }
        }
        Self {
            kind,
            objectives: outcome.objectives.clone(),
            normalisation: outcome.normalisation.clone(),
            space: outcome.space.clone(),
            weights,
            bias,
        }
    }

    /// Fits the router data-free: minimises E_{w ~ Dirichlet(1)} T(λ(w) | w) on the search's
    /// surrogates with Adam, from the warm start.
    pub fn fit_on_surrogates(
        outcome: &Outcome,
        settings: &RouterSettings,
        job: &Job,
    ) -> Result<Self, ParetoError> {
        settings.check()?;
        let mut map = Self::warm_start(outcome, MapKind::Surrogate);
        let (lower, upper) = outcome.space.bounds();
        let solver = Solver {
            surrogates: &outcome.surrogates,
            objectives: &outcome.objectives,
            normalisation: &outcome.normalisation,
            lower: &lower,
            upper: &upper,
        };
        let d = outcome.space.dimension();
        let m = outcome.objectives.len();
        let mut params = map.flat();
        let mut adam = Adam::new(params.len());
        let preferences = simplex::dirichlet(m, settings.steps * settings.batch, settings.seed);
        for (step, batch) in preferences.chunks(settings.batch).enumerate() {
            if step % 64 == 0 {
                job.check_cancelled().map_err(|_| ParetoError::Cancelled)?;
            }
            let mut gradient = vec![0.0; params.len()];
            map.set_flat(&params);
            for w in batch {
                let raw: Vec<f64> = (0..d)
                    .map(|k| {
                        map.bias[k]
                            + map.weights[k]
                                .iter()
                                .zip(w)
                                .map(|(a, w)| a * w)
                                .sum::<f64>()
                    })
                    .collect();
                let mut x = raw.clone();
                outcome.space.clamp(&mut x);
                let (_, dx) = solver.loss_with_gradient(&x, w);
                for k in 0..d {
                    // The clamp passes no gradient outward from a bound it holds.
                    let held =
                        (raw[k] <= lower[k] && dx[k] > 0.0) || (raw[k] >= upper[k] && dx[k] < 0.0);
                    if held {
                        continue;
                    }
                    let g = dx[k] / batch.len() as f64;
                    for j in 0..m {
                        gradient[k * (m + 1) + j] += g * w[j];
                    }
                    gradient[k * (m + 1) + m] += g;
                }
            }
            adam.step(&mut params, &gradient, settings.rate_at(step));
        }
        map.set_flat(&params);
        Ok(map)
    }

    /// Row-major (A | b) per coefficient.
    pub(crate) fn flat(&self) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.bias)
            .flat_map(|(row, b)| row.iter().copied().chain(std::iter::once(*b)))
            .collect()
    }

    pub(crate) fn set_flat(&mut self, flat: &[f64]) {
        let m = self.objectives.len();
        for (k, chunk) in flat.chunks(m + 1).enumerate() {
            self.weights[k].copy_from_slice(&chunk[..m]);
            self.bias[k] = chunk[m];
        }
    }

    /// A map with the given router, for [`super::router`].
    pub(crate) fn with_router(outcome: &Outcome, kind: MapKind) -> Self {
        Self::warm_start(outcome, kind)
    }

    pub fn save(&self, path: &Path) -> Result<(), ParetoError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ParetoError::MapFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        crate::export::write_atomically(path, format!("{text}\n").as_bytes()).map_err(|e| {
            ParetoError::MapFile {
                path: path.to_path_buf(),
                message: format!("cannot write it: {e}"),
            }
        })
    }

    pub fn load(path: &Path) -> Result<Self, ParetoError> {
        let failed = |message: String| ParetoError::MapFile {
            path: path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| failed(format!("cannot read it: {e}")))?;
        let map: Self = serde_json::from_str(&text)
            .map_err(|e| failed(format!("not a mergescope preference map: {e}")))?;
        let (d, m) = (map.space.dimension(), map.objectives.len());
        if map.weights.len() != d
            || map.bias.len() != d
            || map.weights.iter().any(|r| r.len() != m)
            || map.normalisation.reference.len() != m
            || map.normalisation.ideal.len() != m
        {
            return Err(failed(format!(
                "the router must have {d} rows of {m} weights and {d} biases (models × layer groups, objectives)"
            )));
        }
        if map.flat().iter().any(|v| !v.is_finite()) {
            return Err(failed("the router holds non-finite numbers".to_owned()));
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_learning_rate_decays_from_its_value_to_a_tenth() {
        let s = RouterSettings::default();
        assert!((s.rate_at(0) - 1e-2).abs() < 1e-12);
        assert!((s.rate_at(s.steps) - 1e-3).abs() < 1e-12);
        assert!(s.rate_at(s.steps / 2) < 1e-2 && s.rate_at(s.steps / 2) > 1e-3);
    }

    #[test]
    fn adam_walks_down_a_bowl() {
        let mut x = vec![3.0, -2.0];
        let mut adam = Adam::new(2);
        for _ in 0..2000 {
            let g = vec![2.0 * (x[0] - 1.0), 2.0 * (x[1] + 0.5)];
            adam.step(&mut x, &g, 1e-2);
        }
        assert!(
            (x[0] - 1.0).abs() < 1e-2 && (x[1] + 0.5).abs() < 1e-2,
            "{x:?}"
        );
    }
}
