//! The GPU backend: wgpu compute shaders (`shaders/`), tensors streamed through the device in
//! chunks.
//!
//! Inputs go up as they are stored (f32, or f16/bf16 two per `u32`) and are decoded in the
//! kernel, so a bf16 merge moves half the bytes an f32 one would. A tensor is cut into chunks
//! that fit the device's storage-binding limit and a fixed budget; two slots of buffers
//! alternate, so while the device computes chunk k the host uploads chunk k+1 and copies out
//! chunk k−1. Device memory is those two slots, whatever the model's size.
//!
//! What stays on the host: keep-masks (DARE/DELLA draw them from the counter-based generator
//! and TIES/breadcrumbs select them by rank on the CPU, so both backends use identical masks),
//! the scalar maths of SLERP and Model Stock, and the final f64 sum of reduction partials.
//!
//! Where a method branches on a computed value, the kernels compute it bit for bit as the CPU
//! backend does (`backend::agreement`, docs/gpu-cpu-agreement.md): the sign election's votes
//! and sums are flushed and never fused, and the Gram matrices SLERP and Model Stock decide on
//! are summed in f64 in the CPU's order. A device without f64 shaders leaves the Gram matrices
//! to the host.

mod kernels;
mod stream;

use std::sync::Mutex;

pub use kernels::Kernel;
use kernels::{GRAM_MAX_VECTORS, Pipelines};
use stream::{Input, Job, Sink, Slots};

use super::{Backend, BackendError, Combine, Cpu};
use crate::checkpoint::TensorView;

/// Which adapters [`Gpu::request`] may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterPolicy {
    /// Hardware only (what `--backend auto` uses).
    HardwareOnly,
    /// Hardware first, else a software rasterizer such as Mesa's lavapipe (tests, CI).
    AllowSoftware,
}

/// Tuning of the GPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// Bytes of input one chunk may hold (the largest binding is also capped by the device's
    /// `max_storage_buffer_binding_size`). Smaller values force more chunks (tests do).
    pub chunk_bytes: u64,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            chunk_bytes: 64 << 20,
        }
    }
}

/// A wgpu device and queue running mergescope's kernels.
#[derive(Debug)]
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    pipelines: Pipelines,
    slots: Mutex<Slots>,
}

