//! Interference: the task × task matrices (cosine, sign conflict, top-k mask overlap) for the
//! whole model, a layer or a module kind.

use super::{cell, diverging, fmt, sequential};
use crate::gui::app::Workbench;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Interference");
    if !super::report_ready(app, ui) {
        return;
    }
    let Some(report) = &app.report else {
        return;
    };
    super::non_finite(ui, report);
    // The matrices cover the selected module (all layers), else the selected layer, else the
    // whole model.
    let group = app
        .selected_module
        .as_ref()
        .and_then(|m| report.modules.iter().find(|g| g.name == *m))
        .or_else(|| {
            app.selected_layer.and_then(|b| {
                report
                    .layers
                    .iter()
                    .find(|g| g.name == format!("layer {b}"))
            })
        })
        .unwrap_or(&report.whole_model);
    let mut scope = (app.selected_layer, app.selected_module.clone());
    egui::ComboBox::from_label("scope of the matrices")
        .selected_text(&group.name)
        .show_ui(ui, |ui| {
            ui.selectable_value(&mut scope, (None, None), "whole model");
            for g in &report.layers {
                if let Some(b) = g.name.strip_prefix("layer ").and_then(|b| b.parse().ok()) {
                    ui.selectable_value(&mut scope, (Some(b), None), &g.name);
                }
            }
            for g in &report.modules {
                ui.selectable_value(
                    &mut scope,
                    (None, Some(g.name.clone())),
                    format!("module: {} (every layer)", g.name),
                );
            }
        });
    (app.selected_layer, app.selected_module) = scope;
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
    ui.strong("Per layer: cosine of each pair of task vectors");
    let layers: Vec<(f64, &mergescope_core::analysis::GroupReport)> = report
        .layers
        .iter()
        .filter_map(|g| Some((g.name.strip_prefix("layer ")?.parse().ok()?, g)))
        .collect();
    egui_plot::Plot::new("cosine-per-layer")
        .height(170.0)
        .legend(egui_plot::Legend::default())
        .allow_scroll(false)
        .show(ui, |plot| {
            for i in 0..n {
                for j in i + 1..n {
                    let points: Vec<[f64; 2]> = layers
                        .iter()
                        .filter_map(|(b, g)| Some([*b, g.metrics.cosine[i][j]?]))
                        .collect();
                    let name = format!("{} x {}", report.models[i], report.models[j]);
                    plot.line(egui_plot::Line::new(name, super::finite_points(points)));
                }
            }
            let conflict: Vec<[f64; 2]> = layers
                .iter()
                .filter_map(|(b, g)| {
                    Some([
                        *b,
                        mergescope_core::analysis::GroupReport::mean_pairwise(
                            &g.metrics.sign_conflict,
                        )?,
                    ])
                })
                .collect();
            plot.line(egui_plot::Line::new(
                "mean sign conflict",
                super::finite_points(conflict),
            ));
        });
    spectra(app, ui);
}

/// The selected 2-D tensor's singular values per fine-tune, subspace overlaps and energy in
/// the base's top subspace.
fn spectra(app: &mut Workbench, ui: &mut egui::Ui) {
    let Some(report) = &app.report else {
        return;
    };
    let candidates: Vec<&mergescope_core::analysis::TensorReport> = report
        .tensors
        .iter()
        .filter(|t| t.spectra.is_some())
        .filter(|t| app.selected_layer.is_none_or(|b| t.block == Some(b)))
        .collect();
    if candidates.is_empty() {
        return;
    }
    ui.add_space(8.0);
    ui.strong("Spectra of a 2-D tensor");
    let chosen = app
        .selected_tensor
        .clone()
        .filter(|name| candidates.iter().any(|t| &t.name == name))
        .unwrap_or_else(|| candidates[0].name.clone());
    let mut selected = chosen.clone();
    egui::ComboBox::from_label("tensor")
        .selected_text(&selected)
        .show_ui(ui, |ui| {
            for t in &candidates {
                ui.selectable_value(&mut selected, t.name.clone(), &t.name);
            }
        });
    app.selected_tensor = Some(selected.clone());
    let Some(tensor) = candidates.iter().find(|t| t.name == selected) else {
        return;
    };
    let Some(spectra) = &tensor.spectra else {
        return;
    };
    egui_plot::Plot::new("spectra")
        .height(180.0)
        .legend(egui_plot::Legend::default())
        .allow_scroll(false)
        .show(ui, |plot| {
            for (label, s) in report.models.iter().zip(spectra) {
                let points: Vec<[f64; 2]> = s
                    .sigma
                    .iter()
                    .enumerate()
                    .map(|(k, &v)| [(k + 1) as f64, v])
                    .collect();
                plot.line(egui_plot::Line::new(
                    label.clone(),
                    super::finite_points(points),
                ));
            }
        });
    egui::Grid::new("tensor-figures")
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "fine-tune",
                "stable rank",
                "energy in base top-r (both / left / right)",
                "chance (both / left)",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (i, label) in report.models.iter().enumerate() {
                ui.label(label);
                ui.label(fmt(spectra[i].stable_rank));
                match tensor.base_energy.as_ref().and_then(|e| e.get(i)) {
                    Some(e) => {
                        ui.label(format!(
                            "{} / {} / {} (r = {})",
                            fmt(e.both),
                            fmt(e.left),
                            fmt(e.right),
                            e.r
                        ));
                        ui.label(format!("{:.3} / {:.3}", e.both_chance, e.left_chance));
                    }
                    None => {
                        ui.label("-");
                        ui.label("-");
                    }
                }
                ui.end_row();
            }
        });
    if let Some(overlaps) = &tensor.overlaps {
        ui.label(
            "Subspace overlap of the top singular vectors (left / right, chance in brackets):",
        );
        for o in overlaps {
            ui.label(format!(
                "  {} x {}: {} / {} ({:.3} / {:.3}), k = {}",
                report.models[o.models.0],
                report.models[o.models.1],
                fmt(o.left),
                fmt(o.right),
                o.left_chance,
                o.right_chance,
                o.k
            ));
        }
    }
}
