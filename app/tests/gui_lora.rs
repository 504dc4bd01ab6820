//! A LoRA adapter folder as a fine-tune in the workbench: the Models panel lists it on the
//! family's base ("+ LoRA r=8"), the analysis sees its rank, the Merge panel previews it and
//! the export writes a merge whose recipe names it as mergekit does (`BASE+ADAPTER`).

use std::path::{Path, PathBuf};

use egui_kittest::kittest::Queryable as _;
use mergescope::gui::app::Panel;
use safetensors::Dtype;

mod common;
use common::{harness_on, notice_starting, opened, step_until, write_llama, write_safetensors};

/// The adapter's rank.
const RANK: usize = 8;
const HIDDEN: usize = 16;

fn f32_bytes(n: usize, f: impl Fn(usize) -> f32) -> Vec<u8> {
    (0..n).flat_map(|i| f(i).to_le_bytes()).collect()
}

/// A one-layer Llama-named f32 model; `shift` makes it a different model, except in q_proj
/// (which only the adapter changes).
fn write_model(folder: &Path, shift: f32) -> PathBuf {
    let mut tensors = vec![("model.embed_tokens.weight".to_owned(), vec![32, HIDDEN])];
    for module in ["self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj"] {
        tensors.push((
            format!("model.layers.0.{module}.weight"),
            vec![HIDDEN, HIDDEN],
        ));
    }
    tensors.push(("lm_head.weight".to_owned(), vec![32, HIDDEN]));
    write_llama(folder, tensors, Dtype::F32, 1, |t, name, i| {
        let shift = if name.contains("q_proj") { 0.0 } else { shift };
        ((i * 7 + t * 13) % 23) as f32 * 0.05 - 0.5 + shift * (1 + i % 3) as f32
    })
}

/// A rank-8 PEFT adapter on q_proj whose config names no local base: the workbench must apply
/// it to the family's base.
fn write_adapter(folder: &Path) -> PathBuf {
    std::fs::create_dir_all(folder).unwrap();
    let prefix = "base_model.model.model.layers.0.self_attn.q_proj";
    let entry = |salt: usize| move |i: usize| (((i * 37 + salt * 11) % 29) as f32 - 14.0) * 0.01;
    write_safetensors(
        &folder.join("adapter_model.safetensors"),
        Dtype::F32,
        &[
            (
                format!("{prefix}.lora_A.weight"),
                vec![RANK, HIDDEN],
                f32_bytes(RANK * HIDDEN, entry(1)),
            ),
            (
                format!("{prefix}.lora_B.weight"),
                vec![HIDDEN, RANK],
                f32_bytes(HIDDEN * RANK, entry(2)),
            ),
        ],
    );
    std::fs::write(
        folder.join("adapter_config.json"),
        format!(
            r#"{{"peft_type": "LORA", "r": {RANK}, "lora_alpha": 16, "target_modules": ["q_proj"],
                "base_model_name_or_path": "someone/llama-on-the-hub", "bias": "none"}}"#
        ),
    )
    .unwrap();
    folder.to_path_buf()
}

fn family(dir: &Path) -> Vec<PathBuf> {
    vec![
        write_model(&dir.join("base"), 0.0),
        write_adapter(&dir.join("my-lora")),
        write_model(&dir.join("full-ft"), 0.02),
    ]
}

#[test]
fn a_lora_adapter_opens_previews_and_exports_as_a_fine_tune() {
    let dir = tempfile::tempdir().unwrap();
    let paths = family(dir.path());
    let mut harness = harness_on(&paths);
    opened(&mut harness);

    // Models: the adapter is a member on the family's base, with its rank.
    harness.state_mut().panel = Panel::Models;
    harness.run_ok();
    harness.get_by_label_contains("+ LoRA r=8");
    harness.get_by_label("my-lora");

    // The analysis (what the spectra charts draw) sees a rank-8 task vector on q_proj.
    let report = harness.state().report.clone().unwrap();
    let q = report
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let sigma = &q.spectra.as_ref().expect("spectra of a 2-D tensor")[0].sigma;
    assert!(sigma[RANK - 1] / sigma[0] > 1e-4, "{sigma:?}");
    assert!(sigma[RANK] / sigma[0] < 1e-5, "{sigma:?}");
    // Untargeted tensors: a zero task vector.
    let o = report
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.o_proj.weight")
        .unwrap();
    assert_eq!(o.metrics.models[0].l2, 0.0);

    // Merge: the preview runs on it, and the export writes it.
    harness.state_mut().panel = Panel::Merge;
    harness.run_ok();
    let yaml = {
        let app = harness.state();
        app.settings
            .as_ref()
            .unwrap()
            .to_yaml(app.family.as_ref().unwrap())
    };
    step_until(&mut harness, "the preview", |app| {
        app.preview.clone().filter(|p| p.yaml == yaml && p.full)
    });
    let out = dir.path().join("merged");
    harness.state_mut().export_dir = out.display().to_string();
    harness.state_mut().panel = Panel::Export;
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    notice_starting(&mut harness, "wrote");
    let recipe = std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap();
    let spec = format!(
        "{}+{}",
        dir.path().join("base").display(),
        dir.path().join("my-lora").display()
    );
    assert!(recipe.contains(&spec), "{recipe}");
    // Only the adapter changes q_proj: the merge moved it, so the adapter's Δ was merged.
    let merged = std::fs::read(out.join("model.safetensors")).unwrap();
    let merged = safetensors::SafeTensors::deserialize(&merged).unwrap();
    let base = std::fs::read(dir.path().join("base/model.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base).unwrap();
    let changed =
        |name: &str| merged.tensor(name).unwrap().data() != base.tensor(name).unwrap().data();
    assert!(changed("model.layers.0.self_attn.q_proj.weight"));
}
