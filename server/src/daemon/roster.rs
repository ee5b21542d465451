//! The clients the server knows: those that announce themselves over mDNS
//! and the static list (`clients_file`, dsh's lists with `read_dsh`),
//! re-read when a file changes. Each client keeps its pool [`Slot`] across
//! re-reads and re-announcements as long as its identity stays: the address
//! for a static client, the announced id for an mDNS one (never the mDNS
//! name, which avahi renames on conflicts). A machine that is both listed
//! and announced at the listed address is one client, the listed one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use cfi_announce::{ClientRecord, GroupField};
use cfi_groups::{DataDir, GroupName};

use super::pool::Slot;
use crate::clients::{self, StaticClient};
use crate::config::ServerConfig;
use crate::control::{ClientState, Targets};

/// One known client.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its name in `cfi`.
    pub name: String,
    /// Its identity in the state database: the announced id, or the
    /// listed address.
    pub id: String,
    /// Where it is reached (`host:port`).
    pub address: String,
    /// The group it asks for.
    pub wanted: Option<GroupName>,
    /// Where it is listed: `mdns`, or the list's `file:line`.
    pub source: String,
    /// For an announced client: its mDNS service and whether the record
    /// is still there.
    pub presence: Option<Presence>,
    /// Its connection.
    pub slot: Arc<Slot>,
}

/// An announced client's mDNS record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The full service name.
    pub fullname: String,
    /// Whether the record lives (no goodbye seen, not expired).
    pub present: bool,
}

impl Member {
    /// The state `cfi clients` shows. For an announced client the mDNS
    /// record refines what the connection says: announced but not
    /// answering is *stale* (a network problem, or a machine that died
    /// without a goodbye), gone from mDNS and not connected is *offline*.
    pub fn state(&self) -> ClientState {
        if self.slot.is_held() {
            return ClientState::Pending;
        }
        let conn = self.slot.health().state;
        let Some(presence) = &self.presence else {
            return conn;
        };
        match (conn, presence.present) {
            (ClientState::Online | ClientState::HostkeyChanged | ClientState::Pending, _) => conn,
            (ClientState::StaticOnly, true) => ClientState::Pending,
            (ClientState::Offline | ClientState::Stale, true) => ClientState::Stale,
            (ClientState::Unreachable, true) => ClientState::Unreachable,
            (_, false) => ClientState::Offline,
        }
    }

    /// The group it gets: the one it asks for when that has a directory,
    /// `unknown` otherwise.
    pub fn group(&self, data: &DataDir) -> GroupName {
        data.resolve(self.wanted.as_ref())
    }

    /// Whether `name` (as typed after `-w` or `-x`) means this client.
    fn is(&self, name: &str) -> bool {
        name == self.name || name == self.address || name == self.id
    }
}

/// What an announcement told the roster.
#[derive(Debug, Clone)]
pub enum Arrival {
    /// Nothing new: the same record again.
    Same,
    /// A client seen for the first time, back after it left, or at a new
    /// address: connect and sync it.
    Enroll(Member),
    /// Taken in, nothing to do (a listed client announcing itself).
    Updated,
}

/// One announcement, as the discovery task read it.
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The full service name.
    pub fullname: String,
    /// The TXT record.
    pub record: ClientRecord,
    /// Its IPv4 addresses, sorted.
    pub addresses: Vec<Ipv4Addr>,
    /// Its sshd port.
    pub port: u16,
}

/// A client known from mDNS.
#[derive(Debug)]
struct Announced {
    fullname: String,
    name: String,
    address: String,
    wanted: Option<GroupName>,
    present: bool,
    /// When its record went away, for [`MAX_ABSENT`].
    left: Option<std::time::Instant>,
    slot: Arc<Slot>,
}

/// Clients that left mDNS and are still shown (as offline). Past this the
/// one gone longest is forgotten: a network that announces ever new ids
/// must not grow the table without end. Its state in the database stays.
const MAX_ABSENT: usize = 4096;

