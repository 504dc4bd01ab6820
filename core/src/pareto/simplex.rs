//! Preferences on the simplex (PARETO.md §2).
//!
//! A preference has one non-negative weight per objective, summing to 1. This module makes
//! them: the Das–Dennis grid (the rays a front is probed along), seeded Dirichlet(1) samples
//! (uniform on the simplex, for training maps), and [`project`] to turn any vector into one.

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

/// The largest number of rays [`default_divisions`] allows.
const MAX_DEFAULT_RAYS: usize = 100;

/// The binomial coefficient C(n, k); 0 when `k > n`, and `usize::MAX` when the true value
/// does not fit.
pub fn binomial(n: usize, k: usize) -> usize {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut c: u128 = 1;
    for i in 1..=k {
        // c = C(n − k + i − 1, i − 1) here; times (n − k + i) / i is C(n − k + i, i), and the
        // division is exact. Both factors fit in usize, so the product cannot overflow u128.
        c = c * (n - k + i) as u128 / i as u128;
        if c > usize::MAX as u128 {
            return usize::MAX;
        }
    }
    c as usize
}

/// The Das–Dennis grid: every preference whose entries are multiples of `1 / divisions`,
/// C(divisions + objectives − 1, objectives − 1) of them.
///
/// The points come in lexicographic order of their integer numerators (so `[0, …, 0, 1]`
/// first and `[1, 0, …, 0]` last). Each entry is `k / divisions` rounded once, so it is the
/// closest double to the exact fraction; the sum may miss 1 by a rounding error.
///
/// Degenerate cases: one objective gives `[[1.0]]`; zero divisions with several objectives has
/// no grid, so the uniform preference alone is returned; zero objectives give no points.
pub fn das_dennis(objectives: usize, divisions: usize) -> Vec<Vec<f64>> {
    let m = objectives;
    if m == 0 {
        return Vec::new();
    }
    if m == 1 {
        return vec![vec![1.0]];
    }
    if divisions == 0 {
        return vec![vec![1.0 / m as f64; m]];
    }
    let p = divisions as f64;
    let mut out = Vec::with_capacity(binomial(divisions + m - 1, m - 1));
    let mut numerators = vec![0usize; m];
    compositions(&mut numerators, 0, divisions, &mut |ks: &[usize]| {
        out.push(ks.iter().map(|&k| k as f64 / p).collect());
    });
    out
}

/// Calls `emit` with every way of writing `left` as the sum of `ks[at..]` (non-negative
/// integers), in lexicographic order; `ks[..at]` is kept as set by the caller.
fn compositions(ks: &mut [usize], at: usize, left: usize, emit: &mut impl FnMut(&[usize])) {
    if at + 1 == ks.len() {
        ks[at] = left;
        emit(ks);
        return;
    }
    for k in 0..=left {
        ks[at] = k;
        compositions(ks, at + 1, left - k, emit);
    }
}

/// The largest number of divisions whose Das–Dennis grid has at most 100 points (2
/// objectives: 99; 3: 12, giving 91 rays; 4: 6, giving 84); at least 1.
///
/// With one objective every grid is the single point `[1.0]`, so 1 is returned.
pub fn default_divisions(objectives: usize) -> usize {
    if objectives <= 1 {
        return 1;
    }
    let rays = |p: usize| binomial(p + objectives - 1, objectives - 1);
    let mut p = 1;
    // The count grows with p, so the first p + 1 over the limit ends the search.
    while rays(p + 1) <= MAX_DEFAULT_RAYS {
        p += 1;
    }
    p
}

/// `count` preferences drawn from Dirichlet(1, …, 1), the uniform distribution on the
/// simplex; the same `seed` always gives the same points.
///
/// Each point is a vector of Exp(1) draws divided by its sum. Zero objectives give `count`
/// empty points.
pub fn dirichlet(objectives: usize, count: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let draws: Vec<f64> = (0..objectives)
                .map(|_| {
                    // `random` is in [0, 1); 1 − u is in (0, 1], so the log is finite.
                    let u = 1.0 - rng.random::<f64>();
                    -u.ln()
                })
                .collect();
            // `project` also covers the (vanishingly unlikely) all-zero draw.
            project(&draws)
        })
        .collect()
}

