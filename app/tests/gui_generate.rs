//! The Merge panel's generation preview on a tiny language-model family: a prompt typed, the
//! base, each expert and the merge write for it, a slider moved changes what the merge
//! writes, and Stop stops it.

mod common;

use std::path::{Path, PathBuf};

use common::{drag_slider_to_the_end, harness_with, step_until};
use egui::accesskit::Role;
use egui_kittest::kittest::{By, NodeT as _, Queryable as _};
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;
use mergescope::gui::generator::{Column, ColumnState};

/// A two-layer Llama over the words `w0` … `w49` whose text a constant dominates: the
/// embeddings share a large first dimension the blocks barely change, so the head's first
/// column gives each token a fixed logit; `favour` raises one token's by a strength. Experts
/// favouring different words write different words, and a task-arithmetic merge writes the
/// word of the expert it weighs most.
fn tiny_lm(folder: &Path, favour: Option<(usize, f32)>) {
    std::fs::create_dir_all(folder).unwrap();
    let wave = |salt: usize| move |i: usize| ((i * 31 + salt * 17) % 23) as f32 * 0.02 - 0.22;
    let tensor = |name: &str, shape: &[usize], f: &dyn Fn(usize) -> f32| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(f).collect();
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        (name.to_owned(), shape.to_vec(), bytes)
    };
    let mut head: Vec<f32> = (0..50 * 32).map(wave(2)).collect();
    if let Some((token, strength)) = favour {
        head[token * 32] += strength;
    }
    let embed = |i: usize| {
        if i.is_multiple_of(32) {
            1.0
        } else {
            wave(1)(i)
        }
    };
    let mut tensors = vec![
        tensor("model.embed_tokens.weight", &[50, 32], &embed),
        tensor("model.norm.weight", &[32], &|_| 1.0),
        tensor("lm_head.weight", &[50, 32], &|i| head[i]),
    ];
    for l in 0..2 {
        for (k, (name, shape)) in [
            ("self_attn.q_proj", [32, 32]),
            ("self_attn.k_proj", [16, 32]),
            ("self_attn.v_proj", [16, 32]),
            ("self_attn.o_proj", [32, 32]),
            ("mlp.gate_proj", [48, 32]),
            ("mlp.up_proj", [48, 32]),
            ("mlp.down_proj", [32, 48]),
        ]
        .into_iter()
        .enumerate()
        {
            // The blocks' outputs, small beside the constant.
            let scale = if name.ends_with("o_proj") || name.ends_with("down_proj") {
                0.1
            } else {
                1.0
            };
            let f = wave(3 + l * 7 + k);
            tensors.push(tensor(
                &format!("model.layers.{l}.{name}.weight"),
                &shape,
                &|i| f(i) * scale,
            ));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push(tensor(
                &format!("model.layers.{l}.{norm}.weight"),
                &[32],
                &|_| 1.0,
            ));
        }
    }
    common::write_safetensors(
        &folder.join("model.safetensors"),
        safetensors::Dtype::F32,
        &tensors,
    );
    // A long context, so a long generation can be stopped half way.
    std::fs::write(
        folder.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
            "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 2048,
            "tie_word_embeddings": false}"#,
    )
    .unwrap();
    common::write_word_tokenizer(folder, 50);
}

/// `base/`, `a/` (favours `w7`) and `b/` (favours `w21`, more strongly).
fn family(root: &Path) -> Vec<PathBuf> {
    let paths = [
        ("base", None),
        ("a", Some((7, 3.0))),
        ("b", Some((21, 5.0))),
    ];
    paths
        .into_iter()
        .map(|(name, favour)| {
            tiny_lm(&root.join(name), favour);
            root.join(name)
        })
        .collect()
}

const COLUMNS: [Column; 4] = [
    Column::Base,
    Column::Model(0),
    Column::Model(1),
    Column::Merge,
];

fn finished(app: &Workbench, column: Column) -> bool {
    matches!(
        app.generation.state_of(column),
        Some(ColumnState::Finished { .. })
    )
}

fn text(app: &Workbench, column: Column) -> String {
    app.generation
        .text_of(column)
        .unwrap_or_default()
        // The continuation starts with the space after the prompt.
        .trim_start()
        .to_owned()
}

/// Tokens each column writes: enough that the text is seen coming.
const N: usize = 40;

fn words(word: &str, n: usize) -> String {
    vec![word; n].join(" ")
}

