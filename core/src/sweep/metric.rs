//! Which number of a cell's scores a table or a chart shows, and which cell is best on it.

use super::Cell;
use crate::eval::Scores;

/// The mean of a cell's `retention/MODEL` scores: one number for a merge's retention (a key
/// without `/`, so no model's label can collide with it).
pub const MEAN_RETENTION: &str = "mean retention";

/// The metrics worth choosing from: every score, and [`MEAN_RETENTION`] where there are
/// retention scores.
pub fn metric_names(scores: &Scores) -> Vec<String> {
    let mut names: Vec<String> = scores.keys().cloned().collect();
    if scores.keys().any(|k| k.starts_with("retention/")) {
        names.insert(0, MEAN_RETENTION.to_owned());
    }
    names
}

/// `metric` of `scores`: a score, or [`MEAN_RETENTION`].
pub fn metric_value(scores: &Scores, metric: &str) -> Option<f64> {
    if metric == MEAN_RETENTION {
        let kept: Vec<f64> = scores
            .iter()
            .filter(|(k, _)| k.starts_with("retention/"))
            .map(|(_, v)| *v)
            .collect();
        return (!kept.is_empty()).then(|| kept.iter().sum::<f64>() / kept.len() as f64);
    }
    scores.get(metric).copied()
}

/// What a table or chart shows unless told otherwise: the demo's mean accuracy, the mean
/// perplexity, the mean retention, or a command's first metric.
pub fn default_metric(scores: &Scores) -> Option<String> {
    for mean in ["mean/accuracy", "mean/perplexity"] {
        if scores.contains_key(mean) {
            return Some(mean.to_owned());
        }
    }
    metric_names(scores).into_iter().next()
}

pub use crate::eval::compare::{format_value, higher_is_better, is_accuracy};

/// The index in `cells` of the best cell on `metric` (the first of equals); `None` when no
/// cell has a finite value.
pub fn best_cell(cells: &[Cell], metric: &str) -> Option<usize> {
    let higher = higher_is_better(metric);
    cells
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            metric_value(&c.scores, metric)
                .filter(|v| v.is_finite())
                .map(|v| (i, v))
        })
        .reduce(|best, next| {
            let better = if higher {
                next.1 > best.1
            } else {
                next.1 < best.1
            };
            if better { next } else { best }
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(scores: &[(&str, f64)]) -> Cell {
        Cell {
            index: vec![0],
            values: vec![0.0],
            scores: scores.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            recipe: String::new(),
        }
    }

    #[test]
    fn the_best_cell_follows_the_metrics_direction() {
        let cells = [
            cell(&[("mean/accuracy", 0.8), ("mean/loss", 0.5)]),
            cell(&[("mean/accuracy", 0.9), ("mean/loss", 0.7)]),
            cell(&[("mean/accuracy", 0.9), ("mean/loss", 0.4)]),
        ];
        assert_eq!(best_cell(&cells, "mean/accuracy"), Some(1));
        assert_eq!(best_cell(&cells, "mean/loss"), Some(2));
        assert_eq!(best_cell(&cells, "missing"), None);
        assert_eq!(
            default_metric(&cells[0].scores).as_deref(),
            Some("mean/accuracy")
        );
    }

    #[test]
    fn mean_retention_averages_the_models() {
        let c = cell(&[
            ("retention/a", 0.4),
            ("retention/b", 0.6),
            ("cosine/a", 0.1),
        ]);
        assert_eq!(metric_names(&c.scores)[0], MEAN_RETENTION);
        assert_eq!(metric_value(&c.scores, MEAN_RETENTION), Some(0.5));
        assert_eq!(default_metric(&c.scores).as_deref(), Some(MEAN_RETENTION));
        assert_eq!(metric_value(&c.scores, "cosine/a"), Some(0.1));
    }
}
