//! The `cfi-server` daemon: the client table, the SSH pool and the control
//! socket `cfi` talks to.
//!
//! Tasks: the control socket's accept loop (one task per request), the
//! reconnect loop (keeps the pool connected to every listed client, with
//! backoff, and re-reads the client lists when they change), the repair
//! loop (a pass on every online client each `repair_interval`). One
//! cancellation token stops them all on SIGTERM or SIGINT; requests under
//! way are abandoned (a pass interrupted anywhere leaves no torn file: the
//! agent's own guarantee), connections are closed with a goodbye, and the
//! socket is removed.

mod discovery;
mod packages;
mod pool;
mod roster;
mod socket;
mod watch;
mod work;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cfi_groups::DataDir;
use cfi_sync::PassReport;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::pool::Pool;
use self::roster::{Member, Roster};
use crate::config::ServerConfig;
use crate::control::Targets;
use crate::ssh::{ServerKey, Timeouts};
use crate::state::{StateDb, StateDbError};

/// How often the reconnect loop looks at the clients.
const TICK: Duration = Duration::from_secs(1);

/// The daemon's shared state.
#[derive(Debug)]
pub struct Daemon {
    config: ServerConfig,
    pool: Pool,
    roster: RwLock<Roster>,
    db: Arc<Mutex<StateDb>>,
    /// Bounds enrollments under way (`max_enrollments`).
    enrollments: tokio::sync::Semaphore,
    started: Instant,
}

/// The key file in the state dir.
pub fn key_path(state_dir: &Path) -> std::path::PathBuf {
    state_dir.join("server_key")
}

