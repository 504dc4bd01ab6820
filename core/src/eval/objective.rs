//! Objectives: numbers that say how good a merged model is.
//!
//! - [`DemoAccuracy`]: per-domain test accuracy and loss of the built-in demo family (a candle
//!   forward pass), in full or on a fixed subsample for live previews;
//! - [`ExternalCommand`]: the user's own evaluation, run on the model's folder, answering JSON;
//! - [`Retention`]: data-free, from the analysis' merge preview
//!   ([`crate::analysis::survival`]): how much of each task vector a recipe's merge keeps.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

use super::EvalError;
use super::digits::{Digits, Domain, PIXELS, Split};
use super::model::ModelTensors;
use super::vit::{self, VitConfig};

/// Metric name → value, e.g. `upright/accuracy`.
pub type Scores = BTreeMap<String, f64>;

/// The model an objective scores: on disk (a merge that was exported), in memory (a preview
/// while a slider moves), or both.
#[derive(Clone, Copy, Debug, Default)]
pub struct Candidate<'a> {
    pub folder: Option<&'a Path>,
    pub tensors: Option<&'a ModelTensors>,
}

/// Something that says how good a model is, as named numbers (higher or lower is better per
/// metric; the name says which: `accuracy`, `loss`, …).
pub trait Objective: Send + Sync {
    fn name(&self) -> String;

    /// Scores `candidate`; `Subsample` asks for a quick estimate where the objective has one.
    fn evaluate(&self, candidate: &Candidate<'_>, fidelity: Fidelity) -> Result<Scores, EvalError>;
}

impl Objective for DemoAccuracy {
    fn name(&self) -> String {
        "demo accuracy".to_owned()
    }

    fn evaluate(&self, candidate: &Candidate<'_>, fidelity: Fidelity) -> Result<Scores, EvalError> {
        match (candidate.tensors, candidate.folder) {
            (Some(tensors), _) => self.score(tensors, fidelity),
            (None, Some(folder)) => self.score_folder(folder, fidelity),
            (None, None) => Err(EvalError::NoModel),
        }
    }
}

impl Objective for ExternalCommand {
    fn name(&self) -> String {
        format!("command `{}`", self.command)
    }

    /// Always runs in full: the command decides what it measures.
    fn evaluate(
        &self,
        candidate: &Candidate<'_>,
        _fidelity: Fidelity,
    ) -> Result<Scores, EvalError> {
        let folder = candidate.folder.ok_or_else(|| EvalError::Command {
            command: self.command.clone(),
            message: "it needs the model on disk; export the merge first".to_owned(),
        })?;
        self.run(folder)
    }
}

/// How much of the evaluation data to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fidelity {
    /// Every test sample.
    Full,
    /// The first `n` test samples of each domain (a fixed subset): for previews while a
    /// slider moves.
    Subsample(usize),
}

/// The demo family's test data (or another split's), prepared once.
#[derive(Debug)]
pub struct DemoAccuracy {
    config: VitConfig,
    /// Per domain: pixels (n × 64) and labels.
    samples: Vec<(Domain, Tensor, Tensor)>,
}

impl DemoAccuracy {
    pub fn new() -> Result<Self, EvalError> {
        Self::on(Split::Test)
    }

    /// Scores on the `split` images instead of the test images: the training images choose
    /// a setting (the method leaderboard's grid) without looking at the test images it is
    /// then reported on.
    pub fn on(split: Split) -> Result<Self, EvalError> {
        let digits = Digits::load();
        let samples = Domain::ALL
            .iter()
            .map(|&domain| {
                let (pixels, labels) = digits.samples(domain, split);
                let n = labels.len();
                let labels: Vec<u32> = labels.into_iter().map(u32::from).collect();
                Ok((
                    domain,
                    Tensor::from_vec(pixels, (n, PIXELS), &Device::Cpu)?,
                    Tensor::from_vec(labels, n, &Device::Cpu)?,
                ))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            config: VitConfig::DEMO,
            samples,
        })
    }

    /// The shape of the models it scores.
    pub fn config(&self) -> VitConfig {
        self.config
    }

