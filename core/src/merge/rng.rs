//! Reproducible randomness for the stochastic methods (DARE, DELLA).
//!
//! Every (seed, tensor name, input index) has its own ChaCha8 stream, and element `j` of a
//! tensor always uses word `j` of that stream. So a mask depends only on those four things:
//! not on the number of threads, the chunking, the order tensors are visited, or the backend.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore as _, SeedableRng as _};

/// Uniform draws addressable by element index.
#[derive(Clone, Debug)]
pub struct ElementRng {
    rng: ChaCha8Rng,
}

impl ElementRng {
    pub fn new(seed: u64, tensor: &str, input: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream_id(tensor, input));
        Self { rng }
    }

    /// Calls `f(j, u)` for `j` in `start..start + len` with `u` uniform in [0, 1), built from the
    /// top 24 bits of word `j` (exactly representable as f32, as ALGORITHMS.md specifies).
    pub fn for_range(&self, start: usize, len: usize, mut f: impl FnMut(usize, f64)) {
        let mut words = vec![0u32; len];
        self.fill_words(start, &mut words);
        for (j, w) in (start..).zip(words) {
            f(j, f64::from(w >> 8) * (1.0 / 16_777_216.0));
        }
    }

    /// Words `start..start + out.len()` of the stream, generated block-wise (much faster than
    /// one call per word).
    pub fn fill_words(&self, start: usize, out: &mut [u32]) {
        let mut rng = self.rng.clone();
        rng.set_word_pos(start as u128);
        rng.fill_bytes(bytemuck::cast_slice_mut(out));
    }
}

/// The integer form of `u < p` for `u = (word >> 8) / 2^24`: `word >> 8 < threshold(p)`.
/// Exact, because `p * 2^24` is computed exactly in f64.
pub fn bernoulli_threshold(p: f64) -> u32 {
    (p * 16_777_216.0).ceil().clamp(0.0, 16_777_216.0) as u32
}

/// FNV-1a over the tensor name and the input index: a stable 64-bit stream id (std's hashers
/// may change between Rust releases, which would change every mask).
fn stream_id(tensor: &str, input: usize) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in tensor
        .bytes()
        .chain([0xff])
        .chain((input as u64).to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A seed for a merge that was given none, drawn from the OS's randomness (std seeds its
/// hashers from it), so an unseeded merge can still be repeated from the seed it records.
pub fn draw_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x6d65_7267_6573_636f);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_do_not_depend_on_how_the_range_is_split() {
        let rng = ElementRng::new(42, "model.layers.0.mlp.up_proj.weight", 1);
        let mut whole = Vec::new();
        rng.for_range(0, 1000, |_, u| whole.push(u));
        let mut pieces = Vec::new();
        for start in (0..1000).step_by(64) {
            rng.for_range(start, 64.min(1000 - start), |_, u| pieces.push(u));
        }
        assert_eq!(whole, pieces);
        // The integer threshold agrees with the float comparison.
        for p in [0.0, 0.3, 0.5, 1.0 / 3.0, 0.999_999_9, 1.0] {
            let mut words = vec![0u32; 1000];
            rng.fill_words(0, &mut words);
            for (w, u) in words.iter().zip(&whole) {
                assert_eq!((w >> 8) < bernoulli_threshold(p), *u < p, "p = {p}");
            }
        }
        assert!(whole.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = whole.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }

    #[test]
    fn streams_differ_by_seed_tensor_and_input() {
        let first = |rng: ElementRng| {
            let mut v = Vec::new();
            rng.for_range(0, 4, |_, u| v.push(u));
            v
        };
        let a = first(ElementRng::new(1, "t", 0));
        assert_ne!(a, first(ElementRng::new(2, "t", 0)));
        assert_ne!(a, first(ElementRng::new(1, "u", 0)));
        assert_ne!(a, first(ElementRng::new(1, "t", 1)));
        assert_eq!(a, first(ElementRng::new(1, "t", 0)));
    }
}
