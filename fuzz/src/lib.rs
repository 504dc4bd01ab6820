//! The pieces mergescope's fuzz targets share (README.md says how to run them).
//!
//! - [`CappedAlloc`], the global allocator of every target: an allocation above
//!   [`ALLOC_CAP_BYTES`] aborts the process, so libFuzzer records the input as a crash even in
//!   builds without a sanitizer (where `-malloc_limit_mb` cannot see allocations);
//! - [`scratch`]: the one folder a fuzzing process writes into (under `/dev/shm`), created once
//!   and reused by every execution;
//! - [`exercise`]: everything a caller may do with an opened [`Checkpoint`], with the
//!   invariants the public API promises checked;
//! - the bodies of the five targets ([`safetensors_file`], [`sharded_folder`], [`config_json`],
//!   [`recipe`], [`layout_names`]), so the files in `fuzz_targets/` are one line each.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mergescope_core::Checkpoint;
use mergescope_core::backend::Cpu;
use mergescope_core::checkpoint::ModelConfig;
use mergescope_core::eval::preview::merge_in_memory;
use mergescope_core::family::{Family, Member};
use mergescope_core::layout::{LayerKey, Layout, ModuleKind, split_block};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_core::merge::recipe::Recipe;
use safetensors::Dtype;

/// The largest single allocation a target may make. Inputs are a few KB and decoding is capped
/// at [`DECODE_CAP_ELEMENTS`] (4 MiB of f32), so anything near this size means mergescope
/// believed a size written in a file.
pub const ALLOC_CAP_BYTES: usize = 256 << 20;

/// Float tensors with at most this many elements are decoded to f32 by the targets; larger
/// ones (sparse files whose header claims terabytes) are only viewed, as mergescope's own
/// streaming code would.
pub const DECODE_CAP_ELEMENTS: usize = 1 << 20;

/// A header whose tensors end beyond the file is retried with the file extended (sparse, so
/// nothing is written) to the size it claims, up to this size: 16 TiB, the largest file ext4
/// holds.
pub const SPARSE_CAP_BYTES: u64 = 1 << 44;

/// The byte string that separates the parts of a `sharded_folder` input: the index text, then
/// up to [`SHARD_NAMES`]`.len()` shard files.
pub const PART_SEPARATOR: &[u8] = b"\x00SHARD\x00";

/// The shard files a `sharded_folder` input is written to, in order.
pub const SHARD_NAMES: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

/// [`System`], refusing (by aborting, which libFuzzer reports as a crash) any allocation above
/// [`ALLOC_CAP_BYTES`].
pub struct CappedAlloc;

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

// SAFETY: every call is forwarded to `System` unchanged; the cap only adds an abort before it.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[inline]
fn check_size(size: usize) {
    if size > ALLOC_CAP_BYTES {
        over_cap(size);
    }
}

/// Says which allocation broke the cap, without allocating, and aborts.
#[cold]
#[inline(never)]
fn over_cap(size: usize) -> ! {
    let mut buf = [0u8; 160];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - at);
        buf[at..at + n].copy_from_slice(&bytes[..n]);
        at += n;
    };
    put(b"\n==mergescope-fuzz== allocation of ");
    put(decimal(size as u64, &mut [0u8; 20]));
    put(b" bytes exceeds the cap of ");
    put(decimal(ALLOC_CAP_BYTES as u64, &mut [0u8; 20]));
    put(b" bytes\n");
    let _ = std::io::stderr().write_all(&buf[..at]);
    std::process::abort();
}

fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &digits[i..];
        }
    }
}

/// Outcome counters, printed at exit when `MERGESCOPE_FUZZ_STATS` is set: they show how many
/// inputs get past each stage (parsed, opened, planned, merged), i.e. how deep a target reaches.
#[derive(Clone, Copy)]
enum Stat {
    Opened,
    OpenFailed,
    SparseRetry,
    RecipeParsed,
    RecipeRejected,
    Planned,
    PlanFailed,
    Merged,
    MergeFailed,
}

