//! Numbers from files and recipes that no model has (each refused with one line naming the key
//! and the allowed range, nothing written, inputs untouched), and weights holding NaN or ±Inf
//! (every method merges them, the analysis and eval measure them, and the output says which
//! tensors held them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mergescope_core::dtype::Dtype;
use mergescope_tests::cli::run;
use mergescope_tests::fixture::{Tensor, llama_tensors, write_file, write_model_folder};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Base (f32) and three fine-tunes (bf16) of a two-layer Llama.
fn family(dir: &Path) {
    write_model_folder(&dir.join("base"), &llama_tensors(2, 0), Dtype::F32, 2);
    for (name, variant) in [("a", 1), ("b", 2), ("c", 3)] {
        write_model_folder(&dir.join(name), &llama_tensors(2, variant), Dtype::BF16, 2);
    }
}

/// Runs `merge` on `recipe` and checks the failure: exit 1, one line with every needle, and
/// the folder exactly as it was (nothing written, no input touched).
fn refused(dir: &Path, recipe: &str, extra: &[&str], needles: &[&str]) {
    std::fs::write(dir.join("recipe.yml"), recipe).unwrap();
    let before = contents(dir);
    let mut args = vec!["merge", "recipe.yml", "--out", "merged"];
    args.extend_from_slice(extra);
    run(BIN, dir, &args).assert_user_error(needles);
    assert!(contents(dir) == before, "a refused merge changed files");
}

#[test]
fn recipe_numbers_out_of_range_are_one_line_naming_key_and_range() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path());
    let cases: &[(&str, &[&str])] = &[
        (
            "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\nparameters:\n  max_iter: 1000000000\n",
            &["parameters.max_iter", "[1, 100]"],
        ),
        (
            "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\nparameters:\n  tol: 0\n",
            &["parameters.tol", "[1e-12, 1]", "never met"],
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n      density: 50\n",
            &["models[0].parameters.density", "[0, 1]"],
        ),
        (
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1e9\n",
            &["models[0].parameters.weight", "[-1000, 1000]"],
        ),
        (
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: [0, 5000]\n",
            &["models[0].parameters.weight", "[-1000, 1000]"],
        ),
        (
            "merge_method: slerp\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  t: 5\n",
            &["parameters.t", "[-1, 2]"],
        ),
        (
            "merge_method: nearswap\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  t: -1\n",
            &["parameters.t", "[0, 1000]"],
        ),
        (
            "merge_method: multislerp\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n  - model: b\n    parameters:\n      weight: 1\nparameters:\n  eps: 0\n",
            &["parameters.eps", "[1e-12, 1]"],
        ),
        (
            "merge_method: breadcrumbs\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n      gamma: -0.5\n",
            &["models[0].parameters.gamma", "[0, 1]"],
        ),
        (
            "merge_method: della\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n      density: 0.5\n      epsilon: 2\n",
            &["models[0].parameters.epsilon", "[0, 1]"],
        ),
        (
            "merge_method: sce\nbase_model: base\nmodels:\n  - model: a\n  - model: b\nparameters:\n  select_topk: 7\n",
            &["parameters.select_topk", "[0, 1]"],
        ),
        (
            "merge_method: ties\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1\nparameters:\n  lambda: -1e7\n",
            &["parameters.lambda", "[-1000, 1000]"],
        ),
    ];
    for (recipe, needles) in cases {
        let mut all = vec!["recipe.yml"];
        all.extend_from_slice(needles);
        refused(dir.path(), recipe, &[], &all);
    }
    // The command line's numbers too.
    let ta = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 0.5\n";
    refused(
        dir.path(),
        ta,
        &["--shard-size", "10"],
        &["--shard-size", "outside the allowed range of 1kB to 100TB"],
    );
    std::fs::write(dir.path().join("recipe.yml"), ta).unwrap();
    run(
        BIN,
        dir.path(),
        &[
            "pareto",
            "recipe.yml",
            "--objective",
            "retention",
            "--budget",
            "0",
        ],
    )
    .assert_user_error(&["budget", "to 10000", "got 0"]);
    run(
        BIN,
        dir.path(),
        &["analyze", "--base", "base", "a", "--rank", "100000"],
    )
    .assert_user_error(&["--rank", "outside the allowed range 1 to 4096"]);
}

