//! GPU backend vs CPU backend (ALGORITHMS.md §6: `|cpu − gpu| ≤ 1e-5·max|cpu| + 1e-5·|cpu|`),
//! for every method, on tensors of awkward sizes and mixed dtypes, with chunks forced smaller
//! than the tensors.
//!
//! Needs a wgpu adapter; Mesa's lavapipe is enough (`setup.sh` and CI install it). Without one
//! these tests fail, unless `MERGESCOPE_SKIP_GPU_TESTS=1` says that is expected.

use std::sync::OnceLock;

use mergescope_core::backend::{AdapterPolicy, Backend, Combine, Cpu, Gpu, GpuOptions};
use mergescope_core::checkpoint::{TensorInfo, TensorView};
use mergescope_core::dtype::{FloatType, TensorBytes};
use mergescope_core::merge::methods::IMPLEMENTED;
use mergescope_core::merge::select::BitMask;
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

/// A backend whose chunks (1 MiB of input) hold a Gram block of 8 f32 vectors, but split the
/// larger test tensors.
fn block_chunks() -> Option<&'static Gpu> {
    static GPU: OnceLock<Option<Gpu>> = OnceLock::new();
    GPU.get_or_init(|| open(1 << 20)).as_ref()
}

/// SLERP and Model Stock branch on Gram matrices: both backends return the same bits, on one
/// chunk or many (where the device has f64; otherwise the host computes it for the GPU).
#[test]
fn gram_matrices_equal_the_cpus_bit_for_bit() {
    let Some(gpu) = gpu() else { return };
    let Some(split) = block_chunks() else { return };
    eprintln!("Gram on the device: {}", gpu.gram_on_device());
    for (backend, sizes) in [
        (gpu, &[1, 63, 64 * 1024 + 1][..]),
        (split, &[200_000, 3 * 16 * 1024][..]),
    ] {
        for &n in sizes {
            for models in [1, 2, 4, 8, 9] {
                let (base, fine_tunes) = family(n, models, 7);
                let views: Vec<_> = fine_tunes.iter().map(Tensor::view).collect();
                if n == 200_000 {
                    let mut all = vec![base.view()];
                    all.extend(views.iter().cloned());
                    assert!(
                        split.chunk_elements(&all) < n,
                        "the test must split tensors"
                    );
                }
                for center in [None, Some(base.view())] {
                    let cpu = Cpu.gram(&views, center.clone()).unwrap();
                    let on_gpu = backend.gram(&views, center.clone()).unwrap();
                    let bits = |g: &[f64]| g.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&cpu),
                        bits(&on_gpu),
                        "gram of {models} × {n} elements, centred: {}",
                        center.is_some()
                    );
                    // And it is the Gram matrix: f64 sums of the f32 task vectors.
                    let decoded: Vec<Vec<f32>> = views.iter().map(decode).collect();
                    let c = center.map(|c| decode(&c));
                    for i in 0..models {
                        for j in 0..models {
                            let exact: f64 = (0..n)
                                .map(|e| {
                                    let v = |k: usize| {
                                        let x = decoded[k][e];
                                        f64::from(c.as_ref().map_or(x, |c| x - c[e]))
                                    };
                                    v(i) * v(j)
                                })
                                .sum();
                            let got = cpu[i * models + j];
                            assert!(
                                (got - exact).abs() <= 1e-12 * exact.abs().max(1e-30),
                                "gram[{i}][{j}] of {n}: {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }
}

fn decode(view: &TensorView<'_>) -> Vec<f32> {
    let mut out = Vec::new();
    mergescope_core::merge::kernel::decode_all(view, &mut out);
    out
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

// ------------------------------------------------------------------------------------------
// Edges where the two backends could take different branches (docs/gpu-cpu-agreement.md):
// inputs built to sit on each, the GPU's branch checked against the CPU's, and the CPU's
// against an f64 evaluation of the documented rule.

/// §6's CPU-vs-GPU bound, plus `4·2⁻²⁴·scale[i]`: the f32 forward error of a formula whose
/// terms (of total size `scale[i]`) cancel, where the reference is evaluated in f64.
fn assert_near_reference(got: &[f32], reference: &[f64], scale: Option<&[f64]>, what: &str) {
    let max = reference.iter().fold(0f64, |m, &v| m.max(v.abs()));
    for (i, (&g, &e)) in got.iter().zip(reference).enumerate() {
        let cancelling = scale.map_or(0.0, |s| 4.0 * 2f64.powi(-24) * s[i]);
        let bound = 1e-5 * max + 1e-5 * e.abs() + cancelling;
        assert!(
            (f64::from(g) - e).abs() <= bound,
            "{what}: element {i}: got {g:e}, the rule gives {e:e} (bound {bound:e})"
        );
    }
}

/// Both backends' outputs are the same numbers (for paths with no division on the GPU).
fn assert_same_values(cpu: &[f32], gpu: &[f32], what: &str) {
    for (i, (&c, &g)) in cpu.iter().zip(gpu).enumerate() {
        assert!(
            c == g || (c.is_nan() && g.is_nan()),
            "{what}: element {i}: cpu {c:e} ({:#010x}) gpu {g:e} ({:#010x})",
            c.to_bits(),
            g.to_bits()
        );
    }
}

/// One model of a sign-election scenario.
struct Voter {
    values: Vec<f32>,
    ty: FloatType,
    weight: f32,
    factor: f32,
    keep: Option<Vec<bool>>,
}

impl Voter {
    fn new(values: Vec<f32>, ty: FloatType, weight: f32) -> Self {
        Self {
            values,
            ty,
            weight,
            factor: 1.0,
            keep: None,
        }
    }
}

fn bit_mask(keep: &[bool]) -> BitMask {
    let mut words = vec![0u64; keep.len().div_ceil(64)];
    for (i, &k) in keep.iter().enumerate() {
        words[i / 64] |= u64::from(k) << (i % 64);
    }
    BitMask::from_words(words, keep.len())
}

/// ALGORITHMS.md §2.2's election with docs/gpu-cpu-agreement.md's flushing, from scratch:
/// votes rounded in f32 where mergekit rounds them, everything after that in f64.
fn election_reference(
    base: &[f32],
    models: &[Vec<f32>],
    voters: &[Voter],
    normalize: bool,
    lambda: f32,
) -> Vec<f64> {
    let flush = |x: f32| if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x };
    let flush64 = |x: f64| {
        if x.abs() < f64::from(f32::MIN_POSITIVE) {
            0.0
        } else {
            x
        }
    };
    (0..base.len())
        .map(|e| {
            let b = base[e];
            let votes: Vec<f32> = voters
                .iter()
                .zip(models)
                .map(|(v, x)| {
                    let keep = v.keep.as_ref().map_or(1.0, |k| f32::from(u8::from(k[e])));
                    let delta = flush(flush(x[e]) - flush(b));
                    flush(flush(v.weight) * flush(delta * keep * flush(v.factor)))
                })
                .collect();
            let total = votes.iter().fold(0.0, |t, &d| flush64(t + f64::from(d)));
            let negative = total < 0.0;
            let (mut mixed, mut divisor) = (0f64, 0f64);
            for (&d, v) in votes.iter().zip(voters) {
                if d != 0.0 && (d < 0.0) == negative {
                    mixed += f64::from(d);
                    divisor = flush64(divisor + f64::from(flush(v.weight)));
                }
            }
            if divisor == 0.0 {
                divisor = 1.0;
            }
            let m = if normalize { mixed / divisor } else { mixed };
            f64::from(b) + m * f64::from(lambda)
        })
        .collect()
}

/// Runs a sign election on both backends: the same values where the GPU does no division,
/// §6's bound where it does, and the CPU within §6's bound of the rule. Returns how many
/// elements had a total of exactly 0 with some vote cast.
fn check_election(gpu: &Gpu, what: &str, base: (&[f32], FloatType), voters: &[Voter]) -> usize {
    let base_tensor = Tensor::new(base.0, base.1);
    let tensors: Vec<Tensor> = voters
        .iter()
        .map(|v| Tensor::new(&v.values, v.ty))
        .collect();
    let views: Vec<TensorView<'_>> = tensors.iter().map(Tensor::view).collect();
    let base_values = decode(&base_tensor.view());
    let models: Vec<Vec<f32>> = views.iter().map(decode).collect();
    let masks: Vec<Option<BitMask>> = voters
        .iter()
        .map(|v| v.keep.as_deref().map(bit_mask))
        .collect();
    let weights: Vec<f32> = voters.iter().map(|v| v.weight).collect();
    let factors: Vec<f32> = voters.iter().map(|v| v.factor).collect();
    let n = base.0.len();
    for (normalize, lambda) in [(false, 1.0), (true, 1.0), (true, 0.9)] {
        let combine = Combine {
            base: base_tensor.view(),
            models: &views,
            weights: &weights,
            factors: &factors,
            masks: &masks,
            consensus: true,
            normalize,
            lambda,
            plain_divisor: 1.0,
        };
        let mut on_cpu = vec![f32::NAN; n];
        let mut on_gpu = vec![f32::NAN; n];
        Cpu.combine(&combine, &mut on_cpu).unwrap();
        gpu.combine(&combine, &mut on_gpu).unwrap();
        let what = format!("{what} (normalize {normalize}, lambda {lambda})");
        if !normalize {
            assert_same_values(&on_cpu, &on_gpu, &what);
        }
        assert_agree(&on_cpu, &on_gpu, &what);
        let reference = election_reference(&base_values, &models, voters, normalize, lambda);
        assert_near_reference(&on_cpu, &reference, None, &what);
    }
    // Totals of exactly zero among cast votes (rounded as the rule rounds them, summed
    // exactly): the scenario sits on the edge.
    (0..n)
        .filter(|&e| {
            let votes: Vec<f64> = models
                .iter()
                .zip(voters)
                .map(|(x, v)| {
                    let keep = v.keep.as_ref().map_or(1.0, |k| f32::from(u8::from(k[e])));
                    f64::from(v.weight * ((x[e] - base_values[e]) * keep * v.factor))
                })
                .collect();
            votes.iter().any(|&d| d != 0.0) && votes.iter().sum::<f64>() == 0.0
        })
        .count()
}

/// A scenario's values, repeated so the tensor spans several workgroups and ends mid-word.
fn repeated(values: &[f32]) -> Vec<f32> {
    values
        .iter()
        .copied()
        .cycle()
        .take(values.len() * 301)
        .collect()
}

#[test]
fn sign_election_agrees_on_sums_at_zero() {
    let Some(gpu) = gpu() else { return };
    let zeros = |ty| (repeated(&[0.0, 0.0]), ty);
    for ty in [FloatType::F32, FloatType::F16, FloatType::BF16] {
        let (base, base_ty) = zeros(ty);
        let eps = match ty {
            FloatType::F32 => f32::EPSILON,
            FloatType::F16 => 2f32.powi(-10),
            FloatType::BF16 => 2f32.powi(-7),
        };
        // Exactly 0 elects +1.
        let voters = [
            Voter::new(repeated(&[0.5, -0.25]), ty, 1.0),
            Voter::new(repeated(&[-0.5, 0.25]), ty, 1.0),
        ];
        let zero = check_election(
            gpu,
            &format!("exact zero, {ty:?}"),
            (&base, base_ty),
            &voters,
        );
        assert_eq!(zero, base.len());
        // One ulp of 1 below 0 elects −1, half an ulp above elects +1.
        let voters = [
            Voter::new(repeated(&[1.0, 1.0]), ty, 1.0),
            Voter::new(repeated(&[-(1.0 + eps), -(1.0 - eps / 2.0)]), ty, 1.0),
        ];
        check_election(gpu, &format!("±ulp, {ty:?}"), (&base, base_ty), &voters);
    }
}

/// `a + w·e` where the product rounds up: the separately rounded total is exactly 0 (+1, as
/// the CPU and mergekit elect), the fused one the negative rounding error (−1). A GPU that
/// fused it would pick the other model and change the element by a whole delta.
#[test]
fn sign_election_agrees_where_fusing_would_flip_the_sign() {
    let Some(gpu) = gpu() else { return };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (w, models) in [(0.3f32, 2), (0.7, 2), (0.3, 3)] {
        let mut up = Vec::new();
        while up.len() < 999 {
            let e: f32 = rng.random_range(-2.0..2.0);
            let exact = f64::from(w) * f64::from(e);
            let rounded = f64::from(w * e);
            // Rounded away from zero: the fused total has the other sign than the vote.
            if rounded.abs() > exact.abs() {
                up.push(e);
            }
        }
        let first: Vec<f32> = up.iter().map(|&e| -(w * e)).collect();
        let mut voters = vec![Voter::new(first, FloatType::F32, 1.0)];
        if models == 3 {
            // A zero vote in between: the fused add is then the third.
            voters.push(Voter::new(vec![0.0; up.len()], FloatType::BF16, 0.5));
        }
        voters.push(Voter::new(up.clone(), FloatType::F32, w));
        let base = vec![0.0; up.len()];
        let zero = check_election(
            gpu,
            &format!("fma edge, w = {w}, {models} models"),
            (&base, FloatType::F32),
            &voters,
        );
        assert_eq!(zero, up.len());
    }
}

#[test]
fn sign_election_agrees_on_denormals() {
    let Some(gpu) = gpu() else { return };
    let p = 2f32.powi(-120);
    let denormal = 1.0e-39f32;
    let f32s = |v: &[f32]| repeated(v);
    let scenarios: Vec<(&str, Vec<Voter>)> = vec![
        // A denormal vote never agrees: the element stays the base.
        (
            "a denormal delta",
            vec![
                Voter::new(f32s(&[denormal, -denormal]), FloatType::F32, 1.0),
                Voter::new(f32s(&[0.0, 0.0]), FloatType::F32, 1.0),
            ],
        ),
        (
            "a denormal bf16 delta",
            vec![Voter::new(
                f32s(&[denormal, -denormal]),
                FloatType::BF16,
                1.0,
            )],
        ),
        // A weight that makes a normal delta denormal, and a denormal weight.
        (
            "a vote made denormal by its weight",
            vec![
                Voter::new(f32s(&[1e-20, -1e-20]), FloatType::F32, 1e-20),
                Voter::new(f32s(&[1.0, -1.0]), FloatType::F32, denormal),
            ],
        ),
        // −2⁻¹⁴⁰ is a denormal total: +1.
        (
            "a negative denormal total",
            vec![
                Voter::new(f32s(&[p]), FloatType::F32, 1.0),
                Voter::new(f32s(&[-(p + 2f32.powi(-140))]), FloatType::F32, 1.0),
            ],
        ),
        // A denormal partial sum (2⁻¹²⁷) is flushed before the next vote: −1.
        (
            "a denormal partial sum",
            vec![
                Voter::new(f32s(&[p]), FloatType::F32, 1.0),
                Voter::new(f32s(&[-(p - 2f32.powi(-127))]), FloatType::F32, 1.0),
                Voter::new(
                    f32s(&[-(f32::MIN_POSITIVE + 2f32.powi(-149))]),
                    FloatType::F32,
                    1.0,
                ),
            ],
        ),
    ];
    for (what, voters) in &scenarios {
        let n = voters[0].values.len();
        check_election(gpu, what, (&vec![0.0; n], FloatType::F32), voters);
    }
    // The rule's outcome, spelled out: a denormal alone leaves the base.
    let base = Tensor::new(&[0.0], FloatType::F32);
    let lone = Tensor::new(&[denormal], FloatType::F32);
    let mut out = [f32::NAN];
    let combine = Combine {
        base: base.view(),
        models: &[lone.view()],
        weights: &[1.0],
        factors: &[1.0],
        masks: &[None],
        consensus: true,
        normalize: true,
        lambda: 1.0,
        plain_divisor: 1.0,
    };
    gpu.combine(&combine, &mut out).unwrap();
    assert_eq!(out[0].to_bits(), 0);
}

#[test]
fn sign_election_agrees_with_all_zero_and_masked_deltas() {
    let Some(gpu) = gpu() else { return };
    let n = 4099;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Multiples of 2⁻⁸ below 2⁻², exact in bf16, f16 and f32.
    let base: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-64i32..64) as f32 / 256.0)
        .collect();
    // Every model equal to the base: exactly the base, on both.
    let voters: Vec<Voter> = [FloatType::F16, FloatType::F32, FloatType::BF16]
        .into_iter()
        .map(|ty| Voter::new(base.clone(), ty, 0.5))
        .collect();
    check_election(gpu, "all-zero deltas", (&base, FloatType::BF16), &voters);
    // A masked-out +1 that would otherwise cancel a rescaled −0.5 (×2).
    let keep: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
    let mut plus = Voter::new(base.iter().map(|b| b + 0.25).collect(), FloatType::F32, 1.0);
    plus.keep = Some(keep);
    let mut minus = Voter::new(
        base.iter().map(|b| b - 0.125).collect(),
        FloatType::F16,
        1.0,
    );
    minus.factor = 2.0;
    let zero = check_election(
        gpu,
        "masked and rescaled",
        (&base, FloatType::BF16),
        &[plus, minus],
    );
    assert!(zero > n / 2);
}

/// Random task vectors in steps of 2⁻⁸ with power-of-two weights, in mixed dtypes, masked and
/// rescaled: every sum is exact, and thousands of totals are exactly 0. On one chunk and on
/// many.
#[test]
fn sign_election_agrees_on_quantized_families_in_mixed_dtypes() {
    let (Some(gpu), Some(split)) = (gpu(), small_chunks()) else {
        return;
    };
    let n = 64 * 1024 + 1;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let base: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-64i32..64) as f32 / 256.0)
        .collect();
    let types = [
        FloatType::F16,
        FloatType::F32,
        FloatType::BF16,
        FloatType::F32,
    ];
    let weights = [1.0, 0.5, 2.0, 1.0];
    let voters: Vec<Voter> = (0..4)
        .map(|m| {
            let values = base
                .iter()
                .map(|b| b + rng.random_range(-3i32..=3) as f32 / 256.0)
                .collect();
            let mut voter = Voter::new(values, types[m], weights[m]);
            if m == 1 {
                voter.keep = Some((0..n).map(|_| rng.random_bool(0.7)).collect());
            }
            if m == 3 {
                voter.factor = 2.0;
                voter.keep = Some((0..n).map(|_| rng.random_bool(0.5)).collect());
            }
            voter
        })
        .collect();
    for backend in [gpu, split] {
        let zero = check_election(
            backend,
            "quantized family",
            (&base, FloatType::BF16),
            &voters,
        );
        assert!(zero > 1000, "only {zero} totals of exactly 0");
    }
}

fn method(name: &str) -> &'static dyn MergeMethod {
    IMPLEMENTED
        .iter()
        .copied()
        .find(|m| m.spec().name == name)
        .unwrap_or_else(|| panic!("no method `{name}`"))
}

