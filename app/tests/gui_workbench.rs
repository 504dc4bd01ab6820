//! The workbench's comforts, driven as a user would: the preview beside the base and each
//! expert, undo and redo, the history with pins and side-by-side comparison that survives a
//! restart, the message area, asking before unsaved settings are replaced, the editable
//! recipe, and a layout that holds at 1024×700 and on a 4K screen, on the digits demo and on
//! the language-model demo.

use egui::accesskit::Role;
use egui::{Key, Modifiers};
use egui_kittest::Harness;
use egui_kittest::kittest::{By, NodeT as _, Queryable as _};
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;
use mergescope_core::eval::compare::format_value;
use mergescope_core::eval::{Candidate, DemoAccuracy, Fidelity, Objective as _};

mod common;
use common::{
    MemoryStorage, click_through, drag_slider_to_the_end, harness, harness_sized, harness_with,
    opened, save_screenshot, step_until, wait_for,
};

/// Waits for the full preview of the current settings, with the inputs' scores.
fn full_preview(harness: &mut Harness<'_, Workbench>) {
    wait_for(harness, "the full preview with its comparison", |app| {
        app.preview
            .as_ref()
            .is_some_and(|p| p.full && p.inputs.is_some())
            && app.sent_preview.as_ref().is_some_and(|(yaml, full)| {
                *full && app.preview.as_ref().is_some_and(|p| p.yaml == *yaml)
            })
    });
}

fn settings(harness: &Harness<'_, Workbench>) -> mergescope::gui::state::MergeSettings {
    harness.state().settings.clone().expect("a family is open")
}

/// The recipe the current settings make (what a loaded entry must reproduce).
fn recipe(harness: &Harness<'_, Workbench>) -> String {
    let app = harness.state();
    settings(harness).to_yaml(app.family.as_ref().expect("open"))
}

#[test]
fn the_preview_compares_the_merge_with_the_base_and_each_expert() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    full_preview(&mut harness);
    let app = harness.state();
    let preview = app.preview.clone().unwrap();
    let inputs = preview.inputs.clone().unwrap().full.clone();
    let family = app.family.clone().unwrap();
    // Each column is what `mergescope eval` of that model says (the same objective, in full).
    let demo = DemoAccuracy::new().unwrap();
    let eval = |folder: &std::path::Path| {
        demo.evaluate(
            &Candidate {
                folder: Some(folder),
                tensors: None,
            },
            Fidelity::Full,
        )
        .unwrap()
    };
    assert_eq!(inputs.base.as_ref().unwrap(), &eval(&family.base));
    assert_eq!(inputs.models.len(), family.models.len());
    for ((_, scores), folder) in inputs.models.iter().zip(&family.models) {
        assert_eq!(scores, &eval(folder));
    }
    // The table shows the base's mean accuracy in percent, and both deltas.
    let base_mean = inputs.base.as_ref().unwrap()["mean/accuracy"];
    let delta = preview.scores["mean/accuracy"] - base_mean;
    let delta = mergescope_core::eval::compare::format_delta("mean/accuracy", delta);
    for text in [
        format_value("mean/accuracy", base_mean),
        "vs base".to_owned(),
        "vs best single".to_owned(),
        delta,
    ] {
        assert!(
            harness.query_all(By::new().label(&text)).count() >= 1,
            "`{text}` is in the table"
        );
    }
}

#[test]
fn undo_and_redo_restore_the_exact_settings() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    let start = settings(&harness);
    drag_slider_to_the_end(&mut harness, "rotated weight");
    let dragged = settings(&harness);
    assert_ne!(dragged.weights, start.weights);
    click_through(&mut harness, &["method", "ties"]);
    let ties = settings(&harness);
    assert_eq!(ties.method, "ties");

    harness.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    harness.run_ok();
    assert_eq!(settings(&harness), dragged, "one undo: the method change");
    harness.key_press_modifiers(Modifiers::COMMAND, Key::Z);
    harness.run_ok();
    assert_eq!(
        settings(&harness),
        start,
        "two undos: the drag, as one step"
    );
    harness.key_press_modifiers(Modifiers::COMMAND | Modifiers::SHIFT, Key::Z);
    harness.run_ok();
    assert_eq!(settings(&harness), dragged, "redo");
    harness.get_by_label("Redo").click();
    harness.run_ok();
    assert_eq!(settings(&harness), ties);
    harness.get_by_label("Undo").click();
    harness.run_ok();
    assert_eq!(settings(&harness), dragged);
}

