// Shared by every kernel (prepended to each by the GPU backend).
//
// One tensor chunk is laid out in four storage buffers:
//   data    the chunk of every input, as stored on disk: f32 one per word, f16/bf16 two per
//           word (element 2k in the low half), each input starting on a word boundary;
//   header  (uniform) the chunk's description, in u32 words (f32 values as their bits):
//             [0] elements in the chunk  [1] inputs  [2] flags  [3..7) kernel scalars
//             [7] always 0 (see `exact`)
//             then 8 words per input: data offset (words), dtype, coefficient, factor,
//             mask offset (words, NO_MASK for none), 3 unused;
//   masks   keep-masks, one bit per element, bit k of word w = element 32w + k;
//   out     results, declared by each kernel: f32 per element, or f64 per Gram block.
// WGSL has no bf16: it is the high half of an f32, so decoding is a shift, exact as on the CPU.

@group(0) @binding(0) var<storage, read> data: array<u32>;
// A uniform buffer: the same few words for every thread, served from the constant cache.
@group(0) @binding(1) var<uniform> header_words: array<vec4<u32>, 256>;
@group(0) @binding(2) var<storage, read> masks: array<u32>;

const WORKGROUP: u32 = 256u;
const DTYPE_F32: u32 = 0u;
const DTYPE_F16: u32 = 1u;
const DTYPE_BF16: u32 = 2u;
const NO_MASK: u32 = 0xffffffffu;
const HEADER_INPUTS: u32 = 8u;
const INPUT_WORDS: u32 = 8u;

fn header(i: u32) -> u32 { return header_words[i >> 2u][i & 3u]; }
fn chunk_len() -> u32 { return header(0u); }
fn input_count() -> u32 { return header(1u); }
fn flags() -> u32 { return header(2u); }
fn scalar(k: u32) -> f32 { return bitcast<f32>(header(3u + k)); }
fn input_field(input: u32, field: u32) -> u32 {
    return header(HEADER_INPUTS + INPUT_WORDS * input + field);
}
fn coefficient(input: u32) -> f32 { return bitcast<f32>(input_field(input, 2u)); }
fn factor(input: u32) -> f32 { return bitcast<f32>(input_field(input, 3u)); }

// `x` as a finished value: an XOR with a header word the host always sets to 0. The compiler
// cannot know that word, so it cannot fuse the multiply that made `x` into an add that takes
// `x` (one rounding instead of two): every product passed through here is rounded exactly as
// the CPU rounds it (docs/gpu-cpu-agreement.md).
fn exact(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) ^ header(7u));
}

// `x` finished as `exact` does, with ±0 and denormals replaced by +0 by integer operations
// (which no GPU flushes): the same bits as `agreement::flush` on the CPU, whether or not the
// device flushed a denormal first.
fn flushed(x: f32) -> f32 {
    let bits = bitcast<u32>(x) ^ header(7u);
    return bitcast<f32>(select(bits, 0u, (bits & 0x7f800000u) == 0u));
}

// An IEEE half in the low 16 bits, widened exactly (unpack2x16float would need a capability
// some backends lack).
fn f16_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if exponent == 0u {
        if mantissa == 0u {
            return bitcast<f32>(sign);
        }
        // Subnormal: mantissa · 2⁻²⁴, a normal f32, built from its bits (no float arithmetic
        // that a device could flush or fuse).
        let top = firstLeadingBit(mantissa);
        return bitcast<f32>(sign | ((top + 103u) << 23u) | ((mantissa ^ (1u << top)) << (23u - top)));
    }
    if exponent == 31u {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

// Element `i` of input `input`, exactly as the CPU decodes it.
fn load(input: u32, i: u32) -> f32 {
    let offset = input_field(input, 0u);
    let dtype = input_field(input, 1u);
    if dtype == DTYPE_F32 {
        return bitcast<f32>(data[offset + i]);
    }
    let word = data[offset + (i >> 1u)];
    if dtype == DTYPE_BF16 {
        return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
    }
    return f16_to_f32((word >> ((i & 1u) * 16u)) & 0xffffu);
}

// 1.0 where input `input` keeps element `i`, else 0.0 (always 1.0 without a mask).
fn kept(input: u32, i: u32) -> f32 {
    let offset = input_field(input, 4u);
    if offset == NO_MASK {
        return 1.0;
    }
    return f32((masks[offset + (i >> 5u)] >> (i & 31u)) & 1u);
}

// Dispatches wider than 65535 workgroups are laid out in 2-D.
fn element(id: vec3<u32>, groups: vec3<u32>) -> u32 {
    return id.x + id.y * groups.x * WORKGROUP;
}
