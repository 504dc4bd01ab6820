//! What the user has open and set: the family, the merge settings, and the recipe they make.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mergescope_core::merge::MethodSpec;
use mergescope_core::merge::params::{Kind, Scope, Value};

use mergescope_core::merge::plan::resolve_model_path;
use mergescope_core::merge::recipe::Recipe;

/// One opened model, as the Models panel shows it.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    pub role: &'static str,
    pub label: String,
    pub path: PathBuf,
    pub architecture: String,
    pub layers: usize,
    pub parameters: u64,
    pub dtypes: String,
    pub shards: usize,
    pub bytes: u64,
}

/// The families shipped inside the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinDemo {
    /// A tiny ViT and experts for rotated, mirrored and inverted digits
    /// ([`mergescope_core::eval::DemoFamily`]).
    Digits,
    /// A small Llama-shaped base and fine-tunes on code, docs and legal text, with their
    /// held-out texts ([`mergescope_core::eval::lm::demo::LmDemoFamily`]).
    Language,
}

/// The family that is open.
#[derive(Clone, Debug)]
pub struct OpenFamily {
    pub base: PathBuf,
    pub models: Vec<PathBuf>,
    pub members: Vec<MemberInfo>,
    /// Alignment problems, one readable line each.
    pub issues: Vec<String>,
    /// Built on the demo family's base: previews score merges on the demo's digits.
    pub is_demo: bool,
    /// One of the built-in demo families itself (one click away, so not kept among recent
    /// families).
    pub builtin: Option<BuiltinDemo>,
    /// The base's tensor names (for module filters).
    pub tensor_names: Vec<String>,
    /// Blocks in the deepest stack: the x axis of per-layer curves.
    pub layers: usize,
    /// A language model: the base's folder holds a `config.json` and a `tokenizer.json`
    /// (whether its architecture runs in process is [`LmFiles::is_supported`]).
    ///
    /// [`LmFiles::is_supported`]: mergescope_core::eval::lm::LmFiles::is_supported
    pub language_model: Option<mergescope_core::eval::lm::LmFiles>,
}

impl OpenFamily {
    /// Where the workbench's recipe is taken to live: beside the base, so relative paths
    /// resolve as they would for a recipe saved there.
    pub fn recipe_file(&self) -> PathBuf {
        self.base.with_file_name("mergescope-workbench.yml")
    }

    /// Filters worth offering: the module names that follow a block index (`self_attn`, `mlp`,
    /// `attention`, `intermediate`, ...), in the order they first appear, then the names of
    /// tensors outside blocks (`embed_tokens`, `lm_head`, ...).
    pub fn module_suggestions(&self) -> Vec<String> {
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        for name in &self.tensor_names {
            let stem = name
                .strip_suffix(".weight")
                .or_else(|| name.strip_suffix(".bias"))
                .unwrap_or(name);
            let (list, module) = match mergescope_core::layout::split_block(stem) {
                Some((stack, _)) => {
                    let rest = stem[stack.len() + 1..]
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                        .trim_start_matches('.');
                    (&mut inside, rest.split('.').next().unwrap_or(rest))
                }
                None => (&mut outside, stem.rsplit('.').next().unwrap_or(stem)),
            };
            if !module.is_empty() && !list.iter().any(|m: &String| m == module) {
                list.push(module.to_owned());
            }
        }
        inside.extend(outside);
        inside
    }

    /// How many tensors a filter matches (mergekit's rule: a plain substring).
    pub fn matches(&self, filter: &str) -> usize {
        self.tensor_names
            .iter()
            .filter(|n| mergescope_core::merge::recipe::filter_matches(Some(filter), n))
            .count()
    }
}

/// Merge methods the Merge panel offers: every method with per-model weights (the generalized
/// task arithmetic family, and linear).
pub const METHODS: [&str; 9] = [
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "della",
    "della_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "linear",
];

/// A method's parameters as the core declares them (names, kinds, defaults).
fn spec(method: &str) -> Option<&'static MethodSpec> {
    match mergescope_core::merge::methods::lookup(method) {
        mergescope_core::merge::methods::Lookup::Found(m) => Some(m.spec()),
        _ => None,
    }
}

