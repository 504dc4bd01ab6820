//! PEFT's tensor names: `base_model.model.<module>.lora_A.weight` and its variants, to the
//! module and the base tensor they adapt.

/// The prefix `PeftModel` puts before the wrapped model's module names.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// Which factor a tensor of the adapter file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Factor {
    /// `A`: `(r, in)` for a linear layer, `(r, num_embeddings)` for an embedding.
    A,
    /// `B`: `(out, r)` for a linear layer, `(embedding_dim, r)` for an embedding.
    B,
}

/// One parsed adapter tensor name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FactorName {
    /// The module in the base model, e.g. `model.layers.0.self_attn.q_proj`.
    pub module: String,
    pub factor: Factor,
    /// An `nn.Embedding` adapter (`lora_embedding_A/B`), whose Δ PEFT transposes.
    pub embedding: bool,
}

impl FactorName {
    /// The base tensor this factor adapts.
    pub fn base_tensor(&self) -> String {
        format!("{}.weight", self.module)
    }
}

/// Parses `name`; `None` when it is not a LoRA factor (a bias, a DoRA magnitude, a
/// `modules_to_save` copy: features the adapter config check refuses).
pub fn parse(name: &str) -> Option<FactorName> {
    let name = name.strip_prefix(PEFT_PREFIX).unwrap_or(name);
    // PEFT saves without the adapter name; files saved by hand sometimes keep `.default`.
    let name = name.strip_suffix(".weight").unwrap_or(name);
    let name = name.strip_suffix(".default").unwrap_or(name);
    let (module, leaf) = name.rsplit_once('.')?;
    let (factor, embedding) = match leaf {
        "lora_A" => (Factor::A, false),
        "lora_B" => (Factor::B, false),
        "lora_embedding_A" => (Factor::A, true),
        "lora_embedding_B" => (Factor::B, true),
        _ => return None,
    };
    (!module.is_empty()).then(|| FactorName {
        module: module.to_owned(),
        factor,
        embedding,
    })
}

/// The adapter file's names for a linear module's factors, as PEFT saves them.
pub fn peft_names(module: &str) -> (String, String) {
    (
        format!("{PEFT_PREFIX}{module}.lora_A.weight"),
        format!("{PEFT_PREFIX}{module}.lora_B.weight"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_names_parse_back_with_and_without_prefix() {
        let (a, b) = peft_names("model.layers.3.mlp.up_proj");
        let a = parse(&a).unwrap();
        assert_eq!(a.module, "model.layers.3.mlp.up_proj");
        assert_eq!(a.factor, Factor::A);
        assert_eq!(a.base_tensor(), "model.layers.3.mlp.up_proj.weight");
        assert_eq!(parse(&b).unwrap().factor, Factor::B);
        let bare = parse("model.layers.3.mlp.up_proj.lora_B.default.weight").unwrap();
        assert_eq!(bare.module, "model.layers.3.mlp.up_proj");
        let emb = parse("base_model.model.model.embed_tokens.lora_embedding_A").unwrap();
        assert!(emb.embedding);
        assert_eq!(emb.module, "model.embed_tokens");
    }

    #[test]
    fn other_tensors_are_not_factors() {
        assert_eq!(
            parse("base_model.model.model.layers.0.mlp.up_proj.lora_B.bias"),
            None
        );
        assert_eq!(
            parse("base_model.model.model.layers.0.q_proj.lora_magnitude_vector"),
            None
        );
        assert_eq!(
            parse("base_model.model.lm_head.modules_to_save.weight"),
            None
        );
        assert_eq!(parse("lora_A.weight"), None);
    }
}
