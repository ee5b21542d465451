//! What labs of killed test processes leave behind, and its removal. A
//! [`crate::lab::Lab`] cleans up on drop, but a process killed outright
//! (SIGKILL, a test harness timeout) never drops it: its containers,
//! network, key dir and multicast rule stay. Every container and network
//! of a lab carries [`OWNER_LABEL`] (this boot's id and the owner's pid),
//! and the next lab to start removes those whose owner is gone, then the
//! multicast rules of networks that are gone.

use std::path::Path;
use std::{env, fs};

use tracing::warn;

use crate::docker;

/// Label naming the process that owns a lab's containers and network.
pub const OWNER_LABEL: &str = "cfi-lab.owner";

/// `<boot id>/<pid>`: whose lab this is, the value of [`OWNER_LABEL`].
pub fn owner_label() -> String {
    format!("{}/{}", boot_id(), std::process::id())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Whether the process named by an owner label still runs. A label from an
/// earlier boot names a dead process, whatever its pid.
fn owner_alive(label: &str, boot_id: &str) -> bool {
    match label.split_once('/') {
        Some((boot, pid)) if boot == boot_id => process_alive(pid),
        Some(_) => false,
        // Not a label of ours: leave it alone.
        None => true,
    }
}

/// Whether `/proc/<pid>` is a process that has not exited: a killed test
/// stays a zombie until its parent reaps it, and that parent may be slow.
fn process_alive(pid: &str) -> bool {
    let Ok(stat) = fs::read_to_string(Path::new("/proc").join(pid).join("stat")) else {
        return false;
    };
    // `pid (comm) state …`; comm may hold anything, so look past its last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Removes containers and networks of labs whose process is gone (killed
/// before its `Drop` ran). Best effort: a failure is logged, never fatal.
pub fn remove() {
    let boot = boot_id();
    let stale = |kind: &[&str], name: &str| -> Vec<String> {
        let format = format!("{{{{.{name}}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
        let filter = format!("label={OWNER_LABEL}");
        let mut args = kind.to_vec();
        args.extend(["--filter", &filter]);
        args.extend(["--format", &format]);
        match docker::stdout(&args) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.split_once(' '))
                .filter(|(_, owner)| !owner_alive(owner, &boot))
                .map(|(name, _)| name.to_owned())
                .collect(),
            Err(e) => {
                warn!(cause = %format!("{e:#}"), "failed to list old lab leftovers");
                Vec::new()
            }
        }
    };
    let containers = stale(&["ps", "--all"], "Names");
    if !containers.is_empty() {
        warn!(
            ?containers,
            "removing clients of labs whose process is gone"
        );
        let mut args = vec!["rm", "--force", "--volumes"];
        args.extend(containers.iter().map(String::as_str));
        if let Err(e) = docker::run(&args) {
            warn!(cause = %format!("{e:#}"), "failed to remove old lab clients");
        }
    }
    for network in stale(&["network", "ls"], "Name") {
        warn!(
            network,
            "removing the network of a lab whose process is gone"
        );
        if let Err(e) = docker::run(&["network", "rm", &network]) {
            warn!(network, cause = %format!("{e:#}"), "failed to remove an old lab network");
        }
        remove_key_dirs(&network);
    }
    crate::bridge::remove_stale_multicast_rules();
}

/// Removes the key dirs (`<network>-keys-*` in the temp dir) and disk dirs
/// (unmounting the disk first) of a lab whose process is gone.
fn remove_key_dirs(network: &str) {
    let keys = format!("{network}-keys-");
    let disk = format!("{network}{}", crate::lab_disk::DIR_INFIX);
    let Ok(entries) = fs::read_dir(env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&disk) {
            crate::lab_disk::unmount(&entry.path());
        } else if !name.starts_with(&keys) {
            continue;
        }
        if let Err(e) = fs::remove_dir_all(entry.path()) {
            warn!(dir = %entry.path().display(), cause = %e, "failed to remove an old lab dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners() {
        let me = format!("b/{}", std::process::id());
        assert!(owner_alive(&me, "b"));
        assert!(!owner_alive(&me, "another boot"));
        assert!(!owner_alive("b/999999999", "b"));
        assert!(owner_alive("", "b"));
    }
}
