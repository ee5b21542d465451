//! The hash cache: a file whose stat is unchanged keeps its hash, so
//! re-reading a large tree costs a stat per file, not a read. [`StatKey`]
//! is also what the agent's ledger keeps as its stat cache.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// What must be unchanged for a cached hash to stand. ctime is in it
/// because it moves on every content or metadata change and cannot be set
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
}

/// Name → (stat, hash), loadable from and savable to one file.
#[derive(Debug, Default)]
pub struct HashCache {
    // FxHash: the keys are our own paths, not attacker-chosen, and SipHash
    // was a visible part of a no-op pass.
    entries: rustc_hash::FxHashMap<Vec<u8>, (StatKey, [u8; 32])>,
    dirty: bool,
}

/// One cached file as stored: names and hashes as byte strings, which
/// decode in one copy instead of byte by byte.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(with = "serde_bytes")]
    name: Vec<u8>,
    stat: StatKey,
    #[serde(with = "serde_bytes")]
    hash: [u8; 32],
}

impl HashCache {
    /// The cached hash of the file named `name` if its stat still matches.
    /// Names are the caller's: a manifest uses layer and relative path.
    pub fn get(&self, name: &[u8], stat: &StatKey) -> Option<[u8; 32]> {
        match self.entries.get(name) {
            Some((k, h)) if k == stat => Some(*h),
            _ => None,
        }
    }

    /// Records a freshly computed hash.
    pub fn insert(&mut self, name: Vec<u8>, stat: StatKey, hash: [u8; 32]) {
        self.entries.insert(name, (stat, hash));
        self.dirty = true;
    }

    /// Loads a cache; a missing or unreadable one is an empty cache, since
    /// the cache only saves work.
    pub fn load(file: &Path) -> Self {
        let stored: Vec<Stored> = fs::read(file)
            .ok()
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default();
        Self {
            entries: stored
                .into_iter()
                .map(|s| (s.name, (s.stat, s.hash)))
                .collect(),
            dirty: false,
        }
    }

    /// Saves the cache if anything was added, atomically.
    pub fn save(&mut self, file: &Path) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let stored: Vec<Stored> = self
            .entries
            .iter()
            .map(|(name, (stat, hash))| Stored {
                name: name.clone(),
                stat: *stat,
                hash: *hash,
            })
            .collect();
        let bytes = postcard::to_stdvec(&stored).map_err(io::Error::other)?;
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
