//! Folders an export leaves beside its output when its process is killed: the staging folder
//! `.{name}.mergescope-partial-{pid}` and, from a `--force` replace on a file system that cannot
//! exchange folders, the old model set aside as `.{name}.mergescope-replaced-{pid}`.
//!
//! The next export to the same output repairs both: an old model set aside while `{name}` is
//! missing goes back under its name, and every other such folder whose process has ended is
//! removed. A folder whose process is alive (another export running now) is never touched.

use std::path::{Path, PathBuf};

use super::sys;

pub(super) const PARTIAL: &str = "mergescope-partial";
pub(super) const REPLACED: &str = "mergescope-replaced";

/// `.{name}.{kind}-{pid}`: hidden, next to the output, named after it and its process.
pub(super) fn hidden_name(name: &str, kind: &str, pid: u32) -> String {
    format!(".{name}.{kind}-{pid}")
}

/// The kind and pid of a hidden folder of output `name`, if `entry` is one.
fn parse<'k>(entry: &str, name: &str) -> Option<(&'k str, u32)> {
    let rest = entry
        .strip_prefix('.')?
        .strip_prefix(name)?
        .strip_prefix('.')?;
    [PARTIAL, REPLACED].into_iter().find_map(|kind| {
        let digits = rest.strip_prefix(kind)?.strip_prefix('-')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((kind, digits.parse().ok()?))
    })
}

/// One repair made before an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// `folder` was missing and the old model set aside by a killed `--force` export was put
    /// back under its name.
    Restored { folder: PathBuf, from: PathBuf },
    /// A staging or set-aside folder of a process that has ended was deleted.
    Removed { path: PathBuf, pid: u32 },
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Restored { folder, from } => write!(
                f,
                "{} was missing after an interrupted export; put the previous model back from {}",
                folder.display(),
                from.display()
            ),
            Self::Removed { path, pid } => write!(
                f,
                "removed {}, left by an interrupted export (process {pid} has ended)",
                path.display()
            ),
        }
    }
}

/// Repairs what killed exports left beside `out_dir` (see the module docs) and says what it
/// did. [`Export::begin`](super::Export::begin) does this itself; call it first to tell the
/// user. Best effort: what cannot be repaired is left as it is.
pub fn recover_interrupted(out_dir: &Path) -> Vec<Recovery> {
    let Ok(path) = super::guard::resolve_lenient(out_dir) else {
        return Vec::new();
    };
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => recover_in(parent, &name.to_string_lossy()),
        _ => Vec::new(),
    }
}

pub(super) fn recover_in(parent: &Path, name: &str) -> Vec<Recovery> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut partial = Vec::new();
    let mut replaced = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((kind, pid)) = file_name.to_str().and_then(|n| parse(n, name)) else {
            continue;
        };
        // Our own pid: this process's export (or a dead one's, which our staging replaces).
        if pid == own || sys::process_alive(pid) {
            continue;
        }
        let list = if kind == PARTIAL {
            &mut partial
        } else {
            &mut replaced
        };
        list.push((entry.path(), pid));
    }
    let target = parent.join(name);
    let mut done = Vec::new();
    if !present(&target) && !replaced.is_empty() {
        // Several can only come from several killed replaces in a row: the newest is the model
        // that was under the name last.
        replaced.sort_by_key(|(path, _)| {
            std::cmp::Reverse(
                std::fs::symlink_metadata(path)
                    .and_then(|m| m.modified())
                    .ok(),
            )
        });
        let (from, _) = replaced.remove(0);
        if std::fs::rename(&from, &target).is_ok() {
            let _ = super::sync_dir(parent);
            done.push(Recovery::Restored {
                folder: target.clone(),
                from,
            });
        }
    }
    // Set-aside models are only ever deleted once a model is back under the name.
    let removable = if present(&target) {
        partial.into_iter().chain(replaced).collect::<Vec<_>>()
    } else {
        partial
    };
    for (path, pid) in removable {
        if remove(&path).is_ok() {
            done.push(Recovery::Removed { path, pid });
        }
    }
    done
}

fn present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Deletes a folder with its contents, or a file or link of that name.
pub(super) fn remove(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above any pid_max: certainly not a live process.
    const DEAD: u32 = 999_999_999;

    fn folder(path: &Path, marker: &str) {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("marker"), marker).unwrap();
    }

    use crate::export::tests::names;

    #[test]
    fn parses_only_our_hidden_folders() {
        assert_eq!(
            parse(".m.v1.mergescope-partial-42", "m.v1"),
            Some((PARTIAL, 42))
        );
        assert_eq!(parse(".m.mergescope-replaced-7", "m"), Some((REPLACED, 7)));
        for other in [
            ".m.mergescope-partial-",
            ".m.mergescope-partial-4x",
            ".m.mergescope-partial-+4",
            ".mx.mergescope-partial-4",
            "m.mergescope-partial-4",
            ".m.mergescope-other-4",
            ".m.partial-4",
        ] {
            assert_eq!(parse(other, "m"), None, "{other}");
        }
    }

    #[test]
    fn restores_a_set_aside_model_when_the_name_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let aside = dir.path().join(hidden_name("merged", REPLACED, DEAD));
        let partial = dir.path().join(hidden_name("merged", PARTIAL, DEAD));
        folder(&aside, "old");
        folder(&partial, "new, maybe incomplete");
        let done = recover_in(dir.path(), "merged");
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(matches!(&done[0], Recovery::Restored { from, .. } if *from == aside));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("merged/marker")).unwrap(),
            "old"
        );
        assert_eq!(names(dir.path()), ["merged"]);
        assert!(done[0].to_string().contains("put the previous model back"));
    }

    #[test]
    fn removes_dead_folders_and_keeps_live_ones_and_other_outputs() {
        let dir = tempfile::tempdir().unwrap();
        folder(&dir.path().join("merged"), "new");
        folder(
            &dir.path().join(hidden_name("merged", REPLACED, DEAD)),
            "old",
        );
        folder(
            &dir.path().join(hidden_name("merged", PARTIAL, DEAD - 1)),
            "junk",
        );
        std::fs::write(
            dir.path().join(hidden_name("merged", PARTIAL, DEAD - 2)),
            "a file",
        )
        .unwrap();
        // Alive: pid 1 and this process. Another output's folder: not ours to judge.
        let live = hidden_name("merged", PARTIAL, 1);
        let own = hidden_name("merged", PARTIAL, std::process::id());
        let other = hidden_name("other", PARTIAL, DEAD);
        for name in [&live, &own, &other] {
            folder(&dir.path().join(name), "keep");
        }
        let done = recover_in(dir.path(), "merged");
        assert_eq!(done.len(), 3, "{done:?}");
        assert!(done.iter().all(|r| matches!(r, Recovery::Removed { .. })));
        let mut expected = vec![live, own, other, "merged".to_owned()];
        expected.sort();
        assert_eq!(names(dir.path()), expected);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("merged/marker")).unwrap(),
            "new"
        );
    }

    #[test]
    fn nothing_to_do_is_nothing_done() {
        let dir = tempfile::tempdir().unwrap();
        assert!(recover_in(dir.path(), "merged").is_empty());
        assert!(recover_in(&dir.path().join("nowhere"), "merged").is_empty());
        assert!(recover_interrupted(&dir.path().join("merged")).is_empty());
    }
}
