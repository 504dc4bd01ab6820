//! The worker thread that owns the engine: the UI sends [`Command`]s and reads [`Event`]s each
//! frame, so a frame never waits on disk or arithmetic. One job (open, analyse, export) runs at
//! a time; previews run beside them on their own thread ([`super::previewer`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use mergescope_core::analysis::{AnalysisSettings, Report, Survival, analyze_with_partials};
use mergescope_core::backend::{Backend, Cpu};
use mergescope_core::eval::compare::InputScores;
use mergescope_core::eval::lm::demo::LmDemoFamily;
use mergescope_core::eval::{DemoFamily, Scores};
use mergescope_core::export::ExportOptions;
use mergescope_core::family::{Family, Member};
use mergescope_core::layout::Layout;
use mergescope_core::merge::engine::execute;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::merge::recipe::Recipe;
use mergescope_core::{CancelToken, Checkpoint, Job};

use super::pareto::{ParetoObjective, ParetoRequest, ParetoUpdate};
use super::previewer::{PreviewRequest, Previewer};
use super::state::{BuiltinDemo, MemberInfo, OpenFamily};
use super::texts::LoadedTexts;

/// What a family's previews are compared with.
#[derive(Debug)]
pub struct FamilyInputs {
    /// Scored as the full previews are.
    pub full: InputScores,
    /// Scored as the quick previews are, where that differs (the demo's subsample).
    pub quick: Option<InputScores>,
    /// The texts they are perplexities on (`None`: not perplexities).
    pub texts: Option<PathBuf>,
}

impl FamilyInputs {
    /// The scores to compare a preview of grade `full` with.
    pub fn for_grade(&self, full: bool) -> &InputScores {
        match &self.quick {
            Some(quick) if !full => quick,
            _ => &self.full,
        }
    }
}

/// What the UI asks for.
#[derive(Debug)]
pub enum Command {
    OpenDemo,
    /// The language-model demo family, extracted to [`lm_demo_root`].
    OpenLmDemo,
    Open {
        base: PathBuf,
        models: Vec<PathBuf>,
    },
    Analyze,
    Export {
        yaml: String,
        out: PathBuf,
        force: bool,
        /// Largest shard in bytes.
        shard_size: u64,
        /// The preview's scores, for the model card.
        card_scores: Option<mergescope_core::export::CardScores>,
    },
    /// The base's and each input model's scores on the previews' objective, once per family:
    /// what every preview is compared with. `yaml` is any recipe over the family.
    ScoreInputs {
        yaml: String,
        file: PathBuf,
        is_demo: bool,
        /// A language model's perplexity on these texts instead.
        texts: Option<LoadedTexts>,
    },
    /// Reads and tokenizes a folder of text domains for the open language-model family.
    LoadTexts {
        dir: PathBuf,
        files: mergescope_core::eval::lm::LmFiles,
    },
    /// A Pareto search over the recipe's per-model weights, then its data-free map.
    Pareto(Box<ParetoRequest>),
    /// The recipe merged and scored at every cell of a grid of its parameters.
    Sweep(Box<super::sweep::SweepRequest>),
    /// Every merge method on the digits demo written to `dir` (the open one), at its
    /// defaults and (with `grid`) its grid's best setting.
    Leaderboard {
        dir: PathBuf,
        settings: mergescope_core::leaderboard::Settings,
    },
    /// AdaMerging on the open digits-demo family: task arithmetic's per-layer weights of
    /// `models` on `base`, learned from the demo's unlabeled test images.
    AdaMerging {
        base: PathBuf,
        models: Vec<PathBuf>,
        settings: mergescope_core::test_time::adamerging::AdaMergingSettings,
    },
    /// A job that fails on purpose: how the tests prove a failing job never takes the
    /// workbench down with it.
    #[doc(hidden)]
    InjectFault(Fault),
}

/// What an injected fault does.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The job panics (a bug in a job): reported, and the worker takes the next job.
    PanicInJob,
    /// The worker thread itself dies (a bug outside any job): the UI notices and restarts it.
    KillWorker,
}

