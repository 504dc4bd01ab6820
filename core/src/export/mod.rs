//! Writing a Hugging Face model folder, atomically and as a stream.
//!
//! Shapes and dtypes of every output tensor are known before any is computed, so the shard
//! layout and each shard's header are fixed up front and tensor data is appended in order as it
//! arrives: no tensor waits in memory for its shard to fill. Everything is written into a hidden
//! sibling folder that is renamed into place only after the last byte is synced; an interrupted
//! or cancelled export leaves nothing that looks like a model. A merge's folder also holds
//! its recipe as `mergekit_config.yml` and a `README.md` model card ([`card`]), written into
//! the same hidden folder so the rename publishes them with the weights.

pub mod card;
mod guard;
pub mod model_folder;
mod shard_writer;
use shard_writer::ShardWriter;
pub mod sidecar;
mod size;
mod stale;
mod sys;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

pub use card::{CARD_FILE, CardScores, MERGEKIT_CONFIG_FILE};
pub use size::{SHARD_SIZE_RANGE, format_size, parse_shard_size, parse_size};
pub use stale::{Recovery, recover_interrupted};

use crate::checkpoint::{INDEX_FILE_NAME, SINGLE_FILE_NAME};
use crate::dtype::Dtype;

/// Hugging Face's default `max_shard_size`.
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// `MERGESCOPE_SKIP_SPACE_CHECK=1` skips the free-space check before an export, for file
/// systems whose free-space figure is wrong (some network and compressing ones). Running out
/// of space while writing is still one clear error with nothing left behind; the tests use this
/// to get there.
pub const SKIP_SPACE_CHECK_ENV: &str = "MERGESCOPE_SKIP_SPACE_CHECK";

/// Test hook, never needed otherwise: `MERGESCOPE_TEST_PAUSE_AT=<point>[,<point>...]` makes an
/// export print `mergescope-test-pause: <point>` on stderr and sleep for a minute there, so a
/// test can `kill -9` the process at exactly that point. Points, in order: `staging` (the
/// staging folder exists), `data` (the first tensor is written), `synced` (every file is
/// written and synced, nothing renamed yet), `aside` (two-rename replace only: the old model is
/// set aside, the new one not yet in place), `swapped` (the new model is in place, the old one
/// not yet deleted).
pub const TEST_PAUSE_ENV: &str = "MERGESCOPE_TEST_PAUSE_AT";

/// Test hook, never needed otherwise: `MERGESCOPE_TEST_NO_EXCHANGE=1` replaces an existing
/// output with two renames, as on file systems that cannot exchange folders atomically.
pub const TEST_NO_EXCHANGE_ENV: &str = "MERGESCOPE_TEST_NO_EXCHANGE";

/// Where and how to write.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub out_dir: PathBuf,
    /// Largest shard in bytes of tensor data (a single larger tensor gets a shard of its own).
    pub shard_size: u64,
    /// Replace a non-empty output folder.
    pub force: bool,
    /// Scores the merge got before it was written (the workbench's preview), for the model
    /// card; `None` leaves them out.
    pub card_scores: Option<CardScores>,
}

impl ExportOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            shard_size: DEFAULT_SHARD_SIZE,
            force: false,
            card_scores: None,
        }
    }
}

/// What is at an output folder now, as [`Export::begin`] will judge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputState {
    /// Nothing there yet: the folder (and its missing parents) will be created.
    Missing,
    /// An empty folder: written into without asking.
    Empty,
    /// A folder with files: replaced only with `force`. `first` holds a few of its entries'
    /// names, sorted, `count` how many there are.
    NotEmpty { first: Vec<String>, count: usize },
}

/// Judges `out` before an export to it, so a caller can ask the user before replacing a
/// folder instead of failing: the same refusals as [`Export::begin`] (an output that is, lies
/// inside or contains one of `inputs`; something that is not a folder), then what is there.
/// Reads only the folder's metadata and its entries' names.
pub fn output_state(out: &Path, inputs: &[PathBuf]) -> Result<OutputState, ExportError> {
    let mut checked = guard::check_output(out, inputs)?;
    // As if forced: a folder with files is what this reports, not a refusal; anything but a
    // folder is still refused.
    guard::check_existing(&mut checked, true)?;
    if !checked.exists {
        return Ok(OutputState::Missing);
    }
    let entries = std::fs::read_dir(&checked.path).map_err(|source| ExportError::Io {
        path: checked.path.clone(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(OutputState::Empty);
    }
    names.sort();
    let count = names.len();
    names.truncate(3);
    Ok(OutputState::NotEmpty {
        first: names,
        count,
    })
}

/// One tensor to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
}

impl OutputTensor {
    pub fn byte_len(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8) as u64
    }
}

