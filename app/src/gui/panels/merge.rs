//! Merge: method, a weight (and density) slider per model, per-layer weights, and the live
//! preview: the demo family's accuracies (a subsample while a slider moves, all of the test
//! split on release), or, for any family, how much of each task vector survives.

use crate::gui::app::{Notice, Workbench};
use crate::gui::state::{METHODS, MergeSettings, has_density};
use crate::gui::worker::Command;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Merge");
    let (Some(family), Some(settings)) = (&app.family, &mut app.settings) else {
        ui.label("Open a family first.");
        return;
    };
    egui::ComboBox::from_label("method")
        .selected_text(&settings.method)
        .show_ui(ui, |ui| {
            for m in METHODS {
                ui.selectable_value(&mut settings.method, m.to_owned(), m);
            }
        });
    ui.checkbox(
        &mut settings.per_layer,
        "per-layer weights (first to last layer)",
    );
    egui::Grid::new("sliders").num_columns(3).show(ui, |ui| {
        for (i, path) in family.models.iter().enumerate() {
            let name = path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            ui.label(&name);
            if settings.per_layer {
                ui.horizontal(|ui| {
                    ui.add(
                        egui::Slider::new(&mut settings.layer_weights[i][0], -1.0..=2.0)
                            .text(format!("{name} first layer")),
                    );
                    ui.add(
                        egui::Slider::new(&mut settings.layer_weights[i][1], -1.0..=2.0)
                            .text(format!("{name} last layer")),
                    );
                });
            } else {
                ui.add(
                    egui::Slider::new(&mut settings.weights[i], -1.0..=2.0)
                        .text(format!("{name} weight")),
                );
            }
            if has_density(&settings.method) {
                ui.add(
                    egui::Slider::new(&mut settings.densities[i], 0.01..=1.0)
                        .text(format!("{name} density")),
                );
            } else {
                ui.label("");
            }
            ui.end_row();
        }
    });
    if settings.method != "linear" {
        ui.add(egui::Slider::new(&mut settings.lambda, 0.0..=2.0).text("lambda"));
    }
    let yaml = settings.to_yaml(family);

    // Live preview: a quick one while the pointer is down, a full one once it is released.
    let dragging = ui.input(|i| i.pointer.any_down());
    let wanted_full = !dragging;
    let up_to_date = app
        .sent_preview
        .as_ref()
        .is_some_and(|(sent, full)| *sent == yaml && (*full || !wanted_full));
    if !up_to_date {
        app.worker.send(Command::Preview {
            yaml: yaml.clone(),
            full: wanted_full,
        });
        app.sent_preview = Some((yaml.clone(), wanted_full));
    }

    ui.separator();
    ui.strong(if family.is_demo {
        "Preview: test accuracy of the merged model"
    } else {
        "Preview: share of each task vector the merge keeps"
    });
    match &app.preview {
        None => {
            ui.label("computing...");
        }
        Some(preview) => {
            // The time is in the tooltip: it changes every run, the rest of the panel does not.
            ui.label(if preview.full {
                "all test digits"
            } else {
                "quick estimate (32 per domain)"
            })
            .on_hover_text(format!("merged and scored in {:.0} ms", preview.millis));
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
                            .text(format!("{:.1} %", 100.0 * value)),
                    );
                    ui.end_row();
                }
            });
        }
    }
    ui.separator();
    ui.collapsing("Recipe (mergekit YAML)", |ui| {
        ui.monospace(&yaml);
    });
    let mut loaded = None;
    ui.horizontal(|ui| {
        let label = ui.label("Recipe file");
        ui.add(egui::TextEdit::singleline(&mut app.recipe_path).desired_width(420.0))
            .labelled_by(label.id);
        if ui.button("Save recipe").clicked() {
            app.notice = Some(match std::fs::write(&app.recipe_path, &yaml) {
                Ok(()) => Notice {
                    error: false,
                    text: format!("saved the recipe to {}", app.recipe_path),
                },
                Err(e) => Notice {
                    error: true,
                    text: format!("cannot write {}: {e}", app.recipe_path),
                },
            });
        }
        if ui.button("Load recipe").clicked() {
            let path = std::path::PathBuf::from(app.recipe_path.trim());
            loaded = Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| {
                        app.family.as_ref().map_or_else(
                            || Err("open a family first".to_owned()),
                            |family| MergeSettings::from_recipe(&text, &path, family),
                        )
                    }),
            );
        }
    });
    match loaded {
        Some(Ok(settings)) => {
            app.settings = Some(settings);
            app.notice = Some(Notice {
                error: false,
                text: format!("loaded {}", app.recipe_path),
            });
        }
        Some(Err(text)) => app.notice = Some(Notice { error: true, text }),
        None => {}
    }
}
