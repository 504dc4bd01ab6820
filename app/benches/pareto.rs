//! The Pareto search on the demo family against brute force (PARETO.md §7): objectives = the
//! four domains' test accuracies, task arithmetic. Prints the grid's normalised hypervolume
//! (λ ∈ {0, 0.2, …, 1} per expert, 1,296 merges), the search's with its evaluations and
//! timings, the preference map's latency, and the learned maps' Tchebycheff regret against
//! the grid on 20 held-out preferences with the hypervolume of their points.
//!
//!     cargo bench -p mergescope --bench pareto
//!     MERGESCOPE_BENCH_QUICK=1 cargo bench -p mergescope --bench pareto   # no demo routers

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::sync::Arc;
use std::time::{Duration, Instant};

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::eval::{DemoAccuracy, DemoFamily, Fidelity};
use mergescope_core::merge::recipe::Recipe;
use mergescope_core::pareto::report::{Validation, held_out_preferences, validate};
use mergescope_core::pareto::router::{train_demo_router, train_demo_router_from};
use mergescope_core::pareto::search::normalised_hypervolume;
use mergescope_core::pareto::space::{LAMBDA_RANGE, with_absolute_paths};
use mergescope_core::pareto::{
    DecisionSpace, Evaluator as _, MergeEvaluator, ObjectiveKind, Outcome, Point, PreferenceMap,
    RouterSettings, SearchEvent, SearchSettings, Source, Target, front, search,
};

fn evaluator(recipe_file: &std::path::Path) -> MergeEvaluator {
    MergeEvaluator {
        recipe_file: recipe_file.to_path_buf(),
        cwd: std::env::current_dir().expect("a working folder"),
        backend: Arc::new(Cpu),
        objective: ObjectiveKind::Demo {
            accuracy: DemoAccuracy::new().expect("the demo data"),
            fidelity: Fidelity::Full,
        },
        random_seed: 0,
    }
}

