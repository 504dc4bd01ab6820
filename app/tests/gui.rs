//! The workbench driven like a user would, through egui_kittest: open the demo family, walk the
//! panels, drag a slider and watch the preview, edit per-layer weights, save the recipe,
//! export, and open a corrupt file.

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;

mod common;
use common::{
    MemoryStorage, click_through, drag_slider_to_the_end, error_notice, harness, harness_on,
    opened, save_screenshot, slider, wait_for,
};

fn mean_accuracy(app: &Workbench) -> Option<f64> {
    app.preview
        .as_ref()
        .filter(|p| p.full)
        .map(|p| p.scores["mean/accuracy"])
}

#[test]
fn opens_the_demo_family_and_walks_the_panels() {
    let mut harness = harness();
    opened(&mut harness);
    let family = harness.state().family.clone().unwrap();
    assert!(family.is_demo);
    assert_eq!(family.members.len(), 5);
    assert_eq!(family.members[0].architecture, "ViT");
    assert!(family.issues.is_empty());
    harness.get_by_label("upright").hover(); // listed in the Models table
    for (tab, panel, needle) in [
        (
            "Sensitivity",
            Panel::Sensitivity,
            "Most moved tensors (mean over fine-tunes)",
        ),
        (
            "Interference",
            Panel::Interference,
            "sign conflict (whole model)",
        ),
        ("Merge", Panel::Merge, "method"),
        ("Export", Panel::Export, "Output folder"),
    ] {
        harness.get_by_label(tab).click();
        harness.run_ok();
        assert_eq!(harness.state().panel, panel);
        harness.get_by_label(needle);
    }
}

#[test]
fn dragging_a_slider_updates_the_preview() {
    let mut harness = harness();
    opened(&mut harness);
    harness.get_by_label("Merge").click();
    wait_for(&mut harness, "the first full preview", |app| {
        mean_accuracy(app).is_some()
    });
    let before = mean_accuracy(harness.state()).unwrap();
    let weight_before = harness.state().settings.as_ref().unwrap().weights[0];

    // Drag the first expert's weight slider to its right end and let go.
    let rect = slider(&harness, "upright weight");
    harness.drag_at(rect.left_center() + egui::vec2(4.0, 0.0));
    harness.step();
    harness.hover_at(rect.right_center() - egui::vec2(2.0, 0.0));
    harness.step();
    // While the pointer is down the preview is a quick estimate.
    wait_for(&mut harness, "a quick preview while dragging", |app| {
        app.sent_preview.as_ref().is_some_and(|(_, full)| !full)
    });
    harness.drop_at(rect.right_center() - egui::vec2(2.0, 0.0));
    harness.step();
    let weight_after = harness.state().settings.as_ref().unwrap().weights[0];
    assert!(
        weight_after > weight_before + 0.5,
        "{weight_before} → {weight_after}"
    );
    wait_for(&mut harness, "the full preview after release", |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
            && app.sent_preview.as_ref().is_some_and(|(yaml, full)| {
                *full && yaml.contains(&format!("weight: {weight_after}"))
            })
            && mean_accuracy(app) != Some(before)
    });
    let after = mean_accuracy(harness.state()).unwrap();
    assert_ne!(before, after, "the merge changed, so must its accuracy");
}

