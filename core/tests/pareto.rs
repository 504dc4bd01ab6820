//! The Pareto search end to end (PARETO.md): directions on an analytic fake objective, the
//! search, its front and hypervolume on the real demo family, cancellation, and the
//! preference → coefficients maps (data-free and the demo router).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::{DemoAccuracy, DemoFamily, Fidelity, Scores};
use mergescope_core::merge::recipe::{ParamValue, Recipe, Scalar};
use mergescope_core::pareto::report::Report;
use mergescope_core::pareto::search::normalised_hypervolume;
use mergescope_core::pareto::{
    DecisionSpace, Direction, Evaluation, Evaluator, MapKind, MergeEvaluator, ObjectiveKind,
    ObjectiveSpec, Outcome, ParetoError, Point, PreferenceMap, RouterSettings, SearchEvent,
    SearchSettings, Source, Target, search,
};

// ---------------------------------------------------------------------------------------------
// Shared checks

/// a dominates b, every objective maximised (written here, not taken from `core::pareto`).
fn dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y) && a.iter().zip(b).any(|(x, y)| x > y)
}

/// Indices of the points nothing dominates, every objective maximised.
fn brute_front(maximised: &[Vec<f64>]) -> Vec<usize> {
    (0..maximised.len())
        .filter(|&i| !maximised.iter().any(|q| dominates(q, &maximised[i])))
        .collect()
}

/// The scores of `p` turned maximised by `directions` (negated for `min`).
fn maximised(scores: &[f64], directions: &[Direction]) -> Vec<f64> {
    scores
        .iter()
        .zip(directions)
        .map(|(s, d)| match d {
            Direction::Max => *s,
            Direction::Min => -*s,
        })
        .collect()
}

fn directions(outcome: &Outcome) -> Vec<Direction> {
    outcome.objectives.iter().map(|o| o.direction).collect()
}

/// Checks the outcome's front against a brute-force filter with the objectives' directions,
/// and the report's flags against it; returns the front.
fn check_front(outcome: &Outcome) -> Vec<usize> {
    let dirs = directions(outcome);
    let maxed: Vec<Vec<f64>> = outcome
        .points
        .iter()
        .map(|p| maximised(&p.scores, &dirs))
        .collect();
    let front = outcome.front();
    assert_eq!(
        front,
        brute_front(&maxed),
        "the front is the non-dominated set"
    );
    for &i in &front {
        for (k, q) in maxed.iter().enumerate() {
            assert!(
                !dominates(q, &maxed[i]),
                "point {k} dominates front point {i}"
            );
        }
    }
    let report = Report::new(outcome, Vec::new());
    assert_eq!(report.points.len(), outcome.points.len());
    for (i, entry) in report.points.iter().enumerate() {
        assert_eq!(entry.front, front.contains(&i), "report flag of point {i}");
        if !entry.front {
            assert!(
                entry.contribution.abs() < 1e-12,
                "dominated point {i} contributes"
            );
        }
    }
    front
}

// ---------------------------------------------------------------------------------------------
// Directions, on an analytic objective

/// Two models, two objectives computed from the recipe's weights λ = (x, y):
/// `a` = 1 − (x − 1)² − ½y² (declared max) and `loss` = (y − 1)² + ½x² (declared as given).
/// The base (λ = 0) scores a = 0, loss = 1; model a (1, 0): a = 1, loss = 1.5; model b
/// (0, 1): a = −0.5, loss = 0.
struct Analytic {
    loss: Direction,
    /// Every call in order: `input FOLDER` or `merge`.
    calls: Mutex<Vec<String>>,
}

const FAKE_BASE: &str = "/nonexistent/pareto-fake/base";
const FAKE_MODELS: [&str; 2] = ["/nonexistent/pareto-fake/a", "/nonexistent/pareto-fake/b"];

fn analytic(x: f64, y: f64) -> (f64, f64) {
    (
        1.0 - (x - 1.0).powi(2) - 0.5 * y * y,
        (y - 1.0).powi(2) + 0.5 * x * x,
    )
}

