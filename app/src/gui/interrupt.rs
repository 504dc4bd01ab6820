//! Ctrl-C (SIGINT), SIGTERM or SIGHUP sent to the terminal that launched the workbench: the
//! window closes the way its close button closes it (jobs cancelled, threads joined, an
//! export's staging folder removed), instead of the process dying mid-write.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Shared between the signal handler's thread and the workbench.
#[derive(Clone, Debug, Default)]
pub struct Interrupt {
    requested: Arc<AtomicBool>,
    /// The window to wake: it may be asleep, waiting for input that will not come.
    ctx: Arc<OnceLock<egui::Context>>,
}

impl Interrupt {
    /// Installs the process's handler. A first signal asks the window to close; a second,
    /// while it is still closing, ends the process at once (exit code 130).
    pub fn install() -> Result<Self, ctrlc::Error> {
        let interrupt = Self::default();
        let handler = interrupt.clone();
        ctrlc::set_handler(move || {
            if handler.requested.swap(true, Ordering::SeqCst) {
                eprintln!("interrupted again; exiting without waiting");
                std::process::exit(130);
            }
            eprintln!("interrupted; closing the workbench (again to exit at once)");
            if let Some(ctx) = handler.ctx.get() {
                ctx.request_repaint();
            }
        })?;
        Ok(interrupt)
    }

    /// Whether a signal asked the workbench to close.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The flag the workbench checks every frame, and the window the handler wakes.
    pub fn attach(&self, ctx: &egui::Context) -> Arc<AtomicBool> {
        let _ = self.ctx.set(ctx.clone());
        Arc::clone(&self.requested)
    }
}