#[test]
fn per_layer_curves_filters_and_saving_the_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("saved.yml");
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge", "per-layer weights"]);
    assert_eq!(
        harness.state().settings.as_ref().unwrap().curves[1],
        vec![0.3, 0.3],
        "the scalar weight becomes a flat curve"
    );
    // Drag the rotated expert's last control point up to the top of its curve.
    let point = harness
        .get_by_role_and_label(Role::Slider, "rotated point 2")
        .rect()
        .center();
    harness.drag_at(point);
    harness.step();
    for dy in [-10.0, -20.0, -30.0, -60.0] {
        harness.hover_at(point + egui::vec2(0.0, dy));
        harness.step();
    }
    wait_for(&mut harness, "a quick preview while dragging", |app| {
        app.sent_preview.as_ref().is_some_and(|(_, full)| !full)
    });
    harness.drop_at(point + egui::vec2(0.0, -60.0));
    harness.run_ok();
    let curve = harness.state().settings.as_ref().unwrap().curves[1].clone();
    assert_eq!(curve[0], 0.3, "the other point stays");
    assert!(curve[1] > 1.0, "dragged up: {curve:?}");
    // One more point keeps the shape (the middle one lands halfway).
    harness.get_all_by_label("+ point").nth(1).unwrap().click();
    harness.run_ok();
    let curve = harness.state().settings.as_ref().unwrap().curves[1].clone();
    assert_eq!(curve.len(), 3);
    assert!(
        (curve[1] - (curve[0] + curve[2]) / 2.0).abs() <= 0.011,
        "{curve:?}"
    );
    // A focused point moves with the arrow keys.
    harness
        .get_by_role_and_label(Role::Slider, "upright point 1")
        .focus();
    harness.key_press(egui::Key::ArrowUp);
    harness.run_ok();
    assert_eq!(
        harness.state().settings.as_ref().unwrap().curves[0][0],
        0.35
    );

    // A module filter: attention tensors keep only half of the merged task vector.
    harness.get_by_label("add a module filter").click();
    harness.run_ok();
    harness.get_by_label_contains("attention (").click();
    harness.run_ok();
    let filters = harness.state().settings.as_ref().unwrap().filters.clone();
    assert_eq!(filters.len(), 1);
    assert_eq!(filters[0].filter, "attention");
    // Every preview so far was a recipe the engine accepts.
    assert!(
        !harness.state().notice.as_ref().is_some_and(|n| n.error),
        "{:?}",
        harness.state().notice
    );

    harness.state_mut().recipe_path = recipe.display().to_string();
    harness.get_by_label("Save recipe").click();
    harness.run_ok();
    let yaml = std::fs::read_to_string(&recipe).expect("the recipe was saved");
    assert!(yaml.starts_with("merge_method: task_arithmetic"));
    let points: Vec<String> = curve.iter().map(f64::to_string).collect();
    assert!(
        yaml.contains(&format!("weight: [{}]", points.join(", "))),
        "{yaml}"
    );
    assert!(
        yaml.contains("  lambda:\n    - {filter: \"attention\", value: 0.5}\n    - {value: 1}\n"),
        "{yaml}"
    );
    assert!(yaml.contains("base_model:") && yaml.matches("- model:").count() == 4);

    // Loading it back restores the settings after they were changed.
    let saved = harness.state().settings.clone().unwrap();
    harness.state_mut().settings = Some(mergescope::gui::state::MergeSettings::for_models(4));
    harness.run_ok(); // the panel is laid out anew before its button is clicked
    harness.get_by_label("Load recipe").click();
    harness.run_ok();
    let restored = harness.state().settings.clone().unwrap();
    // (The scalar weights are hidden while curves are on; only what the recipe says returns.)
    assert_eq!(
        (
            &restored.curves,
            &restored.filters,
            restored.per_layer,
            &restored.method
        ),
        (
            &saved.curves,
            &saved.filters,
            saved.per_layer,
            &saved.method
        ),
        "{:?}",
        harness.state().notice
    );
    // A recipe naming a model that is nowhere is refused with a reason, and nothing changes.
    std::fs::write(&recipe, "merge_method: karcher\nmodels:\n  - model: x\n").unwrap();
    harness.get_by_label("Load recipe").click();
    harness.run_ok();
    let notice = harness.state().notice.clone().unwrap();
    assert!(
        notice.error && notice.text.contains("model `x` not found"),
        "{}",
        notice.text
    );
    assert_eq!(harness.state().settings.as_ref(), Some(&restored));
}

#[test]
fn curve_presets_reshape_a_curve() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge", "per-layer weights"]);
    harness.get_all_by_label("shape").nth(2).unwrap().click();
    harness.run_ok();
    harness.get_by_label("rising (late layers most)").click();
    harness.run_ok();
    let curve = harness.state().settings.as_ref().unwrap().curves[2].clone();
    assert_eq!(curve, vec![0.0, 0.15, 0.3, 0.45, 0.6]);
}

/// Goes to the Export panel, writes the merge and waits until it is written.
fn export(harness: &mut Harness<'_, Workbench>) {
    harness.get_by_label("Export").click();
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    wait_for(harness, "the export", |app| {
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.starts_with("wrote"))
    });
}

