//! Trains the built-in demo family (a tiny ViT base and four task experts on UCI's digits)
//! and writes it as Hugging Face folders, with merge recipes and the accuracy matrix:
//!
//!     cargo run --release --bin train-demo -- --out assets/demo
//!
//! Seeded and CPU-only: the same seed and thread count give the same files.

#![allow(clippy::print_stdout)] // the accuracy matrix is this program's output

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::train::{TrainOptions, train, write_model};
use mergescope_core::eval::{DemoAccuracy, Domain};
use mergescope_core::export::ExportOptions;
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};

#[derive(Debug, Parser)]
struct Args {
    /// Where to write base/, one folder per domain, recipes/ and ACCURACY.md.
    #[arg(long, default_value = "assets/demo")]
    out: PathBuf,
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    seed: u64,
    #[arg(long, default_value_t = TrainOptions::default().base_epochs)]
    base_epochs: usize,
    #[arg(long, default_value_t = TrainOptions::default().expert_epochs)]
    expert_epochs: usize,
    #[arg(long, default_value_t = TrainOptions::default().base_lr)]
    base_lr: f64,
    #[arg(long, default_value_t = TrainOptions::default().expert_lr)]
    expert_lr: f64,
    #[arg(long, default_value_t = TrainOptions::default().batch)]
    batch: usize,
}

/// Merges of the experts, written next to the models so users can run them.
const RECIPES: [(&str, &str); 3] = [
    (
        "linear",
        "# The plain average of the four experts (Model Soups).\nmerge_method: linear\nmodels:\n  - model: ../upright\n    parameters: {weight: 1.0}\n  - model: ../rotated\n    parameters: {weight: 1.0}\n  - model: ../mirrored\n    parameters: {weight: 1.0}\n  - model: ../inverted\n    parameters: {weight: 1.0}\ndtype: float32\n",
    ),
    (
        "task_arithmetic",
        "# The base plus 0.3 × each expert's task vector.\nmerge_method: task_arithmetic\nbase_model: ../base\nmodels:\n  - model: ../upright\n    parameters: {weight: 0.3}\n  - model: ../rotated\n    parameters: {weight: 0.3}\n  - model: ../mirrored\n    parameters: {weight: 0.3}\n  - model: ../inverted\n    parameters: {weight: 0.3}\ndtype: float32\n",
    ),
    (
        "ties",
        "# TIES: top half of each task vector, elected signs, disjoint mean.\nmerge_method: ties\nbase_model: ../base\nmodels:\n  - model: ../upright\n    parameters: {weight: 1.0, density: 0.5}\n  - model: ../rotated\n    parameters: {weight: 1.0, density: 0.5}\n  - model: ../mirrored\n    parameters: {weight: 1.0, density: 0.5}\n  - model: ../inverted\n    parameters: {weight: 1.0, density: 0.5}\ndtype: float32\n",
    ),
];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = TrainOptions {
        seed: args.seed,
        base_epochs: args.base_epochs,
        expert_epochs: args.expert_epochs,
        base_lr: args.base_lr,
        expert_lr: args.expert_lr,
        batch: args.batch,
    };
    let family = train(&options, &mut |line| eprintln!("{line}"))?;
    write_model(&args.out.join("base"), &family.base)?;
    for (domain, values) in &family.experts {
        write_model(&args.out.join(domain.name()), values)?;
    }
    let recipes = args.out.join("recipes");
    std::fs::create_dir_all(&recipes)?;
    for (name, text) in RECIPES {
        std::fs::write(recipes.join(format!("{name}.yml")), text)?;
    }

    let demo = DemoAccuracy::new()?;
    let mut table = String::from(
        "| model | upright | rotated | mirrored | inverted | mean |\n|---|---|---|---|---|---|\n",
    );
    let mut row = |label: &str, values: &[f64]| {
        let cells: Vec<String> = values
            .iter()
            .map(|v| format!("{:.1} %", 100.0 * v))
            .collect();
        let _ = writeln!(table, "| {label} | {} |", cells.join(" | "));
    };
    row("base", &demo.accuracy_row(&args.out.join("base"))?);
    for domain in Domain::ALL {
        row(
            &format!("expert: {}", domain.name()),
            &demo.accuracy_row(&args.out.join(domain.name()))?,
        );
    }
    let scratch = tempfile_dir()?;
    for (name, _) in RECIPES {
        let plan = MergePlan::from_file(
            &recipes.join(format!("{name}.yml")),
            &PlanOptions {
                cwd: std::env::current_dir()?,
                random_seed: Some(0),
                truncate_vocab: false,
            },
        )?;
        let merged = scratch.join(name);
        let mut export = ExportOptions::new(merged.clone());
        export.force = true;
        execute(&plan, &export, &Cpu, &Job::default())?;
        row(&format!("merge: {name}"), &demo.accuracy_row(&merged)?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let text = format!(
        "Test accuracy of the demo family on each domain (360 test digits per domain), written by\n`cargo run --release --bin train-demo -- --out assets/demo --seed {}`.\n\n{table}",
        args.seed
    );
    std::fs::write(args.out.join("ACCURACY.md"), &text).context("writing ACCURACY.md")?;
    println!("{text}");
    Ok(())
}

/// A fresh scratch folder for the merges.
fn tempfile_dir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mergescope-train-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
