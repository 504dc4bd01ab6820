//! The Pareto panel's state: the search's settings, the points as they arrive from the worker,
//! the finished search and its preference map, and the preference the user sets.

use std::path::PathBuf;

use mergescope_core::pareto::map::PreferenceMap;
use mergescope_core::pareto::search::{Outcome, Point, Round};
use mergescope_core::pareto::{Normalisation, ObjectiveSpec, front, simplex};

/// Which objective the panel's search scores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParetoObjective {
    /// The demo's four test accuracies (families on the demo base).
    Demo,
    /// Data-free: the share of each task vector the merge keeps.
    Retention,
    /// A language model's mean token NLL on each text domain (the Merge panel's texts), each
    /// minimised.
    Perplexity,
    /// The user's command on each merge's folder, with the metrics to maximise and minimise.
    Command {
        command: String,
        maximize: String,
        minimize: String,
    },
}

/// What the worker needs to run a search.
#[derive(Clone, Debug)]
pub struct ParetoRequest {
    /// The Merge panel's recipe: its method and other parameters are held fixed.
    pub yaml: String,
    pub file: PathBuf,
    pub objective: ParetoObjective,
    pub groups: usize,
    pub range: (f64, f64),
    pub budget: usize,
    /// Score the demo on [`QUICK_SAMPLE`] test images per domain instead of all of them (a
    /// language model on each domain's first tokens, as its quick previews are).
    pub quick: bool,
    /// The texts of a perplexity search.
    pub texts: Option<super::texts::LoadedTexts>,
}

/// Test images per domain of a quick search.
pub const QUICK_SAMPLE: usize = 64;

/// What the worker sends while a search runs.
#[derive(Debug)]
pub enum ParetoUpdate {
    Started {
        objectives: Vec<ObjectiveSpec>,
        normalisation: Normalisation,
    },
    Point(Point),
    Round(Round),
    Done {
        outcome: Box<Outcome>,
        map: Box<PreferenceMap>,
    },
}

/// The panel's state.
#[derive(Debug)]
pub struct ParetoState {
    pub objective: ParetoObjective,
    pub groups: usize,
    pub lower: f64,
    pub upper: f64,
    pub budget: usize,
    /// A quick search: the demo scored on a fixed subsample of its test images.
    pub quick: bool,
    pub running: bool,
    pub objectives: Vec<ObjectiveSpec>,
    pub normalisation: Option<Normalisation>,
    /// Every real evaluation so far, the inputs first.
    pub points: Vec<Point>,
    pub rounds: Vec<Round>,
    pub outcome: Option<Outcome>,
    pub map: Option<PreferenceMap>,
    /// On the simplex, one entry per objective.
    pub preference: Vec<f64>,
    /// Use the evaluated point best for the preference instead of the map's merge.
    pub snap: bool,
    /// The objectives on the scatter's axes.
    pub axes: (usize, usize),
    /// The preference whose coefficients were last put into the Merge panel.
    pub applied: Option<Vec<f64>>,
    /// Where "Save the map" writes.
    pub map_path: String,
    /// Whether each of `points` is on their front: kept with them, not redone every frame.
    front: Vec<bool>,
}

impl Default for ParetoState {
    fn default() -> Self {
        Self {
            objective: ParetoObjective::Demo,
            groups: 1,
            lower: mergescope_core::pareto::space::LAMBDA_RANGE.0,
            upper: mergescope_core::pareto::space::LAMBDA_RANGE.1,
            budget: 60,
            quick: false,
            running: false,
            objectives: Vec::new(),
            normalisation: None,
            points: Vec::new(),
            rounds: Vec::new(),
            outcome: None,
            map: None,
            preference: Vec::new(),
            snap: false,
            axes: (0, 1),
            applied: None,
            map_path: std::env::temp_dir()
                .join("mergescope-map.json")
                .display()
                .to_string(),
            front: Vec::new(),
        }
    }
}

impl ParetoState {
    /// Forgets the last search (a new one starts, or another family opened).
    pub fn clear(&mut self) {
        self.objectives.clear();
        self.normalisation = None;
        self.points.clear();
        self.rounds.clear();
        self.outcome = None;
        self.map = None;
        self.applied = None;
        self.front.clear();
    }

