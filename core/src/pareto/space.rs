//! The decision space of a Pareto search (PARETO.md §4): per-model coefficients λ of a method
//! whose per-model `weight` drives the merge, optionally one per model and layer group, every
//! point written as a mergekit recipe.

use serde::{Deserialize, Serialize};

use super::ParetoError;
use crate::merge::methods::{self, Lookup};
use crate::merge::params::Scope;
use crate::merge::recipe::{ParamValue, Recipe, Scalar};

/// Default coefficient range (PARETO.md §4).
pub const LAMBDA_RANGE: (f64, f64) = (0.0, 1.2);
/// At most this many layer groups: each adds a coefficient per model.
pub const MAX_GROUPS: usize = 16;

/// Where the coefficients live and how a point becomes a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionSpace {
    /// The recipe every point starts from: its method and every parameter but the models'
    /// weights are held fixed.
    pub template: Recipe,
    /// Indices into `template.models` of the models that take a coefficient (the base, when
    /// listed among the models, takes none).
    pub entries: Vec<usize>,
    /// One name per coefficient model (the folder's name).
    pub labels: Vec<String>,
    /// K: the coefficients of each model are the K control points of a mergekit gradient over
    /// depth (K = 1: one weight per model).
    pub groups: usize,
    pub lower: f64,
    pub upper: f64,
}

impl DecisionSpace {
    /// The space of `template`'s per-model weights with `groups` control points each, λ in
    /// [`lower`, `upper`].
    pub fn new(
        template: Recipe,
        groups: usize,
        (lower, upper): (f64, f64),
    ) -> Result<Self, ParetoError> {
        let Lookup::Found(method) = methods::lookup(&template.merge_method) else {
            return Err(ParetoError::Settings(format!(
                "`{}` is not a merge method mergescope runs",
                template.merge_method
            )));
        };
        let weighted = method
            .spec()
            .params
            .iter()
            .any(|p| p.name == "weight" && p.scope != Scope::Shared);
        if !weighted {
            return Err(ParetoError::Settings(format!(
                "{} has no per-model `weight` to search over; use task_arithmetic, ties, dare_ties, della, breadcrumbs or linear",
                template.merge_method
            )));
        }
        if !(1..=MAX_GROUPS).contains(&groups) {
            return Err(ParetoError::Settings(format!(
                "layer groups must be 1 to {MAX_GROUPS}; got {groups}"
            )));
        }
        if !(lower.is_finite() && upper.is_finite() && lower < upper)
            || lower < -10.0
            || upper > 10.0
        {
            return Err(ParetoError::Settings(format!(
                "the coefficient range must satisfy -10 ≤ min < max ≤ 10; got [{lower}, {upper}]"
            )));
        }
        let base = template.base_model.as_deref();
        let entries: Vec<usize> = template
            .models
            .iter()
            .enumerate()
            .filter(|(_, e)| Some(e.model.as_str()) != base)
            .map(|(i, _)| i)
            .collect();
        if entries.is_empty() {
            return Err(ParetoError::Settings(
                "the recipe has no models besides the base to weigh".to_owned(),
            ));
        }
        let labels = entries
            .iter()
            .map(|&i| label_of(&template.models[i].model))
            .collect();
        Ok(Self {
            template,
            entries,
            labels,
            groups,
            lower,
            upper,
        })
    }

    pub fn models(&self) -> usize {
        self.entries.len()
    }

    /// d = models × groups.
    pub fn dimension(&self) -> usize {
        self.models() * self.groups
    }

    pub fn bounds(&self) -> (Vec<f64>, Vec<f64>) {
        let d = self.dimension();
        (vec![self.lower; d], vec![self.upper; d])
    }

    /// Clamps `x` into the box.
    pub fn clamp(&self, x: &mut [f64]) {
        for v in x {
            *v = v.clamp(self.lower, self.upper);
        }
    }

