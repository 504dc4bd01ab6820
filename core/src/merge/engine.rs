//! Runs a [`MergePlan`]: tensors stream through the method in the reference's file order and
//! into the export, with a bounded number in flight.
//!
//! The calling thread computes (on the CPU, rayon parallelises inside each tensor; on a GPU
//! backend, the method's element-wise work runs there) while a named writer
//! thread appends finished tensors to the output, so disk writes overlap the next tensor's
//! reads and arithmetic. The channel between them holds one tensor, so only a few output-sized
//! buffers exist at once (the f32 work buffer, one queued, one being written, and written ones
//! waiting to be reused), whatever the model's size. Inputs are memory-mapped: a helper thread
//! reads the next tensors' inputs (within a byte window) while the current one is computed,
//! and each tensor's input pages are released from the process once it is done.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, channel, sync_channel};

use super::plan::{MergePlan, PlanError, TaskAction, TensorTask};
use super::{MethodError, MethodInputs};
use crate::backend::Backend;
use crate::checkpoint::{Checkpoint, READ_AHEAD_BYTES, ReadAhead};
use crate::dtype::{FloatType, TensorBytes};
use crate::export::{Export, ExportError, ExportOptions, ExportSummary, OutputTensor, sidecar};
use crate::job::{Cancelled, Job};
use crate::nonfinite::{NonFinite, NonFiniteLog};

/// Elements per slab when an element-wise method merges a large tensor in pieces: 1 MiB of
/// f32 results, which stay in cache until they are encoded into the output (merging the whole
/// tensor first wrote every result to memory and read it back to encode it).
const SLAB: usize = 256 * 1024;

/// The mergescope version recorded in every output.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a merge stopped. Nothing is left in the output folder in any case.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("tensor `{tensor}`: {method}: {message}")]
    Method {
        tensor: String,
        method: String,
        message: String,
    },
    #[error(
        "tensor `{tensor}` is {dtype}, which mergescope copies but does not compute on, and {member} \
         holds different values than {reference}; merge only F32/F16/BF16 tensors or make them equal"
    )]
    CopyDiffers {
        tensor: String,
        dtype: String,
        member: String,
        reference: String,
    },
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
    /// An input file changed on disk during the merge.
    #[error(transparent)]
    Input(#[from] crate::checkpoint::CheckpointError),
}

/// Runs the plan and writes the merged model (see the module docs for the data path).
pub fn execute(
    plan: &MergePlan,
    options: &ExportOptions,
    backend: &dyn Backend,
    job: &Job,
) -> Result<ExportSummary, MergeError> {
    let tensors: Vec<OutputTensor> = plan
        .tasks
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
        })
        .collect();
    let mut export = Export::begin(options, tensors, output_metadata(plan), &plan.input_paths())?;
    copy_sidecars(plan, &mut export)?;
    job.progress.start_stage(
        format!("merging ({})", plan.method.spec().name),
        export.data_bytes(),
    );
    stream(plan, backend, job, |bytes| Ok(export.write_next(bytes)?))?;
    job.check_cancelled()?;
    job.progress.set_stage("finishing");
    Ok(export.finish()?)
}

