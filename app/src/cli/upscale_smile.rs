//! `mergescope upscale-smile --base B --out DIR [--rank k] [--gate-k g] [--top-k t]
//! [--modules a,b] MODELS…`: SMILE zero-shot upscaling (core's `smile`): each chosen linear
//! layer becomes the base layer plus one low-rank expert per fine-tune and a data-free router;
//! the rest is the fine-tunes' average. `mergescope eval DIR` scores the result.

use std::time::Instant;

use mergescope_core::Checkpoint;
use mergescope_core::smile::{SmileSettings, upscale};

use super::{BaseAndFineTunes, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    family: BaseAndFineTunes,
    /// Rank of each expert (the top k singular triplets of its change to the layer).
    #[arg(long, default_value_t = SmileSettings::default().rank, value_parser = super::count_in::<1, 65_536>)]
    rank: usize,
    /// Rank of the subspace each expert's router projects a token on.
    #[arg(long, default_value_t = SmileSettings::default().gate_k, value_parser = super::count_in::<1, 65_536>)]
    gate_k: usize,
    /// Experts each token is routed to.
    #[arg(long, default_value_t = SmileSettings::default().top_k, value_parser = super::count_in::<1, 1024>)]
    top_k: usize,
    /// The linear layers to upscale, by their name after the block index (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = SmileSettings::default().modules)]
    modules: Vec<String>,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let started = Instant::now();
    let BaseAndFineTunes { base, models, out } = &args.family;
    let base = Checkpoint::open(base)?;
    let experts = models
        .iter()
        .map(Checkpoint::open)
        .collect::<Result<Vec<_>, _>>()?;
    let settings = SmileSettings {
        rank: args.rank,
        gate_k: args.gate_k,
        top_k: args.top_k,
        modules: args.modules.clone(),
    };
    let upscaled = upscale(&base, &experts, &settings)?;
    let config = base
        .folder()
        .and_then(|f| std::fs::read(f.join("config.json")).ok());
    upscaled.write(out, config.as_deref())?;
    let (total, added) = upscaled.parameters();
    eprintln!(
        "SMILE: {} layers upscaled with {} experts of rank {} (router rank {}, top-{}); {total} \
         parameters, {added} more than the base ({:.1} %); wrote {} in {:.2} s",
        upscaled.layers.len(),
        upscaled.experts,
        settings.rank,
        settings.gate_k,
        settings.top_k,
        100.0 * added as f64 / (total - added) as f64,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
