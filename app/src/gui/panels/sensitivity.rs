//! Sensitivity: how far each fine-tune moved each layer and module (‖τ‖/‖θ_b‖), as a
//! layer × module heatmap, with the most moved tensors.

use std::collections::{BTreeMap, BTreeSet};

use super::{cell, fmt, sequential};
use crate::gui::app::Workbench;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Sensitivity");
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
            .or_insert((0.0, String::new()));
        if rel >= entry.0 {
            // The hover shows every fine-tune's figure for the tensor, not only the picked one.
            let each: Vec<String> = report
                .models
                .iter()
                .zip(&t.metrics.models)
                .map(|(label, m)| format!("  {label}: {}", fmt(m.rel)))
                .collect();
            *entry = (rel, format!("{}\n{}", t.name, each.join("\n")));
        }
    }
    let hi = grid.values().map(|v| v.0).fold(0.0, f64::max);
    ui.label(format!("|tau| / |theta_base| per layer (rows) and module (columns); darkest = {hi:.3}. Click a layer to select it."));
    egui::Grid::new("heatmap")
        .spacing([2.0, 2.0])
        .show(ui, |ui| {
            ui.label("");
            for m in &modules {
                ui.label(egui::RichText::new(m).small());
            }
            ui.end_row();
            for &b in &blocks {
                let selected = app.selected_layer == Some(b);
                if ui
                    .selectable_label(selected, format!("layer {b}"))
                    .clicked()
                {
                    app.selected_layer = if selected { None } else { Some(b) };
                    app.selected_module = None;
                }
                for m in &modules {
                    match grid.get(&(b, m.clone())) {
                        Some((rel, name)) => {
                            let hover = format!("{name}\nshown: {rel:.4} (|tau| / |theta_base|)");
                            if cell(ui, 26.0, sequential(*rel, hi), &hover).clicked() {
                                app.selected_layer = Some(b);
                                app.selected_module = None;
                            }
                        }
                        None => {
                            ui.label("");
                        }
                    }
                }
                ui.end_row();
            }
        });
    ui.add_space(8.0);
    ui.strong("Per layer: |tau| / |theta_base| of each fine-tune");
    let bars: Vec<(usize, String, Vec<egui_plot::Bar>)> = report
        .models
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let width = 0.8 / models as f64;
            let bars = report
                .layers
                .iter()
                .filter_map(|g| {
                    let b: f64 = g.name.strip_prefix("layer ")?.parse().ok()?;
                    let rel = g.metrics.models[i].rel.filter(|v| v.is_finite())?;
                    let x = b - 0.4 + width * (i as f64 + 0.5);
                    Some(egui_plot::Bar::new(x, rel).width(width))
                })
                .collect();
            (i, label.clone(), bars)
        })
        .collect();
    egui_plot::Plot::new("sensitivity-per-layer")
        .height(160.0)
        .legend(egui_plot::Legend::default())
        .allow_scroll(false)
        .show(ui, |plot| {
            for (_, label, bars) in bars {
                plot.bar_chart(egui_plot::BarChart::new(label, bars));
            }
        });
    ui.add_space(8.0);
    ui.strong("Most moved tensors (mean over fine-tunes)");
    for c in report.critical.iter().take(8) {
        ui.label(format!("{:.4}  {}", c.mean_rel, c.tensor));
    }
    ui.add_space(8.0);
    ui.strong("Whole model");
    egui::Grid::new("whole-sensitivity")
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "model",
                "|tau|",
                "|tau|/|theta|",
                "changed",
                "TIES conflict",
            ] {
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
