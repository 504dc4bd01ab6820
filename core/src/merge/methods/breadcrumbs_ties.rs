//! `breadcrumbs_ties`: Model Breadcrumbs' band selection, then TIES' sign election.
//! ALGORITHMS.md §2.1–2.3.

use crate::merge::gta::{density_param, gamma_param, rescale_param};

crate::merge::gta::gta_method! {
    /// Model Breadcrumbs with sign election.
    BreadcrumbsTies, "breadcrumbs_ties",
    sparsifier: MagnitudeOutliers, consensus: true, normalize: false,
    extra: [density_param(), gamma_param(), rescale_param(false)],
}
