//! The Merge panel's memory: every settled preview is a history entry (its recipe, scores,
//! method and time), entries can be pinned and compared side by side, loaded back or
//! exported; settings changes can be undone and redone. The history of a family is kept in
//! a JSON file in the user's data folder and comes back when the family is opened again.

use std::path::{Path, PathBuf};

use mergescope_core::eval::Scores;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::state::MergeSettings;

/// Entries kept per family; the oldest unpinned ones give way first.
const MAX_ENTRIES: usize = 200;
/// Settings changes that can be undone.
const MAX_UNDO: usize = 200;

/// One preview the user saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Numbers entries in the order they were made (shown as `#n`).
    pub id: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub method: String,
    /// The recipe: the settings, complete (loaded back through the recipe parser).
    pub recipe: String,
    /// What the objective said of this merge, and which objective.
    pub objective: String,
    pub scores: Scores,
    #[serde(default)]
    pub pinned: bool,
}

impl HistoryEntry {
    /// `HH:MM:SS` (UTC) of the entry.
    pub fn clock(&self) -> String {
        let s = self.time % 86_400;
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }
}

/// A family's history, as saved.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The models it belongs to (base first), to tell files apart when read by hand.
    pub models: Vec<String>,
    pub entries: Vec<HistoryEntry>,
    /// Where it is saved (not saved itself).
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

impl History {
    /// The history of the family `models` (base first), read from `data_dir` when one was
    /// saved there. A file that cannot be read starts a new history (and says why).
    pub fn open(data_dir: Option<&Path>, models: &[PathBuf]) -> (Self, Option<String>) {
        let labels: Vec<String> = models.iter().map(|p| p.display().to_string()).collect();
        let file = data_dir.map(|dir| dir.join("history").join(file_name(&labels)));
        let fresh = Self {
            models: labels,
            entries: Vec::new(),
            file: file.clone(),
        };
        let Some(file) = file else {
            return (fresh, None);
        };
        match std::fs::read_to_string(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (fresh, None),
            Err(e) => (
                fresh,
                Some(format!("cannot read the history {}: {e}", file.display())),
            ),
            Ok(text) => match serde_json::from_str::<Self>(&text) {
                Ok(mut history) => {
                    history.file = Some(file);
                    (history, None)
                }
                Err(e) => (
                    fresh,
                    Some(format!(
                        "the history {} is not readable ({e}); a new one is started",
                        file.display()
                    )),
                ),
            },
        }
    }

    /// Adds the preview of `recipe` unless it is the newest entry already (the same settings
    /// previewed again on the same objective: texts chosen since score them anew); returns
    /// whether it was added.
    pub fn record(&mut self, recipe: &str, method: &str, objective: &str, scores: &Scores) -> bool {
        if self
            .entries
            .last()
            .is_some_and(|e| e.recipe == recipe && e.objective == objective)
        {
            return false;
        }
        let id = self.entries.last().map_or(1, |e| e.id + 1);
        self.entries.push(HistoryEntry {
            id,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            method: method.to_owned(),
            recipe: recipe.to_owned(),
            objective: objective.to_owned(),
            scores: scores.clone(),
            pinned: false,
        });
        while self.entries.len() > MAX_ENTRIES {
            match self.entries.iter().position(|e| !e.pinned) {
                Some(oldest) => self.entries.remove(oldest),
                None => break,
            };
        }
        true
    }

    pub fn pinned(&self) -> Vec<&HistoryEntry> {
        self.entries.iter().filter(|e| e.pinned).collect()
    }

    /// Writes the history to its file (a temporary file renamed over it: a crash never leaves
    /// half a history).
    pub fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let failed = |e: std::io::Error| format!("cannot save the history {}: {e}", file.display());
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let text = serde_json::to_string_pretty(self).expect("history serializes");
        let staging = file.with_extension("json.tmp");
        std::fs::write(&staging, text).map_err(failed)?;
        std::fs::rename(&staging, file).map_err(failed)
    }
}

