//! The `/var/lib/cfi` layout.
//!
//! ```text
//! /var/lib/cfi/
//!   all/          layer under every group
//!   unknown/      machines with no group, or one the server lacks
//!   <group>/      paths relative to the client's `/`
//!     .cfi*       top-level metadata of the group, never synced
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::name::{GroupName, InvalidGroupName};

/// A data dir holding group trees.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// What went wrong looking at a data dir.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The data dir cannot be listed.
    #[error("failed to list data dir {path}: {cause}")]
    List {
        /// The data dir.
        path: PathBuf,
        /// The cause.
        cause: io::Error,
    },
}

/// One entry of [`DataDir::groups`].
#[derive(Debug)]
pub enum Listed {
    /// A directory with a valid group name.
    Group(GroupName),
    /// A directory whose name breaks the rules: shown, never synced.
    Invalid(PathBuf, InvalidGroupName),
}

impl DataDir {
    /// The packaged default.
    pub const DEFAULT: &'static str = "/var/lib/cfi";

    /// A data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The data dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a group's tree lives.
    pub fn group_dir(&self, group: &GroupName) -> PathBuf {
        self.root.join(group.as_str())
    }

    /// Whether a group has a directory here.
    pub fn has_group(&self, group: &GroupName) -> bool {
        self.group_dir(group).is_dir()
    }

    /// The group a machine asking for `wanted` gets: that group when its
    /// directory exists, `unknown` otherwise (DESIGN.md: unknown or missing
    /// group → `unknown`).
    pub fn resolve(&self, wanted: Option<&GroupName>) -> GroupName {
        match wanted {
            Some(g) if self.has_group(g) => g.clone(),
            _ => GroupName::unknown(),
        }
    }

    /// The layer directories of a group's effective tree, lowest first:
    /// `all/` (if present) and then the group itself. Asking for `all` gives
    /// just `all/`.
    pub fn layers(&self, group: &GroupName) -> Vec<PathBuf> {
        let all = self.root.join(GroupName::ALL);
        let mut layers = Vec::with_capacity(2);
        if group.as_str() != GroupName::ALL && all.is_dir() {
            layers.push(all);
        }
        layers.push(self.group_dir(group));
        layers
    }

    /// Lists the group directories, sorted, reporting badly named ones
    /// rather than hiding them.
    pub fn groups(&self) -> Result<Vec<Listed>, LayoutError> {
        let list_err = |cause| LayoutError::List {
            path: self.root.clone(),
            cause,
        };
        let mut out = Vec::new();
        for dirent in std::fs::read_dir(&self.root).map_err(list_err)? {
            let dirent = dirent.map_err(list_err)?;
            if !dirent.file_type().map_err(list_err)?.is_dir() {
                continue;
            }
            let name = dirent.file_name();
            match name.to_str().map(GroupName::parse) {
                Some(Ok(g)) => out.push(Listed::Group(g)),
                Some(Err(e)) => out.push(Listed::Invalid(dirent.path(), e)),
                None => out.push(Listed::Invalid(
                    dirent.path(),
                    GroupName::parse(&name.to_string_lossy()).unwrap_err(),
                )),
            }
        }
        out.sort_by(|a, b| match (a, b) {
            (Listed::Group(a), Listed::Group(b)) => a.cmp(b),
            (Listed::Group(_), _) => std::cmp::Ordering::Less,
            (_, Listed::Group(_)) => std::cmp::Ordering::Greater,
            (Listed::Invalid(a, _), Listed::Invalid(b, _)) => a.cmp(b),
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_missing_groups_to_unknown() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lab")).unwrap();
        let data = DataDir::new(dir.path());
        let lab = GroupName::parse("lab").unwrap();
        let farm = GroupName::parse("farm").unwrap();
        assert_eq!(data.resolve(Some(&lab)), lab);
        assert_eq!(data.resolve(Some(&farm)).as_str(), "unknown");
        assert_eq!(data.resolve(None).as_str(), "unknown");
    }

    #[test]
    fn layers_put_all_under_the_group() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("all")).unwrap();
        let data = DataDir::new(dir.path());
        let lab = GroupName::parse("lab").unwrap();
        assert_eq!(
            data.layers(&lab),
            vec![dir.path().join("all"), dir.path().join("lab")]
        );
        let all = GroupName::parse("all").unwrap();
        assert_eq!(data.layers(&all), vec![dir.path().join("all")]);
    }

    #[test]
    fn lists_invalid_group_dirs() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["lab", "Bad Name", "all"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("README"), "x").unwrap();
        let listed = DataDir::new(dir.path()).groups().unwrap();
        let names: Vec<String> = listed
            .iter()
            .map(|l| match l {
                Listed::Group(g) => g.to_string(),
                Listed::Invalid(p, _) => format!("!{}", p.file_name().unwrap().to_string_lossy()),
            })
            .collect();
        assert_eq!(names, ["all", "lab", "!Bad Name"]);
    }
}
