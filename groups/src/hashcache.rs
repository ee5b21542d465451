//! The server's hash cache: a file whose stat is unchanged keeps its hash,
//! so re-reading a large tree costs a stat per file, not a read.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
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
    /// The key of a file's metadata.
    pub fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }
}

/// Path → (stat, hash), loadable from and savable to one file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HashCache {
    entries: HashMap<Vec<u8>, (StatKey, [u8; 32])>,
    #[serde(skip)]
    dirty: bool,
}

impl HashCache {
    /// The cached hash of `path` if its stat still matches.
    pub fn get(&self, path: &Path, key: &StatKey) -> Option<[u8; 32]> {
        match self.entries.get(path.as_os_str().as_bytes()) {
            Some((k, h)) if k == key => Some(*h),
            _ => None,
        }
    }

    /// Records a freshly computed hash.
    pub fn insert(&mut self, path: &Path, key: StatKey, hash: [u8; 32]) {
        self.entries
            .insert(path.as_os_str().as_bytes().to_vec(), (key, hash));
        self.dirty = true;
    }

    /// Loads a cache; a missing or unreadable one is an empty cache, since
    /// the cache only saves work.
    pub fn load(file: &Path) -> Self {
        fs::read(file)
            .ok()
            .and_then(|bytes| postcard::from_bytes(&bytes).ok())
            .unwrap_or_default()
    }

    /// Saves the cache if anything was added, atomically.
    pub fn save(&mut self, file: &Path) -> io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let bytes = postcard::to_stdvec(self).map_err(io::Error::other)?;
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