#[test]
fn exports_the_merge() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let mut harness = harness();
    opened(&mut harness);
    harness.state_mut().export_dir = out.display().to_string();
    export(&mut harness);
    assert!(out.join("model.safetensors").is_file());
    assert!(out.join("config.json").is_file());
    // Nothing half-written is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn a_corrupt_file_shows_a_readable_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.safetensors");
    std::fs::write(&bad, b"this is not a safetensors file").unwrap();
    let mut harness = harness();
    opened(&mut harness);
    let base = harness.state().family.as_ref().unwrap().base.clone();
    harness.state_mut().base_path = base.display().to_string();
    harness.state_mut().model_paths = bad.display().to_string();
    harness.get_by_label("Open").click();
    let notice = error_notice(&mut harness);
    assert!(notice.contains("broken.safetensors"), "{notice}");
    // The family that was open stays open.
    assert!(harness.state().family.as_ref().unwrap().is_demo);
}

/// What each panel looks like (kittest snapshots, rendered with wgpu on the software adapter
/// CI uses; regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p mergescope --test gui`).
#[test]
fn every_panel_looks_as_it_did() {
    let mut harness = harness();
    opened(&mut harness);
    harness.state_mut().export_dir = "/tmp/mergescope-merged".to_owned();
    harness.state_mut().recipe_path = "/tmp/mergescope-recipe.yml".to_owned();
    // Paths differ between machines: show fixed ones where the demo family's folder would be.
    harness.state_mut().notice = None;
    harness.state_mut().base_path = "demo-family/base".to_owned();
    harness.state_mut().model_paths =
        "demo-family/upright\ndemo-family/rotated\ndemo-family/mirrored\ndemo-family/inverted"
            .to_owned();
    let mut results = egui_kittest::SnapshotResults::new();
    for (tab, name) in [
        ("Models", "models"),
        ("Sensitivity", "sensitivity"),
        ("Interference", "interference"),
        ("Merge", "merge"),
        ("Export", "export"),
    ] {
        // The tab comes first: the panel's heading repeats its name.
        harness
            .get_all_by_label(tab)
            .next()
            .expect("the tab")
            .click();
        harness.remove_cursor();
        if name == "merge" {
            wait_for(&mut harness, "a full preview beside its inputs", |app| {
                app.preview
                    .as_ref()
                    .is_some_and(|p| p.full && p.inputs.is_some())
            });
            // The history's clock reads the time of day: fixed, like the paths.
            for entry in &mut harness.state_mut().history.entries {
                entry.time = 0;
            }
        }
        harness.run_ok();
        results.add(harness.try_snapshot(name));
    }
    // The Merge panel with per-layer curves (one reshaped) and a module filter.
    harness.get_by_label("Merge").click();
    {
        let settings = harness.state_mut().settings.as_mut().unwrap();
        settings.set_per_layer(true, 4);
        settings.curves[1] = vec![0.0, 0.3, 0.6];
        settings.filters.push(mergescope::gui::state::ModuleFilter {
            filter: "attention".to_owned(),
            lambda: 0.5,
        });
    }
    harness.remove_cursor();
    harness.run_ok();
    wait_for(&mut harness, "the curves' full preview", |app| {
        app.preview
            .as_ref()
            .is_some_and(|p| p.full && p.inputs.is_some() && p.yaml.contains("[0, 0.3, 0.6]"))
    });
    for entry in &mut harness.state_mut().history.entries {
        entry.time = 0;
    }
    results.add(harness.try_snapshot("merge-curves"));
}

/// A file dropped on the window, as winit hands it to egui.
#[derive(Debug)]
struct Dropped(std::path::PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &std::path::Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn dropping_files_opens_them_and_a_corrupt_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("dropped.safetensors");
    std::fs::write(&bad, [0u8; 5]).unwrap();
    let mut harness = harness();
    opened(&mut harness);
    let family = harness.state().family.clone().unwrap();
    // Drop the base and two experts: a new family of two fine-tunes opens.
    let files: Vec<egui::DroppedFileHandle> = [&family.base, &family.models[0], &family.models[1]]
        .into_iter()
        .map(|p| std::sync::Arc::new(Dropped(p.clone())) as egui::DroppedFileHandle)
        .collect();
    harness.input_mut().dropped_files = files;
    wait_for(&mut harness, "the dropped family", |app| {
        app.family.as_ref().is_some_and(|f| f.models.len() == 2)
    });
    // It is remembered, and the memory survives a restart through eframe's storage.
    assert_eq!(harness.state().recent.len(), 1);
    let mut storage = MemoryStorage::default();
    eframe::App::save(harness.state_mut(), &mut storage);
    let mut again = harness_without_family();
    again.state_mut().load_remembered(Some(&storage));
    assert_eq!(again.state().recent, harness.state().recent);
    // One corrupt file dropped on it is added as a fine-tune, fails, and says why.
    harness.input_mut().dropped_files =
        vec![std::sync::Arc::new(Dropped(bad.clone())) as egui::DroppedFileHandle];
    let notice = error_notice(&mut harness);
    assert!(notice.contains("dropped.safetensors"), "{notice}");
    assert_eq!(harness.state().family.as_ref().unwrap().models.len(), 2);
}

