//! A merged folder carries what made it, as mergekit's output does: `mergekit_config.yml` (the
//! recipe, which merges to the same model again) and a `README.md` model card naming the base,
//! the models, the method and mergescope's version. And command-line runs stay quiet about
//! windows: nothing from the windowing or GPU stack on a headless machine.

use std::path::Path;

use mergescope_core::dtype::Dtype;
use mergescope_core::export::{CARD_FILE, MERGEKIT_CONFIG_FILE};
use mergescope_core::merge::engine::VERSION;
use mergescope_core::merge::recipe::Recipe;
use mergescope_tests::cli::{Run, command, run};
use mergescope_tests::fixture::{
    llama_tensors, read_folder, read_metadata, write_model_folder, write_sharded,
};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// A BF16 base and two BF16 fine-tunes (one sharded) under `dir`.
fn family(dir: &Path) {
    write_model_folder(&dir.join("base"), &llama_tensors(2, 0), Dtype::BF16, 2);
    write_sharded(&dir.join("math"), &llama_tensors(2, 1), Dtype::BF16, 4);
    mergescope_tests::fixture::write_config(&dir.join("math"), 2, Dtype::BF16);
    write_model_folder(&dir.join("code"), &llama_tensors(2, 2), Dtype::BF16, 2);
}

const RECIPE: &str = "\
merge_method: dare_ties
base_model: base
models:
  - model: math
    parameters:
      weight: 0.7
      density: [0.3, 0.9]
  - model: code
    parameters:
      weight: 0.4
      density: 0.5
parameters:
  lambda: 0.9
out_dtype: bfloat16
";

/// The files of `folder`, sorted.
fn names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_merge_writes_its_recipe_and_a_model_card() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    std::fs::write(dir.path().join("recipe.yml"), RECIPE).unwrap();
    let merged = run(
        BIN,
        dir.path(),
        &[
            "merge",
            "recipe.yml",
            "--out",
            "merged",
            "--random-seed",
            "11",
        ],
    );
    merged.assert_success();
    let out = dir.path().join("merged");
    assert_eq!(
        names(&out),
        [
            CARD_FILE,
            "config.json",
            MERGEKIT_CONFIG_FILE,
            "model.safetensors",
            "tokenizer.json"
        ]
    );
    // The summary line says what was written besides the weights.
    assert!(
        merged
            .stdout()
            .contains("+ config.json, tokenizer.json, mergekit_config.yml, README.md"),
        "{}",
        merged.stdout()
    );

    // mergekit_config.yml is the recipe the shards record, and mergescope reads it back.
    let config = std::fs::read_to_string(out.join(MERGEKIT_CONFIG_FILE)).unwrap();
    let meta = read_metadata(&out.join("model.safetensors"));
    assert_eq!(config, meta["mergescope_recipe"]);
    let recipe = Recipe::from_file(&out.join(MERGEKIT_CONFIG_FILE)).unwrap();
    assert_eq!(
        recipe,
        Recipe::from_yaml(RECIPE, Path::new("recipe.yml")).unwrap()
    );

    // The card names the base, the models, the method with its paper, the parameters, the
    // seed and the version; no scores without a preview.
    let card = std::fs::read_to_string(out.join(CARD_FILE)).unwrap();
    for needle in [
        "tags:\n- mergekit\n- merge\n- mergescope\n",
        "This is a merge of pre-trained language models",
        "using the [DARE TIES](https://arxiv.org/abs/2311.03099) merge method using `base` as a base.",
        "* `math`\n* `code`\n",
        "| model | weight | density |",
        "| `math` | 0.7 | [0.3, 0.9] |",
        "* `lambda`: 0.9",
        "Random seed 11:",
        &format!("Written by mergescope {VERSION}."),
        &format!("```yaml\n{config}```"),
    ] {
        assert!(card.contains(needle), "card lacks {needle:?}:\n{card}");
    }
    assert!(!card.contains("### Scores"), "{card}");
    // Local paths are not hub models: the front matter links none.
    assert!(card.starts_with("---\nbase_model: []\n"), "{card}");

    // The recorded recipe and seed merge to the same model, byte for byte.
    run(
        BIN,
        dir.path(),
        &[
            "merge",
            "merged/mergekit_config.yml",
            "--out",
            "again",
            "--random-seed",
            "11",
        ],
    )
    .assert_success();
    let again = dir.path().join("again");
    assert_eq!(read_folder(&again), read_folder(&out));
    for file in ["model.safetensors", MERGEKIT_CONFIG_FILE, CARD_FILE] {
        assert_eq!(
            std::fs::read(again.join(file)).unwrap(),
            std::fs::read(out.join(file)).unwrap(),
            "{file}"
        );
    }
}