/// The per-model weights of a task-arithmetic recipe over the fake models.
fn fake_weights(recipe: &Recipe) -> (f64, f64) {
    let weight = |model: &str| {
        let entry = recipe
            .models
            .iter()
            .find(|e| e.model == model)
            .unwrap_or_else(|| panic!("{model} is not in the recipe"));
        match entry.parameters.get("weight") {
            Some(ParamValue::Scalar(Scalar::Number(v))) => *v,
            other => panic!("{model}: weight {other:?}"),
        }
    };
    (weight(FAKE_MODELS[0]), weight(FAKE_MODELS[1]))
}

impl Evaluator for Analytic {
    fn describe(&self) -> String {
        "analytic".to_owned()
    }

    fn evaluate(&self, target: Target<'_>, job: &Job) -> Result<Evaluation, ParetoError> {
        job.check_cancelled().map_err(|_| ParetoError::Cancelled)?;
        let recipe = match target {
            Target::Merge(recipe) => {
                self.calls.lock().unwrap().push("merge".to_owned());
                recipe
            }
            Target::Input { folder, recipe } => {
                self.calls
                    .lock()
                    .unwrap()
                    .push(format!("input {}", folder.display()));
                recipe
            }
        };
        assert_eq!(recipe.merge_method, "task_arithmetic");
        let (x, y) = fake_weights(recipe);
        let (a, loss) = analytic(x, y);
        let scores: Scores = [("a".to_owned(), a), ("loss".to_owned(), loss)]
            .into_iter()
            .collect();
        Ok(Evaluation {
            scores,
            directions: Default::default(),
        })
    }

    fn objectives(&self, first: &Evaluation) -> Result<Vec<ObjectiveSpec>, ParetoError> {
        assert!(first.scores.contains_key("a") && first.scores.contains_key("loss"));
        Ok(vec![
            ObjectiveSpec::maximised("a"),
            ObjectiveSpec {
                name: "loss".to_owned(),
                direction: self.loss,
                unit_interval: false,
            },
        ])
    }

    fn model_paths(&self, recipe: &Recipe) -> Result<(Option<PathBuf>, Vec<PathBuf>), ParetoError> {
        assert_eq!(recipe.base_model.as_deref(), Some(FAKE_BASE));
        Ok((
            Some(PathBuf::from(FAKE_BASE)),
            FAKE_MODELS.iter().map(PathBuf::from).collect(),
        ))
    }
}

fn fake_space() -> DecisionSpace {
    let yaml = format!(
        "merge_method: task_arithmetic\nbase_model: {FAKE_BASE}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.3}}\n  - model: {}\n    parameters: {{weight: 0.3}}\n",
        FAKE_MODELS[0], FAKE_MODELS[1]
    );
    let template = Recipe::from_yaml(&yaml, Path::new("fake.yml")).unwrap();
    DecisionSpace::new(template, 1, (0.0, 1.2)).unwrap()
}

/// The normalised hypervolume of 2-D maximised points, by a sweep written here.
fn sweep_hypervolume(normalised: &[Vec<f64>]) -> f64 {
    let mut inside: Vec<&Vec<f64>> = normalised
        .iter()
        .filter(|p| p[0] > 0.0 && p[1] > 0.0)
        .collect();
    inside.sort_by(|p, q| q[0].total_cmp(&p[0]));
    let mut volume = 0.0;
    let mut height = 0.0f64;
    for (i, p) in inside.iter().enumerate() {
        height = height.max(p[1]);
        let next = inside.get(i + 1).map_or(0.0, |q| q[0]);
        volume += (p[0] - next) * height;
    }
    volume
}

struct FakeRun {
    outcome: Outcome,
    calls: Vec<String>,
    events: Vec<Point>,
}

fn run_fake(loss: Direction, budget: usize) -> FakeRun {
    let evaluator = Analytic {
        loss,
        calls: Mutex::new(Vec::new()),
    };
    let mut events = Vec::new();
    let settings = SearchSettings {
        budget,
        ..SearchSettings::default()
    };
    let outcome = search(
        &fake_space(),
        &evaluator,
        &settings,
        &Job::default(),
        &mut |event| {
            if let SearchEvent::Point(p) = event {
                events.push(p.clone());
            }
        },
    )
    .unwrap();
    FakeRun {
        outcome,
        calls: evaluator.calls.into_inner().unwrap(),
        events,
    }
}

