//! The generation preview's thread and state: for a language-model family, the text the base,
//! each fine-tune and the current merge write for one prompt, streamed token by token into
//! the Merge panel ([`super::panels::generation`]).
//!
//! The thread runs beside the worker and the preview thread, so writing never waits behind an
//! analysis or a perplexity preview. Only the newest request matters: a newer one (or Stop)
//! cancels the running one between tokens. One model is in memory at a time: each is decoded
//! from its checkpoint (or merged in memory), written with, and dropped before the next.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use mergescope_core::CancelToken;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::ModelTensors;
use mergescope_core::eval::lm::LmFiles;
use mergescope_core::eval::lm::generate::{
    GenerateOptions, Sampling, Stop, TextCodec, files_for_plan, generate, load_model,
};
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::merge::plan::MergePlan;

/// Whose text a column shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Base,
    /// The fine-tune at this index of the family.
    Model(usize),
    Merge,
}

/// What to write.
#[derive(Clone, Debug)]
pub struct GenerationRequest {
    /// The Merge panel's recipe, and where it is taken to live.
    pub yaml: String,
    pub file: PathBuf,
    pub prompt: String,
    pub options: GenerateOptions,
    /// In this order.
    pub columns: Vec<Column>,
}

/// What the thread answers; `run` is the request's number (older ones are stale).
#[derive(Debug)]
pub enum GenerationEvent {
    /// Whether the family of `file` is a language model this thread can run: `Err` says why
    /// not.
    Probed {
        file: PathBuf,
        lm: Result<(), String>,
    },
    Started {
        run: u64,
        column: Column,
    },
    /// Everything `column` has written so far.
    Text {
        run: u64,
        column: Column,
        text: String,
    },
    Finished {
        run: u64,
        column: Column,
        tokens: usize,
        tokens_per_second: f64,
        stop: Stop,
    },
    Failed {
        run: u64,
        column: Column,
        message: String,
    },
    /// Every column of the run is written (or it was cancelled).
    Done {
        run: u64,
    },
}

enum Job {
    Probe { yaml: String, file: PathBuf },
    Generate(u64, GenerationRequest),
}

/// What the UI and the thread share.
#[derive(Default)]
struct Shared {
    running: Mutex<Option<CancelToken>>,
    /// The number of the newest request: any other is stale.
    newest: AtomicU64,
}

impl Shared {
    fn cancel_running(&self) {
        if let Some(token) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            token.cancel();
        }
    }
}

/// The UI's handle on the thread; dropping it stops the thread and waits for it.
pub struct Generator {
    jobs: Option<Sender<Job>>,
    pub events: Receiver<GenerationEvent>,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Generator {
    /// Starts the thread; `repaint` is called after every event.
    pub fn start(repaint: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (jobs, inbox) = std::sync::mpsc::channel();
        let (outbox, events) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::default());
        let thread = Thread {
            outbox,
            repaint: Box::new(repaint),
            shared: Arc::clone(&shared),
            codec: None,
        };
        let thread = std::thread::Builder::new()
            .name("mergescope-generate".to_owned())
            .spawn(move || thread.serve(&inbox))?;
        Ok(Self {
            jobs: Some(jobs),
            events,
            shared,
            thread: Some(thread),
        })
    }

    /// The thread ended (it should not): the caller starts another.
    pub fn stopped(&self) -> bool {
        self.thread
            .as_ref()
            .is_none_or(std::thread::JoinHandle::is_finished)
    }

