//! `mergescope analyze` on the parity family, which was built with known structure
//! (shared components with opposite signs in ft_a and ft_b; one tensor ft_c leaves equal to
//! the base), and on bad input.

use std::path::Path;

use mergescope_tests::cli::{run, run_with_env};
use mergescope_tests::parity_dir;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn analyze(cache: &Path, extra: &[&str]) -> (mergescope_tests::cli::Run, Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let family = parity_dir().join("family");
    let mut args = vec![
        "analyze",
        "--base",
        "base",
        "ft_a",
        "ft_b",
        "ft_c",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let ran = run_with_env(
        BIN,
        &family,
        &args,
        &[("MERGESCOPE_CACHE_DIR", cache.to_str().unwrap())],
    );
    ran.assert_success();
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (ran, report, out)
}

/// The parity family's base and `models`, opened.
fn parity_family(models: &[&str]) -> mergescope_core::family::Family {
    use mergescope_core::Checkpoint;
    use mergescope_core::family::{Family, Member};
    let dir = parity_dir().join("family");
    let member = |name: &str| Member {
        label: name.to_owned(),
        checkpoint: std::sync::Arc::new(Checkpoint::open(dir.join(name)).unwrap()),
    };
    Family {
        base: Some(member("base")),
        models: models.iter().map(|m| member(m)).collect(),
    }
}

fn tensor<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report"))
}

#[test]
fn finds_what_the_family_was_built_with() {
    let cache = tempfile::tempdir().unwrap();
    let (ran, report, _out) = analyze(cache.path(), &["--no-cache"]);
    assert_eq!(report["models"].as_array().unwrap().len(), 3);
    assert_eq!(report["tensors"].as_array().unwrap().len(), 39);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0);

    // ft_c leaves this tensor equal to the base: sensitivity 0, and the report says so.
    let frozen = tensor(&report, "model.layers.0.input_layernorm.weight");
    let ft_c = &frozen["metrics"]["models"][2];
    assert_eq!(ft_c["l2"], 0.0);
    assert_eq!(ft_c["frac_changed"], 0.0);
    assert!(
        frozen["notes"][0]
            .as_str()
            .unwrap()
            .contains("ft_c equals the base")
    );
    assert!(frozen["metrics"]["models"][0]["l2"].as_f64().unwrap() > 0.0);

    // ft_a and ft_b carry the shared components with opposite signs (+1/−1 and −0.5/+0.7).
    let whole = &report["whole_model"]["metrics"];
    let cos_ab = whole["cosine"][0][1].as_f64().unwrap();
    let conflict_ab = whole["sign_conflict"][0][1].as_f64().unwrap();
    assert!(cos_ab < -0.1, "cosine(ft_a, ft_b) = {cos_ab}");
    assert!(conflict_ab > 0.55, "conflict(ft_a, ft_b) = {conflict_ab}");
    for (i, j) in [(0, 2), (1, 2)] {
        assert!(
            whole["sign_conflict"][i][j].as_f64().unwrap() < conflict_ab,
            "ft_a/ft_b must be the most conflicting pair"
        );
    }
    // The matrices are symmetric with a unit diagonal.
    for i in 0..3 {
        assert_eq!(whole["cosine"][i][i], 1.0);
        for j in 0..3 {
            assert_eq!(whole["cosine"][i][j], whole["cosine"][j][i]);
        }
    }
    // The summary names the matrices and the layers.
    let summary = ran.stdout();
    for needle in [
        "cosine similarity",
        "sign conflict",
        "most interfering layers",
        "layer 0",
    ] {
        assert!(
            summary.contains(needle),
            "summary lacks {needle}:\n{summary}"
        );
    }
    // Inputs are identified by path, size and header hash.
    let base = &report["inputs"][0];
    assert_eq!(base["role"], "base");
    assert_eq!(base["header_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn spectra_on_request() {
    let cache = tempfile::tempdir().unwrap();
    let (_, report, _out) = analyze(cache.path(), &["--rank", "8", "--no-cache"]);
    let t = tensor(&report, "model.layers.1.mlp.up_proj.weight");
    let spectra = t["spectra"].as_array().unwrap();
    assert_eq!(spectra.len(), 3);
    let sigma = spectra[0]["sigma"].as_array().unwrap();
    assert_eq!(sigma.len(), 8);
    assert!(sigma.windows(2).all(|w| w[0].as_f64() >= w[1].as_f64()));
    let energy = &t["base_energy"][0];
    for key in ["both", "left", "right"] {
        let e = energy[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&e), "{key} = {e}");
    }
    assert_eq!(t["overlaps"].as_array().unwrap().len(), 3);
    // 1-D tensors have no spectrum.
    assert!(tensor(&report, "model.norm.weight")["spectra"].is_null());
}