impl Gpu {
    /// Opens the best adapter `policy` allows: discrete, then integrated, then virtual GPUs,
    /// then (if allowed) software ones.
    pub fn request(policy: AdapterPolicy, options: GpuOptions) -> Result<Self, BackendError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapter = adapters
            .into_iter()
            .filter(|a| policy == AdapterPolicy::AllowSoftware || !is_software(&a.get_info()))
            .min_by_key(|a| preference(&a.get_info()))
            .ok_or(BackendError::NoAdapter)?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("mergescope"),
            // f64 where the adapter has it: the Gram kernel sums in f64, as the CPU does.
            required_features: adapter.features() & wgpu::Features::SHADER_F64,
            // The adapter's own limits: the defaults cap buffers at 256 MiB.
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| BackendError::RequestDevice {
            adapter: info.name.clone(),
            message: e.to_string(),
        })?;
        Self::from_device(device, queue, info, options)
    }

    /// Runs on a device someone else made (the GUI passes eframe's), which should have been
    /// requested with the adapter's limits (the backend sizes its chunks from
    /// `device.limits()`) and with `SHADER_F64` where the adapter has it (without it, Gram
    /// matrices are computed on the host).
    pub fn from_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
        options: GpuOptions,
    ) -> Result<Self, BackendError> {
        let scopes = ErrorScopes::push(&device);
        let pipelines = Pipelines::new(&device);
        let slots = Slots::new(&device, &pipelines.layout, options.chunk_bytes);
        scopes.pop(&info)?;
        Ok(Self {
            device,
            queue,
            info,
            pipelines,
            slots: Mutex::new(slots),
        })
    }

    pub fn adapter(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Whether Gram matrices are computed on the device (it has f64 shaders); otherwise the
    /// host computes them, with the same result.
    pub fn gram_on_device(&self) -> bool {
        self.pipelines.get(Kernel::Gram).is_some()
    }

    /// Bytes of device memory the backend holds (its two slots of buffers).
    pub fn device_bytes(&self) -> u64 {
        self.lock().device_bytes()
    }

    /// Elements one chunk of a job over `inputs` holds.
    pub fn chunk_elements(&self, inputs: &[TensorView<'_>]) -> usize {
        self.lock().chunk_elements(&stream_inputs(inputs))
    }

    /// The element-wise kernels' own speed on data already on the device: elements per chunk
    /// and seconds per dispatch over `inputs` (see the bench `kernels`).
    pub fn time_resident(
        &self,
        kernel: Kernel,
        inputs: &[TensorView<'_>],
        repeats: u32,
    ) -> Result<(usize, f64), BackendError> {
        let inputs = stream_inputs(inputs);
        let job = Job {
            kernel,
            inputs: &inputs,
            flags: if kernel == Kernel::Combine { 3 } else { 0 },
            scalars: [1.0, 1.0],
        };
        let pipeline = self.pipeline(kernel)?;
        let scopes = ErrorScopes::push(&self.device);
        let timed = self
            .lock()
            .time_resident(&self.device, &self.queue, pipeline, &job, repeats);
        scopes.pop(&self.info)?;
        timed.map_err(|message| BackendError::Device {
            adapter: self.info.name.clone(),
            message,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic mid-job leaves only buffers behind; they are rewritten by the next job.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pipeline(&self, kernel: Kernel) -> Result<&wgpu::ComputePipeline, BackendError> {
        self.pipelines
            .get(kernel)
            .ok_or_else(|| BackendError::Device {
                adapter: self.info.name.clone(),
                message: format!(
                    "the `{}` kernel needs f64 shaders, which this device lacks",
                    kernel.name()
                ),
            })
    }

    /// Runs `job` and turns any device error into a [`BackendError`].
    fn run(&self, job: &Job<'_>, sink: &mut Sink<'_>) -> Result<(), BackendError> {
        let pipeline = self.pipeline(job.kernel)?;
        let scopes = ErrorScopes::push(&self.device);
        let ran = self
            .lock()
            .run(&self.device, &self.queue, pipeline, job, sink);
        scopes.pop(&self.info)?;
        ran.map_err(|message| BackendError::Device {
            adapter: self.info.name.clone(),
            message,
        })
    }
}

/// wgpu reports validation and out-of-memory errors to an error scope (or panics without
/// one): every device call of the backend runs inside these.
struct ErrorScopes {
    validation: wgpu::ErrorScopeGuard,
    out_of_memory: wgpu::ErrorScopeGuard,
}

impl ErrorScopes {
    fn push(device: &wgpu::Device) -> Self {
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        Self {
            validation,
            out_of_memory,
        }
    }

    fn pop(self, info: &wgpu::AdapterInfo) -> Result<(), BackendError> {
        // Innermost first.
        let errors = [
            pollster::block_on(self.validation.pop()),
            pollster::block_on(self.out_of_memory.pop()),
        ];
        match errors.into_iter().flatten().next() {
            None => Ok(()),
            Some(error) => Err(BackendError::Device {
                adapter: info.name.clone(),
                message: crate::one_line(&error.to_string()),
            }),
        }
    }
}

/// Software rasterizers (lavapipe, SwiftShader, WARP) report themselves as CPU devices.
pub(crate) fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

fn preference(info: &wgpu::AdapterInfo) -> u8 {
    match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn stream_inputs<'a>(views: &[TensorView<'a>]) -> Vec<Input<'a>> {
    views
        .iter()
        .map(|view| Input::plain(view.clone()))
        .collect()
}

impl Backend for Gpu {
    fn prefers_whole_tensors(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!(
            "gpu: {} ({:?}{}), {} of device buffers",
            self.info.name,
            self.info.backend,
            if is_software(&self.info) {
                ", software"
            } else {
                ""
            },
            crate::export::format_size(self.device_bytes())
        )
    }

    fn weighted_sum(
        &self,
        inputs: &[TensorView<'_>],
        coefficients: &[f32],
        divisor: Option<f32>,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let inputs = inputs
            .iter()
            .zip(coefficients)
            .map(|(view, &c)| Input {
                coefficient: c,
                ..Input::plain(view.clone())
            })
            .collect::<Vec<_>>();
        let job = Job {
            kernel: Kernel::WeightedSum,
            inputs: &inputs,
            flags: u32::from(divisor.is_some()),
            scalars: [divisor.unwrap_or(1.0), 0.0],
        };
        self.run(&job, &mut Sink::Elements(out))
    }

    fn gram(
        &self,
        inputs: &[TensorView<'_>],
        center: Option<TensorView<'_>>,
    ) -> Result<Vec<f64>, BackendError> {
        let k = inputs.len();
        let mut views = Vec::with_capacity(k + 1);
        views.extend(center.clone());
        views.extend_from_slice(inputs);
        let inputs_of_job = stream_inputs(&views);
        let job = Job {
            kernel: Kernel::Gram,
            inputs: &inputs_of_job,
            flags: u32::from(center.is_some()),
            scalars: [0.0; 2],
        };
        // The host computes the same bits: where the device has no f64, for more vectors than
        // one dispatch holds (Model Stock with > 8 models), or when a chunk cannot hold one
        // Gram block (only with tiny chunk budgets).
        if k == 0
            || k > GRAM_MAX_VECTORS
            || !self.gram_on_device()
            || self.lock().job_chunk_elements(&job) == 0
        {
            return Cpu.gram(inputs, center);
        }
        let pairs = k * (k + 1) / 2;
        let mut partials = vec![Vec::new(); pairs];
        self.run(&job, &mut Sink::Partials(&mut partials))?;
        let mut g = vec![0f64; k * k];
        let mut p = 0;
        for i in 0..k {
            for j in i..k {
                let sum = crate::merge::kernel::sum_in_order(partials[p].iter().copied());
                g[i * k + j] = sum;
                g[j * k + i] = sum;
                p += 1;
            }
        }
        Ok(g)
    }

    fn combine(&self, c: &Combine<'_>, out: &mut [f32]) -> Result<(), BackendError> {
        let mut inputs = vec![Input::plain(c.base.clone())];
        for (i, view) in c.models.iter().enumerate() {
            inputs.push(Input {
                view: view.clone(),
                coefficient: c.weights[i],
                factor: c.factors[i],
                mask: c.masks[i].as_ref(),
            });
        }
        let job = Job {
            kernel: Kernel::Combine,
            inputs: &inputs,
            flags: u32::from(c.normalize) | (u32::from(c.consensus) << 1),
            scalars: [c.lambda, c.plain_divisor],
        };
        self.run(&job, &mut Sink::Elements(out))
    }

    fn nearswap(
        &self,
        a: TensorView<'_>,
        b: TensorView<'_>,
        t: f32,
        out: &mut [f32],
    ) -> Result<(), BackendError> {
        let inputs = stream_inputs(&[a, b]);
        let job = Job {
            kernel: Kernel::Nearswap,
            inputs: &inputs,
            flags: 0,
            scalars: [t, 0.0],
        };
        self.run(&job, &mut Sink::Elements(out))
    }
}
