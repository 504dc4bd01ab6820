//! The Merge panel's generation preview, for a language-model family: a prompt, and what the
//! base, each fine-tune and the current merge write for it, side by side, streamed as they
//! come (the thread and its state: [`crate::gui::generator`]). When the sliders settle, the
//! merge writes again for the same prompt.

use std::path::PathBuf;

use crate::gui::app::{Notice, Workbench};
use crate::gui::generator::{Asked, Column, ColumnState, ColumnText};
use crate::gui::state::model_name;

/// Columns side by side; more models wrap onto another row.
const PER_ROW: usize = 4;
/// The height of a column's text before it scrolls.
const TEXT_HEIGHT: f32 = 120.0;

/// The section, under the preview; nothing for a family that is not a language model.
pub fn show(app: &mut Workbench, ui: &mut egui::Ui, yaml: &str) {
    let Some(family) = &app.family else {
        return;
    };
    // The demo family is a vision model.
    if family.is_demo {
        return;
    }
    let file = family.recipe_file();
    let members: Vec<PathBuf> = std::iter::once(family.base.clone())
        .chain(family.models.iter().cloned())
        .collect();
    let titles = (
        model_name(&family.base),
        family.models.iter().map(|m| model_name(m)).collect(),
    );
    let generation = &mut app.generation;
    generation.poll();
    let ctx = ui.ctx().clone();
    let mut failed = None;
    if generation
        .probed
        .as_ref()
        .is_none_or(|(probed, _, _)| *probed != members)
    {
        failed = generation.probe(&ctx, members, yaml, file.clone()).err();
    } else if generation.is_language_model() == Some(true) {
        // Settled sliders (the moment the Merge panel asks for a full preview): the merge
        // writes again, with the inputs a cut-short run had not finished.
        let settled = !ui.input(|i| i.pointer.any_down());
        if settled && generation.asked.is_some() && generation.merge_yaml.as_deref() != Some(yaml) {
            let mut columns = if generation.running {
                generation.unfinished_inputs()
            } else {
                Vec::new()
            };
            columns.push(Column::Merge);
            failed = generation.send(&ctx, yaml, file.clone(), columns).err();
        }
        ui.separator();
        egui::CollapsingHeader::new(egui::RichText::new("Text generation").strong())
            .id_salt("generate")
            .default_open(true)
            .show(ui, |ui| {
                // Within the panel's margin, and within the window even when a wide figure
                // above widens the panel.
                let right = ui
                    .max_rect()
                    .right()
                    .min(ui.clip_rect().right() - ui.spacing().window_margin.rightf());
                ui.set_max_width(right - ui.max_rect().left());
                if controls_ui(ui, generation) {
                    generation.asked = Some(Asked {
                        prompt: generation.prompt.clone(),
                        options: generation.options(),
                    });
                    generation.set_columns(titles.0, titles.1);
                    let all = generation.columns.iter().map(|c| c.column).collect();
                    failed = generation.send(&ctx, yaml, file, all).err();
                }
                columns_ui(ui, &generation.columns);
            });
    }
    if let Some(text) = failed {
        app.notice = Some(Notice { error: true, text });
    }
}

/// The prompt and the settings; `true` when Generate was pressed (or Enter in the prompt).
fn controls_ui(ui: &mut egui::Ui, generation: &mut crate::gui::generator::Generation) -> bool {
    let mut go = false;
    ui.horizontal(|ui| {
        let label = ui.label("Prompt");
        let edit = ui
            .add(
                egui::TextEdit::singleline(&mut generation.prompt)
                    .hint_text("text for every model to continue")
                    .desired_width(ui.available_width()),
            )
            .labelled_by(label.id);
        go |= edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
    });
    ui.horizontal(|ui| {
        ui.add(
            egui::DragValue::new(&mut generation.max_tokens)
                .range(1..=1024)
                .prefix("max tokens "),
        )
        .on_hover_text("New tokens at most; an end-of-text token or the context may stop sooner");
        ui.radio_value(&mut generation.sampled, false, "greedy")
            .on_hover_text("The most likely token every time: the same text every run");
        ui.radio_value(&mut generation.sampled, true, "sampled")
            .on_hover_text("Tokens drawn at a temperature (top-p 0.95) from the seed's stream");
        if generation.sampled {
            ui.add(
                egui::DragValue::new(&mut generation.temperature)
                    .range(0.05..=5.0)
                    .speed(0.01)
                    .prefix("temperature "),
            );
            ui.add(
                egui::DragValue::new(&mut generation.seed)
                    .range(0..=u64::from(u32::MAX))
                    .prefix("seed "),
            )
            .on_hover_text("The same seed writes the same text");
        }
        ui.separator();
        go |= ui
            .button("Generate")
            .on_hover_text("The base, each fine-tune and this merge continue the prompt, one model in memory at a time")
            .clicked();
        if ui
            .add_enabled(generation.running, egui::Button::new("Stop"))
            .clicked()
        {
            generation.stop();
        }
        if let Some(asked) = &generation.asked
            && asked.prompt != generation.prompt
        {
            ui.weak("(the columns continue the previous prompt)")
                .on_hover_text(format!("\"{}\"", asked.prompt));
        }
    });
    go
}

/// The columns side by side, at most [`PER_ROW`] to a row.
fn columns_ui(ui: &mut egui::Ui, columns: &[ColumnText]) {
    for (r, row) in columns.chunks(PER_ROW).enumerate() {
        ui.columns(row.len(), |uis| {
            for (k, (ui, column)) in uis.iter_mut().zip(row).enumerate() {
                column_ui(ui, column, r * PER_ROW + k);
            }
        });
    }
}

fn column_ui(ui: &mut egui::Ui, column: &ColumnText, index: usize) {
    ui.horizontal(|ui| {
        ui.strong(&column.title);
        match &column.state {
            ColumnState::Waiting => {
                ui.weak("waiting");
            }
            ColumnState::Writing => {
                ui.spinner();
            }
            ColumnState::Finished {
                tokens,
                tokens_per_second,
                stop,
            } => {
                ui.weak(format!("{tokens} tokens")).on_hover_text(format!(
                    "{tokens_per_second:.0} tokens/s; {}",
                    stop.describe()
                ));
            }
            ColumnState::Stopped => {
                ui.weak("stopped");
            }
            ColumnState::Failed(_) => {}
        }
    });
    egui::Frame::group(ui.style()).show(ui, |ui| {
        ui.set_width(ui.available_width());
        egui::ScrollArea::vertical()
            .id_salt(("generated", index))
            .max_height(TEXT_HEIGHT)
            .stick_to_bottom(true)
            .show(ui, |ui| {
                if let ColumnState::Failed(message) = &column.state {
                    ui.add(
                        egui::Label::new(
                            egui::RichText::new(message).color(ui.visuals().error_fg_color),
                        )
                        .wrap(),
                    );
                } else {
                    ui.add(
                        // The continuation starts with the space after the prompt.
                        egui::Label::new(column.text.trim_start())
                            .wrap()
                            .selectable(true),
                    );
                }
            });
    });
}
