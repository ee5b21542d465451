//! Discovery: the server announces `_cfi-server._tcp` (its key, for clients
//! to install) and browses `_cfi-client._tcp`. Each client that appears, or
//! comes back, or moves to another address, is enrolled: connected (with
//! patience while its announcer installs our key), synced and recorded,
//! with at most `max_enrollments` at once so that a wave of netbooted
//! machines does not stampede the server.
//!
//! mDNS says who is there, not who is reachable: a killed machine's record
//! lives on for about two minutes. When the connection to an announced
//! client is lost, the server asks mdns-sd to verify the record (RFC 6762
//! §10.4, cache flush on failure indication): a machine that does not
//! answer is dropped within seconds and shows as offline, not stale.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cfi_announce::{CLIENT_SERVICE, ClientRecord, PublicKey, SERVER_SERVICE, ServerRecord, mdns};
use mdns_sd::{ServiceDaemon, ServiceEvent};
use tokio_util::sync::CancellationToken;

use super::Daemon;
use super::pool::ReachError;
use super::roster::{Announcement, Arrival, Member};
use crate::config::Accept;
use crate::control::ClientState;
use crate::ssh::SshError;

/// How long enrollment keeps trying a client that refuses our key: its
/// announcer installs the key a moment after the client appears (about two
/// seconds later on a first boot, when it watches for rogue servers).
const ENROLL_PATIENCE: Duration = Duration::from_secs(30);

/// The wait between enrollment attempts for the first [`ENROLL_QUICK`],
/// with jitter; then it doubles up to [`ENROLL_MAX_DELAY`]. A refused key
/// costs the client one sshd handshake, so a few tries a second while it
/// installs our key are cheap, and each one saved is time a new machine
/// waits for its files.
const ENROLL_FIRST_DELAY: Duration = Duration::from_millis(200);
const ENROLL_MAX_DELAY: Duration = Duration::from_secs(1);

/// How long enrollment keeps trying at [`ENROLL_FIRST_DELAY`]: a first
/// boot's watch for rogue servers (`cfi_client::announcer::FIRST_USE_WAIT`,
/// under 2 s) after its mDNS probing, with room to spare.
const ENROLL_QUICK: Duration = Duration::from_secs(4);

/// How long a verification query may go unanswered before mdns-sd drops
/// the record.
const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The server's mDNS daemon and the name of the service it announces.
pub(super) struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Discovery {
    // mdns-sd's daemon handle has no Debug of its own.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts mDNS on the configured interfaces and announces the server.
    pub(super) fn start(daemon: &Daemon) -> Result<Self, String> {
        let mdns = mdns::start(&daemon.config.mdns_interfaces).map_err(|e| e.to_string())?;
        let key = PublicKey::parse(daemon.pool.key().public_line()).map_err(|e| e.to_string())?;
        let record = ServerRecord {
            key,
            rotation: daemon.pool.key().rotation(),
        };
        let txt = record.to_txt().map_err(|e| e.to_string())?;
        let host = mdns::host_label("cfi");
        let instance = daemon
            .config
            .mdns_name
            .clone()
            .unwrap_or_else(|| host.clone());
        let info = mdns::service(
            SERVER_SERVICE,
            &instance,
            // A host label per instance: two servers on one machine must
            // not claim the same SRV target.
            &format!(
                "cfi-server-{}.local.",
                instance.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
            ),
            22,
            &txt,
            &daemon.config.mdns_interfaces,
        )
        .map_err(|e| e.to_string())?;
        let fullname = mdns::register(&mdns, info).map_err(|e| e.to_string())?;
        tracing::info!(
            service = fullname,
            key = record.key.fingerprint(),
            "announcing"
        );
        Ok(Self {
            daemon: mdns,
            fullname,
        })
    }

    /// Unregisters (goodbye packets) and stops mDNS.
    pub(super) async fn stop(&self) {
        mdns::goodbye(&self.daemon, &self.fullname).await;
    }
}

