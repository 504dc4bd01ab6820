//! What every method and parameter of the Merge panel does, as tooltips: what it does, its
//! range and default, and a line on when to use it with the paper. Defaults come from the
//! engine's own method declarations (`MethodSpec`), so a tooltip never disagrees with a merge.
//! Definitions: shared/ALGORITHMS.md §2.

use std::ops::RangeInclusive;

use mergescope_core::merge::methods::{Lookup, lookup};
use mergescope_core::merge::params::Value;

/// A method: what it does and when to use it (with its paper).
struct MethodText {
    name: &'static str,
    what: &'static str,
    when: &'static str,
}

const METHOD_TEXTS: [MethodText; 23] = [
    MethodText {
        name: "task_arithmetic",
        what: "Adds each model's task vector (its weights minus the base's), times its weight, \
               to the base, all scaled by lambda.",
        when: "The baseline to start from, and enough when the tasks barely interfere. \
               Task Arithmetic: Ilharco et al. 2023, \"Editing Models with Task Arithmetic\".",
    },
    MethodText {
        name: "ties",
        what: "Trims each task vector to its largest-magnitude entries (density), elects a sign \
               per entry by the weighted sum, and averages only the entries that agree with it.",
        when: "Several fine-tunes whose updates fight (see Interference: sign conflict). \
               TIES-Merging: Yadav et al. 2023.",
    },
    MethodText {
        name: "dare_ties",
        what: "Drops entries of each task vector at random (keeping density of them), rescales \
               what is left, then TIES's sign election and average.",
        when: "Many fine-tunes of one base with small, redundant updates (typical of LLM SFT), \
               that also conflict in sign. DARE: Yu et al. 2024 (\"Language Models are Super \
               Mario\"), with TIES: Yadav et al. 2023.",
    },
    MethodText {
        name: "dare_linear",
        what: "DARE's random drop and rescale, then a weighted sum of the task vectors without \
               sign election.",
        when: "As dare_ties when signs rarely conflict. DARE: Yu et al. 2024.",
    },
    MethodText {
        name: "della",
        what: "MagPrune: drops entries at random with a keep probability that rises with their \
               magnitude (density ± epsilon), rescales, elects signs and averages the agreeing \
               entries.",
        when: "Like DARE, but large updates survive more reliably. DELLA-Merging: Deep et al. \
               2024.",
    },
    MethodText {
        name: "della_linear",
        what: "DELLA's magnitude-aware random drop and rescale, then a weighted sum without sign \
               election.",
        when: "As della when signs rarely conflict. DELLA-Merging: Deep et al. 2024.",
    },
    MethodText {
        name: "breadcrumbs",
        what: "Removes both the smallest entries and the largest outliers (the top gamma) of \
               each task vector, keeping a band of density of them, then sums as task \
               arithmetic does.",
        when: "Fine-tunes whose updates have a few very large outliers. Model Breadcrumbs: \
               Davari & Belilovsky 2024.",
    },
    MethodText {
        name: "breadcrumbs_ties",
        what: "Breadcrumbs' band of entries, then TIES's sign election and average.",
        when: "Breadcrumbs' case with sign conflicts. Davari & Belilovsky 2024; Yadav et al. \
               2023.",
    },
    MethodText {
        name: "linear",
        what: "A weighted average of the models' weights themselves: no base and no task \
               vectors (a base model, if any, is one more input).",
        when: "Fine-tunes of one base that stay in one basin: a model soup. Wortsman et al. \
               2022, \"Model soups\".",
    },
    MethodText {
        name: "slerp",
        what: "Spherical interpolation between the base and one other model, tensor by tensor: \
               t = 0 is the base, t = 1 the other model, along the arc between them (a straight \
               line where they point the same way).",
        when: "Blending exactly two models while keeping their weights' norms, often with t \
               as a gradient over depth and per module (mergekit's gradient-slerp). Shoemake \
               1985, \"Animating rotation with quaternion curves\"; as used by mergekit \
               (Goddard et al. 2024).",
    },
    MethodText {
        name: "nuslerp",
        what: "Spherical interpolation of exactly two models (or of their task vectors, \
               against the base) at t = w2 / (w1 + w2), over whole tensors, rows or columns.",
        when: "Two fine-tunes blended on the sphere with weights instead of a t; with a base, \
               their task vectors are interpolated. mergekit's nuslerp (Goddard et al. 2024).",
    },
    MethodText {
        name: "multislerp",
        what: "Spherical interpolation of any number of models (or task vectors, against the \
               base): the weighted mean direction on the hypersphere, scaled by the weighted \
               norms.",
        when: "More than two models blended as slerp blends two. mergekit's multislerp \
               (Goddard et al. 2024), after Buss & Fillmore 2001 on spherical averages.",
    },
    MethodText {
        name: "karcher",
        what: "The Karcher (Riemannian) mean of the models on the unit sphere, each model \
               counting equally, iterated until it moves less than tol, then scaled by their \
               mean norm.",
        when: "An even blend of several models without choosing weights. Karcher 1977, \
               \"Riemannian center of mass\"; mergekit (Goddard et al. 2024).",
    },
    MethodText {
        name: "model_stock",
        what: "Averages the fine-tunes and moves from the base towards that average by a ratio \
               computed from the angle between their task vectors (closer when they agree).",
        when: "Two or more fine-tunes of one base from similar recipes, with no weights to \
               tune. Model Stock: Jang et al. 2024.",
    },
    MethodText {
        name: "sce",
        what: "Select (keep the entries whose task vectors vary most across models, \
               select_topk of them), calculate (weights from each model's squared task vector) \
               and erase (drop entries against the elected sign), then add to the base.",
        when: "Fusing several fine-tunes without per-model weights. FuseChat (SCE): Wan et al. \
               2024.",
    },
    MethodText {
        name: "nearswap",
        what: "Takes the other model's value where it lies within t of the base's, and keeps \
               the base's where they are far apart (a smooth blend in between).",
        when: "Borrowing a fine-tune's small adjustments while keeping the base where they \
               disagree strongly. From alchemonaut's QuartetAnemoi-70B-t0.0001 (2024), in mergekit.",
    },
    MethodText {
        name: "passthrough",
        what: "Copies one model's tensors unchanged (or times scale).",
        when: "With slices, to stack or duplicate layers (frankenmerges); alone, to rescale or \
               re-save a model. mergekit (Goddard et al. 2024).",
    },
    MethodText {
        name: "arcee_fusion",
        what: "Keeps the base except where the other model's update matters most: entries \
               whose change, weighted by the KL divergence of the two models' rows, is above \
               an outlier threshold take the other model's value.",
        when: "Fusing one fine-tune into its base selectively. Arcee Fusion: mergekit \
               (Goddard et al. 2024).",
    },
    MethodText {
        name: "ram",
        what: "Reinforced Agent Merging: entries only one model changes (by more than epsilon) \
               keep that model's change whole; entries several models change take their \
               average.",
        when: "Fine-tunes (agents) whose few unique updates would be diluted by averaging. \
               RAM: Reinforced Agent Merging, 2026 (arXiv 2601.13572).",
    },
    MethodText {
        name: "ramplus_tl",
        what: "RAM whose unique entries are amplified per model by 1 + r × min(shared/unique, \
               alpha), compensating models that share most of their updates.",
        when: "As ram when some models' unique updates are few. RAM+ (Reinforced Agent \
               Merging), 2026 (arXiv 2601.13572).",
    },
    MethodText {
        name: "tsv_m",
        what: "Per 2-D tensor, keeps each task vector's top singular directions (an equal \
               share of the rank per model), makes the stacked directions orthonormal so the \
               tasks stop interfering, and adds the result times alpha to the base; other \
               tensors get the mean task vector.",
        when: "Many fine-tunes (e.g. 8 vision task experts) whose task vectors overlap, where \
               task arithmetic loses accuracy to interference. Task Singular Vectors: \
               Gargiulo et al., CVPR 2025.",
    },
    MethodText {
        name: "iso_c",
        what: "Per 2-D tensor, replaces every singular value of the summed task vectors by \
               their mean (a flat, isotropic spectrum) and adds that times scaling_factor to \
               the base; other tensors get the mean task vector.",
        when: "Several tasks that share most of their directions, to stop the largest ones \
               drowning out the rest. Iso-C: Marczak et al., ICML 2025 (\"No Task Left \
               Behind\").",
    },
    MethodText {
        name: "iso_cts",
        what: "Iso-C over the summed task vectors' top directions (common_space_fraction of \
               the rank) plus each task's own top directions outside them, orthogonalised \
               together with a flat spectrum.",
        when: "Many tasks, where Iso-C's common subspace misses task-specific directions; \
               the paper's best data-free merge at 8 to 20 tasks. Iso-CTS: Marczak et al., \
               ICML 2025.",
    },
];

