//! XY parameter sweeps: one to three parameters of a recipe (a model's weight, density, `t`,
//! a per-layer curve's control point, `lambda`, …), each over a range or a list of values;
//! every cell of their grid is the recipe with those values set, merged and scored.
//!
//! - [`axis`]: the parameter paths (`models.1.weight`, `models.0.weight[2]`, `lambda`) and
//!   their values (`0:1:11`, `0.1,0.5,0.9`);
//! - [`edit`]: the values set in the recipe's YAML tree, everything else kept;
//! - [`metric`]: the number a table or chart shows, and the best cell on it;
//! - [`run`]: the cells merged in memory (or exported, for a command) and scored, each
//!   reported as it is done.

pub mod axis;
pub mod edit;
pub mod metric;
pub mod run;

use std::path::{Path, PathBuf};

pub use axis::{Axis, MAX_STEPS, Owner, ParamPath};
pub use run::{Cell, SweepObjective, run, score_recipe};

use crate::merge::MethodSpec;
use crate::merge::methods::{self, Lookup};
use crate::merge::params::{Bounds, Kind, Scope};
use crate::merge::plan::PlanError;
use crate::merge::recipe::{Recipe, RecipeError};

/// Most parameters one sweep varies.
pub const MAX_AXES: usize = 3;
/// Most cells one sweep computes (a 101 × 101 grid).
pub const MAX_CELLS: usize = MAX_STEPS * MAX_STEPS;

/// Why a sweep cannot be set up or run. Every variant names the parameter (as given and as
/// the recipe key) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("`{path}` is not a parameter path: {message}")]
    Path { path: String, message: String },
    #[error("`{spec}`: {message}")]
    Values { spec: String, message: String },
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("{file}: `{path}` ({key}): {message}")]
    Param {
        file: PathBuf,
        path: String,
        key: String,
        message: String,
    },
    #[error(
        "{file}: `{path}` names models[{index}], but the recipe lists {count} model(s); use models.0 to models.{last}",
        last = count - 1
    )]
    NoSuchModel {
        file: PathBuf,
        path: String,
        index: usize,
        count: usize,
    },
    #[error("`{path}` is swept twice; give each parameter once")]
    Repeated { path: String },
    #[error("a sweep varies 1 to {MAX_AXES} parameters; {given} were given")]
    AxisCount { given: usize },
    #[error("{cells} cells ({shape}); a sweep computes at most {MAX_CELLS}: use fewer steps")]
    TooManyCells { cells: usize, shape: String },
    #[error("{file}: cannot edit the recipe's YAML: {message}")]
    Yaml { file: PathBuf, message: String },
    #[error("cell {cell}: {source}")]
    Plan {
        cell: String,
        #[source]
        source: Box<PlanError>,
    },
    #[error("cell {cell}: {message}")]
    Evaluation { cell: String, message: String },
    #[error("the sweep was cancelled")]
    Cancelled,
}

/// A checked sweep: the recipe it starts from and its axes. Cells are numbered row-major (the
/// first axis varies slowest).
#[derive(Clone, Debug)]
pub struct Sweep {
    text: String,
    file: PathBuf,
    recipe: Recipe,
    axes: Vec<Axis>,
}

impl Sweep {
    /// Checks `axes` against the recipe `text` (read from, or taken to live at, `file`): each
    /// path names a model the recipe has and a number its method reads at that scope, each
    /// value is within the parameter's bounds, and the grid is not too large.
    pub fn new(text: &str, file: &Path, axes: Vec<Axis>) -> Result<Self, SweepError> {
        let recipe = Recipe::from_yaml(text, file)?;
        if !(1..=MAX_AXES).contains(&axes.len()) {
            return Err(SweepError::AxisCount { given: axes.len() });
        }
        for (i, axis) in axes.iter().enumerate() {
            if axes[..i].iter().any(|a| a.path == axis.path) {
                return Err(SweepError::Repeated {
                    path: axis.path.to_string(),
                });
            }
        }
        let cells = axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
            .unwrap_or(usize::MAX);
        if cells > MAX_CELLS {
            return Err(SweepError::TooManyCells {
                cells,
                shape: axes
                    .iter()
                    .map(|a| a.values.len().to_string())
                    .collect::<Vec<_>>()
                    .join(" × "),
            });
        }
        let sweep = Self {
            text: text.to_owned(),
            file: file.to_path_buf(),
            recipe,
            axes,
        };
        let spec = sweep.method_spec()?;
        for axis in &sweep.axes {
            sweep.check_axis(spec, axis)?;
        }
        // Whatever stands in the way of setting a value (a gradient where a number was asked,
        // a point past its end) shows now, not at the first cell.
        let first: Vec<f64> = sweep.axes.iter().map(|a| a.values[0]).collect();
        Recipe::from_yaml(&sweep.recipe_at(&first)?, file)?;
        Ok(sweep)
    }

