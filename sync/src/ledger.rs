//! The agent's ledger: every path cfi manages on this root, what cfi last
//! wrote there, the stat it had afterwards, and whether an original was
//! saved before cfi first replaced it.
//!
//! The stat key is the stat cache of DESIGN.md: a managed file whose stat
//! is unchanged still holds what cfi wrote, so a no-op pass hashes nothing.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use cfi_groups::hashcache::StatKey;
use cfi_groups::{Entry, RelPath};
use serde::{Deserialize, Serialize};

/// How long a pass waits for another one on the same root to finish.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long an orphaned holder that was killed gets to let go of the lock.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bumped when the file format changes; an older ledger is refused loudly
/// rather than misread.
const LEDGER_VERSION: u32 = 4;

/// What was at a path before cfi took it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Nothing: when the path leaves the tree, it goes.
    Created,
    /// An original, saved under `backup/`: it comes back.
    BackedUp,
    /// A directory that was already there: left alone, never removed.
    ExistingDir,
}

/// One managed path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// What cfi last put there.
    pub entry: Entry,
    /// Its stat right after (files only).
    pub stat: Option<StatKey>,
    /// What was there before.
    pub origin: Origin,
}

/// All managed paths of one root.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    version: u32,
    /// Digest of the manifest last applied without any error.
    pub applied: Option<[u8; 32]>,
    /// Managed paths.
    #[serde(with = "records_in_order")]
    pub records: BTreeMap<RelPath, Record>,
}

/// The records are stored as a sorted list (each already names its path):
/// the file is smaller and loading builds the map in one pass instead of
/// inserting record by record.
mod records_in_order {
    use std::collections::BTreeMap;

    use cfi_groups::RelPath;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Record;

    pub fn serialize<S: Serializer>(
        records: &BTreeMap<RelPath, Record>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(records.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<RelPath, Record>, D::Error> {
        let list = Vec::<Record>::deserialize(d)?;
        Ok(list
            .into_iter()
            .map(|r| (r.entry.path.clone(), r))
            .collect())
    }
}

/// The agent's state directory:
///
/// ```text
/// ledger       managed paths (this module)
/// lock         held for the length of a pass
/// journal      temp files of the pass under way, removed by the next one
/// backup/      originals cfi replaced, at their paths
/// drift/       managed files changed locally, as found, with a timestamp
/// staging/     content whose directory does not exist until the commit
/// ```
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

/// Why the state dir is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Any I/O failure, with the path.
    #[error("failed to {op} {path}: {cause}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// Another pass holds the lock.
    #[error("another pass is running on this root (lock {0} is held)")]
    Busy(PathBuf),
    /// A ledger that does not decode.
    #[error("ledger {0} is corrupt or of another version; move it away to start over")]
    Corrupt(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_path_buf();
    move |cause| StateError::Io { op, path, cause }
}

/// Takes `lock` (at `path`), waiting up to `wait` for it; false when it
/// is still held then.
fn try_lock(lock: &File, path: &Path, wait: std::time::Duration) -> Result<bool, StateError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match rustix::fs::flock(lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(io_err("lock", path)(e.into())),
        }
    }
}

/// The process the lock file at `path` names, when it is another agent
/// (the same program as this one, by `/proc/PID/comm`), not this process.
fn orphan_holder(path: &Path) -> Option<rustix::process::Pid> {
    let text = fs::read_to_string(path).ok()?;
    let raw: i32 = text.trim().parse().ok()?;
    let pid = rustix::process::Pid::from_raw(raw)?;
    let me = rustix::process::getpid();
    let comm = |p: rustix::process::Pid| fs::read(format!("/proc/{}/comm", p.as_raw_nonzero()));
    (pid != me && comm(pid).ok()? == comm(me).ok()?).then_some(pid)
}

