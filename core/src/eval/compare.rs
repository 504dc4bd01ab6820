//! A merge beside what it was made from: the base and every input model scored on the same
//! objective, with the merge's delta to the base and to the best single model per metric.
//!
//! The inputs' scores depend only on the family and the objective, so callers compute them
//! once ([`demo_inputs`], [`retention_inputs`]) and compare every merge against them.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::ModelTensors;
use super::{DemoAccuracy, EvalError, Fidelity, Scores};
use crate::Job;
use crate::analysis::{Survival, survival_sampled};
use crate::backend::Backend;
use crate::merge::plan::{MergePlan, PlanOptions};
use crate::merge::recipe::{ParamValue, Scalar};

/// Is a larger value of `metric` better? Losses, errors and perplexities (by the name's last
/// part, any case) are minimised; everything else (accuracy, retention, cosine, a command's
/// score) is maximised.
pub fn higher_is_better(metric: &str) -> bool {
    let last = metric
        .rsplit('/')
        .next()
        .unwrap_or(metric)
        .to_ascii_lowercase();
    !(last.contains("loss") || last.contains("error") || last.contains("perplexity"))
}

/// Is `metric` a fraction shown in percent (an accuracy)?
pub fn is_accuracy(metric: &str) -> bool {
    metric
        .rsplit('/')
        .next()
        .unwrap_or(metric)
        .to_ascii_lowercase()
        .contains("accuracy")
}

/// `value` as people read `metric`: accuracies in percent (`97.3%`, as every table of
/// mergescope prints them), the rest as numbers.
pub fn format_value(metric: &str, value: f64) -> String {
    if is_accuracy(metric) {
        format!("{:.1}%", 100.0 * value)
    } else {
        format!("{value:.4}")
    }
}

/// A difference in `metric`, signed: accuracies in percentage points (`+1.2 pp`).
pub fn format_delta(metric: &str, delta: f64) -> String {
    if is_accuracy(metric) {
        format!("{:+.1} pp", 100.0 * delta)
    } else {
        format!("{delta:+.4}")
    }
}

/// What the merge is compared with: the base's and every input model's scores.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InputScores {
    /// `None` for a merge without a base (linear).
    pub base: Option<Scores>,
    /// Per input model, in the recipe's order: its label and scores.
    pub models: Vec<(String, Scores)>,
}

/// One metric of a [`Comparison`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricRow {
    pub metric: String,
    pub merge: f64,
    pub base: Option<f64>,
    /// Per input model, in order (`None` where it has no such score).
    pub models: Vec<Option<f64>>,
    /// Merge minus base.
    pub delta_to_base: Option<f64>,
    /// The input model best on this metric (by its direction), and the merge minus its score.
    pub best_single: Option<String>,
    pub delta_to_best: Option<f64>,
    pub higher_is_better: bool,
}

impl MetricRow {
    /// Is the delta `d` an improvement for this metric?
    pub fn improves(&self, d: f64) -> bool {
        if self.higher_is_better {
            d > 0.0
        } else {
            d < 0.0
        }
    }
}

/// The merge's scores beside its inputs', metric by metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The input models' labels, in the order of [`MetricRow::models`].
    pub models: Vec<String>,
    pub metrics: Vec<MetricRow>,
}

impl Comparison {
    /// Every metric the merge has, compared with the inputs that have it too.
    /// Per-task metrics come first and their means (`mean/…`) last.
    pub fn new(merge: &Scores, inputs: &InputScores) -> Self {
        let mut ordered: Vec<(&String, &f64)> = merge.iter().collect();
        ordered.sort_by_key(|(m, _)| m.starts_with("mean/"));
        let metrics = ordered
            .into_iter()
            .map(|(metric, &value)| {
                let higher = higher_is_better(metric);
                let base = inputs.base.as_ref().and_then(|s| s.get(metric)).copied();
                let models: Vec<Option<f64>> = inputs
                    .models
                    .iter()
                    .map(|(_, s)| s.get(metric).copied())
                    .collect();
                let best = inputs
                    .models
                    .iter()
                    .zip(&models)
                    .filter_map(|((label, _), v)| Some((label, (*v)?)))
                    .filter(|(_, v)| v.is_finite())
                    .reduce(|a, b| {
                        let b_better = if higher { b.1 > a.1 } else { b.1 < a.1 };
                        if b_better { b } else { a }
                    });
                MetricRow {
                    metric: metric.clone(),
                    merge: value,
                    base,
                    models,
                    delta_to_base: base.map(|b| value - b),
                    best_single: best.map(|(label, _)| label.clone()),
                    delta_to_best: best.map(|(_, b)| value - b),
                    higher_is_better: higher,
                }
            })
            .collect();
        Self {
            models: inputs.models.iter().map(|(l, _)| l.clone()).collect(),
            metrics,
        }
    }

    pub fn metric(&self, name: &str) -> Option<&MetricRow> {
        self.metrics.iter().find(|m| m.metric == name)
    }
}

