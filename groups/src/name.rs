//! Group names: `[a-z0-9][a-z0-9._-]{0,62}`, never `.` or `..`.
//!
//! A group name becomes a directory name on the server and travels in mDNS
//! TXT records, so anything read from the network or the disk goes through
//! [`GroupName::parse`] before it is used.

use std::fmt;
use std::str::FromStr;

/// A validated group name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

/// Why a string is not a group name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid group name {shown}: {reason}")]
pub struct InvalidGroupName {
    /// The rejected input, quoted and escaped so control bytes cannot reach a terminal.
    pub shown: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

impl GroupName {
    /// The group a machine gets when it names none or one the server lacks.
    pub const UNKNOWN: &'static str = "unknown";
    /// The layer every group is overlaid on.
    pub const ALL: &'static str = "all";
    const MAX_LEN: usize = 63;

    /// Checks `raw` against the naming rule.
    pub fn parse(raw: &str) -> Result<Self, InvalidGroupName> {
        let fail = |reason| InvalidGroupName {
            shown: format!("{raw:?}"),
            reason,
        };
        if raw.is_empty() {
            return Err(fail("it is empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(fail("it is longer than 63 characters"));
        }
        if raw == "." || raw == ".." {
            return Err(fail("it names a directory link"));
        }
        let mut bytes = raw.bytes();
        let first = bytes.next().unwrap_or_default();
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return Err(fail("it must start with a-z or 0-9"));
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)) {
            return Err(fail("only a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The fallback group.
    pub fn unknown() -> Self {
        Self(Self::UNKNOWN.to_owned())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for GroupName {
    type Err = InvalidGroupName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for GroupName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in [
            "a",
            "lab",
            "lab-2",
            "render.farm",
            "x_y",
            "0",
            &"a".repeat(63),
        ] {
            assert_eq!(GroupName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_invalid_names_with_a_reason() {
        for bad in [
            "",
            ".",
            "..",
            "-lab",
            ".lab",
            "_x",
            "Lab",
            "la b",
            "lab/x",
            "../etc",
            "lab\n",
            "läb",
            &"a".repeat(64),
        ] {
            let err = GroupName::parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid group name"), "{err}");
        }
    }

    #[test]
    fn error_escapes_control_bytes() {
        let err = GroupName::parse("a\x1b[31m").unwrap_err();
        assert!(!err.to_string().contains('\x1b'));
    }
}
