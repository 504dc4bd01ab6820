//! Model files written by the tests, with the `safetensors` crate's own serializer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// A tensor with its values in f32 (stored in whatever dtype a writer is asked for).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl Tensor {
    pub fn new(name: &str, shape: &[usize], f: impl Fn(usize) -> f32) -> Self {
        let n = shape.iter().product();
        Self {
            name: name.to_owned(),
            shape: shape.to_vec(),
            values: (0..n).map(f).collect(),
        }
    }
}

/// Little-endian bytes of `values` in `dtype` (F32, F16 or BF16; round to nearest even).
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("fixture dtype {other:?} not supported"),
    }
}

/// The value a reader should see after `v` was stored in `dtype`.
pub fn round_trip(v: f32, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 => f16::from_f32(v).to_f32(),
        Dtype::BF16 => bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Writes one `.safetensors` file.
pub fn write_file(path: &Path, tensors: &[Tensor], dtype: Dtype) {
    let data: Vec<(String, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), encode(&t.values, dtype)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|(t, (_, bytes))| {
            (
                t.name.clone(),
                TensorView::new(dtype, t.shape.clone(), bytes).expect("valid view"),
            )
        })
        .collect();
    let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create folder");
    }
    safetensors::serialize_to_file(views, Some(meta), path).expect("write safetensors");
}

/// Writes a Hugging Face folder sharded `per_shard` tensors at a time, with its index.
pub fn write_sharded(folder: &Path, tensors: &[Tensor], dtype: Dtype, per_shard: usize) {
    let chunks: Vec<&[Tensor]> = tensors.chunks(per_shard).collect();
    let count = chunks.len();
    let mut weight_map = BTreeMap::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let name = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
        write_file(&folder.join(&name), chunk, dtype);
        for t in *chunk {
            weight_map.insert(t.name.clone(), name.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// Writes a Hugging Face folder with one `model.safetensors`, a Llama `config.json` and a
/// tokenizer file whose content names the model (to check which tokenizer was copied).
pub fn write_model_folder(
    folder: &Path,
    tensors: &[Tensor],
    dtype: Dtype,
    layers: usize,
) -> PathBuf {
    write_file(&folder.join("model.safetensors"), tensors, dtype);
    write_config(folder, layers, dtype);
    folder.to_path_buf()
}

pub fn write_config(folder: &Path, layers: usize, dtype: Dtype) {
    std::fs::create_dir_all(folder).unwrap();
    let torch_dtype = match dtype {
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
        _ => "float32",
    };
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": layers,
        "torch_dtype": torch_dtype,
    });
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_vec_pretty(&config).unwrap(),
    )
    .unwrap();
    let name = folder.file_name().unwrap().to_string_lossy();
    std::fs::write(
        folder.join("tokenizer.json"),
        format!("{{\"model\": \"{name}\"}}"),
    )
    .unwrap();
}

/// A small Llama-like tensor set: `layers` blocks of attention, MLP and norms, plus embedding,
/// final norm and head. `variant` shifts every value, so variants are different models.
pub fn llama_tensors(layers: usize, variant: u32) -> Vec<Tensor> {
    let h = 8;
    let shift = variant as f32 * 0.125;
    let value = move |salt: usize| {
        move |i: usize| {
            ((i * 7 + salt * 13) % 23) as f32 * 0.0625 - 0.7 + shift * (1.0 + (i % 3) as f32)
        }
    };
    let mut out = vec![Tensor::new("model.embed_tokens.weight", &[16, h], value(1))];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        out.push(Tensor::new(
            &format!("{p}.input_layernorm.weight"),
            &[h],
            value(10 + l),
        ));
        out.push(Tensor::new(
            &format!("{p}.self_attn.q_proj.weight"),
            &[h, h],
            value(20 + l),
        ));
        out.push(Tensor::new(
            &format!("{p}.self_attn.o_proj.weight"),
            &[h, h],
            value(30 + l),
        ));
        out.push(Tensor::new(
            &format!("{p}.mlp.up_proj.weight"),
            &[2 * h, h],
            value(40 + l),
        ));
        out.push(Tensor::new(
            &format!("{p}.mlp.down_proj.weight"),
            &[h, 2 * h],
            value(50 + l),
        ));
    }
    out.push(Tensor::new("model.norm.weight", &[h], value(2)));
    out.push(Tensor::new("lm_head.weight", &[16, h], value(3)));
    out
}

/// Every tensor of a folder (index or any set of `*.safetensors`), decoded to f64, read with
/// the safetensors crate only.
pub fn read_folder(folder: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<f64>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let mut out = BTreeMap::new();
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            let values = decode(view.dtype(), view.data());
            let previous = out.insert(name.clone(), (view.dtype(), view.shape().to_vec(), values));
            assert!(
                previous.is_none(),
                "{name} appears twice in {}",
                folder.display()
            );
        }
    }
    out
}

/// The `__metadata__` of a safetensors file.
pub fn read_metadata(file: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(file).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect()
}

