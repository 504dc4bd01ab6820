//! A base checkpoint with a LoRA adapter applied: each targeted tensor is θ_b + Δ, computed in
//! f32 when it is read and kept in a small cache until [`Checkpoint::release`].
//!
//! [`Checkpoint::release`]: crate::Checkpoint::release

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use faer::MatRef;

use crate::checkpoint::{TensorInfo, TensorView};

/// Computed tensors kept at once. A merge reads each tensor a few times in a row (a check,
/// then the merge), so a handful covers it while bounding memory to a few tensors.
const CACHED_TENSORS: usize = 8;

/// One adapted tensor: where its base values and factors are.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The base tensor as stored (its dtype, its bytes in a base shard).
    pub stored: TensorInfo,
    /// `A` and `B` in the adapter shard.
    pub a: TensorInfo,
    pub b: TensorInfo,
    /// α/r or α/√r.
    pub scale: f32,
    /// Δ is `(B·A)ᵀ`: `fan_in_fan_out` layers (GPT-2's Conv1D) and embeddings.
    pub transpose: bool,
}

/// The adapter part of a [`crate::Checkpoint`].
#[derive(Debug)]
pub struct Adapted {
    /// The adapter weights file.
    pub(crate) file: PathBuf,
    /// The adapter file's index among the checkpoint's shards.
    pub(crate) shard: usize,
    pub(crate) rank: usize,
    /// By index into the checkpoint's tensors.
    pub(crate) targets: HashMap<usize, Target>,
    cache: Mutex<VecDeque<(usize, Arc<[u8]>)>>,
}

impl Adapted {
    pub(crate) fn new(
        file: PathBuf,
        shard: usize,
        rank: usize,
        targets: HashMap<usize, Target>,
    ) -> Self {
        Self {
            file,
            shard,
            rank,
            targets,
            cache: Mutex::new(VecDeque::new()),
        }
    }

    /// The adapter weights file.
    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    /// The adapter's rank `r` (its config's; `rank_pattern` may lower it per module).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many base tensors the adapter changes.
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    /// A hash of what the adapter's config decides (each target's scale and orientation), so
    /// a checkpoint's fingerprint changes with `lora_alpha` as with the factors.
    pub(crate) fn scales_fingerprint(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut targets: Vec<_> = self.targets.iter().collect();
        targets.sort_by_key(|(i, _)| **i);
        for (index, target) in targets {
            (index, target.scale.to_bits(), target.transpose).hash(&mut hasher);
        }
        hasher.finish()
    }

    pub(crate) fn target(&self, index: usize) -> Option<&Target> {
        self.targets.get(&index)
    }

    /// θ_b + Δ of the tensor at `index` as f32 bytes; `shard_bytes` gives a shard's mapped file.
    pub(crate) fn tensor<'s>(
        &self,
        index: usize,
        shard_bytes: impl Fn(usize) -> &'s [u8],
    ) -> Option<Arc<[u8]>> {
        let target = self.targets.get(&index)?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, data)) = cache.iter().find(|(i, _)| *i == index) {
            return Some(Arc::clone(data));
        }
        let data: Arc<[u8]> = bytemuck::cast_slice(&compute(target, shard_bytes)).into();
        if cache.len() == CACHED_TENSORS {
            cache.pop_front();
        }
        cache.push_back((index, Arc::clone(&data)));
        Some(data)
    }

    /// Drops the computed tensor at `index` (views still holding it keep it alive).
    pub(crate) fn release(&self, index: usize) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|(i, _)| *i != index);
    }
}

fn decode<'s>(info: &TensorInfo, shard_bytes: &impl Fn(usize) -> &'s [u8]) -> Vec<f32> {
    TensorView::new(info, &shard_bytes(info.shard)[info.start..info.end]).to_f32_vec()
}

/// θ_b + scale·B·A (transposed when asked), as PEFT's `merge` computes it in f32.
fn compute<'s>(target: &Target, shard_bytes: impl Fn(usize) -> &'s [u8]) -> Vec<f32> {
    let mut values = decode(&target.stored, &shard_bytes);
    let a = decode(&target.a, &shard_bytes);
    let b = decode(&target.b, &shard_bytes);
    let (rank, cols) = (target.a.shape[0], target.a.shape[1]);
    let rows = target.b.shape[0];
    let a = MatRef::from_row_major_slice(&a, rank, cols);
    let b = MatRef::from_row_major_slice(&b, rows, rank);
    let delta = b * a;
    let scale = target.scale;
    // The base tensor is (rows, cols), or (cols, rows) when Δ is transposed; row-major.
    // (`max(1)`: an empty tensor has no rows to walk.)
    let row_len = if target.transpose { rows } else { cols };
    for (i, row) in values.chunks_exact_mut(row_len.max(1)).enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            let d = if target.transpose {
                delta[(j, i)]
            } else {
                delta[(i, j)]
            };
            *v += d * scale;
        }
    }
    values
}
