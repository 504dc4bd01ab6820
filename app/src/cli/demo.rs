//! `mergescope demo`: the built-in demo family — a tiny ViT base and four task experts
//! trained on UCI's handwritten digits (upright, rotated, mirrored, inverted) — merged with
//! task arithmetic and scored, so a fresh checkout shows the whole path (open → recipe →
//! plan → stream → export → evaluate) on real models in a second.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use mergescope_core::Job;
use mergescope_core::eval::{DemoAccuracy, DemoFamily, Domain};
use mergescope_core::export::ExportOptions;
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};

use super::backend::{BackendArg, open as open_backend};
use super::merge::summary_line;
use super::progress::run_with_progress;
use super::{Failure, path_arg, print_out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to put the family (`family/`, with its recipes) and the merged model (`merged/`);
    /// both are replaced (default: mergescope-demo in the temporary folder).
    #[arg(long, value_parser = path_arg)]
    dir: Option<PathBuf>,
    /// The shipped recipe to run: linear, task_arithmetic or ties.
    #[arg(long, default_value = "task_arithmetic")]
    recipe: String,
    /// Where the arithmetic runs.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendArg,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("mergescope-demo"));
    let started = Instant::now();
    let family = DemoFamily::extract(&dir.join("family"))?;
    eprintln!(
        "demo family in {}: a ViT base and experts for upright, rotated, mirrored and inverted digits",
        family.root.display()
    );
    let recipe = family.recipe(&args.recipe);
    if !recipe.is_file() {
        return Err(anyhow::anyhow!(
            "no shipped recipe `{}`; use linear, task_arithmetic or ties",
            args.recipe
        )
        .into());
    }
    eprintln!("recipe: {}", recipe.display());
    let plan = MergePlan::from_file(
        &recipe,
        &PlanOptions {
            cwd: std::env::current_dir()?,
            random_seed: Some(0),
            truncate_vocab: false,
        },
    )?;
    let mut options = ExportOptions::new(dir.join("merged"));
    options.force = true;
    let backend = open_backend(args.backend)?;
    let summary = run_with_progress(job, || execute(&plan, &options, backend.as_ref(), job))?;
    let mut report = summary_line(&summary, started.elapsed().as_secs_f64());

    let demo = DemoAccuracy::new()?;
    let _ = writeln!(
        report,
        "\ntest accuracy (merged = {}):\n{:<14}{:>10}{:>10}{:>10}{:>10}{:>10}",
        plan.method.spec().name,
        "",
        "upright",
        "rotated",
        "mirrored",
        "inverted",
        "mean"
    );
    let mut row = |label: &str, values: &[f64]| {
        let cells: String = values
            .iter()
            .map(|v| format!("{:>9.1}%", 100.0 * v))
            .collect();
        let _ = writeln!(report, "{label:<14}{cells}");
    };
    row("base", &demo.accuracy_row(&family.base())?);
    for domain in Domain::ALL {
        row(domain.name(), &demo.accuracy_row(&family.expert(domain))?);
    }
    row(
        &format!("merged ({})", plan.method.spec().name),
        &demo.accuracy_row(&summary.out_dir)?,
    );
    let root = family.root.display();
    let _ = writeln!(
        report,
        "\nnext: mergescope analyze --base {root}/base {root}/upright {root}/rotated {root}/mirrored {root}/inverted\n      mergescope eval {root}/recipes/ties.yml"
    );
    print_out(&report)
}
