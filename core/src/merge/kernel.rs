//! CPU building blocks shared by the methods.
//!
//! Inputs are decoded from their stored dtype chunk by chunk, straight out of the memory map,
//! into small per-thread buffers. A whole input tensor is never materialised in `f32`: a pass
//! over N inputs holds N × `CHUNK` floats per thread. Reductions are computed per chunk and
//! summed in chunk order, so results do not depend on the number of threads.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::checkpoint::TensorView;

/// Elements per work item: 16 Ki f32 = 64 KiB per input, small enough that every input's chunk
/// stays in L2 while the output chunk is computed, large enough to amortise rayon's overhead.
/// A multiple of 64, so each chunk owns whole words of a bit mask.
pub const CHUNK: usize = 16 * 1024;

thread_local! {
    /// Decoded input chunks of the current work item, per worker thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn check_sizes(inputs: &[TensorView<'_>], n: usize) {
    for input in inputs {
        assert_eq!(
            input.numel(),
            n,
            "input `{}` does not match the output size",
            input.info.name
        );
    }
}

/// Decodes elements `start..start + len` of every input and calls `f` with them.
/// Decodes elements `start..start + len` of every input and calls `f` with them (for passes
/// that write something other than one value per element).
pub fn with_decoded<R>(
    inputs: &[TensorView<'_>],
    start: usize,
    len: usize,
    f: impl FnOnce(&[&[f32]]) -> R,
) -> R {
    // A block is a chunk, or one row when a row is longer than a chunk (zip_rows).
    let stride = CHUNK.max(len);
    SCRATCH.with_borrow_mut(|scratch| {
        // Grows once per thread and is reused by every later chunk and tensor: allocating it
        // per chunk made the kernel fault in and zero fresh pages all the time.
        if scratch.len() < inputs.len() * stride {
            scratch.resize(inputs.len() * stride, 0.0);
        }
        for (input, buffer) in inputs.iter().zip(scratch.chunks_mut(stride)) {
            input.decode_range(start, &mut buffer[..len]);
        }
        let views: Vec<&[f32]> = scratch
            .chunks(stride)
            .take(inputs.len())
            .map(|b| &b[..len])
            .collect();
        f(&views)
    })
}

/// Runs `f(start, inputs_chunk, out_chunk)` over `out` in parallel chunks, where
/// `inputs_chunk[k]` is elements `start..start + out_chunk.len()` of `inputs[k]` decoded to
/// `f32`. `f` must not use rayon itself: it runs while this thread's scratch is borrowed.
pub fn zip_map<F>(inputs: &[TensorView<'_>], out: &mut [f32], f: F)
where
    F: Fn(usize, &[&[f32]], &mut [f32]) + Sync + Send,
{
    zip_fill(inputs, out, f);
}

/// [`zip_map`] into an output of any element type (keys, ranks, flags).
pub fn zip_fill<T, F>(inputs: &[TensorView<'_>], out: &mut [T], f: F)
where
    T: Send,
    F: Fn(usize, &[&[f32]], &mut [T]) + Sync + Send,
{
    check_sizes(inputs, out.len());
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out_chunk)| {
            let start = chunk * CHUNK;
            with_decoded(inputs, start, out_chunk.len(), |views| {
                f(start, views, out_chunk);
            });
        });
}

/// Like [`zip_map`], but every block holds whole rows of `row_len` elements, so `f` can treat
/// each row as a vector (methods with per-row variants: nuslerp, model_stock, arcee_fusion). A
/// row longer than [`CHUNK`] is a block of its own.
pub fn zip_rows<F>(inputs: &[TensorView<'_>], out: &mut [f32], row_len: usize, f: F)
where
    F: Fn(&[&[f32]], &mut [f32]) + Sync + Send,
{
    check_sizes(inputs, out.len());
    let row_len = row_len.max(1);
    let block = (CHUNK / row_len).max(1) * row_len;
    out.par_chunks_mut(block)
        .enumerate()
        .for_each(|(index, out_block)| {
            with_decoded(inputs, index * block, out_block.len(), |views| {
                f(views, out_block);
            });
        });
}

/// The Gram matrix `G[i][j] = <v_i, v_j>` (row-major, N × N) of the inputs, or of their
/// differences from `base` when one is given, accumulated in f64 chunk by chunk.
pub fn gram(inputs: &[TensorView<'_>], base: Option<TensorView<'_>>) -> Vec<f64> {
    let k = inputs.len();
    let n = base.as_ref().map_or_else(
        || inputs.first().map_or(0, TensorView::numel),
        TensorView::numel,
    );
    let mut all = Vec::with_capacity(k + 1);
    let offset = usize::from(base.is_some());
    all.extend(base);
    all.extend(inputs.iter().cloned());
    let partials = zip_chunks(&all, n, |_, xs| {
        let mut g = vec![0f64; k * k];
        let mut row = vec![0f32; k];
        for e in 0..xs[0].len() {
            for (i, v) in row.iter_mut().enumerate() {
                let x = xs[offset + i][e];
                *v = if offset == 1 { x - xs[0][e] } else { x };
            }
            for i in 0..k {
                for j in i..k {
                    g[i * k + j] += f64::from(row[i]) * f64::from(row[j]);
                }
            }
        }
        g
    });
    let mut total = vec![0f64; k * k];
    for part in partials {
        for (t, p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    for i in 0..k {
        for j in 0..i {
            total[i * k + j] = total[j * k + i];
        }
    }
    total
}

/// Maps every chunk of `n` elements (inputs decoded as in [`zip_map`]) to a value, in parallel;
/// the values come back in chunk order, so folding them sequentially is deterministic.
pub fn zip_chunks<T, F>(inputs: &[TensorView<'_>], n: usize, f: F) -> Vec<T>
where
    T: Send,
    F: Fn(usize, &[&[f32]]) -> T + Sync + Send,
{
    check_sizes(inputs, n);
    (0..n.div_ceil(CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let start = chunk * CHUNK;
            let len = CHUNK.min(n - start);
            with_decoded(inputs, start, len, |views| f(start, views))
        })
        .collect()
}

/// Decodes a whole input into `out` (resized to fit), in parallel. For methods that need random
/// access to a tensor; streaming methods should use [`zip_map`].
pub fn decode_all(input: &TensorView<'_>, out: &mut Vec<f32>) {
    out.resize(input.numel(), 0.0);
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, o)| input.decode_range(chunk * CHUNK, o));
}

/// `sum` of f64 values in order (used after [`zip_chunks`]).
pub fn sum_in_order(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::methods::test_util::{f32_bytes, info, view};

    #[test]
    fn rows_longer_than_a_chunk_are_whole_blocks() {
        let row = CHUNK + 3;
        let values: Vec<f32> = (0..2 * row).map(|i| i as f32).collect();
        let (info, bytes) = (info("w", values.len()), f32_bytes(&values));
        let input = [view(&info, &bytes)];
        let mut out = vec![0.0; values.len()];
        zip_rows(&input, &mut out, row, |xs, o| {
            assert_eq!(o.len() % row, 0, "a block holds whole rows");
            for (r, o_row) in o.chunks_mut(row).enumerate() {
                // The row reversed: each element depends on the whole row being there.
                for (e, o) in o_row.iter_mut().enumerate() {
                    *o = xs[0][r * row + row - 1 - e];
                }
            }
        });
        let expected: Vec<f32> = values
            .chunks(row)
            .flat_map(|r| r.iter().rev().copied())
            .collect();
        assert_eq!(out, expected);
    }
}
