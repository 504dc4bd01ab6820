//! mergekit-style YAML recipes, read and written with serde.
//!
//! The schema is mergekit's (`merge_method`, `base_model`, `models[].model`,
//! `models[].parameters`, `slices[].sources[]` with `layer_range`, `parameters`, `dtype`,
//! `out_dtype`, `tokenizer_source`). Parameter
//! values are scalars, per-layer gradients (lists) or lists of `{filter, value}` entries, and
//! evaluate per tensor exactly as ALGORITHMS.md §1.3–1.4 define.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::de::{Deserializer, Error as _, IgnoredAny};
use serde::{Deserialize, Serialize, Serializer};

use crate::dtype::FloatType;

/// A merge recipe.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub merge_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelEntry>,
    /// mergekit's layer-range syntax, the alternative to `models:` (exactly one is given): the
    /// output's layers are the slices' layers, stacked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<OutputSlice>,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub parameters: Parameters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_source: Option<String>,
    /// mergekit's `tokenizer:` block (vocabulary source, per-token rows, padding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<super::vocab::TokenizerConfig>,

    // mergekit keys mergescope recognises but does not support yet: accepted by the parser so
    // that `Recipe::check_supported` can say so by name instead of calling them typos.
    #[serde(default, skip_serializing)]
    modules: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    chat_template: Option<IgnoredAny>,
    #[serde(default, skip_serializing)]
    name: Option<IgnoredAny>,
}

/// One entry of `models:`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub model: String,
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub parameters: Parameters,
}

/// One entry of `slices:`: a run of output layers, each merged from the same relative layer of
/// every source.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSlice {
    pub sources: Vec<SliceSource>,
    /// Overrides the recipe's `base_model` for this slice (mergekit 0.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_model: Option<String>,
    /// Between a source's own parameters and the recipe's in precedence (ALGORITHMS.md §1.4).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub parameters: Parameters,
}

/// One entry of a slice's `sources:`: layers `layer_range[0]..layer_range[1]` of a model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSource {
    pub model: String,
    /// Half-open, as in mergekit: `[0, 24]` is layers 0 to 23.
    pub layer_range: [usize; 2],
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub parameters: Parameters,
}

impl SliceSource {
    /// The number of layers the source contributes (0 for an empty or reversed range).
    pub fn layer_count(&self) -> usize {
        self.layer_range[1].saturating_sub(self.layer_range[0])
    }
}

/// Parameter name → value, in the order the recipe wrote them.
pub type Parameters = IndexMap<String, ParamValue>;

/// A single parameter value before it is evaluated for a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue {
    Scalar(Scalar),
    /// A per-layer gradient, interpolated over depth (or indexed, for non-numbers).
    List(Vec<Scalar>),
    /// `{filter, value}` entries; the first whose filter matches the tensor name wins.
    Conditional(Vec<Conditional>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    Number(f64),
    Bool(bool),
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conditional {
    /// `None` (or `"*"`) matches every tensor; anything else is a plain substring test.
    pub filter: Option<String>,
    /// A scalar or a list, never another conditional list.
    pub value: ParamValue,
}

impl Scalar {
    pub fn describe(&self) -> String {
        match self {
            Self::Number(n) => format!("the number {n}"),
            Self::Bool(b) => format!("the boolean {b}"),
            Self::Text(t) => format!("the text \"{t}\""),
        }
    }
}

/// A value as a person reads it on one line: `0.3`, `true`, `name`.
impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Number(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Text(t) => f.write_str(t),
        }
    }
}

/// A value on one line: `0.3`, a gradient `[0.1, 0.5, 0.9]`, or filters
/// `self_attn: 0.5; mlp: [0, 1]; *: 1`.
impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Scalar(s) => write!(f, "{s}"),
            Self::List(list) => {
                let items: Vec<String> = list.iter().map(Scalar::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Self::Conditional(entries) => {
                for (k, e) in entries.iter().enumerate() {
                    if k > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{}: {}", e.filter.as_deref().unwrap_or("*"), e.value)?;
                }
                Ok(())
            }
        }
    }
}