/// `method` on both backends.
fn merge_both(
    gpu: &Gpu,
    method: &dyn MergeMethod,
    base: Option<&Tensor>,
    models: &[Tensor],
    params: &TensorParams,
) -> (Vec<f32>, Vec<f32>) {
    let inputs = MethodInputs {
        tensor: "model.layers.3.mlp.up_proj.weight",
        seed: 42,
        base: base.map(Tensor::view),
        models: models.iter().map(Tensor::view).collect(),
        params,
    };
    let n = models[0].view().numel();
    let mut on_cpu = vec![f32::NAN; n];
    let mut on_gpu = vec![f32::NAN; n];
    method.merge_on(&Cpu, &inputs, &mut on_cpu).unwrap();
    method.merge_on(gpu, &inputs, &mut on_gpu).unwrap();
    (on_cpu, on_gpu)
}

/// `x` and a unit-free direction orthogonal to it with the same norm (both in f64).
fn plane(n: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let p: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let q: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let along = dot(&q, &p) / dot(&p, &p);
    let q: Vec<f64> = q.iter().zip(&p).map(|(q, p)| q - along * p).collect();
    let scale = (dot(&p, &p) / dot(&q, &q)).sqrt();
    (p, q.iter().map(|q| q * scale).collect())
}

/// `cos θ·p + sin θ·q`, in f32.
fn at_angle(p: &[f64], q: &[f64], theta: f64) -> Vec<f32> {
    p.iter()
        .zip(q)
        .map(|(p, q)| (theta.cos() * p + theta.sin() * q) as f32)
        .collect()
}

