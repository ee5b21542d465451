//! The announcer: tells the network this machine is here, and installs the
//! server key its trust policy accepts.
//!
//! It publishes `_cfi-client._tcp` (instance `<hostname>-<id prefix>`,
//! since netbooted machines often share one host name; port: sshd's; TXT
//! `v`, `id`, `group`, `hostkey`) under a host label of its own,
//! `cfi-<id prefix>.local.`: announcing under the machine's own name while
//! avahi runs would make our goodbye retract avahi's address records
//! (`../shared/CRATES.md`). It browses `_cfi-server._tcp`, and every time
//! the set of announced servers changes it asks [`cfi_announce::decide`]
//! what the cfi line in `authorized_keys` should hold. Before the first
//! pin it watches [`FIRST_USE_WAIT`] from the start of its browse, and at
//! least [`FIRST_SEEN_WAIT`] after the first server appears; a first server
//! seen later than its first query's answers has it query afresh and watch
//! [`FIRST_USE_WAIT`] from then ([`first_use_watch`]). Either way a rogue
//! announcing alongside the real server is seen and neither key is
//! installed. On shutdown it unregisters, which sends goodbye packets
//! (RFC 6762 §10.1), so the server sees it leave within a second.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cfi_announce::{
    CLIENT_SERVICE, ClientRecord, GroupField, MachineId, PublicKey, SERVER_SERVICE, ServerRecord,
    Trust, Verdict, mdns,
};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::authorized_keys::{self, KeysError};
use crate::config::Checked;
use crate::pin::{PinError, PinStore};

/// How long an unpinned client watches for servers, from the start of its
/// browse, before it trusts one: long enough for every server on the link
/// to answer one of its first two queries. A responder multicasts a record
/// at most once a second (RFC 6762 §6), so a server that had just answered
/// another machine's query stays silent to ours until our second query, a
/// second after the first, and may then delay its answer by up to 500 ms
/// (shared records such as PTR). With 1 s after the first server seen, a
/// rogue answering second was missed in the lab whenever another client had
/// browsed just before, and a first-use client trusted whichever server had
/// answered first.
pub const FIRST_USE_WAIT: Duration = Duration::from_millis(1750);

/// How long it watches after the first server it sees, at least: the
/// others answering the same query come within the responders' delay.
pub const FIRST_SEEN_WAIT: Duration = Duration::from_secs(1);

/// Until when an unpinned client whose browse started at `browsing`, and
/// which saw its first server at `seen`, watches for others; and whether it
/// must query afresh to cover that.
///
/// A server seen among the answers to the browse's first query leaves the
/// second query, a second later, inside [`FIRST_USE_WAIT`]. One seen later
/// came from a later query (the first went unanswered: a link that came up
/// late) or from an announcement, and mdns-sd's next query may be seconds
/// away, its intervals doubling: a rogue that was silent for its once-a-
/// second limit would go unheard, and the first server answering would be
/// trusted. So the client browses anew (a query at once, another a second
/// later) and watches [`FIRST_USE_WAIT`] from then.
pub fn first_use_watch(browsing: Instant, seen: Instant) -> (Instant, bool) {
    let early = browsing + FIRST_USE_WAIT;
    if seen + FIRST_SEEN_WAIT <= early {
        (early, false)
    } else {
        (seen + FIRST_USE_WAIT, true)
    }
}

/// How long the announcer waits to resolve its own announcement before it
/// says that mDNS does not work here.
const SELF_CHECK_WAIT: Duration = Duration::from_secs(5);

