//! rsync as a benchmark peer: `rsync -a --delete --no-whole-file --stats
//! SRC/ TARGET/`, the usual way to push a config tree, with the delta
//! algorithm forced on (rsync skips it for local copies otherwise) so its
//! byte counts are comparable with cfi's.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::peer::{Peer, Sample, Tool, Trash};

/// The numbers of rsync's `--stats` output the benchmarks use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RsyncStats {
    /// "Total bytes sent".
    pub bytes_sent: u64,
    /// "Total bytes received".
    pub bytes_received: u64,
    /// "Number of regular files transferred".
    pub files_transferred: u64,
    /// "Literal data": bytes sent as is, not matched from the old file.
    pub literal_data: u64,
    /// "Matched data": bytes reused from the old file.
    pub matched_data: u64,
}

/// The first line of `rsync --version`, or a clear error when rsync is
/// missing.
pub fn check_installed() -> Result<String> {
    match Command::new("rsync").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("rsync")
            .to_owned()),
        Ok(out) => bail!("rsync --version failed: {}", out.status),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            bail!("rsync not found: apt-get install rsync")
        }
        Err(e) => Err(e).context("failed to run rsync --version"),
    }
}

/// Reads the numbers out of `--stats` output. Numbers may carry digit
/// grouping (`3,000,930`); only the digits count.
pub fn parse_stats(out: &str) -> Result<RsyncStats> {
    let field = |name: &str| -> Result<u64> {
        let line = out
            .lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("rsync --stats output lacks \"{name}\""))?;
        let number = line.split_whitespace().next().unwrap_or("");
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        digits
            .parse()
            .with_context(|| format!("bad number in rsync --stats \"{name}: {line}\""))
    };
    Ok(RsyncStats {
        bytes_sent: field("Total bytes sent")?,
        bytes_received: field("Total bytes received")?,
        files_transferred: field("Number of regular files transferred")?,
        literal_data: field("Literal data")?,
        matched_data: field("Matched data")?,
    })
}

/// rsync syncing `source` into its own target.
#[derive(Debug)]
pub struct RsyncPeer {
    source: PathBuf,
    target: PathBuf,
    fsync: bool,
}

impl RsyncPeer {
    /// A peer copying the tree `source` into `target`; with `fsync`, rsync
    /// also fsyncs every file it writes (`--fsync`), as cfi does.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>, fsync: bool) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            fsync,
        }
    }

    fn command(&self) -> Command {
        // Trailing slashes: the contents of source into target.
        let slash = |p: &Path| {
            let mut s = p.as_os_str().to_owned();
            s.push("/");
            s
        };
        let mut cmd = Command::new("rsync");
        cmd.args(["-a", "--delete", "--no-whole-file", "--stats"]);
        if self.fsync {
            cmd.arg("--fsync");
        }
        cmd.arg(slash(&self.source))
            .arg(slash(&self.target))
            .env("LC_ALL", "C");
        cmd
    }
}

impl Peer for RsyncPeer {
    fn tool(&self) -> Tool {
        Tool::Rsync
    }

    fn target(&self) -> &Path {
        &self.target
    }

    fn reset(&self, trash: &Trash) -> Result<()> {
        trash.empty_dir(&self.target)
    }

    fn sync(&self) -> Result<Sample> {
        let mut cmd = self.command();
        let start = Instant::now();
        let out = cmd.output().context("failed to run rsync")?;
        let wall = start.elapsed();
        if !out.status.success() {
            bail!(
                "rsync into {} failed ({}): {}",
                self.target.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stats = parse_stats(&String::from_utf8_lossy(&out.stdout))?;
        Ok(Sample {
            wall,
            bytes: stats.bytes_sent + stats.bytes_received,
            detail: serde_json::to_value(stats)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::compare_trees;

    const STATS: &str = "
Number of files: 4 (reg: 2, dir: 2)
Number of created files: 3 (reg: 2, dir: 1)
Number of deleted files: 0
Number of regular files transferred: 2
Total file size: 3,000,003 bytes
Total transferred file size: 3,000,003 bytes
Literal data: 3,000,003 bytes
Matched data: 0 bytes
File list size: 0
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 3,000,930
Total bytes received: 73

sent 3,000,930 bytes  received 73 bytes  6,002,006.00 bytes/sec
total size is 3,000,003  speedup is 1.00
";

    #[test]
    fn parses_stats_with_digit_grouping() {
        assert_eq!(
            parse_stats(STATS).unwrap(),
            RsyncStats {
                bytes_sent: 3_000_930,
                bytes_received: 73,
                files_transferred: 2,
                literal_data: 3_000_003,
                matched_data: 0,
            }
        );
    }

    #[test]
    fn missing_field_is_an_error() {
        let err = parse_stats("Total bytes sent: 1\n").unwrap_err();
        assert!(err.to_string().contains("Total bytes received"), "{err}");
    }

    #[test]
    fn syncs_a_tree() {
        // The lab needs rsync; say how to get it rather than skip.
        check_installed().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/a.conf"), "a = 1\n").unwrap();
        let peer = RsyncPeer::new(&src, &dst, false);
        peer.reset(&Trash::new(dir.path().join("trash"))).unwrap();
        let first = peer.sync().unwrap();
        compare_trees(&src, &dst).unwrap();
        assert!(first.bytes > 0);
        assert_eq!(first.detail["files_transferred"], 1);
        let again = peer.sync().unwrap();
        assert_eq!(again.detail["files_transferred"], 0);
    }
}
