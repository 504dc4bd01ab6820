//! `mergescope synth --out DIR`: a synthetic Llama-shaped family.

use std::path::PathBuf;
use std::time::Instant;

use mergescope_core::Job;
use mergescope_core::dtype::FloatType;
use mergescope_core::export::format_size;
use mergescope_core::synth::{LlamaShape, SynthFamily};

use super::progress::run_with_progress;
use super::{Failure, path_arg, print_out};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Preset {
    /// hidden 128, 6 layers, vocab 1024: a few MB per model.
    Tiny,
    /// hidden 2048, intermediate 5120, 16 layers, vocab 32000: ~1.6 GB per model in bf16.
    Bench1b,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder that receives base/, ft_1/, ft_2/, ...
    #[arg(long, value_parser = path_arg)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "tiny")]
    preset: Preset,
    /// Number of fine-tunes besides the base.
    #[arg(long, default_value_t = 3, value_parser = super::count_in::<1, 64>)]
    finetunes: usize,
    /// float32, float16 or bfloat16.
    #[arg(long, default_value = "bfloat16", value_parser = parse_float_type)]
    dtype: FloatType,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Largest shard, e.g. 5GB or 500MB.
    #[arg(long, default_value = "5GB", value_parser = super::parse_shard_size)]
    shard_size: u64,
    /// Replace existing model folders.
    #[arg(long)]
    force: bool,
}

fn parse_float_type(s: &str) -> Result<FloatType, String> {
    FloatType::from_recipe_name(s)
        .ok_or_else(|| format!("`{s}` is not float32, float16 or bfloat16"))
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let started = Instant::now();
    let shape = match args.preset {
        Preset::Tiny => LlamaShape::TINY,
        Preset::Bench1b => LlamaShape::BENCH_1B,
    };
    let family = SynthFamily {
        shape,
        finetunes: args.finetunes,
        dtype: args.dtype,
        seed: args.seed,
        shard_size: args.shard_size,
    };
    let folders = run_with_progress(job, || family.write(&args.out, args.force, job))?;
    print_out(&format!(
        "wrote {} models of {} each under {} in {:.1} s\n",
        folders.len(),
        format_size(family.model_bytes()),
        args.out.display(),
        started.elapsed().as_secs_f64()
    ))
}
