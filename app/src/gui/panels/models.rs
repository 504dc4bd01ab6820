//! Models: open a base and fine-tunes (the demo families, typed paths, the file dialog, or files
//! dropped on the window) and see what was opened and how it lines up.

use std::path::PathBuf;

use mergescope_core::layout::LayerKey;

use crate::gui::app::{Notice, Workbench};
use crate::gui::panels::export::folder_dialog_ui;
use crate::gui::state::BuiltinDemo;
use crate::gui::text::{elide_middle, human_bytes, human_count};

/// What the language-model demo family is.
const LM_DEMO: &str = "a small Llama-shaped base and fine-tunes on Python source (code), \
     Python's language reference (docs) and software licences (legal), opened with the \
     task-arithmetic recipe; the Merge panel previews merges by perplexity on each domain's \
     held-out text and generates text with each model";

/// Tensor names longer than this are shortened in the middle (the whole name on hover).
const NAME_CHARS: usize = 56;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Models");
    ui.horizontal_wrapped(|ui| {
        if ui
            .button("Open the demo family")
            .on_hover_text(
                "A tiny ViT base and experts for upright, rotated, mirrored and inverted \
                 handwritten digits; merges are previewed by test accuracy",
            )
            .clicked()
        {
            app.open_demo();
        }
        if ui
            .button("Open the language-model demo")
            .on_hover_text(LM_DEMO)
            .clicked()
        {
            app.open_lm_demo();
        }
        ui.label("or drop model files, folders or a recipe (.yml) on the window");
    });
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        let label = ui.label("Base");
        ui.add(egui::TextEdit::singleline(&mut app.base_path).desired_width(560.0))
            .labelled_by(label.id);
        match folder_dialog_ui(ui, "models-base", "Browse...") {
            Some(Ok(folder)) => app.base_path = folder.display().to_string(),
            Some(Err(why)) => {
                app.notice = Some(Notice {
                    error: true,
                    text: why,
                });
            }
            None => {}
        }
    });
    ui.horizontal_top(|ui| {
        let label = ui.label("Fine-tunes (one per line)");
        ui.add(
            egui::TextEdit::multiline(&mut app.model_paths)
                .desired_width(460.0)
                .desired_rows(4),
        )
        .labelled_by(label.id);
        match folder_dialog_ui(ui, "models-add", "Add...") {
            Some(Ok(folder)) => {
                if !app.model_paths.trim().is_empty() {
                    app.model_paths.push('\n');
                }
                app.model_paths.push_str(&folder.display().to_string());
            }
            Some(Err(why)) => {
                app.notice = Some(Notice {
                    error: true,
                    text: why,
                });
            }
            None => {}
        }
    });
    if ui.button("Open").clicked() {
        let models: Vec<PathBuf> = app
            .model_paths
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect();
        if app.base_path.trim().is_empty() || models.is_empty() {
            app.notice = Some(Notice {
                error: true,
                text: "give a base model and at least one fine-tune".to_owned(),
            });
        } else {
            app.open(PathBuf::from(app.base_path.trim()), models);
        }
    }
    if !app.recent.is_empty() {
        ui.horizontal_wrapped(|ui| {
            ui.label("Recent:");
            let mut chosen = None;
            for r in &app.recent {
                let name = r.base.file_name().map_or_else(
                    || r.base.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                );
                if ui
                    .button(format!("{name} + {}", r.models.len()))
                    .on_hover_text(r.base.display().to_string())
                    .clicked()
                {
                    chosen = Some(r.clone());
                }
            }
            if let Some(r) = chosen {
                app.open(r.base, r.models);
            }
        });
    }
    ui.separator();
    let Some(family) = &app.family else {
        ui.label("No family open yet.");
        return;
    };
    if family.builtin == Some(BuiltinDemo::Digits) {
        ui.label(
            "The built-in demo family: a tiny ViT base and experts for upright, rotated, \
             mirrored and inverted handwritten digits (UCI, CC BY 4.0).",
        );
    } else if family.builtin == Some(BuiltinDemo::Language) {
        ui.add(egui::Label::new(format!("The built-in language-model demo: {LM_DEMO}.")).wrap());
    } else if family.is_demo {
        ui.label("Built on the demo family's base: previews score merges on the demo's digits.");
    }
    egui::Grid::new("members")
        .striped(true)
        .num_columns(8)
        .show(ui, |ui| {
            for h in [
                "",
                "name",
                "architecture",
                "layers",
                "parameters",
                "dtype",
                "shards",
                "size",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for m in &family.members {
                ui.label(m.role);
                ui.label(&m.label)
                    .on_hover_text(m.path.display().to_string());
                ui.label(&m.architecture);
                ui.label(m.layers.to_string());
                ui.label(human_count(m.parameters))
                    .on_hover_text(format!("{} parameters", m.parameters));
                ui.label(&m.dtypes);
                ui.label(m.shards.to_string());
                ui.label(human_bytes(m.bytes))
                    .on_hover_text(format!("{} bytes of tensor data", m.bytes));
                ui.end_row();
            }
        });
    ui.add_space(6.0);
    if family.issues.is_empty() {
        ui.label("Alignment: every model has every tensor of the base, with the same shapes.");
    } else {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            format!("Alignment: {} issue(s)", family.issues.len()),
        );
        for issue in &family.issues {
            ui.label(format!("- {issue}"));
        }
    }
    ui.add_space(6.0);
    tensors_ui(ui, &family.tensor_names);
}

/// The base's tensors in file order: the name (shortened in the middle, never losing the
/// layer index; whole on hover), its block and module. Only the rows in view are laid out, so
/// a model of thousands of tensors costs no more per frame than a small one.
fn tensors_ui(ui: &mut egui::Ui, names: &[String]) {
    egui::CollapsingHeader::new(format!("Tensors of the base ({})", names.len()))
        .id_salt("base-tensors")
        .show(ui, |ui| {
            // Names are monospace, the other columns body text: a row is as tall as the taller.
            let row_height = ui
                .text_style_height(&egui::TextStyle::Monospace)
                .max(ui.text_style_height(&egui::TextStyle::Body));
            egui::ScrollArea::vertical()
                .id_salt("base-tensors-rows")
                .max_height(320.0)
                .show_rows(ui, row_height, names.len(), |ui, rows| {
                    egui::Grid::new("base-tensors-grid")
                        .striped(true)
                        .num_columns(3)
                        .show(ui, |ui| {
                            for name in names.get(rows).unwrap_or_default() {
                                let key = LayerKey::parse(name);
                                ui.label(
                                    egui::RichText::new(elide_middle(name, NAME_CHARS)).monospace(),
                                )
                                .on_hover_text(name);
                                ui.label(
                                    key.block.map_or_else(String::new, |b| format!("layer {b}")),
                                );
                                ui.label(key.module.label());
                                ui.end_row();
                            }
                        });
                });
        });
}
