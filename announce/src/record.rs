//! The two records cfi announces over mDNS (DESIGN.md "The enrollment story").
//!
//! A server announces [`SERVER_SERVICE`] with a [`ServerRecord`]: the key
//! clients should install, its fingerprint and, while it moves to a new key,
//! the [`Rotation`] that lets clients follow. A client announces
//! [`CLIENT_SERVICE`] with a [`ClientRecord`]: its id, the group it asks for
//! and the fingerprint of its sshd host key.
//!
//! Records come from anyone on the LAN. Parsing refuses what cannot be
//! trusted to mean what it says (another version, a key that is not
//! ed25519, a fingerprint that does not match its key) and never panics;
//! whether a valid server record's key is then *trusted* is
//! [`decide`](crate::decide)'s business.

use cfi_groups::GroupName;

use crate::key::{PublicKey, parse_fingerprint};
use crate::machine_id::MachineId;
use crate::rotation::{RotationError, is_signature_shaped, sign_rotation, verify_rotation};
use crate::shown::{shown, truncated};
use crate::txt::{
    Builder, Properties, RecordError, TXT_FINGERPRINT, TXT_GROUP, TXT_HOSTKEY, TXT_ID, TXT_KEY,
    TXT_PREVIOUS, TXT_ROTATION, TXT_VERSION,
};

/// The service clients announce (RFC 6763 §7 service type, in the form mDNS
/// libraries take it).
pub const CLIENT_SERVICE: &str = "_cfi-client._tcp.local.";

/// The service servers announce.
pub const SERVER_SERVICE: &str = "_cfi-server._tcp.local.";

/// The record format this crate reads and writes, TXT `v`.
pub const VERSION: &str = "1";

/// What a server announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// The key the server connects with, which clients install.
    pub key: PublicKey,
    /// Set while the server moves from an older key to `key`.
    pub rotation: Option<Rotation>,
}

/// A server's proof that its previous key handed over to the current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Fingerprint of the previous key, TXT `prev`.
    pub previous: String,
    /// The previous key's signature over the current one, TXT `rot`
    /// (see [`sign_rotation`]).
    pub signature: String,
}

/// What a client announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The client's stable id.
    pub id: MachineId,
    /// The group it asks for.
    pub group: GroupField,
    /// Fingerprint of its sshd ed25519 host key, when it has one.
    pub hostkey: Option<String>,
}

/// A client's TXT `group`.
///
/// An invalid group does not make the record invalid: the server puts such
/// a client in the `unknown` group and says why, so the text is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupField {
    /// No `group` key: the client has no group configured.
    Missing,
    /// A valid group name.
    Valid(GroupName),
    /// Anything else, decoded lossily and cut to 64 characters. It comes
    /// from the network as it is: show it with `{:?}`.
    Invalid(String),
}

impl ServerRecord {
    /// The keys a server record is read from.
    const KEYS: &'static [&'static str] = &[
        TXT_VERSION,
        TXT_KEY,
        TXT_FINGERPRINT,
        TXT_PREVIOUS,
        TXT_ROTATION,
    ];

    /// The TXT properties announcing this record, `v` first.
    pub fn to_txt(&self) -> Result<Vec<(String, String)>, RecordError> {
        let mut txt = Builder::new();
        txt.push(TXT_KEY, self.key.line())?;
        txt.push(TXT_FINGERPRINT, self.key.fingerprint())?;
        if let Some(rotation) = &self.rotation {
            // Checked here too, so that what is announced always parses.
            check_fingerprint(TXT_PREVIOUS, &rotation.previous)?;
            check_signature(&rotation.signature)?;
            txt.push(TXT_PREVIOUS, rotation.previous.clone())?;
            txt.push(TXT_ROTATION, rotation.signature.clone())?;
        }
        Ok(txt.build())
    }

    /// Reads a server record from its TXT properties.
    pub fn from_txt<'a>(
        properties: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, RecordError> {
        let txt = Properties::collect(properties, Self::KEYS);
        txt.check_version()?;
        let key =
            PublicKey::parse(txt.required(TXT_KEY)?).map_err(|cause| RecordError::Key { cause })?;
        let announced = check_fingerprint(TXT_FINGERPRINT, txt.required(TXT_FINGERPRINT)?)?;
        let actual = key.fingerprint();
        if announced != actual {
            return Err(RecordError::FingerprintMismatch { announced, actual });
        }
        let rotation = match (txt.text(TXT_PREVIOUS)?, txt.text(TXT_ROTATION)?) {
            (None, None) => None,
            (Some(previous), Some(signature)) => Some(Rotation {
                previous: check_fingerprint(TXT_PREVIOUS, previous)?,
                signature: check_signature(signature)?,
            }),
            (Some(_), None) => return Err(half_rotation(TXT_PREVIOUS, TXT_ROTATION)),
            (None, Some(_)) => return Err(half_rotation(TXT_ROTATION, TXT_PREVIOUS)),
        };
        Ok(Self { key, rotation })
    }
}

