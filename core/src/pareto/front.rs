//! Dominance and non-dominated sorting (PARETO.md §3).
//!
//! Every objective is maximised here; callers negate "min" objectives first. A point is a
//! slice of objective values, all points of one call have the same length.
//!
//! A NaN is never "at least as good" as anything, nor anything as good as it, so a point
//! holding a NaN neither dominates nor is dominated by any other point.

use std::cmp::Ordering;

/// Does `a` dominate `b`: at least as good on every objective and strictly better on one?
///
/// Equal points do not dominate each other.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    debug_assert_eq!(a.len(), b.len(), "points of different dimension");
    let mut better_somewhere = false;
    for (x, y) in a.iter().zip(b) {
        match x.partial_cmp(y) {
            Some(Ordering::Greater) => better_somewhere = true,
            Some(Ordering::Equal) => {}
            // Worse, or a NaN on either side: not "at least as good".
            Some(Ordering::Less) | None => return false,
        }
    }
    better_somewhere
}

/// Indices of the points no other point dominates, in input order.
///
/// Exact duplicates of a non-dominated point are all kept, since none dominates another.
/// O(m n²) comparisons; fine for the few thousand points a search evaluates.
pub fn non_dominated(points: &[Vec<f64>]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| !points.iter().any(|q| dominates(q, &points[i])))
        .collect()
}