/// What the worker answers.
#[derive(Debug)]
pub enum Event {
    /// The backend is ready; what it is, in words.
    Backend(String),
    Opened(Box<OpenFamily>),
    /// The tensors analysed so far (the analysis goes on).
    AnalyzedSoFar(Box<Report>),
    Analyzed(Box<Report>),
    Previewed {
        /// The recipe it previews.
        yaml: String,
        /// The demo family's accuracies (empty for other families).
        scores: Scores,
        /// How much of each task vector survives, per layer, and how far the merge moves.
        /// `None` for a merge without a base (linear).
        survival: Option<Box<Survival>>,
        full: bool,
        millis: f64,
    },
    /// The base's and each input model's scores on the previews' objective, in both of their
    /// grades (the same for retention); `None`: this family has none (no base, no demo).
    InputsScored(Option<Arc<FamilyInputs>>),
    /// The texts in `dir`, read and tokenized, or why they cannot be scored.
    TextsLoaded {
        dir: PathBuf,
        outcome: Result<Arc<mergescope_core::eval::lm::perplexity::Perplexity>, String>,
    },
    /// How far the running preview is.
    PreviewProgress(f64),
    /// A preview was cancelled or superseded by a newer one.
    PreviewStopped,
    PreviewFailed(String),
    Exported(String),
    Pareto(ParetoUpdate),
    /// A cell of the running sweep, as soon as it is scored.
    SweepCell(Box<mergescope_core::sweep::Cell>),
    /// The sweep scored every cell, in this many milliseconds.
    SweepDone {
        millis: f64,
    },
    /// A row of the running leaderboard, as soon as it is scored.
    LeaderboardRow(Box<mergescope_core::leaderboard::Row>),
    /// The leaderboard, ranked, in this many milliseconds.
    LeaderboardDone {
        board: Box<mergescope_core::leaderboard::Leaderboard>,
        millis: f64,
    },
    /// AdaMerging's learned merge as a recipe over the open family's paths, and the summed
    /// entropy it minimised.
    AdaMerged {
        recipe: String,
        entropy: mergescope_core::test_time::Trace,
        millis: f64,
    },
    Progress {
        stage: String,
        fraction: f64,
    },
    Failed(String),
    Cancelled,
}

/// The UI's handle on the worker.
pub struct Worker {
    /// `None` only while dropping (closing it ends the thread).
    commands: Option<Sender<Queued>>,
    previewer: Option<Previewer>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub events: Receiver<Event>,
    /// The running job's cancel token, if any.
    running: Arc<Mutex<Option<CancelToken>>>,
    /// Bumped by [`Worker::cancel`]: jobs sent before it are not started.
    cancelled: Arc<std::sync::atomic::AtomicU64>,
}

/// Makes the backend, and says what it is, on the worker thread (asking a driver for a device
/// can take a while, and the UI must not wait for it). `Err` is reported and the CPU used.
pub type MakeBackend = Box<dyn FnOnce() -> Result<(Arc<dyn Backend>, String), String> + Send>;

impl Worker {
    /// Starts the worker; `repaint` is called whenever an event is sent (eframe's
    /// `request_repaint`).
    pub fn start(
        make_backend: MakeBackend,
        repaint: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let (commands, inbox) = channel();
        let (outbox, events) = channel();
        let running = Arc::new(Mutex::new(None));
        let cancelled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (shared_running, shared_cancelled) = (Arc::clone(&running), Arc::clone(&cancelled));
        let repaint: Arc<dyn Fn() + Send + Sync> = Arc::new(repaint);
        let (previewer, preview_inbox) = Previewer::new();
        let thread = std::thread::Builder::new()
            .name("mergescope-worker".to_owned())
            .spawn(move || {
                let mut engine = Engine {
                    family: None,
                    backend: Arc::new(Cpu),
                    outbox,
                    repaint,
                    running: shared_running,
                    cancelled: shared_cancelled,
                };
                let described = match make_backend() {
                    Ok((backend, described)) => {
                        engine.backend = backend;
                        described
                    }
                    Err(why) => format!("{} ({why})", engine.backend.describe()),
                };
                engine.send(Event::Backend(described));
                let previews = preview_inbox.spawn(
                    Arc::clone(&engine.backend),
                    engine.outbox.clone(),
                    Arc::clone(&engine.repaint),
                );
                let previews = match previews {
                    Ok(handle) => Some(handle),
                    Err(e) => {
                        engine.send(Event::Failed(format!(
                            "cannot start the preview thread: {e}"
                        )));
                        None
                    }
                };
                engine.serve(&inbox);
                // The device must outlive every thread using it: wait for the previews.
                if let Some(previews) = previews {
                    let _ = previews.join();
                }
            })?;
        Ok(Self {
            commands: Some(commands),
            previewer: Some(previewer),
            thread: Some(thread),
            events,
            running,
            cancelled,
        })
    }

