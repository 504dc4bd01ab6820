//! The workbench window: a tab per step of the user's journey, a status bar, and the worker
//! that does the work.

use std::path::PathBuf;

use super::worker::FamilyInputs;
use mergescope_core::analysis::{Report, Survival};
use mergescope_core::eval::Scores;

use super::panels;
use super::state::{BuiltinDemo, MergeSettings, OpenFamily};
use super::worker::{Command, Event, MakeBackend, Worker};

/// Families up to this size are analysed as soon as they open.
pub(crate) const AUTO_ANALYSIS_BYTES: u64 = 2 << 30;

/// The panels, left to right in the user's journey.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Panel {
    #[default]
    Models,
    Sensitivity,
    Interference,
    Merge,
    Sweep,
    Pareto,
    Leaderboard,
    Export,
}

impl Panel {
    pub const ALL: [Self; 8] = [
        Self::Models,
        Self::Sensitivity,
        Self::Interference,
        Self::Merge,
        Self::Sweep,
        Self::Pareto,
        Self::Leaderboard,
        Self::Export,
    ];

    pub const fn title(self) -> &'static str {
        match self {
            Self::Models => "Models",
            Self::Sensitivity => "Sensitivity",
            Self::Interference => "Interference",
            Self::Merge => "Merge",
            Self::Sweep => "Sweep",
            Self::Pareto => "Pareto",
            Self::Leaderboard => "Leaderboard",
            Self::Export => "Export",
        }
    }
}

/// A message for the user: an outcome or an error, shown until the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub error: bool,
    pub text: String,
}

/// A notice as it was shown, for the log of earlier ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedNotice {
    /// `HH:MM:SS` (UTC).
    pub clock: String,
    pub notice: Notice,
}

/// Notices kept in the log.
const NOTICE_LOG: usize = 100;

/// Something that replaces the open family (and so the Merge panel's settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenRequest {
    Demo,
    /// The language-model demo family, with its task-arithmetic recipe and its texts.
    LmDemo,
    Models {
        base: PathBuf,
        models: Vec<PathBuf>,
    },
    Recipe(PathBuf),
}

/// The last preview the worker computed.
#[derive(Clone, Debug)]
pub struct Preview {
    /// The recipe it previews.
    pub yaml: String,
    /// The demo family's accuracies (empty for other families).
    pub scores: Scores,
    /// `None` for a merge without a base (linear).
    pub survival: Option<Survival>,
    /// The base's and each input model's scores on the same objective (both grades).
    pub inputs: Option<std::sync::Arc<FamilyInputs>>,
    pub full: bool,
    pub millis: f64,
}

impl Preview {
    /// Perplexities on the texts of a language-model family (else accuracies or retention).
    pub fn is_perplexity(&self) -> bool {
        self.scores.keys().any(|m| m.ends_with("/perplexity"))
    }

    /// The merge's scores on the objective the comparison and the history use: the demo's
    /// accuracies or a language model's perplexities, else retention per model.
    pub fn objective_scores(&self) -> (String, Scores) {
        match &self.survival {
            _ if self.is_perplexity() => ("perplexity".to_owned(), self.scores.clone()),
            Some(survival) if self.scores.is_empty() => (
                "retention (data-free)".to_owned(),
                mergescope_core::eval::compare::retention_scores(survival),
            ),
            _ => ("demo accuracy".to_owned(), self.scores.clone()),
        }
    }
}