/// The tooltip of merge method `name`.
pub fn method(name: &str) -> String {
    match METHOD_TEXTS.iter().find(|m| m.name == name) {
        Some(m) => format!("{}: {}\nWhen to use: {}", m.name, m.what, m.when),
        None => format!("{name}: a mergekit method (see shared/ALGORITHMS.md)"),
    }
}

/// What a parameter does and when to change it.
fn param_text(method: &str, name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        // RAM's epsilon is a threshold, not DELLA's spread.
        "epsilon" if method.starts_with("ram") => (
            "The smallest change of an entry that counts as the model contributing there; \
             smaller changes are treated as the base's.",
            "Raise it to ignore a fine-tune's noise-level updates. RAM (Reinforced Agent \
             Merging), 2026 (arXiv 2601.13572).",
        ),
        "t" => (
            "Where the merge lies between the base (0) and the other model (1): for slerp \
             along the arc between them (beyond [0, 1] it extrapolates); for nearswap, the \
             distance within which an entry takes the other model's value.",
            "slerp: 0.5 for an even blend, a gradient to blend layers differently. nearswap: \
             small (about 1e-4 to 1e-2), the size of the updates to borrow. mergekit \
             (Goddard et al. 2024).",
        ),
        "per-layer t" => (
            "t as a curve over depth instead of one number: a mergekit gradient whose control \
             points spread evenly from the first layer to the last, linear in between.",
            "Early layers near the base and late layers near the other model (a rising \
             curve), or the reverse; see mergekit's gradient-slerp example (Goddard et al. \
             2024).",
        ),
        "per-module t" => (
            "Curves of t for module filters: tensors whose names contain a filter take its \
             curve, filters are tried in order and the first match wins ({filter, value} \
             lists); the last curve takes every other tensor.",
            "Attention and MLP blended in opposite directions over depth, as in mergekit's \
             gradient-slerp example (Goddard et al. 2024).",
        ),
        "include" => (
            "Whether this open fine-tune takes part in the merge (it is listed under \
             `models:`). The method's own counts apply: slerp, nearswap and passthrough take \
             one model, nuslerp two, model_stock at least two.",
            "Untick models to merge a subset of the family without reopening it.",
        ),
        "against the base" => (
            "With it, the method combines task vectors (each model minus the base) and adds \
             the result to the base; without it, the models' weights themselves (no \
             `base_model` in the recipe).",
            "On for fine-tunes of the open base; off for models that share no base.",
        ),
        "nuslerp_flatten" => (
            "Interpolates each tensor as one flattened vector (on by default; it wins over \
             row-wise).",
            "Off to interpolate row by row (or column by column with nuslerp_row_wise).",
        ),
        "nuslerp_row_wise" => (
            "With flatten off: interpolates along axis 0 (the columns of a 2-D weight) instead \
             of the rows.",
            "Rarely; it follows mergekit's naming, where row-wise means axis 0.",
        ),
        "normalize_weights" => (
            "Divides the weights by their sum, so only their ratios matter.",
            "Keep it on unless the weights already sum to 1 on purpose.",
        ),
        "eps" => (
            "A small number added to norms so directions of near-zero vectors stay finite.",
            "Leave at its default unless a tensor's task vectors are exactly zero.",
        ),
        "max_iter" => (
            "The most iterations the Karcher mean runs on each tensor.",
            "Raise it if tol is not reached (the mean still moves); each iteration is a pass \
             over every input tensor. Karcher 1977.",
        ),
        "tol" => (
            "The iteration stops once the mean moves less than this (also: inputs with a \
             smaller norm are left out).",
            "Smaller for a more exact mean at more iterations.",
        ),
        "filter_wise" => (
            "Computes Model Stock's ratio per row of each weight instead of once per tensor.",
            "On when rows (filters) of a layer moved very differently. Model Stock: Jang et al. \
             2024.",
        ),
        "select_topk" => (
            "The share of entries SCE keeps: those whose task vectors vary most across the \
             models; 1 keeps every entry.",
            "Lower it (e.g. 0.1 to 0.5) to keep only the entries the models disagree on most. \
             FuseChat: Wan et al. 2024.",
        ),
        "scale" => (
            "Multiplies the model's tensors (1 copies them unchanged).",
            "To scale a model's output layers down or a duplicated slice's contribution.",
        ),
        "r" => (
            "RAM+'s amplification of a model's unique entries: up to 1 + r × alpha.",
            "Raise it to favour models whose updates are mostly shared. RAM+, 2026 (arXiv 2601.13572).",
        ),
        "alpha" if method == "tsv_m" => (
            "Scales the merged task vector before it is added to the base: base + alpha × \
             merged.",
            "Tune it on held-out data (the authors try 0.1 to 3.0); 1 is fusion-bench's \
             default. Task Singular Vectors: Gargiulo et al., CVPR 2025.",
        ),
        "scaling_factor" => (
            "Scales the isotropic merge before it is added to the base: base + \
             scaling_factor × merged.",
            "Tune it on held-out data (the authors try 0.1 to 3.0); 1 is fusion-bench's \
             default. Isotropic merging: Marczak et al., ICML 2025.",
        ),
        "common_space_fraction" => (
            "The share of the rank given to the summed task vectors' common directions; the \
             rest is split evenly between the tasks' own directions.",
            "0.8 (the authors' default); lower it when the tasks have little in common. Iso-CTS: \
             Marczak et al., ICML 2025.",
        ),
        "exclude" => (
            "Sends a 2-D tensor to the mean task vector instead of the subspace merge.",
            "With a filter, for tensors whose subspaces mean little (embeddings, a \
             classification head), as fusion-bench's exclude_keys.",
        ),
        "alpha" => (
            "The cap on the shared/unique ratio RAM+ amplifies by.",
            "With r, bounds how much unique entries are amplified. RAM+, 2026 (arXiv 2601.13572).",
        ),
        "weight" => (
            "How much of this model goes into the merge: its task vector's factor (the share \
             of the average for linear). Negative subtracts the model's task.",
            "Raise the model whose task matters most. With normalize on only the ratios \
             between weights matter. Task Arithmetic: Ilharco et al. 2023.",
        ),
        "density" => (
            "The share of each task vector's entries kept before merging: the largest (TIES), \
             a random draw (DARE), a band below the outliers (Breadcrumbs), or a draw favouring \
             large ones (DELLA); 1 keeps everything.",
            "Lower it (0.2 to 0.5) when task vectors interfere: TIES (Yadav et al. 2023) keeps \
             about 20 %, DARE (Yu et al. 2024) drops up to 90 % at random.",
        ),
        "epsilon" => (
            "DELLA's spread of keep probabilities by magnitude rank: the smallest entry is kept \
             with probability density - epsilon, the largest with density + epsilon (both must \
             stay inside 0..1).",
            "Raise it to favour large updates more. DELLA-Merging: Deep et al. 2024.",
        ),
        "gamma" => (
            "Breadcrumbs' outlier cut: the share of largest-magnitude entries removed before \
             density of the rest are kept (no effect at density 1).",
            "Raise it when a few huge updates dominate a task vector. Model Breadcrumbs: Davari \
             & Belilovsky 2024.",
        ),
        "lambda" => (
            "Scales the merged task vector before it is added to the base: base + lambda × merged.",
            "Below 1 when the merge overshoots (accuracy falls on every task), above 1 to \
             strengthen all tasks at once. Task Arithmetic's scaling coefficient: Ilharco et \
             al. 2023.",
        ),
        "normalize" => (
            "Divides the merged task vector by the sum of the weights (with sign election: of \
             the models agreeing at each entry), so the weights act as ratios.",
            "On to average the models, off to add them (task arithmetic adds).",
        ),
        "rescale" => (
            "After entries are dropped, scales each task vector's remainder back to its \
             original L1 norm.",
            "Keep it on for random drops (DARE: Yu et al. 2024; DELLA: Deep et al. 2024); off \
             for magnitude trims.",
        ),
        "per-layer weights" => (
            "A weight curve per model over depth instead of one number: a mergekit gradient \
             whose control points spread evenly from the first layer to the last, linear in \
             between; every layer gets the curve's value (the dots).",
            "Early layers hold general features and late ones task-specific ones: a rising \
             curve keeps the base's early layers. Gradients as in mergekit (Goddard et al. \
             2024).",
        ),
        "module filters" => (
            "Tensors whose names contain a filter take its lambda instead of the global one; \
             filters are tried in order and the first match wins (mergekit's {filter, value} \
             lists). Lambda 0 keeps the base's tensor.",
            "When attention and MLP tensors should merge at different strengths, or to keep \
             the base's embeddings or norms.",
        ),
        "dtype" => (
            "The dtype the inputs are computed in: float32 adds no rounding of its own.",
            "float32 unless you need to match a mergekit run in bfloat16.",
        ),
        "out_dtype" => (
            "The dtype the merged model is written in (float32, bfloat16 or float16): one \
             rounding at the end. Unset: the recipe's dtype, else the inputs' own.",
            "The inputs' dtype (bfloat16 in, bfloat16 out) halves the size of a float32 \
             output.",
        ),
        _ => return None,
    })
}

