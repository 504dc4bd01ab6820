//! The WGSL kernels and their compute pipelines. Every kernel shares one bind-group layout
//! (`shaders/common.wgsl`): packed inputs, a header, keep-masks, and the output.

use std::borrow::Cow;

/// `common.wgsl` followed by a kernel, as one WGSL module.
macro_rules! kernel_source {
    ($file:literal) => {
        concat!(
            include_str!("../../../../shaders/common.wgsl"),
            "\n",
            include_str!(concat!("../../../../shaders/", $file))
        )
    };
}

/// One compute kernel of the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    WeightedSum,
    Combine,
    Nearswap,
    Gram,
}

impl Kernel {
    pub const ALL: [Self; 4] = [Self::WeightedSum, Self::Combine, Self::Nearswap, Self::Gram];

    pub const fn name(self) -> &'static str {
        match self {
            Self::WeightedSum => "weighted_sum",
            Self::Combine => "combine",
            Self::Nearswap => "nearswap",
            Self::Gram => "gram",
        }
    }

    /// The kernel's complete WGSL source.
    pub const fn source(self) -> &'static str {
        match self {
            Self::WeightedSum => kernel_source!("weighted_sum.wgsl"),
            Self::Combine => kernel_source!("combine.wgsl"),
            Self::Nearswap => kernel_source!("nearswap.wgsl"),
            Self::Gram => kernel_source!("gram.wgsl"),
        }
    }
}

/// Threads per workgroup of every kernel (`WORKGROUP` in common.wgsl).
pub const WORKGROUP: u32 = 256;
/// Most vectors one Gram dispatch handles (`MAX_VECTORS` in gram.wgsl).
pub const GRAM_MAX_VECTORS: usize = 8;

/// The pipelines, built once per device.
#[derive(Debug)]
pub struct Pipelines {
    pub layout: wgpu::BindGroupLayout,
    pipelines: Vec<wgpu::ComputePipeline>,
}

impl Pipelines {
    pub fn new(device: &wgpu::Device) -> Self {
        let storage = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("mergescope tensors"),
            entries: &[
                storage(0, true),
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                storage(2, true),
                storage(3, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("mergescope kernels"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipelines = Kernel::ALL
            .iter()
            .map(|kernel| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(kernel.source())),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(kernel.name()),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions::default(),
                    cache: None,
                })
            })
            .collect();
        Self { layout, pipelines }
    }

    pub fn get(&self, kernel: Kernel) -> &wgpu::ComputePipeline {
        let index = Kernel::ALL
            .iter()
            .position(|&k| k == kernel)
            .expect("every kernel has a pipeline");
        &self.pipelines[index]
    }
}

#[cfg(test)]
mod tests {
    use super::Kernel;

    /// Every kernel parses and validates with naga, as wgpu will on any device.
    #[test]
    fn every_kernel_validates() {
        for kernel in Kernel::ALL {
            let module = naga::front::wgsl::parse_str(kernel.source()).unwrap_or_else(|e| {
                panic!("{}: {}", kernel.name(), e.emit_to_string(kernel.source()))
            });
            naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::empty(),
            )
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", kernel.name()));
        }
    }
}
