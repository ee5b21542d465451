//! One line of a pkgsync list: a package name or glob, an optional
//! `:arch` qualifier, or `meta:current-kernel`.
//!
//! Names follow Debian policy 5.6.1 (`[a-z0-9][a-z0-9+.-]+`), architectures
//! dpkg's `[a-z0-9-]+`; a glob may hold only those characters besides its
//! own, so a pattern that can never match a package is refused here instead
//! of silently matching nothing on every machine.

use std::fmt;

use super::glob::{self, Glob};
use crate::relpath::escape;

/// What an entry names, package-wise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// One package name, valid by policy 5.6.1.
    Name(String),
    /// A glob over package names.
    Glob(Glob),
    /// `meta:current-kernel`: the image package of the running kernel. It
    /// matches nothing until resolved
    /// ([`PkgLists::resolve_kernel`](super::PkgLists::resolve_kernel)), since
    /// only the client knows its `uname -r`.
    CurrentKernel,
}

impl Pattern {
    const CURRENT_KERNEL: &'static str = "meta:current-kernel";

    /// Whether the pattern matches package `name` (any architecture).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Glob(g) => g.matches(name),
            Self::CurrentKernel => false,
        }
    }

    /// The name, when the pattern is one literal package name.
    pub fn literal(&self) -> Option<&str> {
        match self {
            Self::Name(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Name(n) => n,
            Self::Glob(g) => g.as_str(),
            Self::CurrentKernel => Self::CURRENT_KERNEL,
        })
    }
}

/// An `:arch` qualifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchPattern {
    /// `:any`: every architecture, like no qualifier.
    Any,
    /// One architecture name (`i386`, `all`).
    Name(String),
    /// A glob over architecture names (`arm*`).
    Glob(Glob),
}

impl ArchPattern {
    /// Whether the qualifier covers architecture `arch`.
    pub fn matches(&self, arch: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Name(n) => n == arch,
            Self::Glob(g) => g.matches(arch),
        }
    }
}

impl fmt::Display for ArchPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Any => "any",
            Self::Name(n) => n,
            Self::Glob(g) => g.as_str(),
        })
    }
}

/// One line of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The package name or names.
    pub pattern: Pattern,
    /// The architecture qualifier; none covers every architecture.
    pub arch: Option<ArchPattern>,
    /// The 1-based line it was read from (the first, if repeated).
    pub line: usize,
}

/// Why a text is not a list entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown}: {reason}")]
pub struct InvalidEntry {
    /// The text, quoted, escaped and truncated for a terminal.
    pub shown: String,
    /// What rule it breaks.
    pub reason: String,
}

impl Entry {
    /// Parses one entry (comment stripped, trimmed), as read from `line`.
    pub fn parse(text: &str, line: usize) -> Result<Self, InvalidEntry> {
        let fail = |reason: String| InvalidEntry {
            shown: quote(text.as_bytes()),
            reason,
        };
        if text.is_empty() {
            return Err(fail("an empty entry".to_owned()));
        }
        if text.contains([' ', '\t']) {
            return Err(fail(
                "not a package name (a space inside; one package a line)".to_owned(),
            ));
        }
        if !text.is_ascii() {
            return Err(fail(
                "not a package name (a non-ASCII character)".to_owned(),
            ));
        }
        if let Some(rest) = text.strip_prefix("meta:") {
            return match rest.split_once(':') {
                None if text == Pattern::CURRENT_KERNEL => Ok(Self {
                    pattern: Pattern::CurrentKernel,
                    arch: None,
                    line,
                }),
                Some(("current-kernel", _)) => Err(fail(
                    "meta:current-kernel takes no architecture qualifier".to_owned(),
                )),
                _ => Err(fail(
                    "unknown meta pattern (only meta:current-kernel exists)".to_owned(),
                )),
            };
        }
        if text.starts_with("debtags:") {
            return Err(fail("debtags patterns are not supported".to_owned()));
        }
        let (name, arch) = match text.split_once(':') {
            None => (text, None),
            Some((_, arch)) if arch.contains(':') => {
                return Err(fail("more than one ':' (name:arch)".to_owned()));
            }
            Some((name, arch)) => (name, Some(arch)),
        };
        let pattern = parse_name(name).map_err(fail)?;
        let arch = arch.map(parse_arch).transpose().map_err(fail)?;
        Ok(Self {
            pattern,
            arch,
            line,
        })
    }

    /// Whether the entry covers the installed package `name` of
    /// architecture `arch` (as dpkg reports it: `amd64`, `all`).
    pub fn matches(&self, name: &str, arch: &str) -> bool {
        self.pattern.matches(name) && self.arch.as_ref().is_none_or(|a| a.matches(arch))
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.arch {
            None => write!(f, "{}", self.pattern),
            Some(arch) => write!(f, "{}:{arch}", self.pattern),
        }
    }
}

fn name_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b)
}

fn arch_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

/// A package name or glob: policy 5.6.1's `[a-z0-9][a-z0-9+.-]+`, where a
/// glob may stand for any of its characters.
fn parse_name(name: &str) -> Result<Pattern, String> {
    if name.is_empty() {
        return Err("no package name before ':'".to_owned());
    }
    let not_name = |why: String| format!("not a package name ({why})");
    let start_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if glob::is_glob(name) {
        let g = Glob::compile(name, name_char).map_err(not_name)?;
        if g.starts_with_literal(start_ok) {
            return Err(not_name("it must start with a-z or 0-9".to_owned()));
        }
        return Ok(Pattern::Glob(g));
    }
    if let Some(b) = name.bytes().find(|&b| !name_char(b)) {
        return Err(not_name(glob::bad_char(b)));
    }
    if !name.bytes().next().is_some_and(start_ok) {
        return Err(not_name("it must start with a-z or 0-9".to_owned()));
    }
    if name.len() < 2 {
        return Err(not_name("at least two characters, policy 5.6.1".to_owned()));
    }
    Ok(Pattern::Name(name.to_owned()))
}

/// An architecture qualifier: `[a-z0-9-]+` as dpkg's names, or a glob.
fn parse_arch(arch: &str) -> Result<ArchPattern, String> {
    let not_arch = |why: String| format!("not an architecture name ({why})");
    match arch {
        "" => Err("no architecture after ':'".to_owned()),
        "any" => Ok(ArchPattern::Any),
        "native" => Err(
            "':native' is not supported: name the architecture, or leave the qualifier \
             off to cover every architecture"
                .to_owned(),
        ),
        _ if glob::is_glob(arch) => Glob::compile(arch, arch_char)
            .map(ArchPattern::Glob)
            .map_err(not_arch),
        _ => match arch.bytes().find(|&b| !arch_char(b)) {
            Some(b) => Err(not_arch(glob::bad_char(b))),
            None => Ok(ArchPattern::Name(arch.to_owned())),
        },
    }
}

/// Quotes and escapes `bytes` for a message, cut to a readable length.
pub(super) fn quote(bytes: &[u8]) -> String {
    const MAX_CHARS: usize = 60;
    let escaped = escape(bytes).replace('"', "\\\"");
    match escaped.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("\"{}\"…", &escaped[..cut]),
        None => format!("\"{escaped}\""),
    }
}
