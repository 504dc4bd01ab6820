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

impl From<BackendArg> for BackendChoice {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Auto => Self::Auto,
            BackendArg::Cpu => Self::Cpu,
            BackendArg::Gpu => Self::Gpu,
        }
    }
}

/// Opens the backend and says on stderr which one runs.
pub fn open(arg: BackendArg) -> Result<Arc<dyn Backend>, backend::BackendError> {
    let backend = backend::select(arg.into())?;
    eprintln!("backend: {}", backend.describe());
    Ok(backend)
}
