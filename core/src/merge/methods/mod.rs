//! The merge methods, one file each, and the registry that finds them by recipe name.

mod breadcrumbs;
mod breadcrumbs_ties;
mod dare_linear;
mod dare_ties;
mod della;
mod della_linear;
mod karcher;
mod linear;
mod model_stock;
pub(crate) mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod sce;
mod slerp;
mod task_arithmetic;
mod ties;

pub use breadcrumbs::Breadcrumbs;
pub use breadcrumbs_ties::BreadcrumbsTies;
pub use dare_linear::DareLinear;
pub use dare_ties::DareTies;
pub use della::Della;
pub use della_linear::DellaLinear;
pub use karcher::Karcher;
pub use linear::Linear;
pub use model_stock::ModelStock;
pub use multislerp::Multislerp;
pub use nearswap::Nearswap;
pub use nuslerp::Nuslerp;
pub use passthrough::Passthrough;
pub use sce::Sce;
pub use slerp::Slerp;
pub use task_arithmetic::TaskArithmetic;
pub use ties::Ties;

use super::MergeMethod;

/// Every method mergescope implements.
pub static IMPLEMENTED: &[&dyn MergeMethod] = &[
    &Linear,
    &TaskArithmetic,
    &Ties,
    &DareLinear,
    &DareTies,
    &Breadcrumbs,
    &BreadcrumbsTies,
    &Della,
    &DellaLinear,
    &ModelStock,
    &Slerp,
    &Nuslerp,
    &Multislerp,
    &Karcher,
    &Sce,
    &Nearswap,
    &Passthrough,
];

/// Every `merge_method` mergekit 0.1.5 registers (ALGORITHMS.md §2.15).
pub const MERGEKIT_METHODS: &[&str] = &[
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "model_stock",
    "sce",
    "nearswap",
    "passthrough",
    "arcee_fusion",
    "ram",
    "ramplus_tl",
    "task_arithmetic",
    "ties",
    "dare_ties",
    "dare_linear",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
];

/// What a `merge_method` name refers to.
#[derive(Debug)]
pub enum Lookup {
    Found(&'static dyn MergeMethod),
    /// A mergekit method mergescope does not implement yet.
    NotImplemented,
    Unknown,
}

pub fn lookup(name: &str) -> Lookup {
    if let Some(method) = IMPLEMENTED.iter().find(|m| m.spec().name == name) {
        Lookup::Found(*method)
    } else if MERGEKIT_METHODS.contains(&name) {
        Lookup::NotImplemented
    } else {
        Lookup::Unknown
    }
}

pub fn implemented_names() -> Vec<&'static str> {
    IMPLEMENTED.iter().map(|m| m.spec().name).collect()
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::checkpoint::{TensorInfo, TensorView};
    use crate::dtype::Dtype;

    /// An F32 tensor view over `bytes` (use [`f32_bytes`]) for method unit tests.
    pub fn info(name: &str, numel: usize) -> TensorInfo {
        TensorInfo {
            name: name.to_owned(),
            dtype: Dtype::F32,
            shape: vec![numel],
            shard: 0,
            start: 0,
            end: numel * 4,
        }
    }

    pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
        bytemuck::cast_slice(values).to_vec()
    }

    pub fn view<'a>(info: &'a TensorInfo, bytes: &'a [u8]) -> TensorView<'a> {
        TensorView::new(info, bytes)
    }
}
