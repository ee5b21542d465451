//! cfi as a benchmark peer: `cfi sync-local`, which runs the whole server →
//! agent sync (manifest, signatures, deltas, atomic apply, ledger) over a
//! local pipe into a target directory, and reports what it did as JSON.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use cfi_groups::{DataDir, GroupName};
use serde::{Deserialize, Serialize};

use crate::peer::{Peer, Sample, Tool, Trash};

/// The part of `cfi sync-local --json` output the benchmarks read; other
/// fields are kept in [`Sample::detail`] untouched.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SyncReport {
    /// Files written (new or changed).
    pub files_updated: u64,
    /// Files already right.
    pub files_unchanged: u64,
    /// Files removed from the target.
    pub files_deleted: u64,
    /// Originals put back from backup.
    pub files_restored: u64,
    /// Bytes sent to the agent.
    pub bytes_to_agent: u64,
    /// Bytes the agent sent back.
    pub bytes_from_agent: u64,
    /// Managed files found changed locally.
    pub drift: Vec<serde_json::Value>,
}

/// Fails clearly when the cfi binary `program` is not there.
pub fn check_installed(program: &Path) -> Result<()> {
    if !program.is_file() {
        bail!(
            "cfi binary not found at {}: build it (cargo build --release -p cfi-server), \
             pass --cfi PATH, or run --only rsync",
            program.display()
        );
    }
    Ok(())
}

/// `cfi sync-local` syncing one group of a data dir into its own target.
#[derive(Debug)]
pub struct CfiPeer {
    program: PathBuf,
    data_dir: DataDir,
    group: GroupName,
    target: PathBuf,
    state_dir: PathBuf,
    cache_dir: PathBuf,
}

impl CfiPeer {
    /// A peer running `program` for `group` of `data_dir` into `target`,
    /// with the agent's ledger in `state_dir` and the server's hash cache in
    /// `cache_dir`.
    pub fn new(
        program: impl Into<PathBuf>,
        data_dir: DataDir,
        group: GroupName,
        target: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            program: program.into(),
            data_dir,
            group,
            target: target.into(),
            state_dir: state_dir.into(),
            cache_dir: cache_dir.into(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("sync-local")
            .arg("--data-dir")
            .arg(self.data_dir.root())
            .args(["--group", self.group.as_str()])
            .arg("--root")
            .arg(&self.target)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--json");
        cmd
    }
}

impl Peer for CfiPeer {
    fn tool(&self) -> Tool {
        Tool::Cfi
    }

    fn target(&self) -> &Path {
        &self.target
    }

    /// Empties the target and the agent's state for it (ledger, stat cache,
    /// backups): without the ledger a non-empty target would be foreign
    /// files to back up, with a stale one cfi would trust a target that is
    /// gone. The server's hash cache stays: it describes the source.
    fn reset(&self, trash: &Trash) -> Result<()> {
        trash.empty_dir(&self.target)?;
        trash.empty_dir(&self.state_dir)
    }

    fn sync(&self) -> Result<Sample> {
        let mut cmd = self.command();
        let start = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("failed to run {}", self.program.display()))?;
        let wall = start.elapsed();
        if !out.status.success() {
            bail!(
                "cfi sync-local into {} failed ({}): {}",
                self.target.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let detail: serde_json::Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("cfi sync-local --json printed no JSON object: {stdout}"))?;
        let report: SyncReport = serde_json::from_value(detail.clone())
            .with_context(|| format!("unexpected cfi sync-local --json report: {stdout}"))?;
        Ok(Sample {
            wall,
            bytes: report.bytes_to_agent + report.bytes_from_agent,
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_documented_flags() {
        let peer = CfiPeer::new(
            "/x/cfi",
            DataDir::new("/w/data"),
            GroupName::parse("lab").unwrap(),
            "/w/root-cfi",
            "/w/state-cfi",
            "/w/cache-cfi",
        );
        let cmd = peer.command();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "sync-local",
                "--data-dir",
                "/w/data",
                "--group",
                "lab",
                "--root",
                "/w/root-cfi",
                "--state-dir",
                "/w/state-cfi",
                "--cache-dir",
                "/w/cache-cfi",
                "--json"
            ]
        );
        assert!(check_installed(Path::new("/x/cfi")).is_err());
    }
}
