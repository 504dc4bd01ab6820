//! What the user has open and set: the family, the merge settings, and the recipe they make.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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

/// The family that is open.
#[derive(Clone, Debug)]
pub struct OpenFamily {
    pub base: PathBuf,
    pub models: Vec<PathBuf>,
    pub members: Vec<MemberInfo>,
    /// Alignment problems, one readable line each.
    pub issues: Vec<String>,
    /// The built-in demo family: its accuracy can be previewed.
    pub is_demo: bool,
}

/// Merge methods the Merge panel offers (each mergekit method with per-model weights).
pub const METHODS: [&str; 6] = [
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "linear",
    "della",
];

/// Does `method` take a per-model density?
pub fn has_density(method: &str) -> bool {
    matches!(
        method,
        "ties" | "dare_ties" | "dare_linear" | "della" | "breadcrumbs"
    )
}

/// The Merge panel's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeSettings {
    pub method: String,
    /// Per model.
    pub weights: Vec<f64>,
    pub densities: Vec<f64>,
    /// Per model, a weight for the first and the last layer (a mergekit gradient), when
    /// `per_layer` is on.
    pub layer_weights: Vec<[f64; 2]>,
    pub per_layer: bool,
    pub lambda: f64,
    pub seed: u64,
    /// `out_dtype` of the recipe: float32, bfloat16 or float16.
    pub out_dtype: String,
}

impl MergeSettings {
    pub fn for_models(n: usize) -> Self {
        Self {
            method: "task_arithmetic".to_owned(),
            weights: vec![0.3; n],
            densities: vec![0.5; n],
            layer_weights: vec![[0.3, 0.3]; n],
            per_layer: false,
            lambda: 1.0,
            seed: 0,
            out_dtype: "float32".to_owned(),
        }
    }

    /// The mergekit YAML of these settings over `family`.
    pub fn to_yaml(&self, family: &OpenFamily) -> String {
        let mut y = format!("merge_method: {}\n", self.method);
        let with_base = self.method != "linear";
        if with_base {
            let _ = writeln!(y, "base_model: {}", quote(&family.base));
        }
        y.push_str("models:\n");
        for (i, path) in family.models.iter().enumerate() {
            let _ = writeln!(y, "  - model: {}", quote(path));
            let weight = if self.per_layer {
                let [a, b] = self.layer_weights[i];
                format!("[{a}, {b}]")
            } else {
                format!("{}", self.weights[i])
            };
            let _ = write!(y, "    parameters: {{weight: {weight}");
            if has_density(&self.method) {
                let _ = write!(y, ", density: {}", self.densities[i]);
            }
            y.push_str("}\n");
        }
        if with_base && (self.lambda - 1.0).abs() > f64::EPSILON {
            let _ = writeln!(y, "parameters: {{lambda: {}}}", self.lambda);
        }
        y.push_str("dtype: float32\n");
        if self.out_dtype != "float32" {
            let _ = writeln!(y, "out_dtype: {}", self.out_dtype);
        }
        y
    }
}

impl MergeSettings {
    /// The settings a mergekit recipe describes, for the open `family`: the recipe must use a
    /// method the panel edits, name the family's models (paths relative to the recipe's
    /// folder are resolved from there), and give scalar weights and densities, or two-point
    /// per-layer weights.
    pub fn from_recipe(text: &str, file: &Path, family: &OpenFamily) -> Result<Self, String> {
        use mergescope_core::merge::recipe::{ParamValue, Recipe, Scalar};

        let recipe = Recipe::from_yaml(text, file).map_err(|e| e.to_string())?;
        if !METHODS.contains(&recipe.merge_method.as_str()) {
            return Err(format!(
                "the workbench edits {}; `{}` recipes run with `mergescope merge`",
                METHODS.join(", "),
                recipe.merge_method
            ));
        }
        let folder = file.parent().unwrap_or(Path::new("."));
        let same = |a: &Path, b: &Path| {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            canon(a) == canon(b)
        };
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
                .find(|m| same(&folder.join(&m.model), path) || same(Path::new(&m.model), path))
                .ok_or_else(|| {
                    format!(
                        "the recipe does not name {}, which is open; open the recipe's models first",
                        path.display()
                    )
                })?;
            match entry.parameters.get("weight") {
                Some(ParamValue::List(points)) => match points.as_slice() {
                    [Scalar::Number(a), Scalar::Number(b)] => {
                        settings.per_layer = true;
                        settings.layer_weights[i] = [*a, *b];
                        settings.weights[i] = (a + b) / 2.0;
                    }
                    _ => {
                        return Err(format!(
                            "the weight gradient of {} has {} points; the workbench edits two",
                            entry.model,
                            points.len()
                        ));
                    }
                },
                Some(v) => {
                    settings.weights[i] = number(v, "weight", &entry.model)?;
                    settings.layer_weights[i] = [settings.weights[i]; 2];
                }
                None => {}
            }
            if let Some(v) = entry.parameters.get("density") {
                settings.densities[i] = number(v, "density", &entry.model)?;
            }
        }
        if let Some(v) = recipe.parameters.get("lambda") {
            settings.lambda = number(v, "lambda", "the recipe")?;
        }
        if let Some(dtype) = recipe.out_dtype {
            settings.out_dtype = dtype;
        }
        Ok(settings)
    }
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
        let family = family();
        let mut s = MergeSettings::for_models(2);
        s.method = "ties".to_owned();
        s.weights = vec![0.7, 0.1];
        s.densities = vec![0.3, 0.9];
        s.lambda = 0.8;
        s.out_dtype = "bfloat16".to_owned();
        let yaml = s.to_yaml(&family);
        let back = MergeSettings::from_recipe(&yaml, Path::new("/tmp/r.yml"), &family).unwrap();
        assert_eq!(back.weights, s.weights);
        assert_eq!(back.densities, s.densities);
        assert_eq!((back.lambda, back.out_dtype.as_str()), (0.8, "bfloat16"));
        s.per_layer = true;
        s.layer_weights = vec![[0.1, 0.9], [0.4, 0.2]];
        let back =
            MergeSettings::from_recipe(&s.to_yaml(&family), Path::new("/tmp/r.yml"), &family)
                .unwrap();
        assert!(back.per_layer);
        assert_eq!(back.layer_weights, s.layer_weights);
        let karcher = "merge_method: karcher\nmodels:\n  - model: /m/a\n";
        assert!(
            MergeSettings::from_recipe(karcher, Path::new("/tmp/r.yml"), &family)
                .unwrap_err()
                .contains("mergescope merge")
        );
    }

    fn family() -> OpenFamily {
        OpenFamily {
            base: PathBuf::from("/m/base"),
            models: vec![PathBuf::from("/m/a"), PathBuf::from("/m/b")],
            members: Vec::new(),
            issues: Vec::new(),
            is_demo: false,
        }
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
        s.layer_weights[1] = [0.1, 0.9];
        assert!(s.to_yaml(&family()).contains("weight: [0.1, 0.9]"));
    }
}
