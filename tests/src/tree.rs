//! The reproducible group tree the benchmarks sync.
//!
//! A seed fixes everything: directory layout, names, sizes, modes, mtimes and
//! content, so two runs (or two machines) measure the same tree. The default
//! shape is what a pool's config tree plus a few payloads looks like: ~5,000
//! regular files, ~100 MiB; most are small pseudo-text files (200 B – 20 KiB
//! of `key = value` lines, so they compress like config files) spread over
//! ~200 directories a few levels deep, plus ~80 large incompressible files
//! (0.5 – 2 MiB, ~78 MiB together) and a handful of symlinks.
//!
//! Generation never depends on directory listing order: every decision is
//! drawn from one [`ChaCha8Rng`] in a fixed order.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Smallest small (text) file.
pub const SMALL_MIN: u64 = 200;
/// Largest small (text) file.
pub const SMALL_MAX: u64 = 20 * 1024;
/// Smallest large (random) file.
pub const LARGE_MIN: u64 = 512 * 1024;
/// Largest large (random) file.
pub const LARGE_MAX: u64 = 2 * 1024 * 1024;

/// Skews large sizes towards [`LARGE_MIN`]: size = min + span · u^k, whose
/// mean is min + span / (k + 1) ≈ 0.97 MiB, so 80 files make ~78 MiB.
const LARGE_SKEW: f64 = 2.2;
/// Deepest directory level below the group root.
const MAX_DEPTH: usize = 4;
/// The mtimes of generated files start here (2023-11-14), so the tree's
/// metadata is as reproducible as its content.
pub const EPOCH: u64 = 1_700_000_000;

/// Words that pseudo-text is made of: config-file vocabulary.
const WORDS: &[&str] = &[
    "server",
    "client",
    "port",
    "host",
    "enable",
    "disable",
    "timeout",
    "path",
    "user",
    "group",
    "log",
    "level",
    "cache",
    "size",
    "max",
    "min",
    "allow",
    "deny",
    "interface",
    "address",
    "network",
    "mount",
    "option",
    "default",
    "include",
    "module",
    "service",
    "daemon",
    "retry",
    "interval",
    "keepalive",
    "proxy",
    "mirror",
    "deb",
    "http",
    "debian",
    "bookworm",
    "main",
    "contrib",
    "security",
    "updates",
    "root",
    "home",
    "share",
    "lib",
    "local",
    "config",
    "value",
    "true",
    "false",
    "yes",
    "no",
    "auto",
    "manual",
    "static",
    "dhcp",
    "ssh",
    "ntp",
    "dns",
    "mdns",
    "lab",
    "pool",
    "render",
    "node",
    "worker",
    "queue",
    "job",
    "limit",
    "quota",
    "backup",
    "restore",
    "sync",
    "delta",
    "hash",
    "key",
    "trust",
    "policy",
    "rule",
    "filter",
    "match",
    "source",
    "target",
    "remote",
    "primary",
    "secondary",
    "profile",
    "session",
    "display",
    "printer",
    "locale",
    "timezone",
    "kernel",
    "firmware",
    "driver",
    "boot",
    "initrd",
    "swap",
];

/// File name extensions of small files.
const EXTENSIONS: &[&str] = &["conf", "cfg", "list", "sh", "txt", "yaml", "ini", "rules"];

/// The shape of a generated tree.
#[derive(Debug, Clone, Serialize)]
pub struct TreeSpec {
    /// Seeds every random decision.
    pub seed: u64,
    /// Regular files, large ones included.
    pub files: usize,
    /// How many of `files` are large random files.
    pub large: usize,
    /// Directories below the group root.
    pub dirs: usize,
    /// Symlinks, besides `files`.
    pub symlinks: usize,
}

/// What [`TreeSpec::generate`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeSummary {
    /// Directories below the root.
    pub dirs: usize,
    /// Regular files.
    pub files: usize,
    /// Of which large.
    pub large_files: usize,
    /// Symlinks.
    pub symlinks: usize,
    /// Bytes of all regular files.
    pub bytes: u64,
    /// Bytes of the large files.
    pub large_bytes: u64,
}

impl TreeSpec {
    /// The benchmark default: 5,000 files of which 80 large, ~100 MiB.
    pub const DEFAULT_FILES: usize = 5000;
    /// See [`Self::DEFAULT_FILES`].
    pub const DEFAULT_LARGE: usize = 80;

    /// A tree of `files` regular files, `large` of them large; directories
    /// (one per 25 files) and symlinks (one per 500, 2 to 10) scale along.
    pub fn new(seed: u64, files: usize, large: usize) -> Self {
        Self {
            seed,
            files,
            large,
            dirs: (files / 25).max(1),
            symlinks: (files / 500).clamp(2, 10),
        }
    }

