//! Running a sweep: every cell's recipe planned as `mergescope merge` plans it, merged in
//! memory (exported to a scratch folder for a command) and scored, one cell after the other,
//! each reported as soon as it is done.
//!
//! Each cell is planned from its recipe text with [`MergePlan::new`], the path `mergescope
//! eval` takes, so a cell's scores are the scores of its recipe. Planning opens the
//! checkpoints again (memory maps and headers; the plan API takes a recipe, not an opened
//! family). On the demo family that is within the 3.3 ms a whole retention cell takes
//! (release build), against 70–140 ms for a cell scored on the full test split.

use std::path::PathBuf;

use serde::Serialize;

use super::{Owner, Sweep, SweepError};
use crate::Job;
use crate::backend::Backend;
use crate::dtype::{FloatType, TensorBytes, decode_into};
use crate::eval::preview::merge_in_memory;
use crate::eval::{
    Candidate, DemoAccuracy, ExternalCommand, Fidelity, ModelTensors, Objective as _, Retention,
    Scores,
};
use crate::export::ExportOptions;
use crate::merge::engine::{MergeError, execute};
use crate::merge::plan::{MergePlan, PlanOptions, TaskAction, resolve_model_path};
use crate::merge::recipe::Recipe;

/// What each cell is scored on (the objectives of `mergescope eval`).
#[derive(Debug)]
pub enum SweepObjective {
    /// The demo family's per-domain test accuracy and loss, on all or part of the test split.
    Demo {
        accuracy: DemoAccuracy,
        fidelity: Fidelity,
    },
    /// Data-free: how much of each task vector the merge keeps.
    Retention,
    /// The user's command, run on the cell's merge exported to a scratch folder.
    Command(ExternalCommand),
    /// A language model's perplexity per domain, the cell's merge held in memory.
    Perplexity {
        perplexity: std::sync::Arc<crate::eval::lm::perplexity::Perplexity>,
        fidelity: Fidelity,
    },
}

impl SweepObjective {
    /// In words, for progress and reports.
    pub fn describe(&self) -> String {
        match self {
            Self::Demo {
                fidelity: Fidelity::Full,
                ..
            } => "demo accuracy".to_owned(),
            Self::Demo {
                fidelity: Fidelity::Subsample(n),
                ..
            } => format!("demo accuracy on {n} samples per domain"),
            Self::Retention => "retention".to_owned(),
            Self::Command(command) => format!("`{}`", command.command),
            Self::Perplexity {
                fidelity: Fidelity::Full,
                ..
            } => "perplexity".to_owned(),
            Self::Perplexity {
                fidelity: Fidelity::Subsample(n),
                ..
            } => format!("perplexity on the first {n} tokens per domain"),
        }
    }
}

/// One computed cell.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    /// Its position on each axis.
    pub index: Vec<usize>,
    /// The value each axis takes there.
    pub values: Vec<f64>,
    /// Every metric the objective reported.
    pub scores: Scores,
    /// The recipe it merged.
    pub recipe: String,
}

/// Computes every cell of `sweep` in order, calling `on_cell` with each as it is done, and
/// returns them all. Progress counts cells; a cancel stops at the next cell (or inside a
/// retention measurement or an export) with [`SweepError::Cancelled`].
pub fn run(
    sweep: &Sweep,
    objective: &SweepObjective,
    backend: &dyn Backend,
    options: &PlanOptions,
    job: &Job,
    on_cell: &mut dyn FnMut(&Cell),
) -> Result<Vec<Cell>, SweepError> {
    check_base_entries(sweep, &options.cwd)?;
    let count = sweep.cell_count();
    let mut cells = Vec::with_capacity(count);
    job.progress
        .start_stage(format!("sweep: {}", objective.describe()), count as u64);
    for n in 0..count {
        job.check_cancelled().map_err(|_| SweepError::Cancelled)?;
        let index = sweep.cell_index(n);
        let values = sweep.values_at(&index);
        let described = sweep.describe(&values);
        job.progress
            .set_stage(format!("sweep cell {}/{count}: {described}", n + 1));
        let recipe = sweep.recipe_at(&values)?;
        let scores = score_cell(sweep.file(), &recipe, objective, backend, options, job).map_err(
            |failure| match failure {
                CellFailure::Cancelled => SweepError::Cancelled,
                CellFailure::Plan(source) => SweepError::Plan {
                    cell: described.clone(),
                    source: Box::new(source),
                },
                CellFailure::Evaluation(message) => SweepError::Evaluation {
                    cell: described.clone(),
                    message: crate::one_line(&message),
                },
            },
        )?;
        let cell = Cell {
            index,
            values,
            scores,
            recipe,
        };
        on_cell(&cell);
        cells.push(cell);
        job.progress.add_done(1);
    }
    Ok(cells)
}

enum CellFailure {
    Cancelled,
    Plan(crate::merge::plan::PlanError),
    Evaluation(String),
}

