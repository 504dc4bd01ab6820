// Generalized task arithmetic, phase 2 (ALGORITHMS.md §2.2), in the CPU backend's order:
// input 0 is the base; for each model k ≥ 1, dₖ = wₖ·((xₖ − b)·keepₖ·factorₖ).
// flags: bit 0 normalize, bit 1 consensus (sign election + disjoint mean).
// scalars: [0] lambda, [1] the plain divisor (weight sum, or 1 near 0).
//
// The sign election decides on values both backends compute bit for bit alike (the CPU's
// `backend::agreement`, docs/gpu-cpu-agreement.md): every input and intermediate of a vote
// flushed by `flushed`, every vote finished before it is added, the running sums flushed,
// and the election and agreement read from the bits.

@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn delta(k: u32, i: u32, b: f32) -> f32 {
    return coefficient(k) * ((load(k, i) - b) * kept(k, i) * factor(k));
}

// `agreement::vote`; `b` is already flushed.
fn vote(k: u32, i: u32, b: f32) -> f32 {
    let d = flushed(flushed(load(k, i)) - b);
    let scaled = flushed(d * kept(k, i) * flushed(factor(k)));
    return flushed(flushed(coefficient(k)) * scaled);
}

// `agreement::elects_negative`: the total is ≤ −MIN_POSITIVE, or NaN.
fn elects_negative(total: f32) -> bool {
    let bits = bitcast<u32>(total);
    let magnitude = bits & 0x7fffffffu;
    return magnitude > 0x7f800000u || ((bits >> 31u) == 1u && magnitude >= 0x00800000u);
}

// `agreement::agrees`: a normal number or an infinity of the elected sign.
fn agrees(d: f32, negative: bool) -> bool {
    let bits = bitcast<u32>(d);
    let magnitude = bits & 0x7fffffffu;
    return magnitude >= 0x00800000u && magnitude <= 0x7f800000u
        && ((bits >> 31u) == 1u) == negative;
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
        let flat = flushed(b);
        var total = 0.0;
        for (var k = 1u; k < n; k++) {
            total = flushed(total + vote(k, i, flat));
        }
        // A total of 0 (or a denormal) elects +1; zero votes never agree.
        let negative = elects_negative(total);
        divisor = 0.0;
        for (var k = 1u; k < n; k++) {
            let d = vote(k, i, flat);
            let agree = agrees(d, negative);
            mixed += select(0.0, d, agree);
            divisor = flushed(divisor + select(0.0, flushed(coefficient(k)), agree));
        }
        if bitcast<u32>(divisor) == 0u {
            divisor = 1.0;
        }
    } else {
        for (var k = 1u; k < n; k++) {
            mixed += exact(delta(k, i, b));
        }
    }
    var m = select(mixed, mixed / divisor, normalize);
    let lambda = scalar(0u);
    if lambda != 1.0 {
        m *= lambda;
    }
    out[i] = b + exact(m);
}
