//! `mergescope pareto` as a real process: the demo family's front, its JSON and map, recipes
//! from the map that `mergescope merge` runs, layer groups, a `cmd:` objective with its
//! directions, and the one-line errors.

use std::path::{Path, PathBuf};

use mergescope_core::merge::recipe::{ParamValue, Recipe, Scalar};
use mergescope_tests::cli::{run, run_with_env};
use mergescope_tests::numbers;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");
const DOMAINS: [&str; 4] = ["upright", "rotated", "mirrored", "inverted"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn demo() -> PathBuf {
    repo().join("assets/demo")
}

/// The shipped recipe's folder: its `../base` resolves the same from there and from the file.
fn recipes() -> PathBuf {
    demo().join("recipes")
}

fn recipe_path() -> String {
    recipes().join("task_arithmetic.yml").display().to_string()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// The objectives' names and whether each is maximised.
fn objectives(report: &Value) -> Vec<(String, bool)> {
    report["objectives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let direction = o["direction"].as_str().unwrap();
            assert!(direction == "max" || direction == "min", "{o}");
            (o["name"].as_str().unwrap().to_owned(), direction == "max")
        })
        .collect()
}

/// Checks the JSON's points against its objectives: every entry has the fields, the `front`
/// flags are exactly the non-dominated points (recomputed here with the directions), and the
/// counts agree with the budget. Returns the points.
fn check_report(report: &Value, models: &[&str], groups: usize, budget: usize) -> Vec<Value> {
    let objectives = objectives(report);
    let m = objectives.len();
    assert_eq!(numbers(&report["reference"]).len(), m);
    assert_eq!(numbers(&report["ideal"]).len(), m);
    assert_eq!(report["layer_groups"], groups);
    let labels: Vec<&str> = report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(labels, models);
    let hv = report["hypervolume"].as_f64().unwrap();
    let hv_normalised = report["hypervolume_normalised"].as_f64().unwrap();
    assert!(hv.is_finite() && hv >= 0.0, "{hv}");
    assert!(
        hv_normalised.is_finite() && hv_normalised >= 0.0,
        "{hv_normalised}"
    );
    let evaluations = report["evaluations"].as_u64().unwrap() as usize;
    assert!(
        evaluations <= budget,
        "{evaluations} evaluations for a budget of {budget}"
    );
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(
        rounds.last().unwrap()["evaluations"].as_u64().unwrap() as usize,
        evaluations
    );

    let points = report["points"].as_array().unwrap().clone();
    assert!(points.len() > models.len(), "{} points", points.len());
    let mut maximised = Vec::new();
    for p in &points {
        let coefficients = p["coefficients"].as_object().unwrap();
        assert_eq!(
            coefficients.keys().map(String::as_str).collect::<Vec<_>>(),
            models,
            "{p}"
        );
        for c in coefficients.values() {
            let values = if groups == 1 {
                vec![
                    c.as_f64()
                        .unwrap_or_else(|| panic!("one number per model: {p}")),
                ]
            } else {
                numbers(c)
            };
            assert_eq!(values.len(), groups, "{p}");
            assert!(values.iter().all(|v| (0.0..=1.2).contains(v)), "{p}");
        }
        let scores = p["scores"].as_object().unwrap();
        assert_eq!(scores.len(), m, "{p}");
        let row: Vec<f64> = objectives
            .iter()
            .map(|(name, max)| {
                let v = scores[name].as_f64().unwrap();
                if *max { v } else { -v }
            })
            .collect();
        maximised.push(row);
        assert!(p["front"].is_boolean(), "{p}");
        assert!(p["contribution"].as_f64().unwrap() >= 0.0, "{p}");
        assert!(p["source"].is_string(), "{p}");
    }
    let dominates = |a: &[f64], b: &[f64]| {
        a.iter().zip(b).all(|(x, y)| x >= y) && a.iter().zip(b).any(|(x, y)| x > y)
    };
    for (i, p) in points.iter().enumerate() {
        let dominated = maximised.iter().any(|q| dominates(q, &maximised[i]));
        assert_eq!(p["front"].as_bool().unwrap(), !dominated, "point {i}: {p}");
    }
    assert!(points.iter().any(|p| p["front"] == true));
    points
}

/// The weight of each model of a recipe `mergescope pareto` wrote.
fn weights(recipe: &Path) -> Vec<ParamValue> {
    let recipe = Recipe::from_file(recipe).unwrap();
    assert_eq!(recipe.merge_method, "task_arithmetic");
    assert!(recipe.base_model.is_some());
    recipe
        .models
        .iter()
        .map(|e| {
            assert!(Path::new(&e.model).is_absolute(), "{}", e.model);
            e.parameters
                .get("weight")
                .unwrap_or_else(|| panic!("{} has no weight", e.model))
                .clone()
        })
        .collect()
}

fn number(value: &Scalar) -> f64 {
    match value {
        Scalar::Number(v) => *v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_demo_search_writes_a_front_a_report_and_a_map_that_makes_recipes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("front.json");
    let map = dir.path().join("map.json");
    let started = std::time::Instant::now();
    let recipe = recipe_path();
    let ran = run(
        BIN,
        &recipes(),
        &[
            "pareto",
            &recipe,
            "--objective",
            "demo",
            "--subsample",
            "48",
            "--budget",
            "25",
            "--json",
            &s(&json),
            "--map",
            &s(&map),
            "--learn",
            "surrogate",
            "--router-steps",
            "200",
            "--backend",
            "cpu",
        ],
    );
    ran.assert_success();
    eprintln!("pareto (demo): {:.1} s", started.elapsed().as_secs_f64());
    let out = ran.stdout();
    assert!(
        out.lines().any(|l| l.starts_with("front: ")),
        "no front line:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("hypervolume ")),
        "no hypervolume line:\n{out}"
    );
    for name in ["base", "upright", "inverted"] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    assert!(
        ran.stderr().contains("objectives: upright/accuracy (max)"),
        "{}",
        ran.stderr()
    );

    let report = read_json(&json);
    assert_eq!(report["method"], "task_arithmetic");
    let names: Vec<(String, bool)> = objectives(&report);
    assert_eq!(
        names,
        DOMAINS
            .iter()
            .map(|d| (format!("{d}/accuracy"), true))
            .collect::<Vec<_>>()
    );
    let points = check_report(&report, &DOMAINS, 1, 25);
    // The reference is the base's scores, the ideal the best input on each domain.
    let inputs = report["inputs"].as_array().unwrap();
    assert_eq!(inputs.len(), 5);
    assert_eq!(inputs[0]["source"], "input base");
    let reference = numbers(&report["reference"]);
    let ideal = numbers(&report["ideal"]);
    for (j, d) in DOMAINS.iter().enumerate() {
        let name = format!("{d}/accuracy");
        assert_eq!(inputs[0]["scores"][&name].as_f64().unwrap(), reference[j]);
        let best = inputs
            .iter()
            .map(|p| p["scores"][&name].as_f64().unwrap())
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(ideal[j] >= best && ideal[j] > reference[j], "{d}");
        assert!((0.0..=1.0).contains(&reference[j]));
    }
    assert!(
        points
            .iter()
            .any(|p| p["source"].as_str().unwrap().starts_with("round "))
    );

    // The map's validation: the 20 Das–Dennis preferences of 3 divisions, each evaluated.
    let validation = report["validation"].as_array().unwrap();
    assert_eq!(validation.len(), 1);
    assert_eq!(validation[0]["kind"], "surrogate");
    let entries = validation[0]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 20);
    for e in entries {
        let w = numbers(&e["preference"]);
        assert_eq!(w.len(), 4);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{e}");
        assert_eq!(numbers(&e["coefficients"]).len(), 4);
        assert!(
            numbers(&e["scores"])
                .iter()
                .all(|v| (0.0..=1.0).contains(v)),
            "{e}"
        );
        assert!(e["regret"].as_f64().unwrap().is_finite(), "{e}");
    }
    let saved = read_json(&map);
    assert_eq!(saved["kind"], "surrogate");
    assert_eq!(saved["weights"].as_array().unwrap().len(), 4);

    // The map turns a preference into a recipe that merges.
    let out_recipe = dir.path().join("r.yml");
    let ran = run(
        BIN,
        dir.path(),
        &[
            "pareto",
            "--map",
            &s(&map),
            "--preference",
            "0.7,0.1,0.1,0.1",
            "--recipe-out",
            &s(&out_recipe),
        ],
    );
    ran.assert_success();
    let printed: Vec<f64> = DOMAINS
        .iter()
        .map(|d| {
            let line = ran
                .stdout()
                .lines()
                .find(|l| l.split_whitespace().next() == Some(d))
                .unwrap_or_else(|| panic!("no line for {d}:\n{}", ran.stdout()))
                .to_owned();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        })
        .collect();
    let recipe_weights: Vec<f64> = weights(&out_recipe)
        .iter()
        .map(|w| match w {
            ParamValue::Scalar(v) => number(v),
            other => panic!("one weight per model: {other:?}"),
        })
        .collect();
    assert_eq!(recipe_weights.len(), 4);
    for (r, p) in recipe_weights.iter().zip(&printed) {
        assert!((r - p).abs() < 1e-4 + 1e-9, "recipe {r} vs printed {p}");
        assert!((0.0..=1.2).contains(r));
    }
    merges(dir.path(), &out_recipe);

    // A preference of the wrong length, or a negative entry, is refused.
    for bad in ["0.5,0.5", "0.7,0.1,0.1,0.1,0.0", "1,1,-1,1"] {
        run(
            BIN,
            dir.path(),
            &["pareto", "--map", &s(&map), "--preference", bad],
        )
        .assert_user_error(&["--preference needs 4 non-negative numbers"]);
    }
}

#[test]
fn layer_groups_give_per_group_coefficients_and_gradient_recipes() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("front.json");
    let map = dir.path().join("map.json");
    let recipe = recipe_path();
    let started = std::time::Instant::now();
    run(
        BIN,
        &recipes(),
        &[
            "pareto",
            &recipe,
            "--subsample",
            "32",
            "--budget",
            "12",
            "--layer-groups",
            "2",
            "--json",
            &s(&json),
            "--map",
            &s(&map),
            "--router-steps",
            "100",
            "--backend",
            "cpu",
        ],
    )
    .assert_success();
    eprintln!(
        "pareto (2 groups): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let report = read_json(&json);
    check_report(&report, &DOMAINS, 2, 12);
    // The inputs: the base is 0 on both groups, each expert 1 on both of its own.
    let inputs = report["inputs"].as_array().unwrap();
    assert_eq!(numbers(&inputs[0]["coefficients"]["upright"]), [0.0, 0.0]);
    assert_eq!(numbers(&inputs[2]["coefficients"]["rotated"]), [1.0, 1.0]);
    assert_eq!(numbers(&inputs[2]["coefficients"]["upright"]), [0.0, 0.0]);
    // No --learn: the map is written, nothing is validated.
    assert!(
        report
            .get("validation")
            .is_none_or(|v| v.as_array().unwrap().is_empty())
    );

    let out_recipe = dir.path().join("r.yml");
    let ran = run(
        BIN,
        dir.path(),
        &[
            "pareto",
            "--map",
            &s(&map),
            "--preference",
            "1,1,1,1",
            "--recipe-out",
            &s(&out_recipe),
        ],
    );
    ran.assert_success();
    assert!(ran.stdout().contains("upright[1]"), "{}", ran.stdout());
    for w in weights(&out_recipe) {
        match w {
            ParamValue::List(points) => {
                assert_eq!(points.len(), 2, "{points:?}");
                assert!(points.iter().map(number).all(|v| (0.0..=1.2).contains(&v)));
            }
            other => panic!("a gradient per model: {other:?}"),
        }
    }
    merges(dir.path(), &out_recipe);
}

/// Scores a folder by its distances to two experts: `score` = −‖θ − θ_upright‖ (higher is
/// better) and `cost` = ‖θ − θ_rotated‖ (lower is better), over every tensor.
const SCORE_PY: &str = r#"
import array, json, math, os, struct, sys

def load(folder):
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info["dtype"]
        start, end = info["data_offsets"]
        values = array.array("f")
        values.frombytes(data[start:end])
        tensors[name] = values
    return tensors

def distance(x, y):
    assert sorted(x) == sorted(y)
    return math.sqrt(sum((p - q) ** 2 for name in x for p, q in zip(x[name], y[name])))

mode, upright, rotated, folder = sys.argv[1:5]
if mode == "fail-on-merge" and "mergescope-pareto-" in folder:
    print("merges are not welcome here", file=sys.stderr)
    sys.exit(3)
model = load(folder)
out = {"score": -distance(model, load(upright)), "cost": distance(model, load(rotated))}
if mode == "directions":
    out["directions"] = {"cost": "min", "score": "max"}
print(json.dumps(out))
"#;

struct CommandSetup {
    dir: tempfile::TempDir,
    recipe: PathBuf,
    tmp: PathBuf,
}

impl CommandSetup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("two.yml");
        let model = |name: &str| s(&demo().join(name));
        std::fs::write(
            &recipe,
            format!(
                "merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - model: {}\n    parameters: {{weight: 0.3}}\n  - model: {}\n    parameters: {{weight: 0.3}}\ndtype: float32\n",
                model("base"),
                model("upright"),
                model("rotated")
            ),
        )
        .unwrap();
        std::fs::write(dir.path().join("score.py"), SCORE_PY).unwrap();
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        Self { dir, recipe, tmp }
    }

    fn objective(&self, mode: &str) -> String {
        format!(
            "cmd:python3 {} {mode} {} {}",
            s(&self.dir.path().join("score.py")),
            s(&demo().join("upright")),
            s(&demo().join("rotated"))
        )
    }

    fn pareto(&self, mode: &str, extra: &[&str]) -> mergescope_tests::cli::Run {
        let objective = self.objective(mode);
        let recipe = s(&self.recipe);
        let mut args = vec![
            "pareto",
            &recipe,
            "--objective",
            &objective,
            "--budget",
            "12",
            "--backend",
            "cpu",
        ];
        args.extend_from_slice(extra);
        run_with_env(BIN, self.dir.path(), &args, &[("TMPDIR", &s(&self.tmp))])
    }

    /// The scratch folders the merges were scored in, left behind.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(&self.tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("mergescope-pareto-"))
            .collect()
    }
}

