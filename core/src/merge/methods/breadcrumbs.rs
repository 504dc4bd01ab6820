//! `breadcrumbs`: Model Breadcrumbs (Davari & Belilovsky 2024): drop each task vector's largest
//! `gamma` fraction (outliers) and its smallest, keep a `density` band. ALGORITHMS.md §2.1–2.3.

use crate::merge::gta::{density_param, gamma_param, rescale_param};

crate::merge::gta::gta_method! {
    /// Model Breadcrumbs without sign election.
    Breadcrumbs, "breadcrumbs",
    sparsifier: MagnitudeOutliers, consensus: false, normalize: false,
    extra: [density_param(), gamma_param(), rescale_param(false)],
}
