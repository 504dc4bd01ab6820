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

const METHOD_TEXTS: [MethodText; 9] = [
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
];

/// The tooltip of merge method `name`.
pub fn method(name: &str) -> String {
    match METHOD_TEXTS.iter().find(|m| m.name == name) {
        Some(m) => format!("{}: {}\nWhen to use: {}", m.name, m.what, m.when),
        None => format!("{name}: a mergekit method (see shared/ALGORITHMS.md)"),
    }
}

/// What a parameter does and when to change it.
fn param_text(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
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
    let Some((what, when)) = param_text(name) else {
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
    use crate::gui::state::{METHODS, method_flags, model_params};

    #[test]
    fn every_method_and_parameter_the_panel_shows_is_explained() {
        for method in METHODS {
            let text = super::method(method);
            assert!(
                text.contains("When to use") && text.contains("20"),
                "{text}"
            );
            let mut names = vec!["weight"];
            names.extend(model_params(method));
            names.extend(method_flags(method).into_iter().map(|(n, _)| n));
            if method != "linear" {
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
        for name in ["per-layer weights", "module filters", "dtype", "out_dtype"] {
            assert!(
                param("ties", name, None, None).contains("When to use"),
                "{name}"
            );
        }
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
    }
}
