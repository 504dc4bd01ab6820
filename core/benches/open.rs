//! How long opening a checkpoint takes: a Llama-2-7B-shaped sharded folder (13.5 GB of bf16 in
//! three 5 GB shards, written as sparse files so the benchmark needs no disk space), opened
//! repeatedly. Opening maps the shards and parses headers only, so it must stay far below 50 ms.
//!
//!     cargo bench -p mergescope-core --bench open

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::collections::BTreeMap;
use std::time::Instant;

use mergescope_core::checkpoint::Checkpoint;
use mergescope_core::dtype::FloatType;
use mergescope_core::export::{Export, ExportOptions, OutputTensor, format_size};
use mergescope_core::synth::LlamaShape;

fn main() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let folder = dir.path().join("llama-7b");
    let shape = LlamaShape::LLAMA_7B;
    let tensors: Vec<OutputTensor> = shape
        .tensors()
        .into_iter()
        .map(|(name, shape)| OutputTensor {
            name,
            dtype: FloatType::BF16.dtype(),
            shape,
        })
        .collect();
    let count = tensors.len();
    let mut export = Export::begin_sparse(&ExportOptions::new(&folder), tensors, BTreeMap::new())
        .expect("export");
    export
        .add_file(
            "config.json",
            &serde_json::to_vec(&shape.config_json(FloatType::BF16)).expect("json"),
        )
        .expect("config");
    for _ in 0..count {
        export.skip_next().expect("sparse tensor");
    }
    let summary = export.finish().expect("finish");

    let mut times = Vec::new();
    let mut opened = None;
    for _ in 0..50 {
        let start = Instant::now();
        let checkpoint = Checkpoint::open(&folder).expect("open");
        times.push(start.elapsed().as_secs_f64() * 1e3);
        opened = Some(checkpoint);
    }
    let checkpoint = opened.expect("opened at least once");
    times.sort_by(f64::total_cmp);
    println!(
        "open {}: {} tensors, {} shards, {} parameters, {}",
        folder.display(),
        checkpoint.tensors().len(),
        summary.shards.len(),
        checkpoint.parameter_count(),
        format_size(checkpoint.data_bytes())
    );
    println!(
        "Checkpoint::open over 50 runs: min {:.2} ms, median {:.2} ms, max {:.2} ms",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
}