/// Events handled under one lock of the roster: a wave of machines
/// booting becomes a few rebuilds of the client table, not one per event.
const BATCH: usize = 512;

/// Browses clients until `stop`, enrolling each that appears.
pub(super) async fn browse(
    daemon: Arc<Daemon>,
    discovery: Arc<Discovery>,
    stop: CancellationToken,
) {
    let self_check = mdns::check_visible(
        &discovery.daemon,
        SERVER_SERVICE,
        &discovery.fullname,
        "clients",
    );
    let mut browsing = Browsing {
        daemon: Arc::clone(&daemon),
        tasks: tokio::task::JoinSet::new(),
        said: HashSet::new(),
        verifying: HashSet::new(),
    };
    let mut verify_tick = tokio::time::interval(Duration::from_secs(1));
    'browse: loop {
        let events = match discovery.daemon.browse(CLIENT_SERVICE) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "mDNS: cannot browse for clients; only listed clients are served");
                break;
            }
        };
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => break 'browse,
                _ = verify_tick.tick() => {
                    verify_lost(&daemon, &discovery, &mut browsing.verifying);
                    while browsing.tasks.try_join_next().is_some() {}
                    continue;
                }
                event = events.recv_async() => event,
            };
            let Ok(first) = first else {
                // mdns-sd ends a subscription whose queue filled up: browse
                // again, which replays every record it holds.
                if stop.is_cancelled() {
                    break 'browse;
                }
                tracing::warn!(
                    "mDNS: announcements came faster than they were read; browsing again"
                );
                continue 'browse;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match events.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            browsing.handle(batch);
        }
    }
    self_check.abort();
    browsing.tasks.shutdown().await;
}

/// What the browse loop keeps between events.
struct Browsing {
    daemon: Arc<Daemon>,
    tasks: tokio::task::JoinSet<()>,
    /// Bad announcements already logged.
    said: HashSet<String>,
    /// Clients whose record is being verified.
    verifying: HashSet<String>,
}

impl Browsing {
    /// Takes in a batch of browse events, in order.
    fn handle(&mut self, batch: Vec<ServiceEvent>) {
        let mut announced = Vec::new();
        for event in batch {
            match event {
                ServiceEvent::ServiceResolved(service) => {
                    if let Some(a) = self.read(&service) {
                        announced.push(a);
                    }
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    // In order: what was announced before it is taken first.
                    self.arrive(std::mem::take(&mut announced));
                    if let Some(name) = self.daemon.write_roster().withdraw(&fullname) {
                        tracing::info!(host = name, service = fullname, "client left mDNS");
                    }
                }
                _ => {}
            }
        }
        self.arrive(announced);
    }

    /// The announcement in a resolved service, or `None` (logged once)
    /// when its TXT is not a client record.
    fn read(&mut self, service: &mdns_sd::ResolvedService) -> Option<Announcement> {
        let fullname = service.get_fullname().to_owned();
        let props = mdns::properties(service);
        match ClientRecord::from_txt(mdns::borrowed(&props)) {
            Ok(record) => Some(Announcement {
                addresses: mdns::ipv4_addresses(service),
                port: service.get_port(),
                fullname,
                record,
            }),
            Err(e) => {
                if self.said.len() > 1024 {
                    self.said.clear();
                }
                if self.said.insert(format!("{fullname}{e}")) {
                    tracing::warn!(service = fullname, "ignoring a client announcement: {e}");
                }
                None
            }
        }
    }

