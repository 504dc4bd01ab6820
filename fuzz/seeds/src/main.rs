//! Writes the seed inputs of mergescope's fuzz targets into `fuzz/corpus/<target>/seed-*`, from
//! the repository's fixtures: the test helpers' Llama-shaped models (`tests/src/fixture.rs`),
//! the demo family (`assets/demo`), the mergekit parity set (`tests/fixtures/parity`), their
//! recipes and the recipes written in `tests/tests/*.rs`, plus hand-made edge cases (a header
//! that claims a 2^40-element tensor, every dtype, empty and scalar tensors, bad indexes).
//!
//! Real models are shrunk (every dimension cut to at most 2; names, dtypes and metadata kept)
//! so a seed is a few KB. `cargo fuzz cmin` then reduces the corpora to what adds coverage.
//!
//! ```text
//! cargo run --manifest-path fuzz/Cargo.toml -p mergescope-fuzz-seeds [-- REPO_ROOT]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

/// Must equal `mergescope_fuzz::PART_SEPARATOR`.
const PART_SEPARATOR: &[u8] = b"\x00SHARD\x00";
/// Must equal `mergescope_fuzz::SHARD_NAMES`.
const SHARD_NAMES: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

struct Corpus {
    dir: PathBuf,
    count: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> Self {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create a corpus folder");
        Self { dir, count: 0 }
    }

    fn add(&mut self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.join(format!("seed-{name}")), bytes).expect("write a seed");
        self.count += 1;
    }
}

/// One tensor: name, dtype, shape, little-endian bytes.
type Tensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn serialize(tensors: &[Tensor], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            let view = TensorView::new(*dtype, shape.clone(), bytes).expect("a valid view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize(views, metadata).expect("serialize")
}

fn pt() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_owned(), "pt".to_owned())]))
}

/// A raw file: `header` as written (no validation), then `data_len` bytes of data.
fn raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..data_len).map(|i| (i * 37 % 251) as u8));
    out
}

/// `tests/src/fixture.rs`'s `llama_tensors(layers, variant)`: names and shapes, hidden 8.
fn fixture_llama(layers: usize, variant: u32, dtype: Dtype) -> Vec<Tensor> {
    let h = 8;
    let mut shapes = vec![("model.embed_tokens.weight".to_owned(), vec![16, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![2 * h, h]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, 2 * h]));
    }
    shapes.push(("model.norm.weight".to_owned(), vec![h]));
    shapes.push(("lm_head.weight".to_owned(), vec![16, h]));
    let shift = variant as f32 * 0.125;
    shapes
        .into_iter()
        .enumerate()
        .map(|(salt, (name, shape))| {
            let n: usize = shape.iter().product();
            let values = (0..n).map(|i| ((i * 7 + salt * 13) % 23) as f32 * 0.0625 - 0.7 + shift);
            let bytes = encode(values, dtype);
            (name, dtype, shape, bytes)
        })
        .collect()
}

fn encode(values: impl Iterator<Item = f32>, dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.flat_map(f32::to_le_bytes).collect(),
        // Truncated to the upper half: a valid bf16 (and, read as f16, some valid half).
        _ => values
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
    }
}

