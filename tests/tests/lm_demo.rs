//! `mergescope demo --lm`: the embedded language-model family is extracted, merged by a shipped
//! recipe and scored by perplexity, and its fine-tunes really are specialised.

use mergescope_tests::cli::run;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");
const DOMAINS: [&str; 3] = ["code", "docs", "legal"];

/// The perplexities printed on the row starting with `label`: one per domain, then the mean.
fn row(stdout: &str, label: &str) -> Vec<f64> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row `{label}` in\n{stdout}"));
    let cells: Vec<f64> = line[label.len()..]
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(cells.len(), DOMAINS.len() + 1, "{line}");
    cells
}

#[test]
fn demo_lm_merges_the_family_and_prints_perplexity_per_domain() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    // The first tokens of each text keep this quick in a debug build.
    let ran = run(
        BIN,
        dir.path(),
        &["demo", "--lm", "--dir", dir_arg, "--tokens", "200"],
    );
    ran.assert_success();
    let stdout = ran.stdout();
    assert!(stdout.contains("first 200 tokens"), "{stdout}");
    let base = row(&stdout, "base");
    for (i, domain) in DOMAINS.iter().enumerate() {
        let expert = row(&stdout, &format!("{domain} fine-tune"));
        assert!(
            expert[i] < base[i],
            "{domain}: fine-tune {} vs base {}",
            expert[i],
            base[i]
        );
    }
    let merged = row(&stdout, "merged (task_arithmetic)");
    assert!(
        merged.iter().all(|p| p.is_finite() && *p > 1.0),
        "{merged:?}"
    );
    let family = dir.path().join("family");
    for file in [
        "base/model.safetensors",
        "base/tokenizer.json",
        "code/config.json",
        "texts/legal.txt",
        "recipes/ties.yml",
    ] {
        assert!(family.join(file).is_file(), "{file}");
    }
    assert!(dir.path().join("merged/model.safetensors").is_file());
    assert!(dir.path().join("merged/tokenizer.json").is_file());
}

#[test]
fn demo_lm_names_the_shipped_recipes_when_asked_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let ran = run(
        BIN,
        dir.path(),
        &["demo", "--lm", "--dir", dir_arg, "--recipe", "dare"],
    );
    ran.assert_user_error(&["dare", "task_arithmetic"]);
}