fn harness_without_family() -> Harness<'static, Workbench> {
    harness()
}

#[test]
fn exports_in_bfloat16_in_small_shards() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    let mut harness = harness();
    opened(&mut harness);
    harness.state_mut().export_dir = out.display().to_string();
    harness.state_mut().shard_size = "40KB".to_owned();
    harness.state_mut().settings.as_mut().unwrap().out_dtype = "bfloat16".to_owned();
    export(&mut harness);
    // 70 KB of bf16 in shards of at most 40 KB: two shards and an index.
    assert!(out.join("model.safetensors.index.json").is_file());
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("bfloat16"), "{config}");
}

/// A family big enough that its export takes a while: three Llama-shaped f32 checkpoints of
/// 54 MB each, base first. Values come from a cheap hash, not the synthetic family's normal
/// draws, which are slow in a debug build.
fn slow_family(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use mergescope_core::synth::LlamaShape;
    let shape = LlamaShape {
        hidden: 256,
        intermediate: 688,
        layers: 16,
        vocab: 4096,
        heads: 4,
        kv_heads: 2,
    };
    std::fs::create_dir_all(dir).unwrap();
    ["base", "ft_1", "ft_2"]
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = shape
                .tensors()
                .into_iter()
                .enumerate()
                .map(|(k, (tensor, dims))| {
                    let n: usize = dims.iter().product();
                    let mut bytes = Vec::with_capacity(4 * n);
                    let salt = (m * 7919 + k * 104_729) as u32;
                    for i in 0..n as u32 {
                        let h = i.wrapping_mul(2_654_435_761) ^ salt;
                        let x = (h % 2001) as f32 / 1000.0 - 1.0;
                        bytes.extend_from_slice(&x.to_le_bytes());
                    }
                    (tensor, dims, bytes)
                })
                .collect();
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .map(|(tensor, dims, bytes)| {
                    let view = safetensors::tensor::TensorView::new(
                        safetensors::Dtype::F32,
                        dims.clone(),
                        bytes,
                    )
                    .unwrap();
                    (tensor.clone(), view)
                })
                .collect();
            let path = dir.join(format!("{name}.safetensors"));
            safetensors::serialize_to_file(views, None, &path).unwrap();
            path
        })
        .collect()
}

#[test]
fn cancelling_an_export_leaves_nothing_and_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let paths = slow_family(&dir.path().join("family"));
    let mut harness = harness_on(&paths);
    wait_for(&mut harness, "the family", |app| app.family.is_some());
    // Its analysis starts on its own (the family is small) and fills the panels in as it goes.
    wait_for(&mut harness, "a partial analysis", |app| {
        app.busy.is_some() && app.report.is_some()
    });
    harness.get_by_label("Sensitivity").click();
    harness.run_ok();
    harness.get_by_label_contains("Filling in as the analysis goes (");
    // Cancel it: what was measured stays, marked partial, with a way to start again.
    harness.get_by_label("Cancel").click();
    wait_for(&mut harness, "the analysis cancelled", |app| {
        app.busy.is_none()
    });
    let report = harness.state().report.clone().unwrap();
    assert!(report.partial().is_some(), "{:?}", report.limits);
    harness.get_by_label_contains("A partial analysis (");
    harness.get_by_label("Analyse again");
    harness.get_by_label("Export").click();
    harness.run_ok();

    // Writing into the inputs' folder is refused (even with "replace"), and nothing changes.
    let family = dir.path().join("family");
    let listing = || {
        let mut files: Vec<_> = std::fs::read_dir(&family)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), e.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    };
    let before = listing();
    // Replacing is off by default; on, an input's folder is still refused.
    harness.state_mut().export_force = true;
    harness.state_mut().export_dir = family.display().to_string();
    harness.get_by_label("Write the merged model").click();
    let notice = error_notice(&mut harness);
    assert!(notice.contains("outside every input"), "{notice}");
    assert_eq!(listing(), before);

    // Start a real export and cancel it half-way.
    let out = dir.path().join("merged");
    harness.state_mut().export_dir = out.display().to_string();
    harness.get_by_label("Write the merged model").click();
    wait_for(&mut harness, "the export under way", |app| {
        app.busy
            .as_ref()
            .is_some_and(|(_, fraction)| *fraction > 0.0)
    });
    let (stage, fraction) = harness.state().busy.clone().unwrap();
    assert!(fraction < 1.0, "{stage} {fraction}");
    harness.get_by_label("Cancel").click();
    wait_for(&mut harness, "the cancellation", |app| app.busy.is_none());
    let notice = harness.state().notice.clone().unwrap();
    assert_eq!(
        notice.text, "cancelled; nothing was written",
        "after {stage} {fraction}"
    );
    // Nothing is left: no output folder, no temporary one beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["family"], "{names:?}");
}