/// Two parameters on either side of a sign change of `g`, `g(above) > 0 ≥ g(below)`, each
/// with `|g|` in `[1e-11, 1e-8]`: on the edge, but not so close that an f64 evaluation's
/// rounding decides it. Bisects from a bracket, then walks outwards in growing steps.
fn straddle(mut lo: f64, mut hi: f64, g: impl Fn(f64) -> f64) -> (f64, f64) {
    let positive_at_lo = g(lo) > 0.0;
    assert_ne!(positive_at_lo, g(hi) > 0.0, "not a bracket");
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if (g(mid) > 0.0) == positive_at_lo {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (pos, neg) = if positive_at_lo { (lo, hi) } else { (hi, lo) };
    let inside = |v: f64| (1e-11..=1e-8).contains(&v.abs());
    let direction = (neg - pos).signum();
    let walk = |start: f64, away: f64, positive: bool| {
        let mut step = (neg - pos).abs().max(start.abs() * f64::EPSILON);
        let mut x = start;
        for _ in 0..200 {
            let v = g(x);
            if inside(v) && (v > 0.0) == positive {
                return x;
            }
            if v.abs() < 1e-11 || (v > 0.0) != positive {
                x += away * step;
                step *= 1.5;
            } else {
                // Overshot: back off.
                step /= 3.0;
                x -= away * step;
            }
        }
        panic!(
            "no point with |g| in [1e-11, 1e-8] near {start}: g = {:e}",
            g(x)
        );
    };
    (walk(pos, -direction, true), walk(neg, direction, false))
}

/// SLERP's weights of `a` and `b` at cosine `cos`, linear or spherical.
fn slerp_weights(cos: f64, t: f64, linear: bool) -> (f64, f64) {
    if linear {
        (1.0 - t, t)
    } else {
        let theta = cos.acos();
        (
            ((1.0 - t) * theta).sin() / theta.sin(),
            (t * theta).sin() / theta.sin(),
        )
    }
}

/// ALGORITHMS.md §2.5 in f64 from the decoded inputs: the cosine, the branch (colinear or
/// not), the output, and each element's sum of |terms| (for the f32 forward error).
fn slerp_reference(a: &[f32], b: &[f32], t: f64) -> (f64, bool, Vec<f64>, Vec<f64>) {
    let dot = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(&x, &y)| f64::from(x) * f64::from(y))
            .sum::<f64>()
    };
    let norm = |x: &[f32]| {
        let n = dot(x, x).sqrt();
        if n <= 1e-8 { 1.0 } else { n }
    };
    let cos = (dot(a, b) / (norm(a) * norm(b))).clamp(-1.0, 1.0);
    let colinear = cos.abs() > 0.9995;
    let (ca, cb) = slerp_weights(cos, t, colinear);
    let out = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| ca * f64::from(x) + cb * f64::from(y))
        .collect();
    let scale = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (ca * f64::from(x)).abs() + (cb * f64::from(y)).abs())
        .collect();
    (cos, colinear, out, scale)
}

