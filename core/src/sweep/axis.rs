//! What a sweep varies: a parameter path into a mergekit recipe (`models.1.weight`,
//! `models.0.weight[2]`, `parameters.lambda` or `lambda`) and the values it takes
//! (`START:END:STEPS` or `a,b,c`).

use std::fmt;

use super::SweepError;

/// Most values one axis takes (a range's STEPS or a list's length).
pub const MAX_STEPS: usize = 101;

/// Where a parameter lives in a recipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// `models[index].parameters.NAME`: one model's own value.
    Model(usize),
    /// The top-level `parameters.NAME`: shared, or the default of every model that sets none.
    Global,
}

/// A parameter of a recipe a sweep sets: `models.N.NAME`, `parameters.NAME` (or a bare
/// `NAME`), each optionally `[K]`, control point K of a per-layer gradient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamPath {
    pub owner: Owner,
    pub name: String,
    /// Control point of a gradient list (a per-layer curve's value on one layer group).
    pub point: Option<usize>,
}

impl ParamPath {
    /// Parses `models.N.NAME[K]`, `parameters.NAME[K]` or `NAME[K]` (`[K]` optional).
    pub fn parse(text: &str) -> Result<Self, SweepError> {
        let bad = |message: String| SweepError::Path {
            path: text.to_owned(),
            message,
        };
        let text = text.trim();
        let (head, point) = match text.strip_suffix(']') {
            Some(open) => {
                let (head, index) = open.rsplit_once('[').ok_or_else(|| {
                    bad("a `]` without its `[`; write NAME[K] for control point K".to_owned())
                })?;
                let k = index.trim().parse::<usize>().map_err(|_| {
                    bad(format!(
                        "`[{index}]` is not a control point number; write [0], [1], …"
                    ))
                })?;
                (head, Some(k))
            }
            None => (text, None),
        };
        let parts: Vec<&str> = head.split('.').collect();
        let (owner, name) = match parts.as_slice() {
            ["models", index, name] => {
                let index = index.parse::<usize>().map_err(|_| {
                    bad(format!(
                        "`{index}` is not a model number; write models.0.weight, models.1.weight, …"
                    ))
                })?;
                (Owner::Model(index), *name)
            }
            ["parameters", name] => (Owner::Global, *name),
            [name] if *name != "models" && *name != "parameters" => (Owner::Global, *name),
            _ => {
                return Err(bad(
                    "write models.N.NAME (a model's parameter, e.g. models.1.weight), \
                     parameters.NAME or NAME (a global one, e.g. lambda), each optionally \
                     followed by [K] for control point K of a per-layer gradient"
                        .to_owned(),
                ));
            }
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(bad(format!(
                "`{name}` is not a parameter name (letters, digits and `_`)"
            )));
        }
        Ok(Self {
            owner,
            name: name.to_owned(),
            point,
        })
    }

    /// The key as recipe errors name it: `models[1].parameters.weight[2]`.
    pub fn recipe_key(&self) -> String {
        let point = self.point.map(|k| format!("[{k}]")).unwrap_or_default();
        match self.owner {
            Owner::Model(i) => format!("models[{i}].parameters.{}{point}", self.name),
            Owner::Global => format!("parameters.{}{point}", self.name),
        }
    }
}

impl fmt::Display for ParamPath {
    /// The path as the command line takes it (`parameters.` left out of global ones).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.owner {
            Owner::Model(i) => write!(f, "models.{i}.{}", self.name)?,
            Owner::Global => write!(f, "{}", self.name)?,
        }
        match self.point {
            Some(k) => write!(f, "[{k}]"),
            None => Ok(()),
        }
    }
}

/// One swept parameter and the values it takes, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub path: ParamPath,
    pub values: Vec<f64>,
}

impl Axis {
    /// Parses `PATH=START:END:STEPS` or `PATH=a,b,c`.
    pub fn parse(spec: &str) -> Result<Self, SweepError> {
        let (path, values) = spec.split_once('=').ok_or_else(|| SweepError::Values {
            spec: spec.to_owned(),
            message: format!(
                "it gives no values; write {}=0:1:11 (START:END:STEPS) or {}=0.1,0.5,0.9",
                spec.trim(),
                spec.trim()
            ),
        })?;
        Ok(Self {
            path: ParamPath::parse(path)?,
            values: parse_values(values).map_err(|message| SweepError::Values {
                spec: spec.to_owned(),
                message,
            })?,
        })
    }

    /// A range from `start` to `end` in `steps` evenly spaced values, both ends included.
    pub fn range(path: ParamPath, start: f64, end: f64, steps: usize) -> Result<Self, SweepError> {
        let spec = format!("{path}={start}:{end}:{steps}");
        Ok(Self {
            path,
            values: range_values(start, end, steps)
                .map_err(|message| SweepError::Values { spec, message })?,
        })
    }
}