    /// Takes `announced` into the roster and enrolls whoever needs it.
    fn arrive(&mut self, announced: Vec<Announcement>) {
        if announced.is_empty() {
            return;
        }
        let arrivals = self.daemon.write_roster().announce_all(announced);
        for arrival in arrivals {
            let Arrival::Enroll(member) = arrival else {
                continue;
            };
            self.verifying.remove(&member.id);
            if self.daemon.config.accept == Accept::Manual && !self.daemon.accepted(&member.id) {
                if !member.slot.is_held() {
                    member.slot.hold();
                    tracing::warn!(
                        host = member.name,
                        service = member.presence.as_ref().map_or("", |p| p.fullname.as_str()),
                        "new client waits for `cfi accept {}` (accept = \"manual\")",
                        member.name
                    );
                }
                continue;
            }
            let daemon = Arc::clone(&self.daemon);
            self.tasks
                .spawn(async move { enroll_bounded(&daemon, member).await });
        }
    }
}

/// Asks mdns-sd to verify the record of every announced client whose
/// connection was lost, once per loss.
fn verify_lost(daemon: &Daemon, discovery: &Discovery, verifying: &mut HashSet<String>) {
    // Every second: read the table in place rather than copy it.
    let roster = daemon
        .roster
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for m in roster.members() {
        let Some(presence) = m.presence.as_ref().filter(|p| p.present) else {
            continue;
        };
        match m.slot.health().state {
            ClientState::Offline | ClientState::Unreachable if verifying.insert(m.id.clone()) => {
                tracing::debug!(host = m.name, "connection lost; verifying its mDNS record");
                if let Err(e) = discovery
                    .daemon
                    .verify(presence.fullname.clone(), VERIFY_WAIT)
                {
                    tracing::debug!(host = m.name, error = %e, "cannot verify");
                }
            }
            ClientState::Online => {
                verifying.remove(&m.id);
            }
            _ => {}
        }
    }
}

/// Enrolls `member` in the background (after `cfi accept`).
pub(super) fn spawn_enroll(daemon: &Arc<Daemon>, member: Member) {
    let daemon = Arc::clone(daemon);
    tokio::spawn(async move { enroll_bounded(&daemon, member).await });
}

/// [`enroll`] within the bound on concurrent enrollments.
async fn enroll_bounded(daemon: &Arc<Daemon>, member: Member) {
    let Ok(_permit) = daemon.enrollments.acquire().await else {
        return;
    };
    enroll(daemon, member).await;
}

/// Connects to a newly announced client, waiting while its announcer
/// installs our key, then syncs it.
async fn enroll(daemon: &Arc<Daemon>, member: Member) {
    let started = tokio::time::Instant::now();
    let mut delay = ENROLL_FIRST_DELAY;
    loop {
        // Refusals are expected while the announcer installs our key: not
        // worth a warning each.
        match daemon.pool.connect_quietly(&member.slot).await {
            Ok(conn) => {
                conn.warm_up().await;
                break;
            }
            Err(e) if waiting_for_key(&e) && started.elapsed() < ENROLL_PATIENCE => {
                tracing::debug!(host = member.name, error = %e, "not enrolled yet; retrying");
                tokio::time::sleep(super::pool::jitter(delay)).await;
                if started.elapsed() >= ENROLL_QUICK {
                    delay = (delay * 2).min(ENROLL_MAX_DELAY);
                }
            }
            Err(e) => {
                // Left alone until it announces itself anew: a client of
                // another cfi server on the same network refuses us for
                // good, and must not be tried forever.
                tracing::warn!(host = member.name, error = %e, "cannot enroll client; trying again when it announces itself anew");
                return;
            }
        }
    }
    let events = super::work::log_events("enrollment");
    super::work::sync_members(daemon, vec![member.clone()], false, &events).await;
    tracing::info!(host = member.name, took = ?started.elapsed(), "client enrolled");
}

/// Whether a failure looks like a client whose announcer has not yet
/// installed our key (or whose sshd is still starting).
fn waiting_for_key(e: &ReachError) -> bool {
    matches!(
        e,
        ReachError::Ssh(
            SshError::AuthRejected { .. }
                | SshError::Connect { .. }
                | SshError::ConnectTimeout { .. }
        )
    )
}