/// `|cos| − 0.9995` as SLERP computes it, from the CPU backend's Gram matrix.
fn slerp_edge(a: &Tensor, b: &Tensor) -> f64 {
    let g = Cpu.gram(&[a.view(), b.view()], None).unwrap();
    (g[1] / (g[0].sqrt() * g[3].sqrt())).abs() - 0.9995
}

/// SLERP's colinear fallback: exactly parallel and anti-parallel inputs, and |cos| a hair
/// either side of 0.9995 (also near −0.9995, where the spherical weights are ≈ 30 and cancel).
/// The two branches differ by ≈ 6e-5 of the output there, far beyond §6's 1e-5, so the
/// backends must take the same one: they do, from the same Gram bits.
#[test]
fn slerp_takes_the_same_branch_at_its_colinear_threshold() {
    let Some(gpu) = gpu() else { return };
    let slerp = method("slerp");
    let t = 0.3;
    let params = TensorParams::from_values(vec![("t", Value::Float(t))], vec![vec![]]);
    let n = 20_000;
    let (p, q) = plane(n, 21);
    let a = Tensor::new(&at_angle(&p, &q, 0.0), FloatType::F32);
    let a_values = decode(&a.view());
    let mut cases: Vec<(String, Tensor)> = vec![
        (
            "parallel (b = 2a)".into(),
            Tensor::new(
                &a_values.iter().map(|x| 2.0 * x).collect::<Vec<_>>(),
                FloatType::F32,
            ),
        ),
        ("identical".into(), Tensor::new(&a_values, FloatType::BF16)),
        (
            "anti-parallel (b = −a)".into(),
            Tensor::new(
                &a_values.iter().map(|x| -x).collect::<Vec<_>>(),
                FloatType::F32,
            ),
        ),
    ];
    let threshold = 0.9995f64.acos();
    for (lo, hi, near) in [
        (threshold - 2e-3, threshold + 2e-3, "0.9995"),
        (
            std::f64::consts::PI - threshold - 2e-3,
            std::f64::consts::PI - threshold + 2e-3,
            "−0.9995",
        ),
    ] {
        let make = |theta: f64| Tensor::new(&at_angle(&p, &q, theta), FloatType::F32);
        let (above, below) = straddle(lo, hi, |theta| slerp_edge(&a, &make(theta)));
        cases.push((format!("|cos| just above {near}"), make(above)));
        cases.push((format!("|cos| just below {near}"), make(below)));
    }
    for (what, b) in &cases {
        let (on_cpu, on_gpu) = merge_both(gpu, slerp, Some(&a), std::slice::from_ref(b), &params);
        assert_same_values(&on_cpu, &on_gpu, what);
        assert_agree(&on_cpu, &on_gpu, what);
        let b_values = decode(&b.view());
        let (cos, colinear, reference, scale) = slerp_reference(&a_values, &b_values, t);
        assert_near_reference(&on_cpu, &reference, Some(&scale), what);
        if what.contains("just") {
            // The edge is real: the other branch is far outside the bound.
            assert_eq!(colinear, what.contains("above"), "{what}");
            let edge = slerp_edge(&a, b);
            assert!(edge.abs() <= 1e-8, "{what}: |cos| − 0.9995 = {edge:e}");
            let (ca, cb) = slerp_weights(cos, t, !colinear);
            let max = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
            let worst = a_values
                .iter()
                .zip(&b_values)
                .zip(&on_cpu)
                .map(|((&x, &y), &o)| (ca * f64::from(x) + cb * f64::from(y) - f64::from(o)).abs())
                .fold(0f64, f64::max);
            assert!(
                worst > 3e-5 * max,
                "{what}: the branches differ by only {worst:e}"
            );
        }
    }
}