#[test]
fn history_entries_pin_side_by_side_load_back_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let start = |dir: std::path::PathBuf| {
        harness_with(&[], egui::vec2(1200.0, 1400.0), move |app| {
            app.data_dir = Some(dir);
        })
    };
    let mut harness = start(dir.clone());
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    full_preview(&mut harness);
    let first = recipe(&harness);
    drag_slider_to_the_end(&mut harness, "mirrored weight");
    full_preview(&mut harness);
    let second = recipe(&harness);
    let entries = harness.state().history.entries.clone();
    assert_eq!(entries.len(), 2, "two settled previews, two entries");
    assert_eq!(
        entries[1].scores,
        harness.state().preview.as_ref().unwrap().scores,
        "an entry keeps the scores it was previewed with"
    );

    // Pin both: they show side by side, the mirrored weight highlighted as differing.
    for id in [1, 2] {
        harness
            .get_by_label(&format!("Pin #{id} to compare it side by side"))
            .click();
        harness.run_ok();
    }
    harness.get_by_label_contains("Pinned merges side by side (2)");
    let differing = harness
        .query_all(By::new().label("mirrored weight"))
        .count();
    assert!(differing >= 1, "the differing setting is a row");
    harness
        .get_by_label_contains("Pinned merges side by side (2)")
        .scroll_to_me();
    harness.run_ok();
    save_screenshot(&mut harness, Panel::Merge, "history.png");

    // Load the first back: exactly its settings.
    harness.get_by_label("Load #1").click();
    harness.run_ok();
    assert_eq!(recipe(&harness), first);
    drop(harness);

    // A restart on the same family brings the history back, pins included.
    let mut harness = start(dir);
    opened(&mut harness);
    let history = &harness.state().history;
    assert_eq!(history.entries.len(), 2);
    assert_eq!(history.pinned().len(), 2);
    click_through(&mut harness, &["Merge", "Load #2"]);
    assert_eq!(recipe(&harness), second);
}

#[test]
fn an_error_is_readable_in_full_and_copyable_in_the_message_area() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("karcher.yml");
    std::fs::write(
        &recipe,
        "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\n",
    )
    .unwrap();
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    harness.state_mut().recipe_path = recipe.display().to_string();
    click_through(&mut harness, &["Load recipe"]);
    let text = step_until(&mut harness, "the error", |app| {
        app.notice.clone().filter(|n| n.error).map(|n| n.text)
    });
    // The workbench edits karcher, but its models are nowhere.
    assert!(text.contains("model `a` not found"), "{text}");
    harness.run_ok();
    assert!(
        harness.state().show_messages,
        "an error opens the message area"
    );
    // The whole text is one label there (the status bar shows it truncated).
    let full = harness.query_all(By::new().label(&text)).count();
    assert!(full >= 1, "the full text is in the message area");
    harness.get_by_label("Copy");
    // Later notices keep the error in the log.
    harness.state_mut().notice = Some(mergescope::gui::app::Notice {
        error: false,
        text: "something else".to_owned(),
    });
    harness.run_ok();
    assert!(harness.query_all(By::new().label(&text)).count() >= 1);
    assert!(harness.state().notices.len() >= 2);
}

#[test]
fn replacing_unsaved_settings_asks_first() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    drag_slider_to_the_end(&mut harness, "upright weight");
    let tuned = settings(&harness);
    assert!(harness.state().unsaved());
    click_through(&mut harness, &["Models", "Open the demo family"]);
    harness.get_by_label("Unsaved merge settings");
    click_through(&mut harness, &["Cancel"]);
    assert!(harness.state().confirm_open.is_none());
    assert_eq!(settings(&harness), tuned, "cancel keeps them");
    assert!(harness.state().busy.is_none(), "and opens nothing");

    click_through(
        &mut harness,
        &["Open the demo family", "Open without saving"],
    );
    wait_for(&mut harness, "the reopened family", |app| {
        app.busy.is_none() && app.settings.as_ref().is_some_and(|s| *s != tuned)
    });
    assert!(!harness.state().unsaved());
}

