//! `mergescope analyze --base B M1 M2 …` (or `--recipe R`): sensitivity and interference of
//! the task vectors, optionally spectra, and with a recipe a preview of what its merge keeps;
//! as a readable summary and a full JSON/CSV report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mergescope_core::analysis::{
    AnalysisSettings, Report, SpectraSettings, analyze_cached, analyze_recipe_cached, cache_dir,
};
use mergescope_core::family::{Family, Member};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::{Checkpoint, Job};

use super::backend::{BackendArg, open as open_backend};
use super::progress::run_with_progress;
use super::{Failure, path_arg, print_out};

/// The metric families `--metrics` can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// ‖τ‖, ‖τ‖/‖θ‖, mean |τ|, changed share (one pass, shared with interference).
    Sensitivity,
    /// Cosine, sign conflict, top-k Jaccard, TIES conflict between task vectors.
    Interference,
    /// Singular values, effective/stable rank, subspace overlap, base-subspace energy (2-D).
    Spectra,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model the task vectors are taken against.
    #[arg(long, value_parser = path_arg, required_unless_present = "recipe")]
    base: Option<PathBuf>,
    /// The fine-tunes (files, index files or folders).
    #[arg(value_parser = path_arg, required_unless_present = "recipe")]
    models: Vec<PathBuf>,
    /// Analyse the family of this mergekit recipe instead, and preview its merge: per layer,
    /// how much of each task vector survives (nothing is written).
    #[arg(long, value_parser = path_arg, conflicts_with_all = ["base", "models"])]
    recipe: Option<PathBuf>,
    /// Seed of the random methods in the preview (DARE, DELLA).
    #[arg(long, default_value_t = 0, requires = "recipe")]
    random_seed: u64,
    /// Where the preview merge runs.
    #[arg(long, value_enum, default_value_t, requires = "recipe")]
    backend: BackendArg,
    /// Which metrics to compute (comma-separated). Spectra are off unless named or --rank is given.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Metric::Sensitivity, Metric::Interference])]
    metrics: Vec<Metric>,
    /// Singular values per task vector for spectra (implies `--metrics …,spectra`).
    #[arg(long, value_parser = super::count_in::<1, 4096>)]
    rank: Option<usize>,
    /// Density of the top-k magnitude masks compared by the Jaccard overlap.
    #[arg(long, default_value_t = 0.1)]
    density: f64,
    /// Trim each task vector to this top-k density before the TIES sign election.
    #[arg(long, default_value_t = 1.0)]
    ties_density: f64,
    /// Compare embedding/head tensors of different vocabulary sizes on their common rows.
    #[arg(long)]
    truncate_vocab: bool,
    /// Write the full report as JSON here.
    #[arg(long, value_parser = path_arg)]
    json: Option<PathBuf>,
    /// Write tensors.csv (per tensor and model) and pairs.csv (per group and pair) here.
    #[arg(long, value_parser = path_arg)]
    csv: Option<PathBuf>,
    /// Rows in each ranking of the summary.
    #[arg(long, default_value_t = 10, value_parser = super::count_in::<0, 1_000_000>)]
    top: usize,
    /// Recompute even if the same analysis is in the cache.
    #[arg(long)]
    no_cache: bool,
}

fn check_fraction(name: &str, value: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        value > 0.0 && value <= 1.0,
        "--{name} {value} is outside (0, 1]; use a fraction such as 0.1"
    );
    Ok(())
}

fn open(path: &PathBuf) -> Result<Member, Failure> {
    Ok(Member {
        label: path.display().to_string(),
        checkpoint: Arc::new(Checkpoint::open(path)?),
    })
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    check_fraction("density", args.density)?;
    check_fraction("ties-density", args.ties_density)?;
    if args.rank == Some(0) {
        return Err(anyhow::anyhow!("--rank 0 keeps no singular values; use 1 or more").into());
    }
    let started = Instant::now();
    let plan = args
        .recipe
        .as_ref()
        .map(|recipe| {
            MergePlan::from_file(
                recipe,
                &PlanOptions {
                    cwd: std::env::current_dir()?,
                    random_seed: Some(args.random_seed),
                    truncate_vocab: args.truncate_vocab,
                },
            )
            .map_err(Failure::from)
        })
        .transpose()?;
    let family = match &plan {
        Some(plan) => {
            for warning in &plan.warnings {
                eprintln!("warning: {warning}");
            }
            plan.family.clone()
        }
        None => Family {
            base: args.base.as_ref().map(open).transpose()?,
            models: args.models.iter().map(open).collect::<Result<_, _>>()?,
        },
    };
    let mut settings = AnalysisSettings::new(family.models.len());
    settings.interference.density = args.density;
    settings.interference.ties_density = args.ties_density;
    settings.truncate_vocab = args.truncate_vocab;
    if args.rank.is_some() || args.metrics.contains(&Metric::Spectra) {
        let mut spectra = SpectraSettings::default();
        if let Some(rank) = args.rank {
            spectra.rank = rank;
        }
        settings.spectra = Some(spectra);
    }
    let cache = (!args.no_cache).then(cache_dir).flatten();
    let (report, cached) = match &plan {
        Some(plan) => {
            settings.recipe = Some(format!(
                "{}random_seed: {}\n",
                plan.recipe.to_yaml(),
                plan.random_seed
            ));
            let backend = open_backend(args.backend)?;
            run_with_progress(job, || {
                analyze_recipe_cached(plan, &settings, backend.as_ref(), job, cache.as_deref())
            })?
        }
        None => run_with_progress(job, || {
            analyze_cached(&family, &settings, job, cache.as_deref())
        })?,
    };
    write_outputs(args, &report)?;
    if !report.non_finite.is_empty() {
        eprintln!(
            "warning: {}; they count as unchanged in every metric",
            mergescope_core::nonfinite::summary(&report.non_finite)
        );
    }
    eprintln!(
        "analysed {} tensors of {} model(s) in {:.2} s{}",
        report.tensors.len(),
        report.models.len(),
        started.elapsed().as_secs_f64(),
        if cached { " (from the cache)" } else { "" }
    );
    print_out(&report.summary(args.top))
}

fn write_outputs(args: &Args, report: &Report) -> Result<(), Failure> {
    let write = |path: PathBuf, bytes: &[u8]| -> anyhow::Result<()> {
        std::fs::write(&path, bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    };
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(report)?;
        text.push('\n');
        write(path.clone(), text.as_bytes())?;
        eprintln!("report: {}", path.display());
    }
    if let Some(dir) = &args.csv {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        write(dir.join("tensors.csv"), report.tensors_csv().as_bytes())?;
        write(dir.join("pairs.csv"), report.pairs_csv().as_bytes())?;
        eprintln!("csv: {}", dir.display());
    }
    Ok(())
}
