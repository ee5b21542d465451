//! The three lists together: which one decides for an installed package,
//! and which literal names contradict each other. The rule is the one in
//! the [module documentation](super#precedence).

use std::fmt;
use std::path::Path;

use super::{ArchPattern, Entry, LineError, ListKind, PkgList, PkgListError, read_list};

/// Which list covers an installed package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Must be installed.
    Must,
    /// May stay installed.
    May,
    /// Must be removed.
    MayNot,
    /// In no list: autoremoved unless something needed depends on it.
    Unlisted,
}

/// A literal name in maynothave and in musthave or mayhave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The package name.
    pub name: String,
    /// musthave or mayhave, and its line.
    pub keep: (ListKind, usize),
    /// The line of maynothave.
    pub maynot_line: usize,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, line) = self.keep;
        let winner = match kind {
            ListKind::MustHave => "musthave wins",
            _ => "maynothave wins",
        };
        let (name, maynot) = (&self.name, self.maynot_line);
        write!(
            f,
            "{name} is in {kind} (line {line}) and in maynothave (line {maynot}); {winner}"
        )
    }
}

/// The three lists of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkgLists {
    /// `musthave`.
    pub must: PkgList,
    /// `mayhave`.
    pub may: PkgList,
    /// `maynothave`.
    pub maynot: PkgList,
}

impl PkgLists {
    /// Where the lists live, relative to a tree's root.
    pub const DIR: &'static str = "etc/pkgsync";

    /// Reads the three lists in `dir` (`/etc/pkgsync` on a client,
    /// `<tree>/`[`DIR`](Self::DIR) on the server). `None` when none of them
    /// exists: that tree does not manage packages. Some but not all is an
    /// error, as in pkgsync. Bad lines of all three files come in one error.
    pub fn load(dir: &Path) -> Result<Option<Self>, PkgListError> {
        let read = |kind: ListKind| {
            let path = dir.join(kind.file_name());
            read_list(&path).map(|text| (kind, path, text))
        };
        let texts = [
            read(ListKind::MustHave)?,
            read(ListKind::MayHave)?,
            read(ListKind::MayNotHave)?,
        ];
        let missing: Vec<ListKind> = texts
            .iter()
            .filter(|(_, _, text)| text.is_none())
            .map(|&(kind, _, _)| kind)
            .collect();
        match missing.len() {
            0 => {}
            3 => return Ok(None),
            _ => {
                return Err(PkgListError::Incomplete {
                    dir: dir.to_path_buf(),
                    missing,
                });
            }
        }
        let parsed = texts.map(|(kind, path, text)| {
            PkgList::parse(kind, &path, text.as_deref().unwrap_or_default())
        });
        let bad: Vec<LineError> = parsed
            .iter()
            .filter_map(|r| match r {
                Err(PkgListError::Invalid { lines }) => Some(lines.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        if !bad.is_empty() {
            return Err(PkgListError::Invalid { lines: bad });
        }
        let [must, may, maynot] = parsed;
        Ok(Some(Self {
            must: must?,
            may: may?,
            maynot: maynot?,
        }))
    }

    /// Replaces `meta:current-kernel` in every list with the image package
    /// of kernel `release` (`uname -r`), see
    /// [`resolve_current_kernel`](super::resolve_current_kernel).
    pub fn resolve_kernel(&mut self, release: &str) {
        for list in [&mut self.must, &mut self.may, &mut self.maynot] {
            list.resolve_kernel(release);
        }
    }

    /// The entry that decides what happens to installed package `name` of
    /// architecture `arch`, and its list; `None` if no list covers it. The
    /// order is the module's precedence rule.
    pub fn decide(&self, name: &str, arch: &str) -> Option<(ListKind, &Entry)> {
        let order = [
            (&self.must, true),
            (&self.maynot, true),
            (&self.may, true),
            (&self.maynot, false),
            (&self.must, false),
            (&self.may, false),
        ];
        order.into_iter().find_map(|(list, literal)| {
            list.entries
                .iter()
                .find(|e| e.pattern.literal().is_some() == literal && e.matches(name, arch))
                .map(|e| (list.kind, e))
        })
    }

    /// What happens to installed package `name` of architecture `arch`.
    pub fn classify(&self, name: &str, arch: &str) -> Class {
        match self.decide(name, arch) {
            Some((ListKind::MustHave, _)) => Class::Must,
            Some((ListKind::MayHave, _)) => Class::May,
            Some((ListKind::MayNotHave, _)) => Class::MayNot,
            None => Class::Unlisted,
        }
    }

    /// Literal names that maynothave shares with musthave or mayhave on an
    /// architecture both cover. Globs that overlap are not contradictions
    /// (`*` in mayhave, `telnet` in maynothave) and are left to precedence.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut out = Vec::new();
        for keep in [&self.must, &self.may] {
            for k in &keep.entries {
                let Some(name) = k.pattern.literal() else {
                    continue;
                };
                for m in &self.maynot.entries {
                    if m.pattern.literal() == Some(name) && arch_overlap(&k.arch, &m.arch) {
                        out.push(Conflict {
                            name: name.to_owned(),
                            keep: (keep.kind, k.line),
                            maynot_line: m.line,
                        });
                    }
                }
            }
        }
        out
    }
}

/// Whether some architecture satisfies both qualifiers; two globs are
/// assumed to overlap, as reporting too much beats missing a contradiction.
fn arch_overlap(a: &Option<ArchPattern>, b: &Option<ArchPattern>) -> bool {
    match (a, b) {
        (None | Some(ArchPattern::Any), _) | (_, None | Some(ArchPattern::Any)) => true,
        (Some(ArchPattern::Name(x)), Some(other)) | (Some(other), Some(ArchPattern::Name(x))) => {
            other.matches(x)
        }
        (Some(ArchPattern::Glob(_)), Some(ArchPattern::Glob(_))) => true,
    }
}
