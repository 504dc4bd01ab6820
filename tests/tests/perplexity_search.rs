//! The perplexity objective (`ppl:DIR`) beyond `eval`: a Pareto search with one objective per
//! domain, minimised, and a sweep whose cells score as `eval` scores their recipes.

use std::path::Path;

use mergescope_tests::cli::run;
use mergescope_tests::fixture::tiny_llama;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// A base and two fine-tunes of the tiny Llama, a recipe over them, and two domains: a `.txt`
/// and a `.jsonl` of documents.
fn family(root: &Path) {
    tiny_llama(&root.join("base"), 0.0);
    tiny_llama(&root.join("a"), 0.02);
    tiny_llama(&root.join("b"), -0.02);
    std::fs::create_dir(root.join("texts")).unwrap();
    let words = |step: usize, n: usize| -> String {
        (0..n)
            .map(|i| format!("w{} ", (i * step + 1) % 50))
            .collect()
    };
    std::fs::write(root.join("texts/code.txt"), words(7, 120)).unwrap();
    let documents: String = (0..4)
        .map(|d| format!("{{\"text\": \"{}\"}}\n", words(3 + d, 30)))
        .collect();
    std::fs::write(root.join("texts/prose.jsonl"), documents).unwrap();
    std::fs::write(
        root.join("recipe.yml"),
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\n",
    )
    .unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `eval TARGET --objective ppl:texts --json` in `root`.
fn eval(root: &Path, target: &str) -> Value {
    let ran = run(
        BIN,
        root,
        &["eval", target, "--objective", "ppl:texts", "--json"],
    );
    ran.assert_success();
    serde_json::from_str(&ran.stdout()).unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

#[test]
fn a_pareto_search_minimises_each_domains_nll() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    family(root);
    let ran = run(
        BIN,
        root,
        &[
            "pareto",
            "recipe.yml",
            "--objective",
            "ppl:texts",
            "--budget",
            "10",
            "--rounds",
            "1",
            "--json",
            "front.json",
        ],
    );
    ran.assert_success();
    assert!(
        ran.stderr()
            .contains("objectives: code/nll (min), prose/nll (min)"),
        "{}",
        ran.stderr()
    );
    let report = read_json(&root.join("front.json"));
    let objectives: Vec<(&str, &str)> = report["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap(),
                o["direction"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(objectives, [("code/nll", "min"), ("prose/nll", "min")]);
    // The reference point is the base's scores, as `eval` gives them.
    let base = eval(root, "base");
    let reference: Vec<f64> = serde_json::from_value(report["reference"].clone()).unwrap();
    for (r, metric) in reference.iter().zip(["code/nll", "prose/nll"]) {
        let want = base[metric].as_f64().unwrap();
        assert!(close(*r, want), "{metric}: reference {r}, eval {want}");
    }
    let points = report["points"].as_array().unwrap();
    assert!(points.len() >= 5, "{} points", points.len());
    assert!(points.iter().any(|p| p["front"] == true));
    // Texts that cannot be read stop the search before any merge, naming the line.
    std::fs::write(root.join("texts/prose.jsonl"), "{\"body\": \"w1\"}\n").unwrap();
    let ran = run(
        BIN,
        root,
        &["pareto", "recipe.yml", "--objective", "ppl:texts"],
    );
    ran.assert_user_error(&["prose.jsonl", "line 1", "\"text\""]);
    // Directions are the objective's own.
    std::fs::write(root.join("texts/prose.jsonl"), "{\"text\": \"w1 w2\"}\n").unwrap();
    let ran = run(
        BIN,
        root,
        &[
            "pareto",
            "recipe.yml",
            "--objective",
            "ppl:texts",
            "--minimize",
            "code/nll",
        ],
    );
    ran.assert_user_error(&["perplexity objective knows its directions"]);
}

#[test]
fn a_sweep_scores_each_cell_as_eval_scores_its_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    family(root);
    let ran = run(
        BIN,
        root,
        &[
            "sweep",
            "recipe.yml",
            "--param",
            "models.0.weight=0,1",
            "--objective",
            "ppl:texts",
            "--json",
            "sweep.json",
        ],
    );
    ran.assert_success();
    assert!(
        ran.stderr().contains("sweep: 2 cells of perplexity"),
        "{}",
        ran.stderr()
    );
    // Lower is better: the table shows the mean perplexity and marks the lowest.
    assert!(ran.stdout().contains("mean/perplexity"), "{}", ran.stdout());
    let report = read_json(&root.join("sweep.json"));
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    let means: Vec<f64> = cells
        .iter()
        .map(|c| c["scores"]["mean/perplexity"].as_f64().unwrap())
        .collect();
    assert_ne!(means[0], means[1]);
    let lowest = usize::from(means[1] < means[0]);
    assert_eq!(report["best"], cells[lowest]["index"]);
    for (n, cell) in cells.iter().enumerate() {
        let file = format!("cell_{n}.yml");
        std::fs::write(root.join(&file), cell["recipe"].as_str().unwrap()).unwrap();
        let alone = eval(root, &file);
        for (metric, value) in cell["scores"].as_object().unwrap() {
            let (got, want) = (value.as_f64().unwrap(), alone[metric].as_f64().unwrap());
            assert!(close(got, want), "cell {n} {metric}: {got} vs eval {want}");
        }
    }
}
