//! Paths relative to a root, as raw bytes.
//!
//! Linux file names are bytes, not text: a path in a manifest must survive the
//! trip server → wire → client for any name the kernel allows. A [`RelPath`]
//! is also the guard against escaping the root: it is never absolute, has no
//! empty, `.` or `..` component and no NUL byte, whatever the wire carried.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A validated relative path (`etc/motd`), stored as raw bytes.
///
/// Paths order component by component (`a` < `a/b` < `a.b`), not byte by
/// byte (`a` < `a.b` < `a/b`): sorted, every directory is directly followed
/// by everything below it, which the manifest and the ledger rely on.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct RelPath(#[serde(with = "serde_bytes")] Vec<u8>);

/// Why bytes are not a safe relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsafe path {shown}: {reason}")]
pub struct InvalidPath {
    /// The rejected path, escaped for display.
    pub shown: String,
    /// What rule it breaks.
    pub reason: &'static str,
}

impl RelPath {
    /// Longest path accepted, as Linux's `PATH_MAX`.
    pub const MAX_LEN: usize = 4096;

    /// Validates raw bytes as a relative path below a root.
    pub fn new(bytes: Vec<u8>) -> Result<Self, InvalidPath> {
        check(&bytes)?;
        Ok(Self(bytes))
    }

    /// Checks a path that came through serde, which does not validate so
    /// that the error can name the path (see the `Deserialize` impl).
    pub fn check(&self) -> Result<(), InvalidPath> {
        check(&self.0)
    }

    /// Joins a validated parent with one more validated component.
    pub fn join(&self, name: &[u8]) -> Result<Self, InvalidPath> {
        let mut bytes = Vec::with_capacity(self.0.len() + 1 + name.len());
        bytes.extend_from_slice(&self.0);
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        // The parent is valid already: only the new component and the
        // total length can break a rule.
        if name.contains(&b'/') || bytes.len() > Self::MAX_LEN {
            return Err(check(&bytes).err().unwrap_or(InvalidPath {
                shown: escape(&bytes),
                reason: "a component contains '/'",
            }));
        }
        check(name).map_err(|e| InvalidPath {
            shown: escape(&bytes),
            reason: e.reason,
        })?;
        Ok(Self(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path for use with the file system.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The directory part (`None` for a top-level name).
    pub fn parent(&self) -> Option<&[u8]> {
        let cut = self.0.iter().rposition(|&b| b == b'/')?;
        Some(&self.0[..cut])
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(cut) => &self.0[cut + 1..],
            None => &self.0,
        }
    }

    /// Whether `self` lies strictly below `dir`.
    pub fn is_below(&self, dir: &RelPath) -> bool {
        self.0.len() > dir.0.len() && self.0.starts_with(&dir.0) && self.0[dir.0.len()] == b'/'
    }

    /// Number of components; used to order removals deepest first.
    pub fn depth(&self) -> usize {
        self.0.iter().filter(|&&b| b == b'/').count() + 1
    }
}

fn check(bytes: &[u8]) -> Result<(), InvalidPath> {
    let fail = |reason| InvalidPath {
        shown: escape(bytes),
        reason,
    };
    if bytes.is_empty() {
        return Err(fail("it is empty"));
    }
    if bytes.len() > RelPath::MAX_LEN {
        return Err(fail("it is longer than 4096 bytes"));
    }
    if bytes[0] == b'/' {
        return Err(fail("it is absolute"));
    }
    if bytes.contains(&0) {
        return Err(fail("it contains a NUL byte"));
    }
    // One pass over the bytes, a component ending at each '/' and at the
    // end: every path of every manifest and ledger comes through here.
    let mut start = 0;
    for end in (0..=bytes.len()).filter(|&i| i == bytes.len() || bytes[i] == b'/') {
        match &bytes[start..end] {
            b"" => return Err(fail("it has an empty component")),
            b"." | b".." => return Err(fail("it has a '.' or '..' component")),
            p if p.len() > 255 => return Err(fail("a component is longer than 255 bytes")),
            _ => {}
        }
        start = end + 1;
    }
    Ok(())
}

/// Deserializing does not validate: a binary format like postcard would
/// drop the reason, and a refusal must name the path. Whoever decodes paths
/// from outside calls [`RelPath::check`]: `Manifest::new` for the wire, the
/// ledger loader for the disk.
impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        Ok(RelPath(bytes.into_vec()))
    }
}

impl Ord for RelPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // '/' sorts before every other byte (NUL cannot occur): the same
        // as comparing the component lists.
        let (a, b) = (&self.0, &other.0);
        let same = common_prefix(a, b);
        let key = |b: u8| if b == b'/' { 0 } else { b };
        match (a.get(same), b.get(same)) {
            (Some(&x), Some(&y)) => key(x).cmp(&key(y)),
            (x, y) => x.is_some().cmp(&y.is_some()),
        }
    }
}

/// Length of the common prefix, eight bytes at a time: sorted paths share
/// long prefixes, and this comparison runs millions of times a pass.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n && a[i..i + 8] == b[i..i + 8] {
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

impl PartialOrd for RelPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", escape(&self.0))
    }
}

/// Shows bytes as text: valid UTF-8 printable characters as they are, every
/// other byte as `\xNN`, so a hostile name cannot drive a terminal.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_raw_byte_names() {
        let p = RelPath::new(b"etc/caf\xe9/x".to_vec()).unwrap();
        assert_eq!(p.to_string(), "etc/caf\\xe9/x");
        assert_eq!(p.parent(), Some(&b"etc/caf\xe9"[..]));
        assert_eq!(p.file_name(), b"x");
        assert_eq!(p.depth(), 3);
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/./b",
            b"a/",
            b"a\0b",
        ] {
            assert!(RelPath::new(bad.to_vec()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn orders_children_right_after_their_parent() {
        let mut v: Vec<RelPath> = ["a.b", "a/b", "a", "a-c/d", "a/b/c", "a-c"]
            .iter()
            .map(|p| RelPath::new(p.as_bytes().to_vec()).unwrap())
            .collect();
        v.sort();
        let shown: Vec<String> = v.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown, ["a", "a/b", "a/b/c", "a-c", "a-c/d", "a.b"]);
    }

    #[test]
    fn join_checks_the_new_component() {
        let a = RelPath::new(b"etc".to_vec()).unwrap();
        assert_eq!(a.join(b"motd").unwrap().to_string(), "etc/motd");
        let nul: &[u8] = &[b'a', 0, b'b'];
        let long = [b'x'; 256];
        for bad in [&b".."[..], b".", b"", b"x/y", nul, &long] {
            assert!(a.join(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn below_is_component_wise() {
        let a = RelPath::new(b"a".to_vec()).unwrap();
        assert!(RelPath::new(b"a/b".to_vec()).unwrap().is_below(&a));
        assert!(!RelPath::new(b"ab".to_vec()).unwrap().is_below(&a));
        assert!(!a.is_below(&a));
    }

    #[test]
    fn deserialized_paths_are_checked_on_demand() {
        let r: RelPath = serde_json::from_str(&format!("{:?}", b"../etc".to_vec())).unwrap();
        assert!(r.check().unwrap_err().to_string().contains("'..'"));
    }
}
