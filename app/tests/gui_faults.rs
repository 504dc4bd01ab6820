//! The workbench never dies silently: a job that panics, a worker thread that is gone, weights
//! holding NaN or ±Inf, and a model file changed on disk while open each end in a readable
//! notice, and the workbench goes on working.

use std::path::{Path, PathBuf};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;
use mergescope::gui::worker::{Command, Fault};
use safetensors::Dtype;

mod common;
use common::{harness_on, save_screenshot, step_until, wait_for, write_safetensors};

fn notice_with(harness: &mut Harness<'_, Workbench>, needle: &str) -> String {
    step_until(harness, needle, |app| {
        app.notice
            .as_ref()
            .filter(|n| n.text.contains(needle))
            .map(|n| n.text.clone())
    })
}

fn analysed(harness: &mut Harness<'_, Workbench>) {
    wait_for(harness, "the family and its whole analysis", |app| {
        app.family.is_some()
            && app.busy.is_none()
            && app.report.as_ref().is_some_and(|r| r.partial().is_none())
    });
}

/// A two-layer Llama-named model; `spoil` puts NaN and ±Inf into some tensors.
fn write_model(folder: &Path, shift: f32, spoil: bool) -> PathBuf {
    std::fs::create_dir_all(folder).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![32, 16])];
    for l in 0..2 {
        for module in [
            "self_attn.q_proj",
            "self_attn.o_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            tensors.push((format!("model.layers.{l}.{module}.weight"), vec![16, 16]));
        }
    }
    tensors.push(("lm_head.weight".into(), vec![32, 16]));
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            let values = (0..n).map(|i| {
                let v = ((i * 7 + t * 13) % 23) as f32 * 0.05 - 0.5 + shift * (1 + i % 3) as f32;
                match (spoil, t, i % 4) {
                    (true, 1, 0) => f32::NAN,
                    (true, 7, 1) => f32::INFINITY,
                    _ => v,
                }
            });
            (name, shape, values.flat_map(f32::to_le_bytes).collect())
        })
        .collect();
    write_safetensors(&folder.join("model.safetensors"), Dtype::F32, &data);
    folder.to_path_buf()
}

/// A base and two fine-tunes under `dir`; with `spoil`, the first fine-tune holds NaN and Inf.
fn family(dir: &Path, spoil: bool) -> Vec<PathBuf> {
    vec![
        write_model(&dir.join("base"), 0.0, false),
        write_model(&dir.join("ft_a"), 0.02, spoil),
        write_model(&dir.join("ft_b"), -0.03, false),
    ]
}

#[test]
fn a_panicking_job_is_a_notice_and_the_worker_takes_the_next_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness_on(&family(dir.path(), false));
    analysed(&mut harness);
    harness.state_mut().start_job("injected");
    harness
        .state()
        .worker
        .send(Command::InjectFault(Fault::PanicInJob));
    let text = notice_with(&mut harness, "internal error");
    assert!(text.contains("the workbench goes on"), "{text}");
    assert!(harness.state().notice.as_ref().unwrap().error);
    assert!(harness.state().busy.is_none(), "no spinner left behind");
    // The same worker answers the next job.
    harness.state_mut().report = None;
    harness.state_mut().analyze();
    analysed(&mut harness);
}

#[test]
fn a_dead_worker_is_started_again_with_the_family_and_settings_kept() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(dir.path(), false);
    let mut harness = harness_on(&paths);
    analysed(&mut harness);
    harness.state_mut().settings.as_mut().unwrap().weights[0] = 0.77;
    harness.state_mut().start_job("injected");
    harness
        .state()
        .worker
        .send(Command::InjectFault(Fault::KillWorker));
    let text = notice_with(&mut harness, "started again");
    assert!(text.contains("the worker thread stopped"), "{text}");
    assert!(text.contains("reopening the models"), "{text}");
    // The new worker reopens the family (and analyses it); the settings survive.
    wait_for(&mut harness, "the reopened family", |app| {
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("reopened"))
    });
    analysed(&mut harness);
    assert_eq!(harness.state().settings.as_ref().unwrap().weights[0], 0.77);
    assert_eq!(harness.state().family.as_ref().unwrap().base, paths[0]);
}

