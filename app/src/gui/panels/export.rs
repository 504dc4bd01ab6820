//! Export: write the merge to a folder, with progress and cancel in the status bar.
//!
//! The typed path is the way to choose the folder (Browse... only fills it in, from a dialog on
//! its own thread, so a missing or hanging file-dialog service never stalls the window). The
//! output dtype starts as the inputs' dtype; a folder that holds files is replaced only when the
//! user says so, here or in the question a Write into it asks. The panel lists what will be
//! written: the weights, the copied config and tokenizer files, the recipe as
//! `mergekit_config.yml` and a `README.md` model card carrying the preview's scores.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use mergescope_core::eval::Scores;
use mergescope_core::eval::compare::Comparison;
use mergescope_core::export::{
    CARD_FILE, CardScores, MERGEKIT_CONFIG_FILE, OutputState, output_state, sidecar,
};

use crate::gui::app::{Notice, Workbench};
use crate::gui::state::{OpenFamily, model_name};
use crate::gui::text::human_bytes;
use crate::gui::worker::Command;

/// The output dtypes the recipe can ask for.
const OUT_DTYPES: [&str; 3] = ["bfloat16", "float16", "float32"];

/// Families up to this size get a preview from this panel too, so their card has scores even
/// when the Merge panel was never opened; larger ones only when that panel asked for it (a
/// full preview reads every weight).
const PREVIEW_HERE_BYTES: u64 = 2 << 30;

