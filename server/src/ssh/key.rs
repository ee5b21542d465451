//! The server's own SSH key: ed25519 in OpenSSH's format, made on first
//! start and loaded after.
//!
//! `cfi-server rotate-key` replaces it: the old key moves to
//! `<key>.previous`, a new one takes its place, and from then on the
//! server announces the new key with the old key's signature over it
//! (TXT `prev`, `rot`), which clients that pinned the old key accept. Until
//! a client has installed the new key the server logs in with the previous
//! one. Only one step is kept: a client that missed two rotations needs
//! `cfi-announcer forget`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};

use super::SshError;

/// The server's own key pair: ed25519, in OpenSSH's format, unencrypted
/// (the daemon starts unattended).
#[derive(Clone)]
pub struct ServerKey {
    pub(super) key: Arc<PrivateKey>,
    /// The key before the last rotation, tried when a client refuses `key`.
    pub(super) previous: Option<Arc<PrivateKey>>,
    path: PathBuf,
    public_line: String,
}

impl fmt::Debug for ServerKey {
    // Never the private half.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("path", &self.path)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl ServerKey {
    /// Loads the key at `path`, or generates one there (mode 0600, comment
    /// `cfi-server@<hostname>`) if there is none.
    pub fn load_or_generate(path: &Path) -> Result<ServerKey, SshError> {
        match fs::read(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Self::generate(path),
            Err(e) => Err(key_error(path, format!("cannot read: {e}"))),
        }
    }

    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<ServerKey, SshError> {
        let text = fs::read(path).map_err(|e| key_error(path, format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<ServerKey, SshError> {
        let key = parse_private(path, text)?;
        let mut loaded = Self::new(path, key)?;
        let previous = previous_path(path);
        match fs::read(&previous) {
            Ok(text) => loaded.previous = Some(Arc::new(parse_private(&previous, &text)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_error(&previous, format!("cannot read: {e}"))),
        }
        Ok(loaded)
    }

    /// Replaces the key at `path` by a new one, keeping the old one as
    /// `<path>.previous` (see the module documentation). Returns the new
    /// key. A crash at any point leaves a usable key at `path`.
    pub fn rotate(path: &Path) -> Result<ServerKey, SshError> {
        let old = Self::load(path)?;
        let text = fs::read(path).map_err(|e| key_error(path, format!("cannot read: {e}")))?;
        // The old key is saved before the new one replaces it: a crash in
        // between leaves the old key in place, and `previous` equal to it.
        write_key_file(&previous_path(path), &text, Replace::Yes)?;
        let new = generate_key(path)?;
        write_key_file(path, encode(path, &new)?.as_bytes(), Replace::Yes)?;
        tracing::info!(
            old = old.fingerprint(),
            new = %new.fingerprint(HashAlg::Sha256),
            "rotated the server key"
        );
        Self::load(path)
    }

    /// The rotation the server announces: the previous key's signature over
    /// the current one, while there is a previous key.
    pub fn rotation(&self) -> Option<cfi_announce::Rotation> {
        let previous = self.previous.as_ref()?;
        let seed = previous.key_data().ed25519()?.private.to_bytes();
        let old = cfi_announce::PublicKey::parse(&previous.public_key().to_openssh().ok()?).ok()?;
        let new = cfi_announce::PublicKey::parse(&self.public_line).ok()?;
        match cfi_announce::Rotation::sign(&seed, &old, &new) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the key rotation; clients that pinned the previous key will not follow");
                None
            }
        }
    }

    /// The previous key's fingerprint, while there is one.
    pub fn previous_fingerprint(&self) -> Option<String> {
        self.previous
            .as_ref()
            .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
    }
}

fn previous_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".previous");
    PathBuf::from(p)
}