const STAT_NAMES: [&str; 9] = [
    "opened",
    "open_failed",
    "sparse_retry",
    "recipe_parsed",
    "recipe_rejected",
    "planned",
    "plan_failed",
    "merged",
    "merge_failed",
];

static STATS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

fn count(stat: Stat) {
    STATS[stat as usize].fetch_add(1, Ordering::Relaxed);
}

static SCRATCH: OnceLock<PathBuf> = OnceLock::new();

const SCRATCH_PREFIX: &str = "mergescope-fuzz-";

/// One-time set-up of a target: rayon's global pool made of the fuzzing thread alone (the CPU
/// backend's parallel loops then run inline, with no thread hand-off per call; fuzzing runs
/// one process per core anyway) and the scratch folder.
pub fn init(target: &str) {
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global();
    scratch_for(target);
    // `MERGESCOPE_FUZZ_CHECK_CAP=1`: allocate just above the cap, to see the cap abort (and
    // libFuzzer report it) before trusting a long run.
    if std::env::var_os("MERGESCOPE_FUZZ_CHECK_CAP").is_some() {
        let probe = vec![1u8; ALLOC_CAP_BYTES + 1];
        std::hint::black_box(probe);
    }
}

/// The process's scratch folder (see [`init`]).
pub fn scratch() -> &'static Path {
    SCRATCH.get().expect("mergescope_fuzz::init was not called")
}

fn scratch_for(target: &str) -> &'static Path {
    SCRATCH.get_or_init(|| {
        let root = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        remove_stale_scratch(&root);
        let dir = root.join(format!("{SCRATCH_PREFIX}{target}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch folder");
        // Removed when libFuzzer exits normally; a crashed process's folder is removed by the
        // next fuzzing process (`remove_stale_scratch`).
        // SAFETY: registers a plain `extern "C" fn()` that only touches `SCRATCH`.
        unsafe {
            libc::atexit(remove_scratch);
        }
        dir
    })
}