pub fn show(app: &mut Workbench, ui: &mut egui::Ui) {
    ui.heading("Export");
    if app.family.is_none() || app.settings.is_none() {
        ui.label("Open a family first.");
        return;
    }
    ui.horizontal(|ui| {
        let label = ui.label("Output folder");
        ui.add(
            egui::TextEdit::singleline(&mut app.export_dir)
                .desired_width(420.0)
                .hint_text("type a folder, e.g. /data/merged"),
        )
        .labelled_by(label.id);
        match folder_dialog_ui(ui, "export-folder", "Browse...") {
            Some(Ok(folder)) => app.export_dir = folder.display().to_string(),
            Some(Err(why)) => {
                app.notice = Some(Notice {
                    error: true,
                    text: why,
                });
            }
            None => {}
        }
    });
    ui.checkbox(
        &mut app.export_force,
        "replace the folder if it is not empty",
    )
    .on_hover_text(
        "Off: writing into a folder that holds files asks first. Either way the old contents \
         stay until the new model is completely written, then are swapped out in one step.",
    );
    let inputs_dtype = app.family.as_ref().map(inputs_dtype);
    if let Some(settings) = &mut app.settings {
        ui.horizontal(|ui| {
            egui::ComboBox::from_label("output dtype")
                .selected_text(&settings.out_dtype)
                .show_ui(ui, |ui| {
                    for dtype in OUT_DTYPES {
                        ui.selectable_value(&mut settings.out_dtype, dtype.to_owned(), dtype);
                    }
                })
                .response
                .on_hover_text(crate::gui::help::param(
                    &settings.method,
                    "out_dtype",
                    None,
                    None,
                ));
            if let Some(dtype) = inputs_dtype {
                ui.label(if settings.out_dtype == dtype {
                    "(the inputs' dtype)".to_owned()
                } else {
                    format!("(the inputs are {dtype})")
                });
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
    let yaml = settings.to_yaml(family);
    let small = family.members.iter().map(|m| m.bytes).sum::<u64>() <= PREVIEW_HERE_BYTES;
    if small {
        super::preview::request(app, ui, &yaml);
    }
    ui.separator();
    contents_ui(app, ui, &yaml);
    ui.add_space(4.0);
    let busy = app.busy.is_some();
    if ui
        .add_enabled(!busy, egui::Button::new("Write the merged model"))
        .clicked()
    {
        write_clicked(app, ui.ctx());
    }
    confirm_replace_ui(app, ui);
}

/// The dtype the inputs are stored in, as the recipe names it: the base's (the first model's
/// in a family without one).
pub fn inputs_dtype(family: &OpenFamily) -> &'static str {
    family
        .members
        .first()
        .map_or("float32", |base| recipe_dtype(&base.dtypes))
}

/// The float type of a model whose tensors are stored as `dtypes` (`"BF16, F32"`, as the
/// Models panel lists them): the narrowest float type it holds, as models that keep their
/// norms in float32 are still bf16 models; float32 when it holds no half type.
fn recipe_dtype(dtypes: &str) -> &'static str {
    let has = |name: &str| dtypes.split(", ").any(|d| d == name);
    if has("BF16") {
        "bfloat16"
    } else if has("F16") {
        "float16"
    } else {
        "float32"
    }
}

/// Says what the folder will hold: the weights (estimated size), the copied files, the
/// recipe and the card (with which scores).
fn contents_ui(app: &Workbench, ui: &mut egui::Ui, yaml: &str) {
    let (Some(family), Some(settings)) = (&app.family, &app.settings) else {
        return;
    };
    let bytes_per_value = match settings.out_dtype.as_str() {
        "float32" => 4,
        _ => 2,
    };
    let parameters = family.members.first().map_or(0, |m| m.parameters);
    let bytes = parameters * bytes_per_value;
    let shard_size = mergescope_core::export::parse_shard_size(app.shard_size.trim()).ok();
    let shards = shard_size.map_or(1, |s| bytes.div_ceil(s.max(1)).max(1));
    ui.label(format!(
        "Into {}, a {} merge of {} fine-tune(s):",
        if app.export_dir.trim().is_empty() {
            "the folder above"
        } else {
            app.export_dir.trim()
        },
        settings.method,
        family.models.len()
    ));
    let weights = if shards > 1 {
        format!(
            "about {shards} shards (model-0000N-of-…) and model.safetensors.index.json: about {} \
             of {} weights",
            human_bytes(bytes),
            settings.out_dtype
        )
    } else {
        format!(
            "model.safetensors: about {} of {} weights",
            human_bytes(bytes),
            settings.out_dtype
        )
    };
    let copied = copied_files(ui, family, settings.tokenizer_source.as_deref());
    let scores = card_scores(app, yaml);
    let card = match &scores {
        Some(s) => format!(
            "{CARD_FILE}: a model card (base, models, method, parameters) with the preview's \
             scores on {}",
            s.objective
        ),
        None => format!(
            "{CARD_FILE}: a model card (base, models, method, parameters); no scores until a \
             preview of these settings has run"
        ),
    };
    let mut lines = vec![weights];
    if !copied.is_empty() {
        lines.push(format!("{}: copied", copied.join(", ")));
    }
    lines.push(format!(
        "{MERGEKIT_CONFIG_FILE}: the recipe, which mergekit and `mergescope merge` run"
    ));
    lines.push(card);
    for line in lines {
        ui.label(format!("  • {line}"));
    }
    ui.label(
        "Written to a hidden folder beside it and renamed at the end, never over an input; the \
         recipe is also in the weights' metadata.",
    );
}

/// The config and tokenizer files the merge will copy (from the base, or the first model for
/// a merge without one; the tokenizer from its source), remembered per folder so the disk is
/// not asked each frame.
fn copied_files(ui: &egui::Ui, family: &OpenFamily, tokenizer: Option<&str>) -> Vec<String> {
    let config_from = family.base.clone();
    let tokenizer_from = match tokenizer {
        None | Some("base") => family.base.clone(),
        Some(path) => PathBuf::from(path),
    };
    let id = egui::Id::unique(("export-copied", &config_from, &tokenizer_from));
    if let Some(names) = ui.data(|d| d.get_temp::<Vec<String>>(id)) {
        return names;
    }
    let folder = |p: &Path| {
        if p.is_dir() {
            p.to_path_buf()
        } else {
            p.parent().map_or_else(PathBuf::new, Path::to_path_buf)
        }
    };
    let mut names: Vec<String> = sidecar::present(&folder(&config_from), sidecar::CONFIG_FILES)
        .into_iter()
        .map(str::to_owned)
        .collect();
    names.extend(
        sidecar::present(&folder(&tokenizer_from), sidecar::TOKENIZER_FILES)
            .into_iter()
            .map(str::to_owned),
    );
    ui.data_mut(|d| d.insert_temp(id, names.clone()));
    names
}

/// The scores the preview of `yaml` showed, as the model card gives them: the merge's, beside
/// the base's and each input model's where those are computed (the demo's accuracies, else
/// what the merge keeps of each fine-tune). `None` until that preview has arrived.
pub fn card_scores(app: &Workbench, yaml: &str) -> Option<CardScores> {
    let preview = app.preview.as_ref().filter(|p| p.yaml == yaml)?;
    let (objective, scores) = preview.objective_scores();
    // What the preview's comparison lists: one number per task, and their mean.
    let shown: Scores = scores
        .into_iter()
        .filter(|(m, _)| {
            m.ends_with("/accuracy") || m.ends_with("/perplexity") || m.starts_with("retention/")
        })
        .collect();
    if shown.is_empty() {
        return None;
    }
    // Models by the names the panels give them, not their full paths.
    let short = |scores: Scores| -> Scores {
        scores
            .into_iter()
            .map(|(metric, v)| match metric.strip_prefix("retention/") {
                Some(path) => (format!("retention/{}", model_name(Path::new(path))), v),
                None => (metric, v),
            })
            .collect()
    };
    let shown = short(shown);
    let mut inputs = preview
        .inputs
        .as_deref()
        .map(|inputs| inputs.for_grade(preview.full).clone())
        .unwrap_or_default();
    inputs.base = inputs.base.map(short);
    for (label, scores) in &mut inputs.models {
        *label = model_name(Path::new(label));
        *scores = short(std::mem::take(scores));
    }
    let grade = match (preview.scores.is_empty(), preview.full) {
        (false, true) if preview.is_perplexity() => " (all text)",
        (false, true) => " (all test digits)",
        (false, false) => " (quick estimate)",
        (true, _) => "",
    };
    Some(CardScores {
        objective: format!("{objective}{grade}"),
        comparison: Comparison::new(&shown, &inputs),
    })
}

/// The folder a Write is waiting on the user's answer for.
#[derive(Clone, Debug)]
struct AskReplace {
    out: PathBuf,
    first: Vec<String>,
    count: usize,
}

fn ask_id() -> egui::Id {
    egui::Id::unique("export-ask-replace")
}

/// Write: judged as the export will judge it first, so an output over an input is refused
/// with the export's own message, and a folder with files asks before it is replaced (the
/// check reads the folder's entries' names, once per click).
fn write_clicked(app: &mut Workbench, ctx: &egui::Context) {
    let out = PathBuf::from(app.export_dir.trim());
    if out.as_os_str().is_empty() {
        app.notice = Some(Notice {
            error: true,
            text: "type the folder to write the merged model into".to_owned(),
        });
        return;
    }
    let Some(family) = &app.family else {
        return;
    };
    let inputs: Vec<PathBuf> = std::iter::once(family.base.clone())
        .chain(family.models.iter().cloned())
        .collect();
    match output_state(&out, &inputs) {
        Err(e) => {
            app.notice = Some(Notice {
                error: true,
                text: mergescope_core::one_line(&e.to_string()),
            });
        }
        Ok(OutputState::NotEmpty { first, count }) if !app.export_force => {
            ctx.data_mut(|d| d.insert_temp(ask_id(), AskReplace { out, first, count }));
        }
        Ok(_) => write(app, out, app.export_force),
    }
}

/// Asks whether to replace a folder that holds files: Replace writes (the old contents go
/// once the new model is complete), Cancel (or Escape, or a click beside) leaves it alone.
fn confirm_replace_ui(app: &mut Workbench, ui: &egui::Ui) {
    let Some(ask) = ui.data(|d| d.get_temp::<AskReplace>(ask_id())) else {
        return;
    };
    let mut answer = None;
    let modal = egui::Modal::new(egui::Id::unique("export-replace-modal")).show(ui.ctx(), |ui| {
        ui.set_max_width(460.0);
        ui.heading("Replace the folder?");
        let mut listed = ask.first.join(", ");
        if ask.count > ask.first.len() {
            listed.push_str(&format!(" and {} more", ask.count - ask.first.len()));
        }
        ui.label(format!(
            "{} is not empty ({listed}). Replace its contents with the merged model? They \
             stay until the new model is completely written.",
            ask.out.display()
        ));
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            if ui.button("Replace").clicked() {
                answer = Some(true);
            }
            if ui.button("Cancel").clicked() {
                answer = Some(false);
            }
        });
    });
    if answer.is_none() && modal.should_close() {
        answer = Some(false);
    }
    let Some(replace) = answer else {
        return;
    };
    ui.data_mut(|d| d.remove::<AskReplace>(ask_id()));
    if replace {
        write(app, ask.out, true);
    } else {
        app.notice = Some(Notice {
            error: false,
            text: format!("not written; {} is unchanged", ask.out.display()),
        });
    }
}

