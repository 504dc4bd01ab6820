//! Export faults, with real files, real (small) file systems and the real CLI process: a full
//! disk (refused up front, and hit while writing), a read-only output folder, `--force`
//! replacing an existing output (also under `kill -9` at every step of the replace and at
//! random times), and the staging folder of a killed run. Each checks the exit code, the one
//! error line, that nothing was left behind and that every input is byte-identical afterwards.
//!
//! Size-limited and read-only file systems are tmpfs mounts (`mount -t tmpfs -o size=256k`,
//! `-o ro`), which need root or CAP_SYS_ADMIN, as in CI; without them a loop-mounted ext2 image
//! is tried, and where neither works the test prints `skipped: cannot mount` and passes.
//!
//! A full disk is reached three ways: the up-front check refuses tensor data that does not fit;
//! a tokenizer file that does not fit (sidecar files are not known when the check runs) fails
//! while writing; and with `MERGESCOPE_SKIP_SPACE_CHECK=1` (the escape hatch for file systems
//! that misreport their free space) the shard itself runs out of room mid-write.
//! Kills at exact points use the test-only hook `MERGESCOPE_TEST_PAUSE_AT` (the export announces
//! the point on stderr and sleeps there), and `MERGESCOPE_TEST_NO_EXCHANGE=1` forces the
//! two-rename replace of file systems that cannot exchange folders atomically.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::{Duration, Instant};

use mergescope_core::Job;
use mergescope_core::backend::Cpu;
use mergescope_core::dtype::Dtype;
use mergescope_core::export::{Denial, ExportError, ExportOptions};
use mergescope_core::merge::engine::{MergeError, execute};
use mergescope_core::merge::plan::{MergePlan, PlanOptions};
use mergescope_tests::cli::{Run, run_with_env};
use mergescope_tests::fixture::{
    Tensor, big_family, listing, llama_tensors, write_file, write_model_folder,
};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

const RECIPE: &str = "merge_method: task_arithmetic\nbase_model: base\nmodels:\n  - model: ft\n    parameters:\n      weight: 0.5\ntokenizer_source: base\n";

// ---------------------------------------------------------------------------------------------
// Mounts

/// A file system mounted on a folder, unmounted (and its image deleted) on drop.
struct Mount {
    dir: PathBuf,
    image: Option<PathBuf>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

fn quiet(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Mounts a file system of about `size_kib` KiB on `dir` (created): a tmpfs, else a
/// loop-mounted ext2 image beside it. `read_only` mounts it read-only. `None` (after printing
/// why) where this machine allows neither.
fn mount(dir: &Path, size_kib: u64, read_only: bool) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let mode = if read_only { "ro" } else { "rw" };
    if quiet(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_kib}k,{mode}"))
            .arg("tmpfs")
            .arg(dir),
    ) {
        return Some(Mount {
            dir: dir.to_path_buf(),
            image: None,
        });
    }
    let image = dir.with_extension("img");
    let made = std::fs::File::create(&image)
        .and_then(|f| f.set_len(size_kib.max(64) * 1024))
        .is_ok()
        && quiet(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext2", "-m", "0"])
                .arg(&image),
        );
    if made
        && quiet(
            Command::new("mount")
                .args(["-o", &format!("loop,{mode}")])
                .arg(&image)
                .arg(dir),
        )
    {
        return Some(Mount {
            dir: dir.to_path_buf(),
            image: Some(image),
        });
    }
    let _ = std::fs::remove_file(&image);
    eprintln!(
        "skipped: cannot mount a tmpfs or a loop image on {} (needs root or CAP_SYS_ADMIN)",
        dir.display()
    );
    None
}

/// A loop-mounted ext4 image of `size_kib` KiB on `dir`: a real block device, so shard data
/// goes out with `O_DIRECT`. `None` (after printing why) where loop mounts are not allowed.
fn mount_ext4(dir: &Path, size_kib: u64) -> Option<Mount> {
    std::fs::create_dir_all(dir).unwrap();
    let image = dir.with_extension("img");
    let mounted = std::fs::File::create(&image)
        .and_then(|f| f.set_len(size_kib * 1024))
        .is_ok()
        && quiet(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-m", "0"])
                .arg(&image),
        )
        && quiet(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(dir),
        );
    if mounted {
        return Some(Mount {
            dir: dir.to_path_buf(),
            image: Some(image),
        });
    }
    let _ = std::fs::remove_file(&image);
    eprintln!(
        "skipped: cannot mount an ext4 image on {} (needs root and loop devices)",
        dir.display()
    );
    None
}

