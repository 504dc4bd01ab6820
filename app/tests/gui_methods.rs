//! The Merge panel on every method the core implements, driven as a user would: slerp with a
//! dragged `t`, a per-layer `t` curve and per-module curves, previewed and exported to what
//! `mergescope merge` makes of the panel's recipe; every other method picked once, its recipe
//! loaded back exactly and accepted by `mergescope merge`; and a recipe the panel cannot edit
//! shown read-only with its reason, still previewed and exported. On a tiny family (4 layers,
//! hidden 8) so the whole file runs in seconds.

use std::path::{Path, PathBuf};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::methods::methods;
use mergescope::gui::state::MergeSettings;
use mergescope_core::merge::recipe::Recipe;
use safetensors::Dtype;

mod common;
use common::{
    click_through, drag_slider_to_the_end, harness_on, step_until, wait_for, write_llama,
};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope");

/// A Llama-named model with 4 blocks of attention and MLP tensors (hidden 8) in `folder`;
/// `shift` makes it a different model (and different per layer, so per-layer curves matter).
fn write_model(folder: &Path, shift: f32) -> PathBuf {
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![16, 8])];
    for l in 0..4 {
        for module in [
            "self_attn.q_proj",
            "self_attn.o_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            tensors.push((format!("model.layers.{l}.{module}.weight"), vec![8, 8]));
        }
    }
    tensors.push(("model.norm.weight".into(), vec![8]));
    write_llama(folder, tensors, Dtype::F32, 4, |t, _, i| {
        let base = ((i * 7 + t * 13) % 23) as f32 * 0.05 - 0.5;
        base + shift * (((i * 5 + t) % 7) as f32 - 3.0) * (1.0 + t as f32 * 0.1)
    })
}

fn family(dir: &Path) -> Vec<PathBuf> {
    vec![
        write_model(&dir.join("base"), 0.0),
        write_model(&dir.join("math"), 0.02),
        write_model(&dir.join("code"), -0.03),
    ]
}

/// The workbench on the tiny family, on the Merge panel.
fn on_the_merge_panel(paths: &[PathBuf]) -> Harness<'static, Workbench> {
    let mut harness = harness_on(paths);
    wait_for(&mut harness, "the family", |app| {
        app.family.is_some() && app.busy.is_none()
    });
    click_through(&mut harness, &["Merge"]);
    harness
}

fn settings(harness: &Harness<'_, Workbench>) -> MergeSettings {
    harness.state().settings.clone().expect("a family is open")
}

fn yaml(harness: &Harness<'_, Workbench>) -> String {
    let app = harness.state();
    settings(harness).to_yaml(app.family.as_ref().unwrap())
}

/// Waits for the full preview of the current recipe and returns its scores.
fn previewed(harness: &mut Harness<'_, Workbench>) -> Vec<(String, f64)> {
    let yaml = yaml(harness);
    let scores = step_until(harness, "the preview of the current recipe", |app| {
        app.preview
            .as_ref()
            .filter(|p| p.yaml == yaml && p.full)
            .map(|p| p.objective_scores().1)
    });
    harness.run_ok();
    let mut scores: Vec<(String, f64)> = scores.into_iter().collect();
    scores.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!scores.is_empty(), "the preview has numbers");
    scores
}

/// Runs `mergescope merge` on `recipe` into `out`, failing with its message.
fn cli_merge(recipe: &Path, out: &Path) {
    let run = std::process::Command::new(BIN)
        .args(["merge", "--backend", "cpu", "--random-seed", "0", "--out"])
        .arg(out)
        .arg(recipe)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}: {}",
        recipe.display(),
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Exports the current settings into `out` from the Export panel, then checks that
/// `mergescope merge` of the panel's recipe, saved where the workbench takes its recipe to
/// live (beside the base: relative paths resolve as they did), writes the same weights.
fn exported_as_the_cli_merges(harness: &mut Harness<'_, Workbench>, dir: &Path, out: &Path) {
    let panel_yaml = yaml(harness);
    harness.get_by_label("Export").click();
    harness.state_mut().export_dir = out.display().to_string();
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    step_until(harness, "the export", |app| {
        app.notice
            .as_ref()
            .filter(|n| n.text.starts_with("wrote") || n.error)
            .map(|n| assert!(!n.error, "{}", n.text))
    });
    let written = std::fs::read(out.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap();
    let parse = |text: &str| Recipe::from_yaml(text, Path::new("r.yml")).unwrap();
    assert_eq!(
        parse(&config),
        parse(&panel_yaml),
        "the exported recipe is the panel's"
    );
    let family = harness.state().family.clone().unwrap();
    let recipe = family.recipe_file().with_file_name("panel.yml");
    std::fs::write(&recipe, &panel_yaml).unwrap();
    let again = dir.join("again");
    cli_merge(&recipe, &again);
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        written
    );
    click_through(harness, &["Merge"]);
}

