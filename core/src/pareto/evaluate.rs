//! Real evaluations of points of the decision space: the point's recipe is merged in memory
//! (or, for a command that needs files, into a scratch folder removed afterwards) and scored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ParetoError;
use super::objective::{Direction, ObjectiveSpec};
use crate::Job;
use crate::backend::Backend;
use crate::eval::lm::perplexity::Perplexity;
use crate::eval::preview::merge_in_memory;
use crate::eval::{
    Candidate, DemoAccuracy, Domain, ExternalCommand, Fidelity, Objective as _, Retention, Scores,
};
use crate::export::ExportOptions;
use crate::merge::engine::execute;
use crate::merge::plan::{MergePlan, PlanOptions};
use crate::merge::recipe::Recipe;

/// What is scored: a point's merge, or one of the input models as it is.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Merge(&'a Recipe),
    /// An input model's folder, and a task-arithmetic recipe that reproduces it (for
    /// objectives that score recipes rather than folders).
    Input {
        folder: &'a Path,
        recipe: &'a Recipe,
    },
}

/// A real evaluation: every metric the objective reported, and the directions it gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    pub scores: Scores,
    pub directions: BTreeMap<String, Direction>,
}

/// Scores points; shared by the search, the maps' validation and the GUI's worker.
pub trait Evaluator: Send + Sync {
    /// In words, for progress and reports.
    fn describe(&self) -> String;

    fn evaluate(&self, target: Target<'_>, job: &Job) -> Result<Evaluation, ParetoError>;

    /// The objectives among the metrics of a first evaluation.
    fn objectives(&self, first: &Evaluation) -> Result<Vec<ObjectiveSpec>, ParetoError>;

    /// Where `recipe`'s base (if any) and other models are, as a merge resolves them.
    fn model_paths(&self, recipe: &Recipe) -> Result<(Option<PathBuf>, Vec<PathBuf>), ParetoError>;
}

/// Which objective a [`MergeEvaluator`] scores.
#[derive(Debug)]
pub enum ObjectiveKind {
    /// The demo family's per-domain test accuracies.
    Demo {
        accuracy: DemoAccuracy,
        fidelity: Fidelity,
    },
    /// How much of each task vector the merge keeps (data-free).
    Retention,
    /// The user's command on the merged folder; `directions` (from the command line) name the
    /// objectives, else the command's own `"directions"` do.
    Command {
        command: ExternalCommand,
        directions: BTreeMap<String, Direction>,
    },
    /// A language model's mean negative log-likelihood per domain (`DOMAIN/nll`, minimised):
    /// the log of its perplexity, so the front is the same, and the quadratic surrogate fits
    /// it better than its exponential.
    Perplexity {
        perplexity: Arc<Perplexity>,
        fidelity: Fidelity,
    },
}

/// Merges a recipe as the engine does and scores it with one [`ObjectiveKind`].
pub struct MergeEvaluator {
    /// Where the recipes are taken to live (relative model paths resolve from there).
    pub recipe_file: PathBuf,
    pub cwd: PathBuf,
    pub backend: Arc<dyn Backend>,
    pub objective: ObjectiveKind,
    pub random_seed: u64,
}

impl MergeEvaluator {
    fn plan(&self, recipe: &Recipe) -> Result<MergePlan, ParetoError> {
        MergePlan::new(
            recipe.clone(),
            &self.recipe_file,
            &PlanOptions {
                cwd: self.cwd.clone(),
                random_seed: Some(self.random_seed),
                truncate_vocab: false,
            },
        )
        .map_err(|e| ParetoError::Evaluation(crate::one_line(&e.to_string())))
    }
}

fn failed(e: impl std::fmt::Display) -> ParetoError {
    ParetoError::Evaluation(crate::one_line(&e.to_string()))
}

/// A folder under the temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("mergescope-pareto-{}-{n}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Evaluator for MergeEvaluator {
    fn describe(&self) -> String {
        match &self.objective {
            ObjectiveKind::Demo { .. } => "the demo's test accuracies".to_owned(),
            ObjectiveKind::Retention => "retention".to_owned(),
            ObjectiveKind::Command { command, .. } => format!("`{}`", command.command),
            ObjectiveKind::Perplexity { .. } => "the mean token NLL per domain".to_owned(),
        }
    }

