//! Identities every merge must satisfy, checked on random tensors (proptest).

mod support;

use mergescope_core::merge::methods::{
    DareTies, Della, Linear, Nearswap, Sce, Slerp, TaskArithmetic, Ties,
};
use mergescope_core::merge::{MergeMethod, TensorParams};
use proptest::prelude::*;
use support::{Owned, b, f, params, run};

fn tensor(values: &[f32]) -> Owned {
    Owned::new("t", &[values.len()], values)
}

fn gta_params(weights: &[f64], density: f64, normalize: bool, lambda: f64) -> TensorParams {
    params(
        &[
            ("normalize", b(normalize)),
            ("lambda", f(lambda)),
            ("int8_mask", b(false)),
            ("rescale", b(false)),
        ],
        &weights
            .iter()
            .map(|w| vec![("weight", f(*w)), ("density", f(density))])
            .collect::<Vec<_>>(),
    )
}

fn finite_values(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-100.0f32..100.0, n)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn linear_of_one_model_is_that_model(x in finite_values(1..300), w in 0.01f64..10.0) {
        let p = params(&[("normalize", b(true))], &[vec![("weight", f(w))]]);
        let out = run(&Linear, None, &[tensor(&x)], &p, 0);
        for (o, x) in out.iter().zip(&x) {
            prop_assert!((o - x).abs() <= 2.0 * f32::EPSILON * x.abs());
        }
    }

    #[test]
    fn task_arithmetic_with_lambda_zero_is_the_base(
        base in finite_values(1..300),
        weights in prop::collection::vec(-2.0f64..2.0, 1..4),
    ) {
        let models: Vec<Owned> = weights.iter().enumerate().map(|(i, _)| {
            tensor(&base.iter().map(|v| v * (1.5 + i as f32)).collect::<Vec<_>>())
        }).collect();
        let out = run(&TaskArithmetic, Some(&tensor(&base)), &models, &gta_params(&weights, 1.0, false, 0.0), 0);
        prop_assert_eq!(out, base);
    }

    #[test]
    fn ties_at_density_one_without_conflicts_is_task_arithmetic(
        base in finite_values(1..300),
        magnitudes in prop::collection::vec(finite_values(300..301), 1..4),
        signs in prop::collection::vec(any::<bool>(), 300),
        weights in prop::collection::vec(0.1f64..2.0, 3),
    ) {
        let n = base.len();
        let weights = &weights[..magnitudes.len()];
        // Every model moves each element in the same direction: nothing to elect against.
        let models: Vec<Owned> = magnitudes.iter().map(|m| {
            tensor(&(0..n).map(|j| base[j] + if signs[j] { m[j].abs() } else { -m[j].abs() }).collect::<Vec<_>>())
        }).collect();
        let p = gta_params(weights, 1.0, false, 0.7);
        let ties = run(&Ties, Some(&tensor(&base)), &models, &p, 0);
        let ta = run(&TaskArithmetic, Some(&tensor(&base)), &models, &p, 0);
        prop_assert_eq!(ties, ta);
    }

    #[test]
    fn slerp_at_its_ends_gives_the_endpoints(a in finite_values(2..200), salt in 1u64..1000) {
        let other: Vec<f32> = support::values(a.len(), salt).iter().map(|v| v * 50.0).collect();
        for (t, expected) in [(0.0, &a), (1.0, &other)] {
            let p = params(&[("t", f(t))], &[vec![]]);
            let out = run(&Slerp, Some(&tensor(&a)), &[tensor(&other)], &p, 0);
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (o, e) in out.iter().zip(expected.iter()) {
                prop_assert!((o - e).abs() <= 1e-5 * scale, "t={} {} vs {}", t, o, e);
            }
        }
    }

    #[test]
    fn nearswap_with_t_zero_keeps_the_base(a in finite_values(1..200), c in finite_values(200..201)) {
        let other = &c[..a.len()];
        let p = params(&[("t", f(0.0))], &[vec![]]);
        prop_assert_eq!(run(&Nearswap, Some(&tensor(&a)), &[tensor(other)], &p, 0), a);
    }
}

/// The same merge with 1, 2 and 3 rayon threads is bit-identical, random methods included.
#[test]
fn outputs_do_not_depend_on_the_number_of_threads() {
    let n = 50_000; // several chunks
    let base = tensor(&support::values(n, 1));
    let models: Vec<Owned> = (2..5).map(|s| tensor(&support::values(n, s))).collect();
    let gta = gta_params(&[1.0, 0.5, 0.8], 0.4, true, 1.0);
    let della = params(
        &[
            ("normalize", b(true)),
            ("lambda", f(1.0)),
            ("int8_mask", b(false)),
            ("rescale", b(true)),
        ],
        &(0..3)
            .map(|_| vec![("weight", f(0.7)), ("density", f(0.5)), ("epsilon", f(0.2))])
            .collect::<Vec<_>>(),
    );
    let sce = params(
        &[("select_topk", f(0.3)), ("int8_mask", b(false))],
        &[vec![], vec![], vec![]],
    );
    let cases: [(&dyn MergeMethod, &TensorParams); 4] = [
        (&Ties, &gta),
        (&DareTies, &gta),
        (&Della, &della),
        (&Sce, &sce),
    ];
    for (method, p) in cases {
        let with = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run(method, Some(&base), &models, p, 42))
        };
        let one = with(1);
        assert_eq!(one, with(2), "{}", method.spec().name);
        assert_eq!(one, with(3), "{}", method.spec().name);
    }
}

/// Same seed, same output; another seed, another mask — and the keep rate is the density.
#[test]
fn random_masks_follow_the_seed_and_the_density() {
    let n = 40_000;
    let base = tensor(&vec![0.0; n]);
    let one = [tensor(&vec![1.0; n])];
    let p = params(
        &[
            ("normalize", b(false)),
            ("lambda", f(1.0)),
            ("int8_mask", b(false)),
            ("rescale", b(false)),
        ],
        &[vec![("weight", f(1.0)), ("density", f(0.3))]],
    );
    let a = run(&DareTies, Some(&base), &one, &p, 1);
    assert_eq!(a, run(&DareTies, Some(&base), &one, &p, 1));
    assert_ne!(a, run(&DareTies, Some(&base), &one, &p, 2));
    let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    let sigma = (0.3f64 * 0.7 / n as f64).sqrt();
    assert!((kept - 0.3).abs() < 4.0 * sigma, "kept {kept}");
}