impl Rotation {
    /// The rotation from `old` to `new`, signed with `old`'s seed.
    pub fn sign(
        old_seed: &[u8; 32],
        old: &PublicKey,
        new: &PublicKey,
    ) -> Result<Self, RotationError> {
        Ok(Self {
            previous: old.fingerprint(),
            signature: sign_rotation(old_seed, old, new)?,
        })
    }

    /// Whether this is a rotation from `old` to `new` signed by `old`.
    pub fn is_signed(&self, old: &PublicKey, new: &PublicKey) -> bool {
        self.previous == old.fingerprint() && verify_rotation(old, new, &self.signature)
    }
}

impl ClientRecord {
    /// The keys a client record is read from.
    const KEYS: &'static [&'static str] = &[TXT_VERSION, TXT_ID, TXT_GROUP, TXT_HOSTKEY];

    /// The TXT properties announcing this record, `v` first. A client
    /// announces a valid group or none, so the text of a
    /// [`GroupField::Invalid`] group is parsed again and refused with why.
    pub fn to_txt(&self) -> Result<Vec<(String, String)>, RecordError> {
        let mut txt = Builder::new();
        txt.push(TXT_ID, self.id.to_string())?;
        match &self.group {
            GroupField::Missing => {}
            GroupField::Valid(group) => txt.push(TXT_GROUP, group.to_string())?,
            GroupField::Invalid(raw) => {
                let group = GroupName::parse(raw).map_err(|cause| RecordError::Group { cause })?;
                txt.push(TXT_GROUP, group.to_string())?;
            }
        }
        if let Some(hostkey) = &self.hostkey {
            txt.push(TXT_HOSTKEY, check_fingerprint(TXT_HOSTKEY, hostkey)?)?;
        }
        Ok(txt.build())
    }

    /// Reads a client record from its TXT properties.
    pub fn from_txt<'a>(
        properties: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, RecordError> {
        let txt = Properties::collect(properties, Self::KEYS);
        txt.check_version()?;
        let id =
            MachineId::parse(txt.required(TXT_ID)?).map_err(|cause| RecordError::Id { cause })?;
        let group = match txt.raw(TXT_GROUP) {
            None => GroupField::Missing,
            Some(value) => {
                let raw = String::from_utf8_lossy(value.unwrap_or_default());
                match GroupName::parse(&raw) {
                    Ok(name) => GroupField::Valid(name),
                    Err(_) => GroupField::Invalid(truncated(&raw).to_owned()),
                }
            }
        };
        let hostkey = txt
            .text(TXT_HOSTKEY)?
            .map(|fp| check_fingerprint(TXT_HOSTKEY, fp))
            .transpose()?;
        Ok(Self { id, group, hostkey })
    }
}

impl GroupField {
    /// The group name, when valid.
    pub fn valid(&self) -> Option<&GroupName> {
        match self {
            Self::Valid(name) => Some(name),
            Self::Missing | Self::Invalid(_) => None,
        }
    }
}

impl From<Option<GroupName>> for GroupField {
    fn from(group: Option<GroupName>) -> Self {
        group.map_or(Self::Missing, Self::Valid)
    }
}

/// `value` of TXT `key` if it is a fingerprint.
fn check_fingerprint(key: &'static str, value: &str) -> Result<String, RecordError> {
    parse_fingerprint(value).map_err(|cause| RecordError::Fingerprint { key, cause })
}

/// `value` of TXT `rot` if it has the shape of a signature; whose it is
/// is for the trust policy to check.
fn check_signature(value: &str) -> Result<String, RecordError> {
    if is_signature_shaped(value) {
        Ok(value.to_owned())
    } else {
        Err(RecordError::Signature {
            shown: shown(value),
        })
    }
}

fn half_rotation(present: &'static str, missing: &'static str) -> RecordError {
    RecordError::HalfRotation { present, missing }
}

#[cfg(test)]
mod tests;