/// How long goodbye packets may take at shutdown.
const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// Why the announcer cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnnouncerError {
    /// The machine id cannot be read.
    #[error("cannot read the machine id {path}: {cause}")]
    MachineIdFile {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The machine id is not one.
    #[error(transparent)]
    MachineId(#[from] cfi_announce::MachineIdError),
    /// The pin or the lock failed.
    #[error(transparent)]
    Pin(#[from] PinError),
    /// `authorized_keys` cannot be edited.
    #[error(transparent)]
    Keys(#[from] KeysError),
    /// mdns-sd failed.
    #[error(transparent)]
    Mdns(#[from] mdns::MdnsError),
    /// The record would not fit in TXT.
    #[error("cannot announce this machine: {0}")]
    Record(#[from] cfi_announce::RecordError),
    /// mdns-sd refused the service.
    #[error("mDNS: cannot {op}: {cause}")]
    Service {
        /// What was attempted.
        op: &'static str,
        /// mdns-sd's message.
        cause: mdns_sd::Error,
    },
}

/// What `cfi-announcer forget` removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Forgotten {
    /// The cfi line was in `authorized_keys`.
    pub line_removed: bool,
    /// A server key was pinned.
    pub pin_removed: bool,
}

/// Removes the cfi line from `authorized_keys` and the pinned server key,
/// so the next start trusts a server afresh. Refused while an announcer
/// runs on the same state dir: it would put the line straight back.
pub fn forget(checked: &Checked) -> Result<Forgotten, AnnouncerError> {
    let pins = PinStore::new(&checked.config.state_dir);
    let _lock = pins.lock()?;
    let line_removed = authorized_keys::install(&checked.config.authorized_keys, None, None)?;
    let pin_removed = pins.remove()?;
    Ok(Forgotten {
        line_removed,
        pin_removed,
    })
}

/// The announced id of this machine, from its machine-id file.
pub fn machine_id(path: &Path) -> Result<MachineId, AnnouncerError> {
    let text = std::fs::read_to_string(path).map_err(|cause| AnnouncerError::MachineIdFile {
        path: path.to_owned(),
        cause,
    })?;
    Ok(cfi_announce::machine_id_from(&text, path)?)
}

/// Announces this machine and keeps the server key installed until `stop`
/// is cancelled; then says goodbye.
pub async fn run(checked: Checked, stop: CancellationToken) -> Result<(), AnnouncerError> {
    let config = &checked.config;
    let pins = PinStore::new(&config.state_dir);
    let _lock = pins.lock()?;
    let id = machine_id(&config.machine_id_file)?;
    let Some(hostkey) = wait_for_host_key(&config.host_key, &stop).await else {
        return Ok(());
    };
    let record = ClientRecord {
        id: id.clone(),
        group: checked
            .group
            .clone()
            .map_or(GroupField::Missing, GroupField::Valid),
        hostkey: Some(hostkey),
    };
    let daemon = mdns::start(&config.interfaces)?;
    let fullname = register(&daemon, &checked, &record)?;
    tracing::info!(
        service = fullname,
        id = %id,
        group = checked.group.as_ref().map_or("(none)", |g| g.as_str()),
        port = config.ssh_port,
        trust = %checked.trust,
        "announcing"
    );
    let self_check = {
        let daemon = daemon.clone();
        let fullname = fullname.clone();
        tokio::spawn(async move {
            if !mdns::sees_itself(&daemon, CLIENT_SERVICE, &fullname, SELF_CHECK_WAIT).await {
                tracing::error!(
                    service = fullname,
                    "cannot see this machine's own mDNS announcement: is another mDNS stack \
                     holding port 5353 exclusively (avahi with disallow-other-stacks=yes), or \
                     is multicast blocked? The server will not find this machine"
                );
            }
        })
    };
    let browse = || {
        daemon
            .browse(SERVER_SERVICE)
            .map_err(|cause| AnnouncerError::Service {
                op: "browse for servers",
                cause,
            })
    };
    let mut servers = browse()?;
    let browsing = Instant::now();
    let mut keeper = Keeper::new(&checked, pins)?;
    let mut settle: Option<Instant> = None;
    loop {
        let mut browse_anew = false;
        let deadline = settle.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(deadline), if settle.is_some() => {
                settle = None;
                keeper.decide()?;
            }
            event = servers.recv_async() => {
                let Ok(event) = event else {
                    tracing::error!("mDNS daemon stopped; no more server announcements");
                    break;
                };
                if !keeper.observe(event) {
                    continue;
                }
                if keeper.waits_for_first_use() {
                    settle.get_or_insert_with(|| {
                        let now = Instant::now();
                        let (until, anew) = first_use_watch(browsing, now);
                        browse_anew = anew;
                        let wait = until - now;
                        tracing::info!(
                            ?wait,
                            query_again = anew,
                            "a server appeared; watching for others before trusting its key"
                        );
                        until
                    });
                } else if settle.is_none() {
                    keeper.decide()?;
                }
            }
        }
        if browse_anew {
            // A new browse replaces the old one's channel, which then
            // ends; what the cache holds comes again on the new one. One
            // that cannot start leaves the old browse running: the watch
            // goes on, only without its fresh query.
            match browse() {
                Ok(fresh) => servers = fresh,
                Err(e) => tracing::warn!(
                    "cannot query afresh for servers ({e}); a rogue that was silent may go unseen"
                ),
            }
        }
    }
    self_check.abort();
    goodbye(&daemon, &fullname).await;
    Ok(())
}

/// Reads the sshd host key's fingerprint, waiting (and saying so once)
/// while the key is missing: on a first boot sshd's keys may be made after
/// the announcer starts. `None` when stopped first.
async fn wait_for_host_key(path: &Path, stop: &CancellationToken) -> Option<String> {
    let mut said = None;
    loop {
        let why = match std::fs::read_to_string(path) {
            Ok(text) => match PublicKey::parse(text.trim()) {
                Ok(key) => return Some(key.fingerprint()),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if said.as_ref() != Some(&why) {
            tracing::warn!(host_key = %path.display(), error = why, "waiting for the sshd host key");
            said = Some(why);
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Registers this machine's service; returns its full name.
fn register(
    daemon: &ServiceDaemon,
    checked: &Checked,
    record: &ClientRecord,
) -> Result<String, AnnouncerError> {
    let id = record.id.as_str();
    let instance = format!("{}-{}", mdns::host_label("client"), &id[..6.min(id.len())]);
    let host = format!("cfi-{}.local.", &id[..12.min(id.len())]);
    let txt = record.to_txt()?;
    let txt: Vec<(&str, &str)> = txt.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut info = ServiceInfo::new(
        CLIENT_SERVICE,
        &instance,
        &host,
        "",
        checked.config.ssh_port,
        &txt[..],
    )
    .map_err(|cause| AnnouncerError::Service {
        op: "build the service",
        cause,
    })?
    // mdns-sd follows the machine's addresses and re-announces when they
    // change (DHCP renewals, a cable moved).
    .enable_addr_auto();
    if !checked.config.interfaces.is_empty() {
        info.set_interfaces(
            checked
                .config
                .interfaces
                .iter()
                .map(mdns_sd::IfKind::from)
                .collect(),
        );
    }
    let fullname = info.get_fullname().to_owned();
    daemon
        .register(info)
        .map_err(|cause| AnnouncerError::Service {
            op: "announce this machine",
            cause,
        })?;
    Ok(fullname)
}

/// Unregisters (goodbye packets) and stops the daemon, within
/// [`GOODBYE_WAIT`].
async fn goodbye(daemon: &ServiceDaemon, fullname: &str) {
    if let Ok(status) = daemon.unregister(fullname) {
        let _ = tokio::time::timeout(GOODBYE_WAIT, status.recv_async()).await;
    }
    if let Ok(status) = daemon.shutdown() {
        let _ = tokio::time::timeout(GOODBYE_WAIT, status.recv_async()).await;
    }
    tracing::info!(service = fullname, "goodbye sent");
}

/// The servers announced now, and what is installed.
#[derive(Debug)]
struct Keeper {
    trust: Trust,
    agent_command: String,
    authorized_keys: PathBuf,
    pins: PinStore,
    pinned: Option<PublicKey>,
    /// Announced servers by full service name: the record and the host
    /// name the server announced (for the line's comment).
    servers: BTreeMap<String, (ServerRecord, String)>,
    /// What was logged, so that a message repeated by every announcement
    /// of the same servers is said once.
    said: HashSet<String>,
}

impl Keeper {
    fn new(checked: &Checked, pins: PinStore) -> Result<Self, AnnouncerError> {
        let mut pinned = pins.load()?;
        if let (Trust::Pinned(wanted), Some(key)) = (&checked.trust, &pinned) {
            if key.fingerprint() != *wanted {
                // Installed under another policy or another fingerprint:
                // "pinned" means that key only, so the old one goes now.
                authorized_keys::install(&checked.config.authorized_keys, None, None)?;
                pins.remove()?;
                tracing::warn!(
                    removed = key.fingerprint(),
                    pinned = wanted,
                    "removed the installed server key: trust = \"pinned\" names another"
                );
                pinned = None;
            }
        }
        if let Some(key) = &pinned {
            tracing::info!(pinned = key.fingerprint(), "server key pinned earlier");
        }
        Ok(Self {
            trust: checked.trust.clone(),
            agent_command: checked.config.agent_command.clone(),
            authorized_keys: checked.config.authorized_keys.clone(),
            pins,
            pinned,
            servers: BTreeMap::new(),
            said: HashSet::new(),
        })
    }

    /// Takes in one browse event; returns whether the set of servers
    /// changed.
    fn observe(&mut self, event: ServiceEvent) -> bool {
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let fullname = service.get_fullname().to_owned();
                let props = mdns::properties(&service);
                match ServerRecord::from_txt(mdns::borrowed(&props)) {
                    Ok(record) => {
                        let host = host_label(service.get_hostname());
                        let entry = (record, host);
                        if self.servers.get(&fullname) == Some(&entry) {
                            return false;
                        }
                        self.servers.insert(fullname, entry);
                        true
                    }
                    Err(e) => {
                        self.say_once(format!("{fullname}: {e}"), |m| {
                            tracing::warn!("ignoring a server announcement: {m}")
                        });
                        self.servers.remove(&fullname).is_some()
                    }
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                let gone = self.servers.remove(&fullname).is_some();
                if gone {
                    tracing::info!(service = fullname, "server left");
                }
                gone
            }
            _ => false,
        }
    }

    /// Whether no key is pinned yet under first use, so the first servers
    /// are watched a little before one is trusted.
    fn waits_for_first_use(&self) -> bool {
        self.trust == Trust::FirstUse && self.pinned.is_none()
    }

    /// Applies the trust policy to the servers announced now.
    fn decide(&mut self) -> Result<(), AnnouncerError> {
        let seen: Vec<ServerRecord> = self.servers.values().map(|(r, _)| r.clone()).collect();
        let decision = cfi_announce::decide(&self.trust, self.pinned.as_ref(), &seen);
        for ignored in &decision.ignored {
            self.say_once(ignored.to_string(), |m| tracing::warn!("{m}"));
        }
        match &decision.verdict {
            Verdict::Install { key, why } => {
                self.install(key)?;
                self.pins.save(key)?;
                self.pinned = Some(key.clone());
                let said = format!("installed server key {}: {why}", key.fingerprint());
                if self.trust == Trust::Any {
                    tracing::warn!("{said}");
                } else {
                    tracing::info!("{said}");
                }
            }
            Verdict::Keep { key, why } => {
                // Puts the line back if someone removed it.
                if self.install(key)? {
                    tracing::info!(
                        key = key.fingerprint(),
                        "restored the server key line: {why}"
                    );
                }
            }
            Verdict::Nothing { why } => {
                let why = why.clone();
                self.say_once(why, |m| tracing::info!("{m}"));
            }
            Verdict::Refuse { why } => {
                let why = why.clone();
                self.say_once(why, |m| tracing::error!("{m}"));
            }
        }
        Ok(())
    }

    /// Puts `key`'s cfi line into `authorized_keys`; returns whether the
    /// file changed.
    fn install(&self, key: &PublicKey) -> Result<bool, AnnouncerError> {
        let host = self
            .servers
            .values()
            .find(|(r, _)| &r.key == key)
            .map_or("server", |(_, h)| h.as_str());
        let line_text = key.line();
        let (kind, base64) = line_text.split_once(' ').unwrap_or((&line_text, ""));
        let line = authorized_keys::cfi_line(
            &self.agent_command,
            kind,
            base64,
            &format!("{}{host}", authorized_keys::COMMENT_PREFIX),
        )?;
        Ok(authorized_keys::install(
            &self.authorized_keys,
            Some(&line),
            None,
        )?)
    }

    fn say_once(&mut self, message: String, log: impl FnOnce(&str)) {
        // A hostile network can make up new messages without end; forgetting
        // what was said only repeats a line in the log.
        if self.said.len() >= 1024 {
            self.said.clear();
        }
        if self.said.insert(message.clone()) {
            log(&message);
        }
    }
}

/// `srv.local.` → `srv`, with anything outside a DNS label's characters
/// replaced: it ends up in `authorized_keys` as the line's comment.
fn host_label(hostname: &str) -> String {
    let name = hostname.trim_end_matches('.').trim_end_matches(".local");
    // cfi-server announces under `cfi-server-<name>.local.`.
    let name = name.strip_prefix("cfi-server-").unwrap_or(name);
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if label.is_empty() {
        "server".into()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMdK6cMVKXkmFKmhTmImeTmtnQA9P4jRxQ9ChbWzt0Dn";

    /// A rogue that multicast its record less than a second before the
    /// client could hear it stays silent to the next query (RFC 6762 §6):
    /// the watch must take in the answers to a query sent a second after
    /// the client started hearing, which is no later than when it saw the
    /// first server, or, when that server answered the browse's first
    /// query, a second after that query.
    #[test]
    fn first_use_watches_a_query_a_second_after_the_first_server() {
        // mdns-sd sends a browse's first query 20 to 120 ms after it
        // starts, the next a second later, then 2 s, 4 s… later.
        const JITTER: Duration = Duration::from_millis(120);
        const ANSWER_DELAY: Duration = Duration::from_millis(500);
        let second = Duration::from_secs(1);
        let b = Instant::now();
        for ms in (0..8000).step_by(5) {
            let seen = b + Duration::from_millis(ms);
            let (until, anew) = first_use_watch(b, seen);
            assert!(until >= seen + FIRST_SEEN_WAIT, "{ms} ms");
            if seen <= b + JITTER + ANSWER_DELAY {
                // Maybe the first query's answer: the browse's own second
                // query is the one.
                assert!(
                    !anew,
                    "{ms} ms: browsed anew although the next query is due"
                );
                assert!(b + JITTER + second + ANSWER_DELAY <= until, "{ms} ms");
            }
            if anew {
                // The fresh browse's second query, its answer watched.
                let query = seen + JITTER + second;
                assert!(query + ANSWER_DELAY <= until, "{ms} ms");
            } else {
                // Only the first query's answers are early enough for
                // the browse's own schedule to serve.
                assert!(seen <= b + FIRST_USE_WAIT - FIRST_SEEN_WAIT, "{ms} ms");
            }
        }
        // Late: the first query went unanswered, the third one answered.
        let late = b + Duration::from_millis(3100);
        assert_eq!(first_use_watch(b, late), (late + FIRST_USE_WAIT, true));
    }

    #[test]
    fn pinned_removes_a_key_installed_for_another_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let ak = d.path().join("ssh/authorized_keys");
        let config = ClientConfig {
            authorized_keys: ak.clone(),
            state_dir: d.path().join("state"),
            ..ClientConfig::default()
        };
        let key = PublicKey::parse(KEY).unwrap();
        let pins = PinStore::new(&config.state_dir);
        pins.save(&key).unwrap();
        let (kind, b64) = KEY.split_once(' ').unwrap();
        let line =
            authorized_keys::cfi_line(&config.agent_command, kind, b64, "cfi-server@old").unwrap();
        authorized_keys::install(&ak, Some(&line), None).unwrap();
        std::fs::write(&ak, format!("# mine\n{line}\n")).unwrap();

        // The same fingerprint: kept.
        let mut same = config.clone();
        same.trust = "pinned".into();
        same.server_fingerprint = Some(key.fingerprint());
        let checked = same.check(Path::new("client.toml")).unwrap();
        Keeper::new(&checked, PinStore::new(&config.state_dir)).unwrap();
        assert!(std::fs::read_to_string(&ak).unwrap().contains(b64));

        // Another one: the old line and pin go, the admin's lines stay.
        let mut other = config.clone();
        other.trust = "pinned".into();
        other.server_fingerprint =
            Some("SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s".into());
        let checked = other.check(Path::new("client.toml")).unwrap();
        let keeper = Keeper::new(&checked, PinStore::new(&config.state_dir)).unwrap();
        assert_eq!(keeper.pinned, None);
        assert_eq!(std::fs::read_to_string(&ak).unwrap(), "# mine\n");
        assert_eq!(pins.load().unwrap(), None);
    }

    #[test]
    fn host_labels_are_safe_for_a_comment() {
        assert_eq!(host_label("srv.local."), "srv");
        assert_eq!(host_label("cfi-srv-1.local."), "cfi-srv-1");
        assert_eq!(host_label("cfi-server-lab2.local."), "lab2");
        assert_eq!(host_label("bad name\n.local."), "bad-name-");
        assert_eq!(host_label(".local."), "server");
    }
}