/// Picks `method` in the method list (the history's table has a "method" column too).
fn pick(harness: &mut Harness<'_, Workbench>, method: &str) {
    harness
        .get_by_role_and_label(Role::ComboBox, "method")
        .click();
    harness.run_ok();
    // Through accessibility: the combo box's own tooltip may cover the list's last entries.
    harness
        .get_by_role_and_label(Role::Button, method)
        .click_accesskit();
    harness.run_ok();
    assert_eq!(settings(harness).method, method);
    // The list stays open after an accessibility click: closed as a user would.
    harness.key_press(egui::Key::Escape);
    harness.run_ok();
}

/// Drags the control point labelled `label` by `dy` points (up is negative).
fn drag_point(harness: &mut Harness<'_, Workbench>, label: &str, dy: f32) {
    let point = harness
        .get_by_role_and_label(Role::Slider, label)
        .rect()
        .center();
    harness.drag_at(point);
    harness.step();
    for k in 1..=4 {
        harness.hover_at(point + egui::vec2(0.0, dy * k as f32 / 4.0));
        harness.step();
    }
    harness.drop_at(point + egui::vec2(0.0, dy));
    harness.run_ok();
}

#[test]
fn slerp_with_t_curves_previews_and_exports_what_the_cli_merges() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(&dir.path().join("family"));
    let mut harness = on_the_merge_panel(&paths);
    pick(&mut harness, "slerp");
    let s = settings(&harness);
    assert_eq!(s.method, "slerp");
    assert_eq!(
        s.included,
        [true, false],
        "slerp takes one model besides the base"
    );
    assert!(yaml(&harness).contains("  t: 0.5\n"), "{}", yaml(&harness));
    let even = previewed(&mut harness);

    // Two models included: said in words, and no broken recipe is previewed.
    harness.get_by_label("include code").click();
    harness.run_ok();
    harness.get_by_label_contains(
        "slerp merges exactly one model besides the base, and 2 are included",
    );
    harness.get_by_label("include code").click();
    harness.run_ok();

    drag_slider_to_the_end(&mut harness, "t");
    assert_eq!(settings(&harness).shared_value("t"), 2.0);
    let dragged = previewed(&mut harness);
    assert_ne!(dragged, even, "a different t, different numbers");

    // Per layer: t becomes a flat curve at its value; a dragged point changes it.
    click_through(&mut harness, &["per-layer t"]);
    assert_eq!(settings(&harness).shared_curve, vec![2.0, 2.0]);
    drag_point(&mut harness, "t point 1", 60.0);
    let curve = settings(&harness).shared_curve;
    assert!(curve[0] < 1.5 && curve[1] == 2.0, "dragged down: {curve:?}");
    assert!(
        yaml(&harness).contains(&format!("  t: [{}, 2]\n", curve[0])),
        "{}",
        yaml(&harness)
    );
    let curved = previewed(&mut harness);
    assert_ne!(curved, dragged, "a different curve, different numbers");

    // Per module, as mergekit's gradient-slerp example: attention rises, MLP falls.
    click_through(&mut harness, &["attention/MLP t curves"]);
    let s = settings(&harness);
    let filters: Vec<&str> = s.module_curves.iter().map(|c| c.filter.as_str()).collect();
    assert_eq!(filters, ["self_attn", "mlp"]);
    drag_point(&mut harness, "t mlp point 3", -30.0);
    let text = yaml(&harness);
    assert!(
        text.contains("  t:\n    - {filter: \"self_attn\", value: [0, 0.5, 0.3, 0.7, 1]}\n    - {filter: \"mlp\", value: [1, 0.5, "),
        "{text}"
    );
    let modules = previewed(&mut harness);
    assert_ne!(modules, curved);
    let family = harness.state().family.clone().unwrap();
    let back = MergeSettings::from_recipe(&text, &family.recipe_file(), &family).unwrap();
    assert_eq!(back.to_yaml(&family), text, "the recipe loads back exactly");

    exported_as_the_cli_merges(&mut harness, dir.path(), &dir.path().join("merged"));
}

