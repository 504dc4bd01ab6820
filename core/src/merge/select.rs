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

    /// A mask over `len` elements from its words (`len.div_ceil(64)` of them).
    pub fn from_words(words: Vec<u64>, len: usize) -> Self {
        assert_eq!(
            words.len(),
            len.div_ceil(64),
            "word count of a {len}-bit mask"
        );
        Self { words, len }
    }

    /// All bits set.
    pub fn full(len: usize) -> Self {
        let mut mask = Self::new(len);
        mask.words.fill(u64::MAX);
        mask
    }

    /// Bits `start..start + len` as a mask of their own (`start` a multiple of 64).
    pub fn range(&self, start: usize, len: usize) -> Self {
        assert!(start.is_multiple_of(64) && start + len <= self.len);
        let mut words = self.words[start / 64..(start + len).div_ceil(64)].to_vec();
        // Bits past `len` belong to the elements after the range: cleared, as in any mask.
        if let Some(last) = words.last_mut()
            && !len.is_multiple_of(64)
        {
            *last &= (1u64 << (len % 64)) - 1;
        }
        Self::from_words(words, len)
    }

    /// Every word: bit k of word w is element 64w + k.
    pub fn words(&self) -> &[u64] {
        &self.words
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

    /// The words of the chunk starting at element `start` (a multiple of `CHUNK`).
    pub fn words_of_chunk(&self, start: usize) -> &[u64] {
        let first = start / 64;
        &self.words[first..(first + CHUNK / 64).min(self.words.len())]
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

    /// Like [`fill_chunks`](Self::fill_chunks), collecting what `f` returns for every chunk, in
    /// chunk order.
    pub fn fill_chunks_collect<R: Send>(
        &mut self,
        f: impl Fn(usize, &mut [u64]) -> R + Sync + Send,
    ) -> Vec<R> {
        self.words
            .par_chunks_mut(CHUNK / 64)
            .enumerate()
            .map(|(chunk, words)| {
                words.fill(0);
                f(chunk * CHUNK, words)
            })
            .collect()
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

/// Each byte of a mask word as eight 0.0/1.0 factors: applying a mask becomes a table load and a
/// multiply per eight elements, which vectorises even without variable shifts (baseline x86-64).
pub static BYTE_FACTORS: [[f32; 8]; 256] = {
    let mut table = [[0.0f32; 8]; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut bit = 0;
        while bit < 8 {
            table[byte][bit] = ((byte >> bit) & 1) as f32;
            bit += 1;
        }
        byte += 1;
    }
    table
};

/// Sets bit `j - start` of a chunk's words.
pub fn set_bit(words: &mut [u64], offset: usize) {
    words[offset / 64] |= 1 << (offset % 64);
}

/// The key at `position` (0-based) of `keys` sorted ascending, how many keys are smaller, and
/// how many are equal to it: two parallel histogram passes over the top and bottom 16 bits.
/// (A sampled bracket was tried first and was slower: bf16 task vectors have few distinct
/// magnitudes, so millions of keys tie at the cut and land in any bracket.)
pub fn key_at(keys: &[u32], position: usize) -> (u32, usize, usize) {
    key_at_with(keys, position, radix_counts(keys).as_ref())
}

/// Keys up to this many are sorted (norms, biases): sorting a copy beats two 64 Ki-bin
/// histograms.
pub(super) const SORTED_AT_MOST: usize = 1 << 16;

/// The top-16-bit counts a radix select of `keys` starts from; `None` where they are sorted.
fn radix_counts(keys: &[u32]) -> Option<HighBits> {
    (keys.len() > SORTED_AT_MOST).then(|| HighBits::of(keys))
}

/// Counts of the keys' top 16 bits: the first half of a radix select, which callers that
/// produce keys can build while producing them and so save a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HighBits(Vec<[u32; 4]>);

impl HighBits {
    pub fn new() -> Self {
        Self(vec![[0; 4]; 1 << 16])
    }

    /// Total count per bin.
    pub(super) fn totals(&self) -> Vec<usize> {
        self.0
            .iter()
            .map(|l| l.iter().map(|&c| c as usize).sum())
            .collect()
    }

    pub fn of(keys: &[u32]) -> Self {
        keys.par_chunks(CHUNK)
            .with_min_len(64)
            .fold(Self::new, |mut h, part| {
                h.add(part);
                h
            })
            .reduce(Self::new, Self::merge)
    }

    pub fn add(&mut self, keys: &[u32]) {
        add_counts(&mut self.0, keys, |k| k >> 16);
    }

    #[allow(clippy::needless_pass_by_value)] // the shape rayon's `reduce` wants
    pub fn merge(mut self, other: Self) -> Self {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        self
    }
}

impl Default for HighBits {
    fn default() -> Self {
        Self::new()
    }
}

/// [`key_at`] with the keys' [`radix_counts`].
fn key_at_with(keys: &[u32], position: usize, high: Option<&HighBits>) -> (u32, usize, usize) {
    let Some(high) = high else {
        assert!(
            position < keys.len(),
            "rank {position} of {} keys",
            keys.len()
        );
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let key = sorted[position];
        let below = sorted.partition_point(|&k| k < key);
        let equal = sorted.partition_point(|&k| k <= key) - below;
        return (key, below, equal);
    };
    assert!(
        position < keys.len(),
        "rank {position} of {} keys",
        keys.len()
    );
    let (bucket, below_bucket) = locate(&high.totals(), position);
    let low = low_histogram(keys, bucket as u32);
    let (low_value, below_in_bucket) = locate(&low, position - below_bucket);
    (
        ((bucket as u32) << 16) | low_value as u32,
        below_bucket + below_in_bucket,
        low[low_value],
    )
}

/// Adds one count per key to `lanes[bin(key)]`. Keys of real task vectors repeat their top
/// bits constantly, so a single counter per bin stalls on its own increments; four counters per
/// bin, filled round-robin and summed at the end, keep the increments independent.
fn add_counts(lanes: &mut [[u32; 4]], keys: &[u32], bin: impl Fn(u32) -> u32) {
    let mut quads = keys.chunks_exact(4);
    for q in &mut quads {
        lanes[bin(q[0]) as usize][0] += 1;
        lanes[bin(q[1]) as usize][1] += 1;
        lanes[bin(q[2]) as usize][2] += 1;
        lanes[bin(q[3]) as usize][3] += 1;
    }
    for &k in quads.remainder() {
        lanes[bin(k) as usize][0] += 1;
    }
}

/// Counts of the low 16 bits of the keys whose top 16 bits are `bucket`.
fn low_histogram(keys: &[u32], bucket: u32) -> Vec<usize> {
    // Out-of-bucket keys go to a spare last bin, so the loop has no branch.
    let lanes = keys
        .par_chunks(CHUNK)
        .with_min_len(64)
        .fold(
            || vec![[0u32; 4]; (1 << 16) + 1],
            |mut lanes, part| {
                add_counts(&mut lanes, part, |k| {
                    if k >> 16 == bucket {
                        k & 0xffff
                    } else {
                        1 << 16
                    }
                });
                lanes
            },
        )
        .reduce(
            || vec![[0u32; 4]; (1 << 16) + 1],
            |mut a, b| {
                for (x, y) in a.iter_mut().zip(&b) {
                    for (p, q) in x.iter_mut().zip(y) {
                        *p += q;
                    }
                }
                a
            },
        );
    lanes[..1 << 16]
        .iter()
        .map(|l| l.iter().map(|&c| c as usize).sum())
        .collect()
}

/// The bin holding `position` and the count of everything in lower bins.
pub(super) fn locate(counts: &[usize], position: usize) -> (usize, usize) {
    let mut below = 0;
    for (bin, &count) in counts.iter().enumerate() {
        if position < below + count {
            return (bin, below);
        }
        below += count;
    }
    unreachable!("position {position} beyond the {below} counted keys")
}

/// One side of a kept band: keys strictly beyond `key` (above it for a lower bound, below it for
/// an upper bound) are kept; keys equal to it are kept when their ordinal among the equal keys,
/// in index order, lies in `ties`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bound {
    pub(super) key: u32,
    pub(super) ties: (usize, usize),
}

/// What a chunk does with the keys equal to one bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ties {
    All,
    None,
    /// The cut falls inside this chunk: ordinals must be tracked element by element.
    Some,
}

impl Bound {
    /// Whether a chunk holding ordinals `before..before + count` of this bound's key keeps all,
    /// none or some of them.
    pub(super) fn ties_in(self, before: usize, count: usize) -> Ties {
        let (a, b) = self.ties;
        if count == 0 || (before >= a && before + count <= b) {
            Ties::All
        } else if before + count <= a || before >= b {
            Ties::None
        } else {
            Ties::Some
        }
    }
}

/// Builds the mask in two parallel passes: count the bound keys per chunk, then set bits. Only
/// the (at most two) chunks where a cut falls inside a run of equal keys are walked element by
/// element; every other chunk is one branch-free comparison per key.
fn bounded_mask(keys: &[u32], lower: Option<Bound>, upper: Option<Bound>) -> BitMask {
    let n = keys.len();
    let lo = lower.map_or(0, |b| b.key);
    let hi = upper.map_or(u32::MAX, |b| b.key);
    let (has_lo, has_hi) = (lower.is_some(), upper.is_some());
    let counts: Vec<(usize, usize)> = keys
        .par_chunks(CHUNK)
        .map(|part| {
            let (mut at_lo, mut at_hi) = (0u32, 0u32);
            for &k in part {
                at_lo += u32::from(has_lo & (k == lo));
                at_hi += u32::from(has_hi & (k == hi));
            }
            (at_lo as usize, at_hi as usize)
        })
        .collect();
    let mut before = Vec::with_capacity(counts.len());
    let (mut seen_lo, mut seen_hi) = (0, 0);
    for (a, b) in &counts {
        before.push((seen_lo, seen_hi));
        seen_lo += a;
        seen_hi += b;
    }
    let mut mask = BitMask::new(n);
    mask.words
        .par_chunks_mut(CHUNK / 64)
        .zip(keys.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(chunk, (words, part))| {
            let (before_lo, before_hi) = before[chunk];
            let (count_lo, count_hi) = counts[chunk];
            let lo_ties = lower.map_or(Ties::All, |b| b.ties_in(before_lo, count_lo));
            let hi_ties = upper.map_or(Ties::All, |b| b.ties_in(before_hi, count_hi));
            if lo_ties != Ties::Some && hi_ties != Ties::Some {
                let (take_lo, take_hi) = (lo_ties == Ties::All, hi_ties == Ties::All);
                for (word, group) in words.iter_mut().zip(part.chunks(64)) {
                    let mut bits = 0u64;
                    for (b, &k) in group.iter().enumerate() {
                        let above = !has_lo | (k > lo) | (take_lo & (k == lo));
                        let beneath = !has_hi | (k < hi) | (take_hi & (k == hi));
                        bits |= u64::from(above & beneath) << b;
                    }
                    *word = bits;
                }
                return;
            }
            words.fill(0);
            let (mut ord_lo, mut ord_hi) = (before_lo, before_hi);
            for (offset, &k) in part.iter().enumerate() {
                let mut keep = true;
                if let Some(b) = lower {
                    if k == b.key {
                        keep &= (b.ties.0..b.ties.1).contains(&ord_lo);
                        ord_lo += 1;
                    } else {
                        keep &= k > b.key;
                    }
                }
                if let Some(b) = upper {
                    if k == b.key {
                        keep &= (b.ties.0..b.ties.1).contains(&ord_hi);
                        ord_hi += 1;
                    } else {
                        keep &= k < b.key;
                    }
                }
                if keep {
                    set_bit(words, offset);
                }
            }
        });
    mask
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
    let high = radix_counts(keys);
    let high = high.as_ref();
    // Among keys equal to the key at `lo`, the first `lo - below` (in index order) sit below
    // `lo`; among keys equal to the key at `hi - 1`, only the first `hi - below` sit below `hi`.
    let lower = (lo > 0).then(|| {
        let (key, below, _) = key_at_with(keys, lo, high);
        Bound {
            key,
            ties: (lo - below, usize::MAX),
        }
    });
    let upper = (hi < n).then(|| {
        let (key, below, _) = key_at_with(keys, hi - 1, high);
        Bound {
            key,
            ties: (0, hi - below),
        }
    });
    bounded_mask(keys, lower, upper)
}

/// Keeps the `k` largest keys; among equal keys at the cut, lower flat indices first.
pub fn top_k_mask(keys: &[u32], k: usize) -> BitMask {
    let n = keys.len();
    if k >= n {
        return BitMask::full(n);
    }
    if k == 0 {
        return BitMask::new(n);
    }
    // The k-th largest is at ascending position n - k; everything above it is kept, and of the
    // keys equal to it the first `k - greater` in index order.
    let (key, below, equal) = key_at(keys, n - k);
    let greater = n - below - equal;
    bounded_mask(
        keys,
        Some(Bound {
            key,
            ties: (0, k - greater),
        }),
        None,
    )
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
        let keys = vec![5, 9, 9, 1, 9, 5];
        let mask = top_k_mask(&keys, 3);
        assert_eq!(bits(&mask), vec![false, true, true, false, true, false]);
        let mask = top_k_mask(&keys, 2);
        assert_eq!(bits(&mask), vec![false, true, true, false, false, false]);
        let mask = top_k_mask(&keys, 4);
        assert_eq!(bits(&mask), vec![true, true, true, false, true, false]);
        assert_eq!(mask.count_ones(), 4);
    }

    #[test]
    fn top_k_matches_a_stable_descending_sort() {
        let n = 2 * CHUNK + 77;
        let keys: Vec<u32> = (0..n).map(|i| ((i * 31) % 7) as u32).collect();
        for k in [1, 5, n / 2, n - 3] {
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (std::cmp::Reverse(keys[i]), i));
            let mut expected = vec![false; n];
            order[..k].iter().for_each(|&i| expected[i] = true);
            assert_eq!(bits(&top_k_mask(&keys, k)), expected, "k = {k}");
        }
    }

    #[test]
    fn key_at_finds_order_statistics() {
        // Few distinct values: ties at every cut.
        let keys: Vec<u32> = (0..(1u32 << 21))
            .map(|i| i.wrapping_mul(2_654_435_761) >> 12)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        for p in [0, 1, 50_000, 1 << 20, (1 << 21) - 1] {
            let (key, below, equal) = key_at(&keys, p);
            assert_eq!(key, sorted[p]);
            assert_eq!(below, sorted.iter().filter(|&&k| k < key).count());
            assert_eq!(equal, sorted.iter().filter(|&&k| k == key).count());
        }
    }
}
