//! The demo family is real (experts specialise, merges help) and the objectives work: the
//! committed models are evaluated through the `mergescope eval` command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mergescope_tests::cli::run;
use mergescope_tests::fixture::tiny_llama;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");
const DOMAINS: [&str; 4] = ["upright", "rotated", "mirrored", "inverted"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scores(target: &str, extra: &[&str]) -> BTreeMap<String, f64> {
    let mut args = vec!["eval", target, "--json"];
    args.extend_from_slice(extra);
    let ran = run(BIN, &repo(), &args);
    ran.assert_success();
    serde_json::from_str(&ran.stdout()).expect("eval --json prints an object of numbers")
}

fn accuracy(scores: &BTreeMap<String, f64>, domain: &str) -> f64 {
    scores[&format!("{domain}/accuracy")]
}

#[test]
fn experts_beat_the_base_on_their_domain_and_lose_elsewhere() {
    let base = scores("assets/demo/base", &[]);
    let experts: Vec<_> = DOMAINS
        .iter()
        .map(|d| scores(&format!("assets/demo/{d}"), &[]))
        .collect();
    for (expert, own) in experts.iter().zip(DOMAINS) {
        let mine = accuracy(expert, own);
        // Measured (assets/demo/ACCURACY.md): +6.7 to +10.8 points over the base.
        assert!(
            mine >= accuracy(&base, own) + 0.04,
            "{own} expert: {mine} vs base {}",
            accuracy(&base, own)
        );
        let elsewhere: f64 = DOMAINS
            .iter()
            .filter(|&&d| d != own)
            .map(|d| accuracy(expert, d))
            .sum::<f64>()
            / 3.0;
        assert!(
            mine >= elsewhere + 0.05,
            "{own} expert: {mine} own vs {elsewhere} elsewhere"
        );
        // It is the best model on its own domain.
        for (other, name) in experts.iter().zip(DOMAINS) {
            if name != own {
                assert!(
                    mine > accuracy(other, own),
                    "{name} beats the {own} expert on {own}"
                );
            }
        }
    }
    // And every expert loses somewhere: it is worse than the base on some other domain.
    for (expert, own) in experts.iter().zip(DOMAINS) {
        assert!(
            DOMAINS
                .iter()
                .any(|&d| d != own && accuracy(expert, d) < accuracy(&base, d)),
            "the {own} expert loses nowhere"
        );
    }
}

#[test]
fn task_arithmetic_of_the_experts_beats_the_base() {
    let base = scores("assets/demo/base", &[]);
    let merged = scores("assets/demo/recipes/task_arithmetic.yml", &[]);
    // Measured: 87.8 % → 91.9 %.
    assert!(
        merged["mean/accuracy"] >= base["mean/accuracy"] + 0.03,
        "{} vs {}",
        merged["mean/accuracy"],
        base["mean/accuracy"]
    );
    // The quick estimate used while a slider moves is close to the full figure.
    let quick = scores(
        "assets/demo/recipes/task_arithmetic.yml",
        &["--subsample", "90"],
    );
    assert!((quick["mean/accuracy"] - merged["mean/accuracy"]).abs() < 0.08);
}

#[test]
fn retention_scores_a_recipe_without_data() {
    let s = scores(
        "assets/demo/recipes/task_arithmetic.yml",
        &["--objective", "retention"],
    );
    for d in DOMAINS {
        // Weight 0.3 of each of four task vectors: each keeps ≥ 0.3 of itself plus shared parts.
        let kept = s[&format!("retention/../{d}")];
        assert!((0.25..1.0).contains(&kept), "{d}: {kept}");
    }
}

/// `eval --compare --json` of `recipe`.
fn compared(recipe: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["eval", recipe, "--json", "--compare"];
    args.extend_from_slice(extra);
    let ran = run(BIN, &repo(), &args);
    ran.assert_success();
    serde_json::from_str(&ran.stdout()).expect("eval --compare --json prints an object")
}

#[test]
fn compare_puts_the_merge_beside_its_base_and_each_expert() {
    let recipe = "assets/demo/recipes/task_arithmetic.yml";
    let json = compared(recipe, &["--subsample", "40"]);
    let quick = ["--subsample", "40"];
    // Every column is what `eval` of that model alone says.
    let as_map = |v: &serde_json::Value| -> BTreeMap<String, f64> {
        serde_json::from_value(v.clone()).unwrap()
    };
    assert_eq!(as_map(&json["merge"]), scores(recipe, &quick));
    assert_eq!(
        as_map(&json["inputs"]["base"]),
        scores("assets/demo/base", &quick)
    );
    let models = json["inputs"]["models"].as_array().unwrap();
    assert_eq!(models.len(), 4);
    for (entry, domain) in models.iter().zip(DOMAINS) {
        assert!(entry[0].as_str().unwrap().ends_with(domain), "{entry}");
        assert_eq!(
            as_map(&entry[1]),
            scores(&format!("assets/demo/{domain}"), &quick)
        );
    }
    // Deltas: to the base, and to the best single expert by the metric's direction.
    for row in json["comparison"]["metrics"].as_array().unwrap() {
        let metric = row["metric"].as_str().unwrap();
        let merge = row["merge"].as_f64().unwrap();
        let base = row["base"].as_f64().unwrap();
        assert_eq!(
            row["delta_to_base"].as_f64().unwrap(),
            merge - base,
            "{metric}"
        );
        let singles: Vec<f64> = row["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let best = if metric.ends_with("loss") {
            singles.iter().copied().fold(f64::INFINITY, f64::min)
        } else {
            singles.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        };
        assert_eq!(
            row["delta_to_best"].as_f64().unwrap(),
            merge - best,
            "{metric}"
        );
    }
    // The table reads accuracies in percent and their deltas in points.
    let table = run(
        BIN,
        &repo(),
        &["eval", recipe, "--compare", "--subsample", "40"],
    );
    table.assert_success();
    let text = table.stdout();
    let mean = text
        .lines()
        .find(|l| l.starts_with("mean/accuracy"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(mean.contains('%') && mean.contains(" pp"), "{mean}");
    assert!(
        text.lines().next().unwrap().contains("vs best single"),
        "{text}"
    );
}

#[test]
fn compare_of_retention_measures_each_expert_alone() {
    let json = compared(
        "assets/demo/recipes/task_arithmetic.yml",
        &["--objective", "retention"],
    );
    for (j, entry) in json["inputs"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let label = entry[0].as_str().unwrap();
        let own = entry[1][format!("retention/{label}")].as_f64().unwrap();
        // An expert alone keeps all of its own task vector and only part of the others'.
        assert!((own - 1.0).abs() < 1e-6, "{label}: {own}");
        for domain in DOMAINS.iter().filter(|d| !label.ends_with(*d)) {
            let other = entry[1][format!("retention/../{domain}")].as_f64().unwrap();
            assert!(other < 0.5, "{j} {domain}: {other}");
        }
    }
    assert_eq!(
        json["inputs"]["base"]["retention/../upright"].as_f64(),
        Some(0.0)
    );
    // A model alone cannot be compared: there is nothing to compare it with.
    let ran = run(BIN, &repo(), &["eval", "assets/demo/base", "--compare"]);
    ran.assert_user_error(&["pass a .yml recipe"]);
}

fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    format!("cmd:sh {}", path.display())
}

#[test]
fn an_external_command_scores_the_model_folder() {
    let dir = tempfile::tempdir().unwrap();
    // Reports how many files the folder it was given holds: proves it got the right path.
    let good = script(
        dir.path(),
        "count.sh",
        "n=$(ls \"$1\" | wc -l); echo \"{\\\"files\\\": $n, \\\"score\\\": 0.75}\"",
    );
    let s = scores("assets/demo/base", &["--objective", &good]);
    assert_eq!(s["files"], 2.0);
    assert_eq!(s["score"], 0.75);
    // A recipe is merged into a temporary folder first (config, index-free shard, …).
    let s = scores("assets/demo/recipes/linear.yml", &["--objective", &good]);
    assert!(s["files"] >= 2.0);
}

#[test]
fn a_bad_external_command_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let words = script(dir.path(), "words.sh", "echo accuracy is high");
    run(
        BIN,
        &repo(),
        &["eval", "assets/demo/base", "--objective", &words],
    )
    .assert_user_error(&["not JSON", "words.sh"]);
    let fails = script(dir.path(), "fails.sh", "echo broken >&2; exit 3");
    run(
        BIN,
        &repo(),
        &["eval", "assets/demo/base", "--objective", &fails],
    )
    .assert_user_error(&["exit status: 3", "broken"]);
    let slow = script(dir.path(), "slow.sh", "sleep 5");
    run(
        BIN,
        &repo(),
        &[
            "eval",
            "assets/demo/base",
            "--objective",
            &slow,
            "--timeout",
            "1",
        ],
    )
    .assert_user_error(&["ran past its 1 s limit"]);
}

#[test]
fn the_demo_command_merges_and_scores_the_demo_family() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(
        BIN,
        dir.path(),
        &[
            "demo",
            "--dir",
            dir.path().to_str().unwrap(),
            "--backend",
            "cpu",
        ],
    );
    ran.assert_success();
    let out = ran.stdout();
    for needle in ["merged = task_arithmetic", "base", "inverted", "merged"] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    for member in ["base", "upright", "rotated", "mirrored", "inverted"] {
        assert!(
            dir.path()
                .join("family")
                .join(member)
                .join("model.safetensors")
                .is_file()
        );
    }
    assert!(dir.path().join("merged/model.safetensors").is_file());
    // The shipped models are the committed ones, byte for byte.
    assert_eq!(
        std::fs::read(dir.path().join("family/base/model.safetensors")).unwrap(),
        std::fs::read(repo().join("assets/demo/base/model.safetensors")).unwrap()
    );
}

