//! What the user has open and set: the family, the merge settings, and the recipe they make.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use mergescope_core::merge::BaseUse;

use mergescope_core::merge::plan::resolve_model_path;
use mergescope_core::merge::recipe::Recipe;

use super::methods::{base_use, has_weight, shared_curve_param, shared_numbers, shared_range};
pub use super::methods::{
    has_lambda, method_flags, methods, model_param_range, model_params, param_default,
};

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

/// A module filter: tensors whose names contain `filter` take `lambda` as the strength of the
/// merged task vector instead of the global one. Filters are tried in order and the first match
/// wins, as mergekit evaluates `{filter, value}` lists.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleFilter {
    pub filter: String,
    pub lambda: f64,
}

/// A per-layer curve of the method's shared number (slerp's `t`) for the tensors whose names
/// contain `filter`: one `{filter, value: [...]}` entry, as in mergekit's gradient-slerp
/// example.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleCurve {
    pub filter: String,
    pub points: Vec<f64>,
}

/// A recipe the panel cannot represent with its controls: it is kept as text (previewed,
/// exported and saved as it is) with the reason in one line.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadOnly {
    pub text: String,
    /// What the panel does not edit ("the panel does not edit per-slice layer ranges").
    pub reason: String,
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
    /// Per-layer curves instead of single numbers: the weights' (per model), or the method's
    /// shared curve number's (slerp's `t`).
    pub per_layer: bool,
    pub lambda: f64,
    pub filters: Vec<ModuleFilter>,
    /// The method's shared numbers by name (`t`, `eps`, `tol`, `max_iter`, `select_topk`, ...;
    /// lambda has its own field); absent: where its slider starts. Kept across method
    /// changes.
    pub shared: BTreeMap<String, f64>,
    /// The curve of the method's shared curve number (slerp's `t`) when `per_layer` is on: for
    /// the tensors no module curve catches.
    pub shared_curve: Vec<f64>,
    /// Curves of that number for module filters, tried in order before `shared_curve`.
    pub module_curves: Vec<ModuleCurve>,
    /// Per open fine-tune: does it take part in the merge?
    pub included: Vec<bool>,
    /// For methods with an optional base (nuslerp, multislerp): merge task vectors against
    /// the base (else the models themselves).
    pub use_base: bool,
    /// `dtype` of the recipe (the dtype inputs are computed in; float32 unless a loaded recipe
    /// says otherwise).
    pub dtype: String,
    /// `tokenizer_source` of a loaded recipe, kept as it was.
    pub tokenizer_source: Option<String>,
    /// `out_dtype` of the recipe: float32, bfloat16 or float16.
    pub out_dtype: String,
    /// A loaded recipe the controls cannot represent: it is what the settings make.
    pub read_only: Option<ReadOnly>,
}

