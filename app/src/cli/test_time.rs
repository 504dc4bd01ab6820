//! The test-time merges (core's `test_time`), on models of the demo family's architecture,
//! adapted on the demo's unlabeled test images:
//!
//! - `mergescope adamerging --base B --out DIR [--task-wise] MODELS…`: learns task arithmetic's
//!   coefficients and writes the merged model, its recipe (per-layer `weight` gradients) as
//!   `mergekit_config.yml` beside it;
//! - `mergescope wemoe --base B --out DIR [--critical F] [--unload] MODELS…`: routes the most
//!   moved MLPs through trained routers and writes that model, or (`--unload`) the plain model
//!   its mean routing gives.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use mergescope_core::Checkpoint;
use mergescope_core::Job;
use mergescope_core::eval::ModelTensors;
use mergescope_core::eval::vit::VitConfig;
use mergescope_core::export::ExportOptions;
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::merge::recipe::Recipe;
use mergescope_core::test_time::adamerging::{AdaMergingSettings, Granularity, adamerge};
use mergescope_core::test_time::wemoe::{WemoeSettings, upscale};
use mergescope_core::test_time::{Adaptation, Unlabeled, open_family};

use super::backend::{BackendArg, open as open_backend};
use super::progress::{Unit, run_counting};
use super::{BaseAndFineTunes, Failure, print_out};

/// What both commands read: the family and the optimiser's settings.
#[derive(Debug, clap::Args)]
pub struct Family {
    /// Models of the demo family's architecture.
    #[command(flatten)]
    inputs: BaseAndFineTunes,
    /// Optimiser steps (each one batch per task).
    #[arg(long, value_parser = super::count_in::<1, 100_000>)]
    steps: Option<usize>,
    /// Adam's learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Unlabeled images per task and step.
    #[arg(long, value_parser = super::count_in::<1, 4096>)]
    batch: Option<usize>,
    /// Seeds the batches (and WEMoE's routers): the same seed gives the same result.
    #[arg(long)]
    seed: Option<u64>,
}

impl Family {
    fn adaptation(&self, defaults: Adaptation) -> Adaptation {
        Adaptation {
            steps: self.steps.unwrap_or(defaults.steps),
            lr: self.lr.unwrap_or(defaults.lr),
            batch: self.batch.unwrap_or(defaults.batch),
            seed: self.seed.unwrap_or(defaults.seed),
        }
    }

    fn open(&self) -> Result<(ModelTensors, Vec<ModelTensors>), Failure> {
        if self.inputs.out.exists() {
            return Err(Failure::User(anyhow::anyhow!(
                "{} already exists; choose another folder or remove it",
                self.inputs.out.display()
            )));
        }
        let base = Checkpoint::open(&self.inputs.base)?;
        let experts = self
            .inputs
            .models
            .iter()
            .map(Checkpoint::open)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(open_family(&base, &experts, VitConfig::DEMO)?)
    }

    fn base_config(&self) -> Option<Vec<u8>> {
        Checkpoint::open(&self.inputs.base)
            .ok()?
            .folder()
            .and_then(|f| std::fs::read(f.join("config.json")).ok())
    }
}

#[derive(Debug, clap::Args)]
pub struct AdaMergingArgs {
    #[command(flatten)]
    family: Family,
    /// One coefficient per model instead of one per model and layer.
    #[arg(long)]
    task_wise: bool,
    /// Every coefficient's starting value.
    #[arg(long, default_value_t = AdaMergingSettings::default().init)]
    init: f64,
    /// Where the final merge runs.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendArg,
}

