//! mergekit's own example recipes without slices (`examples/arcee_fusion.yml`, `bio-merge.yml`,
//! `linear.yml`, `ties.yml`), verbatim but for their models — the tiny parity family — against
//! mergekit 0.1.5's outputs (`fixtures/mergekit/examples`, made by its `make_fixtures.py`).
//! Keys mergescope does not compute with (`int8_mask`) must be accepted as they are.

use mergescope_tests::mergekit::{check_against, merge, merge_and_check, part_dir};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn check(recipe: &str) {
    let reports = merge_and_check(BIN, "examples", recipe);
    assert_eq!(
        reports.len(),
        11,
        "{recipe}: the kept tensors were compared"
    );
}

/// `dtype: bfloat16`: mergekit selects on bf16 importances and writes f32.
#[test]
fn arcee_fusion() {
    check("arcee_fusion");
}

/// TIES with `normalize: false`, `int8_mask: true`, `dtype: float16`.
#[test]
fn bio_merge() {
    check("bio-merge");
}

/// Three models, weights 1, 0.3 and 0.5 normalised, no base, `dtype: float16`.
#[test]
fn linear() {
    check("linear");
}

/// Density and weight gradients over the layers and a filtered weight (`mlp`), `int8_mask`.
#[test]
fn ties() {
    check("ties");
}

#[test]
fn the_checks_fail_a_wrong_merge() {
    // The same models merged by TIES and by a linear average differ far beyond the bf16
    // class; the example's own output passes.
    let folder = part_dir("examples");
    let out = tempfile::tempdir().unwrap();
    let linear = merge(BIN, &folder, "linear", "cpu", out.path());
    let renamed = out.path().join("ties");
    std::fs::rename(&linear, &renamed).unwrap();
    assert!(check_against(&folder, "ties", &renamed).is_err());
}
