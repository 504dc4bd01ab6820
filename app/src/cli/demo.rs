//! `mergescope demo`: the built-in demo family — a tiny ViT base and four task experts
//! trained on UCI's handwritten digits (upright, rotated, mirrored, inverted) — merged with
//! task arithmetic and scored, so a fresh checkout shows the whole path (open → recipe →
//! plan → stream → export → evaluate) on real models in a second. `mergescope demo --lm` does
//! the same with the language-model demo family — a small Llama-shaped base and fine-tunes on
//! Python source, Python's documentation and software licences — scored by perplexity.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use mergescope_core::Job;
use mergescope_core::eval::lm::demo::{DOMAINS, LmDemoFamily};
use mergescope_core::eval::{Candidate, DemoAccuracy, DemoFamily, Domain, Fidelity, Objective};
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
    /// The language-model family instead (fine-tunes on code, docs and legal text), scored by
    /// perplexity on each domain's held-out text.
    #[arg(long)]
    lm: bool,
    /// With --lm: score each domain's first N tokens only (default: the whole text).
    #[arg(long, requires = "lm", value_parser = clap::value_parser!(u64).range(2..))]
    tokens: Option<u64>,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    if args.lm {
        return run_lm(args, job);
    }
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
    let (plan, summary) = merge(args, &family.recipe(&args.recipe), &dir.join("merged"), job)?;
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

/// Runs the shipped recipe at `recipe` into `out`.
fn merge(
    args: &Args,
    recipe: &std::path::Path,
    out: &std::path::Path,
    job: &Job,
) -> Result<(MergePlan, mergescope_core::export::ExportSummary), Failure> {
    if !recipe.is_file() {
        return Err(anyhow::anyhow!(
            "no shipped recipe `{}`; use linear, task_arithmetic or ties",
            args.recipe
        )
        .into());
    }
    eprintln!("recipe: {}", recipe.display());
    // The shipped recipes name their models relative to their own folder; resolving from the
    // current folder first (mergekit's rule) could pick up an unrelated `../docs`.
    let folder = recipe
        .parent()
        .map_or_else(std::env::current_dir, |f| Ok(f.to_path_buf()))?;
    let plan = MergePlan::from_file(
        recipe,
        &PlanOptions {
            cwd: folder,
            random_seed: Some(0),
            truncate_vocab: false,
        },
    )?;
    let mut options = ExportOptions::new(out.to_path_buf());
    options.force = true;
    let backend = open_backend(args.backend)?;
    let summary = run_with_progress(job, || execute(&plan, &options, backend.as_ref(), job))?;
    Ok((plan, summary))
}

/// `demo --lm`: the language-model family merged by a shipped recipe, and the perplexity of
/// the base, each fine-tune and the merge on each domain.
fn run_lm(args: &Args, job: &Job) -> Result<(), Failure> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("mergescope-lm-demo"));
    let started = Instant::now();
    let family = LmDemoFamily::extract(&dir.join("family"))?;
    eprintln!(
        "language-model demo family in {}: a Llama-shaped base and fine-tunes on {}",
        family.root.display(),
        DOMAINS.join(", ")
    );
    let (plan, summary) = merge(args, &family.recipe(&args.recipe), &dir.join("merged"), job)?;
    let mut report = summary_line(&summary, started.elapsed().as_secs_f64());

    let objective = family.perplexity()?;
    let fidelity = args
        .tokens
        .map_or(Fidelity::Full, |n| Fidelity::Subsample(n as usize));
    let scored = match fidelity {
        Fidelity::Full => "whole held-out texts".to_owned(),
        Fidelity::Subsample(n) => format!("first {n} tokens of each held-out text"),
    };
    let method = plan.method.spec().name;
    let _ = write!(
        report,
        "\nperplexity, lower is better ({scored}; merged = {method}):\n{:<26}",
        ""
    );
    for domain in DOMAINS.iter().chain(&["mean"]) {
        let _ = write!(report, "{domain:>10}");
    }
    report.push('\n');
    let mut row = |label: &str, folder: &std::path::Path| -> Result<(), Failure> {
        // Between models: Ctrl-C ends the scoring as it ends a merge.
        job.check_cancelled().map_err(anyhow::Error::from)?;
        let scores = objective.evaluate(
            &Candidate {
                folder: Some(folder),
                tensors: None,
            },
            fidelity,
        )?;
        let _ = write!(report, "{label:<26}");
        for domain in DOMAINS.iter().chain(&["mean"]) {
            let _ = write!(report, "{:>10.2}", scores[&format!("{domain}/perplexity")]);
        }
        report.push('\n');
        Ok(())
    };
    row("base", &family.base())?;
    for domain in DOMAINS {
        row(&format!("{domain} fine-tune"), &family.expert(domain))?;
    }
    row(&format!("merged ({method})"), &summary.out_dir)?;
    let root = family.root.display();
    let _ = writeln!(
        report,
        "\nnext: mergescope eval {root}/recipes/ties.yml --objective ppl:{root}/texts --compare"
    );
    print_out(&report)
}