/// Where the workbench keeps what it remembers: `$MERGESCOPE_DATA_DIR`, else
/// `$XDG_DATA_HOME/mergescope`, else `~/.local/share/mergescope`.
pub fn data_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("MERGESCOPE_DATA_DIR") {
        return Some(PathBuf::from(dir));
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .map(|d| d.join("mergescope"))
}

/// A file name per family: the last folder name of the base for people, a digest of every
/// path for uniqueness.
fn file_name(models: &[String]) -> String {
    let mut digest = Sha256::new();
    for m in models {
        digest.update(m.as_bytes());
        digest.update([0]);
    }
    let hex: String = digest.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stem: String = models
        .first()
        .and_then(|b| Path::new(b).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("{stem}-{hex}.json")
}

/// Undo and redo of the Merge panel's settings. A change counts once it has settled (the
/// pointer is up), so one slider drag is one step.
#[derive(Debug, Default)]
pub struct Undo {
    /// The settings as last settled.
    current: Option<MergeSettings>,
    past: Vec<MergeSettings>,
    future: Vec<MergeSettings>,
}

impl Undo {
    /// Starts over from `settings` (another family: earlier steps do not apply to it).
    pub fn reset(&mut self, settings: Option<&MergeSettings>) {
        self.current = settings.cloned();
        self.past.clear();
        self.future.clear();
    }

    /// Notes the settings as they are now; a change from the last settled ones is a step.
    pub fn observe(&mut self, settings: &MergeSettings) {
        match &self.current {
            Some(current) if current == settings => {}
            Some(_) => {
                let before = self.current.replace(settings.clone()).expect("some");
                self.past.push(before);
                if self.past.len() > MAX_UNDO {
                    self.past.remove(0);
                }
                self.future.clear();
            }
            None => self.current = Some(settings.clone()),
        }
    }

    /// The settings before the last step, if any.
    pub fn undo(&mut self) -> Option<MergeSettings> {
        let before = self.past.pop()?;
        if let Some(current) = self.current.replace(before.clone()) {
            self.future.push(current);
        }
        Some(before)
    }

    /// The settings the last undo left, if any.
    pub fn redo(&mut self) -> Option<MergeSettings> {
        let after = self.future.pop()?;
        if let Some(current) = self.current.replace(after.clone()) {
            self.past.push(current);
        }
        Some(after)
    }

    pub fn can_undo(&self) -> bool {
        !self.past.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.future.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_and_redo_walk_the_settled_steps() {
        let mut undo = Undo::default();
        let mut s = MergeSettings::for_models(2);
        undo.reset(Some(&s));
        let first = s.clone();
        s.weights[0] = 0.7;
        undo.observe(&s);
        let second = s.clone();
        s.method = "ties".to_owned();
        undo.observe(&s);
        undo.observe(&s);
        assert_eq!(undo.undo(), Some(second.clone()));
        assert_eq!(undo.undo(), Some(first));
        assert_eq!(undo.undo(), None);
        assert_eq!(undo.redo(), Some(second));
        assert_eq!(undo.redo(), Some(s.clone()));
        assert!(!undo.can_redo());
        // A new change after an undo drops what could be redone.
        undo.undo();
        let mut other = s;
        other.lambda = 0.5;
        undo.observe(&other);
        assert!(!undo.can_redo());
    }

    #[test]
    fn the_history_is_saved_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut history = History {
            file: Some(dir.path().join("h.json")),
            ..History::default()
        };
        let scores: Scores = [("mean/accuracy".to_owned(), 0.9)].into();
        assert!(history.record("a: 1\n", "ties", "demo", &scores));
        assert!(!history.record("a: 1\n", "ties", "demo", &scores));
        assert!(history.record("a: 2\n", "ties", "demo", &scores));
        history.entries[0].pinned = true;
        history.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join("h.json")).unwrap();
        let back: History = serde_json::from_str(&text).unwrap();
        assert_eq!(back.entries, history.entries);
        assert_eq!(back.pinned().len(), 1);
        assert_eq!(history.entries[1].id, 2);
    }
}
