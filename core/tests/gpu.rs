//! GPU backend vs CPU backend (ALGORITHMS.md §6: `|cpu − gpu| ≤ 1e-5·max|cpu| + 1e-5·|cpu|`),
//! for every method, on tensors of awkward sizes and mixed dtypes, with chunks forced smaller
//! than the tensors.
//!
//! Needs a wgpu adapter; Mesa's lavapipe is enough (`setup.sh` and CI install it). Without one
//! these tests fail, unless `MERGESCOPE_SKIP_GPU_TESTS=1` says that is expected.

use std::sync::OnceLock;

use mergescope_core::backend::{AdapterPolicy, Backend, Cpu, Gpu, GpuOptions};
use mergescope_core::checkpoint::{TensorInfo, TensorView};
use mergescope_core::dtype::{FloatType, TensorBytes};
use mergescope_core::merge::methods::IMPLEMENTED;
use mergescope_core::merge::{BaseUse, MergeMethod, MethodInputs, Scope, TensorParams, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Sizes that end mid-word, mid-workgroup and just past a power of two.
const SIZES: [usize; 3] = [1, 63, 64 * 1024 + 1];

fn open(chunk_bytes: u64) -> Option<Gpu> {
    match Gpu::request(AdapterPolicy::AllowSoftware, GpuOptions { chunk_bytes }) {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var_os("MERGESCOPE_SKIP_GPU_TESTS").is_some() => {
            eprintln!("skipping GPU tests: {e}");
            None
        }
        Err(e) => panic!(
            "{e}\n(install Mesa's Vulkan driver, `apt-get install mesa-vulkan-drivers`, or set \
             MERGESCOPE_SKIP_GPU_TESTS=1)"
        ),
    }
}

/// The default backend, shared by the tests of this binary.
fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| open(GpuOptions::default().chunk_bytes))
        .as_ref()
}

/// A backend whose chunks (64 KiB of input) are far smaller than the larger test tensors.
fn small_chunks() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| open(64 * 1024)).as_ref()
}

struct Tensor {
    info: TensorInfo,
    bytes: Vec<u8>,
}

impl Tensor {
    fn new(values: &[f32], ty: FloatType) -> Self {
        let bytes = TensorBytes::encode(values.to_vec(), ty).as_bytes().to_vec();
        Self {
            info: TensorInfo {
                name: "model.layers.3.mlp.up_proj.weight".to_owned(),
                dtype: ty.dtype(),
                shape: shape_of(values.len()),
                shard: 0,
                start: 0,
                end: bytes.len(),
            },
            bytes,
        }
    }

    fn view(&self) -> TensorView<'_> {
        TensorView::new(&self.info, &self.bytes)
    }
}

/// 2-D where the size allows, so row-wise methods see rows.
fn shape_of(n: usize) -> Vec<usize> {
    if n > 64 && n.is_multiple_of(64) {
        vec![n / 64, 64]
    } else {
        vec![n]
    }
}

