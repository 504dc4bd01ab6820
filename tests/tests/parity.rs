//! mergescope against mergekit 0.1.5's own outputs (the vendored `shared/parity` set), under
//! compare.py's tolerance classes ported to Rust.

use mergescope_tests::cli::run;
use mergescope_tests::compare::{Class, Tolerance, compare_folders};
use mergescope_tests::parity_dir;

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

fn check(recipe: &str, backend: &str) {
    if backend == "gpu" && std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() {
        eprintln!("skipping the GPU run of {recipe} (MERGESCOPE_SKIP_GPU_TESTS)");
        return;
    }
    let parity = parity_dir();
    let out = tempfile::tempdir().unwrap();
    let merged = out.path().join(recipe);
    // Recipes name models relative to the parity folder, as mergekit ran them: run from there.
    let config = format!("configs/{recipe}.yml");
    let args = [
        "merge",
        &config,
        "--out",
        merged.to_str().unwrap(),
        "--random-seed",
        "7",
        "--backend",
        backend,
    ];
    let ran = run(BIN, &parity, &args);
    ran.assert_success();
    assert!(
        ran.stderr().contains(&format!("backend: {backend}")),
        "{recipe}: ran on the wrong backend:\n{}",
        ran.stderr()
    );
    let expected = parity.join("expected").join(recipe);
    let class = Class::for_recipe(&parity.join("expected/MANIFEST.json"), recipe);
    let base = match &class {
        Class::Stats { base, .. } => Some(parity.join(base)),
        Class::Close(_) => None,
    };
    let reports = compare_folders(&merged, &expected, &class, base.as_deref())
        .unwrap_or_else(|problems| panic!("{recipe}: FAIL\n{problems}"));
    assert_eq!(reports.len(), 39);
    if backend == "gpu" {
        // GPU against CPU directly, with the same seed: the masks are the same, so even the
        // random methods must agree element by element (ALGORITHMS.md §6, CPU vs GPU).
        let on_cpu = out.path().join("cpu");
        let args = [
            "merge",
            &config,
            "--out",
            on_cpu.to_str().unwrap(),
            "--random-seed",
            "7",
            "--backend",
            "cpu",
        ];
        run(BIN, &parity, &args).assert_success();
        compare_folders(&merged, &on_cpu, &Class::Close(Tolerance::EXACT), None)
            .unwrap_or_else(|problems| panic!("{recipe}: GPU differs from CPU\n{problems}"));
    }
    // mergekit copies the base's (else the first model's) config and tokenizer files.
    for file in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(merged.join(file).is_file(), "{recipe}: {file} not copied");
    }
}

macro_rules! parity {
    ($($recipe:ident),* $(,)?) => {
        /// On the CPU backend.
        mod cpu {
            $(
                #[test]
                fn $recipe() {
                    super::check(stringify!($recipe), "cpu");
                }
            )*
        }

        /// On the GPU backend (Mesa's lavapipe in CI): the same bar as the CPU.
        mod gpu {
            $(
                #[test]
                fn $recipe() {
                    super::check(stringify!($recipe), "gpu");
                }
            )*
        }
    };
}

parity!(
    linear,
    linear_gradient,
    task_arithmetic,
    ties,
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    sce,
    model_stock,
    slerp,
    nuslerp,
);

#[test]
fn the_checker_fails_a_wrong_merge() {
    // Guard against comparisons that cannot fail.
    let parity = parity_dir();
    let expected = parity.join("expected");
    let exact = Class::Close(Tolerance::EXACT);
    assert!(
        compare_folders(
            &expected.join("linear"),
            &expected.join("task_arithmetic"),
            &exact,
            None
        )
        .is_err()
    );
    let stats = Class::for_recipe(&expected.join("MANIFEST.json"), "dare_ties");
    let base = parity.join("family/base");
    assert!(
        compare_folders(
            &expected.join("task_arithmetic"),
            &expected.join("dare_ties"),
            &stats,
            Some(&base)
        )
        .is_err()
    );
    assert!(
        compare_folders(
            &expected.join("dare_ties"),
            &expected.join("dare_ties"),
            &stats,
            Some(&base)
        )
        .is_ok()
    );
}