/// Sends the export to the worker.
fn write(app: &mut Workbench, out: PathBuf, force: bool) {
    let (Some(family), Some(settings)) = (&app.family, &app.settings) else {
        return;
    };
    match mergescope_core::export::parse_shard_size(app.shard_size.trim()) {
        Ok(shard_size) => {
            let yaml = settings.to_yaml(family);
            let command = Command::Export {
                card_scores: card_scores(app, &yaml),
                yaml,
                out,
                force,
                shard_size,
            };
            app.start_job("exporting");
            app.worker.send(command);
        }
        Err(e) => {
            app.notice = Some(Notice {
                error: true,
                text: format!("largest shard: {e}"),
            });
        }
    }
}

/// What a folder dialog answered: a folder, or why there is none to show.
type DialogAnswer = Result<PathBuf, String>;

/// A folder dialog's answer once it closes (`None` inside while it is open or was cancelled).
#[derive(Clone, Default)]
struct PendingDialog(Arc<Mutex<Option<Option<DialogAnswer>>>>);

/// A button that opens the system's folder dialog on a thread of its own and returns the
/// folder chosen, once, in the frame after the dialog closes. While it is open the button
/// waits; a dialog that cannot open (no portal, no display) comes back as an error that tells
/// the user to type the path, and the typed field keeps working throughout.
pub fn folder_dialog_ui(ui: &mut egui::Ui, id_salt: &str, label: &str) -> Option<DialogAnswer> {
    let id = egui::Id::unique(("folder-dialog", id_salt));
    if let Some(pending) = ui.data(|d| d.get_temp::<PendingDialog>(id)) {
        let answer = pending
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match answer {
            None => {
                ui.add_enabled(false, egui::Button::new(label))
                    .on_disabled_hover_text("The folder dialog is open");
                return None;
            }
            Some(answer) => {
                ui.data_mut(|d| d.remove::<PendingDialog>(id));
                return answer;
            }
        }
    }
    if !ui
        .button(label)
        .on_hover_text("Choose the folder in the system's dialog; typing it works as well")
        .clicked()
    {
        return None;
    }
    let pending = PendingDialog::default();
    let slot = pending.0.clone();
    let ctx = ui.ctx().clone();
    let pick = move || {
        let picked = std::panic::catch_unwind(|| rfd::FileDialog::new().pick_folder());
        let answer = match picked {
            Ok(Some(folder)) => Some(Ok(folder)),
            // Cancelled, or a dialog service that failed quietly: the field is unchanged.
            Ok(None) => None,
            Err(_) => Some(Err(
                "the folder dialog is not available here; type the folder's path instead"
                    .to_owned(),
            )),
        };
        *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer);
        ctx.request_repaint();
    };
    // macOS opens dialogs on the main thread only (where they do not fail); elsewhere the
    // dialog waits on a desktop service that may never answer, so it gets a thread.
    if cfg!(target_os = "macos") {
        pick();
    } else if let Err(e) = std::thread::Builder::new()
        .name("mergescope-folder-dialog".to_owned())
        .spawn(pick)
    {
        return Some(Err(format!(
            "cannot open the folder dialog ({e}); type the folder's path instead"
        )));
    }
    ui.data_mut(|d| d.insert_temp(id, pending));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inputs_dtype_is_the_narrowest_float_type_stored() {
        assert_eq!(recipe_dtype("BF16"), "bfloat16");
        assert_eq!(recipe_dtype("BF16, F32"), "bfloat16");
        assert_eq!(recipe_dtype("F16, F32, I64"), "float16");
        assert_eq!(recipe_dtype("F32"), "float32");
        assert_eq!(recipe_dtype("F32, I64"), "float32");
        assert_eq!(recipe_dtype(""), "float32");
    }
}
