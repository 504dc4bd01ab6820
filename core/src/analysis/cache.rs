//! Analysis reports cached by input identity and settings, in the user's cache folder, so
//! reopening the same family is instant.

use std::path::{Path, PathBuf};

use super::Report;

/// `$MERGESCOPE_CACHE_DIR`, else `$XDG_CACHE_HOME/mergescope`, else `~/.cache/mergescope`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MERGESCOPE_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mergescope"))
}

fn entry(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("analysis-{key}.json"))
}

/// The cached report for `key`, if one is there and readable.
pub fn load_cached(dir: &Path, key: &str) -> Option<Report> {
    let bytes = std::fs::read(entry(dir, key)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Stores `report` under `key`, atomically (a reader never sees half a file).
pub fn store_cached(dir: &Path, key: &str, report: &Report) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = entry(dir, key);
    let staging = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(
        &staging,
        serde_json::to_vec(report).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&staging, &path)
}
