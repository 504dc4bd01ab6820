//! What a merged folder says about itself, as mergekit's output does: `mergekit_config.yml`,
//! the recipe that made it (mergekit and `mergescope merge` both run it), and a `README.md`
//! model card modelled on mergekit's (Hugging Face front matter, the method with its paper,
//! the base and models, the parameters, the configuration), with what mergescope adds: the
//! scores the workbench's preview gave the merge, the random seed and mergescope's version.
//!
//! Both are derived from the recipe an export carries in its metadata (every merge does), so
//! the card can never describe another merge than the weights beside it. The card holds no
//! time and no output path: the same merge writes the same bytes wherever it is written.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::eval::compare::{Comparison, format_delta, format_value};
use crate::merge::recipe::{ParamValue, Recipe};

/// The recipe, as mergekit names it in its output folders.
pub const MERGEKIT_CONFIG_FILE: &str = "mergekit_config.yml";
/// The model card, as Hugging Face reads it.
pub const CARD_FILE: &str = "README.md";

/// The metadata keys a merge records in every shard (`merge::engine` writes them).
const RECIPE_KEY: &str = "mergescope_recipe";
const VERSION_KEY: &str = "mergescope_version";
const SEED_KEY: &str = "mergescope_random_seed";

/// The scores a merge got before it was written, and what scored them: the card shows them
/// beside the base's and the best single model's, so a reader knows what the merge was tuned
/// for and whether it helped.
#[derive(Clone, Debug, PartialEq)]
pub struct CardScores {
    /// The objective, as the user chose it (`demo accuracy (all test digits)`, `retention`).
    pub objective: String,
    /// The merge's scores and, where they were computed, its inputs' on the same objective.
    pub comparison: Comparison,
}

/// The files an export with `metadata` adds: `mergekit_config.yml` and `README.md` when the
/// metadata holds a merge's recipe, nothing otherwise (synthetic fixtures). A recipe that does
/// not parse back (it always does: the engine wrote it) still gets its config file.
pub(super) fn recipe_files(
    metadata: &BTreeMap<String, String>,
    scores: Option<&CardScores>,
) -> Vec<(&'static str, Vec<u8>)> {
    let Some(yaml) = metadata.get(RECIPE_KEY) else {
        return Vec::new();
    };
    let mut files = vec![(MERGEKIT_CONFIG_FILE, yaml.clone().into_bytes())];
    if let Ok(recipe) = Recipe::from_yaml(yaml, Path::new(MERGEKIT_CONFIG_FILE)) {
        let card = model_card(&CardInput {
            recipe: &recipe,
            yaml,
            version: metadata.get(VERSION_KEY).map_or("unknown", String::as_str),
            seed: metadata.get(SEED_KEY).map(String::as_str),
            scores,
        });
        files.push((CARD_FILE, card.into_bytes()));
    }
    files
}

/// What a model card is written from.
#[derive(Clone, Copy, Debug)]
pub struct CardInput<'a> {
    pub recipe: &'a Recipe,
    /// The recipe's text as `mergekit_config.yml` holds it.
    pub yaml: &'a str,
    /// mergescope's version.
    pub version: &'a str,
    /// The random seed the merge ran with, as recorded in its metadata.
    pub seed: Option<&'a str>,
    pub scores: Option<&'a CardScores>,
}

