//! The serializable result of an analysis (schema in the README) and its readable summary.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::AnalysisSettings;
use super::spectrum::{BaseEnergy, Overlap, Spectrum};
use super::sums::Metrics;
use super::survival::Survival;

/// Which file an input was, so a report (and its cache entry) names exactly what it measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputIdentity {
    /// `base` or `model`.
    pub role: String,
    pub label: String,
    pub path: PathBuf,
    /// Bytes of every shard together.
    pub bytes: u64,
    /// SHA-256 of the shards' safetensors headers, in shard order.
    pub header_sha256: String,
    /// A fingerprint of the weights themselves: each shard's size and modification time and a
    /// hash of sampled data blocks ([`Checkpoint::fingerprint`](crate::Checkpoint::fingerprint)),
    /// so a cached report is never served for weights that changed under the same header.
    #[serde(default)]
    pub content: String,
}

/// Metrics of a set of tensors: a layer, a module kind or the whole model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub name: String,
    pub tensors: usize,
    pub numel: u64,
    pub metrics: Metrics,
}

/// One tensor's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    /// Block index (`model.layers.N`), if inside one.
    pub block: Option<usize>,
    pub module: String,
    pub numel: u64,
    pub metrics: Metrics,
    /// Per model, for 2-D tensors when spectra were asked for.
    pub spectra: Option<Vec<Spectrum>>,
    /// Per model: its energy inside the base weight's top-r subspace.
    pub base_energy: Option<Vec<BaseEnergy>>,
    /// Per pair of models.
    pub overlaps: Option<Vec<Overlap>>,
    /// Things to know when reading the figures (e.g. an all-zero task vector's top-k mask).
    pub notes: Vec<String>,
}

/// A tensor the analysis left out, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub tensor: String,
    pub reason: String,
}

/// A tensor ranked by how far fine-tuning moved it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Critical {
    pub tensor: String,
    /// Mean over models of `‖τ‖ / ‖θ_b‖`.
    pub mean_rel: f64,
}

/// How the note of a partial report (in `limits`) begins.
pub(crate) const PARTIAL: &str = "partial: ";

/// Everything an analysis found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub mergescope_version: String,
    pub inputs: Vec<InputIdentity>,
    pub settings: AnalysisSettings,
    /// Model labels, in the order of every per-model list and matrix.
    pub models: Vec<String>,
    pub whole_model: GroupReport,
    /// By block index; tensors outside any block form the group `outside blocks`.
    pub layers: Vec<GroupReport>,
    pub modules: Vec<GroupReport>,
    pub tensors: Vec<TensorReport>,
    /// Tensors by mean relative sensitivity, most moved first.
    pub critical: Vec<Critical>,
    pub skipped: Vec<Skipped>,
    /// Limits that were applied (e.g. randomized spectra), stated rather than silent.
    pub limits: Vec<String>,
    /// Chance level of the top-k Jaccard overlap for independent masks, `d / (2 − d)`.
    pub jaccard_chance: f64,
    /// With a recipe: how much of each task vector survives in its merge.
    pub survival: Option<Survival>,
    /// Tensors that held NaN or ±Inf, per input; those values count as unchanged (τ = 0) in
    /// every metric and as 0 in the spectra.
    #[serde(default)]
    pub non_finite: Vec<crate::nonfinite::NonFinite>,
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.3}"))
}

fn mean(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, count) = values
        .flatten()
        .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

impl GroupReport {
    /// Mean over pairs of models of a matrix (off the diagonal).
    pub fn mean_pairwise(matrix: &[Vec<Option<f64>>]) -> Option<f64> {
        let n = matrix.len();
        mean((0..n).flat_map(|i| (i + 1..n).map(move |j| matrix[i][j])))
    }
}

