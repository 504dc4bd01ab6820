//! The Merge panel's live preview: for the demo family the merged model's test accuracy per
//! domain, for a language-model family with texts chosen its perplexity per domain; for every
//! family, per layer, how much of each task vector the merge keeps and how far it moves the
//! base.

use mergescope_core::analysis::Survival;
use mergescope_core::eval::compare::{
    Comparison, InputScores, MetricRow, format_delta, format_value,
};

use super::fmt;
use crate::gui::app::{Notice, Preview, Workbench};
use crate::gui::chart::{self, Marks, Series, XyChart};
use crate::gui::previewer::PreviewRequest;

/// Asks for a preview of `yaml` unless one is on its way: a quick one while the pointer is
/// down, a full one once it is released.
pub fn request(app: &mut Workbench, ui: &egui::Ui, yaml: &str) {
    let Some(family) = &app.family else {
        return;
    };
    // Texts on their way (a language model's, as it opens): its merges are scored on them,
    // not previewed data-free first (and kept in the history as such).
    if app.texts.loading {
        return;
    }
    let wanted_full = !ui.input(|i| i.pointer.any_down());
    let up_to_date = app
        .sent_preview
        .as_ref()
        .is_some_and(|(sent, full)| *sent == yaml && (*full || !wanted_full));
    if !up_to_date {
        app.worker.preview(PreviewRequest {
            yaml: yaml.to_owned(),
            file: family.recipe_file(),
            is_demo: family.is_demo,
            full: wanted_full,
            texts: app.texts.loaded.clone(),
        });
        app.sent_preview = Some((yaml.to_owned(), wanted_full));
    }
}

/// The preview's scores alone, compact: the demo's accuracies, else how much of each task
/// vector the whole merge keeps. `None` until the preview of `yaml` has arrived.
pub fn scores_of(app: &Workbench, ui: &mut egui::Ui, yaml: &str) {
    let current = app.preview.as_ref().filter(|p| p.yaml == yaml);
    let Some(preview) = current else {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("merging and scoring...");
        });
        return;
    };
    if preview.is_perplexity() {
        ui.label(if preview.full {
            "perplexity of this merge per domain (all text; lower is better)"
        } else {
            "perplexity of this merge per domain (quick estimate; lower is better)"
        });
        egui::Grid::new("pareto-perplexity")
            .striped(true)
            .show(ui, |ui| {
                for (metric, value) in &preview.scores {
                    if metric.ends_with("/perplexity") {
                        ui.label(metric);
                        ui.label(format_value(metric, *value));
                        ui.end_row();
                    }
                }
            });
    } else if app.family.as_ref().is_some_and(|f| f.is_demo) {
        ui.label(if preview.full {
            "test accuracy of this merge (all test digits)"
        } else {
            "test accuracy of this merge (quick estimate)"
        });
        accuracy(ui, preview);
    } else if let Some(survived) = &preview.survival {
        ui.label("what this merge keeps of each fine-tune (data-free)");
        egui::Grid::new("pareto-retention")
            .striped(true)
            .show(ui, |ui| {
                for (name, s) in survived.models.iter().zip(&survived.whole_model.models) {
                    ui.label(name);
                    ui.label(format!(
                        "retention {}  cosine {}",
                        fmt(s.projection),
                        fmt(s.cosine)
                    ));
                    ui.end_row();
                }
            });
    }
}

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    if let Some(fraction) = app.preview_progress {
        ui.add(
            egui::ProgressBar::new(fraction as f32)
                .desired_width(260.0)
                .text(format!(
                    "previewing the new settings {:.0} %",
                    100.0 * fraction
                )),
        );
    }
    // A copy: the charts below write their saving outcomes to the notice.
    let Some(preview) = app.preview.clone() else {
        ui.label("Preview: computing...");
        return;
    };
    // The time is in the tooltip: it changes every run, the rest of the panel does not.
    let when = format!("merged and scored in {:.0} ms", preview.millis);
    let is_demo = app.family.as_ref().is_some_and(|f| f.is_demo);
    let is_perplexity = preview.is_perplexity();
    ui.horizontal(|ui| {
        ui.strong(if is_perplexity {
            "Preview: perplexity of the merge per text domain, beside its base and each model \
             (lower is better)"
        } else if is_demo {
            "Preview: test accuracy of the merge, beside its base and each expert"
        } else {
            "Preview: how much of each fine-tune the merge keeps, beside each fine-tune alone"
        });
        let grade = match (is_perplexity, is_demo, preview.full) {
            (true, _, true) => "(all text)".to_owned(),
            (true, _, false) => format!(
                "(quick estimate, the first {} tokens of each domain)",
                mergescope_core::eval::lm::perplexity::QUICK_TOKENS
            ),
            (false, true, true) => "(all test digits)".to_owned(),
            (false, true, false) => format!(
                "(quick estimate, {} digits per domain)",
                crate::gui::previewer::QUICK_DIGITS
            ),
            (false, false, _) => "(data-free)".to_owned(),
        };
        ui.label(grade).on_hover_text(&when);
    });
    if is_demo || is_perplexity || preview.survival.is_some() {
        let comparison = comparison(&preview);
        let inputs = if preview.inputs.is_some() {
            Inputs::Scored
        } else if app.inputs_requested {
            Inputs::Scoring
        } else {
            Inputs::NotAsked
        };
        let ask = chart::framed_ui(
            ui,
            &mut app.notice,
            "comparison",
            "This merge, the base and each input model",
            || comparison_csv(&comparison),
            |ui| compare(ui, &comparison, inputs),
        );
        if ask {
            app.score_inputs(true);
        }
    }
    let Some(survived) = &preview.survival else {
        ui.label("(A merge without a base model has no task vectors to follow per layer.)");
        return;
    };
    ui.horizontal(|ui| {
        ui.strong("Preview: what the merge keeps of each fine-tune, per layer");
        let how = match survived.sampled {
            Some(n) => {
                format!("(data-free; quick estimate from at most {n} elements of each tensor)")
            }
            None => "(data-free)".to_owned(),
        };
        ui.label(how).on_hover_text(&when);
    });
    survival(ui, &mut app.notice, survived);
}