/// `README.md` for a merged model.
pub fn model_card(input: &CardInput<'_>) -> String {
    let recipe = input.recipe;
    let (pretty, paper) = method_reference(&recipe.merge_method);
    let method = paper.map_or_else(|| pretty.to_owned(), |url| format!("[{pretty}]({url})"));
    let base = recipe.base_model.as_deref();
    // The base can also be listed among the models (mergekit allows it); it is named once.
    let models: Vec<&str> = recipe
        .model_names()
        .into_iter()
        .filter(|m| Some(*m) != base)
        .collect();

    let mut card = String::new();
    // Front matter: Hugging Face links the card to the models on the hub it was made from.
    card.push_str("---\n");
    let hub: Vec<&str> = base
        .into_iter()
        .chain(models.iter().copied())
        .filter(|p| is_hub_id(p))
        .collect();
    if hub.is_empty() {
        card.push_str("base_model: []\n");
    } else {
        card.push_str("base_model:\n");
        for id in &hub {
            let _ = writeln!(card, "- {id}");
        }
    }
    card.push_str("tags:\n- mergekit\n- merge\n- mergescope\nlibrary_name: transformers\n---\n");

    let plural = if models.len() == 1 { "" } else { "s" };
    let on_base = if base.is_some() { " on a base" } else { "" };
    let _ = writeln!(
        card,
        "# A {pretty} merge of {} model{plural}{on_base}\n",
        models.len()
    );
    let _ = writeln!(
        card,
        "This is a merge of pre-trained language models created with mergescope {} from a \
         [mergekit](https://github.com/arcee-ai/mergekit) recipe; `{MERGEKIT_CONFIG_FILE}` \
         beside this file is that recipe and runs with either tool.\n",
        input.version
    );
    card.push_str("## Merge Details\n### Merge Method\n\n");
    let using = base.map_or_else(String::new, |b| format!(" using {} as a base", code(b)));
    let _ = writeln!(
        card,
        "This model was merged using the {method} merge method{using}.\n"
    );
    card.push_str("### Models Merged\n\nThe following models were included in the merge:\n");
    for model in &models {
        let _ = writeln!(card, "* {}", code(model));
    }
    card.push('\n');

    card.push_str("### Parameters\n\n");
    parameters(&mut card, recipe, base);

    if let Some(scores) = input.scores.filter(|s| !s.comparison.metrics.is_empty()) {
        scores_table(&mut card, scores);
    }

    card.push_str(
        "### Configuration\n\nThe following YAML configuration was used to produce this model:\n\n",
    );
    let _ = writeln!(card, "```yaml\n{}\n```\n", input.yaml.trim_end());
    if let Some(seed) = input.seed {
        let _ = writeln!(
            card,
            "Random seed {seed}: `mergescope merge {MERGEKIT_CONFIG_FILE} --out DIR \
             --random-seed {seed}`, run where the model paths above resolve, writes these \
             weights again.\n"
        );
    }
    let _ = writeln!(card, "Written by mergescope {}.", input.version);
    card
}

/// The merge's scores beside the base's and the best single model's, with the differences,
/// as the workbench's preview shows them.
fn scores_table(card: &mut String, scores: &CardScores) {
    card.push_str("### Scores\n\n");
    let _ = writeln!(
        card,
        "Scored in mergescope's preview before it was written, on the objective {}:\n",
        escape(&scores.objective)
    );
    let value = |metric: &str, v: Option<f64>| {
        v.map_or_else(|| "-".to_owned(), |v| format_value(metric, v))
    };
    let delta = |metric: &str, d: Option<f64>| {
        d.map_or_else(|| "-".to_owned(), |d| format_delta(metric, d))
    };
    card.push_str(
        "| metric | this merge | base | vs base | best single model | vs best |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in &scores.comparison.metrics {
        let best = match (&row.best_single, row.delta_to_best) {
            (Some(label), Some(d)) => {
                let score = value(&row.metric, Some(row.merge - d));
                (
                    format!("{} ({score})", code(label)),
                    delta(&row.metric, Some(d)),
                )
            }
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            card,
            "| {} | {} | {} | {} | {} | {} |",
            escape(&row.metric),
            format_value(&row.metric, row.merge),
            value(&row.metric, row.base),
            delta(&row.metric, row.delta_to_base),
            best.0,
            best.1
        );
    }
    card.push('\n');
}

/// The per-model parameters as a table (a column per parameter, in the order the recipe
/// first names them) and the global ones as a list.
fn parameters(card: &mut String, recipe: &Recipe, base: Option<&str>) {
    let mut columns: Vec<&str> = Vec::new();
    for entry in &recipe.models {
        for name in entry.parameters.keys() {
            if !columns.contains(&name.as_str()) {
                columns.push(name);
            }
        }
    }
    if !columns.is_empty() {
        let _ = writeln!(card, "| model | {} |", columns.join(" | "));
        let _ = writeln!(card, "|---|{}", "---|".repeat(columns.len()));
        for entry in &recipe.models {
            let role = if Some(entry.model.as_str()) == base {
                " (base)"
            } else {
                ""
            };
            let cells: Vec<String> = columns
                .iter()
                .map(|c| entry.parameters.get(*c).map(inline).unwrap_or_default())
                .collect();
            let _ = writeln!(
                card,
                "| {}{role} | {} |",
                code(&entry.model),
                cells.join(" | ")
            );
        }
        card.push('\n');
    }
    let mut all: Vec<String> = recipe
        .parameters
        .iter()
        .map(|(name, value)| format!("* `{name}`: {}", inline(value)))
        .collect();
    for (key, value) in [("dtype", &recipe.dtype), ("out_dtype", &recipe.out_dtype)] {
        if let Some(value) = value {
            all.push(format!("* `{key}`: {}", escape(value)));
        }
    }
    if let Some(source) = &recipe.tokenizer_source {
        all.push(format!("* `tokenizer_source`: {}", code(source)));
    }
    if !recipe.slices.is_empty() {
        card.push_str(
            "The layer ranges, and the parameters set per slice and per source, are in the \
             configuration below.\n\n",
        );
    } else if columns.is_empty() && recipe.parameters.is_empty() {
        card.push_str("Every parameter at the method's default.\n\n");
    }
    if !all.is_empty() {
        let _ = writeln!(card, "For all models:\n\n{}\n", all.join("\n"));
    }
}

