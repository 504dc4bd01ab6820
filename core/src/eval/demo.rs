//! The built-in demo family, shipped inside the binary (about 750 KB) so it opens offline from
//! any folder: `assets/demo/` as `train-demo` wrote it.

use std::path::{Path, PathBuf};

use super::digits::Domain;

macro_rules! member {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../../assets/demo/", $name, "/config.json")).as_slice(),
            include_bytes!(concat!(
                "../../../assets/demo/",
                $name,
                "/model.safetensors"
            ))
            .as_slice(),
        )
    };
}

/// (folder name, config.json, model.safetensors) of every member, the base first.
const MEMBERS: [(&str, &[u8], &[u8]); 5] = [
    member!("base"),
    member!("upright"),
    member!("rotated"),
    member!("mirrored"),
    member!("inverted"),
];

/// The merge recipes shipped with the family (models named `../base`, `../upright`, …).
pub const RECIPES: [(&str, &str); 3] = [
    (
        "linear",
        include_str!("../../../assets/demo/recipes/linear.yml"),
    ),
    (
        "task_arithmetic",
        include_str!("../../../assets/demo/recipes/task_arithmetic.yml"),
    ),
    (
        "ties",
        include_str!("../../../assets/demo/recipes/ties.yml"),
    ),
];

/// Where the demo family was written.
#[derive(Clone, Debug)]
pub struct DemoFamily {
    pub root: PathBuf,
}

impl DemoFamily {
    /// Writes the family and its recipes under `root` (`root/base`, `root/upright`, …,
    /// `root/recipes/*.yml`), replacing what an earlier call wrote. Files already holding the
    /// same bytes are left alone, so a running app's memory maps stay valid.
    pub fn extract(root: &Path) -> std::io::Result<Self> {
        let write = |path: PathBuf, bytes: &[u8]| write_unless_same(&path, bytes);
        for (name, config, model) in MEMBERS {
            write(root.join(name).join("config.json"), config)?;
            write(root.join(name).join("model.safetensors"), model)?;
        }
        for (name, text) in RECIPES {
            write(
                root.join("recipes").join(format!("{name}.yml")),
                text.as_bytes(),
            )?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn base(&self) -> PathBuf {
        self.root.join("base")
    }

    pub fn expert(&self, domain: Domain) -> PathBuf {
        self.root.join(domain.name())
    }

    pub fn recipe(&self, name: &str) -> PathBuf {
        self.root.join("recipes").join(format!("{name}.yml"))
    }

    /// Is `path` (a model folder or its `model.safetensors`) the demo family's base, wherever
    /// it was copied? Its bytes decide, so the demo's accuracy can score merges of any family
    /// built on it.
    pub fn is_base(path: &Path) -> bool {
        let (_, _, bytes) = MEMBERS[0];
        let file = if path.is_dir() {
            path.join("model.safetensors")
        } else {
            path.to_path_buf()
        };
        std::fs::metadata(&file).is_ok_and(|m| m.len() == bytes.len() as u64)
            && std::fs::read(&file).is_ok_and(|b| b == bytes)
    }
}

/// Writes `bytes` to `path` unless it already holds them (a running app's memory maps of it
/// stay valid), beside and renamed into place, so a reader never sees half a file; the
/// staging name is unique, so two processes or threads extracting at once do not collide.
pub(crate) fn write_unless_same(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::create_dir_all(path.parent().expect("a file in a folder"))?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = path.with_extension(format!("partial-{}-{n}", std::process::id()));
    std::fs::write(&staging, bytes)?;
    std::fs::rename(&staging, path)
}