/// Per-model numbers `method` reads besides the weight (density, epsilon, gamma), in the order
/// it declares them.
pub fn model_params(method: &str) -> Vec<&'static str> {
    spec(method).map_or_else(Vec::new, |s| {
        s.params
            .iter()
            .filter(|p| p.scope != Scope::Shared && p.kind == Kind::Float && p.name != "weight")
            .map(|p| p.name)
            .collect()
    })
}

/// Shared switches `method` reads (normalize, rescale), with its defaults. `int8_mask` is left
/// out: it only changes mergekit's memory use.
pub fn method_flags(method: &str) -> Vec<(&'static str, bool)> {
    spec(method).map_or_else(Vec::new, |s| {
        s.params
            .iter()
            .filter(|p| p.scope == Scope::Shared && p.name != "int8_mask")
            .filter_map(|p| match p.default {
                Some(Value::Bool(b)) => Some((p.name, b)),
                _ => None,
            })
            .collect()
    })
}

/// The default the core gives `method`'s float parameter `name`, if any.
fn param_default(method: &str, name: &str) -> Option<f64> {
    spec(method)?
        .params
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| match p.default {
            Some(Value::Float(x)) => Some(x),
            _ => None,
        })
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

/// A module filter: tensors whose names contain `filter` take `lambda` as the strength of the
/// merged task vector instead of the global one. Filters are tried in order and the first match
/// wins, as mergekit evaluates `{filter, value}` lists.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleFilter {
    pub filter: String,
    pub lambda: f64,
}

/// The Merge panel's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeSettings {
    pub method: String,
    /// Per model, when `per_layer` is off.
    pub weights: Vec<f64>,
    /// Per model, the method's other numbers by name ([`model_params`]); kept across method
    /// changes, so a density set for TIES is still there after a look at DELLA.
    pub model_values: Vec<BTreeMap<String, f64>>,
    /// The method's switches that differ from its defaults ([`method_flags`]).
    pub flags: BTreeMap<String, bool>,
    /// Per model, the control points of its per-layer weight curve (a mergekit gradient), when
    /// `per_layer` is on.
    pub curves: Vec<Vec<f64>>,
    pub per_layer: bool,
    pub lambda: f64,
    pub filters: Vec<ModuleFilter>,
    /// `dtype` of the recipe (the dtype inputs are computed in; float32 unless a loaded recipe
    /// says otherwise).
    pub dtype: String,
    /// `tokenizer_source` of a loaded recipe, kept as it was.
    pub tokenizer_source: Option<String>,
    /// `out_dtype` of the recipe: float32, bfloat16 or float16.
    pub out_dtype: String,
}

/// Does `method` scale the merged task vector by `lambda` (and so take module filters)?
pub fn has_lambda(method: &str) -> bool {
    method != "linear"
}

impl MergeSettings {
    pub fn for_models(n: usize) -> Self {
        Self {
            method: "task_arithmetic".to_owned(),
            weights: vec![0.3; n],
            model_values: vec![BTreeMap::new(); n],
            flags: BTreeMap::new(),
            curves: vec![vec![0.3; 2]; n],
            per_layer: false,
            lambda: 1.0,
            filters: Vec::new(),
            dtype: "float32".to_owned(),
            tokenizer_source: None,
            out_dtype: "float32".to_owned(),
        }
    }

    /// Model `i`'s `name` ([`model_params`]), or where its slider starts.
    pub fn model_value(&self, i: usize, name: &str) -> f64 {
        self.model_values[i]
            .get(name)
            .copied()
            .unwrap_or_else(|| model_param_range(name).0)
    }

