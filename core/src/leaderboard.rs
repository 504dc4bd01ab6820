//! The method leaderboard: every merge method that can merge the built-in demo family's four
//! experts, SMILE's upscaling of them, and the test-time merges AdaMerging and WEMoE, at the
//! defaults and at the best setting of a small grid, scored by per-domain test accuracy
//! (`mergescope bench-methods`, and the workbench's Leaderboard panel).
//!
//! Every merge's row (AdaMerging's too) is a recipe, merged and scored exactly as
//! `mergescope eval RECIPE` merges and scores it ([`score_recipe`]), so a row's numbers are
//! those of its exported model; SMILE's and WEMoE's rows score the routed model exactly as
//! `mergescope eval` scores the folder `upscale-smile` or `wemoe` writes. The grid's
//! best setting is chosen on the training images and reported on the test images, so the
//! choice does not look at the numbers it reports.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::Job;
use crate::backend::Backend;
use crate::eval::ModelTensors;
use crate::eval::digits::Split;
use crate::eval::preview::merge_in_memory;
use crate::eval::vit::VitConfig;
use crate::eval::{DemoAccuracy, DemoFamily, Domain, EvalError, Fidelity, Scores};
use crate::merge::methods::IMPLEMENTED;
use crate::merge::plan::{MergePlan, PlanOptions};
use crate::merge::recipe::Recipe;
use crate::merge::{BaseUse, MethodSpec};
use crate::sweep::metric::best_cell;
use crate::sweep::{Axis, Sweep, SweepError, SweepObjective, run, score_recipe};
use crate::test_time::adamerging::Granularity;
use crate::test_time::{AdaptError, Unlabeled, open_family};

/// The metric a grid's best cell is chosen by.
const CHOSEN_BY: &str = "mean/accuracy";

/// Each method's grid: global parameters (every model's value where the parameter is per
/// model), as `mergescope sweep --param` takes them. Methods not listed run at their defaults
/// only. Small on purpose: the strength of the merge, and for sparsifying methods how much of
/// each task vector they keep.
const GRIDS: &[(&str, &[&str])] = &[
    ("task_arithmetic", &["lambda=0.1:1:10"]),
    ("ties", &["density=0.2,0.5,0.8", "lambda=0.5,1,1.5"]),
    ("dare_ties", &["density=0.2,0.5,0.8", "lambda=0.5,1,1.5"]),
    (
        "breadcrumbs_ties",
        &["density=0.2,0.5,0.8", "lambda=0.5,1,1.5"],
    ),
    ("della", &["density=0.2,0.5,0.8", "lambda=0.5,1,1.5"]),
    (
        "dare_linear",
        &["density=0.2,0.5,0.8", "lambda=0.1,0.3,0.5,1"],
    ),
    (
        "breadcrumbs",
        &["density=0.2,0.5,0.8", "lambda=0.1,0.3,0.5,1"],
    ),
    (
        "della_linear",
        &["density=0.2,0.5,0.8", "lambda=0.1,0.3,0.5,1"],
    ),
    ("sce", &["select_topk=0.1,0.3,0.5,1"]),
    ("tsv_m", &["alpha=0.2:2:10"]),
    ("iso_c", &["scaling_factor=0.2:2:10"]),
    (
        "iso_cts",
        &["common_space_fraction=0.5,0.8", "scaling_factor=0.2:2:10"],
    ),
];

/// Why the leaderboard could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderboardError {
    #[error("cannot write the demo family to {dir}: {source}")]
    Extract {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("{method}: {source}")]
    Method {
        method: String,
        #[source]
        source: Box<SweepError>,
    },
    #[error("`{0}` is not a merge method; see `mergescope merge --help` for the list")]
    UnknownMethod(String),
    #[error("the leaderboard was cancelled")]
    Cancelled,
}