/// Why a recipe does not become editable settings.
enum Refusal {
    /// It is a valid recipe the panel shows as text.
    ReadOnly(String),
    /// It cannot be applied at all (it names models that are not open, ...).
    Error(String),
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
            shared: BTreeMap::new(),
            shared_curve: vec![0.5; 2],
            module_curves: Vec::new(),
            included: vec![true; n],
            use_base: true,
            dtype: "float32".to_owned(),
            tokenizer_source: None,
            out_dtype: "float32".to_owned(),
            read_only: None,
        }
    }

    /// Switches to `method`, ticking or unticking models (the first ones stay) so that as many
    /// take part as it merges (slerp: exactly one).
    pub fn set_method(&mut self, method: &str) {
        self.method = method.to_owned();
        let Some(spec) = super::methods::spec(method) else {
            return;
        };
        let mut count = self.included_count();
        if let Some(max) = spec.max_models {
            for on in self.included.iter_mut().filter(|on| **on).skip(max) {
                *on = false;
                count -= 1;
            }
        }
        for on in &mut self.included {
            if count >= spec.min_models.max(1) {
                break;
            }
            if !*on {
                *on = true;
                count += 1;
            }
        }
    }

    /// Does open fine-tune `i` take part? (Settings made for fewer models include the rest.)
    pub fn includes(&self, i: usize) -> bool {
        self.included.get(i).copied().unwrap_or(true)
    }

    /// How many open fine-tunes take part.
    pub fn included_count(&self) -> usize {
        self.included.iter().filter(|on| **on).count()
    }

    /// Why these settings make no recipe the method accepts (a wrong number of models).
    pub fn problem(&self) -> Option<String> {
        if self.read_only.is_some() {
            return None;
        }
        super::methods::model_count_problem(&self.method, self.included_count())
    }

    /// Model `i`'s `name` ([`model_params`]), or where its slider starts.
    pub fn model_value(&self, i: usize, name: &str) -> f64 {
        self.model_values[i]
            .get(name)
            .copied()
            .unwrap_or_else(|| model_param_range(name).0)
    }

    /// The method's shared number `name` ([`shared_numbers`], `t`), or where its slider
    /// starts.
    pub fn shared_value(&self, name: &str) -> f64 {
        self.shared
            .get(name)
            .copied()
            .unwrap_or_else(|| shared_range(&self.method, name).start)
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

    /// Turns per-layer curves on or off, carrying the numbers over: a scalar becomes a flat
    /// curve, and a curve becomes its mean over `layers` layers.
    pub fn set_per_layer(&mut self, on: bool, layers: usize) {
        if on == self.per_layer {
            return;
        }
        let t = shared_curve_param(&self.method);
        if on {
            for (curve, &w) in self.curves.iter_mut().zip(&self.weights) {
                carry_to_curve(curve, w, layers);
            }
            if let Some(t) = t {
                let value = self.shared_value(t);
                carry_to_curve(&mut self.shared_curve, value, layers);
            }
        } else {
            for (w, curve) in self.weights.iter_mut().zip(&self.curves) {
                *w = round(curve_mean(curve, layers));
            }
            if let Some(t) = t {
                self.shared
                    .insert(t.to_owned(), round(curve_mean(&self.shared_curve, layers)));
            }
        }
        self.per_layer = on;
    }

    /// Does the base go into the recipe (as `base_model`)?
    fn writes_base(&self) -> bool {
        match base_use(&self.method) {
            BaseUse::Required => true,
            BaseUse::Optional => self.use_base,
            // A base would be one more input to average (mergekit's rule for these methods).
            BaseUse::Ignored => false,
        }
    }

    /// The mergekit YAML of these settings over `family` (a read-only recipe's own text).
    pub fn to_yaml(&self, family: &OpenFamily) -> String {
        if let Some(read_only) = &self.read_only {
            return read_only.text.clone();
        }
        let method = self.method.as_str();
        let mut y = format!("merge_method: {method}\n");
        if self.writes_base() {
            let _ = writeln!(y, "base_model: {}", quote(&family.base));
        }
        y.push_str("models:\n");
        let included = family
            .models
            .iter()
            .enumerate()
            .filter(|(i, _)| self.includes(*i));
        for (i, path) in included {
            let _ = writeln!(y, "  - model: {}", quote(path));
            let mut params = Vec::new();
            if has_weight(method) {
                let weight = if self.per_layer {
                    gradient(&self.curves[i])
                } else {
                    format!("{}", self.weights[i])
                };
                params.push(format!("weight: {weight}"));
            }
            for name in model_params(method) {
                params.push(format!("{name}: {}", self.model_value(i, name)));
            }
            if !params.is_empty() {
                let _ = writeln!(y, "    parameters: {{{}}}", params.join(", "));
            }
        }
        let lambda_filters = has_lambda(method) && !self.filters.is_empty();
        let module_curves = self.per_layer && !self.module_curves.is_empty();
        // Shared parameters: switches and numbers that differ from the method's defaults
        // (required ones always), the curve number, then lambda.
        let mut shared: Vec<String> = method_flags(method)
            .into_iter()
            .filter(|&(name, default)| self.flag(name) != default)
            .map(|(name, _)| format!("  {name}: {}", self.flag(name)))
            .collect();
        for name in shared_numbers(method) {
            let value = self.shared_value(name);
            if param_default(method, name) != Some(value) {
                shared.push(format!("  {name}: {value}"));
            }
        }
        if let Some(t) = shared_curve_param(method) {
            if module_curves {
                shared.push(format!("  {t}:"));
                for c in &self.module_curves {
                    shared.push(format!(
                        "    - {{filter: {}, value: {}}}",
                        serde_json::to_string(&c.filter).expect("strings serialize"),
                        gradient(&c.points)
                    ));
                }
                shared.push(format!("    - {{value: {}}}", gradient(&self.shared_curve)));
            } else if self.per_layer {
                shared.push(format!("  {t}: {}", gradient(&self.shared_curve)));
            } else {
                shared.push(format!("  {t}: {}", self.shared_value(t)));
            }
        }
        if has_lambda(method) && !lambda_filters && (self.lambda - 1.0).abs() > f64::EPSILON {
            shared.push(format!("  lambda: {}", self.lambda));
        }
        if lambda_filters {
            shared.push("  lambda:".to_owned());
            // An empty or `*` filter would match everything and hide the entries after it.
            for f in self
                .filters
                .iter()
                .filter(|f| !matches!(f.filter.trim(), "" | "*"))
            {
                shared.push(format!(
                    "    - {{filter: {}, value: {}}}",
                    serde_json::to_string(&f.filter).expect("strings serialize"),
                    f.lambda
                ));
            }
            shared.push(format!("    - {{value: {}}}", self.lambda));
        }
        if !shared.is_empty() {
            y.push_str("parameters:\n");
            for line in shared {
                y.push_str(&line);
                y.push('\n');
            }
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

/// A scalar `w` carried onto `curve` as per-layer curves are turned on: the curve stays if
/// its mean is still `w` (switching off rounded the curve's mean to the slider's grid), else
/// it becomes flat at `w`.
fn carry_to_curve(curve: &mut Vec<f64>, w: f64, layers: usize) {
    if round(curve_mean(curve, layers)) != w {
        *curve = vec![w; curve.len().max(2)];
    }
}

/// Control points as a mergekit gradient: `[0.1, 0.5, 0.9]`.
fn gradient(points: &[f64]) -> String {
    let points: Vec<String> = points.iter().map(|x| (x + 0.0).to_string()).collect();
    format!("[{}]", points.join(", "))
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
    // + 0.0 turns -0 into 0: a recipe says `0`, and YAML reads `-0` back as the integer 0.
    (x * 100.0).round() / 100.0 + 0.0
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

/// A recipe as the workbench reads it: any recipe `mergescope merge` parses. One the panel's
/// controls cannot represent opens read-only ([`ReadOnly`]).
pub fn parse_recipe(text: &str, file: &Path) -> Result<Recipe, String> {
    Recipe::from_yaml(text, file).map_err(|e| e.to_string())
}

/// What in `recipe` the panel has no controls for, whatever its method: `slices:` or
/// `modules:` (no `models:` list), a LoRA adapter applied to a model (`BASE+ADAPTER`).
fn unrepresentable(recipe: &Recipe, text: &str) -> Option<String> {
    let top_level = |key: &str| text.lines().any(|l| l.starts_with(&format!("{key}:")));
    if top_level("slices") {
        return Some("the panel does not edit per-slice layer ranges (`slices:`)".to_owned());
    }
    if top_level("modules") {
        return Some("the panel does not edit per-module recipes (`modules:`)".to_owned());
    }
    if recipe.tokenizer.is_some() {
        // Rewriting the recipe from the panel would drop the block.
        return Some(
            "the panel does not edit per-token vocabulary settings (`tokenizer:`)".to_owned(),
        );
    }
    if recipe.models.is_empty() {
        return Some("the recipe lists no `models:` for the panel to weigh".to_owned());
    }
    let lora = recipe
        .models
        .iter()
        .map(|m| m.model.as_str())
        .chain(recipe.base_model.as_deref())
        .find(|m| m.contains('+'));
    lora.map(|m| format!("the panel does not edit LoRA adapters applied to a model (`{m}`)"))
}

impl MergeSettings {
    /// The settings a mergekit recipe describes, for the open `family`: the models it names
    /// (paths relative to the recipe's folder are resolved from there) are the ones included.
    /// What the panel cannot represent (slices, LoRA adapters, per-module model weights,
    /// gradients of numbers it edits as one value, ...) opens read-only with the reason;
    /// a recipe that does not parse, or names models that are not open, is an error.
    pub fn from_recipe(text: &str, file: &Path, family: &OpenFamily) -> Result<Self, String> {
        let recipe = parse_recipe(text, file)?;
        let mut settings = Self::for_models(family.models.len());
        settings.method.clone_from(&recipe.merge_method);
        if let Some(dtype) = &recipe.out_dtype {
            settings.out_dtype.clone_from(dtype);
        }
        if let Some(dtype) = &recipe.dtype {
            settings.dtype.clone_from(dtype);
        }
        settings
            .tokenizer_source
            .clone_from(&recipe.tokenizer_source);
        let refusal = match unrepresentable(&recipe, text) {
            Some(reason) => Err(Refusal::ReadOnly(reason)),
            None => settings.read(&recipe, file, family),
        };
        match refusal {
            Ok(()) => Ok(settings),
            Err(Refusal::ReadOnly(reason)) => {
                settings.read_only = Some(ReadOnly {
                    text: anchored(text, recipe, file, family),
                    reason,
                });
                Ok(settings)
            }
            Err(Refusal::Error(e)) => Err(e),
        }
    }

    /// Fills the settings from `recipe`, with the values the engine would use: a model's own
    /// value, else the recipe's shared one, else the method's default.
    fn read(&mut self, recipe: &Recipe, file: &Path, family: &OpenFamily) -> Result<(), Refusal> {
        use mergescope_core::merge::recipe::{ParamValue, Scalar};
        let method = recipe.merge_method.as_str();
        let read_only = |reason: String| Err(Refusal::ReadOnly(reason));
        match (base_use(method), &recipe.base_model) {
            (BaseUse::Ignored, Some(_)) => {
                return read_only(format!(
                    "the panel does not edit a base_model that {method} merges as one more model"
                ));
            }
            (BaseUse::Optional, None) => self.use_base = false,
            _ => {}
        }
        // mergekit also lets a recipe list its base among the models: it stays the base.
        let base_listed = recipe.base_model.is_some() && base_use(method) != BaseUse::Ignored;
        let entries = included_entries(recipe, file, family, base_listed)?;
        self.included = entries.iter().map(Option::is_some).collect();
        let number = |v: &ParamValue, name: &str, whose: &str| match v {
            ParamValue::Scalar(Scalar::Number(x)) => Ok(*x),
            _ => Err(Refusal::ReadOnly(format!(
                "the panel edits `{name}` {whose} as one number, and the recipe gives {v}"
            ))),
        };
        for (i, entry) in entries.iter().enumerate() {
            let Some(entry) = entry else { continue };
            let whose = format!("of {}", entry.model);
            let value = |name: &str| {
                entry
                    .parameters
                    .get(name)
                    .or_else(|| recipe.parameters.get(name))
            };
            if has_weight(method) {
                match value("weight") {
                    Some(ParamValue::List(points)) => {
                        let points =
                            numbers(points).filter(|p| !p.is_empty()).ok_or_else(|| {
                                Refusal::ReadOnly(format!(
                                    "the weight gradient {whose} must hold numbers"
                                ))
                            })?;
                        self.per_layer = true;
                        self.curves[i] = flat_if_single(points);
                        self.weights[i] = round(curve_mean(&self.curves[i], family.layers));
                    }
                    Some(ParamValue::Conditional(_)) => {
                        return read_only(format!(
                            "the panel does not edit per-module model weights \
                             ({{filter, value}}) {whose}; lambda's module filters do that"
                        ));
                    }
                    Some(v) => {
                        self.weights[i] = number(v, "weight", &whose)?;
                        self.curves[i] = vec![self.weights[i]; 2];
                    }
                    None => {}
                }
            }
            for name in model_params(method) {
                let value = match value(name) {
                    Some(v) => number(v, name, &whose)?,
                    None => match param_default(method, name) {
                        Some(default) => default,
                        None => continue,
                    },
                };
                self.model_values[i].insert(name.to_owned(), value);
            }
        }
        for (name, _) in method_flags(method) {
            match recipe.parameters.get(name) {
                Some(ParamValue::Scalar(Scalar::Bool(b))) => {
                    self.flags.insert(name.to_owned(), *b);
                }
                Some(_) => return Err(Refusal::Error(format!("`{name}` must be true or false"))),
                None => {}
            }
        }
        for name in shared_numbers(method) {
            match recipe.parameters.get(name) {
                Some(v) => {
                    self.shared
                        .insert(name.to_owned(), number(v, name, "for every tensor")?);
                }
                None => {
                    self.shared.remove(name);
                }
            }
        }
        if let Some(t) = shared_curve_param(method) {
            self.read_shared_curve(t, recipe.parameters.get(t), family)?;
        }
        match recipe.parameters.get("lambda") {
            Some(ParamValue::Conditional(entries)) => {
                for e in entries {
                    let value = number(&e.value, "lambda", "of a module filter")?;
                    match e.filter.as_deref() {
                        // The first catch-all ends the list: entries after it never match.
                        None | Some("*") => {
                            self.lambda = value;
                            break;
                        }
                        Some(filter) => self.filters.push(ModuleFilter {
                            filter: filter.to_owned(),
                            lambda: value,
                        }),
                    }
                }
            }
            Some(v) => self.lambda = number(v, "lambda", "for every tensor")?,
            None => {}
        }
        Ok(())
    }

    /// `points` as the curve of `t` for the tensors no module curve catches, with `t`'s
    /// single value its mean over `layers` layers.
    fn set_shared_curve(&mut self, t: &str, points: Vec<f64>, layers: usize) {
        self.shared
            .insert(t.to_owned(), round(curve_mean(&points, layers)));
        self.shared_curve = points;
    }

    /// The method's shared curve number `t`: one value, a gradient, or per-module gradients
    /// ending with a catch-all entry (scalar entries become flat curves).
    fn read_shared_curve(
        &mut self,
        t: &str,
        value: Option<&mergescope_core::merge::recipe::ParamValue>,
        family: &OpenFamily,
    ) -> Result<(), Refusal> {
        use mergescope_core::merge::recipe::{ParamValue, Scalar};
        let curve = |v: &ParamValue| match v {
            ParamValue::Scalar(Scalar::Number(x)) => Some(vec![*x; 2]),
            ParamValue::List(points) => numbers(points)
                .filter(|p| !p.is_empty())
                .map(flat_if_single),
            _ => None,
        };
        let not_numbers = || {
            Refusal::ReadOnly(format!(
                "the panel edits `{t}` as numbers or gradients of numbers"
            ))
        };
        match value {
            None => {}
            Some(ParamValue::Scalar(Scalar::Number(x))) => {
                self.shared.insert(t.to_owned(), *x);
                self.shared_curve = vec![*x; 2];
            }
            Some(ParamValue::Conditional(entries)) => {
                self.per_layer = true;
                for e in entries {
                    let points = curve(&e.value).ok_or_else(not_numbers)?;
                    match e.filter.as_deref() {
                        None | Some("*") => {
                            self.set_shared_curve(t, points, family.layers);
                            return Ok(());
                        }
                        Some(filter) => self.module_curves.push(ModuleCurve {
                            filter: filter.to_owned(),
                            points,
                        }),
                    }
                }
                return Err(Refusal::ReadOnly(format!(
                    "the panel edits per-module `{t}` curves that end with one for every other \
                     tensor ({{value: ...}})"
                )));
            }
            Some(v) => {
                self.per_layer = true;
                let points = curve(v).ok_or_else(not_numbers)?;
                self.set_shared_curve(t, points, family.layers);
            }
        }
        Ok(())
    }
}

/// Per open model, the recipe's entry for it (`None`: the recipe leaves it out). An entry
/// for the base is passed over when `base_listed` (it is the base, as in mergekit's slerp
/// examples). A recipe naming a model that is not open, or one model twice, is refused.
fn included_entries<'r>(
    recipe: &'r Recipe,
    file: &Path,
    family: &OpenFamily,
    base_listed: bool,
) -> Result<Vec<Option<&'r mergescope_core::merge::recipe::ModelEntry>>, Refusal> {
    let cwd = std::env::current_dir().map_err(|e| Refusal::Error(e.to_string()))?;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let open: Vec<PathBuf> = family.models.iter().map(|p| canon(p)).collect();
    let base = canon(&family.base);
    let mut entries = vec![None; family.models.len()];
    for entry in &recipe.models {
        // Where a merge would find it (`None` if it is not there).
        let resolved = resolve_model_path(&entry.model, "model", &cwd, file)
            .ok()
            .map(|p| canon(&p));
        if base_listed && resolved.as_ref() == Some(&base) {
            if entry.parameters.is_empty() {
                continue;
            }
            return Err(Refusal::ReadOnly(format!(
                "the panel does not edit parameters given to the base ({})",
                entry.model
            )));
        }
        let i = resolved
            .and_then(|r| open.iter().position(|p| *p == r))
            .ok_or_else(|| {
                Refusal::Error(format!(
                    "the recipe names {}, which is not open; open the recipe's models first",
                    entry.model
                ))
            })?;
        if entries[i].replace(entry).is_some() {
            return Err(Refusal::ReadOnly(format!(
                "the panel does not edit a model named twice ({})",
                entry.model
            )));
        }
    }
    Ok(entries)
}

/// A gradient's points, if they are all numbers.
fn numbers(points: &[mergescope_core::merge::recipe::Scalar]) -> Option<Vec<f64>> {
    use mergescope_core::merge::recipe::Scalar;
    points
        .iter()
        .map(|p| match p {
            Scalar::Number(x) => Some(*x),
            _ => None,
        })
        .collect()
}

/// A curve has at least two control points: a one-point gradient is flat.
fn flat_if_single(points: Vec<f64>) -> Vec<f64> {
    if points.len() == 1 {
        vec![points[0]; 2]
    } else {
        points
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

/// `text` as the workbench's previews and exports can run it. They plan every recipe as if it
/// lived beside the base ([`OpenFamily::recipe_file`]), so a recipe loaded from another folder
/// has its relative model paths made absolute (re-serialised, so its comments are dropped);
/// one beside the base, or with absolute paths only, stays exactly as written.
fn anchored(text: &str, mut recipe: Recipe, file: &Path, family: &OpenFamily) -> String {
    let home = family.recipe_file();
    if file.parent() == home.parent() {
        return text.to_owned();
    }
    let Ok(cwd) = std::env::current_dir() else {
        return text.to_owned();
    };
    let mut moved = false;
    for path in recipe.model_paths_mut() {
        if Path::new(path.as_str()).is_absolute() {
            continue;
        }
        if let Ok(found) = resolve_model_path(path, "model", &cwd, file) {
            *path = std::path::absolute(&found)
                .unwrap_or(found)
                .display()
                .to_string();
            moved = true;
        }
    }
    if moved {
        recipe.to_yaml()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gui::methods::{is_integer, shared_numbers, shared_range};

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
        // A model that is not open is an error, not a read-only recipe.
        let elsewhere = "merge_method: karcher\nmodels:\n  - model: /m/elsewhere\n";
        assert!(
            MergeSettings::from_recipe(elsewhere, Path::new("/tmp/r.yml"), &family)
                .unwrap_err()
                .contains("which is not open")
        );
    }

    /// Every parameter `method` declares set away from its default, every model included
    /// that the method takes (slerp: the first).
    fn everything_set(method: &str) -> MergeSettings {
        let mut s = MergeSettings::for_models(2);
        s.set_method(method);
        s.weights = vec![0.7, 0.2];
        for (i, values) in s.model_values.iter_mut().enumerate() {
            for name in model_params(method) {
                values.insert(name.to_owned(), 0.25 + 0.1 * i as f64);
            }
        }
        for (name, default) in method_flags(method) {
            s.flags.insert(name.to_owned(), !default);
        }
        for name in shared_numbers(method) {
            let range = shared_range(method, name);
            let value = if is_integer(method, name) {
                7.0
            } else {
                (range.start * 0.5).max(*range.range.start())
            };
            s.shared.insert(name.to_owned(), value);
        }
        if let Some(t) = shared_curve_param(method) {
            s.shared.insert(t.to_owned(), 0.25);
        }
        if has_lambda(method) {
            s.lambda = 0.8;
        }
        s
    }

    #[test]
    fn every_method_round_trips_through_its_recipe() {
        let (dir, family) = family_on_disk();
        let file = dir.path().join("r.yml");
        for method in methods() {
            let mut s = everything_set(method);
            for per_layer in [false, true] {
                s.set_per_layer(per_layer, family.layers);
                if per_layer && shared_curve_param(method).is_some() {
                    s.shared_curve = vec![0.1, 0.9];
                    s.module_curves = vec![ModuleCurve {
                        filter: "self_attn".to_owned(),
                        points: vec![0.0, 0.5, 0.3, 0.7, 1.0],
                    }];
                }
                let yaml = s.to_yaml(&family);
                let back = MergeSettings::from_recipe(&yaml, &file, &family)
                    .unwrap_or_else(|e| panic!("{method}: {e}\n{yaml}"));
                assert!(back.read_only.is_none(), "{method}: {back:?}");
                assert_eq!(back.to_yaml(&family), yaml, "{method}");
                assert_eq!(back.included, s.included, "{method}");
                assert_eq!(back.method, method);
                for name in shared_numbers(method) {
                    assert_eq!(
                        back.shared_value(name),
                        s.shared_value(name),
                        "{method} {name}"
                    );
                }
                for (name, _) in method_flags(method) {
                    assert_eq!(back.flag(name), s.flag(name), "{method} {name}");
                }
                if let Some(t) = shared_curve_param(method) {
                    assert_eq!(back.per_layer, per_layer, "{method}");
                    if per_layer {
                        assert_eq!(back.module_curves, s.module_curves, "{method}");
                        assert_eq!(back.shared_curve, s.shared_curve, "{method}");
                    } else {
                        assert_eq!(back.shared_value(t), 0.25, "{method}");
                    }
                }
            }
        }
    }

    #[test]
    fn methods_with_input_counts_include_as_many_models_as_they_take() {
        let (dir, family) = family_on_disk();
        let mut s = MergeSettings::for_models(2);
        s.set_method("slerp");
        assert_eq!(s.included, [true, false]);
        let yaml = s.to_yaml(&family);
        assert!(
            yaml.contains("base_model:") && yaml.contains("  t: 0.5\n"),
            "{yaml}"
        );
        assert_eq!(yaml.matches("- model:").count(), 1, "{yaml}");
        s.included[1] = true;
        assert!(
            s.problem()
                .unwrap()
                .contains("exactly one model besides the base")
        );
        s.set_method("nuslerp");
        assert_eq!(s.included, [true, true]);
        assert_eq!(s.problem(), None);
        // Without the base, nuslerp interpolates the models themselves.
        s.use_base = false;
        let yaml = s.to_yaml(&family);
        assert!(!yaml.contains("base_model"), "{yaml}");
        let back = MergeSettings::from_recipe(&yaml, &dir.path().join("r.yml"), &family).unwrap();
        assert!(!back.use_base);
        // A method that merges a base as one more model writes none.
        s.set_method("karcher");
        assert!(!s.to_yaml(&family).contains("base_model"));
        s.set_method("passthrough");
        assert_eq!(s.included, [true, false]);
        assert!(s.to_yaml(&family).contains("parameters: {scale: 1}"));
    }

    #[test]
    fn recipes_the_panel_cannot_represent_open_read_only() {
        let (dir, family) = family_on_disk();
        let file = dir.path().join("r.yml");
        let cases = [
            (
                "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight:\n        - {filter: mlp, value: 0.2}\n        - {value: 1}\n  - model: b\n    parameters: {weight: 1}\n",
                "per-module model weights",
            ),
            (
                "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1, density: [0.2, 0.8]}\n",
                "edits `density` of a as one number",
            ),
            (
                "merge_method: linear\nbase_model: base\nmodels:\n  - model: a\n    parameters: {weight: 1}\n",
                "base_model that linear merges as one more model",
            ),
            (
                "merge_method: slerp\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  t:\n    - {filter: mlp, value: [0, 1]}\n",
                "end with one for every other tensor",
            ),
        ];
        let cases = cases.into_iter().chain([(
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a+adapter\n    parameters: {weight: 1}\n",
            "LoRA adapters applied to a model (`a+adapter`)",
        ), (
            "slices:\n  - sources:\n      - {model: a, layer_range: [0, 2]}\nmerge_method: passthrough\n",
            "per-slice layer ranges",
        )]);
        for (yaml, reason) in cases {
            let s = MergeSettings::from_recipe(yaml, &file, &family).unwrap();
            let read_only = s.read_only.as_ref().unwrap_or_else(|| panic!("{yaml}"));
            assert!(read_only.reason.contains(reason), "{}", read_only.reason);
            // The recipe is what previews, exports and saves run, as it was written.
            assert_eq!(s.to_yaml(&family), yaml);
            assert_eq!(s.problem(), None);
        }
        // The base listed among the models (mergekit's slerp examples) stays the base.
        let listed = "merge_method: slerp\nbase_model: base\nmodels:\n  - model: base\n  - model: b\nparameters:\n  t: 0.3\n";
        let s = MergeSettings::from_recipe(listed, &file, &family).unwrap();
        assert_eq!((s.read_only, s.included), (None, vec![false, true]));
        // A parse error still says why.
        assert!(MergeSettings::from_recipe("merge_method: [", &file, &family).is_err());
    }

    #[test]
    fn a_read_only_recipe_from_another_folder_names_its_models_absolutely() {
        let (dir, family) = family_on_disk();
        std::fs::create_dir(dir.path().join("recipes")).unwrap();
        let file = dir.path().join("recipes/r.yml");
        let yaml = "slices:\n  - sources:\n      - {model: ../a, layer_range: [0, 2]}\n  - sources:\n      - {model: ../b, layer_range: [1, 2]}\nmerge_method: passthrough\n";
        let s = MergeSettings::from_recipe(yaml, &file, &family).unwrap();
        let text = s.to_yaml(&family);
        let recipe = Recipe::from_yaml(&text, &family.recipe_file()).unwrap();
        let sources: Vec<PathBuf> = recipe
            .slices
            .iter()
            .map(|slice| PathBuf::from(&slice.sources[0].model))
            .collect();
        // Where the previews and exports plan it (beside the base), the same models.
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap();
        assert_eq!(
            sources.iter().map(|p| canon(p)).collect::<Vec<_>>(),
            vec![canon(&family.models[0]), canon(&family.models[1])]
        );
        assert_eq!(recipe.slices[1].sources[0].layer_range, [1, 2]);
        // Beside the base, the text is kept as written.
        let beside = MergeSettings::from_recipe(yaml, &family.recipe_file(), &family).unwrap();
        assert_eq!(beside.to_yaml(&family), yaml);
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