/// What holds for either direction of `loss`.
fn check_fake_run(run: &FakeRun, budget: usize) {
    let FakeRun {
        outcome,
        calls,
        events,
    } = run;
    // The inputs first, base then each model, then merges only.
    let inputs: Vec<String> = std::iter::once(FAKE_BASE)
        .chain(FAKE_MODELS)
        .map(|f| format!("input {f}"))
        .collect();
    assert_eq!(calls[..3], inputs[..], "{calls:?}");
    assert!(calls[3..].iter().all(|c| c == "merge"), "{calls:?}");
    assert!(
        calls.len() <= budget,
        "{} evaluations for a budget of {budget}",
        calls.len()
    );
    assert!(
        calls.len() > 6,
        "the search stopped after {} evaluations",
        calls.len()
    );
    // Every real evaluation is announced once.
    assert_eq!(events.len(), calls.len());
    assert_eq!(
        outcome.rounds.last().unwrap().evaluations,
        calls.len(),
        "the last round counts every evaluation"
    );
    // Each point carries the scores of its own coefficients (recipes round weights to 1e-4).
    for p in outcome.inputs.iter().chain(&outcome.points) {
        let (a, loss) = analytic(p.coefficients[0], p.coefficients[1]);
        assert!(
            (p.scores[0] - a).abs() < 1e-3 && (p.scores[1] - loss).abs() < 1e-3,
            "{p:?}: expected a = {a}, loss = {loss}"
        );
        for &c in &p.coefficients {
            assert!((0.0..=1.2).contains(&c), "{p:?} leaves the box");
        }
    }
    assert_eq!(outcome.inputs.len(), 3);
    assert_eq!(outcome.inputs[0].coefficients, [0.0, 0.0]);
    assert_eq!(outcome.inputs[0].source, Source::Input("base".to_owned()));
    assert_eq!(outcome.inputs[1].coefficients, [1.0, 0.0]);
    assert_eq!(outcome.inputs[2].coefficients, [0.0, 1.0]);

    check_front(outcome);

    // The hypervolume is the sweep's over g = (f − r)/(z − r) with f the maximised scores.
    let dirs = directions(outcome);
    let r = &outcome.normalisation.reference;
    let z = &outcome.normalisation.ideal;
    let normalised: Vec<Vec<f64>> = outcome
        .points
        .iter()
        .map(|p| {
            maximised(&p.scores, &dirs)
                .iter()
                .enumerate()
                .map(|(j, f)| (f - r[j]) / (z[j] - r[j]))
                .collect()
        })
        .collect();
    let expected = sweep_hypervolume(&normalised);
    assert!(expected > 0.0);
    assert!(
        (outcome.hypervolume_normalised() - expected).abs() < 1e-9,
        "{} vs {expected}",
        outcome.hypervolume_normalised()
    );
    let box_volume = (z[0] - r[0]) * (z[1] - r[1]);
    assert!((outcome.hypervolume() - expected * box_volume).abs() < 1e-9);
}