/// What a row reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// The merge method, or `base` / `expert` for the reference rows.
    pub method: String,
    /// `defaults`, the grid's best cell (`density = 0.5, lambda = 1`), or the expert's domain.
    pub setting: String,
    /// Test accuracy on each domain (in [`Domain::ALL`] order), then their mean.
    pub accuracy: Vec<f64>,
    /// Mean accuracy on the training images, where a grid chose this setting.
    pub chosen_at: Option<f64>,
    /// Parameters of the merged model.
    pub parameters: usize,
    /// Planning and merging (or upscaling) in memory, seconds (0 for the reference rows).
    pub merge_seconds: f64,
    /// The recipe this row merged (models named `../base`, `../upright`, …, as the demo
    /// family's own recipes in its `recipes/` folder); empty for SMILE and WEMoE (routed
    /// models, not recipes: `mergescope upscale-smile` and `mergescope wemoe` make them) and
    /// for the reference rows.
    pub recipe: String,
}

impl Row {
    pub fn mean(&self) -> f64 {
        *self.accuracy.last().expect("a mean")
    }

    /// [`merge_seconds`](Self::merge_seconds) as the table shows it: `-` for the reference
    /// rows, milliseconds for merges, seconds for what trains.
    pub fn duration(&self) -> String {
        match self.merge_seconds {
            0.0 => "-".to_owned(),
            s if s < 1.0 => format!("{:.0} ms", 1e3 * s),
            s => format!("{s:.1} s"),
        }
    }
}

/// Every row, best mean accuracy first, and the methods that could not run on the family.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Leaderboard {
    /// The base and each expert alone: what a merge is measured against.
    pub references: Vec<Row>,
    pub rows: Vec<Row>,
    /// Method and why it was not run.
    pub not_run: Vec<(String, String)>,
}

/// Which methods to run and how.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Methods to run (all that apply when `None`), by recipe name or one of
    /// [`BEYOND_RECIPES`].
    pub methods: Option<Vec<String>>,
    /// Also search each method's grid.
    pub grid: bool,
    /// Seed of the random methods.
    pub random_seed: u64,
    /// Optimiser steps of the test-time merges (AdaMerging, WEMoE), where not their own
    /// defaults: fewer make a quicker, rougher table.
    pub steps: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            methods: None,
            grid: true,
            random_seed: 0,
            steps: None,
        }
    }
}

/// The recipe of `spec` at its defaults on the demo family (run from its `recipes/` folder),
/// or why it cannot merge the family.
pub fn default_recipe(spec: &MethodSpec) -> Result<String, String> {
    let experts = Domain::ALL.len();
    if spec.min_models > experts || spec.max_models.is_some_and(|max| max < experts) {
        let count = match spec.max_models {
            Some(max) if max == spec.min_models => format!("exactly {max}"),
            Some(max) => format!("{} to {max}", spec.min_models),
            None => format!("at least {}", spec.min_models),
        };
        return Err(format!(
            "merges {count} model(s); the demo family has {experts} experts"
        ));
    }
    if let Some(required) = spec
        .params
        .iter()
        .find(|p| p.default.is_none() && p.name != "weight")
    {
        return Err(format!("needs `{}`, which has no default", required.name));
    }
    let mut text = format!(
        "# {name} at its defaults on the demo family (mergescope bench-methods)\n\
         merge_method: {name}\n",
        name = spec.name
    );
    if spec.base != BaseUse::Ignored {
        text.push_str("base_model: ../base\n");
    }
    text.push_str("models:\n");
    for domain in Domain::ALL {
        text.push_str(&format!("  - model: ../{}\n", domain.name()));
    }
    // mergekit has no default weight; 1 for every expert is its examples' choice.
    if spec.params.iter().any(|p| p.name == "weight") {
        text.push_str("parameters:\n  weight: 1.0\n");
    }
    text.push_str("dtype: float32\n");
    Ok(text)
}