    /// Asks whether the family of the recipe `yaml` (at `file`) is a language model.
    pub fn probe(&self, yaml: &str, file: PathBuf) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Probe {
                yaml: yaml.to_owned(),
                file,
            });
        }
    }

    /// Sends `request`, cancelling the one running; returns its number.
    pub fn send(&self, request: GenerationRequest) -> u64 {
        // Numbered before the cancel: a run that starts between the two sees it is stale.
        let number = self.shared.newest.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.cancel_running();
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Generate(number, request));
        }
        number
    }

    /// Stops the running request and drops the queued ones.
    pub fn stop(&self) {
        self.shared.newest.fetch_add(1, Ordering::SeqCst);
        self.shared.cancel_running();
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.stop();
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Thread {
    outbox: Sender<GenerationEvent>,
    repaint: Box<dyn Fn() + Send>,
    shared: Arc<Shared>,
    /// The last tokenizer read, by its path (a real one takes a while to parse).
    codec: Option<TextCodec>,
}

/// What a run stopped on: cancelled (`None`), or a message.
type Halt = Option<String>;

impl Thread {
    fn send(&self, event: GenerationEvent) {
        let _ = self.outbox.send(event);
        (self.repaint)();
    }

    fn serve(mut self, inbox: &Receiver<Job>) {
        while let Ok(first) = inbox.recv() {
            // Of what queued up, the newest probe and the newest request matter.
            let (mut probe, mut request) = (None, None);
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Probe { yaml, file } => probe = Some((yaml, file)),
                    Job::Generate(number, r) => request = Some((number, r)),
                }
                next = inbox.try_recv().ok();
            }
            if let Some((yaml, file)) = probe {
                let lm = caught(|| lm_files(&yaml, &file).map(|_| ()));
                self.send(GenerationEvent::Probed { file, lm });
            }
            if let Some((number, request)) = request
                && self.shared.newest.load(Ordering::SeqCst) == number
            {
                self.run(number, &request);
            }
        }
    }

    /// Writes every column of `request` in turn.
    fn run(&mut self, run: u64, request: &GenerationRequest) {
        let cancel = CancelToken::default();
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cancel.clone());
        // A newer request (or Stop) may have come before the token was in place.
        if self.shared.newest.load(Ordering::SeqCst) != run {
            cancel.cancel();
        }
        let planned = caught(|| {
            let plan = super::worker::plan(&request.yaml, &request.file)?;
            let files = files_of(&plan)?;
            Ok((plan, files))
        });
        match planned {
            Ok((plan, files)) => {
                for &column in &request.columns {
                    if cancel.is_cancelled() {
                        break;
                    }
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        self.column(run, column, &plan, &files, request, &cancel)
                    }))
                    .unwrap_or_else(|panic| Err(Some(internal(panic.as_ref()))));
                    if let Err(Some(message)) = outcome {
                        self.send(GenerationEvent::Failed {
                            run,
                            column,
                            message,
                        });
                    }
                }
            }
            Err(message) => {
                for &column in &request.columns {
                    self.send(GenerationEvent::Failed {
                        run,
                        column,
                        message: message.clone(),
                    });
                }
            }
        }
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        self.send(GenerationEvent::Done { run });
    }

    /// Loads `column`'s model (alone), writes with it and drops it.
    fn column(
        &mut self,
        run: u64,
        column: Column,
        plan: &MergePlan,
        files: &LmFiles,
        request: &GenerationRequest,
        cancel: &CancelToken,
    ) -> Result<(), Halt> {
        self.send(GenerationEvent::Started { run, column });
        let family = &plan.family;
        let (tensors, name) = match column {
            Column::Base => {
                let base = family
                    .base
                    .as_ref()
                    .ok_or_else(|| "this merge has no base model".to_owned())?;
                (
                    ModelTensors::all_floats(&base.checkpoint),
                    base.label.clone(),
                )
            }
            Column::Model(i) => {
                let model = family
                    .models
                    .get(i)
                    .ok_or_else(|| "no such model".to_owned())?;
                (
                    ModelTensors::all_floats(&model.checkpoint),
                    model.label.clone(),
                )
            }
            Column::Merge => (merge_in_memory(plan, &Cpu)?, "the merge".to_owned()),
        };
        if cancel.is_cancelled() {
            return Err(None);
        }
        let model = load_model(files, &tensors, &name).map_err(|e| e.to_string())?;
        drop(tensors);
        if self
            .codec
            .as_ref()
            .is_none_or(|c| c.path() != files.tokenizer_path)
        {
            self.codec = Some(TextCodec::load(files).map_err(|e| e.to_string())?);
        }
        let codec = self
            .codec
            .as_ref()
            .ok_or_else(|| "no tokenizer".to_owned())?;
        let outbox = &self.outbox;
        let repaint = &self.repaint;
        let made = generate(
            &model,
            &name,
            codec,
            &request.prompt,
            &request.options,
            cancel,
            |streamed| {
                let _ = outbox.send(GenerationEvent::Text {
                    run,
                    column,
                    text: streamed.text.to_owned(),
                });
                repaint();
            },
        )
        .map_err(|e| mergescope_core::one_line(&e.to_string()))?;
        self.send(GenerationEvent::Finished {
            run,
            column,
            tokens: made.tokens.len(),
            tokens_per_second: made.tokens_per_second(),
            stop: made.stop,
        });
        Ok(())
    }
}

/// A panic in a job is reported as a message, not a dead thread.
fn caught<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|panic| Err(internal(panic.as_ref())))
}

fn internal(panic: &(dyn std::any::Any + Send)) -> String {
    format!(
        "internal error: {}; this is a bug in mergescope (please report it)",
        super::worker::panic_message(panic)
    )
}

