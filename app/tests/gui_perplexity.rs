//! A language-model family in the workbench: texts chosen in the Merge panel, the merge's
//! perplexity per domain beside its base and each model, a quick grade while a slider is held
//! and the full one on release, the history, the Pareto objectives, and clear messages for
//! texts that cannot be read and architectures that do not run in process.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{
    MemoryStorage, error_notice, harness_on, harness_with, opened, slider, step_until, wait_for,
};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;

/// A two-layer Llama over the words `w0` … `w49` (weights, config.json, a word-level
/// tokenizer.json); `shift` moves every weight but the norms: fine-tunes of one base.
fn tiny_llama(folder: &Path, shift: f32, architecture: &str) {
    std::fs::create_dir_all(folder).unwrap();
    let wave = |salt: usize, n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let v =
                    ((i * 31 + salt * 17) % 23) as f32 * 0.02 - 0.22 + shift * (salt % 3) as f32;
                v.to_le_bytes()
            })
            .collect()
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    let mut tensors = vec![
        (
            "model.embed_tokens.weight".to_owned(),
            vec![50, 32],
            wave(1, 1600),
        ),
        ("model.norm.weight".to_owned(), vec![32], ones(32)),
        ("lm_head.weight".to_owned(), vec![50, 32], wave(2, 1600)),
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
            tensors.push((
                format!("model.layers.{l}.{name}.weight"),
                shape.to_vec(),
                wave(3 + l * 7 + k, shape[0] * shape[1]),
            ));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((
                format!("model.layers.{l}.{norm}.weight"),
                vec![32],
                ones(32),
            ));
        }
    }
    common::write_safetensors(
        &folder.join("model.safetensors"),
        safetensors::Dtype::F32,
        &tensors,
    );
    std::fs::write(
        folder.join("config.json"),
        format!(
            r#"{{"architectures": ["{architecture}"], "model_type": "llama", "hidden_size": 32,
            "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false}}"#
        ),
    )
    .unwrap();
    common::write_word_tokenizer(folder, 50);
}

/// A base and two fine-tunes, and a folder of two text domains (a `.txt` and a `.jsonl`)
/// named `domains` (a `texts` folder would be the family's default). Returns the models (base
/// first) and the texts' folder.
fn lm_family(root: &Path, architecture: &str) -> (Vec<PathBuf>, PathBuf) {
    let models: Vec<PathBuf> = ["base", "a", "b"].iter().map(|m| root.join(m)).collect();
    for (path, shift) in models.iter().zip([0.0, 0.06, -0.06]) {
        tiny_llama(path, shift, architecture);
    }
    let texts = root.join("domains");
    std::fs::create_dir_all(&texts).unwrap();
    let words = |step: usize, n: usize| -> String {
        (0..n)
            .map(|i| format!("w{} ", (i * step + 1) % 50))
            .collect()
    };
    std::fs::write(texts.join("code.txt"), words(7, 300)).unwrap();
    let documents: String = (0..5)
        .map(|d| format!("{{\"text\": \"{}\"}}\n", words(3 + d, 40)))
        .collect();
    std::fs::write(texts.join("prose.jsonl"), documents).unwrap();
    (models, texts)
}

/// The preview once it is a full one of perplexities, compared with its inputs on the texts.
fn full_perplexity_preview(
    harness: &mut Harness<'_, Workbench>,
    after: Option<&str>,
) -> (String, f64, f64) {
    step_until(
        harness,
        "a full perplexity preview with its inputs",
        |app| {
            let p = app.preview.as_ref()?;
            let scored = p.inputs.as_ref().is_some_and(|i| i.texts.is_some());
            (p.full && p.is_perplexity() && scored && after.is_none_or(|y| p.yaml != y))
                .then(|| (p.yaml.clone(), p.scores["code/perplexity"], p.millis))
        },
    )
}

