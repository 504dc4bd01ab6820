//! Workbench responsiveness on the demo family, measured through egui_kittest (the real app
//! state and worker, no window): the UI's frame time while a weight slider is dragged, and
//! the latency from a slider move to the preview that reflects it — a quick estimate while
//! the pointer is down, all test digits after release.
//!
//!     cargo bench -p mergescope --bench gui

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;

fn wait(harness: &mut Harness<'_, Workbench>, done: impl Fn(&Workbench) -> bool) -> Duration {
    let started = Instant::now();
    while !done(harness.state()) {
        assert!(started.elapsed() < Duration::from_secs(120), "timed out");
        std::thread::sleep(Duration::from_micros(200));
        harness.step();
    }
    started.elapsed()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_eframe(|cc| Workbench::new(&cc.egui_ctx, &[]).expect("the worker starts"));
    wait(&mut harness, |app| {
        app.family.is_some() && app.report.is_some()
    });
    harness.get_by_label("Merge").click();
    harness.step();
    wait(&mut harness, |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
    });

    let rect = harness
        .get_by_role_and_label(Role::Slider, "upright weight")
        .rect();
    let (mut frames, mut quick, mut full) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..20 {
        harness.drag_at(rect.left_center() + egui::vec2(4.0, 0.0));
        harness.step();
        // Drag across the slider in 10 moves, each one a frame, then wait for the preview.
        for k in 1..=10 {
            let x = rect.left() + 4.0 + (rect.width() - 8.0) * (k as f32 / 10.0);
            let x = if round % 2 == 0 {
                x
            } else {
                rect.right() - (x - rect.left())
            };
            harness.hover_at(egui::pos2(x, rect.center().y));
            let started = Instant::now();
            harness.step();
            frames.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let moved = Instant::now();
        let sent = harness
            .state()
            .sent_preview
            .clone()
            .expect("a preview was asked for")
            .0;
        wait(&mut harness, |app| {
            app.preview.as_ref().is_some_and(|p| p.yaml == sent)
        });
        quick.push(moved.elapsed().as_secs_f64() * 1e3);
        let released = Instant::now();
        harness.drop_at(egui::pos2(rect.center().x, rect.center().y));
        harness.step();
        let sent = harness.state().sent_preview.clone().expect("a preview").0;
        wait(&mut harness, |app| {
            app.preview
                .as_ref()
                .is_some_and(|p| p.full && p.yaml == sent)
        });
        full.push(released.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "demo family, {} frames while dragging, 20 drags:",
        frames.len()
    );
    println!(
        "  frame time (UI logic and layout, no GPU): median {:.2} ms, p95 {:.2} ms",
        percentile(&mut frames, 0.5),
        percentile(&mut frames, 0.95)
    );
    println!(
        "  last move -> quick preview (32 digits per domain): median {:.1} ms, p95 {:.1} ms",
        percentile(&mut quick, 0.5),
        percentile(&mut quick, 0.95)
    );
    println!(
        "  release -> full preview (all 1,440 test digits): median {:.1} ms, p95 {:.1} ms",
        percentile(&mut full, 0.5),
        percentile(&mut full, 0.95)
    );
}
