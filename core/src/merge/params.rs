//! Method parameters: what each method declares ([`ParamSpec`]) and their values resolved for
//! one tensor ([`TensorParams`]), following the scopes and precedence of ALGORITHMS.md §1.4.

use std::path::Path;

use super::recipe::{ModelEntry, Parameters, Recipe, RecipeError, Scalar};
use crate::dtype::FloatType;

/// Who a parameter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One value per output tensor (`normalize`, `lambda`, `t`).
    Shared,
    /// One value per input, the base included when the method treats it as an input.
    PerInput,
    /// One value per non-base input (`weight` of the task-arithmetic family).
    PerNonBase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Float,
    Bool,
    Int,
}

/// A resolved parameter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Float(f64),
    Bool(bool),
    Int(i64),
}

/// One parameter a method reads.
#[derive(Clone, Copy, Debug)]
pub struct ParamSpec {
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    /// `None`: required.
    pub default: Option<Value>,
}

impl ParamSpec {
    pub const fn shared(name: &'static str, kind: Kind, default: Option<Value>) -> Self {
        Self {
            name,
            scope: Scope::Shared,
            kind,
            default,
        }
    }
    pub const fn per_input(name: &'static str, kind: Kind, default: Option<Value>) -> Self {
        Self {
            name,
            scope: Scope::PerInput,
            kind,
            default,
        }
    }
    pub const fn per_non_base(name: &'static str, kind: Kind, default: Option<Value>) -> Self {
        Self {
            name,
            scope: Scope::PerNonBase,
            kind,
            default,
        }
    }
}

