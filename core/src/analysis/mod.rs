//! Where fine-tunes differ and where they fight (ALGORITHMS.md §4): sensitivity of every
//! tensor, interference between every pair of task vectors, and, for 2-D tensors, spectra,
//! subspace overlaps and the energy inside the base weight's dominant subspace.
//!
//! Streamed over the family like a merge: one tensor at a time, inputs read straight from the
//! memory maps (the next tensor prefetched, the finished one released), rayon inside a
//! tensor, f64 sums folded in chunk order so results do not depend on the thread count.
//! Every metric is a ratio of additive sums, so per-layer, per-module and whole-model figures
//! are exact aggregates, not means of means.

mod cache;
mod report;
pub mod spectrum;
mod sums;
mod survival;
mod tensor;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use cache::{cache_dir, load_cached, store_cached};
pub use report::{Critical, GroupReport, InputIdentity, Report, Skipped, TensorReport};
pub use spectrum::SpectraSettings;
pub use sums::{Metrics, ModelMetrics, Sums};
pub use survival::{Survival, SurvivalGroup, Survived, survival, survival_sampled};
pub use tensor::{InterferenceSettings, tensor_sums};

use crate::checkpoint::{Checkpoint, READ_AHEAD_BYTES, ReadAhead, TensorView};
use crate::family::Family;
use crate::job::{Cancelled, Job};
use crate::layout::LayerKey;
use crate::nonfinite::NonFinite;

/// What to measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSettings {
    pub interference: InterferenceSettings,
    /// Spectra, subspace overlaps and base-subspace energy of 2-D tensors; `None` skips them.
    pub spectra: Option<SpectraSettings>,
    /// Compare embedding/head tensors of different vocabulary sizes on their common rows.
    pub truncate_vocab: bool,
    /// The recipe whose merge is previewed (its YAML), if any: part of the cache key.
    pub recipe: Option<String>,
}

impl AnalysisSettings {
    /// ALGORITHMS.md §4's defaults for `models` models, spectra off.
    pub fn new(models: usize) -> Self {
        Self {
            interference: InterferenceSettings {
                density: 0.1,
                ties_density: 1.0,
                weights: vec![1.0; models],
            },
            spectra: None,
            truncate_vocab: false,
            recipe: None,
        }
    }
}

/// Why an analysis stopped.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("an analysis needs a base model to take task vectors against; pass --base")]
    NoBase,
    #[error("an analysis needs at least one model besides the base")]
    NoModels,
    #[error(
        "the recipe's method `{method}` takes no base model, so its merge has no task vectors to \
         compare; preview a recipe with a base (task_arithmetic, ties, dare_ties, della, slerp, …)"
    )]
    RecipeWithoutBase { method: String },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tensor `{tensor}`: merging it for the preview failed: {message}")]
    Merge { tensor: String, message: String },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// An input changed on disk while (or before) it was measured.
    #[error(transparent)]
    Input(#[from] crate::checkpoint::CheckpointError),
}

/// One tensor to analyse: the base's index, each model's, and the shape compared.
struct Planned {
    name: String,
    base: usize,
    models: Vec<usize>,
    shape: Vec<usize>,
}

/// Measures `family` (its base and models) as `settings` says.
pub fn analyze(
    family: &Family,
    settings: &AnalysisSettings,
    job: &Job,
) -> Result<Report, AnalysisError> {
    analyze_with_partials(family, settings, job, std::time::Duration::MAX, &mut |_| {})
}

