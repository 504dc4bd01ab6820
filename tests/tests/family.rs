//! Aligning a family reports what does not line up as data, in the reference's file order.

use std::sync::Arc;

use mergescope_core::checkpoint::Checkpoint;
use mergescope_core::dtype::Dtype;
use mergescope_core::family::{AlignmentIssue, Family, Member};
use mergescope_tests::fixture::{Tensor, llama_tensors, write_file};

fn member(path: &std::path::Path, label: &str) -> Member {
    Member {
        label: label.to_owned(),
        checkpoint: Arc::new(Checkpoint::open(path).unwrap()),
    }
}

#[test]
fn reports_missing_extra_shape_and_dtype_mismatches() {
    let dir = tempfile::tempdir().unwrap();
    let base = llama_tensors(2, 0);
    write_file(&dir.path().join("base.safetensors"), &base, Dtype::F32);

    let mut other = llama_tensors(2, 1);
    other.retain(|t| t.name != "model.norm.weight");
    other.push(Tensor::new("model.extra.bias", &[3], |i| i as f32));
    let head = other
        .iter_mut()
        .find(|t| t.name == "lm_head.weight")
        .unwrap();
    *head = Tensor::new("lm_head.weight", &[20, 8], |i| i as f32);
    write_file(&dir.path().join("other.safetensors"), &other, Dtype::BF16);

    let family = Family {
        base: Some(member(&dir.path().join("base.safetensors"), "base")),
        models: vec![member(&dir.path().join("other.safetensors"), "other")],
    };
    let alignment = family.align();

    let issues = &alignment.issues;
    assert!(issues.contains(&AlignmentIssue::Missing {
        tensor: "model.norm.weight".into(),
        member: "other".into()
    }));
    assert!(issues.contains(&AlignmentIssue::Extra {
        tensor: "model.extra.bias".into(),
        member: "other".into()
    }));
    assert!(issues.contains(&AlignmentIssue::ShapeMismatch {
        tensor: "lm_head.weight".into(),
        member: "other".into(),
        expected: vec![16, 8],
        got: vec![20, 8]
    }));
    let dtype_issues = issues
        .iter()
        .filter(|i| matches!(i, AlignmentIssue::DtypeMismatch { .. }))
        .count();
    // Every tensor both have with equal shapes differs in dtype (F32 vs BF16).
    assert_eq!(dtype_issues, base.len() - 2);
    assert_eq!(alignment.blocking_issues().count(), 3);

    // Groups follow the base's file order, then tensors only other members have.
    let base_ckpt = &family.base.as_ref().unwrap().checkpoint;
    let names: Vec<_> = alignment.groups.iter().map(|g| g.name.as_str()).collect();
    let mut expected: Vec<_> = base_ckpt
        .tensors()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    expected.push("model.extra.bias");
    assert_eq!(names, expected);
    let norm = alignment
        .groups
        .iter()
        .find(|g| g.name == "model.norm.weight")
        .unwrap();
    assert_eq!(norm.models, vec![None]);
    assert!(norm.base.is_some());
}