/// Fast non-dominated sort (Deb, Pratap, Agarwal & Meyarivan 2002): the points split into
/// fronts, the first being [`non_dominated`], the second the points non-dominated once the
/// first is removed, and so on. Each front lists its indices in ascending order; every index
/// appears in exactly one front, and there are no empty fronts.
pub fn non_dominated_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    let n = points.len();
    // dominated_by_me[p]: the points p dominates; pending[q]: how many points dominate q and
    // have not been assigned a front yet.
    let mut dominated_by_me: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pending = vec![0usize; n];
    for p in 0..n {
        for q in p + 1..n {
            if dominates(&points[p], &points[q]) {
                dominated_by_me[p].push(q);
                pending[q] += 1;
            } else if dominates(&points[q], &points[p]) {
                dominated_by_me[q].push(p);
                pending[p] += 1;
            }
        }
    }

    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&p| pending[p] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &p in &current {
            for &q in &dominated_by_me[p] {
                pending[q] -= 1;
                if pending[q] == 0 {
                    next.push(q);
                }
            }
        }
        // `current` is ascending (the first by construction, later ones by this sort), which
        // is the order the caller is promised.
        next.sort_unstable();
        fronts.push(current);
        current = next;
    }
    fronts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng as _, SeedableRng as _};
    use rand_chacha::ChaCha8Rng;

    fn pts(rows: &[&[f64]]) -> Vec<Vec<f64>> {
        rows.iter().map(|r| r.to_vec()).collect()
    }

    /// Random points on a small integer grid, so that ties and duplicates are common.
    fn random_points(rng: &mut ChaCha8Rng, n: usize, m: usize, levels: u32) -> Vec<Vec<f64>> {
        (0..n)
            .map(|_| {
                (0..m)
                    .map(|_| f64::from(rng.random_range(0..levels)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn dominance_needs_at_least_as_good_everywhere_and_better_somewhere() {
        assert!(dominates(&[2.0, 2.0], &[1.0, 1.0]));
        assert!(dominates(&[2.0, 1.0], &[1.0, 1.0]));
        assert!(!dominates(&[1.0, 1.0], &[2.0, 1.0]));
        // Equal points: neither dominates.
        assert!(!dominates(&[1.0, 1.0], &[1.0, 1.0]));
        // A trade-off: neither dominates.
        assert!(!dominates(&[2.0, 0.0], &[0.0, 2.0]));
        assert!(!dominates(&[0.0, 2.0], &[2.0, 0.0]));
        // One objective.
        assert!(dominates(&[3.0], &[2.0]));
        assert!(!dominates(&[2.0], &[2.0]));
        // Zero objectives: nothing is better anywhere.
        assert!(!dominates(&[], &[]));
    }

    #[test]
    fn equal_on_all_but_one_objective() {
        let a = [1.0, 5.0, 3.0, 2.0];
        let b = [1.0, 5.0, 3.5, 2.0];
        assert!(dominates(&b, &a));
        assert!(!dominates(&a, &b));
        let points = pts(&[&a, &b]);
        assert_eq!(non_dominated(&points), vec![1]);
        assert_eq!(non_dominated_sort(&points), vec![vec![1], vec![0]]);
    }

    #[test]
    fn nan_takes_part_in_no_dominance() {
        assert!(!dominates(&[f64::NAN, 5.0], &[0.0, 0.0]));
        assert!(!dominates(&[5.0, 5.0], &[f64::NAN, 0.0]));
        let points = pts(&[&[f64::NAN, 1.0], &[2.0, 2.0]]);
        assert_eq!(non_dominated(&points), vec![0, 1]);
    }

    #[test]
    fn hand_made_front() {
        // (1,3), (2,2), (3,1) trade off; (1,1) and (2,1) are dominated; (0,4) trades off too.
        let points = pts(&[
            &[1.0, 1.0],
            &[1.0, 3.0],
            &[2.0, 2.0],
            &[2.0, 1.0],
            &[3.0, 1.0],
            &[0.0, 4.0],
        ]);
        assert_eq!(non_dominated(&points), vec![1, 2, 4, 5]);
        assert_eq!(
            non_dominated_sort(&points),
            vec![vec![1, 2, 4, 5], vec![3], vec![0]]
        );
    }

    #[test]
    fn a_chain_gives_one_front_per_point() {
        let points = pts(&[&[1.0, 1.0], &[3.0, 3.0], &[0.0, 0.0], &[2.0, 2.0]]);
        assert_eq!(non_dominated(&points), vec![1]);
        assert_eq!(
            non_dominated_sort(&points),
            vec![vec![1], vec![3], vec![0], vec![2]]
        );
    }

    #[test]
    fn duplicates_share_a_front() {
        let points = pts(&[
            &[1.0, 2.0],
            &[2.0, 1.0],
            &[1.0, 2.0],
            &[0.0, 0.0],
            &[0.0, 0.0],
        ]);
        assert_eq!(non_dominated(&points), vec![0, 1, 2]);
        assert_eq!(non_dominated_sort(&points), vec![vec![0, 1, 2], vec![3, 4]]);
        // All points equal: one front holding all of them.
        let same = vec![vec![1.0, 1.0, 1.0]; 4];
        assert_eq!(non_dominated(&same), vec![0, 1, 2, 3]);
        assert_eq!(non_dominated_sort(&same), vec![vec![0, 1, 2, 3]]);
    }

    #[test]
    fn empty_and_single() {
        assert!(non_dominated(&[]).is_empty());
        assert!(non_dominated_sort(&[]).is_empty());
        let one = pts(&[&[0.5, -1.0]]);
        assert_eq!(non_dominated(&one), vec![0]);
        assert_eq!(non_dominated_sort(&one), vec![vec![0]]);
    }

    /// Brute force straight from the definition: peel off the non-dominated points of what is
    /// left, over and over.
    fn brute_force_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
        let mut left: Vec<usize> = (0..points.len()).collect();
        let mut fronts = Vec::new();
        while !left.is_empty() {
            let front: Vec<usize> = left
                .iter()
                .copied()
                .filter(|&i| !left.iter().any(|&j| dominates(&points[j], &points[i])))
                .collect();
            left.retain(|i| !front.contains(i));
            fronts.push(front);
        }
        fronts
    }

    #[test]
    fn random_sets_match_brute_force_and_the_front_properties() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for case in 0..300 {
            let n = rng.random_range(0..40);
            let m = rng.random_range(1..5);
            let levels = if case % 2 == 0 { 4 } else { 50 };
            let points = random_points(&mut rng, n, m, levels);

            let fronts = non_dominated_sort(&points);
            assert_eq!(fronts, brute_force_sort(&points), "case {case}");

            let first: Vec<usize> = fronts.first().cloned().unwrap_or_default();
            assert_eq!(non_dominated(&points), first, "case {case}");

            // Each index exactly once; fronts ascending and non-empty.
            let mut all: Vec<usize> = fronts.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>());
            for front in &fronts {
                assert!(!front.is_empty());
                assert!(front.windows(2).all(|w| w[0] < w[1]));
            }

            for (k, front) in fronts.iter().enumerate() {
                for &p in front {
                    // Nothing in this front or a later one dominates p.
                    for later in &fronts[k..] {
                        for &q in later {
                            assert!(!dominates(&points[q], &points[p]), "case {case}");
                        }
                    }
                    // Something in the previous front does.
                    if k > 0 {
                        assert!(
                            fronts[k - 1]
                                .iter()
                                .any(|&q| dominates(&points[q], &points[p])),
                            "case {case}"
                        );
                    }
                }
            }
        }
    }
}
