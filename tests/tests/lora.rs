//! LoRA adapters as models (`core::lora`) and `mergescope extract-lora`: every test writes a
//! tiny base, a PEFT-layout adapter and the same fine-tune materialised in full (θ_b + Δ in
//! f64, stored as f32), and checks that the adapter reads, merges and analyses as that
//! fine-tune does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mergescope_core::Checkpoint;
use mergescope_core::analysis::{AnalysisSettings, SpectraSettings, analyze};
use mergescope_core::family::{Family, Member};
use mergescope_tests::cli::run;
use mergescope_tests::fixture::{Tensor, read_folder, tiny_llama, write_file};
use safetensors::Dtype;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// The modules the adapters adapt: (module, rows, cols) of the base's weight.
const MODULES: [(&str, usize, usize); 3] = [
    ("model.layers.0.self_attn.q_proj", 32, 32),
    ("model.layers.1.mlp.up_proj", 48, 32),
    ("model.layers.1.mlp.down_proj", 32, 48),
];

/// Deterministic factor entries, different per module and factor.
fn entry(salt: usize) -> impl Fn(usize) -> f32 {
    move |i| (((i * 37 + salt * 101) % 53) as f32 - 26.0) * 0.004
}

/// One adapter to write: its config and how its tensors are named and laid out.
struct Adapter {
    rank: usize,
    alpha: f64,
    rslora: bool,
    fan_in_fan_out: bool,
    /// Prefix before the module name (`base_model.model.` in PEFT files).
    prefix: &'static str,
    /// Between `lora_A` and `.weight` (`.default` in some hand-saved files).
    infix: &'static str,
    modules: Vec<(&'static str, usize, usize)>,
    extra: Value,
}

impl Adapter {
    fn new(rank: usize, alpha: f64) -> Self {
        Self {
            rank,
            alpha,
            rslora: false,
            fan_in_fan_out: false,
            prefix: "base_model.model.",
            infix: "",
            modules: MODULES.to_vec(),
            extra: json!({}),
        }
    }

    fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// A (r × in) and B (out × r) of module `k`, in f32 as stored.
    fn factors(&self, k: usize) -> (Tensor, Tensor) {
        let (module, rows, cols) = self.modules[k];
        // With fan_in_fan_out the base weight is (in, out): rows are inputs.
        let (out, inp) = if self.fan_in_fan_out {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let p = format!("{}{module}", self.prefix);
        (
            Tensor::new(
                &format!("{p}.lora_A{}.weight", self.infix),
                &[self.rank, inp],
                entry(2 * k),
            ),
            Tensor::new(
                &format!("{p}.lora_B{}.weight", self.infix),
                &[out, self.rank],
                entry(2 * k + 1),
            ),
        )
    }

    fn write(&self, folder: &Path, base: &Path) {
        let tensors: Vec<Tensor> = (0..self.modules.len())
            .flat_map(|k| {
                let (a, b) = self.factors(k);
                [a, b]
            })
            .collect();
        write_file(
            &folder.join("adapter_model.safetensors"),
            &tensors,
            Dtype::F32,
        );
        let mut config = json!({
            "peft_type": "LORA",
            "r": self.rank,
            "lora_alpha": self.alpha,
            "use_rslora": self.rslora,
            "fan_in_fan_out": self.fan_in_fan_out,
            "target_modules": ["q_proj", "up_proj", "down_proj"],
            "base_model_name_or_path": base,
            "bias": "none",
            "task_type": "CAUSAL_LM",
        });
        for (k, v) in self.extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        std::fs::write(
            folder.join("adapter_config.json"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    /// θ_b + Δ for every base tensor, in f64 then rounded to f32 (what the adapter means).
    fn materialise(&self, base: &Checkpoint) -> Vec<Tensor> {
        base.tensors()
            .iter()
            .enumerate()
            .map(|(i, info)| {
                let mut values: Vec<f64> = base
                    .view(i)
                    .to_f32_vec()
                    .into_iter()
                    .map(f64::from)
                    .collect();
                if let Some(k) = self
                    .modules
                    .iter()
                    .position(|(m, ..)| format!("{m}.weight") == info.name)
                {
                    let (a, b) = self.factors(k);
                    let (out, r, inp) = (b.shape[0], self.rank, a.shape[1]);
                    for o in 0..out {
                        for j in 0..inp {
                            let d: f64 = (0..r)
                                .map(|t| {
                                    f64::from(b.values[o * r + t])
                                        * f64::from(a.values[t * inp + j])
                                })
                                .sum::<f64>()
                                * self.scale();
                            let at = if self.fan_in_fan_out {
                                j * out + o
                            } else {
                                o * inp + j
                            };
                            values[at] += d;
                        }
                    }
                }
                Tensor {
                    name: info.name.clone(),
                    shape: info.shape.clone(),
                    values: values.into_iter().map(|v| v as f32).collect(),
                }
            })
            .collect()
    }
}

/// A tiny Llama base, a second fine-tune (`other`), an adapter folder and the adapter's
/// fine-tune materialised in full, under one temporary folder.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(adapter: &Adapter) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        tiny_llama(&base, 0.0);
        tiny_llama(&dir.path().join("other"), 0.05);
        adapter.write(&dir.path().join("adapter"), &base);
        let full = dir.path().join("full");
        tiny_llama(&full, 0.0); // config and tokenizer; the weights are replaced
        let opened = Checkpoint::open(&base).unwrap();
        write_file(
            &full.join("model.safetensors"),
            &adapter.materialise(&opened),
            Dtype::F32,
        );
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The largest |a − b| over two checkpoints' tensors, which must have the same names.
fn max_difference(a: &Checkpoint, b: &Checkpoint) -> f32 {
    assert_eq!(a.tensors().len(), b.tensors().len());
    let mut worst = 0f32;
    for (i, info) in a.tensors().iter().enumerate() {
        let j = b.index_of(&info.name).unwrap();
        let (x, y) = (a.view(i).to_f32_vec(), b.view(j).to_f32_vec());
        for (x, y) in x.iter().zip(&y) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// Checks `adapter` opens as its materialised fine-tune, to f32 rounding, and returns the
/// opened adapter checkpoint.
fn opens_as_materialised(adapter: &Adapter) -> (Setup, Checkpoint) {
    let setup = Setup::new(adapter);
    let lora = Checkpoint::open(setup.path("adapter")).unwrap();
    let full = Checkpoint::open(setup.path("full")).unwrap();
    let worst = max_difference(&lora, &full);
    assert!(
        worst < 2e-7,
        "adapter differs from its materialised fine-tune by {worst}"
    );
    (setup, lora)
}

#[test]
fn an_adapter_reads_as_base_plus_scaled_b_a() {
    let adapter = Adapter::new(4, 8.0);
    let (setup, lora) = opens_as_materialised(&adapter);
    let base = Checkpoint::open(setup.path("base")).unwrap();
    let info = lora.adapter().expect("opened as an adapter");
    assert_eq!((info.rank(), info.target_count()), (4, 3));
    // Untargeted tensors are the base's own bytes; targeted ones are computed in f32.
    let norm = lora.index_of("model.norm.weight").unwrap();
    assert_eq!(*lora.view(norm).bytes, *base.view(norm).bytes);
    let q = lora
        .index_of("model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(lora.tensors()[q].dtype, Dtype::F32);
    assert_ne!(lora.view(q).to_f32_vec(), base.view(q).to_f32_vec());
    // A different alpha (the same factors file) is a different model to the caches too.
    let config = setup.path("adapter/adapter_config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\"lora_alpha\": 8.0", "\"lora_alpha\": 16.0"),
    )
    .unwrap();
    let louder = Checkpoint::open(setup.path("adapter")).unwrap();
    assert_ne!(louder.fingerprint(), lora.fingerprint());
    assert_eq!(
        louder.fingerprint(),
        Checkpoint::open(setup.path("adapter"))
            .unwrap()
            .fingerprint()
    );
    assert_ne!(base.fingerprint(), lora.fingerprint());
    // The adapter file counts as an input: a changed adapter is noticed.
    assert!(
        lora.shards()
            .iter()
            .any(|s| s.path().ends_with("adapter_model.safetensors"))
    );
    lora.verify_unchanged().unwrap();
}

#[test]
fn rslora_scales_by_alpha_over_root_r() {
    let mut adapter = Adapter::new(4, 8.0);
    adapter.rslora = true;
    opens_as_materialised(&adapter);
    // And the plain α/r reading would differ: the test can fail.
    let plain = Adapter::new(4, 8.0);
    let setup = Setup::new(&plain);
    adapter.write(&setup.path("adapter"), &setup.path("base"));
    let lora = Checkpoint::open(setup.path("adapter")).unwrap();
    let full = Checkpoint::open(setup.path("full")).unwrap();
    assert!(max_difference(&lora, &full) > 1e-3);
}

#[test]
fn fan_in_fan_out_transposes_delta() {
    let mut adapter = Adapter::new(2, 2.0);
    adapter.fan_in_fan_out = true;
    // Square modules only: the tiny Llama's weights are (out, in), so a non-square one would
    // not fit B·Aᵀ (that mismatch is its own test).
    adapter.modules = vec![("model.layers.0.self_attn.q_proj", 32, 32)];
    opens_as_materialised(&adapter);
}

#[test]
fn names_without_the_peft_prefix_or_with_the_adapter_name_read_alike() {
    let mut adapter = Adapter::new(4, 4.0);
    adapter.prefix = "";
    adapter.infix = ".default";
    opens_as_materialised(&adapter);
}

#[test]
fn rank_and_alpha_patterns_apply_per_module() {
    let mut adapter = Adapter::new(4, 4.0);
    adapter.modules = vec![MODULES[0]];
    // One module at rank 4 with alpha 16 through the patterns: scale 4 instead of 1.
    adapter.extra = json!({"r": 8, "lora_alpha": 8, "rank_pattern": {"q_proj": 4},
                           "alpha_pattern": {"model.layers.0.self_attn.q_proj": 16}});
    adapter.alpha = 16.0;
    opens_as_materialised(&adapter);
}

fn open_error(setup: &Setup) -> String {
    Checkpoint::open(setup.path("adapter"))
        .expect_err("the adapter must be refused")
        .to_string()
}

#[test]
fn an_adapter_for_a_module_the_base_lacks_is_refused_by_name() {
    let mut adapter = Adapter::new(2, 2.0);
    let setup = Setup::new(&adapter);
    adapter.modules = vec![("model.layers.7.self_attn.q_proj", 32, 32)];
    adapter.write(&setup.path("adapter"), &setup.path("base"));
    let message = open_error(&setup);
    for needle in [
        "adapter_model.safetensors",
        "model.layers.7.self_attn.q_proj",
        setup.path("base").to_str().unwrap(),
    ] {
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn factors_that_do_not_fit_the_base_are_refused() {
    let mut adapter = Adapter::new(2, 2.0);
    let setup = Setup::new(&adapter);
    // Factors laid out for (out, in) weights, read as fan_in_fan_out: B·Aᵀ of down_proj (the
    // first module checked) would be 48×32 where the base's is 32×48.
    adapter.extra = json!({"fan_in_fan_out": true});
    adapter.write(&setup.path("adapter"), &setup.path("base"));
    let message = open_error(&setup);
    assert!(
        message.contains("model.layers.1.mlp.down_proj") && message.contains("shape"),
        "{message}"
    );
}

#[test]
fn unsupported_features_and_bad_configs_say_what_to_do() {
    let mut adapter = Adapter::new(2, 2.0);
    let setup = Setup::new(&adapter);
    for (extra, needle) in [
        (json!({"use_dora": true}), "DoRA"),
        (json!({"bias": "all"}), "bias"),
        (json!({"modules_to_save": ["lm_head"]}), "modules_to_save"),
        (json!({"peft_type": "IA3"}), "IA3"),
        (json!({"r": 0}), "rank"),
    ] {
        adapter.extra = extra;
        adapter.write(&setup.path("adapter"), &setup.path("base"));
        let message = open_error(&setup);
        assert!(message.contains(needle), "{message}");
        assert!(message.contains("adapter_config.json"), "{message}");
    }
    std::fs::write(
        setup.path("adapter").join("adapter_config.json"),
        "{not json",
    )
    .unwrap();
    assert!(open_error(&setup).contains("not a valid PEFT adapter config"));
}

#[test]
fn an_adapter_whose_base_is_not_local_asks_for_base_plus_adapter() {
    let adapter = Adapter::new(2, 2.0);
    let setup = Setup::new(&adapter);
    adapter.write(
        &setup.path("adapter"),
        Path::new("meta-llama/Llama-2-7b-hf"),
    );
    let message = open_error(&setup);
    assert!(
        message.contains("BASE+ADAPTER") && message.contains("meta-llama"),
        "{message}"
    );
    // Spelled BASE+ADAPTER it opens on the base given.
    let spec = format!(
        "{}+{}",
        setup.path("base").display(),
        setup.path("adapter").display()
    );
    let lora = Checkpoint::open(&spec).unwrap();
    let full = Checkpoint::open(setup.path("full")).unwrap();
    assert!(max_difference(&lora, &full) < 2e-7);
}

/// Runs `mergescope-cli merge` on `recipe` (written into the setup folder) and reads the output.
fn merge(
    setup: &Setup,
    name: &str,
    recipe: &str,
) -> std::collections::BTreeMap<String, (Dtype, Vec<usize>, Vec<f64>)> {
    let file = setup.path(&format!("{name}.yml"));
    std::fs::write(&file, recipe).unwrap();
    let out = setup.path(&format!("out-{name}"));
    run(
        BIN,
        setup.dir.path(),
        &[
            "merge",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .assert_success();
    read_folder(&out)
}

#[test]
fn recipes_with_base_plus_adapter_merge_as_the_materialised_fine_tune() {
    let adapter = Adapter::new(4, 8.0);
    let setup = Setup::new(&adapter);
    for method in ["task_arithmetic", "ties"] {
        let recipe = |model: &str| {
            format!(
                "merge_method: {method}\nbase_model: base\ndtype: float32\nparameters:\n  \
                 normalize: false\nmodels:\n  - model: {model}\n    parameters:\n      \
                 weight: 0.7\n      density: 0.6\n  - model: other\n    parameters:\n      \
                 weight: 0.5\n      density: 0.6\n"
            )
        };
        let lora = merge(&setup, &format!("{method}-lora"), &recipe("base+adapter"));
        let full = merge(&setup, &format!("{method}-full"), &recipe("full"));
        assert_eq!(
            lora.keys().collect::<Vec<_>>(),
            full.keys().collect::<Vec<_>>()
        );
        let mut worst = 0f64;
        for (name, (_, shape, values)) in &lora {
            let (_, full_shape, expected) = &full[name];
            assert_eq!(shape, full_shape);
            for (x, y) in values.iter().zip(expected) {
                worst = worst.max((x - y).abs());
            }
        }
        assert!(
            worst < 1e-6,
            "{method}: the adapter's merge differs by {worst}"
        );
    }
}

#[test]
fn the_task_vector_of_an_adapted_tensor_has_rank_r() {
    let adapter = Adapter::new(3, 3.0);
    let setup = Setup::new(&adapter);
    let member = |path: PathBuf| Member {
        label: path.display().to_string(),
        checkpoint: Arc::new(Checkpoint::open(path).unwrap()),
    };
    let family = Family {
        base: Some(member(setup.path("base"))),
        models: vec![member(setup.path("adapter")), member(setup.path("full"))],
    };
    let mut settings = AnalysisSettings::new(2);
    settings.spectra = Some(SpectraSettings::default());
    let report = analyze(&family, &settings, &mergescope_core::Job::default()).unwrap();
    for (module, rows, cols) in MODULES {
        let name = format!("{module}.weight");
        let tensor = report.tensors.iter().find(|t| t.name == name).unwrap();
        let spectra = tensor.spectra.as_ref().expect("spectra of a 2-D tensor");
        let (lora, full) = (&spectra[0], &spectra[1]);
        assert_eq!(lora.sigma.len(), rows.min(cols));
        let s1 = lora.sigma[0];
        assert!(
            lora.sigma[2] / s1 > 1e-3,
            "{name}: σ₃ should be a real value"
        );
        assert!(
            lora.sigma[3] / s1 < 1e-5,
            "{name}: σ₄/σ₁ = {}",
            lora.sigma[3] / s1
        );
        // The adapter's analysis is the materialised fine-tune's, to f32 rounding.
        for (a, b) in lora.sigma.iter().zip(&full.sigma).take(3) {
            assert!((a - b).abs() <= 1e-5 * s1, "{name}: {a} vs {b}");
        }
        let (ma, mb) = (&tensor.metrics.models[0], &tensor.metrics.models[1]);
        assert!(
            (ma.l2 - mb.l2).abs() < 1e-5 * mb.l2,
            "{name}: ‖τ‖ {} vs {}",
            ma.l2,
            mb.l2
        );
    }
    // Untargeted tensors have a zero task vector.
    let norm = report
        .tensors
        .iter()
        .find(|t| t.name == "model.norm.weight")
        .unwrap();
    assert_eq!(norm.metrics.models[0].l2, 0.0);
}

/// A fine-tune of the tiny Llama whose q_proj task vector has rank exactly 2 and whose other
/// weights change at full rank.
fn write_fine_tune(setup: &Setup) {
    let base = Checkpoint::open(setup.path("base")).unwrap();
    let mut adapter = Adapter::new(2, 2.0);
    adapter.modules = vec![MODULES[0]];
    let mut tensors = adapter.materialise(&base);
    for t in &mut tensors {
        if t.name.contains("mlp.") {
            for (i, v) in t.values.iter_mut().enumerate() {
                *v += (((i * 7919) % 97) as f32 - 48.0) * 1e-3;
            }
        }
    }
    let ft = setup.path("ft");
    tiny_llama(&ft, 0.0);
    write_file(&ft.join("model.safetensors"), &tensors, Dtype::F32);
}

fn extract(setup: &Setup, rank: &str, extra: &[&str]) -> Value {
    let json = setup.path("report.json");
    let out = setup.path("extracted");
    let mut args = vec![
        "extract-lora",
        "--base",
        "base",
        "--model",
        "ft",
        "--rank",
        rank,
        "--out",
        out.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--force",
    ];
    args.extend_from_slice(extra);
    run(BIN, setup.dir.path(), &args).assert_success();
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

fn reported(report: &Value, tensor: &str) -> (u64, f64) {
    let t = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tensor"] == tensor)
        .unwrap_or_else(|| panic!("{tensor} not in the report"));
    (
        t["rank"].as_u64().unwrap(),
        t["relative_error"].as_f64().unwrap(),
    )
}

#[test]
fn extract_then_load_reproduces_the_truncated_task_vector() {
    let setup = Setup::new(&Adapter::new(2, 2.0));
    write_fine_tune(&setup);
    let report = extract(&setup, "2", &[]);
    // PEFT's layout: adapter_config.json with r = lora_alpha, PEFT-named F32 factors.
    let config: Value = serde_json::from_slice(
        &std::fs::read(setup.path("extracted/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_u64()),
        (Some(2), Some(2))
    );
    let factors = read_folder(&setup.path("extracted"));
    assert!(factors.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(
        !factors
            .keys()
            .any(|k| k.contains("embed_tokens") || k.contains("lm_head"))
    );
    // The exactly rank-2 τ is recovered; the full-rank ones are truncated.
    let (rank, error) = reported(&report, "model.layers.0.self_attn.q_proj.weight");
    assert_eq!(rank, 2);
    assert!(error < 1e-5, "rank-2 τ recovered with error {error}");
    let (_, up_error) = reported(&report, "model.layers.0.mlp.up_proj.weight");
    assert!(
        up_error > 0.1,
        "a full-rank τ cannot fit rank 2: {up_error}"
    );
    // Loading base + extracted gives base + B·A: its distance to the fine-tune is the
    // reported reconstruction error, tensor by tensor.
    let spec = format!(
        "{}+{}",
        setup.path("base").display(),
        setup.path("extracted").display()
    );
    let lora = Checkpoint::open(&spec).unwrap();
    let (base, ft) = (
        Checkpoint::open(setup.path("base")).unwrap(),
        Checkpoint::open(setup.path("ft")).unwrap(),
    );
    for t in report["tensors"].as_array().unwrap() {
        let name = t["tensor"].as_str().unwrap();
        let i = ft.index_of(name).unwrap();
        let (b, m, l) = (
            base.view(i).to_f32_vec(),
            ft.view(i).to_f32_vec(),
            lora.view(lora.index_of(name).unwrap()).to_f32_vec(),
        );
        let tau: f64 = b
            .iter()
            .zip(&m)
            .map(|(b, m)| f64::from(m - b).powi(2))
            .sum();
        let residual: f64 = l
            .iter()
            .zip(&m)
            .map(|(l, m)| f64::from(m - l).powi(2))
            .sum();
        if tau == 0.0 {
            // Left alone by the fine-tune: no module, the base's own values.
            assert_eq!((residual, t["rank"].as_u64()), (0.0, Some(0)), "{name}");
            continue;
        }
        let error = (residual / tau).sqrt();
        let expected = t["relative_error"].as_f64().unwrap();
        assert!(
            (error - expected).abs() < 1e-4,
            "{name}: loaded error {error}, reported {expected}"
        );
    }
}

#[test]
fn sv_threshold_lowers_ranks_into_rank_pattern() {
    let setup = Setup::new(&Adapter::new(2, 2.0));
    write_fine_tune(&setup);
    // Rank 6 asked; q_proj's τ has rank 2, so a relative threshold keeps 2 there.
    let report = extract(&setup, "6", &["--sv-threshold", "1e-3"]);
    assert_eq!(
        reported(&report, "model.layers.0.self_attn.q_proj.weight").0,
        2
    );
    assert_eq!(reported(&report, "model.layers.0.mlp.up_proj.weight").0, 6);
    let config: Value = serde_json::from_slice(
        &std::fs::read(setup.path("extracted/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["r"], 6);
    assert_eq!(config["rank_pattern"]["model.layers.0.self_attn.q_proj"], 2);
    assert_eq!(
        config["alpha_pattern"]["model.layers.0.self_attn.q_proj"],
        2
    );
    // Tensors the fine-tune leaves alone get no module at all.
    assert_eq!(
        reported(&report, "model.layers.1.self_attn.q_proj.weight").0,
        0
    );
    let factors = read_folder(&setup.path("extracted"));
    assert!(
        !factors
            .keys()
            .any(|k| k.contains("layers.1.self_attn.q_proj"))
    );
    assert!(
        config["rank_pattern"]
            .get("model.layers.1.self_attn.q_proj")
            .is_none()
    );
    // And the adapter opens (ranks from rank_pattern) as base + B·A.
    let spec = format!(
        "{}+{}",
        setup.path("base").display(),
        setup.path("extracted").display()
    );
    Checkpoint::open(&spec).unwrap();
}

/// `fixtures/mergekit/lora`: PEFT-made adapters and mergekit 0.1.5's merges of `BASE+ADAPTER`
/// recipes (make_fixtures.py).
fn lora_fixtures() -> PathBuf {
    mergescope_tests::mergekit::part_dir("lora")
}

#[test]
fn peft_adapters_read_as_peft_merge_and_unload_writes_them() {
    let dir = lora_fixtures();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected/MANIFEST.json")).unwrap())
            .unwrap();
    let adapters = manifest["peft_merged"].as_object().unwrap();
    assert_eq!(adapters.len(), 3);
    for (name, entry) in adapters {
        let base = dir.join(entry["base"].as_str().unwrap());
        let spec = format!(
            "{}+{}",
            base.display(),
            dir.join("adapters").join(name).display()
        );
        let lora = Checkpoint::open(&spec).unwrap();
        let merged = Checkpoint::open(dir.join("expected/peft_merged").join(name)).unwrap();
        let worst = max_difference(&lora, &merged);
        assert!(worst < 1e-6, "{name}: differs from PEFT's merge by {worst}");
        // The adapter changes what it targets (so the comparison could fail).
        let plain = Checkpoint::open(&base).unwrap();
        assert!(max_difference(&plain, &merged) > 1e-2, "{name}");
        // Alone, the adapter finds its base from its config's relative name.
        let bare = Checkpoint::open(dir.join("adapters").join(name)).unwrap();
        assert_eq!(bare.folder(), plain.folder().map(Path::new));
    }
}

#[test]
fn base_plus_adapter_recipes_match_mergekit() {
    let dir = lora_fixtures();
    let out = tempfile::tempdir().unwrap();
    for recipe in [
        "task_arithmetic_lora",
        "ties_lora_rslora",
        "linear_lora_base",
        "task_arithmetic_lora_bf16",
    ] {
        let merged = mergescope_tests::mergekit::merge(BIN, &dir, recipe, "cpu", out.path());
        mergescope_tests::mergekit::check_against(&dir, recipe, &merged)
            .unwrap_or_else(|problems| panic!("{problems}"));
    }
    // A bfloat16 family merges to bfloat16 throughout, as mergekit's: the adapted tensors
    // (computed in f32) count as their base's dtype.
    let merged = read_folder(&out.path().join("task_arithmetic_lora_bf16"));
    assert!(merged.values().all(|(dtype, ..)| *dtype == Dtype::BF16));
}

#[test]
fn extraction_stops_at_the_next_tensor_once_cancelled() {
    use mergescope_core::lora::extract::{ExtractSettings, extract};
    let setup = Setup::new(&Adapter::new(2, 2.0));
    write_fine_tune(&setup);
    let base = Checkpoint::open(setup.path("base")).unwrap();
    let ft = Checkpoint::open(setup.path("ft")).unwrap();
    let settings = ExtractSettings {
        rank: 2,
        sv_threshold: 0.0,
        include_embeddings: false,
        spectra: SpectraSettings::default(),
    };
    let job = mergescope_core::Job::default();
    let (cancel, progress) = (job.cancel.clone(), job.progress.clone());
    job.progress.set_observer(move || {
        if progress.snapshot().done > 0 {
            cancel.cancel();
        }
    });
    assert!(extract(&base, &ft, &settings, &job).is_err());
    let done = job.progress.snapshot();
    assert!(done.done > 0 && done.done < done.total, "{done:?}");
    // A fresh job runs to the end.
    let (factors, _) = extract(&base, &ft, &settings, &mergescope_core::Job::default()).unwrap();
    assert_eq!(factors.len(), 14);
}

#[test]
fn the_cli_opens_base_plus_adapter_and_names_what_is_missing() {
    let setup = Setup::new(&Adapter::new(4, 8.0));
    let cwd = setup.dir.path();
    let ran = run(BIN, cwd, &["inspect", "base+adapter"]);
    ran.assert_success();
    assert!(
        ran.stdout()
            .contains("model.layers.0.self_attn.q_proj.weight")
    );
    run(BIN, cwd, &["inspect", "base+no-such-adapter"])
        .assert_user_error(&["no-such-adapter", "no such file or folder"]);
    run(BIN, cwd, &["inspect", "base+adapter+again"]).assert_user_error(&["BASE+ADAPTER"]);
    // analyze takes an adapter where it takes a model.
    let json = setup.path("analysis.json");
    run(
        BIN,
        cwd,
        &[
            "analyze",
            "--base",
            "base",
            "adapter",
            "--no-cache",
            "--json",
            json.to_str().unwrap(),
        ],
    )
    .assert_success();
}
