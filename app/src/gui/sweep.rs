//! The Sweep panel's state: the parameters the user picked (from what the Merge panel's
//! settings have), the cells as the worker computes them, and their CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mergescope_core::sweep::metric::{metric_names, metric_value};
use mergescope_core::sweep::{Axis, Cell, ParamPath};

use super::methods::{has_weight, is_integer, shared_curve_param, shared_numbers, shared_range};
use super::state::{MergeSettings, OpenFamily, has_lambda, model_name, model_params};

/// Steps per axis a new axis starts with.
const DEFAULT_STEPS: usize = 6;

/// A parameter the current settings let the user sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamChoice {
    /// As the core parses it: `models.1.weight`, `models.0.weight[2]`, `lambda`.
    pub path: String,
    /// In words: `weight of rotated`, `weight of rotated, curve point 3 of 5`.
    pub label: String,
    /// Where a new range starts and ends.
    pub range: (f64, f64),
}

/// Every number of `settings` a sweep can vary, as its recipe writes them: each included
/// model's weight (each control point of its curve when per-layer weights are on) and its
/// density, epsilon, gamma or scale as the method reads them (`models.N` counts the models
/// the recipe lists), the method's shared numbers (`t`, or each point of its curve; `eps`,
/// `tol`, ...), and `lambda` when it is one number.
pub fn param_choices(settings: &MergeSettings, family: &OpenFamily) -> Vec<ParamChoice> {
    let mut choices = Vec::new();
    // (index in the recipe's models, name), for the models that take part.
    let included: Vec<(usize, String)> = family
        .models
        .iter()
        .enumerate()
        .filter(|(i, _)| settings.includes(*i))
        .map(|(i, path)| (i, model_name(path)))
        .collect();
    let weights = if has_weight(&settings.method) {
        included.as_slice()
    } else {
        &[]
    };
    for (n, (i, model)) in weights.iter().enumerate() {
        if settings.per_layer {
            let points = settings.curves.get(*i).map_or(0, Vec::len);
            for k in 0..points {
                choices.push(ParamChoice {
                    path: format!("models.{n}.weight[{k}]"),
                    label: format!("weight of {model}, curve point {} of {points}", k + 1),
                    range: (0.0, 1.0),
                });
            }
        } else {
            choices.push(ParamChoice {
                path: format!("models.{n}.weight"),
                label: format!("weight of {model}"),
                range: (0.0, 1.0),
            });
        }
    }
    for name in model_params(&settings.method) {
        for (n, (_, model)) in included.iter().enumerate() {
            let range = match name {
                "density" => (0.1, 1.0),
                "scale" => (0.5, 1.5),
                _ => (0.0, 0.3),
            };
            choices.push(ParamChoice {
                path: format!("models.{n}.{name}"),
                label: format!("{name} of {model}"),
                range,
            });
        }
    }
    // The curve number (slerp's t) as one value or a gradient's points; per-module curves
    // are {filter, value} lists, not numbers to vary.
    if let Some(t) = shared_curve_param(&settings.method) {
        if !settings.per_layer {
            choices.push(ParamChoice {
                path: t.to_owned(),
                label: t.to_owned(),
                range: (0.0, 1.0),
            });
        } else if settings.module_curves.is_empty() {
            let points = settings.shared_curve.len();
            for k in 0..points {
                choices.push(ParamChoice {
                    path: format!("{t}[{k}]"),
                    label: format!("{t}, curve point {} of {points}", k + 1),
                    range: (0.0, 1.0),
                });
            }
        }
    }
    for name in shared_numbers(&settings.method) {
        let slider = shared_range(&settings.method, name);
        let value = settings.shared_value(name);
        // Around the current value, inside what the core accepts; whole numbers (max_iter)
        // on every step a new axis starts with.
        let range = if is_integer(&settings.method, name) {
            let step = (value / (DEFAULT_STEPS - 1) as f64).ceil().max(1.0);
            (1.0, 1.0 + (DEFAULT_STEPS - 1) as f64 * step)
        } else if slider.logarithmic {
            (value / 10.0, value * 10.0)
        } else {
            (*slider.range.start(), *slider.range.end())
        };
        choices.push(ParamChoice {
            path: name.to_owned(),
            label: name.to_owned(),
            range,
        });
    }
    // A lambda per module filter is a {filter, value} list, not one number to vary.
    if has_lambda(&settings.method) && settings.filters.is_empty() {
        choices.push(ParamChoice {
            path: "lambda".to_owned(),
            label: "lambda (strength of the merged task vector)".to_owned(),
            range: (0.5, 1.5),
        });
    }
    choices
}