/// The client list and where it came from.
#[derive(Debug, Default)]
pub struct Roster {
    members: Vec<Member>,
    listed: Vec<Member>,
    /// By announced id.
    announced: BTreeMap<String, Announced>,
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
        let mut old: HashMap<String, Arc<Slot>> =
            self.listed.drain(..).map(|m| (m.address, m.slot)).collect();
        let mut members: Vec<Member> = Vec::with_capacity(listed.len());
        for c in listed {
            let address = c.address();
            if members.iter().any(|m| m.address == address) {
                continue;
            }
            let name = c.name();
            let slot = old.remove(&address).unwrap_or_else(|| {
                Arc::new(Slot::new(address.clone(), address.clone(), name.clone()))
            });
            members.push(member(c, name, address, slot));
        }
        tracing::info!(
            clients = members.len(),
            dropped = old.len(),
            "client list read"
        );
        self.listed = members;
        self.merge();
        true
    }

    /// Takes in an mDNS announcement of a client.
    #[cfg(test)]
    pub fn announce(&mut self, a: Announcement) -> Arrival {
        self.announce_all(vec![a]).pop().unwrap_or(Arrival::Same)
    }

    /// Takes in a burst of announcements (a wave of machines booting) with
    /// one rebuild of the members; one arrival per announcement.
    pub fn announce_all(&mut self, all: Vec<Announcement>) -> Vec<Arrival> {
        let taken: Vec<Option<(bool, Arc<Slot>)>> = all.into_iter().map(|a| self.take(a)).collect();
        if taken.iter().any(Option::is_some) {
            self.merge();
        }
        let listed: HashSet<&str> = self.listed.iter().map(|m| m.address.as_str()).collect();
        taken
            .into_iter()
            .map(|t| {
                let Some((arrival, slot)) = t else {
                    return Arrival::Same;
                };
                match self.members.iter().find(|m| Arc::ptr_eq(&m.slot, &slot)) {
                    Some(m) if arrival && !listed.contains(m.address.as_str()) => {
                        Arrival::Enroll(m.clone())
                    }
                    _ => Arrival::Updated,
                }
            })
            .collect()
    }

    /// Records one announcement; `None` when nothing changed, else whether
    /// the client needs a pass, and its slot.
    fn take(&mut self, a: Announcement) -> Option<(bool, Arc<Slot>)> {
        let ip = a.addresses.first()?;
        let address = format!("{ip}:{}", a.port);
        let id = a.record.id.to_string();
        let wanted = match &a.record.group {
            GroupField::Valid(g) => Some(g.clone()),
            GroupField::Missing => None,
            GroupField::Invalid(raw) => {
                tracing::warn!(
                    service = a.fullname,
                    group = ?raw,
                    "client announces an invalid group name; it gets `unknown`"
                );
                None
            }
        };
        let name = display_name(&a.fullname, &id);
        let entry = self.announced.entry(id.clone());
        let (arrival, slot) = match entry {
            std::collections::btree_map::Entry::Vacant(v) => {
                let slot = Arc::new(Slot::new(id.clone(), address.clone(), name.clone()));
                slot.announced(address.clone(), a.record.hostkey.clone());
                v.insert(Announced {
                    fullname: a.fullname.clone(),
                    name,
                    address,
                    wanted,
                    present: true,
                    left: None,
                    slot: Arc::clone(&slot),
                });
                tracing::info!(service = a.fullname, id, "client announced");
                (true, slot)
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                let known = o.get_mut();
                let moved = known
                    .slot
                    .announced(address.clone(), a.record.hostkey.clone());
                let returned = !known.present;
                // A client that asks for another group gets a pass of it.
                let regrouped = known.wanted != wanted;
                if !moved && !returned && !regrouped && known.fullname == a.fullname {
                    return None;
                }
                if returned {
                    tracing::info!(service = a.fullname, id, "client is back");
                }
                known.name = display_name(&a.fullname, &id);
                known.fullname = a.fullname.clone();
                known.address = address;
                known.wanted = wanted;
                known.present = true;
                known.left = None;
                (moved || returned || regrouped, Arc::clone(&known.slot))
            }
        };
        Some((arrival, slot))
    }

    /// Takes in an mDNS goodbye or expiry; returns the client's name when
    /// it was known.
    pub fn withdraw(&mut self, fullname: &str) -> Option<String> {
        let known = self
            .announced
            .values_mut()
            .find(|a| a.fullname == fullname && a.present)?;
        known.present = false;
        known.left = Some(std::time::Instant::now());
        let name = known.name.clone();
        let absent = self.announced.values().filter(|a| !a.present).count();
        if absent > MAX_ABSENT {
            let oldest = self
                .announced
                .iter()
                .filter_map(|(id, a)| a.left.map(|t| (t, id.clone())))
                .min();
            if let Some((_, id)) = oldest {
                self.announced.remove(&id);
            }
        }
        self.merge();
        Some(name)
    }

    /// Rebuilds the members: the listed clients, then the announced ones
    /// not listed at the same address. Two announced clients that show the
    /// same name (one host name, two machines) are told apart by their
    /// full instance names.
    fn merge(&mut self) {
        let mut members = self.listed.clone();
        let listed: HashSet<&str> = self.listed.iter().map(|m| m.address.as_str()).collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for a in self.announced.values() {
            *counts.entry(a.name.as_str()).or_default() += 1;
        }
        members.reserve(self.announced.len());
        for (id, a) in &self.announced {
            // Only a listed client hides an announced one at its address:
            // a machine that took over a departed one's address is a
            // client of its own.
            if listed.contains(a.address.as_str()) {
                continue;
            }
            let name = if counts.get(a.name.as_str()).copied().unwrap_or(0) > 1 {
                cfi_announce::mdns::instance_of(&a.fullname).replace(char::is_whitespace, "-")
            } else {
                a.name.clone()
            };
            members.push(Member {
                name,
                id: id.clone(),
                address: a.address.clone(),
                wanted: a.wanted.clone(),
                source: "mdns".into(),
                presence: Some(Presence {
                    fullname: a.fullname.clone(),
                    present: a.present,
                }),
                slot: Arc::clone(&a.slot),
            });
        }
        self.members = members;
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
        id: address.clone(),
        address,
        wanted: c.group,
        source,
        presence: None,
        slot,
    }
}

