//! The built-in language-model demo family in the workbench: one click in the Models panel
//! opens it with its task-arithmetic recipe and its held-out texts, the Merge panel compares
//! the merge's perplexity per domain with the base's and each fine-tune's, and offers text
//! generation; replacing unsaved settings asks first. The family's bytes are retrained from
//! time to time, so no perplexity is pinned here: only that each is there and finite; and it
//! is scored on the beginning of its texts (the whole of them takes minutes per model in an
//! unoptimised build).

mod common;

use common::{
    click_through, drag_slider_to_the_end, harness, lm_demo_opened, lm_previewed, opened,
    step_until,
};
use egui::accesskit::Role;
use egui_kittest::kittest::{By, Queryable as _};
use mergescope::gui::state::BuiltinDemo;
use mergescope_core::eval::compare::format_value;
use mergescope_core::eval::lm::demo::{DOMAINS, RECIPES};
use mergescope_core::merge::recipe::{ParamValue, Recipe, Scalar};

#[test]
fn one_click_opens_the_language_model_demo_with_its_perplexity_preview_and_generation() {
    let mut harness = harness();
    opened(&mut harness);
    // On the Models panel, where the workbench opens.
    click_through(&mut harness, &["Open the language-model demo"]);
    let texts = lm_demo_opened(&mut harness);
    harness.get_by_label_contains("The built-in language-model demo");
    // The Merge panel previews the merge on the texts at once.
    click_through(&mut harness, &["Merge"]);
    lm_previewed(&mut harness);

    let app = harness.state();
    let family = app.family.as_ref().unwrap();
    assert!(!family.is_demo, "scored by perplexity, not the digits");
    assert_eq!(family.models.len(), DOMAINS.len());
    for (model, domain) in family.models.iter().zip(DOMAINS) {
        assert!(model.ends_with(domain), "{}", model.display());
    }
    // The shipped task-arithmetic recipe's weights (whichever they are), one per fine-tune.
    let settings = app.settings.as_ref().unwrap();
    let (_, shipped) = RECIPES
        .iter()
        .find(|(name, _)| *name == "task_arithmetic")
        .unwrap();
    let shipped = Recipe::from_yaml(shipped, std::path::Path::new("task_arithmetic.yml")).unwrap();
    assert_eq!(settings.method, shipped.merge_method);
    let weights: Vec<f64> = shipped
        .models
        .iter()
        .map(|m| {
            match m
                .parameters
                .get("weight")
                .or(shipped.parameters.get("weight"))
            {
                Some(ParamValue::Scalar(Scalar::Number(w))) => *w,
                other => panic!("{}: weight {other:?}", m.model),
            }
        })
        .collect();
    assert_eq!(settings.weights, weights);
    let said: Vec<&str> = app.notices.iter().map(|n| n.notice.text.as_str()).collect();
    assert!(
        said.iter()
            .any(|t| t.starts_with("opened and loaded") && t.ends_with("task_arithmetic.yml")),
        "{said:?}"
    );
    assert!(app.notices.iter().all(|n| !n.notice.error), "{said:?}");
    assert!(!app.unsaved(), "the shipped recipe counts as saved");
    // Its held-out texts (their beginnings), one domain per fine-tune.
    let loaded = app.texts.loaded.as_ref().unwrap();
    assert_eq!(loaded.dir, texts.path());
    let read: Vec<&str> = loaded
        .perplexity
        .domains
        .domains
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(read, DOMAINS);
    // The merge's, the base's and each fine-tune's perplexity on each domain, finite.
    let preview = app.preview.as_ref().unwrap();
    let inputs = &preview.inputs.as_ref().unwrap().full;
    for domain in DOMAINS {
        let metric = format!("{domain}/perplexity");
        let merge = preview.scores[&metric];
        assert!(merge.is_finite() && merge > 1.0, "{metric}: {merge}");
        let base = inputs.base.as_ref().expect("the base is scored")[&metric];
        assert!(base.is_finite() && base > 1.0, "base {metric}: {base}");
        assert_eq!(inputs.models.len(), DOMAINS.len());
        for (model, scores) in &inputs.models {
            let v = scores[&metric];
            assert!(v.is_finite() && v > 1.0, "{model} {metric}: {v}");
        }
    }

    // On screen, in the comparison (from its title to its last row): a row for the merge,
    // the base and each fine-tune, and a column per domain.
    harness.get_by_label(
        "Preview: perplexity of the merge per text domain, beside its base and each model \
         (lower is better)",
    );
    let top = harness
        .get_by_label("This merge, the base and each input model")
        .rect()
        .min
        .y;
    let bottom = harness.get_by_label("vs best single").rect().max.y;
    let in_comparison = |label: &str| {
        harness
            .query_all(By::new().label(label))
            .filter(|n| (top..=bottom).contains(&n.rect().center().y))
            .count()
    };
    for row in ["this merge", "base", "vs base"] {
        assert_eq!(in_comparison(row), 1, "the row `{row}`");
    }
    for domain in DOMAINS {
        // Its column's title and its fine-tune's row.
        assert_eq!(in_comparison(domain), 2, "`{domain}`");
    }
    // Every cell holds its number: the merge's, the base's and each fine-tune's.
    let app = harness.state();
    let preview = app.preview.as_ref().unwrap();
    let inputs = &preview.inputs.as_ref().unwrap().full;
    for domain in DOMAINS {
        let metric = format!("{domain}/perplexity");
        let values = std::iter::once(preview.scores[&metric])
            .chain(std::iter::once(inputs.base.as_ref().unwrap()[&metric]))
            .chain(inputs.models.iter().map(|(_, scores)| scores[&metric]));
        for value in values {
            let shown = format_value(&metric, value);
            assert!(in_comparison(&shown) >= 1, "{metric} {shown} is not shown");
        }
    }
    // Every merge in the history was scored on the texts (none data-free before they were
    // read), its mean perplexity its headline.
    let history = &harness.state().history.entries;
    assert!(!history.is_empty());
    for entry in history {
        let mean = entry.scores.get("mean/perplexity").copied();
        let mean = mean.unwrap_or_else(|| panic!("#{}: {:?}", entry.id, entry.scores));
        let shown = format_value("mean/perplexity", mean);
        assert!(
            harness.query_all(By::new().label(&shown)).next().is_some(),
            "#{}'s {shown} is not shown",
            entry.id
        );
    }
    // The generation section, ready for a prompt.
    harness.get_by_label("Text generation");
    harness.get_by_role_and_label(Role::TextInput, "Prompt");
    harness.get_by_label("Generate");
    step_until(&mut harness, "the family seen as a language model", |app| {
        app.generation.is_language_model().filter(|&yes| yes)
    });
}

#[test]
fn opening_the_language_model_demo_over_unsaved_settings_asks_first() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    drag_slider_to_the_end(&mut harness, "upright weight");
    let tuned = harness.state().settings.clone();
    assert!(harness.state().unsaved());
    click_through(&mut harness, &["Models", "Open the language-model demo"]);
    harness.get_by_label("Unsaved merge settings");
    harness.get_by_label_contains("Opening the language-model demo family replaces");
    click_through(&mut harness, &["Cancel"]);
    assert!(harness.state().confirm_open.is_none());
    assert_eq!(harness.state().settings, tuned, "cancel keeps them");
    assert!(harness.state().busy.is_none(), "and opens nothing");
    assert!(
        harness
            .state()
            .family
            .as_ref()
            .is_some_and(|f| f.builtin == Some(BuiltinDemo::Digits))
    );

    click_through(
        &mut harness,
        &["Open the language-model demo", "Open without saving"],
    );
    let _texts = lm_demo_opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    lm_previewed(&mut harness);
    let app = harness.state();
    assert_eq!(app.settings.as_ref().unwrap().method, "task_arithmetic");
    assert_ne!(app.settings, tuned);
    assert!(!app.unsaved());
}
