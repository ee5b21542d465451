//! Propagation: a change under the data dir syncs the online members of the
//! group it belongs to, within a second of the change.
//!
//! inotify (through notify) reports every path written. Events are
//! collected until the data dir has been quiet for [`QUIET`] (at most
//! [`MAX_WAIT`] after the first), so that an editor's save or an `rsync`
//! into the group becomes one pass, then mapped to groups: a path under
//! `<group>/` is that group's, one under `all/` is every group's, and a
//! directory appearing or leaving at the top changes who is in which group,
//! so it counts for every group too. Paths under a group's top-level
//! `.cfi*` names are metadata, not synced, and ignored. When the kernel's
//! queue overflows or a watch is lost, notify asks for a rescan: every
//! group is synced, and the log says so. A pass reads the whole tree of its
//! group, so an event missed inside a new directory (notify adds the watch
//! a moment after the directory appears) is still picked up by the pass
//! that the directory's own event starts.
//!
//! Each group has at most one propagation pass running; changes during a
//! pass queue exactly one more, which then sees all of them. Passes on one
//! client are serialised by its slot, so a client in a group that changed
//! twice never runs two passes at once.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cfi_groups::{DataDir, GroupName};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::control::ClientState;

/// Quiet time that ends a burst of changes.
const QUIET: Duration = Duration::from_millis(100);

/// The longest a burst is collected before its groups are synced, so that
/// a long copy into a group is propagated as it goes.
const MAX_WAIT: Duration = Duration::from_millis(500);

/// How often a data dir that cannot be watched is tried again.
const RETRY: Duration = Duration::from_secs(10);

/// What a changed path means for the groups.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Every group: `all/`, or membership may have changed.
    All,
    /// One group.
    Group(GroupName),
    /// Nothing to sync: metadata, or outside any group.
    Nothing,
}

/// The scope of a change at `path` under `data_dir`.
pub fn scope(data_dir: &Path, path: &Path) -> Scope {
    let Ok(rel) = path.strip_prefix(data_dir) else {
        return Scope::Nothing;
    };
    let mut parts = rel.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n),
        _ => None,
    });
    let Some(top) = parts.next() else {
        // The data dir itself: anything may have changed.
        return Scope::All;
    };
    let Some(inner) = parts.next() else {
        // A directory appearing or leaving moves clients between a group
        // and `unknown`.
        return Scope::All;
    };
    if inner.as_encoded_bytes().starts_with(b".cfi") {
        return Scope::Nothing;
    }
    let Some(top) = top.to_str() else {
        return Scope::Nothing;
    };
    if top == GroupName::ALL {
        return Scope::All;
    }
    GroupName::parse(top).map_or(Scope::Nothing, Scope::Group)
}

/// What the watcher thread hands to the async side.
#[derive(Debug)]
enum Change {
    Paths(Vec<PathBuf>),
    /// Events were lost: rescan everything.
    Rescan(String),
}

/// Watches the data dir until `stop`, syncing changed groups' members.
pub(super) async fn watch(daemon: Arc<Daemon>, stop: CancellationToken) {
    let data_dir = daemon.config.data_dir.clone();
    let propagator = Arc::new(Propagator::default());
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let watcher = start(&data_dir, tx);
        let _watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(
                    data_dir = %data_dir.display(),
                    error = %e,
                    "cannot watch the data dir; changes reach clients only by `cfi sync` and the periodic pass until it can"
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        tracing::info!(data_dir = %data_dir.display(), "watching for changes");
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                c = rx.recv() => c,
            };
            let Some(first) = first else {
                break;
            };
            let mut scopes = BTreeSet::new();
            add(&data_dir, first, &mut scopes);
            let deadline = Instant::now() + MAX_WAIT;
            loop {
                let quiet = (Instant::now() + QUIET).min(deadline);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep_until(quiet) => break,
                    c = rx.recv() => match c {
                        Some(c) => add(&data_dir, c, &mut scopes),
                        None => break,
                    },
                }
            }
            let groups = expand(&daemon, &scopes);
            for group in groups {
                Arc::clone(&propagator).kick(&daemon, group);
            }
        }
        tracing::warn!("the data dir watch ended; watching again");
    }
}

