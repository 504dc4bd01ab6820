//! `--backend`: which adapter runs, and what happens when there is none.

use std::path::Path;

use mergescope_core::dtype::Dtype;
use mergescope_tests::cli::{run, run_with_env};
use mergescope_tests::fixture::{listing, llama_tensors, write_model_folder};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// wgpu reads `WGPU_BACKEND`: asking for Metal on Linux leaves it no adapter at all.
const NO_ADAPTERS: [(&str, &str); 1] = [("WGPU_BACKEND", "metal")];

fn family(dir: &Path) {
    write_model_folder(&dir.join("base"), &llama_tensors(2, 0), Dtype::BF16, 1);
    write_model_folder(&dir.join("ft_1"), &llama_tensors(2, 1), Dtype::BF16, 1);
    write_model_folder(&dir.join("ft_2"), &llama_tensors(2, 2), Dtype::BF16, 1);
    std::fs::write(
        dir.join("ties.yml"),
        "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft_1\n    parameters: {weight: 0.6, density: 0.5}\n  - model: ft_2\n    parameters: {weight: 0.4, density: 0.7}\n",
    )
    .unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn gpu_without_an_adapter_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let before = listing(dir.path());
    let args = ["merge", "ties.yml", "--out", "merged", "--backend", "gpu"];
    run_with_env(BIN, dir.path(), &args, &NO_ADAPTERS)
        .assert_user_error(&["no GPU adapter", "--backend cpu"]);
    assert_eq!(listing(dir.path()), before);
}

#[cfg(target_os = "linux")]
#[test]
fn auto_without_an_adapter_merges_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let args = ["merge", "ties.yml", "--out", "merged", "--backend", "auto"];
    let ran = run_with_env(BIN, dir.path(), &args, &NO_ADAPTERS);
    ran.assert_success();
    assert!(ran.stderr().contains("backend: cpu"), "{}", ran.stderr());
}

#[test]
fn auto_never_takes_a_software_adapter() {
    if std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let gpu = run(
        BIN,
        dir.path(),
        &["merge", "ties.yml", "--out", "on-gpu", "--backend", "gpu"],
    );
    gpu.assert_success();
    let auto = run(
        BIN,
        dir.path(),
        &["merge", "ties.yml", "--out", "on-auto", "--backend", "auto"],
    );
    auto.assert_success();
    if gpu.stderr().contains(", software") {
        // Only a software adapter here (CI's lavapipe): `auto` must have chosen the CPU.
        assert!(auto.stderr().contains("backend: cpu"), "{}", auto.stderr());
    } else {
        assert!(auto.stderr().contains("backend: gpu"), "{}", auto.stderr());
    }
}
