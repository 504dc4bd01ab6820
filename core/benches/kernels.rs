//! Throughput of the backend operations, per kernel: GB/s moved (inputs read + output written)
//! from host memory to host memory through the [`Backend`] trait, and for the GPU also with
//! the data already on the device (the kernel alone, against the adapter's memory bandwidth).
//!
//!     cargo bench -p mergescope-core --bench kernels -- [--backend cpu|gpu] [--elements N]
//!
//! `--backend gpu` takes any adapter, a software one included (lavapipe figures say nothing
//! about a GPU). Inputs are bf16, as Hub checkpoints are.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::time::Instant;

use mergescope_core::backend::{
    AdapterPolicy, Backend, Combine, Cpu, Gpu, GpuOptions, gpu::Kernel,
};
use mergescope_core::checkpoint::{TensorInfo, TensorView};
use mergescope_core::dtype::{FloatType, TensorBytes};
use mergescope_core::merge::select::BitMask;

struct Tensor {
    info: TensorInfo,
    bytes: Vec<u8>,
}

impl Tensor {
    fn bf16(n: usize, salt: u32) -> Self {
        let values: Vec<f32> = (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt) as f32 / 4.3e9) - 0.5
            })
            .collect();
        let bytes = TensorBytes::encode(values, FloatType::BF16)
            .as_bytes()
            .to_vec();
        Self {
            info: TensorInfo {
                name: format!("t{salt}"),
                dtype: FloatType::BF16.dtype(),
                shape: vec![n],
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

fn best_of<F: FnMut()>(runs: usize, mut f: F) -> f64 {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let on_gpu = value("--backend").as_deref() == Some("gpu");
    let n: usize = value("--elements").map_or(16 << 20, |v| v.parse().expect("--elements N"));

    let tensors: Vec<Tensor> = (0..4).map(|k| Tensor::bf16(n, k)).collect();
    let views: Vec<TensorView<'_>> = tensors.iter().map(Tensor::view).collect();
    let masks: Vec<Option<BitMask>> = (0..3u64)
        .map(|k| {
            let words = (0..n.div_ceil(64) as u64)
                .map(|w| (w.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ k).rotate_left(17))
                .collect();
            Some(BitMask::from_words(words, n))
        })
        .collect();
    let mut out = vec![0f32; n];

    let gpu = on_gpu.then(|| {
        Gpu::request(AdapterPolicy::AllowSoftware, GpuOptions::default())
            .unwrap_or_else(|e| panic!("{e}"))
    });
    let mut backends: Vec<&dyn Backend> = vec![&Cpu];
    if let Some(gpu) = &gpu {
        backends.push(gpu);
    }
    println!(
        "{n} elements per tensor, bf16 inputs, f32 output; GB/s = (inputs read + output written) / time"
    );
    println!(
        "{:<14} {:<48} {:>8} {:>10}",
        "kernel", "backend", "ms", "GB/s"
    );
    let out_bytes = (n * 4) as f64;
    for backend in &backends {
        let name = backend.describe();
        let report = |kernel: &str, inputs: usize, seconds: f64, writes: bool| {
            let moved = (inputs * n * 2) as f64 + if writes { out_bytes } else { 0.0 };
            println!(
                "{kernel:<14} {name:<48} {:>8.1} {:>10.2}",
                seconds * 1e3,
                moved / seconds / 1e9
            );
        };
        let t = best_of(3, || {
            backend
                .weighted_sum(&views, &[0.4, 0.3, 0.2, 0.1], Some(1.0), &mut out)
                .unwrap();
        });
        report("weighted_sum", 4, t, true);
        let combine = Combine {
            base: views[0].clone(),
            models: &views[1..],
            weights: &[0.5, 0.3, 0.2],
            factors: &[2.0, 2.0, 2.0],
            masks: &masks,
            consensus: true,
            normalize: true,
            lambda: 1.0,
            plain_divisor: 1.0,
        };
        let t = best_of(3, || backend.combine(&combine, &mut out).unwrap());
        report("combine (ties)", 4, t, true);
        let t = best_of(3, || {
            backend.gram(&views[1..], Some(views[0].clone())).unwrap();
        });
        report("gram", 4, t, false);
        let t = best_of(3, || {
            backend
                .nearswap(views[0].clone(), views[1].clone(), 0.01, &mut out)
                .unwrap();
        });
        report("nearswap", 2, t, true);
    }

    if let Some(gpu) = &gpu {
        println!(
            "\nresident on {} (one chunk uploaded once, kernel alone):",
            gpu.describe()
        );
        println!(
            "{:<14} {:>12} {:>10} {:>10}",
            "kernel", "elements", "us", "GB/s"
        );
        for (kernel, inputs) in [
            (Kernel::WeightedSum, 4),
            (Kernel::Combine, 4),
            (Kernel::Gram, 4),
            (Kernel::Nearswap, 2),
        ] {
            // The Gram kernel needs SHADER_F64; on a device without it the host computes Gram
            // matrices and there is no kernel to time.
            let (len, seconds) = match gpu.time_resident(kernel, &views[..inputs], 20) {
                Ok(timed) => timed,
                Err(e) => {
                    println!("{:<14} not timed: {e}", kernel.name());
                    continue;
                }
            };
            let writes = if kernel == Kernel::Gram { 0 } else { 4 };
            let moved = (len * (inputs * 2 + writes)) as f64;
            println!(
                "{:<14} {len:>12} {:>10.1} {:>10.2}",
                kernel.name(),
                seconds * 1e6,
                moved / seconds / 1e9
            );
        }
    }
}