    /// The `name` switch of the current method.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.get(name).copied().unwrap_or_else(|| {
            method_flags(&self.method)
                .into_iter()
                .find(|(n, _)| *n == name)
                .is_some_and(|(_, default)| default)
        })
    }

    /// Turns per-layer curves on or off, carrying the weights over: a scalar weight becomes a
    /// flat curve, and a curve becomes its mean over `layers` layers.
    pub fn set_per_layer(&mut self, on: bool, layers: usize) {
        if on == self.per_layer {
            return;
        }
        if on {
            for (curve, &w) in self.curves.iter_mut().zip(&self.weights) {
                // Switching off rounded the curve's mean to the slider's grid: a weight still
                // equal to that is the curve's own, and the curve stays.
                if round(curve_mean(curve, layers)) != w {
                    *curve = vec![w; curve.len().max(2)];
                }
            }
        } else {
            for (w, curve) in self.weights.iter_mut().zip(&self.curves) {
                *w = round(curve_mean(curve, layers));
            }
        }
        self.per_layer = on;
    }

    /// The mergekit YAML of these settings over `family`.
    pub fn to_yaml(&self, family: &OpenFamily) -> String {
        let mut y = format!("merge_method: {}\n", self.method);
        let with_base = has_lambda(&self.method);
        if with_base {
            let _ = writeln!(y, "base_model: {}", quote(&family.base));
        }
        y.push_str("models:\n");
        for (i, path) in family.models.iter().enumerate() {
            let _ = writeln!(y, "  - model: {}", quote(path));
            let weight = if self.per_layer {
                let points: Vec<String> = self.curves[i].iter().map(f64::to_string).collect();
                format!("[{}]", points.join(", "))
            } else {
                format!("{}", self.weights[i])
            };
            let _ = write!(y, "    parameters: {{weight: {weight}");
            for name in model_params(&self.method) {
                let _ = write!(y, ", {name}: {}", self.model_value(i, name));
            }
            y.push_str("}\n");
        }
        // Shared parameters: switches that differ from the method's defaults, then lambda.
        let mut shared: Vec<String> = method_flags(&self.method)
            .into_iter()
            .filter(|&(name, default)| self.flag(name) != default)
            .map(|(name, _)| format!("  {name}: {}", self.flag(name)))
            .collect();
        if with_base && self.filters.is_empty() && (self.lambda - 1.0).abs() > f64::EPSILON {
            shared.push(format!("  lambda: {}", self.lambda));
        }
        if !shared.is_empty() || (with_base && !self.filters.is_empty()) {
            y.push_str("parameters:\n");
            for line in shared {
                y.push_str(&line);
                y.push('\n');
            }
        }
        if with_base && !self.filters.is_empty() {
            y.push_str("  lambda:\n");
            // An empty or `*` filter would match everything and hide the entries after it.
            for f in self
                .filters
                .iter()
                .filter(|f| !matches!(f.filter.trim(), "" | "*"))
            {
                let _ = writeln!(
                    y,
                    "    - {{filter: {}, value: {}}}",
                    serde_json::to_string(&f.filter).expect("strings serialize"),
                    f.lambda
                );
            }
            let _ = writeln!(y, "    - {{value: {}}}", self.lambda);
        }
        let _ = writeln!(y, "dtype: {}", self.dtype);
        if let Some(source) = &self.tokenizer_source {
            let _ = writeln!(
                y,
                "tokenizer_source: {}",
                serde_json::to_string(source).expect("strings serialize")
            );
        }
        if self.out_dtype != "float32" {
            let _ = writeln!(y, "out_dtype: {}", self.out_dtype);
        }
        y
    }
}

/// A per-layer weight curve's value at relative depth `t` in [0, 1], as the engine evaluates a
/// gradient (piecewise linear between evenly spread control points).
pub fn curve_at(points: &[f64], t: f64) -> f64 {
    use mergescope_core::merge::recipe::{ParamValue, Scalar};
    let list = ParamValue::List(points.iter().map(|&x| Scalar::Number(x)).collect());
    match list.evaluate("", t) {
        Some(Scalar::Number(x)) => x,
        _ => 0.0,
    }
}

/// The weight a curve gives each of `layers` layers.
pub fn curve_per_layer(points: &[f64], layers: usize) -> Vec<f64> {
    (0..layers)
        .map(|l| {
            curve_at(
                points,
                if layers > 1 {
                    l as f64 / (layers - 1) as f64
                } else {
                    1.0
                },
            )
        })
        .collect()
}

/// The mean weight a curve gives over `layers` layers (at least the two ends).
pub fn curve_mean(points: &[f64], layers: usize) -> f64 {
    let per_layer = curve_per_layer(points, layers.max(2));
    per_layer.iter().sum::<f64>() / per_layer.len() as f64
}

/// Rounds to the 0.01 grid the sliders and curve points move on, so saved recipes stay readable.
pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Shapes a per-layer curve can be reset to: each keeps the model's mean weight over depth
/// where it can, so switching shape does not change the overall strength much.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CurvePreset {
    Constant,
    Rising,
    Falling,
    V,
    InverseV,
    EarlyOnly,
    LateOnly,
}

