//! The merge methods, one file each, and the registry that finds them by recipe name.

mod arcee_fusion;
mod breadcrumbs;
mod breadcrumbs_ties;
mod dare_linear;
mod dare_ties;
mod della;
mod della_linear;
mod iso_c;
mod iso_cts;
mod karcher;
mod linear;
mod model_stock;
pub(crate) mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod ram;
mod ramplus_tl;
mod sce;
mod slerp;
mod task_arithmetic;
mod ties;
mod tsv_m;

pub use arcee_fusion::ArceeFusion;
pub use breadcrumbs::Breadcrumbs;
pub use breadcrumbs_ties::BreadcrumbsTies;
pub use dare_linear::DareLinear;
pub use dare_ties::DareTies;
pub use della::Della;
pub use della_linear::DellaLinear;
pub use iso_c::IsoC;
pub use iso_cts::IsoCts;
pub use karcher::Karcher;
pub use linear::Linear;
pub use model_stock::ModelStock;
pub use multislerp::Multislerp;
pub use nearswap::Nearswap;
pub use nuslerp::Nuslerp;
pub use passthrough::Passthrough;
pub use ram::Ram;
pub use ramplus_tl::RamplusTl;
pub use sce::Sce;
pub use slerp::Slerp;
pub use task_arithmetic::TaskArithmetic;
pub use ties::Ties;
pub use tsv_m::TsvM;

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
    &ArceeFusion,
    &Ram,
    &RamplusTl,
    &TsvM,
    &IsoC,
    &IsoCts,
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

/// What a `merge_method` name refers to. Every method mergekit 0.1.5 registers is
/// implemented (a test keeps it so), so a name is either a method or not mergekit's at all.
#[derive(Debug)]
pub enum Lookup {
    Found(&'static dyn MergeMethod),
    Unknown,
}

pub fn lookup(name: &str) -> Lookup {
    IMPLEMENTED
        .iter()
        .find(|m| m.spec().name == name)
        .map_or(Lookup::Unknown, |method| Lookup::Found(*method))
}

pub fn implemented_names() -> Vec<&'static str> {
    IMPLEMENTED.iter().map(|m| m.spec().name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mergekit_method_is_implemented_once() {
        for name in MERGEKIT_METHODS {
            assert!(matches!(lookup(name), Lookup::Found(_)), "{name}");
        }
        let mut names = implemented_names();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            IMPLEMENTED.len(),
            "a method is registered twice"
        );
        assert!(matches!(lookup("no_such_method"), Lookup::Unknown));
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use crate::checkpoint::{TensorInfo, TensorView};
    use crate::dtype::Dtype;
    use crate::merge::{MergeMethod, MethodInputs, TensorParams};

    /// A reproducible xorshift stream of `u64`s, for test inputs over whole bit ranges.
    pub fn xorshift(seed: u64) -> impl Iterator<Item = u64> {
        let mut state = seed;
        std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        })
    }

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

    /// Runs `method` on 1-D F32 tensors: a base and the other models.
    pub fn merge_1d(
        method: &dyn MergeMethod,
        base: &[f32],
        models: &[&[f32]],
        params: &TensorParams,
    ) -> Vec<f32> {
        let infos: Vec<_> = (0..=models.len())
            .map(|i| info(&format!("t{i}"), base.len()))
            .collect();
        let bytes: Vec<Vec<u8>> = std::iter::once(base)
            .chain(models.iter().copied())
            .map(f32_bytes)
            .collect();
        let inputs = MethodInputs {
            tensor: "t",
            seed: 0,
            base: Some(view(&infos[0], &bytes[0])),
            models: (1..=models.len())
                .map(|i| view(&infos[i], &bytes[i]))
                .collect(),
            params,
        };
        let mut out = vec![f32::NAN; base.len()];
        method.merge(&inputs, &mut out).expect("the method runs");
        out
    }
}