/// Model Stock's denominator `1 + (N − 1)·c` as model_stock.rs computes it from the CPU
/// backend's Gram matrix.
fn stock_denominator(base: &Tensor, models: &[Tensor]) -> f64 {
    let views: Vec<_> = models.iter().map(Tensor::view).collect();
    let g = Cpu.gram(&views, Some(base.view())).unwrap();
    let n = models.len();
    let (mut sum, mut pairs) = (0.0, 0.0);
    for i in 0..n {
        for j in i + 1..n {
            let norms = (g[i * n + i].sqrt() * g[j * n + j].sqrt()).max(1e-6);
            sum += (g[i * n + j] / norms).clamp(-1.0, 1.0);
            pairs += 1.0;
        }
    }
    1.0 + (n as f64 - 1.0) * sum / pairs
}

/// ALGORITHMS.md §2.9 in f64 from the decoded inputs (task vectors subtracted in f32, as the
/// rule computes them): the ratio t, the output, and each element's sum of |terms|.
fn stock_reference(base: &[f32], models: &[Vec<f32>]) -> (f64, Vec<f64>, Vec<f64>) {
    let n = models.len();
    let offsets: Vec<Vec<f64>> = models
        .iter()
        .map(|x| {
            x.iter()
                .zip(base)
                .map(|(&x, &b)| f64::from(x - b))
                .collect()
        })
        .collect();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let (mut sum, mut pairs) = (0.0, 0.0);
    for i in 0..n {
        for j in i + 1..n {
            let norms = (dot(&offsets[i], &offsets[i]).sqrt()
                * dot(&offsets[j], &offsets[j]).sqrt())
            .max(1e-6);
            sum += (dot(&offsets[i], &offsets[j]) / norms).clamp(-1.0, 1.0);
            pairs += 1.0;
        }
    }
    let c = sum / pairs;
    let den = 1.0 + (n as f64 - 1.0) * c;
    let t = if den.abs() < 1e-6 {
        0.0
    } else {
        n as f64 * c / den
    };
    let mut out = Vec::with_capacity(base.len());
    let mut scale = Vec::with_capacity(base.len());
    for (e, &b) in base.iter().enumerate() {
        let mean = models.iter().map(|x| f64::from(x[e])).sum::<f64>() / n as f64;
        out.push(t * mean + (1.0 - t) * f64::from(b));
        let terms: f64 = models.iter().map(|x| f64::from(x[e]).abs()).sum::<f64>();
        // Twice the terms: the ratio and both coefficients are rounded to f32 too.
        scale.push(2.0 * ((t / n as f64).abs() * terms + (1.0 - t).abs() * f64::from(b).abs()));
    }
    (t, out, scale)
}

