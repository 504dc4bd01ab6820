//! The values both backends decide on, computed bit for bit alike (docs/gpu-cpu-agreement.md).
//!
//! A GPU may do two things to f32 arithmetic that the CPU backend never does: flush denormal
//! inputs and results to zero (Vulkan allows it unless a shader asks otherwise, and WGSL cannot
//! ask), and fuse a multiply into the add that consumes it (one rounding instead of two).
//! Either changes a sum by an ulp or a denormal, which is harmless in an output but not in a
//! decision: a sign election whose total sits within an ulp of zero, or a vote of a denormal
//! size, would pick a different set of models on the two backends and change the output by a
//! whole weight. So the sign election runs on values that neither can touch:
//!
//! - every input and every intermediate result of a vote is passed through [`flush`], by
//!   integer operations, which no GPU flushes (a denormal becomes +0 on both backends, whether
//!   or not the hardware flushed it first);
//! - every vote is a finished value before it is added (on the GPU the flush goes through an
//!   XOR with a zero the compiler cannot see, so no multiply can be fused into the sum);
//! - the remaining operations (subtraction, multiplication, addition of normal f32 values)
//!   are correctly rounded on both (Vulkan requires it of OpFSub, OpFMul and OpFAdd).
//!
//! The cost is a deviation from mergekit only where a task vector, a weight, a rescale factor
//! or a partial sum of votes is denormal (below `f32::MIN_POSITIVE` ≈ 1.2e-38): such a value
//! counts as zero in the election. The Gram matrices that SLERP and Model Stock decide on are
//! made identical by computing them in one fixed order in f64 on both (see `Cpu::gram`).

/// The exponent bits of an f32: zero for ±0 and denormals, all ones for infinities and NaN.
const EXPONENT: u32 = 0x7f80_0000;
/// The bits of +∞; a magnitude above it is a NaN.
const INFINITY: u32 = 0x7f80_0000;
/// The magnitude bits of `f32::MIN_POSITIVE`.
const MIN_NORMAL: u32 = 0x0080_0000;

// The helpers below are branch-free (masks and non-short-circuit `&`/`|`), so the CPU
// backend's loops over them vectorise.

/// `x`, with ±0 and denormals replaced by +0 (NaN and infinities kept).
#[inline]
pub const fn flush(x: f32) -> f32 {
    let bits = x.to_bits();
    let keep = ((bits & EXPONENT) != 0) as u32;
    f32::from_bits(bits & keep.wrapping_neg())
}

/// One model's vote in the sign election, `w·((x − b)·keep·f)` (ALGORITHMS.md §2.2), with the
/// inputs and every intermediate result flushed. `keep` is 0.0 or 1.0.
#[inline]
pub fn vote(x: f32, b: f32, keep: f32, factor: f32, weight: f32) -> f32 {
    vote_of_flushed(x, flush(b), keep, flush(factor), flush(weight))
}

/// [`vote`] with `b`, `factor` and `weight` already flushed (flushing is idempotent).
#[inline]
pub(crate) fn vote_of_flushed(x: f32, b: f32, keep: f32, factor: f32, weight: f32) -> f32 {
    let delta = flush(flush(x) - b);
    let scaled = flush(delta * keep * factor);
    flush(weight * scaled)
}

/// One step of the running sum of votes (or of agreeing weights), flushed.
#[inline]
pub fn accumulate(sum: f32, value: f32) -> f32 {
    flush(sum + value)
}

/// Whether the election picks −1: the total is at most −`f32::MIN_POSITIVE`, or NaN (as in
/// mergekit, where `NaN >= 0` is false). A total of 0, −0 or a denormal elects +1.
#[inline]
pub const fn elects_negative(total: f32) -> bool {
    let bits = total.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    (magnitude > INFINITY) | ((bits >> 31 == 1) & (magnitude >= MIN_NORMAL))
}

/// Whether a vote `d` agrees with the elected sign: a normal number or an infinity of that
/// sign. Zeros, denormals and NaN never agree.
#[inline]
pub const fn agrees(d: f32, negative: bool) -> bool {
    let bits = d.to_bits();
    let magnitude = bits & 0x7fff_ffff;
    (magnitude >= MIN_NORMAL) & (magnitude <= INFINITY) & ((bits >> 31 == 1) == negative)
}

/// Elements per block of a Gram matrix: both backends sum each block in [`GRAM_LANES`]
/// interleaved lanes, add the lanes in a fixed tree, and add the blocks in order.
pub const GRAM_BLOCK: usize = 16 * 1024;
/// Lanes per Gram block (the GPU's workgroup size).
pub const GRAM_LANES: usize = 256;

/// The value input `x` contributes to a Gram matrix: `x`, or `x − center`, flushed.
#[inline]
pub fn gram_value(x: f32, center: Option<f32>) -> f32 {
    match center {
        None => flush(x),
        Some(c) => flush(flush(x) - flush(c)),
    }
}

