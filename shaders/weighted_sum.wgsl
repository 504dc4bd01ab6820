// out = Σ coefficientₖ · inputₖ, summed in input order from 0, then / scalar0 if flag bit 0.
// Linear, SLERP (after its weights are known) and Model Stock. Each product is finished
// (`exact`) before it is added, so the sum is rounded as the CPU rounds it: Model Stock near
// its denominator's zero multiplies by ratios of 10⁶, where a fused product would show.

@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(id, groups);
    if i >= chunk_len() {
        return;
    }
    var sum = 0.0;
    for (var k = 0u; k < input_count(); k++) {
        sum += exact(load(k, i) * coefficient(k));
    }
    if (flags() & 1u) != 0u {
        sum /= scalar(0u);
    }
    out[i] = sum;
}
