//! LoRA extraction (`mergescope extract-lora`): a PEFT adapter from the truncated SVD of each
//! targeted task vector τ = θ_m − θ_b, as mergekit-extract-lora 0.1.5 makes it.
//!
//! mergekit's choices kept: every 2-D linear weight is a target and embeddings/`lm_head` are
//! not unless asked; τ = U·S·Vᵀ gives `B = U_r·√S_r`, `A = √S_r·V_rᵀ` (the scale split evenly);
//! `lora_alpha = r`, so Δ = B·A; a module whose kept rank is below `r` goes into `rank_pattern`
//! and `alpha_pattern` with alpha equal to its rank. Differences: `--sv-threshold` is relative
//! (σ below ε·σ₁ dropped; mergekit's `--sv-epsilon` is absolute), the SVD is randomized above
//! [`SpectraSettings::exact_below`] (the analysis's, [`factorize`]), a τ that is exactly zero
//! gets no module at all, and tensors that are not decomposed (norms, embeddings without
//! `include_embeddings`) are reported rather than saved at full rank (`modules_to_save`).

use std::collections::BTreeMap;
use std::path::Path;

use faer::{Mat, MatRef};
use serde::Serialize;

use super::names::{PEFT_PREFIX, peft_names};
use crate::analysis::spectrum::{SpectraSettings, as_matrix, factorize};
use crate::checkpoint::Checkpoint;
use crate::dtype::Dtype;
use crate::export::{Export, ExportError, ExportOptions, ExportSummary, OutputTensor};
use crate::layout::ModuleKind;

/// What to extract.
#[derive(Clone, Debug)]
pub struct ExtractSettings {
    /// The largest rank per module (`r`).
    pub rank: usize,
    /// Singular values below `sv_threshold · σ₁` are dropped (0 keeps `rank`).
    pub sv_threshold: f64,
    /// Decompose embeddings and the output head too (as `lora_embedding_A/B` and a linear head).
    pub include_embeddings: bool,
    /// The SVD's settings (`rank` is overridden by the one above).
    pub spectra: SpectraSettings,
}

/// One tensor to decompose.
#[derive(Clone, Debug)]
pub struct Target {
    /// The weight's name, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub tensor: String,
    /// The module, i.e. the name without `.weight`.
    pub module: String,
    pub base: usize,
    pub model: usize,
    /// An input embedding: PEFT's Δ is `(B·A)ᵀ`, so τᵀ is decomposed.
    pub embedding: bool,
}

/// A tensor the two models do not share as a decomposable weight, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    pub tensor: String,
    pub reason: &'static str,
}

/// The targets mergekit-extract-lora would decompose, and what it would not.
pub fn targets(
    base: &Checkpoint,
    model: &Checkpoint,
    include_embeddings: bool,
) -> (Vec<Target>, Vec<Skipped>) {
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for (m, info) in model.tensors().iter().enumerate() {
        let mut skip = |reason| {
            skipped.push(Skipped {
                tensor: info.name.clone(),
                reason,
            });
        };
        let Some(b) = base.index_of(&info.name) else {
            skip("not in the base");
            continue;
        };
        let Some(module) = info.name.strip_suffix(".weight") else {
            skip("not a weight");
            continue;
        };
        if base.tensors()[b].shape != info.shape {
            skip("shape differs from the base's");
            continue;
        }
        if info.shape.len() != 2 || info.float_type().is_none() {
            skip("not a 2-D float weight");
            continue;
        }
        let kind = ModuleKind::classify(&info.name);
        let embedding = matches!(kind, ModuleKind::Embedding | ModuleKind::PositionEmbedding);
        if (embedding || kind == ModuleKind::Head) && !include_embeddings {
            skip("embedding or output head (include them with --embeddings)");
            continue;
        }
        targets.push(Target {
            tensor: info.name.clone(),
            module: module.to_owned(),
            base: b,
            model: m,
            embedding,
        });
    }
    (targets, skipped)
}

/// One module's factors: `A` is `(rank, cols)` and `B` `(rows, rank)`, row-major.
#[derive(Clone, Debug)]
pub struct Factors {
    pub target: Target,
    pub rank: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// `‖τ‖_F` and `‖τ − Δ‖_F`.
    pub tau_norm: f64,
    pub residual_norm: f64,
}

