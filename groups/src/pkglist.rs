//! The pkgsync package lists of a tree: `etc/pkgsync/{musthave,mayhave,maynothave}`.
//!
//! A group converges its machines' package sets the way Debian's pkgsync
//! does (DESIGN.md, "Packages"): install what `musthave` names, remove what
//! `maynothave` names, let apt autoremove what neither `musthave` nor
//! `mayhave` keeps. This module reads and checks the lists and answers
//! "which list covers this installed package"; planning and applying belong
//! to the agent (issue 5).
//!
//! # Format
//!
//! One entry a line. `#` starts a comment, at the start of a line or after
//! an entry (`vim # editor`); blank lines are skipped; spaces, tabs and a
//! CRLF line end are trimmed. An entry is a package name or a glob over
//! names (`*`, `?`, `[a-z]`, `[!x]`, matched over the whole name as
//! dpkg-query does), with an optional `:arch` qualifier that may be a glob
//! too (`libc6:i386`, `*:i386`, `foo:any`), or `meta:current-kernel`.
//!
//! pkgsync 1.28 itself only skips lines *starting* with `#` and deletes
//! every space and tab, so `vim editor` silently becomes the package
//! `vimeditor`. Here two words on a line are an error, and every line that
//! is not a valid entry is reported with its file and line, all of them at
//! once so the admin fixes the file in one go.
//!
//! # Architectures
//!
//! An entry without a qualifier, or with `:any`, covers the package on every
//! architecture (dpkg-query's rule for patterns): `libc6` in `musthave`
//! keeps `libc6:i386` too. A qualifier is compared with the architecture
//! dpkg reports for the installed instance (`${Architecture}`), so an
//! `Architecture: all` package is `foo:all` or unqualified. `:native` is
//! refused rather than guessed: name the architecture or leave it off.
//!
//! # Precedence
//!
//! pkgsync calls a package in several lists "somewhat undefined". Here
//! ([`PkgLists::classify`]): a literal name beats any glob; among literal
//! names musthave beats maynothave beats mayhave, so maynothave never removes
//! what musthave names literally; among globs maynothave beats musthave beats
//! mayhave (pkgsync's removals come last on aptitude's command line, so they
//! win). A literal name in both maynothave and musthave or mayhave is a
//! contradiction [`PkgLists::conflicts`] reports.

mod entry;
mod glob;
mod lists;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub use entry::{ArchPattern, Entry, InvalidEntry, Pattern};
pub use glob::Glob;
pub use lists::{Class, Conflict, PkgLists};

use crate::manifest::show;
use entry::quote;

/// Which of the three lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `musthave`: installed if missing, never autoremoved.
    MustHave,
    /// `mayhave`: kept if installed, not installed.
    MayHave,
    /// `maynothave`: removed if installed.
    MayNotHave,
}

impl ListKind {
    /// The three, in the order pkgsync documents them.
    pub const ALL: [Self; 3] = [Self::MustHave, Self::MayHave, Self::MayNotHave];

    /// The file name under `etc/pkgsync/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::MustHave => "musthave",
            Self::MayHave => "mayhave",
            Self::MayNotHave => "maynothave",
        }
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

/// One bad line of a list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The list file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The offending text, quoted, escaped and truncated.
    pub shown: String,
    /// What rule it breaks.
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, line) = (show(&self.file), self.line);
        write!(f, "{file}:{line}: {}: {}", self.shown, self.reason)
    }
}

/// Why package lists could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkgListError {
    /// A list file exists but could not be read.
    #[error("failed to read package list {}: {cause}", show(path))]
    Io {
        /// The list file.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
    /// A file far larger than any package list.
    #[error(
        "refusing package list {}: larger than {} bytes",
        show(path),
        MAX_LIST_LEN
    )]
    TooLarge {
        /// The list file.
        path: PathBuf,
    },
    /// Lines that are no valid entry, every one of them, in file order.
    #[error("{}", show_lines(lines))]
    Invalid {
        /// The bad lines.
        lines: Vec<LineError>,
    },
    /// Some of the three lists exist and some do not.
    #[error(
        "package lists in {} lack {}: write all three of musthave, mayhave and maynothave \
         (an empty file is an empty list), as pkgsync requires; a missing list is taken \
         for a mistake, since a lost mayhave would autoremove all it keeps",
        show(dir), missing.iter().map(|k| k.file_name()).collect::<Vec<_>>().join(" and ")
    )]
    Incomplete {
        /// The directory of the lists.
        dir: PathBuf,
        /// The lists that are not there.
        missing: Vec<ListKind>,
    },
}