/// Everything the window shows.
pub struct Workbench {
    pub worker: Worker,
    /// The backend previews and exports run on, in words (set once the worker has made it).
    pub backend: String,
    pub panel: Panel,
    pub family: Option<OpenFamily>,
    pub report: Option<Report>,
    pub settings: Option<MergeSettings>,
    pub preview: Option<Preview>,
    /// The recipe of the last preview sent, and whether it was a full one.
    pub sent_preview: Option<(String, bool)>,
    /// How far the running preview is (a large family takes a while).
    pub preview_progress: Option<f64>,
    /// Stage and fraction of the job in progress.
    pub busy: Option<(String, f64)>,
    pub notice: Option<Notice>,
    /// Earlier notices, oldest first (the current one last).
    pub notices: Vec<LoggedNotice>,
    /// The message area above the status bar is open.
    pub show_messages: bool,
    /// Every settled preview of the open family, saved in the user's data folder.
    pub history: super::history::History,
    /// Undo and redo of the Merge panel's settings.
    pub undo: super::history::Undo,
    /// What the Merge panel's "Learn weights (AdaMerging)" runs (the tests shorten it).
    pub adamerging: mergescope_core::test_time::adamerging::AdaMergingSettings,
    /// What the open family's previews are compared with, once scored.
    pub inputs: Option<std::sync::Arc<FamilyInputs>>,
    /// The inputs are being scored as the only job (see [`Workbench::score_inputs`]).
    inputs_alone: bool,
    /// The inputs' scores were asked for (and have not failed).
    pub inputs_requested: bool,
    /// Where histories are kept ([`super::history::data_dir`]; `None`: nowhere).
    pub data_dir: Option<PathBuf>,
    /// The settings as last opened, loaded or saved: anything else is unsaved.
    pub saved_settings: Option<MergeSettings>,
    /// An open that waits for the user to say what happens to unsaved settings.
    pub confirm_open: Option<OpenRequest>,
    /// The recipe text as the user is editing it, while it has the keyboard.
    pub yaml_draft: Option<String>,
    /// Why the edited recipe text was not applied.
    pub yaml_error: Option<String>,
    /// Paths typed into the Models panel.
    pub base_path: String,
    pub model_paths: String,
    pub export_dir: String,
    pub export_force: bool,
    /// Typed shard size, e.g. `5GB`.
    pub shard_size: String,
    /// When the job in progress started (for its ETA).
    pub busy_since: Option<std::time::Instant>,
    pub recipe_path: String,
    pub selected_model: usize,
    pub selected_layer: Option<usize>,
    /// A module kind ("attn q", "mlp down", ...) the Interference matrices cover instead.
    pub selected_module: Option<String>,
    /// The 2-D tensor whose spectra the Interference panel shows.
    pub selected_tensor: Option<String>,
    /// Families opened before, most recent first (kept by eframe between runs).
    pub recent: Vec<RecentFamily>,
    /// The Pareto panel: its search, front and preference.
    pub pareto: super::pareto::ParetoState,
    /// The Sweep panel: its parameters and the cells computed so far.
    pub sweep: super::sweep::SweepState,
    /// The Leaderboard panel: every method's rows on the digits demo.
    pub leaderboard: panels::leaderboard::LeaderboardState,
    /// The Merge panel's generation preview (language-model families): prompt, columns, thread.
    pub generation: super::generator::Generation,
    /// The text domains a language-model family's merges are scored on.
    pub texts: super::texts::Texts,
    /// A recipe to load once the family it names has opened.
    pending_recipe: Option<PendingRecipe>,
    /// For a worker started again after its thread died.
    ctx: egui::Context,
    /// The Merge panel's settings while the family reopens on a restarted worker: kept, not
    /// reset to defaults.
    kept_settings: Option<MergeSettings>,
    /// Set by Ctrl-C in the terminal (or SIGTERM): the window closes cleanly at the next
    /// frame.
    pub interrupted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A recipe waiting for its family to open.
#[derive(Debug)]
struct PendingRecipe {
    text: String,
    file: PathBuf,
    base: PathBuf,
    models: Vec<PathBuf>,
}

/// Do `a` and `b` name the same file or folder?
fn same_path(a: &std::path::Path, b: &std::path::Path) -> bool {
    let canon = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canon(a) == canon(b)
}

/// A family the user opened before.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecentFamily {
    pub base: PathBuf,
    pub models: Vec<PathBuf>,
}

/// The language-model demo's recipe the workbench opens it with.
const LM_DEMO_RECIPE: &str = "task_arithmetic";

/// [`LM_DEMO_RECIPE`] as shipped, its models named by their paths in `family`: the shipped
/// text names them `../base`, `../code`, …, which a recipe reader looks for in the current
/// folder first (as mergekit does), where a `docs` folder may well be another one.
fn lm_demo_recipe(family: &mergescope_core::eval::lm::demo::LmDemoFamily) -> String {
    use mergescope_core::merge::recipe::Recipe;
    let (_, text) = mergescope_core::eval::lm::demo::RECIPES
        .iter()
        .find(|(name, _)| *name == LM_DEMO_RECIPE)
        .expect("the language-model demo ships a task_arithmetic recipe");
    let file = family.recipe(LM_DEMO_RECIPE);
    let Ok(mut recipe) = Recipe::from_yaml(text, &file) else {
        // Reported when it is loaded, as any recipe's error is.
        return (*text).to_owned();
    };
    let folder = file.parent().unwrap_or(&family.root);
    let absolute = |model: &str| {
        let path = std::path::Path::new(model);
        path.strip_prefix("..")
            .map_or_else(|_| folder.join(path), |rest| family.root.join(rest))
            .display()
            .to_string()
    };
    recipe.base_model = recipe.base_model.as_deref().map(absolute);
    for entry in &mut recipe.models {
        entry.model = absolute(&entry.model);
    }
    recipe.to_yaml()
}

/// How many recent families are kept.
const RECENT: usize = 8;
/// The storage key of the recent families.
const RECENT_KEY: &str = "mergescope.recent_families";

/// The storage keys of the panel and theme last shown.
const PANEL_KEY: &str = "mergescope.panel";
const THEME_KEY: &str = "mergescope.theme";

impl Workbench {
    /// What eframe kept from an earlier run: the recent families, the panel and the theme
    /// (the window's size and place eframe restores itself).
    pub fn load_remembered(&mut self, storage: Option<&dyn eframe::Storage>) {
        let Some(storage) = storage else {
            return;
        };
        if let Some(text) = storage.get_string(RECENT_KEY) {
            self.recent = serde_json::from_str(&text).unwrap_or_default();
        }
        if let Some(text) = storage.get_string(super::texts::TEXTS_KEY) {
            self.texts.remembered = serde_json::from_str(&text).unwrap_or_default();
        }
        if let Some(panel) = storage
            .get_string(PANEL_KEY)
            .and_then(|t| Panel::ALL.into_iter().find(|p| p.title() == t))
        {
            self.panel = panel;
        }
        let theme = match storage.get_string(THEME_KEY).as_deref() {
            Some("light") => Some(egui::ThemePreference::Light),
            Some("dark") => Some(egui::ThemePreference::Dark),
            Some("system") => Some(egui::ThemePreference::System),
            _ => None,
        };
        if let Some(theme) = theme {
            self.ctx.set_theme(theme);
        }
    }
}

