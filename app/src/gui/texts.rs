//! The text domains a language-model family is scored on: the folder the user chose (one
//! `.txt` or `.jsonl` per domain), read and tokenized once on the worker, then shared by the
//! preview, the inputs' scores, the Pareto search and sweeps. The folder is remembered per
//! family between runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mergescope_core::eval::lm::perplexity::Perplexity;

use super::app::{Notice, Workbench};
use super::state::{BuiltinDemo, OpenFamily};
use super::worker::Command;

/// The storage key of the folders chosen per family.
pub const TEXTS_KEY: &str = "mergescope.texts";

/// Texts read and tokenized, and where they came from.
#[derive(Clone, Debug)]
pub struct LoadedTexts {
    pub dir: PathBuf,
    pub perplexity: Arc<Perplexity>,
}

/// The open family's texts.
#[derive(Clone, Debug, Default)]
pub struct Texts {
    /// The folder chosen for the open family.
    pub dir: Option<PathBuf>,
    /// Its domains, once the worker has read them.
    pub loaded: Option<LoadedTexts>,
    /// The worker is reading `dir`.
    pub loading: bool,
    /// Why `dir` cannot be scored (unreadable texts, an architecture not run in process).
    pub error: Option<String>,
    /// The folder chosen for each family, by its base, kept between runs.
    pub remembered: BTreeMap<String, PathBuf>,
}

impl Texts {
    /// Forgets the last family's texts (another family opened); the remembered folders stay.
    pub fn clear(&mut self) {
        *self = Self {
            remembered: std::mem::take(&mut self.remembered),
            ..Self::default()
        };
    }

    /// The perplexity objective, once read.
    pub fn perplexity(&self) -> Option<&Perplexity> {
        self.loaded.as_ref().map(|l| l.perplexity.as_ref())
    }
}

/// The key a family's texts are remembered by.
fn family_key(family: &OpenFamily) -> String {
    family.base.display().to_string()
}

impl Workbench {
    /// Scores the open language-model family's merges on the texts in `dir` (read on the
    /// worker; the outcome arrives as [`super::worker::Event::TextsLoaded`]).
    pub fn set_texts(&mut self, dir: PathBuf) {
        let Some(family) = &self.family else {
            return;
        };
        let Some(files) = family.language_model.clone() else {
            self.notice = Some(Notice {
                error: true,
                text: "texts score language models; this family has no config.json and \
                       tokenizer.json beside its base"
                    .to_owned(),
            });
            return;
        };
        self.texts
            .remembered
            .insert(family_key(family), dir.clone());
        self.texts.dir = Some(dir.clone());
        self.texts.loaded = None;
        self.texts.error = None;
        self.texts.loading = true;
        self.start_job("reading the texts");
        self.worker.send(Command::LoadTexts { dir, files });
    }

    /// Reads the texts chosen for the open family before, else a `texts` folder beside its
    /// base (where the language-model demo family keeps its domains' held-out text), if any;
    /// returns whether it did. The built-in language-model demo always reads its own.
    pub fn reread_texts(&mut self) -> bool {
        let Some(family) = self.family.as_ref().filter(|f| f.language_model.is_some()) else {
            return false;
        };
        let beside = family.base.parent().map(|p| p.join("texts"));
        // The language-model demo opens on its own held-out texts, whatever was chosen before.
        let remembered = match family.builtin {
            Some(BuiltinDemo::Language) => None,
            _ => self.texts.remembered.get(&family_key(family)).cloned(),
        };
        let chosen = remembered.or_else(|| beside.filter(|dir| dir.is_dir()));
        match chosen {
            Some(dir) => {
                self.set_texts(dir);
                true
            }
            None => false,
        }
    }

    /// The worker read the texts in `dir` (or could not).
    pub fn texts_loaded(&mut self, dir: &Path, outcome: Result<Arc<Perplexity>, String>) {
        // Another folder was chosen since.
        if self.texts.dir.as_deref() != Some(dir) {
            return;
        }
        self.busy = None;
        self.texts.loading = false;
        match outcome {
            Ok(perplexity) => {
                let domains = &perplexity.domains;
                self.notice = Some(Notice {
                    error: false,
                    text: format!(
                        "read {} text domain(s), {} tokens, from {}",
                        domains.domains.len(),
                        domains.tokens(),
                        dir.display()
                    ),
                });
                self.texts.loaded = Some(LoadedTexts {
                    dir: dir.to_path_buf(),
                    perplexity,
                });
                if self.pareto.objective == super::pareto::ParetoObjective::Retention {
                    self.pareto.objective = super::pareto::ParetoObjective::Perplexity;
                }
                // Every preview is scored again, and compared with its inputs on these texts.
                self.sent_preview = None;
                self.inputs = None;
                let small = self.family.as_ref().is_some_and(|f| {
                    f.members.iter().map(|m| m.bytes).sum::<u64>()
                        <= super::app::AUTO_ANALYSIS_BYTES
                });
                if small || self.inputs_requested {
                    self.score_inputs(true);
                }
            }
            Err(text) => {
                self.texts.error = Some(text.clone());
                self.notice = Some(Notice {
                    error: true,
                    text: format!("texts: {text}"),
                });
            }
        }
    }
}

/// "Texts: <folder> [Choose…]" for a language-model family, with what was read or why not.
pub fn texts_ui(app: &mut Workbench, ui: &mut egui::Ui) {
    let Some(files) = app.family.as_ref().and_then(|f| f.language_model.clone()) else {
        return;
    };
    let mut chosen = None;
    ui.horizontal(|ui| {
        let label = ui.label("Texts:");
        let shown = app.texts.dir.as_ref().map_or_else(
            || "none chosen (a folder of .txt or .jsonl files, one per domain)".to_owned(),
            |d| d.display().to_string(),
        );
        ui.label(shown).labelled_by(label.id);
        if ui
            .button("Choose…")
            .on_hover_text(
                "A folder of text domains: each .txt (a text) or .jsonl (a JSON object with a \
                 \"text\" a line) is one domain, named after the file. Merges are scored by \
                 their perplexity on each.",
            )
            .clicked()
            && let Some(dir) = rfd::FileDialog::new().pick_folder()
        {
            chosen = Some(dir);
        }
        if app.texts.loading {
            ui.spinner();
            ui.label("reading and tokenizing...");
        }
    });
    if let Some(dir) = chosen {
        app.set_texts(dir);
    }
    let error = ui.visuals().error_fg_color;
    if !files.is_supported() {
        ui.colored_label(
            error,
            format!(
                "{}: {} models are not run in process yet, so merges are previewed data-free \
                 (retention) only",
                files.config_path.display(),
                mergescope_core::eval::lm::architecture(&files.config)
            ),
        );
    }
    if let Some(text) = &app.texts.error {
        ui.add(egui::Label::new(egui::RichText::new(text).color(error)).wrap());
    } else if let Some(loaded) = &app.texts.loaded {
        let domains: Vec<String> = loaded
            .perplexity
            .domains
            .domains
            .iter()
            .map(|(name, tokens)| format!("{name} ({} tokens)", tokens.len()))
            .collect();
        ui.weak(format!("domains: {}", domains.join(", ")));
    }
}
