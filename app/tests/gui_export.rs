//! Export as a user meets it: a bf16 family is written in bf16 by default, a folder that holds
//! files is replaced only after asking, and the folder holds the recipe (`mergekit_config.yml`,
//! which `mergescope merge` runs to the same weights) and a model card with the scores the
//! preview showed. Also: a recipe dropped on the window loads, dropped folders open as a
//! family, and the Models panel reads in human units with tensor names elided in the middle.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use mergescope::gui::Workbench;
use mergescope::gui::app::Panel;
use mergescope_core::eval::compare::format_value;
use safetensors::{Dtype, tensor::TensorView};

mod common;
use common::{harness_on, notice_starting, save_screenshot, step_until, wait_for, write_llama};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope");

/// The module names of one block, long enough (with the stack's prefix) to be elided.
const MODULES: [&str; 4] = [
    "self_attn.q_proj",
    "self_attn.o_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// A two-layer Llama-named model stored in bf16 (`model.safetensors` and a `config.json`
/// saying so) under `folder`; `shift` makes it a different model. The block tensors carry a
/// long multimodal-style prefix, so their names are elided in the Models panel.
fn write_bf16_model(folder: &Path, shift: f32) -> PathBuf {
    let mut tensors: Vec<(String, Vec<usize>)> =
        vec![("model.embed_tokens.weight".into(), vec![32, 16])];
    for l in 0..2 {
        for module in MODULES {
            tensors.push((
                format!("model.language_model.decoder.layers.{l}.{module}.weight"),
                vec![16, 16],
            ));
        }
    }
    tensors.push(("lm_head.weight".into(), vec![32, 16]));
    write_llama(folder, tensors, Dtype::BF16, 2, |t, _, i| {
        ((i * 7 + t * 13) % 23) as f32 * 0.05 - 0.5 + shift * (1 + i % 3) as f32
    })
}

/// Rewrites the model in `folder` as two shards and their index, as Hugging Face stores
/// larger models.
fn shard_in_two(folder: &Path) {
    let single = folder.join("model.safetensors");
    let bytes = std::fs::read(&single).unwrap();
    let model = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = model.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&names[..half], &names[half..]].into_iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: HashMap<String, TensorView<'_>> = part
            .iter()
            .map(|n| (n.clone(), model.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &folder.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(single).unwrap();
}

/// A bf16 base and two bf16 fine-tunes (`math`, `code`) under `dir`.
fn bf16_family(dir: &Path) -> Vec<PathBuf> {
    vec![
        write_bf16_model(&dir.join("base"), 0.0),
        write_bf16_model(&dir.join("math"), 0.02),
        write_bf16_model(&dir.join("code"), -0.03),
    ]
}

fn opened_family(harness: &mut Harness<'_, Workbench>) {
    wait_for(harness, "the family", |app| {
        app.family.is_some() && app.busy.is_none()
    });
}

/// The Merge panel's recipe as the worker gets it.
fn current_yaml(app: &Workbench) -> String {
    app.settings
        .as_ref()
        .unwrap()
        .to_yaml(app.family.as_ref().unwrap())
}

/// The sorted names in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_bf16_family_exports_bf16_with_its_recipe_and_a_card_of_the_preview() {
    let dir = tempfile::tempdir().unwrap();
    let paths = bf16_family(&dir.path().join("family"));
    let mut harness = harness_on(&paths);
    opened_family(&mut harness);
    // The defaults: the inputs' dtype out, and a folder with files is not replaced silently.
    assert_eq!(
        harness.state().settings.as_ref().unwrap().out_dtype,
        "bfloat16"
    );
    assert!(!harness.state().export_force);

    harness.get_by_label("Export").click();
    harness.run_ok();
    harness.get_by_label("(the inputs' dtype)");
    harness.get_by_label_contains("mergekit_config.yml: the recipe");
    // The Export panel asks for the preview itself; the card will carry its scores.
    let yaml = current_yaml(harness.state());
    let preview = step_until(&mut harness, "the preview of these settings", |app| {
        app.preview
            .clone()
            .filter(|p| p.yaml == yaml && p.full && p.inputs.is_some())
    });
    harness.run_ok();
    harness.get_by_label_contains("README.md: a model card");
    harness.get_by_label_contains("with the preview's scores on retention (data-free)");

    // For the README: the panel as a user sees it before writing.
    harness.state_mut().export_dir = "/data/merged-bf16".to_owned();
    harness.state_mut().notice = None;
    save_screenshot(&mut harness, Panel::Export, "export.png");

    let out = dir.path().join("merged");
    harness.state_mut().export_dir = out.display().to_string();
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    let wrote = notice_starting(&mut harness, "wrote");
    assert!(
        wrote.ends_with("+ config.json, mergekit_config.yml, README.md"),
        "{wrote}"
    );
    assert_eq!(
        names(&out),
        [
            "README.md",
            "config.json",
            "mergekit_config.yml",
            "model.safetensors"
        ]
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let model = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, view) in model.tensors() {
        assert_eq!(view.dtype(), Dtype::BF16, "{name}");
    }
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"torch_dtype\": \"bfloat16\""), "{config}");

    // The card names what made the model and the scores the preview showed, beside the base's
    // and the best single model's.
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.contains("merged using the [Task Arithmetic](https://arxiv.org/abs/2212.04089)"),
        "{card}"
    );
    assert!(
        card.contains("on the objective retention (data-free):"),
        "{card}"
    );
    let survival = preview.survival.expect("a merge with a base has retention");
    for (model, kept) in survival.models.iter().zip(&survival.whole_model.models) {
        let name = Path::new(model).file_name().unwrap().to_string_lossy();
        let metric = format!("retention/{name}");
        let value = format_value(&metric, kept.projection.expect("finite weights"));
        let row = card
            .lines()
            .find(|l| l.starts_with(&format!("| {metric} | {value} | ")))
            .unwrap_or_else(|| panic!("card lacks {metric} = {value}:\n{card}"));
        // The inputs were scored too: the best single model is named.
        assert!(row.contains(&format!("`{name}` (")), "{row}");
    }
    // mergekit_config.yml is the recipe the panel built, and the command line merges it to
    // the same weights (the workbench merges with seed 0).
    let recipe = std::fs::read_to_string(out.join("mergekit_config.yml")).unwrap();
    assert!(recipe.contains("out_dtype: bfloat16"), "{recipe}");
    let again = dir.path().join("again");
    let run = std::process::Command::new(BIN)
        .args(["merge", "--backend", "cpu", "--random-seed", "0", "--out"])
        .arg(&again)
        .arg(out.join("mergekit_config.yml"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read(again.join("model.safetensors")).unwrap(),
        bytes
    );
}

