//! Keep-masks chosen by rank: "the k largest magnitudes" (TIES), "the band between two ranks"
//! (Model Breadcrumbs), with ties broken by flat index exactly as ALGORITHMS.md §2.1 says.
//!
//! Selection is O(n): a two-pass radix select over the magnitudes' bit patterns (non-negative
//! f32s order like their bits) finds the key at a rank, then one parallel pass builds the mask.
//! No sort, and no second copy of the tensor.

use rayon::prelude::*;

use super::kernel::CHUNK;

/// A bit per element; chunk `c` owns words `c * CHUNK / 64 ..`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BitMask {
    words: Vec<u64>,
    len: usize,
}

impl BitMask {
    pub fn new(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(64)],
            len,
        }
    }

    /// All bits set.
    pub fn full(len: usize) -> Self {
        let mut mask = Self::new(len);
        mask.words.fill(u64::MAX);
        mask
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> bool {
        self.words[i / 64] >> (i % 64) & 1 == 1
    }

    pub fn count_ones(&self) -> usize {
        let full_words = self.len / 64;
        let mut count: usize = self.words[..full_words]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum();
        if !self.len.is_multiple_of(64) {
            count +=
                (self.words[full_words] & ((1u64 << (self.len % 64)) - 1)).count_ones() as usize;
        }
        count
    }

    /// Fills the mask in parallel: `f(start, bits)` sets the bits of elements `start..` for one
    /// chunk (the slice holds that chunk's words).
    pub fn fill_chunks(&mut self, f: impl Fn(usize, &mut [u64]) + Sync + Send) {
        self.words
            .par_chunks_mut(CHUNK / 64)
            .enumerate()
            .for_each(|(chunk, words)| {
                words.fill(0);
                f(chunk * CHUNK, words);
            });
    }
}

/// Sets bit `j - start` of a chunk's words.
pub fn set_bit(words: &mut [u64], offset: usize) {
    words[offset / 64] |= 1 << (offset % 64);
}

/// The key at `position` (0-based) of `keys` sorted ascending, and how many keys are smaller.
pub fn key_at(keys: &[u32], position: usize) -> (u32, usize) {
    assert!(
        position < keys.len(),
        "rank {position} of {} keys",
        keys.len()
    );
    let high = histogram(keys, |k| Some((k >> 16) as usize));
    let (bucket, below_bucket) = locate(&high, position);
    let low = histogram(keys, |k| {
        ((k >> 16) as usize == bucket).then_some((k & 0xffff) as usize)
    });
    let (low_value, below_in_bucket) = locate(&low, position - below_bucket);
    (
        ((bucket as u32) << 16) | low_value as u32,
        below_bucket + below_in_bucket,
    )
}

