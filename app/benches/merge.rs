//! The merge and analysis benchmark: mergescope against the I/O floor and against mergekit, on
//! a generated Llama-shaped family (base + 3 fine-tunes, bf16), with the page cache dropped
//! before every timed step when run as root. After the merges, `mergescope analyze` is timed
//! against the read floor (sensitivity + interference), then with spectra at rank 32.
//!
//!     sudo -E cargo bench -p mergescope --bench merge
//!
//! Environment:
//! - `MERGESCOPE_BENCH_DIR`: where families and outputs go (default `target/bench-data`; needs
//!   about 7 GB per size, more with `MERGESCOPE_BENCH_LARGE`).
//! - `MERGEKIT_YAML`: path of mergekit's `mergekit-yaml` (e.g. from
//!   `python3 -m venv v && v/bin/pip install mergekit==0.1.5`); mergekit is skipped without it.
//! - `MERGESCOPE_BENCH_METHODS`: comma-separated subset of `linear,ties,dare_ties`.
//! - `MERGESCOPE_BENCH_ANALYZE=0`: skip the analysis timings; `MERGESCOPE_BENCH_SPECTRA=0`:
//!   skip only the (minute-long) spectra timing.
//! - `MERGESCOPE_BENCH_LARGE=1`: also run mergescope on a family with twice the layers, to show
//!   that peak memory does not grow with model size.
//! - `MERGESCOPE_BENCH_WARM_ONLY=1`: only the warm figures (memory bandwidth, the page-cache
//!   read and the in-process engine per method), in seconds rather than minutes: the loop to
//!   iterate on the engine's kernels with. Needs no root.
//!
//! Arguments (after `--`): `--backend gpu` also runs each merge with `--backend gpu` and reports
//! its wall time next to the CPU backend's (the other columns are the CPU backend's).
//!
//! Each merge runs cold twice: as a user runs it (`MERGESCOPE_READS` unset, `auto`, which reads
//! a cold family of a gigabyte or more directly into reused buffers, as the bench's is), and
//! through the memory maps and the page cache (`MERGESCOPE_READS=mapped`, what `auto` does for a
//! family already cached, or a small one). The analysis is timed both ways too.
//!
//! Each merge also runs warm (right after its cold run, inputs in the page cache): its wall and
//! CPU time, and the bytes it moves (inputs read + output written) per second against this
//! machine's memory bandwidth, measured in the same run with a copy kernel. The warm command
//! still writes its output to disk, so it cannot beat the disk's write speed; the "engine"
//! columns run the same merge in-process with the output dropped ([`engine::stream`]), which
//! is what the engine itself reaches at memory speed. The engine is also set against reading
//! its inputs out of the page cache through fresh maps on every core (populated 8 MiB at a
//! time and read a byte per cache line, as the read-ahead does before any arithmetic): the
//! least a warm merge must do, and on a VM often well below the copy kernel's bandwidth.
//!
//! Wall time, CPU time and peak RSS come from `/usr/bin/time` around each command.

#![allow(clippy::print_stdout)] // a benchmark reports its figures on stdout

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::merge::engine;
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::synth::{LlamaShape, SynthFamily};

const MERGESCOPE: &str = env!("CARGO_BIN_EXE_mergescope");

/// Writes `method`'s recipe as `dir/METHOD.yml`, where [`merge`] and [`engine_warm`] read it.
fn write_recipe(dir: &Path, method: &str) {
    std::fs::write(dir.join(format!("{method}.yml")), recipe(method)).expect("recipe");
}

fn recipe(method: &str) -> String {
    let density = |d: f64| {
        if method == "linear" {
            String::new()
        } else {
            format!(", density: {d}")
        }
    };
    let base = if method == "linear" {
        ""
    } else {
        "base_model: family/base\n"
    };
    let base_entry = if method == "linear" {
        "  - model: family/base\n    parameters: {weight: 0.4}\n"
    } else {
        ""
    };
    format!(
        "merge_method: {method}\n{base}models:\n{base_entry}  - model: family/ft_1\n    parameters: {{weight: 0.5{}}}\n  - model: family/ft_2\n    parameters: {{weight: 0.3{}}}\n  - model: family/ft_3\n    parameters: {{weight: 0.2{}}}\n",
        density(0.5),
        density(0.4),
        density(0.6)
    )
}