#[test]
fn writing_into_a_folder_with_files_asks_first() {
    let dir = tempfile::tempdir().unwrap();
    let paths = bf16_family(&dir.path().join("family"));
    let out = dir.path().join("merged");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
    let mut harness = harness_on(&paths);
    opened_family(&mut harness);
    harness.get_by_label("Export").click();
    harness.state_mut().export_dir = out.display().to_string();
    harness.run_ok();

    // Cancel: nothing is written, the folder is as it was.
    harness.get_by_label("Write the merged model").click();
    harness.run_ok();
    harness.get_by_label("Replace the folder?");
    harness.get_by_label_contains("is not empty (notes.txt)");
    save_screenshot(&mut harness, Panel::Export, "export-replace.png");
    harness.get_by_label("Cancel").click();
    harness.run_ok();
    let notice = notice_starting(&mut harness, "not written");
    assert!(notice.contains("is unchanged"), "{notice}");
    assert!(harness.query_by_label("Replace the folder?").is_none());
    assert!(harness.state().busy.is_none());
    assert_eq!(names(&out), ["notes.txt"]);

    // Replace: the merged model takes the folder's place.
    harness.get_by_label("Write the merged model").click();
    harness.run_ok();
    harness.get_by_label("Replace").click();
    notice_starting(&mut harness, "wrote");
    assert_eq!(
        names(&out),
        [
            "README.md",
            "config.json",
            "mergekit_config.yml",
            "model.safetensors"
        ]
    );
    // Still off: the next write into it asks again.
    assert!(!harness.state().export_force);

    // An input's folder is refused outright, with the export's own message, without asking.
    let base = paths[0].clone();
    harness.state_mut().export_dir = base.display().to_string();
    harness.run_ok();
    harness.get_by_label("Write the merged model").click();
    harness.run_ok();
    assert!(harness.query_by_label("Replace the folder?").is_none());
    let error = harness.state().notice.clone().unwrap();
    assert!(error.error, "{error:?}");
    assert!(error.text.contains("outside every input"), "{}", error.text);
    assert_eq!(names(&base), ["config.json", "model.safetensors"]);
}