/// `START:END:STEPS` (inclusive, STEPS from 2 to [`MAX_STEPS`], START < END) or a list
/// `a,b,c` of up to [`MAX_STEPS`] numbers.
pub fn parse_values(text: &str) -> Result<Vec<f64>, String> {
    let number = |s: &str| -> Result<f64, String> {
        let x: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{}` is not a number", s.trim()))?;
        if x.is_finite() {
            Ok(x)
        } else {
            Err(format!("`{}` is not a finite number", s.trim()))
        }
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "no values after `=`; write 0:1:11 (START:END:STEPS) or 0.1,0.5,0.9".to_owned(),
        );
    }
    if text.contains(':') {
        let parts: Vec<&str> = text.split(':').collect();
        let [start, end, steps] = parts.as_slice() else {
            return Err(format!(
                "`{text}` is not START:END:STEPS; give the first value, the last and how many, e.g. 0:1:11"
            ));
        };
        let steps: usize = steps.trim().parse().map_err(|_| {
            format!(
                "STEPS `{}` is not a whole number of values (2 to {MAX_STEPS})",
                steps.trim()
            )
        })?;
        return range_values(number(start)?, number(end)?, steps);
    }
    let values = text
        .split(',')
        .map(number)
        .collect::<Result<Vec<f64>, String>>()?;
    if values.len() > MAX_STEPS {
        return Err(format!(
            "{} values; an axis takes at most {MAX_STEPS}",
            values.len()
        ));
    }
    Ok(values)
}

fn range_values(start: f64, end: f64, steps: usize) -> Result<Vec<f64>, String> {
    if !(start.is_finite() && end.is_finite()) {
        return Err("START and END must be finite numbers".to_owned());
    }
    if !(2..=MAX_STEPS).contains(&steps) {
        return Err(format!(
            "STEPS is {steps}; a range takes 2 to {MAX_STEPS} values, both ends included (0:1:11 is 0, 0.1, …, 1)"
        ));
    }
    if start >= end {
        return Err(format!(
            "START {start} is not below END {end}; write the range from low to high, or list the values (a,b,c)"
        ));
    }
    let last = (steps - 1) as f64;
    Ok((0..steps)
        .map(|i| {
            if i == steps - 1 {
                end
            } else {
                tidy(start + (end - start) * i as f64 / last)
            }
        })
        .collect())
}

/// `x` to 12 significant digits: 0.1 × 3 is written `0.3` in recipes, not
/// `0.30000000000000004`, and a cell's recipe says the value it was given.
fn tidy(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_owner_name_and_point() {
        let p = ParamPath::parse("models.1.weight").unwrap();
        assert_eq!(
            (p.owner.clone(), p.name.as_str(), p.point),
            (Owner::Model(1), "weight", None)
        );
        assert_eq!(p.recipe_key(), "models[1].parameters.weight");
        let p = ParamPath::parse("models.0.weight[3]").unwrap();
        assert_eq!(p.point, Some(3));
        assert_eq!(p.to_string(), "models.0.weight[3]");
        assert_eq!(p.recipe_key(), "models[0].parameters.weight[3]");
        for global in ["lambda", "parameters.lambda"] {
            let p = ParamPath::parse(global).unwrap();
            assert_eq!((p.owner, p.name.as_str()), (Owner::Global, "lambda"));
        }
        assert_eq!(
            ParamPath::parse("parameters.t[1]").unwrap().recipe_key(),
            "parameters.t[1]"
        );
        for bad in [
            "models.x.weight",
            "models.1",
            "models",
            "a.b.c.d",
            "weight]",
            "weight[k]",
            "we-ight",
            "",
        ] {
            assert!(ParamPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_include_both_ends_and_read_cleanly() {
        let v = parse_values("0:1:11").unwrap();
        assert_eq!(v.len(), 11);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[3], 0.3);
        assert_eq!(v[7], 0.7);
        assert_eq!(v[10], 1.0);
        assert_eq!(parse_values("-1:1:3").unwrap(), [-1.0, 0.0, 1.0]);
        assert_eq!(parse_values("0.5, 0.1,0.9").unwrap(), [0.5, 0.1, 0.9]);
        assert_eq!(parse_values("0.25").unwrap(), [0.25]);
    }

    #[test]
    fn bad_values_say_what_to_write() {
        let e = parse_values("1:0").unwrap_err();
        assert!(e.contains("START:END:STEPS"), "{e}");
        let e = parse_values("1:0:5").unwrap_err();
        assert!(e.contains("not below END"), "{e}");
        let e = parse_values("0:1:1").unwrap_err();
        assert!(e.contains("2 to 101"), "{e}");
        assert!(parse_values("0:1:102").is_err());
        assert!(parse_values("0:1:x").is_err());
        assert!(parse_values("0:nan:3").is_err());
        assert!(parse_values("a,b").is_err());
        assert!(parse_values("").is_err());
        let many = vec!["1"; 102].join(",");
        assert!(parse_values(&many).is_err());
        let e = Axis::parse("models.1.weight").unwrap_err().to_string();
        assert!(e.contains("models.1.weight=0:1:11"), "{e}");
    }
}