#[test]
fn previews_run_on_the_windows_own_gpu_device() {
    if std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() {
        return;
    }
    use mergescope_core::backend::BackendChoice;
    let on_gpu = |choice: BackendChoice| {
        Harness::builder()
            .with_size(egui::vec2(1200.0, 900.0))
            .wgpu()
            .build_eframe(move |cc| {
                let backend = mergescope::gui::make_backend(cc, choice);
                let mut app =
                    Workbench::with_backend(&cc.egui_ctx, backend).expect("the worker starts");
                app.open_paths(&[]);
                app
            })
    };
    let mut gpu = on_gpu(BackendChoice::Gpu);
    opened(&mut gpu);
    let described = gpu.state().backend.clone();
    assert!(described.starts_with("gpu: "), "{described}");
    gpu.get_by_label("Merge").click();
    wait_for(&mut gpu, "a full preview on the GPU", |app| {
        mean_accuracy(app).is_some()
    });
    let mut cpu = harness();
    opened(&mut cpu);
    cpu.get_by_label("Merge").click();
    wait_for(&mut cpu, "a full preview on the CPU", |app| {
        mean_accuracy(app).is_some()
    });
    // The same merge to within float rounding: the same predictions on every test digit.
    let (g, c) = (
        gpu.state().preview.clone().unwrap(),
        cpu.state().preview.clone().unwrap(),
    );
    assert_eq!(
        g.scores.keys().collect::<Vec<_>>(),
        c.scores.keys().collect::<Vec<_>>()
    );
    for (metric, value) in &c.scores {
        if metric.ends_with("accuracy") {
            assert_eq!(g.scores[metric], *value, "{metric}");
        }
    }
    let (gr, cr) = (
        g.survival.as_ref().unwrap().whole_model.models[0]
            .projection
            .unwrap(),
        c.survival.as_ref().unwrap().whole_model.models[0]
            .projection
            .unwrap(),
    );
    assert!((gr - cr).abs() < 1e-5, "{gr} vs {cr}");

    // `auto` computes on the window's device only when it is a hardware GPU.
    let mut auto = on_gpu(BackendChoice::Auto);
    opened(&mut auto);
    let described = auto.state().backend.clone();
    assert!(
        !(described.starts_with("gpu: ") && described.contains("software")),
        "{described}"
    );
}