    pub fn axes(&self) -> &[Axis] {
        &self.axes
    }

    /// The recipe the sweep starts from, as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Where the recipe lives (relative model paths resolve from there).
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn recipe(&self) -> &Recipe {
        &self.recipe
    }

    /// Values per axis.
    pub fn shape(&self) -> Vec<usize> {
        self.axes.iter().map(|a| a.values.len()).collect()
    }

    pub fn cell_count(&self) -> usize {
        self.shape().iter().product()
    }

    /// The per-axis indices of cell `n` (row-major: the last axis varies fastest).
    pub fn cell_index(&self, n: usize) -> Vec<usize> {
        let mut rest = n;
        let mut index: Vec<usize> = self
            .axes
            .iter()
            .rev()
            .map(|a| {
                let i = rest % a.values.len();
                rest /= a.values.len();
                i
            })
            .collect();
        index.reverse();
        index
    }

    /// The values of the cell at `index`.
    pub fn values_at(&self, index: &[usize]) -> Vec<f64> {
        self.axes
            .iter()
            .zip(index)
            .map(|(a, &i)| a.values[i])
            .collect()
    }

    /// The recipe text of the cell whose axes take `values`.
    pub fn recipe_at(&self, values: &[f64]) -> Result<String, SweepError> {
        let settings: Vec<(&ParamPath, f64)> = self
            .axes
            .iter()
            .map(|a| &a.path)
            .zip(values.iter().copied())
            .collect();
        edit::set_values(&self.text, &self.file, &settings)
    }

    /// `models.1.weight = 0.3, lambda = 1`: a cell in words.
    pub fn describe(&self, values: &[f64]) -> String {
        self.axes
            .iter()
            .zip(values)
            .map(|(a, v)| format!("{} = {v}", a.path))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn method_spec(&self) -> Result<&'static MethodSpec, SweepError> {
        match methods::lookup(&self.recipe.merge_method) {
            Lookup::Found(method) => Ok(method.spec()),
            Lookup::Unknown => Err(RecipeError::UnknownMethod {
                file: self.file.clone(),
                method: self.recipe.merge_method.clone(),
                known: methods::MERGEKIT_METHODS.join(", "),
            }
            .into()),
        }
    }

    fn check_axis(&self, spec: &MethodSpec, axis: &Axis) -> Result<(), SweepError> {
        let path = &axis.path;
        let refuse = |message: String| SweepError::Param {
            file: self.file.clone(),
            path: path.to_string(),
            key: path.recipe_key(),
            message,
        };
        let method = spec.name;
        let Some(param) = spec.params.iter().find(|p| p.name == path.name) else {
            let reads: Vec<&str> = spec
                .params
                .iter()
                .filter(|p| p.kind != Kind::Bool)
                .map(|p| p.name)
                .collect();
            return Err(refuse(if reads.is_empty() {
                format!("{method} reads no numbers a sweep could vary")
            } else {
                format!(
                    "{method} does not read `{}`; it reads {}",
                    path.name,
                    reads.join(", ")
                )
            }));
        };
        if param.kind == Kind::Bool {
            return Err(refuse(format!(
                "`{}` is a switch (true or false); a sweep varies numbers",
                param.name
            )));
        }
        match path.owner {
            Owner::Model(index) => {
                let count = self.recipe.models.len();
                if index >= count {
                    return Err(SweepError::NoSuchModel {
                        file: self.file.clone(),
                        path: path.to_string(),
                        index,
                        count,
                    });
                }
                if param.scope == Scope::Shared {
                    return Err(refuse(format!(
                        "{method} reads `{0}` once for the whole merge, not per model; sweep {0} (parameters.{0})",
                        param.name
                    )));
                }
                if self.is_base_entry(spec, index) {
                    return Err(refuse(format!(
                        "models[{index}] is the base model, and {method} reads no parameters of it; sweep another model's"
                    )));
                }
            }
            Owner::Global => {
                let inputs: Vec<_> = (0..self.recipe.models.len())
                    .filter(|&i| !self.is_base_entry(spec, i))
                    .collect();
                let shadowed = param.scope != Scope::Shared
                    && !inputs.is_empty()
                    && inputs
                        .iter()
                        .all(|&i| self.recipe.models[i].parameters.contains_key(param.name));
                if shadowed {
                    return Err(refuse(format!(
                        "every model sets its own `{0}`, so the global value is never read; sweep models.N.{0}",
                        param.name
                    )));
                }
            }
        }
        let bounds = Bounds::of(method, param.name);
        for &value in &axis.values {
            if let Some(bounds) = bounds
                && !bounds.contains(value)
            {
                return Err(refuse(format!(
                    "{value} is outside the allowed range {bounds}{}",
                    bounds.why
                )));
            }
            if param.kind == Kind::Int && value.fract() != 0.0 {
                return Err(refuse(format!(
                    "{value} is not a whole number; `{}` counts",
                    param.name
                )));
            }
        }
        Ok(())
    }