pub fn adamerging(args: &AdaMergingArgs, job: &Job) -> Result<(), Failure> {
    let started = Instant::now();
    let (base, experts) = args.family.open()?;
    let settings = AdaMergingSettings {
        granularity: if args.task_wise {
            Granularity::Task
        } else {
            Granularity::Layer
        },
        init: args.init,
        adaptation: args
            .family
            .adaptation(AdaMergingSettings::default().adaptation),
    };
    let inputs = Unlabeled::demo_test()?;
    let learned = run_counting(Unit::Steps, job, || {
        adamerge(&base, &experts, VitConfig::DEMO, &inputs, &settings, job)
    })?;
    // Absolute paths: the recipe runs from wherever it is copied on this machine.
    let absolute = |p: &Path| -> Result<String, Failure> {
        Ok(std::fs::canonicalize(p)
            .with_context(|| format!("cannot resolve {}", p.display()))?
            .display()
            .to_string())
    };
    let models = args
        .family
        .inputs
        .models
        .iter()
        .map(|m| absolute(m))
        .collect::<Result<Vec<_>, _>>()?;
    let text = learned.recipe(&absolute(&args.family.inputs.base)?, &models);
    let out = &args.family.inputs.out;
    let file = out.join(mergescope_core::export::MERGEKIT_CONFIG_FILE);
    let plan = MergePlan::new(
        Recipe::from_yaml(&text, &file)?,
        &file,
        &PlanOptions {
            cwd: std::env::current_dir()?,
            random_seed: None,
            truncate_vocab: false,
        },
    )?;
    let backend = open_backend(args.backend)?;
    let options = ExportOptions {
        out_dir: out.clone(),
        shard_size: u64::MAX,
        force: false,
        card_scores: None,
    };
    super::progress::run_with_progress(job, || execute(&plan, &options, backend.as_ref(), job))?;
    let mut report = format!(
        "AdaMerging ({}), {} steps: summed entropy on every unlabeled input {:.4} -> {:.4}\n",
        learned.granularity.label(),
        learned.entropy.steps.len(),
        learned.entropy.before,
        learned.entropy.after,
    );
    for (model, lambdas) in args.family.inputs.models.iter().zip(&learned.lambdas) {
        let shown: Vec<String> = lambdas.iter().map(|l| format!("{l:.3}")).collect();
        report.push_str(&format!("  {}: {}\n", model.display(), shown.join(" ")));
    }
    report.push_str(&format!(
        "wrote {} with its recipe {} (open it in the Merge panel: mergescope --recipe {}) in \
         {:.1} s\n",
        out.display(),
        file.display(),
        file.display(),
        started.elapsed().as_secs_f64()
    ));
    print_out(&report)
}

#[derive(Debug, clap::Args)]
pub struct WemoeArgs {
    #[command(flatten)]
    family: Family,
    /// Task arithmetic's λ for what is not routed, and each router's starting output.
    #[arg(long, default_value_t = WemoeSettings::default().init_lambda)]
    lambda: f64,
    /// Share of the blocks' MLPs to route, most moved first.
    #[arg(long, default_value_t = WemoeSettings::default().critical)]
    critical: f64,
    /// Write the plain model each routed MLP's mean routing gives instead of the routed one.
    #[arg(long)]
    unload: bool,
}

pub fn wemoe(args: &WemoeArgs, job: &Job) -> Result<(), Failure> {
    let started = Instant::now();
    let (base, experts) = args.family.open()?;
    let settings = WemoeSettings {
        init_lambda: args.lambda,
        critical: args.critical,
        adaptation: args.family.adaptation(WemoeSettings::default().adaptation),
    };
    let config = VitConfig::DEMO;
    let inputs = Unlabeled::demo_test()?;
    let moe = run_counting(Unit::Steps, job, || {
        upscale(&base, &experts, config, &inputs, &settings, job)
    })?;
    let out = &args.family.inputs.out;
    let base_config = args.family.base_config();
    let mut report = format!(
        "WEMoE: {} of {} MLPs routed ({}), {} steps: summed entropy on every unlabeled input \
         {:.4} -> {:.4}\n",
        moe.routed.len(),
        config.layers,
        moe.routed.join(", "),
        moe.entropy.steps.len(),
        moe.entropy.before,
        moe.entropy.after,
    );
    if args.unload {
        let means = moe.write_unloaded(out, base_config.as_deref(), config, &inputs)?;
        for (prefix, routing) in &means {
            let shown: Vec<String> = routing.iter().map(|r| format!("{r:.3}")).collect();
            report.push_str(&format!("  {prefix} mean routing: {}\n", shown.join(" ")));
        }
    } else {
        moe.write(out, base_config.as_deref())?;
    }
    let (total, added) = moe.parameters();
    report.push_str(&format!(
        "wrote {} ({} parameters{}) in {:.1} s\n",
        out.display(),
        if args.unload { total - added } else { total },
        if args.unload {
            String::new()
        } else {
            format!(", {added} more than the base")
        },
        started.elapsed().as_secs_f64()
    ));
    print_out(&report)
}
