//! The benchmarks' "1% change": a reproducible mutation of a tree, and its
//! exact undo.
//!
//! [`Change::apply`] rewrites a contiguous region in the middle of 1% of the
//! regular files (same length, so only content changes; some of them large),
//! adds 10 new files and deletes 10. Which files, which bytes and which new
//! content all come from the seed, so every application to the same tree is
//! the same work. [`AppliedChange::revert`] puts the old bytes, modes and
//! mtimes back, so a benchmark can measure the same change pass many times.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use rand::seq::index;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::compare::walk_tree;
use crate::tree::{EPOCH, pseudo_text, set_dir_mtime, small_size, write_file};

/// What to change.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// Share of the regular files (by count) whose middle is rewritten.
    pub fraction: f64,
    /// New files.
    pub add: usize,
    /// Deleted files.
    pub delete: usize,
    /// Files this size or larger count as large: at least a tenth of the
    /// modified files (and at least one) are large, when there are any.
    pub large_threshold: u64,
}

impl Default for Change {
    fn default() -> Self {
        Self {
            fraction: 0.01,
            add: 10,
            delete: 10,
            large_threshold: 256 * 1024,
        }
    }
}

/// A region of one file as it was before the change.
#[derive(Debug)]
struct Rewritten {
    path: PathBuf,
    large: bool,
    offset: u64,
    old: Vec<u8>,
    mtime: SystemTime,
}

/// A deleted file, kept whole to put it back.
#[derive(Debug)]
struct Deleted {
    path: PathBuf,
    content: Vec<u8>,
    mode: u32,
    mtime: SystemTime,
}

/// A change applied to a tree, holding what [`revert`](Self::revert) needs.
#[derive(Debug)]
pub struct AppliedChange {
    root: PathBuf,
    rewritten: Vec<Rewritten>,
    added: Vec<(PathBuf, u64)>,
    deleted: Vec<Deleted>,
    /// Directories that gained or lost entries, with their old mtimes.
    dirs: Vec<(PathBuf, SystemTime)>,
}

/// The size of an applied change, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeSummary {
    /// Files whose middle was rewritten.
    pub modified: usize,
    /// Of which large.
    pub modified_large: usize,
    /// Bytes rewritten in them.
    pub modified_bytes: u64,
    /// New files.
    pub added: usize,
    /// Bytes of the new files.
    pub added_bytes: u64,
    /// Deleted files.
    pub deleted: usize,
}

impl Change {
    /// Applies the change to the tree at `root`; `seed` picks the files and
    /// the new bytes.
    pub fn apply(&self, root: &Path, seed: u64) -> Result<AppliedChange> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let entries =
            walk_tree(root).with_context(|| format!("failed to read tree {}", root.display()))?;
        let root_meta =
            fs::metadata(root).with_context(|| format!("failed to stat {}", root.display()))?;
        let dirs: Vec<&PathBuf> = entries
            .iter()
            .filter(|(_, m)| m.is_dir())
            .map(|(p, _)| p)
            .collect();
        let files: Vec<(&PathBuf, u64)> = entries
            .iter()
            .filter(|(_, m)| m.is_file() && m.len() > 0)
            .map(|(p, m)| (p, m.len()))
            .collect();

        let (large, small): (Vec<usize>, Vec<usize>) =
            (0..files.len()).partition(|&i| files[i].1 >= self.large_threshold);
        let n_modify = ((files.len() as f64 * self.fraction).round() as usize).max(1);
        let n_large = if large.is_empty() {
            0
        } else {
            (n_modify / 10).clamp(1, large.len())
        };
        let n_small = (n_modify - n_large.min(n_modify)).min(small.len());
        let mut chosen: Vec<usize> = index::sample(&mut rng, large.len(), n_large)
            .into_iter()
            .map(|i| large[i])
            .chain(
                index::sample(&mut rng, small.len(), n_small)
                    .into_iter()
                    .map(|i| small[i]),
            )
            .collect();
        chosen.sort_unstable();

