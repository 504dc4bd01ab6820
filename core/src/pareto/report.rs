//! What a search and its map amount to, as the CLI's JSON and table show it, and the maps'
//! validation on held-out preferences with real evaluations (PARETO.md §6).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::evaluate::{Evaluator, Target, scores_of};
use super::map::{MapKind, PreferenceMap};
use super::objective::Direction;
use super::scalarize::tchebycheff;
use super::search::{Outcome, Point, Round, Source, normalised_hypervolume};
use super::{ParetoError, hypervolume, simplex};
use crate::Job;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveEntry {
    pub name: String,
    pub direction: Direction,
}

/// A coefficient in the JSON: a number, or K numbers with layer groups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Coefficient {
    One(f64),
    PerGroup(Vec<f64>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PointEntry {
    /// Model label → its coefficient (per layer group when there are several).
    pub coefficients: IndexMap<String, Coefficient>,
    /// Objective → score, in the objective's own units.
    pub scores: IndexMap<String, f64>,
    pub front: bool,
    /// The point's exclusive share of the normalised hypervolume.
    pub contribution: f64,
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitEntry {
    pub objective: String,
    pub loo_r2: f64,
    pub loo_rmse: f64,
    pub points: usize,
}

/// One held-out preference of a map's validation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationEntry {
    pub preference: Vec<f64>,
    pub coefficients: Vec<f64>,
    pub scores: Vec<f64>,
    /// T(λ(w) | w) − the smallest T among the comparison points.
    pub regret: f64,
}

/// A map's real evaluation on held-out preferences.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub kind: MapKind,
    pub entries: Vec<ValidationEntry>,
    pub mean_regret: f64,
    pub max_regret: f64,
    /// Of the validation points alone.
    pub hypervolume_normalised: f64,
}

/// The JSON of `mergescope pareto --json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub method: String,
    pub models: Vec<String>,
    pub layer_groups: usize,
    pub lambda_range: [f64; 2],
    pub objectives: Vec<ObjectiveEntry>,
    /// In the objectives' own units.
    pub reference: Vec<f64>,
    pub ideal: Vec<f64>,
    pub inputs: Vec<PointEntry>,
    pub points: Vec<PointEntry>,
    /// In maximised units (a `min` objective counts as its negation).
    pub hypervolume: f64,
    pub hypervolume_normalised: f64,
    /// Real evaluations, the inputs' included.
    pub evaluations: usize,
    pub rounds: Vec<Round>,
    pub surrogate: Vec<FitEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub validation: Vec<Validation>,
}

impl Report {
    pub fn new(outcome: &Outcome, validation: Vec<Validation>) -> Self {
        let objectives = &outcome.objectives;
        let unmaximise = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .zip(objectives)
                .map(|(x, o)| o.direction.score(*x))
                .collect()
        };
        let front = outcome.front();
        let normalised: Vec<Vec<f64>> = outcome
            .points
            .iter()
            .map(|p| outcome.normalised(&p.scores))
            .collect();
        let contributions = hypervolume::contributions(&normalised, &vec![0.0; objectives.len()]);
        let entry = |p: &Point, on_front: bool, contribution: f64| PointEntry {
            coefficients: coefficients_by_model(outcome, &p.coefficients),
            scores: objectives
                .iter()
                .zip(&p.scores)
                .map(|(o, s)| (o.name.clone(), *s))
                .collect(),
            front: on_front,
            contribution,
            source: p.source.describe(),
        };
        Self {
            method: outcome.space.template.merge_method.clone(),
            models: outcome.space.labels.clone(),
            layer_groups: outcome.space.groups,
            lambda_range: [outcome.space.lower, outcome.space.upper],
            objectives: objectives
                .iter()
                .map(|o| ObjectiveEntry {
                    name: o.name.clone(),
                    direction: o.direction,
                })
                .collect(),
            reference: unmaximise(&outcome.normalisation.reference),
            ideal: unmaximise(&outcome.normalisation.ideal),
            inputs: outcome
                .inputs
                .iter()
                .map(|p| entry(p, false, 0.0))
                .collect(),
            points: outcome
                .points
                .iter()
                .enumerate()
                .map(|(i, p)| entry(p, front.contains(&i), contributions[i]))
                .collect(),
            hypervolume: outcome.hypervolume(),
            hypervolume_normalised: outcome.hypervolume_normalised(),
            evaluations: outcome.evaluations(),
            rounds: outcome.rounds.clone(),
            surrogate: objectives
                .iter()
                .zip(&outcome.surrogates)
                .map(|(o, s)| FitEntry {
                    objective: o.name.clone(),
                    loo_r2: s.fit.loo_r2,
                    loo_rmse: s.fit.loo_rmse,
                    points: s.fit.points,
                })
                .collect(),
            validation,
        }
    }
}