fn parse_private(path: &Path, text: &[u8]) -> Result<PrivateKey, SshError> {
    let key = PrivateKey::from_openssh(text)
        .map_err(|e| key_error(path, format!("not an OpenSSH private key: {e}")))?;
    if key.is_encrypted() {
        return Err(key_error(
            path,
            "encrypted; the server needs a key without a passphrase".into(),
        ));
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(key_error(
            path,
            format!("a {} key; the server uses ed25519", key.algorithm()),
        ));
    }
    Ok(key)
}

impl ServerKey {
    fn new(path: &Path, key: PrivateKey) -> Result<ServerKey, SshError> {
        let public_line = key
            .public_key()
            .to_openssh()
            .map_err(|e| key_error(path, format!("cannot encode the public key: {e}")))?;
        Ok(ServerKey {
            key: Arc::new(key),
            previous: None,
            path: path.to_owned(),
            public_line,
        })
    }

    /// Writes a new key beside `path` and links it into place, so a
    /// concurrent start that made one first wins and both use that one.
    fn generate(path: &Path) -> Result<ServerKey, SshError> {
        let key = generate_key(path)?;
        let text = encode(path, &key)?;
        if write_key_file(path, text.as_bytes(), Replace::No)? {
            tracing::info!(path = %path.display(), fingerprint = %key.fingerprint(HashAlg::Sha256), "generated the server key");
            Self::new(path, key)
        } else {
            Self::load(path)
        }
    }

    /// The public key as one `authorized_keys` line:
    /// `ssh-ed25519 AAAA… cfi-server@HOST`.
    pub fn public_line(&self) -> &str {
        &self.public_line
    }

    /// The public key's fingerprint, `SHA256:…`.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Where the key lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A new ed25519 key, its comment `cfi-server@<hostname>`.
fn generate_key(path: &Path) -> Result<PrivateKey, SshError> {
    let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .map_err(|e| key_error(path, format!("cannot generate: {e}")))?;
    key.set_comment(format!("cfi-server@{}", hostname()));
    Ok(key)
}

fn encode(path: &Path, key: &PrivateKey) -> Result<String, SshError> {
    Ok(key
        .to_openssh(LineEnding::LF)
        .map_err(|e| key_error(path, format!("cannot encode: {e}")))?
        .to_string())
}

/// Whether [`write_key_file`] may replace a file already at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// Writes `text` to a temp file beside `path` (mode 0600, fsynced) and
/// moves it into place: renamed over an existing file with
/// [`Replace::Yes`], hard-linked with [`Replace::No`], so that of two
/// concurrent first starts the one that links first wins. Returns whether
/// the file was written (`false`: one was there already).
fn write_key_file(path: &Path, text: &[u8], replace: Replace) -> Result<bool, SshError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)
            .map_err(|e| key_error(path, format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".new-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let write = || -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(text)?;
        file.sync_all()?;
        match replace {
            Replace::Yes => fs::rename(&temp, path),
            Replace::No => fs::hard_link(&temp, path),
        }
    };
    let written = write();
    let _ = fs::remove_file(&temp);
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && replace == Replace::No => Ok(false),
        Err(e) => Err(key_error(path, format!("cannot write: {e}"))),
    }
}

fn key_error(path: &Path, why: String) -> SshError {
    SshError::Key {
        path: path.to_owned(),
        why,
    }
}

/// The kernel's host name, for the key's comment.
fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_key_is_generated_private_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/server_key");
        let made = ServerKey::load_or_generate(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let line = made.public_line();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[0], "ssh-ed25519");
        assert!(fields[1].starts_with("AAAA"), "{line}");
        assert!(fields[2].starts_with("cfi-server@"), "{line}");
        assert!(made.fingerprint().starts_with("SHA256:"));

        let loaded = ServerKey::load_or_generate(&path).unwrap();
        assert_eq!(loaded.public_line(), made.public_line());
        assert_eq!(loaded.fingerprint(), made.fingerprint());
        // No temp files left beside it.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_key_that_is_not_one_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server_key");
        fs::write(&path, "not a key").unwrap();
        let err = ServerKey::load_or_generate(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("not an OpenSSH private key"), "{err}");
    }
}