    /// The full test accuracy of the model in `folder` on each domain (in [`Domain::ALL`]
    /// order), then their mean: one row of the demo family's accuracy matrix.
    pub fn accuracy_row(&self, folder: &Path) -> Result<Vec<f64>, EvalError> {
        let scores = self.score_folder(folder, Fidelity::Full)?;
        Ok(Domain::ALL
            .iter()
            .map(|d| scores[&format!("{}/accuracy", d.name())])
            .chain(std::iter::once(scores["mean/accuracy"]))
            .collect())
    }

    /// The model in `folder`: a demo ViT, or one upscaled by SMILE (`crate::smile`) or WEMoE
    /// (`crate::test_time::wemoe`).
    pub fn score_folder(&self, folder: &Path, fidelity: Fidelity) -> Result<Scores, EvalError> {
        let checkpoint = crate::Checkpoint::open(folder)?;
        if let Some(weights) = crate::smile::SmileWeights::from_checkpoint(&checkpoint) {
            return self.score_weights(&weights?, fidelity);
        }
        if let Some(weights) = crate::test_time::wemoe::WemoeWeights::from_checkpoint(&checkpoint) {
            return self.score_weights(&weights?, fidelity);
        }
        self.score(
            &ModelTensors::from_checkpoint(&checkpoint, self.config)?,
            fidelity,
        )
    }

    /// `DOMAIN/accuracy` and `DOMAIN/loss` for every domain, and their means (`mean/…`).
    pub fn score(&self, model: &ModelTensors, fidelity: Fidelity) -> Result<Scores, EvalError> {
        self.score_weights(&model.to_candle(self.config)?, fidelity)
    }

    /// [`score`](Self::score) of a model's tensors as the forward pass reads them.
    pub fn score_weights(
        &self,
        weights: &dyn vit::Weights,
        fidelity: Fidelity,
    ) -> Result<Scores, EvalError> {
        let mut scores = Scores::new();
        let (mut accuracy_sum, mut loss_sum) = (0.0, 0.0);
        for (domain, pixels, labels) in &self.samples {
            let (pixels, labels) = match fidelity {
                Fidelity::Full => (pixels.clone(), labels.clone()),
                Fidelity::Subsample(n) => {
                    let n = n.min(labels.dim(0)?).max(1);
                    (pixels.narrow(0, 0, n)?, labels.narrow(0, 0, n)?)
                }
            };
            let logits = vit::forward(self.config, weights, &pixels)?;
            let (loss, accuracy) = vit::loss_and_accuracy(&logits, &labels)?;
            let loss = f64::from(loss.to_scalar::<f32>()?);
            scores.insert(format!("{}/accuracy", domain.name()), accuracy);
            scores.insert(format!("{}/loss", domain.name()), loss);
            accuracy_sum += accuracy;
            loss_sum += loss;
        }
        let domains = self.samples.len() as f64;
        scores.insert("mean/accuracy".to_owned(), accuracy_sum / domains);
        scores.insert("mean/loss".to_owned(), loss_sum / domains);
        Ok(scores)
    }
}

/// The user's evaluation: a command line run on the model's folder that prints a JSON object
/// of numbers (`{"metric": value, …}`) on stdout.
#[derive(Clone, Debug)]
pub struct ExternalCommand {
    /// Run with `sh -c`; `{model}` is replaced by the folder's path (quoted), else the path
    /// is appended as the last argument.
    pub command: String,
    pub timeout: Duration,
}

impl ExternalCommand {
    /// Runs the command on `folder` and reads its JSON.
    pub fn run(&self, folder: &Path) -> Result<Scores, EvalError> {
        self.run_with_directions(folder).map(|(scores, _)| scores)
    }

