//! What a package run on one client did, as the agent prints it (one JSON
//! object on stdout) and the server stores and shows it.

use serde::{Deserialize, Serialize};

/// One run of `cfi-agent pkgs …` on one client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PkgReport {
    /// The verb: plan, sync, install, remove, refresh.
    pub action: String,
    /// Whether apt really ran (false for a plan, a refusal or an error
    /// before apt changed anything).
    pub applied: bool,
    /// What apt did, or in a plan would do: its own simulation.
    pub plan: Plan,
    /// Marks set before apt ran (or, in a plan, that would be set).
    pub marks: Marks,
    /// Names the lists or the command asked for that apt does not know or
    /// cannot install; the rest of the run went on without them.
    pub unknown: Vec<String>,
    /// Packages a list or the command would have removed that the safety
    /// rails kept, with why.
    pub kept: Vec<Kept>,
    /// Why the plan was not carried out (a safety rail, the removal
    /// budget); nothing was changed.
    pub refused: Option<String>,
    /// Why the run failed (apt's own error, the lock, a bad list).
    pub error: Option<String>,
    /// Notes worth showing (a list conflict, `pkgs install` of a package
    /// the next `pkgs sync` would remove).
    pub warnings: Vec<String>,
    /// The installed and upgradable packages after the run.
    pub inventory: Option<Inventory>,
}

impl PkgReport {
    /// Neither refused nor failed, and every asked-for name was known.
    pub fn ok(&self) -> bool {
        self.refused.is_none() && self.error.is_none() && self.unknown.is_empty()
    }

    /// A few words for a table: what changed or why nothing did.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("error: {e}");
        }
        if let Some(r) = &self.refused {
            return format!("refused: {r}");
        }
        let p = &self.plan;
        let verb = if self.applied { "" } else { "would " };
        let mut parts = Vec::new();
        for (n, what) in [
            (p.install.len(), "install"),
            (p.upgrade.len(), "upgrade"),
            (p.remove.len(), "remove"),
        ] {
            if n > 0 {
                parts.push(format!("{verb}{what} {n}"));
            }
        }
        if parts.is_empty() {
            parts.push("nothing to do".to_owned());
        }
        if !self.unknown.is_empty() {
            parts.push(format!("unknown: {}", self.unknown.join(" ")));
        }
        parts.join(", ")
    }
}

/// apt's actions, from its simulation (`Inst`, `Remv`, `Purg` lines).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    /// Packages newly installed.
    pub install: Vec<PkgChange>,
    /// Installed packages moving to another version.
    pub upgrade: Vec<PkgChange>,
    /// Packages removed (or purged).
    pub remove: Vec<PkgChange>,
}

impl Plan {
    /// Whether apt has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.install.is_empty() && self.upgrade.is_empty() && self.remove.is_empty()
    }
}

/// One package apt acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct PkgChange {
    /// The package name.
    pub name: String,
    /// Its architecture.
    pub arch: String,
    /// The installed version, if any.
    pub from: Option<String>,
    /// The version apt installs, if any.
    pub to: Option<String>,
}

/// apt-mark changes: which installed packages apt may autoremove.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Marks {
    /// Marked automatically installed: in no list, so autoremoved unless a
    /// kept package needs them.
    pub auto: Vec<String>,
    /// Marked manually installed: in musthave or mayhave.
    pub manual: Vec<String>,
}

/// A package the safety rails kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Kept {
    /// The package.
    pub name: String,
    /// Why it may not go.
    pub reason: String,
}

/// A client's packages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    /// Installed packages, by name then architecture.
    pub installed: Vec<Installed>,
    /// Installed packages with a newer candidate.
    pub upgradable: Vec<Upgradable>,
}

/// One installed package.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Installed {
    /// The package name.
    pub name: String,
    /// Its architecture.
    pub arch: String,
    /// The installed version.
    pub version: String,
    /// Automatically installed (apt may autoremove it).
    pub auto: bool,
}

/// One package with a newer candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Upgradable {
    /// The package name.
    pub name: String,
    /// Its architecture.
    pub arch: String,
    /// The installed version.
    pub current: String,
    /// The candidate.
    pub candidate: String,
}
