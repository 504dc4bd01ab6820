//! `dare_ties`: DARE's random drop and L1 rescale, then TIES' sign election.
//! ALGORITHMS.md §2.1–2.3.

use crate::merge::gta::{density_param, rescale_param};

crate::merge::gta::gta_method! {
    /// DARE with sign election.
    DareTies, "dare_ties",
    sparsifier: Random, consensus: true, normalize: false,
    extra: [density_param(), rescale_param(true)],
}