/// CPU seconds (user + system) this process has used so far.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at `)`; utime and stime
    // are the 14th and 15th fields, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    ticks(11)
        .zip(ticks(12))
        .map_or(0.0, |(u, s)| (u + s) / 100.0)
}

/// The merge engine alone, warm: `method`'s recipe planned and streamed in this process
/// with every merged tensor dropped instead of written, so the figure shows what the engine
/// reaches at memory speed, apart from the disk the output goes to. Best of three: (wall s,
/// CPU s).
fn engine_warm(dir: &Path, method: &str) -> (f64, f64) {
    let options = PlanOptions {
        cwd: dir.to_path_buf(),
        random_seed: Some(0),
        truncate_vocab: false,
    };
    let plan = MergePlan::from_file(&dir.join(format!("{method}.yml")), &options).expect("plan");
    let mut best = (f64::INFINITY, 0.0);
    for _ in 0..3 {
        let (cpu, start) = (process_cpu_seconds(), Instant::now());
        let mut sunk = 0usize;
        engine::stream(&plan, &Cpu, &Job::default(), |bytes| {
            sunk += bytes.len();
            Ok(())
        })
        .expect("merge");
        let wall = start.elapsed().as_secs_f64();
        assert!(sunk > 0);
        if wall < best.0 {
            best = (wall, process_cpu_seconds() - cpu);
        }
    }
    best
}

/// Drops the page cache; `false` when not permitted (then figures are warm-cache figures).
fn drop_caches() -> bool {
    let synced = Command::new("sync").status().is_ok_and(|s| s.success());
    synced && std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

struct Measured {
    seconds: f64,
    /// User + system time of the command.
    cpu_seconds: f64,
    peak_rss_mib: f64,
}

/// `mergescope merge METHOD.yml` into `out-mergescope` in `dir`, timed.
fn merge(dir: &Path, method: &str, backend: &str) -> Measured {
    merge_reading(dir, method, backend, "mapped")
}

/// [`merge`] with `MERGESCOPE_READS=reads` (`auto`, `mapped` or `direct`).
fn merge_reading(dir: &Path, method: &str, backend: &str, reads: &str) -> Measured {
    timed_with(
        dir,
        &[("MERGESCOPE_READS", reads)],
        MERGESCOPE,
        &[
            "merge",
            &format!("{method}.yml"),
            "--out",
            "out-mergescope",
            "--force",
            "--random-seed",
            "0",
            "--backend",
            backend,
        ],
    )
}

/// Runs `program args` under `/usr/bin/time -f "%e %M"` in `cwd`.
fn timed(cwd: &Path, program: &str, args: &[&str]) -> Measured {
    timed_with(cwd, &[], program, args)
}

/// [`timed`] with extra environment variables.
fn timed_with(cwd: &Path, env: &[(&str, &str)], program: &str, args: &[&str]) -> Measured {
    let output = Command::new("/usr/bin/time")
        .args(["-f", "TIMED %e %M %U %S", program])
        .args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("/usr/bin/time runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stderr}"
    );
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("TIMED "))
        .expect("time's line");
    let mut fields = line.split_whitespace().skip(1);
    let seconds = fields.next().and_then(|s| s.parse().ok()).expect("seconds");
    let kib: f64 = fields.next().and_then(|s| s.parse().ok()).expect("KiB");
    let mut cpu = || -> f64 { fields.next().and_then(|s| s.parse().ok()).expect("CPU s") };
    let cpu_seconds = cpu() + cpu();
    Measured {
        seconds,
        cpu_seconds,
        peak_rss_mib: kib / 1024.0,
    }
}

/// This machine's memory bandwidth in bytes per second: the best of five copies of a 512 MiB
/// buffer on one thread per core, counting the bytes read and the bytes written.
fn memory_bandwidth() -> f64 {
    const BYTES: usize = 512 << 20;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let source = vec![1u8; BYTES];
    let mut target = vec![0u8; BYTES];
    let part = BYTES.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (from, to) in source.chunks(part).zip(target.chunks_mut(part)) {
                scope.spawn(move || to.copy_from_slice(from));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
        std::hint::black_box(&target);
    }
    2.0 * BYTES as f64 / best
}