#[test]
fn a_command_objective_takes_its_directions_from_its_json_or_the_command_line() {
    let setup = CommandSetup::new();
    let json = setup.dir.path().join("front.json");
    let started = std::time::Instant::now();
    let ran = setup.pareto("directions", &["--json", &s(&json)]);
    ran.assert_success();
    eprintln!("pareto (cmd): {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        ran.stderr().contains("objectives: cost (min), score (max)"),
        "{}",
        ran.stderr()
    );
    let report = read_json(&json);
    assert_eq!(
        objectives(&report),
        [("cost".to_owned(), false), ("score".to_owned(), true)]
    );
    check_report(&report, &["upright", "rotated"], 1, 12);
    // In the objectives' own units: the reference is the base (a positive distance to the
    // rotated expert, a negative score), the ideal the rotated expert's cost 0 and the upright
    // expert's score 0.
    let reference = numbers(&report["reference"]);
    let ideal = numbers(&report["ideal"]);
    let base = &report["inputs"][0]["scores"];
    assert_eq!(
        reference,
        [
            base["cost"].as_f64().unwrap(),
            base["score"].as_f64().unwrap()
        ]
    );
    assert!(reference[0] > 0.0 && reference[1] < 0.0, "{reference:?}");
    assert!(ideal[0].abs() < 1e-6 && ideal[1].abs() < 1e-6, "{ideal:?}");
    assert_eq!(report["inputs"][2]["scores"]["cost"].as_f64().unwrap(), 0.0);
    // The equal-weight merge is nearer both experts than the base: it beats the reference on
    // both objectives, so the front has volume.
    assert!(report["hypervolume_normalised"].as_f64().unwrap() > 0.0);
    let equal = report["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            p["coefficients"]["upright"].as_f64() == Some(0.3)
                && p["coefficients"]["rotated"].as_f64() == Some(0.3)
        })
        .expect("the equal design point");
    assert!(equal["scores"]["cost"].as_f64().unwrap() < reference[0]);
    assert!(equal["scores"]["score"].as_f64().unwrap() > reference[1]);
    assert!(setup.leftovers().is_empty(), "{:?}", setup.leftovers());

    // Without directions in its JSON, the command line gives them…
    let json = setup.dir.path().join("plain.json");
    let ran = setup.pareto(
        "plain",
        &[
            "--maximize",
            "score",
            "--minimize",
            "cost",
            "--json",
            &s(&json),
        ],
    );
    ran.assert_success();
    assert_eq!(
        objectives(&read_json(&json)),
        [("cost".to_owned(), false), ("score".to_owned(), true)]
    );
    // …or the run stops, naming the flags.
    setup
        .pareto("plain", &[])
        .assert_user_error(&["no directions", "--maximize"]);
    // A metric the command does not print.
    setup
        .pareto("plain", &["--maximize", "score,accuracy"])
        .assert_user_error(&["accuracy"]);
    // Both directions for one metric.
    setup
        .pareto("plain", &["--maximize", "score", "--minimize", "score"])
        .assert_user_error(&["both --maximize and --minimize"]);
    // A command that fails on a merge stops the search and its scratch folder goes too.
    setup
        .pareto(
            "fail-on-merge",
            &["--maximize", "score", "--minimize", "cost"],
        )
        .assert_user_error(&["exit status: 3", "merges are not welcome here"]);
    assert!(setup.leftovers().is_empty(), "{:?}", setup.leftovers());
}