#[test]
fn a_minimised_loss_is_preferred_lower() {
    let budget = 30;
    let run = run_fake(Direction::Min, budget);
    check_fake_run(&run, budget);
    let outcome = &run.outcome;
    assert_eq!(outcome.objectives[1].direction, Direction::Min);

    // Reference = the base (a = 0, loss = 1), ideal = the best input on each objective
    // (a = 1 from model a, loss = 0 from model b), both maximised inside…
    assert_eq!(outcome.normalisation.reference, [0.0, -1.0]);
    assert_eq!(outcome.normalisation.ideal, [1.0, 0.0]);
    // …and in the loss's own units in the report.
    let report = Report::new(outcome, Vec::new());
    assert_eq!(report.reference, [0.0, 1.0]);
    assert_eq!(report.ideal, [1.0, 0.0]);
    assert_eq!(report.objectives[1].name, "loss");
    assert_eq!(report.objectives[1].direction, Direction::Min);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["objectives"][1]["direction"], "min");

    // Model b (loss 0, the lowest anywhere) is on the front; the base is dominated by the
    // equal point λ = (0.3, 0.3) (a 0.465 > 0, loss 0.535 < 1).
    let front = outcome.front();
    let at = |x: [f64; 2]| {
        outcome
            .points
            .iter()
            .position(|p| {
                (p.coefficients[0] - x[0]).abs() < 1e-9 && (p.coefficients[1] - x[1]).abs() < 1e-9
            })
            .unwrap_or_else(|| panic!("no point at {x:?}"))
    };
    assert!(front.contains(&at([0.0, 1.0])), "model b is off the front");
    assert!(!front.contains(&at([0.0, 0.0])), "the base is on the front");
    // Every front point has a loss no other point with at least its `a` beats.
    for &i in &front {
        let p = &outcome.points[i];
        assert!(
            !outcome
                .points
                .iter()
                .any(|q| q.scores[0] >= p.scores[0] && q.scores[1] < p.scores[1]),
            "a point with as much `a` and a lower loss than {p:?}"
        );
    }
    // A preference all on the loss snaps to the lowest loss.
    let best = outcome.best_for(&[0.0, 1.0]).unwrap();
    let lowest = outcome
        .points
        .iter()
        .map(|p| p.scores[1])
        .fold(f64::INFINITY, f64::min);
    assert_eq!(outcome.points[best].scores[1], lowest);

    // Lowering a point's loss adds hypervolume; raising it takes some away.
    let point = |a: f64, loss: f64| Point {
        coefficients: vec![0.5, 0.5],
        scores: vec![a, loss],
        source: Source::Design,
    };
    let hv = |loss: f64| {
        normalised_hypervolume(
            &outcome.objectives,
            &outcome.normalisation,
            &[point(0.5, loss)],
        )
    };
    assert!((hv(0.5) - 0.25).abs() < 1e-12, "{}", hv(0.5));
    assert!(hv(0.3) > hv(0.5));
    assert_eq!(hv(1.2), 0.0, "a loss above the base's adds no volume");

    // Declared the other way, the same evaluations make a different front.
    let dirs = [Direction::Max, Direction::Max];
    let wrong = brute_front(
        &outcome
            .points
            .iter()
            .map(|p| maximised(&p.scores, &dirs))
            .collect::<Vec<_>>(),
    );
    assert_ne!(front, wrong);
}

