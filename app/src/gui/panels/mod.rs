//! One file per panel of the workbench.

use crate::gui::app::Workbench;

pub mod export;
pub mod generation;
pub mod history;
pub mod interference;
pub mod leaderboard;
pub mod merge;
pub mod models;
pub mod pareto;
pub mod preview;
pub mod sensitivity;
pub mod sweep;

/// Whether the analysis report is there; if not, says why or offers to start it. A report
/// still being filled in says how far it is.
pub fn report_ready(app: &mut Workbench, ui: &mut egui::Ui) -> bool {
    if let Some(report) = &app.report {
        if let Some(so_far) = report.partial().map(str::to_owned) {
            if app.busy.is_some() {
                ui.label(format!("Filling in as the analysis goes ({so_far})."));
            } else {
                ui.horizontal(|ui| {
                    ui.label(format!("A partial analysis ({so_far}; it was stopped)."));
                    if ui.button("Analyse again").clicked() {
                        app.analyze();
                    }
                });
            }
        }
        return true;
    }
    if app.busy.is_some() {
        ui.label("The analysis fills this panel when it finishes (see the status bar).");
    } else if app.family.is_some() && ui.button("Analyse (reads every model once)").clicked() {
        app.analyze();
    }
    false
}

pub fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"))
}

/// Draws `panel`; a panic while drawing it (a bug) becomes an error message in its place, so
/// one broken figure never takes the window down.
pub fn guarded(ui: &mut egui::Ui, name: &str, panel: impl FnOnce(&mut egui::Ui)) {
    let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| panel(ui)));
    if let Err(panic) = drawn {
        ui.colored_label(
            ui.visuals().error_fg_color,
            format!(
                "The {name} panel could not be drawn: internal error: {}; this is a bug in \
                 mergescope (please report it). The other panels still work.",
                crate::gui::worker::panic_message(panic.as_ref())
            ),
        );
    }
}

/// The tensors whose weights hold NaN or ±Inf, if any: a collapsible warning above a panel's
/// figures (which count those values as unchanged).
pub fn non_finite(ui: &mut egui::Ui, report: &mergescope_core::analysis::Report) {
    if report.non_finite.is_empty() {
        return;
    }
    let color = ui.visuals().warn_fg_color;
    egui::CollapsingHeader::new(
        egui::RichText::new(format!(
            "{} tensor(s) hold NaN or ±Inf; those values count as unchanged in these figures",
            report.non_finite.len()
        ))
        .color(color),
    )
    .id_salt("non-finite")
    .show(ui, |ui| {
        egui::Grid::new("non-finite-list")
            .striped(true)
            .show(ui, |ui| {
                for header in ["tensor", "model", "values"] {
                    ui.strong(header);
                }
                ui.end_row();
                for found in &report.non_finite {
                    // Shortened in the middle so the layer index stays in view.
                    ui.label(crate::gui::text::elide_middle(&found.tensor, 56))
                        .on_hover_text(&found.tensor);
                    ui.label(&found.member);
                    ui.label(found.count.to_string());
                    ui.end_row();
                }
            });
    });
}