    /// Asks for a preview; a newer one replaces it, queued or running.
    pub fn preview(&self, request: PreviewRequest) {
        if let Some(previewer) = &self.previewer {
            previewer.send(request);
        }
    }

    pub fn send(&self, command: Command) {
        let epoch = self.cancelled.load(std::sync::atomic::Ordering::SeqCst);
        // The worker only stops when the app does.
        if let Some(commands) = &self.commands {
            let _ = commands.send(Queued { command, epoch });
        }
    }

    /// `Some(why)` when the worker thread or the preview thread has stopped although the app
    /// still runs (a bug outside any job): the caller restarts the worker, so the workbench
    /// never waits on a thread that is gone.
    pub fn stopped(&self) -> Option<&'static str> {
        if self
            .thread
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
        {
            Some("the worker thread stopped")
        } else if self.previewer.as_ref().is_some_and(Previewer::stopped) {
            Some("the preview thread stopped")
        } else {
            None
        }
    }

    /// Cancels the running job and every job sent before this call that has not started.
    pub fn cancel(&self) {
        self.cancelled
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(token) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            token.cancel();
        }
    }
}

impl Drop for Worker {
    /// Stops the threads and waits for them, so that no device or file is still in use when
    /// the app (or a test) ends: dropping a GPU device while the process exits can crash it.
    fn drop(&mut self) {
        self.cancel();
        // Dropping the previewer stops the preview thread; closing the commands, this one.
        self.previewer = None;
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A command and the cancel epoch it was sent in.
struct Queued {
    command: Command,
    epoch: u64,
}

struct Engine {
    family: Option<(Family, OpenFamily)>,
    backend: Arc<dyn Backend>,
    outbox: Sender<Event>,
    repaint: Arc<dyn Fn() + Send + Sync>,
    running: Arc<Mutex<Option<CancelToken>>>,
    cancelled: Arc<std::sync::atomic::AtomicU64>,
}

impl Engine {
    fn send(&self, event: Event) {
        let _ = self.outbox.send(event);
        (self.repaint)();
    }

    fn serve(&mut self, inbox: &Receiver<Queued>) {
        while let Ok(queued) = inbox.recv() {
            if let Command::InjectFault(Fault::KillWorker) = queued.command {
                panic!("injected fault: the worker thread dies");
            }
            self.start(queued);
        }
    }

    /// Runs a command unless a cancel came after it was sent.
    fn start(&mut self, queued: Queued) {
        let now = self.cancelled.load(std::sync::atomic::Ordering::SeqCst);
        if queued.epoch < now {
            self.send(Event::Cancelled);
        } else {
            self.run(queued.command, queued.epoch);
        }
    }

    /// A job with progress reported as events and a cancel token the UI can reach.
    fn job(&self, epoch: u64) -> Job {
        let job = Job::default();
        let progress = job.progress.clone();
        let outbox = self.outbox.clone();
        let repaint = Arc::clone(&self.repaint);
        let last = Mutex::new(Instant::now());
        job.progress.set_observer(move || {
            // At most ~30 updates a second.
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed().as_millis() < 33 {
                return;
            }
            *last = Instant::now();
            let snapshot = progress.snapshot();
            let _ = outbox.send(Event::Progress {
                stage: snapshot.stage.clone(),
                fraction: snapshot.fraction(),
            });
            repaint();
        });
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(job.cancel.clone());
        // A cancel between the command's start and this point would have found no token.
        if self.cancelled.load(std::sync::atomic::Ordering::SeqCst) > epoch {
            job.cancel.cancel();
        }
        job
    }

    /// Runs `command` and sends its outcome. A panic inside the job is caught here and
    /// reported like any failure: the worker stays up for the next job.
    fn run(&mut self, command: Command, epoch: u64) {
        let what = command.describe();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_command(command, epoch)
        }))
        .unwrap_or_else(|panic| {
            Err(format!(
                "{what} failed: internal error: {}; this is a bug in mergescope (please report \
                 it); the workbench goes on",
                panic_message(panic.as_ref())
            ))
        });
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = None;
        match result {
            Ok(event) => self.send(event),
            Err(message) if message == CANCELLED => self.send(Event::Cancelled),
            Err(message) => self.send(Event::Failed(message)),
        }
    }

    fn run_command(&mut self, command: Command, epoch: u64) -> Result<Event, String> {
        match command {
            Command::OpenDemo => DemoFamily::extract(&demo_root())
                .map_err(|e| e.to_string())
                .and_then(|family| {
                    let experts: Vec<PathBuf> = mergescope_core::eval::Domain::ALL
                        .iter()
                        .map(|&d| family.expert(d))
                        .collect();
                    self.open(&family.base(), &experts, true, Some(BuiltinDemo::Digits))
                }),
            Command::OpenLmDemo => LmDemoFamily::extract(&lm_demo_root())
                .map_err(|e| e.to_string())
                .and_then(|family| {
                    self.open(
                        &family.base(),
                        &family.experts(),
                        false,
                        Some(BuiltinDemo::Language),
                    )
                }),
            Command::Open { base, models } => {
                // A family built on the demo's base can be scored on the demo's digits.
                let is_demo = DemoFamily::is_base(&base);
                self.open(&base, &models, is_demo, None)
            }
            Command::Analyze => self.analyze(epoch),
            Command::ScoreInputs {
                yaml,
                file,
                texts: Some(texts),
                ..
            } => self.score_perplexities(&yaml, &file, &texts, epoch),
            Command::ScoreInputs {
                yaml,
                file,
                is_demo,
                texts: None,
            } => self.score_inputs(&yaml, &file, is_demo, epoch),
            Command::LoadTexts { dir, files } => {
                let outcome =
                    mergescope_core::eval::lm::perplexity::Perplexity::for_family(&dir, &files)
                        .map(Arc::new)
                        .map_err(|e| mergescope_core::one_line(&e.to_string()));
                Ok(Event::TextsLoaded { dir, outcome })
            }
            Command::Export {
                yaml,
                out,
                force,
                shard_size,
                card_scores,
            } => {
                let mut options = ExportOptions::new(out);
                options.force = force;
                options.shard_size = shard_size;
                options.card_scores = card_scores;
                self.export(&yaml, &options, epoch)
            }
            Command::Pareto(request) => self.pareto(&request, epoch),
            Command::Sweep(request) => self.sweep(&request, epoch),
            Command::Leaderboard { dir, settings } => self.leaderboard(&dir, &settings, epoch),
            Command::AdaMerging {
                base,
                models,
                settings,
            } => self.adamerging(&base, &models, &settings, epoch),
            Command::InjectFault(fault) => panic!("injected fault: {fault:?}"),
        }
    }

    fn open(
        &mut self,
        base: &Path,
        models: &[PathBuf],
        is_demo: bool,
        builtin: Option<BuiltinDemo>,
    ) -> Result<Event, String> {
        // A LoRA adapter folder among the fine-tunes applies to this family's base: it is
        // `BASE+ADAPTER` from here on, in the family and in the recipes made from it.
        let models: &[PathBuf] = &models
            .iter()
            .map(|m| mergescope_core::lora::on_base(base, m))
            .collect::<Vec<_>>();
        let member = |path: &Path| -> Result<Member, String> {
            Ok(Member {
                label: path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                checkpoint: Arc::new(Checkpoint::open(path).map_err(|e| e.to_string())?),
            })
        };
        let family = Family {
            base: Some(member(base)?),
            models: models.iter().map(|p| member(p)).collect::<Result<_, _>>()?,
        };
        let alignment = family.align();
        let info = |role: &'static str, m: &Member, path: &Path| {
            let c = &m.checkpoint;
            let layout = Layout::of_checkpoint(c);
            let mut dtypes: Vec<String> = c
                .tensors()
                .iter()
                .map(|t| mergescope_core::family::dtype_name(t.dtype))
                .collect();
            dtypes.sort();
            dtypes.dedup();
            MemberInfo {
                role,
                label: m.label.clone(),
                path: path.to_path_buf(),
                architecture: match c.adapter() {
                    Some(a) => format!("{} + LoRA r={}", layout.architecture.label(), a.rank()),
                    None => layout.architecture.label().to_owned(),
                },
                layers: layout.num_layers(),
                parameters: c.parameter_count(),
                dtypes: dtypes.join(", "),
                shards: c.shards().len(),
                bytes: c.data_bytes(),
            }
        };
        let base_member = family.base.as_ref().expect("set");
        let base_checkpoint = &*base_member.checkpoint;
        let mut members = vec![info("base", base_member, base)];
        for (m, path) in family.models.iter().zip(models) {
            members.push(info("model", m, path));
        }
        let open = OpenFamily {
            base: base.to_path_buf(),
            models: models.to_vec(),
            members,
            issues: alignment.issues.iter().map(ToString::to_string).collect(),
            is_demo,
            builtin,
            tensor_names: base_checkpoint
                .tensors()
                .iter()
                .map(|t| t.name.clone())
                .collect(),
            layers: Layout::of_checkpoint(base_checkpoint).num_layers(),
            language_model: language_model(base_checkpoint),
        };
        self.family = Some((family, open.clone()));
        Ok(Event::Opened(Box::new(open)))
    }

    /// The inputs' scores: for the demo each model's accuracy on all test digits and on the
    /// quick preview's; otherwise each fine-tune's task vector alone measured like a merge
    /// (a read of every model, once per family, here rather than on the preview thread so no
    /// preview waits behind it).
    fn score_inputs(
        &self,
        yaml: &str,
        file: &Path,
        is_demo: bool,
        epoch: u64,
    ) -> Result<Event, String> {
        use mergescope_core::eval::compare::{demo_inputs, retention_inputs};
        use mergescope_core::eval::{DemoAccuracy, Fidelity};
        let plan = plan(yaml, file)?;
        let job = self.job(epoch);
        let inputs = if is_demo {
            let demo = DemoAccuracy::new().map_err(|e| e.to_string())?;
            let quick = Fidelity::Subsample(super::previewer::QUICK_DIGITS);
            Some(FamilyInputs {
                full: demo_inputs(&plan, &demo, Fidelity::Full).map_err(|e| e.to_string())?,
                quick: Some(demo_inputs(&plan, &demo, quick).map_err(|e| e.to_string())?),
                texts: None,
            })
        } else if plan.family.base.is_some() {
            let full = retention_inputs(&plan, &plan_options()?, self.backend.as_ref(), &job, None)
                .map_err(|e| {
                    if job.check_cancelled().is_err() {
                        CANCELLED.to_owned()
                    } else {
                        e.to_string()
                    }
                })?;
            Some(FamilyInputs {
                full,
                quick: None,
                texts: None,
            })
        } else {
            None
        };
        Ok(Event::InputsScored(inputs.map(Arc::new)))
    }

    /// The base's and each model's perplexity on `texts`, in both grades of the previews:
    /// one model read into memory at a time, scored on the quick and the full text, dropped
    /// before the next.
    fn score_perplexities(
        &self,
        yaml: &str,
        file: &Path,
        texts: &LoadedTexts,
        epoch: u64,
    ) -> Result<Event, String> {
        use mergescope_core::eval::Fidelity;
        use mergescope_core::eval::lm::perplexity::{QUICK_TOKENS, ScoreError};
        let plan = plan(yaml, file)?;
        let job = self.job(epoch);
        let perplexity = &texts.perplexity;
        let members = plan.family.models.len() + usize::from(plan.family.base.is_some());
        job.progress
            .start_stage("perplexity of the base and each model", members as u64);
        let mut quick = InputScores::default();
        let stopped = |e: ScoreError| match e {
            ScoreError::Cancelled => CANCELLED.to_owned(),
            other => other.to_string(),
        };
        let full = mergescope_core::eval::compare::score_inputs(&plan, |checkpoint| {
            job.check_cancelled().map_err(|_| CANCELLED.to_owned())?;
            let model = perplexity
                .model_in(checkpoint.source())
                .map_err(|e| e.to_string())?;
            let scores = perplexity
                .score_until(&model, Fidelity::Full, &job.cancel)
                .map_err(stopped)?;
            let first = perplexity
                .score_until(&model, Fidelity::Subsample(QUICK_TOKENS), &job.cancel)
                .map_err(stopped)?;
            // score_inputs visits the base first, then the models in order.
            if quick.base.is_none() && plan.family.base.is_some() {
                quick.base = Some(first);
            } else {
                let label = plan
                    .family
                    .models
                    .get(quick.models.len())
                    .map_or_else(String::new, |m| m.label.clone());
                quick.models.push((label, first));
            }
            job.progress.add_done(1);
            Ok::<_, String>(scores)
        })?;
        Ok(Event::InputsScored(Some(Arc::new(FamilyInputs {
            full,
            quick: Some(quick),
            texts: Some(texts.dir.clone()),
        }))))
    }

    fn analyze(&self, epoch: u64) -> Result<Event, String> {
        let (family, _) = self.family.as_ref().ok_or("open a family first")?;
        let job = self.job(epoch);
        let mut settings = AnalysisSettings::new(family.models.len());
        settings.spectra = Some(mergescope_core::analysis::SpectraSettings {
            rank: 16,
            ..Default::default()
        });
        let every = std::time::Duration::from_millis(250);
        let report = analyze_with_partials(family, &settings, &job, every, &mut |partial| {
            self.send(Event::AnalyzedSoFar(Box::new(partial)));
        })
        .map_err(|e| match e {
            mergescope_core::analysis::AnalysisError::Cancelled(_) => CANCELLED.to_owned(),
            other => other.to_string(),
        })?;
        Ok(Event::Analyzed(Box::new(report)))
    }

    fn export(&self, yaml: &str, options: &ExportOptions, epoch: u64) -> Result<Event, String> {
        let (_, open) = self.family.as_ref().ok_or("open a family first")?;
        let plan = plan(yaml, &open.recipe_file())?;
        let job = self.job(epoch);
        let summary =
            execute(&plan, options, self.backend.as_ref(), &job).map_err(|e| match e {
                mergescope_core::merge::engine::MergeError::Cancelled(_) => CANCELLED.to_owned(),
                other => mergescope_core::one_line(&other.to_string()),
            })?;
        let non_finite = job.non_finite.snapshot();
        let warning = if non_finite.is_empty() {
            String::new()
        } else {
            format!(
                "; warning: {}",
                mergescope_core::nonfinite::summary(&non_finite)
            )
        };
        // As `mergescope merge` says it: the weights, then the files beside them.
        let beside = if summary.files.is_empty() {
            String::new()
        } else {
            format!(" + {}", summary.files.join(", "))
        };
        Ok(Event::Exported(format!(
            "wrote {}: {} tensors, {}{beside}{warning}",
            summary.out_dir.display(),
            summary.tensors,
            mergescope_core::export::format_size(summary.data_bytes)
        )))
    }
}