/// Every point of the grid λ_i ∈ {0, 0.2, …, 1}, evaluated on two threads.
fn grid(space: &DecisionSpace, evaluator: &MergeEvaluator, outcome: &Outcome) -> Vec<Point> {
    let steps: Vec<f64> = (0..6).map(|k| f64::from(k) * 0.2).collect();
    let mut xs = Vec::new();
    for a in &steps {
        for b in &steps {
            for c in &steps {
                for d in &steps {
                    xs.push(vec![*a, *b, *c, *d]);
                }
            }
        }
    }
    let job = Job::default();
    let halves: Vec<&[Vec<f64>]> = xs.chunks(xs.len().div_ceil(2)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = halves
            .iter()
            .map(|part| {
                let job = &job;
                scope.spawn(move || {
                    part.iter()
                        .map(|x| {
                            let recipe = space.recipe(x);
                            let evaluation = evaluator
                                .evaluate(Target::Merge(&recipe), job)
                                .expect("a grid merge");
                            Point {
                                coefficients: x.clone(),
                                scores: mergescope_core::pareto::evaluate::scores_of(
                                    &evaluation,
                                    &outcome.objectives,
                                )
                                .expect("scores"),
                                source: Source::Design,
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a grid thread"))
            .collect()
    })
}

fn timed_search(
    space: &DecisionSpace,
    evaluator: &MergeEvaluator,
) -> (Outcome, Duration, Duration) {
    let started = Instant::now();
    let mut first = None;
    let outcome = search(
        space,
        evaluator,
        &SearchSettings::default(),
        &Job::default(),
        &mut |e| {
            if matches!(e, SearchEvent::Round(_)) && first.is_none() {
                first = Some(started.elapsed());
            }
        },
    )
    .expect("the search");
    (outcome, first.unwrap_or_default(), started.elapsed())
}

fn report_validation(name: &str, v: &Validation, grid_hv: f64, seconds: f64) {
    println!(
        "{name:<46} learned in {seconds:>6.1} s; regret vs grid mean {:.4} max {:.4}; hypervolume of its 20 points {:.4} ({:.3} × grid)",
        v.mean_regret,
        v.max_regret,
        v.hypervolume_normalised,
        v.hypervolume_normalised / grid_hv
    );
}

fn main() {
    let root = std::env::temp_dir().join(format!("mergescope-pareto-bench-{}", std::process::id()));
    let family = DemoFamily::extract(&root).expect("the demo family");
    let recipe_file = family.recipe("task_arithmetic");
    let cwd = std::env::current_dir().expect("a working folder");
    let template = with_absolute_paths(
        &Recipe::from_file(&recipe_file).expect("the demo recipe"),
        &recipe_file,
        &cwd,
    )
    .expect("the demo's models");
    let evaluator = evaluator(&recipe_file);
    let space = DecisionSpace::new(template.clone(), 1, LAMBDA_RANGE).expect("a space");

    let (outcome, first, total) = timed_search(&space, &evaluator);
    let started = Instant::now();
    let grid_points = grid(&space, &evaluator, &outcome);
    let grid_seconds = started.elapsed().as_secs_f64();
    let grid_hv = normalised_hypervolume(&outcome.objectives, &outcome.normalisation, &grid_points);
    let grid_front = front::non_dominated(
        &grid_points
            .iter()
            .map(|p| outcome.maximised(&p.scores))
            .collect::<Vec<_>>(),
    );
    let search_hv = outcome.hypervolume_normalised();
    println!(
        "grid: {} merges in {grid_seconds:.1} s, {} on the front, normalised hypervolume {grid_hv:.4}",
        grid_points.len(),
        grid_front.len()
    );
    println!(
        "search: {} real evaluations ({} rounds), normalised hypervolume {search_hv:.4} = {:.3} × grid; first front after {:.2} s, whole search {:.2} s",
        outcome.evaluations(),
        outcome.rounds.len() - 1,
        search_hv / grid_hv,
        first.as_secs_f64(),
        total.as_secs_f64()
    );
    for round in &outcome.rounds {
        println!(
            "  round {}: {} evaluations, hypervolume {:.4}",
            round.round, round.evaluations, round.hypervolume_normalised
        );
    }
    for (o, s) in outcome.objectives.iter().zip(&outcome.surrogates) {
        println!(
            "  surrogate {:<20} leave-one-out R² {:.3}, RMSE {:.4} ({} points)",
            o.name, s.fit.loo_r2, s.fit.loo_rmse, s.fit.points
        );
    }

    let held_out = held_out_preferences(outcome.objectives.len());
    let job = Job::default();
    let started = Instant::now();
    let map = PreferenceMap::fit_on_surrogates(&outcome, &RouterSettings::default(), &job)
        .expect("the data-free map");
    let fitted = started.elapsed().as_secs_f64();
    let calls = 100_000;
    let started = Instant::now();
    let mut sink = 0.0;
    for i in 0..calls {
        let w = &held_out[i % held_out.len()];
        sink += map.coefficients(w)[0];
    }
    let micros = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
    println!("map: a preference's coefficients in {micros:.3} µs (checksum {sink:.1})");
    // Each map evaluated for real at the held-out preferences, against the grid.
    let check = |name: &str, map: &PreferenceMap, outcome: &Outcome, seconds: f64| {
        let v = validate(
            map,
            outcome,
            &evaluator,
            &held_out,
            &grid_points,
            &job,
            &mut |_| {},
        )
        .expect("validation");
        report_validation(name, &v, grid_hv, seconds);
    };
    check("data-free map (K = 1)", &map, &outcome, fitted);

    let quick = std::env::var_os("MERGESCOPE_BENCH_QUICK").is_some();
    for groups in [1, 2] {
        let space = DecisionSpace::new(template.clone(), groups, LAMBDA_RANGE).expect("a space");
        let (outcome, start) = if groups == 1 {
            (outcome.clone(), map.clone())
        } else {
            let (o, _, t) = timed_search(&space, &evaluator);
            println!(
                "search with {groups} layer groups: {} evaluations, hypervolume {:.4} = {:.3} × grid in {:.1} s",
                o.evaluations(),
                o.hypervolume_normalised(),
                o.hypervolume_normalised() / grid_hv,
                t.as_secs_f64()
            );
            let started = Instant::now();
            let map = PreferenceMap::fit_on_surrogates(&o, &RouterSettings::default(), &job)
                .expect("the data-free map");
            let fitted = started.elapsed().as_secs_f64();
            check(&format!("data-free map (K = {groups})"), &map, &o, fitted);
            (o, map)
        };
        // PWEMoE's initialisation, as `mergescope pareto --learn demo-router` trains it, and
        // (K = 1 only) from the data-free map.
        let starts: Vec<Option<&PreferenceMap>> = if quick {
            Vec::new()
        } else if groups == 1 {
            vec![None, Some(&start)]
        } else {
            vec![None]
        };
        for from in starts {
            let started = Instant::now();
            let settings = RouterSettings::default();
            let router = match from {
                None => train_demo_router(&outcome, &recipe_file, &cwd, &settings, &job),
                Some(start) => {
                    train_demo_router_from(start, &outcome, &recipe_file, &cwd, &settings, &job)
                }
            }
            .expect("the demo router");
            let trained = started.elapsed().as_secs_f64();
            let how = if from.is_some() {
                "from the data-free map"
            } else {
                "PWEMoE init"
            };
            check(
                &format!("demo router (K = {groups}, {how})"),
                &router,
                &outcome,
                trained,
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
