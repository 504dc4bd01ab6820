//! The CPU backend: rayon over chunks of [`CHUNK`] elements, inputs decoded to f32 per chunk,
//! f32 arithmetic in the order the [`Backend`] docs give (the GPU kernels follow it too).

use std::cell::RefCell;

use super::agreement::{self, GRAM_BLOCK, GRAM_LANES};
use super::{Backend, BackendError, Combine};
use crate::checkpoint::TensorView;
use crate::merge::kernel::{CHUNK, sum_in_order, zip_chunks, zip_map};

/// Runs on the CPU's cores (rayon's global pool).
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu;

thread_local! {
    /// Per-thread rows of the combine pass (see `Cpu::combine`).
    static COMBINE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Backend for Cpu {
    fn describe(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn weighted_sum(
        &self,
        inputs: &[TensorView<'_>],
        coefficients: &[f32],
        divisor: Option<f32>,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        zip_map(inputs, out, |_, xs, o| {
            o.fill(0.0);
            for (x, &c) in xs.iter().zip(coefficients) {
                for (o, &x) in o.iter_mut().zip(x.iter()) {
                    *o += x * c;
                }
            }
            if let Some(d) = divisor {
                for o in o.iter_mut() {
                    *o /= d;
                }
            }
        });
        Ok(())
    }

    fn gram(
        &self,
        inputs: &[TensorView<'_>],
        center: Option<TensorView<'_>>,
    ) -> Result<Vec<f64>, BackendError> {
        Ok(gram(inputs, center))
    }

    fn combine(&self, c: &Combine<'_>, out: &mut [f32]) -> Result<(), BackendError> {
        let mut all = Vec::with_capacity(c.models.len() + 1);
        all.push(c.base.clone());
        all.extend(c.models.iter().cloned());
        let n_models = c.models.len();
        zip_map(&all, out, |start, xs, o| {
            let (b, models) = xs.split_first().expect("the base is the first input");
            let len = o.len();
            COMBINE.with_borrow_mut(|scratch| {
                // Laid out as N rows of votes, then the per-element total, the agreeing sum
                // and the agreeing weight (or the plain sum and the divisor): every loop below
                // runs over contiguous f32 rows and vectorises.
                scratch.resize((n_models + 3) * CHUNK, 0.0);
                let (deltas, rest) = scratch.split_at_mut(n_models * CHUNK);
                let (total, rest) = rest.split_at_mut(CHUNK);
                let (mixed, divisor) = rest.split_at_mut(CHUNK);
                let (total, mixed, divisor) =
                    (&mut total[..len], &mut mixed[..len], &mut divisor[..len]);
                if c.consensus {
                    // Every value the election decides on goes through `agreement` (flushed,
                    // rounded at the same points as the GPU kernel), see its module docs. The
                    // flushed base waits in `mixed` until the agreement pass.
                    for (fb, &b) in mixed.iter_mut().zip(b.iter()) {
                        *fb = agreement::flush(b);
                    }
                    total.fill(0.0);
                    for (i, x) in models.iter().enumerate() {
                        let d = &mut deltas[i * CHUNK..i * CHUNK + len];
                        let w = agreement::flush(c.weights[i]);
                        let f = agreement::flush(c.factors[i]);
                        match &c.masks[i] {
                            None => {
                                for (((d, t), &x), &b) in d
                                    .iter_mut()
                                    .zip(total.iter_mut())
                                    .zip(x.iter())
                                    .zip(&*mixed)
                                {
                                    *d = agreement::vote_of_flushed(x, b, 1.0, f, w);
                                    *t = agreement::accumulate(*t, *d);
                                }
                            }
                            Some(mask) => {
                                let words = mask.words_of_chunk(start);
                                let groups = d
                                    .chunks_mut(64)
                                    .zip(total.chunks_mut(64))
                                    .zip(x.chunks(64))
                                    .zip(mixed.chunks(64))
                                    .zip(words);
                                for ((((dg, tg), xg), bg), &word) in groups {
                                    let keep = keep_factors(word);
                                    let lanes = dg.iter_mut().zip(tg).zip(xg).zip(bg).zip(&keep);
                                    for ((((d, t), &x), &b), &keep) in lanes {
                                        *d = agreement::vote_of_flushed(x, b, keep, f, w);
                                        *t = agreement::accumulate(*t, *d);
                                    }
                                }
                            }
                        }
                    }
                    // A total of 0 (or a denormal) elects +1; zero votes never agree.
                    mixed.fill(0.0);
                    divisor.fill(0.0);
                    for i in 0..n_models {
                        let d = &deltas[i * CHUNK..i * CHUNK + len];
                        let w = agreement::flush(c.weights[i]);
                        for (((m, q), &t), &d) in mixed
                            .iter_mut()
                            .zip(divisor.iter_mut())
                            .zip(total.iter())
                            .zip(d)
                        {
                            let agree = agreement::agrees(d, agreement::elects_negative(t));
                            *m += if agree { d } else { 0.0 };
                            *q = agreement::accumulate(*q, if agree { w } else { 0.0 });
                        }
                    }
                    for q in divisor.iter_mut() {
                        if *q == 0.0 {
                            *q = 1.0;
                        }
                    }
                } else {
                    mixed.fill(0.0);
                    for (i, x) in models.iter().enumerate() {
                        let (w, f) = (c.weights[i], c.factors[i]);
                        match &c.masks[i] {
                            None => {
                                for ((m, &x), &b) in mixed.iter_mut().zip(x.iter()).zip(b.iter()) {
                                    *m += w * ((x - b) * f);
                                }
                            }
                            Some(mask) => {
                                // Multiplying by the mask bit as 0.0/1.0 keeps the loop
                                // branch-free.
                                let words = mask.words_of_chunk(start);
                                let groups = mixed
                                    .chunks_mut(64)
                                    .zip(x.chunks(64))
                                    .zip(b.chunks(64))
                                    .zip(words);
                                for (((mg, xg), bg), &word) in groups {
                                    let keep = keep_factors(word);
                                    for (((m, &x), &b), &keep) in
                                        mg.iter_mut().zip(xg).zip(bg).zip(&keep)
                                    {
                                        *m += w * ((x - b) * keep * f);
                                    }
                                }
                            }
                        }
                    }
                    divisor.fill(c.plain_divisor);
                }
                for (((o, &b), &m), &q) in o
                    .iter_mut()
                    .zip(b.iter())
                    .zip(mixed.iter())
                    .zip(divisor.iter())
                {
                    let mut m = if c.normalize { m / q } else { m };
                    if c.lambda != 1.0 {
                        m *= c.lambda;
                    }
                    *o = b + m;
                }
            });
        });
        Ok(())
    }

    fn nearswap(
        &self,
        a: TensorView<'_>,
        b: TensorView<'_>,
        t: f32,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        zip_map(&[a, b], out, |_, xs, o| {
            for ((o, &a), &b) in o.iter_mut().zip(xs[0]).zip(xs[1]) {
                let w = (t / (a - b).abs().max(1e-6)).clamp(0.0, 1.0);
                *o = w * b + (1.0 - w) * a;
            }
        });
        Ok(())
    }
}

/// The 0.0/1.0 keep factors of each 4-bit pattern, lowest bit first.
const NIBBLES: [[f32; 4]; 16] = {
    let mut table = [[0f32; 4]; 16];
    let mut nibble = 0;
    while nibble < 16 {
        let mut k = 0;
        while k < 4 {
            table[nibble][k] = ((nibble >> k) & 1) as f32;
            k += 1;
        }
        nibble += 1;
    }
    table
};

/// The keep factor (0.0 or 1.0) of each of a mask word's 64 elements. Expanding a word four
/// lanes at a time keeps the loops that multiply by them vectorised (a per-lane variable shift
/// is not, on baseline x86-64).
#[inline]
fn keep_factors(word: u64) -> [f32; 64] {
    let mut keep = [0f32; 64];
    for (j, lanes) in keep.chunks_exact_mut(4).enumerate() {
        lanes.copy_from_slice(&NIBBLES[((word >> (4 * j)) & 15) as usize]);
    }
    keep
}

// The Gram blocks are the CPU backend's chunks, so one work item is one block.
const _: () = assert!(GRAM_BLOCK == CHUNK && GRAM_BLOCK.is_multiple_of(GRAM_LANES));

/// The Gram matrix of [`Backend::gram`], in the order both backends use: per block of
/// [`GRAM_BLOCK`] elements, lane `l` sums element `l`, `l + 256`, … in f64 (each product of
/// two f32 is exact in f64, so fusing could not change it), the lanes are added by
/// [`agreement::gram_tree`], and the blocks are added in order from 0.
fn gram(inputs: &[TensorView<'_>], center: Option<TensorView<'_>>) -> Vec<f64> {
    let k = inputs.len();
    let n = center.as_ref().map_or_else(
        || inputs.first().map_or(0, TensorView::numel),
        TensorView::numel,
    );
    let mut all = Vec::with_capacity(k + 1);
    let first = usize::from(center.is_some());
    all.extend(center);
    all.extend(inputs.iter().cloned());
    let pairs = k * (k + 1) / 2;
    let blocks = zip_chunks(&all, n, |_, xs| {
        let mut lanes = vec![[0f64; GRAM_LANES]; pairs];
        let mut values = vec![[0f32; GRAM_LANES]; k];
        let len = xs.first().map_or(0, |x| x.len());
        for start in (0..len).step_by(GRAM_LANES) {
            let width = GRAM_LANES.min(len - start);
            for (v, x) in values.iter_mut().zip(&xs[first..]) {
                let x = &x[start..start + width];
                if first == 0 {
                    for (v, &x) in v.iter_mut().zip(x) {
                        *v = agreement::gram_value(x, None);
                    }
                } else {
                    let c = &xs[0][start..start + width];
                    for ((v, &x), &c) in v.iter_mut().zip(x).zip(c) {
                        *v = agreement::gram_value(x, Some(c));
                    }
                }
            }
            let mut p = 0;
            for a in 0..k {
                for b in a..k {
                    let (va, vb) = (&values[a][..width], &values[b][..width]);
                    for ((s, &x), &y) in lanes[p].iter_mut().zip(va).zip(vb) {
                        *s += f64::from(x) * f64::from(y);
                    }
                    p += 1;
                }
            }
        }
        lanes
            .iter_mut()
            .map(agreement::gram_tree)
            .collect::<Vec<f64>>()
    });
    let mut g = vec![0f64; k * k];
    let mut p = 0;
    for a in 0..k {
        for b in a..k {
            let sum = sum_in_order(blocks.iter().map(|block| block[p]));
            g[a * k + b] = sum;
            g[b * k + a] = sum;
            p += 1;
        }
    }
    g
}

#[cfg(test)]
mod tests {
    use super::keep_factors;

    #[test]
    fn keep_factors_are_the_mask_bits() {
        for word in [
            0u64,
            u64::MAX,
            1,
            1 << 63,
            0x9e37_79b9_7f4a_7c15,
            0x0123_4567_89ab_cdef,
        ] {
            let keep = keep_factors(word);
            for (k, &f) in keep.iter().enumerate() {
                assert_eq!(f, ((word >> k) & 1) as f32, "{word:#x} bit {k}");
            }
        }
    }
}