/// Seconds to read every input once: the faster of sequential `read` calls of 8 MiB and of
/// mapping each file and populating the map 8 MiB at a time. The two take turns being faster
/// from machine to machine (on this project's VM the mapped read was 2.2-2.5 s where `read`
/// took 4-10 s, most of it system time copying out of the page cache), and the floor is what
/// the disk can deliver, so the better one counts.
fn read_floor(inputs: &[PathBuf]) -> f64 {
    drop_caches();
    let start = Instant::now();
    let mut buffer = vec![0u8; 8 << 20];
    for path in inputs {
        let mut file = std::fs::File::open(path).expect("input");
        while file.read(&mut buffer).expect("read") > 0 {}
    }
    let read = start.elapsed().as_secs_f64();
    drop_caches();
    let start = Instant::now();
    if !read_mapped(inputs) {
        return read;
    }
    let mapped = start.elapsed().as_secs_f64();
    println!("read floor: read() {read:.2} s, mapped {mapped:.2} s");
    read.min(mapped)
}

/// Maps each input and populates the map 8 MiB at a time; `false` without
/// `MADV_POPULATE_READ` (Linux < 5.14).
fn read_mapped(inputs: &[PathBuf]) -> bool {
    for path in inputs {
        let file = std::fs::File::open(path).expect("input");
        // SAFETY: a read-only private map of a file nothing writes to during the benchmark.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
        let mut at = 0;
        while at < map.len() {
            let len = (8 << 20).min(map.len() - at);
            if map
                .advise_range(memmap2::Advice::PopulateRead, at, len)
                .is_err()
            {
                return false;
            }
            at += len;
        }
    }
    true
}

/// Reads every input once ([`read_floor`]) and writes `out_bytes` with fsync.
fn io_floor(inputs: &[PathBuf], out_bytes: u64, scratch: &Path) -> (f64, f64) {
    let read = read_floor(inputs);
    drop_caches();
    let start = Instant::now();
    write_synced(scratch, out_bytes);
    let write = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(scratch);
    (read, write)
}

/// Writes `bytes` bytes to a new file at `path` in 8 MiB calls, then fsyncs it.
fn write_synced(path: &Path, bytes: u64) {
    let buffer = vec![1u8; 8 << 20];
    let mut file = std::fs::File::create(path).expect("scratch file");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buffer.len() as u64) as usize;
        file.write_all(&buffer[..n]).expect("write");
        left -= n as u64;
    }
    file.sync_all().expect("fsync");
}

/// Seconds to read every input once while the output's bytes are written (with fsync) at the
/// same time, as a streaming merge must: on some disks this is slower than the read and the
/// write one after the other (on this project's VM, in the same run: 4.0-4.4 s against
/// 3.4-4.2 s), and then no merge that overlaps its reads and writes can reach the floor.
fn concurrent_io(inputs: &[PathBuf], out_bytes: u64, scratch: &Path) -> f64 {
    drop_caches();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| write_synced(scratch, out_bytes));
        // As the read floor does where the kernel cannot populate maps.
        if !read_mapped(inputs) {
            let mut buffer = vec![0u8; 8 << 20];
            for path in inputs {
                let mut file = std::fs::File::open(path).expect("input");
                while file.read(&mut buffer).expect("read") > 0 {}
            }
        }
    });
    let seconds = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(scratch);
    seconds
}

/// Read-only maps of `inputs`, nothing populated yet.
fn map_inputs(inputs: &[PathBuf]) -> Vec<memmap2::Mmap> {
    inputs
        .iter()
        .map(|path| {
            let file = std::fs::File::open(path).expect("input");
            // SAFETY: a read-only private map of a file nothing writes to during the benchmark.
            #[allow(unsafe_code)]
            let map = unsafe { memmap2::Mmap::map(&file) }.expect("map");
            map
        })
        .collect()
}