/// Why an export failed. Nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "output folder {out} {relation} the input {input}; choose a folder outside every input model"
    )]
    OverlapsInput {
        out: PathBuf,
        relation: &'static str,
        input: PathBuf,
    },
    #[error(
        "output folder {out} is not empty; choose another folder or pass --force to replace it"
    )]
    NotEmpty { out: PathBuf },
    #[error("cannot write to {out}: {reason}")]
    BadOutput { out: PathBuf, reason: String },
    /// Found before anything was written.
    #[error(
        "not enough space for {out}: the merge needs {}, {} free on that disk; free some space or choose another folder",
        format_size(*.needed),
        format_size(*.free)
    )]
    NoSpace {
        out: PathBuf,
        needed: u64,
        free: u64,
    },
    /// Found while writing (`ENOSPC`, `EDQUOT`).
    #[error(
        "not enough space for {out}: {cause} while writing {file} (the merge needs {}{}); free some space or choose another folder",
        format_size(*.needed),
        .free.map(|f| format!(", {} was free when it started", format_size(f))).unwrap_or_default()
    )]
    DiskFull {
        out: PathBuf,
        file: String,
        cause: DiskFullCause,
        needed: u64,
        free: Option<u64>,
    },
    /// `EFBIG`: one file larger than the file system (or the process's limit) allows.
    #[error(
        "cannot write {file} into {out}: it is larger than that file system allows for one file; choose a smaller --shard-size or another folder"
    )]
    FileTooLarge { out: PathBuf, file: String },
    /// `EROFS`, `EACCES`, `EPERM`.
    #[error("cannot write the output folder {out}: {folder} {denial}; {}", .denial.advice())]
    Unwritable {
        out: PathBuf,
        /// The folder the export had to write in: the output's nearest existing ancestor.
        folder: PathBuf,
        denial: Denial,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the safetensors header of {shard}: {reason}")]
    Header { shard: String, reason: String },
    #[error(
        "tensor `{tensor}`: got {got} bytes, its shape and dtype need {expected} (a bug in mergescope; please report it)"
    )]
    WrongSize {
        tensor: String,
        expected: u64,
        got: u64,
    },
    #[error("all {expected} tensors were already written (a bug in mergescope; please report it)")]
    TooManyTensors { expected: usize },
    #[error(
        "the export ended after {written} of {expected} tensors (a bug in mergescope; please report it)"
    )]
    Incomplete { written: usize, expected: usize },
}

/// What ran out in [`ExportError::DiskFull`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFullCause {
    Space,
    Quota,
}

impl std::fmt::Display for DiskFullCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Space => "the disk filled up",
            Self::Quota => "the disk quota ran out",
        })
    }
}

/// Why [`ExportError::Unwritable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    ReadOnly,
    Permission,
}

impl Denial {
    fn advice(self) -> &'static str {
        match self {
            Self::ReadOnly => "choose another folder",
            Self::Permission => "choose another folder or get write permission for it",
        }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ReadOnly => "is on a read-only file system",
            Self::Permission => "is not writable (permission denied)",
        })
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    pub out_dir: PathBuf,
    pub shards: Vec<String>,
    pub tensors: usize,
    pub data_bytes: u64,
    pub files: Vec<String>,
}

#[derive(Debug)]
struct ShardPlan {
    file_name: String,
    /// Range into the tensor list.
    first: usize,
    end: usize,
}

/// The disk an export writes to, for its checks and its messages about space and permission.
#[derive(Clone, Debug)]
struct Room {
    /// The output folder as the caller wrote it.
    out: PathBuf,
    /// The output's nearest existing ancestor: where the export needs to write.
    folder: PathBuf,
    /// Bytes the folder takes on disk: every file rounded up to whole blocks.
    needed: u64,
    block: u64,
    /// Free bytes before the export, where the file system says.
    free: Option<u64>,
}

impl Room {
    fn blocks(&self, bytes: u64) -> u64 {
        bytes.div_ceil(self.block) * self.block
    }

    /// Read-only (always) and too small (when `check_space`) are refused before any write.
    fn check(&self, space: Option<sys::FsSpace>, check_space: bool) -> Result<(), ExportError> {
        let Some(space) = space else {
            return Ok(());
        };
        if space.read_only {
            return Err(self.denied(Denial::ReadOnly));
        }
        if check_space && self.needed > space.available {
            return Err(ExportError::NoSpace {
                out: self.out.clone(),
                needed: self.needed,
                free: space.available,
            });
        }
        Ok(())
    }

    fn denied(&self, denial: Denial) -> ExportError {
        ExportError::Unwritable {
            out: self.out.clone(),
            folder: self.folder.clone(),
            denial,
        }
    }