impl ParamValue {
    /// Evaluates the value for `tensor` at relative depth `t` in [0, 1]. `None` means "unset at
    /// this scope": an empty list, or a conditional list none of whose filters match.
    pub fn evaluate(&self, tensor: &str, t: f64) -> Option<Scalar> {
        match self {
            Self::Scalar(s) => Some(s.clone()),
            Self::List(values) => evaluate_gradient(values, t),
            Self::Conditional(entries) => entries
                .iter()
                .find(|e| filter_matches(e.filter.as_deref(), tensor))
                .and_then(|e| e.value.evaluate(tensor, t)),
        }
    }
}

/// mergekit's filter rule: absent or `"*"` matches all; otherwise a case-sensitive substring.
pub fn filter_matches(filter: Option<&str>, tensor: &str) -> bool {
    match filter {
        None | Some("*") => true,
        Some(f) => tensor.contains(f),
    }
}

/// Linear interpolation over a gradient list (ALGORITHMS.md §1.3), in double precision.
fn evaluate_gradient(values: &[Scalar], t: f64) -> Option<Scalar> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let numbers: Option<Vec<f64>> = values
        .iter()
        .map(|v| match v {
            Scalar::Number(x) => Some(*x),
            _ => None,
        })
        .collect();
    let scaled = t * (n - 1) as f64;
    let i0 = (scaled.floor() as usize).min(n - 1);
    match numbers {
        Some(xs) => {
            let i1 = (i0 + 1).min(n - 1);
            let frac = scaled - i0 as f64;
            Some(Scalar::Number((1.0 - frac) * xs[i0] + frac * xs[i1]))
        }
        None => Some(values[i0].clone()),
    }
}

impl Serialize for Scalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => s.serialize_i64(*n as i64),
            Self::Number(n) => s.serialize_f64(*n),
            Self::Bool(b) => s.serialize_bool(*b),
            Self::Text(t) => s.serialize_str(t),
        }
    }
}

impl Serialize for ParamValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Entry<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            filter: Option<&'a str>,
            value: &'a ParamValue,
        }
        match self {
            Self::Scalar(v) => v.serialize(s),
            Self::List(vs) => vs.serialize(s),
            Self::Conditional(entries) => s.collect_seq(entries.iter().map(|e| Entry {
                filter: e.filter.as_deref(),
                value: &e.value,
            })),
        }
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        param_value_from_json(&raw, true).map_err(D::Error::custom)
    }
}

const VALUE_SHAPES: &str = "a number, a boolean, a list of numbers (a per-layer gradient), or a list of {filter, value} entries";

fn scalar_from_json(v: &serde_json::Value) -> Option<Scalar> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map(Scalar::Number),
        serde_json::Value::Bool(b) => Some(Scalar::Bool(*b)),
        serde_json::Value::String(t) => Some(Scalar::Text(t.clone())),
        _ => None,
    }
}