impl Factors {
    /// `‖τ − B·A‖_F / ‖τ‖_F` (0 for a zero τ).
    pub fn relative_error(&self) -> f64 {
        if self.tau_norm > 0.0 {
            self.residual_norm / self.tau_norm
        } else {
            0.0
        }
    }
}

/// Decomposes `target`'s task vector.
pub fn decompose(
    base: &Checkpoint,
    model: &Checkpoint,
    target: &Target,
    settings: &ExtractSettings,
) -> Factors {
    let mut tau = model.view(target.model).to_f32_vec();
    let theta = base.view(target.base).to_f32_vec();
    for (t, b) in tau.iter_mut().zip(&theta) {
        *t -= b;
    }
    drop(theta);
    let shape = &base.tensors()[target.base].shape;
    let stored = as_matrix(&tau, shape).expect("targets are 2-D");
    // Δ = (B·A)ᵀ for embeddings: factor τᵀ.
    let matrix = if target.embedding {
        stored.transpose()
    } else {
        stored
    };
    let spectra = SpectraSettings {
        rank: settings.rank,
        ..settings.spectra.clone()
    };
    let svd = factorize(matrix, &spectra, &target.tensor, 0);
    let sigma1 = svd.sigma.first().copied().unwrap_or(0.0);
    let rank = svd
        .sigma
        .iter()
        .take(settings.rank)
        .take_while(|&&s| s > 0.0 && s >= settings.sv_threshold * sigma1)
        .count();
    let (rows, cols) = (matrix.nrows(), matrix.ncols());
    let root = |i: usize| svd.sigma[i].sqrt() as f32;
    let b = Mat::<f32>::from_fn(rows, rank, |i, j| svd.u[(i, j)] * root(j));
    let a = Mat::<f32>::from_fn(rank, cols, |i, j| root(i) * svd.v[(j, i)]);
    let residual = residual_norm(matrix, a.as_ref(), b.as_ref());
    Factors {
        target: target.clone(),
        rank,
        a: row_major(a.as_ref()),
        b: row_major(b.as_ref()),
        rows,
        cols,
        tau_norm: svd.fro2.sqrt(),
        residual_norm: residual,
    }
}

/// `‖τ − B·A‖_F`, accumulated in f64.
fn residual_norm(tau: MatRef<'_, f32>, a: MatRef<'_, f32>, b: MatRef<'_, f32>) -> f64 {
    let delta = b * a;
    let mut sum = 0f64;
    for j in 0..tau.ncols() {
        for i in 0..tau.nrows() {
            let d = f64::from(tau[(i, j)]) - f64::from(delta[(i, j)]);
            sum += d * d;
        }
    }
    sum.sqrt()
}

fn row_major(m: MatRef<'_, f32>) -> Vec<f32> {
    (0..m.nrows())
        .flat_map(|i| (0..m.ncols()).map(move |j| m[(i, j)]))
        .collect()
}

/// The adapter file's tensors for `factors`, with their names.
fn factor_tensors(f: &Factors) -> [(String, Vec<usize>, &[f32]); 2] {
    let (a_name, b_name) = if f.target.embedding {
        (
            format!("{PEFT_PREFIX}{}.lora_embedding_A", f.target.module),
            format!("{PEFT_PREFIX}{}.lora_embedding_B", f.target.module),
        )
    } else {
        peft_names(&f.target.module)
    };
    [
        (a_name, vec![f.rank, f.cols], &f.a),
        (b_name, vec![f.rows, f.rank], &f.b),
    ]
}

/// `adapter_config.json` for `factors` extracted at `rank` from `base_path`.
pub fn adapter_config(factors: &[Factors], rank: usize, base_path: &Path) -> serde_json::Value {
    let kept: Vec<&Factors> = factors.iter().filter(|f| f.rank > 0).collect();
    let r = kept.iter().map(|f| f.rank).max().unwrap_or(rank).max(1);
    let lowered: BTreeMap<&str, usize> = kept
        .iter()
        .filter(|f| f.rank != r)
        .map(|f| (f.target.module.as_str(), f.rank))
        .collect();
    let mut target_modules: Vec<&str> = kept
        .iter()
        .map(|f| {
            f.target
                .module
                .rsplit('.')
                .next()
                .unwrap_or(&f.target.module)
        })
        .collect();
    target_modules.sort_unstable();
    target_modules.dedup();
    serde_json::json!({
        "base_model_name_or_path": base_path.to_string_lossy(),
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": r,
        "use_rslora": false,
        "fan_in_fan_out": false,
        "target_modules": target_modules,
        "modules_to_save": serde_json::Value::Null,
        "rank_pattern": lowered,
        "alpha_pattern": lowered,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": false,
        "inference_mode": true,
    })
}

