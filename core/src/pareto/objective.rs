//! Objectives with a direction, and the box between the reference and the ideal point that
//! normalises them (PARETO.md §1).

use serde::{Deserialize, Serialize};

use super::ParetoError;

/// Whether more or less of an objective is better. Never guessed from a name or a sign: the
/// objective's source says which (the demo's accuracies, `--maximize`/`--minimize`, or a
/// command's `"directions"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Max,
    Min,
}

impl Direction {
    /// The maximised value of a score: `s` for `max`, `−s` for `min`.
    pub fn maximised(self, score: f64) -> f64 {
        match self {
            Self::Max => score,
            Self::Min => -score,
        }
    }

    /// The score of a maximised value (the inverse of [`Direction::maximised`]).
    pub fn score(self, maximised: f64) -> f64 {
        self.maximised(maximised)
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "max" | "maximize" | "maximise" | "higher" => Some(Self::Max),
            "min" | "minimize" | "minimise" | "lower" => Some(Self::Min),
            _ => None,
        }
    }
}

/// The directions two lists of metric names give (`--maximize a,b --minimize c`, or the Pareto
/// panel's two fields); blank names are skipped and a name in both lists is an error.
pub fn directions_from_lists<'a>(
    maximize: impl IntoIterator<Item = &'a str>,
    minimize: impl IntoIterator<Item = &'a str>,
) -> Result<std::collections::BTreeMap<String, Direction>, ParetoError> {
    let mut directions = std::collections::BTreeMap::new();
    let lists: [(Vec<&str>, Direction); 2] = [
        (maximize.into_iter().collect(), Direction::Max),
        (minimize.into_iter().collect(), Direction::Min),
    ];
    for (names, direction) in lists {
        for name in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
            if directions.insert(name.to_owned(), direction).is_some() {
                return Err(ParetoError::Settings(format!(
                    "`{name}` is given to both --maximize and --minimize"
                )));
            }
        }
    }
    Ok(directions)
}

/// A named number and which way is better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveSpec {
    /// The metric's name as the objective reports it, e.g. `upright/accuracy`.
    pub name: String,
    pub direction: Direction,
    /// Values lie in [0, 1] (accuracies): the surrogate then fits their logit, so its
    /// predictions stay inside the interval.
    #[serde(default)]
    pub unit_interval: bool,
}

impl ObjectiveSpec {
    pub fn maximised(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            direction: Direction::Max,
            unit_interval: false,
        }
    }

    /// A score as people read it: percent for values in [0, 1], four decimals otherwise
    /// (a negated `min` objective's zero printed as 0, not −0).
    pub fn display(&self, value: f64) -> String {
        if self.unit_interval {
            format!("{:.1}%", value * 100.0)
        } else {
            format!("{:.4}", value + 0.0)
        }
    }

    /// A `max` objective in [0, 1], such as an accuracy.
    pub fn accuracy(name: &str) -> Self {
        Self {
            unit_interval: true,
            ..Self::maximised(name)
        }
    }
}

/// The reference (nadir) point the hypervolume is measured from and the ideal point, both in
/// maximised units, one entry per objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    pub reference: Vec<f64>,
    pub ideal: Vec<f64>,
}

impl Normalisation {
    /// Checks the two points agree in length and that the ideal is never below the reference
    /// (an ideal equal to the reference is raised a little, so the box has a volume).
    pub fn new(reference: Vec<f64>, mut ideal: Vec<f64>) -> Result<Self, ParetoError> {
        if reference.len() != ideal.len() {
            return Err(ParetoError::Settings(format!(
                "the reference point has {} entries and the ideal point {}; give one per objective",
                reference.len(),
                ideal.len()
            )));
        }
        if let Some(j) = reference.iter().chain(&ideal).position(|v| !v.is_finite()) {
            return Err(ParetoError::Settings(format!(
                "the reference or ideal point has a non-finite entry (objective {})",
                j % reference.len().max(1)
            )));
        }
        for (z, r) in ideal.iter_mut().zip(&reference) {
            if *z <= *r {
                *z = r + (r.abs() * 1e-6).max(1e-9);
            }
        }
        Ok(Self { reference, ideal })
    }

    /// g_j = (f_j − r_j)/(z*_j − r_j): 0 at the reference, 1 at the ideal, not clipped.
    pub fn normalise(&self, maximised: &[f64]) -> Vec<f64> {
        super::hypervolume::normalise(maximised, &self.reference, &self.ideal)
    }

    /// The inverse of [`Normalisation::normalise`].
    pub fn denormalise(&self, normalised: &[f64]) -> Vec<f64> {
        normalised
            .iter()
            .zip(self.reference.iter().zip(&self.ideal))
            .map(|(g, (r, z))| r + g * (z - r))
            .collect()
    }

    /// The volume of the box between the reference and the ideal point, in raw units.
    pub fn box_volume(&self) -> f64 {
        self.reference
            .iter()
            .zip(&self.ideal)
            .map(|(r, z)| z - r)
            .product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_is_better_is_negated_not_maximised() {
        let loss = Direction::Min;
        assert!(loss.maximised(0.1) > loss.maximised(0.5));
        assert_eq!(loss.score(loss.maximised(0.3)), 0.3);
        assert_eq!(Direction::parse("minimize"), Some(Direction::Min));
        assert_eq!(Direction::parse("sideways"), None);
    }

    #[test]
    fn normalisation_maps_the_box_to_the_unit_cube() {
        let n = Normalisation::new(vec![0.5, -2.0], vec![1.0, -1.0]).unwrap();
        assert_eq!(n.normalise(&[0.5, -2.0]), vec![0.0, 0.0]);
        assert_eq!(n.normalise(&[1.0, -1.0]), vec![1.0, 1.0]);
        assert_eq!(n.denormalise(&[0.5, 0.5]), vec![0.75, -1.5]);
        assert!((n.box_volume() - 0.5).abs() < 1e-12);
        // An ideal below the reference is raised to it: the box is never inside out.
        let flat = Normalisation::new(vec![1.0], vec![0.0]).unwrap();
        assert!(flat.ideal[0] > flat.reference[0]);
        assert!(Normalisation::new(vec![1.0], vec![0.0, 1.0]).is_err());
    }
}