/// The merge's scores beside its inputs', one column per task in the order of the rows.
fn comparison(preview: &Preview) -> Comparison {
    let (_, scores) = preview.objective_scores();
    // Accuracies for the demo, perplexities for a language model, retention per model
    // otherwise: one number per task.
    let shown: mergescope_core::eval::Scores = scores
        .into_iter()
        .filter(|(m, _)| {
            m.ends_with("/accuracy") || m.ends_with("/perplexity") || m.starts_with("retention/")
        })
        .collect();
    let empty = InputScores::default();
    let inputs = preview
        .inputs
        .as_deref()
        .map_or(&empty, |inputs| inputs.for_grade(preview.full));
    let mut comparison = Comparison::new(&shown, inputs);
    // Columns in the order of the rows: a task's column where its model's row is.
    let names: Vec<String> = comparison
        .models
        .iter()
        .map(|m| crate::gui::state::model_name(std::path::Path::new(m)))
        .collect();
    comparison.metrics.sort_by_key(|row| {
        let t = column_title(&row.metric);
        names.iter().position(|n| *n == t).unwrap_or(names.len())
    });
    comparison
}

/// A metric as a column title: the task or model it is about.
pub(super) fn column_title(metric: &str) -> String {
    let name = metric
        .strip_suffix("/accuracy")
        .or_else(|| metric.strip_suffix("/perplexity"))
        .or_else(|| metric.strip_prefix("retention/"))
        .unwrap_or(metric);
    crate::gui::state::model_name(std::path::Path::new(name))
}

