//! Synthetic model families: Llama-shaped checkpoints generated from a seed, for the headless
//! demo, tests and benchmarks. Nothing is downloaded; the same seed gives the same bytes.
//!
//! Each fine-tune is the base plus a task vector made of a component shared by all fine-tunes
//! (with a per-model sign and strength, so task vectors agree and conflict like real ones) and
//! a private component, scaled up with depth so per-layer views have something to show.
//! Generation streams through [`Export`], so a multi-gigabyte family never sits in memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::dtype::{FloatType, TensorBytes};
use crate::export::{Export, ExportError, ExportOptions, OutputTensor};
use crate::job::{Cancelled, Job};
use crate::layout::split_block;

/// Dimensions of a Llama-style decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub vocab: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl LlamaShape {
    /// A model of a few megabytes: the headless demo and the tests.
    pub const TINY: Self = Self {
        hidden: 128,
        intermediate: 344,
        layers: 6,
        vocab: 1024,
        heads: 4,
        kv_heads: 2,
    };

    /// About 1.6 GB in bf16 (~0.8 B parameters): the benchmark shape.
    pub const BENCH_1B: Self = Self {
        hidden: 2048,
        intermediate: 5120,
        layers: 16,
        vocab: 32000,
        heads: 16,
        kv_heads: 8,
    };

    /// Llama-2-7B's dimensions (6.7 B parameters, 13.5 GB in bf16): the opening benchmark.
    pub const LLAMA_7B: Self = Self {
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        vocab: 32000,
        heads: 32,
        kv_heads: 32,
    };

    /// Tensor names and shapes in the order Hugging Face writes a Llama checkpoint.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden;
        let kv = h / self.heads * self.kv_heads;
        let mut out = vec![("model.embed_tokens.weight".to_owned(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.extend([
                (format!("{p}.input_layernorm.weight"), vec![h]),
                (format!("{p}.self_attn.q_proj.weight"), vec![h, h]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
                (format!("{p}.self_attn.o_proj.weight"), vec![h, h]),
                (format!("{p}.post_attention_layernorm.weight"), vec![h]),
                (
                    format!("{p}.mlp.gate_proj.weight"),
                    vec![self.intermediate, h],
                ),
                (
                    format!("{p}.mlp.up_proj.weight"),
                    vec![self.intermediate, h],
                ),
                (
                    format!("{p}.mlp.down_proj.weight"),
                    vec![h, self.intermediate],
                ),
            ]);
        }
        out.push(("model.norm.weight".to_owned(), vec![h]));
        out.push(("lm_head.weight".to_owned(), vec![self.vocab, h]));
        out
    }

    pub fn parameter_count(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum()
    }

    pub fn config_json(&self, dtype: FloatType) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden / self.heads,
            "vocab_size": self.vocab,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": false,
            "torch_dtype": dtype.recipe_name(),
        })
    }
}

/// A family to generate: a base and `finetunes` fine-tunes of one shape.
#[derive(Clone, Debug)]
pub struct SynthFamily {
    pub shape: LlamaShape,
    pub finetunes: usize,
    pub dtype: FloatType,
    pub seed: u64,
    pub shard_size: u64,
}

impl SynthFamily {
    pub fn new(shape: LlamaShape, finetunes: usize) -> Self {
        Self {
            shape,
            finetunes,
            dtype: FloatType::BF16,
            seed: 0,
            shard_size: crate::export::DEFAULT_SHARD_SIZE,
        }
    }

    /// Folder names, base first: `base`, `ft_1`, `ft_2`, ...
    pub fn model_names(&self) -> Vec<String> {
        std::iter::once("base".to_owned())
            .chain((1..=self.finetunes).map(|i| format!("ft_{i}")))
            .collect()
    }

    /// Bytes of tensor data per model.
    pub fn model_bytes(&self) -> u64 {
        self.shape.parameter_count() * self.dtype.size_bytes() as u64
    }

    /// Writes every model under `dir` and returns their folders, base first. With `force`,
    /// existing model folders are replaced.
    pub fn write(&self, dir: &Path, force: bool, job: &Job) -> Result<Vec<PathBuf>, SynthError> {
        let names = self.model_names();
        job.progress
            .start_stage("generating models", self.model_bytes() * names.len() as u64);
        let mut folders = Vec::with_capacity(names.len());
        for (model, name) in names.iter().enumerate() {
            let folder = dir.join(name);
            self.write_model(model, &folder, force, job)?;
            folders.push(folder);
        }
        Ok(folders)
    }

