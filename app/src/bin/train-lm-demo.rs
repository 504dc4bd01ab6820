//! Trains the built-in language-model demo family — a byte-level BPE tokenizer, a small
//! Llama-shaped base and one fine-tune per text domain (Python's documentation, Python source,
//! software licences) — and writes it as Hugging Face folders, with the held-out texts, merge
//! recipes and the perplexity matrix:
//!
//!     cargo run --release --bin train-lm-demo -- --out assets/lm-demo
//!
//! Seeded and CPU-only: the same seed and thread count give the same files.

#![allow(clippy::print_stdout)] // the perplexity matrix is this program's output

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::lm::perplexity::{Perplexity, TextDomains};
use mergescope_core::eval::lm::train::{
    LmTrainOptions, encode_documents, read_domains, train, train_tokenizer, write_model,
};
use mergescope_core::eval::{Candidate, Fidelity, Objective as _};
use mergescope_core::export::ExportOptions;
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};

#[derive(Debug, Parser)]
struct Args {
    /// Where to write base/, one folder per domain, texts/, recipes/ and PERPLEXITY.md.
    #[arg(long, default_value = "assets/lm-demo")]
    out: PathBuf,
    /// The shipped text: one folder per domain with train.txt.gz and eval.txt.gz.
    #[arg(long, default_value = "assets/data/text")]
    data: PathBuf,
    #[arg(long, default_value_t = LmTrainOptions::default().seed)]
    seed: u64,
    #[arg(long, default_value_t = LmTrainOptions::default().vocab_size)]
    vocab_size: usize,
    #[arg(long, default_value_t = LmTrainOptions::default().base_steps)]
    base_steps: usize,
    #[arg(long, default_value_t = LmTrainOptions::default().expert_steps)]
    expert_steps: usize,
    #[arg(long, default_value_t = LmTrainOptions::default().base_share)]
    base_share: f64,
    #[arg(long, default_value_t = LmTrainOptions::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = LmTrainOptions::default().base_lr)]
    base_lr: f64,
    #[arg(long, default_value_t = LmTrainOptions::default().expert_lr)]
    expert_lr: f64,
}

/// A shipped merge's name, comment, method, per-model parameters, the recipe's own
/// parameters and whether it names the base.
type Recipe = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    bool,
);

/// The shipped merges of the experts; written next to the models so users can run them.
const RECIPES: [Recipe; 3] = [
    (
        "linear",
        "The plain average of the experts (Model Soups).",
        "linear",
        "{weight: 1.0}",
        None,
        false,
    ),
    (
        "task_arithmetic",
        "The base plus 0.4 × the sum of the experts' task vectors.",
        "task_arithmetic",
        "{weight: 1.0}",
        Some("{lambda: 0.4}"),
        true,
    ),
    (
        "ties",
        "TIES: top half of each task vector, elected signs, disjoint mean, scaled by 0.4.",
        "ties",
        "{weight: 1.0, density: 0.5}",
        Some("{lambda: 0.4}"),
        true,
    ),
];

