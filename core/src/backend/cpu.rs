//! The CPU backend: rayon over chunks of [`CHUNK`] elements, inputs decoded to f32 per chunk,
//! f32 arithmetic in the order the [`Backend`] docs give (the GPU kernels follow it too).

use std::cell::RefCell;

use rayon::prelude::*;

use super::agreement::{self, GRAM_BLOCK, GRAM_LANES};
use super::{Backend, BackendError, Combine};
use crate::checkpoint::TensorView;
use crate::dtype::TensorBytes;
use crate::merge::kernel::{CHUNK, check_sizes, sum_in_order, zip_chunks, zip_map};
use half::bf16;

#[cfg(target_arch = "x86_64")]
mod combine_bf16;

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
            weighted_sum_chunk(xs, coefficients, divisor, o);
        });
        Ok(())
    }

    fn weighted_sum_encoded(
        &self,
        inputs: &[TensorView<'_>],
        coefficients: &[f32],
        divisor: Option<f32>,
        _work: &mut Vec<f32>,
        out: &mut TensorBytes,
    ) -> Result<u64, BackendError> {
        check_sizes(inputs, out.len());
        if let TensorBytes::BF16(values) = out {
            let n = values.len();
            if let Some(xs) = inputs
                .iter()
                .map(|input| input.bf16_bits(0, n))
                .collect::<Option<Vec<_>>>()
            {
                return Ok(weighted_sum_bf16(&xs, coefficients, divisor, values));
            }
        }
        // One pass from the inputs to the encoded output: decoding each input into a chunk
        // of L2, summing there and encoding the sum from a slab in memory kept a linear
        // merge at a fifth of the memory bandwidth.
        Ok(out.fill_blocks(|start, o, scratch| {
            let mut terms = inputs.iter().zip(coefficients);
            match terms.next() {
                Some((input, &c)) => add_scaled(o, input, start, c, true, scratch),
                None => o.fill(0.0),
            }
            for (input, &c) in terms {
                add_scaled(o, input, start, c, false, scratch);
            }
            if let Some(d) = divisor {
                divide(o, d);
            }
        }))
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
        check_sizes(&all, out.len());
        #[cfg(target_arch = "x86_64")]
        if c.models.len() <= combine_bf16::MAX_MODELS
            && combine_bf16::available()
            && let Some(bits) = all
                .iter()
                .map(|input| input.bf16_bits(0, out.len()))
                .collect::<Option<Vec<_>>>()
        {
            combine_bf16::combine_bf16(c, bits[0], &bits[1..], out);
            return Ok(());
        }
        // Each block is decoded right before it is combined, so its inputs, votes and sums
        // never leave L1 (a whole chunk's rows spilled to L2 between the row kernels).
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(chunk, o)| {
                COMBINE.with_borrow_mut(|scratch| {
                    for (block, o) in o.chunks_mut(COMBINE_BLOCK).enumerate() {
                        let start = chunk * CHUNK + block * COMBINE_BLOCK;
                        let mut rows = Rows::new(scratch, all.len(), o.len());
                        for (input, row) in all.iter().zip(rows.inputs.chunks_mut(ROW)) {
                            input.decode_range(start, &mut row[..o.len()]);
                        }
                        combine_block(c, start, &mut rows, o);
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

/// One chunk of [`Cpu::weighted_sum`]: `o = Σ cᵢ·xᵢ` from 0, then divided by `divisor`.
fn weighted_sum_chunk(xs: &[&[f32]], coefficients: &[f32], divisor: Option<f32>, o: &mut [f32]) {
    let mut terms = xs.iter().zip(coefficients);
    match terms.next() {
        Some((x, &c)) => first_term(o, x, c),
        None => o.fill(0.0),
    }
    for (x, &c) in terms {
        add_term(o, x, c);
    }
    if let Some(d) = divisor {
        divide(o, d);
    }
}

/// [`Cpu::weighted_sum_encoded`] from bf16 inputs into bf16, the common case of an LLM merge,
/// in parallel tasks of 64 Ki elements.
fn weighted_sum_bf16(xs: &[&[u16]], cs: &[f32], divisor: Option<f32>, out: &mut [bf16]) -> u64 {
    const TASK: usize = 1 << 16;
    out.par_chunks_mut(TASK)
        .enumerate()
        .map(|(task, dst)| {
            let start = task * TASK;
            let xs: Vec<&[u16]> = xs.iter().map(|x| &x[start..start + dst.len()]).collect();
            weighted_sum_bf16_task(&xs, cs, divisor, dst)
        })
        .sum()
}

/// Elements [`weighted_sum_bf16_task`] sums at a time: eight AVX2 registers of f32, so the sums
/// stay in registers while every input is added, and nothing but the inputs and the encoded
/// output touches memory.
const LANE_GROUP: usize = 64;

#[multiversion::multiversion(targets = "simd")]
fn weighted_sum_bf16_task(
    xs: &[&[u16]],
    cs: &[f32],
    divisor: Option<f32>,
    out: &mut [bf16],
) -> u64 {
    let whole = out.len() / LANE_GROUP * LANE_GROUP;
    let (groups, tail) = out.split_at_mut(whole);
    let mut non_finite = 0;
    for (group, dst) in groups.chunks_exact_mut(LANE_GROUP).enumerate() {
        let dst: &mut [bf16; LANE_GROUP] = dst.try_into().expect("an exact chunk");
        non_finite += weighted_sum_bf16_group(xs, cs, divisor, group * LANE_GROUP, dst);
    }
    for (e, dst) in tail.iter_mut().enumerate() {
        let dst: &mut [bf16; 1] = std::slice::from_mut(dst).try_into().expect("one element");
        non_finite += weighted_sum_bf16_group(xs, cs, divisor, whole + e, dst);
    }
    u64::from(non_finite)
}

/// Elements `at..at + N` of the weighted sum, in the order the [`Backend`] docs give
/// (`0 + x₀·c₀`, then `+ xᵢ·cᵢ` in input order, then `÷ d`), rounded into `dst`; returns how
/// many are NaN or ±Inf.
#[inline(always)]
fn weighted_sum_bf16_group<const N: usize>(
    xs: &[&[u16]],
    cs: &[f32],
    divisor: Option<f32>,
    at: usize,
    dst: &mut [bf16; N],
) -> u32 {
    let widen = |x: u16| f32::from_bits(u32::from(x) << 16);
    let mut sum = [0f32; N];
    for (k, (x, &c)) in xs.iter().zip(cs).enumerate() {
        let x: &[u16; N] = x[at..at + N].try_into().expect("N elements");
        if k == 0 {
            for (s, &x) in sum.iter_mut().zip(x) {
                *s = 0.0 + widen(x) * c;
            }
        } else {
            for (s, &x) in sum.iter_mut().zip(x) {
                *s += widen(x) * c;
            }
        }
    }
    if let Some(d) = divisor {
        for s in &mut sum {
            *s /= d;
        }
    }
    let mut non_finite = 0;
    for (d, &s) in dst.iter_mut().zip(&sum) {
        *d = bf16::from_bits(crate::dtype::bf16_bits(s));
        non_finite += u32::from(!s.is_finite());
    }
    non_finite
}

/// `o += c·x` for elements `start..start + o.len()` of `input` (`o = 0 + c·x` for the
/// `first` term), decoded into `scratch` first. bf16 into bf16, the common case, takes
/// [`weighted_sum_bf16`] instead.
fn add_scaled(
    o: &mut [f32],
    input: &TensorView<'_>,
    start: usize,
    c: f32,
    first: bool,
    scratch: &mut [f32],
) {
    input.decode_range(start, scratch);
    if first {
        first_term(o, scratch, c);
    } else {
        add_term(o, scratch, c);
    }
}

/// `o = 0 + x·c`: the first term is added to 0.0 in the same pass that writes `o`, rather
/// than after a pass that zeroes it (`0.0 + x·c` is kept: it turns a −0.0 product into +0.0).
#[multiversion::multiversion(targets = "simd")]
fn first_term(o: &mut [f32], x: &[f32], c: f32) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = 0.0 + x * c;
    }
}

/// `o += x·c`, the product rounded before it is added.
#[multiversion::multiversion(targets = "simd")]
fn add_term(o: &mut [f32], x: &[f32], c: f32) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o += x * c;
    }
}

#[multiversion::multiversion(targets = "simd")]
fn divide(o: &mut [f32], d: f32) {
    for o in o {
        *o /= d;
    }
}

/// Elements per block of the combine: a multiple of 64 (whole mask words) small enough that
/// every row of a block fits in L1 with a few models.
const COMBINE_BLOCK: usize = 512;

/// The stride of the rows in the scratch: a block plus one cache line, so that rows do not sit
/// a multiple of 4 KiB apart (a load from one row then waited on every store to another: 4K
/// aliasing).
const ROW: usize = COMBINE_BLOCK + 16;

/// The per-element rows of one block of the combine pass (each `len` long): every loop runs
/// over contiguous f32 rows and vectorises.
struct Rows<'s> {
    /// The decoded base, then each model, `ROW` apart.
    inputs: &'s mut [f32],
    /// One row of votes (or task vectors) per model, `ROW` apart.
    deltas: &'s mut [f32],
    /// The sum of votes the sign is elected on.
    total: &'s mut [f32],
    /// The agreeing sum, or the plain weighted sum.
    mixed: &'s mut [f32],
    /// The agreeing weight, or the plain divisor.
    divisor: &'s mut [f32],
}

impl<'s> Rows<'s> {
    /// Carves the rows out of `scratch` (grown once per thread, reused by every block).
    fn new(scratch: &'s mut Vec<f32>, n_inputs: usize, len: usize) -> Self {
        scratch.resize((2 * n_inputs + 2) * ROW, 0.0);
        let (inputs, rest) = scratch.split_at_mut(n_inputs * ROW);
        let (deltas, rest) = rest.split_at_mut((n_inputs - 1) * ROW);
        let (total, rest) = rest.split_at_mut(ROW);
        let (mixed, divisor) = rest.split_at_mut(ROW);
        Self {
            inputs,
            deltas,
            total: &mut total[..len],
            mixed: &mut mixed[..len],
            divisor: &mut divisor[..len],
        }
    }
}

/// One block of [`Cpu::combine`], elements `start..start + o.len()`, from its decoded rows.
fn combine_block(c: &Combine<'_>, start: usize, rows: &mut Rows<'_>, o: &mut [f32]) {
    let len = o.len();
    let words_of = |i: usize| {
        c.masks[i]
            .as_ref()
            .map(|mask| &mask.words()[start / 64..(start + len).div_ceil(64)])
    };
    let Rows {
        inputs,
        deltas,
        total,
        mixed,
        divisor,
    } = rows;
    let b = &inputs[..len];
    // Model `i`'s decoded row (input 0 is the base).
    let model = |i: usize| &inputs[(i + 1) * ROW..(i + 1) * ROW + len];
    let n_models = c.models.len();
    if c.consensus {
        // Every value the election decides on goes through `agreement` (flushed, rounded at
        // the same points as the GPU kernel), see its module docs. The flushed base waits in
        // `mixed` until the agreement pass.
        flush_into(mixed, b);
        total.fill(0.0);
        for i in 0..n_models {
            let w = agreement::flush(c.weights[i]);
            let f = agreement::flush(c.factors[i]);
            let d = &mut deltas[i * ROW..i * ROW + len];
            vote_rows(d, total, model(i), mixed, words_of(i), f, w);
        }
        // A total of 0 (or a denormal) elects +1; zero votes never agree.
        mixed.fill(0.0);
        divisor.fill(0.0);
        for i in 0..n_models {
            let w = agreement::flush(c.weights[i]);
            let d = &deltas[i * ROW..i * ROW + len];
            add_agreeing(mixed, divisor, total, d, w);
        }
        zeros_to_one(divisor);
    } else {
        mixed.fill(0.0);
        for i in 0..n_models {
            add_task_vector(mixed, model(i), b, words_of(i), c.factors[i], c.weights[i]);
        }
        divisor.fill(c.plain_divisor);
    }
    finish(o, b, mixed, divisor, c.normalize, c.lambda);
}

/// `out = flush(b)` element by element.
#[multiversion::multiversion(targets = "simd")]
fn flush_into(out: &mut [f32], b: &[f32]) {
    for (o, &b) in out.iter_mut().zip(b) {
        *o = agreement::flush(b);
    }
}

/// One model's votes `d` (against the flushed base `fb`), added to the running `total`.
/// `words` is the chunk's keep-mask, if the model has one; `f` and `w` are flushed.
#[multiversion::multiversion(targets = "simd")]
fn vote_rows(
    d: &mut [f32],
    total: &mut [f32],
    x: &[f32],
    fb: &[f32],
    words: Option<&[u64]>,
    f: f32,
    w: f32,
) {
    let Some(words) = words else {
        for (((d, t), &x), &b) in d.iter_mut().zip(total.iter_mut()).zip(x).zip(fb) {
            *d = agreement::vote_of_flushed(x, b, 1.0, f, w);
            *t = agreement::accumulate(*t, *d);
        }
        return;
    };
    let groups = d
        .chunks_mut(32)
        .zip(total.chunks_mut(32))
        .zip(x.chunks(32))
        .zip(fb.chunks(32))
        .zip(halves(words));
    for ((((dg, tg), xg), bg), bits) in groups {
        let lanes = dg.iter_mut().zip(tg).zip(xg).zip(bg).zip(&LANE_BITS);
        for ((((d, t), &x), &b), &lane) in lanes {
            *d = agreement::vote_of_flushed(x, b, keep_factor(bits, lane), f, w);
            *t = agreement::accumulate(*t, *d);
        }
    }
}

/// Adds the votes `d` that agree with the sign `total` elects to `mixed`, and their (flushed)
/// weight `w` to `divisor`.
#[multiversion::multiversion(targets = "simd")]
fn add_agreeing(mixed: &mut [f32], divisor: &mut [f32], total: &[f32], d: &[f32], w: f32) {
    for (((m, q), &t), &d) in mixed.iter_mut().zip(divisor.iter_mut()).zip(total).zip(d) {
        let agree = agreement::agrees(d, agreement::elects_negative(t));
        *m += if agree { d } else { 0.0 };
        *q = agreement::accumulate(*q, if agree { w } else { 0.0 });
    }
}

/// Replaces every zero (no agreeing weight) by 1, as a select: the branch kept it scalar.
#[multiversion::multiversion(targets = "simd")]
fn zeros_to_one(divisor: &mut [f32]) {
    for q in divisor.iter_mut() {
        *q = if *q == 0.0 { 1.0 } else { *q };
    }
}

/// Adds one model's weighted task vector `w·((x − b)·keep·f)` to `mixed` (no election).
#[multiversion::multiversion(targets = "simd")]
fn add_task_vector(mixed: &mut [f32], x: &[f32], b: &[f32], words: Option<&[u64]>, f: f32, w: f32) {
    let Some(words) = words else {
        for ((m, &x), &b) in mixed.iter_mut().zip(x).zip(b) {
            *m += w * ((x - b) * f);
        }
        return;
    };
    // Multiplying by the mask bit as 0.0/1.0 keeps the loop branch-free.
    let groups = mixed
        .chunks_mut(32)
        .zip(x.chunks(32))
        .zip(b.chunks(32))
        .zip(halves(words));
    for (((mg, xg), bg), bits) in groups {
        for (((m, &x), &b), &lane) in mg.iter_mut().zip(xg).zip(bg).zip(&LANE_BITS) {
            *m += w * ((x - b) * keep_factor(bits, lane) * f);
        }
    }
}

/// `o = b + λ·(mixed / divisor)` (without the division unless normalizing).
#[multiversion::multiversion(targets = "simd")]
fn finish(o: &mut [f32], b: &[f32], mixed: &[f32], divisor: &[f32], normalize: bool, lambda: f32) {
    for (((o, &b), &m), &q) in o.iter_mut().zip(b).zip(mixed).zip(divisor) {
        let mut m = if normalize { m / q } else { m };
        if lambda != 1.0 {
            m *= lambda;
        }
        *o = b + m;
    }
}

/// Each lane's bit in a half-word of a keep-mask.
const LANE_BITS: [u32; 32] = {
    let mut bits = [0; 32];
    let mut lane = 0;
    while lane < 32 {
        bits[lane] = 1 << lane;
        lane += 1;
    }
    bits
};

/// A mask's words as 32-bit halves, low half first: 32 elements each.
fn halves(words: &[u64]) -> impl Iterator<Item = u32> + '_ {
    // Truncation takes the low half.
    words.iter().flat_map(|&w| [w as u32, (w >> 32) as u32])
}