/// Parameter values for one tensor: shared ones, and one set per non-base input (in the order
/// of the method's inputs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TensorParams {
    shared: Vec<(&'static str, Value)>,
    models: Vec<Vec<(&'static str, Value)>>,
    /// The type mergekit computes this tensor in (ALGORITHMS.md §1.2), for the methods whose
    /// discrete choices follow its rounding (arcee_fusion); `None` outside a planned merge.
    compute: Option<FloatType>,
}

impl TensorParams {
    /// Parameters given directly (the GUI's sliders, tests) rather than resolved from a recipe.
    pub fn from_values(
        shared: Vec<(&'static str, Value)>,
        models: Vec<Vec<(&'static str, Value)>>,
    ) -> Self {
        Self {
            shared,
            models,
            compute: None,
        }
    }

    /// These parameters for a tensor computed in `ty`.
    pub fn computed_in(self, ty: FloatType) -> Self {
        Self {
            compute: Some(ty),
            ..self
        }
    }

    /// The type the tensor is computed in; F32 when none was planned (previews, tests).
    pub fn compute_type(&self) -> FloatType {
        self.compute.unwrap_or(FloatType::F32)
    }

    fn lookup(list: &[(&'static str, Value)], name: &str) -> Value {
        list.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| {
                panic!("parameter `{name}` read but not declared in the method's spec")
            })
    }

    pub fn shared(&self, name: &str) -> Value {
        Self::lookup(&self.shared, name)
    }

    pub fn model(&self, model: usize, name: &str) -> Value {
        Self::lookup(&self.models[model], name)
    }

    pub fn shared_f64(&self, name: &str) -> f64 {
        self.shared(name).as_f64()
    }

    pub fn shared_bool(&self, name: &str) -> bool {
        self.shared(name).as_bool()
    }

    pub fn model_f64(&self, model: usize, name: &str) -> f64 {
        self.model(model, name).as_f64()
    }

    pub fn model_count(&self) -> usize {
        self.models.len()
    }
}

impl Value {
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Float(x) => x,
            Self::Int(i) => i as f64,
            Self::Bool(b) => panic!("boolean {b} read as a number; the spec declares the kind"),
        }
    }

    pub fn as_bool(self) -> bool {
        match self {
            Self::Bool(b) => b,
            other => panic!("{other:?} read as a boolean; the spec declares the kind"),
        }
    }
}

/// The values a numeric parameter may take. Every number a recipe gives is checked against
/// these before a tensor is planned, so a typo (`max_iter: 1e9`, `tol: 0`, `density: 50`)
/// is one line naming the key instead of a merge that runs for hours or divides by zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub min: f64,
    pub max: f64,
    /// Why the range is what it is, appended to the error (starts with "; " when set).
    pub why: &'static str,
}

impl Bounds {
    const fn new(min: f64, max: f64, why: &'static str) -> Self {
        Self { min, max, why }
    }

    pub fn contains(self, x: f64) -> bool {
        (self.min..=self.max).contains(&x)
    }

    /// The range of parameter `name` of `method`; `None` for switches.
    ///
    /// The ranges are wide enough for every recipe seen in the wild (mergekit's defaults and
    /// examples, the papers' sweeps) and narrow enough that nothing inside them overflows,
    /// divides by zero or iterates without end.
    pub fn of(method: &str, name: &str) -> Option<Self> {
        const SCALE: f64 = 1.0e3;
        Some(match (method, name) {
            ("tsv_m", "alpha") | (_, "scaling_factor") => Self::new(
                -SCALE,
                SCALE,
                "; scales beyond a thousand only amplify rounding noise (the authors tune 0.1 to 3)",
            ),
            (_, "common_space_fraction") => {
                Self::new(0.0, 1.0, "; it is a fraction of each tensor's rank")
            }
            (_, "weight" | "lambda" | "scale") => Self::new(
                -SCALE,
                SCALE,
                "; weights and scales beyond a thousand only amplify rounding noise",
            ),
            ("ram" | "ramplus_tl", "epsilon") => Self::new(
                0.0,
                SCALE,
                "; it is the magnitude below which a delta counts as unmoved, so it is not negative",
            ),
            ("ramplus_tl", "r") => Self::new(
                -SCALE,
                SCALE,
                "; it scales the unique deltas' boost (mergekit's default is 0.1)",
            ),
            ("ramplus_tl", "alpha") => Self::new(
                0.0,
                SCALE,
                "; it caps the shared-to-unique ratio, so it is not negative (mergekit's default is 0.2)",
            ),
            (_, "density" | "gamma" | "epsilon" | "select_topk") => {
                Self::new(0.0, 1.0, "; it is a fraction of the task vector's entries")
            }
            ("slerp", "t") => Self::new(
                -1.0,
                2.0,
                "; 0 is the base, 1 the other model, and beyond [0, 1] it extrapolates",
            ),
            ("nearswap", "t") => Self::new(
                0.0,
                SCALE,
                "; it is a distance between weights, so it is not negative",
            ),
            ("karcher", "max_iter") => Self::new(
                1.0,
                100.0,
                "; each iteration is a pass over every input tensor (mergekit's default is 10)",
            ),
            ("karcher", "tol") => Self::new(
                1.0e-12,
                1.0,
                "; a tolerance of 0 is never met (mergekit's default is 1e-5)",
            ),
            (_, "eps") => Self::new(
                1.0e-12,
                1.0,
                "; it keeps divisions by a zero norm finite (mergekit's default is 1e-8)",
            ),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Bounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |x: f64| {
            if x != 0.0 && x.abs() < 1.0e-3 {
                format!("{x:e}")
            } else {
                format!("{x}")
            }
        };
        write!(f, "[{}, {}]", show(self.min), show(self.max))
    }
}

/// Where a method input's own `parameters:` come from: its `models:` entry or slice source, or
/// nothing when it is a `base_model` appended as an extra input.
#[derive(Clone, Copy, Debug)]
pub struct InputSource<'r> {
    pub own: Option<(ParamsAt, &'r Parameters)>,
}

/// Where in the recipe a set of parameters is written, to name the key in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamsAt {
    /// `models[i].parameters`
    Model(usize),
    /// `slices[slice].sources[source].parameters`
    SliceSource { slice: usize, source: usize },
    /// `slices[slice].parameters`
    Slice(usize),
}

impl std::fmt::Display for ParamsAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Model(i) => write!(f, "models[{i}].parameters"),
            Self::SliceSource { slice, source } => {
                write!(f, "slices[{slice}].sources[{source}].parameters")
            }
            Self::Slice(s) => write!(f, "slices[{s}].parameters"),
        }
    }
}

impl<'r> InputSource<'r> {
    /// The input listed as `models[i]`.
    pub fn entry(i: usize, entry: &'r ModelEntry) -> Self {
        Self {
            own: Some((ParamsAt::Model(i), &entry.parameters)),
        }
    }
}

/// Resolves parameters for tensors, reporting problems against the recipe file.
pub struct Resolver<'r> {
    pub recipe: &'r Recipe,
    /// The output slice's `parameters:` (`slices[i]`), consulted after an input's own and
    /// before the recipe's (ALGORITHMS.md §1.4); `None` for a `models:` recipe.
    pub slice: Option<(usize, &'r Parameters)>,
    pub file: &'r Path,
    pub method: &'static str,
    pub specs: &'static [ParamSpec],
}