fn start(
    data_dir: &Path,
    tx: mpsc::UnboundedSender<Change>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let change = match event {
            Ok(e) if e.need_rescan() => Change::Rescan("the kernel dropped events".into()),
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
            Ok(e) => Change::Paths(e.paths),
            Err(e) => Change::Rescan(e.to_string()),
        };
        // The receiver is gone when the daemon stops.
        let _ = tx.send(change);
    })?;
    watcher.watch(data_dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

fn add(data_dir: &Path, change: Change, scopes: &mut BTreeSet<Scope>) {
    match change {
        Change::Paths(paths) => {
            scopes.extend(paths.iter().map(|p| scope(data_dir, p)));
        }
        Change::Rescan(why) => {
            tracing::warn!(why, "watch lost events; syncing every group");
            scopes.insert(Scope::All);
        }
    }
}

/// The groups `scopes` stand for, among those the members are in.
fn expand(daemon: &Daemon, scopes: &BTreeSet<Scope>) -> BTreeSet<GroupName> {
    let data = DataDir::new(&daemon.config.data_dir);
    let in_use: BTreeSet<GroupName> = daemon.members().iter().map(|m| m.group(&data)).collect();
    if scopes.contains(&Scope::All) {
        return in_use;
    }
    scopes
        .iter()
        .filter_map(|s| match s {
            Scope::Group(g) if in_use.contains(g) => Some(g.clone()),
            _ => None,
        })
        .collect()
}

/// One propagation pass per group at a time, and one more queued when a
/// change arrives during a pass.
#[derive(Debug, Default)]
struct Propagator {
    // A std mutex: held only to flip a state, never across an await.
    groups: Mutex<HashMap<GroupName, Run>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Running,
    Again,
}

impl Propagator {
    fn kick(self: Arc<Self>, daemon: &Arc<Daemon>, group: GroupName) {
        {
            let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
            match groups.get(&group) {
                Some(_) => {
                    groups.insert(group, Run::Again);
                    return;
                }
                None => {
                    groups.insert(group.clone(), Run::Running);
                }
            }
        }
        let daemon = Arc::clone(daemon);
        tokio::spawn(async move {
            loop {
                self.pass(&daemon, &group).await;
                let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
                if groups.get(&group) == Some(&Run::Again) {
                    groups.insert(group.clone(), Run::Running);
                } else {
                    groups.remove(&group);
                    break;
                }
            }
        });
    }

    async fn pass(&self, daemon: &Arc<Daemon>, group: &GroupName) {
        let data = DataDir::new(&daemon.config.data_dir);
        let online: Vec<_> = daemon
            .members()
            .into_iter()
            .filter(|m| &m.group(&data) == group && m.slot.health().state == ClientState::Online)
            .collect();
        if online.is_empty() {
            return;
        }
        tracing::info!(%group, clients = online.len(), "group changed; syncing its online members");
        let events = super::work::log_events("propagation");
        super::work::sync_members(daemon, online, false, &events).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_group_all_or_nothing() {
        let d = Path::new("/var/lib/cfi");
        let g = |s: &str| Scope::Group(GroupName::parse(s).unwrap());
        assert_eq!(scope(d, Path::new("/var/lib/cfi/lab/etc/motd")), g("lab"));
        assert_eq!(scope(d, Path::new("/var/lib/cfi/lab/etc")), g("lab"));
        assert_eq!(
            scope(d, Path::new("/var/lib/cfi/all/etc/hosts")),
            Scope::All
        );
        assert_eq!(scope(d, Path::new("/var/lib/cfi/newgroup")), Scope::All);
        assert_eq!(scope(d, Path::new("/var/lib/cfi")), Scope::All);
        assert_eq!(
            scope(d, Path::new("/var/lib/cfi/lab/.cfi-notes")),
            Scope::Nothing
        );
        assert_eq!(
            scope(d, Path::new("/var/lib/cfi/Bad Name/x")),
            Scope::Nothing
        );
        assert_eq!(scope(d, Path::new("/etc/passwd")), Scope::Nothing);
    }
}
