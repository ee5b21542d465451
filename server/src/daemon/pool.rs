//! The SSH pool: at most one connection per client, made on demand or by
//! the reconnect loop, shared by every sync pass and command for that
//! client, with the client's host key pinned in the state database.
//!
//! Each client has a [`Slot`]. Its connection sits behind an async mutex
//! held while connecting, so that ten commands for a client that is not
//! connected yet wait for one handshake rather than making ten. Handshakes
//! across all clients are bounded ([`Pool::new`]'s `max_handshakes`): a
//! wave of machines coming up must not starve the server's CPU.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::control::ClientState;
use crate::ssh::{Connection, ServerKey, SshError, Timeouts};
use crate::state::{HostKey, StateDb, StateDbError};

/// The longest wait between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a client could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReachError {
    /// The SSH layer failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The state database failed.
    #[error(transparent)]
    State(#[from] StateDbError),
    /// The host key is the one refused before; `cfi forget` clears it.
    #[error("host key of {host} changed ({why}); `cfi forget {host}` accepts the new key")]
    Refused {
        /// The client.
        host: String,
        /// What was seen.
        why: String,
    },
    /// `accept = "manual"` and the client was not accepted yet.
    #[error("{host} is pending: `cfi accept {host}` enrolls it")]
    Pending {
        /// The client.
        host: String,
    },
    /// On first contact, the host key presented is not the announced one.
    #[error(
        "{host} announces host key {announced} but presented {presented}; not pinned, not trusted"
    )]
    Mismatch {
        /// The client.
        host: String,
        /// What its mDNS record says.
        announced: String,
        /// What its sshd presented.
        presented: String,
    },
}

/// How a client's connection is doing, for `cfi clients` and the
/// reconnect loop.
#[derive(Debug, Clone)]
pub struct Health {
    /// The state shown.
    pub state: ClientState,
    /// The last error.
    pub error: Option<String>,
    /// Failed attempts since the last success.
    failures: u32,
    /// When the reconnect loop may try again.
    retry_at: Option<Instant>,
}

/// One client's place in the pool.
#[derive(Debug)]
pub struct Slot {
    /// Its identity, under which its host key is pinned: the announced id
    /// of an mDNS client, the address of a static one.
    pub id: String,
    /// Its name, for messages.
    pub name: String,
    /// Where it is reached (`host:port`); an announced client's address
    /// follows its announcements.
    address: Mutex<String>,
    /// The host key fingerprint the client announces: on first contact the
    /// key it presents must be this one.
    announced_key: Mutex<Option<String>>,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
    /// Held for the length of a sync pass: one pass per client at a time.
    pub pass: tokio::sync::Mutex<()>,
    /// Held for the length of a package run: one at a time (apt's own lock
    /// would make a second wait, and then fail, on the client).
    pub pkgs: tokio::sync::Mutex<()>,
    /// Waiting for `cfi accept` (`accept = "manual"`): never contacted.
    held: std::sync::atomic::AtomicBool,
    health: Mutex<Health>,
}

impl Slot {
    /// A slot for a client not contacted yet.
    pub fn new(id: String, address: String, name: String) -> Self {
        Self {
            id,
            name,
            address: Mutex::new(address),
            announced_key: Mutex::new(None),
            conn: tokio::sync::Mutex::new(None),
            pass: tokio::sync::Mutex::new(()),
            pkgs: tokio::sync::Mutex::new(()),
            held: std::sync::atomic::AtomicBool::new(false),
            health: Mutex::new(Health {
                state: ClientState::StaticOnly,
                error: None,
                failures: 0,
                retry_at: None,
            }),
        }
    }

    /// Where it is reached now.
    pub fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes in what the client announces; returns whether its address
    /// changed. A connection to the old address is left to fail on its own
    /// (keepalives), and the next one goes to the new address.
    pub fn announced(&self, address: String, host_key: Option<String>) -> bool {
        *self
            .announced_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = host_key;
        let mut current = self.address.lock().unwrap_or_else(PoisonError::into_inner);
        let moved = *current != address;
        *current = address;
        moved
    }

