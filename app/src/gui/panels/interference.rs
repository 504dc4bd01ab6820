//! Interference: the task × task matrices (cosine, sign conflict, top-k mask overlap) for the
//! whole model or the selected layer.

use super::{cell, diverging, fmt, sequential};
use crate::gui::app::Workbench;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Interference");
    let Some(report) = &app.report else {
        if app.busy.is_some() {
            ui.label("The analysis fills this panel when it finishes (see the status bar).");
        } else if app.family.is_some() && ui.button("Analyse (reads every model once)").clicked() {
            app.analyze();
        }
        return;
    };
    let group = app
        .selected_layer
        .and_then(|b| {
            report
                .layers
                .iter()
                .find(|g| g.name == format!("layer {b}"))
        })
        .unwrap_or(&report.whole_model);
    ui.horizontal(|ui| {
        ui.label(format!("Showing: {}", group.name));
        if app.selected_layer.is_some() && ui.button("Whole model").clicked() {
            app.selected_layer = None;
        }
    });
    let n = report.models.len();
    ui.horizontal_top(|ui| {
        for (title, matrix, signed) in [
            ("cosine", &group.metrics.cosine, true),
            ("sign conflict", &group.metrics.sign_conflict, false),
            ("top-k overlap", &group.metrics.jaccard, false),
        ] {
            ui.vertical(|ui| {
                ui.strong(title);
                egui::Grid::new(title).spacing([2.0, 2.0]).show(ui, |ui| {
                    for i in 0..n {
                        for j in 0..n {
                            let v = matrix[i][j];
                            let color = match v {
                                None => ui.visuals().faint_bg_color,
                                Some(v) if signed => diverging(v, -1.0, 1.0),
                                Some(v) => sequential(v, 1.0),
                            };
                            let hover =
                                format!("{} x {}: {}", report.models[i], report.models[j], fmt(v));
                            cell(ui, 34.0, color, &hover);
                        }
                        ui.label(egui::RichText::new(&report.models[i]).small());
                        ui.end_row();
                    }
                });
            });
            ui.add_space(16.0);
        }
    });
    ui.label(format!(
        "Top-k overlap at density {} (chance {:.3}). Sign conflict: share of shared nonzeros with opposite signs.",
        report.settings.interference.density, report.jaccard_chance
    ));
    ui.add_space(8.0);
    ui.strong("Per layer: mean pairwise sign conflict");
    let points: Vec<[f64; 2]> = report
        .layers
        .iter()
        .filter_map(|g| {
            let b: f64 = g.name.strip_prefix("layer ")?.parse().ok()?;
            Some([
                b,
                mergescope_core::analysis::GroupReport::mean_pairwise(&g.metrics.sign_conflict)?,
            ])
        })
        .collect();
    egui_plot::Plot::new("conflict-per-layer")
        .height(160.0)
        .allow_scroll(false)
        .show(ui, |plot| {
            plot.line(egui_plot::Line::new("sign conflict", points));
        });
}
