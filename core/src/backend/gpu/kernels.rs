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
    /// Needs `SHADER_F64` ([`Kernel::needs_f64`]); see `shaders/gram.wgsl`.
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

    /// Whether the kernel computes in f64 (`wgpu::Features::SHADER_F64`).
    pub const fn needs_f64(self) -> bool {
        matches!(self, Self::Gram)
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

/// The pipelines, built once per device: every kernel, less those needing f64 on a device
/// without it.
#[derive(Debug)]
pub struct Pipelines {
    pub layout: wgpu::BindGroupLayout,
    pipelines: Vec<Option<wgpu::ComputePipeline>>,
}

impl Pipelines {
    pub fn new(device: &wgpu::Device) -> Self {
        let f64_shaders = device.features().contains(wgpu::Features::SHADER_F64);
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
                if kernel.needs_f64() && !f64_shaders {
                    return None;
                }
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.name()),
                    source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(kernel.source())),
                });
                Some(
                    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(kernel.name()),
                        layout: Some(&pipeline_layout),
                        module: &module,
                        entry_point: Some("main"),
                        compilation_options: wgpu::PipelineCompilationOptions::default(),
                        cache: None,
                    }),
                )
            })
            .collect();
        Self { layout, pipelines }
    }

    /// The kernel's pipeline; `None` for an f64 kernel on a device without f64.
    pub fn get(&self, kernel: Kernel) -> Option<&wgpu::ComputePipeline> {
        let index = Kernel::ALL
            .iter()
            .position(|&k| k == kernel)
            .expect("every kernel is in ALL");
        self.pipelines[index].as_ref()
    }
}

#[cfg(test)]
mod tests {
    use naga::{BinaryOperator, Block, Expression, Function, Handle, Module, Statement};

    use super::Kernel;

    fn parse_and_validate(kernel: Kernel) -> (Module, naga::valid::ModuleInfo) {
        let module = naga::front::wgsl::parse_str(kernel.source())
            .unwrap_or_else(|e| panic!("{}: {}", kernel.name(), e.emit_to_string(kernel.source())));
        let capabilities = if kernel.needs_f64() {
            naga::valid::Capabilities::FLOAT64
        } else {
            naga::valid::Capabilities::empty()
        };
        let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), capabilities)
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", kernel.name()));
        (module, info)
    }

    fn returned(block: &Block, out: &mut Vec<Handle<Expression>>) {
        for statement in block {
            match statement {
                Statement::Return { value: Some(v) } => out.push(*v),
                Statement::Block(b) => returned(b, out),
                Statement::If { accept, reject, .. } => {
                    returned(accept, out);
                    returned(reject, out);
                }
                Statement::Loop {
                    body, continuing, ..
                } => {
                    returned(body, out);
                    returned(continuing, out);
                }
                Statement::Switch { cases, .. } => {
                    for case in cases {
                        returned(&case.body, out);
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether `e` is a product as far as a compiler can see: a multiplication, directly or
    /// through a `let`, a `select`, a negation or a function's result.
    fn is_product(module: &Module, function: &Function, e: Handle<Expression>) -> bool {
        match function.expressions[e] {
            Expression::Binary {
                op: BinaryOperator::Multiply,
                ..
            } => true,
            Expression::Select { accept, reject, .. } => {
                is_product(module, function, accept) || is_product(module, function, reject)
            }
            Expression::Unary { expr, .. } => is_product(module, function, expr),
            Expression::CallResult(callee) => {
                let callee = &module.functions[callee];
                let mut values = Vec::new();
                returned(&callee.body, &mut values);
                values.iter().any(|&v| is_product(module, callee, v))
            }
            _ => false,
        }
    }

    /// f32 additions and subtractions in `kernel` that take a product as an operand: the
    /// places a GPU compiler may fuse into one fma (one rounding instead of two).
    fn fusable_additions(kernel: Kernel) -> usize {
        let (module, info) = parse_and_validate(kernel);
        let functions = module.functions.iter().map(|(h, f)| (f, &info[h])).chain(
            module
                .entry_points
                .iter()
                .enumerate()
                .map(|(i, ep)| (&ep.function, info.get_entry_point(i))),
        );
        let mut count = 0;
        for (function, function_info) in functions {
            for (h, expression) in function.expressions.iter() {
                let Expression::Binary {
                    op: BinaryOperator::Add | BinaryOperator::Subtract,
                    left,
                    right,
                } = *expression
                else {
                    continue;
                };
                let is_f32 = matches!(
                    function_info[h].ty.inner_with(&module.types),
                    naga::TypeInner::Scalar(naga::Scalar::F32)
                );
                if is_f32
                    && (is_product(&module, function, left) || is_product(&module, function, right))
                {
                    count += 1;
                }
            }
        }
        count
    }

    /// The sign election and the weighted sum add only finished values (through `exact` or
    /// `flushed`), so no GPU can fuse a multiply into them and round the sum differently from
    /// the CPU (lavapipe does not fuse, so the GPU tests cannot show this). nearswap does fuse,
    /// which only rounds differently.
    #[test]
    fn sums_that_decide_take_no_product_a_gpu_could_fuse() {
        assert_eq!(fusable_additions(Kernel::Combine), 0);
        assert_eq!(fusable_additions(Kernel::WeightedSum), 0);
        // The check sees through functions: nearswap's w·b + (1 − w)·a is caught.
        assert!(fusable_additions(Kernel::Nearswap) > 0);
    }

    /// Every kernel parses and validates with naga, as wgpu will on any device (with f64
    /// only for the kernels that declare they need it).
    #[test]
    fn every_kernel_validates() {
        for kernel in Kernel::ALL {
            parse_and_validate(kernel);
        }
    }

    /// The words of the WGSL that keeps the backends' decisions alike are there: the opaque
    /// zero is header word 7 (which the host never sets), and the GPU's constants are the
    /// CPU's.
    #[test]
    fn kernels_share_the_cpus_constants() {
        let common = include_str!("../../../../shaders/common.wgsl");
        assert!(common.contains("bitcast<u32>(x) ^ header(7u)"));
        let gram = Kernel::Gram.source();
        let block = crate::backend::agreement::GRAM_BLOCK;
        assert!(gram.contains(&format!("const BLOCK: u32 = {block}u;")));
        assert_eq!(
            crate::backend::agreement::GRAM_LANES,
            super::WORKGROUP as usize
        );
        // WGSL's 1e-6 (an abstract float made f32) is Rust's.
        assert_eq!((1e-6f64 as f32).to_bits(), 1e-6f32.to_bits());
        assert!(
            Kernel::Nearswap
                .source()
                .contains("select(1e-6, gap, gap > 1e-6)")
        );
    }
}
