//! `mergescope generate`: a language model's, or a recipe's in-memory merge's, continuation
//! of a prompt, on a tiny Llama family whose experts each favour a word.

use std::path::Path;

use mergescope_tests::cli::run;
use mergescope_tests::fixture::tiny_llama_favouring;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// `base/`, `a/` (favours `w7`), `b/` (favours `w21`, a little more) and a task-arithmetic
/// recipe over them with weights `a` and `b`.
fn family(root: &Path) {
    tiny_llama_favouring(&root.join("base"), None);
    tiny_llama_favouring(&root.join("a"), Some((7, 3.0)));
    tiny_llama_favouring(&root.join("b"), Some((21, 5.0)));
    recipe(root, "recipe.yml", 0.5, 0.5);
}

fn recipe(root: &Path, name: &str, a: f64, b: f64) {
    std::fs::write(
        root.join(name),
        format!(
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    \
             parameters: {{weight: {a}}}\n  - model: b\n    parameters: {{weight: {b}}}\n"
        ),
    )
    .unwrap();
}

/// The words the model wrote after the prompt.
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

fn generated(root: &Path, target: &str, extra: &[&str]) -> String {
    let mut args = vec!["generate", target, "--prompt", "w3 w17 w42"];
    args.extend_from_slice(extra);
    let ran = run(BIN, root, &args);
    ran.assert_success();
    assert!(ran.stderr().contains("tokens/s"), "{}", ran.stderr());
    ran.stdout()
}

#[test]
fn a_model_and_a_recipes_merge_continue_a_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    family(root);
    // Each expert writes its word; the base something else.
    let a = words(&generated(root, "a", &["--max-tokens", "6"]));
    assert_eq!(a, vec!["w7"; 6]);
    assert_eq!(
        words(&generated(root, "b", &["--max-tokens", "6"])),
        vec!["w21"; 6]
    );
    let base = words(&generated(root, "base", &["--max-tokens", "6"]));
    assert_eq!(base.len(), 6);
    assert!(!base.contains(&"w7".to_owned()) || !base.contains(&"w21".to_owned()));
    // The merge follows its weights: the stronger raise wins at equal weights, and a's when
    // it weighs more.
    assert_eq!(
        words(&generated(root, "recipe.yml", &["--max-tokens", "4"])),
        vec!["w21"; 4]
    );
    recipe(root, "more-a.yml", 1.0, 0.3);
    assert_eq!(
        words(&generated(root, "more-a.yml", &["--max-tokens", "4"])),
        vec!["w7"; 4]
    );
    // Greedy by default repeats itself; the same seed repeats a sampled text, another differs.
    assert_eq!(
        words(&generated(root, "base", &["--max-tokens", "6"])),
        base
    );
    let sampled = |seed: &str| {
        words(&generated(
            root,
            "base",
            &["--max-tokens", "12", "--temperature", "5", "--seed", seed],
        ))
    };
    assert_eq!(sampled("1"), sampled("1"));
    assert!(["2", "3", "4"].iter().any(|s| sampled(s) != sampled("1")));
}

#[test]
fn compare_writes_with_the_base_each_model_and_the_merge_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    family(root);
    let out = generated(root, "recipe.yml", &["--compare", "--max-tokens", "3"]);
    let headings: Vec<&str> = out.lines().filter(|l| l.starts_with("===")).collect();
    assert_eq!(
        headings,
        [
            "=== base: base ===",
            "=== model: a ===",
            "=== model: b ===",
            "=== merge: merge ==="
        ],
        "{out}"
    );
    let after = |heading: &str| {
        let lines: Vec<&str> = out.lines().collect();
        let at = lines.iter().position(|l| *l == heading).unwrap();
        words(lines[at + 1])
    };
    assert_eq!(after("=== model: a ==="), vec!["w7"; 3]);
    assert_eq!(after("=== merge: merge ==="), vec!["w21"; 3]);
    // Without a recipe there is nothing to compare with.
    run(BIN, root, &["generate", "a", "--prompt", "w1", "--compare"])
        .assert_user_error(&["pass a .yml recipe"]);
}

#[test]
fn what_cannot_generate_says_why_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    family(root);
    let fails = |target: &str, needles: &[&str]| {
        run(BIN, root, &["generate", target, "--prompt", "w1"]).assert_user_error(needles);
    };
    // The tokenizer is missing.
    std::fs::remove_file(root.join("a/tokenizer.json")).unwrap();
    fails("a", &["tokenizer.json", "missing"]);
    // Architectures that do not run in process (another language model, a vision model) are
    // named with the ones that do.
    let config = root.join("b/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("LlamaForCausalLM", "MambaForCausalLM"),
    )
    .unwrap();
    fails("b", &["MambaForCausalLM", "LlamaForCausalLM"]);
    std::fs::write(
        &config,
        r#"{"architectures": ["ViTForImageClassification"]}"#,
    )
    .unwrap();
    fails("b", &["ViTForImageClassification", "not run in process"]);
    std::fs::remove_file(&config).unwrap();
    fails("b", &["config.json"]);
    // A prompt longer than the context (64 tokens).
    let long = vec!["w1"; 70].join(" ");
    run(BIN, root, &["generate", "base", "--prompt", &long])
        .assert_user_error(&["70 tokens", "64"]);
    // Nonsense options are refused by name.
    run(
        BIN,
        root,
        &["generate", "base", "--prompt", "w1", "--top-p", "0"],
    )
    .assert_user_error(&["top-p"]);
}