    /// Runs the command on `folder` and reads its metrics and the directions it gives for
    /// them (`"directions": {"metric": "min"|"max"}`, the one entry that is not a number).
    pub fn run_with_directions(
        &self,
        folder: &Path,
    ) -> Result<(Scores, BTreeMap<String, String>), EvalError> {
        let quoted = shell_quote(&folder.display().to_string());
        let line = if self.command.contains("{model}") {
            self.command.replace("{model}", &quoted)
        } else {
            format!("{} {quoted}", self.command)
        };
        let failed = |message: String| EvalError::Command {
            command: self.command.clone(),
            message,
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot start it: {e}")))?;
        // Read both pipes on threads so a chatty command cannot block on a full pipe.
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (out, err) = std::thread::scope(|scope| {
            let out = std::thread::Builder::new()
                .name("eval-stdout".to_owned())
                .spawn_scoped(scope, move || {
                    let mut s = String::new();
                    let _ = stdout.read_to_string(&mut s);
                    s
                });
            let err = std::thread::Builder::new()
                .name("eval-stderr".to_owned())
                .spawn_scoped(scope, move || {
                    let mut s = String::new();
                    let _ = stderr.read_to_string(&mut s);
                    s
                });
            let started = Instant::now();
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if started.elapsed() > self.timeout => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(EvalError::Timeout {
                            command: self.command.clone(),
                            seconds: self.timeout.as_secs_f64(),
                        });
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => break Err(failed(format!("cannot wait for it: {e}"))),
                }
            };
            let join = |h: std::io::Result<std::thread::ScopedJoinHandle<'_, String>>| {
                h.ok().and_then(|h| h.join().ok()).unwrap_or_default()
            };
            (status.map(|s| (s, join(out))), join(err))
        });
        let (status, out) = out?;
        if !status.success() {
            let last = err.lines().last().unwrap_or("").trim().to_owned();
            return Err(failed(format!(
                "it exited with {status}{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            )));
        }
        parse_output(&out).map_err(failed)
    }
}

/// A JSON object of numbers.
#[cfg(test)]
fn parse_scores(stdout: &str) -> Result<Scores, String> {
    parse_output(stdout).map(|(scores, _)| scores)
}

/// A JSON object of numbers, and optionally `"directions"`: an object of `"min"`/`"max"`.
fn parse_output(stdout: &str) -> Result<(Scores, BTreeMap<String, String>), String> {
    let text = stdout.trim();
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let shown: String = text.chars().take(80).collect();
        format!(
            "its output is not JSON ({e}): `{shown}`; print one object like {{\"accuracy\": 0.9}}"
        )
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| "its output is JSON but not an object of metrics".to_owned())?;
    let mut directions = BTreeMap::new();
    if let Some(given) = object.get("directions") {
        let given = given
            .as_object()
            .ok_or_else(|| "`directions` must be an object like {\"loss\": \"min\"}".to_owned())?;
        for (metric, direction) in given {
            let direction = direction.as_str().ok_or_else(|| {
                format!("the direction of `{metric}` is {direction}, not \"min\" or \"max\"")
            })?;
            directions.insert(metric.clone(), direction.to_owned());
        }
    }
    let scores = object
        .iter()
        .filter(|(k, _)| k.as_str() != "directions")
        .map(|(k, v)| {
            v.as_f64()
                .map(|x| (k.clone(), x))
                .ok_or_else(|| format!("metric `{k}` is {v}, not a number"))
        })
        .collect::<Result<Scores, String>>()?;
    Ok((scores, directions))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The data-free proxy: per model of a recipe, the share of its task vector the merge keeps
/// (`retention/…`, the projection) and the cosine with the merged task vector (`cosine/…`).
/// It scores the plan's merge, computed in memory; the candidate is not read.
pub struct Retention<'p> {
    pub plan: &'p crate::merge::plan::MergePlan,
    /// Where the in-memory merge runs.
    pub backend: &'p dyn crate::backend::Backend,
    pub job: &'p crate::Job,
}

impl Objective for Retention<'_> {
    fn name(&self) -> String {
        "retention".to_owned()
    }

    fn evaluate(
        &self,
        _candidate: &Candidate<'_>,
        _fidelity: Fidelity,
    ) -> Result<Scores, EvalError> {
        let survived = crate::analysis::survival(self.plan, self.backend, self.job)
            .map_err(|e| EvalError::Retention(e.to_string()))?;
        Ok(super::compare::retention_scores(&survived))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_an_object_of_numbers() {
        let s = parse_scores("{\"acc\": 0.5, \"loss\": 2}\n").unwrap();
        assert_eq!(s["acc"], 0.5);
        assert!(
            parse_scores("accuracy 0.5")
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(parse_scores("[1]").unwrap_err().contains("not an object"));
        assert!(
            parse_scores("{\"a\": \"x\"}")
                .unwrap_err()
                .contains("not a number")
        );
        let (scores, directions) =
            parse_output("{\"loss\": 0.2, \"directions\": {\"loss\": \"min\"}}").unwrap();
        assert_eq!(scores.len(), 1);
        assert_eq!(directions["loss"], "min");
    }

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
    }
}