/// The base's and every input model's scores, each checkpoint of `plan`'s family scored as it
/// is by `score`.
pub fn score_inputs<E>(
    plan: &MergePlan,
    mut score: impl FnMut(&crate::Checkpoint) -> Result<Scores, E>,
) -> Result<InputScores, E> {
    let family = &plan.family;
    let base = match &family.base {
        Some(b) => Some(score(&b.checkpoint)?),
        None => None,
    };
    let mut models = Vec::with_capacity(family.models.len());
    for m in &family.models {
        models.push((m.label.clone(), score(&m.checkpoint)?));
    }
    Ok(InputScores { base, models })
}

/// The demo objective's scores of the base and every input model of `plan`, each scored as it
/// is on disk.
pub fn demo_inputs(
    plan: &MergePlan,
    demo: &DemoAccuracy,
    fidelity: Fidelity,
) -> Result<InputScores, EvalError> {
    score_inputs(plan, |checkpoint| {
        demo.score(
            &ModelTensors::from_checkpoint(checkpoint, demo.config())?,
            fidelity,
        )
    })
}

/// The retention objective's scores of each input model alone: model `j`'s row is the merge
/// `θ_b + τ_j` measured like any merge (so `retention/j` is 1 and `retention/i` is how much
/// of `τ_i` the fine-tune `j` carries on its own); the base keeps nothing (0). Measured on at
/// most `sample` elements of each tensor when given, as [`survival_sampled`]. `options` are
/// the ones `plan` was made with (relative model paths resolve the same way).
pub fn retention_inputs(
    plan: &MergePlan,
    options: &PlanOptions,
    backend: &dyn Backend,
    job: &Job,
    sample: Option<usize>,
) -> Result<InputScores, EvalError> {
    let n = plan.family.models.len();
    let failed = |e: &dyn std::fmt::Display| EvalError::Retention(e.to_string());
    let mut models = Vec::with_capacity(n);
    for j in 0..n {
        let mut recipe = plan.recipe.clone();
        "task_arithmetic".clone_into(&mut recipe.merge_method);
        recipe.parameters.clear();
        for (i, entry) in recipe.models.iter_mut().enumerate() {
            entry.parameters.clear();
            let weight = if i == j { 1.0 } else { 0.0 };
            entry.parameters.insert(
                "weight".to_owned(),
                ParamValue::Scalar(Scalar::Number(weight)),
            );
        }
        let alone = MergePlan::new(recipe, &plan.recipe_file, options).map_err(|e| failed(&e))?;
        let survived = survival_sampled(&alone, backend, job, sample).map_err(|e| failed(&e))?;
        models.push((
            plan.family.models[j].label.clone(),
            retention_scores(&survived),
        ));
    }
    let base = plan.family.base.as_ref().map(|_| {
        plan.family
            .models
            .iter()
            .map(|m| (format!("retention/{}", m.label), 0.0))
            .collect::<Scores>()
    });
    Ok(InputScores { base, models })
}

/// A merge preview's retention as scores: `retention/MODEL` (the projection) and
/// `cosine/MODEL`, where defined.
pub fn retention_scores(survived: &Survival) -> Scores {
    let mut scores = BTreeMap::new();
    for (label, s) in survived.models.iter().zip(&survived.whole_model.models) {
        if let Some(p) = s.projection {
            scores.insert(format!("retention/{label}"), p);
        }
        if let Some(c) = s.cosine {
            scores.insert(format!("cosine/{label}"), c);
        }
    }
    scores
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(pairs: &[(&str, f64)]) -> Scores {
        pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect()
    }

    #[test]
    fn deltas_follow_each_metrics_direction() {
        let merge = scores(&[("a/accuracy", 0.8), ("a/loss", 0.5)]);
        let inputs = InputScores {
            base: Some(scores(&[("a/accuracy", 0.5), ("a/loss", 1.0)])),
            models: vec![
                (
                    "x".to_owned(),
                    scores(&[("a/accuracy", 0.9), ("a/loss", 0.7)]),
                ),
                (
                    "y".to_owned(),
                    scores(&[("a/accuracy", 0.6), ("a/loss", 0.4)]),
                ),
            ],
        };
        let c = Comparison::new(&merge, &inputs);
        let acc = c.metric("a/accuracy").unwrap();
        assert_eq!(acc.best_single.as_deref(), Some("x"));
        assert!((acc.delta_to_best.unwrap() + 0.1).abs() < 1e-12);
        assert!((acc.delta_to_base.unwrap() - 0.3).abs() < 1e-12);
        assert!(!acc.improves(acc.delta_to_best.unwrap()));
        let loss = c.metric("a/loss").unwrap();
        // Lower is better: y's 0.4 is the best single model, and 0.5 is worse than it.
        assert_eq!(loss.best_single.as_deref(), Some("y"));
        assert!(!loss.improves(loss.delta_to_best.unwrap()));
        assert!(loss.improves(loss.delta_to_base.unwrap()));
    }

    #[test]
    fn accuracies_read_in_percent() {
        assert_eq!(format_value("mean/accuracy", 0.9731), "97.3%");
        assert_eq!(format_delta("mean/accuracy", -0.012), "-1.2 pp");
        assert_eq!(format_value("mean/loss", 0.25), "0.2500");
        assert!(higher_is_better("retention/a") && !higher_is_better("mean/loss"));
    }
}