/// Remounts a mount read-only (its contents stay).
fn remount_read_only(mount: &Mount) {
    assert!(
        quiet(
            Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&mount.dir)
        ),
        "remount {} read-only",
        mount.dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Families, runs and checks

/// base (F32) and ft (BF16), two layers of the small Llama fixture, plus `extra` floats in one
/// more tensor (to make the merge as large as a test needs), config and tokenizer files; and
/// the recipe.
fn family(dir: &Path, extra: usize) {
    for (name, variant, dtype) in [("base", 0, Dtype::F32), ("ft", 1, Dtype::BF16)] {
        let mut tensors = llama_tensors(2, variant);
        if extra > 0 {
            tensors.push(Tensor::new(
                "model.layers.1.mlp.gate_proj.weight",
                &[extra / 8, 8],
                |i| ((i % 17) as f32 - 8.0) * 0.01 * (variant as f32 + 1.0),
            ));
        }
        write_model_folder(&dir.join(name), &tensors, dtype, 2);
    }
    std::fs::write(dir.join("recipe.yml"), RECIPE).unwrap();
}

/// Every input file's bytes (both models and the recipe).
fn inputs(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for entry in ["base", "ft", "recipe.yml"] {
        let path = dir.join(entry);
        let paths = if path.is_dir() {
            listing(&path).into_iter().map(|p| path.join(p)).collect()
        } else {
            vec![path]
        };
        for p in paths.into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&p).unwrap();
            files.insert(p, bytes);
        }
    }
    files
}

fn merge(dir: &Path, out: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut args = vec![
        "merge",
        "recipe.yml",
        "--out",
        out,
        "--backend",
        "cpu",
        "--random-seed",
        "1",
    ];
    args.extend_from_slice(extra_args);
    run_with_env(BIN, dir, &args, env)
}

/// Names in `dir` (not recursive) that an export hides: staging and set-aside folders.
fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".mergescope-"))
        .collect()
}

/// The files of a model folder with their bytes.
fn contents(folder: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    listing(folder)
        .into_iter()
        .filter(|p| folder.join(p).is_file())
        .map(|p| {
            let bytes = std::fs::read(folder.join(&p)).unwrap();
            (p, bytes)
        })
        .collect()
}

/// An existing output to be replaced: a marker file and an "old model" file.
fn old_output(folder: &Path) {
    std::fs::create_dir_all(folder).unwrap();
    std::fs::write(folder.join("marker.txt"), "the old model").unwrap();
    std::fs::write(folder.join("old-weights.bin"), vec![7u8; 4096]).unwrap();
}

fn is_old_output(folder: &Path) -> bool {
    std::fs::read_to_string(folder.join("marker.txt")).is_ok_and(|m| m == "the old model")
        && std::fs::read(folder.join("old-weights.bin")).is_ok_and(|b| b == vec![7u8; 4096])
        && listing(folder).len() == 2
}

/// A complete new model: opens with mergescope's reader, has every tensor, and is byte for
/// byte the reference merge.
fn is_new_output(folder: &Path, reference: &BTreeMap<PathBuf, Vec<u8>>) -> bool {
    let Ok(checkpoint) = mergescope_core::Checkpoint::open(folder) else {
        return false;
    };
    let expected = mergescope_core::Checkpoint::open(reference_dir(folder)).unwrap();
    checkpoint.tensors().len() == expected.tensors().len() && contents(folder) == *reference
}

/// `reference` beside the test's output folder.
fn reference_dir(out: &Path) -> PathBuf {
    out.parent().unwrap().join("reference")
}

// ---------------------------------------------------------------------------------------------
// Disk full

