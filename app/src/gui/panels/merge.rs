//! Merge: method, a weight (and density) slider per model or a per-layer weight curve with
//! draggable control points and presets, module filters, and the live preview (see
//! [`super::preview`]).

use crate::gui::app::{Notice, Workbench};
use crate::gui::curve_editor::curve_editor;
use crate::gui::help;
use crate::gui::method_controls;
use crate::gui::methods::{curve_param, has_weight, shared_curve_param};
use crate::gui::state::{
    MergeSettings, ModuleFilter, OpenFamily, has_lambda, method_flags, methods, model_param_range,
    model_params,
};
use crate::gui::worker::Command;

/// Weights run over this range on sliders and curves (negative weights subtract a task).
const WEIGHTS: std::ops::RangeInclusive<f64> = -1.0..=2.0;
/// Lambda runs over this range, globally and per module filter.
const LAMBDAS: std::ops::RangeInclusive<f64> = 0.0..=2.0;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Merge");
    let (Some(family), Some(settings)) = (&app.family, &mut app.settings) else {
        ui.label("Open a family first.");
        return;
    };
    let read_only = settings.read_only.clone();
    let problem = match &read_only {
        Some(read_only) => {
            if method_controls::read_only_ui(ui, read_only) {
                let mut fresh = MergeSettings::for_models(family.models.len());
                if methods().contains(&settings.method.as_str()) {
                    fresh.set_method(&settings.method);
                }
                *settings = fresh;
            }
            None
        }
        None => controls(ui, family, settings),
    };
    adamerging_button(app, ui);
    let (Some(family), Some(settings)) = (&app.family, &app.settings) else {
        return;
    };
    let yaml = settings.to_yaml(family);

    crate::gui::texts::texts_ui(app, ui);
    // A recipe the method would refuse is not sent: the problem is said above instead.
    if problem.is_none() {
        super::preview::request(app, ui, &yaml);
    }

    ui.separator();
    super::preview::show(app, ui);
    super::generation::show(app, ui, &yaml);
    ui.separator();
    super::history::show(app, ui);
    ui.separator();
    // A read-only recipe is its text: shown open, under its own id (so it opens even where the
    // editable recipe was folded).
    let (title, salt) = if read_only.is_some() {
        (
            "Recipe (mergekit YAML, edited as text)",
            "recipe-yaml-read-only",
        )
    } else {
        ("Recipe (mergekit YAML, editable)", "recipe-yaml")
    };
    egui::CollapsingHeader::new(title)
        .id_salt(salt)
        .default_open(read_only.is_some())
        .show(ui, |ui| recipe_editor(app, ui, &yaml));
    recipe_file(app, ui);
}

/// On a family of the digits demo's architecture: learn the weights (AdaMerging) on the
/// worker, then show them as the models' per-layer curves.
fn adamerging_button(app: &mut Workbench, ui: &mut egui::Ui) {
    let (Some(family), Some(settings)) = (&app.family, &app.settings) else {
        return;
    };
    if !family.is_demo {
        return;
    }
    let models: Vec<std::path::PathBuf> = family
        .models
        .iter()
        .zip(&settings.included)
        .filter(|(_, included)| **included)
        .map(|(m, _)| m.clone())
        .collect();
    let ready = app.busy.is_none() && !models.is_empty();
    let learn = ui
        .add_enabled(ready, egui::Button::new("Learn weights (AdaMerging)"))
        .on_hover_text(
            "Task arithmetic whose weight per model and layer is learned by minimising the \
             prediction entropy on the demo's unlabeled test images (AdaMerging, 200 Adam \
             steps, a few seconds). The result replaces the settings: each included model's \
             per-layer weight curve, lambda 1. Undo (Ctrl+Z) brings the old ones back.",
        );
    if learn.clicked() {
        let request = Command::AdaMerging {
            base: family.base.clone(),
            models,
            settings: app.adamerging,
        };
        app.start_job("AdaMerging");
        app.worker.send(request);
    }
}

