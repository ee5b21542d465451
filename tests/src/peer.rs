//! What a sync tool under test is, to the benchmarks: something that makes
//! one target directory look like the source tree, can forget everything
//! about that target, and says how long a pass took and how many bytes it
//! moved. [`crate::cfi`] and [`crate::rsync`] implement it.

use std::cell::Cell;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

/// The tools the benchmarks compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// `cfi sync-local`.
    Cfi,
    /// `rsync -a --delete --no-whole-file`.
    Rsync,
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tool::Cfi => "cfi",
            Tool::Rsync => "rsync",
        })
    }
}

/// One measured pass.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Wall time of the whole tool invocation, process start to exit.
    #[serde(serialize_with = "as_millis")]
    pub wall: Duration,
    /// Bytes the tool moved between its two ends (for rsync: sent +
    /// received; for cfi: to the agent + from the agent).
    pub bytes: u64,
    /// The tool's own account of the pass (cfi's JSON report, rsync's
    /// `--stats` numbers), kept for `--json`.
    pub detail: serde_json::Value,
}

/// A sync tool with its own target.
pub trait Peer: fmt::Debug {
    /// Which tool this is.
    fn tool(&self) -> Tool;
    /// The directory it syncs into.
    fn target(&self) -> &Path;
    /// Forgets the target: empties it and any state the tool keeps about it,
    /// so the next pass is a first sync. What was there goes to `trash`.
    fn reset(&self, trash: &Trash) -> Result<()>;
    /// One sync pass of the source into the target.
    fn sync(&self) -> Result<Sample>;
}

/// Serializes a duration as fractional milliseconds.
pub fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Where emptied directories go until the measurements are over.
///
/// Deleting a 100 MiB target right before a timed run bills the run for
/// it: on ext4 mounted with `discard` (as cloud disks often are) the freed
/// blocks are discarded in the background and slow the next writes down for
/// seconds. Renaming the target aside costs nothing; the trash is deleted
/// when no timing is running.
#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    next: Cell<usize>,
}

impl Trash {
    /// A trash at `dir` (created when first used).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            next: Cell::new(0),
        }
    }

    /// Replaces `dir` by an empty directory, moving what was there (if
    /// anything) into the trash.
    pub fn empty_dir(&self, dir: &Path) -> Result<()> {
        if fs::symlink_metadata(dir).is_ok() {
            fs::create_dir_all(&self.dir)
                .with_context(|| format!("failed to create trash {}", self.dir.display()))?;
            let n = self.next.get();
            self.next.set(n + 1);
            let aside = self.dir.join(n.to_string());
            fs::rename(dir, &aside).with_context(|| {
                format!("failed to move {} to {}", dir.display(), aside.display())
            })?;
        }
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))
    }

    /// Deletes everything in the trash.
    pub fn clear(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("failed to delete trash {}", self.dir.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trash_empties_dirs_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let trash = Trash::new(dir.path().join("trash"));
        let target = dir.path().join("target");
        trash.empty_dir(&target).unwrap();
        fs::write(target.join("f"), "x").unwrap();
        trash.empty_dir(&target).unwrap();
        fs::write(target.join("f"), "y").unwrap();
        trash.empty_dir(&target).unwrap();
        assert_eq!(fs::read_dir(&target).unwrap().count(), 0);
        assert_eq!(
            fs::read_to_string(dir.path().join("trash/1/f")).unwrap(),
            "y"
        );
        trash.clear().unwrap();
        assert!(!dir.path().join("trash").exists());
        trash.clear().unwrap();
    }
}
