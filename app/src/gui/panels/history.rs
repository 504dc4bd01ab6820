//! The Merge panel's history: undo and redo, every settled preview with its scores, pins, and
//! the pinned entries side by side with their differing settings highlighted.

use std::path::Path;

use mergescope_core::eval::compare::{format_delta, format_value, higher_is_better};
use mergescope_core::merge::recipe::Recipe;

use crate::gui::app::{Notice, Panel, Workbench};
use crate::gui::history::HistoryEntry;
use crate::gui::state::{MergeSettings, model_name};

/// Entries listed before "show all".
const LISTED: usize = 12;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        if ui
            .add_enabled(app.undo.can_undo(), egui::Button::new("Undo"))
            .on_hover_text("Back to the settings before the last change (Ctrl+Z)")
            .clicked()
        {
            app.undo_redo(false);
        }
        if ui
            .add_enabled(app.undo.can_redo(), egui::Button::new("Redo"))
            .on_hover_text("Forward to the settings the last undo left (Ctrl+Shift+Z or Ctrl+Y)")
            .clicked()
        {
            app.undo_redo(true);
        }
        ui.separator();
        let saved = app.history.file.as_ref().map_or_else(
            || "not saved: no data folder".to_owned(),
            |f| format!("saved in {}", f.display()),
        );
        let n = app.history.entries.len();
        ui.label(format!(
            "History: {n} merge{} previewed",
            if n == 1 { "" } else { "s" }
        ))
        .on_hover_text(format!(
            "Every merge previewed in full is kept with its scores, for this family ({saved})"
        ));
    });
    if app.history.entries.is_empty() {
        return;
    }
    egui::CollapsingHeader::new("History")
        .id_salt("history")
        .default_open(true)
        .show(ui, |ui| list(app, ui));
    let pinned: Vec<HistoryEntry> = app.history.pinned().into_iter().cloned().collect();
    if pinned.len() >= 2 {
        egui::CollapsingHeader::new(format!("Pinned merges side by side ({})", pinned.len()))
            .id_salt("pinned")
            .default_open(true)
            .show(ui, |ui| side_by_side(app, ui, &pinned));
    } else {
        ui.weak("Pin two or more entries to see them side by side.");
    }
}

/// The headline number of an entry: the mean accuracy or perplexity, else the mean
/// retention.
fn headline(entry: &HistoryEntry) -> Option<(String, f64)> {
    for metric in ["mean/accuracy", "mean/perplexity"] {
        if let Some(&v) = entry.scores.get(metric) {
            return Some((metric.to_owned(), v));
        }
    }
    let kept: Vec<f64> = entry
        .scores
        .iter()
        .filter(|(m, _)| m.starts_with("retention/"))
        .map(|(_, &v)| v)
        .collect();
    (!kept.is_empty()).then(|| {
        (
            "mean retention".to_owned(),
            kept.iter().sum::<f64>() / kept.len() as f64,
        )
    })
}

/// The entries, newest first: pin, number, time, method, headline score, load and export.
fn list(app: &mut Workbench, ui: &mut egui::Ui) {
    let show_all = ui
        .ctx()
        .data(|d| d.get_temp::<bool>(egui::Id::unique("history-all")));
    let show_all = show_all.unwrap_or(false);
    let current = app.preview.as_ref().map(|p| p.yaml.clone());
    let mut load = None;
    let mut export = None;
    let count = app.history.entries.len();
    let mut pins_changed = false;
    egui::Grid::new("history-list")
        .striped(true)
        .num_columns(7)
        .show(ui, |ui| {
            for header in ["pin", "#", "time (UTC)", "method", "score", "", ""] {
                ui.strong(header);
            }
            ui.end_row();
            let shown = if show_all { count } else { LISTED.min(count) };
            for entry in app.history.entries.iter_mut().rev().take(shown) {
                pins_changed |= ui
                    .checkbox(&mut entry.pinned, "")
                    .on_hover_text(format!("Pin #{} to compare it side by side", entry.id))
                    .changed();
                let number = format!("#{}", entry.id);
                if current.as_deref() == Some(entry.recipe.as_str()) {
                    ui.strong(number).on_hover_text("the merge previewed now");
                } else {
                    ui.label(number);
                }
                ui.label(entry.clock());
                ui.label(&entry.method);
                match headline(entry) {
                    Some((metric, v)) => ui
                        .label(format_value(&metric, v))
                        .on_hover_text(format!("{metric} ({})", entry.objective)),
                    None => ui.weak("-"),
                };
                if ui
                    .button(format!("Load #{}", entry.id))
                    .on_hover_text("Put these settings back in the Merge panel (undo goes back)")
                    .clicked()
                {
                    load = Some(entry.clone());
                }
                if ui
                    .button(format!("Export #{}", entry.id))
                    .on_hover_text("Load these settings and go to the Export panel to write them")
                    .clicked()
                {
                    export = Some(entry.clone());
                }
                ui.end_row();
            }
        });
    if count > LISTED {
        let mut all = show_all;
        if ui.checkbox(&mut all, format!("show all {count}")).changed() {
            ui.ctx()
                .data_mut(|d| d.insert_temp(egui::Id::unique("history-all"), all));
        }
    }
    if pins_changed && let Err(text) = app.history.save() {
        app.notice = Some(Notice { error: true, text });
    }
    if let Some(entry) = load {
        load_entry(app, &entry);
    }
    if let Some(entry) = export.filter(|e| load_entry(app, e)) {
        app.panel = Panel::Export;
        app.notice = Some(Notice {
            error: false,
            text: format!(
                "loaded #{} for export: choose the folder and write it",
                entry.id
            ),
        });
    }
}