#[test]
fn bad_settings_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = |name: &str| s(&demo().join(name));
    let slerp = dir.path().join("slerp.yml");
    std::fs::write(
        &slerp,
        format!(
            "merge_method: slerp\nbase_model: {}\nmodels:\n  - model: {}\n  - model: {}\nparameters:\n  t: 0.5\n",
            model("base"),
            model("base"),
            model("upright")
        ),
    )
    .unwrap();
    run(BIN, dir.path(), &["pareto", &s(&slerp), "--budget", "10"])
        .assert_user_error(&["slerp", "weight"]);

    let recipe = recipe_path();
    run(BIN, &recipes(), &["pareto", &recipe, "--budget", "3"]).assert_user_error(&[
        "budget",
        "7 to 10000",
        "got 3",
    ]);
    run(BIN, &recipes(), &["pareto", &recipe, "--layer-groups", "0"])
        .assert_user_error(&["layer groups", "1 to 16"]);
    run(
        BIN,
        &recipes(),
        &[
            "pareto",
            &recipe,
            "--lambda-min",
            "1",
            "--lambda-max",
            "0.5",
        ],
    )
    .assert_user_error(&["coefficient range"]);
    run(
        BIN,
        &recipes(),
        &["pareto", &recipe, "--maximize", "upright/accuracy"],
    )
    .assert_user_error(&["--maximize", "cmd:"]);

    // A map file that is not one names itself.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{\"kind\": \"surrogate\", \"weights\": [").unwrap();
    run(
        BIN,
        dir.path(),
        &["pareto", "--map", &s(&broken), "--preference", "1,0"],
    )
    .assert_user_error(&[&s(&broken), "not a mergescope preference map"]);
    // Nothing was written beside the inputs.
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "{:?}",
        std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>()
    );
}

/// `mergescope merge RECIPE` runs in `dir` and writes a model.
fn merges(dir: &Path, recipe: &Path) {
    let merged = dir.join("merged");
    run(
        BIN,
        dir,
        &[
            "merge",
            &s(recipe),
            "--out",
            &s(&merged),
            "--backend",
            "cpu",
        ],
    )
    .assert_success();
    assert!(merged.join("model.safetensors").is_file());
}