#[test]
fn a_loss_declared_max_is_maximised() {
    let budget = 30;
    let run = run_fake(Direction::Max, budget);
    check_fake_run(&run, budget);
    let outcome = &run.outcome;
    // Reference = the base (0, 1); ideal: a = 1, loss = 1.5 (both from model a).
    assert_eq!(outcome.normalisation.reference, [0.0, 1.0]);
    assert_eq!(outcome.normalisation.ideal, [1.0, 1.5]);
    let report = Report::new(outcome, Vec::new());
    assert_eq!(report.reference, [0.0, 1.0]);
    assert_eq!(report.ideal, [1.0, 1.5]);

    let front = outcome.front();
    let at = |x: [f64; 2]| {
        outcome
            .points
            .iter()
            .position(|p| {
                (p.coefficients[0] - x[0]).abs() < 1e-9 && (p.coefficients[1] - x[1]).abs() < 1e-9
            })
            .unwrap()
    };
    // Model b (a −0.5, loss 0) is now worse than the base on both.
    assert!(!front.contains(&at([0.0, 1.0])));
    // Every front point lies near y = 0, where the loss is largest for its `a`.
    for &i in &front {
        assert!(
            outcome.points[i].coefficients[1] < 0.5,
            "{:?} is on the front of a maximised loss",
            outcome.points[i]
        );
    }
    // A preference all on the loss snaps to a point with the highest loss, or one beyond
    // the ideal (there Tchebycheff counts every excess as met and the 1e-6 weight on `a`
    // breaks the tie).
    let best = outcome.best_for(&[0.0, 1.0]).unwrap();
    let highest = outcome
        .points
        .iter()
        .map(|p| p.scores[1])
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        outcome.points[best].scores[1] >= highest.min(1.5),
        "{:?}; the highest loss is {highest}",
        outcome.points[best]
    );

    // The same search with the loss minimised ends on a different front.
    let minimised = run_fake(Direction::Min, budget);
    assert_ne!(
        minimised
            .outcome
            .front()
            .iter()
            .map(|&i| minimised.outcome.points[i].coefficients.clone())
            .collect::<Vec<_>>(),
        front
            .iter()
            .map(|&i| outcome.points[i].coefficients.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_reported_evaluations_are_the_real_ones() {
    // The inputs are points of plain task arithmetic's space, copied into `points` without a
    // new evaluation (search.rs): the report must not count them twice.
    let budget = 20;
    let run = run_fake(Direction::Min, budget);
    assert_eq!(
        run.outcome.evaluations(),
        run.calls.len(),
        "Outcome::evaluations against the evaluator's {} calls ({} inputs, {} points)",
        run.calls.len(),
        run.outcome.inputs.len(),
        run.outcome.points.len()
    );
    assert!(run.outcome.evaluations() <= budget);
}

#[test]
fn settings_out_of_range_are_refused_before_any_evaluation() {
    let evaluator = Analytic {
        loss: Direction::Min,
        calls: Mutex::new(Vec::new()),
    };
    for budget in [0, 4, 10_001] {
        let settings = SearchSettings {
            budget,
            ..SearchSettings::default()
        };
        let e = search(
            &fake_space(),
            &evaluator,
            &settings,
            &Job::default(),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&e, ParetoError::Settings(m) if m.contains("5 to 10000")),
            "budget {budget}: {e}"
        );
    }
    assert!(evaluator.calls.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The demo family

/// Test images per domain of each real evaluation. At 48 the accuracies move in steps of
/// 2.1 points and the 30 evaluations found no merge strictly above the base on all four
/// domains (ties at the reference span no volume); 64 does.
const SUBSAMPLE: usize = 64;
const BUDGET: usize = 30;

/// Counts the evaluations that finished.
struct Counting<'a> {
    inner: &'a dyn Evaluator,
    done: AtomicUsize,
}

impl Evaluator for Counting<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn evaluate(&self, target: Target<'_>, job: &Job) -> Result<Evaluation, ParetoError> {
        let evaluation = self.inner.evaluate(target, job)?;
        self.done.fetch_add(1, Ordering::SeqCst);
        Ok(evaluation)
    }

    fn objectives(&self, first: &Evaluation) -> Result<Vec<ObjectiveSpec>, ParetoError> {
        self.inner.objectives(first)
    }

    fn model_paths(&self, recipe: &Recipe) -> Result<(Option<PathBuf>, Vec<PathBuf>), ParetoError> {
        self.inner.model_paths(recipe)
    }
}

struct Demo {
    family: DemoFamily,
    evaluator: MergeEvaluator,
    space: DecisionSpace,
}

/// The demo family (extracted once under Cargo's scratch folder for tests), its task
/// arithmetic recipe with absolute paths, and an evaluator of subsampled test accuracies.
fn demo() -> Demo {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pareto-demo");
    let family = DemoFamily::extract(&root).unwrap();
    let file = family.recipe("task_arithmetic");
    let cwd = family.root.join("recipes");
    let template = mergescope_core::pareto::space::with_absolute_paths(
        &Recipe::from_file(&file).unwrap(),
        &file,
        &cwd,
    )
    .unwrap();
    let space = DecisionSpace::new(template, 1, (0.0, 1.2)).unwrap();
    let evaluator = MergeEvaluator {
        recipe_file: file,
        cwd,
        backend: Arc::new(Cpu),
        objective: ObjectiveKind::Demo {
            accuracy: DemoAccuracy::new().unwrap(),
            fidelity: Fidelity::Subsample(SUBSAMPLE),
        },
        random_seed: 0,
    };
    Demo {
        family,
        evaluator,
        space,
    }
}

struct Searched {
    demo: Demo,
    outcome: Outcome,
    /// Every event in order; for points, the evaluations finished when it came.
    events: Vec<(SearchEvent, usize)>,
    evaluations: usize,
}

/// One search of the demo family, shared by the tests that read it.
fn searched() -> &'static Searched {
    static SEARCHED: OnceLock<Searched> = OnceLock::new();
    SEARCHED.get_or_init(|| {
        let demo = demo();
        let counting = Counting {
            inner: &demo.evaluator,
            done: AtomicUsize::new(0),
        };
        let mut events = Vec::new();
        let started = Instant::now();
        let outcome = search(
            &demo.space,
            &counting,
            &SearchSettings {
                budget: BUDGET,
                ..SearchSettings::default()
            },
            &Job::default(),
            &mut |event| events.push((event.clone(), counting.done.load(Ordering::SeqCst))),
        )
        .unwrap();
        eprintln!(
            "demo search: {} evaluations in {:.1} s",
            counting.done.load(Ordering::SeqCst),
            started.elapsed().as_secs_f64()
        );
        let evaluations = counting.done.load(Ordering::SeqCst);
        Searched {
            demo,
            outcome,
            events,
            evaluations,
        }
    })
}