#[test]
fn the_recipe_text_can_be_edited_and_is_checked_as_it_is_typed() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge", "Recipe (mergekit YAML, editable)"]);
    let yaml = harness.state().preview.as_ref().map_or_else(
        || {
            let app = harness.state();
            app.settings
                .as_ref()
                .unwrap()
                .to_yaml(app.family.as_ref().unwrap())
        },
        |p| p.yaml.clone(),
    );
    let editor = harness.get_by_role(Role::MultilineTextInput);
    editor.focus();
    harness.run_ok();
    // Select all and type a recipe with another method and lambda.
    harness.key_press_modifiers(Modifiers::COMMAND, Key::A);
    let edited = yaml
        .replace("merge_method: task_arithmetic", "merge_method: ties")
        .replace(
            "dtype: float32",
            "parameters:\n  lambda: 0.7\ndtype: float32",
        );
    harness
        .get_by_role(Role::MultilineTextInput)
        .type_text(&edited);
    harness.run_ok();
    let s = settings(&harness);
    assert_eq!((s.method.as_str(), s.lambda), ("ties", 0.7));
    // A broken edit changes nothing and says why.
    harness.key_press_modifiers(Modifiers::COMMAND, Key::A);
    harness
        .get_by_role(Role::MultilineTextInput)
        .type_text("merge_method: ties\nmodels: 3\n");
    harness.run_ok();
    assert_eq!(settings(&harness), s);
    let error = harness.state().yaml_error.clone().expect("an error");
    assert!(error.starts_with("not applied:"), "{error}");
    harness.get_by_label(&error);
}

/// Widgets a user clicks, drags or types into.
const INTERACTIVE: [Role; 7] = [
    Role::Button,
    Role::CheckBox,
    Role::Slider,
    Role::ComboBox,
    Role::TextInput,
    Role::SpinButton,
    Role::RadioButton,
];

/// 1024 × 700 points: a small laptop screen.
const SMALL: egui::Vec2 = egui::vec2(1024.0, 700.0);
/// 3840 × 2160 pixels at a scale of 2: 1920 × 1080 points.
const FOUR_K: egui::Vec2 = egui::vec2(1920.0, 1080.0);

/// The workbench on the digits demo in a window of `size` points at `pixels_per_point`.
fn harness_at(size: egui::Vec2, pixels_per_point: f32) -> Harness<'static, Workbench> {
    Harness::builder()
        .with_size(size)
        .with_pixels_per_point(pixels_per_point)
        .build_eframe(|cc| {
            let mut app = Workbench::new(&cc.egui_ctx, &[]).expect("the worker starts");
            app.data_dir = None;
            app
        })
}

