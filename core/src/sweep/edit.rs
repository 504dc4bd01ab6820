//! Setting swept values in a recipe's YAML: the text is read into a YAML tree, the one value
//! at each path is replaced (or added), and the tree is written back, so every other key,
//! value and the order they were written in stay as they were (comments are not part of the
//! tree and are dropped).

use std::path::Path;

use serde_json::{Map, Number, Value};

use super::SweepError;
use super::axis::{Owner, ParamPath};

/// `text` with each `(path, value)` set; `file` names the recipe in errors.
pub fn set_values(
    text: &str,
    file: &Path,
    settings: &[(&ParamPath, f64)],
) -> Result<String, SweepError> {
    let yaml_error = |message: String| SweepError::Yaml {
        file: file.to_path_buf(),
        message: crate::one_line(&message),
    };
    let mut tree: Value = serde_saphyr::from_str(text).map_err(|e| yaml_error(e.to_string()))?;
    for (path, value) in settings {
        set_value(&mut tree, path, *value).map_err(|message| SweepError::Param {
            file: file.to_path_buf(),
            path: path.to_string(),
            key: path.recipe_key(),
            message,
        })?;
    }
    serde_saphyr::to_string(&tree).map_err(|e| yaml_error(e.to_string()))
}

/// Sets one value in the recipe tree; `Err` says what is in the way.
fn set_value(tree: &mut Value, path: &ParamPath, value: f64) -> Result<(), String> {
    let number = Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(|| format!("{value} is not a finite number"))?;
    let root = tree
        .as_object_mut()
        .ok_or("the recipe is not a YAML mapping of keys")?;
    let owner = match path.owner {
        Owner::Model(i) => {
            let models = root
                .get_mut("models")
                .and_then(Value::as_array_mut)
                .ok_or("the recipe has no `models:` list")?;
            let count = models.len();
            let entry = models
                .get_mut(i)
                .and_then(Value::as_object_mut)
                .ok_or_else(|| format!("the recipe lists {count} model(s)"))?;
            parameters_of(entry)?
        }
        Owner::Global => parameters_of(root)?,
    };
    let slot = owner.get_mut(&path.name);
    let whole = ParamPath {
        point: None,
        ..path.clone()
    };
    match (slot, path.point) {
        (None | Some(Value::Null), None) => {
            owner.insert(path.name.clone(), number);
            Ok(())
        }
        (Some(existing @ Value::Number(_)), None) => {
            *existing = number;
            Ok(())
        }
        (Some(Value::Array(items)), _) if items.iter().any(Value::is_object) => Err(
            "it is a list of {filter, value} entries; a sweep sets plain numbers or the points of a per-layer gradient"
                .to_owned(),
        ),
        (Some(Value::Array(items)), None) => Err(format!(
            "it is a per-layer gradient of {} points; sweep one point, {whole}[0] to {whole}[{}]",
            items.len(),
            items.len().saturating_sub(1)
        )),
        (Some(Value::Array(items)), Some(k)) => {
            let count = items.len();
            match items.get_mut(k) {
                Some(point @ Value::Number(_)) => {
                    *point = number;
                    Ok(())
                }
                Some(other) => Err(format!("point [{k}] is {other}, not a number")),
                None => Err(format!(
                    "the gradient has {count} points, [0] to [{}]",
                    count.saturating_sub(1)
                )),
            }
        }
        (None | Some(Value::Null), Some(_)) => Err(format!(
            "the recipe sets no per-layer gradient there; sweep {whole}, or write a gradient (e.g. [0.3, 0.3, 0.3]) first"
        )),
        (Some(Value::Number(_)), Some(_)) => Err(format!(
            "it is a single number, not a per-layer gradient; sweep {whole}"
        )),
        (Some(other), _) => Err(format!("it is {other}, not a number")),
    }
}