    /// The coefficient's name: the model's label, with its layer group when there are several.
    pub fn coefficient_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.dimension());
        for label in &self.labels {
            for k in 0..self.groups {
                names.push(if self.groups == 1 {
                    label.clone()
                } else {
                    format!("{label}[{k}]")
                });
            }
        }
        names
    }

    /// `x` as one row of coefficients per model (K each).
    pub fn per_model(&self, x: &[f64]) -> Vec<Vec<f64>> {
        x.chunks(self.groups).map(<[f64]>::to_vec).collect()
    }

    /// The recipe of point `x`: the template with each model's weight set to its coefficient,
    /// or to a gradient of its K control points.
    pub fn recipe(&self, x: &[f64]) -> Recipe {
        let mut recipe = self.template.clone();
        for (&entry, values) in self.entries.iter().zip(x.chunks(self.groups)) {
            // Four decimals: recipes stay readable and a point's merge is its recipe's merge.
            let rounded = |v: f64| Scalar::Number((v * 1e4).round() / 1e4);
            let weight = match values {
                [v] => ParamValue::Scalar(rounded(*v)),
                many => ParamValue::List(many.iter().map(|&v| rounded(v)).collect()),
            };
            recipe.models[entry]
                .parameters
                .insert("weight".to_owned(), weight);
        }
        recipe
    }

    /// The weight model i's gradient gives a tensor at relative depth `t` (the engine's
    /// piecewise-linear interpolation between evenly spread control points), as the linear
    /// combination of the K control points: one factor per point.
    pub fn depth_basis(&self, t: f64) -> Vec<f64> {
        let k = self.groups;
        let mut basis = vec![0.0; k];
        if k == 1 {
            basis[0] = 1.0;
            return basis;
        }
        let position = t.clamp(0.0, 1.0) * (k - 1) as f64;
        let low = (position.floor() as usize).min(k - 2);
        let frac = position - low as f64;
        basis[low] = 1.0 - frac;
        basis[low + 1] = frac;
        basis
    }
}

/// `recipe` with its base and model paths resolved as a merge resolves them (from `cwd`, then
/// from the recipe's folder) and made absolute, so its points' recipes and a saved map work
/// from any folder.
pub fn with_absolute_paths(
    recipe: &Recipe,
    file: &std::path::Path,
    cwd: &std::path::Path,
) -> Result<Recipe, ParetoError> {
    use crate::merge::plan::resolve_model_path;
    let absolute = |model: &str, key: &str| -> Result<String, ParetoError> {
        let path = resolve_model_path(model, key, cwd, file)
            .map_err(|e| ParetoError::Settings(crate::one_line(&e.to_string())))?;
        Ok(std::fs::canonicalize(&path)
            .unwrap_or(path)
            .display()
            .to_string())
    };
    let mut resolved = recipe.clone();
    if let Some(base) = &recipe.base_model {
        resolved.base_model = Some(absolute(base, "base_model")?);
    }
    for (i, entry) in resolved.models.iter_mut().enumerate() {
        entry.model = absolute(&entry.model, &format!("models[{i}].model"))?;
    }
    Ok(resolved)
}

/// A model path's last component, as the workbench labels models.
pub fn label_of(model: &str) -> String {
    std::path::Path::new(model.trim_end_matches('/'))
        .file_name()
        .map_or_else(|| model.to_owned(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Recipe {
        Recipe::from_yaml(
            "merge_method: task_arithmetic\nbase_model: ../base\nmodels:\n  - model: ../base\n  - model: ../a\n    parameters: {weight: 0.3}\n  - model: ../b\n    parameters: {weight: 0.3}\n",
            std::path::Path::new("r.yml"),
        )
        .unwrap()
    }

    #[test]
    fn points_become_recipes_with_scalar_or_gradient_weights() {
        let space = DecisionSpace::new(template(), 1, LAMBDA_RANGE).unwrap();
        assert_eq!(space.labels, ["a", "b"]);
        let recipe = space.recipe(&[0.25, 1.0]);
        let yaml = recipe.to_yaml();
        assert!(
            yaml.contains("0.25") && yaml.contains("weight: 1"),
            "{yaml}"
        );
        assert_eq!(recipe.models[0].parameters.get("weight"), None);

        let grouped = DecisionSpace::new(template(), 3, LAMBDA_RANGE).unwrap();
        assert_eq!(grouped.dimension(), 6);
        assert_eq!(grouped.coefficient_names()[4], "b[1]");
        let recipe = grouped.recipe(&[0.0, 0.5, 1.0, 0.2, 0.2, 0.2]);
        let weight = recipe.models[1].parameters["weight"].clone();
        // The gradient evaluates as the depth basis says.
        let at = |t: f64| match weight.evaluate("x", t) {
            Some(Scalar::Number(v)) => v,
            other => panic!("{other:?}"),
        };
        for t in [0.0, 0.3, 0.5, 0.8, 1.0] {
            let b = grouped.depth_basis(t);
            let expected: f64 = b.iter().zip([0.0, 0.5, 1.0]).map(|(b, v)| b * v).sum();
            assert!((at(t) - expected).abs() < 1e-12, "t = {t}");
        }
    }

    #[test]
    fn methods_without_weights_and_bad_ranges_are_refused() {
        let mut slerp = template();
        slerp.merge_method = "slerp".to_owned();
        let e = DecisionSpace::new(slerp, 1, LAMBDA_RANGE).unwrap_err();
        assert!(e.to_string().contains("no per-model `weight`"), "{e}");
        assert!(DecisionSpace::new(template(), 0, LAMBDA_RANGE).is_err());
        assert!(DecisionSpace::new(template(), 1, (1.0, 0.0)).is_err());
        assert!(DecisionSpace::new(template(), 1, (0.0, f64::NAN)).is_err());
    }
}