        let mut applied = AppliedChange {
            root: root.to_owned(),
            rewritten: Vec::new(),
            added: Vec::new(),
            deleted: Vec::new(),
            dirs: Vec::new(),
        };
        for &i in &chosen {
            let (rel, size) = files[i];
            let random = size >= self.large_threshold;
            applied
                .rewritten
                .push(rewrite_middle(root, rel, size, random, &mut rng)?);
        }

        let rest: Vec<usize> = (0..files.len())
            .filter(|i| chosen.binary_search(i).is_err())
            .collect();
        let n_delete = self.delete.min(rest.len());
        for i in index::sample(&mut rng, rest.len(), n_delete) {
            applied.deleted.push(delete(root, files[rest[i]].0)?);
        }

        for i in 0..self.add {
            let dir = if dirs.is_empty() {
                PathBuf::new()
            } else {
                dirs[rng.random_range(0..dirs.len())].clone()
            };
            let rel = dir.join(format!("added-{i:02}.conf"));
            let path = root.join(&rel);
            if fs::symlink_metadata(&path).is_ok() {
                bail!("cannot add {}: it exists", path.display());
            }
            let len = small_size(&mut rng) as usize;
            let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH + 60 * 86_400);
            write_file(&path, &pseudo_text(&mut rng, len), 0o644, mtime)?;
            applied.added.push((rel, len as u64));
        }

        // Directory mtimes moved to "now"; make them the same every time.
        let mut touched: Vec<PathBuf> = (applied.added.iter().map(|(p, _)| p))
            .chain(applied.deleted.iter().map(|d| &d.path))
            .map(|p| p.parent().unwrap_or(Path::new("")).to_owned())
            .collect();
        touched.sort();
        touched.dedup();
        for rel in touched {
            let old = match entries.get(&rel) {
                Some(meta) => meta.modified(),
                None => root_meta.modified(),
            }
            .with_context(|| {
                format!("failed to read the mtime of {}", root.join(&rel).display())
            })?;
            set_dir_mtime(&root.join(&rel), old + Duration::from_secs(86_400))?;
            applied.dirs.push((rel, old));
        }
        Ok(applied)
    }
}

/// Overwrites the middle of `root/rel` with new bytes of the same length:
/// 1% of the file, but at least 1 KiB (at most half of a small file).
fn rewrite_middle(
    root: &Path,
    rel: &Path,
    size: u64,
    random: bool,
    rng: &mut ChaCha8Rng,
) -> Result<Rewritten> {
    let path = root.join(rel);
    let len = (size / 100).max(1024.min(size / 2)).max(1);
    let offset = (size - len) / 2;
    let mut rewrite = || -> std::io::Result<Rewritten> {
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mtime = file.metadata()?.modified()?;
        let mut old = vec![0; len as usize];
        file.read_exact_at(&mut old, offset)?;
        let mut new = if random {
            let mut b = vec![0; len as usize];
            rng.fill_bytes(&mut b);
            b
        } else {
            pseudo_text(rng, len as usize)
        };
        if new == old {
            new[0] = if old[0] == b'x' { b'y' } else { b'x' };
        }
        file.write_all_at(&new, offset)?;
        // A later mtime, so quick checks (size + mtime) see the change.
        file.set_modified(mtime + Duration::from_secs(86_400))?;
        Ok(Rewritten {
            path: rel.to_owned(),
            large: random,
            offset,
            old,
            mtime,
        })
    };
    rewrite().with_context(|| format!("failed to rewrite the middle of {}", path.display()))
}

/// Deletes `root/rel`, keeping what is needed to restore it.
fn delete(root: &Path, rel: &Path) -> Result<Deleted> {
    let path = root.join(rel);
    let take = || -> std::io::Result<Deleted> {
        let meta = fs::symlink_metadata(&path)?;
        let content = fs::read(&path)?;
        fs::remove_file(&path)?;
        Ok(Deleted {
            path: rel.to_owned(),
            content,
            mode: meta.mode() & 0o7777,
            mtime: meta.modified()?,
        })
    };
    take().with_context(|| format!("failed to delete {}", path.display()))
}