impl Engine {
    /// Runs the search, sending each point as it is evaluated, then fits the data-free map.
    fn pareto(&self, request: &ParetoRequest, epoch: u64) -> Result<Event, String> {
        use mergescope_core::pareto::{
            DecisionSpace, MergeEvaluator, ObjectiveKind, ParetoError, PreferenceMap,
            RouterSettings, SearchEvent, SearchSettings, search,
        };
        let one_line = |e: ParetoError| match e {
            ParetoError::Cancelled => CANCELLED.to_owned(),
            other => mergescope_core::one_line(&other.to_string()),
        };
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        let recipe = Recipe::from_yaml(&request.yaml, &request.file).map_err(|e| e.to_string())?;
        let template =
            mergescope_core::pareto::space::with_absolute_paths(&recipe, &request.file, &cwd)
                .map_err(one_line)?;
        let space =
            DecisionSpace::new(template, request.groups, request.range).map_err(one_line)?;
        let objective = match &request.objective {
            ParetoObjective::Demo => ObjectiveKind::Demo {
                accuracy: mergescope_core::eval::DemoAccuracy::new().map_err(|e| e.to_string())?,
                fidelity: if request.quick {
                    mergescope_core::eval::Fidelity::Subsample(super::pareto::QUICK_SAMPLE)
                } else {
                    mergescope_core::eval::Fidelity::Full
                },
            },
            ParetoObjective::Retention => ObjectiveKind::Retention,
            ParetoObjective::Perplexity => ObjectiveKind::Perplexity {
                perplexity: Arc::clone(
                    &request
                        .texts
                        .as_ref()
                        .ok_or("choose the texts in the Merge panel first")?
                        .perplexity,
                ),
                fidelity: if request.quick {
                    mergescope_core::eval::Fidelity::Subsample(
                        mergescope_core::eval::lm::perplexity::QUICK_TOKENS,
                    )
                } else {
                    mergescope_core::eval::Fidelity::Full
                },
            },
            ParetoObjective::Command {
                command,
                maximize,
                minimize,
            } => {
                let directions = mergescope_core::pareto::objective::directions_from_lists(
                    maximize.split(','),
                    minimize.split(','),
                )
                .map_err(one_line)?;
                ObjectiveKind::Command {
                    command: mergescope_core::eval::ExternalCommand {
                        command: command.clone(),
                        timeout: std::time::Duration::from_secs(600),
                    },
                    directions,
                }
            }
        };
        let evaluator = MergeEvaluator {
            recipe_file: request.file.clone(),
            cwd,
            backend: Arc::clone(&self.backend),
            objective,
            random_seed: 0,
        };
        let settings = SearchSettings {
            budget: request.budget,
            ..SearchSettings::default()
        };
        let job = self.job(epoch);
        let outcome = search(&space, &evaluator, &settings, &job, &mut |event| {
            let update = match event {
                SearchEvent::Objectives {
                    objectives,
                    normalisation,
                } => ParetoUpdate::Started {
                    objectives: objectives.clone(),
                    normalisation: normalisation.clone(),
                },
                SearchEvent::Point(point) => ParetoUpdate::Point(point.clone()),
                SearchEvent::Round(round) => ParetoUpdate::Round(round.clone()),
            };
            self.send(Event::Pareto(update));
        })
        .map_err(one_line)?;
        job.progress.set_stage("fitting the preference map");
        let map = PreferenceMap::fit_on_surrogates(&outcome, &RouterSettings::default(), &job)
            .map_err(one_line)?;
        Ok(Event::Pareto(ParetoUpdate::Done {
            outcome: Box::new(outcome),
            map: Box::new(map),
        }))
    }
}