fn mean(scores: &[f64]) -> f64 {
    scores.iter().sum::<f64>() / scores.len() as f64
}

#[test]
fn the_demo_front_beats_the_base_and_every_expert_on_the_mean() {
    let Searched {
        outcome,
        evaluations,
        ..
    } = searched();
    let names: Vec<&str> = outcome.objectives.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "upright/accuracy",
            "rotated/accuracy",
            "mirrored/accuracy",
            "inverted/accuracy"
        ]
    );
    assert!(
        outcome
            .objectives
            .iter()
            .all(|o| o.direction == Direction::Max)
    );
    assert!(*evaluations <= BUDGET, "{evaluations} evaluations");
    assert_eq!(outcome.rounds.last().unwrap().evaluations, *evaluations);
    assert!(
        outcome.rounds.len() >= 2,
        "no round after the design: {:?}",
        outcome.rounds
    );

    // The reference is the base's scores, the ideal the best input on each objective.
    let base = &outcome.inputs[0];
    assert_eq!(base.source, Source::Input("base".to_owned()));
    assert_eq!(outcome.normalisation.reference, base.scores);
    for j in 0..4 {
        let best = outcome
            .inputs
            .iter()
            .map(|p| p.scores[j])
            .fold(f64::NEG_INFINITY, f64::max);
        if best > base.scores[j] {
            assert_eq!(outcome.normalisation.ideal[j], best);
        } else {
            // Nothing beats the base there: the box is kept from being flat.
            assert!(outcome.normalisation.ideal[j] > base.scores[j]);
        }
        // The expert of domain j is at least as good there as the base.
        assert!(
            outcome.inputs[j + 1].scores[j] >= base.scores[j],
            "expert {j}"
        );
    }

    let front = check_front(outcome);
    let best_input = outcome
        .inputs
        .iter()
        .map(|p| mean(&p.scores))
        .fold(f64::NEG_INFINITY, f64::max);
    let best_merge = front
        .iter()
        .map(|&i| &outcome.points[i])
        .filter(|p| !matches!(p.source, Source::Input(_)))
        .map(|p| mean(&p.scores))
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(
        best_merge > best_input,
        "the front's best mean {best_merge} does not beat the best input's {best_input}: {:?}",
        outcome.inputs
    );
    assert!(outcome.hypervolume_normalised() > 0.0);
    assert!(outcome.hypervolume() > 0.0);
    // The rounds' hypervolume never shrinks (points are only added).
    for pair in outcome.rounds.windows(2) {
        assert!(pair[1].hypervolume_normalised >= pair[0].hypervolume_normalised - 1e-12);
    }
    let report = Report::new(outcome, Vec::new());
    assert_eq!(
        report.reference, base.scores,
        "accuracies are maximised: own units"
    );
    assert!((report.hypervolume_normalised - outcome.hypervolume_normalised()).abs() < 1e-15);
}

#[test]
fn points_are_announced_as_they_are_evaluated() {
    let Searched {
        outcome,
        events,
        evaluations,
        ..
    } = searched();
    let SearchEvent::Objectives {
        objectives,
        normalisation,
    } = &events[0].0
    else {
        panic!("the first event is {:?}", events[0].0);
    };
    assert_eq!(objectives, &outcome.objectives);
    assert_eq!(normalisation, &outcome.normalisation);
    let points: Vec<(&Point, usize)> = events
        .iter()
        .filter_map(|(e, done)| match e {
            SearchEvent::Point(p) => Some((p, *done)),
            _ => None,
        })
        .collect();
    assert_eq!(points.len(), *evaluations, "one event per real evaluation");
    let inputs = outcome.inputs.len();
    assert_eq!(inputs, 5);
    for (n, (p, done)) in points.iter().enumerate() {
        if n < inputs {
            // The inputs are announced once all five are scored (they fix the normalisation).
            assert_eq!(*p, &outcome.inputs[n]);
            assert_eq!(*done, inputs);
        } else {
            // A merge is announced right after its own evaluation, before the next one.
            assert_eq!(*done, n + 1, "point {n} announced after {done} evaluations");
            assert!(outcome.points.contains(p), "{p:?} is not in the outcome");
        }
    }
    // Every merge of the outcome was announced (the inputs' copies excepted).
    for p in outcome
        .points
        .iter()
        .filter(|p| !matches!(p.source, Source::Input(_)))
    {
        assert!(points.iter().any(|(q, _)| *q == p));
    }
    let rounds = events
        .iter()
        .filter(|(e, _)| matches!(e, SearchEvent::Round(_)))
        .count();
    assert_eq!(rounds, outcome.rounds.len());
}