#[test]
fn the_demo_objective_scores_tensors_in_memory_as_on_disk() {
    use mergescope_core::Checkpoint;
    use mergescope_core::eval::vit::VitConfig;
    use mergescope_core::eval::{Candidate, DemoAccuracy, Fidelity, ModelTensors, Objective};

    let folder = repo().join("assets/demo/rotated");
    let demo = DemoAccuracy::new().unwrap();
    let on_disk = demo
        .evaluate(
            &Candidate {
                folder: Some(&folder),
                tensors: None,
            },
            Fidelity::Full,
        )
        .unwrap();
    let tensors =
        ModelTensors::from_checkpoint(&Checkpoint::open(&folder).unwrap(), VitConfig::DEMO)
            .unwrap();
    let in_memory = demo
        .evaluate(
            &Candidate {
                folder: None,
                tensors: Some(&tensors),
            },
            Fidelity::Full,
        )
        .unwrap();
    assert_eq!(on_disk, in_memory);
    // The subsample is a different, smaller measurement of the same model.
    let quick = demo
        .evaluate(
            &Candidate {
                folder: None,
                tensors: Some(&tensors),
            },
            Fidelity::Subsample(16),
        )
        .unwrap();
    assert!((quick["rotated/accuracy"] - on_disk["rotated/accuracy"]).abs() < 0.25);
}

