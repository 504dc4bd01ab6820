//! What the user has open and set: the family, the merge settings, and the recipe they make.

use std::fmt::Write as _;
use std::path::PathBuf;

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

/// A path as a YAML scalar.
fn quote(path: &std::path::Path) -> String {
    serde_json::to_string(&path.display().to_string()).expect("strings serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

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