fn recipe_text(
    domains: &[String],
    comment: &str,
    method: &str,
    params: &str,
    globals: Option<&str>,
    base: bool,
) -> String {
    let mut text = format!("# {comment}\nmerge_method: {method}\n");
    if base {
        text.push_str("base_model: ../base\n");
    }
    if let Some(globals) = globals {
        let _ = writeln!(text, "parameters: {globals}");
    }
    text.push_str("models:\n");
    for domain in domains {
        let _ = write!(text, "  - model: ../{domain}\n    parameters: {params}\n");
    }
    text.push_str("dtype: float32\n");
    text
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = LmTrainOptions {
        seed: args.seed,
        vocab_size: args.vocab_size,
        base_steps: args.base_steps,
        expert_steps: args.expert_steps,
        base_share: args.base_share,
        batch: args.batch,
        base_lr: args.base_lr,
        expert_lr: args.expert_lr,
        ..LmTrainOptions::default()
    };
    let started = Instant::now();
    let texts = read_domains(&args.data).with_context(|| args.data.display().to_string())?;
    let documents: Vec<&str> = texts
        .iter()
        .flat_map(|d| d.train.iter().map(String::as_str))
        .collect();
    let tokenizer = train_tokenizer(&documents, options.vocab_size)
        .map_err(|e| anyhow::anyhow!("training the tokenizer: {e}"))?;
    let tokenizer_json = tokenizer
        .to_string(false)
        .map_err(|e| anyhow::anyhow!("saving the tokenizer: {e}"))?;
    eprintln!(
        "tokenizer: byte-level BPE, {} tokens ({:.1} s)",
        tokenizer.get_vocab_size(true),
        started.elapsed().as_secs_f64()
    );
    let mut streams = Vec::new();
    for domain in &texts {
        let tokens = encode_documents(&tokenizer, &domain.train)
            .map_err(|e| anyhow::anyhow!("tokenizing {}: {e}", domain.name))?;
        let bytes: usize = domain.train.iter().map(String::len).sum();
        eprintln!(
            "{}: {} training tokens ({:.2} bytes a token), held out {} bytes",
            domain.name,
            tokens.len(),
            bytes as f64 / tokens.len() as f64,
            domain.eval_text().len()
        );
        streams.push((domain.name.clone(), tokens));
    }
    let training = Instant::now();
    let family = train(&streams, &options, &mut |line| eprintln!("{line}"))?;
    let train_seconds = training.elapsed().as_secs_f64();
    eprintln!("trained in {train_seconds:.0} s");

    write_model(
        &args.out.join("base"),
        &options,
        &family.base,
        &tokenizer_json,
    )?;
    for (domain, weights) in &family.experts {
        write_model(&args.out.join(domain), &options, weights, &tokenizer_json)?;
    }
    let texts_dir = args.out.join("texts");
    std::fs::create_dir_all(&texts_dir)?;
    for domain in &texts {
        std::fs::write(
            texts_dir.join(format!("{}.txt", domain.name)),
            domain.eval_text(),
        )?;
    }
    let names: Vec<String> = texts.iter().map(|d| d.name.clone()).collect();
    let recipes = args.out.join("recipes");
    std::fs::create_dir_all(&recipes)?;
    for (name, comment, method, params, globals, base) in RECIPES {
        std::fs::write(
            recipes.join(format!("{name}.yml")),
            recipe_text(&names, comment, method, params, globals, base),
        )?;
    }

    let table = perplexity_table(&args.out, &names, &options)?;
    let text = format!(
        "Perplexity (lower is better) of the language-model demo family on each domain's held-out \
         text (`texts/*.txt`: {}), whole texts in windows of {} tokens moving by {}, written by\n\
         `cargo run --release --bin train-lm-demo -- --out assets/lm-demo --seed {}`\n\
         (training took {:.0} s on this machine's CPU).\n\n{table}",
        domain_sizes(&texts_dir, &args.out.join("base/tokenizer.json"))?,
        options.context,
        options.context / 2,
        args.seed,
        train_seconds
    );
    std::fs::write(args.out.join("PERPLEXITY.md"), &text).context("writing PERPLEXITY.md")?;
    println!("{text}");
    Ok(())
}

/// "code 4,010 tokens, …" of the held-out texts.
fn domain_sizes(texts: &Path, tokenizer: &Path) -> anyhow::Result<String> {
    let domains = TextDomains::load(texts, tokenizer)?;
    Ok(domains
        .domains
        .iter()
        .map(|(name, tokens)| format!("{name} {} tokens", tokens.len()))
        .collect::<Vec<_>>()
        .join(", "))
}

/// The markdown table of every member's and every shipped merge's perplexity per domain.
fn perplexity_table(
    out: &Path,
    domains: &[String],
    options: &LmTrainOptions,
) -> anyhow::Result<String> {
    let base = out.join("base");
    let objective = Perplexity {
        domains: TextDomains::load(&out.join("texts"), &base.join("tokenizer.json"))?,
        config: options.config_json(),
        config_path: base.join("config.json"),
        window: options.context,
        stride: options.context / 2,
    };
    let mut table = format!(
        "| model | {} | mean |\n|---|{}---|\n",
        domains.join(" | "),
        "---|".repeat(domains.len())
    );
    let mut row = |label: &str, folder: &Path| -> anyhow::Result<()> {
        let scores = objective.evaluate(
            &Candidate {
                folder: Some(folder),
                tensors: None,
            },
            Fidelity::Full,
        )?;
        let cells: Vec<String> = domains
            .iter()
            .chain(std::iter::once(&"mean".to_owned()))
            .map(|d| format!("{:.2}", scores[&format!("{d}/perplexity")]))
            .collect();
        let _ = writeln!(table, "| {label} | {} |", cells.join(" | "));
        Ok(())
    };
    row("base", &base)?;
    for domain in domains {
        row(&format!("expert: {domain}"), &out.join(domain))?;
    }
    let scratch =
        std::env::temp_dir().join(format!("mergescope-train-lm-demo-{}", std::process::id()));
    for (name, ..) in RECIPES {
        let plan = MergePlan::from_file(
            &out.join("recipes").join(format!("{name}.yml")),
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
        row(&format!("merge: {name}"), &merged)?;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(table)
}