/// The grid of `method`, parsed.
pub fn grid(method: &str) -> Vec<Axis> {
    GRIDS
        .iter()
        .find(|(m, _)| *m == method)
        .map(|(_, axes)| {
            axes.iter()
                .map(|a| Axis::parse(a).expect("the built-in grids parse"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the leaderboard on the demo family written to `dir` (replaced), calling `on_row` as
/// each row is done. Progress counts methods; a cancel stops at the next cell.
pub fn run_leaderboard(
    dir: &Path,
    settings: &Settings,
    backend: &dyn Backend,
    job: &Job,
    on_row: &mut dyn FnMut(&Row),
) -> Result<Leaderboard, LeaderboardError> {
    let family = DemoFamily::extract(dir).map_err(|source| LeaderboardError::Extract {
        dir: dir.to_path_buf(),
        source,
    })?;
    let beyond: Vec<&str> = BEYOND_RECIPES
        .into_iter()
        .filter(|b| {
            settings
                .methods
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == b))
        })
        .collect();
    let methods: Vec<&'static MethodSpec> = match &settings.methods {
        None => IMPLEMENTED.iter().map(|m| m.spec()).collect(),
        Some(names) => names
            .iter()
            .filter(|name| !BEYOND_RECIPES.contains(&name.as_str()))
            .map(|name| {
                IMPLEMENTED
                    .iter()
                    .map(|m| m.spec())
                    .find(|s| s.name == name)
                    .ok_or_else(|| LeaderboardError::UnknownMethod(name.clone()))
            })
            .collect::<Result<_, _>>()?,
    };
    let train = SweepObjective::Demo {
        accuracy: DemoAccuracy::on(Split::Train)?,
        fidelity: Fidelity::Full,
    };
    let test = SweepObjective::Demo {
        accuracy: DemoAccuracy::new()?,
        fidelity: Fidelity::Full,
    };
    let recipes = family.root.join("recipes");
    let options = PlanOptions {
        cwd: recipes.clone(),
        random_seed: Some(settings.random_seed),
        truncate_vocab: false,
    };
    let mut board = Leaderboard {
        references: references(&family, &test)?,
        ..Leaderboard::default()
    };
    let inner = Job {
        progress: crate::Progress::default(),
        cancel: job.cancel.clone(),
        non_finite: job.non_finite.clone(),
    };
    job.progress
        .start_stage("method leaderboard", (methods.len() + beyond.len()) as u64);
    for spec in methods {
        job.check_cancelled()
            .map_err(|_| LeaderboardError::Cancelled)?;
        job.progress
            .set_stage(format!("method leaderboard: {}", spec.name));
        let text = match default_recipe(spec) {
            Ok(text) => text,
            Err(why) => {
                board.not_run.push((spec.name.to_owned(), why));
                job.progress.add_done(1);
                continue;
            }
        };
        let file = recipes.join(format!("leaderboard-{}.yml", spec.name));
        let failed = sweep_failed(spec.name);
        let row = |setting: String, recipe: String, chosen_at: Option<f64>| {
            let scores =
                score_recipe(&recipe, &file, &test, backend, &options, &inner).map_err(failed)?;
            let (parameters, merge_seconds) =
                merge_cost(&recipe, &file, backend, &options).map_err(failed)?;
            Ok::<_, LeaderboardError>(Row {
                method: spec.name.to_owned(),
                setting,
                accuracy: accuracy_of(&scores),
                chosen_at,
                parameters,
                merge_seconds,
                recipe,
            })
        };
        let defaults = row("defaults".to_owned(), text.clone(), None)?;
        on_row(&defaults);
        board.rows.push(defaults);
        let axes = grid(spec.name);
        if settings.grid && !axes.is_empty() {
            let sweep = Sweep::new(&text, &file, axes).map_err(failed)?;
            let cells =
                run(&sweep, &train, backend, &options, &inner, &mut |_| {}).map_err(failed)?;
            let best = best_cell(&cells, CHOSEN_BY).expect("a grid has cells");
            let cell = &cells[best];
            let best = row(
                sweep.describe(&cell.values),
                cell.recipe.clone(),
                cell.scores.get(CHOSEN_BY).copied(),
            )?;
            on_row(&best);
            board.rows.push(best);
        }
        job.progress.add_done(1);
    }
    let extra = Beyond {
        family: &family,
        grid: settings.grid,
        steps: settings.steps,
        train: &train,
        test: &test,
        job: &inner,
    };
    for name in beyond {
        job.check_cancelled()
            .map_err(|_| LeaderboardError::Cancelled)?;
        job.progress
            .set_stage(format!("method leaderboard: {name}"));
        let rows = match name {
            SMILE => extra.smile()?,
            ADAMERGING => {
                let file = recipes.join(format!("leaderboard-{ADAMERGING}.yml"));
                extra.adamerging(&file, backend, &options)?
            }
            _ => extra.wemoe()?,
        };
        for row in rows {
            on_row(&row);
            board.rows.push(row);
        }
        job.progress.add_done(1);
    }
    board.rows.sort_by(|a, b| b.mean().total_cmp(&a.mean()));
    Ok(board)
}

/// The name SMILE's rows go by, and that `--methods` selects them with.
pub const SMILE: &str = "smile";
/// AdaMerging's rows (`crate::test_time::adamerging`): recipes, as the merges' are.
pub const ADAMERGING: &str = "adamerging";
/// WEMoE's rows (`crate::test_time::wemoe`): routed models, as SMILE's are.
pub const WEMOE: &str = "wemoe";

/// The rows that are not one recipe method's: upscalings and test-time merges, in the order
/// they run.
pub const BEYOND_RECIPES: [&str; 3] = [SMILE, ADAMERGING, WEMOE];

/// SMILE's grid: expert rank × router rank, top-1 routing.
const SMILE_GRID: [(usize, usize); 9] = [
    (4, 2),
    (4, 4),
    (4, 8),
    (8, 2),
    (8, 4),
    (8, 8),
    (16, 2),
    (16, 4),
    (16, 8),
];

/// AdaMerging's grid: task- or layer-wise × Adam's learning rate.
const ADAMERGING_GRID: [(Granularity, f64); 4] = [
    (Granularity::Task, 1e-3),
    (Granularity::Task, 1e-2),
    (Granularity::Layer, 1e-3),
    (Granularity::Layer, 1e-2),
];

/// WEMoE's grid: share of the MLPs routed × Adam's learning rate.
const WEMOE_GRID: [(f64, f64); 4] = [(0.5, 1e-3), (0.5, 1e-2), (1.0, 1e-3), (1.0, 1e-2)];

/// How a built model is scored on a split.
type Scorer<'a> = Box<dyn Fn(&SweepObjective) -> Result<Scores, LeaderboardError> + 'a>;

/// A model a row scores: its size, what building it took, its recipe where it has one, and
/// how it is scored on a split.
struct Built<'a> {
    parameters: usize,
    seconds: f64,
    recipe: String,
    score: Scorer<'a>,
}

/// The rows of `method`: `defaults`, and the best of `cells` on the training images when
/// `grid` is set, each reported on the test images.
fn search_rows<'a, S>(
    method: &str,
    grid: bool,
    defaults: &S,
    cells: Vec<S>,
    describe: impl Fn(&S) -> String,
    objectives: (&SweepObjective, &SweepObjective),
    build: impl Fn(&S) -> Result<Built<'a>, LeaderboardError>,
) -> Result<Vec<Row>, LeaderboardError> {
    let (train, test) = objectives;
    let row = |built: &Built<'_>, setting: String, chosen_at: Option<f64>| {
        Ok::<_, LeaderboardError>(Row {
            method: method.to_owned(),
            setting,
            accuracy: accuracy_of(&(built.score)(test)?),
            chosen_at,
            parameters: built.parameters,
            merge_seconds: built.seconds,
            recipe: built.recipe.clone(),
        })
    };
    let mut rows = vec![row(
        &build(defaults)?,
        format!("defaults ({})", describe(defaults)),
        None,
    )?];
    if grid {
        let mut best: Option<(f64, S, Built<'_>)> = None;
        for cell in cells {
            let built = build(&cell)?;
            let mean = (built.score)(train)?[CHOSEN_BY];
            if best.as_ref().is_none_or(|(b, _, _)| mean > *b) {
                best = Some((mean, cell, built));
            }
        }
        let (mean, cell, built) = best.expect("a grid has cells");
        rows.push(row(&built, describe(&cell), Some(mean))?);
    }
    Ok(rows)
}

