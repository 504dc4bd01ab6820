//! Merge: method, a weight (and density) slider per model or a per-layer weight curve with
//! draggable control points and presets, module filters, and the live preview (see
//! [`super::preview`]).

use crate::gui::app::{Notice, Workbench};
use crate::gui::curve_editor::curve_editor;
use crate::gui::state::{
    CurvePreset, METHODS, MergeSettings, ModuleFilter, OpenFamily, curve_mean, has_lambda,
    method_flags, model_param_range, model_params, resample,
};

/// Weights run over this range on sliders and curves (negative weights subtract a task).
const WEIGHTS: std::ops::RangeInclusive<f64> = -1.0..=2.0;
/// Curves have between 2 and this many control points.
const MAX_POINTS: usize = 9;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Merge");
    let (Some(family), Some(settings)) = (&app.family, &mut app.settings) else {
        ui.label("Open a family first.");
        return;
    };
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("method")
            .selected_text(&settings.method)
            .show_ui(ui, |ui| {
                for m in METHODS {
                    ui.selectable_value(&mut settings.method, m.to_owned(), m);
                }
            });
        ui.separator();
        let mut per_layer = settings.per_layer;
        let toggle = ui
            .checkbox(&mut per_layer, "per-layer weights")
            .on_hover_text(
                "A weight curve per model over depth (a mergekit gradient): drag its points",
            );
        if toggle.changed() {
            settings.set_per_layer(per_layer, family.layers);
        }
    });
    if settings.per_layer {
        curves(ui, family, settings);
    } else {
        sliders(ui, family, settings);
    }
    if has_lambda(&settings.method) {
        ui.horizontal(|ui| {
            ui.add(egui::Slider::new(&mut settings.lambda, 0.0..=2.0).text("lambda"))
                .on_hover_text("Scales the merged task vector before it is added to the base");
            flags(ui, settings);
        });
        filters(ui, family, settings);
    } else {
        flags(ui, settings);
    }
    let yaml = settings.to_yaml(family);

    super::preview::request(app, ui, &yaml);

    ui.separator();
    super::preview::show(app, ui);
    ui.separator();
    ui.collapsing("Recipe (mergekit YAML)", |ui| {
        ui.monospace(&yaml);
    });
    recipe_file(app, ui, &yaml);
}

fn model_name(family: &OpenFamily, i: usize) -> String {
    crate::gui::state::model_name(&family.models[i])
}

/// One weight (and density) slider per model.
fn sliders(ui: &mut egui::Ui, family: &OpenFamily, settings: &mut MergeSettings) {
    egui::Grid::new("sliders").num_columns(3).show(ui, |ui| {
        for i in 0..family.models.len() {
            let name = model_name(family, i);
            ui.label(&name);
            ui.add(
                egui::Slider::new(&mut settings.weights[i], WEIGHTS).text(format!("{name} weight")),
            );
            ui.horizontal(|ui| model_sliders(ui, settings, i, &name));
            ui.end_row();
        }
    });
}

/// The method's per-model numbers besides the weight (density, epsilon, gamma).
fn model_sliders(ui: &mut egui::Ui, settings: &mut MergeSettings, i: usize, name: &str) {
    for param in model_params(&settings.method) {
        let mut value = settings.model_value(i, param);
        let (_, range) = model_param_range(param);
        if ui
            .add(egui::Slider::new(&mut value, range).text(format!("{name} {param}")))
            .changed()
        {
            settings.model_values[i].insert(param.to_owned(), value);
        }
    }
}

/// The method's switches (normalize, rescale), checked where they are on.
fn flags(ui: &mut egui::Ui, settings: &mut MergeSettings) {
    for (name, _) in method_flags(&settings.method) {
        let mut on = settings.flag(name);
        if ui.checkbox(&mut on, name).changed() {
            settings.flags.insert(name.to_owned(), on);
        }
    }
}

/// A weight curve per model: drag the points, pick a preset, add or remove points.
fn curves(ui: &mut egui::Ui, family: &OpenFamily, settings: &mut MergeSettings) {
    if family.layers < 2 {
        ui.label(
            "These models have no numbered layers: a curve gives every tensor its first point.",
        );
    }
    // Two models to a row: a curve is wide and short.
    let editor_width = ((ui.available_width() - 32.0) / 2.0 - 186.0).clamp(200.0, 420.0);
    let models: Vec<usize> = (0..family.models.len()).collect();
    for pair in models.chunks(2) {
        ui.horizontal_top(|ui| {
            for &i in pair {
                ui.vertical(|ui| {
                    ui.set_width(170.0);
                    curve_controls(ui, family, settings, i);
                });
                let name = model_name(family, i);
                curve_editor(
                    ui,
                    &name,
                    &mut settings.curves[i],
                    family.layers,
                    WEIGHTS,
                    editor_width,
                );
                ui.add_space(16.0);
            }
        });
        ui.add_space(6.0);
    }
}