impl Engine {
    /// Merges and scores every cell of the sweep, sending each as soon as it is done.
    fn sweep(&self, request: &super::sweep::SweepRequest, epoch: u64) -> Result<Event, String> {
        use mergescope_core::eval::{DemoAccuracy, Fidelity};
        use mergescope_core::sweep::{Sweep, SweepError, SweepObjective, run};
        let one_line = |e: SweepError| match e {
            SweepError::Cancelled => CANCELLED.to_owned(),
            other => mergescope_core::one_line(&other.to_string()),
        };
        let started = Instant::now();
        let sweep =
            Sweep::new(&request.yaml, &request.file, request.axes.clone()).map_err(one_line)?;
        // Full scores: a cell is what the Merge panel's full preview of its settings shows.
        let objective = if let Some(texts) = &request.texts {
            SweepObjective::Perplexity {
                perplexity: Arc::clone(&texts.perplexity),
                fidelity: Fidelity::Full,
            }
        } else if request.is_demo {
            SweepObjective::Demo {
                accuracy: DemoAccuracy::new().map_err(|e| e.to_string())?,
                fidelity: Fidelity::Full,
            }
        } else {
            SweepObjective::Retention
        };
        // Planned as previews are (the same seed), so a cell repeats its preview.
        let options = plan_options()?;
        let job = self.job(epoch);
        run(
            &sweep,
            &objective,
            self.backend.as_ref(),
            &options,
            &job,
            &mut |cell| self.send(Event::SweepCell(Box::new(cell.clone()))),
        )
        .map_err(one_line)?;
        Ok(Event::SweepDone {
            millis: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

impl Engine {
    /// Runs the method leaderboard on the demo family in `dir`, sending each row as it is done.
    fn leaderboard(
        &self,
        dir: &Path,
        settings: &mergescope_core::leaderboard::Settings,
        epoch: u64,
    ) -> Result<Event, String> {
        use mergescope_core::leaderboard::{LeaderboardError, run_leaderboard};
        let started = Instant::now();
        let board = run_leaderboard(
            dir,
            settings,
            self.backend.as_ref(),
            &self.job(epoch),
            &mut |row| self.send(Event::LeaderboardRow(Box::new(row.clone()))),
        )
        .map_err(|e| match e {
            LeaderboardError::Cancelled => CANCELLED.to_owned(),
            other => mergescope_core::one_line(&other.to_string()),
        })?;
        Ok(Event::LeaderboardDone {
            board: Box::new(board),
            millis: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

impl Engine {
    /// Learns AdaMerging's per-layer weights of `models` on `base` (digits-demo models).
    fn adamerging(
        &self,
        base: &Path,
        models: &[PathBuf],
        settings: &mergescope_core::test_time::adamerging::AdaMergingSettings,
        epoch: u64,
    ) -> Result<Event, String> {
        use mergescope_core::test_time::adamerging::adamerge;
        use mergescope_core::test_time::{AdaptError, Unlabeled, open_family};
        let started = Instant::now();
        let failed = |e: AdaptError| match e {
            AdaptError::Cancelled => CANCELLED.to_owned(),
            other => mergescope_core::one_line(&other.to_string()),
        };
        let open = |p: &Path| Checkpoint::open(p).map_err(|e| e.to_string());
        let experts = models
            .iter()
            .map(|m| open(m))
            .collect::<Result<Vec<_>, _>>()?;
        let config = mergescope_core::eval::vit::VitConfig::DEMO;
        let (base_tensors, experts) =
            open_family(&open(base)?, &experts, config).map_err(failed)?;
        let inputs = Unlabeled::demo_test().map_err(|e| e.to_string())?;
        let learned = adamerge(
            &base_tensors,
            &experts,
            config,
            &inputs,
            settings,
            &self.job(epoch),
        )
        .map_err(failed)?;
        let names: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
        Ok(Event::AdaMerged {
            recipe: learned.recipe(&base.display().to_string(), &names),
            entropy: learned.entropy,
            millis: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}

const CANCELLED: &str = "\u{0}cancelled";

impl Command {
    /// The job in a few words, for messages about it.
    fn describe(&self) -> &'static str {
        match self {
            Self::OpenDemo | Self::OpenLmDemo | Self::Open { .. } => "opening the models",
            Self::Analyze => "the analysis",
            Self::ScoreInputs { .. } => "scoring the base and each model",
            Self::LoadTexts { .. } => "reading the texts",
            Self::Export { .. } => "the export",
            Self::Pareto(_) => "the Pareto search",
            Self::Sweep(_) => "the sweep",
            Self::Leaderboard { .. } => "the method leaderboard",
            Self::AdaMerging { .. } => "AdaMerging",
            Self::InjectFault(_) => "an injected fault",
        }
    }
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .map_or_else(|| "a panic".to_owned(), |m| mergescope_core::one_line(&m))
}

/// The plan of the workbench's recipe, as if it lived at `file` (relative model paths resolve
/// from there).
pub fn plan(yaml: &str, file: &Path) -> Result<MergePlan, String> {
    let recipe = Recipe::from_yaml(yaml, file).map_err(|e| e.to_string())?;
    MergePlan::new(recipe, file, &plan_options()?)
        .map_err(|e| mergescope_core::one_line(&e.to_string()))
}

/// How the workbench plans its recipes: a fixed seed, so a preview repeats.
pub fn plan_options() -> Result<PlanOptions, String> {
    Ok(PlanOptions {
        cwd: std::env::current_dir().map_err(|e| e.to_string())?,
        random_seed: Some(0),
        truncate_vocab: false,
    })
}

/// The language model `base` is, when its folder holds a `config.json` and a `tokenizer.json`
/// (read at open: the Merge panel then offers texts to score merges on).
fn language_model(base: &Checkpoint) -> Option<mergescope_core::eval::lm::LmFiles> {
    let folder = base.folder()?;
    mergescope_core::eval::lm::LmFiles::in_folders(folder, folder).ok()
}

/// Where the demo family is unpacked: the user's cache folder, else the temporary folder.
fn demo_root() -> PathBuf {
    mergescope_core::analysis::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("demo-family")
}

/// Where the language-model demo family is unpacked: beside the digits demo.
pub fn lm_demo_root() -> PathBuf {
    mergescope_core::analysis::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("lm-demo-family")
}
