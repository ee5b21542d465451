//! Machine ids: how a client names itself in TXT `id`.
//!
//! Netbooted machines often share a host name and get addresses from DHCP,
//! so the server keys what it knows of a client (its pinned host key, its
//! sync state) by this id.
//!
//! A client derives it from `/etc/machine-id`, but machine-id(5) asks that
//! the file's content not be exposed on the network. So cfi announces an
//! application-specific id instead, made the way
//! sd_id128_get_machine_app_specific(3) makes one: HMAC-SHA256 keyed by the
//! 16 machine-id bytes over the fixed app id `cfi-client-id-v1`, of which the
//! first 16 bytes are kept. The result is stable per machine, unlinkable to
//! ids other programs derive, and does not reveal the machine-id. It equals
//! `systemd-id128 machine-id --app-specific=6366692d636c69656e742d69642d7631`
//! except for the six bits systemd overwrites to make a version-4 UUID.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::shown::shown;

/// The HMAC message: cfi's app id, 16 bytes like a systemd app id.
const APP_ID: &[u8; 16] = b"cfi-client-id-v1";

/// An id a client announces: 8 to 64 lowercase hex digits.
///
/// Clients derive 32 digits with [`machine_id_from`]; the wider range lets
/// other sources (a static list, a machine without systemd) bring their own
/// while still refusing ids short enough to collide by chance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId(String);

/// Why a string is not a [`MachineId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid machine id {shown}: {reason}")]
pub struct InvalidMachineId {
    /// The rejected input, quoted, escaped and cut short.
    pub shown: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

/// Why the content of `/etc/machine-id` gives no id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MachineIdError {
    /// The file is empty, as in an image built to get its id at first boot.
    #[error("{} is empty: run systemd-machine-id-setup", path.display())]
    Empty {
        /// The file read.
        path: PathBuf,
    },
    /// systemd marks the first boot as not yet completed (machine-id(5)).
    #[error(
        "{} says \"uninitialized\": the first boot has not completed; run systemd-machine-id-setup",
        path.display()
    )]
    Uninitialized {
        /// The file read.
        path: PathBuf,
    },
    /// Anything but 32 hex digits and a newline, or the all-zero id.
    #[error("{} does not hold a machine id (32 hex digits): it holds {shown}", path.display())]
    Malformed {
        /// The file read.
        path: PathBuf,
        /// Its content, quoted, escaped and cut short.
        shown: String,
    },
}

impl MachineId {
    const MIN_LEN: usize = 8;
    const MAX_LEN: usize = 64;

    /// Checks `raw` against the rule: 8 to 64 of `0-9a-f`.
    pub fn parse(raw: &str) -> Result<Self, InvalidMachineId> {
        let fail = |reason| InvalidMachineId {
            shown: shown(raw),
            reason,
        };
        if !raw.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(fail("only lowercase hex digits (0-9, a-f) are allowed"));
        }
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&raw.len()) {
            return Err(fail("it must be 8 to 64 hex digits long"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id to announce for a machine whose `/etc/machine-id` holds `text`;
/// `path` is where `text` was read, for the error message.
pub fn machine_id_from(text: &str, path: &Path) -> Result<MachineId, MachineIdError> {
    let path = || path.to_owned();
    let content = text.trim_ascii_end();
    if content.is_empty() {
        return Err(MachineIdError::Empty { path: path() });
    }
    if content == "uninitialized" {
        return Err(MachineIdError::Uninitialized { path: path() });
    }
    let malformed = || MachineIdError::Malformed {
        path: path(),
        shown: shown(text),
    };
    // systemd reads either case; the bytes, not the spelling, are the key.
    let bytes = decode_hex(content).ok_or_else(malformed)?;
    if bytes.iter().all(|&b| b == 0) {
        return Err(malformed());
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes);
    let tag = ring::hmac::sign(&key, APP_ID);
    let hex = tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(MachineId(hex))
}

/// The 16 bytes spelt by 32 hex digits of either case.
fn decode_hex(text: &str) -> Option<[u8; 16]> {
    let digits = text.as_bytes();
    if digits.len() != 32 {
        return None;
    }
    let mut bytes = [0; 16];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high << 4 | low).ok()?;
    }
    Some(bytes)
}

impl FromStr for MachineId {
    type Err = InvalidMachineId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for MachineId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/machine-id";

    fn from(text: &str) -> Result<MachineId, MachineIdError> {
        machine_id_from(text, Path::new(PATH))
    }

    #[test]
    fn announced_id_is_the_app_specific_hmac() {
        // python3: hmac.new(bytes.fromhex(ID), b"cfi-client-id-v1", sha256).hexdigest()[:32];
        // systemd-id128 --app-specific gives 31862ba31c4c407a8b1bcd343afa817a
        // on that machine: the same but for the UUID version and variant bits.
        let id = from("3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        assert_eq!(id.as_str(), "31862ba31c4ca07a0b1bcd343afa817a");
        assert_eq!(from("3D1219C7C4C5404AAA1F6D2A48ADFDA4").unwrap(), id);
        assert_eq!(MachineId::parse(id.as_str()).unwrap(), id);
        assert!(!id.as_str().contains("3d1219c7"));
    }

    #[test]
    fn unusable_files_say_what_to_do() {
        let err = from("").unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/machine-id is empty: run systemd-machine-id-setup"
        );
        assert!(from("\n").unwrap_err().to_string().contains("is empty"));
        let err = from("uninitialized\n").unwrap_err();
        assert!(
            err.to_string().contains("systemd-machine-id-setup"),
            "{err}"
        );
        for bad in [
            "3d1219c7c4c5404aaa1f6d2a48adfda",
            "3d1219c7c4c5404aaa1f6d2a48adfda4a",
            "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4",
            "3d1219c7c4c5404aaa1f6d2a48adfdag",
            " 3d1219c7c4c5404aaa1f6d2a48adfda4",
            "00000000000000000000000000000000\n",
            "3d1219c7c4c5404aaa1f6d2a48adfd\u{e9}",
        ] {
            let err = from(bad).unwrap_err();
            assert!(
                matches!(err, MachineIdError::Malformed { .. }),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().starts_with(PATH), "{err}");
        }
    }

    #[test]
    fn machine_ids_are_checked() {
        for ok in ["0123abcd", &"f".repeat(64)] {
            assert_eq!(MachineId::parse(ok).unwrap().to_string(), ok);
        }
        for bad in [
            "",
            "0123abc",
            &"f".repeat(65),
            "0123ABCD",
            "0123abcg",
            "\x1b[31mabcd",
        ] {
            let err = MachineId::parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid machine id"), "{err}");
            assert!(!err.to_string().contains('\x1b'), "{err}");
        }
    }
}