#[test]
fn every_method_is_edited_and_its_recipe_loads_back_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(&dir.path().join("family"));
    let mut harness = on_the_merge_panel(&paths);
    let family = harness.state().family.clone().unwrap();
    for method in methods() {
        pick(&mut harness, method);
        let s = settings(&harness);
        assert_eq!(s.method, method);
        assert_eq!(s.problem(), None, "{method}: its models are ticked for it");
        let text = yaml(&harness);
        let back = MergeSettings::from_recipe(&text, &family.recipe_file(), &family)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert_eq!(back.read_only, None, "{method}");
        assert_eq!(back.to_yaml(&family), text, "{method}");
        let recipe = dir.path().join(format!("{method}.yml"));
        std::fs::write(&recipe, &text).unwrap();
        cli_merge(&recipe, &dir.path().join(method));
    }
    // The method's own numbers have sliders (karcher's, multislerp's), with tooltips.
    pick(&mut harness, "karcher");
    harness.get_by_role_and_label(Role::Slider, "max_iter");
    harness.get_by_role_and_label(Role::Slider, "tol");
    pick(&mut harness, "nuslerp");
    click_through(&mut harness, &["nuslerp_flatten"]);
    assert!(yaml(&harness).contains("  nuslerp_flatten: false\n"));
    assert!(
        harness
            .query_by_role_and_label(Role::Slider, "code weight")
            .is_some(),
        "nuslerp weighs two models"
    );
}

/// Loads `text` as the recipe file `name` beside the base, and checks that it opens
/// read-only with `reason` shown, without sliders or a method to pick.
fn load_read_only(harness: &mut Harness<'_, Workbench>, name: &str, text: &str, reason: &str) {
    let family = harness.state().family.clone().unwrap();
    let file = family.recipe_file().with_file_name(name);
    std::fs::write(&file, text).unwrap();
    harness.state_mut().load_recipe(file);
    wait_for(harness, "the recipe", |app| {
        app.settings.as_ref().is_some_and(|s| s.read_only.is_some())
    });
    harness.get_by_label_contains(&format!("edited as text: {reason}"));
    assert!(
        harness
            .query_by_role_and_label(Role::Slider, "math weight")
            .is_none(),
        "no sliders"
    );
    assert!(
        harness
            .query_by_role_and_label(Role::ComboBox, "method")
            .is_none(),
        "no method to pick"
    );
}

#[test]
fn a_slices_recipe_is_read_only_and_still_previews_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(&dir.path().join("family"));
    let mut harness = on_the_merge_panel(&paths);
    // TIES over two slices of layers, the second slice's sources shifted by one layer.
    let text = "slices:\n  - sources:\n      - {model: base, layer_range: [0, 2]}\n      - {model: math, layer_range: [0, 2], parameters: {weight: 0.7}}\n      - {model: code, layer_range: [0, 2], parameters: {weight: 0.4}}\n  - sources:\n      - {model: base, layer_range: [1, 4]}\n      - {model: math, layer_range: [1, 4], parameters: {weight: 1.0}}\n      - {model: code, layer_range: [1, 4], parameters: {weight: 0.2}}\nmerge_method: ties\nbase_model: base\nparameters:\n  density: 0.5\ndtype: float32\n";
    load_read_only(
        &mut harness,
        "slices.yml",
        text,
        "the panel does not edit per-slice layer ranges",
    );
    assert_eq!(yaml(&harness), text, "the recipe runs as written");
    previewed(&mut harness);
    exported_as_the_cli_merges(&mut harness, dir.path(), &dir.path().join("merged"));
}

#[test]
fn a_recipe_the_panel_cannot_edit_is_read_only_and_still_previews_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(&dir.path().join("family"));
    let mut harness = on_the_merge_panel(&paths);
    // A per-module weight for one model: mergekit runs it, the panel's sliders cannot show it.
    let text = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: math\n    parameters:\n      weight:\n        - {filter: mlp, value: 0.8}\n        - {value: 0.2}\n  - model: code\n    parameters: {weight: 0.5}\ndtype: float32\n";
    load_read_only(
        &mut harness,
        "per-module.yml",
        text,
        "the panel does not edit per-module model weights ({filter, value}) of math",
    );
    assert_eq!(yaml(&harness), text, "the recipe runs as written");
    previewed(&mut harness);
    exported_as_the_cli_merges(&mut harness, dir.path(), &dir.path().join("merged"));

    // Back to the controls, and undo brings the recipe back.
    let read_only = settings(&harness);
    harness
        .get_by_label("Start over with the panel's controls")
        .click();
    harness.run_ok();
    assert_eq!(settings(&harness).read_only, None);
    harness.get_by_role_and_label(Role::Slider, "math weight");
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Z);
    harness.run_ok();
    assert_eq!(settings(&harness), read_only);

    // Editing the text still works: a parse error says why.
    let editor = harness.get_by_role(Role::MultilineTextInput);
    editor.focus();
    editor.type_text("\n  oops: [");
    harness.run_ok();
    harness.get_by_label_contains("not applied:");
    assert_eq!(settings(&harness), read_only, "nothing applied");
}
