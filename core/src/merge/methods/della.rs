//! `della`: DELLA-Merging (Deep et al. 2024): MagPrune keeps each delta element with a
//! probability that rises with its magnitude's rank in its row, L1 rescale, then sign election
//! and disjoint mean. ALGORITHMS.md §2.1–2.3.

use crate::merge::gta::{density_param, epsilon_param, rescale_param};

crate::merge::gta::gta_method! {
    /// DELLA with sign election.
    Della, "della",
    sparsifier: DellaMagprune, consensus: true, normalize: true,
    extra: [density_param(), epsilon_param(), rescale_param(true)],
}
