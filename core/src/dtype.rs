//! Element types: which stored dtypes are computed on, and how they convert to and from `f32`.
//!
//! Checkpoints may hold any safetensors dtype. Only [`FloatType`]s (F32, F16, BF16) are decoded
//! and merged; every other dtype is copied through unchanged. All arithmetic happens in `f32`
//! and the result is rounded once to the output type (ALGORITHMS.md §1.2, mergescope policy).

use half::{bf16, f16, slice::HalfFloatSliceExt as _};
pub use safetensors::Dtype;

#[cfg(target_endian = "big")]
compile_error!(
    "safetensors data is little-endian; mergescope decodes it in place and needs a little-endian target"
);

/// A floating-point type mergescope computes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FloatType {
    F32,
    F16,
    BF16,
}

impl FloatType {
    /// The float type of a stored dtype, `None` for dtypes that are only copied through.
    pub fn from_dtype(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(Self::F32),
            Dtype::F16 => Some(Self::F16),
            Dtype::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    pub fn dtype(self) -> Dtype {
        match self {
            Self::F32 => Dtype::F32,
            Self::F16 => Dtype::F16,
            Self::BF16 => Dtype::BF16,
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    /// Parses the dtype names mergekit recipes use (`float32`, `bfloat16`, `fp16`, ...).
    pub fn from_recipe_name(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "float32" | "fp32" | "f32" | "float" => Some(Self::F32),
            "float16" | "fp16" | "f16" | "half" => Some(Self::F16),
            "bfloat16" | "bf16" => Some(Self::BF16),
            _ => None,
        }
    }

    /// The name written into recipes and `config.json` (`torch_dtype`).
    pub fn recipe_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::BF16 => "bfloat16",
        }
    }

    /// The type both `a` and `b` convert to without loss, as torch promotes them:
    /// equal types stay, BF16 with F16 (or anything with F32) gives F32.
    pub fn promote(a: Self, b: Self) -> Self {
        if a == b { a } else { Self::F32 }
    }
}

/// Decodes little-endian elements of type `ty` from `bytes` into `out`.
///
/// `bytes.len()` must be `out.len() * ty.size_bytes()`. Safetensors does not align tensor data,
/// so a misaligned buffer is decoded element by element instead of being reinterpreted.
pub fn decode_into(ty: FloatType, bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), out.len() * ty.size_bytes());
    match ty {
        FloatType::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(values) => out.copy_from_slice(values),
            Err(_) => {
                for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = bytemuck::pod_read_unaligned(chunk);
                }
            }
        },
        FloatType::BF16 => match bytemuck::try_cast_slice::<u8, u16>(bytes) {
            // bf16 is the top half of an f32: widening is a shift, which vectorises (half's
            // conversion also quiets NaNs, a branch that keeps it scalar; a NaN stays a NaN
            // here too, only its signalling bit is kept as stored).
            Ok(values) => widen_bf16(values, out),
            Err(_) => {
                for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_bits(bytemuck::pod_read_unaligned(chunk)).to_f32();
                }
            }
        },
        FloatType::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(values) => values.convert_to_f32_slice(out),
            Err(_) => {
                for (o, chunk) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_bits(bytemuck::pod_read_unaligned(chunk)).to_f32();
                }
            }
        },
    }
}

/// Tensor data in its output type, ready to be written as bytes.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorBytes {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// Bytes copied through unchanged (non-float dtypes).
    Raw(Vec<u8>),
}

impl TensorBytes {
    /// Rounds `values` once, to nearest even, into `ty`.
    pub fn encode(values: Vec<f32>, ty: FloatType) -> Self {
        match ty {
            FloatType::F32 => Self::F32(values),
            FloatType::F16 | FloatType::BF16 => Self::encode_reusing(&values, ty, None).0,
        }
    }

    /// Like [`encode`](Self::encode), but writes into `reuse`'s allocation when it is a buffer
    /// of type `ty`, so a stream of tensors does not fault in fresh pages for every one. Also
    /// returns how many values are NaN or ±Inf, counted while each chunk is in cache (a
    /// separate pass over a merged tensor would cost a read of it from memory).
    pub fn encode_reusing(values: &[f32], ty: FloatType, reuse: Option<Self>) -> (Self, u64) {
        let mut out = Self::for_encoding(ty, values.len(), reuse);
        let non_finite = out.encode_at(0, values);
        (out, non_finite)
    }

