//! `mergescope merge RECIPE --out DIR`.

use std::path::PathBuf;
use std::time::Instant;

use mergescope_core::Job;
use mergescope_core::export::{ExportOptions, ExportSummary, format_size};
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};

use super::backend::{BackendArg, open as open_backend};
use super::progress::run_with_progress;
use super::{Failure, parse_shard_size, path_arg, print_out, warn_non_finite};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A mergekit-style YAML recipe.
    #[arg(value_parser = path_arg)]
    recipe: PathBuf,
    /// The folder to write the merged model into (created; must not be inside an input), with
    /// its recipe as mergekit_config.yml and a README.md model card.
    #[arg(long, value_parser = path_arg)]
    out: PathBuf,
    /// Largest shard, e.g. 5GB, 500MB, 2GiB.
    #[arg(long, default_value = "5GB", value_parser = parse_shard_size)]
    shard_size: u64,
    /// Replace the output folder if it is not empty.
    #[arg(long)]
    force: bool,
    /// Seed for the random methods (DARE, DELLA); recorded in the output's metadata. Without
    /// it one is drawn and recorded.
    #[arg(long)]
    random_seed: Option<u64>,
    /// Where embedding or head tensors differ in vocabulary size, keep the leading rows every
    /// model has instead of stopping with an error.
    #[arg(long)]
    truncate_vocab: bool,
    /// Where the arithmetic runs.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendArg,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let started = Instant::now();
    let cwd = std::env::current_dir()?;
    let plan = MergePlan::from_file(
        &args.recipe,
        &PlanOptions {
            cwd,
            random_seed: args.random_seed,
            truncate_vocab: args.truncate_vocab,
        },
    )?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "{}: {} model(s){} -> {} tensors, {} into {}",
        plan.method.spec().name,
        plan.family.models.len(),
        plan.family
            .base
            .as_ref()
            .map(|b| format!(" on base {}", b.label))
            .unwrap_or_default(),
        plan.tasks.len(),
        format_size(plan.output_bytes()),
        args.out.display()
    );
    let options = ExportOptions {
        out_dir: args.out.clone(),
        shard_size: args.shard_size,
        force: args.force,
        // A merge from the command line has no preview: its card carries no scores.
        card_scores: None,
    };
    let backend = open_backend(args.backend)?;
    // What killed exports left beside the output is repaired before writing; say so.
    for repair in mergescope_core::export::recover_interrupted(&args.out) {
        eprintln!("warning: {repair}");
    }
    let summary = run_with_progress(job, || execute(&plan, &options, backend.as_ref(), job))?;
    warn_non_finite(job);
    print_out(&summary_line(&summary, started.elapsed().as_secs_f64()))
}

pub(super) fn summary_line(summary: &ExportSummary, seconds: f64) -> String {
    format!(
        "wrote {}: {} tensors, {} in {} shard(s){} in {seconds:.2} s\n",
        summary.out_dir.display(),
        summary.tensors,
        format_size(summary.data_bytes),
        summary.shards.len(),
        if summary.files.is_empty() {
            String::new()
        } else {
            format!(" + {}", summary.files.join(", "))
        },
    )
}