/// The name `cfi` shows for an announced client: its instance label
/// without the id suffix cfi-announcer adds (`ws01-3fa2c1` → `ws01`), with
/// whitespace (other mDNS publishers allow it) made `-`.
fn display_name(fullname: &str, id: &str) -> String {
    let instance = cfi_announce::mdns::instance_of(fullname);
    let suffix = format!("-{}", &id[..6.min(id.len())]);
    let name = instance.strip_suffix(&suffix).unwrap_or(instance);
    let name = name.replace(char::is_whitespace, "-");
    if name.is_empty() { id.to_owned() } else { name }
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

    fn announcement(fullname: &str, id: &str, group: GroupField, ip: [u8; 4]) -> Announcement {
        Announcement {
            fullname: fullname.into(),
            record: ClientRecord {
                id: cfi_announce::MachineId::parse(id).unwrap(),
                group,
                hostkey: None,
            },
            addresses: vec![Ipv4Addr::from(ip)],
            port: 22,
        }
    }

    #[test]
    fn announced_clients_enroll_once_leave_and_come_back() {
        let (_d, config, mut r) = setup("ws1 lab\n");
        let data = DataDir::new(&config.data_dir);
        let lab = GroupField::Valid(GroupName::parse("lab").unwrap());
        let a = announcement(
            "pc7-0a1b2c._cfi-client._tcp.local.",
            "0a1b2c3d4e5f",
            lab,
            [10, 0, 0, 7],
        );
        let Arrival::Enroll(m) = r.announce(a.clone()) else {
            panic!("a new client is enrolled");
        };
        assert_eq!(
            (m.name.as_str(), m.address.as_str()),
            ("pc7", "10.0.0.7:22")
        );
        assert_eq!(m.group(&data).as_str(), "lab");
        assert_eq!(m.state(), ClientState::Pending);
        assert!(matches!(r.announce(a.clone()), Arrival::Same));
        assert_eq!(names(r.members()), ["ws1", "pc7"]);

        assert_eq!(r.withdraw(&a.fullname).as_deref(), Some("pc7"));
        assert_eq!(r.withdraw(&a.fullname), None, "said once");
        assert_eq!(r.members()[1].state(), ClientState::Offline);
        assert!(
            matches!(r.announce(a.clone()), Arrival::Enroll(_)),
            "back: caught up"
        );

        let mut moved = a.clone();
        moved.addresses = vec![Ipv4Addr::new(10, 0, 0, 8)];
        let Arrival::Enroll(m) = r.announce(moved.clone()) else {
            panic!("a new address is connected afresh");
        };
        assert_eq!(m.slot.address(), "10.0.0.8:22");
        let mut regrouped = moved;
        regrouped.record.group = GroupField::Missing;
        assert!(
            matches!(r.announce(regrouped), Arrival::Enroll(_)),
            "another group: a pass"
        );
        assert!(
            Arc::ptr_eq(&m.slot, &r.members()[1].slot),
            "same identity, same slot"
        );
    }

    #[test]
    fn a_machine_at_a_departed_machines_address_is_a_client_of_its_own() {
        let (_d, _config, mut r) = setup("");
        let old = announcement(
            "a-aaaaaa._cfi-client._tcp.local.",
            "aaaaaaaa11",
            GroupField::Missing,
            [10, 0, 0, 5],
        );
        r.announce(old.clone());
        r.withdraw(&old.fullname);
        let new = announcement(
            "b-bbbbbb._cfi-client._tcp.local.",
            "bbbbbbbb22",
            GroupField::Missing,
            [10, 0, 0, 5],
        );
        assert!(matches!(r.announce(new), Arrival::Enroll(_)));
        assert_eq!(names(r.members()), ["a", "b"]);
        // A wave: one rebuild, every newcomer enrolled.
        let wave: Vec<Announcement> = (0..100u8)
            .map(|i| {
                announcement(
                    &format!("w{i}-cccc{i:02x}._cfi-client._tcp.local."),
                    &format!("cccccc{i:04x}"),
                    GroupField::Missing,
                    [10, 1, 0, i],
                )
            })
            .collect();
        let arrivals = r.announce_all(wave);
        assert_eq!(
            arrivals
                .iter()
                .filter(|a| matches!(a, Arrival::Enroll(_)))
                .count(),
            100
        );
        assert_eq!(r.members().len(), 102);
    }

    #[test]
    fn bad_groups_go_to_unknown_twins_keep_their_instance_and_listed_wins() {
        let (_d, config, mut r) = setup("10.0.0.9 lab\n");
        let data = DataDir::new(&config.data_dir);
        let bad = GroupField::Invalid("Lab Room".into());
        let a = announcement(
            "pc-aaaaaa._cfi-client._tcp.local.",
            "aaaaaaaa11",
            bad,
            [10, 0, 0, 1],
        );
        let Arrival::Enroll(m) = r.announce(a) else {
            panic!()
        };
        assert_eq!(m.group(&data).as_str(), "unknown");
        // Netbooted twins share a host name: each keeps its instance name.
        let b = announcement(
            "pc-bbbbbb._cfi-client._tcp.local.",
            "bbbbbbbb22",
            GroupField::Missing,
            [10, 0, 0, 2],
        );
        r.announce(b);
        assert_eq!(names(r.members()), ["10.0.0.9", "pc-aaaaaa", "pc-bbbbbb"]);
        // Announced at a listed address: one client, the listed one.
        let c = announcement(
            "ws9-cccccc._cfi-client._tcp.local.",
            "cccccccc33",
            GroupField::Missing,
            [10, 0, 0, 9],
        );
        assert!(matches!(r.announce(c), Arrival::Updated));
        assert_eq!(r.members().len(), 3);
    }
}
