//! Inputs that change on disk while they are open (memory-mapped): truncated, rewritten in
//! place, replaced. Never a SIGBUS, never data from a changed file in a result, and the
//! analysis cache never serves the report of the old weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mergescope_core::analysis::{AnalysisError, AnalysisSettings, analyze_cached};
use mergescope_core::backend::Cpu;
use mergescope_core::export::ExportOptions;
use mergescope_core::family::{Family, Member};
use mergescope_core::merge::engine::{MergeError, execute};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::{CHANGED_ON_DISK, Checkpoint, CheckpointError, Job};
use safetensors::{Dtype, tensor::TensorView as StView};

const ROWS: usize = 64;
const COLS: usize = 256;

/// A two-layer model whose tensors span many pages (so a truncation cuts some off).
fn write_model(dir: &Path, shift: f32) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let names = [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.self_attn.q_proj.weight",
    ];
    let data: Vec<(String, Vec<u8>)> = names
        .iter()
        .enumerate()
        .map(|(t, name)| {
            let bytes = (0..ROWS * COLS)
                .flat_map(|i| ((i as f32 * 0.001 + t as f32).sin() + shift).to_le_bytes())
                .collect();
            ((*name).to_owned(), bytes)
        })
        .collect();
    let views: HashMap<String, StView<'_>> = data
        .iter()
        .map(|(n, b)| {
            (
                n.clone(),
                StView::new(Dtype::F32, vec![ROWS, COLS], b).unwrap(),
            )
        })
        .collect();
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    path
}

fn family(dir: &Path) -> (PathBuf, PathBuf) {
    let base = write_model(&dir.join("base"), 0.0);
    let ft = write_model(&dir.join("ft"), 0.01);
    (base, ft)
}

fn plan(dir: &Path) -> MergePlan {
    let recipe = dir.join("recipe.yml");
    std::fs::write(
        &recipe,
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft\n    parameters:\n      weight: 0.5\n",
    )
    .unwrap();
    MergePlan::from_file(
        &recipe,
        &PlanOptions {
            cwd: dir.to_path_buf(),
            random_seed: Some(0),
            truncate_vocab: false,
        },
    )
    .unwrap()
}

fn assert_changed(err: &dyn std::fmt::Display, file: &Path) {
    let text = err.to_string();
    assert!(text.contains(CHANGED_ON_DISK), "{text}");
    assert!(text.contains(&file.display().to_string()), "{text}");
}

#[test]
fn reading_a_truncated_map_is_an_error_not_a_sigbus() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), 0.0);
    let checkpoint = Checkpoint::open(&path).unwrap();
    assert!(checkpoint.verify_unchanged().is_ok());
    let last = checkpoint.tensors().len() - 1;
    // Cut the file to its header and first tensor: the last tensor's pages are gone.
    let keep = checkpoint.tensors()[0].end as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(keep)
        .unwrap();
    // Without the guard this read kills the process with SIGBUS.
    let values = checkpoint.view(last).to_f32_vec();
    assert_eq!(values.len(), ROWS * COLS);
    let err = checkpoint.verify_tensor(last).unwrap_err();
    assert!(matches!(err, CheckpointError::ChangedOnDisk { .. }));
    assert_changed(&err, &path);
}

#[test]
fn a_merge_stops_on_an_input_truncated_after_planning_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, ft) = family(dir.path());
    let plan = plan(dir.path());
    let before = std::fs::metadata(&ft).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&ft)
        .unwrap()
        .set_len(before / 2)
        .unwrap();
    let out = dir.path().join("merged");
    let err = execute(&plan, &ExportOptions::new(&out), &Cpu, &Job::default()).unwrap_err();
    assert!(matches!(err, MergeError::Input(_)), "{err}");
    assert_changed(&err, &ft);
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_merge_stops_on_an_input_rewritten_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = family(dir.path());
    let plan = plan(dir.path());
    // Same size, different bytes, a later modification time.
    let mut bytes = std::fs::read(&base).unwrap();
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&1.0f32.to_le_bytes());
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&base)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    let err = execute(
        &plan,
        &ExportOptions::new(dir.path().join("merged")),
        &Cpu,
        &Job::default(),
    )
    .unwrap_err();
    assert_changed(&err, &base);
}

#[test]
fn a_replaced_input_is_reported_and_its_old_map_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_model(dir.path(), 0.0);
    let checkpoint = Checkpoint::open(&path).unwrap();
    let old = checkpoint.view(0).to_f32_vec();
    let other = write_model(&dir.path().join("other"), 5.0);
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(
        checkpoint.view(0).to_f32_vec(),
        old,
        "the mapped inode is intact"
    );
    let err = checkpoint.verify_unchanged().unwrap_err();
    assert!(err.to_string().contains("replaced"), "{err}");
}

/// The analysis cache keys on the weights, not only on headers and sizes: a file edited in
/// place with its size and modification time restored is analysed again.
#[test]
fn the_analysis_cache_never_serves_a_report_for_changed_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (base, ft) = family(dir.path());
    let cache = dir.path().join("cache");
    let member = |path: &Path| Member {
        label: path.parent().unwrap().display().to_string(),
        checkpoint: Arc::new(Checkpoint::open(path).unwrap()),
    };
    let open = || Family {
        base: Some(member(&base)),
        models: vec![member(&ft)],
    };
    let settings = AnalysisSettings::new(1);
    let job = Job::default();
    let (first, cached) = analyze_cached(&open(), &settings, &job, Some(&cache)).unwrap();
    assert!(!cached);
    let (_, cached) = analyze_cached(&open(), &settings, &job, Some(&cache)).unwrap();
    assert!(cached, "an unchanged family is answered from the cache");

    // Edit the first data block of the fine-tune, keeping its size and modification time.
    let modified = std::fs::metadata(&ft).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&ft).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for b in &mut bytes[8 + header..8 + header + 4096] {
        *b = 0;
    }
    std::fs::write(&ft, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&ft)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let (second, cached) = analyze_cached(&open(), &settings, &job, Some(&cache)).unwrap();
    assert!(!cached, "changed weights must be analysed again");
    assert_ne!(first.whole_model.metrics, second.whole_model.metrics);

    // A family opened before the change is refused rather than matched to the old report.
    let stale = open();
    std::fs::write(&ft, std::fs::read(&base).unwrap()).unwrap();
    let err = analyze_cached(&stale, &settings, &job, Some(&cache)).unwrap_err();
    assert!(matches!(err, AnalysisError::Input(_)), "{err}");
}