extern "C" fn remove_scratch() {
    if std::env::var_os("MERGESCOPE_FUZZ_STATS").is_some() {
        let line: Vec<String> = STAT_NAMES
            .iter()
            .zip(&STATS)
            .map(|(name, n)| format!("{name}={}", n.load(Ordering::Relaxed)))
            .collect();
        eprintln!("mergescope-fuzz stats: {}", line.join(" "));
    }
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes scratch folders left by fuzzing processes that no longer run (crashed ones).
fn remove_stale_scratch(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(SCRATCH_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Everything a caller may do with an opened checkpoint, checking what the API promises.
pub fn exercise(checkpoint: Checkpoint) {
    let tensors = checkpoint.tensors();
    let mut previous_end = vec![0usize; checkpoint.shards().len()];
    for (i, info) in tensors.iter().enumerate() {
        assert!(info.shard < checkpoint.shards().len());
        assert!(info.start <= info.end && info.end <= checkpoint.shards()[info.shard].len());
        // "In file order: shard by shard, by offset inside each shard".
        assert!(info.start >= previous_end[info.shard], "{}", info.name);
        previous_end[info.shard] = info.end;
        assert_eq!(checkpoint.index_of(&info.name), Some(i));
        assert_eq!(checkpoint.get(&info.name), Some(info));
        if let Err(e) = checkpoint.verify_tensor(i) {
            panic!(
                "`{}`: the file changed while nothing wrote to it: {e}",
                info.name
            );
        }

        let view = checkpoint.view(i);
        assert_eq!(view.bytes.len(), info.byte_len());
        assert_eq!(view.numel(), info.numel());
        if let Some(ty) = info.float_type() {
            assert_eq!(
                info.numel() * ty.size_bytes(),
                info.byte_len(),
                "{}",
                info.name
            );
            if info.numel() <= DECODE_CAP_ELEMENTS {
                let values = view.to_f32_vec();
                assert_eq!(values.len(), info.numel());
                if let Some(&rows) = info.shape.first()
                    && rows > 1
                {
                    let mut shape = info.shape.clone();
                    shape[0] = rows / 2;
                    let part = view.leading_rows(&shape);
                    let mut head = vec![0f32; part.numel()];
                    part.decode_range(0, &mut head);
                    let same = head
                        .iter()
                        .zip(&values)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{}: leading rows decode differently", info.name);
                }
            }
        }
        if info.byte_len() <= 1 << 22 {
            checkpoint.prefetch(i);
            checkpoint.load(i);
            checkpoint.release(i);
        }
    }
    if let Err(e) = checkpoint.verify_unchanged() {
        panic!("the checkpoint changed while nothing wrote to it: {e}");
    }
    let _ = (checkpoint.parameter_count(), checkpoint.data_bytes());
    let _ = checkpoint.fingerprint();
    let _ = (
        checkpoint.source(),
        checkpoint.folder(),
        checkpoint.storage(),
    );
    for shard in checkpoint.shards() {
        let _ = (
            shard.path(),
            shard.len(),
            shard.is_empty(),
            shard.metadata().len(),
        );
    }
    if let Some(config) = checkpoint.config() {
        let _ = (
            config.architecture(),
            config.model_type(),
            config.num_layers(),
        );
    }

    let layout = Layout::of_checkpoint(&checkpoint);
    check_layout(&layout, tensors.iter().map(|t| t.name.as_str()));

    // Aligned with itself, as base and model.
    let checkpoint = Arc::new(checkpoint);
    let member = |label: &str| Member {
        label: label.to_owned(),
        checkpoint: Arc::clone(&checkpoint),
    };
    let family = Family {
        base: Some(member("base")),
        models: vec![member("model")],
    };
    let alignment = family.align();
    assert_eq!(alignment.groups.len(), checkpoint.tensors().len());
    assert_eq!(alignment.blocking_issues().count(), 0);
}

fn check_layout<'a>(layout: &Layout, names: impl Iterator<Item = &'a str>) {
    for name in names {
        let depth = layout.depth(name);
        assert!(
            (0.0..=1.0).contains(&depth),
            "depth {depth} of `{name}` is outside [0, 1]"
        );
    }
    let _ = (layout.num_layers(), layout.architecture.label());
}

/// Writes `bytes` to `path`, replacing what was there.
fn put(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write into the scratch folder");
}

fn open_and_exercise(path: &Path) {
    match Checkpoint::open(path) {
        Ok(checkpoint) => {
            count(Stat::Opened);
            exercise(checkpoint);
        }
        Err(e) => {
            count(Stat::OpenFailed);
            let message = e.to_string();
            assert!(!message.is_empty());
        }
    }
}

/// The size a safetensors file must have for the tensors its header declares, when the
/// header parses and that size is larger than `bytes`.
pub fn claimed_file_size(bytes: &[u8]) -> Option<u64> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let header_end = 8u64.checked_add(n)?;
    let header = bytes.get(8..usize::try_from(header_end).ok()?)?;
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let data_end = map
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()?;
    let size = header_end.checked_add(data_end)?;
    (size > bytes.len() as u64).then_some(size)
}

/// `safetensors_file`: the input is a `model.safetensors`; opened, and on success walked.
pub fn safetensors_file(data: &[u8]) {
    let file = scratch().join("model.safetensors");
    put(&file, data);
    open_and_exercise(&file);
    // A header claiming more data than the file holds: the same file, extended (sparse) to the
    // claimed size, must open without mergescope reading or allocating the claimed tensors.
    if let Some(size) = claimed_file_size(data)
        && size <= SPARSE_CAP_BYTES
    {
        let extended = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|f| f.set_len(size));
        if extended.is_ok() {
            count(Stat::SparseRetry);
            open_and_exercise(&file);
        }
    }
}