pub fn decode(dtype: Dtype, data: &[u8]) -> Vec<f64> {
    match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f64::from(f16::from_le_bytes(c.try_into().unwrap()).to_f32()))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| f64::from(bf16::from_le_bytes(c.try_into().unwrap()).to_f32()))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        other => panic!("cannot decode {other:?}"),
    }
}

/// Every file below `dir`, as paths relative to it (to check that nothing was written).
pub fn listing(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Bf16 models of `layers` Llama blocks of hidden size 1024 (about 12 MB a layer), written
/// straight from byte patterns so that a merge big enough to take a while is quick to make:
/// `base/` and `ft/` under `dir`.
pub fn big_family(dir: &Path, layers: usize) {
    let h = 1024;
    let mut shapes = vec![("model.embed_tokens.weight".to_owned(), vec![2048, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![h]));
        shapes.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
        shapes.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        shapes.push((format!("{p}.mlp.up_proj.weight"), vec![2 * h, h]));
        shapes.push((format!("{p}.mlp.down_proj.weight"), vec![h, 2 * h]));
    }
    shapes.push(("model.norm.weight".to_owned(), vec![h]));
    shapes.push(("lm_head.weight".to_owned(), vec![2048, h]));
    for (name, variant) in [("base", 0u16), ("ft", 1)] {
        // bf16 values between 1.0 and 2.0, a different pattern per model.
        let period: Vec<u8> = (0..4096u16)
            .flat_map(|i| (0x3f80 + (i * 7 + variant * 13) % 0x80).to_le_bytes())
            .collect();
        let data: Vec<Vec<u8>> = shapes
            .iter()
            .map(|(_, shape)| {
                let len = shape.iter().product::<usize>() * 2;
                let mut bytes = Vec::with_capacity(len);
                while bytes.len() < len {
                    let n = (len - bytes.len()).min(period.len());
                    bytes.extend_from_slice(&period[..n]);
                }
                bytes
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = shapes
            .iter()
            .zip(&data)
            .map(|((name, shape), bytes)| {
                let view = TensorView::new(Dtype::BF16, shape.clone(), bytes).unwrap();
                (name.clone(), view)
            })
            .collect();
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        safetensors::serialize_to_file(views, None, &folder.join("model.safetensors")).unwrap();
        write_config(&folder, layers, Dtype::BF16);
    }
}

/// A two-layer Llama over the words `w0` … `w49`: weights, config.json and a word-level
/// tokenizer.json (written as JSON, as Hugging Face stores it). `shift` moves every weight but
/// the norms, so fine-tunes differ from the base.
pub fn tiny_llama(folder: &Path, shift: f32) {
    std::fs::create_dir_all(folder).unwrap();
    let wave =
        move |salt: usize| move |i: usize| ((i * 31 + salt * 17) % 23) as f32 * 0.02 - 0.22 + shift;
    let mut tensors = vec![
        Tensor::new("model.embed_tokens.weight", &[50, 32], wave(1)),
        Tensor::new("model.norm.weight", &[32], |_| 1.0),
        Tensor::new("lm_head.weight", &[50, 32], wave(2)),
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
            let name = format!("model.layers.{l}.{name}.weight");
            tensors.push(Tensor::new(&name, &shape, wave(3 + l * 7 + k)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push(Tensor::new(
                &format!("model.layers.{l}.{norm}.weight"),
                &[32],
                |_| 1.0,
            ));
        }
    }
    write_file(&folder.join("model.safetensors"), &tensors, Dtype::F32);
    std::fs::write(
        folder.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
            "intermediate_size": 48, "vocab_size": 50, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 64, "tie_word_embeddings": false}"#,
    )
    .unwrap();
    let vocab: Vec<String> = (0..50).map(|i| format!("\"w{i}\": {i}")).collect();
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

/// [`tiny_llama`] whose text a constant dominates: the embeddings share a large first
/// dimension that the blocks barely change, so the head's first column adds a fixed logit to
/// each token whatever the context. `favour: Some((token, strength))` raises that token's by
/// `strength`: a fine-tune whose training shows in what it writes, and a merge whose text
/// follows its weights (task arithmetic scales each expert's raise).
pub fn tiny_llama_favouring(folder: &Path, favour: Option<(usize, f32)>) {
    tiny_llama(folder, 0.0);
    let file = folder.join("model.safetensors");
    let tensors: Vec<Tensor> = read_folder(folder)
        .into_iter()
        .map(|(name, (_, shape, values))| {
            let mut values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            if name == "model.embed_tokens.weight" {
                values.iter_mut().step_by(32).for_each(|v| *v = 1.0);
            }
            // The blocks' outputs, small beside the carrier.
            if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
                values.iter_mut().for_each(|v| *v *= 0.1);
            }
            if name == "lm_head.weight"
                && let Some((token, strength)) = favour
            {
                values[token * 32] += strength;
            }
            Tensor {
                name,
                shape,
                values,
            }
        })
        .collect();
    write_file(&file, &tensors, Dtype::F32);
}