/// Computes every tensor of `plan` in the plan's order and hands each one's bytes, in its
/// output type, to `sink`, which runs on a thread of its own so that its I/O overlaps the next
/// tensor's reads and arithmetic. [`execute`] sinks into the export; the merge benchmark sinks
/// into nothing, to measure the engine apart from the disk it writes to. Each tensor counts
/// its bytes as done on `job`'s progress once sunk.
pub fn stream(
    plan: &MergePlan,
    backend: &dyn Backend,
    job: &Job,
    mut sink: impl FnMut(&[u8]) -> Result<(), MergeError> + Send,
) -> Result<(), MergeError> {
    let (sender, receiver) = sync_channel::<TensorBytes>(1);
    let (recycle, returned) = channel::<TensorBytes>();
    let progress = job.progress.clone();
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new()
            .name("mergescope-writer".to_owned())
            .spawn_scoped(scope, move || -> Result<(), MergeError> {
                for data in receiver {
                    let bytes = data.as_bytes();
                    sink(bytes)?;
                    progress.add_done(bytes.len() as u64);
                    // The compute side may already be gone (cancelled); then the buffer is freed.
                    let _ = recycle.send(data);
                }
                Ok(())
            })
            .map_err(MergeError::Thread)?;

        let steps = plan
            .tasks
            .iter()
            .map(|task| {
                let mut step = Vec::new();
                for_each_input(plan, task, |c, i| step.push((c, i)));
                step
            })
            .collect();
        let ahead = ReadAhead::new(steps, READ_AHEAD_BYTES);
        let computed = ahead.with_helper(|| -> Result<(), MergeError> {
            let mut buffers = Buffers::new(returned);
            for (i, task) in plan.tasks.iter().enumerate() {
                job.check_cancelled()?;
                ahead.wait_loaded(i);
                // Before: a file changed since planning is not read at all. After: one that
                // changed (or shrank, faulting the map) while this tensor was computed does not
                // get its tensor written.
                verify_inputs(plan, task)?;
                let data = compute(plan, task, backend, &mut buffers, &job.non_finite)?;
                verify_inputs(plan, task)?;
                for_each_input(plan, task, Checkpoint::release);
                ahead.done(i);
                if sender.send(data).is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Ok(())
        });
        drop(sender);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        computed?;
        written
    })
}

/// Bytes of idle output buffers worth keeping so that a tensor finds one already its length:
/// a model's layers repeat a handful of shapes, and with a buffer for each, a buffer is
/// neither grown (zero-filling the growth) nor replaced (faulting in fresh pages) after the
/// first layer.
const SPARE_BYTES: usize = 256 << 20;

/// Memory reused from tensor to tensor. Allocating fresh outputs for every tensor made the
/// kernel fault in and zero new pages each time (826 K page faults merging four 1.67 GB models,
/// 200 K with reuse). Output buffers come back from the writer once written; the bounded queue
/// and [`SPARE_BYTES`] bound how many exist.
struct Buffers {
    work: Vec<f32>,
    returned: Receiver<TensorBytes>,
    spare: Vec<TensorBytes>,
}

impl Buffers {
    fn new(returned: Receiver<TensorBytes>) -> Self {
        Self {
            work: Vec::new(),
            returned,
            spare: Vec::new(),
        }
    }

    /// A written buffer of type `ty` to encode `len` values into, or `None` for a fresh one.
    fn take(&mut self, ty: FloatType, len: usize) -> Option<TensorBytes> {
        self.spare.extend(
            self.returned
                .try_iter()
                .filter(|b| b.float_type().is_some()),
        );
        // The fit that costs least: the shortest buffer already `len` values long (shrinking
        // is free); else a fresh buffer while the idle ones are few; else the longest that
        // can grow in place (its growth is zero-filled, a pass over memory: picking by
        // capacity alone made a layer's norms shrink the buffer its MLP then grew again, 4 %
        // of a warm linear merge in `memset`); else the largest, replaced by fresh pages.
        let typed = || {
            self.spare
                .iter()
                .enumerate()
                .filter(|(_, b)| b.float_type() == Some(ty))
        };
        let idle: usize = self
            .spare
            .iter()
            .map(|b| b.capacity() * b.float_type().map_or(1, FloatType::size_bytes))
            .sum();
        let fresh_fits = idle + len * ty.size_bytes() <= SPARE_BYTES;
        let (index, _) = typed()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .or_else(|| {
                if fresh_fits {
                    return None;
                }
                typed()
                    .filter(|(_, b)| b.capacity() >= len)
                    .max_by_key(|(_, b)| b.len())
                    .or_else(|| typed().max_by_key(|(_, b)| b.capacity()))
            })?;
        Some(self.spare.swap_remove(index))
    }
}

