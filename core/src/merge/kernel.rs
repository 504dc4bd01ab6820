//! CPU building blocks shared by the elementwise methods.
//!
//! Inputs are decoded from their stored dtype chunk by chunk, straight out of the memory map,
//! into small per-thread buffers. A whole input tensor is never materialised in `f32`, so a
//! merge of N models holds only the output tensor plus N × `CHUNK` floats per thread.

use rayon::prelude::*;

use crate::checkpoint::TensorView;

/// Elements per work item: 16 Ki f32 = 64 KiB per input, small enough that every input's chunk
/// stays in L2 while the output chunk is computed, large enough to amortise rayon's overhead.
pub const CHUNK: usize = 16 * 1024;

/// Runs `f(inputs_chunk, out_chunk)` over `out` in parallel chunks, where `inputs_chunk[k]` is
/// the same element range of `inputs[k]` decoded to `f32`.
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
    out.par_chunks_mut(CHUNK).enumerate().for_each_init(
        || vec![0f32; inputs.len() * CHUNK],
        |scratch, (chunk, out_chunk)| {
            let start = chunk * CHUNK;
            let len = out_chunk.len();
            for (input, buffer) in inputs.iter().zip(scratch.chunks_mut(CHUNK)) {
                input.decode_range(start, &mut buffer[..len]);
            }
            let views: Vec<&[f32]> = scratch.chunks(CHUNK).map(|b| &b[..len]).collect();
            f(&views, out_chunk);
        },
    );
}