fn param_value_from_json(
    v: &serde_json::Value,
    allow_conditional: bool,
) -> Result<ParamValue, String> {
    use serde_json::Value as J;
    if let Some(s) = scalar_from_json(v) {
        return Ok(ParamValue::Scalar(s));
    }
    let J::Array(items) = v else {
        return Err(format!("expected {VALUE_SHAPES}, found {v}"));
    };
    if allow_conditional && items.iter().any(J::is_object) {
        let entries = items
            .iter()
            .map(|item| {
                let J::Object(map) = item else {
                    return Err(format!(
                        "a list of {{filter, value}} entries cannot also hold {item}"
                    ));
                };
                if let Some(key) = map.keys().find(|k| *k != "filter" && *k != "value") {
                    return Err(format!("unknown key `{key}` in a {{filter, value}} entry"));
                }
                let filter = match map.get("filter") {
                    None | Some(J::Null) => None,
                    Some(J::String(f)) => Some(f.clone()),
                    Some(other) => {
                        return Err(format!(
                            "`filter` must be text (a substring of tensor names), found {other}"
                        ));
                    }
                };
                let value = map
                    .get("value")
                    .ok_or_else(|| "a {filter, value} entry has no `value`".to_owned())?;
                Ok(Conditional {
                    filter,
                    value: param_value_from_json(value, false)?,
                })
            })
            .collect::<Result<_, _>>()?;
        return Ok(ParamValue::Conditional(entries));
    }
    let values = items
        .iter()
        .map(|item| {
            scalar_from_json(item)
                .ok_or_else(|| format!("a gradient list may hold only numbers, found {item}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(ParamValue::List(values))
}

/// Why a recipe cannot be used. Every variant names the recipe file and, where there is one,
/// the key.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{file}: cannot read the recipe: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error(
        "{file}: merge_method `{method}` is not a mergekit merge method; known methods: {known}"
    )]
    UnknownMethod {
        file: PathBuf,
        method: String,
        known: String,
    },
    #[error("{file}: `{key}` is a mergekit key mergescope does not support yet; {hint}")]
    Unsupported {
        file: PathBuf,
        key: String,
        hint: String,
    },
    #[error("{file}: `{key}`: {message}")]
    BadValue {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error(
        "{file}: `{key}` is required by {method} for tensor `{tensor}` and has no default; add it"
    )]
    MissingParameter {
        file: PathBuf,
        key: String,
        method: String,
        tensor: String,
    },
    #[error(
        "{file}: `{key}`: model `{model}` not found: tried {tried_cwd} (relative to the working folder) and {tried_recipe} (relative to the recipe)"
    )]
    ModelNotFound {
        file: PathBuf,
        key: String,
        model: String,
        tried_cwd: PathBuf,
        tried_recipe: PathBuf,
    },
    #[error("{file}: {message}")]
    Contract { file: PathBuf, message: String },
}

