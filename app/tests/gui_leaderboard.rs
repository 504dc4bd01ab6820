//! The Leaderboard panel driven through egui_kittest on the demo family: a run on the worker
//! whose rows are the scores `mergescope bench-methods` computes, ranked, with the base and the
//! experts below, and a Load button that puts a row's recipe into the Merge panel.

use egui_kittest::kittest::Queryable as _;
use mergescope::gui::app::Panel;
use mergescope_core::backend::Cpu;
use mergescope_core::leaderboard::{Settings, run_leaderboard};

mod common;
use common::{harness, opened, save_screenshot, wait_for};

#[test]
fn a_run_ranks_the_methods_and_load_opens_a_row_in_the_merge_panel() {
    let mut harness = harness();
    opened(&mut harness);
    harness.get_by_label("Leaderboard").click();
    harness.run_ok();
    assert_eq!(harness.state().panel, Panel::Leaderboard);
    // Two methods without their grids keep the run short; the panel runs them all.
    {
        let state = &mut harness.state_mut().leaderboard;
        state.methods = Some(vec!["iso_c".to_owned(), "task_arithmetic".to_owned()]);
        state.grid = false;
    }
    harness.get_by_label("Run leaderboard").click();
    harness.run_ok();
    wait_for(&mut harness, "the leaderboard", |app| {
        !app.leaderboard.running && !app.leaderboard.references.is_empty()
    });
    let rows = harness.state().leaderboard.rows.clone();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].mean() >= rows[1].mean(), "ranked by mean accuracy");
    assert_eq!(harness.state().leaderboard.references.len(), 5);
    // The same rows as the core computes for `mergescope bench-methods`.
    let dir = tempfile::tempdir().unwrap();
    let expected = run_leaderboard(
        dir.path(),
        &Settings {
            methods: Some(vec!["iso_c".to_owned(), "task_arithmetic".to_owned()]),
            grid: false,
            random_seed: 0,
            steps: None,
        },
        &Cpu,
        &mergescope_core::Job::default(),
        &mut |_| {},
    )
    .unwrap();
    for (shown, computed) in rows.iter().zip(&expected.rows) {
        assert_eq!(shown.method, computed.method);
        assert_eq!(shown.accuracy, computed.accuracy);
    }
    save_screenshot(&mut harness, Panel::Leaderboard, "leaderboard.png");

    // Load the second row: its method and weights land in the Merge panel.
    harness
        .get_all_by_label("Load")
        .nth(1)
        .expect("two Load buttons")
        .click();
    harness.run_ok();
    let app = harness.state();
    assert_eq!(app.panel, Panel::Merge);
    let settings = app.settings.as_ref().expect("settings loaded");
    assert_eq!(settings.method, rows[1].method);
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| !n.error && n.text.contains("leaderboard")),
        "{:?}",
        app.notice
    );
}

#[test]
fn an_adamerging_row_loads_its_learned_layer_weights_into_the_merge_panel() {
    let mut harness = harness();
    opened(&mut harness);
    harness.get_by_label("Leaderboard").click();
    harness.run_ok();
    {
        let state = &mut harness.state_mut().leaderboard;
        state.methods = Some(vec!["adamerging".to_owned()]);
        state.grid = false;
        state.steps = Some(3);
    }
    harness.get_by_label("Run leaderboard").click();
    harness.run_ok();
    wait_for(&mut harness, "the leaderboard", |app| {
        !app.leaderboard.running && !app.leaderboard.references.is_empty()
    });
    let row = harness.state().leaderboard.rows[0].clone();
    assert_eq!(row.method, "adamerging");
    let recipe =
        mergescope_core::merge::recipe::Recipe::from_yaml(&row.recipe, "r.yml".as_ref()).unwrap();
    harness.get_by_label("Load").click();
    harness.run_ok();
    let app = harness.state();
    assert_eq!(app.panel, Panel::Merge);
    let settings = app.settings.as_ref().expect("settings loaded");
    assert!(settings.read_only.is_none(), "{:?}", settings.read_only);
    assert_eq!(settings.method, "task_arithmetic");
    assert!(settings.per_layer);
    assert_eq!(settings.lambda, 1.0);
    // Each expert's curve is its learned λ per layer, as the recipe's gradient gives them.
    for (curve, model) in settings.curves.iter().zip(&recipe.models) {
        assert_eq!(
            format!("{curve:?}").replace(' ', ""),
            model.parameters["weight"].to_string().replace(' ', ""),
        );
    }
}