#[test]
fn perplexity_per_domain_of_a_language_model_and_of_a_recipes_merge() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    tiny_llama(&root.join("base"), 0.0);
    tiny_llama(&root.join("a"), 0.01);
    tiny_llama(&root.join("b"), -0.01);
    std::fs::create_dir(root.join("texts")).unwrap();
    let words = |step: usize, n: usize| -> String {
        (0..n)
            .map(|i| format!("w{} ", (i * step + 1) % 50))
            .collect()
    };
    std::fs::write(root.join("texts/code.txt"), words(7, 150)).unwrap();
    std::fs::write(root.join("texts/prose.txt"), words(3, 100)).unwrap();
    std::fs::write(
        root.join("recipe.yml"),
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\n",
    )
    .unwrap();
    let scores = |target: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", target, "--objective", "ppl:texts", "--json"];
        args.extend_from_slice(extra);
        let ran = run(BIN, root, &args);
        ran.assert_success();
        serde_json::from_str(&ran.stdout()).unwrap()
    };
    let base = scores("base", &[]);
    for metric in ["code/perplexity", "prose/perplexity", "mean/nll"] {
        let v = base[metric].as_f64().unwrap();
        assert!(v.is_finite() && v > 0.0, "{metric}: {v}");
    }
    let nll = base["code/nll"].as_f64().unwrap();
    assert!((nll.exp() - base["code/perplexity"].as_f64().unwrap()).abs() < 1e-9);
    // A recipe's merge, compared with its inputs: lower perplexity is better.
    let compared = scores("recipe.yml", &["--compare"]);
    let row = compared["comparison"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "code/perplexity")
        .unwrap()
        .clone();
    assert_eq!(row["higher_is_better"], false);
    assert_eq!(row["base"], base["code/perplexity"]);
    // Texts that cannot be read are one line naming the file.
    std::fs::write(root.join("texts/bad.txt"), b"w1 \xff w2").unwrap();
    let ran = run(BIN, root, &["eval", "base", "--objective", "ppl:texts"]);
    ran.assert_user_error(&["bad.txt", "UTF-8"]);
    // Other architectures say which run in process.
    std::fs::remove_file(root.join("texts/bad.txt")).unwrap();
    let config = root.join("base/config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("LlamaForCausalLM", "BertForMaskedLM");
    std::fs::write(&config, text).unwrap();
    let ran = run(BIN, root, &["eval", "base", "--objective", "ppl:texts"]);
    ran.assert_user_error(&["BertForMaskedLM", "LlamaForCausalLM"]);
}
