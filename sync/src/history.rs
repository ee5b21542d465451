//! Manifests the server sent before, by digest.
//!
//! An agent says which manifest it applied last. When the server still has
//! that one, a changed tree travels as the few entries that differ instead
//! of the whole list: for a 5,000-file tree with 70 changes, about 7 KB
//! instead of 500 KB.

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

use cfi_groups::{Entry, Manifest, RelPath};

/// Where the server looks up earlier manifests.
pub trait History: fmt::Debug + Send + Sync {
    /// The manifest with this digest, if still known.
    fn get(&self, digest: &[u8; 32]) -> Option<Manifest>;
}

/// Earlier manifests kept as files in a cache directory, one per digest;
/// the newest [`DirHistory::KEEP`] stay.
#[derive(Debug, Clone)]
pub struct DirHistory {
    dir: PathBuf,
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl DirHistory {
    /// Manifests kept per directory.
    pub const KEEP: usize = 16;

    /// A history in `dir` (created on the first [`put`](Self::put)).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Remembers a manifest and forgets the oldest beyond [`Self::KEEP`].
    pub fn put(&self, manifest: &Manifest) -> io::Result<()> {
        let path = self.dir.join(hex(&manifest.digest()));
        if path.exists() {
            // Touch it, so pruning keeps what is in use.
            return fs::File::options()
                .append(true)
                .open(&path)?
                .set_modified(std::time::SystemTime::now());
        }
        fs::create_dir_all(&self.dir)?;
        let bytes = postcard::to_stdvec(manifest.entries()).map_err(io::Error::other)?;
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &path)?;
        self.prune()
    }

    fn prune(&self) -> io::Result<()> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter_map(|d| Some((d.metadata().ok()?.modified().ok()?, d.path())))
            .collect();
        if files.len() <= Self::KEEP {
            return Ok(());
        }
        files.sort();
        for (_, path) in &files[..files.len() - Self::KEEP] {
            let _ = fs::remove_file(path);
        }
        Ok(())
    }
}

impl History for DirHistory {
    fn get(&self, digest: &[u8; 32]) -> Option<Manifest> {
        let bytes = fs::read(self.dir.join(hex(digest))).ok()?;
        let entries: Vec<Entry> = postcard::from_bytes(&bytes).ok()?;
        // A damaged file must not pass for the manifest it is named after.
        Manifest::new(entries)
            .ok()
            .filter(|m| m.digest() == *digest)
    }
}

/// What changed from `old` to `new`: entries added or changed, and paths
/// removed (each one named; nothing is implied for a directory's children).
pub fn delta(old: &Manifest, new: &Manifest) -> (Vec<Entry>, Vec<RelPath>) {
    let (mut a, mut b) = (
        old.entries().iter().peekable(),
        new.entries().iter().peekable(),
    );
    let (mut upserts, mut removed) = (Vec::new(), Vec::new());
    loop {
        match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.path.cmp(&y.path) {
                std::cmp::Ordering::Less => {
                    removed.push(x.path.clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    upserts.push((*y).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if x != y {
                        upserts.push((*y).clone());
                    }
                    a.next();
                    b.next();
                }
            },
            (Some(x), None) => {
                removed.push(x.path.clone());
                a.next();
            }
            (None, Some(y)) => {
                upserts.push((*y).clone());
                b.next();
            }
            (None, None) => return (upserts, removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfi_groups::Kind;

    fn e(p: &str, hash: u8) -> Entry {
        Entry {
            path: RelPath::new(p.as_bytes().to_vec()).unwrap(),
            kind: if hash == 0 { Kind::Dir } else { Kind::File },
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 1,
            mtime: 0,
            mtime_nsec: 0,
            hash: [hash; 32],
        }
    }

    #[test]
    fn delta_names_changes_and_removals() {
        let old = Manifest::new(vec![e("a", 0), e("a/x", 1), e("b", 1), e("c", 1)]).unwrap();
        let new = Manifest::new(vec![e("b", 2), e("c", 1), e("d", 1)]).unwrap();
        let (up, rm) = delta(&old, &new);
        let up: Vec<String> = up.iter().map(|e| e.path.to_string()).collect();
        let rm: Vec<String> = rm.iter().map(|p| p.to_string()).collect();
        assert_eq!(up, ["b", "d"]);
        assert_eq!(rm, ["a", "a/x"]);
    }

    #[test]
    fn stored_manifests_come_back_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let h = DirHistory::new(dir.path());
        let m = Manifest::new(vec![e("a", 1)]).unwrap();
        h.put(&m).unwrap();
        assert_eq!(h.get(&m.digest()), Some(m.clone()));
        fs::write(dir.path().join(hex(&m.digest())), b"junk").unwrap();
        assert_eq!(h.get(&m.digest()), None);
        assert_eq!(h.get(&[9; 32]), None);
    }
}
