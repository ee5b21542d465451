//! From the pkgsync lists and what is installed to the request apt gets,
//! and the safety rails that judge apt's answer.
//!
//! The request is pkgsync's: install what musthave names and lacks,
//! remove what maynothave names, mark everything else automatically
//! installed so apt's autoremoval takes what nothing kept needs. Whether
//! that is safe is decided on apt's simulation of the request
//! ([`check`]), not on the request: the resolver may remove more than was
//! named (a dependency of something removed) or install more (a
//! dependency of something installed).

use std::collections::HashSet;

use cfi_groups::pkglist::{ArchPattern, Class, Pattern, PkgLists};

use crate::dpkg::{DpkgPackage, is_auto};
use crate::report::{Kept, Marks, Plan};

/// Names the rails keep besides Essential and Priority: required ones.
/// openssh-server: the server reaches the machine through it, a pool
/// without it is lost. cfi-client: cfi itself.
pub const PROTECTED_NAMES: [&str; 2] = ["openssh-server", "cfi-client"];

/// Why a package may never be removed, if it may not.
pub fn protection(pkg: &DpkgPackage, kernel_image: &str) -> Option<String> {
    if pkg.essential {
        Some("Essential: yes".to_owned())
    } else if pkg.priority == "required" {
        Some("Priority: required".to_owned())
    } else if pkg.name == kernel_image {
        Some("the running kernel's image".to_owned())
    } else if PROTECTED_NAMES.contains(&pkg.name.as_str()) {
        Some(format!(
            "{} is protected: cfi reaches this machine through it",
            pkg.name
        ))
    } else {
        None
    }
}

/// What apt is asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wish {
    /// `apt-get install` arguments to install.
    pub install: Vec<String>,
    /// Arguments to remove (without apt's `-` suffix).
    pub remove: Vec<String>,
    /// apt-mark changes made first.
    pub marks: Marks,
    /// What maynothave named that the rails keep.
    pub kept: Vec<Kept>,
    /// Whether apt autoremoves (not with keep-unused).
    pub autoremove: bool,
}

impl Wish {
    /// The package arguments of `apt-get install`: `name` to install,
    /// `name-` to remove.
    pub fn apt_args(&self) -> Vec<String> {
        let mut args = self.install.clone();
        args.extend(self.remove.iter().map(|r| format!("{r}-")));
        args
    }

    /// Drops `names` (apt does not know them) from the request.
    pub fn drop_names(&mut self, names: &[String]) {
        self.install.retain(|n| !names.contains(n));
        self.remove.retain(|n| !names.contains(n));
    }
}

/// What the machine has, as the plan needs it.
#[derive(Debug, Clone, Copy)]
pub struct System<'a> {
    /// The installed packages.
    pub installed: &'a [DpkgPackage],
    /// apt's auto marks.
    pub auto: &'a HashSet<(String, String)>,
    /// dpkg's native architecture.
    pub native: &'a str,
    /// The names apt can install (`apt-cache pkgnames`), to expand the
    /// globs of musthave.
    pub available: &'a [String],
    /// The running kernel's image package.
    pub kernel_image: &'a str,
}

/// pkgsync's request for `lists` on `sys`.
pub fn converge(lists: &PkgLists, sys: System<'_>, keep_unused: bool) -> Wish {
    let mut wish = Wish {
        autoremove: !keep_unused,
        ..Wish::default()
    };
    let mut wanted = HashSet::new();
    for entry in &lists.must.entries {
        let names: Vec<&str> = match &entry.pattern {
            Pattern::Name(n) => vec![n],
            // pkgsync un-globs a musthave pattern against what apt knows,
            // so `fonts-*` installs every font package.
            Pattern::Glob(g) => sys
                .available
                .iter()
                .map(String::as_str)
                .filter(|n| g.matches(n))
                .collect(),
            // Resolved by the caller; unresolved it names nothing.
            Pattern::CurrentKernel => Vec::new(),
        };
        let arch = match &entry.arch {
            Some(ArchPattern::Name(a)) => Some(a.as_str()),
            _ => None,
        };
        for name in names {
            let installed = sys
                .installed
                .iter()
                .any(|p| p.name == name && entry.matches(&p.name, &p.arch));
            let decided = lists.classify(name, arch.unwrap_or(sys.native));
            if installed || decided != Class::Must {
                continue;
            }
            let arg = match arch {
                Some(a) => format!("{name}:{a}"),
                None => name.to_owned(),
            };
            if wanted.insert(arg.clone()) {
                wish.install.push(arg);
            }
        }
    }
    for pkg in sys.installed {
        let auto = is_auto(sys.auto, &pkg.name, &pkg.arch, sys.native);
        let arg = apt_name(&pkg.name, &pkg.arch, sys.native);
        let protected = protection(pkg, sys.kernel_image);
        match lists.classify(&pkg.name, &pkg.arch) {
            Class::Must | Class::May if auto => wish.marks.manual.push(arg),
            Class::Must | Class::May => {}
            Class::MayNot => match protected {
                Some(reason) => wish.kept.push(Kept { name: arg, reason }),
                None => wish.remove.push(arg),
            },
            Class::Unlisted if !keep_unused && !auto && protected.is_none() => {
                wish.marks.auto.push(arg);
            }
            Class::Unlisted => {}
        }
    }
    wish
}

/// How apt names an installed instance: bare for the native architecture
/// and `all`, qualified otherwise.
pub fn apt_name(name: &str, arch: &str, native: &str) -> String {
    if arch == native || arch == "all" {
        name.to_owned()
    } else {
        format!("{name}:{arch}")
    }
}

/// The rails, on apt's simulation of the request: a plan that removes a
/// protected package is refused outright; one that removes more than
/// `max_removals` is refused unless `force`.
pub fn check(
    plan: &Plan,
    installed: &[DpkgPackage],
    kernel_image: &str,
    max_removals: usize,
    force: bool,
) -> Result<(), String> {
    let protected: Vec<String> = plan
        .remove
        .iter()
        .filter_map(|r| {
            let pkg = installed
                .iter()
                .find(|p| p.name == r.name && (p.arch == r.arch || p.arch == "all"))?;
            protection(pkg, kernel_image).map(|why| format!("{} ({why})", r.name))
        })
        .collect();
    if !protected.is_empty() {
        return Err(format!(
            "apt would remove protected packages: {}; cfi never does (see what depends on them)",
            protected.join(", ")
        ));
    }
    let n = plan.remove.len();
    if n > max_removals && !force {
        let mut names: Vec<&str> = plan.remove.iter().map(|r| r.name.as_str()).collect();
        let more = names.len().saturating_sub(20);
        names.truncate(20);
        let more = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        return Err(format!(
            "apt would remove {n} packages, more than max_removals = {max_removals}: {}{more}; \
             check musthave and mayhave, or run again with --force",
            names.join(" ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