    /// Is `models[index]` the base model of a method that takes a separate base (its
    /// parameters are then never read)? Decided on the paths as written; [`run`] checks the
    /// files too.
    fn is_base_entry(&self, spec: &MethodSpec, index: usize) -> bool {
        use crate::merge::BaseUse;
        spec.base != BaseUse::Ignored
            && self.recipe.base_model.as_deref().is_some_and(|base| {
                let tidy = |p: &str| p.trim_end_matches('/').trim_start_matches("./").to_owned();
                tidy(base) == tidy(&self.recipe.models[index].model)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE: &str = "\
merge_method: ties
base_model: ../base
models:
  - model: ../base
  - model: ../a
    parameters: {weight: 1.0, density: 0.5}
  - model: ../b
    parameters: {weight: [0.1, 0.2, 0.3], density: 0.5}
dtype: float32
";

    fn sweep(specs: &[&str]) -> Result<Sweep, SweepError> {
        let axes = specs
            .iter()
            .map(|s| Axis::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Sweep::new(RECIPE, Path::new("r.yml"), axes)
    }

    fn error(specs: &[&str]) -> String {
        sweep(specs).unwrap_err().to_string()
    }

    #[test]
    fn cells_are_numbered_row_major_and_carry_their_values() {
        let s = sweep(&["models.1.weight=0:1:3", "models.2.weight[1]=0.5,0.7"]).unwrap();
        assert_eq!(s.shape(), [3, 2]);
        assert_eq!(s.cell_count(), 6);
        assert_eq!(s.cell_index(0), [0, 0]);
        assert_eq!(s.cell_index(1), [0, 1]);
        assert_eq!(s.cell_index(5), [2, 1]);
        assert_eq!(s.values_at(&[1, 1]), [0.5, 0.7]);
        assert_eq!(
            s.describe(&[0.5, 0.7]),
            "models.1.weight = 0.5, models.2.weight[1] = 0.7"
        );
        let recipe =
            Recipe::from_yaml(&s.recipe_at(&[0.5, 0.7]).unwrap(), Path::new("r.yml")).unwrap();
        let yaml = recipe.to_yaml();
        assert!(yaml.contains("0.5") && yaml.contains("0.7"), "{yaml}");
    }

    #[test]
    fn bad_axes_name_the_parameter_and_what_to_do() {
        let e = error(&["models.9.weight=0:1:3"]);
        assert!(
            e.contains("models[9]") && e.contains("lists 3 model(s)") && e.contains("models.2"),
            "{e}"
        );
        let e = error(&["models.1.foo=0:1:3"]);
        assert!(
            e.contains("ties does not read `foo`") && e.contains("density"),
            "{e}"
        );
        let e = error(&["models.1.lambda=0:1:3"]);
        assert!(
            e.contains("once for the whole merge") && e.contains("parameters.lambda"),
            "{e}"
        );
        let e = error(&["models.0.weight=0:1:3"]);
        assert!(e.contains("base model"), "{e}");
        let e = error(&["weight=0:1:3"]);
        assert!(
            e.contains("never read") && e.contains("models.N.weight"),
            "{e}"
        );
        let e = error(&["normalize=0:1:3"]);
        assert!(e.contains("switch"), "{e}");
        let e = error(&["models.1.density=0:2:3"]);
        assert!(e.contains("outside the allowed range [0, 1]"), "{e}");
        let e = error(&["models.2.weight=0:1:3"]);
        assert!(e.contains("gradient of 3 points"), "{e}");
        let e = error(&["models.1.weight=0:1:3", "models.1.weight=0,1"]);
        assert!(e.contains("twice"), "{e}");
        let e = error(&[
            "models.1.weight=0:1:101",
            "models.1.density=0:1:101",
            "lambda=0,1",
        ]);
        assert!(e.contains("20402 cells"), "{e}");
        let e = Sweep::new(RECIPE, Path::new("r.yml"), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 3 parameters"), "{e}");
    }

    #[test]
    fn global_parameters_and_densities_set_nowhere_else_are_swept() {
        let s = sweep(&["lambda=0.5:1.5:3", "density=0.2,0.4"]);
        // Every model sets its own density here.
        assert!(s.is_err());
        let s = sweep(&["lambda=0.5:1.5:3"]).unwrap();
        let recipe = Recipe::from_yaml(&s.recipe_at(&[0.5]).unwrap(), Path::new("r.yml")).unwrap();
        assert!(recipe.parameters.contains_key("lambda"));
    }
}