#[test]
fn a_second_run_comes_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let (first, a, _o1) = analyze(cache.path(), &[]);
    assert!(!first.stderr().contains("from the cache"));
    let (second, b, _o2) = analyze(cache.path(), &[]);
    assert!(
        second.stderr().contains("from the cache"),
        "{}",
        second.stderr()
    );
    assert_eq!(a, b);
    // Other settings are another analysis.
    let (third, _, _o3) = analyze(cache.path(), &["--density", "0.2"]);
    assert!(!third.stderr().contains("from the cache"));
}

#[test]
fn csv_files_have_a_row_per_tensor_and_model() {
    let cache = tempfile::tempdir().unwrap();
    let csv = tempfile::tempdir().unwrap();
    let dir = csv.path().to_str().unwrap().to_owned();
    analyze(cache.path(), &["--csv", &dir, "--no-cache"]);
    let tensors = std::fs::read_to_string(csv.path().join("tensors.csv")).unwrap();
    assert_eq!(tensors.lines().count(), 1 + 39 * 3);
    let pairs = std::fs::read_to_string(csv.path().join("pairs.csv")).unwrap();
    assert!(
        pairs
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("whole model,ft_a,ft_b,")
    );
}

#[test]
fn bad_input_is_one_clear_line() {
    let family = parity_dir().join("family");
    run(
        BIN,
        &family,
        &["analyze", "--base", "base", "ft_a", "--density", "0"],
    )
    .assert_user_error(&["--density", "(0, 1]"]);
    run(BIN, &family, &["analyze", "--base", "base", "nope"]).assert_user_error(&["nope"]);
}

#[test]
fn a_recipe_preview_says_what_survives() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("keep_a.yml");
    // All of ft_a, none of ft_b: ft_a survives whole; ft_b survives as its projection on ft_a.
    std::fs::write(
        &recipe,
        "merge_method: task_arithmetic\nbase_model: family/base\nmodels:\n  - model: family/ft_a\n    parameters: {weight: 1.0}\n  - model: family/ft_b\n    parameters: {weight: 0.0}\ndtype: float32\n",
    )
    .unwrap();
    let json = dir.path().join("report.json");
    let ran = run_with_env(
        BIN,
        &parity_dir(),
        &[
            "analyze",
            "--recipe",
            recipe.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
            "--no-cache",
        ],
        &[],
    );
    ran.assert_success();
    assert!(
        ran.stdout()
            .contains("what survives in the task_arithmetic merge")
    );
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let survival = &report["survival"]["whole_model"]["models"];
    let close = |v: &Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-6;
    assert!(close(&survival[0]["projection"], 1.0), "{survival}");
    assert!(close(&survival[0]["cosine"], 1.0), "{survival}");
    // ft_b's share is its cosine with ft_a: the same number the interference matrix reports.
    let cosine_ab = report["whole_model"]["metrics"]["cosine"][0][1]
        .as_f64()
        .unwrap();
    assert!(
        close(&survival[1]["cosine"], cosine_ab),
        "{survival} vs {cosine_ab}"
    );
    assert_eq!(report["survival"]["layers"].as_array().unwrap().len(), 5);
    // The merge keeps all of ft_a and none of ft_b: it moves the base exactly as far as ft_a.
    let moved = report["survival"]["whole_model"]["merged_norm"]
        .as_f64()
        .unwrap();
    let l2_a = report["whole_model"]["metrics"]["models"][0]["l2"]
        .as_f64()
        .unwrap();
    assert!((moved - l2_a).abs() <= 1e-6 * l2_a, "{moved} vs {l2_a}");
    let rel_a = &report["whole_model"]["metrics"]["models"][0]["rel"];
    assert!(close(
        &report["survival"]["whole_model"]["merged_relative"],
        rel_a.as_f64().unwrap()
    ));
}

