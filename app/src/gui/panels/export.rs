//! Export: write the merge to a folder, with progress and cancel in the status bar.

use std::path::PathBuf;

use crate::gui::app::Workbench;
use crate::gui::worker::Command;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Export");
    if app.family.is_none() || app.settings.is_none() {
        ui.label("Open a family first.");
        return;
    }
    ui.horizontal(|ui| {
        let label = ui.label("Output folder");
        ui.add(egui::TextEdit::singleline(&mut app.export_dir).desired_width(420.0))
            .labelled_by(label.id);
        if ui.button("Browse...").clicked()
            && let Some(folder) = rfd::FileDialog::new().pick_folder()
        {
            app.export_dir = folder.display().to_string();
        }
    });
    ui.checkbox(
        &mut app.export_force,
        "replace the folder if it is not empty",
    );
    if let Some(settings) = &mut app.settings {
        egui::ComboBox::from_label("output dtype")
            .selected_text(&settings.out_dtype)
            .show_ui(ui, |ui| {
                for dtype in ["float32", "bfloat16", "float16"] {
                    ui.selectable_value(&mut settings.out_dtype, dtype.to_owned(), dtype);
                }
            });
    }
    ui.horizontal(|ui| {
        let label = ui.label("Largest shard");
        ui.add(egui::TextEdit::singleline(&mut app.shard_size).desired_width(100.0))
            .labelled_by(label.id);
        ui.label("(e.g. 5GB, 500MB)");
    });
    let (Some(family), Some(settings)) = (&app.family, &app.settings) else {
        return;
    };
    ui.label(format!(
        "{} of {} fine-tune(s) as {} safetensors, config copied, the recipe in the metadata; \
         written to a hidden folder and renamed at the end, never over an input.",
        settings.method,
        family.models.len(),
        settings.out_dtype
    ));
    let busy = app.busy.is_some();
    if ui
        .add_enabled(!busy, egui::Button::new("Write the merged model"))
        .clicked()
    {
        match mergescope_core::export::parse_shard_size(app.shard_size.trim()) {
            Ok(shard_size) => {
                let command = Command::Export {
                    yaml: settings.to_yaml(family),
                    out: PathBuf::from(app.export_dir.trim()),
                    force: app.export_force,
                    shard_size,
                };
                app.start_job("exporting");
                app.worker.send(command);
            }
            Err(e) => {
                app.notice = Some(crate::gui::app::Notice {
                    error: true,
                    text: format!("largest shard: {e}"),
                });
            }
        }
    }
}
