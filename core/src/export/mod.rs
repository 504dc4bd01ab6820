//! Writing a Hugging Face model folder, atomically and as a stream.
//!
//! Shapes and dtypes of every output tensor are known before any is computed, so the shard
//! layout and each shard's header are fixed up front and tensor data is appended in order as it
//! arrives: no tensor waits in memory for its shard to fill. Everything is written into a hidden
//! sibling folder that is renamed into place only after the last byte is synced; an interrupted
//! or cancelled export leaves nothing that looks like a model.

mod guard;
mod shard_writer;
use shard_writer::ShardWriter;
pub mod sidecar;
mod size;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

pub use size::{format_size, parse_size};

use crate::checkpoint::{INDEX_FILE_NAME, SINGLE_FILE_NAME};
use crate::dtype::Dtype;

/// Hugging Face's default `max_shard_size`.
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// Where and how to write.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub out_dir: PathBuf,
    /// Largest shard in bytes of tensor data (a single larger tensor gets a shard of its own).
    pub shard_size: u64,
    /// Replace a non-empty output folder.
    pub force: bool,
}

impl ExportOptions {
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            shard_size: DEFAULT_SHARD_SIZE,
            force: false,
        }
    }
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
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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

/// An export in progress. Dropping it before [`finish`](Self::finish) removes everything.
#[derive(Debug)]
pub struct Export {
    out: guard::CheckedOutput,
    staging: StagingFolder,
    tensors: Vec<OutputTensor>,
    shards: Vec<ShardPlan>,
    metadata: HashMap<String, String>,
    next: usize,
    open: Option<(usize, ShardWriter)>,
    extra_files: Vec<String>,
}

impl Export {
    /// Checks the output folder against `inputs`, creates the staging folder and plans shards.
    pub fn begin(
        options: &ExportOptions,
        tensors: Vec<OutputTensor>,
        metadata: BTreeMap<String, String>,
        inputs: &[PathBuf],
    ) -> Result<Self, ExportError> {
        let out = guard::check_output(&options.out_dir, inputs, options.force)?;
        let created_parents = create_parents(&out.parent)?;
        let mut staging = StagingFolder::create(&out.parent, &out.name)?;
        staging.created_parents = created_parents;
        let shards = plan_shards(&tensors, options.shard_size.max(1));
        Ok(Self {
            out,
            staging,
            tensors,
            shards,
            metadata: metadata.into_iter().collect(),
            next: 0,
            open: None,
            extra_files: Vec::new(),
        })
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
        writer
            .write_all(bytes)
            .map_err(|source| ExportError::Io { path, source })?;
        self.next += 1;
        Ok(())
    }

    /// Leaves the next tensor's bytes as a hole in a sparse file (they read as zeros) without
    /// writing them: multi-gigabyte fixtures for benchmarks of opening, in no time and no disk.
    pub fn skip_next(&mut self) -> Result<(), ExportError> {
        let (len, path, writer) = self.next_writer()?;
        writer
            .skip(len)
            .map_err(|source| ExportError::Io { path, source })?;
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

    /// Adds a small file (config, tokenizer) to the folder.
    pub fn add_file(&mut self, name: &str, contents: &[u8]) -> Result<(), ExportError> {
        let path = self.staging.path.join(name);
        std::fs::write(&path, contents).map_err(|source| ExportError::Io { path, source })?;
        self.extra_files.push(name.to_owned());
        Ok(())
    }

    /// Writes the index, syncs everything and renames the staging folder into place.
    pub fn finish(mut self) -> Result<ExportSummary, ExportError> {
        if self.next != self.tensors.len() {
            return Err(ExportError::Incomplete {
                written: self.next,
                expected: self.tensors.len(),
            });
        }
        self.close_open_shard()?;
        // A plan with no tensors still writes one (empty) shard so the folder is a valid model.
        if self.tensors.is_empty() {
            drop(self.start_shard(0)?);
        }
        if self.shards.len() > 1 {
            self.write_index()?;
        }
        sync_dir(&self.staging.path);
        let target = &self.out.path;
        let replaced = if self.out.exists {
            let aside = self.out.parent.join(format!(
                ".{}.mergescope-replaced-{}",
                self.out.name,
                std::process::id()
            ));
            std::fs::rename(target, &aside).map_err(|source| ExportError::Io {
                path: target.clone(),
                source,
            })?;
            Some(aside)
        } else {
            None
        };
        if let Err(source) = std::fs::rename(&self.staging.path, target) {
            if let Some(aside) = &replaced {
                let _ = std::fs::rename(aside, target);
            }
            return Err(ExportError::Io {
                path: target.clone(),
                source,
            });
        }
        self.staging.keep();
        sync_dir(&self.out.parent);
        if let Some(aside) = replaced {
            // The new model is in place; failing to delete the old one loses nothing.
            let _ = std::fs::remove_dir_all(aside);
        }
        Ok(ExportSummary {
            out_dir: target.clone(),
            shards: self.shards.iter().map(|s| s.file_name.clone()).collect(),
            tensors: self.tensors.len(),
            data_bytes: self.data_bytes(),
            files: std::mem::take(&mut self.extra_files),
        })
    }

    fn start_shard(&self, shard: usize) -> Result<ShardWriter, ExportError> {
        let plan = &self.shards[shard];
        let path = self.staging.path.join(&plan.file_name);
        let header = self.header(plan)?;
        let mut writer = ShardWriter::create(&path).map_err(|source| ExportError::Io {
            path: path.clone(),
            source,
        })?;
        writer
            .write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|()| writer.write_all(&header))
            .map_err(|source| ExportError::Io { path, source })?;
        Ok(writer)
    }

