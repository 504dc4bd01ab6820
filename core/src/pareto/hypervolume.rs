//! Exact hypervolume (PARETO.md §3).
//!
//! The hypervolume of a set S with respect to a reference r is the Lebesgue measure of the
//! union of the boxes [r, p] over p in S. Every objective is maximised, so a point only adds
//! volume when it is above r on every objective; a point at or below r on any objective spans
//! an empty box and is ignored.
//!
//! The computation is exact (up to floating-point rounding), never a Monte-Carlo estimate: one
//! objective is a maximum, two a sort and a sweep, three a sweep along the third objective
//! over a 2-D staircase (O(n log n)), and four or more the WFG algorithm (While, Bradstreet &
//! Barone 2012) down to the three-objective sweep. (WFG could go down to two objectives, but
//! its three-objective level is quadratic or worse; the sweep makes 1,300 points in 4-D take
//! a fraction of a second rather than seconds.)
//!
//! WFG writes the volume as a sum of exclusive volumes. With the points sorted by the last
//! objective, best first, slicing along that objective gives
//!
//! HV(S) = Σ_i (p_i,m − r_m) · excl(p_i | p_0 … p_{i−1}) over the first m − 1 objectives,
//!
//! and the exclusive volume of p against a set T is the volume of p's box minus the volume of
//! the *limit set* {min(p, t) : t in T} (what of p's box T already covers), computed by the
//! same recursion, on the limit set's non-dominated points.

use std::cmp::Ordering;

/// The smallest range [`normalise`] divides by, so that an empty range cannot divide by 0.
const MIN_RANGE: f64 = 1e-12;

/// The hypervolume of `points` with respect to `reference`, every objective maximised.
///
/// Points at or below the reference on any objective add nothing, as do dominated points
/// and repeats. No points, or zero objectives, give 0.
///
/// # Panics
/// If a point's length differs from the reference's.
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let m = reference.len();
    if m == 0 {
        return 0.0;
    }
    let inside: Vec<f64> = boxed_points(points, reference)
        .into_iter()
        .flat_map(|i| points[i].iter().copied())
        .collect();
    volume(&inside, m, reference)
}

/// Each point's exclusive contribution HV(S) − HV(S \ {p}), in input order.
///
/// Dominated points, repeated points (removing one copy leaves the other) and points not above
/// the reference contribute 0.
///
/// # Panics
/// If a point's length differs from the reference's.
pub fn contributions(points: &[Vec<f64>], reference: &[f64]) -> Vec<f64> {
    let m = reference.len();
    let mut out = vec![0.0; points.len()];
    if m == 0 {
        return out;
    }
    let inside = boxed_points(points, reference);
    // Only a point nothing else covers can contribute. Checked against every other point with
    // a box, not just one copy per value, so that each of two equal points gets 0.
    let alone: Vec<usize> = inside
        .iter()
        .copied()
        .filter(|&i| {
            !inside
                .iter()
                .any(|&j| j != i && weakly_dominates(&points[j], &points[i]))
        })
        .collect();
    let mut limit = Vec::new();
    for &i in &alone {
        // The limit set uses every other point with a box, covered ones included: two equal
        // points cover each other, yet one of them still covers part of p.
        let p = &points[i];
        limit.clear();
        for &j in inside.iter().filter(|&&j| j != i) {
            limit.extend(p.iter().zip(&points[j]).map(|(a, b)| a.min(*b)));
        }
        let covered = volume(&limit, m, reference);
        // Exact arithmetic gives a non-negative value; rounding may not.
        out[i] = (box_volume(p, reference) - covered).max(0.0);
    }
    out
}

/// Normalised objectives g_j = (f_j − r_j) / (z_j − r_j), mapping the reference to 0 and the
/// ideal point `ideal` to 1.
///
/// An objective whose range z_j − r_j is empty (z_j ≤ r_j) or below 1e-12 is divided by 1e-12
/// instead, so nothing divides by 0 or flips sign. Nothing is clipped: values below the
/// reference come out negative, which [`hypervolume`] ignores anyway.
///
/// # Panics
/// If the three slices differ in length.
pub fn normalise(value: &[f64], reference: &[f64], ideal: &[f64]) -> Vec<f64> {
    assert_eq!(
        value.len(),
        reference.len(),
        "value and reference differ in length"
    );
    assert_eq!(
        ideal.len(),
        reference.len(),
        "ideal and reference differ in length"
    );
    value
        .iter()
        .zip(reference)
        .zip(ideal)
        .map(|((f, r), z)| (f - r) / (z - r).max(MIN_RANGE))
        .collect()
}

