//! The workbench GUI (eframe): open, see, tune with live preview, export.

pub mod app;
pub mod chart;
pub mod curve_editor;
pub mod generator;
pub mod help;
pub mod history;
pub mod interrupt;
pub mod method_controls;
pub mod methods;
pub mod panels;
pub mod pareto;
pub mod previewer;
pub mod state;
pub mod sweep;
pub mod text;
pub mod texts;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use mergescope_core::backend::{BackendChoice, SharedDevice, select_shared};

pub use app::Workbench;

/// What the window opens on.
pub struct Startup {
    /// Models, the base first; none: the demo family (or the language-model one, `lm_demo`).
    pub paths: Vec<PathBuf>,
    /// Opens the built-in language-model demo family (instead of `paths` and `recipe`), with
    /// its task-arithmetic recipe and its texts.
    pub lm_demo: bool,
    /// A mergekit recipe whose models are opened and whose settings are loaded (instead of
    /// `paths`).
    pub recipe: Option<PathBuf>,
    /// The panel to show first; else the one shown when the window last closed.
    pub panel: Option<app::Panel>,
    /// Where previews and exports run.
    pub backend: BackendChoice,
    /// The terminal's Ctrl-C, when a handler could be installed.
    pub interrupt: Option<interrupt::Interrupt>,
}

/// Opens the window.
pub fn run(startup: Startup) -> eframe::Result {
    let mut options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("mergescope")
            .with_inner_size([1200.0, 800.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    // Compute on eframe's device needs the adapter's limits, not wgpu's defaults.
    if let eframe::egui_wgpu::WgpuSetup::CreateNew(ref mut setup) = options.wgpu_options.wgpu_setup
    {
        // f64 where the adapter has it: the Gram kernel then runs on the device (without it
        // the host computes the same bits).
        setup.device_descriptor = Arc::new(|adapter| eframe::wgpu::DeviceDescriptor {
            label: Some("mergescope"),
            required_limits: adapter.limits(),
            required_features: adapter.features() & eframe::wgpu::Features::SHADER_F64,
            ..Default::default()
        });
    }
    eframe::run_native(
        "mergescope",
        options,
        Box::new(move |cc| {
            let mut app = Workbench::with_backend(&cc.egui_ctx, make_backend(cc, startup.backend))?;
            if let Some(interrupt) = &startup.interrupt {
                app.interrupted = interrupt.attach(&cc.egui_ctx);
            }
            app.load_remembered(cc.storage);
            match startup.recipe {
                _ if startup.lm_demo => app.open_lm_demo(),
                Some(recipe) => app.load_recipe(recipe),
                None => app.open_paths(&startup.paths),
            }
            if let Some(panel) = startup.panel {
                app.panel = panel;
            }
            Ok(Box::new(app))
        }),
    )
}

/// The backend for `choice`, on eframe's own wgpu device when the window renders with wgpu
/// (one device, and the GPU memory the renderer already holds, shared).
pub fn make_backend(
    cc: &eframe::CreationContext<'_>,
    choice: BackendChoice,
) -> worker::MakeBackend {
    let shared = cc.wgpu_render_state.as_ref().map(|rs| SharedDevice {
        device: rs.device.clone(),
        queue: rs.queue.clone(),
        info: rs.adapter.get_info(),
    });
    let window_device = shared.as_ref().map(|s| s.info.name.clone());
    Box::new(move || {
        let backend = select_shared(choice, shared).map_err(|e| e.to_string())?;
        let mut described = backend.describe();
        if let Some(name) = window_device.filter(|_| !described.starts_with("gpu")) {
            described = format!("{described} (the window renders on {name})");
        }
        Ok((backend, described))
    })
}
