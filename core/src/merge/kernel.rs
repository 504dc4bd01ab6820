//! CPU building blocks shared by the elementwise methods.
//!
//! Inputs are decoded from their stored dtype chunk by chunk, straight out of the memory map,
//! into small per-thread buffers. A whole input tensor is never materialised in `f32`, so a
//! merge of N models holds only the output tensor plus N × `CHUNK` floats per thread.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::checkpoint::TensorView;

/// Elements per work item: 16 Ki f32 = 64 KiB per input, small enough that every input's chunk
/// stays in L2 while the output chunk is computed, large enough to amortise rayon's overhead.
pub const CHUNK: usize = 16 * 1024;

thread_local! {
    /// Decoded input chunks of the current work item, per worker thread.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f(inputs_chunk, out_chunk)` over `out` in parallel chunks, where `inputs_chunk[k]` is
/// the same element range of `inputs[k]` decoded to `f32`. `f` must not use rayon itself: it
/// runs while this thread's scratch buffer is borrowed.
pub fn zip_map<F>(inputs: &[TensorView<'_>], out: &mut [f32], f: F)
where
    F: Fn(&[&[f32]], &mut [f32]) + Sync + Send,
{
    for input in inputs {
        assert_eq!(
            input.numel(),
            out.len(),
            "input `{}` does not match the output size",
            input.info.name
        );
    }
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out_chunk)| {
            SCRATCH.with_borrow_mut(|scratch| {
                // Grows once per thread and is reused by every later chunk and tensor: allocating it
                // per chunk made the kernel fault in and zero fresh pages all the time.
                if scratch.len() < inputs.len() * CHUNK {
                    scratch.resize(inputs.len() * CHUNK, 0.0);
                }
                let start = chunk * CHUNK;
                let len = out_chunk.len();
                for (input, buffer) in inputs.iter().zip(scratch.chunks_mut(CHUNK)) {
                    input.decode_range(start, &mut buffer[..len]);
                }
                let views: Vec<&[f32]> = scratch
                    .chunks(CHUNK)
                    .take(inputs.len())
                    .map(|b| &b[..len])
                    .collect();
                f(&views, out_chunk);
            });
        });
}
