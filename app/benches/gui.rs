//! Workbench responsiveness on the demo family, measured through egui_kittest (the real app
//! state and worker, no window): the UI's frame time while a weight slider or a per-layer
//! curve's control point is dragged (layout only, then with every frame rendered), and the
//! latency from a move to the preview that reflects it — a quick estimate while the pointer
//! is down, all test digits after release.
//!
//!     cargo bench -p mergescope --bench gui
//!     MERGESCOPE_BENCH_FAMILY=DIR cargo bench -p mergescope --bench gui   # also a large family

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

/// Figures of one series of drags: frame times, and latencies to the quick and full previews.
#[derive(Default)]
struct Figures {
    frames: Vec<f64>,
    quick: Vec<f64>,
    full: Vec<f64>,
}

/// Drags from `from` towards `to` and back, `rounds` times, in 10 moves of a frame each;
/// `render` also renders every frame (with the harness's wgpu renderer).
fn drag(
    harness: &mut Harness<'_, Workbench>,
    from: egui::Pos2,
    to: egui::Pos2,
    rounds: usize,
    render: bool,
) -> Figures {
    let mut figures = Figures::default();
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            (from, to)
        } else {
            (to, from)
        };
        harness.drag_at(a);
        harness.step();
        for k in 1..=10 {
            harness.hover_at(a + (b - a) * (k as f32 / 10.0));
            let started = Instant::now();
            harness.step();
            if render {
                harness.render().expect("a frame renders");
            }
            figures.frames.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let moved = Instant::now();
        let sent = harness
            .state()
            .sent_preview
            .clone()
            .expect("a preview was asked for")
            .0;
        wait(harness, |app| {
            app.preview.as_ref().is_some_and(|p| p.yaml == sent)
        });
        figures.quick.push(moved.elapsed().as_secs_f64() * 1e3);
        let released = Instant::now();
        harness.drop_at(b);
        harness.step();
        let sent = harness.state().sent_preview.clone().expect("a preview").0;
        wait(harness, |app| {
            app.preview
                .as_ref()
                .is_some_and(|p| p.full && p.yaml == sent)
        });
        figures.full.push(released.elapsed().as_secs_f64() * 1e3);
    }
    figures
}

fn report(what: &str, mut f: Figures) {
    println!("{what}, {} frames while dragging:", f.frames.len());
    println!(
        "  frame time: median {:.2} ms, p95 {:.2} ms",
        percentile(&mut f.frames, 0.5),
        percentile(&mut f.frames, 0.95)
    );
    println!(
        "  last move -> quick preview (32 digits per domain): median {:.1} ms, p95 {:.1} ms",
        percentile(&mut f.quick, 0.5),
        percentile(&mut f.quick, 0.95)
    );
    println!(
        "  release -> full preview (all 1,440 test digits): median {:.1} ms, p95 {:.1} ms",
        percentile(&mut f.full, 0.5),
        percentile(&mut f.full, 0.95)
    );
}

/// The workbench on the demo family with the Merge panel's first full preview shown.
fn merge_panel(wgpu: bool) -> Harness<'static, Workbench> {
    let builder = Harness::builder().with_size(egui::vec2(1200.0, 800.0));
    let builder = if wgpu { builder.wgpu() } else { builder };
    let mut harness =
        builder.build_eframe(|cc| Workbench::new(&cc.egui_ctx, &[]).expect("the worker starts"));
    wait(&mut harness, |app| {
        app.family.is_some() && app.report.as_ref().is_some_and(|r| r.partial().is_none())
    });
    harness.get_by_label("Merge").click();
    harness.step();
    wait(&mut harness, |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
    });
    harness
}

