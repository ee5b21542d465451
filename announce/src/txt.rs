//! The TXT layer under both records: keys, the RFC 6763 rules, the errors.
//!
//! mDNS libraries hand TXT properties over as (key, optional value) pairs.
//! The parser here applies the rules of RFC 6763 §6.4 to them once, so the
//! records only ask for a key: keys compare case-insensitively, the first of
//! duplicate keys wins, and a key without `=` (a boolean attribute) is told
//! apart from one with an empty value. The builder checks the 255-byte
//! limit of RFC 6763 §6.1 on the way out.

use cfi_groups::InvalidGroupName;

use crate::key::{InvalidFingerprint, KeyError};
use crate::machine_id::InvalidMachineId;
use crate::shown::shown_bytes;

/// TXT `v`: the record format's version, [`VERSION`](crate::VERSION).
pub const TXT_VERSION: &str = "v";
/// Server TXT `key`: its public key line, `ssh-ed25519 AAAA…`.
pub const TXT_KEY: &str = "key";
/// Server TXT `fp`: the fingerprint of `key`.
pub const TXT_FINGERPRINT: &str = "fp";
/// Server TXT `prev`: during a rotation, the fingerprint of the old key.
pub const TXT_PREVIOUS: &str = "prev";
/// Server TXT `rot`: during a rotation, the old key's signature over `key`.
pub const TXT_ROTATION: &str = "rot";
/// Client TXT `id`: its [`MachineId`](crate::MachineId).
pub const TXT_ID: &str = "id";
/// Client TXT `group`: the group it asks for, if configured.
pub const TXT_GROUP: &str = "group";
/// Client TXT `hostkey`: the fingerprint of its sshd ed25519 host key.
pub const TXT_HOSTKEY: &str = "hostkey";

/// Longest TXT property, `key=value` together, in bytes (RFC 6763 §6.1: one
/// length byte per string).
pub const MAX_PROPERTY_LEN: usize = 255;

/// Why TXT properties are not a cfi record, or a record cannot be announced.
///
/// Every message names the TXT key; values are shown quoted, escaped and
/// cut short, since any machine on the LAN can announce anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// A required key is absent.
    #[error("TXT {key} is missing")]
    Missing {
        /// The TXT key.
        key: &'static str,
    },
    /// The key is there without `=`: a boolean attribute where a value is needed.
    #[error("TXT {key} has no value")]
    NoValue {
        /// The TXT key.
        key: &'static str,
    },
    /// The value's bytes are not UTF-8.
    #[error("TXT {key}={shown} is not UTF-8")]
    NotUtf8 {
        /// The TXT key.
        key: &'static str,
        /// The value, decoded lossily, quoted, escaped and cut short.
        shown: String,
    },
    /// A record of another format version, or of none.
    #[error("TXT v={shown}: unsupported version (this cfi reads and writes v=1)")]
    UnsupportedVersion {
        /// The announced version, quoted, escaped and cut short.
        shown: String,
    },
    /// Server TXT `key` is not an ed25519 public key.
    #[error("TXT key: {cause}")]
    Key {
        /// Why it is not.
        cause: KeyError,
    },
    /// TXT `fp`, `prev` or `hostkey` is not a `SHA256:…` fingerprint.
    #[error("TXT {key}: {cause}")]
    Fingerprint {
        /// The TXT key.
        key: &'static str,
        /// Why it is not.
        cause: InvalidFingerprint,
    },
    /// Server TXT `fp` is not the fingerprint of `key`: a sender that cannot
    /// get that right is not trusted with anything else.
    #[error(
        "TXT fp={announced} does not match TXT key (whose fingerprint is {actual}): \
         a record whose fingerprint does not match its key is refused"
    )]
    FingerprintMismatch {
        /// The fingerprint announced in `fp`.
        announced: String,
        /// The fingerprint of the announced key.
        actual: String,
    },
    /// Server TXT `rot` does not have the shape of a signature.
    #[error("TXT rot={shown}: not a rotation signature (88 characters of base64 of 64 bytes)")]
    Signature {
        /// The value, quoted, escaped and cut short.
        shown: String,
    },
    /// Only one of server TXT `prev` and `rot`.
    #[error("TXT {present} is set without {missing}: a key rotation needs both")]
    HalfRotation {
        /// The key that is there.
        present: &'static str,
        /// The key that is not.
        missing: &'static str,
    },
    /// Client TXT `id` is not a machine id.
    #[error("TXT id: {cause}")]
    Id {
        /// Why it is not.
        cause: InvalidMachineId,
    },
    /// A client record to announce holds a group name that is not valid.
    #[error("TXT group: {cause}")]
    Group {
        /// Why it is not.
        cause: InvalidGroupName,
    },
    /// A property to announce is over [`MAX_PROPERTY_LEN`].
    #[error("TXT {key}: {len} bytes with its key, over the limit of 255 (RFC 6763 §6.1)")]
    TooLong {
        /// The TXT key.
        key: &'static str,
        /// Length of `key=value` in bytes.
        len: usize,
    },
}

/// The values of the keys a record reads, found by the RFC 6763 §6.4 rules.
#[derive(Debug)]
pub(crate) struct Properties<'a> {
    keys: &'static [&'static str],
    /// Per key: absent, present without a value, or present with one.
    values: Vec<Option<Option<&'a [u8]>>>,
}

