//! `mergescope pareto RECIPE.yml --objective …`: the front of merges over the recipe's
//! per-model weights (PARETO.md), printed as a table with its hypervolume, and optionally a
//! learned preference → coefficients map; `mergescope pareto --map MAP.json --preference …`
//! turns a preference into a recipe.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mergescope_core::Job;
use mergescope_core::eval::{DemoAccuracy, ExternalCommand, Fidelity};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::merge::recipe::Recipe;
use mergescope_core::pareto::report::{Report, Validation, held_out_preferences, validate};
use mergescope_core::pareto::router::train_demo_router;
use mergescope_core::pareto::{
    DecisionSpace, Direction, MergeEvaluator, ObjectiveKind, Outcome, PreferenceMap,
    RouterSettings, SearchEvent, SearchSettings, search,
};

use super::eval::ObjectiveArg;
use super::{Failure, path_arg, print_out};

/// Which preference map to learn after the search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Learn {
    /// Data-free: the router fitted to the search's surrogates.
    Surrogate,
    /// The demo family's labelled training images (PWEMoE); task arithmetic on the demo only.
    DemoRouter,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mergekit recipe whose models' weights are searched (its method and other
    /// parameters are held fixed).
    #[arg(value_parser = path_arg, required_unless_present = "preference")]
    recipe: Option<PathBuf>,
    /// `demo` (the four domains' test accuracies), `retention` (data-free, one per model),
    /// `cmd:"COMMAND"` (run on each merge's folder; prints {"metric": value, …}), or
    /// `ppl:DIR` (a language model's mean token negative log-likelihood on each .txt or
    /// .jsonl of DIR, one objective per domain, `DOMAIN/nll`, minimised: the log of its
    /// perplexity, the same front, a better fit for the surrogate).
    #[arg(long, default_value = "demo", value_parser = super::eval::parse_objective)]
    objective: ObjectiveArg,
    /// Metrics of a `cmd:` objective where higher is better (comma-separated).
    #[arg(long, value_delimiter = ',')]
    maximize: Vec<String>,
    /// Metrics of a `cmd:` objective where lower is better (comma-separated).
    #[arg(long, value_delimiter = ',')]
    minimize: Vec<String>,
    /// Real evaluations in all, the input models' included.
    #[arg(long, default_value_t = 60)]
    budget: usize,
    /// Surrogate rounds after the initial design, at most (a round that adds under 1 % of
    /// hypervolume ends the search earlier).
    #[arg(long, default_value_t = SearchSettings::default().max_rounds)]
    rounds: usize,
    /// One coefficient per model and layer group: K control points of a mergekit gradient.
    #[arg(long, default_value_t = 1)]
    layer_groups: usize,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = super::coefficient)]
    lambda_min: f64,
    #[arg(long, default_value_t = 1.2, allow_negative_numbers = true, value_parser = super::coefficient)]
    lambda_max: f64,
    /// Learn a preference → coefficients map after the search and validate it on 20 held-out
    /// preferences with real merges.
    #[arg(long, value_enum)]
    learn: Option<Learn>,
    /// Steps of the router's training.
    #[arg(long, default_value_t = 2000)]
    router_steps: usize,
    /// Write the search as JSON.
    #[arg(long, value_parser = path_arg)]
    json: Option<PathBuf>,
    /// After a search: write the learned map here (with --learn; the data-free one without).
    /// With --preference: the saved map to read instead of searching.
    #[arg(long, value_parser = path_arg, alias = "from-map")]
    map: Option<PathBuf>,
    /// A preference over the objectives (comma-separated, normalised to sum to 1): print the
    /// coefficients the map given with --map gives it, without a search.
    #[arg(
        long,
        value_delimiter = ',',
        allow_negative_numbers = true,
        requires = "map",
        conflicts_with = "recipe"
    )]
    preference: Vec<f64>,
    /// Write the preference's merge as a mergekit recipe.
    #[arg(long, value_parser = path_arg)]
    recipe_out: Option<PathBuf>,
    /// Score only the first N test images (demo) or tokens (perplexity) of each domain.
    #[arg(long, value_parser = super::count_in::<1, 1_000_000>)]
    subsample: Option<usize>,
    /// Stop an objective command after this many seconds.
    #[arg(long, default_value_t = 600, value_parser = super::seconds_in::<1, 604_800>)]
    timeout: u64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t)]
    backend: super::backend::BackendArg,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    if !args.preference.is_empty() {
        let map = args
            .map
            .as_ref()
            .expect("clap requires --map with --preference");
        return from_map(args, map);
    }
    let recipe_file = args
        .recipe
        .as_ref()
        .expect("clap requires a recipe without --preference");
    let cwd = std::env::current_dir()?;
    let template = mergescope_core::pareto::space::with_absolute_paths(
        &Recipe::from_file(recipe_file)?,
        recipe_file,
        &cwd,
    )?;
    let space = DecisionSpace::new(
        template,
        args.layer_groups,
        (args.lambda_min, args.lambda_max),
    )?;
    let settings = SearchSettings {
        budget: args.budget,
        max_rounds: args.rounds,
        seed: args.seed,
        ..SearchSettings::default()
    };
    settings.check(&space)?;
    let objective = match &args.objective {
        ObjectiveArg::Perplexity(dir) => {
            let plan = MergePlan::from_file(
                recipe_file,
                &PlanOptions {
                    cwd: cwd.clone(),
                    random_seed: Some(args.seed),
                    truncate_vocab: false,
                },
            )?;
            ObjectiveKind::Perplexity {
                perplexity: Arc::new(super::eval::perplexity(dir, recipe_file, Some(&plan))?),
                fidelity: args.subsample.map_or(Fidelity::Full, Fidelity::Subsample),
            }
        }
        ObjectiveArg::Demo => ObjectiveKind::Demo {
            accuracy: DemoAccuracy::new()?,
            fidelity: args.subsample.map_or(Fidelity::Full, Fidelity::Subsample),
        },
        ObjectiveArg::Retention => ObjectiveKind::Retention,
        ObjectiveArg::Command(command) => {
            let directions = mergescope_core::pareto::objective::directions_from_lists(
                args.maximize.iter().map(String::as_str),
                args.minimize.iter().map(String::as_str),
            )?;
            ObjectiveKind::Command {
                command: ExternalCommand {
                    command: command.clone(),
                    timeout: Duration::from_secs(args.timeout),
                },
                directions,
            }
        }
    };
    let directions_given = !(args.maximize.is_empty() && args.minimize.is_empty());
    if directions_given && !matches!(args.objective, ObjectiveArg::Command(_)) {
        return Err(anyhow::anyhow!(
            "--maximize and --minimize name the metrics of a cmd: objective; the {} objective knows its directions",
            match args.objective {
                ObjectiveArg::Demo => "demo",
                ObjectiveArg::Perplexity(_) => "perplexity",
                _ => "retention",
            }
        )
        .into());
    }
    let backend = super::backend::open(args.backend)?;
    let evaluator = MergeEvaluator {
        recipe_file: recipe_file.clone(),
        cwd,
        backend: Arc::clone(&backend),
        objective,
        random_seed: args.seed,
    };
    let started = Instant::now();
    let mut first_front = None;
    let outcome = search(
        &space,
        &evaluator,
        &settings,
        job,
        &mut |event| match event {
            SearchEvent::Round(round) => {
                if first_front.is_none() {
                    first_front = Some(started.elapsed());
                }
                eprintln!(
                    "round {}: {} evaluations, normalised hypervolume {:.4} ({:.1} s)",
                    round.round,
                    round.evaluations,
                    round.hypervolume_normalised,
                    started.elapsed().as_secs_f64()
                );
            }
            SearchEvent::Objectives { objectives, .. } => eprintln!(
                "objectives: {}",
                objectives
                    .iter()
                    .map(|o| format!(
                        "{} ({})",
                        o.name,
                        if o.direction == Direction::Max {
                            "max"
                        } else {
                            "min"
                        }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            SearchEvent::Point(_) => {}
        },
    )?;
    let searched = started.elapsed();

    let mut validation = Vec::new();
    let mut map = None;
    if args.learn.is_some() || args.map.is_some() {
        let router = RouterSettings {
            steps: args.router_steps,
            seed: args.seed,
            ..RouterSettings::default()
        };
        let timed = Instant::now();
        let learned = match args.learn.unwrap_or(Learn::Surrogate) {
            Learn::Surrogate => PreferenceMap::fit_on_surrogates(&outcome, &router, job)?,
            // PWEMoE's initialisation: starting from the data-free map measured worse
            // (`cargo bench --bench pareto`), the weighted cross-entropy pulling it elsewhere.
            Learn::DemoRouter => {
                train_demo_router(&outcome, recipe_file, &evaluator.cwd, &router, job)?
            }
        };
        eprintln!("map: learned in {:.1} s", timed.elapsed().as_secs_f64());
        if args.learn.is_some() {
            let preferences = held_out_preferences(outcome.objectives.len());
            let checked = validate(
                &learned,
                &outcome,
                &evaluator,
                &preferences,
                &outcome.points,
                job,
                &mut |_| {},
            )?;
            validation.push(checked);
        }
        map = Some(learned);
    }
    if let (Some(path), Some(map)) = (&args.map, &map) {
        map.save(path)?;
        eprintln!("wrote the map to {}", path.display());
    }
    let report = Report::new(&outcome, validation);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        mergescope_core::export::write_atomically(path, format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let mut text = table(&outcome, &report);
    let _ = writeln!(
        text,
        "first front after {:.1} s, search {:.1} s",
        first_front.unwrap_or(searched).as_secs_f64(),
        searched.as_secs_f64()
    );
    print_out(&text)
}

/// Scores as the table shows them: percent for accuracies.
fn shown(outcome: &Outcome, j: usize, value: f64) -> String {
    outcome.objectives[j].display(value)
}

fn table(outcome: &Outcome, report: &Report) -> String {
    let mut text = String::new();
    let names = outcome.space.coefficient_names();
    let labels = mergescope_core::pareto::report::short_names(
        &outcome
            .objectives
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
    );
    let _ = write!(text, "{:<10}", "point");
    for n in &names {
        let _ = write!(text, " {:>10}", truncate(n, 10));
    }
    text.push_str(" |");
    for label in &labels {
        let _ = write!(text, " {:>9}", truncate(label, 9));
    }
    let _ = writeln!(text, " {:>8}", "contrib");
    let row = |text: &mut String,
               label: &str,
               coefficients: &[f64],
               scores: &[f64],
               contribution: Option<f64>| {
        let _ = write!(text, "{label:<10}");
        for c in coefficients {
            let _ = write!(text, " {c:>10.3}");
        }
        text.push_str(" |");
        for (j, s) in scores.iter().enumerate() {
            let _ = write!(text, " {:>9}", shown(outcome, j, *s));
        }
        match contribution {
            Some(c) => {
                let _ = writeln!(text, " {c:>8.4}");
            }
            None => text.push('\n'),
        }
    };
    for p in &outcome.inputs {
        let label = match &p.source {
            mergescope_core::pareto::Source::Input(l) => l.clone(),
            other => other.describe(),
        };
        row(
            &mut text,
            &truncate(&label, 10),
            &p.coefficients,
            &p.scores,
            None,
        );
    }
    let front: Vec<usize> = report
        .points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.front)
        .map(|(i, _)| i)
        .collect();
    let _ = writeln!(
        text,
        "front: {} of {} evaluated points (sorted by their share of the hypervolume)",
        front.len(),
        outcome.points.len()
    );
    let mut ordered = front;
    ordered.sort_by(|a, b| {
        report.points[*b]
            .contribution
            .total_cmp(&report.points[*a].contribution)
    });
    for i in ordered {
        let p = &outcome.points[i];
        row(
            &mut text,
            &format!("#{i}"),
            &p.coefficients,
            &p.scores,
            Some(report.points[i].contribution),
        );
    }
    let _ = writeln!(
        text,
        "hypervolume {:.6} (normalised {:.4}) from reference [{}] to ideal [{}]; {} real evaluations",
        report.hypervolume,
        report.hypervolume_normalised,
        report
            .reference
            .iter()
            .enumerate()
            .map(|(j, v)| shown(outcome, j, *v))
            .collect::<Vec<_>>()
            .join(", "),
        report
            .ideal
            .iter()
            .enumerate()
            .map(|(j, v)| shown(outcome, j, *v))
            .collect::<Vec<_>>()
            .join(", "),
        report.evaluations
    );
    let _ = writeln!(
        text,
        "surrogate fit (leave-one-out): {}",
        report
            .surrogate
            .iter()
            .zip(&labels)
            .map(|(f, label)| format!("{label} R² {:.3} RMSE {:.4}", f.loo_r2, f.loo_rmse))
            .collect::<Vec<_>>()
            .join("; ")
    );
    for v in &report.validation {
        let _ = writeln!(text, "{}", describe_validation(v));
    }
    text
}

fn describe_validation(v: &Validation) -> String {
    format!(
        "map ({}): {} held-out preferences, Tchebycheff regret mean {:.4} max {:.4} against the search's points, their hypervolume {:.4}",
        match v.kind {
            mergescope_core::pareto::MapKind::Surrogate => "surrogate",
            mergescope_core::pareto::MapKind::DemoRouter => "demo router",
        },
        v.entries.len(),
        v.mean_regret,
        v.max_regret,
        v.hypervolume_normalised
    )
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n).collect()
    }
}

