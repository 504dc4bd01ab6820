//! The preview thread: merges the Merge panel's recipe in memory and scores it, beside the job
//! worker, so a preview never waits behind an analysis or an export. Only the newest request
//! matters: older queued ones are dropped and a running one is cancelled when a newer comes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use mergescope_core::analysis::{AnalysisError, survival_sampled};
use mergescope_core::backend::Backend;
use mergescope_core::eval::lm::perplexity::{QUICK_TOKENS, ScoreError};
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::eval::{DemoAccuracy, Fidelity, Scores};
use mergescope_core::{CancelToken, Job};

use super::worker::Event;

/// Elements of each tensor a quick (pointer down) preview measures outside the demo family.
const QUICK_SAMPLE: usize = 1 << 16;
/// Test digits per domain a quick preview of the demo family scores.
pub const QUICK_DIGITS: usize = 32;

/// What to preview.
#[derive(Debug)]
pub struct PreviewRequest {
    pub yaml: String,
    /// Where the recipe is taken to live (relative model paths resolve from there).
    pub file: PathBuf,
    /// Score accuracy on the demo's digits (a family built on the demo base).
    pub is_demo: bool,
    /// All of the test split and every element; else a quick estimate.
    pub full: bool,
    /// Score a language model's perplexity on these texts (all of each domain, or while the
    /// pointer is down its first [`QUICK_TOKENS`]).
    pub texts: Option<super::texts::LoadedTexts>,
}

/// What the UI and the thread share.
#[derive(Default)]
struct Shared {
    /// The running preview's cancel token.
    running: Mutex<Option<CancelToken>>,
    /// The number of the newest request: any other is stale.
    newest: AtomicU64,
    /// Set when the app closes.
    shutdown: AtomicBool,
    /// Set when the thread has ended for any other reason (it should not).
    died: AtomicBool,
}

impl Shared {
    fn cancel_running(&self) {
        if let Some(token) = &*self.running.lock().unwrap_or_else(PoisonError::into_inner) {
            token.cancel();
        }
    }
}

/// The UI side: send requests; a newer one cancels the one running. Dropping it stops the
/// thread.
pub struct Previewer {
    requests: Sender<(u64, PreviewRequest)>,
    shared: Arc<Shared>,
}

/// The thread's side before it starts (it needs the backend, which is made on the worker).
pub struct PreviewInbox {
    inbox: Receiver<(u64, PreviewRequest)>,
    shared: Arc<Shared>,
}

impl Previewer {
    /// The UI's handle and the inbox the thread will serve.
    pub fn new() -> (Self, PreviewInbox) {
        let (requests, inbox) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::default());
        let pending = PreviewInbox {
            inbox,
            shared: Arc::clone(&shared),
        };
        (Self { requests, shared }, pending)
    }

    /// The thread ended while the app still runs.
    pub fn stopped(&self) -> bool {
        self.shared.died.load(Ordering::SeqCst)
    }

    pub fn send(&self, request: PreviewRequest) {
        // Numbered before the cancel: a preview that starts between the two sees it is stale.
        let number = self.shared.newest.fetch_add(1, Ordering::SeqCst) + 1;
        self.shared.cancel_running();
        let _ = self.requests.send((number, request));
    }
}

impl Drop for Previewer {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.cancel_running();
    }
}

impl PreviewInbox {
    /// Starts the thread; its events go to `outbox` and `notify` wakes the UI. It ends when the
    /// [`Previewer`] is dropped.
    pub fn spawn(
        self,
        backend: Arc<dyn Backend>,
        outbox: Sender<Event>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let thread = Thread {
            backend,
            outbox,
            notify,
            shared: self.shared,
            demo: None,
        };
        let inbox = self.inbox;
        std::thread::Builder::new()
            .name("mergescope-preview".to_owned())
            .spawn(move || {
                // Dropped however the thread ends, unwinding included.
                let _watch = Watch(Arc::clone(&thread.shared));
                thread.serve(&inbox);
            })
    }
}

/// Marks the thread as gone when it ends before the app asked it to.
struct Watch(Arc<Shared>);

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.0.shutdown.load(Ordering::SeqCst) {
            self.0.died.store(true, Ordering::SeqCst);
        }
    }
}

struct Thread {
    backend: Arc<dyn Backend>,
    outbox: Sender<Event>,
    notify: Arc<dyn Fn() + Send + Sync>,
    shared: Arc<Shared>,
    /// Loaded on the first demo preview (the digits and the model code).
    demo: Option<DemoAccuracy>,
}

