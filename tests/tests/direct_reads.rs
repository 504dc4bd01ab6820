//! Direct reads (`MERGESCOPE_READS=direct`, `checkpoint::direct`): a stream reads uncached
//! tensors into staging buffers, serves exactly the file's bytes from them, drops them when
//! done or stopped, and merges to the same output as the memory-mapped path.

use std::path::Path;

use mergescope_core::checkpoint::{Checkpoint, ReadAhead, ReadMode};
use mergescope_tests::cli::run_with_env;
use mergescope_tests::fixture::{big_family, read_folder};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// A family on the build's disk (a temporary folder may be tmpfs, which refuses direct I/O).
fn family() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    big_family(dir.path(), 2);
    dir
}

fn model(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(name).join("model.safetensors")
}

/// Whether this file system allows direct reads at all.
fn direct_io_works(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// Drops `path`'s pages from the page cache, as if the machine had just started: only
/// uncached tensors are read directly.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    // SAFETY: a valid open descriptor; the advice only drops clean cached pages.
    #[allow(unsafe_code)]
    let status = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(status, 0, "posix_fadvise");
}

/// The fraction of `path`'s pages in the page cache (`mincore` over a map of it).
fn cached_fraction(path: &Path) -> f64 {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::File::open(path).unwrap();
    let len = usize::try_from(file.metadata().unwrap().len()).unwrap();
    let pages = len.div_ceil(4096);
    let mut resident = vec![0u8; pages];
    // SAFETY: a fresh read-only map of the whole file, only passed to `mincore` (never read)
    // with a vector of one byte per page, then unmapped.
    #[allow(unsafe_code)]
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        assert_eq!(libc::mincore(map, len, resident.as_mut_ptr().cast()), 0);
        libc::munmap(map, len);
    }
    resident.iter().filter(|&&r| r & 1 != 0).count() as f64 / pages as f64
}

#[test]
fn a_direct_stream_serves_the_files_bytes_and_releases_its_buffers() {
    let dir = family();
    let (base_path, ft_path) = (model(dir.path(), "base"), model(dir.path(), "ft"));
    if !direct_io_works(&base_path) {
        eprintln!("skipped: this file system refuses O_DIRECT");
        return;
    }
    evict(&base_path);
    evict(&ft_path);
    let base = Checkpoint::open(&base_path).unwrap();
    let ft = Checkpoint::open(&ft_path).unwrap();
    let files = [
        std::fs::read(&base_path).unwrap(),
        std::fs::read(&ft_path).unwrap(),
    ];
    // `fs::read` went through the page cache: drop it again.
    evict(&base_path);
    evict(&ft_path);

    let steps: Vec<_> = (0..base.tensors().len())
        .map(|i| vec![(&base, i), (&ft, i)])
        .collect();
    let ahead = ReadAhead::with_mode(steps.clone(), 16 << 20, ReadMode::Direct);
    assert!(ahead.is_direct());
    let mut staged = 0;
    ahead.with_helper(|| {
        for (k, step) in steps.iter().enumerate() {
            ahead.wait_loaded(k);
            for (&(checkpoint, index), file) in step.iter().zip(&files) {
                let info = &checkpoint.tensors()[index];
                assert!(checkpoint.is_staged(index), "{} was not staged", info.name);
                staged += 1;
                let view = checkpoint.view(index);
                assert!(
                    *view.bytes == file[info.start..info.end],
                    "{}: the staged bytes differ from the file's",
                    info.name
                );
                drop(view);
                checkpoint.release(index);
                assert!(!checkpoint.is_staged(index));
            }
            ahead.done(k);
        }
    });
    assert_eq!(staged, 2 * base.tensors().len());
}

#[test]
fn a_stream_that_stops_early_leaves_nothing_staged() {
    let dir = family();
    let path = model(dir.path(), "base");
    if !direct_io_works(&path) {
        eprintln!("skipped: this file system refuses O_DIRECT");
        return;
    }
    evict(&path);
    let base = Checkpoint::open(&path).unwrap();
    let steps: Vec<_> = (0..base.tensors().len())
        .map(|i| vec![(&base, i)])
        .collect();
    // A window wide enough for the helper to stage every tensor ahead.
    let ahead = ReadAhead::with_mode(steps.clone(), 1 << 30, ReadMode::Direct);
    ahead.with_helper(|| {
        ahead.wait_loaded(steps.len() - 1);
        assert!((0..steps.len()).any(|i| base.is_staged(i)));
        // Cancelled here: nothing consumed, nothing released.
    });
    assert!((0..steps.len()).all(|i| !base.is_staged(i)));
}

#[test]
fn a_merge_read_directly_equals_the_merge_read_through_the_maps() {
    let dir = family();
    if !direct_io_works(&model(dir.path(), "base")) {
        eprintln!("skipped: this file system refuses O_DIRECT");
        return;
    }
    let recipe = "merge_method: ties\nbase_model: base\nmodels:\n  - model: ft\n    parameters: {weight: 0.7, density: 0.4}\n";
    std::fs::write(dir.path().join("ties.yml"), recipe).unwrap();
    let mut outputs = Vec::new();
    for mode in ["direct", "mapped"] {
        evict(&model(dir.path(), "base"));
        evict(&model(dir.path(), "ft"));
        let out = format!("out-{mode}");
        run_with_env(
            BIN,
            dir.path(),
            &["merge", "ties.yml", "--out", &out],
            &[("MERGESCOPE_READS", mode)],
        )
        .assert_success();
        outputs.push(read_folder(&dir.path().join(out)));
        // Read directly, the inputs bypassed the page cache, but for what the kernel read
        // around the header when the file was opened (up to the device's read-ahead, 8 MiB
        // on some machines); read through the maps, they filled it.
        let cached = cached_fraction(&model(dir.path(), "ft"));
        match mode {
            "direct" => assert!(
                cached < 0.6,
                "{cached} of the input cached after direct reads"
            ),
            _ => assert!(
                cached > 0.9,
                "{cached} of the input cached after mapped reads"
            ),
        }
    }
    assert_eq!(outputs[0], outputs[1]);
}

#[test]
fn a_checkpoint_tells_how_much_of_it_is_cached() {
    // What `ReadMode::Auto` asks to tell a cold family, which it reads directly, from a warm
    // one, which it reads through the maps.
    let dir = family();
    let path = model(dir.path(), "base");
    let base = Checkpoint::open(&path).unwrap();
    let tensors = 0..base.tensors().len();
    let total: u64 = base.tensors().iter().map(|t| t.byte_len() as u64).sum();
    let cached = || tensors.clone().map(|i| base.cached_bytes(i)).sum::<u64>();
    tensors.clone().for_each(|i| base.load(i));
    assert_eq!(cached(), total, "every tensor was just read");
    // Pages this process maps cannot be evicted: give them back first.
    tensors.clone().for_each(|i| base.release(i));
    evict(&path);
    // The kernel may read ahead around whatever opening the file touched (up to 8 MiB of 32).
    let cold = cached();
    assert!(
        cold < total / 2,
        "{cold} of {total} bytes cached after eviction"
    );
    // Reading one tensor caches that tensor: the count is per tensor, not per file.
    let q_proj = base
        .tensors()
        .iter()
        .position(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(base.tensors()[q_proj].byte_len(), 2 << 20);
    base.load(q_proj);
    assert_eq!(base.cached_bytes(q_proj), 2 << 20);
}
