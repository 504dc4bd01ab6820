//! `task_arithmetic`: base + λ · Σ wᵢ τᵢ with τᵢ = θᵢ − θ_base ("Editing Models with Task
//! Arithmetic", Ilharco et al. 2023). ALGORITHMS.md §2.2–2.3.

crate::merge::gta::gta_method! {
    /// Task arithmetic: weighted task vectors added to the base, no sparsification.
    TaskArithmetic, "task_arithmetic",
    sparsifier: None, consensus: false, normalize: false,
    extra: [],
}
