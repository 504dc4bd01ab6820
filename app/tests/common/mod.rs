//! What the workbench's kittest suites share: a harness on a family, stepping until the worker
//! answers, clicking through labels, and screenshots for the README.
// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;

/// The workbench on the models at `paths` (base first; the demo family when empty), merging
/// on the CPU, in a 1200×900 window.
pub fn harness_on(paths: &[PathBuf]) -> Harness<'static, Workbench> {
    harness_sized(paths, egui::vec2(1200.0, 900.0))
}

/// [`harness_on`] in a window of `size` points.
/// Its history is not saved (tests must not write to the user's data folder).
pub fn harness_sized(paths: &[PathBuf], size: egui::Vec2) -> Harness<'static, Workbench> {
    harness_with(paths, size, |app| app.data_dir = None)
}

/// [`harness_sized`], with `configure` run on the workbench before its first frame (before the
/// family has opened).
pub fn harness_with(
    paths: &[PathBuf],
    size: egui::Vec2,
    configure: impl FnOnce(&mut Workbench) + 'static,
) -> Harness<'static, Workbench> {
    let paths = paths.to_vec();
    Harness::builder().with_size(size).build_eframe(move |cc| {
        let mut app = Workbench::new(&cc.egui_ctx, &paths).expect("the worker starts");
        configure(&mut app);
        app
    })
}

/// The workbench on the demo family.
pub fn harness() -> Harness<'static, Workbench> {
    harness_on(&[])
}

/// Steps the UI until `found` finds something in the workbench's state and returns it as it
/// was then (the worker answers asynchronously), or fails after 3 minutes (a hang guard: CI
/// machines are slow and run tests side by side).
pub fn step_until<T>(
    harness: &mut Harness<'_, Workbench>,
    what: &str,
    found: impl Fn(&Workbench) -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = found(harness.state()) {
            return value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}; notice: {:?}",
            harness.state().notice
        );
        std::thread::sleep(Duration::from_millis(10));
        harness.step();
    }
}

/// Steps the UI until `done` holds, then lets it settle.
pub fn wait_for(
    harness: &mut Harness<'_, Workbench>,
    what: &str,
    done: impl Fn(&Workbench) -> bool,
) {
    step_until(harness, what, |app| done(app).then_some(()));
    harness.run_ok();
}

/// The demo family (or the family given) open with its whole analysis.
pub fn opened(harness: &mut Harness<'_, Workbench>) {
    wait_for(harness, "the family and its whole analysis", |app| {
        app.family.is_some() && app.report.as_ref().is_some_and(|r| r.partial().is_none())
    });
}

/// Clicks the widgets labelled `labels` one after the other, each in a frame of its own (a
/// tab, then a combo box, then its entry).
pub fn click_through(harness: &mut Harness<'_, Workbench>, labels: &[&str]) {
    for label in labels {
        harness.get_by_label(label).click();
        harness.run_ok();
    }
}

/// The slider labelled `label` (its value box carries the label too).
pub fn slider(harness: &Harness<'_, Workbench>, label: &str) -> egui::Rect {
    harness.get_by_role_and_label(Role::Slider, label).rect()
}

/// Waits for an error notice and returns its text.
pub fn error_notice(harness: &mut Harness<'_, Workbench>) -> String {
    wait_for(harness, "an error notice", |app| {
        app.notice.as_ref().is_some_and(|n| n.error)
    });
    harness.state().notice.clone().unwrap().text
}

/// For the README, with `MERGESCOPE_SCREENSHOT_DIR=$PWD/docs/screenshots cargo test -p
/// mergescope --test …`: the window on `panel`, rendered by kittest's wgpu renderer.
pub fn save_screenshot(harness: &mut Harness<'_, Workbench>, panel: Panel, name: &str) {
    let Some(dir) = std::env::var_os("MERGESCOPE_SCREENSHOT_DIR") else {
        return;
    };
    harness.state_mut().panel = panel;
    harness.run_ok();
    let image = harness.render().expect("kittest renders with wgpu");
    image.save(Path::new(&dir).join(name)).unwrap();
}

/// Drags the slider labelled `label` from its left end to its right end.
pub fn drag_slider_to_the_end(harness: &mut Harness<'_, Workbench>, label: &str) {
    let rect = slider(harness, label);
    harness.drag_at(rect.left_center() + egui::vec2(4.0, 0.0));
    harness.step();
    harness.hover_at(rect.right_center() - egui::vec2(2.0, 0.0));
    harness.step();
    harness.drop_at(rect.right_center() - egui::vec2(2.0, 0.0));
    harness.run_ok();
}

/// eframe's storage, in memory.
#[derive(Default)]
pub struct MemoryStorage(HashMap<String, String>);