impl CurvePreset {
    pub const ALL: [Self; 7] = [
        Self::Constant,
        Self::Rising,
        Self::Falling,
        Self::V,
        Self::InverseV,
        Self::EarlyOnly,
        Self::LateOnly,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Self::Constant => "constant",
            Self::Rising => "rising (late layers most)",
            Self::Falling => "falling (early layers most)",
            Self::V => "V (first and last layers most)",
            Self::InverseV => "inverse V (middle layers most)",
            Self::EarlyOnly => "early half only",
            Self::LateOnly => "late half only",
        }
    }

    /// What the shape does to the weights, for its tooltip.
    pub const fn help(self) -> &'static str {
        match self {
            Self::Constant => "The same weight on every layer (the curve's mean).",
            Self::Rising => {
                "A linear ramp from 0 at the first layer to twice the mean at the last: the \
                 base's early (general) layers stay, the late (task-specific) ones merge most."
            }
            Self::Falling => {
                "A linear ramp from twice the mean at the first layer to 0 at the last: merge \
                 the early layers, keep the base's late ones."
            }
            Self::V => {
                "Twice the mean at the first and last layers, 0 in the middle (two linear \
                 ramps)."
            }
            Self::InverseV => {
                "0 at the first and last layers, twice the mean in the middle (two linear \
                 ramps)."
            }
            Self::EarlyOnly => "Twice the mean on the first half of the layers, 0 after it.",
            Self::LateOnly => "0 on the first half of the layers, twice the mean after it.",
        }
    }

    /// Five control points with mean `w` over depth.
    pub fn points(self, w: f64) -> Vec<f64> {
        let shape: [f64; 5] = match self {
            Self::Constant => [1.0; 5],
            Self::Rising => [0.0, 0.5, 1.0, 1.5, 2.0],
            Self::Falling => [2.0, 1.5, 1.0, 0.5, 0.0],
            Self::V => [2.0, 1.0, 0.0, 1.0, 2.0],
            Self::InverseV => [0.0, 1.0, 2.0, 1.0, 0.0],
            // The half that is kept carries twice the weight (a mean of 3/4 w over depth).
            Self::EarlyOnly => [2.0, 2.0, 0.0, 0.0, 0.0],
            Self::LateOnly => [0.0, 0.0, 0.0, 2.0, 2.0],
        };
        shape.iter().map(|s| round(s * w)).collect()
    }
}

/// Resamples a curve to `k` evenly spread control points (adding or removing a point keeps
/// its shape).
pub fn resample(points: &[f64], k: usize) -> Vec<f64> {
    let k = k.max(2);
    (0..k)
        .map(|j| round(curve_at(points, j as f64 / (k - 1) as f64)))
        .collect()
}

/// A recipe the workbench can edit: it parses, and uses a method the Merge panel offers.
pub fn parse_recipe(text: &str, file: &Path) -> Result<Recipe, String> {
    let recipe = Recipe::from_yaml(text, file).map_err(|e| e.to_string())?;
    if !METHODS.contains(&recipe.merge_method.as_str()) {
        return Err(format!(
            "the workbench edits {}; `{}` recipes run with `mergescope merge`",
            METHODS.join(", "),
            recipe.merge_method
        ));
    }
    Ok(recipe)
}

