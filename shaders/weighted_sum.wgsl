// out = Σ coefficientₖ · inputₖ, summed in input order from 0, then / scalar0 if flag bit 0.
// Linear, SLERP (after its weights are known) and Model Stock.

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(id, groups);
    if i >= chunk_len() {
        return;
    }
    var sum = 0.0;
    for (var k = 0u; k < input_count(); k++) {
        sum += load(k, i) * coefficient(k);
    }
    if (flags() & 1u) != 0u {
        sum /= scalar(0u);
    }
    out[i] = sum;
}
