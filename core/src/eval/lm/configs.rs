//! Reading each architecture's `config.json` into the options of the forward that runs it,
//! with Hugging Face transformers' defaults for the keys a file leaves out (a key set to
//! `null` means "none", as it does there). transformers ≥ 5 writes the rotary settings as
//! `rope_parameters`; older files have `rope_theta` and `rope_scaling`: both are read.

use serde_json::Value;

use super::decoder::{self, Activation, RopeScaling};
use super::gpt2;

/// The keys of one `config.json`, each read with a clear word when it is not what it should
/// be.
struct Reader<'a>(&'a Value);

impl Reader<'_> {
    /// The key's value, `None` when absent or null.
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<usize, String> {
        match self.get(key) {
            None => Err(format!("has no `{key}`")),
            Some(v) => whole(key, v),
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize, String> {
        self.get(key).map_or(Ok(default), |v| whole(key, v))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, String> {
        self.get(key).map_or(Ok(default), |v| number(key, v))
    }

    /// Absent: `default`; null: none.
    fn optional_f64(&self, key: &str, default: Option<f64>) -> Result<Option<f64>, String> {
        match self.0.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => number(key, v).map(Some),
        }
    }

    /// Absent: `default`; null: none.
    fn optional_usize(&self, key: &str, default: Option<usize>) -> Result<Option<usize>, String> {
        match self.0.get(key) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => whole(key, v).map(Some),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, String> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_bool()
                .ok_or_else(|| format!("`{key}` is {v}, not true or false"))
        })
    }

    fn str_or<'s>(&'s self, key: &str, default: &'s str) -> Result<&'s str, String> {
        self.get(key).map_or(Ok(default), |v| {
            v.as_str()
                .ok_or_else(|| format!("`{key}` is {v}, not a string"))
        })
    }
}

fn whole(key: &str, v: &Value) -> Result<usize, String> {
    v.as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| format!("`{key}` is {v}, not a whole number"))
}

fn number(key: &str, v: &Value) -> Result<f64, String> {
    v.as_f64()
        .ok_or_else(|| format!("`{key}` is {v}, not a number"))
}

fn activation(name: &str) -> Result<Activation, String> {
    Activation::named(name).ok_or_else(|| {
        format!("the activation `{name}` is not run in process (silu, gelu, gelu_new, gelu_pytorch_tanh and relu are)")
    })
}

/// `rope_theta`, the frequency scaling and the rotating fraction of each head. `phi3`: Phi-3's
/// files call LongRoPE `su` or `yarn` too.
fn rope(config: &Value, phi3: bool) -> Result<(f64, RopeScaling, f64), String> {
    let top = Reader(config);
    let params = ["rope_parameters", "rope_scaling"]
        .iter()
        .find_map(|key| config.get(*key).filter(|v| v.is_object()));
    let theta = match params.and_then(|p| p.get("rope_theta")) {
        Some(v) if !v.is_null() => number("rope_theta", v)?,
        _ => top.f64_or("rope_theta", 10_000.0)?,
    };
    let Some(params) = params else {
        let partial = top.f64_or("partial_rotary_factor", 1.0)?;
        return Ok((theta, RopeScaling::None, partial));
    };
    let p = Reader(params);
    let partial = match p.get("partial_rotary_factor") {
        Some(v) => number("partial_rotary_factor", v)?,
        None => top.f64_or("partial_rotary_factor", 1.0)?,
    };
    let kind = match p.get("rope_type") {
        Some(_) => p.str_or("rope_type", "default")?,
        None => p.str_or("type", "default")?,
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "longrope" | "su" => longrope(config, &p)?,
        "yarn" if phi3 => longrope(config, &p)?,
        "linear" => RopeScaling::Linear {
            factor: p.f64_or("factor", 1.0)?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: p.f64_or("factor", 8.0)?,
            low_freq_factor: p.f64_or("low_freq_factor", 1.0)?,
            high_freq_factor: p.f64_or("high_freq_factor", 4.0)?,
            original_max_position_embeddings: p
                .usize_or("original_max_position_embeddings", 8192)?
                as f64,
        },
        other => {
            return Err(format!(
                "the rotary scaling `{other}` is not run in process (default, linear, llama3 and \
                 longrope are)"
            ));
        }
    };
    Ok((theta, scaling, partial))
}