#[test]
fn the_base_experts_and_merge_write_for_a_prompt_and_the_merge_follows_the_sliders() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(dir.path());
    let size = egui::vec2(1024.0, 700.0);
    let mut harness = harness_with(&paths, size, |app| {
        app.data_dir = None;
        app.panel = Panel::Merge;
    });
    step_until(
        &mut harness,
        "the family to be seen as a language model",
        |app| app.generation.is_language_model().filter(|&yes| yes),
    );
    harness.state_mut().generation.max_tokens = N;
    harness.run_ok();
    // The section is under the preview: scrolled into view first.
    harness.get_by_label("Generate").scroll_to_me();
    harness.run_ok();
    harness
        .get_by_role_and_label(Role::TextInput, "Prompt")
        .focus();
    harness.run_ok();
    harness
        .get_by_role_and_label(Role::TextInput, "Prompt")
        .type_text("w3 w17 w42");
    harness.run_ok();
    assert_eq!(harness.state().generation.prompt, "w3 w17 w42");
    harness.get_by_label("Generate").click();
    // The columns fill one after another, each as its tokens come: some text shows before
    // all of it is there.
    let partial = std::cell::Cell::new(false);
    step_until(&mut harness, "every column written", |app| {
        if let Some(ColumnState::Failed(why)) = app.generation.state_of(Column::Base) {
            panic!("{why}");
        }

        let done = COLUMNS.iter().filter(|&&c| finished(app, c)).count();
        let some = COLUMNS.iter().any(|&c| !text(app, c).is_empty());
        partial.set(partial.get() || done < COLUMNS.len() && some);
        (done == COLUMNS.len()).then_some(())
    });
    assert!(partial.get(), "the text came all at once");
    let app = harness.state();
    assert_eq!(text(app, Column::Model(0)), words("w7", N));
    assert_eq!(text(app, Column::Model(1)), words("w21", N));
    let base = text(app, Column::Base);
    assert_eq!(base.split_whitespace().count(), N, "{base}");
    let merge = text(app, Column::Merge);
    assert_eq!(merge.split_whitespace().count(), N, "{merge}");
    // Every column is on screen, and none of the section's controls overlaps another or
    // leaves the window at 1024 × 700.
    let app = harness.state();
    let shown: Vec<String> = COLUMNS.iter().map(|&c| text(app, c)).collect();
    for label in ["base", "a", "b", "merge"]
        .iter()
        .chain(&shown.iter().map(String::as_str).collect::<Vec<_>>())
    {
        assert!(
            harness.query_all(By::new().label(label)).next().is_some(),
            "`{label}` is not shown"
        );
    }
    let problems = overlaps(&harness, size);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // More of a's weight: once the slider settles, the merge writes a's word.
    harness
        .get_by_role_and_label(Role::Slider, "a weight")
        .scroll_to_me();
    harness.run_ok();
    drag_slider_to_the_end(&mut harness, "a weight");
    let yaml = current_yaml(harness.state());
    let moved = step_until(&mut harness, "the merge written again", |app| {
        (app.generation.merge_yaml.as_deref() == Some(yaml.as_str())
            && finished(app, Column::Merge))
        .then(|| text(app, Column::Merge))
    });
    assert_ne!(moved, merge);
    assert_eq!(moved, words("w7", N));
    // The inputs were not written again.
    assert_eq!(text(harness.state(), Column::Base), base);
}

/// The Merge panel's recipe as the workbench makes it.
fn current_yaml(app: &Workbench) -> String {
    app.settings
        .as_ref()
        .unwrap()
        .to_yaml(app.family.as_ref().unwrap())
}

#[test]
fn stop_cancels_a_long_generation_and_keeps_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(dir.path());
    let mut harness = harness_with(&paths, egui::vec2(1200.0, 900.0), |app| {
        app.data_dir = None;
        app.panel = Panel::Merge;
    });
    step_until(
        &mut harness,
        "the family to be seen as a language model",
        |app| app.generation.is_language_model().filter(|&yes| yes),
    );
    // As many tokens as the context allows: far longer than a few frames.
    harness.state_mut().generation.max_tokens = 1024;
    harness.state_mut().generation.prompt = "w1 w2".to_owned();
    harness.get_by_label("Generate").scroll_to_me();
    harness.run_ok();
    harness.get_by_label("Generate").click();
    step_until(&mut harness, "the base to start writing", |app| {
        (!text(app, Column::Base).is_empty()).then_some(())
    });
    harness.get_by_label("Stop").click();
    harness.step();
    let app = harness.state();
    assert!(!app.generation.running);
    assert_eq!(
        app.generation.state_of(Column::Merge),
        Some(&ColumnState::Stopped)
    );
    let written: Vec<String> = COLUMNS.iter().map(|&c| text(app, c)).collect();
    assert!(!written[0].is_empty());
    // Nothing more arrives.
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(10));
        harness.step();
    }
    let app = harness.state();
    assert_eq!(
        COLUMNS.iter().map(|&c| text(app, c)).collect::<Vec<_>>(),
        written
    );
    assert!(COLUMNS.iter().all(|&c| !matches!(
        app.generation.state_of(c),
        Some(ColumnState::Writing | ColumnState::Waiting)
    )));
}

/// Controls of the generation section (from its header down) that overlap another, or stick
/// out of the window.
fn overlaps(harness: &egui_kittest::Harness<'_, Workbench>, size: egui::Vec2) -> Vec<String> {
    let top = harness.get_by_label("Text generation").rect().min.y;
    let mut rects: Vec<(String, egui::Rect)> = Vec::new();
    let mut problems = Vec::new();
    for role in [
        Role::Button,
        Role::CheckBox,
        Role::Slider,
        Role::ComboBox,
        Role::TextInput,
        Role::SpinButton,
        Role::RadioButton,
    ] {
        for node in harness.query_all(By::new().role(role)) {
            let rect = node.rect();
            if rect.min.y < top || rect.min.y > size.y || rect.area() < 1.0 {
                continue;
            }
            let label = node.accesskit_node().label().unwrap_or_default();
            if rect.min.x < -0.5 || rect.max.x > size.x + 0.5 {
                problems.push(format!("`{label}` ({role:?}) is cut off at {rect:?}"));
            }
            rects.push((format!("`{label}` ({role:?})"), rect));
        }
    }
    for (i, (a, ra)) in rects.iter().enumerate() {
        for (b, rb) in &rects[i + 1..] {
            let overlap = ra.intersect(*rb);
            if overlap.width() > 1.0 && overlap.height() > 1.0 {
                problems.push(format!("{a} at {ra:?} overlaps {b} at {rb:?}"));
            }
        }
    }
    problems
}
