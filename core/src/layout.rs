//! What "per layer" means: tensor names parsed into a [`LayerKey`] (which stack of blocks, which
//! block, which module), and a [`Layout`] that knows how many blocks each stack has so
//! per-layer gradients can be evaluated the way mergekit evaluates them (ALGORITHMS.md §1.3).
//!
//! Block indices follow mergekit's rule for every family: the first `.<digits>.` in a name gives
//! the block, and everything before it names the stack (`model.layers`, `transformer.h`,
//! `encoder.block`, `down_blocks`, ...). Each stack has its own layer count. Names without such a
//! part (embeddings, final norms, heads) belong to no block and evaluate gradients at t = 0.

use std::collections::BTreeMap;

use crate::checkpoint::{Checkpoint, ModelConfig};

/// What kind of module a tensor belongs to.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ModuleKind {
    Embedding,
    PositionEmbedding,
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    /// Fused query/key/value projection (GPT-2 `c_attn`, CLIP `in_proj`).
    AttnQkv,
    MlpGate,
    MlpUp,
    MlpDown,
    Norm,
    Conv,
    Head,
    Other,
}

impl ModuleKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Embedding => "embedding",
            Self::PositionEmbedding => "position embedding",
            Self::AttnQ => "attn q",
            Self::AttnK => "attn k",
            Self::AttnV => "attn v",
            Self::AttnO => "attn o",
            Self::AttnQkv => "attn qkv",
            Self::MlpGate => "mlp gate",
            Self::MlpUp => "mlp up",
            Self::MlpDown => "mlp down",
            Self::Norm => "norm",
            Self::Conv => "conv",
            Self::Head => "head",
            Self::Other => "other",
        }
    }

    /// Classifies a tensor name. Rules are tried in order, on lower-cased dot-separated
    /// segments, so `attention.output.dense` (BERT's attention output) is seen before the
    /// generic `output.dense` (BERT's MLP down projection).
    pub fn classify(name: &str) -> Self {
        let lower = name.to_ascii_lowercase();
        let segs: Vec<&str> = lower.split('.').collect();
        let has = |s: &str| segs.contains(&s);
        let has_any = |list: &[&str]| list.iter().any(|s| has(s));
        let contains = |s: &str| lower.contains(s);
        let in_attention = has_any(&[
            "attn",
            "attn1",
            "attn2",
            "self_attn",
            "attention",
            "selfattention",
            "encdecattention",
            "self",
        ]);
        let in_mlp = has_any(&[
            "mlp",
            "densereludense",
            "feed_forward",
            "ff",
            "intermediate",
            "ffn",
        ]);

        if contains("norm")
            || has_any(&[
                "ln_1", "ln_2", "ln_f", "ln_final", "ln_pre", "ln_post", "ln",
            ])
        {
            return Self::Norm;
        }
        if has_any(&[
            "wpe",
            "position_embedding",
            "position_embeddings",
            "positional_embedding",
            "token_type_embeddings",
            "class_embedding",
            "relative_attention_bias",
        ]) {
            return Self::PositionEmbedding;
        }
        if has_any(&[
            "embed_tokens",
            "wte",
            "word_embeddings",
            "token_embedding",
            "tok_embeddings",
            "embed_in",
            "shared",
            "patch_embedding",
            "patch_embeddings",
            "patch_embed",
        ]) {
            return Self::Embedding;
        }
        if has_any(&[
            "lm_head",
            "embed_out",
            "classifier",
            "cls",
            "pooler",
            "visual_projection",
            "text_projection",
            "score",
            "head",
        ]) {
            return Self::Head;
        }
        if has_any(&["c_attn", "qkv", "query_key_value", "wqkv"]) || contains("in_proj") {
            return Self::AttnQkv;
        }
        if has_any(&["q_proj", "query", "to_q", "wq"]) || (in_attention && has("q")) {
            return Self::AttnQ;
        }
        if has_any(&["k_proj", "key", "to_k", "wk"]) || (in_attention && has("k")) {
            return Self::AttnK;
        }
        if has_any(&["v_proj", "value", "to_v", "wv"]) || (in_attention && has("v")) {
            return Self::AttnV;
        }
        if has_any(&["o_proj", "out_proj", "to_out", "dense_out"])
            || (in_attention && has_any(&["o", "c_proj", "wo"]))
            || contains("attention.output.dense")
        {
            return Self::AttnO;
        }
        if has_any(&["gate_proj", "w1", "wi_0", "gate_up_proj"]) {
            return Self::MlpGate;
        }
        if has_any(&[
            "up_proj",
            "c_fc",
            "fc1",
            "w3",
            "wi",
            "wi_1",
            "dense_h_to_4h",
        ]) || contains("intermediate.dense")
            || contains("ff.net.0")
        {
            return Self::MlpUp;
        }
        if has_any(&["down_proj", "fc2", "w2", "dense_4h_to_h"])
            || (in_mlp && has_any(&["c_proj", "wo"]))
            || contains("output.dense")
            || contains("ff.net.2")
        {
            return Self::MlpDown;
        }
        if segs.iter().any(|s| s.starts_with("conv"))
            || has_any(&[
                "proj_in",
                "proj_out",
                "downsamplers",
                "upsamplers",
                "skip_connection",
            ])
        {
            return Self::Conv;
        }
        Self::Other
    }
}