    /// Writes the tree into `root`, which must not exist yet or be empty.
    pub fn generate(&self, root: &Path) -> Result<TreeSummary> {
        if self.large > self.files {
            bail!(
                "a tree of {} files cannot have {} large ones",
                self.files,
                self.large
            );
        }
        fs::create_dir_all(root)
            .with_context(|| format!("failed to create tree root {}", root.display()))?;
        if fs::read_dir(root)
            .with_context(|| format!("failed to list tree root {}", root.display()))?
            .next()
            .is_some()
        {
            bail!("refusing to generate into non-empty {}", root.display());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let mut summary = TreeSummary::default();

        let dirs = self.make_dirs(&mut rng, root)?;
        summary.dirs = dirs.len();
        let mut small_files = Vec::new();
        for i in 0..self.files - self.large {
            let dir = &dirs[rng.random_range(0..dirs.len())];
            let word = pick(&mut rng, WORDS);
            let ext = pick(&mut rng, EXTENSIONS);
            let rel = dir.join(format!("{word}-{i:04}.{ext}"));
            let len = small_size(&mut rng);
            let mode = match rng.random_range(0..100) {
                0..5 => 0o600,
                5..15 => 0o755,
                _ => 0o644,
            };
            let content = pseudo_text(&mut rng, len as usize);
            write_file(&root.join(&rel), &content, mode, mtime(&mut rng))?;
            summary.files += 1;
            summary.bytes += len;
            small_files.push(rel);
        }
        for (i, len) in self.large_sizes(&mut rng).into_iter().enumerate() {
            let dir = &dirs[rng.random_range(0..dirs.len())];
            let rel = dir.join(format!("blob-{i:03}.bin"));
            let mut content = vec![0; len as usize];
            rng.fill_bytes(&mut content);
            write_file(&root.join(&rel), &content, 0o644, mtime(&mut rng))?;
            summary.files += 1;
            summary.large_files += 1;
            summary.bytes += len;
            summary.large_bytes += len;
        }
        for i in 0..self.symlinks {
            let dir = &dirs[rng.random_range(0..dirs.len())];
            let up = "../".repeat(dir.components().count());
            // Absolute (dangling in the lab, like /etc/localtime), to a
            // directory, or to a file: cfi must copy each as a link.
            let target = match i % 4 {
                0 => PathBuf::from("/usr/share/zoneinfo/Etc/UTC"),
                1 => Path::new(&up).join(&dirs[rng.random_range(0..dirs.len())]),
                _ if !small_files.is_empty() => {
                    Path::new(&up).join(&small_files[rng.random_range(0..small_files.len())])
                }
                _ => PathBuf::from("missing"),
            };
            let link = root.join(dir).join(format!("link-{i:02}"));
            symlink(&target, &link)
                .with_context(|| format!("failed to create symlink {}", link.display()))?;
            summary.symlinks += 1;
        }
        // Last, since adding entries moves a directory's mtime.
        set_dir_mtime(root, mtime(&mut rng))?;
        for dir in &dirs {
            set_dir_mtime(&root.join(dir), mtime(&mut rng))?;
        }
        Ok(summary)
    }

    /// Creates the directories, returning their paths relative to `root`.
    fn make_dirs(&self, rng: &mut ChaCha8Rng, root: &Path) -> Result<Vec<PathBuf>> {
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(self.dirs);
        let mut seen = HashSet::new();
        let tops = ["etc", "usr", "opt", "srv", "var"];
        while dirs.len() < self.dirs {
            let rel = if dirs.len() < tops.len() {
                PathBuf::from(tops[dirs.len()])
            } else {
                let parent = &dirs[rng.random_range(0..dirs.len())];
                let parent = if parent.components().count() >= MAX_DEPTH {
                    parent.parent().unwrap_or(parent)
                } else {
                    parent
                };
                let word = pick(rng, WORDS);
                let name = if rng.random_bool(0.2) {
                    format!("{word}.d")
                } else {
                    word.to_owned()
                };
                let mut rel = parent.join(&name);
                let mut n = 2;
                while seen.contains(&rel) {
                    rel = parent.join(format!("{name}-{n}"));
                    n += 1;
                }
                rel
            };
            let mode = if rng.random_range(0..20) == 0 {
                0o750
            } else {
                0o755
            };
            let path = root.join(&rel);
            fs::create_dir(&path)
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(mode)))
                .with_context(|| format!("failed to create directory {}", path.display()))?;
            seen.insert(rel.clone());
            dirs.push(rel);
        }
        Ok(dirs)
    }

    /// Sizes of the large files: stratified (one draw per 1/n slice of the
    /// distribution, then shuffled) so their sum stays close to its mean
    /// even for one seed.
    fn large_sizes(&self, rng: &mut ChaCha8Rng) -> Vec<u64> {
        let n = self.large;
        let span = (LARGE_MAX - LARGE_MIN) as f64;
        let mut sizes: Vec<u64> = (0..n)
            .map(|i| {
                let u = (i as f64 + rng.random::<f64>()) / n as f64;
                LARGE_MIN + (span * u.powf(LARGE_SKEW)) as u64
            })
            .collect();
        for i in (1..sizes.len()).rev() {
            sizes.swap(i, rng.random_range(0..=i));
        }
        sizes
    }
}

/// A size for a small file: log-uniform in [`SMALL_MIN`, `SMALL_MAX`], so
/// most are a few KiB (mean ~4.4 KiB).
pub fn small_size(rng: &mut impl Rng) -> u64 {
    let (lo, hi) = ((SMALL_MIN as f64).ln(), (SMALL_MAX as f64).ln());
    rng.random_range(lo..hi).exp() as u64
}

