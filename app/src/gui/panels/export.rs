//! Export: write the merge to a folder, with progress and cancel in the status bar.

use std::path::PathBuf;

use crate::gui::app::Workbench;
use crate::gui::worker::Command;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Export");
    let (Some(family), Some(settings)) = (&app.family, &app.settings) else {
        ui.label("Open a family first.");
        return;
    };
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
    ui.label(format!(
        "{} of {} fine-tune(s) as f32 safetensors, config copied, the recipe in the metadata; \
         written to a hidden folder and renamed at the end, never over an input.",
        settings.method,
        family.models.len()
    ));
    let busy = app.busy.is_some();
    if ui
        .add_enabled(!busy, egui::Button::new("Write the merged model"))
        .clicked()
    {
        app.busy = Some(("exporting".to_owned(), 0.0));
        app.worker.send(Command::Export {
            yaml: settings.to_yaml(family),
            out: PathBuf::from(app.export_dir.trim()),
            force: app.export_force,
        });
    }
}
