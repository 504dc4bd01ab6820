//! `--backend auto|cpu|gpu`, shared by the commands that merge.

use std::sync::Arc;

use mergescope_core::backend::{self, Backend, BackendChoice};

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum BackendArg {
    /// A hardware GPU when present, else the CPU (never a software rasterizer).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU, hardware first, else a software one (Mesa lavapipe); an error if there is none.
    Gpu,
}

/// Opens the backend and says on stderr which one runs.
pub fn open(arg: BackendArg) -> Result<Arc<dyn Backend>, backend::BackendError> {
    let choice = match arg {
        BackendArg::Auto => BackendChoice::Auto,
        BackendArg::Cpu => BackendChoice::Cpu,
        BackendArg::Gpu => BackendChoice::Gpu,
    };
    let backend = backend::select(choice)?;
    eprintln!("backend: {}", backend.describe());
    Ok(backend)
}