/// The comparison's numbers: a row per metric, full precision.
fn comparison_csv(comparison: &Comparison) -> String {
    let mut header: Vec<String> = ["metric", "merge", "base"].map(str::to_owned).to_vec();
    header.extend(comparison.models.iter().cloned());
    header.extend(["delta_to_base", "delta_to_best_single", "best_single"].map(str::to_owned));
    let rows = comparison.metrics.iter().map(|row| {
        let mut cells = vec![
            row.metric.clone(),
            chart::csv_number(Some(row.merge)),
            chart::csv_number(row.base),
        ];
        cells.extend(row.models.iter().map(|&v| chart::csv_number(v)));
        cells.push(chart::csv_number(row.delta_to_base));
        cells.push(chart::csv_number(row.delta_to_best));
        cells.push(row.best_single.clone().unwrap_or_default());
        cells
    });
    chart::csv_of(&header, rows)
}

/// The merge's scores beside the base's and each input model's, then the merge's delta to
/// the base and to the best single model per column, green where the merge is better.
/// `scored`: the inputs' scores have arrived.
/// Where the inputs' scores are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inputs {
    Scored,
    Scoring,
    /// A large family's wait to be asked for (they read every model once per fine-tune).
    NotAsked,
}

/// Returns whether the user asked for the inputs' scores.
fn compare(ui: &mut egui::Ui, comparison: &Comparison, inputs: Inputs) -> bool {
    let mut ask = false;
    let title = column_title;
    let has_base = comparison.metrics.iter().any(|m| m.base.is_some());
    let better = if ui.visuals().dark_mode {
        egui::Color32::from_rgb(0x3f, 0xb9, 0x50)
    } else {
        egui::Color32::from_rgb(0x1a, 0x7f, 0x37)
    };
    let worse = ui.visuals().error_fg_color;
    let delta_cell =
        |ui: &mut egui::Ui, row: &MetricRow, delta: Option<f64>, hover: String| match delta {
            Some(d) => {
                let color = if d == 0.0 {
                    ui.visuals().text_color()
                } else if row.improves(d) {
                    better
                } else {
                    worse
                };
                ui.colored_label(color, format_delta(&row.metric, d))
                    .on_hover_text(hover);
            }
            None => {
                ui.weak("-");
            }
        };
    egui::Grid::new("compare")
        .striped(true)
        .min_col_width(64.0)
        .show(ui, |ui| {
            ui.label("");
            for row in &comparison.metrics {
                ui.strong(title(&row.metric)).on_hover_text(&row.metric);
            }
            ui.end_row();
            ui.strong("this merge");
            for row in &comparison.metrics {
                ui.strong(format_value(&row.metric, row.merge));
            }
            ui.end_row();
            match inputs {
                Inputs::Scored => {}
                Inputs::Scoring => {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("scoring the base and each model...");
                    });
                    ui.end_row();
                    return;
                }
                Inputs::NotAsked => {
                    ask = ui
                        .button("Compare with the base and each model")
                        .on_hover_text(
                            "Measures each fine-tune alone like a merge: a read of every model \
                             per fine-tune, once for this family (a job in the status bar)",
                        )
                        .clicked();
                    ui.end_row();
                    return;
                }
            }
            let value = |ui: &mut egui::Ui, row: &MetricRow, v: Option<f64>| match v {
                Some(v) => ui.label(format_value(&row.metric, v)),
                None => ui.weak("-"),
            };
            if has_base {
                ui.label("base");
                for row in &comparison.metrics {
                    value(ui, row, row.base);
                }
                ui.end_row();
            }
            for (i, label) in comparison.models.iter().enumerate() {
                ui.label(crate::gui::state::model_name(std::path::Path::new(label)))
                    .on_hover_text(label);
                for row in &comparison.metrics {
                    value(ui, row, row.models[i]);
                }
                ui.end_row();
            }
            if has_base {
                ui.strong("vs base");
                for row in &comparison.metrics {
                    delta_cell(
                        ui,
                        row,
                        row.delta_to_base,
                        format!("this merge minus the base on {}", row.metric),
                    );
                }
                ui.end_row();
            }
            ui.strong("vs best single")
                .on_hover_text("this merge minus the best input model on each column");
            for row in &comparison.metrics {
                let best = row.best_single.as_deref().map_or_else(String::new, |b| {
                    crate::gui::state::model_name(std::path::Path::new(b))
                });
                delta_cell(
                    ui,
                    row,
                    row.delta_to_best,
                    format!(
                        "this merge minus {best}, the best single model on {}",
                        row.metric
                    ),
                );
            }
            ui.end_row();
        });
    ask
}

