// nearswap (ALGORITHMS.md §2.11): input 0 is the base a, input 1 the model b; scalar0 is t.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(id, groups);
    if i >= chunk_len() {
        return;
    }
    let a = load(0u, i);
    let b = load(1u, i);
    let w = clamp(scalar(0u) / max(abs(a - b), 1e-6), 0.0, 1.0);
    out[i] = w * b + (1.0 - w) * a;
}
