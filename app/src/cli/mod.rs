//! `mergescope` on the command line: `inspect`, `merge`, `analyze`, `eval`, `extract-lora`,
//! `generate`, `pareto`, `sweep`, `demo`, `synth`. Wherever a model path is taken, a PEFT LoRA
//! adapter folder or mergekit's `BASE+ADAPTER` is one too (`mergescope_core::lora`).
//!
//! User errors print one line (`error: ...`) naming the file, tensor or key and what to do,
//! and exit with status 1. Ctrl-C cancels a running job; cancelled jobs leave no output and
//! exit with status 130.

mod analyze;
mod backend;
mod bench_methods;
mod demo;
mod eval;
mod extract_lora;
mod generate;
mod inspect;
mod merge;
mod pareto;
mod progress;
mod sweep;
mod synth;
mod test_time;
mod upscale_smile;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mergescope_core::Job;
use mergescope_core::export::parse_shard_size;

/// What `--help` says after the options: the two faces of the program.
const AFTER_HELP: &str = "Without a command, mergescope opens the workbench window: on the \
built-in demo family, on the built-in language-model demo (--lm-demo), on the models given (the \
base first), or on a recipe's models (--recipe). Every command runs headless, with no window and no display, on the same \
mergekit-style YAML recipes the workbench saves and exports.";

/// A workbench for model merging: a window to see where fine-tunes differ from their base and
/// where they fight, tune a merge against a live preview and export it, and the same as
/// headless commands over mergekit recipes.
#[derive(Debug, Parser)]
#[command(
    name = "mergescope",
    version,
    about,
    long_about = None,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a command: open the workbench on these models (the base first, then the
    /// fine-tunes), or on the built-in demo family when none are given.
    #[arg(value_parser = path_arg)]
    models: Vec<PathBuf>,
    /// Without a command: the panel the workbench opens on (else the one it last showed).
    #[arg(long, value_enum)]
    panel: Option<crate::gui::app::Panel>,
    /// Without a command: where previews and exports run. `auto` uses the window's own GPU
    /// device when it is a hardware one.
    #[arg(long, value_enum, default_value_t)]
    backend: backend::BackendArg,
    /// Without a command: open the workbench on a mergekit recipe's models, with its settings
    /// in the Merge panel.
    #[arg(long, value_parser = path_arg, conflicts_with = "models")]
    recipe: Option<PathBuf>,
    /// Without a command: open the workbench on the built-in language-model demo family (a
    /// small Llama and fine-tunes on code, docs and legal text) with its task-arithmetic
    /// recipe, its merges previewed by perplexity on each domain's held-out text.
    #[arg(long, conflicts_with_all = ["models", "recipe"])]
    lm_demo: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List a checkpoint's tensors, dtypes, shapes, shards, architecture and layer count.
    Inspect(inspect::Args),
    /// Run a mergekit-style YAML recipe and write the merged model folder.
    Merge(merge::Args),
    /// Measure where fine-tunes differ from the base and where they interfere.
    Analyze(analyze::Args),
    /// Score a model, or a recipe's merge: the demo family's accuracy, retention, or your command.
    Eval(eval::Args),
    /// A PEFT LoRA adapter from the truncated SVD of a fine-tune's difference from its base.
    ExtractLora(extract_lora::Args),
    /// Continue a prompt with a language model, or a recipe's merge made in memory (--compare:
    /// its base and each model too), printed token by token.
    Generate(generate::Args),
    /// The front of merges over a recipe's per-model weights, and a preference → merge map.
    Pareto(pareto::Args),
    /// Merge and score a recipe over a grid of one to three of its parameters (an XY sweep).
    Sweep(sweep::Args),
    /// Generate a small example family and merge it: the quickest way to see mergescope work.
    Demo(demo::Args),
    /// Every merge method on the demo family, at its defaults and its best grid setting: a
    /// table of per-domain test accuracy.
    BenchMethods(bench_methods::Args),
    /// SMILE zero-shot upscaling: each chosen linear layer becomes the base plus a low-rank
    /// expert per fine-tune and a data-free router.
    UpscaleSmile(upscale_smile::Args),
    /// AdaMerging: task arithmetic's coefficients (per model and layer) learned by minimising
    /// the prediction entropy on unlabeled inputs; writes the merge and its recipe.
    Adamerging(test_time::AdaMergingArgs),
    /// WEMoE: the most moved MLPs become mixtures of the fine-tunes with a router trained on
    /// unlabeled inputs; writes the routed model, or its merge-and-unload.
    Wemoe(test_time::WemoeArgs),
    /// Generate a synthetic Llama-shaped model family (for benchmarks and experiments).
    Synth(synth::Args),
}