impl AppliedChange {
    /// How big the change was.
    pub fn summary(&self) -> ChangeSummary {
        ChangeSummary {
            modified: self.rewritten.len(),
            modified_large: self.rewritten.iter().filter(|r| r.large).count(),
            modified_bytes: self.rewritten.iter().map(|r| r.old.len() as u64).sum(),
            added: self.added.len(),
            added_bytes: self.added.iter().map(|(_, len)| len).sum(),
            deleted: self.deleted.len(),
        }
    }

    /// Puts the tree back as it was before the change: old bytes and mtimes,
    /// deleted files back with their mode and mtime, new files gone.
    pub fn revert(&self) -> Result<()> {
        for r in &self.rewritten {
            let path = self.root.join(&r.path);
            let restore = || -> std::io::Result<()> {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.write_all_at(&r.old, r.offset)?;
                file.set_modified(r.mtime)
            };
            restore().with_context(|| format!("failed to restore {}", path.display()))?;
        }
        for (rel, _) in &self.added {
            let path = self.root.join(rel);
            fs::remove_file(&path)
                .with_context(|| format!("failed to remove added {}", path.display()))?;
        }
        for d in &self.deleted {
            write_file(&self.root.join(&d.path), &d.content, d.mode, d.mtime)?;
        }
        for (rel, mtime) in &self.dirs {
            set_dir_mtime(&self.root.join(rel), *mtime)?;
        }
        Ok(())
    }

    /// The tree this change was applied to.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::compare_trees;
    use crate::tree::TreeSpec;

    #[test]
    fn changes_one_percent_adds_and_deletes_ten_and_reverts() {
        let dir = tempfile::tempdir().unwrap();
        let (base, work) = (dir.path().join("base"), dir.path().join("work"));
        let spec = TreeSpec::new(5, 400, 3);
        spec.generate(&base).unwrap();
        spec.generate(&work).unwrap();

        let change = Change::default();
        let applied = change.apply(&work, 99).unwrap();
        let s = applied.summary();
        assert_eq!((s.modified, s.modified_large), (4, 1));
        assert_eq!((s.added, s.deleted), (10, 10));

        let diffs = compare_trees(&base, &work).unwrap_err();
        let content = diffs
            .iter()
            .filter(|d| d.ends_with("content differs"))
            .count();
        let only_base = diffs
            .iter()
            .filter(|d| d.contains("only in") && d.contains("base"))
            .count();
        let only_work = diffs
            .iter()
            .filter(|d| d.contains("only in") && d.contains("work"))
            .count();
        assert_eq!((content, only_base, only_work), (4, 10, 10), "{diffs:#?}");
        assert_eq!(diffs.len(), 24, "{diffs:#?}");

        applied.revert().unwrap();
        compare_trees(&base, &work).unwrap();
    }

    #[test]
    fn same_seed_same_change() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let spec = TreeSpec::new(5, 300, 2);
        spec.generate(&a).unwrap();
        spec.generate(&b).unwrap();
        let change = Change::default();
        change.apply(&a, 1).unwrap();
        let applied = change.apply(&b, 1).unwrap();
        compare_trees(&a, &b).unwrap();
        // Applied again after a revert: the same bytes again.
        applied.revert().unwrap();
        change.apply(&b, 1).unwrap();
        compare_trees(&a, &b).unwrap();
    }

    #[test]
    fn rewrite_keeps_length_and_touches_only_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let content = vec![b'a'; 300_000];
        fs::write(dir.path().join("f"), &content).unwrap();
        let r = rewrite_middle(dir.path(), Path::new("f"), 300_000, true, &mut rng).unwrap();
        assert_eq!((r.offset, r.old.len()), (148_500, 3000));
        let now = fs::read(dir.path().join("f")).unwrap();
        assert_eq!(now.len(), content.len());
        let differing: Vec<usize> = (0..now.len()).filter(|&i| now[i] != content[i]).collect();
        assert!(differing.len() > 2900);
        assert!(*differing.first().unwrap() >= 148_500);
        assert!(*differing.last().unwrap() < 151_500);
    }
}
