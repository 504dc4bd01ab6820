//! Sensitivity: how far each fine-tune moved each layer and module (|τ| / |θ_base|), as a
//! layer × module heatmap, bars per layer for every fine-tune, and the most moved tensors.

use std::collections::{BTreeMap, BTreeSet};

use super::fmt;
use crate::gui::app::Workbench;
use crate::gui::chart::{self, ColorScale, Heatmap, Marks, Series, XyChart};

/// How the figures name the ratio they show.
const RATIO: &str = "|τ| / |θ_base|";

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.heading("Sensitivity");
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
    let models = report.models.len();
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("Fine-tune")
            .selected_text(
                report
                    .models
                    .get(app.selected_model)
                    .cloned()
                    .unwrap_or_default(),
            )
            .show_ui(ui, |ui| {
                for (i, label) in report.models.iter().enumerate() {
                    ui.selectable_value(&mut app.selected_model, i, label);
                }
                ui.selectable_value(&mut app.selected_model, models, "max over models");
                ui.selectable_value(&mut app.selected_model, models + 1, "mean over models");
            });
    });
    let shown = match app.selected_model {
        i if i < models => report.models[i].clone(),
        i if i == models => "max over models".to_owned(),
        _ => "mean over models".to_owned(),
    };
    // rel per (block, module) for the selected model, or the max or mean over models.
    let pick = |t: &mergescope_core::analysis::TensorReport| -> Option<f64> {
        let rels = t.metrics.models.iter().filter_map(|m| m.rel);
        match app.selected_model {
            i if i < models => t.metrics.models[i].rel,
            i if i == models => rels.reduce(f64::max),
            _ => {
                let rels: Vec<f64> = rels.collect();
                (!rels.is_empty()).then(|| rels.iter().sum::<f64>() / rels.len() as f64)
            }
        }
    };
    // Per (block, module): the shown figure and the hover text of the tensor that sets it.
    let mut grid: BTreeMap<(usize, String), (f64, String)> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    let mut blocks = BTreeSet::new();
    for t in &report.tensors {
        let (Some(block), Some(rel)) = (t.block, pick(t)) else {
            continue;
        };
        blocks.insert(block);
        modules.insert(t.module.clone());
        let entry = grid
            .entry((block, t.module.clone()))
            .or_insert((f64::NEG_INFINITY, String::new()));
        if rel >= entry.0 {
            // The hover shows every fine-tune's figure for the tensor, not only the picked one.
            let each: Vec<String> = report
                .models
                .iter()
                .zip(&t.metrics.models)
                .map(|(label, m)| format!("  {label}: {}", fmt(m.rel)))
                .collect();
            *entry = (
                rel,
                format!("tensor {}\nshown: {shown}\n{}", t.name, each.join("\n")),
            );
        }
    }
    let blocks: Vec<usize> = blocks.into_iter().collect();
    let modules: Vec<String> = modules.into_iter().collect();
    let rows: Vec<String> = blocks.iter().map(|b| format!("layer {b}")).collect();
    let values: Vec<Vec<Option<f64>>> = blocks
        .iter()
        .map(|&b| {
            modules
                .iter()
                .map(|m| grid.get(&(b, m.clone())).map(|v| v.0))
                .collect()
        })
        .collect();
    let hover = |r: usize, c: usize| {
        grid.get(&(blocks[r], modules[c].clone()))
            .map(|v| v.1.clone())
            .unwrap_or_default()
    };
    let heatmap = Heatmap {
        title: &format!("{RATIO}, {shown}"),
        axes: ("layer", "module"),
        rows: &rows,
        columns: &modules,
        values: &values,
        scale: ColorScale::Sequential,
        exclude_diagonal: false,
        hover: &hover,
        clickable_rows: true,
        selected_row: app
            .selected_layer
            .and_then(|b| blocks.iter().position(|&x| x == b)),
    };
    let clicked = chart::framed_ui(
        ui,
        &mut app.notice,
        &format!("sensitivity-{shown}"),
        "How far the fine-tune moved each layer (rows) and module (columns); click a layer to select it",
        || heatmap.csv(),
        |ui| heatmap.show(ui),
    );
    if let Some(r) = clicked.clicked_row {
        let b = blocks[r];
        app.selected_layer = if app.selected_layer == Some(b) {
            None
        } else {
            Some(b)
        };
        app.selected_module = None;
    } else if let Some((r, _)) = clicked.clicked_cell {
        app.selected_layer = Some(blocks[r]);
        app.selected_module = None;
    }

    ui.add_space(8.0);
    let Some(report) = &app.report else {
        return;
    };
    let series = report
        .models
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let points = report
                .layers
                .iter()
                .filter_map(|g| {
                    let b: f64 = g.name.strip_prefix("layer ")?.parse().ok()?;
                    Some([b, g.metrics.models.get(i)?.rel?])
                })
                .collect();
            Series::new(label.clone(), i, points)
        })
        .collect();
    let bars = XyChart {
        series_title: "model".to_owned(),
        series,
        marks: Marks::Bars,
        height: 170.0,
        include_y: vec![0.0],
        x_is_layer: true,
        ..XyChart::new("sensitivity-per-layer", "layer", RATIO)
    };
    chart::framed_ui(
        ui,
        &mut app.notice,
        "sensitivity-per-layer",
        "Per layer: how far each fine-tune moved it",
        || bars.csv(),
        |ui| bars.show(ui),
    );

    ui.add_space(8.0);
    ui.strong("Most moved tensors (mean over fine-tunes)");
    for c in report.critical.iter().take(8) {
        ui.label(format!(
            "{:.4}  {}",
            c.mean_rel,
            crate::gui::text::elide_middle(&c.tensor, 64)
        ))
        .on_hover_text(&c.tensor);
    }
    ui.add_space(8.0);
    ui.strong("Whole model");
    egui::Grid::new("whole-sensitivity")
        .striped(true)
        .show(ui, |ui| {
            for h in ["model", "|τ|", RATIO, "changed", "TIES conflict"] {
                ui.strong(h);
            }
            ui.end_row();
            for (label, m) in report.models.iter().zip(&report.whole_model.metrics.models) {
                ui.label(label);
                ui.label(format!("{:.4}", m.l2));
                ui.label(fmt(m.rel));
                ui.label(fmt(m.frac_changed));
                ui.label(fmt(m.ties_conflict));
                ui.end_row();
            }
        });
}