#[test]
fn a_disk_too_small_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    // About 800 KB of tensor data for a 256 KiB disk.
    family(dir.path(), 200_000);
    let Some(_small) = mount(&dir.path().join("small"), 256, false) else {
        return;
    };
    let before = (listing(dir.path()), inputs(dir.path()));
    let line = merge(dir.path(), "small/new/merged", &[], &[]).assert_user_error(&[
        "not enough space for small/new/merged",
        "the merge needs ",
        "KB free on that disk",
        "free some space or choose another folder",
    ]);
    println!("{line}");
    assert_eq!(
        (listing(dir.path()), inputs(dir.path())),
        before,
        "nothing written (not even the parent folder), inputs unchanged"
    );
}

#[test]
fn a_disk_that_fills_up_with_the_sidecar_files_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 0);
    // The tensor data fits, so the up-front check passes; the 400 KB tokenizer does not.
    std::fs::write(
        dir.path().join("base/tokenizer.json"),
        format!("{{\"pad\": \"{}\"}}", "x".repeat(400_000)),
    )
    .unwrap();
    let Some(_small) = mount(&dir.path().join("small"), 256, false) else {
        return;
    };
    let before = (listing(dir.path()), inputs(dir.path()));
    let line = merge(dir.path(), "small/new/parents/merged", &[], &[]).assert_user_error(&[
        "not enough space for small/new/parents/merged",
        "the disk filled up while writing tokenizer.json",
        "free some space or choose another folder",
    ]);
    println!("{line}");
    assert_eq!(
        (listing(dir.path()), inputs(dir.path())),
        before,
        "no staging folder, no created parent folders, inputs unchanged"
    );
}

#[test]
fn a_disk_that_fills_up_in_the_middle_of_a_shard_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 200_000);
    let Some(_small) = mount(&dir.path().join("small"), 256, false) else {
        return;
    };
    let before = (listing(dir.path()), inputs(dir.path()));
    // Past the up-front check, the shard itself runs out of room (on the writer thread).
    let skip = [("MERGESCOPE_SKIP_SPACE_CHECK", "1")];
    let line = merge(dir.path(), "small/merged", &[], &skip).assert_user_error(&[
        "not enough space for small/merged",
        "the disk filled up while writing model.safetensors",
        "free some space or choose another folder",
    ]);
    println!("{line}");
    assert_eq!((listing(dir.path()), inputs(dir.path())), before);
    // Sharded, and replacing an existing output: the old one survives the failure.
    old_output(&dir.path().join("small/merged"));
    let before = (listing(dir.path()), inputs(dir.path()));
    merge(
        dir.path(),
        "small/merged",
        &["--force", "--shard-size", "100KB"],
        &skip,
    )
    .assert_user_error(&["not enough space for small/merged", "model-000"]);
    assert_eq!((listing(dir.path()), inputs(dir.path())), before);
    assert!(is_old_output(&dir.path().join("small/merged")));
}

#[test]
fn a_block_device_that_fills_up_during_direct_writes_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // 10 MB of f32 output: more than one 8 MiB direct-I/O block, on a 4 MiB ext4 disk.
    family(dir.path(), 2_500_000);
    let Some(_disk) = mount_ext4(&dir.path().join("disk"), 4096) else {
        return;
    };
    let before = (listing(dir.path()), inputs(dir.path()));
    // The up-front check refuses it...
    merge(dir.path(), "disk/out/merged", &[], &[]).assert_user_error(&[
        "not enough space for disk/out/merged",
        "MB free on that disk",
    ]);
    assert_eq!((listing(dir.path()), inputs(dir.path())), before);
    // ...and past it, the direct write of the first block fails with ENOSPC.
    let skip = [("MERGESCOPE_SKIP_SPACE_CHECK", "1")];
    let line = merge(dir.path(), "disk/out/merged", &[], &skip).assert_user_error(&[
        "not enough space for disk/out/merged",
        "the disk filled up while writing model.safetensors",
        "free some space or choose another folder",
    ]);
    println!("{line}");
    assert_eq!((listing(dir.path()), inputs(dir.path())), before);
}

// ---------------------------------------------------------------------------------------------
// Unwritable output folder

