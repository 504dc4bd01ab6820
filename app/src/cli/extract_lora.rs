//! `mergescope extract-lora --base B --model M --rank r --out DIR`: a PEFT LoRA adapter from
//! the truncated SVD of each targeted task vector M − B (mergekit-extract-lora's defaults:
//! 2-D linear weights, no embeddings unless asked), with the relative reconstruction error per
//! tensor and overall.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use mergescope_core::analysis::SpectraSettings;
use mergescope_core::export::{ExportOptions, recover_interrupted};
use mergescope_core::lora::extract::{ExtractSettings, Report, extract, write_adapter};
use mergescope_core::{Checkpoint, Job};

use super::progress::run_with_progress;
use super::{Failure, path_arg, print_out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The base model the adapter will be applied to.
    #[arg(long, value_parser = path_arg)]
    base: PathBuf,
    /// The fine-tuned model whose difference from the base is decomposed.
    #[arg(long, value_parser = path_arg)]
    model: PathBuf,
    /// The largest rank per module (the adapter's `r`).
    #[arg(long, value_parser = super::count_in::<1, 65536>)]
    rank: usize,
    /// Drop singular values below this fraction of each tensor's largest (0 keeps `--rank`);
    /// modules left with a lower rank are listed in the adapter's rank_pattern.
    #[arg(long, default_value_t = 0.0)]
    sv_threshold: f64,
    /// Decompose the embeddings and the output head too.
    #[arg(long)]
    embeddings: bool,
    /// The adapter folder to write (adapter_config.json, adapter_model.safetensors).
    #[arg(long, value_parser = path_arg)]
    out: PathBuf,
    /// Replace a non-empty output folder.
    #[arg(long)]
    force: bool,
    /// Write the per-tensor report as JSON here.
    #[arg(long, value_parser = path_arg)]
    json: Option<PathBuf>,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    if !(0.0..1.0).contains(&args.sv_threshold) {
        return Err(anyhow::anyhow!(
            "--sv-threshold {} is outside [0, 1); it is a fraction of the largest singular value",
            args.sv_threshold
        )
        .into());
    }
    let started = Instant::now();
    let base = Checkpoint::open(&args.base)?;
    let model = Checkpoint::open(&args.model)?;
    let settings = ExtractSettings {
        rank: args.rank,
        sv_threshold: args.sv_threshold,
        include_embeddings: args.embeddings,
        spectra: SpectraSettings::default(),
    };
    for repair in recover_interrupted(&args.out) {
        eprintln!("warning: {repair}");
    }
    let inputs: Vec<PathBuf> = base.input_paths().chain(model.input_paths()).collect();
    let options = ExportOptions {
        force: args.force,
        ..ExportOptions::new(&args.out)
    };
    let (factors, skipped) = run_with_progress(job, || {
        let extracted = extract(&base, &model, &settings, job)?;
        job.check_cancelled()?;
        let summary = write_adapter(&options, &extracted.0, args.rank, &args.base, &inputs)?;
        anyhow::Ok((extracted, summary))
    })
    .map(|(extracted, _)| extracted)?;
    if factors.is_empty() {
        return Err(anyhow::anyhow!(
            "{} and {} share no 2-D weight to decompose (see --embeddings)",
            args.base.display(),
            args.model.display()
        )
        .into());
    }
    let report = Report::new(&factors, skipped);
    eprint!("{}", table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        mergescope_core::export::write_atomically(path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("{}: cannot write the report: {e}", path.display()))?;
    }
    print_out(&format!(
        "wrote a rank-{} LoRA adapter of {} modules to {} in {:.1} s (relative error {:.3e})\n",
        factors.iter().map(|f| f.rank).max().unwrap_or(0),
        factors.iter().filter(|f| f.rank > 0).count(),
        args.out.display(),
        started.elapsed().as_secs_f64(),
        report.overall_relative_error
    ))
}

/// The per-tensor errors as a table for stderr.
fn table(report: &Report) -> String {
    let width = report
        .tensors
        .iter()
        .map(|t| t.tensor.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut s = format!(
        "{:<width$}  {:>11}  {:>5}  {:>10}\n",
        "tensor", "shape", "rank", "rel. error"
    );
    for t in &report.tensors {
        let _ = writeln!(
            s,
            "{:<width$}  {:>11}  {:>5}  {:>10.3e}",
            t.tensor,
            format!("{}×{}", t.shape[0], t.shape[1]),
            t.rank,
            t.relative_error
        );
    }
    let _ = writeln!(
        s,
        "{:<width$}  {:>11}  {:>5}  {:>10.3e}",
        "overall", "", "", report.overall_relative_error
    );
    if !report.skipped.is_empty() {
        let _ = writeln!(
            s,
            "not decomposed: {} tensors (norms, biases, embeddings; see --json)",
            report.skipped.len()
        );
    }
    s
}
