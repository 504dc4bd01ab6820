//! `mergescope bench-methods [--methods a,b] [--no-grid] [--json OUT] [--markdown OUT]`: every
//! merge method on the built-in demo family, at its defaults and at the best setting of a
//! small grid, as a table of per-domain test accuracy (core's `leaderboard`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::leaderboard::{LeaderboardError, Settings, run_leaderboard};

use super::progress::{Unit, run_counting};
use super::{Failure, path_arg, print_out};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these methods (comma-separated recipe names, `smile` for SMILE upscaling,
    /// `adamerging` and `wemoe` for the test-time merges); by default every one that can
    /// merge the demo family's four experts, and those three.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Only each method's defaults, without searching its grid.
    #[arg(long)]
    no_grid: bool,
    /// Seed of the random methods (DARE, DELLA).
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Optimiser steps of the test-time merges (AdaMerging, WEMoE) instead of their defaults
    /// (200): fewer make a quicker, rougher table.
    #[arg(long, value_parser = super::count_in::<1, 100_000>)]
    steps: Option<usize>,
    /// Where to write the demo family the rows merge (replaced; default: mergescope-bench-methods
    /// in the temporary folder). Its recipes/ folder is where each row's recipe runs from.
    #[arg(long, value_parser = path_arg)]
    dir: Option<PathBuf>,
    /// Also write every row (scores, setting and recipe) to this JSON file.
    #[arg(long, value_parser = path_arg)]
    json: Option<PathBuf>,
    /// Also write the table to this Markdown file.
    #[arg(long, value_parser = path_arg)]
    markdown: Option<PathBuf>,
}

pub fn run(args: &Args, job: &Job) -> Result<(), Failure> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("mergescope-bench-methods"));
    let settings = Settings {
        methods: args.methods.clone(),
        grid: !args.no_grid,
        random_seed: args.random_seed,
        steps: args.steps,
    };
    let started = Instant::now();
    let board = run_counting(Unit::Methods, job, || {
        run_leaderboard(&dir.join("family"), &settings, &Cpu, job, &mut |row| {
            eprintln!(
                "{:<18} {:<40} mean {:.1} %",
                row.method,
                row.setting,
                100.0 * row.mean()
            );
        })
    })
    .map_err(|e| match e {
        LeaderboardError::Cancelled => Failure::Cancelled,
        other => Failure::from(other),
    })?;
    eprintln!(
        "{} rows in {:.1} s; each grid's best setting was chosen on the training images, and \
         every row is scored on the test images (as `mergescope eval` scores it)",
        board.rows.len(),
        started.elapsed().as_secs_f64()
    );
    let markdown = board.markdown();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&board)?;
        mergescope_core::export::write_atomically(path, format!("{text}\n").as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        mergescope_core::export::write_atomically(path, markdown.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    print_out(&markdown)
}