fn compute<'a>(
    plan: &'a MergePlan,
    task: &'a TensorTask,
    backend: &dyn Backend,
    buffers: &mut Buffers,
    non_finite: &NonFiniteLog,
) -> Result<TensorBytes, MergeError> {
    let family = &plan.family;
    // Views show the task's shape: fewer leading rows when vocabularies were truncated, every
    // input's rows permuted into the output vocabulary when the recipe aligns them.
    let inputs = plan
        .inputs_of(task)
        .map_err(|message| method_error(plan, task, MethodError(message)))?;
    let (base, models) = inputs.views(&task.shape);
    match &task.action {
        TaskAction::Merge { out, params } => {
            let inputs = MethodInputs {
                tensor: &task.name,
                seed: plan.random_seed,
                base,
                models,
                params,
            };
            let mut bytes =
                TensorBytes::for_encoding(*out, task.numel(), buffers.take(*out, task.numel()));
            if let Some(count) =
                plan.method
                    .merge_encoded(backend, &inputs, &mut buffers.work, &mut bytes)
            {
                let count = count.map_err(|e| method_error(plan, task, e))?;
                note_non_finite(plan, task, count, non_finite);
                return Ok(bytes);
            }
            let mut count = 0;
            // Element-wise methods, and those whose last pass is element-wise, hand their
            // results over slab by slab, encoded here while in cache; the others in one piece.
            let slab = if backend.prefers_whole_tensors() {
                usize::MAX / 64 * 64
            } else {
                SLAB
            };
            plan.method
                .merge_slabs(
                    backend,
                    &inputs,
                    slab,
                    &mut buffers.work,
                    &mut |start, values| count += bytes.encode_at(start, values),
                )
                .map_err(|e| method_error(plan, task, e))?;
            note_non_finite(plan, task, count, non_finite);
            Ok(bytes)
        }
        TaskAction::Convert { out } => {
            let single = base
                .or_else(|| models.first().cloned())
                .expect("a task has inputs");
            let values = &mut buffers.work;
            values.resize(task.numel(), 0.0);
            crate::merge::kernel::zip_map(&[single], values, |_, xs, o| o.copy_from_slice(xs[0]));
            let reuse = buffers.take(*out, task.numel());
            let (bytes, count) = TensorBytes::encode_reusing(&buffers.work, *out, reuse);
            note_non_finite(plan, task, count, non_finite);
            Ok(bytes)
        }
        TaskAction::CopyIdentical => {
            let reference = family
                .reference()
                .expect("a planned family has a reference");
            let first = base
                .clone()
                .or_else(|| models.first().cloned())
                .expect("a task has inputs");
            let labelled = family.base.iter().zip(&base).chain(
                task.models
                    .iter()
                    .map(|&(m, _)| &family.models[m])
                    .zip(&models),
            );
            for (member, view) in labelled {
                if view.bytes != first.bytes {
                    return Err(MergeError::CopyDiffers {
                        tensor: task.name.clone(),
                        dtype: crate::family::dtype_name(task.dtype),
                        member: member.label.clone(),
                        reference: reference.label.clone(),
                    });
                }
            }
            Ok(TensorBytes::Raw(first.bytes.to_vec()))
        }
    }
}

fn method_error(plan: &MergePlan, task: &TensorTask, error: MethodError) -> MergeError {
    MergeError::Method {
        tensor: task.name.clone(),
        method: plan.method.spec().name.to_owned(),
        message: error.0,
    }
}

/// Records which inputs of `task` held NaN or ±Inf when its result holds `in_result` of them
/// (counted while encoding it). The inputs are scanned only then, which is rare.
fn note_non_finite(plan: &MergePlan, task: &TensorTask, in_result: u64, log: &NonFiniteLog) {
    if in_result == 0 {
        return;
    }
    let family = &plan.family;
    let mut found = false;
    let members = family
        .base
        .as_ref()
        .zip(task.base)
        .into_iter()
        .chain(task.models.iter().map(|&(m, i)| (&family.models[m], i)));
    for (member, index) in members {
        let count = crate::nonfinite::count_view(member.checkpoint.view(index));
        if count > 0 {
            found = true;
            log.record(NonFinite {
                tensor: task.name.clone(),
                member: member.label.clone(),
                count,
            });
        }
    }
    if !found {
        log.record(NonFinite {
            tensor: task.name.clone(),
            member: crate::nonfinite::RESULT.to_owned(),
            count: in_result,
        });
    }
}

fn verify_inputs(plan: &MergePlan, task: &TensorTask) -> Result<(), MergeError> {
    let mut result = Ok(());
    for_each_input(plan, task, |checkpoint, index| {
        if result.is_ok() {
            result = checkpoint.verify_tensor(index);
        }
    });
    Ok(result?)
}