/// The `parameters:` mapping of a model entry or of the recipe, made when absent.
fn parameters_of(owner: &mut Map<String, Value>) -> Result<&mut Map<String, Value>, String> {
    let slot = owner
        .entry("parameters")
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    if !slot.is_object() {
        return Err(format!(
            "`parameters` is {slot}, not a mapping of names to values"
        ));
    }
    Ok(slot.as_object_mut().expect("checked to be a mapping"))
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
    parameters:
      weight: [0.1, 0.2, 0.3]
      density: [{filter: mlp, value: 0.2}, {value: 0.4}]
parameters:
  normalize: true
dtype: float32
";

    fn set(path: &str, value: f64) -> Result<String, SweepError> {
        let path = ParamPath::parse(path).unwrap();
        set_values(RECIPE, Path::new("r.yml"), &[(&path, value)])
    }

    fn recipe(text: &str) -> crate::merge::recipe::Recipe {
        crate::merge::recipe::Recipe::from_yaml(text, Path::new("r.yml")).unwrap()
    }

    #[test]
    fn a_value_is_replaced_and_everything_else_kept() {
        use crate::merge::recipe::{ParamValue, Scalar};
        let before = recipe(RECIPE);
        let after = recipe(&set("models.1.weight", 0.25).unwrap());
        assert_eq!(
            after.models[1].parameters["weight"],
            ParamValue::Scalar(Scalar::Number(0.25))
        );
        let mut expected = before.clone();
        expected.models[1].parameters.insert(
            "weight".to_owned(),
            ParamValue::Scalar(Scalar::Number(0.25)),
        );
        assert_eq!(after, expected);
        // Keys stay in the order they were written.
        let keys: Vec<&String> = after.models[2].parameters.keys().collect();
        assert_eq!(keys, ["weight", "density"]);

        let after = recipe(&set("models.2.weight[1]", 0.9).unwrap());
        assert_eq!(
            after.models[2].parameters["weight"],
            ParamValue::List(vec![
                Scalar::Number(0.1),
                Scalar::Number(0.9),
                Scalar::Number(0.3)
            ])
        );
    }

    #[test]
    fn absent_values_are_added_where_the_path_says() {
        use crate::merge::recipe::{ParamValue, Scalar};
        let after = recipe(&set("models.0.weight", 0.5).unwrap());
        assert_eq!(
            after.models[0].parameters["weight"],
            ParamValue::Scalar(Scalar::Number(0.5))
        );
        let after = recipe(&set("lambda", 0.7).unwrap());
        assert_eq!(
            after.parameters["lambda"],
            ParamValue::Scalar(Scalar::Number(0.7))
        );
        assert_eq!(after.parameters.get_index(0).unwrap().0, "normalize");
    }

    #[test]
    fn what_is_in_the_way_is_named() {
        let e = set("models.2.weight", 0.5).unwrap_err().to_string();
        assert!(
            e.contains("gradient of 3 points") && e.contains("models.2.weight[2]"),
            "{e}"
        );
        let e = set("models.2.weight[3]", 0.5).unwrap_err().to_string();
        assert!(e.contains("[0] to [2]"), "{e}");
        let e = set("models.1.weight[0]", 0.5).unwrap_err().to_string();
        assert!(e.contains("single number"), "{e}");
        let e = set("models.2.density", 0.5).unwrap_err().to_string();
        assert!(e.contains("{filter, value}"), "{e}");
        let e = set("models.5.weight", 0.5).unwrap_err().to_string();
        assert!(
            e.contains("lists 3 model(s)") && e.contains("models[5]"),
            "{e}"
        );
        let e = set("normalize", 0.5).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        let bad = set_values("[1, 2]", Path::new("r.yml"), &[]);
        assert!(bad.is_ok(), "no edit asked: written back as it was");
        let path = ParamPath::parse("lambda").unwrap();
        let e = set_values("[1, 2]", Path::new("r.yml"), &[(&path, 1.0)]).unwrap_err();
        assert!(e.to_string().contains("not a YAML mapping"), "{e}");
    }
}