/// A curve's name, shape presets, point count and density.
fn curve_controls(ui: &mut egui::Ui, family: &OpenFamily, settings: &mut MergeSettings, i: usize) {
    let name = model_name(family, i);
    ui.strong(&name);
    let mean = curve_mean(&settings.curves[i], family.layers);
    egui::ComboBox::new(("preset", i), "shape")
        .selected_text("choose...")
        .width(90.0)
        .show_ui(ui, |ui| {
            for preset in CurvePreset::ALL {
                if ui.selectable_label(false, preset.label()).clicked() {
                    // A flat curve at 0 would stay 0 under every shape.
                    let scale = if mean.abs() < 1e-9 { 0.3 } else { mean };
                    settings.curves[i] = preset.points(scale);
                }
            }
        })
        .response
        .on_hover_text(format!("Reset {name}'s curve to a shape"));
    ui.horizontal(|ui| {
        let k = settings.curves[i].len();
        if ui
            .add_enabled(k < MAX_POINTS, egui::Button::new("+ point"))
            .on_hover_text(format!("One more control point on {name}'s curve"))
            .clicked()
        {
            settings.curves[i] = resample(&settings.curves[i], k + 1);
        }
        if ui
            .add_enabled(k > 2, egui::Button::new("- point"))
            .on_hover_text(format!("One control point fewer on {name}'s curve"))
            .clicked()
        {
            settings.curves[i] = resample(&settings.curves[i], k - 1);
        }
    });
    ui.spacing_mut().slider_width = 60.0;
    model_sliders(ui, settings, i, &name);
}

/// Module filters: tensors whose names contain a filter take its lambda (first match wins).
fn filters(ui: &mut egui::Ui, family: &OpenFamily, settings: &mut MergeSettings) {
    ui.label("Module filters: tensors whose names contain a filter take its lambda instead (the first match wins; 0 keeps the base).");
    let mut remove = None;
    for (k, f) in settings.filters.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            let label = ui.label(format!("filter {}", k + 1));
            ui.add(egui::TextEdit::singleline(&mut f.filter).desired_width(160.0))
                .labelled_by(label.id);
            ui.add(
                egui::Slider::new(&mut f.lambda, 0.0..=2.0)
                    .text(format!("filter {} lambda", k + 1)),
            );
            ui.label(format!("{} tensors", family.matches(&f.filter)));
            if ui.button(format!("Remove filter {}", k + 1)).clicked() {
                remove = Some(k);
            }
        });
    }
    if let Some(k) = remove {
        settings.filters.remove(k);
    }
    let unused: Vec<String> = family
        .module_suggestions()
        .into_iter()
        .filter(|m| !settings.filters.iter().any(|f| f.filter == *m))
        .collect();
    egui::ComboBox::new("add filter", "add a module filter")
        .selected_text("choose...")
        .show_ui(ui, |ui| {
            for module in unused {
                let text = format!("{module} ({} tensors)", family.matches(&module));
                if ui.selectable_label(false, text).clicked() {
                    settings.filters.push(ModuleFilter {
                        filter: module,
                        lambda: 0.5,
                    });
                }
            }
        });
}

/// Save the recipe to a file, or load one into the panel (opening the models it names).
fn recipe_file(app: &mut Workbench, ui: &mut egui::Ui, yaml: &str) {
    ui.horizontal(|ui| {
        let label = ui.label("Recipe file");
        ui.add(egui::TextEdit::singleline(&mut app.recipe_path).desired_width(420.0))
            .labelled_by(label.id);
        if ui.button("Save recipe").clicked() {
            app.notice = Some(match std::fs::write(&app.recipe_path, yaml) {
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
            app.load_recipe(std::path::PathBuf::from(app.recipe_path.trim()));
        }
        if ui.button("Browse...").clicked()
            && let Some(file) = rfd::FileDialog::new()
                .add_filter("mergekit recipe", &["yml", "yaml"])
                .pick_file()
        {
            app.recipe_path = file.display().to_string();
            app.load_recipe(file);
        }
    });
}
