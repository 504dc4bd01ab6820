//! `mergescope sweep`: every cell of a grid equals `mergescope eval` of the recipe with the
//! cell's values set, the table and JSON say so, bad parameters are one line, and Ctrl-C
//! cancels.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mergescope_tests::cli::{command, run};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// A copy of the demo family and its task-arithmetic recipe in a temporary folder, so cell
/// recipes can be written beside it (`recipes/`) and resolve `../upright` as it does.
fn demo_copy() -> (tempfile::TempDir, PathBuf) {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/demo");
    let dir = tempfile::tempdir().unwrap();
    for model in ["base", "upright", "rotated", "mirrored", "inverted"] {
        let to = dir.path().join(model);
        std::fs::create_dir_all(&to).unwrap();
        for file in std::fs::read_dir(repo.join(model)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("recipes")).unwrap();
    let recipe = dir.path().join("recipes/task_arithmetic.yml");
    std::fs::copy(repo.join("recipes/task_arithmetic.yml"), &recipe).unwrap();
    (dir, recipe)
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `mergescope eval` of `recipe_text` written beside the sweep's recipe.
fn eval_alone(dir: &Path, name: &str, recipe_text: &str, extra: &[&str]) -> BTreeMap<String, f64> {
    let file = dir.join("recipes").join(name);
    std::fs::write(&file, recipe_text).unwrap();
    let file = file.display().to_string();
    let mut args = vec!["eval", file.as_str(), "--json"];
    args.extend_from_slice(extra);
    let ran = run(BIN, dir, &args);
    ran.assert_success();
    serde_json::from_str(&ran.stdout()).expect("eval --json prints an object of numbers")
}

fn scores_of(cell: &serde_json::Value) -> BTreeMap<String, f64> {
    serde_json::from_value(cell["scores"].clone()).unwrap()
}

#[test]
fn every_cell_of_a_2d_sweep_equals_eval_of_its_recipe() {
    let (dir, recipe) = demo_copy();
    let out = dir.path().join("sweep.json");
    let recipe_arg = recipe.display().to_string();
    let out_arg = out.display().to_string();
    let ran = run(
        BIN,
        dir.path(),
        &[
            "sweep",
            &recipe_arg,
            "--param",
            "models.0.weight=0:0.6:3",
            "--param",
            "models.1.weight=0.1,0.5",
            "--json",
            &out_arg,
        ],
    );
    ran.assert_success();
    let report = read_json(&out);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 6);
    assert_eq!(report["params"][0]["key"], "models[0].parameters.weight");
    assert_eq!(
        report["params"][0]["values"],
        serde_json::json!([0.0, 0.3, 0.6])
    );
    for (n, cell) in cells.iter().enumerate() {
        let values: Vec<f64> = serde_json::from_value(cell["values"].clone()).unwrap();
        assert_eq!(values, [[0.0, 0.3, 0.6][n / 2], [0.1, 0.5][n % 2]]);
        let text = cell["recipe"].as_str().unwrap();
        // The cell's recipe is the original with the two weights set, the rest as it was.
        let parsed = mergescope_core::merge::recipe::Recipe::from_yaml(text, &recipe).unwrap();
        let mut expected = mergescope_core::merge::recipe::Recipe::from_file(&recipe).unwrap();
        for (model, value) in [(0, values[0]), (1, values[1])] {
            expected.models[model].parameters.insert(
                "weight".to_owned(),
                mergescope_core::merge::recipe::ParamValue::Scalar(
                    mergescope_core::merge::recipe::Scalar::Number(value),
                ),
            );
        }
        assert_eq!(parsed, expected, "cell {n}");
        let alone = eval_alone(dir.path(), &format!("cell_{n}.yml"), text, &[]);
        assert_eq!(scores_of(cell), alone, "cell {n} ({values:?})");
    }
    // The weights matter: the cells differ.
    assert_ne!(scores_of(&cells[0]), scores_of(&cells[5]));

    // The table: a grid of mean accuracies in percent, rows the first parameter, the best
    // cell marked.
    let stdout = ran.stdout();
    assert!(
        stdout.contains("mean/accuracy (rows: models.0.weight, columns: models.1.weight)"),
        "{stdout}"
    );
    let best = report["best"].clone();
    let best_cell = cells.iter().find(|c| c["index"] == best).unwrap();
    let best_mean = scores_of(best_cell)["mean/accuracy"];
    let shown = format!("{:.1}%*", best_mean * 100.0);
    assert!(stdout.contains(&shown), "{shown} not in\n{stdout}");
    assert_eq!(stdout.matches('%').count(), 6 + 1, "{stdout}");
    let rows: Vec<&str> = stdout.lines().skip(2).take(3).collect();
    for (row, value) in rows.iter().zip(["0", "0.3", "0.6"]) {
        assert_eq!(row.split_whitespace().next(), Some(value), "{stdout}");
    }
    assert!(
        ran.stderr().contains("sweep: 6 cells of demo accuracy"),
        "{}",
        ran.stderr()
    );
}

#[test]
fn retention_and_subsampled_sweeps_equal_eval_too() {
    let (dir, recipe) = demo_copy();
    let recipe_arg = recipe.display().to_string();
    for (objective, extra) in [
        ("retention", vec!["--objective", "retention"]),
        ("subsample", vec!["--subsample", "40"]),
    ] {
        let out = dir.path().join(format!("{objective}.json"));
        let out_arg = out.display().to_string();
        let mut args = vec![
            "sweep",
            recipe_arg.as_str(),
            "--param",
            "models.2.weight=0.2,0.8",
            "--param",
            "lambda=0.5:1:2",
            "--json",
            out_arg.as_str(),
        ];
        args.extend_from_slice(&extra);
        run(BIN, dir.path(), &args).assert_success();
        let report = read_json(&out);
        let cells = report["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 4);
        for (n, cell) in cells.iter().enumerate() {
            let alone = eval_alone(
                dir.path(),
                &format!("{objective}_{n}.yml"),
                cell["recipe"].as_str().unwrap(),
                &extra,
            );
            assert_eq!(scores_of(cell), alone, "{objective} cell {n}");
        }
    }
}

#[test]
fn a_1d_sweep_prints_a_row_per_value() {
    let (dir, recipe) = demo_copy();
    let recipe_arg = recipe.display().to_string();
    let ran = run(
        BIN,
        dir.path(),
        &[
            "sweep",
            &recipe_arg,
            "--param",
            "models.3.weight=0:1:3",
            "--objective",
            "retention",
            "--metric",
            "retention/../inverted",
        ],
    );
    ran.assert_success();
    let stdout = ran.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("models.3.weight") && lines[0].contains("retention/../inverted"));
    assert_eq!(lines.len(), 1 + 3 + 1, "{stdout}");
    // More of the inverted expert's weight keeps more of its task vector: the last row wins.
    assert!(lines[3].ends_with('*'), "{stdout}");
    assert!(
        lines[4].starts_with("best (*): models.3.weight = 1:"),
        "{stdout}"
    );

    let bad_metric = run(
        BIN,
        dir.path(),
        &[
            "sweep",
            &recipe_arg,
            "--param",
            "models.3.weight=0:1:101",
            "--objective",
            "retention",
            "--metric",
            "accuracy",
            "--json",
            "never.json",
        ],
    );
    bad_metric.assert_user_error(&["--metric accuracy", "mean retention"]);
    // Stopped at the first cell: nothing written.
    assert!(!dir.path().join("never.json").exists());
}

#[test]
fn bad_parameters_are_one_line_errors() {
    let (dir, recipe) = demo_copy();
    let recipe_arg = recipe.display().to_string();
    let sweep = |params: &[&str]| {
        let mut args = vec!["sweep", recipe_arg.as_str()];
        for p in params {
            args.extend_from_slice(&["--param", p]);
        }
        run(BIN, dir.path(), &args)
    };
    sweep(&["models.9.weight=0:1:3"]).assert_user_error(&[
        "models.9.weight",
        "models[9]",
        "lists 4 model(s)",
        "models.0 to models.3",
    ]);
    sweep(&["models.1.weight=1:0"]).assert_user_error(&["START:END:STEPS"]);
    sweep(&["models.1.weight=1:0:5"]).assert_user_error(&["not below END"]);
    sweep(&["models.1.weight=0:1:1"]).assert_user_error(&["STEPS is 1", "2 to 101"]);
    sweep(&["models.1.density=0:1:3"]).assert_user_error(&[
        "models[1].parameters.density",
        "task_arithmetic does not read `density`",
        "weight",
    ]);
    sweep(&["models.1.weight"]).assert_user_error(&["models.1.weight=0:1:11"]);
    sweep(&["models.1.weight=0:2000:3"]).assert_user_error(&["outside the allowed range"]);
    sweep(&["models.1.weight[2]=0:1:3"]).assert_user_error(&["single number"]);
    sweep(&["models.0.weight=0,1", "models.0.weight=0,1"]).assert_user_error(&["twice"]);
    let four = [
        "lambda=0,1",
        "models.0.weight=0,1",
        "models.1.weight=0,1",
        "models.2.weight=0,1",
    ];
    sweep(&four).assert_user_error(&["1 to 3 parameters"]);
    let ran = run(BIN, dir.path(), &["sweep", &recipe_arg]);
    assert_eq!(ran.code(), Some(1), "--param is required");
}

#[test]
fn ctrl_c_cancels_and_writes_nothing() {
    let (dir, recipe) = demo_copy();
    let out = dir.path().join("never.json");
    let recipe_arg = recipe.display().to_string();
    let out_arg = out.display().to_string();
    let child = command(
        BIN,
        dir.path(),
        &[
            "sweep",
            &recipe_arg,
            "--param",
            "models.0.weight=0:1:101",
            "--param",
            "models.1.weight=0:1:101",
            "--json",
            &out_arg,
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Long enough for the handler and the first cells, far from the 10 201 cells' end.
    std::thread::sleep(Duration::from_millis(1500));
    let sent = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("cancelled"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a cell at most"
    );
    assert!(!out.exists());
}

#[test]
fn a_command_scores_each_cell_in_a_scratch_folder_removed_after() {
    let (dir, recipe) = demo_copy();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let script = dir.path().join("count.sh");
    // Counts the files of the folder it is given and reports the model's first byte count:
    // proves each cell was exported to a folder of its own.
    std::fs::write(
        &script,
        "#!/bin/sh\nn=$(ls \"$1\" | wc -l); b=$(wc -c < \"$1/model.safetensors\"); echo \"{\\\"files\\\": $n, \\\"bytes\\\": $b}\"\n",
    )
    .unwrap();
    let objective = format!("cmd:sh {}", script.display());
    let out = dir.path().join("cmd.json");
    let recipe_arg = recipe.display().to_string();
    let out_arg = out.display().to_string();
    let tmp_arg = tmp.display().to_string();
    let ran = mergescope_tests::cli::run_with_env(
        BIN,
        dir.path(),
        &[
            "sweep",
            &recipe_arg,
            "--param",
            "models.0.weight=0,1",
            "--objective",
            &objective,
            "--metric",
            "files",
            "--json",
            &out_arg,
        ],
        &[("TMPDIR", tmp_arg.as_str())],
    );
    ran.assert_success();
    let report = read_json(&out);
    let cells = report["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for cell in cells {
        let scores = scores_of(cell);
        assert!(scores["files"] >= 2.0, "{scores:?}");
        assert!(scores["bytes"] > 1000.0, "{scores:?}");
    }
    assert!(ran.stdout().contains("files"), "{}", ran.stdout());
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "scratch folders left behind: {left:?}");
}
