//! The walk cache: what the last read of a tree found, directory by
//! directory. A file whose stat is unchanged keeps its hash, so re-reading
//! a large tree costs a stat per file, not a read; a directory whose stat is
//! unchanged keeps its listing, so it is not listed again either. [`StatKey`]
//! is also what the agent's ledger keeps as its stat cache.
//!
//! Only what had settled when the walk began is vouched for. File system
//! timestamps tick coarsely (a jiffy): a file or directory changed in the
//! same tick as the walk looked at it could change again without its stat
//! showing it. Anything changed less than [`SETTLE`] before the walk is
//! recorded without its stat, and looked at afresh the next time.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

/// How long a change must be past before the cache vouches for it: far
/// above the timestamp tick of any local file system.
pub const SETTLE: Duration = Duration::from_secs(2);

/// What must be unchanged for a cached hash or listing to stand. ctime is in
/// it because it moves on every content or metadata change and cannot be set
/// back from user space, unlike mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl StatKey {
    /// The key of a stat.
    pub fn of(st: &rustix::fs::Stat) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec),
            ctime_ns: i128::from(st.st_ctime) * 1_000_000_000 + i128::from(st.st_ctime_nsec),
        }
    }

    /// Whether nothing changed at or after `instant` (nanoseconds since the
    /// epoch).
    pub fn settled_before(&self, instant: i128) -> bool {
        self.mtime_ns < instant && self.ctime_ns < instant
    }
}

/// The instant before which a change counts as settled for a walk starting
/// now, in nanoseconds since the epoch.
pub fn settled_instant() -> i128 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(SETTLE).as_nanos() as i128
}

/// The names of a list of NUL-terminated names.
pub fn names_in(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.strip_suffix(&[0])
        .into_iter()
        .flat_map(|l| l.split(|&b| b == 0))
}

/// One directory of a layer as a walk found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirRecord {
    /// The directory's stat when it was listed; `None` when it had changed
    /// too recently for the listing to be vouched for.
    pub stat: Option<StatKey>,
    /// The names listed, each followed by a NUL (no file name holds one).
    #[serde(with = "serde_bytes")]
    pub names: Vec<u8>,
    /// Per name, in the same order: the stat of a regular file whose hash
    /// is in `hashes`, or `None` (not a file, or changed too recently).
    pub files: Vec<Option<StatKey>>,
    /// Per name, 32 bytes: the file's blake3, zeros for anything else.
    #[serde(with = "serde_bytes")]
    pub hashes: Vec<u8>,
}

impl DirRecord {
    /// The names, in listing order.
    pub fn names(&self) -> impl Iterator<Item = &[u8]> {
        names_in(&self.names)
    }

    /// Entry `i`'s hash, if entry `i` is a file with exactly stat `stat`.
    pub fn hash(&self, i: usize, stat: &StatKey) -> Option<[u8; 32]> {
        if self.files.get(i)?.as_ref() != Some(stat) {
            return None;
        }
        self.hashes.get(i * 32..i * 32 + 32)?.try_into().ok()
    }

    /// Adds an entry.
    pub fn push(&mut self, name: &[u8], file: Option<(StatKey, [u8; 32])>) {
        self.names.extend_from_slice(name);
        self.names.push(0);
        let (stat, hash) = file.map_or((None, [0; 32]), |(s, h)| (Some(s), h));
        self.files.push(stat);
        self.hashes.extend_from_slice(&hash);
    }
}

/// A directory's key: its layer and its path below the layer (empty for
/// the layer itself).
pub type DirKey = (u8, Vec<u8>);

/// Every directory of a tree's layers as the last walk found it, loadable
/// from and savable to one file.
#[derive(Debug, Default)]
pub struct HashCache {
    // FxHash: the keys are our own paths, not attacker-chosen.
    dirs: FxHashMap<DirKey, DirRecord>,
    dirty: bool,
}

/// Leads the file, so that a cache of another format reads as empty.
const MAGIC: [u8; 8] = *b"cfiwalk2";

#[derive(Serialize, Deserialize)]
struct Stored {
    magic: [u8; 8],
    dirs: Vec<StoredDir>,
}

#[derive(Serialize, Deserialize)]
struct StoredDir {
    layer: u8,
    #[serde(with = "serde_bytes")]
    path: Vec<u8>,
    record: DirRecord,
}

