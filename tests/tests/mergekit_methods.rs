//! arcee_fusion, ram and ramplus_tl against mergekit 0.1.5's own outputs on the parity family
//! (`fixtures/mergekit/methods`, made by its `make_fixtures.py`).

use mergescope_tests::compare::{Class, Tolerance, compare_folders};
use mergescope_tests::mergekit::{Reference, check_against, merge, merge_and_check, part_dir};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn check(recipe: &str) {
    let reports = merge_and_check(BIN, "methods", recipe);
    assert_eq!(
        reports.len(),
        11,
        "{recipe}: the kept tensors were compared"
    );
}

#[test]
fn arcee_fusion() {
    check("arcee_fusion");
}

/// mergekit computes the importance in bf16 here and writes f32 (its mask is f32).
#[test]
fn arcee_fusion_bf16() {
    check("arcee_fusion_bf16");
}

#[test]
fn ram() {
    check("ram");
}

#[test]
fn ramplus_tl() {
    check("ramplus_tl");
}

/// r, alpha and epsilon all set (epsilon large enough that many deltas count as unmoved).
#[test]
fn ramplus_tl_custom() {
    check("ramplus_tl_custom");
}

/// The methods run on the CPU inside a GPU merge: the result must be the CPU's, bit for bit
/// within the f32 bound (ALGORITHMS.md §6, CPU vs GPU).
#[test]
fn gpu_merges_agree_with_the_cpu() {
    if std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() {
        eprintln!("skipping the GPU runs (MERGESCOPE_SKIP_GPU_TESTS)");
        return;
    }
    let folder = part_dir("methods");
    let out = tempfile::tempdir().unwrap();
    for recipe in ["arcee_fusion", "ramplus_tl"] {
        let on_gpu = merge(BIN, &folder, recipe, "gpu", &out.path().join("gpu"));
        let on_cpu = merge(BIN, &folder, recipe, "cpu", &out.path().join("cpu"));
        compare_folders(&on_gpu, &on_cpu, &Class::Close(Tolerance::EXACT), None)
            .unwrap_or_else(|problems| panic!("{recipe}: GPU differs from CPU\n{problems}"));
    }
}

#[test]
fn the_checks_fail_a_wrong_merge() {
    // Guard against comparisons that cannot fail: mergekit's ram output is not its
    // ramplus_tl_custom output, and the base is not arcee_fusion's output (keeping no delta
    // flips far more than the 0.1% of elements its class allows).
    let folder = part_dir("methods");
    let expected = folder.join("expected");
    let exact = Reference::read(&folder, "ramplus_tl_custom").class;
    assert!(
        compare_folders(
            &expected.join("ram"),
            &expected.join("ramplus_tl_custom"),
            &exact,
            None
        )
        .is_err()
    );
    let out = tempfile::tempdir().unwrap();
    let base_only = out.path().join("arcee_fusion");
    copy_folder(&folder.join("../../parity/family/base"), &base_only);
    assert!(check_against(&folder, "arcee_fusion", &base_only).is_err());
    assert!(
        check_against(
            &folder,
            "ram",
            &merge(BIN, &folder, "ram", "cpu", out.path())
        )
        .is_ok()
    );
}

fn copy_folder(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}
