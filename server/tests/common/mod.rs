//! What the end-to-end tests of the server share: a group tree with every
//! kind of entry, and a byte-for-byte comparison of a client's copy of it
//! with the source, by OpenSSH-independent means (docker exec, find).
//!
//! Each test binary uses part of it.
#![allow(dead_code)]

pub mod daemon;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cfi_groups::Tree;
use cfi_groups::hashcache::HashCache;
use cfi_lab::command;
use cfi_lab::lab::Lab;
use cfi_sync::Source;

/// Where the test tree lands in each client.
pub const BASE: &str = "srv/cfi-ssh";

/// Files and symlinks in the tree [`write_tree`] makes.
pub const TREE_FILES: u64 = 6;

/// The fingerprint of client `i`'s ed25519 host key, by OpenSSH's own
/// `ssh-keygen -lf` in the client.
pub fn host_key_fingerprint(lab: &Lab, i: usize) -> Result<String> {
    let out = lab.sh(i, "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")?;
    // "256 SHA256:… root@host (ED25519)"
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("unexpected ssh-keygen -lf output {out:?}"))
}

/// A small xorshift generator: the tests need variety and a seed they
/// can print, not a stream that stays the same across crate versions.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A fraction in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() % 10_000) as f64 / 10_000.0
    }

    /// `n` bytes, from the high half of each draw.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
}

/// Deterministic bytes that do not compress: the big file crosses the SSH
/// window (2 MiB) and many data chunks.
pub fn noise(len: usize) -> Vec<u8> {
    Rng(0x9e37_79b9_7f4a_7c15).bytes(len)
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {}", path.display()))
}

pub fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    fs::write(path, content).with_context(|| format!("failed to write {}", path.display()))?;
    set_mode(path, mode)
}

/// A group layer: files of several modes, a directory, an empty
/// directory, a relative and an absolute symlink, under [`BASE`].
pub fn write_tree(layer: &Path) -> Result<()> {
    let base = layer.join(BASE);
    fs::create_dir_all(base.join("conf"))?;
    fs::create_dir_all(base.join("empty"))?;
    set_mode(&layer.join("srv"), 0o755)?;
    set_mode(&base, 0o755)?;
    set_mode(&base.join("conf"), 0o750)?;
    set_mode(&base.join("empty"), 0o700)?;
    write_file(&base.join("hello.txt"), b"hello from the server\n", 0o644)?;
    write_file(&base.join("conf/app.conf"), b"[app]\nlevel = 3\n", 0o640)?;
    write_file(&base.join("secret"), b"only root reads this\n", 0o600)?;
    write_file(&base.join("big.bin"), &noise(3 << 20), 0o644)?;
    symlink("hello.txt", base.join("link"))?;
    symlink("/etc/hostname", base.join("abs-link"))?;
    Ok(())
}

/// The tree of `layer`, as the passes of a sync send it.
pub fn read_tree(layer: &Path) -> Result<Arc<Source>> {
    let tree = Tree::read(&[layer.to_owned()], &mut HashCache::default())
        .with_context(|| format!("failed to read the group tree {}", layer.display()))?;
    Ok(Arc::new(Source::new(tree)))
}

/// `path|type|mode|uid:gid|link target` for everything below `dir`, as
/// `find -printf '%P|%y|%m|%U:%G|%l'` prints it, sorted.
pub fn describe_local(dir: &Path) -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry?.path();
            let meta = fs::symlink_metadata(&path)?;
            let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let (kind, target) = if meta.file_type().is_symlink() {
                ("l", fs::read_link(&path)?.to_string_lossy().into_owned())
            } else if meta.is_dir() {
                ("d", String::new())
            } else {
                ("f", String::new())
            };
            out.push(format!(
                "{rel}|{kind}|{:o}|{}:{}|{target}",
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ));
            if meta.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

pub fn describe_remote(lab: &Lab, i: usize, dir: &str) -> Result<Vec<String>> {
    let text = lab.sh(
        i,
        &format!("find {dir} -mindepth 1 -printf '%P|%y|%m|%U:%G|%l\\n'"),
    )?;
    let mut out: Vec<String> = text.lines().map(str::to_owned).collect();
    out.sort();
    Ok(out)
}

/// Client `i` holds exactly the layer's tree below [`BASE`]: the same
/// paths, types, modes, owners, link targets and file contents.
pub fn assert_same_tree(lab: &Lab, i: usize, layer: &Path) -> Result<()> {
    let name = &lab.client(i).name;
    let source = layer.join(BASE);
    let want = describe_local(&source)?;
    let got = describe_remote(lab, i, &format!("/{BASE}"))?;
    ensure!(
        want == got,
        "{name}: tree differs\nwant {want:#?}\ngot  {got:#?}"
    );
    for line in &want {
        let (rel, kind) = line
            .split_once('|')
            .map(|(rel, rest)| (rel, &rest[..1]))
            .context("bad description line")?;
        if kind == "f" {
            let content = fs::read(source.join(rel))?;
            let remote = lab.read_file(i, &format!("/{BASE}/{rel}"))?;
            ensure!(content == remote, "{name}: /{BASE}/{rel} differs");
        }
    }
    Ok(())
}

/// The effective tree of `group` (all/ under it) in a fresh directory.
pub fn effective(data: &Path, group: &str, into: &Path) -> Result<PathBuf> {
    let out = into.join(group);
    fs::create_dir_all(&out)?;
    for layer in ["all", group] {
        command::checked(
            Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", data.join(layer).display()))
                .arg(&out),
            Duration::from_secs(30),
        )?;
    }
    Ok(out)
}