/// `--map MAP --preference w [--recipe-out R]`.
fn from_map(args: &Args, path: &Path) -> Result<(), Failure> {
    let map = PreferenceMap::load(path)?;
    let m = map.objectives.len();
    if args.preference.len() != m || args.preference.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(anyhow::anyhow!(
            "--preference needs {m} non-negative numbers, one per objective ({}); got {:?}",
            map.objectives
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            args.preference
        )
        .into());
    }
    let timed = Instant::now();
    let coefficients = map.coefficients(&args.preference);
    let micros = timed.elapsed().as_secs_f64() * 1e6;
    let recipe = map.space.recipe(&coefficients);
    let mut text = String::new();
    for (name, c) in map.space.coefficient_names().iter().zip(&coefficients) {
        let _ = writeln!(text, "{name:<24} {c:.4}");
    }
    let _ = writeln!(text, "(from the map in {micros:.0} µs)");
    if let Some(out) = &args.recipe_out {
        let yaml = format!(
            "# mergescope pareto: preference {:?} over {}\n{}",
            mergescope_core::pareto::simplex::project(&args.preference),
            map.objectives
                .iter()
                .map(|o| o.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            recipe.to_yaml()
        );
        mergescope_core::export::write_atomically(out, yaml.as_bytes())
            .with_context(|| format!("cannot write {}", out.display()))?;
        let _ = writeln!(text, "wrote {}", out.display());
    }
    print_out(&text)
}