/// The language model's files for the recipe `yaml`, or why it is not one.
fn lm_files(yaml: &str, file: &std::path::Path) -> Result<LmFiles, String> {
    files_of(&super::worker::plan(yaml, file)?)
}

fn files_of(plan: &MergePlan) -> Result<LmFiles, String> {
    files_for_plan(plan).map_err(|e| e.to_string())
}

/// How a column's text stands.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnState {
    /// Queued behind the columns before it.
    Waiting,
    Writing,
    Finished {
        tokens: usize,
        tokens_per_second: f64,
        stop: Stop,
    },
    Failed(String),
    Stopped,
}

/// One column of the preview.
#[derive(Clone, Debug)]
pub struct ColumnText {
    pub column: Column,
    pub title: String,
    pub text: String,
    pub state: ColumnState,
}

/// What was asked the last time Generate was pressed: every later run (the merge's, when the
/// sliders settle) writes for the same prompt.
#[derive(Clone, Debug, PartialEq)]
pub struct Asked {
    pub prompt: String,
    pub options: GenerateOptions,
}

/// Whether the open family is a language model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    Asked,
    Yes,
    No(String),
}

/// The generation preview's state: the prompt and settings being edited, each column's text,
/// and the thread (started when first needed).
pub struct Generation {
    pub prompt: String,
    pub max_tokens: usize,
    pub sampled: bool,
    pub temperature: f32,
    pub seed: u64,
    /// The family last probed: its base and models, its recipe file, and the answer.
    pub probed: Option<(Vec<PathBuf>, PathBuf, Probe)>,
    pub columns: Vec<ColumnText>,
    pub asked: Option<Asked>,
    /// The number of the run whose events are shown.
    pub run: Option<u64>,
    /// It is still writing.
    pub running: bool,
    /// The recipe the merge's column was last asked for.
    pub merge_yaml: Option<String>,
    generator: Option<Generator>,
}

impl Default for Generation {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            max_tokens: 32,
            sampled: false,
            temperature: 0.8,
            seed: 0,
            probed: None,
            columns: Vec::new(),
            asked: None,
            run: None,
            running: false,
            merge_yaml: None,
            generator: None,
        }
    }
}