#[test]
fn at_1024_by_700_no_widgets_overlap_and_none_is_cut_off() {
    let mut harness = harness_sized(&[], SMALL);
    digits_demo_with_everything_shown(&mut harness);
    let problems = layout_problems(&mut harness, SMALL);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn on_a_4k_screen_at_twice_the_pixels_no_widgets_overlap() {
    let mut harness = harness_at(FOUR_K, 2.0);
    digits_demo_with_everything_shown(&mut harness);
    let problems = layout_problems(&mut harness, FOUR_K);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_language_model_demo_at_1024_by_700_no_widgets_overlap_and_none_is_cut_off() {
    let mut harness = harness_sized(&[], SMALL);
    let _texts = lm_demo_with_everything_shown(&mut harness);
    let problems = layout_problems(&mut harness, SMALL);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_language_model_demo_on_a_4k_screen_no_widgets_overlap() {
    let mut harness = harness_at(FOUR_K, 2.0);
    let _texts = lm_demo_with_everything_shown(&mut harness);
    let problems = layout_problems(&mut harness, FOUR_K);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The digits demo open and analysed, its merge previewed beside its inputs.
fn digits_demo_with_everything_shown(harness: &mut Harness<'_, Workbench>) {
    opened(harness);
    harness.state_mut().panel = Panel::Merge;
    harness.run_ok();
    full_preview(harness);
}

/// The language-model demo open and analysed, its merge previewed by perplexity beside its
/// inputs, and the generation section's columns written for a prompt: everything its panels
/// can show. Returns the texts' folder, which must outlive the test.
fn lm_demo_with_everything_shown(harness: &mut Harness<'_, Workbench>) -> tempfile::TempDir {
    opened(harness);
    let texts = common::open_lm_demo(harness);
    opened(harness);
    harness.state_mut().panel = Panel::Merge;
    harness.run_ok();
    common::lm_previewed(harness);
    step_until(harness, "the family seen as a language model", |app| {
        app.generation.is_language_model().filter(|&yes| yes)
    });
    {
        let generation = &mut harness.state_mut().generation;
        generation.prompt = "def ".to_owned();
        generation.max_tokens = 6;
    }
    harness.get_by_label("Generate").scroll_to_me();
    harness.run_ok();
    harness.get_by_label("Generate").click();
    step_until(harness, "every column written", |app| {
        let columns = &app.generation.columns;
        (!columns.is_empty()
            && columns.iter().all(|c| {
                matches!(
                    c.state,
                    mergescope::gui::generator::ColumnState::Finished { .. }
                )
            }))
        .then_some(())
    });
    harness.run_ok();
    texts
}

/// Every panel in a window of `size` points, scrolled from top to bottom a window at a
/// time: the widgets a user clicks, drags or types into that overlap another or stick out of
/// the window.
fn layout_problems(harness: &mut Harness<'_, Workbench>, size: egui::Vec2) -> Vec<String> {
    let mut problems = Vec::new();
    for panel in Panel::ALL {
        harness.state_mut().panel = panel;
        harness.run_ok();
        // From the top: the panel's heading into view.
        let heading = harness
            .query_all(By::new().label(panel.title()))
            .find(|n| n.accesskit_node().role() != Role::Button)
            .map(|heading| heading.scroll_to_me());
        if heading.is_some() {
            harness.run_ok();
        }
        let mut below_before = None;
        for _ in 0..40 {
            let (top, bottom) = central_band(harness, size);
            window_problems(harness, panel, (top, bottom), size, &mut problems);
            // The next widget not wholly in view below, scrolled into view (a nested scroll
            // area's rows may stay below: then the panel is done).
            let below = harness
                .query_all(By::new())
                .filter(|n| INTERACTIVE.contains(&n.accesskit_node().role()))
                .filter(|n| {
                    let rect = n.rect();
                    let status_bar = rect.min.y >= bottom - 0.5 && rect.max.y <= size.y + 0.5;
                    rect.max.y > bottom + 0.5 && rect.min.y > top && !status_bar
                })
                .filter(|n| n.rect().area() >= 1.0)
                .min_by(|a, b| a.rect().min.y.total_cmp(&b.rect().min.y));
            let Some(below) = below else {
                break;
            };
            let key = (below.accesskit_node().label(), below.rect().min.y.to_bits());
            if below_before.as_ref() == Some(&key) {
                break;
            }
            below_before = Some(key);
            below.scroll_to_me();
            harness.run_ok();
        }
    }
    problems
}

/// Where the panels' scrolled content shows: below the tabs, above the status bar.
fn central_band(harness: &Harness<'_, Workbench>, size: egui::Vec2) -> (f32, f32) {
    let top = harness
        .query_all(By::new().role(Role::Button))
        .filter(|n| {
            let label = n.accesskit_node().label().unwrap_or_default();
            Panel::ALL.iter().any(|p| p.title() == label) && n.rect().min.y < 40.0
        })
        .map(|n| n.rect().max.y)
        .fold(0.0, f32::max);
    let bottom = harness
        .query_all(By::new().label_contains("Messages"))
        .filter(|n| n.accesskit_node().role() != Role::Label)
        .map(|n| n.rect().min.y)
        .fold(size.y, f32::min);
    (top, bottom)
}

/// What is wrong in the window as it is scrolled now (see [`layout_problems`]): widgets of
/// the panel wholly in view between `band`, and those of the tabs and the status bar.
fn window_problems(
    harness: &Harness<'_, Workbench>,
    panel: Panel,
    (top, bottom): (f32, f32),
    size: egui::Vec2,
    problems: &mut Vec<String>,
) {
    let mut rects: Vec<(String, egui::Rect)> = Vec::new();
    for role in INTERACTIVE {
        for node in harness.query_all(By::new().role(role)) {
            let rect = node.rect();
            // The status bar's widgets lie wholly between its top and the window's bottom; a
            // panel widget reaching past the window is scrolled under the bar, not on it.
            let fixed = rect.max.y <= top + 0.5
                || (rect.min.y >= bottom - 0.5 && rect.max.y <= size.y + 0.5);
            let in_view = rect.min.y >= top - 0.5 && rect.max.y <= bottom + 0.5;
            // Scrolled out of view (or partly, under a bar): not drawn there, so not
            // overlapping anything; it is checked where it is scrolled into view.
            if !(fixed || in_view) || rect.max.y < 0.0 || rect.min.y > size.y || rect.area() < 1.0 {
                continue;
            }
            let label = node.accesskit_node().label().unwrap_or_default();
            if rect.min.x < -0.5 || rect.max.x > size.x + 0.5 {
                let problem = format!("{}: `{label}` ({role:?}) is cut off", panel.title());
                if !problems.iter().any(|p| p.starts_with(&problem)) {
                    problems.push(format!("{problem} at {rect:?}"));
                }
            }
            rects.push((format!("`{label}` ({role:?})"), rect));
        }
    }
    for (i, (a, ra)) in rects.iter().enumerate() {
        for (b, rb) in &rects[i + 1..] {
            let overlap = ra.intersect(*rb);
            if overlap.width() > 1.0 && overlap.height() > 1.0 {
                let problem = format!("{}: {a} overlaps {b}", panel.title());
                if !problems.iter().any(|p| p.starts_with(&problem)) {
                    problems.push(format!("{problem} (at {ra:?} and {rb:?})"));
                }
            }
        }
    }
}

#[test]
fn the_panel_and_theme_are_remembered_between_runs() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge", "Light"]);
    let mut storage = MemoryStorage::default();
    eframe::App::save(harness.state_mut(), &mut storage);
    drop(harness);
    let mut again = common::harness();
    again.state_mut().load_remembered(Some(&storage));
    again.run_ok();
    assert_eq!(again.state().panel, Panel::Merge);
    assert_eq!(
        again.ctx.options(|o| o.theme_preference),
        egui::ThemePreference::Light
    );
}

#[test]
fn learn_weights_puts_adamerging_curves_in_the_merge_panel() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge"]);
    let before = settings(&harness);
    harness.state_mut().adamerging.adaptation.steps = 3;
    click_through(&mut harness, &["Learn weights (AdaMerging)"]);
    wait_for(&mut harness, "AdaMerging", |app| {
        app.busy.is_none() && app.settings.as_ref().is_some_and(|s| s.per_layer)
    });
    let learned = settings(&harness);
    assert_eq!(learned.method, "task_arithmetic");
    assert_eq!(learned.lambda, 1.0);
    assert!(learned.read_only.is_none(), "{:?}", learned.read_only);
    // Every expert has a curve of one learned weight per layer, moved from the 0.3 start.
    assert_eq!(learned.curves.len(), 4);
    assert!(learned.curves.iter().all(|c| c.len() == 4));
    assert!(
        learned
            .curves
            .iter()
            .flatten()
            .any(|w| (w - 0.3).abs() > 1e-4)
    );
    let notice = harness.state().notice.clone().expect("a notice");
    assert!(
        !notice.error && notice.text.contains("entropy"),
        "{}",
        notice.text
    );
    assert!(recipe(&harness).contains("task_arithmetic"));
    // Undo brings the settings from before back.
    harness.state_mut().undo_redo(false);
    harness.run_ok();
    assert_eq!(settings(&harness), before);
}