    fn announced_key(&self) -> Option<String> {
        self.announced_key
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Its health now. A connection that died since it was last used
    /// shows as offline.
    pub fn health(&self) -> Health {
        if let Ok(conn) = self.conn.try_lock() {
            if let Some(c) = conn.as_ref().filter(|c| c.is_closed()) {
                let why = format!("connection to {} lost", c.host());
                self.set(ClientState::Offline, Some(why));
            }
        }
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Keeps the client from being contacted until [`Slot::release`].
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lets the client be contacted.
    pub fn release(&self) {
        self.held.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether it waits for `cfi accept`.
    pub fn is_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the reconnect loop should try this client now.
    pub fn due(&self, now: Instant) -> bool {
        if self.is_held() {
            return false;
        }
        let h = self.health();
        match h.state {
            ClientState::StaticOnly => true,
            ClientState::Offline | ClientState::Stale | ClientState::Unreachable => {
                h.retry_at.is_none_or(|t| t <= now)
            }
            ClientState::Pending | ClientState::Online | ClientState::HostkeyChanged => false,
        }
    }

    /// Clears what is known about the client's key and errors: after
    /// `cfi forget`, the next contact starts afresh.
    pub fn reset(&self) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        *h = Health {
            state: ClientState::StaticOnly,
            error: None,
            failures: 0,
            retry_at: None,
        };
    }

    /// Closes the connection, if any.
    pub async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            if let Some(c) = Arc::into_inner(c) {
                c.close().await;
            }
        }
    }

    fn set(&self, state: ClientState, error: Option<String>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        h.state = state;
        h.error = error;
    }

    fn succeeded(&self) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        *h = Health {
            state: ClientState::Online,
            error: None,
            failures: 0,
            retry_at: None,
        };
    }

    fn failed(&self, state: ClientState, error: String) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        h.failures = h.failures.saturating_add(1);
        h.retry_at = Some(Instant::now() + backoff(h.failures));
        // A client that was reached once and is not now is offline; one
        // never reached stays unreachable.
        h.state = match (state, h.state) {
            (ClientState::Unreachable, ClientState::Online | ClientState::Offline) => {
                ClientState::Offline
            }
            (s, _) => s,
        };
        h.error = Some(error);
    }
}

/// Exponential from one second to [`MAX_BACKOFF`], ±25% so that clients
/// lost together do not come back in lockstep.
fn backoff(failures: u32) -> Duration {
    jitter(Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF))
}

/// ±25 % of `d`, drawn afresh each call: retries of clients that failed
/// together spread out.
pub fn jitter(d: Duration) -> Duration {
    let noise = std::collections::hash_map::RandomState::new().hash_one(Instant::now()) % 501;
    // 750‰ to 1250‰.
    d * (750 + noise as u32) / 1000
}

/// The SSH connections of the server.
#[derive(Debug)]
pub struct Pool {
    key: ServerKey,
    user: String,
    timeouts: Timeouts,
    db: Arc<Mutex<StateDb>>,
    handshakes: Semaphore,
}

impl Pool {
    /// A pool logging in as `user` with `key`, pinning host keys in `db`,
    /// with at most `max_handshakes` connections being made at once.
    pub fn new(
        key: ServerKey,
        user: String,
        timeouts: Timeouts,
        db: Arc<Mutex<StateDb>>,
        max_handshakes: usize,
    ) -> Self {
        Self {
            key,
            user,
            timeouts,
            db,
            handshakes: Semaphore::new(max_handshakes.max(1)),
        }
    }

    /// The time limits of connections and commands.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The server key.
    pub fn key(&self) -> &ServerKey {
        &self.key
    }

    /// The client's connection: the pooled one while it lives, else a new
    /// one (the host key checked against its pin, pinned on first use).
    pub async fn connect(&self, slot: &Slot) -> Result<Arc<Connection>, ReachError> {
        self.connect_logged(slot, true).await
    }

    /// [`Pool::connect`], with failures logged at debug level only: for
    /// callers that expect some and say themselves what they mean.
    pub async fn connect_quietly(&self, slot: &Slot) -> Result<Arc<Connection>, ReachError> {
        self.connect_logged(slot, false).await
    }