/// A parameter value on one line ([`ParamValue`]'s display), escaped for Markdown.
fn inline(value: &ParamValue) -> String {
    escape(&value.to_string())
}

/// A path or name in Markdown: in backticks, so underscores and asterisks stay literal.
fn code(text: &str) -> String {
    if text.contains('`') {
        escape(text)
    } else {
        format!("`{}`", text.replace('|', "\\|"))
    }
}

/// Text that cannot break a table row or start Markdown markup.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '|' | '*' | '_' | '`' | '<' | '>' | '\\') {
            out.push('\\');
        }
        if c == '\n' {
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// Is `path` a Hugging Face hub id (`owner/name` or `name`) rather than a local path? mergekit's
/// rule: anything that starts like a path, has more than one `/`, or exists here is local.
fn is_hub_id(path: &str) -> bool {
    let valid = !path.is_empty()
        && path.matches('/').count() <= 1
        && !path.starts_with(['.', '/', '~', '-'])
        && !path.ends_with('/')
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
    valid && !Path::new(path).exists()
}

/// mergekit's name for a method and the paper (or page) that defines it.
pub fn method_reference(method: &str) -> (&str, Option<&'static str>) {
    match method {
        "linear" => ("Linear", Some("https://arxiv.org/abs/2203.05482")),
        "task_arithmetic" => ("Task Arithmetic", Some("https://arxiv.org/abs/2212.04089")),
        "ties" => ("TIES", Some("https://arxiv.org/abs/2306.01708")),
        "dare_ties" => ("DARE TIES", Some("https://arxiv.org/abs/2311.03099")),
        "dare_linear" => ("Linear DARE", Some("https://arxiv.org/abs/2311.03099")),
        "breadcrumbs" => (
            "Model Breadcrumbs",
            Some("https://arxiv.org/abs/2312.06795"),
        ),
        "breadcrumbs_ties" => (
            "Model Breadcrumbs with TIES",
            Some("https://arxiv.org/abs/2312.06795"),
        ),
        "della" => ("DELLA", Some("https://arxiv.org/abs/2406.11617")),
        "della_linear" => ("Linear DELLA", Some("https://arxiv.org/abs/2406.11617")),
        "model_stock" => ("Model Stock", Some("https://arxiv.org/abs/2403.19522")),
        "slerp" => ("SLERP", Some("https://en.wikipedia.org/wiki/Slerp")),
        "nuslerp" => ("NuSLERP", None),
        "multislerp" => (
            "Multi-SLERP",
            Some("https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"),
        ),
        "karcher" => (
            "Karcher Mean",
            Some("https://en.wikipedia.org/wiki/Karcher_mean"),
        ),
        "sce" => ("SCE", Some("https://arxiv.org/abs/2408.07990")),
        "nearswap" => (
            "NearSwap",
            Some("https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"),
        ),
        "passthrough" => ("Passthrough", None),
        "arcee_fusion" => ("Arcee Fusion", Some("https://arcee.ai")),
        "ram" => (
            "Reinforced Agent Merging",
            Some("https://arxiv.org/abs/2601.13572"),
        ),
        "tsv_m" => (
            "Task Singular Vectors Merging",
            Some("https://arxiv.org/abs/2412.00081"),
        ),
        "iso_c" => ("Iso-C", Some("https://arxiv.org/abs/2502.04959")),
        "iso_cts" => ("Iso-CTS", Some("https://arxiv.org/abs/2502.04959")),
        "ramplus_tl" => (
            "Reinforced Agent Merging Plus (Tensor-Local)",
            Some("https://arxiv.org/abs/2601.13572"),
        ),
        other => (other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "merge_method: ties\nbase_model: meta-llama/Llama-3.1-8B\nmodels:\n  \
        - model: /models/math_ft\n    parameters:\n      weight: 0.6\n      density: [0.2, 0.8]\n  \
        - model: org/code_ft\n    parameters:\n      weight:\n        - filter: self_attn\n          \
        value: 0.5\n        - value: 1\nparameters:\n  lambda: 0.9\nout_dtype: bfloat16\n";

    fn card(scores: Option<&CardScores>) -> String {
        let recipe = Recipe::from_yaml(YAML, Path::new("r.yml")).unwrap();
        model_card(&CardInput {
            recipe: &recipe,
            yaml: YAML,
            version: "9.9.9",
            seed: Some("42"),
            scores,
        })
    }

    #[test]
    fn the_card_names_base_models_method_parameters_and_version() {
        let card = card(None);
        assert!(
            card.starts_with(
                "---\nbase_model:\n- meta-llama/Llama-3.1-8B\n- org/code_ft\ntags:\n- mergekit\n"
            ),
            "{card}"
        );
        assert!(
            card.contains(
                "library_name: transformers\n---\n# A TIES merge of 2 models on a base\n"
            ),
            "{card}"
        );
        assert!(
            card.contains(
                "using the [TIES](https://arxiv.org/abs/2306.01708) merge method using \
                 `meta-llama/Llama-3.1-8B` as a base."
            ),
            "{card}"
        );
        assert!(
            card.contains("* `/models/math_ft`\n* `org/code_ft`\n"),
            "{card}"
        );
        assert!(card.contains("| model | weight | density |"), "{card}");
        assert!(
            card.contains("| `/models/math_ft` | 0.6 | [0.2, 0.8] |"),
            "{card}"
        );
        assert!(
            card.contains("| `org/code_ft` | self\\_attn: 0.5; \\*: 1 |  |"),
            "{card}"
        );
        assert!(
            card.contains("For all models:\n\n* `lambda`: 0.9\n* `out_dtype`: bfloat16\n"),
            "{card}"
        );
        assert!(card.contains(&format!("```yaml\n{YAML}```")), "{card}");
        assert!(card.contains("--random-seed 42"), "{card}");
        assert!(card.ends_with("Written by mergescope 9.9.9.\n"), "{card}");
        assert!(!card.contains("### Scores"), "{card}");
    }

    #[test]
    fn scores_show_beside_the_base_and_the_best_model_as_the_workbench_shows_them() {
        use crate::eval::compare::InputScores;
        let merge = BTreeMap::from([
            ("upright/accuracy".to_owned(), 0.9217),
            ("mean/accuracy".to_owned(), 0.9),
        ]);
        let inputs = InputScores {
            base: Some(BTreeMap::from([("upright/accuracy".to_owned(), 0.875)])),
            models: vec![
                (
                    "/m/upright".to_owned(),
                    BTreeMap::from([("upright/accuracy".to_owned(), 0.961)]),
                ),
                (
                    "/m/rotated".to_owned(),
                    BTreeMap::from([("upright/accuracy".to_owned(), 0.817)]),
                ),
            ],
        };
        let scores = CardScores {
            objective: "demo accuracy (all test digits)".to_owned(),
            comparison: Comparison::new(&merge, &inputs),
        };
        let card = card(Some(&scores));
        assert!(
            card.contains("on the objective demo accuracy (all test digits):"),
            "{card}"
        );
        // Formatted as the workbench and `eval --compare` format them.
        let (pct, pp) = (
            |v| format_value("upright/accuracy", v),
            |d| format_delta("upright/accuracy", d),
        );
        let row = format!(
            "| upright/accuracy | {} | {} | {} | `/m/upright` ({}) | {} |\n",
            pct(0.9217),
            pct(0.875),
            pp(0.9217 - 0.875),
            pct(0.961),
            pp(0.9217 - 0.961)
        );
        assert!(card.contains(&row), "{row}\n{card}");
        // The mean comes last; no input has it.
        let mean = format!("| mean/accuracy | {} | - | - | - | - |\n\n", pct(0.9));
        assert!(card.contains(&mean), "{card}");
    }

    #[test]
    fn only_an_export_with_a_recipe_gets_the_files() {
        assert!(recipe_files(&BTreeMap::new(), None).is_empty());
        let meta = BTreeMap::from([
            (RECIPE_KEY.to_owned(), YAML.to_owned()),
            (VERSION_KEY.to_owned(), "1.2.3".to_owned()),
        ]);
        let files = recipe_files(&meta, None);
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [MERGEKIT_CONFIG_FILE, CARD_FILE]);
        assert_eq!(files[0].1, YAML.as_bytes());
        let card = String::from_utf8(files[1].1.clone()).unwrap();
        assert!(card.contains("mergescope 1.2.3"), "{card}");
    }

    #[test]
    fn hub_ids_are_told_from_local_paths() {
        assert!(is_hub_id("meta-llama/Llama-3.1-8B"));
        assert!(is_hub_id("gpt2"));
        for local in [
            "/models/x",
            "./x",
            "~/x",
            "a/b/c",
            "C:\\models",
            "a b/c",
            "",
        ] {
            assert!(!is_hub_id(local), "{local}");
        }
    }

    #[test]
    fn every_method_has_mergekit_s_name() {
        for method in crate::merge::methods::implemented_names() {
            let (name, _) = method_reference(method);
            assert_ne!(name, method, "no card name for {method}");
        }
        assert_eq!(
            method_reference("dare_ties"),
            ("DARE TIES", Some("https://arxiv.org/abs/2311.03099"))
        );
    }
}