    fn write_model(
        &self,
        model: usize,
        folder: &Path,
        force: bool,
        job: &Job,
    ) -> Result<(), SynthError> {
        let specs = self.shape.tensors();
        let tensors = specs
            .iter()
            .map(|(name, shape)| OutputTensor {
                name: name.clone(),
                dtype: self.dtype.dtype(),
                shape: shape.clone(),
            })
            .collect();
        let options = ExportOptions {
            out_dir: folder.to_path_buf(),
            shard_size: self.shard_size,
            force,
            card_scores: None,
        };
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let mut export = Export::begin(&options, tensors, meta, &[])?;
        let config =
            serde_json::to_vec_pretty(&self.shape.config_json(self.dtype)).expect("JSON value");
        export.add_file("config.json", &config)?;
        export.add_file(
            "generation_config.json",
            b"{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2\n}\n",
        )?;
        for (index, (name, shape)) in specs.iter().enumerate() {
            job.check_cancelled()?;
            let values = self.tensor_values(model, index, name, shape);
            let data = TensorBytes::encode(values, self.dtype);
            export.write_next(data.as_bytes())?;
            job.progress.add_done(data.as_bytes().len() as u64);
        }
        export.finish()?;
        Ok(())
    }

    /// Values of one tensor of one model, generated in parallel chunks with a stream per
    /// (seed, model, tensor, chunk), so the result does not depend on thread scheduling.
    fn tensor_values(&self, model: usize, index: usize, name: &str, shape: &[usize]) -> Vec<f32> {
        const CHUNK: usize = 1 << 16;
        let numel: usize = shape.iter().product();
        let is_norm = name.contains("norm");
        let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
        let base_std = if is_norm { 0.02 } else { 1.0 / fan_in.sqrt() };
        let depth =
            split_block(name).map_or(0.0, |(_, b)| b as f32 / self.shape.layers.max(1) as f32);
        // Task vectors grow with depth and differ per model in strength and in the sign of the
        // shared direction (model 1 agrees with model 2, model 3 opposes them, ...).
        let delta_std = if is_norm { 0.01 } else { base_std * 0.05 } * (0.5 + depth);
        let shared_sign = if model.is_multiple_of(3) { -1.0 } else { 1.0 };
        let shared_weight = 0.7 * shared_sign;
        let private_weight = 0.3 + 0.2 * (model % 2) as f32;

        let mut values = vec![0f32; numel];
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, out)| {
                let mut base_rng = self.rng(0, index, chunk, 0);
                for v in out.iter_mut() {
                    let z: f32 = base_rng.sample(StandardNormal);
                    *v = if is_norm {
                        1.0 + base_std * z
                    } else {
                        base_std * z
                    };
                }
                if model == 0 {
                    return;
                }
                let mut shared_rng = self.rng(0, index, chunk, 1);
                let mut private_rng = self.rng(model, index, chunk, 2);
                for v in out.iter_mut() {
                    let shared: f32 = shared_rng.sample(StandardNormal);
                    let private: f32 = private_rng.sample(StandardNormal);
                    *v += delta_std * (shared_weight * shared + private_weight * private);
                }
            });
        values
    }

    fn rng(&self, model: usize, tensor: usize, chunk: usize, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(
            ((model as u64) << 48) ^ ((tensor as u64) << 24) ^ (chunk as u64) ^ (stream << 62),
        );
        rng
    }
}

/// Why generating a family failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{Checkpoint, ModelConfig};

    #[test]
    fn writes_a_family_that_opens_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let shape = LlamaShape {
            hidden: 16,
            intermediate: 24,
            layers: 2,
            vocab: 32,
            heads: 2,
            kv_heads: 1,
        };
        let mut family = SynthFamily::new(shape, 2);
        family.shard_size = 2_000; // several shards per model
        let folders = family.write(dir.path(), false, &Job::default()).unwrap();
        assert_eq!(folders.len(), 3);
        let base = Checkpoint::open(&folders[0]).unwrap();
        let ft = Checkpoint::open(&folders[1]).unwrap();
        assert!(base.shards().len() > 1);
        assert_eq!(base.tensors().len(), 2 + 9 * 2 + 1);
        assert_eq!(base.config().and_then(ModelConfig::num_layers), Some(2));
        let q = base
            .index_of("model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        let q_ft = ft
            .index_of("model.layers.1.self_attn.q_proj.weight")
            .unwrap();
        assert_ne!(base.view(q).to_f32_vec(), ft.view(q_ft).to_f32_vec());

        let again = tempfile::tempdir().unwrap();
        let folders2 = family.write(again.path(), false, &Job::default()).unwrap();
        let files = |dir: &Path| {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            entries
                .into_iter()
                .map(|p| std::fs::read(p).unwrap())
                .collect::<Vec<_>>()
        };
        let first = files(&folders[2]);
        assert!(first.len() >= 4, "shards, index and configs");
        assert_eq!(first, files(&folders2[2]));
    }
}