/// The most bad lines shown: a binary file as a list must not flood the log.
const MAX_SHOWN_ERRORS: usize = 50;

/// No list needs more; a larger file is not a list.
pub const MAX_LIST_LEN: u64 = 16 << 20;

fn show_lines(lines: &[LineError]) -> String {
    let mut out: Vec<String> = lines
        .iter()
        .take(MAX_SHOWN_ERRORS)
        .map(ToString::to_string)
        .collect();
    if let Some(more) = lines.len().checked_sub(MAX_SHOWN_ERRORS).filter(|&n| n > 0) {
        out.push(format!("… and {more} more bad lines"));
    }
    out.join("\n")
}

/// One parsed list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgList {
    /// Which list it is.
    pub kind: ListKind,
    /// Where it was read from, for messages.
    pub file: PathBuf,
    /// The entries in file order, each once (at its first line).
    pub entries: Vec<Entry>,
}

impl PkgList {
    /// Parses the bytes of list `file`. Every bad line is reported, not
    /// just the first. Bytes after `#` are never looked at, so a comment in
    /// Latin-1 is fine; an entry must be UTF-8 (and in fact ASCII).
    pub fn parse(kind: ListKind, file: &Path, text: &[u8]) -> Result<Self, PkgListError> {
        // An editor's UTF-8 byte order mark is not part of the first entry.
        let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(text);
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        let mut lines = Vec::new();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let before_comment = raw.split(|&b| b == b'#').next().unwrap_or_default();
            let bytes = before_comment.trim_ascii();
            if bytes.is_empty() {
                continue;
            }
            let parsed = match std::str::from_utf8(bytes) {
                Ok(text) => Entry::parse(text, line),
                Err(_) => Err(InvalidEntry {
                    shown: quote(bytes),
                    reason: "not UTF-8".to_owned(),
                }),
            };
            match parsed {
                Ok(entry) => {
                    if seen.insert(entry.to_string()) {
                        entries.push(entry);
                    }
                }
                Err(InvalidEntry { shown, reason }) => lines.push(LineError {
                    file: file.to_path_buf(),
                    line,
                    shown,
                    reason,
                }),
            }
        }
        if !lines.is_empty() {
            return Err(PkgListError::Invalid { lines });
        }
        Ok(Self {
            kind,
            file: file.to_path_buf(),
            entries,
        })
    }

    /// Reads and parses list `path`. A missing file is an empty list: on
    /// its own an empty list is harmless. pkgsync itself refuses to run
    /// when one of the three is missing; [`PkgLists::load`] does the same.
    pub fn load(kind: ListKind, path: &Path) -> Result<Self, PkgListError> {
        match read_list(path)? {
            Some(text) => Self::parse(kind, path, &text),
            None => Ok(Self {
                kind,
                file: path.to_path_buf(),
                entries: Vec::new(),
            }),
        }
    }

    /// The first entry that covers `name` on `arch`.
    pub fn find(&self, name: &str, arch: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.matches(name, arch))
    }

    /// Replaces `meta:current-kernel` with the image package of `release`.
    pub fn resolve_kernel(&mut self, release: &str) {
        let name = resolve_current_kernel(release);
        for e in &mut self.entries {
            if e.pattern == Pattern::CurrentKernel {
                e.pattern = Pattern::Name(name.clone());
            }
        }
    }
}

/// Reads a list file, `None` if it does not exist.
fn read_list(path: &Path) -> Result<Option<Vec<u8>>, PkgListError> {
    let io_err = |cause| PkgListError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut text = Vec::new();
    file.take(MAX_LIST_LEN + 1)
        .read_to_end(&mut text)
        .map_err(io_err)?;
    if text.len() as u64 > MAX_LIST_LEN {
        return Err(PkgListError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Some(text))
}

/// The package of the running kernel's image, from `uname -r`'s release:
/// `linux-image-<release>`. (pkgsync asked aptitude for any `*-image-<release>`;
/// on Debian and Ubuntu that is this package.)
pub fn resolve_current_kernel(release: &str) -> String {
    format!("linux-image-{}", release.trim())
}