impl Workbench {
    /// Opens the demo family when `paths` is empty, else `paths[0]` as the base and the rest
    /// as fine-tunes; merges run on the CPU.
    pub fn new(ctx: &egui::Context, paths: &[PathBuf]) -> std::io::Result<Self> {
        let mut app = Self::with_backend(
            ctx,
            Box::new(|| {
                let cpu = mergescope_core::backend::Cpu;
                let described = mergescope_core::backend::Backend::describe(&cpu);
                Ok((std::sync::Arc::new(cpu), described))
            }),
        )?;
        app.open_paths(paths);
        Ok(app)
    }

    /// A workbench with nothing open yet whose merges run on the backend `make_backend` makes
    /// (on the worker thread).
    pub fn with_backend(ctx: &egui::Context, make_backend: MakeBackend) -> std::io::Result<Self> {
        let repaint = ctx.clone();
        let worker = Worker::start(make_backend, move || repaint.request_repaint())?;
        Ok(Self {
            worker,
            backend: "starting...".to_owned(),
            panel: Panel::Models,
            family: None,
            report: None,
            settings: None,
            preview: None,
            sent_preview: None,
            preview_progress: None,
            busy: None,
            notice: None,
            notices: Vec::new(),
            show_messages: false,
            history: super::history::History::default(),
            undo: super::history::Undo::default(),
            adamerging: mergescope_core::test_time::adamerging::AdaMergingSettings::default(),
            inputs: None,
            inputs_alone: false,
            inputs_requested: false,
            data_dir: super::history::data_dir(),
            saved_settings: None,
            confirm_open: None,
            yaml_draft: None,
            yaml_error: None,
            base_path: String::new(),
            model_paths: String::new(),
            export_dir: std::env::temp_dir()
                .join("mergescope-merged")
                .display()
                .to_string(),
            // Replacing a folder that holds files asks first (the Export panel).
            export_force: false,
            shard_size: "5GB".to_owned(),
            busy_since: None,
            recipe_path: std::env::temp_dir()
                .join("mergescope-recipe.yml")
                .display()
                .to_string(),
            selected_model: 0,
            selected_layer: None,
            selected_module: None,
            selected_tensor: None,
            recent: Vec::new(),
            pareto: super::pareto::ParetoState::default(),
            sweep: super::sweep::SweepState::default(),
            leaderboard: panels::leaderboard::LeaderboardState {
                grid: true,
                ..Default::default()
            },
            generation: super::generator::Generation::default(),
            texts: super::texts::Texts::default(),
            pending_recipe: None,
            ctx: ctx.clone(),
            kept_settings: None,
            interrupted: std::sync::Arc::default(),
        })
    }

    /// Starts the worker again when its thread (or the preview thread) is gone, so no job can
    /// wait forever on it: says so, and reopens the family on a fresh worker (on the CPU: the
    /// window's device belonged to the old one).
    fn restart_stopped_worker(&mut self) {
        let Some(why) = self.worker.stopped() else {
            return;
        };
        let repaint = self.ctx.clone();
        let worker = Worker::start(
            Box::new(|| {
                let cpu = mergescope_core::backend::Cpu;
                let described = mergescope_core::backend::Backend::describe(&cpu);
                Ok((std::sync::Arc::new(cpu), described))
            }),
            move || repaint.request_repaint(),
        );
        let text = match worker {
            Ok(worker) => {
                // Dropping the old one joins what is left of its threads.
                self.worker = worker;
                self.busy = None;
                self.preview_progress = None;
                self.sent_preview = None;
                self.pareto.running = false;
                self.kept_settings = self.settings.clone();
                let reopened = match &self.family {
                    Some(family) if family.builtin == Some(BuiltinDemo::Digits) => {
                        self.worker.send(Command::OpenDemo);
                        "; reopening the demo family"
                    }
                    Some(family) if family.builtin == Some(BuiltinDemo::Language) => {
                        self.worker.send(Command::OpenLmDemo);
                        "; reopening the language-model demo family"
                    }
                    Some(family) => {
                        self.worker.send(Command::Open {
                            base: family.base.clone(),
                            models: family.models.clone(),
                        });
                        "; reopening the models"
                    }
                    None => "",
                };
                format!(
                    "{why} unexpectedly (a bug in mergescope, please report it); it was started \
                     again on the CPU{reopened}"
                )
            }
            Err(e) => {
                format!("{why} unexpectedly and cannot be started again: {e}; restart mergescope")
            }
        };
        self.notice = Some(Notice { error: true, text });
    }

    /// Opens the demo family when `paths` is empty, else `paths[0]` as the base and the rest as
    /// fine-tunes.
    pub fn open_paths(&mut self, paths: &[PathBuf]) {
        match paths.split_first() {
            None => self.open_demo(),
            Some((base, models)) => self.open(base.clone(), models.to_vec()),
        }
    }

    /// AdaMerging's learned weights, as its recipe over the open family, into the Merge panel.
    fn adamerged(
        &mut self,
        recipe: &str,
        entropy: &mergescope_core::test_time::Trace,
        millis: f64,
    ) {
        let Some(file) = self.family.as_ref().map(OpenFamily::recipe_file) else {
            return;
        };
        let done = format!(
            "AdaMerging learned each model's weight per layer in {:.1} s: the summed \
             prediction entropy on the unlabeled test images went from {:.3} to {:.3}",
            millis / 1e3,
            entropy.before,
            entropy.after
        );
        self.apply_recipe_text(recipe, &file, done, "AdaMerging");
    }

