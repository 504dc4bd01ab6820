//! `mergescope demo`: generates a small example family, writes a recipe for it and merges it,
//! so a fresh checkout shows the whole path (generate → recipe → plan → stream → export).

use std::path::PathBuf;
use std::time::Instant;

use mergescope_core::Checkpoint;
use mergescope_core::Job;
use mergescope_core::export::{ExportOptions, format_size};
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::synth::{LlamaShape, SynthFamily};

use super::backend::{BackendArg, open as open_backend};
use super::merge::summary_line;
use super::progress::run_with_progress;
use super::{Failure, path_arg, print_out};

/// The demo's recipe: per-layer gradients, a tensor-name filter and a negated task.
pub const DEMO_RECIPE: &str = "\
# mergescope demo: task arithmetic over three synthetic fine-tunes of one base.
merge_method: task_arithmetic
base_model: family/base
models:
  - model: family/ft_1
    parameters:
      weight: [0.2, 0.8]        # a per-layer gradient: more of ft_1 in deeper layers
  - model: family/ft_2
    parameters:
      weight:
        - filter: self_attn     # attention from ft_2 at 0.6, the rest at 0.3
          value: 0.6
        - value: 0.3
  - model: family/ft_3
    parameters:
      weight: -0.2              # negation: move away from ft_3
parameters:
  lambda: 1.0
dtype: float32
out_dtype: bfloat16
";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to put the example family, its recipe and the merged model; `family/`, `demo.yml`
    /// and `merged/` inside it are replaced (default: mergescope-demo in the temporary folder).
    #[arg(long, value_parser = path_arg)]
    dir: Option<PathBuf>,
    /// Where the arithmetic runs.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendArg,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("mergescope-demo"));
    std::fs::create_dir_all(&dir)?;
    let started = Instant::now();

    let family = SynthFamily::new(LlamaShape::TINY, 3);
    eprintln!(
        "generating an example family in {}: base + 3 fine-tunes, Llama-shaped, {} each",
        dir.join("family").display(),
        format_size(family.model_bytes())
    );
    let folders = run_with_progress(job, || family.write(&dir.join("family"), true, job))?;

    let recipe = dir.join("demo.yml");
    std::fs::write(&recipe, DEMO_RECIPE)?;
    eprintln!("recipe: {}", recipe.display());

    let plan = MergePlan::from_file(
        &recipe,
        &PlanOptions {
            cwd: std::env::current_dir()?,
            random_seed: None,
            truncate_vocab: false,
        },
    )?;
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let mut options = ExportOptions::new(dir.join("merged"));
    options.force = true;
    let backend = open_backend(args.backend)?;
    let summary = run_with_progress(job, || execute(&plan, &options, backend.as_ref(), job))?;

    let merged = Checkpoint::open(&summary.out_dir)?;
    let base = Checkpoint::open(&folders[0])?;
    let mut report = summary_line(&summary, started.elapsed().as_secs_f64());
    report.push_str(&format!(
        "merged {} parameters; {} of {} tensors differ from the base\nnext: mergescope inspect {}\n",
        merged.parameter_count(),
        changed_tensors(&base, &merged),
        merged.tensors().len(),
        summary.out_dir.display()
    ));
    print_out(&report)
}

/// How many tensors of `merged` are not bit-equal to the base's (a quick sanity check that
/// the merge did something, without pulling in the analysis engine).
fn changed_tensors(base: &Checkpoint, merged: &Checkpoint) -> usize {
    merged
        .tensors()
        .iter()
        .enumerate()
        .filter(|(i, t)| {
            base.index_of(&t.name)
                .is_none_or(|j| base.view(j).bytes != merged.view(*i).bytes)
        })
        .count()
}
