// Partial Gram matrices: each workgroup writes the PAIRS upper-triangle entries (i ≤ j, row
// by row) of Σ vᵢ·vⱼ over the elements it visits (a grid-stride loop), where vₖ is input k, or
// input k+1 minus input 0 when flag bit 0 (centred on the base) is set. The host adds the
// partials in f64, in workgroup order.

const MAX_VECTORS: u32 = 8u;
const PAIRS: u32 = 36u; // MAX_VECTORS · (MAX_VECTORS + 1) / 2

var<workgroup> partial: array<f32, WORKGROUP>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>,
        @builtin(local_invocation_index) lane: u32,
        @builtin(workgroup_id) group: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let centred = (flags() & 1u) != 0u;
    let first = select(0u, 1u, centred);
    let vectors = min(input_count() - first, MAX_VECTORS);
    var sums: array<f32, PAIRS>;
    var v: array<f32, MAX_VECTORS>;
    let stride = groups.x * WORKGROUP;
    for (var i = id.x; i < chunk_len(); i += stride) {
        var c = 0.0;
        if centred {
            c = load(0u, i);
        }
        for (var k = 0u; k < vectors; k++) {
            v[k] = load(first + k, i) - c;
        }
        var p = 0u;
        for (var a = 0u; a < vectors; a++) {
            for (var b = a; b < vectors; b++) {
                sums[p] += v[a] * v[b];
                p++;
            }
        }
    }
    // `pairs` comes from a read-only buffer, so it is uniform: every barrier below is reached
    // by the whole workgroup.
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