    /// `text`, a recipe over the open family read as if saved at `file`, as the Merge panel's
    /// settings, with `done` as the notice; says why not, naming `what`, where it cannot be.
    pub fn apply_recipe_text(
        &mut self,
        text: &str,
        file: &std::path::Path,
        done: String,
        what: &str,
    ) -> bool {
        let Some(family) = &self.family else {
            return false;
        };
        match MergeSettings::from_recipe(text, file, family) {
            Ok(settings) => {
                self.settings = Some(settings);
                self.notice = Some(Notice {
                    error: false,
                    text: done,
                });
                true
            }
            Err(text) => {
                self.notice = Some(Notice {
                    error: true,
                    text: format!("cannot load {what}: {text}"),
                });
                false
            }
        }
    }

    /// Marks a job as started: the status bar shows its progress and ETA.
    pub fn start_job(&mut self, stage: &str) {
        self.busy = Some((stage.to_owned(), 0.0));
        self.busy_since = Some(std::time::Instant::now());
    }

    /// Scores the open family's base and models on the previews' objective (a job: a large
    /// family's take a read of every model), for every preview to be compared with. `alone`:
    /// no other job follows it, so the status bar shows it as the job in progress (else the
    /// next one, the analysis, holds the status bar until both are done).
    pub fn score_inputs(&mut self, alone: bool) {
        let (Some(family), Some(settings)) = (&self.family, &self.settings) else {
            return;
        };
        let command = Command::ScoreInputs {
            yaml: settings.to_yaml(family),
            file: family.recipe_file(),
            is_demo: family.is_demo,
            texts: self.texts.loaded.clone(),
        };
        if alone {
            self.start_job("scoring the base and each model");
        }
        self.inputs_alone = alone;
        self.inputs_requested = true;
        self.worker.send(command);
    }

    pub fn analyze(&mut self) {
        self.start_job("analysing");
        self.worker.send(Command::Analyze);
    }

    /// Opens the built-in demo family, after asking if the Merge panel's settings are unsaved.
    pub fn open_demo(&mut self) {
        self.request_open(OpenRequest::Demo);
    }

    /// Opens the built-in language-model demo family with its task-arithmetic recipe, its
    /// held-out texts chosen (so the perplexity preview runs at once), after asking if the
    /// Merge panel's settings are unsaved.
    pub fn open_lm_demo(&mut self) {
        self.request_open(OpenRequest::LmDemo);
    }

    /// Opens `base` and `models`, after asking if the Merge panel's settings are unsaved.
    pub fn open(&mut self, base: PathBuf, models: Vec<PathBuf>) {
        self.request_open(OpenRequest::Models { base, models });
    }

    /// Loads a mergekit recipe into the Merge panel. A recipe over the open family replaces
    /// the settings at once (undo brings them back); one over other models opens them first,
    /// after asking if the panel's settings are unsaved.
    pub fn load_recipe(&mut self, file: PathBuf) {
        self.load_recipe_now(file, false);
    }

    /// Are the Merge panel's settings other than those last opened, loaded or saved?
    pub fn unsaved(&self) -> bool {
        self.settings.is_some() && self.settings != self.saved_settings
    }

    /// Marks the settings as saved (a recipe was written).
    pub fn settings_saved(&mut self) {
        self.saved_settings.clone_from(&self.settings);
    }

    /// Carries out `request` now, or asks first when it would replace unsaved settings.
    pub fn request_open(&mut self, request: OpenRequest) {
        if let OpenRequest::Recipe(file) = request {
            self.load_recipe(file);
        } else if self.unsaved() {
            self.confirm_open = Some(request);
        } else {
            self.open_now(request);
        }
    }

    /// Carries out `request` whatever the settings are.
    pub fn open_now(&mut self, request: OpenRequest) {
        match request {
            OpenRequest::Demo => {
                self.start_job("opening the demo family");
                self.worker.send(Command::OpenDemo);
            }
            OpenRequest::LmDemo => {
                // Its shipped recipe, once open (a reopen keeps the settings instead).
                if self.kept_settings.is_none() {
                    let family = mergescope_core::eval::lm::demo::LmDemoFamily {
                        root: super::worker::lm_demo_root(),
                    };
                    self.pending_recipe = Some(PendingRecipe {
                        text: lm_demo_recipe(&family),
                        file: family.recipe(LM_DEMO_RECIPE),
                        base: family.base(),
                        models: family.experts(),
                    });
                }
                self.start_job("opening the language-model demo family");
                self.worker.send(Command::OpenLmDemo);
            }
            OpenRequest::Models { base, models } => {
                self.start_job("opening");
                self.worker.send(Command::Open { base, models });
            }
            OpenRequest::Recipe(file) => self.load_recipe_now(file, true),
        }
    }

    /// Loads `file`; `confirmed`: the user said unsaved settings may go.
    fn load_recipe_now(&mut self, file: PathBuf, confirmed: bool) {
        match self.try_load_recipe(file, confirmed) {
            Ok(None) => {}
            Ok(Some((settings, file))) => {
                self.settings = Some(settings);
                self.settings_saved();
                self.notice = Some(Notice {
                    error: false,
                    text: format!("loaded {}", file.display()),
                });
            }
            Err(text) => self.notice = Some(Notice { error: true, text }),
        }
    }