impl eframe::Storage for MemoryStorage {
    fn get_string(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn set_string(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }

    fn remove_string(&mut self, key: &str) {
        self.0.remove(key);
    }

    fn flush(&mut self) {}
}

/// Writes `tensors` (name, shape, little-endian bytes of `dtype`) as one safetensors file.
pub fn write_safetensors(
    path: &Path,
    dtype: safetensors::Dtype,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
) {
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Writes a Llama-named model into `folder`: `model.safetensors` with `tensors` (name, shape)
/// in `dtype` (F32, or BF16 as each f32's top half), element `i` of tensor `t` being
/// `value(t, &name, i)`, and a `config.json` with `layers` layers. Returns the folder.
pub fn write_llama(
    folder: &Path,
    tensors: Vec<(String, Vec<usize>)>,
    dtype: safetensors::Dtype,
    layers: usize,
    value: impl Fn(usize, &str, usize) -> f32,
) -> PathBuf {
    use safetensors::Dtype;
    std::fs::create_dir_all(folder).unwrap();
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            let values = (0..n).map(|i| value(t, &name, i));
            let bytes = match dtype {
                Dtype::F32 => values.flat_map(f32::to_le_bytes).collect(),
                // Truncated, still a valid bf16.
                Dtype::BF16 => values
                    .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                    .collect(),
                other => panic!("write_llama writes F32 or BF16, not {other:?}"),
            };
            (name, shape, bytes)
        })
        .collect();
    write_safetensors(&folder.join("model.safetensors"), dtype, &data);
    let torch_dtype = if dtype == Dtype::BF16 {
        "bfloat16"
    } else {
        "float32"
    };
    std::fs::write(
        folder.join("config.json"),
        format!(
            r#"{{"architectures": ["LlamaForCausalLM"], "num_hidden_layers": {layers}, "torch_dtype": "{torch_dtype}"}}"#
        ),
    )
    .unwrap();
    folder.to_path_buf()
}

/// Steps until the notice starts with `prefix`; returns its text.
pub fn notice_starting(harness: &mut Harness<'_, Workbench>, prefix: &str) -> String {
    step_until(harness, prefix, |app| {
        app.notice
            .as_ref()
            .filter(|n| n.text.starts_with(prefix))
            .map(|n| n.text.clone())
    })
}

/// Bytes of each domain's held-out text the language-model demo is scored on in tests: the
/// whole texts take minutes per model in an unoptimised build.
pub const LM_DEMO_TEXT_BYTES: usize = 800;

/// Opens the built-in language-model demo (as its button in the Models panel does) and waits
/// until it is open with its own `texts` folder chosen; then scores it on the first
/// [`LM_DEMO_TEXT_BYTES`] of each of those texts instead, copied into the folder returned.
/// The whole texts are never read: the folder is replaced before they arrive.
pub fn open_lm_demo(harness: &mut Harness<'_, Workbench>) -> tempfile::TempDir {
    harness.state_mut().open_lm_demo();
    lm_demo_opened(harness)
}

/// [`open_lm_demo`] once it was asked for (its button clicked).
pub fn lm_demo_opened(harness: &mut Harness<'_, Workbench>) -> tempfile::TempDir {
    use mergescope::gui::state::BuiltinDemo;
    let root = step_until(harness, "the language-model demo to open", |app| {
        app.family
            .as_ref()
            .filter(|f| f.builtin == Some(BuiltinDemo::Language))
            .map(|f| f.base.parent().unwrap().to_path_buf())
    });
    let app = harness.state();
    assert_eq!(
        app.texts.dir.as_deref(),
        Some(root.join("texts").as_path()),
        "its texts are chosen as it opens"
    );
    assert!(app.texts.loading, "and are being read");
    let short = tempfile::tempdir().unwrap();
    for domain in mergescope_core::eval::lm::demo::DOMAINS {
        let name = format!("{domain}.txt");
        let text = std::fs::read_to_string(root.join("texts").join(&name)).unwrap();
        let end = text
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| i >= LM_DEMO_TEXT_BYTES)
            .unwrap_or(text.len());
        std::fs::write(short.path().join(name), &text[..end]).unwrap();
    }
    harness.state_mut().set_texts(short.path().to_path_buf());
    harness.run_ok();
    short
}

/// Steps until the open language-model family's merge has its full preview on the texts
/// loaded, with the base's and each model's perplexities beside it (the Merge panel, which
/// asks for the preview, must be showing).
pub fn lm_previewed(harness: &mut Harness<'_, Workbench>) {
    wait_for(harness, "the merge previewed on the texts", |app| {
        let texts = app.texts.loaded.as_ref().map(|t| &t.dir);
        texts.is_some()
            && app.preview.as_ref().is_some_and(|p| {
                p.full
                    && p.is_perplexity()
                    && p.inputs.as_ref().is_some_and(|i| i.texts.as_ref() == texts)
            })
    });
}

/// A word-level `tokenizer.json` in `folder` whose `words` tokens are `w0`, `w1`, … (split on
/// whitespace; `w0` stands for unknown words): the tiny language-model families' tokenizer.
pub fn write_word_tokenizer(folder: &Path, words: usize) {
    let vocab: Vec<String> = (0..words).map(|i| format!("\"w{i}\": {i}")).collect();
    std::fs::write(
        folder.join("tokenizer.json"),
        format!(
            r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}},
                "post_processor": null, "decoder": null,
                "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "w0"}}}}"#,
            vocab.join(", ")
        ),
    )
    .unwrap();
}