#[test]
fn a_read_only_output_folder_is_one_line_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 0);
    // Root ignores permission bits, not a read-only file system.
    let Some(ro) = mount(&dir.path().join("ro"), 256, true) else {
        return;
    };
    let before = (listing(dir.path()), inputs(dir.path()));
    let ro_dir = ro.dir.canonicalize().unwrap();
    let ro_text = ro_dir.display().to_string();
    for out in ["ro/merged", "ro/new/parents/merged"] {
        let line = merge(dir.path(), out, &[], &[]).assert_user_error(&[
            &format!("cannot write the output folder {out}"),
            &format!("{ro_text} is on a read-only file system"),
            "choose another folder",
        ]);
        println!("{line}");
        assert_eq!((listing(dir.path()), inputs(dir.path())), before);
    }
    drop(ro);

    // An existing output on a disk that became read-only: --force cannot replace it.
    let Some(rw) = mount(&dir.path().join("rw"), 256, false) else {
        return;
    };
    old_output(&dir.path().join("rw/merged"));
    remount_read_only(&rw);
    let before = (listing(dir.path()), inputs(dir.path()));
    merge(dir.path(), "rw/merged", &["--force"], &[]).assert_user_error(&[
        "cannot write the output folder rw/merged",
        "read-only file system",
    ]);
    assert_eq!((listing(dir.path()), inputs(dir.path())), before);
    assert!(is_old_output(&dir.path().join("rw/merged")));
}

/// A folder with mode 0555, for a user who is not root (root ignores permission bits): the CLI
/// runs as `nobody` through `setpriv`.
#[test]
fn a_folder_without_write_permission_is_one_line_and_nothing_changes() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 0);
    // Everything readable for `nobody` (the safetensors writer makes private files).
    for path in std::iter::once(dir.path().to_path_buf())
        .chain(listing(dir.path()).into_iter().map(|p| dir.path().join(p)))
    {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let as_nobody = |out: &str| {
        let args = ["merge", "recipe.yml", "--out", out, "--backend", "cpu"];
        let output = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(args)
            .current_dir(dir.path())
            .env_remove("RUST_BACKTRACE")
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .ok()?;
        let run = Run {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            output,
        };
        // setpriv itself fails (not root, or no such tool in this image): nothing to test.
        (!run.stderr().starts_with("setpriv:")).then_some(run)
    };
    let before = (listing(dir.path()), inputs(dir.path()));
    let locked_text = locked.canonicalize().unwrap().display().to_string();
    for out in ["locked/merged", "locked/new/parents/merged"] {
        let Some(run) = as_nobody(out) else {
            eprintln!("skipped: cannot run the CLI as an unprivileged user with setpriv");
            return;
        };
        let line = run.assert_user_error(&[
            &format!("cannot write the output folder {out}"),
            &format!("{locked_text} is not writable (permission denied)"),
            "choose another folder or get write permission for it",
        ]);
        println!("{line}");
        assert_eq!((listing(dir.path()), inputs(dir.path())), before);
    }
}

/// The workbench exports through the same `execute` (app/src/gui/worker.rs) and shows the
/// error's text: it gets the same typed errors and lines.
#[test]
fn the_engine_the_workbench_calls_returns_the_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 200_000);
    let Some(ro) = mount(&dir.path().join("ro"), 256, true) else {
        return;
    };
    let Some(_small) = mount(&dir.path().join("small"), 256, false) else {
        return;
    };
    let plan = MergePlan::from_file(
        &dir.path().join("recipe.yml"),
        &PlanOptions {
            cwd: dir.path().to_path_buf(),
            random_seed: Some(1),
            truncate_vocab: false,
        },
    )
    .unwrap();
    let before = (listing(dir.path()), inputs(dir.path()));
    let export = |out: &str| {
        execute(
            &plan,
            &ExportOptions::new(dir.path().join(out)),
            &Cpu,
            &Job::default(),
        )
        .unwrap_err()
    };
    let err = export("ro/merged");
    assert!(
        matches!(
            &err,
            MergeError::Export(ExportError::Unwritable {
                denial: Denial::ReadOnly,
                folder,
                ..
            }) if *folder == ro.dir.canonicalize().unwrap()
        ),
        "{err:?}"
    );
    let err = export("small/merged");
    assert!(
        matches!(&err, MergeError::Export(ExportError::NoSpace { needed, free, .. }) if needed > free),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("free some space or choose another folder")
    );
    assert_eq!((listing(dir.path()), inputs(dir.path())), before);
}

