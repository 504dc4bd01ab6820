//! What the Merge panel edits for a method, read from the core's declaration of it
//! ([`MethodSpec`]): its per-model numbers, its shared numbers and switches, whether it takes a
//! base, how many models it merges, and which number a per-layer curve shapes. A method the
//! core adds is edited without a line here.

use mergescope_core::merge::methods::{IMPLEMENTED, Lookup, lookup};
use mergescope_core::merge::params::{Bounds, Kind, Scope, Value};
use mergescope_core::merge::{BaseUse, MethodSpec};

/// Every method the core implements, in its registry's order: all of them are edited.
pub fn methods() -> Vec<&'static str> {
    IMPLEMENTED.iter().map(|m| m.spec().name).collect()
}

/// A method's declaration (names, scopes, kinds, defaults, model counts).
pub fn spec(method: &str) -> Option<&'static MethodSpec> {
    match lookup(method) {
        Lookup::Found(m) => Some(m.spec()),
        _ => None,
    }
}

/// Parameters accepted in recipes but never offered: `int8_mask` only changes mergekit's
/// memory use, and the subspace merges' `exclude` means something per tensor only (a recipe
/// sets it with a filter), where one switch for every tensor would turn them into an average.
fn not_offered(name: &str) -> bool {
    matches!(name, "int8_mask" | "exclude")
}

/// Does `method` read a per-model `weight` (the task-arithmetic family, linear, nuslerp,
/// multislerp)?
pub fn has_weight(method: &str) -> bool {
    spec(method).is_some_and(|s| {
        s.params
            .iter()
            .any(|p| p.name == "weight" && p.scope != Scope::Shared)
    })
}

/// Per-model numbers `method` reads besides the weight (density, epsilon, gamma, scale), in
/// the order it declares them.
pub fn model_params(method: &str) -> Vec<&'static str> {
    spec(method).map_or_else(Vec::new, |s| {
        s.params
            .iter()
            .filter(|p| p.scope != Scope::Shared && p.kind == Kind::Float && p.name != "weight")
            .map(|p| p.name)
            .collect()
    })
}

/// Shared switches `method` reads (normalize, rescale, nuslerp_flatten, filter_wise, ...),
/// with its defaults.
pub fn method_flags(method: &str) -> Vec<(&'static str, bool)> {
    spec(method).map_or_else(Vec::new, |s| {
        s.params
            .iter()
            .filter(|p| p.scope == Scope::Shared && !not_offered(p.name))
            .filter_map(|p| match p.default {
                Some(Value::Bool(b)) => Some((p.name, b)),
                _ => None,
            })
            .collect()
    })
}

/// Does `method` scale the merged task vector by `lambda` (and so take module filters)?
pub fn has_lambda(method: &str) -> bool {
    spec(method).is_some_and(|s| {
        s.params
            .iter()
            .any(|p| p.name == "lambda" && p.scope == Scope::Shared)
    })
}

/// The number a per-layer curve shapes: the per-model `weight` where the method has one,
/// else the shared number the recipe must give (slerp's and nearswap's `t`: a method's one
/// required knob is what mergekit's examples write as a gradient).
pub fn curve_param(method: &str) -> Option<&'static str> {
    if has_weight(method) {
        return Some("weight");
    }
    spec(method)?
        .params
        .iter()
        .find(|p| p.scope == Scope::Shared && p.kind == Kind::Float && p.default.is_none())
        .map(|p| p.name)
}

/// The shared number a per-layer curve shapes (`t`), if the curve is not per model.
pub fn shared_curve_param(method: &str) -> Option<&'static str> {
    curve_param(method).filter(|&p| p != "weight")
}

/// Shared numbers the panel edits with a slider of their own: every shared float or integer
/// except `lambda` (with its module filters) and the curve's number.
pub fn shared_numbers(method: &str) -> Vec<&'static str> {
    let curve = shared_curve_param(method);
    spec(method).map_or_else(Vec::new, |s| {
        s.params
            .iter()
            .filter(|p| p.scope == Scope::Shared && p.kind != Kind::Bool)
            .filter(|p| p.name != "lambda" && Some(p.name) != curve && !not_offered(p.name))
            .map(|p| p.name)
            .collect()
    })
}

/// The default the core gives `method`'s numeric parameter `name`, if any.
pub fn param_default(method: &str, name: &str) -> Option<f64> {
    spec(method)?
        .params
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| match p.default {
            Some(Value::Float(x)) => Some(x),
            Some(Value::Int(i)) => Some(i as f64),
            _ => None,
        })
}

/// Is `method`'s parameter `name` a whole number (karcher's `max_iter`)?
pub fn is_integer(method: &str, name: &str) -> bool {
    spec(method).is_some_and(|s| {
        s.params
            .iter()
            .any(|p| p.name == name && p.kind == Kind::Int)
    })
}

/// How `method` treats the base: a separate input, optional, or (ignored) one more input.
pub fn base_use(method: &str) -> BaseUse {
    spec(method).map_or(BaseUse::Required, |s| s.base)
}