    /// An I/O failure on `path`, as the user can act on it.
    fn error(&self, path: &Path, source: io::Error) -> ExportError {
        let file = || {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let full = |cause| ExportError::DiskFull {
            out: self.out.clone(),
            file: file(),
            cause,
            needed: self.needed,
            free: self.free,
        };
        match source.kind() {
            io::ErrorKind::StorageFull => full(DiskFullCause::Space),
            io::ErrorKind::QuotaExceeded => full(DiskFullCause::Quota),
            io::ErrorKind::FileTooLarge => ExportError::FileTooLarge {
                out: self.out.clone(),
                file: file(),
            },
            io::ErrorKind::ReadOnlyFilesystem => self.denied(Denial::ReadOnly),
            io::ErrorKind::PermissionDenied => self.denied(Denial::Permission),
            _ => ExportError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// An export in progress. Dropping it before [`finish`](Self::finish) removes everything.
#[derive(Debug)]
pub struct Export {
    out: guard::CheckedOutput,
    room: Room,
    staging: StagingFolder,
    tensors: Vec<OutputTensor>,
    shards: Vec<ShardPlan>,
    /// Each shard's header, built before anything is written.
    headers: Vec<Vec<u8>>,
    /// The index file, when there is more than one shard.
    index: Option<Vec<u8>>,
    next: usize,
    open: Option<(usize, ShardWriter)>,
    extra_files: Vec<String>,
    /// `mergekit_config.yml` and `README.md`, written last (see [`card`]).
    recipe_files: Vec<(&'static str, Vec<u8>)>,
}

impl Export {
    /// Checks the output folder against `inputs`, repairs what killed exports left beside it
    /// ([`recover_interrupted`]), checks that its disk is writable and has room for the tensor
    /// data, creates the staging folder and plans shards.
    pub fn begin(
        options: &ExportOptions,
        tensors: Vec<OutputTensor>,
        metadata: BTreeMap<String, String>,
        inputs: &[PathBuf],
    ) -> Result<Self, ExportError> {
        Self::begin_with(options, tensors, metadata, inputs, true)
    }

    /// [`begin`](Self::begin) without the free-space check, for fixtures whose tensors are all
    /// [`skip_next`](Self::skip_next)ped: holes take no space.
    pub fn begin_sparse(
        options: &ExportOptions,
        tensors: Vec<OutputTensor>,
        metadata: BTreeMap<String, String>,
    ) -> Result<Self, ExportError> {
        Self::begin_with(options, tensors, metadata, &[], false)
    }

    fn begin_with(
        options: &ExportOptions,
        tensors: Vec<OutputTensor>,
        metadata: BTreeMap<String, String>,
        inputs: &[PathBuf],
        check_space: bool,
    ) -> Result<Self, ExportError> {
        let mut out = guard::check_output(&options.out_dir, inputs)?;
        stale::recover_in(&out.parent, &out.name);
        guard::check_existing(&mut out, options.force)?;

        let shards = plan_shards(&tensors, options.shard_size.max(1));
        let recipe_files = card::recipe_files(&metadata, options.card_scores.as_ref());
        let metadata: HashMap<String, String> = metadata.into_iter().collect();
        let headers = shards
            .iter()
            .map(|plan| header(&tensors, &metadata, plan))
            .collect::<Result<Vec<_>, _>>()?;
        let index = (shards.len() > 1).then(|| index_bytes(&tensors, &shards));

        let folder = nearest_existing(&out.parent);
        let space = sys::space(&folder);
        let mut room = Room {
            out: out.given.clone(),
            folder,
            needed: 0,
            block: space.map_or(1, |s| s.block.max(1)),
            free: space.map(|s| s.available).filter(|&a| a != u64::MAX),
        };
        room.needed = room.block // the folder itself
            + shards
                .iter()
                .zip(&headers)
                .map(|(plan, header)| {
                    let data: u64 = tensors[plan.first..plan.end]
                        .iter()
                        .map(OutputTensor::byte_len)
                        .sum();
                    room.blocks(8 + header.len() as u64 + data)
                })
                .sum::<u64>()
            + index.as_ref().map_or(0, |i| room.blocks(i.len() as u64))
            + recipe_files
                .iter()
                .map(|(_, bytes)| room.blocks(bytes.len() as u64))
                .sum::<u64>();
        let skip = std::env::var_os(SKIP_SPACE_CHECK_ENV).is_some_and(|v| v == "1");
        room.check(space, check_space && !skip)?;

        let staging = StagingFolder::create(&out, &room)?;
        test_pause("staging");
        Ok(Self {
            out,
            room,
            staging,
            tensors,
            shards,
            headers,
            index,
            next: 0,
            open: None,
            extra_files: Vec::new(),
            recipe_files,
        })
    }

    /// Names the weights file of a one-shard export `name` instead of `model.safetensors` (a
    /// PEFT adapter's `adapter_model.safetensors`). Call it before the first tensor is written.
    ///
    /// # Panics
    /// If the export has several shards or has begun writing: a caller bug.
    pub fn name_weights_file(&mut self, name: &str) {
        assert!(
            self.shards.len() == 1 && self.next == 0 && self.open.is_none(),
            "only a one-shard export that has not begun writing can rename its weights file"
        );
        self.shards[0].file_name = name.to_owned();
    }

    /// Total bytes of tensor data to be written.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.iter().map(OutputTensor::byte_len).sum()
    }

    /// The tensor [`write_next`](Self::write_next) expects, `None` when all are written.
    pub fn next_tensor(&self) -> Option<&OutputTensor> {
        self.tensors.get(self.next)
    }

    /// Appends the next tensor's data (in the order given to [`begin`](Self::begin)).
    pub fn write_next(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        let (expected, path, writer) = self.next_writer()?;
        if bytes.len() as u64 != expected {
            return Err(ExportError::WrongSize {
                tensor: self.tensors[self.next].name.clone(),
                expected,
                got: bytes.len() as u64,
            });
        }
        let written = writer.write_all(bytes);
        written.map_err(|source| self.room.error(&path, source))?;
        self.next += 1;
        if self.next == 1 {
            test_pause("data");
        }
        Ok(())
    }

    /// Leaves the next tensor's bytes as a hole in a sparse file (they read as zeros) without
    /// writing them: multi-gigabyte fixtures for benchmarks of opening, in no time and no disk.
    pub fn skip_next(&mut self) -> Result<(), ExportError> {
        let (len, path, writer) = self.next_writer()?;
        let skipped = writer.skip(len);
        skipped.map_err(|source| self.room.error(&path, source))?;
        self.next += 1;
        Ok(())
    }

    /// The open shard writer positioned for the next tensor, with that tensor's length.
    fn next_writer(&mut self) -> Result<(u64, PathBuf, &mut ShardWriter), ExportError> {
        let Some(tensor) = self.tensors.get(self.next) else {
            return Err(ExportError::TooManyTensors {
                expected: self.tensors.len(),
            });
        };
        let len = tensor.byte_len();
        let shard = self
            .shards
            .iter()
            .position(|s| (s.first..s.end).contains(&self.next))
            .expect("every tensor belongs to a planned shard");
        if self.open.as_ref().is_none_or(|(open, _)| *open != shard) {
            self.close_open_shard()?;
            let writer = self.start_shard(shard)?;
            self.open = Some((shard, writer));
        }
        let path = self.staging.path.join(&self.shards[shard].file_name);
        let (_, writer) = self.open.as_mut().expect("a shard was just opened");
        Ok((len, path, writer))
    }

    /// Adds a small file (config, tokenizer, recipe) to the folder, synced to disk.
    pub fn add_file(&mut self, name: &str, contents: &[u8]) -> Result<(), ExportError> {
        self.room.needed += self.room.blocks(contents.len() as u64);
        self.write_file(name, contents)
    }

    fn write_file(&mut self, name: &str, contents: &[u8]) -> Result<(), ExportError> {
        let path = self.staging.path.join(name);
        write_synced(&path, contents).map_err(|source| self.room.error(&path, source))?;
        self.extra_files.push(name.to_owned());
        Ok(())
    }

    /// Writes the index, syncs everything and puts the folder in place under its name; an
    /// existing output (`force`) is swapped out in one step where the file system can.
    pub fn finish(self) -> Result<ExportSummary, ExportError> {
        let exchange = std::env::var_os(TEST_NO_EXCHANGE_ENV).is_none_or(|v| v != "1");
        self.finish_with(exchange)
    }

    /// [`finish`](Self::finish); `exchange` false replaces an existing output with two renames.
    fn finish_with(mut self, exchange: bool) -> Result<ExportSummary, ExportError> {
        if self.next != self.tensors.len() {
            return Err(ExportError::Incomplete {
                written: self.next,
                expected: self.tensors.len(),
            });
        }
        self.close_open_shard()?;
        // A plan with no tensors still writes one (empty) shard so the folder is a valid model.
        if self.tensors.is_empty() {
            let path = self.staging.path.join(&self.shards[0].file_name);
            let writer = self.start_shard(0)?;
            let finished = writer.finish();
            finished.map_err(|source| self.room.error(&path, source))?;
        }
        // Counted in `room.needed` already. A file of the same name added by the caller (a
        // model's own README.md among copied files) is the caller's choice and stays.
        for (name, contents) in std::mem::take(&mut self.recipe_files) {
            if !self.extra_files.iter().any(|f| f == name) {
                self.write_file(name, &contents)?;
            }
        }
        if let Some(index) = &self.index {
            let path = self.staging.path.join(INDEX_FILE_NAME);
            write_synced(&path, index).map_err(|source| self.room.error(&path, source))?;
        }
        sync_dir(&self.staging.path).map_err(|source| self.room.error(&self.out.path, source))?;
        test_pause("synced");
        self.put_in_place(exchange)?;
        Ok(ExportSummary {
            out_dir: self.out.path.clone(),
            shards: self.shards.iter().map(|s| s.file_name.clone()).collect(),
            tensors: self.tensors.len(),
            data_bytes: self.data_bytes(),
            files: std::mem::take(&mut self.extra_files),
        })
    }

    /// Moves the synced staging folder to the output's name. At every instant the name holds
    /// the old model or the new one, except in the two-rename fallback, where a crash between
    /// the renames leaves the old one set aside for the next export to put back
    /// ([`recover_interrupted`]).
    /// (`exchange` false: always the two renames, as where the file system cannot exchange.)
    fn put_in_place(&mut self, exchange: bool) -> Result<(), ExportError> {
        let target = self.out.path.clone();
        let parent = self.out.parent.clone();
        if self.out.exists && std::fs::symlink_metadata(&target).is_ok() {
            let exchanged = if exchange {
                sys::exchange(&self.staging.path, &target)
            } else {
                Err(io::Error::from(io::ErrorKind::Unsupported))
            };
            match exchanged {
                Ok(()) => {
                    // The new model is under the name; the old one is where staging was.
                    let _ = sync_dir(&parent);
                    test_pause("swapped");
                    // The old model is gone from the name either way; deleting it is tidying.
                    let _ = stale::remove(&self.staging.path);
                    self.staging.keep();
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Unsupported | io::ErrorKind::InvalidInput
                    ) =>
                {
                    return self.replace_by_renames(&target, &parent);
                }
                // The old folder vanished meanwhile: a plain rename below.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.room.error(&target, e)),
            }
        }
        if let Err(e) = std::fs::rename(&self.staging.path, &target) {
            return Err(if e.kind() == io::ErrorKind::DirectoryNotEmpty {
                // Someone filled the name while we wrote.
                ExportError::NotEmpty {
                    out: self.out.given.clone(),
                }
            } else {
                self.room.error(&target, e)
            });
        }
        self.staging.keep();
        let _ = sync_dir(&parent);
        for created in &self.staging.created_parents {
            if let Some(above) = created.parent() {
                let _ = sync_dir(above);
            }
        }
        Ok(())
    }

    /// Replaces `target` with two renames, for file systems that cannot exchange: the old
    /// folder is set aside, the new one renamed in, the old one deleted.
    fn replace_by_renames(&mut self, target: &Path, parent: &Path) -> Result<(), ExportError> {
        let aside = parent.join(stale::hidden_name(
            &self.out.name,
            stale::REPLACED,
            std::process::id(),
        ));
        if std::fs::symlink_metadata(&aside).is_ok() {
            // Left by an earlier process with our pid: ours to remove.
            let _ = stale::remove(&aside);
        }
        std::fs::rename(target, &aside).map_err(|source| self.room.error(target, source))?;
        let _ = sync_dir(parent);
        test_pause("aside");
        if let Err(source) = std::fs::rename(&self.staging.path, target) {
            let _ = std::fs::rename(&aside, target);
            return Err(self.room.error(target, source));
        }
        self.staging.keep();
        let _ = sync_dir(parent);
        test_pause("swapped");
        // The new model is in place; failing to delete the old one loses nothing (and the
        // next export removes it).
        let _ = stale::remove(&aside);
        Ok(())
    }

    fn start_shard(&self, shard: usize) -> Result<ShardWriter, ExportError> {
        let path = self.staging.path.join(&self.shards[shard].file_name);
        let header = &self.headers[shard];
        let mut writer =
            ShardWriter::create(&path).map_err(|source| self.room.error(&path, source))?;
        writer
            .write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| writer.write_all(header))
            .map_err(|source| self.room.error(&path, source))?;
        Ok(writer)
    }

    fn close_open_shard(&mut self) -> Result<(), ExportError> {
        let Some((shard, writer)) = self.open.take() else {
            return Ok(());
        };
        let path = self.staging.path.join(&self.shards[shard].file_name);
        // Full length (a shard may end in skipped tensors, a hole) and durable before the
        // rename makes it visible: a crash must not leave a renamed folder with half-flushed
        // shards.
        writer
            .finish()
            .map_err(|source| self.room.error(&path, source))
    }
}

/// A shard's header, built with the safetensors crate's own types (so its validation applies)
/// and padded to 8 bytes as safetensors does, so data starts aligned.
fn header(
    tensors: &[OutputTensor],
    metadata: &HashMap<String, String>,
    plan: &ShardPlan,
) -> Result<Vec<u8>, ExportError> {
    let mut offset = 0usize;
    let infos = tensors[plan.first..plan.end]
        .iter()
        .map(|t| {
            let len = t.byte_len() as usize;
            let info = safetensors::tensor::TensorInfo {
                dtype: t.dtype,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + len),
            };
            offset += len;
            (t.name.clone(), info)
        })
        .collect();
    let header_error = |reason: String| ExportError::Header {
        shard: plan.file_name.clone(),
        reason,
    };
    let metadata = safetensors::tensor::Metadata::new(Some(metadata.clone()), infos)
        .map_err(|e| header_error(e.to_string()))?;
    // The same merge makes the same bytes: `__metadata__` comes out of a HashMap, so its keys
    // are put in order (the tensors keep theirs, by offset).
    let mut value = serde_json::to_value(&metadata).map_err(|e| header_error(e.to_string()))?;
    if let Some(meta) = value
        .get_mut("__metadata__")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.sort_keys();
    }
    let mut bytes = serde_json::to_vec(&value).map_err(|e| header_error(e.to_string()))?;
    bytes.resize(bytes.len().next_multiple_of(8), b' ');
    Ok(bytes)
}

/// `model.safetensors.index.json`: total size and which shard holds each tensor.
fn index_bytes(tensors: &[OutputTensor], shards: &[ShardPlan]) -> Vec<u8> {
    let mut weight_map: Vec<(&str, &str)> = shards
        .iter()
        .flat_map(|s| {
            tensors[s.first..s.end]
                .iter()
                .map(|t| (t.name.as_str(), s.file_name.as_str()))
        })
        .collect();
    weight_map.sort();
    let total: u64 = tensors.iter().map(OutputTensor::byte_len).sum();
    let index = serde_json::json!({
        "metadata": { "total_size": total },
        "weight_map": weight_map
            .into_iter()
            .map(|(name, shard)| (name.to_owned(), serde_json::Value::from(shard)))
            .collect::<serde_json::Map<_, _>>(),
    });
    let mut bytes = serde_json::to_vec_pretty(&index).expect("a JSON value always serializes");
    bytes.push(b'\n');
    bytes
}

/// Greedy in tensor order, as Hugging Face shards: a new shard starts when the next tensor
/// would push the current one past `limit`.
fn plan_shards(tensors: &[OutputTensor], limit: u64) -> Vec<ShardPlan> {
    let mut ranges = Vec::new();
    let mut first = 0;
    let mut size = 0u64;
    for (i, t) in tensors.iter().enumerate() {
        let len = t.byte_len();
        if i > first && size + len > limit {
            ranges.push((first, i));
            first = i;
            size = 0;
        }
        size += len;
    }
    ranges.push((first, tensors.len()));
    let count = ranges.len();
    ranges
        .into_iter()
        .enumerate()
        .map(|(i, (first, end))| ShardPlan {
            file_name: if count == 1 {
                SINGLE_FILE_NAME.to_owned()
            } else {
                format!("model-{:05}-of-{count:05}.safetensors", i + 1)
            },
            first,
            end,
        })
        .collect()
}

/// `dir` itself or its nearest ancestor that exists.
fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|a| a.exists())
        .unwrap_or(dir)
        .to_path_buf()
}

