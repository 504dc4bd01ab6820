//! `mergescope eval MODEL_OR_RECIPE [--objective demo|retention|cmd:"…"]`: scores a model
//! folder, or the merge a recipe describes (merged into a temporary folder, then removed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::{
    Candidate, DemoAccuracy, ExternalCommand, Fidelity, Objective, Retention,
};
use mergescope_core::export::ExportOptions;
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};

use super::progress::run_with_progress;
use super::{Failure, path_arg, print_out};

/// What to measure.
#[derive(Clone, Debug)]
pub enum ObjectiveArg {
    /// The demo family's per-domain test accuracy and loss.
    Demo,
    /// Data-free: how much of each task vector a recipe's merge keeps (recipes only).
    Retention,
    /// The user's command, run on the model folder, printing a JSON object of numbers.
    Command(String),
}

pub(super) fn parse_objective(s: &str) -> Result<ObjectiveArg, String> {
    match s {
        "demo" => Ok(ObjectiveArg::Demo),
        "retention" => Ok(ObjectiveArg::Retention),
        _ => match s.strip_prefix("cmd:") {
            Some(command) if !command.trim().is_empty() => {
                Ok(ObjectiveArg::Command(command.to_owned()))
            }
            _ => Err(format!(
                "unknown objective `{s}`; use demo, retention, or cmd:\"COMMAND\""
            )),
        },
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model (file, index or folder) or a mergekit recipe (.yml/.yaml) to merge and score.
    #[arg(value_parser = path_arg)]
    target: PathBuf,
    /// `demo`, `retention` (recipes), or `cmd:"COMMAND"` (gets the model folder's path as
    /// its last argument, or where `{model}` stands; prints {"metric": value, …}).
    #[arg(long, default_value = "demo", value_parser = parse_objective)]
    objective: ObjectiveArg,
    /// Score only the first N test samples of each domain (the demo objective's quick estimate).
    #[arg(long, value_parser = super::count_in::<1, 1_000_000>)]
    subsample: Option<usize>,
    /// Stop the objective command after this many seconds.
    #[arg(long, default_value_t = 600, value_parser = super::seconds_in::<1, 604_800>)]
    timeout: u64,
    /// Seed of the random methods when merging a recipe.
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn is_recipe(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let started = Instant::now();
    let plan = is_recipe(&args.target)
        .then(|| {
            MergePlan::from_file(
                &args.target,
                &PlanOptions {
                    cwd: std::env::current_dir()?,
                    random_seed: Some(args.random_seed),
                    truncate_vocab: false,
                },
            )
            .map_err(Failure::from)
        })
        .transpose()?;
    if matches!(args.objective, ObjectiveArg::Retention) && plan.is_none() {
        return Err(anyhow::anyhow!(
            "the retention objective scores a recipe's merge; pass a .yml recipe"
        )
        .into());
    }
    let objective: Box<dyn Objective + '_> = match (&args.objective, &plan) {
        (ObjectiveArg::Demo, _) => Box::new(DemoAccuracy::new()?),
        (ObjectiveArg::Command(command), _) => Box::new(ExternalCommand {
            command: command.clone(),
            timeout: Duration::from_secs(args.timeout),
        }),
        (ObjectiveArg::Retention, Some(plan)) => Box::new(Retention {
            plan,
            backend: &Cpu,
            job,
        }),
        (ObjectiveArg::Retention, None) => unreachable!("refused above"),
    };
    // A recipe is merged into a scratch folder first (retention needs no files); a model is
    // scored where it is.
    let scratch = match &plan {
        Some(plan) if !matches!(args.objective, ObjectiveArg::Retention) => {
            let dir = std::env::temp_dir().join(format!(
                "mergescope-eval-{}-{}",
                std::process::id(),
                started.elapsed().as_nanos()
            ));
            let scratch = Scratch(dir.clone());
            let mut options = ExportOptions::new(dir);
            options.force = true;
            run_with_progress(job, || execute(plan, &options, &Cpu, job))?;
            Some(scratch)
        }
        _ => None,
    };
    let folder = match (&scratch, &plan) {
        (Some(s), _) => Some(s.0.as_path()),
        (None, None) => Some(args.target.as_path()),
        (None, Some(_)) => None,
    };
    let fidelity = args.subsample.map_or(Fidelity::Full, Fidelity::Subsample);
    let timed = Instant::now();
    let scores = run_with_progress(job, || {
        objective.evaluate(
            &Candidate {
                folder,
                tensors: None,
            },
            fidelity,
        )
    })?;
    eprintln!(
        "{}: evaluated in {:.1} ms{}",
        objective.name(),
        timed.elapsed().as_secs_f64() * 1e3,
        if args.subsample.is_some() {
            " (subsample)"
        } else {
            ""
        }
    );
    if args.json {
        let mut text = serde_json::to_string_pretty(&scores)?;
        text.push('\n');
        return print_out(&text);
    }
    let mut text = String::new();
    for (metric, value) in &scores {
        let _ = writeln!(text, "{metric:<32} {value:.4}");
    }
    print_out(&text)
}