#[test]
fn loading_a_recipe_opens_the_models_it_names() {
    let mut harness = harness();
    opened(&mut harness);
    let family = harness.state().family.clone().unwrap();
    harness.get_by_label("Merge").click();
    harness.run_ok();
    // The TIES recipe shipped beside the demo family names the open models: only the settings
    // change.
    let shipped = family
        .base
        .parent()
        .unwrap()
        .join("recipes")
        .join("ties.yml");
    harness.state_mut().recipe_path = shipped.display().to_string();
    harness.get_by_label("Load recipe").click();
    harness.run_ok();
    let settings = harness.state().settings.clone().unwrap();
    assert_eq!(settings.method, "ties");
    assert_eq!(settings.weights, vec![1.0; 4]);
    let densities: Vec<f64> = (0..4).map(|i| settings.model_value(i, "density")).collect();
    assert_eq!(densities, vec![0.5; 4]);

    // A recipe over two of the experts (by absolute path, with gradients) opens that family
    // first, then takes its settings; it is still scored on the demo's digits.
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("two.yml");
    std::fs::write(
        &recipe,
        format!(
            "merge_method: dare_ties\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: [0.2, 0.4, 0.8], density: 0.7}}\n  - model: {}\n    parameters: {{weight: 0.5, density: 0.3}}\ndtype: float32\n",
            family.base.display(),
            family.models[1].display(),
            family.models[3].display()
        ),
    )
    .unwrap();
    harness.state_mut().recipe_path = recipe.display().to_string();
    harness.get_by_label("Load recipe").click();
    wait_for(&mut harness, "the recipe's family", |app| {
        app.family.as_ref().is_some_and(|f| f.models.len() == 2)
    });
    let state = harness.state();
    let family = state.family.as_ref().unwrap();
    assert!(family.is_demo && family.builtin.is_none());
    let settings = state.settings.as_ref().unwrap();
    assert_eq!(settings.method, "dare_ties");
    assert!(settings.per_layer);
    assert_eq!(settings.curves, vec![vec![0.2, 0.4, 0.8], vec![0.5, 0.5]]);
    let densities: Vec<f64> = (0..2).map(|i| settings.model_value(i, "density")).collect();
    assert_eq!(densities, vec![0.7, 0.3]);
    assert!(
        state
            .notice
            .as_ref()
            .is_some_and(|n| !n.error && n.text.starts_with("opened and loaded")),
        "{:?}",
        state.notice
    );
    wait_for(
        &mut harness,
        "an accuracy preview of the new family",
        |app| mean_accuracy(app).is_some(),
    );
}

#[test]
fn matrices_per_module_and_heatmap_means() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(
        &mut harness,
        &["Sensitivity", "Fine-tune", "mean over models"],
    );
    assert_eq!(
        harness.state().selected_model,
        5,
        "four fine-tunes, the max, then the mean"
    );

    click_through(
        &mut harness,
        &[
            "Interference",
            "scope of the matrices",
            "module: attn q (every layer)",
        ],
    );
    assert_eq!(harness.state().selected_module.as_deref(), Some("attn q"));
    // Back to one layer: the module scope is dropped.
    click_through(&mut harness, &["scope of the matrices", "layer 2"]);
    let state = harness.state();
    assert_eq!(
        (state.selected_layer, state.selected_module.as_deref()),
        (Some(2), None)
    );
}

#[test]
fn a_large_family_is_previewed_from_a_sample_while_dragging() {
    let dir = tempfile::tempdir().unwrap();
    let paths = slow_family(&dir.path().join("family"));
    let mut harness = harness_on(&paths);
    wait_for(&mut harness, "the family", |app| app.family.is_some());
    // The preview does not wait for the analysis (which takes far longer here).
    harness.get_by_label("Merge").click();
    harness.run_ok();
    wait_for(&mut harness, "a full retention preview", |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
    });
    assert!(harness.state().busy.is_some(), "the analysis still runs");
    harness.get_by_label("Cancel").click();
    let full = harness.state().preview.clone().unwrap();
    assert!(full.scores.is_empty(), "not the demo's digits: no accuracy");
    assert_eq!(full.survival.as_ref().unwrap().sampled, None);
    assert_eq!(
        full.survival.as_ref().unwrap().layers.len(),
        17,
        "16 layers and the tensors outside them"
    );

    let rect = slider(&harness, "ft_1 weight"); // ft_1.safetensors, named without the suffix
    harness.drag_at(rect.left_center() + egui::vec2(4.0, 0.0));
    harness.step();
    harness.hover_at(rect.center());
    harness.step();
    wait_for(&mut harness, "a sampled preview while dragging", |app| {
        app.preview.as_ref().is_some_and(|p| !p.full)
    });
    let sampled = |app: &Workbench| app.preview.as_ref()?.survival.as_ref()?.sampled;
    assert!(sampled(harness.state()).is_some());
    harness.drop_at(rect.center());
    harness.step();
    wait_for(&mut harness, "the full preview after release", |app| {
        app.preview.as_ref().is_some_and(|p| p.full)
    });
    assert_eq!(sampled(harness.state()), None);
    assert!(
        harness.state().busy.is_none(),
        "the preview's progress ended with it"
    );
}