/// One axis as the user sets it.
#[derive(Clone, Debug, PartialEq)]
pub struct AxisChoice {
    /// A [`ParamChoice::path`].
    pub path: String,
    pub start: f64,
    pub end: f64,
    pub steps: usize,
}

impl AxisChoice {
    pub fn new(choice: &ParamChoice) -> Self {
        Self {
            path: choice.path.clone(),
            start: choice.range.0,
            end: choice.range.1,
            steps: DEFAULT_STEPS,
        }
    }

    /// The core's axis; `Err` says what is wrong, in one line.
    pub fn to_axis(&self) -> Result<Axis, String> {
        let path = ParamPath::parse(&self.path).map_err(|e| e.to_string())?;
        Axis::range(path, self.start, self.end, self.steps).map_err(|e| e.to_string())
    }
}

/// A sweep's results as they arrive.
#[derive(Clone, Debug, Default)]
pub struct SweepResults {
    /// The axes it ran over, with their values.
    pub axes: Vec<Axis>,
    /// The label of each axis's parameter, as it was picked.
    pub labels: Vec<String>,
    /// Cells in the order computed (row-major); fewer than the grid while it runs or after a
    /// cancel.
    pub cells: Vec<Cell>,
    /// Where the recipes were taken to live (the family's recipe file).
    pub file: PathBuf,
    pub millis: Option<f64>,
}

impl SweepResults {
    pub fn cell_count(&self) -> usize {
        self.axes.iter().map(|a| a.values.len()).product()
    }

    /// The cell at `index`, if it has been computed. Cells arrive in row-major order, so
    /// cell n is looked up at position n (a 101 × 101 heatmap draws without a search per cell).
    pub fn cell(&self, index: &[usize]) -> Option<&Cell> {
        let position = self
            .axes
            .iter()
            .zip(index)
            .fold(0, |n, (axis, &i)| n * axis.values.len() + i);
        self.cells
            .get(position)
            .filter(|c| c.index == index)
            .or_else(|| self.cells.iter().find(|c| c.index == index))
    }

    /// The metrics the cells report (and the mean retention), from the first cell.
    pub fn metrics(&self) -> Vec<String> {
        self.cells
            .first()
            .map_or_else(Vec::new, |c| metric_names(&c.scores))
    }

    /// The CSV of every cell: one column per parameter, then one per metric.
    pub fn csv(&self) -> String {
        let metrics = self.metrics();
        let mut text = String::new();
        let header: Vec<String> = self
            .axes
            .iter()
            .map(|a| a.path.to_string())
            .chain(metrics.iter().cloned())
            .map(|h| csv_field(&h))
            .collect();
        let _ = writeln!(text, "{}", header.join(","));
        for cell in &self.cells {
            let row: Vec<String> = cell
                .values
                .iter()
                .map(f64::to_string)
                .chain(metrics.iter().map(|m| {
                    metric_value(&cell.scores, m).map_or_else(String::new, |v| v.to_string())
                }))
                .collect();
            let _ = writeln!(text, "{}", row.join(","));
        }
        text
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// What the worker is asked to sweep.
#[derive(Debug)]
pub struct SweepRequest {
    /// The Merge panel's recipe.
    pub yaml: String,
    /// Where it is taken to live.
    pub file: PathBuf,
    pub axes: Vec<Axis>,
    /// Score on the demo's digits (else retention).
    pub is_demo: bool,
    /// Score a language model's perplexity on these texts instead.
    pub texts: Option<super::texts::LoadedTexts>,
}

/// The Sweep panel's state.
#[derive(Clone, Debug, Default)]
pub struct SweepState {
    /// One or two axes.
    pub axes: Vec<AxisChoice>,
    /// The metric the chart shows.
    pub metric: Option<String>,
    pub running: bool,
    /// Shared with the frame that draws them, so a frame never copies thousands of cells.
    pub results: Option<Arc<SweepResults>>,
}

impl SweepState {
    /// Keeps the chosen axes among `choices` (settings change under the panel): an axis
    /// whose parameter is gone takes the first one left.
    pub fn fit_to(&mut self, choices: &[ParamChoice]) {
        let Some(first) = choices.first() else {
            self.axes.clear();
            return;
        };
        if self.axes.is_empty() {
            self.axes.push(AxisChoice::new(first));
        }
        for axis in &mut self.axes {
            if !choices.iter().any(|c| c.path == axis.path) {
                *axis = AxisChoice::new(first);
            }
        }
    }

    /// A sweep was sent: results start empty.
    pub fn started(&mut self, axes: Vec<Axis>, labels: Vec<String>, file: PathBuf) {
        self.running = true;
        self.results = Some(Arc::new(SweepResults {
            axes,
            labels,
            cells: Vec::new(),
            file,
            millis: None,
        }));
    }

    /// A cell from the worker.
    pub fn add_cell(&mut self, cell: Cell) {
        if let Some(results) = &mut self.results {
            let results = Arc::make_mut(results);
            results.cells.push(cell);
            // The metric chosen before is kept while the cells report it (another family's
            // sweep may score on another objective).
            let first = &results.cells[0].scores;
            if self
                .metric
                .as_deref()
                .is_none_or(|m| metric_value(first, m).is_none())
            {
                self.metric = mergescope_core::sweep::metric::default_metric(first);
            }
        }
    }

    /// The worker finished the sweep.
    pub fn finished(&mut self, millis: f64) {
        self.running = false;
        if let Some(results) = &mut self.results {
            Arc::make_mut(results).millis = Some(millis);
        }
    }
}

/// A metric's name as the panel shows it: a retention key names the model by its folder.
pub fn metric_label(metric: &str) -> String {
    match metric.split_once('/') {
        Some((kind @ ("retention" | "cosine"), model)) => {
            format!("{kind} of {}", model_name(Path::new(model)))
        }
        _ => metric.to_owned(),
    }
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
            builtin: None,
            tensor_names: Vec::new(),
            layers: 4,
            language_model: None,
        }
    }