fn histogram(keys: &[u32], bin: impl Fn(u32) -> Option<usize> + Sync) -> Vec<usize> {
    keys.par_chunks(CHUNK * 16)
        .map(|part| {
            let mut counts = vec![0usize; 1 << 16];
            for &k in part {
                if let Some(b) = bin(k) {
                    counts[b] += 1;
                }
            }
            counts
        })
        .reduce(
            || vec![0usize; 1 << 16],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// The bin holding `position` and the count of everything in lower bins.
fn locate(counts: &[usize], position: usize) -> (usize, usize) {
    let mut below = 0;
    for (bin, &count) in counts.iter().enumerate() {
        if position < below + count {
            return (bin, below);
        }
        below += count;
    }
    unreachable!("position {position} beyond the {below} counted keys")
}

/// Keeps the elements at positions `lo..hi` of `keys` ordered ascending by (key, flat index).
pub fn rank_band_mask(keys: &[u32], lo: usize, hi: usize) -> BitMask {
    let n = keys.len();
    let hi = hi.min(n);
    if lo >= hi {
        return BitMask::new(n);
    }
    if lo == 0 && hi == n {
        return BitMask::full(n);
    }
    let (key_lo, below_lo) = key_at(keys, lo);
    let (key_hi, below_hi) = key_at(keys, hi - 1);
    // Among keys equal to key_lo, the first `skip_lo` (in index order) sit below `lo`; among keys
    // equal to key_hi, only the first `keep_hi` sit below `hi`.
    let skip_lo = lo - below_lo;
    let keep_hi = hi - below_hi;
    // How many of each boundary key come before every chunk, so chunks can run in parallel.
    let per_chunk: Vec<(usize, usize)> = keys
        .par_chunks(CHUNK)
        .map(|c| {
            (
                c.iter().filter(|&&k| k == key_lo).count(),
                c.iter().filter(|&&k| k == key_hi).count(),
            )
        })
        .collect();
    let mut before = Vec::with_capacity(per_chunk.len());
    let (mut seen_lo, mut seen_hi) = (0, 0);
    for (a, b) in &per_chunk {
        before.push((seen_lo, seen_hi));
        seen_lo += a;
        seen_hi += b;
    }
    let mut mask = BitMask::new(n);
    mask.fill_chunks(|start, words| {
        let (mut ord_lo, mut ord_hi) = before[start / CHUNK];
        let end = (start + CHUNK).min(n);
        for (offset, &k) in keys[start..end].iter().enumerate() {
            let above_lo = k > key_lo || (k == key_lo && ord_lo >= skip_lo);
            let below_hi = k < key_hi || (k == key_hi && ord_hi < keep_hi);
            if k == key_lo {
                ord_lo += 1;
            }
            if k == key_hi {
                ord_hi += 1;
            }
            if above_lo && below_hi {
                set_bit(words, offset);
            }
        }
    });
    mask
}

/// Keeps the `k` largest keys; among equal keys at the cut, lower flat indices first.
pub fn top_k_mask(keys: &mut [u32], k: usize) -> BitMask {
    // Descending with lower index first is ascending by (!key, index): flip, select, flip back.
    keys.par_iter_mut().for_each(|key| *key = !*key);
    let mask = rank_band_mask(keys, 0, k);
    keys.par_iter_mut().for_each(|key| *key = !*key);
    mask
}

/// The order key of a magnitude: non-negative f32s order exactly like their bit patterns.
pub fn magnitude_key(x: f32) -> u32 {
    x.abs().to_bits()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, by sorting: positions lo..hi of a stable ascending sort.
    fn reference_band(keys: &[u32], lo: usize, hi: usize) -> Vec<bool> {
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_by_key(|&i| (keys[i], i));
        let mut keep = vec![false; keys.len()];
        for &i in &order[lo.min(keys.len())..hi.min(keys.len())] {
            keep[i] = true;
        }
        keep
    }

    fn bits(mask: &BitMask) -> Vec<bool> {
        (0..mask.len()).map(|i| mask.get(i)).collect()
    }

    #[test]
    fn band_masks_match_a_stable_sort_with_many_ties() {
        // Few distinct keys across several chunks: ties everywhere, also across chunk borders.
        let n = 3 * CHUNK + 123;
        let keys: Vec<u32> = (0..n)
            .map(|i| ((i * 7919) % 13) as u32 * 0x0001_0001)
            .collect();
        for (lo, hi) in [
            (0, n),
            (0, 1),
            (5, 6),
            (n / 3, 2 * n / 3),
            (100, n),
            (n - 1, n),
            (7, 7),
        ] {
            assert_eq!(
                bits(&rank_band_mask(&keys, lo, hi)),
                reference_band(&keys, lo, hi),
                "{lo}..{hi}"
            );
        }
    }

    #[test]
    fn top_k_prefers_lower_indices_among_ties() {
        let mut keys = vec![5, 9, 9, 1, 9, 5];
        let mask = top_k_mask(&mut keys, 3);
        assert_eq!(bits(&mask), vec![false, true, true, false, true, false]);
        let mask = top_k_mask(&mut keys, 2);
        assert_eq!(bits(&mask), vec![false, true, true, false, false, false]);
        let mask = top_k_mask(&mut keys, 4);
        assert_eq!(bits(&mask), vec![true, true, true, false, true, false]);
        assert_eq!(keys, vec![5, 9, 9, 1, 9, 5], "keys are restored");
        assert_eq!(mask.count_ones(), 4);
    }

    #[test]
    fn key_at_finds_order_statistics() {
        let keys: Vec<u32> = (0..100_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        for p in [0, 1, 50_000, 99_999] {
            let (key, below) = key_at(&keys, p);
            assert_eq!(key, sorted[p]);
            assert_eq!(below, sorted.iter().filter(|&&k| k < key).count());
        }
    }
}
