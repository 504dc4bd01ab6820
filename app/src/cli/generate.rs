//! `mergescope generate MODEL_OR_RECIPE --prompt "…"`: a language model's continuation of a
//! prompt, printed token by token; a recipe's merge is made in memory first. `--compare`
//! writes for the same prompt with the recipe's base, each model and the merge, one after
//! another, each loaded alone and dropped before the next.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use mergescope_core::backend::Cpu;
use mergescope_core::eval::ModelTensors;
use mergescope_core::eval::lm::LmFiles;
use mergescope_core::eval::lm::generate::{
    GenerateOptions, Generated, Sampling, Stop, TextCodec, files_for_plan, generate, load_model,
    runnable,
};
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::{Checkpoint, Job};

use super::{Failure, path_arg};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A language model's folder (config.json, tokenizer.json and weights) or a mergekit
    /// recipe (.yml/.yaml) whose merge is made in memory (config and tokenizer of its
    /// reference model and tokenizer source).
    #[arg(value_parser = path_arg)]
    target: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// New tokens at most (the end-of-text token or the model's context may stop it sooner).
    #[arg(long, default_value_t = 64, value_parser = super::count_in::<1, 100_000>)]
    max_tokens: usize,
    /// 0 (the default) takes the most likely token every time; above 0, tokens are drawn at
    /// this temperature from --seed's random stream.
    #[arg(long, default_value_t = 0.0, value_parser = temperature)]
    temperature: f32,
    /// When sampling: draw from the smallest set of tokens holding this much probability.
    #[arg(long, default_value_t = 1.0, value_parser = top_p)]
    top_p: f32,
    /// When sampling: draw from this many most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_parser = super::count_in::<0, 10_000_000>)]
    top_k: usize,
    /// When sampling: the seed (the same seed, the same text).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Generate with the recipe's base and each of its models too, before the merge.
    #[arg(long)]
    compare: bool,
    /// Seed of the random methods when merging a recipe.
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
}

fn temperature(s: &str) -> Result<f32, String> {
    let t: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=100.0).contains(&t) {
        Ok(t)
    } else {
        Err(format!("{t} is outside the allowed range 0 to 100"))
    }
}

fn top_p(s: &str) -> Result<f32, String> {
    let p: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(format!("{p} is outside the allowed range (0, 1]"))
    }
}

fn is_recipe(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling: if args.temperature > 0.0 {
            Sampling::Sampled {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                seed: args.seed,
            }
        } else {
            Sampling::Greedy
        },
    };
    if !is_recipe(&args.target) {
        if args.compare {
            return Err(anyhow::anyhow!(
                "--compare writes with a recipe's base, models and merge; pass a .yml recipe"
            )
            .into());
        }
        let checkpoint = Checkpoint::open(&args.target)?;
        let folder = checkpoint.folder().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: a language model is a folder with its config.json and tokenizer.json",
                args.target.display()
            )
        })?;
        let files = runnable(LmFiles::in_folders(folder, folder)?)?;
        let codec = TextCodec::load(&files)?;
        let name = crate::gui::state::model_name(&args.target);
        let tensors = ModelTensors::all_floats(&checkpoint);
        drop(checkpoint);
        return write(&files, &codec, tensors, &name, None, args, &options, job);
    }
    let plan = MergePlan::from_file(
        &args.target,
        &PlanOptions {
            cwd: std::env::current_dir()?,
            random_seed: Some(args.random_seed),
            truncate_vocab: false,
        },
    )?;
    let files = files_for_plan(&plan)?;
    let codec = TextCodec::load(&files)?;
    if args.compare {
        // One model in memory at a time: each is decoded, written with, and dropped.
        let family = &plan.family;
        let members = family
            .base
            .iter()
            .map(|b| (b, "base"))
            .chain(family.models.iter().map(|m| (m, "model")));
        for (member, role) in members {
            job.check_cancelled()?;
            let name = crate::gui::state::model_name(member.checkpoint.source());
            let tensors = ModelTensors::all_floats(&member.checkpoint);
            write(
                &files,
                &codec,
                tensors,
                &name,
                Some(role),
                args,
                &options,
                job,
            )?;
        }
    }
    job.check_cancelled()?;
    let merged = merge_in_memory(&plan, &Cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
    write(
        &files,
        &codec,
        merged,
        "merge",
        args.compare.then_some("merge"),
        args,
        &options,
        job,
    )
}

/// Loads `tensors` as the model, drops them, and prints its continuation as it comes, under
/// a heading when `role` is given; how fast it went goes to stderr.
#[allow(clippy::too_many_arguments)]
fn write(
    files: &LmFiles,
    codec: &TextCodec,
    tensors: ModelTensors,
    name: &str,
    role: Option<&str>,
    args: &Args,
    options: &GenerateOptions,
    job: &Job,
) -> Result<(), Failure> {
    let model = load_model(files, &tensors, name)?;
    drop(tensors);
    let mut out = std::io::stdout().lock();
    if let Some(role) = role {
        writeln!(out, "=== {role}: {name} ===")?;
    }
    let mut written = Ok(());
    let made = generate(
        &model,
        name,
        codec,
        &args.prompt,
        options,
        &job.cancel,
        |streamed| {
            if written.is_ok() {
                written = out
                    .write_all(streamed.piece.as_bytes())
                    .and_then(|()| out.flush());
            }
        },
    )?;
    written?;
    writeln!(out)?;
    out.flush()?;
    drop(out);
    eprintln!("{name}: {}", summary(&made));
    if made.stop == Stop::Cancelled {
        return Err(Failure::Cancelled);
    }
    Ok(())
}

/// How long it took and why it stopped, in one line.
fn summary(made: &Generated) -> String {
    format!(
        "{} tokens in {:.2} s ({:.0} tokens/s; the {}-token prompt read in {:.0} ms); {}",
        made.tokens.len(),
        made.seconds,
        made.tokens_per_second(),
        made.prompt_tokens,
        made.prompt_seconds * 1e3,
        made.stop.describe()
    )
}
