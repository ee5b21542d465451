//! What this machine has, as a package run needs it: the installed
//! packages and apt's auto marks, the native architecture, the running
//! kernel, the names apt can install; and the inventory a report carries.

use std::collections::HashSet;

use crate::apt;
use crate::dpkg::{self, DpkgPackage};
use crate::plan::System;
use crate::report::{Installed, Inventory};
use crate::tool::{Log, tool};

/// apt's record of auto marks.
pub const EXTENDED_STATES: &str = "/var/lib/apt/extended_states";

/// The installed packages with their marks, and what has a newer
/// candidate (apt's simulation of a full upgrade).
pub fn inventory() -> Result<Inventory, String> {
    let sys = Machine::read()?;
    let installed = sys
        .installed
        .iter()
        .map(|p| Installed {
            name: p.name.clone(),
            arch: p.arch.clone(),
            version: p.version.clone(),
            auto: dpkg::is_auto(&sys.auto, &p.name, &p.arch, &sys.native),
        })
        .collect();
    let out = tool(
        "apt-get",
        &["-s", "-q", "dist-upgrade"].map(String::from),
        Log::Quiet,
    )?;
    let upgradable = if out.ok {
        apt::upgradable(&apt::parse_simulation(&out.stdout, &sys.native))
    } else {
        return Err(format!(
            "apt-get -s dist-upgrade failed: {}",
            apt::errors(&out.stderr)
        ));
    };
    Ok(Inventory {
        installed,
        upgradable,
    })
}

/// What the machine has.
pub(crate) struct Machine {
    pub(crate) installed: Vec<DpkgPackage>,
    pub(crate) auto: HashSet<(String, String)>,
    pub(crate) native: String,
    pub(crate) kernel_release: String,
    pub(crate) kernel_image: String,
}

impl Machine {
    pub(crate) fn read() -> Result<Self, String> {
        let native = tool("dpkg", &["--print-architecture".to_owned()], Log::Quiet)?;
        if !native.ok {
            return Err(format!(
                "dpkg --print-architecture failed: {}",
                native.stderr.trim()
            ));
        }
        let native = native.stdout.trim().to_owned();
        let query = tool(
            "dpkg-query",
            &[
                "-W".to_owned(),
                "-f".to_owned(),
                dpkg::QUERY_FORMAT.to_owned(),
            ],
            Log::Quiet,
        )?;
        if !query.ok {
            return Err(format!("dpkg-query failed: {}", query.stderr.trim()));
        }
        let states = match std::fs::read_to_string(EXTENDED_STATES) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {EXTENDED_STATES}: {e}")),
        };
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Ok(Self {
            installed: dpkg::parse_query(&query.stdout),
            auto: dpkg::parse_extended_states(&states, &native),
            kernel_image: cfi_groups::pkglist::resolve_current_kernel(&kernel_release),
            kernel_release,
            native,
        })
    }

    pub(crate) fn system<'a>(&'a self, available: &'a [String]) -> System<'a> {
        System {
            installed: &self.installed,
            auto: &self.auto,
            native: &self.native,
            available,
            kernel_image: &self.kernel_image,
        }
    }
}

/// The names apt can install.
pub(crate) fn available_names() -> Result<Vec<String>, String> {
    let out = tool("apt-cache", &["pkgnames".to_owned()], Log::Quiet)?;
    if !out.ok {
        return Err(format!(
            "apt-cache pkgnames failed: {}",
            apt::errors(&out.stderr)
        ));
    }
    let mut names: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    names.sort();
    Ok(names)
}
