//! The manifest of an effective group tree: what a client's root must hold.
//!
//! A manifest lists every directory, regular file and symlink of `all/`
//! overlaid by `<group>/`, sorted by path bytes (so a parent always comes
//! before its children), with mode, numeric owner, size, mtime and a blake3
//! hash. Its digest names one exact desired state: a client that applied a
//! manifest with the same digest needs no new manifest, only a check of its
//! disk.
//!
//! Reading never follows a symlink inside a layer and refuses device nodes,
//! sockets and fifos by name: the server must not read outside the group
//! directory nor ship something it cannot reproduce.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;

use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use serde::{Deserialize, Serialize};

use crate::hashcache::HashCache;
use crate::relpath::{InvalidPath, RelPath, escape};

/// What kind of thing an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symlink with its target, reproduced as is and never followed.
    Symlink(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// One path of the desired tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Where it goes, relative to the client's root.
    pub path: RelPath,
    /// Directory, file or symlink.
    pub kind: Kind,
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Size in bytes of a file (0 otherwise).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// blake3 of a file's content, of a symlink's target; zero for a directory.
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
}

impl Entry {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
}

/// A sorted, validated list of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    entries: Vec<Entry>,
    digest: [u8; 32],
}

/// Why a tree could not be read or a manifest is malformed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A path could not be read.
    #[error("failed to read {path}: {cause}")]
    Io {
        /// The path on the server.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// A layer directory is missing or not a directory.
    #[error("group directory {0} does not exist or is not a directory")]
    NoLayer(PathBuf),
    /// A device node, socket or fifo.
    #[error("refusing {path}: a {kind} cannot be synced (only files, directories and symlinks)")]
    Special {
        /// The path on the server.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A file name that is no safe relative path.
    #[error("refusing a name under {dir}: {cause}")]
    BadName {
        /// The directory holding it.
        dir: PathBuf,
        /// Why.
        cause: InvalidPath,
    },
    /// Entries out of order or duplicated (a malformed manifest from the wire).
    #[error("manifest is not sorted or has a duplicate at {0}")]
    Unsorted(RelPath),
    /// An entry whose parent is not a directory entry.
    #[error("manifest entry {0} has no parent directory entry")]
    Orphan(RelPath),
    /// A path that would leave the root.
    #[error(transparent)]
    BadPath(#[from] InvalidPath),
    /// A symlink target that is empty, too long or holds a NUL.
    #[error("manifest entry {0} has an invalid symlink target")]
    BadTarget(RelPath),
}

impl Manifest {
    /// Validates entries: strictly sorted, each parent present as a
    /// directory entry, symlink targets sane. A manifest from the wire goes
    /// through here, so a hostile one cannot place a file under a symlink.
    pub fn new(entries: Vec<Entry>) -> Result<Self, ManifestError> {
        Self::validate(&entries)?;
        let digest = digest_of(&entries);
        Ok(Self { entries, digest })
    }

    /// Like [`new`](Self::new), but takes the digest as given instead of
    /// computing it: for entries that were recorded together with the
    /// digest of the manifest they came from (the agent's ledger).
    pub fn with_digest(entries: Vec<Entry>, digest: [u8; 32]) -> Result<Self, ManifestError> {
        Self::validate(&entries)?;
        Ok(Self { entries, digest })
    }

    fn validate(entries: &[Entry]) -> Result<(), ManifestError> {
        let mut dirs: Vec<&RelPath> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            e.path.check()?;
            if i > 0 && entries[i - 1].path >= e.path {
                return Err(ManifestError::Unsorted(e.path.clone()));
            }
            if let Some(parent) = e.path.parent() {
                // Parents come before children in byte order, so the parent
                // is on the stack of currently open directories.
                while dirs.last().is_some_and(|d| !e.path.is_below(d)) {
                    dirs.pop();
                }
                if dirs.last().map(|d| d.as_bytes()) != Some(parent) {
                    return Err(ManifestError::Orphan(e.path.clone()));
                }
            } else {
                dirs.clear();
            }
            if let Kind::Symlink(target) = &e.kind {
                if target.is_empty() || target.len() >= RelPath::MAX_LEN || target.contains(&0) {
                    return Err(ManifestError::BadTarget(e.path.clone()));
                }
            }
            if e.is_dir() {
                dirs.push(&e.path);
            }
        }
        Ok(())
    }

    /// The entries, parents before children.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Consumes the manifest into its entries.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// Names this exact desired state.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// blake3 over each entry's length and postcard bytes, in order. The
/// bytes are gathered into large blocks first: blake3 hashes a block of
/// many chunks several at a time, while small updates go one at a time.
fn digest_of(entries: &[Entry]) -> [u8; 32] {
    const BLOCK: usize = 64 << 10;
    let mut h = blake3::Hasher::new();
    let mut block = Vec::with_capacity(BLOCK + 1024);
    let mut one = Vec::with_capacity(256);
    for e in entries {
        one.clear();
        // postcard of a plain struct cannot fail on a Vec sink.
        one = postcard::to_extend(e, one).unwrap_or_default();
        block.extend_from_slice(&(one.len() as u64).to_le_bytes());
        block.extend_from_slice(&one);
        if block.len() >= BLOCK {
            h.update(&block);
            block.clear();
        }
    }
    h.update(&block);
    *h.finalize().as_bytes()
}

/// An effective tree on the server: the manifest plus where each file's
/// content is read from.
#[derive(Debug)]
pub struct Tree {
    manifest: Manifest,
    layers: Vec<PathBuf>,
    /// The layers, open: reading each file beneath them needs no path walk
    /// from `/`.
    layer_dirs: Vec<File>,
    origin: Vec<u8>,
}

impl Tree {
    /// Reads `layers` (lowest first) into one effective tree. Later layers
    /// replace earlier ones path by path; a path that changes between
    /// directory and non-directory drops everything the lower layer had
    /// below it. Hashes come from `cache` where a file's stat is unchanged.
    pub fn read(layers: &[PathBuf], cache: &mut HashCache) -> Result<Self, ManifestError> {
        let mut merged: Vec<(Entry, u8)> = Vec::new();
        let mut layer_dirs = Vec::with_capacity(layers.len());
        let settled = crate::hashcache::settled_instant();
        let mut walked = crate::walk::Found::default();
        for (li, layer) in layers.iter().enumerate() {
            let li = u8::try_from(li).expect("at most a few layers");
            let meta = fs::metadata(layer).map_err(|_| ManifestError::NoLayer(layer.clone()))?;
            if !meta.is_dir() {
                return Err(ManifestError::NoLayer(layer.clone()));
            }
            let layer_fd = File::open(layer).map_err(|cause| ManifestError::Io {
                path: layer.clone(),
                cause,
            })?;
            let found = crate::walk::walk(layer, &layer_fd, li, cache, settled, &mut walked)?;
            layer_dirs.push(layer_fd);
            merged = overlay(merged, found, li);
        }
        cache.replace(walked.dirs, walked.changed);
        // A path that a higher layer turned from a directory into a file
        // leaves the lower layer's children orphaned: drop every entry whose
        // parent is not (any longer) a directory.
        let mut entries = Vec::with_capacity(merged.len());
        let mut origin = Vec::with_capacity(merged.len());
        let mut dirs: Vec<RelPath> = Vec::new();
        for (entry, li) in merged {
            let path = &entry.path;
            if let Some(parent) = path.parent() {
                while dirs.last().is_some_and(|d| !path.is_below(d)) {
                    dirs.pop();
                }
                if dirs.last().map(|d| d.as_bytes()) != Some(parent) {
                    continue;
                }
            } else {
                dirs.clear();
            }
            if entry.is_dir() {
                dirs.push(path.clone());
            }
            entries.push(entry);
            origin.push(li);
        }
        let manifest = Manifest::new(entries)?;
        tracing::debug!(entries = manifest.len(), "manifest built");
        Ok(Self {
            manifest,
            layers: layers.to_vec(),
            layer_dirs,
            origin,
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Where entry `index` is read from on the server.
    pub fn source_path(&self, index: usize) -> PathBuf {
        let e = &self.manifest.entries()[index];
        self.layers[usize::from(self.origin[index])].join(e.path.as_path())
    }

    /// Opens the content of file entry `index`, never following a symlink
    /// and never leaving its layer directory.
    pub fn open(&self, index: usize) -> io::Result<File> {
        let e = &self.manifest.entries()[index];
        open_beneath(&self.layer_dirs[usize::from(self.origin[index])], &e.path)
    }
}

/// Opens `rel` below `dir` for reading: no symlink anywhere on the way, no
/// `..` out of `dir` (openat2 `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
pub fn open_beneath(dir: &File, rel: &RelPath) -> io::Result<File> {
    let fd = rustix::fs::openat2(
        dir,
        rel.as_path(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    Ok(File::from(fd))
}

/// Merges a higher layer's sorted entries over the sorted entries so far:
/// on the same path the higher layer wins.
fn overlay(lower: Vec<(Entry, u8)>, upper: Vec<Entry>, li: u8) -> Vec<(Entry, u8)> {
    if lower.is_empty() {
        return upper.into_iter().map(|e| (e, li)).collect();
    }
    let mut out = Vec::with_capacity(lower.len() + upper.len());
    let mut lower = lower.into_iter().peekable();
    let mut upper = upper.into_iter().peekable();
    loop {
        let take_upper = match (lower.peek(), upper.peek()) {
            (Some((l, _)), Some(u)) => match l.path.cmp(&u.path) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal => {
                    lower.next();
                    true
                }
                std::cmp::Ordering::Greater => true,
            },
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (None, None) => return out,
        };
        if take_upper {
            out.extend(upper.next().map(|e| (e, li)));
        } else {
            out.extend(lower.next());
        }
    }
}

/// blake3 of a whole file.
pub fn hash_file(mut file: File) -> io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    io::copy(&mut file, &mut h)?;
    Ok(*h.finalize().as_bytes())
}

/// A path shown for humans, whatever bytes it holds.
pub fn show(path: &Path) -> String {
    escape(path.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn read(layers: &[PathBuf]) -> Result<Tree, ManifestError> {
        Tree::read(layers, &mut HashCache::default())
    }

    fn paths(t: &Tree) -> Vec<String> {
        t.manifest()
            .entries()
            .iter()
            .map(|e| e.path.to_string())
            .collect()
    }

    #[test]
    fn group_overlays_all() {
        let d = tempfile::tempdir().unwrap();
        let (all, lab) = (d.path().join("all"), d.path().join("lab"));
        fs::create_dir_all(all.join("etc/x")).unwrap();
        fs::write(all.join("etc/x/inner"), "all").unwrap();
        fs::write(all.join("etc/motd"), "all").unwrap();
        fs::write(all.join("etc/issue"), "all").unwrap();
        fs::create_dir_all(lab.join("etc")).unwrap();
        fs::write(lab.join("etc/motd"), "lab").unwrap();
        // A file in the group replaces a directory of all/, with its children.
        fs::write(lab.join("etc/x"), "file now").unwrap();
        fs::write(lab.join(".cfi-notes"), "metadata").unwrap();
        let t = read(&[all, lab.clone()]).unwrap();
        assert_eq!(paths(&t), ["etc", "etc/issue", "etc/motd", "etc/x"]);
        let motd = t
            .manifest()
            .entries()
            .iter()
            .position(|e| e.path.to_string() == "etc/motd");
        let motd = motd.unwrap();
        assert_eq!(t.source_path(motd), lab.join("etc/motd"));
        assert_eq!(
            t.manifest().entries()[motd].hash,
            *blake3::hash(b"lab").as_bytes()
        );
    }

    #[test]
    fn symlinks_are_entries_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let lab = d.path().join("lab");
        fs::create_dir(&lab).unwrap();
        symlink("/etc", lab.join("escape")).unwrap();
        let t = read(&[lab]).unwrap();
        assert_eq!(paths(&t), ["escape"]);
        assert_eq!(
            t.manifest().entries()[0].kind,
            Kind::Symlink(b"/etc".to_vec())
        );
    }

    #[test]
    fn refuses_fifos_naming_the_path() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = read(&[d.path().to_path_buf()]).unwrap_err().to_string();
        assert!(err.contains("pipe") && err.contains("fifo"), "{err}");
    }

    #[test]
    fn open_never_follows_a_symlink_out() {
        let d = tempfile::tempdir().unwrap();
        let lab = d.path().join("lab");
        fs::create_dir(&lab).unwrap();
        fs::write(d.path().join("secret"), "x").unwrap();
        symlink("../secret", lab.join("link")).unwrap();
        let layer = File::open(&lab).unwrap();
        let rel = RelPath::new(b"link".to_vec()).unwrap();
        assert!(open_beneath(&layer, &rel).is_err());
    }

    #[test]
    fn missing_group_dir_is_named() {
        let err = read(&[PathBuf::from("/nonexistent/lab")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/lab"));
    }

    fn hash_of(t: &Tree, path: &str) -> [u8; 32] {
        let e = t
            .manifest()
            .entries()
            .iter()
            .find(|e| e.path.to_string() == path);
        e.unwrap().hash
    }

    #[test]
    fn the_cache_vouches_for_what_settled_and_sees_every_change() {
        let d = tempfile::tempdir().unwrap();
        let lab = d.path().join("lab");
        fs::create_dir_all(lab.join("etc")).unwrap();
        fs::write(lab.join("etc/a"), "aaaa").unwrap();
        fs::write(lab.join("etc/b"), "bbbb").unwrap();
        let layers = [lab.clone()];
        let mut cache = HashCache::default();

        // Just written: read, but neither listing nor hashes vouched for.
        read_with(&layers, &mut cache);
        let etc = (0, b"etc".to_vec());
        let fresh = cache.take(&etc).unwrap();
        assert_eq!(fresh.stat, None);
        assert_eq!(fresh.files, [None, None]);

        std::thread::sleep(crate::hashcache::SETTLE + std::time::Duration::from_millis(100));
        read_with(&layers, &mut cache);
        let settled = cache.take(&etc).unwrap();
        assert!(settled.stat.is_some());
        assert!(settled.files.iter().all(Option::is_some));

        // A directory whose stat is unchanged is not listed again: a name
        // only the cache knows is looked for (and its absence is an error).
        let mut ghost = settled.clone();
        ghost.push(b"ghost", None);
        put(&mut cache, etc.clone(), ghost);
        let err = Tree::read(&layers, &mut cache).unwrap_err().to_string();
        assert!(err.contains("ghost"), "{err}");

        // A file whose stat is unchanged is not read again.
        let mut vouched = settled.clone();
        let a = vouched.names().position(|n| n == b"a").unwrap();
        vouched.hashes[a * 32..a * 32 + 32].copy_from_slice(&[7; 32]);
        put(&mut cache, etc.clone(), vouched);
        assert_eq!(hash_of(&read_with(&layers, &mut cache), "etc/a"), [7; 32]);

        // Every change is seen: content of the same size with the old
        // mtime put back, a new name, a removed one.
        put(&mut cache, etc.clone(), settled);
        read_with(&layers, &mut cache);
        let old = fs::metadata(lab.join("etc/a")).unwrap().modified().unwrap();
        fs::write(lab.join("etc/a"), "AAAA").unwrap();
        File::options()
            .write(true)
            .open(lab.join("etc/a"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        fs::write(lab.join("etc/c"), "c").unwrap();
        fs::remove_file(lab.join("etc/b")).unwrap();
        let t = read_with(&layers, &mut cache);
        assert_eq!(paths(&t), ["etc", "etc/a", "etc/c"]);
        assert_eq!(hash_of(&t, "etc/a"), *blake3::hash(b"AAAA").as_bytes());
    }

    fn read_with(layers: &[PathBuf], cache: &mut HashCache) -> Tree {
        Tree::read(layers, cache).unwrap()
    }

    /// Puts one directory's record into the cache, beside the others.
    fn put(
        cache: &mut HashCache,
        key: crate::hashcache::DirKey,
        record: crate::hashcache::DirRecord,
    ) {
        let mut dirs = rustc_hash::FxHashMap::default();
        for k in [(0, Vec::new())] {
            if let Some(r) = cache.take(&k) {
                dirs.insert(k, r);
            }
        }
        dirs.insert(key, record);
        cache.replace(dirs, true);
    }

    #[test]
    fn digest_is_the_hash_of_each_entry_in_turn_across_blocks() {
        // Enough entries that the digest spans several blocks of hashing.
        let entries: Vec<Entry> = (0..3000u32)
            .map(|i| Entry {
                path: RelPath::new(format!("f{i:05}").into_bytes()).unwrap(),
                kind: Kind::File,
                mode: 0o644,
                uid: i,
                gid: 0,
                size: u64::from(i),
                mtime: i64::from(i),
                mtime_nsec: i,
                hash: [i as u8; 32],
            })
            .collect();
        let mut reference = blake3::Hasher::new();
        for e in &entries {
            let bytes = postcard::to_stdvec(e).unwrap();
            reference.update(&(bytes.len() as u64).to_le_bytes());
            reference.update(&bytes);
        }
        let m = Manifest::new(entries).unwrap();
        assert_eq!(m.digest(), *reference.finalize().as_bytes());
    }

    #[test]
    fn manifest_validation_refuses_orphans_and_disorder() {
        let e = |p: &str, kind: Kind| Entry {
            path: RelPath::new(p.as_bytes().to_vec()).unwrap(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            hash: [0; 32],
        };
        assert!(Manifest::new(vec![e("a", Kind::Dir), e("a/b", Kind::File)]).is_ok());
        assert!(matches!(
            Manifest::new(vec![e("a/b", Kind::File)]),
            Err(ManifestError::Orphan(_))
        ));
        // A file below a symlink would write through the link.
        assert!(matches!(
            Manifest::new(vec![
                e("a", Kind::Symlink(b"/etc".to_vec())),
                e("a/b", Kind::File)
            ]),
            Err(ManifestError::Orphan(_))
        ));
        assert!(matches!(
            Manifest::new(vec![e("b", Kind::File), e("a", Kind::File)]),
            Err(ManifestError::Unsorted(_))
        ));
    }
}
