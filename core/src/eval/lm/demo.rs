//! The built-in language-model demo family, shipped inside the binary so it opens offline from
//! any folder: `assets/lm-demo/` as `train-lm-demo` wrote it — a small Llama-shaped base, one
//! fine-tune per text domain, their byte-level BPE tokenizer, each domain's held-out text and
//! the merge recipes.

use std::path::{Path, PathBuf};

use super::LmError;
use super::perplexity::{Perplexity, TextDomains};

macro_rules! asset {
    ($path:expr) => {
        include_bytes!(concat!("../../../../assets/lm-demo/", $path)).as_slice()
    };
}

macro_rules! member {
    ($name:literal) => {
        (
            $name,
            asset!(concat!($name, "/config.json")),
            asset!(concat!($name, "/model.safetensors")),
        )
    };
}

/// The text domains, each with its fine-tune (a folder of the same name) and its held-out text
/// (`texts/DOMAIN.txt`), in the order the perplexity objective lists them.
pub const DOMAINS: [&str; 3] = ["code", "docs", "legal"];

/// What each domain's text is, for labels.
pub const DOMAIN_TITLES: [(&str, &str); 3] = [
    ("code", "Python source (the standard library)"),
    ("docs", "Python's language reference (prose)"),
    ("legal", "software licences"),
];

/// (folder name, config.json, model.safetensors) of every member, the base first.
const MEMBERS: [(&str, &[u8], &[u8]); 4] = [
    member!("base"),
    member!("code"),
    member!("docs"),
    member!("legal"),
];

/// The tokenizer every member shares, written into each folder.
const TOKENIZER: &[u8] = asset!("base/tokenizer.json");
const TOKENIZER_CONFIG: &[u8] = asset!("base/tokenizer_config.json");

/// Each domain's held-out text.
const TEXTS: [(&str, &[u8]); 3] = [
    ("code", asset!("texts/code.txt")),
    ("docs", asset!("texts/docs.txt")),
    ("legal", asset!("texts/legal.txt")),
];

/// The merge recipes shipped with the family (models named `../base`, `../code`, …).
pub const RECIPES: [(&str, &str); 3] = [
    (
        "linear",
        include_str!("../../../../assets/lm-demo/recipes/linear.yml"),
    ),
    (
        "task_arithmetic",
        include_str!("../../../../assets/lm-demo/recipes/task_arithmetic.yml"),
    ),
    (
        "ties",
        include_str!("../../../../assets/lm-demo/recipes/ties.yml"),
    ),
];

/// The family's perplexity matrix as `train-lm-demo` measured it.
pub const PERPLEXITY_MD: &str = include_str!("../../../../assets/lm-demo/PERPLEXITY.md");

/// Where the language-model demo family was written.
#[derive(Clone, Debug)]
pub struct LmDemoFamily {
    pub root: PathBuf,
}

impl LmDemoFamily {
    /// Writes the family, its texts and recipes under `root` (`root/base`, `root/code`, …,
    /// `root/texts/*.txt`, `root/recipes/*.yml`), replacing what an earlier call wrote. Files
    /// already holding the same bytes are left alone, so a running app's memory maps stay valid.
    pub fn extract(root: &Path) -> std::io::Result<Self> {
        let write =
            |path: PathBuf, bytes: &[u8]| crate::eval::demo::write_unless_same(&path, bytes);
        for (name, config, model) in MEMBERS {
            let folder = root.join(name);
            write(folder.join("config.json"), config)?;
            write(folder.join("model.safetensors"), model)?;
            write(folder.join("tokenizer.json"), TOKENIZER)?;
            write(folder.join("tokenizer_config.json"), TOKENIZER_CONFIG)?;
        }
        for (domain, text) in TEXTS {
            write(root.join("texts").join(format!("{domain}.txt")), text)?;
        }
        for (name, text) in RECIPES {
            write(
                root.join("recipes").join(format!("{name}.yml")),
                text.as_bytes(),
            )?;
        }
        write(root.join("PERPLEXITY.md"), PERPLEXITY_MD.as_bytes())?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn base(&self) -> PathBuf {
        self.root.join("base")
    }

    /// The fine-tune on `domain` (one of [`DOMAINS`]).
    pub fn expert(&self, domain: &str) -> PathBuf {
        self.root.join(domain)
    }

    /// Every fine-tune, in [`DOMAINS`] order.
    pub fn experts(&self) -> Vec<PathBuf> {
        DOMAINS.iter().map(|d| self.expert(d)).collect()
    }

    pub fn recipe(&self, name: &str) -> PathBuf {
        self.root.join("recipes").join(format!("{name}.yml"))
    }

    /// The folder of held-out texts, one `.txt` per domain: what `ppl:DIR` takes.
    pub fn texts(&self) -> PathBuf {
        self.root.join("texts")
    }

    pub fn tokenizer(&self) -> PathBuf {
        self.base().join("tokenizer.json")
    }

    /// The perplexity objective on the family's texts, in windows of the model's context
    /// moving by half of it (as `mergescope eval --objective ppl:DIR` reads them).
    pub fn perplexity(&self) -> Result<Perplexity, LmError> {
        let files = super::LmFiles::in_folders(&self.base(), &self.base())?;
        let domains = TextDomains::load(&self.texts(), &files.tokenizer_path)?;
        let window = files.context().unwrap_or(256).max(2);
        Ok(Perplexity {
            domains,
            config: files.config,
            config_path: files.config_path,
            window,
            stride: (window / 2).max(1),
        })
    }

    /// Is `path` (a model folder or its `model.safetensors`) the family's base, wherever it
    /// was copied? Its bytes decide.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Candidate, Fidelity, Objective as _};

    #[test]
    fn each_expert_beats_the_base_on_its_own_domain() {
        let dir = tempfile::tempdir().unwrap();
        let family = LmDemoFamily::extract(dir.path()).unwrap();
        assert!(LmDemoFamily::is_base(&family.base()));
        assert!(!LmDemoFamily::is_base(&family.expert("code")));
        // A second extraction leaves identical files alone (a running app maps them).
        let before = std::fs::metadata(family.base().join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        LmDemoFamily::extract(dir.path()).unwrap();
        let after = std::fs::metadata(family.base().join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);

        let objective = family.perplexity().unwrap();
        let names: Vec<&str> = objective
            .domains
            .domains
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, DOMAINS);
        // The first few hundred tokens keep this quick in a debug build.
        let score = |folder: &Path| {
            objective
                .evaluate(
                    &Candidate {
                        folder: Some(folder),
                        tensors: None,
                    },
                    Fidelity::Subsample(300),
                )
                .unwrap()
        };
        let base = score(&family.base());
        let experts: Vec<_> = DOMAINS.iter().map(|d| score(&family.expert(d))).collect();
        for (i, domain) in DOMAINS.iter().enumerate() {
            let key = format!("{domain}/perplexity");
            let own = experts[i][&key];
            // Code has the narrowest margin: 0.89 of the base on these tokens (0.77 on the
            // whole text, PERPLEXITY.md); docs 0.49, legal 0.65.
            assert!(
                own < 0.92 * base[&key],
                "{domain}: expert {own} vs base {}",
                base[&key]
            );
            for (j, other) in DOMAINS.iter().enumerate() {
                if j != i {
                    assert!(
                        own < experts[j][&key],
                        "{domain}: its expert {own} vs the {other} expert {}",
                        experts[j][&key]
                    );
                }
            }
        }
    }
}