#[test]
fn a_language_model_familys_merge_is_previewed_by_its_perplexity_per_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (models, texts) = lm_family(dir.path(), "LlamaForCausalLM");
    let mut harness = harness_on(&models);
    opened(&mut harness);
    assert!(
        harness
            .state()
            .family
            .as_ref()
            .unwrap()
            .language_model
            .is_some()
    );
    harness.state_mut().panel = Panel::Merge;
    harness.run_ok();
    harness.get_by_label("Texts:");
    harness.get_by_label_contains("none chosen");
    harness.state_mut().set_texts(texts.clone());
    let (yaml, before, full_ms) = full_perplexity_preview(&mut harness, None);
    harness.run_ok();
    // The table: the merge, the base and each model, a column per domain, lower is better.
    harness.get_by_label_contains("Preview: perplexity of the merge per text domain");
    harness.get_by_label("domains: code (300 tokens), prose (200 tokens)");
    for label in [
        "this merge",
        "base",
        "a",
        "b",
        "code",
        "prose",
        "vs base",
        "vs best single",
    ] {
        assert!(harness.get_all_by_label(label).next().is_some(), "{label}");
    }
    let app = harness.state();
    let preview = app.preview.as_ref().unwrap();
    let inputs = preview.inputs.as_ref().unwrap().for_grade(true);
    let base = inputs.base.as_ref().unwrap()["code/perplexity"];
    assert!(base.is_finite() && base > 1.0, "{base}");
    assert_eq!(inputs.models.len(), 2);
    assert_ne!(inputs.models[0].1["code/perplexity"], base);
    let shown = mergescope_core::eval::compare::format_value("code/perplexity", before);
    assert!(harness.get_all_by_label(&shown).next().is_some(), "{shown}");
    // The history keeps it.
    let entry = app.history.entries.last().unwrap();
    assert_eq!(entry.objective, "perplexity");
    assert_eq!(entry.scores["code/perplexity"], before);
    // And an export's model card.
    let card = mergescope::gui::panels::export::card_scores(app, &yaml).unwrap();
    assert_eq!(card.objective, "perplexity (all text)");
    assert!(card.comparison.metric("code/perplexity").is_some());

    // Held: quick previews on each domain's first tokens; released: the full text.
    let rect = slider(&harness, "a weight");
    harness.drag_at(rect.left_center() + egui::vec2(4.0, 0.0));
    harness.step();
    harness.hover_at(rect.center());
    let quick_ms = step_until(&mut harness, "a quick perplexity preview", |app| {
        let p = app.preview.as_ref()?;
        (!p.full && p.is_perplexity() && p.yaml != yaml).then_some(p.millis)
    });
    harness.drop_at(rect.center());
    harness.run_ok();
    let (_, after, _) = full_perplexity_preview(&mut harness, Some(&yaml));
    assert_ne!(after, before, "the merge's perplexity follows the slider");
    eprintln!("preview of the tiny Llama: quick {quick_ms:.1} ms, full {full_ms:.1} ms");

    // The Pareto panel offers one objective per domain.
    harness.state_mut().panel = Panel::Pareto;
    harness.run_ok();
    assert_eq!(
        harness.state().pareto.objective,
        mergescope::gui::pareto::ParetoObjective::Perplexity
    );
    harness.state_mut().pareto.budget = 8;
    harness.get_by_label("Search the front").click();
    wait_for(&mut harness, "the Pareto search", |app| {
        app.pareto.outcome.is_some() || app.notice.as_ref().is_some_and(|n| n.error)
    });
    let names: Vec<(String, bool)> = harness
        .state()
        .pareto
        .objectives
        .iter()
        .map(|o| {
            (
                o.name.clone(),
                o.direction == mergescope_core::pareto::Direction::Min,
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("code/nll".to_owned(), true),
            ("prose/nll".to_owned(), true)
        ],
        "{:?}",
        harness.state().notice
    );
}

#[test]
fn the_texts_folder_is_remembered_for_the_family() {
    let dir = tempfile::tempdir().unwrap();
    let (models, texts) = lm_family(dir.path(), "LlamaForCausalLM");
    let mut harness = harness_on(&models);
    opened(&mut harness);
    harness.state_mut().set_texts(texts.clone());
    wait_for(&mut harness, "the texts", |app| app.texts.loaded.is_some());
    let mut storage = MemoryStorage::default();
    eframe::App::save(harness.state_mut(), &mut storage);
    drop(harness);
    let mut harness = harness_with(&models, egui::vec2(1200.0, 900.0), move |app| {
        app.data_dir = None;
        app.load_remembered(Some(&storage));
    });
    harness.state_mut().panel = Panel::Merge;
    full_perplexity_preview(&mut harness, None);
    assert_eq!(harness.state().texts.dir.as_deref(), Some(texts.as_path()));
    drop(harness);

    // Without one remembered, a `texts` folder beside the base is the default (the language-
    // model demo family ships its domains' held-out text so).
    let beside = dir.path().join("texts");
    std::fs::rename(&texts, &beside).unwrap();
    let mut harness = harness_on(&models);
    harness.state_mut().panel = Panel::Merge;
    full_perplexity_preview(&mut harness, None);
    assert_eq!(harness.state().texts.dir.as_deref(), Some(beside.as_path()));
}

#[test]
fn texts_that_cannot_be_read_are_a_message_and_the_preview_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (models, texts) = lm_family(dir.path(), "LlamaForCausalLM");
    std::fs::write(
        texts.join("prose.jsonl"),
        "{\"text\": \"w1 w2\"}\n{\"body\": 3}\n",
    )
    .unwrap();
    let mut harness = harness_on(&models);
    opened(&mut harness);
    harness.state_mut().panel = Panel::Merge;
    harness.state_mut().set_texts(texts.clone());
    let text = error_notice(&mut harness);
    assert!(
        text.contains("prose.jsonl") && text.contains("line 2") && text.contains("\"text\""),
        "{text}"
    );
    assert!(
        harness
            .get_all_by_label_contains("line 2: a JSON object")
            .next()
            .is_some()
    );
    // Previews stay data-free.
    wait_for(&mut harness, "a retention preview", |app| {
        app.preview
            .as_ref()
            .is_some_and(|p| p.full && !p.is_perplexity() && p.survival.is_some())
    });
    let missing = dir.path().join("nowhere");
    harness.state_mut().set_texts(missing);
    let started = Instant::now();
    let text = step_until(&mut harness, "the missing folder's message", |app| {
        app.texts.error.clone()
    });
    assert!(
        text.contains("nowhere") && text.contains("cannot list"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn an_architecture_not_run_in_process_is_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let (models, texts) = lm_family(dir.path(), "MambaForCausalLM");
    let mut harness = harness_on(&models);
    opened(&mut harness);
    harness.state_mut().panel = Panel::Merge;
    harness.run_ok();
    harness.get_by_label_contains("MambaForCausalLM models are not run in process yet");
    harness.state_mut().set_texts(texts);
    let text = error_notice(&mut harness);
    assert!(
        text.contains("MambaForCausalLM") && text.contains("LlamaForCausalLM"),
        "{text}"
    );
    assert!(harness.state().texts.loaded.is_none());
}