impl Report {
    /// The summary `mergescope analyze` prints: critical tensors, the task × task matrices
    /// and the most interfering layers.
    pub fn summary(&self, top: usize) -> String {
        let mut s = String::new();
        let w = &self.whole_model;
        let _ = writeln!(
            s,
            "{} tensors analysed ({} parameters), {} skipped",
            self.tensors.len(),
            w.numel,
            self.skipped.len()
        );
        let _ = writeln!(s, "\nsensitivity (whole model):");
        let _ = writeln!(
            s,
            "  {:<28} {:>12} {:>10} {:>12} {:>10} {:>13}",
            "model", "‖τ‖", "‖τ‖/‖θ‖", "mean |τ|", "changed", "TIES conflict"
        );
        for (label, m) in self.models.iter().zip(&w.metrics.models) {
            let _ = writeln!(
                s,
                "  {:<28} {:>12.4} {:>10} {:>12} {:>10} {:>13}",
                short(label, 28),
                m.l2,
                fmt(m.rel),
                m.mean_abs
                    .map_or_else(|| "—".to_owned(), |v| format!("{v:.3e}")),
                fmt(m.frac_changed),
                fmt(m.ties_conflict)
            );
        }
        let _ = writeln!(s, "\nmost moved tensors (mean ‖τ‖/‖θ_b‖ over models):");
        for c in self.critical.iter().take(top) {
            let _ = writeln!(s, "  {:>8.4}  {}", c.mean_rel, c.tensor);
        }
        for (title, matrix) in [
            ("cosine similarity of task vectors", &w.metrics.cosine),
            (
                "sign conflict (share of shared nonzeros with opposite signs)",
                &w.metrics.sign_conflict,
            ),
            ("top-k mask overlap (Jaccard)", &w.metrics.jaccard),
        ] {
            let _ = writeln!(s, "\n{title}:");
            for (i, row) in matrix.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|&v| format!("{:>7}", fmt(v))).collect();
                let _ = writeln!(
                    s,
                    "  {:<28} {}",
                    short(&self.models[i], 28),
                    cells.join(" ")
                );
            }
        }
        let _ = writeln!(
            s,
            "  (chance level of the overlap at density {}: {:.3})",
            self.settings.interference.density, self.jaccard_chance
        );
        let mut layers: Vec<(&GroupReport, f64)> = self
            .layers
            .iter()
            .filter_map(|g| GroupReport::mean_pairwise(&g.metrics.sign_conflict).map(|c| (g, c)))
            .collect();
        layers.sort_by(|a, b| b.1.total_cmp(&a.1));
        if !layers.is_empty() {
            let _ = writeln!(
                s,
                "\nmost interfering layers (mean pairwise sign conflict, cosine):"
            );
            for (g, conflict) in layers.iter().take(top) {
                let _ = writeln!(
                    s,
                    "  {:<16} conflict {:.3}  cosine {}",
                    g.name,
                    conflict,
                    fmt(GroupReport::mean_pairwise(&g.metrics.cosine))
                );
            }
        }
        if let Some(survival) = &self.survival {
            let _ = writeln!(
                s,
                "\nwhat survives in the {} merge (projection of the merged τ on each τ_i, cosine; \
                 moved: ‖τ_m‖/‖θ_b‖):",
                survival.method
            );
            let header: Vec<String> = survival
                .models
                .iter()
                .map(|m| format!("{:>15}", short(m, 15)))
                .collect();
            let _ = writeln!(s, "  {:<16} {}   {:>7}", "", header.join("   "), "moved");
            for group in std::iter::once(&survival.whole_model).chain(&survival.layers) {
                let cells: Vec<String> = group
                    .models
                    .iter()
                    .map(|m| format!("{:>7} {:>7}", fmt(m.projection), fmt(m.cosine)))
                    .collect();
                let _ = writeln!(
                    s,
                    "  {:<16} {}   {:>7}",
                    group.name,
                    cells.join("   "),
                    fmt(group.merged_relative)
                );
            }
        }
        for limit in &self.limits {
            let _ = writeln!(s, "\nnote: {limit}");
        }
        s
    }

    /// How far a partial report got ("12 of 120 tensors measured so far"); `None` when the
    /// analysis finished.
    pub fn partial(&self) -> Option<&str> {
        self.limits.iter().find_map(|l| l.strip_prefix(PARTIAL))
    }

    /// One CSV row per tensor and model: the columns a spreadsheet user wants first.
    pub fn tensors_csv(&self) -> String {
        let mut s = String::from(
            "tensor,block,module,numel,model,l2,rel,mean_abs,max_abs,frac_changed,ties_conflict\n",
        );
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
        for t in &self.tensors {
            for (label, m) in self.models.iter().zip(&t.metrics.models) {
                let _ = writeln!(
                    s,
                    "{},{},{},{},{},{},{},{},{},{},{}",
                    t.name,
                    t.block.map_or_else(String::new, |b| b.to_string()),
                    t.module,
                    t.numel,
                    csv_field(label),
                    m.l2,
                    opt(m.rel),
                    opt(m.mean_abs),
                    opt(m.max_abs),
                    opt(m.frac_changed),
                    opt(m.ties_conflict)
                );
            }
        }
        s
    }

    /// One CSV row per group (layer or module) and pair of models.
    pub fn pairs_csv(&self) -> String {
        let mut s = String::from("group,model_a,model_b,cosine,sign_conflict,jaccard\n");
        let opt = |v: Option<f64>| v.map_or_else(String::new, |v| v.to_string());
        for g in std::iter::once(&self.whole_model)
            .chain(&self.layers)
            .chain(&self.modules)
        {
            let n = self.models.len();
            for i in 0..n {
                for j in i + 1..n {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{},{}",
                        csv_field(&g.name),
                        csv_field(&self.models[i]),
                        csv_field(&self.models[j]),
                        opt(g.metrics.cosine[i][j]),
                        opt(g.metrics.sign_conflict[i][j]),
                        opt(g.metrics.jaccard[i][j])
                    );
                }
            }
        }
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The last `width` characters of a label (paths are most telling at their end).
fn short(label: &str, width: usize) -> String {
    let count = label.chars().count();
    if count <= width {
        label.to_owned()
    } else {
        format!(
            "…{}",
            label.chars().skip(count - width + 1).collect::<String>()
        )
    }
}