/// Creates `dir` and its missing ancestors, shallowest first; returns the ones it created,
/// deepest first, so an abandoned export can remove them again. On failure it removes what it
/// created and says which folder failed.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.exists())
        .map(Path::to_path_buf)
        .collect();
    for (i, folder) in missing.iter().enumerate().rev() {
        match std::fs::create_dir(folder) {
            Ok(()) => {}
            // Created meanwhile by someone else: theirs, not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && folder.is_dir() => {}
            Err(e) => {
                for created in &missing[i + 1..] {
                    let _ = std::fs::remove_dir(created);
                }
                return Err((folder.clone(), e));
            }
        }
    }
    Ok(missing)
}

/// Writes `contents` to a new file at `path` and syncs it to disk.
fn write_synced(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Persists a folder's entries (new files, a rename). Platforms that cannot open or sync a
/// folder count as done.
fn sync_dir(path: &Path) -> io::Result<()> {
    let Ok(dir) = File::open(path) else {
        return Ok(());
    };
    match dir.sync_all() {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Prints the pause point and sleeps there when [`TEST_PAUSE_ENV`] names it.
fn test_pause(point: &str) {
    let Some(points) = std::env::var_os(TEST_PAUSE_ENV) else {
        return;
    };
    if points
        .to_string_lossy()
        .split(',')
        .any(|p| p.trim() == point)
    {
        eprintln!("mergescope-test-pause: {point}");
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// The hidden sibling folder an export writes into, deleted on drop unless kept, together with
/// the parent folders the export created for it.
#[derive(Debug)]
struct StagingFolder {
    path: PathBuf,
    created_parents: Vec<PathBuf>,
    keep: bool,
}

impl StagingFolder {
    /// Creates the output's missing parents and `.{name}.mergescope-partial-{pid}` beside it.
    fn create(out: &guard::CheckedOutput, room: &Room) -> Result<Self, ExportError> {
        let created_parents =
            create_parents(&out.parent).map_err(|(path, source)| room.error(&path, source))?;
        // From here on, dropping `staging` removes the parents again.
        let staging = Self {
            path: out.parent.join(stale::hidden_name(
                &out.name,
                stale::PARTIAL,
                std::process::id(),
            )),
            created_parents,
            keep: false,
        };
        if std::fs::symlink_metadata(&staging.path).is_ok() {
            // Left by an earlier process with our pid that was killed: it is ours to remove.
            let _ = stale::remove(&staging.path);
        }
        // Errors name the output folder: the staging folder is its hidden future self.
        std::fs::create_dir(&staging.path).map_err(|source| room.error(&out.path, source))?;
        Ok(staging)
    }

    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        if !self.keep {
            let _ = stale::remove(&self.path);
            for parent in &self.created_parents {
                // Only ever removes a folder that is still empty.
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// Writes a small file (a recipe, a map, a report) so that no reader ever sees half of it:
/// into a hidden sibling first, synced, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} is not a file name", path.display())))?;
    let staging = path.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = write_synced(&staging, bytes).and_then(|()| std::fs::rename(&staging, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
    } else if let Some(parent) = path.parent() {
        let _ = sync_dir(parent);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, n: usize) -> OutputTensor {
        OutputTensor {
            name: name.to_owned(),
            dtype: Dtype::F32,
            shape: vec![n],
        }
    }

    #[test]
    fn shards_greedily_and_names_like_hugging_face() {
        let tensors = vec![
            tensor("a", 10),
            tensor("b", 10),
            tensor("c", 30),
            tensor("d", 1),
        ];
        let shards = plan_shards(&tensors, 100);
        let spans: Vec<_> = shards
            .iter()
            .map(|s| (s.first, s.end, s.file_name.as_str()))
            .collect();
        assert_eq!(
            spans,
            vec![
                (0, 2, "model-00001-of-00003.safetensors"),
                (2, 3, "model-00002-of-00003.safetensors"),
                (3, 4, "model-00003-of-00003.safetensors")
            ]
        );
        let one = plan_shards(&tensors, 1 << 30);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].file_name, "model.safetensors");
    }

    #[test]
    fn dropping_an_unfinished_export_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new/parents/merged");
        let mut export = Export::begin(
            &ExportOptions::new(&out),
            vec![tensor("a", 4), tensor("b", 4)],
            BTreeMap::new(),
            &[],
        )
        .unwrap();
        export.write_next(&[0u8; 16]).unwrap();
        drop(export);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn skipped_tensors_read_as_zeros_from_full_length_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sparse");
        let mut export = Export::begin(
            &ExportOptions::new(&out),
            vec![tensor("a", 2), tensor("b", 1000)],
            BTreeMap::new(),
            &[],
        )
        .unwrap();
        export
            .write_next(bytemuck::cast_slice(&[1.0f32, 2.0]))
            .unwrap();
        export.skip_next().unwrap();
        export.finish().unwrap();
        let bytes = std::fs::read(out.join(SINGLE_FILE_NAME)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(st.tensor("b").unwrap().data().iter().all(|&b| b == 0));
        assert_eq!(
            st.tensor("a").unwrap().data(),
            bytemuck::cast_slice::<f32, u8>(&[1.0, 2.0])
        );
    }

    #[test]
    fn written_shards_read_back_with_the_safetensors_crate() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        let mut options = ExportOptions::new(&out);
        options.shard_size = 19;
        let meta = BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let mut export = Export::begin(
            &options,
            vec![tensor("a", 4), tensor("b", 4), tensor("c", 1)],
            meta,
            &[],
        )
        .unwrap();
        for (i, n) in [4usize, 4, 1].into_iter().enumerate() {
            let values: Vec<f32> = (0..n).map(|j| (i * 10 + j) as f32).collect();
            export.write_next(bytemuck::cast_slice(&values)).unwrap();
        }
        let summary = export.finish().unwrap();
        assert_eq!(summary.shards.len(), 3);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(INDEX_FILE_NAME)).unwrap()).unwrap();
        assert_eq!(index["weight_map"]["c"], "model-00003-of-00003.safetensors");
        let bytes = std::fs::read(out.join("model-00002-of-00003.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let b = st.tensor("b").unwrap();
        let values: &[f32] = bytemuck::cast_slice(b.data());
        assert_eq!(values, &[10.0, 11.0, 12.0, 13.0]);
    }

    /// The entries of `dir`, sorted (also for `stale`'s tests).
    pub(super) fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replacing_an_output_leaves_the_new_model_and_nothing_else() {
        // Exchanged in one step, and with the two renames of file systems that cannot.
        for exchange in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join("merged");
            std::fs::create_dir(&out).unwrap();
            std::fs::write(out.join("marker"), "old").unwrap();
            let mut options = ExportOptions::new(&out);
            let err =
                Export::begin(&options, vec![tensor("a", 2)], BTreeMap::new(), &[]).unwrap_err();
            assert!(matches!(err, ExportError::NotEmpty { .. }), "{err}");
            options.force = true;
            let mut export =
                Export::begin(&options, vec![tensor("a", 2)], BTreeMap::new(), &[]).unwrap();
            export.write_next(&[7u8; 8]).unwrap();
            export.add_file("config.json", b"{}").unwrap();
            export.finish_with(exchange).unwrap();
            assert_eq!(names(dir.path()), ["merged"], "exchange: {exchange}");
            assert_eq!(names(&out), ["config.json", SINGLE_FILE_NAME]);
        }
    }

    #[test]
    fn the_output_is_judged_before_writing_as_the_export_will() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("merged");
        assert_eq!(output_state(&out, &[]).unwrap(), OutputState::Missing);
        std::fs::create_dir(&out).unwrap();
        assert_eq!(output_state(&out, &[]).unwrap(), OutputState::Empty);
        for name in ["d", "c", "b", "a"] {
            std::fs::write(out.join(name), name).unwrap();
        }
        assert_eq!(
            output_state(&out, &[]).unwrap(),
            OutputState::NotEmpty {
                first: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
                count: 4
            }
        );
        // An input inside it, or a file in its place, is refused as the export refuses it.
        let err = output_state(dir.path(), &[out.join("a")]).unwrap_err();
        assert!(matches!(err, ExportError::OverlapsInput { .. }), "{err}");
        let err = output_state(&out.join("a"), &[]).unwrap_err();
        assert!(matches!(err, ExportError::BadOutput { .. }), "{err}");
    }

    #[test]
    fn begin_puts_a_set_aside_model_back_before_judging_the_output() {
        let dir = tempfile::tempdir().unwrap();
        // A replace by renames killed between them: the name is missing, the old model aside.
        let aside = dir.path().join(".merged.mergescope-replaced-999999999");
        std::fs::create_dir(&aside).unwrap();
        std::fs::write(aside.join("marker"), "old").unwrap();
        let options = ExportOptions::new(dir.path().join("merged"));
        let err = Export::begin(&options, vec![tensor("a", 2)], BTreeMap::new(), &[]).unwrap_err();
        // Back under its name, so without --force it is a folder we must not overwrite.
        assert!(matches!(err, ExportError::NotEmpty { .. }), "{err}");
        assert_eq!(names(dir.path()), ["merged"]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("merged/marker")).unwrap(),
            "old"
        );
    }

    #[test]
    fn headers_are_the_same_bytes_every_time() {
        let tensors = vec![tensor("a", 2), tensor("b", 3)];
        let plan = &plan_shards(&tensors, 1 << 20)[0];
        let meta = |keys: &[&str]| -> HashMap<String, String> {
            keys.iter()
                .map(|k| ((*k).to_owned(), format!("value of {k}")))
                .collect()
        };
        let first = header(&tensors, &meta(&["z", "a", "m", "b", "q"]), plan).unwrap();
        for _ in 0..8 {
            // A fresh HashMap iterates in another order each time.
            assert_eq!(
                header(&tensors, &meta(&["q", "b", "m", "a", "z"]), plan).unwrap(),
                first
            );
        }
        let text = String::from_utf8(first).unwrap();
        assert!(
            text.starts_with(r#"{"__metadata__":{"a":"value of a","b":"#),
            "{text}"
        );
        assert!(text.find("\"a\":{").unwrap() < text.find("\"b\":{").unwrap());
    }

    fn room() -> Room {
        Room {
            out: PathBuf::from("out/merged"),
            folder: PathBuf::from("/data"),
            needed: 1_200_000,
            block: 4096,
            free: Some(300_000),
        }
    }

    #[test]
    fn space_and_permission_are_checked_before_writing() {
        let space = |available, read_only| {
            Some(sys::FsSpace {
                available,
                block: 4096,
                read_only,
            })
        };
        let room = room();
        assert_eq!(room.blocks(1), 4096);
        assert_eq!(room.blocks(8192), 8192);
        room.check(space(1_200_000, false), true).unwrap();
        room.check(None, true).unwrap();
        // Skipped on request, but a read-only disk is refused regardless.
        room.check(space(10, false), false).unwrap();
        let full = room.check(space(300_000, false), true).unwrap_err();
        assert_eq!(
            full.to_string(),
            "not enough space for out/merged: the merge needs 1.20 MB, 300.00 KB free on that \
             disk; free some space or choose another folder"
        );
        let read_only = room.check(space(u64::MAX, true), false).unwrap_err();
        assert_eq!(
            read_only.to_string(),
            "cannot write the output folder out/merged: /data is on a read-only file system; \
             choose another folder"
        );
    }

    #[test]
    fn io_errors_become_lines_the_user_can_act_on() {
        let room = room();
        let error = |kind| {
            room.error(Path::new("/data/.x/tokenizer.json"), io::Error::from(kind))
                .to_string()
        };
        assert_eq!(
            error(io::ErrorKind::StorageFull),
            "not enough space for out/merged: the disk filled up while writing tokenizer.json \
             (the merge needs 1.20 MB, 300.00 KB was free when it started); free some space or \
             choose another folder"
        );
        assert!(error(io::ErrorKind::QuotaExceeded).contains("the disk quota ran out"));
        assert!(error(io::ErrorKind::FileTooLarge).contains("--shard-size"));
        assert!(error(io::ErrorKind::PermissionDenied).contains("/data is not writable"));
        assert!(error(io::ErrorKind::ReadOnlyFilesystem).contains("read-only"));
        assert!(error(io::ErrorKind::Interrupted).starts_with("/data/.x/tokenizer.json: "));
    }
}