    fn try_load_recipe(
        &mut self,
        file: PathBuf,
        confirmed: bool,
    ) -> Result<Option<(MergeSettings, PathBuf)>, String> {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let recipe = super::state::parse_recipe(&text, &file)?;
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        let (base, models) = mergescope_core::merge::plan::recipe_model_paths(&recipe, &file, &cwd)
            .map_err(|e| mergescope_core::one_line(&e.to_string()))?;
        let same_models = |f: &OpenFamily| {
            f.models.len() == models.len()
                && f.models
                    .iter()
                    .all(|m| models.iter().any(|r| same_path(m, r)))
        };
        let open_family = self
            .family
            .as_ref()
            .filter(|f| same_models(f) && base.as_deref().is_none_or(|b| same_path(&f.base, b)));
        if let Some(family) = open_family {
            return MergeSettings::from_recipe(&text, &file, family).map(|s| Some((s, file)));
        }
        // A recipe without a base (linear) cannot say which base to open its models with.
        let base = base.ok_or_else(|| {
            format!(
                "{} names no base_model and its models are not the open ones; open them with a \
                 base in the Models panel, then load it",
                file.display()
            )
        })?;
        if !confirmed && self.unsaved() {
            self.confirm_open = Some(OpenRequest::Recipe(file));
            return Ok(None);
        }
        self.pending_recipe = Some(PendingRecipe {
            text,
            file,
            base: base.clone(),
            models: models.clone(),
        });
        self.open_now(OpenRequest::Models { base, models });
        Ok(None)
    }

    /// Remembers a family the user opened (most recent first, at most [`RECENT`]).
    fn remember(&mut self, family: &OpenFamily) {
        if family.builtin.is_some() {
            return;
        }
        let entry = RecentFamily {
            base: family.base.clone(),
            models: family.models.clone(),
        };
        self.recent.retain(|r| *r != entry);
        self.recent.insert(0, entry);
        self.recent.truncate(RECENT);
    }