/// A valid preference made from any vector: negative and NaN entries become 0, then the
/// vector is divided by its sum. An all-zero vector becomes the uniform preference.
///
/// Infinite entries are treated as the limit of huge ones: they share the weight equally and
/// every finite entry gets 0. An empty vector stays empty.
pub fn project(w: &[f64]) -> Vec<f64> {
    let m = w.len();
    // `x > 0.0` is false for NaN as well as for negatives.
    let cleaned: Vec<f64> = w.iter().map(|&x| if x > 0.0 { x } else { 0.0 }).collect();
    let infinite = cleaned.iter().filter(|x| x.is_infinite()).count();
    if infinite > 0 {
        let share = 1.0 / infinite as f64;
        return cleaned
            .iter()
            .map(|x| if x.is_infinite() { share } else { 0.0 })
            .collect();
    }
    let max = cleaned.iter().copied().fold(0.0, f64::max);
    if max == 0.0 {
        return vec![1.0 / m as f64; m];
    }
    // Scaling by the largest entry first keeps the sum finite even for entries near f64::MAX.
    let scaled: Vec<f64> = cleaned.iter().map(|x| x / max).collect();
    let sum: f64 = scaled.iter().sum();
    scaled.iter().map(|x| x / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_on_simplex(w: &[f64]) {
        assert!(w.iter().all(|&x| (0.0..=1.0).contains(&x)), "{w:?}");
        let sum: f64 = w.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12, "{w:?} sums to {sum}");
    }

    #[test]
    fn binomial_values() {
        assert_eq!(binomial(0, 0), 1);
        assert_eq!(binomial(5, 0), 1);
        assert_eq!(binomial(5, 5), 1);
        assert_eq!(binomial(5, 2), 10);
        assert_eq!(binomial(6, 3), 20);
        assert_eq!(binomial(9, 3), 84);
        assert_eq!(binomial(52, 5), 2_598_960);
        assert_eq!(binomial(3, 4), 0);
        // C(67, 33) ≈ 1.4e19 fits in u64; C(70, 35) ≈ 1.1e20 does not.
        assert_eq!(binomial(67, 33), 14_226_520_737_620_288_370);
        assert_eq!(binomial(70, 35), usize::MAX);
        // Pascal's rule.
        for n in 1..30 {
            for k in 1..n {
                assert_eq!(binomial(n, k), binomial(n - 1, k - 1) + binomial(n - 1, k));
            }
        }
    }

    #[test]
    fn grid_counts_match_the_binomial() {
        for (m, p, count) in [
            (4, 3, 20),
            (4, 4, 35),
            (4, 6, 84),
            (3, 12, 91),
            (2, 99, 100),
        ] {
            assert_eq!(das_dennis(m, p).len(), count, "m = {m}, p = {p}");
        }
        for m in 2..=5 {
            for p in 1..=8 {
                assert_eq!(das_dennis(m, p).len(), binomial(p + m - 1, m - 1));
            }
        }
    }

    #[test]
    fn grid_points_are_on_the_simplex_distinct_and_on_the_lattice() {
        for m in 2..=5 {
            for p in 1..=7 {
                let grid = das_dennis(m, p);
                for w in &grid {
                    assert_eq!(w.len(), m);
                    assert_on_simplex(w);
                    // Each entry is exactly the double nearest some k / p.
                    for &x in w {
                        let k = (x * p as f64).round();
                        assert_eq!(x, k / p as f64);
                    }
                }
                // Strictly increasing in lexicographic order: deterministic and no duplicates.
                for pair in grid.windows(2) {
                    assert_eq!(
                        pair[0].partial_cmp(&pair[1]),
                        Some(std::cmp::Ordering::Less)
                    );
                }
            }
        }
    }

    #[test]
    fn small_grid_by_hand() {
        assert_eq!(
            das_dennis(3, 2),
            vec![
                vec![0.0, 0.0, 1.0],
                vec![0.0, 0.5, 0.5],
                vec![0.0, 1.0, 0.0],
                vec![0.5, 0.0, 0.5],
                vec![0.5, 0.5, 0.0],
                vec![1.0, 0.0, 0.0],
            ]
        );
        assert_eq!(das_dennis(2, 1), vec![vec![0.0, 1.0], vec![1.0, 0.0]]);
    }

    #[test]
    fn degenerate_grids() {
        assert_eq!(das_dennis(1, 0), vec![vec![1.0]]);
        assert_eq!(das_dennis(1, 5), vec![vec![1.0]]);
        assert_eq!(das_dennis(4, 0), vec![vec![0.25; 4]]);
        assert!(das_dennis(0, 3).is_empty());
    }

    #[test]
    fn default_divisions_values() {
        assert_eq!(default_divisions(2), 99);
        assert_eq!(default_divisions(3), 12);
        assert_eq!(default_divisions(4), 6);
        assert_eq!(das_dennis(4, default_divisions(4)).len(), 84);
        assert_eq!(default_divisions(1), 1);
        assert_eq!(default_divisions(0), 1);
        // 200 objectives: even p = 1 gives 200 rays, over the limit, but the floor is 1.
        assert_eq!(default_divisions(200), 1);
        for m in 2..=12 {
            let p = default_divisions(m);
            let rays = binomial(p + m - 1, m - 1);
            assert!(rays <= 100 || p == 1, "m = {m}");
            assert!(binomial(p + m, m - 1) > 100, "m = {m}");
        }
    }

    #[test]
    fn dirichlet_points_are_on_the_simplex_and_reproducible() {
        let a = dirichlet(4, 200, 11);
        assert_eq!(a.len(), 200);
        for w in &a {
            assert_eq!(w.len(), 4);
            assert_on_simplex(w);
        }
        assert_eq!(a, dirichlet(4, 200, 11));
        assert_ne!(a, dirichlet(4, 200, 12));
        // A shorter request is a prefix of a longer one with the same seed.
        assert_eq!(dirichlet(4, 50, 11), a[..50]);
        assert!(dirichlet(3, 0, 1).is_empty());
        assert_eq!(dirichlet(0, 2, 1), vec![Vec::<f64>::new(); 2]);
        assert_eq!(dirichlet(1, 3, 1), vec![vec![1.0]; 3]);
    }

    #[test]
    fn dirichlet_is_uniform_on_the_simplex() {
        let m = 3;
        let n = 20_000;
        let draws = dirichlet(m, n, 5);
        for j in 0..m {
            let mean = draws.iter().map(|w| w[j]).sum::<f64>() / n as f64;
            // Each coordinate is Beta(1, m − 1): mean 1/m, variance (m − 1)/(m²(m + 1)), so the
            // mean's standard error here is about 0.0017.
            assert!(
                (mean - 1.0 / m as f64).abs() < 0.01,
                "coordinate {j}: {mean}"
            );
            // Beta(1, 2) has P(X > 1/2) = (1/2)² = 1/4.
            let above = draws.iter().filter(|w| w[j] > 0.5).count() as f64 / n as f64;
            assert!((above - 0.25).abs() < 0.015, "coordinate {j}: {above}");
        }
    }

    #[test]
    fn project_makes_a_preference() {
        assert_eq!(project(&[1.0, 1.0, 2.0]), vec![0.25, 0.25, 0.5]);
        assert_eq!(project(&[-1.0, f64::NAN, 3.0]), vec![0.0, 0.0, 1.0]);
        assert_eq!(project(&[0.0, 0.0]), vec![0.5, 0.5]);
        assert_eq!(project(&[-2.0, f64::NAN, 0.0, -0.0]), vec![0.25; 4]);
        assert_eq!(
            project(&[f64::INFINITY, 1.0, f64::INFINITY]),
            vec![0.5, 0.0, 0.5]
        );
        assert_eq!(project(&[f64::NEG_INFINITY, 2.0]), vec![0.0, 1.0]);
        assert!(project(&[]).is_empty());
        let huge = project(&[f64::MAX, f64::MAX, f64::MAX / 2.0]);
        assert_eq!(huge, vec![0.4, 0.4, 0.2]);
        // A valid preference is left as it is.
        for w in das_dennis(4, 3) {
            let p = project(&w);
            assert_on_simplex(&p);
            for (a, b) in p.iter().zip(&w) {
                assert!((a - b).abs() < 1e-15);
            }
        }
    }
}
