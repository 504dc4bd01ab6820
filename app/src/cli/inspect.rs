//! `mergescope inspect PATH [--json]`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use mergescope_core::Checkpoint;
use mergescope_core::checkpoint::Storage;
use mergescope_core::family::dtype_name;
use mergescope_core::layout::{LayerKey, Layout};

use super::{Failure, path_arg, print_out};
use crate::gui::text::{human_bytes, human_count};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .safetensors file, a *.safetensors.index.json, or a Hugging Face model folder.
    #[arg(value_parser = path_arg)]
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let checkpoint = Checkpoint::open(&args.path)?;
    let layout = Layout::of_checkpoint(&checkpoint);
    let text = if args.json {
        let mut text = serde_json::to_string_pretty(&as_json(&checkpoint, &layout))?;
        text.push('\n');
        text
    } else {
        as_text(&checkpoint, &layout)
    };
    print_out(&text)
}

fn storage_json(storage: &Storage) -> serde_json::Value {
    match storage {
        Storage::SingleFile(p) => serde_json::json!({"kind": "single_file", "path": p}),
        Storage::Sharded(p) => serde_json::json!({"kind": "sharded", "index": p}),
    }
}

fn as_json(ckpt: &Checkpoint, layout: &Layout) -> serde_json::Value {
    let shards: Vec<_> = ckpt
        .shards()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "path": s.path(),
                "file_bytes": s.len(),
                "tensors": ckpt.tensors().iter().filter(|t| t.shard == i).count(),
                "metadata": s.metadata(),
            })
        })
        .collect();
    let tensors: Vec<_> = ckpt
        .tensors()
        .iter()
        .map(|t| {
            let key = LayerKey::parse(&t.name);
            serde_json::json!({
                "name": t.name,
                "dtype": dtype_name(t.dtype),
                "shape": t.shape,
                "shard": t.shard,
                "stack": key.stack,
                "block": key.block,
                "module": key.module,
            })
        })
        .collect();
    serde_json::json!({
        "path": ckpt.source(),
        "storage": storage_json(ckpt.storage()),
        "architecture": layout.architecture,
        "config_architecture": ckpt.config().and_then(|c| c.architecture()),
        "num_layers": layout.num_layers(),
        "stacks": layout.stacks,
        "parameters": ckpt.parameter_count(),
        "data_bytes": ckpt.data_bytes(),
        "dtypes": dtype_counts(ckpt),
        "shards": shards,
        "tensors": tensors,
    })
}

fn dtype_counts(ckpt: &Checkpoint) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in ckpt.tensors() {
        *counts.entry(dtype_name(t.dtype)).or_default() += 1;
    }
    counts
}

fn as_text(ckpt: &Checkpoint, layout: &Layout) -> String {
    let mut s = String::new();
    let storage = match ckpt.storage() {
        Storage::SingleFile(p) => format!("single file {}", p.display()),
        Storage::Sharded(p) => format!("{} shards listed in {}", ckpt.shards().len(), p.display()),
    };
    let arch = match ckpt.config().and_then(|c| c.architecture()) {
        Some(name) => format!("{} ({name})", layout.architecture.label()),
        None => layout.architecture.label().to_owned(),
    };
    let dtypes = dtype_counts(ckpt)
        .into_iter()
        .map(|(d, n)| format!("{d} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(s, "{}", ckpt.source().display());
    let _ = writeln!(s, "  storage:      {storage}");
    let _ = writeln!(s, "  architecture: {arch}, {} layers", layout.num_layers());
    let _ = writeln!(
        s,
        "  tensors:      {} ({} parameters = {}, {})",
        ckpt.tensors().len(),
        human_count(ckpt.parameter_count()),
        group_digits(ckpt.parameter_count()),
        human_bytes(ckpt.data_bytes())
    );
    let _ = writeln!(s, "  dtypes:       {dtypes}");
    let _ = writeln!(s, "  shards:");
    for (i, shard) in ckpt.shards().iter().enumerate() {
        let count = ckpt.tensors().iter().filter(|t| t.shard == i).count();
        let name = shard
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "    [{i}] {name}  {count} tensors, {}",
            human_bytes(shard.len() as u64)
        );
    }
    let width = ckpt
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        s,
        "  {:width$}  {:5}  {:18}  shard  module",
        "name", "dtype", "shape"
    );
    for t in ckpt.tensors() {
        let key = LayerKey::parse(&t.name);
        let shape = format!("{:?}", t.shape);
        let _ = writeln!(
            s,
            "  {:width$}  {:5}  {shape:18}  {:>5}  {}",
            t.name,
            dtype_name(t.dtype),
            t.shard,
            key.module.label()
        );
    }
    s
}

fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