#[test]
fn header_numbers_no_model_has_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, Tensor, &[&str])] = &[
        (
            "blocks.safetensors",
            Tensor::new("model.layers.18446744073709551616.mlp.weight", &[2], |i| {
                i as f32
            }),
            &["block 18446744073709551615", "above 9999"],
        ),
        (
            "deep.safetensors",
            Tensor::new("model.layers.123456.mlp.weight", &[2], |i| i as f32),
            &["block 123456"],
        ),
        (
            "rank.safetensors",
            Tensor::new("x", &[1; 9], |i| i as f32),
            &["`x`", "9 dimensions", "limit of 8 dimensions"],
        ),
    ];
    for (file, tensor, needles) in cases {
        write_file(&d.join(file), std::slice::from_ref(tensor), Dtype::F32);
        let mut all = vec![*file];
        all.extend_from_slice(needles);
        run(BIN, d, &["inspect", file]).assert_user_error(&all);
    }
    // A config.json of 20 MB (sparse: no disk is spent) is not read whole.
    write_model_folder(&d.join("model"), &llama_tensors(1, 0), Dtype::F32, 1);
    std::fs::File::options()
        .write(true)
        .open(d.join("model/config.json"))
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    run(BIN, d, &["inspect", "model"]).assert_user_error(&["config.json", "too large"]);
}

/// The family with NaN and ±Inf: `a` holds NaN in every fourth element of layer 0's q_proj
/// and +Inf in layer 1's up_proj, `b` -Inf in layer 0's o_proj, the base NaN in layer 1's
/// down_proj.
fn non_finite_family(dir: &Path) {
    let spoil = |tensors: &mut Vec<Tensor>, name: &str, every: usize, value: f32| {
        let t = tensors.iter_mut().find(|t| t.name == name).unwrap();
        for v in t.values.iter_mut().step_by(every) {
            *v = value;
        }
    };
    let mut base = llama_tensors(2, 0);
    spoil(
        &mut base,
        "model.layers.1.mlp.down_proj.weight",
        16,
        f32::NAN,
    );
    write_model_folder(&dir.join("base"), &base, Dtype::F32, 2);
    let mut a = llama_tensors(2, 1);
    spoil(
        &mut a,
        "model.layers.0.self_attn.q_proj.weight",
        4,
        f32::NAN,
    );
    spoil(
        &mut a,
        "model.layers.1.mlp.up_proj.weight",
        3,
        f32::INFINITY,
    );
    write_model_folder(&dir.join("a"), &a, Dtype::BF16, 2);
    let mut b = llama_tensors(2, 2);
    spoil(
        &mut b,
        "model.layers.0.self_attn.o_proj.weight",
        5,
        f32::NEG_INFINITY,
    );
    write_model_folder(&dir.join("b"), &b, Dtype::BF16, 2);
    write_model_folder(&dir.join("c"), &llama_tensors(2, 3), Dtype::BF16, 2);
}