/// A point's coefficients keyed by model label.
pub fn coefficients_by_model(outcome: &Outcome, x: &[f64]) -> IndexMap<String, Coefficient> {
    outcome
        .space
        .labels
        .iter()
        .zip(outcome.space.per_model(x))
        .map(|(label, values)| {
            let value = match values.as_slice() {
                [v] => Coefficient::One(*v),
                _ => Coefficient::PerGroup(values),
            };
            (label.clone(), value)
        })
        .collect()
}

/// `names` without the first or last `/`-part when every name has that same part.
pub fn short_names(names: &[&str]) -> Vec<String> {
    let parts: Vec<Vec<&str>> = names.iter().map(|n| n.split('/').collect()).collect();
    let several = names.len() > 1 && parts.iter().all(|p| p.len() > 1);
    let first_shared = several && parts.iter().all(|p| p[0] == parts[0][0]);
    let last_shared = several && parts.iter().all(|p| p.last() == parts[0].last());
    if first_shared {
        parts.iter().map(|p| p[1..].join("/")).collect()
    } else if last_shared {
        parts.iter().map(|p| p[..p.len() - 1].join("/")).collect()
    } else {
        names.iter().map(|n| (*n).to_owned()).collect()
    }
}

/// The held-out preferences of a map's validation: Das–Dennis with 3 divisions (20 rays for
/// four objectives), none of which the Dirichlet training draws hit exactly.
pub fn held_out_preferences(objectives: usize) -> Vec<Vec<f64>> {
    simplex::das_dennis(objectives, 3)
}

/// Evaluates `map` for real at each preference and compares it with the best of `against`
/// (the search's points, or a brute-force grid) for that preference.
pub fn validate(
    map: &PreferenceMap,
    outcome: &Outcome,
    evaluator: &dyn Evaluator,
    preferences: &[Vec<f64>],
    against: &[Point],
    job: &Job,
    on_point: &mut dyn FnMut(&Point),
) -> Result<Validation, ParetoError> {
    let mut entries = Vec::with_capacity(preferences.len());
    let mut points = Vec::with_capacity(preferences.len());
    job.progress
        .start_stage("validating the map", preferences.len() as u64);
    for w in preferences {
        let x = map.coefficients(w);
        let recipe = map.space.recipe(&x);
        let evaluation = evaluator.evaluate(Target::Merge(&recipe), job)?;
        let scores = scores_of(&evaluation, &outcome.objectives)?;
        job.progress.add_done(1);
        let loss = tchebycheff(&outcome.normalised(&scores), w);
        let best = against
            .iter()
            .map(|p| tchebycheff(&outcome.normalised(&p.scores), w))
            .fold(f64::INFINITY, f64::min);
        let point = Point {
            coefficients: x.clone(),
            scores: scores.clone(),
            source: Source::Map,
        };
        on_point(&point);
        points.push(point);
        entries.push(ValidationEntry {
            preference: w.clone(),
            coefficients: x,
            scores,
            regret: loss - best,
        });
    }
    let regrets: Vec<f64> = entries.iter().map(|e| e.regret).collect();
    Ok(Validation {
        kind: map.kind,
        mean_regret: regrets.iter().sum::<f64>() / regrets.len().max(1) as f64,
        max_regret: regrets.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        hypervolume_normalised: normalised_hypervolume(
            &outcome.objectives,
            &outcome.normalisation,
            &points,
        ),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_drop_the_shared_part() {
        assert_eq!(short_names(&["a/accuracy", "b/accuracy"]), ["a", "b"]);
        assert_eq!(short_names(&["retention/a", "retention/b"]), ["a", "b"]);
        assert_eq!(short_names(&["score", "cost"]), ["score", "cost"]);
    }
}