fn accuracy(ui: &mut egui::Ui, preview: &Preview) {
    egui::Grid::new("preview").striped(true).show(ui, |ui| {
        // Per task first, their mean last; losses are left out here.
        let mut rows: Vec<(&String, &f64)> = preview
            .scores
            .iter()
            .filter(|(m, _)| !m.ends_with("/loss"))
            .collect();
        rows.sort_by_key(|(m, _)| m.starts_with("mean/"));
        for (metric, value) in rows {
            ui.label(metric);
            ui.add(
                egui::ProgressBar::new(*value as f32)
                    .desired_width(240.0)
                    .text(format!("{:.1}%", 100.0 * value)),
            );
            ui.end_row();
        }
    });
}

fn survival(ui: &mut egui::Ui, notice: &mut Option<Notice>, survival: &Survival) {
    let whole = &survival.whole_model;
    let names: Vec<String> = survival
        .models
        .iter()
        .map(|m| crate::gui::state::model_name(std::path::Path::new(m)))
        .collect();
    egui::Grid::new("retention").striped(true).show(ui, |ui| {
        ui.label("");
        ui.label("retention").on_hover_text(
            "Projection of the merged task vector on the fine-tune's: 1 keeps it whole, 0 loses it",
        );
        ui.label("cosine")
            .on_hover_text("Cosine of the merged task vector with the fine-tune's");
        ui.end_row();
        for (label, s) in names.iter().zip(&whole.models) {
            ui.label(label);
            ui.label(fmt(s.projection));
            ui.label(fmt(s.cosine));
            ui.end_row();
        }
        ui.label("merged delta");
        ui.label(fmt(whole.merged_relative))
            .on_hover_text("|theta_merged - theta_base| / |theta_base| over the merged tensors");
        ui.end_row();
    });
    let layers: Vec<_> = survival
        .layers
        .iter()
        .filter(|g| g.block.is_some())
        .collect();
    if layers.is_empty() {
        return;
    }
    let retention = XyChart {
        series_title: "model".to_owned(),
        series: names
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let points = layers
                    .iter()
                    .filter_map(|g| Some([g.block? as f64, g.models[i].projection?]))
                    .collect();
                Series::new(label.clone(), i, points)
            })
            .collect(),
        x_is_layer: true,
        include_y: vec![0.0],
        min_y_span: 0.05,
        height: 170.0,
        ..XyChart::new("retention-per-layer", "layer", "retention")
    };
    let delta = XyChart {
        series_title: "merge".to_owned(),
        series: vec![Series::new(
            "this merge",
            names.len(),
            layers
                .iter()
                .filter_map(|g| Some([g.block? as f64, g.merged_relative?]))
                .collect(),
        )],
        marks: Marks::Bars,
        x_is_layer: true,
        include_y: vec![0.0],
        min_y_span: 1e-3,
        height: 170.0,
        ..XyChart::new("merged-delta-per-layer", "layer", "|Δ| / |θ_base|")
    };
    // Side by side, each half the width; one above the other when the window is narrow.
    let columns = if ui.available_width() >= 900.0 { 2 } else { 1 };
    ui.columns(columns, |cols| {
        chart::framed_ui(
            &mut cols[0],
            notice,
            "retention-per-layer",
            "What the merge keeps of each fine-tune's τ, per layer",
            || retention.csv(),
            |ui| retention.show(ui),
        );
        let ui = if columns == 2 {
            &mut cols[1]
        } else {
            &mut cols[0]
        };
        chart::framed_ui(
            ui,
            notice,
            "merged-delta-per-layer",
            "How far the merge moves the base, per layer (Δ = θ_merged − θ_base)",
            || delta.csv(),
            |ui| delta.show(ui),
        );
    });
}
