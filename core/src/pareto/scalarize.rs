//! Scalarisations of normalised objectives for a preference (PARETO.md §2).

/// The weight used where a preference gives an objective none, so that Tchebycheff still
/// tells apart points that differ only there.
pub const ZERO_WEIGHT: f64 = 1e-6;

fn weight(w: f64) -> f64 {
    if w > ZERO_WEIGHT { w } else { ZERO_WEIGHT }
}

/// Tchebycheff loss T(x | w) = max_j w_j · (1 − g_j(x)) of normalised objectives `g`
/// (minimised). Unlike the weighted sum, its minimisers reach non-convex parts of the front.
pub fn tchebycheff(normalised: &[f64], preference: &[f64]) -> f64 {
    normalised
        .iter()
        .zip(preference)
        .map(|(g, &w)| weight(w) * (1.0 - g))
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The index of the term that sets [`tchebycheff`] (its subgradient is −w_j along g_j).
pub fn tchebycheff_active(normalised: &[f64], preference: &[f64]) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (j, (g, &w)) in normalised.iter().zip(preference).enumerate() {
        let term = weight(w) * (1.0 - g);
        if term > best.1 {
            best = (j, term);
        }
    }
    best.0
}

/// A smooth Tchebycheff: `τ · log Σ_j exp(w_j (1 − g_j) / τ)`, which tends to [`tchebycheff`]
/// as `τ → 0` and is never below it; with the gradient with respect to each g_j. Gradient
/// methods on a surrogate use it, since the max itself has no gradient where terms tie.
pub fn smooth_tchebycheff(normalised: &[f64], preference: &[f64], tau: f64) -> (f64, Vec<f64>) {
    let terms: Vec<f64> = normalised
        .iter()
        .zip(preference)
        .map(|(g, &w)| weight(w) * (1.0 - g))
        .collect();
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = terms.iter().map(|t| ((t - top) / tau).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let value = top + tau * sum.ln();
    let gradient = exps
        .iter()
        .zip(preference)
        .map(|(e, &w)| -weight(w) * e / sum)
        .collect();
    (value, gradient)
}

/// The weighted sum Σ_j w_j · g_j (maximised), as PWEMoE's linear scalarisation.
pub fn weighted_sum(normalised: &[f64], preference: &[f64]) -> f64 {
    normalised.iter().zip(preference).map(|(g, w)| g * w).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tchebycheff_is_the_largest_weighted_shortfall() {
        assert!((tchebycheff(&[0.5, 0.9], &[0.5, 0.5]) - 0.25).abs() < 1e-12);
        assert_eq!(tchebycheff_active(&[0.5, 0.9], &[0.5, 0.5]), 0);
        // A zero weight still counts a little.
        assert!((tchebycheff(&[1.0, 0.0], &[1.0, 0.0]) - ZERO_WEIGHT).abs() < 1e-15);
        // At the ideal point the loss is 0 for every preference.
        assert_eq!(tchebycheff(&[1.0, 1.0, 1.0], &[0.2, 0.3, 0.5]), 0.0);
    }

    #[test]
    fn the_smooth_version_bounds_the_max_and_its_gradient_matches_differences() {
        let (g, w, tau) = ([0.3, 0.6, 0.2], [0.2, 0.5, 0.3], 0.01);
        let (value, gradient) = smooth_tchebycheff(&g, &w, tau);
        let exact = tchebycheff(&g, &w);
        assert!(value >= exact && value <= exact + tau * 3f64.ln());
        for j in 0..3 {
            let mut up = g;
            up[j] += 1e-6;
            let numeric = (smooth_tchebycheff(&up, &w, tau).0 - value) / 1e-6;
            assert!(
                (numeric - gradient[j]).abs() < 1e-3,
                "{j}: {numeric} {}",
                gradient[j]
            );
        }
    }
}