#[test]
fn a_cancelled_search_stops_with_cancelled() {
    let demo = demo();
    let counting = Counting {
        inner: &demo.evaluator,
        done: AtomicUsize::new(0),
    };
    let job = Job::default();
    let cancel = job.cancel.clone();
    // Five inputs, then two design points: cancelled while the third design point is due.
    let k = 7;
    let mut points = 0;
    let result = search(
        &demo.space,
        &counting,
        &SearchSettings {
            budget: BUDGET,
            ..SearchSettings::default()
        },
        &job,
        &mut |event| {
            if matches!(event, SearchEvent::Point(_)) {
                points += 1;
                if points == k {
                    cancel.cancel();
                }
            }
        },
    );
    assert!(matches!(result, Err(ParetoError::Cancelled)), "{result:?}");
    assert_eq!(points, k, "no point after the cancel");
    assert_eq!(counting.done.load(Ordering::SeqCst), k);
    // The data-free map stops too.
    let outcome = &searched().outcome;
    let e =
        PreferenceMap::fit_on_surrogates(outcome, &RouterSettings::default(), &job).unwrap_err();
    assert!(matches!(e, ParetoError::Cancelled), "{e}");
}

fn concentrated(j: usize) -> Vec<f64> {
    (0..4).map(|i| if i == j { 0.85 } else { 0.05 }).collect()
}

fn score_of(evaluator: &dyn Evaluator, recipe: &Recipe, objectives: &[ObjectiveSpec]) -> Vec<f64> {
    let evaluation = evaluator
        .evaluate(Target::Merge(recipe), &Job::default())
        .unwrap();
    objectives
        .iter()
        .map(|o| evaluation.scores[&o.name])
        .collect()
}

#[test]
fn the_data_free_map_follows_the_preference() {
    let Searched { demo, outcome, .. } = searched();
    let started = Instant::now();
    let map = PreferenceMap::fit_on_surrogates(
        outcome,
        &RouterSettings {
            steps: 300,
            ..RouterSettings::default()
        },
        &Job::default(),
    )
    .unwrap();
    eprintln!("data-free map: {:.2} s", started.elapsed().as_secs_f64());
    assert_eq!(map.kind, MapKind::Surrogate);
    assert_eq!(map.objectives, outcome.objectives);
    assert_eq!(map.weights.len(), 4);
    assert_eq!(map.bias.len(), 4);

    let uniform = vec![0.25; 4];
    let at_uniform = score_of(&demo.evaluator, &map.recipe(&uniform), &outcome.objectives);
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for j in 0..4 {
        let w = concentrated(j);
        let x = map.coefficients(&w);
        assert!(
            x.iter().all(|v| v.is_finite() && (0.0..=1.2).contains(v)),
            "{x:?}"
        );
        // The recipe is the one of these coefficients.
        assert_eq!(map.recipe(&w), map.space.recipe(&x));
        let scores = score_of(&demo.evaluator, &map.recipe(&w), &outcome.objectives);
        report.push(format!(
            "task {j}: λ {x:.3?} scores {:.3} (uniform {:.3})",
            scores[j], at_uniform[j]
        ));
        if scores[j] <= at_uniform[j] {
            failures.push(j);
        }
    }
    eprintln!(
        "uniform λ {:.3?} scores {at_uniform:.3?}\n{}",
        map.coefficients(&uniform),
        report.join("\n")
    );
    assert!(
        failures.is_empty(),
        "tasks {failures:?} score no higher at their own preference than at the uniform one:\n{}",
        report.join("\n")
    );
}

