//! The server key this machine trusts, kept in the state dir
//! (`<state_dir>/server_key.pub`, one OpenSSH public key line, mode 0600)
//! so that trust on first use survives reboots: after the first key, only
//! a key whose rotation that key signed is installed (DESIGN.md "Trust").
//!
//! A lock file beside it (`announcer.lock`, `flock`) keeps one announcer
//! per state dir, and lets `cfi-announcer forget` refuse while an
//! announcer runs that would put the line straight back.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use cfi_announce::PublicKey;

use crate::authorized_keys::{self, KeysError};

/// The pin file in the state dir.
const PIN_FILE: &str = "server_key.pub";

/// The announcer's lock file in the state dir.
const LOCK_FILE: &str = "announcer.lock";

/// Why the pin cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// An I/O failure, with the path.
    #[error("failed to {op} {path}: {cause}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// Why it failed.
        cause: io::Error,
    },
    /// The file holds something that is not a server key.
    #[error("{path} does not hold a server key ({why}); remove it with `cfi-announcer forget`")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Writing it failed.
    #[error(transparent)]
    Write(#[from] KeysError),
    /// Another announcer holds the state dir.
    #[error(
        "another cfi-announcer is running with state dir {0} (stop it first: systemctl stop cfi-client)"
    )]
    Busy(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PinError {
    let path = path.to_owned();
    move |cause| PinError::Io { op, path, cause }
}

/// The pin file of a state dir.
#[derive(Debug, Clone)]
pub struct PinStore {
    dir: PathBuf,
}

impl PinStore {
    /// The store in `state_dir` (created, mode 0700, when first written).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.to_owned(),
        }
    }

    /// The pin file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(PIN_FILE)
    }

    /// The pinned key, if any.
    pub fn load(&self) -> Result<Option<PublicKey>, PinError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        PublicKey::parse(text.trim())
            .map(Some)
            .map_err(|e| PinError::Corrupt {
                path,
                why: e.to_string(),
            })
    }

    /// Pins `key`, replacing the file atomically.
    pub fn save(&self, key: &PublicKey) -> Result<(), PinError> {
        self.ensure_dir()?;
        let text = format!("{}\n", key.line());
        authorized_keys::replace(&self.path(), &self.dir, text.as_bytes(), 0o600, owner())?;
        Ok(())
    }

    /// Removes the pin; returns whether there was one.
    pub fn remove(&self) -> Result<bool, PinError> {
        let path = self.path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// Takes the announcer's lock without waiting; held while the
    /// returned file lives.
    pub fn lock(&self) -> Result<File, PinError> {
        self.ensure_dir()?;
        let path = self.dir.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(PinError::Busy(self.dir.clone())),
            Err(e) => Err(io_err("lock", &path)(e.into())),
        }
    }

    fn ensure_dir(&self) -> Result<(), PinError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io_err("create", &self.dir))
    }
}

/// The announcer's own user: the pin belongs to whoever runs it.
fn owner() -> (u32, u32) {
    (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn";

    #[test]
    fn a_pin_is_saved_private_loaded_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let store = PinStore::new(&d.path().join("state"));
        assert_eq!(store.load().unwrap(), None);
        let key = PublicKey::parse(&format!("{KEY} cfi-server@x")).unwrap();
        store.save(&key).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.load().unwrap(), Some(key));
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn a_corrupt_pin_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let store = PinStore::new(d.path());
        std::fs::write(store.path(), "ssh-rsa AAAA\n").unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("server_key.pub"), "{err}");
    }

    #[test]
    fn a_second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let store = PinStore::new(d.path());
        let held = store.lock().unwrap();
        let err = store.lock().unwrap_err().to_string();
        assert!(err.contains("another cfi-announcer"), "{err}");
        drop(held);
        store.lock().unwrap();
    }
}