    /// A buffer of `len` values of type `ty` for [`encode_at`](Self::encode_at) to fill,
    /// made from `reuse`'s allocation when it has that type. Values not yet encoded are
    /// whatever the buffer held: every element must be encoded before the buffer is used.
    pub fn for_encoding(ty: FloatType, len: usize, reuse: Option<Self>) -> Self {
        fn sized<T: bytemuck::Pod>(v: Option<Vec<T>>, len: usize) -> Vec<T> {
            match v {
                // Only growth is filled: clearing first would zero the whole buffer again for
                // every tensor, and every element is overwritten anyway.
                Some(mut v) if v.capacity() >= len => {
                    v.resize(len, T::zeroed());
                    v
                }
                // Fresh pages come zeroed from the kernel; filling them as well made every
                // new buffer cost two passes over memory.
                _ => {
                    let mut fresh = bytemuck::allocation::zeroed_vec(len);
                    crate::hugepages::advise(&mut fresh);
                    fresh
                }
            }
        }
        match (ty, reuse) {
            (FloatType::F32, Some(Self::F32(v))) => Self::F32(sized(Some(v), len)),
            (FloatType::F16, Some(Self::F16(v))) => Self::F16(sized(Some(v), len)),
            (FloatType::BF16, Some(Self::BF16(v))) => Self::BF16(sized(Some(v), len)),
            (FloatType::F32, _) => Self::F32(sized(None, len)),
            (FloatType::F16, _) => Self::F16(sized(None, len)),
            (FloatType::BF16, _) => Self::BF16(sized(None, len)),
        }
    }

    /// Encodes `values` into elements `start..start + values.len()`, as
    /// [`encode_reusing`](Self::encode_reusing) encodes a whole tensor, and returns how many
    /// of them are NaN or ±Inf.
    ///
    /// # Panics
    /// On a raw buffer, or a range past its end.
    pub fn encode_at(&mut self, start: usize, values: &[f32]) -> u64 {
        let end = start + values.len();
        match self {
            Self::F32(out) => encode_slice(values, &mut out[start..end], |dst, src| {
                dst.copy_from_slice(src);
            }),
            Self::F16(out) => encode_slice(values, &mut out[start..end], |dst, src| {
                dst.convert_from_f32_slice(src);
            }),
            Self::BF16(out) => encode_slice(values, &mut out[start..end], narrow_bf16),
            Self::Raw(_) => panic!("raw bytes are copied, not encoded"),
        }
    }

    /// Fills the whole buffer with values `compute(start, block, scratch)` writes for
    /// elements `start..start + block.len()`, in parallel, [`FILL_BLOCK`] elements at a time:
    /// each block is computed into a buffer on the stack and encoded while it is in L1, so
    /// the result never exists in `f32` in memory. `scratch` is a second buffer of the
    /// block's length for the computation's own use. Returns how many values are NaN or ±Inf.
    /// `compute` must write every element of its block and must not use rayon itself.
    ///
    /// # Panics
    /// On a raw buffer.
    pub fn fill_blocks(&mut self, compute: impl Fn(usize, &mut [f32], &mut [f32]) + Sync) -> u64 {
        match self {
            Self::F32(out) => fill_blocks(out, compute, |dst, src| {
                dst.copy_from_slice(src);
                count_non_finite(src)
            }),
            Self::F16(out) => fill_blocks(out, compute, |dst, src| {
                dst.convert_from_f32_slice(src);
                count_non_finite(src)
            }),
            Self::BF16(out) => fill_blocks(out, compute, narrow_bf16_counting),
            Self::Raw(_) => panic!("raw bytes are copied, not encoded"),
        }
    }

    /// Elements in the buffer (bytes for a raw one).
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::BF16(v) => v.len(),
            Self::Raw(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        match self {
            Self::F32(v) => v.capacity(),
            Self::F16(v) => v.capacity(),
            Self::BF16(v) => v.capacity(),
            Self::Raw(v) => v.capacity(),
        }
    }