    /// Applies what the worker sent since the last frame.
    pub fn poll(&mut self) {
        self.restart_stopped_worker();
        while let Ok(event) = self.worker.events.try_recv() {
            match event {
                Event::Backend(described) => self.backend = described,
                Event::Opened(family) => {
                    self.busy = None;
                    let reopened = self.kept_settings.is_some();
                    self.settings = Some(
                        self.kept_settings
                            .take()
                            .filter(|kept| kept.weights.len() == family.models.len())
                            .unwrap_or_else(|| {
                                // Written as it came in: bf16 inputs give a bf16 model.
                                let mut fresh = MergeSettings::for_models(family.models.len());
                                fresh.out_dtype = panels::export::inputs_dtype(&family).to_owned();
                                fresh
                            }),
                    );
                    self.base_path = family.base.display().to_string();
                    self.model_paths = family
                        .models
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join("\n");
                    let opened = format!(
                        "opened {} fine-tune(s) on {}",
                        family.models.len(),
                        family.base.display()
                    );
                    // After a reopen, what made it necessary stays in view.
                    let text = match self.notice.take().filter(|_| reopened) {
                        Some(before) => format!("{}; re{opened}", before.text),
                        None => opened,
                    };
                    self.notice = Some(Notice { error: false, text });
                    let bytes: u64 = family.members.iter().map(|m| m.bytes).sum();
                    // Only for the family it asked for: another open may have come first.
                    let pending = self.pending_recipe.take_if(|p| {
                        same_path(&p.base, &family.base)
                            && p.models.len() == family.models.len()
                            && p.models
                                .iter()
                                .zip(&family.models)
                                .all(|(a, b)| same_path(a, b))
                    });
                    if let Some(PendingRecipe { text, file, .. }) = pending {
                        self.notice =
                            Some(match MergeSettings::from_recipe(&text, &file, &family) {
                                Ok(settings) => {
                                    self.settings = Some(settings);
                                    Notice {
                                        error: false,
                                        text: format!("opened and loaded {}", file.display()),
                                    }
                                }
                                Err(text) => Notice { error: true, text },
                            });
                    }
                    self.remember(&family);
                    self.saved_settings.clone_from(&self.settings);
                    self.undo.reset(self.settings.as_ref());
                    let members: Vec<PathBuf> = std::iter::once(family.base.clone())
                        .chain(family.models.iter().cloned())
                        .collect();
                    let (history, unreadable) =
                        super::history::History::open(self.data_dir.as_deref(), &members);
                    self.history = history;
                    if let Some(text) = unreadable {
                        self.notice = Some(Notice { error: true, text });
                    }
                    self.pareto.clear();
                    self.pareto.running = false;
                    self.pareto.objective = if family.is_demo {
                        super::pareto::ParetoObjective::Demo
                    } else {
                        super::pareto::ParetoObjective::Retention
                    };
                    self.family = Some(*family);
                    self.report = None;
                    self.preview = None;
                    self.sent_preview = None;
                    self.selected_model = 0;
                    self.selected_layer = None;
                    self.selected_module = None;
                    self.selected_tensor = None;
                    self.inputs = None;
                    self.texts.clear();
                    // Analysis fills the Sensitivity and Interference panels in the background;
                    // for large families it waits to be asked (it reads every byte). The
                    // inputs' scores come first: every preview is compared with them.
                    // Both wait to be asked for on a large family: they read every model.
                    self.inputs_requested = false;
                    // A language model's texts chosen before: its inputs are scored on them
                    // once they are read.
                    let rereading = self.reread_texts();
                    if bytes <= AUTO_ANALYSIS_BYTES {
                        if !rereading {
                            self.score_inputs(false);
                        }
                        self.analyze();
                    }
                }
                Event::AnalyzedSoFar(report) => self.report = Some(*report),
                Event::Analyzed(report) => {
                    self.busy = None;
                    if !report.non_finite.is_empty() {
                        self.notice = Some(Notice {
                            error: true,
                            text: format!(
                                "{}; they count as unchanged in the analysis",
                                mergescope_core::nonfinite::summary(&report.non_finite)
                            ),
                        });
                    }
                    self.report = Some(*report);
                }
                Event::Previewed {
                    yaml,
                    scores,
                    survival,
                    full,
                    millis,
                } => {
                    self.preview_progress = None;
                    // One of another family, or of settings since changed, is not shown.
                    if self
                        .sent_preview
                        .as_ref()
                        .is_some_and(|(sent, _)| *sent == yaml)
                    {
                        let preview = Preview {
                            yaml,
                            scores,
                            survival: survival.map(|s| *s),
                            inputs: self.inputs.clone(),
                            full,
                            millis,
                        };
                        if full {
                            self.record(&preview);
                        }
                        self.preview = Some(preview);
                    }
                }
                Event::InputsScored(inputs) => {
                    if self.inputs_alone {
                        self.busy = None;
                    }
                    // Perplexities on texts since replaced are not what previews show now.
                    let texts = self.texts.loaded.as_ref().map(|t| &t.dir);
                    if inputs.as_ref().is_some_and(|i| i.texts.as_ref() != texts) {
                        continue;
                    }
                    if let Some(preview) = &mut self.preview {
                        preview.inputs.clone_from(&inputs);
                    }
                    self.inputs = inputs;
                }
                Event::TextsLoaded { dir, outcome } => self.texts_loaded(&dir, outcome),
                Event::PreviewProgress(fraction) => self.preview_progress = Some(fraction),
                Event::PreviewStopped => self.preview_progress = None,
                Event::PreviewFailed(text) => {
                    self.preview_progress = None;
                    self.notice = Some(Notice {
                        error: true,
                        text: format!("preview: {text}"),
                    });
                }
                Event::Exported(text) => {
                    self.busy = None;
                    self.notice = Some(Notice { error: false, text });
                }
                Event::Pareto(update) => {
                    if let super::pareto::ParetoUpdate::Done { outcome, .. } = &update {
                        self.busy = None;
                        self.notice = Some(Notice {
                            error: false,
                            text: format!(
                                "Pareto search: {} real evaluations, normalised hypervolume {:.4}",
                                outcome.evaluations(),
                                outcome.hypervolume_normalised()
                            ),
                        });
                    }
                    self.pareto.apply(update);
                }
                Event::SweepCell(cell) => self.sweep.add_cell(*cell),
                Event::SweepDone { millis } => {
                    self.busy = None;
                    self.sweep.finished(millis);
                }
                Event::LeaderboardRow(row) => self.leaderboard.rows.push(*row),
                Event::AdaMerged {
                    recipe,
                    entropy,
                    millis,
                } => {
                    self.busy = None;
                    self.adamerged(&recipe, &entropy, millis);
                }
                Event::LeaderboardDone { board, millis } => {
                    self.busy = None;
                    let state = &mut self.leaderboard;
                    state.running = false;
                    state.rows = board.rows;
                    state.references = board.references;
                    state.not_run = board.not_run;
                    state.seconds = Some(millis / 1e3);
                }
                Event::Progress { stage, fraction } => self.busy = Some((stage, fraction)),
                Event::Failed(text) => {
                    self.texts.loading = false;
                    self.pareto.running = false;
                    self.inputs_requested = self.inputs.is_some();
                    self.sweep.running = false;
                    self.leaderboard.running = false;
                    self.busy = None;
                    self.pending_recipe = None;
                    self.notice = Some(Notice { error: true, text });
                }
                Event::Cancelled => {
                    self.texts.loading = false;
                    self.pareto.running = false;
                    self.inputs_requested = self.inputs.is_some();
                    self.sweep.running = false;
                    self.leaderboard.running = false;
                    self.busy = None;
                    self.pending_recipe = None;
                    self.notice = Some(Notice {
                        error: false,
                        text: "cancelled; nothing was written".to_owned(),
                    });
                }
            }
        }
    }

    /// A full preview becomes a history entry (unless it repeats the newest), saved at once.
    fn record(&mut self, preview: &Preview) {
        let Some(settings) = &self.settings else {
            return;
        };
        let (objective, scores) = preview.objective_scores();
        if self
            .history
            .record(&preview.yaml, &settings.method, &objective, &scores)
            && let Err(text) = self.history.save()
        {
            self.notice = Some(Notice { error: true, text });
        }
    }

    /// Steps the settings back (`redo` false) or forward through the undo history.
    pub fn undo_redo(&mut self, redo: bool) {
        let settings = if redo {
            self.undo.redo()
        } else {
            self.undo.undo()
        };
        if let Some(settings) = settings {
            self.settings = Some(settings);
        }
    }