/// How `method`'s merging or scoring failed: cancelled, or why.
fn sweep_failed(method: &str) -> impl Fn(SweepError) -> LeaderboardError + Copy + '_ {
    move |source| match source {
        SweepError::Cancelled => LeaderboardError::Cancelled,
        source => LeaderboardError::Method {
            method: method.to_owned(),
            source: Box::new(source),
        },
    }
}

/// How a row beyond the recipes failed, with `message` saying why.
fn failed_in(method: &str) -> impl Fn(String) -> LeaderboardError + '_ {
    move |message| {
        sweep_failed(method)(SweepError::Evaluation {
            cell: method.to_owned(),
            message,
        })
    }
}

/// What the rows beyond the recipes share: the family, the splits, the job.
struct Beyond<'a> {
    family: &'a DemoFamily,
    grid: bool,
    steps: Option<usize>,
    train: &'a SweepObjective,
    test: &'a SweepObjective,
    job: &'a Job,
}

/// How a test-time merge's row failed: cancelled, or why.
fn adapt_failed(method: &str) -> impl Fn(AdaptError) -> LeaderboardError + '_ {
    move |e| match e {
        AdaptError::Cancelled => LeaderboardError::Cancelled,
        e => failed_in(method)(e.to_string()),
    }
}

impl Beyond<'_> {
    /// What the test-time merges adapt: the family as the demo ViT reads it, and the
    /// unlabeled test images.
    fn adaptable(
        &self,
        method: &str,
    ) -> Result<(ModelTensors, Vec<ModelTensors>, VitConfig, Unlabeled), LeaderboardError> {
        let (base, experts) = self.checkpoints()?;
        let config = demo_accuracy(self.test).config();
        let (base, experts) = open_family(&base, &experts, config).map_err(adapt_failed(method))?;
        let inputs = Unlabeled::demo_test().map_err(EvalError::from)?;
        Ok((base, experts, config, inputs))
    }

    fn checkpoints(&self) -> Result<(crate::Checkpoint, Vec<crate::Checkpoint>), EvalError> {
        let base = crate::Checkpoint::open(self.family.base())?;
        let experts = Domain::ALL
            .iter()
            .map(|d| crate::Checkpoint::open(self.family.expert(*d)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((base, experts))
    }

    /// SMILE's rows: the experts upscaled at the defaults, and at the grid's best setting.
    fn smile(&self) -> Result<Vec<Row>, LeaderboardError> {
        use crate::smile::{SmileSettings, upscale};
        let failed = failed_in(SMILE);
        let (base, experts) = self.checkpoints()?;
        let cells = SMILE_GRID
            .iter()
            .map(|&(rank, gate_k)| SmileSettings {
                rank,
                gate_k,
                ..SmileSettings::default()
            })
            .collect();
        let describe = |s: &SmileSettings| {
            format!(
                "rank = {}, gate_k = {}, top_k = {}",
                s.rank, s.gate_k, s.top_k
            )
        };
        search_rows(
            SMILE,
            self.grid,
            &SmileSettings::default(),
            cells,
            describe,
            (self.train, self.test),
            |settings| {
                let started = Instant::now();
                let upscaled =
                    upscale(&base, &experts, settings).map_err(|e| failed(e.to_string()))?;
                let seconds = started.elapsed().as_secs_f64();
                let weights = upscaled.weights().map_err(|e| failed(e.to_string()))?;
                Ok(Built {
                    parameters: upscaled.parameters().0,
                    seconds,
                    recipe: String::new(),
                    score: Box::new(move |on| {
                        Ok(demo_accuracy(on).score_weights(&weights, Fidelity::Full)?)
                    }),
                })
            },
        )
    }

    /// AdaMerging's rows: recipes, merged and scored as the merges' are.
    fn adamerging(
        &self,
        file: &Path,
        backend: &dyn Backend,
        options: &PlanOptions,
    ) -> Result<Vec<Row>, LeaderboardError> {
        use crate::test_time::adamerging::{AdaMergingSettings, adamerge};
        let (base, experts, config, inputs) = self.adaptable(ADAMERGING)?;
        let names: Vec<String> = Domain::ALL
            .iter()
            .map(|d| format!("../{}", d.name()))
            .collect();
        let mut defaults = AdaMergingSettings::default();
        defaults.adaptation.steps = self.steps.unwrap_or(defaults.adaptation.steps);
        let cells = ADAMERGING_GRID
            .iter()
            .map(|&(granularity, lr)| {
                let mut s = defaults;
                s.granularity = granularity;
                s.adaptation.lr = lr;
                s
            })
            .collect();
        let describe = |s: &AdaMergingSettings| {
            format!(
                "{}, lr = {}, {} steps",
                s.granularity.label(),
                s.adaptation.lr,
                s.adaptation.steps
            )
        };
        search_rows(
            ADAMERGING,
            self.grid,
            &defaults,
            cells,
            describe,
            (self.train, self.test),
            |settings| {
                let learned = adamerge(&base, &experts, config, &inputs, settings, self.job)
                    .map_err(adapt_failed(ADAMERGING))?;
                let recipe = learned.recipe("../base", &names);
                let (parameters, merging) = merge_cost(&recipe, file, backend, options)
                    .map_err(sweep_failed(ADAMERGING))?;
                let text = recipe.clone();
                Ok(Built {
                    parameters,
                    seconds: learned.seconds + merging,
                    recipe,
                    score: Box::new(move |on| {
                        score_recipe(&text, file, on, backend, options, self.job)
                            .map_err(sweep_failed(ADAMERGING))
                    }),
                })
            },
        )
    }

    /// WEMoE's rows: routed models trained on the unlabeled test images.
    fn wemoe(&self) -> Result<Vec<Row>, LeaderboardError> {
        use crate::test_time::wemoe::{WemoeSettings, upscale};
        let (base, experts, config, inputs) = self.adaptable(WEMOE)?;
        let mut defaults = WemoeSettings::default();
        defaults.adaptation.steps = self.steps.unwrap_or(defaults.adaptation.steps);
        let cells = WEMOE_GRID
            .iter()
            .map(|&(critical, lr)| {
                let mut s = defaults;
                s.critical = critical;
                s.adaptation.lr = lr;
                s
            })
            .collect();
        let describe = |s: &WemoeSettings| {
            format!(
                "{:.0} % of MLPs routed, λ = {}, lr = {}, {} steps",
                100.0 * s.critical,
                s.init_lambda,
                s.adaptation.lr,
                s.adaptation.steps
            )
        };
        search_rows(
            WEMOE,
            self.grid,
            &defaults,
            cells,
            describe,
            (self.train, self.test),
            |settings| {
                let moe = upscale(&base, &experts, config, &inputs, settings, self.job)
                    .map_err(adapt_failed(WEMOE))?;
                let weights = moe.weights().map_err(|e| failed_in(WEMOE)(e.to_string()))?;
                Ok(Built {
                    parameters: moe.parameters().0,
                    seconds: moe.seconds,
                    recipe: String::new(),
                    score: Box::new(move |on| {
                        Ok(demo_accuracy(on).score_weights(&weights, Fidelity::Full)?)
                    }),
                })
            },
        )
    }
}

/// The demo accuracy an objective of the leaderboard's scores with.
fn demo_accuracy(objective: &SweepObjective) -> &DemoAccuracy {
    match objective {
        SweepObjective::Demo { accuracy, .. } => accuracy,
        _ => unreachable!("the leaderboard scores on the demo family"),
    }
}

/// The base and each expert alone, on the test images.
fn references(family: &DemoFamily, test: &SweepObjective) -> Result<Vec<Row>, EvalError> {
    let accuracy = demo_accuracy(test);
    let parameters = crate::Checkpoint::open(family.base())?
        .tensors()
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let mut rows = vec![("base".to_owned(), "-".to_owned(), family.base())];
    rows.extend(
        Domain::ALL
            .iter()
            .map(|d| ("expert".to_owned(), d.name().to_owned(), family.expert(*d))),
    );
    rows.into_iter()
        .map(|(method, setting, folder)| {
            Ok(Row {
                method,
                setting,
                accuracy: accuracy.accuracy_row(&folder)?,
                chosen_at: None,
                parameters,
                merge_seconds: 0.0,
                recipe: String::new(),
            })
        })
        .collect()
}

fn accuracy_of(scores: &Scores) -> Vec<f64> {
    Domain::ALL
        .iter()
        .map(|d| scores[&format!("{}/accuracy", d.name())])
        .chain(std::iter::once(scores["mean/accuracy"]))
        .collect()
}

/// The merged model's parameter count, and the seconds planning and merging it in memory take.
fn merge_cost(
    text: &str,
    file: &Path,
    backend: &dyn Backend,
    options: &PlanOptions,
) -> Result<(usize, f64), SweepError> {
    let started = Instant::now();
    let recipe = Recipe::from_yaml(text, file)?;
    let plan_failed = |source: crate::merge::plan::PlanError| SweepError::Plan {
        cell: file.display().to_string(),
        source: Box::new(source),
    };
    let plan = MergePlan::new(recipe, file, options).map_err(plan_failed)?;
    let merged = merge_in_memory(&plan, backend).map_err(|message| SweepError::Evaluation {
        cell: file.display().to_string(),
        message,
    })?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((merged.values.values().map(Vec::len).sum(), seconds))
}

impl Leaderboard {
    /// The table as Markdown: the merges, best mean first, then the reference rows.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| rank | method | setting |");
        for domain in Domain::ALL {
            out.push_str(&format!(" {} |", domain.name()));
        }
        out.push_str(" mean | parameters | merge |\n|---|---|---|");
        out.push_str(&"---|".repeat(Domain::ALL.len() + 3));
        out.push('\n');
        let line = |rank: String, row: &Row| {
            let mut line = format!("| {rank} | `{}` | {} |", row.method, row.setting);
            for a in &row.accuracy {
                line.push_str(&format!(" {:.1} |", 100.0 * a));
            }
            line.push_str(&format!(" {} | {} |\n", row.parameters, row.duration()));
            line
        };
        for (i, row) in self.rows.iter().enumerate() {
            out.push_str(&line((i + 1).to_string(), row));
        }
        for row in &self.references {
            out.push_str(&line("-".to_owned(), row));
        }
        if !self.not_run.is_empty() {
            out.push_str("\nNot run: ");
            let reasons: Vec<String> = self
                .not_run
                .iter()
                .map(|(m, why)| format!("`{m}` ({why})"))
                .collect();
            out.push_str(&reasons.join("; "));
            out.push_str(".\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::methods::{Lookup, lookup};

    fn spec(name: &str) -> &'static MethodSpec {
        match lookup(name) {
            Lookup::Found(m) => m.spec(),
            Lookup::Unknown => panic!("{name}"),
        }
    }

    #[test]
    fn every_grid_names_a_method_and_parameters_it_reads() {
        for (method, axes) in GRIDS {
            let spec = spec(method);
            for axis in grid(method) {
                assert!(
                    spec.params.iter().any(|p| p.name == axis.path.name),
                    "{method} does not read {}",
                    axis.path.name
                );
            }
            assert_eq!(grid(method).len(), axes.len());
        }
    }

    #[test]
    fn methods_that_cannot_merge_four_experts_say_why() {
        let why = default_recipe(spec("slerp")).unwrap_err();
        assert!(
            why.contains("exactly 1") && why.contains("4 experts"),
            "{why}"
        );
        let why = default_recipe(spec("nuslerp")).unwrap_err();
        assert!(why.contains("exactly 2"), "{why}");
        let text = default_recipe(spec("linear")).unwrap();
        assert!(
            !text.contains("base_model"),
            "linear averages the experts: {text}"
        );
        let text = default_recipe(spec("tsv_m")).unwrap();
        assert!(text.contains("base_model: ../base") && text.contains("weight: 1.0"));
        Recipe::from_yaml(&text, Path::new("recipes/x.yml")).unwrap();
    }
}