#[test]
fn the_card_is_written_with_the_weights_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    std::fs::write(dir.path().join("recipe.yml"), RECIPE).unwrap();
    // An existing output without --force is refused and left as it was: no card beside it.
    std::fs::create_dir(dir.path().join("merged")).unwrap();
    std::fs::write(dir.path().join("merged/notes.txt"), "mine").unwrap();
    run(BIN, dir.path(), &["merge", "recipe.yml", "--out", "merged"]).assert_user_error(&[
        "merged",
        "not empty",
        "--force",
    ]);
    assert_eq!(names(&dir.path().join("merged")), ["notes.txt"]);
    // With --force the old folder is replaced whole: the card and recipe arrive with the
    // weights, the old file is gone.
    run(
        BIN,
        dir.path(),
        &["merge", "recipe.yml", "--out", "merged", "--force"],
    )
    .assert_success();
    let after = names(&dir.path().join("merged"));
    assert!(after.contains(&CARD_FILE.to_owned()), "{after:?}");
    assert!(
        after.contains(&MERGEKIT_CONFIG_FILE.to_owned()),
        "{after:?}"
    );
    assert!(!after.contains(&"notes.txt".to_owned()), "{after:?}");
}

/// Lines a headless command-line run must never print: the windowing and GPU stack's chatter.
fn windowing_noise(stderr: &str) -> Vec<&str> {
    const SOURCES: &[&str] = &[
        "winit",
        "wgpu",
        "eframe",
        "egui",
        "mesa",
        "vulkan",
        "wayland",
        "x11",
        "xdg_runtime",
        "libegl",
        "glx",
        "lavapipe",
        "llvmpipe",
    ];
    stderr
        .lines()
        // The one line that names the adapter a merge ran on, by request.
        .filter(|line| !line.starts_with("backend: "))
        .filter(|line| {
            let lower = line.to_ascii_lowercase();
            SOURCES.iter().any(|s| lower.contains(s))
        })
        .collect()
}

/// Runs `args` with no display and no login session's runtime folder, as in a container or
/// a CI runner (without that folder Mesa's Vulkan device-selection layer would print a line
/// whenever a GPU is looked for; mergescope turns the layer off there).
fn headless(dir: &Path, args: &[&str]) -> Run {
    let output = command(BIN, dir, args)
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .env_remove("RUST_LOG")
        .output()
        .expect("the mergescope binary runs");
    Run {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        output,
    }
}

#[test]
fn headless_commands_print_nothing_from_the_windowing_stack() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    std::fs::write(dir.path().join("recipe.yml"), RECIPE).unwrap();
    for args in [
        &["inspect", "math"][..],
        &["inspect", "base", "--json"],
        &["merge", "recipe.yml", "--out", "cpu", "--backend", "cpu"],
        // `auto` looks for a hardware GPU: quietly, whatever it finds.
        &["merge", "recipe.yml", "--out", "auto"],
        &["analyze", "--base", "base", "math", "code"],
        &["eval", "recipe.yml", "--objective", "retention"],
        &["--help"],
        &["merge", "--help"],
    ] {
        let run = headless(dir.path(), args);
        run.assert_success();
        let stderr = run.stderr();
        let noise = windowing_noise(&stderr);
        assert!(
            noise.is_empty(),
            "mergescope {}: {noise:?}\n{stderr}",
            args.join(" ")
        );
    }
}

#[test]
fn inspect_gives_counts_and_sizes_in_human_units() {
    use mergescope::gui::text::{human_bytes, human_count};
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let checkpoint = mergescope_core::Checkpoint::open(dir.path().join("math")).unwrap();
    let (count, bytes) = (checkpoint.parameter_count(), checkpoint.data_bytes());
    let inspect = run(BIN, dir.path(), &["inspect", "math"]);
    inspect.assert_success();
    let text = inspect.stdout();
    // `1.24 K parameters = 1,240, 2.48 kB`: the human figure first, the exact count after.
    let expected = format!("{} parameters = ", human_count(count));
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tensors:"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&expected), "{line}");
    assert!(
        line.ends_with(&format!(", {})", human_bytes(bytes))),
        "{line}"
    );
    let grouped = count.to_string();
    assert!(
        line.replace(',', "").contains(&format!("= {grouped}")),
        "{line}"
    );
    // The sharded folder's shards in human units too.
    assert!(
        text.contains(" tensors, ") && text.contains(" kB\n"),
        "{text}"
    );
}