impl Generation {
    /// The options the controls show.
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: if self.sampled {
                Sampling::Sampled {
                    temperature: self.temperature,
                    top_k: 0,
                    top_p: 0.95,
                    seed: self.seed,
                }
            } else {
                Sampling::Greedy
            },
        }
    }

    /// The thread, started (again, if it ended) on first use.
    fn generator(&mut self, ctx: &egui::Context) -> Result<&Generator, String> {
        if self.generator.as_ref().is_some_and(Generator::stopped) {
            self.generator = None;
        }
        if self.generator.is_none() {
            let repaint = ctx.clone();
            let started = Generator::start(move || repaint.request_repaint())
                .map_err(|e| format!("cannot start the generation thread: {e}"))?;
            self.generator = Some(started);
        }
        self.generator
            .as_ref()
            .ok_or_else(|| "no generation thread".to_owned())
    }

    /// Forgets the columns and asks whether the family `members` (base first), whose recipe
    /// `yaml` lives at `file`, is a language model; stops anything running.
    pub fn probe(
        &mut self,
        ctx: &egui::Context,
        members: Vec<PathBuf>,
        yaml: &str,
        file: PathBuf,
    ) -> Result<(), String> {
        self.stop();
        self.columns.clear();
        self.asked = None;
        self.merge_yaml = None;
        self.run = None;
        self.generator(ctx)?.probe(yaml, file.clone());
        self.probed = Some((members, file, Probe::Asked));
        Ok(())
    }

    /// Writes `columns` with the recipe `yaml` (at `file`) and the asked prompt; the other
    /// columns keep their text.
    pub fn send(
        &mut self,
        ctx: &egui::Context,
        yaml: &str,
        file: PathBuf,
        columns: Vec<Column>,
    ) -> Result<(), String> {
        let Some(asked) = self.asked.clone() else {
            return Ok(());
        };
        for c in &mut self.columns {
            if columns.contains(&c.column) {
                c.text.clear();
                c.state = ColumnState::Waiting;
            }
        }
        if columns.contains(&Column::Merge) {
            self.merge_yaml = Some(yaml.to_owned());
        }
        let run = self.generator(ctx)?.send(GenerationRequest {
            yaml: yaml.to_owned(),
            file,
            prompt: asked.prompt,
            options: asked.options,
            columns,
        });
        self.run = Some(run);
        self.running = true;
        Ok(())
    }

    /// Stops the running request: what was written stays, and what it sends from now on is
    /// not shown.
    pub fn stop(&mut self) {
        if let Some(generator) = &self.generator {
            generator.stop();
        }
        self.run = None;
        self.settle_stopped();
    }

    fn settle_stopped(&mut self) {
        self.running = false;
        for c in &mut self.columns {
            if matches!(c.state, ColumnState::Waiting | ColumnState::Writing) {
                c.state = ColumnState::Stopped;
            }
        }
    }

    /// Applies what the thread sent since the last frame.
    pub fn poll(&mut self) {
        let Some(generator) = &self.generator else {
            return;
        };
        let events: Vec<GenerationEvent> = generator.events.try_iter().collect();
        for event in events {
            self.apply(event);
        }
    }

    fn apply(&mut self, event: GenerationEvent) {
        let run = match &event {
            GenerationEvent::Probed { lm, file } => {
                if let Some((_, asked, probe)) = &mut self.probed
                    && *probe == Probe::Asked
                    && asked == file
                {
                    *probe = match lm {
                        Ok(()) => Probe::Yes,
                        Err(why) => Probe::No(why.clone()),
                    };
                }
                return;
            }
            GenerationEvent::Started { run, .. }
            | GenerationEvent::Text { run, .. }
            | GenerationEvent::Finished { run, .. }
            | GenerationEvent::Failed { run, .. }
            | GenerationEvent::Done { run } => *run,
        };
        if self.run != Some(run) {
            return;
        }
        match event {
            GenerationEvent::Probed { .. } => {}
            GenerationEvent::Started { column, .. } => {
                if let Some(c) = self.column_mut(column) {
                    c.text.clear();
                    c.state = ColumnState::Writing;
                }
            }
            GenerationEvent::Text { column, text, .. } => {
                if let Some(c) = self.column_mut(column) {
                    c.text = text;
                }
            }
            GenerationEvent::Finished {
                column,
                tokens,
                tokens_per_second,
                stop,
                ..
            } => {
                if let Some(c) = self.column_mut(column) {
                    c.state = if stop == Stop::Cancelled {
                        ColumnState::Stopped
                    } else {
                        ColumnState::Finished {
                            tokens,
                            tokens_per_second,
                            stop,
                        }
                    };
                }
            }
            GenerationEvent::Failed {
                column, message, ..
            } => {
                if let Some(c) = self.column_mut(column) {
                    c.state = ColumnState::Failed(message);
                }
            }
            GenerationEvent::Done { .. } => self.settle_stopped(),
        }
    }

    fn column_mut(&mut self, column: Column) -> Option<&mut ColumnText> {
        self.columns.iter_mut().find(|c| c.column == column)
    }

    /// A column for the base, each fine-tune (titled `models`) and the merge, empty.
    pub fn set_columns(&mut self, base: String, models: Vec<String>) {
        let inputs = std::iter::once((Column::Base, base)).chain(
            models
                .into_iter()
                .enumerate()
                .map(|(i, m)| (Column::Model(i), m)),
        );
        self.columns = inputs
            .chain(std::iter::once((Column::Merge, "merge".to_owned())))
            .map(|(column, title)| ColumnText {
                column,
                title,
                text: String::new(),
                state: ColumnState::Waiting,
            })
            .collect();
    }

    /// The inputs' columns a run has not finished (written again with the merge when a
    /// settled slider cuts that run short).
    pub fn unfinished_inputs(&self) -> Vec<Column> {
        self.columns
            .iter()
            .filter(|c| c.column != Column::Merge)
            .filter(|c| !matches!(c.state, ColumnState::Finished { .. }))
            .map(|c| c.column)
            .collect()
    }

    /// The text of `column` so far.
    pub fn text_of(&self, column: Column) -> Option<&str> {
        self.columns
            .iter()
            .find(|c| c.column == column)
            .map(|c| c.text.as_str())
    }

    /// The state of `column`.
    pub fn state_of(&self, column: Column) -> Option<&ColumnState> {
        self.columns
            .iter()
            .find(|c| c.column == column)
            .map(|c| &c.state)
    }

    /// Whether the open family is a language model, once the thread has said.
    pub fn is_language_model(&self) -> Option<bool> {
        match self.probed.as_ref().map(|(_, _, p)| p) {
            Some(Probe::Yes) => Some(true),
            Some(Probe::No(_)) => Some(false),
            _ => None,
        }
    }
}