/// Seconds of one pass reading a byte per cache line of every input, right after the inputs
/// were read into the page cache, and of the same pass again. On a VM whose hypervisor takes
/// back the memory the guest frees, the first touch of freshly cached pages traps to the host,
/// which the second pass does not pay; a cold merge reading through the maps pays it too.
fn fresh_page_touch(inputs: &[PathBuf]) -> (f64, f64) {
    drop_caches();
    let maps = map_inputs(inputs);
    for map in &maps {
        let _ = map.advise(memmap2::Advice::PopulateRead);
    }
    let sweep = || {
        let start = Instant::now();
        let mut fold = 0u8;
        for map in &maps {
            for &byte in map.iter().step_by(64) {
                fold ^= byte;
            }
        }
        std::hint::black_box(fold);
        start.elapsed().as_secs_f64()
    };
    (sweep(), sweep())
}

/// Seconds to read every input out of the page cache (which must hold them) through fresh
/// maps, on one thread per core: each thread populates its share of the maps 8 MiB at a time,
/// as the merge's read-ahead does, and reads a byte per cache line of it. This is what a warm
/// merge must do before any arithmetic, so it bounds the engine's speed from the page cache.
fn page_cache_read(inputs: &[PathBuf]) -> f64 {
    const STEP: usize = 8 << 20;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let maps = map_inputs(inputs);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let maps = &maps;
            scope.spawn(move || {
                let mut fold = 0u8;
                for map in maps {
                    let share = map.len().div_ceil(threads);
                    let (from, to) = (
                        (thread * share).min(map.len()),
                        ((thread + 1) * share).min(map.len()),
                    );
                    for at in (from..to).step_by(STEP) {
                        let len = STEP.min(to - at);
                        let _ = map.advise_range(memmap2::Advice::PopulateRead, at, len);
                        for &byte in map[at..at + len].iter().step_by(64) {
                            fold ^= byte;
                        }
                    }
                }
                std::hint::black_box(fold);
            });
        }
    });
    start.elapsed().as_secs_f64()
}

/// The warm figures alone ([`main`]'s `MERGESCOPE_BENCH_WARM_ONLY`): the inputs are read into
/// the page cache, then the page-cache read and each method's engine are timed against the
/// memory bandwidth. `moved` is the bytes a merge reads and writes.
fn warm_only(inputs: &[PathBuf], moved: u64, dir: &Path, methods: &[String], bandwidth: f64) {
    for path in inputs {
        std::io::copy(
            &mut std::fs::File::open(path).expect("input"),
            &mut std::io::sink(),
        )
        .expect("read");
    }
    let cached_read = (0..3)
        .map(|_| page_cache_read(inputs))
        .fold(f64::INFINITY, f64::min);
    println!("page-cache read through fresh maps: {cached_read:.3} s");
    for method in methods {
        write_recipe(dir, method);
        let (engine_s, engine_cpu) = engine_warm(dir, method);
        let rate = moved as f64 / engine_s;
        println!(
            "{method:<10} engine {engine_s:.3} s, {engine_cpu:.2} CPU-s, {:.1} GB/s, {:.0} % of memory, {:.0} % of the page-cache read",
            rate / 1e9,
            100.0 * rate / bandwidth,
            100.0 * cached_read / engine_s
        );
    }
}

fn safetensors_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "safetensors") {
            files.push(entry);
        }
    }
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("folder").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn ensure_family(dir: &Path, shape: LlamaShape) -> u64 {
    let family = SynthFamily::new(shape, 3);
    let marker = dir.join("family/.complete");
    if !marker.exists() {
        println!(
            "generating {} (4 models of {:.2} GB)...",
            dir.display(),
            family.model_bytes() as f64 / 1e9
        );
        std::fs::create_dir_all(dir).expect("bench folder");
        family
            .write(&dir.join("family"), true, &Job::default())
            .expect("generate family");
        std::fs::write(&marker, "").expect("marker");
    }
    family.model_bytes()
}