/// Writes the adapter folder atomically: `adapter_model.safetensors` (F32 factors, PEFT
/// names) and `adapter_config.json`. Modules whose τ is zero are left out.
pub fn write_adapter(
    options: &ExportOptions,
    factors: &[Factors],
    rank: usize,
    base_path: &Path,
    inputs: &[std::path::PathBuf],
) -> Result<ExportSummary, ExportError> {
    let kept: Vec<&Factors> = factors.iter().filter(|f| f.rank > 0).collect();
    let tensors: Vec<(String, Vec<usize>, &[f32])> =
        kept.iter().flat_map(|f| factor_tensors(f)).collect();
    let outputs = tensors
        .iter()
        .map(|(name, shape, _)| OutputTensor {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
        })
        .collect();
    let options = ExportOptions {
        shard_size: u64::MAX,
        ..options.clone()
    };
    let metadata = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
    let mut export = Export::begin(&options, outputs, metadata, inputs)?;
    export.name_weights_file(super::WEIGHTS_FILE_NAME);
    for (_, _, values) in &tensors {
        export.write_next(bytemuck::cast_slice(values))?;
    }
    let config = adapter_config(factors, rank, base_path);
    let text = serde_json::to_string_pretty(&config).expect("JSON values serialize");
    export.add_file(super::CONFIG_FILE_NAME, text.as_bytes())?;
    export.finish()
}

/// The per-tensor and overall reconstruction errors, for the CLI's table and `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tensors: Vec<TensorReport>,
    /// `‖τ − Δ‖_F / ‖τ‖_F` over every target together.
    pub overall_relative_error: f64,
    pub skipped: Vec<Skipped>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TensorReport {
    pub tensor: String,
    pub shape: [usize; 2],
    pub rank: usize,
    pub tau_norm: f64,
    pub relative_error: f64,
}

impl Report {
    pub fn new(factors: &[Factors], skipped: Vec<Skipped>) -> Self {
        let tau2: f64 = factors.iter().map(|f| f.tau_norm * f.tau_norm).sum();
        let res2: f64 = factors
            .iter()
            .map(|f| f.residual_norm * f.residual_norm)
            .sum();
        Self {
            tensors: factors
                .iter()
                .map(|f| TensorReport {
                    tensor: f.target.tensor.clone(),
                    shape: [f.rows, f.cols],
                    rank: f.rank,
                    tau_norm: f.tau_norm,
                    relative_error: f.relative_error(),
                })
                .collect(),
            overall_relative_error: if tau2 > 0.0 {
                (res2 / tau2).sqrt()
            } else {
                0.0
            },
            skipped,
        }
    }
}

/// Decomposes every target in file order, reporting progress in bytes of the fine-tune read
/// and stopping at the next tensor once `job` is cancelled. Each tensor is read, decomposed
/// and released before the next, so memory holds one τ at a time plus the (small) factors.
pub fn extract(
    base: &Checkpoint,
    model: &Checkpoint,
    settings: &ExtractSettings,
    job: &crate::Job,
) -> Result<(Vec<Factors>, Vec<Skipped>), crate::job::Cancelled> {
    let (targets, skipped) = targets(base, model, settings.include_embeddings);
    let bytes = |t: &Target| model.tensors()[t.model].byte_len() as u64;
    job.progress
        .start_stage("extracting LoRA", targets.iter().map(bytes).sum());
    let mut factors = Vec::with_capacity(targets.len());
    for target in &targets {
        job.check_cancelled()?;
        factors.push(decompose(base, model, target, settings));
        base.release(target.base);
        model.release(target.model);
        job.progress.add_done(bytes(target));
    }
    Ok((factors, skipped))
}