fn for_each_input<'p>(
    plan: &'p MergePlan,
    task: &TensorTask,
    mut f: impl FnMut(&'p Checkpoint, usize),
) {
    if let (Some(base), Some(index)) = (&plan.family.base, task.base) {
        f(&base.checkpoint, index);
    }
    for &(m, index) in &task.models {
        f(&plan.family.models[m].checkpoint, index);
    }
}

/// `__metadata__` of every shard: the recipe that made it and the tool version, so a merged
/// model can be reproduced from itself.
fn output_metadata(plan: &MergePlan) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::from([
        ("format".to_owned(), "pt".to_owned()),
        ("mergescope_version".to_owned(), VERSION.to_owned()),
        ("mergescope_recipe".to_owned(), plan.recipe.to_yaml()),
    ]);
    meta.insert(
        "mergescope_random_seed".to_owned(),
        plan.random_seed.to_string(),
    );
    meta
}

fn copy_sidecars(plan: &MergePlan, export: &mut Export) -> Result<(), ExportError> {
    let read = |path: std::path::PathBuf| {
        std::fs::read(&path).map_err(|source| ExportError::Io { path, source })
    };
    if let Some(folder) = &plan.config_source {
        for name in sidecar::present(folder, sidecar::CONFIG_FILES) {
            let bytes = read(folder.join(name))?;
            let bytes = if name == "config.json" {
                plan.output_config(&bytes)
            } else {
                bytes
            };
            export.add_file(name, &bytes)?;
        }
    }
    if let Some(vocab) = &plan.vocab {
        // The tokenizer files are rewritten for the aligned vocabulary.
        for (name, bytes) in vocab.tokenizer_files()? {
            export.add_file(name, &bytes)?;
        }
    } else if let Some(folder) = &plan.tokenizer_source {
        for name in sidecar::present(folder, sidecar::TOKENIZER_FILES) {
            export.add_file(name, &read(folder.join(name))?)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(buffers: &mut Buffers, lens: &[usize]) {
        for &len in lens {
            buffers
                .spare
                .push(TensorBytes::for_encoding(FloatType::BF16, len, None));
        }
    }

    fn taken_len(buffers: &mut Buffers, len: usize) -> Option<usize> {
        buffers.take(FloatType::BF16, len).map(|b| b.len())
    }

    #[test]
    fn a_tensor_takes_the_shortest_buffer_already_its_length() {
        let (_, returned) = channel();
        let mut buffers = Buffers::new(returned);
        spare(&mut buffers, &[1 << 20, 4 << 10, 2 << 20, 1 << 10]);
        assert_eq!(taken_len(&mut buffers, 3 << 10), Some(4 << 10));
        assert_eq!(taken_len(&mut buffers, 1 << 20), Some(1 << 20));
        // No other type is handed out.
        assert!(buffers.take(FloatType::F32, 1).is_none());
    }

    #[test]
    fn a_longer_tensor_gets_fresh_memory_until_the_idle_buffers_are_many() {
        let (_, returned) = channel();
        let mut buffers = Buffers::new(returned);
        // A shrunk buffer keeps its capacity, but growing it again zero-fills the growth.
        let mut shrunk = TensorBytes::for_encoding(FloatType::BF16, 1 << 20, None);
        shrunk = TensorBytes::for_encoding(FloatType::BF16, 1 << 10, Some(shrunk));
        buffers.spare.push(shrunk);
        assert_eq!(taken_len(&mut buffers, 1 << 19), None, "a fresh buffer");
        // Idle buffers at the budget: the shrunk one grows rather than memory being added.
        let small = 1 << 18;
        spare(&mut buffers, &vec![small; SPARE_BYTES / (2 * small)]);
        assert_eq!(taken_len(&mut buffers, 1 << 19), Some(1 << 10));
        // With nothing that can grow in place, the largest is handed out to be replaced.
        buffers.spare.clear();
        spare(&mut buffers, &[SPARE_BYTES / 2, 1 << 10]);
        assert_eq!(taken_len(&mut buffers, SPARE_BYTES), Some(SPARE_BYTES / 2));
    }
}
