//! Streaming one job (a kernel over one tensor's inputs) through two alternating slots of
//! device buffers. See the module docs of `gpu` for the data path.

use std::sync::{Arc, Mutex, PoisonError};

use super::kernels::{Kernel, WORKGROUP};
use crate::backend::agreement::GRAM_BLOCK;
use crate::checkpoint::TensorView;
use crate::dtype::FloatType;
use crate::merge::select::BitMask;

/// `NO_MASK` in common.wgsl.
const NO_MASK: u32 = u32::MAX;
/// Header words before the per-input records, and words per record (common.wgsl).
const HEADER_INPUTS: usize = 8;
/// The header word that is always 0: `exact` and `flushed` in common.wgsl XOR with it, so the
/// compiler cannot fuse a product into a sum through them.
const OPAQUE_ZERO: usize = 7;
const INPUT_WORDS: usize = 8;
const HEADER_BYTES: u64 = 4096;
/// Inputs one header describes.
const MAX_INPUTS: usize = (HEADER_BYTES as usize / 4 - HEADER_INPUTS) / INPUT_WORDS;
/// The smallest chunk budget: 64 elements of the most inputs a header holds, in f32.
const MIN_CHUNK_BYTES: u64 = 64 * 1024;

/// One input of a job: a tensor with its per-input scalars.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub view: TensorView<'a>,
    pub coefficient: f32,
    pub factor: f32,
    pub mask: Option<&'a BitMask>,
}

impl<'a> Input<'a> {
    pub fn plain(view: TensorView<'a>) -> Self {
        Self {
            view,
            coefficient: 1.0,
            factor: 1.0,
            mask: None,
        }
    }

    fn float_type(&self) -> FloatType {
        self.view
            .info
            .float_type()
            .expect("the plan sends only float tensors to methods")
    }
}

/// A kernel over one tensor.
#[derive(Debug)]
pub struct Job<'a> {
    pub kernel: Kernel,
    pub inputs: &'a [Input<'a>],
    pub flags: u32,
    pub scalars: [f32; 2],
}

/// Where a job's results go.
pub enum Sink<'a> {
    /// One f32 per element.
    Elements(&'a mut [f32]),
    /// Per Gram entry (upper triangle, row by row), every block's sum in order.
    Partials(&'a mut [Vec<f64>]),
}

/// A chunk in flight in a slot.
struct Pending {
    start: usize,
    len: usize,
    read_bytes: u64,
    submission: wgpu::SubmissionIndex,
    mapped: Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>>,
}

struct Slot {
    data: wgpu::Buffer,
    header: wgpu::Buffer,
    masks: wgpu::Buffer,
    out: wgpu::Buffer,
    readback: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    pending: Option<Pending>,
}

/// Two slots of buffers and the sizes they were made with.
pub struct Slots {
    slots: [Slot; 2],
    data_bytes: u64,
    mask_bytes: u64,
    out_bytes: u64,
    max_groups: u32,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("data_bytes", &self.data_bytes)
            .field("mask_bytes", &self.mask_bytes)
            .field("out_bytes", &self.out_bytes)
            .finish_non_exhaustive()
    }
}