#[test]
fn choosing_a_method_shows_its_parameters() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge", "method", "della"]);
    // DELLA reads a density and an epsilon per model: a slider each.
    let rect = slider(&harness, "mirrored epsilon");
    harness.drag_at(rect.left_center() + egui::vec2(2.0, 0.0));
    harness.step();
    harness.drop_at(rect.left_center() + egui::vec2(2.0, 0.0));
    harness.run_ok();
    let settings = harness.state().settings.clone().unwrap();
    assert_eq!(settings.method, "della");
    assert!(settings.model_value(2, "epsilon") < 0.05);
    slider(&harness, "inverted density");
    wait_for(&mut harness, "a DELLA preview", |app| {
        app.preview
            .as_ref()
            .is_some_and(|p| p.full && p.yaml.starts_with("merge_method: della"))
    });
    let yaml = harness.state().preview.as_ref().unwrap().yaml.clone();
    assert_eq!(yaml.matches("epsilon: ").count(), 4, "{yaml}");
    assert!(!harness.state().notice.as_ref().is_some_and(|n| n.error));
}

#[test]
fn a_linear_merge_previews_and_its_recipe_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Merge", "method"]);
    harness.get_by_label("linear").click();
    wait_for(&mut harness, "a linear preview", |app| {
        app.preview
            .as_ref()
            .is_some_and(|p| p.full && p.yaml.starts_with("merge_method: linear"))
    });
    let preview = harness.state().preview.clone().unwrap();
    assert!(preview.scores.contains_key("mean/accuracy"));
    assert!(
        preview.survival.is_none(),
        "no base: no task vectors to follow"
    );
    assert!(!harness.state().notice.as_ref().is_some_and(|n| n.error));
    // Saved without a base, it loads back onto the open models.
    harness.state_mut().recipe_path = dir.path().join("linear.yml").display().to_string();
    harness.get_by_label("Save recipe").click();
    harness.run_ok();
    harness.state_mut().settings.as_mut().unwrap().method = "ties".to_owned();
    harness.run_ok();
    harness.get_by_label("Load recipe").click();
    harness.run_ok();
    let notice = harness.state().notice.clone().unwrap();
    assert!(!notice.error, "{}", notice.text);
    assert_eq!(harness.state().settings.as_ref().unwrap().method, "linear");
}

/// Runs a Pareto search from the panel with `budget` evaluations (quick on the demo) and waits
/// for its map.
fn pareto_search(harness: &mut Harness<'_, Workbench>, budget: usize) {
    harness.state_mut().pareto.budget = budget;
    click_through(harness, &["Search the front"]);
    assert!(harness.state().pareto.running);
    wait_for(harness, "the search and its map", |app| {
        app.pareto.map.is_some()
    });
}

/// Drags the slider labelled `label` to its right end and lets go.
/// The Merge panel's weights are the map's coefficients for the panel's preference.
fn weights_follow_the_map(app: &Workbench) {
    let x = app.pareto.coefficients().expect("a map");
    let weights = &app.settings.as_ref().unwrap().weights;
    assert_eq!(weights.len(), x.len());
    for (w, x) in weights.iter().zip(&x) {
        assert!((w - x).abs() < 1e-4, "{weights:?} vs {x:?}");
    }
}

#[test]
fn a_pareto_search_shows_its_front_and_the_preference_moves_the_merge() {
    let mut harness = harness();
    opened(&mut harness);
    click_through(&mut harness, &["Pareto", "quick estimate"]);
    pareto_search(&mut harness, 14);
    let app = harness.state();
    assert_eq!(app.pareto.objectives.len(), 4);
    assert!(app.pareto.points.len() >= 10, "{}", app.pareto.points.len());
    assert!(app.pareto.on_front().iter().any(|f| *f));
    assert!(app.pareto.outcome.as_ref().unwrap().evaluations() <= 14);
    harness.get_by_label("leave-one-out R²");

    // Four objectives: linked bars. Pulling one to the end leaves the others nothing.
    drag_slider_to_the_end(&mut harness, "upright");
    let app = harness.state();
    let w = app.pareto.preference.clone();
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{w:?}");
    assert!(w[0] > 0.95, "{w:?}");
    weights_follow_the_map(app);
    // The preview follows the merge the preference gives.
    let family = app.family.clone().unwrap();
    let yaml = app.settings.as_ref().unwrap().to_yaml(&family);
    wait_for(&mut harness, "the preference's full preview", |app| {
        app.preview
            .as_ref()
            .is_some_and(|p| p.full && p.yaml == yaml)
    });

    // A front point's button loads its coefficients into the Merge panel.
    let app = harness.state();
    let i = app.pareto.on_front().iter().position(|f| *f).unwrap();
    let coefficients = app.pareto.points[i].coefficients.clone();
    // Below the fold: scroll to it first, as a user would.
    harness.get_by_label(&format!("Load #{i}")).scroll_to_me();
    harness.run_ok();
    click_through(&mut harness, &[&format!("Load #{i}")]);
    let weights = harness.state().settings.as_ref().unwrap().weights.clone();
    for (w, c) in weights.iter().zip(&coefficients) {
        assert!((w - c).abs() < 1e-4, "{weights:?} vs {coefficients:?}");
    }
    assert!(
        harness
            .state()
            .notice
            .as_ref()
            .is_some_and(|n| n.text.contains(&format!("loaded point #{i}")))
    );

    harness.state_mut().notice = None;
    save_screenshot(&mut harness, Panel::Pareto, "pareto.png");

    // The map saves as JSON that loads back with the same coefficients.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    harness.state_mut().pareto.map_path = path.display().to_string();
    harness.run_ok();
    click_through(&mut harness, &["Save the map"]);
    let loaded = mergescope_core::pareto::PreferenceMap::load(&path).unwrap();
    let w = harness.state().pareto.preference.clone();
    assert_eq!(
        loaded.coefficients(&w),
        harness
            .state()
            .pareto
            .map
            .as_ref()
            .unwrap()
            .coefficients(&w)
    );
}