    #[test]
    fn choices_follow_the_settings() {
        let mut settings = MergeSettings::for_models(2);
        let paths = |s: &MergeSettings| -> Vec<String> {
            param_choices(s, &family())
                .into_iter()
                .map(|c| c.path)
                .collect()
        };
        assert_eq!(
            paths(&settings),
            ["models.0.weight", "models.1.weight", "lambda"]
        );
        settings.method = "ties".to_owned();
        settings.per_layer = true;
        settings.curves = vec![vec![0.3, 0.3, 0.3], vec![0.3, 0.3]];
        assert_eq!(
            paths(&settings),
            [
                "models.0.weight[0]",
                "models.0.weight[1]",
                "models.0.weight[2]",
                "models.1.weight[0]",
                "models.1.weight[1]",
                "models.0.density",
                "models.1.density",
                "lambda"
            ]
        );
        settings.method = "linear".to_owned();
        assert!(!paths(&settings).contains(&"lambda".to_owned()));
        // Methods without weights: their own numbers, counted over the included models.
        settings.set_method("slerp");
        assert_eq!(paths(&settings), ["t[0]", "t[1]"]);
        settings.per_layer = false;
        assert_eq!(paths(&settings), ["t"]);
        settings.set_method("karcher");
        assert_eq!(paths(&settings), ["max_iter", "tol"]);
        settings.set_method("ties");
        settings.included = vec![false, true];
        assert_eq!(
            paths(&settings),
            ["models.0.weight", "models.0.density", "lambda"]
        );
        // Every choice is a path the core sweeps in the recipe the settings make.
        for method in crate::gui::methods::methods() {
            settings.set_method(method);
            let yaml = settings.to_yaml(&family());
            for choice in param_choices(&settings, &family()) {
                let axis = AxisChoice::new(&choice).to_axis().unwrap();
                mergescope_core::sweep::Sweep::new(&yaml, Path::new("/m/r.yml"), vec![axis])
                    .unwrap_or_else(|e| panic!("{method} {}: {e}", choice.path));
            }
        }
    }

    #[test]
    fn results_become_csv() {
        let axes = vec![
            AxisChoice {
                path: "models.0.weight".to_owned(),
                start: 0.0,
                end: 1.0,
                steps: 2,
            }
            .to_axis()
            .unwrap(),
        ];
        let mut state = SweepState::default();
        state.started(axes, vec!["weight of a".to_owned()], PathBuf::from("r.yml"));
        for (i, v) in [0.0, 1.0].into_iter().enumerate() {
            state.add_cell(Cell {
                index: vec![i],
                values: vec![v],
                scores: [("retention/x,y".to_owned(), v / 2.0)]
                    .into_iter()
                    .collect(),
                recipe: String::new(),
            });
        }
        assert_eq!(
            state.results.as_ref().unwrap().csv(),
            "models.0.weight,mean retention,\"retention/x,y\"\n0,0,0\n1,0.5,0.5\n"
        );
        assert_eq!(state.metric.as_deref(), Some("mean retention"));
        let results = state.results.as_ref().unwrap();
        assert_eq!(results.cell(&[1]).unwrap().values, [1.0]);
        assert!(results.cell(&[2]).is_none());
        assert_eq!(metric_label("retention//m/a"), "retention of a");
    }
}