/// Scores the recipe `text` (read from, or taken to live at, `file`) as a sweep scores a
/// cell: planned as `mergescope merge` plans it, merged in memory (exported for a command),
/// rounded to the output dtype, scored on `objective`.
pub fn score_recipe(
    text: &str,
    file: &std::path::Path,
    objective: &SweepObjective,
    backend: &dyn Backend,
    options: &PlanOptions,
    job: &Job,
) -> Result<Scores, SweepError> {
    score_cell(file, text, objective, backend, options, job).map_err(|failure| match failure {
        CellFailure::Cancelled => SweepError::Cancelled,
        CellFailure::Plan(source) => SweepError::Plan {
            cell: file.display().to_string(),
            source: Box::new(source),
        },
        CellFailure::Evaluation(message) => SweepError::Evaluation {
            cell: file.display().to_string(),
            message: crate::one_line(&message),
        },
    })
}

fn score_cell(
    file: &std::path::Path,
    text: &str,
    objective: &SweepObjective,
    backend: &dyn Backend,
    options: &PlanOptions,
    job: &Job,
) -> Result<Scores, CellFailure> {
    let recipe = Recipe::from_yaml(text, file).map_err(|e| CellFailure::Plan(e.into()))?;
    let plan = MergePlan::new(recipe, file, options).map_err(CellFailure::Plan)?;
    // The cell's own progress (bytes of a measurement or an export) stays out of the sweep's
    // count of cells; a cancel reaches it.
    let inner = Job {
        progress: crate::Progress::default(),
        cancel: job.cancel.clone(),
        non_finite: job.non_finite.clone(),
    };
    let failed = |e: &dyn std::fmt::Display| {
        if job.cancel.is_cancelled() {
            CellFailure::Cancelled
        } else {
            CellFailure::Evaluation(e.to_string())
        }
    };
    match objective {
        SweepObjective::Demo { accuracy, fidelity } => {
            let mut merged = merge_in_memory(&plan, backend).map_err(|e| failed(&e))?;
            round_to_output(&plan, &mut merged);
            accuracy.score(&merged, *fidelity).map_err(|e| failed(&e))
        }
        SweepObjective::Retention => Retention {
            plan: &plan,
            backend,
            job: &inner,
        }
        .evaluate(&Candidate::default(), Fidelity::Full)
        .map_err(|e| failed(&e)),
        SweepObjective::Command(command) => {
            let scratch = Scratch::new();
            let mut export = ExportOptions::new(scratch.0.clone());
            export.force = true;
            execute(&plan, &export, backend, &inner).map_err(|e| match e {
                MergeError::Cancelled(_) => CellFailure::Cancelled,
                other => failed(&other),
            })?;
            command.run(&scratch.0).map_err(|e| failed(&e))
        }
        SweepObjective::Perplexity {
            perplexity,
            fidelity,
        } => {
            let mut merged = merge_in_memory(&plan, backend).map_err(|e| failed(&e))?;
            round_to_output(&plan, &mut merged);
            let model = perplexity
                .model_of(&merged, "the merge")
                .map_err(|e| failed(&e))?;
            drop(merged);
            perplexity
                .score_until(&model, *fidelity, &job.cancel)
                .map_err(|e| failed(&e))
        }
    }
}

/// Rounds each merged tensor to the dtype the merge would write, so a cell scores what
/// `mergescope merge` of its recipe writes (a bfloat16 output loses bits an f32 preview has).
fn round_to_output(plan: &MergePlan, merged: &mut ModelTensors) {
    for task in &plan.tasks {
        let out = match task.action {
            TaskAction::Merge { out, .. } | TaskAction::Convert { out } => out,
            TaskAction::CopyIdentical => continue,
        };
        if out == FloatType::F32 {
            continue;
        }
        if let Some(values) = merged.values.get_mut(&task.name) {
            let encoded = TensorBytes::encode(std::mem::take(values), out);
            let mut decoded = vec![0f32; task.numel()];
            decode_into(out, encoded.as_bytes(), &mut decoded);
            *values = decoded;
        }
    }
}

/// Refuses an axis on a `models:` entry that is the method's base reached by another
/// spelling (`./base` for `base`): its parameters are never read.
fn check_base_entries(sweep: &Sweep, cwd: &std::path::Path) -> Result<(), SweepError> {
    use crate::merge::BaseUse;
    use crate::merge::methods::{self, Lookup};
    let recipe = sweep.recipe();
    let (Lookup::Found(method), Some(base)) = (
        methods::lookup(&recipe.merge_method),
        recipe.base_model.as_deref(),
    ) else {
        return Ok(());
    };
    if method.spec().base == BaseUse::Ignored {
        return Ok(());
    }
    let where_is = |model: &str| {
        resolve_model_path(model, "model", cwd, sweep.file())
            .ok()
            .and_then(|p| p.canonicalize().ok())
    };
    let Some(base) = where_is(base) else {
        return Ok(()); // planning names the missing base
    };
    for axis in sweep.axes() {
        if let Owner::Model(i) = axis.path.owner
            && where_is(&recipe.models[i].model).as_ref() == Some(&base)
        {
            return Err(SweepError::Param {
                file: sweep.file().to_path_buf(),
                path: axis.path.to_string(),
                key: axis.path.recipe_key(),
                message: format!(
                    "models[{i}] is the base model, and {} reads no parameters of it; sweep another model's",
                    recipe.merge_method
                ),
            });
        }
    }
    Ok(())
}