fn main() {
    let root = std::env::var_os("MERGESCOPE_BENCH_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data"),
        PathBuf::from,
    );
    let methods: Vec<String> = std::env::var("MERGESCOPE_BENCH_METHODS")
        .unwrap_or_else(|_| "linear,ties,dare_ties".to_owned())
        .split(',')
        .map(str::to_owned)
        .collect();
    let mergekit = std::env::var("MERGEKIT_YAML").ok();
    let args: Vec<String> = std::env::args().collect();
    let with_gpu = args
        .windows(2)
        .any(|w| w[0] == "--backend" && w[1] == "gpu");
    let cold = drop_caches();
    println!(
        "page cache: {}",
        if cold {
            "dropped before every timed step"
        } else {
            "NOT dropped (run as root for cold figures)"
        }
    );

    let mut sizes = vec![("1.6 GB", LlamaShape::BENCH_1B)];
    if std::env::var_os("MERGESCOPE_BENCH_LARGE").is_some() {
        sizes.push((
            "3.1 GB",
            LlamaShape {
                layers: 32,
                ..LlamaShape::BENCH_1B
            },
        ));
    }
    let bandwidth = memory_bandwidth();
    println!(
        "memory bandwidth (copy, read + write): {:.1} GB/s",
        bandwidth / 1e9
    );
    for (label, shape) in sizes {
        let dir = root.join(format!("llama-{}l", shape.layers));
        let model_bytes = ensure_family(&dir, shape);
        let inputs = safetensors_files(&dir.join("family"));
        let input_bytes: u64 = inputs
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        if std::env::var_os("MERGESCOPE_BENCH_WARM_ONLY").is_some() {
            warm_only(
                &inputs,
                input_bytes + model_bytes,
                &dir,
                &methods,
                bandwidth,
            );
            continue;
        }
        let (read, write) = io_floor(&inputs, model_bytes, &dir.join("floor.bin"));
        let floor = read + write;
        let concurrent = concurrent_io(&inputs, model_bytes, &dir.join("floor.bin"));
        let (first_touch, again) = fresh_page_touch(&inputs);
        // Best of three, as the engine's warm figures are.
        let cached_read = (0..3)
            .map(|_| page_cache_read(&inputs))
            .fold(f64::INFINITY, f64::min);
        println!(
            "\n== models of {label} (bf16, {} layers): I/O floor {floor:.1} s (read inputs {read:.1} s + write output {write:.1} s); both at once: {concurrent:.1} s",
            shape.layers
        );
        println!(
            "reading a byte per cache line of the inputs just read into the page cache: {first_touch:.2} s, the same pass again: {again:.2} s"
        );
        println!(
            "reading the inputs out of the page cache through fresh maps on every core, as a warm merge must: {cached_read:.2} s ({:.1} GB/s)",
            input_bytes as f64 / cached_read / 1e9
        );
        println!(
            "cold: mergescope reading through the memory maps (MERGESCOPE_READS=mapped, what \
             the default does for a family already cached), and as a user runs it (the default, \
             which reads a cold family this size directly); speedup: mergekit / the default"
        );
        println!(
            "{:<10} {:>14} {:>10} {:>9} {:>10} {:>10} {:>9} {:>14} {:>10} {:>9} {:>10}{}",
            "method",
            "mergescope s",
            "RSS MiB",
            "x floor",
            "default s",
            "RSS MiB",
            "x floor",
            "mergekit s",
            "RSS MiB",
            "x floor",
            "speedup",
            if with_gpu {
                "      gpu s  RSS MiB  gpu/cpu"
            } else {
                ""
            }
        );
        let mut warm_rows = Vec::new();
        let mut engine_ceiling = Vec::new();
        // One untimed cold merge first: on the VM this was measured on, the first cold run
        // after the floor's reads cost 1.5 s more than the same command later in the run
        // (linear: 6.2 s first, 4.7 s fourth), whatever the method, which made the order of
        // the methods part of their figures.
        if let Some(first) = methods.first() {
            write_recipe(&dir, first);
            drop_caches();
            merge(&dir, first, "cpu");
        }
        for method in &methods {
            write_recipe(&dir, method);
            let run_mergescope = |backend: &str, cold: bool| {
                if cold {
                    drop_caches();
                }
                merge(&dir, method, backend)
            };
            drop_caches();
            let default = merge_reading(&dir, method, "cpu", "auto");
            let ms = run_mergescope("cpu", true);
            // Right after the cold mapped run the inputs are in the page cache.
            let warm = run_mergescope("cpu", false);
            let moved = (input_bytes + model_bytes) as f64 / warm.seconds;
            let (engine_s, engine_cpu) = engine_warm(&dir, method);
            let engine_moved = (input_bytes + model_bytes) as f64 / engine_s;
            engine_ceiling.push(format!(
                "{method}: {engine_s:.2} s against {cached_read:.2} s ({:.0} %)",
                100.0 * cached_read / engine_s
            ));
            warm_rows.push(format!(
                "{method:<10} {:>9.1} {:>9.2} {:>9.1} {:>10.1} {:>9.0}% {:>9.2} {:>9.1} {:>10.1} {:>9.0}%",
                ms.cpu_seconds,
                warm.seconds,
                warm.cpu_seconds,
                moved / 1e9,
                100.0 * moved / bandwidth,
                engine_s,
                engine_cpu,
                engine_moved / 1e9,
                100.0 * engine_moved / bandwidth
            ));
            let gpu = with_gpu.then(|| run_mergescope("gpu", true));
            let mk = mergekit.as_deref().filter(|_| label == "1.6 GB").map(|mk| {
                let _ = std::fs::remove_dir_all(dir.join("out-mergekit"));
                drop_caches();
                timed(
                    &dir,
                    mk,
                    &[
                        &format!("{method}.yml"),
                        "out-mergekit",
                        "--random-seed",
                        "0",
                        "--no-write-model-card",
                        "--quiet",
                    ],
                )
            });
            let (mk_s, mk_rss, mk_x, speedup) = match &mk {
                Some(m) => (
                    format!("{:.1}", m.seconds),
                    format!("{:.0}", m.peak_rss_mib),
                    format!("{:.2}", m.seconds / floor),
                    format!("{:.1}x", m.seconds / default.seconds),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let gpu_columns = gpu.map_or_else(String::new, |g| {
                format!(
                    " {:>10.1} {:>8.0} {:>8.2}",
                    g.seconds,
                    g.peak_rss_mib,
                    g.seconds / ms.seconds
                )
            });
            println!(
                "{method:<10} {:>14.1} {:>10.0} {:>9.2} {:>10.1} {:>10.0} {:>9.2} {mk_s:>14} {mk_rss:>10} {mk_x:>9} {speedup:>10}{gpu_columns}",
                ms.seconds,
                ms.peak_rss_mib,
                ms.seconds / floor,
                default.seconds,
                default.peak_rss_mib,
                default.seconds / floor
            );
        }
        println!(
            "\nwarm: the command again, inputs in the page cache, output written to disk; engine: \
             the same merge in-process with the output dropped (best of 3); GB/s = (inputs read + \
             output written) / wall, against {:.1} GB/s of memory bandwidth",
            bandwidth / 1e9
        );
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}",
            "method",
            "cold CPU",
            "warm s",
            "warm CPU",
            "warm GB/s",
            "of memory",
            "engine s",
            "eng. CPU",
            "eng. GB/s",
            "of memory"
        );
        for row in &warm_rows {
            println!("{row}");
        }
        println!(
            "the engine against reading its inputs out of the page cache (the least a warm merge \
             must do): {}",
            engine_ceiling.join("; ")
        );
        if std::env::var("MERGESCOPE_BENCH_ANALYZE").as_deref() != Ok("0") {
            let analyze = |extra: &[&str], reads: &str| {
                drop_caches();
                let mut args = vec![
                    "analyze",
                    "--base",
                    "family/base",
                    "family/ft_1",
                    "family/ft_2",
                    "family/ft_3",
                    "--no-cache",
                ];
                args.extend_from_slice(extra);
                timed_with(&dir, &[("MERGESCOPE_READS", reads)], MERGESCOPE, &args)
            };
            for reads in ["mapped", "auto"] {
                let plain = analyze(&[], reads);
                println!(
                    "analyze (sensitivity + interference), MERGESCOPE_READS={reads}: {:.1} s, {:.1} CPU-s, {:.0} MiB RSS, {:.2} x the read floor ({read:.1} s)",
                    plain.seconds,
                    plain.cpu_seconds,
                    plain.peak_rss_mib,
                    plain.seconds / read
                );
            }
            if std::env::var("MERGESCOPE_BENCH_SPECTRA").as_deref() != Ok("0") {
                let spectra = analyze(&["--rank", "32"], "mapped");
                println!(
                    "analyze + spectra at rank 32 (every 2-D tensor, base + 3 task vectors): {:.1} s, {:.0} MiB RSS",
                    spectra.seconds, spectra.peak_rss_mib
                );
            }
        }
    }
}