impl HashCache {
    /// Takes what the last walk found of one directory, leaving nothing in
    /// its place: the walk hands back what it finds now.
    pub fn take(&mut self, key: &DirKey) -> Option<DirRecord> {
        self.dirs.remove(key)
    }

    /// Puts back the whole tree as a walk found it; `changed` says whether
    /// anything differs from what was taken (the file is then rewritten).
    pub fn replace(&mut self, dirs: FxHashMap<DirKey, DirRecord>, changed: bool) {
        // Directories left untaken are gone from the tree.
        self.dirty |= changed || !self.dirs.is_empty();
        self.dirs = dirs;
    }

    /// Whether no directory is known.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Loads a cache; a missing, unreadable or foreign one is an empty
    /// cache, since the cache only saves work.
    pub fn load(file: &Path) -> Self {
        let stored = fs::read(file)
            .ok()
            .and_then(|bytes| postcard::from_bytes::<Stored>(&bytes).ok())
            .filter(|s| s.magic == MAGIC);
        let dirs = stored.map_or_else(FxHashMap::default, |s| {
            s.dirs
                .into_iter()
                .filter(|d| {
                    let r = &d.record;
                    r.hashes.len() == r.files.len() * 32 && r.names().count() == r.files.len()
                })
                .map(|d| ((d.layer, d.path), d.record))
                .collect()
        });
        Self { dirs, dirty: false }
    }

    /// Saves the cache if the last walk changed it, atomically.
    pub fn save(&mut self, file: &Path) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut dirs: Vec<StoredDir> = self
            .dirs
            .iter()
            .map(|((layer, path), record)| StoredDir {
                layer: *layer,
                path: path.clone(),
                record: record.clone(),
            })
            .collect();
        dirs.sort_unstable_by(|a, b| (a.layer, &a.path).cmp(&(b.layer, &b.path)));
        let bytes =
            postcard::to_stdvec(&Stored { magic: MAGIC, dirs }).map_err(io::Error::other)?;
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = file.with_extension("tmp");
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, file)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> StatKey {
        StatKey {
            dev: 1,
            ino: n,
            size: n,
            mtime_ns: 5,
            ctime_ns: 5,
        }
    }

    #[test]
    fn a_record_lists_names_in_order_and_knows_only_files() {
        let mut r = DirRecord::default();
        r.push(b"a", Some((key(1), [1; 32])));
        r.push(b"sub", None);
        r.push(b"c", Some((key(3), [3; 32])));
        assert_eq!(r.names().collect::<Vec<_>>(), [&b"a"[..], b"sub", b"c"]);
        assert_eq!(r.hash(0, &key(1)), Some([1; 32]));
        assert_eq!(r.hash(0, &key(2)), None, "another stat: not vouched for");
        assert_eq!(r.hash(1, &key(1)), None);
        assert_eq!(r.hash(2, &key(3)), Some([3; 32]));
        assert_eq!(r.hash(3, &key(3)), None);
    }

    #[test]
    fn saves_loads_and_reads_foreign_files_as_empty() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("cache");
        let mut r = DirRecord {
            stat: Some(key(9)),
            ..DirRecord::default()
        };
        r.push(b"f", Some((key(1), [7; 32])));
        let mut dirs = FxHashMap::default();
        dirs.insert((0, b"etc".to_vec()), r.clone());
        let mut cache = HashCache::default();
        cache.replace(dirs, true);
        cache.save(&file).unwrap();
        let mut loaded = HashCache::load(&file);
        assert_eq!(loaded.take(&(0, b"etc".to_vec())), Some(r));

        // The format before listings were kept: a list of named hashes.
        fs::write(
            &file,
            postcard::to_stdvec(&vec![(b"x".to_vec(), 1u8)]).unwrap(),
        )
        .unwrap();
        assert!(HashCache::load(&file).is_empty());
        fs::write(&file, b"garbage").unwrap();
        assert!(HashCache::load(&file).is_empty());
    }

    #[test]
    fn only_what_settled_before_the_walk_is_vouched_for() {
        let k = key(1);
        assert!(k.settled_before(6));
        assert!(!k.settled_before(5));
        let recent = settled_instant();
        let now = recent + SETTLE.as_nanos() as i128;
        let fresh = StatKey {
            mtime_ns: now,
            ctime_ns: now,
            ..k
        };
        assert!(!fresh.settled_before(recent));
    }
}