    /// The float type of the buffer, `None` for raw bytes.
    pub fn float_type(&self) -> Option<FloatType> {
        match self {
            Self::F32(_) => Some(FloatType::F32),
            Self::F16(_) => Some(FloatType::F16),
            Self::BF16(_) => Some(FloatType::BF16),
            Self::Raw(_) => None,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::F32(v) => bytemuck::cast_slice(v),
            Self::F16(v) => bytemuck::cast_slice(v),
            Self::BF16(v) => bytemuck::cast_slice(v),
            Self::Raw(v) => v,
        }
    }
}

/// `convert` over `values` into `out` (of the same length) in parallel chunks, counting the
/// non-finite values while each chunk is in cache: for large tensors the rounding is a
/// measurable share of a merge.
fn encode_slice<T: Send>(
    values: &[f32],
    out: &mut [T],
    convert: impl Fn(&mut [T], &[f32]) + Sync,
) -> u64 {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    out.par_chunks_mut(CHUNK)
        .zip(values.par_chunks(CHUNK))
        .map(|(dst, src)| {
            convert(dst, src);
            count_non_finite(src)
        })
        .sum()
}

/// Elements [`TensorBytes::fill_blocks`] computes and encodes at a time: 4 KiB of `f32`, so
/// the block, its encoded copy and a few inputs' decoded blocks fit in L1 together.
pub const FILL_BLOCK: usize = 1024;

/// [`TensorBytes::fill_blocks`] over a typed buffer; `encode` rounds a block and counts its
/// non-finite values. Each rayon task takes 64 Ki elements (as [`encode_slice`] does), walked
/// in [`FILL_BLOCK`]s.
fn fill_blocks<T: Send>(
    out: &mut [T],
    compute: impl Fn(usize, &mut [f32], &mut [f32]) + Sync,
    encode: impl Fn(&mut [T], &[f32]) -> u64 + Sync,
) -> u64 {
    use rayon::prelude::*;
    const TASK: usize = 1 << 16;
    out.par_chunks_mut(TASK)
        .enumerate()
        .map(|(task, dst)| {
            let (mut values, mut scratch) = ([0f32; FILL_BLOCK], [0f32; FILL_BLOCK]);
            let mut non_finite = 0;
            for (block, dst) in dst.chunks_mut(FILL_BLOCK).enumerate() {
                let (values, scratch) = (&mut values[..dst.len()], &mut scratch[..dst.len()]);
                compute(task * TASK + block * FILL_BLOCK, values, scratch);
                non_finite += encode(dst, values);
            }
            non_finite
        })
        .sum()
}

/// [`narrow_bf16`] that also counts the NaN and ±Inf values, in the same pass.
#[multiversion::multiversion(targets = "simd")]
fn narrow_bf16_counting(dst: &mut [bf16], src: &[f32]) -> u64 {
    let mut non_finite = 0u32;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(bf16_bits(s));
        non_finite += u32::from(!s.is_finite());
    }
    u64::from(non_finite)
}

/// Widens bf16 bit patterns to f32 (the bits shifted into the top half).
#[multiversion::multiversion(targets = "simd")]
fn widen_bf16(src: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = f32::from_bits(u32::from(v) << 16);
    }
}

/// Rounds `src` into `dst` as `bf16::from_f32` does, but in lanes: half's slice conversion
/// has no SIMD path for bf16 and its per-element branches keep it scalar.
#[multiversion::multiversion(targets = "simd")]
fn narrow_bf16(dst: &mut [bf16], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16::from_bits(bf16_bits(s));
    }
}

/// `bf16::from_f32(x).to_bits()` without branches: round to nearest, ties to even, by adding
/// 0x7fff plus the lowest kept bit below the cut; a NaN keeps its top mantissa bits and is
/// quieted. Only a NaN's sum can wrap, and that one is discarded.
#[inline]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet_nan = (bits >> 16) | 0x0040;
    let is_nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    (if is_nan { quiet_nan } else { rounded }) as u16
}