/// A base and `models` fine-tunes of it in mixed dtypes: small shared and opposing
/// components, so TIES has signs to elect, and one model equal to the base in places.
fn family(n: usize, models: usize, seed: u64) -> (Tensor, Vec<Tensor>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base: Vec<f32> = (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
    let shared: Vec<f32> = (0..n).map(|_| rng.random_range(-0.01..0.01)).collect();
    let types = [
        FloatType::F16,
        FloatType::F32,
        FloatType::BF16,
        FloatType::F32,
    ];
    let fine_tunes = (0..models)
        .map(|m| {
            let sign = if m % 2 == 0 { 1.0 } else { -0.7 };
            let values: Vec<f32> = base
                .iter()
                .zip(&shared)
                .enumerate()
                .map(|(j, (&b, &s))| {
                    if m == 0 && j % 7 == 0 {
                        b
                    } else {
                        b + sign * s + rng.random_range(-0.005..0.005)
                    }
                })
                .collect();
            Tensor::new(&values, types[m % types.len()])
        })
        .collect();
    (Tensor::new(&base, FloatType::BF16), fine_tunes)
}

/// Every parameter of `method`: its default, else a value that exercises it.
fn params_for(method: &dyn MergeMethod, non_base: usize, inputs: usize) -> TensorParams {
    let spec = method.spec();
    let chosen = |name: &str, i: usize| -> Option<Value> {
        Some(match (spec.name, name) {
            (_, "weight") => Value::Float([0.5, 0.3, 0.2, 0.4][i % 4]),
            (_, "t") if spec.name == "nearswap" => Value::Float(0.004),
            (_, "t") => Value::Float(0.3),
            (_, "density") => Value::Float([0.5, 0.7, 0.4][i % 3]),
            (_, "epsilon") => Value::Float(0.1),
            (_, "gamma") => Value::Float(0.05),
            (_, "lambda") => Value::Float(0.9),
            ("sce", "select_topk") => Value::Float(0.5),
            _ => return None,
        })
    };
    let value = |p: &mergescope_core::merge::ParamSpec, i: usize| {
        chosen(p.name, i)
            .or(p.default)
            .unwrap_or_else(|| panic!("{}: no value for `{}`", spec.name, p.name))
    };
    let shared = spec
        .params
        .iter()
        .filter(|p| p.scope == Scope::Shared)
        .map(|p| (p.name, value(p, 0)))
        .collect();
    let per_model_count = if spec.base == BaseUse::Ignored {
        inputs
    } else {
        non_base
    };
    let models = (0..per_model_count)
        .map(|i| {
            spec.params
                .iter()
                .filter(|p| p.scope != Scope::Shared)
                .map(|p| (p.name, value(p, i)))
                .collect()
        })
        .collect();
    TensorParams::from_values(shared, models)
}

fn assert_agree(cpu: &[f32], gpu: &[f32], what: &str) {
    let max = cpu.iter().fold(0f64, |m, &v| m.max(f64::from(v).abs()));
    for (i, (&c, &g)) in cpu.iter().zip(gpu).enumerate() {
        let (c, g) = (f64::from(c), f64::from(g));
        let bound = 1e-5 * max + 1e-5 * c.abs();
        assert!(
            (c - g).abs() <= bound,
            "{what}: element {i}: cpu {c} gpu {g} (bound {bound:e})"
        );
    }
}

fn compare_every_method(gpu: &Gpu, sizes: &[usize]) {
    for method in IMPLEMENTED {
        let spec = method.spec();
        let models = spec
            .max_models
            .unwrap_or(3)
            .min(3)
            .max(spec.min_models.max(1));
        for &n in sizes {
            let (base, fine_tunes) = family(n, models, n as u64);
            let with_base = spec.base != BaseUse::Ignored;
            let views: Vec<TensorView<'_>> = fine_tunes.iter().map(Tensor::view).collect();
            let params = params_for(*method, models, models);
            let inputs = MethodInputs {
                tensor: "model.layers.3.mlp.up_proj.weight",
                seed: 42,
                base: with_base.then(|| base.view()),
                models: views,
                params: &params,
            };
            let mut on_cpu = vec![f32::NAN; n];
            let mut on_gpu = vec![f32::NAN; n];
            method.merge_on(&Cpu, &inputs, &mut on_cpu).unwrap();
            method.merge_on(gpu, &inputs, &mut on_gpu).unwrap();
            assert_agree(
                &on_cpu,
                &on_gpu,
                &format!("{} with {n} elements", spec.name),
            );
        }
    }
}

#[test]
fn every_method_agrees_with_the_cpu() {
    let Some(gpu) = gpu() else { return };
    eprintln!("on {}", gpu.describe());
    compare_every_method(gpu, &SIZES);
}

#[test]
fn tensors_larger_than_a_chunk_agree_with_the_cpu() {
    let Some(gpu) = small_chunks() else { return };
    let (base, models) = family(64 * 1024 + 1, 3, 1);
    let views: Vec<_> = models.iter().map(Tensor::view).collect();
    assert!(
        gpu.chunk_elements(&views) < 64 * 1024,
        "the test must split tensors"
    );
    let mut all = vec![base.view()];
    all.extend(views);
    assert!(gpu.chunk_elements(&all) * 4 < all[0].numel());
    compare_every_method(gpu, &[64 * 1024 + 1, 200_000]);
}

#[test]
fn gram_matrices_agree_with_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for n in SIZES {
        let (base, models) = family(n, 4, 7);
        let views: Vec<_> = models.iter().map(Tensor::view).collect();
        for center in [None, Some(base.view())] {
            let cpu = Cpu.gram(&views, center).unwrap();
            let on_gpu = gpu.gram(&views, center).unwrap();
            for (c, g) in cpu.iter().zip(&on_gpu) {
                assert!(
                    (c - g).abs() <= 1e-5 * c.abs().max(1e-12),
                    "gram of {n} elements: cpu {c} gpu {g}"
                );
            }
        }
    }
}