/// Splits a `sharded_folder` input into its index text and shard files.
pub fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest
        .windows(PART_SEPARATOR.len())
        .position(|w| w == PART_SEPARATOR)
    {
        parts.push(&rest[..at]);
        rest = &rest[at + PART_SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// `sharded_folder`: the input is `INDEX SEP SHARD1 [SEP SHARD2 [SEP SHARD3]]`, written as
/// `model.safetensors.index.json` and [`SHARD_NAMES`] (absent shards are removed) into the
/// scratch folder, which is opened.
pub fn sharded_folder(data: &[u8]) {
    let dir = scratch().join("sharded");
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir).expect("create the sharded folder");
    }
    let parts = split_parts(data);
    put(
        &dir.join(mergescope_core::checkpoint::INDEX_FILE_NAME),
        parts[0],
    );
    for (k, name) in SHARD_NAMES.iter().enumerate() {
        let path = dir.join(name);
        match parts.get(k + 1) {
            Some(bytes) => put(&path, bytes),
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    open_and_exercise(&dir);
}

/// `config_json`: the input is the `config.json` beside a fixed, valid Llama-shaped
/// `model.safetensors`.
pub fn config_json(data: &[u8]) {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    let dir = FOLDER.get_or_init(|| {
        let dir = scratch().join("with-config");
        write_tensors(
            &dir.join("model.safetensors"),
            &llama_tensors(2, 16),
            Dtype::F32,
            0,
        );
        dir
    });
    put(&dir.join("config.json"), data);
    open_and_exercise(dir);
}

/// A tiny Llama-shaped tensor set (the names of `tests/src/fixture.rs`'s `llama_tensors`):
/// `layers` blocks, hidden size 8, a vocabulary of `vocab` rows.
pub fn llama_tensors(layers: usize, vocab: usize) -> Vec<(String, Vec<usize>)> {
    let h = 8;
    let mut out = vec![("model.embed_tokens.weight".to_owned(), vec![vocab, h])];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![h, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![h, h]));
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![2 * h, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, 2 * h]));
    }
    out.push(("model.norm.weight".to_owned(), vec![h]));
    out.push(("lm_head.weight".to_owned(), vec![vocab, h]));
    out
}

/// Writes `tensors` (values derived from their names and `salt`) with the safetensors crate.
fn write_tensors(path: &Path, tensors: &[(String, Vec<usize>)], dtype: Dtype, salt: u32) {
    let size = match dtype {
        Dtype::F32 => 4,
        _ => 2,
    };
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(t, (_, shape))| {
            let n: usize = shape.iter().product();
            (0..n)
                .flat_map(|i| {
                    let v = ((i * 7 + t * 13 + salt as usize * 5) % 23) as f32 * 0.0625 - 0.7
                        + salt as f32 * 0.125 * (1.0 + (i % 3) as f32);
                    let bytes = match dtype {
                        Dtype::F32 => v.to_le_bytes().to_vec(),
                        Dtype::F16 => f16_bits(v).to_le_bytes().to_vec(),
                        _ => ((v.to_bits() >> 16) as u16).to_le_bytes().to_vec(),
                    };
                    debug_assert_eq!(bytes.len(), size);
                    bytes
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .zip(&data)
        .map(|((name, shape), bytes)| {
            let view = safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes)
                .expect("a valid tensor view");
            (name.clone(), view)
        })
        .collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create a model folder");
    }
    let meta = std::collections::HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(meta), path).expect("write a safetensors file");
}

/// `v` as IEEE half bits (round toward zero is enough for fixture values).
fn f16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = ((bits >> 13) & 0x3ff) as u16;
    if v == 0.0 || exp <= 0 {
        sign
    } else {
        sign | ((exp as u16) << 10) | mantissa
    }
}

