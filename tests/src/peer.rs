//! What a sync tool under test is, to the benchmarks: something that makes
//! one target directory look like the source tree, can forget everything
//! about that target, and says how long a pass took and how many bytes it
//! moved. [`crate::cfi`] and [`crate::rsync`] implement it.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
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
    /// so the next pass is a first sync.
    fn reset(&self) -> Result<()>;
    /// One sync pass of the source into the target.
    fn sync(&self) -> Result<Sample>;
}

/// Serializes a duration as fractional milliseconds.
pub fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Removes `dir` if it exists and creates it empty.
pub fn recreate_dir(dir: &Path) -> Result<()> {
    use anyhow::Context;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("failed to empty {}", dir.display()));
        }
        _ => {}
    }
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))
}