#[test]
fn device_memory_is_bounded_by_the_chunk_budget() {
    let Some(gpu) = small_chunks() else { return };
    // Two slots of inputs, masks, output and read-back, whatever the tensor size.
    assert!(gpu.device_bytes() <= 2 * (64 + 8 + 32 + 32 + 4) * 1024);
}

#[test]
fn half_precision_decodes_exactly_in_the_kernel() {
    let Some(gpu) = gpu() else { return };
    let specials = [
        0.0,
        -0.0,
        1.0,
        -2.5,
        6.0e-8, // f16 subnormals
        -3.0e-5,
        6.1e-5,
        65504.0, // f16 max
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.0e-40, // f32 subnormal (bf16 keeps it)
        3.4e38,
    ];
    for ty in [FloatType::F16, FloatType::BF16, FloatType::F32] {
        let tensor = Tensor::new(&specials, ty);
        let mut expected = vec![0f32; specials.len()];
        mergescope_core::merge::kernel::decode_all(&tensor.view(), &mut expected);
        let mut got = vec![f32::NAN; specials.len()];
        gpu.weighted_sum(&[tensor.view()], &[1.0], None, &mut got)
            .unwrap();
        for (e, g) in expected.iter().zip(&got) {
            // 0 + x·1 turns −0 into +0 on both backends; compare values, and infinities exactly.
            // GPUs may flush f32 subnormals to zero in arithmetic (lavapipe does not).
            let flushed = e.abs() < f32::MIN_POSITIVE && *g == 0.0;
            assert!(e == g || flushed, "{ty:?}: expected {e:e}, got {g:e}");
        }
    }
}

/// The GUI hands the backend eframe's device: a device made elsewhere must work as well.
#[test]
fn runs_on_a_device_made_by_someone_else() {
    if gpu().is_none() {
        return;
    }
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .next()
        .expect("an adapter (gpu() found one)");
    // Default limits, as an application that did not plan for compute would ask.
    let (device, queue) =
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default())).unwrap();
    let shared = Gpu::from_device(device, queue, adapter.get_info(), GpuOptions::default())
        .expect("the kernels build on any device");
    let (base, models) = family(64 * 1024 + 1, 2, 3);
    let inputs = [base.view(), models[0].view(), models[1].view()];
    let mut on_cpu = vec![0f32; 64 * 1024 + 1];
    let mut on_gpu = vec![f32::NAN; 64 * 1024 + 1];
    Cpu.weighted_sum(&inputs, &[0.2, 0.5, 0.3], Some(1.0), &mut on_cpu)
        .unwrap();
    shared
        .weighted_sum(&inputs, &[0.2, 0.5, 0.3], Some(1.0), &mut on_gpu)
        .unwrap();
    assert_agree(&on_cpu, &on_gpu, "weighted_sum on a shared device");
}