    /// Ctrl+Z and Ctrl+Shift+Z (or Ctrl+Y), unless a text field has the keyboard (it has its
    /// own undo).
    fn undo_shortcuts(&mut self, ctx: &egui::Context) {
        use egui::{Key, KeyboardShortcut, Modifiers};
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let (redo, undo) = ctx.input_mut(|i| {
            let redo = i.consume_shortcut(&KeyboardShortcut::new(
                Modifiers::COMMAND | Modifiers::SHIFT,
                Key::Z,
            )) || i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::Y));
            let undo = i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::Z));
            (redo, undo)
        });
        if redo || undo {
            self.undo_redo(redo);
        }
    }

    /// Keeps a log of every notice shown (each new one once).
    fn log_notice(&mut self) {
        let Some(notice) = &self.notice else {
            return;
        };
        if self.notices.last().is_some_and(|l| l.notice == *notice) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            % 86_400;
        self.notices.push(LoggedNotice {
            clock: format!("{:02}:{:02}:{:02}", now / 3600, now / 60 % 60, now % 60),
            notice: notice.clone(),
        });
        if self.notices.len() > NOTICE_LOG {
            self.notices.remove(0);
        }
        // An error opens the message area: it is read in full there.
        if notice.error {
            self.show_messages = true;
        }
    }

    /// Asks what happens to unsaved settings before another family replaces them.
    fn confirm_open_dialog(&mut self, ctx: &egui::Context) {
        let Some(request) = self.confirm_open.clone() else {
            return;
        };
        let what = match &request {
            OpenRequest::Demo => "Opening the demo family".to_owned(),
            OpenRequest::LmDemo => "Opening the language-model demo family".to_owned(),
            OpenRequest::Models { base, .. } => format!("Opening {}", base.display()),
            OpenRequest::Recipe(file) => format!("Loading {}", file.display()),
        };
        let modal = egui::Modal::new(egui::Id::unique("confirm-open")).show(ctx, |ui| {
            ui.set_max_width(460.0);
            ui.heading("Unsaved merge settings");
            ui.label(format!(
                "{what} replaces the Merge panel's settings, which are not saved in a recipe.                  Every previewed setting stays in this family's history."
            ));
            ui.add_space(8.0);
            ui.horizontal(|ui| {
                if ui
                    .button("Save the recipe, then open")
                    .on_hover_text(format!("Writes the recipe to {}", self.recipe_path))
                    .clicked()
                {
                    match self.save_recipe() {
                        Ok(()) => {
                            self.confirm_open = None;
                            self.open_now(request.clone());
                        }
                        Err(text) => {
                            self.confirm_open = None;
                            self.notice = Some(Notice { error: true, text });
                        }
                    }
                }
                if ui.button("Open without saving").clicked() {
                    self.confirm_open = None;
                    self.open_now(request.clone());
                }
                if ui.button("Cancel").clicked() {
                    self.confirm_open = None;
                }
            });
        });
        if modal.should_close() {
            self.confirm_open = None;
        }
    }

    /// Writes the Merge panel's recipe to the recipe file.
    pub fn save_recipe(&mut self) -> Result<(), String> {
        let (Some(family), Some(settings)) = (&self.family, &self.settings) else {
            return Err("there are no settings to save: open a family first".to_owned());
        };
        let path = PathBuf::from(self.recipe_path.trim());
        std::fs::write(&path, settings.to_yaml(family))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        self.settings_saved();
        self.notice = Some(Notice {
            error: false,
            text: format!("saved the recipe to {}", path.display()),
        });
        Ok(())
    }

    /// Files and folders dropped on the window: a recipe (`.yml`, `.yaml`) is loaded; else the
    /// first model becomes the base and the rest fine-tunes (one model onto an open family is
    /// added to it), and the family is opened.
    fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if dropped.is_empty() {
            return;
        }
        // A recipe (mergekit YAML) loads into the Merge panel, opening the models it names.
        let is_recipe = |p: &PathBuf| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
        };
        if let Some(recipe) = dropped.iter().find(|p| is_recipe(p)) {
            self.load_recipe(recipe.clone());
            self.panel = Panel::Merge;
            return;
        }
        let (base, models) = dropped.split_first().expect("not empty");
        if models.is_empty() && self.family.is_some() {
            // One file onto an open family: add it as a fine-tune.
            let family = self.family.as_ref().expect("checked");
            let mut all = family.models.clone();
            all.push(base.clone());
            self.open(family.base.clone(), all);
        } else {
            self.open(base.clone(), models.to_vec());
        }
        self.panel = Panel::Models;
    }

    /// The message area: the current notice in full (wrapped, selectable, copyable) and the
    /// log of earlier ones, newest first.
    fn messages(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.strong("Messages");
            if let Some(notice) = &self.notice
                && ui
                    .button("Copy")
                    .on_hover_text("Copy the current message to the clipboard")
                    .clicked()
            {
                ui.ctx().copy_text(notice.text.clone());
            }
            if ui
                .button("Clear")
                .on_hover_text("Forget earlier messages")
                .clicked()
            {
                self.notices.clear();
            }
            if ui.button("Hide").clicked() {
                self.show_messages = false;
            }
        });
        egui::ScrollArea::vertical()
            .auto_shrink([false, true])
            .show(ui, |ui| {
                for (k, logged) in self.notices.iter().rev().enumerate() {
                    let color = if logged.notice.error {
                        ui.visuals().error_fg_color
                    } else {
                        ui.visuals().text_color()
                    };
                    ui.horizontal_top(|ui| {
                        ui.weak(&logged.clock);
                        let text = egui::RichText::new(&logged.notice.text).color(color);
                        // The newest is the current message, in full; all can be selected.
                        let text = if k == 0 { text.strong() } else { text };
                        ui.add(egui::Label::new(text).wrap().selectable(true));
                    });
                }
                if self.notices.is_empty() {
                    ui.weak("No messages yet.");
                }
            });
    }

    fn status_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.label(format!("backend: {}", self.backend));
            ui.separator();
            let errors = self.notices.iter().filter(|n| n.notice.error).count();
            let label = if errors > 0 {
                format!("Messages ({errors} error{})", if errors == 1 { "" } else { "s" })
            } else {
                "Messages".to_owned()
            };
            ui.toggle_value(&mut self.show_messages, label)
                .on_hover_text("Every message in full, selectable and copyable, with the earlier ones");
            ui.separator();
            if let Some((stage, fraction)) = &self.busy {
                let eta = self
                    .busy_since
                    .filter(|_| *fraction > 0.02)
                    .map(|since| {
                        let elapsed = since.elapsed().as_secs_f64();
                        format!(", {:.0} s left", elapsed * (1.0 - fraction) / fraction)
                    })
                    .unwrap_or_default();
                ui.add(
                    egui::ProgressBar::new(*fraction as f32)
                        .desired_width(260.0)
                        .text(format!("{stage} {:.0} %{eta}", fraction * 100.0)),
                );
                if ui.button("Cancel").clicked() {
                    self.worker.cancel();
                }
                ui.separator();
            }
            if let Some(notice) = self.notice.clone() {
                let color = if notice.error {
                    ui.visuals().error_fg_color
                } else {
                    ui.visuals().text_color()
                };
                let reopen = notice.error
                    && notice
                        .text
                        .contains(mergescope_core::checkpoint::CHANGED_ON_DISK);
                // Before the text, so a long notice never pushes the button out of the window.
                if reopen
                    && let Some(family) = &self.family
                    && ui
                        .button("Reopen")
                        .on_hover_text("Open the models again as they are on disk now; the Merge panel's settings are kept")
                        .clicked()
                {
                    let (base, models, builtin) =
                        (family.base.clone(), family.models.clone(), family.builtin);
                    self.kept_settings = self.settings.clone();
                    self.open_now(match builtin {
                        Some(BuiltinDemo::Digits) => OpenRequest::Demo,
                        Some(BuiltinDemo::Language) => OpenRequest::LmDemo,
                        None => OpenRequest::Models { base, models },
                    });
                }
                // One line however long; the whole text on hover.
                ui.add(egui::Label::new(egui::RichText::new(&notice.text).color(color)).truncate())
                    .on_hover_text(&notice.text);
            }
        });
    }
}