/// The on-disk family the `recipe` target plans against, created once per process:
///
/// - `base/`: F32, 2 layers, vocabulary 16, with a Llama `config.json`;
/// - `a/`: F32, same shapes, other values;
/// - `b/`: BF16 (mixed input dtypes promote);
/// - `c/`: F16, sharded in two files with an index, vocabulary 12 (vocabularies differ:
///   `truncate_vocab`) and no `lm_head.weight` (tied to the embedding);
/// - `wide/{base,a,b}`: the same as F32, F32 and BF16 with an embedding of 2056 rows, which
///   spans two of the engine's 16 Ki-element chunks (chunk boundaries are merged too). Kept
///   apart, and named by one structured recipe in 16, because merging it costs ten times more.
pub fn recipe_family() -> &'static Path {
    static FAMILY: OnceLock<PathBuf> = OnceLock::new();
    FAMILY.get_or_init(|| {
        let dir = scratch().join("family");
        let config = br#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2, "torch_dtype": "float32"}"#;
        for (prefix, vocab) in [("", 16), ("wide/", 2056)] {
            let mut full = llama_tensors(2, 16);
            full[0].1[0] = vocab;
            let base = dir.join(format!("{prefix}base"));
            write_tensors(&base.join("model.safetensors"), &full, Dtype::F32, 0);
            put(&base.join("config.json"), config);
            let a = dir.join(format!("{prefix}a/model.safetensors"));
            write_tensors(&a, &full, Dtype::F32, 1);
            let b = dir.join(format!("{prefix}b/model.safetensors"));
            write_tensors(&b, &full, Dtype::BF16, 2);
        }
        let mut partial = llama_tensors(2, 12);
        partial.retain(|(name, _)| name != "lm_head.weight");
        let (first, second) = partial.split_at(partial.len() / 2);
        let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
        write_tensors(&dir.join("c").join(names[0]), first, Dtype::F16, 3);
        write_tensors(&dir.join("c").join(names[1]), second, Dtype::F16, 3);
        let weight_map: serde_json::Map<String, serde_json::Value> = first
            .iter()
            .map(|(n, _)| (n.clone(), names[0].into()))
            .chain(second.iter().map(|(n, _)| (n.clone(), names[1].into())))
            .collect();
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
        put(
            &dir.join("c").join(mergescope_core::checkpoint::INDEX_FILE_NAME),
            index.to_string().as_bytes(),
        );
        dir
    })
}

