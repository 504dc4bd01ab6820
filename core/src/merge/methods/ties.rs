//! `ties`: TIES-Merging (Yadav et al. 2023): trim each task vector to its largest magnitudes,
//! elect a sign per element by summed mass, average the agreeing deltas. ALGORITHMS.md §2.2–2.3.

use crate::merge::gta::{density_param, rescale_param};

crate::merge::gta::gta_method! {
    /// TIES: magnitude trimming, sign election, disjoint mean.
    Ties, "ties",
    sparsifier: Magnitude, consensus: true, normalize: true,
    extra: [density_param(), rescale_param(false)],
}
