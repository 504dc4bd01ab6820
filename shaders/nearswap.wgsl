// nearswap (ALGORITHMS.md §2.11): input 0 is the base a, input 1 the model b; scalar0 is t.
// w is continuous in |a − b| (the 1e-6 floor and the clamp are not jumps), so a rounding
// difference here stays a rounding difference. The floor is a comparison rather than max():
// a NaN gap takes 1e-6 as Rust's f32::max does, where a GPU's max() may return either.

@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(id, groups);
    if i >= chunk_len() {
        return;
    }
    let a = load(0u, i);
    let b = load(1u, i);
    let gap = abs(a - b);
    let w = clamp(scalar(0u) / select(1e-6, gap, gap > 1e-6), 0.0, 1.0);
    out[i] = w * b + (1.0 - w) * a;
}
