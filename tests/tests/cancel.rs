//! Cancelling a running merge leaves no output folder and no staging folder.

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::dtype::Dtype;
use mergescope_core::export::ExportOptions;
use mergescope_core::merge::engine::{MergeError, execute};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_tests::fixture::{listing, llama_tensors, write_model_folder};

#[test]
fn cancel_mid_export_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_model_folder(
        &dir.path().join("base"),
        &llama_tensors(6, 0),
        Dtype::F32,
        6,
    );
    write_model_folder(&dir.path().join("ft"), &llama_tensors(6, 1), Dtype::F32, 6);
    let recipe = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft\n    parameters: {weight: 0.5}\n";
    std::fs::write(dir.path().join("r.yml"), recipe).unwrap();
    let options = PlanOptions {
        cwd: dir.path().to_path_buf(),
        random_seed: None,
        truncate_vocab: false,
    };
    let plan = MergePlan::from_file(&dir.path().join("r.yml"), &options).unwrap();
    let before = listing(dir.path());

    let job = Job::default();
    // Cancel as soon as the first tensor has been written, from the writing thread itself, so
    // the cancellation lands mid-export deterministically.
    let cancel = job.cancel.clone();
    let progress = job.progress.clone();
    job.progress.set_observer(move || {
        if progress.snapshot().done > 0 {
            cancel.cancel();
        }
    });
    let result = execute(
        &plan,
        &ExportOptions::new(dir.path().join("merged")),
        &Cpu,
        &job,
    );
    assert!(
        matches!(result, Err(MergeError::Cancelled(_))),
        "{result:?}"
    );
    assert!(job.progress.snapshot().done > 0, "the export had started");
    assert!(
        job.progress.snapshot().done < plan.output_bytes(),
        "and had not finished"
    );
    assert_eq!(
        listing(dir.path()),
        before,
        "nothing is left: no output, no staging folder"
    );

    // The same plan runs to completion with a fresh job.
    let summary = execute(
        &plan,
        &ExportOptions::new(dir.path().join("merged")),
        &Cpu,
        &Job::default(),
    )
    .unwrap();
    assert_eq!(summary.tensors, plan.tasks.len());
}
