//! The clients the server knows: today the static list (`clients_file`,
//! dsh's lists with `read_dsh`), re-read when a file changes. Each client
//! keeps its pool [`Slot`] across re-reads as long as its address stays.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use cfi_groups::{DataDir, GroupName};

use super::pool::Slot;
use crate::clients::{self, StaticClient};
use crate::config::ServerConfig;
use crate::control::Targets;

/// One known client.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name in `cfi`.
    pub name: String,
    /// Where it is reached (`host:port`).
    pub address: String,
    /// The group it asks for.
    pub wanted: Option<GroupName>,
    /// Where it is listed.
    pub source: String,
    /// Its connection.
    pub slot: Arc<Slot>,
}

impl Member {
    /// The group it gets: the one it asks for when that has a directory,
    /// `unknown` otherwise.
    pub fn group(&self, data: &DataDir) -> GroupName {
        data.resolve(self.wanted.as_ref())
    }

    /// Whether `name` (as typed after `-w` or `-x`) means this client.
    fn is(&self, name: &str) -> bool {
        name == self.name || name == self.address
    }
}

/// The client list and where it came from.
#[derive(Debug, Default)]
pub struct Roster {
    members: Vec<Member>,
    /// The files read and their modification times at the last read.
    seen: Vec<(PathBuf, Option<SystemTime>)>,
    /// Why the last read failed (the list before it stays in use).
    pub problem: Option<String>,
}

impl Roster {
    /// The clients, in list order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Reads the lists again if a file changed (or on the first call).
    /// A list that does not parse keeps the previous one in use and is
    /// reported in [`Roster::problem`]; returns whether the list changed.
    pub fn refresh(&mut self, config: &ServerConfig) -> bool {
        let files = watched(config);
        if !self.seen.is_empty() && files == self.seen {
            return false;
        }
        self.seen = files;
        let listed = match clients::load(config) {
            Ok(l) => l,
            Err(e) => {
                let message = format!("{e}; still using the list read before");
                if self.problem.as_ref() != Some(&message) {
                    tracing::error!("{message}");
                }
                self.problem = Some(message);
                return false;
            }
        };
        self.problem = None;
        let mut old: HashMap<String, Arc<Slot>> = self
            .members
            .drain(..)
            .map(|m| (m.address, m.slot))
            .collect();
        let mut members: Vec<Member> = Vec::with_capacity(listed.len());
        for c in listed {
            let address = c.address();
            if members.iter().any(|m| m.address == address) {
                continue;
            }
            let name = c.name();
            let slot = old
                .remove(&address)
                .unwrap_or_else(|| Arc::new(Slot::new(address.clone(), name.clone())));
            members.push(member(c, name, address, slot));
        }
        tracing::info!(
            clients = members.len(),
            dropped = old.len(),
            "client list read"
        );
        self.members = members;
        true
    }

    /// The clients `targets` name, in list order. A name or group that
    /// matches nothing is an error naming it: a typo must not run a
    /// command on fewer hosts than meant without a word.
    pub fn select(&self, targets: &Targets, data: &DataDir) -> Result<Vec<Member>, String> {
        for name in targets.hosts.iter().chain(&targets.exclude) {
            if !self.members.iter().any(|m| m.is(name)) {
                return Err(format!(
                    "unknown client {name:?}: not in the client list (see `cfi clients`)"
                ));
            }
        }
        let mut groups = Vec::with_capacity(targets.groups.len());
        for g in &targets.groups {
            let group = GroupName::parse(g).map_err(|e| format!("group {g:?}: {e}"))?;
            if !self.members.iter().any(|m| m.group(data) == group) {
                return Err(format!("group {g} has no clients (see `cfi groups`)"));
            }
            groups.push(group);
        }
        Ok(self
            .members
            .iter()
            .filter(|m| {
                targets.all
                    || targets.hosts.iter().any(|h| m.is(h))
                    || groups.contains(&m.group(data))
            })
            .filter(|m| !targets.exclude.iter().any(|x| m.is(x)))
            .cloned()
            .collect())
    }
}

fn member(c: StaticClient, name: String, address: String, slot: Arc<Slot>) -> Member {
    let source = c.origin.to_string();
    Member {
        name,
        address,
        wanted: c.group,
        source,
        slot,
    }
}

/// The list files and their modification times (`None`: missing).
fn watched(config: &ServerConfig) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files = vec![config.clients_file.clone()];
    if config.read_dsh {
        files.push(config.dsh_dir.join("machines.list"));
        // The directory's time changes when a group file comes or goes.
        files.push(config.dsh_dir.join("group"));
        if let Ok(dir) = std::fs::read_dir(config.dsh_dir.join("group")) {
            files.extend(dir.filter_map(Result::ok).map(|d| d.path()));
        }
    }
    files
        .into_iter()
        .map(|f| {
            let t = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
            (f, t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(list: &str) -> (tempfile::TempDir, ServerConfig, Roster) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data/lab")).unwrap();
        let config = ServerConfig {
            data_dir: d.path().join("data"),
            clients_file: d.path().join("clients"),
            ..ServerConfig::default()
        };
        std::fs::write(&config.clients_file, list).unwrap();
        let mut r = Roster::default();
        assert!(r.refresh(&config));
        (d, config, r)
    }

    fn names(m: &[Member]) -> Vec<&str> {
        m.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn targets_select_by_all_group_name_and_exclusion() {
        let (_d, config, r) = setup("ws1 lab\nws2 lab\nws3:2222 lab\nkiosk\nodd nosuchgroup\n");
        let data = DataDir::new(&config.data_dir);
        let t = |all, groups: &[&str], hosts: &[&str], exclude: &[&str]| Targets {
            all,
            groups: groups.iter().map(|s| s.to_string()).collect(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        let sel = |t: Targets| names(&r.select(&t, &data).unwrap()).join(" ");
        assert_eq!(sel(t(true, &[], &[], &[])), "ws1 ws2 ws3:2222 kiosk odd");
        assert_eq!(sel(t(false, &["lab"], &[], &["ws2"])), "ws1 ws3:2222");
        // A group without a directory sends its members to unknown.
        assert_eq!(sel(t(false, &["unknown"], &[], &[])), "kiosk odd");
        assert_eq!(sel(t(false, &[], &["ws1:22", "kiosk"], &[])), "ws1 kiosk");
        let err = r.select(&t(false, &[], &["ws9"], &[]), &data).unwrap_err();
        assert!(err.contains("ws9"), "{err}");
        let err = r.select(&t(false, &["Lab"], &[], &[]), &data).unwrap_err();
        assert!(err.contains("Lab"), "{err}");
    }

    #[test]
    fn a_bad_list_keeps_the_old_one_and_slots_survive_a_reread() {
        let (_d, config, mut r) = setup("ws1 lab\nws2\n");
        let slot = Arc::clone(&r.members()[0].slot);
        assert!(!r.refresh(&config), "unchanged files are not read again");
        // A new mtime, for file systems with coarse timestamps.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::write(&config.clients_file, "ws1 Bad_Group\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&config.clients_file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(!r.refresh(&config));
        assert!(
            r.problem.as_ref().unwrap().contains(":1"),
            "{:?}",
            r.problem
        );
        assert_eq!(names(r.members()), ["ws1", "ws2"]);
        std::fs::write(&config.clients_file, "ws1 lab\nws4\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&config.clients_file)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(1))
            .unwrap();
        assert!(r.refresh(&config));
        assert!(r.problem.is_none());
        assert_eq!(names(r.members()), ["ws1", "ws4"]);
        assert!(Arc::ptr_eq(&slot, &r.members()[0].slot));
    }
}
