//! Methods without a mergekit fixture, checked against ALGORITHMS.md's definitions written out
//! literally in f64 on explicit vectors.

mod support;

use mergescope_core::merge::methods::{
    Breadcrumbs, Della, Karcher, ModelStock, Multislerp, Nuslerp, Passthrough, Sce,
};
use support::{Owned, assert_close, b, f, params, run, values};

fn dot(a: &[f64], c: &[f64]) -> f64 {
    a.iter().zip(c).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// Five models with correlated directions (so spherical means are well conditioned).
fn family(n: usize) -> Vec<Vec<f32>> {
    let shared = values(n, 99);
    (1..=5)
        .map(|s| {
            values(n, s)
                .iter()
                .zip(&shared)
                .map(|(x, c)| 0.5 * x + c * (1.0 + s as f32 * 0.1))
                .collect()
        })
        .collect()
}

#[test]
fn multislerp_matches_its_definition() {
    let n = 3000;
    let models = family(n);
    let base = values(n, 7);
    let weights = [0.5, 0.3, 0.2];
    for with_base in [false, true] {
        let xs: Vec<Vec<f64>> = models[..3]
            .iter()
            .map(|m| {
                m.iter()
                    .zip(&base)
                    .map(|(x, b0)| f64::from(*x) - if with_base { f64::from(*b0) } else { 0.0 })
                    .collect()
            })
            .collect();
        let eps = 1e-8;
        let sum: f64 = weights.iter().sum();
        let w: Vec<f64> = weights.iter().map(|x| x / sum).collect();
        let norms: Vec<f64> = xs.iter().map(|x| norm(x)).collect();
        let units: Vec<Vec<f64>> = xs
            .iter()
            .zip(&norms)
            .map(|(x, n)| x.iter().map(|v| v / (n + eps)).collect())
            .collect();
        let mut m: Vec<f64> = (0..n)
            .map(|j| (0..3).map(|i| w[i] * units[i][j]).sum())
            .collect();
        let mn = norm(&m);
        m.iter_mut().for_each(|v| *v /= mn);
        let t: Vec<f64> = (0..n)
            .map(|j| {
                (0..3)
                    .map(|i| w[i] * (units[i][j] - dot(&units[i], &m) * m[j]))
                    .sum()
            })
            .collect();
        let tn = norm(&t) + eps;
        let scale: f64 = (0..3).map(|i| w[i] * norms[i]).sum();
        let expected: Vec<f64> = (0..n)
            .map(|j| {
                (tn.cos() * m[j] + tn.sin() / tn * t[j]) * scale
                    + if with_base { f64::from(base[j]) } else { 0.0 }
            })
            .collect();
        let owned: Vec<Owned> = models[..3]
            .iter()
            .map(|m| Owned::new("t", &[n], m))
            .collect();
        let base_t = Owned::new("t", &[n], &base);
        let p = params(
            &[("normalize_weights", b(true)), ("eps", f(eps))],
            &weights
                .iter()
                .map(|w| vec![("weight", f(*w))])
                .collect::<Vec<_>>(),
        );
        let got = run(&Multislerp, with_base.then_some(&base_t), &owned, &p, 0);
        assert_close(&got, &expected, 1e-5, "multislerp");
    }
}

#[test]
fn karcher_matches_its_definition() {
    let n = 2000;
    let models = family(n);
    let xs: Vec<Vec<f64>> = models[..4].iter().map(|m| widen(m)).collect();
    let (max_iter, tol) = (10, 1e-5);
    let norms: Vec<f64> = xs.iter().map(|x| norm(x)).collect();
    let u: Vec<Vec<f64>> = xs
        .iter()
        .zip(&norms)
        .map(|(x, n)| x.iter().map(|v| v / n).collect())
        .collect();
    let a = 0.25;
    let mut m: Vec<f64> = (0..n).map(|j| (0..4).map(|i| a * u[i][j]).sum()).collect();
    let mn = norm(&m);
    m.iter_mut().for_each(|v| *v /= mn);
    for _ in 0..max_iter {
        let mut g = vec![0.0; n];
        for ui in &u {
            let c = dot(&m, ui).clamp(-1.0, 1.0);
            let th = c.acos();
            if th < tol {
                continue;
            }
            for j in 0..n {
                g[j] += a * th / th.sin() * (ui[j] - c * m[j]);
            }
        }
        let gn = norm(&g);
        if gn < tol {
            break;
        }
        for j in 0..n {
            m[j] = gn.cos() * m[j] + gn.sin() * g[j] / gn;
        }
        let mn = norm(&m);
        m.iter_mut().for_each(|v| *v /= mn);
    }
    let scale: f64 = norms.iter().map(|x| a * x).sum();
    let expected: Vec<f64> = m.iter().map(|v| v * scale).collect();
    let owned: Vec<Owned> = models[..4]
        .iter()
        .map(|m| Owned::new("t", &[n], m))
        .collect();
    let p = params(
        &[
            ("max_iter", mergescope_core::merge::Value::Int(max_iter)),
            ("tol", f(tol)),
        ],
        &[vec![], vec![], vec![], vec![]],
    );
    assert_close(
        &run(&Karcher, None, &owned, &p, 0),
        &expected,
        1e-4,
        "karcher",
    );
}

fn slerp_pair(t: f64, u0: &[f64], u1: &[f64]) -> Vec<f64> {
    let n0 = norm(u0).max(1e-7);
    let n1 = norm(u1).max(1e-7);
    let c = (dot(u0, u1) / (n0 * n1)).clamp(-1.0, 1.0);
    if 1.0 - c * c <= 1e-16 {
        return u0
            .iter()
            .zip(u1)
            .map(|(a, b)| (1.0 - t) * a + t * b)
            .collect();
    }
    let th = c.acos();
    u0.iter()
        .zip(u1)
        .map(|(a, b)| (((1.0 - t) * th).sin() * a + (t * th).sin() * b) / th.sin())
        .collect()
}

#[test]
fn nuslerp_matches_its_definition_for_tensors_rows_and_columns() {
    let (rows, cols) = (37, 29);
    let n = rows * cols;
    let models = family(n);
    let base = values(n, 11);
    let (w0, w1) = (0.6, 0.4);
    let t = w1 / (w0 + w1);
    let u0: Vec<f64> = models[0]
        .iter()
        .zip(&base)
        .map(|(x, b0)| f64::from(x - b0))
        .collect();
    let u1: Vec<f64> = models[1]
        .iter()
        .zip(&base)
        .map(|(x, b0)| f64::from(x - b0))
        .collect();
    let owned = [
        Owned::new("t", &[rows, cols], &models[0]),
        Owned::new("t", &[rows, cols], &models[1]),
    ];
    let base_t = Owned::new("t", &[rows, cols], &base);
    let per_model = vec![vec![("weight", f(w0))], vec![("weight", f(w1))]];
    for (flatten, row_wise) in [(true, false), (false, false), (false, true)] {
        let mut expected = vec![0.0; n];
        let vectors: Vec<Vec<usize>> = if flatten {
            vec![(0..n).collect()]
        } else if !row_wise {
            (0..rows)
                .map(|r| (r * cols..(r + 1) * cols).collect())
                .collect()
        } else {
            (0..cols)
                .map(|c| (0..rows).map(|r| r * cols + c).collect())
                .collect()
        };
        for idx in vectors {
            let a: Vec<f64> = idx.iter().map(|&j| u0[j]).collect();
            let c: Vec<f64> = idx.iter().map(|&j| u1[j]).collect();
            for (k, v) in slerp_pair(t, &a, &c).into_iter().enumerate() {
                expected[idx[k]] = v + f64::from(base[idx[k]]);
            }
        }
        let p = params(
            &[
                ("nuslerp_flatten", b(flatten)),
                ("nuslerp_row_wise", b(row_wise)),
            ],
            &per_model,
        );
        let got = run(&Nuslerp, Some(&base_t), &owned, &p, 0);
        assert_close(
            &got,
            &expected,
            1e-5,
            &format!("nuslerp flatten={flatten} row_wise={row_wise}"),
        );
    }
}

#[test]
fn model_stock_matches_its_definition_whole_and_filter_wise() {
    let (rows, cols) = (12, 50);
    let n = rows * cols;
    let models = family(n);
    let base = values(n, 3);
    let owned: Vec<Owned> = models[..3]
        .iter()
        .map(|m| Owned::new("t", &[rows, cols], m))
        .collect();
    let base_t = Owned::new("t", &[rows, cols], &base);
    for filter_wise in [false, true] {
        let vectors: Vec<Vec<usize>> = if filter_wise {
            (0..rows)
                .map(|r| (r * cols..(r + 1) * cols).collect())
                .collect()
        } else {
            vec![(0..n).collect()]
        };
        let mut expected = vec![0.0; n];
        for idx in vectors {
            let o: Vec<Vec<f64>> = models[..3]
                .iter()
                .map(|m| idx.iter().map(|&j| f64::from(m[j] - base[j])).collect())
                .collect();
            let mut cs = Vec::new();
            for i in 0..3 {
                for j in i + 1..3 {
                    cs.push(
                        (dot(&o[i], &o[j]) / (norm(&o[i]) * norm(&o[j])).max(1e-6))
                            .clamp(-1.0, 1.0),
                    );
                }
            }
            let c = cs.iter().sum::<f64>() / cs.len() as f64;
            let t = 3.0 * c / (1.0 + 2.0 * c);
            for &j in &idx {
                let mean = models[..3].iter().map(|m| f64::from(m[j])).sum::<f64>() / 3.0;
                expected[j] = t * mean + (1.0 - t) * f64::from(base[j]);
            }
        }
        let p = params(
            &[("filter_wise", b(filter_wise))],
            &[vec![], vec![], vec![]],
        );
        assert_close(
            &run(&ModelStock, Some(&base_t), &owned, &p, 0),
            &expected,
            1e-5,
            "model_stock",
        );
    }
}

#[test]
fn sce_matches_its_definition() {
    let n = 5000;
    let models = family(n);
    let base = values(n, 5);
    let owned: Vec<Owned> = models[..3]
        .iter()
        .map(|m| Owned::new("t", &[n], m))
        .collect();
    let base_t = Owned::new("t", &[n], &base);
    let topk = 0.4;
    let tau: Vec<Vec<f64>> = models[..3]
        .iter()
        .map(|m| {
            m.iter()
                .zip(&base)
                .map(|(x, b0)| f64::from(x - b0))
                .collect()
        })
        .collect();
    let var: Vec<f64> = (0..n)
        .map(|j| {
            let mean = tau.iter().map(|t| t[j]).sum::<f64>() / 3.0;
            tau.iter().map(|t| (t[j] - mean).powi(2)).sum::<f64>() / 3.0
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &c| var[c].total_cmp(&var[a]).then(a.cmp(&c)));
    let k = (var.iter().filter(|&&v| v != 0.0).count() as f64 * topk) as usize;
    let mut keep = vec![false; n];
    order[..k].iter().for_each(|&j| keep[j] = true);
    let masked: Vec<Vec<f64>> = tau
        .iter()
        .map(|t| (0..n).map(|j| if keep[j] { t[j] } else { 0.0 }).collect())
        .collect();
    let mut s: Vec<f64> = masked
        .iter()
        .map(|t| t.iter().map(|v| v * v).sum::<f64>() / n as f64)
        .collect();
    let total: f64 = s.iter().sum();
    if total.abs() < 1e-6 {
        s.fill(1.0 / 3.0);
    } else {
        s.iter_mut().for_each(|v| *v /= total);
    }
    let expected: Vec<f64> = (0..n)
        .map(|j| {
            let sum: f64 = masked.iter().map(|t| t[j]).sum();
            let (mut num, mut den) = (0.0, 0.0);
            for (t, si) in masked.iter().zip(&s) {
                if (sum >= 0.0 && t[j] > 0.0) || (sum < 0.0 && t[j] < 0.0) {
                    num += t[j] * si;
                    den += si;
                }
            }
            f64::from(base[j]) + num / f64::max(den, 1e-6)
        })
        .collect();
    let p = params(
        &[("select_topk", f(topk)), ("int8_mask", b(false))],
        &[vec![], vec![], vec![]],
    );
    assert_close(
        &run(&Sce, Some(&base_t), &owned, &p, 0),
        &expected,
        1e-5,
        "sce",
    );
}

/// Shared parameters of a GTA method with no normalisation, scaling or rescale.
fn plain_gta() -> [(&'static str, mergescope_core::merge::Value); 4] {
    [
        ("normalize", b(false)),
        ("lambda", f(1.0)),
        ("int8_mask", b(false)),
        ("rescale", b(false)),
    ]
}

#[test]
fn breadcrumbs_keeps_the_band_between_the_outliers_and_the_smallest() {
    let n = 1000;
    let base = vec![0.0f32; n];
    // Distinct magnitudes with alternating signs: the band is unambiguous.
    let model: Vec<f32> = (0..n)
        .map(|j| (j as f32 + 1.0) * if j % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let p = params(
        &plain_gta(),
        &[vec![
            ("weight", f(1.0)),
            ("density", f(0.6)),
            ("gamma", f(0.1)),
        ]],
    );
    let got = run(
        &Breadcrumbs,
        Some(&Owned::new("t", &[n], &base)),
        &[Owned::new("t", &[n], &model)],
        &p,
        0,
    );
    // target 600, top 100 removed, bottom 1000 - 600 - 100 = 300 removed.
    for (j, g) in got.iter().enumerate() {
        let expected = if (300..900).contains(&j) {
            model[j]
        } else {
            0.0
        };
        assert_eq!(*g, expected, "element {j}");
    }
}

#[test]
fn della_keep_probability_rises_with_rank_in_the_row() {
    let (rows, cols) = (400, 100);
    let n = rows * cols;
    let base = vec![0.0f32; n];
    // Every row holds magnitudes 1..=100 in a shuffled order.
    let model: Vec<f32> = (0..n)
        .map(|j| ((j % cols * 37 + j / cols) % cols) as f32 + 1.0)
        .collect();
    let (density, epsilon) = (0.5, 0.3);
    let p = params(
        &plain_gta(),
        &[vec![
            ("weight", f(1.0)),
            ("density", f(density)),
            ("epsilon", f(epsilon)),
        ]],
    );
    let got = run(
        &Della,
        Some(&Owned::new("t", &[rows, cols], &base)),
        &[Owned::new("t", &[rows, cols], &model)],
        &p,
        3,
    );
    // Group by rank decile: keep rate within 4 binomial sigmas of p(rank).
    for decile in 0..10 {
        let ranks = decile * 10..(decile + 1) * 10;
        let (mut kept, mut total, mut p_sum) = (0usize, 0usize, 0.0);
        for j in 0..n {
            let rank = model[j] as usize - 1;
            if ranks.contains(&rank) {
                total += 1;
                kept += usize::from(got[j] != 0.0);
                p_sum += density - epsilon + 2.0 * epsilon * rank as f64 / (cols - 1) as f64;
            }
        }
        let p_mean = p_sum / total as f64;
        let sigma = (p_mean * (1.0 - p_mean) / total as f64).sqrt();
        let rate = kept as f64 / total as f64;
        assert!(
            (rate - p_mean).abs() < 4.0 * sigma,
            "decile {decile}: kept {rate}, expected {p_mean}"
        );
    }
}

#[test]
fn passthrough_scales_its_one_input() {
    let x = values(100, 2);
    let p = params(&[], &[vec![("scale", f(0.5))]]);
    let got = run(&Passthrough, None, &[Owned::new("t", &[100], &x)], &p, 0);
    assert_eq!(got, x.iter().map(|v| v * 0.5).collect::<Vec<_>>());
}
