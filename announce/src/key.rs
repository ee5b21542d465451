//! Ed25519 public keys in OpenSSH form, and their fingerprints.
//!
//! A server announces its key as the `authorized_keys` line it wants
//! installed (`ssh-ed25519 AAAA…`); a client announces the fingerprint of its
//! sshd host key. Both come off the network, so parsing is strict: one key
//! type, the exact SSH wire blob of RFC 8709 §4, canonical base64. The
//! fingerprint is the one `ssh-keygen -l` prints, so an admin can compare
//! what cfi logs with what they see on the machine.

use std::fmt;
use std::str::FromStr;

use base64ct::{Base64, Base64Unpadded, Encoding};

use crate::shown::shown;

/// The only key type cfi uses, in a key line and inside the blob.
pub const KEY_TYPE: &str = "ssh-ed25519";

/// Length of an ed25519 blob in SSH wire format: a u32-length string
/// `ssh-ed25519`, then a u32-length string of the 32 key bytes.
pub const BLOB_LEN: usize = 4 + KEY_TYPE.len() + 4 + 32;

/// The start of every ed25519 blob: everything before the key bytes.
const BLOB_PREFIX: [u8; BLOB_LEN - 32] = *b"\0\0\0\x0bssh-ed25519\0\0\0\x20";

const FINGERPRINT_PREFIX: &str = "SHA256:";

/// Unpadded base64 of a 32-byte SHA-256 digest.
const FINGERPRINT_BASE64_LEN: usize = 43;

/// An ed25519 public key, as OpenSSH writes it.
///
/// It compares, hashes and prints (`ssh-ed25519 AAAA…`, without a comment)
/// by its blob; `{:?}` shows the fingerprint.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    blob: [u8; BLOB_LEN],
}

/// Why a text is not an ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Nothing but whitespace.
    #[error("invalid ssh public key: the line is empty")]
    Empty,
    /// Another key type: RSA, ECDSA, a certificate, a security key…
    #[error("invalid ssh public key: only ssh-ed25519 keys are supported, got {0}")]
    KeyType(String),
    /// `ssh-ed25519` alone.
    #[error("invalid ssh-ed25519 public key: the base64 key after ssh-ed25519 is missing")]
    MissingBase64,
    /// The base64 or the blob inside it is not an ed25519 key.
    #[error("invalid ssh-ed25519 public key {shown}: {reason}")]
    Malformed {
        /// The offending text, quoted, escaped and cut short.
        shown: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a text is not a `SHA256:…` key fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid key fingerprint {shown}: {reason}")]
pub struct InvalidFingerprint {
    /// The rejected input, quoted, escaped and cut short.
    pub shown: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

impl PublicKey {
    /// Parses `ssh-ed25519 <base64> [comment]`, the form of a `.pub` file and
    /// of a server's TXT `key`. The comment is dropped; surrounding
    /// whitespace, a trailing newline included, is ignored.
    pub fn parse(line: &str) -> Result<Self, KeyError> {
        let line = line.trim_ascii();
        if line.is_empty() {
            return Err(KeyError::Empty);
        }
        if line.contains(['\n', '\r']) {
            return Err(KeyError::Malformed {
                shown: shown(line),
                reason: "it spans more than one line",
            });
        }
        let mut fields = line.split_ascii_whitespace();
        let key_type = fields.next().unwrap_or_default();
        if key_type != KEY_TYPE {
            return Err(KeyError::KeyType(shown_key_type(key_type)));
        }
        let base64 = fields.next().ok_or(KeyError::MissingBase64)?;
        let malformed = |reason| KeyError::Malformed {
            shown: shown(base64),
            reason,
        };
        let blob = Base64::decode_vec(base64).map_err(|_| malformed("the key is not base64"))?;
        check_blob(&blob)
            .map(|blob| Self { blob })
            .map_err(malformed)
    }

    /// The key from its SSH wire blob, as an SSH library hands it over.
    pub fn from_blob(blob: &[u8]) -> Result<Self, KeyError> {
        check_blob(blob)
            .map(|blob| Self { blob })
            .map_err(|reason| KeyError::Malformed {
                shown: shown(&Base64::encode_string(blob)),
                reason,
            })
    }

    /// The key from its 32 raw bytes.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        let mut blob = [0; BLOB_LEN];
        blob[..BLOB_PREFIX.len()].copy_from_slice(&BLOB_PREFIX);
        blob[BLOB_PREFIX.len()..].copy_from_slice(&raw);
        Self { blob }
    }

    /// `ssh-ed25519 AAAA…`, without a comment: 80 bytes.
    pub fn line(&self) -> String {
        format!("{KEY_TYPE} {}", Base64::encode_string(&self.blob))
    }

    /// The SSH wire blob: what the base64 of [`line`](Self::line) holds and
    /// what fingerprints and rotation signatures are computed over.
    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// The 32 key bytes, as ed25519 libraries take them.
    pub fn raw(&self) -> [u8; 32] {
        let mut raw = [0; 32];
        raw.copy_from_slice(&self.blob[BLOB_PREFIX.len()..]);
        raw
    }

    /// `SHA256:` and the unpadded base64 of the blob's SHA-256, exactly as
    /// `ssh-keygen -lf` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.blob);
        format!(
            "{FINGERPRINT_PREFIX}{}",
            Base64Unpadded::encode_string(digest.as_ref())
        )
    }
}