/// Puts `entry`'s settings in the Merge panel; says why not when they no longer fit the open
/// family.
pub fn load_entry(app: &mut Workbench, entry: &HistoryEntry) -> bool {
    let Some(family) = &app.family else {
        return false;
    };
    match MergeSettings::from_recipe(&entry.recipe, &family.recipe_file(), family) {
        Ok(settings) => {
            app.settings = Some(settings);
            app.notice = Some(Notice {
                error: false,
                text: format!("loaded #{} from the history", entry.id),
            });
            true
        }
        Err(e) => {
            app.notice = Some(Notice {
                error: true,
                text: format!("history entry #{} cannot be loaded: {e}", entry.id),
            });
            false
        }
    }
}

/// A recipe's settings as named rows: the method, each model's parameters, the shared ones,
/// the dtypes.
pub fn settings_rows(recipe: &str) -> Vec<(String, String)> {
    let Ok(recipe) = Recipe::from_yaml(recipe, Path::new("history.yml")) else {
        return Vec::new();
    };
    let mut rows = vec![("method".to_owned(), recipe.merge_method.clone())];
    for entry in &recipe.models {
        let name = model_name(Path::new(&entry.model));
        for (key, value) in &entry.parameters {
            rows.push((format!("{name} {key}"), value.to_string()));
        }
    }
    for (key, value) in &recipe.parameters {
        rows.push((key.clone(), value.to_string()));
    }
    for (key, value) in [("dtype", &recipe.dtype), ("out_dtype", &recipe.out_dtype)] {
        rows.push((
            key.to_owned(),
            value.clone().unwrap_or_else(|| "-".to_owned()),
        ));
    }
    rows
}

/// The pinned entries in columns: their scores (with the delta to the first pinned) and
/// their settings, rows that differ highlighted.
fn side_by_side(app: &mut Workbench, ui: &mut egui::Ui, pinned: &[HistoryEntry]) {
    let first = &pinned[0];
    let mut metrics: Vec<&String> = first
        .scores
        .keys()
        .filter(|m| !m.ends_with("/loss") && !m.starts_with("cosine/"))
        .collect();
    // Per-task rows first, their mean last (as the preview's table).
    metrics.sort_by_key(|m| m.starts_with("mean/"));
    let settings: Vec<Vec<(String, String)>> =
        pinned.iter().map(|e| settings_rows(&e.recipe)).collect();
    let mut keys: Vec<String> = Vec::new();
    for rows in &settings {
        for (k, _) in rows {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let highlight = ui.visuals().warn_fg_color;
    let mut load = None;
    egui::ScrollArea::horizontal()
        .id_salt("pinned-scroll")
        .show(ui, |ui| {
            egui::Grid::new("pinned")
                .striped(true)
                .min_col_width(80.0)
                .show(ui, |ui| {
                    ui.label("");
                    for e in pinned {
                        if ui
                            .button(format!("#{} {}", e.id, e.clock()))
                            .on_hover_text("Load these settings")
                            .clicked()
                        {
                            load = Some(e.clone());
                        }
                    }
                    ui.end_row();
                    for metric in &metrics {
                        ui.label(super::preview::column_title(metric))
                            .on_hover_text(*metric);
                        let reference = first.scores.get(*metric).copied();
                        for e in pinned {
                            let Some(&v) = e.scores.get(*metric) else {
                                ui.weak("-");
                                continue;
                            };
                            let mut text = format_value(metric, v);
                            if let Some(r) = reference.filter(|_| !std::ptr::eq(e, first)) {
                                let d = v - r;
                                let better = if higher_is_better(metric) {
                                    d > 0.0
                                } else {
                                    d < 0.0
                                };
                                text = format!("{text} ({})", format_delta(metric, d));
                                let color = if d == 0.0 {
                                    ui.visuals().text_color()
                                } else if better {
                                    egui::Color32::from_rgb(0x2e, 0x9e, 0x48)
                                } else {
                                    ui.visuals().error_fg_color
                                };
                                ui.colored_label(color, text).on_hover_text(format!(
                                    "#{} minus #{} on {metric}",
                                    e.id, first.id
                                ));
                            } else {
                                ui.label(text);
                            }
                        }
                        ui.end_row();
                    }
                    for key in &keys {
                        let values: Vec<String> = settings
                            .iter()
                            .map(|rows| {
                                rows.iter()
                                    .find(|(k, _)| k == key)
                                    .map_or_else(|| "-".to_owned(), |(_, v)| v.clone())
                            })
                            .collect();
                        let differs = values.iter().any(|v| *v != values[0]);
                        if differs {
                            ui.colored_label(highlight, key)
                                .on_hover_text("differs between the pinned merges");
                        } else {
                            ui.label(key);
                        }
                        for v in &values {
                            if differs {
                                ui.colored_label(highlight, v);
                            } else {
                                ui.weak(v);
                            }
                        }
                        ui.end_row();
                    }
                });
        });
    if let Some(entry) = load {
        load_entry(app, &entry);
    }
}
