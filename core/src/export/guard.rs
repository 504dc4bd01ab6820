//! Where an export may write: never over, into, or around an input.

use std::path::{Component, Path, PathBuf};

use super::ExportError;

/// The output folder, checked against the inputs.
#[derive(Debug)]
pub(super) struct CheckedOutput {
    /// As the caller wrote it, for messages.
    pub given: PathBuf,
    /// Absolute, with symlinks in its existing part resolved.
    pub path: PathBuf,
    pub parent: PathBuf,
    pub name: String,
    /// Whether `path` exists (an empty folder, or anything when forced); set by
    /// [`check_existing`].
    pub exists: bool,
}

/// Refuses an output folder that is an input, lies inside an input's folder, or contains an
/// input (replacing it would delete the input).
pub(super) fn check_output(out: &Path, inputs: &[PathBuf]) -> Result<CheckedOutput, ExportError> {
    let path = resolve_lenient(out).map_err(|source| ExportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    for input in inputs {
        let Ok(input) = input.canonicalize() else {
            continue;
        };
        let offending = if path == input {
            Some("is")
        } else if path.starts_with(&input) {
            Some("is inside")
        } else if input.starts_with(&path) {
            Some("contains")
        } else {
            None
        };
        if let Some(relation) = offending {
            return Err(ExportError::OverlapsInput {
                out: out.to_path_buf(),
                relation,
                input,
            });
        }
    }
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent.to_path_buf(), name.to_string_lossy().into_owned()),
        _ => {
            return Err(ExportError::BadOutput {
                out: out.to_path_buf(),
                reason: "it has no parent folder".to_owned(),
            });
        }
    };
    Ok(CheckedOutput {
        given: out.to_path_buf(),
        path,
        parent,
        name,
        exists: false,
    })
}

/// Sets `out.exists`; refuses a non-empty folder unless `force`, and anything but a folder.
pub(super) fn check_existing(out: &mut CheckedOutput, force: bool) -> Result<(), ExportError> {
    out.exists = match std::fs::symlink_metadata(&out.path) {
        Ok(meta) if meta.is_dir() => {
            let mut entries = std::fs::read_dir(&out.path).map_err(|source| ExportError::Io {
                path: out.path.clone(),
                source,
            })?;
            if entries.next().is_some() && !force {
                return Err(ExportError::NotEmpty {
                    out: out.given.clone(),
                });
            }
            true
        }
        Ok(_) => {
            return Err(ExportError::BadOutput {
                out: out.given.clone(),
                reason: "it exists and is not a folder".to_owned(),
            });
        }
        Err(_) => false,
    };
    Ok(())
}

/// Absolute form of `path` with the existing prefix canonicalised, so `out/../base` and a
/// symlink to an input are recognised even though `path` itself may not exist yet.
pub(super) fn resolve_lenient(path: &Path) -> std::io::Result<PathBuf> {
    let absolute = std::path::absolute(path)?;
    let mut existing = absolute.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    for part in rest.into_iter().rev() {
        match Path::new(&part).components().next() {
            Some(Component::ParentDir) => {
                resolved.pop();
            }
            Some(Component::CurDir) | None => {}
            _ => resolved.push(part),
        }
    }
    Ok(resolved)
}