/// Adds the lanes of one Gram block in the fixed tree both backends use: lane `l` takes lane
/// `l + w` for widths 128, 64, …, 1.
pub fn gram_tree(lanes: &mut [f64; GRAM_LANES]) -> f64 {
    let mut width = GRAM_LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENORMAL: f32 = 1.0e-39;

    #[test]
    fn flush_zeroes_denormals_and_keeps_the_rest() {
        assert_eq!(flush(DENORMAL).to_bits(), 0);
        assert_eq!(flush(-DENORMAL).to_bits(), 0);
        assert_eq!(flush(-0.0).to_bits(), 0);
        assert_eq!(flush(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(flush(-f32::MIN_POSITIVE), -f32::MIN_POSITIVE);
        assert_eq!(flush(f32::INFINITY), f32::INFINITY);
        assert!(flush(f32::NAN).is_nan());
        assert_eq!(flush(1.5), 1.5);
    }

    #[test]
    fn a_zero_or_denormal_total_elects_plus_one() {
        for total in [0.0, -0.0, DENORMAL, -DENORMAL, f32::from_bits(0x8000_0001)] {
            assert!(!elects_negative(total), "{total:e}");
        }
        for total in [1.0, f32::MIN_POSITIVE, f32::INFINITY] {
            assert!(!elects_negative(total), "{total:e}");
        }
        for total in [
            -f32::MIN_POSITIVE,
            -1.0,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ] {
            assert!(elects_negative(total), "{total:e}");
        }
    }

    #[test]
    fn zero_denormal_and_nan_votes_never_agree() {
        for d in [0.0, -0.0, DENORMAL, -DENORMAL, f32::NAN, -f32::NAN] {
            assert!(!agrees(d, false) && !agrees(d, true), "{d:e}");
        }
        assert!(agrees(f32::MIN_POSITIVE, false) && !agrees(f32::MIN_POSITIVE, true));
        assert!(agrees(-2.0, true) && !agrees(-2.0, false));
        assert!(agrees(f32::INFINITY, false) && agrees(f32::NEG_INFINITY, true));
    }

    #[test]
    fn votes_with_a_denormal_anywhere_are_zero() {
        // A denormal task vector, even one a large weight or factor would make normal again.
        let tiny = f32::from_bits(0x0000_0400); // ≈ 1.4e-42
        assert_eq!(vote(tiny, 0.0, 1.0, 1.0, 1e30), 0.0);
        // x − b denormal although both are normal.
        let b = f32::MIN_POSITIVE * 4.0;
        let x = f32::from_bits(b.to_bits() + 1);
        assert!((x - b).abs() < f32::MIN_POSITIVE && x - b != 0.0);
        assert_eq!(vote(x, b, 1.0, 1.0, 1e30), 0.0);
        // A normal delta that a tiny weight or factor makes denormal.
        assert_eq!(vote(1e-20, 0.0, 1.0, 1.0, 1e-20), 0.0);
        assert_eq!(vote(1e-20, 0.0, 1.0, 1e-20, 1.0), 0.0);
        // A denormal weight or factor counts as zero.
        assert_eq!(vote(1.0, 0.0, 1.0, 1.0, DENORMAL), 0.0);
        assert_eq!(vote(1.0, 0.0, 1.0, DENORMAL, 1.0), 0.0);
        // Otherwise the vote is mergekit's, rounded at the same points.
        let (x, b, f, w) = (0.3f32, -0.1f32, 1.7f32, 0.45f32);
        assert_eq!(vote(x, b, 1.0, f, w), w * ((x - b) * f));
        assert_eq!(vote(x, b, 0.0, f, w), 0.0);
    }

    /// Float arithmetic as a GPU may do it: IEEE (lavapipe, the CPU), flushing every denormal
    /// input and result, or fusing a multiply into the add that takes it.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Device {
        Ieee,
        FlushToZero,
        Fused,
    }

    impl Device {
        fn ftz(self, x: f32) -> f32 {
            if self == Self::FlushToZero && x.abs() < f32::MIN_POSITIVE {
                0.0f32.copysign(x)
            } else {
                x
            }
        }
        fn add(self, a: f32, b: f32) -> f32 {
            self.ftz(self.ftz(a) + self.ftz(b))
        }
        fn sub(self, a: f32, b: f32) -> f32 {
            self.ftz(self.ftz(a) - self.ftz(b))
        }
        fn mul(self, a: f32, b: f32) -> f32 {
            self.ftz(self.ftz(a) * self.ftz(b))
        }
        /// `acc + w·v`: one rounding when fused.
        fn mul_add(self, w: f32, v: f32, acc: f32) -> f32 {
            if self == Self::Fused {
                w.mul_add(v, acc)
            } else {
                self.add(acc, self.mul(w, v))
            }
        }
    }

    /// One model: (x, weight); the base is 0, no mask, factor 1.
    type Model = (f32, f32);

    /// The elected sign as the kernels computed it before: `total += w·(x − b)`, compared
    /// with `>= 0` (as a device would run it).
    fn old_election(device: Device, models: &[Model]) -> bool {
        let mut total = 0.0;
        for &(x, w) in models {
            total = device.mul_add(w, device.sub(x, 0.0), total);
        }
        // `!(total >= 0.0)`: −1 for a negative total or NaN.
        total
            .partial_cmp(&0.0)
            .is_none_or(std::cmp::Ordering::is_lt)
    }

    /// The elected sign by this module's rule, run as a device would run it: every operation
    /// through `device`, but each result flushed (by bits) and finished before the next add,
    /// so there is no multiply left to fuse.
    fn new_election(device: Device, models: &[Model]) -> (bool, Vec<bool>) {
        let votes: Vec<f32> = models
            .iter()
            .map(|&(x, w)| {
                let delta = flush(device.sub(flush(x), flush(0.0)));
                let scaled = flush(device.mul(device.mul(delta, 1.0), flush(1.0)));
                flush(device.mul(flush(w), scaled))
            })
            .collect();
        let mut total = 0.0;
        for &d in &votes {
            total = flush(device.add(total, d));
        }
        let negative = elects_negative(total);
        (
            negative,
            votes.iter().map(|&d| agrees(d, negative)).collect(),
        )
    }

    /// Inputs on the edges: totals that fusing or flushing would move across zero.
    fn edges() -> Vec<Vec<Model>> {
        let mut cases = Vec::new();
        // Fusing: the second product rounds up, so the separately rounded total is exactly 0
        // (+1) and the fused one is the negative rounding error (−1).
        let w = 0.3f32;
        let e = (0..)
            .map(|k| 0.5 + k as f32 * 1.0e-3)
            .find(|&e: &f32| f64::from(w * e) > f64::from(w) * f64::from(e))
            .expect("some product rounds up");
        cases.push(vec![(-(w * e), 1.0), (e, w)]);
        // Flushing: a total of −2⁻¹⁴⁰ elects −1 as IEEE arithmetic has it, +1 where the
        // device flushes it to −0.
        let p = 2f32.powi(-120);
        cases.push(vec![(p, 1.0), (-(p + 2f32.powi(-140)), 1.0)]);
        // A denormal partial sum (2⁻¹²⁷) followed by a normal vote: flushing only the final
        // total would elect +1 on an IEEE device and −1 on a flushing one; flushing each step
        // elects −1 on both.
        cases.push(vec![
            (p, 1.0),
            (-(p - 2f32.powi(-127)), 1.0),
            (-(f32::MIN_POSITIVE + 2f32.powi(-149)), 1.0),
        ]);
        // A denormal vote alone, and a negative denormal total.
        cases.push(vec![(-DENORMAL, 1.0)]);
        cases.push(vec![(1.0, 1.0), (-1.0, 1.0), (-DENORMAL, 1.0)]);
        // Exactly zero, and one ulp either side.
        cases.push(vec![(1.0, 1.0), (-1.0, 1.0)]);
        cases.push(vec![(1.0, 1.0), (-1.0 - f32::EPSILON, 1.0)]);
        cases.push(vec![(1.0, 1.0), (-1.0 + f32::EPSILON / 2.0, 1.0)]);
        cases
    }

    #[test]
    fn the_old_kernel_elected_differently_on_fusing_or_flushing_devices() {
        let cases = edges();
        let ieee = |c: &[Model]| old_election(Device::Ieee, c);
        assert_ne!(
            ieee(&cases[0]),
            old_election(Device::Fused, &cases[0]),
            "fusing flips the fma edge"
        );
        assert_ne!(
            ieee(&cases[1]),
            old_election(Device::FlushToZero, &cases[1]),
            "flushing flips a denormal total"
        );
    }

    #[test]
    fn the_election_is_the_same_on_every_kind_of_device() {
        for case in edges() {
            let ieee = new_election(Device::Ieee, &case);
            for device in [Device::FlushToZero, Device::Fused] {
                assert_eq!(new_election(device, &case), ieee, "{device:?} on {case:?}");
            }
        }
        // And it is the documented one.
        let cases = edges();
        let elected: Vec<bool> = cases
            .iter()
            .map(|c| new_election(Device::Ieee, c).0)
            .collect();
        // fma edge: exactly 0 → +1; −2⁻¹⁴⁰ is denormal → +1; the flushed partial sum → −1;
        // a lone denormal vote → +1 (and it does not agree); 0 plus a denormal → +1; exactly
        // 0 → +1; −ulp → −1; +ulp/2 → +1.
        assert_eq!(
            elected,
            [false, false, true, false, false, false, true, false]
        );
        assert_eq!(new_election(Device::Ieee, &cases[3]).1, [false]);
    }

    #[test]
    fn the_gram_tree_adds_lanes_pairwise() {
        let mut lanes = [0f64; GRAM_LANES];
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = l as f64;
        }
        assert_eq!(gram_tree(&mut lanes), (0..GRAM_LANES).sum::<usize>() as f64);
        // The order is fixed: 1 + 2⁵³ + (−2⁵³) in a tree differs from left to right.
        let mut lanes = [0f64; GRAM_LANES];
        lanes[0] = 1.0;
        lanes[128] = 2f64.powi(53);
        lanes[64] = -(2f64.powi(53));
        assert_eq!(gram_tree(&mut lanes), 0.0);
    }
}