impl StateDir {
    /// Opens (creating it, mode 0700) and locks a state dir, ending an
    /// orphaned agent that still holds it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(path).map_err(io_err("create state dir", path))?;
        let lock_path = path.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        // A pass that is just finishing gets a moment. One still holding
        // the lock after that is an orphan: the server runs one pass per
        // client at a time, so a holder it did not start belongs to a
        // connection that is gone (a network cut: sshd on this side may
        // not notice for hours, as the agent, waiting for input, sends
        // nothing). It is ended; killing a pass loses nothing, every file
        // stays whole (server/tests/faults_lab.rs).
        if !try_lock(&lock, &lock_path, LOCK_WAIT)? {
            let holder = orphan_holder(&lock_path);
            if let Some(pid) = holder {
                tracing::warn!(pid = pid.as_raw_nonzero().get(), lock = %lock_path.display(), "ending the agent that holds the lock: its server is gone");
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if holder.is_none() || !try_lock(&lock, &lock_path, TAKEOVER_WAIT)? {
                return Err(StateError::Busy(lock_path));
            }
        }
        // Who holds it, for the next pass to find.
        let _ = lock.set_len(0);
        let _ = (&lock).write_all(format!("{}\n", std::process::id()).as_bytes());
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ledger_path(&self) -> PathBuf {
        self.path.join("ledger")
    }

    /// Loads the ledger (empty on first use).
    pub fn load_ledger(&self) -> Result<Ledger, StateError> {
        let path = self.ledger_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Ledger {
                    version: LEDGER_VERSION,
                    ..Ledger::default()
                });
            }
            Err(e) => return Err(io_err("read ledger", &path)(e)),
        };
        let ledger: Ledger =
            postcard::from_bytes(&bytes).map_err(|_| StateError::Corrupt(path.clone()))?;
        let paths_ok = ledger.records.keys().all(|p| p.check().is_ok());
        if ledger.version != LEDGER_VERSION || !paths_ok {
            return Err(StateError::Corrupt(path));
        }
        Ok(ledger)
    }

    /// Saves the ledger atomically; durably too with `durable`, else the
    /// caller flushes the file system.
    pub fn save_ledger(&self, ledger: &Ledger, durable: bool) -> Result<(), StateError> {
        let path = self.ledger_path();
        let bytes = postcard::to_stdvec(ledger)
            .map_err(|e| io_err("encode ledger", &path)(io::Error::other(e)))?;
        write_atomic(&path, &bytes, durable).map_err(io_err("write ledger", &path))
    }

    /// Where the original of `rel` is kept.
    pub fn backup_path(&self, rel: &RelPath) -> PathBuf {
        self.path.join("backup").join(rel.as_path())
    }

    /// Where a drifted copy of `rel` found at `stamp` is kept.
    pub fn drift_path(&self, rel: &RelPath, stamp: u64) -> PathBuf {
        let mut p = self.path.join("drift").join(rel.as_path()).into_os_string();
        p.push(format!(".{stamp}"));
        PathBuf::from(p)
    }

    /// Where content for entry `index` waits when its directory does not
    /// exist before the commit.
    pub fn staging_path(&self, index: u32) -> PathBuf {
        self.path.join("staging").join(index.to_string())
    }

    /// Temp files a killed pass left behind, and clears the record.
    pub fn take_journal(&self) -> Result<Vec<RelPath>, StateError> {
        let path = self.path.join("journal");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("read journal", &path)(e)),
        };
        let staging = self.path.join("staging");
        match fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("clear", &staging)(e));
            }
            _ => {}
        }
        Ok(bytes
            .split(|&b| b == 0)
            .filter_map(|p| RelPath::new(p.to_vec()).ok())
            .collect())
    }

    /// Records the temps of this pass before they are created, so a kill
    /// at any point leaves nothing behind for good.
    pub fn write_journal(&self, temps: &[&RelPath]) -> Result<(), StateError> {
        let path = self.path.join("journal");
        let mut bytes = Vec::new();
        for t in temps {
            bytes.extend_from_slice(t.as_bytes());
            bytes.push(0);
        }
        write_atomic(&path, &bytes, true).map_err(io_err("write journal", &path))
    }

    /// Drops the journal after a pass finished.
    pub fn clear_journal(&self) -> Result<(), StateError> {
        let path = self.path.join("journal");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
            _ => Ok(()),
        }
    }
}

/// Writes a file via temp (+ fsync when `durable`) + rename.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_pass_is_refused_while_one_holds_the_lock() {
        let d = tempfile::tempdir().unwrap();
        let first = StateDir::open(d.path()).unwrap();
        let err = StateDir::open(d.path()).unwrap_err();
        assert!(matches!(err, StateError::Busy(_)), "{err}");
        drop(first);
        StateDir::open(d.path()).unwrap();
    }

    #[test]
    fn ledger_round_trips_and_refuses_garbage() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let mut l = s.load_ledger().unwrap();
        l.applied = Some([3; 32]);
        s.save_ledger(&l, true).unwrap();
        assert_eq!(s.load_ledger().unwrap().applied, Some([3; 32]));
        fs::write(d.path().join("ledger"), b"\xff\xff garbage").unwrap();
        assert!(matches!(s.load_ledger(), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn journal_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(d.path()).unwrap();
        let a = RelPath::new(b"etc/.cfi.x.tmp".to_vec()).unwrap();
        s.write_journal(&[&a]).unwrap();
        assert_eq!(s.take_journal().unwrap(), vec![a]);
    }
}