impl Slots {
    pub fn new(device: &wgpu::Device, layout: &wgpu::BindGroupLayout, chunk_bytes: u64) -> Self {
        let limits = device.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let data_bytes = chunk_bytes.max(MIN_CHUNK_BYTES).min(binding) & !255;
        let mask_bytes = (data_bytes / 8).max(256);
        let out_bytes = (data_bytes / 2).max(4096).min(binding);
        let slot = |name: &str| {
            let buffer = |usage, size| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(name),
                    size,
                    usage,
                    mapped_at_creation: false,
                })
            };
            let input = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
            let data = buffer(input, data_bytes);
            let header = buffer(
                wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                HEADER_BYTES,
            );
            let masks = buffer(input, mask_bytes);
            let out = buffer(
                wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
                out_bytes,
            );
            let readback = buffer(
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                out_bytes,
            );
            let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(name),
                layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: data.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: header.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: masks.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: out.as_entire_binding(),
                    },
                ],
            });
            Slot {
                data,
                header,
                masks,
                out,
                readback,
                bind_group,
                pending: None,
            }
        };
        Self {
            slots: [slot("mergescope slot 0"), slot("mergescope slot 1")],
            data_bytes,
            mask_bytes,
            out_bytes,
            max_groups: limits.max_compute_workgroups_per_dimension,
        }
    }

    pub fn device_bytes(&self) -> u64 {
        2 * (self.data_bytes + HEADER_BYTES + self.mask_bytes + 2 * self.out_bytes)
    }

    /// Elements per chunk: as many as the data, mask and output buffers hold, in whole
    /// 64-element groups so every chunk starts on a mask word and a packed-pair boundary.
    pub fn chunk_elements(&self, inputs: &[Input<'_>]) -> usize {
        let n = inputs.len() as u64;
        let bytes_per_element: u64 = inputs
            .iter()
            .map(|i| i.float_type().size_bytes() as u64)
            .sum();
        let masked = inputs.iter().filter(|i| i.mask.is_some()).count() as u64;
        let by_data = (self.data_bytes - 4 * n) / bytes_per_element.max(1);
        let by_out = self.out_bytes / 4;
        let by_masks = ((self.mask_bytes - 8 * masked) * 8)
            .checked_div(masked)
            .unwrap_or(u64::MAX);
        let elements = by_data.min(by_out).min(by_masks) / 64 * 64;
        usize::try_from(elements.max(64)).unwrap_or(usize::MAX)
    }

    /// Elements per chunk of `job`: for a Gram job a whole number of Gram blocks (one
    /// workgroup each, so chunks start where the CPU's blocks do), 0 when not even one fits.
    pub fn job_chunk_elements(&self, job: &Job<'_>) -> usize {
        let elements = self.chunk_elements(job.inputs);
        if job.kernel == Kernel::Gram {
            let by_out = (self.out_bytes / 8) as usize / gram_pairs(job).max(1);
            let blocks = (elements / GRAM_BLOCK)
                .min(by_out)
                .min(self.max_groups as usize);
            blocks * GRAM_BLOCK
        } else {
            elements
        }
    }

    /// The workgroup grid for `len` elements of `job`, and how many bytes it writes.
    fn dispatch(&self, job: &Job<'_>, len: usize) -> ((u32, u32), u64) {
        if job.kernel == Kernel::Gram {
            let blocks = len.div_ceil(GRAM_BLOCK);
            let blocks = u32::try_from(blocks).expect("at most max_groups blocks per chunk");
            ((blocks, 1), u64::from(blocks) * gram_pairs(job) as u64 * 8)
        } else {
            let groups = len.div_ceil(WORKGROUP as usize);
            let groups = u32::try_from(groups).expect("chunks are smaller than 4 G elements");
            let x = groups.min(self.max_groups);
            ((x, groups.div_ceil(x)), len as u64 * 4)
        }
    }

    /// Runs `job` chunk by chunk; results land in `sink`.
    pub fn run(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &wgpu::ComputePipeline,
        job: &Job<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<(), String> {
        let result = self.stream(device, queue, pipeline, job, sink);
        if result.is_err() {
            self.abandon(device);
        }
        result
    }

    fn stream(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &wgpu::ComputePipeline,
        job: &Job<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<(), String> {
        if job.inputs.len() > MAX_INPUTS {
            return Err(format!(
                "{} inputs in one tensor; the GPU backend takes at most {MAX_INPUTS}",
                job.inputs.len()
            ));
        }
        let n = job.inputs.first().map_or(0, |i| i.view.numel());
        if let Sink::Elements(out) = sink {
            assert_eq!(out.len(), n, "the output has the tensor's element count");
        }
        let cap = self.job_chunk_elements(job);
        if cap == 0 {
            return Err("a chunk does not hold one Gram block; raise the chunk budget".to_owned());
        }
        let mut chunk = 0;
        let mut start = 0;
        while start < n {
            let len = cap.min(n - start);
            let slot = chunk % 2;
            self.finish(slot, device, job, sink)?;
            self.submit(slot, device, queue, pipeline, job, start, len);
            start += len;
            chunk += 1;
        }
        // The older chunk first, so partial sums arrive in order.
        self.finish(chunk % 2, device, job, sink)?;
        self.finish((chunk + 1) % 2, device, job, sink)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one chunk of one job, on one slot"
    )]
    fn submit(
        &mut self,
        slot: usize,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &wgpu::ComputePipeline,
        job: &Job<'_>,
        start: usize,
        len: usize,
    ) {
        let dispatch = self.dispatch(job, len);
        let slot = &mut self.slots[slot];
        let mut header = vec![0u32; HEADER_INPUTS + INPUT_WORDS * job.inputs.len()];
        header[0] = u32::try_from(len).expect("chunks are smaller than 4 G elements");
        header[1] = job.inputs.len() as u32;
        header[2] = job.flags;
        header[3] = job.scalars[0].to_bits();
        header[4] = job.scalars[1].to_bits();
        header[OPAQUE_ZERO] = 0;
        let (mut data_word, mut mask_word) = (0u64, 0u64);
        for (k, input) in job.inputs.iter().enumerate() {
            let ty = input.float_type();
            let size = ty.size_bytes();
            let bytes = &input.view.bytes[start * size..(start + len) * size];
            write_padded(queue, &slot.data, data_word * 4, bytes);
            let record = &mut header[HEADER_INPUTS + INPUT_WORDS * k..][..INPUT_WORDS];
            record[0] = data_word as u32;
            record[1] = match ty {
                FloatType::F32 => 0,
                FloatType::F16 => 1,
                FloatType::BF16 => 2,
            };
            record[2] = input.coefficient.to_bits();
            record[3] = input.factor.to_bits();
            record[4] = match input.mask {
                None => NO_MASK,
                Some(mask) => {
                    // A u64 mask word is two u32 words, low first, on little-endian hosts
                    // (safetensors data is little-endian too).
                    let words = &mask.words()[start / 64..(start + len).div_ceil(64)];
                    queue.write_buffer(&slot.masks, mask_word * 4, bytemuck::cast_slice(words));
                    let offset = mask_word as u32;
                    mask_word += 2 * words.len() as u64;
                    offset
                }
            };
            data_word += bytes.len().div_ceil(4) as u64;
        }
        queue.write_buffer(&slot.header, 0, bytemuck::cast_slice(&header));

        let (dispatch, read_bytes) = dispatch;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some(job.kernel.name()),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(job.kernel.name()),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &slot.bind_group, &[]);
            pass.dispatch_workgroups(dispatch.0, dispatch.1, 1);
        }
        encoder.copy_buffer_to_buffer(&slot.out, 0, &slot.readback, 0, read_bytes);
        let submission = queue.submit([encoder.finish()]);
        let mapped = Arc::new(Mutex::new(None));
        let reported = Arc::clone(&mapped);
        slot.readback
            .slice(..read_bytes)
            .map_async(wgpu::MapMode::Read, move |result| {
                *reported.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
            });
        slot.pending = Some(Pending {
            start,
            len,
            read_bytes,
            submission,
            mapped,
        });
    }

    /// Seconds per dispatch of `job`'s kernel over one chunk already on the device (uploaded
    /// once, then run `repeats` times): the kernel's own speed, without transfers. Returns the
    /// chunk's element count too.
    pub fn time_resident(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &wgpu::ComputePipeline,
        job: &Job<'_>,
        repeats: u32,
    ) -> Result<(usize, f64), String> {
        let n = job.inputs.first().map_or(0, |i| i.view.numel());
        let cap = self.job_chunk_elements(job);
        if cap == 0 {
            return Err("a chunk does not hold one Gram block; raise the chunk budget".to_owned());
        }
        let len = cap.min(n);
        let mut scratch = vec![0f32; len];
        let mut partials = vec![Vec::new(); gram_pairs(job)];
        let mut sink = if job.kernel == Kernel::Gram {
            Sink::Partials(&mut partials)
        } else {
            Sink::Elements(&mut scratch)
        };
        // One ordinary round first: uploads the chunk and warms the pipeline.
        self.submit(0, device, queue, pipeline, job, 0, len);
        self.finish(0, device, job, &mut sink)?;
        let ((x, y), _) = self.dispatch(job, len);
        let started = std::time::Instant::now();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("resident timing"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(job.kernel.name()),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &self.slots[0].bind_group, &[]);
            for _ in 0..repeats {
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let submission = queue.submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| e.to_string())?;
        Ok((
            len,
            started.elapsed().as_secs_f64() / f64::from(repeats.max(1)),
        ))
    }

    /// Waits for the slot's chunk, if any, and hands its results to `sink`.
    fn finish(
        &mut self,
        slot: usize,
        device: &wgpu::Device,
        job: &Job<'_>,
        sink: &mut Sink<'_>,
    ) -> Result<(), String> {
        let slot = &mut self.slots[slot];
        let Some(pending) = slot.pending.take() else {
            return Ok(());
        };
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(pending.submission),
                timeout: None,
            })
            .map_err(|e| e.to_string())?;
        let mapped = pending
            .mapped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(format!("reading results back failed: {e}")),
            None => return Err("the device finished without mapping the results".to_owned()),
        }
        {
            let view = slot
                .readback
                .slice(..pending.read_bytes)
                .get_mapped_range()
                .map_err(|e| e.to_string())?;
            match sink {
                Sink::Elements(out) => {
                    let values: &[f32] = bytemuck::cast_slice(&view);
                    out[pending.start..pending.start + pending.len].copy_from_slice(values);
                }
                Sink::Partials(entries) => {
                    let pairs = entries.len();
                    debug_assert_eq!(job.kernel, Kernel::Gram);
                    let values: Vec<f64> = bytemuck::pod_collect_to_vec(&view);
                    for group in values.chunks(pairs) {
                        for (entry, &v) in entries.iter_mut().zip(group) {
                            entry.push(v);
                        }
                    }
                }
            }
        }
        slot.readback.unmap();
        Ok(())
    }

    /// After a failure: wait for whatever is in flight and forget it.
    fn abandon(&mut self, device: &wgpu::Device) {
        let _ = device.poll(wgpu::PollType::wait_indefinitely());
        for slot in &mut self.slots {
            if slot.pending.take().is_some() {
                slot.readback.unmap();
            }
        }
    }
}

/// Upper-triangle entries of a Gram job's matrix.
fn gram_pairs(job: &Job<'_>) -> usize {
    let centred = usize::from(job.flags & 1 != 0);
    let k = job.inputs.len().saturating_sub(centred);
    k * (k + 1) / 2
}

/// `queue.write_buffer` takes whole words: a tail of 1–3 bytes goes up zero-padded.
fn write_padded(queue: &wgpu::Queue, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
    let whole = bytes.len() / 4 * 4;
    if whole > 0 {
        queue.write_buffer(buffer, offset, &bytes[..whole]);
    }
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        queue.write_buffer(buffer, offset + whole as u64, &tail);
    }
}