/// Indices of the points strictly above the reference on every objective: the only ones
/// whose boxes have volume. (`>` is false for NaN, so a NaN objective empties the box too.)
fn boxed_points(points: &[Vec<f64>], reference: &[f64]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let p = &points[i];
            assert_eq!(
                p.len(),
                reference.len(),
                "point {i} and the reference differ in length"
            );
            p.iter().zip(reference).all(|(x, r)| x > r)
        })
        .collect()
}

/// Is `a` at least as good as `b` everywhere (dominates it, or equals it)?
fn weakly_dominates(a: &[f64], b: &[f64]) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y)
}

/// The volume of the box [r, p] over the first `p.len()` objectives.
fn box_volume(p: &[f64], r: &[f64]) -> f64 {
    p.iter().zip(r).map(|(x, y)| x - y).product()
}

/// The points of a flat list (`d` values per point) that no other point weakly dominates,
/// one copy of each, as a flat list.
fn non_dominated_flat(set: &[f64], d: usize) -> Vec<f64> {
    let points: Vec<&[f64]> = set.chunks_exact(d).collect();
    let sums: Vec<f64> = points.iter().map(|p| p.iter().sum()).collect();
    // A point that dominates another has a sum at least as large (rounding is monotone) and,
    // on a tie, is lexicographically larger. Sorted this way, every point comes after those
    // that dominate it, so one pass against the points kept so far finds all of them.
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_unstable_by(|&a, &b| {
        sums[b]
            .total_cmp(&sums[a])
            .then_with(|| lexicographic(points[b], points[a]))
    });
    let mut kept: Vec<f64> = Vec::with_capacity(set.len());
    for i in order {
        if !kept.chunks_exact(d).any(|k| weakly_dominates(k, points[i])) {
            kept.extend_from_slice(points[i]);
        }
    }
    kept
}