/// The keep factor (0.0 or 1.0) of the lane whose bit is `lane` in `bits`. A test against a
/// constant per lane vectorises on every target (a per-lane variable shift does not on baseline
/// x86-64), and unlike a table of factors stored per word it leaves nothing for the loads to
/// wait on.
#[inline(always)]
fn keep_factor(bits: u32, lane: u32) -> f32 {
    if bits & lane == 0 { 0.0 } else { 1.0 }
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
    use super::*;
    use crate::checkpoint::TensorInfo;
    use crate::dtype::{Dtype, FloatType};
    use crate::merge::methods::test_util::{f32_bytes, info, view, xorshift};
    use crate::merge::select::BitMask;

    /// Values in [−1, 1) with some zeros, denormals and exact ties against the base sprinkled in.
    fn values(seed: u64, n: usize) -> Vec<f32> {
        xorshift(seed)
            .take(n)
            .map(|r| match r % 16 {
                0 => 0.0,
                1 => f32::from_bits((r >> 40) as u32 & 0x007f_ffff),
                2 => 0.5,
                _ => (r >> 40) as f32 / (1u64 << 23) as f32 - 1.0,
            })
            .collect()
    }

    /// `values` as a file stores them in `dtype`, rounded as the engine's output is.
    fn stored(dtype: Dtype, values: &[f32]) -> Vec<u8> {
        let ty = FloatType::from_dtype(dtype).expect("a float dtype");
        TensorBytes::encode(values.to_vec(), ty).as_bytes().to_vec()
    }

    /// The encoded weighted sum is the weighted sum rounded afterwards, bit for bit: for mixed
    /// bf16 (one stored at an odd byte offset, so decoded), f16 and f32 inputs summed block by
    /// block, and for aligned bf16 inputs only (summed in registers from the stored bits when
    /// the output is bf16 too); into each output type, normalised or not, over several rayon
    /// tasks and a partial last block; and it counts the non-finite results.
    #[test]
    fn weighted_sum_encoded_is_the_weighted_sum_rounded() {
        let n = (1 << 17) + 1000; // two whole tasks of 64 Ki and a partial block
        let mut first = values(1, n);
        first[7] = f32::INFINITY;
        first[n - 1] = f32::NAN;
        let columns = [
            (Dtype::BF16, 0, first),
            (Dtype::BF16, 1, values(2, n)), // stored one byte into its buffer
            (Dtype::F16, 0, values(3, n)),
            (Dtype::F32, 0, values(4, n)),
            (Dtype::BF16, 0, values(5, n)),
        ];
        let buffers: Vec<Vec<u8>> = columns
            .iter()
            .map(|(dtype, offset, v)| {
                let mut bytes = vec![0u8; *offset];
                bytes.extend(stored(*dtype, v));
                bytes
            })
            .collect();
        let infos: Vec<TensorInfo> = columns
            .iter()
            .map(|(dtype, _, _)| TensorInfo {
                dtype: *dtype,
                end: n * dtype.bitsize() / 8,
                ..info("x", n)
            })
            .collect();
        let inputs: Vec<TensorView<'_>> = infos
            .iter()
            .zip(&buffers)
            .zip(&columns)
            .map(|((info, bytes), (_, offset, _))| view(info, &bytes[*offset..]))
            .collect();
        // Every kind of input (summed block by block), and aligned bf16 only (summed in
        // registers straight from the stored bits when the output is bf16 too).
        let bf16_only = [inputs[0].clone(), inputs[4].clone()];
        let sets = [
            (&inputs[..4], [0.4, -0.5, 0.3, 0.2]),
            (&bf16_only[..], [0.4, -0.5, 0.0, 0.0]),
        ];
        for ((inputs, coefficients), divisor) in sets
            .iter()
            .flat_map(|set| [(set, None), (set, Some(0.4f32))])
        {
            let coefficients = &coefficients[..inputs.len()];
            let mut sum = vec![0.0; n];
            Cpu.weighted_sum(inputs, coefficients, divisor, &mut sum)
                .unwrap();
            for ty in [FloatType::BF16, FloatType::F16, FloatType::F32] {
                let (expected, expected_count) = TensorBytes::encode_reusing(&sum, ty, None);
                // A reused buffer of the wrong contents: every element must be written.
                let mut out = TensorBytes::encode(vec![9.0; n], ty);
                let count = Cpu
                    .weighted_sum_encoded(inputs, coefficients, divisor, &mut Vec::new(), &mut out)
                    .unwrap();
                assert!(
                    out.as_bytes() == expected.as_bytes(),
                    "{ty:?}, divisor {divisor:?}"
                );
                assert_eq!((count, expected_count), (2, 2), "{ty:?}");
            }
        }
    }

    /// Element `e` of [`Cpu::combine`] computed on its own, as the `Backend` docs define it.
    fn combine_reference(c: &Combine<'_>, x: &[Vec<f32>], b: f32, e: usize) -> f32 {
        let keep = |i: usize| {
            c.masks[i]
                .as_ref()
                .map_or(1.0, |mask| if mask.get(e) { 1.0 } else { 0.0 })
        };
        let (m, q) = if c.consensus {
            let votes: Vec<f32> = (0..x.len())
                .map(|i| agreement::vote(x[i][e], b, keep(i), c.factors[i], c.weights[i]))
                .collect();
            let total = votes.iter().fold(0.0, |t, &d| agreement::accumulate(t, d));
            let negative = agreement::elects_negative(total);
            let (mut m, mut q) = (0.0, 0.0);
            for (&d, &w) in votes.iter().zip(c.weights) {
                let agree = agreement::agrees(d, negative);
                m += if agree { d } else { 0.0 };
                q = agreement::accumulate(q, if agree { agreement::flush(w) } else { 0.0 });
            }
            (m, if q == 0.0 { 1.0 } else { q })
        } else {
            let m = (0..x.len()).fold(0.0, |m, i| {
                m + c.weights[i] * ((x[i][e] - b) * keep(i) * c.factors[i])
            });
            (m, c.plain_divisor)
        };
        let mut m = if c.normalize { m / q } else { m };
        if c.lambda != 1.0 {
            m *= c.lambda;
        }
        b + m
    }

    #[test]
    fn combine_matches_the_per_element_definition() {
        // Two whole chunks and an odd tail, three models, one without a mask.
        let n = 2 * CHUNK + 77;
        let base = values(1, n);
        let x: Vec<Vec<f32>> = (2..5).map(|seed| values(seed, n)).collect();
        let masks: Vec<Option<BitMask>> = [None, Some(6), Some(7)]
            .into_iter()
            .map(|seed| {
                seed.map(|s| BitMask::from_words(xorshift(s).take(n.div_ceil(64)).collect(), n))
            })
            .collect();
        // Non-finite inputs, which bf16 holds too.
        let mut base = base;
        let mut x = x;
        base[13] = f32::NEG_INFINITY;
        x[1][5] = f32::INFINITY;
        x[2][9] = f32::NAN;
        x[0][CHUNK + 3] = f32::NEG_INFINITY;
        combine_matches_the_definition_on(Dtype::F32, &base, &x, &masks);
        // bf16 inputs take the kernel that widens them in registers.
        let round =
            |v: &Vec<f32>| -> Vec<f32> { v.iter().map(|&v| bf16::from_f32(v).to_f32()).collect() };
        let x: Vec<Vec<f32>> = x.iter().map(round).collect();
        combine_matches_the_definition_on(Dtype::BF16, &round(&base), &x, &masks);
    }

    /// [`Cpu::combine`] of `base` and the models `x`, stored as `dtype` (which holds them
    /// exactly), against [`combine_reference`] element by element.
    fn combine_matches_the_definition_on(
        dtype: Dtype,
        base: &[f32],
        x: &[Vec<f32>],
        masks: &[Option<BitMask>],
    ) {
        let n = base.len();
        let infos: Vec<_> = (0..4)
            .map(|i| TensorInfo {
                dtype,
                end: n * dtype.bitsize() / 8,
                ..info(&format!("t{i}"), n)
            })
            .collect();
        let bytes: Vec<Vec<u8>> = std::iter::once(base)
            .chain(x.iter().map(Vec::as_slice))
            .map(|v| stored(dtype, v))
            .collect();
        let views: Vec<_> = infos.iter().zip(&bytes).map(|(i, b)| view(i, b)).collect();
        for (consensus, normalize, lambda) in
            [(true, true, 1.0), (true, false, 0.7), (false, true, 1.3)]
        {
            let c = Combine {
                base: views[0].clone(),
                models: &views[1..],
                weights: &[0.5, 0.3, 1e-39],
                factors: &[1.0, 2.5, 0.4],
                masks,
                consensus,
                normalize,
                lambda,
                plain_divisor: 0.8,
            };
            let mut out = vec![0f32; n];
            Cpu.combine(&c, &mut out)
                .expect("the CPU backend does not fail");
            for (e, &o) in out.iter().enumerate() {
                let expected = combine_reference(&c, x, base[e], e);
                assert_eq!(
                    o.to_bits(),
                    expected.to_bits(),
                    "{dtype:?} element {e}, consensus {consensus}"
                );
            }
        }
    }

    #[test]
    fn weighted_sum_adds_in_order_from_zero() {
        let n = CHUNK + 5;
        let x: Vec<Vec<f32>> = (1..4).map(|seed| values(seed, n)).collect();
        let infos: Vec<_> = (0..3).map(|i| info(&format!("t{i}"), n)).collect();
        let bytes: Vec<Vec<u8>> = x.iter().map(|v| f32_bytes(v)).collect();
        let views: Vec<_> = infos.iter().zip(&bytes).map(|(i, b)| view(i, b)).collect();
        // A −0.0 product must come out as +0.0, as it does added to a zeroed output.
        let coefficients = [-0.0, 0.3, 0.2];
        for divisor in [None, Some(0.7)] {
            let mut out = vec![f32::NAN; n];
            Cpu.weighted_sum(&views, &coefficients, divisor, &mut out)
                .expect("the CPU backend does not fail");
            for (e, &o) in out.iter().enumerate() {
                let sum = x
                    .iter()
                    .zip(coefficients)
                    .fold(0.0, |s, (x, c)| s + x[e] * c);
                let expected = divisor.map_or(sum, |d| sum / d);
                assert_eq!(o.to_bits(), expected.to_bits(), "element {e}");
            }
        }
    }

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
            let keep = halves(&[word])
                .flat_map(|bits| LANE_BITS.map(|lane| keep_factor(bits, lane)))
                .collect::<Vec<f32>>();
            assert_eq!(keep.len(), 64);
            for (k, &f) in keep.iter().enumerate() {
                assert_eq!(f, ((word >> k) & 1) as f32, "{word:#x} bit {k}");
            }
        }
    }
}