/// The demo family's base and its first `experts` experts, on disk.
fn demo_subfamily(dir: &std::path::Path, experts: usize) -> Vec<std::path::PathBuf> {
    let family = mergescope_core::eval::DemoFamily::extract(dir).unwrap();
    let mut paths = vec![family.base()];
    paths.extend(
        mergescope_core::eval::Domain::ALL
            .iter()
            .take(experts)
            .map(|&d| family.expert(d)),
    );
    paths
}

#[test]
fn three_objectives_take_a_triangle_and_two_a_slider() {
    let dir = tempfile::tempdir().unwrap();
    // Three experts, scored by retention: a preference point in a triangle.
    let mut harness = harness_on(&demo_subfamily(dir.path(), 3));
    opened(&mut harness);
    click_through(
        &mut harness,
        &["Pareto", "objective", "retention (data-free)"],
    );
    pareto_search(&mut harness, 12);
    assert_eq!(harness.state().pareto.objectives.len(), 3);
    let triangle = harness.get_by_label("preference triangle").rect();
    // The top corner is the first objective.
    let corner = egui::pos2(triangle.center().x, triangle.top() + 18.0);
    harness.drag_at(triangle.center());
    harness.step();
    harness.hover_at(corner);
    harness.step();
    harness.drop_at(corner);
    harness.run_ok();
    let app = harness.state();
    assert!(
        app.pareto.preference[0] > 0.9,
        "{:?}",
        app.pareto.preference
    );
    weights_follow_the_map(app);
    drop(harness);

    // Two experts: one slider between the two tasks.
    let mut harness = harness_on(&demo_subfamily(dir.path(), 2));
    opened(&mut harness);
    click_through(
        &mut harness,
        &["Pareto", "objective", "retention (data-free)"],
    );
    pareto_search(&mut harness, 10);
    drag_slider_to_the_end(&mut harness, "on rotated (the rest on upright)");
    let app = harness.state();
    assert!(
        app.pareto.preference[0] > 0.95,
        "{:?}",
        app.pareto.preference
    );
    weights_follow_the_map(app);
}

#[test]
fn a_cancelled_search_keeps_its_points_and_the_worker_goes_on() {
    let mut harness = harness();
    opened(&mut harness);
    // All test digits: slow enough in a test build to be stopped part-way.
    click_through(&mut harness, &["Pareto", "Search the front"]);
    wait_for(&mut harness, "the first points", |app| {
        app.pareto.points.len() >= 3
    });
    click_through(&mut harness, &["Cancel search"]);
    wait_for(&mut harness, "the search to stop", |app| {
        !app.pareto.running
    });
    let app = harness.state();
    assert!(app.pareto.outcome.is_none() && app.pareto.map.is_none());
    assert!(app.pareto.points.len() >= 3);
    assert!(app.pareto.points.len() < 60);
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("cancelled"))
    );
    // The worker takes the next job.
    click_through(&mut harness, &["quick estimate"]);
    pareto_search(&mut harness, 10);
}
