//! The Leaderboard panel: every merge method on the built-in digits demo, at its defaults and
//! at the best setting of a small grid, ranked by mean test accuracy (core's `leaderboard`,
//! the same table as `mergescope bench-methods`). Any row loads into the Merge panel.

use mergescope_core::eval::Domain;
use mergescope_core::leaderboard::Row;

use crate::gui::app::{Panel, Workbench};
use crate::gui::state::BuiltinDemo;
use crate::gui::worker::Command;

/// The panel's state: the rows so far, and whether a run is going on.
#[derive(Debug, Default)]
pub struct LeaderboardState {
    pub running: bool,
    /// Search each method's grid too (slower: a dozen merges per method).
    pub grid: bool,
    /// Only these methods (all when `None`), and the test-time merges' steps when not their
    /// defaults: how the tests keep a run short.
    pub methods: Option<Vec<String>>,
    pub steps: Option<usize>,
    /// The merges' rows as they arrive, then ranked when the run is done.
    pub rows: Vec<Row>,
    /// The base and each expert alone, once the run is done.
    pub references: Vec<Row>,
    /// Methods that cannot merge the family, and why.
    pub not_run: Vec<(String, String)>,
    pub seconds: Option<f64>,
}

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Leaderboard");
    ui.label(
        "Every merge method on the built-in digits demo: its four experts merged at the \
         method's defaults and at the best setting of a small grid (chosen on the training \
         images), each scored on the test images as the Merge panel's full preview scores it. \
         SMILE upscales them; AdaMerging and WEMoE learn from the unlabeled test images. \
         Rows with a recipe load into the Merge panel. The same table as \
         `mergescope bench-methods`.",
    );
    let demo_root = app
        .family
        .as_ref()
        .filter(|f| f.builtin == Some(BuiltinDemo::Digits))
        .and_then(|f| f.base.parent().map(std::path::Path::to_path_buf));
    ui.horizontal(|ui| {
        let ready = demo_root.is_some() && !app.leaderboard.running && app.busy.is_none();
        let run = ui
            .add_enabled(ready, egui::Button::new("Run leaderboard"))
            .on_hover_text(
                "Merge and score every method on the worker; Cancel in the status bar stops it",
            );
        ui.checkbox(&mut app.leaderboard.grid, "search each method's grid")
            .on_hover_text("About a dozen settings per method, chosen on the training images");
        if app.leaderboard.running {
            ui.label(format!(
                "running: {} rows so far (Cancel in the status bar)",
                app.leaderboard.rows.len()
            ));
        } else if let Some(seconds) = app.leaderboard.seconds {
            ui.label(format!(
                "{} rows in {seconds:.1} s",
                app.leaderboard.rows.len()
            ));
        }
        if run.clicked()
            && let Some(dir) = demo_root.clone()
        {
            let state = &mut app.leaderboard;
            state.running = true;
            state.rows.clear();
            state.references.clear();
            state.not_run.clear();
            state.seconds = None;
            let request = Command::Leaderboard {
                dir,
                settings: mergescope_core::leaderboard::Settings {
                    methods: state.methods.clone(),
                    grid: state.grid,
                    random_seed: 0,
                    steps: state.steps,
                },
            };
            app.start_job("method leaderboard");
            app.worker.send(request);
        }
    });
    if demo_root.is_none() {
        ui.label("Open the built-in digits demo (Models panel) to run it.");
    }
    if app.leaderboard.rows.is_empty() {
        return;
    }
    ui.separator();
    let mut load = None;
    egui::Grid::new("leaderboard")
        .striped(true)
        .num_columns(Domain::ALL.len() + 7)
        .show(ui, |ui| {
            for title in ["rank", "method", "setting"] {
                ui.strong(title);
            }
            for domain in Domain::ALL {
                ui.strong(domain.name());
            }
            for title in ["mean", "parameters", "merge", ""] {
                ui.strong(title);
            }
            ui.end_row();
            let rows = app.leaderboard.rows.iter().enumerate();
            let references = app.leaderboard.references.iter().map(|r| (usize::MAX, r));
            // Rows arrive in the registry's order and are ranked when the run is done.
            let ranked = !app.leaderboard.running;
            for (i, row) in rows.chain(references) {
                ui.label(if i == usize::MAX {
                    "-".to_owned()
                } else if ranked {
                    (i + 1).to_string()
                } else {
                    String::new()
                });
                ui.monospace(&row.method);
                ui.label(&row.setting);
                for (k, accuracy) in row.accuracy.iter().enumerate() {
                    let text = format!("{:.1} %", 100.0 * accuracy);
                    if k + 1 == row.accuracy.len() {
                        ui.strong(text);
                    } else {
                        ui.label(text);
                    }
                }
                ui.label(row.parameters.to_string());
                ui.label(row.duration());
                if row.recipe.is_empty() {
                    ui.label("");
                } else {
                    if ui
                        .button("Load")
                        .on_hover_text("Open this row's recipe in the Merge panel")
                        .clicked()
                    {
                        load = Some(row.clone());
                    }
                }
                ui.end_row();
            }
        });
    if !app.leaderboard.not_run.is_empty() {
        let reasons: Vec<String> = app
            .leaderboard
            .not_run
            .iter()
            .map(|(m, why)| format!("{m} ({why})"))
            .collect();
        ui.label(format!("Not run: {}.", reasons.join("; ")));
    }
    if let (Some(row), Some(dir)) = (load, demo_root) {
        load_row(app, &row, &dir);
    }
}

/// Loads `row`'s recipe into the Merge panel and shows it.
fn load_row(app: &mut Workbench, row: &Row, demo_root: &std::path::Path) {
    // The recipe names the members as the demo's own recipes do, from its recipes/ folder.
    let file = demo_root
        .join("recipes")
        .join(format!("leaderboard-{}.yml", row.method));
    let done = format!(
        "loaded {} ({}) from the leaderboard",
        row.method, row.setting
    );
    if app.apply_recipe_text(&row.recipe, &file, done, &row.method) {
        app.panel = Panel::Merge;
    }
}
