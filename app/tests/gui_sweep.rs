//! The Sweep panel driven through egui_kittest on the demo family: a 2-D sweep whose cells are
//! the scores of single in-memory merges of the same settings, a click on a cell that loads
//! exactly its settings, and a cancel after which the workbench goes on.

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;
use mergescope::gui::state::MergeSettings;
use mergescope::gui::sweep::AxisChoice;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::eval::{DemoAccuracy, Fidelity, Scores};

mod common;
use common::{harness, opened, save_screenshot, wait_for};

fn axis(path: &str, start: f64, end: f64, steps: usize) -> AxisChoice {
    AxisChoice {
        path: path.to_owned(),
        start,
        end,
        steps,
    }
}

/// The demo family open and analysed, on the Sweep tab.
fn on_the_sweep_tab() -> Harness<'static, Workbench> {
    let mut harness = harness();
    opened(&mut harness);
    harness.get_by_label("Sweep").click();
    harness.run_ok();
    assert_eq!(harness.state().panel, Panel::Sweep);
    harness
}

/// What the Merge panel's full preview scores for `settings`: the recipe they make, planned
/// as the workbench plans it, merged in memory and scored on every test sample.
fn single_merge(app: &Workbench, settings: &MergeSettings) -> Scores {
    let family = app.family.as_ref().unwrap();
    let plan =
        mergescope::gui::worker::plan(&settings.to_yaml(family), &family.recipe_file()).unwrap();
    let merged = merge_in_memory(&plan, &Cpu).unwrap();
    DemoAccuracy::new()
        .unwrap()
        .score(&merged, Fidelity::Full)
        .unwrap()
}

#[test]
fn a_2d_sweep_scores_its_cells_as_single_merges_and_a_click_loads_one() {
    let mut harness = on_the_sweep_tab();
    harness
        .get_by_label("sweep a second parameter (a heatmap)")
        .click();
    harness.run_ok();
    {
        let sweep = &mut harness.state_mut().sweep;
        assert_eq!(sweep.axes.len(), 2, "the switch adds a second axis");
        assert_eq!(
            sweep.axes[1].path, "models.1.weight",
            "another model's weight"
        );
        sweep.axes = vec![
            axis("models.0.weight", 0.0, 0.6, 2),
            axis("models.1.weight", 0.2, 0.8, 2),
        ];
    }
    harness.run_ok();
    harness.get_by_label("4 cells");
    let before = harness.state().settings.clone().unwrap();
    harness.get_by_label("Run sweep").click();
    harness.run_ok();
    wait_for(&mut harness, "every cell of the sweep", |app| {
        !app.sweep.running && app.busy.is_none()
    });
    let app = harness.state();
    let results = app.sweep.results.clone().unwrap();
    assert_eq!(results.cells.len(), 4, "notice: {:?}", app.notice);
    for cell in &results.cells {
        let mut settings = before.clone();
        settings.weights[0] = cell.values[0];
        settings.weights[1] = cell.values[1];
        assert_eq!(
            cell.scores,
            single_merge(app, &settings),
            "cell {:?}",
            cell.values
        );
    }
    assert_ne!(results.cells[0].scores, results.cells[3].scores);
    assert_eq!(app.sweep.metric.as_deref(), Some("mean/accuracy"));
    harness.get_by_label("best (outlined):");
    save_screenshot(&mut harness, Panel::Sweep, "sweep.png");

    // A click on a cell loads exactly its settings into the Merge panel.
    harness
        .get_by_label("cell models.0.weight = 0.6, models.1.weight = 0.2")
        .click();
    harness.run_ok();
    let app = harness.state();
    assert_eq!(app.panel, Panel::Merge);
    let loaded = app.settings.clone().unwrap();
    assert_eq!(loaded.weights, [0.6, 0.2, 0.3, 0.3]);
    let mut expected = before;
    expected.weights[0] = 0.6;
    expected.weights[1] = 0.2;
    let family = app.family.as_ref().unwrap();
    assert_eq!(loaded.to_yaml(family), expected.to_yaml(family));
    assert_eq!(
        single_merge(app, &loaded),
        results
            .cells
            .iter()
            .find(|c| c.values == [0.6, 0.2])
            .unwrap()
            .scores
    );
}

