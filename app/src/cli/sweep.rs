//! `mergescope sweep RECIPE.yml --param models.1.weight=0:1:11 [--param …] [--objective …]
//! [--json OUT]`: the recipe merged and scored at every cell of a grid of one to three of its
//! parameters, printed as a table (a 2-D sweep as a grid) with the best cell marked.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::{DemoAccuracy, ExternalCommand, Fidelity};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::sweep::metric::{self, best_cell, default_metric, metric_names, metric_value};
use mergescope_core::sweep::{Axis, Cell, Sweep, SweepError, SweepObjective};

use super::eval::{ObjectiveArg, parse_objective};
use super::{Failure, path_arg, print_out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The mergekit recipe every cell starts from.
    #[arg(value_parser = path_arg)]
    recipe: PathBuf,
    /// A parameter and its values: models.N.NAME (a model's weight, density, epsilon,
    /// gamma, …), NAME or parameters.NAME (lambda, t, …), each optionally NAME[K] for control
    /// point K of a per-layer gradient; then =START:END:STEPS (both ends included) or
    /// =a,b,c. Give one to three.
    #[arg(long = "param", required = true, value_name = "PATH=VALUES", value_parser = parse_axis)]
    params: Vec<Axis>,
    /// `demo`, `retention`, `cmd:"COMMAND"` (run on each cell's merge, exported to a
    /// scratch folder; prints {"metric": value, …}), or `ppl:DIR` (a language model's
    /// perplexity and mean token NLL on each .txt or .jsonl of DIR, one domain each).
    #[arg(long, default_value = "demo", value_parser = parse_objective)]
    objective: ObjectiveArg,
    /// Score only the first N test samples (demo) or tokens (perplexity) of each domain.
    #[arg(long, value_parser = super::count_in::<1, 1_000_000>)]
    subsample: Option<usize>,
    /// The metric the table shows (default: mean/accuracy, mean/perplexity, the mean
    /// retention, or the command's first).
    #[arg(long)]
    metric: Option<String>,
    /// Stop the objective command after this many seconds (per cell).
    #[arg(long, default_value_t = 600, value_parser = super::seconds_in::<1, 604_800>)]
    timeout: u64,
    /// Seed of the random methods (DARE, DELLA), the same for every cell.
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Also write every cell (its values, scores and recipe) to this JSON file.
    #[arg(long, value_parser = path_arg)]
    json: Option<PathBuf>,
}

fn parse_axis(s: &str) -> Result<Axis, String> {
    Axis::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.recipe)
        .with_context(|| format!("cannot read the recipe {}", args.recipe.display()))?;
    let sweep = Sweep::new(&text, &args.recipe, args.params.clone())?;
    let options = PlanOptions {
        cwd: std::env::current_dir()?,
        random_seed: Some(args.random_seed),
        truncate_vocab: false,
    };
    let objective = match &args.objective {
        ObjectiveArg::Perplexity(dir) => {
            // The recipe's own plan gives the configuration and tokenizer every cell shares.
            let plan = MergePlan::from_file(&args.recipe, &options)?;
            SweepObjective::Perplexity {
                perplexity: std::sync::Arc::new(super::eval::perplexity(
                    dir,
                    &args.recipe,
                    Some(&plan),
                )?),
                fidelity: args.subsample.map_or(Fidelity::Full, Fidelity::Subsample),
            }
        }
        ObjectiveArg::Demo => SweepObjective::Demo {
            accuracy: DemoAccuracy::new()?,
            fidelity: args.subsample.map_or(Fidelity::Full, Fidelity::Subsample),
        },
        ObjectiveArg::Retention => SweepObjective::Retention,
        ObjectiveArg::Command(command) => SweepObjective::Command(ExternalCommand {
            command: command.clone(),
            timeout: Duration::from_secs(args.timeout),
        }),
    };
    let started = Instant::now();
    // A --metric the objective does not report stops the sweep at its first cell, not after
    // the last.
    let (cells, unknown_metric) =
        super::progress::run_counting(super::progress::Unit::Cells, job, || {
            let mut unknown_metric = None;
            let cells =
                mergescope_core::sweep::run(&sweep, &objective, &Cpu, &options, job, &mut |cell| {
                    if let Some(m) = &args.metric
                        && unknown_metric.is_none()
                        && metric_value(&cell.scores, m).is_none()
                    {
                        unknown_metric = Some(format!(
                            "--metric {m}: the objective reported no such metric; it reported {}",
                            metric_names(&cell.scores).join(", ")
                        ));
                        job.cancel.cancel();
                    }
                });
            (cells, unknown_metric)
        });
    if let Some(message) = unknown_metric {
        return Err(anyhow::anyhow!(message).into());
    }
    let cells = cells.map_err(|e| match e {
        SweepError::Cancelled => Failure::Cancelled,
        other => Failure::from(other),
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "sweep: {} cells of {} in {elapsed:.2} s ({:.1} ms a cell)",
        cells.len(),
        objective.describe(),
        elapsed * 1e3 / cells.len().max(1) as f64
    );
    super::warn_non_finite(job);
    let metric = match (&args.metric, cells.first()) {
        (Some(m), _) => m.clone(),
        (None, Some(cell)) => default_metric(&cell.scores).ok_or_else(|| {
            anyhow::anyhow!("the objective reported no metrics; a sweep needs at least one")
        })?,
        (None, None) => String::new(),
    };
    if let Some(path) = &args.json {
        let report = json_report(&sweep, &objective, &cells, &metric);
        let text = serde_json::to_string_pretty(&report)?;
        mergescope_core::export::write_atomically(path, format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    print_out(&table(&sweep, &cells, &metric))
}

/// A metric's value as the table prints it: accuracies in percent with one decimal.
fn shown(metric: &str, value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| metric::format_value(metric, v))
}

/// One row per cell (1 or 3 parameters), or a grid with the first parameter down and the
/// second across (2 parameters); the best cell carries a `*`.
fn table(sweep: &Sweep, cells: &[Cell], metric: &str) -> String {
    let best = best_cell(cells, metric);
    let mark = |i: usize| if Some(i) == best { "*" } else { " " };
    let value = |i: usize| shown(metric, metric_value(&cells[i].scores, metric));
    let axes = sweep.axes();
    let mut text = String::new();
    if let [rows, columns] = axes {
        let _ = writeln!(
            text,
            "{metric} (rows: {}, columns: {}):",
            rows.path, columns.path
        );
        let _ = write!(text, "{:>10}", "");
        for v in &columns.values {
            let _ = write!(text, " {:>9}", format_value(*v));
        }
        text.push('\n');
        for (r, row_value) in rows.values.iter().enumerate() {
            let _ = write!(text, "{:>10}", format_value(*row_value));
            for c in 0..columns.values.len() {
                let i = r * columns.values.len() + c;
                if i < cells.len() {
                    let _ = write!(text, " {:>8}{}", value(i), mark(i));
                }
            }
            text.push('\n');
        }
    } else {
        for axis in axes {
            let _ = write!(text, "{:>18} ", axis.path.to_string());
        }
        let _ = writeln!(text, "{metric:>14}");
        for (i, cell) in cells.iter().enumerate() {
            for v in &cell.values {
                let _ = write!(text, "{:>18} ", format_value(*v));
            }
            let _ = writeln!(text, "{:>13}{}", value(i), mark(i));
        }
    }
    if let Some(i) = best {
        let _ = writeln!(
            text,
            "best (*): {}: {}",
            sweep.describe(&cells[i].values),
            value(i)
        );
    }
    text
}

/// A swept value as short as it reads exactly.
fn format_value(v: f64) -> String {
    format!("{v}")
}

#[derive(serde::Serialize)]
struct Report<'a> {
    recipe: String,
    objective: String,
    params: Vec<ParamReport>,
    /// The metric the table showed and the best cell on it.
    metric: &'a str,
    best: Option<Vec<usize>>,
    cells: &'a [Cell],
}