/// Lexicographic order of two points by `total_cmp`. (It tells -0.0 from 0.0, which can only
/// leave a dominated point in a set: the volume does not change.)
fn lexicographic(a: &[f64], b: &[f64]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.total_cmp(y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// The hypervolume of a flat list of `d`-objective points, all strictly above `r` (only its
/// first `d` entries are read). Dominated and repeated points are allowed.
fn volume(set: &[f64], d: usize, r: &[f64]) -> f64 {
    let n = set.len() / d;
    match (n, d) {
        (0, _) => 0.0,
        (1, _) => box_volume(set, r),
        (_, 1) => set.iter().copied().fold(f64::NEG_INFINITY, f64::max) - r[0],
        (_, 2) => sweep_2d(set, r),
        (_, 3) => sweep_3d(set, r),
        // WFG's work grows with the size of every set it recurses on, so the dominated points
        // go first; the sweeps above pass over them cheaply instead.
        _ => wfg(&non_dominated_flat(set, d), d, r),
    }
}

/// Two objectives: with the points by the first objective, best first, each point adds the
/// strip between its second objective and the best second objective seen so far.
fn sweep_2d(set: &[f64], r: &[f64]) -> f64 {
    let mut pairs: Vec<(f64, f64)> = set.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    pairs.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
    let mut area = 0.0;
    let mut top = r[1];
    for (x, y) in pairs {
        if y > top {
            area += (x - r[0]) * (y - top);
            top = y;
        }
    }
    area
}

/// Three objectives: with the points by the third objective, best first, keep the 2-D front
/// of the points seen so far (a staircase, by the first objective ascending) and its area;
/// each slab between consecutive third objectives has that area as its cross-section.
/// O(n log n) comparisons plus the staircase's shifts, and dominated points cost only a search.
fn sweep_3d(set: &[f64], r: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..set.len() / 3).collect();
    order.sort_unstable_by(|&a, &b| set[b * 3 + 2].total_cmp(&set[a * 3 + 2]));
    // (x, y) with x ascending and so y descending: no entry dominates another.
    let mut stair: Vec<(f64, f64)> = Vec::new();
    let mut area = 0.0;
    let mut total = 0.0;
    for (k, &i) in order.iter().enumerate() {
        let (x, y) = (set[i * 3], set[i * 3 + 1]);
        // The first entry at or right of x has the largest y of all those that are.
        let at = stair.partition_point(|s| s.0 < x);
        let mut height = r[1];
        if let Some(&(_, above)) = stair.get(at) {
            height = above;
        }
        if height < y {
            // Walk left over the entries the new point dominates, adding the strips it covers
            // above the current staircase: between `left` and `right` the staircase is at
            // `height`.
            let remove_to = at + usize::from(stair.get(at).is_some_and(|s| s.0 == x));
            let mut remove_from = at;
            let mut right = x;
            loop {
                let (left, left_height) = match remove_from.checked_sub(1) {
                    Some(j) => stair[j],
                    None => (r[0], f64::INFINITY),
                };
                area += (right - left) * (y - height);
                if left_height > y {
                    break;
                }
                remove_from -= 1;
                right = left;
                height = left_height;
            }
            stair.splice(remove_from..remove_to, [(x, y)]);
        }
        let next = order.get(k + 1).map_or(r[2], |&j| set[j * 3 + 2]);
        total += area * (set[i * 3 + 2] - next);
    }
    total
}

/// Four or more objectives: WFG, slicing along the last objective (see the module docs).
fn wfg(set: &[f64], d: usize, r: &[f64]) -> f64 {
    let n = set.len() / d;
    let last = d - 1;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_unstable_by(|&a, &b| set[b * d + last].total_cmp(&set[a * d + last]));
    let sorted: Vec<f64> = order
        .iter()
        .flat_map(|&i| &set[i * d..(i + 1) * d])
        .copied()
        .collect();

    let mut total = 0.0;
    let mut limit: Vec<f64> = Vec::new();
    for i in 0..n {
        let p = &sorted[i * d..i * d + last];
        let height = sorted[i * d + last] - r[last];
        // The limit set of p against the points before it, over the first d − 1 objectives.
        // A point that covers p there leaves p nothing of its own: skip the recursion.
        limit.clear();
        let mut covered = false;
        for q in sorted[..i * d].chunks_exact(d) {
            let q = &q[..last];
            if weakly_dominates(q, p) {
                covered = true;
                break;
            }
            limit.extend(p.iter().zip(q).map(|(a, b)| a.min(*b)));
        }
        if covered {
            continue;
        }
        let exclusive = box_volume(p, r) - volume(&limit, last, r);
        total += height * exclusive.max(0.0);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom as _;
    use rand::{Rng as _, SeedableRng as _};
    use rand_chacha::ChaCha8Rng;

    fn pts(rows: &[&[f64]]) -> Vec<Vec<f64>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    /// Slow reference 1: inclusion–exclusion over every non-empty subset. The intersection of
    /// boxes [r, p] is the box [r, min p], empty when any min is at or below r.
    fn inclusion_exclusion(points: &[Vec<f64>], r: &[f64]) -> f64 {
        let n = points.len();
        assert!(n <= 16);
        let mut total = 0.0;
        for mask in 1u32..(1 << n) {
            let members: Vec<&Vec<f64>> = (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| &points[i])
                .collect();
            let mut vol = 1.0;
            for j in 0..r.len() {
                let top = members.iter().map(|p| p[j]).fold(f64::INFINITY, f64::min);
                vol *= (top - r[j]).max(0.0);
            }
            let sign = if mask.count_ones() % 2 == 1 {
                1.0
            } else {
                -1.0
            };
            total += sign * vol;
        }
        total
    }

    /// Slow reference 2: cut space along every coordinate any point has, and add up the cells
    /// whose upper corner some point reaches (a cell is then inside that point's box).
    fn cells(points: &[Vec<f64>], r: &[f64]) -> f64 {
        let m = r.len();
        let cuts: Vec<Vec<f64>> = (0..m)
            .map(|j| {
                let mut c: Vec<f64> = points.iter().map(|p| p[j].max(r[j])).collect();
                c.push(r[j]);
                c.sort_by(f64::total_cmp);
                c.dedup();
                c
            })
            .collect();
        let mut total = 0.0;
        let mut index = vec![1usize; m];
        'cells: loop {
            if index.iter().zip(&cuts).all(|(&k, c)| k < c.len()) {
                let upper: Vec<f64> = (0..m).map(|j| cuts[j][index[j]]).collect();
                if points
                    .iter()
                    .any(|p| p.iter().zip(&upper).all(|(a, b)| a >= b))
                {
                    total += (0..m)
                        .map(|j| cuts[j][index[j]] - cuts[j][index[j] - 1])
                        .product::<f64>();
                }
            }
            // Next cell, odometer style.
            for j in 0..m {
                index[j] += 1;
                if index[j] < cuts[j].len() {
                    continue 'cells;
                }
                index[j] = 1;
            }
            break;
        }
        total
    }

    /// Random points, a few of them below the reference on some objective; with `grid`, on a
    /// coarse lattice so that ties and duplicates are common.
    fn random_points(rng: &mut ChaCha8Rng, n: usize, m: usize, grid: bool) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                (0..m)
                    .map(|_| {
                        if grid {
                            f64::from(rng.random_range(-1..5)) * 0.25
                        } else {
                            rng.random_range(-0.1..1.0)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Points on the positive part of the unit sphere: all mutually non-dominated.
    fn sphere_points(rng: &mut ChaCha8Rng, n: usize, m: usize) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                let v: Vec<f64> = (0..m).map(|_| rng.random_range(0.01..1.0)).collect();
                let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect()
    }

    #[test]
    fn two_objectives_by_hand() {
        let r = [0.0, 0.0];
        assert_eq!(
            hypervolume(&pts(&[&[1.0, 3.0], &[2.0, 2.0], &[3.0, 1.0]]), &r),
            6.0
        );
        assert_eq!(hypervolume(&pts(&[&[2.0, 3.0]]), &r), 6.0);
        // A shifted reference: (3, 4) against (1, 1) spans 2 × 3.
        assert_eq!(hypervolume(&pts(&[&[3.0, 4.0]]), &[1.0, 1.0]), 6.0);
        // Staircase (k, n − k), k = 1..n − 1: area Σ_k k·1 over the steps = n(n − 1)/2.
        let n = 50;
        let stairs: Vec<Vec<f64>> = (1..n).map(|k| vec![k as f64, (n - k) as f64]).collect();
        assert_eq!(hypervolume(&stairs, &r), (n * (n - 1) / 2) as f64);
    }

    #[test]
    fn one_objective_is_the_best_minus_the_reference() {
        assert_eq!(hypervolume(&pts(&[&[2.0], &[5.0], &[-1.0]]), &[1.0]), 4.0);
        assert_eq!(hypervolume(&pts(&[&[0.5]]), &[1.0]), 0.0);
    }

    #[test]
    fn three_objectives_by_hand() {
        let r = [0.0; 3];
        assert_eq!(hypervolume(&pts(&[&[1.0, 1.0, 1.0]]), &r), 1.0);
        // 2 + 2 − 1 (the shared unit cube).
        assert_eq!(
            hypervolume(&pts(&[&[2.0, 1.0, 1.0], &[1.0, 2.0, 1.0]]), &r),
            3.0
        );
        // 4 + 3 − 1.
        assert_eq!(
            hypervolume(&pts(&[&[2.0, 2.0, 1.0], &[1.0, 1.0, 3.0]]), &r),
            6.0
        );
        // Three bars along the axes: 3·3 − 3·1 + 1.
        let bars = pts(&[&[3.0, 1.0, 1.0], &[1.0, 3.0, 1.0], &[1.0, 1.0, 3.0]]);
        assert_eq!(hypervolume(&bars, &r), 7.0);
        // Reference (1, 1, 1): the bars become (2, 0, 0) etc., all empty.
        assert_eq!(hypervolume(&bars, &[1.0; 3]), 0.0);
        // Reference (0.5, 0.5, 0.5): 3·(2.5·0.25) − 3·0.125 + 0.125.
        assert_eq!(hypervolume(&bars, &[0.5; 3]), 1.625);
    }

    #[test]
    fn four_objectives_by_hand() {
        let r = [0.0; 4];
        assert_eq!(hypervolume(&pts(&[&[1.0, 2.0, 3.0, 4.0]]), &r), 24.0);
        // 2·1·1·3 + 1·2·2·1 − 1·1·1·1.
        let two = pts(&[&[2.0, 1.0, 1.0, 3.0], &[1.0, 2.0, 2.0, 1.0]]);
        assert_eq!(hypervolume(&two, &r), 9.0);
        // Four bars along the axes, each of volume 3, any two or more sharing the unit cube:
        // 4·3 − 6 + 4 − 1.
        let bars: Vec<Vec<f64>> = (0..4)
            .map(|k| (0..4).map(|j| if j == k { 3.0 } else { 1.0 }).collect())
            .collect();
        assert_eq!(hypervolume(&bars, &r), 9.0);
        assert_eq!(contributions(&bars, &r), vec![2.0; 4]);
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(hypervolume(&[], &[0.0, 0.0]), 0.0);
        assert_eq!(hypervolume(&[], &[0.0; 4]), 0.0);
        assert_eq!(hypervolume(&pts(&[&[]]), &[]), 0.0);
        assert!(contributions(&[], &[0.0; 3]).is_empty());
    }

    #[test]
    fn points_not_above_the_reference_add_nothing() {
        let r = [1.0, 1.0, 1.0];
        let good = pts(&[&[2.0, 3.0, 2.0]]);
        let base = hypervolume(&good, &r);
        assert_eq!(base, 2.0);
        for bad in [
            [5.0, 5.0, 0.5], // below on one objective
            [5.0, 1.0, 5.0], // at the reference on one objective
            [0.0, 0.0, 0.0], // below everywhere
            [f64::NAN, 9.0, 9.0],
        ] {
            let mut with = good.clone();
            with.push(bad.to_vec());
            assert_eq!(hypervolume(&with, &r), base, "{bad:?}");
            assert_eq!(contributions(&with, &r)[1], 0.0, "{bad:?}");
        }
        // Same in two dimensions, and when every point is outside.
        assert_eq!(
            hypervolume(&pts(&[&[5.0, 0.0], &[0.0, 5.0]]), &[0.0, 0.0]),
            0.0
        );
    }

    #[test]
    fn order_and_dominated_points_do_not_matter() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for m in 2..=5 {
            let points = random_points(&mut rng, 30, m, false);
            let r = vec![0.0; m];
            let hv = hypervolume(&points, &r);
            let mut shuffled = points.clone();
            shuffled.shuffle(&mut rng);
            assert!(close(hypervolume(&shuffled, &r), hv), "m = {m}");
            // Dominated additions: shrink existing points towards the reference, and repeat
            // some exactly.
            let mut more = points.clone();
            for p in points.iter().take(10) {
                more.push(p.iter().map(|x| x * 0.9).collect());
                more.push(p.clone());
            }
            assert!(close(hypervolume(&more, &r), hv), "m = {m}");
        }
    }

    #[test]
    fn random_sets_match_inclusion_exclusion_and_cells() {
        let mut rng = ChaCha8Rng::seed_from_u64(2024);
        for case in 0..500 {
            let m = 2 + case % 5; // 2..=6 objectives
            let n = rng.random_range(1..=10);
            let points = random_points(&mut rng, n, m, case % 3 == 0);
            let r = vec![0.0; m];
            let hv = hypervolume(&points, &r);
            let ie = inclusion_exclusion(&points, &r);
            assert!(
                close(hv, ie),
                "case {case}: {hv} vs inclusion–exclusion {ie}"
            );
            // Up to 11^m cells: too many to visit in 6-D.
            if m <= 5 {
                let cell = cells(&points, &r);
                assert!(close(hv, cell), "case {case}: {hv} vs cells {cell}");
            }
        }
    }

    #[test]
    fn larger_random_sets_match_cells() {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        for (m, n) in [(3, 40), (3, 40), (4, 18), (4, 18)] {
            let mut points = sphere_points(&mut rng, n, m);
            points.extend(random_points(&mut rng, 5, m, false));
            let r = vec![0.0; m];
            let hv = hypervolume(&points, &r);
            let cell = cells(&points, &r);
            assert!(close(hv, cell), "m = {m}: {hv} vs {cell}");
        }
    }

    #[test]
    fn many_points_agree_with_their_own_reordering() {
        // A few hundred mutually non-dominated points in 4-D: the heavy path. No independent
        // reference is cheap at this size, so check the two slicing orders against each other
        // (reversing the objectives changes which objective WFG slices along).
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let points = sphere_points(&mut rng, 300, 4);
        let r = [0.0; 4];
        let hv = hypervolume(&points, &r);
        let reversed: Vec<Vec<f64>> = points
            .iter()
            .map(|p| p.iter().rev().copied().collect())
            .collect();
        assert!(close(hv, hypervolume(&reversed, &r)));
        // Every box [0, p] with |p| = 1 lies in the unit ball's positive orthant, of volume
        // π²/32 in 4-D.
        assert!(hv > 0.0 && hv < std::f64::consts::PI.powi(2) / 32.0);
    }

    #[test]
    fn a_large_mostly_dominated_set_has_the_volume_of_its_front() {
        // 1,300 evaluated points, as a long search gives: a front of 200 and 1,100 points
        // shrunk from front points (dominated), in shuffled order.
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let front = sphere_points(&mut rng, 200, 4);
        let mut all = front.clone();
        for k in 0..1100 {
            let factor = rng.random_range(0.5..0.999);
            all.push(front[k % 200].iter().map(|x| x * factor).collect());
        }
        all.shuffle(&mut rng);
        let r = [0.0; 4];
        assert!(close(hypervolume(&all, &r), hypervolume(&front, &r)));
    }

    #[test]
    fn a_constant_objective_multiplies_the_volume() {
        // Appending an objective equal to c for every point multiplies the volume by c − r.
        // This checks each method (2-D sweep, 3-D sweep, WFG in 4-D and 5-D) against the one
        // below it on sets too large for the slow references.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for m in 2..=4 {
            let mut points = sphere_points(&mut rng, 150, m);
            points.extend(random_points(&mut rng, 50, m, false));
            let r = vec![-0.05; m];
            let hv = hypervolume(&points, &r);
            let lifted: Vec<Vec<f64>> = points
                .iter()
                .map(|p| p.iter().copied().chain([2.0]).collect())
                .collect();
            let mut r_lifted = r.clone();
            r_lifted.push(0.5);
            assert!(close(hypervolume(&lifted, &r_lifted), 1.5 * hv), "m = {m}");
        }
    }

    #[test]
    fn contributions_match_the_definition() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for case in 0..200 {
            let m = 2 + case % 3;
            let n = rng.random_range(1..=12);
            let points = random_points(&mut rng, n, m, case % 2 == 0);
            let r = vec![0.0; m];
            let hv = hypervolume(&points, &r);
            let contrib = contributions(&points, &r);
            assert_eq!(contrib.len(), n);
            for i in 0..n {
                let mut without = points.clone();
                without.remove(i);
                let expected = hv - hypervolume(&without, &r);
                assert!(
                    (contrib[i] - expected).abs() < 1e-9,
                    "case {case}, point {i}: {} vs {expected}",
                    contrib[i]
                );
                assert!(contrib[i] >= 0.0);
            }
            assert!(contrib.iter().sum::<f64>() <= hv + 1e-9, "case {case}");
        }
    }

    #[test]
    fn contributions_by_hand() {
        let r = [0.0, 0.0];
        // (1,3), (2,2), (3,1): each owns one unit square; (1,1) is dominated; (2,2) repeated
        // owns nothing.
        let points = pts(&[&[1.0, 3.0], &[2.0, 2.0], &[3.0, 1.0], &[1.0, 1.0]]);
        assert_eq!(contributions(&points, &r), vec![1.0, 1.0, 1.0, 0.0]);
        let repeated = pts(&[&[1.0, 3.0], &[2.0, 2.0], &[3.0, 1.0], &[2.0, 2.0]]);
        assert_eq!(contributions(&repeated, &r), vec![1.0, 0.0, 1.0, 0.0]);
        // 3-D bars: each owns its bar beyond the shared unit cube, 2.
        let bars = pts(&[&[3.0, 1.0, 1.0], &[1.0, 3.0, 1.0], &[1.0, 1.0, 3.0]]);
        assert_eq!(contributions(&bars, &[0.0; 3]), vec![2.0, 2.0, 2.0]);
        // A lone point contributes all of it.
        assert_eq!(
            contributions(&pts(&[&[2.0, 3.0, 4.0]]), &[1.0; 3]),
            vec![6.0]
        );
    }

    #[test]
    fn normalise_maps_reference_to_zero_and_ideal_to_one() {
        let r = [1.0, -2.0, 0.0];
        let z = [3.0, 2.0, 10.0];
        assert_eq!(normalise(&r, &r, &z), vec![0.0; 3]);
        assert_eq!(normalise(&z, &r, &z), vec![1.0; 3]);
        assert_eq!(normalise(&[2.0, 0.0, -5.0], &r, &z), vec![0.5, 0.5, -0.5]);
        // An empty range divides by 1e-12: finite, signed by f − r.
        let g = normalise(&[1.5, 0.5], &[1.0, 1.0], &[1.0, 0.0]);
        assert!(g.iter().all(|x| x.is_finite()));
        assert!(close(g[0], 0.5e12) && close(g[1], -0.5e12));
        // The normalised box [0, 1]^m has volume 1.
        let corner = normalise(&z, &r, &z);
        assert_eq!(hypervolume(&[corner], &[0.0; 3]), 1.0);
    }

    #[test]
    #[should_panic(expected = "differ in length")]
    fn mismatched_lengths_panic() {
        hypervolume(&pts(&[&[1.0, 2.0]]), &[0.0; 3]);
    }
}