impl eframe::App for Workbench {
    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if let Ok(text) = serde_json::to_string(&self.recent) {
            storage.set_string(RECENT_KEY, text);
        }
        if let Ok(text) = serde_json::to_string(&self.texts.remembered) {
            storage.set_string(super::texts::TEXTS_KEY, text);
        }
        storage.set_string(PANEL_KEY, self.panel.title().to_owned());
        let theme = match self.ctx.options(|o| o.theme_preference) {
            egui::ThemePreference::Light => "light",
            egui::ThemePreference::Dark => "dark",
            egui::ThemePreference::System => "system",
        };
        storage.set_string(THEME_KEY, theme.to_owned());
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        if self.interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            // Cancel first so the close does not wait for a long job; dropping the app then
            // joins the worker, whose export removes its staging folder.
            self.worker.cancel();
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        self.poll();
        self.take_dropped_files(&ctx);
        self.undo_shortcuts(&ctx);
        self.log_notice();
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("mergescope");
                ui.separator();
                for panel in Panel::ALL {
                    ui.selectable_value(&mut self.panel, panel, panel.title());
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    // Words, not the emoji of egui's own switch: they render with any font.
                    let mut theme = ui.ctx().options(|o| o.theme_preference);
                    for (preference, label) in [
                        (egui::ThemePreference::Light, "Light"),
                        (egui::ThemePreference::Dark, "Dark"),
                        (egui::ThemePreference::System, "System"),
                    ] {
                        if ui.selectable_value(&mut theme, preference, label).changed() {
                            ui.ctx().set_theme(theme);
                        }
                    }
                });
            });
        });
        egui::Panel::bottom("status").show(ui, |ui| self.status_bar(ui));
        if self.show_messages {
            egui::Panel::bottom("messages")
                .resizable(true)
                .default_size(140.0)
                .show(ui, |ui| self.messages(ui));
        }
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                let panel = self.panel;
                panels::guarded(ui, panel.title(), |ui| match panel {
                    Panel::Models => panels::models::show(self, ui),
                    Panel::Sensitivity => panels::sensitivity::show(self, ui),
                    Panel::Interference => panels::interference::show(self, ui),
                    Panel::Merge => panels::merge::show(self, ui),
                    Panel::Sweep => panels::sweep::show(self, ui),
                    Panel::Pareto => panels::pareto::show(self, ui),
                    Panel::Leaderboard => panels::leaderboard::show(self, ui),
                    Panel::Export => panels::export::show(self, ui),
                });
            });
        });
        self.confirm_open_dialog(&ctx);
        // A change counts for undo once it has settled: one drag is one step.
        if !ctx.input(|i| i.pointer.any_down())
            && let Some(settings) = &self.settings
        {
            self.undo.observe(settings);
        }
    }
}
