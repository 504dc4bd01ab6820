//! `dare_linear`: DARE ("Language Models are Super Mario", Yu et al. 2024): drop each delta
//! element with probability 1 − density, rescale by L1 mass, add. ALGORITHMS.md §2.1–2.3.

use crate::merge::gta::{density_param, rescale_param};

crate::merge::gta::gta_method! {
    /// DARE without sign election.
    DareLinear, "dare_linear",
    sparsifier: Random, consensus: false, normalize: false,
    extra: [density_param(), rescale_param(true)],
}