impl Daemon {
    /// Opens the state dir (making the key on first start) and reads the
    /// client lists.
    pub fn open(config: ServerConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.state_dir)
            .with_context(|| format!("state dir {}", config.state_dir.display()))?;
        let key = ServerKey::load_or_generate(&key_path(&config.state_dir))?;
        let db = StateDb::open(&config.state_dir.join("state.db"))?;
        let db = Arc::new(Mutex::new(db));
        let pool = Pool::new(
            key,
            config.ssh_user.clone(),
            timeouts(&config),
            Arc::clone(&db),
            config.max_handshakes,
        );
        let mut roster = Roster::default();
        roster.refresh(&config);
        let enrollments = tokio::sync::Semaphore::new(config.max_enrollments.max(1));
        Ok(Arc::new(Self {
            config,
            pool,
            roster: RwLock::new(roster),
            db,
            enrollments,
            started: Instant::now(),
        }))
    }

    /// Serves until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) -> Result<()> {
        let listener = socket::bind(&self.config.socket)?;
        tracing::info!(
            socket = %self.config.socket.display(),
            key = self.pool.key().fingerprint(),
            clients = self.members().len(),
            "cfi-server ready"
        );
        let mut tasks = JoinSet::new();
        let discovery = if self.config.mdns {
            match discovery::Discovery::start(&self) {
                Ok(d) => {
                    let d = Arc::new(d);
                    tasks.spawn(discovery::browse(
                        Arc::clone(&self),
                        Arc::clone(&d),
                        stop.clone(),
                    ));
                    Some(d)
                }
                // Listed clients are still served.
                Err(e) => {
                    tracing::error!("mDNS discovery is off: {e}");
                    None
                }
            }
        } else {
            None
        };
        if self.config.watch {
            tasks.spawn(watch::watch(Arc::clone(&self), stop.clone()));
        }
        tasks.spawn(Arc::clone(&self).reconnect_loop(stop.clone()));
        tasks.spawn(Arc::clone(&self).repair_loop(stop.clone()));
        tasks.spawn(socket::serve(Arc::clone(&self), listener, stop.clone()));
        stop.cancelled().await;
        tracing::info!("stopping");
        tasks.shutdown().await;
        // Goodbyes are queued, not answered: a silent client costs nothing,
        // and the time limit is for a connection task that is stuck.
        let closing = async {
            for m in self.members() {
                m.slot.close().await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), closing).await;
        if let Some(d) = discovery {
            d.stop().await;
        }
        socket::remove(&self.config.socket);
        Ok(())
    }

    /// Keeps every listed client connected: connects those never tried
    /// and, with backoff, those lost or unreachable.
    async fn reconnect_loop(self: Arc<Self>, stop: CancellationToken) {
        let mut attempts = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.write_roster().refresh(&self.config);
            let now = Instant::now();
            for m in self.members() {
                // An announced client is first contacted by its enrollment;
                // one that left, or was never reached, is tried again when
                // it announces itself anew. Only one that was online is
                // reconnected here, with backoff.
                let first_or_gone = m.presence.as_ref().is_some_and(|p| {
                    !p.present
                        || matches!(
                            m.slot.health().state,
                            crate::control::ClientState::StaticOnly
                                | crate::control::ClientState::Unreachable
                        )
                });
                if !first_or_gone && m.slot.due(now) {
                    let daemon = Arc::clone(&self);
                    attempts.spawn(async move {
                        // Errors are kept in the slot and shown by `cfi clients`.
                        if let Ok(conn) = daemon.pool.connect(&m.slot).await {
                            conn.warm_up().await;
                        }
                    });
                }
            }
            while attempts.try_join_next().is_some() {}
        }
    }

    /// Every `repair_interval`, a pass on every client that is online:
    /// drift is repaired and machines that were away catch up. A pass
    /// already running on a client is waited for, not doubled.
    async fn repair_loop(self: Arc<Self>, stop: CancellationToken) {
        let every = Duration::from_secs(self.config.repair_interval.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let online: Vec<Member> = self
                .members()
                .into_iter()
                .filter(|m| m.slot.health().state == crate::control::ClientState::Online)
                .collect();
            if online.is_empty() {
                continue;
            }
            let events = work::log_events("periodic repair pass");
            work::sync_members(&self, online, false, &events).await;
        }
    }

    pub(super) fn members(&self) -> Vec<Member> {
        self.roster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .members()
            .to_vec()
    }

    pub(super) fn write_roster(&self) -> std::sync::RwLockWriteGuard<'_, Roster> {
        self.roster.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn select(&self, targets: &Targets) -> Result<Vec<Member>, String> {
        let mut roster = self.write_roster();
        roster.refresh(&self.config);
        roster.select(targets, &DataDir::new(&self.config.data_dir))
    }

    fn warnings(&self) -> Vec<String> {
        let roster = self.roster.read().unwrap_or_else(PoisonError::into_inner);
        roster.problem.iter().cloned().collect()
    }

    fn db(&self) -> std::sync::MutexGuard<'_, StateDb> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record_sync(&self, m: &Member, report: &PassReport) {
        let result = format!(
            "{} updated, {} deleted, {} failed",
            report.files_updated,
            report.files_deleted,
            report.errors.len()
        );
        if let Err(e) = self.db().record_sync(&m.id, &m.name, &result) {
            tracing::error!(host = m.name, error = %e, "cannot record the pass");
        }
    }

    /// Pinned key and last pass of each client, by id.
    #[allow(clippy::type_complexity)]
    fn synced(&self) -> HashMap<String, (Option<String>, Option<(i64, String)>)> {
        let known = self.db().known().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the state database");
            Vec::new()
        });
        known
            .into_iter()
            .map(|k| {
                let last = k.last_sync.zip(k.last_result);
                (k.id, (k.host_key, last))
            })
            .collect()
    }

    /// Whether a client was accepted (or contacted before); a database
    /// that does not answer counts as no, so nothing is enrolled unasked.
    fn accepted(&self, id: &str) -> bool {
        self.db().is_accepted(id).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the state database");
            false
        })
    }

    fn forget(&self, id: &str) -> Result<usize, StateDbError> {
        self.db().forget(id)
    }
}

/// The SSH time limits a configuration asks for.
pub fn timeouts(config: &ServerConfig) -> Timeouts {
    let keepalive = Duration::from_secs(config.keepalive.max(1));
    Timeouts {
        connect: Duration::from_secs(config.connect_timeout.max(1)),
        auth: Duration::from_secs(config.connect_timeout.max(1) * 2),
        keepalive,
        // Three keepalives go unanswered before a client counts as gone;
        // the inactivity limit must not strike first.
        inactivity: keepalive * 4,
        command: Duration::from_secs(config.command_timeout.max(1)),
        ..Timeouts::default()
    }
}