impl MergeSettings {
    /// The settings a mergekit recipe describes, for the open `family`: the recipe must use a
    /// method the panel edits, name the family's models (paths relative to the recipe's
    /// folder are resolved from there), and give scalar weights or gradients, scalar
    /// densities, and a scalar `lambda` or a list of `{filter, value}` lambdas.
    pub fn from_recipe(text: &str, file: &Path, family: &OpenFamily) -> Result<Self, String> {
        use mergescope_core::merge::recipe::{ParamValue, Scalar};

        let recipe = parse_recipe(text, file)?;
        let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
        let same = |a: &Path, b: &Path| {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            canon(a) == canon(b)
        };
        // Each entry's model where a merge would find it (`None` if it is not there).
        let resolved: Vec<Option<PathBuf>> = recipe
            .models
            .iter()
            .map(|m| resolve_model_path(&m.model, "model", &cwd, file).ok())
            .collect();
        let mut settings = Self::for_models(family.models.len());
        settings.method.clone_from(&recipe.merge_method);
        let number = |v: &ParamValue, name: &str, model: &str| match v {
            ParamValue::Scalar(Scalar::Number(x)) => Ok(*x),
            _ => Err(format!(
                "`{name}` of {model} is not a single number; the workbench edits plain values"
            )),
        };
        for (i, path) in family.models.iter().enumerate() {
            let entry = recipe
                .models
                .iter()
                .zip(&resolved)
                .find(|(_, r)| r.as_deref().is_some_and(|r| same(r, path)))
                .map(|(m, _)| m)
                .ok_or_else(|| {
                    format!(
                        "the recipe does not name {}, which is open; open the recipe's models first",
                        path.display()
                    )
                })?;
            let weight = entry
                .parameters
                .get("weight")
                .or_else(|| recipe.parameters.get("weight"));
            match weight {
                Some(ParamValue::List(points)) => {
                    let points = points
                        .iter()
                        .map(|p| match p {
                            Scalar::Number(x) => Ok(*x),
                            other => Err(format!(
                                "the weight gradient of {} holds {}; it must hold numbers",
                                entry.model,
                                other.describe()
                            )),
                        })
                        .collect::<Result<Vec<f64>, String>>()?;
                    if points.is_empty() {
                        return Err(format!("the weight gradient of {} is empty", entry.model));
                    }
                    settings.per_layer = true;
                    settings.curves[i] = if points.len() == 1 {
                        vec![points[0]; 2]
                    } else {
                        points
                    };
                    settings.weights[i] = round(curve_mean(&settings.curves[i], family.layers));
                }
                Some(ParamValue::Conditional(_)) => {
                    return Err(format!(
                        "the weight of {} depends on tensor filters; the workbench filters \
                         modules through lambda",
                        entry.model
                    ));
                }
                Some(v) => {
                    settings.weights[i] = number(v, "weight", &entry.model)?;
                    settings.curves[i] = vec![settings.weights[i]; 2];
                }
                None => {}
            }
            // As the engine resolves them: the model's own value, else the recipe's shared
            // one, else the method's default.
            for name in model_params(&settings.method) {
                let value = match entry
                    .parameters
                    .get(name)
                    .or_else(|| recipe.parameters.get(name))
                {
                    Some(v) => number(v, name, &entry.model)?,
                    None => match param_default(&settings.method, name) {
                        Some(default) => default,
                        None => continue,
                    },
                };
                settings.model_values[i].insert(name.to_owned(), value);
            }
        }
        for (name, _) in method_flags(&settings.method) {
            match recipe.parameters.get(name) {
                Some(ParamValue::Scalar(Scalar::Bool(b))) => {
                    settings.flags.insert(name.to_owned(), *b);
                }
                Some(_) => return Err(format!("`{name}` must be true or false")),
                None => {}
            }
        }
        match recipe.parameters.get("lambda") {
            Some(ParamValue::Conditional(entries)) => {
                for e in entries {
                    let value = number(&e.value, "lambda", "the recipe")?;
                    match e.filter.as_deref() {
                        // The first catch-all ends the list: entries after it never match.
                        None | Some("*") => {
                            settings.lambda = value;
                            break;
                        }
                        Some(filter) => settings.filters.push(ModuleFilter {
                            filter: filter.to_owned(),
                            lambda: value,
                        }),
                    }
                }
            }
            Some(v) => settings.lambda = number(v, "lambda", "the recipe")?,
            None => {}
        }
        if let Some(dtype) = recipe.out_dtype {
            settings.out_dtype = dtype;
        }
        if let Some(dtype) = recipe.dtype {
            settings.dtype = dtype;
        }
        settings.tokenizer_source = recipe.tokenizer_source;
        Ok(settings)
    }
}

/// A model as the panels name it: its folder's name, or its file's without `.safetensors`.
pub fn model_name(path: &Path) -> String {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    name.strip_suffix(".safetensors")
        .map_or_else(|| name.clone(), str::to_owned)
}