/// Model Stock's guard `|1 + (N − 1)·c| < 1e-6 → t = 0`: task vectors whose unit vectors sum
/// to exactly zero, and the denominator a hair either side of 1e-6, with 2 and 3 models. Just
/// above the guard t is ≈ −10⁶, so a flipped decision, or a ratio from a Gram matrix a few
/// ulps off, would move the output by orders of magnitude; both backends decide on the same
/// Gram bits and weigh in the same order, so they return the same values.
#[test]
fn model_stock_decides_its_denominator_guard_alike() {
    let Some(gpu) = gpu() else { return };
    let stock = method("model_stock");
    let params = TensorParams::from_values(
        vec![("filter_wise", Value::Bool(false))],
        vec![vec![], vec![], vec![]],
    );
    let n = 40_000;
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let base_values: Vec<f32> = (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
    let base = Tensor::new(&base_values, FloatType::F32);
    let (p, q) = plane(n, 32);
    let with_offsets = |offsets: &[Vec<f64>]| -> Vec<Tensor> {
        offsets
            .iter()
            .map(|o| {
                let values: Vec<f32> = base_values
                    .iter()
                    .zip(o)
                    .map(|(&b, &o)| (f64::from(b) + 0.01 * o) as f32)
                    .collect();
                Tensor::new(&values, FloatType::F32)
            })
            .collect()
    };
    // Two models: o₂ = −o₁ + ε·q; the denominator is ≈ ε²/2.
    let two = |eps: f64| {
        let second: Vec<f64> = p.iter().zip(&q).map(|(p, q)| -p + eps * q).collect();
        with_offsets(&[p.clone(), second])
    };
    // Three models at 0, ±α in the (p, q) plane; the denominator is ≈ (α − 2π/3)².
    let three = |alpha: f64| {
        let at = |a: f64| -> Vec<f64> {
            p.iter()
                .zip(&q)
                .map(|(p, q)| a.cos() * p + a.sin() * q)
                .collect()
        };
        with_offsets(&[at(0.0), at(alpha), at(-alpha)])
    };
    let third = 2.0 * std::f64::consts::PI / 3.0;
    let mut cases: Vec<(String, Vec<Tensor>)> = Vec::new();
    // Exactly opposite task vectors (the base is 0 there, so the subtraction is exact).
    let zero = Tensor::new(&vec![0.0; n], FloatType::F32);
    let opposite = |sign: f32| -> Tensor {
        Tensor::new(
            &p.iter().map(|&p| sign * p as f32).collect::<Vec<_>>(),
            FloatType::F32,
        )
    };
    cases.push((
        "two opposite models".into(),
        vec![opposite(1.0), opposite(-1.0)],
    ));
    cases.push(("three at 120°".into(), three(third)));
    let guard = |models: &[Tensor]| stock_denominator(&base, models) - 1e-6;
    let (above, below) = straddle(2e-3, 1e-3, |eps| guard(&two(eps)));
    cases.push(("two models, just above the guard".into(), two(above)));
    cases.push(("two models, just below the guard".into(), two(below)));
    let (above, below) = straddle(third + 2e-3, third + 5e-4, |alpha| guard(&three(alpha)));
    cases.push(("three models, just above the guard".into(), three(above)));
    cases.push(("three models, just below the guard".into(), three(below)));
    for (what, models) in &cases {
        let base = if what.contains("opposite") {
            &zero
        } else {
            &base
        };
        let (on_cpu, on_gpu) = merge_both(gpu, stock, Some(base), models, &params);
        assert_same_values(&on_cpu, &on_gpu, what);
        assert_agree(&on_cpu, &on_gpu, what);
        let decoded: Vec<Vec<f32>> = models.iter().map(|m| decode(&m.view())).collect();
        let base_values = decode(&base.view());
        let (t, reference, scale) = stock_reference(&base_values, &decoded);
        let what = &format!(
            "{what} (t = {t:e}, CPU's denominator − 1e-6 = {:e})",
            stock_denominator(base, models) - 1e-6
        );
        assert_near_reference(&on_cpu, &reference, Some(&scale), what);
        if what.contains("above") {
            assert!(t.abs() > 1e5, "{what}: t = {t:e}");
            let edge = stock_denominator(base, models) - 1e-6;
            assert!(edge > 0.0 && edge <= 1e-8, "{what}: den − 1e-6 = {edge:e}");
        } else {
            // Guarded: exactly the base, on both.
            assert_eq!(t, 0.0, "{what}");
            assert_same_values(&on_cpu, &base_values, what);
        }
    }
}

/// Methods that run on the CPU inside a GPU merge (their thresholds: nuslerp's colinearity,
/// multislerp's zero mean, karcher's tolerance, sce's uniform fallback, filter-wise Model
/// Stock's per-row guard) give the same bits on either backend, on their edges too.
#[test]
fn methods_that_stay_on_the_cpu_match_it_bit_for_bit_on_their_edges() {
    let Some(gpu) = gpu() else { return };
    let n = 64 * 50;
    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let base_values: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-64i32..64) as f32 / 256.0)
        .collect();
    let offset: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-8i32..8) as f32 / 1024.0)
        .collect();
    let shifted = |k: f32| -> Tensor {
        let values: Vec<f32> = base_values
            .iter()
            .zip(&offset)
            .map(|(b, o)| b + k * o)
            .collect();
        Tensor::new(&values, FloatType::F32)
    };
    let base = Tensor::new(&base_values, FloatType::F32);
    let cases: [(&str, Vec<Tensor>); 5] = [
        ("nuslerp", vec![shifted(1.0), shifted(2.0)]),
        ("multislerp", vec![shifted(1.0), shifted(-1.0)]),
        ("karcher", vec![shifted(1.0), shifted(1.0)]),
        ("sce", vec![shifted(1e-3), shifted(-1e-3)]),
        ("model_stock", vec![shifted(1.0), shifted(-1.0)]),
    ];
    for (name, models) in &cases {
        let m = method(name);
        let params = if *name == "model_stock" {
            TensorParams::from_values(
                vec![("filter_wise", Value::Bool(true))],
                vec![vec![]; models.len()],
            )
        } else {
            params_for(m, models.len(), models.len())
        };
        let with_base = m.spec().base != BaseUse::Ignored;
        let (on_cpu, on_gpu) = merge_both(gpu, m, with_base.then_some(&base), models, &params);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&on_cpu), bits(&on_gpu), "{name}");
    }
}