/// Mesa's Vulkan device-selection layer prints `error: XDG_RUNTIME_DIR is invalid or not set`
/// (twice) whenever a GPU is looked for outside a login session — a container, a CI runner, a
/// cron job. wgpu orders the adapters itself, so the layer adds nothing here but the noise;
/// it is turned off with its own switch where that variable is missing.
fn quiet_vulkan_device_select() {
    if cfg!(target_os = "linux")
        && std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called first thing in `main`, before any thread exists, so nothing can read
        // the environment while it changes.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    }
}

/// How a command ended, beyond success.
#[derive(Debug)]
pub enum Failure {
    /// Something the user can fix; printed as one line.
    User(anyhow::Error),
    Cancelled,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        if e.downcast_ref::<mergescope_core::job::Cancelled>()
            .is_some()
            || matches!(
                e.downcast_ref::<mergescope_core::merge::engine::MergeError>(),
                Some(mergescope_core::merge::engine::MergeError::Cancelled(_))
            )
            || matches!(
                e.downcast_ref::<mergescope_core::analysis::AnalysisError>(),
                Some(mergescope_core::analysis::AnalysisError::Cancelled(_))
            )
            || matches!(
                e.downcast_ref::<mergescope_core::pareto::ParetoError>(),
                Some(mergescope_core::pareto::ParetoError::Cancelled)
            )
            || matches!(
                e.downcast_ref::<mergescope_core::synth::SynthError>(),
                Some(mergescope_core::synth::SynthError::Cancelled(_))
            )
            || matches!(
                e.downcast_ref::<mergescope_core::test_time::AdaptError>(),
                Some(mergescope_core::test_time::AdaptError::Cancelled)
            )
        {
            Self::Cancelled
        } else {
            Self::User(e)
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    quiet_vulkan_device_select();
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let job = Job::default();
    let Some(command) = cli.command else {
        // Without a handler Ctrl-C ends the process as it would any program.
        let interrupt = crate::gui::interrupt::Interrupt::install().ok();
        return match crate::gui::run(crate::gui::Startup {
            paths: cli.models,
            recipe: cli.recipe,
            lm_demo: cli.lm_demo,
            panel: cli.panel,
            backend: cli.backend.into(),
            interrupt: interrupt.clone(),
        }) {
            // As a shell reports a program ended by Ctrl-C.
            Ok(()) if interrupt.is_some_and(|i| i.requested()) => ExitCode::from(130),
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "error: cannot open the window: {}",
                    mergescope_core::one_line(&e.to_string())
                );
                ExitCode::from(1)
            }
        };
    };
    let cancel = job.cancel.clone();
    // Ignoring a failure here only means Ctrl-C kills the process instead of cancelling.
    let _ = ctrlc::set_handler(move || cancel.cancel());
    let result = match command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Merge(args) => merge::run(&args, &job),
        Command::Analyze(args) => analyze::run(&args, &job),
        Command::Eval(args) => eval::run(&args, &job),
        Command::ExtractLora(args) => extract_lora::run(&args, &job),
        Command::Generate(args) => generate::run(&args, &job),
        Command::Pareto(args) => pareto::run(&args, &job),
        Command::Sweep(args) => sweep::run(&args, &job),
        Command::Demo(args) => demo::run(&args, &job),
        Command::BenchMethods(args) => bench_methods::run(&args, &job),
        Command::UpscaleSmile(args) => upscale_smile::run(&args),
        Command::Adamerging(args) => test_time::adamerging(&args, &job),
        Command::Wemoe(args) => test_time::wemoe(&args, &job),
        Command::Synth(args) => synth::run(&args, &job),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Cancelled) => {
            eprintln!("cancelled; nothing was written");
            ExitCode::from(130)
        }
        Err(Failure::User(e)) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            // Core errors already carry their cause in their message; print only the top line.
            eprintln!("error: {}", mergescope_core::one_line(&e.to_string()));
            ExitCode::from(1)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// A bug should still end in one readable line, not a backtrace.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!(
            "internal error{location}: {}; this is a bug in mergescope, please report it",
            mergescope_core::one_line(&message)
        );
    }));
}