// ---------------------------------------------------------------------------------------------
// --force replace and kill -9

/// Merges once into `reference` (the bytes every complete new output must have).
fn reference(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    merge(dir, "reference", &[], &[]).assert_success();
    contents(&dir.join("reference"))
}

#[test]
fn force_replaces_an_existing_output_and_leaves_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 0);
    let expected = reference(dir.path());
    // Exchanged in one step, and with the two renames of file systems that cannot.
    for env in [&[][..], &[("MERGESCOPE_TEST_NO_EXCHANGE", "1")][..]] {
        old_output(&dir.path().join("merged"));
        let inputs_before = inputs(dir.path());
        merge(dir.path(), "merged", &["--force"], env).assert_success();
        assert!(
            is_new_output(&dir.path().join("merged"), &expected),
            "{env:?}"
        );
        assert!(!dir.path().join("merged/marker.txt").exists());
        assert!(hidden(dir.path()).is_empty(), "{:?}", hidden(dir.path()));
        assert_eq!(inputs(dir.path()), inputs_before);
    }
}

/// Extra environment variables of a run.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Starts a forced merge into `merged` that pauses at `point`; returns once it is there, with
/// its stderr (kept open until the kill).
fn paused_merge(dir: &Path, point: &str, env: &[(&str, &str)]) -> (Child, ChildStderr) {
    let mut child = Command::new(BIN)
        .args([
            "merge",
            "recipe.yml",
            "--out",
            "merged",
            "--force",
            "--backend",
            "cpu",
            "--random-seed",
            "1",
        ])
        .current_dir(dir)
        .env("MERGESCOPE_TEST_PAUSE_AT", point)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let announced = format!("mergescope-test-pause: {point}");
    let mut seen = String::new();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if line.trim_end() == announced {
            return (child, stderr.into_inner());
        }
        seen.push_str(&line);
        line.clear();
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the merge ended before reaching `{point}`:\n{seen}");
}