    /// The shard's header, built with the safetensors crate's own types (so its validation
    /// applies) and padded to 8 bytes as safetensors does, so data starts aligned.
    fn header(&self, plan: &ShardPlan) -> Result<Vec<u8>, ExportError> {
        let mut offset = 0usize;
        let infos = self.tensors[plan.first..plan.end]
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
        let metadata = safetensors::tensor::Metadata::new(Some(self.metadata.clone()), infos)
            .map_err(|e| header_error(e.to_string()))?;
        let mut bytes = serde_json::to_vec(&metadata).map_err(|e| header_error(e.to_string()))?;
        bytes.resize(bytes.len().next_multiple_of(8), b' ');
        Ok(bytes)
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
            .map_err(|source| ExportError::Io { path, source })
    }

    fn write_index(&mut self) -> Result<(), ExportError> {
        let mut weight_map: Vec<(&str, &str)> = self
            .shards
            .iter()
            .flat_map(|s| {
                self.tensors[s.first..s.end]
                    .iter()
                    .map(|t| (t.name.as_str(), s.file_name.as_str()))
            })
            .collect();
        weight_map.sort();
        let index = serde_json::json!({
            "metadata": { "total_size": self.data_bytes() },
            "weight_map": weight_map
                .into_iter()
                .map(|(name, shard)| (name.to_owned(), serde_json::Value::from(shard)))
                .collect::<serde_json::Map<_, _>>(),
        });
        let mut bytes = serde_json::to_vec_pretty(&index).expect("a JSON value always serializes");
        bytes.push(b'\n');
        let path = self.staging.path.join(INDEX_FILE_NAME);
        std::fs::write(&path, bytes).map_err(|source| ExportError::Io { path, source })?;
        let file = File::open(self.staging.path.join(INDEX_FILE_NAME)).ok();
        if let Some(f) = file {
            let _ = f.sync_all();
        }
        Ok(())
    }
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

/// Creates `dir` and its missing ancestors; returns the ones it created, deepest first, so an
/// abandoned export can remove them again.
fn create_parents(dir: &Path) -> Result<Vec<PathBuf>, ExportError> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|a| !a.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    Ok(missing)
}

fn sync_dir(path: &Path) {
    // Persists the directory entries (new files, the rename). Best effort: not every platform
    // can open a directory for syncing.
    if let Ok(dir) = File::open(path) {
        let _ = dir.sync_all();
    }
}

/// A hidden sibling folder that is deleted on drop unless kept, together with the parent
/// folders the export created for it.
#[derive(Debug)]
struct StagingFolder {
    path: PathBuf,
    created_parents: Vec<PathBuf>,
    keep: bool,
}

impl StagingFolder {
    fn create(parent: &Path, name: &str) -> Result<Self, ExportError> {
        let path = parent.join(format!(".{name}.mergescope-partial-{}", std::process::id()));
        if path.exists() {
            // Left by an earlier process with our pid that was killed: it is ours to remove.
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir(&path).map_err(|source| ExportError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            created_parents: Vec::new(),
            keep: false,
        })
    }

    fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
            for parent in &self.created_parents {
                // Only ever removes a folder that is still empty.
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

/// Writes a small file (a recipe, a map, a report) so that no reader ever sees half of it:
/// into a hidden sibling first, synced, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file name", path.display())))?;
    let staging = path.with_file_name(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| {
        let mut file = File::create(&staging)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&staging, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&staging);
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
}