fn preferences() -> Vec<Vec<f64>> {
    vec![
        vec![0.25; 4],
        concentrated(0),
        concentrated(3),
        vec![0.1, 0.2, 0.3, 0.4],
    ]
}

fn flat_weights(map: &PreferenceMap) -> Vec<f64> {
    map.weights.iter().flatten().copied().collect()
}

fn small_map() -> PreferenceMap {
    PreferenceMap::fit_on_surrogates(
        &searched().outcome,
        &RouterSettings {
            steps: 50,
            ..RouterSettings::default()
        },
        &Job::default(),
    )
    .unwrap()
}

/// Bit for bit (serde_json parses with its `float_roundtrip` feature: its default parser may
/// land one ulp off the printed shortest representation).
#[test]
fn a_saved_map_gives_the_same_coefficients_bit_for_bit() {
    let map = small_map();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    map.save(&path).unwrap();
    let loaded = PreferenceMap::load(&path).unwrap();
    assert_eq!(loaded, map);
    for w in preferences() {
        let bits = |x: Vec<f64>| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(map.coefficients(&w)), bits(loaded.coefficients(&w)));
    }
}

#[test]
fn a_map_survives_a_save_and_a_corrupted_file_is_named() {
    let map = small_map();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.json");
    map.save(&path).unwrap();
    let loaded = PreferenceMap::load(&path).unwrap();
    assert_eq!(loaded.kind, map.kind);
    assert_eq!(loaded.objectives, map.objectives);
    assert_eq!(loaded.space, map.space);
    let close = |a: &[f64], b: &[f64]| {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| (x - y).abs() <= 1e-12 * x.abs().max(1.0))
    };
    assert!(close(&loaded.bias, &map.bias));
    assert!(close(&flat_weights(&loaded), &flat_weights(&map)));
    for w in preferences() {
        assert!(
            close(&map.coefficients(&w), &loaded.coefficients(&w)),
            "{w:?}"
        );
        assert_eq!(map.recipe(&w), loaded.recipe(&w));
    }
    // The saved map is usable on its own: its template has absolute model paths.
    for entry in &loaded.space.template.models {
        assert!(Path::new(&entry.model).is_absolute(), "{}", entry.model);
    }

    let text = std::fs::read_to_string(&path).unwrap();
    let check = |file: &Path, needle: &str| {
        let e = PreferenceMap::load(file).unwrap_err();
        match &e {
            ParetoError::MapFile { path, message } => {
                assert_eq!(path, file);
                assert!(message.contains(needle), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains(&file.display().to_string()), "{e}");
    };
    let truncated = dir.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    check(&truncated, "not a mergescope preference map");
    // Valid JSON with a router of the wrong shape.
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["bias"].as_array_mut().unwrap().pop();
    let short = dir.path().join("short.json");
    std::fs::write(&short, value.to_string()).unwrap();
    check(&short, "router must have 4 rows");
    check(&dir.path().join("missing.json"), "cannot read it");
}

#[test]
fn the_demo_router_trains_a_little() {
    let Searched { demo, outcome, .. } = searched();
    let started = Instant::now();
    let steps = 12;
    let map = mergescope_core::pareto::router::train_demo_router(
        outcome,
        &demo.family.recipe("task_arithmetic"),
        &demo.family.root,
        &RouterSettings {
            steps,
            ..RouterSettings::default()
        },
        &Job::default(),
    )
    .unwrap();
    eprintln!(
        "demo router: {steps} steps in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(map.kind, MapKind::DemoRouter);
    assert_eq!(map.weights.len(), 4);
    assert!(map.weights.iter().all(|r| r.len() == 4));
    assert!(
        map.weights
            .iter()
            .flatten()
            .chain(&map.bias)
            .all(|v| v.is_finite()),
        "{map:?}"
    );
    // It moved from its start (A ~ N(0, 0.01), b = 0.3 everywhere).
    assert!(
        map.bias.iter().any(|b| (b - 0.3).abs() > 1e-3),
        "the bias is still {:?}",
        map.bias
    );
    for w in [vec![0.25; 4], concentrated(1)] {
        let x = map.coefficients(&w);
        assert!(x.iter().all(|v| (0.0..=1.2).contains(v)), "{x:?}");
    }
}
