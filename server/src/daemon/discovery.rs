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
/// announcer installs the key a moment after the client appears (a second
/// later on a first boot, when it watches for rogue servers).
const ENROLL_PATIENCE: Duration = Duration::from_secs(30);

/// The first wait between enrollment attempts; it doubles up to
/// [`ENROLL_MAX_DELAY`], with jitter. A refused key costs the client one
/// sshd handshake, so a few tries a second while it installs our key are
/// cheap.
const ENROLL_FIRST_DELAY: Duration = Duration::from_millis(200);
const ENROLL_MAX_DELAY: Duration = Duration::from_secs(1);

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
    let events = match discovery.daemon.browse(CLIENT_SERVICE) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "mDNS: cannot browse for clients; only listed clients are served");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut said = HashSet::new();
    let mut verify_tick = tokio::time::interval(Duration::from_secs(1));
    let mut verifying: HashSet<String> = HashSet::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            _ = verify_tick.tick() => {
                verify_lost(&daemon, &discovery, &mut verifying);
                while tasks.try_join_next().is_some() {}
                continue;
            }
            event = events.recv_async() => match event {
                Ok(e) => e,
                Err(_) => {
                    tracing::error!("mDNS daemon stopped; no more client announcements");
                    break;
                }
            },
        };
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let fullname = service.get_fullname().to_owned();
                let props = mdns::properties(&service);
                let record = match ClientRecord::from_txt(mdns::borrowed(&props)) {
                    Ok(r) => r,
                    Err(e) => {
                        if said.len() > 1024 {
                            said.clear();
                        }
                        if said.insert(format!("{fullname}{e}")) {
                            tracing::warn!(
                                service = fullname,
                                "ignoring a client announcement: {e}"
                            );
                        }
                        continue;
                    }
                };
                let addresses = mdns::ipv4_addresses(&service);
                let announcement = Announcement {
                    fullname,
                    record,
                    addresses,
                    port: service.get_port(),
                };
                let arrival = daemon.write_roster().announce(announcement);
                if let Arrival::Enroll(member) = arrival {
                    verifying.remove(&member.id);
                    if daemon.config.accept == Accept::Manual && !daemon.accepted(&member.id) {
                        if !member.slot.is_held() {
                            member.slot.hold();
                            tracing::warn!(
                                host = member.name,
                                service =
                                    member.presence.as_ref().map_or("", |p| p.fullname.as_str()),
                                "new client waits for `cfi accept {}` (accept = \"manual\")",
                                member.name
                            );
                        }
                        continue;
                    }
                    let daemon = Arc::clone(&daemon);
                    tasks.spawn(async move { enroll_bounded(&daemon, member).await });
                }
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(name) = daemon.write_roster().withdraw(&fullname) {
                    tracing::info!(host = name, service = fullname, "client left mDNS");
                }
            }
            _ => {}
        }
    }
    self_check.abort();
    tasks.shutdown().await;
}

/// Asks mdns-sd to verify the record of every announced client whose
/// connection was lost, once per loss.
fn verify_lost(daemon: &Daemon, discovery: &Discovery, verifying: &mut HashSet<String>) {
    for m in daemon.members() {
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
        match daemon.pool.connect(&member.slot).await {
            Ok(conn) => {
                conn.warm_up().await;
                break;
            }
            Err(e) if waiting_for_key(&e) && started.elapsed() < ENROLL_PATIENCE => {
                tracing::debug!(host = member.name, error = %e, "not enrolled yet; retrying");
                tokio::time::sleep(super::pool::jitter(delay)).await;
                delay = (delay * 2).min(ENROLL_MAX_DELAY);
            }
            Err(e) => {
                tracing::warn!(host = member.name, error = %e, "cannot enroll client");
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