/// A real safetensors file with every dimension cut to at most `max_dim` (names, dtypes and
/// `__metadata__` kept; data: the first bytes of the original tensor).
fn shrink(path: &Path, max_dim: usize) -> (Vec<Tensor>, Option<HashMap<String, String>>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("a header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("a valid file");
    let mut names = st.names();
    names.sort();
    let tensors = names
        .into_iter()
        .map(|name| {
            let view = st.tensor(name).expect("a listed tensor");
            let shape: Vec<usize> = view.shape().iter().map(|&d| d.min(max_dim)).collect();
            let n: usize = shape.iter().product();
            let len = n * view.dtype().bitsize() / 8;
            (
                name.to_owned(),
                view.dtype(),
                shape,
                view.data()[..len].to_vec(),
            )
        })
        .collect();
    (tensors, metadata.metadata().clone())
}

fn names_of(tensors: &[Tensor]) -> String {
    tensors
        .iter()
        .map(|t| t.0.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `INDEX SEP SHARD...`, with `shards[k]` written as `SHARD_NAMES[k]`.
fn sharded_input(index: &[u8], shards: &[Vec<u8>]) -> Vec<u8> {
    let mut out = index.to_vec();
    for shard in shards {
        out.extend_from_slice(PART_SEPARATOR);
        out.extend_from_slice(shard);
    }
    out
}

fn index_json(weight_map: &BTreeMap<String, String>) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!({"metadata": {"total_size": 0}, "weight_map": weight_map}))
        .unwrap()
}

fn main() {
    let repo = std::env::args_os().nth(1).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        PathBuf::from,
    );
    let corpus = repo.join("fuzz/corpus");
    let parity = repo.join("tests/fixtures/parity");
    let demo = repo.join("assets/demo");

    // ---- safetensors_file -------------------------------------------------------------------
    let mut files = Corpus::new(&corpus, "safetensors_file");
    for (dtype, label) in [
        (Dtype::F32, "f32"),
        (Dtype::BF16, "bf16"),
        (Dtype::F16, "f16"),
    ] {
        files.add(
            &format!("fixture-llama2-{label}"),
            &serialize(&fixture_llama(2, 1, dtype), pt()),
        );
    }
    let real = [
        ("demo-vit-base", demo.join("base/model.safetensors")),
        ("parity-base", parity.join("family/base/model.safetensors")),
        (
            "parity-ft_b-bf16",
            parity.join("family/ft_b/model.safetensors"),
        ),
        (
            "parity-ft_a-shard1",
            parity.join("family/ft_a/model-00001-of-00002.safetensors"),
        ),
    ];
    let mut layout_sets = Vec::new();
    for (label, path) in &real {
        let (tensors, metadata) = shrink(path, 2);
        files.add(label, &serialize(&tensors, metadata));
        layout_sets.push((*label, names_of(&tensors)));
    }
    // Every dtype safetensors knows, one small tensor each.
    let dtypes = [
        Dtype::BOOL,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];
    let every: Vec<Tensor> = dtypes
        .iter()
        .enumerate()
        .map(|(i, &dtype)| {
            let shape = vec![2, 2];
            let len = 4 * dtype.bitsize() / 8;
            (
                format!("model.layers.{i}.t.{dtype:?}"),
                dtype,
                shape,
                (0..len).map(|b| (b * 29 + i) as u8).collect(),
            )
        })
        .collect();
    files.add("every-dtype", &serialize(&every, pt()));
    let odd: Vec<Tensor> = vec![
        (
            "scalar".to_owned(),
            Dtype::F32,
            vec![],
            1.5f32.to_le_bytes().to_vec(),
        ),
        ("empty".to_owned(), Dtype::F32, vec![0, 8], vec![]),
        (
            "model.layers.0.rank4".to_owned(),
            Dtype::BF16,
            vec![1, 2, 1, 2],
            vec![0x80, 0x3f, 0, 0x40, 0, 0, 0x80, 0xbf],
        ),
    ];
    files.add("scalar-and-empty", &serialize(&odd, None));
    files.add("empty-header", &raw("{}", 0));
    files.add(
        "metadata-only",
        &raw(r#"{"__metadata__":{"format":"pt","note":"no tensors"}}"#, 0),
    );
    // Headers that lie: about sizes (the sparse retry opens a 4 TiB file), offsets and lengths.
    files.add(
        "claims-2p40-elements",
        &raw(
            r#"{"huge":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,4398046511104]}}"#,
            0,
        ),
    );
    files.add(
        "claims-2p40-bytes-after-a-real-tensor",
        &raw(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[1099511627776],"data_offsets":[8,1099511627784]}}"#,
            8,
        ),
    );
    files.add(
        "overflowing-shape",
        &raw(
            r#"{"w":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#,
            0,
        ),
    );
    files.add(
        "gap-between-offsets",
        &raw(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12,
        ),
    );
    files.add("header-longer-than-file", &{
        let mut b = raw(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        );
        b[..8].copy_from_slice(&4096u64.to_le_bytes());
        b
    });
    files.add(
        "not-safetensors",
        b"PK\x03\x04 this is a zip, or a pickle, not safetensors",
    );
    files.add(
        "padded-header",
        &raw(
            r#"{"model.layers.0.mlp.up_proj.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]}}       "#,
            8,
        ),
    );
    files.add(
        "big-block-index",
        &raw(
            r#"{"model.layers.4294967296.mlp.up_proj.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        ),
    );

    // ---- sharded_folder ---------------------------------------------------------------------
    let mut sharded = Corpus::new(&corpus, "sharded_folder");
    {
        // write_sharded(llama_tensors(2, 1), F32, 5): 13 tensors in 3 shards.
        let tensors = fixture_llama(2, 1, Dtype::F32);
        let mut weight_map = BTreeMap::new();
        let mut shards = Vec::new();
        for (k, chunk) in tensors.chunks(5).enumerate() {
            for t in chunk {
                weight_map.insert(t.0.clone(), SHARD_NAMES[k].to_owned());
            }
            shards.push(serialize(chunk, pt()));
        }
        sharded.add(
            "fixture-llama2-3-shards",
            &sharded_input(&index_json(&weight_map), &shards),
        );
        // The same, with a shard missing from the folder.
        sharded.add(
            "fixture-llama2-missing-shard",
            &sharded_input(&index_json(&weight_map), &shards[..2]),
        );
        // An index naming a tensor its shard lacks.
        let mut lying = weight_map.clone();
        lying.insert(
            "model.layers.7.ghost.weight".to_owned(),
            SHARD_NAMES[0].to_owned(),
        );
        sharded.add(
            "index-names-a-missing-tensor",
            &sharded_input(&index_json(&lying), &shards),
        );
        // The same tensor in two shards.
        let twice = vec![
            serialize(&tensors[..2], None),
            serialize(&tensors[1..3], None),
        ];
        let mut map = BTreeMap::new();
        map.insert(tensors[0].0.clone(), SHARD_NAMES[0].to_owned());
        map.insert(tensors[2].0.clone(), SHARD_NAMES[1].to_owned());
        sharded.add(
            "duplicate-tensor-across-shards",
            &sharded_input(&index_json(&map), &twice),
        );
    }
    {
        // The parity set's sharded ft_a, shrunk, its shards renamed to SHARD_NAMES.
        let folder = parity.join("family/ft_a");
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(folder.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap();
        let mut originals: Vec<String> = index["weight_map"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        originals.sort();
        originals.dedup();
        let rename: HashMap<&str, &str> = originals
            .iter()
            .map(String::as_str)
            .zip(SHARD_NAMES)
            .collect();
        let weight_map: BTreeMap<String, String> = index["weight_map"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), rename[v.as_str().unwrap()].to_owned()))
            .collect();
        let shards: Vec<Vec<u8>> = originals
            .iter()
            .map(|name| {
                let (tensors, metadata) = shrink(&folder.join(name), 2);
                serialize(&tensors, metadata)
            })
            .collect();
        sharded.add(
            "parity-ft_a",
            &sharded_input(&index_json(&weight_map), &shards),
        );
    }
    let one = serialize(&fixture_llama(0, 0, Dtype::F32), None);
    for (label, index) in [
        ("empty-weight-map", r#"{"weight_map": {}}"#.to_owned()),
        (
            "no-weight-map",
            r#"{"metadata": {"total_size": 1}}"#.to_owned(),
        ),
        (
            "shard-outside-the-folder",
            r#"{"weight_map": {"lm_head.weight": "../model-00001-of-00003.safetensors"}}"#
                .to_owned(),
        ),
        (
            "shard-is-parent",
            r#"{"weight_map": {"lm_head.weight": ".."}}"#.to_owned(),
        ),
        (
            "shard-is-the-index",
            r#"{"weight_map": {"lm_head.weight": "model.safetensors.index.json"}}"#.to_owned(),
        ),
        ("not-json", "weight_map = lm_head.weight".to_owned()),
    ] {
        sharded.add(
            label,
            &sharded_input(index.as_bytes(), std::slice::from_ref(&one)),
        );
    }

    // ---- config_json ------------------------------------------------------------------------
    let mut configs = Corpus::new(&corpus, "config_json");
    configs.add(
        "demo-vit",
        &std::fs::read(demo.join("base/config.json")).unwrap(),
    );
    configs.add(
        "parity-llama",
        &std::fs::read(parity.join("family/base/config.json")).unwrap(),
    );
    configs.add(
        "fixture-write_config",
        &serde_json::to_vec_pretty(&json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "num_hidden_layers": 2,
            "torch_dtype": "float32",
        }))
        .unwrap(),
    );
    for (label, text) in [
        (
            "gpt2",
            r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2","n_layer":12}"#,
        ),
        (
            "t5",
            r#"{"architectures":["T5ForConditionalGeneration"],"num_layers":6}"#,
        ),
        (
            "clip",
            r#"{"architectures":["CLIPModel"],"model_type":"clip"}"#,
        ),
        (
            "unet",
            r#"{"_class_name":"UNet2DConditionModel","model_type":"unet"}"#,
        ),
        (
            "negative-layers",
            r#"{"model_type":"llama","num_hidden_layers":-1}"#,
        ),
        (
            "float-layers",
            r#"{"model_type":"llama","num_hidden_layers":1e30}"#,
        ),
        (
            "huge-layers",
            r#"{"num_hidden_layers":18446744073709551615}"#,
        ),
        (
            "string-layers",
            r#"{"num_hidden_layers":"32","architectures":"LlamaForCausalLM"}"#,
        ),
        (
            "null-architectures",
            r#"{"architectures":[null],"model_type":null}"#,
        ),
        ("empty-object", "{}"),
        ("array", "[1, 2, 3]"),
        ("truncated", r#"{"architectures": ["Llama"#),
        ("empty", ""),
    ] {
        configs.add(label, text.as_bytes());
    }

    // ---- recipe -----------------------------------------------------------------------------
    let mut recipes = Corpus::new(&corpus, "recipe");
    // The fuzz family is base, a, b, c and wide/{base,a,b} (src/lib.rs `recipe_family`).
    let renames_parity = [
        ("family/base", "base"),
        ("family/ft_a", "a"),
        ("family/ft_b", "b"),
        ("family/ft_c", "c"),
    ];
    let renames_demo = [
        ("../base", "base"),
        ("../upright", "a"),
        ("../rotated", "b"),
        ("../mirrored", "c"),
        ("../inverted", "a"),
    ];
    for (dir, renames, prefix) in [
        (parity.join("configs"), &renames_parity[..], "parity"),
        (demo.join("recipes"), &renames_demo[..], "demo"),
    ] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml"))
            .collect();
        entries.sort();
        for path in entries {
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (from, to) in renames {
                text = text.replace(from, to);
            }
            let stem = path.file_stem().unwrap().to_string_lossy();
            recipes.add(&format!("{prefix}-{stem}"), text.as_bytes());
        }
    }
    // The recipes of tests/tests/*.rs, their model names mapped onto base/a/b/c.
    let from_tests = [
        (
            "merge-gradient-filter",
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - filter: self_attn\n          value: [0.0, 1.0]\n        - value: 0.25\n  - model: b\n    parameters:\n      weight: 0.5\nparameters:\n  lambda: 1.5\n",
        ),
        (
            "merge-linear-promote",
            "merge_method: linear\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: [1.0, 3.0]\n  - model: b\n    parameters:\n      weight: 2.0\nparameters:\n  normalize: true\ndtype: float32\nout_dtype: bfloat16\n",
        ),
        (
            "merge-linear-flow",
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n  - model: b\n    parameters: {weight: 1}\n",
        ),
        (
            "merge-one-model",
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
        ),
        (
            "merge-missing-tensor",
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: c\n    parameters: {weight: 0.25}\n",
        ),
        (
            "merge-vocab",
            "#truncate_vocab\nmerge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: c\n    parameters: {weight: 0.5}\n",
        ),
        (
            "bad-inputs-ta",
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 0.5\n",
        ),
        (
            "bad-inputs-nuslerp",
            "merge_method: nuslerp\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: c\n    parameters: {weight: 0.5}\n",
        ),
        (
            "bad-inputs-typo",
            "merge_methd: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 0.5\n",
        ),
        ("bad-inputs-unclosed", "merge_method: linear\nmodels: [\n"),
        (
            "backend-ties",
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.6, density: 0.5}\n  - model: b\n    parameters: {weight: 0.4, density: 0.7}\n",
        ),
        (
            "analyze-keep-a",
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1.0}\n  - model: b\n    parameters: {weight: 0.0}\ndtype: float32\n",
        ),
        (
            "recipe-rs-filters",
            "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - filter: self_attn\n          value: [0, 0.5, 1]\n        - value: 0.5\n  - model: b\n    parameters:\n      weight: [0.2, 0.8]\nparameters:\n  normalize: true\n",
        ),
        (
            "recipe-rs-slices",
            "merge_method: passthrough\nslices:\n  - sources: []\nmodels:\n  - model: a\n",
        ),
        (
            "recipe-rs-float64",
            "merge_method: linear\ndtype: float64\nmodels:\n  - model: a\n",
        ),
        (
            "recipe-rs-roundtrip",
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - filter: mlp\n          value: [0.1, 0.9]\n        - value: 0.5\n  - model: b\n    parameters:\n      weight: -0.3\nparameters:\n  lambda: 1.5\n  normalize: false\ndtype: float32\n",
        ),
    ];
    for (label, text) in from_tests {
        recipes.add(&format!("tests-{label}"), text.as_bytes());
    }
    // Every method with every parameter it reads, so mutations start from each.
    let per_method = [
        (
            "karcher",
            "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\n  - model: c\nparameters:\n  max_iter: 10\n  tol: 1.0e-5\n",
        ),
        (
            "multislerp",
            "merge_method: multislerp\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5}\n  - model: b\n    parameters: {weight: 0.5}\nparameters:\n  normalize_weights: true\n  eps: 1.0e-8\n",
        ),
        (
            "nearswap",
            "merge_method: nearswap\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  t: 0.001\n",
        ),
        (
            "passthrough",
            "merge_method: passthrough\nmodels:\n  - model: b\n    parameters:\n      scale: 0.5\n",
        ),
        (
            "slerp-gradient",
            "merge_method: slerp\nbase_model: base\nmodels:\n  - model: base\n  - model: a\nparameters:\n  t:\n    - filter: self_attn\n      value: [0, 0.5, 0.3, 0.7, 1]\n    - filter: mlp\n      value: [1, 0.5, 0.7, 0.3, 0]\n    - value: 0.5\ndtype: bfloat16\n",
        ),
        (
            "della-linear",
            "merge_method: della_linear\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5, density: 0.6, epsilon: 0.1}\n  - model: b\n    parameters: {weight: 0.5, density: 0.4, epsilon: 0.2}\nparameters:\n  lambda: 1.0\n  rescale: true\n",
        ),
        (
            "breadcrumbs-ties",
            "merge_method: breadcrumbs_ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1.0, density: 0.9, gamma: 0.01}\n  - model: c\n    parameters: {weight: 0.5, density: 0.8, gamma: 0.05}\nparameters:\n  normalize: true\n  int8_mask: true\n",
        ),
        (
            "sce",
            "merge_method: sce\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n  - model: c\nparameters:\n  select_topk: 0.5\n",
        ),
        (
            "model-stock",
            "merge_method: model_stock\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n  - model: c\nparameters:\n  filter_wise: true\n",
        ),
        (
            "nuslerp-row-wise",
            "merge_method: nuslerp\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 0.7}\n  - model: b\n    parameters: {weight: 0.3}\nparameters:\n  nuslerp_flatten: false\n  nuslerp_row_wise: true\n",
        ),
        (
            "dare-ties-tokenizer",
            "merge_method: dare_ties\nbase_model: base\ntokenizer_source: base\nmodels:\n  - model: a\n    parameters: {weight: 0.5, density: 0.5}\n  - model: b/\n    parameters: {weight: 0.5, density: 0.5}\nparameters:\n  rescale: false\nout_dtype: float16\n",
        ),
        (
            "file-path-model",
            "merge_method: linear\nmodels:\n  - model: a/model.safetensors\n    parameters: {weight: 0.5}\n  - model: ./c/model.safetensors.index.json\n    parameters: {weight: 0.5}\ntokenizer_source: a\n",
        ),
        (
            "unimplemented",
            "merge_method: arcee_fusion\nbase_model: base\nmodels:\n  - model: a\n",
        ),
        (
            "wide-ties",
            "merge_method: ties\nbase_model: wide/base\nmodels:\n  - model: wide/a\n    parameters: {weight: 0.7, density: 0.3}\n  - model: wide/b\n    parameters: {weight: 0.3, density: 0.6}\n",
        ),
        (
            "wide-dare-ties",
            "merge_method: dare_ties\nbase_model: wide/base\nmodels:\n  - model: wide/a\n    parameters: {weight: 1.0, density: 0.1}\n  - model: wide/b\n    parameters: {weight: 1.0, density: 0.9}\nparameters: {lambda: 0.5}\n",
        ),
        (
            "anchors",
            "merge_method: linear\nmodels:\n  - model: a\n    parameters: &p {weight: 0.5}\n  - model: b\n    parameters: *p\n",
        ),
    ];
    for (label, text) in per_method {
        recipes.add(&format!("method-{label}"), text.as_bytes());
    }
    // Structured inputs: 0xFF, then bytes the target turns into a recipe (src/lib.rs
    // `structured_recipe`); a fixed pseudo-random stream per seed.
    for k in 0..16u64 {
        let mut state = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(k + 1);
        let mut bytes = vec![0xFF];
        bytes.extend((0..96 + 16 * k).map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        }));
        recipes.add(&format!("structured-{k:02}"), &bytes);
    }

    // ---- layout_names -----------------------------------------------------------------------
    let mut layouts = Corpus::new(&corpus, "layout_names");
    layouts.add(
        "fixture-llama2",
        names_of(&fixture_llama(2, 0, Dtype::F32)).as_bytes(),
    );
    for (label, names) in &layout_sets {
        layouts.add(label, names.as_bytes());
    }
    // The names of core/src/layout.rs's tests, one family per seed.
    let families = [
        (
            "gpt2",
            "transformer.wte.weight\ntransformer.wpe.weight\nh.0.attn.c_attn.weight\nh.0.attn.c_proj.weight\nh.0.mlp.c_fc.weight\nh.0.mlp.c_proj.weight\nh.0.ln_1.weight\nh.11.ln_2.bias\ntransformer.ln_f.bias",
        ),
        (
            "bert",
            "bert.embeddings.word_embeddings.weight\nbert.encoder.layer.2.attention.self.query.weight\nbert.encoder.layer.2.attention.self.key.weight\nbert.encoder.layer.2.attention.output.dense.weight\nbert.encoder.layer.2.attention.output.LayerNorm.weight\nbert.encoder.layer.2.intermediate.dense.weight\nbert.encoder.layer.2.output.dense.weight\nbert.pooler.dense.weight",
        ),
        (
            "vit-clip",
            "vit.embeddings.patch_embeddings.projection.weight\nvision_model.encoder.layers.5.self_attn.out_proj.weight\nvision_model.encoder.layers.5.mlp.fc1.weight\nvision_model.encoder.layers.5.mlp.fc2.weight\nvision_model.encoder.layers.5.layer_norm1.weight\nvisual.transformer.resblocks.3.attn.in_proj_weight\nvisual_projection.weight\ntext_model.encoder.layers.0.self_attn.q_proj.weight",
        ),
        (
            "t5",
            "shared.weight\nencoder.block.1.layer.0.SelfAttention.q.weight\nencoder.block.1.layer.0.SelfAttention.o.weight\ndecoder.block.1.layer.1.EncDecAttention.v.weight\nencoder.block.1.layer.1.DenseReluDense.wi.weight\nencoder.block.1.layer.1.DenseReluDense.wo.weight\nencoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        ),
        (
            "sd-unet",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight\ndown_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight\ndown_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight\ndown_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight\ndown_blocks.0.resnets.1.conv1.weight\nmodel.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
        ),
        (
            "moe",
            "model.layers.3.mlp.experts.7.w1\nmodel.layers.3.mlp.experts.7.w2\nmodel.layers.3.mlp.experts.7.w3\nmodel.layers.3.mlp.gate.weight\nlayers.7\n.0.\n..1..\nmodel.layers.00.x",
        ),
        (
            "llama-with-config",
            "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"num_hidden_layers\":2}\nmodel.embed_tokens.weight\nmodel.layers.0.self_attn.q_proj.weight\nmodel.layers.1.mlp.gate_proj.weight\nmodel.norm.weight\nlm_head.weight",
        ),
        (
            "qwen-config-clip-names",
            "{\"architectures\":[\"Qwen2ForCausalLM\"],\"model_type\":\"qwen2\"}\nvision_model.encoder.layers.0.self_attn.q_proj.weight",
        ),
    ];
    for (label, names) in families {
        layouts.add(label, names.as_bytes());
    }

    for c in [&files, &sharded, &configs, &recipes, &layouts] {
        println!("{}: {} seeds", c.dir.display(), c.count);
    }
}