/// LongRoPE's factors, and its attention factor as transformers derives it when the file
/// does not give one.
fn longrope(config: &Value, p: &Reader<'_>) -> Result<RopeScaling, String> {
    let top = Reader(config);
    let factors = |key: &str| -> Result<Vec<f64>, String> {
        p.get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("LongRoPE needs `{key}`, a list of numbers"))?
            .iter()
            .map(|v| number(key, v))
            .collect()
    };
    let original = match p.get("original_max_position_embeddings") {
        Some(v) => whole("original_max_position_embeddings", v)?,
        None => top.usize("original_max_position_embeddings")?,
    };
    let factor = match p.get("factor") {
        Some(v) => number("factor", v)?,
        None => top.usize_or("max_position_embeddings", original)? as f64 / original as f64,
    };
    let attention_factor = match p.get("attention_factor") {
        Some(v) => number("attention_factor", v)?,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// Which layers attend through a sliding window of `window` tokens: `layer_types` where the
/// file has it, else `default_sliding(layer)`.
fn windows(
    config: &Value,
    layers: usize,
    window: Option<usize>,
    default_sliding: impl Fn(usize) -> bool,
) -> Result<Vec<Option<usize>>, String> {
    let Some(types) = config.get("layer_types").filter(|v| !v.is_null()) else {
        return Ok((0..layers)
            .map(|i| window.filter(|_| default_sliding(i)))
            .collect());
    };
    let types = types
        .as_array()
        .filter(|t| t.len() == layers)
        .ok_or_else(|| format!("`layer_types` is {types}, not one name per layer"))?;
    types
        .iter()
        .map(|t| match t.as_str() {
            Some("full_attention") => Ok(None),
            Some("sliding_attention") => Ok(window),
            _ => Err(format!(
                "`layer_types` holds {t}; full_attention and sliding_attention are run"
            )),
        })
        .collect()
}

/// The decoder options of a Llama, Mistral, Qwen2, Gemma, Gemma 2 or Phi-3 `config.json`;
/// `None` for another architecture.
pub fn decoder_options(
    architecture: &str,
    config: &Value,
) -> Option<Result<decoder::Options, String>> {
    let family = match architecture {
        "LlamaForCausalLM" => Family::Llama,
        "MistralForCausalLM" => Family::Mistral,
        "Qwen2ForCausalLM" => Family::Qwen2,
        "GemmaForCausalLM" => Family::Gemma,
        "Gemma2ForCausalLM" => Family::Gemma2,
        "Phi3ForCausalLM" => Family::Phi3,
        _ => return None,
    };
    Some(read_decoder(family, config))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Llama,
    Mistral,
    Qwen2,
    Gemma,
    Gemma2,
    Phi3,
}

fn read_decoder(family: Family, config: &Value) -> Result<decoder::Options, String> {
    use Family::*;
    let c = Reader(config);
    let gemma = matches!(family, Gemma | Gemma2);
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let kv_heads = c.usize_or("num_key_value_heads", heads)?;
    let layers = c.usize("num_hidden_layers")?;
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 {
        return Err(format!(
            "{heads} attention heads cannot share {kv_heads} key/value heads"
        ));
    }
    let head_dim = match c.get("head_dim") {
        Some(v) => whole("head_dim", v)?,
        None if gemma => 256,
        None => hidden / heads,
    };
    let (rope_theta, rope_scaling, partial) = rope(config, family == Phi3)?;
    let rotary_dim = (head_dim as f64 * partial) as usize;
    if head_dim == 0 || !rotary_dim.is_multiple_of(2) || rotary_dim == 0 || rotary_dim > head_dim {
        return Err(format!(
            "heads of {head_dim} dimensions with {rotary_dim} rotating: need an even number, 2 to {head_dim}"
        ));
    }
    if let RopeScaling::LongRope {
        short_factor,
        long_factor,
        ..
    } = &rope_scaling
        && (short_factor.len() != rotary_dim / 2 || long_factor.len() != rotary_dim / 2)
    {
        return Err(format!(
            "LongRoPE has {} short and {} long factors for {} rotary frequencies",
            short_factor.len(),
            long_factor.len(),
            rotary_dim / 2
        ));
    }
    let activation = match family {
        // Gemma's first releases said `gelu` and meant the tanh approximation.
        Gemma => match c.get("hidden_activation").or(c.get("hidden_act")) {
            Some(Value::String(name)) if name == "gelu" => Activation::GeluTanh,
            Some(Value::String(name)) => activation(name)?,
            _ => Activation::GeluTanh,
        },
        Gemma2 => activation(c.str_or("hidden_activation", "gelu_pytorch_tanh")?)?,
        _ => activation(c.str_or("hidden_act", "silu")?)?,
    };
    let attention_bias = c.bool_or("attention_bias", false)?;
    let sliding_window = match family {
        Mistral | Gemma2 => c.optional_usize("sliding_window", Some(4096))?,
        Phi3 => c.optional_usize("sliding_window", None)?,
        Qwen2 if c.bool_or("use_sliding_window", false)? => {
            c.optional_usize("sliding_window", Some(4096))?
        }
        _ => None,
    };
    let max_window_layers = c.usize_or("max_window_layers", 28)?;
    let windows = windows(config, layers, sliding_window, |i| match family {
        Gemma2 => i % 2 == 0,
        Qwen2 => i >= max_window_layers,
        Mistral | Phi3 => true,
        _ => false,
    })?;
    let attention_scale = if family == Gemma2 {
        1.0 / c.f64_or("query_pre_attn_scalar", 256.0)?.sqrt()
    } else {
        1.0 / (head_dim as f64).sqrt()
    };
    Ok(decoder::Options {
        vocab: c.usize("vocab_size")?,
        hidden,
        intermediate: c.usize("intermediate_size")?,
        layers,
        heads,
        kv_heads,
        head_dim,
        max_positions: c.usize_or("max_position_embeddings", 2048)?,
        rms_norm_eps: c.f64_or("rms_norm_eps", if family == Phi3 { 1e-5 } else { 1e-6 })?,
        norm_plus_one: gemma,
        qkv_bias: family == Qwen2 || attention_bias,
        o_bias: matches!(family, Llama | Gemma | Gemma2) && attention_bias,
        mlp_bias: family == Llama && c.bool_or("mlp_bias", false)?,
        fused_qkv: family == Phi3,
        fused_gate_up: family == Phi3,
        activation,
        embed_scale: gemma.then(|| (hidden as f64).sqrt()),
        sandwich_norms: family == Gemma2,
        attention_scale,
        attention_softcap: if family == Gemma2 {
            c.optional_f64("attn_logit_softcapping", Some(50.0))?
        } else {
            None
        },
        final_softcap: if family == Gemma2 {
            c.optional_f64("final_logit_softcapping", Some(30.0))?
        } else {
            None
        },
        windows,
        rope_theta,
        rope_scaling,
        rotary_dim,
        tie_embeddings: c.bool_or("tie_word_embeddings", gemma)?,
        differentiable: false,
    })
}

/// The options of a GPT-2 `config.json`.
pub fn gpt2_options(config: &Value) -> Result<gpt2::Options, String> {
    let c = Reader(config);
    let hidden = c.usize("n_embd")?;
    let heads = c.usize("n_head")?;
    if heads == 0 || hidden % heads != 0 {
        return Err(format!(
            "{hidden} dimensions cannot split into {heads} heads"
        ));
    }
    Ok(gpt2::Options {
        vocab: c.usize("vocab_size")?,
        hidden,
        layers: c.usize("n_layer")?,
        heads,
        inner: c.usize_or("n_inner", 4 * hidden)?,
        max_positions: c.usize_or("n_positions", 1024)?,
        layer_norm_eps: c.f64_or("layer_norm_epsilon", 1e-5)?,
        activation: activation(c.str_or("activation_function", "gelu_new")?)?,
        scale_attn_weights: c.bool_or("scale_attn_weights", true)?,
        scale_attn_by_inverse_layer_idx: c.bool_or("scale_attn_by_inverse_layer_idx", false)?,
        tie_embeddings: c.bool_or("tie_word_embeddings", true)?,
    })
}
