//! `della_linear`: DELLA's MagPrune and L1 rescale without sign election. ALGORITHMS.md §2.3.

use crate::merge::gta::{density_param, epsilon_param, rescale_param};

crate::merge::gta::gta_method! {
    /// DELLA without sign election.
    DellaLinear, "della_linear",
    sparsifier: DellaMagprune, consensus: false, normalize: false,
    extra: [density_param(), epsilon_param(), rescale_param(true)],
}