/// The method, the models that take part, and every parameter the method declares. Returns
/// what keeps the settings from making a recipe the method accepts.
fn controls(
    ui: &mut egui::Ui,
    family: &OpenFamily,
    settings: &mut MergeSettings,
) -> Option<String> {
    ui.horizontal(|ui| {
        let mut method = settings.method.clone();
        // Taller than egui's default list, so most methods show without scrolling.
        egui::ComboBox::from_label("method")
            .selected_text(&settings.method)
            .height(640.0)
            .show_ui(ui, |ui| {
                for m in methods() {
                    ui.selectable_value(&mut method, m.to_owned(), m)
                        .on_hover_text(help::method(m));
                }
            })
            .response
            .on_hover_text(help::method(&settings.method));
        if method != settings.method {
            settings.set_method(&method);
        }
        if let Some(param) = curve_param(&settings.method) {
            ui.separator();
            let mut per_layer = settings.per_layer;
            let text = if param == "weight" {
                "per-layer weights".to_owned()
            } else {
                format!("per-layer {param}")
            };
            let toggle = ui
                .checkbox(&mut per_layer, &text)
                .on_hover_text(help::param(&settings.method, &text, None, None));
            if toggle.changed() {
                settings.set_per_layer(per_layer, family.layers);
            }
        }
    });
    let problem = method_controls::models_ui(ui, family, settings);
    if has_weight(&settings.method) && settings.per_layer {
        curves(ui, family, settings);
    } else if has_weight(&settings.method) || !model_params(&settings.method).is_empty() {
        sliders(ui, family, settings);
    }
    if let Some(t) = shared_curve_param(&settings.method) {
        method_controls::shared_curve_ui(ui, family, settings, t);
    }
    method_controls::shared_numbers_ui(ui, settings);
    if has_lambda(&settings.method) {
        ui.horizontal(|ui| {
            ui.add(egui::Slider::new(&mut settings.lambda, LAMBDAS).text("lambda"))
                .on_hover_text(help::param(&settings.method, "lambda", Some(LAMBDAS), None));
            flags(ui, settings);
        });
        filters(ui, family, settings);
    } else {
        ui.horizontal_wrapped(|ui| flags(ui, settings));
    }
    problem
}

/// The recipe as text: what the settings make, or the user's edit of it. An edit that parses
/// becomes the settings at once; one that does not says why and changes nothing.
fn recipe_editor(app: &mut Workbench, ui: &mut egui::Ui, yaml: &str) {
    let mut text = app.yaml_draft.clone().unwrap_or_else(|| yaml.to_owned());
    let label = ui.label("Edit the recipe: a change that parses becomes the settings at once.");
    let edit = ui
        .add(
            egui::TextEdit::multiline(&mut text)
                .code_editor()
                .desired_width(f32::INFINITY)
                .desired_rows(8),
        )
        .labelled_by(label.id);
    if edit.changed() {
        app.yaml_draft = Some(text);
    } else if !edit.has_focus() {
        // Once the user is elsewhere, the text follows the sliders again.
        app.yaml_draft = None;
        app.yaml_error = None;
    }
    let Some(draft) = app.yaml_draft.clone().filter(|_| edit.changed()) else {
        if let Some(error) = &app.yaml_error {
            ui.add(
                egui::Label::new(egui::RichText::new(error).color(ui.visuals().error_fg_color))
                    .wrap()
                    .selectable(true),
            );
        }
        return;
    };
    let Some(family) = &app.family else {
        return;
    };
    match MergeSettings::from_recipe(&draft, &family.recipe_file(), family) {
        Ok(settings) => {
            app.settings = Some(settings);
            app.yaml_error = None;
        }
        Err(e) => app.yaml_error = Some(format!("not applied: {e}")),
    }
}

fn model_name(family: &OpenFamily, i: usize) -> String {
    crate::gui::state::model_name(&family.models[i])
}

