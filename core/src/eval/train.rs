//! Training the demo family on the CPU with candle: a base pre-trained briefly on a mix of the
//! four domains, then one expert per domain fine-tuned from it. Seeded: the same seed and
//! thread count give the same models.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Result, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer as _, ParamsAdamW};
use rand::SeedableRng as _;
use rand::seq::SliceRandom as _;
use rand_chacha::ChaCha8Rng;

use super::digits::{Digits, Domain, PIXELS, Split};
use super::vit::{self, VitConfig, Weights};

/// How the family is trained.
#[derive(Clone, Copy, Debug)]
pub struct TrainOptions {
    pub seed: u64,
    pub base_epochs: usize,
    pub expert_epochs: usize,
    pub batch: usize,
    pub base_lr: f64,
    pub expert_lr: f64,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 7,
            // A base that is good on every domain but not great, and experts that specialise
            // without leaving its basin: merges of them then beat the base (README table).
            base_epochs: 4,
            expert_epochs: 4,
            batch: 64,
            base_lr: 5e-3,
            expert_lr: 2e-3,
        }
    }
}

/// Named values of one model.
pub type Values = BTreeMap<String, Vec<f32>>;

/// The trained family.
#[derive(Debug)]
pub struct TrainedFamily {
    pub base: Values,
    pub experts: Vec<(Domain, Values)>,
}

struct Vars(BTreeMap<String, Var>);

impl Weights for Vars {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.0
            .get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{name}`")))
    }
}

/// One training stage's schedule.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    epochs: usize,
    lr: f64,
    batch: usize,
    seed: u64,
}

/// Trains `init` on `(pixels, labels)` with AdamW; `log` hears one line per epoch.
fn fit(
    config: VitConfig,
    init: &Values,
    (pixels, labels): (&[f32], &[u8]),
    Schedule {
        epochs,
        lr,
        batch,
        seed,
    }: Schedule,
    log: &mut dyn FnMut(String),
) -> Result<Values> {
    let vars = Vars(
        config
            .tensors()
            .into_iter()
            .map(|(name, shape)| {
                let var = Var::from_slice(&init[&name], shape, &Device::Cpu)?;
                Ok((name, var))
            })
            .collect::<Result<_>>()?,
    );
    let mut optimizer = AdamW::new(
        vars.0.values().cloned().collect(),
        ParamsAdamW {
            lr,
            weight_decay: 0.01,
            ..ParamsAdamW::default()
        },
    )?;
    let n = labels.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for epoch in 0..epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut batches) = (0.0, 0);
        for chunk in order.chunks(batch) {
            let mut x = Vec::with_capacity(chunk.len() * PIXELS);
            let mut y = Vec::with_capacity(chunk.len());
            for &i in chunk {
                x.extend_from_slice(&pixels[i * PIXELS..(i + 1) * PIXELS]);
                y.push(u32::from(labels[i]));
            }
            let x = Tensor::from_vec(x, (chunk.len(), PIXELS), &Device::Cpu)?;
            let y = Tensor::from_vec(y, chunk.len(), &Device::Cpu)?;
            let logits = vit::forward(config, &vars, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            optimizer.backward_step(&loss)?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
        }
        log(format!(
            "  epoch {}: loss {:.4}",
            epoch + 1,
            loss_sum / f64::from(batches)
        ));
    }
    vars.0
        .iter()
        .map(|(name, var)| {
            Ok((
                name.clone(),
                var.as_tensor().flatten_all()?.to_vec1::<f32>()?,
            ))
        })
        .collect()
}

/// Trains the base and the four experts.
pub fn train(options: &TrainOptions, log: &mut dyn FnMut(String)) -> Result<TrainedFamily> {
    let config = VitConfig::DEMO;
    let digits = Digits::load();
    let init = config.init(options.seed);
    let (mut mixed_pixels, mut mixed_labels) = (Vec::new(), Vec::new());
    for domain in Domain::ALL {
        let (p, l) = digits.samples(domain, Split::Train);
        mixed_pixels.extend(p);
        mixed_labels.extend(l);
    }
    log(format!(
        "base: {} epochs on all four domains ({} images)",
        options.base_epochs,
        mixed_labels.len()
    ));
    let base = fit(
        config,
        &init,
        (&mixed_pixels, &mixed_labels),
        Schedule {
            epochs: options.base_epochs,
            lr: options.base_lr,
            batch: options.batch,
            seed: options.seed,
        },
        log,
    )?;
    let mut experts = Vec::new();
    for (k, domain) in Domain::ALL.into_iter().enumerate() {
        let (pixels, labels) = digits.samples(domain, Split::Train);
        log(format!(
            "{}: {} epochs from the base ({} images)",
            domain.name(),
            options.expert_epochs,
            labels.len()
        ));
        let expert = fit(
            config,
            &base,
            (&pixels, &labels),
            Schedule {
                epochs: options.expert_epochs,
                lr: options.expert_lr,
                batch: options.batch,
                seed: options.seed + 1 + k as u64,
            },
            log,
        )?;
        experts.push((domain, expert));
    }
    Ok(TrainedFamily { base, experts })
}

/// Writes one model as a Hugging Face folder: `config.json` and `model.safetensors` (f32).
pub fn write_model(folder: &Path, values: &Values) -> std::io::Result<()> {
    let config = VitConfig::DEMO;
    std::fs::create_dir_all(folder)?;
    let mut text =
        serde_json::to_string_pretty(&config.hf_config()).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(folder.join("config.json"), text)?;
    let tensors = vit::to_tensors(config, values).map_err(std::io::Error::other)?;
    let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| (name.clone(), values[name].clone(), t.dims().to_vec()))
        .collect();
    write_f32_safetensors(&folder.join("model.safetensors"), &tensors)
}

/// Writes f32 tensors (name, values, shape) as a safetensors file, with the `format: pt`
/// metadata Hugging Face's loaders ask for.
pub(crate) fn write_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<f32>, Vec<usize>)],
) -> std::io::Result<()> {
    let bytes: Vec<(&str, Vec<u8>, &[usize])> = tensors
        .iter()
        .map(|(name, values, shape)| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.as_str(), data, shape.as_slice())
        })
        .collect();
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), data)
                .map(|v| (*name, v))
                .map_err(std::io::Error::other)
        })
        .collect::<std::io::Result<_>>()?;
    let metadata = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped demo models were written by this writer: read back and written again, each
    /// gives the same bytes (the digits ViT and the language model).
    #[test]
    fn the_writer_gives_the_shipped_models_bytes_back() {
        let dir = tempfile::tempdir().unwrap();
        for shipped in ["../assets/demo/base", "../assets/lm-demo/base"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(shipped)
                .join("model.safetensors");
            let bytes = std::fs::read(&path).unwrap();
            let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let tensors: Vec<(String, Vec<f32>, Vec<usize>)> = file
                .tensors()
                .into_iter()
                .map(|(name, view)| {
                    let values = view
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    (name, values, view.shape().to_vec())
                })
                .collect();
            let again = dir.path().join("model.safetensors");
            write_f32_safetensors(&again, &tensors).unwrap();
            assert!(std::fs::read(&again).unwrap() == bytes, "{shipped}");
        }
    }
}