/// A model path that stays inside the family folder: relative, without `..`. Others are not
/// planned (a fuzzed recipe must not open `/dev/...` or the user's files).
fn confined(model: &str) -> bool {
    let path = Path::new(model);
    !model.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// `recipe`: the input is a recipe, as YAML text or (first byte `0xFF`) as bytes from which
/// [`structured_recipe`] writes one. Parsed; written back and re-read (the recipe an export
/// records must run again); planned against [`recipe_family`]; and, when planned, merged in
/// memory on the CPU backend, where parameter values meet the arithmetic.
///
/// A first line `#truncate_vocab` plans with `truncate_vocab: true`. With
/// `MERGESCOPE_FUZZ_PRINT` set, the recipe text is printed (to read a reproducer).
pub fn recipe(data: &[u8]) {
    let text = match data.split_first() {
        Some((0xFF, rest)) => match structured_recipe(rest) {
            Some(text) => text,
            None => return,
        },
        _ => match std::str::from_utf8(data) {
            Ok(text) => text.to_owned(),
            Err(_) => return,
        },
    };
    recipe_text(&text);
}

fn recipe_text(text: &str) {
    static PRINT: OnceLock<bool> = OnceLock::new();
    if *PRINT.get_or_init(|| std::env::var_os("MERGESCOPE_FUZZ_PRINT").is_some()) {
        eprintln!("--- recipe:\n{text}---");
    }
    let family = recipe_family();
    let file = family.join("recipe.yml");
    let recipe = match Recipe::from_yaml(text, &file) {
        Ok(recipe) => {
            count(Stat::RecipeParsed);
            recipe
        }
        Err(e) => {
            count(Stat::RecipeRejected);
            let message = e.to_string();
            assert!(!message.is_empty());
            return;
        }
    };
    let yaml = recipe.to_yaml();
    match Recipe::from_yaml(&yaml, &file) {
        Ok(again) => assert_eq!(
            again.to_yaml(),
            yaml,
            "the recipe changes when written and read again"
        ),
        Err(e) => panic!("the recipe as written cannot be read again: {e}\n--- written:\n{yaml}"),
    }
    let paths = recipe
        .base_model
        .iter()
        .chain(recipe.tokenizer_source.iter())
        .chain(recipe.models.iter().map(|m| &m.model));
    if !paths.clone().all(|p| confined(p)) || recipe.models.len() > 16 {
        return;
    }
    let options = PlanOptions {
        cwd: family.to_path_buf(),
        random_seed: Some(0),
        truncate_vocab: text.starts_with("#truncate_vocab"),
    };
    let plan = match MergePlan::new(recipe, &file, &options) {
        Ok(plan) => {
            count(Stat::Planned);
            plan
        }
        Err(e) => {
            count(Stat::PlanFailed);
            let message = e.to_string();
            assert!(!message.is_empty());
            return;
        }
    };
    let _ = (
        plan.input_paths(),
        plan.output_bytes(),
        plan.layout.num_layers(),
    );
    match merge_in_memory(&plan, &Cpu) {
        Ok(merged) => {
            count(Stat::Merged);
            for task in &plan.tasks {
                if let Some(values) = merged.values.get(&task.name) {
                    assert_eq!(values.len(), task.numel(), "{}", task.name);
                }
            }
        }
        Err(e) => {
            count(Stat::MergeFailed);
            assert!(!e.is_empty());
        }
    }
}

const METHODS: &[&str] = &[
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "sce",
    "nearswap",
    "passthrough",
    "arcee_fusion",
    "no_such_method",
];
const MODELS: &[&str] = &[
    "base",
    "a",
    "b",
    "c",
    "./a",
    "b/",
    "a/model.safetensors",
    "c/model.safetensors.index.json",
    "missing",
];
const WIDE_MODELS: &[&str] = &["wide/base", "wide/a", "wide/b", "wide/a/", "./wide/b"];
const PARAMS: &[&str] = &[
    "weight",
    "density",
    "gamma",
    "epsilon",
    "lambda",
    "normalize",
    "rescale",
    "int8_mask",
    "t",
    "max_iter",
    "tol",
    "normalize_weights",
    "eps",
    "nuslerp_flatten",
    "nuslerp_row_wise",
    "select_topk",
    "filter_wise",
    "scale",
    "not_a_parameter",
];
const FILTERS: &[&str] = &[
    "*",
    "self_attn",
    "mlp",
    "embed_tokens",
    "lm_head",
    "layers.1",
    "norm",
    "q_proj",
    "",
];
const NUMBERS: &[f64] = &[
    0.0, 1.0, -1.0, 0.5, 0.25, 0.75, 0.1, 0.9, 2.0, 3.0, 10.0, 100.0, 1000.0, -1000.0, 1e-12, 1e-8,
    1e-5, 0.999, 1.0001, 1e300, -0.0,
];
const TYPES: &[&str] = &["float32", "float16", "bfloat16", "float64", "int8"];

use libfuzzer_sys::arbitrary::{Result as ArbResult, Unstructured};

/// A recipe written from fuzzer bytes: every method, model, parameter and value shape the
/// format has, so most inputs parse and plan and the fuzzer spends its time in parameter
/// resolution and the methods. Returns the YAML text (a first line `#truncate_vocab` when
/// the bytes ask for it).
pub fn structured_recipe(bytes: &[u8]) -> Option<String> {
    let mut u = Unstructured::new(bytes);
    write_recipe(&mut u).ok()
}

fn write_recipe(u: &mut Unstructured<'_>) -> ArbResult<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    if u.ratio(1, 8)? {
        out.push_str("#truncate_vocab\n");
    }
    let _ = writeln!(out, "merge_method: {}", u.choose(METHODS)?);
    let models = if u.ratio(1, 16)? { WIDE_MODELS } else { MODELS };
    if u.ratio(2, 3)? {
        let _ = writeln!(out, "base_model: {}", u.choose(models)?);
    }
    out.push_str("models:\n");
    for _ in 0..u.int_in_range(1..=4)? {
        let _ = writeln!(out, "  - model: {}", u.choose(models)?);
        if u.ratio(3, 4)? {
            let _ = writeln!(out, "    parameters: {}", parameters(u)?);
        }
    }
    if u.ratio(2, 3)? {
        let _ = writeln!(out, "parameters: {}", parameters(u)?);
    }
    for key in ["dtype", "out_dtype"] {
        if u.ratio(1, 4)? {
            let _ = writeln!(out, "{key}: {}", u.choose(TYPES)?);
        }
    }
    if u.ratio(1, 8)? {
        let source = *u.choose(&["base", "a", "c", "union"])?;
        let _ = writeln!(out, "tokenizer_source: {source}");
    }
    Ok(out)
}

