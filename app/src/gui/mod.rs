//! The workbench GUI (eframe): open, see, tune with live preview, export.

pub mod app;
pub mod panels;
pub mod state;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

pub use app::Workbench;

/// Opens the window on `paths` (base first) or, with none, on the demo family, showing
/// `panel` first.
pub fn run(paths: Vec<PathBuf>, panel: app::Panel) -> eframe::Result {
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
        setup.device_descriptor = Arc::new(|adapter| eframe::wgpu::DeviceDescriptor {
            label: Some("mergescope"),
            required_limits: adapter.limits(),
            ..Default::default()
        });
    }
    eframe::run_native(
        "mergescope",
        options,
        Box::new(move |cc| {
            let mut app = Workbench::new(&cc.egui_ctx, &paths)?;
            app.load_recent(cc.storage);
            app.panel = panel;
            Ok(Box::new(app))
        }),
    )
}