#[test]
fn a_recipe_without_a_base_cannot_be_previewed() {
    run(
        BIN,
        &parity_dir(),
        &["analyze", "--recipe", "configs/linear.yml", "--no-cache"],
    )
    .assert_user_error(&["linear", "takes no base model"]);
}

#[test]
fn a_cancelled_analysis_stops_with_cancelled() {
    use mergescope_core::Job;
    use mergescope_core::analysis::{AnalysisError, AnalysisSettings, analyze};

    let family = parity_family(&["ft_a", "ft_b"]);
    let job = Job::default();
    // Cancel as soon as the first tensor is done.
    let cancel = job.cancel.clone();
    let progress = job.progress.clone();
    job.progress.set_observer(move || {
        if progress.snapshot().done > 0 {
            cancel.cancel();
        }
    });
    let result = analyze(&family, &AnalysisSettings::new(2), &job);
    assert!(
        matches!(result, Err(AnalysisError::Cancelled(_))),
        "{result:?}"
    );
    // A fresh job runs to the end.
    assert!(analyze(&family, &AnalysisSettings::new(2), &Job::default()).is_ok());
}

#[test]
fn partial_reports_grow_to_the_final_one() {
    use mergescope_core::Job;
    use mergescope_core::analysis::{AnalysisSettings, analyze, analyze_with_partials};

    let family = parity_family(&["ft_a", "ft_b", "ft_c"]);
    let settings = AnalysisSettings::new(3);
    let mut partials = Vec::new();
    let last = analyze_with_partials(
        &family,
        &settings,
        &Job::default(),
        std::time::Duration::ZERO,
        &mut |report| partials.push(report),
    )
    .unwrap();
    // One partial report after every tensor but the last, each covering one tensor more,
    // and saying so.
    assert_eq!(partials.len() + 1, last.tensors.len());
    for (k, p) in partials.iter().enumerate() {
        assert_eq!(p.tensors.len(), k + 1);
        assert_eq!(p.whole_model.tensors, k + 1);
        assert!(
            p.limits
                .iter()
                .any(|l| l.starts_with(&format!("partial: {} of ", k + 1))),
            "{:?}",
            p.limits
        );
        assert_eq!(p.tensors[..], last.tensors[..k + 1]);
    }
    // The final report is the one `analyze` gives, with no partial note.
    let whole = analyze(&family, &settings, &Job::default()).unwrap();
    assert_eq!(last.tensors, whole.tensors);
    assert_eq!(last.whole_model, whole.whole_model);
    assert!(!last.limits.iter().any(|l| l.starts_with("partial")));
}

#[test]
fn a_sampled_preview_reads_a_few_rows_of_each_tensor() {
    use mergescope_core::Job;
    use mergescope_core::analysis::{survival, survival_sampled};
    use mergescope_core::backend::Cpu;
    use mergescope_core::merge::plan::{MergePlan, PlanOptions};
    use mergescope_core::merge::recipe::Recipe;

    let dir = parity_dir();
    let file = dir.join("keep-a.yml");
    let yaml = "merge_method: task_arithmetic\nbase_model: family/base\nmodels:\n  - model: family/ft_a\n    parameters: {weight: 1.0}\n  - model: family/ft_b\n    parameters: {weight: 0.0}\ndtype: float32\n";
    let plan = MergePlan::new(
        Recipe::from_yaml(yaml, &file).unwrap(),
        &file,
        &PlanOptions {
            cwd: dir.clone(),
            random_seed: Some(0),
            truncate_vocab: false,
        },
    )
    .unwrap();
    let (quick, whole) = (Job::default(), Job::default());
    let sampled = survival_sampled(&plan, &Cpu, &quick, Some(64)).unwrap();
    let full = survival(&plan, &Cpu, &whole).unwrap();
    assert_eq!((sampled.sampled, full.sampled), (Some(64), None));
    // It measured fewer elements, over the same layers.
    assert!(quick.progress.snapshot().total < whole.progress.snapshot().total / 4);
    assert_eq!(sampled.layers.len(), full.layers.len());
    // Keeping all of ft_a holds on any rows: projection 1 and cosine 1.
    let a = &sampled.whole_model.models[0];
    assert!((a.projection.unwrap() - 1.0).abs() < 1e-6, "{a:?}");
    assert!((a.cosine.unwrap() - 1.0).abs() < 1e-6, "{a:?}");
}