/// Where a tensor sits: which stack of blocks, which block, which module.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct LayerKey {
    /// The name before the block index (`model.layers`), `None` outside any block.
    pub stack: Option<String>,
    pub block: Option<usize>,
    pub module: ModuleKind,
}

impl LayerKey {
    pub fn parse(name: &str) -> Self {
        let (stack, block) = match split_block(name) {
            Some((stack, block)) => (Some(stack.to_owned()), Some(block)),
            None => (None, None),
        };
        Self {
            stack,
            block,
            module: ModuleKind::classify(name),
        }
    }
}

/// The largest block index a tensor name may carry. No model has come near it (the deepest
/// have a few hundred blocks); a larger number is not a layer index, and counting blocks up to
/// it would size per-layer tables by an attacker's choice. [`Checkpoint::open`] refuses names
/// above it; [`split_block`] never returns one.
///
/// [`Checkpoint::open`]: crate::Checkpoint::open
pub const MAX_BLOCK_INDEX: usize = 9_999;

/// The first `.<digits>.` in `name`: the text before it and the number (mergekit's rule for
/// architectures it infers). Numbers above [`MAX_BLOCK_INDEX`] are not block indices.
pub fn split_block(name: &str) -> Option<(&str, usize)> {
    split_block_unbounded(name).filter(|&(_, block)| block <= MAX_BLOCK_INDEX)
}

/// [`split_block`] without the bound, saturating at `usize::MAX`: for reporting a name whose
/// index is too large.
pub fn split_block_unbounded(name: &str) -> Option<(&str, usize)> {
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'.' {
            let digits_start = i + 1;
            let mut j = digits_start;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                j += 1;
            }
            if j > digits_start && j < bytes.len() && bytes[j] == b'.' {
                let block = name[digits_start..j].parse().unwrap_or(usize::MAX);
                return Some((&name[..i], block));
            }
        }
        i += 1;
    }
    None
}

/// The model families mergescope recognises by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// Llama, Mistral, Qwen and other `model.layers.N.self_attn` decoders.
    LlamaLike,
    Gpt2,
    Bert,
    Vit,
    Clip,
    T5,
    StableDiffusionUnet,
    /// Anything else: blocks come from the generic `.N.` rule.
    Generic,
}

impl Architecture {
    pub fn label(self) -> &'static str {
        match self {
            Self::LlamaLike => "Llama-like decoder",
            Self::Gpt2 => "GPT-2",
            Self::Bert => "BERT",
            Self::Vit => "ViT",
            Self::Clip => "CLIP",
            Self::T5 => "T5",
            Self::StableDiffusionUnet => "Stable Diffusion UNet",
            Self::Generic => "generic (blocks inferred from names)",
        }
    }

    /// Detects the family from `config.json` when present, else from tensor names.
    pub fn detect(config: Option<&ModelConfig>, names: &[&str]) -> Self {
        if let Some(config) = config {
            let id = format!(
                "{} {}",
                config.architecture().unwrap_or_default(),
                config.model_type().unwrap_or_default()
            )
            .to_ascii_lowercase();
            let by_config = [
                ("clip", Self::Clip),
                ("vit", Self::Vit),
                ("gpt2", Self::Gpt2),
                ("bert", Self::Bert),
                ("t5", Self::T5),
                ("unet", Self::StableDiffusionUnet),
                ("llama", Self::LlamaLike),
                ("mistral", Self::LlamaLike),
                ("mixtral", Self::LlamaLike),
                ("qwen", Self::LlamaLike),
                ("gemma", Self::LlamaLike),
                ("phi3", Self::LlamaLike),
            ];
            if let Some((_, arch)) = by_config.iter().find(|(key, _)| id.contains(key)) {
                return *arch;
            }
        }
        let any = |pattern: &str| names.iter().any(|n| n.contains(pattern));
        if any(".self_attn.q_proj") && any("layers.") && !any("vision_model") && !any("text_model")
        {
            Self::LlamaLike
        } else if any("vision_model.encoder")
            || any("text_model.encoder")
            || any("visual.transformer.resblocks")
        {
            Self::Clip
        } else if any("h.0.attn.c_attn") {
            Self::Gpt2
        } else if any("attention.self.query") && any("encoder.layer.") {
            if any("patch_embeddings") {
                Self::Vit
            } else {
                Self::Bert
            }
        } else if any("encoder.block.") && any("SelfAttention") {
            Self::T5
        } else if any("down_blocks.") || any("input_blocks.") {
            Self::StableDiffusionUnet
        } else {
            Self::Generic
        }
    }
}