/// Writes to stdout; a closed pipe (`mergescope inspect x | head`) ends the command quietly.
fn print_out(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Failure::from)
}

/// A base, its fine-tunes and a new folder to write into: what the commands that build one
/// model from a family (`upscale-smile`, `adamerging`, `wemoe`) read.
#[derive(Debug, clap::Args)]
struct BaseAndFineTunes {
    /// The base model (file, index or folder).
    #[arg(long, value_parser = path_arg)]
    base: PathBuf,
    /// Its fine-tunes.
    #[arg(required = true, value_parser = path_arg)]
    models: Vec<PathBuf>,
    /// Where to write the result (a new folder: model.safetensors and config.json).
    #[arg(long, value_parser = path_arg)]
    out: PathBuf,
}

/// `PATH` arguments are plain paths.
fn path_arg(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// One warning line when the job met NaN or ±Inf in its inputs (or made them).
fn warn_non_finite(job: &Job) {
    let found = job.non_finite.snapshot();
    if !found.is_empty() {
        eprintln!("warning: {}", mergescope_core::nonfinite::summary(&found));
    }
}

/// A whole number within `MIN..=MAX` (counts and limits of the commands' options): one line
/// naming the allowed range instead of hours of work on a typo.
fn count_in<const MIN: u64, const MAX: u64>(s: &str) -> Result<usize, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if (MIN..=MAX).contains(&n) {
        usize::try_from(n).map_err(|_| format!("{n} is too large for this machine"))
    } else {
        Err(format!("{n} is outside the allowed range {MIN} to {MAX}"))
    }
}

/// [`count_in`] for `u64` options (seconds).
fn seconds_in<const MIN: u64, const MAX: u64>(s: &str) -> Result<u64, String> {
    count_in::<MIN, MAX>(s).map(|n| n as u64)
}

/// A merge coefficient on the command line: finite, within the recipes' range for weights.
fn coefficient(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number"))?;
    let bounds = mergescope_core::merge::params::Bounds::of("task_arithmetic", "weight")
        .expect("weights are bounded");
    if bounds.contains(x) {
        Ok(x)
    } else {
        Err(format!("{x} is outside the allowed range {bounds}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lm_demo_opens_the_window_on_the_language_model_demo_on_any_panel() {
        let cli = Cli::try_parse_from(["mergescope", "--lm-demo", "--panel", "merge"]).unwrap();
        assert!(cli.lm_demo && cli.command.is_none() && cli.models.is_empty());
        assert_eq!(cli.panel, Some(crate::gui::app::Panel::Merge));
        assert!(!Cli::try_parse_from(["mergescope"]).unwrap().lm_demo);
        // It names the models to open: none may be given besides, nor a recipe.
        for conflicting in [
            &["mergescope", "--lm-demo", "base", "a"][..],
            &["mergescope", "--lm-demo", "--recipe", "r.yml"],
        ] {
            let e = Cli::try_parse_from(conflicting).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        }
    }
}