/// A path as a YAML scalar.
fn quote(path: &Path) -> String {
    serde_json::to_string(&path.display().to_string()).expect("strings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_recipe_loads_back() {
        let (_dir, family) = family_on_disk();
        let mut s = MergeSettings::for_models(2);
        s.method = "ties".to_owned();
        s.weights = vec![0.7, 0.1];
        s.model_values[0].insert("density".to_owned(), 0.3);
        s.model_values[1].insert("density".to_owned(), 0.9);
        s.lambda = 0.8;
        s.out_dtype = "bfloat16".to_owned();
        let yaml = s.to_yaml(&family);
        let back = MergeSettings::from_recipe(&yaml, Path::new("/tmp/r.yml"), &family).unwrap();
        assert_eq!(back.weights, s.weights);
        assert_eq!(back.model_values, s.model_values);
        assert_eq!((back.lambda, back.out_dtype.as_str()), (0.8, "bfloat16"));
        s.per_layer = true;
        s.curves = vec![vec![0.1, 0.9], vec![0.4, 0.2, 0.0, 1.5]];
        s.filters = vec![
            ModuleFilter {
                filter: "self_attn".to_owned(),
                lambda: 0.5,
            },
            ModuleFilter {
                filter: "mlp".to_owned(),
                lambda: 0.0,
            },
        ];
        let back =
            MergeSettings::from_recipe(&s.to_yaml(&family), Path::new("/tmp/r.yml"), &family)
                .unwrap();
        assert!(back.per_layer);
        assert_eq!(back.curves, s.curves);
        assert_eq!(back.filters, s.filters);
        assert_eq!(back.lambda, 0.8);
        let karcher = "merge_method: karcher\nmodels:\n  - model: /m/a\n";
        assert!(
            MergeSettings::from_recipe(karcher, Path::new("/tmp/r.yml"), &family)
                .unwrap_err()
                .contains("mergescope merge")
        );
    }

    /// [`family`] with its base and models as (empty) files: recipes name models that exist,
    /// as a merge would look for them.
    fn family_on_disk() -> (tempfile::TempDir, OpenFamily) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["base", "a", "b"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let mut family = family();
        family.base = dir.path().join("base");
        family.models = vec![dir.path().join("a"), dir.path().join("b")];
        (dir, family)
    }

    fn family() -> OpenFamily {
        OpenFamily {
            base: PathBuf::from("/m/base"),
            models: vec![PathBuf::from("/m/a"), PathBuf::from("/m/b")],
            members: Vec::new(),
            issues: Vec::new(),
            is_demo: false,
            builtin: None,
            tensor_names: [
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.mlp.up_proj.weight",
                "model.layers.1.self_attn.q_proj.weight",
                "model.norm.weight",
            ]
            .map(str::to_owned)
            .to_vec(),
            layers: 2,
            language_model: None,
        }
    }

    #[test]
    fn suggests_module_filters_from_tensor_names() {
        let f = family();
        assert_eq!(
            f.module_suggestions(),
            ["self_attn", "mlp", "embed_tokens", "norm"]
        );
        assert_eq!(f.matches("self_attn"), 2);
    }

    #[test]
    fn settings_become_a_mergekit_recipe() {
        let mut s = MergeSettings::for_models(2);
        s.method = "ties".to_owned();
        s.weights = vec![0.5, 0.25];
        let yaml = s.to_yaml(&family());
        assert!(yaml.contains("merge_method: ties"));
        assert!(yaml.contains("base_model: \"/m/base\""));
        assert!(yaml.contains("parameters: {weight: 0.5, density: 0.5}"));
        s.per_layer = true;
        s.curves[1] = vec![0.1, 0.9];
        assert!(s.to_yaml(&family()).contains("weight: [0.1, 0.9]"));
        s.filters.push(ModuleFilter {
            filter: "self_attn".to_owned(),
            lambda: 0.5,
        });
        let yaml = s.to_yaml(&family());
        assert!(
            yaml.contains(
                "  lambda:\n    - {filter: \"self_attn\", value: 0.5}\n    - {value: 1}\n"
            ),
            "{yaml}"
        );
        // Linear has no base, so neither lambda nor filters.
        s.method = "linear".to_owned();
        assert!(!s.to_yaml(&family()).contains("lambda"));
    }

    #[test]
    fn every_parameter_of_the_method_is_edited_and_saved() {
        let (dir, family) = family_on_disk();
        // The core's declarations decide what the panel shows.
        assert_eq!(model_params("della"), ["density", "epsilon"]);
        assert_eq!(model_params("breadcrumbs"), ["density", "gamma"]);
        assert!(model_params("task_arithmetic").is_empty());
        let ties_flags = method_flags("ties");
        assert!(ties_flags.contains(&("normalize", true)), "{ties_flags:?}");

        let mut s = MergeSettings::for_models(2);
        s.method = "della".to_owned();
        s.model_values[1].insert("epsilon".to_owned(), 0.2);
        let normalize = !s.flag("normalize");
        s.flags.insert("normalize".to_owned(), normalize);
        let yaml = s.to_yaml(&family);
        assert!(yaml.contains("density: 0.5, epsilon: 0.1}"), "{yaml}");
        assert!(yaml.contains("density: 0.5, epsilon: 0.2}"), "{yaml}");
        assert!(
            yaml.contains(&format!("parameters:\n  normalize: {normalize}\n")),
            "{yaml}"
        );
        let back = MergeSettings::from_recipe(&yaml, &dir.path().join("r.yml"), &family).unwrap();
        assert_eq!(back.model_value(1, "epsilon"), 0.2);
        assert_eq!(back.flag("normalize"), normalize);
    }

    #[test]
    fn curves_evaluate_like_mergekit_gradients() {
        // ALGORITHMS.md §1.3: L = 32, [0, 0.5, 1], layer 10 → t = 10/31.
        let w = curve_per_layer(&[0.0, 0.5, 1.0], 32);
        assert!((w[10] - 10.0 / 31.0).abs() < 1e-12);
        assert_eq!((w[0], w[31]), (0.0, 1.0));
        // Resampling keeps the shape; presets keep the scale.
        assert_eq!(resample(&[0.0, 1.0], 3), vec![0.0, 0.5, 1.0]);
        assert_eq!(resample(&[0.0, 0.5, 1.0], 2), vec![0.0, 1.0]);
        assert_eq!(
            CurvePreset::Rising.points(0.3),
            vec![0.0, 0.15, 0.3, 0.45, 0.6]
        );
        // Over depth (many layers), the V shapes keep the mean weight.
        for preset in [CurvePreset::V, CurvePreset::InverseV, CurvePreset::Constant] {
            assert!(
                (curve_mean(&preset.points(0.4), 1001) - 0.4).abs() < 1e-3,
                "{preset:?}"
            );
        }
        assert_eq!(CurvePreset::V.points(0.5), vec![1.0, 0.5, 0.0, 0.5, 1.0]);
    }

    #[test]
    fn recipes_load_with_the_values_the_engine_would_use() {
        let (dir, family) = family_on_disk();
        let file = dir.path().join("r.yml");
        // a: its own density; b: none, so the recipe's shared one. Weight from the shared
        // parameters too. A catch-all lambda entry ends the list.
        let yaml = "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {density: 0.2}\n  - model: b\nparameters:\n  weight: 0.7\n  density: 0.9\n  lambda:\n    - {filter: mlp, value: 0.5}\n    - {value: 0.8}\n    - {filter: attn, value: 0.1}\ndtype: bfloat16\ntokenizer_source: base\n";
        let s = MergeSettings::from_recipe(yaml, &file, &family).unwrap();
        assert_eq!(
            (s.model_value(0, "density"), s.model_value(1, "density")),
            (0.2, 0.9)
        );
        assert_eq!(s.weights, vec![0.7, 0.7]);
        assert_eq!(s.lambda, 0.8);
        assert_eq!(s.filters.len(), 1);
        assert_eq!(s.dtype, "bfloat16");
        assert_eq!(s.tokenizer_source.as_deref(), Some("base"));
        let again = s.to_yaml(&family);
        assert!(
            again.contains("dtype: bfloat16\ntokenizer_source: \"base\""),
            "{again}"
        );
        // Without any density the method's own default (keep everything) applies.
        let bare = "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n";
        let s = MergeSettings::from_recipe(bare, &file, &family).unwrap();
        assert_eq!(s.model_value(0, "density"), 1.0);
    }

    #[test]
    fn a_shaped_curve_survives_switching_per_layer_off_and_on() {
        let mut s = MergeSettings::for_models(1);
        s.set_per_layer(true, 4);
        s.curves[0] = vec![0.1, 0.25];
        s.set_per_layer(false, 4);
        s.set_per_layer(true, 4);
        assert_eq!(s.curves[0], vec![0.1, 0.25]);
    }

    #[test]
    fn per_layer_curves_carry_the_weights_over() {
        let mut s = MergeSettings::for_models(2);
        s.weights = vec![0.5, 0.2];
        s.set_per_layer(true, 4);
        assert_eq!(s.curves, vec![vec![0.5, 0.5], vec![0.2, 0.2]]);
        s.curves[0] = vec![0.0, 1.0];
        s.set_per_layer(false, 4);
        assert_eq!(s.weights, vec![0.5, 0.2]);
    }
}