impl Resolver<'_> {
    /// Resolves every declared parameter for `tensor` at depth `t`. `inputs` are the method's
    /// non-base inputs; per-input parameters of the base are not read by any method yet.
    pub fn resolve(
        &self,
        tensor: &str,
        t: f64,
        inputs: &[InputSource<'_>],
    ) -> Result<TensorParams, RecipeError> {
        let names = vec![tensor; inputs.len()];
        self.resolve_renamed(tensor, &names, t, inputs)
    }

    /// [`resolve`](Self::resolve) for an output tensor read under other names: per-input
    /// filters test each input's own tensor name (`input_names`, parallel to `inputs`), shared
    /// ones the output name (mergekit; they differ when slices move layers).
    pub fn resolve_renamed(
        &self,
        tensor: &str,
        input_names: &[&str],
        t: f64,
        inputs: &[InputSource<'_>],
    ) -> Result<TensorParams, RecipeError> {
        let mut params = TensorParams {
            shared: Vec::new(),
            models: vec![Vec::new(); inputs.len()],
            compute: None,
        };
        for spec in self.specs {
            match spec.scope {
                Scope::Shared => {
                    let v = self.resolve_one(spec, tensor, t, None)?;
                    params.shared.push((spec.name, v));
                }
                Scope::PerInput | Scope::PerNonBase => {
                    for ((slot, input), name) in
                        params.models.iter_mut().zip(inputs).zip(input_names)
                    {
                        let v = self.resolve_one(spec, name, t, input.own)?;
                        slot.push((spec.name, v));
                    }
                }
            }
        }
        Ok(params)
    }

    /// The first scope that sets `spec` for `tensor`: the input's own parameters, the slice's,
    /// the recipe's; then the default.
    fn resolve_one(
        &self,
        spec: &ParamSpec,
        tensor: &str,
        t: f64,
        own: Option<(ParamsAt, &Parameters)>,
    ) -> Result<Value, RecipeError> {
        let slice = self.slice.map(|(i, p)| (ParamsAt::Slice(i), p));
        let scopes = own
            .into_iter()
            .chain(slice)
            .map(|(at, p)| (at.to_string(), p))
            .chain(std::iter::once((
                "parameters".to_owned(),
                &self.recipe.parameters,
            )));
        for (at, parameters) in scopes {
            if let Some(value) = parameters
                .get(spec.name)
                .and_then(|v| v.evaluate(tensor, t))
            {
                return self.check_kind(spec, &format!("{at}.{}", spec.name), &value);
            }
        }
        spec.default.ok_or_else(|| RecipeError::MissingParameter {
            file: self.file.to_path_buf(),
            key: match own {
                Some((at, _)) => format!("{at}.{}", spec.name),
                None => format!("parameters.{}", spec.name),
            },
            method: self.method.to_owned(),
            tensor: tensor.to_owned(),
        })
    }

    fn check_kind(
        &self,
        spec: &ParamSpec,
        key: &str,
        scalar: &Scalar,
    ) -> Result<Value, RecipeError> {
        let bad = |expected: &str| RecipeError::BadValue {
            file: self.file.to_path_buf(),
            key: key.to_owned(),
            message: format!("expected {expected}, found {}", scalar.describe()),
        };
        let value = match (spec.kind, scalar) {
            (Kind::Float, Scalar::Number(x)) if x.is_finite() => Value::Float(*x),
            (Kind::Float, _) => return Err(bad("a finite number")),
            (Kind::Int, Scalar::Number(x)) if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                Value::Int(*x as i64)
            }
            (Kind::Int, _) => return Err(bad("a whole number")),
            (Kind::Bool, Scalar::Bool(b)) => Value::Bool(*b),
            (Kind::Bool, _) => return Err(bad("true or false")),
        };
        match (value, Bounds::of(self.method, spec.name)) {
            (Value::Float(_) | Value::Int(_), Some(bounds)) if !bounds.contains(value.as_f64()) => {
                Err(RecipeError::BadValue {
                    file: self.file.to_path_buf(),
                    key: key.to_owned(),
                    message: format!(
                        "{} is outside the allowed range {bounds}{}",
                        scalar.describe(),
                        bounds.why
                    ),
                })
            }
            _ => Ok(value),
        }
    }

    /// Parameter names the recipe sets that this method never reads (mergekit ignores them
    /// silently; mergescope says so).
    pub fn unused_keys(&self) -> Vec<String> {
        let known = |name: &str| self.specs.iter().any(|s| s.name == name);
        let global = self
            .recipe
            .parameters
            .keys()
            .filter(|k| !known(k))
            .map(|k| format!("parameters.{k}"));
        let per_model = self.recipe.models.iter().enumerate().flat_map(|(i, m)| {
            m.parameters
                .keys()
                .filter(|k| !known(k))
                .map(move |k| format!("models[{i}].parameters.{k}"))
        });
        let mut unused: Vec<String> = global.chain(per_model).collect();
        for (s, slice) in self.recipe.slices.iter().enumerate() {
            let own = slice.sources.iter().enumerate().map(|(j, src)| {
                (
                    ParamsAt::SliceSource {
                        slice: s,
                        source: j,
                    },
                    &src.parameters,
                )
            });
            for (at, parameters) in
                std::iter::once((ParamsAt::Slice(s), &slice.parameters)).chain(own)
            {
                unused.extend(
                    parameters
                        .keys()
                        .filter(|k| !known(k))
                        .map(|k| format!("{at}.{k}")),
                );
            }
        }
        unused
    }
}