impl Thread {
    fn send(&self, event: Event) {
        let _ = self.outbox.send(event);
        (self.notify)();
    }

    fn serve(mut self, inbox: &Receiver<(u64, PreviewRequest)>) {
        while let Ok(mut request) = inbox.recv() {
            // Only the newest request matters.
            while let Ok(newer) = inbox.try_recv() {
                request = newer;
            }
            if self.shared.shutdown.load(Ordering::SeqCst) {
                break;
            }
            let (number, request) = request;
            // A panic in a preview is reported and the thread takes the next request.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.preview(number, &request)
            }))
            .unwrap_or_else(|panic| {
                Err(Some(format!(
                    "internal error: {}; this is a bug in mergescope (please report it)",
                    super::worker::panic_message(panic.as_ref())
                )))
            });
            let event = match outcome {
                Ok(event) => event,
                Err(None) => Event::PreviewStopped,
                Err(Some(message)) => Event::PreviewFailed(message),
            };
            *self
                .shared
                .running
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            self.send(event);
        }
    }

    /// A job whose progress goes to the Merge panel and whose cancel token a newer request
    /// reaches.
    fn job(&self, number: u64) -> Job {
        let job = Job::default();
        let progress = job.progress.clone();
        let outbox = self.outbox.clone();
        let notify = Arc::clone(&self.notify);
        let last = Mutex::new(Instant::now());
        job.progress.set_observer(move || {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.elapsed().as_millis() < 33 {
                return;
            }
            *last = Instant::now();
            let _ = outbox.send(Event::PreviewProgress(progress.snapshot().fraction()));
            notify();
        });
        *self
            .shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(job.cancel.clone());
        // A newer request (or the app closing) may have come before the token was in place.
        if self.shared.newest.load(Ordering::SeqCst) != number
            || self.shared.shutdown.load(Ordering::SeqCst)
        {
            job.cancel.cancel();
        }
        job
    }

    /// The preview's event; `Err(None)` when it was cancelled.
    fn preview(&mut self, number: u64, request: &PreviewRequest) -> Result<Event, Option<String>> {
        let started = Instant::now();
        let job = self.job(number);
        let plan = super::worker::plan(&request.yaml, &request.file)?;
        let mut scores = Scores::new();
        if request.is_demo {
            if self.demo.is_none() {
                self.demo = Some(DemoAccuracy::new().map_err(|e| e.to_string())?);
            }
            let merged = merge_in_memory(&plan, self.backend.as_ref())?;
            let fidelity = if request.full {
                Fidelity::Full
            } else {
                Fidelity::Subsample(QUICK_DIGITS)
            };
            scores = self
                .demo
                .as_ref()
                .expect("made above")
                .score(&merged, fidelity)
                .map_err(|e| e.to_string())?;
        } else if let Some(texts) = &request.texts {
            let perplexity = &texts.perplexity;
            let merged = merge_in_memory(&plan, self.backend.as_ref())?;
            job.check_cancelled().map_err(|_| None)?;
            let model = perplexity
                .model_of(&merged, "the merge")
                .map_err(|e| Some(e.to_string()))?;
            // The model holds its own copy: one merged model in memory while scoring.
            drop(merged);
            let fidelity = if request.full {
                Fidelity::Full
            } else {
                Fidelity::Subsample(QUICK_TOKENS)
            };
            scores = perplexity
                .score_until(&model, fidelity, &job.cancel)
                .map_err(|e| match e {
                    ScoreError::Cancelled => None,
                    other => Some(other.to_string()),
                })?;
        }
        // Any family with a base: how much of each task vector survives, per layer
        // (data-free). While the pointer is down, a large family is measured on a few rows of
        // each tensor. A merge without a base (linear) has no task vectors to measure.
        let sample = (!request.is_demo && !request.full).then_some(QUICK_SAMPLE);
        let survival = match plan.family.base {
            None => None,
            Some(_) => Some(
                survival_sampled(&plan, self.backend.as_ref(), &job, sample).map_err(
                    |e| match e {
                        AnalysisError::Cancelled(_) => None,
                        other => Some(other.to_string()),
                    },
                )?,
            ),
        };
        job.check_cancelled().map_err(|_| None)?;
        Ok(Event::Previewed {
            yaml: request.yaml.clone(),
            scores,
            survival: survival.map(Box::new),
            full: request.full,
            millis: started.elapsed().as_secs_f64() * 1e3,
        })
    }
}