    pub fn apply(&mut self, update: ParetoUpdate) {
        let points_changed = matches!(update, ParetoUpdate::Point(_) | ParetoUpdate::Done { .. });
        match update {
            ParetoUpdate::Started {
                objectives,
                normalisation,
            } => {
                let m = objectives.len();
                if self.preference.len() != m {
                    self.preference = vec![1.0 / m as f64; m];
                }
                self.axes = (0, 1.min(m.saturating_sub(1)));
                self.objectives = objectives;
                self.normalisation = Some(normalisation);
            }
            ParetoUpdate::Point(point) => self.points.push(point),
            ParetoUpdate::Round(round) => self.rounds.push(round),
            ParetoUpdate::Done { outcome, map } => {
                self.running = false;
                self.points = outcome.inputs.clone();
                let reused = outcome
                    .points
                    .iter()
                    .filter(|p| !matches!(p.source, mergescope_core::pareto::Source::Input(_)));
                self.points.extend(reused.cloned());
                self.outcome = Some(*outcome);
                self.map = Some(*map);
            }
        }
        if points_changed {
            let maximised: Vec<Vec<f64>> = self
                .points
                .iter()
                .map(|p| self.maximised(&p.scores))
                .collect();
            self.front = vec![false; self.points.len()];
            for i in front::non_dominated(&maximised) {
                self.front[i] = true;
            }
        }
    }

    /// A point's scores, maximised.
    pub fn maximised(&self, scores: &[f64]) -> Vec<f64> {
        mergescope_core::pareto::search::maximised(&self.objectives, scores)
    }

    /// A point's normalised objectives (0 at the reference, 1 at the ideal).
    pub fn normalised(&self, scores: &[f64]) -> Option<Vec<f64>> {
        Some(
            self.normalisation
                .as_ref()?
                .normalise(&self.maximised(scores)),
        )
    }

    /// Whether each point is on the front of the points so far.
    pub fn on_front(&self) -> &[bool] {
        &self.front
    }

    /// The coefficients the current preference gives: the map's, or the best evaluated
    /// point's when snapping.
    pub fn coefficients(&self) -> Option<Vec<f64>> {
        let outcome = self.outcome.as_ref()?;
        if self.snap {
            return outcome
                .best_for(&self.preference)
                .map(|i| outcome.points[i].coefficients.clone());
        }
        Some(self.map.as_ref()?.coefficients(&self.preference))
    }

    /// The surrogates' prediction for `x`, in the objectives' units.
    pub fn predicted(&self, x: &[f64]) -> Option<Vec<f64>> {
        let outcome = self.outcome.as_ref()?;
        Some(outcome.surrogates.iter().map(|s| s.predict(x)).collect())
    }

    /// Short names of the objectives: a part every name shares (`…/accuracy`, `retention/…`)
    /// is left out.
    pub fn labels(&self) -> Vec<String> {
        mergescope_core::pareto::report::short_names(
            &self
                .objectives
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>(),
        )
    }

    /// Sets the preference (made a valid one).
    pub fn set_preference(&mut self, w: &[f64]) {
        self.preference = simplex::project(w);
    }
}

/// Changes entry `j` of a preference to `value` and rescales the others so the entries still
/// sum to 1, keeping their proportions (shared equally when they were all 0).
pub fn linked(preference: &[f64], j: usize, value: f64) -> Vec<f64> {
    let value = value.clamp(0.0, 1.0);
    let rest: f64 = preference
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != j)
        .map(|(_, v)| v)
        .sum();
    let others = preference.len().saturating_sub(1).max(1) as f64;
    preference
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if i == j {
                value
            } else if rest > 1e-12 {
                v / rest * (1.0 - value)
            } else {
                (1.0 - value) / others
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_bars_always_sum_to_one() {
        let w = linked(&[0.25, 0.25, 0.25, 0.25], 0, 0.7);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((w[0] - 0.7).abs() < 1e-12 && (w[1] - 0.1).abs() < 1e-12);
        let w = linked(&[1.0, 0.0, 0.0], 0, 0.4);
        assert!((w[1] - 0.3).abs() < 1e-12 && (w[2] - 0.3).abs() < 1e-12);
    }
}
