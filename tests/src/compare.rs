//! Checks that two trees are the same: every benchmark pass and every
//! scenario ends with [`compare_trees`] between the source and the target,
//! because a speed measured for a wrong result means nothing.
//!
//! "The same" is what cfi promises to keep (DESIGN.md, sync semantics): the
//! set of paths, each one's kind (directory, regular file, symlink), content
//! byte for byte, symlink target (never followed), permission bits and
//! numeric owner. Times are not compared: cfi does not promise them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Every path below `root` (not `root` itself), relative to it, with its
/// metadata; symlinks are listed, never followed.
pub fn walk_tree(root: &Path) -> io::Result<BTreeMap<PathBuf, Metadata>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(root.join(&dir))? {
            let entry = entry?;
            let rel = dir.join(entry.file_name());
            let meta = fs::symlink_metadata(entry.path())?;
            if meta.is_dir() {
                pending.push(rel.clone());
            }
            out.insert(rel, meta);
        }
    }
    Ok(out)
}

/// Compares the trees below `a` and `b`; on a mismatch, lists every
/// difference, one line each, named by the relative path.
///
/// The roots themselves are not compared: a sync target's root is the
/// client's `/` (or a bench directory), whose mode is not the group's.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), Vec<String>> {
    let read = |root: &Path| {
        walk_tree(root).map_err(|e| vec![format!("failed to read tree {}: {e}", root.display())])
    };
    let (ta, tb) = (read(a)?, read(b)?);
    let mut diffs = Vec::new();
    for (path, ma) in &ta {
        let Some(mb) = tb.get(path) else {
            diffs.push(format!("{}: only in {}", path.display(), a.display()));
            continue;
        };
        if let Err(why) = compare_entry(&a.join(path), ma, &b.join(path), mb) {
            diffs.push(format!("{}: {why}", path.display()));
        }
    }
    for path in tb.keys().filter(|p| !ta.contains_key(*p)) {
        diffs.push(format!("{}: only in {}", path.display(), b.display()));
    }
    if diffs.is_empty() { Ok(()) } else { Err(diffs) }
}

/// Why two entries at the same relative path differ.
fn compare_entry(pa: &Path, ma: &Metadata, pb: &Path, mb: &Metadata) -> Result<(), String> {
    let (ka, kb) = (kind(ma), kind(mb));
    if ka != kb {
        return Err(format!("kind differs ({ka} vs {kb})"));
    }
    let mut why = String::new();
    if ka != "symlink" && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        let _ = write!(
            why,
            "mode differs ({:04o} vs {:04o}); ",
            ma.mode() & 0o7777,
            mb.mode() & 0o7777
        );
    }
    if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
        let _ = write!(
            why,
            "owner differs ({}:{} vs {}:{}); ",
            ma.uid(),
            ma.gid(),
            mb.uid(),
            mb.gid()
        );
    }
    match ka {
        "file" if ma.len() != mb.len() => {
            let _ = write!(why, "size differs ({} vs {}); ", ma.len(), mb.len());
        }
        "file" => match same_content(pa, pb) {
            Ok(true) => {}
            Ok(false) => why.push_str("content differs; "),
            Err(e) => {
                let _ = write!(why, "failed to read content: {e}; ");
            }
        },
        "symlink" => match (fs::read_link(pa), fs::read_link(pb)) {
            (Ok(ta), Ok(tb)) if ta == tb => {}
            (Ok(ta), Ok(tb)) => {
                let _ = write!(
                    why,
                    "symlink target differs ({} vs {}); ",
                    ta.display(),
                    tb.display()
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                let _ = write!(why, "failed to read symlink: {e}; ");
            }
        },
        _ => {}
    }
    if why.is_empty() {
        Ok(())
    } else {
        why.truncate(why.len() - 2);
        Err(why)
    }
}

fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else {
        "special file"
    }
}

/// Whether two files of equal size hold the same bytes, read in chunks.
fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0; 1 << 16], vec![0; 1 << 16]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` unless the file ends first; returns how much was read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    /// Two equal trees: a/f, a/sub/g (0600), a/link -> sub/g, a/sub/.
    fn pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for root in [&a, &b] {
            fs::create_dir_all(root.join("sub")).unwrap();
            fs::write(root.join("f"), "same content\n").unwrap();
            fs::write(root.join("sub/g"), vec![7u8; 200_000]).unwrap();
            fs::set_permissions(root.join("sub/g"), fs::Permissions::from_mode(0o600)).unwrap();
            symlink("sub/g", root.join("link")).unwrap();
        }
        (dir, a, b)
    }

    fn only_diff(a: &Path, b: &Path) -> String {
        let diffs = compare_trees(a, b).unwrap_err();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        diffs.into_iter().next().unwrap()
    }

    #[test]
    fn equal_trees_compare_equal() {
        let (_d, a, b) = pair();
        compare_trees(&a, &b).unwrap();
    }

    #[test]
    fn detects_content_of_same_size() {
        let (_d, a, b) = pair();
        let mut g = vec![7u8; 200_000];
        g[150_000] = 8;
        fs::write(b.join("sub/g"), g).unwrap();
        assert_eq!(only_diff(&a, &b), "sub/g: content differs");
    }

    #[test]
    fn detects_size() {
        let (_d, a, b) = pair();
        fs::write(b.join("f"), "other\n").unwrap();
        assert_eq!(only_diff(&a, &b), "f: size differs (13 vs 6)");
    }

    #[test]
    fn detects_mode() {
        let (_d, a, b) = pair();
        fs::set_permissions(b.join("sub/g"), fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(only_diff(&a, &b), "sub/g: mode differs (0600 vs 0644)");
        fs::set_permissions(b.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(compare_trees(&a, &b).unwrap_err()[0].starts_with("sub: mode differs"));
    }

    #[test]
    fn detects_symlink_target_and_kind() {
        let (_d, a, b) = pair();
        fs::remove_file(b.join("link")).unwrap();
        symlink("f", b.join("link")).unwrap();
        assert_eq!(
            only_diff(&a, &b),
            "link: symlink target differs (sub/g vs f)"
        );
        // A link replaced by the file it points to is not the same tree.
        fs::remove_file(b.join("link")).unwrap();
        fs::copy(b.join("sub/g"), b.join("link")).unwrap();
        assert_eq!(only_diff(&a, &b), "link: kind differs (symlink vs file)");
    }

    #[test]
    fn detects_missing_and_extra() {
        let (_d, a, b) = pair();
        fs::remove_file(b.join("f")).unwrap();
        fs::write(b.join("sub/new"), "x").unwrap();
        let diffs = compare_trees(&a, &b).unwrap_err();
        assert_eq!(
            diffs,
            [
                format!("f: only in {}", a.display()),
                format!("sub/new: only in {}", b.display()),
            ]
        );
    }
}
