//! Interference: the task × task matrices (cosine, sign conflict, top-k mask overlap) for the
//! whole model, a layer or a module kind.

use super::fmt;
use crate::gui::app::Workbench;
use crate::gui::chart::{self, ColorScale, Heatmap, Series, XyChart};

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Interference");
        ui.add_space(24.0);
        chart::folder_ui(ui);
    });
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
    let scope_name = group.name.clone();
    let matrices = [
        (
            "cosine",
            &group.metrics.cosine,
            ColorScale::Diverging,
            "cosine of the two task vectors (1: same direction, 0: unrelated, -1: opposed)",
        ),
        (
            "sign conflict",
            &group.metrics.sign_conflict,
            ColorScale::Sequential,
            "share of the coordinates both change whose signs differ",
        ),
        (
            "top-k overlap",
            &group.metrics.jaccard,
            ColorScale::Sequential,
            "Jaccard overlap of the two top-k magnitude masks",
        ),
    ];
    ui.horizontal_wrapped(|ui| {
        for (title, matrix, scale, meaning) in matrices {
            let hover = |_: usize, _: usize| format!("scope: {scope_name}\n{meaning}");
            let heatmap = Heatmap {
                title,
                axes: ("model", "model"),
                rows: &report.models,
                columns: &report.models,
                values: matrix,
                scale,
                exclude_diagonal: true,
                hover: &hover,
                clickable_rows: false,
                selected_row: None,
            };
            // Wrapped by hand: a vertical group's width is not known before it is laid out.
            if ui.available_size_before_wrap().x < heatmap.size(ui).x {
                ui.end_row();
            }
            ui.vertical(|ui| {
                chart::framed_ui(
                    ui,
                    &mut app.notice,
                    &format!("interference-{title}-{scope_name}"),
                    &format!("{title} ({scope_name})"),
                    || heatmap.csv(),
                    |ui| heatmap.show(ui),
                );
            });
            ui.add_space(8.0);
        }
    });
    (app.selected_layer, app.selected_module) = scope;
    ui.label(format!(
        "Colours span the pairs (the diagonal, each model with itself, is grey and off the scale). \
         Top-k overlap at density {} (chance {:.3}). Sign conflict: share of shared nonzeros with opposite signs.",
        report.settings.interference.density, report.jaccard_chance
    ));
    ui.add_space(8.0);
    let n = report.models.len();
    let layers: Vec<(f64, &mergescope_core::analysis::GroupReport)> = report
        .layers
        .iter()
        .filter_map(|g| Some((g.name.strip_prefix("layer ")?.parse().ok()?, g)))
        .collect();
    let mut series = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let points = layers
                .iter()
                .filter_map(|(b, g)| Some([*b, g.metrics.cosine[i][j]?]))
                .collect();
            let name = format!("{} × {}", report.models[i], report.models[j]);
            series.push(Series::new(name, series.len(), points));
        }
    }
    let conflict = layers
        .iter()
        .filter_map(|(b, g)| {
            Some([
                *b,
                mergescope_core::analysis::GroupReport::mean_pairwise(&g.metrics.sign_conflict)?,
            ])
        })
        .collect();
    series.push(Series::new("mean sign conflict", series.len(), conflict));
    let per_layer = XyChart {
        series_title: "pair".to_owned(),
        series,
        height: 180.0,
        min_y_span: 0.1,
        include_y: vec![0.0],
        x_is_layer: true,
        ..XyChart::new("cosine-per-layer", "layer", "cosine (sign conflict)")
    };
    chart::framed_ui(
        ui,
        &mut app.notice,
        "interference-per-layer",
        "Per layer: cosine of each pair of task vectors, and the mean sign conflict",
        || per_layer.csv(),
        |ui| per_layer.show(ui),
    );
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
        .selected_text(crate::gui::text::elide_middle(&selected, 48))
        .show_ui(ui, |ui| {
            for t in &candidates {
                ui.selectable_value(
                    &mut selected,
                    t.name.clone(),
                    crate::gui::text::elide_middle(&t.name, 64),
                )
                .on_hover_text(&t.name);
            }
        });
    app.selected_tensor = Some(selected.clone());
    let Some(tensor) = candidates.iter().find(|t| t.name == selected) else {
        return;
    };
    let Some(spectra) = &tensor.spectra else {
        return;
    };
    let series = report
        .models
        .iter()
        .zip(spectra)
        .enumerate()
        .map(|(i, (label, s))| {
            let points = s
                .sigma
                .iter()
                .enumerate()
                .map(|(k, &v)| [(k + 1) as f64, v])
                .collect();
            Series::new(label.clone(), i, points)
        })
        .collect();
    let plot = XyChart {
        series_title: "model".to_owned(),
        series,
        include_y: vec![0.0],
        ..XyChart::new(
            "spectra",
            "k (singular value index)",
            "σ_k of the task vector",
        )
    };
    chart::framed_ui(
        ui,
        &mut app.notice,
        &format!("spectra-{selected}"),
        &format!(
            "Singular values of each task vector of {}",
            crate::gui::text::elide_middle(&selected, 60)
        ),
        || plot.csv(),
        |ui| plot.show(ui),
    );
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