fn main() {
    // A weight slider, dragged end to end.
    let mut harness = merge_panel(false);
    let rect = harness
        .get_by_role_and_label(Role::Slider, "upright weight")
        .rect();
    let (left, right) = (
        rect.left_center() + egui::vec2(4.0, 0.0),
        rect.right_center() - egui::vec2(4.0, 0.0),
    );
    report(
        "demo family, weight slider, 20 drags (UI logic and layout, no rendering)",
        drag(&mut harness, left, right, 20, false),
    );

    // A per-layer curve's control point, dragged up and down.
    harness.get_by_label("per-layer weights").click();
    harness.step();
    wait(&mut harness, |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
    });
    let point = harness
        .get_by_role_and_label(Role::Slider, "upright point 2")
        .rect()
        .center();
    report(
        "demo family, curve control point, 20 drags (no rendering)",
        drag(
            &mut harness,
            point,
            point - egui::vec2(0.0, 40.0),
            20,
            false,
        ),
    );

    // The same slider with every frame rendered by wgpu: kittest's renderer, which picks a
    // software adapter (Mesa lavapipe) where there is one, renders offscreen and reads the
    // image back, which a window does not do. An upper bound on a software-rendered frame.
    let mut harness = merge_panel(true);
    report(
        "demo family, weight slider, 5 drags, each frame rendered offscreen by kittest's wgpu renderer",
        drag(&mut harness, left, right, 5, true),
    );

    // The Pareto panel's preference, after a search: each move goes through the map into the
    // Merge panel's settings and previews their merge.
    harness.get_by_label("Pareto").click();
    harness.step();
    harness.get_by_label("Search the front").click();
    harness.step();
    let searched = wait(&mut harness, |app| app.pareto.map.is_some());
    println!(
        "Pareto search from the panel (60 evaluations): {:.2} s",
        searched.as_secs_f64()
    );
    let bar = harness
        .get_by_role_and_label(Role::Slider, "upright")
        .rect();
    report(
        "demo family, Pareto preference bar, 10 drags (no rendering)",
        drag(
            &mut harness,
            bar.left_center() + egui::vec2(4.0, 0.0),
            bar.right_center() - egui::vec2(4.0, 0.0),
            10,
            false,
        ),
    );

    if let Some(dir) = std::env::var_os("MERGESCOPE_BENCH_FAMILY") {
        large_family(std::path::Path::new(&dir));
    }
}

/// A large family (`base`, `ft_1`, ... under `dir`, e.g. `mergescope synth`'s): previews of
/// retention while a slider is dragged (a sample of each tensor) and after release (every
/// byte), and the process's memory.
fn large_family(dir: &std::path::Path) {
    let mut paths = vec![dir.join("base")];
    paths.extend(
        (1..)
            .map(|i| dir.join(format!("ft_{i}")))
            .take_while(|p| p.exists()),
    );
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1200.0, 800.0))
        .build_eframe(|cc| Workbench::new(&cc.egui_ctx, &paths).expect("the worker starts"));
    wait(&mut harness, |app| app.family.is_some());
    let bytes: u64 = harness
        .state()
        .family
        .as_ref()
        .unwrap()
        .members
        .iter()
        .map(|m| m.bytes)
        .sum();
    println!(
        "{} ({} models, {:.2} GB): open, {} MiB resident",
        dir.display(),
        paths.len(),
        bytes as f64 / 1e9,
        resident_mib()
    );
    harness.get_by_label("Merge").click();
    harness.step();
    let full = wait(&mut harness, |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
    });
    println!(
        "  first full preview (every element): {:.2} s, {} MiB resident",
        full.as_secs_f64(),
        resident_mib()
    );
    let rect = harness
        .get_by_role_and_label(Role::Slider, "ft_1 weight")
        .rect();
    let (left, right) = (
        rect.left_center() + egui::vec2(4.0, 0.0),
        rect.right_center() - egui::vec2(4.0, 0.0),
    );
    let mut f = drag(&mut harness, left, right, 3, false);
    println!(
        "  slider: frame {:.2} ms median; last move -> sampled preview {:.0} ms median; release -> full preview {:.2} s median; {} MiB resident",
        percentile(&mut f.frames, 0.5),
        percentile(&mut f.quick, 0.5),
        percentile(&mut f.full, 0.5) / 1e3,
        resident_mib()
    );
}

/// The process's resident memory (Linux).
fn resident_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
