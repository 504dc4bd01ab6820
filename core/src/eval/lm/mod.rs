//! Causal language models run in process, for objectives that read how a merge behaves on
//! text (perplexity per domain) rather than how far its weights moved.
//!
//! candle-transformers' models return the last position's logits only (they are written for
//! generation), and perplexity needs every position's; [`llama::LlamaLm`] is the
//! Llama-family forward over a whole window, with candle-transformers' configuration and
//! its weights' names.

pub mod llama;

use candle_core::{D, Tensor};

/// The mean negative log-likelihood (nats per token) of `tokens[1..]` under `logits`, the
/// model's (seq × vocab) logits for `tokens`: position p predicts token p + 1.
pub fn mean_nll(logits: &Tensor, tokens: &[u32]) -> candle_core::Result<f64> {
    let n = tokens.len();
    if n < 2 {
        candle_core::bail!("perplexity needs at least two tokens, got {n}");
    }
    let predicting = logits.narrow(0, 0, n - 1)?;
    let log_probs = candle_nn::ops::log_softmax(&predicting, D::Minus1)?;
    let targets = Tensor::new(&tokens[1..], logits.device())?.unsqueeze(1)?;
    let picked = log_probs.gather(&targets, 1)?.squeeze(1)?;
    // Summed in f64: a long text's total must not lose the small terms.
    let total = picked
        .to_dtype(candle_core::DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok(-total / (n - 1) as f64)
}
