//! `mergescope eval MODEL_OR_RECIPE [--objective demo|retention|cmd:"…"]`: scores a model
//! folder, or the merge a recipe describes (merged into a temporary folder, then removed).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::compare::{
    Comparison, InputScores, format_delta, format_value, retention_inputs, score_inputs,
};
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
    /// A language model's perplexity on each `.txt` or `.jsonl` of a folder (one domain each).
    Perplexity(PathBuf),
}

pub(super) fn parse_objective(s: &str) -> Result<ObjectiveArg, String> {
    match s {
        "demo" => Ok(ObjectiveArg::Demo),
        "retention" => Ok(ObjectiveArg::Retention),
        _ => match (s.strip_prefix("cmd:"), s.strip_prefix("ppl:")) {
            (Some(command), _) if !command.trim().is_empty() => {
                Ok(ObjectiveArg::Command(command.to_owned()))
            }
            (_, Some(dir)) if !dir.trim().is_empty() => {
                Ok(ObjectiveArg::Perplexity(PathBuf::from(dir)))
            }
            _ => Err(format!(
                "unknown objective `{s}`; use demo, retention, cmd:\"COMMAND\" or ppl:DIR"
            )),
        },
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A model (file, index or folder) or a mergekit recipe (.yml/.yaml) to merge and score.
    #[arg(value_parser = path_arg)]
    target: PathBuf,
    /// `demo`, `retention` (recipes), `cmd:"COMMAND"` (gets the model folder's path as its
    /// last argument, or where `{model}` stands; prints {"metric": value, …}), or `ppl:DIR`
    /// (a Llama/Mistral model's perplexity on each .txt or .jsonl of DIR, one domain each,
    /// tokenized with the model's tokenizer.json).
    #[arg(long, default_value = "demo", value_parser = parse_objective)]
    objective: ObjectiveArg,
    /// Score only the first N test samples of each domain (the demo objective's quick
    /// estimate), or the first N tokens of each domain (perplexity).
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
    /// Score the recipe's base and each of its models on the same objective too, and show the
    /// merge's delta to the base and to the best single model per metric.
    #[arg(long)]
    compare: bool,
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
    let options = PlanOptions {
        cwd: std::env::current_dir()?,
        random_seed: Some(args.random_seed),
        truncate_vocab: false,
    };
    let plan = is_recipe(&args.target)
        .then(|| MergePlan::from_file(&args.target, &options).map_err(Failure::from))
        .transpose()?;
    if args.compare && plan.is_none() {
        return Err(anyhow::anyhow!(
            "--compare compares a recipe's merge with its base and models; pass a .yml recipe"
        )
        .into());
    }
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
        (ObjectiveArg::Perplexity(dir), _) => {
            Box::new(perplexity(dir, &args.target, plan.as_ref())?)
        }
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
    let inputs = match (&plan, args.compare) {
        (Some(plan), true) => Some(run_with_progress(job, || {
            input_scores(
                plan,
                &options,
                objective.as_ref(),
                &args.objective,
                fidelity,
                job,
            )
        })?),
        _ => None,
    };
    let Some(inputs) = inputs else {
        if args.json {
            let mut text = serde_json::to_string_pretty(&scores)?;
            text.push('\n');
            return print_out(&text);
        }
        let mut text = String::new();
        for (metric, value) in &scores {
            let _ = writeln!(text, "{metric:<32} {:>10}", format_value(metric, *value));
        }
        return print_out(&text);
    };
    let comparison = Comparison::new(&scores, &inputs);
    if args.json {
        let mut text = serde_json::to_string_pretty(&serde_json::json!({
            "objective": objective.name(),
            "merge": scores,
            "inputs": inputs,
            "comparison": comparison,
        }))?;
        text.push('\n');
        return print_out(&text);
    }
    print_out(&comparison_table(&comparison))
}

/// The base's and each model's scores on `objective`: each scored as it is on disk, or for
/// retention, each model's task vector alone measured like a merge.
fn input_scores(
    plan: &MergePlan,
    options: &PlanOptions,
    objective: &dyn Objective,
    kind: &ObjectiveArg,
    fidelity: Fidelity,
    job: &Job,
) -> anyhow::Result<InputScores> {
    if matches!(kind, ObjectiveArg::Retention) {
        return Ok(retention_inputs(plan, options, &Cpu, job, None)?);
    }
    score_inputs(plan, |checkpoint| {
        // Between models: Ctrl-C ends the comparison as it ends a merge.
        job.check_cancelled()?;
        Ok(objective.evaluate(
            &Candidate {
                folder: Some(checkpoint.source()),
                tensors: None,
            },
            fidelity,
        )?)
    })
}

/// The perplexity objective on the texts in `dir`, with the configuration and tokenizer of
/// the model `target` (a folder) or of the recipe's reference model and tokenizer source (the
/// rule is core's, shared with the workbench).
pub(super) fn perplexity(
    dir: &Path,
    target: &Path,
    plan: Option<&MergePlan>,
) -> anyhow::Result<mergescope_core::eval::lm::perplexity::Perplexity> {
    use mergescope_core::eval::lm::LmFiles;
    use mergescope_core::eval::lm::perplexity::Perplexity;
    if let Some(plan) = plan {
        return Ok(Perplexity::for_plan(dir, plan)?);
    }
    let checkpoint = mergescope_core::Checkpoint::open(target)?;
    let folder = checkpoint.folder().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: perplexity needs the model's config.json, and there is no model folder",
            target.display()
        )
    })?;
    Ok(Perplexity::for_family(
        dir,
        &LmFiles::in_folders(folder, folder)?,
    )?)
}

/// A model's label as a column title: its file or folder name, as the workbench names it.
fn short(label: &str) -> String {
    crate::gui::state::model_name(Path::new(label))
}

/// The comparison as a table: a row per metric; the merge, the base and each model, then
/// the merge's delta to the base and to the best single model (named).
fn comparison_table(comparison: &Comparison) -> String {
    let mut header = vec!["metric".to_owned(), "merge".to_owned(), "base".to_owned()];
    header.extend(comparison.models.iter().map(|m| short(m)));
    header.extend(["vs base", "vs best single", "best single"].map(str::to_owned));
    let rows: Vec<Vec<String>> = comparison
        .metrics
        .iter()
        .map(|row| {
            let m = row.metric.as_str();
            let value = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format_value(m, v));
            let delta = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format_delta(m, v));
            let mut cells = vec![m.to_owned(), format_value(m, row.merge), value(row.base)];
            cells.extend(row.models.iter().map(|&v| value(v)));
            cells.push(delta(row.delta_to_base));
            cells.push(delta(row.delta_to_best));
            cells.push(
                row.best_single
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), short),
            );
            cells
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain(std::iter::once(header[c].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for cells in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if c == 0 || c == cells.len() - 1 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(text, "{}", line.join("  ").trim_end());
    }
    text
}