impl Recipe {
    /// Reads and parses a recipe file.
    pub fn from_file(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses recipe text; `file` is only used to name the recipe in errors.
    pub fn from_yaml(text: &str, file: &Path) -> Result<Self, RecipeError> {
        let recipe: Self = serde_saphyr::from_str(text).map_err(|e| RecipeError::Parse {
            file: file.to_path_buf(),
            // YAML errors come with a source excerpt over several lines.
            message: crate::one_line(&e.to_string()),
        })?;
        recipe.check_supported(file)?;
        Ok(recipe)
    }

    /// The recipe as mergekit-compatible YAML.
    pub fn to_yaml(&self) -> String {
        // Serializing plain strings, numbers and maps cannot fail.
        serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# recipe could not be written: {e}\n"))
    }

    /// Rejects mergekit features that parse but that mergescope does not implement yet.
    fn check_supported(&self, file: &Path) -> Result<(), RecipeError> {
        let unsupported = [
            (
                "modules",
                self.modules.is_some(),
                "list whole models under `models:`, or layer ranges under `slices:`",
            ),
            (
                "chat_template",
                self.chat_template.is_some(),
                "remove it; the tokenizer's own chat template is copied",
            ),
            (
                "name",
                self.name.is_some(),
                "multi-stage recipes are not supported; split them into separate recipes",
            ),
        ];
        if let Some((key, _, hint)) = unsupported.iter().find(|(_, present, _)| *present) {
            return Err(RecipeError::Unsupported {
                file: file.to_path_buf(),
                key: (*key).to_owned(),
                hint: (*hint).to_owned(),
            });
        }
        match (self.models.is_empty(), self.slices.is_empty()) {
            (true, true) => {
                return Err(RecipeError::BadValue {
                    file: file.to_path_buf(),
                    key: "models".to_owned(),
                    message: "the recipe lists no models; add at least one `- model: PATH` entry \
                              (or `slices:` with layer ranges)"
                        .to_owned(),
                });
            }
            (false, false) => {
                return Err(RecipeError::BadValue {
                    file: file.to_path_buf(),
                    key: "slices".to_owned(),
                    message: "the recipe has both `models:` and `slices:`; mergekit takes exactly \
                              one of them"
                        .to_owned(),
                });
            }
            _ => super::slices::check_shape(&self.slices, file)?,
        }
        for (key, value) in [("dtype", &self.dtype), ("out_dtype", &self.out_dtype)] {
            if let Some(name) = value {
                parse_float_type(name, key, file)?;
            }
        }
        if self.tokenizer_source.is_some() && self.tokenizer.is_some() {
            return Err(RecipeError::BadValue {
                file: file.to_path_buf(),
                key: "tokenizer".to_owned(),
                message: "the recipe has both `tokenizer_source` and `tokenizer:`; mergekit \
                          takes one: move the source into `tokenizer: {source: ...}`"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// The models the recipe names, each once, in the order it first names them: its `models:`
    /// entries, or its slices' sources (the base too when it is listed there).
    pub fn model_names(&self) -> Vec<&str> {
        let listed = self.models.iter().map(|m| m.model.as_str());
        let sliced = self
            .slices
            .iter()
            .flat_map(|s| s.sources.iter().map(|src| src.model.as_str()));
        let mut names: Vec<&str> = Vec::new();
        for name in listed.chain(sliced) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// Every place the recipe names a model by path: `base_model`, each `models:` entry, each
    /// slice's `base_model` and sources, and a `tokenizer_source` that is a model (not `base`
    /// or `union`). For callers that move a recipe to another folder and must re-anchor its
    /// relative paths.
    pub fn model_paths_mut(&mut self) -> Vec<&mut String> {
        let mut paths: Vec<&mut String> = Vec::new();
        paths.extend(self.base_model.as_mut());
        paths.extend(self.models.iter_mut().map(|m| &mut m.model));
        for slice in &mut self.slices {
            paths.extend(slice.base_model.as_mut());
            paths.extend(slice.sources.iter_mut().map(|s| &mut s.model));
        }
        paths.extend(
            self.tokenizer_source
                .as_mut()
                .filter(|s| !matches!(s.as_str(), "base" | "union")),
        );
        paths
    }

    /// The compute type the recipe asks for (`dtype:`), if any.
    pub fn compute_type(&self, file: &Path) -> Result<Option<FloatType>, RecipeError> {
        self.dtype
            .as_deref()
            .map(|n| parse_float_type(n, "dtype", file))
            .transpose()
    }

    /// The output type the recipe asks for (`out_dtype:`), if any.
    pub fn output_type(&self, file: &Path) -> Result<Option<FloatType>, RecipeError> {
        self.out_dtype
            .as_deref()
            .map(|n| parse_float_type(n, "out_dtype", file))
            .transpose()
    }
}

fn parse_float_type(name: &str, key: &str, file: &Path) -> Result<FloatType, RecipeError> {
    FloatType::from_recipe_name(name).ok_or_else(|| RecipeError::BadValue {
        file: file.to_path_buf(),
        key: key.to_owned(),
        message: format!(
            "`{name}` is not a supported type; use float32, float16 or bfloat16 \
             (mergescope computes in float32 and writes one of those)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        Recipe::from_yaml(text, Path::new("r.yml"))
    }

    #[test]
    fn reads_gradients_and_filters() {
        let r = parse(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - filter: self_attn\n          value: [0, 0.5, 1]\n        - value: 0.5\n  - model: b\n    parameters:\n      weight: [0.2, 0.8]\nparameters:\n  normalize: true\n",
        )
        .unwrap();
        let w = &r.models[0].parameters["weight"];
        assert_eq!(
            w.evaluate("model.layers.1.self_attn.q_proj.weight", 0.25),
            Some(Scalar::Number(0.25))
        );
        assert_eq!(
            w.evaluate("model.layers.1.mlp.up_proj.weight", 0.25),
            Some(Scalar::Number(0.5))
        );
        let w = &r.models[1].parameters["weight"];
        assert_eq!(w.evaluate("x", 0.0), Some(Scalar::Number(0.2)));
        assert_eq!(w.evaluate("x", 1.0), Some(Scalar::Number(0.8)));
        assert_eq!(
            r.parameters["normalize"],
            ParamValue::Scalar(Scalar::Bool(true))
        );
    }

    #[test]
    fn gradient_example_from_algorithms_md() {
        // L = 32, [0, 0.5, 1], layer 10: t = 10/31 → 0.32258...
        let v = ParamValue::List(vec![
            Scalar::Number(0.0),
            Scalar::Number(0.5),
            Scalar::Number(1.0),
        ]);
        let Some(Scalar::Number(x)) = v.evaluate("x", 10.0 / 31.0) else {
            panic!()
        };
        assert!((x - 10.0 / 31.0).abs() < 1e-12);
        assert_eq!(ParamValue::List(vec![]).evaluate("x", 0.5), None);
    }

    #[test]
    fn unmatched_filters_leave_the_value_unset() {
        let v = ParamValue::Conditional(vec![Conditional {
            filter: Some("mlp".into()),
            value: ParamValue::Scalar(Scalar::Number(1.0)),
        }]);
        assert_eq!(
            v.evaluate("model.layers.0.self_attn.q_proj.weight", 0.0),
            None
        );
        let star = ParamValue::Conditional(vec![Conditional {
            filter: Some("*".into()),
            value: ParamValue::Scalar(Scalar::Number(2.0)),
        }]);
        assert_eq!(star.evaluate("anything", 0.0), Some(Scalar::Number(2.0)));
    }

    #[test]
    fn typo_names_the_key_and_file() {
        let err = parse("merge_methd: linear\nmodels:\n  - model: a\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("r.yml") && err.contains("merge_methd"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let err =
            parse("merge_method: linear\nmodels:\n  - model: a\n    parameter:\n      weight: 1\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("parameter"), "{err}");
        let err = parse(
            "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: {x: 1}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected a number"), "{err}");
    }

    #[test]
    fn unsupported_keys_are_named() {
        let err = parse("merge_method: linear\nmodules:\n  text: {}\nmodels:\n  - model: a\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`modules`"), "{err}");
        let err = parse("merge_method: linear\ndtype: float64\nmodels:\n  - model: a\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`dtype`") && err.contains("float64"), "{err}");
    }

    #[test]
    fn slices_round_trip_and_exclude_models() {
        let text = "merge_method: ties\nbase_model: base\nslices:\n  - sources:\n      - model: base\n        layer_range: [0, 4]\n      - model: a\n        layer_range: [2, 6]\n        parameters:\n          weight: [0.2, 0.8]\n    parameters:\n      density: 0.5\n  - sources:\n      - model: base\n        layer_range: [4, 8]\n      - model: a\n        layer_range: [4, 8]\n    base_model: base\nparameters:\n  density: 0.3\n";
        let r = parse(text).unwrap();
        assert_eq!(r.slices.len(), 2);
        assert_eq!(r.slices[0].sources[1].layer_range, [2, 6]);
        assert_eq!(r.slices[0].sources[1].layer_count(), 4);
        assert_eq!(r.slices[1].base_model.as_deref(), Some("base"));
        assert_eq!(r.model_names(), ["base", "a"]);
        let again = parse(&r.to_yaml()).unwrap();
        assert_eq!(r, again);
        let both = format!("{text}models:\n  - model: a\n");
        let err = parse(&both).unwrap_err().to_string();
        assert!(err.contains("`slices`") && err.contains("both"), "{err}");
        let err = parse("merge_method: passthrough\nslices: []\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lists no models"), "{err}");
    }

    #[test]
    fn round_trips_through_yaml() {
        let text = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - filter: mlp\n          value: [0.1, 0.9]\n        - value: 0.5\n  - model: b\n    parameters:\n      weight: -0.3\nparameters:\n  lambda: 1.5\n  normalize: false\ndtype: float32\n";
        let r = parse(text).unwrap();
        let again = parse(&r.to_yaml()).unwrap();
        assert_eq!(r, again);
    }
}