/// What the engine does without a value: the method's declared default.
fn engine_default(method: &str, name: &str) -> Option<String> {
    let Lookup::Found(m) = lookup(method) else {
        return None;
    };
    let spec = m.spec().params.iter().find(|p| p.name == name)?;
    Some(match spec.default {
        None => "none, the recipe must give it".to_owned(),
        Some(Value::Float(x)) => format!("{x}"),
        Some(Value::Bool(b)) => (if b { "on" } else { "off" }).to_owned(),
        Some(Value::Int(i)) => i.to_string(),
    })
}

/// Whether `method` reads parameter `name` at all.
pub fn reads(method: &str, name: &str) -> bool {
    match lookup(method) {
        Lookup::Found(m) => m.spec().params.iter().any(|p| p.name == name),
        _ => false,
    }
}

/// The tooltip of parameter `name` of `method`: what it does, its range on the control (if it
/// has one), its default (the engine's, and where the panel starts when that differs), and
/// when to use it.
pub fn param(
    method: &str,
    name: &str,
    range: Option<RangeInclusive<f64>>,
    panel_start: Option<f64>,
) -> String {
    let Some((what, when)) = param_text(method, name) else {
        return name.to_owned();
    };
    let mut text = format!("{name}: {what}");
    if let Some(range) = range {
        text.push_str(&format!(
            "\nRange: {} to {} on this control.",
            range.start(),
            range.end()
        ));
    }
    if let Some(default) = engine_default(method, name) {
        text.push_str(&format!("\nDefault: {default} ({method}'s own)"));
        match panel_start {
            Some(start) if default != format!("{start}") => {
                text.push_str(&format!("; the panel starts at {start}."));
            }
            _ => text.push('.'),
        }
    } else if let Some(start) = panel_start {
        text.push_str(&format!("\nThe panel starts at {start}."));
    }
    text.push_str(&format!("\nWhen to use: {when}"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gui::methods::{
        has_lambda, has_weight, method_flags, methods, model_params, shared_curve_param,
        shared_numbers,
    };

    #[test]
    fn every_method_and_parameter_the_panel_shows_is_explained() {
        // Every mergekit method has its text before mergescope implements it.
        for name in mergescope_core::merge::methods::MERGEKIT_METHODS {
            assert!(
                METHOD_TEXTS.iter().any(|m| m.name == *name),
                "{name} has no text"
            );
        }
        for method in methods() {
            let text = super::method(method);
            assert!(
                text.contains("When to use") && text.contains("20"),
                "{text}"
            );
            let mut names = Vec::new();
            if has_weight(method) {
                names.push("weight");
            }
            names.extend(model_params(method));
            names.extend(method_flags(method).into_iter().map(|(n, _)| n));
            names.extend(shared_numbers(method));
            names.extend(shared_curve_param(method));
            if has_lambda(method) {
                names.push("lambda");
            }
            for name in names {
                let text = param(method, name, Some(0.0..=1.0), None);
                assert!(
                    text.contains("When to use") && text.contains("Default"),
                    "{method} {name}: {text}"
                );
            }
        }
        for name in [
            "per-layer weights",
            "per-layer t",
            "per-module t",
            "include",
            "against the base",
            "module filters",
            "dtype",
            "out_dtype",
        ] {
            assert!(
                param("ties", name, None, None).contains("When to use"),
                "{name}"
            );
        }
        // RAM's epsilon is its own, not DELLA's.
        assert!(param("ram", "epsilon", None, None).contains("counts as the model"));
        assert!(param("della", "epsilon", None, None).contains("spread"));
    }

    #[test]
    fn defaults_are_the_engines() {
        // ALGORITHMS.md §2.3: TIES normalizes by default, task arithmetic does not.
        assert!(param("ties", "normalize", None, None).contains("Default: on (ties's own)"));
        assert!(param("task_arithmetic", "normalize", None, None).contains("Default: off"));
        let density = param("ties", "density", Some(0.01..=1.0), Some(0.5));
        assert!(
            density.contains("Default: 1 (ties's own); the panel starts at 0.5."),
            "{density}"
        );
        assert!(density.contains("Range: 0.01 to 1"), "{density}");
        assert!(param("della", "epsilon", None, None).contains("Default: 0.15"));
        assert!(param("breadcrumbs", "gamma", None, None).contains("Default: 0.01"));
        assert!(param("ties", "weight", None, None).contains("the recipe must give it"));
        assert!(param("ties", "lambda", None, Some(1.0)).contains("Default: 1 (ties's own)."));
        assert!(param("karcher", "max_iter", None, None).contains("Default: 10 (karcher's own)."));
        assert!(param("slerp", "t", None, None).contains("the recipe must give it"));
    }
}