impl<'a> Properties<'a> {
    /// Picks `keys` (lowercase) out of `properties`. Other keys are ignored,
    /// so a newer peer may add some.
    pub(crate) fn collect(
        properties: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        keys: &'static [&'static str],
    ) -> Self {
        let mut values = vec![None; keys.len()];
        for (key, value) in properties {
            let slot = keys.iter().position(|k| k.eq_ignore_ascii_case(key));
            // "If a client receives a TXT record containing the same key
            // more than once, then the client MUST silently ignore all but
            // the first occurrence of that attribute" (RFC 6763 §6.4).
            if let Some(slot @ None) = slot.map(|i| &mut values[i]) {
                *slot = Some(value);
            }
        }
        Self { keys, values }
    }

    /// The raw value of `key`: `None` when absent, `Some(None)` when present
    /// without `=`.
    pub(crate) fn raw(&self, key: &'static str) -> Option<Option<&'a [u8]>> {
        let index = self.keys.iter().position(|k| *k == key)?;
        self.values[index]
    }

    /// The value of `key` as text, `None` when absent.
    pub(crate) fn text(&self, key: &'static str) -> Result<Option<&'a str>, RecordError> {
        match self.raw(key) {
            None => Ok(None),
            Some(None) => Err(RecordError::NoValue { key }),
            Some(Some(bytes)) => {
                std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| RecordError::NotUtf8 {
                        key,
                        shown: shown_bytes(bytes),
                    })
            }
        }
    }

    /// The value of `key` as text; absent is an error.
    pub(crate) fn required(&self, key: &'static str) -> Result<&'a str, RecordError> {
        self.text(key)?.ok_or(RecordError::Missing { key })
    }

    /// Checks that TXT `v` is [`VERSION`](crate::VERSION). Records check
    /// it first: a record of another version may mean anything by its other
    /// keys.
    pub(crate) fn check_version(&self) -> Result<(), RecordError> {
        match self.raw(TXT_VERSION) {
            Some(Some(v)) if v == crate::VERSION.as_bytes() => Ok(()),
            Some(Some(v)) => Err(RecordError::UnsupportedVersion {
                shown: shown_bytes(v),
            }),
            Some(None) => Err(RecordError::NoValue { key: TXT_VERSION }),
            None => Err(RecordError::Missing { key: TXT_VERSION }),
        }
    }
}

/// TXT properties to announce, each checked against [`MAX_PROPERTY_LEN`].
#[derive(Debug)]
pub(crate) struct Builder(Vec<(String, String)>);

impl Builder {
    /// Starts with `v`: RFC 6763 §6.7 puts the version first.
    pub(crate) fn new() -> Self {
        Self(vec![(TXT_VERSION.to_owned(), crate::VERSION.to_owned())])
    }

    /// Adds `key=value`.
    pub(crate) fn push(&mut self, key: &'static str, value: String) -> Result<(), RecordError> {
        let len = key.len() + 1 + value.len();
        if len > MAX_PROPERTY_LEN {
            return Err(RecordError::TooLong { key, len });
        }
        self.0.push((key.to_owned(), value));
        Ok(())
    }

    /// The properties, in the order added.
    pub(crate) fn build(self) -> Vec<(String, String)> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &[TXT_VERSION, TXT_GROUP];

    #[test]
    fn keys_are_case_insensitive_and_the_first_wins() {
        let props = Properties::collect(
            [
                ("Group", Some(&b"lab"[..])),
                ("V", Some(b"1")),
                ("group", Some(b"other")),
                ("v", None),
                ("unknown", Some(b"x")),
            ],
            KEYS,
        );
        assert_eq!(props.text(TXT_GROUP), Ok(Some("lab")));
        assert_eq!(props.check_version(), Ok(()));
    }

    #[test]
    fn absent_boolean_and_empty_values_differ() {
        let props = Properties::collect([("group", None), ("v", Some(&b""[..]))], KEYS);
        assert_eq!(
            props.text(TXT_GROUP),
            Err(RecordError::NoValue { key: TXT_GROUP })
        );
        assert_eq!(props.required(TXT_VERSION), Ok(""));
        let props = Properties::collect([], KEYS);
        assert_eq!(props.text(TXT_GROUP), Ok(None));
        assert_eq!(
            props.check_version(),
            Err(RecordError::Missing { key: TXT_VERSION })
        );
    }

    #[test]
    fn version_and_utf8_errors_show_the_value() {
        let props = Properties::collect([("v", Some(&b"2\x1b"[..]))], KEYS);
        let err = props.check_version().unwrap_err().to_string();
        assert_eq!(
            err,
            "TXT v=\"2\\u{1b}\": unsupported version (this cfi reads and writes v=1)"
        );
        let props = Properties::collect([("group", Some(&b"l\xffb"[..]))], KEYS);
        let err = props.text(TXT_GROUP).unwrap_err().to_string();
        assert_eq!(err, "TXT group=\"l\u{fffd}b\" is not UTF-8");
    }

    #[test]
    fn builder_refuses_properties_over_255_bytes() {
        let mut builder = Builder::new();
        builder.push(TXT_GROUP, "a".repeat(249)).unwrap();
        let err = builder.push(TXT_GROUP, "a".repeat(250)).unwrap_err();
        assert_eq!(
            err,
            RecordError::TooLong {
                key: TXT_GROUP,
                len: 256
            }
        );
        assert!(err.to_string().contains("RFC 6763"), "{err}");
        let built = builder.build();
        assert_eq!(built[0], ("v".to_owned(), "1".to_owned()));
        assert_eq!(built.len(), 2);
    }
}