#[derive(serde::Serialize)]
struct ParamReport {
    path: String,
    key: String,
    values: Vec<f64>,
}

fn json_report<'a>(
    sweep: &Sweep,
    objective: &SweepObjective,
    cells: &'a [Cell],
    metric: &'a str,
) -> Report<'a> {
    Report {
        recipe: sweep.file().display().to_string(),
        objective: objective.describe(),
        params: sweep
            .axes()
            .iter()
            .map(|a| ParamReport {
                path: a.path.to_string(),
                key: a.path.recipe_key(),
                values: a.values.clone(),
            })
            .collect(),
        metric,
        best: best_cell(cells, metric).map(|i| cells[i].index.clone()),
        cells,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "merge_method: task_arithmetic\nbase_model: b\nmodels:\n  - model: x\n    parameters: {weight: 0.5}\n  - model: y\n    parameters: {weight: 0.5}\n";

    /// A sweep over `specs` whose cell n scores `mean/accuracy` = n / 100.
    fn swept(specs: &[&str]) -> (Sweep, Vec<Cell>) {
        let axes = specs.iter().map(|s| Axis::parse(s).unwrap()).collect();
        let sweep = Sweep::new(RECIPE, std::path::Path::new("r.yml"), axes).unwrap();
        let cells = (0..sweep.cell_count())
            .map(|n| {
                let index = sweep.cell_index(n);
                Cell {
                    values: sweep.values_at(&index),
                    index,
                    scores: [("mean/accuracy".to_owned(), n as f64 / 100.0)]
                        .into_iter()
                        .collect(),
                    recipe: String::new(),
                }
            })
            .collect();
        (sweep, cells)
    }

    #[test]
    fn two_parameters_make_a_grid_and_others_a_row_per_cell() {
        let (sweep, cells) = swept(&["models.0.weight=0,1", "models.1.weight=0:1:3"]);
        let text = table(&sweep, &cells, "mean/accuracy");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 1 + 2 + 1, "{text}");
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            ["0", "0.5", "1"]
        );
        assert_eq!(
            lines[3].split_whitespace().collect::<Vec<_>>(),
            ["1", "3.0%", "4.0%", "5.0%*"]
        );
        assert_eq!(
            lines[4],
            "best (*): models.0.weight = 1, models.1.weight = 1: 5.0%"
        );

        let (sweep, cells) = swept(&["models.0.weight=0,1", "models.1.weight=0,1", "lambda=1,2"]);
        let text = table(&sweep, &cells, "mean/accuracy");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 8 + 1, "{text}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "models.0.weight",
                "models.1.weight",
                "lambda",
                "mean/accuracy"
            ]
        );
        assert_eq!(
            lines[8].split_whitespace().collect::<Vec<_>>(),
            ["1", "1", "2", "7.0%*"]
        );
        // Other metrics print as numbers.
        let text = table(&sweep, &cells, "missing");
        assert!(text.lines().nth(1).unwrap().ends_with("- "), "{text}");
    }
}