fn kill_9(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn kill_9_at_every_step_of_a_forced_replace_leaves_the_old_or_the_new_model() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 0);
    let expected = reference(dir.path());
    let out = dir.path().join("merged");
    let no_exchange = [("MERGESCOPE_TEST_NO_EXCHANGE", "1")];
    // (point, env, which model the name must hold after the kill)
    let cases: [(&str, Env<'_>, &str); 7] = [
        ("staging", &[], "old"),
        ("data", &[], "old"),
        ("synced", &[], "old"),
        ("swapped", &[], "new"),
        ("synced", &no_exchange, "old"),
        ("aside", &no_exchange, "aside"),
        ("swapped", &no_exchange, "new"),
    ];
    for (point, env, holds) in cases {
        let what = format!("killed at `{point}` {env:?}");
        old_output(&out);
        let inputs_before = inputs(dir.path());
        let (child, _stderr) = paused_merge(dir.path(), point, env);
        kill_9(child);
        match holds {
            "old" => assert!(is_old_output(&out), "{what}"),
            "new" => assert!(is_new_output(&out, &expected), "{what}"),
            _ => {
                // Between the two renames: the name is empty, the old model set aside whole.
                assert!(!out.exists(), "{what}");
                let aside: Vec<String> = hidden(dir.path())
                    .into_iter()
                    .filter(|n| n.starts_with(".merged.mergescope-replaced-"))
                    .collect();
                assert_eq!(aside.len(), 1, "{what}");
                assert!(is_old_output(&dir.path().join(&aside[0])), "{what}");
                // The next run puts it back before anything else, so without --force it is
                // refused as any existing output would be.
                let run = merge(dir.path(), "merged", &[], &[]);
                run.assert_user_error(&["merged", "not empty", "--force"]);
                assert!(
                    run.stderr().contains("warning: ")
                        && run.stderr().contains("put the previous model back"),
                    "{}",
                    run.stderr()
                );
                assert!(is_old_output(&out), "{what}: restored");
            }
        }
        assert_eq!(inputs(dir.path()), inputs_before, "{what}");
        // The next (normal) run cleans up whatever the killed one left and succeeds.
        merge(dir.path(), "merged", &["--force"], &[]).assert_success();
        assert!(is_new_output(&out, &expected), "{what}: next run");
        assert!(
            hidden(dir.path()).is_empty(),
            "{what}: {:?}",
            hidden(dir.path())
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn kill_9_at_random_times_of_a_real_export_leaves_the_old_or_the_new_model() {
    let dir = tempfile::tempdir().unwrap();
    big_family(dir.path(), 6);
    std::fs::write(dir.path().join("recipe.yml"), RECIPE).unwrap();
    let started = Instant::now();
    let expected = reference(dir.path());
    let took = started.elapsed();
    println!("one merge of the big family: {took:?}");
    let out = dir.path().join("merged");
    let inputs_before = inputs(dir.path());
    // What each kill interrupted: before the staging folder, writing it, or after the swap.
    let mut landed = Vec::new();
    // Spread over the run: the start, the middle, and near the end (finishing).
    let fractions = [0.05, 0.3, 0.6, 0.9, 0.99];
    for fraction in fractions {
        let delay = took.mul_f64(fraction).max(Duration::from_millis(50));
        old_output(&out);
        let child = Command::new(BIN)
            .args([
                "merge",
                "recipe.yml",
                "--out",
                "merged",
                "--force",
                "--backend",
                "cpu",
                "--random-seed",
                "1",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // On a loaded machine a late kill can find the merge finished: that is the "after"
        // case below, not a failure.
        let mut child = child;
        child.kill().unwrap(); // SIGKILL, or nothing if it has ended
        child.wait().unwrap();
        let left = hidden(dir.path());
        if is_old_output(&out) {
            landed.push(if left.is_empty() { "before" } else { "writing" });
        } else {
            assert!(
                is_new_output(&out, &expected),
                "killed after {delay:?}: neither the old nor the complete new model"
            );
            landed.push("after");
        }
        merge(dir.path(), "merged", &["--force"], &[]).assert_success();
        assert!(is_new_output(&out, &expected));
        assert!(hidden(dir.path()).is_empty(), "{:?}", hidden(dir.path()));
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!("the kills landed: {landed:?}");
    assert!(
        landed.contains(&"writing"),
        "no kill landed during the export ({took:?} a merge): {landed:?}"
    );
    assert_eq!(inputs(dir.path()), inputs_before);
}

// ---------------------------------------------------------------------------------------------
// Stale staging

#[test]
fn the_staging_folder_of_a_killed_run_is_removed_by_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    family(dir.path(), 0);
    let dead = 999_999u32;
    if Path::new(&format!("/proc/{dead}")).exists() {
        println!("skipped: process {dead} happens to be running");
        return;
    }
    let stale = dir
        .path()
        .join(format!(".merged.mergescope-partial-{dead}"));
    write_file(
        &stale.join("model.safetensors"),
        &llama_tensors(1, 3),
        Dtype::F32,
    );
    std::fs::write(stale.join("junk"), "half a model").unwrap();
    // pid 1 is alive: another export in progress, whose folder must be left alone.
    let live = dir.path().join(".merged.mergescope-partial-1");
    std::fs::create_dir(&live).unwrap();
    let inputs_before = inputs(dir.path());
    let run = merge(dir.path(), "merged", &[], &[]);
    run.assert_success();
    assert!(!stale.exists());
    assert!(live.exists());
    assert!(
        run.stderr().lines().any(|l| l.starts_with("warning: removed ")
            && l.ends_with(&format!(
                ".merged.mergescope-partial-{dead}, left by an interrupted export (process {dead} has ended)"
            ))),
        "{}",
        run.stderr()
    );
    assert!(mergescope_core::Checkpoint::open(dir.path().join("merged")).is_ok());
    assert_eq!(hidden(dir.path()), [".merged.mergescope-partial-1"]);
    assert_eq!(inputs(dir.path()), inputs_before);
}
