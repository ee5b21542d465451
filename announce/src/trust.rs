//! The client's trust policy, as its `trust` and `server_fingerprint`
//! settings give it.
//!
//! Whoever's key is in root's `authorized_keys` is root on the client, and
//! anyone on the LAN can announce a cfi server, so the announcer does not
//! install whatever it sees (DESIGN.md "Trust"). The admin picks one of
//! three policies; [`decide`](crate::decide) applies it.

use std::fmt;

use crate::key::{InvalidFingerprint, parse_fingerprint};
use crate::shown::shown;

/// Which server keys a client accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Trust {
    /// `"first-use"`, the default: pin the only key announced at first
    /// use, then follow it only through rotations it signed. Two different
    /// keys at first use install neither.
    #[default]
    FirstUse,
    /// `"pinned"`: only the key with this `server_fingerprint`, ever.
    Pinned(String),
    /// `"any"`: whatever key is announced, as long as only one is; anyone on
    /// the LAN can then root the client, so every install says so loudly.
    Any,
}

/// Why the client's `trust` and `server_fingerprint` settings do not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A `trust` value that is not one of the three.
    #[error("invalid trust {shown}: expected \"first-use\", \"pinned\" or \"any\"")]
    Unknown {
        /// The value, quoted, escaped and cut short.
        shown: String,
    },
    /// `trust = "pinned"` without a fingerprint to pin.
    #[error(
        "trust = \"pinned\" needs server_fingerprint = \"SHA256:…\" \
         (what ssh-keygen -lf prints for the server's public key)"
    )]
    MissingFingerprint,
    /// `server_fingerprint` is not a fingerprint.
    #[error("invalid server_fingerprint: {cause}")]
    Fingerprint {
        /// Why it is not.
        cause: InvalidFingerprint,
    },
    /// A fingerprint with a policy that would not use it; refused rather
    /// than ignored, since whoever set it expected it to count.
    #[error("server_fingerprint is only used with trust = \"pinned\" (trust is \"{trust}\")")]
    UnusedFingerprint {
        /// The policy given.
        trust: &'static str,
    },
}

impl Trust {
    /// The policy from the client's `trust` setting (`"first-use"`,
    /// `"pinned"` or `"any"`) and its `server_fingerprint`.
    pub fn from_config(trust: &str, server_fingerprint: Option<&str>) -> Result<Self, TrustError> {
        let policy = match trust {
            "first-use" => Self::FirstUse,
            "pinned" => {
                let fingerprint = server_fingerprint.ok_or(TrustError::MissingFingerprint)?;
                let fingerprint = parse_fingerprint(fingerprint)
                    .map_err(|cause| TrustError::Fingerprint { cause })?;
                return Ok(Self::Pinned(fingerprint));
            }
            "any" => Self::Any,
            _ => {
                return Err(TrustError::Unknown {
                    shown: shown(trust),
                });
            }
        };
        match server_fingerprint {
            Some(_) => Err(TrustError::UnusedFingerprint {
                trust: policy.as_str(),
            }),
            None => Ok(policy),
        }
    }

    /// The setting's value for this policy.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::FirstUse => "first-use",
            Self::Pinned(_) => "pinned",
            Self::Any => "any",
        }
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::FINGERPRINT;

    #[test]
    fn the_three_policies_parse() {
        assert_eq!(Trust::from_config("first-use", None), Ok(Trust::FirstUse));
        assert_eq!(Trust::from_config("any", None), Ok(Trust::Any));
        assert_eq!(
            Trust::from_config("pinned", Some(FINGERPRINT)),
            Ok(Trust::Pinned(FINGERPRINT.to_owned()))
        );
        assert_eq!(Trust::default(), Trust::FirstUse);
        for trust in [Trust::FirstUse, Trust::Any] {
            assert_eq!(Trust::from_config(trust.as_str(), None), Ok(trust));
        }
    }

    #[test]
    fn pinned_needs_a_valid_fingerprint() {
        let err = Trust::from_config("pinned", None).unwrap_err();
        assert!(err.to_string().contains("server_fingerprint"), "{err}");
        let err = Trust::from_config("pinned", Some("MD5:aa:bb")).unwrap_err();
        assert!(
            err.to_string().starts_with("invalid server_fingerprint: "),
            "{err}"
        );
        let err = Trust::from_config("pinned", Some("")).unwrap_err();
        assert!(matches!(err, TrustError::Fingerprint { .. }), "{err}");
    }

    #[test]
    fn a_fingerprint_without_pinned_is_refused() {
        for trust in ["first-use", "any"] {
            let err = Trust::from_config(trust, Some(FINGERPRINT)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "server_fingerprint is only used with trust = \"pinned\" (trust is \"{trust}\")"
                )
            );
        }
    }

    #[test]
    fn unknown_policies_list_the_three() {
        for bad in ["", "Pinned", "first_use", "tofu", "any\n"] {
            let err = Trust::from_config(bad, None).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("\"first-use\", \"pinned\" or \"any\""),
                "{text}"
            );
            assert!(!text.contains('\n'), "{text}");
        }
    }
}