/// The names of the tensors of the merged folder that hold a non-finite value.
fn non_finite_outputs(out: &Path) -> Vec<String> {
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st
        .tensors()
        .into_iter()
        .filter(|(_, view)| {
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => data
                    .chunks(4)
                    .any(|c| !f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
                Dtype::BF16 => data
                    .chunks(2)
                    .any(|c| !half::bf16::from_le_bytes(c.try_into().unwrap()).is_finite()),
                _ => false,
            }
        })
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

#[test]
fn every_method_merges_non_finite_weights_and_names_the_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    non_finite_family(d);
    let weighted = |models: &[&str]| {
        models
            .iter()
            .map(|m| {
                format!("  - model: {m}\n    parameters:\n      weight: 0.5\n      density: 0.5\n")
            })
            .collect::<String>()
    };
    let recipes: Vec<(&str, String)> = vec![
        ("task_arithmetic", format!("merge_method: task_arithmetic\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("ties", format!("merge_method: ties\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("dare_ties", format!("merge_method: dare_ties\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("dare_linear", format!("merge_method: dare_linear\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("breadcrumbs", format!("merge_method: breadcrumbs\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("breadcrumbs_ties", format!("merge_method: breadcrumbs_ties\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("della", format!("merge_method: della\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("della_linear", format!("merge_method: della_linear\nbase_model: base\nmodels:\n{}", weighted(&["a", "b"]))),
        ("linear", "merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n  - model: b\n    parameters:\n      weight: 1\n".to_owned()),
        ("slerp", "merge_method: slerp\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  t: 0.5\n".to_owned()),
        ("nearswap", "merge_method: nearswap\nbase_model: base\nmodels:\n  - model: a\nparameters:\n  t: 0.1\n".to_owned()),
        ("nuslerp", "merge_method: nuslerp\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n  - model: b\n    parameters:\n      weight: 1\n".to_owned()),
        ("multislerp", "merge_method: multislerp\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 1\n  - model: b\n    parameters:\n      weight: 1\n".to_owned()),
        ("karcher", "merge_method: karcher\nmodels:\n  - model: a\n  - model: b\n  - model: c\n".to_owned()),
        ("model_stock", "merge_method: model_stock\nbase_model: base\nmodels:\n  - model: a\n  - model: b\n  - model: c\n".to_owned()),
        ("sce", "merge_method: sce\nbase_model: base\nmodels:\n  - model: a\n  - model: b\nparameters:\n  select_topk: 0.5\n".to_owned()),
        ("passthrough", "merge_method: passthrough\nmodels:\n  - model: a\n".to_owned()),
    ];
    let inputs = contents(d);
    for (method, recipe) in &recipes {
        let file = format!("{method}.yml");
        std::fs::write(d.join(&file), recipe).unwrap();
        let out = format!("out-{method}");
        let result = run(BIN, d, &["merge", &file, "--out", &out]);
        result.assert_success();
        let stderr = result.stderr();
        let bad = non_finite_outputs(&d.join(&out));
        assert!(!bad.is_empty(), "{method}: the NaN must reach the output");
        let warning = stderr
            .lines()
            .find(|l| l.starts_with("warning: ") && l.contains("non-finite"))
            .unwrap_or_else(|| panic!("{method}: no warning\n{stderr}"));
        assert!(
            warning.contains(&format!("{} tensor(s) held non-finite values", bad.len())),
            "{method}: {warning} vs {bad:?}"
        );
        assert!(
            warning.contains(&format!("`{}`", bad[0])),
            "{method}: {warning}"
        );
        assert!(!stderr.contains("panicked"), "{method}: {stderr}");
    }
    for (path, bytes) in &inputs {
        assert!(
            std::fs::read(path).unwrap() == *bytes,
            "{} changed",
            path.display()
        );
    }
}

#[test]
fn analysis_spectra_and_eval_measure_around_non_finite_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    non_finite_family(d);
    let result = run(
        BIN,
        d,
        &[
            "analyze",
            "--base",
            "base",
            "a",
            "b",
            "--rank",
            "4",
            "--json",
            "report.json",
            "--no-cache",
        ],
    );
    result.assert_success();
    let warning = result
        .stderr()
        .lines()
        .find(|l| l.starts_with("warning: "))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(
        warning.contains("4 tensor(s) held non-finite values"),
        "{}",
        result.stderr()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("report.json")).unwrap()).unwrap();
    let found = report["non_finite"].as_array().unwrap();
    let named: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f["tensor"].as_str().unwrap(), f["member"].as_str().unwrap()))
        .collect();
    assert!(
        named.contains(&("model.layers.0.self_attn.q_proj.weight", "a")),
        "{named:?}"
    );
    assert!(
        named.contains(&("model.layers.1.mlp.down_proj.weight", "base")),
        "{named:?}"
    );
    // Metrics and spectra stay numbers: non-finite values count as unchanged.
    let q = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert!(
        q["metrics"]["models"][0]["rel"]
            .as_f64()
            .unwrap()
            .is_finite(),
        "{q}"
    );
    let sigma = &q["spectra"][0]["sigma"][0];
    assert!(sigma.as_f64().is_some_and(f64::is_finite), "{q}");

    // eval of a recipe on the data-free objective.
    std::fs::write(
        d.join("ta.yml"),
        "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: a\n    parameters:\n      weight: 0.5\n  - model: b\n    parameters:\n      weight: 0.5\n",
    )
    .unwrap();
    run(BIN, d, &["eval", "ta.yml", "--objective", "retention"]).assert_success();
}

/// Another program truncates an input while `mergescope merge` reads it (memory-mapped): one
/// line saying which file changed, exit code 1, no output and no staging folder; never a
/// SIGBUS.
#[test]
fn an_input_truncated_during_a_merge_is_one_line_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut hit = false;
    // The merge takes about 2 s here; try earlier truncations until one lands mid-merge.
    for delay in [600, 300, 150, 50] {
        mergescope_tests::fixture::big_family(d, 6);
        std::fs::write(
            d.join("recipe.yml"),
            "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft\n    parameters:\n      weight: 0.5\n",
        )
        .unwrap();
        let child =
            mergescope_tests::cli::command(BIN, d, &["merge", "recipe.yml", "--out", "merged"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let file = d.join("ft/model.safetensors");
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 3)
            .unwrap();
        let output = child.wait_with_output().unwrap();
        let result = mergescope_tests::cli::Run {
            args: vec!["merge".to_owned()],
            output,
        };
        if result.code() == Some(0) {
            std::fs::remove_dir_all(d.join("merged")).unwrap();
            continue; // finished before the truncation
        }
        result.assert_user_error(&["ft/model.safetensors", mergescope_core::CHANGED_ON_DISK]);
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("merged")),
            "output or staging left: {names:?}"
        );
        hit = true;
        break;
    }
    assert!(hit, "no truncation landed during a merge");
}