/// The blob as an array, or why it is not an ed25519 blob.
fn check_blob(blob: &[u8]) -> Result<[u8; BLOB_LEN], &'static str> {
    let type_end = 4 + KEY_TYPE.len();
    if blob.get(..type_end) != Some(&BLOB_PREFIX[..type_end]) {
        return Err("the key inside is not ssh-ed25519");
    }
    if blob.get(type_end..BLOB_PREFIX.len()) != Some(&BLOB_PREFIX[type_end..]) {
        return Err("the ed25519 key inside is not 32 bytes");
    }
    blob.try_into().map_err(|_| {
        if blob.len() < BLOB_LEN {
            "the ed25519 key inside is cut short"
        } else {
            "there are bytes after the ed25519 key"
        }
    })
}

/// A key type as the error shows it: as it is when it looks like one
/// (`ssh-rsa`, `sk-ssh-ed25519@openssh.com`), escaped otherwise.
fn shown_key_type(raw: &str) -> String {
    let plain = raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-@._".contains(&b));
    if plain { raw.to_owned() } else { shown(raw) }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

/// Checks that `s` is a key fingerprint as `ssh-keygen -l` prints it:
/// `SHA256:` and 43 characters of unpadded standard base64. Returns it as
/// given; fingerprints are compared as strings.
///
/// Used for a client's TXT `hostkey`, a server's TXT `fp` and `prev`, and
/// the client's `server_fingerprint` setting.
pub fn parse_fingerprint(s: &str) -> Result<String, InvalidFingerprint> {
    let fail = |reason| InvalidFingerprint {
        shown: shown(s),
        reason,
    };
    let Some(base64) = s.strip_prefix(FINGERPRINT_PREFIX) else {
        return Err(fail(if s.starts_with("MD5:") {
            "only SHA256 fingerprints are accepted (ssh-keygen -l -E sha256)"
        } else {
            "it does not start with SHA256:"
        }));
    };
    if base64.len() != FINGERPRINT_BASE64_LEN {
        return Err(fail(
            "it is not 43 characters of unpadded base64 after SHA256:",
        ));
    }
    // The decoder refuses non-canonical trailing bits, so each digest has
    // exactly one accepted spelling and string comparison is sound.
    match Base64Unpadded::decode_vec(base64) {
        Ok(digest) if digest.len() == 32 => Ok(s.to_owned()),
        _ => Err(fail("it is not the base64 of a SHA-256 digest")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `ssh-keygen -t ed25519 -N '' -C test@cfi -f /tmp/x`, then `cat /tmp/x.pub`.
    pub(crate) const PUB_LINE: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIjTGyvgr5fjTwlZ+kdHXc6fwsv38sVGDrCUhvmAavZ9 test@cfi";
    /// `ssh-keygen -lf /tmp/x.pub`: `256 SHA256:… test@cfi (ED25519)`.
    pub(crate) const FINGERPRINT: &str = "SHA256:qQ3wLLVSUKAKzdAkLa6Hrl9mQsxkuD9Kvs68RHbl5xU";

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        let key = PublicKey::parse(PUB_LINE).unwrap();
        assert_eq!(key.fingerprint(), FINGERPRINT);
        assert_eq!(parse_fingerprint(FINGERPRINT).unwrap(), FINGERPRINT);
    }

    #[test]
    fn line_drops_the_comment_and_round_trips() {
        let key = PublicKey::parse(&format!("  {PUB_LINE}\n")).unwrap();
        let line = key.line();
        assert_eq!(line, PUB_LINE.strip_suffix(" test@cfi").unwrap());
        assert_eq!(line.len(), 80);
        assert_eq!(key.to_string(), line);
        assert_eq!(PublicKey::parse(&line).unwrap(), key);
        assert_eq!(PublicKey::from_raw(key.raw()), key);
        assert_eq!(PublicKey::from_blob(key.blob()).unwrap(), key);
        assert_eq!(format!("{key:?}"), format!("PublicKey({FINGERPRINT})"));
    }

    #[test]
    fn other_key_types_are_refused_by_name() {
        for (line, name) in [
            ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB x@y", "ssh-rsa"),
            ("ecdsa-sha2-nistp256 AAAA", "ecdsa-sha2-nistp256"),
            (
                "sk-ssh-ed25519@openssh.com AAAA",
                "sk-ssh-ed25519@openssh.com",
            ),
            ("SSH-ED25519 AAAA", "SSH-ED25519"),
        ] {
            let err = PublicKey::parse(line).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid ssh public key: only ssh-ed25519 keys are supported, got {name}")
            );
        }
        let err = PublicKey::parse("\x1b[31m AAAA").unwrap_err();
        assert!(!err.to_string().contains('\x1b'), "{err}");
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        let base64 = PUB_LINE.split(' ').nth(1).unwrap();
        let cases = [
            ("".to_owned(), "empty"),
            ("ssh-ed25519".to_owned(), "missing"),
            (format!("ssh-ed25519 {}", &base64[..65]), "not base64"),
            (format!("ssh-ed25519 {base64}=="), "not base64"),
            (format!("ssh-ed25519 {}!", &base64[..67]), "not base64"),
            // The blob of an RSA key under an ed25519 label.
            (
                "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB".to_owned(),
                "not ssh-ed25519",
            ),
            // A 33-byte key, and the right key followed by three bytes.
            (
                format!(
                    "ssh-ed25519 {}",
                    Base64::encode_string(&[&BLOB_PREFIX[..18], b"\x21", &[7; 33]].concat())
                ),
                "not 32 bytes",
            ),
            (
                format!("ssh-ed25519 {base64}AAAA"),
                "bytes after the ed25519 key",
            ),
            (
                format!("ssh-ed25519 {}", Base64::encode_string(&BLOB_PREFIX)),
                "cut short",
            ),
            (
                format!("{PUB_LINE}\nssh-ed25519 {base64}"),
                "more than one line",
            ),
        ];
        for (line, want) in cases {
            let err = PublicKey::parse(&line).unwrap_err();
            assert!(err.to_string().contains(want), "{line:?}: {err}");
        }
        let err = PublicKey::from_blob(b"\0\0\0\x07ssh-rsa").unwrap_err();
        assert!(err.to_string().contains("not ssh-ed25519"), "{err}");
    }

    #[test]
    fn fingerprints_are_checked() {
        let body = FINGERPRINT.strip_prefix("SHA256:").unwrap();
        let cases = [
            ("".to_owned(), "does not start with SHA256:"),
            (body.to_owned(), "does not start with SHA256:"),
            ("sha256:".to_owned() + body, "does not start with SHA256:"),
            ("MD5:3b:4f:2a".to_owned(), "only SHA256"),
            (format!("{FINGERPRINT}="), "43 characters"),
            (FINGERPRINT[..49].to_owned(), "43 characters"),
            (format!("{FINGERPRINT} "), "43 characters"),
            (FINGERPRINT.replacen('q', "-", 1), "not the base64"),
            // 'V' sets trailing bits that 'U' leaves clear: not canonical.
            (FINGERPRINT.replace("5xU", "5xV"), "not the base64"),
        ];
        for (input, want) in cases {
            let err = parse_fingerprint(&input).unwrap_err();
            assert!(err.to_string().contains(want), "{input:?}: {err}");
        }
    }
}