/// [`analyze`], also handing `partial` the report of the tensors measured so far, at most once
/// per `every` (a GUI fills its panels in as the analysis goes). A partial report's `limits`
/// say how many tensors it covers.
pub fn analyze_with_partials(
    family: &Family,
    settings: &AnalysisSettings,
    job: &Job,
    every: std::time::Duration,
    partial: &mut dyn FnMut(Report),
) -> Result<Report, AnalysisError> {
    let base = family.base.as_ref().ok_or(AnalysisError::NoBase)?;
    if family.models.is_empty() {
        return Err(AnalysisError::NoModels);
    }
    let inputs = identities(family)?;
    let (planned, skipped) = plan(family, settings.truncate_vocab);
    let n_models = family.models.len();

    let bytes_of = |p: &Planned| -> u64 {
        let numel: usize = p.shape.iter().product();
        let mut total = (numel * base.checkpoint.tensors()[p.base].dtype.bitsize() / 8) as u64;
        for (m, &i) in family.models.iter().zip(&p.models) {
            total += (numel * m.checkpoint.tensors()[i].dtype.bitsize() / 8) as u64;
        }
        total
    };
    job.progress
        .start_stage("analysing", planned.iter().map(bytes_of).sum());

    let mut acc = Accumulated {
        tensors: Vec::with_capacity(planned.len()),
        whole: Sums::new(n_models),
        layers: BTreeMap::new(),
        modules: BTreeMap::new(),
        randomized: false,
        non_finite: Vec::new(),
    };
    let mut last_partial = std::time::Instant::now();
    let steps = planned
        .iter()
        .map(|p| {
            std::iter::once((&*base.checkpoint, p.base))
                .chain(
                    family
                        .models
                        .iter()
                        .zip(&p.models)
                        .map(|(m, &i)| (&*m.checkpoint, i)),
                )
                .collect()
        })
        .collect();
    let ahead = ReadAhead::new(steps, READ_AHEAD_BYTES);
    ahead.with_helper(|| -> Result<(), AnalysisError> {
        let verify = |p: &Planned| -> Result<(), AnalysisError> {
            base.checkpoint.verify_tensor(p.base)?;
            for (m, &i) in family.models.iter().zip(&p.models) {
                m.checkpoint.verify_tensor(i)?;
            }
            Ok(())
        };
        for (k, p) in planned.iter().enumerate() {
            job.check_cancelled()?;
            ahead.wait_loaded(k);
            verify(p)?;
            let b = base.checkpoint.view(p.base).leading_rows(&p.shape);
            let views: Vec<TensorView<'_>> = family
                .models
                .iter()
                .zip(&p.models)
                .map(|(m, &i)| m.checkpoint.view(i).leading_rows(&p.shape))
                .collect();
            let sums = tensor_sums(b.clone(), &views, &settings.interference);
            let found = non_finite_of(&p.name, family, &sums);
            let key = LayerKey::parse(&p.name);
            let mut report = TensorReport {
                name: p.name.clone(),
                shape: p.shape.clone(),
                block: key.block,
                module: key.module.label().to_owned(),
                numel: sums.numel,
                metrics: sums.metrics(),
                spectra: None,
                base_energy: None,
                overlaps: None,
                notes: Vec::new(),
            };
            for (label, m) in family.models.iter().zip(&sums.models) {
                if m.changed == 0 {
                    report.notes.push(format!(
                        "{} equals the base here: its top-k mask is k zeros chosen by index",
                        label.label
                    ));
                }
            }
            if !found.is_empty() {
                report.notes.push(format!(
                    "held non-finite values (NaN or ±Inf): {}; they count as unchanged here",
                    found
                        .iter()
                        .map(|f| format!("{} in {}", f.count, f.member))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if let Some(spectra) = &settings.spectra
                && p.shape.len() >= 2
            {
                acc.randomized |= add_spectra(&mut report, &b, &views, spectra);
            }
            // After the last read of this tensor: its numbers came from unchanged files.
            verify(p)?;
            for f in found {
                job.non_finite.record(f.clone());
                acc.non_finite.push(f);
            }
            acc.whole.add(&sums);
            let layer = acc
                .layers
                .entry(key.block)
                .or_insert_with(|| (Sums::new(n_models), 0));
            layer.0.add(&sums);
            layer.1 += 1;
            let module = acc
                .modules
                .entry(report.module.clone())
                .or_insert_with(|| (Sums::new(n_models), 0));
            module.0.add(&sums);
            module.1 += 1;
            acc.tensors.push(report);
            base.checkpoint.release(p.base);
            for (m, &i) in family.models.iter().zip(&p.models) {
                m.checkpoint.release(i);
            }
            job.progress.add_done(bytes_of(p));
            ahead.done(k);
            if k + 1 < planned.len() && last_partial.elapsed() >= every {
                let mut report = acc.report(family, settings, &inputs, &skipped);
                report.limits.push(format!(
                    "{}{} of {} tensors measured so far",
                    report::PARTIAL,
                    k + 1,
                    planned.len()
                ));
                partial(report);
                last_partial = std::time::Instant::now();
            }
        }
        Ok(())
    })?;
    job.check_cancelled()?;
    Ok(acc.report(family, settings, &inputs, &skipped))
}

/// What the analysis has measured so far.
struct Accumulated {
    tensors: Vec<TensorReport>,
    whole: Sums,
    layers: BTreeMap<Option<usize>, (Sums, usize)>,
    modules: BTreeMap<String, (Sums, usize)>,
    /// Some spectrum was randomized.
    randomized: bool,
    non_finite: Vec<NonFinite>,
}

impl Accumulated {
    fn report(
        &self,
        family: &Family,
        settings: &AnalysisSettings,
        inputs: &[InputIdentity],
        skipped: &[Skipped],
    ) -> Report {
        let (tensors, whole, layers, modules, randomized) = (
            &self.tensors,
            &self.whole,
            &self.layers,
            &self.modules,
            self.randomized,
        );
        let group = |name: String, (sums, count): &(Sums, usize)| GroupReport {
            name,
            tensors: *count,
            numel: sums.numel,
            metrics: sums.metrics(),
        };
        let mut critical: Vec<Critical> = tensors
            .iter()
            .filter_map(|t| {
                let rels: Vec<f64> = t.metrics.models.iter().filter_map(|m| m.rel).collect();
                (!rels.is_empty()).then(|| Critical {
                    tensor: t.name.clone(),
                    mean_rel: rels.iter().sum::<f64>() / rels.len() as f64,
                })
            })
            .collect();
        critical.sort_by(|a, b| b.mean_rel.total_cmp(&a.mean_rel));
        let mut limits = Vec::new();
        match &settings.spectra {
        None => limits.push(
            "spectra, subspace overlaps and base-subspace energy were not computed (ask for them \
             with --rank R or --metrics sensitivity,interference,spectra)"
                .to_owned(),
        ),
        Some(s) if randomized => limits.push(format!(
            "2-D tensors with min(rows, cols) above {} have randomized spectra (top {} values, \
             oversampling {}, {} power iterations, seed {}): their effective rank covers those \
             values only, and their base-subspace energy uses r = {} with no complement",
            s.exact_below, s.rank, s.oversample, s.power_iterations, s.seed, s.rank
        )),
        Some(_) => {}
    }
        let d = settings.interference.density;
        Report {
            mergescope_version: crate::merge::engine::VERSION.to_owned(),
            inputs: inputs.to_vec(),
            settings: settings.clone(),
            models: family.models.iter().map(|m| m.label.clone()).collect(),
            whole_model: group("whole model".to_owned(), &(whole.clone(), tensors.len())),
            layers: layers
                .iter()
                .map(|(block, g)| {
                    group(
                        block.map_or_else(|| "outside blocks".to_owned(), |b| format!("layer {b}")),
                        g,
                    )
                })
                .collect(),
            modules: modules.iter().map(|(m, g)| group(m.clone(), g)).collect(),
            tensors: tensors.clone(),
            critical,
            skipped: skipped.to_vec(),
            limits,
            jaccard_chance: d / (2.0 - d),
            survival: None,
            non_finite: self.non_finite.clone(),
        }
    }
}

/// Spectra, base-subspace energies and pairwise overlaps of one 2-D tensor. Returns whether
/// any SVD was randomized.
fn add_spectra(
    report: &mut TensorReport,
    base: &TensorView<'_>,
    models: &[TensorView<'_>],
    settings: &SpectraSettings,
) -> bool {
    use rayon::prelude::*;

    // Non-finite weights are zeros here, as in the sums: an SVD of a matrix with a NaN has no
    // meaning and faer's iterations need not converge on one.
    let finite = |mut values: Vec<f32>| {
        for v in values.iter_mut().filter(|v| !v.is_finite()) {
            *v = 0.0;
        }
        values
    };
    let base_values = finite(base.to_f32_vec());
    let shape = report.shape.clone();
    let name = report.name.clone();
    // The base and every task vector are factorized in parallel (each SVD is mostly thin
    // matrix products that do not keep two cores busy on their own).
    let (base_factors, per_model) = rayon::join(
        || {
            let matrix = spectrum::as_matrix(&base_values, &shape).expect("2-D");
            spectrum::factorize(matrix, settings, &name, 0)
        },
        || {
            models
                .par_iter()
                .enumerate()
                .map(|(i, model)| {
                    let mut tau = finite(model.to_f32_vec());
                    for (t, b) in tau.iter_mut().zip(&base_values) {
                        *t -= b;
                    }
                    let matrix = spectrum::as_matrix(&tau, &shape).expect("2-D");
                    let f = spectrum::factorize(matrix, settings, &name, i + 1);
                    (tau, f)
                })
                .collect::<Vec<_>>()
        },
    );
    let mut randomized = !base_factors.exact;
    let mut spectra = Vec::with_capacity(models.len());
    let mut energies = Vec::with_capacity(models.len());
    for (tau, f) in &per_model {
        randomized |= !f.exact;
        spectra.push(spectrum::Spectrum::of(f, settings.rank));
        let matrix = spectrum::as_matrix(tau, &shape).expect("2-D");
        energies.push(spectrum::base_energy(&base_factors, matrix));
    }
    let mut overlaps = Vec::new();
    for i in 0..per_model.len() {
        for j in i + 1..per_model.len() {
            overlaps.push(spectrum::pair_overlap(
                (i, &per_model[i].1),
                (j, &per_model[j].1),
                settings.overlap_rank,
            ));
        }
    }
    report.spectra = Some(spectra);
    report.base_energy = Some(energies);
    report.overlaps = Some(overlaps);
    randomized
}

/// What `sums` counted of non-finite values in `tensor`, by member.
fn non_finite_of(tensor: &str, family: &Family, sums: &Sums) -> Vec<NonFinite> {
    let base = family.base.as_ref().expect("checked by analyze");
    std::iter::once((&base.label, sums.base_non_finite))
        .chain(
            family
                .models
                .iter()
                .zip(&sums.models)
                .map(|(m, s)| (&m.label, s.non_finite)),
        )
        .filter(|&(_, count)| count > 0)
        .map(|(member, count)| NonFinite {
            tensor: tensor.to_owned(),
            member: member.clone(),
            count,
        })
        .collect()
}

/// The tensors every member has with float dtypes and comparable shapes, in the base's file
/// order, and the rest with the reason each is left out.
fn plan(family: &Family, truncate_vocab: bool) -> (Vec<Planned>, Vec<Skipped>) {
    let base = family.base.as_ref().expect("checked by analyze");
    let alignment = family.align();
    let (mut planned, mut skipped) = (Vec::new(), Vec::new());
    let mut skip = |tensor: &str, reason: String| {
        skipped.push(Skipped {
            tensor: tensor.to_owned(),
            reason,
        });
    };
    'groups: for group in &alignment.groups {
        let Some(b) = group.base else {
            skip(&group.name, "not in the base model".to_owned());
            continue;
        };
        let base_info = &base.checkpoint.tensors()[b];
        if base_info.float_type().is_none() {
            skip(
                &group.name,
                format!("{:?} is not a float dtype", base_info.dtype),
            );
            continue;
        }
        let mut shape = base_info.shape.clone();
        let mut models = Vec::with_capacity(family.models.len());
        for (member, index) in family.models.iter().zip(&group.models) {
            let Some(i) = *index else {
                skip(&group.name, format!("missing from {}", member.label));
                continue 'groups;
            };
            let info = &member.checkpoint.tensors()[i];
            if info.float_type().is_none() {
                skip(
                    &group.name,
                    format!("{:?} in {} is not a float dtype", info.dtype, member.label),
                );
                continue 'groups;
            }
            if info.shape != base_info.shape {
                let same_rows_only = info.shape.len() == shape.len()
                    && !shape.is_empty()
                    && info.shape[1..] == shape[1..];
                if truncate_vocab && same_rows_only {
                    shape[0] = shape[0].min(info.shape[0]);
                } else {
                    skip(
                        &group.name,
                        format!(
                            "shape {:?} in {} but {:?} in the base{}",
                            info.shape,
                            member.label,
                            base_info.shape,
                            if same_rows_only {
                                " (compare the common rows with --truncate-vocab)"
                            } else {
                                ""
                            }
                        ),
                    );
                    continue 'groups;
                }
            }
            models.push(i);
        }
        planned.push(Planned {
            name: group.name.clone(),
            base: b,
            models,
            shape,
        });
    }
    (planned, skipped)
}

/// Paths, sizes and header hashes of every member.
fn identities(family: &Family) -> Result<Vec<InputIdentity>, AnalysisError> {
    family
        .members()
        .map(|(id, member)| {
            Ok(InputIdentity {
                role: match id {
                    crate::family::MemberId::Base => "base".to_owned(),
                    crate::family::MemberId::Model(_) => "model".to_owned(),
                },
                label: member.label.clone(),
                path: std::fs::canonicalize(member.checkpoint.source())
                    .unwrap_or_else(|_| member.checkpoint.source().to_path_buf()),
                bytes: member
                    .checkpoint
                    .shards()
                    .iter()
                    .map(|s| s.len() as u64)
                    .sum(),
                header_sha256: header_hash(&member.checkpoint)?,
                content: format!("{:016x}", member.checkpoint.fingerprint()),
            })
        })
        .collect()
}

/// SHA-256 over each shard's 8-byte length prefix and JSON header, in shard order.
fn header_hash(checkpoint: &Checkpoint) -> Result<String, AnalysisError> {
    let mut hasher = Sha256::new();
    for shard in checkpoint.shards() {
        let io = |source| AnalysisError::Io {
            path: shard.path().to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(shard.path()).map_err(io)?;
        let mut prefix = [0u8; 8];
        file.read_exact(&mut prefix).map_err(io)?;
        let len = u64::from_le_bytes(prefix);
        let mut header = Vec::new();
        file.take(len).read_to_end(&mut header).map_err(io)?;
        hasher.update(prefix);
        hasher.update(&header);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache key of an analysis: its inputs' identities and settings.
pub fn cache_key(inputs: &[InputIdentity], settings: &AnalysisSettings) -> String {
    let mut hasher = Sha256::new();
    hasher.update(crate::merge::engine::VERSION);
    hasher.update(serde_json::to_vec(inputs).expect("identities serialize"));
    hasher.update(serde_json::to_vec(settings).expect("settings serialize"));
    hex(&hasher.finalize())
}

/// [`analyze`], answered from the cache in `cache` when an identical analysis (same files,
/// same headers, same settings) is there, and stored in it otherwise. The flag says whether
/// the report came from the cache.
pub fn analyze_cached(
    family: &Family,
    settings: &AnalysisSettings,
    job: &Job,
    cache: Option<&Path>,
) -> Result<(Report, bool), AnalysisError> {
    cached(family, settings, cache, || analyze(family, settings, job))
}

/// [`analyze_cached`] of a recipe's family, with the preview of its merge ([`survival`]) on
/// `backend`. `settings.recipe` should hold the recipe, so the cache tells recipes apart.
pub fn analyze_recipe_cached(
    plan: &crate::merge::plan::MergePlan,
    settings: &AnalysisSettings,
    backend: &dyn crate::backend::Backend,
    job: &Job,
    cache: Option<&Path>,
) -> Result<(Report, bool), AnalysisError> {
    if plan.family.base.is_none() {
        return Err(AnalysisError::RecipeWithoutBase {
            method: plan.method.spec().name.to_owned(),
        });
    }
    cached(&plan.family, settings, cache, || {
        let mut report = analyze(&plan.family, settings, job)?;
        report.survival = Some(survival(plan, backend, job)?);
        Ok(report)
    })
}

fn cached(
    family: &Family,
    settings: &AnalysisSettings,
    cache: Option<&Path>,
    compute: impl FnOnce() -> Result<Report, AnalysisError>,
) -> Result<(Report, bool), AnalysisError> {
    let Some(dir) = cache else {
        return Ok((compute()?, false));
    };
    // The fingerprint is taken from the open maps: a file replaced since it was opened would
    // match its old report, so it must be reopened first.
    for (_, member) in family.members() {
        member.checkpoint.verify_unchanged()?;
    }
    let key = cache_key(&identities(family)?, settings);
    if let Some(report) = load_cached(dir, &key) {
        return Ok((report, true));
    }
    let report = compute()?;
    // A cache that cannot be written only costs time next run.
    let _ = store_cached(dir, &key, &report);
    Ok((report, false))
}