#[test]
fn non_finite_weights_are_named_and_every_panel_still_draws() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness_on(&family(dir.path(), true));
    analysed(&mut harness);
    let text = notice_with(&mut harness, "non-finite");
    assert!(
        text.contains("model.layers.0.self_attn.q_proj.weight"),
        "{text}"
    );
    assert!(text.contains("ft_a"), "{text}");
    let report = harness.state().report.clone().unwrap();
    assert_eq!(report.non_finite.len(), 2, "{:?}", report.non_finite);
    for tab in [
        "Sensitivity",
        "Interference",
        "Merge",
        "Pareto",
        "Export",
        "Models",
    ] {
        harness.get_by_label(tab).click();
        harness.run_ok();
        if tab == "Merge" {
            wait_for(&mut harness, "a preview of the merge", |app| {
                app.preview.as_ref().is_some_and(|p| p.full)
            });
        }
    }
    save_screenshot(&mut harness, Panel::Sensitivity, "non-finite.png");
    // Exporting it says so too.
    let out = dir.path().join("merged");
    harness.state_mut().export_dir = out.display().to_string();
    harness.get_by_label("Export").click();
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    let text = notice_with(&mut harness, "wrote");
    assert!(
        text.contains("warning") && text.contains("non-finite"),
        "{text}"
    );
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn a_file_changed_on_disk_is_reported_and_can_be_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(dir.path(), false);
    let mut harness = harness_on(&paths);
    analysed(&mut harness);
    harness.state_mut().settings.as_mut().unwrap().weights[1] = 0.33;
    // Another program rewrites a fine-tune while the workbench has it open.
    write_model(&dir.path().join("ft_b"), 0.5, false);
    let file = dir.path().join("ft_b/model.safetensors");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() - 512);
    std::fs::write(&file, &bytes).unwrap();
    harness.state_mut().analyze();
    let text = notice_with(&mut harness, mergescope_core::CHANGED_ON_DISK);
    assert!(text.contains("ft_b"), "{text}");
    assert!(text.contains("reopen it"), "{text}");
    save_screenshot(&mut harness, Panel::Models, "changed-on-disk.png");
    // The file is put right, and the notice's button reopens the family as it is now.
    write_model(&dir.path().join("ft_b"), 0.5, false);
    harness.get_by_label("Reopen").click();
    wait_for(&mut harness, "the reopened family", |app| {
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("reopened"))
    });
    analysed(&mut harness);
    assert_eq!(harness.state().settings.as_ref().unwrap().weights[1], 0.33);
}

/// A model of eight 1024 × 1024 f32 tensors (32 MB), whose export takes a moment.
fn write_big_model(folder: &Path, salt: u32) -> PathBuf {
    std::fs::create_dir_all(folder).unwrap();
    let data: Vec<(String, Vec<u8>)> = (0..8u32)
        .map(|t| {
            let bytes = (0..1024 * 1024u32)
                .flat_map(|i| {
                    let h = i.wrapping_mul(2_654_435_761) ^ (salt * 7919 + t * 104_729);
                    ((h % 2001) as f32 / 1000.0 - 1.0).to_le_bytes()
                })
                .collect();
            (format!("model.layers.{t}.mlp.up_proj.weight"), bytes)
        })
        .collect();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = data
        .into_iter()
        .map(|(n, b)| (n, vec![1024, 1024], b))
        .collect();
    write_safetensors(&folder.join("model.safetensors"), Dtype::F32, &data);
    folder.to_path_buf()
}

/// What Ctrl-C in the terminal does to a running export: the flag the signal handler sets
/// (`gui::interrupt`) cancels the job at the next frame, before the window closes, and the
/// export leaves nothing behind. (tests/tests/signals.rs sends the real signals to the real
/// window.)
#[test]
fn an_interrupt_cancels_a_running_export_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = ["base", "ft_a", "ft_b"]
        .iter()
        .zip(0..)
        .map(|(name, salt)| write_big_model(&dir.path().join(name), salt))
        .collect();
    let mut harness = harness_on(&paths);
    wait_for(&mut harness, "the family", |app| app.family.is_some());
    harness.state().worker.cancel(); // the automatic analysis
    wait_for(&mut harness, "no job", |app| app.busy.is_none());
    let out = dir.path().join("merged");
    harness.state_mut().export_dir = out.display().to_string();
    harness.get_by_label("Export").click();
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    wait_for(&mut harness, "the export under way", |app| {
        app.busy
            .as_ref()
            .is_some_and(|(stage, fraction)| stage.starts_with("merging") && *fraction > 0.0)
    });
    harness
        .state()
        .interrupted
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let text = notice_with(&mut harness, "cancelled");
    assert!(text.contains("nothing was written"), "{text}");
    drop(harness); // closing the window joins the worker
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!out.exists(), "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with('.')),
        "a staging folder was left: {names:?}"
    );
}