/// How many of `values` are NaN or ±Inf.
#[multiversion::multiversion(targets = "simd")]
pub(crate) fn count_non_finite(values: &[f32]) -> u64 {
    values.iter().map(|v| u64::from(!v.is_finite())).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_follows_torch() {
        use FloatType::{BF16, F16, F32};
        assert_eq!(FloatType::promote(BF16, BF16), BF16);
        assert_eq!(FloatType::promote(BF16, F16), F32);
        assert_eq!(FloatType::promote(F16, F32), F32);
    }

    #[test]
    fn decodes_aligned_and_misaligned_bf16_the_same() {
        let values = [1.5f32, -2.25, 3.0e-3, 65504.0];
        let encoded = TensorBytes::encode(values.to_vec(), FloatType::BF16);
        let bytes = encoded.as_bytes();
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(bytes);
        let mut a = [0f32; 4];
        let mut b = [0f32; 4];
        decode_into(FloatType::BF16, bytes, &mut a);
        decode_into(FloatType::BF16, &shifted[1..], &mut b);
        assert_eq!(a, b);
        assert_eq!(a[0], 1.5);
        assert_eq!(a[1], -2.25);
    }

    #[test]
    fn bf16_encoding_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1).
        let tie = 1.0f32 + 2f32.powi(-8);
        let TensorBytes::BF16(v) = TensorBytes::encode(vec![tie], FloatType::BF16) else {
            panic!("wrong variant")
        };
        assert_eq!(v[0].to_f32(), 1.0);
    }

    /// Bit patterns on every edge of the rounding: ties either way, the carry into the
    /// exponent and into infinity, zeros, denormals, infinities and NaNs of both signs.
    fn bf16_edges() -> Vec<u32> {
        let mut bits = Vec::new();
        for sign in [0, 0x8000_0000] {
            for base in [
                0,
                0x0001_0000,
                0x007f_0000,
                0x3f80_0000,
                0x3f81_0000,
                0x7f7f_0000,
            ] {
                for low in [0, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                    bits.push(sign | base | low);
                }
            }
            for special in [
                0x7f80_0000,
                0x7f80_0001,
                0x7f80_8000,
                0x7fc0_0000,
                0x7fff_ffff,
            ] {
                bits.push(sign | special);
            }
        }
        bits
    }

    #[test]
    fn bf16_encoding_matches_half_bit_for_bit() {
        // Reproducible bit patterns over the whole u32 range.
        let random =
            crate::merge::methods::test_util::xorshift(0x9e37_79b9_7f4a_7c15).map(|r| r as u32);
        // An odd length, so the kernels' tails run too.
        let bits: Vec<u32> = bf16_edges()
            .into_iter()
            .chain(random.take(100_003))
            .collect();
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let mut ours = vec![bf16::ZERO; values.len()];
        narrow_bf16(&mut ours, &values);
        for (&v, o) in values.iter().zip(&ours) {
            assert_eq!(
                o.to_bits(),
                bf16::from_f32(v).to_bits(),
                "{:#010x}",
                v.to_bits()
            );
        }
    }

    #[test]
    fn encoding_a_reused_buffer_overwrites_it() {
        let values: Vec<f32> = (0..70_001).map(|i| i as f32 * 0.25 - 9.0).collect();
        let (first, _) = TensorBytes::encode_reusing(&values, FloatType::BF16, None);
        let shorter = &values[..65_537];
        let (reused, _) = TensorBytes::encode_reusing(shorter, FloatType::BF16, Some(first));
        let fresh = TensorBytes::encode(shorter.to_vec(), FloatType::BF16);
        assert_eq!(reused, fresh);
    }

    #[test]
    fn non_finite_values_are_counted() {
        let mut values = vec![1.0f32; 1001];
        values[3] = f32::NAN;
        values[500] = f32::INFINITY;
        values[1000] = f32::NEG_INFINITY;
        let (_, count) = TensorBytes::encode_reusing(&values, FloatType::F16, None);
        assert_eq!(count, 3);
    }

    #[test]
    fn bf16_decoding_is_a_shift() {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let mut out = vec![0f32; bits.len()];
        decode_into(FloatType::BF16, bytemuck::cast_slice(&bits), &mut out);
        for (&b, &o) in bits.iter().zip(&out) {
            assert_eq!(o.to_bits(), u32::from(b) << 16);
        }
    }
}