/// `len` bytes of config-like text: comments, `[sections]`, `key = value`
/// lines with words and numbers, ending in a newline.
pub fn pseudo_text(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 80);
    while out.len() < len {
        match rng.random_range(0..10) {
            0 => {
                out.extend_from_slice(b"#");
                for _ in 0..rng.random_range(3..10) {
                    out.push(b' ');
                    out.extend_from_slice(pick(rng, WORDS).as_bytes());
                }
            }
            1 => {
                out.push(b'[');
                out.extend_from_slice(pick(rng, WORDS).as_bytes());
                out.push(b']');
            }
            2 => {}
            _ => {
                out.extend_from_slice(pick(rng, WORDS).as_bytes());
                out.push(b'_');
                out.extend_from_slice(pick(rng, WORDS).as_bytes());
                out.extend_from_slice(b" = ");
                if rng.random_bool(0.3) {
                    let n: u32 = rng.random_range(0..65536);
                    out.extend_from_slice(n.to_string().as_bytes());
                } else {
                    for k in 0..rng.random_range(1..4) {
                        if k > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(pick(rng, WORDS).as_bytes());
                    }
                }
            }
        }
        out.push(b'\n');
    }
    out.truncate(len);
    if let Some(last) = out.last_mut() {
        *last = b'\n';
    }
    out
}

/// A reproducible mtime within 30 days after [`EPOCH`].
fn mtime(rng: &mut impl Rng) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH + rng.random_range(0..30 * 86_400))
}

fn pick<'a>(rng: &mut impl Rng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// Sets a directory's mtime, so the tree's metadata (which rsync sends in
/// its file list) is the same on every run.
pub fn set_dir_mtime(path: &Path, mtime: SystemTime) -> Result<()> {
    File::open(path)
        .and_then(|dir| dir.set_modified(mtime))
        .with_context(|| format!("failed to set the mtime of {}", path.display()))
}

/// Creates (or truncates) `path` with exactly `content`, `mode` and `mtime`,
/// whatever the umask.
pub fn write_file(path: &Path, content: &[u8], mode: u32, mtime: SystemTime) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let file = File::create(path)?;
        let mut out = BufWriter::new(&file);
        out.write_all(content)?;
        out.flush()?;
        drop(out);
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.set_modified(mtime)
    };
    write().with_context(|| format!("failed to write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{compare_trees, walk_tree};

    fn small_spec(seed: u64) -> TreeSpec {
        TreeSpec::new(seed, 150, 2)
    }

    #[test]
    fn same_seed_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let sa = small_spec(7).generate(&a).unwrap();
        let sb = small_spec(7).generate(&b).unwrap();
        assert_eq!(sa, sb);
        compare_trees(&a, &b).unwrap();
        // mtimes are part of what is reproducible too.
        let (ta, tb) = (walk_tree(&a).unwrap(), walk_tree(&b).unwrap());
        for (path, meta) in &ta {
            if !meta.is_symlink() {
                assert_eq!(meta.modified().unwrap(), tb[path].modified().unwrap());
            }
        }
    }

    #[test]
    fn other_seed_other_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        small_spec(7).generate(&a).unwrap();
        small_spec(8).generate(&b).unwrap();
        assert!(compare_trees(&a, &b).is_err());
    }

    #[test]
    fn shape_follows_spec() {
        let dir = tempfile::tempdir().unwrap();
        let spec = small_spec(1);
        let s = spec.generate(dir.path()).unwrap();
        assert_eq!((s.files, s.large_files, s.dirs), (150, 2, 6));
        assert_eq!(s.symlinks, spec.symlinks);
        let entries = walk_tree(dir.path()).unwrap();
        let files: Vec<_> = entries.values().filter(|m| m.is_file()).collect();
        assert_eq!(files.len(), 150);
        assert_eq!(files.iter().map(|m| m.len()).sum::<u64>(), s.bytes);
        for m in files {
            assert!((SMALL_MIN..=LARGE_MAX).contains(&m.len()), "{}", m.len());
        }
        let links = entries.values().filter(|m| m.is_symlink()).count();
        assert_eq!(links, spec.symlinks);
    }

    #[test]
    fn default_large_files_sum_to_about_78_mib() {
        let spec = TreeSpec::new(42, TreeSpec::DEFAULT_FILES, TreeSpec::DEFAULT_LARGE);
        let sizes = spec.large_sizes(&mut ChaCha8Rng::seed_from_u64(42));
        let mib = sizes.iter().sum::<u64>() as f64 / (1024.0 * 1024.0);
        assert!((74.0..82.0).contains(&mib), "{mib} MiB");
    }

    #[test]
    fn text_compresses_like_config() {
        let text = pseudo_text(&mut ChaCha8Rng::seed_from_u64(3), 4096);
        assert_eq!(text.len(), 4096);
        assert_eq!(text.last(), Some(&b'\n'));
        assert!(text.iter().all(|b| b.is_ascii()));
    }
}