/// A slider for a shared number: where it starts, its range, and whether it moves on a
/// logarithmic scale.
#[derive(Clone, Debug, PartialEq)]
pub struct SliderRange {
    pub start: f64,
    pub range: std::ops::RangeInclusive<f64>,
    pub logarithmic: bool,
}

/// The slider of `method`'s shared number `name`: the range the core accepts
/// ([`Bounds::of`]), narrowed to [-1, 2] where it is wider (a `t` past 2 or a scale of a
/// thousand is typed into the recipe, not dragged to), and logarithmic where the range spans
/// orders of magnitude or starts far below its top (tolerances, epsilons, nearswap's
/// distance, iteration counts).
pub fn shared_range(method: &str, name: &str) -> SliderRange {
    let bounds = Bounds::of(method, name).unwrap_or(Bounds {
        min: 0.0,
        max: 1.0,
        why: "",
    });
    let default = param_default(method, name);
    let logarithmic = (bounds.min > 0.0 && bounds.max / bounds.min >= 100.0)
        || (bounds.min == 0.0 && bounds.max >= 100.0)
        // A default far below the range's top (ram's epsilon, 1e-5 of [0, 1]).
        || default.is_some_and(|d| d > 0.0 && d < 1e-3 * bounds.max);
    let (lo, hi) = if logarithmic {
        (bounds.min, bounds.max)
    } else {
        (bounds.min.max(-1.0), bounds.max.min(2.0))
    };
    let start = default
        .unwrap_or(if logarithmic { lo.max(1e-3) } else { 0.5 })
        .clamp(lo, hi);
    SliderRange {
        start,
        range: lo..=hi,
        logarithmic,
    }
}

/// Where a per-model number starts, and the range its slider covers.
pub fn model_param_range(name: &str) -> (f64, std::ops::RangeInclusive<f64>) {
    match name {
        "density" => (0.5, 0.01..=1.0),
        "epsilon" => (0.1, 0.0..=0.5),
        "gamma" => (0.01, 0.0..=0.5),
        _ => (1.0, 0.0..=2.0),
    }
}

/// Why `count` models cannot be merged by `method`, if they cannot: the method's declared
/// input counts (every recipe names at least one model).
pub fn model_count_problem(method: &str, count: usize) -> Option<String> {
    let spec = spec(method)?;
    let min = spec.min_models.max(1);
    let fits = count >= min && spec.max_models.is_none_or(|max| count <= max);
    if fits {
        return None;
    }
    let wanted = match spec.max_models {
        Some(max) if max == min => format!("exactly {}", plural(min)),
        Some(max) => format!("{min} to {max} models"),
        None => format!("at least {}", plural(min)),
    };
    let with_base = if spec.base == BaseUse::Required {
        " besides the base"
    } else {
        ""
    };
    Some(format!(
        "{method} merges {wanted}{with_base}, and {} {} included: tick the models that take part",
        count,
        if count == 1 { "is" } else { "are" }
    ))
}

fn plural(n: usize) -> String {
    if n == 1 {
        "one model".to_owned()
    } else {
        format!("{n} models")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_declarations_decide_what_is_edited() {
        assert!(methods().contains(&"slerp") && methods().contains(&"ties"));
        assert_eq!(curve_param("ties"), Some("weight"));
        assert_eq!(curve_param("slerp"), Some("t"));
        assert_eq!(shared_curve_param("nearswap"), Some("t"));
        assert_eq!(curve_param("karcher"), None);
        assert_eq!(shared_numbers("karcher"), ["max_iter", "tol"]);
        assert_eq!(shared_numbers("multislerp"), ["eps"]);
        assert!(shared_numbers("ties").is_empty(), "lambda has its own row");
        assert_eq!(model_params("passthrough"), ["scale"]);
        assert!(!has_weight("sce") && has_weight("nuslerp"));
        assert!(has_lambda("ties") && !has_lambda("linear") && !has_lambda("nuslerp"));
        assert_eq!(
            method_flags("nuslerp"),
            [("nuslerp_flatten", true), ("nuslerp_row_wise", false)]
        );
        assert!(is_integer("karcher", "max_iter"));
    }

    #[test]
    fn sliders_cover_what_the_core_accepts() {
        let tol = shared_range("karcher", "tol");
        assert!(tol.logarithmic && tol.start == 1e-5, "{tol:?}");
        let t = shared_range("slerp", "t");
        assert_eq!((t.start, t.range, t.logarithmic), (0.5, -1.0..=2.0, false));
        assert!(shared_range("nearswap", "t").logarithmic);
        assert_eq!(shared_range("sce", "select_topk").range, 0.0..=1.0);
    }

    #[test]
    fn wrong_model_counts_are_explained() {
        assert_eq!(model_count_problem("slerp", 1), None);
        let two = model_count_problem("slerp", 2).unwrap();
        assert!(
            two.contains("exactly one model besides the base, and 2 are included"),
            "{two}"
        );
        assert!(
            model_count_problem("nuslerp", 3)
                .unwrap()
                .contains("exactly 2 models")
        );
        assert!(
            model_count_problem("model_stock", 1)
                .unwrap()
                .contains("at least 2 models")
        );
        assert!(model_count_problem("ties", 0).is_some());
        assert_eq!(model_count_problem("ties", 3), None);
    }
}