#[test]
fn a_1d_sweep_draws_a_line_and_cancel_stops_a_long_one() {
    let mut harness = on_the_sweep_tab();
    harness.state_mut().sweep.axes = vec![axis("lambda", 0.0, 2.0, 101)];
    harness.run_ok();
    harness.get_by_label("Run sweep").click();
    wait_for(&mut harness, "the first cells", |app| {
        app.sweep
            .results
            .as_ref()
            .is_some_and(|r| r.cells.len() >= 2)
    });
    // The points come in while it runs; the status bar's Cancel stops it.
    harness.get_by_label("Cancel").click();
    harness.run_ok();
    wait_for(&mut harness, "the sweep cancelled", |app| {
        !app.sweep.running && app.busy.is_none()
    });
    let app = harness.state();
    let done = app.sweep.results.as_ref().unwrap().cells.len();
    assert!((2..101).contains(&done), "{done} cells");
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("cancelled")),
        "{:?}",
        app.notice
    );
    // The cells computed before the cancel stay on the line chart.
    harness.get_by_label("chart sweep-line");
    harness.get_by_label("best (outlined):");
    // A click on a point loads its settings.
    harness.get_by_label("point lambda = 0.02").click();
    harness.run_ok();
    assert_eq!(harness.state().panel, Panel::Merge);
    assert_eq!(harness.state().settings.as_ref().unwrap().lambda, 0.02);
    harness.get_by_label("Sweep").click();
    harness.run_ok();

    // The workbench goes on: a new sweep runs to its end.
    harness.state_mut().sweep.axes = vec![axis("models.2.weight", 0.0, 1.0, 2)];
    harness.run_ok();
    harness.get_by_label("Run sweep").click();
    harness.run_ok();
    wait_for(&mut harness, "the second sweep", |app| {
        !app.sweep.running && app.busy.is_none()
    });
    let results = harness.state().sweep.results.clone().unwrap();
    assert_eq!(results.cells.len(), 2, "{:?}", harness.state().notice);
    assert_eq!(results.cells[1].values, [1.0]);
}

/// A tiny Llama-shaped base and two fine-tunes (not the demo: scored on retention).
fn synthetic_family(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let shape = mergescope_core::synth::LlamaShape {
        hidden: 16,
        intermediate: 32,
        layers: 2,
        vocab: 32,
        heads: 2,
        kv_heads: 1,
    };
    mergescope_core::synth::SynthFamily::new(shape, 2)
        .write(dir, false, &mergescope_core::Job::default())
        .unwrap()
}

#[test]
fn other_families_sweep_retention_and_save_csv() {
    let dir = tempfile::tempdir().unwrap();
    let paths = synthetic_family(dir.path());
    let mut harness = common::harness_on(&paths);
    opened(&mut harness);
    harness.get_by_label("Sweep").click();
    harness.run_ok();
    harness.state_mut().sweep.axes = vec![axis("models.1.weight", 0.0, 1.0, 3)];
    harness.run_ok();
    harness.get_by_label("Run sweep").click();
    harness.run_ok();
    wait_for(&mut harness, "the retention sweep", |app| {
        !app.sweep.running && app.busy.is_none()
    });
    let app = harness.state();
    let results = app.sweep.results.clone().unwrap();
    assert_eq!(results.cells.len(), 3, "{:?}", app.notice);
    assert_eq!(app.sweep.metric.as_deref(), Some("mean retention"));
    let family = app.family.as_ref().unwrap();
    for cell in &results.cells {
        let mut settings = app.settings.clone().unwrap();
        settings.weights[1] = cell.values[0];
        let plan = mergescope::gui::worker::plan(&settings.to_yaml(family), &family.recipe_file())
            .unwrap();
        let alone = mergescope_core::eval::Retention {
            plan: &plan,
            backend: &Cpu,
            job: &mergescope_core::Job::default(),
        };
        use mergescope_core::eval::Objective as _;
        let alone = alone
            .evaluate(&mergescope_core::eval::Candidate::default(), Fidelity::Full)
            .unwrap();
        assert_eq!(cell.scores, alone, "cell {:?}", cell.values);
    }
    // More of a model's weight keeps more of its task vector.
    let kept = |i: usize| {
        results.cells[i]
            .scores
            .iter()
            .find(|(k, _)| k.starts_with("retention/") && k.ends_with("ft_2"))
            .map(|(_, v)| *v)
            .unwrap()
    };
    assert!(kept(2) > kept(0), "{} vs {}", kept(2), kept(0));

    // The chart's Save CSV writes every cell into the charts folder.
    mergescope::gui::chart::set_folder(&harness.ctx, dir.path());
    harness.run_ok();
    harness.get_by_label("Save CSV").click();
    harness.run_ok();
    let csv = dir.path().join("sweep-1.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 3, "{text}");
    assert!(
        lines[0].starts_with("models.1.weight,mean retention,"),
        "{text}"
    );
    assert!(lines[3].starts_with("1,"), "{text}");
}
