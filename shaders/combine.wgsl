// Generalized task arithmetic, phase 2 (ALGORITHMS.md §2.1), in the CPU backend's order:
// input 0 is the base; for each model k ≥ 1, dₖ = wₖ·((xₖ − b)·keepₖ·factorₖ).
// flags: bit 0 normalize, bit 1 consensus (sign election + disjoint mean).
// scalars: [0] lambda, [1] the plain divisor (weight sum, or 1 near 0).

fn delta(k: u32, i: u32, b: f32) -> f32 {
    return coefficient(k) * ((load(k, i) - b) * kept(k, i) * factor(k));
}

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(id, groups);
    if i >= chunk_len() {
        return;
    }
    let b = load(0u, i);
    let n = input_count();
    let normalize = (flags() & 1u) != 0u;
    let consensus = (flags() & 2u) != 0u;
    var mixed = 0.0;
    var divisor = scalar(1u);
    if consensus {
        var total = 0.0;
        for (var k = 1u; k < n; k++) {
            total += delta(k, i, b);
        }
        // A sum of exactly 0 elects +1; zero deltas never agree.
        divisor = 0.0;
        for (var k = 1u; k < n; k++) {
            let d = delta(k, i, b);
            let agree = select((d < 0.0), (d > 0.0), total >= 0.0);
            mixed += select(0.0, d, agree);
            divisor += select(0.0, coefficient(k), agree);
        }
        if divisor == 0.0 {
            divisor = 1.0;
        }
    } else {
        for (var k = 1u; k < n; k++) {
            mixed += delta(k, i, b);
        }
    }
    var m = select(mixed, mixed / divisor, normalize);
    let lambda = scalar(0u);
    if lambda != 1.0 {
        m *= lambda;
    }
    out[i] = b + m;
}