/// A folder under the temporary folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("mergescope-sweep-{}-{n}", std::process::id())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Cpu;
    use crate::sweep::Axis;

    /// A tiny Llama-shaped base and two fine-tunes (bf16, so the rounding path runs too).
    fn family() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let shape = crate::synth::LlamaShape {
            hidden: 16,
            intermediate: 32,
            layers: 2,
            vocab: 32,
            heads: 2,
            kv_heads: 1,
        };
        crate::synth::SynthFamily::new(shape, 2)
            .write(dir.path(), false, &Job::default())
            .unwrap();
        let recipe = dir.path().join("recipe.yml");
        std::fs::write(
            &recipe,
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.5, density: 0.5}\n  - model: ft_2\n    parameters: {weight: 0.5, density: 0.5}\ndtype: float32\n",
        )
        .unwrap();
        (dir, recipe)
    }

    #[test]
    fn each_cell_scores_as_its_recipe_planned_alone() {
        let (dir, file) = family();
        let text = std::fs::read_to_string(&file).unwrap();
        let axes = vec![
            Axis::parse("models.0.weight=0:1:3").unwrap(),
            Axis::parse("models.1.density=0.2,0.9").unwrap(),
        ];
        let sweep = Sweep::new(&text, &file, axes).unwrap();
        let options = PlanOptions {
            cwd: dir.path().to_path_buf(),
            random_seed: Some(0),
            truncate_vocab: false,
        };
        let job = Job::default();
        let mut seen = Vec::new();
        let cells = run(
            &sweep,
            &SweepObjective::Retention,
            &Cpu,
            &options,
            &job,
            &mut |c| seen.push(c.index.clone()),
        )
        .unwrap();
        assert_eq!(cells.len(), 6);
        assert_eq!(
            seen,
            (0..6).map(|n| sweep.cell_index(n)).collect::<Vec<_>>()
        );
        assert_eq!(job.progress.snapshot().done, 6);
        for cell in &cells {
            let recipe = Recipe::from_yaml(&cell.recipe, &file).unwrap();
            let plan = MergePlan::new(recipe, &file, &options).unwrap();
            let alone = Retention {
                plan: &plan,
                backend: &Cpu,
                job: &Job::default(),
            }
            .evaluate(&Candidate::default(), Fidelity::Full)
            .unwrap();
            assert_eq!(cell.scores, alone, "{:?}", cell.values);
        }
        // The weight moves the scores.
        assert_ne!(cells[0].scores, cells[4].scores);
    }

    #[test]
    fn a_cancel_stops_the_sweep() {
        let (dir, file) = family();
        let text = std::fs::read_to_string(&file).unwrap();
        let sweep = Sweep::new(
            &text,
            &file,
            vec![Axis::parse("models.0.weight=0:1:5").unwrap()],
        )
        .unwrap();
        let options = PlanOptions {
            cwd: dir.path().to_path_buf(),
            random_seed: Some(0),
            truncate_vocab: false,
        };
        let job = Job::default();
        let canceller = job.cancel.clone();
        let mut done = 0;
        let outcome = run(
            &sweep,
            &SweepObjective::Retention,
            &Cpu,
            &options,
            &job,
            &mut |_| {
                done += 1;
                if done == 2 {
                    canceller.cancel();
                }
            },
        );
        assert!(matches!(outcome, Err(SweepError::Cancelled)));
        assert_eq!(done, 2);
    }

    #[test]
    fn the_base_by_another_spelling_is_refused() {
        let (dir, file) = family();
        let text = "merge_method: ties\nbase_model: base\nmodels:\n  - model: base/../base\n  - model: ft_1\n  - model: ft_2\n";
        let sweep = Sweep::new(
            text,
            &file,
            vec![Axis::parse("models.0.weight=0,1").unwrap()],
        )
        .unwrap_or_else(|e| panic!("the spelling differs, so only the files tell: {e}"));
        let options = PlanOptions {
            cwd: dir.path().to_path_buf(),
            random_seed: Some(0),
            truncate_vocab: false,
        };
        let e = run(
            &sweep,
            &SweepObjective::Retention,
            &Cpu,
            &options,
            &Job::default(),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("base model"), "{e}");
    }
}
