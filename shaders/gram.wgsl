// Gram matrices in f64, in the CPU backend's order, so both return the same bits (SLERP and
// Model Stock branch on them; docs/gpu-cpu-agreement.md). Needs SHADER_F64; without it the
// host computes the matrix.
//
// One workgroup per block of BLOCK elements (`agreement::GRAM_BLOCK`; chunks start on block
// boundaries): lane l sums vₐ·v_b over elements l, l + 256, … of its block, in order from +0;
// the lanes are added in a fixed tree (lane l takes lane l + w for w = 128, 64, …, 1); out
// receives the block's sum of each upper-triangle entry (i ≤ j, row by row), and the host adds
// the blocks in order. vₖ is input k, or input k+1 minus input 0 when flag bit 0 (centred on
// the base) is set, flushed as `agreement::gram_value` does. A product of two f32 is exact in
// f64, so whether the compiler fuses it into the sum changes nothing.

@group(0) @binding(3) var<storage, read_write> out: array<f64>;

const BLOCK: u32 = 16384u;
const MAX_VECTORS: u32 = 8u;
const PAIRS: u32 = 36u; // MAX_VECTORS · (MAX_VECTORS + 1) / 2

var<workgroup> partial: array<f64, WORKGROUP>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lane: u32,
        @builtin(workgroup_id) group: vec3<u32>) {
    let centred = (flags() & 1u) != 0u;
    let first = select(0u, 1u, centred);
    let vectors = min(input_count() - first, MAX_VECTORS);
    var sums: array<f64, PAIRS>;
    var v: array<f32, MAX_VECTORS>;
    let start = group.x * BLOCK;
    let end = min(start + BLOCK, chunk_len());
    for (var i = start + lane; i < end; i += WORKGROUP) {
        var c = 0.0;
        if centred {
            c = flushed(load(0u, i));
        }
        for (var k = 0u; k < vectors; k++) {
            let x = flushed(load(first + k, i));
            v[k] = select(x, flushed(x - c), centred);
        }
        var p = 0u;
        for (var a = 0u; a < vectors; a++) {
            for (var b = a; b < vectors; b++) {
                sums[p] += f64(v[a]) * f64(v[b]);
                p++;
            }
        }
    }
    // `pairs` comes from a uniform buffer, so every barrier below is reached by the whole
    // workgroup.
    let pairs = vectors * (vectors + 1u) / 2u;
    for (var p = 0u; p < pairs; p++) {
        partial[lane] = sums[p];
        workgroupBarrier();
        for (var width = WORKGROUP / 2u; width > 0u; width >>= 1u) {
            if lane < width {
                partial[lane] += partial[lane + width];
            }
            workgroupBarrier();
        }
        if lane == 0u {
            out[group.x * pairs + p] = partial[0];
        }
        workgroupBarrier();
    }
}