    async fn connect_logged(&self, slot: &Slot, loud: bool) -> Result<Arc<Connection>, ReachError> {
        let mut conn = slot.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            if !c.is_closed() {
                return Ok(Arc::clone(c));
            }
            tracing::info!(host = slot.name, "connection lost; reconnecting");
        }
        *conn = None;
        if slot.is_held() {
            return Err(ReachError::Pending {
                host: slot.name.clone(),
            });
        }
        if slot.health().state == ClientState::HostkeyChanged {
            // Not tried again until forgotten: a changed key is an event
            // for a person, and each try would log it again.
            let why = slot.health().error.unwrap_or_default();
            return Err(ReachError::Refused {
                host: slot.name.clone(),
                why,
            });
        }
        let _permit = self.handshakes.acquire().await;
        let result = self.handshake(slot).await;
        match result {
            Ok(c) => {
                slot.succeeded();
                let c = Arc::new(c);
                *conn = Some(Arc::clone(&c));
                Ok(c)
            }
            Err(e) => {
                let state = match &e {
                    ReachError::Ssh(SshError::HostKeyChanged { .. })
                    | ReachError::Refused { .. } => ClientState::HostkeyChanged,
                    _ => ClientState::Unreachable,
                };
                // Said once per change, not at every retry of a host that
                // is down.
                let error = e.to_string();
                if loud && slot.health().error.as_ref() != Some(&error) {
                    tracing::warn!(host = slot.name, error, "cannot reach client");
                } else {
                    tracing::debug!(host = slot.name, error, "still cannot reach client");
                }
                slot.failed(state, error);
                Err(e)
            }
        }
    }

    async fn handshake(&self, slot: &Slot) -> Result<Connection, ReachError> {
        let pinned = self.db().pinned(&slot.id)?;
        // On first contact with an announced client, what it presents must
        // be what it announced, or someone else answers at its address.
        let announced = slot.announced_key();
        let expected = pinned.as_deref().or(announced.as_deref());
        let address = slot.address();
        let connected = Connection::connect(
            address.as_str(),
            &self.user,
            &self.key,
            expected,
            &self.timeouts,
        )
        .await;
        let c = match connected {
            Ok(c) => c,
            Err(SshError::HostKeyChanged { presented, .. }) if pinned.is_none() => {
                return Err(ReachError::Mismatch {
                    host: slot.name.clone(),
                    announced: announced.unwrap_or_default(),
                    presented,
                });
            }
            Err(SshError::HostKeyChanged {
                host,
                pinned,
                presented,
            }) => {
                // Remembered, so `cfi clients` shows it until forgotten.
                self.db().check_host_key(&slot.id, &slot.name, &presented)?;
                return Err(SshError::HostKeyChanged {
                    host,
                    pinned,
                    presented,
                }
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        match self
            .db()
            .check_host_key(&slot.id, &slot.name, &c.host_key())?
        {
            HostKey::Pinned => {
                tracing::info!(
                    host = slot.name,
                    host_key = c.host_key(),
                    "host key pinned on first contact"
                );
            }
            HostKey::Matches => {}
            HostKey::Changed { pinned, offered } => {
                // Pinned by someone else between our read and now.
                return Err(ReachError::Refused {
                    host: slot.name.clone(),
                    why: format!("pinned {pinned}, presented {offered}"),
                });
            }
        }
        Ok(c)
    }

    fn db(&self) -> std::sync::MutexGuard<'_, StateDb> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_minute_with_jitter() {
        for (failures, base) in [(1, 1), (2, 2), (3, 4), (7, 60), (100, 60)] {
            let d = backoff(failures);
            let base = Duration::from_secs(base);
            assert!(d >= base * 3 / 4 && d <= base * 5 / 4, "{failures}: {d:?}");
        }
    }

    #[test]
    fn a_client_reached_once_goes_offline_not_unreachable() {
        let s = Slot::new("h:22".into(), "h:22".into(), "h".into());
        assert!(s.due(Instant::now()));
        s.failed(ClientState::Unreachable, "refused".into());
        assert_eq!(s.health().state, ClientState::Unreachable);
        assert!(!s.due(Instant::now()));
        s.succeeded();
        s.failed(ClientState::Unreachable, "refused".into());
        assert_eq!(s.health().state, ClientState::Offline);
        s.failed(ClientState::HostkeyChanged, "changed".into());
        assert!(!s.due(Instant::now() + MAX_BACKOFF * 2));
        s.reset();
        assert!(s.due(Instant::now()));
    }
}