fn parameters(u: &mut Unstructured<'_>) -> ArbResult<String> {
    let mut entries = Vec::new();
    for _ in 0..u.int_in_range(0..=4)? {
        entries.push(format!("{}: {}", u.choose(PARAMS)?, param_value(u, true)?));
    }
    Ok(format!("{{{}}}", entries.join(", ")))
}

fn param_value(u: &mut Unstructured<'_>, conditional: bool) -> ArbResult<String> {
    Ok(match u.int_in_range(0..=7)? {
        0..=3 => scalar(u)?,
        4 | 5 => {
            let mut items = Vec::new();
            for _ in 0..u.int_in_range(0..=5)? {
                items.push(if u.ratio(1, 16)? {
                    scalar(u)?
                } else {
                    yaml_number(number(u)?)
                });
            }
            format!("[{}]", items.join(", "))
        }
        _ if conditional => {
            let mut items = Vec::new();
            for _ in 0..u.int_in_range(1..=4)? {
                let value = param_value(u, false)?;
                items.push(if u.ratio(1, 4)? {
                    format!("{{value: {value}}}")
                } else {
                    format!("{{filter: \"{}\", value: {value}}}", u.choose(FILTERS)?)
                });
            }
            format!("[{}]", items.join(", "))
        }
        _ => scalar(u)?,
    })
}

fn scalar(u: &mut Unstructured<'_>) -> ArbResult<String> {
    Ok(match u.int_in_range(0..=9)? {
        0..=6 => yaml_number(number(u)?),
        7 | 8 => u.arbitrary::<bool>()?.to_string(),
        _ => format!("\"{}\"", u.choose(&["x", "0.5", "true", ""])?),
    })
}

fn number(u: &mut Unstructured<'_>) -> ArbResult<f64> {
    Ok(match u.int_in_range(0..=3)? {
        0 => f64::from_bits(u.arbitrary()?),
        1 => f64::from(u.int_in_range(-1000..=1000)?) / 100.0,
        _ => *u.choose(NUMBERS)?,
    })
}

/// `x` as a YAML 1.2 float.
fn yaml_number(x: f64) -> String {
    if x.is_nan() {
        ".nan".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 { ".inf" } else { "-.inf" }.to_owned()
    } else {
        format!("{x:?}")
    }
}

/// `layout_names`: the input's lines are tensor names (lossy UTF-8). A first line starting
/// with `{` is a `config.json` instead.
pub fn layout_names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let config = match lines.first() {
        Some(first) if first.starts_with('{') => {
            let raw = serde_json::from_str(first).unwrap_or(serde_json::Value::Null);
            lines.remove(0);
            Some(ModelConfig {
                path: PathBuf::from("config.json"),
                raw,
            })
        }
        _ => None,
    };
    for name in &lines {
        let key = LayerKey::parse(name);
        let kind = ModuleKind::classify(name);
        assert_eq!(key.module, kind);
        let _ = kind.label();
        match split_block(name) {
            Some((stack, block)) => {
                assert_eq!(key.stack.as_deref(), Some(stack));
                assert_eq!(key.block, Some(block));
                assert!(name.starts_with(stack));
            }
            None => assert_eq!((key.stack, key.block), (None, None)),
        }
    }
    let layout = Layout::from_names(config.as_ref(), &lines);
    check_layout(&layout, lines.iter().copied());
    let without = Layout::from_names(None, &lines);
    assert_eq!(layout.stacks, without.stacks);
}
