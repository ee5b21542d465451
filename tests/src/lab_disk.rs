//! The lab's disk: one ext4 file system with a journal, on a loop device,
//! holding a directory per client disk ([`crate::ClientSpec::disk`]).
//!
//! A real machine writes to a journaled disk of its own. This VM's own file
//! system, under docker's volumes, has no journal, and ext4 without one
//! scans past every inode freed in the last minutes before it hands out a
//! new one: a file created after a big delete (the previous lab's teardown,
//! a build's `rm -rf`) cost ten times its price, billed to whatever tool
//! happened to run next. perf showed that scan taking a third of the
//! machine's time during a sync to ten hosts.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;
use tracing::{info, warn};

use crate::command;

/// How large the disk may grow: sparse, so only what is written is used.
const SIZE: &str = "16G";

/// Prefix of the lab's disk directory in the temp dir, after the network's
/// name (so [`crate::leftovers`] finds one a killed lab left).
pub const DIR_INFIX: &str = "-disk-";

/// A mounted disk, unmounted and removed on drop.
#[derive(Debug)]
pub struct LabDisk {
    dir: TempDir,
}

impl LabDisk {
    /// Creates and mounts a disk for the lab on `network`. Needs root (a
    /// loop device and a mount).
    pub fn create(network: &str) -> Result<LabDisk> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{network}{DIR_INFIX}"))
            .tempdir()
            .context("failed to create a temporary dir for the lab's disk")?;
        let image = dir.path().join("disk.img");
        let mount = mount_point(dir.path());
        std::fs::create_dir(&mount)
            .with_context(|| format!("failed to create {}", mount.display()))?;
        run(Command::new("truncate").args(["--size", SIZE]).arg(&image))?;
        // The default features of Debian's mke2fs, journal included.
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount))?;
        info!(mount = %mount.display(), "lab disk mounted (ext4 with a journal, on a loop device)");
        Ok(LabDisk { dir })
    }

    /// A new empty directory of the disk for path `path` of client `client`.
    pub fn dir_for(&self, client: &str, path: &str) -> Result<PathBuf> {
        let slug = path.trim_matches('/').replace('/', "_");
        let dir = mount_point(self.dir.path()).join(client).join(slug);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for LabDisk {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

fn mount_point(dir: &Path) -> PathBuf {
    dir.join("mnt")
}

/// Unmounts the disk under a lab disk dir, if mounted; lazily when it is
/// busy, so the dir can go.
pub fn unmount(dir: &Path) {
    let mount = mount_point(dir);
    let mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        let target = mount.to_string_lossy();
        m.lines().any(|l| l.split(' ').nth(1) == Some(&target))
    });
    if mounted && run(Command::new("umount").arg(&mount)).is_err() {
        if let Err(e) = run(Command::new("umount").arg("--lazy").arg(&mount)) {
            warn!(mount = %mount.display(), cause = %format!("{e:#}"), "failed to unmount the lab disk");
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    command::checked(cmd, Duration::from_secs(120)).map(drop)
}