/// A file or folder dropped on the window, as winit hands it to egui.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

fn drop_on(harness: &mut Harness<'_, Workbench>, paths: &[&Path]) {
    harness.input_mut().dropped_files = paths
        .iter()
        .map(|p| std::sync::Arc::new(Dropped(p.to_path_buf())) as egui::DroppedFileHandle)
        .collect();
}

#[test]
fn dropped_folders_open_and_a_dropped_recipe_loads() {
    let dir = tempfile::tempdir().unwrap();
    let paths = bf16_family(&dir.path().join("family"));
    shard_in_two(&paths[2]);
    let mut harness = harness_on(&[]);
    opened_family(&mut harness);
    // Three folders at once, one of them sharded: the first is the base.
    drop_on(
        &mut harness,
        &paths.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
    );
    wait_for(&mut harness, "the dropped family", |app| {
        app.family
            .as_ref()
            .is_some_and(|f| f.models.len() == 2 && f.base == paths[0])
    });
    let shards: Vec<usize> = harness
        .state()
        .family
        .as_ref()
        .unwrap()
        .members
        .iter()
        .map(|m| m.shards)
        .collect();
    assert_eq!(shards, [1, 1, 2]);

    // A recipe naming the open models loads into the Merge panel.
    let recipe = dir.path().join("tuned.yml");
    std::fs::write(
        &recipe,
        format!(
            "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - model: {}\n    \
             parameters:\n      weight: 0.7\n  - model: {}\n    parameters:\n      weight: 0.2\n\
             dtype: float32\nout_dtype: float16\n",
            paths[0].display(),
            paths[1].display(),
            paths[2].display()
        ),
    )
    .unwrap();
    drop_on(&mut harness, &[&recipe]);
    let notice = notice_starting(&mut harness, "loaded");
    assert!(notice.contains("tuned.yml"), "{notice}");
    let settings = harness.state().settings.clone().unwrap();
    assert_eq!(settings.weights, [0.7, 0.2]);
    assert_eq!(settings.out_dtype, "float16");
    assert_eq!(harness.state().panel, Panel::Merge);
}

#[test]
fn the_models_panel_reads_in_human_units_and_keeps_layer_indices() {
    let dir = tempfile::tempdir().unwrap();
    let paths = bf16_family(&dir.path().join("family"));
    let mut harness = harness_on(&paths);
    opened_family(&mut harness);
    harness.state_mut().panel = Panel::Models;
    harness.run_ok();
    // 2 × 32 × 16 + 8 × 16 × 16 = 3,072 parameters of 2 bytes.
    assert_eq!(
        harness.state().family.as_ref().unwrap().members[0].parameters,
        3072
    );
    assert_eq!(harness.get_all_by_label("3.07 K").count(), 3);
    assert_eq!(harness.get_all_by_label("6.14 kB").count(), 3);
    assert!(harness.query_by_label("3072").is_none());

    harness
        .get_by_label_contains("Tensors of the base (10)")
        .click();
    harness.run_ok();
    save_screenshot(&mut harness, Panel::Models, "models-tensors.png");
    // 58 characters, shortened in the middle: the layer index and module survive.
    let full = "model.language_model.decoder.layers.1.mlp.down_proj.weight";
    let shown = harness
        .get_all_by_label_contains("layers.1.mlp.down_proj.weight")
        .map(|node| node.value().unwrap_or_default())
        .collect::<Vec<_>>();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert!(
        shown[0].contains('…') && shown[0].chars().count() < full.len(),
        "{shown:?}"
    );
    assert!(shown[0].starts_with("model."), "{shown:?}");
    harness.get_by_label("lm_head.weight");
}