/// One weight (and density) slider per model.
fn sliders(ui: &mut egui::Ui, family: &OpenFamily, settings: &mut MergeSettings) {
    egui::Grid::new("sliders").num_columns(3).show(ui, |ui| {
        for i in 0..family.models.len() {
            if !settings.included[i] {
                continue;
            }
            let name = model_name(family, i);
            ui.label(&name);
            if has_weight(&settings.method) {
                ui.add(
                    egui::Slider::new(&mut settings.weights[i], WEIGHTS)
                        .text(format!("{name} weight")),
                )
                .on_hover_text(help::param(
                    &settings.method,
                    "weight",
                    Some(WEIGHTS),
                    None,
                ));
            }
            ui.horizontal(|ui| model_sliders(ui, settings, i, &name));
            ui.end_row();
        }
    });
}

/// The method's per-model numbers besides the weight (density, epsilon, gamma).
fn model_sliders(ui: &mut egui::Ui, settings: &mut MergeSettings, i: usize, name: &str) {
    for param in model_params(&settings.method) {
        let mut value = settings.model_value(i, param);
        let (start, range) = model_param_range(param);
        if ui
            .add(egui::Slider::new(&mut value, range.clone()).text(format!("{name} {param}")))
            .on_hover_text(help::param(
                &settings.method,
                param,
                Some(range),
                Some(start),
            ))
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
        if ui
            .checkbox(&mut on, name)
            .on_hover_text(help::param(&settings.method, name, None, None))
            .changed()
        {
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
    ui.horizontal(|ui| {
        crate::gui::curve_editor::shape_every_curve_ui(ui, &mut settings.curves, family.layers);
        if has_lambda(&settings.method) {
            ui.separator();
            crate::gui::curve_editor::attention_mlp_split_ui(ui, family, settings);
        }
    });
    // As many models to a row as fit (a curve is wide and short), sharing the full width:
    // each takes its controls (170 + gaps) and at least 280 points of curve.
    const CONTROLS: f32 = 170.0 + 32.0;
    let available = ui.available_width();
    let models: Vec<usize> = (0..family.models.len())
        .filter(|&i| settings.included[i])
        .collect();
    let per_row = ((available / (CONTROLS + 280.0)).floor() as usize).clamp(1, models.len().max(1));
    let editor_width = (available / per_row as f32 - CONTROLS).max(200.0);
    for pair in models.chunks(per_row) {
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
                    "weight",
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
    method_controls::points_ui(ui, &name, &mut settings.curves[i], family.layers);
    ui.spacing_mut().slider_width = 60.0;
    model_sliders(ui, settings, i, &name);
}

/// Module filters: tensors whose names contain a filter take its lambda (first match wins).
fn filters(ui: &mut egui::Ui, family: &OpenFamily, settings: &mut MergeSettings) {
    let explained = help::param(&settings.method, "module filters", Some(LAMBDAS), None);
    ui.label("Module filters: tensors whose names contain a filter take its lambda instead (the first match wins; 0 keeps the base).")
        .on_hover_text(&explained);
    let mut remove = None;
    for (k, f) in settings.filters.iter_mut().enumerate() {
        ui.horizontal(|ui| {
            let label = ui.label(format!("filter {}", k + 1));
            ui.add(egui::TextEdit::singleline(&mut f.filter).desired_width(160.0))
                .labelled_by(label.id)
                .on_hover_text(&explained);
            ui.add(
                egui::Slider::new(&mut f.lambda, LAMBDAS).text(format!("filter {} lambda", k + 1)),
            )
            .on_hover_text(&explained);
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
        })
        .response
        .on_hover_text(&explained);
}

/// Save the recipe to a file, or load one into the panel (opening the models it names).
fn recipe_file(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        let label = ui.label("Recipe file");
        ui.add(egui::TextEdit::singleline(&mut app.recipe_path).desired_width(420.0))
            .labelled_by(label.id);
        if ui.button("Save recipe").clicked()
            && let Err(text) = app.save_recipe()
        {
            app.notice = Some(Notice { error: true, text });
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