    fn evaluate(&self, target: Target<'_>, job: &Job) -> Result<Evaluation, ParetoError> {
        job.check_cancelled().map_err(|_| ParetoError::Cancelled)?;
        match &self.objective {
            ObjectiveKind::Demo { accuracy, fidelity } => {
                let scores = match target {
                    Target::Merge(recipe) => {
                        let plan = self.plan(recipe)?;
                        let merged =
                            merge_in_memory(&plan, self.backend.as_ref()).map_err(failed)?;
                        accuracy.score(&merged, *fidelity)
                    }
                    Target::Input { folder, .. } => accuracy.evaluate(
                        &Candidate {
                            folder: Some(folder),
                            tensors: None,
                        },
                        *fidelity,
                    ),
                }
                .map_err(failed)?;
                Ok(Evaluation {
                    scores,
                    directions: BTreeMap::new(),
                })
            }
            ObjectiveKind::Retention => {
                let recipe = match target {
                    Target::Merge(recipe) | Target::Input { recipe, .. } => recipe,
                };
                let plan = self.plan(recipe)?;
                let scores = Retention {
                    plan: &plan,
                    backend: self.backend.as_ref(),
                    job,
                }
                .evaluate(&Candidate::default(), Fidelity::Full)
                .map_err(|e| {
                    if job.cancel.is_cancelled() {
                        ParetoError::Cancelled
                    } else {
                        failed(e)
                    }
                })?;
                // Members are labelled by their path in the recipe: name them by folder.
                let scores = scores
                    .into_iter()
                    .map(|(key, v)| match key.split_once('/') {
                        Some((metric, model)) => {
                            (format!("{metric}/{}", super::space::label_of(model)), v)
                        }
                        None => (key, v),
                    })
                    .collect();
                Ok(Evaluation {
                    scores,
                    directions: BTreeMap::new(),
                })
            }
            ObjectiveKind::Command { command, .. } => {
                let (scores, given) = match target {
                    Target::Input { folder, .. } => command.run_with_directions(folder),
                    Target::Merge(recipe) => {
                        let plan = self.plan(recipe)?;
                        let scratch = Scratch::new();
                        let mut options = ExportOptions::new(scratch.0.clone());
                        options.force = true;
                        execute(&plan, &options, self.backend.as_ref(), job).map_err(|e| {
                            if job.cancel.is_cancelled() {
                                ParetoError::Cancelled
                            } else {
                                failed(e)
                            }
                        })?;
                        command.run_with_directions(&scratch.0)
                    }
                }
                .map_err(failed)?;
                let mut directions = BTreeMap::new();
                for (metric, text) in given {
                    let direction = Direction::parse(&text).ok_or_else(|| {
                        ParetoError::Evaluation(format!(
                            "the command gives `{metric}` the direction \"{text}\"; use \"min\" or \"max\""
                        ))
                    })?;
                    directions.insert(metric, direction);
                }
                Ok(Evaluation { scores, directions })
            }
            ObjectiveKind::Perplexity {
                perplexity,
                fidelity,
            } => {
                let model = match target {
                    Target::Merge(recipe) => {
                        let plan = self.plan(recipe)?;
                        let merged =
                            merge_in_memory(&plan, self.backend.as_ref()).map_err(failed)?;
                        perplexity.model_of(&merged, "the merge").map_err(failed)?
                    }
                    Target::Input { folder, .. } => perplexity.model_in(folder).map_err(failed)?,
                };
                let scores = perplexity
                    .score_until(&model, *fidelity, &job.cancel)
                    .map_err(|e| match e {
                        crate::eval::lm::perplexity::ScoreError::Cancelled => {
                            ParetoError::Cancelled
                        }
                        other => failed(other),
                    })?;
                Ok(Evaluation {
                    scores,
                    directions: BTreeMap::new(),
                })
            }
        }
    }

    fn model_paths(&self, recipe: &Recipe) -> Result<(Option<PathBuf>, Vec<PathBuf>), ParetoError> {
        crate::merge::plan::recipe_model_paths(recipe, &self.recipe_file, &self.cwd).map_err(failed)
    }

    fn objectives(&self, first: &Evaluation) -> Result<Vec<ObjectiveSpec>, ParetoError> {
        match &self.objective {
            ObjectiveKind::Demo { .. } => Ok(Domain::ALL
                .iter()
                .map(|d| ObjectiveSpec::accuracy(&format!("{}/accuracy", d.name())))
                .collect()),
            ObjectiveKind::Retention => {
                let specs: Vec<ObjectiveSpec> = first
                    .scores
                    .keys()
                    .filter(|k| k.starts_with("retention/"))
                    .map(|k| ObjectiveSpec::maximised(k))
                    .collect();
                if specs.len() < 2 {
                    return Err(ParetoError::Settings(
                        "retention gives one objective per model; a front needs at least two models"
                            .to_owned(),
                    ));
                }
                Ok(specs)
            }
            ObjectiveKind::Perplexity { perplexity, .. } => Ok(perplexity
                .domains
                .domains
                .iter()
                .map(|(name, _)| ObjectiveSpec {
                    name: format!("{name}/nll"),
                    direction: Direction::Min,
                    unit_interval: false,
                })
                .collect()),
            ObjectiveKind::Command { directions, .. } => {
                let chosen = if directions.is_empty() {
                    &first.directions
                } else {
                    directions
                };
                if chosen.is_empty() {
                    let metrics: Vec<&str> = first.scores.keys().map(String::as_str).collect();
                    return Err(ParetoError::Settings(format!(
                        "the command printed {} but no directions; pass --maximize/--minimize METRIC,… or print \"directions\": {{\"METRIC\": \"max\"}}",
                        if metrics.is_empty() {
                            "no metrics".to_owned()
                        } else {
                            metrics.join(", ")
                        }
                    )));
                }
                chosen
                    .iter()
                    .map(|(name, &direction)| {
                        if first.scores.contains_key(name) {
                            Ok(ObjectiveSpec {
                                name: name.clone(),
                                direction,
                                unit_interval: false,
                            })
                        } else {
                            Err(ParetoError::Settings(format!(
                                "the command printed no metric `{name}`; it printed {}",
                                first.scores.keys().cloned().collect::<Vec<_>>().join(", ")
                            )))
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The scores of `evaluation` in the objectives' order; a missing or non-finite one is an error
/// (a point without every score cannot be placed).
pub fn scores_of(
    evaluation: &Evaluation,
    objectives: &[ObjectiveSpec],
) -> Result<Vec<f64>, ParetoError> {
    objectives
        .iter()
        .map(|o| match evaluation.scores.get(&o.name) {
            Some(v) if v.is_finite() => Ok(*v),
            Some(v) => Err(ParetoError::Evaluation(format!(
                "objective `{}` is {v}; a point needs finite scores",
                o.name
            ))),
            None => Err(ParetoError::Evaluation(format!(
                "the evaluation reported no `{}`",
                o.name
            ))),
        })
        .collect()
}