/// Block counts per stack for one model, so a tensor's depth `t` can be computed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub architecture: Architecture,
    /// Stack name → number of blocks (largest index seen + 1, mergekit's rule).
    pub stacks: BTreeMap<String, usize>,
}

impl Layout {
    /// The layout of an opened checkpoint.
    pub fn of_checkpoint(checkpoint: &Checkpoint) -> Self {
        let names: Vec<&str> = checkpoint
            .tensors()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        Self::from_names(checkpoint.config(), &names)
    }

    pub fn from_names(config: Option<&ModelConfig>, names: &[&str]) -> Self {
        let architecture = Architecture::detect(config, names);
        let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
        for name in names {
            if let Some((stack, block)) = split_block(name) {
                let count = stacks.entry(stack.to_owned()).or_default();
                *count = (*count).max(block + 1);
            }
        }
        Self {
            architecture,
            stacks,
        }
    }

    /// The number of blocks of the largest stack (the model's "layer count").
    pub fn num_layers(&self) -> usize {
        self.stacks.values().copied().max().unwrap_or(0)
    }

    /// Relative depth of a tensor in [0, 1], as mergekit computes it for gradients:
    /// `block / (L - 1)` inside a stack of L blocks (1 when L == 1), and 0 for every tensor
    /// outside a block — embeddings, final norm *and* the output head.
    pub fn depth(&self, name: &str) -> f64 {
        let Some((stack, block)) = split_block(name) else {
            return 0.0;
        };
        match self.stacks.get(stack).copied().unwrap_or(block + 1) {
            0 | 1 => 1.0,
            layers => block as f64 / (layers - 1) as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ModuleKind::*;

    #[test]
    fn classifies_module_kinds_across_families() {
        let cases = [
            ("model.embed_tokens.weight", Embedding),
            ("model.layers.3.self_attn.q_proj.weight", AttnQ),
            ("model.layers.3.self_attn.k_proj.weight", AttnK),
            ("model.layers.3.self_attn.v_proj.bias", AttnV),
            ("model.layers.3.self_attn.o_proj.weight", AttnO),
            ("model.layers.3.mlp.gate_proj.weight", MlpGate),
            ("model.layers.3.mlp.up_proj.weight", MlpUp),
            ("model.layers.3.mlp.down_proj.weight", MlpDown),
            ("model.layers.3.input_layernorm.weight", Norm),
            ("model.norm.weight", Norm),
            ("lm_head.weight", Head),
            // GPT-2
            ("transformer.wte.weight", Embedding),
            ("transformer.wpe.weight", PositionEmbedding),
            ("h.0.attn.c_attn.weight", AttnQkv),
            ("h.0.attn.c_proj.weight", AttnO),
            ("h.0.mlp.c_fc.weight", MlpUp),
            ("h.0.mlp.c_proj.weight", MlpDown),
            ("h.0.ln_1.weight", Norm),
            ("transformer.ln_f.bias", Norm),
            // BERT
            ("bert.embeddings.word_embeddings.weight", Embedding),
            ("bert.encoder.layer.2.attention.self.query.weight", AttnQ),
            ("bert.encoder.layer.2.attention.self.key.weight", AttnK),
            ("bert.encoder.layer.2.attention.output.dense.weight", AttnO),
            (
                "bert.encoder.layer.2.attention.output.LayerNorm.weight",
                Norm,
            ),
            ("bert.encoder.layer.2.intermediate.dense.weight", MlpUp),
            ("bert.encoder.layer.2.output.dense.weight", MlpDown),
            ("bert.pooler.dense.weight", Head),
            // ViT / CLIP
            (
                "vit.embeddings.patch_embeddings.projection.weight",
                Embedding,
            ),
            (
                "vision_model.encoder.layers.5.self_attn.out_proj.weight",
                AttnO,
            ),
            ("vision_model.encoder.layers.5.mlp.fc1.weight", MlpUp),
            ("vision_model.encoder.layers.5.mlp.fc2.weight", MlpDown),
            ("vision_model.encoder.layers.5.layer_norm1.weight", Norm),
            (
                "visual.transformer.resblocks.3.attn.in_proj_weight",
                AttnQkv,
            ),
            ("visual_projection.weight", Head),
            // T5
            ("shared.weight", Embedding),
            ("encoder.block.1.layer.0.SelfAttention.q.weight", AttnQ),
            ("encoder.block.1.layer.0.SelfAttention.o.weight", AttnO),
            ("decoder.block.1.layer.1.EncDecAttention.v.weight", AttnV),
            ("encoder.block.1.layer.1.DenseReluDense.wi.weight", MlpUp),
            ("encoder.block.1.layer.1.DenseReluDense.wo.weight", MlpDown),
            (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                PositionEmbedding,
            ),
            // SD UNet (diffusers and original)
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                AttnQ,
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
                AttnO,
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                MlpUp,
            ),
            (
                "down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2.weight",
                MlpDown,
            ),
            ("down_blocks.0.resnets.1.conv1.weight", Conv),
            (
                "model.diffusion_model.input_blocks.1.0.emb_layers.1.weight",
                Other,
            ),
        ];
        for (name, kind) in cases {
            assert_eq!(ModuleKind::classify(name), kind, "{name}");
        }
    }

    #[test]
    fn block_is_the_first_dotted_integer() {
        assert_eq!(
            split_block("model.layers.12.mlp.up_proj.weight"),
            Some(("model.layers", 12))
        );
        assert_eq!(split_block("h.0.attn.c_attn.weight"), Some(("h", 0)));
        assert_eq!(
            split_block("encoder.block.3.layer.1.DenseReluDense.wo.weight"),
            Some(("encoder.block", 3))
        );
        assert_eq!(
            split_block("model.layers.3.mlp.experts.7.w1"),
            Some(("model.layers", 3))
        );
        assert_eq!(split_block("model.norm.weight"), None);
        assert_eq!(split_block("layers.7"), None);
    }

    #[test]
    fn depth_follows_mergekit() {
        let names = [
            "model.embed_tokens.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.3.mlp.up_proj.weight",
            "model.norm.weight",
            "lm_head.weight",
        ];
        let layout = Layout::from_names(None, &names);
        assert_eq!(layout.architecture, Architecture::Generic);
        assert_eq!(layout.num_layers(), 4);
        assert_eq!(layout.depth("model.layers.0.mlp.up_proj.weight"), 0.0);
        assert!((layout.depth("model.layers.1.self_attn.q_proj.weight") - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(layout.depth("model.layers.3.mlp.up_proj.weight"), 1.0);
        // Pre- and post-weights, the head included, evaluate gradients at t = 0.
        assert_eq!(layout.depth("lm_head.weight"), 0.0);
        assert_eq!(layout.depth("model.norm.weight"), 0.0);

        let single = Layout::from_names(None, &["blocks.0.w.weight"]);
        assert_eq!(single.depth("blocks.0.w.weight"), 1.0);

        let t5 = Layout::from_names(
            None,
            &[
                "encoder.block.0.x.weight",
                "encoder.block.5.x.weight",
                "decoder.block.2.x.weight",
            ],
        );
        assert_eq!(t5.stacks["encoder.block"], 6);
        assert_eq!(t5.stacks["decoder.block"], 3);
        assert_eq!(t5.depth("decoder.block.2.x.weight"), 1.0);
    }

    #[test]
    fn detects_families_from_names() {
        let llama = ["model.layers.0.self_attn.q_proj.weight"];
        assert_eq!(Architecture::detect(None, &llama), Architecture::LlamaLike);
        let gpt2 = ["h.0.attn.c_attn.weight"];
        assert_eq!(Architecture::detect(None, &gpt2), Architecture::Gpt2);
        let t5 = ["encoder.block.0.layer.0.SelfAttention.q.weight"];
        assert_eq!(Architecture::detect(None, &t5), Architecture::T5);
        let unet = ["down_blocks.0.resnets.0.conv1.weight"];
        assert_eq!(
            Architecture::detect(None, &unet),
            Architecture::StableDiffusionUnet
        );
    }
}