/// nearswap's `max(|a − b|, 1e-6)` and its clamp are continuous, so its edges (equal inputs,
/// a gap of 1e-6 give or take an ulp, t equal to the gap) only ever round differently.
#[test]
fn nearswap_agrees_at_its_floor_and_clamp() {
    let Some(gpu) = gpu() else { return };
    let ns = method("nearswap");
    let n = 7 * 301;
    let mut rng = ChaCha8Rng::seed_from_u64(51);
    let a_values: Vec<f32> = (0..n).map(|_| rng.random_range(0.25..0.5)).collect();
    let gaps = [0.0, 1e-6, -1e-6, 1.0000001e-6, 0.9999999e-6, 3e-6, 2e-7];
    let b_values: Vec<f32> = a_values
        .iter()
        .enumerate()
        .map(|(i, &a)| a + gaps[i % gaps.len()])
        .collect();
    let a = Tensor::new(&a_values, FloatType::F32);
    let b = Tensor::new(&b_values, FloatType::F32);
    for t in [2e-7, 1e-6, 3e-6, 0.0] {
        let params = TensorParams::from_values(vec![("t", Value::Float(t))], vec![vec![]]);
        let (on_cpu, on_gpu) = merge_both(gpu, ns, Some(&a), std::slice::from_ref(&b), &params);
        let what = format!("nearswap, t = {t:e}");
        assert_agree(&on_cpu, &on_gpu, &what);
        let t = f64::from(t as f32);
        let (reference, scale): (Vec<f64>, Vec<f64>) = a_values
            .iter()
            .zip(&b_values)
            .map(|(&a, &b)| {
                let gap = f64::from((a - b).abs()).max(f64::from(1e-6f32));
                let w = (t / gap).clamp(0.0, 1.0);
                let (a, b) = (f64::from(a), f64::from(b));
                (w * b + (1.0 - w) * a, (w * b).abs() + ((1.0 - w) * a).abs())
            })
            .unzip();
        assert_near_reference(&on_cpu, &reference, Some(&scale), &what);
    }
}

/// Every f16 and bf16 bit pattern decodes in the kernel to the CPU's value (subnormal halves
/// are built from their bits, with no float arithmetic a device could flush or fuse).
#[test]
fn every_half_bit_pattern_decodes_as_on_the_cpu() {
    let Some(gpu) = gpu() else { return };
    for ty in [FloatType::F16, FloatType::BF16] {
        let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let info = TensorInfo {
            name: "every pattern".to_owned(),
            dtype: ty.dtype(),
            shape: vec![1 << 16],
            shard: 0,
            start: 0,
            end: bytes.len(),
        };
        let view = TensorView::new(&info, &bytes);
        let expected = decode(&view);
        let mut got = vec![0f32; 1 << 16];
        gpu.weighted_sum(&[view], &[1.0], None, &mut got).unwrap();
        for (bits, (&e, &g)) in expected.iter().zip(&got).enumerate() {
            // 0 + x·1 turns −0 into +0; NaN payloads may differ.
            assert!(
                e == g || (e.is_nan() && g.is_nan()),
                "{ty:?} {bits:#06x}: cpu {e:e}, gpu {g:e}"
            );
        }
    }
}
